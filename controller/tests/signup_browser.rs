//! The signup page end to end in headless Chromium (Debian's chromium driven by
//! npm playwright-core), with an injected EIP-1193 wallet backed by anvil's dev
//! accounts, against real processes: anvil with the contracts, fakepve, and
//! blockhostd with `chain`, `proxmox` and `signup` sections.
//!
//! The browser script (`signup/tests/signup_page.mjs`) walks every error state
//! (no wallet, wrong chain with a refused switch, insufficient balance, rejected
//! signature, reverted transaction), buys a VM through the page until it shows
//! the decrypted connection details, decrypts again from "My VMs" in a fresh
//! page and renews. It blocks and reports any request to an origin other than
//! blockhostd's and the RPC's. This test then checks what the page showed
//! against the chain and the store: the details decrypt in Rust to the same
//! values, and the expiry moved by the renewed days.
//!
//! Screenshots at desktop and phone width go to `target/tmp/signup-screenshots/`
//! (the path is printed). Addresses: 127.0.12.x (anvil .1, blockhostd's page .2,
//! TLS test .3, fakepve from .10). Needs anvil, fakepve, chromium and
//! playwright-core; skipped with a message when one is missing, unless
//! `BLOCKHOST_REQUIRE_TOOLS=1`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod chain_support;
mod common;
mod proxmox_support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::AtomicU32;
use std::time::Duration;

use alloy_primitives::{Address, U256};
use alloy_sol_types::SolCall;
use blockhost_chain::bindings::{AccessCredentialNFT, BlockhostSubscriptions, MockERC20};
use blockhost_chain::nft_payload;
use blockhost_crd::eip191;
use chain_support::*;
use k256::ecdsa::SigningKey;
use serde_json::{Value, json};

/// anvil dev account 5: buys through the page (stablecoin, no allowance).
const PAGE_BUYER: &str = "0x9965507d1a55bcc2695c58ba16fb37d819b0a4dc";
const PAGE_BUYER_KEY: &str = "8b3a350cf5c34c9194ca85829a2df0ec3153be0318b5e2d3348e872092edffba";
/// anvil dev account 6: holds no stablecoin.
const POOR: &str = "0x976ea74026e726554db657fa54763abd0c3a0aa9";

/// anvil dev account 2, the address of `SERVER_KEY`: the minter's wallet.
const SERVER_WALLET: &str = "0x3c44cdddb6a900fa2b585dd299e03d12fa4293bc";

static NEXT_PVE: AtomicU32 = AtomicU32::new(10);

fn chromium_tools() -> bool {
    let root = common::repo_root();
    let missing: Vec<String> = [
        (
            PathBuf::from("/usr/bin/chromium"),
            "apt-get install chromium",
        ),
        (
            root.join("node_modules/playwright-core"),
            "run scripts/setup.sh",
        ),
        (
            root.join(".venv/bin/python"),
            "run scripts/setup.sh (fakepve)",
        ),
    ]
    .into_iter()
    .filter(|(p, _)| !p.exists())
    .map(|(p, how)| format!("{} ({how})", p.display()))
    .collect();
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

fn node() -> PathBuf {
    std::env::var_os("PATH")
        .and_then(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("node"))
                .find(|c| c.exists())
        })
        .expect("node not on PATH")
}

fn screenshot_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("signup-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn write_server_key(dir: &Path) -> PathBuf {
    let key = dir.join("server.key");
    std::fs::write(&key, format!("0x{SERVER_KEY}\n")).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    key
}

async fn eth_call(anvil: &Anvil, to: Address, data: Vec<u8>) -> Vec<u8> {
    let out = anvil
        .rpc(
            "eth_call",
            json!([{"to": to.to_string(), "data": hex0x(&data)}, "latest"]),
        )
        .await;
    hex::decode(out.as_str().unwrap().trim_start_matches("0x")).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buy_decrypt_renew_and_every_error_state_in_chromium() {
    if !tools_available() || !chromium_tools() {
        return;
    }
    let anvil = Anvil::start_on("127.0.12.1", 18645);
    let d = anvil.deploy().await;
    // The server key's wallet (anvil dev account 2) owns the NFT: it mints.
    anvil
        .send(
            OWNER,
            Some(d.nft),
            &AccessCredentialNFT::transferOwnershipCall {
                newOwner: addr(SERVER_WALLET),
            }
            .abi_encode(),
        )
        .await;
    anvil.create_plan(&d, "basic", 150).await;
    anvil.create_plan(&d, "large", 500).await;
    // The page's buyer gets 1,000 test dollars and no allowance (the page approves).
    anvil
        .send(
            OWNER,
            Some(d.usdc),
            &MockERC20::mintCall {
                to: addr(PAGE_BUYER),
                amount: U256::from(1_000_000_000u64),
            }
            .abi_encode(),
        )
        .await;

    let mut pve = proxmox_support::FakePve::start(
        &common::repo_root(),
        "127.0.12",
        &NEXT_PVE,
        &[],
        Stdio::null,
    );
    proxmox_support::FakePveExt::auto_agent(&mut pve);
    let dir = tempfile::tempdir().unwrap();
    let cfg_path =
        proxmox_support::write_config(dir.path(), &pve, &proxmox_support::Tuning::default());
    let key = write_server_key(dir.path());
    let page_addr = "127.0.12.2:18646";
    let mut cfg = std::fs::read_to_string(&cfg_path).unwrap();
    cfg.push_str(&format!(
        "chain:\n  chainId: 31337\n  rpcUrls: [\"{}\"]\n  subscriptionsContract: \"{:#x}\"\n  nftContract: \"{:#x}\"\n  deploymentBlock: {}\n  confirmations: 0\n  pollIntervalMs: 50\n  serverKeyFile: {}\nsignup:\n  listen: {page_addr}\n  statusRequestsPerMinute: 600\n",
        anvil.url,
        d.subs,
        d.nft,
        d.block,
        key.display()
    ));
    std::fs::write(&cfg_path, cfg).unwrap();
    let daemon = common::Daemon::start(dir.path());

    let shots = screenshot_dir();
    eprintln!("signup screenshots: {}", shots.display());
    let deactivate = BlockhostSubscriptions::updatePlanCall {
        planId: U256::from(2u64),
        name: "large".into(),
        pricePerDayUsdCents: U256::from(500u64),
        active: false,
    }
    .abi_encode();
    let args = json!({
        "url": format!("http://{page_addr}/"),
        "rpc": anvil.url,
        "shots": shots,
        "buyer": PAGE_BUYER,
        "poor": POOR,
        "owner": OWNER,
        "subscriptions": format!("{:#x}", d.subs),
        "deactivatePlan2": hex0x(&deactivate),
    });
    let script = common::repo_root().join("signup/tests/signup_page.mjs");
    let out = Command::new(node())
        .arg(&script)
        .arg(args.to_string())
        .current_dir(common::repo_root())
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let out = tokio::task::spawn_blocking(move || out.wait_with_output().unwrap())
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "browser script failed: {stderr}\n--- daemon log ---\n{}",
        daemon.log()
    );
    let seen: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
    eprintln!("{}", serde_json::to_string_pretty(&seen).unwrap());

    // Only blockhostd and the RPC were contacted; the CSP was never violated.
    assert_eq!(seen["foreignRequests"], json!([]), "{seen}");
    assert_eq!(seen["cspViolations"], json!([]), "{seen}");
    // Every error state was reached and shown.
    let st = &seen["states"];
    assert_eq!(st["noWallet"]["state"], "no-wallet");
    assert_eq!(
        st["noWallet"]["plans"], 2,
        "plans are shown without a wallet"
    );
    assert_eq!(st["wrongChain"]["state"], "wrong-chain");
    assert!(
        st["wrongChain"]["price"].as_str().unwrap().contains("USDC"),
        "price shown on the wrong chain too"
    );
    assert_eq!(st["switchRefused"]["state"], "switch-refused");
    assert!(
        st["switchRefused"]["text"]
            .as_str()
            .unwrap()
            .contains("31337")
    );
    assert_eq!(st["switched"]["state"], "ready");
    assert_eq!(st["connect"]["state"], "connect", "asks to connect first");
    assert_eq!(st["insufficient"]["state"], "insufficient");
    assert_eq!(st["insufficient"]["buyDisabled"], true);
    assert_eq!(st["rejected"]["state"], "rejected");
    assert_eq!(st["rejected"]["signStep"], "failed");
    assert_eq!(st["reverted"]["state"], "reverted");
    assert_eq!(st["reverted"]["payStep"], "failed");
    // The purchase: every step went through, approve included.
    let buy = &seen["purchase"];
    assert_eq!(buy["state"], "done", "{buy}");
    for s in ["sign", "approve", "pay", "provision", "mint"] {
        assert_eq!(buy["steps"][s], "done", "step {s}: {buy}");
    }
    let sub_id: u64 = buy["subscriptionId"].as_str().unwrap().parse().unwrap();
    assert_eq!(sub_id, 1, "the page's purchase is the first subscription");

    // The details shown are what the NFT holds for this wallet (decrypted here).
    let token: u64 = seen["myVms"]["tokenId"].as_str().unwrap().parse().unwrap();
    let payload = eth_call(
        &anvil,
        d.nft,
        AccessCredentialNFT::getUserEncryptedCall {
            tokenId: U256::from(token),
        }
        .abi_encode(),
    )
    .await;
    let payload = AccessCredentialNFT::getUserEncryptedCall::abi_decode_returns(&payload).unwrap();
    let buyer_key = SigningKey::from_slice(&hex::decode(PAGE_BUYER_KEY).unwrap()).unwrap();
    let sig = eip191::sign(&buyer_key, b"blockhost-access").unwrap();
    let details = nft_payload::decrypt(&sig, &payload).unwrap();
    for shown in [&buy["details"], &seen["myVms"]["details"]] {
        assert_eq!(shown["host"], details.hostname, "{shown}");
        assert_eq!(shown["port"], details.port.to_string(), "{shown}");
        assert_eq!(shown["user"], details.username, "{shown}");
        assert!(
            shown["ssh"]
                .as_str()
                .unwrap()
                .contains(&format!("{}@{}", details.username, details.hostname)),
            "{shown}"
        );
    }
    // Renewal: 10 more days, on chain and on the page.
    assert_eq!(seen["myVms"]["renewNotice"]["state"], "done", "{seen}");
    let before: u64 = seen["myVms"]["expiresBefore"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let after: u64 = seen["myVms"]["expiresAfter"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(after - before, 10 * 86_400, "{seen}");
    assert_eq!(anvil.expires_at(&d, sub_id).await, after);

    for f in [
        "no-wallet-desktop.png",
        "no-wallet-phone.png",
        "wrong-chain-phone.png",
        "insufficient-desktop.png",
        "rejected-phone.png",
        "reverted-desktop.png",
        "reverted-phone.png",
        "purchased-desktop.png",
        "purchased-phone.png",
        "my-vms-desktop.png",
        "my-vms-phone.png",
    ] {
        let meta = std::fs::metadata(shots.join(f)).unwrap_or_else(|e| panic!("{f}: {e}"));
        assert!(meta.len() > 1000, "{f} is empty");
    }
    drop(daemon);
}

#[test]
fn the_committed_crypto_bundle_matches_the_lock_file() {
    let root = common::repo_root();
    if !root.join("node_modules/.bin/esbuild").exists() {
        assert!(
            std::env::var("BLOCKHOST_REQUIRE_TOOLS").as_deref() != Ok("1"),
            "BLOCKHOST_REQUIRE_TOOLS=1 but esbuild is missing; run scripts/setup.sh"
        );
        eprintln!("skipping: esbuild missing; run scripts/setup.sh");
        return;
    }
    let out = Command::new("bash")
        .arg(root.join("signup/build.sh"))
        .arg("--check")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_is_served_over_https_with_the_configured_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.12.3".into()]).unwrap();
    std::fs::write(dir.path().join("cert.pem"), cert.cert.pem()).unwrap();
    std::fs::write(dir.path().join("key.pem"), cert.signing_key.serialize_pem()).unwrap();
    // A TLS key others can read is refused, like the other key files.
    std::fs::set_permissions(
        dir.path().join("key.pem"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let key = write_server_key(dir.path());
    // The chain is never reached here (nothing listens): the page serves anyway.
    std::fs::write(
        dir.path().join("blockhost.yaml"),
        format!(
            "chain:\n  chainId: 31337\n  rpcUrls: [\"http://127.0.12.3:9\"]\n  subscriptionsContract: \"0x5fbdb2315678afecb367f032d93f642f64180aa3\"\n  nftContract: \"0xe7f1725e7734ce288f8367e1bb143e90bb3f0512\"\n  serverKeyFile: {}\nsignup:\n  listen: 127.0.12.3:18647\n  tlsCert: {}\n  tlsKey: {}\n  rpcUrl: https://rpc.example.org/v1\n  statusRequestsPerMinute: 2\n",
            key.display(),
            dir.path().join("cert.pem").display(),
            dir.path().join("key.pem").display(),
        ),
    )
    .unwrap();
    let refused = Command::new(env!("CARGO_BIN_EXE_blockhostd"))
        .arg("--store")
        .arg(dir.path().join("state.redb"))
        .arg("--socket")
        .arg(dir.path().join("api.sock"))
        .env("BLOCKHOST_CONFIG", dir.path().join("blockhost.yaml"))
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        err.contains("has mode 644") && err.contains("chmod 640"),
        "{err}"
    );
    std::fs::set_permissions(
        dir.path().join("key.pem"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    let daemon = common::Daemon::start(dir.path());
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(cert.cert.pem().as_bytes()).unwrap())
        .build()
        .unwrap();
    let base = "https://127.0.12.3:18647";
    let mut resp = None;
    for _ in 0..100 {
        match client.get(format!("{base}/config.json")).send().await {
            Ok(r) => {
                resp = Some(r);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    let resp = resp.unwrap_or_else(|| panic!("no HTTPS answer; log:\n{}", daemon.log()));
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["strict-transport-security"],
        "max-age=31536000"
    );
    let csp = resp.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        csp.contains("connect-src 'self' https://rpc.example.org/v1;"),
        "{csp}"
    );
    let page: Value = resp.json().await.unwrap();
    assert_eq!(page["rpcUrl"], "https://rpc.example.org/v1");
    assert_eq!(page["chainId"], 31337);
    // The server's public key, as eciesjs takes it: uncompressed, 65 bytes.
    let public = server_key().public_key();
    let sec1 = k256::elliptic_curve::sec1::ToEncodedPoint::to_encoded_point(&public, false);
    assert_eq!(page["serverPublicKey"], hex::encode(sec1.as_bytes()));
    assert!(
        !page.to_string().contains(SERVER_KEY),
        "the secret key is never served"
    );
    // Status for an unknown subscription, then the per-address limit.
    let codes: Vec<u16> = futures::future::join_all((0..3).map(|_| async {
        client
            .get(format!("{base}/api/v1/subscriptions/42"))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }))
    .await;
    let mut sorted = codes.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, vec![200, 200, 429], "{codes:?}");
}
