//! Deleting a VM: stop it, delete it with its disks, confirm Proxmox no longer has
//! it, then drop the finalizer so the store removes the object and releases its
//! VMID and addresses in the same transaction.
//!
//! A VM that is not ours (another name on our VMID) is never deleted.

use blockhost_crd::VmPhase;
use blockhost_crd::meta::EventType;
use blockhost_pve::types::{DeleteOptions, RunState};
use blockhost_pve::{ErrorKind, Pve, VmId};
use std::time::Duration;

use super::error::Doing;
use super::{FINALIZER, Step, Visit, VmError, VmReconciler};
use crate::reconcile::runtime::Action;

/// The delete step: only for a VM marked for deletion; the visit ends here.
pub async fn delete<P: Pve + 'static>(r: &VmReconciler<P>, v: &mut Visit) -> Result<Step, VmError> {
    if v.vm.metadata.deletion_timestamp.is_none() {
        return Ok(Step::Continue);
    }
    v.status(|vm| {
        let changed = vm.status.phase != VmPhase::Terminating;
        vm.status.phase = VmPhase::Terminating;
        changed
    });
    if let Some(vmid) = v.vm.status.vmid {
        remove(r, &v.name, vmid).await?;
        // Confirm with Proxmox itself, not the cache.
        let node = v.vm.status.node.clone().unwrap_or_default();
        if !node.is_empty() {
            match r.pve.vm_status(&node, vmid).await {
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(VmError::Pve {
                        doing: "confirm the VM is gone",
                        source: e,
                    });
                }
                Ok(_) => return still_there(r, vmid).await,
            }
        }
    }
    v.event(
        EventType::Normal,
        "Deleted",
        "the VM and its disks are gone from Proxmox".into(),
    );
    v.status(|vm| {
        vm.metadata.finalizers.retain(|f| f != FINALIZER);
        true
    });
    tracing::info!(object = %v.name, "VM deleted");
    Ok(Step::Done(Action::Done))
}

/// Stops and purges the VM on `vmid` if the listing says it is ours.
async fn remove<P: Pve + 'static>(
    r: &VmReconciler<P>,
    name: &str,
    vmid: VmId,
) -> Result<(), VmError> {
    match r.observed.get(vmid).await {
        Some(cv) if cv.name.as_deref() == Some(name) => {
            if cv.status == RunState::Running {
                let upid = r.pve.stop_vm(&cv.node, vmid).await.doing("stop the VM")?;
                r.pve.wait_task(&upid, r.wait).await.doing("stop the VM")?;
            }
            let opts = DeleteOptions {
                purge: true,
                destroy_unreferenced_disks: true,
            };
            let upid = r
                .pve
                .delete_vm(&cv.node, vmid, opts)
                .await
                .doing("delete the VM")?;
            r.pve
                .wait_task(&upid, r.wait)
                .await
                .doing("delete the VM")?;
            r.observed.remove(vmid).await;
        }
        Some(cv) => {
            tracing::warn!(object = %name, vmid, other = ?cv.name, "VMID now holds another VM; not deleting it");
        }
        None => {}
    }
    Ok(())
}

/// Proxmox still has the VM: look again soon (at once with a fresh listing, if
/// ours was stale).
async fn still_there<P: Pve + 'static>(r: &VmReconciler<P>, vmid: VmId) -> Result<Step, VmError> {
    if r.observed.get(vmid).await.is_none() {
        r.observed
            .refresh(r.pve.as_ref())
            .await
            .doing("list the cluster's VMs")?;
        return Ok(Step::Done(Action::RequeueAfter(Duration::ZERO)));
    }
    Ok(Step::Done(Action::RequeueAfter(Duration::from_secs(2))))
}
