//! The fuzz target on stable: `blockhost_root_agent::fuzz::request` over the
//! committed cargo-fuzz corpus (`fuzz/corpus/request/`), then over a fixed number
//! of mutations of it from a seeded generator — deterministic, so a failure
//! reproduces, and bounded (a few seconds). Coverage-guided fuzzing needs nightly:
//! `cargo +nightly fuzz run request` in `agents/root-agent` (see fuzz/Cargo.toml).
//! A crash found there goes into the corpus, and from then on this test replays it.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

use std::path::Path;
use std::time::{Duration, Instant};

use blockhost_root_agent::fuzz;

/// Mutations tried (at most; the time bound below stops earlier on a slow machine).
const MUTATIONS: u32 = 200_000;
const TIME_BOUND: Duration = Duration::from_secs(20);

fn corpus() -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/request");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("entry").path())
        .collect();
    files.sort();
    files
        .iter()
        .map(|p| std::fs::read(p).expect("read"))
        .collect()
}

/// xorshift64*: small, seeded, good enough to pick mutations.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Interesting bytes and tokens: JSON punctuation, the protocol's own words, and
/// edge values, so mutations reach past the JSON parser into the checks.
const TOKENS: &[&[u8]] = &[
    b"\"",
    b"{",
    b"}",
    b"[",
    b"]",
    b",",
    b":",
    b"\\",
    b"\n",
    b"\0",
    b"-1",
    b"0",
    b"65535",
    b"65536",
    b"3600",
    b"3601",
    b"4294967296",
    b"1e3",
    b"null",
    b"true",
    b"\"::\"",
    b"\"0.0.0.0\"",
    b"\"127.0.0.1\"",
    b"\"fe80::1%eth0\"",
    b"\"::ffff:10.0.0.1\"",
    b"\"vmbr0\\\"; drop\"",
    b"\"tap*\"",
    b"\"knock-add\"",
    b"\"firewall-apply\"",
    b"\"bridge-isolate\"",
    b"\"source\"",
    b"\"ports\"",
    b"\"durationSecs\"",
    b"\"vmBridges\"",
    b"\"clusterNodes\"",
    b"\"params\"",
    b"\"action\"",
    "\"\u{202e}\"".as_bytes(),
    b"\xff\xfe",
];

fn mutate(rng: &mut Rng, corpus: &[Vec<u8>], out: &mut Vec<u8>) {
    let base = &corpus[rng.below(corpus.len())];
    // Mutate the body, usually re-framing it so the length stays right and the
    // JSON layer is what gets exercised.
    let framed = base.len() >= 4;
    let mut body = if framed {
        base[4..].to_vec()
    } else {
        base.clone()
    };
    for _ in 0..=rng.below(4) {
        match rng.below(6) {
            0 if !body.is_empty() => {
                let i = rng.below(body.len());
                body[i] ^= 1 << rng.below(8);
            }
            1 if !body.is_empty() => {
                let i = rng.below(body.len());
                let n = rng.below(8).min(body.len() - i);
                body.drain(i..i + n);
            }
            2 => {
                let i = rng.below(body.len() + 1);
                let t = TOKENS[rng.below(TOKENS.len())];
                body.splice(i..i, t.iter().copied());
            }
            3 => {
                // Splice a piece of another input in.
                let other = &corpus[rng.below(corpus.len())];
                if other.len() > 4 {
                    let a = 4 + rng.below(other.len() - 4);
                    let b = a + rng.below(other.len() - a + 1);
                    let i = rng.below(body.len() + 1);
                    body.splice(i..i, other[a..b].iter().copied());
                }
            }
            4 if !body.is_empty() => {
                let i = rng.below(body.len());
                body[i] = (rng.next() & 0xff) as u8;
            }
            _ => {
                let n = rng.below(16);
                body.extend(std::iter::repeat_n(b' ', n));
            }
        }
    }
    out.clear();
    if rng.below(8) == 0 {
        // Sometimes a wrong length header.
        out.extend_from_slice(&((rng.next() & 0x1_ffff) as u32).to_be_bytes());
    } else {
        out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    }
    out.extend_from_slice(&body);
}

#[test]
fn corpus_and_mutations_hold_the_properties() {
    let corpus = corpus();
    assert!(corpus.len() >= 10, "the committed corpus is missing");
    for input in &corpus {
        fuzz::request(input);
    }
    let mut rng = Rng(0x5eed_b10c_4057_u64);
    let mut buf = Vec::new();
    let start = Instant::now();
    let mut n = 0;
    while n < MUTATIONS && start.elapsed() < TIME_BOUND {
        mutate(&mut rng, &corpus, &mut buf);
        if let Err(p) = std::panic::catch_unwind(|| fuzz::request(&buf)) {
            panic!(
                "mutation {n} broke a property; input (hex) {}: {p:?}",
                buf.iter().map(|b| format!("{b:02x}")).collect::<String>()
            );
        }
        n += 1;
    }
    eprintln!(
        "fuzz replay: {} corpus inputs, {n} mutations in {:?}",
        corpus.len(),
        start.elapsed()
    );
}
