//! Which RPC endpoints serve the configured chain: [`crate::rpc::RpcClient`]
//! asks each endpoint `eth_chainId` before its first use, again after it has
//! failed (a reconnect may reach a node restarted on another chain), again
//! when its last check is older than [`RECHECK_AFTER`] (a node restarted
//! between two calls is reached on a fresh connection without any failure to
//! see), and whenever a caller asks `eth_chainId` itself.
//!
//! An endpoint that reports another chain id is taken out of rotation: no
//! other call is sent to it, and it is asked again only after
//! [`REPROBE_AFTER`]. Its blocks and logs would otherwise be read as this
//! chain's — a "reorg" undoing every purchase, or a stranger's events applied.
//! Each finding is logged (the endpoint redacted, both ids) and handed to an
//! [`EndpointEvents`] sink (the daemon's metrics and status condition).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long an endpoint on another chain stays out of rotation before it is
/// asked again.
pub const REPROBE_AFTER: Duration = Duration::from_secs(300);

/// How long a verified endpoint is used before its chain id is asked again.
pub const RECHECK_AFTER: Duration = Duration::from_secs(60);

/// Told what the checks find, per endpoint (redacted: scheme, host, port).
pub trait EndpointEvents: Send + Sync + std::fmt::Debug {
    /// `endpoint` reports chain id `got`, not `want`: it is out of rotation.
    fn wrong_chain(&self, endpoint: &str, want: u64, got: u64);
    /// `endpoint` serves the expected chain (after a check).
    fn verified(&self, endpoint: &str);
}

/// A sink that only has the log lines (`bhctl`, tests).
#[derive(Debug, Default)]
pub struct LogOnly;

impl EndpointEvents for LogOnly {
    fn wrong_chain(&self, _: &str, _: u64, _: u64) {}
    fn verified(&self, _: &str) {}
}

/// What is known of one endpoint.
#[derive(Debug, Clone, Copy)]
enum Verified {
    /// Not asked yet, or failed since.
    Unchecked,
    /// Serves the chain, as of then.
    Good(Instant),
    /// Serves chain `got`, as of `since`.
    Wrong { got: u64, since: Instant },
}

/// What to do before sending a call to an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Gate {
    /// Send it.
    Use,
    /// Ask `eth_chainId` first.
    Probe,
    /// Out of rotation: it serves chain `got`.
    Skip {
        /// The chain id it reported.
        got: u64,
    },
}

/// The expected chain id and what each endpoint was found to serve.
#[derive(Debug)]
pub(crate) struct ChainCheck {
    pub(crate) want: u64,
    pub(crate) events: Arc<dyn EndpointEvents>,
    pub(crate) reprobe_after: Duration,
    pub(crate) recheck_after: Duration,
    states: Vec<Mutex<Verified>>,
}

impl ChainCheck {
    /// Nothing checked yet, for `n` endpoints.
    pub(crate) fn new(want: u64, n: usize) -> Self {
        Self {
            want,
            events: Arc::new(LogOnly),
            reprobe_after: REPROBE_AFTER,
            recheck_after: RECHECK_AFTER,
            states: (0..n).map(|_| Mutex::new(Verified::Unchecked)).collect(),
        }
    }

    fn state(&self, i: usize) -> Option<std::sync::MutexGuard<'_, Verified>> {
        // Every critical section is one assignment: a poisoned lock holds a
        // whole value.
        self.states
            .get(i)
            .map(|m| m.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// What endpoint `i` needs before a call; `asks_chain_id`: the call is
    /// `eth_chainId` itself, always answered by a fresh check.
    pub(crate) fn gate(&self, i: usize, asks_chain_id: bool) -> Gate {
        let Some(state) = self.state(i).map(|s| *s) else {
            return Gate::Probe;
        };
        match state {
            Verified::Wrong { got, since } if since.elapsed() < self.reprobe_after => {
                Gate::Skip { got }
            }
            Verified::Good(at) if !asks_chain_id && at.elapsed() < self.recheck_after => Gate::Use,
            _ => Gate::Probe,
        }
    }

    /// Endpoint `i` failed: check it again before its next use.
    pub(crate) fn failed(&self, i: usize) {
        if let Some(mut s) = self.state(i)
            && matches!(*s, Verified::Good(_))
        {
            *s = Verified::Unchecked;
        }
    }

    /// Records endpoint `i`'s answer to `eth_chainId`; whether it is the
    /// expected chain.
    pub(crate) fn probed(&self, i: usize, endpoint: &str, got: u64) -> bool {
        let Some(mut s) = self.state(i) else {
            return false;
        };
        let was = *s;
        let now = Instant::now();
        if got == self.want {
            *s = Verified::Good(now);
            drop(s);
            if matches!(was, Verified::Wrong { .. }) {
                tracing::info!(
                    endpoint,
                    chain_id = got,
                    "RPC endpoint serves the configured chain again; back in rotation"
                );
            }
            self.events.verified(endpoint);
            return true;
        }
        *s = Verified::Wrong { got, since: now };
        drop(s);
        tracing::warn!(
            endpoint,
            want = self.want,
            got,
            retry_in_s = self.reprobe_after.as_secs(),
            "RPC endpoint serves another chain (chain.chainId): taken out of rotation; check the node behind it or chain.rpcUrls"
        );
        self.events.wrong_chain(endpoint, self.want, got);
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wrong_endpoint_is_skipped_until_reprobe_and_a_failure_forces_a_check() {
        let mut c = ChainCheck::new(7, 2);
        assert_eq!(c.gate(0, false), Gate::Probe, "never used unchecked");
        assert!(c.probed(0, "a", 7));
        assert_eq!(c.gate(0, false), Gate::Use);
        assert_eq!(c.gate(0, true), Gate::Probe, "eth_chainId is always fresh");
        c.failed(0);
        assert_eq!(c.gate(0, false), Gate::Probe, "re-checked after a failure");
        assert!(!c.probed(1, "b", 8));
        assert_eq!(c.gate(1, false), Gate::Skip { got: 8 });
        assert_eq!(c.gate(1, true), Gate::Skip { got: 8 });
        c.failed(1);
        assert_eq!(c.gate(1, false), Gate::Skip { got: 8 }, "stays out");
        c.reprobe_after = Duration::ZERO;
        assert_eq!(c.gate(1, false), Gate::Probe, "asked again after a while");
    }
}
