//! `blockhostd`'s configuration file, `/etc/blockhost/blockhost.yaml`.
//!
//! Every field has a local default, so an absent or empty file runs the daemon with
//! nothing driven: specs are stored and served, no Proxmox or chain is contacted.
//! Unknown fields are rejected so that a typo is an error, not a silently ignored
//! setting. `crd-schemas/schemas/daemon-config.json` is its JSON Schema.

use std::net::SocketAddr;
use std::path::PathBuf;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub mod admin;
pub mod chain;
pub mod firewall;
pub use admin::{AdminConfig, RootAgentConfig};
pub mod signup;
pub use chain::{ChainConfig, Contracts, ContractsNotSet, PlanDefaults};
pub use firewall::FirewallConfig;
pub mod limits;
pub use limits::ConnectionLimits;
pub use signup::SignupConfig;

/// Default path of the configuration file.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/blockhost/blockhost.yaml";
/// Default path of the redb database.
pub const DEFAULT_STORE_PATH: &str = "/var/lib/blockhost/state.redb";
/// Default path of the API socket.
pub const DEFAULT_SOCKET_PATH: &str = "/run/blockhost/api.sock";

/// The daemon's configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DaemonConfig {
    /// Path of the redb database holding every object and event.
    #[serde(default = "default_store")]
    pub store: PathBuf,
    /// The local HTTP API.
    #[serde(default)]
    pub api: ApiConfig,
    /// Prometheus metrics over TCP (they are always served on the API socket too).
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// Logging.
    #[serde(default)]
    pub log: LogConfig,
    /// The per-object event log.
    #[serde(default)]
    pub events: EventsConfig,
    /// The chain watched for subscriptions; absent: no chain is watched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chain: Option<ChainConfig>,
    /// The Proxmox VE cluster to drive; absent: specs are stored, nothing is driven.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxmox: Option<ProxmoxConfig>,
    /// Address pools for VMs.
    #[serde(default)]
    pub network: NetworkConfig,
    /// The public signup page; absent: not served. Needs `chain`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signup: Option<SignupConfig>,
    /// The host's default-deny firewall, installed and verified through the
    /// root agent at start; absent: blockhostd leaves the host's firewall alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firewall: Option<FirewallConfig>,
    /// Admin commands over the chain (knocks); absent: none are read. Needs
    /// `chain` and `firewall`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin: Option<AdminConfig>,
    /// The root agent (used with `firewall` or `admin`).
    #[serde(default, skip_serializing_if = "RootAgentConfig::is_default")]
    pub root_agent: RootAgentConfig,
}

impl Default for DaemonConfig {
    fn default() -> Self {
        Self {
            store: default_store(),
            api: ApiConfig::default(),
            metrics: MetricsConfig::default(),
            log: LogConfig::default(),
            events: EventsConfig::default(),
            chain: None,
            proxmox: None,
            network: NetworkConfig::default(),
            signup: None,
            firewall: None,
            admin: None,
            root_agent: RootAgentConfig::default(),
        }
    }
}

fn default_store() -> PathBuf {
    DEFAULT_STORE_PATH.into()
}

/// The local HTTP API, served on a Unix socket (mode 0660).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ApiConfig {
    /// Path of the Unix socket.
    #[serde(default = "default_socket")]
    pub socket: PathBuf,
    /// Group given access to the socket (read and write); absent: the daemon's group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket_group: Option<String>,
    /// Connection limits of the socket (its own budget: `bhctl` keeps working
    /// when the public listeners are flooded).
    #[serde(default, skip_serializing_if = "ConnectionLimits::is_default")]
    pub connections: ConnectionLimits,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            socket: default_socket(),
            socket_group: None,
            connections: ConnectionLimits::default(),
        }
    }
}

fn default_socket() -> PathBuf {
    DEFAULT_SOCKET_PATH.into()
}

/// Prometheus metrics over TCP.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MetricsConfig {
    /// Address to serve `GET /metrics` on, e.g. `127.0.0.1:9464`; absent: socket only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    /// Connection limits of that listener.
    #[serde(default, skip_serializing_if = "ConnectionLimits::is_default")]
    pub connections: ConnectionLimits,
}

/// Log output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LogConfig {
    /// A `tracing` filter, e.g. `info` or `blockhost_controller=debug,info`.
    /// The `RUST_LOG` environment variable overrides it.
    #[serde(default = "default_level")]
    pub level: String,
    /// `text` for people, `json` for log collectors.
    #[serde(default)]
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: default_level(),
            format: LogFormat::default(),
        }
    }
}

fn default_level() -> String {
    "info".into()
}

/// Log line format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Retention of the per-object event log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EventsConfig {
    /// Events kept per object; older ones are dropped (1–10,000).
    #[serde(default = "default_retention", deserialize_with = "retention")]
    #[schemars(range(min = 1, max = 10000))]
    pub retention_per_object: u32,
}

impl Default for EventsConfig {
    fn default() -> Self {
        Self {
            retention_per_object: default_retention(),
        }
    }
}

fn default_retention() -> u32 {
    100
}

fn retention<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let n = u32::deserialize(d)?;
    if !(1..=10_000).contains(&n) {
        return Err(serde::de::Error::custom(format!(
            "retentionPerObject {n} is out of range 1..=10000"
        )));
    }
    Ok(n)
}

/// The Proxmox VE cluster the reconcilers drive.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProxmoxConfig {
    /// API base, e.g. `https://192.0.2.10:8006` (the `/api2/json` suffix is added).
    pub url: String,
    /// API token id, `USER@REALM!TOKENID`.
    pub token_id: String,
    /// File holding the token secret (mode 0600 or 0640; never put it in this file or argv).
    pub token_secret_file: PathBuf,
    /// SHA-256 fingerprint of the server certificate (PVE's self-signed default),
    /// `AB:CD:…`; absent: the system's trusted roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_fingerprint: Option<String>,
    /// Accept any certificate. Only for throw-away test setups; logged as a warning.
    #[serde(default)]
    pub tls_insecure: bool,
    /// Nodes VMs may be placed on; empty: every online node.
    #[serde(default)]
    pub nodes: Vec<String>,
    /// VMIDs BlockHost may use, inclusive.
    #[serde(default = "default_vmid_first")]
    pub vmid_first: crate::Vmid,
    /// Last VMID BlockHost may use.
    #[serde(default = "default_vmid_last")]
    pub vmid_last: crate::Vmid,
    /// Template cloned when neither the spec nor its plan names one.
    #[serde(default = "default_template")]
    pub default_template: crate::Vmid,
    /// Storage for cloned disks; absent: the template's storage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<String>,
    /// Disk key resized to the spec's size.
    #[serde(default = "default_disk")]
    pub disk: String,
    /// Days a suspended (expired) VM is kept before it is deleted.
    #[serde(default = "default_grace_days")]
    pub grace_period_days: u32,
    /// What to do when a managed VM vanishes from Proxmox.
    #[serde(default)]
    pub lost_policy: LostPolicy,
    /// Seconds a clean shutdown may take before the VM is stopped hard.
    #[serde(default = "default_shutdown_secs")]
    pub shutdown_timeout_secs: u32,
    /// Seconds to wait for the guest agent after start.
    #[serde(default = "default_agent_secs")]
    pub agent_timeout_secs: u32,
    /// Reconciles running at once.
    #[serde(default = "default_concurrency")]
    pub concurrency: u32,
    /// Seconds between full resyncs (one `cluster/resources` call each).
    #[serde(default = "default_resync_secs")]
    pub resync_secs: u32,
    /// Seconds between read-backs of each VM's Proxmox firewall and bridge port
    /// isolation (neither shows in the cluster listing): drift there is set back
    /// within this time. Four Proxmox reads per VM each time.
    #[serde(default = "default_firewall_check_secs")]
    pub firewall_check_secs: u32,
}

fn default_vmid_first() -> crate::Vmid {
    crate::Vmid::new(10_000).unwrap_or_else(|_| unreachable!())
}
fn default_vmid_last() -> crate::Vmid {
    crate::Vmid::new(19_999).unwrap_or_else(|_| unreachable!())
}
fn default_template() -> crate::Vmid {
    crate::Vmid::new(9001).unwrap_or_else(|_| unreachable!())
}
fn default_disk() -> String {
    "scsi0".into()
}
fn default_grace_days() -> u32 {
    7
}
fn default_shutdown_secs() -> u32 {
    120
}
fn default_agent_secs() -> u32 {
    180
}
fn default_concurrency() -> u32 {
    8
}
fn default_resync_secs() -> u32 {
    60
}
fn default_firewall_check_secs() -> u32 {
    600
}

/// What to do when a managed VM vanishes from Proxmox behind our back.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum LostPolicy {
    /// Mark it `Lost` and wait for an operator (the default: a re-created VM has an empty disk).
    #[default]
    Hold,
    /// Mark it `Lost` and create it again.
    Recreate,
}

/// Address pools for VMs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NetworkConfig {
    /// IPv4 pool; absent: VMs get no IPv4 address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv4: Option<Ipv4Pool>,
    /// IPv6 prefix VMs get /128s from; absent: no IPv6.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<Ipv6Pool>,
    /// Bridge VMs attach to.
    #[serde(default = "default_bridge")]
    pub bridge: String,
    /// DNS servers written into cloud-init.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<std::net::IpAddr>,
}

fn default_bridge() -> String {
    "vmbr0".into()
}

/// An IPv4 pool: a prefix of any length, its gateway, and optionally a sub-range.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Ipv4Pool {
    /// The subnet, e.g. `10.10.0.0/24`.
    pub cidr: crate::net::Ipv4Cidr,
    /// Its gateway (never handed out).
    pub gateway: std::net::Ipv4Addr,
    /// First address handed out; absent: the first host address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first: Option<std::net::Ipv4Addr>,
    /// Last address handed out; absent: the last host address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last: Option<std::net::Ipv4Addr>,
}

/// An IPv6 prefix VMs get /128s from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Ipv6Pool {
    /// The prefix, e.g. `2001:db8:1::/64`.
    pub prefix: crate::net::Ipv6Cidr,
    /// Its gateway (never handed out).
    pub gateway: std::net::Ipv6Addr,
}

impl Ipv4Pool {
    /// The inclusive range of addresses handed out, as integers.
    pub fn range(&self) -> (u32, u32) {
        let (lo, hi) = self.cidr.hosts();
        (
            self.first.map_or(lo, u32::from),
            self.last.map_or(hi, u32::from),
        )
    }
}

impl Ipv6Pool {
    /// The inclusive range handed out: the prefix minus its first 256 addresses,
    /// kept for the gateway and infrastructure.
    pub fn range(&self) -> (u128, u128) {
        let (lo, hi) = self.prefix.hosts();
        (lo.saturating_add(0x100).min(hi), hi)
    }
}

impl DaemonConfig {
    /// Checks what types alone cannot: values that must agree with each other.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(p) = &self.proxmox {
            if p.vmid_first > p.vmid_last {
                return Err(format!(
                    "proxmox.vmidFirst {} is after proxmox.vmidLast {}",
                    p.vmid_first, p.vmid_last
                ));
            }
            if !(p.url.starts_with("https://") || p.url.starts_with("http://")) {
                return Err(format!("proxmox.url {:?} must start with https://", p.url));
            }
            if !p.token_id.contains('@') || !p.token_id.contains('!') {
                return Err(format!(
                    "proxmox.tokenId {:?} must look like USER@REALM!TOKENID",
                    p.token_id
                ));
            }
        }
        if let Some(v4) = &self.network.ipv4 {
            if !v4.cidr.contains(v4.gateway) {
                return Err(format!(
                    "network.ipv4.gateway {} is outside {}",
                    v4.gateway, v4.cidr
                ));
            }
            for (field, a) in [("first", v4.first), ("last", v4.last)] {
                if let Some(a) = a
                    && !v4.cidr.contains(a)
                {
                    return Err(format!("network.ipv4.{field} {a} is outside {}", v4.cidr));
                }
            }
            let (lo, hi) = v4.range();
            if lo > hi {
                return Err("network.ipv4.first is after network.ipv4.last".into());
            }
        }
        if let Some(v6) = &self.network.ipv6
            && !v6.prefix.contains(v6.gateway)
        {
            return Err(format!(
                "network.ipv6.gateway {} is outside {}",
                v6.gateway, v6.prefix
            ));
        }
        self.validate_admin()?;
        if let Some(s) = &self.signup {
            let Some(chain) = &self.chain else {
                return Err(
                    "signup needs a chain section: the page buys from the watched contracts".into(),
                );
            };
            if s.tls_cert.is_some() != s.tls_key.is_some() {
                return Err(
                    "signup.tlsCert and signup.tlsKey go together: set both for HTTPS, or neither"
                        .into(),
                );
            }
            if s.rpc_url.is_none()
                && let Some(first) = chain.rpc_urls.first()
            {
                // The page would publish this URL: never one with a key in it
                // (and never quote it in the error either).
                if signup::url_may_hold_credentials(first) {
                    return Err(
                        "signup: chain.rpcUrls[0] carries credentials or may (a user, \
                        password, path or query) and the signup page would publish it; set \
                        signup.rpcUrl to a public RPC URL for buyers' browsers"
                            .into(),
                    );
                }
                signup::check_browser_url(first)
                    .map_err(|e| format!("signup: {e}; set signup.rpcUrl"))?;
            }
        }
        Ok(())
    }
}

impl DaemonConfig {
    /// `admin` needs a chain to read commands from and a firewall for a knock
    /// to mean anything (the original opened ports on an open host).
    fn validate_admin(&self) -> Result<(), String> {
        let Some(a) = &self.admin else {
            return Ok(());
        };
        if self.chain.is_none() {
            return Err(
                "admin needs a chain section: commands are transactions on the watched chain"
                    .into(),
            );
        }
        let Some(fw) = &self.firewall else {
            return Err(
                "admin needs a firewall section: without the default-deny firewall the management ports are open anyway and a knock protects nothing"
                    .into(),
            );
        };
        a.check(&fw.knock_tcp_ports)
    }
}
