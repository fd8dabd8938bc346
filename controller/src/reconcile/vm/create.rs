//! Creating a VM that has no Proxmox counterpart: place it, reserve a VMID,
//! clone the template, configure it and grow its disk.
//!
//! The VMID reservation and the node are durable before the clone is asked for
//! (see [`super::locate`] for how a clone left by a crash is adopted).

use blockhost_crd::meta::{ConditionStatus, EventType};
use blockhost_crd::{ConditionType, Plan, Reason, VirtualMachine, VmPhase};
use blockhost_pve::types::{GuestKind, NodeState, RunState};
use blockhost_pve::{CloneRequest, ClusterVm, DiskSize, ErrorKind, Pve, VmId};

use super::error::Doing;
use super::spec::{Found, config_for, marker};
use super::{Step, Visit, VmError, VmReconciler};

/// The create step: runs only when no VM was found, and hands the new one to
/// the steps after it.
pub async fn create<P: Pve + 'static>(r: &VmReconciler<P>, v: &mut Visit) -> Result<Step, VmError> {
    if v.found.is_some() {
        return Ok(Step::Continue);
    }
    let template = template_for(r, &v.vm).await?;
    let tpl = r
        .observed
        .get(template)
        .await
        .filter(|t| t.template)
        .ok_or(VmError::NoTemplate(template))?;
    let node = match &v.vm.status.node {
        Some(n) => n.clone(),
        None => place(r, u64::from(v.vm.spec.resources.memory_mib.get())).await?,
    };
    let vmid = match v.vm.status.vmid {
        Some(id) => id,
        None => reserve(r, &v.name).await?,
    };
    v.vm.status.vmid = Some(vmid);
    let n = node.clone();
    v.status(move |vm| {
        let changed = vm.status.node.as_deref() != Some(n.as_str())
            || vm.status.phase != VmPhase::Provisioning;
        vm.status.node = Some(n.clone());
        vm.status.phase = VmPhase::Provisioning;
        changed
    });
    // Durable before the clone: a crash after it finds the VM by node and id.
    r.flush(v).await?;
    let listing = clone(r, v, &tpl, vmid, &node).await?;
    let listing = configure(r, v, listing).await?;
    v.found = Some(Found {
        vmid,
        node,
        listing,
    });
    Ok(Step::Continue)
}

/// Reserves a free VMID in the store (free in Proxmox too, by the listing).
async fn reserve<P: Pve + 'static>(r: &VmReconciler<P>, name: &str) -> Result<VmId, VmError> {
    let taken = r.observed.vmids().await;
    let (first, last) = (r.cfg.vmid_first.get(), r.cfg.vmid_last.get());
    let n = name.to_owned();
    r.store(move |s| s.reserve_vmid(&n, first, last, &|id| taken.contains(&id)))
        .await
}

/// Clones the template to `vmid` on `node` and returns the new VM's listing.
async fn clone<P: Pve + 'static>(
    r: &VmReconciler<P>,
    v: &mut Visit,
    tpl: &ClusterVm,
    vmid: VmId,
    node: &str,
) -> Result<ClusterVm, VmError> {
    let mut req = CloneRequest::full(vmid)
        .name(v.name.clone())
        .description(marker(&v.vm));
    if let Some(st) = &r.cfg.storage {
        req = req.storage(st.clone());
    }
    if tpl.node != node {
        req.target = Some(node.to_owned());
    }
    let upid = match r.pve.clone_vm(&tpl.node, tpl.vmid, &req).await {
        Ok(u) => u,
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {
            let n = v.name.clone();
            r.store(move |s| s.reject_vmid(&n, vmid)).await?;
            return Err(VmError::ForeignVmid(vmid));
        }
        Err(source) => {
            return Err(VmError::Pve {
                doing: "clone the template",
                source,
            });
        }
    };
    r.pve
        .wait_task(&upid, r.wait)
        .await
        .doing("clone the template")?;
    let listing = ClusterVm {
        vmid,
        kind: GuestKind::Qemu,
        node: node.to_owned(),
        name: Some(v.name.clone()),
        status: RunState::Stopped,
        template: false,
        tags: Vec::new(),
        lock: None,
        maxmem: tpl.maxmem,
        mem: 0,
        maxcpu: tpl.maxcpu,
        cpu: 0.0,
        maxdisk: tpl.maxdisk,
        uptime: 0,
    };
    r.observed.insert(listing.clone()).await;
    v.event(
        EventType::Normal,
        "Cloned",
        format!("cloned template {} to VM {vmid} on {node}", tpl.vmid),
    );
    Ok(listing)
}

/// Sets every managed setting and grows the disk to the spec's size; returns
/// the listing as it now stands.
async fn configure<P: Pve + 'static>(
    r: &VmReconciler<P>,
    v: &mut Visit,
    mut listing: ClusterVm,
) -> Result<ClusterVm, VmError> {
    let (vmid, node) = (listing.vmid, listing.node.clone());
    let res = v.vm.spec.resources;
    r.pve
        .set_vm_config(&node, vmid, &config_for(&r.network, &v.vm, None))
        .await
        .doing("configure the VM")?;
    let want_disk = u64::from(res.disk_gib.get()) << 30;
    if want_disk > listing.maxdisk
        && let Some(upid) = r
            .pve
            .resize_disk(
                &node,
                vmid,
                &r.cfg.disk,
                DiskSize::gib(u64::from(res.disk_gib.get())),
            )
            .await
            .doing("grow the disk")?
    {
        r.pve
            .wait_task(&upid, r.wait)
            .await
            .doing("grow the disk")?;
    }
    r.observed.record_config(&v.vm, vmid).await;
    r.observed
        .patch(vmid, |cv| cv.maxdisk = cv.maxdisk.max(want_disk))
        .await;
    // What was just written, whether or not a refresh has replaced our entry.
    listing.maxcpu = f64::from(res.cores.get());
    listing.maxmem = u64::from(res.memory_mib.get()) << 20;
    listing.tags = super::spec::managed_tags(&v.vm);
    listing.maxdisk = listing.maxdisk.max(want_disk);
    let listing = r.observed.get(vmid).await.unwrap_or(listing);
    v.condition(
        ConditionType::Provisioned,
        ConditionStatus::True,
        Reason::Created,
        format!("VM {vmid} created and configured on {node}"),
    );
    v.status(|vm| {
        let before = vm.status.conditions.len();
        vm.status.conditions.retain(|c| !c.is(ConditionType::Lost));
        vm.status.conditions.len() != before
    });
    v.event(
        EventType::Normal,
        "Configured",
        format!(
            "{} cores, {} MiB, {} GiB",
            res.cores, res.memory_mib, res.disk_gib
        ),
    );
    Ok(listing)
}

/// The template to clone: the spec's, its plan's, or the configured default.
async fn template_for<P: Pve + 'static>(
    r: &VmReconciler<P>,
    vm: &VirtualMachine,
) -> Result<VmId, VmError> {
    if let Some(t) = vm.spec.template {
        return Ok(t.get());
    }
    if let Some(plan) = &vm.spec.plan {
        let p = plan.to_string();
        if let Some(plan) = r.store(move |s| s.get::<Plan>(&p)).await? {
            return Ok(plan.spec.template.get());
        }
    }
    Ok(r.cfg.default_template.get())
}

/// The node with the most free memory among the allowed, online ones.
async fn place<P: Pve + 'static>(r: &VmReconciler<P>, memory_mib: u64) -> Result<String, VmError> {
    let nodes = r.pve.nodes().await.doing("list the nodes")?;
    let need = memory_mib << 20;
    nodes
        .iter()
        .filter(|n| n.status == NodeState::Online)
        .filter(|n| r.cfg.nodes.is_empty() || r.cfg.nodes.contains(&n.node))
        .filter(|n| n.free_mem() >= need)
        .max_by_key(|n| n.free_mem())
        .map(|n| n.node.clone())
        .ok_or_else(|| VmError::NoCapacity {
            allowed: if r.cfg.nodes.is_empty() {
                "any node".to_string()
            } else {
                r.cfg.nodes.join(", ")
            },
            memory_mib,
        })
}
