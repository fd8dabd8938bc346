//! Server-side sessions. The browser holds only a random 256-bit id in a
//! `Secure; HttpOnly; SameSite=Strict` cookie; everything else (whether the code
//! was given, the admin's address, the pending sign-in message, the CSRF token)
//! stays here. Sessions that passed the code are written to disk (0600) so a
//! restarted wizard — after a crash mid-finalization — keeps the operator signed
//! in; only the SHA-256 of each id is stored, so the file cannot be replayed as a
//! cookie.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;

use blockhost_crd::WalletAddress;
use chrono::{DateTime, Duration, Utc};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::fsutil::{self, FsError};

/// The cookie's name.
pub const COOKIE: &str = "bh_wizard";
/// Sessions that have not passed the code yet kept at once (the oldest go first):
/// visitors cannot grow memory without bound.
const ANONYMOUS_MAX: usize = 256;
/// A session's lifetime.
const LIFETIME_HOURS: i64 = 12;

/// A sign-in message waiting for its signature.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PendingLogin {
    /// The exact text to sign.
    pub text: String,
    /// The address it names.
    pub address: WalletAddress,
    /// When it stops being accepted.
    pub expires_at: DateTime<Utc>,
}

/// One session.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Session {
    /// The CSRF token every state-changing request must carry.
    pub csrf: String,
    /// Passed the one-time code.
    pub code_ok: bool,
    /// The admin wallet, once its signature was verified.
    pub admin: Option<WalletAddress>,
    /// The admin signed the public secret (for NFT #0).
    #[serde(default)]
    pub access_signed: bool,
    /// The sign-in message in flight.
    pub pending: Option<PendingLogin>,
    /// When it was made.
    pub created_at: DateTime<Utc>,
}

impl Session {
    fn new(now: DateTime<Utc>) -> Self {
        Self {
            csrf: random_hex(),
            code_ok: false,
            admin: None,
            access_signed: false,
            pending: None,
            created_at: now,
        }
    }

    /// Whether the CSRF token matches (constant time).
    pub fn csrf_ok(&self, given: &str) -> bool {
        given.len() == self.csrf.len() && bool::from(given.as_bytes().ct_eq(self.csrf.as_bytes()))
    }
}

/// 32 random bytes as hex.
pub fn random_hex() -> String {
    let mut b = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut b);
    hex::encode(b)
}

fn key_of(id: &str) -> String {
    hex::encode(Sha256::digest(id.as_bytes()))
}

/// The sessions.
#[derive(Debug)]
pub struct Sessions {
    path: PathBuf,
    map: Mutex<HashMap<String, Session>>,
}

impl Sessions {
    /// Loads the stored sessions from `path`.
    pub fn load(path: PathBuf) -> Result<Self, FsError> {
        let stored: HashMap<String, Session> = fsutil::read_json(&path)?.unwrap_or_default();
        Ok(Self {
            path,
            map: Mutex::new(stored),
        })
    }

    fn save(&self, map: &HashMap<String, Session>) -> Result<(), FsError> {
        let kept: HashMap<&String, &Session> = map.iter().filter(|(_, s)| s.code_ok).collect();
        fsutil::write_json(&self.path, &kept, 0o600)
    }

    /// The live session of cookie value `id`.
    pub fn get(&self, id: &str, now: DateTime<Utc>) -> Option<Session> {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.get(&key_of(id))
            .filter(|s| now < s.created_at + Duration::hours(LIFETIME_HOURS))
            .cloned()
    }

    /// Makes a new anonymous session; returns its cookie value.
    pub fn create(&self, now: DateTime<Utc>) -> (String, Session) {
        let id = random_hex();
        let s = Session::new(now);
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let anonymous = map.values().filter(|s| !s.code_ok).count();
        if anonymous >= ANONYMOUS_MAX
            && let Some(oldest) = map
                .iter()
                .filter(|(_, s)| !s.code_ok)
                .min_by_key(|(_, s)| s.created_at)
                .map(|(k, _)| k.clone())
        {
            map.remove(&oldest);
        }
        map.insert(key_of(&id), s.clone());
        (id, s)
    }

    /// Changes a session with `f` and stores the result.
    pub fn update<T>(
        &self,
        id: &str,
        f: impl FnOnce(&mut Session) -> T,
    ) -> Result<Option<T>, FsError> {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let Some(s) = map.get_mut(&key_of(id)) else {
            return Ok(None);
        };
        let was_stored = s.code_ok;
        let out = f(s);
        if was_stored || s.code_ok {
            self.save(&map)?;
        }
        Ok(Some(out))
    }

    /// Ends every session (setup is done).
    pub fn clear(&self) -> Result<(), FsError> {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.clear();
        fsutil::remove(&self.path)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn stored_by_hash_and_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sessions.json");
        let s = Sessions::load(path.clone()).unwrap();
        let now = Utc::now();
        let (id, sess) = s.create(now);
        assert!(!path.exists(), "anonymous sessions stay in memory");
        s.update(&id, |x| x.code_ok = true).unwrap().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains(&id), "the cookie value is not stored");
        assert_eq!(fsutil::mode_of(&path).unwrap(), 0o600);
        let again = Sessions::load(path).unwrap();
        let got = again.get(&id, now).unwrap();
        assert!(got.code_ok && got.csrf_ok(&sess.csrf) && !got.csrf_ok("x"));
        assert!(again.get(&id, now + Duration::hours(13)).is_none());
        assert!(again.get("other", now).is_none());
    }
}
