//! The signing service's HTTP API and hand-off socket, driven directly: sessions
//! appear only while a module connection holds them, a wrong signature is refused
//! (and five drop the session), a right one reaches the module once, security
//! headers are set, and clients are rate-limited. HTTP via curl (TLS, self-signed).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};

use support::*;

struct Signer {
    dir: tempfile::TempDir,
    port: u16,
    _proc: Guard,
}

impl Signer {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let child = Command::new(bin("blockhost-signer"))
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .arg("--socket")
            .arg(dir.path().join("s.sock"))
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let s = Self {
            dir,
            port,
            _proc: Guard(child),
        };
        wait_for_port(port, "blockhost-signer");
        s
    }

    /// (status, headers+body) of a curl request.
    fn curl(&self, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
        let mut c = Command::new("curl");
        c.args(["-k", "-s", "-i", "--max-time", "10", "-X", method])
            .arg(format!("https://127.0.0.1:{}{path}", self.port));
        if let Some(b) = body {
            c.args(["--data-binary", b]);
        }
        let out = c.output().expect("curl is installed (scripts/setup.sh)");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let code = text
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        (code, text)
    }

    fn register(&self, msg: &str, session: &str) -> UnixStream {
        let mut s = UnixStream::connect(self.dir.path().join("s.sock")).unwrap();
        let reg = pam_blockhost::handoff::Register {
            session: session.into(),
            message: msg.into(),
            expires_at: chrono::Utc::now().timestamp() + 300,
        };
        writeln!(s, "{}", serde_json::to_string(&reg).unwrap()).unwrap();
        s
    }
}

fn message() -> String {
    let now = chrono::Utc::now();
    pam_blockhost::siwe::SiweMessage {
        domain: "blockhost-007".into(),
        address: WALLET0.parse().unwrap(),
        statement: "Log in to blockhost-007 as Unix user alice (SSH).".into(),
        uri: "ssh://alice@blockhost-007".into(),
        chain_id: 31337,
        nonce: pam_blockhost::handoff::new_session_id(),
        issued_at: now,
        expiration_time: now + chrono::Duration::minutes(5),
    }
    .to_text()
}

/// Polls until `path` answers `want` (the registration is processed asynchronously).
fn eventually(s: &Signer, path: &str, want: u16) {
    for _ in 0..100 {
        if s.curl("GET", path, None).0 == want {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    panic!("{path} never answered {want}");
}

#[test]
fn sessions_signatures_and_headers() {
    require_root(); // the hand-off socket accepts root peers only
    let s = Signer::start();
    let dir = tempfile::tempdir().unwrap();
    let mn = mnemonic_file(dir.path());

    let (code, page) = s.curl("GET", "/", None);
    assert_eq!(code, 200);
    assert!(
        page.to_lowercase()
            .contains("content-security-policy: default-src 'none'"),
        "{page}"
    );
    assert_eq!(
        s.curl("GET", &format!("/api/session/{}", "0".repeat(32)), None)
            .0,
        404
    );
    assert_eq!(s.curl("GET", "/api/session/not-an-id", None).0, 404);

    // A session lives while its module connection does.
    let msg = message();
    let id = pam_blockhost::handoff::new_session_id();
    let module = s.register(&msg, &id);
    let path = format!("/api/session/{id}");
    eventually(&s, &path, 200);
    assert!(s.curl("GET", &path, None).1.contains("Expiration Time"));
    drop(module);
    eventually(&s, &path, 404);

    // Wrong signer: 422, session kept; right signer: delivered once.
    let id = pam_blockhost::handoff::new_session_id();
    let path = format!("/api/session/{id}");
    let module = s.register(&msg, &id);
    eventually(&s, &path, 200);
    assert_eq!(s.curl("POST", &path, Some(&cast_sign(&mn, 1, &msg))).0, 422);
    assert_eq!(s.curl("POST", &path, Some("garbage")).0, 400);
    let good = cast_sign(&mn, 0, &msg);
    assert_eq!(s.curl("POST", &path, Some(&good)).0, 204);
    assert_eq!(s.curl("POST", &path, Some(&good)).0, 404, "one-shot");
    let mut line = String::new();
    BufReader::new(&module).read_line(&mut line).unwrap();
    let d: pam_blockhost::handoff::Delivered = serde_json::from_str(&line).unwrap();
    assert_eq!(d.signature, good);

    // Five wrong signatures end the session; the module sees the connection close.
    let id = pam_blockhost::handoff::new_session_id();
    let path = format!("/api/session/{id}");
    let module = s.register(&msg, &id);
    eventually(&s, &path, 200);
    let bad = cast_sign(&mn, 1, &msg);
    for _ in 0..5 {
        assert_eq!(s.curl("POST", &path, Some(&bad)).0, 422);
    }
    assert_eq!(s.curl("GET", &path, None).0, 404);
    let mut rest = String::new();
    assert_eq!(
        BufReader::new(&module).read_line(&mut rest).unwrap(),
        0,
        "closed without a signature"
    );

    // A registration that is not a sign-in message is ignored.
    let id = pam_blockhost::handoff::new_session_id();
    let _junk = s.register("sign this transaction", &id);
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert_eq!(s.curl("GET", &format!("/api/session/{id}"), None).0, 404);
}

#[test]
fn clients_are_rate_limited() {
    let s = Signer::start();
    let codes: Vec<u16> = (0..65).map(|_| s.curl("GET", "/app.js", None).0).collect();
    assert!(codes[..60].iter().all(|&c| c == 200), "{codes:?}");
    assert_eq!(codes[64], 429);
}

#[test]
fn the_certificate_is_made_once_and_kept() {
    let s = Signer::start();
    let state = s.dir.path().join("state");
    let cert = std::fs::read(state.join("cert.pem")).unwrap();
    assert!(String::from_utf8_lossy(&cert).starts_with("-----BEGIN CERTIFICATE-----"));
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(state.join("key.pem"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    // A restart with the same state directory serves the same certificate, so a
    // browser exception the user accepted stays valid.
    let Signer { dir, _proc, .. } = s;
    drop(_proc);
    let port = free_port();
    let _again = Guard(
        Command::new(bin("blockhost-signer"))
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .arg("--socket")
            .arg(dir.path().join("s2.sock"))
            .arg("--state-dir")
            .arg(&state)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for_port(port, "blockhost-signer (restarted)");
    assert_eq!(std::fs::read(state.join("cert.pem")).unwrap(), cert);
}
