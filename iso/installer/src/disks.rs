//! The disks the installer may offer: whole, writable, non-removable-media disks
//! with nothing mounted on them, and never the disk holding the installer medium.
//!
//! The facts come from `lsblk --json --bytes`; parsing is separate from running it
//! so the rules are unit-tested on recorded output.

use serde::{Deserialize, Deserializer};
use std::fmt;

/// A disk the operator may choose to erase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disk {
    /// Kernel name, e.g. `vda`, `sda`, `nvme0n1`.
    pub name: String,
    /// Device path, e.g. `/dev/vda`.
    pub path: String,
    pub model: String,
    /// Empty when the disk reports none (the confirmation then needs the name).
    pub serial: String,
    pub size: u64,
    /// Transport (`sata`, `nvme`, `usb`, …), empty when unknown (virtio).
    pub transport: String,
}

impl Disk {
    /// The path of partition `n` of this disk: the kernel inserts a `p` when the
    /// disk's name ends in a digit (`nvme0n1p1`, `mmcblk0p1`, `loop0p1`).
    pub fn partition_path(&self, n: u32) -> String {
        if self.path.ends_with(|c: char| c.is_ascii_digit()) {
            format!("{}p{n}", self.path)
        } else {
            format!("{}{n}", self.path)
        }
    }
}

impl fmt::Display for Disk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let model = if self.model.is_empty() {
            "(no model)"
        } else {
            &self.model
        };
        let serial = if self.serial.is_empty() {
            "(none)"
        } else {
            &self.serial
        };
        write!(
            f,
            "{:<10} {:>9}  {:<24} serial {}",
            self.name,
            human_size(self.size),
            model,
            serial
        )?;
        if !self.transport.is_empty() {
            write!(f, "  [{}]", self.transport)?;
        }
        Ok(())
    }
}

/// Sizes as an operator reads them on a disk label (decimal units).
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit < UNITS.len() - 1 {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DisksError {
    #[error("could not read lsblk's JSON output")]
    Parse(#[source] serde_json::Error),
    #[error(
        "the installer medium {0} is not among the block devices lsblk lists; refusing to offer any disk, since the medium could not be excluded"
    )]
    MediumNotFound(String),
}

#[derive(Debug, Deserialize)]
struct Lsblk {
    blockdevices: Vec<Dev>,
}

#[derive(Debug, Deserialize)]
struct Dev {
    name: String,
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    serial: Option<String>,
    #[serde(default)]
    size: Option<u64>,
    #[serde(rename = "type")]
    kind: String,
    #[serde(default, deserialize_with = "flag")]
    ro: bool,
    #[serde(default)]
    tran: Option<String>,
    #[serde(default)]
    mountpoint: Option<String>,
    #[serde(default)]
    children: Vec<Dev>,
}

/// lsblk prints flags as JSON booleans (util-linux ≥ 2.33) or as "0"/"1"
/// strings (older); accept both so a change of version cannot flip a flag.
fn flag<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Flag {
        Bool(bool),
        Num(u64),
        Str(String),
    }
    Ok(match Flag::deserialize(d)? {
        Flag::Bool(b) => b,
        Flag::Num(n) => n != 0,
        Flag::Str(s) => s == "1" || s.eq_ignore_ascii_case("true"),
    })
}

/// The columns [`candidates`] expects, for `lsblk --json --bytes --output …`.
pub const LSBLK_COLUMNS: &str = "NAME,PATH,MODEL,SERIAL,SIZE,TYPE,RO,TRAN,MOUNTPOINT";

fn contains_path(dev: &Dev, path: &str) -> bool {
    dev.path.as_deref() == Some(path) || dev.children.iter().any(|c| contains_path(c, path))
}

fn anything_mounted(dev: &Dev) -> bool {
    dev.mountpoint.as_deref().is_some_and(|m| !m.is_empty())
        || dev.children.iter().any(anything_mounted)
}

/// The result of looking at the machine's block devices.
#[derive(Debug)]
pub struct Survey {
    /// Disks the operator may erase.
    pub offered: Vec<Disk>,
    /// Disks left out, each with the reason (shown, so an operator who misses a
    /// disk knows why).
    pub excluded: Vec<(String, &'static str)>,
}

/// Sorts lsblk's devices into the disks offered and those excluded.
/// `medium` is the device the installer medium is mounted from (`/dev/sr0`,
/// `/dev/sdb1`, …): the whole disk holding it is never offered.
pub fn candidates(lsblk_json: &str, medium: &str) -> Result<Survey, DisksError> {
    let parsed: Lsblk = serde_json::from_str(lsblk_json).map_err(DisksError::Parse)?;
    if !parsed.blockdevices.iter().any(|d| contains_path(d, medium)) {
        return Err(DisksError::MediumNotFound(medium.to_owned()));
    }
    let mut survey = Survey {
        offered: Vec::new(),
        excluded: Vec::new(),
    };
    for dev in parsed.blockdevices {
        let reason = if dev.kind != "disk" {
            Some("not a disk")
        } else if contains_path(&dev, medium) {
            Some("holds the installer medium")
        } else if dev.ro {
            Some("read-only")
        } else if dev.size.unwrap_or(0) == 0 {
            Some("no medium or size 0")
        } else if ["loop", "ram", "zram", "sr", "fd"]
            .iter()
            .any(|p| dev.name.starts_with(p))
        {
            Some("not a fixed disk")
        } else if anything_mounted(&dev) {
            Some("has a mounted filesystem")
        } else {
            None
        };
        if let Some(reason) = reason {
            survey.excluded.push((dev.name, reason));
            continue;
        }
        let path = dev.path.unwrap_or_else(|| format!("/dev/{}", dev.name));
        survey.offered.push(Disk {
            path,
            model: dev.model.unwrap_or_default().trim().to_owned(),
            serial: dev.serial.unwrap_or_default().trim().to_owned(),
            size: dev.size.unwrap_or(0),
            transport: dev.tran.unwrap_or_default(),
            name: dev.name,
        });
    }
    Ok(survey)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Recorded from a trixie live system in qemu: a virtio disk, a SATA disk, the
    // ISO on a SCSI CD-ROM, and a USB stick with a partition mounted.
    const LSBLK: &str = r#"{
       "blockdevices": [
          {"name":"loop0","path":"/dev/loop0","model":null,"serial":null,"size":251658240,"type":"loop","ro":true,"tran":null,"mountpoint":"/run/live/rootfs/filesystem.squashfs"},
          {"name":"sda","path":"/dev/sda","model":"QEMU HARDDISK","serial":"QM00001","size":21474836480,"type":"disk","ro":false,"tran":"sata","mountpoint":null},
          {"name":"sdb","path":"/dev/sdb","model":"Flash Disk","serial":"USB123","size":8004304896,"type":"disk","ro":false,"tran":"usb","mountpoint":null,
             "children":[{"name":"sdb1","path":"/dev/sdb1","model":null,"serial":null,"size":8003256320,"type":"part","ro":false,"tran":null,"mountpoint":"/mnt/stick"}]},
          {"name":"sr0","path":"/dev/sr0","model":"QEMU CD-ROM","serial":"drive-scsi0","size":734003200,"type":"rom","ro":false,"tran":null,"mountpoint":"/run/live/medium"},
          {"name":"vda","path":"/dev/vda","model":null,"serial":"BHTEST01","size":12884901888,"type":"disk","ro":"0","tran":null,"mountpoint":null},
          {"name":"vdb","path":"/dev/vdb","model":null,"serial":"RO1","size":1073741824,"type":"disk","ro":"1","tran":null,"mountpoint":null}
       ]
    }"#;

    #[test]
    fn offers_only_writable_unmounted_disks() {
        let s = candidates(LSBLK, "/dev/sr0").expect("parses");
        let names: Vec<_> = s.offered.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["sda", "vda"]);
        assert_eq!(s.offered[1].serial, "BHTEST01");
        assert_eq!(s.offered[0].transport, "sata");
        let excluded: Vec<_> = s.excluded.iter().map(|(n, r)| (n.as_str(), *r)).collect();
        assert!(excluded.contains(&("sdb", "has a mounted filesystem")));
        assert!(excluded.contains(&("sr0", "not a disk")));
        assert!(excluded.contains(&("vdb", "read-only")));
    }

    #[test]
    fn the_disk_holding_the_medium_is_never_offered() {
        // The ISO written to a USB stick and mounted from its first partition.
        let json = LSBLK.replace("/mnt/stick", "/run/live/medium");
        let s = candidates(&json, "/dev/sdb1").expect("parses");
        assert!(s.offered.iter().all(|d| d.name != "sdb"));
        assert!(
            s.excluded
                .contains(&("sdb".to_owned(), "holds the installer medium"))
        );
        // An isohybrid image mounted from the whole disk.
        let s = candidates(LSBLK, "/dev/vda").expect("parses");
        assert!(s.offered.iter().all(|d| d.name != "vda"));
    }

    #[test]
    fn an_unknown_medium_offers_nothing() {
        let err = candidates(LSBLK, "/dev/sdz1").expect_err("must refuse");
        assert!(matches!(err, DisksError::MediumNotFound(_)));
    }

    #[test]
    fn partition_paths_follow_the_kernel() {
        let mut d = candidates(LSBLK, "/dev/sr0").expect("parses").offered[0].clone();
        assert_eq!(d.partition_path(3), "/dev/sda3");
        d.path = "/dev/nvme0n1".into();
        assert_eq!(d.partition_path(1), "/dev/nvme0n1p1");
    }

    #[test]
    fn sizes_read_like_labels() {
        assert_eq!(human_size(12_884_901_888), "12.9 GB");
        assert_eq!(human_size(512), "512 B");
    }
}
