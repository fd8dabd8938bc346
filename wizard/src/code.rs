//! The one-time code that proves the person at the browser can read the host's
//! console: 6 characters from an alphabet without look-alikes (no 0 O 1 I L), valid
//! for 4 hours, used once, and locked after 10 wrong tries.
//!
//! The file is re-read at every try, so `blockhost-wizard new-code` (run on the
//! console) takes effect without a restart, and the failure count survives one:
//! restarting the wizard must not give an attacker 10 more guesses. Every try is
//! compared — the lock is checked on the count *before* this try, so the 10th try
//! is still judged (the original locked before comparing, failing every 10th). The
//! comparison is constant-time; the code is never logged.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use chrono::{DateTime, Duration, Utc};
use rand::Rng;
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

use crate::fsutil::{self, FsError};

/// The code's characters.
pub const ALPHABET: &[u8] = b"ABCDEFGHJKMNPQRSTUVWXYZ23456789";
/// Its length.
pub const CODE_LEN: usize = 6;
/// Wrong tries that lock it.
pub const MAX_FAILURES: u32 = 10;
/// How long a code is valid.
pub const VALIDITY_HOURS: i64 = 4;

/// The stored code (mode 0600).
#[derive(Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CodeFile {
    /// The code itself.
    pub code: String,
    /// When it was made.
    pub issued_at: DateTime<Utc>,
    /// Wrong tries so far.
    pub failures: u32,
    /// Whether it has been accepted once.
    pub used: bool,
}

impl std::fmt::Debug for CodeFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CodeFile")
            .field("code", &"<redacted>")
            .field("issued_at", &self.issued_at)
            .field("failures", &self.failures)
            .field("used", &self.used)
            .finish()
    }
}

impl CodeFile {
    /// When it stops being accepted.
    pub fn expires_at(&self) -> DateTime<Utc> {
        self.issued_at + Duration::hours(VALIDITY_HOURS)
    }
}

/// What a try gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Right: the code is now used.
    Accepted,
    /// Wrong; this many tries remain.
    Wrong {
        /// Tries left before the lock.
        remaining: u32,
    },
    /// Locked by 10 wrong tries (this one may have been the 10th).
    Locked,
    /// Older than 4 hours.
    Expired,
    /// Already accepted once.
    Used,
    /// No code has been made (or it was destroyed).
    Missing,
}

impl Verdict {
    /// The sentence the page shows.
    pub fn message(self) -> String {
        match self {
            Verdict::Accepted => "Code accepted.".into(),
            Verdict::Wrong { remaining } => format!(
                "That is not the code shown on the host's console; {remaining} tries left before it locks."
            ),
            Verdict::Locked => "The code is locked after 10 wrong tries. On the host's console run `blockhost-wizard new-code` and use the new code.".into(),
            Verdict::Expired => "The code has expired (codes are valid for 4 hours). On the host's console run `blockhost-wizard new-code` and use the new code.".into(),
            Verdict::Used => "This code has already been used. On the host's console run `blockhost-wizard new-code` to start another session.".into(),
            Verdict::Missing => "No code is set. On the host's console run `blockhost-wizard new-code`.".into(),
        }
    }
}

/// The code on disk.
#[derive(Debug)]
pub struct CodeStore {
    path: PathBuf,
    // Tries are read-modify-write on the file; one at a time.
    lock: Mutex<()>,
}

/// Makes a random code.
pub fn generate() -> String {
    let mut rng = rand::rngs::OsRng;
    (0..CODE_LEN)
        .map(|_| char::from(ALPHABET[rng.gen_range(0..ALPHABET.len())]))
        .collect()
}

/// Normalises what a person typed: spaces and dashes dropped, upper case.
fn normalise(attempt: &str) -> Vec<u8> {
    attempt
        .chars()
        .filter(|c| !c.is_whitespace() && *c != '-')
        .flat_map(char::to_uppercase)
        .map(|c| u8::try_from(c).unwrap_or(0))
        .collect()
}

impl CodeStore {
    /// The code file at `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            lock: Mutex::new(()),
        }
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Replaces the code with a new one (failures reset) and returns it.
    pub fn renew(&self, now: DateTime<Utc>) -> Result<CodeFile, FsError> {
        let _g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let file = CodeFile {
            code: generate(),
            issued_at: now,
            failures: 0,
            used: false,
        };
        fsutil::write_json(&self.path, &file, 0o600)?;
        Ok(file)
    }

    /// The current code, if any.
    pub fn current(&self) -> Result<Option<CodeFile>, FsError> {
        fsutil::read_json(&self.path)
    }

    /// The current code, or a new one when there is none.
    pub fn current_or_new(&self, now: DateTime<Utc>) -> Result<CodeFile, FsError> {
        match self.current()? {
            Some(c) => Ok(c),
            None => self.renew(now),
        }
    }

    /// Judges one try and records its outcome before answering.
    pub fn check(&self, attempt: &str, now: DateTime<Utc>) -> Result<Verdict, FsError> {
        let _g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let Some(mut file) = self.current()? else {
            return Ok(Verdict::Missing);
        };
        if file.used {
            return Ok(Verdict::Used);
        }
        if file.failures >= MAX_FAILURES {
            return Ok(Verdict::Locked);
        }
        if now >= file.expires_at() {
            return Ok(Verdict::Expired);
        }
        let typed = normalise(attempt);
        let right = typed.len() == file.code.len() && bool::from(typed.ct_eq(file.code.as_bytes()));
        if right {
            file.used = true;
            fsutil::write_json(&self.path, &file, 0o600)?;
            return Ok(Verdict::Accepted);
        }
        file.failures += 1;
        fsutil::write_json(&self.path, &file, 0o600)?;
        tracing::warn!(failures = file.failures, "wrong one-time code");
        if file.failures >= MAX_FAILURES {
            return Ok(Verdict::Locked);
        }
        Ok(Verdict::Wrong {
            remaining: MAX_FAILURES - file.failures,
        })
    }

    /// Destroys the code (setup is done).
    pub fn destroy(&self) -> Result<(), FsError> {
        let _g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        fsutil::remove(&self.path)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, CodeStore) {
        let dir = tempfile::tempdir().unwrap();
        let s = CodeStore::new(dir.path().join("code.json"));
        (dir, s)
    }

    fn wrong_for(code: &str) -> String {
        // A code of the alphabet that differs from `code`.
        let c = if code.starts_with('A') { "B" } else { "A" };
        format!("{c}{}", &code[1..])
    }

    #[test]
    fn codes_use_the_alphabet() {
        for _ in 0..200 {
            let c = generate();
            assert_eq!(c.len(), CODE_LEN);
            assert!(c.bytes().all(|b| ALPHABET.contains(&b)), "{c}");
        }
        assert_eq!(ALPHABET.len(), 31);
        for b in b"0O1IL" {
            assert!(!ALPHABET.contains(b));
        }
    }

    #[test]
    fn right_code_once_case_insensitive() {
        let (_d, s) = store();
        let now = Utc::now();
        let c = s.renew(now).unwrap();
        assert_eq!(
            s.check(&c.code.to_lowercase(), now).unwrap(),
            Verdict::Accepted
        );
        assert_eq!(s.check(&c.code, now).unwrap(), Verdict::Used);
    }

    #[test]
    fn ten_wrong_tries_lock_and_the_tenth_is_judged() {
        let (_d, s) = store();
        let now = Utc::now();
        let c = s.renew(now).unwrap();
        let wrong = wrong_for(&c.code);
        for i in 1..MAX_FAILURES {
            assert_eq!(
                s.check(&wrong, now).unwrap(),
                Verdict::Wrong {
                    remaining: MAX_FAILURES - i
                }
            );
        }
        // After 9 wrong tries the 10th is still compared: the right code passes.
        assert_eq!(s.check(&c.code, now).unwrap(), Verdict::Accepted);

        let c = s.renew(now).unwrap();
        let wrong = wrong_for(&c.code);
        for _ in 1..MAX_FAILURES {
            s.check(&wrong, now).unwrap();
        }
        assert_eq!(s.check(&wrong, now).unwrap(), Verdict::Locked);
        assert_eq!(s.check(&c.code, now).unwrap(), Verdict::Locked);
        // The count survives a restart (a new store on the same file).
        let again = CodeStore::new(s.path());
        assert_eq!(again.check(&c.code, now).unwrap(), Verdict::Locked);
        // A new code unlocks.
        let c = again.renew(now).unwrap();
        assert_eq!(again.check(&c.code, now).unwrap(), Verdict::Accepted);
    }

    #[test]
    fn expired_codes_are_refused() {
        let (_d, s) = store();
        let then = Utc::now() - Duration::hours(VALIDITY_HOURS) - Duration::seconds(1);
        let c = s.renew(then).unwrap();
        assert_eq!(s.check(&c.code, Utc::now()).unwrap(), Verdict::Expired);
    }

    #[test]
    fn the_code_is_not_in_debug_output() {
        let (_d, s) = store();
        let c = s.renew(Utc::now()).unwrap();
        assert!(!format!("{c:?}").contains(&c.code));
        assert_eq!(crate::fsutil::mode_of(s.path()).unwrap(), 0o600);
    }
}
