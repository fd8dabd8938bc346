//! Wall time of whole wallet logins through real sshd on loopback: TCP connect, key
//! exchange, keyboard-interactive with pam_blockhost (challenge, signature,
//! verification), running `echo; id -un`, disconnect.
//!
//! Ignored by default (it measures; it asserts only that logins succeed):
//! `cargo test -p blockhost-login --release --test bench_ssh -- --ignored --nocapture`
//! Two client-side signers: `blockhost-login askpass` (fast) and `cast wallet sign`
//! (foundry's start-up dominates), to show what the server side costs.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

mod support;

use std::time::{Duration, Instant};

use support::sshd::Sshd;
use support::*;

fn summary(name: &str, mut t: Vec<Duration>) {
    t.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "{name}: n={} min {:.1} ms, median {:.1} ms, max {:.1} ms",
        t.len(),
        ms(t[0]),
        ms(t[t.len() / 2]),
        ms(t[t.len() - 1])
    );
}

#[test]
#[ignore = "benchmark: run with --ignored --nocapture"]
fn ssh_login_wall_time() {
    let access = access_json("blockhost-007", &[WALLET0], &["bhbench"], None);
    let sshd = Sshd::start("sshd-blockhost-test-bench", "bhbench", &access, "");
    for (mode, n) in [("cli", 20), ("cast", 10), ("baseline", 20)] {
        if mode == "baseline" {
            sshd.write_pam_permit();
        }
        let _ = sshd.ssh(mode); // warm caches
        let times = (0..n)
            .map(|_| {
                let t = Instant::now();
                let out = sshd.ssh(mode);
                let d = t.elapsed();
                assert!(
                    sshd.logged_in(&out),
                    "{}",
                    String::from_utf8_lossy(&out.stderr)
                );
                d
            })
            .collect();
        let name = if mode == "baseline" {
            "ssh login, pam_permit instead of pam_blockhost (baseline)".to_string()
        } else {
            format!("ssh login, pam_blockhost, askpass signer = {mode}")
        };
        summary(&name, times);
    }
}
