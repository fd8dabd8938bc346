//! Typed requests and responses of the PVE endpoints BlockHost uses.
//!
//! Responses keep only the fields a reconciler reads; unknown fields are ignored so a newer PVE
//! does not break us. Loose typing is absorbed by the private `de` module. Requests are builders that render
//! to the form parameters PVE expects, so no caller spells a parameter name.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::de;
use crate::propstring::{IpConfig, NetDevice, PropertyString, parse_tags, percent_encode_strict};
use crate::upid::Upid;

/// A VM id (PVE allows 100–999999999).
pub type VmId = u32;

/// `GET /version`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct Version {
    /// Package version, e.g. `8.2.4`.
    pub version: String,
    /// Release, e.g. `8.2`.
    #[serde(default)]
    pub release: String,
    /// Repository commit id.
    #[serde(default)]
    pub repoid: String,
}

/// Whether a node is reachable in the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    /// The node answers.
    Online,
    /// The node is down or cut off.
    Offline,
    /// Anything else PVE reports.
    #[serde(other)]
    Unknown,
}

/// One entry of `GET /nodes`: enough to place a VM (free memory and CPU).
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct NodeSummary {
    /// Node name.
    pub node: String,
    /// Online or offline.
    pub status: NodeState,
    /// CPU load, 0.0–1.0 (absent when offline).
    #[serde(default, deserialize_with = "de::opt_float")]
    pub cpu: Option<f64>,
    /// Logical CPUs.
    #[serde(default, deserialize_with = "de::opt_int")]
    pub maxcpu: Option<u32>,
    /// Memory used, bytes.
    #[serde(default, deserialize_with = "de::opt_int")]
    pub mem: Option<u64>,
    /// Memory total, bytes.
    #[serde(default, deserialize_with = "de::opt_int")]
    pub maxmem: Option<u64>,
    /// Uptime, seconds.
    #[serde(default, deserialize_with = "de::opt_int")]
    pub uptime: Option<u64>,
}

impl NodeSummary {
    /// Memory not in use, bytes (0 when unknown).
    pub fn free_mem(&self) -> u64 {
        self.maxmem
            .unwrap_or(0)
            .saturating_sub(self.mem.unwrap_or(0))
    }
}

/// Power state as `status` reports it (`paused` shows in `qmpstatus`, not here).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunState {
    /// QEMU runs (possibly paused).
    Running,
    /// No QEMU process.
    Stopped,
    /// The node is unreachable, so the state is unknown.
    #[serde(other)]
    Unknown,
}

/// The kind of guest in `cluster/resources`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GuestKind {
    /// A QEMU VM.
    Qemu,
    /// An LXC container.
    Lxc,
    /// Anything else.
    #[serde(other)]
    Other,
}

fn tags_de<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    Ok(de::opt_string(d)?
        .map(|s| parse_tags(&s))
        .unwrap_or_default())
}

/// One guest of `GET /cluster/resources?type=vm`: the whole cluster's VMs in one request.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct ClusterVm {
    /// VM id.
    #[serde(deserialize_with = "de::int")]
    pub vmid: VmId,
    /// `qemu` or `lxc`.
    #[serde(rename = "type")]
    pub kind: GuestKind,
    /// Node the guest lives on.
    pub node: String,
    /// Guest name.
    #[serde(default, deserialize_with = "de::opt_string")]
    pub name: Option<String>,
    /// Power state.
    pub status: RunState,
    /// True for templates.
    #[serde(default, deserialize_with = "de::bool")]
    pub template: bool,
    /// Tags.
    #[serde(default, deserialize_with = "tags_de")]
    pub tags: Vec<String>,
    /// Config lock (`backup`, `clone`, `migrate`, `suspended`, ...).
    #[serde(default)]
    pub lock: Option<String>,
    /// Configured memory, bytes.
    #[serde(default, deserialize_with = "de::int_or_default")]
    pub maxmem: u64,
    /// Memory in use, bytes.
    #[serde(default, deserialize_with = "de::int_or_default")]
    pub mem: u64,
    /// Configured vCPUs (PVE sends a number that may be fractional with cpulimit).
    #[serde(default, deserialize_with = "de::float")]
    pub maxcpu: f64,
    /// CPU load.
    #[serde(default, deserialize_with = "de::float")]
    pub cpu: f64,
    /// Size of the boot disk, bytes.
    #[serde(default, deserialize_with = "de::int_or_default")]
    pub maxdisk: u64,
    /// Uptime, seconds.
    #[serde(default, deserialize_with = "de::int_or_default")]
    pub uptime: u64,
}

/// `GET /nodes/{node}/qemu/{vmid}/status/current`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct VmStatus {
    /// VM id.
    #[serde(deserialize_with = "de::int")]
    pub vmid: VmId,
    /// Name.
    #[serde(default, deserialize_with = "de::opt_string")]
    pub name: Option<String>,
    /// Power state.
    pub status: RunState,
    /// QEMU's own state: `running`, `paused`, `prelaunch`, `stopped`, ...
    #[serde(default)]
    pub qmpstatus: Option<String>,
    /// Config lock.
    #[serde(default)]
    pub lock: Option<String>,
    /// Guest agent enabled in the config (not: answering).
    #[serde(default, deserialize_with = "de::bool")]
    pub agent: bool,
    /// vCPUs.
    #[serde(default, deserialize_with = "de::float")]
    pub cpus: f64,
    /// Configured memory, bytes.
    #[serde(default, deserialize_with = "de::int_or_default")]
    pub maxmem: u64,
    /// Uptime, seconds.
    #[serde(default, deserialize_with = "de::int_or_default")]
    pub uptime: u64,
    /// Tags.
    #[serde(default, deserialize_with = "tags_de")]
    pub tags: Vec<String>,
    /// True for templates.
    #[serde(default, deserialize_with = "de::bool")]
    pub template: bool,
}

impl VmStatus {
    /// Running but paused (`suspend` without `todisk`).
    pub fn is_paused(&self) -> bool {
        self.status == RunState::Running && self.qmpstatus.as_deref() == Some("paused")
    }
}

/// A VM's configuration (`GET .../config`): every key as the string PVE would accept back,
/// with typed accessors for what BlockHost reads.
///
/// Keeping the raw map means unmanaged keys survive a read-modify-write untouched, and indexed
/// keys (`net0`, `scsi1`, `ipconfig0`) need no field per index.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct VmConfig {
    values: BTreeMap<String, String>,
}

impl<'de> Deserialize<'de> for VmConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = BTreeMap::<String, serde_json::Value>::deserialize(d)?;
        Ok(VmConfig {
            values: raw
                .into_iter()
                .filter_map(|(k, v)| de::scalar_to_string(&v).map(|s| (k, s)))
                .collect(),
        })
    }
}

impl fmt::Debug for VmConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // cipassword is a hash in PVE, but still nothing to print.
        f.debug_map()
            .entries(self.values.iter().map(|(k, v)| {
                let v = if is_secret_key(k) { "***" } else { v.as_str() };
                (k, v)
            }))
            .finish()
    }
}

/// Config keys whose values are credentials.
fn is_secret_key(key: &str) -> bool {
    key == "cipassword"
}

/// Split `scsi10` into (`scsi`, 10).
fn split_indexed(key: &str) -> Option<(&str, u32)> {
    let pos = key.find(|c: char| c.is_ascii_digit())?;
    let (prefix, idx) = key.split_at(pos);
    if prefix.is_empty() {
        return None;
    }
    Some((prefix, idx.parse().ok()?))
}

impl VmConfig {
    /// Build from a map (tests, the in-process fake).
    pub fn from_map(values: BTreeMap<String, String>) -> Self {
        VmConfig { values }
    }
    /// The raw value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.values.get(key).map(String::as_str)
    }
    /// All keys and raw values.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.values.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }
    /// The raw map.
    pub fn as_map(&self) -> &BTreeMap<String, String> {
        &self.values
    }
    /// Name.
    pub fn name(&self) -> Option<&str> {
        self.get("name")
    }
    /// Cores per socket.
    pub fn cores(&self) -> Option<u32> {
        self.get("cores")?.parse().ok()
    }
    /// Sockets.
    pub fn sockets(&self) -> Option<u32> {
        self.get("sockets")?.parse().ok()
    }
    /// Memory in MiB. Newer PVE writes `memory` as a property string (`current=2048`).
    pub fn memory_mib(&self) -> Option<u64> {
        let ps = PropertyString::parse(self.get("memory")?);
        ps.get("current").or(ps.bare())?.parse().ok()
    }
    /// Description (PVE stores it URL-decoded; comments are `#` lines in the file only).
    pub fn description(&self) -> Option<&str> {
        self.get("description")
    }
    /// Tags.
    pub fn tags(&self) -> Vec<String> {
        self.get("tags").map(parse_tags).unwrap_or_default()
    }
    /// Config lock.
    pub fn lock(&self) -> Option<&str> {
        self.get("lock")
    }
    /// True for templates.
    pub fn is_template(&self) -> bool {
        self.get("template")
            .and_then(de::parse_bool)
            .unwrap_or(false)
    }
    /// Guest agent enabled (`agent: 1` or `agent: enabled=1,...`).
    pub fn agent_enabled(&self) -> bool {
        self.get("agent")
            .map(|v| {
                let ps = PropertyString::parse(v);
                ps.get("enabled")
                    .or(ps.bare())
                    .and_then(de::parse_bool)
                    .unwrap_or(false)
            })
            .unwrap_or(false)
    }
    /// Config digest, to pass back for optimistic concurrency.
    pub fn digest(&self) -> Option<&str> {
        self.get("digest")
    }
    /// Cloud-init user.
    pub fn ciuser(&self) -> Option<&str> {
        self.get("ciuser")
    }
    /// Cloud-init SSH public keys, decoded (PVE keeps them URL-encoded), one per entry.
    pub fn ssh_keys(&self) -> Vec<String> {
        self.get("sshkeys")
            .and_then(crate::propstring::percent_decode)
            .map(|k| {
                k.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    }
    /// Keys `prefix0`, `prefix1`, ... with their indexes, e.g. `indexed("net")`.
    pub fn indexed(&self, prefix: &str) -> BTreeMap<u32, &str> {
        self.values
            .iter()
            .filter_map(|(k, v)| match split_indexed(k) {
                Some((p, i)) if p == prefix => Some((i, v.as_str())),
                _ => None,
            })
            .collect()
    }
    /// `netN` parsed.
    pub fn net(&self, index: u32) -> Option<Result<NetDevice, crate::Error>> {
        self.get(&format!("net{index}")).map(str::parse)
    }
    /// `ipconfigN` parsed.
    pub fn ipconfig(&self, index: u32) -> Option<Result<IpConfig, crate::Error>> {
        self.get(&format!("ipconfig{index}")).map(str::parse)
    }
    /// A disk (`scsi0`, `virtio1`, ...) as a property string: the volume is its bare value.
    pub fn disk(&self, key: &str) -> Option<PropertyString> {
        self.get(key).map(PropertyString::parse)
    }
    /// Size in bytes of a disk, from its `size=` option.
    pub fn disk_size(&self, key: &str) -> Option<u64> {
        crate::propstring::parse_size(self.disk(key)?.get("size")?)
    }
}

/// Parameters of `POST /nodes/{node}/qemu/{vmid}/clone`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloneRequest {
    /// The new VM's id (PVE does not pick one; see [`crate::Pve::next_id`]).
    pub newid: VmId,
    /// The new VM's name (a DNS name).
    pub name: Option<String>,
    /// Full clone (copy disks) instead of a linked clone.
    pub full: bool,
    /// Target storage for a full clone.
    pub storage: Option<String>,
    /// Target node (needs shared storage).
    pub target: Option<String>,
    /// Description of the new VM.
    pub description: Option<String>,
    /// Resource pool.
    pub pool: Option<String>,
}

impl CloneRequest {
    /// A full clone to `newid`.
    pub fn full(newid: VmId) -> Self {
        CloneRequest {
            newid,
            name: None,
            full: true,
            storage: None,
            target: None,
            description: None,
            pool: None,
        }
    }
    /// Set the name.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }
    /// Set the target storage.
    pub fn storage(mut self, storage: impl Into<String>) -> Self {
        self.storage = Some(storage.into());
        self
    }
    /// Set the description.
    pub fn description(mut self, d: impl Into<String>) -> Self {
        self.description = Some(d.into());
        self
    }

    pub(crate) fn to_form(&self) -> Vec<(String, String)> {
        let mut f = vec![
            ("newid".to_owned(), self.newid.to_string()),
            ("full".to_owned(), bool_param(self.full)),
        ];
        let opts = [
            ("name", &self.name),
            ("storage", &self.storage),
            ("target", &self.target),
            ("description", &self.description),
            ("pool", &self.pool),
        ];
        for (k, v) in opts {
            if let Some(v) = v {
                f.push((k.to_owned(), v.clone()));
            }
        }
        f
    }
}

pub(crate) fn bool_param(b: bool) -> String {
    if b { "1" } else { "0" }.to_owned()
}

/// A config change for `PUT`/`POST .../config`: keys to set and keys to delete.
///
/// ```
/// use blockhost_pve::{ConfigUpdate, IpConfig};
/// let u = ConfigUpdate::new()
///     .cores(2)
///     .memory_mib(2048)
///     .ipconfig(0, &IpConfig::new().ipv4("10.0.0.5".parse().unwrap(), 24, None))
///     .tags(["blockhost", "tenant-7"]);
/// assert_eq!(u.get("ipconfig0"), Some("ip=10.0.0.5/24"));
/// ```
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ConfigUpdate {
    set: BTreeMap<String, String>,
    delete: Vec<String>,
    digest: Option<String>,
}

impl fmt::Debug for ConfigUpdate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let set: BTreeMap<&str, &str> = self
            .set
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str(),
                    if is_secret_key(k) { "***" } else { v.as_str() },
                )
            })
            .collect();
        f.debug_struct("ConfigUpdate")
            .field("set", &set)
            .field("delete", &self.delete)
            .field("digest", &self.digest)
            .finish()
    }
}

impl ConfigUpdate {
    /// An empty update.
    pub fn new() -> Self {
        Self::default()
    }
    /// Set any key to a raw value (for keys without a typed setter).
    pub fn set(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        let key = key.into();
        self.delete.retain(|k| *k != key);
        self.set.insert(key, value.into());
        self
    }
    /// Delete a key (PVE's `delete=` list).
    pub fn delete(mut self, key: impl Into<String>) -> Self {
        let key = key.into();
        self.set.remove(&key);
        if !self.delete.contains(&key) {
            self.delete.push(key);
        }
        self
    }
    /// Only apply if the config still has this digest (else PVE refuses; retry after a re-read).
    pub fn digest(mut self, digest: impl Into<String>) -> Self {
        self.digest = Some(digest.into());
        self
    }
    /// Cores per socket.
    pub fn cores(self, n: u32) -> Self {
        self.set("cores", n.to_string())
    }
    /// Sockets.
    pub fn sockets(self, n: u32) -> Self {
        self.set("sockets", n.to_string())
    }
    /// Memory, MiB.
    pub fn memory_mib(self, mib: u64) -> Self {
        self.set("memory", mib.to_string())
    }
    /// Name.
    pub fn name(self, name: impl Into<String>) -> Self {
        self.set("name", name)
    }
    /// Description (free text; BlockHost keeps its ownership marker here).
    pub fn description(self, text: impl Into<String>) -> Self {
        self.set("description", text)
    }
    /// Tags, joined with `;` as PVE stores them.
    pub fn tags<I, S>(self, tags: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let joined: Vec<String> = tags.into_iter().map(|t| t.as_ref().to_owned()).collect();
        self.set("tags", joined.join(";"))
    }
    /// `ipconfigN`.
    pub fn ipconfig(self, index: u32, cfg: &IpConfig) -> Self {
        self.set(format!("ipconfig{index}"), cfg.to_string())
    }
    /// `netN`.
    pub fn net(self, index: u32, dev: &NetDevice) -> Self {
        self.set(format!("net{index}"), dev.to_string())
    }
    /// Cloud-init user name.
    pub fn ciuser(self, user: impl Into<String>) -> Self {
        self.set("ciuser", user)
    }
    /// Cloud-init password (PVE hashes it; never logged by this crate).
    pub fn cipassword(self, password: impl Into<String>) -> Self {
        self.set("cipassword", password)
    }
    /// Cloud-init SSH public keys, one per entry. Encoded the way PVE insists on.
    pub fn ssh_keys<I, S>(self, keys: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let joined: Vec<String> = keys.into_iter().map(|k| k.as_ref().to_owned()).collect();
        self.set("sshkeys", percent_encode_strict(&joined.join("\n")))
    }
    /// Cloud-init DNS servers, space-separated.
    pub fn nameserver(self, servers: impl Into<String>) -> Self {
        self.set("nameserver", servers)
    }
    /// Cloud-init search domain.
    pub fn searchdomain(self, domain: impl Into<String>) -> Self {
        self.set("searchdomain", domain)
    }
    /// Guest agent on or off.
    pub fn agent(self, enabled: bool) -> Self {
        self.set("agent", bool_param(enabled))
    }
    /// Start at boot.
    pub fn onboot(self, on: bool) -> Self {
        self.set("onboot", bool_param(on))
    }
    /// The value this update sets for `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.set.get(key).map(String::as_str)
    }
    /// Keys this update sets, with values.
    pub fn sets(&self) -> impl Iterator<Item = (&str, &str)> {
        self.set.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }
    /// Keys this update deletes.
    pub fn deletes(&self) -> &[String] {
        &self.delete
    }
    /// The digest condition, if any.
    pub fn digest_condition(&self) -> Option<&str> {
        self.digest.as_deref()
    }
    /// True if the update changes nothing.
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.delete.is_empty()
    }

    pub(crate) fn to_form(&self) -> Vec<(String, String)> {
        let mut f: Vec<(String, String)> = self
            .set
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if !self.delete.is_empty() {
            f.push(("delete".to_owned(), self.delete.join(",")));
        }
        if let Some(d) = &self.digest {
            f.push(("digest".to_owned(), d.clone()));
        }
        f
    }
}

/// Options of `POST .../status/shutdown`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ShutdownOptions {
    /// How long PVE waits for the guest before giving up (PVE's default: 60 s... or forever
    /// for HA); whole seconds are sent.
    pub timeout: Option<Duration>,
    /// At the timeout, stop the VM instead of failing the task.
    pub force_stop: bool,
}

impl ShutdownOptions {
    pub(crate) fn to_form(self) -> Vec<(String, String)> {
        let mut f = Vec::new();
        if let Some(t) = self.timeout {
            f.push(("timeout".to_owned(), t.as_secs().to_string()));
        }
        if self.force_stop {
            f.push(("forceStop".to_owned(), "1".to_owned()));
        }
        f
    }
}

/// Options of `DELETE /nodes/{node}/qemu/{vmid}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeleteOptions {
    /// Also remove the VM from backup jobs, replication and HA.
    pub purge: bool,
    /// Also destroy disks with the VM's id that its config no longer references.
    pub destroy_unreferenced_disks: bool,
}

impl Default for DeleteOptions {
    /// Both on: BlockHost deletes VMs for good.
    fn default() -> Self {
        DeleteOptions {
            purge: true,
            destroy_unreferenced_disks: true,
        }
    }
}

impl DeleteOptions {
    pub(crate) fn to_query(self) -> Vec<(String, String)> {
        vec![
            ("purge".to_owned(), bool_param(self.purge)),
            (
                "destroy-unreferenced-disks".to_owned(),
                bool_param(self.destroy_unreferenced_disks),
            ),
        ]
    }
}

/// `state` of a task.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskState {
    /// Still running.
    Running,
    /// Finished; see `exitstatus`.
    Stopped,
}

/// `GET /nodes/{node}/tasks/{upid}/status`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct TaskStatus {
    /// The task.
    pub upid: Upid,
    /// Running or stopped.
    pub status: TaskState,
    /// `OK`, `WARNINGS: N`, or the error; only once stopped.
    #[serde(default)]
    pub exitstatus: Option<String>,
    /// Task type.
    #[serde(rename = "type", default)]
    pub task_type: String,
    /// Object id.
    #[serde(default, deserialize_with = "de::opt_string")]
    pub id: Option<String>,
    /// Node.
    #[serde(default)]
    pub node: String,
}

/// How a stopped task ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskExit {
    /// `OK`.
    Ok,
    /// `WARNINGS: N`: success, with N warnings in the log.
    Warnings(u32),
    /// Any other exit status: the error message.
    Failed(String),
}

impl TaskExit {
    /// Classify an exit status string.
    pub fn parse(exitstatus: &str) -> Self {
        let s = exitstatus.trim();
        if s == "OK" {
            return TaskExit::Ok;
        }
        if let Some(n) = s.strip_prefix("WARNINGS:")
            && let Ok(n) = n.trim().parse()
        {
            return TaskExit::Warnings(n);
        }
        TaskExit::Failed(s.to_owned())
    }
    /// True for `OK` and `WARNINGS: N`.
    pub fn is_success(&self) -> bool {
        !matches!(self, TaskExit::Failed(_))
    }
}

impl TaskStatus {
    /// `None` while running; the exit once stopped (a stopped task without an exit status is
    /// reported as failed, since PVE only omits it when the worker died).
    pub fn exit(&self) -> Option<TaskExit> {
        match self.status {
            TaskState::Running => None,
            TaskState::Stopped => Some(
                self.exitstatus
                    .as_deref()
                    .map(TaskExit::parse)
                    .unwrap_or_else(|| TaskExit::Failed("no exit status".to_owned())),
            ),
        }
    }
}

/// One line of `GET /nodes/{node}/tasks/{upid}/log`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct TaskLogLine {
    /// Line number, from 1.
    #[serde(deserialize_with = "de::int")]
    pub n: u64,
    /// Text.
    #[serde(default)]
    pub t: String,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn config_values_are_normalised_to_strings() {
        let c: VmConfig = serde_json::from_str(
            r#"{"cores":2,"memory":"2048","agent":"enabled=1","template":1,"tags":"a;b",
                "net0":"virtio=BC:24:11:00:00:01,bridge=vmbr0","net2":"e1000,bridge=vmbr1",
                "scsi0":"local-lvm:vm-100-disk-0,size=3G","ipconfig0":"ip=dhcp","cipassword":"h",
                "numa":false}"#,
        )
        .unwrap();
        assert_eq!(c.cores(), Some(2));
        assert_eq!(c.memory_mib(), Some(2048));
        assert!(c.agent_enabled());
        assert!(c.is_template());
        assert_eq!(c.tags(), vec!["a", "b"]);
        assert_eq!(c.get("numa"), Some("0"));
        assert_eq!(
            c.indexed("net").keys().copied().collect::<Vec<_>>(),
            vec![0, 2]
        );
        assert_eq!(c.net(2).unwrap().unwrap().model, "e1000");
        assert_eq!(c.disk_size("scsi0"), Some(3 << 30));
        assert!(c.ipconfig(0).unwrap().is_ok());
        assert!(!format!("{c:?}").contains("\"h\""));
        let m: VmConfig = serde_json::from_str(r#"{"memory":"current=4096"}"#).unwrap();
        assert_eq!(m.memory_mib(), Some(4096));
    }

    #[test]
    fn update_renders_form_and_redacts() {
        let u = ConfigUpdate::new()
            .cores(2)
            .delete("ide2")
            .cipassword("pw")
            .ssh_keys(["ssh-ed25519 AAA a@b"])
            .digest("d1");
        let f = u.to_form();
        assert!(f.contains(&("cores".into(), "2".into())));
        assert!(f.contains(&("delete".into(), "ide2".into())));
        assert!(f.contains(&("digest".into(), "d1".into())));
        assert!(f.contains(&("sshkeys".into(), "ssh-ed25519%20AAA%20a%40b".into())));
        assert!(!format!("{u:?}").contains("pw"));
        // Setting a key after deleting it cancels the delete, and vice versa.
        let u = ConfigUpdate::new().delete("tags").set("tags", "x");
        assert!(u.deletes().is_empty());
    }

    #[test]
    fn task_exit_parsing() {
        assert_eq!(TaskExit::parse("OK"), TaskExit::Ok);
        assert_eq!(TaskExit::parse("WARNINGS: 3"), TaskExit::Warnings(3));
        assert!(TaskExit::parse("WARNINGS: 1").is_success());
        assert_eq!(
            TaskExit::parse("VM is locked (backup)"),
            TaskExit::Failed("VM is locked (backup)".into())
        );
        let s: TaskStatus = serde_json::from_str(
            r#"{"upid":"UPID:pve1:000003E8:00001B58:6B07230F:qmstart:100:root@pam:","status":"stopped",
                "exitstatus":"WARNINGS: 2","type":"qmstart","id":100,"node":"pve1","pid":1000}"#,
        )
        .unwrap();
        assert_eq!(s.exit(), Some(TaskExit::Warnings(2)));
        assert_eq!(s.id.as_deref(), Some("100"));
    }

    #[test]
    fn cluster_resources_entry() {
        let v: ClusterVm = serde_json::from_str(
            r#"{"id":"qemu/100","type":"qemu","node":"pve1","name":"vm","vmid":"100",
                "status":"running","template":0,"maxmem":1073741824,"maxcpu":2,"tags":"x;y",
                "cpu":"0.5","mem":1,"maxdisk":0,"uptime":5,"lock":"backup"}"#,
        )
        .unwrap();
        assert_eq!(v.vmid, 100);
        assert_eq!(v.kind, GuestKind::Qemu);
        assert_eq!(v.status, RunState::Running);
        assert_eq!(v.tags, vec!["x", "y"]);
        assert_eq!(v.cpu, 0.5);
        assert_eq!(v.lock.as_deref(), Some("backup"));
    }
}
