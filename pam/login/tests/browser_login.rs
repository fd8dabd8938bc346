//! End-to-end through the signing page: real sshd with the module, the real
//! `blockhost-signer` over TLS on loopback, the OpenSSH client pressing Enter at the
//! prompt, and headless Chromium signing on the page with an injected EIP-1193
//! wallet backed by `cast wallet sign`. Along the way the page's failure states
//! (no wallet, wrong account, rejected signature) are checked on the same pending
//! login, and the API's one-shot and size rules from the page's origin.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::sshd::{Sshd, in_dir, run_bounded};
use support::*;

#[test]
fn wallet_login_through_the_signing_page_in_chromium() {
    assert!(
        std::path::Path::new("/usr/bin/chromium").exists(),
        "chromium missing: apt-get install chromium"
    );
    let node = which("node");
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser/signing_page.mjs");
    assert!(
        repo_root().join("node_modules/playwright-core").exists(),
        "playwright-core missing: run scripts/setup.sh"
    );

    let signer_port = free_port();
    let url = format!("https://127.0.0.1:{signer_port}/");
    let access = access_json("blockhost-007", &[WALLET0], &["bhweb"], Some(&url));
    let sshd = Sshd::start("sshd-blockhost-test-web", "bhweb", &access, "wait=90");

    let state_dir = in_dir(&sshd, "signer-state");
    let signer_log = std::fs::File::create(in_dir(&sshd, "signer.log")).unwrap();
    let signer = Guard(
        Command::new(bin("blockhost-signer"))
            .args([
                "--listen",
                &format!("127.0.0.1:{signer_port}"),
                "--hostname",
                "blockhost-007",
            ])
            .arg("--socket")
            .arg(in_dir(&sshd, "signer.sock"))
            .arg("--state-dir")
            .arg(&state_dir)
            .stdin(Stdio::null())
            .stdout(signer_log.try_clone().unwrap())
            .stderr(signer_log)
            .spawn()
            .unwrap(),
    );
    wait_for_port(signer_port, "blockhost-signer");
    let key_mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(state_dir.join("key.pem"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(key_mode & 0o777, 0o600, "the certificate key is private");

    // The SSH login runs in the background: its askpass records the URL and presses Enter.
    let ssh = std::thread::scope(|scope| {
        let ssh = scope.spawn(|| sshd.ssh("enter"));
        let url_file = in_dir(&sshd, "url");
        let deadline = Instant::now() + Duration::from_secs(30);
        while !url_file.exists() {
            assert!(
                Instant::now() < deadline,
                "the prompt never showed a signing URL"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let page_url = std::fs::read_to_string(&url_file)
            .unwrap()
            .trim()
            .to_owned();
        assert!(page_url.starts_with(&format!("{url}#")), "{page_url}");

        let shots = in_dir(&sshd, "screenshots");
        std::fs::create_dir_all(&shots).unwrap();
        let mut cmd = Command::new(&node);
        cmd.arg(&script)
            .args([&page_url, WALLET0, WALLET1])
            .arg(in_dir(&sshd, "mnemonic"))
            .arg(cast())
            .arg(&shots)
            .current_dir(repo_root())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let out = run_bounded(cmd, Duration::from_secs(120));
        if !out.status.success() {
            // Stop the signer so the waiting login ends now rather than at its timeout.
            // SAFETY: signalling our own child by its pid.
            unsafe { libc::kill(signer.0.id() as i32, libc::SIGKILL) };
        }
        assert!(
            out.status.success(),
            "browser script failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let seen: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        if let Some(keep) = std::env::var_os("BH_KEEP_SCREENSHOTS") {
            for f in ["no-wallet.png", "signed.png"] {
                std::fs::copy(shots.join(f), std::path::Path::new(&keep).join(f)).unwrap();
            }
        }
        (ssh.join().unwrap(), seen)
    });
    let (out, seen) = ssh;

    let prompt = std::fs::read_to_string(in_dir(&sshd, "last-prompt")).unwrap();
    let message = pam_blockhost::siwe::extract_from_prompt(&prompt).unwrap();
    assert_eq!(
        seen["shownMessage"], message,
        "the page shows exactly the message of the prompt"
    );
    assert_eq!(
        seen["signedMessage"], message,
        "the wallet was asked to sign exactly that message: {seen}"
    );
    assert_eq!(seen["states"]["noWallet"]["state"], "no-wallet");
    assert_eq!(seen["states"]["wrongAccount"]["state"], "wrong-account");
    assert!(
        seen["states"]["wrongAccount"]["text"]
            .as_str()
            .unwrap()
            .contains(WALLET0)
    );
    assert_eq!(seen["states"]["rejected"]["state"], "rejected");
    assert_eq!(seen["states"]["ready"], "ready");
    assert_eq!(seen["states"]["done"]["state"], "done", "{seen}");
    assert_eq!(
        seen["manualSignature"].as_str().unwrap().len(),
        132,
        "signature shown for manual copy"
    );
    assert_eq!(seen["api"]["again"], 404, "one signature per session");
    assert_eq!(seen["api"]["big"], 413, "body limit");
    assert_eq!(seen["api"]["getAfter"], 404);

    assert!(
        sshd.logged_in(&out),
        "login through the page failed: {}\nsshd:\n{}\nsigner:\n{}",
        String::from_utf8_lossy(&out.stderr),
        sshd.log(),
        std::fs::read_to_string(in_dir(&sshd, "signer.log")).unwrap_or_default()
    );
}

fn which(tool: &str) -> std::path::PathBuf {
    std::env::var_os("PATH")
        .and_then(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join(tool))
                .find(|c| c.exists())
        })
        .unwrap_or_else(|| {
            panic!("{tool} not on PATH: source scripts/env.sh after scripts/setup.sh")
        })
}
