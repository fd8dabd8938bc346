//! Deleting a VM: stop it, delete it with its disks, confirm Proxmox no longer has
//! it, then drop the finalizer so the store removes the object and releases its
//! VMID and addresses in the same transaction.
//!
//! A VM that is not ours (another name on our VMID) is never deleted.

use blockhost_crd::meta::EventType;
use blockhost_crd::{VirtualMachine, VmPhase};
use blockhost_pve::types::{DeleteOptions, RunState};
use blockhost_pve::{ErrorKind, Pve};
use std::time::Duration;

use super::{FINALIZER, VmError, VmReconciler};
use crate::reconcile::runtime::Action;

/// Runs the deletion of a VM marked for deletion.
pub async fn run<P: Pve + 'static>(
    r: &VmReconciler<P>,
    vm: VirtualMachine,
) -> Result<Action, VmError> {
    let name = vm.metadata.name.to_string();
    if vm.status.phase != VmPhase::Terminating {
        r.update(&name, |v| {
            v.status.phase = VmPhase::Terminating;
            true
        })
        .await?;
    }
    if let Some(vmid) = vm.status.vmid {
        let node = vm.status.node.clone().unwrap_or_default();
        match r.observed.get(vmid).await {
            Some(cv) if cv.name.as_deref() == Some(name.as_str()) => {
                if cv.status == RunState::Running {
                    let upid = r.pve.stop_vm(&cv.node, vmid).await?;
                    r.pve.wait_task(&upid, r.wait).await?;
                }
                let opts = DeleteOptions {
                    purge: true,
                    destroy_unreferenced_disks: true,
                };
                let upid = r.pve.delete_vm(&cv.node, vmid, opts).await?;
                r.pve.wait_task(&upid, r.wait).await?;
                r.observed.remove(vmid).await;
            }
            Some(cv) => {
                tracing::warn!(object = %name, vmid, other = ?cv.name, "VMID now holds another VM; not deleting it");
            }
            None => {}
        }
        // Confirm with Proxmox itself, not the cache.
        if !node.is_empty() {
            match r.pve.vm_status(&node, vmid).await {
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(e.into()),
                Ok(_) => {
                    if r.observed.get(vmid).await.is_none() {
                        // The listing was stale: look again with a fresh one.
                        r.observed.refresh(r.pve.as_ref()).await?;
                        return Ok(Action::RequeueAfter(Duration::ZERO));
                    }
                    return Ok(Action::RequeueAfter(Duration::from_secs(2)));
                }
            }
        }
    }
    r.event(
        &name,
        EventType::Normal,
        "Deleted",
        "the VM and its disks are gone from Proxmox".into(),
    )
    .await;
    r.update(&name, |v| {
        v.metadata.finalizers.retain(|f| f != FINALIZER);
        true
    })
    .await?;
    tracing::info!(object = %name, "VM deleted");
    Ok(Action::Done)
}
