//! Why a VM reconcile failed, and what each failure means for its retry.
//!
//! Each variant's message says what was being done or what is wrong; the cause
//! travels as `#[source]` and is printed once by [`crate::error_chain`].
//! [`VmError::retry`] is the error policy: a lock or an outage passes by
//! itself, while a missing template or refused credentials need an operator,
//! and [`VmError::action`] tells them what to do.

use blockhost_crd::Reason;
use blockhost_crd::access::AccessFileError;
use blockhost_pve::{ErrorKind, VmId};

use crate::reconcile::runtime::{ErrorPolicy, Retry};
use crate::store::StoreError;

/// Why a VM reconcile failed.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// A Proxmox request failed.
    #[error("Proxmox could not {doing}")]
    Pve {
        /// What was asked, e.g. `clone the template`.
        doing: &'static str,
        /// Proxmox's answer or the transport failure.
        #[source]
        source: blockhost_pve::Error,
    },
    /// The store failed.
    #[error("the store failed")]
    Store(#[from] StoreError),
    /// A blocking store task panicked or was cancelled.
    #[error("a store task did not finish")]
    StoreTask(#[source] tokio::task::JoinError),
    /// No node can take the VM.
    #[error(
        "no online node among {allowed} has {memory_mib} MiB free; free memory or allow more nodes (proxmox.nodes)"
    )]
    NoCapacity {
        /// The nodes considered.
        allowed: String,
        /// Memory the VM needs.
        memory_mib: u64,
    },
    /// The template to clone is not in the cluster.
    #[error("template VMID {0} is not in the cluster; build it or set proxmox.defaultTemplate")]
    NoTemplate(VmId),
    /// The access file could not be rendered.
    #[error("cannot render the access file")]
    AccessFile(#[source] AccessFileError),
    /// The guest agent did not answer in time.
    #[error(
        "the guest agent has not answered for {secs} s; check that the template runs qemu-guest-agent"
    )]
    AgentTimeout {
        /// How long it was waited for.
        secs: u32,
        /// The last ping's failure.
        #[source]
        source: blockhost_pve::Error,
    },
    /// A VMID we reserved is taken by something that is not ours.
    #[error("VMID {0} is used by a VM that is not ours; another VMID will be reserved")]
    ForeignVmid(VmId),
}

impl VmError {
    /// The condition reason and metric label.
    pub fn reason(&self) -> Reason {
        match self {
            VmError::Pve { source, .. } => match source.kind() {
                ErrorKind::NotFound => Reason::NotFound,
                ErrorKind::AlreadyExists => Reason::AlreadyExists,
                ErrorKind::Locked => Reason::Locked,
                ErrorKind::Transient => Reason::Transient,
                ErrorKind::Validation => Reason::Validation,
                ErrorKind::Auth => Reason::Auth,
                ErrorKind::TaskFailed => Reason::TaskFailed,
                ErrorKind::Permanent => Reason::Permanent,
            },
            VmError::Store(_) => Reason::StoreFailed,
            VmError::StoreTask(_) => Reason::Internal,
            VmError::NoCapacity { .. } => Reason::NoCapacity,
            VmError::NoTemplate(_) => Reason::NoTemplate,
            VmError::AccessFile(_) => Reason::AccessFileInvalid,
            VmError::ForeignVmid(_) => Reason::ForeignVmid,
            VmError::AgentTimeout { .. } => Reason::AgentTimeout,
        }
    }

    /// Whether retrying can help by itself, or an operator must act first.
    pub fn retry(&self) -> Retry {
        match self {
            VmError::Pve { source, .. } => match source.kind() {
                ErrorKind::Validation | ErrorKind::Auth | ErrorKind::Permanent => Retry::Operator,
                ErrorKind::NotFound
                | ErrorKind::AlreadyExists
                | ErrorKind::Locked
                | ErrorKind::Transient
                | ErrorKind::TaskFailed => Retry::Transient,
            },
            VmError::StoreTask(_)
            | VmError::NoCapacity { .. }
            | VmError::NoTemplate(_)
            | VmError::AccessFile(_)
            | VmError::AgentTimeout { .. } => Retry::Operator,
            VmError::Store(_) | VmError::ForeignVmid(_) => Retry::Transient,
        }
    }

    /// What an operator should do, for failures whose message does not say.
    pub fn action(&self) -> Option<&'static str> {
        match self {
            VmError::Pve { source, .. } => match source.kind() {
                ErrorKind::Auth => {
                    Some("check proxmox.tokenId, its secret file and the token's privileges")
                }
                ErrorKind::Validation | ErrorKind::Permanent => Some(
                    "check the proxmox section of the configuration against the cluster (template, storage, bridge)",
                ),
                _ => None,
            },
            VmError::StoreTask(_) => {
                Some("this is a bug in blockhostd; report it with the daemon's log")
            }
            VmError::AccessFile(_) => Some("check the VM's owner and guestUser"),
            _ => None,
        }
    }

    /// The runtime's view of this failure.
    pub fn policy(&self) -> ErrorPolicy {
        ErrorPolicy {
            reason: self.reason().as_str(),
            retry: self.retry(),
        }
    }
}

/// Names the Proxmox request a failure belongs to.
pub(crate) trait Doing<T> {
    /// Wraps a Proxmox failure with what was being done.
    fn doing(self, doing: &'static str) -> Result<T, VmError>;
}

impl<T> Doing<T> for blockhost_pve::Result<T> {
    fn doing(self, doing: &'static str) -> Result<T, VmError> {
        self.map_err(|source| VmError::Pve { doing, source })
    }
}
