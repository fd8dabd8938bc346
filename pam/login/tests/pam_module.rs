//! PAM-level tests of `pam_blockhost.so`: the real module loaded by the real libpam
//! (through libpam_wrapper, so the service file comes from a temporary directory and
//! /etc/pam.d is untouched), driven by `blockhost-pam-converse` over stdio.
//! Signatures come from foundry's `cast wallet sign`, an independent implementation.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, ChildStdout, Command, Stdio};
use std::time::Duration;

use support::*;

const PAM_WRAPPER: &str = "/usr/lib/x86_64-linux-gnu/libpam_wrapper.so";
const PAM_SUCCESS: i32 = 0;
const PAM_SERVICE_ERR: i32 = 3;
const PAM_AUTH_ERR: i32 = 7;
const PAM_AUTHINFO_UNAVAIL: i32 = 9;
const PAM_USER_UNKNOWN: i32 = 10;

/// A test directory with a PAM service `blockhost-test` using the module.
struct Setup {
    dir: tempfile::TempDir,
    mnemonic: PathBuf,
}

impl Setup {
    fn new(wallets: &[&str], signing_url: Option<&str>, options: &str) -> Self {
        assert!(
            Path::new(PAM_WRAPPER).exists(),
            "{PAM_WRAPPER} missing: apt-get install libpam-wrapper"
        );
        let dir = tempfile::tempdir().unwrap();
        let mnemonic = mnemonic_file(dir.path());
        let s = Self { dir, mnemonic };
        s.write_access(
            &access_json("blockhost-007", wallets, &["alice"], signing_url),
            0o644,
        );
        s.write_service(options);
        s
    }

    fn access(&self) -> PathBuf {
        self.dir.path().join("access.json")
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("signer.sock")
    }

    fn write_access(&self, text: &str, mode: u32) {
        write_file(&self.access(), text, mode);
    }

    fn write_service(&self, options: &str) {
        let svc = self.dir.path().join("services");
        std::fs::create_dir_all(&svc).unwrap();
        // libpam wants an `other` fallback service; deny-all keeps it harmless.
        write_file(
            &svc.join("other"),
            "auth required pam_deny.so\naccount required pam_deny.so\n",
            0o644,
        );
        write_file(
            &svc.join("blockhost-test"),
            &format!(
                "auth required {} access_file={} socket={} {options}\naccount required pam_permit.so\n",
                module_path().display(),
                self.access().display(),
                self.socket().display()
            ),
            0o644,
        );
    }

    fn start(&self, user: &str) -> Converse {
        self.start_with(Command::new(bin("blockhost-pam-converse")), user)
    }

    /// Starts the driver inside a private mount namespace whose `/dev/log` is the
    /// datagram socket `log` (the machine's /dev is left alone), to read the audit
    /// lines the module sends to syslog.
    fn start_logged(&self, user: &str, log: &Path) -> Converse {
        let old_dev = self.dir.path().join("old-dev");
        std::fs::create_dir_all(&old_dev).unwrap();
        let script = "set -e; mount --rbind /dev \"$OLD_DEV\"; mount -t tmpfs tmpfs /dev; \
                      touch /dev/null /dev/log; mount --bind \"$OLD_DEV/null\" /dev/null; \
                      mount --bind \"$LOG_SOCK\" /dev/log; exec \"$@\"";
        let mut cmd = Command::new("unshare");
        cmd.args([
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            script,
            "sh",
        ])
        .arg(bin("blockhost-pam-converse"))
        .env("OLD_DEV", &old_dev)
        .env("LOG_SOCK", log);
        self.start_with(cmd, user)
    }

    fn start_with(&self, mut cmd: Command, user: &str) -> Converse {
        let mut child = cmd
            .args(["blockhost-test", user])
            .env("LD_PRELOAD", PAM_WRAPPER)
            .env("PAM_WRAPPER", "1")
            .env("PAM_WRAPPER_SERVICE_DIR", self.dir.path().join("services"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let out = BufReader::new(child.stdout.take().unwrap());
        Converse {
            _child: Guard(child),
            stdin,
            out,
            result: None,
        }
    }

    /// One login where `answer` sees each prompt (with the text before it).
    fn login(&self, user: &str, answer: impl FnMut(&str) -> String) -> (i32, Vec<String>) {
        self.converse(self.start(user), answer)
    }

    fn converse(
        &self,
        mut c: Converse,
        mut answer: impl FnMut(&str) -> String,
    ) -> (i32, Vec<String>) {
        let mut prompts = Vec::new();
        while let Some(p) = c.next_prompt() {
            let a = answer(&p);
            prompts.push(p);
            c.answer(&a);
        }
        (c.result.unwrap(), prompts)
    }

    /// Answers the sign-in prompt with cast's signature by anvil account `index`.
    fn cast_answer(&self, index: u32) -> impl FnMut(&str) -> String + '_ {
        move |prompt| {
            let msg =
                pam_blockhost::siwe::extract_from_prompt(prompt).expect("prompt shows a message");
            cast_sign(&self.mnemonic, index, msg)
        }
    }
}

struct Converse {
    _child: Guard,
    stdin: ChildStdin,
    out: BufReader<ChildStdout>,
    result: Option<i32>,
}

impl Converse {
    /// Text up to the next prompt, or None once the result line is read.
    fn next_prompt(&mut self) -> Option<String> {
        let mut text = String::new();
        loop {
            let mut line = String::new();
            assert!(
                self.out.read_line(&mut line).unwrap() > 0,
                "driver ended without a result; so far: {text}"
            );
            if line == "<<PROMPT>>\n" {
                return Some(text);
            }
            if let Some(rest) = line.strip_prefix("RESULT ") {
                self.result = Some(rest.split(' ').next().unwrap().trim().parse().unwrap());
                return None;
            }
            text.push_str(&line);
        }
    }

    fn answer(&mut self, a: &str) {
        // The driver may already have exited (e.g. after an oversized answer).
        let _ = self.stdin.write_all(a.as_bytes());
        let _ = self.stdin.write_all(b"\n");
        let _ = self.stdin.flush();
    }
}

#[test]
fn cast_signature_logs_in() {
    let s = Setup::new(&[WALLET0], None, "");
    let (code, prompts) = s.login("alice", s.cast_answer(0));
    assert_eq!(code, PAM_SUCCESS);
    assert_eq!(prompts.len(), 1);
    let msg = pam_blockhost::siwe::extract_from_prompt(&prompts[0]).unwrap();
    let parsed = pam_blockhost::siwe::SiweMessage::parse(msg).unwrap();
    assert_eq!(parsed.domain, "blockhost-007");
    assert_eq!(parsed.address.to_checksum(), WALLET0);
    assert_eq!(parsed.chain_id, 31337);
    assert_eq!(parsed.uri, "ssh://alice@blockhost-007");
    assert_eq!(
        parsed.statement,
        "Log in to blockhost-007 as Unix user alice (SSH, access NFT #7)."
    );
    assert!(parsed.nonce.len() >= 24, "nonce carries at least 96 bits");
    assert_eq!(
        (parsed.expiration_time - parsed.issued_at).num_seconds(),
        300
    );
}

#[test]
fn signature_by_another_wallet_is_denied() {
    let s = Setup::new(&[WALLET0], None, "");
    assert_eq!(s.login("alice", s.cast_answer(1)).0, PAM_AUTH_ERR);
}

#[test]
fn a_signature_from_an_earlier_attempt_is_denied() {
    let s = Setup::new(&[WALLET0], None, "");
    let mut first = String::new();
    let (code, _) = s.login("alice", |p| {
        first = s.cast_answer(0)(p);
        first.clone()
    });
    assert_eq!(code, PAM_SUCCESS);
    let (code, prompts) = s.login("alice", |_| first.clone());
    assert_eq!(code, PAM_AUTH_ERR);
    // Each attempt had its own challenge.
    assert_ne!(
        pam_blockhost::siwe::extract_from_prompt(&prompts[0]).unwrap(),
        ""
    );
}

#[test]
fn an_expired_challenge_is_denied() {
    let s = Setup::new(&[WALLET0], None, "ttl=1");
    let (code, _) = s.login("alice", |p| {
        let sig = s.cast_answer(0)(p);
        std::thread::sleep(Duration::from_millis(2100));
        sig
    });
    assert_eq!(code, PAM_AUTH_ERR);
}

#[test]
fn users_not_in_the_access_file_are_refused_without_a_challenge() {
    let s = Setup::new(&[WALLET0], None, "");
    let (code, prompts) = s.login("mallory", |_| String::new());
    assert_eq!(code, PAM_USER_UNKNOWN);
    assert!(prompts.is_empty());
}

#[test]
fn malformed_answers_are_denied() {
    let s = Setup::new(&[WALLET0], None, "");
    // The malleable twin (s → n − s, v flipped) of a valid cast signature.
    let twin = |p: &str| {
        use k256::ecdsa::Signature as E;
        let sig = hex::decode(&s.cast_answer(0)(p)[2..]).unwrap();
        let e = E::from_slice(&sig[..64]).unwrap();
        let t = E::from_scalars(e.r().to_bytes(), (-*e.s().as_ref()).to_bytes()).unwrap();
        let v = if sig[64] == 27 { 28 } else { 27 };
        format!("0x{}{v:02x}", hex::encode(t.to_bytes()))
    };
    let with_v = |p: &str, v: &str| {
        let sig = s.cast_answer(0)(p);
        format!("{}{v}", &sig[..sig.len() - 2])
    };
    type Answerer<'a> = Box<dyn Fn(&str) -> String + 'a>;
    let cases: Vec<(&str, Answerer)> = vec![
        ("empty", Box::new(|_| String::new())),
        ("garbage", Box::new(|_| "let me in".into())),
        ("non-hex", Box::new(|_| format!("0x{}", "zz".repeat(65)))),
        (
            "short",
            Box::new(|p| s.cast_answer(0)(p)[..100].to_string()),
        ),
        ("long", Box::new(|p| format!("{}00", s.cast_answer(0)(p)))),
        ("wrong v", Box::new(move |p| with_v(p, "1d"))),
        ("high s", Box::new(twin)),
        ("1 KiB", Box::new(|_| "a".repeat(1024))),
        ("1 MiB", Box::new(|_| "0".repeat(1 << 20))),
        ("control bytes", Box::new(|_| "\u{1b}[2J\u{7}".into())),
    ];
    for (name, answer) in cases {
        assert_eq!(s.login("alice", |p| answer(p)).0, PAM_AUTH_ERR, "{name}");
    }
    // And the module still works afterwards (the driver is a fresh process each
    // time; sshd reuse is covered by the sshd test).
    assert_eq!(s.login("alice", s.cast_answer(0)).0, PAM_SUCCESS);
}

#[test]
fn several_wallets_ask_which_one_signs() {
    let s = Setup::new(&[WALLET0, WALLET1], None, "");
    let (code, prompts) = s.login("alice", |p| {
        if p.contains("Wallet to sign with") {
            "2".into()
        } else {
            s.cast_answer(1)(p)
        }
    });
    assert_eq!(code, PAM_SUCCESS);
    assert_eq!(prompts.len(), 2);
    // A wallet that is not listed is refused before any challenge.
    let (code, prompts) = s.login("alice", |_| {
        "0x0000000000000000000000000000000000000001".into()
    });
    assert_eq!(code, PAM_AUTH_ERR);
    assert_eq!(prompts.len(), 1);
}

#[test]
fn misconfiguration_fails_closed() {
    let s = Setup::new(&[WALLET0], None, "ttl=0");
    assert_eq!(s.login("alice", |_| String::new()).0, PAM_SERVICE_ERR);
    s.write_service("");
    s.write_access(
        &access_json("blockhost-007", &[WALLET0], &["alice"], None),
        0o666,
    );
    assert_eq!(
        s.login("alice", |_| String::new()).0,
        PAM_AUTHINFO_UNAVAIL,
        "world-writable access file"
    );
    s.write_access("version = 1\n", 0o644);
    assert_eq!(
        s.login("alice", |_| String::new()).0,
        PAM_AUTHINFO_UNAVAIL,
        "invalid access file"
    );
    std::fs::remove_file(s.access()).unwrap();
    assert_eq!(
        s.login("alice", |_| String::new()).0,
        PAM_AUTHINFO_UNAVAIL,
        "missing access file"
    );
}

/// A stand-in for the signer on the hand-off socket: takes one registration and
/// answers with cast's signature of its message (the real signer is exercised by the
/// browser test).
fn fake_signer(s: &Setup, index: u32, delay: Duration) -> std::thread::JoinHandle<String> {
    let listener = UnixListener::bind(s.socket()).unwrap();
    let mnemonic = s.mnemonic.clone();
    std::thread::spawn(move || {
        // Bounded accept: a module that never connects fails the test, not hangs it.
        listener.set_nonblocking(true).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let stream = loop {
            match listener.accept() {
                Ok((st, _)) => break st,
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Err(e) => panic!("the module never connected to the hand-off socket: {e}"),
            }
        };
        stream.set_nonblocking(false).unwrap();
        let mut rd = BufReader::new(stream.try_clone().unwrap());
        let mut line = String::new();
        rd.read_line(&mut line).unwrap();
        let reg: pam_blockhost::handoff::Register = serde_json::from_str(&line).unwrap();
        std::thread::sleep(delay);
        let sig = cast_sign(&mnemonic, index, &reg.message);
        let mut w = &stream;
        let reply =
            serde_json::to_string(&pam_blockhost::handoff::Delivered { signature: sig }).unwrap();
        let _ = writeln!(w, "{reply}");
        reg.session
    })
}

#[test]
fn enter_waits_for_the_signing_page() {
    let s = Setup::new(&[WALLET0], Some("https://127.0.0.1:8443/"), "wait=10");
    let signer = fake_signer(&s, 0, Duration::from_millis(300));
    let (code, prompts) = s.login("alice", |_| String::new());
    let session = signer.join().unwrap();
    assert_eq!(code, PAM_SUCCESS);
    assert!(
        prompts[0].contains(&format!("Signing page: https://127.0.0.1:8443/#{session}")),
        "{}",
        prompts[0]
    );
}

#[test]
fn a_wrong_signature_from_the_page_is_denied_and_waiting_is_bounded() {
    let s = Setup::new(&[WALLET0], Some("https://127.0.0.1:8443/"), "wait=1");
    let signer = fake_signer(&s, 1, Duration::ZERO);
    let (code, prompts) = s.login("alice", |_| String::new());
    assert!(
        prompts[0].contains("Signing page"),
        "the module did not reach the signer"
    );
    assert_eq!(code, PAM_AUTH_ERR);
    signer.join().unwrap();
    // Nobody answers: the wait ends after `wait` seconds.
    std::fs::remove_file(s.socket()).unwrap();
    let _listener = UnixListener::bind(s.socket()).unwrap();
    let t = std::time::Instant::now();
    assert_eq!(s.login("alice", |_| String::new()).0, PAM_AUTH_ERR);
    assert!(t.elapsed() < Duration::from_secs(5));
}

#[test]
fn without_a_signer_a_pasted_signature_still_works() {
    // signing_url set but nothing listens on the socket.
    let s = Setup::new(&[WALLET0], Some("https://127.0.0.1:8443/"), "");
    let (code, prompts) = s.login("alice", s.cast_answer(0));
    assert_eq!(code, PAM_SUCCESS);
    assert!(!prompts[0].contains("Signing page"));
}

#[test]
fn audit_lines_go_to_syslog_auth_without_secrets() {
    require_root(); // a private mount namespace replaces /dev/log for the driver only
    let s = Setup::new(&[WALLET0], None, "");
    let log_path = s.dir.path().join("log.sock");
    let log = std::os::unix::net::UnixDatagram::bind(&log_path).unwrap();
    log.set_read_timeout(Some(Duration::from_secs(5))).unwrap();

    let secrets = std::cell::RefCell::new(Vec::new());
    let answer = |index: u32| {
        let secrets = &secrets;
        let s = &s;
        move |p: &str| {
            let msg = pam_blockhost::siwe::extract_from_prompt(p).unwrap();
            let nonce = pam_blockhost::siwe::SiweMessage::parse(msg).unwrap().nonce;
            let sig = cast_sign(&s.mnemonic, index, msg);
            secrets.borrow_mut().push(nonce);
            secrets.borrow_mut().push(sig[2..].to_string());
            sig
        }
    };
    let (ok, _) = s.converse(s.start_logged("alice", &log_path), answer(0));
    assert_eq!(ok, PAM_SUCCESS);
    let (denied, _) = s.converse(s.start_logged("alice", &log_path), answer(1));
    assert_eq!(denied, PAM_AUTH_ERR);
    let (unknown, _) = s.converse(s.start_logged("mallory\nforged=1", &log_path), |_| {
        String::new()
    });
    assert_eq!(unknown, PAM_USER_UNKNOWN);

    let mut lines = Vec::new();
    let mut buf = [0u8; 4096];
    while lines.len() < 3 {
        let n = log
            .recv(&mut buf)
            .expect("the module wrote no audit line to /dev/log");
        let line = String::from_utf8_lossy(&buf[..n]).into_owned();
        if line.contains("pam_blockhost:") {
            lines.push(line);
        }
    }
    let w0 = WALLET0.to_lowercase();
    let w1 = WALLET1.to_lowercase();
    // <38> = facility auth (4) * 8 + info (6); <37> = auth + notice (5).
    assert!(lines[0].starts_with("<38>"), "{}", lines[0]);
    assert!(
        lines[0].contains(&format!(
            "user=\"alice\" rhost=\"\" wallet={w0} outcome=success"
        )),
        "{}",
        lines[0]
    );
    assert!(lines[1].starts_with("<37>"), "{}", lines[1]);
    assert!(
        lines[1].contains(&format!(
            "user=\"alice\" rhost=\"\" signer={w1} outcome=denied reason=\"signature rejected: \
             signature was made by {WALLET1}, which is not an allowed wallet\""
        )),
        "{}",
        lines[1]
    );
    assert!(
        lines[2].contains("user=\"mallory?forged=1\""),
        "control characters neutralised: {}",
        lines[2]
    );
    assert!(lines[2].contains("outcome=denied"), "{}", lines[2]);
    for line in &lines {
        assert!(!line.contains('\n'), "one line per event: {line:?}");
        for secret in secrets.borrow().iter() {
            assert!(
                !line.contains(secret.as_str()),
                "audit line leaks {secret}: {line}"
            );
        }
    }
}

#[test]
fn a_hand_off_socket_not_served_by_root_gets_no_message() {
    require_root(); // to start the impostor as another user
    let python = Path::new("/usr/bin/python3");
    assert!(
        python.exists(),
        "{} missing: apt-get install python3",
        python.display()
    );
    let s = Setup::new(&[WALLET0], Some("https://127.0.0.1:8443/"), "");
    // The impostor (uid 65534) needs a directory it may create its socket in.
    let open_dir = s.dir.path().join("open");
    std::fs::create_dir(&open_dir).unwrap();
    std::fs::set_permissions(
        s.dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    std::fs::set_permissions(
        &open_dir,
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let socket = open_dir.join("signer.sock");
    let impostor = Guard(
        std::os::unix::process::CommandExt::uid(
            std::os::unix::process::CommandExt::gid(&mut Command::new(python), 65534),
            65534,
        )
        .args([
            "-c",
            "import socket, sys, time\ns = socket.socket(socket.AF_UNIX)\ns.bind(sys.argv[1])\ns.listen(8)\ntime.sleep(60)",
        ])
        .arg(&socket)
        .spawn()
        .unwrap(),
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !socket.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "impostor socket never appeared"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    s.write_service(&format!("socket={}", socket.display()));
    let (code, prompts) = s.login("alice", s.cast_answer(0));
    assert!(
        !prompts[0].contains("Signing page"),
        "registered with a non-root socket: {}",
        prompts[0]
    );
    assert_eq!(code, PAM_SUCCESS, "pasting still works");
    drop(impostor);
}

#[test]
fn random_bytes_as_answers_never_crash_the_module() {
    let s = Setup::new(&[WALLET0], None, "");
    // Deterministic xorshift: a failure is reproducible from the case number.
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for case in 0..60 {
        let len = (next() % 2048) as usize;
        // Any byte but NUL (ends a C string) and newline (ends the driver's line).
        let answer: Vec<u8> = (0..len)
            .map(|_| match (next() % 256) as u8 {
                0 | b'\n' => b'x',
                b => b,
            })
            .collect();
        let mut c = s.start("alice");
        assert!(c.next_prompt().is_some(), "case {case}: no prompt");
        let _ = c.stdin.write_all(&answer);
        let _ = c.stdin.write_all(b"\n");
        let _ = c.stdin.flush();
        assert!(c.next_prompt().is_none(), "case {case}: asked again");
        assert_eq!(c.result, Some(PAM_AUTH_ERR), "case {case} (len {len})");
    }
}
