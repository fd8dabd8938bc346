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

pub mod chain;
pub use chain::{ChainConfig, PlanDefaults};

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
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            socket: default_socket(),
            socket_group: None,
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
