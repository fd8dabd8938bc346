//! `blockhost-api`: what `blockhostd` and its clients (`bhctl`, scripts, tests)
//! share, and nothing of the daemon's insides: the wire types of the local HTTP
//! API, its client ([`client`]), the configuration loader ([`config`]) and
//! located YAML parsing ([`yaml`]). The server is in the daemon's crate.
//!
//! Served on a Unix socket so that file permissions (0660, a chosen group) are the
//! access control: no TCP port, no tokens. Paths follow Kubernetes' shape:
//!
//! | method | path | what |
//! |---|---|---|
//! | GET | `/healthz` | liveness (`ok`) |
//! | GET | `/metrics` | Prometheus text format |
//! | GET | `/version` | daemon version and store schema version |
//! | GET | `/status` | the daemon's own conditions ([`DaemonStatus`]) |
//! | GET | `/firewall` | the host firewall in force and the open knocks, asked of the root agent ([`FirewallReport`]) |
//! | GET | `{API_PREFIX}/{plural}` | list (`?watch=true`: newline-delimited JSON stream) |
//! | GET | `{API_PREFIX}/{plural}/{name}` | one object |
//! | DELETE | `{API_PREFIX}/{plural}/{name}` | delete (or mark Terminating); `?force=true` deletes a VM the chain owns, with an event naming the caller's uid |
//! | POST | `{API_PREFIX}/apply` | create/update many objects in one transaction |
//! | GET | `{API_PREFIX}/events?kind=&name=&limit=` | event log |

pub mod client;
pub mod config;
#[cfg(feature = "man")]
pub mod manpages;
pub mod yaml;

use serde::{Deserialize, Serialize};

/// Prefix of the object API.
pub const API_PREFIX: &str = "/apis/blockhost.io/v1alpha1";

/// Largest request body the daemon reads (an apply of tens of thousands of specs).
pub const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;

/// Body of `POST {API_PREFIX}/apply`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApplyRequest {
    /// Objects as JSON, each with `apiVersion` and `kind`.
    pub objects: Vec<serde_json::Value>,
    /// Validate and report, write nothing.
    #[serde(default)]
    pub dry_run: bool,
}

/// Answer to an apply.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApplyResponse {
    /// One line per object, in request order.
    pub results: Vec<ApplyResult>,
}

/// Answer to a delete.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeleteResponse {
    /// Kind of the object.
    pub kind: String,
    /// Its name.
    pub name: String,
    /// What happened.
    pub outcome: DeleteOutcome,
}

/// Body of every error answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorInfo,
}

/// An API error.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorInfo {
    /// A CamelCase code scripts can match (`NotFound`, `Invalid`, `Conflict`, `Internal`).
    pub code: String,
    /// A sentence saying what went wrong and what to do.
    pub message: String,
    /// One line per problem, when there are several.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub details: Vec<String>,
}

/// `GET /version`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VersionInfo {
    /// The daemon's version.
    pub version: String,
    /// The store's schema version.
    pub schema_version: u64,
}

/// Answer to `GET /status`: what is wrong with the daemon itself rather than
/// with an object (an RPC endpoint serving another chain: `ChainEndpoints`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DaemonStatus {
    /// One per aspect checked so far; empty before anything was checked.
    pub conditions: Vec<blockhost_crd::Condition>,
}

/// Answer to `GET /firewall`: the host firewall as the root agent reads it
/// back, compared with the configuration, and the open knocks.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FirewallReport {
    /// The table in force is exactly the one the configuration builds.
    pub in_force: bool,
    /// What differs, one sentence each (empty when `inForce`).
    pub problems: Vec<String>,
    /// The rules in force, as nftables lists them (empty when the table is absent).
    pub ruleset: String,
    /// Open knocks.
    pub knocks: Vec<KnockReport>,
    /// When the agent was asked, Unix seconds.
    pub checked_at: u64,
}

/// One open knock.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KnockReport {
    /// The admin's address; absent: any source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<std::net::IpAddr>,
    /// The TCP port.
    pub port: u16,
    /// The knock's whole duration, in seconds.
    pub timeout_secs: u64,
    /// Seconds left until the kernel closes it.
    pub expires_secs: u64,
    /// When it closes, Unix seconds.
    pub expires_at: u64,
}

// What happened to each object: the store returns these and the API carries
// them as they are, so they live with the shared types.
pub use blockhost_crd::outcome::{ApplyOutcome, ApplyResult, DeleteOutcome};
