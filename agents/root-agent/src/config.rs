//! The agent's own configuration, `/etc/blockhost/root-agent.toml`: where its
//! socket is and who may call it. Owned by root; the daemon cannot change it.
//!
//! ```toml
//! socket = "/run/blockhost/root-agent.sock"
//! socketGroup = "blockhost"        # the socket is root:blockhost 0660
//! allowedUsers = ["blockhost"]     # blockhostd's user; checked with SO_PEERCRED
//! allowedUids = []                 # or numeric uids
//! ```

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Default path of the configuration file.
pub const DEFAULT_CONFIG: &str = "/etc/blockhost/root-agent.toml";
/// Default socket path (the original's).
pub const DEFAULT_SOCKET: &str = "/run/blockhost/root-agent.sock";

/// The configuration as written.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AgentConfig {
    /// The Unix socket.
    #[serde(default = "default_socket")]
    pub socket: PathBuf,
    /// The socket's group (mode 0660); absent: the agent's own group.
    #[serde(default)]
    pub socket_group: Option<String>,
    /// Users allowed to call (by name, looked up in `/etc/passwd`).
    #[serde(default)]
    pub allowed_users: Vec<String>,
    /// Uids allowed to call.
    #[serde(default)]
    pub allowed_uids: Vec<u32>,
    /// The `nft` program.
    #[serde(default = "default_nft")]
    pub nft: PathBuf,
    /// The `ip` program.
    #[serde(default = "default_ip")]
    pub ip: PathBuf,
}

fn default_socket() -> PathBuf {
    DEFAULT_SOCKET.into()
}
fn default_nft() -> PathBuf {
    "/usr/sbin/nft".into()
}
fn default_ip() -> PathBuf {
    "/usr/sbin/ip".into()
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            socket: default_socket(),
            socket_group: None,
            allowed_users: Vec::new(),
            allowed_uids: Vec::new(),
            nft: default_nft(),
            ip: default_ip(),
        }
    }
}

/// Why the configuration is unusable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// It is not valid.
    #[error("{path} is not a valid root agent configuration")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The cause (with line and column).
        #[source]
        source: toml::de::Error,
    },
    /// A user or group does not exist.
    #[error(
        "{kind} {name:?} is not in {file}; create it (adduser --system {name}) or fix the configuration"
    )]
    Unknown {
        /// `user` or `group`.
        kind: &'static str,
        /// The name.
        name: String,
        /// The file searched.
        file: &'static str,
    },
    /// Nobody may call.
    #[error("no caller is allowed: set allowedUsers (blockhostd's user) or allowedUids")]
    NoCallers,
}

impl AgentConfig {
    /// Reads a configuration file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.into(),
            source,
        })
    }

    /// The uids allowed to call: `allowedUids` plus the users' uids.
    pub fn allowed(&self) -> Result<BTreeSet<u32>, ConfigError> {
        let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
        let mut set: BTreeSet<u32> = self.allowed_uids.iter().copied().collect();
        for u in &self.allowed_users {
            set.insert(lookup(&passwd, u).ok_or_else(|| ConfigError::Unknown {
                kind: "user",
                name: u.clone(),
                file: "/etc/passwd",
            })?);
        }
        if set.is_empty() {
            return Err(ConfigError::NoCallers);
        }
        Ok(set)
    }

    /// The socket group's gid, if one is set.
    pub fn socket_gid(&self) -> Result<Option<u32>, ConfigError> {
        let Some(g) = &self.socket_group else {
            return Ok(None);
        };
        let group = std::fs::read_to_string("/etc/group").unwrap_or_default();
        lookup(&group, g)
            .map(Some)
            .ok_or_else(|| ConfigError::Unknown {
                kind: "group",
                name: g.clone(),
                file: "/etc/group",
            })
    }
}

/// The id (third field) of `name` in a passwd- or group-format file. System users
/// and groups (what blockhost's are) live in these files; no NSS is needed.
fn lookup(file: &str, name: &str) -> Option<u32> {
    file.lines().find_map(|l| {
        let mut f = l.split(':');
        (f.next()? == name).then_some(())?;
        f.next()?;
        f.next()?.parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_looks_up() {
        let c: AgentConfig = toml::from_str("allowedUids = [998]\nsocketGroup = \"root\"").unwrap();
        assert_eq!(c.socket, PathBuf::from(DEFAULT_SOCKET));
        assert_eq!(c.allowed().unwrap(), BTreeSet::from([998]));
        assert_eq!(c.socket_gid().unwrap(), Some(0));
        assert!(toml::from_str::<AgentConfig>("allowed = [1]").is_err());
        assert!(matches!(
            AgentConfig::default().allowed(),
            Err(ConfigError::NoCallers)
        ));
        assert_eq!(
            lookup("a:x:5:5::/:/bin/false\nbh:x:998:998::/:/x\n", "bh"),
            Some(998)
        );
        assert_eq!(lookup("bhx:x:1:1\n", "bh"), None);
    }
}
