//! The minter against a real anvil: the watcher and the minter run in-process on
//! a temporary store; the VM reconciler is played by the test, which marks a VM
//! Running with an address (the Proxmox side is covered by `e2e/`).
//!
//! Crash windows are reproduced with anvil's mempool controls: automine off keeps
//! a mint pending, `anvil_dropTransaction` makes the node forget it (as if the
//! daemon died between storing and broadcasting, or the mempool evicted it), and
//! a transaction of the server wallet itself can take the nonce.
//! Each test has its own anvil on 127.0.0.1:1865x.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod chain_support;

use std::sync::Arc;
use std::time::Duration;

use alloy_primitives::{Address, U256};
use alloy_sol_types::SolCall;
use blockhost_chain::bindings::AccessCredentialNFT as Nft;
use blockhost_chain::nft_payload;
use blockhost_chain::rpc::RpcClient;
use blockhost_chain::wallet::ServerWallet;
use blockhost_controller::metrics::Metrics;
use blockhost_controller::reconcile::mint::{MintConfig, Minter};
use blockhost_controller::store::mint::MintState;
use blockhost_controller::store::{Store, Writer};
use blockhost_crd::eip191;
use blockhost_crd::meta::ConditionStatus;
use blockhost_crd::vm::VmPhase;
use blockhost_crd::{Subscription, VirtualMachine};
use chain_support::*;
use k256::ecdsa::SigningKey;
use serde_json::json;
use tokio_util::sync::CancellationToken;

/// The server wallet's address (anvil dev account 2, whose key stands in for the
/// server key in these tests).
const SERVER: &str = "0x3c44cdddb6a900fa2b585dd299e03d12fa4293bc";

struct Rig {
    anvil: Anvil,
    d: Deployed,
    _dir: tempfile::TempDir,
    store: Store,
    watcher: (CancellationToken, tokio::task::JoinHandle<()>),
}

impl Rig {
    /// anvil with the contracts, the NFT owned by the server wallet, one plan,
    /// one purchase, and the watcher having written its VM.
    async fn new(port: u16) -> Rig {
        Self::new_with(port, true).await
    }

    /// With `own_nft` false the NFT contract stays with its deployer, not the
    /// server wallet (a misconfiguration the minter must explain).
    async fn new_with(port: u16, own_nft: bool) -> Rig {
        let anvil = Anvil::start(port);
        let d = anvil.deploy().await;
        if own_nft {
            anvil
                .send(
                    OWNER,
                    Some(d.nft),
                    &Nft::transferOwnershipCall {
                        newOwner: addr(SERVER),
                    }
                    .abi_encode(),
                )
                .await;
        }
        anvil.create_plan(&d, "basic", 150).await;
        let dir = tempfile::tempdir().unwrap();
        let store = open_store(dir.path());
        let (stop, task, _) = spawn_watcher(
            &store,
            vec![anvil.url.clone()],
            watch_config(&d, d.block, 0, 1000),
        );
        anvil.buy(&d, 1, 30, payload()).await;
        wait_for(10, "VM blockhost-001", || {
            store.get::<VirtualMachine>("blockhost-001").unwrap()
        })
        .await;
        Rig {
            anvil,
            d,
            _dir: dir,
            store,
            watcher: (stop, task),
        }
    }

    /// What the allocator and the reconciler do by the time the VM boots
    /// (each writes its own status fields).
    fn vm_running(&self, name: &str) {
        self.store
            .update_status_as::<VirtualMachine>(Writer::Allocator, name, |v| {
                v.status.addresses.ipv4 = Some("192.0.2.10".into());
                true
            })
            .unwrap();
        self.store
            .update_status::<VirtualMachine>(name, |v| {
                v.status.phase = VmPhase::Running;
                true
            })
            .unwrap();
    }

    fn scope(&self) -> String {
        format!("31337:{:x}:{:x}", self.d.subs, self.d.nft)
    }

    fn config(&self) -> MintConfig {
        let mut c = MintConfig::new(
            self.scope(),
            self.d.nft.into_array(),
            0,
            Duration::from_millis(20),
        );
        c.min_backoff = Duration::from_millis(100);
        c.max_backoff = Duration::from_millis(400);
        c.operator_min_backoff = Duration::from_millis(200);
        c.operator_max_backoff = Duration::from_millis(800);
        c.full_scan = Duration::from_millis(300);
        c.drop_after = Duration::from_millis(300);
        c
    }

    fn minter(&self, cfg: MintConfig) -> (CancellationToken, tokio::task::JoinHandle<()>) {
        let wallet = ServerWallet::new(
            &server_key(),
            31337,
            Arc::new(RpcClient::new(vec![self.anvil.url.clone()]).unwrap()),
        );
        let m = Minter::new(
            wallet,
            self.store.clone(),
            cfg,
            Arc::new(Metrics::new()),
            None,
        );
        let stop = CancellationToken::new();
        let task = tokio::spawn(m.run(stop.clone()));
        (stop, task)
    }

    async fn call(&self, data: Vec<u8>) -> Vec<u8> {
        let out = self
            .anvil
            .rpc(
                "eth_call",
                json!([{"to": self.d.nft.to_string(), "data": hex0x(&data)}, "latest"]),
            )
            .await;
        hex::decode(out.as_str().unwrap().trim_start_matches("0x")).unwrap()
    }

    async fn total_supply(&self) -> u64 {
        let b = self.call(Nft::totalSupplyCall {}.abi_encode()).await;
        u64::try_from(Nft::totalSupplyCall::abi_decode_returns(&b).unwrap()).unwrap()
    }

    async fn owner_of(&self, token: u64) -> Address {
        let b = self
            .call(
                Nft::ownerOfCall {
                    tokenId: U256::from(token),
                }
                .abi_encode(),
            )
            .await;
        Nft::ownerOfCall::abi_decode_returns(&b).unwrap()
    }

    async fn payload_of(&self, token: u64) -> Vec<u8> {
        let b = self
            .call(
                Nft::getUserEncryptedCall {
                    tokenId: U256::from(token),
                }
                .abi_encode(),
            )
            .await;
        Nft::getUserEncryptedCall::abi_decode_returns(&b)
            .unwrap()
            .to_vec()
    }

    async fn token_recorded(&self, name: &str) -> u64 {
        wait_for(20, "token id on the subscription", || {
            self.store
                .get::<Subscription>(name)
                .unwrap()
                .and_then(|s| s.status.nft_token_id)
        })
        .await
    }

    async fn automine(&self, on: bool) {
        self.anvil.rpc("evm_setAutomine", json!([on])).await;
    }

    /// A minter signs and stores a mint (kept pending: automine off), stops,
    /// and the node forgets the transaction. Returns the stored hashes.
    async fn mint_stored_then_lost(&self) -> Vec<String> {
        self.automine(false).await;
        self.vm_running("blockhost-001");
        let (stop, task) = self.minter(self.config());
        let hashes = wait_for(10, "a stored mint", || {
            let h = self.pending_mint_hashes();
            (!h.is_empty()).then_some(h)
        })
        .await;
        stop.cancel();
        task.await.unwrap();
        self.anvil
            .rpc("anvil_dropTransaction", json!([hashes[0].clone()]))
            .await;
        hashes
    }

    fn pending_mint_hashes(&self) -> Vec<String> {
        self.store
            .mint_record(&self.scope(), 1)
            .unwrap()
            .map(|r| r.attempts.into_iter().map(|a| a.hash).collect())
            .unwrap_or_default()
    }
}

fn buyer_signature() -> eip191::Signature {
    let key = SigningKey::from_slice(&hex::decode(BUYER_KEY).unwrap()).unwrap();
    eip191::sign(&key, b"blockhost-access").unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_vm_gets_one_nft_the_buyer_can_decrypt() {
    if !tools_available() {
        return;
    }
    let rig = Rig::new(18650).await;
    let (stop, task) = rig.minter(rig.config());
    // Not running yet: nothing is minted.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(rig.total_supply().await, 0);

    rig.vm_running("blockhost-001");
    let token = rig.token_recorded("blockhost-001").await;
    assert_eq!(token, 0, "ids start at 0");
    assert_eq!(rig.owner_of(token).await, addr(BUYER));
    let vm: VirtualMachine = rig.store.get("blockhost-001").unwrap().unwrap();
    assert_eq!(vm.status.nft_token_id, Some(token));
    let sub: Subscription = rig.store.get("blockhost-001").unwrap().unwrap();
    let cond = sub
        .status
        .conditions
        .iter()
        .find(|c| c.type_ == "NftMinted")
        .unwrap();
    assert_eq!(cond.status, ConditionStatus::True, "{cond:?}");

    // The buyer re-signs the public secret and reads the connection details.
    let details = nft_payload::decrypt(&buyer_signature(), &rig.payload_of(token).await).unwrap();
    assert_eq!(details.hostname, "192.0.2.10");
    assert_eq!(details.port, 22);
    assert_eq!(details.username, vm.spec.guest_user.to_string());

    // Restarts do not mint again; a lost status is written back from the record.
    stop.cancel();
    task.await.unwrap();
    rig.store
        .update_status_as::<Subscription>(Writer::Minter, "blockhost-001", |s| {
            s.status.nft_token_id = None;
            true
        })
        .unwrap();
    let (stop, task) = rig.minter(rig.config());
    assert_eq!(rig.token_recorded("blockhost-001").await, token);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(rig.total_supply().await, 1);
    stop.cancel();
    task.await.unwrap();
    rig.watcher.0.cancel();
}

/// The daemon stored the signed mint and died before the node kept it: the
/// restarted minter sends the same bytes again (same hash) and one NFT results.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_mint_the_node_lost_is_sent_again() {
    if !tools_available() {
        return;
    }
    let rig = Rig::new(18651).await;
    let hashes = rig.mint_stored_then_lost().await;
    assert!(
        rig.anvil
            .rpc("eth_getTransactionByHash", json!([hashes[0].clone()]))
            .await
            .is_null()
    );
    rig.automine(true).await;
    let (stop, task) = rig.minter(rig.config());
    // Automine only mines new arrivals: the re-sent transaction is one.
    let token = rig.token_recorded("blockhost-001").await;
    assert_eq!(rig.total_supply().await, 1);
    let rec = rig.store.mint_record(&rig.scope(), 1).unwrap().unwrap();
    assert_eq!(rec.attempts.len(), 1, "the same transaction, not a new one");
    match rec.state {
        MintState::Minted { transaction, .. } => assert_eq!(transaction, hashes[0]),
        other => panic!("{other:?}"),
    }
    assert_eq!(rig.owner_of(token).await, addr(BUYER));
    stop.cancel();
    task.await.unwrap();
}

/// Another transaction of the server wallet took the stored mint's nonce: none
/// of the stored attempts can be mined, so the minter mints again with a new
/// nonce — still one NFT.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mint_whose_nonce_was_taken_is_made_again() {
    if !tools_available() {
        return;
    }
    let rig = Rig::new(18652).await;
    let hashes = rig.mint_stored_then_lost().await;
    rig.automine(true).await;
    // The operator uses the same key meanwhile (e.g. `bhctl plan create`).
    rig.anvil.send(SERVER, Some(addr(OTHER)), &[]).await;
    let (stop, task) = rig.minter(rig.config());
    let token = rig.token_recorded("blockhost-001").await;
    assert_eq!(rig.total_supply().await, 1);
    let rec = rig.store.mint_record(&rig.scope(), 1).unwrap().unwrap();
    match rec.state {
        MintState::Minted { transaction, .. } => assert_ne!(transaction, hashes[0]),
        other => panic!("{other:?}"),
    }
    assert_eq!(rig.owner_of(token).await, addr(BUYER));
    stop.cancel();
    task.await.unwrap();
}

/// A mint pending too long is replaced with higher fees (same nonce); whichever
/// attempt is mined, exactly one NFT exists and the record names it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_mint_is_replaced_with_higher_fees() {
    if !tools_available() {
        return;
    }
    let rig = Rig::new(18653).await;
    rig.automine(false).await;
    rig.vm_running("blockhost-001");
    let mut cfg = rig.config();
    cfg.bump_after = Duration::from_millis(300);
    let (stop, task) = rig.minter(cfg);
    let hashes = wait_for(20, "a replacement", || {
        let h = rig.pending_mint_hashes();
        (h.len() >= 2).then_some(h)
    })
    .await;
    rig.anvil.mine(1).await;
    let token = rig.token_recorded("blockhost-001").await;
    assert_eq!(rig.total_supply().await, 1);
    let rec = rig.store.mint_record(&rig.scope(), 1).unwrap().unwrap();
    let MintState::Minted { transaction, .. } = rec.state else {
        panic!("not minted");
    };
    assert!(rec.attempts.iter().any(|a| a.hash == transaction));
    let fees: Vec<u128> = rec
        .attempts
        .iter()
        .map(|a| a.max_fee.parse().unwrap())
        .collect();
    assert!(fees.windows(2).all(|w| w[1] > w[0]), "{fees:?}");
    assert!(hashes.len() >= 2);
    assert_eq!(rig.owner_of(token).await, addr(BUYER));
    stop.cancel();
    task.await.unwrap();
}

/// An empty server wallet: a visible condition, no stored transaction; once
/// funded, the mint goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insufficient_funds_is_a_condition_until_funded() {
    if !tools_available() {
        return;
    }
    let rig = Rig::new(18654).await;
    rig.anvil
        .rpc("anvil_setBalance", json!([SERVER, "0x0"]))
        .await;
    rig.vm_running("blockhost-001");
    let (stop, task) = rig.minter(rig.config());
    let cond = wait_for(10, "InsufficientFunds condition", || {
        let s: Subscription = rig.store.get("blockhost-001").unwrap()?;
        s.status
            .conditions
            .into_iter()
            .find(|c| c.type_ == "NftMinted" && c.reason == "InsufficientFunds")
    })
    .await;
    assert_eq!(cond.status, ConditionStatus::False);
    assert!(cond.message.contains("send it funds"), "{}", cond.message);
    assert!(
        rig.store.mint_record(&rig.scope(), 1).unwrap().is_none(),
        "nothing signed without funds"
    );
    let events = rig
        .store
        .events(Some(("Subscription", "blockhost-001")), 100)
        .unwrap();
    assert!(events.iter().any(|e| e.reason == "InsufficientFunds"));

    rig.anvil
        .rpc(
            "anvil_setBalance",
            json!([SERVER, "0x8ac7230489e80000"]), // 10 ETH
        )
        .await;
    let token = rig.token_recorded("blockhost-001").await;
    assert_eq!(rig.owner_of(token).await, addr(BUYER));
    stop.cancel();
    task.await.unwrap();
}

/// A server wallet that does not own the NFT contract: no transaction is
/// signed, and the condition names the problem and the fix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_wallet_without_the_contract_is_told_so() {
    if !tools_available() {
        return;
    }
    let rig = Rig::new_with(18655, false).await;
    rig.vm_running("blockhost-001");
    let (stop, task) = rig.minter(rig.config());
    let cond = wait_for(10, "MintWouldRevert condition", || {
        let s: Subscription = rig.store.get("blockhost-001").unwrap()?;
        s.status
            .conditions
            .into_iter()
            .find(|c| c.type_ == "NftMinted" && c.reason == "MintWouldRevert")
    })
    .await;
    assert!(
        cond.message.contains("OwnableUnauthorizedAccount")
            && cond.message.contains("does not own the NFT contract"),
        "{}",
        cond.message
    );
    assert!(rig.store.mint_record(&rig.scope(), 1).unwrap().is_none());
    assert_eq!(rig.total_supply().await, 0);
    stop.cancel();
    task.await.unwrap();
}
