//! Tenant isolation: each VM's Proxmox firewall, and its bridge port.
//!
//! Two steps. [`firewall`] (before the VM is started) makes the VM's firewall
//! what [`super::spec::firewall_for`] says: the `ipfilter-net0` IP set holding
//! exactly the VM's addresses (created before the filter is switched on, so the
//! VM never runs with a half-filled set), the options (on, IP and MAC filtering,
//! no DHCP, no router advertisements) and `firewall=1` on net0. Anything found
//! otherwise is set back, as drift. [`isolate`] (after the VM runs) asks the root
//! agent to set the `isolated` flag on the VM's bridge port, so VMs on the bridge
//! reach the uplink but never each other; a port is made afresh at every start, so
//! a start always isolates again.
//!
//! Neither the firewall nor the port shows in the cluster listing that drift
//! detection reads, so both are looked at on their own clock ([`Guard`]): when
//! what they should be changes (a new VMID, node or address), after the VM is
//! started, and every `proxmox.firewallCheckSecs` ([`CHECK_EVERY`]) otherwise. That clock also bounds how long
//! a settled VM is skipped by resyncs. A VM in steady state costs four Proxmox
//! reads and one agent call per period, nothing in between.
//!
//! Without a root agent (no `firewall` section in the configuration) ports are not
//! isolated and the `PortIsolated` condition says so; the Proxmox firewall still
//! keeps each VM to its own addresses. PVE enforces no VM firewall while the
//! datacenter firewall is off: the `Firewall` condition says that too.

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};

use blockhost_crd::meta::{ConditionStatus, EventType};
use blockhost_crd::{ConditionType, Reason, condition};
use blockhost_pve::types::RunState;
use blockhost_pve::{IPFILTER_NET0, Pve, VmId};
use blockhost_root_agent::client::{ClientError, RootAgentClient};
use blockhost_root_agent::proto::{BridgePort, Isolated, NetIndex};
use chrono::{DateTime, Utc};

use super::error::Doing;
use super::spec::{FirewallSpec, Found, firewall_for};
use super::{Step, Visit, VmError, VmReconciler};

/// How often a VM's firewall and port isolation are read back when nothing else
/// asks for it (`proxmox.firewallCheckSecs`' default).
pub const CHECK_EVERY: chrono::Duration = chrono::Duration::minutes(10);

/// How soon a failed isolation is tried again.
const ISOLATION_RETRY: chrono::Duration = chrono::Duration::seconds(30);

/// The future [`PortIsolator::isolate`] returns.
pub type IsolateFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Isolated, ClientError>> + Send + 'a>>;

/// Sets the isolation flag of a VM's bridge port: the root agent in the daemon, a
/// recording fake in tests.
pub trait PortIsolator: Send + Sync + std::fmt::Debug {
    /// Isolates the bridge port of the VM's interface `net{net}`.
    fn isolate(&self, vmid: VmId, net: u8) -> IsolateFuture<'_>;
}

impl PortIsolator for RootAgentClient {
    fn isolate(&self, vmid: VmId, net: u8) -> IsolateFuture<'_> {
        Box::pin(async move {
            // Both bounds hold for any VM Proxmox has; the agent checks them again.
            let port = BridgePort {
                vmid: blockhost_crd::Vmid::new(vmid)
                    .map_err(|e| ClientError::Refused(e.to_string()))?,
                net: NetIndex::new(net).map_err(ClientError::Refused)?,
                isolated: true,
            };
            self.isolate_port(&port).await
        })
    }
}

/// When each VM's firewall and port are due to be looked at again.
#[derive(Debug)]
pub struct Guard {
    /// The root agent; `None` when none is configured.
    pub isolator: Option<Arc<dyn PortIsolator>>,
    /// How often a settled VM is checked again.
    pub check_every: chrono::Duration,
    due: Mutex<HashMap<String, Due>>,
    /// When the datacenter firewall was last seen on.
    cluster_on_at: Mutex<Option<DateTime<Utc>>>,
}

#[derive(Debug, Clone, Default)]
struct Due {
    /// What the firewall was last made to be (node, VMID, addresses).
    firewall_key: String,
    firewall: Option<DateTime<Utc>>,
    /// The VMID whose port was last isolated, and when to look again.
    isolation: Option<(VmId, DateTime<Utc>)>,
}

impl Default for Guard {
    /// No root agent, checks every [`CHECK_EVERY`].
    fn default() -> Self {
        Self::new(None)
    }
}

impl Guard {
    /// A guard that isolates ports through `isolator`, if any.
    pub fn new(isolator: Option<Arc<dyn PortIsolator>>) -> Self {
        Self {
            isolator,
            check_every: CHECK_EVERY,
            due: Mutex::new(HashMap::new()),
            cluster_on_at: Mutex::new(None),
        }
    }

    /// Sets how often a settled VM is checked again.
    pub fn check_every(mut self, every: chrono::Duration) -> Self {
        self.check_every = every;
        self
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Due>> {
        self.due.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The earliest time something of `name` is due, if it was ever checked.
    pub fn next_due(&self, name: &str) -> Option<DateTime<Utc>> {
        let m = self.lock();
        let d = m.get(name)?;
        let times = d.firewall.into_iter().chain(d.isolation.map(|(_, t)| t));
        times.min()
    }

    /// Drops what is known of a VM that is gone.
    pub fn forget(&self, name: &str) {
        self.lock().remove(name);
    }

    fn firewall_due(&self, name: &str, key: &str, now: DateTime<Utc>) -> bool {
        match self.lock().get(name) {
            Some(d) => d.firewall_key != key || d.firewall.is_none_or(|t| now >= t),
            None => true,
        }
    }

    fn firewall_checked(&self, name: &str, key: String, next: DateTime<Utc>) {
        let mut m = self.lock();
        let d = m.entry(name.to_owned()).or_default();
        d.firewall_key = key;
        d.firewall = Some(next);
    }

    fn isolation_due(&self, name: &str, vmid: VmId, started: bool, now: DateTime<Utc>) -> bool {
        if started {
            return true;
        }
        match self.lock().get(name).and_then(|d| d.isolation) {
            Some((id, t)) => id != vmid || now >= t,
            None => true,
        }
    }

    fn isolation_checked(&self, name: &str, vmid: VmId, next: DateTime<Utc>) {
        self.lock().entry(name.to_owned()).or_default().isolation = Some((vmid, next));
    }

    /// Whether the datacenter firewall is on. Seen on, it is believed for a check
    /// period; seen off, it is asked again at every check, so the condition clears
    /// soon after an operator turns it on.
    async fn cluster_on<P: Pve>(&self, pve: &P, now: DateTime<Utc>) -> Result<bool, VmError> {
        let seen = *self.cluster_on_at.lock().unwrap_or_else(|p| p.into_inner());
        if seen.is_some_and(|t| now - t < self.check_every) {
            return Ok(true);
        }
        let on = pve
            .cluster_firewall_options()
            .await
            .doing("read the datacenter firewall options")?
            .enabled();
        *self.cluster_on_at.lock().unwrap_or_else(|p| p.into_inner()) = on.then_some(now);
        Ok(on)
    }
}

/// The `Firewall` condition's message when it is in force.
fn in_force_message(want: &FirewallSpec) -> String {
    format!(
        "net0 may send only from its own MAC and {} (IP set {IPFILTER_NET0}); DHCP and router advertisements from the VM are dropped",
        want.address_list()
    )
}

/// The `Firewall` condition's message when the datacenter firewall is off.
fn cluster_off_message(want: &FirewallSpec) -> String {
    format!(
        "the VM's firewall is set (net0 limited to its MAC and {}), but the datacenter firewall is off, so Proxmox enforces none of it; turn it on (pvesh set /cluster/firewall/options --enable 1)",
        want.address_list()
    )
}

/// The firewall step: reads the VM's firewall back when due and sets back what
/// differs. Runs before the power step, so a new VM is filtered from its first boot.
pub async fn firewall<P: Pve + 'static>(
    r: &VmReconciler<P>,
    v: &mut Visit,
    found: &Found,
) -> Result<Step, VmError> {
    let want = firewall_for(&r.network, &v.vm);
    let key = format!("{}/{}/{}", found.node, found.vmid, want.address_list());
    // A VM under a config lock (a backup, a migration) is looked at once it is free.
    if found.listing.lock.is_some() || !r.guard.firewall_due(&v.name, &key, v.now) {
        return Ok(Step::Continue);
    }
    let (node, vmid) = (found.node.clone(), found.vmid);
    // The set first: the filter must never be on with the set half filled.
    let mut fixed = ipset(r, &node, vmid, &want).await?;
    let have = r
        .pve
        .vm_firewall_options(&node, vmid)
        .await
        .doing("read the VM's firewall options")?;
    let differs = have.effective().differences(&want.options);
    if !differs.is_empty() {
        r.pve
            .set_vm_firewall_options(&node, vmid, &want.options.explicit())
            .await
            .doing("set the VM's firewall options")?;
        fixed.extend(differs.into_iter().map(|d| format!("option {d}")));
    }
    fixed.extend(nic(r, &node, vmid).await?);
    let cluster_on = r.guard.cluster_on(r.pve.as_ref(), v.now).await?;

    let (on_msg, off_msg) = (in_force_message(&want), cluster_off_message(&want));
    let before = condition::find(&v.vm.status.conditions, ConditionType::Firewall);
    // Set before, for these very addresses: anything that differed now is drift.
    let was_set = before.is_some_and(|c| c.message == on_msg || c.message == off_msg);
    let was_off = before.is_some_and(|c| c.has_reason(Reason::ClusterFirewallDisabled));
    if !fixed.is_empty() {
        let list = fixed.join(", ");
        if was_set {
            v.event(
                EventType::Warning,
                "DriftCorrected",
                format!("the VM's firewall was changed outside BlockHost and was set back: {list}"),
            );
        } else {
            v.event(
                EventType::Normal,
                "FirewallConfigured",
                format!(
                    "net0 limited to its MAC and {}: {list}",
                    want.address_list()
                ),
            );
        }
    }
    if cluster_on {
        v.condition(
            ConditionType::Firewall,
            ConditionStatus::True,
            Reason::InForce,
            on_msg,
        );
    } else {
        if !was_off {
            v.event(
                EventType::Warning,
                "ClusterFirewallDisabled",
                off_msg.clone(),
            );
        }
        v.condition(
            ConditionType::Firewall,
            ConditionStatus::False,
            Reason::ClusterFirewallDisabled,
            off_msg,
        );
    }
    r.guard
        .firewall_checked(&v.name, key, v.now + r.guard.check_every);
    Ok(Step::Continue)
}

/// Makes `ipfilter-net0` hold exactly the VM's addresses; returns what it changed.
async fn ipset<P: Pve + 'static>(
    r: &VmReconciler<P>,
    node: &str,
    vmid: VmId,
    want: &FirewallSpec,
) -> Result<Vec<String>, VmError> {
    let mut fixed = Vec::new();
    let entries = match r.pve.vm_ipset(node, vmid, IPFILTER_NET0).await {
        Ok(entries) => entries,
        Err(e) if e.is_not_found() => {
            r.pve
                .create_vm_ipset(
                    node,
                    vmid,
                    IPFILTER_NET0,
                    Some("BlockHost: the only source addresses this VM may use"),
                )
                .await
                .doing("create the VM's IP filter set")?;
            fixed.push(format!("IP set {IPFILTER_NET0} created"));
            Vec::new()
        }
        Err(source) => {
            return Err(VmError::Pve {
                doing: "read the VM's IP filter set",
                source,
            });
        }
    };
    let mut present: Vec<IpAddr> = Vec::new();
    for e in &entries {
        match e.host() {
            Some(ip) if want.addresses.contains(&ip) && !present.contains(&ip) => present.push(ip),
            // Someone else's address, a network, an alias, a `nomatch` or a duplicate.
            _ => {
                r.pve
                    .delete_vm_ipset_entry(node, vmid, IPFILTER_NET0, &e.cidr)
                    .await
                    .doing("remove a foreign entry from the VM's IP filter set")?;
                fixed.push(format!("{} removed from {IPFILTER_NET0}", e.cidr));
            }
        }
    }
    for a in want.addresses.iter().filter(|a| !present.contains(a)) {
        r.pve
            .add_vm_ipset_entry(node, vmid, IPFILTER_NET0, &a.to_string(), None)
            .await
            .doing("add the VM's address to its IP filter set")?;
        fixed.push(format!("{a} added to {IPFILTER_NET0}"));
    }
    Ok(fixed)
}

/// Makes sure net0 has `firewall=1`, keeping everything else of it (its MAC above
/// all, which the MAC filter and the guest's network config rely on).
async fn nic<P: Pve + 'static>(
    r: &VmReconciler<P>,
    node: &str,
    vmid: VmId,
) -> Result<Vec<String>, VmError> {
    let config = r
        .pve
        .vm_config(node, vmid)
        .await
        .doing("read the VM's config")?;
    let mut dev = match config.net(0) {
        Some(parsed) => parsed.map_err(|source| VmError::Pve {
            doing: "read the VM's net0",
            source,
        })?,
        // Removed behind our back: the NIC config_for writes.
        None => blockhost_pve::NetDevice::virtio(&r.network.bridge),
    };
    if dev.firewall == Some(true) {
        return Ok(Vec::new());
    }
    dev.firewall = Some(true);
    let update = blockhost_pve::ConfigUpdate::new().net(0, &dev);
    r.pve
        .set_vm_config(node, vmid, &update)
        .await
        .doing("turn the firewall on for net0")?;
    Ok(vec!["net0 firewall=1".to_owned()])
}

/// The isolation step: once the VM runs, has the root agent isolate its bridge
/// port (again after every start, and every check period).
pub async fn isolate<P: Pve + 'static>(
    r: &VmReconciler<P>,
    v: &mut Visit,
    found: &Found,
) -> Result<Step, VmError> {
    let vmid = found.vmid;
    if found.listing.status != RunState::Running
        || !r.guard.isolation_due(&v.name, vmid, v.started, v.now)
    {
        return Ok(Step::Continue);
    }
    let Some(agent) = r.guard.isolator.clone() else {
        v.condition(
            ConditionType::PortIsolated,
            ConditionStatus::False,
            Reason::NoRootAgent,
            "no root agent is configured (no firewall section), so this VM's bridge port is not isolated from other VMs'; the Proxmox firewall still keeps it to its own addresses",
        );
        r.guard
            .isolation_checked(&v.name, vmid, v.now + r.guard.check_every);
        return Ok(Step::Continue);
    };
    let before = condition::find(&v.vm.status.conditions, ConditionType::PortIsolated).cloned();
    match agent.isolate(vmid, 0).await {
        Ok(done) => {
            let was = before.is_some_and(|c| c.status == ConditionStatus::True);
            if !was {
                v.event(
                    EventType::Normal,
                    "PortIsolated",
                    format!("bridge port {} isolated from other VMs", done.interface),
                );
            } else if !v.started && done.was_isolated == Some(false) {
                // Isolated when last checked, and not started by BlockHost since:
                // the flag was cleared, or the VM restarted behind our back (a
                // new port). Either way it could reach other VMs until now.
                v.event(
                    EventType::Warning,
                    "DriftCorrected",
                    format!(
                        "bridge port {} was found not isolated (cleared, or the VM was started outside BlockHost) and was isolated again",
                        done.interface
                    ),
                );
            }
            v.condition(
                ConditionType::PortIsolated,
                ConditionStatus::True,
                Reason::Isolated,
                format!(
                    "bridge port {} is isolated: the VM reaches the uplink, not other VMs",
                    done.interface
                ),
            );
            r.guard
                .isolation_checked(&v.name, vmid, v.now + r.guard.check_every);
        }
        Err(e) => {
            let message = format!(
                "the root agent could not isolate this VM's bridge port (tried again in {} s): {}",
                ISOLATION_RETRY.num_seconds(),
                blockhost_root_agent::error_chain(&e)
            );
            tracing::warn!(object = %v.name, vmid, error = %message, "bridge port not isolated");
            if before.as_ref().is_none_or(|c| c.message != message) {
                v.event(EventType::Warning, "IsolationFailed", message.clone());
            }
            // Not a failure of the reconcile: the VM stays reachable for its owner
            // and its addresses filtered; the next visit tries again.
            v.condition(
                ConditionType::PortIsolated,
                ConditionStatus::False,
                Reason::AgentFailed,
                message,
            );
            r.guard
                .isolation_checked(&v.name, vmid, v.now + ISOLATION_RETRY);
        }
    }
    Ok(Step::Continue)
}
