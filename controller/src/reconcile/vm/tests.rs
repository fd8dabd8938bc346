//! Decision-logic tests of the VM reconciler against the in-process fake cluster,
//! with the store's clock under the test's control.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use blockhost_crd::config::{Ipv4Pool, Ipv6Pool, LostPolicy, NetworkConfig, ProxmoxConfig};
use blockhost_crd::meta::ConditionStatus;
use blockhost_crd::resource::AnyObject;
use blockhost_crd::{VirtualMachine, VmPhase};
use blockhost_pve::fake::{FakeCluster, Fault, Op};
use blockhost_pve::types::RunState;
use blockhost_pve::{Pve, WaitOptions};
use chrono::{DateTime, TimeZone, Utc};

use super::observed::Observed;
use super::*;
use crate::reconcile::runtime::{Action, Retry};
use crate::store::{Store, StoreOptions, alloc::Pools};

struct T {
    _dir: tempfile::TempDir,
    r: VmReconciler<FakeCluster>,
    now: Arc<Mutex<DateTime<Utc>>>,
}

fn network() -> NetworkConfig {
    NetworkConfig {
        ipv4: Some(Ipv4Pool {
            cidr: "10.0.0.0/24".parse().unwrap(),
            gateway: "10.0.0.1".parse().unwrap(),
            first: None,
            last: None,
        }),
        ipv6: Some(Ipv6Pool {
            prefix: "2001:db8::/64".parse().unwrap(),
            gateway: "2001:db8::1".parse().unwrap(),
        }),
        bridge: "vmbr0".into(),
        nameservers: vec!["10.0.0.1".parse().unwrap()],
    }
}

fn proxmox(policy: LostPolicy) -> ProxmoxConfig {
    serde_json::from_value(serde_json::json!({
        "url": "https://127.0.0.1:8006", "tokenId": "root@pam!blockhost", "tokenSecretFile": "/dev/null",
        "vmidFirst": 10000, "vmidLast": 10099, "gracePeriodDays": 7, "lostPolicy": policy,
        "agentTimeoutSecs": 60, "shutdownTimeoutSecs": 30
    }))
    .unwrap()
}

fn setup(policy: LostPolicy) -> T {
    let dir = tempfile::tempdir().unwrap();
    let now = Arc::new(Mutex::new(
        Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap(),
    ));
    let clock = now.clone();
    let net = network();
    let opts = StoreOptions {
        clock: Arc::new(move || *clock.lock().unwrap()),
        pools: Pools {
            ipv4: net.ipv4.clone(),
            ipv6: net.ipv6.clone(),
        },
        ..StoreOptions::default()
    };
    let store = Store::open(&dir.path().join("s.redb"), opts).unwrap();
    let r = VmReconciler {
        store,
        pve: Arc::new(FakeCluster::standard()),
        cfg: proxmox(policy),
        network: net,
        chain_id: 31337,
        observed: Observed::default(),
        listing_max_age: Duration::from_secs(3600),
        wait: WaitOptions {
            interval: Duration::from_millis(1),
            max_interval: Duration::from_millis(2),
            deadline: Duration::from_secs(5),
            log_tail: 5,
        },
        settled: Default::default(),
        guard: Default::default(),
    };
    T { _dir: dir, r, now }
}

const OWNER: &str = "0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266";
const NEW_OWNER: &str = "0x70997970c51812dc3a010c7d01b50e0d17dc79c8";

fn vm_json(name: &str, cores: u32, extra: serde_json::Value) -> AnyObject {
    let mut v = serde_json::json!({
        "apiVersion": "blockhost.io/v1alpha1", "kind": "VirtualMachine",
        "metadata": {"name": name},
        "spec": {"owner": OWNER, "resources": {"cores": cores, "memoryMiB": 2048, "diskGiB": 20}, "guestUser": "alice"}
    });
    if let serde_json::Value::Object(m) = extra {
        for (k, val) in m {
            v["spec"][k] = val;
        }
    }
    AnyObject::VirtualMachine(Box::new(serde_json::from_value(v).unwrap()))
}

impl T {
    fn apply(&self, o: AnyObject) {
        self.r.store.apply(vec![o], false).unwrap();
    }
    fn vm(&self, name: &str) -> Option<VirtualMachine> {
        self.r.store.get(name).unwrap()
    }
    async fn reconcile(&self, name: &str) -> Result<Action, VmError> {
        self.r.reconcile(name.to_owned()).await
    }
    /// Reconciles until the VM settles (no immediate requeue), with a bound.
    async fn settle(&self, name: &str) -> Action {
        for _ in 0..10 {
            match self.reconcile(name).await {
                Ok(Action::RequeueAfter(d)) if d < Duration::from_secs(5) => continue,
                Ok(a) => return a,
                Err(_) => continue,
            }
        }
        panic!("{name} did not settle");
    }
    fn advance(&self, d: chrono::Duration) {
        *self.now.lock().unwrap() += d;
    }
    fn events(&self, name: &str) -> Vec<String> {
        self.r
            .store
            .events(Some(("VirtualMachine", name)), 100)
            .unwrap()
            .into_iter()
            .map(|e| e.reason)
            .collect()
    }

    /// The messages of `name`'s events with `reason`, oldest first.
    fn messages(&self, name: &str, reason: &str) -> Vec<String> {
        self.r
            .store
            .events(Some(("VirtualMachine", name)), 100)
            .unwrap()
            .into_iter()
            .filter(|e| e.reason == reason)
            .map(|e| e.message)
            .collect()
    }
}

#[tokio::test]
async fn creates_configures_starts_and_writes_the_access_file_within_the_request_budget() {
    let t = setup(LostPolicy::Hold);
    t.apply(vm_json(
        "web",
        2,
        serde_json::json!({"expiresAt": "2026-02-01T00:00:00Z"}),
    ));
    t.r.pve.reset_requests();
    let action = t.reconcile("web").await.unwrap();
    // Requeued for the expiry time (31 days).
    assert!(
        matches!(action, Action::RequeueAfter(d) if d > Duration::from_secs(30 * 86400)),
        "{action:?}"
    );
    let vm = t.vm("web").unwrap();
    assert_eq!(vm.status.phase, VmPhase::Running, "{:?}", vm.status);
    let vmid = vm.status.vmid.unwrap();
    assert!((10000..=10099).contains(&vmid));
    assert_eq!(vm.status.node.as_deref(), Some("pve1"));
    assert!(vm.metadata.finalizers.contains(&FINALIZER.to_owned()));
    let pve = t.r.pve.vm(vmid).unwrap();
    assert_eq!(pve.status, RunState::Running);
    assert_eq!(pve.config.get("cores").map(String::as_str), Some("2"));
    assert_eq!(pve.config.get("memory").map(String::as_str), Some("2048"));
    assert_eq!(pve.config.get("ciuser").map(String::as_str), Some("alice"));
    let ipc = pve.config.get("ipconfig0").unwrap();
    assert!(
        ipc.contains("ip=10.0.0.2/24")
            && ipc.contains("gw=10.0.0.1")
            && ipc.contains("ip6=2001:db8::100/128"),
        "{ipc}"
    );
    let tags = pve.config.get("tags").unwrap();
    assert!(
        tags.contains("blockhost") && tags.contains(&format!("bh-{}", vm.metadata.uid.unwrap())),
        "{tags}"
    );
    assert!(
        pve.config
            .get("description")
            .unwrap()
            .contains("VirtualMachine/web")
    );
    let (path, content) = pve.agent_files.last().unwrap();
    assert_eq!(path, "/etc/blockhost/access.json");
    let access = blockhost_crd::AccessFile::from_json(content).unwrap();
    assert_eq!(access.wallets[0].to_lower_hex(), OWNER);
    assert_eq!(
        (
            access.machine.as_str(),
            access.chain_id,
            access.users[0].as_str()
        ),
        ("web", 31337, "alice")
    );
    // Listing, nodes, clone, config, resize, start, agent ping, file write: 8;
    // the firewall: read the set, create it, two addresses, read and set the
    // options, read net0, the datacenter switch: 8.
    let requests = t.r.pve.requests_without_task_polls();
    assert!(
        requests <= 18,
        "{requests} requests: {:?}",
        t.r.pve.requests_by_op()
    );
    assert_eq!(
        t.events("web"),
        [
            "Created",
            "Cloned",
            "Configured",
            "FirewallConfigured",
            "Started",
            "AccessFileWritten",
            "Running"
        ]
    );

    // A second reconcile of a VM that matches its spec asks Proxmox nothing.
    t.r.pve.reset_requests();
    t.reconcile("web").await.unwrap();
    assert_eq!(t.r.pve.requests(), 0, "{:?}", t.r.pve.requests_by_op());
    assert_eq!(t.r.pve.vmids().len(), 2, "template + one VM, no duplicate");
}

#[tokio::test]
async fn power_state_expiry_extension_and_grace() {
    let t = setup(LostPolicy::Hold);
    t.apply(vm_json(
        "web",
        1,
        serde_json::json!({"expiresAt": "2026-01-10T00:00:00Z"}),
    ));
    t.settle("web").await;
    let vmid = t.vm("web").unwrap().status.vmid.unwrap();

    // Desired Suspended: shut down, disk kept.
    t.apply(vm_json(
        "web",
        1,
        serde_json::json!({"expiresAt": "2026-01-10T00:00:00Z", "powerState": "Suspended"}),
    ));
    t.settle("web").await;
    assert_eq!(t.vm("web").unwrap().status.phase, VmPhase::Suspended);
    assert_eq!(t.r.pve.vm(vmid).unwrap().status, RunState::Stopped);
    assert!(
        t.vm("web").unwrap().status.suspended_at.is_none(),
        "not expired: no grace clock"
    );
    t.apply(vm_json(
        "web",
        1,
        serde_json::json!({"expiresAt": "2026-01-10T00:00:00Z"}),
    ));
    t.settle("web").await;
    assert_eq!(t.r.pve.vm(vmid).unwrap().status, RunState::Running);

    // Past expiry: suspended, with the grace clock started.
    t.advance(chrono::Duration::days(10));
    let a = t.settle("web").await;
    let vm = t.vm("web").unwrap();
    assert_eq!(vm.status.phase, VmPhase::Suspended);
    assert!(vm.status.suspended_at.is_some());
    assert!(
        matches!(a, Action::RequeueAfter(d) if d > Duration::from_secs(6 * 86400)),
        "{a:?}"
    );
    assert_eq!(t.r.pve.vm(vmid).unwrap().status, RunState::Stopped);

    // Extended (absolute expiry moved ahead): resumed.
    t.apply(vm_json(
        "web",
        1,
        serde_json::json!({"expiresAt": "2026-03-01T00:00:00Z"}),
    ));
    t.settle("web").await;
    let vm = t.vm("web").unwrap();
    assert_eq!(
        (vm.status.phase, vm.status.suspended_at),
        (VmPhase::Running, None)
    );
    assert!(t.events("web").contains(&"Resumed".to_owned()));

    // Expired again and past the grace period: deleted, everything released.
    t.advance(chrono::Duration::days(60));
    t.settle("web").await;
    t.advance(chrono::Duration::days(8));
    t.settle("web").await;
    assert!(t.vm("web").is_none(), "deleted after grace");
    assert!(t.r.pve.vm(vmid).is_none());
    assert!(t.r.store.vmid_owner(vmid).unwrap().is_none());
}

#[tokio::test]
async fn delete_stops_purges_confirms_and_releases() {
    let t = setup(LostPolicy::Hold);
    t.apply(vm_json("web", 1, serde_json::json!({})));
    t.settle("web").await;
    let vm = t.vm("web").unwrap();
    let vmid = vm.status.vmid.unwrap();
    assert_eq!(
        t.r.store.delete("VirtualMachine", "web").unwrap(),
        crate::store::DeleteOutcome::Terminating
    );
    t.settle("web").await;
    assert!(t.r.pve.vm(vmid).is_none());
    assert!(t.vm("web").is_none());
    // Its VMID and addresses are free again.
    assert!(t.r.store.vmid_owner(vmid).unwrap().is_none());
    assert!(
        t.r.store
            .address_owner(vm.status.addresses.ipv4.as_deref().unwrap())
            .unwrap()
            .is_none()
    );
    assert!(
        t.r.store
            .address_owner(vm.status.addresses.ipv6.as_deref().unwrap())
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn drift_is_set_back_and_unmanaged_settings_are_left_alone() {
    let t = setup(LostPolicy::Hold);
    t.apply(vm_json("web", 2, serde_json::json!({})));
    t.settle("web").await;
    let vmid = t.vm("web").unwrap().status.vmid.unwrap();
    let net0 = t.r.pve.vm(vmid).unwrap().config["net0"].clone();
    assert!(net0.starts_with("virtio=BC:24:11:"), "{net0}");
    t.r.pve.modify_vm(vmid, |v| {
        v.status = RunState::Stopped;
        v.config.insert("cores".into(), "8".into());
        v.config.insert("balloon".into(), "512".into());
    });
    t.r.observed.refresh(t.r.pve.as_ref()).await.unwrap();
    t.settle("web").await;
    let pve = t.r.pve.vm(vmid).unwrap();
    assert_eq!(
        pve.status,
        RunState::Running,
        "stopped behind our back: started again"
    );
    assert_eq!(
        pve.config.get("cores").map(String::as_str),
        Some("2"),
        "managed setting set back"
    );
    assert_eq!(
        pve.config.get("balloon").map(String::as_str),
        Some("512"),
        "unmanaged setting untouched"
    );
    assert_eq!(
        pve.config["net0"], net0,
        "net0 rewritten with the MAC it had (Proxmox makes a new one otherwise)"
    );
    let ev = t.events("web");
    assert!(
        ev.contains(&"DriftCorrected".to_owned()) && ev.contains(&"Started".to_owned()),
        "{ev:?}"
    );

    // A spec change is applied the same way, as a reconfiguration.
    t.apply(vm_json("web", 4, serde_json::json!({})));
    t.settle("web").await;
    assert_eq!(
        t.r.pve
            .vm(vmid)
            .unwrap()
            .config
            .get("cores")
            .map(String::as_str),
        Some("4")
    );
    assert!(t.events("web").contains(&"Reconfigured".to_owned()));
    assert_eq!(t.vm("web").unwrap().status.observed_generation, Some(2));
}

#[tokio::test]
async fn owner_change_rewrites_the_access_file() {
    let t = setup(LostPolicy::Hold);
    t.apply(vm_json("web", 1, serde_json::json!({})));
    t.settle("web").await;
    let vmid = t.vm("web").unwrap().status.vmid.unwrap();
    t.apply(vm_json("web", 1, serde_json::json!({"owner": NEW_OWNER})));
    t.settle("web").await;
    let files = t.r.pve.vm(vmid).unwrap().agent_files;
    assert_eq!(files.len(), 2);
    let access = blockhost_crd::AccessFile::from_json(&files[1].1).unwrap();
    assert_eq!(access.wallets.len(), 1);
    assert_eq!(
        access.wallets[0].to_lower_hex(),
        NEW_OWNER,
        "the old owner can no longer log in"
    );
}

#[tokio::test]
async fn a_clone_left_by_a_crash_is_adopted_not_duplicated() {
    let t = setup(LostPolicy::Hold);
    t.apply(vm_json("web", 1, serde_json::json!({})));
    // What a reconcile did before being killed: reserved a VMID and cloned.
    let vmid =
        t.r.store
            .reserve_vmid("web", 10000, 10099, &|_| false)
            .unwrap();
    t.r.store
        .update_status::<VirtualMachine>("web", |v| {
            v.status.node = Some("pve1".into());
            true
        })
        .unwrap();
    let req = blockhost_pve::CloneRequest::full(vmid).name("web");
    let upid = t.r.pve.clone_vm("pve1", 9001, &req).await.unwrap();
    t.r.pve.wait_task(&upid, t.r.wait).await.unwrap();
    // The listing the restarted daemon had predates the clone.
    t.settle("web").await;
    assert_eq!(t.r.pve.vmids().len(), 2, "no second clone");
    assert_eq!(t.vm("web").unwrap().status.phase, VmPhase::Running);
    assert_eq!(t.r.pve.vm(vmid).unwrap().status, RunState::Running);
}

#[tokio::test]
async fn a_vanished_vm_is_lost_then_held_or_recreated() {
    for policy in [LostPolicy::Hold, LostPolicy::Recreate] {
        let t = setup(policy);
        t.apply(vm_json("web", 1, serde_json::json!({})));
        t.settle("web").await;
        let vmid = t.vm("web").unwrap().status.vmid.unwrap();
        t.r.pve.remove_vm(vmid);
        t.r.observed.refresh(t.r.pve.as_ref()).await.unwrap();
        t.settle("web").await;
        let vm = t.vm("web").unwrap();
        assert!(t.events("web").contains(&"Lost".to_owned()));
        match policy {
            LostPolicy::Hold => {
                assert_eq!(vm.status.phase, VmPhase::Failed);
                assert!(t.r.pve.vm(vmid).is_none(), "held: not re-created");
                let lost = vm
                    .status
                    .conditions
                    .iter()
                    .find(|c| c.type_ == "Lost")
                    .unwrap();
                assert_eq!(lost.status, ConditionStatus::True);
            }
            LostPolicy::Recreate => {
                assert_eq!(vm.status.phase, VmPhase::Running);
                assert!(t.r.pve.vm(vmid).is_some(), "re-created under its VMID");
            }
        }
    }
}

#[tokio::test]
async fn transient_faults_and_failed_tasks_converge_without_duplicates() {
    let t = setup(LostPolicy::Hold);
    t.apply(vm_json("web", 1, serde_json::json!({})));
    t.r.pve.inject(
        Op::Clone,
        None,
        Fault::TaskError("storage full".into()),
        Some(1),
    );
    t.r.pve.inject(Op::SetConfig, None, Fault::Locked, Some(1));
    t.r.pve.inject(
        Op::Start,
        None,
        Fault::Api {
            status: 500,
            message: "internal error".into(),
        },
        Some(1),
    );
    let first = t.reconcile("web").await.unwrap_err();
    assert_eq!(first.reason(), Reason::TaskFailed, "{first}");
    assert_eq!(first.retry(), Retry::Transient);
    let vm = t.vm("web").unwrap();
    assert!(
        vm.status
            .last_error
            .as_deref()
            .unwrap()
            .contains("storage full"),
        "{:?}",
        vm.status.last_error
    );
    assert!(t.events("web").contains(&"ReconcileFailed".to_owned()));
    t.settle("web").await;
    let vm = t.vm("web").unwrap();
    assert_eq!(vm.status.phase, VmPhase::Running);
    assert!(vm.status.last_error.is_none(), "cleared on success");
    assert_eq!(
        t.r.pve.vmids().len(),
        2,
        "exactly one VM despite the failures"
    );
}

#[tokio::test]
async fn waits_for_the_guest_agent_then_times_out_visibly() {
    let t = setup(LostPolicy::Hold);
    t.r.pve.set_agent_on_start(false);
    t.apply(vm_json("web", 1, serde_json::json!({})));
    let a = t.reconcile("web").await.unwrap();
    assert_eq!(a, Action::RequeueAfter(Duration::from_secs(2)));
    let vm = t.vm("web").unwrap();
    let c = vm
        .status
        .conditions
        .iter()
        .find(|c| c.type_ == "GuestAgent")
        .unwrap();
    assert_eq!(
        (c.status, c.reason.as_str()),
        (ConditionStatus::False, "Waiting")
    );
    assert_ne!(vm.status.phase, VmPhase::Running);
    t.advance(chrono::Duration::seconds(61));
    let e = t.reconcile("web").await.unwrap_err();
    assert_eq!(e.reason(), Reason::AgentTimeout);
    let vm = t.vm("web").unwrap();
    let c = vm
        .status
        .conditions
        .iter()
        .find(|c| c.type_ == "GuestAgent")
        .unwrap();
    assert_eq!(
        (c.status, c.reason.as_str()),
        (ConditionStatus::False, "Timeout")
    );
    assert!(
        vm.status
            .last_error
            .as_deref()
            .unwrap()
            .contains("qemu-guest-agent")
    );
    // The agent comes up after all: the VM gets its access file and runs.
    let vmid = vm.status.vmid.unwrap();
    t.r.pve.modify_vm(vmid, |v| v.agent_ready = true);
    t.reconcile("web").await.unwrap();
    assert_eq!(t.vm("web").unwrap().status.phase, VmPhase::Running);
}

#[tokio::test]
async fn a_missing_template_or_full_cluster_is_reported_not_retried_blindly() {
    let t = setup(LostPolicy::Hold);
    t.apply(vm_json("web", 1, serde_json::json!({"template": 9999})));
    let e = t.reconcile("web").await.unwrap_err();
    assert!(matches!(e, VmError::NoTemplate(9999)), "{e}");
    assert_eq!(t.vm("web").unwrap().status.phase, VmPhase::Failed);
    assert_eq!(e.retry(), Retry::Operator);
    let t = setup(LostPolicy::Hold);
    let huge = serde_json::json!({"apiVersion": "blockhost.io/v1alpha1", "kind": "VirtualMachine", "metadata": {"name": "big"},
        "spec": {"owner": OWNER, "resources": {"cores": 1, "memoryMiB": 1_000_000, "diskGiB": 20}}});
    t.apply(AnyObject::VirtualMachine(Box::new(
        serde_json::from_value(huge).unwrap(),
    )));
    let e = t.reconcile("big").await.unwrap_err();
    assert!(e.to_string().contains("no online node"), "{e}");
}

/// The `size=` of a fake VM's `scsi0`, in GiB.
fn disk_gib(t: &T, vmid: u32) -> String {
    let scsi0 =
        t.r.pve
            .vm(vmid)
            .unwrap()
            .config
            .get("scsi0")
            .unwrap()
            .clone();
    scsi0
        .split(',')
        .find_map(|p| p.strip_prefix("size="))
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn a_failure_between_clone_and_resize_still_ends_with_the_specs_disk_and_disks_grow_later() {
    let t = setup(LostPolicy::Hold);
    t.apply(vm_json("web", 1, serde_json::json!({})));
    // The config step fails right after the clone: the next reconcile finds the
    // VM and never runs the create path again, so the resize must happen there.
    t.r.pve.inject(
        Op::SetConfig,
        None,
        Fault::Api {
            status: 503,
            message: "service unavailable".into(),
        },
        Some(1),
    );
    assert!(t.reconcile("web").await.is_err());
    t.settle("web").await;
    let vm = t.vm("web").unwrap();
    assert_eq!(vm.status.phase, VmPhase::Running);
    let vmid = vm.status.vmid.unwrap();
    assert_eq!(disk_gib(&t, vmid), "20G", "grown to the spec's 20 GiB");

    // A later, bigger disk in the spec is applied too (disks only grow).
    let mut bigger = vm_json("web", 1, serde_json::json!({}));
    if let AnyObject::VirtualMachine(v) = &mut bigger {
        v.spec.resources.disk_gib = serde_json::from_value(serde_json::json!(30)).unwrap();
    }
    t.apply(bigger);
    t.r.observed.invalidate().await;
    t.settle("web").await;
    assert_eq!(disk_gib(&t, vmid), "30G");
    assert!(t.events("web").contains(&"DiskGrown".to_owned()));
    // Once grown, a reconcile asks nothing more.
    t.r.observed.invalidate().await;
    t.r.observed
        .ensure_fresh(t.r.pve.as_ref(), Duration::from_secs(3600))
        .await
        .unwrap();
    t.r.pve.reset_requests();
    t.reconcile("web").await.unwrap();
    assert_eq!(t.r.pve.requests(), 0, "{:?}", t.r.pve.requests_by_op());
}

#[tokio::test]
async fn resyncs_skip_settled_vms_until_drift_or_a_deadline() {
    let t = setup(LostPolicy::Hold);
    t.apply(vm_json(
        "web",
        1,
        serde_json::json!({"expiresAt": "2026-01-10T00:00:00Z"}),
    ));
    t.settle("web").await;
    t.r.before_resync().await;
    assert!(
        t.r.resync_skip("web"),
        "running, access file written, listing unchanged"
    );
    assert!(!t.r.resync_skip("other"), "never seen: visit");

    // Stopped behind our back: the fresh listing differs, so the resync visits.
    let vmid = t.vm("web").unwrap().status.vmid.unwrap();
    t.r.pve.modify_vm(vmid, |v| v.status = RunState::Stopped);
    t.r.before_resync().await;
    assert!(!t.r.resync_skip("web"));
    t.settle("web").await;
    t.r.before_resync().await;
    assert!(t.r.resync_skip("web"), "settled again after the restart");
    let files = t.r.pve.vm(vmid).unwrap().agent_files.len();
    assert_eq!(
        files, 2,
        "the access file is checked again after the guest restarts, in the same pass"
    );

    // The expiry passes: due, so visited.
    t.advance(chrono::Duration::days(10));
    assert!(!t.r.resync_skip("web"));
    // A failed reconcile forgets the settled state.
    t.r.pve.inject(
        Op::Shutdown,
        None,
        Fault::Api {
            status: 500,
            message: "boom".into(),
        },
        Some(1),
    );
    t.r.pve.inject(
        Op::Stop,
        None,
        Fault::Api {
            status: 500,
            message: "boom".into(),
        },
        Some(1),
    );
    assert!(t.reconcile("web").await.is_err());
    t.advance(chrono::Duration::days(-10));
    assert!(!t.r.resync_skip("web"));
}

/// One visit through the steps, as the reconcile runs it, keeping the trace.
async fn visit(t: &T, name: &str) -> (Result<Action, VmError>, Vec<StepName>) {
    let mut v = Visit::new(t.vm(name).unwrap(), t.r.store.now());
    let result = t.r.walk(&mut v).await;
    t.r.flush(&mut v).await.unwrap();
    (result, v.trace)
}

fn steps(find: &[Find], drive: &[Drive]) -> Vec<StepName> {
    find.iter()
        .map(|s| StepName::Find(*s))
        .chain(drive.iter().map(|s| StepName::Drive(*s)))
        .collect()
}

#[tokio::test]
async fn the_visit_walks_the_steps_in_order_and_stops_where_one_is_done() {
    let t = setup(LostPolicy::Hold);
    t.apply(vm_json("web", 1, serde_json::json!({})));
    // A new VM: every step, created on the way, Ready at the end.
    let (result, trace) = visit(&t, "web").await;
    assert_eq!(result.unwrap(), Action::Done);
    assert_eq!(trace, steps(&FIND, &DRIVE));
    assert_eq!(t.vm("web").unwrap().status.phase, VmPhase::Running);

    // In steady state the same walk writes nothing at all.
    let rv = t.vm("web").unwrap().metadata.resource_version;
    let (result, trace) = visit(&t, "web").await;
    assert_eq!(
        (result.unwrap(), trace),
        (Action::Done, steps(&FIND, &DRIVE))
    );
    assert_eq!(t.vm("web").unwrap().metadata.resource_version, rv);

    // Suspended: the power step ends the visit; the access file is not looked at.
    t.apply(vm_json(
        "web",
        1,
        serde_json::json!({"powerState": "Suspended"}),
    ));
    let (result, trace) = visit(&t, "web").await;
    assert_eq!(result.unwrap(), Action::Done);
    let upto_power = [
        Drive::Expire,
        Drive::Drift,
        Drive::Disk,
        Drive::Firewall,
        Drive::Power,
    ];
    assert_eq!(trace, steps(&FIND, &upto_power));
    assert_eq!(t.vm("web").unwrap().status.phase, VmPhase::Suspended);

    // Deleting: only the delete step runs.
    t.r.store.delete("VirtualMachine", "web").unwrap();
    let (_, trace) = visit(&t, "web").await;
    assert_eq!(trace, steps(&[Find::Delete], &[]));
}

#[tokio::test]
async fn a_guest_without_agent_ends_the_visit_at_the_access_file_step() {
    let t = setup(LostPolicy::Hold);
    t.r.pve.set_agent_on_start(false);
    t.apply(vm_json("web", 1, serde_json::json!({})));
    let (result, trace) = visit(&t, "web").await;
    assert_eq!(
        result.unwrap(),
        Action::RequeueAfter(Duration::from_secs(2))
    );
    assert_eq!(trace.last(), Some(&StepName::Drive(Drive::AccessFile)));
    // What the steps before it queued was written when the visit ended.
    let vm = t.vm("web").unwrap();
    assert!(condition::has(
        &vm.status.conditions,
        ConditionType::Provisioned,
        ConditionStatus::True
    ));
    assert!(t.events("web").contains(&"Started".to_owned()));
}

#[tokio::test]
async fn a_held_lost_vm_stays_held_on_later_visits() {
    let t = setup(LostPolicy::Hold);
    t.apply(vm_json("web", 1, serde_json::json!({})));
    t.settle("web").await;
    let vmid = t.vm("web").unwrap().status.vmid.unwrap();
    t.r.pve.remove_vm(vmid);
    t.r.observed.refresh(t.r.pve.as_ref()).await.unwrap();
    for _ in 0..3 {
        assert_eq!(t.reconcile("web").await.unwrap(), Action::Done);
    }
    assert!(
        t.r.pve.vm(vmid).is_none(),
        "not re-created behind the operator's back"
    );
    assert_eq!(t.vm("web").unwrap().status.phase, VmPhase::Failed);
}

fn api_error(status: u16, message: &str) -> blockhost_pve::Error {
    blockhost_pve::Error::Api {
        method: "POST",
        path: "/nodes/pve1/qemu".into(),
        status,
        message: message.into(),
        field_errors: Default::default(),
    }
}

#[test]
fn the_error_policy_separates_passing_trouble_from_what_needs_an_operator() {
    let pve = |status, message| VmError::Pve {
        doing: "clone the template",
        source: api_error(status, message),
    };
    let cases = [
        (
            pve(500, "internal error"),
            Reason::Transient,
            Retry::Transient,
        ),
        (
            pve(500, "VM is locked (clone)"),
            Reason::Locked,
            Retry::Transient,
        ),
        (pve(401, "no ticket"), Reason::Auth, Retry::Operator),
        (
            pve(400, "invalid storage"),
            Reason::Validation,
            Retry::Operator,
        ),
        (
            VmError::NoTemplate(9000),
            Reason::NoTemplate,
            Retry::Operator,
        ),
        (
            VmError::NoCapacity {
                allowed: "any node".into(),
                memory_mib: 1 << 20,
            },
            Reason::NoCapacity,
            Retry::Operator,
        ),
        (
            VmError::ForeignVmid(10000),
            Reason::ForeignVmid,
            Retry::Transient,
        ),
    ];
    for (e, reason, retry) in cases {
        assert_eq!((e.reason(), e.retry()), (reason, retry), "{e}");
        assert_eq!(e.policy().reason, reason.as_str());
    }
    // Operator failures say what to do; the cause is printed once.
    let auth = pve(401, "no ticket");
    assert!(auth.action().unwrap().contains("tokenId"));
    let text = crate::error_chain(&auth);
    assert_eq!(text.matches("no ticket").count(), 1, "{text}");
    assert!(
        text.starts_with("Proxmox could not clone the template: "),
        "{text}"
    );
}

#[tokio::test]
async fn a_panicked_store_task_is_an_internal_error_not_a_placement_failure() {
    let t = setup(LostPolicy::Hold);
    let e =
        t.r.store(|_| -> Result<(), crate::store::StoreError> { panic!("scripted") })
            .await
            .unwrap_err();
    assert!(matches!(e, VmError::StoreTask(_)), "{e:?}");
    assert_eq!((e.reason(), e.retry()), (Reason::Internal, Retry::Operator));
    assert!(e.action().unwrap().contains("bug"));
}

/// A root agent that records what it is asked and fails the first `fail` calls;
/// a port it has isolated stays isolated until `clear` says someone cleared it.
#[derive(Debug, Default)]
struct FakeAgent {
    calls: Mutex<Vec<(u32, u8)>>,
    fail: Mutex<u32>,
    isolated: Mutex<std::collections::BTreeSet<(u32, u8)>>,
}

impl FakeAgent {
    fn clear(&self, vmid: u32, net: u8) {
        self.isolated.lock().unwrap().remove(&(vmid, net));
    }
}

impl isolation::PortIsolator for FakeAgent {
    fn isolate(&self, vmid: u32, net: u8) -> isolation::IsolateFuture<'_> {
        Box::pin(async move {
            self.calls.lock().unwrap().push((vmid, net));
            let mut fail = self.fail.lock().unwrap();
            if *fail > 0 {
                *fail -= 1;
                return Err(blockhost_root_agent::client::ClientError::Refused(format!(
                    "VM {vmid} has no interface net{net} on a bridge"
                )));
            }
            let was_isolated = !self.isolated.lock().unwrap().insert((vmid, net));
            Ok(blockhost_root_agent::proto::Isolated {
                interface: format!("fwpr{vmid}p{net}"),
                isolated: true,
                was_isolated: Some(was_isolated),
            })
        })
    }
}

fn with_agent(t: &mut T) -> Arc<FakeAgent> {
    let agent = Arc::new(FakeAgent::default());
    t.r.guard = isolation::Guard::new(Some(agent.clone() as Arc<dyn isolation::PortIsolator>));
    agent
}

fn cond(t: &T, name: &str, type_: ConditionType) -> blockhost_crd::Condition {
    condition::find(&t.vm(name).unwrap().status.conditions, type_)
        .cloned()
        .unwrap_or_else(|| panic!("no {type_} condition"))
}

fn ipset(t: &T, vmid: u32) -> Vec<String> {
    let mut v: Vec<String> =
        t.r.pve
            .firewall(vmid)
            .ipsets
            .get(blockhost_pve::IPFILTER_NET0)
            .unwrap_or_else(|| panic!("VM {vmid} has no {}", blockhost_pve::IPFILTER_NET0))
            .iter()
            .map(|e| e.cidr.clone())
            .collect();
    v.sort();
    v
}

#[tokio::test]
async fn a_new_vm_is_filtered_to_its_own_addresses_before_it_starts_and_its_port_is_isolated() {
    let mut t = setup(LostPolicy::Hold);
    let agent = with_agent(&mut t);
    // PVE's clone copies the template's firewall: a stray address there must not
    // end up allowed for the tenant.
    t.r.pve.modify_firewall(9001, |f| {
        f.ipsets.insert(
            blockhost_pve::IPFILTER_NET0.into(),
            vec![blockhost_pve::IpSetEntry {
                cidr: "192.0.2.9".into(),
                nomatch: false,
                comment: None,
            }],
        );
        f.options.dhcp = Some(true);
    });
    let ops = Arc::new(Mutex::new(Vec::new()));
    let seen = ops.clone();
    t.r.pve.set_hook(move |op, _| {
        seen.lock().unwrap().push(op);
        None
    });
    t.apply(vm_json("web", 1, serde_json::json!({})));
    t.settle("web").await;
    let vm = t.vm("web").unwrap();
    assert_eq!(vm.status.phase, VmPhase::Running);
    let vmid = vm.status.vmid.unwrap();

    assert_eq!(ipset(&t, vmid), ["10.0.0.2", "2001:db8::100"]);
    let o = t.r.pve.firewall(vmid).options;
    let e = o.effective();
    assert!(e.enable && e.ipfilter && e.macfilter && e.ndp, "{o:?}");
    assert!(!e.dhcp && !e.radv, "{o:?}");
    assert_eq!(o.policy_in, Some(blockhost_pve::FirewallPolicy::Accept));
    assert_eq!(o.policy_out, Some(blockhost_pve::FirewallPolicy::Accept));
    let net0 = t.r.pve.vm(vmid).unwrap().config["net0"].clone();
    assert!(net0.contains("firewall=1"), "{net0}");

    // The filter is in place before the first start.
    let ops = ops.lock().unwrap().clone();
    let at = |op: Op| ops.iter().position(|o| *o == op).unwrap();
    assert!(at(Op::SetFirewallOptions) < at(Op::Start), "{ops:?}");
    assert!(
        at(Op::AddIpSetEntry) < at(Op::SetFirewallOptions),
        "{ops:?}"
    );
    assert_eq!(*agent.calls.lock().unwrap(), [(vmid, 0)]);

    let fw = cond(&t, "web", ConditionType::Firewall);
    assert_eq!(
        (fw.status, fw.reason.as_str()),
        (ConditionStatus::True, "InForce")
    );
    assert!(
        fw.message.contains("10.0.0.2, 2001:db8::100"),
        "{}",
        fw.message
    );
    let iso = cond(&t, "web", ConditionType::PortIsolated);
    assert_eq!(iso.status, ConditionStatus::True);
    assert!(
        iso.message.contains(&format!("fwpr{vmid}p0")),
        "{}",
        iso.message
    );
    let ev = t.events("web");
    for want in ["FirewallConfigured", "PortIsolated"] {
        assert!(ev.contains(&want.to_owned()), "{ev:?}");
    }
    assert!(!ev.contains(&"DriftCorrected".to_owned()), "{ev:?}");

    // Until the check period is over, a visit reads neither back.
    t.r.pve.reset_requests();
    t.reconcile("web").await.unwrap();
    assert_eq!(t.r.pve.requests(), 0, "{:?}", t.r.pve.requests_by_op());
    assert_eq!(agent.calls.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn firewall_drift_is_set_back_on_the_next_check_with_a_warning() {
    let mut t = setup(LostPolicy::Hold);
    let agent = with_agent(&mut t);
    t.apply(vm_json("web", 1, serde_json::json!({})));
    t.settle("web").await;
    let vmid = t.vm("web").unwrap().status.vmid.unwrap();
    let before = t.r.pve.vm(vmid).unwrap().config["net0"].clone();
    // Someone turns the filter off, lets the VM use a neighbour's address instead
    // of its own, and takes the firewall off its NIC.
    t.r.pve.modify_firewall(vmid, |f| {
        f.options.enable = Some(false);
        f.options.ipfilter = None;
        let set = f.ipsets.get_mut(blockhost_pve::IPFILTER_NET0).unwrap();
        set.retain(|e| e.cidr != "10.0.0.2");
        set.push(blockhost_pve::IpSetEntry {
            cidr: "10.0.0.3".into(),
            nomatch: false,
            comment: None,
        });
        set.push(blockhost_pve::IpSetEntry {
            cidr: "10.0.0.0/24".into(),
            nomatch: false,
            comment: None,
        });
    });
    t.r.pve.modify_vm(vmid, |v| {
        let net0 = v.config["net0"].replace("firewall=1", "firewall=0");
        v.config.insert("net0".into(), net0);
    });
    t.r.before_resync().await;
    assert!(t.r.resync_skip("web"), "not due yet");

    t.advance(isolation::CHECK_EVERY + chrono::Duration::seconds(1));
    assert!(
        !t.r.resync_skip("web"),
        "the check is due: the resync visits"
    );
    t.reconcile("web").await.unwrap();
    assert_eq!(ipset(&t, vmid), ["10.0.0.2", "2001:db8::100"]);
    let e = t.r.pve.firewall(vmid).options.effective();
    assert!(e.enable && e.ipfilter);
    assert_eq!(
        t.r.pve.vm(vmid).unwrap().config["net0"],
        before,
        "net0 back to firewall=1, MAC and all kept"
    );
    let drift = t.messages("web", "DriftCorrected");
    assert_eq!(drift.len(), 1, "{drift:?}");
    for part in [
        "10.0.0.3 removed",
        "10.0.0.0/24 removed",
        "10.0.0.2 added",
        "option enable 0 (want 1)",
        "net0 firewall=1",
    ] {
        assert!(drift[0].contains(part), "{part}: {}", drift[0]);
    }
    assert_eq!(
        cond(&t, "web", ConditionType::Firewall).status,
        ConditionStatus::True
    );
    // The port is isolated again on the same clock (the flag may have been cleared).
    assert_eq!(agent.calls.lock().unwrap().len(), 2);

    // A check that finds everything in order changes nothing and says nothing.
    t.advance(isolation::CHECK_EVERY + chrono::Duration::seconds(1));
    t.r.pve.reset_requests();
    t.reconcile("web").await.unwrap();
    let by_op = t.r.pve.requests_by_op();
    assert!(!by_op.contains_key(&Op::SetFirewallOptions), "{by_op:?}");
    assert!(!by_op.contains_key(&Op::SetConfig), "{by_op:?}");
    assert_eq!(
        t.events("web")
            .iter()
            .filter(|r| *r == "DriftCorrected")
            .count(),
        1
    );
}

#[tokio::test]
async fn a_start_isolates_the_new_port_and_a_failing_agent_is_retried_without_failing_the_vm() {
    let mut t = setup(LostPolicy::Hold);
    let agent = with_agent(&mut t);
    *agent.fail.lock().unwrap() = 1;
    t.apply(vm_json("web", 1, serde_json::json!({})));
    t.settle("web").await;
    let vm = t.vm("web").unwrap();
    assert_eq!(
        vm.status.phase,
        VmPhase::Running,
        "the owner can still log in"
    );
    assert!(vm.status.last_error.is_none());
    let iso = cond(&t, "web", ConditionType::PortIsolated);
    assert_eq!(
        (iso.status, iso.reason.as_str()),
        (ConditionStatus::False, "AgentFailed")
    );
    assert!(t.events("web").contains(&"IsolationFailed".to_owned()));
    t.advance(chrono::Duration::seconds(31));
    t.r.before_resync().await;
    assert!(!t.r.resync_skip("web"), "the retry is due");
    t.reconcile("web").await.unwrap();
    assert_eq!(
        cond(&t, "web", ConditionType::PortIsolated).status,
        ConditionStatus::True
    );
    assert_eq!(agent.calls.lock().unwrap().len(), 2);

    // Stopped and started again: a new tap (not isolated), isolated at once, and
    // no drift: BlockHost started it.
    let vmid = vm.status.vmid.unwrap();
    t.r.pve.modify_vm(vmid, |v| v.status = RunState::Stopped);
    agent.clear(vmid, 0);
    t.r.observed.refresh(t.r.pve.as_ref()).await.unwrap();
    t.settle("web").await;
    assert_eq!(agent.calls.lock().unwrap().len(), 3);
    assert!(!t.events("web").contains(&"DriftCorrected".to_owned()));
}

#[tokio::test]
async fn a_port_whose_isolation_was_cleared_is_isolated_again_and_said() {
    let mut t = setup(LostPolicy::Hold);
    let agent = with_agent(&mut t);
    t.apply(vm_json("web", 1, serde_json::json!({})));
    t.settle("web").await;
    let vmid = t.vm("web").unwrap().status.vmid.unwrap();
    assert_eq!(
        cond(&t, "web", ConditionType::PortIsolated).status,
        ConditionStatus::True
    );

    // Someone runs `ip link set fwpr…p0 type bridge_slave isolated off`.
    agent.clear(vmid, 0);
    t.advance(isolation::CHECK_EVERY + chrono::Duration::seconds(1));
    t.r.before_resync().await;
    assert!(!t.r.resync_skip("web"), "the check is due");
    t.reconcile("web").await.unwrap();
    let drift = t.messages("web", "DriftCorrected");
    assert_eq!(drift.len(), 1, "{drift:?}");
    assert!(
        drift[0].contains(&format!("fwpr{vmid}p0 was found not isolated")),
        "{}",
        drift[0]
    );
    assert_eq!(
        cond(&t, "web", ConditionType::PortIsolated).status,
        ConditionStatus::True
    );

    // The next check finds it isolated and says nothing.
    t.advance(isolation::CHECK_EVERY + chrono::Duration::seconds(1));
    t.reconcile("web").await.unwrap();
    assert_eq!(agent.calls.lock().unwrap().len(), 3);
    assert_eq!(
        t.events("web")
            .iter()
            .filter(|r| *r == "DriftCorrected")
            .count(),
        1
    );
}

#[tokio::test]
async fn without_a_root_agent_ports_stay_shared_and_the_condition_says_so() {
    let t = setup(LostPolicy::Hold);
    t.apply(vm_json("web", 1, serde_json::json!({})));
    t.settle("web").await;
    let vm = t.vm("web").unwrap();
    assert_eq!(vm.status.phase, VmPhase::Running);
    let iso = cond(&t, "web", ConditionType::PortIsolated);
    assert_eq!(
        (iso.status, iso.reason.as_str()),
        (ConditionStatus::False, "NoRootAgent")
    );
    // The Proxmox firewall is set all the same.
    assert_eq!(
        ipset(&t, vm.status.vmid.unwrap()),
        ["10.0.0.2", "2001:db8::100"]
    );
}

#[tokio::test]
async fn a_datacenter_firewall_that_is_off_is_reported_until_it_is_on() {
    let t = setup(LostPolicy::Hold);
    t.r.pve.set_cluster_firewall(false);
    t.apply(vm_json("web", 1, serde_json::json!({})));
    t.settle("web").await;
    let fw = cond(&t, "web", ConditionType::Firewall);
    assert_eq!(
        (fw.status, fw.reason.as_str()),
        (ConditionStatus::False, "ClusterFirewallDisabled")
    );
    assert!(fw.message.contains("--enable 1"), "{}", fw.message);
    let vmid = t.vm("web").unwrap().status.vmid.unwrap();
    assert!(
        t.r.pve.firewall(vmid).options.effective().enable,
        "set anyway"
    );
    t.r.pve.set_cluster_firewall(true);
    t.advance(isolation::CHECK_EVERY + chrono::Duration::seconds(1));
    t.reconcile("web").await.unwrap();
    assert_eq!(
        cond(&t, "web", ConditionType::Firewall).status,
        ConditionStatus::True
    );
    let warned = t
        .events("web")
        .iter()
        .filter(|r| *r == "ClusterFirewallDisabled")
        .count();
    assert_eq!(warned, 1);
}

#[tokio::test]
async fn a_deleted_vm_leaves_no_firewall_behind() {
    let mut t = setup(LostPolicy::Hold);
    with_agent(&mut t);
    t.apply(vm_json("web", 1, serde_json::json!({})));
    t.settle("web").await;
    let vmid = t.vm("web").unwrap().status.vmid.unwrap();
    assert!(t.r.pve.has_firewall(vmid));
    t.r.store.delete("VirtualMachine", "web").unwrap();
    t.settle("web").await;
    assert!(t.vm("web").is_none());
    // The removal's own trigger visits a name that is gone.
    t.reconcile("web").await.unwrap();
    assert!(
        !t.r.pve.has_firewall(vmid),
        "PVE drops the VM's firewall file with it"
    );
    assert!(t.r.guard.next_due("web").is_none(), "nothing left due");
}
