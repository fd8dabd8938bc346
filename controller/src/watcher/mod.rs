//! The chain watcher: the desired-state writer for everything bought on chain. It
//! turns `BlockhostSubscriptions` and `AccessCredentialNFT` events into
//! `Subscription`, `VirtualMachine` and `Plan` specs, and does nothing else (the
//! minter, an actuator, is a reconciler; the chain client is `blockhost-chain`).
//!
//! Module map:
//! - [`events`]: raw logs → typed events, every number range-checked.
//! - [`mapping`]: typed events → specs, inside the batch's store transaction.
//! - [`admin`]: admin commands — the admin wallet's transactions to the target,
//!   decided in the batch's transaction (nonce with the cursor), then opened
//!   through the root agent.
//! - [`follow`]: the loop — confirmations, chunked `eth_getLogs` with range
//!   adaptation, reorg detection and undo, resync; woken early by
//!   `blockhost_chain::heads`.
//!
//! The store side (cursor, undo records, applied-event ids, buyer signatures) is
//! `crate::store::chain`: one transaction per batch holds the specs and the
//! cursor, so a crash can never separate them.

pub mod admin;
pub mod events;
pub mod follow;
pub mod mapping;

use std::sync::Arc;
use std::time::Duration;

use blockhost_chain::{heads, wallet};
use blockhost_crd::WalletAddress;
use blockhost_crd::config::{AdminConfig, ChainConfig, Contracts};
use blockhost_root_agent::client::RootAgentClient;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::store::Store;
use follow::{WatchConfig, Watcher};
use mapping::Mapper;

/// Undo records are kept for this many blocks at least (a reorg deeper than this
/// cannot be undone; Ethereum mainnet finalizes in 64–96 blocks).
pub const MIN_REORG_WINDOW: u64 = 4096;

/// Why the watcher cannot start: the chain client's setup.
pub use blockhost_chain::setup::SetupError as ChainError;

/// The store scope of a chain and contract set.
pub fn scope(chain_id: u64, contracts: &Contracts) -> String {
    format!(
        "{}:{}:{}",
        chain_id,
        contracts.subscriptions.to_lower_hex(),
        contracts.nft.to_lower_hex()
    )
}

/// The loop's settings from the configuration; fails when it names no
/// contracts (a configuration written before `bhctl chain deploy`).
pub fn watch_config(cfg: &ChainConfig) -> Result<WatchConfig, ChainError> {
    let contracts = cfg.contracts()?;
    Ok(WatchConfig {
        scope: scope(cfg.chain_id, &contracts),
        chain_id: cfg.chain_id,
        subscriptions: *contracts.subscriptions.as_bytes(),
        nft: *contracts.nft.as_bytes(),
        deployment_block: cfg.deployment_block,
        confirmations: cfg.confirmations,
        poll: Duration::from_millis(cfg.poll_interval_ms),
        max_range: cfg.max_block_range,
        reorg_window: MIN_REORG_WINDOW.max(cfg.confirmations * 4),
        follow_chain_time: cfg.follow_chain_time,
    })
}

/// Checks the configuration (server key, RPC client) and returns the task of
/// the watcher and the minter, which runs until `shutdown`. `nudge` queues a VM
/// for the reconciler (absent when Proxmox is not driven); with `admin`, admin
/// commands are read and knocks opened through the root agent.
#[allow(clippy::too_many_arguments)]
pub fn task(
    cfg: &ChainConfig,
    admin: Option<(&AdminConfig, RootAgentClient)>,
    store: Store,
    metrics: Arc<Metrics>,
    health: Arc<crate::health::Health>,
    nudge: Option<tokio::sync::mpsc::Sender<crate::reconcile::runtime::Trigger>>,
    shutdown: CancellationToken,
) -> Result<impl Future<Output = ()> + Send + 'static, ChainError> {
    // Checked first: without contracts nothing else matters.
    let wc = watch_config(cfg)?;
    let server_key = blockhost_chain::key::load_server_key(&cfg.server_key_file)?;
    // Both clients use only endpoints on chain.chainId and report to the
    // daemon's ChainEndpoints condition.
    let client = || {
        blockhost_chain::setup::rpc_client(&cfg.rpc_urls, Some(cfg.chain_id))
            .map(|c| c.with_endpoint_events(health.clone()))
    };
    let node = client()?;
    let wallet = wallet::ServerWallet::new(&server_key, cfg.chain_id, Arc::new(client()?));
    let admin = admin.map(|(a, agent)| {
        tracing::info!(
            admin = %a.wallet,
            target = %a.target(),
            agent = %agent.socket().display(),
            "admin commands are read"
        );
        (
            Arc::new(admin::AdminReader::new(a, server_key.clone())),
            agent,
        )
    });
    let mapper = Arc::new(Mapper {
        server_key,
        public_secret: cfg.public_secret.clone(),
        plan_defaults: cfg.plan_defaults.clone(),
    });
    tracing::info!(
        chain_id = cfg.chain_id,
        subscriptions = %WalletAddress::from_bytes(wc.subscriptions),
        nft = %WalletAddress::from_bytes(wc.nft),
        from_block = cfg.deployment_block,
        confirmations = cfg.confirmations,
        endpoints = cfg.rpc_urls.len(),
        server_wallet = %wallet.address(),
        "chain watcher starting"
    );
    // The minter is a reconciler (crate::reconcile::mint) under the same
    // runtime as the VM reconciler; it runs beside the watcher because it
    // shares its wallet and contracts.
    let minter = crate::reconcile::mint::Minter::new(
        wallet,
        store.clone(),
        crate::reconcile::mint::MintConfig::new(
            wc.scope.clone(),
            wc.nft,
            wc.confirmations,
            wc.poll,
        ),
        metrics.clone(),
        nudge,
    );
    let wake = Arc::new(tokio::sync::Notify::new());
    let heads = heads::run(
        cfg.ws_urls.clone(),
        wake.clone(),
        metrics.clone() as Arc<dyn heads::HeadEvents>,
        shutdown.clone(),
    );
    let mut w = Watcher::new(node, store, mapper, wc, metrics).with_wake(wake);
    if let Some((reader, agent)) = admin {
        w = w.with_admin(reader, Some(agent));
    }
    let stop = shutdown.clone();
    Ok(async move {
        tokio::join!(w.run(shutdown), minter.run(stop), heads);
    })
}

#[cfg(test)]
mod tests;
