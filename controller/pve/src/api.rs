//! The [`Pve`] trait: every Proxmox VE operation the reconciler needs, and waiting for tasks.
//!
//! The reconciler is written against this trait, so it runs unchanged against the HTTP client
//! ([`crate::PveClient`]) and the in-process fake (`crate::fake::FakeCluster`, feature `fake`).
//! Methods return `impl Future + Send` rather than being `async fn` so that callers may spawn
//! them on a multi-threaded runtime; implementations still write plain `async fn`s.

use std::future::Future;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::firewall::{ClusterFirewallOptions, FirewallOptions, IpSetEntry};
use crate::propstring::DiskSize;
use crate::types::{
    CloneRequest, ClusterVm, ConfigUpdate, DeleteOptions, NodeSummary, ShutdownOptions, TaskExit,
    TaskLogLine, TaskStatus, Version, VmConfig, VmId, VmStatus,
};
use crate::upid::Upid;

/// How [`Pve::wait_task`] polls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WaitOptions {
    /// First pause between polls; doubles up to `max_interval` (most tasks end within a second,
    /// a few run for minutes).
    pub interval: Duration,
    /// Longest pause between polls.
    pub max_interval: Duration,
    /// Give up (with [`Error::TaskTimeout`], transient) after this long.
    pub deadline: Duration,
    /// Lines of the task log to keep in [`Error::TaskFailed`].
    pub log_tail: usize,
}

impl Default for WaitOptions {
    fn default() -> Self {
        WaitOptions {
            interval: Duration::from_millis(250),
            max_interval: Duration::from_secs(2),
            deadline: Duration::from_secs(300),
            log_tail: 20,
        }
    }
}

/// Proxmox VE operations used by BlockHost. See the crate docs for the error classification.
pub trait Pve: Send + Sync {
    /// `GET /version`.
    fn version(&self) -> impl Future<Output = Result<Version>> + Send;

    /// `GET /nodes`: every node with its load and memory.
    fn nodes(&self) -> impl Future<Output = Result<Vec<NodeSummary>>> + Send;

    /// `GET /cluster/resources?type=vm`: every guest of the cluster in one request.
    fn cluster_vms(&self) -> impl Future<Output = Result<Vec<ClusterVm>>> + Send;

    /// `POST /nodes/{node}/qemu/{vmid}/clone`: clone `source` (a template) into `req.newid`.
    fn clone_vm(
        &self,
        node: &str,
        source: VmId,
        req: &CloneRequest,
    ) -> impl Future<Output = Result<Upid>> + Send;

    /// `GET /nodes/{node}/qemu/{vmid}/config`.
    fn vm_config(&self, node: &str, vmid: VmId) -> impl Future<Output = Result<VmConfig>> + Send;

    /// `PUT .../config`: apply synchronously (PVE returns when the config file is written).
    fn set_vm_config(
        &self,
        node: &str,
        vmid: VmId,
        update: &ConfigUpdate,
    ) -> impl Future<Output = Result<()>> + Send;

    /// `PUT .../resize`. PVE 8+ answers with a task; older versions resize synchronously (`None`).
    fn resize_disk(
        &self,
        node: &str,
        vmid: VmId,
        disk: &str,
        size: DiskSize,
    ) -> impl Future<Output = Result<Option<Upid>>> + Send;

    /// `GET .../status/current`.
    fn vm_status(&self, node: &str, vmid: VmId) -> impl Future<Output = Result<VmStatus>> + Send;

    /// `POST .../status/start`.
    fn start_vm(&self, node: &str, vmid: VmId) -> impl Future<Output = Result<Upid>> + Send;

    /// `POST .../status/shutdown`: ACPI power-off, bounded by `opts.timeout`.
    fn shutdown_vm(
        &self,
        node: &str,
        vmid: VmId,
        opts: ShutdownOptions,
    ) -> impl Future<Output = Result<Upid>> + Send;

    /// `POST .../status/stop`: pull the plug.
    fn stop_vm(&self, node: &str, vmid: VmId) -> impl Future<Output = Result<Upid>> + Send;

    /// `DELETE /nodes/{node}/qemu/{vmid}`.
    fn delete_vm(
        &self,
        node: &str,
        vmid: VmId,
        opts: DeleteOptions,
    ) -> impl Future<Output = Result<Upid>> + Send;

    /// `POST .../agent/ping`: Ok once the guest agent answers.
    fn agent_ping(&self, node: &str, vmid: VmId) -> impl Future<Output = Result<()>> + Send;

    /// `POST .../agent/file-write`: write `content` (text) to `path` inside the guest.
    fn agent_file_write(
        &self,
        node: &str,
        vmid: VmId,
        path: &str,
        content: &str,
    ) -> impl Future<Output = Result<()>> + Send;

    /// `GET /cluster/firewall/options`: whether the datacenter firewall is on (no VM
    /// firewall is in force without it).
    fn cluster_firewall_options(
        &self,
    ) -> impl Future<Output = Result<ClusterFirewallOptions>> + Send;

    /// `GET /nodes/{node}/qemu/{vmid}/firewall/options`.
    fn vm_firewall_options(
        &self,
        node: &str,
        vmid: VmId,
    ) -> impl Future<Output = Result<FirewallOptions>> + Send;

    /// `PUT …/firewall/options`: sets the options that are `Some`, leaves the others.
    fn set_vm_firewall_options(
        &self,
        node: &str,
        vmid: VmId,
        options: &FirewallOptions,
    ) -> impl Future<Output = Result<()>> + Send;

    /// `GET …/firewall/ipset/{name}`: the set's entries; [`crate::ErrorKind::NotFound`]
    /// when the VM has no such set.
    fn vm_ipset(
        &self,
        node: &str,
        vmid: VmId,
        name: &str,
    ) -> impl Future<Output = Result<Vec<IpSetEntry>>> + Send;

    /// `POST …/firewall/ipset`: creates an empty set.
    fn create_vm_ipset(
        &self,
        node: &str,
        vmid: VmId,
        name: &str,
        comment: Option<&str>,
    ) -> impl Future<Output = Result<()>> + Send;

    /// `POST …/firewall/ipset/{name}`: adds an address or network.
    fn add_vm_ipset_entry(
        &self,
        node: &str,
        vmid: VmId,
        name: &str,
        cidr: &str,
        comment: Option<&str>,
    ) -> impl Future<Output = Result<()>> + Send;

    /// `DELETE …/firewall/ipset/{name}/{cidr}`: removes one entry (as PVE stores it).
    fn delete_vm_ipset_entry(
        &self,
        node: &str,
        vmid: VmId,
        name: &str,
        cidr: &str,
    ) -> impl Future<Output = Result<()>> + Send;

    /// `GET /nodes/{node}/tasks/{upid}/status` (the node comes from the UPID).
    fn task_status(&self, upid: &Upid) -> impl Future<Output = Result<TaskStatus>> + Send;

    /// `GET /nodes/{node}/tasks/{upid}/log?start=&limit=`.
    fn task_log(
        &self,
        upid: &Upid,
        start: u64,
        limit: u64,
    ) -> impl Future<Output = Result<Vec<TaskLogLine>>> + Send;

    /// Poll a task until it stops. `OK` and `WARNINGS: N` are success; any other exit status is
    /// [`Error::TaskFailed`] with the tail of the log; still running at `opts.deadline` is
    /// [`Error::TaskTimeout`]. Transient poll failures are retried until the deadline; others
    /// (e.g. an unknown UPID) end the wait. Uses tokio's clock, so `tokio::time::pause` makes tests instant.
    fn wait_task(
        &self,
        upid: &Upid,
        opts: WaitOptions,
    ) -> impl Future<Output = Result<TaskExit>> + Send {
        async move {
            let started = tokio::time::Instant::now();
            let mut interval = opts.interval;
            loop {
                let exit = match self.task_status(upid).await {
                    Ok(status) => status.exit(),
                    // The task runs on in PVE whatever happens to one poll: a blip (5xx,
                    // reset, proxy timeout) only costs a retry, within the deadline.
                    Err(e) if e.is_transient() => {
                        tracing::debug!(%upid, error = %e, "task poll failed; polling again");
                        None
                    }
                    Err(e) => return Err(e),
                };
                match exit {
                    Some(TaskExit::Failed(exit_status)) => {
                        // The log explains most failures; losing it must not hide the failure.
                        let log_tail = match self.task_log(upid, 0, 10_000).await {
                            Ok(lines) => {
                                let skip = lines.len().saturating_sub(opts.log_tail);
                                lines.into_iter().skip(skip).map(|l| l.t).collect()
                            }
                            Err(e) => {
                                tracing::debug!(%upid, error = %e, "task log unavailable");
                                Vec::new()
                            }
                        };
                        return Err(Error::TaskFailed {
                            upid: Box::new(upid.clone()),
                            exit_status,
                            log_tail,
                        });
                    }
                    Some(exit) => return Ok(exit),
                    None => {}
                }
                let waited = started.elapsed();
                if waited >= opts.deadline {
                    return Err(Error::TaskTimeout {
                        upid: Box::new(upid.clone()),
                        waited,
                    });
                }
                let pause = interval.min(opts.deadline.saturating_sub(waited));
                tokio::time::sleep(pause).await;
                interval = (interval * 2).min(opts.max_interval);
            }
        }
    }
}

/// A shared client is a client: lets a reconciler hold `Arc<FakeCluster>` while the test that
/// built it keeps another handle for inspection and fault injection.
impl<T: Pve + ?Sized> Pve for std::sync::Arc<T> {
    fn version(&self) -> impl Future<Output = Result<Version>> + Send {
        (**self).version()
    }
    fn nodes(&self) -> impl Future<Output = Result<Vec<NodeSummary>>> + Send {
        (**self).nodes()
    }
    fn cluster_vms(&self) -> impl Future<Output = Result<Vec<ClusterVm>>> + Send {
        (**self).cluster_vms()
    }
    fn clone_vm(
        &self,
        node: &str,
        source: VmId,
        req: &CloneRequest,
    ) -> impl Future<Output = Result<Upid>> + Send {
        (**self).clone_vm(node, source, req)
    }
    fn vm_config(&self, node: &str, vmid: VmId) -> impl Future<Output = Result<VmConfig>> + Send {
        (**self).vm_config(node, vmid)
    }
    fn set_vm_config(
        &self,
        node: &str,
        vmid: VmId,
        update: &ConfigUpdate,
    ) -> impl Future<Output = Result<()>> + Send {
        (**self).set_vm_config(node, vmid, update)
    }
    fn resize_disk(
        &self,
        node: &str,
        vmid: VmId,
        disk: &str,
        size: DiskSize,
    ) -> impl Future<Output = Result<Option<Upid>>> + Send {
        (**self).resize_disk(node, vmid, disk, size)
    }
    fn vm_status(&self, node: &str, vmid: VmId) -> impl Future<Output = Result<VmStatus>> + Send {
        (**self).vm_status(node, vmid)
    }
    fn start_vm(&self, node: &str, vmid: VmId) -> impl Future<Output = Result<Upid>> + Send {
        (**self).start_vm(node, vmid)
    }
    fn shutdown_vm(
        &self,
        node: &str,
        vmid: VmId,
        opts: ShutdownOptions,
    ) -> impl Future<Output = Result<Upid>> + Send {
        (**self).shutdown_vm(node, vmid, opts)
    }
    fn stop_vm(&self, node: &str, vmid: VmId) -> impl Future<Output = Result<Upid>> + Send {
        (**self).stop_vm(node, vmid)
    }
    fn delete_vm(
        &self,
        node: &str,
        vmid: VmId,
        opts: DeleteOptions,
    ) -> impl Future<Output = Result<Upid>> + Send {
        (**self).delete_vm(node, vmid, opts)
    }
    fn agent_ping(&self, node: &str, vmid: VmId) -> impl Future<Output = Result<()>> + Send {
        (**self).agent_ping(node, vmid)
    }
    fn agent_file_write(
        &self,
        node: &str,
        vmid: VmId,
        path: &str,
        content: &str,
    ) -> impl Future<Output = Result<()>> + Send {
        (**self).agent_file_write(node, vmid, path, content)
    }
    fn cluster_firewall_options(
        &self,
    ) -> impl Future<Output = Result<ClusterFirewallOptions>> + Send {
        (**self).cluster_firewall_options()
    }
    fn vm_firewall_options(
        &self,
        node: &str,
        vmid: VmId,
    ) -> impl Future<Output = Result<FirewallOptions>> + Send {
        (**self).vm_firewall_options(node, vmid)
    }
    fn set_vm_firewall_options(
        &self,
        node: &str,
        vmid: VmId,
        options: &FirewallOptions,
    ) -> impl Future<Output = Result<()>> + Send {
        (**self).set_vm_firewall_options(node, vmid, options)
    }
    fn vm_ipset(
        &self,
        node: &str,
        vmid: VmId,
        name: &str,
    ) -> impl Future<Output = Result<Vec<IpSetEntry>>> + Send {
        (**self).vm_ipset(node, vmid, name)
    }
    fn create_vm_ipset(
        &self,
        node: &str,
        vmid: VmId,
        name: &str,
        comment: Option<&str>,
    ) -> impl Future<Output = Result<()>> + Send {
        (**self).create_vm_ipset(node, vmid, name, comment)
    }
    fn add_vm_ipset_entry(
        &self,
        node: &str,
        vmid: VmId,
        name: &str,
        cidr: &str,
        comment: Option<&str>,
    ) -> impl Future<Output = Result<()>> + Send {
        (**self).add_vm_ipset_entry(node, vmid, name, cidr, comment)
    }
    fn delete_vm_ipset_entry(
        &self,
        node: &str,
        vmid: VmId,
        name: &str,
        cidr: &str,
    ) -> impl Future<Output = Result<()>> + Send {
        (**self).delete_vm_ipset_entry(node, vmid, name, cidr)
    }
    fn task_status(&self, upid: &Upid) -> impl Future<Output = Result<TaskStatus>> + Send {
        (**self).task_status(upid)
    }
    fn task_log(
        &self,
        upid: &Upid,
        start: u64,
        limit: u64,
    ) -> impl Future<Output = Result<Vec<TaskLogLine>>> + Send {
        (**self).task_log(upid, start, limit)
    }
}
