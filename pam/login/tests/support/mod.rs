//! Shared helpers for the wallet-login tests: locating the built module and tools,
//! the well-known anvil test wallets, signing with foundry's `cast` (an independent
//! EIP-191 implementation), access files, and child processes that are killed when
//! a test ends, however it ends.
//!
//! Prerequisites are checked loudly: a missing tool or a non-root run panics with
//! what to install or how to run, never a silent skip.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod sshd;

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// anvil's dev mnemonic: accounts 0 and 1 below. Public test data, never a secret.
pub const ANVIL_MNEMONIC: &str = "test test test test test test test test test test test junk";
/// anvil account 0.
pub const WALLET0: &str = "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266";
/// anvil account 1.
pub const WALLET1: &str = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8";
/// anvil account 0's key, for the CLI's key-file tests.
pub const KEY0: &str = "ac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80";

/// The repository root (two levels above this crate).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// The cargo output directory holding this test's binaries and the module.
pub fn target_dir() -> PathBuf {
    // …/target/debug/deps/<test>-<hash> → …/target/debug
    std::env::current_exe()
        .unwrap()
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The PAM module built alongside the tests. blockhost-pam is a dependency of this
/// crate, so cargo rebuilds its cdylib into `deps/` whenever the module's source
/// changes; the copy one level up is refreshed only by `cargo build` and may be stale.
pub fn module_path() -> PathBuf {
    let p = target_dir().join("deps/libpam_blockhost.so");
    assert!(
        p.exists(),
        "{} is missing: cargo did not build the module's cdylib",
        p.display()
    );
    p
}

/// One of this crate's binaries.
pub fn bin(name: &str) -> PathBuf {
    let p = target_dir().join(name);
    assert!(p.exists(), "{} is missing", p.display());
    p
}

/// foundry's cast from the pinned npm install (scripts/setup.sh).
pub fn cast() -> PathBuf {
    let p = repo_root().join("node_modules/@foundry-rs/cast-linux-amd64/bin/cast");
    assert!(
        p.exists(),
        "cast is missing at {}: run scripts/setup.sh",
        p.display()
    );
    p
}

/// Panics unless running as root (sshd, /etc/pam.d and useradd need it).
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "this test needs root (it starts sshd and writes /etc/pam.d); run it as root"
    );
}

/// Writes `text` to `path` with `mode`.
pub fn write_file(path: &Path, text: &str, mode: u32) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A mnemonic file for cast (keeps the key material out of argv), 0600.
pub fn mnemonic_file(dir: &Path) -> PathBuf {
    let p = dir.join("mnemonic");
    write_file(&p, ANVIL_MNEMONIC, 0o600);
    p
}

/// A key file for the CLI, 0600.
pub fn key_file(dir: &Path) -> PathBuf {
    let p = dir.join("key0.hex");
    write_file(&p, KEY0, 0o600);
    p
}

/// `cast wallet sign` of `message` with anvil account `index`.
pub fn cast_sign(mnemonic: &Path, index: u32, message: &str) -> String {
    let out = Command::new(cast())
        .args(["wallet", "sign", "--mnemonic"])
        .arg(mnemonic)
        .args(["--mnemonic-index", &index.to_string(), message])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cast failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// An access file for `machine` naming `wallets` and `users`, as the controller
/// writes it (JSON).
pub fn access_json(
    machine: &str,
    wallets: &[&str],
    users: &[&str],
    signing_url: Option<&str>,
) -> String {
    let mut v = serde_json::json!({
        "version": 1,
        "machine": machine,
        "chain_id": 31337,
        "nft_token_id": 7,
        "wallets": wallets.iter().map(|w| w.to_lowercase()).collect::<Vec<_>>(),
        "users": users,
    });
    if let Some(u) = signing_url {
        v["signing_url"] = u.into();
    }
    serde_json::to_string_pretty(&v).unwrap()
}

/// A child process killed (and reaped) when dropped.
pub struct Guard(pub Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs a command with stdin from `input`, returning (success, stdout, stderr).
pub fn run_with_input(cmd: &mut Command, input: &str) -> (bool, String, String) {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The program may exit without reading its input (e.g. a refused key file): a
    // broken pipe here is its choice, not a test failure.
    if let Err(e) = child.stdin.take().unwrap().write_all(input.as_bytes()) {
        assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe, "{e}");
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A free TCP port on 127.0.0.1 (bound and released; the kernel does not hand it out
/// again at once).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until something accepts TCP connections on `port`.
pub fn wait_for_port(port: u16, what: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while std::time::Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    panic!("{what} did not start listening on 127.0.0.1:{port}");
}
