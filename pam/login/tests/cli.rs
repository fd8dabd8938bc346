//! The `blockhost-login` CLI: signing agrees byte for byte with foundry's `cast
//! wallet sign`, verification accepts it and refuses others, only BlockHost sign-in
//! messages are signed, and key files readable by others are refused.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::process::Command;

use support::*;

fn message() -> String {
    let now = chrono::Utc::now();
    pam_blockhost::siwe::SiweMessage {
        domain: "blockhost-007".into(),
        address: WALLET0.parse().unwrap(),
        statement: "Log in to blockhost-007 as Unix user alice (SSH).".into(),
        uri: "ssh://alice@blockhost-007".into(),
        chain_id: 31337,
        nonce: "00112233445566778899aabbccddeeff".into(),
        issued_at: now,
        expiration_time: now + chrono::Duration::minutes(5),
    }
    .to_text()
}

fn prompt(msg: &str) -> String {
    format!(
        "(alice@127.0.0.1) Wallet login.\n{}\n{msg}\n{}\nPaste the signature (0x...): ",
        pam_blockhost::siwe::BEGIN_MARKER,
        pam_blockhost::siwe::END_MARKER
    )
}

fn login(args: &[&str]) -> Command {
    let mut c = Command::new(bin("blockhost-login"));
    c.args(args);
    c
}

#[test]
fn sign_matches_cast_and_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let key = key_file(dir.path());
    let msg = message();
    let (ok, sig, err) = run_with_input(
        login(&["sign", "--key-file", key.to_str().unwrap()]).arg("--"),
        &prompt(&msg),
    );
    assert!(ok, "{err}");
    let sig = sig.trim();
    assert_eq!(
        sig,
        cast_sign(&mnemonic_file(dir.path()), 0, &msg),
        "RFC 6979: identical to cast"
    );

    let (ok, out, _) = run_with_input(
        &mut login(&["verify", "--address", WALLET0, "--signature", sig]),
        &msg,
    );
    assert!(ok && out.contains("valid signature"), "{out}");
    let (ok, _, _) = run_with_input(
        &mut login(&["verify", "--address", WALLET1, "--signature", sig]),
        &msg,
    );
    assert!(!ok, "other wallet");
    let (ok, _, _) = run_with_input(
        &mut login(&["verify", "--address", WALLET0, "--signature", "0x1234"]),
        &msg,
    );
    assert!(!ok, "short signature");

    let (ok, out, _) = run_with_input(&mut login(&["extract"]), &prompt(&msg));
    assert!(ok);
    assert_eq!(out, format!("{msg}\n"));
}

#[test]
fn askpass_answers_prompts() {
    let dir = tempfile::tempdir().unwrap();
    let key = key_file(dir.path());
    let msg = message();
    let out = login(&["askpass", &prompt(&msg)])
        .env("BLOCKHOST_KEY_FILE", &key)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        cast_sign(&mnemonic_file(dir.path()), 0, &msg)
    );
    // The wallet-choice prompt is answered with the key's address.
    let out = login(&["askpass", "Wallet to sign with (number or address): "])
        .env("BLOCKHOST_KEY_FILE", &key)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), WALLET0);
    let out = login(&["askpass", "x"])
        .env_remove("BLOCKHOST_KEY_FILE")
        .output()
        .unwrap();
    assert!(!out.status.success());
}

#[test]
fn refuses_to_sign_anything_else() {
    let dir = tempfile::tempdir().unwrap();
    let key = key_file(dir.path());
    let k = key.to_str().unwrap();
    // Arbitrary text, a message for another wallet, a truncated message.
    let other_wallet = message().replace(WALLET0, WALLET1);
    let cut = message()[..150].to_string();
    for input in [
        "send 1 ETH to 0xdead".to_string(),
        other_wallet,
        prompt(&cut),
    ] {
        let (ok, out, err) = run_with_input(&mut login(&["sign", "--key-file", k]), &input);
        assert!(!ok && out.is_empty(), "signed {input:?}: {err}");
    }
    // A key file others can read.
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let (ok, _, err) = run_with_input(&mut login(&["sign", "--key-file", k]), &message());
    assert!(!ok && err.contains("chmod 600"), "{err}");
}
