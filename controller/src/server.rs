//! The daemon side of the API: an axum router over the [`Store`].
//!
//! Store calls are synchronous (redb) and may fsync, so every one runs on the
//! blocking pool; the async workers only shuffle bytes. Lists are assembled from
//! the stored JSON without decoding each object, which keeps a 10,000-object list
//! cheap. Watches subscribe to the change feed *before* listing, so no change falls
//! in the gap between the list and the stream.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Extension, MatchedPath, Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use blockhost_crd::resource::{AnyObject, KINDS};
use blockhost_listen::UnixPeer;
use serde::Deserialize;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::store::{ChangeKind, Store, StoreError, Writer};
use blockhost_api::{
    API_PREFIX, ApplyResponse, DaemonStatus, DeleteResponse, ErrorBody, ErrorInfo, FirewallReport,
    MAX_BODY_BYTES, VersionInfo,
};

/// Shared state of the handlers.
#[derive(Clone, Debug)]
pub struct AppState {
    /// The database.
    pub store: Store,
    /// Metrics registry.
    pub metrics: Arc<Metrics>,
    /// The daemon's own conditions (`GET /status`).
    pub health: Arc<crate::health::Health>,
    /// Cancelled at shutdown; ends open watch streams so shutdown is not held up.
    pub shutdown: CancellationToken,
    /// The host firewall (`GET /firewall`); `None` without a `firewall` section.
    pub firewall: Option<Arc<crate::firewall::HostFirewall>>,
}

/// The whole API.
pub fn router(state: AppState) -> Router {
    let objects = Router::new()
        .route("/apply", post(apply))
        .route("/events", get(events))
        .route("/{plural}", get(list))
        .route("/{plural}/{name}", get(get_one).delete(delete));
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics))
        .route("/version", get(version))
        .route("/status", get(status))
        .route("/firewall", get(firewall))
        .nest(API_PREFIX, objects)
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "NotFound",
                "no such API path; see `bhctl --help`",
            )
        })
        .layer(middleware::from_fn_with_state(
            state.clone(),
            count_requests,
        ))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// Only the metrics route, for the optional TCP listener.
pub fn metrics_router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn count_requests(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".into());
    let method = req.method().to_string();
    let resp = next.run(req).await;
    state
        .metrics
        .http_requests
        .get_or_create(&vec![
            ("method".into(), method),
            ("route".into(), route),
            ("status".into(), resp.status().as_u16().to_string()),
        ])
        .inc();
    resp
}

/// An error answer with a JSON body.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    body: ErrorBody,
}

impl ApiError {
    fn new(status: StatusCode, code: &str, message: impl Into<String>) -> Self {
        Self {
            status,
            body: ErrorBody {
                error: ErrorInfo {
                    code: code.into(),
                    message: message.into(),
                    details: Vec::new(),
                },
            },
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body)).into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match &e {
            StoreError::NotFound { .. } => {
                ApiError::new(StatusCode::NOT_FOUND, "NotFound", e.to_string())
            }
            StoreError::Rejected { .. } => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "Invalid", e.to_string())
            }
            StoreError::NotAllowed { .. } => {
                ApiError::new(StatusCode::FORBIDDEN, "Forbidden", e.to_string())
            }
            _ => {
                tracing::error!(error = %crate::error_chain(&e), "store operation failed");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "Internal",
                    format!("{}; see the daemon's log", crate::error_chain(&e)),
                )
            }
        }
    }
}

/// Runs a store call on the blocking pool, its error as an API answer.
async fn blocking<T: Send + 'static>(
    store: &Store,
    f: impl FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, ApiError> {
    store.blocking(f).await.map_err(ApiError::from)
}

/// The operator behind a request: the API socket peer's uid, when the kernel
/// told it (the TCP metrics listener serves no writes).
fn operator(peer: Option<Extension<UnixPeer>>) -> Writer {
    Writer::Operator {
        uid: peer.map(|Extension(p)| p.uid),
    }
}

fn kind_of(plural: &str) -> Result<&'static str, ApiError> {
    KINDS
        .iter()
        .find(|(_, p, _)| *p == plural)
        .map(|(k, _, _)| *k)
        .ok_or_else(|| {
            let known: Vec<&str> = KINDS.iter().map(|(_, p, _)| *p).collect();
            ApiError::new(
                StatusCode::NOT_FOUND,
                "NotFound",
                format!(
                    "unknown resource type {plural:?}; known: {}, events",
                    known.join(", ")
                ),
            )
        })
}

fn json_response(bytes: Vec<u8>) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], bytes).into_response()
}

async fn metrics(State(state): State<AppState>) -> Result<Response, ApiError> {
    let metrics = state.metrics.clone();
    let text = blocking(&state.store, move |store| Ok(metrics.render(store))).await?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

async fn version(State(state): State<AppState>) -> Result<Json<VersionInfo>, ApiError> {
    let schema_version = blocking(&state.store, |store| store.schema_version()).await?;
    Ok(Json(VersionInfo {
        version: env!("CARGO_PKG_VERSION").into(),
        schema_version,
    }))
}

async fn status(State(state): State<AppState>) -> Json<DaemonStatus> {
    let mut conditions = state.health.conditions();
    conditions.extend(state.firewall.as_ref().and_then(|f| f.condition()));
    Json(DaemonStatus { conditions })
}

/// The firewall in force and the open knocks, as the root agent reads them now.
async fn firewall(State(state): State<AppState>) -> Result<Json<FirewallReport>, ApiError> {
    let Some(fw) = &state.firewall else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "NotConfigured",
            "blockhostd has no firewall section in its configuration, so it manages no host firewall",
        ));
    };
    fw.report().await.map(Json).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_GATEWAY,
            "RootAgent",
            format!(
                "cannot ask the root agent: {}",
                blockhost_root_agent::error_chain(&e)
            ),
        )
    })
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    #[serde(default)]
    watch: Option<String>,
}

async fn list(
    State(state): State<AppState>,
    Path(plural): Path<String>,
    Query(q): Query<ListQuery>,
) -> Result<Response, ApiError> {
    let kind = kind_of(&plural)?;
    if matches!(q.watch.as_deref(), Some("true" | "1" | "")) {
        return Ok(watch(state, kind));
    }
    let body = blocking(&state.store, move |store| {
        let mut out: Vec<u8> = Vec::with_capacity(64 * 1024);
        let head = format!(
            "{{\"apiVersion\":\"{}\",\"kind\":\"{kind}List\",\"items\":[",
            blockhost_crd::API_VERSION
        );
        out.extend_from_slice(head.as_bytes());
        let mut first = true;
        let rv = store.for_each_raw(kind, |_, bytes| {
            if !first {
                out.push(b',');
            }
            first = false;
            out.extend_from_slice(bytes);
            Ok(())
        })?;
        out.extend_from_slice(format!("],\"metadata\":{{\"resourceVersion\":{rv}}}}}").as_bytes());
        Ok(out)
    })
    .await?;
    Ok(json_response(body))
}

async fn get_one(
    State(state): State<AppState>,
    Path((plural, name)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let kind = kind_of(&plural)?;
    let n = name.clone();
    match blocking(&state.store, move |store| store.get_raw(kind, &n)).await? {
        Some(bytes) => Ok(json_response(bytes)),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("{}/{name} not found", kind.to_lowercase()),
        )),
    }
}

/// `DELETE` options: `?force=true` deletes what the chain owns (audited).
#[derive(Debug, Deserialize)]
struct DeleteQuery {
    #[serde(default)]
    force: bool,
}

async fn delete(
    State(state): State<AppState>,
    peer: Option<Extension<UnixPeer>>,
    Path((plural, name)): Path<(String, String)>,
    Query(q): Query<DeleteQuery>,
) -> Result<Json<DeleteResponse>, ApiError> {
    let kind = kind_of(&plural)?;
    let writer = operator(peer);
    let n = name.clone();
    let outcome = blocking(&state.store, move |store| {
        store.delete_as(writer, kind, &n, q.force)
    })
    .await?;
    tracing::info!(kind, name = %name, ?outcome, force = q.force, by = %writer, "delete");
    Ok(Json(DeleteResponse {
        kind: kind.into(),
        name,
        outcome,
    }))
}

/// The apply body as the daemon reads it: each object kept as raw JSON text and
/// typed straight from it, so a large apply never builds a generic JSON tree.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawApplyRequest<'a> {
    #[serde(borrow)]
    objects: Vec<&'a serde_json::value::RawValue>,
    #[serde(default)]
    dry_run: bool,
}

/// Just enough of an object to name it in an error message.
#[derive(Deserialize)]
struct Label<'a> {
    #[serde(default, borrow)]
    kind: Option<&'a str>,
    #[serde(default, borrow)]
    metadata: Option<LabelMeta<'a>>,
}

#[derive(Deserialize)]
struct LabelMeta<'a> {
    #[serde(default, borrow)]
    name: Option<&'a str>,
}

async fn apply(
    State(state): State<AppState>,
    peer: Option<Extension<UnixPeer>>,
    body: Bytes,
) -> Result<Json<ApplyResponse>, ApiError> {
    let req: RawApplyRequest<'_> = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            format!("request body is not an apply request: {e}"),
        )
    })?;
    // Validate everything before touching the store: all or nothing.
    let mut objects = Vec::with_capacity(req.objects.len());
    let mut details = Vec::new();
    for (i, raw) in req.objects.iter().enumerate() {
        match AnyObject::from_json_str(raw.get()) {
            Ok(o) => objects.push(o),
            Err(e) => {
                let l: Option<Label<'_>> = serde_json::from_str(raw.get()).ok();
                let kind = l
                    .as_ref()
                    .and_then(|l| l.kind)
                    .unwrap_or("?")
                    .to_lowercase();
                let name = l
                    .as_ref()
                    .and_then(|l| l.metadata.as_ref())
                    .and_then(|m| m.name)
                    .unwrap_or("?");
                details.push(format!("objects[{i}] ({kind}/{name}): {e}"));
            }
        }
    }
    if !details.is_empty() {
        let mut err = ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid",
            format!("{} invalid object(s); nothing was applied", details.len()),
        );
        err.body.error.details = details;
        return Err(err);
    }
    let dry_run = req.dry_run;
    let writer = operator(peer);
    let results = blocking(&state.store, move |store| {
        store.apply_as(writer, objects, dry_run)
    })
    .await?;
    for r in &results {
        state
            .metrics
            .applied_objects
            .get_or_create(&vec![
                ("kind".into(), r.kind.clone()),
                ("outcome".into(), format!("{:?}", r.outcome).to_lowercase()),
            ])
            .inc();
    }
    let changed = results
        .iter()
        .filter(|r| r.outcome != crate::store::ApplyOutcome::Unchanged)
        .count();
    tracing::info!(objects = results.len(), changed, dry_run, "apply");
    Ok(Json(ApplyResponse { results }))
}

#[derive(Debug, Deserialize)]
struct EventsQuery {
    kind: Option<String>,
    name: Option<String>,
    limit: Option<usize>,
}

async fn events(
    State(state): State<AppState>,
    Query(q): Query<EventsQuery>,
) -> Result<Response, ApiError> {
    let object = match (q.kind, q.name) {
        (Some(kind), Some(name)) => {
            let host = kind
                .eq_ignore_ascii_case(blockhost_crd::resource::HOST_KIND)
                .then_some(blockhost_crd::resource::HOST_KIND);
            let kind = host
                .or_else(|| blockhost_crd::resource::kind_for(&kind))
                .ok_or_else(|| {
                    ApiError::new(
                        StatusCode::NOT_FOUND,
                        "NotFound",
                        format!("unknown kind {kind:?}"),
                    )
                })?;
            Some((kind, name))
        }
        (None, None) => None,
        _ => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                "give both kind and name, or neither",
            ));
        }
    };
    let limit = q.limit.unwrap_or(1000).min(100_000);
    let events = blocking(&state.store, move |store| {
        store.events(object.as_ref().map(|(k, n)| (*k, n.as_str())), limit)
    })
    .await?;
    let body = serde_json::json!({ "apiVersion": blockhost_crd::API_VERSION, "kind": "EventList", "items": events });
    Ok(Json(body).into_response())
}

/// A newline-delimited JSON stream: every current object as `ADDED`, then each
/// committed change (`ADDED`, `MODIFIED`, `DELETED`) until the client goes away or
/// the daemon shuts down. A client that falls too far behind gets an `ERROR` line
/// and must re-list, as with Kubernetes' "410 Gone".
fn watch(state: AppState, kind: &'static str) -> Response {
    let mut changes = state.store.subscribe();
    // Bounded: a client that stops reading is dropped with a resumable ERROR
    // line instead of growing the daemon (see `watch_sink`).
    let (tx, body) = crate::watch_sink::channel();
    let metrics = state.metrics.clone();
    tokio::spawn(async move {
        metrics.watch_streams.inc();
        let initial = state
            .store
            .blocking(move |store| {
                let mut items = Vec::new();
                let rv = store.for_each_raw(kind, |_, b| {
                    items.push(b.to_vec());
                    Ok(())
                })?;
                Ok((rv, items))
            })
            .await;
        let listed_rv = match initial {
            Ok((rv, items)) => {
                let mut ok = true;
                for item in items {
                    if tx.send(watch_line("ADDED", &item), too_slow).await.is_err() {
                        ok = false;
                        break;
                    }
                }
                ok.then_some(rv)
            }
            Err(e) => {
                tracing::error!(error = %crate::error_chain(&e), "watch: cannot list objects");
                tx.finish(error_line("cannot list objects; see the daemon's log"));
                None
            }
        };
        if let Some(rv) = listed_rv {
            loop {
                let change = tokio::select! {
                    () = state.shutdown.cancelled() => break,
                    () = tx.closed() => break,
                    c = changes.recv() => c,
                };
                let line = match change {
                    Ok(c) if c.kind == kind && c.resource_version > rv => {
                        let t = match c.what {
                            ChangeKind::Created => "ADDED",
                            ChangeKind::Spec | ChangeKind::Status => "MODIFIED",
                            ChangeKind::Deleted => "DELETED",
                        };
                        watch_line(t, &c.object)
                    }
                    Ok(_) => continue,
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tx.finish(error_line(&format!(
                            "watch fell {n} changes behind; list again and restart the watch"
                        )));
                        break;
                    }
                    Err(broadcast::error::RecvError::Closed) => break,
                };
                if tx.send(line, too_slow).await.is_err() {
                    break;
                }
            }
        }
        metrics.watch_streams.dec();
    });
    ([(header::CONTENT_TYPE, "application/x-ndjson")], body).into_response()
}

fn too_slow() -> Bytes {
    error_line("this watch was not read for 30 s and was dropped; list again and restart the watch")
}

fn watch_line(type_: &str, object: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(object.len() + 32);
    out.extend_from_slice(b"{\"type\":\"");
    out.extend_from_slice(type_.as_bytes());
    out.extend_from_slice(b"\",\"object\":");
    out.extend_from_slice(object);
    out.extend_from_slice(b"}\n");
    out.into()
}

fn error_line(message: &str) -> Bytes {
    let mut v = serde_json::to_vec(
        &serde_json::json!({ "type": "ERROR", "object": { "message": message } }),
    )
    .unwrap_or_default();
    v.push(b'\n');
    v.into()
}
