//! The setup wizard end to end in headless Chromium (Debian's chromium driven by
//! npm playwright-core, as the signup page's test) with an injected EIP-6963
//! wallet backed by anvil's dev account 0, against anvil and fakepve (access API
//! modelled): the code (a wrong one first), SIWE, the access signature, every
//! step with the server's messages, back and forth, finalization to the end.
//! Then: blockhostd runs from the written configuration with the least-privilege
//! token and serves a purchase; `bhctl get plans` shows the wizard's plans; the
//! server key's hex is in no response, log or state file; the page contacted no
//! other origin and broke no CSP rule.
//!
//! Screenshots of every stage at desktop and phone width go to
//! `target/tmp/wizard-screenshots/` (the path is printed).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::{Value, json};
use support::*;

fn node() -> PathBuf {
    std::env::var_os("PATH")
        .and_then(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("node"))
                .find(|c| c.exists())
        })
        .expect("node not on PATH")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_setup_in_chromium() {
    if !ready(true) {
        return;
    }
    let anvil = Anvil::start(None);
    let mut pve = start_fakepve();
    let mut env = Env::new();
    env.with_template(&mut pve);
    let mut w = Wizard::start(&env);
    let shots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("wizard-screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    eprintln!("wizard screenshots: {}", shots.display());
    let bodies = env.path("bodies.json");
    let args = json!({
        "url": format!("{}/", w.base),
        "rpc": anvil.url,
        "shots": shots,
        "bodies": bodies,
        "code": env.code(),
        "admin": ADMIN,
        "pve": {"url": pve.url, "fingerprint": pve.fingerprint},
        "password": "secret",
        "command": ADMIN_COMMAND,
    });
    let script = repo_root().join("wizard/tests/wizard_page.mjs");
    let child = Command::new(node())
        .arg(&script)
        .arg(args.to_string())
        .current_dir(repo_root())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    let seen: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    eprintln!("{}", serde_json::to_string_pretty(&seen).unwrap());
    assert!(
        out.status.success(),
        "browser script failed: {}\n{}\n--- wizard ---\n{}\n--- blockhostd ---\n{}",
        seen["error"].as_str().unwrap_or_default(),
        String::from_utf8_lossy(&out.stderr),
        w.log_text(),
        std::fs::read_to_string(env.path("blockhostd.log")).unwrap_or_default()
    );
    assert_eq!(seen["foreignRequests"], json!([]), "{seen}");
    assert_eq!(seen["cspViolations"], json!([]), "{seen}");
    assert_eq!(seen["consoleErrors"], json!([]), "{seen}");
    let st = &seen["states"];
    assert!(
        st["wrongCode"]["text"]
            .as_str()
            .unwrap()
            .contains("9 tries left"),
        "{st}"
    );
    assert_eq!(st["admin"], ADMIN);
    let errs = &st["proxmoxErrors"];
    for f in ["password", "templateVmid", "ipv4Gateway"] {
        assert!(errs[f].is_string(), "no server message for {f}: {errs}");
    }
    assert_eq!(
        st["kept"]["url"],
        pve.url.as_str(),
        "back keeps the answers"
    );
    assert_eq!(st["kept"]["vmidLast"], "299");
    assert_eq!(
        st["keptChain"]["rpc"],
        anvil.url.as_str(),
        "forth keeps the answers"
    );
    assert!(
        st["balanceBefore"].as_str().unwrap().starts_with("0.0000"),
        "{st}"
    );
    assert!(
        st["summary"].as_str().unwrap().contains("large: 500"),
        "{st}"
    );
    assert_eq!(st["final"]["state"], "done", "{st}");
    for s in st["steps"].as_array().unwrap() {
        assert_eq!(s[1], "done", "{s}");
    }

    // The host runs: the wizard stopped itself, blockhostd serves.
    w.wait_exit(std::time::Duration::from_secs(20));
    assert!(env.path("setup-complete").exists());
    let fin: Value =
        serde_json::from_slice(&std::fs::read(env.state().join("finalize.json")).unwrap()).unwrap();
    token_is_least_privilege(&mut pve);
    template_is_installed(&mut pve, &fin["outputs"]);
    purchase_is_served(&env, &anvil, &mut pve, &fin["outputs"]).await;
    firewall_is_installed(&env).await;

    let mut texts: Vec<String> = serde_json::from_slice(&std::fs::read(&bodies).unwrap()).unwrap();
    assert!(texts.len() > 20, "responses were recorded");
    texts.push(w.log_text());
    texts.push(std::fs::read_to_string(env.path("blockhostd.log")).unwrap_or_default());
    texts.push(std::fs::read_to_string(env.path("root-agent.log")).unwrap_or_default());
    texts.push(seen.to_string());
    server_key_is_nowhere(&env, &texts, &[env.state(), env.etc(), env.path("issue.d")]);

    for stage in [
        "1-code",
        "2-wallet",
        "3-access",
        "4-proxmox-errors",
        "5-proxmox-done",
        "6-chain",
        "7-admin",
        "8-summary",
        "10-done",
    ] {
        for width in ["desktop", "phone"] {
            let f = shots.join(format!("{stage}-{width}.png"));
            let meta = std::fs::metadata(&f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
            assert!(meta.len() > 1000, "{} is empty", f.display());
        }
    }
}
