//! The public signup page and its status endpoint, served by `blockhostd` on
//! `signup.listen` (HTTPS when `signup.tlsCert`/`tlsKey` are set).
//!
//! Module map:
//! - [`page`]: the static files (compiled in) and `config.json` from the configuration.
//! - [`status`]: a subscription's public phase, derived from the store.
//!
//! Routes: `/`, `/app.js`, `/style.css`, `/vendor.js`, `/config.json`,
//! `GET /api/v1/subscriptions/{id}` (public status) and `GET /api/v1/nfts/{tokenId}`
//! (which subscription an access NFT belongs to, so the page can show its
//! expiry). The API routes are rate-limited per client address (429 beyond
//! `statusRequestsPerMinute`); every answer carries a strict CSP and no-sniff,
//! no-referrer and no-framing headers. This server never writes anything: it
//! reads the store, and the chain is only touched by the buyer's browser.

pub mod page;
pub mod status;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use blockhost_crd::DaemonConfig;
use blockhost_crd::subscription::vm_name_for;
use blockhost_crd::{Subscription, VirtualMachine};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::store::Store;
use page::PageConfig;

/// Client addresses tracked by the rate limiter; beyond this, expired windows
/// are dropped first and, if none are, the table is reset (a flood of addresses
/// must not grow memory without bound).
const RATE_TABLE_MAX: usize = 16_384;
const RATE_WINDOW: Duration = Duration::from_secs(60);
/// How long a client may take to send its first request, or any request's headers.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the signup server cannot start.
#[derive(Debug, thiserror::Error)]
pub enum SignupError {
    /// `signup` is configured without `chain` (also refused by validation).
    #[error("the signup page needs a chain section in the configuration")]
    NoChain,
    /// The contract addresses are not configured yet.
    #[error("the signup page needs the deployed contracts")]
    NotDeployed(#[from] blockhost_crd::config::ContractsNotSet),
    /// The server key could not be read (needed for its public half).
    #[error("cannot read the server key for the signup page")]
    Key(#[source] crate::chain::ChainError),
    /// The listen address could not be bound.
    #[error(
        "cannot listen on {addr} for the signup page (signup.listen); is another service using it?"
    )]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The certificate or key could not be loaded.
    #[error("cannot load the signup page's TLS certificate {} or key {} (PEM files; signup.tlsCert, signup.tlsKey)", cert.display(), key.display())]
    Tls {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Shared state of the handlers.
#[derive(Debug, Clone)]
pub struct SignupState {
    store: Store,
    metrics: Arc<Metrics>,
    config_json: Arc<String>,
    csp: HeaderValue,
    limit_per_minute: u32,
    rate: Arc<Mutex<HashMap<IpAddr, (Instant, u32)>>>,
}

impl SignupState {
    /// State for a page with `page` as its configuration.
    pub fn new(
        store: Store,
        metrics: Arc<Metrics>,
        page: &PageConfig,
        limit_per_minute: u32,
    ) -> Self {
        let csp = HeaderValue::from_str(&page.content_security_policy())
            .unwrap_or_else(|_| HeaderValue::from_static("default-src 'none'"));
        Self {
            store,
            metrics,
            config_json: Arc::new(serde_json::to_string(page).unwrap_or_default()),
            csp,
            limit_per_minute,
            rate: Arc::default(),
        }
    }
}

/// Locks a mutex, recovering from poisoning: each critical section is one map
/// update, so the map is consistent whatever happened.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[derive(Serialize)]
struct Problem {
    error: &'static str,
}

fn problem(status: StatusCode, error: &'static str) -> Response {
    (status, Json(Problem { error })).into_response()
}

/// The page's router. Needs `ConnectInfo<SocketAddr>` (the rate limiter's key).
pub fn router(state: SignupState) -> Router {
    let api = Router::new()
        .route("/subscriptions/{id}", get(subscription_status))
        .route("/nfts/{token}", get(nft_subscription))
        .fallback(|| async { problem(StatusCode::NOT_FOUND, "no such API path") })
        .layer(middleware::from_fn_with_state(state.clone(), rate_limit));
    Router::new()
        .route(
            "/",
            get(|| async { asset(page::INDEX_HTML, "text/html; charset=utf-8") }),
        )
        .route(
            "/app.js",
            get(|| async { asset(page::APP_JS, "text/javascript; charset=utf-8") }),
        )
        .route(
            "/vendor.js",
            get(|| async { asset(page::VENDOR_JS, "text/javascript; charset=utf-8") }),
        )
        .route(
            "/style.css",
            get(|| async { asset(page::STYLE_CSS, "text/css; charset=utf-8") }),
        )
        .route("/config.json", get(config_json))
        .nest("/api/v1", api)
        .fallback(|| async { problem(StatusCode::NOT_FOUND, "not found") })
        .layer(middleware::from_fn_with_state(state.clone(), headers))
        .with_state(state)
}

fn asset(body: &'static str, mime: &'static str) -> Response {
    ([(header::CONTENT_TYPE, mime)], body).into_response()
}

async fn config_json(State(st): State<SignupState>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        st.config_json.as_str().to_owned(),
    )
        .into_response()
}

/// Strict headers on every answer.
async fn headers(State(st): State<SignupState>, req: Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_SECURITY_POLICY, st.csp.clone());
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        "cross-origin-opener-policy",
        HeaderValue::from_static("same-origin"),
    );
    h.insert(
        "permissions-policy",
        HeaderValue::from_static("camera=(), microphone=(), geolocation=(), payment=()"),
    );
    // Files change with the daemon's version and statuses change by the second:
    // always revalidate.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}

/// Fixed-window limiter per client address on the API routes.
async fn rate_limit(
    State(st): State<SignupState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
    next: Next,
) -> Response {
    let allowed = {
        let mut table = lock(&st.rate);
        let now = Instant::now();
        if table.len() >= RATE_TABLE_MAX {
            table.retain(|_, (start, _)| now.duration_since(*start) < RATE_WINDOW);
            if table.len() >= RATE_TABLE_MAX {
                tracing::warn!(
                    clients = table.len(),
                    "signup rate-limit table full; resetting it"
                );
                table.clear();
            }
        }
        let entry = table.entry(peer.ip()).or_insert((now, 0));
        if now.duration_since(entry.0) >= RATE_WINDOW {
            *entry = (now, 0);
        }
        entry.1 = entry.1.saturating_add(1);
        entry.1 <= st.limit_per_minute
    };
    if !allowed {
        count(&st, "rate_limited");
        let mut r = problem(
            StatusCode::TOO_MANY_REQUESTS,
            "too many requests from your address; wait a minute",
        );
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("60"));
        return r;
    }
    next.run(req).await
}

fn count(st: &SignupState, result: &str) {
    st.metrics
        .signup_api_requests
        .get_or_create(&vec![("result".into(), result.into())])
        .inc();
}

/// Parses an id from the path: a decimal `u64`, else 400.
// The error is the finished answer, returned straight to axum: boxing it buys nothing.
#[allow(clippy::result_large_err)]
fn parse_id(st: &SignupState, raw: &str, what: &'static str) -> Result<u64, Response> {
    raw.parse().map_err(|_| {
        count(st, "bad_request");
        problem(StatusCode::BAD_REQUEST, what)
    })
}

/// Runs a store read on the blocking pool; a failure is logged and answered 503
/// (its text stays in the log: it is not for outsiders).
async fn read_store<T: Send + 'static>(
    st: &SignupState,
    f: impl FnOnce(&Store) -> Result<T, crate::store::StoreError> + Send + 'static,
) -> Result<T, Response> {
    let store = st.store.clone();
    let failed = |detail: String| {
        count(st, "error");
        tracing::warn!(error = %detail, "signup page: store read failed");
        problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable; try again shortly",
        )
    };
    match tokio::task::spawn_blocking(move || f(&store)).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(failed(crate::error_chain(&e))),
        Err(e) => Err(failed(e.to_string())),
    }
}

/// `GET /api/v1/subscriptions/{id}`: the public status.
async fn subscription_status(State(st): State<SignupState>, Path(id): Path<String>) -> Response {
    let id = match parse_id(&st, &id, "a subscription id is a decimal number") {
        Ok(id) => id,
        Err(r) => return r,
    };
    let read = read_store(&st, move |store| {
        let name = vm_name_for(id);
        let sub = store.get::<Subscription>(name.as_str())?;
        let vm_name = sub
            .as_ref()
            .and_then(|s| s.status.vm.clone())
            .unwrap_or(name);
        let vm = store.get::<VirtualMachine>(vm_name.as_str())?;
        Ok(status::derive(id, sub.as_ref(), vm.as_ref()))
    })
    .await;
    match read {
        Ok(s) => {
            count(&st, "ok");
            Json(s).into_response()
        }
        Err(r) => r,
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct NftLink {
    token_id: u64,
    subscription_id: u64,
}

/// `GET /api/v1/nfts/{tokenId}`: the subscription an access NFT was minted for.
/// (Public on chain too: the mint follows the purchase; this saves the page a
/// log search.)
async fn nft_subscription(State(st): State<SignupState>, Path(token): Path<String>) -> Response {
    let token = match parse_id(&st, &token, "a token id is a decimal number") {
        Ok(t) => t,
        Err(r) => return r,
    };
    let found = read_store(&st, move |store| {
        Ok(store
            .list::<Subscription>()?
            .iter()
            .find(|s| s.status.nft_token_id == Some(token))
            .map(|s| s.spec.subscription_id))
    })
    .await;
    match found {
        Ok(Some(subscription_id)) => {
            count(&st, "ok");
            Json(NftLink {
                token_id: token,
                subscription_id,
            })
            .into_response()
        }
        Ok(None) => {
            count(&st, "not_found");
            problem(
                StatusCode::NOT_FOUND,
                "this server minted no such access NFT",
            )
        }
        Err(r) => r,
    }
}

/// Checks the configuration, binds the listen address and loads the
/// certificate; returns the server's task, which runs until `shutdown`. `None`
/// when no `signup` section is configured.
pub async fn task(
    cfg: &DaemonConfig,
    store: Store,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> Result<Option<impl Future<Output = ()> + Send + 'static>, SignupError> {
    let Some(signup) = &cfg.signup else {
        return Ok(None);
    };
    let chain = cfg.chain.as_ref().ok_or(SignupError::NoChain)?;
    let contracts = chain.contracts()?;
    let key = crate::chain::load_server_key(&chain.server_key_file).map_err(SignupError::Key)?;
    let page = PageConfig::new(chain, contracts, signup, &key.public_key());
    let state = SignupState::new(store, metrics, &page, signup.status_requests_per_minute);
    let addr = signup.listen;
    let listener = std::net::TcpListener::bind(addr)
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .map_err(|source| SignupError::Listen { addr, source })?;
    let app = router(state).into_make_service_with_connect_info::<SocketAddr>();
    let tls = match (&signup.tls_cert, &signup.tls_key) {
        (Some(cert), Some(key)) => Some(
            axum_server::tls_rustls::RustlsConfig::from_pem_file(cert, key)
                .await
                .map_err(|source| SignupError::Tls {
                    cert: cert.clone(),
                    key: key.clone(),
                    source,
                })?,
        ),
        _ => None,
    };
    if tls.is_none() && !addr.ip().is_loopback() {
        tracing::warn!(%addr, "the signup page is served over plain HTTP on a public address; browsers only decrypt (WebCrypto) over HTTPS: set signup.tlsCert/tlsKey or put a TLS proxy in front");
    }
    tracing::info!(%addr, tls = tls.is_some(), rpc_url = %page.rpc_url, "signup page listening");
    // Both variants through axum-server, so idle and trickling clients are cut
    // alike: the first request and HTTP/1 headers within CLIENT_TIMEOUT (and TLS
    // handshakes, axum-server's default).
    let handle = axum_server::Handle::new();
    let stop = handle.clone();
    Ok(Some(async move {
        tokio::spawn(async move {
            shutdown.cancelled().await;
            stop.graceful_shutdown(Some(Duration::from_secs(2)));
        });
        // The two acceptors make two server types; the limits are the same.
        macro_rules! serve_limited {
            ($server:expr) => {{
                let mut server = $server.handle(handle).first_request_timeout(CLIENT_TIMEOUT);
                server
                    .http_builder()
                    .http1()
                    .header_read_timeout(CLIENT_TIMEOUT);
                server.serve(app).await
            }};
        }
        let served = match tls {
            Some(tls) => match axum_server::from_tcp_rustls(listener, tls) {
                Ok(server) => serve_limited!(server),
                Err(e) => Err(e),
            },
            None => match axum_server::from_tcp(listener) {
                Ok(server) => serve_limited!(server),
                Err(e) => Err(e),
            },
        };
        if let Err(e) = served {
            tracing::error!(error = %e, "signup page server failed");
        }
    }))
}

#[cfg(test)]
mod tests;
