//! Admin commands over the chain: the admin wallet's transactions to the
//! configured target, read block by block under the watcher's cursor,
//! confirmations and reorg checks, decided inside the batch's store transaction
//! and executed through the root agent only after that transaction committed.
//!
//! Order of things, and why:
//! 1. [`fetch`] reads the transactions to the target of the chunk's blocks,
//!    newest first, and stops at the first block mined more than
//!    [`READ_WINDOW_SECS`] before now: a command in it could only be accepted
//!    if it had been dated more than 60 s ahead of its block, which a watcher
//!    reading that block in time would have refused as from the future. So a
//!    catch-up after a long stop costs one block read per chunk, and a command
//!    sent while blockhostd was down is still applied if it is within its age.
//! 2. [`AdminReader::decide`] runs in the chunk's transaction: the checks of
//!    `blockhost_chain::admin`, then the nonce, recorded in that same
//!    transaction as the cursor ([`ChainTxn::record_admin_nonce`]); every
//!    command, accepted or refused, leaves an event on `Host/admin`.
//! 3. After the commit, [`execute`] asks the root agent to open the knock (a
//!    task per knock, so the watcher never waits for the agent). A crash between
//!    2 and 3 loses that knock rather than opening it twice: the admin sends
//!    another. The kernel closes every knock on time by itself.
//!
//! Transactions to the target without data (funding the admin wallet) are not
//! commands and leave nothing.

use std::sync::Arc;
use std::time::Instant;

use blockhost_chain::admin::{self, Knock, Policy, Refusal};
use blockhost_chain::node::{Node, NodeError};
use blockhost_crd::config::AdminConfig;
use blockhost_crd::config::firewall::Port;
use blockhost_crd::meta::EventType;
use blockhost_crd::resource::{HOST_ADMIN, HOST_KIND};
use blockhost_root_agent::client::RootAgentClient;
use blockhost_root_agent::proto::{KnockAdd, KnockDuration, KnockPorts, KnockSource};
use k256::SecretKey;

use crate::metrics::Metrics;
use crate::store::chain::{BlockRef, ChainTxn};
use crate::store::write::Note;
use crate::store::{Store, StoreError};

/// Blocks mined longer ago than this are not read for commands (see the module
/// documentation): the 300 s age limit plus the 60 s of allowed clock skew.
pub const READ_WINDOW_SECS: i64 = admin::MAX_AGE_SECS + admin::MAX_FUTURE_SECS;

/// One transaction to the target, as read from its block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminTx {
    /// Its hash (named in the events).
    pub hash: [u8; 32],
    /// The sender.
    pub from: [u8; 20],
    /// The (encrypted) command.
    pub input: Vec<u8>,
}

/// A command decided in a batch.
#[derive(Debug, Clone)]
pub struct Decided {
    /// The transaction.
    pub tx: [u8; 32],
    /// Accepted (to execute after the commit) or refused, with why.
    pub outcome: Result<Knock, Refusal>,
}

impl Decided {
    /// The `result` label of `blockhost_admin_commands_total`.
    pub fn result(&self) -> &'static str {
        match &self.outcome {
            Ok(_) => "accepted",
            Err(r) => match r {
                Refusal::OtherWallet(_) => "other_wallet",
                Refusal::Undecryptable => "undecryptable",
                Refusal::Malformed(_) => "malformed",
                Refusal::Stale(_) => "stale",
                Refusal::Future(_) => "future",
                Refusal::UnknownCommand => "unknown_command",
                Refusal::Replayed => "replayed",
                Refusal::BadParams(_) => "bad_params",
            },
        }
    }
}

/// What the watcher needs to read and decide commands.
pub struct AdminReader {
    policy: Policy,
    target: [u8; 20],
    server_key: SecretKey,
}

impl std::fmt::Debug for AdminReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Neither the key nor the command name (the operator's secret).
        f.debug_struct("AdminReader")
            .field("target", &hex::encode(self.target))
            .finish_non_exhaustive()
    }
}

fn ports(ps: &[Port]) -> Vec<u16> {
    ps.iter().map(|p| p.get()).collect()
}

impl AdminReader {
    /// From the `admin` section and the server key.
    pub fn new(cfg: &AdminConfig, server_key: SecretKey) -> Self {
        Self {
            policy: Policy {
                admin: *cfg.wallet.as_bytes(),
                knock_command: cfg.command.clone(),
                allowed_ports: ports(&cfg.allowed_ports),
                default_ports: ports(&cfg.default_ports),
                default_duration: u64::from(cfg.default_duration_secs),
            },
            target: *cfg.target().as_bytes(),
            server_key,
        }
    }

    /// The address commands are sent to.
    pub fn target(&self) -> [u8; 20] {
        self.target
    }

    /// Decides one command at `now` (Unix s) inside the batch's transaction:
    /// checks, the nonce (recorded here, before anything runs), the event.
    pub fn decide(
        &self,
        tx: &mut ChainTxn<'_>,
        a: &AdminTx,
        now: i64,
    ) -> Result<Decided, StoreError> {
        let outcome = match admin::check(&self.policy, &self.server_key, a.from, &a.input, now) {
            Ok(k) if !tx.record_admin_nonce(&k.nonce, k.timestamp)? => Err(Refusal::Replayed),
            other => other,
        };
        let d = Decided {
            tx: a.hash,
            outcome,
        };
        let hash = format!("0x{}", hex::encode(a.hash));
        match &d.outcome {
            Ok(k) => {
                let msg = format!("admin command in {hash} accepted: {}", describe(k));
                tx.event(HOST_KIND, HOST_ADMIN, Note::normal("KnockAccepted", &msg))?;
            }
            Err(r) => {
                let msg = format!("admin command in {hash} refused: {r}");
                tx.event(HOST_KIND, HOST_ADMIN, Note::warning(r.label(), &msg))?;
            }
        }
        tracing::info!(tx = %hash, result = d.result(), "admin command");
        Ok(d)
    }
}

fn describe(k: &Knock) -> String {
    let source = k
        .source
        .map_or_else(|| "any source".into(), |s| s.to_string());
    format!(
        "open ports {:?} to {source} for {} s",
        k.ports, k.duration_secs
    )
}

/// The chunk's transactions to `target`, per block, newest block first; `None`
/// when block `to` is no longer `to_hash` (the caller reads the chunk again).
pub async fn fetch<N: Node>(
    node: &N,
    target: [u8; 20],
    (from, to): (u64, u64),
    to_hash: [u8; 32],
    now: i64,
) -> Result<Option<Vec<(BlockRef, Vec<AdminTx>)>>, NodeError> {
    let mut out = Vec::new();
    for number in (from..=to).rev() {
        let Some(b) = node.block_txs_to(number, target).await? else {
            return Ok(None);
        };
        if number == to && b.hash != to_hash {
            return Ok(None);
        }
        if i64::try_from(b.timestamp).unwrap_or(i64::MAX) < now - READ_WINDOW_SECS {
            break;
        }
        let txs: Vec<AdminTx> = b
            .txs
            .into_iter()
            .filter(|t| !t.input.is_empty())
            .map(|t| AdminTx {
                hash: t.hash,
                from: t.from,
                input: t.input,
            })
            .collect();
        if !txs.is_empty() {
            out.push((
                BlockRef {
                    number,
                    hash: b.hash,
                },
                txs,
            ));
        }
    }
    Ok(Some(out))
}

/// Opens an accepted knock through the root agent and records how it went.
pub async fn execute(
    agent: RootAgentClient,
    store: Store,
    metrics: Arc<Metrics>,
    tx: [u8; 32],
    knock: Knock,
) {
    let hash = format!("0x{}", hex::encode(tx));
    let started = Instant::now();
    let result = match request(&knock) {
        Ok(req) => agent
            .knock_add(&req)
            .await
            .map_err(|e| blockhost_root_agent::error_chain(&e)),
        Err(e) => Err(e),
    };
    let (type_, reason, msg, label) = match result {
        Ok(opened) => {
            tracing::info!(tx = %hash, ms = started.elapsed().as_millis() as u64, "knock opened");
            let msg = format!(
                "knock of {hash} open: {}; it closes in {} s",
                describe(&knock),
                opened.expires_secs
            );
            (EventType::Normal, "KnockOpened", msg, "opened")
        }
        Err(why) => {
            tracing::warn!(tx = %hash, error = %why, "the root agent did not open the knock");
            let msg = format!("knock of {hash} could not be opened: {why}");
            (EventType::Warning, "KnockFailed", msg, "failed")
        }
    };
    metrics
        .admin_knocks
        .get_or_create(&vec![("result".into(), label.into())])
        .inc();
    let recorded = store
        .blocking(move |s| s.record_event(HOST_KIND, HOST_ADMIN, type_, reason, &msg))
        .await;
    if let Err(e) = recorded {
        tracing::warn!(error = %crate::error_chain(&e), "cannot record the knock's event");
    }
}

/// The agent's request for a knock (the agent checks the same bounds again).
fn request(k: &Knock) -> Result<KnockAdd, String> {
    let ports = k
        .ports
        .iter()
        .map(|&p| Port::new(p))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(KnockAdd {
        source: k.source.map(KnockSource::new).transpose()?,
        ports: KnockPorts::new(ports)?,
        duration_secs: KnockDuration::clamped(u64::from(k.duration_secs)),
    })
}
