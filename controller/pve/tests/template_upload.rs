//! [`TemplateApi`] against fakepve over HTTPS: storage status and content, the
//! streamed multipart upload (fakepve 0.5.0 takes uploads of ISO content only, so
//! the upload's mechanics are proven with `content=iso`; `bhctl template install`
//! sends the same request with `content=import`), VM creation with `import-from`
//! and conversion to a template.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use blockhost_pve::template::TemplateApi;
use blockhost_pve::{Pve, WaitOptions};
use common::FakePve;
use serde_json::json;

fn wait() -> WaitOptions {
    WaitOptions {
        interval: Duration::from_millis(20),
        max_interval: Duration::from_millis(100),
        deadline: Duration::from_secs(20),
        log_tail: 10,
    }
}

#[tokio::test]
async fn upload_create_and_convert() {
    let mut pve = FakePve::start(&[]);
    let c = pve.client();

    let local = c.storage_status("pve1", "local").await.unwrap();
    assert!(
        local.has_content("iso") && !local.has_content("import"),
        "{local:?}"
    );
    let lvm = c.storage_status("pve1", "local-lvm").await.unwrap();
    assert!(lvm.has_content("images"), "{lvm:?}");

    // 3 MiB in 256 KiB chunks: the progress callback sees the whole file arrive.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("seed.iso");
    let data: Vec<u8> = (0..3 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(&file, &data).unwrap();
    let sent = Arc::new(AtomicU64::new(0));
    let s = sent.clone();
    let upid = c
        .upload(
            "pve1",
            "local",
            "iso",
            &file,
            "seed.iso",
            &"0".repeat(64),
            Arc::new(move |n| s.store(n, Ordering::SeqCst)),
        )
        .await
        .unwrap();
    c.wait_task(&upid, wait()).await.unwrap();
    assert_eq!(sent.load(Ordering::SeqCst), data.len() as u64);
    let isos = c.storage_content("pve1", "local", "iso").await.unwrap();
    assert!(
        isos.iter()
            .any(|v| v.volid == "local:iso/seed.iso" && v.size == Some(data.len() as u64)),
        "{isos:?}"
    );

    // A disk imported from a volume, then a template.
    pve.cmd(
        json!({"op": "storage_content", "storage": "local", "content": "iso,vztmpl,backup,import"}),
    );
    pve.cmd(json!({"op": "store_file", "storage": "local", "name": "guest.qcow2", "size": 4096, "content": "import"}));
    let imports = c.storage_content("pve1", "local", "import").await.unwrap();
    assert!(
        imports
            .iter()
            .any(|v| v.volid == "local:import/guest.qcow2"),
        "{imports:?}"
    );
    let params: Vec<(String, String)> = [
        ("name", "blockhost-guest"),
        ("scsihw", "virtio-scsi-pci"),
        ("scsi0", "local-lvm:0,import-from=local:import/guest.qcow2"),
        ("ide2", "local-lvm:cloudinit"),
        ("agent", "1"),
        ("serial0", "socket"),
        ("vga", "serial0"),
        ("boot", "order=scsi0"),
    ]
    .iter()
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .collect();
    let upid = c.create_vm("pve1", 9100, &params).await.unwrap();
    c.wait_task(&upid, wait()).await.unwrap();
    if let Some(upid) = c.convert_to_template("pve1", 9100).await.unwrap() {
        c.wait_task(&upid, wait()).await.unwrap();
    }
    let conf = c.vm_config("pve1", 9100).await.unwrap();
    assert!(conf.is_template(), "{conf:?}");
    assert_eq!(conf.get("serial0"), Some("socket"));
    let bad: Vec<_> = pve
        .cmd(json!({"op": "error_answers"}))
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a[2] == json!(400))
        .cloned()
        .collect();
    assert!(bad.is_empty(), "{bad:?}");
}
