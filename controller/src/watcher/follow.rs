//! The watcher loop: follow the head, read logs in chunks up to `head -
//! confirmations`, apply each chunk in one store transaction with the cursor,
//! and undo what reverted blocks caused.
//!
//! One step = one decision from the persisted cursor, so a restart (or a crash
//! at any point) resumes exactly: a chunk is either committed with its cursor or
//! not at all. Hash checks guard every step: the cursor block's hash must still
//! be on the node's chain (else walk recorded blocks back to the fork and
//! revert), and a chunk's end block must have the same hash before and after
//! `eth_getLogs` (else the chunk is read again). A node that refuses a range
//! halves it; after successes it grows back to `maxBlockRange`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

use super::admin::{self, AdminReader};
use super::events::{ChainEvent, decode};
use super::mapping::Mapper;
use crate::metrics::Metrics;
use crate::store::chain::{BlockEvents, BlockRef, CommitStats};
use crate::store::{ChangeKind, Store, StoreError};
use blockhost_chain::node::{Node, NodeError, RawLog};
use blockhost_crd::{Plan, Resource, Subscription, VirtualMachine, WalletAddress};
use blockhost_root_agent::client::RootAgentClient;

/// What the loop needs to know about the chain.
#[derive(Debug, Clone)]
pub struct WatchConfig {
    /// Store scope of this chain and contract set.
    pub scope: String,
    /// Expected chain id.
    pub chain_id: u64,
    /// `BlockhostSubscriptions`.
    pub subscriptions: [u8; 20],
    /// `AccessCredentialNFT`.
    pub nft: [u8; 20],
    /// First block read on the first run.
    pub deployment_block: u64,
    /// Blocks a block must be buried under.
    pub confirmations: u64,
    /// Head polling interval.
    pub poll: Duration,
    /// Largest `eth_getLogs` range.
    pub max_range: u64,
    /// Blocks whose undo records are kept (deepest reorg that can be undone).
    pub reorg_window: u64,
    /// Advance the store's clock to confirmed block timestamps
    /// (`chain.followChainTime`).
    pub follow_chain_time: bool,
}

/// What a batch applies: a contract's event, or a transaction to the admin
/// target (a command, decided in the batch's transaction).
#[derive(Debug, Clone)]
pub enum Item {
    /// A decoded contract event.
    Chain(ChainEvent),
    /// A transaction to the admin target.
    Admin(admin::AdminTx),
}

/// Adds the admin transactions to the chunk's blocks (after each block's logs),
/// keeping blocks in order. A block both lists name must carry one hash.
fn merge(
    blocks: Vec<BlockEvents<ChainEvent>>,
    admin_txs: Vec<(BlockRef, Vec<admin::AdminTx>)>,
) -> Result<Vec<BlockEvents<Item>>, WatchError> {
    let mut by_block: BTreeMap<u64, BlockEvents<Item>> = blocks
        .into_iter()
        .map(|b| {
            let events = b
                .events
                .into_iter()
                .map(|(id, ev)| (id, Item::Chain(ev)))
                .collect();
            (
                b.block.number,
                BlockEvents {
                    block: b.block,
                    events,
                },
            )
        })
        .collect();
    for (block, txs) in admin_txs {
        let entry = by_block.entry(block.number).or_insert_with(|| BlockEvents {
            block,
            events: Vec::new(),
        });
        if entry.block.hash != block.hash {
            return Err(WatchError::Inconsistent(format!(
                "block {} has one hash in its logs and another with its transactions",
                block.number
            )));
        }
        for (i, t) in txs.into_iter().enumerate() {
            // Ids of transactions cannot collide with log ids (`0xhash:index`).
            let id = format!(
                "0x{}:tx{i}:0x{}",
                hex::encode(block.hash),
                hex::encode(t.hash)
            );
            entry.events.push((id, Item::Admin(t)));
        }
    }
    Ok(by_block.into_values().collect())
}

/// Why a step failed.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    /// The node failed.
    #[error("node request failed")]
    Node(#[from] NodeError),
    /// The store failed.
    #[error("store failed")]
    Store(#[from] StoreError),
    /// The node serves another chain.
    #[error("the node reports chain id {got}, the configuration says {want} (chain.chainId)")]
    WrongChain {
        /// Configured.
        want: u64,
        /// Reported.
        got: u64,
    },
    /// A reorg deeper than the recorded blocks.
    #[error(
        "a reorg reached below every recorded block (more than {window} blocks deep); the watcher cannot undo it — restore from a backup or raise confirmations"
    )]
    ReorgTooDeep {
        /// The window.
        window: u64,
    },
    /// The node's answer contradicts itself.
    #[error("inconsistent answer from the node: {0}")]
    Inconsistent(String),
}

/// What a step achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// More work is ready now.
    More,
    /// At the confirmed head; wait for the next block.
    CaughtUp,
}

/// The chain watcher.
pub struct Watcher<N: Node> {
    node: N,
    store: Store,
    mapper: Arc<Mapper>,
    cfg: WatchConfig,
    metrics: Arc<Metrics>,
    range: u64,
    successes: u32,
    /// Woken by new-head notifications (see `blockhost_chain::heads`).
    wake: Option<Arc<tokio::sync::Notify>>,
    /// Admin commands: how to read them, and the root agent that opens knocks
    /// (`None`: decided and logged, nothing opened — tests of the reader).
    admin: Option<(Arc<AdminReader>, Option<RootAgentClient>)>,
}

impl<N: Node> std::fmt::Debug for Watcher<N> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watcher")
            .field("cfg", &self.cfg)
            .field("range", &self.range)
            .finish_non_exhaustive()
    }
}

fn label(k: &str, v: &str) -> Vec<(String, String)> {
    vec![(k.into(), v.into())]
}

fn gauge(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl<N: Node> Watcher<N> {
    /// A watcher over `node`, writing to `store`.
    pub fn new(
        node: N,
        store: Store,
        mapper: Arc<Mapper>,
        cfg: WatchConfig,
        metrics: Arc<Metrics>,
    ) -> Self {
        let range = cfg.max_range.max(1);
        Self {
            node,
            store,
            mapper,
            cfg,
            metrics,
            range,
            successes: 0,
            wake: None,
            admin: None,
        }
    }

    /// Also reads admin commands, opening accepted knocks through `agent`.
    pub fn with_admin(mut self, reader: Arc<AdminReader>, agent: Option<RootAgentClient>) -> Self {
        self.admin = Some((reader, agent));
        self
    }

    /// Steps as soon as `wake` is notified (a new head), not only every poll.
    pub fn with_wake(mut self, wake: Arc<tokio::sync::Notify>) -> Self {
        self.wake = Some(wake);
        self
    }

    /// The current `eth_getLogs` range (shrinks while a node refuses).
    pub fn range(&self) -> u64 {
        self.range
    }

    /// Runs until `shutdown`: steps while there is work, then waits for the next
    /// poll (or a plan change that may unblock subscriptions). Errors are logged
    /// and retried with backoff; the loop itself never ends on bad chain data.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut changes = self.store.subscribe();
        let mut failures: u32 = 0;
        let mut resync = true;
        let mut chain_checked = false;
        loop {
            if shutdown.is_cancelled() {
                return;
            }
            let wait = match self.attempt(&mut chain_checked, &mut resync).await {
                Ok(Progress::More) => {
                    failures = 0;
                    tokio::task::yield_now().await;
                    continue;
                }
                Ok(Progress::CaughtUp) => {
                    failures = 0;
                    self.cfg.poll
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    // A failure may be a reconnect to a node now on another chain.
                    chain_checked = false;
                    self.failed(&e, failures)
                }
            };
            match self.pause(wait, failures, &mut changes, &shutdown).await {
                None => return,
                Some(again) => resync |= again,
            }
        }
    }

    /// One attempt: the chain id (until it has been seen to match, and again
    /// after a failed attempt), a resync when one is due, then a step.
    async fn attempt(
        &mut self,
        chain_checked: &mut bool,
        resync: &mut bool,
    ) -> Result<Progress, WatchError> {
        if !*chain_checked {
            let got = self.node.chain_id().await?;
            if got != self.cfg.chain_id {
                return Err(WatchError::WrongChain {
                    want: self.cfg.chain_id,
                    got,
                });
            }
            *chain_checked = true;
        }
        if *resync {
            self.resync().await?;
            *resync = false;
        }
        self.step().await
    }

    /// Counts and logs a failed attempt; returns the backoff before the next.
    fn failed(&self, e: &WatchError, failures: u32) -> Duration {
        let kind = match e {
            WatchError::Node(NodeError::Unavailable { .. }) => "unavailable",
            WatchError::Node(NodeError::WrongChain { .. }) => "wrong_chain",
            WatchError::Node(_) => "node",
            WatchError::Store(_) => "store",
            WatchError::WrongChain { .. } => "wrong_chain",
            WatchError::ReorgTooDeep { .. } => "reorg_too_deep",
            WatchError::Inconsistent(_) => "inconsistent",
        };
        self.metrics
            .chain_errors
            .get_or_create(&label("kind", kind))
            .inc();
        let backoff =
            (self.cfg.poll * 2u32.saturating_pow(failures.min(8))).min(Duration::from_secs(30));
        tracing::warn!(error = %crate::error_chain(e), retry_in_ms = backoff.as_millis() as u64, "chain watcher step failed");
        backoff
    }

    /// Waits `wait`, or less when a new head arrives (not after a failure: the
    /// backoff wins over new heads). Returns whether a resync became due meanwhile
    /// (a plan an operator applied may unblock subscriptions; a status the minter
    /// wrote may carry a token id), or `None` on shutdown.
    async fn pause(
        &self,
        wait: Duration,
        failures: u32,
        changes: &mut tokio::sync::broadcast::Receiver<crate::store::Change>,
        shutdown: &CancellationToken,
    ) -> Option<bool> {
        let sleep = tokio::time::sleep(wait);
        tokio::pin!(sleep);
        let woken = async {
            match (&self.wake, failures) {
                (Some(w), 0) => w.notified().await,
                _ => std::future::pending().await,
            }
        };
        tokio::pin!(woken);
        let mut resync = false;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return None,
                () = &mut sleep => return Some(resync),
                () = &mut woken => return Some(resync),
                c = changes.recv() => match c {
                    Ok(c) if c.kind == Plan::KIND || (c.kind == Subscription::KIND && c.what == ChangeKind::Status) => resync = true,
                    Ok(_) => {}
                    Err(RecvError::Lagged(_)) => resync = true,
                    Err(RecvError::Closed) => return None,
                },
            }
        }
    }

    /// One decision from the persisted cursor.
    pub async fn step(&mut self) -> Result<Progress, WatchError> {
        let head = self.node.head().await?;
        self.metrics.chain_head_block.set(gauge(head));
        let target = head.saturating_sub(self.cfg.confirmations);
        let cursor = self.store.chain_cursor(&self.cfg.scope)?;
        if let Some(c) = cursor
            && self.cursor_replaced(c).await?
        {
            self.handle_reorg().await?;
            return Ok(Progress::More);
        }
        let from = cursor.map_or(self.cfg.deployment_block, |c| c.number + 1);
        if from > target {
            return Ok(Progress::CaughtUp);
        }
        let to = target.min(from.saturating_add(self.range - 1));
        let Some(pre) = self.node.block_hash(to).await? else {
            return Ok(Progress::CaughtUp);
        };
        let Some(blocks) = self.read_chunk(from, to, pre, cursor).await? else {
            return Ok(Progress::More);
        };
        let n_events: usize = blocks.iter().map(|b| b.events.len()).sum();
        let (stats, decided) = self
            .commit(
                blocks,
                BlockRef {
                    number: to,
                    hash: pre,
                },
            )
            .await?;
        self.metrics.chain_cursor_block.set(gauge(to));
        if self.cfg.follow_chain_time
            && let Some(t) = self.node.block_time(to).await?
        {
            tracing::debug!(block = to, time = t, "chain time observed");
            self.store.observe_chain_time(t);
        }
        self.count_commit(&stats);
        self.execute(decided);
        tracing::debug!(
            from,
            to,
            events = n_events,
            applied = stats.applied,
            changes = stats.changes,
            "chain chunk committed"
        );
        self.widen_range();
        Ok(if to < target {
            Progress::More
        } else {
            Progress::CaughtUp
        })
    }

    /// Reads the chunk `from..=to` whose end block is `pre`: its logs and admin
    /// transactions, by block. `None` when the caller should step again at once:
    /// the node refused the range (halved), or the chain moved while we read.
    async fn read_chunk(
        &mut self,
        from: u64,
        to: u64,
        pre: [u8; 32],
        cursor: Option<BlockRef>,
    ) -> Result<Option<Vec<BlockEvents<Item>>>, WatchError> {
        let Some(logs) = self.fetch_logs(from, to).await? else {
            return Ok(None);
        };
        let admin_txs = match &self.admin {
            Some((reader, _)) => {
                let now = self.store.now().timestamp();
                match admin::fetch(&self.node, reader.target(), (from, to), pre, now).await? {
                    Some(t) => t,
                    None => return Ok(None),
                }
            }
            None => Vec::new(),
        };
        if self.node.block_hash(to).await? != Some(pre) {
            tracing::info!(
                block = to,
                "block changed while reading logs; reading again"
            );
            return Ok(None);
        }
        // The chunk must extend the cursor: if the cursor block was replaced
        // while we read, `to` may sit on a branch that does not contain it, and
        // committing would hide that reorg for good. Check again; the next step
        // then undoes it properly.
        if let Some(c) = cursor
            && self.cursor_replaced(c).await?
        {
            return Ok(None);
        }
        let blocks = self.group(logs, from, to, pre)?;
        Ok(Some(merge(blocks, admin_txs)?))
    }

    /// Counts the decided admin commands and has the accepted ones opened.
    fn execute(&self, decided: Vec<admin::Decided>) {
        for d in decided {
            self.metrics
                .admin_commands
                .get_or_create(&label("result", d.result()))
                .inc();
            if let (Ok(knock), Some((_, Some(agent)))) = (d.outcome, &self.admin) {
                tokio::spawn(admin::execute(
                    agent.clone(),
                    self.store.clone(),
                    self.metrics.clone(),
                    d.tx,
                    knock,
                ));
            }
        }
    }

    /// Whether the block under the cursor is no longer on the chain. A zero hash
    /// marks "before the deployment block" after a reorg that removed every
    /// recorded block: nothing to check there.
    async fn cursor_replaced(&self, c: BlockRef) -> Result<bool, WatchError> {
        Ok(c.hash != [0; 32] && self.node.block_hash(c.number).await? != Some(c.hash))
    }

    /// The chunk's logs, or `None` when the node refused the range and it was
    /// halved (the caller steps again at once).
    async fn fetch_logs(&mut self, from: u64, to: u64) -> Result<Option<Vec<RawLog>>, WatchError> {
        match self
            .node
            .logs(from, to, &[self.cfg.subscriptions, self.cfg.nft])
            .await
        {
            Ok(l) => Ok(Some(l)),
            Err(NodeError::Refused {
                method,
                code,
                message,
            }) if self.range > 1 => {
                let was = self.range;
                let asked = to - from + 1;
                self.range = (asked / 2).max(1);
                self.successes = 0;
                self.metrics.chain_range_refusals.inc();
                self.metrics.chain_get_logs_range.set(gauge(self.range));
                tracing::info!(from, to, code, %message, method, was, now = self.range, "node refused the log range; narrowing");
                Ok(None)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Applies a chunk's events and moves the cursor to `end`, in one store
    /// transaction; re-examines waiting subscriptions when plans changed.
    /// Returns the admin commands decided in it (executed only now that the
    /// transaction, with their nonces, is durable).
    async fn commit(
        &self,
        blocks: Vec<BlockEvents<Item>>,
        end: BlockRef,
    ) -> Result<(CommitStats, Vec<admin::Decided>), WatchError> {
        let mapper = self.mapper.clone();
        let reader = self.admin.as_ref().map(|(r, _)| r.clone());
        let scope = self.cfg.scope.clone();
        let window = self.cfg.reorg_window;
        let out = self
            .store
            .blocking(move |store| {
                let plans_changed = std::cell::Cell::new(false);
                let now = store.now().timestamp();
                let mut decided = Vec::new();
                let stats = store.chain_commit(
                    &scope,
                    &blocks,
                    end,
                    window,
                    |tx, item: &Item| {
                        match item {
                            Item::Chain(ev) => {
                                if mapper.apply(tx, ev)? {
                                    plans_changed.set(true);
                                }
                            }
                            Item::Admin(a) => {
                                if let Some(r) = &reader {
                                    decided.push(r.decide(tx, a, now)?);
                                }
                            }
                        }
                        Ok(())
                    },
                    |tx| {
                        if plans_changed.get() {
                            mapper.resync(tx)?;
                        }
                        Ok(())
                    },
                )?;
                Ok((stats, decided))
            })
            .await?;
        Ok(out)
    }

    /// Counts a commit's events in the metrics.
    fn count_commit(&self, stats: &CommitStats) {
        self.metrics
            .chain_events
            .get_or_create(&label("outcome", "applied"))
            .inc_by(stats.applied as u64);
        if stats.duplicates > 0 {
            self.metrics
                .chain_events
                .get_or_create(&label("outcome", "duplicate"))
                .inc_by(stats.duplicates as u64);
        }
    }

    /// After four chunks in a row were accepted, asks for twice the range again
    /// (up to the configured maximum): a node's limit is often temporary.
    fn widen_range(&mut self) {
        self.successes += 1;
        if self.successes >= 4 && self.range < self.cfg.max_range {
            self.range = (self.range * 2).min(self.cfg.max_range);
            self.successes = 0;
            self.metrics.chain_get_logs_range.set(gauge(self.range));
        }
    }

    /// Groups and decodes a chunk's logs by block; undecodable logs are skipped
    /// with a warning (chain data cannot stop the watcher).
    fn group(
        &self,
        logs: Vec<RawLog>,
        from: u64,
        to: u64,
        to_hash: [u8; 32],
    ) -> Result<Vec<BlockEvents<ChainEvent>>, WatchError> {
        let mut by_block: BTreeMap<u64, BlockEvents<ChainEvent>> = BTreeMap::new();
        let mut logs = logs;
        logs.sort_by_key(|l| (l.block_number, l.log_index));
        for log in logs {
            if log.block_number < from || log.block_number > to {
                return Err(WatchError::Inconsistent(format!(
                    "log of block {} in an answer for {from}..={to}",
                    log.block_number
                )));
            }
            if log.block_number == to && log.block_hash != to_hash {
                return Err(WatchError::Inconsistent(format!(
                    "log of block {to} carries another block hash"
                )));
            }
            if log.address != self.cfg.subscriptions && log.address != self.cfg.nft {
                continue;
            }
            let entry = by_block
                .entry(log.block_number)
                .or_insert_with(|| BlockEvents {
                    block: BlockRef {
                        number: log.block_number,
                        hash: log.block_hash,
                    },
                    events: Vec::new(),
                });
            if entry.block.hash != log.block_hash {
                return Err(WatchError::Inconsistent(format!(
                    "logs of block {} carry two block hashes",
                    log.block_number
                )));
            }
            match decode(&log, self.cfg.subscriptions, self.cfg.nft) {
                Ok(Some(ev)) => entry.events.push((log.id(), ev)),
                Ok(None) => {}
                Err(e) => {
                    self.metrics
                        .chain_events
                        .get_or_create(&label("outcome", "malformed"))
                        .inc();
                    tracing::warn!(block = log.block_number, log_index = log.log_index, tx = %format!("0x{}", hex::encode(log.transaction_hash)), error = %crate::error_chain(&e), "skipping a malformed log");
                }
            }
        }
        Ok(by_block.into_values().collect())
    }

    /// Finds the newest recorded block still on the node's chain and reverts
    /// everything above it.
    async fn handle_reorg(&mut self) -> Result<(), WatchError> {
        let records = self.store.chain_blocks(&self.cfg.scope)?;
        let tip = records.first().map_or(0, |r| r.number);
        let mut fork = None;
        for r in &records {
            if self.node.block_hash(r.number).await? == Some(r.hash) {
                fork = Some(*r);
                break;
            }
        }
        let fork = match fork {
            Some(f) => f,
            // Everything recorded is gone. If the first record was the very
            // start, there is nothing older to keep: revert to before it.
            None if records
                .last()
                .is_some_and(|r| r.number <= self.cfg.deployment_block) =>
            {
                BlockRef {
                    number: self.cfg.deployment_block.saturating_sub(1),
                    hash: [0; 32],
                }
            }
            None => {
                return Err(WatchError::ReorgTooDeep {
                    window: self.cfg.reorg_window,
                });
            }
        };
        let scope = self.cfg.scope.clone();
        let undone = self
            .store
            .blocking(move |store| store.chain_revert(&scope, fork))
            .await?;
        self.metrics.chain_reorgs.inc();
        tracing::warn!(
            fork = fork.number,
            tip,
            blocks_undone = undone,
            "chain reorganisation: changes of reverted blocks undone"
        );
        Ok(())
    }

    /// Runs the mapping's resync in a commit at the cursor, when it would change
    /// anything (checked read-only first, so an idle daemon writes nothing).
    async fn resync(&mut self) -> Result<(), WatchError> {
        let Some(cursor) = self.store.chain_cursor(&self.cfg.scope)? else {
            return Ok(());
        };
        let subs = self.store.list::<Subscription>()?;
        let plans = self.store.list::<Plan>()?;
        let store = &self.store;
        let scope = &self.cfg.scope;
        let needed = Mapper::resync_needed(&subs, &plans, |s| {
            let token = s.status.nft_token_id?;
            let holder = store.chain_nft_owner(scope, token).ok()??;
            let vm = store
                .get::<VirtualMachine>(s.spec.vm_name.as_str())
                .ok()??;
            Some((vm.spec.owner, WalletAddress::from_bytes(holder)))
        });
        if !needed {
            return Ok(());
        }
        let mapper = self.mapper.clone();
        let scope = self.cfg.scope.clone();
        let window = self.cfg.reorg_window;
        self.store
            .blocking(move |store| {
                store.chain_commit::<ChainEvent>(
                    &scope,
                    &[],
                    cursor,
                    window,
                    |_, _| Ok(()),
                    |tx| mapper.resync(tx).map(|_| ()),
                )
            })
            .await?;
        Ok(())
    }
}
