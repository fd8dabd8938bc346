//! Benchmark: latency from a purchase on anvil to blockhostd's first Proxmox
//! request for it, whole system (real daemon, real fakepve over HTTPS).
//!
//! A byte-forwarding TCP proxy sits between blockhostd and fakepve and stamps
//! the first client bytes after each purchase. The clock starts *before*
//! `eth_sendTransaction` (so mining is included: a conservative figure) and
//! stops at those first bytes. Between samples the daemon is left idle (its
//! resync is an hour), so nothing else talks to Proxmox.
//!
//! Run: `bench/chain.sh` or
//! `cargo test --release -p blockhost-controller --test e2e_bench -- --ignored --nocapture`.
//! Sizes: `BENCH_SAMPLES` (default 50). Prints `RESULT` lines for BENCHMARKS.md.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

#[path = "../controller/tests/chain_support/mod.rs"]
mod chain_support;
#[path = "../controller/tests/common/mod.rs"]
mod common;
#[path = "../controller/chain/tests/support/eciesjs.rs"]
mod eciesjs;
#[path = "../controller/tests/proxmox_support/mod.rs"]
mod proxmox_support;
mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Forwards 127.0.0.1:`port` to `upstream`; records when client bytes arrive.
async fn proxy(port: u16, upstream: String, seen: Arc<Mutex<Vec<Instant>>>) {
    let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut client, _)) = listener.accept().await else {
                return;
            };
            let upstream = upstream.clone();
            let seen = seen.clone();
            tokio::spawn(async move {
                let Ok(mut server) = TcpStream::connect(&upstream).await else {
                    return;
                };
                let (mut cr, mut cw) = client.split();
                let (mut sr, mut sw) = server.split();
                let up = async {
                    let mut buf = vec![0u8; 16384];
                    loop {
                        let n = match cr.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        seen.lock().unwrap().push(Instant::now());
                        if sw.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                    let _ = sw.shutdown().await;
                };
                let down = async {
                    let _ = tokio::io::copy(&mut sr, &mut cw).await;
                    let _ = cw.shutdown().await;
                };
                tokio::join!(up, down);
            });
        }
    });
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

async fn measure(label: &str, port: u16, proxy_port: u16, extra_chain: &str, samples: usize) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let rig = Rig::start_with(port, 0, |cfg, pve_url| {
        let upstream = pve_url
            .trim_start_matches("https://")
            .trim_end_matches('/')
            .to_owned();
        (
            cfg.replace(pve_url, &format!("https://127.0.0.1:{proxy_port}"))
                .replace("resyncSecs: 1\n", "resyncSecs: 3600\n")
                .replace("pollIntervalMs: 20\n", "pollIntervalMs: 1000\n")
                + extra_chain,
            upstream,
        )
    })
    .await;
    proxy(proxy_port, rig.upstream.clone().unwrap(), seen.clone()).await;
    assert_eq!(rig.create_plan("basic", 150), 1);
    rig.fund(USER);
    // Payloads are made beforehand: eciesjs runs in node, not part of the path.
    let mut lat = Vec::new();
    for i in 1..=samples {
        let tx = rig.prepare_buy(USER, 30);
        let name = format!("blockhost-{i:03}");
        // Quiet: the previous VM is fully settled and minted.
        std::thread::sleep(Duration::from_millis(150));
        seen.lock().unwrap().clear();
        let t0 = Instant::now();
        rig.send_prepared(&tx).await;
        let first = rig.wait(30, "first Proxmox request", || {
            seen.lock()
                .unwrap()
                .iter()
                .find(|t| **t >= t0)
                .copied()
                .ok_or_else(|| "none yet".to_owned())
        });
        lat.push(first.duration_since(t0).as_secs_f64() * 1000.0);
        rig.wait_phase(&name, "Running");
        rig.wait_token(&name);
    }
    lat.sort_by(f64::total_cmp);
    println!(
        "RESULT {label}: purchase -> first Proxmox request over {samples} purchases: p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        percentile(&lat, 0.5),
        percentile(&lat, 0.9),
        percentile(&lat, 0.99),
        lat.last().unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "benchmark; run with --ignored (bench/chain.sh)"]
async fn bench_purchase_to_first_proxmox_request() {
    if !tools_available() {
        return;
    }
    let samples: usize = std::env::var("BENCH_SAMPLES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(50);
    // New heads over WebSocket, polling every second as the fallback (defaults).
    measure(
        "new heads (wsUrls), poll 1000 ms",
        18685,
        18687,
        "  wsUrls: [\"ws://127.0.0.1:18685\"]\n",
        samples,
    )
    .await;
    // Polling only, at the default interval: what new heads save.
    measure("polling only, 1000 ms", 18686, 18688, "", samples.min(20)).await;
}
