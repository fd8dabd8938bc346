//! The client blockhostd uses to call the root agent: one connection per request,
//! bounded in time, answers decoded into the typed results of [`crate::proto`].

use std::path::{Path, PathBuf};
use std::time::Duration;

use blockhost_crd::config::FirewallConfig;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::net::UnixStream;

use crate::proto::{
    self, Applied, BridgePort, FirewallStatus, FrameError, Isolated, KnockAdd, KnockOpened,
    KnockRemove, MAX_RESPONSE, Request,
};

/// How long a whole call may take (the agent bounds each command to 10 s).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The socket could not be reached.
    #[error(
        "cannot reach the root agent at {path}: is blockhost-root-agent running, and is blockhostd's user allowed and in the socket's group?"
    )]
    Connect {
        /// The socket.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Sending or receiving failed.
    #[error("talking to the root agent failed")]
    Io(#[source] std::io::Error),
    /// The answer was not a frame.
    #[error("the root agent's answer is not a valid frame")]
    Frame(#[source] FrameError),
    /// The answer was not the JSON expected.
    #[error("the root agent's answer is not the JSON expected")]
    Decode(#[source] serde_json::Error),
    /// No answer in time.
    #[error("the root agent did not answer within {CALL_TIMEOUT:?}")]
    Timeout,
    /// The agent refused or failed; its reason.
    #[error("the root agent refused: {0}")]
    Refused(String),
}

/// A handle on the agent's socket.
#[derive(Debug, Clone)]
pub struct RootAgentClient {
    socket: PathBuf,
}

impl RootAgentClient {
    /// A client for the socket at `socket`.
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self {
            socket: socket.into(),
        }
    }

    /// The socket path.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Sends raw bytes as one request body and returns the answer object (for tests
    /// and tools that speak the protocol directly).
    pub async fn call_raw(&self, body: &[u8]) -> Result<Value, ClientError> {
        let work = async {
            let mut s =
                UnixStream::connect(&self.socket)
                    .await
                    .map_err(|source| ClientError::Connect {
                        path: self.socket.clone(),
                        source,
                    })?;
            // An agent that refuses the caller answers before reading, and may have
            // closed already: its answer is still there to read.
            if let Err(e) = proto::write_frame(&mut s, body).await
                && e.kind() != std::io::ErrorKind::BrokenPipe
            {
                return Err(ClientError::Io(e));
            }
            let answer = proto::read_frame(&mut s, MAX_RESPONSE)
                .await
                .map_err(ClientError::Frame)?;
            serde_json::from_slice::<Value>(&answer).map_err(ClientError::Decode)
        };
        let v = tokio::time::timeout(CALL_TIMEOUT, work)
            .await
            .map_err(|_| ClientError::Timeout)??;
        if v.get("ok").and_then(Value::as_bool) == Some(true) {
            Ok(v)
        } else {
            let why = v
                .get("error")
                .and_then(Value::as_str)
                .unwrap_or("no reason given");
            Err(ClientError::Refused(why.to_string()))
        }
    }

    async fn call<T: DeserializeOwned>(&self, req: &Request) -> Result<T, ClientError> {
        let body = serde_json::to_vec(req).map_err(ClientError::Decode)?;
        let v = self.call_raw(&body).await?;
        serde_json::from_value(v).map_err(ClientError::Decode)
    }

    /// Installs the firewall built from `c` (open knocks are kept).
    pub async fn apply_firewall(&self, c: &FirewallConfig) -> Result<Applied, ClientError> {
        self.call(&Request::FirewallApply(c.clone())).await
    }

    /// Compares the firewall in force with `c`; lists open knocks.
    pub async fn verify_firewall(&self, c: &FirewallConfig) -> Result<FirewallStatus, ClientError> {
        self.call(&Request::FirewallVerify(c.clone())).await
    }

    /// Opens a knock.
    pub async fn knock_add(&self, k: &KnockAdd) -> Result<KnockOpened, ClientError> {
        self.call(&Request::KnockAdd(k.clone())).await
    }

    /// Closes a knock.
    pub async fn knock_remove(&self, k: &KnockRemove) -> Result<(), ClientError> {
        self.call::<Value>(&Request::KnockRemove(k.clone()))
            .await
            .map(|_| ())
    }

    /// Sets a VM bridge port's isolation.
    pub async fn isolate_port(&self, p: &BridgePort) -> Result<Isolated, ClientError> {
        self.call(&Request::BridgeIsolate(*p)).await
    }
}
