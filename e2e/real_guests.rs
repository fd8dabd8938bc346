//! Whole-system tests on real guests: anvil + the Proxmox stand-in in its
//! real-guest mode (qemu VMs booted from the guest image) + blockhostd; the
//! buyer acts with foundry's `cast` and npm `eciesjs` only, and logs in over
//! SSH at the address their NFT names by signing the PAM module's message
//! with `cast wallet sign` (see `guests_support.rs`).
//!
//! - `purchase_to_wallet_login_and_back`: purchase → the VM boots → the
//!   access file arrives through the real guest agent → `bhctl nft decrypt` →
//!   wallet SSH login at the NFT's hostname, `id` and `hostname` from inside →
//!   NFT transfer: the old holder is refused, the new one logs in → expiry
//!   shuts the VM down with its disk kept → renewal boots the same disk (a
//!   file written before is still there) → the grace period ends: VM and
//!   overlay gone from the stand-in.
//! - `sigkill_while_three_provision`: three purchases, blockhostd SIGKILLed
//!   while they provision, restarted: exactly three VMs boot (each logs in)
//!   and three NFTs are minted.
//! - `the_signup_page_shows_details_that_log_in`: the signup page in Chromium
//!   buys; the connection details it shows after the real boot log in.
//! - `a_vm_that_takes_a_neighbours_address_cannot_reach_the_gateway`: the
//!   stand-in enforces the VM firewall blockhostd set (nftables on the tap);
//!   inside the VM (through its agent) a connection to the gateway from its
//!   own address works, one from a neighbour's address it added does not.
//!
//! Run: `cargo test -p blockhost-controller --test e2e_guests` (part of the
//! README's test command) with `BLOCKHOST_GUEST_IMAGE` naming the guest image.
//! As root (namespaces, taps). Under TCG each boot takes about a minute on an
//! idle machine, several while the cores are busy.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../controller/tests/chain_support/mod.rs"]
mod chain_support;
#[path = "../controller/tests/common/mod.rs"]
mod common;
#[path = "../controller/chain/tests/support/eciesjs.rs"]
mod eciesjs;
mod guests_support;
#[path = "../controller/tests/proxmox_support/mod.rs"]
mod proxmox_support;
mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use common::repo_root;
use guests_support::*;
use serde_json::json;
use support::*;

const DAY: u64 = 86_400;
/// A boot under TCG on busy shared cores, plus cloud-init and sshd.
const BOOT_SECS: u64 = 900;

/// The VM's address, port and user as the NFT carries them (decrypted by the holder).
fn nft_details(g: &GuestRig, who: &str, token: u64) -> (String, String) {
    let d = g.decrypt(who, token).unwrap();
    assert_eq!(d["port"], json!(22), "{d}");
    (
        d["hostname"].as_str().unwrap().to_owned(),
        d["username"].as_str().unwrap().to_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a VM suite (TCG boots, minutes each): scripts/test.sh runs it after the guest image test"]
async fn purchase_to_wallet_login_and_back() {
    if !guest_tools_available() {
        return;
    }
    let g = GuestRig::start("lifecycle", 18690, 1024).await;
    assert_eq!(g.create_plan("basic", 150), 1);
    g.wait(30, "plan-1 mirrored", || {
        g.item("plans", "plan-1").ok_or_else(|| "absent".to_owned())
    });

    // The buyer: stablecoin, approval, purchase with an eciesjs payload (cast).
    g.fund(USER);
    g.buy(USER, 30);

    // The VM boots from the template's image in qemu; blockhostd sees it Running
    // once the real guest agent took the access file.
    let vm = g.wait(
        BOOT_SECS,
        "blockhost-001 Running (booted, access file written)",
        || match g.item("vms", "blockhost-001") {
            Some(v) if v["status"]["phase"] == json!("Running") => Ok(v),
            Some(v) => Err(format!(
                "phase {} lastError {}",
                v["status"]["phase"], v["status"]["lastError"]
            )),
            None => Err("absent".into()),
        },
    );
    let token = g.wait_token_for("blockhost-001", 120);
    assert_eq!(g.owner_of(token), USER);
    let guests = g.guests();
    assert_eq!(guests.len(), 1, "{guests:?}");
    assert_eq!(guests[0]["running"], json!(true), "{guests:?}");
    let vmid = guests[0]["vmid"].as_u64().unwrap();
    let pve = g.pve_vm("blockhost-001").unwrap();
    assert_eq!(pve["status"], json!("running"));
    assert_eq!(pve["vmid"].as_u64(), Some(vmid));

    // The buyer decrypts the NFT and logs in at its hostname with a wallet signature.
    let (host, user) = nft_details(&g, USER, token);
    assert_eq!(vm["status"]["addresses"]["ipv6"], json!(host));
    let out = g.wait_login(
        BOOT_SECS,
        USER_INDEX,
        &user,
        &host,
        "id -un; hostname; echo kept-across-boots > ~/marker",
    );
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some(user.as_str()), "{out}");
    assert_eq!(lines.next(), Some("blockhost-001"), "{out}");
    // The access file came through the guest agent and names the holder; the
    // token id follows once the minter recorded it (the file is first written
    // before the mint, so that the VM is usable as soon as it boots).
    let token_line = format!("\"nft_token_id\": {token}");
    g.wait(120, "the access file in the VM names the token", || {
        // The file is root 0600 in the guest; the VM's user has sudo (cloud-init).
        let o = g.ssh(
            USER_INDEX,
            &user,
            &host,
            "sudo -n cat /etc/blockhost/access.json",
        );
        let text = String::from_utf8_lossy(&o.stdout).into_owned();
        if o.status.success() && text.contains(USER) && text.contains(&token_line) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_secs(1));
        Err(format!(
            "{text} {}",
            String::from_utf8_lossy(&o.stderr).trim()
        ))
    });
    // IPv4 reaches the same VM.
    let v4 = vm["status"]["addresses"]["ipv4"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(g.sshd_listens(&v4), "sshd not reachable at {v4}");

    // Transfer: within the confirmations plus one resync the friend logs in and
    // the old holder is refused.
    g.send(
        USER,
        &g.c.nft.clone(),
        "transferFrom(address,address,uint256)",
        &[USER, FRIEND, &token.to_string()],
    );
    // The NFT's payload stays encrypted under the key of the buyer's signature
    // (the server never sees one from the new holder), so the seller hands the
    // connection details over with the token; what the chain moves is the right
    // to log in.
    assert!(
        g.decrypt(FRIEND, token).is_err(),
        "the new holder's own signature decrypted a payload made for the buyer's"
    );
    g.wait_login(60, FRIEND_INDEX, &user, &host, "id -un");
    let refused = g.ssh(USER_INDEX, &user, &host, "id -un");
    assert!(!refused.status.success(), "the old holder still logs in");

    // Expiry: ACPI shutdown, disk kept.
    g.travel(31 * DAY);
    g.wait(300, "blockhost-001 Suspended and stopped", || {
        let v = g.item("vms", "blockhost-001").unwrap();
        let p = g.pve_vm("blockhost-001").unwrap();
        (v["status"]["phase"] == json!("Suspended") && p["status"] == json!("stopped"))
            .then_some(())
            .ok_or_else(|| format!("phase {} pve {}", v["status"]["phase"], p["status"]))
    });
    let guests = g.guests();
    assert_eq!(guests[0]["running"], json!(false), "{guests:?}");
    let overlays = guests[0]["overlay_files"].as_array().unwrap().clone();
    assert!(!overlays.is_empty(), "the stopped VM lost its disk");
    let events = guests[0]["events"].to_string();
    assert!(events.contains("acpi-powerdown"), "{events}");

    // Renewal (by the new holder): the same disk boots again.
    g.fund(FRIEND);
    g.send(
        FRIEND,
        &g.c.subs.clone(),
        "extendSubscription(uint256,uint256,uint256)",
        &["1", "30", "1"],
    );
    let out = g.wait_login(BOOT_SECS, FRIEND_INDEX, &user, &host, "cat ~/marker");
    assert_eq!(out.trim(), "kept-across-boots");
    assert_eq!(g.guests()[0]["overlay_files"], json!(overlays));

    // Expiry again, and the grace period (1 day) ends: VM and disk gone.
    g.travel(31 * DAY);
    g.wait(300, "blockhost-001 Suspended", || {
        let v = g.item("vms", "blockhost-001").unwrap();
        (v["status"]["phase"] == json!("Suspended"))
            .then_some(())
            .ok_or_else(|| format!("phase {}", v["status"]["phase"]))
    });
    g.travel(2 * DAY);
    g.wait(300, "blockhost-001 and its disk deleted", || {
        let gs = g.guests();
        let files = gs[0]["overlay_files"].as_array().unwrap().len();
        match (
            g.item("vms", "blockhost-001"),
            g.pve_vm("blockhost-001"),
            files,
        ) {
            (None, None, 0) => Ok(()),
            (a, b, n) => Err(format!(
                "bhctl {:?} pve {:?} overlay files {n}",
                a.map(|v| v["status"]["phase"].clone()),
                b.map(|v| v["status"].clone())
            )),
        }
    });
    g.assert_pve_accepted_everything();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a VM suite (TCG boots, minutes each): scripts/test.sh runs it after the guest image test"]
async fn sigkill_while_three_provision() {
    if !guest_tools_available() {
        return;
    }
    let mut g = GuestRig::start("sigkill", 18691, 768).await;
    assert_eq!(g.create_plan("basic", 150), 1);
    g.wait(30, "plan-1 mirrored", || {
        g.item("plans", "plan-1").ok_or_else(|| "absent".to_owned())
    });
    g.fund(USER);
    for _ in 0..3 {
        g.buy(USER, 30);
    }
    // Killed while cloning, configuring, starting (qemu processes come up).
    g.wait(120, "a VM in the stand-in", || {
        (!g.pve_vms().is_empty())
            .then_some(())
            .ok_or_else(|| "none yet".to_owned())
    });
    std::thread::sleep(Duration::from_millis(300));
    g.kill();
    g.restart();

    let names: Vec<String> = (1..=3).map(|i| format!("blockhost-{i:03}")).collect();
    let mut tokens = BTreeSet::new();
    let mut by_name = Vec::new();
    for n in &names {
        let t = g.wait_token_for(n, BOOT_SECS);
        assert_eq!(g.owner_of(t), USER);
        assert!(tokens.insert(t), "token {t} given twice");
        by_name.push((n, t));
    }
    assert_eq!(g.total_supply(), 3, "one NFT per subscription");
    // Every VM boots and lets the buyer in (they boot at the same time).
    for (n, t) in by_name {
        let (host, user) = nft_details(&g, USER, t);
        let out = g.wait_login(BOOT_SECS, USER_INDEX, &user, &host, "hostname");
        assert_eq!(out.trim(), n.as_str());
    }
    let guests = g.guests();
    assert_eq!(guests.len(), 3, "exactly three qemu guests: {guests:?}");
    assert!(
        guests.iter().all(|x| x["running"] == json!(true)),
        "{guests:?}"
    );
    assert_eq!(g.pve_vms().len(), 3);
    g.assert_pve_accepted_everything();
}

/// The signup page in Chromium (`signup/tests/signup_page.mjs` in its
/// purchase-only mode, an injected EIP-1193 wallet for anvil's dev account 5):
/// it buys, waits through the real boot and the mint, and shows the decrypted
/// connection details; those details, and nothing else, are what the test then
/// logs in with.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a VM suite (TCG boots, minutes each): scripts/test.sh runs it after the guest image test"]
async fn the_signup_page_shows_details_that_log_in() {
    if !guest_tools_available() {
        return;
    }
    let root = repo_root();
    for need in [
        std::path::PathBuf::from("/usr/bin/chromium"),
        root.join("node_modules/playwright-core"),
    ] {
        if !need.exists() {
            assert!(
                std::env::var("BLOCKHOST_REQUIRE_TOOLS").as_deref() != Ok("1"),
                "BLOCKHOST_REQUIRE_TOOLS=1 but {} is missing (scripts/setup.sh installs it)",
                need.display()
            );
            eprintln!("skipping: {} is missing", need.display());
            return;
        }
    }
    let page_addr = "127.0.0.1:18697";
    let g = GuestRig::start_with_signup("signup", 18696, 1024, Some(page_addr)).await;
    assert_eq!(g.create_plan("basic", 150), 1);
    g.wait(30, "plan-1 mirrored", || {
        g.item("plans", "plan-1").ok_or_else(|| "absent".to_owned())
    });
    // The page's buyer holds stablecoin and no allowance: the page approves.
    g.send(
        FRIEND,
        &g.c.usdc.clone(),
        "mint(address,uint256)",
        &[FRIEND, "1000000000"],
    );
    let shots = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("real-guests-signup");
    std::fs::create_dir_all(&shots).unwrap();
    let args = json!({
        "url": format!("http://{page_addr}/"),
        "rpc": g.anvil.url,
        "shots": shots,
        "buyer": FRIEND,
        "purchaseOnly": true,
        "purchaseTimeoutMs": BOOT_SECS * 1000,
    });
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("node")
            .arg(repo_root().join("signup/tests/signup_page.mjs"))
            .arg(args.to_string())
            .current_dir(repo_root())
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "browser script failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let buy = &seen["purchase"];
    assert_eq!(buy["state"], "done", "{seen}");
    assert_eq!(seen["foreignRequests"], json!([]), "{seen}");
    let shown = &buy["details"];
    let host = shown["host"].as_str().unwrap().to_owned();
    let user = shown["user"].as_str().unwrap().to_owned();
    assert_eq!(shown["port"], json!("22"), "{seen}");
    eprintln!(
        "the page shows {user}@{host} (screenshots in {})",
        shots.display()
    );
    // The page's details are the NFT's (the holder decrypts the same).
    let token = g.wait_token_for("blockhost-001", 60);
    let d = g.decrypt(FRIEND, token).unwrap();
    assert_eq!(
        (d["hostname"].as_str(), d["username"].as_str()),
        (Some(host.as_str()), Some(user.as_str()))
    );
    let out = g.wait_login(BOOT_SECS, FRIEND_INDEX, &user, &host, "id -un; hostname");
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        [user.as_str(), "blockhost-001"],
        "{out}"
    );
    g.assert_pve_accepted_everything();
}

/// Runs `script` with `sh -c` inside the VM as root (through its guest agent);
/// returns (exit code, stdout + stderr).
fn in_guest(g: &GuestRig, vmid: u64, script: &str) -> (i64, String) {
    let r = g.pve.lock().unwrap().cmd(json!({
        "op": "guest_exec", "vmid": vmid, "argv": ["sh", "-c", script], "timeout": 60
    }));
    (
        r["exitcode"].as_i64().unwrap_or(-1),
        format!(
            "{}{}",
            r["out"].as_str().unwrap_or_default(),
            r["err"].as_str().unwrap_or_default()
        ),
    )
}

/// A TCP connect from `src` to the gateway's port 8080, from inside the guest
/// (python3 is in every image: cloud-init needs it); prints OK or FAIL.
fn connect_from(src: &str) -> String {
    format!(
        "python3 -c 'import socket; s = socket.socket(); s.settimeout(5); s.bind((\"{src}\", 0)); \
         s.connect((\"10.20.0.1\", 8080)); print(\"OK\")' 2>/dev/null || echo FAIL"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a VM suite (TCG boots, minutes each): scripts/test.sh runs it after the guest image test"]
async fn a_vm_that_takes_a_neighbours_address_cannot_reach_the_gateway() {
    if !guest_tools_available() {
        return;
    }
    let g = GuestRig::start("isolation", 18693, 1024).await;
    // Proxmox enforces no VM firewall while the datacenter's is off.
    g.pve
        .lock()
        .unwrap()
        .cmd(json!({"op": "cluster_firewall", "enable": true}));
    assert_eq!(g.create_plan("basic", 150), 1);
    g.wait(30, "plan-1 mirrored", || {
        g.item("plans", "plan-1").ok_or_else(|| "absent".to_owned())
    });
    g.fund(USER);
    g.buy(USER, 30);
    let vm = g.wait(BOOT_SECS, "blockhost-001 Running", || {
        match g.item("vms", "blockhost-001") {
            Some(v) if v["status"]["phase"] == json!("Running") => Ok(v),
            Some(v) => Err(format!(
                "phase {} lastError {}",
                v["status"]["phase"], v["status"]["lastError"]
            )),
            None => Err("absent".into()),
        }
    });
    let vmid = vm["status"]["vmid"].as_u64().unwrap();
    let own = vm["status"]["addresses"]["ipv4"]
        .as_str()
        .unwrap()
        .to_owned();
    // The neighbour's address: the next one of the pool, not this VM's.
    let last: u8 = own.rsplit('.').next().unwrap().parse().unwrap();
    let neighbour = format!("10.20.0.{}", last + 1);
    let fw = vm["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == json!("Firewall"))
        .cloned();
    assert_eq!(
        fw.as_ref().map(|c| &c["status"]),
        Some(&json!("True")),
        "{fw:?}"
    );

    // Something to reach on the gateway: a listener in the node's namespace.
    let _listener = KillOnDrop(std::process::Command::new("ip")
        .args(["netns", "exec", &g.netns, "python3", "-c"])
        .arg(
            "import socket\ns = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
             s.bind(('10.20.0.1', 8080)); s.listen(8)\nwhile True: s.accept()[0].close()\n",
        )
        .spawn()
        .unwrap());
    std::thread::sleep(Duration::from_secs(1));

    // From its own address the VM reaches the gateway.
    let (_, out) = in_guest(&g, vmid, &connect_from(&own));
    assert_eq!(out.trim(), "OK", "own address {own}: {out}");
    // It takes its neighbour's address too: nothing sent from it gets through.
    let (code, out) = in_guest(
        &g,
        vmid,
        &format!(
            "dev=$(ip -o -4 addr show | awk '$4 ~ /^{own}\\// {{print $2}}'); \
             ip addr add {neighbour}/24 dev $dev && ip -o -4 addr show dev $dev"
        ),
    );
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(&neighbour), "{out}");
    let (_, out) = in_guest(&g, vmid, &connect_from(&neighbour));
    assert_eq!(
        out.trim(),
        "FAIL",
        "spoofed {neighbour} reached the gateway: {out}"
    );
    // And its own address still works beside it.
    let (_, out) = in_guest(&g, vmid, &connect_from(&own));
    assert_eq!(out.trim(), "OK", "own address {own} after the spoof: {out}");
    // The control: without the stand-in's rules the same spoof gets through, so
    // it was the VM's firewall that stopped it.
    let o = std::process::Command::new("ip")
        .args([
            "netns", "exec", &g.netns, "nft", "delete", "table", "bridge", "pvefw",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (_, out) = in_guest(&g, vmid, &connect_from(&neighbour));
    assert_eq!(out.trim(), "OK", "without the firewall {neighbour}: {out}");
}

/// A child process killed when the test ends, passed or not.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
