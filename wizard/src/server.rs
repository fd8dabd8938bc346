//! The HTTPS server: the page (HTML, CSS and JS compiled into the binary, served
//! under a strict CSP with no inline script) and its JSON API.
//!
//! | method | path | what |
//! |---|---|---|
//! | GET | `/api/state` | the session's stage, its CSRF token, and (signed in) the answers and finalization |
//! | POST | `/api/code` | the one-time code |
//! | POST | `/api/login/challenge` | a sign-in message for an address |
//! | POST | `/api/login/verify` | its signature → the admin |
//! | POST | `/api/login/access` | the admin's signature of the public secret (NFT #0's key) |
//! | GET | `/api/proxmox/detect` | the local node's API URL and certificate fingerprint |
//! | POST | `/api/steps/{step}` | save a step's answers; `check: true` also validates them |
//! | GET | `/api/chain/balance` | the server wallet's live balance |
//! | GET/POST | `/api/finalize` | the run's state / start, resume or retry it |
//!
//! Every POST needs the session cookie and its CSRF token in `X-CSRF-Token`; every
//! route but `/api/state`, `/api/code` and the static files needs a session that
//! passed the code, and the step and finalization routes need the admin.
// Handlers return an axum Response as their early-exit error: it is built once per
// request and handed straight to axum, so its size costs nothing worth boxing.
#![allow(clippy::result_large_err)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use blockhost_crd::WalletAddress;
use chrono::Utc;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::answers::{self, Answers, Report};
use crate::code::{CodeStore, Verdict};
use crate::finalize::{Finalizer, RunStatus, StartError};
use crate::fsutil;
use crate::login;
use crate::session::{COOKIE, Session, Sessions};
use crate::settings::Settings;
use crate::{error_chain, probe};

const INDEX: &str = include_str!("../static/index.html");
const APP_JS: &str = include_str!("../static/app.js");
const STYLE: &str = include_str!("../static/style.css");

/// The CSP: scripts, styles and connections from this origin only.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The public secret the admin signs for NFT #0 (blockhostd's default).
pub const PUBLIC_SECRET: &str = "blockhost-access";

/// Shared state.
#[derive(Debug)]
pub struct App {
    /// Settings.
    pub settings: Arc<Settings>,
    /// The code.
    pub code: Arc<CodeStore>,
    /// Sessions.
    pub sessions: Arc<Sessions>,
    /// The answers (also on disk).
    pub answers: Mutex<Answers>,
    /// The runner.
    pub finalizer: Arc<Finalizer>,
}

impl App {
    fn answers(&self) -> Answers {
        self.answers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn save_answers(&self, f: impl FnOnce(&mut Answers)) -> Result<Answers, Response> {
        let mut a = self.answers.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut a);
        fsutil::write_json(&self.settings.answers_file(), &*a, 0o600).map_err(internal)?;
        Ok(a.clone())
    }
}

fn problem(status: StatusCode, msg: impl Into<String>) -> Response {
    (status, axum::Json(json!({ "error": msg.into() }))).into_response()
}

fn internal(e: impl std::error::Error + 'static) -> Response {
    tracing::error!(error = %error_chain(&e), "request failed");
    problem(
        StatusCode::INTERNAL_SERVER_ERROR,
        "the wizard could not save its state; see its log on the host (journalctl -u blockhost-wizard)",
    )
}

fn cookie_of(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.to_owned())
}

/// The session of a request, checked: it exists and, for POSTs, carries its CSRF token.
fn session(app: &App, headers: &HeaderMap, post: bool) -> Result<(String, Session), Response> {
    let expired = || {
        problem(
            StatusCode::UNAUTHORIZED,
            "your session has ended; reload the page",
        )
    };
    let id = cookie_of(headers).ok_or_else(expired)?;
    let s = app.sessions.get(&id, Utc::now()).ok_or_else(expired)?;
    if post {
        let given = headers
            .get("x-csrf-token")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        if !s.csrf_ok(given) {
            return Err(problem(
                StatusCode::FORBIDDEN,
                "the request lacks this session's CSRF token; reload the page",
            ));
        }
    }
    Ok((id, s))
}

fn need_admin(s: &Session) -> Result<WalletAddress, Response> {
    if !s.code_ok {
        return Err(problem(
            StatusCode::UNAUTHORIZED,
            "enter the one-time code first",
        ));
    }
    s.admin.ok_or_else(|| {
        problem(
            StatusCode::UNAUTHORIZED,
            "sign in with the admin wallet first",
        )
    })
}

fn body<T: for<'de> Deserialize<'de>>(b: &Bytes) -> Result<T, Response> {
    serde_json::from_slice(b).map_err(|e| {
        problem(
            StatusCode::BAD_REQUEST,
            format!("the request is not what this page sends: {e}"),
        )
    })
}

fn stage(app: &App, s: &Session) -> &'static str {
    let run = app.finalizer.snapshot().status;
    if !s.code_ok {
        "code"
    } else if s.admin.is_none() {
        "wallet"
    } else if !s.access_signed {
        "access"
    } else if run != RunStatus::Idle {
        "finalize"
    } else {
        "steps"
    }
}

fn state_json(app: &App, s: &Session) -> Value {
    let mut v = json!({
        "stage": stage(app, s),
        "csrf": s.csrf,
        "host": app.settings.host_name(),
        "publicSecret": PUBLIC_SECRET,
    });
    if let Some(admin) = s.admin {
        let a = app.answers();
        v["admin"] = json!(admin.to_checksum());
        v["answers"] = json!({"proxmox": a.proxmox, "chain": a.chain, "admin": a.admin});
        v["valid"] = json!(a.valid);
        v["found"] = json!(a.chain_found);
        v["passwordStored"] = json!(app.settings.pve_password_file().exists());
        v["commandStored"] = json!(app.settings.admin_command_file().exists());
        v["firewall"] = json!(app.settings.manages_firewall());
        v["finalize"] = json!(app.finalizer.snapshot());
    }
    v
}

async fn get_state(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    if let Ok((_, s)) = session(&app, &headers, false) {
        return axum::Json(state_json(&app, &s)).into_response();
    }
    let (id, s) = app.sessions.create(Utc::now());
    let cookie = format!("{COOKIE}={id}; Path=/; Secure; HttpOnly; SameSite=Strict");
    let mut resp = axum::Json(state_json(&app, &s)).into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    resp
}

#[derive(Deserialize)]
struct CodeReq {
    code: String,
}

async fn post_code(State(app): State<Arc<App>>, headers: HeaderMap, b: Bytes) -> Response {
    let (id, s) = match session(&app, &headers, true) {
        Ok(x) => x,
        Err(r) => return r,
    };
    if s.code_ok {
        return axum::Json(json!({"ok": true})).into_response();
    }
    let req: CodeReq = match body(&b) {
        Ok(r) => r,
        Err(r) => return r,
    };
    let verdict = match app.code.check(&req.code, Utc::now()) {
        Ok(v) => v,
        Err(e) => return internal(e),
    };
    if verdict != Verdict::Accepted {
        let status = match verdict {
            Verdict::Wrong { .. } => StatusCode::UNAUTHORIZED,
            _ => StatusCode::FORBIDDEN,
        };
        let mut resp = problem(status, verdict.message());
        if let Verdict::Wrong { remaining } = verdict
            && let Ok(v) = HeaderValue::from_str(&remaining.to_string())
        {
            resp.headers_mut().insert("x-tries-left", v);
        }
        return resp;
    }
    tracing::info!("one-time code accepted");
    match app.sessions.update(&id, |s| s.code_ok = true) {
        Ok(_) => axum::Json(json!({"ok": true})).into_response(),
        Err(e) => internal(e),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ChallengeReq {
    address: String,
    chain_id: u64,
}

async fn post_challenge(
    State(app): State<Arc<App>>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    b: Bytes,
) -> Response {
    let (id, s) = match session(&app, &headers, true) {
        Ok(x) => x,
        Err(r) => return r,
    };
    if !s.code_ok {
        return problem(StatusCode::UNAUTHORIZED, "enter the one-time code first");
    }
    let req: ChallengeReq = match body(&b) {
        Ok(r) => r,
        Err(r) => return r,
    };
    let Ok(address) = req.address.parse::<WalletAddress>() else {
        return problem(
            StatusCode::BAD_REQUEST,
            "the wallet gave an address that is not 0x + 40 hex digits",
        );
    };
    // HTTP/1 names the page's host in `Host`, HTTP/2 in the request's authority.
    let domain = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned)
        .or_else(|| uri.authority().map(|a| a.to_string()))
        .unwrap_or_default();
    let pending = match login::challenge(
        &domain,
        &app.settings.host_name(),
        address,
        req.chain_id,
        Utc::now(),
    ) {
        Ok(p) => p,
        Err(e) => return problem(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let text = pending.text.clone();
    match app.sessions.update(&id, |s| s.pending = Some(pending)) {
        Ok(_) => axum::Json(json!({"message": text})).into_response(),
        Err(e) => internal(e),
    }
}

#[derive(Deserialize)]
struct SignatureReq {
    signature: String,
}

async fn post_verify(State(app): State<Arc<App>>, headers: HeaderMap, b: Bytes) -> Response {
    let (id, s) = match session(&app, &headers, true) {
        Ok(x) => x,
        Err(r) => return r,
    };
    let req: SignatureReq = match body(&b) {
        Ok(r) => r,
        Err(r) => return r,
    };
    let Some(pending) = s.pending.clone() else {
        return problem(
            StatusCode::BAD_REQUEST,
            login::LoginError::NoChallenge.to_string(),
        );
    };
    // The nonce is single-use: the pending message goes whatever the outcome.
    if let Err(e) = app.sessions.update(&id, |s| s.pending = None) {
        return internal(e);
    }
    let admin = match login::verify(&pending, &req.signature, Utc::now()) {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!(error = %error_chain(&e), "admin sign-in refused");
            return problem(StatusCode::UNAUTHORIZED, e.to_string());
        }
    };
    if let Some(started_for) = app.finalizer.snapshot().admin
        && started_for != admin
    {
        return problem(
            StatusCode::FORBIDDEN,
            format!(
                "finalization was started for the admin wallet {started_for}; sign in with that wallet"
            ),
        );
    }
    tracing::info!(admin = %admin, "admin signed in");
    match app.sessions.update(&id, |s| {
        if s.admin != Some(admin) {
            s.access_signed = false;
        }
        s.admin = Some(admin);
    }) {
        Ok(_) => axum::Json(json!({"admin": admin.to_checksum()})).into_response(),
        Err(e) => internal(e),
    }
}

async fn post_access(State(app): State<Arc<App>>, headers: HeaderMap, b: Bytes) -> Response {
    let (id, s) = match session(&app, &headers, true) {
        Ok(x) => x,
        Err(r) => return r,
    };
    let admin = match need_admin(&s) {
        Ok(a) => a,
        Err(r) => return r,
    };
    let req: SignatureReq = match body(&b) {
        Ok(r) => r,
        Err(r) => return r,
    };
    let sig = match login::verify_access(admin, PUBLIC_SECRET, &req.signature) {
        Ok(s) => s,
        Err(e) => return problem(StatusCode::UNAUTHORIZED, e.to_string()),
    };
    let dir = app.settings.secrets_dir();
    if let Err(e) = fsutil::ensure_dir(&dir, 0o700).and_then(|()| {
        fsutil::write_atomic(
            &app.settings.access_signature_file(),
            sig.to_hex().as_bytes(),
            0o600,
        )
    }) {
        return internal(e);
    }
    match app.sessions.update(&id, |s| s.access_signed = true) {
        Ok(_) => axum::Json(json!({"ok": true})).into_response(),
        Err(e) => internal(e),
    }
}

async fn get_detect(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    let s = match session(&app, &headers, false) {
        Ok((_, s)) => s,
        Err(r) => return r,
    };
    if let Err(r) = need_admin(&s) {
        return r;
    }
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let fingerprint = CertificateDer::from_pem_file(&app.settings.local_pve_cert)
        .ok()
        .map(|der| crate::tls::fingerprint(der.as_ref()));
    axum::Json(json!({
        "url": app.settings.local_pve_url,
        "fingerprint": fingerprint,
        "local": fingerprint.is_some(),
    }))
    .into_response()
}

#[derive(Deserialize)]
struct StepReq {
    answers: Value,
    #[serde(default)]
    check: bool,
    #[serde(default)]
    password: Option<String>,
    /// The admin command name (a secret, as the password: kept in a 0600 file).
    #[serde(default)]
    command: Option<String>,
}

async fn post_step(
    State(app): State<Arc<App>>,
    Path(step): Path<String>,
    headers: HeaderMap,
    b: Bytes,
) -> Response {
    let s = match session(&app, &headers, true) {
        Ok((_, s)) => s,
        Err(r) => return r,
    };
    if let Err(r) = need_admin(&s) {
        return r;
    }
    let run = app.finalizer.snapshot().status;
    if matches!(run, RunStatus::Running | RunStatus::Done) {
        return problem(
            StatusCode::CONFLICT,
            "finalization is under way; answers can change only after a step failed",
        );
    }
    let req: StepReq = match body(&b) {
        Ok(r) => r,
        Err(r) => return r,
    };
    let password_given = req.password.as_ref().is_some_and(|p| !p.is_empty())
        || req.command.as_ref().is_some_and(|c| !c.is_empty());
    let mut report = Report::default();
    let before = app.answers();
    let bad = |e: serde_json::Error| {
        problem(
            StatusCode::BAD_REQUEST,
            format!("the {step} answers are malformed: {e}"),
        )
    };
    let saved = match step.as_str() {
        "proxmox" => {
            let a: answers::ProxmoxAnswers = match serde_json::from_value(req.answers) {
                Ok(a) => a,
                Err(e) => return bad(e),
            };
            if let Some(pw) = req.password.as_ref().filter(|p| !p.is_empty()) {
                let dir = app.settings.secrets_dir();
                if let Err(e) = fsutil::ensure_dir(&dir, 0o700).and_then(|()| {
                    fsutil::write_atomic(&app.settings.pve_password_file(), pw.as_bytes(), 0o600)
                }) {
                    return internal(e);
                }
            }
            if req.check {
                let password = std::fs::read_to_string(app.settings.pve_password_file()).ok();
                answers::check_proxmox(&a, password.is_some(), &mut report);
                if report.ok()
                    && let Some(pw) = password
                {
                    probe::proxmox(&a, &pw, &mut report).await;
                }
            }
            app.save_answers(|x| x.proxmox = a)
        }
        "chain" => {
            let a: answers::ChainAnswers = match serde_json::from_value(req.answers) {
                Ok(a) => a,
                Err(e) => return bad(e),
            };
            if req.check {
                answers::check_chain(&a, &mut report);
                if report.ok() {
                    match crate::finalize::steps::ensure_server_key(&app.settings) {
                        Ok(key) => probe::chain(&a, &key, &mut report).await,
                        Err(e) => report.error("chainId", e),
                    }
                }
            }
            let found: BTreeMap<String, String> = report
                .found
                .iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        v.as_str().map_or_else(|| v.to_string(), str::to_owned),
                    )
                })
                .collect();
            app.save_answers(|x| {
                x.chain = a;
                if req.check {
                    x.chain_found = found;
                }
            })
        }
        "admin" => {
            let a: answers::AdminAnswers = match serde_json::from_value(req.answers) {
                Ok(a) => a,
                Err(e) => return bad(e),
            };
            let command = req.command.as_deref().unwrap_or_default();
            if !command.is_empty() {
                let n = command.chars().count();
                if !(8..=64).contains(&n) || command.chars().any(char::is_control) {
                    report.error(
                        "command",
                        "the command name must be 8 to 64 printable characters",
                    );
                } else {
                    let dir = app.settings.secrets_dir();
                    if let Err(e) = fsutil::ensure_dir(&dir, 0o700).and_then(|()| {
                        fsutil::write_atomic(
                            &app.settings.admin_command_file(),
                            command.as_bytes(),
                            0o600,
                        )
                    }) {
                        return internal(e);
                    }
                }
            }
            if req.check {
                answers::check_admin(&a, &mut report);
                if a.enabled
                    && app.settings.manages_firewall()
                    && !app.settings.admin_command_file().exists()
                    && !report.errors.contains_key("command")
                {
                    report.error(
                        "command",
                        "choose the command name that opens the ports (8 to 64 characters, a secret: keep it with the admin key)",
                    );
                }
            }
            app.save_answers(|x| x.admin = a)
        }
        _ => return problem(StatusCode::NOT_FOUND, "no such step"),
    };
    let after = match saved {
        Ok(a) => a,
        Err(r) => return r,
    };
    // A draft saved on the way back or forth keeps the step's check if nothing
    // changed; any change needs a new check.
    let unchanged = match step.as_str() {
        "proxmox" => before.proxmox == after.proxmox && !password_given,
        "chain" => before.chain == after.chain,
        _ => before.admin == after.admin,
    };
    let was_valid = before.valid.get(&step) == Some(&true);
    let ok = if req.check {
        report.ok()
    } else {
        unchanged && was_valid
    };
    if let Err(r) = app.save_answers(|x| {
        x.valid.insert(step.clone(), ok);
    }) {
        return r;
    }
    axum::Json(json!({"ok": ok, "checked": req.check, "report": report})).into_response()
}

async fn get_balance(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    let s = match session(&app, &headers, false) {
        Ok((_, s)) => s,
        Err(r) => return r,
    };
    if let Err(r) = need_admin(&s) {
        return r;
    }
    let a = app.answers();
    let key = match crate::finalize::steps::ensure_server_key(&app.settings) {
        Ok(k) => k,
        Err(e) => return problem(StatusCode::INTERNAL_SERVER_ERROR, e),
    };
    let rpc = match blockhost_chain::rpc::RpcClient::new(a.chain.rpc_urls.clone()) {
        Ok(r) => r,
        Err(e) => return problem(StatusCode::BAD_REQUEST, error_chain(&e)),
    };
    let w = blockhost_chain::wallet::ServerWallet::new(&key, a.chain.chain_id, Arc::new(rpc));
    match w.balance().await {
        Ok(b) => {
            axum::Json(json!({"address": w.address().to_checksum(), "balanceWei": b.to_string()}))
                .into_response()
        }
        Err(e) => problem(
            StatusCode::BAD_GATEWAY,
            format!("the chain does not answer: {}", error_chain(&e)),
        ),
    }
}

async fn get_finalize(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    let s = match session(&app, &headers, false) {
        Ok((_, s)) => s,
        Err(r) => return r,
    };
    if let Err(r) = need_admin(&s) {
        return r;
    }
    axum::Json(json!(app.finalizer.snapshot())).into_response()
}

async fn post_finalize(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    let s = match session(&app, &headers, true) {
        Ok((_, s)) => s,
        Err(r) => return r,
    };
    let admin = match need_admin(&s) {
        Ok(a) => a,
        Err(r) => return r,
    };
    if !s.access_signed {
        return problem(
            StatusCode::BAD_REQUEST,
            "sign the access secret with the admin wallet first (it encrypts NFT #0)",
        );
    }
    match app.finalizer.start(app.answers(), admin) {
        Ok(()) | Err(StartError::AlreadyRunning) => {
            axum::Json(json!(app.finalizer.snapshot())).into_response()
        }
        Err(StartError::Fs(e)) => internal(e),
        Err(e) => problem(StatusCode::CONFLICT, e.to_string()),
    }
}

async fn static_file(path: &'static str) -> Response {
    let (body, ty) = match path {
        "app.js" => (APP_JS, "text/javascript; charset=utf-8"),
        "style.css" => (STYLE, "text/css; charset=utf-8"),
        _ => (INDEX, "text/html; charset=utf-8"),
    };
    ([(header::CONTENT_TYPE, ty)], body).into_response()
}

/// Strict headers on every answer.
async fn headers_mw(req: Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::STRICT_TRANSPORT_SECURITY,
        HeaderValue::from_static("max-age=31536000"),
    );
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
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// The router.
pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/", get(|| static_file("index.html")))
        .route("/index.html", get(|| static_file("index.html")))
        .route("/app.js", get(|| static_file("app.js")))
        .route("/style.css", get(|| static_file("style.css")))
        .route("/api/state", get(get_state))
        .route("/api/code", post(post_code))
        .route("/api/login/challenge", post(post_challenge))
        .route("/api/login/verify", post(post_verify))
        .route("/api/login/access", post(post_access))
        .route("/api/proxmox/detect", get(get_detect))
        .route("/api/steps/{step}", post(post_step))
        .route("/api/chain/balance", get(get_balance))
        .route("/api/finalize", get(get_finalize).post(post_finalize))
        .layer(DefaultBodyLimit::max(64 * 1024))
        .layer(middleware::from_fn(headers_mw))
        .with_state(app)
}

/// Serves `router` over HTTPS on every listen address until `done` turns true
/// (setup finished), then lets the page read the final state for a moment.
pub async fn serve(
    app: Arc<App>,
    tls: axum_server::tls_rustls::RustlsConfig,
    mut done: tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<()> {
    let handle = axum_server::Handle::new();
    let stop = handle.clone();
    let app_sessions = app.sessions.clone();
    tokio::spawn(async move {
        let sessions = app_sessions;
        // The guard wait_for returns must not live across the sleep below.
        let finished = async move {
            let _ = done.wait_for(|d| *d).await.map(|_| ());
        };
        tokio::select! {
            () = finished => {
                // The page polls every second: give it time to show "done".
                tokio::time::sleep(Duration::from_secs(3)).await;
                if let Err(e) = sessions.clear() {
                    tracing::warn!(error = %error_chain(&e), "cannot remove the stored sessions");
                }
            }
            _ = tokio::signal::ctrl_c() => {}
            _ = terminate() => {}
        }
        stop.graceful_shutdown(Some(Duration::from_secs(2)));
    });
    let mut servers = Vec::new();
    for addr in app.settings.listen.clone() {
        let listener = std::net::TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        tracing::info!(%addr, "setup wizard listening (HTTPS)");
        let server = axum_server::from_tcp_rustls(listener, tls.clone())?
            .handle(handle.clone())
            .serve(router(app.clone()).into_make_service_with_connect_info::<SocketAddr>());
        servers.push(tokio::spawn(server));
    }
    for s in servers {
        match s.await {
            Ok(r) => r?,
            Err(e) => return Err(std::io::Error::other(e)),
        }
    }
    Ok(())
}

async fn terminate() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut s) => {
            s.recv().await;
        }
        Err(_) => std::future::pending::<()>().await,
    }
}
