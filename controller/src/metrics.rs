//! Prometheus metrics of the daemon, rendered at `GET /metrics`.
//!
//! One registry owned by [`Metrics`]; other modules hold an `Arc<Metrics>` and bump
//! the fields directly. Object counts are read from the store at scrape time rather
//! than tracked, so they can never drift from the truth.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::store::Store;

type Labels = Vec<(String, String)>;

/// The daemon's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// API requests by route and status code.
    pub http_requests: Family<Labels, Counter>,
    /// Objects applied, by kind and outcome.
    pub applied_objects: Family<Labels, Counter>,
    /// Open watch streams.
    pub watch_streams: Gauge,
    objects: Family<Labels, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("blockhost");
        let http_requests = Family::<Labels, Counter>::default();
        registry.register(
            "api_requests",
            "API requests served, by route and status",
            http_requests.clone(),
        );
        let applied_objects = Family::<Labels, Counter>::default();
        registry.register(
            "applied_objects",
            "Objects applied, by kind and outcome",
            applied_objects.clone(),
        );
        let watch_streams = Gauge::default();
        registry.register("watch_streams", "Open watch streams", watch_streams.clone());
        let objects = Family::<Labels, Gauge>::default();
        registry.register("objects", "Objects in the store, by kind", objects.clone());
        let info = Family::<Labels, Gauge>::default();
        registry.register("build_info", "Version of the running daemon", info.clone());
        info.get_or_create(&vec![("version".into(), env!("CARGO_PKG_VERSION").into())])
            .set(1);
        Self {
            registry,
            http_requests,
            applied_objects,
            watch_streams,
            objects,
        }
    }

    /// Renders the text exposition format, refreshing store-derived gauges first.
    pub fn render(&self, store: &Store) -> String {
        for (kind, _, _) in blockhost_crd::resource::KINDS {
            match store.count(kind) {
                Ok(n) => {
                    self.objects
                        .get_or_create(&vec![("kind".into(), (*kind).into())])
                        .set(i64::try_from(n).unwrap_or(i64::MAX));
                }
                Err(e) => {
                    tracing::warn!(error = %crate::error_chain(&e), "cannot count objects for metrics")
                }
            }
        }
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            tracing::warn!("cannot encode metrics");
        }
        out
    }
}
