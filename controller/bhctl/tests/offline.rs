//! bhctl as a user meets it before any daemon runs: help, completions, manual
//! pages, the error when blockhostd is not there, and manifests refused before
//! anything is sent. (The commands against a live daemon are tested in
//! blockhost-controller's integration tests, which find this crate's binary
//! beside blockhostd.)

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::process::{Command, Output, Stdio};

fn bhctl(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_bhctl"))
        .args(args)
        .env_remove("RUST_LOG")
        .env_remove("BLOCKHOST_SOCKET")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).unwrap();
    }
    drop(input);
    child.wait_with_output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn without_a_daemon_it_says_what_to_start_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("absent.sock");
    let out = bhctl(&["--socket", socket.to_str().unwrap(), "get", "vms"], None);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = text(&out.stderr);
    assert!(err.contains(&socket.display().to_string()), "{err}");
    assert!(
        err.contains("blockhostd"),
        "names the daemon to start: {err}"
    );
    assert!(out.stdout.is_empty());
}

#[test]
fn a_bad_manifest_is_refused_with_its_place_before_any_request() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("absent.sock");
    let manifest = "apiVersion: blockhost.io/v1alpha1\nkind: VirtualMachine\nmetadata:\n  name: Bad_Name\nspec: [1\n";
    let out = bhctl(
        &["--socket", socket.to_str().unwrap(), "apply", "-f", "-"],
        Some(manifest),
    );
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = text(&out.stderr);
    // Located (file:line) and nothing applied; the missing socket is never reached.
    assert!(err.contains("<stdin>:5:"), "{err}");
    assert!(err.contains("nothing was applied"), "{err}");
    assert!(!err.contains("absent.sock"), "{err}");
}

#[test]
fn completions_and_manual_pages_are_generated() {
    let out = bhctl(&["completion", "bash"], None);
    assert!(out.status.success(), "{out:?}");
    assert!(text(&out.stdout).contains("_bhctl"));
    let dir = tempfile::tempdir().unwrap();
    let out = bhctl(&["generate-man", dir.path().to_str().unwrap()], None);
    assert!(out.status.success(), "{out:?}");
    let page = std::fs::read_to_string(dir.path().join("bhctl.1")).unwrap();
    assert!(page.contains(".TH bhctl"), "{page}");
    assert!(dir.path().join("bhctl-apply.1").exists());
}
