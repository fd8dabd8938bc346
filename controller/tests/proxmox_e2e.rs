//! End-to-end: the real `blockhostd` and `bhctl` binaries driving a real fakepve
//! process over HTTPS (API token, certificate pinned by fingerprint).
//!
//! Each test starts its own fakepve on a 127.0.11.x address and its own daemon on
//! a temp dir, and checks both sides: the object through `bhctl get -o json`, and
//! Proxmox through fakepve's control channel. Every test ends by asserting that PVE
//! never answered 400 (its parameter validation against the PVE 9 schema).
//!
//! fakepve runs with time_scale 0 (its tasks finish at once), so the waits below
//! are for the daemon's own scheduling; all are bounded and none is timed as an
//! assertion. Grace-period deletion is measured in days in the configuration and is
//! covered by the in-process tests (`reconcile/vm/tests.rs`), not here.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

mod common;
mod proxmox_support;

use std::time::Duration;

use proxmox_support::*;
use serde_json::json;

const LIMIT: Duration = Duration::from_secs(60);

/// `vmid` of a VM object.
fn vmid(v: &serde_json::Value) -> u64 {
    v["status"]["vmid"].as_u64().expect("a vmid in status")
}

/// Waits until fakepve reports the VM named `name` in `status`.
fn wait_pve_status(
    d: &common::Daemon,
    pve: &mut FakePve,
    name: &str,
    status: &str,
) -> serde_json::Value {
    wait_for(d, LIMIT, &format!("PVE VM {name} {status}"), || {
        match pve.vm_named(name) {
            Some(v) if v["status"] == json!(status) => Ok(v),
            Some(v) => Err(format!("status {}", v["status"])),
            None => Err("absent in PVE".into()),
        }
    })
}

#[test]
fn apply_creates_a_configured_running_vm_then_suspend_resume_delete_converge() {
    let mut pve = start_fakepve();
    pve.auto_agent();
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), &pve, &Tuning::default());
    let d = daemon(dir.path());

    apply(&d, &vm_manifest("web", ""));
    let obj = wait_phase(&d, "web", "Running", LIMIT);
    let id = vmid(&obj);
    let ipv4 = obj["status"]["addresses"]["ipv4"]
        .as_str()
        .unwrap()
        .to_owned();
    let ipv6 = obj["status"]["addresses"]["ipv6"]
        .as_str()
        .unwrap()
        .to_owned();

    // Proxmox side: one VM, the spec's settings, running.
    let vms = pve.vms();
    assert_eq!(vms.len(), 1, "exactly one VM in PVE: {vms:#?}");
    let vm = &vms[0];
    assert_eq!(vm["vmid"].as_u64(), Some(id));
    assert_eq!(vm["name"], json!("web"));
    assert_eq!(vm["status"], json!("running"));
    let cfg = &vm["config"];
    assert_eq!(cfg["cores"].to_string().trim_matches('"'), "2", "{cfg:#?}");
    assert_eq!(
        cfg["memory"].to_string().trim_matches('"'),
        "1536",
        "{cfg:#?}"
    );
    let ipc = cfg["ipconfig0"].as_str().unwrap();
    assert!(ipc.contains(&format!("ip={ipv4}/24")), "{ipc}");
    assert!(ipc.contains("gw=10.20.0.1"), "{ipc}");
    assert!(ipc.contains(&format!("ip6={ipv6}/128")), "{ipc}");
    assert!(ipc.contains("gw6=2001:db8:20::1"), "{ipc}");
    let tags = cfg["tags"].as_str().unwrap();
    let uid = obj["metadata"]["uid"].as_str().unwrap();
    assert!(tags.split(';').any(|t| t == "blockhost"), "{tags}");
    assert!(tags.split(';').any(|t| t == format!("bh-{uid}")), "{tags}");
    assert_eq!(cfg["ciuser"], json!("alice"));

    // The access file went in through the guest agent.
    let agent = pve.cmd(json!({"op": "agent_requests", "vmid": id}));
    let writes: Vec<_> = agent
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r[0] == json!("file-write"))
        .collect();
    assert_eq!(writes.len(), 1, "one access-file write: {agent:#}");
    let text = writes[0].to_string();
    assert!(text.contains("/etc/blockhost/access.json"), "{text}");

    // Suspend: shut down, disk kept.
    apply(&d, &vm_manifest("web", "  powerState: Suspended\n"));
    wait_phase(&d, "web", "Suspended", LIMIT);
    wait_pve_status(&d, &mut pve, "web", "stopped");
    assert_eq!(pve.vms().len(), 1);

    // Resume.
    apply(&d, &vm_manifest("web", "  powerState: Running\n"));
    wait_phase(&d, "web", "Running", LIMIT);
    wait_pve_status(&d, &mut pve, "web", "running");

    // Delete: gone from PVE, then from the store.
    let o = d.bhctl(&["delete", "vm", "web"]);
    assert!(o.status.success(), "{}", common::stderr(&o));
    wait_for(&d, LIMIT, "web to be deleted", || match get_vm(&d, "web") {
        None => Ok(()),
        Some(v) => Err(format!("phase {}", v["status"]["phase"])),
    });
    assert!(pve.vms().is_empty(), "PVE still has {:#?}", pve.vms());
    pve.assert_no_validation_errors();
    assert!(
        !d.log().contains(TOKEN_SECRET),
        "the token secret reached the daemon's log"
    );
}

#[test]
fn an_expired_subscription_is_suspended_with_its_disk() {
    let mut pve = start_fakepve();
    pve.auto_agent();
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), &pve, &Tuning::default());
    let d = daemon(dir.path());
    apply(&d, &vm_manifest("old", ""));
    wait_phase(&d, "old", "Running", LIMIT);
    // Expired a minute ago: suspended, grace clock started (7 days: not deleted).
    let past = (chrono::Utc::now() - chrono::Duration::minutes(1)).to_rfc3339();
    apply(
        &d,
        &vm_manifest("old", &format!("  expiresAt: \"{past}\"\n")),
    );
    let obj = wait_phase(&d, "old", "Suspended", LIMIT);
    assert!(obj["status"]["suspendedAt"].is_string(), "{obj:#}");
    wait_pve_status(&d, &mut pve, "old", "stopped");
    // Extended: running again.
    let future = (chrono::Utc::now() + chrono::Duration::days(30)).to_rfc3339();
    apply(
        &d,
        &vm_manifest("old", &format!("  expiresAt: \"{future}\"\n")),
    );
    wait_phase(&d, "old", "Running", LIMIT);
    wait_pve_status(&d, &mut pve, "old", "running");
    assert_eq!(pve.vms().len(), 1);
    pve.assert_no_validation_errors();
}

#[test]
fn a_failed_start_task_is_reported_and_retried_until_it_succeeds() {
    let mut pve = start_fakepve();
    pve.auto_agent();
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), &pve, &Tuning::default());
    let d = daemon(dir.path());
    apply(&d, &vm_manifest("t", ""));
    let id = vmid(&wait_phase(&d, "t", "Running", LIMIT));
    apply(&d, &vm_manifest("t", "  powerState: Suspended\n"));
    wait_phase(&d, "t", "Suspended", LIMIT);

    // The start task ends in error: the message reaches the object.
    let msg = "volume 'local-lvm:vm-disk-0' does not exist";
    pve.cmd(json!({"op": "set", "vmid": id, "attr": "start_error", "value": msg}));
    apply(&d, &vm_manifest("t", ""));
    wait_for(&d, LIMIT, "the task error on the object", || {
        let v = get_vm(&d, "t").unwrap();
        let e = v["status"]["lastError"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        if e.contains("does not exist") {
            Ok(())
        } else {
            Err(e)
        }
    });
    // Fixed behind our back: the retry (backoff) gets it running.
    pve.cmd(json!({"op": "set", "vmid": id, "attr": "start_error", "value": null}));
    let obj = wait_phase(&d, "t", "Running", LIMIT);
    // Running and the error cleared are one status write.
    assert!(obj["status"]["lastError"].is_null(), "{obj:#}");
    wait_pve_status(&d, &mut pve, "t", "running");
    assert_eq!(pve.vms().len(), 1);
    pve.assert_no_validation_errors();
}

#[test]
fn a_locked_vm_is_waited_for_then_suspended() {
    let mut pve = start_fakepve();
    pve.auto_agent();
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), &pve, &Tuning::default());
    let d = daemon(dir.path());
    apply(&d, &vm_manifest("l", ""));
    let id = vmid(&wait_phase(&d, "l", "Running", LIMIT));
    pve.cmd(json!({"op": "snapshot_lock", "vmid": id, "lock": "backup"}));
    apply(&d, &vm_manifest("l", "  powerState: Suspended\n"));
    wait_for(&d, LIMIT, "a lock error on the object", || {
        let v = get_vm(&d, "l").unwrap();
        let e = v["status"]["lastError"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        if e.contains("locked") { Ok(()) } else { Err(e) }
    });
    // Still running in PVE: nothing forced through the lock.
    assert_eq!(pve.vm_named("l").unwrap()["status"], json!("running"));
    pve.cmd(json!({"op": "unlock", "vmid": id}));
    wait_phase(&d, "l", "Suspended", LIMIT);
    wait_pve_status(&d, &mut pve, "l", "stopped");
    pve.assert_no_validation_errors();
}

#[test]
fn a_shutdown_slower_than_its_timeout_ends_in_a_hard_stop() {
    let mut pve = start_fakepve();
    pve.auto_agent();
    let dir = tempfile::tempdir().unwrap();
    let tuning = Tuning {
        shutdown_timeout_secs: 1,
        ..Tuning::default()
    };
    write_config(dir.path(), &pve, &tuning);
    let d = daemon(dir.path());
    apply(&d, &vm_manifest("slow", ""));
    let id = vmid(&wait_phase(&d, "slow", "Running", LIMIT));
    // The guest takes 300 PVE seconds to power off; we allow 1.
    pve.cmd(json!({"op": "set", "vmid": id, "attr": "shutdown_secs", "value": 300}));
    apply(&d, &vm_manifest("slow", "  powerState: Suspended\n"));
    wait_phase(&d, "slow", "Suspended", LIMIT);
    wait_pve_status(&d, &mut pve, "slow", "stopped");
    let reqs = pve.requests();
    let shutdown = reqs
        .iter()
        .position(|(m, p)| m == "POST" && p.ends_with(&format!("/qemu/{id}/status/shutdown")));
    let stop = reqs
        .iter()
        .rposition(|(m, p)| m == "POST" && p.ends_with(&format!("/qemu/{id}/status/stop")));
    assert!(
        matches!((shutdown, stop), (Some(a), Some(b)) if a < b),
        "a shutdown, then a stop: {reqs:#?}"
    );
    pve.assert_no_validation_errors();
}

#[test]
fn injected_5xx_answers_converge_without_duplicates() {
    let mut pve = start_fakepve();
    pve.auto_agent();
    // The first clone, config and start each fail twice with a 5xx, the listing once.
    for (method, suffix, status) in [
        ("POST", "/clone", 500),
        ("PUT", "/config", 503),
        ("POST", "/status/start", 500),
        ("GET", "/cluster/resources", 502),
    ] {
        let times = if suffix == "/cluster/resources" { 1 } else { 2 };
        pve.cmd(
            json!({"op": "fail", "method": method, "suffix": suffix, "status": status,
                       "message": "injected by the test", "times": times}),
        );
    }
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), &pve, &Tuning::default());
    let d = daemon(dir.path());
    let names = ["f1", "f2", "f3"];
    let all: String = names.iter().map(|n| vm_manifest(n, "") + "---\n").collect();
    apply(&d, &all);
    for n in names {
        wait_phase(&d, n, "Running", LIMIT);
    }
    let vms = pve.vms();
    assert_eq!(vms.len(), 3, "one VM per spec: {vms:#?}");
    for n in names {
        let vm = pve.vm_named(n).unwrap();
        assert_eq!(vm["status"], json!("running"));
        // A failure between clone and resize must not leave the template's disk.
        // (fakepve 0.5.0 answers a qemu resize without changing the disk, so the
        // request is what can be checked here; the in-process tests check the size.)
        let resize = format!("/qemu/{}/resize", vm["vmid"]);
        let reqs = pve.requests();
        assert!(
            reqs.iter().any(|(m, p)| m == "PUT" && p.ends_with(&resize)),
            "{n}: no resize: {reqs:#?}"
        );
    }
    let five: Vec<_> = pve
        .error_answers()
        .into_iter()
        .filter(|a| {
            a[3].as_str()
                .is_some_and(|t| t.contains("injected by the test"))
        })
        .collect();
    assert_eq!(five.len(), 7, "every injected failure was hit: {five:#?}");
    pve.assert_no_validation_errors();
}

#[test]
fn sigkill_during_20_creates_leaves_exactly_20_running_vms() {
    use rand::Rng;
    let mut pve = start_fakepve();
    pve.auto_agent();
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), &pve, &Tuning::default());
    let names: Vec<String> = (0..20).map(|i| format!("k{i:02}")).collect();
    let all: String = names.iter().map(|n| vm_manifest(n, "") + "---\n").collect();
    let mut rng = rand::thread_rng();
    let mut d = daemon(dir.path());
    apply(&d, &all);
    // Kill at random points while the creates run: 0-250 ms after each start, as
    // long as some VM is not Running yet (at most 10 kills). The creates take
    // about a second in all (each waits ~2 s for its guest agent once started).
    for round in 0..10 {
        std::thread::sleep(Duration::from_millis(rng.gen_range(0..250)));
        let running = phases(&d).values().filter(|p| *p == "Running").count();
        eprintln!(
            "round {round}: {running}/20 Running, {} VMs in PVE; SIGKILL",
            pve.vms().len()
        );
        d.kill9();
        d = daemon(dir.path());
        if running == names.len() {
            break;
        }
    }
    for n in &names {
        wait_phase(&d, n, "Running", Duration::from_secs(120));
    }
    let vms = pve.vms();
    assert_eq!(vms.len(), 20, "exactly 20 VMs in PVE: {vms:#?}");
    let mut seen: Vec<String> = vms
        .iter()
        .map(|v| v["name"].as_str().unwrap().to_owned())
        .collect();
    seen.sort();
    assert_eq!(seen, names, "one VM per spec, no duplicates");
    for v in &vms {
        assert_eq!(v["status"], json!("running"), "{v:#}");
        let obj = get_vm(&d, v["name"].as_str().unwrap()).unwrap();
        assert_eq!(
            obj["status"]["vmid"], v["vmid"],
            "the object points at its VM"
        );
    }
    pve.assert_no_validation_errors();
}

/// The reasons and messages of a VM's events, oldest first.
fn events(d: &common::Daemon, name: &str) -> Vec<(String, String)> {
    let o = d.bhctl(&["get", "events", name, "-o", "json"]);
    assert!(o.status.success(), "{}", common::stderr(&o));
    let ev: serde_json::Value = serde_json::from_str(&common::stdout(&o)).unwrap();
    ev["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["reason"].as_str().unwrap_or_default().to_owned(),
                e["message"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

/// A condition of a VM object, by type.
fn condition(v: &serde_json::Value, type_: &str) -> Option<serde_json::Value> {
    v["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == json!(type_))
        .cloned()
}

/// The entries of a VM's `ipfilter-net0`, sorted.
fn ipfilter(pve: &mut FakePve, vmid: u64) -> Vec<String> {
    let fw = pve.firewall(vmid);
    let mut v: Vec<String> = fw["ipset"]["ipfilter-net0"]
        .as_array()
        .unwrap_or_else(|| panic!("no ipfilter-net0: {fw}"))
        .iter()
        .map(|e| e["cidr"].as_str().unwrap().to_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn a_vm_is_kept_to_its_own_addresses_by_its_proxmox_firewall_and_drift_is_set_back() {
    let mut pve = start_fakepve();
    pve.auto_agent();
    pve.cmd(json!({"op": "cluster_firewall", "enable": true}));
    let dir = tempfile::tempdir().unwrap();
    let tuning = Tuning {
        firewall_check_secs: 1,
        ..Tuning::default()
    };
    write_config(dir.path(), &pve, &tuning);
    let d = daemon(dir.path());

    apply(&d, &vm_manifest("web", ""));
    let obj = wait_phase(&d, "web", "Running", LIMIT);
    let id = vmid(&obj);
    let v4 = obj["status"]["addresses"]["ipv4"].as_str().unwrap();
    let v6 = obj["status"]["addresses"]["ipv6"].as_str().unwrap();
    let mut own = vec![v4.to_owned(), v6.to_owned()];
    own.sort();

    // Proxmox side, through the API fakepve validated against PVE 9's schema.
    let fw = pve.firewall(id);
    let o = &fw["options"];
    for (k, want) in [
        ("enable", 1),
        ("ipfilter", 1),
        ("macfilter", 1),
        ("dhcp", 0),
        ("ndp", 1),
        ("radv", 0),
    ] {
        assert_eq!(o[k], json!(want), "{k}: {fw}");
    }
    assert_eq!(o["policy_in"], json!("ACCEPT"), "{fw}");
    assert_eq!(o["policy_out"], json!("ACCEPT"), "{fw}");
    assert_eq!(ipfilter(&mut pve, id), own, "exactly its own addresses");
    let net0 = pve.vm_named("web").unwrap()["config"]["net0"].clone();
    assert!(net0.as_str().unwrap().contains("firewall=1"), "{net0}");
    let c = condition(&obj, "Firewall").expect("a Firewall condition");
    assert_eq!(c["status"], json!("True"), "{c}");
    // No firewall section, so no root agent: said, not hidden.
    let c = condition(&obj, "PortIsolated").expect("a PortIsolated condition");
    assert_eq!(
        (&c["status"], &c["reason"]),
        (&json!("False"), &json!("NoRootAgent")),
        "{c}"
    );

    // Drift behind BlockHost's back: the filter off, a neighbour's address in
    // place of the VM's own.
    pve.cmd(json!({"op": "firewall_edit", "vmid": id,
        "options": {"enable": 0, "ipfilter": 0},
        "ipset": {"ipfilter-net0": ["10.20.0.99", v6]}}));
    wait_for(&d, LIMIT, "the firewall to be set back", || {
        let fw = pve.firewall(id);
        let set = ipfilter(&mut pve, id);
        if fw["options"]["enable"] == json!(1) && set == own {
            Ok(())
        } else {
            Err(format!("{fw}"))
        }
    });
    let drift: Vec<String> = wait_for(&d, LIMIT, "a DriftCorrected event", || {
        let e: Vec<String> = events(&d, "web")
            .into_iter()
            .filter(|(r, _)| r == "DriftCorrected")
            .map(|(_, m)| m)
            .collect();
        if e.is_empty() {
            Err("none yet".into())
        } else {
            Ok(e)
        }
    });
    assert!(
        drift[0].contains("10.20.0.99 removed") && drift[0].contains("option enable 0 (want 1)"),
        "{drift:?}"
    );

    // Delete: Proxmox drops the VM's firewall with it.
    let o = d.bhctl(&["delete", "vm", "web"]);
    assert!(o.status.success(), "{}", common::stderr(&o));
    wait_for(&d, LIMIT, "web to be deleted", || match get_vm(&d, "web") {
        None => Ok(()),
        Some(v) => Err(format!("phase {}", v["status"]["phase"])),
    });
    assert_eq!(
        pve.firewall(id),
        json!(null),
        "no firewall left for VM {id}"
    );
    pve.assert_no_validation_errors();
}
