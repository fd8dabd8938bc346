//! The store: every object, event and counter of BlockHost, in one redb database.
//!
//! This crate owns every transaction; nothing else opens a table (redb is private
//! to it). Every write goes through one typed write transaction
//! ([`write::WriteTxn`]) on behalf of a [`Writer`], which keeps the object rules
//! (identity, generation, resource version, finalizers, events, undo) and the
//! field ownership of [`authority`]. Rules the store as a whole keeps:
//! - An apply is one write transaction: all of its objects land, or none.
//! - Every commit is durable (`Durability::Immediate`) before the caller is told it
//!   succeeded, so an acknowledged write survives SIGKILL and power loss.
//! - Changes are published on a broadcast channel *after* commit; a subscriber never
//!   sees a change that could still roll back.
//!
//! Layout: `objects` maps `"Kind/name"` to the object's JSON; `events` maps
//! `("Kind/name", seq)` to an event's JSON (bounded per object); `meta` holds the
//! schema version and the sequences; `index_nft_token` finds a subscription by
//! its access NFT ([`index`]).

pub mod alloc;
pub mod authority;
pub mod chain;
mod index;
pub mod mint;
pub mod write;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use blockhost_crd::VirtualMachine;
use blockhost_crd::meta::{Event, EventType};
use blockhost_crd::resource::{AnyObject, Resource};
use chrono::{DateTime, Utc};
use redb::{
    Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition,
    WriteTransaction,
};
use tokio::sync::broadcast;

pub use authority::{Kind, Refusal, Writer};
pub use write::{Note, Put, WriteTxn};

pub(crate) const OBJECTS: TableDefinition<&str, &[u8]> = TableDefinition::new("objects");
pub(crate) const EVENTS: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("events");
pub(crate) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

const META_SCHEMA: &str = "schema_version";
pub(crate) const META_RV: &str = "resource_version";
pub(crate) const META_EVENT_SEQ: &str = "event_seq";

/// Version of the on-disk layout this code writes (2: the token index).
pub const SCHEMA_VERSION: u64 = 2;

/// A migration from version `n` to `n + 1`, run inside the upgrade transaction.
pub type Migration = fn(&WriteTransaction) -> Result<(), StoreError>;

/// `MIGRATIONS[i]` upgrades a database from version `i + 1` to `i + 2`.
pub const MIGRATIONS: &[Migration] = &[index::build];

/// Source of the current time; injectable so tests control expiry and ages.
pub type Clock = Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>;

/// redb page cache size.
const STORE_CACHE_BYTES: usize = 16 * 1024 * 1024;

/// How many changes a slow subscriber may fall behind before it must re-list.
const CHANGE_CHANNEL_CAPACITY: usize = 4096;

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The state directory could not be created.
    #[error("cannot create the state directory {path}; check the parent's permissions")]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The database file could not be opened or created.
    #[error("cannot open the database at {path}")]
    Open {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: redb::DatabaseError,
    },
    /// Another process holds the database.
    #[error("the database at {path} is in use by another process; is another blockhostd running?")]
    InUse {
        /// The file.
        path: PathBuf,
    },
    /// The database was written by a newer version.
    #[error(
        "the database uses schema version {found}, newer than this blockhostd supports ({SCHEMA_VERSION}); upgrade blockhostd"
    )]
    NewerSchema {
        /// The version found.
        found: u64,
    },
    /// A storage-level failure (I/O, corruption detected by redb).
    #[error("database operation failed")]
    Db(#[from] redb::Error),
    /// No migration leads from a version found on disk to the next.
    #[error(
        "no migration from schema version {from}; open the database with the blockhostd that wrote it"
    )]
    NoMigration {
        /// The version without a way up.
        from: u64,
    },
    /// A stored object could not be decoded.
    #[error("stored object {key} cannot be decoded")]
    Corrupt {
        /// Its key.
        key: String,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// An object could not be encoded for storing.
    #[error("object {key} cannot be encoded")]
    Encode {
        /// Its key.
        key: String,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// The writer does not own what it tried to change (the chain owns a
    /// purchased VM's owner, say); nothing of that write was stored.
    #[error("{}/{name}: {reason}", kind.to_lowercase())]
    NotAllowed {
        /// Kind of the object.
        kind: &'static str,
        /// Its name.
        name: String,
        /// The field refused, when one field is the reason (`spec.owner`).
        field: Option<&'static str>,
        /// Why, naming the field and what to do instead.
        reason: String,
    },
    /// A store call on the blocking pool panicked or was cancelled.
    #[error("a store task failed; see the daemon's log")]
    TaskFailed {
        /// The join error (the panic).
        #[source]
        source: tokio::task::JoinError,
    },
    /// An apply was refused for one object; nothing of that apply was written.
    #[error("{}/{name}: {reason}", kind.to_lowercase())]
    Rejected {
        /// Kind of the refused object.
        kind: &'static str,
        /// Its name.
        name: String,
        /// Why, in words the user can act on.
        reason: String,
    },
    /// No such object.
    #[error("{}/{name} not found", kind.to_lowercase())]
    NotFound {
        /// Kind.
        kind: &'static str,
        /// Name.
        name: String,
    },
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self { StoreError::Db(e.into()) }
        }
    )*};
}
from_redb!(
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

// The outcomes are part of the API's wire types; the store returns them as they are.
pub use blockhost_crd::outcome::{ApplyOutcome, ApplyResult, DeleteOutcome};

/// How an object changed, as published to subscribers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    /// It appeared.
    Created,
    /// Its spec, labels or deletion mark changed (generation bumped).
    Spec,
    /// Only its status or finalizers changed.
    Status,
    /// It is gone.
    Deleted,
}

/// A committed change, published after the commit.
#[derive(Debug, Clone)]
pub struct Change {
    /// Kind of the object.
    pub kind: &'static str,
    /// Its name.
    pub name: String,
    /// Its resource version after the change (for deletions, the deletion's).
    pub resource_version: u64,
    /// What changed.
    pub what: ChangeKind,
    /// The object's JSON after the change (for deletions, its last state).
    pub object: Arc<[u8]>,
}

/// Options for [`Store::open`].
#[derive(Clone)]
pub struct StoreOptions {
    /// Events kept per object.
    pub event_retention: u32,
    /// The clock.
    pub clock: Clock,
    /// The schema version to reach (tests of the migration hook change it).
    pub schema_version: u64,
    /// The migrations available.
    pub migrations: &'static [Migration],
    /// Address pools VMs get addresses from.
    pub pools: alloc::Pools,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            event_retention: 100,
            clock: Arc::new(Utc::now),
            schema_version: SCHEMA_VERSION,
            migrations: MIGRATIONS,
            pools: alloc::Pools::default(),
        }
    }
}

impl std::fmt::Debug for StoreOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreOptions")
            .field("event_retention", &self.event_retention)
            .field("schema_version", &self.schema_version)
            .finish_non_exhaustive()
    }
}

/// Handle to the database; cheap to clone, shared by the API and the controllers.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    db: Database,
    changes: broadcast::Sender<Change>,
    opts: StoreOptions,
    /// Newest confirmed block time seen (Unix seconds; 0: none), when the
    /// configuration follows chain time. [`Store::now`] never goes below it.
    chain_time: std::sync::atomic::AtomicI64,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("opts", &self.inner.opts)
            .finish_non_exhaustive()
    }
}

fn key(kind: &str, name: &str) -> String {
    format!("{kind}/{name}")
}

/// The key range of one kind: `'/' + 1 == '0'`, so `["Kind/", "Kind0")` holds
/// exactly its keys.
fn kind_range(kind: &str) -> (String, String) {
    (format!("{kind}/"), format!("{kind}0"))
}

/// Decodes a stored object or event, naming its key when it is corrupt.
fn decode<T: serde::de::DeserializeOwned>(k: &str, bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|source| StoreError::Corrupt {
        key: k.to_owned(),
        source,
    })
}

/// Opens a table for reading; `None` while nothing has created it yet.
fn read_table<K: redb::Key + 'static, V: redb::Value + 'static>(
    txn: &redb::ReadTransaction,
    def: TableDefinition<K, V>,
) -> Result<Option<redb::ReadOnlyTable<K, V>>, StoreError> {
    match txn.open_table(def) {
        Ok(t) => Ok(Some(t)),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Encodes an object or event for storing.
fn encode<T: serde::Serialize + ?Sized>(k: &str, value: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(|source| StoreError::Encode {
        key: k.to_owned(),
        source,
    })
}

/// The `'static` name of a kind given as text; callers pass known kinds (the API
/// resolves user input first), so an unknown one is a programming error that
/// degrades to a lookup that finds nothing rather than touching another kind.
fn canonical_kind(kind: &str) -> &'static str {
    if kind == blockhost_crd::resource::HOST_KIND {
        return blockhost_crd::resource::HOST_KIND;
    }
    blockhost_crd::resource::KINDS
        .iter()
        .find(|(k, _, _)| *k == kind)
        .map_or("Unknown", |(k, _, _)| *k)
}

impl Store {
    /// Opens (or creates) the database, running migrations if needed.
    pub fn open(path: &Path, opts: StoreOptions) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            create_private_dir(dir).map_err(|source| StoreError::CreateDir {
                path: dir.to_owned(),
                source,
            })?;
        }
        // A bounded page cache: the working set of 10,000 objects is a few MiB, and
        // redb's default (1 GiB) would let RSS grow with the file.
        let db = match redb::Builder::new()
            .set_cache_size(STORE_CACHE_BYTES)
            .create(path)
        {
            Ok(db) => db,
            Err(redb::DatabaseError::DatabaseAlreadyOpen) => {
                return Err(StoreError::InUse {
                    path: path.to_owned(),
                });
            }
            Err(source) => {
                return Err(StoreError::Open {
                    path: path.to_owned(),
                    source,
                });
            }
        };
        restrict_file(path);
        let (changes, _) = broadcast::channel(CHANGE_CHANNEL_CAPACITY);
        let store = Self {
            inner: Arc::new(Inner {
                db,
                changes,
                opts,
                chain_time: std::sync::atomic::AtomicI64::new(0),
            }),
        };
        store.init_schema()?;
        Ok(store)
    }

    fn init_schema(&self) -> Result<(), StoreError> {
        let opts = &self.inner.opts;
        let txn = self.inner.db.begin_write()?;
        {
            // Creating the tables here means readers never meet a missing table.
            txn.open_table(OBJECTS)?;
            txn.open_table(EVENTS)?;
            txn.open_table(index::NFT_TOKENS)?;
            alloc::create_tables(&txn)?;
            let mut meta = txn.open_table(META)?;
            let found = meta.get(META_SCHEMA)?.map(|g| g.value());
            match found {
                None => {
                    meta.insert(META_SCHEMA, opts.schema_version)?;
                }
                Some(v) if v > opts.schema_version => {
                    return Err(StoreError::NewerSchema { found: v });
                }
                Some(v) if v < opts.schema_version => {
                    drop(meta);
                    for from in v..opts.schema_version {
                        let step = usize::try_from(from - 1)
                            .ok()
                            .and_then(|i| opts.migrations.get(i));
                        let Some(step) = step else {
                            return Err(StoreError::NoMigration { from });
                        };
                        step(&txn)?;
                        tracing::info!(from, to = from + 1, "migrated database schema");
                    }
                    txn.open_table(META)?
                        .insert(META_SCHEMA, opts.schema_version)?;
                }
                Some(_) => {}
            }
        }
        txn.commit()?;
        Ok(())
    }

    /// Subscribes to committed changes of every kind.
    pub fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.inner.changes.subscribe()
    }

    /// The current time by the store's clock.
    pub fn now(&self) -> DateTime<Utc> {
        let clock = (self.inner.opts.clock)();
        let chain = self
            .inner
            .chain_time
            .load(std::sync::atomic::Ordering::Relaxed);
        match DateTime::from_timestamp(chain, 0) {
            Some(t) if chain > 0 && t > clock => t,
            _ => clock,
        }
    }

    /// Moves the clock's floor to a confirmed block's timestamp (only with
    /// `chain.followChainTime`): expiry is then judged as the contract judges
    /// it, even on a dev chain that travelled in time. Never moves backwards.
    pub fn observe_chain_time(&self, unix_secs: u64) {
        let secs = i64::try_from(unix_secs).unwrap_or(i64::MAX);
        self.inner
            .chain_time
            .fetch_max(secs, std::sync::atomic::Ordering::Relaxed);
    }

    /// The last resource version written.
    pub fn resource_version(&self) -> Result<u64, StoreError> {
        let txn = self.inner.db.begin_read()?;
        let meta = txn.open_table(META)?;
        Ok(meta.get(META_RV)?.map(|g| g.value()).unwrap_or(0))
    }

    /// The schema version of the open database.
    pub fn schema_version(&self) -> Result<u64, StoreError> {
        let txn = self.inner.db.begin_read()?;
        let meta = txn.open_table(META)?;
        Ok(meta.get(META_SCHEMA)?.map(|g| g.value()).unwrap_or(0))
    }

    /// Runs `f` in one write transaction on behalf of `writer`: committed
    /// durably and its changes published when it wrote anything, aborted when
    /// it wrote nothing, failed or is a dry run.
    pub fn write<T>(
        &self,
        writer: Writer,
        dry_run: bool,
        f: impl FnOnce(&mut WriteTxn<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let txn = self.inner.db.begin_write()?;
        let (out, changes) = {
            let mut w = self.begin(&txn, writer, false)?;
            let out = f(&mut w)?;
            (out, w.finish()?)
        };
        self.settle(txn, changes.filter(|_| !dry_run))?;
        Ok(out)
    }

    fn begin<'t>(
        &'t self,
        txn: &'t WriteTransaction,
        writer: Writer,
        record_undo: bool,
    ) -> Result<WriteTxn<'t>, StoreError> {
        WriteTxn::begin(txn, writer, self.now(), &self.inner.opts, record_undo)
    }

    /// A redb write transaction (for the chain's batches, which add their tables).
    fn begin_write(&self) -> Result<WriteTransaction, StoreError> {
        Ok(self.inner.db.begin_write()?)
    }

    /// The chain watcher's write transaction, recording undo per block.
    fn begin_chain<'t>(&'t self, txn: &'t WriteTransaction) -> Result<WriteTxn<'t>, StoreError> {
        self.begin(txn, Writer::Chain, true)
    }

    /// Commits and publishes `changes`, or aborts when there are none.
    fn settle(
        &self,
        txn: WriteTransaction,
        changes: Option<Vec<Change>>,
    ) -> Result<(), StoreError> {
        match changes {
            Some(changes) => {
                txn.commit()?;
                for c in changes {
                    // An error only means nobody is subscribed right now.
                    let _ = self.inner.changes.send(c);
                }
            }
            None => txn.abort()?,
        }
        Ok(())
    }

    /// Runs a store call on the blocking pool (redb is synchronous and a commit
    /// waits for fsync): the one way async code reaches the store.
    pub async fn blocking<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
    {
        let store = self.clone();
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .map_err(|source| StoreError::TaskFailed { source })?
    }

    /// [`Store::apply_as`] by an operator whose uid is not known.
    pub fn apply(
        &self,
        objects: Vec<AnyObject>,
        dry_run: bool,
    ) -> Result<Vec<ApplyResult>, StoreError> {
        self.apply_as(Writer::OPERATOR, objects, dry_run)
    }

    /// Creates or updates every object in one transaction. On any refusal nothing
    /// is written. With `dry_run`, reports what would happen and writes nothing.
    pub fn apply_as(
        &self,
        writer: Writer,
        objects: Vec<AnyObject>,
        dry_run: bool,
    ) -> Result<Vec<ApplyResult>, StoreError> {
        let mut seen = std::collections::HashSet::new();
        if let Some(o) = objects
            .iter()
            .find(|o| !seen.insert((o.kind(), o.meta().name.as_str())))
        {
            return Err(StoreError::Rejected {
                kind: o.kind(),
                name: o.meta().name.to_string(),
                reason: "appears more than once in this apply; keep one document per object".into(),
            });
        }
        self.write(writer, dry_run, |w| {
            objects
                .into_iter()
                .map(|o| {
                    let (kind, name) = (o.kind(), o.meta().name.to_string());
                    let put = match o {
                        AnyObject::VirtualMachine(o) => w.put(*o),
                        AnyObject::Plan(o) => w.put(*o),
                        AnyObject::Subscription(o) => w.put(*o),
                    }?;
                    Ok(ApplyResult {
                        kind: kind.into(),
                        name,
                        outcome: put.outcome,
                        generation: put.generation,
                    })
                })
                .collect()
        })
    }

    /// [`Store::update_status_as`] by the VM reconciler.
    pub fn update_status<R: Kind>(
        &self,
        name: &str,
        f: impl FnOnce(&mut R) -> bool,
    ) -> Result<Option<R>, StoreError> {
        self.update_status_as(Writer::Reconciler, name, f)
    }

    /// Changes an object's status (and, for the reconciler, its finalizers)
    /// without touching its spec or generation: `f` edits the stored object and
    /// returns whether it changed anything, and the fields `writer` owns are
    /// written ([`authority`]). Returns the object after the update, or `None`
    /// if it is gone.
    pub fn update_status_as<R: Kind>(
        &self,
        writer: Writer,
        name: &str,
        f: impl FnOnce(&mut R) -> bool,
    ) -> Result<Option<R>, StoreError> {
        self.write(writer, false, |w| w.update_status(name, |o, _| Ok(f(o))))
    }

    /// Deletes an object as the VM reconciler does when a VM expires: the
    /// chain's authority has spoken through the expiry. Operators' deletes go
    /// through [`Store::delete_as`].
    pub fn delete(&self, kind: &str, name: &str) -> Result<DeleteOutcome, StoreError> {
        self.delete_as(Writer::Reconciler, kind, name, false)
    }

    /// Deletes an object by `writer`'s rights. Without finalizers it is removed at
    /// once; with finalizers it is marked (`deletionTimestamp`, generation bumped)
    /// and removed when the last finalizer is dropped. An operator deletes a
    /// chain-owned VM only with `force`, which leaves an event naming them.
    pub fn delete_as(
        &self,
        writer: Writer,
        kind: &str,
        name: &str,
        force: bool,
    ) -> Result<DeleteOutcome, StoreError> {
        let kind = canonical_kind(kind);
        self.write(writer, false, |w| {
            w.delete(kind, name, force)?.ok_or(StoreError::NotFound {
                kind,
                name: name.into(),
            })
        })
    }

    /// Reserves a VMID in `[first, last]` for the VM `name` before it is cloned,
    /// skipping ids `taken` in Proxmox, and records it in the VM's status in the
    /// same transaction. Idempotent: a VM that holds one gets it back.
    pub fn reserve_vmid(
        &self,
        name: &str,
        first: u32,
        last: u32,
        taken: &dyn Fn(u32) -> bool,
    ) -> Result<u32, StoreError> {
        let not_found = || StoreError::NotFound {
            kind: VirtualMachine::KIND,
            name: name.into(),
        };
        self.write(Writer::Allocator, false, |w| {
            let mut got = None;
            w.update_status::<VirtualMachine>(name, |vm, a| {
                if let Some(v) = vm.status.vmid {
                    got = Some(v);
                    return Ok(false);
                }
                let Some(v) = alloc::reserve_vmid(a.txn, a.key, first, last, taken)? else {
                    return Err(StoreError::Rejected {
                        kind: VirtualMachine::KIND,
                        name: name.into(),
                        reason: format!(
                            "no free VMID in {first}..={last}; widen proxmox.vmidFirst/vmidLast"
                        ),
                    });
                };
                vm.status.vmid = Some(v);
                got = Some(v);
                Ok(true)
            })?
            .ok_or_else(not_found)?;
            got.ok_or_else(not_found)
        })
    }

    /// Gives up the VM's reserved VMID because Proxmox says something else holds
    /// it; that id is never handed out again.
    pub fn reject_vmid(&self, name: &str, vmid: u32) -> Result<(), StoreError> {
        self.write(Writer::Allocator, false, |w| {
            alloc::mark_foreign(w.txn(), vmid)?;
            w.mark_dirty();
            w.update_status::<VirtualMachine>(name, |vm, _| {
                let had = vm.status.vmid == Some(vmid);
                if had {
                    vm.status.vmid = None;
                }
                Ok(had)
            })
        })?;
        tracing::warn!(
            vm = name,
            vmid,
            "VMID is taken in Proxmox by something else; it will not be used again"
        );
        Ok(())
    }

    /// Tries again to allocate the addresses a VM wants but lacks (an exhausted
    /// pool that has since freed up).
    pub fn retry_addresses(&self, name: &str) -> Result<Option<VirtualMachine>, StoreError> {
        self.write(Writer::Allocator, false, |w| {
            w.update_status::<VirtualMachine>(name, |vm, a| {
                let before = vm.status.clone();
                vm.allocate(a)?;
                Ok(vm.status != before)
            })
        })
    }

    /// Appends an event to an object's log (dropping the oldest beyond retention).
    pub fn record_event(
        &self,
        kind: &str,
        name: &str,
        type_: EventType,
        reason: &str,
        message: &str,
    ) -> Result<(), StoreError> {
        let kind = canonical_kind(kind);
        // Events are append-only notes; any writer may leave one.
        let note = Note {
            type_,
            reason,
            message,
        };
        self.write(Writer::Reconciler, false, |w| w.event(kind, name, note))
    }

    /// Reads one object.
    pub fn get<R: Resource>(&self, name: &str) -> Result<Option<R>, StoreError> {
        self.get_raw(R::KIND, name)?
            .map(|bytes| decode(&key(R::KIND, name), &bytes))
            .transpose()
    }

    /// The subscription an access NFT was minted for (`status.nftTokenId`),
    /// from the token index: one lookup, however many subscriptions there are.
    pub fn subscription_for_token(
        &self,
        token: u64,
    ) -> Result<Option<blockhost_crd::Subscription>, StoreError> {
        let txn = self.inner.db.begin_read()?;
        let index = txn.open_table(index::NFT_TOKENS)?;
        let Some(name) = index::lookup(&index, token)? else {
            return Ok(None);
        };
        let k = key(blockhost_crd::Subscription::KIND, &name);
        let objects = txn.open_table(OBJECTS)?;
        let found = objects.get(k.as_str())?.map(|g| decode(&k, g.value()));
        found.transpose()
    }

    /// Reads one object's stored JSON.
    pub fn get_raw(&self, kind: &str, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let txn = self.inner.db.begin_read()?;
        let table = txn.open_table(OBJECTS)?;
        Ok(table
            .get(key(kind, name).as_str())?
            .map(|g| g.value().to_vec()))
    }

    /// Reads every object of a kind, in name order.
    pub fn list<R: Resource>(&self) -> Result<Vec<R>, StoreError> {
        let mut out = Vec::new();
        self.for_each_raw(R::KIND, |k, bytes| {
            out.push(decode(k, bytes)?);
            Ok(())
        })?;
        Ok(out)
    }

    /// Calls `f` with the key and stored JSON of every object of a kind, in name
    /// order, and returns the resource version the listing is consistent with.
    /// Used by the API to serve lists without decoding and re-encoding each object.
    pub fn for_each_raw(
        &self,
        kind: &str,
        mut f: impl FnMut(&str, &[u8]) -> Result<(), StoreError>,
    ) -> Result<u64, StoreError> {
        let txn = self.inner.db.begin_read()?;
        let table = txn.open_table(OBJECTS)?;
        let meta = txn.open_table(META)?;
        let rv = meta.get(META_RV)?.map(|g| g.value()).unwrap_or(0);
        let (start, end) = kind_range(kind);
        for entry in table.range(start.as_str()..end.as_str())? {
            let (k, v) = entry?;
            f(k.value(), v.value())?;
        }
        Ok(rv)
    }

    /// Names of every object of a kind, in order.
    pub fn for_each_names(&self, kind: &str) -> Result<Vec<String>, StoreError> {
        let mut out = Vec::new();
        self.for_each_raw(kind, |k, _| {
            out.push(k.split_once('/').map_or(k, |(_, n)| n).to_owned());
            Ok(())
        })?;
        Ok(out)
    }

    /// Number of objects of a kind.
    pub fn count(&self, kind: &str) -> Result<u64, StoreError> {
        let mut n = 0;
        self.for_each_raw(kind, |_, _| {
            n += 1;
            Ok(())
        })?;
        Ok(n)
    }

    /// Total number of objects.
    pub fn total_objects(&self) -> Result<u64, StoreError> {
        let txn = self.inner.db.begin_read()?;
        Ok(txn.open_table(OBJECTS)?.len()?)
    }

    /// Who holds a VMID (`"VirtualMachine/name"`, the foreign marker, or nobody).
    pub fn vmid_owner(&self, vmid: u32) -> Result<Option<String>, StoreError> {
        let txn = self.inner.db.begin_read()?;
        alloc::vmid_owner(&txn, vmid)
    }

    /// Who holds an address (`"VirtualMachine/name"`), if anyone.
    pub fn address_owner(&self, addr: &str) -> Result<Option<String>, StoreError> {
        let txn = self.inner.db.begin_read()?;
        alloc::address_owner(&txn, addr)
    }

    /// Events of one object (or of all when `object` is `None`), oldest first, at
    /// most the newest `limit`.
    pub fn events(
        &self,
        object: Option<(&str, &str)>,
        limit: usize,
    ) -> Result<Vec<Event>, StoreError> {
        let txn = self.inner.db.begin_read()?;
        let table = txn.open_table(EVENTS)?;
        let mut out = Vec::new();
        let mut push = |bytes: &[u8], k: &str| -> Result<(), StoreError> {
            out.push(decode::<Event>(k, bytes)?);
            Ok(())
        };
        match object {
            Some((kind, name)) => {
                let k = key(canonical_kind(kind), name);
                for entry in table.range((k.as_str(), 0)..=(k.as_str(), u64::MAX))? {
                    let (_, v) = entry?;
                    push(v.value(), &k)?;
                }
            }
            None => {
                for entry in table.iter()? {
                    let (k, v) = entry?;
                    push(v.value(), k.value().0)?;
                }
                out.sort_by_key(|e| e.seq);
            }
        }
        let skip = out.len().saturating_sub(limit);
        out.drain(..skip);
        Ok(out)
    }
}

/// Creates the state directory readable by its owner only (it holds wallet data).
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.exists() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// The database file is 0600: it holds every subscriber's wallet and, later, keys.
fn restrict_file(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Err(e) = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)) {
        tracing::warn!(path = %path.display(), error = %e, "cannot restrict database file permissions to 0600");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panicking_store_task_is_a_typed_error() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("db"), StoreOptions::default()).unwrap();
        assert_eq!(s.blocking(|s| s.resource_version()).await.unwrap(), 0);
        let err = s
            .blocking(|_| -> Result<(), StoreError> { panic!("boom") })
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::TaskFailed { .. }), "{err}");
        // The cause is the source, not repeated in the message.
        assert!(!err.to_string().contains("boom"), "{err}");
        let source = std::error::Error::source(&err).unwrap().to_string();
        assert!(source.contains("boom"), "{source}");
    }

    #[test]
    fn chain_time_only_moves_the_clock_forward() {
        let dir = tempfile::tempdir().unwrap();
        let fixed = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let opts = StoreOptions {
            clock: Arc::new(move || fixed),
            ..StoreOptions::default()
        };
        let s = Store::open(&dir.path().join("db"), opts).unwrap();
        assert_eq!(s.now(), fixed);
        s.observe_chain_time(1_700_000_000); // behind the wall clock: ignored
        assert_eq!(s.now(), fixed);
        s.observe_chain_time(1_900_000_000); // a dev chain ahead in time
        assert_eq!(s.now().timestamp(), 1_900_000_000);
        s.observe_chain_time(1_850_000_000); // never backwards
        assert_eq!(s.now().timestamp(), 1_900_000_000);
    }

    use blockhost_crd::meta::{ConditionStatus, set_condition};
    use blockhost_crd::{Condition, Name, VmPhase};

    fn vm(name: &str, cores: u32) -> AnyObject {
        let v: VirtualMachine = serde_json::from_value(serde_json::json!({
            "apiVersion": "blockhost.io/v1alpha1", "kind": "VirtualMachine",
            "metadata": {"name": name},
            "spec": {"owner": "0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266",
                     "resources": {"cores": cores, "memoryMiB": 1024, "diskGiB": 10}}
        }))
        .unwrap();
        AnyObject::VirtualMachine(Box::new(v))
    }

    fn open(dir: &tempfile::TempDir) -> Store {
        Store::open(&dir.path().join("s.redb"), StoreOptions::default()).unwrap()
    }

    fn outcomes(r: &[ApplyResult]) -> Vec<ApplyOutcome> {
        r.iter().map(|r| r.outcome).collect()
    }

    #[test]
    fn generation_bumps_on_spec_change_only() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(&dir);
        assert_eq!(
            outcomes(&s.apply(vec![vm("a", 1)], false).unwrap()),
            [ApplyOutcome::Created]
        );
        assert_eq!(
            outcomes(&s.apply(vec![vm("a", 1)], false).unwrap()),
            [ApplyOutcome::Unchanged]
        );
        let v1: VirtualMachine = s.get("a").unwrap().unwrap();
        assert_eq!(v1.metadata.generation, Some(1));
        let rv1 = v1.metadata.resource_version.unwrap();

        // A status write bumps resourceVersion, not generation.
        let v = s
            .update_status::<VirtualMachine>("a", |v| {
                v.status.phase = VmPhase::Running;
                v.status.observed_generation = Some(1);
                set_condition(
                    &mut v.status.conditions,
                    Condition {
                        type_: "Ready".into(),
                        status: ConditionStatus::True,
                        reason: "Started".into(),
                        message: "running".into(),
                        last_transition_time: Utc::now(),
                    },
                )
            })
            .unwrap()
            .unwrap();
        assert_eq!(v.metadata.generation, Some(1));
        assert!(v.metadata.resource_version.unwrap() > rv1);

        // Re-applying the same spec keeps the status and writes nothing.
        assert_eq!(
            outcomes(&s.apply(vec![vm("a", 1)], false).unwrap()),
            [ApplyOutcome::Unchanged]
        );
        let r = s.apply(vec![vm("a", 2)], false).unwrap();
        assert_eq!(
            (r[0].outcome, r[0].generation),
            (ApplyOutcome::Configured, 2)
        );
        let v2: VirtualMachine = s.get("a").unwrap().unwrap();
        assert_eq!(
            v2.status.phase,
            VmPhase::Running,
            "status survives a spec change"
        );
        assert_eq!(v2.metadata.uid, v1.metadata.uid);
        assert_eq!(
            v2.metadata.creation_timestamp,
            v1.metadata.creation_timestamp
        );
    }

    #[test]
    fn apply_is_all_or_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(&dir);
        s.apply(vec![vm("a", 1)], false).unwrap();
        // "a" shrinking its disk is refused, so "b" must not land either.
        let mut shrink = vm("a", 1);
        if let AnyObject::VirtualMachine(v) = &mut shrink {
            v.spec.resources.disk_gib = blockhost_crd::DiskGib::new(5).unwrap();
        }
        let err = s.apply(vec![vm("b", 1), shrink], false).unwrap_err();
        assert!(err.to_string().contains("cannot shrink"), "{err}");
        assert!(s.get::<VirtualMachine>("b").unwrap().is_none());
        // Duplicates in one apply are refused.
        assert!(s.apply(vec![vm("c", 1), vm("c", 2)], false).is_err());
        assert!(s.get::<VirtualMachine>("c").unwrap().is_none());
        // A dry run reports but writes nothing.
        let r = s.apply(vec![vm("d", 1)], true).unwrap();
        assert_eq!(r[0].outcome, ApplyOutcome::Created);
        assert!(s.get::<VirtualMachine>("d").unwrap().is_none());
    }

    #[test]
    fn delete_waits_for_finalizers() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(&dir);
        s.apply(vec![vm("a", 1), vm("b", 1)], false).unwrap();
        assert_eq!(
            s.delete("VirtualMachine", "b").unwrap(),
            DeleteOutcome::Deleted
        );
        assert!(s.get::<VirtualMachine>("b").unwrap().is_none());
        assert!(matches!(
            s.delete("VirtualMachine", "b"),
            Err(StoreError::NotFound { .. })
        ));

        s.update_status::<VirtualMachine>("a", |v| {
            v.metadata.finalizers.push("blockhost.io/proxmox".into());
            true
        })
        .unwrap();
        assert_eq!(
            s.delete("VirtualMachine", "a").unwrap(),
            DeleteOutcome::Terminating
        );
        let v: VirtualMachine = s.get("a").unwrap().unwrap();
        assert!(v.metadata.deletion_timestamp.is_some());
        assert_eq!(
            v.metadata.generation,
            Some(2),
            "deletion is a desired-state change"
        );
        assert!(
            s.apply(vec![vm("a", 1)], false)
                .unwrap_err()
                .to_string()
                .contains("being deleted")
        );
        // Dropping the last finalizer removes the object.
        let gone = s
            .update_status::<VirtualMachine>("a", |v| {
                v.metadata.finalizers.clear();
                true
            })
            .unwrap();
        assert!(gone.is_none());
        assert!(s.get::<VirtualMachine>("a").unwrap().is_none());
        assert!(
            s.events(Some(("VirtualMachine", "a")), 100)
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn status_updates_cannot_touch_spec_or_metadata() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(&dir);
        s.apply(vec![vm("a", 1)], false).unwrap();
        let r = s.update_status::<VirtualMachine>("a", |v| {
            v.spec.resources.cores = blockhost_crd::Cores::new(8).unwrap();
            true
        });
        assert!(r.is_err());
        let v = s
            .update_status::<VirtualMachine>("a", |v| {
                v.metadata.name = Name::new("evil").unwrap();
                v.metadata.generation = Some(99);
                v.status.node = Some("pve1".into());
                true
            })
            .unwrap()
            .unwrap();
        assert_eq!(
            (
                v.metadata.name.as_str(),
                v.metadata.generation,
                v.status.node.as_deref()
            ),
            ("a", Some(1), Some("pve1"))
        );
    }

    #[test]
    fn events_are_bounded_per_object() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(
            &dir.path().join("s.redb"),
            StoreOptions {
                event_retention: 5,
                ..StoreOptions::default()
            },
        )
        .unwrap();
        s.apply(vec![vm("a", 1), vm("b", 1)], false).unwrap();
        for i in 0..20 {
            s.record_event(
                "VirtualMachine",
                "a",
                EventType::Warning,
                "Tick",
                &format!("tick {i}"),
            )
            .unwrap();
        }
        let ev = s.events(Some(("VirtualMachine", "a")), 100).unwrap();
        assert_eq!(ev.len(), 5);
        assert_eq!(ev.last().unwrap().message, "tick 19");
        assert!(ev.windows(2).all(|w| w[0].seq < w[1].seq));
        assert_eq!(
            s.events(Some(("VirtualMachine", "b")), 100).unwrap().len(),
            1
        );
        assert_eq!(s.events(None, 3).unwrap().len(), 3);
    }

    #[test]
    fn change_feed_reports_committed_changes() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(&dir);
        let mut rx = s.subscribe();
        s.apply(vec![vm("a", 1)], false).unwrap();
        s.apply(vec![vm("a", 1)], false).unwrap(); // unchanged: no change published
        s.apply(vec![vm("a", 2)], true).unwrap(); // dry run: none either
        s.update_status::<VirtualMachine>("a", |v| {
            v.status.phase = VmPhase::Provisioning;
            true
        })
        .unwrap();
        s.update_status::<VirtualMachine>("a", |_| false).unwrap(); // no-op: none
        s.delete("VirtualMachine", "a").unwrap();
        let kinds: Vec<ChangeKind> = std::iter::from_fn(|| rx.try_recv().ok())
            .map(|c| c.what)
            .collect();
        assert_eq!(
            kinds,
            [ChangeKind::Created, ChangeKind::Status, ChangeKind::Deleted]
        );
    }

    #[test]
    fn reopen_keeps_everything_and_refuses_a_second_opener() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        {
            let s = Store::open(&path, StoreOptions::default()).unwrap();
            s.apply(vec![vm("a", 1)], false).unwrap();
            assert!(matches!(
                Store::open(&path, StoreOptions::default()),
                Err(StoreError::InUse { .. })
            ));
        }
        let s = Store::open(&path, StoreOptions::default()).unwrap();
        assert_eq!(s.list::<VirtualMachine>().unwrap().len(), 1);
        assert_eq!(s.resource_version().unwrap(), 1);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    fn add_label_migration(txn: &WriteTransaction) -> Result<(), StoreError> {
        let mut t = txn.open_table(OBJECTS)?;
        let keys: Vec<String> = t
            .iter()?
            .map(|e| e.map(|(k, _)| k.value().to_owned()))
            .collect::<Result<_, _>>()?;
        for k in keys {
            let bytes = t
                .get(k.as_str())?
                .map(|g| g.value().to_vec())
                .unwrap_or_default();
            let mut v: serde_json::Value = decode(&k, &bytes)?;
            v["metadata"]["labels"]["migrated"] = "yes".into();
            t.insert(
                k.as_str(),
                serde_json::to_vec(&v).unwrap_or_default().as_slice(),
            )?;
        }
        Ok(())
    }

    #[test]
    fn migrations_run_once_in_order_and_newer_schemas_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        Store::open(&path, StoreOptions::default())
            .unwrap()
            .apply(vec![vm("a", 1)], false)
            .unwrap();
        // The shipped migrations, then one more.
        static STEPS: &[Migration] = &[index::build, add_label_migration];
        let next = SCHEMA_VERSION + 1;
        let v2 = StoreOptions {
            schema_version: next,
            migrations: STEPS,
            ..StoreOptions::default()
        };
        let s = Store::open(&path, v2.clone()).unwrap();
        assert_eq!(s.schema_version().unwrap(), next);
        let v: VirtualMachine = s.get("a").unwrap().unwrap();
        assert_eq!(
            v.metadata.labels.get("migrated").map(String::as_str),
            Some("yes")
        );
        drop(s);
        // Opening the upgraded database with the old code is refused, not misread.
        assert!(matches!(
            Store::open(&path, StoreOptions::default()),
            Err(StoreError::NewerSchema { found }) if found == next
        ));
        // Without a migration for a step, opening fails and leaves the version alone.
        let v3 = StoreOptions {
            schema_version: next + 1,
            migrations: STEPS,
            ..StoreOptions::default()
        };
        assert!(Store::open(&path, v3).is_err());
        assert_eq!(
            Store::open(&path, v2).unwrap().schema_version().unwrap(),
            next
        );
    }
}
