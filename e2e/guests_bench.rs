//! Benchmark on real guests: purchase mined → first successful wallet SSH
//! login, five purchases one after another (p50 and max, with the breakdown),
//! beside the same image's own boot → sshd measured standalone in the same
//! run and accelerator; then three purchases at once.
//!
//! Run (prints the figures; `#[ignore]`d so CI does not spend ~20 minutes of
//! TCG boots on it):
//! `BLOCKHOST_GUEST_IMAGE=… cargo test -p blockhost-controller --release --test e2e_guests_bench -- --ignored --nocapture`
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../controller/tests/chain_support/mod.rs"]
mod chain_support;
#[path = "../controller/tests/common/mod.rs"]
mod common;
#[path = "../controller/chain/tests/support/eciesjs.rs"]
mod eciesjs;
mod guests_support;
#[path = "../controller/tests/proxmox_support/mod.rs"]
mod proxmox_support;
mod support;

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use guests_support::*;
use serde_json::{Value, json};
use support::*;

/// Steps of a purchase, as (label, how to find its time).
const STEPS: [(&str, &str); 6] = [
    ("spec written", "created"),
    ("clone", "Cloned"),
    ("start", "Started"),
    ("guest agent up", "agent-up"),
    ("access file written", "AccessFileWritten"),
    ("NFT minted", "NftMinted"),
];

struct Sample {
    /// Seconds after the purchase was mined, per step of [`STEPS`], then sshd
    /// accepting TCP and the first login.
    steps: Vec<Option<f64>>,
    sshd: f64,
    login: f64,
}

fn secs(from: DateTime<Utc>, to: DateTime<Utc>) -> f64 {
    (to - from).num_milliseconds() as f64 / 1000.0
}

/// Follows one purchase from `mined` to the first login; `name` is its VM.
fn follow(g: &GuestRig, name: &str, mined: DateTime<Utc>) -> Sample {
    let token = g.wait_token_for(name, 1800);
    let (host, user) = {
        let d = g.decrypt(USER, token).unwrap();
        (
            d["hostname"].as_str().unwrap().to_owned(),
            d["username"].as_str().unwrap().to_owned(),
        )
    };
    let mut sshd = None;
    let start = Instant::now();
    let login = loop {
        assert!(
            start.elapsed() < Duration::from_secs(1800),
            "no login into {name} in 30 min{}",
            g.failure_note
        );
        if sshd.is_none() && g.sshd_listens(&host) {
            sshd = Some(secs(mined, Utc::now()));
        }
        if sshd.is_some() && g.ssh(USER_INDEX, &user, &host, "true").status.success() {
            break secs(mined, Utc::now());
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    Sample {
        steps: step_times(g, name, mined),
        sshd: sshd.unwrap(),
        login,
    }
}

fn step_times(g: &GuestRig, name: &str, mined: DateTime<Utc>) -> Vec<Option<f64>> {
    let events = g.items("events");
    let vm = g.item("vms", name).unwrap();
    let harness: Vec<Value> = g
        .guests()
        .into_iter()
        .filter(|x| x["name"] == json!(name))
        .collect();
    STEPS
        .iter()
        .map(|(_, key)| match *key {
            "created" => vm["metadata"]["creationTimestamp"]
                .as_str()
                .map(|t| secs(mined, t.parse().unwrap())),
            "agent-up" => harness.first().and_then(|h| {
                // The harness's clock: seconds since it started; its wall time is
                // carried in `t0` of the events' owner (the hello's epoch).
                let ev = h["events"].as_array()?;
                let up = ev.iter().find(|e| e[1] == json!("agent-up"))?[0].as_f64()?;
                let epoch = h["epoch"].as_f64()?;
                let at = DateTime::from_timestamp_millis(((epoch + up) * 1000.0) as i64)?;
                Some(secs(mined, at))
            }),
            reason => events
                .iter()
                .find(|e| e["name"] == json!(name) && e["reason"] == json!(reason))
                .map(|e| secs(mined, e["time"].as_str().unwrap().parse().unwrap())),
        })
        .collect()
}

fn p50(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn max(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::MIN, f64::max)
}

fn fmt(v: Option<f64>) -> String {
    v.map_or("-".into(), |x| format!("{x:.1}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: ~20 min of TCG boots; run with --ignored --nocapture"]
async fn purchase_to_first_wallet_login() {
    assert!(guest_tools_available(), "the benchmark needs its tools");
    let g = GuestRig::start("bench", 18692, 1024).await;
    eprintln!("accelerator: {}", g.accel);
    let alone = g.pve.lock().unwrap().cmd(json!({
        "op": "standalone_boot", "address": "10.20.0.250/24", "gateway": "10.20.0.1"
    }));
    eprintln!("standalone boot of the image: {alone}");
    assert_eq!(g.create_plan("basic", 150), 1);
    g.wait(30, "plan-1 mirrored", || {
        g.item("plans", "plan-1").ok_or_else(|| "absent".to_owned())
    });
    g.fund(USER);

    let mut samples = Vec::new();
    for i in 1..=5u64 {
        g.buy(USER, 30);
        let mined = Utc::now();
        let name = format!("blockhost-{i:03}");
        let s = follow(&g, &name, mined);
        eprintln!(
            "{name}: login {:.1} s, sshd {:.1} s, steps {:?}",
            s.login, s.sshd, s.steps
        );
        samples.push(s);
        // Cancelled, so the next boot has the cores to itself (the VM is stopped and deleted).
        g.send(
            SERVER,
            &g.c.subs.clone(),
            "cancelSubscription(uint256)",
            &[&i.to_string()],
        );
        g.wait(300, &format!("{name} deleted"), || {
            g.pve_vm(&name)
                .map_or(Ok(()), |v| Err(format!("{}", v["status"])))
        });
    }

    // Three at once.
    let t0 = Utc::now();
    for _ in 0..3 {
        g.buy(USER, 30);
    }
    let mined = Utc::now();
    let together: Vec<Sample> = (6..=8u64)
        .map(|i| follow(&g, &format!("blockhost-{i:03}"), mined))
        .collect();
    let total = secs(t0, Utc::now());

    let logins: Vec<f64> = samples.iter().map(|s| s.login).collect();
    let sshd: Vec<f64> = samples.iter().map(|s| s.sshd).collect();
    println!(
        "\n## Real guests: purchase mined -> first wallet SSH login ({})",
        g.accel
    );
    println!(
        "standalone boot of the image (same qemu settings): guest agent {} s, sshd {} s",
        alone["agent_secs"], alone["sshd_secs"]
    );
    println!(
        "| purchase | {} | sshd accepts | wallet login |",
        STEPS.map(|s| s.0).join(" | ")
    );
    println!("|---|{}---|---|", "---|".repeat(STEPS.len()));
    for (i, s) in samples.iter().enumerate() {
        println!(
            "| {} | {} | {:.1} | {:.1} |",
            i + 1,
            s.steps
                .iter()
                .map(|x| fmt(*x))
                .collect::<Vec<_>>()
                .join(" | "),
            s.sshd,
            s.login
        );
    }
    println!(
        "login p50 {:.1} s, max {:.1} s; sshd p50 {:.1} s; login minus standalone sshd (p50) {:.1} s",
        p50(logins.clone()),
        max(&logins),
        p50(sshd),
        p50(logins) - alone["sshd_secs"].as_f64().unwrap_or(0.0)
    );
    println!(
        "three at once: logins at {} s after mining; all three logged in after {total:.1} s",
        together
            .iter()
            .map(|s| format!("{:.1}", s.login))
            .collect::<Vec<_>>()
            .join(", ")
    );
}
