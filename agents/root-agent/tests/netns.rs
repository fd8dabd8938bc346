//! The root agent for real, in network namespaces: the built agent runs inside a
//! "host" namespace, applies the firewall there with the real `nft`, and a
//! connection from the "outside" namespace (the admin's machine) to listeners on
//! 22 and 8006 shows what the firewall lets through — before a knock, during it,
//! after it expired, after the agent was SIGKILLed — and that a caller with
//! another uid is refused.
//!
//! Needs root, `ip` and `nft` (skipped without them unless
//! `BLOCKHOST_REQUIRE_TOOLS=1`). About 25 s, most of it waiting for knocks to expire.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

mod netns_support;

use std::path::Path;
use std::time::{Duration, Instant};

use blockhost_crd::Vmid;
use blockhost_crd::config::FirewallConfig;
use blockhost_crd::config::firewall::Port;
use blockhost_root_agent::client::{ClientError, RootAgentClient};
use blockhost_root_agent::proto::{
    BridgePort, KnockAdd, KnockDuration, KnockPorts, KnockRemove, KnockSource, NetIndex,
};
use netns_support::{ADMIN4, ADMIN6, HOST4, HOST6, Lab, OTHER4, PORTS, available};

const FAIL: Duration = Duration::from_millis(600);
const OK: Duration = Duration::from_secs(3);

struct Agent {
    dir: tempfile::TempDir,
    client: RootAgentClient,
    pid: u32,
}

impl Agent {
    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }
}

fn start_agent(lab: &mut Lab, extra_config: &str) -> Agent {
    let dir = tempfile::tempdir().expect("tempdir");
    // Other uids must be able to reach the socket for the uid check to be what
    // stops them: the directory is traversable and the socket's group is theirs.
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod");
    let socket = dir.path().join("root-agent.sock");
    let config = dir.path().join("root-agent.toml");
    std::fs::write(
        &config,
        format!(
            "socket = {:?}\nallowedUids = [0]\n{extra_config}\n",
            socket.display().to_string()
        ),
    )
    .expect("config");
    let log = std::fs::File::create(dir.path().join("agent.log")).expect("log");
    let pid = lab.spawn(
        &lab.host.clone(),
        env!("CARGO_BIN_EXE_blockhost-root-agent"),
        &["--config", config.to_str().expect("utf-8")],
        log,
    );
    wait_for(&socket);
    Agent {
        client: RootAgentClient::new(&socket),
        dir,
        pid,
    }
}

fn wait_for(socket: &Path) {
    let t = Instant::now();
    while !socket.exists() {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the agent did not bind {socket:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn knock(source: Option<&str>, ports: &[u16], secs: u32) -> KnockAdd {
    KnockAdd {
        source: source.map(|s| KnockSource::new(s.parse().expect("ip")).expect("source")),
        ports: KnockPorts::new(ports.iter().map(|p| Port::new(*p).expect("port")).collect())
            .expect("ports"),
        duration_secs: KnockDuration::new(secs).expect("secs"),
    }
}

fn firewall() -> FirewallConfig {
    serde_json::from_str(r#"{"publicTcpPorts": [443]}"#).expect("config")
}

/// Waits until `cond` holds (polling), up to `limit`.
fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let t = Instant::now();
    loop {
        if cond() {
            return true;
        }
        if t.elapsed() > limit {
            return false;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn knock_opens_for_its_source_only_and_closes_on_time() {
    if !available() {
        return;
    }
    let mut lab = Lab::new();
    lab.listen(&[22, 8006, 443, 9999]);
    // Without a firewall everything answers: the listeners work.
    for p in [22, 8006, 443, 9999] {
        assert!(
            lab.reaches(ADMIN4, HOST4, p, OK),
            "port {p} without firewall"
        );
    }
    let agent = start_agent(&mut lab, "");
    let rt = rt();
    let applied = rt
        .block_on(agent.client.apply_firewall(&firewall()))
        .expect("apply");
    assert!(applied.knocks_kept);
    let status = rt
        .block_on(agent.client.verify_firewall(&firewall()))
        .expect("verify");
    assert!(status.in_force, "{:?}", status.problems);
    assert!(status.ruleset.contains("policy drop"), "{}", status.ruleset);

    // Closed by default; the public page stays open; unlisted ports are closed.
    for p in PORTS {
        assert!(
            !lab.reaches(ADMIN4, HOST4, p, FAIL),
            "port {p} open before a knock"
        );
        assert!(
            !lab.reaches(ADMIN6, HOST6, p, FAIL),
            "port {p} open over IPv6 before a knock"
        );
    }
    assert!(lab.reaches(ADMIN4, HOST4, 443, OK));
    assert!(lab.reaches(ADMIN6, HOST6, 443, OK));
    assert!(!lab.reaches(ADMIN4, HOST4, 9999, FAIL));

    // A knock for the admin's IPv4 and IPv6 addresses, 22 only, 4 s.
    let opened = Instant::now();
    rt.block_on(agent.client.knock_add(&knock(Some(ADMIN4), &[22], 4)))
        .expect("knock v4");
    rt.block_on(agent.client.knock_add(&knock(Some(ADMIN6), &[22], 4)))
        .expect("knock v6");
    assert!(
        lab.reaches(ADMIN4, HOST4, 22, OK),
        "22 closed during the knock"
    );
    assert!(
        lab.reaches(ADMIN6, HOST6, 22, OK),
        "22 closed over IPv6 during the knock"
    );
    assert!(
        !lab.reaches(OTHER4, HOST4, 22, FAIL),
        "22 open to another source"
    );
    assert!(
        !lab.reaches(ADMIN4, HOST4, 8006, FAIL),
        "8006 open without a knock for it"
    );
    // A knock for a port outside knockTcpPorts opens nothing.
    rt.block_on(agent.client.knock_add(&knock(Some(ADMIN4), &[9999], 4)))
        .expect("knock 9999");
    assert!(
        !lab.reaches(ADMIN4, HOST4, 9999, FAIL),
        "a knock opened a port outside the allowlist"
    );

    // The status lists them with their remaining time; re-applying keeps them.
    let status = rt
        .block_on(agent.client.verify_firewall(&firewall()))
        .expect("verify");
    let k22: Vec<_> = status.knocks.iter().filter(|k| k.port == 22).collect();
    assert_eq!(k22.len(), 2, "{:?}", status.knocks);
    assert!(
        k22.iter()
            .all(|k| k.timeout_secs == 4 && k.expires_secs <= 4),
        "{k22:?}"
    );
    let applied = rt
        .block_on(agent.client.apply_firewall(&firewall()))
        .expect("re-apply");
    assert!(applied.knocks_kept);
    assert!(
        lab.reaches(ADMIN4, HOST4, 22, OK),
        "re-apply closed the knock"
    );

    // Closed again once the time is up (the kernel's timeout, nothing else).
    assert!(
        eventually(Duration::from_secs(8), || !lab
            .reaches(ADMIN4, HOST4, 22, FAIL)),
        "22 still open 8 s after a 4 s knock"
    );
    assert!(
        opened.elapsed() >= Duration::from_secs(3),
        "closed too early: {:?}",
        opened.elapsed()
    );
    assert!(
        !lab.reaches(ADMIN6, HOST6, 22, FAIL),
        "22 still open over IPv6 after the knock"
    );
    let status = rt
        .block_on(agent.client.verify_firewall(&firewall()))
        .expect("verify");
    assert!(
        status.knocks.iter().all(|k| k.port != 22),
        "{:?}",
        status.knocks
    );

    // knock-remove closes early.
    rt.block_on(agent.client.knock_add(&knock(None, &[8006], 60)))
        .expect("knock any");
    assert!(
        lab.reaches(OTHER4, HOST4, 8006, OK),
        "any-source knock did not open"
    );
    let rm = KnockRemove {
        source: None,
        ports: KnockPorts::new(vec![Port::new(8006).expect("port")]).expect("ports"),
    };
    rt.block_on(agent.client.knock_remove(&rm)).expect("remove");
    rt.block_on(agent.client.knock_remove(&rm))
        .expect("removing twice is fine");
    assert!(
        !lab.reaches(OTHER4, HOST4, 8006, FAIL),
        "removed knock still open"
    );
}

#[test]
fn sigkilled_agent_leaves_no_port_open() {
    if !available() {
        return;
    }
    let mut lab = Lab::new();
    lab.listen(&PORTS);
    let agent = start_agent(&mut lab, "");
    let rt = rt();
    rt.block_on(agent.client.apply_firewall(&FirewallConfig::default()))
        .expect("apply");
    rt.block_on(agent.client.knock_add(&knock(None, &[22, 8006], 3)))
        .expect("knock");
    assert!(lab.reaches(ADMIN4, HOST4, 22, OK));
    lab.kill(agent.pid);
    assert!(
        lab.reaches(ADMIN4, HOST4, 8006, OK),
        "the knock should outlive the agent"
    );
    assert!(
        eventually(Duration::from_secs(7), || {
            !lab.reaches(ADMIN4, HOST4, 22, FAIL) && !lab.reaches(ADMIN4, HOST4, 8006, FAIL)
        }),
        "ports still open 7 s after a 3 s knock whose agent was killed"
    );
    // The firewall itself stays in force without the agent.
    assert!(
        lab.exec(&lab.host, &["nft", "list", "table", "inet", "blockhost"])
            .contains("policy drop")
    );
}

#[test]
fn callers_with_other_uids_are_refused_and_requests_are_checked() {
    if !available() {
        return;
    }
    let mut lab = Lab::new();
    let agent = start_agent(&mut lab, "socketGroup = \"nogroup\"");
    let socket = agent.client.socket().to_path_buf();
    // uid 65534 (nobody, group nogroup) can open the socket but is not allowed.
    let answer = as_nobody(
        &socket,
        br#"{"action":"knock-add","params":{"ports":[22],"durationSecs":60}}"#,
    );
    assert!(
        answer.contains(r#""ok":false"#) && answer.contains("uid 65534"),
        "{answer}"
    );
    assert!(
        eventually(Duration::from_secs(3), || agent
            .log()
            .contains("refused a caller")),
        "refusal not logged: {}",
        agent.log()
    );
    let rt = rt();
    // Nothing was opened for it.
    rt.block_on(agent.client.apply_firewall(&FirewallConfig::default()))
        .expect("apply");
    let status = rt
        .block_on(agent.client.verify_firewall(&FirewallConfig::default()))
        .expect("verify");
    assert!(status.knocks.is_empty(), "{:?}", status.knocks);

    // Unknown actions, bad parameters and oversized frames are refused with a reason.
    for (body, want) in [
        (
            &br#"{"action":"guest-exec","params":{"cmd":"id"}}"#[..],
            "unknown variant",
        ),
        (
            br#"{"action":"knock-add","params":{"ports":[22],"durationSecs":0}}"#,
            "1 to 3600",
        ),
        (br#"not json"#, "invalid request"),
    ] {
        match rt.block_on(agent.client.call_raw(body)) {
            Err(ClientError::Refused(why)) => assert!(why.contains(want), "{why}"),
            other => panic!("{}: {other:?}", String::from_utf8_lossy(body)),
        }
    }
    let big = vec![b' '; 70 * 1024];
    match rt.block_on(agent.client.call_raw(&big)) {
        Err(ClientError::Refused(why)) => assert!(why.contains("over the"), "{why}"),
        other => panic!("oversized: {other:?}"),
    }

    // A caller that sends nothing holds only its own connection: another request
    // is answered at once, and the silent one is dropped after the read timeout.
    let silent = std::os::unix::net::UnixStream::connect(&socket).expect("connect");
    let t = Instant::now();
    rt.block_on(agent.client.verify_firewall(&FirewallConfig::default()))
        .expect("verify");
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "blocked behind a silent caller: {:?}",
        t.elapsed()
    );
    silent
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut buf = [0u8; 16];
    let n = std::io::Read::read(&mut &silent, &mut buf).unwrap_or(0);
    assert_eq!(n, 0, "the silent connection should be closed");
}

/// Sends one framed request as uid/gid 65534 (through python3, which is there for
/// fakepve anyway) and returns the answer body.
fn as_nobody(socket: &Path, body: &[u8]) -> String {
    use std::os::unix::process::CommandExt;
    let script = r#"
import socket, struct, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(sys.argv[1])
b = sys.argv[2].encode()
try:
    s.sendall(struct.pack(">I", len(b)) + b)
except BrokenPipeError:
    pass  # refused before reading: the answer is already there
h = s.recv(4, socket.MSG_WAITALL)
n = struct.unpack(">I", h)[0]
print(s.recv(n, socket.MSG_WAITALL).decode())
"#;
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            script,
            socket.to_str().expect("utf-8"),
            std::str::from_utf8(body).expect("utf-8"),
        ])
        .uid(65534)
        .gid(65534)
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn drift_is_reported_and_repaired() {
    if !available() {
        return;
    }
    let mut lab = Lab::new();
    lab.listen(&[22]);
    let agent = start_agent(&mut lab, "");
    let rt = rt();
    let c = FirewallConfig::default();
    rt.block_on(agent.client.apply_firewall(&c)).expect("apply");
    lab.exec(
        &lab.host,
        &[
            "nft",
            "insert",
            "rule",
            "inet",
            "blockhost",
            "input",
            "tcp",
            "dport",
            "22",
            "accept",
        ],
    );
    assert!(lab.reaches(ADMIN4, HOST4, 22, OK));
    let status = rt
        .block_on(agent.client.verify_firewall(&c))
        .expect("verify");
    assert!(!status.in_force);
    assert!(
        status
            .problems
            .iter()
            .any(|p| p.contains("chain input differs")),
        "{:?}",
        status.problems
    );
    // A configuration change is drift too.
    let other: FirewallConfig = serde_json::from_str(r#"{"knockTcpPorts":[22]}"#).expect("config");
    rt.block_on(agent.client.apply_firewall(&c))
        .expect("re-apply");
    assert!(
        rt.block_on(agent.client.verify_firewall(&c))
            .expect("verify")
            .in_force
    );
    assert!(
        !rt.block_on(agent.client.verify_firewall(&other))
            .expect("verify")
            .in_force
    );
    assert!(
        !lab.reaches(ADMIN4, HOST4, 22, FAIL),
        "the stray rule survived re-apply"
    );
    // A hand-made table that cannot be updated in place is rebuilt.
    lab.exec(&lab.host, &["nft", "delete", "table", "inet", "blockhost"]);
    lab.exec(&lab.host, &["nft", "add", "table", "inet", "blockhost"]);
    lab.exec(
        &lab.host,
        &[
            "nft",
            "add",
            "set",
            "inet",
            "blockhost",
            "knock4",
            "{ type ipv4_addr; }",
        ],
    );
    let applied = rt
        .block_on(agent.client.apply_firewall(&c))
        .expect("rebuild");
    assert!(!applied.knocks_kept);
    assert!(
        rt.block_on(agent.client.verify_firewall(&c))
            .expect("verify")
            .in_force
    );
}

#[test]
fn bridge_ports_are_isolated() {
    if !available() {
        return;
    }
    let mut lab = Lab::new();
    let host = lab.host.clone();
    lab.ip(&host, &["link", "add", "vmbr0", "type", "bridge"]);
    lab.ip(&host, &["tuntap", "add", "dev", "tap100i0", "mode", "tap"]);
    lab.ip(&host, &["link", "set", "tap100i0", "master", "vmbr0"]);
    // Behind a Proxmox VM firewall the VM's port on vmbr0 is fwpr<vmid>p<n>.
    lab.ip(
        &host,
        &[
            "link",
            "add",
            "fwpr101p0",
            "type",
            "veth",
            "peer",
            "name",
            "fwln101i0",
        ],
    );
    lab.ip(&host, &["link", "set", "fwpr101p0", "master", "vmbr0"]);
    lab.ip(&host, &["tuntap", "add", "dev", "tap102i0", "mode", "tap"]);
    let agent = start_agent(&mut lab, "");
    let rt = rt();
    let port = |vmid, isolated| BridgePort {
        vmid: Vmid::new(vmid).expect("vmid"),
        net: NetIndex::new(0).expect("net"),
        isolated,
    };
    let r = rt
        .block_on(agent.client.isolate_port(&port(100, true)))
        .expect("isolate 100");
    assert_eq!((r.interface.as_str(), r.isolated), ("tap100i0", true));
    assert_eq!(r.was_isolated, Some(false), "a new port starts shared");
    assert!(
        lab.ip(&host, &["-d", "link", "show", "tap100i0"])
            .contains("isolated on")
    );
    let r = rt
        .block_on(agent.client.isolate_port(&port(100, true)))
        .expect("isolate 100 again");
    assert_eq!(
        r.was_isolated,
        Some(true),
        "the kernel's flag, read before setting"
    );
    let r = rt
        .block_on(agent.client.isolate_port(&port(101, true)))
        .expect("isolate 101");
    assert_eq!(r.interface, "fwpr101p0");
    let r = rt
        .block_on(agent.client.isolate_port(&port(100, false)))
        .expect("un-isolate");
    assert!(!r.isolated);
    assert!(
        lab.ip(&host, &["-d", "link", "show", "tap100i0"])
            .contains("isolated off")
    );
    match rt.block_on(agent.client.isolate_port(&port(102, true))) {
        Err(ClientError::Refused(why)) => assert!(why.contains("not a bridge port"), "{why}"),
        other => panic!("{other:?}"),
    }
    match rt.block_on(agent.client.isolate_port(&port(999, true))) {
        Err(ClientError::Refused(why)) => assert!(why.contains("no interface net0"), "{why}"),
        other => panic!("{other:?}"),
    }
}
