//! `bhctl chain deploy`, `bhctl plan create` and `bhctl nft decrypt` as real
//! processes against a real anvil, checked by an independent client: foundry's
//! `cast` calls what bhctl deployed through the original signatures
//! (REFERENCE.md §1) and buys a subscription with them.
//!
//! Anvil ports 18660–18662 are used only here.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

mod chain_support;
mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use blockhost_chain::nft_payload::{self, ConnectionDetails};
use blockhost_chain::user_encrypted;
use blockhost_crd::eip191;
use chain_support::{Anvil, repo_root, tools_available};
use k256::ecdsa::SigningKey;
use serde_json::Value;

/// anvil dev account 0: the server key (deploys, owns, mints).
const SERVER_KEY: &str = "ac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80";
const SERVER_ADDR: &str = "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266";
/// anvil dev account 1: the NFT holder.
const HOLDER_KEY: &str = "59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d";
const HOLDER_ADDR: &str = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8";
/// anvil dev account 2: a buyer using cast.
const BUYER_KEY: &str = "5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a";
const BUYER_ADDR: &str = "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC";
/// anvil dev account 3: someone else.
const OTHER_KEY: &str = "7c852118294e51e653712a81e05800f419141751be58f605c371e15141b007a6";

fn cast_bin() -> PathBuf {
    repo_root().join("node_modules/@foundry-rs/cast-linux-amd64/bin/cast")
}

/// anvil and cast present (or the test is skipped, unless tools are required).
fn tools() -> bool {
    if !tools_available() {
        return false;
    }
    if cast_bin().exists() {
        return true;
    }
    assert!(
        std::env::var("BLOCKHOST_REQUIRE_TOOLS").as_deref() != Ok("1"),
        "BLOCKHOST_REQUIRE_TOOLS=1 but cast is missing; run scripts/setup.sh"
    );
    eprintln!("skipping: cast missing; run `npm ci` at the repo root");
    false
}

fn bhctl(args: &[&str], stdin: Option<&str>) -> Output {
    let mut cmd = Command::new(common::bhctl_bin());
    cmd.args(args)
        .env_remove("BLOCKHOST_CONFIG")
        .env_remove("RUST_LOG");
    common::output_with_stdin(&mut cmd, stdin)
}

fn out(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[track_caller]
fn ok(o: &Output) -> String {
    assert!(o.status.success(), "failed: {}\n{}", out(o), err(o));
    out(o)
}

/// Asserts exit code 1 and a message on stderr.
#[track_caller]
fn fails_with(o: &Output, needle: &str) {
    assert_eq!(o.status.code(), Some(1), "{}\n{}", out(o), err(o));
    assert!(err(o).contains(needle), "missing {needle:?} in: {}", err(o));
}

fn cast(args: &[&str]) -> String {
    let o = Command::new(cast_bin()).args(args).output().unwrap();
    assert!(o.status.success(), "cast {args:?}: {}", err(&o));
    out(&o).trim().to_owned()
}

fn write_key(path: &Path, key: &str, mode: u32) {
    std::fs::write(path, format!("0x{key}\n")).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A configuration as an operator writes it before deploying: comments, no
/// contract addresses.
fn write_config(dir: &Path, url: &str, chain_id: u64, key: &Path) -> PathBuf {
    let cfg = dir.join("blockhost.yaml");
    std::fs::write(
        &cfg,
        format!(
            "# operator's notes: keep me\nstore: {store}\nchain:\n  chainId: {chain_id}   # anvil\n  rpcUrls:\n    - \"{url}\"\n  confirmations: 0\n  serverKeyFile: {key}\n\n# proxmox comes later\n",
            store = dir.join("state.redb").display(),
            key = key.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o640)).unwrap();
    cfg
}

fn deploy(cfg: &Path, extra: &[&str]) -> Value {
    let mut args = vec![
        "chain",
        "deploy",
        "--config",
        cfg.to_str().unwrap(),
        "-o",
        "json",
    ];
    args.extend_from_slice(extra);
    serde_json::from_str(&ok(&bhctl(&args, None))).unwrap()
}

fn signature_of(key: &str) -> eip191::Signature {
    let k = SigningKey::from_slice(&hex::decode(key).unwrap()).unwrap();
    eip191::sign(&k, b"blockhost-access").unwrap()
}

#[test]
fn deploy_then_plan_then_cast_buys_through_the_original_signatures() {
    if !tools() {
        return;
    }
    let anvil = Anvil::start(18660);
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("server.key");
    write_key(&key, SERVER_KEY, 0o600);
    let cfg = write_config(dir.path(), &anvil.url, 31337, &key);

    let d = deploy(&cfg, &["--dev-stablecoin"]);
    let subs = d["subscriptionsContract"].as_str().unwrap().to_owned();
    let nft = d["nftContract"].as_str().unwrap().to_owned();
    let usdc = d["stablecoin"].as_str().unwrap().to_owned();
    let block = d["deploymentBlock"].as_u64().unwrap();
    assert!(block >= 1);
    assert_eq!(d["owner"], SERVER_ADDR);

    // The file keeps the operator's comments and mode, and reads back with the
    // new keys.
    let text = std::fs::read_to_string(&cfg).unwrap();
    for needle in [
        "# operator's notes: keep me\n",
        "  chainId: 31337   # anvil\n",
        "\n# proxmox comes later\n",
        &format!("  subscriptionsContract: \"{subs}\"\n"),
        &format!("  nftContract: \"{nft}\"\n"),
        &format!("  deploymentBlock: {block}\n"),
    ] {
        assert!(text.contains(needle), "missing {needle:?} in\n{text}");
    }
    let mode = std::fs::metadata(&cfg).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o640);
    let loaded = blockhost_api::config::load(&cfg, true).unwrap();
    let c = loaded.chain.unwrap().contracts().unwrap();
    assert_eq!(c.subscriptions.to_checksum(), subs);
    assert_eq!(c.nft.to_checksum(), nft);

    // Code at both addresses, owned by the server key (asked by cast).
    for a in [&subs, &nft, &usdc] {
        assert!(cast(&["code", a, "--rpc-url", &anvil.url]).len() > 2);
    }
    for a in [&subs, &nft] {
        assert_eq!(
            cast(&["call", a, "owner()(address)", "--rpc-url", &anvil.url]),
            SERVER_ADDR
        );
    }
    assert_eq!(
        cast(&["call", &usdc, "decimals()(uint8)", "--rpc-url", &anvil.url]),
        "6"
    );

    // Deploying again over live contracts is refused, and nothing changes.
    let o = bhctl(
        &["chain", "deploy", "--config", cfg.to_str().unwrap()],
        None,
    );
    fails_with(&o, "--force");
    assert_eq!(std::fs::read_to_string(&cfg).unwrap(), text);

    // Plans: the id comes from the event.
    let o = bhctl(
        &[
            "plan",
            "create",
            "basic",
            "150",
            "--config",
            cfg.to_str().unwrap(),
            "-o",
            "json",
        ],
        None,
    );
    let p: Value = serde_json::from_str(&ok(&o)).unwrap();
    assert_eq!(p["planId"], 1);
    assert_eq!(p["pricePerDayUsdCents"], 150);
    let o = bhctl(
        &[
            "plan",
            "create",
            "pro plan",
            "300",
            "--config",
            cfg.to_str().unwrap(),
        ],
        None,
    );
    assert!(
        ok(&o).starts_with("plan 2 created: \"pro plan\", 300 cents/day"),
        "{}",
        out(&o)
    );
    let plan = cast(&[
        "call",
        &subs,
        "getPlan(uint256)(string,uint256,bool)",
        "1",
        "--rpc-url",
        &anvil.url,
    ]);
    assert_eq!(
        plan.lines().collect::<Vec<_>>(),
        ["\"basic\"", "150", "true"]
    );

    // Price 0 never reaches the chain.
    let o = bhctl(
        &[
            "plan",
            "create",
            "free",
            "0",
            "--config",
            cfg.to_str().unwrap(),
        ],
        None,
    );
    fails_with(&o, "price per day must be above 0");
    // Another key is not the owner: the custom error is named.
    let other = dir.path().join("other.key");
    write_key(&other, OTHER_KEY, 0o600);
    let other_cfg = dir.path().join("other.yaml");
    std::fs::write(
        &other_cfg,
        std::fs::read_to_string(&cfg)
            .unwrap()
            .replace(key.to_str().unwrap(), other.to_str().unwrap()),
    )
    .unwrap();
    let o = bhctl(
        &[
            "plan",
            "create",
            "x",
            "1",
            "--config",
            other_cfg.to_str().unwrap(),
        ],
        None,
    );
    fails_with(
        &o,
        "createPlan would revert with OwnableUnauthorizedAccount",
    );

    // A buyer with only cast: mint test stablecoin, approve, buy 30 days of plan 1
    // with a real ECIES payload to the server key.
    let server_pub = k256::SecretKey::from_slice(&hex::decode(SERVER_KEY).unwrap())
        .unwrap()
        .public_key();
    let payload = user_encrypted::encrypt_signature(&server_pub, &signature_of(BUYER_KEY)).unwrap();
    let send = |args: &[&str]| {
        let mut a = vec!["send", "--rpc-url", &anvil.url, "--private-key", BUYER_KEY];
        a.extend_from_slice(args);
        cast(&a)
    };
    send(&[&usdc, "mint(address,uint256)", BUYER_ADDR, "1000000000"]);
    send(&[&usdc, "approve(address,uint256)", &subs, "1000000000"]);
    send(&[
        &subs,
        "buySubscription(uint256,uint256,uint256,bytes)",
        "1",
        "30",
        "1",
        &format!("0x{}", hex::encode(&payload)),
    ]);
    let sub = cast(&[
        "call",
        &subs,
        "getSubscription(uint256)(uint256,address,uint256,bool,bool)",
        "1",
        "--rpc-url",
        &anvil.url,
    ]);
    let fields: Vec<&str> = sub.lines().collect();
    assert_eq!(fields[0], "1", "{sub}");
    assert_eq!(fields[1], BUYER_ADDR, "{sub}");
    assert_eq!(fields[3], "true", "{sub}");
    // 150 cents × 30 days in a 6-decimal token.
    let paid = cast(&[
        "call",
        &usdc,
        "balanceOf(address)(uint256)",
        &subs,
        "--rpc-url",
        &anvil.url,
    ]);
    assert!(paid.starts_with("45000000"), "{paid}");

    // --force deploys a fresh pair and rewrites the same keys in place.
    let d2 = deploy(&cfg, &["--force"]);
    assert_ne!(d2["subscriptionsContract"].as_str().unwrap(), subs);
    assert!(d2["stablecoin"].is_null());
    let text2 = std::fs::read_to_string(&cfg).unwrap();
    assert_eq!(text2.matches("subscriptionsContract").count(), 1, "{text2}");
    assert!(text2.contains(d2["nftContract"].as_str().unwrap()));
}

#[test]
fn nft_decrypt_with_a_key_file_or_a_signature() {
    if !tools() {
        return;
    }
    let anvil = Anvil::start(18661);
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("server.key");
    write_key(&key, SERVER_KEY, 0o600);
    let cfg = write_config(dir.path(), &anvil.url, 31337, &key);
    let d = deploy(&cfg, &[]);
    let nft = d["nftContract"].as_str().unwrap().to_owned();

    // The server mints token 0 to the holder, encrypted under the holder's
    // signature of the public secret.
    let details = ConnectionDetails {
        hostname: "blockhost-001.example.net".into(),
        port: 2222,
        username: "alice".into(),
    };
    let payload = nft_payload::encrypt(&signature_of(HOLDER_KEY), &details).unwrap();
    cast(&[
        "send",
        "--rpc-url",
        &anvil.url,
        "--private-key",
        SERVER_KEY,
        &nft,
        "mint(address,bytes)",
        HOLDER_ADDR,
        &format!("0x{}", hex::encode(&payload)),
    ]);

    let base = [
        "nft",
        "decrypt",
        "--token-id",
        "0",
        "--rpc-url",
        &anvil.url,
        "--nft-contract",
        &nft,
    ];
    let with = |extra: &[&str], stdin: Option<&str>| {
        let mut a = base.to_vec();
        a.extend_from_slice(extra);
        bhctl(&a, stdin)
    };

    // A key file.
    let holder_key = dir.path().join("holder.key");
    write_key(&holder_key, HOLDER_KEY, 0o600);
    let o = with(&["--key-file", holder_key.to_str().unwrap()], None);
    let text = ok(&o);
    assert!(
        text.contains("hostname  blockhost-001.example.net"),
        "{text}"
    );
    assert!(
        text.contains("ssh       ssh -p 2222 alice@blockhost-001.example.net"),
        "{text}"
    );
    assert!(!err(&o).contains("warning"), "{}", err(&o));

    // A signature made by an independent signer (cast), from a file, as JSON.
    let sig = cast(&[
        "wallet",
        "sign",
        "--private-key",
        HOLDER_KEY,
        "blockhost-access",
    ]);
    let sig_file = dir.path().join("sig.txt");
    std::fs::write(&sig_file, format!("{sig}\n")).unwrap();
    let o = with(
        &["--signature-file", sig_file.to_str().unwrap(), "-o", "json"],
        None,
    );
    let v: Value = serde_json::from_str(&ok(&o)).unwrap();
    assert_eq!(v["hostname"], "blockhost-001.example.net");
    assert_eq!(v["port"], 2222);
    assert_eq!(v["username"], "alice");
    assert_eq!(v["ssh"], "ssh -p 2222 alice@blockhost-001.example.net");

    // Standard input, with the RPC URL and contract from the configuration.
    let o = bhctl(
        &[
            "nft",
            "decrypt",
            "--token-id",
            "0",
            "--config",
            cfg.to_str().unwrap(),
            "--signature",
            "-",
        ],
        Some(&sig),
    );
    assert!(ok(&o).contains("username  alice"));

    // Another wallet: the clear error, exit 1, and a warning about ownership.
    let other_key = dir.path().join("other.key");
    write_key(&other_key, OTHER_KEY, 0o600);
    let o = with(&["--key-file", other_key.to_str().unwrap()], None);
    fails_with(
        &o,
        "this signature does not decrypt token 0; sign the public secret",
    );
    assert!(err(&o).contains("is owned by 0x7099"), "{}", err(&o));

    // Key files others can read are refused; so are signatures in argv and
    // tokens that do not exist.
    write_key(&holder_key, HOLDER_KEY, 0o644);
    fails_with(
        &with(&["--key-file", holder_key.to_str().unwrap()], None),
        "chmod 600",
    );
    let o = with(&["--signature", &sig], None);
    assert_ne!(o.status.code(), Some(0));
    assert!(err(&o).contains("standard input"), "{}", err(&o));
    let mut a = base.to_vec();
    a[3] = "7";
    a.extend_from_slice(&["--signature-file", sig_file.to_str().unwrap()]);
    fails_with(&bhctl(&a, None), "token 7 does not exist");
}

#[test]
fn bad_inputs_give_clear_messages() {
    if !tools() {
        return;
    }
    let anvil = Anvil::start(18662);
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("server.key");
    let deploy_with = |cfg: &Path| {
        bhctl(
            &["chain", "deploy", "--config", cfg.to_str().unwrap()],
            None,
        )
    };

    // Missing key file.
    let cfg = write_config(dir.path(), &anvil.url, 31337, &key);
    fails_with(&deploy_with(&cfg), "cannot read the server key file");
    // A key file others can read.
    write_key(&key, SERVER_KEY, 0o644);
    fails_with(&deploy_with(&cfg), "chmod 600");
    write_key(&key, SERVER_KEY, 0o600);
    // Nothing listens.
    let cfg = write_config(dir.path(), "http://127.0.0.1:1", 31337, &key);
    fails_with(
        &deploy_with(&cfg),
        "cannot reach the chain at http://127.0.0.1:1",
    );
    // Another chain.
    let cfg = write_config(dir.path(), &anvil.url, 1, &key);
    fails_with(
        &deploy_with(&cfg),
        &format!(
            "the RPC endpoint {} serves chain id 31337, not 1",
            anvil.url
        ),
    );
    let cfg = write_config(dir.path(), &anvil.url, 31337, &key);
    // A payment token that is not a contract is refused before deploying.
    let o = bhctl(
        &[
            "chain",
            "deploy",
            "--config",
            cfg.to_str().unwrap(),
            "--stablecoin",
            "0x00000000000000000000000000000000000000aa",
        ],
        None,
    );
    fails_with(
        &o,
        "there is no contract at 0x00000000000000000000000000000000000000AA",
    );
    assert!(
        !std::fs::read_to_string(&cfg)
            .unwrap()
            .contains("nftContract")
    );
    // Bad plans never reach the chain.
    for (name, price, msg) in [
        ("basic", "0", "above 0"),
        ("", "100", "name is empty"),
        (&*"x".repeat(65), "100", "at most 64"),
    ] {
        let o = bhctl(
            &[
                "plan",
                "create",
                name,
                price,
                "--config",
                cfg.to_str().unwrap(),
            ],
            None,
        );
        fails_with(&o, msg);
    }
    // Before deploying there is no contract to create plans on.
    let o = bhctl(
        &[
            "plan",
            "create",
            "basic",
            "100",
            "--config",
            cfg.to_str().unwrap(),
        ],
        None,
    );
    fails_with(&o, "bhctl chain deploy");
    // No chain section at all.
    let bare = dir.path().join("bare.yaml");
    std::fs::write(&bare, "store: /tmp/x.redb\n").unwrap();
    fails_with(&deploy_with(&bare), "has no `chain` section");

    // blockhostd refuses to watch a chain the configuration names no contracts of.
    let mut daemon = Command::new(env!("CARGO_BIN_EXE_blockhostd"))
        .arg("--config")
        .arg(&cfg)
        .arg("--socket")
        .arg(dir.path().join("api.sock"))
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = daemon.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = daemon.kill();
            panic!("blockhostd kept running without contracts");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(!status.success());
    let o = daemon.wait_with_output().unwrap();
    assert!(
        err(&o).contains("chain.subscriptionsContract and chain.nftContract must both be set"),
        "{}",
        err(&o)
    );
}
