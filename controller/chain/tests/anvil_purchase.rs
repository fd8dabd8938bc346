//! The chain formats end to end on a real node, with `cast` as the wire and
//! no Rust RPC client: what the daemon will do, minus the daemon.
//!
//! 1. Deploy from the bindings' `BYTECODE` (mock stablecoin, subscriptions, NFT).
//! 2. The buyer (anvil account 0) signs `blockhost-access`; npm eciesjs encrypts
//!    the `0x…` text to the server key, as a signup page would; the buyer
//!    calls `buySubscription` with calldata encoded by the bindings.
//! 3. The `SubscriptionCreated` log from the receipt decodes with the bindings;
//!    `userEncrypted` decrypts to the signature, which recovers to the subscriber.
//! 4. The server mints the NFT with the encrypted connection details and reads
//!    the token id from the receipt; the buyer's signature opens
//!    `getUserEncrypted(tokenId)`.
//!
//! Needs the repo's npm tools (`npm ci`: anvil, cast, eciesjs) and node; skipped
//! with a note without them unless `BLOCKHOST_REQUIRE_TOOLS=1`. anvil listens
//! on 127.0.0.1:18538 only.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/eciesjs.rs"]
mod eciesjs;

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::time::{Duration, Instant};

use alloy_primitives::{Address, B256, Bytes, LogData, U256};
use alloy_sol_types::{SolCall, SolConstructor, SolEvent};
use blockhost_chain::bindings::{AccessCredentialNFT, BlockhostSubscriptions, MockERC20};
use blockhost_chain::{nft_payload, user_encrypted};
use blockhost_crd::WalletAddress;
use blockhost_crd::eip191::{self, Signature};
use k256::SecretKey;
use k256::elliptic_curve::sec1::ToEncodedPoint;
use serde_json::Value;

const PORT: u16 = 18538;
/// anvil's well-known dev keys (never real secrets): 0 = buyer, 1 = server wallet
/// (contract owner); the ECIES server key is dev key 2.
const BUYER_KEY: &str = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80";
const OWNER_KEY: &str = "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d";
const ECIES_KEY: &str = "5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a";

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn tool(name: &str) -> PathBuf {
    repo_root().join(format!(
        "node_modules/@foundry-rs/{name}-linux-amd64/bin/{name}"
    ))
}

fn tools_available() -> bool {
    let missing: Vec<String> = [tool("anvil"), tool("cast")]
        .into_iter()
        .chain([repo_root().join("node_modules/eciesjs/package.json")])
        .filter(|p| !p.exists())
        .map(|p| p.display().to_string())
        .collect();
    let node = Command::new("node")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if missing.is_empty() && node {
        return true;
    }
    assert!(
        std::env::var("BLOCKHOST_REQUIRE_TOOLS").as_deref() != Ok("1"),
        "BLOCKHOST_REQUIRE_TOOLS=1 but missing: {missing:?}, node: {node}"
    );
    eprintln!("skipping: missing {missing:?} (node: {node}); run `npm ci` at the repo root");
    false
}

/// Kills anvil when the test ends, however it ends.
struct Anvil(Child);

impl Drop for Anvil {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_anvil() -> Anvil {
    let child = Command::new(tool("anvil"))
        .args([
            "--host",
            "127.0.0.1",
            "--port",
            &PORT.to_string(),
            "--silent",
        ])
        .stdout(Stdio::null())
        .spawn()
        .expect("start anvil");
    let anvil = Anvil(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", PORT)).is_err() {
        assert!(Instant::now() < deadline, "anvil did not listen on {PORT}");
        std::thread::sleep(Duration::from_millis(50));
    }
    anvil
}

fn cast(args: &[&str]) -> String {
    let rpc = format!("http://127.0.0.1:{PORT}");
    let mut command = Command::new(tool("cast"));
    // Options go before the positional arguments (`--create` takes the rest);
    // `cast wallet …` is offline and takes no RPC URL.
    match args.split_first() {
        Some((&"wallet", _)) | None => command.args(args),
        Some((sub, rest)) => command.arg(sub).args(["--rpc-url", &rpc]).args(rest),
    };
    let out = command.output().expect("run cast");
    assert!(
        out.status.success(),
        "cast {} failed: {}",
        args.iter()
            .map(|a| if a.len() > 80 { &a[..80] } else { a })
            .collect::<Vec<_>>()
            .join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn hex0x(bytes: &[u8]) -> String {
    format!("0x{}", hex::encode(bytes))
}

/// Sends a transaction (raw calldata, or a deployment) and returns its receipt.
fn send(key: &str, to: Option<Address>, data: &[u8]) -> Value {
    let data = hex0x(data);
    let to_string = to.map(|a| a.to_string());
    let mut args = vec!["send", "--private-key", key, "--json"];
    match &to_string {
        Some(to) => args.extend([to.as_str(), data.as_str()]),
        None => args.extend(["--create", data.as_str()]),
    }
    let receipt: Value = serde_json::from_str(&cast(&args)).unwrap();
    assert_eq!(receipt["status"], "0x1", "transaction reverted: {receipt}");
    receipt
}

fn deploy(key: &str, code: &[u8], ctor_args: &[u8]) -> Address {
    let receipt = send(key, None, &[code, ctor_args].concat());
    Address::from_str(receipt["contractAddress"].as_str().unwrap()).unwrap()
}

fn call<C: SolCall>(to: Address, call: &C) -> C::Return {
    let out = cast(&["call", &to.to_string(), &hex0x(&call.abi_encode())]);
    C::abi_decode_returns(&hex::decode(out.trim_start_matches("0x")).unwrap()).unwrap()
}

/// The first log of `E` emitted by `emitter` in a receipt, decoded.
fn event<E: SolEvent>(receipt: &Value, emitter: Address) -> E {
    let log = receipt["logs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| {
            Address::from_str(l["address"].as_str().unwrap()).unwrap() == emitter
                && B256::from_str(l["topics"][0].as_str().unwrap()).unwrap() == E::SIGNATURE_HASH
        })
        .expect("event in receipt");
    let topics = log["topics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| B256::from_str(t.as_str().unwrap()).unwrap())
        .collect();
    let data = hex::decode(log["data"].as_str().unwrap().trim_start_matches("0x")).unwrap();
    E::decode_log_data(&LogData::new_unchecked(topics, data.into())).unwrap()
}

#[test]
fn purchase_to_readable_nft() {
    if !tools_available() {
        return;
    }
    let _anvil = start_anvil();
    let buyer =
        Address::from_str(&cast(&["wallet", "address", "--private-key", BUYER_KEY])).unwrap();

    // 1. Deploy from the bindings' bytecode and configure, as the server wallet.
    let usdc_args = MockERC20::constructorCall {
        name_: "USD Coin".into(),
        symbol_: "USDC".into(),
        decimals_: 6,
    }
    .abi_encode();
    let usdc = deploy(OWNER_KEY, &MockERC20::BYTECODE, &usdc_args);
    let subs = deploy(OWNER_KEY, &BlockhostSubscriptions::BYTECODE, &[]);
    let nft = deploy(OWNER_KEY, &AccessCredentialNFT::BYTECODE, &[]);
    send(
        OWNER_KEY,
        Some(subs),
        &BlockhostSubscriptions::setPrimaryStablecoinCall { stablecoin: usdc }.abi_encode(),
    );
    let receipt = send(
        OWNER_KEY,
        Some(subs),
        &BlockhostSubscriptions::createPlanCall {
            name: "basic".into(),
            pricePerDayUsdCents: U256::from(150u64),
        }
        .abi_encode(),
    );
    let plan: BlockhostSubscriptions::PlanCreated = event(&receipt, subs);
    assert_eq!(plan.planId, U256::from(1u64));

    // 2. The buyer's side: sign, encrypt with eciesjs, fund, approve, buy.
    let server = SecretKey::from_slice(&hex::decode(ECIES_KEY).unwrap()).unwrap();
    let server_pk = hex::encode(server.public_key().to_encoded_point(false).as_bytes());
    let signature_hex = cast(&[
        "wallet",
        "sign",
        "--private-key",
        BUYER_KEY,
        "blockhost-access",
    ]);
    let user_encrypted =
        eciesjs::eciesjs_encrypt(&repo_root(), &server_pk, signature_hex.as_bytes());
    let amount: U256 = call(
        subs,
        &BlockhostSubscriptions::calculatePaymentCall {
            planId: U256::from(1u64),
            days_: U256::from(30u64),
            paymentMethodId: U256::from(1u64),
        },
    );
    assert_eq!(amount, U256::from(45_000_000u64));
    send(
        BUYER_KEY,
        Some(usdc),
        &MockERC20::mintCall { to: buyer, amount }.abi_encode(),
    );
    send(
        BUYER_KEY,
        Some(usdc),
        &MockERC20::approveCall {
            spender: subs,
            value: amount,
        }
        .abi_encode(),
    );
    let receipt = send(
        BUYER_KEY,
        Some(subs),
        &BlockhostSubscriptions::buySubscriptionCall {
            planId: U256::from(1u64),
            days_: U256::from(30u64),
            paymentMethodId: U256::from(1u64),
            userEncrypted: Bytes::from(user_encrypted.clone()),
        }
        .abi_encode(),
    );

    // 3. The server's side: decode the event, recover the signature, check the signer.
    let created: BlockhostSubscriptions::SubscriptionCreated = event(&receipt, subs);
    assert_eq!(created.subscriptionId, U256::from(1u64));
    assert_eq!(created.subscriber, buyer);
    assert_eq!(created.paidAmount, amount);
    assert_eq!(created.paymentToken, usdc);
    assert_eq!(created.userEncrypted.as_ref(), user_encrypted.as_slice());
    let signature = user_encrypted::decrypt_signature(&server, &created.userEncrypted).unwrap();
    assert_eq!(signature, Signature::from_str(&signature_hex).unwrap());
    let subscriber = WalletAddress::from_bytes(created.subscriber.into_array());
    eip191::verify(b"blockhost-access", &signature, &subscriber).unwrap();

    // 4. Mint the credential; the id comes from the receipt, not totalSupply.
    let details = nft_payload::ConnectionDetails {
        hostname: "blockhost-001.example.net".into(),
        port: 22,
        username: "user".into(),
    };
    let payload = nft_payload::encrypt(&signature, &details).unwrap();
    let receipt = send(
        OWNER_KEY,
        Some(nft),
        &AccessCredentialNFT::mintCall {
            to: created.subscriber,
            userEncrypted: Bytes::from(payload),
        }
        .abi_encode(),
    );
    let minted: AccessCredentialNFT::CredentialMinted = event(&receipt, nft);
    let transfer: AccessCredentialNFT::Transfer = event(&receipt, nft);
    assert_eq!(minted.tokenId, U256::ZERO, "ids from 0");
    assert_eq!(transfer.tokenId, minted.tokenId);
    assert_eq!(minted.recipient, buyer);

    // The holder re-signs and opens the payload read back from the chain.
    let stored: Bytes = call(
        nft,
        &AccessCredentialNFT::getUserEncryptedCall {
            tokenId: minted.tokenId,
        },
    );
    let again = Signature::from_str(&cast(&[
        "wallet",
        "sign",
        "--private-key",
        BUYER_KEY,
        "blockhost-access",
    ]))
    .unwrap();
    assert_eq!(nft_payload::decrypt(&again, &stored).unwrap(), details);
}
