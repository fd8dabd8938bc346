//! Harness for the controller's end-to-end Proxmox tests: a real fakepve process
//! (the pve crate's `tests/fakepve_server.py`, reused as is) on its own 127.0.11.x
//! address, and a real `blockhostd` configured to drive it.
//!
//! The process itself is started by the pve crate's `tests/common/process.rs`,
//! included with `#[path]`: both crates' tests share one launcher, each with its own
//! address range (127.0.10.x there, 127.0.11.x here) so they can run at once.
//!
//! Every wait here is bounded and polls; on a timeout the test fails with the
//! daemon's log, never silently.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)] // test helpers: a panic is a failure report

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::AtomicU32;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::{Daemon, repo_root, stderr, stdout};

#[path = "../../pve/tests/common/process.rs"]
mod fakepve_process;
pub use fakepve_process::{FakePveProcess as FakePve, TOKEN_ID, TOKEN_SECRET};

/// The template the script creates.
pub const TEMPLATE: u32 = 9001;

// 127.0.11.0/24 belongs to these tests (the pve crate's own use 127.0.10.x).
static NEXT_HOST: AtomicU32 = AtomicU32::new(1);

/// Starts a fakepve with node pve1 and template 9001.
pub fn start_fakepve() -> FakePve {
    FakePve::start(&repo_root(), "127.0.11", &NEXT_HOST, &[], Stdio::null)
}

/// What these tests ask of fakepve beyond the shared launcher.
pub trait FakePveExt {
    /// Every non-template VM, as the script's `vm_state`.
    fn vms(&mut self) -> Vec<Value>;
    /// One VM by name (panics if two carry it: that would be a duplicate).
    fn vm_named(&mut self, name: &str) -> Option<Value>;
    /// Every answer with status >= 400, as [method, path, status, body].
    fn error_answers(&mut self) -> Vec<Value>;
    /// Asserts that PVE never refused a parameter (HTTP 400, its schema validation).
    fn assert_no_validation_errors(&mut self);
    /// Makes every VM's guest agent answer, including clones made later.
    fn auto_agent(&mut self);
    /// The firewall fakepve keeps for `vmid` (`{options, ipset}`), or null when it
    /// keeps none.
    fn firewall(&mut self, vmid: u64) -> Value;
}

impl FakePveExt for FakePve {
    /// Every non-template VM, as the script's `vm_state`.
    fn vms(&mut self) -> Vec<Value> {
        self.cmd(json!({"op": "vms"})).as_array().unwrap().clone()
    }

    /// One VM by name (panics if two carry it: that would be a duplicate).
    fn vm_named(&mut self, name: &str) -> Option<Value> {
        let found: Vec<Value> = self
            .vms()
            .into_iter()
            .filter(|v| v["name"] == json!(name))
            .collect();
        assert!(found.len() <= 1, "duplicate VMs named {name}: {found:?}");
        found.into_iter().next()
    }

    /// Every answer with status >= 400, as [method, path, status, body].
    fn error_answers(&mut self) -> Vec<Value> {
        self.cmd(json!({"op": "error_answers"}))
            .as_array()
            .unwrap()
            .clone()
    }

    /// Asserts that PVE never refused a parameter (HTTP 400, its schema validation).
    fn assert_no_validation_errors(&mut self) {
        let bad: Vec<Value> = self
            .error_answers()
            .into_iter()
            .filter(|a| a[2] == json!(400))
            .collect();
        assert!(bad.is_empty(), "PVE refused parameters: {bad:#?}");
    }

    /// Makes every VM's guest agent answer, including clones made later.
    fn auto_agent(&mut self) {
        self.cmd(json!({"op": "auto_agent"}));
    }

    fn firewall(&mut self, vmid: u64) -> Value {
        self.cmd(json!({"op": "firewall", "vmid": vmid}))
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
    /// `firewallCheckSecs`.
    pub firewall_check_secs: u32,
}

impl Default for Tuning {
    fn default() -> Self {
        Self {
            vmid_first: 200,
            shutdown_timeout_secs: 5,
            agent_timeout_secs: 30,
            concurrency: 4,
            firewall_check_secs: 600,
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
        "proxmox:\n  url: {url}\n  tokenId: \"{TOKEN_ID}\"\n  tokenSecretFile: {secret}\n  tlsFingerprint: \"{fp}\"\n  vmidFirst: {first}\n  vmidLast: {last}\n  defaultTemplate: {TEMPLATE}\n  shutdownTimeoutSecs: {sd}\n  agentTimeoutSecs: {agent}\n  concurrency: {conc}\n  resyncSecs: 1\n  firewallCheckSecs: {fw}\nnetwork:\n  ipv4:\n    cidr: 10.20.0.0/24\n    gateway: 10.20.0.1\n  ipv6:\n    prefix: \"2001:db8:20::/64\"\n    gateway: \"2001:db8:20::1\"\n  bridge: vmbr0\n  nameservers: [10.20.0.1]\n",
        url = pve.url,
        secret = secret.display(),
        fp = pve.fingerprint,
        first = t.vmid_first,
        last = t.vmid_first + 99,
        sd = t.shutdown_timeout_secs,
        agent = t.agent_timeout_secs,
        conc = t.concurrency,
        fw = t.firewall_check_secs,
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
