//! Helpers for the chain watcher's tests on a real anvil: start it on a loopback
//! port, deploy the contracts from the committed artifacts (the bindings'
//! bytecode), buy subscriptions through the original signatures, and run the
//! watcher in-process on a temporary store.
//!
//! Transactions go through anvil's unlocked dev accounts with
//! `eth_sendTransaction` (no key handling; anvil mines each one at once). Only
//! anvil's well-known dev keys appear here.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)] // test helpers: a panic is a failure report

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use alloy_primitives::{Address, Bytes, U256};
use alloy_sol_types::{SolCall, SolConstructor};
use blockhost_chain::bindings::{AccessCredentialNFT, BlockhostSubscriptions, MockERC20};
use blockhost_chain::rpc::RpcClient;
use blockhost_chain::user_encrypted;
use blockhost_controller::metrics::Metrics;
use blockhost_controller::store::{Store, StoreOptions};
use blockhost_controller::watcher::follow::{WatchConfig, Watcher};
use blockhost_controller::watcher::mapping::Mapper;
use blockhost_crd::config::PlanDefaults;
use blockhost_crd::eip191;
use k256::SecretKey;
use k256::ecdsa::SigningKey;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

/// anvil dev account 0: the buyer.
pub const BUYER: &str = "0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266";
pub const BUYER_KEY: &str = "ac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80";
/// anvil dev account 1: the server wallet, owner of both contracts.
pub const OWNER: &str = "0x70997970c51812dc3a010c7d01b50e0d17dc79c8";
/// anvil dev account 3: someone an NFT is given to.
pub const OTHER: &str = "0x90f79bf6eb2c4f870365e785982e1f101e93b906";
/// anvil dev key 2 stands in for the ECIES server key.
pub const SERVER_KEY: &str = "5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a";

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn anvil_bin() -> PathBuf {
    repo_root().join("node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil")
}

/// Whether anvil is installed; with `BLOCKHOST_REQUIRE_TOOLS=1`, its absence fails
/// the test instead of skipping it.
pub fn tools_available() -> bool {
    if anvil_bin().exists() {
        return true;
    }
    assert!(
        std::env::var("BLOCKHOST_REQUIRE_TOOLS").as_deref() != Ok("1"),
        "BLOCKHOST_REQUIRE_TOOLS=1 but anvil is missing at {}; run scripts/setup.sh",
        anvil_bin().display()
    );
    eprintln!(
        "skipping: anvil missing at {}; run `npm ci` at the repo root",
        anvil_bin().display()
    );
    false
}

/// A running anvil on 127.0.0.1:`port`, killed when dropped.
pub struct Anvil {
    child: Child,
    pub port: u16,
    pub url: String,
    rpc: RpcClient,
}

impl Drop for Anvil {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn hex0x(b: &[u8]) -> String {
    format!("0x{}", hex::encode(b))
}

pub fn addr(s: &str) -> Address {
    s.parse().unwrap()
}

pub fn q(v: &Value) -> u64 {
    u64::from_str_radix(v.as_str().unwrap().trim_start_matches("0x"), 16).unwrap()
}

/// Deployed contracts.
#[derive(Debug, Clone, Copy)]
pub struct Deployed {
    pub usdc: Address,
    pub subs: Address,
    pub nft: Address,
    /// Block of the first deployment.
    pub block: u64,
}

impl Anvil {
    pub fn start(port: u16) -> Anvil {
        Self::start_on("127.0.0.1", port)
    }

    /// Starts anvil on `host:port` (a loopback address of the test's own range).
    pub fn start_on(host: &str, port: u16) -> Anvil {
        Self::start_chain(host, port, 31337)
    }

    /// Starts anvil on `host:port` serving chain id `chain_id`.
    pub fn start_chain(host: &str, port: u16, chain_id: u64) -> Anvil {
        let chain_id = chain_id.to_string();
        let child = Command::new(anvil_bin())
            .args([
                "--host",
                host,
                "--port",
                &port.to_string(),
                "--silent",
                "--chain-id",
                &chain_id,
                // Old states are dropped, not written to ~/.foundry/anvil/tmp:
                // the 100,000-block benchmark once wrote 36 GB there and filled
                // the disk. No test reads state at old blocks.
                "--max-persisted-states",
                "0",
            ])
            .stdout(Stdio::null())
            .spawn()
            .expect("start anvil");
        let url = format!("http://{host}:{port}");
        let anvil = Anvil {
            child,
            port,
            rpc: RpcClient::new(vec![url.clone()]).unwrap(),
            url,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect((host, port)).is_err() {
            assert!(Instant::now() < deadline, "anvil did not listen on {port}");
            std::thread::sleep(Duration::from_millis(30));
        }
        anvil
    }

    pub async fn rpc(&self, method: &'static str, params: Value) -> Value {
        self.rpc
            .call(method, params)
            .await
            .unwrap_or_else(|e| panic!("{method}: {e:?}"))
    }

    pub async fn head(&self) -> u64 {
        q(&self.rpc("eth_blockNumber", json!([])).await)
    }

    /// Mines `n` empty blocks.
    pub async fn mine(&self, n: u64) {
        self.rpc("anvil_mine", json!([format!("0x{n:x}")])).await;
    }

    /// Sends a transaction from an unlocked dev account and returns its receipt
    /// (asserting success).
    pub async fn send(&self, from: &str, to: Option<Address>, data: &[u8]) -> Value {
        let mut tx = json!({"from": from, "data": hex0x(data), "gas": "0x1c9c380"});
        if let Some(to) = to {
            tx["to"] = json!(to.to_string());
        }
        let hash = self.rpc("eth_sendTransaction", json!([tx])).await;
        // anvil mines at once, but the receipt can trail the hash by a moment.
        let mut receipt = serde_json::Value::Null;
        for _ in 0..500 {
            receipt = self
                .rpc("eth_getTransactionReceipt", json!([hash.clone()]))
                .await;
            if !receipt.is_null() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        assert_eq!(receipt["status"], "0x1", "transaction reverted: {receipt}");
        receipt
    }

    pub async fn deploy(&self) -> Deployed {
        let block = self.head().await + 1;
        let usdc_args = MockERC20::constructorCall {
            name_: "USD Coin".into(),
            symbol_: "USDC".into(),
            decimals_: 6,
        }
        .abi_encode();
        let r = self
            .send(
                OWNER,
                None,
                &[MockERC20::BYTECODE.as_ref(), &usdc_args].concat(),
            )
            .await;
        let usdc = addr(r["contractAddress"].as_str().unwrap());
        let r = self
            .send(OWNER, None, &BlockhostSubscriptions::BYTECODE)
            .await;
        let subs = addr(r["contractAddress"].as_str().unwrap());
        let r = self.send(OWNER, None, &AccessCredentialNFT::BYTECODE).await;
        let nft = addr(r["contractAddress"].as_str().unwrap());
        self.send(
            OWNER,
            Some(subs),
            &BlockhostSubscriptions::setPrimaryStablecoinCall { stablecoin: usdc }.abi_encode(),
        )
        .await;
        // The buyer gets a lot of test stablecoin and approves it once.
        let amount = U256::from(10u64).pow(U256::from(30u64));
        self.send(
            BUYER,
            Some(usdc),
            &MockERC20::mintCall {
                to: addr(BUYER),
                amount,
            }
            .abi_encode(),
        )
        .await;
        self.send(
            BUYER,
            Some(usdc),
            &MockERC20::approveCall {
                spender: subs,
                value: amount,
            }
            .abi_encode(),
        )
        .await;
        Deployed {
            usdc,
            subs,
            nft,
            block,
        }
    }

    pub async fn create_plan(&self, d: &Deployed, name: &str, cents: u64) -> Value {
        self.send(
            OWNER,
            Some(d.subs),
            &BlockhostSubscriptions::createPlanCall {
                name: name.into(),
                pricePerDayUsdCents: U256::from(cents),
            }
            .abi_encode(),
        )
        .await
    }

    pub async fn buy(&self, d: &Deployed, plan: u64, days: u64, payload: Vec<u8>) -> Value {
        self.send(
            BUYER,
            Some(d.subs),
            &BlockhostSubscriptions::buySubscriptionCall {
                planId: U256::from(plan),
                days_: U256::from(days),
                paymentMethodId: U256::from(1u64),
                userEncrypted: Bytes::from(payload),
            }
            .abi_encode(),
        )
        .await
    }

    pub async fn extend(&self, d: &Deployed, id: u64, days: u64) -> Value {
        self.send(
            BUYER,
            Some(d.subs),
            &BlockhostSubscriptions::extendSubscriptionCall {
                subscriptionId: U256::from(id),
                days_: U256::from(days),
                paymentMethodId: U256::from(1u64),
            }
            .abi_encode(),
        )
        .await
    }

    pub async fn cancel(&self, d: &Deployed, id: u64) -> Value {
        self.send(
            OWNER,
            Some(d.subs),
            &BlockhostSubscriptions::cancelSubscriptionCall {
                subscriptionId: U256::from(id),
            }
            .abi_encode(),
        )
        .await
    }

    /// Reads `getSubscription(id).expiresAt`.
    pub async fn expires_at(&self, d: &Deployed, id: u64) -> u64 {
        let out = self
            .rpc("eth_call", json!([{"to": d.subs.to_string(), "data": hex0x(&BlockhostSubscriptions::getSubscriptionCall { subscriptionId: U256::from(id) }.abi_encode())}, "latest"]))
            .await;
        let bytes = hex::decode(out.as_str().unwrap().trim_start_matches("0x")).unwrap();
        let r = BlockhostSubscriptions::getSubscriptionCall::abi_decode_returns(&bytes).unwrap();
        u64::try_from(r.expiresAt).unwrap()
    }
}

pub fn server_key() -> SecretKey {
    SecretKey::from_slice(&hex::decode(SERVER_KEY).unwrap()).unwrap()
}

/// What the buyer's signup page sends: their signature of the public secret,
/// ECIES-encrypted to the server key.
pub fn payload() -> Vec<u8> {
    let key = SigningKey::from_slice(&hex::decode(BUYER_KEY).unwrap()).unwrap();
    let sig = eip191::sign(&key, b"blockhost-access").unwrap();
    user_encrypted::encrypt_signature(&server_key().public_key(), &sig).unwrap()
}

pub fn watch_config(
    d: &Deployed,
    from_block: u64,
    confirmations: u64,
    max_range: u64,
) -> WatchConfig {
    WatchConfig {
        scope: format!("31337:{:x}:{:x}", d.subs, d.nft),
        chain_id: 31337,
        subscriptions: d.subs.into_array(),
        nft: d.nft.into_array(),
        deployment_block: from_block,
        confirmations,
        poll: Duration::from_millis(10),
        max_range,
        reorg_window: 4096,
        follow_chain_time: false,
    }
}

pub fn open_store(dir: &std::path::Path) -> Store {
    Store::open(&dir.join("state.redb"), StoreOptions::default()).unwrap()
}

/// A watcher task on `store`, following `urls`; stops when the token is cancelled.
pub fn spawn_watcher(
    store: &Store,
    urls: Vec<String>,
    cfg: WatchConfig,
) -> (CancellationToken, tokio::task::JoinHandle<()>, Arc<Metrics>) {
    spawn_watcher_woken(store, urls, cfg, None)
}

/// [`spawn_watcher`], also stepping whenever `wake` is notified (new heads).
pub fn spawn_watcher_woken(
    store: &Store,
    urls: Vec<String>,
    cfg: WatchConfig,
    wake: Option<Arc<tokio::sync::Notify>>,
) -> (CancellationToken, tokio::task::JoinHandle<()>, Arc<Metrics>) {
    let mapper = Arc::new(Mapper {
        server_key: server_key(),
        public_secret: "blockhost-access".into(),
        plan_defaults: PlanDefaults::default(),
    });
    let metrics = Arc::new(Metrics::new());
    // As the daemon's: only endpoints on the configured chain are used.
    let client = RpcClient::for_chain(urls, cfg.chain_id).unwrap();
    let mut w = Watcher::new(client, store.clone(), mapper, cfg, metrics.clone());
    if let Some(wake) = wake {
        w = w.with_wake(wake);
    }
    let stop = CancellationToken::new();
    let task = tokio::spawn(w.run(stop.clone()));
    (stop, task, metrics)
}

/// A watcher task on `store` reading through `client`, counting into `metrics`.
pub fn spawn_watcher_on(
    store: &Store,
    client: RpcClient,
    cfg: WatchConfig,
    metrics: Arc<Metrics>,
) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let mapper = Arc::new(Mapper {
        server_key: server_key(),
        public_secret: "blockhost-access".into(),
        plan_defaults: PlanDefaults::default(),
    });
    let w = Watcher::new(client, store.clone(), mapper, cfg, metrics);
    let stop = CancellationToken::new();
    let task = tokio::spawn(w.run(stop.clone()));
    (stop, task)
}

/// Polls `f` until it returns `Some`, failing after `secs`.
pub async fn wait_for<T>(secs: u64, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
