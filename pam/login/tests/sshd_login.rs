//! End-to-end: Debian's real sshd on a loopback port loads pam_blockhost.so; the
//! OpenSSH client answers keyboard-interactive through an askpass script that signs
//! the shown message with foundry's `cast wallet sign`.
//!
//! One test walks every case against one sshd, in order, so that "sshd keeps
//! serving" is checked after the hostile ones: valid login; the same through the
//! `blockhost-login` askpass helper; replayed signature;
//! wallet not in the access file; garbage; an oversized answer (OpenSSH's client
//! sends at most 1023 bytes of it: the module's 1 MiB bound is covered in
//! pam_module.rs); expired challenge; 1 MiB of junk on the raw TCP connection;
//! valid login again.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::Write;

use support::sshd::{Sshd, in_dir};
use support::*;

#[test]
fn wallet_login_through_real_sshd() {
    let access = access_json("blockhost-007", &[WALLET0], &["bhssh"], None);
    let mut sshd = Sshd::start("sshd-blockhost-test", "bhssh", &access, "");

    let ok = sshd.ssh("cast");
    assert!(
        sshd.logged_in(&ok),
        "valid login failed: {}\n{}",
        String::from_utf8_lossy(&ok.stderr),
        sshd.log()
    );
    let prompt = std::fs::read_to_string(in_dir(&sshd, "last-prompt")).unwrap();
    assert!(
        prompt.contains("blockhost-007 wants you to sign in with your Ethereum account:"),
        "{prompt}"
    );
    assert!(prompt.contains(WALLET0));
    std::fs::copy(in_dir(&sshd, "last-sig"), in_dir(&sshd, "replay-sig")).unwrap();

    // The headless CLI as ssh's askpass helper (blockhost-login-askpass symlink).
    let cli = sshd.ssh("cli");
    assert!(
        sshd.logged_in(&cli),
        "CLI login failed: {}",
        String::from_utf8_lossy(&cli.stderr)
    );

    for mode in ["replay", "other-wallet", "garbage", "oversized"] {
        let out = sshd.ssh(mode);
        assert!(!out.status.success(), "{mode} logged in");
        assert!(
            !String::from_utf8_lossy(&out.stdout).contains("wallet-login-ok"),
            "{mode}"
        );
        assert!(sshd.alive(), "sshd died after {mode}:\n{}", sshd.log());
    }

    // Logins at the same time do not disturb each other (each has its own challenge).
    sshd.set_mode("cli");
    std::thread::scope(|scope| {
        let logins: Vec<_> = (0..4).map(|_| scope.spawn(|| sshd.ssh_as("cli"))).collect();
        for l in logins {
            let out = l.join().unwrap();
            assert!(
                sshd.logged_in(&out),
                "concurrent login failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    });

    // A challenge answered after its TTL: sshd re-reads the PAM service per connection.
    sshd.write_pam("ttl=1");
    assert!(
        !sshd.ssh("slow").status.success(),
        "expired challenge logged in"
    );
    sshd.write_pam("");

    // Raw junk instead of an SSH handshake.
    {
        let mut tcp = std::net::TcpStream::connect(("127.0.0.1", sshd.port)).unwrap();
        tcp.set_write_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let _ = tcp.write_all(&vec![0x41u8; 1 << 20]);
    }

    assert!(sshd.alive(), "sshd died:\n{}", sshd.log());
    let again = sshd.ssh("cast");
    assert!(
        sshd.logged_in(&again),
        "sshd stopped serving: {}\n{}",
        String::from_utf8_lossy(&again.stderr),
        sshd.log()
    );

    // sshd saw exactly the outcomes above: 7 accepted, 5 failed keyboard-interactive attempts.
    let log = sshd.log();
    assert_eq!(
        log.matches("Accepted keyboard-interactive/pam for bhssh")
            .count(),
        7,
        "{log}"
    );
    assert_eq!(
        log.matches("Failed keyboard-interactive/pam for bhssh")
            .count(),
        5,
        "{log}"
    );
    if std::env::var_os("BH_SHOW_SSHD_LOG").is_some() {
        eprintln!("{log}");
    }
}
