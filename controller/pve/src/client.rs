//! The HTTP implementation of [`Pve`]: reqwest over rustls, API-token or ticket auth.
//!
//! Every request goes through `PveClient::call`, which adds authentication, a per-request
//! timeout, decodes PVE's `{"data": ...}` envelope and turns failures into classified
//! [`Error`]s. Form bodies are never logged; only method, path and status are.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use reqwest::header::{AUTHORIZATION, COOKIE, HeaderMap, HeaderValue};
use reqwest::{Method, Url};
use serde::Deserialize;
use serde::de::{DeserializeOwned, IgnoredAny};

use crate::api::Pve;
use crate::auth::{Clock, Credentials, Secret, SystemClock, Ticket};
use crate::de;
use crate::error::{Error, Result};
use crate::firewall::{ClusterFirewallOptions, FirewallOptions, IpSetEntry};
use crate::propstring::DiskSize;
use crate::tls::{self, TlsMode};
use crate::types::{
    CloneRequest, ClusterVm, ConfigUpdate, DeleteOptions, NodeSummary, ShutdownOptions,
    TaskLogLine, TaskStatus, Version, VmConfig, VmId, VmStatus,
};
use crate::upid::Upid;

/// Tickets last 2 hours; renewing at 90 minutes leaves room for clock skew and long requests.
pub const DEFAULT_TICKET_RENEW_AFTER: Duration = Duration::from_secs(90 * 60);

/// Everything needed to build a [`PveClient`].
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// `https://host:8006` (a trailing `/api2/json` is accepted and ignored).
    pub base_url: String,
    /// API token or password.
    pub credentials: Credentials,
    /// Certificate verification.
    pub tls: TlsMode,
    /// Limit for one whole request, connect to last byte. Task waits are separate.
    pub request_timeout: Duration,
    /// Limit for establishing a connection.
    pub connect_timeout: Duration,
    /// Ticket auth: log in again once the ticket is this old.
    pub ticket_renew_after: Duration,
    /// Clock for ticket age (inject [`crate::ManualClock`] in tests).
    pub clock: Arc<dyn Clock>,
}

impl ClientConfig {
    /// A config with default timeouts (30 s per request, 10 s to connect).
    pub fn new(base_url: impl Into<String>, credentials: Credentials, tls: TlsMode) -> Self {
        ClientConfig {
            base_url: base_url.into(),
            credentials,
            tls,
            request_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            ticket_renew_after: DEFAULT_TICKET_RENEW_AFTER,
            clock: Arc::new(SystemClock),
        }
    }
    /// Set the per-request timeout.
    pub fn request_timeout(mut self, t: Duration) -> Self {
        self.request_timeout = t;
        self
    }
    /// Set the ticket renewal age.
    pub fn ticket_renew_after(mut self, t: Duration) -> Self {
        self.ticket_renew_after = t;
        self
    }
    /// Set the clock.
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }
}

#[derive(Debug)]
enum Auth {
    /// The whole `Authorization` header value.
    Token(Secret),
    Ticket {
        username: String,
        password: Secret,
        // A tokio mutex: held across the login request so concurrent callers log in once.
        current: tokio::sync::Mutex<Option<Ticket>>,
    },
}

/// An async Proxmox VE API client. Cheap to share behind an `Arc`; one connection pool.
#[derive(Debug)]
pub struct PveClient {
    http: reqwest::Client,
    base: Url,
    auth: Auth,
    request_timeout: Duration,
    renew_after: Duration,
    clock: Arc<dyn Clock>,
    requests: AtomicU64,
}

#[derive(Deserialize)]
struct Envelope<T> {
    data: T,
}

#[derive(Deserialize)]
struct LoginData {
    ticket: String,
    #[serde(rename = "CSRFPreventionToken", default)]
    csrf: Option<String>,
    #[serde(rename = "NeedTFA", default, deserialize_with = "de::bool")]
    need_tfa: bool,
}

/// A request body or query: ordered pairs (repeated keys encode arrays).
type Params = Vec<(String, String)>;

fn header(value: &str, sensitive: bool) -> Result<HeaderValue> {
    let mut v = HeaderValue::from_str(value).map_err(|_| {
        Error::Config("credential contains characters not allowed in a header".into())
    })?;
    // Keeps hyper/reqwest from printing it in their own debug output.
    v.set_sensitive(sensitive);
    Ok(v)
}

impl PveClient {
    /// Build a client. Fails on a bad URL, or when the TLS mode cannot be set up.
    pub fn new(config: ClientConfig) -> Result<Self> {
        let mut base = config.base_url.trim_end_matches('/').to_owned();
        if let Some(stripped) = base.strip_suffix("/api2/json") {
            base = stripped.to_owned();
        }
        let base = Url::parse(&format!("{base}/api2/json/"))
            .map_err(|e| Error::Config(format!("base URL {:?}: {e}", config.base_url)))?;
        if base.scheme() != "https" {
            return Err(Error::Config(format!(
                "base URL {:?} must be https: the API carries credentials",
                config.base_url
            )));
        }
        let tls = tls::client_config(&config.tls)?;
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .connect_timeout(config.connect_timeout)
            .build()
            .map_err(Error::Build)?;
        let auth = match config.credentials {
            Credentials::ApiToken { token_id, secret } => Auth::Token(Secret::new(format!(
                "PVEAPIToken={token_id}={}",
                secret.expose()
            ))),
            Credentials::Password { username, password } => Auth::Ticket {
                username,
                password,
                current: tokio::sync::Mutex::new(None),
            },
        };
        Ok(PveClient {
            http,
            base,
            auth,
            request_timeout: config.request_timeout,
            renew_after: config.ticket_renew_after,
            clock: config.clock,
            requests: AtomicU64::new(0),
        })
    }

    /// HTTP requests sent so far (logins included), for metrics and benchmarks.
    pub fn requests_sent(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    fn url(&self, segments: &[&str]) -> Result<Url> {
        let mut url = self.base.clone();
        {
            let mut path = url
                .path_segments_mut()
                .map_err(|_| Error::Config("base URL cannot have a path".into()))?;
            path.pop_if_empty();
            // push() percent-encodes, so a UPID or odd node name cannot change the path.
            for s in segments {
                path.push(s);
            }
        }
        Ok(url)
    }

    /// A valid ticket, logging in first if there is none, it is due for renewal, or it is
    /// `refused` (the ticket PVE just answered 401 to). Comparing with the refused ticket means
    /// that many requests failing together cause one login, not one each.
    async fn ticket(&self, refused: Option<&Ticket>) -> Result<Option<Ticket>> {
        let Auth::Ticket {
            username,
            password,
            current,
        } = &self.auth
        else {
            return Ok(None);
        };
        let mut guard = current.lock().await;
        let now = self.clock.now();
        if let Some(t) = guard.as_ref() {
            let is_refused = refused.is_some_and(|r| r.ticket == t.ticket);
            if !is_refused && now.saturating_duration_since(t.obtained) < self.renew_after {
                return Ok(Some(t.clone()));
            }
            tracing::debug!(user = %username, "renewing PVE ticket");
        }
        let form: Params = vec![
            ("username".into(), username.clone()),
            ("password".into(), password.expose().to_owned()),
        ];
        let login: LoginData = self
            .send(Method::POST, &["access", "ticket"], &[], Some(&form), None)
            .await?;
        if login.need_tfa {
            return Err(Error::Config(format!(
                "user {username} needs two-factor authentication; use an API token"
            )));
        }
        let t = Ticket {
            ticket: Secret::new(login.ticket),
            csrf: Secret::new(login.csrf.unwrap_or_default()),
            obtained: now,
        };
        *guard = Some(t.clone());
        Ok(Some(t))
    }

    /// One API call with auth; with ticket auth a 401 triggers one fresh login and a retry
    /// (the ticket may have been revoked, or PVE restarted with a new key).
    pub(crate) async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        segments: &[&str],
        query: &[(String, String)],
        form: Option<&Params>,
    ) -> Result<T> {
        let ticket = self.ticket(None).await?;
        let first = self
            .send(method.clone(), segments, query, form, ticket.as_ref())
            .await;
        match first {
            Err(Error::Api { status: 401, .. }) if ticket.is_some() => {
                let ticket = self.ticket(ticket.as_ref()).await?;
                self.send(method, segments, query, form, ticket.as_ref())
                    .await
            }
            other => other,
        }
    }

    async fn send<T: DeserializeOwned>(
        &self,
        method: Method,
        segments: &[&str],
        query: &[(String, String)],
        form: Option<&Params>,
        ticket: Option<&Ticket>,
    ) -> Result<T> {
        let url = self.url(segments)?;
        let path = format!("/{}", segments.join("/"));
        let mut headers = HeaderMap::new();
        match (&self.auth, ticket) {
            (Auth::Token(value), _) => {
                headers.insert(AUTHORIZATION, header(value.expose(), true)?);
            }
            (Auth::Ticket { .. }, Some(t)) => {
                headers.insert(
                    COOKIE,
                    header(&format!("PVEAuthCookie={}", t.ticket.expose()), true)?,
                );
                if method != Method::GET && method != Method::HEAD {
                    headers.insert("CSRFPreventionToken", header(t.csrf.expose(), true)?);
                }
            }
            // The login request itself.
            (Auth::Ticket { .. }, None) => {}
        }
        let mut req = self
            .http
            .request(method.clone(), url)
            .headers(headers)
            .timeout(self.request_timeout);
        if !query.is_empty() {
            req = req.query(query);
        }
        if let Some(form) = form {
            req = req.form(form);
        }
        self.requests.fetch_add(1, Ordering::Relaxed);
        let transport = |source: reqwest::Error| {
            if tls::is_certificate_error(&source) {
                Error::Tls {
                    method: method_name(&method),
                    path: path.clone(),
                    source,
                }
            } else {
                Error::Transport {
                    method: method_name(&method),
                    path: path.clone(),
                    source: Box::new(source),
                }
            }
        };
        let resp = req.send().await.map_err(transport)?;
        let status = resp.status();
        let reason = resp
            .extensions()
            .get::<hyper::ext::ReasonPhrase>()
            .map(|r| String::from_utf8_lossy(r.as_bytes()).into_owned());
        let body = resp.bytes().await.map_err(transport)?;
        tracing::debug!(%method, %path, status = status.as_u16(), "pve request");
        if status.is_success() {
            let env: Envelope<T> =
                serde_json::from_slice(&body).map_err(|source| Error::Decode {
                    method: method_name(&method),
                    path: path.clone(),
                    source,
                })?;
            return Ok(env.data);
        }
        Err(api_error(&method, &path, status, reason, &body))
    }
}

impl PveClient {
    /// A multipart `POST` (uploads, `crate::template`): like `call`, but the body is
    /// streamed once, so a 401 cannot be retried with a fresh ticket; ticket auth
    /// logs in before sending. `timeout` covers the whole transfer.
    pub(crate) async fn call_multipart<T: DeserializeOwned>(
        &self,
        segments: &[&str],
        form: reqwest::multipart::Form,
        timeout: Duration,
    ) -> Result<T> {
        let ticket = self.ticket(None).await?;
        let url = self.url(segments)?;
        let path = format!("/{}", segments.join("/"));
        let mut headers = HeaderMap::new();
        match (&self.auth, ticket.as_ref()) {
            (Auth::Token(value), _) => {
                headers.insert(AUTHORIZATION, header(value.expose(), true)?);
            }
            (Auth::Ticket { .. }, Some(t)) => {
                headers.insert(
                    COOKIE,
                    header(&format!("PVEAuthCookie={}", t.ticket.expose()), true)?,
                );
                headers.insert("CSRFPreventionToken", header(t.csrf.expose(), true)?);
            }
            (Auth::Ticket { .. }, None) => {}
        }
        self.requests.fetch_add(1, Ordering::Relaxed);
        let transport = |source: reqwest::Error| Error::Transport {
            method: "POST",
            path: path.clone(),
            source: Box::new(source),
        };
        let resp = self
            .http
            .post(url)
            .headers(headers)
            .timeout(timeout)
            .multipart(form)
            .send()
            .await
            .map_err(transport)?;
        let status = resp.status();
        let reason = resp
            .extensions()
            .get::<hyper::ext::ReasonPhrase>()
            .map(|r| String::from_utf8_lossy(r.as_bytes()).into_owned());
        let body = resp.bytes().await.map_err(transport)?;
        tracing::debug!(method = "POST", %path, status = status.as_u16(), "pve upload");
        if status.is_success() {
            let env: Envelope<T> =
                serde_json::from_slice(&body).map_err(|source| Error::Decode {
                    method: "POST",
                    path: path.clone(),
                    source,
                })?;
            return Ok(env.data);
        }
        Err(api_error(&Method::POST, &path, status, reason, &body))
    }
}

/// Build [`Error::Api`] from an error answer. PVE puts the message in the reason phrase and,
/// in newer versions, also in the body's `message`; per-field errors are in `errors`.
fn api_error(
    method: &Method,
    path: &str,
    status: reqwest::StatusCode,
    reason: Option<String>,
    body: &[u8],
) -> Error {
    let json: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    let message = json
        .as_ref()
        .and_then(|j| j.get("message"))
        .and_then(|m| m.as_str())
        .map(str::to_owned)
        .or(reason)
        .or_else(|| status.canonical_reason().map(str::to_owned))
        .unwrap_or_default()
        .trim()
        .to_owned();
    let field_errors = json
        .as_ref()
        .and_then(|j| j.get("errors"))
        .and_then(|e| e.as_object())
        .map(|o| {
            o.iter()
                .map(|(k, v)| {
                    let text = v
                        .as_str()
                        .map(str::to_owned)
                        .unwrap_or_else(|| v.to_string());
                    (k.clone(), text.trim().to_owned())
                })
                .collect()
        })
        .unwrap_or_default();
    Error::Api {
        method: method_name(method),
        path: path.to_owned(),
        status: status.as_u16(),
        message,
        field_errors,
    }
}

/// The method's name for error messages; we only send the standard ones.
fn method_name(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        _ => "OTHER",
    }
}

fn p(k: &str, v: impl ToString) -> (String, String) {
    (k.to_owned(), v.to_string())
}

impl Pve for PveClient {
    async fn version(&self) -> Result<Version> {
        self.call(Method::GET, &["version"], &[], None).await
    }

    async fn nodes(&self) -> Result<Vec<NodeSummary>> {
        self.call(Method::GET, &["nodes"], &[], None).await
    }

    async fn cluster_vms(&self) -> Result<Vec<ClusterVm>> {
        self.call(
            Method::GET,
            &["cluster", "resources"],
            &[p("type", "vm")],
            None,
        )
        .await
    }

    async fn clone_vm(&self, node: &str, source: VmId, req: &CloneRequest) -> Result<Upid> {
        let vmid = source.to_string();
        self.call(
            Method::POST,
            &["nodes", node, "qemu", &vmid, "clone"],
            &[],
            Some(&req.to_form()),
        )
        .await
    }

    async fn vm_config(&self, node: &str, vmid: VmId) -> Result<VmConfig> {
        let vmid = vmid.to_string();
        self.call(
            Method::GET,
            &["nodes", node, "qemu", &vmid, "config"],
            &[],
            None,
        )
        .await
    }

    async fn set_vm_config(&self, node: &str, vmid: VmId, update: &ConfigUpdate) -> Result<()> {
        let vmid = vmid.to_string();
        let _: IgnoredAny = self
            .call(
                Method::PUT,
                &["nodes", node, "qemu", &vmid, "config"],
                &[],
                Some(&update.to_form()),
            )
            .await?;
        Ok(())
    }

    async fn resize_disk(
        &self,
        node: &str,
        vmid: VmId,
        disk: &str,
        size: DiskSize,
    ) -> Result<Option<Upid>> {
        let vmid = vmid.to_string();
        let form = vec![p("disk", disk), p("size", size)];
        let data: Option<String> = self
            .call(
                Method::PUT,
                &["nodes", node, "qemu", &vmid, "resize"],
                &[],
                Some(&form),
            )
            .await?;
        data.map(|s| s.parse()).transpose()
    }

    async fn vm_status(&self, node: &str, vmid: VmId) -> Result<VmStatus> {
        let vmid = vmid.to_string();
        self.call(
            Method::GET,
            &["nodes", node, "qemu", &vmid, "status", "current"],
            &[],
            None,
        )
        .await
    }

    async fn start_vm(&self, node: &str, vmid: VmId) -> Result<Upid> {
        self.power(node, vmid, "start", Vec::new()).await
    }

    async fn shutdown_vm(&self, node: &str, vmid: VmId, opts: ShutdownOptions) -> Result<Upid> {
        self.power(node, vmid, "shutdown", opts.to_form()).await
    }

    async fn stop_vm(&self, node: &str, vmid: VmId) -> Result<Upid> {
        self.power(node, vmid, "stop", Vec::new()).await
    }

    async fn delete_vm(&self, node: &str, vmid: VmId, opts: DeleteOptions) -> Result<Upid> {
        let vmid = vmid.to_string();
        self.call(
            Method::DELETE,
            &["nodes", node, "qemu", &vmid],
            &opts.to_query(),
            None,
        )
        .await
    }

    async fn agent_ping(&self, node: &str, vmid: VmId) -> Result<()> {
        let vmid = vmid.to_string();
        let _: IgnoredAny = self
            .call(
                Method::POST,
                &["nodes", node, "qemu", &vmid, "agent", "ping"],
                &[],
                Some(&Vec::new()),
            )
            .await?;
        Ok(())
    }

    async fn agent_file_write(
        &self,
        node: &str,
        vmid: VmId,
        path: &str,
        content: &str,
    ) -> Result<()> {
        let vmid = vmid.to_string();
        let form = vec![p("file", path), p("content", content)];
        let _: IgnoredAny = self
            .call(
                Method::POST,
                &["nodes", node, "qemu", &vmid, "agent", "file-write"],
                &[],
                Some(&form),
            )
            .await?;
        Ok(())
    }

    async fn cluster_firewall_options(&self) -> Result<ClusterFirewallOptions> {
        self.call(Method::GET, &["cluster", "firewall", "options"], &[], None)
            .await
    }

    async fn vm_firewall_options(&self, node: &str, vmid: VmId) -> Result<FirewallOptions> {
        let vmid = vmid.to_string();
        self.call(
            Method::GET,
            &["nodes", node, "qemu", &vmid, "firewall", "options"],
            &[],
            None,
        )
        .await
    }

    async fn set_vm_firewall_options(
        &self,
        node: &str,
        vmid: VmId,
        options: &FirewallOptions,
    ) -> Result<()> {
        let vmid = vmid.to_string();
        let _: IgnoredAny = self
            .call(
                Method::PUT,
                &["nodes", node, "qemu", &vmid, "firewall", "options"],
                &[],
                Some(&options.to_form()),
            )
            .await?;
        Ok(())
    }

    async fn vm_ipset(&self, node: &str, vmid: VmId, name: &str) -> Result<Vec<IpSetEntry>> {
        let vmid = vmid.to_string();
        self.call(
            Method::GET,
            &["nodes", node, "qemu", &vmid, "firewall", "ipset", name],
            &[],
            None,
        )
        .await
    }

    async fn create_vm_ipset(
        &self,
        node: &str,
        vmid: VmId,
        name: &str,
        comment: Option<&str>,
    ) -> Result<()> {
        let vmid = vmid.to_string();
        let mut form = vec![p("name", name)];
        if let Some(c) = comment {
            form.push(p("comment", c));
        }
        let _: IgnoredAny = self
            .call(
                Method::POST,
                &["nodes", node, "qemu", &vmid, "firewall", "ipset"],
                &[],
                Some(&form),
            )
            .await?;
        Ok(())
    }

    async fn add_vm_ipset_entry(
        &self,
        node: &str,
        vmid: VmId,
        name: &str,
        cidr: &str,
        comment: Option<&str>,
    ) -> Result<()> {
        let vmid = vmid.to_string();
        let mut form = vec![p("cidr", cidr)];
        if let Some(c) = comment {
            form.push(p("comment", c));
        }
        let _: IgnoredAny = self
            .call(
                Method::POST,
                &["nodes", node, "qemu", &vmid, "firewall", "ipset", name],
                &[],
                Some(&form),
            )
            .await?;
        Ok(())
    }

    async fn delete_vm_ipset_entry(
        &self,
        node: &str,
        vmid: VmId,
        name: &str,
        cidr: &str,
    ) -> Result<()> {
        let vmid = vmid.to_string();
        // The path segment is percent-encoded, so a network's `/` stays inside it.
        let _: IgnoredAny = self
            .call(
                Method::DELETE,
                &[
                    "nodes", node, "qemu", &vmid, "firewall", "ipset", name, cidr,
                ],
                &[],
                None,
            )
            .await?;
        Ok(())
    }

    async fn task_status(&self, upid: &Upid) -> Result<TaskStatus> {
        self.call(
            Method::GET,
            &["nodes", upid.node(), "tasks", upid.as_str(), "status"],
            &[],
            None,
        )
        .await
    }

    async fn task_log(&self, upid: &Upid, start: u64, limit: u64) -> Result<Vec<TaskLogLine>> {
        self.call(
            Method::GET,
            &["nodes", upid.node(), "tasks", upid.as_str(), "log"],
            &[p("start", start), p("limit", limit)],
            None,
        )
        .await
    }
}

impl PveClient {
    async fn power(&self, node: &str, vmid: VmId, action: &str, form: Params) -> Result<Upid> {
        let vmid = vmid.to_string();
        self.call(
            Method::POST,
            &["nodes", node, "qemu", &vmid, "status", action],
            &[],
            Some(&form),
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn debug_never_shows_secrets() {
        let c = PveClient::new(ClientConfig::new(
            "https://127.0.0.1:8006",
            Credentials::api_token("root@pam!t", "tok-secret-123"),
            TlsMode::Insecure,
        ))
        .unwrap();
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("tok-secret-123"), "{dbg}");
        let c = PveClient::new(ClientConfig::new(
            "https://127.0.0.1:8006/api2/json",
            Credentials::password("root@pam", "pw-secret-456"),
            TlsMode::Insecure,
        ))
        .unwrap();
        assert!(!format!("{c:?}").contains("pw-secret-456"));
        assert_eq!(
            c.url(&[
                "nodes",
                "pve1",
                "tasks",
                "UPID:a:b:c:d:e:f:u@p!x:",
                "status"
            ])
            .unwrap()
            .path(),
            "/api2/json/nodes/pve1/tasks/UPID:a:b:c:d:e:f:u@p!x:/status"
        );
    }

    #[test]
    fn rejects_plain_http() {
        let e = PveClient::new(ClientConfig::new(
            "http://127.0.0.1:8006",
            Credentials::api_token("a@pam!t", "s"),
            TlsMode::Insecure,
        ))
        .unwrap_err();
        assert!(matches!(e, Error::Config(_)));
    }

    #[test]
    fn api_error_reads_body_or_reason() {
        let e = api_error(
            &Method::PUT,
            "/x",
            reqwest::StatusCode::BAD_REQUEST,
            Some("Parameter verification failed.".into()),
            br#"{"data":null,"errors":{"cores":"type check ('integer') failed - got 'abc'\n"}}"#,
        );
        assert_eq!(e.kind(), crate::ErrorKind::Validation);
        assert_eq!(
            e.field_errors().unwrap()["cores"],
            "type check ('integer') failed - got 'abc'"
        );
        let e = api_error(
            &Method::POST,
            "/x",
            reqwest::StatusCode::INTERNAL_SERVER_ERROR,
            Some("VM is locked (backup)".into()),
            b"",
        );
        assert!(e.is_transient());
        assert!(e.to_string().contains("VM is locked (backup)"));
    }
}
