//! The accept loop and the per-connection driver every listener uses.
//!
//! Over the connection cap a new connection is closed right after `accept`
//! (nothing is read, no TLS is started), so a flood costs one descriptor for a
//! moment and the connections already open are not touched. A connection is
//! cut when no request has been in flight for `idle_timeout` — HTTP/1 and
//! HTTP/2 alike (hyper's HTTP/2 server never closes an idle connection by
//! itself, and keep-alive pings are answered by any live client, so they only
//! catch dead peers). A request counts as in flight until its response body
//! has been sent or dropped, so a long watch stream is never cut as idle. Cut
//! connections get a graceful close (HTTP/2 GOAWAY), then are dropped after
//! `close_grace`.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// How often refusals are reported in the log at most.
const REFUSAL_REPORT_EVERY: Duration = Duration::from_secs(10);
/// Pause after a failed `accept` (out of descriptors, mostly): retrying at once
/// would spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// The process on the other end of a Unix socket connection, from the kernel
/// (`SO_PEERCRED`): who is asking, for the API's audit trail. Handlers find it
/// in the request's extensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnixPeer {
    /// Its user id.
    pub uid: u32,
    /// Its group id.
    pub gid: u32,
    /// Its process id, where the platform tells it.
    pub pid: Option<i32>,
}

/// Who is on the other end of a connection.
#[derive(Debug, Clone, Copy)]
enum Peer {
    /// A TCP client: handlers see `ConnectInfo<SocketAddr>`.
    Tcp(SocketAddr),
    /// A Unix socket client: handlers see [`UnixPeer`] when the kernel told it.
    Unix(Option<UnixPeer>),
}

/// The limits of one listener.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Name in log lines (`signup`, `metrics`, `api`, `signer`).
    pub name: &'static str,
    /// Connections open at once; more are closed on arrival.
    pub max_connections: usize,
    /// Connections one client key ([`crate::client::key`]) may hold; `None`: no
    /// per-client cap (the Unix socket, whose clients have no address).
    pub max_per_client: Option<usize>,
    /// IPv6 prefix length clients are counted by.
    pub ipv6_prefix: u8,
    /// Time for the TLS handshake.
    pub handshake_timeout: Duration,
    /// Time for an HTTP/1 request's headers.
    pub header_read_timeout: Duration,
    /// A connection with no request in flight for this long is closed.
    pub idle_timeout: Duration,
    /// HTTP/2 keep-alive ping interval (detects dead peers).
    pub h2_keepalive_interval: Duration,
    /// HTTP/2: a ping unanswered for this long closes the connection.
    pub h2_keepalive_timeout: Duration,
    /// HTTP/2 streams a client may open at once on one connection.
    pub h2_max_concurrent_streams: u32,
    /// Time a connection has to finish after a graceful close (idle cut or
    /// shutdown) before it is dropped.
    pub close_grace: Duration,
}

impl Limits {
    /// Defaults for a listener open to the Internet.
    pub fn public(name: &'static str, max_connections: usize) -> Self {
        Self {
            name,
            max_connections,
            max_per_client: Some(64),
            ipv6_prefix: crate::client::DEFAULT_IPV6_PREFIX,
            handshake_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            h2_keepalive_interval: Duration::from_secs(20),
            h2_keepalive_timeout: Duration::from_secs(10),
            h2_max_concurrent_streams: 32,
            close_grace: Duration::from_secs(5),
        }
    }

    /// Defaults for a local listener (the API socket, loopback metrics): the
    /// same clocks, longer idleness (`bhctl -w` and scrapers reuse connections),
    /// no per-client cap.
    pub fn local(name: &'static str, max_connections: usize) -> Self {
        Self {
            max_per_client: None,
            idle_timeout: Duration::from_secs(120),
            h2_max_concurrent_streams: 64,
            ..Self::public(name, max_connections)
        }
    }

    fn builder(&self) -> Builder<TokioExecutor> {
        let mut b = Builder::new(TokioExecutor::new());
        b.http1()
            .timer(TokioTimer::new())
            .header_read_timeout(self.header_read_timeout);
        b.http2()
            .timer(TokioTimer::new())
            .keep_alive_interval(self.h2_keepalive_interval)
            .keep_alive_timeout(self.h2_keepalive_timeout)
            .max_concurrent_streams(self.h2_max_concurrent_streams)
            // Request headers are small here; a 16 KiB list is generous.
            .max_header_list_size(16 * 1024);
        b
    }
}

/// Counters of one listener, readable while it serves.
#[derive(Debug, Default)]
pub struct Stats {
    open: AtomicUsize,
    accepted: AtomicU64,
    refused: AtomicU64,
    idle_closed: AtomicU64,
}

impl Stats {
    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }
    /// Connections accepted and served since start.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }
    /// Connections closed on arrival (a cap was reached) since start.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
    /// Connections closed for idleness since start.
    pub fn idle_closed(&self) -> u64 {
        self.idle_closed.load(Ordering::Relaxed)
    }
}

/// One listener's budget and its counters.
#[derive(Debug, Clone)]
pub struct Listener {
    limits: Arc<Limits>,
    slots: Arc<Semaphore>,
    per_client: Arc<Mutex<HashMap<IpAddr, usize>>>,
    stats: Arc<Stats>,
    last_report: Arc<Mutex<Option<Instant>>>,
}

/// A connection's hold on its slots; returns them when dropped.
#[derive(Debug)]
struct Admission {
    _slot: OwnedSemaphorePermit,
    client: Option<IpAddr>,
    listener: Listener,
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.listener.stats.open.fetch_sub(1, Ordering::Relaxed);
        if let Some(key) = self.client {
            let mut map = lock(&self.listener.per_client);
            if let Some(n) = map.get_mut(&key) {
                *n -= 1;
                if *n == 0 {
                    map.remove(&key);
                }
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every critical section is a single map or value update.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Listener {
    /// A listener with these limits.
    pub fn new(limits: Limits) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(limits.max_connections)),
            limits: Arc::new(limits),
            per_client: Arc::default(),
            stats: Arc::default(),
            last_report: Arc::default(),
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The counters.
    pub fn stats(&self) -> Arc<Stats> {
        self.stats.clone()
    }

    /// Takes a slot for a new connection from `peer`, or `None` (refused).
    fn admit(&self, peer: Option<IpAddr>) -> Option<Admission> {
        let Ok(slot) = self.slots.clone().try_acquire_owned() else {
            self.refused("connection limit reached");
            return None;
        };
        let client = match (peer, self.limits.max_per_client) {
            (Some(ip), Some(cap)) => {
                let key = crate::client::key(ip, self.limits.ipv6_prefix);
                let mut map = lock(&self.per_client);
                let n = map.entry(key).or_insert(0);
                if *n >= cap {
                    drop(map);
                    self.refused("per-client connection limit reached");
                    return None;
                }
                *n += 1;
                Some(key)
            }
            _ => None,
        };
        self.stats.open.fetch_add(1, Ordering::Relaxed);
        self.stats.accepted.fetch_add(1, Ordering::Relaxed);
        Some(Admission {
            _slot: slot,
            client,
            listener: self.clone(),
        })
    }

    fn refused(&self, why: &'static str) {
        let total = self.stats.refused.fetch_add(1, Ordering::Relaxed) + 1;
        let mut last = lock(&self.last_report);
        let now = Instant::now();
        if last.is_none_or(|t| now.duration_since(t) >= REFUSAL_REPORT_EVERY) {
            *last = Some(now);
            tracing::warn!(
                listener = self.limits.name,
                max_connections = self.limits.max_connections,
                max_per_client = self.limits.max_per_client,
                refused_total = total,
                "{why}; refusing new connections (the open ones are served)"
            );
        }
    }

    fn accept_failed(&self, e: &std::io::Error) {
        let mut last = lock(&self.last_report);
        let now = Instant::now();
        if last.is_none_or(|t| now.duration_since(t) >= REFUSAL_REPORT_EVERY) {
            *last = Some(now);
            tracing::warn!(listener = self.limits.name, error = %e, "accept failed (out of file descriptors? raise LimitNOFILE or lower the connection caps)");
        }
    }

    /// Serves `router` on a TCP listener, with TLS when `tls` is given, until
    /// `shutdown`; then closes every connection gracefully (bounded by
    /// `close_grace`). Handlers see the peer as `ConnectInfo<SocketAddr>`.
    pub async fn serve_tcp(
        self,
        listener: TcpListener,
        tls: Option<Arc<rustls::ServerConfig>>,
        router: Router,
        shutdown: CancellationToken,
    ) {
        let tls = tls.map(tokio_rustls::TlsAcceptor::from);
        let builder = Arc::new(self.limits.builder());
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                () = shutdown.cancelled() => break,
            };
            let (stream, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    self.accept_failed(&e);
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            };
            let Some(admission) = self.admit(Some(peer.ip())) else {
                drop(stream);
                continue;
            };
            let _ = stream.set_nodelay(true);
            let (limits, builder, router, stop) = (
                self.limits.clone(),
                builder.clone(),
                router.clone(),
                shutdown.clone(),
            );
            let stats = self.stats.clone();
            let tls = tls.clone();
            tokio::spawn(async move {
                let _admission = admission;
                match tls {
                    Some(acceptor) => {
                        let hs =
                            tokio::time::timeout(limits.handshake_timeout, acceptor.accept(stream))
                                .await;
                        match hs {
                            Ok(Ok(tls_stream)) => {
                                drive(
                                    tls_stream,
                                    Peer::Tcp(peer),
                                    router,
                                    &limits,
                                    &builder,
                                    &stats,
                                    stop,
                                )
                                .await;
                            }
                            Ok(Err(e)) => {
                                tracing::debug!(listener = limits.name, %peer, error = %e, "TLS handshake failed");
                            }
                            Err(_) => {
                                tracing::debug!(listener = limits.name, %peer, "TLS handshake timed out");
                            }
                        }
                    }
                    None => {
                        drive(
                            stream,
                            Peer::Tcp(peer),
                            router,
                            &limits,
                            &builder,
                            &stats,
                            stop,
                        )
                        .await
                    }
                }
            });
        }
        self.drain().await;
    }

    /// Serves `router` on a Unix socket until `shutdown` (as [`Self::serve_tcp`],
    /// without TLS; handlers see the peer's credentials as [`UnixPeer`]).
    pub async fn serve_unix(
        self,
        listener: UnixListener,
        router: Router,
        shutdown: CancellationToken,
    ) {
        let builder = Arc::new(self.limits.builder());
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                () = shutdown.cancelled() => break,
            };
            let stream = match accepted {
                Ok((s, _)) => s,
                Err(e) => {
                    self.accept_failed(&e);
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            };
            let Some(admission) = self.admit(None) else {
                drop(stream);
                continue;
            };
            let peer = stream.peer_cred().ok().map(|c| UnixPeer {
                uid: c.uid(),
                gid: c.gid(),
                pid: c.pid(),
            });
            let (limits, builder, router, stop, stats) = (
                self.limits.clone(),
                builder.clone(),
                router.clone(),
                shutdown.clone(),
                self.stats.clone(),
            );
            tokio::spawn(async move {
                let _admission = admission;
                drive(
                    stream,
                    Peer::Unix(peer),
                    router,
                    &limits,
                    &builder,
                    &stats,
                    stop,
                )
                .await;
            });
        }
        self.drain().await;
    }

    /// Waits for the open connections to finish (they were told to close).
    async fn drain(&self) {
        let all = u32::try_from(self.limits.max_connections).unwrap_or(u32::MAX);
        let wait = self.limits.close_grace + Duration::from_secs(1);
        if tokio::time::timeout(wait, self.slots.acquire_many(all))
            .await
            .is_err()
        {
            tracing::debug!(
                listener = self.limits.name,
                open = self.stats.open(),
                "connections still open at shutdown"
            );
        }
    }
}

/// When the connection last had a request in flight, and how many it has.
#[derive(Debug)]
struct Activity {
    epoch: Instant,
    in_flight: AtomicUsize,
    last_ms: AtomicU64,
}

impl Activity {
    fn touch(&self) {
        let ms = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// How long the connection has been without a request in flight.
    fn idle_for(&self) -> Option<Duration> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        Some(self.epoch.elapsed().saturating_sub(last))
    }
}

/// A request in flight; ends when its response body is done or dropped.
#[derive(Debug)]
struct InFlight(Arc<Activity>);

impl InFlight {
    fn begin(a: &Arc<Activity>) -> Self {
        a.in_flight.fetch_add(1, Ordering::AcqRel);
        a.touch();
        Self(a.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Serves one connection until it ends, is idle too long, or `shutdown`.
async fn drive<I>(
    io: I,
    peer: Peer,
    router: Router,
    limits: &Limits,
    builder: &Builder<TokioExecutor>,
    stats: &Stats,
    shutdown: CancellationToken,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Arc::new(Activity {
        epoch: Instant::now(),
        in_flight: AtomicUsize::new(0),
        last_ms: AtomicU64::new(0),
    });
    let service_activity = activity.clone();
    let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        let guard = InFlight::begin(&service_activity);
        match peer {
            Peer::Tcp(addr) => {
                req.extensions_mut().insert(ConnectInfo(addr));
            }
            Peer::Unix(Some(cred)) => {
                req.extensions_mut().insert(cred);
            }
            Peer::Unix(None) => {}
        }
        let router = router.clone();
        async move {
            let resp = match router.oneshot(req).await {
                Ok(r) => r,
                Err(never) => match never {},
            };
            // The guard rides in the body, so the request stays in flight
            // while its body streams.
            Ok::<_, std::convert::Infallible>(resp.map(|body| {
                Body::new(body.map_frame(move |frame| {
                    let _in_flight = &guard;
                    frame
                }))
            }))
        }
    });
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(conn);
    let check_every =
        (limits.idle_timeout / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
    let mut tick = tokio::time::interval(check_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut closing: Option<Instant> = None;
    loop {
        tokio::select! {
            done = conn.as_mut() => {
                if let Err(e) = done {
                    tracing::debug!(listener = limits.name, peer = ?peer, error = %e, "connection ended with an error");
                }
                return;
            }
            () = shutdown.cancelled(), if closing.is_none() => {
                conn.as_mut().graceful_shutdown();
                closing = Some(Instant::now());
            }
            _ = tick.tick() => {
                if let Some(since) = closing {
                    if since.elapsed() >= limits.close_grace {
                        return;
                    }
                } else if activity.idle_for().is_some_and(|d| d >= limits.idle_timeout) {
                    stats.idle_closed.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(listener = limits.name, peer = ?peer, "closing an idle connection");
                    conn.as_mut().graceful_shutdown();
                    closing = Some(Instant::now());
                }
            }
        }
    }
}
