//! New-head notifications over WebSocket (`eth_subscribe("newHeads")`): they
//! wake the watcher the moment a block arrives, instead of at its next poll.
//!
//! Only a wake-up signal travels from here: the notification's content is
//! ignored and the watcher reads the head over HTTP as always, so a lying or
//! broken WebSocket endpoint can at worst cause extra polls (and those are
//! spaced by [`MIN_WAKE_INTERVAL`]). Polling stays the fallback: when the socket
//! is down, the watcher still steps every `pollIntervalMs`.
//!
//! Connections use rustls with the system roots and the ring provider (the
//! workspace's one TLS stack); `ws://` is fine for a node on the same host.
//! Several URLs fail over in order; reconnects back off from 1 s to 30 s.

use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::sync::CancellationToken;

use crate::rpc::redact;

/// Largest WebSocket message accepted (a head notification is ~1 KiB).
const MAX_MESSAGE: usize = 256 * 1024;

/// Wake-ups closer together than this are merged.
pub const MIN_WAKE_INTERVAL: Duration = Duration::from_millis(10);

/// Why a subscription ended.
#[derive(Debug, thiserror::Error)]
enum HeadsError {
    #[error("cannot connect")]
    Connect(#[source] tokio_tungstenite::tungstenite::Error),
    #[error("connection failed")]
    Socket(#[source] tokio_tungstenite::tungstenite::Error),
    #[error("the node refused eth_subscribe: {0}")]
    Refused(String),
    #[error("the node closed the connection")]
    Closed,
    #[error("no answer to eth_subscribe within 10 s")]
    NoAnswer,
    #[error("cannot set up TLS")]
    Tls(#[source] rustls::Error),
}

fn tls() -> Result<Arc<rustls::ClientConfig>, HeadsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    let found = rustls_native_certs::load_native_certs();
    for cert in found.certs {
        let _ = roots.add(cert);
    }
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(HeadsError::Tls)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(cfg))
}

/// What the caller counts (the daemon's metrics): kept as a trait so this crate
/// needs no metrics registry.
pub trait HeadEvents: Send + Sync + 'static {
    /// A new head arrived.
    fn head(&self);
    /// A subscription failed (connect, refusal, drop).
    fn failure(&self);
}

/// Follows new heads on `urls` until `shutdown`, waking `wake` for each.
pub async fn run(
    urls: Vec<String>,
    wake: Arc<Notify>,
    metrics: Arc<dyn HeadEvents>,
    shutdown: CancellationToken,
) {
    if urls.is_empty() {
        return;
    }
    // Built once: loading the system roots reads files.
    let tls = match tls() {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!(error = %blockhost_crd::error_chain(&e), "cannot set up TLS for new-head subscriptions; polling only");
            return;
        }
    };
    let mut failures: u32 = 0;
    let mut i = 0usize;
    let mut established = false;
    loop {
        let url = &urls[i % urls.len()];
        let result = tokio::select! {
            () = shutdown.cancelled() => return,
            r = subscribe(url, &tls, &wake, metrics.as_ref(), &mut established) => r,
        };
        if let Err(e) = result {
            // A subscription that worked before it dropped starts the backoff over.
            failures = if std::mem::take(&mut established) {
                1
            } else {
                failures.saturating_add(1)
            };
            let delay = Duration::from_secs(1 << failures.min(5).saturating_sub(1))
                .min(Duration::from_secs(30));
            metrics.failure();
            tracing::warn!(endpoint = %redact(url), error = %blockhost_crd::error_chain(&e), retry_in_s = delay.as_secs(), "new-head subscription failed; polling meanwhile");
            i += 1;
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(delay) => {}
            }
        }
    }
}

/// One connection: subscribe, then wake on every notification. Returns when
/// the connection ends.
async fn subscribe(
    url: &str,
    tls: &Arc<rustls::ClientConfig>,
    wake: &Notify,
    metrics: &dyn HeadEvents,
    established: &mut bool,
) -> Result<(), HeadsError> {
    let mut config = WebSocketConfig::default();
    config.max_message_size = Some(MAX_MESSAGE);
    config.max_frame_size = Some(MAX_MESSAGE);
    let connector = tokio_tungstenite::Connector::Rustls(tls.clone());
    let (mut ws, _) = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::connect_async_tls_with_config(url, Some(config), false, Some(connector)),
    )
    .await
    .map_err(|_| HeadsError::NoAnswer)?
    .map_err(HeadsError::Connect)?;
    let req = json!({"jsonrpc": "2.0", "id": 1, "method": "eth_subscribe", "params": ["newHeads"]});
    ws.send(Message::text(req.to_string()))
        .await
        .map_err(HeadsError::Socket)?;
    // The answer to the subscription request.
    let answered = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(msg) = ws.next().await {
            let msg = msg.map_err(HeadsError::Socket)?;
            let Message::Text(text) = msg else { continue };
            let v: Value = serde_json::from_str(text.as_str()).unwrap_or(Value::Null);
            if v["id"] == json!(1) {
                if let Some(err) = v.get("error").filter(|e| !e.is_null()) {
                    let m: String = err["message"]
                        .as_str()
                        .unwrap_or("(no message)")
                        .chars()
                        .take(200)
                        .collect();
                    return Err(HeadsError::Refused(m));
                }
                return Ok(());
            }
        }
        Err(HeadsError::Closed)
    })
    .await
    .map_err(|_| HeadsError::NoAnswer)?;
    answered?;
    *established = true;
    tracing::info!(endpoint = %redact(url), "following new heads");
    let mut last = tokio::time::Instant::now() - MIN_WAKE_INTERVAL;
    while let Some(msg) = ws.next().await {
        match msg.map_err(HeadsError::Socket)? {
            // Only notifications wake the watcher; the content is not used.
            Message::Text(text) if text.as_str().contains("eth_subscription") => {
                metrics.head();
                let now = tokio::time::Instant::now();
                if now.duration_since(last) < MIN_WAKE_INTERVAL {
                    // Merge: wake once the interval has passed.
                    tokio::time::sleep_until(last + MIN_WAKE_INTERVAL).await;
                }
                wake.notify_one();
                last = tokio::time::Instant::now();
            }
            Message::Ping(p) => ws
                .send(Message::Pong(p))
                .await
                .map_err(HeadsError::Socket)?,
            Message::Close(_) => return Err(HeadsError::Closed),
            _ => {}
        }
    }
    Err(HeadsError::Closed)
}
