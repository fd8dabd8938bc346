//! Prometheus metrics of the daemon, rendered at `GET /metrics`.
//!
//! One registry owned by [`Metrics`]; other modules hold an `Arc<Metrics>` and bump
//! the fields directly. Object counts are read from the store at scrape time rather
//! than tracked, so they can never drift from the truth, and so are the
//! listeners' connection counters ([`Metrics::watch_listener`]), which
//! `blockhost-listen` keeps per listener.

use std::sync::{Arc, Mutex};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
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
    /// Checks that found an RPC endpoint serving another chain, by endpoint.
    pub chain_endpoint_wrong_chain: Family<Labels, Counter>,
    /// RPC endpoints out of rotation for serving another chain (1) or back (0).
    pub chain_endpoint_out_of_rotation: Family<Labels, Gauge>,
    /// Admin commands read from the chain, by result (`accepted`, `replayed`,
    /// `stale`, `future`, `other_wallet`, `unknown_command`, `undecryptable`,
    /// `malformed`, `bad_params`).
    pub admin_commands: Family<Labels, Counter>,
    /// Accepted knocks the root agent was asked to open, by result (`opened`, `failed`).
    pub admin_knocks: Family<Labels, Counter>,
    /// Host firewall installs and checks through the root agent, by result
    /// (`applied`, `in_force`, `drift`, `failed`).
    pub host_firewall: Family<Labels, Counter>,
    objects: Family<Labels, Gauge>,
    listeners: Arc<Listeners>,
}

/// The listeners whose counters are exported, read at scrape time.
#[derive(Debug, Default)]
struct Listeners(Mutex<Vec<(&'static str, Arc<blockhost_listen::Stats>)>>);

impl Listeners {
    fn each(&self) -> Vec<(&'static str, Arc<blockhost_listen::Stats>)> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// One metric per listener counter, labelled `listener`.
fn encode_listeners<M: EncodeMetric>(
    enc: &mut DescriptorEncoder,
    all: &[(&'static str, Arc<blockhost_listen::Stats>)],
    (name, help): (&str, &str),
    value: impl Fn(&blockhost_listen::Stats) -> M,
) -> Result<(), std::fmt::Error> {
    let Some((_, first)) = all.first() else {
        return Ok(());
    };
    let mut family = enc.encode_descriptor(name, help, None, value(first).metric_type())?;
    for (listener, stats) in all {
        let labels = [("listener", *listener)];
        value(stats).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

impl Collector for Listeners {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let all = self.each();
        let e = &mut enc;
        encode_listeners(
            e,
            &all,
            (
                "listener_connections_accepted",
                "Connections accepted, by listener",
            ),
            |s| ConstCounter::new(s.accepted()),
        )?;
        encode_listeners(
            e,
            &all,
            (
                "listener_connections_refused",
                "Connections closed on arrival over a connection cap, by listener",
            ),
            |s| ConstCounter::new(s.refused()),
        )?;
        encode_listeners(
            e,
            &all,
            (
                "listener_connections_idle_closed",
                "Connections closed for idleness, by listener",
            ),
            |s| ConstCounter::new(s.idle_closed()),
        )?;
        encode_listeners(
            e,
            &all,
            (
                "listener_connections_open",
                "Connections open now, by listener",
            ),
            |s| ConstGauge::new(i64::try_from(s.open()).unwrap_or(i64::MAX)),
        )
    }
}

fn duration_histogram() -> Histogram {
    // 1 ms to ~65 s: a no-op reconcile up to a clone and boot.
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

/// Registers `metric` under `name` and hands it back for the struct to keep.
fn reg<M: prometheus_client::registry::Metric + Clone>(
    r: &mut Registry,
    name: &str,
    help: &str,
    metric: M,
) -> M {
    r.register(name, help, metric.clone());
    metric
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every metric.
    // One line per metric (field, name, help, kind) reads as the table it is.
    #[rustfmt::skip]
    pub fn new() -> Self {
        let mut r = Registry::with_prefix("blockhost");
        let info = reg(&mut r, "build_info", "Version of the running daemon", Family::<Labels, Gauge>::default());
        let listeners = Arc::new(Listeners::default());
        r.register_collector(Box::new(listeners.clone()));
        info.get_or_create(&vec![("version".into(), env!("CARGO_PKG_VERSION").into())]).set(1);
        // Fields are evaluated in order, so the registry is moved in last.
        Self {
            http_requests: reg(&mut r, "api_requests", "API requests served, by route and status", Family::<Labels, Counter>::default()),
            applied_objects: reg(&mut r, "applied_objects", "Objects applied, by kind and outcome", Family::<Labels, Counter>::default()),
            watch_streams: reg(&mut r, "watch_streams", "Open watch streams", Gauge::default()),
            reconcile_queue_depth: reg(&mut r, "reconcile_queue_depth", "Keys waiting in a reconciler's queue", Family::<Labels, Gauge>::default()),
            reconciles: reg(&mut r, "reconciles", "Reconciles finished, by controller and result", Family::<Labels, Counter>::default()),
            reconcile_failures: reg(&mut r, "reconcile_failures", "Failed reconciles, by controller and reason", Family::<Labels, Counter>::default()),
            reconcile_last_success: reg(&mut r, "reconcile_last_success_timestamp_seconds", "Unix time of each object's last successful reconcile", Family::<Labels, Gauge>::default()),
            reconcile_duration: reg(&mut r, "reconcile_duration_seconds", "Duration of reconciles", Family::new_with_constructor(duration_histogram)),
            chain_head_block: reg(&mut r, "chain_head_block", "Chain head the watcher last saw", Gauge::default()),
            chain_cursor_block: reg(&mut r, "chain_cursor_block", "Last block the chain watcher committed", Gauge::default()),
            chain_events: reg(&mut r, "chain_events", "Chain events, by outcome", Family::<Labels, Counter>::default()),
            chain_reorgs: reg(&mut r, "chain_reorgs", "Chain reorganisations undone", Counter::default()),
            chain_range_refusals: reg(&mut r, "chain_range_refusals", "eth_getLogs ranges a node refused", Counter::default()),
            chain_get_logs_range: reg(&mut r, "chain_get_logs_range", "Current eth_getLogs block range", Gauge::default()),
            chain_errors: reg(&mut r, "chain_errors", "Failed chain watcher steps, by kind", Family::<Labels, Counter>::default()),
            chain_new_heads: reg(&mut r, "chain_new_heads", "New-head notifications received over WebSocket", Counter::default()),
            chain_mints: reg(&mut r, "chain_mints", "Access NFT mint steps, by outcome", Family::<Labels, Counter>::default()),
            chain_mints_pending: reg(&mut r, "chain_mints_pending", "Access NFT mints awaiting a receipt", Gauge::default()),
            signup_api_requests: reg(&mut r, "signup_api_requests", "Signup page status and NFT lookups, by result", Family::<Labels, Counter>::default()),
            chain_endpoint_wrong_chain: reg(&mut r, "chain_endpoint_wrong_chain", "Checks that found an RPC endpoint serving another chain, by endpoint", Family::<Labels, Counter>::default()),
            chain_endpoint_out_of_rotation: reg(&mut r, "chain_endpoint_out_of_rotation", "RPC endpoints out of rotation for serving another chain (1), by endpoint", Family::<Labels, Gauge>::default()),
            admin_commands: reg(&mut r, "admin_commands", "Admin commands read from the chain, by result", Family::<Labels, Counter>::default()),
            admin_knocks: reg(&mut r, "admin_knocks", "Accepted knocks the root agent was asked to open, by result", Family::<Labels, Counter>::default()),
            host_firewall: reg(&mut r, "host_firewall", "Host firewall installs and checks through the root agent, by result", Family::<Labels, Counter>::default()),
            objects: reg(&mut r, "objects", "Objects in the store, by kind", Family::<Labels, Gauge>::default()),
            listeners,
            registry: r,
        }
    }

    /// Exports a listener's connection counters under `listener="name"`.
    pub fn watch_listener(&self, name: &'static str, stats: Arc<blockhost_listen::Stats>) {
        let mut all = self.listeners.0.lock().unwrap_or_else(|p| p.into_inner());
        all.retain(|(n, _)| *n != name);
        all.push((name, stats));
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
