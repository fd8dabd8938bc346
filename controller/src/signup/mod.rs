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
//! expiry). The API routes are rate-limited per client (an IPv4 address or an
//! IPv6 /64, `signup.clientIpv6Prefix`; 429 beyond `statusRequestsPerMinute`);
//! every answer carries a strict CSP and no-sniff, no-referrer and no-framing
//! headers, and HSTS over HTTPS. Connections are capped, timed and cut when
//! idle by [`blockhost_listen`] (`signup.connections`). This server never
//! writes anything: it reads the store, and the chain is only touched by the
//! buyer's browser.

pub mod page;
pub mod status;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
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

/// Clients tracked by the rate limiter; beyond this the least recently seen
/// is forgotten (never everybody at once: see `blockhost_listen::rate`).
const RATE_TABLE_MAX: usize = 65_536;
const RATE_WINDOW: Duration = Duration::from_secs(60);
/// HSTS over HTTPS: a year (the page is only useful over HTTPS anyway).
const HSTS: &str = "max-age=31536000";

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
    Key(#[source] blockhost_chain::key::KeyError),
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
    /// The TLS key is readable by others.
    #[error("the signup page's TLS key {} has mode {mode:o}; make it readable by its owner (and group) only (chmod 640)", path.display())]
    TlsKeyPermissions {
        /// The key file.
        path: PathBuf,
        /// Its mode bits.
        mode: u32,
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
    rate: Arc<blockhost_listen::rate::RateLimiter>,
    hsts: bool,
}

impl SignupState {
    /// State for a page with `page` as its configuration.
    pub fn new(
        store: Store,
        metrics: Arc<Metrics>,
        page: &PageConfig,
        limit_per_minute: u32,
        ipv6_prefix: u8,
    ) -> Self {
        let csp = HeaderValue::from_str(&page.content_security_policy())
            .unwrap_or_else(|_| HeaderValue::from_static("default-src 'none'"));
        Self {
            store,
            metrics,
            config_json: Arc::new(serde_json::to_string(page).unwrap_or_default()),
            csp,
            rate: Arc::new(blockhost_listen::rate::RateLimiter::new(
                limit_per_minute,
                RATE_WINDOW,
                RATE_TABLE_MAX,
                ipv6_prefix,
            )),
            hsts: false,
        }
    }

    /// Served over HTTPS: answers carry `Strict-Transport-Security`.
    pub fn with_hsts(mut self) -> Self {
        self.hsts = true;
        self
    }
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
    if st.hsts {
        h.insert(
            header::STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_static(HSTS),
        );
    }
    resp
}

/// Fixed-window limiter per client (IPv4 address, IPv6 prefix) on the API routes.
async fn rate_limit(
    State(st): State<SignupState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
    next: Next,
) -> Response {
    let allowed = st.rate.check(peer.ip(), Instant::now());
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
    let failed = |detail: String| {
        count(st, "error");
        tracing::warn!(error = %detail, "signup page: store read failed");
        problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable; try again shortly",
        )
    };
    st.store
        .blocking(f)
        .await
        .map_err(|e| failed(crate::error_chain(&e)))
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
    // The store's token index: one lookup, whatever the number of subscriptions.
    let found = read_store(&st, move |store| {
        Ok(store
            .subscription_for_token(token)?
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
/// certificate; returns the server's task, which runs until `shutdown` under
/// `limits` (connection caps and timeouts). `None` when no `signup` section is
/// configured.
pub async fn task(
    cfg: &DaemonConfig,
    store: Store,
    metrics: Arc<Metrics>,
    limits: blockhost_listen::Limits,
    shutdown: CancellationToken,
) -> Result<Option<impl Future<Output = ()> + Send + 'static>, SignupError> {
    let Some(signup) = &cfg.signup else {
        return Ok(None);
    };
    let chain = cfg.chain.as_ref().ok_or(SignupError::NoChain)?;
    let contracts = chain.contracts()?;
    let key =
        blockhost_chain::key::load_server_key(&chain.server_key_file).map_err(SignupError::Key)?;
    let page = PageConfig::new(chain, contracts, signup, &key.public_key());
    let mut state = SignupState::new(
        store,
        metrics.clone(),
        &page,
        signup.status_requests_per_minute,
        signup.client_ipv6_prefix,
    );
    let addr = signup.listen;
    let tls = match (&signup.tls_cert, &signup.tls_key) {
        (Some(cert), Some(key)) => {
            check_key_mode(cert, key)?;
            let loaded = axum_server::tls_rustls::RustlsConfig::from_pem_file(cert, key)
                .await
                .map_err(|source| SignupError::Tls {
                    cert: cert.clone(),
                    key: key.clone(),
                    source,
                })?;
            state = state.with_hsts();
            // ALPN offers h2 and http/1.1 (set by the loader).
            Some(loaded.get_inner())
        }
        _ => None,
    };
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| SignupError::Listen { addr, source })?;
    if tls.is_none() && !addr.ip().is_loopback() {
        tracing::warn!(%addr, "the signup page is served over plain HTTP on a public address; browsers only decrypt (WebCrypto) over HTTPS: set signup.tlsCert/tlsKey or put a TLS proxy in front");
    }
    // The published URL has no credentials (refused at config load), but a log
    // line never carries more than scheme, host and port of any RPC URL.
    tracing::info!(
        %addr,
        tls = tls.is_some(),
        rpc_url = %blockhost_chain::rpc::redact(&page.rpc_url),
        max_connections = limits.max_connections,
        "signup page listening"
    );
    let app = router(state);
    let served = blockhost_listen::Listener::new(limits);
    metrics.watch_listener(served.limits().name, served.stats());
    Ok(Some(served.serve_tcp(listener, tls, app, shutdown)))
}

/// Refuses a TLS key others may read (group read is allowed: `ssl-cert`).
fn check_key_mode(cert: &std::path::Path, path: &std::path::Path) -> Result<(), SignupError> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)
        .map_err(|source| SignupError::Tls {
            cert: cert.to_owned(),
            key: path.to_owned(),
            source,
        })?
        .permissions()
        .mode()
        & 0o777;
    if mode & 0o037 != 0 {
        return Err(SignupError::TlsKeyPermissions {
            path: path.to_owned(),
            mode,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests;
