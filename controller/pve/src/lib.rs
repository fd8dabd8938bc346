//! Typed async client for the Proxmox VE HTTP API, as BlockHost's reconciler uses it.
//!
//! # Module map
//! - [`access`]: users, roles, API tokens and ACLs, storages and bridges: what the setup
//!   wizard needs to create BlockHost's least-privilege token (not part of [`Pve`]).
//! - [`api`]: the [`Pve`] trait (every operation the reconciler needs) and [`Pve::wait_task`].
//! - [`client`]: [`PveClient`], the HTTP implementation (reqwest + rustls).
//! - [`auth`]: [`Credentials`] (API token or password → ticket), [`Secret`], the ticket clock.
//! - [`tls`]: [`TlsMode`]: system roots, a pinned SHA-256 [`Fingerprint`], or insecure.
//! - [`types`]: typed responses ([`ClusterVm`], [`VmConfig`], [`TaskStatus`], ...) and request
//!   builders ([`CloneRequest`], [`ConfigUpdate`], ...).
//! - [`propstring`]: property strings (`virtio,bridge=vmbr0`), [`NetDevice`], [`IpConfig`].
//! - [`upid`]: [`Upid`] parsing.
//! - [`template`]: [`template::TemplateApi`], what installing the guest template needs
//!   (storage status and content, uploads, VM creation with `import-from`, conversion).
//! - [`firewall`]: a VM's firewall options and IP sets, and the datacenter firewall's switch.
//! - [`error`]: [`Error`] and its [`ErrorKind`] classification.
//! - `de`: the single place PVE's loose JSON typing (numbers and bools as strings) is absorbed.
//! - `fake` (feature `fake`): an in-memory, zero-latency cluster implementing [`Pve`].
//!
//! # Errors for a reconciler
//! [`Error::kind`] sorts every failure into not found, already exists, locked, transient
//! (5xx, connection, timeouts), validation (with PVE's per-field messages), auth, task failed
//! (exit status + log tail) and permanent. [`Error::is_transient`] is true for locked and
//! transient: retry those with backoff.
//!
//! # The `fake` feature
//! `fake::FakeCluster` is compiled only with the `fake` feature (and in this crate's own tests):
//! the controller enables it in its dev-dependencies and benchmarks, while a production build
//! of the daemon cannot be pointed at a fake cluster by a configuration mistake. It is
//! deterministic and zero-latency, counts requests per operation (task polls apart) and takes
//! injected faults.
//!
//! # Tests
//! `cargo test -p blockhost-pve` runs the unit tests and the integration tests in
//! `tests/fakepve.rs`, which start one fakepve per test (`tests/fakepve_server.py`, from the
//! venv `scripts/setup.sh` builds) on 127.0.10.x:8006 and talk to it over HTTPS with its
//! certificate pinned.
//!
//! ```no_run
//! # async fn demo() -> blockhost_pve::Result<()> {
//! use blockhost_pve::*;
//! let client = PveClient::new(ClientConfig::new(
//!     "https://pve.example:8006",
//!     Credentials::api_token("blockhost@pve!operator", "aaaaaaaa-...."),
//!     TlsMode::Pinned("AB:CD:...".parse()?),
//! ))?;
//! let upid = client.clone_vm("pve1", 9001, &CloneRequest::full(120).name("blockhost-120")).await?;
//! client.wait_task(&upid, WaitOptions::default()).await?;
//! # Ok(()) }
//! ```

pub mod access;
pub mod api;
pub mod auth;
pub mod client;
mod de;
pub mod error;
#[cfg(any(test, feature = "fake"))]
pub mod fake;
pub mod firewall;
pub mod propstring;
pub mod template;
pub mod tls;
pub mod types;
pub mod upid;

pub use api::{Pve, WaitOptions};
pub use auth::{Clock, Credentials, ManualClock, Secret, SystemClock};
pub use client::{ClientConfig, PveClient};
pub use error::{Error, ErrorKind, Result};
pub use firewall::{
    ClusterFirewallOptions, EffectiveOptions, FirewallOptions, FirewallPolicy, IPFILTER_NET0,
    IpSetEntry,
};
pub use propstring::{
    DiskSize, IpConfig, Ipv4Cidr, Ipv4Setting, Ipv6Cidr, Ipv6Setting, NetDevice, PropertyString,
};
pub use tls::{Fingerprint, TlsMode};
pub use types::{
    CloneRequest, ClusterVm, ConfigUpdate, DeleteOptions, GuestKind, NodeState, NodeSummary,
    RunState, ShutdownOptions, TaskExit, TaskLogLine, TaskState, TaskStatus, Version, VmConfig,
    VmId, VmStatus,
};
pub use upid::Upid;
