//! Admin commands over the chain, end to end in network namespaces: a "host"
//! namespace runs anvil (the chain), the root agent (as root) and blockhostd
//! (as uid 65534, unprivileged), with listeners on 22 and 8006; an "outside"
//! namespace is the admin's machine, where `bhctl admin knock` is run. The
//! daemon installs the default-deny firewall through the agent at start.
//!
//! Checked: closed before a knock; open after `bhctl admin knock` is mined (to
//! the admin's address only); closed again after the duration; a replayed, a
//! stale, a future-dated, another wallet's, an unknown-command and a garbage
//! transaction open nothing and each leaves its event and metric; with a knock
//! open, SIGKILL of blockhostd and of the agent still closes it on time; a
//! command sent while both were down is applied at catch-up.
//!
//! Needs root, `ip`, `nft`, `setpriv`, `curl` and anvil (`BLOCKHOST_ANVIL`, the
//! repository's node_modules, or PATH); skipped without them unless
//! `BLOCKHOST_REQUIRE_TOOLS=1`. Needs `cargo build -p bhctl -p
//! blockhost-root-agent` first. About 40 s, most of it waiting for knocks to
//! expire.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

mod common;
#[path = "../../agents/root-agent/tests/netns_support/mod.rs"]
mod netns_support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use blockhost_chain::rpc::RpcClient;
use k256::SecretKey;
use k256::elliptic_curve::sec1::ToEncodedPoint;
use netns_support::{ADMIN4, HOST4, Lab, OTHER4, in_netns};
use serde_json::{Value, json};

/// anvil dev account 5: the admin wallet (well-known test key, never a secret).
const ADMIN: &str = "0x9965507d1a55bcc2695c58ba16fb37d819b0a4dc";
const ADMIN_KEY: &str = "8b3a350cf5c34c9194ca85829a2df0ec3153be0318b5e2d3348e872092edffba";
/// anvil dev account 6: someone else.
const OTHER: &str = "0x976ea74026e726554db657fa54763abd0c3a0aa9";
/// anvil dev key 2 stands in for the server key.
const SERVER_KEY: &str = "5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a";
const COMMAND: &str = "open-sesame-7f3a";
const RPC_PORT: u16 = 8545;
/// A knock's duration in these tests, seconds.
const KNOCK_SECS: u64 = 4;
const FAIL: Duration = Duration::from_millis(500);
const OK: Duration = Duration::from_secs(3);

/// `BLOCKHOST_ANVIL`, else the repository's pinned anvil, else one on PATH
/// (`scripts/env.sh` puts the pinned one there).
fn anvil_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("BLOCKHOST_ANVIL") {
        return PathBuf::from(p);
    }
    let pinned = common::repo_root().join("node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil");
    if pinned.exists() {
        return pinned;
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join("anvil"))
        .find(|p| p.exists())
        .unwrap_or(pinned)
}

fn sibling(name: &str) -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_blockhostd")).with_file_name(name)
}

fn available() -> bool {
    if !netns_support::available() {
        return false;
    }
    let ok = anvil_bin().exists() && sibling("blockhost-root-agent").exists();
    if !ok {
        assert!(
            std::env::var("BLOCKHOST_REQUIRE_TOOLS").as_deref() != Ok("1"),
            "BLOCKHOST_REQUIRE_TOOLS=1 but anvil ({}) or the built root agent is missing; set BLOCKHOST_ANVIL, run `cargo build -p blockhost-root-agent`",
            anvil_bin().display()
        );
        eprintln!("skipped: needs anvil and the built root agent");
    }
    ok
}

fn server_public_hex() -> String {
    let k = SecretKey::from_slice(&hex::decode(SERVER_KEY).unwrap()).unwrap();
    hex::encode(k.public_key().to_encoded_point(false).as_bytes())
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
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

struct Rig {
    lab: Lab,
    dir: tempfile::TempDir,
    agent: u32,
    daemon: u32,
}

impl Rig {
    fn start() -> Rig {
        let mut lab = Lab::new();
        lab.listen(&[22, 8006]);
        let dir = tempfile::tempdir().expect("tempdir");
        let host = lab.host.clone();
        let anvil_log = std::fs::File::create(dir.path().join("anvil.log")).unwrap();
        lab.spawn(
            &host,
            anvil_bin().to_str().unwrap(),
            &[
                "--host",
                "0.0.0.0",
                "--port",
                &RPC_PORT.to_string(),
                "--silent",
                "--max-persisted-states",
                "0",
            ],
            anvil_log,
        );
        let mut rig = Rig {
            lab,
            dir,
            agent: 0,
            daemon: 0,
        };
        assert!(
            eventually(Duration::from_secs(20), || rig
                .rpc_try("eth_chainId", json!([]))
                .is_ok()),
            "anvil did not start"
        );
        rig.write_files();
        rig.agent = rig.start_agent();
        rig.daemon = rig.start_daemon();
        assert!(
            eventually(Duration::from_secs(20), || rig
                .firewall()
                .is_some_and(|f| f["inForce"] == true)),
            "the firewall was not installed; daemon log:\n{}\nagent log:\n{}",
            rig.log("daemon.log"),
            rig.log("agent.log")
        );
        rig
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.path(name)).unwrap_or_default()
    }

    fn write_files(&self) {
        use std::os::unix::fs::{PermissionsExt, chown};
        let d = self.dir.path();
        // blockhostd runs as 65534: it owns its state, its key and its socket.
        let state = self.path("state");
        std::fs::create_dir(&state).unwrap();
        std::fs::write(state.join("server.key"), SERVER_KEY).unwrap();
        std::fs::set_permissions(
            state.join("server.key"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        chown(&state, Some(65534), Some(65534)).unwrap();
        chown(state.join("server.key"), Some(65534), Some(65534)).unwrap();
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::write(
            self.path("root-agent.toml"),
            format!(
                "socket = {:?}\nsocketGroup = \"nogroup\"\nallowedUids = [65534]\n",
                self.path("root-agent.sock").display().to_string()
            ),
        )
        .unwrap();
        std::fs::write(self.path("blockhost.yaml"), self.config()).unwrap();
        std::fs::write(self.path("command"), COMMAND).unwrap();
        std::fs::write(self.path("other-command"), "not-the-command").unwrap();
    }

    fn config(&self) -> String {
        let state = self.path("state");
        format!(
            r#"store: {store}
api:
  socket: {api}
chain:
  chainId: 31337
  rpcUrls: ["http://127.0.0.1:{RPC_PORT}"]
  wsUrls: ["ws://127.0.0.1:{RPC_PORT}"]
  # No contract emits here: only admin commands are read in this test.
  subscriptionsContract: "0x00000000000000000000000000000000000000a1"
  nftContract: "0x00000000000000000000000000000000000000a2"
  confirmations: 0
  pollIntervalMs: 200
  serverKeyFile: {key}
firewall:
  publicTcpPorts: [{RPC_PORT}]
  knockTcpPorts: [22, 8006]
admin:
  wallet: "{ADMIN}"
  command: {COMMAND}
  allowedPorts: [22, 8006]
  defaultPorts: [22]
  defaultDurationSecs: {KNOCK_SECS}
rootAgent:
  socket: {agent}
"#,
            store = state.join("state.redb").display(),
            api = state.join("api.sock").display(),
            key = state.join("server.key").display(),
            agent = self.path("root-agent.sock").display(),
        )
    }

    fn start_agent(&mut self) -> u32 {
        let _ = std::fs::remove_file(self.path("root-agent.sock"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path("agent.log"))
            .unwrap();
        let host = self.lab.host.clone();
        let cfg = self.path("root-agent.toml");
        let pid = self.lab.spawn(
            &host,
            sibling("blockhost-root-agent").to_str().unwrap(),
            &["--config", cfg.to_str().unwrap()],
            log,
        );
        let sock = self.path("root-agent.sock");
        assert!(
            eventually(Duration::from_secs(10), || sock.exists()),
            "the agent did not start:\n{}",
            self.log("agent.log")
        );
        pid
    }

    fn start_daemon(&mut self) -> u32 {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path("daemon.log"))
            .unwrap();
        let host = self.lab.host.clone();
        let cfg = self.path("blockhost.yaml");
        let pid = self.lab.spawn(
            &host,
            "setpriv",
            &[
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "--",
                env!("CARGO_BIN_EXE_blockhostd"),
                "--config",
                cfg.to_str().unwrap(),
            ],
            log,
        );
        let sock = self.path("state").join("api.sock");
        assert!(
            eventually(Duration::from_secs(20), || {
                std::os::unix::net::UnixStream::connect(&sock).is_ok()
            }),
            "blockhostd did not start:\n{}",
            self.log("daemon.log")
        );
        pid
    }

    fn rpc_try(&self, method: &'static str, params: Value) -> Result<Value, String> {
        let url = format!("http://127.0.0.1:{RPC_PORT}");
        in_netns(&self.lab.host, move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                RpcClient::new(vec![url])
                    .unwrap()
                    .call(method, params)
                    .await
                    .map_err(|e| e.to_string())
            })
        })
    }

    /// Sends `data` from an unlocked dev account to the admin wallet; waits
    /// until mined. Returns the transaction hash.
    fn send(&self, from: &str, data: &[u8]) -> String {
        let tx = json!({"from": from, "to": ADMIN, "data": format!("0x{}", hex::encode(data))});
        let hash = self.rpc_try("eth_sendTransaction", json!([tx])).unwrap();
        assert!(
            eventually(OK, || self
                .rpc_try("eth_getTransactionReceipt", json!([hash.clone()]))
                .is_ok_and(|r| !r.is_null())),
            "not mined"
        );
        hash.as_str().unwrap().to_owned()
    }

    fn bhctl(&self, args: &[&str]) -> Output {
        Command::new(common::bhctl_bin())
            .args(args)
            .env("BLOCKHOST_SOCKET", self.path("state").join("api.sock"))
            .output()
            .unwrap()
    }

    fn firewall(&self) -> Option<Value> {
        let o = self.bhctl(&["firewall", "status", "-o", "json"]);
        o.status
            .success()
            .then(|| serde_json::from_slice(&o.stdout).unwrap())
    }

    /// `bhctl admin knock` on the admin's machine, key on stdin, `--wait`.
    fn knock(&self, extra: &[&str]) -> String {
        let mut args = vec![
            "netns".to_string(),
            "exec".into(),
            self.lab.out.clone(),
            common::bhctl_bin().display().to_string(),
            "admin".into(),
            "knock".into(),
            "--key-file".into(),
            "-".into(),
            "--command-file".into(),
            self.path("command").display().to_string(),
            "--server-public-key".into(),
            server_public_hex(),
            "--rpc-url".into(),
            format!("http://{HOST4}:{RPC_PORT}"),
            "--chain-id".into(),
            "31337".into(),
            "--wait".into(),
            "--timeout".into(),
            "20".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let o = common::output_with_stdin(
            Command::new("ip").args(&args).stdout(Stdio::piped()),
            Some(ADMIN_KEY),
        );
        assert!(
            o.status.success(),
            "bhctl admin knock: {}",
            common::stderr(&o)
        );
        common::stdout(&o).lines().next().unwrap().to_owned()
    }

    fn events(&self) -> Vec<Value> {
        let o = self.bhctl(&["get", "events", "--host", "-o", "json"]);
        assert!(o.status.success(), "{}", common::stderr(&o));
        let v: Value = serde_json::from_slice(&o.stdout).unwrap();
        v["items"].as_array().cloned().unwrap_or_default()
    }

    /// Waits for an event of `reason` naming `tx`.
    fn wait_event(&self, reason: &str, tx: &str) -> Value {
        let mut found = None;
        let ok = eventually(Duration::from_secs(10), || {
            found = self.events().into_iter().find(|e| {
                e["reason"] == reason && e["message"].as_str().unwrap_or("").contains(tx)
            });
            found.is_some()
        });
        assert!(
            ok,
            "no {reason} event for {tx}; events: {:#?}\ndaemon log:\n{}",
            self.events(),
            self.log("daemon.log")
        );
        found.unwrap()
    }

    fn reaches(&self, src: &str, port: u16, timeout: Duration) -> bool {
        self.lab.reaches(src, HOST4, port, timeout)
    }

    fn metrics(&self) -> String {
        let o = Command::new("curl")
            .args(["-s", "--unix-socket"])
            .arg(self.path("state").join("api.sock"))
            .arg("http://x/metrics")
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).into_owned()
    }
}

/// A command as the original writes it, encrypted to the server key.
fn command(name: &str, timestamp: i64, nonce: &str) -> Vec<u8> {
    let json = json!({"command": name, "params": {"ports": [22], "duration": KNOCK_SECS}, "nonce": nonce, "timestamp": timestamp});
    let server = SecretKey::from_slice(&hex::decode(SERVER_KEY).unwrap()).unwrap();
    blockhost_chain::admin::encrypt(&server.public_key(), json.to_string().as_bytes()).unwrap()
}

#[test]
fn knocks_over_the_chain_open_the_host_on_time_and_nothing_else_does() {
    if !available() {
        return;
    }
    let mut rig = Rig::start();
    for p in [22, 8006] {
        assert!(
            !rig.reaches(ADMIN4, p, FAIL),
            "port {p} open before a knock"
        );
    }

    // A knock for the admin's address only, both ports.
    let tx = rig.knock(&["--ports", "22,8006", "--source", ADMIN4]);
    rig.wait_event("KnockOpened", &tx);
    assert!(rig.reaches(ADMIN4, 22, OK), "22 not open after the knock");
    assert!(
        rig.reaches(ADMIN4, 8006, OK),
        "8006 not open after the knock"
    );
    assert!(!rig.reaches(OTHER4, 22, FAIL), "open to another address");
    let fw = rig.firewall().unwrap();
    let knocks = fw["knocks"].as_array().unwrap();
    assert_eq!(knocks.len(), 2, "{fw:#}");
    assert!(
        knocks.iter().all(|k| k["source"] == ADMIN4
            && k["timeoutSecs"] == KNOCK_SECS
            && k["expiresAt"].as_u64().unwrap() <= now() as u64 + KNOCK_SECS),
        "{fw:#}"
    );
    assert!(
        eventually(Duration::from_secs(KNOCK_SECS + 10), || !rig
            .reaches(ADMIN4, 22, FAIL)),
        "22 still open after the knock's duration"
    );

    // Hostile or mistaken transactions: each refused with its reason.
    let sent = rig
        .rpc_try("eth_getTransactionByHash", json!([tx]))
        .unwrap();
    let replayed = hex::decode(sent["input"].as_str().unwrap().trim_start_matches("0x")).unwrap();
    let t = now();
    let cases: Vec<(&str, &str, Vec<u8>)> = vec![
        ("Replayed", ADMIN, replayed),
        ("Stale", ADMIN, command(COMMAND, t - 400, "stale-1")),
        ("Future", ADMIN, command(COMMAND, t + 120, "future-1")),
        ("OtherWallet", OTHER, command(COMMAND, t, "other-1")),
        (
            "UnknownCommand",
            ADMIN,
            command("not-the-command", t, "unknown-1"),
        ),
        ("Undecryptable", ADMIN, b"garbage, not a command".to_vec()),
    ];
    for (reason, from, data) in cases {
        let h = rig.send(from, &data);
        let ev = rig.wait_event(reason, &h);
        assert_eq!(ev["type"], "Warning", "{ev}");
        assert!(!rig.reaches(ADMIN4, 22, FAIL), "{reason} opened 22");
    }
    let fw = rig.firewall().unwrap();
    assert_eq!(fw["knocks"], json!([]), "{fw:#}");
    let m = rig.metrics();
    for result in [
        "accepted",
        "replayed",
        "stale",
        "future",
        "other_wallet",
        "unknown_command",
        "undecryptable",
    ] {
        assert!(
            m.contains(&format!(
                "blockhost_admin_commands_total{{result=\"{result}\"}} 1"
            )),
            "{result}: {m}"
        );
    }

    // SIGKILL of both processes with a knock open: the kernel still closes it.
    let tx = rig.knock(&[]);
    rig.wait_event("KnockOpened", &tx);
    assert!(
        rig.reaches(ADMIN4, 22, OK),
        "22 not open after the second knock"
    );
    let (daemon, agent) = (rig.daemon, rig.agent);
    rig.lab.kill(daemon);
    rig.lab.kill(agent);
    assert!(
        eventually(Duration::from_secs(KNOCK_SECS + 10), || !rig
            .reaches(ADMIN4, 22, FAIL)),
        "22 still open after its duration with blockhostd and the agent killed"
    );

    // A command sent while both are down is applied when they are back.
    let tx = rig.send(ADMIN, &command(COMMAND, now(), "while-down-1"));
    rig.agent = rig.start_agent();
    rig.daemon = rig.start_daemon();
    rig.wait_event("KnockOpened", &tx);
    assert!(
        rig.reaches(ADMIN4, 22, OK),
        "the command sent while down was not applied"
    );
}

/// Benchmark (ignored by default; `--ignored --nocapture` prints the figures):
/// from an admin transaction being mined (anvil mines on send, so: when
/// `eth_sendTransaction` returns) to port 22 answering from the admin's
/// machine, over `BLOCKHOST_BENCH_KNOCKS` knocks (default 20) of 1 s each, with
/// new heads over WebSocket and 0 confirmations. Probes every ~20 ms.
#[test]
#[ignore = "benchmark: run with --ignored --nocapture"]
fn bench_mined_to_open() {
    if !available() {
        return;
    }
    let rig = Rig::start();
    let n: usize = std::env::var("BLOCKHOST_BENCH_KNOCKS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let probe = Duration::from_millis(20);
    let mut lat = Vec::with_capacity(n);
    for i in 0..n {
        let json = json!({"command": COMMAND, "params": {"ports": [22], "duration": 1}, "nonce": format!("bench-{i}"), "timestamp": now()});
        let server = SecretKey::from_slice(&hex::decode(SERVER_KEY).unwrap()).unwrap();
        let data =
            blockhost_chain::admin::encrypt(&server.public_key(), json.to_string().as_bytes())
                .unwrap();
        let tx = json!({"from": ADMIN, "to": ADMIN, "data": format!("0x{}", hex::encode(data))});
        rig.rpc_try("eth_sendTransaction", json!([tx])).unwrap();
        let mined = Instant::now();
        assert!(
            eventually(Duration::from_secs(10), || rig.reaches(ADMIN4, 22, probe)),
            "knock {i} did not open"
        );
        lat.push(mined.elapsed());
        assert!(
            eventually(Duration::from_secs(10), || !rig.reaches(ADMIN4, 22, probe)),
            "knock {i} did not close"
        );
    }
    lat.sort();
    let pct = |p: usize| lat[(lat.len() * p / 100).min(lat.len() - 1)];
    println!(
        "admin knock, mined -> port open ({n} knocks, new heads, 0 confirmations): p50 {:?}, p99 {:?}, max {:?}",
        pct(50),
        pct(99),
        lat[lat.len() - 1]
    );
}
