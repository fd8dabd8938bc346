//! Crash safety: every write acknowledged before a SIGKILL is there afterwards.
//!
//! Two levels: the store alone (a child process commits in a loop and reports each
//! acknowledged commit on stdout), and the whole daemon (applies over the API while
//! blockhostd is killed).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use blockhost_controller::store::{Store, StoreOptions};
use blockhost_crd::VirtualMachine;
use blockhost_crd::resource::AnyObject;
use common::*;

fn vm_object(name: &str) -> AnyObject {
    let v: VirtualMachine = serde_json::from_value(serde_json::json!({
        "apiVersion": "blockhost.io/v1alpha1", "kind": "VirtualMachine",
        "metadata": {"name": name},
        "spec": {"owner": "0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266",
                 "resources": {"cores": 1, "memoryMiB": 1024, "diskGiB": 10}}
    }))
    .unwrap();
    AnyObject::VirtualMachine(Box::new(v))
}

/// The child side: runs only when re-executed by the test below.
#[test]
fn child_writer() {
    let Ok(path) = std::env::var("BLOCKHOST_CRASH_CHILD_DB") else {
        return;
    };
    let store = Store::open(std::path::Path::new(&path), StoreOptions::default()).unwrap();
    for i in 0.. {
        store
            .apply(vec![vm_object(&format!("vm-{i}"))], false)
            .unwrap();
        // Printed only after the commit returned: an acknowledgement.
        println!("ack vm-{i}");
    }
}

#[test]
fn store_survives_sigkill_of_a_writing_process() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("crash.redb");
    for round in 0..3 {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "child_writer", "--nocapture", "--test-threads=1"])
            .env("BLOCKHOST_CRASH_CHILD_DB", &db)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut acked = Vec::new();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        // Kill after a different number of acknowledgements each round.
        let target = 40 + round * 37;
        while acked.len() < target {
            match lines.next() {
                Some(Ok(l)) if l.starts_with("ack ") => acked.push(l[4..].to_owned()),
                Some(Ok(_)) => {}
                _ => panic!("child stopped early"),
            }
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let store =
            Store::open(&db, StoreOptions::default()).expect("database reopens after SIGKILL");
        for name in &acked {
            assert!(
                store.get::<VirtualMachine>(name).unwrap().is_some(),
                "round {round}: acknowledged {name} lost"
            );
        }
    }
}

#[test]
fn daemon_sigkill_mid_apply_loses_no_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path());
    let socket = d.socket.clone();
    // A writer thread applies one VM per request and records what was acknowledged.
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let writer = std::thread::spawn(move || {
        for i in 0..100_000 {
            let name = format!("k-{i}");
            let o = bhctl(&socket, &["apply", "-f", "-"], Some(&vm_yaml(&name, 1)));
            if !o.status.success() {
                break; // the daemon is gone
            }
            assert!(stdout(&o).contains("created"));
            if tx.send(name).is_err() {
                break;
            }
        }
    });
    let start = Instant::now();
    let mut acked = Vec::new();
    while acked.len() < 30 && start.elapsed() < Duration::from_secs(60) {
        if let Ok(n) = rx.recv_timeout(Duration::from_secs(5)) {
            acked.push(n);
        }
    }
    d.kill9();
    writer.join().unwrap();
    acked.extend(rx.try_iter());
    assert!(acked.len() >= 30, "too few writes before the kill");
    let d = Daemon::start(dir.path());
    let present = vm_names(&d);
    for n in &acked {
        assert!(present.contains(n), "acknowledged {n} lost after SIGKILL");
    }
}
