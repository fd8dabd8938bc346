//! Expiry and grace, and the desired power state.
//!
//! An expired subscription suspends its VM (shut down, disk kept) and starts
//! the grace clock; once the grace period is over the object is deleted. A VM
//! stopped behind our back is started again.

use blockhost_crd::meta::{ConditionStatus, EventType};
use blockhost_crd::{ConditionType, PowerState, Reason, VmPhase};
use blockhost_pve::types::RunState;
use blockhost_pve::{Pve, ShutdownOptions, VmId};
use std::time::Duration;

use super::error::Doing;
use super::spec::Found;
use super::{Step, Visit, VmError, VmReconciler};
use crate::reconcile::runtime::Action;

fn expired(v: &Visit) -> bool {
    v.vm.spec.expires_at.is_some_and(|t| v.now >= t)
}

fn grace<P>(r: &VmReconciler<P>) -> chrono::Duration {
    chrono::Duration::days(i64::from(r.cfg.grace_period_days))
}

/// The expire step: grace over → delete. The store marks the object
/// Terminating (our finalizer), and the delete step runs at once.
pub async fn expire<P: Pve + 'static>(r: &VmReconciler<P>, v: &mut Visit) -> Result<Step, VmError> {
    let Some(since) = v.vm.status.suspended_at.filter(|_| expired(v)) else {
        return Ok(Step::Continue);
    };
    if since + grace(r) > v.now {
        return Ok(Step::Continue);
    }
    v.event(
        EventType::Normal,
        "GraceExpired",
        format!(
            "suspended since {since} and the {} day grace period is over; deleting",
            r.cfg.grace_period_days
        ),
    );
    let n = v.name.clone();
    r.store(move |s| s.delete("VirtualMachine", &n)).await?;
    Ok(Step::Done(Action::RequeueAfter(Duration::ZERO)))
}

/// The power step: shuts the VM down when it should not run (ending the
/// visit), starts it when it should and does not.
pub async fn power<P: Pve + 'static>(
    r: &VmReconciler<P>,
    v: &mut Visit,
    found: &mut Found,
) -> Result<Step, VmError> {
    let expired = expired(v);
    let want_running = !expired && v.vm.spec.power_state == PowerState::Running;
    let running = found.listing.status == RunState::Running;
    if !want_running {
        if running {
            shutdown(r, &found.node, found.vmid).await?;
            r.observed
                .patch(found.vmid, |cv| cv.status = RunState::Stopped)
                .await;
            found.listing.status = RunState::Stopped;
            let why = if expired {
                "the subscription expired"
            } else {
                "the spec asks for Suspended"
            };
            v.event(
                EventType::Normal,
                "Suspended",
                format!("shut down because {why}; the disk is kept"),
            );
        }
        return Ok(Step::Done(suspended(r, v, expired)));
    }
    if !running {
        start(r, v, found).await?;
    }
    Ok(Step::Continue)
}

/// Records a suspended VM; an expired one comes back when its grace ends.
fn suspended<P>(r: &VmReconciler<P>, v: &mut Visit, expired: bool) -> Action {
    let now = v.now;
    v.status(move |vm| {
        let mut changed = vm.status.phase != VmPhase::Suspended;
        vm.status.phase = VmPhase::Suspended;
        if expired && vm.status.suspended_at.is_none() {
            vm.status.suspended_at = Some(now);
            changed = true;
        }
        changed
    });
    v.condition(
        ConditionType::Ready,
        ConditionStatus::False,
        if expired {
            Reason::Expired
        } else {
            Reason::Suspended
        },
        "the VM is shut down",
    );
    if !expired {
        return Action::Done;
    }
    let since = v.vm.status.suspended_at.unwrap_or(now);
    let left = (since + grace(r) - now).to_std().unwrap_or_default();
    Action::RequeueAfter(left + Duration::from_secs(1))
}

/// Starts the VM; the guest boots afresh, so its access file is checked again.
async fn start<P: Pve + 'static>(
    r: &VmReconciler<P>,
    v: &mut Visit,
    found: &mut Found,
) -> Result<(), VmError> {
    let (node, vmid) = (found.node.as_str(), found.vmid);
    let upid = r.pve.start_vm(node, vmid).await.doing("start the VM")?;
    r.pve.wait_task(&upid, r.wait).await.doing("start the VM")?;
    r.observed
        .patch(vmid, |cv| cv.status = RunState::Running)
        .await;
    found.listing.status = RunState::Running;
    v.started = true;
    let resumed = v.vm.status.phase == VmPhase::Suspended;
    v.event(
        EventType::Normal,
        if resumed { "Resumed" } else { "Started" },
        format!("VM {vmid} started on {node}"),
    );
    v.status(|vm| {
        vm.status.suspended_at = None;
        if vm.status.phase == VmPhase::Suspended {
            vm.status.phase = VmPhase::Provisioning;
        }
        vm.status.access_file_digest = None;
        true
    });
    Ok(())
}

/// Shuts down cleanly within the configured timeout, then stops hard.
async fn shutdown<P: Pve + 'static>(
    r: &VmReconciler<P>,
    node: &str,
    vmid: VmId,
) -> Result<(), VmError> {
    let timeout = Duration::from_secs(u64::from(r.cfg.shutdown_timeout_secs));
    let opts = ShutdownOptions {
        timeout: Some(timeout),
        force_stop: false,
    };
    let clean = match r.pve.shutdown_vm(node, vmid, opts).await {
        Ok(upid) => {
            let mut wait = r.wait;
            wait.deadline = wait.deadline.max(timeout + Duration::from_secs(30));
            r.pve.wait_task(&upid, wait).await
        }
        Err(e) => Err(e),
    };
    if let Err(e) = clean {
        tracing::info!(vmid, error = %e, "clean shutdown did not finish in time; stopping hard");
        let upid = r.pve.stop_vm(node, vmid).await.doing("stop the VM")?;
        r.pve.wait_task(&upid, r.wait).await.doing("stop the VM")?;
    }
    Ok(())
}
