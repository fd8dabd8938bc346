//! What a VM needs to let a wallet log in, and nothing more: the access file's
//! type, EIP-191 signatures, wallet addresses, the validation rules they use,
//! the terminal-safe printing of hostile text, and error chains.
//!
//! `pam_blockhost.so` is loaded into sshd, so this crate is kept to serde,
//! serde_json, k256 and sha3: no schema generator, no TOML, no daemon types.
//! `blockhost-crd` re-exports every module here (feature `schema` adds the JSON
//! Schema impls it publishes).
//!
//! Module map:
//! - [`access`]: `/etc/blockhost/access.json`, written by the controller through
//!   the guest agent and read by the PAM module at every login.
//! - [`eip191`]: `personal_sign` signatures: recovery, low-s, constant-time compare.
//! - [`wallet`]: 20-byte addresses with EIP-55 checksums.
//! - [`validate`]: DNS labels and Unix user names.
//! - [`sanitize`]: escaping control and bidi characters before a terminal sees them.
//! - [`errors`]: printing an error with each cause once.

pub mod access;
pub mod eip191;
pub mod errors;
pub mod sanitize;
pub mod validate;
pub mod wallet;

pub use access::AccessFile;
pub use errors::error_chain;
pub use wallet::{WalletAddress, WalletError};
