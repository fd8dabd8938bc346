//! End-to-end tests of `blockhostd` and `bhctl` as real processes: what an operator
//! types, what scripts parse, and what happens when things go wrong.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

mod common;

use common::*;

#[test]
fn apply_examples_then_list_then_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path());
    let o = d.bhctl(&["apply", "-f", "examples/"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("virtualmachine/web-1 created"), "{out}");
    assert!(out.contains("plan/basic created"), "{out}");

    let mut names = vm_names(&d);
    names.sort();
    assert_eq!(names, ["build-box", "web-1"]);

    let o = d.bhctl(&["apply", "-f", "examples/"]);
    assert!(o.status.success());
    let out = stdout(&o);
    assert_eq!(out.lines().count(), 4, "{out}");
    assert!(out.lines().all(|l| l.ends_with(" unchanged")), "{out}");

    // A changed spec is "configured" and bumps the generation.
    let edited = std::fs::read_to_string(repo_root().join("examples/vms.yaml"))
        .unwrap()
        .replace("cores: 4", "cores: 6");
    let o = bhctl(&d.socket, &["apply", "-f", "-"], Some(&edited));
    assert!(
        stdout(&o).contains("virtualmachine/build-box configured"),
        "{}",
        stdout(&o)
    );
    assert!(stdout(&o).contains("virtualmachine/web-1 unchanged"));
    let o = d.bhctl(&["get", "vm", "build-box", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["metadata"]["generation"], 2);
    assert_eq!(v["spec"]["resources"]["cores"], 6);

    // What `get -o yaml` prints can be applied back unchanged.
    let yaml = stdout(&d.bhctl(&["get", "vm", "web-1", "-o", "yaml"]));
    let o = bhctl(&d.socket, &["apply", "-f", "-"], Some(&yaml));
    assert!(
        stdout(&o).contains("virtualmachine/web-1 unchanged"),
        "{} {}",
        stdout(&o),
        stderr(&o)
    );

    // Tables, wide tables, describe, events, names.
    let table = stdout(&d.bhctl(&["get", "vms"]));
    assert!(table.starts_with("NAME"), "{table}");
    let wide = stdout(&d.bhctl(&["get", "vms", "-o", "wide"]));
    assert!(wide.lines().next().unwrap().contains("OWNER"), "{wide}");
    let desc = stdout(&d.bhctl(&["describe", "vm", "build-box"]));
    for needle in [
        "Name:              build-box",
        "Conditions:",
        "Events:",
        "Configured",
    ] {
        assert!(desc.contains(needle), "missing {needle:?} in\n{desc}");
    }
    let plans = d.bhctl(&["get", "plans", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_str(&stdout(&plans)).unwrap();
    assert_eq!(v["kind"], "PlanList");
    assert_eq!(v["items"].as_array().unwrap().len(), 2);
    let events = stdout(&d.bhctl(&["get", "events"]));
    assert!(events.contains("virtualmachine/build-box"), "{events}");
    let names = stdout(&d.bhctl(&["get", "vms", "-o", "name"]));
    assert_eq!(names, "virtualmachine/build-box\nvirtualmachine/web-1\n");
}

#[test]
fn invalid_files_exit_1_with_positions_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path());
    assert!(
        d.bhctl(&["apply", "-f", "examples/vms.yaml"])
            .status
            .success()
    );

    let bad = dir.path().join("bad");
    std::fs::create_dir(&bad).unwrap();
    // A good document next to the bad ones must not be applied either.
    std::fs::write(bad.join("a-good.yaml"), vm_yaml("fresh", 2)).unwrap();
    std::fs::write(
        bad.join("b-unknown.yaml"),
        vm_yaml("u", 2).replace("    diskGiB: 10\n", "    diskGiB: 10\n    gpus: 2\n"),
    )
    .unwrap();
    std::fs::write(
        bad.join("c-wallet.yaml"),
        vm_yaml("w", 2).replace(
            "0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266",
            "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92267",
        ),
    )
    .unwrap();
    std::fs::write(
        bad.join("d-syntax.yaml"),
        "apiVersion: blockhost.io/v1alpha1\nkind: VirtualMachine\nmetadata: {name: x\n",
    )
    .unwrap();
    let o = d.bhctl(&["apply", "-f", bad.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(
        err.contains("b-unknown.yaml:11:5: spec.resources.gpus: unknown field `gpus`"),
        "{err}"
    );
    assert!(err.contains("c-wallet.yaml:6:"), "{err}");
    assert!(
        err.contains("spec.owner: EIP-55 checksum mismatch"),
        "{err}"
    );
    assert!(err.contains("d-syntax.yaml:"), "{err}");
    assert!(err.contains("nothing was applied"), "{err}");
    let mut names = vm_names(&d);
    names.sort();
    assert_eq!(names, ["build-box", "web-1"], "nothing new may appear");

    // A refusal by the daemon (disk shrink) also writes nothing of that apply.
    let shrink = format!(
        "{}---\n{}",
        vm_yaml("fresh", 2),
        std::fs::read_to_string(repo_root().join("examples/vms.yaml"))
            .unwrap()
            .replace("diskGiB: 10", "diskGiB: 5")
    );
    let o = bhctl(&d.socket, &["apply", "-f", "-"], Some(&shrink));
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("cannot shrink"), "{}", stderr(&o));
    assert!(!vm_names(&d).contains(&"fresh".to_owned()));

    // Missing files and unknown objects are errors too.
    let o = d.bhctl(&["apply", "-f", "no/such/file.yaml"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("no/such/file.yaml: cannot read"),
        "{}",
        stderr(&o)
    );
    let o = d.bhctl(&["get", "vm", "ghost"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("virtualmachine/ghost not found"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn no_daemon_means_non_zero_exit_and_a_hint() {
    let dir = tempfile::tempdir().unwrap();
    let o = bhctl(&dir.path().join("absent.sock"), &["get", "vms"], None);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(err.contains("not running"), "{err}");
    assert!(err.contains("hint: start it with `blockhostd`"), "{err}");
}

#[test]
fn delete_and_second_daemon_and_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path());
    assert!(d.bhctl(&["apply", "-f", "examples/"]).status.success());
    let o = d.bhctl(&["delete", "vm", "web-1"]);
    assert_eq!(stdout(&o), "virtualmachine/web-1 deleted\n");
    assert_eq!(vm_names(&d), ["build-box"]);
    let o = d.bhctl(&["delete", "vm", "web-1"]);
    assert_eq!(o.status.code(), Some(1));

    // A second daemon on the same socket refuses to start.
    let other = std::process::Command::new(env!("CARGO_BIN_EXE_blockhostd"))
        .args([
            "--store",
            dir.path().join("other.redb").to_str().unwrap(),
            "--socket",
            d.socket.to_str().unwrap(),
        ])
        .env("BLOCKHOST_CONFIG", dir.path().join("blockhost.yaml"))
        .output()
        .unwrap();
    assert!(!other.status.success());
    assert!(
        stderr(&other).contains("already serving"),
        "{}",
        stderr(&other)
    );

    // /healthz and /metrics over the socket.
    let curl = |path: &str| {
        let o = std::process::Command::new("curl")
            .args([
                "-sf",
                "--unix-socket",
                d.socket.to_str().unwrap(),
                &format!("http://blockhostd{path}"),
            ])
            .output()
            .expect("curl is needed (scripts/setup.sh installs it)");
        assert!(o.status.success(), "GET {path} failed");
        stdout(&o)
    };
    assert_eq!(curl("/healthz"), "ok\n");
    let text = curl("/metrics");
    assert!(
        text.contains("blockhost_objects{kind=\"VirtualMachine\"} 1"),
        "{text}"
    );
    assert!(text.contains("blockhost_api_requests_total"), "{text}");
    assert!(curl("/version").contains("schemaVersion"));

    // SIGTERM: clean exit, socket removed; data still there after restart.
    let mut d = d;
    d.signal(libc::SIGTERM);
    let status = d.child.wait().unwrap();
    assert!(status.success(), "exit {status}; log:\n{}", d.log());
    assert!(!d.socket.exists(), "socket must be removed on shutdown");
    assert!(d.log().contains("SIGTERM"), "{}", d.log());
    drop(d);
    let d = Daemon::start(dir.path());
    assert_eq!(vm_names(&d), ["build-box"]);
}

#[test]
fn watch_prints_changes_as_json_lines() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path());
    assert!(
        bhctl(&d.socket, &["apply", "-f", "-"], Some(&vm_yaml("one", 1)))
            .status
            .success()
    );
    let mut w = std::process::Command::new(common::bhctl_bin())
        .args(["get", "vms", "-w", "-o", "json"])
        .env("BLOCKHOST_SOCKET", &d.socket)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(w.stdout.take().unwrap()).lines();
    let first: serde_json::Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(
        (
            first["type"].as_str(),
            first["object"]["metadata"]["name"].as_str()
        ),
        (Some("ADDED"), Some("one"))
    );
    assert!(
        bhctl(&d.socket, &["apply", "-f", "-"], Some(&vm_yaml("one", 2)))
            .status
            .success()
    );
    assert!(
        bhctl(&d.socket, &["apply", "-f", "-"], Some(&vm_yaml("two", 1)))
            .status
            .success()
    );
    assert!(d.bhctl(&["delete", "vm", "one"]).status.success());
    let mut seen = Vec::new();
    for _ in 0..3 {
        let v: serde_json::Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
        seen.push(format!(
            "{} {}",
            v["type"].as_str().unwrap(),
            v["object"]["metadata"]["name"].as_str().unwrap()
        ));
    }
    assert_eq!(seen, ["MODIFIED one", "ADDED two", "DELETED one"]);
    let _ = w.kill();
    let _ = w.wait();
}

#[test]
fn config_file_is_checked() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("blockhost.yaml");
    std::fs::write(&cfg, "store: /tmp/x.redb\napi:\n  sockt: /tmp/x.sock\n").unwrap();
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_blockhostd"))
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("blockhost.yaml:3:3: api.sockt: unknown field `sockt`"),
        "{err}"
    );

    // An explicitly named but missing file is an error, not silent defaults.
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_blockhostd"))
        .arg("--config")
        .arg(dir.path().join("missing.yaml"))
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("cannot read the configuration file"),
        "{}",
        stderr(&o)
    );

    // A valid file is used; --socket overrides it.
    let sock = dir.path().join("cfg.sock");
    std::fs::write(&cfg, format!("# comment\nstore: {}\napi:\n  socket: {}\nevents:\n  retentionPerObject: 3\nlog:\n  format: json\n", dir.path().join("c.redb").display(), sock.display())).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_blockhostd"))
        .arg("--config")
        .arg(&cfg)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !sock.exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o660);
    assert!(bhctl(&sock, &["get", "vms"], None).status.success());
    let _ = child.kill();
    let _ = child.wait();
}
