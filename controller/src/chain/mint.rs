//! The minter: once a chain-sourced VM first runs, mint its access NFT to the
//! subscriber, carrying the connection details encrypted under the buyer's
//! signature (REFERENCE.md §2), and record the token id from the receipt.
//!
//! Exactly one NFT per subscription, whatever crashes:
//! 1. The `mint(to, payload)` transaction is signed and its raw bytes, hash and
//!    nonce are stored durably (`store::mint`) **before** it is broadcast.
//! 2. Each pass looks at pending records: first the wallet's mined nonce, then
//!    the receipts of every attempt. A receipt (with the configured
//!    confirmations) settles the record; the token id is read from the receipt's
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
//! `NftMinted=False` condition and an event on the `Subscription`, and retry
//! with per-subscription exponential backoff. The token id goes to
//! `Subscription.status.nftTokenId` and `VirtualMachine.status.nftTokenId`;
//! the VM reconciler is nudged so the access file names it.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
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
use blockhost_crd::{Subscription, VirtualMachine};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::reconcile::runtime::Trigger;
use crate::store::mint::{MintAttempt, MintRecord, MintState};
use crate::store::{ChangeKind, Store, StoreError, Writer};
use blockhost_chain::node::NodeError;
use blockhost_chain::wallet::{Receipt, SendError, ServerWallet, WalletError};

/// The condition type the minter owns on `Subscription` objects.
pub const CONDITION: &str = "NftMinted";

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
    /// How often pending mints are checked.
    pub pending_poll: Duration,
    /// How often every VM is looked at (besides reacting to changes).
    pub full_scan: Duration,
    /// First retry delay after a failure (doubles up to `max_backoff`).
    pub min_backoff: Duration,
    /// Longest retry delay.
    pub max_backoff: Duration,
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
            max_backoff: Duration::from_secs(300),
            drop_after: Duration::from_secs(30),
        }
    }
}

/// Why one mint step failed.
#[derive(Debug, thiserror::Error)]
pub enum MintError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
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
        "transaction {0} minted no credential to the subscriber (no CredentialMinted event in its receipt)"
    )]
    NoTokenInReceipt(String),
    /// The payload could not be encrypted.
    #[error("cannot encrypt the connection details")]
    Payload(#[from] nft_payload::NftPayloadError),
    /// A blocking store task died.
    #[error("store task failed: {0}")]
    Task(String),
}

impl MintError {
    /// Condition reason and metric label.
    fn reason(&self) -> &'static str {
        match self {
            MintError::Wallet(WalletError::InsufficientFunds { .. })
            | MintError::Send(SendError::InsufficientFunds(_)) => "InsufficientFunds",
            MintError::Wallet(WalletError::WouldRevert(_)) => "MintWouldRevert",
            MintError::Node(_)
            | MintError::Wallet(WalletError::Node(_))
            | MintError::Send(SendError::Node(_)) => "NodeUnavailable",
            MintError::NoSignature(_) => "NoSignature",
            MintError::NoAddress(_) => "NoAddress",
            _ => "MintFailed",
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Backoff {
    failures: u32,
    until: Instant,
}

/// The minting loop.
#[derive(Debug)]
pub struct Minter {
    wallet: ServerWallet,
    store: Store,
    cfg: MintConfig,
    metrics: Arc<Metrics>,
    nudge: Option<mpsc::Sender<Trigger>>,
    backoff: HashMap<u64, Backoff>,
    /// When each pending mint's nonce was first seen used by an unknown
    /// transaction (see [`MintConfig::drop_after`]).
    nonce_taken: HashMap<u64, Instant>,
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
            backoff: HashMap::new(),
            nonce_taken: HashMap::new(),
        }
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, MintError> {
        self.store.blocking(f).await.map_err(MintError::from)
    }

    fn count(&self, outcome: &str) {
        self.metrics
            .chain_mints
            .get_or_create(&vec![("outcome".into(), outcome.into())])
            .inc();
    }

    /// Runs until `shutdown`.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut changes = self.store.subscribe();
        tracing::info!(wallet = %self.wallet.address(), nft = %hex0x(&self.cfg.nft), "minter starting");
        let mut last_full = None::<Instant>;
        let mut wanted = BTreeSet::new();
        loop {
            let full = last_full.is_none_or(|t| t.elapsed() >= self.cfg.full_scan);
            if full {
                last_full = Some(Instant::now());
            }
            let pending = match self.pass(full, std::mem::take(&mut wanted)).await {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(error = %crate::error_chain(&e), "minter pass failed; retrying");
                    self.count("error");
                    true
                }
            };
            let wait = if pending {
                self.cfg.pending_poll
            } else {
                self.cfg.full_scan
            };
            let sleep = tokio::time::sleep(wait);
            tokio::pin!(sleep);
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = &mut sleep => break,
                    c = changes.recv() => match c {
                        Ok(c) if c.kind == VirtualMachine::KIND && c.what != ChangeKind::Deleted => {
                            if Self::running_chain_vm(&c.object) {
                                wanted.insert(c.name);
                                break;
                            }
                        }
                        Ok(_) => {}
                        Err(RecvError::Lagged(_)) => { last_full = None; break; }
                        Err(RecvError::Closed) => return,
                    },
                }
            }
            // Collect whatever else arrived, so a burst costs one pass.
            while let Ok(c) = changes.try_recv() {
                if c.kind == VirtualMachine::KIND
                    && c.what != ChangeKind::Deleted
                    && Self::running_chain_vm(&c.object)
                {
                    wanted.insert(c.name);
                }
            }
        }
    }

    /// Whether a changed object (JSON) is a running chain VM without a token.
    fn running_chain_vm(object: &[u8]) -> bool {
        serde_json::from_slice::<VirtualMachine>(object).is_ok_and(|vm| Self::needs_mint(&vm))
    }

    fn needs_mint(vm: &VirtualMachine) -> bool {
        matches!(vm.spec.source, VmSource::Chain { .. })
            && vm.status.phase == VmPhase::Running
            && vm.status.nft_token_id.is_none()
            && vm.metadata.deletion_timestamp.is_none()
    }

    fn backing_off(&self, id: u64) -> bool {
        self.backoff
            .get(&id)
            .is_some_and(|b| Instant::now() < b.until)
    }

    fn failed(&mut self, id: u64) -> Duration {
        let b = self.backoff.entry(id).or_insert(Backoff {
            failures: 0,
            until: Instant::now(),
        });
        b.failures = b.failures.saturating_add(1);
        let exp = self
            .cfg
            .min_backoff
            .saturating_mul(1u32 << (b.failures - 1).min(16));
        let delay = exp.min(self.cfg.max_backoff);
        b.until = Instant::now() + delay;
        delay
    }

    /// One pass: advance pending mints, repair recorded token ids, start mints
    /// for running VMs. Returns whether any mint is still pending.
    pub async fn pass(&mut self, full: bool, wanted: BTreeSet<String>) -> Result<bool, MintError> {
        let scope = self.cfg.scope.clone();
        let records = {
            let s = scope.clone();
            self.blocking(move |st| st.mint_records(&s)).await?
        };
        let mut known: HashMap<u64, MintRecord> = HashMap::new();
        for rec in records {
            known.insert(rec.subscription_id, rec);
        }

        // 1. Pending mints.
        let pending: Vec<u64> = known
            .values()
            .filter(|r| r.pending())
            .map(|r| r.subscription_id)
            .collect();
        let mut still_pending = 0;
        for id in pending {
            if self.backing_off(id) {
                still_pending += 1;
                continue;
            }
            let Some(rec) = known.get(&id).cloned() else {
                continue;
            };
            match self.advance(rec).await {
                Ok(Some(rec)) => {
                    if rec.pending() {
                        still_pending += 1;
                    }
                    known.insert(id, rec);
                }
                Ok(None) => {
                    known.remove(&id);
                }
                Err(e) => {
                    still_pending += 1;
                    self.report_failure(id, &e).await;
                }
            }
        }

        // 2. Token ids recorded but missing from the objects (a reorg undo, a
        //    crash between the record and the status writes).
        if full {
            for rec in known.values() {
                if let Some(token) = rec.token_id() {
                    self.write_token(rec, token, false).await?;
                }
            }
        }

        // 3. New mints.
        let candidates: Vec<VirtualMachine> = if full {
            self.store.list::<VirtualMachine>()?
        } else {
            wanted
                .iter()
                .filter_map(|n| self.store.get::<VirtualMachine>(n).ok().flatten())
                .collect()
        };
        for vm in candidates {
            let VmSource::Chain {
                subscription_id: id,
            } = vm.spec.source
            else {
                continue;
            };
            if !Self::needs_mint(&vm) || self.backing_off(id) {
                continue;
            }
            if let Some(rec) = known.get(&id) {
                // Minted (the status write is repaired above) or in flight.
                if let Some(token) = rec.token_id()
                    && !full
                {
                    self.write_token(rec, token, false).await?;
                }
                continue;
            }
            let Some(sub) = self.store.get::<Subscription>(vm.metadata.name.as_str())? else {
                continue;
            };
            if sub.spec.cancelled || sub.status.nft_token_id.is_some() {
                continue;
            }
            // Our own in-flight nonces count even if the node lost them.
            let local_next = known
                .values()
                .filter(|r| r.pending())
                .map(|r| r.nonce + 1)
                .max()
                .unwrap_or(0);
            match self.start(&vm, &sub, local_next).await {
                Ok(rec) => {
                    if rec.pending() {
                        still_pending += 1;
                    }
                    known.insert(id, rec);
                }
                Err(e) => self.report_failure(id, &e).await,
            }
        }
        self.metrics.chain_mints_pending.set(still_pending);
        Ok(still_pending > 0)
    }

    /// Builds, signs, records and broadcasts the mint of one subscription, at
    /// a nonce no lower than `local_next` (past our own pending mints).
    async fn start(
        &mut self,
        vm: &VirtualMachine,
        sub: &Subscription,
        local_next: u64,
    ) -> Result<MintRecord, MintError> {
        let id = sub.spec.subscription_id;
        let scope = self.cfg.scope.clone();
        let sig = self
            .store
            .chain_signature(&scope, id)?
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
        let recipient = *sub.spec.subscriber.as_bytes();
        let data = Nft::mintCall {
            to: Address::from(recipient),
            userEncrypted: Bytes::from(payload),
        }
        .abi_encode();

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
            return Err(MintError::Task(format!(
                "stored transaction {} is not hex",
                last.hash
            )));
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
    /// went to another transaction); a new mint starts at the next pass.
    async fn advance(&mut self, mut rec: MintRecord) -> Result<Option<MintRecord>, MintError> {
        let id = rec.subscription_id;
        // Nonce first, receipts second (see the module doc).
        let mined_nonce = self.wallet.nonce("latest").await?;
        for a in rec.attempts.iter().rev() {
            let Some(hash) = parse_hex::<32>(&a.hash) else {
                continue;
            };
            let Some(r) = self.wallet.receipt(&hash).await? else {
                continue;
            };
            let head = self.wallet.head().await?;
            if head.saturating_sub(r.block_number) + 1 < self.cfg.confirmations.max(1) {
                return Ok(Some(rec));
            }
            let recipient = parse_hex::<20>(&rec.recipient).unwrap_or_default();
            if !r.success {
                // The nonce is spent; a new transaction is needed. Keep the
                // evidence in the log and the event, then start over later.
                self.count("reverted");
                let msg = format!(
                    "mint transaction {} reverted in block {}; retrying with a new transaction",
                    a.hash, r.block_number
                );
                let scope = self.cfg.scope.clone();
                self.blocking(move |st| st.drop_mint_record(&scope, id))
                    .await?;
                self.condition(id, ConditionStatus::False, "MintReverted", &msg)
                    .await;
                self.failed(id);
                return Ok(None);
            }
            let token = token_from_receipt(&r, self.cfg.nft, recipient)
                .ok_or_else(|| MintError::NoTokenInReceipt(a.hash.clone()))?;
            rec.state = MintState::Minted {
                token_id: token,
                block: r.block_number,
                transaction: a.hash.clone(),
            };
            self.save(&rec).await?;
            self.count("minted");
            self.backoff.remove(&id);
            tracing::info!(subscription = id, token, tx = %a.hash, block = r.block_number, "access NFT minted");
            self.write_token(&rec, token, true).await?;
            return Ok(Some(rec));
        }
        if mined_nonce > rec.nonce {
            // Our nonce is used and no attempt has a receipt. Either a receipt
            // is about to appear (the node counts the nonce first), or another
            // transaction took the nonce. Only the second, seen for a while
            // with none of our attempts known to the node, is a drop.
            for a in &rec.attempts {
                if let Some(hash) = parse_hex::<32>(&a.hash)
                    && self.wallet.known(&hash).await?
                {
                    return Ok(Some(rec));
                }
            }
            let since = *self.nonce_taken.entry(id).or_insert_with(Instant::now);
            if since.elapsed() < self.cfg.drop_after {
                return Ok(Some(rec));
            }
            self.nonce_taken.remove(&id);
            // Our nonce was used, by none of our attempts.
            self.count("dropped");
            tracing::warn!(
                subscription = id,
                nonce = rec.nonce,
                "the server wallet's nonce was used by another transaction; minting again"
            );
            let scope = self.cfg.scope.clone();
            self.blocking(move |st| st.drop_mint_record(&scope, id))
                .await?;
            return Ok(None);
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
            tracing::info!(subscription = id, tx = %last.hash, "node does not know the mint transaction; sending it again");
            self.broadcast(&rec).await?;
        }
        Ok(Some(rec))
    }

    /// Re-signs the mint with the same nonce and fees raised by at least 15 %
    /// (nodes require 10 % to replace), or to the current price if higher.
    async fn bump(&mut self, rec: &mut MintRecord, last: &MintAttempt) -> Result<(), MintError> {
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
            return Err(MintError::Task(format!(
                "cannot re-read stored transaction {}",
                last.hash
            )));
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
        let cond = Condition {
            type_: CONDITION.into(),
            status: ConditionStatus::True,
            reason: "Minted".into(),
            message: msg.clone(),
            last_transition_time: now,
        };
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
    async fn condition(&self, id: u64, status: ConditionStatus, reason: &str, message: &str) {
        let name = blockhost_crd::subscription::vm_name_for(id).to_string();
        let cond = Condition {
            type_: CONDITION.into(),
            status,
            reason: reason.into(),
            message: message.into(),
            last_transition_time: self.store.now(),
        };
        let (reason, message) = (reason.to_owned(), message.to_owned());
        let res = self
            .blocking(move |st| {
                let mut changed = false;
                st.update_status_as::<Subscription>(Writer::Minter, &name, |s| {
                    changed = set_condition(&mut s.status.conditions, cond);
                    changed
                })?;
                if changed {
                    st.record_event(
                        Subscription::KIND,
                        &name,
                        EventType::Warning,
                        &reason,
                        &message,
                    )?;
                }
                Ok(())
            })
            .await;
        if let Err(e) = res {
            tracing::warn!(subscription = id, error = %crate::error_chain(&e), "cannot record the mint condition");
        }
    }

    async fn report_failure(&mut self, id: u64, e: &MintError) {
        let delay = self.failed(id);
        let reason = e.reason();
        self.count(match reason {
            "InsufficientFunds" => "insufficient_funds",
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
        let message = format!(
            "{}{hint}; retrying in {}s",
            crate::error_chain(e),
            delay.as_secs()
        );
        tracing::warn!(subscription = id, reason, error = %message, "cannot mint the access NFT");
        self.condition(id, ConditionStatus::False, reason, &message)
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
