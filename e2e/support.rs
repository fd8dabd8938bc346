//! The whole-system rig: a real anvil, a real fakepve (HTTPS, pinned
//! certificate), a real `blockhostd` driving both, `bhctl` for the operator's
//! side, and foundry's `cast` plus npm `eciesjs` as the independent user's
//! client — nothing in the user's path goes through our Rust code.
//!
//! Addresses: anvil on 127.0.0.1:1868x, fakepve on 127.0.13.x (other suites
//! use 127.0.10.x/127.0.11.x/127.0.12.x), so suites can run side by side.
//! Keys: anvil's well-known dev accounts only. The server key is dev key 2
//! (it signs mints and owns the contracts, and decrypts purchase payloads).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)] // test helpers: a panic is a failure report

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::AtomicU32;
use std::time::{Duration, Instant};

use k256::elliptic_curve::sec1::ToEncodedPoint;
use serde_json::{Value, json};

use crate::chain_support::{self, Anvil, SERVER_KEY};
use crate::common::{Daemon, repo_root, stderr, stdout};
use crate::proxmox_support::{FakePve, FakePveExt, Tuning, write_config};

/// The server wallet (anvil dev account 2; its key is `SERVER_KEY`).
pub const SERVER: &str = "0x3c44cdddb6a900fa2b585dd299e03d12fa4293bc";
/// The buyer (anvil dev account 4).
pub const USER: &str = "0x15d34aaf54267db7d7c367839aaf71a00a2c6a65";
/// Who the NFT is given to (anvil dev account 5).
pub const FRIEND: &str = "0x9965507d1a55bcc2695c58ba16fb37d819b0a4dc";
/// The operator's public secret (the default).
pub const SECRET: &str = "blockhost-access";

static NEXT_PVE_HOST: AtomicU32 = AtomicU32::new(1);

/// Everything the tests need is installed (`scripts/setup.sh`); without
/// `BLOCKHOST_REQUIRE_TOOLS=1` a missing tool skips with a note.
pub fn tools_available() -> bool {
    if !chain_support::tools_available() {
        return false;
    }
    let missing: Vec<PathBuf> = [
        tool("cast"),
        repo_root().join("node_modules/eciesjs/package.json"),
        repo_root().join(".venv/bin/python"),
    ]
    .into_iter()
    .filter(|p| !p.exists())
    .collect();
    if missing.is_empty() {
        return true;
    }
    assert!(
        std::env::var("BLOCKHOST_REQUIRE_TOOLS").as_deref() != Ok("1"),
        "BLOCKHOST_REQUIRE_TOOLS=1 but missing: {missing:?}; run scripts/setup.sh"
    );
    eprintln!("skipping: missing {missing:?}; run scripts/setup.sh");
    false
}

fn tool(name: &str) -> PathBuf {
    repo_root().join(format!(
        "node_modules/@foundry-rs/{name}-linux-amd64/bin/{name}"
    ))
}

/// Deployed contract addresses.
#[derive(Debug, Clone)]
pub struct Contracts {
    pub subs: String,
    pub nft: String,
    pub usdc: String,
    pub block: u64,
}

/// The rig.
pub struct Rig {
    pub dir: tempfile::TempDir,
    pub anvil: Anvil,
    pub pve: std::sync::Mutex<FakePve>,
    pub daemon: Option<Daemon>,
    pub c: Contracts,
    /// fakepve's `host:port` when the configuration was redirected (benchmarks).
    pub upstream: Option<String>,
    /// Appended to every timeout message (the real-guest suite names its serial logs).
    pub failure_note: String,
}

impl Rig {
    /// anvil on `port`, fakepve, contracts deployed and owned by the server
    /// wallet, blockhostd running with `confirmations`.
    pub async fn start(port: u16, confirmations: u64) -> Rig {
        Self::start_with(port, confirmations, |cfg, _| (cfg, String::new())).await
    }

    /// [`Rig::start`], with `edit` rewriting the configuration text before the
    /// daemon starts (given the text and fakepve's URL; returns the new text and
    /// an upstream address kept in [`Rig::upstream`] when not empty).
    pub async fn start_with(
        port: u16,
        confirmations: u64,
        edit: impl FnOnce(String, &str) -> (String, String),
    ) -> Rig {
        let mut pve = FakePve::start(&repo_root(), "127.0.13", &NEXT_PVE_HOST, &[], Stdio::null);
        pve.auto_agent();
        let tuning = Tuning {
            concurrency: 4,
            ..Tuning::default()
        };
        Self::start_on(port, confirmations, pve, &tuning, edit).await
    }

    /// [`Rig::start_with`] on a Proxmox stand-in the caller started (the
    /// real-guest suite's), with its own `proxmox:` tuning.
    pub async fn start_on(
        port: u16,
        confirmations: u64,
        pve: FakePve,
        tuning: &Tuning,
        edit: impl FnOnce(String, &str) -> (String, String),
    ) -> Rig {
        let anvil = Anvil::start(port);
        let dir = tempfile::tempdir().unwrap();
        let cfg = write_config(dir.path(), &pve, tuning);
        let key = dir.path().join("server.key");
        std::fs::write(&key, format!("0x{SERVER_KEY}\n")).unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        let text = std::fs::read_to_string(&cfg).unwrap().replace(
            "  resyncSecs: 1\n",
            "  resyncSecs: 1\n  gracePeriodDays: 1\n",
        );
        let text = format!(
            "{text}chain:\n  chainId: 31337\n  rpcUrls: [\"{url}\"]\n  confirmations: {confirmations}\n  pollIntervalMs: 20\n  serverKeyFile: {key}\n  followChainTime: true\n",
            url = anvil.url,
            key = key.display(),
        );
        let (text, upstream) = edit(text, &pve.url);
        std::fs::write(&cfg, text).unwrap();
        // The operator deploys with the server key; bhctl writes the addresses
        // into the configuration blockhostd then reads.
        let o = bhctl_config(
            &cfg,
            &["chain", "deploy", "--dev-stablecoin", "-o", "json"],
            None,
        );
        assert!(o.status.success(), "chain deploy: {}", stderr(&o));
        let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
        let c = Contracts {
            subs: v["subscriptionsContract"].as_str().unwrap().to_lowercase(),
            nft: v["nftContract"].as_str().unwrap().to_lowercase(),
            usdc: v["stablecoin"].as_str().unwrap().to_lowercase(),
            block: v["deploymentBlock"].as_u64().unwrap(),
        };
        let daemon = Some(Daemon::start(dir.path()));
        Rig {
            dir,
            anvil,
            daemon,
            c,
            pve: std::sync::Mutex::new(pve),
            upstream: (!upstream.is_empty()).then_some(upstream),
            failure_note: String::new(),
        }
    }

    pub fn d(&self) -> &Daemon {
        self.daemon.as_ref().expect("daemon running")
    }

    /// SIGKILLs the daemon.
    pub fn kill(&mut self) {
        if let Some(d) = self.daemon.take() {
            d.kill9();
        }
    }

    /// Starts the daemon again on the same store.
    pub fn restart(&mut self) {
        assert!(self.daemon.is_none());
        self.daemon = Some(Daemon::start(self.dir.path()));
    }

    /// Runs `cast` against the rig's anvil; panics with its stderr on failure.
    pub fn cast(&self, args: &[&str]) -> String {
        let mut cmd = Command::new(tool("cast"));
        cmd.args(args);
        if matches!(args.first(), Some(&("send" | "call" | "rpc" | "receipt"))) {
            cmd.args(["--rpc-url", &self.anvil.url]);
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "cast {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// `cast send` from an unlocked dev account; asserts the receipt's success.
    pub fn send(&self, from: &str, to: &str, sig: &str, args: &[&str]) -> Value {
        let mut a = vec!["send", "--unlocked", "--from", from, "--json", to, sig];
        a.extend_from_slice(args);
        let r: Value = serde_json::from_str(&self.cast(&a)).unwrap();
        assert_eq!(r["status"], json!("0x1"), "{sig} reverted: {r}");
        r
    }

    /// `bhctl --config <the rig's config> …`; panics with stderr on failure.
    pub fn bhctl_cfg(&self, args: &[&str], stdin: Option<&str>) -> String {
        let o = bhctl_config(&self.dir.path().join("blockhost.yaml"), args, stdin);
        assert!(o.status.success(), "bhctl {args:?}: {}", stderr(&o));
        stdout(&o)
    }

    /// The operator creates a plan with `bhctl plan create`; returns its id.
    pub fn create_plan(&self, name: &str, cents: u64) -> u64 {
        let out = self.bhctl_cfg(
            &["plan", "create", name, &cents.to_string(), "-o", "json"],
            None,
        );
        let v: Value = serde_json::from_str(&out).unwrap();
        v["planId"]
            .as_u64()
            .unwrap_or_else(|| panic!("plan id in {out}"))
    }

    /// The user decrypts their NFT with `bhctl nft decrypt`, the signature
    /// (made by anvil's `personal_sign`) on standard input.
    pub fn decrypt(&self, who: &str, token: u64) -> Result<Value, String> {
        let sig = self.sign_secret(who);
        let o = bhctl_config(
            &self.dir.path().join("blockhost.yaml"),
            &[
                "nft",
                "decrypt",
                "--token-id",
                &token.to_string(),
                "--signature",
                "-",
                "-o",
                "json",
            ],
            Some(&sig),
        );
        if o.status.success() {
            Ok(serde_json::from_str(&stdout(&o)).unwrap())
        } else {
            Err(stderr(&o))
        }
    }

    /// Funds `who` with the mock stablecoin and approves the subscriptions
    /// contract, through cast.
    pub fn fund(&self, who: &str) {
        let amount = "1000000000000"; // 1,000,000 USDC (6 decimals)
        self.send(who, &self.c.usdc, "mint(address,uint256)", &[who, amount]);
        self.send(
            who,
            &self.c.usdc,
            "approve(address,uint256)",
            &[&self.c.subs, amount],
        );
    }

    /// The user's `personal_sign` of the public secret (anvil signs for its
    /// unlocked dev accounts), as `0x` + 130 hex digits.
    pub fn sign_secret(&self, who: &str) -> String {
        let msg = format!("0x{}", hex::encode(SECRET));
        let out = self.cast(&["rpc", "personal_sign", &msg, who]);
        out.trim_matches('"').to_owned()
    }

    /// Buys `days` of plan 1 through the original signature with an npm
    /// eciesjs payload; returns the receipt.
    pub fn buy(&self, who: &str, days: u64) -> Value {
        let sig = self.sign_secret(who);
        let payload = eciesjs_encrypt(&server_public_hex(), sig.as_bytes());
        self.send(
            who,
            &self.c.subs,
            "buySubscription(uint256,uint256,uint256,bytes)",
            &[
                "1",
                &days.to_string(),
                "1",
                &format!("0x{}", hex::encode(payload)),
            ],
        )
    }

    /// Like [`Rig::buy`], without waiting for a receipt (automine off);
    /// returns the transaction hash. Sent as `eth_sendTransaction` so anvil
    /// assigns the nonce from its pool (cast would reuse the mined nonce).
    pub fn buy_pending(&self, who: &str, days: u64) -> String {
        let tx = self.prepare_buy(who, days);
        self.cast(&["rpc", "eth_sendTransaction", &tx.to_string()])
            .trim_matches('"')
            .to_owned()
    }

    /// A purchase transaction ready for `eth_sendTransaction` (signature and
    /// eciesjs payload made now, so sending it later measures only the chain
    /// and the daemon).
    pub fn prepare_buy(&self, who: &str, days: u64) -> Value {
        let sig = self.sign_secret(who);
        let payload = eciesjs_encrypt(&server_public_hex(), sig.as_bytes());
        let data = self.cast(&[
            "calldata",
            "buySubscription(uint256,uint256,uint256,bytes)",
            "1",
            &days.to_string(),
            "1",
            &format!("0x{}", hex::encode(payload)),
        ]);
        json!({"from": who, "to": self.c.subs, "data": data, "gas": "0x1000000"})
    }

    /// Sends a prepared transaction over JSON-RPC (no process start in the
    /// measured path); anvil mines it before answering.
    pub async fn send_prepared(&self, tx: &Value) -> Value {
        self.anvil.rpc("eth_sendTransaction", json!([tx])).await
    }

    /// Hashes of `who`'s transactions waiting in anvil's mempool, by nonce.
    pub fn pending_from(&self, who: &str) -> Vec<String> {
        let pool: Value = serde_json::from_str(&self.cast(&["rpc", "txpool_content"])).unwrap();
        let mut out: Vec<(u64, String)> = Vec::new();
        for (addr, by_nonce) in pool["pending"].as_object().into_iter().flatten() {
            if !addr.eq_ignore_ascii_case(who) {
                continue;
            }
            for (nonce, tx) in by_nonce.as_object().into_iter().flatten() {
                out.push((
                    nonce.parse().unwrap_or(0),
                    tx["hash"].as_str().unwrap().to_owned(),
                ));
            }
        }
        out.sort();
        out.into_iter().map(|(_, h)| h).collect()
    }

    /// Moves the chain's clock and mines a block.
    pub fn travel(&self, secs: u64) {
        self.cast(&["rpc", "evm_increaseTime", &secs.to_string()]);
        self.cast(&["rpc", "evm_mine"]);
    }

    pub fn mine(&self, n: u64) {
        self.cast(&["rpc", "anvil_mine", &n.to_string()]);
    }

    /// `ownerOf(token)` through cast.
    pub fn owner_of(&self, token: u64) -> String {
        self.cast(&[
            "call",
            &self.c.nft,
            "ownerOf(uint256)(address)",
            &token.to_string(),
        ])
        .to_lowercase()
    }

    /// `totalSupply()` through cast.
    pub fn total_supply(&self) -> u64 {
        let s = self.cast(&["call", &self.c.nft, "totalSupply()(uint256)"]);
        s.split_whitespace().next().unwrap().parse().unwrap()
    }

    /// `getUserEncrypted(token)` through cast.
    pub fn user_encrypted(&self, token: u64) -> Vec<u8> {
        let s = self.cast(&[
            "call",
            &self.c.nft,
            "getUserEncrypted(uint256)(bytes)",
            &token.to_string(),
        ]);
        hex::decode(s.trim_start_matches("0x")).unwrap()
    }

    /// `bhctl get KIND -o json` items.
    pub fn items(&self, what: &str) -> Vec<Value> {
        let o = self.d().bhctl(&["get", what, "-o", "json"]);
        assert!(o.status.success(), "get {what}: {}", stderr(&o));
        let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
        v["items"].as_array().unwrap().clone()
    }

    pub fn item(&self, what: &str, name: &str) -> Option<Value> {
        self.items(what)
            .into_iter()
            .find(|i| i["metadata"]["name"] == json!(name))
    }

    /// Polls `check` (every 50 ms, at most `secs`); on a timeout panics with
    /// the last state and the daemon's log.
    pub fn wait<T>(
        &self,
        secs: u64,
        what: &str,
        mut check: impl FnMut() -> Result<T, String>,
    ) -> T {
        let deadline = Instant::now() + Duration::from_secs(secs);
        let mut last = String::new();
        while Instant::now() < deadline {
            match check() {
                Ok(v) => return v,
                Err(e) => last = e,
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let log = self.daemon.as_ref().map(|d| d.log()).unwrap_or_default();
        let tail: String = log
            .lines()
            .rev()
            .take(60)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n");
        panic!(
            "timed out after {secs}s waiting for {what}; last seen: {last}\n--- daemon log (tail) ---\n{tail}{}",
            self.failure_note
        );
    }

    /// Waits for a VM's phase.
    pub fn wait_phase(&self, name: &str, phase: &str) -> Value {
        self.wait(60, &format!("{name} {phase}"), || {
            match self.item("vms", name) {
                Some(v) if v["status"]["phase"] == json!(phase) => Ok(v),
                Some(v) => Err(format!(
                    "phase {} lastError {}",
                    v["status"]["phase"], v["status"]["lastError"]
                )),
                None => Err("absent".into()),
            }
        })
    }

    /// Waits for the token id on a subscription.
    pub fn wait_token(&self, name: &str) -> u64 {
        self.wait(60, &format!("{name}'s NFT"), || {
            match self.item("subscriptions", name) {
                Some(s) => s["status"]["nftTokenId"]
                    .as_u64()
                    .ok_or_else(|| format!("status {}", s["status"])),
                None => Err("no subscription".into()),
            }
        })
    }

    /// The VM named `name` in fakepve.
    pub fn pve_vm(&self, name: &str) -> Option<Value> {
        self.pve.lock().unwrap().vm_named(name)
    }

    /// Every (non-template) VM in fakepve.
    pub fn pve_vms(&self) -> Vec<Value> {
        self.pve.lock().unwrap().vms()
    }

    /// Fails if fakepve ever refused a parameter (HTTP 400).
    pub fn assert_pve_accepted_everything(&self) {
        self.pve.lock().unwrap().assert_no_validation_errors();
    }

    /// Access files written into a VM through the guest agent, oldest first.
    pub fn access_files(&self, vmid: u64) -> Vec<String> {
        let reqs = self
            .pve
            .lock()
            .unwrap()
            .cmd(json!({"op": "agent_requests", "vmid": vmid}));
        reqs.as_array()
            .unwrap()
            .iter()
            .filter(|r| r[0] == json!("file-write"))
            .map(|r| decode_file_write(&r[1]))
            .collect()
    }
}

/// The text of a guest-agent `file-write` request as fakepve recorded it
/// (the content field when present, else the whole request).
fn decode_file_write(args: &Value) -> String {
    args["content"]
        .as_str()
        .map_or_else(|| args.to_string(), str::to_owned)
}

/// Runs `bhctl --config CFG …` (operator commands that talk to the chain).
pub fn bhctl_config(cfg: &Path, args: &[&str], stdin: Option<&str>) -> std::process::Output {
    let mut cmd = Command::new(crate::common::bhctl_bin());
    cmd.args(args)
        .arg("--config")
        .arg(cfg)
        .env_remove("BLOCKHOST_CONFIG")
        .env_remove("RUST_LOG");
    crate::common::output_with_stdin(&mut cmd, stdin)
}

/// The server's public key, uncompressed, as hex (what a signup page embeds).
pub fn server_public_hex() -> String {
    let pk = chain_support::server_key().public_key();
    hex::encode(pk.to_encoded_point(false).as_bytes())
}

/// npm eciesjs encrypts `plaintext` to `public_key_hex`, as a browser would.
pub fn eciesjs_encrypt(public_key_hex: &str, plaintext: &[u8]) -> Vec<u8> {
    crate::eciesjs::eciesjs_encrypt(&repo_root(), public_key_hex, plaintext)
}

/// Writes `text` to a 0600 file in `dir`.
pub fn secret_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    p
}
