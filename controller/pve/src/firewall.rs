//! Typed requests and responses of the Proxmox VE firewall endpoints BlockHost uses: a
//! VM's firewall options (`/nodes/{node}/qemu/{vmid}/firewall/options`), its IP sets
//! (`…/firewall/ipset[/{name}[/{cidr}]]`) and whether the datacenter firewall is on
//! (`/cluster/firewall/options`).
//!
//! Parameter names and values follow PVE 9's API schema. An option PVE leaves out of
//! its answer has the default pve-firewall applies when it builds the rules, which
//! differs per option (`macfilter`, `ndp` and `dhcp` count as on, `ipfilter`, `radv`
//! and `enable` as off, `policy_in` as `DROP`); [`FirewallOptions`] keeps "not set"
//! apart from "off" and [`FirewallOptions::effective`] applies those defaults, so a
//! comparison never mistakes a default for drift.

use std::fmt;
use std::net::IpAddr;

use serde::Deserialize;

use crate::de;
use crate::types::bool_param;

/// The name of the IP set PVE's `ipfilter` option checks net0's source addresses against.
pub const IPFILTER_NET0: &str = "ipfilter-net0";

/// What a firewall chain does with a packet no rule matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum FirewallPolicy {
    /// Let it through.
    Accept,
    /// Refuse it with an ICMP error (TCP reset).
    Reject,
    /// Drop it silently.
    Drop,
}

impl FirewallPolicy {
    /// PVE's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            FirewallPolicy::Accept => "ACCEPT",
            FirewallPolicy::Reject => "REJECT",
            FirewallPolicy::Drop => "DROP",
        }
    }
}

impl fmt::Display for FirewallPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A VM's firewall options, as `GET …/firewall/options` answers them and `PUT` takes
/// them: `None` is "not set" (PVE's default applies; a `PUT` leaves it as it is).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct FirewallOptions {
    /// The VM's firewall is on (it also needs `firewall=1` on the NIC and the
    /// datacenter firewall on).
    #[serde(default, deserialize_with = "de::opt_bool")]
    pub enable: Option<bool>,
    /// Drop packets whose source address is not in the NIC's `ipfilter-netN` set.
    #[serde(default, deserialize_with = "de::opt_bool")]
    pub ipfilter: Option<bool>,
    /// Drop packets whose source MAC is not the NIC's configured MAC (default on).
    #[serde(default, deserialize_with = "de::opt_bool")]
    pub macfilter: Option<bool>,
    /// Let DHCP requests out and answers in before the MAC and IP filters. The API
    /// schema says the default is off, but pve-firewall lets DHCP through unless the
    /// option is explicitly 0, so unset counts as on.
    #[serde(default, deserialize_with = "de::opt_bool")]
    pub dhcp: Option<bool>,
    /// Let IPv6 neighbour discovery through (default on).
    #[serde(default, deserialize_with = "de::opt_bool")]
    pub ndp: Option<bool>,
    /// Let the VM send IPv6 router advertisements (default off).
    #[serde(default, deserialize_with = "de::opt_bool")]
    pub radv: Option<bool>,
    /// Incoming traffic no rule matched (default `DROP`).
    #[serde(default)]
    pub policy_in: Option<FirewallPolicy>,
    /// Outgoing traffic no rule matched (default `ACCEPT`).
    #[serde(default)]
    pub policy_out: Option<FirewallPolicy>,
    /// The digest PVE sends with the options (optimistic concurrency); never sent back.
    #[serde(default)]
    pub digest: Option<String>,
}

/// A VM's firewall options with PVE's defaults applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EffectiveOptions {
    /// See [`FirewallOptions::enable`].
    pub enable: bool,
    /// See [`FirewallOptions::ipfilter`].
    pub ipfilter: bool,
    /// See [`FirewallOptions::macfilter`].
    pub macfilter: bool,
    /// See [`FirewallOptions::dhcp`].
    pub dhcp: bool,
    /// See [`FirewallOptions::ndp`].
    pub ndp: bool,
    /// See [`FirewallOptions::radv`].
    pub radv: bool,
    /// See [`FirewallOptions::policy_in`].
    pub policy_in: FirewallPolicy,
    /// See [`FirewallOptions::policy_out`].
    pub policy_out: FirewallPolicy,
}

impl EffectiveOptions {
    /// Every option set explicitly, for a `PUT` that leaves nothing to a default.
    pub fn explicit(self) -> FirewallOptions {
        FirewallOptions {
            enable: Some(self.enable),
            ipfilter: Some(self.ipfilter),
            macfilter: Some(self.macfilter),
            dhcp: Some(self.dhcp),
            ndp: Some(self.ndp),
            radv: Some(self.radv),
            policy_in: Some(self.policy_in),
            policy_out: Some(self.policy_out),
            digest: None,
        }
    }

    /// The options that differ from `want`, as `name value (want value)` phrases.
    pub fn differences(&self, want: &EffectiveOptions) -> Vec<String> {
        let mut out = Vec::new();
        let bools = [
            ("enable", self.enable, want.enable),
            ("ipfilter", self.ipfilter, want.ipfilter),
            ("macfilter", self.macfilter, want.macfilter),
            ("dhcp", self.dhcp, want.dhcp),
            ("ndp", self.ndp, want.ndp),
            ("radv", self.radv, want.radv),
        ];
        for (name, have, want) in bools {
            if have != want {
                out.push(format!(
                    "{name} {} (want {})",
                    u8::from(have),
                    u8::from(want)
                ));
            }
        }
        for (name, have, want) in [
            ("policy_in", self.policy_in, want.policy_in),
            ("policy_out", self.policy_out, want.policy_out),
        ] {
            if have != want {
                out.push(format!("{name} {have} (want {want})"));
            }
        }
        out
    }
}

impl FirewallOptions {
    /// The options with PVE's defaults for what is not set.
    pub fn effective(&self) -> EffectiveOptions {
        EffectiveOptions {
            enable: self.enable.unwrap_or(false),
            ipfilter: self.ipfilter.unwrap_or(false),
            macfilter: self.macfilter.unwrap_or(true),
            dhcp: self.dhcp.unwrap_or(true),
            ndp: self.ndp.unwrap_or(true),
            radv: self.radv.unwrap_or(false),
            policy_in: self.policy_in.unwrap_or(FirewallPolicy::Drop),
            policy_out: self.policy_out.unwrap_or(FirewallPolicy::Accept),
        }
    }

    /// The `PUT` form: the options that are set.
    pub(crate) fn to_form(&self) -> Vec<(String, String)> {
        let mut f = Vec::new();
        let bools = [
            ("enable", self.enable),
            ("ipfilter", self.ipfilter),
            ("macfilter", self.macfilter),
            ("dhcp", self.dhcp),
            ("ndp", self.ndp),
            ("radv", self.radv),
        ];
        for (k, v) in bools {
            if let Some(v) = v {
                f.push((k.to_owned(), bool_param(v)));
            }
        }
        for (k, v) in [
            ("policy_in", self.policy_in),
            ("policy_out", self.policy_out),
        ] {
            if let Some(v) = v {
                f.push((k.to_owned(), v.as_str().to_owned()));
            }
        }
        f
    }
}

/// One entry of an IP set (`GET …/firewall/ipset/{name}`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct IpSetEntry {
    /// An address, a network (`10.0.0.0/24`) or an alias name, as PVE stores it (host
    /// addresses without `/32` or `/128`).
    pub cidr: String,
    /// The entry excludes its addresses instead of including them.
    #[serde(default, deserialize_with = "de::bool")]
    pub nomatch: bool,
    /// Free text.
    #[serde(default)]
    pub comment: Option<String>,
}

impl IpSetEntry {
    /// The single host address this entry matches (`10.0.0.5`, `10.0.0.5/32`,
    /// `2001:db8::5/128`), or `None` for a network, an alias or a `nomatch` entry.
    pub fn host(&self) -> Option<IpAddr> {
        if self.nomatch {
            return None;
        }
        let (addr, len) = match self.cidr.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (self.cidr.as_str(), None),
        };
        let ip: IpAddr = addr.parse().ok()?;
        let full = if ip.is_ipv4() { "32" } else { "128" };
        match len {
            None => Some(ip),
            Some(l) if l == full => Some(ip),
            Some(_) => None,
        }
    }
}

/// The part of the datacenter's firewall options (`GET /cluster/firewall/options`)
/// that decides whether any VM firewall is in force.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct ClusterFirewallOptions {
    /// 0 or absent: off. PVE also keeps a time stamp above 1 here (the time the
    /// firewall was enabled at), which counts as on.
    #[serde(default, deserialize_with = "de::opt_int")]
    pub enable: Option<u64>,
}

impl ClusterFirewallOptions {
    /// Whether the datacenter firewall is on.
    pub fn enabled(&self) -> bool {
        self.enable.is_some_and(|e| e > 0)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn options_keep_unset_apart_from_off_and_apply_pves_defaults() {
        let o: FirewallOptions = serde_json::from_str(
            r#"{"enable":1,"ipfilter":"1","policy_in":"ACCEPT","digest":"ab"}"#,
        )
        .unwrap();
        assert_eq!(o.macfilter, None);
        let e = o.effective();
        assert!(e.enable && e.ipfilter && e.macfilter && e.ndp && e.dhcp && !e.radv);
        assert_eq!(
            (e.policy_in, e.policy_out),
            (FirewallPolicy::Accept, FirewallPolicy::Accept)
        );
        assert_eq!(
            FirewallOptions::default().effective().policy_in,
            FirewallPolicy::Drop
        );
        let mut want = e;
        want.radv = true;
        want.policy_out = FirewallPolicy::Drop;
        assert_eq!(
            e.differences(&want),
            ["radv 0 (want 1)", "policy_out ACCEPT (want DROP)"]
        );
        let form = e.explicit().to_form();
        assert_eq!(form.len(), 8);
        assert!(form.contains(&("macfilter".into(), "1".into())));
        assert!(form.contains(&("policy_in".into(), "ACCEPT".into())));
    }

    #[test]
    fn ipset_entries_name_hosts_only() {
        let e = |cidr: &str, nomatch| IpSetEntry {
            cidr: cidr.into(),
            nomatch,
            comment: None,
        };
        assert_eq!(
            e("10.0.0.5", false).host(),
            Some("10.0.0.5".parse().unwrap())
        );
        assert_eq!(
            e("10.0.0.5/32", false).host(),
            Some("10.0.0.5".parse().unwrap())
        );
        assert_eq!(
            e("2001:db8::5/128", false).host(),
            Some("2001:db8::5".parse().unwrap())
        );
        for other in ["10.0.0.0/24", "2001:db8::/64", "myalias"] {
            assert_eq!(e(other, false).host(), None, "{other}");
        }
        assert_eq!(e("10.0.0.5", true).host(), None);
        let c: ClusterFirewallOptions = serde_json::from_str(r#"{"enable":1765000000}"#).unwrap();
        assert!(c.enabled());
        assert!(!ClusterFirewallOptions::default().enabled());
    }
}
