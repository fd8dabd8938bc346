//! What Proxmox should hold for a spec: the managed settings, the tags and the
//! description marker that identify a VM as ours, and its firewall. Shared by the
//! steps that create, adopt and correct VMs, so none of them reaches into another.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use blockhost_crd::VirtualMachine;
use blockhost_crd::config::NetworkConfig;
use blockhost_pve::{
    ClusterVm, ConfigUpdate, EffectiveOptions, FirewallPolicy, IpConfig, NetDevice, VmId,
};

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

/// The VM's addresses that Proxmox is told about: those of a configured pool
/// (what [`config_for`] writes into cloud-init), IPv4 first.
pub fn addresses_for(network: &NetworkConfig, vm: &VirtualMachine) -> Vec<IpAddr> {
    let a = &vm.status.addresses;
    let v4 = network
        .ipv4
        .as_ref()
        .and(a.ipv4.as_deref())
        .and_then(|s| s.parse::<Ipv4Addr>().ok())
        .map(IpAddr::V4);
    let v6 = network
        .ipv6
        .as_ref()
        .and(a.ipv6.as_deref())
        .and_then(|s| s.parse::<Ipv6Addr>().ok())
        .map(IpAddr::V6);
    v4.into_iter().chain(v6).collect()
}

/// What the VM's Proxmox firewall should hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FirewallSpec {
    /// Its options, every one explicit.
    pub options: EffectiveOptions,
    /// The only source addresses net0 may send from (the `ipfilter-net0` set).
    pub addresses: Vec<IpAddr>,
}

impl FirewallSpec {
    /// The addresses as one line, for messages.
    pub fn address_list(&self) -> String {
        if self.addresses.is_empty() {
            return "no address".to_owned();
        }
        self.addresses
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The VM's firewall: on, with MAC and IP filtering for its own addresses.
///
/// - `ipfilter` and `macfilter`: what a VM sends must carry its own MAC and one of
///   its addresses (or the link-local address PVE derives from that MAC, which
///   PVE adds to the set by itself), so it cannot take a neighbour's address.
/// - `dhcp` off: addresses come from BlockHost's pools through cloud-init, and
///   pve-firewall lets DHCP through *before* the MAC and IP filters when it is on.
/// - `ndp` on (IPv6 needs neighbour discovery to reach its gateway), `radv` off (a
///   tenant must not announce itself as a router).
/// - Both policies `ACCEPT`: a tenant's VM is a server its owner runs, reachable
///   on whatever ports the owner opens inside it (BlockHost has no way for an owner
///   to write Proxmox rules, and wallet login needs SSH); PVE's own default for
///   incoming traffic would be `DROP`. Spoofing is stopped by the filters, which
///   apply before the policy; traffic between VMs by bridge port isolation.
pub fn firewall_for(network: &NetworkConfig, vm: &VirtualMachine) -> FirewallSpec {
    FirewallSpec {
        options: EffectiveOptions {
            enable: true,
            ipfilter: true,
            macfilter: true,
            dhcp: false,
            ndp: true,
            radv: false,
            policy_in: FirewallPolicy::Accept,
            policy_out: FirewallPolicy::Accept,
        },
        addresses: addresses_for(network, vm),
    }
}

/// Every managed setting, as one config update. `mac` is net0's MAC to keep:
/// Proxmox gives a NIC written without one a new random MAC, which a running
/// VM's guest (its network config matches the MAC) and the MAC filter would not
/// follow; `None` only where the VM has none worth keeping yet (just cloned).
pub fn config_for(
    network: &NetworkConfig,
    vm: &VirtualMachine,
    mac: Option<String>,
) -> ConfigUpdate {
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
        macaddr: mac,
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
