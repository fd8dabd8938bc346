//! BlockHost's chain formats, shared by the daemon, `bhctl` and the tests.
//!
//! Module map:
//! - [`bindings`]: the two contracts (and the test mocks) as Rust types, generated
//!   by alloy's `sol!` from the committed `contracts/artifacts/*.json`, so the Rust
//!   side cannot drift from what was compiled and deployed.
//! - [`admin`]: admin commands over the chain (the original's ECIES layout, checks).
//! - [`ecies`]: encryption to the server key, byte-compatible with npm `eciesjs`
//!   0.4 (what a signup page in the browser uses).
//! - [`user_encrypted`]: the `userEncrypted` argument of `buySubscription` — the
//!   buyer's wallet signature, ECIES-encrypted to the server.
//! - [`tx`]: EIP-1559 transactions signed with the server key (minting, deploys).
//! - [`nft_payload`]: the connection details stored in the access NFT, encrypted
//!   under a key only the holder's wallet can re-derive.
//!
//! Nothing here talks to a node; the watcher, the minter and `bhctl` build on it.

pub mod admin;
pub mod bindings;
pub mod ecies;
pub mod nft_payload;
pub mod tx;
pub mod user_encrypted;
