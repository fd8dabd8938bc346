//! The public status of a subscription, as the signup page shows it while a VM
//! is provisioned: a phase and a short fixed message, derived from the
//! `Subscription` and `VirtualMachine` objects.
//!
//! Only what anyone can already learn from the chain, plus "how far along is
//! it", leaves this module: no owner address, no IP address, no node or VMID, no
//! error text (a reconciler's `lastError` can name internal hosts). Messages are
//! constants, so nothing from the store is echoed to an outsider.

use blockhost_crd::{Subscription, SubscriptionState, VirtualMachine, VmPhase};
use serde::Serialize;

/// Where a purchase stands, from the buyer's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum PublicPhase {
    /// The daemon has not picked the purchase up yet (confirmations, or no such id).
    Waiting,
    /// The plan is not set up on this server yet; the VM follows when it is.
    PlanPending,
    /// The VM is being created.
    Provisioning,
    /// The VM runs; its access NFT is being minted.
    Minting,
    /// The VM runs and the NFT is minted: the buyer can decrypt it.
    Ready,
    /// Expired: shut down, disk kept until the grace period ends.
    Suspended,
    /// Cannot proceed without the operator.
    Failed,
    /// Cancelled on chain.
    Cancelled,
    /// The VM is being deleted (cancelled, or grace period over).
    Deleting,
}

/// The answer of `GET /api/v1/subscriptions/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PublicStatus {
    /// The on-chain subscription id asked about.
    pub subscription_id: u64,
    /// Where it stands.
    pub phase: PublicPhase,
    /// One sentence for the buyer.
    pub message: &'static str,
    /// The access NFT's token id once minted (public on chain anyway).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nft_token_id: Option<u64>,
}

/// Derives the public status from the stored objects (absent: not seen yet).
pub fn derive(
    subscription_id: u64,
    sub: Option<&Subscription>,
    vm: Option<&VirtualMachine>,
) -> PublicStatus {
    use PublicPhase as P;
    let nft = sub.and_then(|s| s.status.nft_token_id);
    let (phase, message) = match sub.map(|s| s.status.state) {
        None | Some(SubscriptionState::Pending) => (
            P::Waiting,
            "Waiting for the purchase to be confirmed on chain and picked up by the server.",
        ),
        Some(SubscriptionState::PlanUnknown) => (
            P::PlanPending,
            "The operator has not set this plan up yet; your VM is created as soon as they do.",
        ),
        Some(SubscriptionState::PayloadInvalid) => (
            P::Failed,
            "The encrypted signature sent with the purchase could not be used; contact the operator.",
        ),
        Some(SubscriptionState::Cancelled) => (P::Cancelled, "This subscription was cancelled."),
        Some(SubscriptionState::Active) => match vm.map(|v| v.status.phase) {
            None | Some(VmPhase::Pending) => (P::Provisioning, "Your VM is queued for creation."),
            Some(VmPhase::Provisioning) => (P::Provisioning, "Your VM is being created."),
            Some(VmPhase::Running) if nft.is_some() => (
                P::Ready,
                "Your VM is running and your access NFT is minted.",
            ),
            Some(VmPhase::Running) => (P::Minting, "Your VM is running; minting your access NFT."),
            Some(VmPhase::Suspended) => (
                P::Suspended,
                "Your subscription has expired: the VM is shut down and its disk kept. Renew to resume it.",
            ),
            Some(VmPhase::Terminating) => (P::Deleting, "Your VM is being deleted."),
            Some(VmPhase::Failed) => (
                P::Failed,
                "Creating your VM ran into a problem the operator has to look at; it is retried.",
            ),
        },
    };
    PublicStatus {
        subscription_id,
        phase,
        message,
        nft_token_id: nft,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use blockhost_crd::subscription::vm_name_for;
    use blockhost_crd::{SubscriptionSpec, VirtualMachineSpec};

    fn sub(state: SubscriptionState, nft: Option<u64>) -> Subscription {
        let mut s = Subscription::new(
            vm_name_for(7),
            SubscriptionSpec {
                subscription_id: 7,
                plan_id: 1,
                subscriber: "0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266"
                    .parse()
                    .unwrap(),
                expires_at: chrono::Utc::now(),
                cancelled: false,
                vm_name: vm_name_for(7),
                block_number: 3,
                transaction_hash: "0xabc".into(),
            },
        );
        s.status.state = state;
        s.status.nft_token_id = nft;
        s
    }

    fn vm(phase: VmPhase) -> VirtualMachine {
        let spec: VirtualMachineSpec = serde_json::from_value(serde_json::json!({
            "owner": "0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266",
            "resources": {"cores": 1, "memoryMiB": 1024, "diskGiB": 10}
        }))
        .unwrap();
        let mut v = VirtualMachine::new(vm_name_for(7), spec);
        v.status.phase = phase;
        v.status.addresses.ipv4 = Some("10.0.0.5".into());
        v.status.last_error = Some("clone failed on node pve-secret-7".into());
        v
    }

    #[test]
    fn every_stage_has_a_phase_and_nothing_private_leaks() {
        use SubscriptionState as S;
        let cases = [
            (None, None, PublicPhase::Waiting),
            (Some(sub(S::Pending, None)), None, PublicPhase::Waiting),
            (
                Some(sub(S::PlanUnknown, None)),
                None,
                PublicPhase::PlanPending,
            ),
            (
                Some(sub(S::PayloadInvalid, None)),
                None,
                PublicPhase::Failed,
            ),
            (Some(sub(S::Cancelled, None)), None, PublicPhase::Cancelled),
            (Some(sub(S::Active, None)), None, PublicPhase::Provisioning),
            (
                Some(sub(S::Active, None)),
                Some(vm(VmPhase::Provisioning)),
                PublicPhase::Provisioning,
            ),
            (
                Some(sub(S::Active, None)),
                Some(vm(VmPhase::Running)),
                PublicPhase::Minting,
            ),
            (
                Some(sub(S::Active, Some(4))),
                Some(vm(VmPhase::Running)),
                PublicPhase::Ready,
            ),
            (
                Some(sub(S::Active, Some(4))),
                Some(vm(VmPhase::Suspended)),
                PublicPhase::Suspended,
            ),
            (
                Some(sub(S::Active, None)),
                Some(vm(VmPhase::Failed)),
                PublicPhase::Failed,
            ),
            (
                Some(sub(S::Active, None)),
                Some(vm(VmPhase::Terminating)),
                PublicPhase::Deleting,
            ),
        ];
        for (s, v, want) in cases {
            let st = derive(7, s.as_ref(), v.as_ref());
            assert_eq!(st.phase, want);
            let json = serde_json::to_string(&st).unwrap();
            for private in ["0xf39f", "10.0.0.5", "pve-secret", "0xabc"] {
                assert!(!json.contains(private), "{json} leaks {private}");
            }
        }
        let ready = derive(
            7,
            Some(&sub(S::Active, Some(4))),
            Some(&vm(VmPhase::Running)),
        );
        assert_eq!(
            serde_json::to_value(&ready).unwrap(),
            serde_json::json!({"subscriptionId": 7, "phase": "Ready", "message": ready.message, "nftTokenId": 4})
        );
    }
}
