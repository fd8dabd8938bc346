//! The real-guest rig: the whole-system rig of `support.rs` (anvil,
//! blockhostd, bhctl, the buyer's cast and eciesjs), with the Proxmox
//! stand-in in its real-guest mode (`controller/pve/tests/fakepve_guests.py`):
//! every VM blockhostd clones from template 9001 boots the guest image in qemu,
//! on a bridge in a network namespace of the stand-in's own, and the buyer
//! logs in over SSH at the address in their NFT (`ip netns exec`, no port
//! forwarding) by signing the PAM module's message with `cast wallet sign`.
//!
//! Serial console logs are written under `target/tmp/real-guests/<rig>/serial/`;
//! they are deleted when the test passes and kept, and named in the failure
//! message, when it fails.
//!
//! Addresses: anvil on 127.0.0.1:18690-18698, the stand-in on 127.0.15.x.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)] // test helpers: a panic is a failure report

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::AtomicU32;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::repo_root;
use crate::proxmox_support::{FakePve, Tuning};
use crate::support::{self, Rig};

static NEXT_HOST: AtomicU32 = AtomicU32::new(1);

/// The network section every real-guest rig uses (also the gateways on the bridge).
pub const IPV4_GATEWAY: &str = "10.20.0.1/24";
pub const IPV6_GATEWAY: &str = "2001:db8:20::1/64";

/// Anvil's well-known mnemonic: the buyer signs with account 4, the friend with 5.
const MNEMONIC: &str = "test test test test test test test test test test test junk";
pub const USER_INDEX: u32 = 4;
pub const FRIEND_INDEX: u32 = 5;

/// keyboard-interactive answers: the message between the PAM module's markers,
/// signed by `cast wallet sign` with the wallet named in `$dir/wallet-<host>`.
const ASKPASS: &str = r#"#!/bin/bash
# ssh's askpass for the buyer: $1 is the prompt sshd relayed from pam_blockhost.
set -u
dir="$(dirname "$0")"
printf '%s\n' "$1" >> "$dir/prompts.log"
msg="$(printf '%s\n' "$1" | sed -n '/^----- BEGIN SIGN-IN MESSAGE -----$/,/^----- END SIGN-IN MESSAGE -----$/p' | sed '1d;$d')"
[ -n "$msg" ] || exit 1
exec "$dir/cast" wallet sign --mnemonic "$dir/mnemonic" --mnemonic-index "$BLOCKHOST_TEST_WALLET" "$msg"
"#;

/// Where the guest image is: `BLOCKHOST_GUEST_IMAGE`, else the image the guest
/// image's boot test last built or took from its cache (`target/guest-image`;
/// `scripts/test.sh` runs that test first).
pub fn guest_image() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("BLOCKHOST_GUEST_IMAGE") {
        return Some(PathBuf::from(p));
    }
    let target = Path::new(env!("CARGO_TARGET_TMPDIR")).parent()?;
    blockhost_image::build::current(&target.join("guest-image")).map(|img| img.image)
}

/// Everything the suite needs: the whole-system tools plus qemu, qemu-img,
/// xorriso, ip, ssh and the guest image. Missing ones fail under
/// `BLOCKHOST_REQUIRE_TOOLS=1` and skip with a note otherwise.
pub fn guest_tools_available() -> bool {
    if !support::tools_available() {
        return false;
    }
    let mut missing: Vec<String> = ["qemu-system-x86_64", "qemu-img", "xorriso", "ip", "ssh"]
        .into_iter()
        .filter(|t| !on_path(t))
        .map(|t| format!("{t} (scripts/setup.sh installs it)"))
        .collect();
    match guest_image() {
        Some(p) if p.is_file() => {}
        Some(p) => missing.push(format!("the guest image {}", p.display())),
        None => missing.push(
            "the guest image (BLOCKHOST_GUEST_IMAGE, or run `cargo test -p blockhost-login --test guest_image -- --ignored` first, which builds it)".into(),
        ),
    }
    if missing.is_empty() {
        return true;
    }
    assert!(
        std::env::var("BLOCKHOST_REQUIRE_TOOLS").as_deref() != Ok("1"),
        "BLOCKHOST_REQUIRE_TOOLS=1 but missing: {missing:?}"
    );
    eprintln!("skipping: missing {missing:?}");
    false
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
}

/// A whole-system rig whose VMs really boot.
pub struct GuestRig {
    rig: Option<Rig>,
    /// The stand-in's network namespace (the Proxmox node's network).
    pub netns: String,
    /// The accelerator qemu uses (`tcg` here; `kvm` where a probe boot works).
    pub accel: String,
    /// This rig's work directory under target/ (serial logs in `serial/`).
    pub work: PathBuf,
    ssh_dir: PathBuf,
}

impl GuestRig {
    /// anvil on `port`, the real-guest stand-in, blockhostd; `plan_memory_mib`
    /// is the VM size plans get (small: TCG is slow and cores are shared).
    pub async fn start(name: &str, port: u16, plan_memory_mib: u32) -> GuestRig {
        Self::start_with_signup(name, port, plan_memory_mib, None).await
    }

    /// [`GuestRig::start`] with blockhostd's signup page on `signup` (a loopback
    /// `host:port`) when given.
    pub async fn start_with_signup(
        name: &str,
        port: u16,
        plan_memory_mib: u32,
        signup: Option<&str>,
    ) -> GuestRig {
        let image = guest_image().expect("guest_tools_available checked the image");
        let work = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join("real-guests")
            .join(format!("{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&work);
        std::fs::create_dir_all(&work).unwrap();
        let args: Vec<String> = [
            "--guest-image",
            image.to_str().unwrap(),
            "--guest-dir",
            work.to_str().unwrap(),
            "--gateway",
            IPV4_GATEWAY,
            "--gateway",
            IPV6_GATEWAY,
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        let pve = FakePve::start_args(&repo_root(), "127.0.15", &NEXT_HOST, &args, Stdio::inherit);
        let netns = pve.hello["netns"].as_str().unwrap().to_owned();
        let accel = pve.hello["accel"].as_str().unwrap().to_owned();
        eprintln!(
            "real guests: namespace {netns}, accelerator {accel}, work dir {}",
            work.display()
        );
        let tuning = Tuning {
            // ACPI shutdown of a TCG guest takes seconds; a boot takes a minute or more.
            shutdown_timeout_secs: 120,
            agent_timeout_secs: 900,
            concurrency: 4,
            ..Tuning::default()
        };
        let mut rig = Rig::start_on(port, 0, pve, &tuning, |text, _| {
            (
                format!(
                    "{text}  planDefaults:\n    resources: {{cores: 1, memoryMiB: {plan_memory_mib}, diskGiB: 4}}\n{}",
                    signup
                        .map(|l| format!("signup:\n  listen: {l}\n  statusRequestsPerMinute: 600\n"))
                        .unwrap_or_default()
                ),
                String::new(),
            )
        })
        .await;
        rig.failure_note = format!(
            "\n--- serial console logs of the VMs: {}/serial/ (kept) ---",
            work.display()
        );
        let ssh_dir = rig.dir.path().join("ssh");
        std::fs::create_dir_all(&ssh_dir).unwrap();
        support::secret_file(&ssh_dir, "mnemonic", MNEMONIC);
        let askpass = ssh_dir.join("askpass");
        std::fs::write(&askpass, ASKPASS).unwrap();
        std::fs::set_permissions(
            &askpass,
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        std::os::unix::fs::symlink(
            repo_root().join("node_modules/@foundry-rs/cast-linux-amd64/bin/cast"),
            ssh_dir.join("cast"),
        )
        .unwrap();
        GuestRig {
            rig: Some(rig),
            netns,
            accel,
            work,
            ssh_dir,
        }
    }

    /// The NFT's token id once minted; blockhostd mints after the VM runs, so
    /// this waits as long as a boot (`secs`).
    pub fn wait_token_for(&self, name: &str, secs: u64) -> u64 {
        self.wait(secs, &format!("{name}'s NFT"), || {
            match self.item("subscriptions", name) {
                Some(s) => s["status"]["nftTokenId"]
                    .as_u64()
                    .ok_or_else(|| format!("status {}", s["status"])),
                None => Err("no subscription".into()),
            }
        })
    }

    /// The stand-in's view of its qemu processes (`guests` command).
    pub fn guests(&self) -> Vec<Value> {
        self.pve
            .lock()
            .unwrap()
            .cmd(serde_json::json!({"op": "guests"}))
            .as_array()
            .unwrap()
            .clone()
    }

    /// The serial log of the VM named `name`.
    pub fn serial_log(&self, name: &str) -> Option<PathBuf> {
        self.guests()
            .into_iter()
            .find(|g| g["name"] == serde_json::json!(name))
            .and_then(|g| g["serial_log"].as_str().map(PathBuf::from))
    }

    /// `ssh user@host cmd` from inside the node's namespace, keyboard-interactive
    /// answered by `cast wallet sign` with anvil account `wallet`.
    pub fn ssh(&self, wallet: u32, user: &str, host: &str, cmd: &str) -> Output {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.netns, "ssh"])
            .args(["-F", "/dev/null", "-o", "StrictHostKeyChecking=no"])
            .args(["-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR"])
            .args(["-o", "PreferredAuthentications=keyboard-interactive"])
            .args(["-o", "NumberOfPasswordPrompts=1", "-o", "ConnectTimeout=5"])
            .args(["-o", "BatchMode=no", "-o", "ServerAliveInterval=5"])
            .arg(format!("{user}@{host}"))
            .arg(cmd)
            .env("SSH_ASKPASS", self.ssh_dir.join("askpass"))
            .env("SSH_ASKPASS_REQUIRE", "force")
            .env("DISPLAY", ":0")
            .env("BLOCKHOST_TEST_WALLET", wallet.to_string())
            .stdin(Stdio::null());
        bounded(c, Duration::from_secs(90))
    }

    /// Logs in until it works (sshd and the access file may still be on their
    /// way), at most `secs`; returns the command's standard output.
    pub fn wait_login(&self, secs: u64, wallet: u32, user: &str, host: &str, cmd: &str) -> String {
        let start = Instant::now();
        self.wait(secs, &format!("a wallet login as {user}@{host}"), || {
            let o = self.ssh(wallet, user, host, cmd);
            if o.status.success() {
                eprintln!("login as {user}@{host} after {:?}", start.elapsed());
                Ok(String::from_utf8_lossy(&o.stdout).into_owned())
            } else {
                std::thread::sleep(Duration::from_secs(1));
                Err(format!(
                    "ssh exit {:?}: {}",
                    o.status.code(),
                    String::from_utf8_lossy(&o.stderr).trim()
                ))
            }
        })
    }

    /// Whether sshd in the VM accepts TCP connections at `host` yet.
    pub fn sshd_listens(&self, host: &str) -> bool {
        // bash's /dev/tcp inside the namespace: a connect, nothing sent.
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.netns, "timeout", "3", "bash", "-c"])
            .arg(format!("exec 3<>/dev/tcp/{host}/22"))
            .stdin(Stdio::null());
        bounded(c, Duration::from_secs(10)).status.success()
    }
}

impl std::ops::Deref for GuestRig {
    type Target = Rig;
    fn deref(&self) -> &Rig {
        self.rig.as_ref().expect("rig running")
    }
}

impl std::ops::DerefMut for GuestRig {
    fn deref_mut(&mut self) -> &mut Rig {
        self.rig.as_mut().expect("rig running")
    }
}

impl Drop for GuestRig {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "real-guest test failed: serial console logs kept in {}/serial/, the stand-in's work dir {}",
                self.work.display(),
                self.work.display()
            );
            list_dir(&self.work.join("serial"));
        }
        // Stops blockhostd, anvil and the stand-in, which removes its qemu
        // processes, namespace and overlays.
        drop(self.rig.take());
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.work);
        }
    }
}

fn list_dir(d: &Path) {
    if let Ok(entries) = std::fs::read_dir(d) {
        for e in entries.flatten() {
            eprintln!("  {}", e.path().display());
        }
    }
}

/// Runs `cmd` with a deadline: killed (and reported as failed) past `limit`.
pub fn bounded(mut cmd: Command, limit: Duration) -> Output {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return child.wait_with_output().unwrap();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    child.wait_with_output().unwrap()
}
