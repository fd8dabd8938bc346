//! blockhostd with a `chain` section, as real processes: the server-key file
//! rules, `bhctl get/describe subscriptions`, and a SIGKILLed daemon that finds
//! every purchase made while it was down (each served once) after a restart.
//!
//! Needs anvil; skipped without it unless `BLOCKHOST_REQUIRE_TOOLS=1`. anvil on
//! 127.0.0.1:18630.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod chain_support;
mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use chain_support::*;
use common::{Daemon, stderr, stdout};

fn write_config(dir: &Path, anvil: &Anvil, d: &Deployed, key_mode: u32) {
    write_config_range(dir, anvil, d, key_mode, 2000);
}

fn write_config_range(dir: &Path, anvil: &Anvil, d: &Deployed, key_mode: u32, range: u64) {
    let key = dir.join("server.key");
    std::fs::write(&key, format!("0x{SERVER_KEY}\n")).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(key_mode)).unwrap();
    let cfg = format!(
        "chain:\n  chainId: 31337\n  rpcUrls: [\"{}\"]\n  subscriptionsContract: \"{:#x}\"\n  nftContract: \"{:#x}\"\n  deploymentBlock: {}\n  confirmations: 0\n  pollIntervalMs: 20\n  maxBlockRange: {range}\n  serverKeyFile: {}\n",
        anvil.url,
        d.subs,
        d.nft,
        d.block,
        key.display()
    );
    std::fs::write(dir.join("blockhost.yaml"), cfg).unwrap();
}

fn items(d: &Daemon, what: &str) -> Vec<serde_json::Value> {
    let o = d.bhctl(&["get", what, "-o", "json"]);
    assert!(o.status.success(), "get {what}: {}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    v["items"].as_array().unwrap().clone()
}

fn wait_items(d: &Daemon, what: &str, n: usize) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let it = items(d, what);
        if it.len() >= n {
            return it;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {} of {n}; log:\n{}",
            it.len(),
            d.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_serves_purchases_made_while_it_was_killed() {
    if !tools_available() {
        return;
    }
    let anvil = Anvil::start(18630);
    let d = anvil.deploy().await;
    anvil.create_plan(&d, "basic", 150).await;
    let dir = tempfile::tempdir().unwrap();

    // A key file others can read: refused, and the key never shows in the log.
    write_config(dir.path(), &anvil, &d, 0o644);
    let out = Command::new(env!("CARGO_BIN_EXE_blockhostd"))
        .arg("--store")
        .arg(dir.path().join("state.redb"))
        .arg("--socket")
        .arg(dir.path().join("api.sock"))
        .env("BLOCKHOST_CONFIG", dir.path().join("blockhost.yaml"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("chmod 600"), "{err}");
    assert!(!err.contains(SERVER_KEY), "the key leaked into the log");

    write_config(dir.path(), &anvil, &d, 0o600);
    let daemon = Daemon::start(dir.path());
    for _ in 0..3 {
        anvil.buy(&d, 1, 30, payload()).await;
    }
    wait_items(&daemon, "vms", 3);
    let o = daemon.bhctl(&["get", "subscriptions"]);
    let table = stdout(&o);
    assert!(o.status.success(), "{}", stderr(&o));
    let header = table.lines().next().unwrap();
    for col in ["ID", "PLAN", "SUBSCRIBER", "EXPIRES", "VM", "STATE"] {
        assert!(header.contains(col), "{header}");
    }
    assert!(
        table.contains("blockhost-003") && table.contains("Active"),
        "{table}"
    );
    let o = daemon.bhctl(&["get", "subscriptions", "-o", "wide"]);
    assert!(
        stdout(&o).lines().next().unwrap().contains("BLOCK"),
        "{}",
        stdout(&o)
    );
    let o = daemon.bhctl(&["get", "subs", "-o", "name"]);
    assert!(
        stdout(&o).contains("subscription/blockhost-001"),
        "{}",
        stdout(&o)
    );
    let o = daemon.bhctl(&["get", "subscription", "blockhost-001", "-o", "yaml"]);
    assert!(stdout(&o).contains("subscriptionId: 1"), "{}", stdout(&o));
    let o = daemon.bhctl(&["describe", "subscription", "blockhost-002"]);
    assert!(stdout(&o).contains("Subscription id: 2"), "{}", stdout(&o));
    let o = daemon.bhctl(&["get", "plans"]);
    assert!(stdout(&o).contains("plan-1"), "{}", stdout(&o));
    let o = daemon.bhctl(&["delete", "subscription", "blockhost-001"]);
    assert!(
        !o.status.success() && stderr(&o).contains("cancel on chain"),
        "{}",
        stderr(&o)
    );

    daemon.kill9();
    // 50 blocks with purchases while the daemon is down.
    for _ in 0..50 {
        anvil.buy(&d, 1, 30, payload()).await;
    }
    let daemon = Daemon::start(dir.path());
    let vms = wait_items(&daemon, "vms", 53);
    std::thread::sleep(Duration::from_millis(300));
    let vms_after = items(&daemon, "vms");
    assert_eq!(vms_after.len(), 53);
    assert!(
        vms.iter()
            .chain(&vms_after)
            .all(|v| v["metadata"]["generation"] == 1),
        "each served once"
    );
    let subs = items(&daemon, "subscriptions");
    assert_eq!(subs.len(), 53);
    assert!(subs.iter().all(|s| s["status"]["state"] == "Active"));
}

/// SIGKILL at arbitrary moments of a catch-up (one block per commit, so kills
/// land between and during commits): after the last restart every purchase has
/// exactly one VM, created once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_sigkill_during_catch_up_loses_and_duplicates_nothing() {
    if !tools_available() {
        return;
    }
    let anvil = Anvil::start(18631);
    let d = anvil.deploy().await;
    anvil.create_plan(&d, "basic", 150).await;
    for _ in 0..40 {
        anvil.buy(&d, 1, 30, payload()).await;
        anvil.mine(3).await;
    }
    let dir = tempfile::tempdir().unwrap();
    write_config_range(dir.path(), &anvil, &d, 0o600, 1);
    let mut progress = Vec::new();
    for round in 0..6u64 {
        let daemon = Daemon::start(dir.path());
        std::thread::sleep(Duration::from_millis(40 + round * 37));
        daemon.kill9();
        let store = open_store(dir.path());
        progress.push(store.count("VirtualMachine").unwrap());
    }
    eprintln!("VMs after each SIGKILL: {progress:?}");
    assert!(
        progress[0] < 40,
        "the first kill landed mid-catch-up: {progress:?}"
    );
    let daemon = Daemon::start(dir.path());
    wait_items(&daemon, "vms", 40);
    std::thread::sleep(Duration::from_millis(300));
    let vms = items(&daemon, "vms");
    assert_eq!(vms.len(), 40);
    assert!(vms.iter().all(|v| v["metadata"]["generation"] == 1));
    for v in &vms {
        let name = v["metadata"]["name"].as_str().unwrap();
        let o = daemon.bhctl(&["get", "events", name, "-o", "json"]);
        let ev: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
        let created = ev["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["reason"] == "Created")
            .count();
        assert_eq!(created, 1, "{name}: {ev}");
    }
}
