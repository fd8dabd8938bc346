//! Reconcilers: the loops that make Proxmox match the specs in the store.
//!
//! - [`runtime`]: the scheduler every reconciler runs under — a keyed queue that
//!   never runs two reconciles of one key at once, bounded concurrency, per-key
//!   exponential backoff with jitter (reset on success), a timeout per reconcile,
//!   triggers on spec changes (never on status writes) and a periodic resync.
//! - [`vm`]: the `VirtualMachine` reconciler (create, power, expiry, drift,
//!   deletion) against the [`blockhost_pve::Pve`] trait.
//! - [`mint`]: the minter, which mints each running chain VM's access NFT
//!   through the server wallet.
//!
//! A reconcile function receives only a key. It reads the object and the world
//! afresh and assumes nothing about why it runs: the same function handles a new
//! spec, a retry after a crash, a resync and a drift.

pub mod mint;
pub mod runtime;
pub mod vm;

pub use runtime::{Action, ErrorPolicy, Reconciler, Retry, RuntimeConfig, run, store_triggers};
