//! Every log line the client and its HTTP/TLS stack write at TRACE level, captured while it
//! logs in, renews, retries and fails: none may contain the token secret, the password or a
//! ticket. Its own test binary, because it installs a global subscriber (and the `log` bridge
//! for rustls).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};

use blockhost_pve::{
    ClientConfig, CloneRequest, ConfigUpdate, Credentials, ManualClock, Pve, PveClient, TlsMode,
    WaitOptions,
};
use common::FakePve;
use serde_json::json;

#[derive(Clone)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn no_secret_reaches_the_logs() {
    let buf = Arc::new(Mutex::new(Vec::new()));
    let sink = Capture(buf.clone());
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || sink.clone())
        .try_init()
        .expect("this binary's only subscriber");

    let mut pve = FakePve::start(&[]);
    // Token auth, including failures whose errors get logged by callers.
    let c = pve.client();
    let upid = c
        .clone_vm("pve1", 9001, &CloneRequest::full(100))
        .await
        .unwrap();
    c.wait_task(&upid, WaitOptions::default()).await.unwrap();
    let err = c
        .set_vm_config("pve1", 100, &ConfigUpdate::new().set("cores", "x"))
        .await
        .unwrap_err();
    tracing::error!(error = %err, debug = ?err, "as a caller would log it");
    tracing::info!(client = ?c, config = ?pve.token_config(), "debug of client and config");

    // Ticket auth: login, CSRF on a write, renewal, re-login after revocation.
    let clock = ManualClock::new();
    let t = PveClient::new(
        ClientConfig::new(
            &pve.url,
            Credentials::password("root@pam", "secret"),
            TlsMode::Pinned(pve.fingerprint),
        )
        .clock(clock.clone()),
    )
    .unwrap();
    t.set_vm_config(
        "pve1",
        100,
        &ConfigUpdate::new().cores(2).cipassword("cloud-pw-9"),
    )
    .await
    .unwrap();
    clock.advance(std::time::Duration::from_secs(3 * 3600));
    t.version().await.unwrap();
    pve.cmd(json!({"op": "revoke_tickets"}));
    t.version().await.unwrap();
    tracing::info!(client = ?t, "debug of a ticket client");

    let logs = String::from_utf8(buf.lock().unwrap().clone()).unwrap();
    assert!(logs.contains("pve request"), "nothing captured:\n{logs}");
    for secret in [
        common::TOKEN_SECRET,
        "=secret",
        "password=",
        "cloud-pw-9",
        "PVE:root@pam:",
    ] {
        assert!(
            !logs.contains(secret),
            "{secret:?} leaked into the logs:\n{logs}"
        );
    }
}
