//! Interop with the JavaScript a signup page runs: npm `eciesjs` 0.4.15 (the
//! repo's pinned copy in `node_modules/`) and node's built-in AES-GCM.
//!
//! - eciesjs encrypts, we decrypt (the purchase path: browser -> server);
//! - we encrypt, eciesjs decrypts (proves the format both ways);
//! - an NFT payload we make opens with node's `crypto` (what a holder's page
//!   would use), given the key from `cast keccak`-style derivation.
//!
//! Needs `node` and `node_modules/eciesjs` (`npm ci` at the repo root). Without
//! them the tests print why and pass, unless `BLOCKHOST_REQUIRE_TOOLS=1` is set
//! (set it in CI, so a missing toolchain cannot hide a regression there).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::str::FromStr;

use blockhost_chain::{ecies, nft_payload, user_encrypted};
use blockhost_crd::eip191::Signature;
use k256::SecretKey;
use k256::elliptic_curve::sec1::ToEncodedPoint;
use serde_json::{Value, json};

/// anvil's dev account 1 key, as the server key: a well-known test key.
const SERVER_KEY: &str = "59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d";
/// `cast wallet sign --private-key <anvil key 0> blockhost-access`.
const CAST_SIG: &str = "0x606417ac6090dfce72677942e534666c5872ca918013a66399fc99c4deffa6f55be822206b541f51db9400f5a1e7316563d7482a96582e7fe8012ef5d74878371b";

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// False (with a note) when node or eciesjs is missing and not required.
fn node_available() -> bool {
    let have_lib = repo_root()
        .join("node_modules/eciesjs/package.json")
        .exists();
    let have_node = Command::new("node")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if have_lib && have_node {
        return true;
    }
    assert!(
        std::env::var("BLOCKHOST_REQUIRE_TOOLS").as_deref() != Ok("1"),
        "BLOCKHOST_REQUIRE_TOOLS=1 but node ({have_node}) or node_modules/eciesjs ({have_lib}) is missing"
    );
    eprintln!("skipping: node or node_modules/eciesjs missing (run `npm ci` at the repo root)");
    false
}

fn run_node(script: &str, input: &Value) -> Value {
    let mut child = Command::new("node")
        .arg(script)
        .env("BLOCKHOST_ROOT", repo_root())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start node");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "node failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn eciesjs(ops: Value) -> Vec<Result<Vec<u8>, String>> {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/eciesjs-interop.js");
    run_node(script.to_str().unwrap(), &ops)
        .as_array()
        .unwrap()
        .iter()
        .map(|r| match (r.get("ok"), r.get("err")) {
            (Some(ok), _) => Ok(hex::decode(ok.as_str().unwrap()).unwrap()),
            (_, Some(err)) => Err(err.as_str().unwrap().to_owned()),
            _ => panic!("bad reply {r}"),
        })
        .collect()
}

fn server() -> SecretKey {
    SecretKey::from_slice(&hex::decode(SERVER_KEY).unwrap()).unwrap()
}

fn plaintexts() -> Vec<Vec<u8>> {
    vec![
        Vec::new(),
        b"x".to_vec(),
        CAST_SIG.as_bytes().to_vec(),
        (0..=255u8).collect(),
        vec![0xa5; 5000],
    ]
}

#[test]
fn eciesjs_encrypts_we_decrypt() {
    if !node_available() {
        return;
    }
    let pk = server().public_key();
    let uncompressed = hex::encode(pk.to_encoded_point(false).as_bytes());
    let compressed = hex::encode(pk.to_encoded_point(true).as_bytes());
    let mut ops = Vec::new();
    for p in plaintexts() {
        // eciesjs accepts the receiver key in either form; the message is the same format.
        for key in [&uncompressed, &compressed] {
            ops.push(json!({"op": "encrypt", "key": key, "data": hex::encode(&p)}));
        }
    }
    let results = eciesjs(Value::Array(ops));
    let expected: Vec<Vec<u8>> = plaintexts()
        .into_iter()
        .flat_map(|p| [p.clone(), p])
        .collect();
    assert_eq!(results.len(), expected.len());
    for (result, want) in results.into_iter().zip(expected) {
        let msg = result.unwrap();
        assert_eq!(msg.len(), ecies::OVERHEAD + want.len());
        assert_eq!(ecies::decrypt(&server(), &msg).unwrap(), want);
    }
}

#[test]
fn we_encrypt_eciesjs_decrypts() {
    if !node_available() {
        return;
    }
    let sk_hex = SERVER_KEY;
    let messages: Vec<Vec<u8>> = plaintexts()
        .iter()
        .map(|p| ecies::encrypt(&server().public_key(), p).unwrap())
        .collect();
    let mut ops: Vec<Value> = messages
        .iter()
        .map(|m| json!({"op": "decrypt", "key": sk_hex, "data": hex::encode(m)}))
        .collect();
    // And eciesjs must refuse what we would refuse: a flipped tag bit.
    let mut tampered = messages[2].clone();
    tampered[ecies::EPHEMERAL_KEY_LEN + ecies::NONCE_LEN] ^= 1;
    ops.push(json!({"op": "decrypt", "key": sk_hex, "data": hex::encode(&tampered)}));

    let results = eciesjs(Value::Array(ops));
    for (result, want) in results.iter().zip(plaintexts()) {
        assert_eq!(result.as_ref().unwrap(), &want);
    }
    assert!(
        results.last().unwrap().is_err(),
        "eciesjs accepted a tampered message"
    );
}

/// The purchase path end to end: a page signs, eciesjs encrypts the `0x…`
/// text to the server key, the server recovers the signature.
#[test]
fn user_encrypted_from_eciesjs() {
    if !node_available() {
        return;
    }
    let pk = hex::encode(server().public_key().to_encoded_point(false).as_bytes());
    let ops = json!([{"op": "encrypt", "key": pk, "data": hex::encode(CAST_SIG.as_bytes())}]);
    let msg = eciesjs(ops).remove(0).unwrap();
    let sig = user_encrypted::decrypt_signature(&server(), &msg).unwrap();
    assert_eq!(sig, Signature::from_str(CAST_SIG).unwrap());
}

/// A holder's page can open the NFT payload with standard AES-256-GCM
/// (node's `crypto` here; WebCrypto takes the same nonce || ct || tag split).
#[test]
fn nft_payload_opens_with_node_crypto() {
    if !node_available() {
        return;
    }
    let sig = Signature::from_str(CAST_SIG).unwrap();
    let details = nft_payload::ConnectionDetails {
        hostname: "vm.example.org".into(),
        port: 22,
        username: "alice".into(),
    };
    let payload = nft_payload::encrypt(&sig, &details).unwrap();
    let key = hex::encode(nft_payload::derive_key(&sig));
    let script = format!(
        r#"
        const crypto = require('crypto');
        const key = Buffer.from('{key}', 'hex');
        const p = Buffer.from('{payload}', 'hex');
        const d = crypto.createDecipheriv('aes-256-gcm', key, p.subarray(0, 12));
        d.setAuthTag(p.subarray(p.length - 16));
        const out = Buffer.concat([d.update(p.subarray(12, p.length - 16)), d.final()]);
        process.stdout.write(JSON.stringify(JSON.parse(out.toString('utf8'))));
        "#,
        payload = hex::encode(&payload)
    );
    let dir = std::env::temp_dir().join(format!("bh-chain-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("open-payload.js");
    std::fs::write(&file, script).unwrap();
    let opened = run_node(file.to_str().unwrap(), &Value::Null);
    std::fs::remove_dir_all(&dir).ok();
    assert_eq!(
        opened,
        json!({"hostname": "vm.example.org", "port": 22, "username": "alice"})
    );
}
