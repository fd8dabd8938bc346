//! `blockhostd`'s life: load the configuration, open the store, serve the API on the
//! Unix socket (and metrics on TCP if configured), stop cleanly on a signal.
//!
//! With no configuration file the daemon runs on local defaults and drives nothing:
//! specs are stored and served. The reconcilers, the chain watcher and minter,
//! and the public signup page start here when configured, each handed the same
//! [`Store`] and shutdown token.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use blockhost_crd::DaemonConfig;
use tokio::net::{TcpListener, UnixListener};
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::server::{AppState, metrics_router, router};
use crate::store::{Store, StoreError, StoreOptions};

/// Why the daemon could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The configuration could not be loaded.
    #[error(transparent)]
    Config(#[from] blockhost_api::config::ConfigError),
    /// The store could not be opened.
    #[error("cannot open the store")]
    Store(#[from] StoreError),
    /// A live daemon already serves the socket.
    #[error("another blockhostd is already serving {}; stop it first or use --socket", path.display())]
    AlreadyRunning {
        /// The socket.
        path: PathBuf,
    },
    /// The socket could not be set up.
    #[error("cannot serve the API socket {}", path.display())]
    Socket {
        /// The socket.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The socket path holds something else, or cannot be cleared.
    #[error("cannot use {} for the API socket (api.socket, --socket)", path.display())]
    SocketPath {
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        source: blockhost_listen::socket::SocketPathError,
    },
    /// The metrics listener could not be bound.
    #[error("cannot listen for metrics on {addr}")]
    MetricsListen {
        /// The address.
        addr: std::net::SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The reconciler could not start (Proxmox client, token secret).
    #[error("cannot start the VM reconciler")]
    Reconciler(#[source] crate::reconcile::vm::setup::SetupError),
    /// The chain watcher cannot start (server key, RPC client).
    #[error("cannot start the chain watcher")]
    Chain(#[from] crate::watcher::ChainError),
    /// The signup page cannot be served (listen address, certificate, server key).
    #[error("cannot start the signup page")]
    Signup(#[from] crate::signup::SignupError),
    /// The configured socket group does not exist.
    #[error("socket group {0:?} does not exist (api.socketGroup)")]
    NoSuchGroup(String),
    /// The connection caps cannot fit under the open-file limit.
    #[error("cannot size the listeners")]
    Descriptors(#[from] blockhost_listen::budget::TooFewDescriptors),
}

/// Runs the daemon until `shutdown` is cancelled.
pub async fn run(cfg: DaemonConfig, shutdown: CancellationToken) -> Result<(), DaemonError> {
    let store = open_store(&cfg).await?;

    let metrics = Arc::new(Metrics::new());
    let health = Arc::new(crate::health::Health::new(metrics.clone()));
    let agent = blockhost_root_agent::client::RootAgentClient::new(&cfg.root_agent.socket);
    let firewall = cfg.firewall.clone().map(|fw| {
        Arc::new(crate::firewall::HostFirewall::new(
            agent.clone(),
            fw,
            metrics.clone(),
        ))
    });
    let state = AppState {
        store: store.clone(),
        metrics: metrics.clone(),
        health: health.clone(),
        shutdown: shutdown.clone(),
        firewall: firewall.clone(),
    };

    // Every listener's connection cap, fitted under the open-file limit.
    let limits = crate::listeners::plan(&cfg)?;
    let socket = cfg.api.socket.clone();
    let listener = bind_socket(&socket, cfg.api.socket_group.as_deref()).await?;
    tracing::info!(socket = %socket.display(), "API listening");

    let mut tasks = tokio::task::JoinSet::new();

    // The host firewall first: installed through the root agent, then checked.
    if let Some(fw) = firewall {
        tracing::info!(agent = %cfg.root_agent.socket.display(), "installing the host firewall through the root agent");
        tasks.spawn(fw.run(shutdown.clone()));
    }

    // Reconcilers: only when a Proxmox cluster is configured.
    let nudge = crate::reconcile::vm::setup::spawn(&cfg, &store, &metrics, &shutdown, &mut tasks)
        .map_err(DaemonError::Reconciler)?;

    // Chain watcher (events -> Subscription/VirtualMachine/Plan specs) and minter.
    if let Some(chain) = &cfg.chain {
        tasks.spawn(crate::watcher::task(
            chain,
            cfg.admin.as_ref().map(|a| (a, agent.clone())),
            store.clone(),
            metrics.clone(),
            health,
            nudge,
            shutdown.clone(),
        )?);
    } else {
        tracing::info!("no chain section in the configuration; no chain is watched");
    }
    // The public signup page (issue 6): static page + rate-limited status endpoint.
    if let Some(page) = crate::signup::task(
        &cfg,
        store.clone(),
        metrics.clone(),
        limits.signup.clone(),
        shutdown.clone(),
    )
    .await?
    {
        tasks.spawn(page);
    }
    if let Some(addr) = cfg.metrics.listen {
        let serve = serve_metrics(addr, &state, limits.metrics.clone(), &shutdown).await?;
        tasks.spawn(serve);
    }

    let app = router(state);
    let api = blockhost_listen::Listener::new(limits.api.clone());
    metrics.watch_listener(api.limits().name, api.stats());
    api.serve_unix(listener, app, shutdown.clone()).await;
    shutdown.cancel();
    while tasks.join_next().await.is_some() {}
    blockhost_listen::socket::remove_socket(&socket);
    tracing::info!("stopped");
    Ok(())
}

/// Opens the store on the blocking pool (opening may migrate and fsync).
async fn open_store(cfg: &DaemonConfig) -> Result<Store, DaemonError> {
    let store_path = cfg.store.clone();
    let opts = StoreOptions {
        event_retention: cfg.events.retention_per_object,
        pools: crate::store::alloc::Pools {
            ipv4: cfg.network.ipv4.clone(),
            ipv6: cfg.network.ipv6.clone(),
        },
        ..StoreOptions::default()
    };
    let store = tokio::task::spawn_blocking(move || Store::open(&store_path, opts))
        .await
        .map_err(|source| StoreError::TaskFailed { source })??;
    tracing::info!(store = %cfg.store.display(), objects = store.total_objects().unwrap_or(0), "store open");
    Ok(store)
}

/// Binds the metrics listener and returns its serving task.
async fn serve_metrics(
    addr: std::net::SocketAddr,
    state: &AppState,
    limits: blockhost_listen::Limits,
    shutdown: &CancellationToken,
) -> Result<impl Future<Output = ()> + Send + 'static, DaemonError> {
    if !addr.ip().is_loopback() {
        tracing::warn!(%addr, "metrics are served on a non-loopback address; they reveal object counts");
    }
    let tcp = TcpListener::bind(addr)
        .await
        .map_err(|source| DaemonError::MetricsListen { addr, source })?;
    tracing::info!(%addr, "metrics listening");
    let app = metrics_router(state.clone());
    let served = blockhost_listen::Listener::new(limits);
    state
        .metrics
        .watch_listener(served.limits().name, served.stats());
    Ok(served.serve_tcp(tcp, None, app, shutdown.clone()))
}

/// Binds the API socket: refuses to take over a live daemon's socket, replaces a
/// stale one (only ever a socket: a regular file at the path is an error and
/// stays), and restricts it to 0660 (owner and group).
async fn bind_socket(path: &Path, group: Option<&str>) -> Result<UnixListener, DaemonError> {
    let sock_err = |source| DaemonError::Socket {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
        && !dir.exists()
    {
        std::fs::create_dir_all(dir).map_err(sock_err)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).map_err(sock_err)?;
    }
    use blockhost_listen::socket::{SocketPathError, clear_stale};
    match clear_stale(path).await {
        Ok(true) => tracing::info!(socket = %path.display(), "removed a stale socket"),
        Ok(false) => {}
        Err(SocketPathError::InUse) => {
            return Err(DaemonError::AlreadyRunning {
                path: path.to_owned(),
            });
        }
        Err(source) => {
            return Err(DaemonError::SocketPath {
                path: path.to_owned(),
                source,
            });
        }
    }
    // Bind under a restrictive umask-equivalent: set the mode right after binding,
    // before serving, so no client can connect in a wider window.
    let listener = UnixListener::bind(path).map_err(sock_err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)).map_err(sock_err)?;
    if let Some(g) = group {
        let gid = group_id(g).ok_or_else(|| DaemonError::NoSuchGroup(g.into()))?;
        std::os::unix::fs::chown(path, None, Some(gid)).map_err(sock_err)?;
    }
    Ok(listener)
}

/// Looks a group up in /etc/group (no NSS: the daemon runs on a plain Debian host).
fn group_id(name: &str) -> Option<u32> {
    if let Ok(gid) = name.parse() {
        return Some(gid);
    }
    let text = std::fs::read_to_string("/etc/group").ok()?;
    text.lines().find_map(|l| {
        let mut f = l.split(':');
        (f.next()? == name).then(|| f.nth(1)?.parse().ok())?
    })
}
