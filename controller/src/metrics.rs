//! Prometheus metrics of the daemon, rendered at `GET /metrics`.
//!
//! One registry owned by [`Metrics`]; other modules hold an `Arc<Metrics>` and bump
//! the fields directly. Object counts are read from the store at scrape time rather
//! than tracked, so they can never drift from the truth.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
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
    /// Keys waiting in a reconciler's queue, by controller.
    pub reconcile_queue_depth: Family<Labels, Gauge>,
    /// Reconciles finished, by controller and result (`success`, `error`).
    pub reconciles: Family<Labels, Counter>,
    /// Failed reconciles, by controller and reason (`locked`, `timeout`, …).
    pub reconcile_failures: Family<Labels, Counter>,
    /// Unix time of each object's last successful reconcile, by controller and object.
    pub reconcile_last_success: Family<Labels, Gauge>,
    /// Duration of reconciles in seconds, by controller.
    pub reconcile_duration: Family<Labels, Histogram, fn() -> Histogram>,
    /// The chain head the watcher last saw.
    pub chain_head_block: Gauge,
    /// The last block the watcher committed.
    pub chain_cursor_block: Gauge,
    /// Chain events, by outcome (`applied`, `duplicate`, `malformed`).
    pub chain_events: Family<Labels, Counter>,
    /// Reorganisations undone.
    pub chain_reorgs: Counter,
    /// `eth_getLogs` ranges a node refused.
    pub chain_range_refusals: Counter,
    /// The current `eth_getLogs` range.
    pub chain_get_logs_range: Gauge,
    /// Failed watcher steps, by kind.
    pub chain_errors: Family<Labels, Counter>,
    /// New-head notifications received over WebSocket.
    pub chain_new_heads: Counter,
    /// Mint steps, by outcome (`signed`, `minted`, `bumped`, `dropped`,
    /// `reverted`, `insufficient_funds`, `error`).
    pub chain_mints: Family<Labels, Counter>,
    /// Mints awaiting a receipt.
    pub chain_mints_pending: Gauge,
    /// Signup page API requests, by result (`ok`, `not_found`, `bad_request`,
    /// `rate_limited`, `error`).
    pub signup_api_requests: Family<Labels, Counter>,
    objects: Family<Labels, Gauge>,
}

fn duration_histogram() -> Histogram {
    // 1 ms to ~65 s: a no-op reconcile up to a clone and boot.
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
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
        let reconcile_queue_depth = Family::<Labels, Gauge>::default();
        registry.register(
            "reconcile_queue_depth",
            "Keys waiting in a reconciler's queue",
            reconcile_queue_depth.clone(),
        );
        let reconciles = Family::<Labels, Counter>::default();
        registry.register(
            "reconciles",
            "Reconciles finished, by controller and result",
            reconciles.clone(),
        );
        let reconcile_failures = Family::<Labels, Counter>::default();
        registry.register(
            "reconcile_failures",
            "Failed reconciles, by controller and reason",
            reconcile_failures.clone(),
        );
        let reconcile_last_success = Family::<Labels, Gauge>::default();
        registry.register(
            "reconcile_last_success_timestamp_seconds",
            "Unix time of each object's last successful reconcile",
            reconcile_last_success.clone(),
        );
        let reconcile_duration: Family<Labels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(duration_histogram);
        registry.register(
            "reconcile_duration_seconds",
            "Duration of reconciles",
            reconcile_duration.clone(),
        );
        let chain_head_block = Gauge::default();
        registry.register(
            "chain_head_block",
            "Chain head the watcher last saw",
            chain_head_block.clone(),
        );
        let chain_cursor_block = Gauge::default();
        registry.register(
            "chain_cursor_block",
            "Last block the chain watcher committed",
            chain_cursor_block.clone(),
        );
        let chain_events = Family::<Labels, Counter>::default();
        registry.register(
            "chain_events",
            "Chain events, by outcome",
            chain_events.clone(),
        );
        let chain_reorgs = Counter::default();
        registry.register(
            "chain_reorgs",
            "Chain reorganisations undone",
            chain_reorgs.clone(),
        );
        let chain_range_refusals = Counter::default();
        registry.register(
            "chain_range_refusals",
            "eth_getLogs ranges a node refused",
            chain_range_refusals.clone(),
        );
        let chain_get_logs_range = Gauge::default();
        registry.register(
            "chain_get_logs_range",
            "Current eth_getLogs block range",
            chain_get_logs_range.clone(),
        );
        let chain_errors = Family::<Labels, Counter>::default();
        registry.register(
            "chain_errors",
            "Failed chain watcher steps, by kind",
            chain_errors.clone(),
        );
        let chain_new_heads = Counter::default();
        registry.register(
            "chain_new_heads",
            "New-head notifications received over WebSocket",
            chain_new_heads.clone(),
        );
        let chain_mints = Family::<Labels, Counter>::default();
        registry.register(
            "chain_mints",
            "Access NFT mint steps, by outcome",
            chain_mints.clone(),
        );
        let chain_mints_pending = Gauge::default();
        registry.register(
            "chain_mints_pending",
            "Access NFT mints awaiting a receipt",
            chain_mints_pending.clone(),
        );
        let signup_api_requests = Family::<Labels, Counter>::default();
        registry.register(
            "signup_api_requests",
            "Signup page status and NFT lookups, by result",
            signup_api_requests.clone(),
        );
        let info = Family::<Labels, Gauge>::default();
        registry.register("build_info", "Version of the running daemon", info.clone());
        info.get_or_create(&vec![("version".into(), env!("CARGO_PKG_VERSION").into())])
            .set(1);
        Self {
            registry,
            http_requests,
            applied_objects,
            watch_streams,
            reconcile_queue_depth,
            reconciles,
            reconcile_failures,
            reconcile_last_success,
            reconcile_duration,
            chain_head_block,
            chain_cursor_block,
            chain_events,
            chain_reorgs,
            chain_range_refusals,
            chain_get_logs_range,
            chain_errors,
            chain_new_heads,
            chain_mints,
            chain_mints_pending,
            signup_api_requests,
            objects,
        }
    }

    /// Renders without refreshing store-derived gauges (tests, or no store at hand).
    pub fn render_registry_only(&self) -> String {
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            tracing::warn!("cannot encode metrics");
        }
        out
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

/// The new-head follower counts into the daemon's registry.
impl blockhost_chain::heads::HeadEvents for Metrics {
    fn head(&self) {
        self.chain_new_heads.inc();
    }

    fn failure(&self) {
        self.chain_errors
            .get_or_create(&vec![("kind".into(), "new_heads".into())])
            .inc();
    }
}
