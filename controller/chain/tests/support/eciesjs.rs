//! npm eciesjs as a browser would run it: encrypts to a public key through
//! `eciesjs-interop.js` (next to this folder), with the repository's pinned
//! copy of the package. Included with `#[path]` by the chain crate's tests and
//! by `e2e/`, so both ask the very same JavaScript.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)] // test helper: a panic is a failure report

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

/// npm eciesjs encrypts `plaintext` to `public_key_hex` (node, from `repo_root`).
pub fn eciesjs_encrypt(repo_root: &Path, public_key_hex: &str, plaintext: &[u8]) -> Vec<u8> {
    let script = repo_root.join("controller/chain/tests/eciesjs-interop.js");
    let mut child = Command::new("node")
        .arg(script)
        .env("BLOCKHOST_ROOT", repo_root)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let ops = serde_json::json!([{"op": "encrypt", "key": public_key_hex, "data": hex::encode(plaintext)}]);
    child
        .stdin
        .take()
        .unwrap()
        .write_all(ops.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let reply: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    hex::decode(reply[0]["ok"].as_str().expect("eciesjs encrypted")).unwrap()
}
