//! The `VirtualMachine` reconciler: makes a Proxmox VM match each spec.
//!
//! One reconcile, whatever triggered it, walks the same [`StepName`]s in order
//! and stops at the first that finishes the visit ([`Step::Done`]: it needs
//! time, such as a task or a booting guest, or has nothing more to do) or fails:
//!
//! 1. [`delete`]: deletion requested → stop, purge, confirm gone, release;
//! 2. [`locate`]: own the object (finalizer, addresses), then find its VM by
//!    the VMID reserved in the store, adopting a clone a crash left behind, or
//!    noticing a VM that vanished (`Lost`);
//! 3. [`create`]: missing → place, reserve a VMID (in redb, before cloning),
//!    clone, configure, grow the disk;
//! 4. [`power`]: expiry and grace, then the desired power state;
//! 5. [`drift`]: managed settings changed behind our back, a disk to grow;
//! 6. [`isolation`]: the VM's Proxmox firewall (before it starts) and its bridge
//!    port's isolation (once it runs);
//! 7. [`access`]: the access file through the guest agent, then `Ready`.
//!
//! Steps import only this module and [`spec`], never each other. They change
//! the status through [`Visit::status`], which applies the change to the
//! visit's copy at once and queues it; the queue is written in one store
//! transaction at the end of the visit (with the failure, if any) or before a
//! side effect that must find it durable (the node, before a clone). Failures
//! are recorded on the object (`Ready=False` with the reason, `lastError`, a
//! Warning event) and returned to the runtime, which retries by
//! [`VmError::retry`].

pub mod access;
pub mod create;
pub mod delete;
pub mod drift;
pub mod error;
pub mod isolation;
pub mod locate;
pub mod observed;
pub mod power;
pub mod setup;
pub mod spec;

use std::sync::Arc;
use std::time::Duration;

use blockhost_crd::config::{NetworkConfig, ProxmoxConfig};
use blockhost_crd::meta::{Condition, ConditionStatus, EventType, set_condition};
use blockhost_crd::{ConditionType, Reason, VirtualMachine, VmPhase, condition};
use blockhost_pve::Pve;
use chrono::{DateTime, Utc};

use super::runtime::{Action, ErrorPolicy, Reconciler, Retry};
use crate::store::{Store, StoreError};
use error::Doing;
pub use error::VmError;
use observed::Observed;
use spec::Found;

/// Finalizer this reconciler puts on every VM it manages.
pub const FINALIZER: &str = "blockhost.io/proxmox";

/// Tag every managed VM carries in Proxmox.
pub const MANAGED_TAG: &str = "blockhost";

/// Everything a VM reconcile needs.
#[derive(Debug)]
pub struct VmReconciler<P> {
    /// The store.
    pub store: Store,
    /// Proxmox.
    pub pve: Arc<P>,
    /// Proxmox settings.
    pub cfg: ProxmoxConfig,
    /// Network settings (gateways, bridge, DNS).
    pub network: NetworkConfig,
    /// Chain id written into access files (0 when no chain is configured).
    pub chain_id: u64,
    /// The cached cluster listing.
    pub observed: Observed,
    /// How old the listing may be (the resync interval).
    pub listing_max_age: Duration,
    /// How task waits poll.
    pub wait: blockhost_pve::WaitOptions,
    /// Per VM, what it looked like after its last settled success (see
    /// [`Reconciler::resync_skip`]); build with `Default::default()`.
    pub settled: std::sync::Mutex<std::collections::HashMap<String, Settled>>,
    /// Tenant isolation: the root agent, if any, and when each VM's firewall and
    /// port are due to be checked ([`isolation::Guard`]).
    pub guard: isolation::Guard,
}

/// A VM at rest after a successful reconcile: its listing fingerprint and the next
/// time something is due (expiry, end of grace).
#[derive(Debug, Clone)]
pub struct Settled {
    vmid: blockhost_pve::VmId,
    print: observed::ListingPrint,
    deadline: Option<chrono::DateTime<chrono::Utc>>,
}

/// What a step tells the visit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Go on with the next step.
    Continue,
    /// This visit is over; the runtime does this next.
    Done(Action),
}

/// The steps that find or make the VM, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Find {
    /// [`delete::delete`].
    Delete,
    /// [`locate::own`].
    Own,
    /// [`locate::locate`].
    Locate,
    /// [`create::create`].
    Create,
}

/// The steps that bring the found VM to its spec, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drive {
    /// [`power::expire`].
    Expire,
    /// [`drift::drift`].
    Drift,
    /// [`drift::disk`].
    Disk,
    /// [`isolation::firewall`].
    Firewall,
    /// [`power::power`].
    Power,
    /// [`isolation::isolate`].
    Isolate,
    /// [`access::access_file`].
    AccessFile,
    /// [`access::ready`].
    Ready,
}

/// One step of either kind, as the visit's trace records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepName {
    /// A step that finds or makes the VM.
    Find(Find),
    /// A step that drives the found VM.
    Drive(Drive),
}

const FIND: [Find; 4] = [Find::Delete, Find::Own, Find::Locate, Find::Create];

const DRIVE: [Drive; 8] = [
    Drive::Expire,
    Drive::Drift,
    Drive::Disk,
    Drive::Firewall,
    Drive::Power,
    Drive::Isolate,
    Drive::AccessFile,
    Drive::Ready,
];

/// A change to a VM's status, kept until the next write.
type StatusChange = Box<dyn Fn(&mut VirtualMachine) -> bool + Send + Sync>;

/// One reconcile of one VM: the copy the steps work on, what they found, and
/// what they have yet to write.
pub struct Visit {
    /// The object's name.
    pub name: String,
    /// The object as read, with this visit's status changes applied.
    pub vm: VirtualMachine,
    /// The store's time at the start of the visit.
    pub now: DateTime<Utc>,
    /// Its Proxmox VM, once located or created.
    pub found: Option<Found>,
    /// The steps that ran, in order.
    pub trace: Vec<StepName>,
    /// This visit started the VM (its bridge port is new).
    pub started: bool,
    changes: Vec<StatusChange>,
    events: Vec<(EventType, &'static str, String)>,
}

impl std::fmt::Debug for Visit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Visit")
            .field("name", &self.name)
            .field("trace", &self.trace)
            .field("queued_changes", &self.changes.len())
            .field("queued_events", &self.events.len())
            .finish_non_exhaustive()
    }
}

impl Visit {
    /// A visit of `vm` at `now`.
    pub fn new(vm: VirtualMachine, now: DateTime<Utc>) -> Self {
        Self {
            name: vm.metadata.name.to_string(),
            vm,
            now,
            found: None,
            trace: Vec::with_capacity(FIND.len() + DRIVE.len()),
            started: false,
            changes: Vec::new(),
            events: Vec::new(),
        }
    }

    /// Changes the status (or finalizers): on this copy now, in the store at the
    /// next write. `f` returns whether it changed anything, and must give the
    /// same answer on the stored copy: it may read only fields this reconciler
    /// writes.
    pub fn status(&mut self, f: impl Fn(&mut VirtualMachine) -> bool + Send + Sync + 'static) {
        if f(&mut self.vm) {
            self.changes.push(Box::new(f));
        }
    }

    /// Sets a condition with the visit's clock.
    pub fn condition(
        &mut self,
        type_: ConditionType,
        status: ConditionStatus,
        reason: Reason,
        message: impl Into<String>,
    ) {
        let c = Condition::new(type_, status, reason, message, self.now);
        self.status(move |v| set_condition(&mut v.status.conditions, c.clone()));
    }

    /// Queues an event, written with the status.
    pub fn event(&mut self, type_: EventType, reason: &'static str, message: String) {
        self.events.push((type_, reason, message));
    }
}

impl<P: Pve + 'static> VmReconciler<P> {
    /// Runs a store call on the blocking pool.
    pub(crate) async fn store<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, VmError> {
        self.store.blocking(f).await.map_err(|e| match e {
            // A panicked store task is an internal error, not the store's answer.
            StoreError::TaskFailed { source } => VmError::StoreTask(source),
            e => VmError::from(e),
        })
    }

    /// Reads the VM, on the calling task rather than the blocking pool: reading
    /// one small object from redb's cache takes microseconds, while the hand-off
    /// to a blocking thread and back costs two thread wake-ups. With 10,000 VMs
    /// visited per resync, those wake-ups were over half of the steady-state CPU
    /// (perf). Writes, which wait for fsync, stay on the blocking pool.
    pub(crate) async fn load(&self, name: &str) -> Result<Option<VirtualMachine>, VmError> {
        Ok(self.store.get::<VirtualMachine>(name)?)
    }

    /// Writes the visit's queued events and status changes in one hop to the
    /// blocking pool: the events first (an object whose last finalizer goes is
    /// removed with its events), then the status in one transaction.
    pub(crate) async fn flush(&self, v: &mut Visit) -> Result<(), VmError> {
        let changes = std::mem::take(&mut v.changes);
        let events = std::mem::take(&mut v.events);
        if changes.is_empty() && events.is_empty() {
            return Ok(());
        }
        let name = v.name.clone();
        self.store(move |s| {
            for (type_, reason, message) in &events {
                if let Err(e) = s.record_event("VirtualMachine", &name, *type_, reason, message) {
                    tracing::warn!(object = %name, error = %crate::error_chain(&e), "cannot record event");
                }
            }
            if !changes.is_empty() {
                s.update_status::<VirtualMachine>(&name, |vm| {
                    // Every change applies: no short-circuit.
                    let mut changed = false;
                    for f in &changes {
                        changed |= f(vm);
                    }
                    changed
                })?;
            }
            Ok(())
        })
        .await
    }

    /// Runs the steps of a visit until one finishes it.
    pub async fn walk(&self, v: &mut Visit) -> Result<Action, VmError> {
        self.observed
            .ensure_fresh(self.pve.as_ref(), self.listing_max_age)
            .await
            .doing("list the cluster's VMs")?;
        for step in FIND {
            v.trace.push(StepName::Find(step));
            let next = match step {
                Find::Delete => delete::delete(self, v).await?,
                Find::Own => locate::own(self, v).await?,
                Find::Locate => locate::locate(self, v).await?,
                Find::Create => create::create(self, v).await?,
            };
            if let Step::Done(action) = next {
                return Ok(action);
            }
        }
        // Create continues only once the VM is found or made.
        let Some(mut found) = v.found.take() else {
            return Ok(Action::Done);
        };
        for step in DRIVE {
            v.trace.push(StepName::Drive(step));
            let next = match step {
                Drive::Expire => power::expire(self, v).await?,
                Drive::Drift => drift::drift(self, v, &mut found).await?,
                Drive::Disk => drift::disk(self, v, &mut found).await?,
                Drive::Firewall => isolation::firewall(self, v, &found).await?,
                Drive::Power => power::power(self, v, &mut found).await?,
                Drive::Isolate => isolation::isolate(self, v, &found).await?,
                Drive::AccessFile => access::access_file(self, v, &found).await?,
                Drive::Ready => access::ready(v, &found),
            };
            if let Step::Done(action) = next {
                return Ok(action);
            }
        }
        Ok(Action::Done)
    }

    /// Queues what a failure leaves on the object.
    fn record_failure(v: &mut Visit, e: &VmError) {
        let chain = crate::error_chain(e);
        let message = match e.action() {
            Some(action) => format!("{chain}; {action}"),
            None => chain,
        };
        let operator = e.retry() == Retry::Operator;
        let msg = message.clone();
        v.status(move |vm| {
            let same = vm.status.last_error.as_deref() == Some(msg.as_str());
            vm.status.last_error = Some(msg.clone());
            let failed = operator && vm.status.phase != VmPhase::Running;
            if failed {
                vm.status.phase = VmPhase::Failed;
            }
            !same || failed
        });
        v.condition(
            ConditionType::Ready,
            ConditionStatus::False,
            e.reason(),
            message.clone(),
        );
        v.event(EventType::Warning, "ReconcileFailed", message);
    }
}

impl<P: Pve + 'static> Reconciler for VmReconciler<P> {
    type Error = VmError;

    fn name(&self) -> &'static str {
        "virtualmachine"
    }

    fn error_policy(&self, error: &VmError) -> ErrorPolicy {
        error.policy()
    }

    /// One fresh cluster listing per resync, shared by every VM's check.
    async fn before_resync(&self) {
        if let Err(e) = self.observed.refresh(self.pve.as_ref()).await {
            tracing::warn!(error = %crate::error_chain(&e), "cannot list the cluster's VMs for a resync");
            self.observed.invalidate().await;
        }
    }

    fn resync_skip(&self, name: &str) -> bool {
        let Some(s) = self.settled.lock().ok().and_then(|m| m.get(name).cloned()) else {
            return false;
        };
        if s.deadline.is_some_and(|d| self.store.now() >= d) {
            return false;
        }
        // Skip only when the listing entry is exactly what we left; a vanished,
        // stopped or edited VM (or an unreadable listing) gets a visit.
        matches!(self.observed.try_print(s.vmid), Some(Some(p)) if p == s.print)
    }

    async fn reconcile(&self, name: String) -> Result<Action, VmError> {
        let Some(vm) = self.load(&name).await? else {
            self.forget(&name);
            self.guard.forget(&name);
            return Ok(Action::Done);
        };
        // Stale bookkeeping is cleared only when it is stale: a VM in steady
        // state costs a read, not a write transaction per resync.
        let generation = vm.metadata.generation;
        let stale = vm.status.last_error.is_some() || vm.status.observed_generation != generation;
        let mut v = Visit::new(vm, self.store.now());
        let result = self.walk(&mut v).await;
        match &result {
            Ok(_) if stale => v.status(move |vm| {
                let cleared = vm.status.last_error.take().is_some();
                let observed = vm.status.observed_generation != generation;
                vm.status.observed_generation = generation;
                cleared || observed
            }),
            Ok(_) => {}
            Err(e) => Self::record_failure(&mut v, e),
        }
        let written = self.flush(&mut v).await;
        let result = result.and_then(|action| written.map(|()| action));
        self.remember(&v, result.is_ok());
        result
    }
}

impl<P: Pve + 'static> VmReconciler<P> {
    fn forget(&self, name: &str) {
        if let Ok(mut m) = self.settled.lock() {
            m.remove(name);
        }
    }

    /// Records (or forgets) the VM's settled state after a reconcile.
    fn remember(&self, v: &Visit, ok: bool) {
        match ok.then(|| self.settled_state(&v.vm)).flatten() {
            Some(s) => {
                if let Ok(mut m) = self.settled.lock() {
                    m.insert(v.name.clone(), s);
                }
            }
            None => self.forget(&v.name),
        }
    }

    /// The VM's settled state, if it is at rest: running with its access file, or
    /// suspended; addresses allocated; not being deleted.
    fn settled_state(&self, vm: &VirtualMachine) -> Option<Settled> {
        let st = &vm.status;
        let at_rest = match st.phase {
            VmPhase::Running => st.access_file_digest.is_some(),
            VmPhase::Suspended => true,
            _ => false,
        };
        let starved = condition::has(
            &st.conditions,
            ConditionType::AddressesAllocated,
            ConditionStatus::False,
        );
        if !at_rest || starved || vm.metadata.deletion_timestamp.is_some() {
            return None;
        }
        let vmid = st.vmid?;
        let print = self.observed.try_print(vmid).flatten()?;
        let now = self.store.now();
        let expired = vm.spec.expires_at.is_some_and(|t| now >= t);
        let deadline = if expired {
            st.suspended_at
                .map(|s| s + chrono::Duration::days(i64::from(self.cfg.grace_period_days)))
        } else {
            vm.spec.expires_at
        };
        // The firewall and the port are not in the listing: read back on their clock.
        let deadline = match (deadline, self.guard.next_due(vm.metadata.name.as_str())) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        Some(Settled {
            vmid,
            print,
            deadline,
        })
    }
}

#[cfg(test)]
mod tests;
