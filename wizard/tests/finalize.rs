//! Finalization against anvil (interval mining, so transactions stay pending for
//! a moment) and fakepve with the access API modelled: the wizard is SIGKILLed
//! while a deployment transaction is in flight, restarted, resumes by itself and
//! completes with exactly one set of contracts, plans, token and NFTs (the server
//! wallet's nonce equals the number of transactions setup needs); blockhostd
//! then runs from the written configuration with the least-privilege token and
//! serves a purchase. The server key's hex is in no response, log or state file.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};

use alloy_primitives::U256;
use alloy_sol_types::SolCall;
use blockhost_chain::bindings::{AccessCredentialNFT, BlockhostSubscriptions};
use serde_json::{Value, json};
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_during_finalization_resumes_without_duplicates() {
    if !ready(false) {
        return;
    }
    let anvil = Anvil::start(Some(1));
    let mut pve = start_fakepve();
    let mut env = Env::new();
    env.with_template(&mut pve);
    let mut w = Wizard::start(&env);
    let mut c = Client::new(&env, &w.base);
    c.sign_in(&env, ADMIN_KEY).await;
    let server = answer_everything(&mut c, &pve, &anvil).await;
    let (s, v) = c.post("/api/finalize", json!({})).await;
    assert_eq!(s, 200, "{v}");

    // Kill while the first deployment is broadcast but not mined.
    let state_file = env.state().join("finalize.json");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let st: Value = std::fs::read(&state_file)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(Value::Null);
        let latest = anvil.nonce(&server).await;
        let pending = q(&anvil
            .rpc("eth_getTransactionCount", json!([server, "pending"]))
            .await);
        if st["outputs"]["baseNonce"].is_number() && pending > latest {
            break;
        }
        assert!(Instant::now() < deadline, "no deployment in flight: {st}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    w.kill();
    let killed: Value = serde_json::from_slice(&std::fs::read(&state_file).unwrap()).unwrap();
    assert_eq!(killed["status"], "running", "{killed}");
    let mut bodies = std::mem::take(&mut c.bodies);

    // Restarted, it resumes by itself; the operator's session is still there.
    let mut w = Wizard::start(&env);
    let started = Instant::now();
    let done = wait_finalize(&mut c, Duration::from_secs(180), |v| {
        v["status"] == "done" || v["status"] == "failed"
    })
    .await;
    assert_eq!(
        done["status"],
        "done",
        "{done}\n--- wizard ---\n{}",
        w.log_text()
    );
    eprintln!("resumed finalization took {:?}", started.elapsed());
    assert!(
        w.log_text()
            .contains("resuming the interrupted finalization")
    );
    let outputs = done["outputs"].clone();
    assert_eq!(outputs["nftTokenId"], 0);

    // Exactly one of everything: 3 deployments (with the test token), the payment
    // token, 2 plans and NFT #0 are the server wallet's only 7 transactions.
    assert_eq!(
        anvil.nonce(&server).await,
        7,
        "a transaction was sent twice"
    );
    let subs = outputs["subscriptions"].as_str().unwrap();
    let nft = outputs["nft"].as_str().unwrap();
    let count = BlockhostSubscriptions::getTotalPlanCountCall::abi_decode_returns(
        &anvil
            .call(
                subs,
                &BlockhostSubscriptions::getTotalPlanCountCall {}.abi_encode(),
            )
            .await,
    )
    .unwrap();
    assert_eq!(count, U256::from(2u64));
    let supply = AccessCredentialNFT::totalSupplyCall::abi_decode_returns(
        &anvil
            .call(nft, &AccessCredentialNFT::totalSupplyCall {}.abi_encode())
            .await,
    )
    .unwrap();
    assert_eq!(supply, U256::from(1u64));
    let owner = AccessCredentialNFT::ownerOfCall::abi_decode_returns(
        &anvil
            .call(
                nft,
                &AccessCredentialNFT::ownerOfCall {
                    tokenId: U256::ZERO,
                }
                .abi_encode(),
            )
            .await,
    )
    .unwrap();
    assert_eq!(owner.to_string(), ADMIN);
    token_is_least_privilege(&mut pve);
    template_is_installed(&mut pve, &outputs);

    // The wizard switched itself off: marker written, code and console text gone,
    // the process ended, sessions ended.
    w.wait_exit(Duration::from_secs(20));
    assert!(env.path("setup-complete").exists());
    assert!(!env.state().join("code.json").exists());
    assert!(!env.path("issue.d/blockhost-wizard.issue").exists());
    assert!(!env.state().join("sessions.json").exists());
    assert!(
        !env.state().join("secrets").exists(),
        "the password and access signature are deleted"
    );
    Wizard::assert_does_not_serve(&env);

    // The configuration: schema-valid (blockhostd's loader), keys private.
    let cfg = blockhost_api::config::load(&env.etc().join("blockhost.yaml"), true).unwrap();
    let chain = cfg.chain.unwrap();
    assert_eq!(
        chain.subscriptions_contract.unwrap().to_lower_hex(),
        subs.to_lowercase()
    );
    assert_eq!(cfg.proxmox.unwrap().token_id, "blockhost@pve!blockhostd");
    for (f, mode) in [
        ("blockhost.yaml", 0o640),
        ("server.key", 0o600),
        ("pve-token", 0o600),
    ] {
        assert_eq!(
            blockhost_wizard::fsutil::mode_of(&env.etc().join(f)).unwrap(),
            mode,
            "{f}"
        );
    }

    purchase_is_served(&env, &anvil, &mut pve, &outputs).await;
    firewall_is_installed(&env).await;

    bodies.append(&mut c.bodies);
    let logs = vec![
        w.log_text(),
        std::fs::read_to_string(env.path("blockhostd.log")).unwrap_or_default(),
        std::fs::read_to_string(env.path("root-agent.log")).unwrap_or_default(),
    ];
    bodies.extend(logs);
    server_key_is_nowhere(
        &env,
        &bodies,
        &[env.state(), env.etc(), env.path("issue.d")],
    );
}

/// The wizard SIGKILLed while the template install runs, so the short-lived
/// administrator token it made for the install still exists: restarted, it
/// deletes that token, makes a new one, finds the template already installed
/// (same image digest) and deletes the token again. No setup token is left, and
/// blockhostd's token was made once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_during_the_template_install_leaves_no_setup_token() {
    if !ready(false) {
        return;
    }
    let anvil = Anvil::start(None);
    let mut pve = start_fakepve();
    let mut env = Env::new();
    env.with_template(&mut pve);
    // The real install, then (the first time only) a pause to be killed in.
    let wrapper = env.path("install-then-pause.sh");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nset -e\n\"{bhctl}\" template install \"$@\"\nif [ ! -e {dir}/paused ]; then sleep 60 & echo $! > {dir}/pause.pid; touch {dir}/paused; wait; fi\n",
            bhctl = sibling_bin("bhctl").display(),
            dir = env.root.path().display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    env.template_install = Some(wrapper.display().to_string());
    let mut w = Wizard::start(&env);
    let mut c = Client::new(&env, &w.base);
    c.sign_in(&env, ADMIN_KEY).await;
    answer_everything(&mut c, &pve, &anvil).await;
    let (s, v) = c.post("/api/finalize", json!({})).await;
    assert_eq!(s, 200, "{v}");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !env.path("paused").exists() {
        assert!(
            Instant::now() < deadline,
            "the install did not get there: {}",
            w.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let a = pve.cmd(json!({"op": "access"}));
    assert!(
        a["tokens"]["root@pam!blockhost-setup"].is_object(),
        "the setup token exists during the install: {a}"
    );
    w.kill();
    if let Ok(pid) = std::fs::read_to_string(env.path("pause.pid")) {
        let _ = std::process::Command::new("kill").arg(pid.trim()).status();
    }

    let mut w = Wizard::start(&env);
    let done = wait_finalize(&mut c, Duration::from_secs(120), |v| {
        v["status"] == "done" || v["status"] == "failed"
    })
    .await;
    assert_eq!(done["status"], "done", "{done}\n{}", w.log_text());
    assert!(
        done["outputs"]["template"]
            .as_str()
            .unwrap()
            .contains("unchanged"),
        "the second install found the template: {done}"
    );
    token_is_least_privilege(&mut pve);
    let a = pve.cmd(json!({"op": "access"}));
    let count = |method: &str| {
        a["writes"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|x| {
                x[0] == method && x[1].as_str().unwrap().ends_with("/token/blockhost-setup")
            })
            .count()
    };
    assert_eq!((count("POST"), count("DELETE")), (2, 2), "{a}");
    w.wait_exit(Duration::from_secs(20));
}

/// Benchmark (ignored by default): finalization time on anvil (automine) and
/// fakepve, from "Finalize" to done, without the template step and with it (the
/// build stand-in writes a small file; the install is the real
/// `bhctl template install` against fakepve), the root agent started in its own
/// network namespace when run as root.
/// `cargo test -p blockhost-wizard --test finalize finalization_bench -- --ignored --nocapture`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: prints figures"]
async fn finalization_bench() {
    if !ready(false) {
        return;
    }
    for template in [false, true] {
        let mut runs = Vec::new();
        for _ in 0..3 {
            let anvil = Anvil::start(None);
            let mut pve = start_fakepve();
            let mut env = Env::new();
            if template {
                env.with_template(&mut pve);
            }
            let w = Wizard::start(&env);
            let mut c = Client::new(&env, &w.base);
            c.sign_in(&env, ADMIN_KEY).await;
            answer_everything(&mut c, &pve, &anvil).await;
            let t = Instant::now();
            let (s, v) = c.post("/api/finalize", json!({})).await;
            assert_eq!(s, 200, "{v}");
            let done = wait_finalize(&mut c, Duration::from_secs(180), |v| {
                v["status"] == "done" || v["status"] == "failed"
            })
            .await;
            assert_eq!(done["status"], "done", "{done}\n{}", w.log_text());
            runs.push(t.elapsed());
        }
        runs.sort();
        eprintln!(
            "finalization (anvil automine + fakepve, {}, root agent {}), 3 runs: min {:?}, median {:?}, max {:?}",
            if template {
                "with the template step (stand-in build, real install)"
            } else {
                "no template step"
            },
            if can_run_root_agent() { "on" } else { "off" },
            runs[0],
            runs[1],
            runs[2]
        );
    }
}
