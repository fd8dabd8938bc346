//! The condition types and reasons BlockHost writes, as types.
//!
//! [`Condition`] keeps `type` and `reason` as strings on the wire, so objects
//! written by older daemons (or by hand) still read back; everything the daemon
//! sets or looks for goes through [`ConditionType`] and [`Reason`], so a typo is
//! a compile error and scripts can rely on the spelling. Each name is the
//! variant's own identifier, already CamelCase: nothing is converted at run time.

use chrono::{DateTime, Utc};

use crate::meta::{Condition, ConditionStatus};

/// Declares a fieldless enum whose `as_str` is each variant's identifier.
macro_rules! named {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $v:ident,)+ }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name { $($(#[$vm])* $v,)+ }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$v,)+];

            /// The CamelCase word written into objects.
            pub const fn as_str(self) -> &'static str {
                match self { $($name::$v => stringify!($v),)+ }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

named! {
    /// What a condition observes. The writer of each is named in ARCHITECTURE.md.
    ConditionType {
        /// VM: running and its owner can log in (VM reconciler).
        Ready,
        /// VM: cloned and configured in Proxmox (VM reconciler).
        Provisioned,
        /// VM: vanished from Proxmox behind our back (VM reconciler).
        Lost,
        /// VM: the guest agent answers (VM reconciler).
        GuestAgent,
        /// VM: its Proxmox firewall filters its NIC to its own MAC and addresses
        /// (VM reconciler).
        Firewall,
        /// VM: its bridge port is isolated from the other VMs' (VM reconciler,
        /// through the root agent).
        PortIsolated,
        /// VM: every wanted address is allocated (the store's allocator).
        AddressesAllocated,
        /// Subscription: its access NFT is minted (minter).
        NftMinted,
        /// Subscription: `userEncrypted` held the buyer's signature (chain watcher).
        PayloadValid,
        /// Subscription: a Plan matches its chain plan id (chain watcher).
        PlanKnown,
        /// Subscription: its VirtualMachine spec is written (chain watcher).
        VmWritten,
    }
}

named! {
    /// Why a condition has its status: one word a script can match.
    Reason {
        // VM reconciler, progress.
        /// Ready: running and the access file is in place.
        Running,
        /// Ready: the spec asks for Suspended.
        Suspended,
        /// Ready: the subscription expired.
        Expired,
        /// Provisioned: cloned and configured.
        Created,
        /// Provisioned: must be created again after being lost.
        Lost,
        /// Lost: the VM is not in Proxmox any more.
        VanishedFromProxmox,
        /// GuestAgent: answers.
        Responding,
        /// GuestAgent: not yet answering, within the timeout.
        Waiting,
        /// GuestAgent: no answer within the timeout; a reconcile ran out of time.
        Timeout,
        /// Firewall: enabled with IP and MAC filtering, the IP set holds exactly the
        /// VM's addresses.
        InForce,
        /// Firewall: configured on the VM, but the datacenter firewall is off, so
        /// Proxmox enforces none of it.
        ClusterFirewallDisabled,
        /// PortIsolated: the root agent set the port's isolation flag.
        Isolated,
        /// PortIsolated: no root agent is configured (no `firewall` section).
        NoRootAgent,
        /// PortIsolated: the root agent refused or could not be reached.
        AgentFailed,
        // VM reconciler, failures (Ready=False).
        /// Proxmox: the VM, node or task does not exist.
        NotFound,
        /// Proxmox: the resource already exists.
        AlreadyExists,
        /// Proxmox: a config lock is held.
        Locked,
        /// Proxmox: connection trouble, 5xx, lost quorum.
        Transient,
        /// Proxmox: parameters refused.
        Validation,
        /// Proxmox: credentials or privileges refused.
        Auth,
        /// Proxmox: a task ended in an error.
        TaskFailed,
        /// Proxmox: misconfigured client or unreadable answer.
        Permanent,
        /// The store failed.
        StoreFailed,
        /// A task of the daemon itself failed (a bug).
        Internal,
        /// No node can take the VM.
        NoCapacity,
        /// The template to clone is missing.
        NoTemplate,
        /// The access file could not be rendered.
        AccessFileInvalid,
        /// A reserved VMID holds someone else's VM.
        ForeignVmid,
        /// The guest agent never answered.
        AgentTimeout,
        // Store allocator.
        /// AddressesAllocated: every wanted address is allocated.
        Allocated,
        /// AddressesAllocated: a pool has no free address.
        PoolExhausted,
        // Minter.
        /// NftMinted: minted, token id recorded.
        Minted,
        /// NftMinted: the server wallet cannot pay for the mint.
        InsufficientFunds,
        /// NftMinted: the mint would revert (e.g. the wallet does not own the contract).
        MintWouldRevert,
        /// NftMinted: a mined mint reverted.
        MintReverted,
        /// NftMinted: no node answered.
        NodeUnavailable,
        /// NftMinted: no buyer signature is stored.
        NoSignature,
        /// NftMinted: the VM has no address to put in the NFT.
        NoAddress,
        /// NftMinted: any other failure.
        MintFailed,
        // Chain watcher.
        /// PayloadValid: decrypted and verified.
        Decrypted,
        /// PayloadValid: longer than any real payload.
        PayloadTooLarge,
        /// PayloadValid: not decryptable with the server key.
        PayloadUndecryptable,
        /// PayloadValid: not the subscriber's signature.
        SignatureMismatch,
        /// PlanKnown: found.
        PlanFound,
        /// PlanKnown: no Plan has the chain plan id.
        PlanUnknown,
        /// VmWritten: another VM holds the name.
        NameTaken,
    }
}

impl Condition {
    /// A condition of a known type and reason.
    pub fn new(
        type_: ConditionType,
        status: ConditionStatus,
        reason: Reason,
        message: impl Into<String>,
        now: DateTime<Utc>,
    ) -> Self {
        Self {
            type_: type_.as_str().to_owned(),
            status,
            reason: reason.as_str().to_owned(),
            message: message.into(),
            last_transition_time: now,
        }
    }

    /// Whether this is a condition of `type_`.
    pub fn is(&self, type_: ConditionType) -> bool {
        self.type_ == type_.as_str()
    }

    /// Whether it has `reason`.
    pub fn has_reason(&self, reason: Reason) -> bool {
        self.reason == reason.as_str()
    }
}

/// The condition of `type_` in a list, if any.
pub fn find(conditions: &[Condition], type_: ConditionType) -> Option<&Condition> {
    conditions.iter().find(|c| c.is(type_))
}

/// Whether the condition of `type_` is present with `status`.
pub fn has(conditions: &[Condition], type_: ConditionType, status: ConditionStatus) -> bool {
    find(conditions, type_).is_some_and(|c| c.status == status)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn camel(s: &str) -> bool {
        s.chars().next().is_some_and(|c| c.is_ascii_uppercase())
            && s.chars().all(|c| c.is_ascii_alphanumeric())
    }

    #[test]
    fn names_are_unique_camel_case_words() {
        let types: Vec<&str> = ConditionType::ALL.iter().map(|t| t.as_str()).collect();
        let reasons: Vec<&str> = Reason::ALL.iter().map(|r| r.as_str()).collect();
        for list in [&types, &reasons] {
            assert!(list.iter().all(|s| camel(s)), "{list:?}");
            let mut sorted = list.to_vec();
            sorted.sort_unstable();
            sorted.dedup();
            assert_eq!(sorted.len(), list.len(), "duplicates in {list:?}");
        }
        assert_eq!(ConditionType::GuestAgent.as_str(), "GuestAgent");
        assert_eq!(
            Reason::VanishedFromProxmox.to_string(),
            "VanishedFromProxmox"
        );
    }

    #[test]
    fn typed_lookups_match_the_wire_strings() {
        let now = Utc::now();
        let c = Condition::new(
            ConditionType::Ready,
            ConditionStatus::False,
            Reason::NoTemplate,
            "build it",
            now,
        );
        assert_eq!(
            (c.type_.as_str(), c.reason.as_str()),
            ("Ready", "NoTemplate")
        );
        let list = vec![c];
        assert!(has(&list, ConditionType::Ready, ConditionStatus::False));
        assert!(!has(&list, ConditionType::Ready, ConditionStatus::True));
        assert!(find(&list, ConditionType::Lost).is_none());
        assert!(list[0].has_reason(Reason::NoTemplate));
    }
}
