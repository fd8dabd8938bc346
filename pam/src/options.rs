//! The module's options, as written after `pam_blockhost.so` on the PAM stack line.
//!
//! Unknown or malformed options are an error (the login fails with
//! `PAM_SERVICE_ERR`): a typo in a security setting must be loud, not ignored.

use std::path::PathBuf;
use std::time::Duration;

use blockhost_access::access::ACCESS_FILE_PATH;

use crate::handoff::DEFAULT_SOCKET;

/// Longest challenge lifetime accepted, in seconds (an hour).
pub const TTL_MAX_SECS: u64 = 3600;
/// Longest wait for the signing page, in seconds.
pub const WAIT_MAX_SECS: u64 = 600;

/// Parsed module options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// `access_file=PATH`: the VM access file (default `/etc/blockhost/access.json`).
    pub access_file: PathBuf,
    /// `ttl=SECONDS`: how long a challenge stays valid (default 300, 1..=3600).
    pub ttl: Duration,
    /// `wait=SECONDS`: how long Enter waits for the signing page (default 120,
    /// 1..=600, never past the challenge's expiry).
    pub wait: Duration,
    /// `socket=PATH`: the signer service's hand-off socket.
    pub socket: PathBuf,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            access_file: PathBuf::from(ACCESS_FILE_PATH),
            ttl: Duration::from_secs(300),
            wait: Duration::from_secs(120),
            socket: PathBuf::from(DEFAULT_SOCKET),
        }
    }
}

/// A module option that could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OptionsError {
    /// Not one of the options this module knows.
    #[error("unknown option {0:?}")]
    Unknown(String),
    /// A known option with a bad value.
    #[error("option {name}: {reason}")]
    BadValue {
        /// Option name.
        name: &'static str,
        /// Why the value is unusable.
        reason: String,
    },
}

impl Options {
    /// Parses `key=value` arguments.
    pub fn parse<'a>(args: impl IntoIterator<Item = &'a str>) -> Result<Self, OptionsError> {
        let mut o = Self::default();
        for arg in args {
            let (key, value) = arg.split_once('=').unwrap_or((arg, ""));
            match key {
                "access_file" => o.access_file = absolute_path("access_file", value)?,
                "socket" => o.socket = absolute_path("socket", value)?,
                "ttl" => o.ttl = seconds("ttl", value, TTL_MAX_SECS)?,
                "wait" => o.wait = seconds("wait", value, WAIT_MAX_SECS)?,
                _ => return Err(OptionsError::Unknown(arg.chars().take(64).collect())),
            }
        }
        Ok(o)
    }
}

fn absolute_path(name: &'static str, value: &str) -> Result<PathBuf, OptionsError> {
    if value.starts_with('/') {
        Ok(PathBuf::from(value))
    } else {
        Err(OptionsError::BadValue {
            name,
            reason: "must be an absolute path".into(),
        })
    }
}

fn seconds(name: &'static str, value: &str, max: u64) -> Result<Duration, OptionsError> {
    match value.parse::<u64>() {
        Ok(n) if (1..=max).contains(&n) => Ok(Duration::from_secs(n)),
        _ => Err(OptionsError::BadValue {
            name,
            reason: format!("must be a whole number of seconds from 1 to {max}"),
        }),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_overrides() {
        assert_eq!(Options::parse([]).unwrap(), Options::default());
        let o = Options::parse([
            "ttl=2",
            "wait=5",
            "access_file=/tmp/a.toml",
            "socket=/tmp/s",
        ])
        .unwrap();
        assert_eq!(o.ttl, Duration::from_secs(2));
        assert_eq!(o.wait, Duration::from_secs(5));
        assert_eq!(o.access_file, PathBuf::from("/tmp/a.toml"));
        assert_eq!(o.socket, PathBuf::from("/tmp/s"));
    }

    #[test]
    fn refuses_bad_options() {
        for bad in [
            "ttl=0",
            "ttl=3601",
            "ttl=x",
            "wait=601",
            "access_file=rel",
            "debug",
            "tll=3",
        ] {
            assert!(Options::parse([bad]).is_err(), "{bad}");
        }
    }
}
