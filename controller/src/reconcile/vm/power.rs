//! Once a VM exists: expiry and grace, the desired power state, the guest agent,
//! the access file, and drift of managed settings.
//!
//! Drift is read from the cached listing (power state, cores, memory, tags), so a
//! VM that matches its spec costs no request at all. A VM stopped behind our back
//! is started again; cores, memory or tags changed behind our back are set back;
//! settings we do not manage are never touched.

use blockhost_crd::access::{ACCESS_FILE_PATH, ACCESS_FILE_VERSION, AccessFile};
use blockhost_crd::meta::{ConditionStatus, EventType, set_condition};
use blockhost_crd::{PowerState, VirtualMachine, VmPhase};
use blockhost_pve::types::RunState;
use blockhost_pve::{ClusterVm, DiskSize, Pve, ShutdownOptions};
use sha2::{Digest, Sha256};
use std::time::Duration;

use super::create::{Found, config_for, managed_tags};
use super::{VmError, VmReconciler};
use crate::reconcile::runtime::Action;

/// How often to look again while waiting for a guest agent.
const AGENT_POLL: Duration = Duration::from_secs(2);

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

/// The access file this VM should hold, and its digest.
fn access_file<P: Pve + 'static>(
    r: &VmReconciler<P>,
    vm: &VirtualMachine,
) -> Result<(String, String), VmError> {
    let file = AccessFile {
        version: ACCESS_FILE_VERSION,
        machine: vm.metadata.name.to_string(),
        chain_id: r.chain_id,
        nft_token_id: vm.status.nft_token_id,
        wallets: vec![vm.spec.owner],
        users: vec![vm.spec.guest_user.to_string()],
        signing_url: None,
    };
    let text = file
        .to_json()
        .map_err(|e| VmError::AccessFile(crate::error_chain(&e)))?;
    let digest = hex::encode(Sha256::digest(text.as_bytes()));
    Ok((text, digest))
}

/// Brings a found VM to its desired running state.
pub async fn run<P: Pve + 'static>(
    r: &VmReconciler<P>,
    mut vm: VirtualMachine,
    found: Found,
) -> Result<Action, VmError> {
    let name = vm.metadata.name.to_string();
    let now = r.store.now();
    let Found {
        vmid,
        node,
        listing,
    } = found;
    let expired = vm.spec.expires_at.is_some_and(|t| now >= t);
    let grace = chrono::Duration::days(i64::from(r.cfg.grace_period_days));

    // Grace over: delete. The store marks the object Terminating (our finalizer),
    // which triggers the delete path.
    if expired
        && let Some(since) = vm.status.suspended_at
        && since + grace <= now
    {
        let n = name.clone();
        r.event(
            &name,
            EventType::Normal,
            "GraceExpired",
            format!(
                "suspended since {since} and the {} day grace period is over; deleting",
                r.cfg.grace_period_days
            ),
        )
        .await;
        r.store(move |s| s.delete("VirtualMachine", &n)).await?;
        // Carry on with the deletion now rather than waiting for the next trigger.
        return match r.load(&name).await? {
            Some(vm) => super::delete::run(r, vm).await,
            None => Ok(Action::Done),
        };
    }

    if listing.lock.is_none()
        && let Some(diff) = drifted(&vm, &listing)
    {
        let spec_changed = vm.status.observed_generation != vm.metadata.generation;
        r.pve
            .set_vm_config(&node, vmid, &config_for(r, &vm)?)
            .await?;
        r.observed.record_config(&vm, vmid).await;
        let (reason, msg) = if spec_changed {
            ("Reconfigured", format!("applied the new spec: {diff}"))
        } else {
            (
                "DriftCorrected",
                format!("a managed setting was changed outside BlockHost and was set back: {diff}"),
            )
        };
        r.event(
            &name,
            if spec_changed {
                EventType::Normal
            } else {
                EventType::Warning
            },
            reason,
            msg,
        )
        .await;
    }

    // The disk only grows. Checked here and not only in create: a create that
    // failed between clone and resize is finished by a later reconcile that finds
    // the VM and never runs create again, and a spec may ask for a bigger disk
    // later. A listing without a size (0) is no evidence of a small disk.
    let want_disk = u64::from(vm.spec.resources.disk_gib.get()) << 30;
    if listing.lock.is_none() && listing.maxdisk > 0 && listing.maxdisk < want_disk {
        let gib = vm.spec.resources.disk_gib.get();
        if let Some(upid) = r
            .pve
            .resize_disk(&node, vmid, &r.cfg.disk, DiskSize::gib(u64::from(gib)))
            .await?
        {
            r.pve.wait_task(&upid, r.wait).await?;
        }
        r.observed.patch(vmid, |cv| cv.maxdisk = want_disk).await;
        r.event(
            &name,
            EventType::Normal,
            "DiskGrown",
            format!(
                "{} grown from {} GiB to {gib} GiB",
                r.cfg.disk,
                listing.maxdisk >> 30
            ),
        )
        .await;
    }

    let want_running = !expired && vm.spec.power_state == PowerState::Running;
    let running = listing.status == RunState::Running;

    if !want_running {
        if running {
            shutdown(r, &node, vmid).await?;
            r.observed
                .patch(vmid, |cv| cv.status = RunState::Stopped)
                .await;
            let why = if expired {
                "the subscription expired"
            } else {
                "the spec asks for Suspended"
            };
            r.event(
                &name,
                EventType::Normal,
                "Suspended",
                format!("shut down because {why}; the disk is kept"),
            )
            .await;
        }
        let cond = r.condition(
            "Ready",
            ConditionStatus::False,
            if expired { "Expired" } else { "Suspended" },
            "the VM is shut down",
        );
        r.update(&name, move |v| {
            let mut changed = v.status.phase != VmPhase::Suspended;
            v.status.phase = VmPhase::Suspended;
            if expired && v.status.suspended_at.is_none() {
                v.status.suspended_at = Some(now);
                changed = true;
            }
            set_condition(&mut v.status.conditions, cond) || changed
        })
        .await?;
        // Come back when the grace period ends.
        if expired {
            let since = vm.status.suspended_at.unwrap_or(now);
            let left = (since + grace - now).to_std().unwrap_or_default();
            return Ok(Action::RequeueAfter(left + Duration::from_secs(1)));
        }
        return Ok(Action::Done);
    }

    if !running {
        let upid = r.pve.start_vm(&node, vmid).await?;
        r.pve.wait_task(&upid, r.wait).await?;
        r.observed
            .patch(vmid, |cv| cv.status = RunState::Running)
            .await;
        let resumed = vm.status.phase == VmPhase::Suspended;
        r.event(
            &name,
            EventType::Normal,
            if resumed { "Resumed" } else { "Started" },
            format!("VM {vmid} started on {node}"),
        )
        .await;
        r.update(&name, |v| {
            v.status.suspended_at = None;
            if v.status.phase == VmPhase::Suspended {
                v.status.phase = VmPhase::Provisioning;
            }
            // The guest booted afresh: the access file is checked again.
            v.status.access_file_digest = None;
            true
        })
        .await?;
        // Below, this run compares against its own copy: forget the digest there too.
        vm.status.access_file_digest = None;
    }

    let (text, digest) = access_file(r, &vm)?;
    if vm.status.access_file_digest.as_deref() != Some(digest.as_str()) {
        if let Err(e) = r.pve.agent_ping(&node, vmid).await {
            return agent_not_ready(r, &name, &e).await;
        }
        r.pve
            .agent_file_write(&node, vmid, ACCESS_FILE_PATH, &text)
            .await?;
        let owner = vm.spec.owner;
        r.event(
            &name,
            EventType::Normal,
            "AccessFileWritten",
            format!(
                "{ACCESS_FILE_PATH} now lets {owner} log in as {}",
                vm.spec.guest_user
            ),
        )
        .await;
        let agent = r.condition(
            "GuestAgent",
            ConditionStatus::True,
            "Responding",
            "the guest agent answers",
        );
        r.update(&name, move |v| {
            v.status.access_file_digest = Some(digest);
            set_condition(&mut v.status.conditions, agent);
            true
        })
        .await?;
    }

    let ready = r.condition(
        "Ready",
        ConditionStatus::True,
        "Running",
        "running, and the owner's wallet can log in",
    );
    let became_running = vm.status.phase != VmPhase::Running;
    // A VM already recorded as Running and Ready needs no write at all: the
    // fields below are written only here, so the copy read at the start of this
    // reconcile is current (the runtime never runs two reconciles of one key).
    let settled = !became_running
        && vm.status.suspended_at.is_none()
        && vm.status.last_error.is_none()
        && vm.status.conditions.iter().any(|c| {
            c.type_ == ready.type_
                && c.status == ready.status
                && c.reason == ready.reason
                && c.message == ready.message
        });
    if !settled {
        r.update(&name, move |v| {
            let changed = v.status.phase != VmPhase::Running
                || v.status.suspended_at.is_some()
                || v.status.last_error.is_some();
            v.status.phase = VmPhase::Running;
            v.status.suspended_at = None;
            // Cleared in the same write as the phase: a reader must never see
            // Running next to the error of the attempt that just got past it (the
            // runtime's own clearing comes in a later write).
            v.status.last_error = None;
            set_condition(&mut v.status.conditions, ready) || changed
        })
        .await?;
    }
    if became_running {
        r.event(
            &name,
            EventType::Normal,
            "Running",
            format!("VM {vmid} is running on {node}"),
        )
        .await;
    }
    // Wake up when the subscription expires, so suspension happens on time.
    Ok(match vm.spec.expires_at {
        Some(t) if t > now => {
            Action::RequeueAfter((t - now).to_std().unwrap_or_default() + Duration::from_secs(1))
        }
        _ => Action::Done,
    })
}

/// Shuts down cleanly within the configured timeout, then stops hard.
async fn shutdown<P: Pve + 'static>(
    r: &VmReconciler<P>,
    node: &str,
    vmid: u32,
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
        let upid = r.pve.stop_vm(node, vmid).await?;
        r.pve.wait_task(&upid, r.wait).await?;
    }
    Ok(())
}

/// The guest agent does not answer yet: wait (bounded), then report.
async fn agent_not_ready<P: Pve + 'static>(
    r: &VmReconciler<P>,
    name: &str,
    e: &blockhost_pve::Error,
) -> Result<Action, VmError> {
    let now = r.store.now();
    let timeout = chrono::Duration::seconds(i64::from(r.cfg.agent_timeout_secs));
    let waiting = r.condition(
        "GuestAgent",
        ConditionStatus::False,
        "Waiting",
        format!("waiting for the guest agent: {e}"),
    );
    let vm = r
        .update(name, move |v| {
            set_condition(&mut v.status.conditions, waiting)
        })
        .await?;
    let since = vm
        .as_ref()
        .and_then(|v| v.status.conditions.iter().find(|c| c.type_ == "GuestAgent"))
        .map_or(now, |c| c.last_transition_time);
    if now - since < timeout {
        return Ok(Action::RequeueAfter(AGENT_POLL));
    }
    let msg = format!(
        "the guest agent has not answered for {} s; check that the template runs qemu-guest-agent ({e})",
        r.cfg.agent_timeout_secs
    );
    let timed_out = r.condition("GuestAgent", ConditionStatus::False, "Timeout", msg.clone());
    r.update(name, move |v| {
        set_condition(&mut v.status.conditions, timed_out)
    })
    .await?;
    // An error, so the runtime backs off and the failure is recorded; the guest
    // may still come up, and the next attempt will notice.
    Err(VmError::AgentTimeout(msg))
}
