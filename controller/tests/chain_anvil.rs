//! The chain watcher against a real anvil: contracts deployed from the committed
//! artifacts, purchases through the original signatures, the watcher's RPC
//! client on the wire. Each test has its own anvil on 127.0.0.1:186xx.
//!
//! Needs anvil (`npm ci`); skipped with a note without it unless
//! `BLOCKHOST_REQUIRE_TOOLS=1`, which makes its absence a failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod chain_support;

use std::time::Duration;

use blockhost_crd::{AnyObject, Plan, Subscription, SubscriptionState, VirtualMachine};
use chain_support::*;
use serde_json::json;

fn vm(store: &blockhost_controller::store::Store, name: &str) -> Option<VirtualMachine> {
    store.get::<VirtualMachine>(name).unwrap()
}

fn sub(store: &blockhost_controller::store::Store, name: &str) -> Option<Subscription> {
    store.get::<Subscription>(name).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purchase_extend_transfer_cancel() {
    if !tools_available() {
        return;
    }
    let anvil = Anvil::start(18601);
    let d = anvil.deploy().await;
    anvil.create_plan(&d, "basic", 150).await;
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    let (stop, task, _) = spawn_watcher(
        &store,
        vec![anvil.url.clone()],
        watch_config(&d, d.block, 0, 1000),
    );

    // Purchase → VM with the plan's resources, the buyer as owner, the chain's expiry.
    anvil.buy(&d, 1, 30, payload()).await;
    let v = wait_for(10, "VM blockhost-001", || vm(&store, "blockhost-001")).await;
    let plan: Plan = store.get("plan-1").unwrap().expect("plan mirrored");
    assert_eq!(plan.spec.display_name.as_deref(), Some("basic"));
    assert_eq!(plan.spec.price_per_day_usd_cents, Some(150));
    assert_eq!(v.spec.owner.to_lower_hex(), BUYER);
    assert_eq!(v.spec.resources, plan.spec.resources);
    assert_eq!(v.spec.plan.as_ref().unwrap().as_str(), "plan-1");
    assert_eq!(
        v.spec.expires_at.unwrap().timestamp() as u64,
        anvil.expires_at(&d, 1).await
    );
    assert_eq!(
        sub(&store, "blockhost-001").unwrap().status.state,
        SubscriptionState::Active
    );

    // Extend → expiresAt is the event's absolute value (not added again).
    anvil.extend(&d, 1, 10).await;
    let want = anvil.expires_at(&d, 1).await;
    wait_for(10, "extended expiry", || {
        vm(&store, "blockhost-001")
            .filter(|v| v.spec.expires_at.unwrap().timestamp() as u64 == want)
    })
    .await;

    // NFT: the server mints token 0 to the buyer (what the minter will do), the
    // minter records the id, the buyer transfers it → the VM's owner follows.
    let r = anvil
        .send(
            OWNER,
            Some(d.nft),
            &alloy_sol_types::SolCall::abi_encode(
                &blockhost_chain::bindings::AccessCredentialNFT::mintCall {
                    to: addr(BUYER),
                    userEncrypted: vec![1, 2, 3].into(),
                },
            ),
        )
        .await;
    assert_eq!(r["status"], "0x1");
    store
        .update_status_as::<Subscription>(
            blockhost_controller::store::Writer::Minter,
            "blockhost-001",
            |s| {
                s.status.nft_token_id = Some(0);
                true
            },
        )
        .unwrap();
    anvil
        .send(
            BUYER,
            Some(d.nft),
            &alloy_sol_types::SolCall::abi_encode(
                &blockhost_chain::bindings::AccessCredentialNFT::transferFromCall {
                    from: addr(BUYER),
                    to: addr(OTHER),
                    tokenId: alloy_primitives::U256::ZERO,
                },
            ),
        )
        .await;
    wait_for(10, "owner change", || {
        vm(&store, "blockhost-001").filter(|v| v.spec.owner.to_lower_hex() == OTHER)
    })
    .await;

    // Cancel → the VM is deleted; the subscription stays, marked cancelled.
    anvil.cancel(&d, 1).await;
    wait_for(10, "VM deleted", || {
        vm(&store, "blockhost-001").is_none().then_some(())
    })
    .await;
    let s = sub(&store, "blockhost-001").unwrap();
    assert!(s.spec.cancelled);
    assert_eq!(s.status.state, SubscriptionState::Cancelled);
    stop.cancel();
    task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_payload_and_unknown_plan() {
    if !tools_available() {
        return;
    }
    let anvil = Anvil::start(18602);
    let d = anvil.deploy().await;
    anvil.create_plan(&d, "basic", 150).await;
    // The watcher starts after the plan's block: it never sees PlanCreated, so
    // plan 1 is unknown until an operator applies a Plan for it.
    let from = anvil.head().await + 1;
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    let (stop, task, _) = spawn_watcher(
        &store,
        vec![anvil.url.clone()],
        watch_config(&d, from, 0, 1000),
    );

    anvil.buy(&d, 1, 30, b"not an ECIES message".to_vec()).await;
    anvil.buy(&d, 1, 30, payload()).await;
    let s = wait_for(10, "subscription 1", || sub(&store, "blockhost-001")).await;
    assert_eq!(s.status.state, SubscriptionState::PayloadInvalid);
    assert_eq!(s.status.conditions[0].reason, "PayloadUndecryptable");
    let ev = store
        .events(Some(("Subscription", "blockhost-001")), 10)
        .unwrap();
    assert!(
        ev.iter().any(|e| e.reason == "PayloadUndecryptable"),
        "{ev:?}"
    );
    let s = wait_for(10, "subscription 2", || sub(&store, "blockhost-002")).await;
    assert_eq!(s.status.state, SubscriptionState::PlanUnknown);
    assert!(vm(&store, "blockhost-001").is_none() && vm(&store, "blockhost-002").is_none());

    let plan: Plan = serde_json::from_value(json!({
        "apiVersion": "blockhost.io/v1alpha1", "kind": "Plan", "metadata": {"name": "small"},
        "spec": {"chainPlanId": 1, "resources": {"cores": 2, "memoryMiB": 2048, "diskGiB": 20}, "template": 9001}
    }))
    .unwrap();
    store
        .apply(vec![AnyObject::Plan(Box::new(plan))], false)
        .unwrap();
    let v = wait_for(10, "VM after the plan appeared", || {
        vm(&store, "blockhost-002")
    })
    .await;
    assert_eq!(v.spec.resources.cores.get(), 2);
    assert!(
        vm(&store, "blockhost-001").is_none(),
        "a bad payload never gets a VM"
    );
    // Subscriptions are the watcher's: an operator cannot apply one.
    let err = store
        .apply(vec![AnyObject::Subscription(Box::new(s))], false)
        .unwrap_err();
    assert!(err.to_string().contains("chain watcher"), "{err}");
    stop.cancel();
    task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reorgs_before_and_after_confirmation() {
    if !tools_available() {
        return;
    }
    let anvil = Anvil::start(18603);
    let d = anvil.deploy().await;
    anvil.create_plan(&d, "basic", 150).await;
    anvil.mine(3).await;

    // confirmations = 3: a purchase with one block on top is not applied; a reorg
    // of depth 2 removes it.
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    let (stop, task, _) = spawn_watcher(
        &store,
        vec![anvil.url.clone()],
        watch_config(&d, d.block, 3, 1000),
    );
    wait_for(10, "plan mirrored", || store.get::<Plan>("plan-1").unwrap()).await;
    anvil.buy(&d, 1, 30, payload()).await;
    anvil.mine(1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(sub(&store, "blockhost-001").is_none(), "not confirmed yet");
    anvil.rpc("anvil_reorg", json!([2, []])).await;
    anvil.mine(6).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        sub(&store, "blockhost-001").is_none(),
        "reverted before its confirmations: no subscription"
    );
    assert!(vm(&store, "blockhost-001").is_none());
    stop.cancel();
    task.await.unwrap();

    // confirmations = 0: applied, then reverted → undone.
    let dir2 = tempfile::tempdir().unwrap();
    let store = open_store(dir2.path());
    let (stop, task, metrics) = spawn_watcher(
        &store,
        vec![anvil.url.clone()],
        watch_config(&d, d.block, 0, 1000),
    );
    anvil.buy(&d, 1, 30, payload()).await;
    wait_for(10, "VM", || vm(&store, "blockhost-001")).await;
    anvil.rpc("anvil_reorg", json!([1, []])).await;
    // VM and subscription go in the same transaction.
    wait_for(10, "VM and subscription undone", || {
        (vm(&store, "blockhost-001").is_none() && sub(&store, "blockhost-001").is_none())
            .then_some(())
    })
    .await;
    assert!(metrics.chain_reorgs.get() >= 1);
    stop.cancel();
    task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purchases_while_down_are_served_once_after_restart() {
    if !tools_available() {
        return;
    }
    let anvil = Anvil::start(18604);
    let d = anvil.deploy().await;
    anvil.create_plan(&d, "basic", 150).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = watch_config(&d, d.block, 0, 7);
    {
        let store = open_store(dir.path());
        let (stop, task, _) = spawn_watcher(&store, vec![anvil.url.clone()], cfg.clone());
        anvil.buy(&d, 1, 30, payload()).await;
        wait_for(10, "first VM", || vm(&store, "blockhost-001")).await;
        // Killed mid-flight (the task is aborted wherever it is).
        task.abort();
        let _ = task.await;
        stop.cancel();
    }
    // 50 blocks with purchases while the watcher is down.
    for _ in 0..50 {
        anvil.buy(&d, 1, 30, payload()).await;
    }
    let store = open_store(dir.path());
    let (stop, task, _) = spawn_watcher(&store, vec![anvil.url.clone()], cfg);
    wait_for(30, "51 VMs", || {
        (store.list::<VirtualMachine>().unwrap().len() == 51).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let vms = store.list::<VirtualMachine>().unwrap();
    assert_eq!(vms.len(), 51);
    assert!(
        vms.iter().all(|v| v.metadata.generation == Some(1)),
        "each applied once"
    );
    for v in &vms {
        let evs = store
            .events(Some(("VirtualMachine", v.metadata.name.as_str())), 50)
            .unwrap();
        assert_eq!(
            evs.iter().filter(|e| e.reason == "Created").count(),
            1,
            "{}",
            v.metadata.name
        );
    }
    stop.cancel();
    task.await.unwrap();
}

/// A JSON-RPC proxy in front of anvil that refuses `eth_getLogs` over more than
/// `max` blocks, as hosted nodes do.
async fn range_limiting_proxy(upstream: String, max: u64) -> String {
    use axum::{Json, Router, routing::post};
    let client = reqwest::Client::new();
    let app = Router::new().route(
        "/",
        post(move |Json(body): Json<serde_json::Value>| {
            let client = client.clone();
            let upstream = upstream.clone();
            async move {
                if body["method"] == "eth_getLogs" {
                    let f = &body["params"][0];
                    let from = q(&f["fromBlock"]);
                    let to = q(&f["toBlock"]);
                    if to - from + 1 > max {
                        return Json(json!({"jsonrpc": "2.0", "id": body["id"], "error": {"code": -32005, "message": format!("query exceeds max block range {max}")}}));
                    }
                }
                let r: serde_json::Value = client.post(&upstream).json(&body).send().await.unwrap().json().await.unwrap();
                Json(r)
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:18650")
        .await
        .unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_ranges_adapt_and_a_dead_endpoint_fails_over() {
    if !tools_available() {
        return;
    }
    let anvil = Anvil::start(18605);
    let d = anvil.deploy().await;
    anvil.create_plan(&d, "basic", 150).await;
    for _ in 0..5 {
        anvil.mine(40).await;
        anvil.buy(&d, 1, 30, payload()).await;
    }
    let proxy = range_limiting_proxy(anvil.url.clone(), 25).await;
    // The first URL has nothing listening.
    let urls = vec!["http://127.0.0.1:18699".to_string(), proxy];
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    let (stop, task, metrics) = spawn_watcher(&store, urls, watch_config(&d, d.block, 0, 1000));
    wait_for(30, "5 VMs", || {
        (store.list::<VirtualMachine>().unwrap().len() == 5).then_some(())
    })
    .await;
    assert!(
        metrics.chain_range_refusals.get() >= 1,
        "the proxy refused and the watcher narrowed"
    );
    stop.cancel();
    task.await.unwrap();
}

/// New heads over WebSocket wake the watcher: with polling at a minute, a
/// purchase is still applied within moments. A dead WebSocket endpoint leaves
/// polling working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_heads_wake_the_watcher_and_polling_stays_the_fallback() {
    use blockhost_chain::heads;
    use std::sync::Arc;

    if !tools_available() {
        return;
    }
    let anvil = Anvil::start(18606);
    let d = anvil.deploy().await;
    anvil.create_plan(&d, "basic", 150).await;
    let run = |ws: Vec<String>, poll_ms: u64, dir: &std::path::Path| {
        let store = open_store(dir);
        let mut cfg = watch_config(&d, d.block, 0, 1000);
        cfg.poll = Duration::from_millis(poll_ms);
        let wake = Arc::new(tokio::sync::Notify::new());
        let (stop, _, metrics) =
            spawn_watcher_woken(&store, vec![anvil.url.clone()], cfg, Some(wake.clone()));
        tokio::spawn(heads::run(ws, wake, metrics.clone(), stop.clone()));
        (store, stop, metrics)
    };

    // Polling every minute, heads over WebSocket: the first pass reads the
    // plan; the purchase after it is seen only thanks to the new head.
    let dir = tempfile::tempdir().unwrap();
    let (store, stop, metrics) = run(vec![format!("ws://127.0.0.1:18606")], 60_000, dir.path());
    wait_for(10, "plan mirrored", || {
        store.get::<blockhost_crd::Plan>("plan-1").unwrap()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await; // subscribed
    anvil.buy(&d, 1, 30, payload()).await;
    wait_for(5, "VM from a new head", || vm(&store, "blockhost-001")).await;
    assert!(metrics.chain_new_heads.get() >= 1);
    stop.cancel();

    // A dead WebSocket endpoint: polling (50 ms) carries on.
    let dir = tempfile::tempdir().unwrap();
    let (store, stop, _) = run(vec!["ws://127.0.0.1:1".into()], 50, dir.path());
    anvil.buy(&d, 1, 30, payload()).await;
    wait_for(10, "VM by polling", || vm(&store, "blockhost-002")).await;
    stop.cancel();
}
