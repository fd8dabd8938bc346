//! The chain id is checked per RPC endpoint, on real anvils with different
//! `--chain-id`s (127.0.0.1:1867x):
//! - an endpoint on another chain, listed first, is never sent anything but
//!   `eth_chainId`: the events come from the endpoint on the configured chain,
//!   and the daemon's `ChainEndpoints` condition and metric name it;
//! - an endpoint restarted on the same port serving another chain is taken
//!   out after its reconnect: nothing of the other chain is applied (no
//!   "reorg" undoing the purchases), and the condition says so.
//!
//! Needs anvil (`npm ci`); skipped with a note without it unless
//! `BLOCKHOST_REQUIRE_TOOLS=1`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod chain_support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use blockhost_chain::rpc::RpcClient;
use blockhost_controller::health::{CHAIN_ENDPOINTS, Health};
use blockhost_controller::metrics::Metrics;
use blockhost_crd::meta::ConditionStatus;
use blockhost_crd::{Subscription, VirtualMachine};
use chain_support::*;

/// A JSON-RPC proxy on `port` in front of `upstream` that records every
/// method it is asked.
async fn recording_proxy(upstream: String, port: u16) -> (String, Arc<Mutex<Vec<String>>>) {
    use axum::{Json, Router, routing::post};
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let client = reqwest::Client::new();
    let app = Router::new().route(
        "/",
        post(move |Json(body): Json<serde_json::Value>| {
            let (client, upstream, log) = (client.clone(), upstream.clone(), log.clone());
            async move {
                let method = body["method"].as_str().unwrap_or("?").to_owned();
                log.lock().unwrap().push(method);
                let r = client.post(&upstream).json(&body).send().await.unwrap();
                Json(r.json::<serde_json::Value>().await.unwrap())
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://127.0.0.1:{port}"), seen)
}

/// The daemon's `ChainEndpoints` condition, when it is `False`: its message.
fn wrong_chain_message(health: &Health) -> Option<String> {
    let c = health.conditions().into_iter().next()?;
    assert_eq!(c.type_, CHAIN_ENDPOINTS);
    (c.status == ConditionStatus::False && c.reason == "WrongChainId").then_some(c.message)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_on_another_chain_is_never_used_for_logs() {
    if !tools_available() {
        return;
    }
    // Same deployer and nonces: the same contract addresses on both chains,
    // so the other chain's purchases would match the watcher's log filter.
    let other = Anvil::start_chain("127.0.0.1", 18670, 999);
    let od = other.deploy().await;
    other.create_plan(&od, "basic", 150).await;
    for _ in 0..3 {
        other.buy(&od, 1, 30, payload()).await;
    }
    let right = Anvil::start(18671);
    let d = right.deploy().await;
    assert_eq!((od.subs, od.nft), (d.subs, d.nft));
    right.create_plan(&d, "basic", 150).await;
    right.buy(&d, 1, 7, payload()).await;
    let (proxy, seen) = recording_proxy(other.url.clone(), 18672).await;

    let metrics = Arc::new(Metrics::new());
    let health = Arc::new(Health::new(metrics.clone()));
    let client = RpcClient::for_chain(vec![proxy, right.url.clone()], 31337)
        .unwrap()
        .with_endpoint_events(health.clone());
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    let cfg = watch_config(&d, d.block, 0, 1000);
    let (stop, task) = spawn_watcher_on(&store, client, cfg.clone(), metrics.clone());
    let head = right.head().await;
    wait_for(30, "the cursor at the right chain's head", || {
        let c = store.chain_cursor(&cfg.scope).unwrap()?;
        (c.number >= head).then_some(())
    })
    .await;
    stop.cancel();
    task.await.unwrap();

    let subs = store.list::<Subscription>().unwrap();
    assert_eq!(subs.len(), 1, "only the configured chain's purchase");
    assert_eq!(store.list::<VirtualMachine>().unwrap().len(), 1);
    let asked = seen.lock().unwrap().clone();
    assert!(!asked.is_empty(), "the wrong endpoint was checked");
    assert!(
        asked.iter().all(|m| m == "eth_chainId"),
        "nothing else was sent to it: {asked:?}"
    );
    let msg = wrong_chain_message(&health).expect("the condition names it");
    assert!(
        msg.contains("http://127.0.0.1:18672 serves chain id 999, not 31337"),
        "{msg}"
    );
    let text = metrics.render_registry_only();
    assert!(
        text.contains(
            "blockhost_chain_endpoint_out_of_rotation{endpoint=\"http://127.0.0.1:18672\"} 1"
        ),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_restarted_on_another_chain_is_taken_out_after_its_reconnect() {
    if !tools_available() {
        return;
    }
    let port = 18673;
    let first = Anvil::start(port);
    let d = first.deploy().await;
    first.create_plan(&d, "basic", 150).await;
    first.buy(&d, 1, 7, payload()).await;

    let metrics = Arc::new(Metrics::new());
    let health = Arc::new(Health::new(metrics.clone()));
    let client = RpcClient::for_chain(vec![first.url.clone()], 31337)
        .unwrap()
        .with_endpoint_events(health.clone());
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    let cfg = watch_config(&d, d.block, 0, 1000);
    let (stop, task) = spawn_watcher_on(&store, client, cfg.clone(), metrics.clone());
    wait_for(30, "the first VM", || {
        (store.list::<VirtualMachine>().unwrap().len() == 1).then_some(())
    })
    .await;
    let before = store.get::<Subscription>("blockhost-001").unwrap().unwrap();
    assert!(health.conditions()[0].status == ConditionStatus::True);

    // The node goes away; the watcher sees it fail, then it comes back on the
    // same port serving another chain, with the same contracts and purchases.
    drop(first);
    let failures = || {
        let text = metrics.render_registry_only();
        text.lines()
            .filter(|l| l.starts_with("blockhost_chain_errors_total"))
            .count()
    };
    wait_for(30, "a failed step", || (failures() > 0).then_some(())).await;
    let other = Anvil::start_chain("127.0.0.1", port, 999);
    let od = other.deploy().await;
    assert_eq!(od.subs, d.subs);
    other.create_plan(&od, "basic", 150).await;
    for _ in 0..3 {
        other.buy(&od, 1, 30, payload()).await;
    }
    let msg = wait_for(30, "the condition naming the endpoint", || {
        wrong_chain_message(&health)
    })
    .await;
    assert!(
        msg.contains(&format!(
            "http://127.0.0.1:{port} serves chain id 999, not 31337"
        )),
        "{msg}"
    );
    // Give the watcher a few more rounds on the wrong node: still nothing.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.cancel();
    task.await.unwrap();
    assert_eq!(metrics.chain_reorgs.get(), 0, "no reorg was read from it");
    assert_eq!(store.list::<Subscription>().unwrap().len(), 1);
    let after = store.get::<Subscription>("blockhost-001").unwrap().unwrap();
    assert_eq!(
        after.spec, before.spec,
        "nothing of the other chain applied"
    );
    assert_eq!(store.list::<VirtualMachine>().unwrap().len(), 1);
}
