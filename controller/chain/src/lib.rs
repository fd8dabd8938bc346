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
//!
//! And the chain client, shared by the daemon and `bhctl chain …`:
//! - [`node`]: the node operations the watcher needs, as a trait (fakes in tests).
//! - [`rpc`]: plain JSON-RPC over reqwest with failover across endpoints;
//!   [`endpoints`]: which of them serve the configured chain (checked per
//!   endpoint, again after a failure; another chain's is out of rotation).
//! - [`wallet`]: the server key on chain: nonces, EIP-1559 fees, signing,
//!   broadcast, receipts (minting and `bhctl chain deploy`).
//! - [`key`]: the server key file and its permission rule; [`setup`]: what can
//!   stop a client from being set up.
//! - [`heads`] (feature `heads`, the daemon only): `eth_subscribe("newHeads")`
//!   over WebSocket, waking the watcher as each block arrives.

pub mod admin;
pub mod bindings;
pub mod ecies;
pub mod endpoints;
#[cfg(feature = "heads")]
pub mod heads;
pub mod key;
pub mod nft_payload;
pub mod node;
pub mod rpc;
pub mod setup;
pub mod tx;
pub mod user_encrypted;
pub mod wallet;
