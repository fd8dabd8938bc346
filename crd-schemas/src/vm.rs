//! The `VirtualMachine` kind: one customer VM, desired (spec) and observed (status).

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize};

use crate::WalletAddress;
use crate::bounded::{Cores, DiskGib, MemoryMib, Name, UnixUser, Vmid};
use crate::meta::{Condition, ObjectMeta};
use crate::resource::impl_resource;

/// A VM as the operator or the chain watcher declares it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VirtualMachine {
    /// Always `blockhost.io/v1alpha1`.
    #[schemars(extend("const" = "blockhost.io/v1alpha1"))]
    pub api_version: String,
    /// Always `VirtualMachine`.
    #[schemars(extend("const" = "VirtualMachine"))]
    pub kind: String,
    /// Name, labels and store-managed fields.
    pub metadata: ObjectMeta,
    /// Desired state.
    pub spec: VirtualMachineSpec,
    /// Observed state; written by controllers, ignored when applying.
    #[serde(default)]
    pub status: VirtualMachineStatus,
}

impl_resource!(
    VirtualMachine,
    VirtualMachineSpec,
    VirtualMachineStatus,
    "VirtualMachine",
    "virtualmachines",
    ["virtualmachine", "vm", "vms"]
);

impl VirtualMachine {
    /// A new object with empty status, as a user would write it.
    pub fn new(name: Name, spec: VirtualMachineSpec) -> Self {
        Self {
            api_version: crate::meta::API_VERSION.into(),
            kind: "VirtualMachine".into(),
            metadata: ObjectMeta::named(name),
            spec,
            status: VirtualMachineStatus::default(),
        }
    }
}

/// Desired state of a VM.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VirtualMachineSpec {
    /// Wallet allowed to log in (the access NFT's holder).
    pub owner: WalletAddress,
    /// Who asked for this VM.
    #[serde(default)]
    pub source: VmSource,
    /// Name of the `Plan` it was bought under, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<Name>,
    /// CPU, memory and disk.
    pub resources: Resources,
    /// VMID of the Proxmox template to clone; when absent, the plan's or the daemon's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<Vmid>,
    /// When the subscription ends; the VM is suspended after it. Absent: never expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
    /// Whether the VM should be running or suspended (shut down, disk kept).
    #[serde(default)]
    pub power_state: PowerState,
    /// Which addresses the VM wants.
    #[serde(default)]
    pub network: NetworkSpec,
    /// The Unix user created in the guest, who logs in with the wallet.
    #[serde(default)]
    pub guest_user: UnixUser,
    /// Optional OpenSSH public keys for the guest user (in addition to wallet login).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ssh_keys: Vec<SshPublicKey>,
}

impl VirtualMachineSpec {
    /// Rules for changing a stored spec: the source is the VM's identity, and a disk
    /// can grow but never shrink (Proxmox cannot shrink disks).
    pub fn validate_update(&self, old: &Self) -> Result<(), String> {
        if self.source != old.source {
            return Err("spec.source is immutable; delete the VM and create it again to change where it comes from".into());
        }
        if self.resources.disk_gib < old.resources.disk_gib {
            return Err(format!(
                "spec.resources.diskGiB cannot shrink from {} to {}: Proxmox can only grow disks",
                old.resources.disk_gib, self.resources.disk_gib
            ));
        }
        Ok(())
    }
}

/// Who asked for a VM.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum VmSource {
    /// Written by an operator (`bhctl apply`).
    #[default]
    Operator,
    /// Derived from an on-chain subscription.
    #[serde(rename_all = "camelCase")]
    Chain {
        /// The subscription id in `BlockhostSubscriptions`.
        subscription_id: u64,
    },
}

/// CPU, memory and disk of a VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Resources {
    /// Virtual CPU cores (1–128).
    pub cores: Cores,
    /// Memory in MiB (256–1,048,576).
    #[serde(rename = "memoryMiB")]
    pub memory_mib: MemoryMib,
    /// Root disk in GiB (1–65,536).
    #[serde(rename = "diskGiB")]
    pub disk_gib: DiskGib,
}

/// Desired power state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
pub enum PowerState {
    /// Running.
    #[default]
    Running,
    /// Shut down with its disk kept.
    Suspended,
}

/// Which addresses a VM wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NetworkSpec {
    /// An IPv4 address from the configured pool.
    #[serde(default = "yes")]
    pub ipv4: bool,
    /// An IPv6 /128 from the configured prefix.
    #[serde(default = "yes")]
    pub ipv6: bool,
}

fn yes() -> bool {
    true
}

impl Default for NetworkSpec {
    fn default() -> Self {
        Self {
            ipv4: true,
            ipv6: true,
        }
    }
}

/// An OpenSSH public key line (`ssh-ed25519 AAAA… comment`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(transparent)]
pub struct SshPublicKey(
    #[schemars(
        regex(
            pattern = r"^(ssh-(ed25519|rsa)|ecdsa-sha2-nistp(256|384|521)|sk-ssh-ed25519@openssh.com|sk-ecdsa-sha2-nistp256@openssh.com) [A-Za-z0-9+/]+={0,2}( .*)?$"
        ),
        length(max = 16384)
    )]
    String,
);

impl SshPublicKey {
    const ALGORITHMS: &'static [&'static str] = &[
        "ssh-ed25519",
        "ssh-rsa",
        "ecdsa-sha2-nistp256",
        "ecdsa-sha2-nistp384",
        "ecdsa-sha2-nistp521",
        "sk-ssh-ed25519@openssh.com",
        "sk-ecdsa-sha2-nistp256@openssh.com",
    ];

    /// Checks the shape of an OpenSSH public key line.
    pub fn new(line: impl Into<String>) -> Result<Self, String> {
        let line = line.into();
        if line.len() > 16384 || line.contains(['\n', '\r', '\0']) {
            return Err("an SSH public key is one line of at most 16384 characters".into());
        }
        let mut parts = line.split(' ');
        let algo = parts.next().unwrap_or_default();
        let body = parts.next().unwrap_or_default();
        if !Self::ALGORITHMS.contains(&algo) {
            return Err(format!(
                "SSH key type {algo:?} is not supported (use one of {})",
                Self::ALGORITHMS.join(", ")
            ));
        }
        let b64 = body.trim_end_matches('=');
        if body.len() < 16
            || !b64
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
        {
            return Err(
                "SSH public key body is not base64; paste the whole line of the .pub file".into(),
            );
        }
        Ok(Self(line))
    }

    /// The key line.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for SshPublicKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        SshPublicKey::new(String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// Lifecycle phase of a VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
pub enum VmPhase {
    /// Accepted, not yet acted on.
    #[default]
    Pending,
    /// Being created in Proxmox.
    Provisioning,
    /// Running and reachable.
    Running,
    /// Shut down, disk kept.
    Suspended,
    /// Being deleted.
    Terminating,
    /// Cannot make progress without help; see conditions and `lastError`.
    Failed,
}

/// Addresses assigned to a VM.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Addresses {
    /// IPv4 address, without prefix length.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv4: Option<String>,
    /// IPv6 address, without prefix length.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<String>,
}

/// Observed state of a VM, written only by controllers.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachineStatus {
    /// Lifecycle phase.
    #[serde(default)]
    pub phase: VmPhase,
    /// Proxmox node the VM lives on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Proxmox VMID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vmid: Option<u32>,
    /// Assigned addresses.
    #[serde(default, skip_serializing_if = "is_default")]
    pub addresses: Addresses,
    /// Token id of the access NFT, once minted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nft_token_id: Option<u64>,
    /// Observations, see [`crate::meta::set_condition`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The `metadata.generation` the status reflects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<u64>,
    /// The last error a controller met, for `bhctl describe`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// When the VM was last suspended for expiry; the grace period counts from here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suspended_at: Option<DateTime<Utc>>,
    /// SHA-256 of the access file last written into the VM; it is rewritten when
    /// the owner, NFT or users change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_file_digest: Option<String>,
}

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}
