//! The wizard's front door over real HTTPS against the real binary: the page and
//! its headers, the session cookie, CSRF, the one-time code (10 wrong tries lock
//! it and the right one is refused after; a new code from the console unlocks;
//! an expired code is refused), the admin's SIWE sign-in (another wallet's or a
//! forged signature is refused, a nonce works once), and a session surviving a
//! restart. Needs nothing but the binary.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use serde_json::{Value, json};
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn code_sessions_csrf_and_sign_in() {
    let env = Env::new();
    let mut w = Wizard::start(&env);
    let mut c = Client::new(&env, &w.base);

    // The page: compiled in, strict CSP, no inline script.
    let (s, h, page) = c.raw(reqwest::Method::GET, "/", None, false).await;
    assert_eq!(s, 200);
    let csp = h["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("script-src 'self'") && csp.contains("default-src 'none'"),
        "{csp}"
    );
    assert!(!csp.contains("unsafe-inline"));
    let html = page.as_str().unwrap();
    assert!(
        !html.contains("<script>") && html.contains("<script src=\"app.js\""),
        "{html}"
    );
    assert!(h.contains_key("strict-transport-security"));

    // The console text: URL, code, fingerprint; the code is never in the log.
    let issue = std::fs::read_to_string(env.path("issue.d/blockhost-wizard.issue")).unwrap();
    let code = env.code();
    assert!(issue.contains(&code) && issue.contains(&w.base), "{issue}");
    let der = std::fs::read(env.state().join("tls/cert.der")).unwrap();
    let fp = blockhost_wizard::tls::fingerprint(&der);
    assert!(issue.replace("\n    ", ":").contains(&fp[..20]), "{issue}");

    // A session: a cookie that is Secure, HttpOnly and SameSite=Strict.
    let (_, h, st) = c.raw(reqwest::Method::GET, "/api/state", None, false).await;
    let cookie = h["set-cookie"].to_str().unwrap().to_owned();
    for attr in ["Secure", "HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(cookie.contains(attr), "{cookie}");
    }
    assert_eq!(st["stage"], "code");
    c.cookie = Some(cookie.split(';').next().unwrap().to_owned());
    c.csrf = st["csrf"].as_str().unwrap().to_owned();

    // No CSRF token, or no session: refused, and not counted as tries.
    let (s, _, _) = c
        .raw(
            reqwest::Method::POST,
            "/api/code",
            Some(json!({"code": code})),
            false,
        )
        .await;
    assert_eq!(s, 403);
    let saved = c.cookie.take();
    let (s, _) = c.post("/api/code", json!({"code": code})).await;
    assert_eq!(s, 401);
    c.cookie = saved;
    // Steps need the admin.
    let (s, _) = c
        .post("/api/steps/admin", json!({"answers": {}, "check": true}))
        .await;
    assert_eq!(s, 401);

    // Ten wrong tries: the first nine say how many remain, the tenth locks.
    let wrong = match code.strip_prefix('A') {
        Some(rest) => format!("B{rest}"),
        None => format!("A{}", &code[1..]),
    };
    for i in 1..10u32 {
        let (s, v) = c.post("/api/code", json!({"code": wrong})).await;
        assert_eq!(s, 401, "{v}");
        assert!(
            v["error"]
                .as_str()
                .unwrap()
                .contains(&format!("{} tries left", 10 - i)),
            "{v}"
        );
    }
    let (s, v) = c.post("/api/code", json!({"code": wrong})).await;
    assert_eq!(s, 403);
    assert!(v["error"].as_str().unwrap().contains("locked"), "{v}");
    // The right code is refused now, also after a restart.
    let (s, v) = c.post("/api/code", json!({"code": code})).await;
    assert_eq!(s, 403, "{v}");
    w.kill();
    let w = Wizard::start(&env);
    // (A session that has not passed the code lives in memory only: a new one.)
    c.cookie = None;
    c.state().await;
    let (s, _) = c.post("/api/code", json!({"code": code})).await;
    assert_eq!(s, 403);

    // A new code from the console unlocks (the running wizard reads it at once).
    let printed = env.new_code();
    let code = env.code();
    assert!(printed.contains(&code));
    assert!(
        std::fs::read_to_string(env.path("issue.d/blockhost-wizard.issue"))
            .unwrap()
            .contains(&code)
    );
    let (s, v) = c
        .post("/api/code", json!({"code": code.to_lowercase()}))
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(c.state().await["stage"], "wallet");
    // Single use: another browser cannot use it again.
    let mut other = Client::new(&env, &w.base);
    other.state().await;
    let (s, v) = other.post("/api/code", json!({"code": code})).await;
    assert_eq!(s, 403);
    assert!(
        v["error"].as_str().unwrap().contains("already been used"),
        "{v}"
    );

    // SIWE: the message names the page's host, a nonce and the time.
    let admin_key = signing_key(ADMIN_KEY);
    let (s, v) = c
        .post(
            "/api/login/challenge",
            json!({"address": ADMIN, "chainId": 31337}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let msg = v["message"].as_str().unwrap().to_owned();
    let parsed = pam_blockhost::siwe::SiweMessage::parse(&msg).unwrap();
    assert_eq!(parsed.domain, env.listen);
    assert_eq!(parsed.address.to_checksum(), ADMIN);
    assert!(parsed.statement.contains("testhost"));
    // Another wallet's signature of that message: refused (the nonce is spent).
    let other_sig = blockhost_crd::eip191::sign(&signing_key(OTHER_KEY), msg.as_bytes()).unwrap();
    let (s, v) = c
        .post(
            "/api/login/verify",
            json!({"signature": other_sig.to_hex()}),
        )
        .await;
    assert_eq!(s, 401, "{v}");
    assert!(v["error"].as_str().unwrap().contains("not by"), "{v}");
    // The admin's real signature of the spent message: no longer accepted.
    let good = blockhost_crd::eip191::sign(&admin_key, msg.as_bytes()).unwrap();
    let (s, _) = c
        .post("/api/login/verify", json!({"signature": good.to_hex()}))
        .await;
    assert_eq!(s, 400);
    // A forged signature (altered bytes) of a fresh message: refused.
    let (_, v) = c
        .post(
            "/api/login/challenge",
            json!({"address": ADMIN, "chainId": 31337}),
        )
        .await;
    let msg = v["message"].as_str().unwrap().to_owned();
    let mut forged = *blockhost_crd::eip191::sign(&admin_key, msg.as_bytes())
        .unwrap()
        .as_bytes();
    forged[5] ^= 0x5a;
    let forged = blockhost_crd::eip191::Signature::from_bytes(forged).to_hex();
    let (s, v) = c
        .post("/api/login/verify", json!({"signature": forged}))
        .await;
    assert_eq!(s, 401, "{v}");
    assert_eq!(c.state().await["stage"], "wallet", "still not signed in");
    // The right signature of a fresh message: the admin is the recovered address.
    let (_, v) = c
        .post(
            "/api/login/challenge",
            json!({"address": ADMIN, "chainId": 31337}),
        )
        .await;
    let sig =
        blockhost_crd::eip191::sign(&admin_key, v["message"].as_str().unwrap().as_bytes()).unwrap();
    let (s, v) = c
        .post("/api/login/verify", json!({"signature": sig.to_hex()}))
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["admin"], ADMIN);
    // The access signature must be the admin's.
    let wrong_access =
        blockhost_crd::eip191::sign(&signing_key(OTHER_KEY), b"blockhost-access").unwrap();
    let (s, _) = c
        .post(
            "/api/login/access",
            json!({"signature": wrong_access.to_hex()}),
        )
        .await;
    assert_eq!(s, 401);
    let access = blockhost_crd::eip191::sign(&admin_key, b"blockhost-access").unwrap();
    let (s, _) = c
        .post("/api/login/access", json!({"signature": access.to_hex()}))
        .await;
    assert_eq!(s, 200);
    let st = c.state().await;
    assert_eq!(st["stage"], "steps");
    assert_eq!(st["admin"], ADMIN);

    // Answers are checked on the server, field by field.
    let (s, v) = c.post("/api/steps/admin", json!({"answers": {"enabled": true, "ports": [], "defaultDurationSecs": 9999}, "check": true})).await;
    assert_eq!(s, 200);
    assert_eq!(v["ok"], false);
    assert!(
        v["report"]["errors"]["ports"].is_string()
            && v["report"]["errors"]["defaultDurationSecs"].is_string(),
        "{v}"
    );
    // A draft is kept (back and forth loses nothing), but not marked valid.
    let (_, v) = c
        .post(
            "/api/steps/proxmox",
            json!({"answers": {"url": "https://192.0.2.9:8006", "vmidFirst": 300}, "check": false}),
        )
        .await;
    assert_eq!(v["ok"], false);
    let st = c.state().await;
    assert_eq!(st["answers"]["proxmox"]["url"], "https://192.0.2.9:8006");
    assert_eq!(st["answers"]["proxmox"]["vmidFirst"], 300);
    assert_eq!(st["valid"]["proxmox"], false);
    let (s, v) = c.post("/api/finalize", json!({})).await;
    assert_eq!(s, 409, "incomplete answers: {v}");

    // The session survives a restart of the wizard.
    drop(w);
    let w = Wizard::start(&env);
    c.base = w.base.clone();
    let st = c.state().await;
    assert_eq!(st["stage"], "steps", "{st}");
    // The stored sessions hold no cookie value, and the log no code.
    let stored = std::fs::read_to_string(env.state().join("sessions.json")).unwrap();
    assert!(!stored.contains(c.cookie.as_ref().unwrap().split('=').nth(1).unwrap()));
    assert!(!w.log_text().contains(&code), "the code is in the log");
    for f in [
        "code.json",
        "sessions.json",
        "answers.json",
        "tls/key.pem",
        "secrets/admin-access-signature",
    ] {
        let mode = blockhost_wizard::fsutil::mode_of(&env.state().join(f)).unwrap();
        assert_eq!(mode, 0o600, "{f}");
    }
    let _: Value = st;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_code_is_refused() {
    let env = Env::new();
    let w = Wizard::start(&env);
    // The code was made five hours ago.
    let path = env.state().join("code.json");
    let mut v: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    v["issuedAt"] = json!((chrono::Utc::now() - chrono::Duration::hours(5)).to_rfc3339());
    std::fs::write(&path, v.to_string()).unwrap();
    let mut c = Client::new(&env, &w.base);
    c.state().await;
    let (s, v) = c.post("/api/code", json!({"code": env.code()})).await;
    assert_eq!(s, 403, "{v}");
    assert!(v["error"].as_str().unwrap().contains("expired"), "{v}");
    assert_eq!(c.state().await["stage"], "code");
}
