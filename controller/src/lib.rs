//! `blockhostd`, BlockHost's operator daemon (its command line, `bhctl`, is its own crate).
//!
//! Module map:
//! - [`store`]: the `blockhost-store` crate, re-exported: the redb database; owns every transaction, the change feed and the
//!   event log.
//! - [`server`]: the HTTP API on a Unix socket (axum); its wire types and client
//!   are in `blockhost-api`, shared with `bhctl`.
//! - [`daemon`]: start-up, configuration, serving, clean shutdown.
//! - [`listeners`]: every listener's connection limits, fitted under the
//!   open-file limit.
//! - [`health`]: the daemon's own conditions (`GET /status`, `bhctl status`):
//!   RPC endpoints found serving another chain.
//! - [`watcher`]: the chain watcher: `eth_getLogs` with confirmations, reorg undo
//!   and failover, turning subscription events into specs. The chain client it
//!   reads through is `blockhost-chain`'s.
//! - [`firewall`]: the host firewall through the root agent (installed at
//!   start, checked every minute, `GET /firewall`).
//! - [`signup`]: the public signup page and its rate-limited status endpoint.
//! - [`metrics`]: Prometheus metrics.
//! - [`reconcile`]: the reconcile runtime (keyed queue, backoff, resync) and the
//!   reconcilers that drive Proxmox.
//! - [`watch_sink`]: the bounded per-watch buffer; slow watchers are dropped
//!   with a resumable error.

pub mod daemon;
pub mod firewall;
pub mod health;
pub mod listeners;
pub mod metrics;
pub mod reconcile;
pub mod server;
pub mod signup;
pub use blockhost_store as store;
pub mod watch_sink;
pub mod watcher;

pub use blockhost_crd::error_chain;

/// Caps glibc's malloc arenas at two. By default glibc creates up to eight arenas
/// per core, one per thread that contends; after a burst of work (thousands of VMs
/// created at once) each keeps its fragmented free memory, and the daemon's RSS
/// stays high long after. Two arenas cost nothing measurable on our workload.
/// Called first thing by `blockhostd` (and by the benchmarks, so they measure the
/// daemon's configuration).
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only adjusts allocator parameters; called before other threads exist.
        let ok = unsafe { libc::mallopt(libc::M_ARENA_MAX, 2) };
        if ok != 1 {
            tracing::debug!("mallopt(M_ARENA_MAX) refused; keeping glibc's default arenas");
        }
    }
}
