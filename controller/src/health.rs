//! The daemon's own conditions — what is wrong with the daemon rather than
//! with an object — served at `GET /status` and shown by `bhctl status`.
//!
//! One condition so far, `ChainEndpoints`: whether every RPC endpoint checked
//! serves the configured chain. The chain client (`blockhost-chain`'s
//! endpoint checks) reports each finding here through
//! [`blockhost_chain::endpoints::EndpointEvents`]; an endpoint on another chain
//! makes the condition `False` (reason `WrongChainId`, the endpoint and both
//! ids in its message) until a later check finds it on the right chain. The
//! same findings are counted in the metrics.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use blockhost_crd::Condition;
use blockhost_crd::meta::ConditionStatus;
use chrono::{DateTime, Utc};

use crate::metrics::Metrics;

/// Type of the condition on the chain's RPC endpoints.
pub const CHAIN_ENDPOINTS: &str = "ChainEndpoints";

/// What the last check of one endpoint found: `None` the right chain, or the
/// (configured, reported) chain ids.
type Finding = Option<(u64, u64)>;

#[derive(Debug, Default)]
struct Endpoints {
    found: BTreeMap<String, Finding>,
    /// When the condition's status last changed (`None`: never reported).
    since: Option<(bool, DateTime<Utc>)>,
}

/// The daemon's conditions; shared by the chain clients and the API.
#[derive(Debug)]
pub struct Health {
    metrics: Arc<Metrics>,
    endpoints: Mutex<Endpoints>,
}

impl Health {
    /// No findings yet; findings are counted in `metrics`.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            metrics,
            endpoints: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Endpoints> {
        // Each critical section is one map update.
        self.endpoints.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn record(&self, endpoint: &str, finding: Finding) {
        let mut e = self.lock();
        e.found.insert(endpoint.to_owned(), finding);
        let ok = e.found.values().all(Option::is_none);
        if e.since.is_none_or(|(was, _)| was != ok) {
            e.since = Some((ok, Utc::now()));
        }
    }

    /// The conditions now, for `GET /status`.
    pub fn conditions(&self) -> Vec<Condition> {
        let e = self.lock();
        let Some((ok, since)) = e.since else {
            return Vec::new();
        };
        let wrong: Vec<String> = e
            .found
            .iter()
            .filter_map(|(url, f)| {
                f.map(|(want, got)| format!("{url} serves chain id {got}, not {want}"))
            })
            .collect();
        let (status, reason, message) = if ok {
            let n = e.found.len();
            let msg = format!("the {n} RPC endpoint(s) checked serve the configured chain");
            (ConditionStatus::True, "OnChain", msg)
        } else {
            let msg = format!(
                "{}: out of rotation, asked again every few minutes; fix the node or chain.rpcUrls",
                wrong.join("; ")
            );
            (ConditionStatus::False, "WrongChainId", msg)
        };
        vec![Condition {
            type_: CHAIN_ENDPOINTS.into(),
            status,
            reason: reason.into(),
            message,
            last_transition_time: since,
        }]
    }
}

fn endpoint_label(endpoint: &str) -> Vec<(String, String)> {
    vec![("endpoint".into(), endpoint.into())]
}

impl blockhost_chain::endpoints::EndpointEvents for Health {
    fn wrong_chain(&self, endpoint: &str, want: u64, got: u64) {
        let label = endpoint_label(endpoint);
        self.metrics
            .chain_endpoint_wrong_chain
            .get_or_create(&label)
            .inc();
        self.metrics
            .chain_endpoint_out_of_rotation
            .get_or_create(&label)
            .set(1);
        self.record(endpoint, Some((want, got)));
    }

    fn verified(&self, endpoint: &str) {
        let label = endpoint_label(endpoint);
        self.metrics
            .chain_endpoint_out_of_rotation
            .get_or_create(&label)
            .set(0);
        self.record(endpoint, None);
    }
}

#[cfg(test)]
mod tests {
    use blockhost_chain::endpoints::EndpointEvents;

    use super::*;

    #[test]
    fn a_wrong_endpoint_makes_the_condition_false_until_it_is_back() {
        let h = Health::new(Arc::new(Metrics::new()));
        assert!(h.conditions().is_empty(), "nothing checked yet");
        h.verified("http://a:1");
        h.wrong_chain("http://b:2", 31337, 1);
        let c = &h.conditions()[0];
        assert_eq!(
            (c.status, c.reason.as_str()),
            (ConditionStatus::False, "WrongChainId")
        );
        assert!(
            c.message
                .contains("http://b:2 serves chain id 1, not 31337"),
            "{}",
            c.message
        );
        let text = h.metrics.render_registry_only();
        assert!(
            text.contains("blockhost_chain_endpoint_wrong_chain_total{endpoint=\"http://b:2\"} 1"),
            "{text}"
        );
        h.verified("http://b:2");
        assert_eq!(h.conditions()[0].status, ConditionStatus::True);
    }
}
