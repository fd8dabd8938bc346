//! The `VirtualMachine` reconciler: makes a Proxmox VM match each spec.
//!
//! One reconcile, whatever triggered it, walks the same steps and stops at the
//! first that needs time (a task, a booting guest) or fails:
//!
//! 1. deletion requested → [`delete`] (stop, purge, confirm gone, release);
//! 2. own the object (finalizer), find its VM ([`create::locate`]): by the VMID
//!    reserved in the store, adopting a clone a crash left behind, or noticing a
//!    VM that vanished (`Lost`);
//! 3. missing → [`create`]: place, reserve a VMID (in redb, before cloning), clone,
//!    configure, grow the disk;
//! 4. [`power`]: expiry and grace, desired power state, guest agent, the access
//!    file, drift of managed settings.
//!
//! Failures are recorded on the object (condition, `lastError`, a Warning event)
//! and returned to the runtime, which retries with backoff.

pub mod create;
pub mod delete;
pub mod observed;
pub mod power;
pub mod setup;

use std::sync::Arc;
use std::time::Duration;

use blockhost_crd::config::{NetworkConfig, ProxmoxConfig};
use blockhost_crd::meta::{Condition, ConditionStatus, EventType, set_condition};
use blockhost_crd::{VirtualMachine, VmPhase};
use blockhost_pve::{ErrorKind, Pve};

use super::runtime::{Action, Reconciler};
use crate::store::{Store, StoreError};
use observed::Observed;

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
}

/// A VM at rest after a successful reconcile: its listing fingerprint and the next
/// time something is due (expiry, end of grace).
#[derive(Debug, Clone)]
pub struct Settled {
    vmid: blockhost_pve::VmId,
    print: observed::ListingPrint,
    deadline: Option<chrono::DateTime<chrono::Utc>>,
}

/// Why a VM reconcile failed.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// Proxmox refused or failed.
    #[error("Proxmox: {0}")]
    Pve(#[from] blockhost_pve::Error),
    /// The store failed.
    #[error("store")]
    Store(#[from] StoreError),
    /// No node can take the VM.
    #[error("no node can place this VM: {0}")]
    Placement(String),
    /// The template to clone is not in the cluster.
    #[error("template VMID {0} is not in the cluster; build it or set proxmox.defaultTemplate")]
    NoTemplate(u32),
    /// The access file could not be rendered.
    #[error("cannot render the access file: {0}")]
    AccessFile(String),
    /// The guest agent did not answer in time.
    #[error("{0}")]
    AgentTimeout(String),
    /// A VMID we reserved is taken by something that is not ours.
    #[error("VMID {0} is used by a VM that is not ours; another VMID will be reserved")]
    ForeignVmid(u32),
}

impl VmError {
    /// A short stable label for metrics and conditions.
    pub fn reason(&self) -> &'static str {
        match self {
            VmError::Pve(e) => e.kind().as_str(),
            VmError::Store(_) => "store",
            VmError::Placement(_) => "placement",
            VmError::NoTemplate(_) => "no_template",
            VmError::AccessFile(_) => "access_file",
            VmError::ForeignVmid(_) => "foreign_vmid",
            VmError::AgentTimeout(_) => "agent_timeout",
        }
    }

    /// Whether an operator must act (retrying the same thing cannot help).
    pub fn needs_operator(&self) -> bool {
        match self {
            VmError::Pve(e) => matches!(
                e.kind(),
                ErrorKind::Validation | ErrorKind::Auth | ErrorKind::Permanent
            ),
            VmError::Placement(_)
            | VmError::NoTemplate(_)
            | VmError::AccessFile(_)
            | VmError::AgentTimeout(_) => true,
            VmError::Store(_) | VmError::ForeignVmid(_) => false,
        }
    }
}

impl<P: Pve + 'static> VmReconciler<P> {
    /// Runs a store call on the blocking pool.
    pub(crate) async fn store<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, VmError> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .map_err(|e| VmError::Placement(format!("store task failed: {e}")))?
            .map_err(VmError::from)
    }

    /// Reads the VM, on the calling task rather than the blocking pool: reading
    /// one small object from redb's cache takes microseconds, while the hand-off
    /// to a blocking thread and back costs two thread wake-ups. With 10,000 VMs
    /// visited per resync, those wake-ups were over half of the steady-state CPU
    /// (perf). Writes, which wait for fsync, stay on the blocking pool.
    pub(crate) async fn load(&self, name: &str) -> Result<Option<VirtualMachine>, VmError> {
        Ok(self.store.get::<VirtualMachine>(name)?)
    }

    /// Writes the VM's status through `f` (which returns whether it changed anything).
    pub(crate) async fn update(
        &self,
        name: &str,
        f: impl FnOnce(&mut VirtualMachine) -> bool + Send + 'static,
    ) -> Result<Option<VirtualMachine>, VmError> {
        let n = name.to_owned();
        self.store(move |s| s.update_status::<VirtualMachine>(&n, f))
            .await
    }

    /// Appends an event to the VM's log.
    pub(crate) async fn event(
        &self,
        name: &str,
        type_: EventType,
        reason: &'static str,
        message: String,
    ) {
        let n = name.to_owned();
        if let Err(e) = self
            .store(move |s| s.record_event("VirtualMachine", &n, type_, reason, &message))
            .await
        {
            tracing::warn!(object = name, error = %crate::error_chain(&e), "cannot record event");
        }
    }

    /// A condition with the store's clock.
    pub(crate) fn condition(
        &self,
        type_: &str,
        status: ConditionStatus,
        reason: &str,
        message: impl Into<String>,
    ) -> Condition {
        Condition {
            type_: type_.into(),
            status,
            reason: reason.into(),
            message: message.into(),
            last_transition_time: self.store.now(),
        }
    }

    /// One reconcile. Sets `sync_status` when the object's `lastError` or
    /// `observedGeneration` was stale when read, so the caller knows whether a
    /// successful run has anything to record.
    async fn reconcile_inner(&self, name: &str, sync_status: &mut bool) -> Result<Action, VmError> {
        let Some(vm) = self.load(name).await? else {
            return Ok(Action::Done);
        };
        *sync_status = vm.status.last_error.is_some()
            || vm.status.observed_generation != vm.metadata.generation;
        self.observed
            .ensure_fresh(self.pve.as_ref(), self.listing_max_age)
            .await?;
        if vm.metadata.deletion_timestamp.is_some() {
            return delete::run(self, vm).await;
        }
        // Read again only after writing: a VM in steady state costs one read here
        // (10,000 of them are visited every resync).
        let mut wrote = false;
        if !vm.metadata.finalizers.iter().any(|f| f == FINALIZER) {
            self.update(name, |v| {
                v.metadata.finalizers.push(FINALIZER.into());
                true
            })
            .await?;
            wrote = true;
        }
        if vm.status.addresses.ipv4.is_none() || vm.status.addresses.ipv6.is_none() {
            let n = name.to_owned();
            self.store(move |s| s.retry_addresses(&n)).await?;
            wrote = true;
        }
        let vm = if wrote {
            match self.load(name).await? {
                Some(vm) => vm,
                None => return Ok(Action::Done),
            }
        } else {
            vm
        };
        let located = match create::locate(self, &vm).await? {
            create::Located::Found(found) => found,
            create::Located::Missing => return create::run(self, vm).await,
            create::Located::Hold => return Ok(Action::Done),
        };
        power::run(self, vm, located).await
    }
}

impl<P: Pve + 'static> Reconciler for VmReconciler<P> {
    type Error = VmError;

    fn name(&self) -> &'static str {
        "virtualmachine"
    }

    fn error_reason(&self, error: &VmError) -> &'static str {
        error.reason()
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
        let mut sync_status = false;
        let result = self.reconcile_inner(&name, &mut sync_status).await;
        self.remember(&name, result.is_ok()).await;
        match &result {
            // Nothing was stale when read (and a spec change made since then
            // triggers another run): a VM in steady state costs no second read.
            Ok(_) if !sync_status => {}
            Ok(_) => {
                let current = self.load(&name).await.ok().flatten();
                let generation = current.as_ref().and_then(|v| v.metadata.generation);
                // Write only when something is to clear or record: in steady state
                // this is a read, not a write transaction per VM per resync.
                let stale = current.is_some_and(|v| {
                    v.status.last_error.is_some() || v.status.observed_generation != generation
                });
                let _ = stale
                    && self
                        .update(&name, move |v| {
                            let mut changed = false;
                            if v.status.last_error.take().is_some() {
                                changed = true;
                            }
                            if v.status.observed_generation != generation {
                                v.status.observed_generation = generation;
                                changed = true;
                            }
                            changed
                        })
                        .await
                        .is_ok();
            }
            Err(e) => {
                let message = crate::error_chain(e);
                let reason = camel(e.reason());
                let operator = e.needs_operator();
                let cond =
                    self.condition("Ready", ConditionStatus::False, &reason, message.clone());
                let msg = message.clone();
                let _ = self
                    .update(&name, move |v| {
                        let same = v.status.last_error.as_deref() == Some(msg.as_str());
                        v.status.last_error = Some(msg);
                        if operator && v.status.phase != VmPhase::Running {
                            v.status.phase = VmPhase::Failed;
                        }
                        set_condition(&mut v.status.conditions, cond) || !same
                    })
                    .await;
                self.event(&name, EventType::Warning, "ReconcileFailed", message)
                    .await;
            }
        }
        result
    }
}

impl<P: Pve + 'static> VmReconciler<P> {
    /// Records (or forgets) the VM's settled state after a reconcile.
    async fn remember(&self, name: &str, ok: bool) {
        let settled = if ok {
            self.settled_state(name).await
        } else {
            None
        };
        if let Ok(mut m) = self.settled.lock() {
            match settled {
                Some(s) => {
                    m.insert(name.to_owned(), s);
                }
                None => {
                    m.remove(name);
                }
            }
        }
    }

    /// The VM's settled state, if it is at rest: running with its access file, or
    /// suspended; addresses allocated; not being deleted.
    async fn settled_state(&self, name: &str) -> Option<Settled> {
        let vm = self.load(name).await.ok().flatten()?;
        let st = &vm.status;
        let at_rest = match st.phase {
            VmPhase::Running => st.access_file_digest.is_some(),
            VmPhase::Suspended => true,
            _ => false,
        };
        let starved = st.conditions.iter().any(|c| {
            c.type_ == crate::store::alloc::ADDRESSES_CONDITION
                && c.status == ConditionStatus::False
        });
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
        Some(Settled {
            vmid,
            print,
            deadline,
        })
    }
}

/// `not_found` → `NotFound`, for condition reasons.
pub(crate) fn camel(snake: &str) -> String {
    snake
        .split('_')
        .map(|w| {
            let mut c = w.chars();
            c.next()
                .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                .unwrap_or_default()
        })
        .collect()
}

#[cfg(test)]
mod tests;
