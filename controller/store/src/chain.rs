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
//! - `admin_nonces`: admin command nonce → the command's timestamp: a command
//!   is executed at most once, whatever block or reorg delivers it again. Not
//!   undone by a reorg (an executed command stays executed), pruned once far
//!   beyond the age a command may have.
//!
//! Objects are written through the store's one write path ([`WriteTxn`]) as
//! [`Writer::Chain`], and so is their undo: a reverted block's change is undone
//! by writing back the chain's own fields of the object as it was (the
//! operator's suspension, the reconcilers' status and the minter's token id stay,
//! because they still describe what is real). An object a reverted block created
//! is deleted through the finalizer rules (so a cloned VM is cleaned up, not
//! orphaned).

use redb::{ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};
use serde::{Deserialize, Serialize};

use crate::authority::{Kind, Writer};
use crate::write::WriteTxn;
use crate::{DeleteOutcome, Store, StoreError};

const CURSOR: TableDefinition<&str, &[u8]> = TableDefinition::new("chain_cursor");
const BLOCKS: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("chain_blocks");
const APPLIED: TableDefinition<&str, u64> = TableDefinition::new("chain_applied");
const SIGNATURES: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("chain_signatures");
const NFT_OWNERS: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("chain_nft_owners");
const ADMIN_NONCES: TableDefinition<&str, i64> = TableDefinition::new("admin_nonces");

/// Nonces of commands dated this long before the newest are forgotten: such a
/// command is refused as stale whatever its nonce (the limit is 300 s).
pub const ADMIN_NONCE_KEEP_SECS: i64 = 24 * 3600;

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

/// The chain watcher's view of one write transaction: the objects through the
/// store's one write path (as [`Writer::Chain`], recording undo), plus the
/// chain's own tables. Reads see the batch's own earlier writes.
pub struct ChainTxn<'t> {
    w: WriteTxn<'t>,
    scope: &'t str,
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

/// Reads, events and the clock are the write transaction's own.
impl<'t> std::ops::Deref for ChainTxn<'t> {
    type Target = WriteTxn<'t>;

    fn deref(&self) -> &Self::Target {
        &self.w
    }
}

impl std::ops::DerefMut for ChainTxn<'_> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.w
    }
}

impl ChainTxn<'_> {
    /// Creates an object or writes the chain's fields of it (the rest stays as
    /// its other writers left it). Returns whether anything was written; an
    /// object being deleted is left alone.
    pub fn put<R: Kind>(&mut self, obj: &R) -> Result<bool, StoreError> {
        Ok(self.w.put(obj.clone())?.written)
    }

    /// Deletes an object by the store's rules: at once without finalizers, marked
    /// `Terminating` with them. `None` when it does not exist.
    pub fn delete(&mut self, kind: &str, name: &str) -> Result<Option<DeleteOutcome>, StoreError> {
        self.w.delete(kind, name, false)
    }

    /// Records (or, with `None`, forgets) the buyer's signature of a subscription.
    pub fn set_signature(&mut self, id: u64, sig: Option<&[u8]>) -> Result<(), StoreError> {
        let mut t = self.w.txn().open_table(SIGNATURES)?;
        let prior = t.get((self.scope, id))?.map(|g| hex::encode(g.value()));
        self.w
            .remember_with(format!("sig/{id}"), || UndoOp::Signature { id, prior });
        match sig {
            Some(s) => t.insert((self.scope, id), s)?,
            None => t.remove((self.scope, id))?,
        };
        self.w.mark_dirty();
        Ok(())
    }

    /// The recorded holder of an access NFT.
    pub fn nft_owner(&self, token: u64) -> Result<Option<[u8; 20]>, StoreError> {
        let t = self.w.txn().open_table(NFT_OWNERS)?;
        Ok(t.get((self.scope, token))?
            .and_then(|g| <[u8; 20]>::try_from(g.value()).ok()))
    }

    /// Records (or, with `None`, forgets: burnt) the holder of an access NFT.
    pub fn set_nft_owner(&mut self, token: u64, owner: Option<[u8; 20]>) -> Result<(), StoreError> {
        let mut t = self.w.txn().open_table(NFT_OWNERS)?;
        let prior = t.get((self.scope, token))?.map(|g| hex::encode(g.value()));
        self.w
            .remember_with(format!("nft/{token}"), || UndoOp::NftOwner { token, prior });
        match owner {
            Some(o) => t.insert((self.scope, token), o.as_slice())?,
            None => t.remove((self.scope, token))?,
        };
        self.w.mark_dirty();
        Ok(())
    }
}

impl ChainTxn<'_> {
    /// Records an admin command's nonce; `false` when it was recorded before (a
    /// replay). Written in the batch's transaction, so the nonce is durable with
    /// the cursor before the command is executed.
    pub fn record_admin_nonce(&mut self, nonce: &str, timestamp: i64) -> Result<bool, StoreError> {
        let mut t = self.w.txn().open_table(ADMIN_NONCES)?;
        if t.get(nonce)?.is_some() {
            return Ok(false);
        }
        t.insert(nonce, timestamp)?;
        let horizon = timestamp.saturating_sub(ADMIN_NONCE_KEEP_SECS);
        t.retain(|_, ts| ts >= horizon)?;
        self.w.mark_dirty();
        Ok(true)
    }
}

impl Store {
    /// Whether an admin command nonce was recorded (tests, diagnostics).
    pub fn admin_nonce_seen(&self, nonce: &str) -> Result<bool, StoreError> {
        let txn = self.inner.db.begin_read()?;
        let Some(t) = crate::read_table(&txn, ADMIN_NONCES)? else {
            return Ok(false);
        };
        Ok(t.get(nonce)?.is_some())
    }

    /// The last processed block of a scope; `None` before the first batch.
    pub fn chain_cursor(&self, scope: &str) -> Result<Option<BlockRef>, StoreError> {
        let txn = self.inner.db.begin_read()?;
        let Some(t) = crate::read_table(&txn, CURSOR)? else {
            return Ok(None);
        };
        t.get(scope)?
            .map(|g| serde_json::from_slice(g.value()).map_err(|e| corrupt(scope, e)))
            .transpose()
    }

    /// The recorded blocks of a scope, newest first (for finding a fork point).
    pub fn chain_blocks(&self, scope: &str) -> Result<Vec<BlockRef>, StoreError> {
        let txn = self.inner.db.begin_read()?;
        let Some(t) = crate::read_table(&txn, BLOCKS)? else {
            return Ok(Vec::new());
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
        let Some(t) = crate::read_table(&txn, SIGNATURES)? else {
            return Ok(None);
        };
        Ok(t.get((scope, id))?.map(|g| g.value().to_vec()))
    }

    /// The holder of an access NFT as last seen in a `Transfer`.
    pub fn chain_nft_owner(&self, scope: &str, token: u64) -> Result<Option<[u8; 20]>, StoreError> {
        let txn = self.inner.db.begin_read()?;
        let Some(t) = crate::read_table(&txn, NFT_OWNERS)? else {
            return Ok(None);
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
        let txn = self.begin_write()?;
        let changes = {
            let mut ctx = ChainTxn {
                w: self.begin_chain(&txn)?,
                scope,
            };
            for b in blocks {
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
                write_record(&txn, scope, b.block, ctx.w.take_undo(), applied)?;
            }
            finish(&mut ctx)?;
            // Always recorded: the cursor block's hash is what the next reorg check reads.
            write_record(&txn, scope, end, ctx.w.take_undo(), Vec::new())?;
            set_cursor(&txn, scope, end)?;
            prune(&txn, scope, end.number.saturating_sub(window))?;
            ctx.w.mark_dirty();
            ctx.w.finish()?
        };
        stats.changes = changes.as_ref().map_or(0, Vec::len);
        self.settle(txn, changes)?;
        Ok(stats)
    }

    /// Undoes every recorded block above `fork` (newest first) and moves the
    /// cursor back to it, in one transaction. Returns how many blocks were undone.
    pub fn chain_revert(&self, scope: &str, fork: BlockRef) -> Result<usize, StoreError> {
        self.write(Writer::Chain, false, |w| {
            let txn = w.txn();
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
            for (number, rec) in &records {
                for op in rec.undo.iter().rev() {
                    undo_one(w, scope, op)?;
                }
                let mut applied = txn.open_table(APPLIED)?;
                for id in &rec.applied {
                    applied.remove(format!("{scope}/{id}").as_str())?;
                }
                txn.open_table(BLOCKS)?.remove((scope, *number))?;
            }
            set_cursor(txn, scope, fork)?;
            w.mark_dirty();
            Ok(records.len())
        })
    }
}

fn set_cursor(txn: &WriteTransaction, scope: &str, at: BlockRef) -> Result<(), StoreError> {
    let cursor = serde_json::to_vec(&at).map_err(|e| corrupt(scope, e))?;
    txn.open_table(CURSOR)?.insert(scope, cursor.as_slice())?;
    Ok(())
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
fn undo_one(w: &mut WriteTxn<'_>, scope: &str, op: &UndoOp) -> Result<(), StoreError> {
    let txn = w.txn();
    let restore = |table, k: (&str, u64), prior: &Option<String>| -> Result<(), StoreError> {
        let mut t: redb::Table<(&str, u64), &[u8]> = txn.open_table(table)?;
        match prior.as_deref().map(hex::decode) {
            Some(Ok(b)) => t.insert(k, b.as_slice())?,
            _ => t.remove(k)?,
        };
        Ok(())
    };
    match op {
        UndoOp::Signature { id, prior } => restore(SIGNATURES, (scope, *id), prior),
        UndoOp::NftOwner { token, prior } => restore(NFT_OWNERS, (scope, *token), prior),
        UndoOp::Object { key: k, prior } => w.restore(k, prior.as_deref()),
    }
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::StoreOptions;

    #[test]
    fn an_admin_nonce_is_new_once_and_lands_with_the_cursor() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.redb"), StoreOptions::default()).unwrap();
        let end = |n| BlockRef {
            number: n,
            hash: [n as u8; 32],
        };
        let blocks = [BlockEvents {
            block: end(1),
            events: vec![
                ("0x01:tx0".to_string(), "n-1"),
                ("0x01:tx1".to_string(), "n-1"),
            ],
        }];
        let mut fresh = Vec::new();
        store
            .chain_commit(
                "s",
                &blocks,
                end(1),
                100,
                |tx, nonce: &&str| {
                    fresh.push(tx.record_admin_nonce(nonce, 1_800_000_000)?);
                    Ok(())
                },
                |_| Ok(()),
            )
            .unwrap();
        // The same nonce twice in one batch: the second is a replay.
        assert_eq!(fresh, [true, false]);
        assert!(store.admin_nonce_seen("n-1").unwrap());
        assert_eq!(store.chain_cursor("s").unwrap(), Some(end(1)));
        // A failed batch records neither its nonce nor its cursor.
        let err = store.chain_commit(
            "s",
            &[BlockEvents {
                block: end(2),
                events: vec![("0x02:tx0".to_string(), "n-2")],
            }],
            end(2),
            100,
            |tx, nonce: &&str| {
                tx.record_admin_nonce(nonce, 1_800_000_000)?;
                Err(StoreError::NotFound {
                    kind: "Host",
                    name: "boom".into(),
                })
            },
            |_| Ok(()),
        );
        assert!(err.is_err());
        assert!(!store.admin_nonce_seen("n-2").unwrap());
        assert_eq!(store.chain_cursor("s").unwrap(), Some(end(1)));
        // A reorg does not forget an executed command's nonce.
        store.chain_revert("s", end(0)).unwrap();
        assert!(store.admin_nonce_seen("n-1").unwrap());
    }
}
