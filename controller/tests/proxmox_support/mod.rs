//! Harness for the controller's end-to-end Proxmox tests: a real fakepve process
//! (the pve crate's `tests/fakepve_server.py`, reused as is) on its own 127.0.11.x
//! address, and a real `blockhostd` configured to drive it.
//!
//! Why a second launcher rather than `#[path]`-including the pve crate's
//! `tests/common/mod.rs`: that one hands out 127.0.10.x from a static of its own,
//! and both test binaries run at once; this one owns 127.0.11.x. The server script
//! and its control channel are shared.
//!
//! Every wait here is bounded and polls; on a timeout the test fails with the
//! daemon's log, never silently.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)] // test helpers: a panic is a failure report

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::{Daemon, repo_root, stderr, stdout};

/// API token the server script configures.
pub const TOKEN_ID: &str = "root@pam!blockhost";
/// Its secret (written to a 0600 file, never passed on a command line).
pub const TOKEN_SECRET: &str = "s3cret-token";
/// The template the script creates.
pub const TEMPLATE: u32 = 9001;

// 127.0.11.0/24 belongs to these tests (the pve crate's own use 127.0.10.x).
static NEXT_HOST: AtomicU32 = AtomicU32::new(1);

/// A running fakepve, killed when dropped.
pub struct FakePve {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    /// `https://127.0.11.x:8006`.
    pub url: String,
    /// SHA-256 certificate fingerprint, PVE style.
    pub fingerprint: String,
}

impl FakePve {
    /// Starts a server with node pve1 and template 9001.
    pub fn start() -> FakePve {
        let py = repo_root().join(".venv/bin/python");
        // Loud, not a skip: a machine without fakepve cannot claim these tests passed.
        assert!(
            py.exists(),
            "fakepve is not installed ({} is missing): run scripts/setup.sh",
            py.display()
        );
        let script = repo_root().join("controller/pve/tests/fakepve_server.py");
        let mut last_err = String::new();
        // An address may still be held by a server of an earlier, killed run: try a few.
        for _ in 0..5 {
            let n = NEXT_HOST.fetch_add(1, Ordering::SeqCst);
            assert!(n < 250, "ran out of 127.0.11.x test addresses");
            let host = format!("127.0.11.{n}");
            let mut child = Command::new(&py)
                .arg(&script)
                .arg(&host)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
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
                return FakePve {
                    url: url.to_owned(),
                    fingerprint: fp.to_owned(),
                    child,
                    stdin,
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
        writeln!(self.stdin, "{cmd}").unwrap();
        self.stdin.flush().unwrap();
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

    /// Every non-template VM, as the script's `vm_state`.
    pub fn vms(&mut self) -> Vec<Value> {
        self.cmd(json!({"op": "vms"})).as_array().unwrap().clone()
    }

    /// One VM by name (panics if two carry it: that would be a duplicate).
    pub fn vm_named(&mut self, name: &str) -> Option<Value> {
        let found: Vec<Value> = self
            .vms()
            .into_iter()
            .filter(|v| v["name"] == json!(name))
            .collect();
        assert!(found.len() <= 1, "duplicate VMs named {name}: {found:?}");
        found.into_iter().next()
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

    /// Every answer with status >= 400, as [method, path, status, body].
    pub fn error_answers(&mut self) -> Vec<Value> {
        self.cmd(json!({"op": "error_answers"}))
            .as_array()
            .unwrap()
            .clone()
    }

    /// Asserts that PVE never refused a parameter (HTTP 400, its schema validation).
    pub fn assert_no_validation_errors(&mut self) {
        let bad: Vec<Value> = self
            .error_answers()
            .into_iter()
            .filter(|a| a[2] == json!(400))
            .collect();
        assert!(bad.is_empty(), "PVE refused parameters: {bad:#?}");
    }

    /// Makes every VM's guest agent answer, including clones made later.
    pub fn auto_agent(&mut self) {
        self.cmd(json!({"op": "auto_agent"}));
    }
}

impl Drop for FakePve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Tuning of the daemon's `proxmox:` section for one test.
pub struct Tuning {
    /// `vmidFirst`.
    pub vmid_first: u32,
    /// `shutdownTimeoutSecs`.
    pub shutdown_timeout_secs: u32,
    /// `agentTimeoutSecs`.
    pub agent_timeout_secs: u32,
    /// `concurrency`.
    pub concurrency: u32,
}

impl Default for Tuning {
    fn default() -> Self {
        Self {
            vmid_first: 200,
            shutdown_timeout_secs: 5,
            agent_timeout_secs: 30,
            concurrency: 4,
        }
    }
}

/// Writes `dir/blockhost.yaml` (read by [`Daemon::start`]) with a proxmox section
/// pointing at `pve`, and the token secret in a 0600 file.
pub fn write_config(dir: &Path, pve: &FakePve, t: &Tuning) -> PathBuf {
    let secret = dir.join("pve-token");
    std::fs::write(&secret, format!("{TOKEN_SECRET}\n")).unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let cfg = format!(
        "proxmox:\n  url: {url}\n  tokenId: \"{TOKEN_ID}\"\n  tokenSecretFile: {secret}\n  tlsFingerprint: \"{fp}\"\n  vmidFirst: {first}\n  vmidLast: {last}\n  defaultTemplate: {TEMPLATE}\n  shutdownTimeoutSecs: {sd}\n  agentTimeoutSecs: {agent}\n  concurrency: {conc}\n  resyncSecs: 1\nnetwork:\n  ipv4:\n    cidr: 10.20.0.0/24\n    gateway: 10.20.0.1\n  ipv6:\n    prefix: \"2001:db8:20::/64\"\n    gateway: \"2001:db8:20::1\"\n  bridge: vmbr0\n  nameservers: [10.20.0.1]\n",
        url = pve.url,
        secret = secret.display(),
        fp = pve.fingerprint,
        first = t.vmid_first,
        last = t.vmid_first + 99,
        sd = t.shutdown_timeout_secs,
        agent = t.agent_timeout_secs,
        conc = t.concurrency,
    );
    let path = dir.join("blockhost.yaml");
    std::fs::write(&path, cfg).unwrap();
    path
}

/// A VM manifest: owner, 2 cores, 1536 MiB, 12 GiB, guest user alice, plus
/// `extra` lines appended under `spec:` (indent them by two spaces).
pub fn vm_manifest(name: &str, extra: &str) -> String {
    format!(
        "apiVersion: blockhost.io/v1alpha1\nkind: VirtualMachine\nmetadata:\n  name: {name}\nspec:\n  owner: \"0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266\"\n  guestUser: alice\n  resources:\n    cores: 2\n    memoryMiB: 1536\n    diskGiB: 12\n{extra}"
    )
}

/// `bhctl apply -f -` with `yaml`; panics with bhctl's stderr on failure.
pub fn apply(d: &Daemon, yaml: &str) {
    let o = crate::common::bhctl(&d.socket, &["apply", "-f", "-"], Some(yaml));
    assert!(o.status.success(), "apply failed: {}\n{}", stderr(&o), yaml);
}

/// `bhctl get vm NAME -o json`, or None when it does not exist.
pub fn get_vm(d: &Daemon, name: &str) -> Option<Value> {
    let o = d.bhctl(&["get", "vms", name, "-o", "json"]);
    if !o.status.success() {
        let e = stderr(&o);
        assert!(
            e.contains("not found") || e.contains("NotFound") || e.contains("no VirtualMachine"),
            "get vm {name} failed: {e}"
        );
        return None;
    }
    Some(serde_json::from_str(&stdout(&o)).unwrap())
}

/// Polls `check` every 50 ms until it returns Some, for at most `limit`; on a
/// timeout panics with `what`, the last state seen and the daemon's log.
pub fn wait_for<T>(
    d: &Daemon,
    limit: Duration,
    what: &str,
    mut check: impl FnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + limit;
    let mut last = String::new();
    while Instant::now() < deadline {
        match check() {
            Ok(v) => return v,
            Err(e) => last = e,
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!(
        "timed out after {limit:?} waiting for {what}; last seen: {last}\n--- daemon log ---\n{}",
        d.log()
    );
}

/// Waits until the VM's phase is `phase`; returns the object.
pub fn wait_phase(d: &Daemon, name: &str, phase: &str, limit: Duration) -> Value {
    wait_for(
        d,
        limit,
        &format!("{name} to be {phase}"),
        || match get_vm(d, name) {
            Some(v) if v["status"]["phase"] == json!(phase) => Ok(v),
            Some(v) => Err(format!(
                "phase {} lastError {}",
                v["status"]["phase"], v["status"]["lastError"]
            )),
            None => Err("absent".into()),
        },
    )
}

/// Starts blockhostd in `dir` (config already written).
pub fn daemon(dir: &Path) -> Daemon {
    Daemon::start(dir)
}

/// Name → phase of every VM, from one `bhctl get vms -o json`.
pub fn phases(d: &Daemon) -> std::collections::BTreeMap<String, String> {
    let o = d.bhctl(&["get", "vms", "-o", "json"]);
    assert!(o.status.success(), "get vms failed: {}", stderr(&o));
    let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
    v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["metadata"]["name"].as_str().unwrap().to_owned(),
                i["status"]["phase"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}
