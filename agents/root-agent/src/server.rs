//! The socket service: accepts connections, checks each caller's uid with
//! `SO_PEERCRED` before reading a byte, reads one bounded request within the read
//! timeout, runs it and answers. Every connection is its own task, so a slow
//! action (an `nft` run near its timeout) never holds up another request; a
//! semaphore bounds how many run at once.

use std::collections::BTreeSet;
use std::future::Future;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Semaphore;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::actions;
use crate::exec::Tools;
use crate::proto::{self, MAX_REQUEST, READ_TIMEOUT, Request};

/// Most requests served at once; further connections wait to be accepted.
pub const MAX_CONCURRENT: usize = 32;

/// Why the socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    /// Another agent answers on the socket.
    #[error("another root agent is already serving {0}; stop it first")]
    InUse(PathBuf),
    /// Creating, binding or setting permissions failed.
    #[error("cannot set up the socket {path}")]
    Io {
        /// The socket.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// Binds the socket: refuses a live one, replaces a stale one, then mode 0660 and
/// the given group (the directory is made 0755 if missing; systemd's tmpfiles
/// normally creates it).
pub async fn bind(path: &Path, gid: Option<u32>) -> Result<UnixListener, BindError> {
    let io = |source| BindError::Io {
        path: path.into(),
        source,
    };
    if UnixStream::connect(path).await.is_ok() {
        return Err(BindError::InUse(path.into()));
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(e)),
    }
    let l = UnixListener::bind(path).map_err(io)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)).map_err(io)?;
    if gid.is_some() {
        std::os::unix::fs::chown(path, None, gid).map_err(io)?;
    }
    Ok(l)
}

/// The service's shared state.
#[derive(Debug)]
pub struct Agent {
    /// Uids allowed to call.
    pub allowed: BTreeSet<u32>,
    /// The programs it runs.
    pub tools: Tools,
}

/// Serves until `shutdown` completes, then waits for requests in flight.
pub async fn serve(listener: UnixListener, agent: Arc<Agent>, shutdown: impl Future<Output = ()>) {
    let slots = Arc::new(Semaphore::new(MAX_CONCURRENT));
    let mut tasks = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            () = &mut shutdown => break,
            p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
        };
        let (stream, _) = tokio::select! {
            () = &mut shutdown => break,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    warn!(error = %e, "accepting a connection failed");
                    continue;
                }
            },
        };
        let agent = agent.clone();
        tasks.spawn(async move {
            handle(stream, &agent).await;
            drop(permit);
        });
        // Reap finished tasks so the set does not grow without bound.
        while tasks.try_join_next().is_some() {}
    }
    info!(
        in_flight = tasks.len(),
        "stopping: finishing requests in flight"
    );
    while tasks.join_next().await.is_some() {}
}

/// Serves one connection.
pub async fn handle(mut stream: UnixStream, agent: &Agent) {
    let cred = match stream.peer_cred() {
        Ok(c) => c,
        Err(e) => {
            warn!(error = %e, "cannot read the caller's credentials; connection dropped");
            return;
        }
    };
    let (uid, pid) = (cred.uid(), cred.pid());
    if !agent.allowed.contains(&uid) {
        warn!(
            uid,
            pid, "refused a caller whose uid is not allowed (allowedUsers/allowedUids)"
        );
        let body = proto::error_body(&format!("uid {uid} may not use the root agent"));
        let _ = tokio::time::timeout(READ_TIMEOUT, proto::write_frame(&mut stream, &body)).await;
        return;
    }
    let span = info_span!("request", uid, pid, action = tracing::field::Empty);
    async {
        let body =
            match tokio::time::timeout(READ_TIMEOUT, proto::read_frame(&mut stream, MAX_REQUEST))
                .await
            {
                Err(_) => {
                    warn!("no whole request within {READ_TIMEOUT:?}; connection dropped");
                    return;
                }
                Ok(Err(e)) => {
                    warn!(error = %e, "unreadable request");
                    let body = proto::error_body(&e.to_string());
                    let _ =
                        tokio::time::timeout(READ_TIMEOUT, proto::write_frame(&mut stream, &body))
                            .await;
                    return;
                }
                Ok(Ok(b)) => b,
            };
        let answer = match Request::parse(&body) {
            Err(e) => {
                warn!(error = %e, "invalid request refused");
                proto::error_body(&format!("invalid request: {e}"))
            }
            Ok(req) => {
                tracing::Span::current().record("action", req.action());
                debug!("running");
                match actions::run(&agent.tools, req).await {
                    Ok(b) => b,
                    Err(e) => {
                        let text = crate::error_chain(&e);
                        warn!(error = %text, "action failed");
                        proto::error_body(&text)
                    }
                }
            }
        };
        if let Err(e) = tokio::time::timeout(READ_TIMEOUT, proto::write_frame(&mut stream, &answer))
            .await
            .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
        {
            debug!(error = %e, "the caller left before the answer");
        }
    }
    .instrument(span)
    .await;
}
