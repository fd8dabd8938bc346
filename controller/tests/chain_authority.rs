//! The chain's authority over a purchased VM, through the real `blockhostd` and
//! `bhctl`: the VM is written by the store's chain path (as the watcher writes
//! it), then an operator tries to take it over.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

mod common;

use blockhost_controller::store::chain::BlockRef;
use blockhost_controller::store::{Store, StoreOptions};
use blockhost_crd::{VirtualMachine, VmSource};
use common::*;

const VM: &str = "blockhost-007";
const BUYER: &str = "0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266";
const OTHER: &str = "0x70997970c51812dc3a010c7d01b50e0d17dc79c8";

/// Writes subscription 7's VM into the database at `path` the way the chain
/// watcher does: in a chain batch, as the chain's writer.
fn purchase(path: &std::path::Path) {
    let store = Store::open(path, StoreOptions::default()).unwrap();
    let vm: VirtualMachine = serde_json::from_value(serde_json::json!({
        "apiVersion": "blockhost.io/v1alpha1", "kind": "VirtualMachine",
        "metadata": {"name": VM},
        "spec": {"owner": BUYER, "source": {"chain": {"subscriptionId": 7}},
                 "plan": "basic", "expiresAt": "2030-01-01T00:00:00Z",
                 "resources": {"cores": 1, "memoryMiB": 1024, "diskGiB": 10}}
    }))
    .unwrap();
    let block = BlockRef {
        number: 1,
        hash: [1; 32],
    };
    store
        .chain_commit::<()>(
            "31337:a:b",
            &[],
            block,
            64,
            |_, _| Ok(()),
            |tx| tx.put(&vm).map(|_| ()),
        )
        .unwrap();
    let stored: VirtualMachine = store.get(VM).unwrap().unwrap();
    assert_eq!(stored.spec.source, VmSource::Chain { subscription_id: 7 });
}

#[test]
fn an_operator_cannot_take_over_a_purchased_vm() {
    let dir = tempfile::tempdir().unwrap();
    purchase(&dir.path().join("state.redb"));
    let d = Daemon::start(dir.path());
    let yaml = stdout(&d.bhctl(&["get", "vm", VM, "-o", "yaml"]));
    assert!(yaml.contains(BUYER), "{yaml}");

    // Another owner: refused, naming the field and where to change it.
    let stolen = yaml.replace(BUYER, OTHER);
    let o = bhctl(&d.socket, &["apply", "-f", "-"], Some(&stolen));
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    let err = stderr(&o);
    assert!(err.contains("spec.owner"), "{err}");
    assert!(err.contains("chain"), "{err}");
    let vm = stdout(&d.bhctl(&["get", "vm", VM, "-o", "json"]));
    assert!(vm.contains(BUYER) && !vm.contains(OTHER), "{vm}");

    // Longer expiry or more cores: refused as well.
    let extended = yaml.replace("2030-01-01", "2031-01-01");
    let o = bhctl(&d.socket, &["apply", "-f", "-"], Some(&extended));
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("spec.expiresAt"), "{}", stderr(&o));

    // Suspending it (an abusive VM) and labelling it are the operator's.
    assert!(yaml.contains("powerState: Running"), "{yaml}");
    let suspended = yaml.replace("powerState: Running", "powerState: Suspended");
    let o = bhctl(&d.socket, &["apply", "-f", "-"], Some(&suspended));
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("configured"), "{}", stdout(&o));
    let vm = stdout(&d.bhctl(&["get", "vm", VM, "-o", "json"]));
    let v: serde_json::Value = serde_json::from_str(&vm).unwrap();
    assert_eq!(v["spec"]["powerState"], "Suspended");

    // Deleting it needs --force.
    let o = d.bhctl(&["delete", "vm", VM]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("--force"), "{}", stderr(&o));
    assert!(vm_names(&d).contains(&VM.to_owned()));

    let o = d.bhctl(&["delete", "vm", VM, "--force"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("deleted"), "{}", stdout(&o));
    assert!(!vm_names(&d).contains(&VM.to_owned()));

    // The forced deletion outlives the VM as an event naming who did it.
    // SAFETY: getuid has no preconditions.
    let uid = unsafe { libc::getuid() };
    let o = d.bhctl(&["get", "events", VM, "-o", "json"]);
    let ev: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let forced: Vec<&serde_json::Value> = ev["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["reason"] == "ForceDeleted")
        .collect();
    assert_eq!(forced.len(), 1, "{ev}");
    let msg = forced[0]["message"].as_str().unwrap();
    assert!(msg.contains(&format!("uid {uid}")), "{msg}");
}
