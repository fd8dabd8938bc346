//! Owning a VM object and finding its Proxmox counterpart.
//!
//! The VMID is reserved in the store *before* the clone (Proxmox's `nextid`
//! reserves nothing), and the clone is named after the object and carries its uid
//! in a tag. So after a crash anywhere between reserve and store write, the next
//! reconcile finds the VM under the reserved id and adopts it instead of cloning
//! a second one.

use blockhost_crd::config::LostPolicy;
use blockhost_crd::meta::{ConditionStatus, EventType};
use blockhost_crd::{ConditionType, Reason, VirtualMachine, VmPhase, condition};
use blockhost_pve::{ClusterVm, ErrorKind, Pve, VmId};

use super::error::Doing;
use super::spec::{Found, uid_tag};
use super::{FINALIZER, Step, Visit, VmError, VmReconciler};
use crate::reconcile::runtime::Action;

fn is_ours(vm: &VirtualMachine, cv: &ClusterVm) -> bool {
    cv.name.as_deref() == Some(vm.metadata.name.as_str())
        || cv.tags.iter().any(|t| *t == uid_tag(vm))
}

fn found(cv: ClusterVm) -> Found {
    Found {
        vmid: cv.vmid,
        node: cv.node.clone(),
        listing: cv,
    }
}

/// The own step: our finalizer on the object before anything exists in
/// Proxmox, and addresses retried if a pool was exhausted. Both are written at
/// once; the object is read again only if anything was.
pub async fn own<P: Pve + 'static>(r: &VmReconciler<P>, v: &mut Visit) -> Result<Step, VmError> {
    let mut wrote = false;
    if !v.vm.metadata.finalizers.iter().any(|f| f == FINALIZER) {
        let n = v.name.clone();
        r.store(move |s| {
            s.update_status::<VirtualMachine>(&n, |vm| {
                vm.metadata.finalizers.push(FINALIZER.into());
                true
            })
        })
        .await?;
        wrote = true;
    }
    let addresses = &v.vm.status.addresses;
    if addresses.ipv4.is_none() || addresses.ipv6.is_none() {
        let n = v.name.clone();
        r.store(move |s| s.retry_addresses(&n)).await?;
        wrote = true;
    }
    if wrote {
        match r.load(&v.name).await? {
            Some(vm) => v.vm = vm,
            None => return Ok(Step::Done(Action::Done)),
        }
    }
    Ok(Step::Continue)
}

/// The locate step: finds the VM's Proxmox counterpart, or leaves it to the
/// create step; a VM lost under the `Hold` policy ends the visit.
pub async fn locate<P: Pve + 'static>(r: &VmReconciler<P>, v: &mut Visit) -> Result<Step, VmError> {
    let Some(vmid) = v.vm.status.vmid else {
        return Ok(Step::Continue);
    };
    if let Some(cv) = r.observed.get(vmid).await {
        if is_ours(&v.vm, &cv) {
            v.found = Some(found(cv));
            return Ok(Step::Continue);
        }
        // Someone else's VM sits on our reserved id: give the id up for good.
        let n = v.name.clone();
        r.store(move |s| s.reject_vmid(&n, vmid)).await?;
        return Err(VmError::ForeignVmid(vmid));
    }
    // The node is recorded before the clone is requested, so without one no clone
    // was ever started: nothing to look for. (Asking Proxmox about `/nodes//qemu/…`
    // would be refused as an invalid node name, and retried forever: a kill
    // between the VMID reservation and the node write left a VM stuck that way.)
    let Some(node) = v.vm.status.node.clone() else {
        return Ok(Step::Continue);
    };
    // Not in the listing: ask Proxmox directly (only on this unusual path), since
    // the listing may predate a clone another process made.
    match r.pve.vm_status(&node, vmid).await {
        Ok(_) => adopt(r, v, vmid).await,
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(lost(r, v, vmid)),
        Err(e) => Err(VmError::Pve {
            doing: "look up the VM",
            source: e,
        }),
    }
}

/// Proxmox has a VM on our id that the listing did not show: adopt it if ours.
async fn adopt<P: Pve + 'static>(
    r: &VmReconciler<P>,
    v: &mut Visit,
    vmid: VmId,
) -> Result<Step, VmError> {
    r.observed
        .refresh(r.pve.as_ref())
        .await
        .doing("list the cluster's VMs")?;
    if let Some(cv) = r.observed.get(vmid).await
        && is_ours(&v.vm, &cv)
    {
        v.event(
            EventType::Normal,
            "Adopted",
            format!(
                "found VM {vmid} on {} after a restart; adopting it",
                cv.node
            ),
        );
        v.found = Some(found(cv));
    }
    Ok(Step::Continue)
}

/// Our VM is gone from Proxmox: re-create it, or hold it for an operator.
fn lost<P: Pve + 'static>(r: &VmReconciler<P>, v: &mut Visit, vmid: VmId) -> Step {
    let policy = r.cfg.lost_policy;
    let hold = policy == LostPolicy::Hold;
    let conditions = &v.vm.status.conditions;
    if hold && condition::has(conditions, ConditionType::Lost, ConditionStatus::True) {
        return Step::Done(Action::Done); // held until an operator acts
    }
    if !condition::has(
        conditions,
        ConditionType::Provisioned,
        ConditionStatus::True,
    ) {
        return Step::Continue; // reserved, never cloned (or the clone failed)
    }
    let msg = format!("VM {vmid} vanished from Proxmox behind our back (policy: {policy:?})");
    v.condition(
        ConditionType::Lost,
        ConditionStatus::True,
        Reason::VanishedFromProxmox,
        msg.clone(),
    );
    v.condition(
        ConditionType::Provisioned,
        ConditionStatus::False,
        Reason::Lost,
        "the VM must be created again",
    );
    v.status(move |vm| {
        vm.status.phase = if hold {
            VmPhase::Failed
        } else {
            VmPhase::Pending
        };
        vm.status.access_file_digest = None;
        true
    });
    v.event(EventType::Warning, "Lost", msg);
    if hold {
        Step::Done(Action::Done)
    } else {
        Step::Continue
    }
}
