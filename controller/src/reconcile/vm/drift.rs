//! Drift of managed settings, and disks that must grow.
//!
//! Drift is read from the cached listing (cores, memory, tags), so a VM that
//! matches its spec costs no request at all. Settings changed behind our back
//! are set back; settings we do not manage are never touched. A VM whose
//! config is locked (a task running on it) is left for a later visit.

use blockhost_crd::VirtualMachine;
use blockhost_crd::meta::EventType;
use blockhost_pve::{ClusterVm, DiskSize, Pve};

use super::error::Doing;
use super::spec::{Found, config_for, managed_tags};
use super::{Step, Visit, VmError, VmReconciler};

/// Whether the listing disagrees with the spec on a managed setting.
fn drifted(vm: &VirtualMachine, cv: &ClusterVm) -> Option<String> {
    let r = &vm.spec.resources;
    let mut what = Vec::new();
    if cv.maxcpu.round() as u64 != u64::from(r.cores.get()) {
        what.push(format!("cores {} (want {})", cv.maxcpu, r.cores));
    }
    if cv.maxmem >> 20 != u64::from(r.memory_mib.get()) {
        what.push(format!(
            "memory {} MiB (want {})",
            cv.maxmem >> 20,
            r.memory_mib
        ));
    }
    let want = managed_tags(vm);
    if !want.iter().all(|t| cv.tags.contains(t)) {
        what.push(format!("tags {:?} (want {:?})", cv.tags, want));
    }
    (!what.is_empty()).then(|| what.join(", "))
}

/// The drift step: writes every managed setting back when one differs.
pub async fn drift<P: Pve + 'static>(
    r: &VmReconciler<P>,
    v: &mut Visit,
    found: &mut Found,
) -> Result<Step, VmError> {
    let Some(diff) = found
        .listing
        .lock
        .is_none()
        .then(|| drifted(&v.vm, &found.listing))
        .flatten()
    else {
        return Ok(Step::Continue);
    };
    let spec_changed = v.vm.status.observed_generation != v.vm.metadata.generation;
    // config_for rewrites net0; without the MAC it has, Proxmox would make a new
    // one behind the running guest's back. A net0 that is gone or unreadable has
    // no MAC to keep: Proxmox makes one, as for a new NIC.
    let mac = r
        .pve
        .vm_config(&found.node, found.vmid)
        .await
        .doing("read the VM's config")?
        .net(0)
        .and_then(Result::ok)
        .and_then(|dev| dev.macaddr);
    r.pve
        .set_vm_config(&found.node, found.vmid, &config_for(&r.network, &v.vm, mac))
        .await
        .doing("set the managed settings back")?;
    r.observed.record_config(&v.vm, found.vmid).await;
    if spec_changed {
        v.event(
            EventType::Normal,
            "Reconfigured",
            format!("applied the new spec: {diff}"),
        );
    } else {
        v.event(
            EventType::Warning,
            "DriftCorrected",
            format!("a managed setting was changed outside BlockHost and was set back: {diff}"),
        );
    }
    Ok(Step::Continue)
}

/// The disk step: the disk only grows. Checked here and not only when creating:
/// a create that failed between clone and resize is finished by a later visit
/// that finds the VM, and a spec may ask for a bigger disk later. A listing
/// without a size (0) is no evidence of a small disk.
pub async fn disk<P: Pve + 'static>(
    r: &VmReconciler<P>,
    v: &mut Visit,
    found: &mut Found,
) -> Result<Step, VmError> {
    let gib = v.vm.spec.resources.disk_gib.get();
    let want = u64::from(gib) << 30;
    let listing = &found.listing;
    if listing.lock.is_some() || listing.maxdisk == 0 || listing.maxdisk >= want {
        return Ok(Step::Continue);
    }
    let had = listing.maxdisk >> 30;
    if let Some(upid) = r
        .pve
        .resize_disk(
            &found.node,
            found.vmid,
            &r.cfg.disk,
            DiskSize::gib(u64::from(gib)),
        )
        .await
        .doing("grow the disk")?
    {
        r.pve
            .wait_task(&upid, r.wait)
            .await
            .doing("grow the disk")?;
    }
    r.observed.patch(found.vmid, |cv| cv.maxdisk = want).await;
    found.listing.maxdisk = want;
    v.event(
        EventType::Normal,
        "DiskGrown",
        format!("{} grown from {had} GiB to {gib} GiB", r.cfg.disk),
    );
    Ok(Step::Continue)
}
