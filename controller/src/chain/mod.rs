//! The chain watcher: turns `BlockhostSubscriptions` and `AccessCredentialNFT`
//! events into `Subscription`, `VirtualMachine` and `Plan` specs.
//!
//! Module map:
//! - [`node`]: the node operations the watcher needs, as a trait (fakes in tests).
//! - [`rpc`]: plain JSON-RPC over reqwest with failover across endpoints.
//! - [`heads`]: `eth_subscribe("newHeads")` over WebSocket, waking the
//!   watcher as each block arrives (polling stays the fallback).
//! - [`events`]: raw logs → typed events, every number range-checked.
//! - [`mapping`]: typed events → specs, inside the batch's store transaction.
//! - [`wallet`]: the server key on chain: nonces, EIP-1559 fees, signing,
//!   broadcast, receipts (minting and `bhctl chain deploy`).
//! - [`watcher`]: the loop — confirmations, chunked `eth_getLogs` with range
//!   adaptation, reorg detection and undo, resync.
//!
//! The store side (cursor, undo records, applied-event ids, buyer signatures) is
//! `crate::store::chain`: one transaction per batch holds the specs and the
//! cursor, so a crash can never separate them.

pub mod events;
pub mod heads;
pub mod mapping;
pub mod node;
pub mod rpc;
pub mod wallet;
pub mod watcher;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use blockhost_crd::WalletAddress;
use blockhost_crd::config::{ChainConfig, Contracts};
use k256::SecretKey;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::store::Store;
use mapping::Mapper;
use watcher::{WatchConfig, Watcher};

/// Undo records are kept for this many blocks at least (a reorg deeper than this
/// cannot be undone; Ethereum mainnet finalizes in 64–96 blocks).
pub const MIN_REORG_WINDOW: u64 = 4096;

/// Why the watcher cannot start.
#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    /// The server key file cannot be read.
    #[error("cannot read the server key file {}", path.display())]
    KeyRead {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The key file is readable by others.
    #[error("the server key file {} has mode {mode:o}; make it readable by its owner only (chmod 600)", path.display())]
    KeyPermissions {
        /// The file.
        path: PathBuf,
        /// Its mode bits.
        mode: u32,
    },
    /// The key file does not hold a secp256k1 key in hex.
    #[error("the server key file {} does not hold a secp256k1 secret key as 64 hex digits", path.display())]
    KeyInvalid {
        /// The file.
        path: PathBuf,
    },
    /// The HTTP client could not be built.
    #[error("cannot set up the RPC client")]
    Http(#[source] reqwest::Error),
    /// The configuration was written before deploying: no contracts to watch.
    #[error(transparent)]
    NotDeployed(#[from] blockhost_crd::config::ContractsNotSet),
}

/// Reads the server's secret key: hex (with or without `0x`, surrounding
/// whitespace allowed) in a file no one but its owner may read. The key is never
/// logged and error messages never quote the file's content.
pub fn load_server_key(path: &Path) -> Result<SecretKey, ChainError> {
    use std::os::unix::fs::PermissionsExt;
    let read = |source| ChainError::KeyRead {
        path: path.to_owned(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(read)?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(ChainError::KeyPermissions {
            path: path.to_owned(),
            mode,
        });
    }
    let text = std::fs::read_to_string(path).map_err(read)?;
    let invalid = || ChainError::KeyInvalid {
        path: path.to_owned(),
    };
    let digits = text.trim();
    let digits = digits.strip_prefix("0x").unwrap_or(digits);
    let bytes = hex::decode(digits).map_err(|_| invalid())?;
    SecretKey::from_slice(&bytes).map_err(|_| invalid())
}

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
/// for the reconciler (absent when Proxmox is not driven).
pub fn task(
    cfg: &ChainConfig,
    store: Store,
    metrics: Arc<Metrics>,
    nudge: Option<tokio::sync::mpsc::Sender<crate::reconcile::runtime::Trigger>>,
    shutdown: CancellationToken,
) -> Result<impl Future<Output = ()> + Send + 'static, ChainError> {
    // Checked first: without contracts nothing else matters.
    let wc = watch_config(cfg)?;
    let server_key = load_server_key(&cfg.server_key_file)?;
    let node = rpc::RpcClient::new(cfg.rpc_urls.clone()).map_err(ChainError::Http)?;
    let wallet = wallet::ServerWallet::new(
        &server_key,
        cfg.chain_id,
        Arc::new(rpc::RpcClient::new(cfg.rpc_urls.clone()).map_err(ChainError::Http)?),
    );
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
        metrics.clone(),
        shutdown.clone(),
    );
    let w = Watcher::new(node, store, mapper, wc, metrics).with_wake(wake);
    let stop = shutdown.clone();
    Ok(async move {
        tokio::join!(w.run(shutdown), minter.run(stop), heads);
    })
}

#[cfg(test)]
mod tests;
