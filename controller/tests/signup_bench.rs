//! Cost of the signup page's `GET /api/v1/nfts/{tokenId}` at 10 and at 10,000
//! minted subscriptions (ignored by default; `bench/signup.sh` runs it and
//! prints the figures). Requests go through the page's router in-process, so
//! the figure is the handler's own cost (rate limit, store lookup, JSON), not
//! the network's. For comparison it also times the scan the handler did before
//! the store had a token index (list every subscription, find the token).
//!
//! Sizes: `BENCH_REQUESTS` (default 2,000 per size), `BENCH_SCANS` (default 50).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::connect_info::MockConnectInfo;
use axum::http::{Request, StatusCode};
use blockhost_controller::metrics::Metrics;
use blockhost_controller::signup::page::PageConfig;
use blockhost_controller::signup::{SignupState, router};
use blockhost_controller::store::chain::BlockRef;
use blockhost_controller::store::{Store, StoreOptions, Writer};
use blockhost_crd::Subscription;
use http_body_util::BodyExt;
use tower::ServiceExt;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn sub(id: u64) -> Subscription {
    let name = format!("blockhost-{id:05}");
    serde_json::from_value(serde_json::json!({
        "apiVersion": "blockhost.io/v1alpha1", "kind": "Subscription",
        "metadata": {"name": name},
        "spec": {"subscriptionId": id, "planId": 1,
                 "subscriber": "0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266",
                 "expiresAt": "2030-01-01T00:00:00Z", "vmName": name,
                 "blockNumber": 1, "transactionHash": "0xab"}
    }))
    .unwrap()
}

/// Token `1000 + id` for subscription `id`.
fn token(id: u64) -> u64 {
    1000 + id
}

/// A store holding `n` subscriptions, each minted: written as the chain
/// watcher and the minter write them (one transaction each side).
fn populated(dir: &std::path::Path, n: u64) -> Store {
    let store = Store::open(&dir.join("s.redb"), StoreOptions::default()).unwrap();
    let end = BlockRef {
        number: 1,
        hash: [1; 32],
    };
    store
        .chain_commit::<()>(
            "bench",
            &[],
            end,
            64,
            |_, _| Ok(()),
            |tx| (0..n).try_for_each(|i| tx.put(&sub(i)).map(|_| ())),
        )
        .unwrap();
    store
        .write(Writer::Minter, false, |w| {
            for i in 0..n {
                let name = sub(i).metadata.name.to_string();
                w.update_status::<Subscription>(&name, |s, _| {
                    s.status.nft_token_id = Some(token(i));
                    Ok(true)
                })?;
            }
            Ok(())
        })
        .unwrap();
    store
}

fn app(store: Store) -> Router {
    let page = PageConfig {
        chain_id: 31337,
        chain_id_hex: "0x7a69".into(),
        rpc_url: "http://127.0.0.1:8545".into(),
        subscriptions_contract: "0x5fbdb2315678afecb367f032d93f642f64180aa3".into(),
        nft_contract: "0xe7f1725e7734ce288f8367e1bb143e90bb3f0512".into(),
        server_public_key: "04aa".into(),
        public_secret: "blockhost-access".into(),
    };
    let st = SignupState::new(store, Arc::new(Metrics::new()), &page, u32::MAX, 64);
    router(st).layer(MockConnectInfo(SocketAddr::from(([127, 0, 0, 1], 40000))))
}

/// Asks for `token` and checks the answer names `want`.
async fn ask(app: &Router, token: u64, want: u64) {
    let req = Request::get(format!("/api/v1/nfts/{token}"))
        .body(Body::empty())
        .unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["subscriptionId"], want);
}

/// Microseconds per call of `f` over `k` calls (ids spread over `0..n`).
async fn per_call<F: std::future::Future<Output = ()>>(
    n: u64,
    k: u64,
    mut f: impl FnMut(u64) -> F,
) -> f64 {
    let start = Instant::now();
    for j in 0..k {
        f((j * 7919) % n).await;
    }
    start.elapsed().as_secs_f64() * 1e6 / k as f64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark; run bench/signup.sh"]
async fn bench_nft_lookup() {
    let requests = env("BENCH_REQUESTS", 2_000);
    let scans = env("BENCH_SCANS", 50);
    for n in [10, 10_000] {
        let dir = tempfile::tempdir().unwrap();
        let store = populated(dir.path(), n);
        let app = app(store.clone());
        per_call(n, 100, |i| ask(&app, token(i), i)).await; // warm the page cache
        let indexed = per_call(n, requests, |i| ask(&app, token(i), i)).await;
        let scan = per_call(n, scans, |i| {
            let store = store.clone();
            async move {
                let subs = store.list::<Subscription>().unwrap();
                let found = subs
                    .iter()
                    .find(|s| s.status.nft_token_id == Some(token(i)));
                assert_eq!(found.map(|s| s.spec.subscription_id), Some(i));
            }
        })
        .await;
        eprintln!(
            "RESULT nft lookup at {n} subscriptions: {indexed:.1} µs/request through the router \
             ({requests} requests); the former scan alone: {scan:.1} µs/request ({scans} scans)"
        );
    }
}
