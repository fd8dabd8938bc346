//! `bhctl template install` against a real fakepve over HTTPS (token, pinned
//! certificate): refused with a clear message while the upload storage lacks
//! `import` content; then creates template 9001 (disk imported with
//! `import-from`, cloud-init drive, agent, serial console, tags, digest); a second
//! run reports it unchanged and sends no write; another image is refused without
//! `--replace` and replaces the template with it.
//!
//! fakepve 0.5.0 refuses uploads with `content=import`, so the test places the
//! image file on the storage itself (as an earlier upload would have) and the
//! install finds it there; the multipart upload itself is tested against
//! fakepve's ISO uploads in the pve crate (`tests/template_upload.rs`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod proxmox_support;

use std::process::{Command, Output};

use proxmox_support::*;
use serde_json::json;

fn install(cfg: &std::path::Path, image: &std::path::Path, extra: &[&str]) -> Output {
    Command::new(common::bhctl_bin())
        .args(["template", "install", "--image"])
        .arg(image)
        .arg("--config")
        .arg(cfg)
        .args(extra)
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn sha256(path: &std::path::Path) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(std::fs::read(path).unwrap()))
}

#[test]
fn template_install_creates_once_then_is_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let mut pve = start_fakepve();
    let cfg = write_config(dir.path(), &pve, &Tuning::default());
    // The script's own 9001 is not a BlockHost template; this test installs its own.
    pve.cmd(json!({"op": "remove_vm", "vmid": TEMPLATE}));
    let image = dir.path().join("guest.qcow2");
    std::fs::write(
        &image,
        b"QFI\xfb not really a qcow2 image, fakepve does not read it",
    )
    .unwrap();
    let sum = sha256(&image);
    let name = format!("blockhost-guest-{}.qcow2", &sum[..12]);

    // fakepve's local storage holds iso,vztmpl,backup: no import.
    let refused = install(&cfg, &image, &[]);
    assert!(!refused.status.success(), "{}", text(&refused));
    let msg = text(&refused);
    assert!(
        msg.contains("storage 'local' on pve1 does not hold 'import' content")
            && msg.contains("--content iso,vztmpl,backup,import"),
        "{msg}"
    );

    pve.cmd(
        json!({"op": "storage_content", "storage": "local", "content": "iso,vztmpl,backup,import"}),
    );
    pve.cmd(json!({"op": "store_file", "storage": "local", "name": name, "size": 64, "content": "import"}));
    let first = install(&cfg, &image, &[]);
    assert!(first.status.success(), "{}", text(&first));
    assert!(
        String::from_utf8_lossy(&first.stdout).contains(&format!(
            "template 9001 created on pve1 from local:import/{name}, already uploaded"
        )),
        "{}",
        text(&first)
    );
    let vm = pve.cmd(json!({"op": "vm", "vmid": TEMPLATE}));
    let conf = &vm["config"];
    assert_eq!(conf["template"], json!(1), "{vm:#}");
    assert_eq!(conf["name"], json!("blockhost-guest"));
    assert_eq!(conf["serial0"], json!("socket"));
    assert_eq!(conf["vga"], json!("serial0"));
    assert_eq!(conf["scsihw"], json!("virtio-scsi-pci"));
    assert_eq!(conf["boot"], json!("order=scsi0"));
    assert!(conf["agent"].to_string().contains('1'), "{conf:#}");
    // PVE names the cloud-init volume `vm-<id>-cloudinit`; fakepve 0.5.0 allocates
    // it like a disk (`vm-<id>-disk-N`), both as a CD-ROM on ide2.
    let ide2 = conf["ide2"].as_str().unwrap();
    assert!(
        ide2.contains("cloudinit") || ide2.ends_with(",media=cdrom"),
        "{conf:#}"
    );
    assert!(
        conf["scsi0"].as_str().unwrap().starts_with("local-lvm:"),
        "{conf:#}"
    );
    assert!(
        conf["tags"].as_str().unwrap().contains("blockhost"),
        "{conf:#}"
    );
    assert!(
        conf["description"]
            .as_str()
            .unwrap()
            .contains(&format!("blockhost-image-sha256={sum}")),
        "{conf:#}"
    );
    let writes_after_first = writes(&mut pve);

    let second = install(&cfg, &image, &[]);
    assert!(second.status.success(), "{}", text(&second));
    assert!(
        String::from_utf8_lossy(&second.stdout).contains(&format!(
            "template 9001 on pve1 unchanged (image sha256 {sum})"
        )),
        "{}",
        text(&second)
    );
    assert_eq!(
        writes(&mut pve),
        writes_after_first,
        "the second run changed something"
    );

    // Another image: refused without --replace, replaces with it.
    let other = dir.path().join("other.qcow2");
    std::fs::write(&other, b"another image").unwrap();
    let other_sum = sha256(&other);
    let other_name = format!("blockhost-guest-{}.qcow2", &other_sum[..12]);
    let no = install(&cfg, &other, &[]);
    assert!(
        !no.status.success() && text(&no).contains("pass --replace"),
        "{}",
        text(&no)
    );
    pve.cmd(json!({"op": "store_file", "storage": "local", "name": other_name, "size": 13, "content": "import"}));
    let yes = install(&cfg, &other, &["--replace"]);
    assert!(yes.status.success(), "{}", text(&yes));
    assert!(
        text(&yes).contains("template 9001 replaced on pve1"),
        "{}",
        text(&yes)
    );
    let vm = pve.cmd(json!({"op": "vm", "vmid": TEMPLATE}));
    assert!(
        vm["config"]["description"]
            .as_str()
            .unwrap()
            .contains(&format!("blockhost-image-sha256={other_sum}")),
        "{vm:#}"
    );
    pve.assert_no_validation_errors();
}

/// Requests that change state (anything but GET).
fn writes(pve: &mut FakePve) -> usize {
    pve.requests().iter().filter(|(m, _)| m != "GET").count()
}
