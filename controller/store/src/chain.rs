//! The chain watcher's part of the store: its cursor, per-block undo records, the
//! set of applied events, and the buyers' signatures — all written in the same
//! transaction as the objects a batch of chain events changes.
//!
//! Why one transaction: a crash can then only leave the database before or after a
//! batch, never between "VM written" and "cursor moved". A restart resumes from
//! the cursor and nothing is applied twice or lost.
//!
//! Layout (keys start with a *scope*, `"<chainId>:<subscriptions>:<nft>"`, so a
//! new contract set starts afresh instead of misreading another's history):
//! - `chain_cursor`: scope → the last processed block (number and hash).
//! - `chain_blocks`: (scope, number) → [`BlockRecord`]: the block's hash, the undo
//!   operations of the changes it caused and the ids of its applied events. Kept
//!   for a window of recent blocks; a reorg walks them back to the fork point.
//! - `chain_applied`: `"scope/0xblockhash:logindex"` → block number: an event
//!   applies at most once, whatever delivers it again.
//! - `chain_signatures`: (scope, subscription id) → the buyer's 65-byte signature,
//!   decrypted from `userEncrypted`. It is the key material of the NFT payload, so
//!   it is not an object field: no API route, list or watch can serve it, and it
//!   is only readable in-process through [`Store::chain_signature`] (for minting).
//! - `chain_nft_owners`: (scope, token id) → current holder (20 bytes), from
//!   `Transfer` events, so a transfer seen before the minter records the token id
//!   is not lost.
//!
//! Undo restores what the block's changes replaced. For watcher-owned objects
//! (`Subscription`) that is the whole object; for others (`VirtualMachine`,
//! `Plan`) only spec and labels, because their status, finalizers and identity
//! belong to the reconcilers and still describe real Proxmox state. An object a
//! reverted block created is deleted through the finalizer rules (so a cloned VM
//! is cleaned up, not orphaned).

use std::collections::HashSet;

use blockhost_crd::meta::{Event, EventType};
use blockhost_crd::resource::Resource;
use blockhost_crd::{Subscription, VirtualMachine};
use chrono::{DateTime, Utc};
use redb::{ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{
    Change, ChangeKind, DeleteOutcome, EVENTS, META, META_EVENT_SEQ, META_RV, OBJECTS, Store,
    StoreError, insert_event, key, remove_events,
};

const CURSOR: TableDefinition<&str, &[u8]> = TableDefinition::new("chain_cursor");
const BLOCKS: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("chain_blocks");
const APPLIED: TableDefinition<&str, u64> = TableDefinition::new("chain_applied");
const SIGNATURES: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("chain_signatures");
const NFT_OWNERS: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("chain_nft_owners");

/// A block by number and hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockRef {
    /// Height.
    pub number: u64,
    /// Hash.
    #[serde(with = "hex32")]
    pub hash: [u8; 32],
}

/// What one processed block left behind.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct BlockRecord {
    /// The block's hash when it was processed.
    #[serde(with = "hex32")]
    pub hash: [u8; 32],
    /// What to restore, in the order the changes were made.
    #[serde(default)]
    pub undo: Vec<UndoOp>,
    /// Ids of the events applied from this block.
    #[serde(default)]
    pub applied: Vec<String>,
}

/// One change to undo.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "camelCase")]
pub enum UndoOp {
    /// An object (`"Kind/name"`) and its JSON before the change.
    Object {
        /// Store key.
        key: String,
        /// JSON before, `None` when it did not exist.
        prior: Option<String>,
    },
    /// A buyer signature before the change.
    Signature {
        /// Subscription id.
        id: u64,
        /// Hex before.
        prior: Option<String>,
    },
    /// An NFT holder before the change.
    NftOwner {
        /// Token id.
        token: u64,
        /// Hex before.
        prior: Option<String>,
    },
}

/// One block's events, as handed to [`Store::chain_commit`].
#[derive(Debug, Clone)]
pub struct BlockEvents<E> {
    /// The block.
    pub block: BlockRef,
    /// Its events, in log order, each with its id (`0xblockhash:logindex`).
    pub events: Vec<(String, E)>,
}

/// What a commit did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CommitStats {
    /// Events applied.
    pub applied: usize,
    /// Events skipped because they were applied before.
    pub duplicates: usize,
    /// Objects changed.
    pub changes: usize,
}

/// The view of one write transaction the event mapping works through: reads see
/// the batch's own earlier writes, and every write records its undo.
pub struct ChainTxn<'t> {
    txn: &'t WriteTransaction,
    scope: &'t str,
    now: DateTime<Utc>,
    retention: u32,
    rv: u64,
    seq: u64,
    undo: Vec<UndoOp>,
    touched: HashSet<String>,
    changes: Vec<Change>,
    pools: &'t crate::alloc::Pools,
}

impl std::fmt::Debug for ChainTxn<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChainTxn")
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

fn corrupt(k: &str, source: serde_json::Error) -> StoreError {
    StoreError::Corrupt {
        key: k.to_owned(),
        source,
    }
}

fn kind_str(kind: &str) -> &'static str {
    blockhost_crd::resource::KINDS
        .iter()
        .find(|(k, _, _)| *k == kind)
        .map_or("Unknown", |(k, _, _)| *k)
}

impl<'t> ChainTxn<'t> {
    /// The store's clock at the start of the batch.
    pub fn now(&self) -> DateTime<Utc> {
        self.now
    }

    fn raw(&self, k: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let t = self.txn.open_table(OBJECTS)?;
        Ok(t.get(k)?.map(|g| g.value().to_vec()))
    }

    /// Reads one object.
    pub fn get<R: Resource>(&self, name: &str) -> Result<Option<R>, StoreError> {
        let k = key(R::KIND, name);
        self.raw(&k)?
            .map(|b| serde_json::from_slice(&b).map_err(|e| corrupt(&k, e)))
            .transpose()
    }

    /// Reads every object of a kind.
    pub fn list<R: Resource>(&self) -> Result<Vec<R>, StoreError> {
        let t = self.txn.open_table(OBJECTS)?;
        let start = format!("{}/", R::KIND);
        let end = format!("{}0", R::KIND);
        let mut out = Vec::new();
        for entry in t.range(start.as_str()..end.as_str())? {
            let (k, v) = entry?;
            out.push(serde_json::from_slice(v.value()).map_err(|e| corrupt(k.value(), e))?);
        }
        Ok(out)
    }

    fn remember(&mut self, k: &str, prior: Option<&[u8]>) {
        if self.touched.insert(k.to_owned()) {
            self.undo.push(UndoOp::Object {
                key: k.to_owned(),
                prior: prior.map(|b| String::from_utf8_lossy(b).into_owned()),
            });
        }
    }

    fn next_rv(&mut self) -> u64 {
        self.rv += 1;
        self.rv
    }

    /// Creates an object or replaces its spec and labels (and its status when
    /// `with_status`; the watcher owns the status of `Subscription` only).
    /// Store-owned metadata is kept; `generation` bumps on a spec change. Returns
    /// whether anything was written. An object being deleted is left alone.
    pub fn put<R: Resource>(&mut self, obj: &R, with_status: bool) -> Result<bool, StoreError> {
        let name = obj.meta().name.as_str().to_owned();
        let k = key(R::KIND, &name);
        let existing = self.raw(&k)?;
        let mut new_v = serde_json::to_value(obj).map_err(|e| corrupt(&k, e))?;
        let (value, what) = match &existing {
            None => {
                let rv = self.next_rv();
                let m = &mut new_v["metadata"];
                m["uid"] = uuid::Uuid::new_v4().to_string().into();
                m["generation"] = 1.into();
                m["resourceVersion"] = rv.into();
                m["creationTimestamp"] = serde_json::to_value(self.now).unwrap_or_default();
                if let Some(o) = m.as_object_mut() {
                    o.remove("deletionTimestamp");
                    o.remove("finalizers");
                }
                if !with_status {
                    new_v["status"] =
                        serde_json::to_value(R::Status::default()).map_err(|e| corrupt(&k, e))?;
                }
                (new_v, ChangeKind::Created)
            }
            Some(bytes) => {
                let mut old: Value = serde_json::from_slice(bytes).map_err(|e| corrupt(&k, e))?;
                if !old["metadata"]["deletionTimestamp"].is_null() {
                    return Ok(false);
                }
                let spec_changed = old["spec"] != new_v["spec"]
                    || old["metadata"]["labels"] != new_v["metadata"]["labels"];
                let status_changed = with_status && old["status"] != new_v["status"];
                if !spec_changed && !status_changed {
                    return Ok(false);
                }
                old["spec"] = new_v["spec"].take();
                match new_v["metadata"]["labels"].take() {
                    Value::Null => {
                        if let Some(o) = old["metadata"].as_object_mut() {
                            o.remove("labels");
                        }
                    }
                    l => old["metadata"]["labels"] = l,
                }
                if with_status {
                    old["status"] = new_v["status"].take();
                }
                if spec_changed {
                    let g = old["metadata"]["generation"].as_u64().unwrap_or(1) + 1;
                    old["metadata"]["generation"] = g.into();
                }
                old["metadata"]["resourceVersion"] = self.next_rv().into();
                let what = if spec_changed {
                    ChangeKind::Spec
                } else {
                    ChangeKind::Status
                };
                (old, what)
            }
        };
        // A VM's addresses are allocated in the transaction that stores its spec,
        // as `Store::apply` does (the reconciler never sees a VM without them).
        let value = if R::KIND == VirtualMachine::KIND {
            let mut vm: VirtualMachine =
                serde_json::from_value(value).map_err(|e| corrupt(&k, e))?;
            let st = &mut vm.status;
            crate::alloc::sync_addresses(
                self.txn,
                self.pools,
                &k,
                &vm.spec.network,
                &mut st.addresses,
                &mut st.conditions,
                self.now,
            )?;
            serde_json::to_value(&vm).map_err(|e| corrupt(&k, e))?
        } else {
            value
        };
        // Decode once more: what is stored must be a valid object of its kind.
        let typed: R = serde_json::from_value(value.clone()).map_err(|e| corrupt(&k, e))?;
        let bytes = serde_json::to_vec(&typed).map_err(|e| corrupt(&k, e))?;
        self.remember(&k, existing.as_deref());
        self.txn
            .open_table(OBJECTS)?
            .insert(k.as_str(), bytes.as_slice())?;
        let (reason, msg) = match what {
            ChangeKind::Created => ("Created", "written by the chain watcher".to_string()),
            ChangeKind::Spec => (
                "Configured",
                format!(
                    "spec changed by the chain watcher (generation {})",
                    value["metadata"]["generation"]
                ),
            ),
            _ => ("", String::new()),
        };
        if !reason.is_empty() {
            self.event(R::KIND, &name, EventType::Normal, reason, &msg)?;
        }
        self.changes.push(Change {
            kind: R::KIND,
            name,
            resource_version: self.rv,
            what,
            object: bytes.into(),
        });
        Ok(true)
    }

    /// Deletes an object by the store's rules: at once without finalizers, marked
    /// `Terminating` with them. `None` when it does not exist.
    pub fn delete(&mut self, kind: &str, name: &str) -> Result<Option<DeleteOutcome>, StoreError> {
        let kind = kind_str(kind);
        let k = key(kind, name);
        let Some(bytes) = self.raw(&k)? else {
            return Ok(None);
        };
        let mut value: Value = serde_json::from_slice(&bytes).map_err(|e| corrupt(&k, e))?;
        let has_finalizers = value["metadata"]["finalizers"]
            .as_array()
            .is_some_and(|a| !a.is_empty());
        let rv = self.next_rv();
        self.remember(&k, Some(&bytes));
        if has_finalizers {
            let m = &mut value["metadata"];
            if m["deletionTimestamp"].is_null() {
                m["deletionTimestamp"] = serde_json::to_value(self.now).unwrap_or_default();
                m["generation"] = (m["generation"].as_u64().unwrap_or(0) + 1).into();
            }
            m["resourceVersion"] = rv.into();
            let out = serde_json::to_vec(&value).map_err(|e| corrupt(&k, e))?;
            self.txn
                .open_table(OBJECTS)?
                .insert(k.as_str(), out.as_slice())?;
            self.event(
                kind,
                name,
                EventType::Normal,
                "DeletionRequested",
                "deleted by the chain watcher; waiting for controllers to clean up",
            )?;
            self.changes.push(Change {
                kind,
                name: name.into(),
                resource_version: rv,
                what: ChangeKind::Spec,
                object: out.into(),
            });
            Ok(Some(DeleteOutcome::Terminating))
        } else {
            self.txn.open_table(OBJECTS)?.remove(k.as_str())?;
            remove_events(self.txn, &k)?;
            crate::alloc::release_all(self.txn, &k, &value)?;
            self.changes.push(Change {
                kind,
                name: name.into(),
                resource_version: rv,
                what: ChangeKind::Deleted,
                object: bytes.into(),
            });
            Ok(Some(DeleteOutcome::Deleted))
        }
    }

    /// Appends an event to an object's log.
    pub fn event(
        &mut self,
        kind: &str,
        name: &str,
        type_: EventType,
        reason: &str,
        message: &str,
    ) -> Result<(), StoreError> {
        let kind = kind_str(kind);
        let k = key(kind, name);
        self.seq += 1;
        let ev = Event {
            seq: self.seq,
            time: self.now,
            kind: kind.into(),
            name: name.into(),
            type_,
            reason: reason.into(),
            message: message.into(),
        };
        let mut events = self.txn.open_table(EVENTS)?;
        insert_event(&mut events, &k, &ev, self.retention)
    }

    /// Records (or, with `None`, forgets) the buyer's signature of a subscription.
    pub fn set_signature(&mut self, id: u64, sig: Option<&[u8]>) -> Result<(), StoreError> {
        let mut t = self.txn.open_table(SIGNATURES)?;
        let prior = t.get((self.scope, id))?.map(|g| hex::encode(g.value()));
        if self.touched.insert(format!("sig/{id}")) {
            self.undo.push(UndoOp::Signature { id, prior });
        }
        match sig {
            Some(s) => t.insert((self.scope, id), s)?,
            None => t.remove((self.scope, id))?,
        };
        Ok(())
    }

    /// The recorded holder of an access NFT.
    pub fn nft_owner(&self, token: u64) -> Result<Option<[u8; 20]>, StoreError> {
        let t = self.txn.open_table(NFT_OWNERS)?;
        Ok(t.get((self.scope, token))?
            .and_then(|g| <[u8; 20]>::try_from(g.value()).ok()))
    }

    /// Records (or, with `None`, forgets: burnt) the holder of an access NFT.
    pub fn set_nft_owner(&mut self, token: u64, owner: Option<[u8; 20]>) -> Result<(), StoreError> {
        let mut t = self.txn.open_table(NFT_OWNERS)?;
        let prior = t.get((self.scope, token))?.map(|g| hex::encode(g.value()));
        if self.touched.insert(format!("nft/{token}")) {
            self.undo.push(UndoOp::NftOwner { token, prior });
        }
        match owner {
            Some(o) => t.insert((self.scope, token), o.as_slice())?,
            None => t.remove((self.scope, token))?,
        };
        Ok(())
    }

    fn start_block(&mut self) {
        self.undo.clear();
        self.touched.clear();
    }
}

impl Store {
    /// The last processed block of a scope; `None` before the first batch.
    pub fn chain_cursor(&self, scope: &str) -> Result<Option<BlockRef>, StoreError> {
        let txn = self.inner.db.begin_read()?;
        let t = match txn.open_table(CURSOR) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        t.get(scope)?
            .map(|g| serde_json::from_slice(g.value()).map_err(|e| corrupt(scope, e)))
            .transpose()
    }

    /// The recorded blocks of a scope, newest first (for finding a fork point).
    pub fn chain_blocks(&self, scope: &str) -> Result<Vec<BlockRef>, StoreError> {
        let txn = self.inner.db.begin_read()?;
        let t = match txn.open_table(BLOCKS) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        let mut out = Vec::new();
        for entry in t.range((scope, 0)..=(scope, u64::MAX))?.rev() {
            let (k, v) = entry?;
            let rec: BlockRecord =
                serde_json::from_slice(v.value()).map_err(|e| corrupt(scope, e))?;
            out.push(BlockRef {
                number: k.value().1,
                hash: rec.hash,
            });
        }
        Ok(out)
    }

    /// The buyer's signature for a subscription: key material for the NFT
    /// payload, readable in-process only (no API serves it). Never log it.
    pub fn chain_signature(&self, scope: &str, id: u64) -> Result<Option<Vec<u8>>, StoreError> {
        let txn = self.inner.db.begin_read()?;
        let t = match txn.open_table(SIGNATURES) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        Ok(t.get((scope, id))?.map(|g| g.value().to_vec()))
    }

    /// The holder of an access NFT as last seen in a `Transfer`.
    pub fn chain_nft_owner(&self, scope: &str, token: u64) -> Result<Option<[u8; 20]>, StoreError> {
        let txn = self.inner.db.begin_read()?;
        let t = match txn.open_table(NFT_OWNERS) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        Ok(t.get((scope, token))?
            .and_then(|g| <[u8; 20]>::try_from(g.value()).ok()))
    }

    /// Applies a batch of blocks and moves the cursor to `end`, all in one
    /// durable transaction. Events already applied (by id) are skipped. `finish`
    /// runs last, its changes recorded against `end` (the watcher's resync of
    /// subscriptions waiting for a plan). Blocks older than `end - window` lose
    /// their undo records: a reorg deeper than `window` cannot be undone.
    #[allow(clippy::too_many_arguments)]
    pub fn chain_commit<E>(
        &self,
        scope: &str,
        blocks: &[BlockEvents<E>],
        end: BlockRef,
        window: u64,
        mut apply: impl FnMut(&mut ChainTxn<'_>, &E) -> Result<(), StoreError>,
        finish: impl FnOnce(&mut ChainTxn<'_>) -> Result<(), StoreError>,
    ) -> Result<CommitStats, StoreError> {
        let mut stats = CommitStats::default();
        let txn = self.inner.db.begin_write()?;
        let changes = {
            let (rv, seq) = {
                let meta = txn.open_table(META)?;
                (
                    meta.get(META_RV)?.map(|g| g.value()).unwrap_or(0),
                    meta.get(META_EVENT_SEQ)?.map(|g| g.value()).unwrap_or(0),
                )
            };
            let mut ctx = ChainTxn {
                txn: &txn,
                scope,
                now: self.now(),
                retention: self.inner.opts.event_retention,
                rv,
                seq,
                undo: Vec::new(),
                touched: HashSet::new(),
                changes: Vec::new(),
                pools: &self.inner.opts.pools,
            };
            for b in blocks {
                ctx.start_block();
                let mut applied = Vec::new();
                for (id, ev) in &b.events {
                    let akey = format!("{scope}/{id}");
                    if txn.open_table(APPLIED)?.get(akey.as_str())?.is_some() {
                        stats.duplicates += 1;
                        continue;
                    }
                    apply(&mut ctx, ev)?;
                    txn.open_table(APPLIED)?
                        .insert(akey.as_str(), b.block.number)?;
                    applied.push(id.clone());
                    stats.applied += 1;
                }
                write_record(&txn, scope, b.block, std::mem::take(&mut ctx.undo), applied)?;
            }
            ctx.start_block();
            finish(&mut ctx)?;
            let extra = std::mem::take(&mut ctx.undo);
            // Always recorded: the cursor block's hash is what the next reorg check reads.
            write_record(&txn, scope, end, extra, Vec::new())?;
            let cursor = serde_json::to_vec(&end).map_err(|e| corrupt(scope, e))?;
            txn.open_table(CURSOR)?.insert(scope, cursor.as_slice())?;
            prune(&txn, scope, end.number.saturating_sub(window))?;
            let mut meta = txn.open_table(META)?;
            meta.insert(META_RV, ctx.rv)?;
            meta.insert(META_EVENT_SEQ, ctx.seq)?;
            ctx.changes
        };
        txn.commit()?;
        stats.changes = changes.len();
        self.publish(changes);
        Ok(stats)
    }

    /// Undoes every recorded block above `fork` (newest first) and moves the
    /// cursor back to it, in one transaction. Returns how many blocks were undone.
    pub fn chain_revert(&self, scope: &str, fork: BlockRef) -> Result<usize, StoreError> {
        let txn = self.inner.db.begin_write()?;
        let now = self.now();
        let mut reverted = 0;
        let changes = {
            let records: Vec<(u64, BlockRecord)> = {
                let t = txn.open_table(BLOCKS)?;
                let mut v = Vec::new();
                for entry in t.range((scope, fork.number + 1)..=(scope, u64::MAX))?.rev() {
                    let (k, val) = entry?;
                    let rec: BlockRecord =
                        serde_json::from_slice(val.value()).map_err(|e| corrupt(scope, e))?;
                    v.push((k.value().1, rec));
                }
                v
            };
            let (mut rv, mut seq) = {
                let meta = txn.open_table(META)?;
                (
                    meta.get(META_RV)?.map(|g| g.value()).unwrap_or(0),
                    meta.get(META_EVENT_SEQ)?.map(|g| g.value()).unwrap_or(0),
                )
            };
            let mut changes = Vec::new();
            for (number, rec) in records {
                for op in rec.undo.iter().rev() {
                    undo_one(
                        &txn,
                        scope,
                        op,
                        now,
                        &mut rv,
                        &mut seq,
                        self.inner.opts.event_retention,
                        &mut changes,
                    )?;
                }
                {
                    let mut applied = txn.open_table(APPLIED)?;
                    for id in &rec.applied {
                        applied.remove(format!("{scope}/{id}").as_str())?;
                    }
                }
                txn.open_table(BLOCKS)?.remove((scope, number))?;
                reverted += 1;
            }
            let cursor = serde_json::to_vec(&fork).map_err(|e| corrupt(scope, e))?;
            txn.open_table(CURSOR)?.insert(scope, cursor.as_slice())?;
            let mut meta = txn.open_table(META)?;
            meta.insert(META_RV, rv)?;
            meta.insert(META_EVENT_SEQ, seq)?;
            changes
        };
        txn.commit()?;
        self.publish(changes);
        Ok(reverted)
    }
}

/// Writes a block's record, appending to one already there (a resync recorded
/// against the cursor block after its events).
fn write_record(
    txn: &WriteTransaction,
    scope: &str,
    block: BlockRef,
    undo: Vec<UndoOp>,
    applied: Vec<String>,
) -> Result<(), StoreError> {
    let mut t = txn.open_table(BLOCKS)?;
    let mut rec = match t.get((scope, block.number))? {
        Some(g) => {
            let r: BlockRecord =
                serde_json::from_slice(g.value()).map_err(|e| corrupt(scope, e))?;
            // A record of another hash at this height is from a reverted branch;
            // chain_revert removes those first, so this only guards against misuse.
            if r.hash == block.hash {
                r
            } else {
                BlockRecord::default()
            }
        }
        None => BlockRecord::default(),
    };
    if !undo.is_empty() || !applied.is_empty() || rec.hash != block.hash {
        rec.hash = block.hash;
        rec.undo.extend(undo);
        rec.applied.extend(applied);
        let bytes = serde_json::to_vec(&rec).map_err(|e| corrupt(scope, e))?;
        t.insert((scope, block.number), bytes.as_slice())?;
    }
    Ok(())
}

/// Drops records (and their applied-event ids) of blocks below `below`, keeping
/// the newest one so a reorg check always has an anchor.
fn prune(txn: &WriteTransaction, scope: &str, below: u64) -> Result<(), StoreError> {
    if below == 0 {
        return Ok(());
    }
    let mut t = txn.open_table(BLOCKS)?;
    let mut old = Vec::new();
    for entry in t.range((scope, 0)..(scope, below))? {
        let (k, v) = entry?;
        let rec: BlockRecord = serde_json::from_slice(v.value()).map_err(|e| corrupt(scope, e))?;
        old.push((k.value().1, rec.applied));
    }
    let mut applied = txn.open_table(APPLIED)?;
    for (n, ids) in old {
        t.remove((scope, n))?;
        for id in ids {
            applied.remove(format!("{scope}/{id}").as_str())?;
        }
    }
    Ok(())
}

/// Restores one change of a reverted block.
#[allow(clippy::too_many_arguments)]
fn undo_one(
    txn: &WriteTransaction,
    scope: &str,
    op: &UndoOp,
    now: DateTime<Utc>,
    rv: &mut u64,
    seq: &mut u64,
    retention: u32,
    changes: &mut Vec<Change>,
) -> Result<(), StoreError> {
    match op {
        UndoOp::Signature { id, prior } => {
            let mut t = txn.open_table(SIGNATURES)?;
            match prior.as_deref().map(hex::decode) {
                Some(Ok(b)) => t.insert((scope, *id), b.as_slice())?,
                _ => t.remove((scope, *id))?,
            };
        }
        UndoOp::NftOwner { token, prior } => {
            let mut t = txn.open_table(NFT_OWNERS)?;
            match prior.as_deref().map(hex::decode) {
                Some(Ok(b)) => t.insert((scope, *token), b.as_slice())?,
                _ => t.remove((scope, *token))?,
            };
        }
        UndoOp::Object { key: k, prior } => {
            let (kind, name) = k.split_once('/').unwrap_or((k.as_str(), ""));
            let kind = kind_str(kind);
            let mut table = txn.open_table(OBJECTS)?;
            let current = table.get(k.as_str())?.map(|g| g.value().to_vec());
            let note = |reason: &str, message: &str, seq: &mut u64| -> Result<(), StoreError> {
                *seq += 1;
                let ev = Event {
                    seq: *seq,
                    time: now,
                    kind: kind.into(),
                    name: name.into(),
                    type_: EventType::Warning,
                    reason: reason.into(),
                    message: message.into(),
                };
                let mut events = txn.open_table(EVENTS)?;
                insert_event(&mut events, k, &ev, retention)
            };
            match (prior, current) {
                (None, None) => {}
                (Some(p), None) => {
                    let mut v: Value = serde_json::from_str(p).map_err(|e| corrupt(k, e))?;
                    *rv += 1;
                    v["metadata"]["resourceVersion"] = (*rv).into();
                    let out = serde_json::to_vec(&v).map_err(|e| corrupt(k, e))?;
                    table.insert(k.as_str(), out.as_slice())?;
                    drop(table);
                    note(
                        "Reorg",
                        "restored: the block that removed it was reverted",
                        seq,
                    )?;
                    changes.push(Change {
                        kind,
                        name: name.into(),
                        resource_version: *rv,
                        what: ChangeKind::Created,
                        object: out.into(),
                    });
                }
                (None, Some(cur)) => {
                    let mut v: Value = serde_json::from_slice(&cur).map_err(|e| corrupt(k, e))?;
                    *rv += 1;
                    let has_finalizers = v["metadata"]["finalizers"]
                        .as_array()
                        .is_some_and(|a| !a.is_empty());
                    if has_finalizers {
                        let m = &mut v["metadata"];
                        if m["deletionTimestamp"].is_null() {
                            m["deletionTimestamp"] = serde_json::to_value(now).unwrap_or_default();
                            m["generation"] = (m["generation"].as_u64().unwrap_or(0) + 1).into();
                        }
                        m["resourceVersion"] = (*rv).into();
                        let out = serde_json::to_vec(&v).map_err(|e| corrupt(k, e))?;
                        table.insert(k.as_str(), out.as_slice())?;
                        drop(table);
                        note(
                            "Reorg",
                            "the block that created it was reverted; deleting",
                            seq,
                        )?;
                        changes.push(Change {
                            kind,
                            name: name.into(),
                            resource_version: *rv,
                            what: ChangeKind::Spec,
                            object: out.into(),
                        });
                    } else {
                        table.remove(k.as_str())?;
                        drop(table);
                        remove_events(txn, k)?;
                        crate::alloc::release_all(txn, k, &v)?;
                        changes.push(Change {
                            kind,
                            name: name.into(),
                            resource_version: *rv,
                            what: ChangeKind::Deleted,
                            object: cur.into(),
                        });
                    }
                }
                (Some(p), Some(cur)) => {
                    let prior_v: Value = serde_json::from_str(p).map_err(|e| corrupt(k, e))?;
                    let mut v: Value = serde_json::from_slice(&cur).map_err(|e| corrupt(k, e))?;
                    if !v["metadata"]["deletionTimestamp"].is_null()
                        && prior_v["metadata"]["deletionTimestamp"].is_null()
                    {
                        drop(table);
                        note(
                            "ReorgUndoImpossible",
                            "the block that deleted it was reverted, but its deletion is already under way",
                            seq,
                        )?;
                        return Ok(());
                    }
                    let spec_changed = v["spec"] != prior_v["spec"]
                        || v["metadata"]["labels"] != prior_v["metadata"]["labels"];
                    v["spec"] = prior_v["spec"].clone();
                    v["metadata"]["labels"] = prior_v["metadata"]["labels"].clone();
                    if v["metadata"]["labels"].is_null()
                        && let Some(o) = v["metadata"].as_object_mut()
                    {
                        o.remove("labels");
                    }
                    if kind == Subscription::KIND {
                        // The watcher's status comes back; the minter's token id
                        // (written outside any block) stays.
                        let token = v["status"]["nftTokenId"].take();
                        v["status"] = prior_v["status"].clone();
                        if !token.is_null() {
                            v["status"]["nftTokenId"] = token;
                        }
                    }
                    if spec_changed {
                        let g = v["metadata"]["generation"].as_u64().unwrap_or(1) + 1;
                        v["metadata"]["generation"] = g.into();
                    }
                    *rv += 1;
                    v["metadata"]["resourceVersion"] = (*rv).into();
                    let out = serde_json::to_vec(&v).map_err(|e| corrupt(k, e))?;
                    table.insert(k.as_str(), out.as_slice())?;
                    drop(table);
                    if spec_changed {
                        note(
                            "Reorg",
                            "spec restored: the block that changed it was reverted",
                            seq,
                        )?;
                    }
                    let what = if spec_changed {
                        ChangeKind::Spec
                    } else {
                        ChangeKind::Status
                    };
                    changes.push(Change {
                        kind,
                        name: name.into(),
                        resource_version: *rv,
                        what,
                        object: out.into(),
                    });
                }
            }
        }
    }
    Ok(())
}

/// Hex (de)serialization of 32-byte hashes as `0x…`.
mod hex32 {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(h: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("0x{}", hex::encode(h)))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let s = String::deserialize(d)?;
        let bytes = hex::decode(s.trim_start_matches("0x")).map_err(serde::de::Error::custom)?;
        <[u8; 32]>::try_from(bytes.as_slice())
            .map_err(|_| serde::de::Error::custom("expected 32 bytes"))
    }
}
