//! The one write transaction. Every change to an object goes through
//! [`WriteTxn`], whoever makes it: an apply, a delete, a status update, the
//! allocator, the chain watcher's batch and its undo on a reorg. It keeps the
//! store's rules in one place:
//! - identity (`uid`, `creationTimestamp`) is set once, at creation;
//! - `generation` bumps when the spec, labels or deletion mark change, never on a
//!   status write, so a reconciler can tell new desired state from its own write;
//! - `resourceVersion` bumps on every write, from one database-wide sequence;
//! - deletion removes an object at once without finalizers, and otherwise marks it
//!   and removes it when the last finalizer goes; a removal gives back the
//!   object's allocations and its events (audit notes excepted);
//! - creations, spec changes and deletions are events;
//! - a chain batch records undo: each object as it was before the block first
//!   touched it;
//! - a writer changes only the fields it owns ([`crate::authority`]);
//! - the token index ([`crate::index`]) follows every object written or
//!   removed, in the same transaction.
//!
//! Changes are collected here and published by the store after the commit.

use std::collections::HashSet;

use blockhost_crd::meta::{Event, EventType};
use blockhost_crd::resource::Resource;
use blockhost_crd::{Plan, Subscription, VirtualMachine};
use chrono::{DateTime, Utc};
use redb::{ReadableTable, Table, WriteTransaction};

use crate::alloc::{Alloc, Pools};
use crate::authority::{self, Kind, Writer};
use crate::chain::UndoOp;
use crate::{
    ApplyOutcome, Change, ChangeKind, DeleteOutcome, EVENTS, META, META_EVENT_SEQ, META_RV,
    OBJECTS, StoreError, decode, encode, key,
};

/// Reason of the event a forced deletion leaves; it outlives the object.
pub const FORCE_DELETED: &str = "ForceDeleted";

/// Calls `$body` with `$R` the type of the kind named `$kind`, or gives `$else`.
macro_rules! by_kind {
    ($kind:expr, $R:ident => $body:expr, else $else:expr) => {
        match $kind {
            k if k == VirtualMachine::KIND => {
                type $R = VirtualMachine;
                $body
            }
            k if k == Plan::KIND => {
                type $R = Plan;
                $body
            }
            k if k == Subscription::KIND => {
                type $R = Subscription;
                $body
            }
            _ => $else,
        }
    };
}

/// An event to record: its severity, one CamelCase reason, a sentence.
#[derive(Debug, Clone, Copy)]
pub struct Note<'a> {
    /// Normal or Warning.
    pub type_: EventType,
    /// One CamelCase word a script can match.
    pub reason: &'a str,
    /// A sentence for people.
    pub message: &'a str,
}

impl<'a> Note<'a> {
    /// Something expected happened.
    pub fn normal(reason: &'a str, message: &'a str) -> Self {
        let type_ = EventType::Normal;
        Self {
            type_,
            reason,
            message,
        }
    }

    /// Something needs attention.
    pub fn warning(reason: &'a str, message: &'a str) -> Self {
        let type_ = EventType::Warning;
        Self {
            type_,
            reason,
            message,
        }
    }
}

/// What a put did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Put {
    /// Created, configured (spec or labels changed) or unchanged.
    pub outcome: ApplyOutcome,
    /// The generation after the put.
    pub generation: u64,
    /// Whether anything was written (a status-only change is not "configured").
    pub written: bool,
}

/// The undo a chain batch records for the block being applied.
#[derive(Debug, Default)]
struct UndoLog {
    ops: Vec<UndoOp>,
    touched: HashSet<String>,
}

/// One write transaction over typed objects, on behalf of one [`Writer`].
pub struct WriteTxn<'t> {
    txn: &'t WriteTransaction,
    objects: Table<'t, &'static str, &'static [u8]>,
    events: Table<'t, (&'static str, u64), &'static [u8]>,
    writer: Writer,
    now: DateTime<Utc>,
    retention: u32,
    pools: &'t Pools,
    rv: u64,
    seq: u64,
    dirty: bool,
    changes: Vec<Change>,
    undo: Option<UndoLog>,
}

impl std::fmt::Debug for WriteTxn<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteTxn")
            .field("writer", &self.writer)
            .field("changes", &self.changes.len())
            .finish_non_exhaustive()
    }
}

impl<'t> WriteTxn<'t> {
    /// Starts writing in `txn`; with `record_undo`, every first change to an
    /// object in a block is remembered for [`WriteTxn::take_undo`].
    pub(crate) fn begin(
        txn: &'t WriteTransaction,
        writer: Writer,
        now: DateTime<Utc>,
        opts: &'t crate::StoreOptions,
        record_undo: bool,
    ) -> Result<Self, StoreError> {
        let (rv, seq) = {
            let meta = txn.open_table(META)?;
            let get = |k| meta.get(k).map(|g| g.map_or(0, |g| g.value()));
            (get(META_RV)?, get(META_EVENT_SEQ)?)
        };
        Ok(Self {
            txn,
            objects: txn.open_table(OBJECTS)?,
            events: txn.open_table(EVENTS)?,
            writer,
            now,
            retention: opts.event_retention,
            pools: &opts.pools,
            rv,
            seq,
            dirty: false,
            changes: Vec::new(),
            undo: record_undo.then(UndoLog::default),
        })
    }

    /// Ends the writing: the changes to publish, or `None` when nothing was
    /// written (the caller aborts instead of paying for a durable commit).
    pub(crate) fn finish(self) -> Result<Option<Vec<Change>>, StoreError> {
        if !self.dirty {
            return Ok(None);
        }
        let mut meta = self.txn.open_table(META)?;
        meta.insert(META_RV, self.rv)?;
        meta.insert(META_EVENT_SEQ, self.seq)?;
        Ok(Some(self.changes))
    }

    /// Who writes.
    pub fn writer(&self) -> Writer {
        self.writer
    }

    /// The store's clock when the transaction began.
    pub fn now(&self) -> DateTime<Utc> {
        self.now
    }

    /// The redb transaction, for the store's own tables beside the objects.
    pub(crate) fn txn(&self) -> &'t WriteTransaction {
        self.txn
    }

    /// Notes a write to a table other than the objects and events.
    pub(crate) fn mark_dirty(&mut self) {
        self.dirty = true;
    }

    fn raw(&self, k: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.objects.get(k)?.map(|g| g.value().to_vec()))
    }

    /// Reads one object, seeing this transaction's own writes.
    pub fn get<R: Kind>(&self, name: &str) -> Result<Option<R>, StoreError> {
        let k = key(R::KIND, name);
        self.raw(&k)?.map(|b| decode(&k, &b)).transpose()
    }

    /// Reads every object of a kind, in name order.
    pub fn list<R: Kind>(&self) -> Result<Vec<R>, StoreError> {
        let (start, end) = crate::kind_range(R::KIND);
        let mut out = Vec::new();
        for entry in self.objects.range(start.as_str()..end.as_str())? {
            let (k, v) = entry?;
            out.push(decode(k.value(), v.value())?);
        }
        Ok(out)
    }

    /// The subscription an access NFT was minted for, from the token index
    /// ([`crate::index`]), seeing this transaction's own writes.
    pub fn subscription_for_token(&self, token: u64) -> Result<Option<Subscription>, StoreError> {
        let name = {
            let t = self.txn.open_table(crate::index::NFT_TOKENS)?;
            crate::index::lookup(&t, token)?
        };
        name.map_or(Ok(None), |n| self.get(&n))
    }

    fn alloc<'a>(&'a self, k: &'a str) -> Alloc<'a> {
        Alloc {
            txn: self.txn,
            pools: self.pools,
            key: k,
            now: self.now,
        }
    }

    /// Creates an object or writes the writer's fields of it, with an event for
    /// a creation or a spec change. An object being deleted is refused to the
    /// operator and left alone for the programs.
    pub fn put<R: Kind>(&mut self, new: R) -> Result<Put, StoreError> {
        let (kind, name) = (R::KIND, new.meta().name.to_string());
        let put = self.put_quiet(new)?;
        if put.outcome != ApplyOutcome::Unchanged {
            let (reason, what) = match put.outcome {
                ApplyOutcome::Created => ("Created", "spec applied"),
                _ => ("Configured", "spec changed"),
            };
            let msg = format!("{what} by {} (generation {})", self.writer, put.generation);
            self.event(kind, &name, Note::normal(reason, &msg))?;
        }
        Ok(put)
    }

    /// [`WriteTxn::put`] without its event (a reorg's undo says why instead).
    fn put_quiet<R: Kind>(&mut self, mut new: R) -> Result<Put, StoreError> {
        let name = new.meta().name.to_string();
        let k = key(R::KIND, &name);
        let Some(bytes) = self.raw(&k)? else {
            return self.create(&k, new);
        };
        let stored: R = decode(&k, &bytes)?;
        let generation = stored.meta().generation.unwrap_or(1);
        let mut put = Put {
            outcome: ApplyOutcome::Unchanged,
            generation,
            written: false,
        };
        if stored.meta().deletion_timestamp.is_some() {
            if let Writer::Operator { .. } = self.writer {
                return Err(StoreError::Rejected {
                    kind: R::KIND,
                    name,
                    reason: "is being deleted; wait until it is gone before applying it again"
                        .into(),
                });
            }
            return Ok(put);
        }
        let mut spec = new.spec().clone();
        authority::spec_writer(self.writer)
            .and_then(|()| R::merge_spec(self.writer, &stored, &mut spec))
            .map_err(|r| r.into_error(R::KIND, &name))?;
        let mut merged = stored.clone();
        *merged.spec_mut() = spec;
        if let Writer::Operator { .. } = self.writer {
            merged.meta_mut().labels = std::mem::take(&mut new.meta_mut().labels);
        }
        R::merge_status(
            self.writer,
            merged.status_mut(),
            std::mem::take(new.status_mut()),
        );
        let spec_changed =
            merged.spec() != stored.spec() || merged.meta().labels != stored.meta().labels;
        if !spec_changed && merged.status() == stored.status() {
            return Ok(put);
        }
        let what = if spec_changed {
            put.outcome = ApplyOutcome::Configured;
            put.generation = generation + 1;
            merged.meta_mut().generation = Some(put.generation);
            // A VM's addresses follow its spec in the same transaction, so a
            // reconciler never sees a spec without them.
            merged.allocate(&mut self.alloc(&k))?;
            ChangeKind::Spec
        } else {
            ChangeKind::Status
        };
        put.written = true;
        self.store_object(&k, &mut merged, Some(&bytes), what)?;
        Ok(put)
    }

    fn create<R: Kind>(&mut self, k: &str, mut new: R) -> Result<Put, StoreError> {
        R::may_create(self.writer, &new).map_err(|r| r.into_error(R::KIND, &new_name(k)))?;
        let written = std::mem::take(new.status_mut());
        R::merge_status(self.writer, new.status_mut(), written);
        let m = new.meta_mut();
        m.uid = Some(uuid::Uuid::new_v4().to_string());
        m.generation = Some(1);
        m.creation_timestamp = Some(self.now);
        m.deletion_timestamp = None;
        m.finalizers.clear();
        new.allocate(&mut self.alloc(k))?;
        self.store_object(k, &mut new, None, ChangeKind::Created)?;
        Ok(Put {
            outcome: ApplyOutcome::Created,
            generation: 1,
            written: true,
        })
    }

    /// Changes an object's status (and, for the reconciler, its finalizers):
    /// `f` edits a copy and says whether it changed anything; only the
    /// writer's own fields of the copy are written, and an object whose
    /// deletion waits for no more finalizers is removed. Returns the object
    /// as stored afterwards, `None` when it is (now) gone.
    pub fn update_status<R: Kind>(
        &mut self,
        name: &str,
        f: impl FnOnce(&mut R, &mut Alloc<'_>) -> Result<bool, StoreError>,
    ) -> Result<Option<R>, StoreError> {
        let k = key(R::KIND, name);
        let Some(bytes) = self.raw(&k)? else {
            return Ok(None);
        };
        let stored: R = decode(&k, &bytes)?;
        let mut edited = stored.clone();
        if !f(&mut edited, &mut self.alloc(&k))? {
            return Ok(Some(stored));
        }
        if edited.spec() != stored.spec() {
            return Err(StoreError::Rejected {
                kind: R::KIND,
                name: name.into(),
                reason: "a status update may not change the spec".into(),
            });
        }
        let mut merged = stored.clone();
        let wrote = edited.status().clone();
        R::merge_status(self.writer, merged.status_mut(), wrote);
        if self.writer == Writer::Reconciler {
            merged.meta_mut().finalizers = edited.meta().finalizers.clone();
        }
        if merged.status() != edited.status()
            || merged.meta().finalizers != edited.meta().finalizers
        {
            tracing::warn!(object = %k, writer = %self.writer, "a status update changed fields its writer does not own; those were not written");
        }
        let m = merged.meta();
        if merged.status() == stored.status() && m.finalizers == stored.meta().finalizers {
            return Ok(Some(stored));
        }
        if m.deletion_timestamp.is_some() && m.finalizers.is_empty() {
            self.remove_object(&k, &merged, &bytes)?;
            return Ok(None);
        }
        self.store_object(&k, &mut merged, Some(&bytes), ChangeKind::Status)?;
        Ok(Some(merged))
    }

    /// Deletes an object by the writer's rights: removed at once without
    /// finalizers, marked `Terminating` with them. `None` when it does not
    /// exist; `force` lets the operator delete what the chain owns, with an
    /// audit event naming them.
    pub fn delete(
        &mut self,
        kind: &str,
        name: &str,
        force: bool,
    ) -> Result<Option<DeleteOutcome>, StoreError> {
        by_kind!(kind, R => self.delete_typed::<R>(name, force), else Ok(None))
    }

    fn delete_typed<R: Kind>(
        &mut self,
        name: &str,
        force: bool,
    ) -> Result<Option<DeleteOutcome>, StoreError> {
        let k = key(R::KIND, name);
        let Some(bytes) = self.raw(&k)? else {
            return Ok(None);
        };
        let mut obj: R = decode(&k, &bytes)?;
        if obj.meta().deletion_timestamp.is_some() {
            return Ok(Some(DeleteOutcome::Terminating));
        }
        let audit =
            R::may_delete(self.writer, &obj, force).map_err(|r| r.into_error(R::KIND, name))?;
        if let Some(note) = audit {
            self.event(R::KIND, name, Note::warning(FORCE_DELETED, &note))?;
        }
        if obj.meta().finalizers.is_empty() {
            self.remove_object(&k, &obj, &bytes)?;
            return Ok(Some(DeleteOutcome::Deleted));
        }
        let m = obj.meta_mut();
        m.deletion_timestamp = Some(self.now);
        m.generation = Some(m.generation.unwrap_or(0) + 1);
        self.store_object(&k, &mut obj, Some(&bytes), ChangeKind::Spec)?;
        let msg = format!(
            "deletion requested by {}; waiting for controllers to clean up",
            self.writer
        );
        self.event(R::KIND, name, Note::normal("DeletionRequested", &msg))?;
        Ok(Some(DeleteOutcome::Terminating))
    }

    /// Appends an event to an object's log, dropping its oldest beyond retention.
    pub fn event(&mut self, kind: &str, name: &str, note: Note<'_>) -> Result<(), StoreError> {
        let k = key(kind, name);
        self.seq += 1;
        let ev = Event {
            seq: self.seq,
            time: self.now,
            kind: kind.into(),
            name: name.into(),
            type_: note.type_,
            reason: note.reason.into(),
            message: note.message.into(),
        };
        self.events
            .insert((k.as_str(), ev.seq), encode(&k, &ev)?.as_slice())?;
        self.dirty = true;
        let count = self
            .events
            .range((k.as_str(), 0)..=(k.as_str(), u64::MAX))?
            .count() as u64;
        let excess =
            usize::try_from(count.saturating_sub(u64::from(self.retention))).unwrap_or(usize::MAX);
        if excess > 0 {
            let old = self.event_seqs(&k, None)?;
            for s in old.into_iter().take(excess) {
                self.events.remove((k.as_str(), s))?;
            }
        }
        Ok(())
    }

    /// Sequence numbers of an object's events, oldest first: all, or those
    /// `keep` selects (decoding each only then).
    fn event_seqs(
        &self,
        k: &str,
        keep: Option<&dyn Fn(&Event) -> bool>,
    ) -> Result<Vec<u64>, StoreError> {
        let mut out = Vec::new();
        for entry in self.events.range((k, 0)..=(k, u64::MAX))? {
            let (key, v) = entry?;
            if keep.map_or(Ok(true), |f| decode(k, v.value()).map(|e| f(&e)))? {
                out.push(key.value().1);
            }
        }
        Ok(out)
    }

    /// Writes an object with the next resource version and records the change.
    fn store_object<R: Kind>(
        &mut self,
        k: &str,
        obj: &mut R,
        prior: Option<&[u8]>,
        what: ChangeKind,
    ) -> Result<(), StoreError> {
        self.remember(k, prior);
        self.rv += 1;
        obj.meta_mut().resource_version = Some(self.rv);
        let bytes = encode(k, obj)?;
        self.objects.insert(k, bytes.as_slice())?;
        crate::index::follow(self.txn, k, prior, Some(&bytes))?;
        self.dirty = true;
        self.changes.push(Change {
            kind: R::KIND,
            name: new_name(k),
            resource_version: self.rv,
            what,
            object: bytes.into(),
        });
        Ok(())
    }

    /// Removes an object with its allocations and events (audit notes stay).
    fn remove_object<R: Kind>(&mut self, k: &str, obj: &R, last: &[u8]) -> Result<(), StoreError> {
        self.remember(k, Some(last));
        self.objects.remove(k)?;
        crate::index::follow(self.txn, k, Some(last), None)?;
        let not_audit = |e: &Event| e.reason != FORCE_DELETED;
        for s in self.event_seqs(k, Some(&not_audit))? {
            self.events.remove((k, s))?;
        }
        obj.release(&mut self.alloc(k))?;
        self.rv += 1;
        self.dirty = true;
        self.changes.push(Change {
            kind: R::KIND,
            name: new_name(k),
            resource_version: self.rv,
            what: ChangeKind::Deleted,
            object: last.into(),
        });
        Ok(())
    }

    fn remember(&mut self, k: &str, prior: Option<&[u8]>) {
        self.remember_with(k.to_owned(), || UndoOp::Object {
            key: k.to_owned(),
            prior: prior.map(|b| String::from_utf8_lossy(b).into_owned()),
        });
    }

    /// Records `op` as the undo of `touched` unless the block touched it before.
    pub(crate) fn remember_with(&mut self, touched: String, op: impl FnOnce() -> UndoOp) {
        if let Some(u) = &mut self.undo
            && u.touched.insert(touched)
        {
            u.ops.push(op());
        }
    }

    /// The undo recorded since the last call (one block's), in change order.
    pub(crate) fn take_undo(&mut self) -> Vec<UndoOp> {
        self.undo.as_mut().map_or_else(Vec::new, |u| {
            u.touched.clear();
            std::mem::take(&mut u.ops)
        })
    }

    /// Undoes one recorded change of a reverted block: restores what the
    /// writer of the block (the chain) owns of `prior`, or deletes what the
    /// block created, through the same rules as any write.
    pub(crate) fn restore(&mut self, k: &str, prior: Option<&str>) -> Result<(), StoreError> {
        let (kind, name) = k.split_once('/').unwrap_or((k, ""));
        by_kind!(kind, R => self.restore_typed::<R>(name, prior), else Ok(()))
    }

    fn restore_typed<R: Kind>(
        &mut self,
        name: &str,
        prior: Option<&str>,
    ) -> Result<(), StoreError> {
        let k = key(R::KIND, name);
        let prior: Option<R> = prior.map(|p| decode(&k, p.as_bytes())).transpose()?;
        let current: Option<R> = self.get(name)?;
        let note = match (prior, current) {
            (None, None) => return Ok(()),
            (Some(mut p), None) => {
                // Its allocations went back when it was removed; it takes new ones.
                p.forget_allocations();
                p.allocate(&mut self.alloc(&k))?;
                self.store_object(&k, &mut p, None, ChangeKind::Created)?;
                "restored: the block that removed it was reverted"
            }
            (None, Some(_)) => match self.delete_typed::<R>(name, false)? {
                Some(DeleteOutcome::Terminating) => {
                    "the block that created it was reverted; deleting"
                }
                _ => return Ok(()),
            },
            (Some(p), Some(c)) => {
                if c.meta().deletion_timestamp.is_some() && p.meta().deletion_timestamp.is_none() {
                    let msg = "the block that deleted it was reverted, but its deletion is already under way";
                    return self.event(R::KIND, name, Note::warning("ReorgUndoImpossible", msg));
                }
                if self.put_quiet(p)?.outcome != ApplyOutcome::Configured {
                    return Ok(());
                }
                "spec restored: the block that changed it was reverted"
            }
        };
        self.event(R::KIND, name, Note::warning("Reorg", note))
    }
}

/// The name part of a `"Kind/name"` key.
fn new_name(k: &str) -> String {
    name_of(k).to_owned()
}

/// The name part of a `"Kind/name"` key, borrowed.
pub(crate) fn name_of(k: &str) -> &str {
    k.split_once('/').map_or(k, |(_, n)| n)
}
