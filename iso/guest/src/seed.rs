//! A NoCloud cloud-init drive with the files Proxmox VE writes for a Linux guest
//! (`citype nocloud`): `user-data` (`#cloud-config` with hostname, `user`,
//! optional `password` and `ssh_authorized_keys`, `chpasswd: {expire: False}`,
//! `users: [default]`, `package_upgrade` per `ciupgrade`), `meta-data`
//! (`instance-id`), `network-config` (version 1: one physical NIC matched by MAC
//! with a static `ipconfig0` address, and a nameserver entry) and an empty
//! `vendor-data`, on an ISO 9660 volume labelled `cidata`.

use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

/// What Proxmox's `ci*` and `ipconfig0` options would say.
#[derive(Debug, Clone)]
pub struct CloudInit {
    /// `name` of the VM (hostname and fqdn).
    pub hostname: String,
    /// `ciuser`.
    pub user: String,
    /// `cipassword` (PVE passes a crypt hash); None: no password.
    pub password: Option<String>,
    /// `sshkeys`.
    pub ssh_keys: Vec<String>,
    /// `ciupgrade` (PVE's default is on; VMs without a network must turn it off).
    pub upgrade: bool,
    /// net0's MAC address.
    pub mac: String,
    /// `ipconfig0` `ip=ADDRESS/PREFIX`.
    pub address: String,
    /// Prefix length.
    pub prefix: u8,
    /// `ipconfig0` `gw=`.
    pub gateway: String,
    /// `nameserver`.
    pub nameserver: String,
    /// `searchdomain`.
    pub searchdomain: String,
}

/// Why the drive could not be made.
#[derive(Debug, thiserror::Error)]
pub enum SeedError {
    /// Writing a file failed.
    #[error("cannot write {0}")]
    Write(PathBuf, #[source] std::io::Error),
    /// xorriso could not run or failed.
    #[error("xorriso failed to make {path} ({detail}); apt-get install xorriso")]
    Iso {
        /// The ISO.
        path: PathBuf,
        /// Its error output or why it did not start.
        detail: String,
    },
}

impl CloudInit {
    /// `user-data`, as PVE's `cloudinit_userdata` writes it.
    pub fn user_data(&self) -> String {
        let mut s = format!(
            "#cloud-config\nhostname: {h}\nmanage_etc_hosts: true\nfqdn: {h}\nuser: {u}\n",
            h = self.hostname,
            u = self.user
        );
        if let Some(p) = &self.password {
            s.push_str(&format!("password: {p}\n"));
        }
        if !self.ssh_keys.is_empty() {
            s.push_str("ssh_authorized_keys:\n");
            for k in &self.ssh_keys {
                s.push_str(&format!("  - {k}\n"));
            }
        }
        s.push_str("chpasswd:\n  expire: False\nusers:\n  - default\n");
        if self.upgrade {
            s.push_str("package_upgrade: true\n");
        }
        s
    }

    /// `network-config` (version 1), as PVE's `nocloud_network` writes it.
    pub fn network_config(&self) -> String {
        let mask = prefix_to_mask(self.prefix);
        format!(
            "version: 1\nconfig:\n    - type: physical\n      name: eth0\n      mac_address: '{mac}'\n      subnets:\n      - type: static\n        address: '{a}'\n        netmask: '{mask}'\n        gateway: '{g}'\n    - type: nameserver\n      address:\n      - '{ns}'\n      search:\n      - '{sd}'\n",
            mac = self.mac,
            a = self.address,
            g = self.gateway,
            ns = self.nameserver,
            sd = self.searchdomain
        )
    }

    /// `meta-data`: PVE's instance id is a SHA-1 of the cloud-init settings; any
    /// digest of them does (a new id makes cloud-init run its per-instance steps).
    pub fn meta_data(&self) -> String {
        let mut h = Sha256::new();
        h.update(self.user_data());
        h.update(self.network_config());
        format!("instance-id: {}\n", hex::encode(&h.finalize()[..20]))
    }

    /// Writes the four files into `dir` and makes `dir/seed.iso` from them.
    pub fn write_iso(&self, dir: &Path) -> Result<PathBuf, SeedError> {
        let files = dir.join("cidata");
        std::fs::create_dir_all(&files).map_err(|e| SeedError::Write(files.clone(), e))?;
        for (name, text) in [
            ("user-data", self.user_data()),
            ("meta-data", self.meta_data()),
            ("network-config", self.network_config()),
            ("vendor-data", String::new()),
        ] {
            let p = files.join(name);
            std::fs::write(&p, text).map_err(|e| SeedError::Write(p.clone(), e))?;
        }
        let iso = dir.join("seed.iso");
        let out = Command::new("xorriso")
            .args([
                "-as",
                "mkisofs",
                "-quiet",
                "-iso-level",
                "3",
                "-R",
                "-J",
                "-V",
                "cidata",
                "-o",
            ])
            .arg(&iso)
            .arg(&files)
            .output()
            .map_err(|e| SeedError::Iso {
                path: iso.clone(),
                detail: e.to_string(),
            })?;
        if !out.status.success() {
            return Err(SeedError::Iso {
                path: iso,
                detail: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            });
        }
        Ok(iso)
    }
}

fn prefix_to_mask(prefix: u8) -> String {
    let bits: u32 = if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix.min(32)))
    };
    std::net::Ipv4Addr::from(bits).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> CloudInit {
        CloudInit {
            hostname: "vm-1".into(),
            user: "alice".into(),
            password: None,
            ssh_keys: vec!["ssh-ed25519 AAAA test".into()],
            upgrade: false,
            mac: "bc:24:11:00:00:01".into(),
            address: "10.0.2.50".into(),
            prefix: 24,
            gateway: "10.0.2.2".into(),
            nameserver: "10.0.2.3".into(),
            searchdomain: "example.invalid".into(),
        }
    }

    #[test]
    fn files_have_proxmox_shape() {
        let c = sample();
        let u = c.user_data();
        assert!(u.starts_with("#cloud-config\nhostname: vm-1\n"), "{u}");
        assert!(u.contains("user: alice\n") && u.contains("  - ssh-ed25519 AAAA test\n"));
        assert!(!u.contains("password") && !u.contains("package_upgrade"));
        let n = c.network_config();
        assert!(
            n.contains("netmask: '255.255.255.0'")
                && n.contains("mac_address: 'bc:24:11:00:00:01'")
        );
        assert!(c.meta_data().starts_with("instance-id: "));
        assert_eq!(prefix_to_mask(0), "0.0.0.0");
        assert_eq!(prefix_to_mask(32), "255.255.255.255");
    }
}
