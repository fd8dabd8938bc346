//! Finding a VM's Proxmox counterpart, and creating it when there is none.
//!
//! The VMID is reserved in the store *before* the clone (Proxmox's `nextid`
//! reserves nothing), and the clone is named after the object and carries its uid
//! in the description. So after a crash anywhere between reserve and store write,
//! the next reconcile finds the VM under the reserved id and adopts it instead of
//! cloning a second one.

use std::net::{Ipv4Addr, Ipv6Addr};

use blockhost_crd::config::LostPolicy;
use blockhost_crd::meta::{ConditionStatus, EventType, set_condition};
use blockhost_crd::{Plan, VirtualMachine, VmPhase};
use blockhost_pve::types::{GuestKind, RunState};
use blockhost_pve::{
    CloneRequest, ClusterVm, ConfigUpdate, DiskSize, ErrorKind, IpConfig, NetDevice, Pve, VmId,
};

use super::{MANAGED_TAG, VmError, VmReconciler};
use crate::reconcile::runtime::Action;

/// Where a VM lives, once found.
#[derive(Debug, Clone)]
pub struct Found {
    /// Its VMID.
    pub vmid: VmId,
    /// Its node.
    pub node: String,
    /// What the listing says about it.
    pub listing: ClusterVm,
}

/// Outcome of [`locate`].
#[derive(Debug)]
pub enum Located {
    /// It exists.
    Found(Found),
    /// It must be created (or re-created).
    Missing,
    /// It vanished and the policy is to hold: nothing to do until an operator acts.
    Hold,
}

/// The tag carrying the object's uid.
pub fn uid_tag(vm: &VirtualMachine) -> String {
    format!("bh-{}", vm.metadata.uid.as_deref().unwrap_or("unknown"))
}

/// The description marker (also carries the uid, for adoption checks).
pub fn marker(vm: &VirtualMachine) -> String {
    format!(
        "Managed by BlockHost; do not edit. object=VirtualMachine/{} uid={}",
        vm.metadata.name,
        vm.metadata.uid.as_deref().unwrap_or("unknown")
    )
}

fn is_ours(vm: &VirtualMachine, cv: &ClusterVm) -> bool {
    cv.name.as_deref() == Some(vm.metadata.name.as_str())
        || cv.tags.iter().any(|t| *t == uid_tag(vm))
}

fn provisioned(vm: &VirtualMachine) -> bool {
    vm.status
        .conditions
        .iter()
        .any(|c| c.type_ == "Provisioned" && c.status == ConditionStatus::True)
}

/// Finds the VM's Proxmox counterpart.
pub async fn locate<P: Pve + 'static>(
    r: &VmReconciler<P>,
    vm: &VirtualMachine,
) -> Result<Located, VmError> {
    let name = vm.metadata.name.to_string();
    let Some(vmid) = vm.status.vmid else {
        return Ok(Located::Missing);
    };
    if let Some(cv) = r.observed.get(vmid).await {
        if is_ours(vm, &cv) {
            return Ok(Located::Found(Found {
                vmid,
                node: cv.node.clone(),
                listing: cv,
            }));
        }
        // Someone else's VM sits on our reserved id: give the id up for good.
        let n = name.clone();
        r.store(move |s| s.reject_vmid(&n, vmid)).await?;
        return Err(VmError::ForeignVmid(vmid));
    }
    // The node is recorded before the clone is requested, so without one no clone
    // was ever started: nothing to look for. (Asking Proxmox about `/nodes//qemu/…`
    // would be refused as an invalid node name, and retried forever: a kill
    // between the VMID reservation and the node write left a VM stuck that way.)
    let Some(node) = vm.status.node.clone() else {
        return Ok(Located::Missing);
    };
    // Not in the listing: ask Proxmox directly (only on this unusual path), since
    // the listing may predate a clone another process made.
    match r.pve.vm_status(&node, vmid).await {
        Ok(_) => {
            r.observed.refresh(r.pve.as_ref()).await?;
            if let Some(cv) = r.observed.get(vmid).await
                && is_ours(vm, &cv)
            {
                r.event(
                    &name,
                    EventType::Normal,
                    "Adopted",
                    format!(
                        "found VM {vmid} on {} after a restart; adopting it",
                        cv.node
                    ),
                )
                .await;
                return Ok(Located::Found(Found {
                    vmid,
                    node: cv.node.clone(),
                    listing: cv,
                }));
            }
            Ok(Located::Missing)
        }
        Err(e) if e.kind() == ErrorKind::NotFound => {
            if !provisioned(vm) {
                return Ok(Located::Missing); // reserved, never cloned (or the clone failed)
            }
            let policy = r.cfg.lost_policy;
            let msg =
                format!("VM {vmid} vanished from Proxmox behind our back (policy: {policy:?})");
            let cond = r.condition(
                "Lost",
                ConditionStatus::True,
                "VanishedFromProxmox",
                msg.clone(),
            );
            r.update(&name, move |v| {
                set_condition(&mut v.status.conditions, cond);
                let gone = r_cond(ConditionStatus::False, v);
                set_condition(&mut v.status.conditions, gone);
                v.status.phase = if policy == LostPolicy::Hold {
                    VmPhase::Failed
                } else {
                    VmPhase::Pending
                };
                v.status.access_file_digest = None;
                true
            })
            .await?;
            r.event(&name, EventType::Warning, "Lost", msg).await;
            Ok(if policy == LostPolicy::Hold {
                Located::Hold
            } else {
                Located::Missing
            })
        }
        Err(e) => Err(e.into()),
    }
}

/// `Provisioned` reset, reusing the `Lost` condition's timestamp.
fn r_cond(status: ConditionStatus, v: &VirtualMachine) -> blockhost_crd::Condition {
    let time = v
        .status
        .conditions
        .iter()
        .find(|c| c.type_ == "Lost")
        .map_or_else(chrono::Utc::now, |c| c.last_transition_time);
    blockhost_crd::Condition {
        type_: "Provisioned".into(),
        status,
        reason: "Lost".into(),
        message: "the VM must be created again".into(),
        last_transition_time: time,
    }
}

/// Creates the VM: place, reserve, clone, configure, grow the disk; then hands
/// over to the power step in the same reconcile.
pub async fn run<P: Pve + 'static>(
    r: &VmReconciler<P>,
    vm: VirtualMachine,
) -> Result<Action, VmError> {
    let name = vm.metadata.name.to_string();
    let template = template_for(r, &vm).await?;
    let tpl = r
        .observed
        .get(template)
        .await
        .filter(|t| t.template)
        .ok_or(VmError::NoTemplate(template))?;

    let node = match &vm.status.node {
        Some(n) => n.clone(),
        None => place(r, u64::from(vm.spec.resources.memory_mib.get())).await?,
    };
    let vmid = match vm.status.vmid {
        Some(v) => v,
        None => {
            let taken = r.observed.vmids().await;
            let (first, last) = (r.cfg.vmid_first.get(), r.cfg.vmid_last.get());
            let n = name.clone();
            r.store(move |s| s.reserve_vmid(&n, first, last, &|v| taken.contains(&v)))
                .await?
        }
    };
    let n2 = node.clone();
    r.update(&name, move |v| {
        v.status.node = Some(n2);
        v.status.phase = VmPhase::Provisioning;
        true
    })
    .await?;

    let mut req = CloneRequest::full(vmid)
        .name(name.clone())
        .description(marker(&vm));
    if let Some(st) = &r.cfg.storage {
        req = req.storage(st.clone());
    }
    if tpl.node != node {
        req.target = Some(node.clone());
    }
    let upid = match r.pve.clone_vm(&tpl.node, template, &req).await {
        Ok(u) => u,
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {
            let n = name.clone();
            r.store(move |s| s.reject_vmid(&n, vmid)).await?;
            return Err(VmError::ForeignVmid(vmid));
        }
        Err(e) => return Err(e.into()),
    };
    r.pve.wait_task(&upid, r.wait).await?;
    r.observed
        .insert(ClusterVm {
            vmid,
            kind: GuestKind::Qemu,
            node: node.clone(),
            name: Some(name.clone()),
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
        })
        .await;
    r.event(
        &name,
        EventType::Normal,
        "Cloned",
        format!("cloned template {template} to VM {vmid} on {node}"),
    )
    .await;

    let update = config_for(r, &vm)?;
    r.pve.set_vm_config(&node, vmid, &update).await?;
    let want_disk = u64::from(vm.spec.resources.disk_gib.get()) << 30;
    if want_disk > tpl.maxdisk
        && let Some(upid) = r
            .pve
            .resize_disk(
                &node,
                vmid,
                &r.cfg.disk,
                DiskSize::gib(u64::from(vm.spec.resources.disk_gib.get())),
            )
            .await?
    {
        r.pve.wait_task(&upid, r.wait).await?;
    }
    r.observed.record_config(&vm, vmid).await;
    r.observed
        .patch(vmid, |cv| cv.maxdisk = cv.maxdisk.max(want_disk))
        .await;
    let res = vm.spec.resources;
    let cond = r.condition(
        "Provisioned",
        ConditionStatus::True,
        "Created",
        format!("VM {vmid} created and configured on {node}"),
    );
    let Some(vm) = r
        .update(&name, move |v| {
            set_condition(&mut v.status.conditions, cond);
            v.status.conditions.retain(|c| c.type_ != "Lost");
            true
        })
        .await?
    else {
        return Ok(Action::Done);
    };
    r.event(
        &name,
        EventType::Normal,
        "Configured",
        format!(
            "{} cores, {} MiB, {} GiB",
            res.cores, res.memory_mib, res.disk_gib
        ),
    )
    .await;
    let listing = r
        .observed
        .get(vmid)
        .await
        .ok_or_else(|| VmError::Placement("the new VM left the listing".into()))?;
    super::power::run(
        r,
        vm,
        Found {
            vmid,
            node,
            listing,
        },
    )
    .await
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
async fn place<P: Pve + 'static>(r: &VmReconciler<P>, mem_mib: u64) -> Result<String, VmError> {
    let nodes = r.pve.nodes().await?;
    let need = mem_mib << 20;
    nodes
        .iter()
        .filter(|n| n.status == blockhost_pve::types::NodeState::Online)
        .filter(|n| r.cfg.nodes.is_empty() || r.cfg.nodes.contains(&n.node))
        .filter(|n| n.free_mem() >= need)
        .max_by_key(|n| n.free_mem())
        .map(|n| n.node.clone())
        .ok_or_else(|| {
            let allowed = if r.cfg.nodes.is_empty() {
                "any node".to_string()
            } else {
                r.cfg.nodes.join(", ")
            };
            VmError::Placement(format!(
                "no online node among {allowed} has {mem_mib} MiB free"
            ))
        })
}

/// Tags a managed VM carries: the managed tag and its uid.
pub fn managed_tags(vm: &VirtualMachine) -> Vec<String> {
    vec![MANAGED_TAG.to_owned(), uid_tag(vm)]
}

/// Every managed setting, as one config update.
pub fn config_for<P: Pve + 'static>(
    r: &VmReconciler<P>,
    vm: &VirtualMachine,
) -> Result<ConfigUpdate, VmError> {
    let sp = &vm.spec;
    let mut ip = IpConfig::new();
    match (
        &r.network.ipv4,
        vm.status
            .addresses
            .ipv4
            .as_deref()
            .and_then(|a| a.parse::<Ipv4Addr>().ok()),
    ) {
        (Some(pool), Some(a)) => ip = ip.ipv4(a, pool.cidr.len(), Some(pool.gateway)),
        _ => ip.ip = Some(blockhost_pve::propstring::Ipv4Setting::Dhcp),
    }
    if let (Some(pool), Some(a)) = (
        &r.network.ipv6,
        vm.status
            .addresses
            .ipv6
            .as_deref()
            .and_then(|a| a.parse::<Ipv6Addr>().ok()),
    ) {
        ip = ip.ipv6(a, 128, Some(pool.gateway));
    }
    let net = NetDevice {
        model: "virtio".into(),
        macaddr: None,
        bridge: Some(r.network.bridge.clone()),
        tag: None,
        firewall: Some(true),
        extra: Vec::new(),
    };
    let mut u = ConfigUpdate::new()
        .cores(sp.resources.cores.get())
        .memory_mib(u64::from(sp.resources.memory_mib.get()))
        .name(vm.metadata.name.to_string())
        .description(marker(vm))
        .tags(managed_tags(vm))
        .ciuser(sp.guest_user.to_string())
        .ipconfig(0, &ip)
        .net(0, &net)
        .agent(true)
        .onboot(true);
    if !sp.ssh_keys.is_empty() {
        u = u.ssh_keys(sp.ssh_keys.iter().map(|k| k.as_str().to_owned()));
    }
    if !r.network.nameservers.is_empty() {
        u = u.nameserver(
            r.network
                .nameservers
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(" "),
        );
    }
    Ok(u)
}
