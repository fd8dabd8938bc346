//! Hand-off between the PAM module and the signer service: how a signature posted on
//! the signing page reaches the waiting keyboard-interactive conversation.
//!
//! One Unix-socket connection per pending challenge. The module connects, writes one
//! JSON line ([`Register`]: session id, message, expiry) and keeps the connection
//! open; the signer answers with one JSON line ([`Delivered`]) when the page posts a
//! signature. The connection *is* the session: when the module closes it (the user
//! pasted a signature, gave up, or the attempt ended) the signer forgets the
//! session, so a challenge never outlives its own attempt. The module verifies the
//! signature itself; the signer is a courier, not a judge.

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// Where the signer listens by default (root-only directory).
pub const DEFAULT_SOCKET: &str = "/run/blockhost/signer.sock";

/// Longest line either side sends. A registration is well under 1 KiB.
pub const LINE_MAX: usize = 8192;

/// Module → signer: a new pending session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Register {
    /// 128-bit random session id, 32 lower-case hex digits.
    pub session: String,
    /// The exact message to sign.
    pub message: String,
    /// Unix time after which the module will refuse the signature.
    pub expires_at: i64,
}

/// Signer → module: the signature the page posted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Delivered {
    /// As posted (hex text); the module parses and verifies it.
    pub signature: String,
}

/// Why the hand-off did not deliver a signature.
#[derive(Debug, thiserror::Error)]
pub enum HandoffError {
    /// The signer is not running or not reachable.
    #[error("signer service unreachable")]
    Connect(#[source] std::io::Error),
    /// Reading or writing the socket failed.
    #[error("signer socket I/O failed")]
    Io(#[source] std::io::Error),
    /// Nothing arrived in time.
    #[error("no signature arrived from the signing page in time")]
    Timeout,
    /// The socket is served by a process not running as root: whoever it is, it is
    /// not the signer (which runs as root), so it gets no message.
    #[error("hand-off socket is served by uid {0}, not root")]
    NotRoot(u32),
    /// The signer closed the connection without a signature.
    #[error("signer closed the session")]
    Closed,
    /// A line longer than [`LINE_MAX`] or not the expected JSON.
    #[error("signer sent a malformed reply")]
    Malformed,
}

/// True if `s` looks like a session id this code makes (32 lower-case hex digits).
pub fn is_session_id(s: &str) -> bool {
    s.len() == 32 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// A fresh 128-bit session id; see [`random_128`].
pub fn new_session_id() -> String {
    random_128()
}

/// 128 random bits as 32 hex digits, straight from the kernel (`getrandom`) rather
/// than a user-space generator: sshd forks for every connection, and a per-process
/// generator state must never be able to repeat a nonce across forks.
pub fn random_128() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// The module's side of one pending session.
#[derive(Debug)]
pub struct Handoff {
    stream: UnixStream,
}

impl Handoff {
    /// Connects to the signer and registers the session.
    pub fn register(socket: &Path, reg: &Register) -> Result<Self, HandoffError> {
        let mut stream = UnixStream::connect(socket).map_err(HandoffError::Connect)?;
        let uid = peer_uid(&stream).map_err(HandoffError::Io)?;
        if uid != 0 {
            return Err(HandoffError::NotRoot(uid));
        }
        // A wedged signer must not hang the login before the prompt is even shown.
        stream
            .set_write_timeout(Some(Duration::from_secs(2)))
            .map_err(HandoffError::Io)?;
        let mut line = serde_json::to_vec(reg).map_err(|_| HandoffError::Malformed)?;
        line.push(b'\n');
        stream.write_all(&line).map_err(HandoffError::Io)?;
        Ok(Self { stream })
    }

    /// Waits up to `timeout` for the page's signature.
    pub fn wait(mut self, timeout: Duration) -> Result<String, HandoffError> {
        let deadline = Instant::now() + timeout;
        let mut buf = Vec::with_capacity(256);
        let mut chunk = [0u8; 512];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(HandoffError::Timeout);
            }
            self.stream
                .set_read_timeout(Some(left))
                .map_err(HandoffError::Io)?;
            let n = match self.stream.read(&mut chunk) {
                Ok(0) => return Err(HandoffError::Closed),
                Ok(n) => n,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err(HandoffError::Timeout);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(HandoffError::Io(e)),
            };
            buf.extend_from_slice(&chunk[..n]);
            if let Some(end) = buf.iter().position(|&b| b == b'\n') {
                let d: Delivered =
                    serde_json::from_slice(&buf[..end]).map_err(|_| HandoffError::Malformed)?;
                return Ok(d.signature);
            }
            if buf.len() > LINE_MAX {
                return Err(HandoffError::Malformed);
            }
        }
    }
}

/// The uid of the process at the other end of a Unix socket (`SO_PEERCRED`; std's
/// `peer_cred` is not stable yet).
fn peer_uid(stream: &UnixStream) -> std::io::Result<u32> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: u32::MAX,
        gid: u32::MAX,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: a valid socket fd, and an out-pointer and length matching `ucred`,
    // as SO_PEERCRED requires.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&raw mut cred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(cred.uid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_ids_are_128_bit_hex_and_distinct() {
        let ids: std::collections::HashSet<String> = (0..1000).map(|_| new_session_id()).collect();
        assert_eq!(ids.len(), 1000);
        assert!(ids.iter().all(|id| is_session_id(id)));
        assert!(!is_session_id("0123"));
        assert!(!is_session_id(&"G".repeat(32)));
        assert!(
            !is_session_id(&"A".repeat(32)),
            "upper case is not what we make"
        );
    }
}
