//! Watcher, mapping and cursor logic against an in-memory chain that can reorg
//! and refuse ranges on command, and a real store in a temporary directory.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use alloy_primitives::{Address, Bytes, LogData, U256};
use alloy_sol_types::SolEvent;
use blockhost_chain::bindings::{AccessCredentialNFT as Nft, BlockhostSubscriptions as Subs};
use blockhost_chain::user_encrypted;
use blockhost_crd::config::PlanDefaults;
use blockhost_crd::eip191;
use blockhost_crd::{AnyObject, Plan, Subscription, SubscriptionState, VirtualMachine};
use k256::SecretKey;
use k256::ecdsa::SigningKey;

use super::follow::{Progress, WatchConfig, Watcher};
use super::mapping::Mapper;
use crate::metrics::Metrics;
use crate::store::{Store, StoreOptions, Writer};
use blockhost_chain::node::{BlockTxs, Node, NodeError, RawLog, RawTx};

const SUBS: [u8; 20] = [0x51; 20];
const NFT: [u8; 20] = [0x4e; 20];
/// anvil dev keys 0 and 2 (well-known test keys): buyer, server.
const BUYER: &str = "ac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80";
const SERVER: &str = "5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a";

/// A log as (emitter, topics and data).
type Emitted = ([u8; 20], LogData);

#[derive(Default)]
struct Chain {
    /// Block i: (hash, logs as (address, data)).
    blocks: Vec<([u8; 32], Vec<Emitted>)>,
    salt: u8,
    max_range: Option<u64>,
    calls: usize,
    /// Transactions to the admin target by block, with the block's timestamp.
    txs: std::collections::HashMap<u64, (u64, Vec<RawTx>)>,
}

#[derive(Clone, Default)]
struct FakeNode(Arc<Mutex<Chain>>);

impl FakeNode {
    fn new() -> Self {
        let n = FakeNode::default();
        n.mine(vec![]); // genesis
        n
    }
    fn mine(&self, logs: Vec<([u8; 20], LogData)>) -> u64 {
        let mut c = self.0.lock().unwrap();
        let n = c.blocks.len() as u64;
        let mut hash = [c.salt; 32];
        hash[..8].copy_from_slice(&n.to_be_bytes());
        c.blocks.push((hash, logs));
        n
    }
    fn mine_empty(&self, k: usize) {
        for _ in 0..k {
            self.mine(vec![]);
        }
    }
    /// Replaces the last `depth` blocks with empty ones of new hashes.
    fn reorg(&self, depth: usize) {
        let mut c = self.0.lock().unwrap();
        c.salt = c.salt.wrapping_add(1);
        let len = c.blocks.len();
        let salt = c.salt;
        for (i, b) in c.blocks.iter_mut().enumerate().skip(len - depth) {
            let mut hash = [salt; 32];
            hash[..8].copy_from_slice(&(i as u64).to_be_bytes());
            *b = (hash, vec![]);
        }
    }
}

impl Node for FakeNode {
    async fn chain_id(&self) -> Result<u64, NodeError> {
        Ok(31337)
    }
    async fn head(&self) -> Result<u64, NodeError> {
        Ok(self.0.lock().unwrap().blocks.len() as u64 - 1)
    }
    async fn block_hash(&self, number: u64) -> Result<Option<[u8; 32]>, NodeError> {
        Ok(self
            .0
            .lock()
            .unwrap()
            .blocks
            .get(number as usize)
            .map(|b| b.0))
    }
    async fn block_txs_to(&self, number: u64, to: [u8; 20]) -> Result<Option<BlockTxs>, NodeError> {
        let c = self.0.lock().unwrap();
        let (timestamp, txs) = c.txs.get(&number).cloned().unwrap_or_default();
        Ok(c.blocks.get(number as usize).map(|b| BlockTxs {
            hash: b.0,
            timestamp,
            txs: txs.into_iter().filter(|t| t.to == Some(to)).collect(),
        }))
    }
    async fn logs(
        &self,
        from: u64,
        to: u64,
        addresses: &[[u8; 20]],
    ) -> Result<Vec<RawLog>, NodeError> {
        let mut c = self.0.lock().unwrap();
        c.calls += 1;
        if let Some(max) = c.max_range
            && to - from + 1 > max
        {
            return Err(NodeError::Refused {
                method: "eth_getLogs",
                code: -32005,
                message: format!("range exceeds {max}"),
            });
        }
        let mut out = Vec::new();
        for n in from..=to {
            let Some((hash, logs)) = c.blocks.get(n as usize) else {
                break;
            };
            for (i, (addr, d)) in logs.iter().enumerate() {
                if addresses.contains(addr) {
                    out.push(RawLog {
                        address: *addr,
                        topics: d.topics().iter().map(|t| t.0).collect(),
                        data: d.data.to_vec(),
                        block_number: n,
                        block_hash: *hash,
                        log_index: i as u64,
                        transaction_hash: [n as u8; 32],
                    });
                }
            }
        }
        Ok(out)
    }
}

fn server() -> SecretKey {
    SecretKey::from_slice(&hex::decode(SERVER).unwrap()).unwrap()
}

fn buyer() -> (SigningKey, Address) {
    let k = SigningKey::from_slice(&hex::decode(BUYER).unwrap()).unwrap();
    let a = Address::from(*eip191::address_of(k.verifying_key()).as_bytes());
    (k, a)
}

fn good_payload() -> Vec<u8> {
    let sig = eip191::sign(&buyer().0, b"blockhost-access").unwrap();
    user_encrypted::encrypt_signature(&server().public_key(), &sig).unwrap()
}

fn plan_created(id: u64) -> ([u8; 20], LogData) {
    (
        SUBS,
        Subs::PlanCreated {
            planId: U256::from(id),
            name: "basic".into(),
            pricePerDayUsdCents: U256::from(150),
        }
        .encode_log_data(),
    )
}

fn created(id: u64, plan: u64, payload: Vec<u8>) -> ([u8; 20], LogData) {
    (
        SUBS,
        Subs::SubscriptionCreated {
            subscriptionId: U256::from(id),
            planId: U256::from(plan),
            subscriber: buyer().1,
            expiresAt: U256::from(1_900_000_000u64),
            paidAmount: U256::from(1),
            paymentToken: Address::ZERO,
            userEncrypted: Bytes::from(payload),
        }
        .encode_log_data(),
    )
}

fn setup(confirmations: u64) -> (tempfile::TempDir, Store, FakeNode, Watcher<FakeNode>) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("s.redb"), StoreOptions::default()).unwrap();
    let node = FakeNode::new();
    let w = watcher(&store, &node, confirmations, 1000);
    (dir, store, node, w)
}

fn watcher(
    store: &Store,
    node: &FakeNode,
    confirmations: u64,
    max_range: u64,
) -> Watcher<FakeNode> {
    let mapper = Arc::new(Mapper {
        server_key: server(),
        public_secret: "blockhost-access".into(),
        plan_defaults: PlanDefaults::default(),
    });
    let cfg = WatchConfig {
        scope: "31337:test".into(),
        chain_id: 31337,
        subscriptions: SUBS,
        nft: NFT,
        deployment_block: 1,
        confirmations,
        poll: Duration::from_millis(10),
        max_range,
        reorg_window: 4096,
        follow_chain_time: false,
    };
    Watcher::new(
        node.clone(),
        store.clone(),
        mapper,
        cfg,
        Arc::new(Metrics::new()),
    )
}

async fn drain(w: &mut Watcher<FakeNode>) {
    for _ in 0..10_000 {
        if w.step().await.unwrap() == Progress::CaughtUp {
            return;
        }
    }
    panic!("watcher did not catch up");
}

fn sub(store: &Store, id: &str) -> Subscription {
    store
        .get::<Subscription>(id)
        .unwrap()
        .expect("subscription")
}

#[tokio::test]
async fn purchase_extend_transfer_cancel() {
    let (_d, store, node, mut w) = setup(0);
    node.mine(vec![plan_created(1), created(7, 1, good_payload())]);
    drain(&mut w).await;
    let plan: Plan = store.get("plan-1").unwrap().unwrap();
    assert_eq!(plan.spec.display_name.as_deref(), Some("basic"));
    assert_eq!(
        plan.spec.template.get(),
        9001,
        "plan defaults for a chain-only plan"
    );
    let vm: VirtualMachine = store.get("blockhost-007").unwrap().expect("VM written");
    assert_eq!(vm.spec.owner.as_bytes(), &buyer().1.into_array());
    assert_eq!(
        vm.spec.source,
        blockhost_crd::VmSource::Chain { subscription_id: 7 }
    );
    assert_eq!(vm.spec.expires_at.unwrap().timestamp(), 1_900_000_000);
    assert_eq!(vm.spec.resources, plan.spec.resources);
    assert_eq!(vm.spec.plan.as_ref().unwrap().as_str(), "plan-1");
    let s = sub(&store, "blockhost-007");
    assert_eq!(s.status.state, SubscriptionState::Active);
    let scope = "31337:test";
    let sig = store.chain_signature(scope, 7).unwrap().unwrap();
    assert_eq!(sig.len(), 65);
    let raw = String::from_utf8(
        store
            .get_raw("Subscription", "blockhost-007")
            .unwrap()
            .unwrap(),
    )
    .unwrap();
    assert!(
        !raw.contains(&hex::encode(&sig[..16])),
        "the signature stays out of objects"
    );

    // Extend: absolute.
    node.mine(vec![(
        SUBS,
        Subs::SubscriptionExtended {
            subscriptionId: U256::from(7),
            planId: U256::from(1),
            extendedBy: Address::ZERO,
            newExpiresAt: U256::from(2_000_000_000u64),
            paidAmount: U256::ZERO,
            paymentToken: Address::ZERO,
        }
        .encode_log_data(),
    )]);
    drain(&mut w).await;
    let vm: VirtualMachine = store.get("blockhost-007").unwrap().unwrap();
    assert_eq!(vm.spec.expires_at.unwrap().timestamp(), 2_000_000_000);
    assert_eq!(vm.metadata.generation, Some(2));

    // Transfer of the subscription's NFT (token id recorded by the minter).
    store
        .update_status_as::<Subscription>(Writer::Minter, "blockhost-007", |s| {
            s.status.nft_token_id = Some(0);
            true
        })
        .unwrap();
    let new_owner = Address::repeat_byte(0x77);
    node.mine(vec![
        (
            NFT,
            Nft::Transfer {
                from: Address::ZERO,
                to: buyer().1,
                tokenId: U256::ZERO,
            }
            .encode_log_data(),
        ),
        (
            NFT,
            Nft::Transfer {
                from: buyer().1,
                to: new_owner,
                tokenId: U256::ZERO,
            }
            .encode_log_data(),
        ),
    ]);
    drain(&mut w).await;
    let vm: VirtualMachine = store.get("blockhost-007").unwrap().unwrap();
    assert_eq!(vm.spec.owner.as_bytes(), &new_owner.into_array());

    // Cancel: VM gone, subscription says so.
    node.mine(vec![(
        SUBS,
        Subs::SubscriptionCancelled {
            subscriptionId: U256::from(7),
            planId: U256::from(1),
            subscriber: buyer().1,
        }
        .encode_log_data(),
    )]);
    drain(&mut w).await;
    assert!(
        store
            .get::<VirtualMachine>("blockhost-007")
            .unwrap()
            .is_none()
    );
    let s = sub(&store, "blockhost-007");
    assert_eq!(s.status.state, SubscriptionState::Cancelled);
    assert!(s.spec.cancelled);
}

#[tokio::test]
async fn bad_payloads_give_conditions_not_vms() {
    let (_d, store, node, mut w) = setup(0);
    let other_sig = eip191::sign(
        &SigningKey::from_slice(&hex::decode(SERVER).unwrap()).unwrap(),
        b"blockhost-access",
    )
    .unwrap();
    node.mine(vec![
        plan_created(1),
        created(1, 1, b"garbage".to_vec()),
        created(2, 1, vec![4u8; 1 << 20]),
        created(
            3,
            1,
            user_encrypted::encrypt_signature(&server().public_key(), &other_sig).unwrap(),
        ),
    ]);
    drain(&mut w).await;
    for (name, reason) in [
        ("blockhost-001", "PayloadUndecryptable"),
        ("blockhost-002", "PayloadTooLarge"),
        ("blockhost-003", "SignatureMismatch"),
    ] {
        let s = sub(&store, name);
        assert_eq!(s.status.state, SubscriptionState::PayloadInvalid, "{name}");
        assert_eq!(s.status.conditions[0].reason, reason);
        assert!(store.get::<VirtualMachine>(name).unwrap().is_none());
        let ev = store.events(Some(("Subscription", name)), 10).unwrap();
        assert!(ev.iter().any(|e| e.reason == reason), "{name}: {ev:?}");
    }
}

#[tokio::test]
async fn unknown_plan_waits_for_an_operator_plan() {
    let (_d, store, node, mut w) = setup(0);
    node.mine(vec![created(12, 5, good_payload())]);
    drain(&mut w).await;
    assert_eq!(
        sub(&store, "blockhost-012").status.state,
        SubscriptionState::PlanUnknown
    );
    assert!(
        store
            .get::<VirtualMachine>("blockhost-012")
            .unwrap()
            .is_none()
    );

    let plan: Plan = serde_json::from_value(serde_json::json!({
        "apiVersion": "blockhost.io/v1alpha1", "kind": "Plan", "metadata": {"name": "large"},
        "spec": {"chainPlanId": 5, "resources": {"cores": 4, "memoryMiB": 8192, "diskGiB": 80}, "template": 9002}
    })).unwrap();
    store
        .apply(vec![AnyObject::Plan(Box::new(plan))], false)
        .unwrap();
    // The running loop resyncs on the plan change.
    let stop = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(w.run(stop.clone()));
    let mut vm = None;
    for _ in 0..200 {
        vm = store.get::<VirtualMachine>("blockhost-012").unwrap();
        if vm.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.cancel();
    task.await.unwrap();
    let vm = vm.expect("VM after the plan appeared");
    assert_eq!(vm.spec.resources.cores.get(), 4);
    assert_eq!(vm.spec.template.unwrap().get(), 9002);
    assert_eq!(
        sub(&store, "blockhost-012").status.state,
        SubscriptionState::Active
    );
}

#[tokio::test]
async fn confirmations_shield_from_reorgs_and_applied_blocks_are_undone() {
    let (_d, store, node, mut w) = setup(3);
    node.mine(vec![plan_created(1)]);
    node.mine_empty(3);
    drain(&mut w).await;
    assert!(store.get::<Plan>("plan-1").unwrap().is_some());
    // A purchase with two blocks on top: not yet confirmed.
    node.mine(vec![created(1, 1, good_payload())]);
    node.mine_empty(1);
    drain(&mut w).await;
    assert!(
        store
            .get::<Subscription>("blockhost-001")
            .unwrap()
            .is_none()
    );
    node.reorg(2);
    node.mine_empty(5);
    drain(&mut w).await;
    assert!(
        store
            .get::<Subscription>("blockhost-001")
            .unwrap()
            .is_none(),
        "reverted before its confirmations"
    );

    // Applied, then reverted by a deeper reorg: undone.
    let (_d2, store, node, mut w) = setup(0);
    node.mine(vec![plan_created(1)]);
    node.mine(vec![created(1, 1, good_payload())]);
    drain(&mut w).await;
    assert!(
        store
            .get::<VirtualMachine>("blockhost-001")
            .unwrap()
            .is_some()
    );
    let rv = store.resource_version().unwrap();
    node.reorg(1);
    drain(&mut w).await;
    assert!(
        store
            .get::<VirtualMachine>("blockhost-001")
            .unwrap()
            .is_none()
    );
    assert!(
        store
            .get::<Subscription>("blockhost-001")
            .unwrap()
            .is_none()
    );
    assert!(store.chain_signature("31337:test", 1).unwrap().is_none());
    assert!(
        store.get::<Plan>("plan-1").unwrap().is_some(),
        "the plan's block stayed"
    );
    assert!(store.resource_version().unwrap() > rv);
    // The same purchase re-mined in a new block applies again (a new event id).
    node.mine(vec![created(1, 1, good_payload())]);
    drain(&mut w).await;
    assert!(
        store
            .get::<VirtualMachine>("blockhost-001")
            .unwrap()
            .is_some()
    );
}

#[tokio::test]
async fn a_reorg_keeps_reconciler_status_and_deletes_through_finalizers() {
    let (_d, store, node, mut w) = setup(0);
    node.mine(vec![plan_created(1)]);
    node.mine(vec![created(1, 1, good_payload())]);
    drain(&mut w).await;
    store
        .update_status::<VirtualMachine>("blockhost-001", |v| {
            v.metadata.finalizers.push("blockhost.io/proxmox".into());
            true
        })
        .unwrap();
    node.reorg(1);
    drain(&mut w).await;
    let vm: VirtualMachine = store
        .get("blockhost-001")
        .unwrap()
        .expect("kept until the reconciler lets go");
    assert!(vm.metadata.deletion_timestamp.is_some());
}

#[tokio::test]
async fn refused_ranges_shrink_and_restarts_resume_without_duplicates() {
    let (_d, store, node, _) = setup(0);
    node.mine(vec![plan_created(1)]);
    for i in 1..=20u64 {
        node.mine_empty(7);
        node.mine(vec![created(i, 1, good_payload())]);
    }
    node.0.lock().unwrap().max_range = Some(10);
    let mut w = watcher(&store, &node, 0, 1000);
    // Stop halfway: a "crash" after some commits.
    for _ in 0..15 {
        w.step().await.unwrap();
    }
    assert!(w.range() <= 10, "range narrowed to {}", w.range());
    drop(w);
    let before = store.list::<VirtualMachine>().unwrap().len();
    assert!(before < 20, "stopped before the end ({before})");
    node.mine_empty(50);
    let mut w = watcher(&store, &node, 0, 1000);
    drain(&mut w).await;
    let vms = store.list::<VirtualMachine>().unwrap();
    assert_eq!(vms.len(), 20);
    assert!(
        vms.iter().all(|v| v.metadata.generation == Some(1)),
        "none applied twice"
    );

    // Re-delivering an already applied block's events is a no-op.
    let cursor = store.chain_cursor("31337:test").unwrap().unwrap();
    let rv = store.resource_version().unwrap();
    node.0.lock().unwrap().max_range = None;
    let log = node.logs(1, cursor.number, &[SUBS]).await.unwrap();
    let first = &log[1];
    let ev = super::events::decode(first, SUBS, NFT).unwrap().unwrap();
    let block = crate::store::chain::BlockRef {
        number: first.block_number,
        hash: first.block_hash,
    };
    let mapper = Mapper {
        server_key: server(),
        public_secret: "blockhost-access".into(),
        plan_defaults: PlanDefaults::default(),
    };
    let stats = store
        .chain_commit(
            "31337:test",
            &[crate::store::chain::BlockEvents {
                block,
                events: vec![(first.id(), ev)],
            }],
            cursor,
            4096,
            |tx, e| mapper.apply(tx, e).map(|_| ()),
            |_| Ok(()),
        )
        .unwrap();
    assert_eq!((stats.applied, stats.duplicates), (0, 1));
    assert_eq!(store.resource_version().unwrap(), rv);
}

#[tokio::test]
async fn malformed_logs_are_skipped() {
    let (_d, store, node, mut w) = setup(0);
    let mut bad = created(1, 1, good_payload()).1;
    bad.data = Bytes::from_static(&[1, 2, 3]);
    let huge_id = Subs::SubscriptionCreated {
        subscriptionId: U256::MAX,
        planId: U256::from(1),
        subscriber: Address::ZERO,
        expiresAt: U256::MAX,
        paidAmount: U256::ZERO,
        paymentToken: Address::ZERO,
        userEncrypted: Bytes::new(),
    }
    .encode_log_data();
    node.mine(vec![
        plan_created(1),
        (SUBS, bad),
        (SUBS, huge_id),
        created(2, 1, good_payload()),
    ]);
    drain(&mut w).await;
    assert!(
        store
            .get::<VirtualMachine>("blockhost-002")
            .unwrap()
            .is_some(),
        "good events after bad ones still apply"
    );
    assert_eq!(store.list::<Subscription>().unwrap().len(), 1);
}

#[tokio::test]
async fn watcher_vms_get_addresses_and_give_them_back() {
    let dir = tempfile::tempdir().unwrap();
    let pool: blockhost_crd::config::Ipv4Pool = serde_json::from_value(serde_json::json!({
        "cidr": "10.9.0.0/29", "gateway": "10.9.0.1"
    }))
    .unwrap();
    let opts = StoreOptions {
        pools: crate::store::alloc::Pools {
            ipv4: Some(pool),
            ipv6: None,
        },
        ..StoreOptions::default()
    };
    let store = Store::open(&dir.path().join("s.redb"), opts).unwrap();
    let node = FakeNode::new();
    let mut w = watcher(&store, &node, 0, 1000);
    node.mine(vec![plan_created(1), created(1, 1, good_payload())]);
    drain(&mut w).await;
    let vm: VirtualMachine = store.get("blockhost-001").unwrap().unwrap();
    let ip = vm
        .status
        .addresses
        .ipv4
        .clone()
        .expect("allocated with the spec");
    assert_eq!(
        store.address_owner(&ip).unwrap().as_deref(),
        Some("VirtualMachine/blockhost-001")
    );
    // A reorg that removes the purchase frees the address.
    node.reorg(1);
    drain(&mut w).await;
    assert!(
        store
            .get::<VirtualMachine>("blockhost-001")
            .unwrap()
            .is_none()
    );
    assert_eq!(store.address_owner(&ip).unwrap(), None);
}

/// The watcher's own cost of a catch-up (mapping, ECIES, store commits), with an
/// in-memory node so the node's speed does not count: 100,000 blocks holding
/// 1,000 purchases. Run by `bench/chain.sh`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark; run bench/chain.sh"]
async fn bench_catch_up_in_memory_node() {
    let blocks: u64 = std::env::var("BENCH_BLOCKS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let purchases: u64 = std::env::var("BENCH_PURCHASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000);
    let range: u64 = std::env::var("BENCH_RANGE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000);
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("s.redb"), StoreOptions::default()).unwrap();
    let node = FakeNode::new();
    node.mine(vec![plan_created(1)]);
    let payload = good_payload();
    let gap = blocks / purchases;
    for i in 1..=purchases {
        node.mine_empty(gap as usize - 1);
        node.mine(vec![created(i, 1, payload.clone())]);
    }
    let mut w = watcher(&store, &node, 0, range);
    let start = std::time::Instant::now();
    drain(&mut w).await;
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(store.count("VirtualMachine").unwrap(), purchases);
    eprintln!(
        "RESULT catch-up (in-memory node): {blocks} blocks, {purchases} purchases, range {range}: {secs:.2} s = {:.0} blocks/s, {:.0} purchases/s",
        blocks as f64 / secs,
        purchases as f64 / secs
    );
}

#[tokio::test]
async fn undoing_an_extension_keeps_the_minted_token_id() {
    let (_d, store, node, mut w) = setup(0);
    node.mine(vec![plan_created(1), created(3, 1, good_payload())]);
    drain(&mut w).await;
    store
        .update_status_as::<Subscription>(Writer::Minter, "blockhost-003", |s| {
            s.status.nft_token_id = Some(5);
            true
        })
        .unwrap();
    node.mine(vec![(
        SUBS,
        Subs::SubscriptionExtended {
            subscriptionId: U256::from(3),
            planId: U256::from(1),
            extendedBy: Address::ZERO,
            newExpiresAt: U256::from(2_000_000_000u64),
            paidAmount: U256::ZERO,
            paymentToken: Address::ZERO,
        }
        .encode_log_data(),
    )]);
    drain(&mut w).await;
    node.reorg(1);
    drain(&mut w).await;
    let s = sub(&store, "blockhost-003");
    assert_eq!(
        s.spec.expires_at.timestamp(),
        1_900_000_000,
        "extension undone"
    );
    assert_eq!(
        s.status.nft_token_id,
        Some(5),
        "the minter's token id survives"
    );
    let vm: VirtualMachine = store.get("blockhost-003").unwrap().unwrap();
    assert_eq!(vm.spec.expires_at.unwrap().timestamp(), 1_900_000_000);
}

const ADMIN: [u8; 20] = [0xad; 20];

fn admin_tx(from: [u8; 20], json: &str, i: u8) -> RawTx {
    RawTx {
        hash: [i; 32],
        index: u64::from(i),
        from,
        to: Some(ADMIN),
        input: blockhost_chain::admin::encrypt(&server().public_key(), json.as_bytes()).unwrap(),
    }
}

/// Mines one block carrying `txs`, dated `time`.
fn mine_txs(node: &FakeNode, time: i64, txs: Vec<RawTx>) -> u64 {
    let n = node.mine(vec![]);
    node.0.lock().unwrap().txs.insert(n, (time as u64, txs));
    n
}

#[tokio::test]
async fn admin_commands_are_decided_once_with_the_cursor_and_old_blocks_are_not_read() {
    let (_d, store, node, w) = setup(0);
    let cfg: blockhost_crd::config::AdminConfig = serde_json::from_value(serde_json::json!({
        "wallet": format!("0x{}", hex::encode(ADMIN)),
        "command": "open-sesame",
    }))
    .unwrap();
    let reader = Arc::new(super::admin::AdminReader::new(&cfg, server()));
    let mut w = w.with_admin(reader, None);
    let now = store.now().timestamp();
    let cmd = |nonce: &str, t: i64| {
        format!(r#"{{"command":"open-sesame","nonce":"{nonce}","timestamp":{t}}}"#)
    };
    // Mined long ago, within no age: not read at all, so no event.
    mine_txs(
        &node,
        now - 3600,
        vec![admin_tx(ADMIN, &cmd("old", now), 1)],
    );
    mine_txs(
        &node,
        now,
        vec![
            admin_tx(ADMIN, &cmd("a", now), 2),
            admin_tx(ADMIN, &cmd("a", now), 3),
            admin_tx([0x01; 20], &cmd("b", now), 4),
        ],
    );
    // A transfer without data to the admin wallet is not a command.
    let mut funding = admin_tx([0x02; 20], "{}", 5);
    funding.input.clear();
    mine_txs(&node, now, vec![funding]);
    drain(&mut w).await;
    let events = store
        .events(
            Some((
                blockhost_crd::resource::HOST_KIND,
                blockhost_crd::resource::HOST_ADMIN,
            )),
            100,
        )
        .unwrap();
    let reasons: Vec<&str> = events.iter().map(|e| e.reason.as_str()).collect();
    assert_eq!(
        reasons,
        ["KnockAccepted", "Replayed", "OtherWallet"],
        "{events:#?}"
    );
    assert!(store.admin_nonce_seen("a").unwrap());
    assert!(!store.admin_nonce_seen("old").unwrap());
    // Read again (a restart from an older cursor is the same): nothing twice.
    drain(&mut w).await;
    assert_eq!(
        store
            .events(
                Some((
                    blockhost_crd::resource::HOST_KIND,
                    blockhost_crd::resource::HOST_ADMIN
                )),
                100
            )
            .unwrap()
            .len(),
        3
    );
}
