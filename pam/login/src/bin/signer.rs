//! `blockhost-signer`: the VM-side signing service.
//!
//! Serves the signing page over HTTPS (a self-signed certificate generated on first
//! start and kept in the state directory, so a browser exception survives restarts),
//! and couriers one signature per pending login from the page to the PAM module
//! waiting on the hand-off socket (protocol: `pam_blockhost::handoff`).
//!
//! Trust: the signer never decides a login; the module verifies every signature.
//! The signer still checks a posted signature against the message's wallet so the
//! page can tell the user "wrong account" at once, and so that junk never reaches the
//! module. Only root may register sessions (peer credentials on the socket), pages
//! post at most 256 bytes, a session accepts one signature, and each client (IPv4
//! address or IPv6 /64) is rate-limited. Connections are capped (256, 32 per
//! client), TLS handshakes and headers timed, and idle HTTP/1 and HTTP/2
//! connections cut after 30 s ([`blockhost_listen`]).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, DefaultBodyLimit, Path as UrlPath, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use blockhost_access::WalletAddress;
use blockhost_access::eip191::{self, Signature};
use clap::Parser;
use pam_blockhost::handoff::{Delivered, LINE_MAX, Register, is_session_id};
use pam_blockhost::siwe::{MESSAGE_MAX, SiweMessage};
use serde::Serialize;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::oneshot;
use tracing::{info, warn};

/// Largest signature POST body: a signature is 132 characters.
const BODY_MAX: usize = 256;
/// Pending sessions held at once; a flood of registrations cannot grow memory.
const SESSIONS_MAX: usize = 256;
/// Wrong signatures a session tolerates before it is dropped.
const FAILURES_MAX: u32 = 5;
/// Requests per client address per window.
const RATE_LIMIT: u32 = 60;
const RATE_WINDOW: Duration = Duration::from_secs(60);
/// Clients tracked by the rate limiter; the least recently seen is forgotten first.
const RATE_TABLE_MAX: usize = 4096;
/// Connections open at once: a VM's own users only, under systemd's default
/// soft limit of 1024 descriptors (and raised to the hard limit at start).
const MAX_CONNECTIONS: usize = 256;
/// Connections one client may hold.
const MAX_PER_CLIENT: usize = 32;

const INDEX_HTML: &str = include_str!("../../static/index.html");
const APP_JS: &str = include_str!("../../static/app.js");
const STYLE_CSS: &str = include_str!("../../static/style.css");

#[derive(Debug, Parser)]
#[command(
    name = "blockhost-signer",
    version,
    about = "Signing page and signature courier for wallet SSH login"
)]
struct Args {
    /// HTTPS listen address (a VM serves its users on 0.0.0.0:8443).
    #[arg(long, default_value = "127.0.0.1:8443")]
    listen: SocketAddr,
    /// Hand-off socket the PAM module connects to.
    #[arg(long, default_value = pam_blockhost::handoff::DEFAULT_SOCKET)]
    socket: PathBuf,
    /// Where the certificate and its key are kept.
    #[arg(long, default_value = "/var/lib/blockhost-signer")]
    state_dir: PathBuf,
    /// Names the certificate is made for (repeatable); `localhost` and the listen
    /// address are always included.
    #[arg(long = "hostname")]
    hostnames: Vec<String>,
}

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
enum StartError {
    #[error("cannot use {path}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot generate the TLS certificate")]
    Certificate(#[from] rcgen::Error),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StartError + '_ {
    move |source| StartError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// One login waiting for its signature.
#[derive(Debug)]
struct Pending {
    message: String,
    address: WalletAddress,
    expires_at: i64,
    deliver: Option<oneshot::Sender<String>>,
    failures: u32,
}

#[derive(Debug)]
struct Shared {
    sessions: Mutex<HashMap<String, Pending>>,
    rate: blockhost_listen::rate::RateLimiter,
}

impl Default for Shared {
    fn default() -> Self {
        Self {
            sessions: Mutex::default(),
            rate: blockhost_listen::rate::RateLimiter::new(
                RATE_LIMIT,
                RATE_WINDOW,
                RATE_TABLE_MAX,
                blockhost_listen::client::DEFAULT_IPV6_PREFIX,
            ),
        }
    }
}

type AppState = Arc<Shared>;

/// Locks a mutex, recovering from poisoning: the maps stay consistent because every
/// critical section is a single insert/remove/update.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[derive(Serialize)]
struct SessionView<'a> {
    message: &'a str,
    address: String,
    expires_at: i64,
}

#[derive(Serialize)]
struct Problem {
    error: String,
}

fn problem(status: StatusCode, text: impl Into<String>) -> Response {
    (status, Json(Problem { error: text.into() })).into_response()
}

async fn get_session(State(st): State<AppState>, UrlPath(id): UrlPath<String>) -> Response {
    if !is_session_id(&id) {
        return problem(StatusCode::NOT_FOUND, "no such login request");
    }
    let sessions = lock(&st.sessions);
    match sessions.get(&id) {
        Some(p) if p.deliver.is_some() => Json(SessionView {
            message: &p.message,
            address: p.address.to_checksum(),
            expires_at: p.expires_at,
        })
        .into_response(),
        _ => problem(
            StatusCode::NOT_FOUND,
            "this login request has expired or was already answered; start a new SSH login",
        ),
    }
}

async fn post_signature(
    State(st): State<AppState>,
    UrlPath(id): UrlPath<String>,
    body: String,
) -> Response {
    if !is_session_id(&id) {
        return problem(StatusCode::NOT_FOUND, "no such login request");
    }
    let sig: Signature = match body.parse() {
        Ok(s) => s,
        Err(e) => return problem(StatusCode::BAD_REQUEST, format!("not a signature: {e}")),
    };
    let mut sessions = lock(&st.sessions);
    let Some(p) = sessions.get_mut(&id).filter(|p| p.deliver.is_some()) else {
        return problem(
            StatusCode::NOT_FOUND,
            "this login request has expired or was already answered",
        );
    };
    match eip191::verify(p.message.as_bytes(), &sig, &p.address) {
        Ok(()) => {
            // One-shot: the sender is taken, so a second post finds nothing.
            if let Some(tx) = p.deliver.take() {
                let _ = tx.send(sig.to_hex());
            }
            info!(session = %&id[..8], wallet = %p.address.to_lower_hex(), "signature delivered");
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => {
            p.failures += 1;
            if p.failures >= FAILURES_MAX {
                // Dropping the sender tells the waiting module the session is over.
                sessions.remove(&id);
            }
            warn!(session = %&id[..8], "rejected signature: {e}");
            problem(StatusCode::UNPROCESSABLE_ENTITY, e.to_string())
        }
    }
}

/// Fixed-window limiter per client (IPv4 address, IPv6 /64).
async fn rate_limit(
    State(st): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
    next: Next,
) -> Response {
    let allowed = st.rate.check(peer.ip(), Instant::now());
    if !allowed {
        return problem(
            StatusCode::TOO_MANY_REQUESTS,
            "too many requests; wait a minute",
        );
    }
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

fn static_file(body: &'static str, mime: &'static str) -> Response {
    ([(header::CONTENT_TYPE, mime)], body).into_response()
}

fn router(st: AppState) -> Router {
    Router::new()
        .route(
            "/",
            get(|| async { static_file(INDEX_HTML, "text/html; charset=utf-8") }),
        )
        .route(
            "/app.js",
            get(|| async { static_file(APP_JS, "text/javascript; charset=utf-8") }),
        )
        .route(
            "/style.css",
            get(|| async { static_file(STYLE_CSS, "text/css; charset=utf-8") }),
        )
        .route("/api/session/{id}", get(get_session).post(post_signature))
        .layer(DefaultBodyLimit::max(BODY_MAX))
        .layer(middleware::from_fn_with_state(st.clone(), rate_limit))
        .with_state(st)
}

/// Serves one module connection: register, then wait for the page, the module
/// hanging up, or expiry — whichever comes first — and forget the session.
async fn serve_module(st: AppState, stream: UnixStream) {
    match stream.peer_cred() {
        Ok(c) if c.uid() == 0 => {}
        other => {
            warn!(
                "refused hand-off connection from {:?}",
                other.map(|c| c.uid())
            );
            return;
        }
    }
    let (rd, mut wr) = stream.into_split();
    let mut rd = BufReader::new(rd.take(LINE_MAX as u64 + 1));
    let mut line = String::new();
    if rd.read_line(&mut line).await.is_err() || !line.ends_with('\n') {
        return;
    }
    let Ok(reg) = serde_json::from_str::<Register>(line.trim_end()) else {
        warn!("malformed registration");
        return;
    };
    if !is_session_id(&reg.session) || reg.message.len() > MESSAGE_MAX {
        return;
    }
    let Ok(parsed) = SiweMessage::parse(&reg.message) else {
        warn!("registration with a message that is not a sign-in message");
        return;
    };
    let (tx, rx) = oneshot::channel();
    {
        let mut sessions = lock(&st.sessions);
        if sessions.len() >= SESSIONS_MAX || sessions.contains_key(&reg.session) {
            return;
        }
        sessions.insert(
            reg.session.clone(),
            Pending {
                message: reg.message,
                address: parsed.address,
                expires_at: reg.expires_at,
                deliver: Some(tx),
                failures: 0,
            },
        );
    }
    let now = chrono::Utc::now().timestamp();
    let ttl = Duration::from_secs(u64::try_from(reg.expires_at - now).unwrap_or(0).min(3600));
    let mut eof = [0u8; 1];
    tokio::select! {
        delivered = rx => {
            if let Ok(signature) = delivered
                && let Ok(mut out) = serde_json::to_vec(&Delivered { signature })
            {
                out.push(b'\n');
                let _ = wr.write_all(&out).await;
                // Keep the session until the module hangs up or it expires, so the
                // page reports "already answered" rather than "unknown".
                let _ = tokio::time::timeout(ttl, rd.read(&mut eof)).await;
            }
        }
        _ = rd.read(&mut eof) => {}
        _ = tokio::time::sleep(ttl) => {}
    }
    lock(&st.sessions).remove(&reg.session);
}

fn load_or_make_certificate(
    state: &Path,
    names: Vec<String>,
) -> Result<(Vec<u8>, Vec<u8>), StartError> {
    let cert_path = state.join("cert.pem");
    let key_path = state.join("key.pem");
    if let (Ok(c), Ok(k)) = (std::fs::read(&cert_path), std::fs::read(&key_path)) {
        return Ok((c, k));
    }
    std::fs::create_dir_all(state).map_err(io_err(state))?;
    let cert = rcgen::generate_simple_self_signed(names)?;
    let key_pem = cert.signing_key.serialize_pem();
    let cert_pem = cert.cert.pem();
    // The key is written 0600 from the start: create with mode, then fill.
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&key_path)
            .map_err(io_err(&key_path))?;
        f.write_all(key_pem.as_bytes()).map_err(io_err(&key_path))?;
    }
    std::fs::write(&cert_path, cert_pem.as_bytes()).map_err(io_err(&cert_path))?;
    Ok((cert_pem.into_bytes(), key_pem.into_bytes()))
}

async fn run(args: Args) -> Result<(), StartError> {
    let mut names = args.hostnames.clone();
    names.push("localhost".into());
    names.push(args.listen.ip().to_string());
    let (cert, key) = load_or_make_certificate(&args.state_dir, names)?;
    let tls = axum_server::tls_rustls::RustlsConfig::from_pem(cert, key)
        .await
        .map_err(io_err(&args.state_dir))?
        .get_inner();

    if let Some(dir) = args.socket.parent() {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    }
    // A socket left by a previous run would make bind fail; only a socket is
    // removed (a file at the path is an error and stays).
    blockhost_listen::socket::clear_stale(&args.socket)
        .await
        .map_err(|e| StartError::Io {
            path: args.socket.display().to_string(),
            source: std::io::Error::other(e),
        })?;
    let listener = UnixListener::bind(&args.socket).map_err(io_err(&args.socket))?;
    std::fs::set_permissions(&args.socket, std::fs::Permissions::from_mode(0o600))
        .map_err(io_err(&args.socket))?;

    let st: AppState = Arc::default();
    let accept_state = st.clone();
    tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    tokio::spawn(serve_module(accept_state.clone(), stream));
                }
                Err(e) => {
                    warn!("hand-off accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    });

    let shutdown = tokio_util::sync::CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return,
            };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        stop.cancel();
    });
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(io_err(Path::new("listen address")))?;
    let _ = blockhost_listen::budget::raise_nofile();
    info!(listen = %args.listen, socket = %args.socket.display(), "signing service ready");
    // Idle or trickling clients must not hold connections, HTTP/2 included
    // (browsers pick h2 through ALPN): capped, timed and cut when idle.
    let limits = blockhost_listen::Limits {
        max_per_client: Some(MAX_PER_CLIENT),
        ..blockhost_listen::Limits::public("signer", MAX_CONNECTIONS)
    };
    blockhost_listen::Listener::new(limits)
        .serve_tcp(listener, Some(tls), router(st), shutdown)
        .await;
    blockhost_listen::socket::remove_socket(&args.socket);
    Ok(())
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    blockhost_listen::log::init(
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        false,
    );
    match run(Args::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            let mut line = e.to_string();
            let mut cur = std::error::Error::source(&e);
            while let Some(inner) = cur {
                line.push_str(&format!(": {inner}"));
                cur = inner.source();
            }
            tracing::error!("{line}");
            std::process::ExitCode::from(1)
        }
    }
}
