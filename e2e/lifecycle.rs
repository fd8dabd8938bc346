//! Whole-system tests: anvil + fakepve + blockhostd, the user acting through
//! foundry's `cast` and npm `eciesjs` only (see `support.rs`).
//!
//! - `subscription_lifecycle`: contracts deployed and a plan created with
//!   `bhctl` → buy → VM Running in PVE → NFT owned by the buyer → the buyer
//!   decrypts host, port and user with `bhctl nft decrypt` → NFT transfer moves access →
//!   expiry suspends → extension resumes → cancel deletes; a second purchase
//!   expires past its grace period and is deleted.
//! - `reorged_purchase_never_provisions`: a purchase reverted by a reorg before
//!   its confirmations leaves no trace.
//! - `crashes_lose_and_duplicate_nothing`: SIGKILLs during provisioning and
//!   during minting, and 50 blocks of purchases mined while the daemon is down:
//!   afterwards exactly one VM and one NFT per subscription.
//!
//! Run: `cargo test -p blockhost-controller --test e2e` (part of the README's
//! test command). Needs `scripts/setup.sh`'s tools; skipped with a note
//! without them unless `BLOCKHOST_REQUIRE_TOOLS=1`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../controller/tests/chain_support/mod.rs"]
mod chain_support;
#[path = "../controller/tests/common/mod.rs"]
mod common;
#[path = "../controller/chain/tests/support/eciesjs.rs"]
mod eciesjs;
#[path = "../controller/tests/proxmox_support/mod.rs"]
mod proxmox_support;
mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use blockhost_chain::nft_payload;
use blockhost_crd::eip191::Signature;
use serde_json::json;
use support::*;

const DAY: u64 = 86_400;

fn signature(hex0x: &str) -> Signature {
    let b: [u8; 65] = hex::decode(hex0x.trim_start_matches("0x"))
        .unwrap()
        .try_into()
        .unwrap();
    Signature::from_bytes(b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_lifecycle() {
    if !tools_available() {
        return;
    }
    let rig = Rig::start(18680, 0).await;

    // The operator creates a plan (server wallet); the daemon mirrors it.
    assert_eq!(rig.create_plan("basic", 150), 1);
    rig.wait(30, "plan-1 mirrored", || {
        rig.item("plans", "plan-1")
            .ok_or_else(|| "absent".to_owned())
    });

    // The user: stablecoin, approval, purchase with an eciesjs payload — all cast.
    rig.fund(USER);
    rig.buy(USER, 30);
    let vm = rig.wait_phase("blockhost-001", "Running");
    let in_pve = rig.pve_vm("blockhost-001").expect("VM in fakepve");
    assert_eq!(in_pve["status"], json!("running"));
    assert_eq!(vm["spec"]["owner"], json!(USER));

    // The NFT: minted to the buyer, id read from the receipt.
    let token = rig.wait_token("blockhost-001");
    assert_eq!(token, 0);
    assert_eq!(rig.owner_of(token), USER);
    assert_eq!(rig.total_supply(), 1);

    // The buyer re-signs the public secret; `bhctl nft decrypt` shows the details.
    let details = rig.decrypt(USER, token).unwrap();
    let vm = rig.wait(30, "token id on the VM", || {
        let v = rig.item("vms", "blockhost-001").unwrap();
        v["status"]["nftTokenId"]
            .as_u64()
            .map(|_| v.clone())
            .ok_or_else(|| "no token on the VM yet".to_owned())
    });
    let ipv6 = vm["status"]["addresses"]["ipv6"].as_str().unwrap();
    assert_eq!(details["hostname"], json!(ipv6));
    assert_eq!(details["port"], json!(22));
    assert_eq!(details["username"], vm["spec"]["guestUser"]);
    // The same payload through the library, and someone else's signature opens nothing.
    let lib = nft_payload::decrypt(
        &signature(&rig.sign_secret(USER)),
        &rig.user_encrypted(token),
    )
    .unwrap();
    assert_eq!(json!(lib.hostname), details["hostname"]);
    let refused = rig.decrypt(FRIEND, token).unwrap_err();
    assert!(refused.contains("does not decrypt token 0"), "{refused}");

    // The access file in the guest names the buyer and the token.
    let vmid = in_pve["vmid"].as_u64().unwrap();
    let files = rig.wait(30, "access file with the token id", || {
        let f = rig.access_files(vmid);
        match f.last() {
            Some(last) if last.contains("\"nft_token_id\": 0") => Ok(f),
            _ => Err(format!("{f:?}")),
        }
    });
    assert!(files.last().unwrap().contains(USER), "{files:?}");

    // Transfer: the friend may log in, the buyer may not.
    rig.send(
        USER,
        &rig.c.nft.clone(),
        "transferFrom(address,address,uint256)",
        &[USER, FRIEND, "0"],
    );
    rig.wait(30, "owner changed", || {
        let v = rig.item("vms", "blockhost-001").unwrap();
        (v["spec"]["owner"] == json!(FRIEND))
            .then_some(())
            .ok_or_else(|| format!("owner {}", v["spec"]["owner"]))
    });
    rig.wait(30, "access file rewritten for the new holder", || {
        let f = rig.access_files(vmid);
        match f.last() {
            Some(last) if last.contains(FRIEND) && !last.contains(USER) => Ok(()),
            _ => Err(format!("{f:?}")),
        }
    });

    // Past expiry: suspended (shut down, disk kept).
    rig.travel(31 * DAY);
    rig.wait_phase("blockhost-001", "Suspended");
    rig.wait(30, "stopped in PVE", || {
        let v = rig.pve_vm("blockhost-001").unwrap();
        (v["status"] == json!("stopped"))
            .then_some(())
            .ok_or_else(|| format!("{}", v["status"]))
    });

    // Anyone may extend (here the friend, now the holder): running again.
    rig.fund(FRIEND);
    rig.send(
        FRIEND,
        &rig.c.subs.clone(),
        "extendSubscription(uint256,uint256,uint256)",
        &["1", "30", "1"],
    );
    rig.wait_phase("blockhost-001", "Running");

    // The operator cancels: the VM is deleted from PVE.
    rig.send(
        SERVER,
        &rig.c.subs.clone(),
        "cancelSubscription(uint256)",
        &["1"],
    );
    rig.wait(60, "blockhost-001 deleted", || {
        match (
            rig.item("vms", "blockhost-001"),
            rig.pve_vm("blockhost-001"),
        ) {
            (None, None) => Ok(()),
            (a, b) => Err(format!(
                "bhctl {:?} pve {:?}",
                a.map(|v| v["status"].clone()),
                b.map(|v| v["status"].clone())
            )),
        }
    });

    // A second purchase runs out and its grace period (1 day here) ends: deleted.
    rig.buy(USER, 1);
    rig.wait_phase("blockhost-002", "Running");
    assert_eq!(rig.wait_token("blockhost-002"), 1);
    rig.travel(2 * DAY);
    rig.wait_phase("blockhost-002", "Suspended");
    rig.travel(2 * DAY);
    rig.wait(60, "blockhost-002 deleted after grace", || {
        match (
            rig.item("vms", "blockhost-002"),
            rig.pve_vm("blockhost-002"),
        ) {
            (None, None) => Ok(()),
            (a, b) => Err(format!(
                "bhctl {:?} pve {:?}",
                a.map(|v| v["status"].clone()),
                b.map(|v| v["status"].clone())
            )),
        }
    });
    rig.assert_pve_accepted_everything();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reorged_purchase_never_provisions() {
    if !tools_available() {
        return;
    }
    let confirmations = 2;
    let rig = Rig::start(18681, confirmations).await;
    assert_eq!(rig.create_plan("basic", 150), 1);
    rig.fund(USER);
    rig.mine(confirmations);
    rig.wait(30, "plan-1 mirrored", || {
        rig.item("plans", "plan-1")
            .ok_or_else(|| "absent".to_owned())
    });

    // A purchase, one block on top (not yet confirmed), then a reorg drops it.
    let snap = rig.cast(&["rpc", "evm_snapshot"]);
    rig.buy(USER, 30);
    rig.mine(1);
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        rig.items("subscriptions").is_empty(),
        "unconfirmed purchase applied"
    );
    rig.cast(&["rpc", "evm_revert", snap.trim_matches('"')]);
    rig.mine(confirmations + 3);
    std::thread::sleep(Duration::from_millis(1500));
    assert!(rig.items("subscriptions").is_empty());
    assert!(rig.items("vms").is_empty());

    // The daemon was watching all along: a real purchase is served.
    rig.buy(USER, 30);
    rig.mine(confirmations);
    rig.wait_phase("blockhost-001", "Running");
    assert_eq!(rig.pve_vms().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashes_lose_and_duplicate_nothing() {
    if !tools_available() {
        return;
    }
    let mut rig = Rig::start(18682, 0).await;
    assert_eq!(rig.create_plan("basic", 150), 1);
    rig.fund(USER);

    // SIGKILL while provisioning: purchases land, the daemon dies at varying
    // points of cloning/configuring/starting/minting, and restarts.
    let mut subs = 0;
    for (round, delay_ms) in [150u64, 400, 900].into_iter().enumerate() {
        for _ in 0..2 {
            rig.buy(USER, 30);
            subs += 1;
        }
        std::thread::sleep(Duration::from_millis(delay_ms));
        rig.kill();
        eprintln!("round {round}: killed after {delay_ms} ms");
        rig.restart();
    }

    // SIGKILL while mints are in flight: automine off keeps them pending.
    rig.cast(&["rpc", "evm_setAutomine", "false"]);
    for _ in 0..2 {
        rig.buy_pending(USER, 30);
        subs += 1;
    }
    rig.mine(1);
    let pending = rig.wait(60, "mints in the mempool", || {
        let p = rig.pending_from(SERVER);
        (p.len() >= 2)
            .then_some(p)
            .ok_or_else(|| "waiting".to_owned())
    });
    rig.kill();
    // The node loses one of them; the other is mined while the daemon is down.
    rig.cast(&["rpc", "anvil_dropTransaction", &pending[0]]);
    rig.mine(1);
    rig.cast(&["rpc", "evm_setAutomine", "true"]);

    // While down: 50 blocks, purchases among them.
    for _ in 0..5 {
        rig.buy(USER, 30);
        subs += 1;
        rig.mine(9);
    }
    rig.restart();

    // Every subscription: one VM in PVE, Running, one NFT owned by the buyer.
    let names: Vec<String> = (1..=subs).map(|i| format!("blockhost-{i:03}")).collect();
    for n in &names {
        rig.wait_phase(n, "Running");
    }
    let mut tokens = BTreeSet::new();
    for n in &names {
        let t = rig.wait_token(n);
        assert_eq!(rig.owner_of(t), USER);
        assert!(tokens.insert(t), "token {t} given twice");
    }
    assert_eq!(rig.total_supply(), subs, "one NFT per subscription");
    let in_pve: Vec<String> = rig
        .pve_vms()
        .iter()
        .map(|v| v["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(in_pve.len() as u64, subs, "{in_pve:?}");
    for n in &names {
        assert!(rig.pve_vm(n).is_some(), "{n} missing in PVE");
    }
    rig.assert_pve_accepted_everything();
}
