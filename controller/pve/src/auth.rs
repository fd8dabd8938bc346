//! Credentials (API token or password → ticket), the secrets inside them, and the clock that
//! decides when a ticket is renewed.
//!
//! Secrets are wrapped in [`Secret`], whose `Debug` prints `***`, so a `{:?}` of any config or
//! client cannot leak them into logs. Ticket renewal uses an injectable [`Clock`] so tests can
//! cross the renewal threshold without waiting (tokio's paused clock would also auto-advance
//! through real network waits and fire request timeouts, so it is not used for this).

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A string that must never be printed: token secrets, passwords, tickets, CSRF tokens.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wrap a secret.
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    /// The secret itself; call only where it is sent.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Self {
        Secret(s)
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Self {
        Secret(s.to_owned())
    }
}

/// How the client authenticates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credentials {
    /// An API token: `Authorization: PVEAPIToken=USER@REALM!TOKENID=SECRET`. No CSRF token and
    /// no expiry; the recommended choice for a daemon.
    ApiToken {
        /// `user@realm!tokenid`.
        token_id: String,
        /// The token's secret (a UUID).
        secret: Secret,
    },
    /// A user and password, exchanged at `POST /access/ticket` for a 2-hour ticket cookie and a
    /// CSRF token (sent on every write). Renewed before expiry.
    Password {
        /// `user@realm`.
        username: String,
        /// The password.
        password: Secret,
    },
}

impl Credentials {
    /// API token credentials.
    pub fn api_token(token_id: impl Into<String>, secret: impl Into<Secret>) -> Self {
        Credentials::ApiToken {
            token_id: token_id.into(),
            secret: secret.into(),
        }
    }
    /// Password (ticket) credentials.
    pub fn password(username: impl Into<String>, password: impl Into<Secret>) -> Self {
        Credentials::Password {
            username: username.into(),
            password: password.into(),
        }
    }
}

/// A monotonic clock. The client asks it how old its ticket is.
pub trait Clock: Send + Sync + fmt::Debug {
    /// Now.
    fn now(&self) -> Instant;
}

/// The real clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// A clock that only moves when told to; for tests.
#[derive(Debug)]
pub struct ManualClock {
    base: Instant,
    offset_ms: AtomicU64,
}

impl ManualClock {
    /// A clock standing at "now".
    pub fn new() -> Arc<Self> {
        Arc::new(ManualClock {
            base: Instant::now(),
            offset_ms: AtomicU64::new(0),
        })
    }
    /// Move the clock forward.
    pub fn advance(&self, by: Duration) {
        let ms = u64::try_from(by.as_millis()).unwrap_or(u64::MAX);
        self.offset_ms.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        self.base + Duration::from_millis(self.offset_ms.load(Ordering::SeqCst))
    }
}

/// A ticket and the CSRF token that goes with it.
#[derive(Debug, Clone)]
pub(crate) struct Ticket {
    pub ticket: Secret,
    pub csrf: Secret,
    pub obtained: Instant,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_redacts() {
        let c = Credentials::api_token("root@pam!x", "very-secret");
        assert!(!format!("{c:?}").contains("very-secret"));
        let p = Credentials::password("root@pam", "hunter2");
        assert!(!format!("{p:?}").contains("hunter2"));
    }

    #[test]
    fn manual_clock_moves_only_when_told() {
        let c = ManualClock::new();
        let t0 = c.now();
        assert_eq!(c.now(), t0);
        c.advance(Duration::from_secs(7200));
        assert_eq!(c.now() - t0, Duration::from_secs(7200));
    }
}
