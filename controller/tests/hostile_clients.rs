//! A real `blockhostd` under hostile clients, on loopback (127.0.111.x):
//! hundreds of idle HTTP/2 connections against the signup page and idle TCP
//! connections against the metrics listener, with the daemon's open-file
//! limit lowered to 300 — afterwards a status request and `bhctl get vms`
//! still answer within a second, and the idle connections are cut. Also: a
//! regular file at the socket path survives a start, and hostile label text
//! reaches `bhctl describe` escaped while `-o json` keeps it exact; a flood
//! over the metrics listener's cap shows in `/metrics` as refused connections
//! of `listener="metrics"`.
//!
//! Needs no outside tools (no chain is reached: the RPC URL is dead). About
//! 15 s in all.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Daemon, stderr, stdout};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::{TokioExecutor, TokioIo};

/// anvil's first dev key (never a real one).
const SERVER_KEY: &str = "ac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80";
const PAGE: &str = "127.0.111.1:18711";
const METRICS: &str = "127.0.111.1:18712";
/// The daemon's open-file limit in the flood test: without caps, 400
/// connections exhaust it.
const NOFILE: u64 = 300;
const IDLE_SECS: u64 = 5;

fn write_config(dir: &Path) {
    let key = dir.join("server.key");
    std::fs::write(&key, format!("0x{SERVER_KEY}\n")).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::write(
        dir.join("blockhost.yaml"),
        format!(
            "metrics:\n  listen: {METRICS}\nchain:\n  chainId: 31337\n  rpcUrls: [\"http://127.0.111.1:9\"]\n  subscriptionsContract: \"0x5fbdb2315678afecb367f032d93f642f64180aa3\"\n  nftContract: \"0xe7f1725e7734ce288f8367e1bb143e90bb3f0512\"\n  serverKeyFile: {}\nsignup:\n  listen: {PAGE}\n  statusRequestsPerMinute: 10000\n  connections:\n    perClient: 1000\n    idleTimeoutSecs: {IDLE_SECS}\n",
            key.display()
        ),
    )
    .unwrap();
}

/// Lowers the child's `RLIMIT_NOFILE` (soft and hard) before it runs.
fn lowered_nofile(cmd: &mut Command) {
    // SAFETY: setrlimit is async-signal-safe; the closure touches nothing else.
    unsafe {
        cmd.pre_exec(|| {
            let lim = libc::rlimit {
                rlim_cur: NOFILE,
                rlim_max: NOFILE,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

type Sender = hyper::client::conn::http2::SendRequest<Empty<Bytes>>;

/// An HTTP/2 (prior knowledge) connection that made one request; its driver
/// task ends when the server closes the connection.
async fn h2_get(
    addr: SocketAddr,
    path: &str,
) -> Result<(Sender, tokio::task::JoinHandle<()>, u16), String> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .map_err(|e| e.to_string())?;
    let driver = tokio::spawn(async move {
        let _ = conn.await;
    });
    let status = get(&mut send, path).await?;
    Ok((send, driver, status))
}

async fn get(send: &mut Sender, path: &str) -> Result<u16, String> {
    let req = hyper::Request::get(format!("http://{PAGE}{path}"))
        .body(Empty::new())
        .unwrap();
    let resp = send.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    resp.into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?;
    Ok(status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_http2_flood_under_a_low_nofile_leaves_status_and_bhctl_answering() {
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path());
    let d = Daemon::start_configured(dir.path(), &[], lowered_nofile);
    let page: SocketAddr = PAGE.parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while h2_get(page, "/config.json").await.is_err() {
        assert!(
            Instant::now() < deadline,
            "the page never served; log:\n{}",
            d.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // 400 HTTP/2 clients: one status request each, then idle.
    let mut open = Vec::new();
    let mut refused = 0;
    for _ in 0..400 {
        let attempt = tokio::time::timeout(
            Duration::from_secs(2),
            h2_get(page, "/api/v1/subscriptions/7"),
        )
        .await;
        match attempt {
            Ok(Ok((send, driver, 200))) => open.push((send, driver)),
            Ok(Ok((_, _, status))) => panic!("status {status}; log:\n{}", d.log()),
            Ok(Err(_)) => refused += 1,
            Err(_) => panic!("a connection over the cap hangs instead of being refused"),
        }
    }
    // 100 idle TCP connections on the metrics listener.
    let mut idle_metrics = Vec::new();
    for _ in 0..100 {
        if let Ok(s) = tokio::net::TcpStream::connect(METRICS).await {
            idle_metrics.push(s);
        }
    }
    assert!(refused > 0, "no connection was refused");
    assert!(open.len() >= 50, "only {} served", open.len());
    let cap = usize::try_from(NOFILE).unwrap();
    assert!(
        open.len() < cap,
        "{} open under nofile {NOFILE}",
        open.len()
    );

    // The operator still gets in, and an open connection still answers.
    let started = Instant::now();
    let socket = d.socket.clone();
    let o = tokio::task::spawn_blocking(move || common::bhctl(&socket, &["get", "vms"], None))
        .await
        .unwrap();
    let took = started.elapsed();
    assert!(
        o.status.success(),
        "bhctl failed: {}\n{}",
        stderr(&o),
        d.log()
    );
    assert!(took < Duration::from_secs(1), "bhctl took {took:?}");
    let started = Instant::now();
    let status = tokio::time::timeout(
        Duration::from_secs(1),
        get(&mut open[0].0, "/api/v1/subscriptions/7"),
    )
    .await
    .expect("a status request on an open connection took over a second");
    assert_eq!(status, Ok(200));
    assert!(started.elapsed() < Duration::from_secs(1));
    let log = d.log();
    assert!(log.contains("connection limit reached"), "{log}");
    assert!(log.contains("caps lowered to fit"), "{log}");

    // Idle, they are cut (GOAWAY, then closed): every driver ends.
    let deadline = Instant::now() + Duration::from_secs(IDLE_SECS + 5);
    for (_, driver) in open.drain(..) {
        let left = deadline.saturating_duration_since(Instant::now());
        tokio::time::timeout(left, driver)
            .await
            .expect("an idle HTTP/2 connection was never closed")
            .unwrap();
    }
    // A newcomer is served again.
    let (_, _, status) = h2_get(page, "/api/v1/subscriptions/7").await.unwrap();
    assert_eq!(status, 200);
    drop(idle_metrics);
}

#[test]
fn a_regular_file_at_the_socket_path_survives_a_start() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("api.sock");
    std::fs::write(&sock, "not a socket: keep me\n").unwrap();
    std::fs::write(dir.path().join("blockhost.yaml"), "# defaults\n").unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_blockhostd"))
        .arg("--store")
        .arg(dir.path().join("state.redb"))
        .arg("--socket")
        .arg(&sock)
        .env("BLOCKHOST_CONFIG", dir.path().join("blockhost.yaml"))
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("blockhostd started on a path holding a regular file");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!status.success());
    assert!(err.contains("regular file, not a socket"), "{err}");
    assert_eq!(
        std::fs::read_to_string(&sock).unwrap(),
        "not a socket: keep me\n"
    );
    // No colours: stderr is not a terminal.
    assert!(!err.contains('\u{1b}'), "{err:?}");
}

#[test]
fn hostile_label_text_reaches_describe_escaped_and_json_exact() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path());
    // Title-set, clear-screen, colour, CR/LF and a bidi override.
    let yaml = "apiVersion: blockhost.io/v1alpha1\nkind: VirtualMachine\nmetadata:\n  name: hostile\n  labels:\n    note: \"\\e]0;pwned\\a\\e[2J\\e[31mred\\r\\nFake: line \\u202Etxt.exe\"\nspec:\n  owner: \"0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266\"\n  resources:\n    cores: 1\n    memoryMiB: 1024\n    diskGiB: 10\n";
    let o = common::bhctl(&d.socket, &["apply", "-f", "-"], Some(yaml));
    assert!(o.status.success(), "{}", stderr(&o));
    let o = d.bhctl(&["describe", "vm", "hostile"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let shown = stdout(&o);
    assert!(
        !shown.contains('\u{1b}') && !shown.contains('\r') && !shown.contains('\u{202e}'),
        "{shown:?}"
    );
    assert!(
        shown.contains(
            "note=\\u{1b}]0;pwned\\u{7}\\u{1b}[2J\\u{1b}[31mred\\r\\nFake: line \\u{202e}txt.exe"
        ),
        "{shown}"
    );
    assert!(!shown.lines().any(|l| l.starts_with("Fake:")), "{shown}");
    let o = d.bhctl(&["get", "vm", "hostile", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(
        v["metadata"]["labels"]["note"],
        "\u{1b}]0;pwned\u{7}\u{1b}[2J\u{1b}[31mred\r\nFake: line \u{202e}txt.exe"
    );
}

/// One listener's value of a `blockhost_listener_connections_*` metric in the
/// daemon's `/metrics`, read over the API socket.
fn listener_metric(socket: &Path, metric: &str, listener: &str) -> Option<u64> {
    let o = Command::new("curl")
        .args(["-sf", "--unix-socket", socket.to_str().unwrap()])
        .arg("http://blockhostd/metrics")
        .output()
        .expect("curl is needed (scripts/setup.sh installs it)");
    let prefix = format!("blockhost_listener_connections_{metric}{{listener=\"{listener}\"}} ");
    stdout(&o)
        .lines()
        .find_map(|l| l.strip_prefix(&prefix)?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_refused_over_a_cap_are_counted_in_metrics_per_listener() {
    const ADDR: &str = "127.0.111.1:18713";
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("blockhost.yaml"),
        format!("metrics:\n  listen: {ADDR}\n  connections:\n    max: 4\n"),
    )
    .unwrap();
    let d = Daemon::start(dir.path());
    let refused = || listener_metric(&d.socket, "refused_total", "metrics");
    assert_eq!(
        refused(),
        Some(0),
        "exported before any refusal; log:\n{}",
        d.log()
    );
    assert!(listener_metric(&d.socket, "accepted_total", "api").is_some());
    // Twelve idle clients against a cap of four: eight closed on arrival.
    let mut held = Vec::new();
    for _ in 0..12 {
        held.push(tokio::net::TcpStream::connect(ADDR).await.unwrap());
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while refused() < Some(8) {
        assert!(Instant::now() < deadline, "refused: {:?}", refused());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(refused(), Some(8));
    assert_eq!(listener_metric(&d.socket, "open", "metrics"), Some(4));
    assert_eq!(
        listener_metric(&d.socket, "accepted_total", "metrics"),
        Some(4)
    );
    drop(held);
    // No chain configured: `bhctl status` has no condition to show.
    let o = d.bhctl(&["status"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "Conditions:\n  <none>\n");
    let o = d.bhctl(&["status", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["conditions"], serde_json::json!([]));
}
