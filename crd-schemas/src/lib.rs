//! BlockHost's declarative types: what the store holds, what `bhctl apply` reads,
//! what the API serves, and what the controller writes into each VM.
//!
//! - [`meta`]: object metadata, conditions and events (Kubernetes-shaped).
//! - [`condition`]: the condition types and reasons the daemon writes, typed.
//! - [`resource`]: the [`Resource`] trait and [`AnyObject`] for run-time kinds.
//! - [`vm`]: the `VirtualMachine` kind. [`plan`]: the `Plan` kind.
//! - [`subscription`]: the `Subscription` kind, mirrored from the chain.
//! - [`config`]: `blockhostd`'s configuration file.
//! - [`net`]: IPv4/IPv6 prefixes for the address pools.
//! - [`outcome`]: what an apply or a delete did to each object.
//! - [`bounded`]: validated scalars (names, users, bounded integers).
//! - [`wallet`]: Ethereum addresses, EIP-55 checked, stored normalized.
//! - [`validate`]: rules beyond types (DNS labels, Unix users).
//! - [`eip191`]: EIP-191 personal_sign hashing, signing and address recovery.
//! - [`access`]: the access file the controller writes into each VM and the PAM
//!   module reads at login.
//! - [`schema`]: the JSON Schemas committed under `crd-schemas/schemas/`.
//! - [`sanitize`]: the one escaper for outside text shown on terminals and in logs.
//!
//! Validation lives in the types' `Deserialize` impls, so a bad value is rejected by
//! the parser itself, with its position and field path, wherever it comes from.

pub mod bounded;
pub mod condition;
pub mod config;
pub mod meta;
pub mod net;
pub mod outcome;
pub mod plan;
pub mod resource;
pub mod schema;
pub mod subscription;
pub mod vm;

// The login side's types live in blockhost-access (what the PAM module links);
// re-exported so every other crate reads them from here.
pub use access::AccessFile;
pub use blockhost_access::{access, eip191, errors, sanitize, validate, wallet};
pub use bounded::{Cores, DiskGib, MemoryMib, Name, UnixUser, Vmid};
pub use condition::{ConditionType, Reason};
pub use config::DaemonConfig;
pub use errors::error_chain;
pub use meta::{API_VERSION, Condition, ConditionStatus, Event, EventType, ObjectMeta};
pub use plan::{Plan, PlanSpec, PlanStatus};
pub use resource::{AnyObject, Resource, TypeMeta};
pub use subscription::{Subscription, SubscriptionSpec, SubscriptionState, SubscriptionStatus};
pub use vm::{
    PowerState, Resources, VirtualMachine, VirtualMachineSpec, VirtualMachineStatus, VmPhase,
    VmSource,
};
pub use wallet::{WalletAddress, WalletError};
