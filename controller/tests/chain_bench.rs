//! Chain watcher benchmarks on anvil (ignored by default; `bench/chain.sh` runs
//! them in release mode and prints the figures):
//! - catch-up: 100,000 blocks holding 1,000 purchases, read from the deployment
//!   block by a fresh watcher (blocks per second until every VM spec is written);
//! - latency: purchase mined (its `eth_sendTransaction` returned; anvil mines
//!   at once) → the VM spec committed (seen on the store's change feed).
//!
//! Sizes can be changed with `BENCH_BLOCKS`, `BENCH_PURCHASES`, `BENCH_SAMPLES`,
//! `BENCH_RANGE` (eth_getLogs range) and `BENCH_POLL_MS`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod chain_support;

use std::time::{Duration, Instant};

use blockhost_controller::store::ChangeKind;
use blockhost_crd::{Resource, VirtualMachine};
use chain_support::*;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark; run bench/chain.sh"]
async fn bench_catch_up() {
    if !tools_available() {
        return;
    }
    let blocks = env("BENCH_BLOCKS", 100_000);
    let purchases = env("BENCH_PURCHASES", 1_000);
    let range = env("BENCH_RANGE", 2_000);
    let anvil = Anvil::start(18610);
    let d = anvil.deploy().await;
    anvil.create_plan(&d, "basic", 150).await;
    let setup = Instant::now();
    let gap = blocks / purchases;
    for _ in 0..purchases {
        anvil.mine(gap - 1).await;
        anvil.buy(&d, 1, 30, payload()).await;
    }
    let head = anvil.head().await;
    let span = head - d.block + 1;
    eprintln!(
        "setup: {span} blocks with {purchases} purchases in {:.1} s",
        setup.elapsed().as_secs_f64()
    );

    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    let mut cfg = watch_config(&d, d.block, 0, range);
    cfg.poll = Duration::from_millis(10);
    let start = Instant::now();
    let (stop, task, _) = spawn_watcher(&store, vec![anvil.url.clone()], cfg.clone());
    let scope = cfg.scope.clone();
    wait_for(600, "catch-up", || {
        store
            .chain_cursor(&scope)
            .unwrap()
            .filter(|c| c.number >= head)
            .map(|_| ())
    })
    .await;
    let secs = start.elapsed().as_secs_f64();
    stop.cancel();
    task.await.unwrap();
    let vms = store.list::<VirtualMachine>().unwrap().len() as u64;
    assert_eq!(vms, purchases);
    eprintln!(
        "RESULT catch-up: {span} blocks, {purchases} purchases, range {range}: {secs:.2} s = {:.0} blocks/s, {:.0} purchases/s",
        span as f64 / secs,
        purchases as f64 / secs
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark; run bench/chain.sh"]
async fn bench_latency() {
    if !tools_available() {
        return;
    }
    let samples = env("BENCH_SAMPLES", 200) as usize;
    let poll = env("BENCH_POLL_MS", 10);
    let anvil = Anvil::start(18611);
    let d = anvil.deploy().await;
    anvil.create_plan(&d, "basic", 150).await;
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    let mut cfg = watch_config(&d, d.block, 0, 2000);
    cfg.poll = Duration::from_millis(poll);
    let (stop, task, _) = spawn_watcher(&store, vec![anvil.url.clone()], cfg);
    wait_for(10, "plan", || {
        store.get::<blockhost_crd::Plan>("plan-1").unwrap()
    })
    .await;
    let mut feed = store.subscribe();
    let mut lat = Vec::with_capacity(samples);
    for i in 1..=samples {
        let want = format!("blockhost-{i:03}");
        anvil.buy(&d, 1, 30, payload()).await;
        let t0 = Instant::now();
        loop {
            let c = tokio::time::timeout(Duration::from_secs(10), feed.recv())
                .await
                .unwrap()
                .unwrap();
            if c.kind == VirtualMachine::KIND && c.what == ChangeKind::Created && c.name == want {
                break;
            }
        }
        lat.push(t0.elapsed());
        // Spread purchases over the poll phase.
        tokio::time::sleep(Duration::from_millis(3 + (i as u64 * 7) % 11)).await;
    }
    stop.cancel();
    task.await.unwrap();
    lat.sort();
    let p = |q: f64| lat[((lat.len() as f64 - 1.0) * q).round() as usize].as_secs_f64() * 1000.0;
    eprintln!(
        "RESULT latency purchase mined -> VM spec committed ({samples} samples, poll {poll} ms, 0 confirmations): p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        p(0.5),
        p(0.9),
        p(0.99),
        p(1.0)
    );
}
