//! The access file, written through the guest agent, and the `Ready` state.
//!
//! The file is written again whenever its digest differs from the one recorded
//! (a new owner, a token id, a guest that booted afresh). A guest whose agent
//! does not answer is waited for, within `agentTimeoutSecs`.

use blockhost_crd::access::{ACCESS_FILE_PATH, ACCESS_FILE_VERSION, AccessFile};
use blockhost_crd::meta::{ConditionStatus, EventType};
use blockhost_crd::{ConditionType, Reason, VmPhase, condition};
use blockhost_pve::Pve;
use sha2::{Digest, Sha256};
use std::time::Duration;

use super::error::Doing;
use super::spec::Found;
use super::{Step, Visit, VmError, VmReconciler};
use crate::reconcile::runtime::Action;

/// How often to look again while waiting for a guest agent.
const AGENT_POLL: Duration = Duration::from_secs(2);

/// The text of the access file the VM should hold, and its digest.
fn render<P>(r: &VmReconciler<P>, v: &Visit) -> Result<(String, String), VmError> {
    let vm = &v.vm;
    let file = AccessFile {
        version: ACCESS_FILE_VERSION,
        machine: vm.metadata.name.to_string(),
        chain_id: r.chain_id,
        nft_token_id: vm.status.nft_token_id,
        wallets: vec![vm.spec.owner],
        users: vec![vm.spec.guest_user.to_string()],
        signing_url: None,
    };
    let text = file.to_json().map_err(VmError::AccessFile)?;
    let digest = hex::encode(Sha256::digest(text.as_bytes()));
    Ok((text, digest))
}

/// The access-file step: writes the file when the recorded digest differs.
pub async fn access_file<P: Pve + 'static>(
    r: &VmReconciler<P>,
    v: &mut Visit,
    found: &Found,
) -> Result<Step, VmError> {
    let (text, digest) = render(r, v)?;
    if v.vm.status.access_file_digest.as_deref() == Some(digest.as_str()) {
        return Ok(Step::Continue);
    }
    let (node, vmid) = (found.node.as_str(), found.vmid);
    if let Err(e) = r.pve.agent_ping(node, vmid).await {
        return agent_not_ready(r, v, e);
    }
    r.pve
        .agent_file_write(node, vmid, ACCESS_FILE_PATH, &text)
        .await
        .doing("write the access file")?;
    v.event(
        EventType::Normal,
        "AccessFileWritten",
        format!(
            "{ACCESS_FILE_PATH} now lets {} log in as {}",
            v.vm.spec.owner, v.vm.spec.guest_user
        ),
    );
    v.condition(
        ConditionType::GuestAgent,
        ConditionStatus::True,
        Reason::Responding,
        "the guest agent answers",
    );
    v.status(move |vm| {
        let changed = vm.status.access_file_digest.as_deref() != Some(digest.as_str());
        vm.status.access_file_digest = Some(digest.clone());
        changed
    });
    Ok(Step::Continue)
}

/// The guest agent does not answer yet: wait (bounded), then report.
fn agent_not_ready<P>(
    r: &VmReconciler<P>,
    v: &mut Visit,
    e: blockhost_pve::Error,
) -> Result<Step, VmError> {
    v.condition(
        ConditionType::GuestAgent,
        ConditionStatus::False,
        Reason::Waiting,
        format!("waiting for the guest agent: {e}"),
    );
    // The condition keeps its transition time while it stays False: the wait's start.
    let since = condition::find(&v.vm.status.conditions, ConditionType::GuestAgent)
        .map_or(v.now, |c| c.last_transition_time);
    let timeout = chrono::Duration::seconds(i64::from(r.cfg.agent_timeout_secs));
    if v.now - since < timeout {
        return Ok(Step::Done(Action::RequeueAfter(AGENT_POLL)));
    }
    let error = VmError::AgentTimeout {
        secs: r.cfg.agent_timeout_secs,
        source: e,
    };
    v.condition(
        ConditionType::GuestAgent,
        ConditionStatus::False,
        Reason::Timeout,
        crate::error_chain(&error),
    );
    // An error, so the runtime backs off and the failure is recorded; the guest
    // may still come up, and the next attempt will notice.
    Err(error)
}

/// The ready step: records Running and Ready, and wakes up when the
/// subscription expires, so suspension happens on time.
pub fn ready(v: &mut Visit, found: &Found) -> Step {
    let became_running = v.vm.status.phase != VmPhase::Running;
    v.condition(
        ConditionType::Ready,
        ConditionStatus::True,
        Reason::Running,
        "running, and the owner's wallet can log in",
    );
    // Cleared in the same write as the phase: a reader must never see Running
    // next to the error of the attempt that just got past it.
    v.status(|vm| {
        let changed = vm.status.phase != VmPhase::Running
            || vm.status.suspended_at.is_some()
            || vm.status.last_error.is_some();
        vm.status.phase = VmPhase::Running;
        vm.status.suspended_at = None;
        vm.status.last_error = None;
        changed
    });
    if became_running {
        v.event(
            EventType::Normal,
            "Running",
            format!("VM {} is running on {}", found.vmid, found.node),
        );
    }
    let now = v.now;
    Step::Done(match v.vm.spec.expires_at {
        Some(t) if t > now => {
            Action::RequeueAfter((t - now).to_std().unwrap_or_default() + Duration::from_secs(1))
        }
        _ => Action::Done,
    })
}
