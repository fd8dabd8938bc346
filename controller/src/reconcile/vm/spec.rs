//! What Proxmox should hold for a spec: the managed settings, the tags and the
//! description marker that identify a VM as ours. Shared by the steps that
//! create, adopt and correct VMs, so none of them reaches into another.

use std::net::{Ipv4Addr, Ipv6Addr};

use blockhost_crd::VirtualMachine;
use blockhost_crd::config::NetworkConfig;
use blockhost_pve::{ClusterVm, ConfigUpdate, IpConfig, NetDevice, VmId};

use super::MANAGED_TAG;

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

/// Tags a managed VM carries: the managed tag and its uid.
pub fn managed_tags(vm: &VirtualMachine) -> Vec<String> {
    vec![MANAGED_TAG.to_owned(), uid_tag(vm)]
}

/// Every managed setting, as one config update.
pub fn config_for(network: &NetworkConfig, vm: &VirtualMachine) -> ConfigUpdate {
    let sp = &vm.spec;
    let mut ip = IpConfig::new();
    match (
        &network.ipv4,
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
        &network.ipv6,
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
        bridge: Some(network.bridge.clone()),
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
    if !network.nameservers.is_empty() {
        u = u.nameserver(
            network
                .nameservers
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(" "),
        );
    }
    u
}
