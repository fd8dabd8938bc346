//! CPU time of the work pam_blockhost does per login, outside PAM and sshd:
//! building the challenge (nonce, EIP-4361 text) and verifying the answer (parse
//! the hex, keccak, secp256k1 recovery, constant-time compare).
//!
//! `cargo bench -p blockhost-pam --bench verify` — prints per-operation CPU time
//! (CLOCK_PROCESS_CPUTIME_ID, so time the process spends waiting for the shared
//! machine's cores is not counted), the median of 7 batches.
#![allow(clippy::unwrap_used, clippy::print_stdout)]

use std::hint::black_box;
use std::time::Duration;

use blockhost_access::AccessFile;
use blockhost_access::eip191::{self, Signature};
use k256::ecdsa::SigningKey;
use pam_blockhost::login::challenge;

fn cpu_now() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out-pointer; the clock id is supported on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Median per-iteration CPU time over 7 batches of `n`.
fn measure(n: u32, mut f: impl FnMut()) -> Duration {
    for _ in 0..n / 10 {
        f();
    }
    let mut batches: Vec<Duration> = (0..7)
        .map(|_| {
            let t = cpu_now();
            for _ in 0..n {
                f();
            }
            (cpu_now() - t) / n
        })
        .collect();
    batches.sort();
    batches[3]
}

fn main() {
    let key = SigningKey::from_slice(
        &hex::decode("ac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80").unwrap(),
    )
    .unwrap();
    let wallet = eip191::address_of(key.verifying_key());
    let access = AccessFile {
        version: 1,
        machine: "blockhost-007".into(),
        chain_id: 31337,
        nft_token_id: Some(7),
        wallets: vec![wallet],
        users: vec!["alice".into()],
        signing_url: None,
    };
    let ttl = Duration::from_secs(300);
    let msg = challenge(&access, wallet, "alice", chrono::Utc::now(), ttl).to_text();
    let sig_hex = eip191::sign(&key, msg.as_bytes()).unwrap().to_hex();

    let build = measure(2000, || {
        black_box(challenge(&access, wallet, "alice", chrono::Utc::now(), ttl).to_text());
    });
    let verify = measure(500, || {
        let sig: Signature = black_box(&sig_hex).parse().unwrap();
        eip191::verify(black_box(msg.as_bytes()), &sig, &wallet).unwrap();
    });
    let access_text = access.to_json().unwrap();
    let parse_access = measure(2000, || {
        black_box(AccessFile::from_json(black_box(&access_text)).unwrap());
    });
    println!(
        "challenge build (nonce + EIP-4361 text): {:>8.1} µs CPU",
        build.as_secs_f64() * 1e6
    );
    println!(
        "access file parse + validate:            {:>8.1} µs CPU",
        parse_access.as_secs_f64() * 1e6
    );
    println!(
        "signature parse + recover + compare:     {:>8.1} µs CPU",
        verify.as_secs_f64() * 1e6
    );
    let total = build + verify + parse_access;
    println!(
        "total per login:                         {:>8.1} µs CPU (goal < 1000 µs)",
        total.as_secs_f64() * 1e6
    );
}
