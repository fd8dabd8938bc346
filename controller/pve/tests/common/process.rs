//! The fakepve server process (`fakepve_server.py`): start it on a loopback
//! address, read its URL and certificate fingerprint, send control commands, kill
//! it on drop. Shared by this crate's tests (`common/mod.rs`) and the controller's
//! end-to-end tests (`controller/tests/proxmox_support`), which include this file
//! with `#[path]`; each passes its own address range so both can run at once.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)] // test helpers: a panic is a failure report

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// API token the server script configures.
pub const TOKEN_ID: &str = "root@pam!blockhost";
/// Its secret.
pub const TOKEN_SECRET: &str = "s3cret-token";

/// A running fakepve, killed when dropped.
#[derive(Debug)]
pub struct FakePveProcess {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    /// `https://127.0.X.n:8006`.
    pub url: String,
    /// The certificate's SHA-256 fingerprint, as PVE shows it (`AB:CD:…`).
    pub fingerprint: String,
    /// The whole hello line (real-guest mode adds `netns`, `accel`, `serial_dir`).
    pub hello: Value,
    /// On drop, close stdin and let the server clean up (qemu processes, the
    /// namespace) before it is killed; set for the real-guest mode.
    pub graceful: bool,
}

impl FakePveProcess {
    /// Starts the script from `repo_root` on `subnet.n` (n from `next`), with node
    /// pve1, template 9001 and `extra_nodes`. The script's stderr goes to `stderr`.
    pub fn start(
        repo_root: &Path,
        subnet: &str,
        next: &AtomicU32,
        extra_nodes: &[&str],
        stderr: fn() -> Stdio,
    ) -> Self {
        Self::start_args(repo_root, subnet, next, &node_args(extra_nodes), stderr)
    }

    /// Like [`FakePveProcess::start`], with any extra command-line arguments of
    /// the script (`--node NAME`, the real-guest options).
    pub fn start_args(
        repo_root: &Path,
        subnet: &str,
        next: &AtomicU32,
        extra: &[String],
        stderr: fn() -> Stdio,
    ) -> Self {
        let script = repo_root.join("controller/pve/tests/fakepve_server.py");
        Self::start_with(repo_root, &script, subnet, next, extra, stderr)
    }

    /// As [`FakePveProcess::start`], with another server script that speaks the
    /// same protocol (the setup wizard's adds a model of the access API).
    pub fn start_script(
        repo_root: &Path,
        script: &Path,
        subnet: &str,
        next: &AtomicU32,
        extra_nodes: &[&str],
        stderr: fn() -> Stdio,
    ) -> Self {
        Self::start_with(
            repo_root,
            script,
            subnet,
            next,
            &node_args(extra_nodes),
            stderr,
        )
    }

    fn start_with(
        repo_root: &Path,
        script: &Path,
        subnet: &str,
        next: &AtomicU32,
        extra: &[String],
        stderr: fn() -> Stdio,
    ) -> Self {
        let py = repo_root.join(".venv/bin/python");
        // Loud, not a skip: a machine without fakepve cannot claim these tests passed.
        assert!(
            py.exists(),
            "fakepve is not installed ({} is missing): run scripts/setup.sh",
            py.display()
        );
        let mut last_err = String::new();
        // An address may still be held by a server of an earlier, killed run: try a few.
        for _ in 0..5 {
            let n = next.fetch_add(1, Ordering::SeqCst);
            assert!(n < 250, "ran out of {subnet}.x test addresses");
            let host = format!("{subnet}.{n}");
            let mut cmd = Command::new(&py);
            cmd.arg(script).arg(&host).args(extra);
            let mut child = cmd
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(stderr())
                .spawn()
                .expect("cannot run the fakepve server script");
            let stdin = child.stdin.take().unwrap();
            let mut stdout = BufReader::new(child.stdout.take().unwrap());
            let mut line = String::new();
            stdout.read_line(&mut line).unwrap();
            let hello: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
            if let Some(fatal) = hello.get("fatal") {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{fatal}");
            }
            if let (Some(url), Some(fp)) = (hello["url"].as_str(), hello["fingerprint"].as_str()) {
                return Self {
                    url: url.to_owned(),
                    fingerprint: fp.to_owned(),
                    graceful: hello.get("netns").is_some(),
                    hello: hello.clone(),
                    child,
                    stdin: Some(stdin),
                    stdout,
                };
            }
            last_err = format!("fakepve on {host} did not start: {line:?}");
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("{last_err}");
    }

    /// Sends a control command; returns its result, panics on an error answer.
    pub fn cmd(&mut self, cmd: Value) -> Value {
        let stdin = self.stdin.as_mut().expect("stdin open until drop");
        writeln!(stdin, "{cmd}").unwrap();
        stdin.flush().unwrap();
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        let reply: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("bad control answer {line:?}: {e}"));
        assert_eq!(
            reply["ok"],
            json!(true),
            "control command {cmd} failed: {reply}"
        );
        reply["result"].clone()
    }

    /// (method, path) of every request the server has seen.
    pub fn requests(&mut self) -> Vec<(String, String)> {
        self.cmd(json!({"op": "requests"}))
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r[0].as_str().unwrap().to_owned(),
                    r[1].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    }
}

impl Drop for FakePveProcess {
    fn drop(&mut self) {
        if self.graceful {
            // EOF on stdin: the server stops its guests and removes its namespace.
            drop(self.stdin.take());
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The script's `--node NAME` arguments for each extra node.
fn node_args(extra_nodes: &[&str]) -> Vec<String> {
    extra_nodes
        .iter()
        .flat_map(|n| ["--node".to_owned(), (*n).to_owned()])
        .collect()
}
