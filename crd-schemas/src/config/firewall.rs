//! The host firewall's settings: exactly what the root agent's `firewall-apply`
//! action takes, and the type of the `firewall` section of blockhostd's
//! configuration (which blockhostd sends to the agent at start). One type for
//! both ends, checked when parsed on each side.
//!
//! The ruleset built from it is default-deny for traffic to the host: only what is
//! listed here (and the essentials every host needs: established connections,
//! loopback, ICMP errors, IPv6 neighbour discovery) gets in. The management ports
//! (`knockTcpPorts`, SSH and the Proxmox API/GUI by default) stay closed to all but
//! the cluster's own nodes until the admin opens a knock for a bounded time.

use std::collections::BTreeSet;
use std::fmt;
use std::net::IpAddr;

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize};

/// Most ports one list may hold (a firewall rule's anonymous set stays small).
pub const MAX_PORTS: usize = 32;
/// Most cluster nodes.
pub const MAX_CLUSTER_NODES: usize = 64;
/// Most VM bridges.
pub const MAX_BRIDGES: usize = 16;

/// The host firewall's settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FirewallConfig {
    /// TCP ports open to everyone: the public signup page (e.g. `[443]`).
    #[serde(default)]
    pub public_tcp_ports: Vec<Port>,
    /// TCP ports closed to everyone but the cluster nodes, opened to the admin by a
    /// knock: SSH and the Proxmox API/GUI. Knocks for other ports open nothing.
    #[serde(default = "default_knock_ports")]
    pub knock_tcp_ports: Vec<Port>,
    /// The Proxmox cluster's nodes (this host's peers, IPv4 or IPv6): corosync
    /// (UDP 5405–5412), SSH (22, migration) and the API (8006) are open between them.
    #[serde(default)]
    pub cluster_nodes: Vec<IpAddr>,
    /// Bridges carrying the VMs' traffic (e.g. `vmbr0`): forwarded through the host.
    #[serde(default)]
    pub vm_bridges: Vec<IfName>,
    /// Accept DHCPv4 and DHCPv6 replies: the host takes its own address by DHCP.
    #[serde(default)]
    pub dhcp_client: bool,
    /// Accept IPv6 router advertisements: the host configures IPv6 by SLAAC.
    #[serde(default)]
    pub router_advertisements: bool,
}

impl Default for FirewallConfig {
    fn default() -> Self {
        Self {
            public_tcp_ports: Vec::new(),
            knock_tcp_ports: default_knock_ports(),
            cluster_nodes: Vec::new(),
            vm_bridges: Vec::new(),
            dhcp_client: false,
            router_advertisements: false,
        }
    }
}

fn default_knock_ports() -> Vec<Port> {
    vec![Port(22), Port(8006)]
}

/// The same fields, unchecked; [`FirewallConfig`]'s `Deserialize` checks them as a whole.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawFirewall {
    #[serde(default)]
    public_tcp_ports: Vec<Port>,
    #[serde(default = "default_knock_ports")]
    knock_tcp_ports: Vec<Port>,
    #[serde(default)]
    cluster_nodes: Vec<IpAddr>,
    #[serde(default)]
    vm_bridges: Vec<IfName>,
    #[serde(default)]
    dhcp_client: bool,
    #[serde(default)]
    router_advertisements: bool,
}

impl<'de> Deserialize<'de> for FirewallConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let r = RawFirewall::deserialize(d)?;
        let c = FirewallConfig {
            public_tcp_ports: r.public_tcp_ports,
            knock_tcp_ports: r.knock_tcp_ports,
            cluster_nodes: r.cluster_nodes,
            vm_bridges: r.vm_bridges,
            dhcp_client: r.dhcp_client,
            router_advertisements: r.router_advertisements,
        };
        c.check().map_err(serde::de::Error::custom)?;
        Ok(c)
    }
}

impl FirewallConfig {
    /// The checks `Deserialize` runs: bounded, duplicate-free lists; no port both
    /// public and knock-only; cluster nodes that can be a packet's source.
    pub fn check(&self) -> Result<(), String> {
        unique("publicTcpPorts", &self.public_tcp_ports, MAX_PORTS)?;
        unique("knockTcpPorts", &self.knock_tcp_ports, MAX_PORTS)?;
        unique("clusterNodes", &self.cluster_nodes, MAX_CLUSTER_NODES)?;
        unique("vmBridges", &self.vm_bridges, MAX_BRIDGES)?;
        if let Some(p) = self
            .public_tcp_ports
            .iter()
            .find(|p| self.knock_tcp_ports.contains(p))
        {
            return Err(format!(
                "port {p} is in both publicTcpPorts and knockTcpPorts; a public port needs no knock: remove it from one list"
            ));
        }
        for n in &self.cluster_nodes {
            if n.is_unspecified() || n.is_multicast() || n.is_loopback() {
                return Err(format!(
                    "clusterNodes: {n} cannot be a cluster node (unspecified, multicast or loopback); list the nodes' own addresses"
                ));
            }
            if let IpAddr::V6(v6) = n
                && v6.to_ipv4_mapped().is_some()
            {
                return Err(format!(
                    "clusterNodes: {n} is an IPv4-mapped address; write it as plain IPv4"
                ));
            }
        }
        Ok(())
    }
}

fn unique<T: Ord + fmt::Display>(field: &str, items: &[T], max: usize) -> Result<(), String> {
    if items.len() > max {
        return Err(format!(
            "{field} has {} entries; at most {max} are allowed",
            items.len()
        ));
    }
    let mut seen = BTreeSet::new();
    for i in items {
        if !seen.insert(i) {
            return Err(format!("{field}: {i} is listed twice"));
        }
    }
    Ok(())
}

/// A TCP or UDP port, 1–65535.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct Port(u16);

impl Port {
    /// Checks that the port is not 0.
    pub fn new(p: u16) -> Result<Self, String> {
        if p == 0 {
            Err("port 0 is not a port; use 1..=65535".into())
        } else {
            Ok(Self(p))
        }
    }
    /// The port number.
    pub const fn get(self) -> u16 {
        self.0
    }
}

impl fmt::Display for Port {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl<'de> Deserialize<'de> for Port {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Port::new(u16::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for Port {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Port".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "integer",
            "minimum": 1,
            "maximum": 65535,
            "description": "A TCP/UDP port."
        })
    }
}

/// A Linux network interface name: 1–15 characters of `A-Za-z0-9_.-`, not `.`/`..`.
/// Strict because it is written into an nftables rule and an `ip` argument.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct IfName(String);

impl IfName {
    /// Checks the name.
    pub fn new(s: impl Into<String>) -> Result<Self, String> {
        let s = s.into();
        let ok = !s.is_empty()
            && s.len() <= 15
            && s != "."
            && s != ".."
            && !s.starts_with('-')
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-');
        if ok {
            Ok(Self(s))
        } else {
            Err(format!(
                "{s:?} is not an interface name (1-15 characters of A-Z a-z 0-9 _ . -)"
            ))
        }
    }
    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for IfName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for IfName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        IfName::new(String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for IfName {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "IfName".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "pattern": "^[A-Za-z0-9_.][A-Za-z0-9_.-]{0,14}$",
            "description": "A network interface name."
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<FirewallConfig, String> {
        serde_json::from_str(s).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_close_ssh_and_the_proxmox_api() {
        let c = parse("{}").unwrap();
        assert_eq!(c, FirewallConfig::default());
        assert_eq!(c.knock_tcp_ports, vec![Port(22), Port(8006)]);
    }

    #[test]
    fn bad_values_are_refused_with_the_reason() {
        for (s, want) in [
            (r#"{"publicTcpPorts":[0]}"#, "port 0"),
            (
                r#"{"publicTcpPorts":[22]}"#,
                "both publicTcpPorts and knockTcpPorts",
            ),
            (r#"{"knockTcpPorts":[22,22]}"#, "listed twice"),
            (
                r#"{"clusterNodes":["0.0.0.0"]}"#,
                "cannot be a cluster node",
            ),
            (r#"{"clusterNodes":["::ffff:10.0.0.1"]}"#, "IPv4-mapped"),
            (r#"{"vmBridges":["vmbr0; drop"]}"#, "not an interface name"),
            (
                r#"{"vmBridges":["averyveryverylongname"]}"#,
                "not an interface name",
            ),
            (r#"{"extra":1}"#, "unknown field"),
        ] {
            let err = parse(s).unwrap_err();
            assert!(err.contains(want), "{s}: {err}");
        }
        let many: Vec<u16> = (1..=33).collect();
        let err = parse(&format!(r#"{{"publicTcpPorts":{many:?}}}"#)).unwrap_err();
        assert!(err.contains("at most 32"), "{err}");
    }
}
