//! What installing the guest template needs from Proxmox VE, beyond [`Pve`]:
//! a storage's status and content, uploading a disk image (`content=import`,
//! PVE 8.4+), creating a VM (`POST /nodes/{node}/qemu`, its disk imported with
//! `import-from`) and converting it to a template.
//!
//! Kept apart from the reconciler's [`Pve`] trait: only `bhctl template install`
//! uses these, and the in-process fake does not model storages.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use reqwest::Method;
use serde::Deserialize;

use crate::api::Pve;
use crate::client::PveClient;
use crate::de;
use crate::error::{Error, Result};
use crate::types::VmId;
use crate::upid::Upid;

/// `GET /nodes/{node}/storage/{storage}/status`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct StorageStatus {
    /// Storage type (`dir`, `lvmthin`, `zfspool`, …).
    #[serde(rename = "type", default)]
    pub storage_type: String,
    /// Content types, comma separated (`images,iso,import`).
    #[serde(default)]
    pub content: String,
    /// Active on this node.
    #[serde(default, deserialize_with = "de::bool")]
    pub active: bool,
    /// Free bytes, when PVE reports it.
    #[serde(default, deserialize_with = "de::opt_int")]
    pub avail: Option<u64>,
}

impl StorageStatus {
    /// True if the storage holds `content` (e.g. `import`, `images`).
    pub fn has_content(&self, content: &str) -> bool {
        self.content.split(',').any(|c| c.trim() == content)
    }
}

/// One entry of `GET /nodes/{node}/storage/{storage}/content`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct StorageVolume {
    /// `storage:content/name`, e.g. `local:import/blockhost-guest.qcow2`.
    pub volid: String,
    /// Size in bytes.
    #[serde(default, deserialize_with = "de::opt_int")]
    pub size: Option<u64>,
}

/// Called with the bytes sent so far during an upload.
pub type UploadProgress = Arc<dyn Fn(u64) + Send + Sync>;

/// Proxmox VE operations for installing a VM template.
pub trait TemplateApi: Pve {
    /// `GET /nodes/{node}/storage/{storage}/status`.
    fn storage_status(
        &self,
        node: &str,
        storage: &str,
    ) -> impl Future<Output = Result<StorageStatus>> + Send;

    /// `GET /nodes/{node}/storage/{storage}/content?content=…`.
    fn storage_content(
        &self,
        node: &str,
        storage: &str,
        content: &str,
    ) -> impl Future<Output = Result<Vec<StorageVolume>>> + Send;

    /// `POST /nodes/{node}/storage/{storage}/upload` (multipart; the file in field
    /// `filename`, with its SHA-256 for PVE to verify). Answers with the copy task.
    // One call of PVE's upload endpoint: every argument is one of its fields.
    #[allow(clippy::too_many_arguments)]
    fn upload(
        &self,
        node: &str,
        storage: &str,
        content: &str,
        file: &Path,
        name: &str,
        sha256: &str,
        progress: UploadProgress,
    ) -> impl Future<Output = Result<Upid>> + Send;

    /// `POST /nodes/{node}/qemu` with `vmid` and `params` (the VM's configuration).
    fn create_vm(
        &self,
        node: &str,
        vmid: VmId,
        params: &[(String, String)],
    ) -> impl Future<Output = Result<Upid>> + Send;

    /// `POST /nodes/{node}/qemu/{vmid}/template`. PVE 7+ answers with a task, older
    /// versions convert synchronously (`None`).
    fn convert_to_template(
        &self,
        node: &str,
        vmid: VmId,
    ) -> impl Future<Output = Result<Option<Upid>>> + Send;
}

/// How long one upload may take: images are hundreds of MiB over a WAN.
pub const UPLOAD_TIMEOUT: Duration = Duration::from_secs(3600);

impl TemplateApi for PveClient {
    async fn storage_status(&self, node: &str, storage: &str) -> Result<StorageStatus> {
        self.call(
            Method::GET,
            &["nodes", node, "storage", storage, "status"],
            &[],
            None,
        )
        .await
    }

    async fn storage_content(
        &self,
        node: &str,
        storage: &str,
        content: &str,
    ) -> Result<Vec<StorageVolume>> {
        self.call(
            Method::GET,
            &["nodes", node, "storage", storage, "content"],
            &[("content".into(), content.into())],
            None,
        )
        .await
    }

    // One call of PVE's upload endpoint: every argument is one of its fields.
    #[allow(clippy::too_many_arguments)]
    async fn upload(
        &self,
        node: &str,
        storage: &str,
        content: &str,
        file: &Path,
        name: &str,
        sha256: &str,
        progress: UploadProgress,
    ) -> Result<Upid> {
        let f = tokio::fs::File::open(file)
            .await
            .map_err(|e| Error::Config(format!("cannot open {}: {e}", file.display())))?;
        let len = f
            .metadata()
            .await
            .map_err(|e| Error::Config(format!("cannot read {}: {e}", file.display())))?
            .len();
        // Count bytes as reqwest pulls them: the bar follows what was really sent.
        let mut sent = 0u64;
        let stream = futures::StreamExt::inspect(
            tokio_util::io::ReaderStream::with_capacity(f, 256 * 1024),
            move |chunk| {
                if let Ok(c) = chunk {
                    sent += c.len() as u64;
                    progress(sent);
                }
            },
        );
        let part =
            reqwest::multipart::Part::stream_with_length(reqwest::Body::wrap_stream(stream), len)
                .file_name(name.to_owned())
                .mime_str("application/octet-stream")
                .map_err(|e| Error::Config(format!("multipart type: {e}")))?;
        let form = reqwest::multipart::Form::new()
            .text("content", content.to_owned())
            .text("checksum-algorithm", "sha256")
            .text("checksum", sha256.to_owned())
            .part("filename", part);
        self.call_multipart(
            &["nodes", node, "storage", storage, "upload"],
            form,
            UPLOAD_TIMEOUT,
        )
        .await
    }

    async fn create_vm(&self, node: &str, vmid: VmId, params: &[(String, String)]) -> Result<Upid> {
        let mut form = vec![("vmid".to_owned(), vmid.to_string())];
        form.extend(params.iter().cloned());
        self.call(Method::POST, &["nodes", node, "qemu"], &[], Some(&form))
            .await
    }

    async fn convert_to_template(&self, node: &str, vmid: VmId) -> Result<Option<Upid>> {
        let vmid = vmid.to_string();
        let v: Option<serde_json::Value> = self
            .call(
                Method::POST,
                &["nodes", node, "qemu", &vmid, "template"],
                &[],
                None,
            )
            .await?;
        match v {
            Some(serde_json::Value::String(s)) => s.parse().map(Some).map_err(|_| {
                Error::Config(format!(
                    "PVE answered the template conversion with {s:?}, not a task id"
                ))
            }),
            _ => Ok(None),
        }
    }
}
