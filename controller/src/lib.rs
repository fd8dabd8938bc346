//! `blockhostd`, BlockHost's operator daemon, and `bhctl`, its command line.
//!
//! Module map:
//! - [`store`]: the `blockhost-store` crate, re-exported: the redb database; owns every transaction, the change feed and the
//!   event log.
//! - [`api`]: the HTTP API on a Unix socket — [`api::server`] (axum, in the daemon)
//!   and [`api::client`] (hyper, in `bhctl`).
//! - [`daemon`]: start-up, configuration, serving, clean shutdown.
//! - [`listeners`]: every listener's connection limits, fitted under the
//!   open-file limit.
//! - [`chain`]: the chain watcher: `eth_getLogs` with confirmations, reorg undo
//!   and failover, turning subscription events into specs.
//! - [`signup`]: the public signup page and its rate-limited status endpoint.
//! - [`metrics`]: Prometheus metrics.
//! - [`reconcile`]: the reconcile runtime (keyed queue, backoff, resync) and the
//!   reconcilers that drive Proxmox.
//! - [`yaml`] and [`manifest`]: located YAML parsing; the files `bhctl apply` reads.
//! - [`cli`]: `bhctl`'s commands and output formats.
//! - [`watch_sink`]: the bounded per-watch buffer; slow watchers are dropped
//!   with a resumable error.

pub mod api;
pub mod chain;
pub mod cli;
pub mod daemon;
pub mod listeners;
pub mod manifest;
pub mod metrics;
pub mod reconcile;
pub mod signup;
pub use blockhost_store as store;
pub mod watch_sink;
pub mod yaml;

/// Formats an error with all its sources: `outer: inner: root cause`.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let text = s.to_string();
        // Some errors repeat their source's text; print each piece once.
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cur = s.source();
    }
    out
}

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
