//! The client side of the API, used by `bhctl`: HTTP/1.1 over the daemon's Unix
//! socket. Connection failures are translated into what the user should do (start
//! the daemon, fix permissions, point `--socket` elsewhere).

use std::path::{Path, PathBuf};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;

use super::ErrorBody;

/// Errors talking to the daemon.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing listens on the socket.
    #[error(
        "cannot reach blockhostd at {}: the daemon is not running\n  hint: start it with `blockhostd` (or `systemctl start blockhostd`), or point --socket / BLOCKHOST_SOCKET at its socket",
        socket.display()
    )]
    NotRunning {
        /// The socket tried.
        socket: PathBuf,
    },
    /// The socket exists but we may not use it.
    #[error(
        "permission denied on {}\n  hint: the socket is mode 0660; run as its owner or join its group (api.socketGroup in blockhost.yaml)",
        socket.display()
    )]
    PermissionDenied {
        /// The socket tried.
        socket: PathBuf,
    },
    /// Another connection failure.
    #[error("cannot connect to {}", socket.display())]
    Connect {
        /// The socket tried.
        socket: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The HTTP exchange failed (the daemon died mid-request, say).
    #[error("the connection to blockhostd failed")]
    Http(#[source] hyper::Error),
    /// The daemon answered with an error.
    #[error("{message}")]
    Api {
        /// HTTP status.
        status: StatusCode,
        /// The daemon's code (`NotFound`, `Invalid`, …).
        code: String,
        /// The daemon's message.
        message: String,
        /// One line per problem.
        details: Vec<String>,
    },
    /// The daemon's answer was not what this bhctl expects (version mismatch?).
    #[error("unexpected answer from blockhostd (is it the same version as bhctl?)")]
    Decode(#[source] serde_json::Error),
}

/// A connection factory for the daemon's socket.
#[derive(Debug, Clone)]
pub struct Client {
    socket: PathBuf,
}

impl Client {
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

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Response<Incoming>, ClientError> {
        let stream =
            UnixStream::connect(&self.socket)
                .await
                .map_err(|source| match source.kind() {
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
                        ClientError::NotRunning {
                            socket: self.socket.clone(),
                        }
                    }
                    std::io::ErrorKind::PermissionDenied => ClientError::PermissionDenied {
                        socket: self.socket.clone(),
                    },
                    _ => ClientError::Connect {
                        socket: self.socket.clone(),
                        source,
                    },
                })?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(ClientError::Http)?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection to blockhostd ended");
            }
        });
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, "blockhostd");
        if body.is_some() {
            req = req.header(hyper::header::CONTENT_TYPE, "application/json");
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| ClientError::Api {
                status: StatusCode::BAD_REQUEST,
                code: "BadRequest".into(),
                message: format!("cannot build request: {e}"),
                details: vec![],
            })?;
        let resp = sender.send_request(req).await.map_err(ClientError::Http)?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(ClientError::Http)?
            .to_bytes();
        Err(match serde_json::from_slice::<ErrorBody>(&bytes) {
            Ok(b) => ClientError::Api {
                status,
                code: b.error.code,
                message: b.error.message,
                details: b.error.details,
            },
            Err(_) => ClientError::Api {
                status,
                code: status
                    .canonical_reason()
                    .unwrap_or("Error")
                    .replace(' ', ""),
                message: String::from_utf8_lossy(&bytes).trim().to_owned(),
                details: vec![],
            },
        })
    }

    /// Sends a request and returns the whole successful body.
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Bytes, ClientError> {
        let resp = self.send(method, path, body).await?;
        Ok(resp
            .into_body()
            .collect()
            .await
            .map_err(ClientError::Http)?
            .to_bytes())
    }

    /// GETs and decodes JSON.
    pub async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
    ) -> Result<T, ClientError> {
        let bytes = self.request(Method::GET, path, None).await?;
        serde_json::from_slice(&bytes).map_err(ClientError::Decode)
    }

    /// Streams a newline-delimited response, calling `on_line` for each line until
    /// the stream ends or `on_line` returns `false`.
    pub async fn stream_lines(
        &self,
        path: &str,
        mut on_line: impl FnMut(&[u8]) -> bool,
    ) -> Result<(), ClientError> {
        let mut body = self.send(Method::GET, path, None).await?.into_body();
        let mut buf: Vec<u8> = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(ClientError::Http)?;
            let Some(data) = frame.data_ref() else {
                continue;
            };
            buf.extend_from_slice(data);
            while let Some(pos) = buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = buf.drain(..=pos).collect();
                if !on_line(&line[..line.len() - 1]) {
                    return Ok(());
                }
            }
        }
        Ok(())
    }
}
