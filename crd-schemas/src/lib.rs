//! BlockHost's declarative types.
//!
//! - [`wallet`]: Ethereum addresses, EIP-55 checked, stored normalized.
//! - [`validate`]: rules beyond types (DNS labels, Unix users).
//! - [`eip191`]: EIP-191 personal_sign hashing, signing and address recovery.
//! - [`access`]: the access file the controller writes into each VM and the PAM
//!   module reads at login.

pub mod access;
pub mod eip191;
pub mod validate;
pub mod wallet;

pub use access::AccessFile;
pub use wallet::{WalletAddress, WalletError};
