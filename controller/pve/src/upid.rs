//! UPIDs: the ids PVE gives to worker tasks.
//!
//! Format: `UPID:node:pid:pstart:starttime:type:id:user:` with pid, pstart and starttime in hex.
//! We keep the original text, because PVE looks tasks up by the exact string it issued.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::Error;

/// A parsed task id. `Display` gives back the exact string PVE issued.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Upid {
    raw: String,
    node: String,
    pid: u32,
    pstart: u64,
    starttime: u64,
    task_type: String,
    id: String,
    user: String,
}

impl Upid {
    /// The node the task runs on (tasks are polled there).
    pub fn node(&self) -> &str {
        &self.node
    }
    /// Process id of the worker.
    pub fn pid(&self) -> u32 {
        self.pid
    }
    /// Start time of the worker process in clock ticks since boot.
    pub fn pstart(&self) -> u64 {
        self.pstart
    }
    /// Start time, Unix seconds.
    pub fn starttime(&self) -> u64 {
        self.starttime
    }
    /// Task type, e.g. `qmclone`, `qmstart`, `qmdestroy`.
    pub fn task_type(&self) -> &str {
        &self.task_type
    }
    /// The object the task works on, usually the VMID (may be empty).
    pub fn id(&self) -> &str {
        &self.id
    }
    /// The user or API token that started the task.
    pub fn user(&self) -> &str {
        &self.user
    }
    /// The UPID as PVE wrote it.
    pub fn as_str(&self) -> &str {
        &self.raw
    }

    /// Build a UPID from its parts (used by the in-process fake).
    pub fn new(
        node: &str,
        pid: u32,
        pstart: u64,
        starttime: u64,
        task_type: &str,
        id: &str,
        user: &str,
    ) -> Self {
        let raw =
            format!("UPID:{node}:{pid:08X}:{pstart:08X}:{starttime:08X}:{task_type}:{id}:{user}:");
        Upid {
            raw,
            node: node.to_owned(),
            pid,
            pstart,
            starttime,
            task_type: task_type.to_owned(),
            id: id.to_owned(),
            user: user.to_owned(),
        }
    }
}

impl FromStr for Upid {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        let bad = || Error::BadUpid(s.to_owned());
        let rest = s.strip_prefix("UPID:").ok_or_else(bad)?;
        let rest = rest.strip_suffix(':').ok_or_else(bad)?;
        // The user is last and may in principle contain ':' (it never does in PVE today), so
        // split the fixed fields from the left and leave the remainder to the user.
        let mut parts = rest.splitn(7, ':');
        let mut next = || parts.next().ok_or_else(bad);
        let node = next()?;
        let pid = next()?;
        let pstart = next()?;
        let starttime = next()?;
        let task_type = next()?;
        let id = next()?;
        let user = next()?;
        let hex = |f: &str| u64::from_str_radix(f, 16).map_err(|_| bad());
        if node.is_empty() || task_type.is_empty() || user.is_empty() {
            return Err(bad());
        }
        Ok(Upid {
            raw: s.to_owned(),
            node: node.to_owned(),
            pid: u32::try_from(hex(pid)?).map_err(|_| bad())?,
            pstart: hex(pstart)?,
            starttime: hex(starttime)?,
            task_type: task_type.to_owned(),
            id: id.to_owned(),
            user: user.to_owned(),
        })
    }
}

impl fmt::Display for Upid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

impl fmt::Debug for Upid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Upid({})", self.raw)
    }
}

impl Serialize for Upid {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.raw)
    }
}

impl<'de> Deserialize<'de> for Upid {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn parses_hex_fields_and_keeps_the_text() {
        let s = "UPID:pve1:000003E8:00001B58:6B07230F:qmclone:9001:root@pam!blockhost:";
        let u: Upid = s.parse().unwrap();
        assert_eq!(u.node(), "pve1");
        assert_eq!(u.pid(), 1000);
        assert_eq!(u.pstart(), 7000);
        assert_eq!(u.starttime(), 0x6B07_230F);
        assert_eq!(u.task_type(), "qmclone");
        assert_eq!(u.id(), "9001");
        assert_eq!(u.user(), "root@pam!blockhost");
        assert_eq!(u.to_string(), s);
    }

    #[test]
    fn empty_id_is_allowed() {
        let u: Upid = "UPID:n:00000001:00000002:00000003:vzdump::root@pam:"
            .parse()
            .unwrap();
        assert_eq!(u.id(), "");
    }

    #[test]
    fn round_trips_through_new() {
        let u = Upid::new(
            "pve2",
            0xABC,
            5,
            1_700_000_000,
            "qmstart",
            "101",
            "root@pam",
        );
        let back: Upid = u.to_string().parse().unwrap();
        assert_eq!(u, back);
    }

    #[test]
    fn rejects_malformed() {
        for s in [
            "",
            "UPID:",
            "UPID:pve1:zz:00:00:qmstart:1:root@pam:",
            "UPID:pve1:1:2:3:qmstart:1:root@pam",
            "XPID:pve1:1:2:3:qmstart:1:root@pam:",
            "UPID:pve1:1:2:3::1:root@pam:",
        ] {
            assert!(s.parse::<Upid>().is_err(), "{s}");
        }
    }

    #[test]
    fn deserializes_from_json_string() {
        let u: Upid =
            serde_json::from_str("\"UPID:pve1:000003E8:00001B58:6B07230F:qmstart:100:root@pam:\"")
                .unwrap();
        assert_eq!(u.task_type(), "qmstart");
    }
}
