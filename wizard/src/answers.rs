//! The operator's answers, step by step, kept on the server (`answers.json`, no
//! secrets: the Proxmox password goes to its own 0600 file), and the checks of
//! each step that need nothing but the answers. Checks that ask Proxmox or the
//! chain are in [`crate::probe`].
//!
//! Every problem is reported against the form field it concerns, with a sentence
//! that says what to enter instead; warnings do not block the step.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};

use blockhost_crd::WalletAddress;
use blockhost_crd::net::{Ipv4Cidr, Ipv6Cidr};
use serde::{Deserialize, Serialize};

/// The steps of the form, in order.
pub const STEPS: [&str; 3] = ["proxmox", "chain", "admin"];

/// Limits on a plan's resources the page offers (blockhostd's own bounds apply too).
pub const MAX_PLANS: usize = 8;

/// The Proxmox step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ProxmoxAnswers {
    /// API base (`https://host:8006`).
    pub url: String,
    /// The API certificate's SHA-256 fingerprint, `AB:CD:…`.
    pub fingerprint: String,
    /// The administrator who creates BlockHost's token (ticket login).
    pub admin_user: String,
    /// Nodes VMs may run on (empty: all).
    pub nodes: Vec<String>,
    /// Storage for VM disks (must hold `images`).
    pub storage: String,
    /// Bridge VMs attach to.
    pub bridge: String,
    /// First VMID BlockHost may use.
    pub vmid_first: u32,
    /// Last VMID.
    pub vmid_last: u32,
    /// The template VMs are cloned from.
    pub template_vmid: u32,
    /// IPv4 pool.
    pub ipv4_cidr: String,
    /// Its gateway.
    pub ipv4_gateway: String,
    /// `none` or `manual`.
    pub ipv6_mode: String,
    /// Manual IPv6 prefix.
    pub ipv6_prefix: String,
    /// Its gateway.
    pub ipv6_gateway: String,
    /// DNS servers for VMs (comma-separated in the form).
    pub nameservers: Vec<String>,
    /// Days an expired VM is kept suspended before deletion.
    pub grace_days: u32,
}

impl Default for ProxmoxAnswers {
    fn default() -> Self {
        Self {
            url: String::new(),
            fingerprint: String::new(),
            admin_user: "root@pam".into(),
            nodes: vec![],
            storage: "local-lvm".into(),
            bridge: "vmbr0".into(),
            vmid_first: 10_000,
            vmid_last: 19_999,
            template_vmid: 9001,
            ipv4_cidr: String::new(),
            ipv4_gateway: String::new(),
            ipv6_mode: "none".into(),
            ipv6_prefix: String::new(),
            ipv6_gateway: String::new(),
            nameservers: vec![],
            grace_days: 7,
        }
    }
}

/// One plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct PlanAnswer {
    /// Its name on chain.
    pub name: String,
    /// Price per day in US cents.
    pub price_per_day_cents: u64,
    /// CPU cores of each VM.
    pub cores: u32,
    /// Memory in MiB.
    pub memory_mib: u32,
    /// Disk in GiB.
    pub disk_gib: u32,
}

impl Default for PlanAnswer {
    fn default() -> Self {
        Self {
            name: "basic".into(),
            price_per_day_cents: 100,
            cores: 1,
            memory_mib: 1024,
            disk_gib: 10,
        }
    }
}

/// The chain step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ChainAnswers {
    /// EIP-155 chain id.
    pub chain_id: u64,
    /// JSON-RPC endpoints.
    pub rpc_urls: Vec<String>,
    /// `deploy` new contracts or `reuse` existing ones.
    pub contracts: String,
    /// Existing BlockhostSubscriptions (reuse).
    pub subscriptions_contract: String,
    /// Existing AccessCredentialNFT (reuse).
    pub nft_contract: String,
    /// The block the existing contracts were deployed in (reuse).
    pub deployment_block: u64,
    /// `existing` token address or `dev` (deploy a test token, local chains only).
    pub stablecoin_mode: String,
    /// The ERC-20 buyers pay with.
    pub stablecoin: String,
    /// Confirmations the watcher waits for.
    pub confirmations: u64,
    /// The first plans.
    pub plans: Vec<PlanAnswer>,
}

impl Default for ChainAnswers {
    fn default() -> Self {
        Self {
            chain_id: 0,
            rpc_urls: vec![],
            contracts: "deploy".into(),
            subscriptions_contract: String::new(),
            nft_contract: String::new(),
            deployment_block: 0,
            stablecoin_mode: "existing".into(),
            stablecoin: String::new(),
            confirmations: 3,
            plans: vec![PlanAnswer::default()],
        }
    }
}

/// Chains where a freely mintable test token makes sense.
pub fn is_dev_chain(chain_id: u64) -> bool {
    matches!(chain_id, 31337 | 1337)
}

/// The admin commands step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct AdminAnswers {
    /// Whether admin commands (knocks over the chain) are accepted.
    pub enabled: bool,
    /// Ports a knock may open.
    pub ports: Vec<u16>,
    /// Seconds a knock stays open unless it says otherwise.
    pub default_duration_secs: u32,
}

impl Default for AdminAnswers {
    fn default() -> Self {
        Self {
            enabled: true,
            ports: vec![22],
            default_duration_secs: 300,
        }
    }
}

/// Everything the operator answered, and which steps passed their checks.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Answers {
    /// Proxmox.
    pub proxmox: ProxmoxAnswers,
    /// Chain.
    pub chain: ChainAnswers,
    /// Admin commands.
    pub admin: AdminAnswers,
    /// Steps whose last check passed (an edit without a check clears its entry).
    pub valid: BTreeMap<String, bool>,
    /// What the chain check found (server address, resolved stablecoin), shown in the summary.
    pub chain_found: BTreeMap<String, String>,
}

impl Answers {
    /// Whether every step passed.
    pub fn complete(&self) -> bool {
        STEPS.iter().all(|s| self.valid.get(*s) == Some(&true))
    }
}

/// The outcome of a step's checks.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// Field → what is wrong.
    pub errors: BTreeMap<String, String>,
    /// Things worth knowing that do not block.
    pub warnings: Vec<String>,
    /// Facts found (detected nodes, the server address, balances, …).
    pub found: BTreeMap<String, serde_json::Value>,
}

impl Report {
    /// Records a problem with `field`.
    pub fn error(&mut self, field: &str, msg: impl Into<String>) {
        self.errors
            .entry(field.to_owned())
            .or_insert_with(|| msg.into());
    }
    /// Whether nothing blocks.
    pub fn ok(&self) -> bool {
        self.errors.is_empty()
    }
}

/// Parses an `AB:CD:…` SHA-256 fingerprint (upper or lower case).
pub fn parse_fingerprint(s: &str) -> Option<[u8; 32]> {
    let hexs: String = s.trim().split(':').collect();
    let v = hex::decode(hexs).ok()?;
    v.try_into().ok()
}

fn https_url(s: &str) -> Result<(), String> {
    let rest = s
        .strip_prefix("https://")
        .ok_or("the address must start with https://")?;
    let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if host.is_empty() || host.contains(char::is_whitespace) || host.contains('@') {
        return Err("give a host and port, e.g. https://192.0.2.10:8006".into());
    }
    Ok(())
}

/// The Proxmox step's own checks.
pub fn check_proxmox(a: &ProxmoxAnswers, password_known: bool, r: &mut Report) {
    if let Err(e) = https_url(a.url.trim()) {
        r.error("url", e);
    }
    if !a.fingerprint.trim().is_empty() && parse_fingerprint(&a.fingerprint).is_none() {
        r.error(
            "fingerprint",
            "a SHA-256 fingerprint is 32 bytes written as AB:CD:… (64 hex digits)",
        );
    }
    if !a.admin_user.contains('@') {
        r.error("adminUser", "give the user with its realm, e.g. root@pam");
    }
    if !password_known {
        r.error(
            "password",
            "enter the password of this user (used once, to create BlockHost's own restricted token)",
        );
    }
    for n in &a.nodes {
        if n.is_empty() || !n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            r.error("nodes", format!("{n:?} is not a node name"));
        }
    }
    if a.storage.trim().is_empty() {
        r.error("storage", "choose the storage for VM disks");
    }
    if a.bridge.trim().is_empty() {
        r.error("bridge", "choose the bridge VMs attach to");
    }
    let lo = 100;
    let hi = 999_999_999;
    if !(lo..=hi).contains(&a.vmid_first) {
        r.error("vmidFirst", format!("VMIDs are {lo} to {hi}"));
    }
    if !(lo..=hi).contains(&a.vmid_last) {
        r.error("vmidLast", format!("VMIDs are {lo} to {hi}"));
    } else if a.vmid_last < a.vmid_first {
        r.error("vmidLast", "the last VMID must not be below the first");
    }
    if (a.vmid_first..=a.vmid_last).contains(&a.template_vmid) {
        r.error(
            "templateVmid",
            "the template's VMID is inside BlockHost's VMID range; move the range or the template",
        );
    }
    match a.ipv4_cidr.trim().parse::<Ipv4Cidr>() {
        Err(e) => r.error("ipv4Cidr", format!("{e}; e.g. 10.10.0.0/24")),
        Ok(cidr) => match a.ipv4_gateway.trim().parse::<Ipv4Addr>() {
            Err(_) => r.error("ipv4Gateway", "give the gateway's IPv4 address"),
            Ok(gw) if !cidr.contains(gw) => {
                r.error("ipv4Gateway", format!("the gateway must be inside {cidr}"))
            }
            Ok(_) => {}
        },
    }
    match a.ipv6_mode.as_str() {
        "none" => {}
        "manual" => match a.ipv6_prefix.trim().parse::<Ipv6Cidr>() {
            Err(e) => r.error("ipv6Prefix", format!("{e}; e.g. 2001:db8:1::/64")),
            Ok(p) => match a.ipv6_gateway.trim().parse::<Ipv6Addr>() {
                Err(_) => r.error("ipv6Gateway", "give the gateway's IPv6 address"),
                Ok(gw) if !p.contains(gw) => {
                    r.error("ipv6Gateway", format!("the gateway must be inside {p}"))
                }
                Ok(_) => {}
            },
        },
        _ => r.error("ipv6Mode", "choose none or manual"),
    }
    for ns in &a.nameservers {
        if ns.parse::<std::net::IpAddr>().is_err() {
            r.error("nameservers", format!("{ns:?} is not an IP address"));
        }
    }
    if !(1..=365).contains(&a.grace_days) {
        r.error("graceDays", "keep expired VMs for 1 to 365 days");
    }
}

/// Whether `s` looks like an RPC endpoint URL.
fn rpc_url(s: &str) -> bool {
    (s.starts_with("https://") || s.starts_with("http://"))
        && s.len() > "https://".len()
        && !s.contains(char::is_whitespace)
}

fn address(s: &str) -> Option<WalletAddress> {
    s.trim().parse().ok()
}

/// The chain step's own checks.
pub fn check_chain(a: &ChainAnswers, r: &mut Report) {
    if a.chain_id == 0 {
        r.error(
            "chainId",
            "give the chain id (e.g. 1 for Ethereum, 8453 for Base)",
        );
    }
    if a.rpc_urls.is_empty() {
        r.error("rpcUrls", "give at least one JSON-RPC endpoint");
    }
    for u in &a.rpc_urls {
        if !rpc_url(u) {
            r.error("rpcUrls", format!("{u:?} is not an http(s):// endpoint"));
        }
    }
    match a.contracts.as_str() {
        "deploy" => {}
        "reuse" => {
            if address(&a.subscriptions_contract).is_none() {
                r.error(
                    "subscriptionsContract",
                    "give the address of the existing BlockhostSubscriptions (0x + 40 hex digits)",
                );
            }
            if address(&a.nft_contract).is_none() {
                r.error(
                    "nftContract",
                    "give the address of the existing AccessCredentialNFT (0x + 40 hex digits)",
                );
            }
        }
        _ => r.error("contracts", "choose deploy or reuse"),
    }
    match a.stablecoin_mode.as_str() {
        "existing" => {
            if address(&a.stablecoin).is_none() {
                r.error(
                    "stablecoin",
                    "give the address of the ERC-20 token buyers pay with (e.g. USDC)",
                );
            }
        }
        "dev" if is_dev_chain(a.chain_id) => {}
        "dev" => r.error(
            "stablecoinMode",
            "a test token anyone can mint is offered on local development chains (31337, 1337) only",
        ),
        _ => r.error("stablecoinMode", "choose an existing token or a test token"),
    }
    if a.confirmations > 1000 {
        r.error("confirmations", "at most 1000 confirmations");
    }
    if a.plans.is_empty() {
        r.error("plans", "add at least one plan");
    }
    if a.plans.len() > MAX_PLANS {
        r.error(
            "plans",
            format!("at most {MAX_PLANS} plans here; add more later with bhctl plan create"),
        );
    }
    let mut seen = std::collections::BTreeSet::new();
    for (i, p) in a.plans.iter().enumerate() {
        if let Err(e) = bhctl::chain::validate_plan(&p.name, p.price_per_day_cents) {
            r.error(&format!("plans.{i}"), e);
        }
        if !seen.insert(p.name.trim().to_owned()) {
            r.error(&format!("plans.{i}"), "two plans have this name");
        }
        if blockhost_crd::Cores::new(p.cores).is_err() {
            r.error(&format!("plans.{i}.cores"), "cores out of range");
        }
        if blockhost_crd::MemoryMib::new(p.memory_mib).is_err() {
            r.error(&format!("plans.{i}.memoryMib"), "memory out of range");
        }
        if blockhost_crd::DiskGib::new(p.disk_gib).is_err() {
            r.error(&format!("plans.{i}.diskGib"), "disk size out of range");
        }
    }
}

/// The admin commands step's checks.
pub fn check_admin(a: &AdminAnswers, r: &mut Report) {
    if !a.enabled {
        return;
    }
    if a.ports.is_empty() {
        r.error(
            "ports",
            "give at least one port a knock may open (22 for SSH)",
        );
    }
    if a.ports.len() > 16 {
        r.error("ports", "at most 16 ports");
    }
    if a.ports.contains(&0) {
        r.error("ports", "ports are 1 to 65535");
    }
    if !(1..=3600).contains(&a.default_duration_secs) {
        r.error("defaultDurationSecs", "a knock lasts 1 to 3600 seconds");
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn good_pve() -> ProxmoxAnswers {
        ProxmoxAnswers {
            url: "https://192.0.2.10:8006".into(),
            ipv4_cidr: "10.10.0.0/24".into(),
            ipv4_gateway: "10.10.0.1".into(),
            ..Default::default()
        }
    }

    #[test]
    fn proxmox_fields_are_checked() {
        let mut r = Report::default();
        check_proxmox(&good_pve(), true, &mut r);
        assert!(r.ok(), "{r:?}");
        let bad = ProxmoxAnswers {
            url: "http://x".into(),
            fingerprint: "AB:CD".into(),
            vmid_first: 9000,
            vmid_last: 9500,
            ipv4_gateway: "10.11.0.1".into(),
            ipv6_mode: "manual".into(),
            ipv6_prefix: "nope".into(),
            grace_days: 0,
            ..good_pve()
        };
        let mut r = Report::default();
        check_proxmox(&bad, false, &mut r);
        for f in [
            "url",
            "fingerprint",
            "password",
            "templateVmid",
            "ipv4Gateway",
            "ipv6Prefix",
            "graceDays",
        ] {
            assert!(r.errors.contains_key(f), "{f}: {r:?}");
        }
    }

    #[test]
    fn chain_fields_are_checked() {
        let mut a = ChainAnswers {
            chain_id: 1,
            rpc_urls: vec!["https://rpc.example".into()],
            stablecoin_mode: "dev".into(),
            ..Default::default()
        };
        let mut r = Report::default();
        check_chain(&a, &mut r);
        assert!(r.errors.contains_key("stablecoinMode"), "{r:?}");
        a.chain_id = 31337;
        a.plans.push(PlanAnswer::default());
        a.plans.push(PlanAnswer {
            name: "x".into(),
            price_per_day_cents: 0,
            cores: 0,
            ..Default::default()
        });
        let mut r = Report::default();
        check_chain(&a, &mut r);
        assert!(r.errors.contains_key("plans.1"), "duplicate name: {r:?}");
        assert!(r.errors.contains_key("plans.2"), "price 0: {r:?}");
        assert!(r.errors.contains_key("plans.2.cores"), "{r:?}");
        assert!(!r.errors.contains_key("stablecoinMode"));
    }

    #[test]
    fn admin_fields_are_checked() {
        let mut r = Report::default();
        check_admin(&AdminAnswers::default(), &mut r);
        assert!(r.ok());
        let mut r = Report::default();
        check_admin(
            &AdminAnswers {
                enabled: true,
                ports: vec![],
                default_duration_secs: 4000,
            },
            &mut r,
        );
        assert_eq!(r.errors.len(), 2);
    }

    #[test]
    fn fingerprints_parse() {
        let fp = crate::tls::fingerprint(b"x");
        assert!(parse_fingerprint(&fp).is_some());
        assert!(parse_fingerprint(&fp.to_lowercase()).is_some());
        assert!(parse_fingerprint("AB").is_none());
    }
}
