//! Test harness: one fakepve process per test, on its own 127.0.10.x address, port 8006.
//!
//! The server script (`tests/fakepve_server.py`) prints its URL and certificate fingerprint,
//! then takes JSON commands on stdin (fault injection, inspection). Dropping [`FakePve`] kills
//! the process; the script also exits on its own when stdin closes, so nothing outlives a
//! crashed test.

#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use blockhost_pve::{ClientConfig, Credentials, Fingerprint, PveClient, TlsMode};
use serde_json::{Value, json};

/// API token the server script configures.
pub const TOKEN_ID: &str = "root@pam!blockhost";
/// Its secret.
pub const TOKEN_SECRET: &str = "s3cret-token";

// 127.0.10.0/24 is this crate's range; other crates' tests use other ranges.
static NEXT_HOST: AtomicU32 = AtomicU32::new(1);

/// A running fakepve.
pub struct FakePve {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    /// `https://127.0.10.x:8006`.
    pub url: String,
    /// The server certificate's SHA-256 fingerprint.
    pub fingerprint: Fingerprint,
}

fn python() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let py = root.join(".venv/bin/python");
    assert!(
        py.exists(),
        "fakepve is not installed ({} is missing): run scripts/setup.sh",
        py.display()
    );
    py
}

impl FakePve {
    /// Start a server with node pve1 (and `extra_nodes`) and template 9001.
    pub fn start(extra_nodes: &[&str]) -> FakePve {
        let py = python();
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fakepve_server.py");
        let mut last_err = String::new();
        // An address may still be held by a server of an earlier, killed run: try a few.
        for _ in 0..5 {
            let n = NEXT_HOST.fetch_add(1, Ordering::SeqCst);
            assert!(n < 250, "ran out of 127.0.10.x test addresses");
            let host = format!("127.0.10.{n}");
            let mut cmd = Command::new(&py);
            cmd.arg(&script).arg(&host);
            for node in extra_nodes {
                cmd.arg("--node").arg(node);
            }
            let mut child = cmd
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
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
            match (hello.get("url"), hello.get("fingerprint")) {
                (Some(url), Some(fp)) => {
                    return FakePve {
                        child,
                        stdin,
                        stdout,
                        url: url.as_str().unwrap().to_owned(),
                        fingerprint: fp.as_str().unwrap().parse().unwrap(),
                    };
                }
                _ => {
                    last_err = format!("fakepve on {host} did not start: {line:?}");
                    let _ = child.kill();
                    let _ = child.wait();
                }
            }
        }
        panic!("{last_err}");
    }

    /// Send a control command; returns its result, panics on an error answer.
    pub fn cmd(&mut self, cmd: Value) -> Value {
        writeln!(self.stdin, "{cmd}").unwrap();
        self.stdin.flush().unwrap();
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        let reply: Value = serde_json::from_str(&line).unwrap();
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

    /// A client config with the API token and the pinned fingerprint.
    pub fn token_config(&self) -> ClientConfig {
        ClientConfig::new(
            &self.url,
            Credentials::api_token(TOKEN_ID, TOKEN_SECRET),
            TlsMode::Pinned(self.fingerprint),
        )
    }

    /// A client with the API token and the pinned fingerprint.
    pub fn client(&self) -> PveClient {
        PveClient::new(self.token_config()).unwrap()
    }
}

impl Drop for FakePve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
