//! Starting the VM reconciler from the daemon's configuration: the Proxmox client
//! (token secret read from a file with safe permissions, TLS pinned or system
//! roots), the reconciler, and the runtime that schedules it.

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::Duration;

use blockhost_crd::DaemonConfig;
use blockhost_crd::config::ProxmoxConfig;
use blockhost_pve::{ClientConfig, Credentials, Fingerprint, PveClient, TlsMode, WaitOptions};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::VmReconciler;
use super::observed::Observed;
use crate::metrics::Metrics;
use crate::reconcile::runtime::{self, RuntimeConfig, Trigger};
use crate::store::Store;

/// Why the reconciler could not start.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The token secret file is unreadable.
    #[error("cannot read the Proxmox token secret file {path}")]
    Secret {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The token secret file can be read by others.
    #[error(
        "the Proxmox token secret file {path} is mode {mode:o}; make it 0600 or 0640 (chmod 600 {path})"
    )]
    SecretPermissions {
        /// The file.
        path: String,
        /// Its mode.
        mode: u32,
    },
    /// The fingerprint is malformed.
    #[error("proxmox.tlsFingerprint is not a SHA-256 fingerprint (AB:CD:… or 64 hex digits)")]
    Fingerprint(#[source] blockhost_pve::Error),
    /// The client could not be built.
    #[error("cannot build the Proxmox client")]
    Client(#[source] blockhost_pve::Error),
}

/// Reads a secret from a file that only its owner (and group) may read.
pub fn read_secret(path: &std::path::Path) -> Result<String, SetupError> {
    let p = path.display().to_string();
    let meta = std::fs::metadata(path).map_err(|source| SetupError::Secret {
        path: p.clone(),
        source,
    })?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o037 != 0 {
        return Err(SetupError::SecretPermissions { path: p, mode });
    }
    let text =
        std::fs::read_to_string(path).map_err(|source| SetupError::Secret { path: p, source })?;
    Ok(text.trim().to_owned())
}

/// Builds the HTTP client for the configured cluster.
pub fn client(cfg: &ProxmoxConfig) -> Result<PveClient, SetupError> {
    let secret = read_secret(&cfg.token_secret_file)?;
    let tls = match (&cfg.tls_fingerprint, cfg.tls_insecure) {
        (Some(fp), _) => {
            TlsMode::Pinned(fp.parse::<Fingerprint>().map_err(SetupError::Fingerprint)?)
        }
        (None, true) => TlsMode::Insecure,
        (None, false) => TlsMode::SystemRoots,
    };
    PveClient::new(ClientConfig::new(
        cfg.url.clone(),
        Credentials::api_token(cfg.token_id.clone(), secret),
        tls,
    ))
    .map_err(SetupError::Client)
}

/// How old the cached cluster listing may be, for a given resync interval.
///
/// Half the interval, not the whole: a listing fetched just after one resync
/// began is slightly *younger* than the interval when the next begins, so with
/// the full interval as the limit a resync could visit every VM against the
/// previous resync's listing (and refresh mid-way or not at all). With half,
/// each resync starts with one fresh listing and, as long as visiting every VM
/// takes less than half the interval, uses it throughout: one request per resync.
pub fn listing_max_age(resync: Duration) -> Duration {
    resync / 2
}

/// Spawns the VM reconciler under the runtime, if Proxmox is configured, and
/// returns a sender that queues a VM for reconciling (the minter uses it).
pub fn spawn(
    cfg: &DaemonConfig,
    store: &Store,
    metrics: &Arc<Metrics>,
    shutdown: &CancellationToken,
    tasks: &mut tokio::task::JoinSet<()>,
) -> Result<Option<mpsc::Sender<Trigger>>, SetupError> {
    let Some(px) = cfg.proxmox.clone() else {
        tracing::info!("no proxmox section in the configuration: VMs are stored but not driven");
        return Ok(None);
    };
    let pve = Arc::new(client(&px)?);
    let resync = Duration::from_secs(u64::from(px.resync_secs.max(1)));
    let runtime_cfg = RuntimeConfig {
        concurrency: px.concurrency.max(1) as usize,
        resync,
        ..RuntimeConfig::default()
    };
    // The root agent is in use when the host firewall is configured (knocks need
    // that section too): only then are VMs' bridge ports isolated through it.
    let isolator = cfg.firewall.as_ref().map(|_| {
        Arc::new(blockhost_root_agent::client::RootAgentClient::new(
            &cfg.root_agent.socket,
        )) as Arc<dyn super::isolation::PortIsolator>
    });
    if isolator.is_some() {
        tracing::info!(agent = %cfg.root_agent.socket.display(), "VM bridge ports are isolated through the root agent");
    } else {
        tracing::warn!(
            "no firewall section: VM bridge ports are not isolated (VMs on the bridge can reach each other); the Proxmox firewall still filters each VM's addresses"
        );
    }
    let reconciler = Arc::new(VmReconciler {
        store: store.clone(),
        pve,
        network: cfg.network.clone(),
        // The access file names the chain holding the NFT; 0 when no chain is watched.
        chain_id: cfg.chain.as_ref().map_or(0, |c| c.chain_id),
        observed: Observed::default(),
        listing_max_age: listing_max_age(resync),
        wait: WaitOptions::default(),
        settled: Default::default(),
        guard: super::isolation::Guard::new(isolator).check_every(chrono::Duration::seconds(
            i64::from(px.firewall_check_secs.max(1)),
        )),
        cfg: px.clone(),
    });
    let (nudge, triggers) =
        runtime::store_triggers_with_sender(store, "VirtualMachine", shutdown.clone());
    let keys_store = store.clone();
    let keys = move || match keys_store.for_each_names("VirtualMachine") {
        Ok(names) => names,
        Err(e) => {
            tracing::warn!(error = %crate::error_chain(&e), "cannot list VMs for a resync");
            Vec::new()
        }
    };
    tasks.spawn(runtime::run(
        reconciler,
        runtime_cfg,
        metrics.clone(),
        triggers,
        keys,
        shutdown.clone(),
    ));
    tracing::info!(url = %px.url, "driving Proxmox");
    Ok(Some(nudge))
}
