//! The minter: once a chain-sourced VM first runs, mint its access NFT to the
//! subscriber, carrying the connection details encrypted under the buyer's
//! signature (REFERENCE.md §2), and record the token id from the receipt.
//!
//! A reconciler under [`super::runtime`], like the VM reconciler: keyed by the
//! subscription's name (which is its VM's), triggered when a chain VM without a
//! token changes (a status write to `Running` included), resynced every
//! `full_scan`, with per-key jittered backoff, metrics and a timeout.
//!
//! Exactly one NFT per subscription, whatever crashes:
//! 1. The `mint(to, payload)` transaction is signed and its raw bytes, hash and
//!    nonce are stored durably (`store::mint`) **before** it is broadcast.
//!    Nonces are chosen one mint at a time (a lock), past every pending mint's.
//! 2. A pending record is looked at first: the wallet's mined nonce, then the
//!    receipts of every attempt. A receipt (with the configured confirmations)
//!    settles the record; the token id is read from the receipt's
//!    `CredentialMinted` event — never from `totalSupply()` (the original's race).
//! 3. No receipt and the nonce not yet used: the node may have lost it (restart,
//!    mempool eviction), so the same bytes are re-sent; after `bump_after`
//!    without a receipt it is re-signed with the same nonce and higher fees
//!    (both stored). No receipt and the nonce used by something else: none of
//!    our attempts can be mined any more; the record is dropped and a new mint
//!    starts. The nonce is read *before* the receipts, so a mint mined between
//!    the two reads is seen as mined, not as dropped.
//!
//! Failures (no funds, a reverting mint, an unreachable node) become an
//! `NftMinted=False` condition and an event on the `Subscription`, and are
//! retried by the runtime ([`MintError::retry`]). The token id goes to
//! `Subscription.status.nftTokenId` and `VirtualMachine.status.nftTokenId`;
//! the VM reconciler is nudged so the access file names it.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use alloy_primitives::{Address, Bytes, U256};
use alloy_sol_types::{SolCall, SolEvent};
use blockhost_chain::bindings::AccessCredentialNFT as Nft;
use blockhost_chain::nft_payload::{self, ConnectionDetails};
use blockhost_chain::tx::Eip1559Tx;
use blockhost_crd::eip191::Signature;
use blockhost_crd::meta::{Condition, ConditionStatus, EventType, set_condition};
use blockhost_crd::resource::Resource;
use blockhost_crd::vm::{VmPhase, VmSource};
use blockhost_crd::{ConditionType, Reason, Subscription, VirtualMachine};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::runtime::{self, Action, ErrorPolicy, Reconciler, Retry, RuntimeConfig, Trigger};
use blockhost_chain::node::NodeError;
use blockhost_chain::wallet::{Receipt, SendError, ServerWallet, WalletError};

use crate::metrics::Metrics;
use crate::store::mint::{MintAttempt, MintRecord, MintState};
use crate::store::{ChangeKind, Store, StoreError, Writer};

/// The condition type the minter owns on `Subscription` objects.
pub const CONDITION: ConditionType = ConditionType::NftMinted;

/// SSH port written into the payload.
const SSH_PORT: u16 = 22;

/// Most attempts (fee bumps) kept per mint; beyond it the last one is re-sent.
const MAX_ATTEMPTS: usize = 8;

/// Settings of the minter.
#[derive(Debug, Clone)]
pub struct MintConfig {
    /// Store scope (the watcher's).
    pub scope: String,
    /// The NFT contract.
    pub nft: [u8; 20],
    /// Blocks a receipt must be buried under before the token id is recorded.
    pub confirmations: u64,
    /// A pending mint is re-signed with higher fees after this long.
    pub bump_after: Duration,
    /// How often a pending mint is checked.
    pub pending_poll: Duration,
    /// How often every subscription is looked at (the runtime's resync).
    pub full_scan: Duration,
    /// First retry delay after a transient failure (doubles up to `max_backoff`).
    pub min_backoff: Duration,
    /// Longest retry delay after transient failures.
    pub max_backoff: Duration,
    /// First retry delay after a failure an operator must fix (no funds, a
    /// contract the wallet does not own); doubles up to `operator_max_backoff`.
    pub operator_min_backoff: Duration,
    /// Longest retry delay after such failures.
    pub operator_max_backoff: Duration,
    /// A mint reconcile running longer than this is abandoned and retried.
    pub timeout: Duration,
    /// Mint reconciles running at once (nonces are still chosen one at a time).
    pub concurrency: usize,
    /// How long a pending mint's nonce must be seen used, with none of its
    /// attempts known to the node, before the mint counts as dropped. Nodes
    /// bump the account nonce a moment before they serve the receipt; without
    /// this wait that moment looks like "replaced" and would mint twice.
    pub drop_after: Duration,
}

impl MintConfig {
    /// Defaults for a scope and contract.
    pub fn new(scope: String, nft: [u8; 20], confirmations: u64, poll: Duration) -> Self {
        Self {
            scope,
            nft,
            confirmations,
            bump_after: Duration::from_secs(180),
            pending_poll: poll.clamp(Duration::from_millis(50), Duration::from_secs(5)),
            full_scan: Duration::from_secs(30),
            min_backoff: Duration::from_secs(2),
            max_backoff: Duration::from_secs(60),
            operator_min_backoff: Duration::from_secs(30),
            operator_max_backoff: Duration::from_secs(300),
            timeout: Duration::from_secs(120),
            concurrency: 4,
            drop_after: Duration::from_secs(30),
        }
    }

    /// The runtime's tuning for the minter.
    pub fn runtime(&self) -> RuntimeConfig {
        RuntimeConfig {
            concurrency: self.concurrency.max(1),
            backoff_base: self.min_backoff,
            backoff_max: self.max_backoff,
            operator_backoff_base: self.operator_min_backoff,
            operator_backoff_max: self.operator_max_backoff,
            timeout: self.timeout,
            resync: self.full_scan,
        }
    }
}

/// Why one mint step failed.
#[derive(Debug, thiserror::Error)]
pub enum MintError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A blocking store task panicked or was cancelled.
    #[error("a store task did not finish; this is a bug in blockhostd")]
    StoreTask(#[source] tokio::task::JoinError),
    /// A node request failed.
    #[error(transparent)]
    Node(#[from] NodeError),
    /// Preparing, funding or sending failed.
    #[error(transparent)]
    Wallet(#[from] WalletError),
    /// The node refused the raw transaction.
    #[error(transparent)]
    Send(#[from] SendError),
    /// The buyer's signature is not in the store (the subscription's payload was
    /// not accepted).
    #[error("no buyer signature is recorded for subscription {0}; its payload was not accepted")]
    NoSignature(u64),
    /// The VM has no address yet.
    #[error("VM {0} has no address to put in the NFT yet")]
    NoAddress(String),
    /// A mined mint without the expected event.
    #[error(
        "transaction {0} minted no credential to the subscriber (no CredentialMinted event in its receipt); check chain.contracts.nft"
    )]
    NoTokenInReceipt(String),
    /// A mined mint reverted; its record is dropped and a new one is signed.
    #[error(
        "mint transaction {transaction} reverted in block {block}; retrying with a new transaction"
    )]
    Reverted {
        /// The reverted transaction.
        transaction: String,
        /// Its block.
        block: u64,
    },
    /// A stored transaction cannot be read back.
    #[error("stored transaction {0} cannot be read back; the mint record is damaged")]
    StoredTx(String),
    /// The payload could not be encrypted.
    #[error("cannot encrypt the connection details")]
    Payload(#[from] nft_payload::NftPayloadError),
}

impl MintError {
    /// Condition reason and metric label.
    pub fn reason(&self) -> Reason {
        match self {
            MintError::Wallet(WalletError::InsufficientFunds { .. })
            | MintError::Send(SendError::InsufficientFunds(_)) => Reason::InsufficientFunds,
            MintError::Wallet(WalletError::WouldRevert(_)) => Reason::MintWouldRevert,
            MintError::Node(_)
            | MintError::Wallet(WalletError::Node(_))
            | MintError::Send(SendError::Node(_)) => Reason::NodeUnavailable,
            MintError::NoSignature(_) => Reason::NoSignature,
            MintError::NoAddress(_) => Reason::NoAddress,
            MintError::Reverted { .. } => Reason::MintReverted,
            MintError::StoreTask(_) => Reason::Internal,
            _ => Reason::MintFailed,
        }
    }

    /// Whether retrying can help by itself, or an operator must act first
    /// (fund the wallet, hand it the contract, fix the configuration).
    pub fn retry(&self) -> Retry {
        match self {
            MintError::Wallet(
                WalletError::InsufficientFunds { .. } | WalletError::WouldRevert(_),
            )
            | MintError::Send(SendError::InsufficientFunds(_))
            | MintError::NoSignature(_)
            | MintError::NoTokenInReceipt(_)
            | MintError::StoredTx(_)
            | MintError::Payload(_)
            | MintError::StoreTask(_) => Retry::Operator,
            _ => Retry::Transient,
        }
    }
}

fn hex0x(b: &[u8]) -> String {
    format!("0x{}", hex::encode(b))
}

fn parse_hex<const N: usize>(s: &str) -> Option<[u8; N]> {
    let b = hex::decode(s.strip_prefix("0x")?).ok()?;
    <[u8; N]>::try_from(b.as_slice()).ok()
}

/// The token minted to `recipient` by `nft` in a receipt: the
/// `CredentialMinted(tokenId, recipient)` event, or failing that an ERC-721
/// `Transfer` from the zero address.
pub fn token_from_receipt(r: &Receipt, nft: [u8; 20], recipient: [u8; 20]) -> Option<u64> {
    let as_u64 = |t: &[u8; 32]| u64::try_from(U256::from_be_bytes(*t)).ok();
    let to_addr = |t: &[u8; 32]| t[..12].iter().all(|b| *b == 0) && t[12..] == recipient;
    let ours = r.logs.iter().filter(|l| l.address == nft);
    for l in ours.clone() {
        if l.topics.len() == 3
            && l.topics[0] == Nft::CredentialMinted::SIGNATURE_HASH.0
            && to_addr(&l.topics[2])
        {
            return as_u64(&l.topics[1]);
        }
    }
    ours.filter(|l| {
        l.topics.len() == 4
            && l.topics[0] == Nft::Transfer::SIGNATURE_HASH.0
            && l.topics[1] == [0; 32]
            && to_addr(&l.topics[2])
    })
    .find_map(|l| as_u64(&l.topics[3]))
}

/// The minting reconciler.
#[derive(Debug)]
pub struct Minter {
    wallet: ServerWallet,
    store: Store,
    cfg: MintConfig,
    metrics: Arc<Metrics>,
    nudge: Option<mpsc::Sender<Trigger>>,
    /// Held from choosing a new mint's nonce until its record is stored, so two
    /// mints never take the same nonce.
    nonce: tokio::sync::Mutex<()>,
    /// When each pending mint's nonce was first seen used by an unknown
    /// transaction (see [`MintConfig::drop_after`]).
    nonce_taken: Mutex<HashMap<u64, Instant>>,
}

impl Minter {
    /// A minter for `cfg`; `nudge` (when Proxmox is driven) re-runs a VM's
    /// reconcile so its access file names the new token.
    pub fn new(
        wallet: ServerWallet,
        store: Store,
        cfg: MintConfig,
        metrics: Arc<Metrics>,
        nudge: Option<mpsc::Sender<Trigger>>,
    ) -> Self {
        Self {
            wallet,
            store,
            cfg,
            metrics,
            nudge,
            nonce: tokio::sync::Mutex::new(()),
            nonce_taken: Mutex::new(HashMap::new()),
        }
    }

    /// Runs under the reconcile runtime until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        tracing::info!(wallet = %self.wallet.address(), nft = %hex0x(&self.cfg.nft), "minter starting");
        let (_, triggers) = runtime::change_triggers(
            &self.store,
            |c| {
                c.kind == VirtualMachine::KIND
                    && c.what != ChangeKind::Deleted
                    && running_chain_vm(&c.object)
            },
            shutdown.clone(),
        );
        let (store, scope) = (self.store.clone(), self.cfg.scope.clone());
        let keys = move || match keys(&store, &scope) {
            Ok(k) => k,
            Err(e) => {
                tracing::warn!(error = %crate::error_chain(&e), "cannot list subscriptions for the minter");
                Vec::new()
            }
        };
        let (cfg, metrics) = (self.cfg.runtime(), self.metrics.clone());
        runtime::run(Arc::new(self), cfg, metrics, triggers, keys, shutdown).await;
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, MintError> {
        self.store.blocking(f).await.map_err(|e| match e {
            // A panicked store task is an internal error, not the store's answer.
            StoreError::TaskFailed { source } => MintError::StoreTask(source),
            e => MintError::from(e),
        })
    }

    fn count(&self, outcome: &str) {
        self.metrics
            .chain_mints
            .get_or_create(&vec![("outcome".into(), outcome.into())])
            .inc();
    }

    /// Counts the pending mints for the gauge.
    fn count_pending(&self) {
        match self.store.mint_records(&self.cfg.scope) {
            Ok(recs) => {
                let n = recs.iter().filter(|r| r.pending()).count();
                self.metrics
                    .chain_mints_pending
                    .set(i64::try_from(n).unwrap_or(i64::MAX));
            }
            Err(e) => {
                tracing::debug!(error = %crate::error_chain(&e), "cannot count pending mints")
            }
        }
    }

    /// The subscription id behind a key: its Subscription's, else its VM's,
    /// else a mint record's (a subscription undone by a reorg mid-mint).
    fn subscription_id(&self, name: &str) -> Result<Option<u64>, MintError> {
        if let Some(sub) = self.store.get::<Subscription>(name)? {
            return Ok(Some(sub.spec.subscription_id));
        }
        if let Some(vm) = self.store.get::<VirtualMachine>(name)?
            && let VmSource::Chain { subscription_id } = vm.spec.source
        {
            return Ok(Some(subscription_id));
        }
        let recs = self.store.mint_records(&self.cfg.scope)?;
        Ok(recs
            .into_iter()
            .find(|r| r.vm == name)
            .map(|r| r.subscription_id))
    }

    /// One mint reconcile: settle a pending mint, repair a recorded token id,
    /// or start the mint of a running VM.
    async fn mint(&self, name: &str) -> Result<Action, MintError> {
        let Some(id) = self.subscription_id(name)? else {
            return Ok(Action::Done);
        };
        match self.store.mint_record(&self.cfg.scope, id)? {
            Some(rec) if rec.pending() => return self.settle(rec).await,
            // Minted: the status writes are repaired (a reorg undo, a crash
            // between the record and the status writes).
            Some(rec) => {
                if let Some(token) = rec.token_id() {
                    self.write_token(&rec, token, false).await?;
                }
                return Ok(Action::Done);
            }
            None => {}
        }
        let Some(vm) = self.store.get::<VirtualMachine>(name)? else {
            return Ok(Action::Done);
        };
        let Some(sub) = self.store.get::<Subscription>(name)? else {
            return Ok(Action::Done);
        };
        if !needs_mint(&vm) || sub.spec.cancelled || sub.status.nft_token_id.is_some() {
            return Ok(Action::Done);
        }
        let rec = self.start(&vm, &sub).await?;
        self.count_pending();
        Ok(self.next(&rec))
    }

    /// When to look at a record again.
    fn next(&self, rec: &MintRecord) -> Action {
        if rec.pending() {
            Action::RequeueAfter(self.cfg.pending_poll)
        } else {
            Action::Done
        }
    }

    /// Advances a pending mint.
    async fn settle(&self, rec: MintRecord) -> Result<Action, MintError> {
        let action = match self.advance(rec).await? {
            Some(rec) => self.next(&rec),
            // Dropped: a new mint starts on the next visit.
            None => Action::RequeueAfter(self.cfg.pending_poll),
        };
        if action == Action::Done {
            self.count_pending();
        }
        Ok(action)
    }
}

/// Keys to resync: every subscription, and the names of pending mints whose
/// subscription is gone.
fn keys(store: &Store, scope: &str) -> Result<Vec<String>, StoreError> {
    let mut names: BTreeSet<String> = store
        .for_each_names(Subscription::KIND)?
        .into_iter()
        .collect();
    names.extend(
        store
            .mint_records(scope)?
            .into_iter()
            .filter(MintRecord::pending)
            .map(|r| r.vm),
    );
    Ok(names.into_iter().collect())
}

/// Whether a changed object (JSON) is a running chain VM without a token.
fn running_chain_vm(object: &[u8]) -> bool {
    serde_json::from_slice::<VirtualMachine>(object).is_ok_and(|vm| needs_mint(&vm))
}

fn needs_mint(vm: &VirtualMachine) -> bool {
    matches!(vm.spec.source, VmSource::Chain { .. })
        && vm.status.phase == VmPhase::Running
        && vm.status.nft_token_id.is_none()
        && vm.metadata.deletion_timestamp.is_none()
}

impl Reconciler for Minter {
    type Error = MintError;

    fn name(&self) -> &'static str {
        "mint"
    }

    fn error_policy(&self, error: &MintError) -> ErrorPolicy {
        ErrorPolicy {
            reason: error.reason().as_str(),
            retry: error.retry(),
        }
    }

    async fn before_resync(&self) {
        self.count_pending();
    }

    async fn reconcile(&self, name: String) -> Result<Action, MintError> {
        let result = self.mint(&name).await;
        if let Err(e) = &result {
            self.report_failure(&name, e).await;
        }
        result
    }
}

impl Minter {
    /// The `mint(to, payload)` call data: the VM's address and user, encrypted
    /// under the buyer's signature.
    fn mint_call(&self, vm: &VirtualMachine, sub: &Subscription) -> Result<Vec<u8>, MintError> {
        let id = sub.spec.subscription_id;
        let sig = self
            .store
            .chain_signature(&self.cfg.scope, id)?
            .and_then(|b| <[u8; 65]>::try_from(b.as_slice()).ok())
            .map(Signature::from_bytes)
            .ok_or(MintError::NoSignature(id))?;
        let hostname = vm
            .status
            .addresses
            .ipv6
            .clone()
            .or_else(|| vm.status.addresses.ipv4.clone())
            .ok_or_else(|| MintError::NoAddress(vm.metadata.name.to_string()))?;
        let details = ConnectionDetails {
            hostname,
            port: SSH_PORT,
            username: vm.spec.guest_user.to_string(),
        };
        let payload = nft_payload::encrypt(&sig, &details)?;
        Ok(Nft::mintCall {
            to: Address::from(*sub.spec.subscriber.as_bytes()),
            userEncrypted: Bytes::from(payload),
        }
        .abi_encode())
    }

    /// Builds, signs, records and broadcasts the mint of one subscription.
    async fn start(
        &self,
        vm: &VirtualMachine,
        sub: &Subscription,
    ) -> Result<MintRecord, MintError> {
        let id = sub.spec.subscription_id;
        let scope = self.cfg.scope.clone();
        let data = self.mint_call(vm, sub)?;
        let recipient = *sub.spec.subscriber.as_bytes();
        let rec = {
            // One nonce choice at a time, until the record that holds it is stored.
            let _one = self.nonce.lock().await;
            // Our own in-flight nonces count even if the node lost them.
            let local_next = self
                .store
                .mint_records(&scope)?
                .iter()
                .filter(|r| r.pending())
                .map(|r| r.nonce + 1)
                .max()
                .unwrap_or(0);
            let nonce = self.wallet.nonce("pending").await?.max(local_next);
            let tx = self.wallet.prepare(Some(self.cfg.nft), data, nonce).await?;
            self.wallet.ensure_funds(&tx).await?;
            let attempt = self.sign(&tx)?;
            let rec = MintRecord {
                subscription_id: id,
                vm: vm.metadata.name.to_string(),
                recipient: hex0x(&recipient),
                nonce,
                attempts: vec![attempt],
                state: MintState::Pending,
                created_at: chrono::Utc::now(),
            };
            self.save(&rec).await?;
            rec
        };
        let nonce = rec.nonce;
        self.count("signed");
        tracing::info!(
            subscription = id,
            vm = %rec.vm,
            nonce,
            tx = %rec.attempts[0].hash,
            "minting access NFT"
        );
        self.broadcast(&rec).await?;
        // A dev chain mines at once; look for the receipt right away so the
        // token id shows up without waiting for the next poll.
        match self.advance(rec.clone()).await? {
            Some(r) => Ok(r),
            None => Ok(rec),
        }
    }

    fn sign(&self, tx: &Eip1559Tx) -> Result<MintAttempt, MintError> {
        let signed = self.wallet.sign(tx).map_err(WalletError::from)?;
        Ok(MintAttempt {
            hash: hex0x(&signed.hash),
            raw: hex0x(&signed.raw),
            max_fee: tx.max_fee_per_gas.to_string(),
            priority_fee: tx.max_priority_fee_per_gas.to_string(),
            signed_at: chrono::Utc::now(),
        })
    }

    async fn save(&self, rec: &MintRecord) -> Result<(), MintError> {
        let scope = self.cfg.scope.clone();
        let rec = rec.clone();
        self.blocking(move |st| st.put_mint_record(&scope, &rec))
            .await
    }

    /// Sends the latest attempt's stored bytes.
    async fn broadcast(&self, rec: &MintRecord) -> Result<(), MintError> {
        let Some(last) = rec.attempts.last() else {
            return Ok(());
        };
        let Some(raw) = last
            .raw
            .strip_prefix("0x")
            .and_then(|h| hex::decode(h).ok())
        else {
            return Err(MintError::StoredTx(last.hash.clone()));
        };
        let hash = parse_hex::<32>(&last.hash).unwrap_or_default();
        match self
            .wallet
            .send_raw(&blockhost_chain::tx::SignedTx { raw, hash })
            .await
        {
            Ok(()) => Ok(()),
            // Already mined, or replaced: the next step tells which.
            Err(SendError::NonceTooLow(m)) => {
                tracing::debug!(tx = %last.hash, message = %m, "nonce already used");
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Moves a pending mint on. `Ok(None)`: the record was dropped (its nonce
    /// went to another transaction); a new mint starts at the next visit.
    async fn advance(&self, mut rec: MintRecord) -> Result<Option<MintRecord>, MintError> {
        // Nonce first, receipts second (see the module doc).
        let mined_nonce = self.wallet.nonce("latest").await?;
        for a in rec.attempts.iter().rev() {
            let Some(hash) = parse_hex::<32>(&a.hash) else {
                continue;
            };
            if let Some(r) = self.wallet.receipt(&hash).await? {
                let a = a.clone();
                return self.mined(rec, &a, r).await;
            }
        }
        if mined_nonce > rec.nonce {
            return self.nonce_used(rec).await;
        }
        let Some(last) = rec.attempts.last().cloned() else {
            return Ok(Some(rec));
        };
        let age = chrono::Utc::now()
            .signed_duration_since(last.signed_at)
            .to_std()
            .unwrap_or_default();
        if age >= self.cfg.bump_after && rec.attempts.len() < MAX_ATTEMPTS {
            self.bump(&mut rec, &last).await?;
        } else if !self
            .wallet
            .known(&parse_hex::<32>(&last.hash).unwrap_or_default())
            .await?
        {
            tracing::info!(subscription = rec.subscription_id, tx = %last.hash, "node does not know the mint transaction; sending it again");
            self.broadcast(&rec).await?;
        }
        Ok(Some(rec))
    }

    /// One attempt has a receipt: wait for its confirmations, then record the
    /// token (or, if it reverted, drop the record so a new mint is signed).
    async fn mined(
        &self,
        mut rec: MintRecord,
        a: &MintAttempt,
        r: Receipt,
    ) -> Result<Option<MintRecord>, MintError> {
        let id = rec.subscription_id;
        let head = self.wallet.head().await?;
        if head.saturating_sub(r.block_number) + 1 < self.cfg.confirmations.max(1) {
            return Ok(Some(rec));
        }
        if !r.success {
            // The nonce is spent; a new transaction is needed. The error keeps
            // the evidence in the log, the condition and the event.
            self.count("reverted");
            let scope = self.cfg.scope.clone();
            self.blocking(move |st| st.drop_mint_record(&scope, id))
                .await?;
            return Err(MintError::Reverted {
                transaction: a.hash.clone(),
                block: r.block_number,
            });
        }
        let recipient = parse_hex::<20>(&rec.recipient).unwrap_or_default();
        let token = token_from_receipt(&r, self.cfg.nft, recipient)
            .ok_or_else(|| MintError::NoTokenInReceipt(a.hash.clone()))?;
        rec.state = MintState::Minted {
            token_id: token,
            block: r.block_number,
            transaction: a.hash.clone(),
        };
        self.save(&rec).await?;
        self.count("minted");
        tracing::info!(subscription = id, token, tx = %a.hash, block = r.block_number, "access NFT minted");
        self.write_token(&rec, token, true).await?;
        Ok(Some(rec))
    }

    /// Our nonce is used and no attempt has a receipt. Either a receipt is
    /// about to appear (the node counts the nonce first), or another
    /// transaction took the nonce. Only the second, seen for a while with none
    /// of our attempts known to the node, is a drop.
    async fn nonce_used(&self, rec: MintRecord) -> Result<Option<MintRecord>, MintError> {
        let id = rec.subscription_id;
        for a in &rec.attempts {
            if let Some(hash) = parse_hex::<32>(&a.hash)
                && self.wallet.known(&hash).await?
            {
                return Ok(Some(rec));
            }
        }
        let since = match self.nonce_taken.lock() {
            Ok(mut m) => *m.entry(id).or_insert_with(Instant::now),
            Err(_) => Instant::now(),
        };
        if since.elapsed() < self.cfg.drop_after {
            return Ok(Some(rec));
        }
        if let Ok(mut m) = self.nonce_taken.lock() {
            m.remove(&id);
        }
        self.count("dropped");
        tracing::warn!(
            subscription = id,
            nonce = rec.nonce,
            "the server wallet's nonce was used by another transaction; minting again"
        );
        let scope = self.cfg.scope.clone();
        self.blocking(move |st| st.drop_mint_record(&scope, id))
            .await?;
        Ok(None)
    }

    /// Re-signs the mint with the same nonce and fees raised by at least 15 %
    /// (nodes require 10 % to replace), or to the current price if higher.
    async fn bump(&self, rec: &mut MintRecord, last: &MintAttempt) -> Result<(), MintError> {
        let raw = last
            .raw
            .strip_prefix("0x")
            .and_then(|h| hex::decode(h).ok())
            .unwrap_or_default();
        let old_max: u128 = last.max_fee.parse().unwrap_or(0);
        let old_tip: u128 = last.priority_fee.parse().unwrap_or(0);
        let fees = self.wallet.fees().await?;
        let raise = |old: u128| old.saturating_mul(115) / 100 + 1;
        let max_fee = fees.max_fee.max(raise(old_max));
        let tip = fees.priority_fee.max(raise(old_tip)).min(max_fee);
        // Same call data and gas as the stored transaction: decode what we need
        // from our own record instead of re-encrypting (a new payload nonce
        // would be harmless, but identical content is easier to audit).
        let Some(tx) = decode_own_tx(&raw) else {
            return Err(MintError::StoredTx(last.hash.clone()));
        };
        let tx = Eip1559Tx {
            max_fee_per_gas: max_fee,
            max_priority_fee_per_gas: tip,
            ..tx
        };
        self.wallet.ensure_funds(&tx).await?;
        let attempt = self.sign(&tx)?;
        tracing::info!(subscription = rec.subscription_id, nonce = rec.nonce, old = %last.hash, new = %attempt.hash, max_fee, "mint pending too long; replacing it with higher fees");
        rec.attempts.push(attempt);
        self.save(rec).await?;
        self.count("bumped");
        match self.broadcast(rec).await {
            Ok(()) | Err(MintError::Send(SendError::Underpriced(_))) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Writes the token id into the Subscription and VM statuses (idempotent),
    /// with events when `announce`.
    async fn write_token(
        &self,
        rec: &MintRecord,
        token: u64,
        announce: bool,
    ) -> Result<(), MintError> {
        let name = rec.vm.clone();
        let now = self.store.now();
        let msg = format!(
            "access NFT #{token} minted to {} (transaction {})",
            rec.recipient,
            match &rec.state {
                MintState::Minted { transaction, .. } => transaction.as_str(),
                MintState::Pending => "?",
            }
        );
        let cond = Condition::new(
            CONDITION,
            ConditionStatus::True,
            Reason::Minted,
            msg.clone(),
            now,
        );
        let (n1, n2) = (name.clone(), name.clone());
        let wrote_vm = self
            .blocking(move |st| {
                // The VM first: the subscription's token id is the public
                // signal (status endpoint, bhctl) that minting is complete.
                let mut wrote = false;
                st.update_status_as::<VirtualMachine>(Writer::Minter, &n2, |v| {
                    wrote = v.status.nft_token_id != Some(token);
                    v.status.nft_token_id = Some(token);
                    wrote
                })?;
                st.update_status_as::<Subscription>(Writer::Minter, &n1, |s| {
                    let a = s.status.nft_token_id != Some(token);
                    s.status.nft_token_id = Some(token);
                    let b = set_condition(&mut s.status.conditions, cond);
                    a || b
                })?;
                Ok(wrote)
            })
            .await?;
        if announce {
            let (n, m) = (name.clone(), msg.clone());
            self.blocking(move |st| {
                st.record_event(Subscription::KIND, &n, EventType::Normal, "NftMinted", &m)?;
                st.record_event(VirtualMachine::KIND, &n, EventType::Normal, "NftMinted", &m)
            })
            .await?;
        }
        if wrote_vm && let Some(tx) = &self.nudge {
            // The reconciler rewrites the access file with the token id.
            let _ = tx.send(Trigger::Key(name)).await;
        }
        Ok(())
    }

    /// Sets the `NftMinted` condition on a subscription; records an event when
    /// it changed.
    async fn condition(&self, name: &str, status: ConditionStatus, reason: Reason, message: &str) {
        let cond = Condition::new(CONDITION, status, reason, message, self.store.now());
        let (key, message) = (name.to_owned(), message.to_owned());
        let res = self
            .blocking(move |st| {
                let mut changed = false;
                st.update_status_as::<Subscription>(Writer::Minter, &key, |s| {
                    changed = set_condition(&mut s.status.conditions, cond);
                    changed
                })?;
                if changed {
                    st.record_event(
                        Subscription::KIND,
                        &key,
                        EventType::Warning,
                        reason.as_str(),
                        &message,
                    )?;
                }
                Ok(())
            })
            .await;
        if let Err(e) = res {
            tracing::warn!(subscription = name, error = %crate::error_chain(&e), "cannot record the mint condition");
        }
    }

    async fn report_failure(&self, name: &str, e: &MintError) {
        let reason = e.reason();
        self.count(match reason {
            Reason::InsufficientFunds => "insufficient_funds",
            _ => "error",
        });
        let hint = match e {
            MintError::Wallet(WalletError::WouldRevert(m))
                if m.contains("OwnableUnauthorizedAccount") =>
            {
                format!(
                    " (the server wallet {} does not own the NFT contract: deploy with `bhctl chain deploy` using chain.serverKeyFile, or transfer ownership to it)",
                    self.wallet.address()
                )
            }
            _ => String::new(),
        };
        let message = format!("{}{hint}", crate::error_chain(e));
        tracing::warn!(subscription = name, reason = reason.as_str(), error = %message, "cannot mint the access NFT");
        self.condition(name, ConditionStatus::False, reason, &message)
            .await;
    }
}

/// Reads back the fields of a type-2 transaction this module signed (for fee
/// bumps), with alloy's RLP decoder.
fn decode_own_tx(raw: &[u8]) -> Option<Eip1559Tx> {
    use alloy_rlp::{Decodable, Header};
    let mut buf = raw.strip_prefix(&[blockhost_chain::tx::EIP1559_TYPE])?;
    let h = Header::decode(&mut buf).ok()?;
    if !h.list {
        return None;
    }
    let mut list = buf.get(..h.payload_length)?;
    let chain_id = u64::decode(&mut list).ok()?;
    let nonce = u64::decode(&mut list).ok()?;
    let max_priority_fee_per_gas = u128::decode(&mut list).ok()?;
    let max_fee_per_gas = u128::decode(&mut list).ok()?;
    let gas_limit = u64::decode(&mut list).ok()?;
    let to = Header::decode_bytes(&mut list, false).ok()?;
    let value = Header::decode_bytes(&mut list, false).ok()?;
    let input = Header::decode_bytes(&mut list, false).ok()?;
    Some(Eip1559Tx {
        chain_id,
        nonce,
        max_priority_fee_per_gas,
        max_fee_per_gas,
        gas_limit,
        to: if to.is_empty() {
            None
        } else {
            Some(<[u8; 20]>::try_from(to).ok()?)
        },
        value: U256::try_from_be_slice(value)?,
        input: input.to_vec(),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use blockhost_chain::node::RawLog;
    use k256::ecdsa::SigningKey;

    #[test]
    fn the_error_policy_waits_long_only_for_what_an_operator_must_fix() {
        let funds = MintError::Wallet(WalletError::InsufficientFunds {
            address: blockhost_crd::WalletAddress::from_bytes([1; 20]),
            balance: U256::ZERO,
            needed: U256::from(1u8),
        });
        let cases = [
            (funds, Reason::InsufficientFunds, Retry::Operator),
            (
                MintError::Send(SendError::InsufficientFunds("low".into())),
                Reason::InsufficientFunds,
                Retry::Operator,
            ),
            (
                MintError::Wallet(WalletError::WouldRevert(
                    "OwnableUnauthorizedAccount".into(),
                )),
                Reason::MintWouldRevert,
                Retry::Operator,
            ),
            (
                MintError::NoSignature(1),
                Reason::NoSignature,
                Retry::Operator,
            ),
            (
                MintError::NoAddress("vm".into()),
                Reason::NoAddress,
                Retry::Transient,
            ),
            (
                MintError::Reverted {
                    transaction: "0xab".into(),
                    block: 9,
                },
                Reason::MintReverted,
                Retry::Transient,
            ),
            (
                MintError::Send(SendError::Rejected("gas".into())),
                Reason::MintFailed,
                Retry::Transient,
            ),
        ];
        for (e, reason, retry) in cases {
            assert_eq!((e.reason(), e.retry()), (reason, retry), "{e}");
        }
    }

    #[test]
    fn own_transactions_decode_back() {
        let key = SigningKey::from_slice(&[7u8; 32]).unwrap();
        for input in [vec![], vec![0xab; 3], vec![0xcd; 300]] {
            let tx = Eip1559Tx {
                chain_id: 31337,
                nonce: 300,
                max_priority_fee_per_gas: 1_000_000_000,
                max_fee_per_gas: 2_000_000_123,
                gas_limit: 250_000,
                to: Some([0x42; 20]),
                value: U256::ZERO,
                input,
            };
            let signed = tx.sign(&key).unwrap();
            assert_eq!(decode_own_tx(&signed.raw).unwrap(), tx);
        }
        assert!(decode_own_tx(&[0x02, 0xf8]).is_none());
        assert!(decode_own_tx(&[]).is_none());
    }

    fn log(address: [u8; 20], topics: Vec<[u8; 32]>) -> RawLog {
        RawLog {
            address,
            topics,
            data: vec![],
            block_number: 1,
            block_hash: [0; 32],
            log_index: 0,
            transaction_hash: [0; 32],
        }
    }

    #[test]
    fn token_id_comes_from_the_receipt_event() {
        let nft = [0x11; 20];
        let who = [0x22; 20];
        let mut to_topic = [0u8; 32];
        to_topic[12..].copy_from_slice(&who);
        let token = |n: u64| U256::from(n).to_be_bytes::<32>();
        let transfer = log(
            nft,
            vec![Nft::Transfer::SIGNATURE_HASH.0, [0; 32], to_topic, token(5)],
        );
        let minted = log(
            nft,
            vec![Nft::CredentialMinted::SIGNATURE_HASH.0, token(5), to_topic],
        );
        let mut r = Receipt {
            hash: [0; 32],
            success: true,
            block_number: 1,
            block_hash: [0; 32],
            contract_address: None,
            logs: vec![transfer.clone(), minted],
        };
        assert_eq!(token_from_receipt(&r, nft, who), Some(5));
        // Transfer alone is enough.
        r.logs = vec![transfer.clone()];
        assert_eq!(token_from_receipt(&r, nft, who), Some(5));
        // Another contract's events, or a mint to someone else, are not ours.
        r.logs = vec![log([0x33; 20], transfer.topics.clone())];
        assert_eq!(token_from_receipt(&r, nft, who), None);
        assert_eq!(token_from_receipt(&r, nft, [0x44; 20]), None);
    }
}
