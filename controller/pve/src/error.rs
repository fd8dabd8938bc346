//! Errors of the Proxmox VE client, classified for a reconciler.
//!
//! A reconciler does not care which HTTP status PVE chose (it answers 500 for a missing VM, a
//! held lock and a lost quorum alike); it cares whether to retry, give up, or treat a resource as
//! gone. [`Error::kind`] answers that once, from the status *and* PVE's wording, so no caller
//! string-matches messages.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::upid::Upid;

/// What a reconciler should do about an [`Error`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The VM, node or task does not exist: treat as gone (or re-create), do not retry blindly.
    NotFound,
    /// The resource already exists (e.g. a clone's `newid` is taken): pick another id or adopt it.
    AlreadyExists,
    /// A config lock is held or timed out ("VM is locked", "can't lock file"): retry with backoff.
    Locked,
    /// Connection trouble, request timeout, 5xx, lost quorum, a task still running at the deadline:
    /// retry with backoff.
    Transient,
    /// PVE rejected parameters (HTTP 400): retrying the same request cannot succeed.
    Validation,
    /// Credentials refused or missing privileges (401/403): needs an operator.
    Auth,
    /// A task ran and ended in an error that is not a lock problem.
    TaskFailed,
    /// The client is misconfigured, the server's certificate is refused, or PVE answered
    /// something we cannot read: needs a developer or an operator.
    Permanent,
}

impl ErrorKind {
    /// A short, stable label (`not_found`, `locked`, ...) for metrics and status conditions.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::NotFound => "not_found",
            ErrorKind::AlreadyExists => "already_exists",
            ErrorKind::Locked => "locked",
            ErrorKind::Transient => "transient",
            ErrorKind::Validation => "validation",
            ErrorKind::Auth => "auth",
            ErrorKind::TaskFailed => "task_failed",
            ErrorKind::Permanent => "permanent",
        }
    }
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error from the Proxmox VE API or from talking to it.
///
/// Messages never repeat their source's text (walk the chain to log it whole), and never contain
/// a secret: the token secret, password and ticket live only in redacting types.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// PVE answered with an error status.
    #[error("{method} {path}: HTTP {status}: {message}")]
    Api {
        /// HTTP method of the request.
        method: &'static str,
        /// API path below `/api2/json`.
        path: String,
        /// HTTP status PVE answered with.
        status: u16,
        /// PVE's message (body `message`, else the reason phrase), trimmed.
        message: String,
        /// Per-parameter messages of a 400 "Parameter verification failed.".
        field_errors: BTreeMap<String, String>,
    },
    /// The request never got an answer: connection refused or reset, DNS, request timeout.
    #[error("{method} {path}: no answer from Proxmox VE")]
    Transport {
        /// HTTP method of the request.
        method: &'static str,
        /// API path below `/api2/json`.
        path: String,
        /// The transport error (a `reqwest::Error` from the HTTP client; an `io::Error` from
        /// the in-process fake's injected faults).
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },
    /// The TLS handshake failed because the server's certificate was refused (wrong pinned
    /// fingerprint, unknown CA): not transient, the configuration or the server is wrong.
    #[error("{method} {path}: server certificate refused")]
    Tls {
        /// HTTP method of the request.
        method: &'static str,
        /// API path below `/api2/json`.
        path: String,
        /// The transport error that carries the certificate error.
        #[source]
        source: reqwest::Error,
    },
    /// PVE answered 2xx with a body we cannot read.
    #[error("{method} {path}: unexpected response body")]
    Decode {
        /// HTTP method of the request.
        method: &'static str,
        /// API path below `/api2/json`.
        path: String,
        /// Why the body did not fit the expected type.
        #[source]
        source: serde_json::Error,
    },
    /// A task ended with an exit status other than `OK` or `WARNINGS: N`.
    #[error("task {upid} failed: {exit_status}")]
    TaskFailed {
        /// The task (boxed: keeps `Result<_, Error>` small).
        upid: Box<Upid>,
        /// PVE's exit status, e.g. `VM is locked (backup)`.
        exit_status: String,
        /// The last lines of the task log, oldest first.
        log_tail: Vec<String>,
    },
    /// A task was still running when the caller's deadline passed (it may still finish).
    #[error("task {upid} still running after {waited:?}")]
    TaskTimeout {
        /// The task (boxed: keeps `Result<_, Error>` small).
        upid: Box<Upid>,
        /// How long we waited.
        waited: Duration,
    },
    /// A UPID string could not be parsed.
    #[error("malformed UPID {0:?}")]
    BadUpid(String),
    /// The client configuration is unusable (bad URL, bad fingerprint, no trust roots).
    #[error("invalid client configuration: {0}")]
    Config(String),
    /// A TLS or HTTP client could not be built from a valid configuration.
    #[error("cannot build the HTTP client")]
    Build(#[source] reqwest::Error),
}

/// Result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// PVE's wording for a config lock that is held or could not be taken in time.
fn is_lock_message(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("vm is locked")
        || m.contains("ct is locked")
        || m.contains("can't lock file")
        || m.contains("got timeout") && m.contains("lock")
}

/// PVE's wording for a guest, node or task that does not exist (it often answers 500 for these).
fn is_not_found_message(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    (m.contains("configuration file") && m.contains("does not exist"))
        || m.contains("no such vm")
        || m.contains("no such cluster node")
        || m.contains("unable to parse worker upid")
        // A VM's firewall IP set (PVE's IPSet.pm: `no such IPSet '…'`).
        || m.contains("no such ipset")
        || (m.starts_with("vm ") && m.contains("does not exist"))
}

fn is_exists_message(message: &str) -> bool {
    message.contains("already exists")
}

impl Error {
    /// The class of this error, for a reconciler's retry policy.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Api {
                status, message, ..
            } => {
                let status = *status;
                if is_lock_message(message) {
                    ErrorKind::Locked
                } else if status == 404 || is_not_found_message(message) {
                    ErrorKind::NotFound
                } else if is_exists_message(message) {
                    ErrorKind::AlreadyExists
                } else if status == 401 || status == 403 {
                    ErrorKind::Auth
                } else if status == 400 {
                    ErrorKind::Validation
                } else if status >= 500 || status == 408 || status == 429 {
                    // 5xx includes PVE's 595/596 proxy errors (node unreachable) and lost quorum.
                    ErrorKind::Transient
                } else {
                    ErrorKind::Permanent
                }
            }
            Error::Transport { .. } | Error::TaskTimeout { .. } => ErrorKind::Transient,
            Error::TaskFailed { exit_status, .. } => {
                if is_lock_message(exit_status) {
                    ErrorKind::Locked
                } else {
                    ErrorKind::TaskFailed
                }
            }
            Error::Tls { .. }
            | Error::Decode { .. }
            | Error::BadUpid(_)
            | Error::Config(_)
            | Error::Build(_) => ErrorKind::Permanent,
        }
    }

    /// True if the same request may succeed later without any change: locks, 5xx, connection
    /// trouble, request timeouts and tasks still running at the deadline.
    pub fn is_transient(&self) -> bool {
        matches!(self.kind(), ErrorKind::Locked | ErrorKind::Transient)
    }

    /// True if the VM (or node, or task) addressed does not exist.
    pub fn is_not_found(&self) -> bool {
        self.kind() == ErrorKind::NotFound
    }

    /// PVE's per-parameter messages of a validation error (empty for other errors).
    pub fn field_errors(&self) -> Option<&BTreeMap<String, String>> {
        match self {
            Error::Api { field_errors, .. } if !field_errors.is_empty() => Some(field_errors),
            _ => None,
        }
    }

    /// The HTTP status PVE answered with, if it answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Api { status, .. } => Some(*status),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(status: u16, message: &str) -> Error {
        Error::Api {
            method: "POST",
            path: "/x".into(),
            status,
            message: message.into(),
            field_errors: BTreeMap::new(),
        }
    }

    #[test]
    fn classification_follows_pve_wording() {
        assert_eq!(api(500, "VM is locked (backup)").kind(), ErrorKind::Locked);
        assert_eq!(
            api(
                500,
                "can't lock file '/var/lock/qemu-server/lock-100.conf' - got timeout"
            )
            .kind(),
            ErrorKind::Locked
        );
        assert_eq!(
            api(
                500,
                "Configuration file 'nodes/pve1/qemu-server/100.conf' does not exist"
            )
            .kind(),
            ErrorKind::NotFound
        );
        assert_eq!(
            api(500, "unable to create VM 100: config file already exists").kind(),
            ErrorKind::AlreadyExists
        );
        assert_eq!(
            api(500, "cluster not ready - no quorum?").kind(),
            ErrorKind::Transient
        );
        assert_eq!(api(595, "No route to host").kind(), ErrorKind::Transient);
        assert_eq!(
            api(400, "Parameter verification failed.").kind(),
            ErrorKind::Validation
        );
        assert_eq!(api(401, "authentication failure").kind(), ErrorKind::Auth);
        assert!(api(503, "busy").is_transient());
        assert!(!api(400, "bad").is_transient());
        assert!(api(500, "VM is locked (clone)").is_transient());
        assert_eq!(ErrorKind::TaskFailed.to_string(), "task_failed");
    }
}
