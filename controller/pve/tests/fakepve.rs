//! Integration tests of [`PveClient`] against fakepve over HTTPS, with the server certificate
//! pinned by fingerprint and API-token auth (ticket auth where that is what is tested).
//!
//! fakepve runs with time_scale 0: every task has finished when the request that started it
//! returns, so no test waits on wall-clock time.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use blockhost_pve::{
    ClientConfig, CloneRequest, ConfigUpdate, Credentials, DeleteOptions, DiskSize, Error,
    ErrorKind, Fingerprint, IpConfig, ManualClock, Pve, PveClient, RunState, ShutdownOptions,
    TaskExit, TlsMode, WaitOptions,
};
use common::FakePve;
use serde_json::json;

const TEMPLATE: u32 = 9001;

fn wait() -> WaitOptions {
    WaitOptions {
        interval: Duration::from_millis(20),
        max_interval: Duration::from_millis(100),
        deadline: Duration::from_secs(20),
        log_tail: 10,
    }
}

/// Clone the template to `newid` and wait for it.
async fn clone(c: &PveClient, newid: u32) {
    let upid = c
        .clone_vm(
            "pve1",
            TEMPLATE,
            &CloneRequest::full(newid).name(format!("blockhost-{newid}")),
        )
        .await
        .unwrap();
    assert_eq!(upid.task_type(), "qmclone");
    assert_eq!(upid.node(), "pve1");
    c.wait_task(&upid, wait()).await.unwrap();
}

async fn run(c: &PveClient, upid: blockhost_pve::Result<blockhost_pve::Upid>) -> TaskExit {
    c.wait_task(&upid.unwrap(), wait()).await.unwrap()
}

#[tokio::test]
async fn version_and_nodes() {
    let pve = FakePve::start(&["pve2"]);
    let c = pve.client();
    let v = c.version().await.unwrap();
    assert_eq!(v.release, "9.0");
    let nodes = c.nodes().await.unwrap();
    let names: Vec<_> = nodes.iter().map(|n| n.node.as_str()).collect();
    assert_eq!(names, ["pve1", "pve2"]);
    assert!(nodes[0].free_mem() > 0);
    assert_eq!(nodes[0].maxcpu, Some(4));
}

#[tokio::test]
async fn clone_configure_resize_and_power_lifecycle() {
    let pve = FakePve::start(&[]);
    let c = pve.client();
    let id = 100;
    clone(&c, id).await;

    let vms = c.cluster_vms().await.unwrap();
    let vm = vms.iter().find(|v| v.vmid == id).expect("clone listed");
    assert_eq!(vm.status, RunState::Stopped);
    assert!(!vm.template);
    assert!(vms.iter().any(|v| v.vmid == TEMPLATE && v.template));

    let ipcfg = IpConfig::new()
        .ipv4(
            "10.0.0.5".parse().unwrap(),
            24,
            Some("10.0.0.1".parse().unwrap()),
        )
        .ipv6(
            "2001:db8::5".parse().unwrap(),
            128,
            Some("2001:db8::1".parse().unwrap()),
        );
    let update = ConfigUpdate::new()
        .cores(2)
        .memory_mib(2048)
        .ipconfig(0, &ipcfg)
        .tags(["blockhost", "sub-7"])
        .description("blockhost-uid=3f1c0e2a-0000-4000-8000-000000000001")
        .ciuser("admin")
        .ssh_keys(["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB test@example"]);
    c.set_vm_config("pve1", id, &update).await.unwrap();

    let cfg = c.vm_config("pve1", id).await.unwrap();
    assert_eq!(cfg.cores(), Some(2));
    assert_eq!(cfg.memory_mib(), Some(2048));
    assert_eq!(cfg.ipconfig(0).unwrap().unwrap(), ipcfg);
    assert_eq!(cfg.tags(), ["blockhost", "sub-7"]);
    assert_eq!(
        cfg.description(),
        Some("blockhost-uid=3f1c0e2a-0000-4000-8000-000000000001")
    );
    assert_eq!(
        cfg.net(0).unwrap().unwrap().bridge.as_deref(),
        Some("vmbr0")
    );
    assert_eq!(
        cfg.ssh_keys(),
        ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB test@example"]
    );
    assert_eq!(cfg.ciuser(), Some("admin"));
    assert!(cfg.agent_enabled());
    assert!(cfg.digest().is_some());
    assert_eq!(cfg.disk_size("scsi0"), Some(3 << 30));

    let resized = c
        .resize_disk("pve1", id, "scsi0", DiskSize::grow_gib(2))
        .await
        .unwrap();
    if let Some(upid) = resized {
        c.wait_task(&upid, wait()).await.unwrap();
    }

    assert!(run(&c, c.start_vm("pve1", id).await).await.is_success());
    let st = c.vm_status("pve1", id).await.unwrap();
    assert_eq!(st.status, RunState::Running);
    assert!(!st.is_paused());

    let opts = ShutdownOptions {
        timeout: Some(Duration::from_secs(30)),
        force_stop: false,
    };
    run(&c, c.shutdown_vm("pve1", id, opts).await).await;
    assert_eq!(
        c.vm_status("pve1", id).await.unwrap().status,
        RunState::Stopped
    );

    run(&c, c.start_vm("pve1", id).await).await;
    run(&c, c.stop_vm("pve1", id).await).await;
    assert_eq!(
        c.vm_status("pve1", id).await.unwrap().status,
        RunState::Stopped
    );

    let upid = c
        .delete_vm("pve1", id, DeleteOptions::default())
        .await
        .unwrap();
    c.wait_task(&upid, wait()).await.unwrap();
    // purge=1 reached PVE: its worker logs the purge.
    let log = c.task_log(&upid, 0, 50).await.unwrap();
    assert!(log.iter().any(|l| l.t.contains("purging VM")), "{log:?}");
    let gone = c.vm_config("pve1", id).await.unwrap_err();
    assert_eq!(gone.kind(), ErrorKind::NotFound, "{gone:?}");
    assert!(!c.cluster_vms().await.unwrap().iter().any(|v| v.vmid == id));
}

#[tokio::test]
async fn parameter_errors_are_permanent_with_field_messages() {
    let pve = FakePve::start(&[]);
    let c = pve.client();
    clone(&c, 100).await;
    let err = c
        .set_vm_config(
            "pve1",
            100,
            &ConfigUpdate::new()
                .set("cores", "many")
                .set("memory", "lots"),
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Validation, "{err:?}");
    assert!(!err.is_transient());
    assert_eq!(err.status(), Some(400));
    let fields = err.field_errors().expect("per-field errors");
    assert!(fields["cores"].contains("integer"), "{fields:?}");
    assert!(fields.contains_key("memory"), "{fields:?}");
}

#[tokio::test]
async fn missing_vm_is_not_found_and_taken_id_already_exists() {
    let pve = FakePve::start(&[]);
    let c = pve.client();
    let err = c.vm_status("pve1", 4242).await.unwrap_err();
    assert!(err.is_not_found(), "{err:?}");
    let err = c
        .clone_vm("pve1", TEMPLATE, &CloneRequest::full(TEMPLATE))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AlreadyExists, "{err:?}");
}

#[tokio::test]
async fn locked_vm_and_lock_timeout_are_transient() {
    let mut pve = FakePve::start(&[]);
    let c = pve.client();
    clone(&c, 100).await;

    pve.cmd(json!({"op": "snapshot_lock", "vmid": 100, "lock": "backup"}));
    let err = c
        .set_vm_config("pve1", 100, &ConfigUpdate::new().cores(2))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Locked, "{err:?}");
    assert!(err.is_transient());
    // A start of a locked VM fails inside the task: still a lock, still transient.
    let err = c
        .wait_task(&c.start_vm("pve1", 100).await.unwrap(), wait())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::TaskFailed { .. }), "{err:?}");
    assert_eq!(err.kind(), ErrorKind::Locked, "{err:?}");
    pve.cmd(json!({"op": "unlock", "vmid": 100}));

    // Another task holds the config lock: PVE gives up with "can't lock file ... got timeout".
    pve.cmd(json!({"op": "hold_config_lock", "vmid": 100}));
    let err = c
        .set_vm_config("pve1", 100, &ConfigUpdate::new().cores(2))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Locked, "{err:?}");
    assert!(err.to_string().contains("can't lock file"), "{err}");
    pve.cmd(json!({"op": "release_config_lock", "vmid": 100}));
    c.set_vm_config("pve1", 100, &ConfigUpdate::new().cores(2))
        .await
        .unwrap();
}

#[tokio::test]
async fn server_errors_and_refused_connections_are_transient() {
    let mut pve = FakePve::start(&[]);
    let c = pve.client();
    pve.cmd(json!({"op": "fail", "method": "GET", "suffix": "/version",
                   "status": 503, "message": "Service Unavailable", "times": 1}));
    let err = c.version().await.unwrap_err();
    assert_eq!(err.status(), Some(503));
    assert!(err.is_transient(), "{err:?}");
    c.version().await.unwrap();

    pve.cmd(json!({"op": "lose_quorum"}));
    let err = c.start_vm("pve1", TEMPLATE).await.unwrap_err();
    assert!(err.is_transient(), "{err:?}");

    // Nothing listens on 127.0.10.251: a connection error, transient.
    let nobody = PveClient::new(ClientConfig::new(
        "https://127.0.10.251:8006",
        Credentials::api_token(common::TOKEN_ID, common::TOKEN_SECRET),
        TlsMode::Pinned(pve.fingerprint),
    ))
    .unwrap();
    let err = nobody.version().await.unwrap_err();
    assert!(matches!(err, Error::Transport { .. }), "{err:?}");
    assert!(err.is_transient());
}

#[tokio::test]
async fn failed_task_carries_exit_status_and_log_tail() {
    let mut pve = FakePve::start(&[]);
    let c = pve.client();
    clone(&c, 100).await;
    pve.cmd(json!({"op": "set", "vmid": 100, "attr": "start_error",
                   "value": "volume 'local-lvm:vm-100-disk-0' does not exist"}));
    let upid = c.start_vm("pve1", 100).await.unwrap();
    let err = c.wait_task(&upid, wait()).await.unwrap_err();
    match &err {
        Error::TaskFailed {
            upid: failed,
            exit_status,
            log_tail,
        } => {
            assert_eq!(**failed, upid);
            assert_eq!(
                exit_status,
                "volume 'local-lvm:vm-100-disk-0' does not exist"
            );
            assert_eq!(
                log_tail.last().map(String::as_str),
                Some("TASK ERROR: volume 'local-lvm:vm-100-disk-0' does not exist")
            );
        }
        other => panic!("expected TaskFailed, got {other:?}"),
    }
    assert_eq!(err.kind(), ErrorKind::TaskFailed);
    assert!(!err.is_transient());
}

#[tokio::test]
async fn shutdown_slower_than_timeout_fails_unless_forced() {
    let mut pve = FakePve::start(&[]);
    let c = pve.client();
    clone(&c, 100).await;
    run(&c, c.start_vm("pve1", 100).await).await;
    pve.cmd(json!({"op": "set", "vmid": 100, "attr": "shutdown_secs", "value": 300}));
    let opts = ShutdownOptions {
        timeout: Some(Duration::from_secs(10)),
        force_stop: false,
    };
    let err = c
        .wait_task(&c.shutdown_vm("pve1", 100, opts).await.unwrap(), wait())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::TaskFailed, "{err:?}");
    assert_eq!(
        c.vm_status("pve1", 100).await.unwrap().status,
        RunState::Running
    );
    let forced = ShutdownOptions {
        force_stop: true,
        ..opts
    };
    run(&c, c.shutdown_vm("pve1", 100, forced).await).await;
    assert_eq!(
        c.vm_status("pve1", 100).await.unwrap().status,
        RunState::Stopped
    );
}

#[tokio::test]
async fn guest_agent_ping_exec_and_file_write() {
    let mut pve = FakePve::start(&[]);
    let c = pve.client();
    clone(&c, 100).await;
    run(&c, c.start_vm("pve1", 100).await).await;
    // A fresh clone's agent does not answer yet: a 500, retried by the reconciler.
    let err = c.agent_ping("pve1", 100).await.unwrap_err();
    assert!(err.is_transient(), "{err:?}");

    pve.cmd(json!({"op": "set", "vmid": 100, "attr": "agent", "value": {}}));
    c.agent_ping("pve1", 100).await.unwrap();
    let access = "owner = \"0xabc\"\nnft = 7\n";
    c.agent_file_write("pve1", 100, "/etc/blockhost/access.json", access)
        .await
        .unwrap();

    let seen = pve.cmd(json!({"op": "agent_requests", "vmid": 100}));
    let seen = seen.as_array().unwrap();
    let write = seen
        .iter()
        .find(|r| r[0] == "file-write")
        .expect("file-write");
    assert_eq!(write[1]["file"], "/etc/blockhost/access.json");
    assert_eq!(write[1]["content"], access);
}

#[tokio::test]
async fn ticket_auth_sends_csrf_and_renews_before_expiry() {
    let mut pve = FakePve::start(&[]);
    let clock = ManualClock::new();
    let c = PveClient::new(
        ClientConfig::new(
            &pve.url,
            Credentials::password("root@pam", "secret"),
            TlsMode::Pinned(pve.fingerprint),
        )
        .clock(clock.clone()),
    )
    .unwrap();
    c.version().await.unwrap();
    // A write: fakepve refuses it with 401 unless the CSRF token comes along.
    clone(&c, 100).await;
    c.set_vm_config("pve1", 100, &ConfigUpdate::new().cores(3))
        .await
        .unwrap();
    let logins = |reqs: &[(String, String)]| {
        reqs.iter()
            .filter(|(m, p)| m == "POST" && p.ends_with("/access/ticket"))
            .count()
    };
    assert_eq!(logins(&pve.requests()), 1);

    // Still young: no new login.
    clock.advance(Duration::from_secs(60 * 60));
    c.version().await.unwrap();
    assert_eq!(logins(&pve.requests()), 1);
    // Past the renewal threshold (90 min of a 2 h ticket): logs in again first.
    clock.advance(Duration::from_secs(31 * 60));
    c.set_vm_config("pve1", 100, &ConfigUpdate::new().cores(4))
        .await
        .unwrap();
    assert_eq!(logins(&pve.requests()), 2);

    // A ticket PVE no longer knows (restart, revocation): one fresh login and a retry, even
    // when several requests hit the 401 together.
    pve.cmd(json!({"op": "revoke_tickets"}));
    let (a, b, d, e) = tokio::join!(c.version(), c.version(), c.cluster_vms(), c.nodes());
    a.unwrap();
    b.unwrap();
    d.unwrap();
    e.unwrap();
    assert_eq!(logins(&pve.requests()), 3);
    assert_eq!(c.vm_config("pve1", 100).await.unwrap().cores(), Some(4));
}

#[tokio::test]
async fn bad_credentials_are_auth_errors() {
    let pve = FakePve::start(&[]);
    let wrong_pw = PveClient::new(ClientConfig::new(
        &pve.url,
        Credentials::password("root@pam", "not-it"),
        TlsMode::Pinned(pve.fingerprint),
    ))
    .unwrap();
    let err = wrong_pw.version().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Auth, "{err:?}");
    assert!(!format!("{err:?}{err}").contains("not-it"));

    let wrong_token = PveClient::new(ClientConfig::new(
        &pve.url,
        Credentials::api_token(common::TOKEN_ID, "guessed"),
        TlsMode::Pinned(pve.fingerprint),
    ))
    .unwrap();
    let err = wrong_token.version().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Auth, "{err:?}");
}

#[tokio::test]
async fn wrong_fingerprint_is_refused() {
    let pve = FakePve::start(&[]);
    let wrong: Fingerprint = "00".repeat(32).parse().unwrap();
    let c = PveClient::new(ClientConfig::new(
        &pve.url,
        Credentials::api_token(common::TOKEN_ID, common::TOKEN_SECRET),
        TlsMode::Pinned(wrong),
    ))
    .unwrap();
    let err = c.version().await.unwrap_err();
    assert!(matches!(err, Error::Tls { .. }), "{err:?}");
    assert_eq!(err.kind(), ErrorKind::Permanent);
    assert!(!err.is_transient());

    // The system roots do not know fakepve's self-signed certificate either (if the machine has
    // no trust store at all, the client refuses to build, which is just as safe).
    if let Ok(c) = PveClient::new(ClientConfig::new(
        &pve.url,
        Credentials::api_token(common::TOKEN_ID, common::TOKEN_SECRET),
        TlsMode::SystemRoots,
    )) {
        let err = c.version().await.unwrap_err();
        assert!(matches!(err, Error::Tls { .. }), "{err:?}");
    }

    // Insecure accepts it (and warns).
    let c = PveClient::new(ClientConfig::new(
        &pve.url,
        Credentials::api_token(common::TOKEN_ID, common::TOKEN_SECRET),
        TlsMode::Insecure,
    ))
    .unwrap();
    c.version().await.unwrap();
}

#[tokio::test]
async fn request_timeout_applies_per_request() {
    let mut pve = FakePve::start(&[]);
    let c = PveClient::new(
        pve.token_config()
            .request_timeout(Duration::from_millis(300)),
    )
    .unwrap();
    c.version().await.unwrap();
    // Every request now hangs for 120 fake seconds (time_scale 0 → treated as 1:1 for hangs).
    pve.cmd(json!({"op": "hang"}));
    let err = c.version().await.unwrap_err();
    assert!(matches!(err, Error::Transport { .. }), "{err:?}");
    assert!(err.is_transient());
}

#[tokio::test]
async fn vm_firewall_options_and_ip_filter_set_round_trip_under_pves_schema() {
    use blockhost_pve::{FirewallOptions, FirewallPolicy, IPFILTER_NET0};
    let mut pve = FakePve::start(&[]);
    let c = pve.client();
    clone(&c, 100).await;
    // Nothing set: PVE answers with no options, and the set does not exist.
    let o = c.vm_firewall_options("pve1", 100).await.unwrap();
    assert_eq!(o.enable, None);
    assert_eq!(o.effective().policy_in, FirewallPolicy::Drop);
    let err = c.vm_ipset("pve1", 100, IPFILTER_NET0).await.unwrap_err();
    assert!(err.is_not_found(), "{err:?}");
    assert!(!c.cluster_firewall_options().await.unwrap().enabled());

    c.create_vm_ipset("pve1", 100, IPFILTER_NET0, Some("only these"))
        .await
        .unwrap();
    let err = c
        .create_vm_ipset("pve1", 100, IPFILTER_NET0, None)
        .await
        .unwrap_err();
    // PVE says so as a parameter error on `name`.
    assert_eq!(err.kind(), ErrorKind::Validation, "{err:?}");
    assert!(
        err.field_errors().unwrap()["name"].contains("already exists"),
        "{err:?}"
    );
    for cidr in ["10.0.0.5/32", "2001:db8::5", "192.0.2.0/24"] {
        c.add_vm_ipset_entry("pve1", 100, IPFILTER_NET0, cidr, Some("x"))
            .await
            .unwrap();
    }
    let entries = c.vm_ipset("pve1", 100, IPFILTER_NET0).await.unwrap();
    let mut cidrs: Vec<&str> = entries.iter().map(|e| e.cidr.as_str()).collect();
    cidrs.sort_unstable();
    assert_eq!(cidrs, ["10.0.0.5", "192.0.2.0/24", "2001:db8::5"]);
    let hosts: Vec<_> = entries.iter().filter_map(|e| e.host()).collect();
    assert_eq!(hosts.len(), 2);
    // A network's `/` travels percent-encoded inside its path segment.
    c.delete_vm_ipset_entry("pve1", 100, IPFILTER_NET0, "192.0.2.0/24")
        .await
        .unwrap();
    c.delete_vm_ipset_entry("pve1", 100, IPFILTER_NET0, "10.0.0.5")
        .await
        .unwrap();
    let left = c.vm_ipset("pve1", 100, IPFILTER_NET0).await.unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].cidr, "2001:db8::5");
    let err = c
        .add_vm_ipset_entry("pve1", 100, IPFILTER_NET0, "not-an-address!", None)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Validation, "{err:?}");

    let want = FirewallOptions {
        enable: Some(true),
        ipfilter: Some(true),
        macfilter: Some(true),
        dhcp: Some(false),
        ndp: Some(true),
        radv: Some(false),
        policy_in: Some(FirewallPolicy::Accept),
        policy_out: Some(FirewallPolicy::Accept),
        digest: None,
    };
    c.set_vm_firewall_options("pve1", 100, &want).await.unwrap();
    let got = c.vm_firewall_options("pve1", 100).await.unwrap();
    assert_eq!(got.effective(), want.effective());
    assert_eq!(got.dhcp, Some(false), "explicit, not left to a default");
    assert!(got.digest.is_some());
    // Only what is set is sent: a partial update leaves the rest.
    let off = FirewallOptions {
        enable: Some(false),
        ..FirewallOptions::default()
    };
    c.set_vm_firewall_options("pve1", 100, &off).await.unwrap();
    let got = c.vm_firewall_options("pve1", 100).await.unwrap();
    assert_eq!(got.enable, Some(false));
    assert_eq!(got.ipfilter, Some(true));

    // PVE drops the VM's firewall with the VM.
    run(&c, c.delete_vm("pve1", 100, DeleteOptions::default()).await).await;
    let err = c.vm_ipset("pve1", 100, IPFILTER_NET0).await.unwrap_err();
    assert!(err.is_not_found(), "{err:?}");
    assert_eq!(
        c.vm_firewall_options("pve1", 100).await.unwrap().enable,
        None
    );
    let answers = pve.cmd(json!({"op": "error_answers"}));
    let refused = answers
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a[2] == 400)
        .count();
    assert_eq!(
        refused, 2,
        "only the duplicate set and the bad address failed PVE's schema: {answers}"
    );
}
