//! An in-memory, zero-latency Proxmox VE cluster implementing [`Pve`], for the reconciler's unit
//! tests and benchmarks (feature `fake`).
//!
//! Deterministic: no clocks, no randomness, no threads. Every task finishes inside the call that
//! starts it, so a [`Pve::wait_task`] needs exactly one status poll. PVE's answers are imitated
//! where a reconciler's decisions depend on them: a missing VM is a 500 "Configuration file ...
//! does not exist", a taken `newid` is "already exists", locks fail with PVE's wording, a running
//! VM cannot be deleted, a shutdown slower than its timeout fails the task unless `forceStop`.
//!
//! Every call counts as one request (see [`FakeCluster::requests`]), so a benchmark can report
//! API requests per VM the way the HTTP client would send them.
//!
//! Faults are injected per operation (and optionally per VM) with [`FakeCluster::inject`].

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard};

use crate::api::Pve;
use crate::de::parse_bool;
use crate::error::{Error, Result};
use crate::firewall::{ClusterFirewallOptions, FirewallOptions, IpSetEntry};
use crate::propstring::{DiskSize, PropertyString, parse_size, parse_tags};
use crate::types::{
    CloneRequest, ClusterVm, ConfigUpdate, DeleteOptions, GuestKind, NodeState, NodeSummary,
    RunState, ShutdownOptions, TaskLogLine, TaskState, TaskStatus, Version, VmConfig, VmId,
    VmStatus,
};
use crate::upid::Upid;

const MIB: u64 = 1024 * 1024;
const GIB: u64 = 1024 * MIB;
/// PVE waits this long for an ACPI shutdown when the request names no timeout.
const DEFAULT_SHUTDOWN_TIMEOUT_SECS: u64 = 60;
const USER: &str = "root@pam!blockhost";

/// The operations of [`Pve`], for counting and fault injection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[allow(missing_docs)]
pub enum Op {
    Version,
    Nodes,
    ClusterVms,
    Clone,
    GetConfig,
    SetConfig,
    Resize,
    Status,
    Start,
    Shutdown,
    Stop,
    Delete,
    AgentPing,
    AgentFileWrite,
    TaskStatus,
    TaskLog,
    ClusterFirewall,
    FirewallOptions,
    SetFirewallOptions,
    IpSet,
    CreateIpSet,
    AddIpSetEntry,
    DeleteIpSetEntry,
}

impl Op {
    /// True for the task polling operations, which benchmarks count apart.
    pub fn is_task_poll(self) -> bool {
        matches!(self, Op::TaskStatus | Op::TaskLog)
    }
}

/// A failure to inject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Answer with this HTTP status and message (e.g. 503, or 500 "cluster not ready - no quorum?").
    Api {
        /// HTTP status.
        status: u16,
        /// PVE's message.
        message: String,
    },
    /// A 400 "Parameter verification failed." with one per-field message.
    Validation {
        /// The parameter.
        field: String,
        /// PVE's message for it.
        message: String,
    },
    /// 500 "VM is locked (backup)".
    Locked,
    /// 500 "can't lock file '/var/lock/qemu-server/lock-N.conf' - got timeout".
    LockTimeout,
    /// The connection fails (a transport error, as a reset would give).
    Connection,
    /// For operations that start a task: the task runs and ends with this exit status, changing
    /// nothing. For other operations: a 500 with this message.
    TaskError(String),
}

#[derive(Debug)]
struct FaultRule {
    op: Op,
    vmid: Option<VmId>,
    fault: Fault,
    remaining: Option<u32>,
}

/// A node of the fake cluster.
#[derive(Debug, Clone)]
struct FakeNode {
    online: bool,
    maxmem: u64,
    maxcpu: u32,
}

/// A VM of the fake cluster, as [`FakeCluster::vm`] shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeVm {
    /// Id.
    pub vmid: VmId,
    /// Node.
    pub node: String,
    /// Power state.
    pub status: RunState,
    /// Paused by `suspend`.
    pub paused: bool,
    /// Config, as `GET .../config` shows it (minus the digest).
    pub config: BTreeMap<String, String>,
    /// Config lock.
    pub lock: Option<String>,
    /// The guest agent answers.
    pub agent_ready: bool,
    /// `file-write`s received, oldest first: (path, content).
    pub agent_files: Vec<(String, String)>,
    /// Simulated seconds the guest takes to power off after ACPI.
    pub shutdown_secs: u64,
    /// The guest handles ACPI (if not, a shutdown always times out).
    pub acpi: bool,
    /// The next start fails with this message.
    pub start_error: Option<String>,
    generation: u64,
}

impl FakeVm {
    fn new(vmid: VmId, node: &str, config: BTreeMap<String, String>) -> Self {
        FakeVm {
            vmid,
            node: node.to_owned(),
            status: RunState::Stopped,
            paused: false,
            config,
            lock: None,
            agent_ready: false,
            agent_files: Vec::new(),
            shutdown_secs: 0,
            acpi: true,
            start_error: None,
            generation: 0,
        }
    }
    fn is_template(&self) -> bool {
        self.config
            .get("template")
            .and_then(|v| parse_bool(v))
            .unwrap_or(false)
    }
    // cluster_vms calls these for every VM on every resync: plain numbers take the fast path.
    fn memory_bytes(&self) -> u64 {
        let raw = self.config.get("memory").map_or("512", |s| s.as_str());
        let mib = raw.parse::<u64>().ok().or_else(|| {
            let ps = PropertyString::parse(raw);
            ps.get("current").or(ps.bare())?.parse().ok()
        });
        mib.unwrap_or(512) * MIB
    }
    fn vcpus(&self) -> u32 {
        let get = |k: &str| self.config.get(k).and_then(|v| v.parse::<u32>().ok());
        get("cores").unwrap_or(1) * get("sockets").unwrap_or(1)
    }
    fn boot_disk_bytes(&self) -> u64 {
        ["scsi0", "virtio0", "sata0", "ide0"]
            .iter()
            .find_map(|k| {
                let v = self.config.get(*k)?;
                let size = v.split(',').find_map(|item| item.strip_prefix("size="))?;
                parse_size(size)
            })
            .unwrap_or(0)
    }
}

/// A VM's firewall configuration, as [`FakeCluster::firewall`] shows it. Kept by VMID
/// whatever the VM is, as PVE keeps `/etc/pve/firewall/<vmid>.fw`: a clone copies its
/// source's, a delete removes it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FakeFirewall {
    /// The options, as set (`None`: PVE's default).
    pub options: FirewallOptions,
    /// IP sets by name, entries newest first as PVE lists them.
    pub ipsets: BTreeMap<String, Vec<IpSetEntry>>,
}

#[derive(Debug)]
struct FakeTask {
    status: TaskStatus,
    log: Vec<String>,
}

/// A fault-injection hook: decides per request, e.g. "fail every third clone".
pub type Hook = Box<dyn FnMut(Op, Option<VmId>) -> Option<Fault> + Send>;

struct State {
    nodes: BTreeMap<String, FakeNode>,
    vms: BTreeMap<VmId, FakeVm>,
    firewalls: BTreeMap<VmId, FakeFirewall>,
    cluster_firewall: bool,
    tasks: HashMap<String, FakeTask>,
    next_pid: u32,
    faults: Vec<FaultRule>,
    requests: BTreeMap<Op, u64>,
    agent_on_start: bool,
    hook: Option<Hook>,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("nodes", &self.nodes)
            .field("vms", &self.vms.len())
            .field("tasks", &self.tasks.len())
            .field("faults", &self.faults)
            .field("requests", &self.requests)
            .field("hook", &self.hook.is_some())
            .finish()
    }
}

/// The in-memory cluster. Share it behind an `Arc`; all methods take `&self`.
#[derive(Debug)]
pub struct FakeCluster {
    state: Mutex<State>,
}

impl Default for FakeCluster {
    fn default() -> Self {
        Self::new()
    }
}

fn api(status: u16, message: impl Into<String>) -> Error {
    Error::Api {
        method: "FAKE",
        path: String::new(),
        status,
        message: message.into(),
        field_errors: BTreeMap::new(),
    }
}

fn validation(fields: BTreeMap<String, String>) -> Error {
    Error::Api {
        method: "FAKE",
        path: String::new(),
        status: 400,
        message: "Parameter verification failed.".into(),
        field_errors: fields,
    }
}

fn no_such_vm(node: &str, vmid: VmId) -> Error {
    api(
        500,
        format!("Configuration file 'nodes/{node}/qemu-server/{vmid}.conf' does not exist"),
    )
}

/// What an operation does once it has checked its preconditions.
enum TaskResult {
    Ok(Option<String>),
    Failed(String),
}

impl FakeCluster {
    /// An empty cluster with no nodes. Guest agents answer once a VM is started.
    pub fn new() -> Self {
        FakeCluster {
            state: Mutex::new(State {
                nodes: BTreeMap::new(),
                vms: BTreeMap::new(),
                firewalls: BTreeMap::new(),
                cluster_firewall: false,
                tasks: HashMap::new(),
                next_pid: 1,
                faults: Vec::new(),
                requests: BTreeMap::new(),
                agent_on_start: true,
                hook: None,
            }),
        }
    }

    /// Node `pve1` (64 GiB, 16 CPUs) with template 9001 (`debian-12-template`: 1 core, 1 GiB,
    /// a 3 GiB `scsi0`, cloud-init drive, virtio NIC on vmbr0, agent enabled), like the
    /// fakepve server the integration tests use, and the datacenter firewall on.
    pub fn standard() -> Self {
        let c = Self::new();
        c.set_cluster_firewall(true);
        c.add_node("pve1", 64 * GIB, 16);
        let cfg: BTreeMap<String, String> = [
            ("name", "debian-12-template"),
            ("cores", "1"),
            ("memory", "1024"),
            ("ostype", "l26"),
            ("agent", "enabled=1"),
            ("scsihw", "virtio-scsi-single"),
            ("scsi0", "local-lvm:base-9001-disk-0,size=3G"),
            ("ide2", "local-lvm:vm-9001-cloudinit,media=cdrom"),
            ("net0", "virtio=BC:24:11:00:90:01,bridge=vmbr0"),
            ("boot", "order=scsi0"),
            ("template", "1"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        c.add_vm("pve1", 9001, cfg);
        c
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic in another test thread must not cascade: the state is still consistent,
        // since every mutation finishes before the guard drops.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Add (or replace) a node.
    pub fn add_node(&self, name: &str, maxmem: u64, maxcpu: u32) {
        self.lock().nodes.insert(
            name.to_owned(),
            FakeNode {
                online: true,
                maxmem,
                maxcpu,
            },
        );
    }

    /// Take a node offline (its VMs show `unknown`, requests to it fail with 595) or back.
    pub fn set_node_online(&self, name: &str, online: bool) {
        if let Some(n) = self.lock().nodes.get_mut(name) {
            n.online = online;
        }
    }

    /// Add a stopped VM (or template, with `template: 1` in `config`) on `node`.
    pub fn add_vm(&self, node: &str, vmid: VmId, config: BTreeMap<String, String>) {
        self.lock()
            .vms
            .insert(vmid, FakeVm::new(vmid, node, config));
    }

    /// A copy of a VM's state.
    pub fn vm(&self, vmid: VmId) -> Option<FakeVm> {
        self.lock().vms.get(&vmid).cloned()
    }

    /// Ids of all VMs (templates included).
    pub fn vmids(&self) -> Vec<VmId> {
        self.lock().vms.keys().copied().collect()
    }

    /// Change a VM behind the reconciler's back (drift, crashes, locks, slow shutdowns...).
    /// Returns false if there is no such VM.
    pub fn modify_vm(&self, vmid: VmId, f: impl FnOnce(&mut FakeVm)) -> bool {
        let mut st = self.lock();
        match st.vms.get_mut(&vmid) {
            Some(vm) => {
                f(vm);
                vm.generation += 1;
                true
            }
            None => false,
        }
    }

    /// A copy of the firewall configuration kept for `vmid` (empty if none).
    pub fn firewall(&self, vmid: VmId) -> FakeFirewall {
        self.lock()
            .firewalls
            .get(&vmid)
            .cloned()
            .unwrap_or_default()
    }

    /// Whether any firewall configuration is kept for `vmid`.
    pub fn has_firewall(&self, vmid: VmId) -> bool {
        self.lock().firewalls.contains_key(&vmid)
    }

    /// Change a VM's firewall behind the reconciler's back.
    pub fn modify_firewall(&self, vmid: VmId, f: impl FnOnce(&mut FakeFirewall)) {
        f(self.lock().firewalls.entry(vmid).or_default());
    }

    /// Turn the datacenter firewall on or off (off in [`FakeCluster::new`], on in
    /// [`FakeCluster::standard`]).
    pub fn set_cluster_firewall(&self, on: bool) {
        self.lock().cluster_firewall = on;
    }

    /// Make a VM vanish, as an admin's `qm destroy` would.
    pub fn remove_vm(&self, vmid: VmId) -> bool {
        self.lock().vms.remove(&vmid).is_some()
    }

    /// Whether guest agents answer as soon as their VM starts (default: true). When false,
    /// set [`FakeVm::agent_ready`] with [`FakeCluster::modify_vm`].
    pub fn set_agent_on_start(&self, on: bool) {
        self.lock().agent_on_start = on;
    }

    /// Fail the next `times` calls of `op` (every call if `None`), for any VM or only `vmid`.
    pub fn inject(&self, op: Op, vmid: Option<VmId>, fault: Fault, times: Option<u32>) {
        self.lock().faults.push(FaultRule {
            op,
            vmid,
            fault,
            remaining: times,
        });
    }

    /// Remove every injected fault and the hook.
    pub fn clear_faults(&self) {
        let mut st = self.lock();
        st.faults.clear();
        st.hook = None;
    }

    /// Consult `hook` on every request (after counting it, before the faults of
    /// [`FakeCluster::inject`]); a `Some` answer is applied like an injected fault. The hook runs
    /// with the cluster locked, so it must not call back into the cluster.
    pub fn set_hook(&self, hook: impl FnMut(Op, Option<VmId>) -> Option<Fault> + Send + 'static) {
        self.lock().hook = Some(Box::new(hook));
    }

    /// Requests answered so far, all operations.
    pub fn requests(&self) -> u64 {
        self.lock().requests.values().sum()
    }

    /// Requests answered so far, excluding task status and log polls.
    pub fn requests_without_task_polls(&self) -> u64 {
        self.lock()
            .requests
            .iter()
            .filter(|(op, _)| !op.is_task_poll())
            .map(|(_, n)| n)
            .sum()
    }

    /// Requests answered so far, per operation.
    pub fn requests_by_op(&self) -> BTreeMap<Op, u64> {
        self.lock().requests.clone()
    }

    /// Reset the request counters.
    pub fn reset_requests(&self) {
        self.lock().requests.clear();
    }

    /// Count the request and apply any matching fault. Returns the fault to act on.
    fn enter(st: &mut State, op: Op, vmid: Option<VmId>) -> Option<Fault> {
        *st.requests.entry(op).or_insert(0) += 1;
        if let Some(fault) = st.hook.as_mut().and_then(|h| h(op, vmid)) {
            return Some(fault);
        }
        let pos = st
            .faults
            .iter()
            .position(|r| r.op == op && (r.vmid.is_none() || r.vmid == vmid))?;
        let rule = &mut st.faults[pos];
        let fault = rule.fault.clone();
        if let Some(n) = rule.remaining.as_mut() {
            *n = n.saturating_sub(1);
            if *n == 0 {
                st.faults.remove(pos);
            }
        }
        Some(fault)
    }

    /// Turn a fault into the error a non-task operation returns.
    fn fault_error(fault: Fault, vmid: Option<VmId>) -> Error {
        let id = vmid.unwrap_or(100);
        match fault {
            Fault::Api { status, message } => api(status, message),
            Fault::Validation { field, message } => validation(BTreeMap::from([(field, message)])),
            Fault::Locked => api(500, "VM is locked (backup)"),
            Fault::LockTimeout => api(
                500,
                format!("can't lock file '/var/lock/qemu-server/lock-{id}.conf' - got timeout"),
            ),
            Fault::Connection => Error::Transport {
                method: "FAKE",
                path: String::new(),
                source: Box::new(std::io::Error::new(
                    std::io::ErrorKind::ConnectionReset,
                    "injected connection reset",
                )),
            },
            Fault::TaskError(message) => api(500, message),
        }
    }

    /// Run a plain (non-task) operation: count, apply faults, then `f`.
    fn plain<T>(
        &self,
        op: Op,
        vmid: Option<VmId>,
        f: impl FnOnce(&mut State) -> Result<T>,
    ) -> Result<T> {
        let mut st = self.lock();
        if let Some(fault) = Self::enter(&mut st, op, vmid) {
            return Err(Self::fault_error(fault, vmid));
        }
        f(&mut st)
    }

    /// Run an operation that answers with a task: count, apply faults (a `TaskError` fault
    /// gives a failed task and skips `f`), then `f`, whose result decides the task's exit.
    fn task(
        &self,
        op: Op,
        node: &str,
        vmid: VmId,
        task_type: &str,
        f: impl FnOnce(&mut State) -> Result<TaskResult>,
    ) -> Result<Upid> {
        let mut st = self.lock();
        let result = match Self::enter(&mut st, op, Some(vmid)) {
            Some(Fault::TaskError(message)) => TaskResult::Failed(message),
            Some(other) => return Err(Self::fault_error(other, Some(vmid))),
            None => {
                Self::check_node(&st, node)?;
                f(&mut st)?
            }
        };
        let pid = st.next_pid;
        st.next_pid += 1;
        // A fixed start time keeps every run identical.
        let upid = Upid::new(
            node,
            pid,
            u64::from(pid),
            0x6000_0000 + u64::from(pid),
            task_type,
            &vmid.to_string(),
            USER,
        );
        let (exitstatus, mut log) = match result {
            TaskResult::Ok(note) => ("OK".to_owned(), note.into_iter().collect::<Vec<_>>()),
            TaskResult::Failed(m) => (m.clone(), vec![m]),
        };
        log.push(if exitstatus == "OK" {
            "TASK OK".to_owned()
        } else {
            format!("TASK ERROR: {exitstatus}")
        });
        st.tasks.insert(
            upid.to_string(),
            FakeTask {
                status: TaskStatus {
                    upid: upid.clone(),
                    status: TaskState::Stopped,
                    exitstatus: Some(exitstatus),
                    task_type: task_type.to_owned(),
                    id: Some(vmid.to_string()),
                    node: node.to_owned(),
                },
                log,
            },
        );
        Ok(upid)
    }

    fn check_node(st: &State, node: &str) -> Result<()> {
        match st.nodes.get(node) {
            None => Err(api(
                500,
                format!(
                    "hostname lookup '{node}' failed - failed to get address info for: {node}: Name or service not known"
                ),
            )),
            Some(n) if !n.online => Err(api(595, "No route to host")),
            Some(_) => Ok(()),
        }
    }

    fn find<'a>(st: &'a mut State, node: &str, vmid: VmId) -> Result<&'a mut FakeVm> {
        Self::check_node(st, node)?;
        match st.vms.get_mut(&vmid) {
            Some(vm) if vm.node == node => Ok(vm),
            _ => Err(no_such_vm(node, vmid)),
        }
    }

    fn check_lock(vm: &FakeVm) -> Result<()> {
        match &vm.lock {
            Some(l) => Err(api(500, format!("VM is locked ({l})"))),
            None => Ok(()),
        }
    }

    fn need_running(vm: &FakeVm) -> Result<()> {
        if vm.status == RunState::Running {
            Ok(())
        } else {
            Err(api(500, format!("VM {} not running", vm.vmid)))
        }
    }

    fn validate(update: &ConfigUpdate) -> Result<()> {
        let mut errors = BTreeMap::new();
        for (k, v) in update.sets() {
            let numeric = matches!(k, "cores" | "sockets" | "memory");
            if numeric && v.parse::<u64>().map_or(true, |n| n == 0) {
                errors.insert(
                    k.to_owned(),
                    format!("type check ('integer') failed - got '{v}'"),
                );
            }
            if k.starts_with("ipconfig")
                && let Err(e) = v.parse::<crate::propstring::IpConfig>()
            {
                errors.insert(k.to_owned(), format!("invalid format - {e}"));
            }
            if k == "name" && (v.is_empty() || v.contains(|c: char| c == '_' || c.is_whitespace()))
            {
                errors.insert(
                    k.to_owned(),
                    "invalid format - value does not look like a valid DNS name".to_owned(),
                );
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(validation(errors))
        }
    }

    fn apply(vm: &mut FakeVm, update: &ConfigUpdate) -> Result<()> {
        Self::validate(update)?;
        Self::check_lock(vm)?;
        if let Some(d) = update.digest_condition()
            && d != Self::digest(vm)
        {
            return Err(api(
                500,
                "detected modified configuration - file changed by other user? Try again.",
            ));
        }
        for k in update.deletes() {
            vm.config.remove(k);
        }
        for (k, v) in update.sets() {
            let v = if k == "tags" {
                parse_tags(v).join(";")
            } else if is_net_key(k) {
                Self::with_mac(vm, v)
            } else {
                v.to_owned()
            };
            vm.config.insert(k.to_owned(), v);
        }
        vm.generation += 1;
        Ok(())
    }

    /// A NIC as PVE stores it: a value without a MAC gets a new one (PVE's
    /// parse_net makes a random MAC under the datacenter's prefix), which is why
    /// an update that rewrites a NIC must carry the MAC it has. The fake's MACs
    /// are unique per VM and update, under PVE's default prefix BC:24:11.
    fn with_mac(vm: &FakeVm, value: &str) -> String {
        match value.parse::<crate::NetDevice>() {
            Ok(mut dev) if dev.macaddr.is_none() => {
                let n = (u64::from(vm.vmid) << 8) | (vm.generation & 0xff);
                dev.macaddr = Some(format!(
                    "BC:24:11:{:02X}:{:02X}:{:02X}",
                    (n >> 16) & 0xff,
                    (n >> 8) & 0xff,
                    n & 0xff
                ));
                dev.to_string()
            }
            _ => value.to_owned(),
        }
    }

    fn digest(vm: &FakeVm) -> String {
        format!("{:040x}", vm.generation)
    }
}

/// `net0`, `net1`, …: a NIC's config key.
fn is_net_key(key: &str) -> bool {
    key.strip_prefix("net")
        .is_some_and(|i| !i.is_empty() && i.bytes().all(|b| b.is_ascii_digit()))
}

impl Pve for FakeCluster {
    async fn version(&self) -> Result<Version> {
        self.plain(Op::Version, None, |_| {
            Ok(Version {
                version: "9.0.10".into(),
                release: "9.0".into(),
                repoid: "blockhost-fake".into(),
            })
        })
    }

    async fn nodes(&self) -> Result<Vec<NodeSummary>> {
        self.plain(Op::Nodes, None, |st| {
            Ok(st
                .nodes
                .iter()
                .map(|(name, n)| {
                    let used: u64 = st
                        .vms
                        .values()
                        .filter(|v| v.node == *name && v.status == RunState::Running)
                        .map(FakeVm::memory_bytes)
                        .sum();
                    NodeSummary {
                        node: name.clone(),
                        status: if n.online {
                            NodeState::Online
                        } else {
                            NodeState::Offline
                        },
                        cpu: n.online.then_some(0.0),
                        maxcpu: n.online.then_some(n.maxcpu),
                        mem: n.online.then_some(used),
                        maxmem: n.online.then_some(n.maxmem),
                        uptime: n.online.then_some(3600),
                    }
                })
                .collect())
        })
    }

    async fn cluster_vms(&self) -> Result<Vec<ClusterVm>> {
        self.plain(Op::ClusterVms, None, |st| {
            Ok(st
                .vms
                .values()
                .map(|vm| {
                    let online = st.nodes.get(&vm.node).is_some_and(|n| n.online);
                    let running = vm.status == RunState::Running;
                    ClusterVm {
                        vmid: vm.vmid,
                        kind: GuestKind::Qemu,
                        node: vm.node.clone(),
                        name: vm.config.get("name").cloned(),
                        status: if online {
                            vm.status.clone()
                        } else {
                            RunState::Unknown
                        },
                        template: vm.is_template(),
                        tags: vm
                            .config
                            .get("tags")
                            .map(|t| parse_tags(t))
                            .unwrap_or_default(),
                        lock: vm.lock.clone(),
                        maxmem: vm.memory_bytes(),
                        mem: if running { 64 * MIB } else { 0 },
                        maxcpu: f64::from(vm.vcpus()),
                        cpu: 0.0,
                        maxdisk: vm.boot_disk_bytes(),
                        uptime: 0,
                    }
                })
                .collect())
        })
    }

    async fn clone_vm(&self, node: &str, source: VmId, req: &CloneRequest) -> Result<Upid> {
        let newid = req.newid;
        self.task(Op::Clone, node, source, "qmclone", |st| {
            if let Some(name) = &req.name {
                let probe = ConfigUpdate::new().name(name.clone());
                Self::validate(&probe)?;
            }
            let src = Self::find(st, node, source)?;
            Self::check_lock(src)?;
            let src = src.clone();
            if st.vms.contains_key(&newid) {
                return Err(api(
                    500,
                    format!("unable to create VM {newid}: config file already exists"),
                ));
            }
            let target = req.target.clone().unwrap_or_else(|| node.to_owned());
            Self::check_node(st, &target)?;
            let mut config: BTreeMap<String, String> = src
                .config
                .iter()
                .filter(|(k, _)| !matches!(k.as_str(), "template" | "lock"))
                .map(|(k, v)| {
                    // Disks get the new VM's volume names, as a full clone allocates them.
                    let v = v
                        .replace(&format!("base-{source}-"), &format!("vm-{newid}-"))
                        .replace(&format!("vm-{source}-"), &format!("vm-{newid}-"));
                    (k.clone(), v)
                })
                .collect();
            config.insert(
                "name".into(),
                req.name.clone().unwrap_or_else(|| {
                    format!("Copy-of-VM-{}", src.config.get("name").map_or("", |s| s))
                }),
            );
            if let Some(d) = &req.description {
                config.insert("description".into(), d.clone());
            }
            st.vms.insert(newid, FakeVm::new(newid, &target, config));
            // PVE's clone copies the source's firewall file (clone_vmfw_conf).
            if let Some(fw) = st.firewalls.get(&source).cloned() {
                st.firewalls.insert(newid, fw);
            }
            Ok(TaskResult::Ok(Some(format!(
                "create full clone of drive scsi0 for VM {newid}"
            ))))
        })
    }

    async fn vm_config(&self, node: &str, vmid: VmId) -> Result<VmConfig> {
        self.plain(Op::GetConfig, Some(vmid), |st| {
            let vm = Self::find(st, node, vmid)?;
            let mut map = vm.config.clone();
            if let Some(l) = &vm.lock {
                map.insert("lock".into(), l.clone());
            }
            map.insert("digest".into(), Self::digest(vm));
            Ok(VmConfig::from_map(map))
        })
    }

    async fn set_vm_config(&self, node: &str, vmid: VmId, update: &ConfigUpdate) -> Result<()> {
        self.plain(Op::SetConfig, Some(vmid), |st| {
            let vm = Self::find(st, node, vmid)?;
            Self::apply(vm, update)
        })
    }

    async fn resize_disk(
        &self,
        node: &str,
        vmid: VmId,
        disk: &str,
        size: DiskSize,
    ) -> Result<Option<Upid>> {
        self.task(Op::Resize, node, vmid, "resize", |st| {
            let vm = Self::find(st, node, vmid)?;
            Self::check_lock(vm)?;
            let Some(value) = vm.config.get(disk) else {
                return Err(validation(BTreeMap::from([(
                    "disk".to_owned(),
                    format!("no such disk '{disk}'"),
                )])));
            };
            let mut ps = PropertyString::parse(value);
            let current = ps.get("size").and_then(parse_size).unwrap_or(0);
            let new = match size {
                DiskSize::Grow(b) => current.saturating_add(b),
                DiskSize::Absolute(b) => b,
            };
            if new < current {
                return Err(api(500, "shrinking disks is not supported"));
            }
            ps.set("size", DiskSize::Absolute(new).to_string());
            vm.config.insert(disk.to_owned(), ps.to_string());
            vm.generation += 1;
            Ok(TaskResult::Ok(None))
        })
        .map(Some)
    }

    async fn vm_status(&self, node: &str, vmid: VmId) -> Result<VmStatus> {
        self.plain(Op::Status, Some(vmid), |st| {
            let vm = Self::find(st, node, vmid)?;
            let running = vm.status == RunState::Running;
            Ok(VmStatus {
                vmid,
                name: vm.config.get("name").cloned(),
                status: vm.status.clone(),
                qmpstatus: Some(
                    if vm.paused {
                        "paused"
                    } else if running {
                        "running"
                    } else {
                        "stopped"
                    }
                    .to_owned(),
                ),
                lock: vm.lock.clone(),
                agent: vm
                    .config
                    .get("agent")
                    .map(|a| VmConfig::from_map(BTreeMap::from([("agent".to_owned(), a.clone())])))
                    .is_some_and(|c| c.agent_enabled()),
                cpus: f64::from(vm.vcpus()),
                maxmem: vm.memory_bytes(),
                uptime: 0,
                tags: vm
                    .config
                    .get("tags")
                    .map(|t| parse_tags(t))
                    .unwrap_or_default(),
                template: vm.is_template(),
            })
        })
    }

    async fn start_vm(&self, node: &str, vmid: VmId) -> Result<Upid> {
        self.task(Op::Start, node, vmid, "qmstart", |st| {
            let agent_on_start = st.agent_on_start;
            let vm = Self::find(st, node, vmid)?;
            // PVE checks these inside the worker, so they are task errors.
            if vm.is_template() {
                return Ok(TaskResult::Failed(
                    "you can't start a vm if it's a template".into(),
                ));
            }
            if let Some(l) = &vm.lock {
                return Ok(TaskResult::Failed(format!("VM is locked ({l})")));
            }
            if vm.status == RunState::Running {
                return Ok(TaskResult::Failed(format!("VM {vmid} already running")));
            }
            if let Some(e) = vm.start_error.take() {
                return Ok(TaskResult::Failed(e));
            }
            vm.status = RunState::Running;
            vm.paused = false;
            vm.agent_ready = agent_on_start;
            Ok(TaskResult::Ok(None))
        })
    }

    async fn shutdown_vm(&self, node: &str, vmid: VmId, opts: ShutdownOptions) -> Result<Upid> {
        self.task(Op::Shutdown, node, vmid, "qmshutdown", |st| {
            let vm = Self::find(st, node, vmid)?;
            Self::need_running(vm)?;
            Self::check_lock(vm)?;
            let timeout = opts
                .timeout
                .map_or(DEFAULT_SHUTDOWN_TIMEOUT_SECS, |t| t.as_secs());
            if vm.acpi && vm.shutdown_secs <= timeout {
                vm.status = RunState::Stopped;
                vm.paused = false;
                vm.agent_ready = false;
                return Ok(TaskResult::Ok(None));
            }
            if opts.force_stop {
                vm.status = RunState::Stopped;
                vm.paused = false;
                vm.agent_ready = false;
                return Ok(TaskResult::Ok(Some(
                    "VM still running - terminating now with SIGTERM".into(),
                )));
            }
            Ok(TaskResult::Failed(
                "VM quit/powerdown failed - got timeout".into(),
            ))
        })
    }

    async fn stop_vm(&self, node: &str, vmid: VmId) -> Result<Upid> {
        self.task(Op::Stop, node, vmid, "qmstop", |st| {
            let vm = Self::find(st, node, vmid)?;
            Self::check_lock(vm)?;
            vm.status = RunState::Stopped;
            vm.paused = false;
            vm.agent_ready = false;
            Ok(TaskResult::Ok(None))
        })
    }

    async fn delete_vm(&self, node: &str, vmid: VmId, opts: DeleteOptions) -> Result<Upid> {
        self.task(Op::Delete, node, vmid, "qmdestroy", |st| {
            let vm = Self::find(st, node, vmid)?;
            if vm
                .config
                .get("protection")
                .and_then(|p| parse_bool(p))
                .unwrap_or(false)
            {
                return Err(api(
                    500,
                    format!("can't remove VM {vmid} - protection mode enabled"),
                ));
            }
            if vm.status == RunState::Running {
                return Err(api(500, format!("VM {vmid} is running - destroy failed")));
            }
            if let Some(l) = &vm.lock {
                return Ok(TaskResult::Failed(format!("VM is locked ({l})")));
            }
            st.vms.remove(&vmid);
            // PVE removes the VM's firewall file with it (remove_vmfw_conf).
            st.firewalls.remove(&vmid);
            Ok(TaskResult::Ok(opts.purge.then(|| {
                format!("purging VM {vmid} from related configurations..")
            })))
        })
    }

    async fn agent_ping(&self, node: &str, vmid: VmId) -> Result<()> {
        self.plain(Op::AgentPing, Some(vmid), |st| {
            Self::agent(st, node, vmid).map(|_| ())
        })
    }

    async fn agent_file_write(
        &self,
        node: &str,
        vmid: VmId,
        path: &str,
        content: &str,
    ) -> Result<()> {
        self.plain(Op::AgentFileWrite, Some(vmid), |st| {
            let vm = Self::agent(st, node, vmid)?;
            vm.agent_files.push((path.to_owned(), content.to_owned()));
            Ok(())
        })
    }

    async fn cluster_firewall_options(&self) -> Result<ClusterFirewallOptions> {
        self.plain(Op::ClusterFirewall, None, |st| {
            Ok(ClusterFirewallOptions {
                enable: st.cluster_firewall.then_some(1),
            })
        })
    }

    async fn vm_firewall_options(&self, node: &str, vmid: VmId) -> Result<FirewallOptions> {
        self.plain(Op::FirewallOptions, Some(vmid), |st| {
            Self::check_node(st, node)?;
            Ok(st
                .firewalls
                .get(&vmid)
                .map(|f| f.options.clone())
                .unwrap_or_default())
        })
    }

    async fn set_vm_firewall_options(
        &self,
        node: &str,
        vmid: VmId,
        options: &FirewallOptions,
    ) -> Result<()> {
        self.plain(Op::SetFirewallOptions, Some(vmid), |st| {
            Self::check_node(st, node)?;
            let o = &mut st.firewalls.entry(vmid).or_default().options;
            let set = |have: &mut Option<bool>, want: Option<bool>| {
                if want.is_some() {
                    *have = want;
                }
            };
            set(&mut o.enable, options.enable);
            set(&mut o.ipfilter, options.ipfilter);
            set(&mut o.macfilter, options.macfilter);
            set(&mut o.dhcp, options.dhcp);
            set(&mut o.ndp, options.ndp);
            set(&mut o.radv, options.radv);
            if options.policy_in.is_some() {
                o.policy_in = options.policy_in;
            }
            if options.policy_out.is_some() {
                o.policy_out = options.policy_out;
            }
            Ok(())
        })
    }

    async fn vm_ipset(&self, node: &str, vmid: VmId, name: &str) -> Result<Vec<IpSetEntry>> {
        self.plain(Op::IpSet, Some(vmid), |st| {
            Self::check_node(st, node)?;
            Self::check_ipset_name(name)?;
            st.firewalls
                .get(&vmid)
                .and_then(|f| f.ipsets.get(name))
                .cloned()
                .ok_or_else(|| no_such_ipset(name))
        })
    }

    async fn create_vm_ipset(
        &self,
        node: &str,
        vmid: VmId,
        name: &str,
        _comment: Option<&str>,
    ) -> Result<()> {
        self.plain(Op::CreateIpSet, Some(vmid), |st| {
            Self::check_node(st, node)?;
            Self::check_ipset_name(name)?;
            let fw = st.firewalls.entry(vmid).or_default();
            if fw.ipsets.contains_key(name) {
                return Err(validation(BTreeMap::from([(
                    "name".to_owned(),
                    format!("IPSet '{name}' already exists"),
                )])));
            }
            fw.ipsets.insert(name.to_owned(), Vec::new());
            Ok(())
        })
    }

    async fn add_vm_ipset_entry(
        &self,
        node: &str,
        vmid: VmId,
        name: &str,
        cidr: &str,
        comment: Option<&str>,
    ) -> Result<()> {
        self.plain(Op::AddIpSetEntry, Some(vmid), |st| {
            Self::check_node(st, node)?;
            Self::check_ipset_name(name)?;
            let cidr = Self::normalise_cidr(cidr)?;
            let entries = st
                .firewalls
                .get_mut(&vmid)
                .and_then(|f| f.ipsets.get_mut(name))
                .ok_or_else(|| no_such_ipset(name))?;
            if entries.iter().any(|e| e.cidr == cidr) {
                return Err(validation(BTreeMap::from([(
                    "cidr".to_owned(),
                    format!("address '{cidr}' already exists"),
                )])));
            }
            entries.insert(
                0,
                IpSetEntry {
                    cidr,
                    nomatch: false,
                    comment: comment.map(str::to_owned),
                },
            );
            Ok(())
        })
    }

    async fn delete_vm_ipset_entry(
        &self,
        node: &str,
        vmid: VmId,
        name: &str,
        cidr: &str,
    ) -> Result<()> {
        self.plain(Op::DeleteIpSetEntry, Some(vmid), |st| {
            Self::check_node(st, node)?;
            Self::check_ipset_name(name)?;
            let entries = st
                .firewalls
                .get_mut(&vmid)
                .and_then(|f| f.ipsets.get_mut(name))
                .ok_or_else(|| no_such_ipset(name))?;
            // PVE removes whatever matches and is silent when nothing does.
            entries.retain(|e| e.cidr != cidr);
            Ok(())
        })
    }

    async fn task_status(&self, upid: &Upid) -> Result<TaskStatus> {
        self.plain(Op::TaskStatus, None, |st| {
            st.tasks
                .get(upid.as_str())
                .map(|t| t.status.clone())
                .ok_or_else(|| api(500, format!("unable to parse worker upid '{upid}'")))
        })
    }

    async fn task_log(&self, upid: &Upid, start: u64, limit: u64) -> Result<Vec<TaskLogLine>> {
        self.plain(Op::TaskLog, None, |st| {
            let t = st
                .tasks
                .get(upid.as_str())
                .ok_or_else(|| api(500, format!("unable to parse worker upid '{upid}'")))?;
            Ok(t.log
                .iter()
                .enumerate()
                .skip(usize::try_from(start).unwrap_or(usize::MAX))
                .take(usize::try_from(limit).unwrap_or(usize::MAX))
                .map(|(i, line)| TaskLogLine {
                    n: i as u64 + 1,
                    t: line.clone(),
                })
                .collect())
        })
    }
}

fn no_such_ipset(name: &str) -> Error {
    api(500, format!("no such IPSet '{name}'"))
}

impl FakeCluster {
    /// PVE's pattern for IP set names: `[A-Za-z][A-Za-z0-9\-\_]+`, 2–64 characters.
    fn check_ipset_name(name: &str) -> Result<()> {
        let mut chars = name.chars();
        let ok = (2..=64).contains(&name.len())
            && chars.next().is_some_and(|c| c.is_ascii_alphabetic())
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if ok {
            Ok(())
        } else {
            Err(validation(BTreeMap::from([(
                "name".to_owned(),
                format!("value does not match the regex pattern ({name})"),
            )])))
        }
    }

    /// An IP set entry as PVE stores it: host bits of a network dropped, a host's
    /// `/32` or `/128` left out; anything else is refused as PVE refuses it.
    fn normalise_cidr(cidr: &str) -> Result<String> {
        let bad = || {
            validation(BTreeMap::from([(
                "cidr".to_owned(),
                format!(
                    "invalid format - value does not look like a valid IP address or CIDR network ({cidr})"
                ),
            )]))
        };
        let (addr, len) = match cidr.split_once('/') {
            Some((a, l)) => (a, Some(l.parse::<u8>().map_err(|_| bad())?)),
            None => (cidr, None),
        };
        let ip: std::net::IpAddr = addr.parse().map_err(|_| bad())?;
        let full = if ip.is_ipv4() { 32 } else { 128 };
        match len {
            None => Ok(ip.to_string()),
            Some(l) if l == full => Ok(ip.to_string()),
            Some(0) => Err(validation(BTreeMap::from([(
                "cidr".to_owned(),
                "a zero prefix is not allowed in ipset entries".to_owned(),
            )]))),
            Some(l) if l > full => Err(bad()),
            Some(l) => {
                let net = match ip {
                    std::net::IpAddr::V4(a) => {
                        let m = u32::MAX << (32 - u32::from(l));
                        std::net::IpAddr::V4((u32::from(a) & m).into())
                    }
                    std::net::IpAddr::V6(a) => {
                        let m = u128::MAX << (128 - u32::from(l));
                        std::net::IpAddr::V6((u128::from(a) & m).into())
                    }
                };
                Ok(format!("{net}/{l}"))
            }
        }
    }

    fn agent<'a>(st: &'a mut State, node: &str, vmid: VmId) -> Result<&'a mut FakeVm> {
        let vm = Self::find(st, node, vmid)?;
        if vm.status != RunState::Running || !vm.agent_ready {
            return Err(api(500, "QEMU guest agent is not running"));
        }
        Ok(vm)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::time::Duration;

    use super::*;
    use crate::api::WaitOptions;
    use crate::error::ErrorKind;
    use crate::types::TaskExit;

    async fn done(c: &FakeCluster, upid: Result<Upid>) -> Result<TaskExit> {
        c.wait_task(&upid?, WaitOptions::default()).await
    }

    #[tokio::test(start_paused = true)]
    async fn clone_configure_start_stop_delete() {
        let c = FakeCluster::standard();
        let id = 100;
        done(
            &c,
            c.clone_vm("pve1", 9001, &CloneRequest::full(id).name("vm100"))
                .await,
        )
        .await
        .unwrap();
        let upd = ConfigUpdate::new()
            .cores(2)
            .memory_mib(2048)
            .tags(["a", "b"])
            .description("uid=1");
        c.set_vm_config("pve1", id, &upd).await.unwrap();
        let cfg = c.vm_config("pve1", id).await.unwrap();
        assert_eq!(cfg.cores(), Some(2));
        assert_eq!(cfg.tags(), vec!["a", "b"]);
        assert_eq!(cfg.get("scsi0"), Some("local-lvm:vm-100-disk-0,size=3G"));
        done(
            &c,
            c.resize_disk("pve1", id, "scsi0", DiskSize::grow_gib(7))
                .await
                .map(|u| u.unwrap()),
        )
        .await
        .unwrap();
        assert_eq!(
            c.vm(id).unwrap().config["scsi0"],
            "local-lvm:vm-100-disk-0,size=10G"
        );
        done(&c, c.start_vm("pve1", id).await).await.unwrap();
        c.agent_ping("pve1", id).await.unwrap();
        c.agent_file_write("pve1", id, "/etc/x", "y").await.unwrap();
        assert_eq!(
            c.vm(id).unwrap().agent_files,
            vec![("/etc/x".into(), "y".into())]
        );
        let vms = c.cluster_vms().await.unwrap();
        assert_eq!(vms.len(), 2);
        assert_eq!(vms[0].status, RunState::Running);
        let err = c
            .delete_vm("pve1", id, DeleteOptions::default())
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Transient);
        done(&c, c.stop_vm("pve1", id).await).await.unwrap();
        done(&c, c.delete_vm("pve1", id, DeleteOptions::default()).await)
            .await
            .unwrap();
        assert!(c.vm_config("pve1", id).await.unwrap_err().is_not_found());
    }

    #[tokio::test(start_paused = true)]
    async fn an_arc_is_a_pve_sharing_the_cluster() {
        async fn create<P: Pve>(p: &P) -> Result<TaskExit> {
            let upid = p.clone_vm("pve1", 9001, &CloneRequest::full(100)).await?;
            p.wait_task(&upid, WaitOptions::default()).await
        }
        let c = std::sync::Arc::new(FakeCluster::standard());
        create(&c.clone()).await.unwrap();
        assert!(c.vm(100).is_some());
        assert_eq!(c.requests_by_op()[&Op::TaskStatus], 1);
    }

    #[tokio::test(start_paused = true)]
    async fn clone_to_taken_id_is_already_exists() {
        let c = FakeCluster::standard();
        let err = c
            .clone_vm("pve1", 9001, &CloneRequest::full(9001))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::AlreadyExists);
    }

    #[tokio::test(start_paused = true)]
    async fn faults_and_counters() {
        let c = FakeCluster::standard();
        c.inject(
            Op::Start,
            None,
            Fault::Api {
                status: 503,
                message: "busy".into(),
            },
            Some(1),
        );
        c.inject(
            Op::Clone,
            None,
            Fault::TaskError("clone failed: no space".into()),
            Some(1),
        );
        c.inject(Op::Version, None, Fault::Connection, Some(1));
        assert!(c.version().await.unwrap_err().is_transient());
        c.version().await.unwrap();
        let err = done(&c, c.clone_vm("pve1", 9001, &CloneRequest::full(100)).await)
            .await
            .unwrap_err();
        match &err {
            Error::TaskFailed {
                exit_status,
                log_tail,
                ..
            } => {
                assert_eq!(exit_status, "clone failed: no space");
                assert_eq!(
                    log_tail.last().unwrap(),
                    "TASK ERROR: clone failed: no space"
                );
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(err.kind(), ErrorKind::TaskFailed);
        assert!(c.vm(100).is_none());
        done(&c, c.clone_vm("pve1", 9001, &CloneRequest::full(100)).await)
            .await
            .unwrap();
        assert!(c.start_vm("pve1", 100).await.unwrap_err().is_transient());
        c.modify_vm(100, |vm| vm.lock = Some("backup".into()));
        let err = c
            .set_vm_config("pve1", 100, &ConfigUpdate::new().cores(2))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Locked);
        let err = done(&c, c.start_vm("pve1", 100).await).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Locked);
        let by_op = c.requests_by_op();
        assert_eq!(by_op[&Op::Version], 2);
        assert_eq!(by_op[&Op::Start], 2);
        assert!(c.requests() > c.requests_without_task_polls());
    }

    #[tokio::test(start_paused = true)]
    async fn hook_fails_every_other_start() {
        let c = FakeCluster::standard();
        done(&c, c.clone_vm("pve1", 9001, &CloneRequest::full(100)).await)
            .await
            .unwrap();
        let mut n = 0;
        c.set_hook(move |op, _| {
            (op == Op::Start)
                .then(|| {
                    n += 1;
                    n
                })
                .filter(|n| n % 2 == 1)
                .map(|_| Fault::LockTimeout)
        });
        let err = c.start_vm("pve1", 100).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Locked);
        done(&c, c.start_vm("pve1", 100).await).await.unwrap();
        c.clear_faults();
        assert_eq!(c.requests_by_op()[&Op::Start], 2);
    }

    #[tokio::test(start_paused = true)]
    async fn validation_errors_carry_fields() {
        let c = FakeCluster::standard();
        let err = c
            .set_vm_config(
                "pve1",
                9001,
                &ConfigUpdate::new()
                    .set("cores", "abc")
                    .set("ipconfig0", "ip=1.2.3.4"),
            )
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Validation);
        let f = err.field_errors().unwrap();
        assert!(
            f.contains_key("cores") && f.contains_key("ipconfig0"),
            "{f:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn slow_shutdown_fails_unless_forced() {
        let c = FakeCluster::standard();
        done(&c, c.clone_vm("pve1", 9001, &CloneRequest::full(100)).await)
            .await
            .unwrap();
        done(&c, c.start_vm("pve1", 100).await).await.unwrap();
        c.modify_vm(100, |vm| vm.shutdown_secs = 120);
        let opts = ShutdownOptions {
            timeout: Some(Duration::from_secs(30)),
            force_stop: false,
        };
        let err = done(&c, c.shutdown_vm("pve1", 100, opts).await)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::TaskFailed);
        assert_eq!(c.vm(100).unwrap().status, RunState::Running);
        let forced = ShutdownOptions {
            force_stop: true,
            ..opts
        };
        done(&c, c.shutdown_vm("pve1", 100, forced).await)
            .await
            .unwrap();
        assert_eq!(c.vm(100).unwrap().status, RunState::Stopped);
    }

    #[tokio::test(start_paused = true)]
    async fn agent_answers_only_once_ready() {
        let c = FakeCluster::standard();
        c.set_agent_on_start(false);
        done(&c, c.clone_vm("pve1", 9001, &CloneRequest::full(100)).await)
            .await
            .unwrap();
        done(&c, c.start_vm("pve1", 100).await).await.unwrap();
        assert!(c.agent_ping("pve1", 100).await.is_err());
        c.modify_vm(100, |vm| vm.agent_ready = true);
        c.agent_ping("pve1", 100).await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn nodes_report_used_memory_and_offline_nodes() {
        let c = FakeCluster::standard();
        c.add_node("pve2", 32 * GIB, 8);
        done(&c, c.clone_vm("pve1", 9001, &CloneRequest::full(100)).await)
            .await
            .unwrap();
        done(&c, c.start_vm("pve1", 100).await).await.unwrap();
        let nodes = c.nodes().await.unwrap();
        assert_eq!(nodes[0].mem, Some(GIB));
        assert_eq!(nodes[1].free_mem(), 32 * GIB);
        c.set_node_online("pve1", false);
        assert_eq!(c.cluster_vms().await.unwrap()[0].status, RunState::Unknown);
        assert!(c.vm_status("pve1", 100).await.unwrap_err().is_transient());
    }

    #[tokio::test(start_paused = true)]
    async fn wait_task_rides_out_transient_poll_failures() {
        let c = FakeCluster::standard();
        let upid = c
            .clone_vm("pve1", 9001, &CloneRequest::full(100))
            .await
            .unwrap();
        c.inject(Op::TaskStatus, None, Fault::Connection, Some(1));
        c.inject(
            Op::TaskStatus,
            None,
            Fault::Api {
                status: 502,
                message: "Bad Gateway".into(),
            },
            Some(1),
        );
        assert_eq!(
            c.wait_task(&upid, WaitOptions::default()).await.unwrap(),
            TaskExit::Ok
        );
        assert_eq!(c.requests_by_op()[&Op::TaskStatus], 3);
        // An unknown UPID is not transient: the wait ends at once.
        let unknown = Upid::new("pve1", 77, 77, 77, "qmstart", "100", USER);
        let err = c
            .wait_task(&unknown, WaitOptions::default())
            .await
            .unwrap_err();
        assert!(err.is_not_found(), "{err:?}");
        assert_eq!(c.requests_by_op()[&Op::TaskStatus], 4);
    }

    #[tokio::test(start_paused = true)]
    async fn wait_task_times_out_on_a_running_task() {
        // A task that never stops: insert one by hand.
        let c = FakeCluster::standard();
        let upid = Upid::new("pve1", 9, 9, 9, "qmstart", "100", USER);
        c.lock().tasks.insert(
            upid.to_string(),
            FakeTask {
                status: TaskStatus {
                    upid: upid.clone(),
                    status: TaskState::Running,
                    exitstatus: None,
                    task_type: "qmstart".into(),
                    id: None,
                    node: "pve1".into(),
                },
                log: vec![],
            },
        );
        let opts = WaitOptions {
            deadline: Duration::from_secs(10),
            ..WaitOptions::default()
        };
        let err = c.wait_task(&upid, opts).await.unwrap_err();
        assert!(matches!(err, Error::TaskTimeout { .. }));
        assert!(err.is_transient());
        // 250ms doubling to 2s: 0.25+0.5+1+2+2+2+2+0.25 = 10s → 9 polls.
        assert_eq!(c.requests_by_op()[&Op::TaskStatus], 9);
    }
}
