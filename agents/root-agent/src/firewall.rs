//! The host firewall as nftables text, built from the typed configuration, and
//! the check of what the kernel holds against it.
//!
//! Everything lives in one `inet` table ([`TABLE`]), so it covers IPv4 and IPv6 in
//! one place and coexists with Proxmox's own firewall: a packet must pass every
//! table's base chains on a hook, so our drops hold whatever other tables accept,
//! and we never touch theirs.
//!
//! Knocks are elements of three sets with `flags timeout` — `knock4`
//! (`ipv4_addr . inet_service`), `knock6` (`ipv6_addr . inet_service`; one set
//! cannot hold both families) and `knock_any` (`inet_service`, any source). The
//! kernel removes an element when its timeout passes, so a knock closes on time
//! even when the agent or the daemon is killed or never comes back.
//!
//! An apply is one `nft -f` transaction that re-creates the chains' rules in place
//! (`add` + `flush` + rules) and leaves the knock sets alone, so there is no
//! moment without rules and open knocks survive a configuration change.
//!
//! Each rule carries a comment `blockhost:<id>:<digest of its text>`; verifying
//! reads the table back (`nft -j`) and compares chains, hooks, policies, sets and
//! the sequence of rule comments with what this configuration builds, so a rule
//! that was added, removed or built from another configuration is reported.

use std::fmt::Write as _;
use std::net::IpAddr;

use blockhost_crd::config::FirewallConfig;
use blockhost_crd::config::firewall::Port;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::proto::{KnockAdd, KnockRemove, KnockSource, OpenKnock};

/// The table's name (family `inet`).
pub const TABLE: &str = "blockhost";
/// Corosync (knet) ports between cluster nodes.
pub const COROSYNC_PORTS: &str = "5405-5412";
/// Ports open between cluster nodes besides corosync: SSH (migration) and the API.
pub const CLUSTER_TCP_PORTS: [u16; 2] = [22, 8006];

/// The knock sets: name, key type.
const SETS: [(&str, &str); 3] = [
    ("knock4", "ipv4_addr . inet_service"),
    ("knock6", "ipv6_addr . inet_service"),
    ("knock_any", "inet_service"),
];

/// A base chain: name, hook, policy.
const CHAINS: [(&str, &str); 2] = [("input", "input"), ("forward", "forward")];

/// One rule of the ruleset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// The chain it is in.
    pub chain: &'static str,
    /// A stable name (`established`, `knock4`, …).
    pub id: String,
    /// The rule's text, without its comment.
    pub body: String,
}

impl Rule {
    fn new(chain: &'static str, id: impl Into<String>, body: impl Into<String>) -> Self {
        Self {
            chain,
            id: id.into(),
            body: body.into(),
        }
    }
    /// The comment that identifies the rule: `blockhost:<id>:<first 8 hex of sha256(body)>`.
    pub fn comment(&self) -> String {
        let d = Sha256::digest(self.body.as_bytes());
        format!("blockhost:{}:{}", self.id, hex::encode(&d[..4]))
    }
}

/// The whole ruleset built from one configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ruleset {
    /// Every rule, in order (input chain first, then forward).
    pub rules: Vec<Rule>,
}

fn port_set(ports: &[u16]) -> String {
    let items: Vec<String> = ports.iter().map(u16::to_string).collect();
    format!("{{ {} }}", items.join(", "))
}

fn ports(p: &[Port]) -> Vec<u16> {
    p.iter().map(|p| p.get()).collect()
}

/// Builds the ruleset for a configuration.
pub fn build(c: &FirewallConfig) -> Ruleset {
    let mut r = Vec::new();
    let inp = "input";
    r.push(Rule::new(
        inp,
        "established",
        "ct state established,related accept",
    ));
    r.push(Rule::new(inp, "invalid", "ct state invalid drop"));
    r.push(Rule::new(inp, "loopback", "iifname \"lo\" accept"));
    // ICMP errors keep path MTU discovery and error reporting working; echo keeps
    // the host pingable, which monitoring relies on.
    r.push(Rule::new(
        inp,
        "icmp",
        "icmp type { echo-request, destination-unreachable, time-exceeded, parameter-problem } accept",
    ));
    r.push(Rule::new(
        inp,
        "icmpv6",
        "icmpv6 type { echo-request, destination-unreachable, packet-too-big, time-exceeded, parameter-problem } accept",
    ));
    // Neighbour discovery is IPv6's ARP; hop limit 255 proves it is on-link.
    r.push(Rule::new(
        inp,
        "ndp",
        "icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert } ip6 hoplimit 255 accept",
    ));
    if c.router_advertisements {
        r.push(Rule::new(
            inp,
            "router-advert",
            "ip6 saddr fe80::/10 icmpv6 type nd-router-advert ip6 hoplimit 255 accept",
        ));
    }
    if c.dhcp_client {
        r.push(Rule::new(inp, "dhcp4", "udp sport 67 udp dport 68 accept"));
        r.push(Rule::new(
            inp,
            "dhcp6",
            "ip6 saddr fe80::/10 udp sport 547 udp dport 546 accept",
        ));
    }
    if !c.public_tcp_ports.is_empty() {
        r.push(Rule::new(
            inp,
            "public",
            format!("tcp dport {} accept", port_set(&ports(&c.public_tcp_ports))),
        ));
    }
    let v4: Vec<String> = c
        .cluster_nodes
        .iter()
        .filter(|a| a.is_ipv4())
        .map(IpAddr::to_string)
        .collect();
    let v6: Vec<String> = c
        .cluster_nodes
        .iter()
        .filter(|a| a.is_ipv6())
        .map(IpAddr::to_string)
        .collect();
    for (fam, nodes) in [("ip", &v4), ("ip6", &v6)] {
        if nodes.is_empty() {
            continue;
        }
        let set = format!("{{ {} }}", nodes.join(", "));
        r.push(Rule::new(
            inp,
            format!("cluster-corosync-{fam}"),
            format!("{fam} saddr {set} udp dport {COROSYNC_PORTS} accept"),
        ));
        r.push(Rule::new(
            inp,
            format!("cluster-tcp-{fam}"),
            format!(
                "{fam} saddr {set} tcp dport {} accept",
                port_set(&CLUSTER_TCP_PORTS)
            ),
        ));
    }
    if !c.knock_tcp_ports.is_empty() {
        // The allowlist is part of each rule: an element for any other port opens nothing.
        let allow = port_set(&ports(&c.knock_tcp_ports));
        r.push(Rule::new(
            inp,
            "knock4",
            format!("tcp dport {allow} ip saddr . tcp dport @knock4 accept"),
        ));
        r.push(Rule::new(
            inp,
            "knock6",
            format!("tcp dport {allow} ip6 saddr . tcp dport @knock6 accept"),
        ));
        r.push(Rule::new(
            inp,
            "knock-any",
            format!("tcp dport {allow} tcp dport @knock_any accept"),
        ));
    }

    let fwd = "forward";
    r.push(Rule::new(
        fwd,
        "established",
        "ct state established,related accept",
    ));
    if !c.vm_bridges.is_empty() {
        // Routed VM traffic crosses the bridge itself; bridged traffic (seen here when
        // br_netfilter is loaded, as Proxmox's firewall does) crosses the VMs' own
        // ports: tap (VM), veth (container), fwpr/fwln (behind a Proxmox VM firewall).
        let mut names: Vec<String> = c
            .vm_bridges
            .iter()
            .map(|b| format!("\"{}\"", b.as_str()))
            .collect();
        names.extend(["\"tap*\"", "\"veth*\"", "\"fwpr*\"", "\"fwln*\""].map(String::from));
        for (i, n) in names.iter().enumerate() {
            r.push(Rule::new(
                fwd,
                format!("vm-in-{i}"),
                format!("iifname {n} accept"),
            ));
            r.push(Rule::new(
                fwd,
                format!("vm-out-{i}"),
                format!("oifname {n} accept"),
            ));
        }
    }
    Ruleset { rules: r }
}

impl Ruleset {
    /// The `nft -f` script that puts this ruleset in force in one transaction,
    /// keeping the knock sets and their elements.
    pub fn apply_script(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "add table inet {TABLE}");
        for (name, ty) in SETS {
            let _ = writeln!(
                s,
                "add set inet {TABLE} {name} {{ type {ty}; flags timeout; }}"
            );
        }
        self.write_chains(&mut s);
        s
    }

    /// The script that deletes the table (with its knocks) and builds it anew: for
    /// when the table in the kernel cannot be updated in place (a set of another type).
    pub fn replace_script(&self) -> String {
        let mut s = String::new();
        // `add` first so `delete` cannot fail on a missing table.
        let _ = writeln!(s, "add table inet {TABLE}");
        let _ = writeln!(s, "delete table inet {TABLE}");
        s.push_str(&self.apply_script());
        s
    }

    fn write_chains(&self, s: &mut String) {
        for (chain, hook) in CHAINS {
            let _ = writeln!(
                s,
                "add chain inet {TABLE} {chain} {{ type filter hook {hook} priority filter; policy drop; }}"
            );
            let _ = writeln!(s, "flush chain inet {TABLE} {chain}");
            for r in self.rules.iter().filter(|r| r.chain == chain) {
                let _ = writeln!(
                    s,
                    "add rule inet {TABLE} {chain} {} comment \"{}\"",
                    r.body,
                    r.comment()
                );
            }
        }
    }

    /// Compares the table read back with `nft -j list table inet blockhost` with
    /// this ruleset; each difference is one sentence. `None`: the table is absent.
    pub fn verify(&self, readback: Option<&Value>) -> Vec<String> {
        let Some(rb) = readback else {
            return vec![format!(
                "table inet {TABLE} is not in the kernel: nothing is filtered; apply the firewall"
            )];
        };
        let items = objects(rb);
        let mut problems = Vec::new();
        for (name, hook) in CHAINS {
            match items.iter().find_map(|o| {
                o.get("chain")
                    .filter(|c| c.get("name").and_then(Value::as_str) == Some(name))
            }) {
                None => problems.push(format!("chain {name} is missing")),
                Some(c) => {
                    let got = |k: &str| c.get(k).and_then(Value::as_str).unwrap_or("");
                    if got("type") != "filter" || got("hook") != hook {
                        problems.push(format!(
                            "chain {name} is hooked as {} {}, not filter {hook}",
                            got("type"),
                            got("hook")
                        ));
                    }
                    if got("policy") != "drop" {
                        problems.push(format!(
                            "chain {name} has policy {:?}, not drop",
                            got("policy")
                        ));
                    }
                }
            }
            let want: Vec<String> = self
                .rules
                .iter()
                .filter(|r| r.chain == name)
                .map(Rule::comment)
                .collect();
            let have: Vec<String> = items
                .iter()
                .filter_map(|o| o.get("rule"))
                .filter(|r| r.get("chain").and_then(Value::as_str) == Some(name))
                .map(|r| {
                    r.get("comment")
                        .and_then(Value::as_str)
                        .unwrap_or("(a rule without comment)")
                        .to_string()
                })
                .collect();
            if want != have {
                let extra: Vec<&String> = have.iter().filter(|h| !want.contains(h)).collect();
                let missing: Vec<&String> = want.iter().filter(|w| !have.contains(w)).collect();
                problems.push(format!(
                    "chain {name} differs from the configuration: {} rules in force, {} expected; missing {missing:?}, unexpected {extra:?}{}",
                    have.len(),
                    want.len(),
                    if missing.is_empty() && extra.is_empty() { " (order differs)" } else { "" }
                ));
            }
        }
        for o in &items {
            if let Some(c) = o.get("chain") {
                let n = c.get("name").and_then(Value::as_str).unwrap_or("");
                if !CHAINS.iter().any(|(name, _)| *name == n) {
                    problems.push(format!("unexpected chain {n:?}"));
                }
            }
        }
        for (name, ty) in SETS {
            let want_ty: Vec<&str> = ty.split(" . ").collect();
            match items.iter().find_map(|o| {
                o.get("set")
                    .filter(|s| s.get("name").and_then(Value::as_str) == Some(name))
            }) {
                None => problems.push(format!("set {name} is missing: knocks cannot open")),
                Some(s) => {
                    let have_ty: Vec<&str> = match s.get("type") {
                        Some(Value::String(t)) => vec![t.as_str()],
                        Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
                        _ => Vec::new(),
                    };
                    let timeout = s
                        .get("flags")
                        .and_then(Value::as_array)
                        .is_some_and(|f| f.iter().any(|x| x.as_str() == Some("timeout")));
                    if have_ty != want_ty || !timeout {
                        problems.push(format!(
                            "set {name} is not `{ty}` with flags timeout; re-apply rebuilds it"
                        ));
                    }
                }
            }
        }
        problems
    }
}

fn objects(rb: &Value) -> Vec<&serde_json::Map<String, Value>> {
    rb.get("nftables")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_object).collect())
        .unwrap_or_default()
}

fn set_and_key(source: Option<KnockSource>, port: Port) -> (&'static str, String) {
    match source.map(KnockSource::addr) {
        Some(IpAddr::V4(a)) => ("knock4", format!("{a} . {port}")),
        Some(IpAddr::V6(a)) => ("knock6", format!("{a} . {port}")),
        None => ("knock_any", port.to_string()),
    }
}

/// The script that opens (or re-opens, restarting its time) a knock. `add` then
/// `delete` then `add` with the timeout, in one transaction: `add` alone would keep
/// an existing element's old expiry.
pub fn knock_add_script(k: &KnockAdd) -> String {
    let mut s = String::new();
    for p in k.ports.ports() {
        let (set, key) = set_and_key(k.source, *p);
        let _ = writeln!(s, "add element inet {TABLE} {set} {{ {key} }}");
        let _ = writeln!(s, "delete element inet {TABLE} {set} {{ {key} }}");
        let _ = writeln!(
            s,
            "add element inet {TABLE} {set} {{ {key} timeout {}s }}",
            k.duration_secs.secs()
        );
    }
    s
}

/// The script that closes a knock, whether or not it is open.
pub fn knock_remove_script(k: &KnockRemove) -> String {
    let mut s = String::new();
    for p in k.ports.ports() {
        let (set, key) = set_and_key(k.source, *p);
        let _ = writeln!(s, "add element inet {TABLE} {set} {{ {key} }}");
        let _ = writeln!(s, "delete element inet {TABLE} {set} {{ {key} }}");
    }
    s
}

/// The open knocks in a table read back with `nft -j`.
pub fn open_knocks(readback: &Value) -> Vec<OpenKnock> {
    let mut out = Vec::new();
    for o in objects(readback) {
        let Some(set) = o.get("set") else { continue };
        let name = set.get("name").and_then(Value::as_str).unwrap_or("");
        if !SETS.iter().any(|(n, _)| *n == name) {
            continue;
        }
        for e in set
            .get("elem")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            // Elements with a timeout are objects {"elem": {"val", "timeout", "expires"}}.
            let Some(inner) = e.get("elem") else { continue };
            let val = inner.get("val");
            let (source, port) = match val {
                Some(Value::Object(c)) => {
                    let parts = c.get("concat").and_then(Value::as_array);
                    let addr = parts
                        .and_then(|p| p.first())
                        .and_then(Value::as_str)
                        .and_then(|s| s.parse::<IpAddr>().ok());
                    let port = parts.and_then(|p| p.get(1)).and_then(Value::as_u64);
                    (addr, port)
                }
                Some(Value::Number(n)) => (None, n.as_u64()),
                _ => (None, None),
            };
            let Some(port) = port.and_then(|p| u16::try_from(p).ok()) else {
                continue;
            };
            if name != "knock_any" && source.is_none() {
                continue;
            }
            out.push(OpenKnock {
                source,
                port,
                timeout_secs: inner.get("timeout").and_then(Value::as_u64).unwrap_or(0),
                expires_secs: inner.get("expires").and_then(Value::as_u64).unwrap_or(0),
            });
        }
    }
    out
}

/// True when every character of a generated script is one the generator writes;
/// a parameter that smuggled anything else (a quote, a newline, a `;`) through
/// parsing would show here. The fuzz target asserts it.
pub fn script_is_plain(script: &str) -> bool {
    script.lines().all(|l| {
        l.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b" .:{},;\"_-/@*".contains(&b))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{KnockDuration, KnockPorts};

    fn cfg(json: &str) -> FirewallConfig {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn default_ruleset_closes_management_ports() {
        let r = build(&FirewallConfig::default());
        let s = r.apply_script();
        assert!(s.contains("policy drop"), "{s}");
        assert!(s.contains("tcp dport { 22, 8006 } ip saddr . tcp dport @knock4 accept"));
        assert!(!s.contains("tcp dport { 22, 8006 } accept"), "{s}");
        assert!(!s.contains("dhcp"), "{s}");
        assert!(script_is_plain(&s), "{s}");
    }

    #[test]
    fn configured_parts_appear() {
        let r = build(&cfg(
            r#"{"publicTcpPorts":[443],"clusterNodes":["192.0.2.11","2001:db8::11"],
               "vmBridges":["vmbr0"],"dhcpClient":true,"routerAdvertisements":true}"#,
        ));
        let s = r.apply_script();
        for want in [
            "tcp dport { 443 } accept",
            "ip saddr { 192.0.2.11 } udp dport 5405-5412 accept",
            "ip6 saddr { 2001:db8::11 } tcp dport { 22, 8006 } accept",
            "udp sport 67 udp dport 68 accept",
            "nd-router-advert",
            "iifname \"vmbr0\" accept",
            "oifname \"tap*\" accept",
        ] {
            assert!(s.contains(want), "{want} missing from\n{s}");
        }
        // Comments change with the rule text, so a stale table is seen.
        let other = build(&cfg(r#"{"publicTcpPorts":[8443]}"#));
        let c1 = r.rules.iter().find(|x| x.id == "public").unwrap().comment();
        let c2 = other
            .rules
            .iter()
            .find(|x| x.id == "public")
            .unwrap()
            .comment();
        assert_ne!(c1, c2);
    }

    #[test]
    fn knock_scripts_restart_the_timer() {
        let k = KnockAdd {
            source: Some(KnockSource::new("2001:db8::5".parse().unwrap()).unwrap()),
            ports: KnockPorts::new(vec![Port::new(22).unwrap()]).unwrap(),
            duration_secs: KnockDuration::new(300).unwrap(),
        };
        assert_eq!(
            knock_add_script(&k),
            "add element inet blockhost knock6 { 2001:db8::5 . 22 }\n\
             delete element inet blockhost knock6 { 2001:db8::5 . 22 }\n\
             add element inet blockhost knock6 { 2001:db8::5 . 22 timeout 300s }\n"
        );
        let r = KnockRemove {
            source: None,
            ports: KnockPorts::new(vec![Port::new(8006).unwrap()]).unwrap(),
        };
        assert!(
            knock_remove_script(&r).contains("delete element inet blockhost knock_any { 8006 }")
        );
    }

    #[test]
    fn verify_reports_differences_and_knocks_are_read() {
        let r = build(&FirewallConfig::default());
        assert_eq!(r.verify(None).len(), 1);
        let input: Vec<Value> = r
            .rules
            .iter()
            .filter(|x| x.chain == "input")
            .map(|x| serde_json::json!({"rule": {"chain": "input", "comment": x.comment()}}))
            .collect();
        let mut items = vec![
            serde_json::json!({"chain": {"name": "input", "type": "filter", "hook": "input", "policy": "drop"}}),
            serde_json::json!({"chain": {"name": "forward", "type": "filter", "hook": "forward", "policy": "accept"}}),
            serde_json::json!({"set": {"name": "knock4", "type": ["ipv4_addr", "inet_service"], "flags": ["timeout"],
                "elem": [{"elem": {"val": {"concat": ["10.0.0.2", 22]}, "timeout": 300, "expires": 250}}]}}),
            serde_json::json!({"set": {"name": "knock6", "type": ["ipv6_addr", "inet_service"], "flags": ["timeout"]}}),
            serde_json::json!({"set": {"name": "knock_any", "type": "inet_service", "flags": ["timeout"],
                "elem": [{"elem": {"val": 8006, "timeout": 10, "expires": 9}}]}}),
        ];
        items.extend(input);
        let rb = serde_json::json!({ "nftables": items });
        let problems = r.verify(Some(&rb));
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].contains("policy \"accept\""), "{problems:?}");
        assert!(
            problems[1].contains("chain forward differs"),
            "{problems:?}"
        );
        let k = open_knocks(&rb);
        assert_eq!(k.len(), 2);
        assert_eq!(k[0].source, Some("10.0.0.2".parse().unwrap()));
        assert_eq!((k[0].port, k[0].expires_secs), (22, 250));
        assert_eq!((k[1].source, k[1].port), (None, 8006));
    }
}
