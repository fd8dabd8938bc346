//! `bhctl template install`: the guest image into Proxmox VE as a VM template,
//! through the API only (no `qm`, no SSH).
//!
//! Steps: check the PVE version (8.4+ imports uploaded disk images) and both
//! storages (the upload storage needs content `import`, the disk storage
//! `images`); upload the image unless a volume of the same digest is there
//! (`blockhost-guest-<sha256[..12]>.qcow2`); create the VM with `scsi0`
//! imported from it (`import-from`), a cloud-init drive, `agent: 1`,
//! `serial0: socket`, `vga: serial0`, `scsihw: virtio-scsi-pci`,
//! `boot: order=scsi0`, name, tags `blockhost;template` and the image digest in
//! the description; convert it to a template.
//!
//! Idempotent: a template whose description records the same digest is left
//! alone ("unchanged"). Another digest needs `--replace`, which deletes and
//! recreates the template — refused while linked clones use its base disk (PVE
//! cannot delete it then, and full clones do not depend on it). A VM at that id
//! that is not a BlockHost template is never replaced.

use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;

use blockhost_crd::config::DEFAULT_CONFIG_PATH;
use blockhost_pve::template::TemplateApi;
use blockhost_pve::{DeleteOptions, ErrorKind, Pve, Upid, VmId, WaitOptions};
use sha2::{Digest, Sha256};

/// Tags of the templates this command manages.
pub const TEMPLATE_TAGS: &str = "blockhost;template";
/// The description line recording the image digest.
pub const DIGEST_PREFIX: &str = "blockhost-image-sha256=";

/// `bhctl template install` arguments.
#[derive(Debug, clap::Args)]
pub struct InstallArgs {
    /// The qcow2 image (from `bhctl template build`).
    #[arg(long)]
    pub image: PathBuf,
    /// Node to create the template on (default: the first of proxmox.nodes, or
    /// the cluster's only online node).
    #[arg(long)]
    pub node: Option<String>,
    /// Storage for the template's disk (content `images`).
    #[arg(long, default_value = "local-lvm")]
    pub storage: String,
    /// File storage the image is uploaded to (content `import`).
    #[arg(long, default_value = "local")]
    pub upload_storage: String,
    /// VMID of the template (proxmox.defaultTemplate is the one VMs are cloned from).
    #[arg(long, default_value_t = 9001)]
    pub vmid: VmId,
    /// Name of the template VM.
    #[arg(long, default_value = "blockhost-guest")]
    pub name: String,
    /// Replace a BlockHost template built from another image (refused while
    /// linked clones use it).
    #[arg(long)]
    pub replace: bool,
    /// Configuration file whose `proxmox` section says how to reach the cluster.
    #[arg(long, env = "BLOCKHOST_CONFIG", default_value = DEFAULT_CONFIG_PATH)]
    pub config: PathBuf,
}

/// Why the install failed.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// The configuration file could not be loaded.
    #[error(transparent)]
    LoadConfig(#[from] blockhost_api::config::ConfigError),
    /// The configuration cannot drive an install; the message says what to add.
    #[error("{0}")]
    Config(String),
    /// The Proxmox token secret file cannot be read.
    #[error("cannot read the Proxmox token secret file {}", path.display())]
    TokenSecret {
        /// The file (proxmox.tokenSecretFile).
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// proxmox.tlsFingerprint does not parse.
    #[error("proxmox.tlsFingerprint is not a SHA-256 fingerprint")]
    Fingerprint(#[source] blockhost_pve::Error),
    /// The image could not be read.
    #[error("cannot read the image {path}")]
    Image {
        /// The image.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The cluster cannot take the template; the message says what to change.
    #[error("{0}")]
    Refused(String),
    /// A Proxmox request failed.
    #[error("{what}")]
    Pve {
        /// What was being done.
        what: String,
        /// Why.
        source: blockhost_pve::Error,
    },
    /// Writing output failed.
    #[error("cannot write output")]
    Io(#[from] std::io::Error),
}

fn pve_err(what: impl Into<String>) -> impl FnOnce(blockhost_pve::Error) -> InstallError {
    let what = what.into();
    move |source| InstallError::Pve { what, source }
}

/// What the install did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The template already holds this image.
    Unchanged,
    /// The template was created (`replaced`: an older one was deleted first).
    Created {
        /// An older template was deleted first.
        replaced: bool,
        /// The image had to be uploaded (false: it was on the storage already).
        uploaded: bool,
    },
}

/// What to install where; the cluster-independent part of [`InstallArgs`].
#[derive(Debug, Clone)]
pub struct Plan {
    /// The image file.
    pub image: PathBuf,
    /// Its SHA-256, hex.
    pub sha256: String,
    /// Node.
    pub node: String,
    /// Disk storage.
    pub storage: String,
    /// Upload storage.
    pub upload_storage: String,
    /// Template VMID.
    pub vmid: VmId,
    /// Template name.
    pub name: String,
    /// Bridge of net0.
    pub bridge: String,
    /// Replace another digest.
    pub replace: bool,
}

impl Plan {
    /// The uploaded file's name: the digest makes it unique per image.
    pub fn volume_name(&self) -> String {
        format!(
            "blockhost-guest-{}.qcow2",
            &self.sha256[..12.min(self.sha256.len())]
        )
    }

    /// The uploaded volume's id.
    pub fn volid(&self) -> String {
        format!("{}:import/{}", self.upload_storage, self.volume_name())
    }

    /// The new VM's configuration.
    pub fn vm_params(&self) -> Vec<(String, String)> {
        let p = |k: &str, v: String| (k.to_owned(), v);
        vec![
            p("name", self.name.clone()),
            p("tags", TEMPLATE_TAGS.into()),
            p(
                "description",
                format!(
                    "BlockHost guest template (bhctl template install).\n{DIGEST_PREFIX}{}",
                    self.sha256
                ),
            ),
            p("ostype", "l26".into()),
            p("scsihw", "virtio-scsi-pci".into()),
            p(
                "scsi0",
                format!("{}:0,import-from={},discard=on", self.storage, self.volid()),
            ),
            p("ide2", format!("{}:cloudinit", self.storage)),
            p("boot", "order=scsi0".into()),
            p("agent", "1".into()),
            p("serial0", "socket".into()),
            p("vga", "serial0".into()),
            p("net0", format!("virtio,bridge={}", self.bridge)),
            p("cores", "1".into()),
            p("memory", "1024".into()),
        ]
    }
}

/// The image's SHA-256 (hex).
pub fn sha256_file(path: &std::path::Path) -> Result<String, InstallError> {
    let err = |source| InstallError::Image {
        path: path.to_owned(),
        source,
    };
    let mut f = std::fs::File::open(path).map_err(err)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(err)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

/// `bhctl template install`.
pub async fn install(out: &mut impl std::io::Write, args: InstallArgs) -> Result<(), InstallError> {
    let cfg = blockhost_api::config::load(&args.config, true)?;
    let Some(px) = cfg.proxmox.as_ref() else {
        return Err(InstallError::Config(format!(
            "{} has no proxmox section: add url, tokenId and tokenSecretFile (README, Configuration)",
            args.config.display()
        )));
    };
    let client = pve_client(px)?;
    let node = match &args.node {
        Some(n) => n.clone(),
        None => match px.nodes.first() {
            Some(n) => n.clone(),
            None => only_online_node(&client).await?,
        },
    };
    let sha256 = sha256_file(&args.image)?;
    let plan = Plan {
        image: args.image.clone(),
        sha256,
        node,
        storage: args.storage.clone(),
        upload_storage: args.upload_storage.clone(),
        vmid: args.vmid,
        name: args.name.clone(),
        bridge: cfg.network.bridge.clone(),
        replace: args.replace,
    };
    // indicatif draws nothing when stderr is not a terminal.
    let bar = indicatif::ProgressBar::new(0).with_style(
        indicatif::ProgressStyle::with_template(
            "uploading {bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let outcome = run(&client, &plan, out, &bar).await?;
    report(out, &plan, &outcome)?;
    Ok(())
}

/// The API client for the configured cluster: token secret from its file (owner
/// and group only, as blockhostd insists), certificate pinned when configured.
/// Built here rather than with the daemon's setup so bhctl needs none of the
/// reconciler.
fn pve_client(
    px: &blockhost_crd::config::ProxmoxConfig,
) -> Result<blockhost_pve::PveClient, InstallError> {
    use std::os::unix::fs::PermissionsExt;
    let path = &px.token_secret_file;
    let unreadable = |source| InstallError::TokenSecret {
        path: path.clone(),
        source,
    };
    let mode = std::fs::metadata(path)
        .map_err(unreadable)?
        .permissions()
        .mode()
        & 0o777;
    if mode & 0o037 != 0 {
        return Err(InstallError::Config(format!(
            "the Proxmox token secret file {p} is mode {mode:o}; make it 0600 or 0640 (chmod 600 {p})",
            p = path.display()
        )));
    }
    let secret = std::fs::read_to_string(path).map_err(unreadable)?;
    let tls = match (&px.tls_fingerprint, px.tls_insecure) {
        (Some(fp), _) => {
            blockhost_pve::TlsMode::Pinned(fp.parse().map_err(InstallError::Fingerprint)?)
        }
        (None, true) => blockhost_pve::TlsMode::Insecure,
        (None, false) => blockhost_pve::TlsMode::SystemRoots,
    };
    blockhost_pve::PveClient::new(blockhost_pve::ClientConfig::new(
        px.url.clone(),
        blockhost_pve::Credentials::api_token(px.token_id.clone(), secret.trim()),
        tls,
    ))
    .map_err(pve_err("build the Proxmox client"))
}

/// One line saying what happened.
pub fn report(
    out: &mut impl std::io::Write,
    plan: &Plan,
    outcome: &Outcome,
) -> std::io::Result<()> {
    match outcome {
        Outcome::Unchanged => writeln!(
            out,
            "template {} on {} unchanged (image sha256 {})",
            plan.vmid, plan.node, plan.sha256
        ),
        Outcome::Created { replaced, uploaded } => writeln!(
            out,
            "template {} {} on {} from {}{} (image sha256 {})",
            plan.vmid,
            if *replaced { "replaced" } else { "created" },
            plan.node,
            plan.volid(),
            if *uploaded { "" } else { ", already uploaded" },
            plan.sha256
        ),
    }
}

async fn only_online_node<P: Pve>(pve: &P) -> Result<String, InstallError> {
    let nodes = pve.nodes().await.map_err(pve_err("list the nodes"))?;
    let online: Vec<_> = nodes
        .iter()
        .filter(|n| n.status == blockhost_pve::NodeState::Online)
        .collect();
    match online.as_slice() {
        [one] => Ok(one.node.clone()),
        [] => Err(InstallError::Refused("no Proxmox node is online".into())),
        _ => Err(InstallError::Refused(format!(
            "the cluster has {} online nodes: choose one with --node",
            online.len()
        ))),
    }
}

/// The oldest PVE whose API can upload disk images as `import` content.
const MIN_RELEASE: (u32, u32) = (8, 4);

fn release_of(v: &blockhost_pve::Version) -> Option<(u32, u32)> {
    let text = if v.release.is_empty() {
        &v.version
    } else {
        &v.release
    };
    let mut it = text.split(['.', '-']);
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

async fn wait<P: Pve>(pve: &P, upid: &Upid, what: &str) -> Result<(), InstallError> {
    let opts = WaitOptions {
        deadline: std::time::Duration::from_secs(1800),
        ..WaitOptions::default()
    };
    pve.wait_task(upid, opts).await.map_err(pve_err(what))?;
    Ok(())
}

/// The install against any [`TemplateApi`] (the HTTP client, or a test double).
/// `bar` shows the upload's progress when visible.
pub async fn run<P: TemplateApi>(
    pve: &P,
    plan: &Plan,
    out: &mut impl std::io::Write,
    bar: &indicatif::ProgressBar,
) -> Result<Outcome, InstallError> {
    check_version(pve).await?;
    let replaced = match clear_existing(pve, plan, out).await? {
        Existing::SameImage => return Ok(Outcome::Unchanged),
        Existing::Deleted => true,
        Existing::None => false,
    };
    check_storages(pve, plan).await?;
    let uploaded = upload_unless_present(pve, plan, bar).await?;
    create_template(pve, plan).await?;
    Ok(Outcome::Created { replaced, uploaded })
}

/// Refuses a PVE older than [`MIN_RELEASE`], which cannot import an uploaded
/// disk image.
async fn check_version<P: TemplateApi>(pve: &P) -> Result<(), InstallError> {
    let version = pve
        .version()
        .await
        .map_err(pve_err("ask the PVE version"))?;
    match release_of(&version) {
        Some(r) if r >= MIN_RELEASE => Ok(()),
        _ => Err(InstallError::Refused(format!(
            "Proxmox VE {} cannot import uploaded disk images (content type 'import' needs 8.4 or later): upgrade the cluster",
            version.version
        ))),
    }
}

/// What was at the template's VMID before the install.
enum Existing {
    /// Nothing.
    None,
    /// A BlockHost template of this very image: nothing to do.
    SameImage,
    /// A BlockHost template of another image, deleted for `--replace`.
    Deleted,
}

/// Makes room at the template's VMID: leaves a template of the same image,
/// deletes one of another image when `--replace` allows it and no linked clone
/// needs it, and never touches a VM that is not a BlockHost template.
async fn clear_existing<P: TemplateApi>(
    pve: &P,
    plan: &Plan,
    out: &mut impl std::io::Write,
) -> Result<Existing, InstallError> {
    let node = plan.node.as_str();
    let conf = match pve.vm_config(node, plan.vmid).await {
        Ok(conf) => conf,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Existing::None),
        // fakepve and PVE answer a missing VM's config with 500 "does not exist".
        Err(e) if e.to_string().contains("does not exist") => return Ok(Existing::None),
        Err(e) => return Err(pve_err("read the template's configuration")(e)),
    };
    let ours = conf.tags().iter().any(|t| t == "blockhost")
        && conf
            .description()
            .is_some_and(|d| d.contains(DIGEST_PREFIX));
    if !ours {
        return Err(InstallError::Refused(format!(
            "VM {} on {node} exists and is not a BlockHost template: choose another --vmid",
            plan.vmid
        )));
    }
    let same = conf.description().is_some_and(|d| {
        d.lines()
            .any(|l| l.trim() == format!("{DIGEST_PREFIX}{}", plan.sha256))
    });
    if same && conf.is_template() {
        return Ok(Existing::SameImage);
    }
    if !plan.replace {
        return Err(InstallError::Refused(format!(
            "template {} on {node} holds another image: pass --replace to rebuild it from this one",
            plan.vmid
        )));
    }
    let users = linked_clones(pve, node, plan.vmid).await?;
    if !users.is_empty() {
        return Err(InstallError::Refused(format!(
            "linked clones {users:?} use template {}'s disk; PVE cannot delete it: delete or fully clone them first, or install this image under another --vmid",
            plan.vmid
        )));
    }
    writeln!(out, "deleting template {} (another image)", plan.vmid)?;
    let upid = pve
        .delete_vm(node, plan.vmid, DeleteOptions::default())
        .await
        .map_err(pve_err("delete the old template"))?;
    wait(pve, &upid, "delete the old template").await?;
    Ok(Existing::Deleted)
}

/// Checks, before anything is uploaded, that the upload storage takes
/// `import` content and the disk storage `images`.
async fn check_storages<P: TemplateApi>(pve: &P, plan: &Plan) -> Result<(), InstallError> {
    let node = plan.node.as_str();
    let upload = pve
        .storage_status(node, &plan.upload_storage)
        .await
        .map_err(pve_err(format!("read storage {}", plan.upload_storage)))?;
    if !upload.has_content("import") {
        return Err(InstallError::Refused(format!(
            "storage '{s}' on {node} does not hold 'import' content (it has '{c}'): enable it (Datacenter > Storage > {s} > Content: Import, or `pvesm set {s} --content {c},import`), or choose a file storage with --upload-storage",
            s = plan.upload_storage,
            c = upload.content
        )));
    }
    let disks = pve
        .storage_status(node, &plan.storage)
        .await
        .map_err(pve_err(format!("read storage {}", plan.storage)))?;
    if !disks.has_content("images") {
        return Err(InstallError::Refused(format!(
            "storage '{s}' on {node} does not hold disk images (content '{c}'): enable 'images' on it or choose another --storage",
            s = plan.storage,
            c = disks.content
        )));
    }
    Ok(())
}

/// Uploads the image unless a volume of its digest is on the upload storage
/// already; returns whether it uploaded.
async fn upload_unless_present<P: TemplateApi>(
    pve: &P,
    plan: &Plan,
    bar: &indicatif::ProgressBar,
) -> Result<bool, InstallError> {
    let node = plan.node.as_str();
    let volid = plan.volid();
    let present = pve
        .storage_content(node, &plan.upload_storage, "import")
        .await
        .map_err(pve_err(format!("list storage {}", plan.upload_storage)))?
        .iter()
        .any(|v| v.volid == volid);
    if present {
        return Ok(false);
    }
    let size = std::fs::metadata(&plan.image)
        .map_err(|source| InstallError::Image {
            path: plan.image.clone(),
            source,
        })?
        .len();
    bar.set_length(size);
    let b = bar.clone();
    let upid = pve
        .upload(
            node,
            &plan.upload_storage,
            "import",
            &plan.image,
            &plan.volume_name(),
            &plan.sha256,
            Arc::new(move |n| b.set_position(n)),
        )
        .await
        .map_err(pve_err(format!(
            "upload {} to {}",
            plan.image.display(),
            plan.upload_storage
        )))?;
    bar.finish_and_clear();
    wait(pve, &upid, "store the uploaded image").await?;
    Ok(true)
}

/// Creates the VM with its disk imported from the uploaded volume, then makes
/// it a template.
async fn create_template<P: TemplateApi>(pve: &P, plan: &Plan) -> Result<(), InstallError> {
    let node = plan.node.as_str();
    let upid = pve
        .create_vm(node, plan.vmid, &plan.vm_params())
        .await
        .map_err(pve_err(format!("create VM {}", plan.vmid)))?;
    wait(pve, &upid, "create the template VM (import the disk)").await?;
    if let Some(upid) = pve
        .convert_to_template(node, plan.vmid)
        .await
        .map_err(pve_err("convert the VM to a template"))?
    {
        wait(pve, &upid, "convert the VM to a template").await?;
    }
    Ok(())
}

/// VMs on `node` whose disks are linked clones of `template`'s base disk.
async fn linked_clones<P: Pve>(
    pve: &P,
    node: &str,
    template: VmId,
) -> Result<Vec<VmId>, InstallError> {
    let vms = pve.cluster_vms().await.map_err(pve_err("list the VMs"))?;
    let base = format!("base-{template}-disk");
    let mut users = vec![];
    for vm in vms.iter().filter(|v| v.node == node && v.vmid != template) {
        let Ok(conf) = pve.vm_config(node, vm.vmid).await else {
            continue;
        };
        if conf.iter().any(|(_, v)| v.contains(&base)) {
            users.push(vm.vmid);
        }
    }
    Ok(users)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> Plan {
        Plan {
            image: "x.qcow2".into(),
            sha256: "ab".repeat(32),
            node: "pve1".into(),
            storage: "local-lvm".into(),
            upload_storage: "local".into(),
            vmid: 9001,
            name: "blockhost-guest".into(),
            bridge: "vmbr0".into(),
            replace: false,
        }
    }

    #[test]
    fn the_vm_is_shaped_for_cloud_init_agent_and_serial() {
        let p = plan();
        let params = p.vm_params();
        let get = |k: &str| {
            params
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(
            get("scsi0"),
            Some(
                "local-lvm:0,import-from=local:import/blockhost-guest-abababababab.qcow2,discard=on"
            )
        );
        assert_eq!(get("ide2"), Some("local-lvm:cloudinit"));
        assert_eq!(get("agent"), Some("1"));
        assert_eq!(get("serial0"), Some("socket"));
        assert_eq!(get("vga"), Some("serial0"));
        assert_eq!(get("scsihw"), Some("virtio-scsi-pci"));
        assert_eq!(get("boot"), Some("order=scsi0"));
        assert!(
            get("description").is_some_and(|d| d.contains(&format!("{DIGEST_PREFIX}{}", p.sha256)))
        );
    }

    #[test]
    fn releases_parse() {
        let v = |version: &str, release: &str| blockhost_pve::Version {
            version: version.into(),
            release: release.into(),
            repoid: String::new(),
        };
        assert_eq!(release_of(&v("9.0.3", "9.0")), Some((9, 0)));
        assert_eq!(release_of(&v("8.4.1", "")), Some((8, 4)));
        assert!(release_of(&v("8.3.2", "8.3")) < Some(MIN_RELEASE));
        assert_eq!(release_of(&v("x", "")), None);
    }
}
