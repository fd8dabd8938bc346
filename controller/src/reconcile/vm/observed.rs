//! What Proxmox looks like, as one cached `GET /cluster/resources?type=vm`.
//!
//! Reconciles read the cache instead of asking Proxmox about each VM, so a steady
//! state of 10,000 VMs costs one request per resync interval. The listing holds
//! what drift detection needs (power state, cores, memory, disk, tags, lock). A
//! reconcile that changes a VM patches its cache entry, so the next reconcile does
//! not act again on stale data; the next refresh replaces everything with the
//! truth. Refreshes are single-flight: concurrent reconciles wait for one request.

use std::collections::HashMap;
use std::time::Duration;

use blockhost_pve::{ClusterVm, Pve, VmId};
use tokio::sync::{Mutex, RwLock};
use tokio::time::Instant;

/// The cached cluster listing.
#[derive(Debug, Default)]
pub struct Observed {
    vms: RwLock<Snapshot>,
    refreshing: Mutex<()>,
}

#[derive(Debug, Default)]
struct Snapshot {
    fetched_at: Option<Instant>,
    by_vmid: HashMap<VmId, ClusterVm>,
}

impl Observed {
    /// Refreshes the listing if it is older than `max_age` (or was never fetched).
    pub async fn ensure_fresh<P: Pve>(
        &self,
        pve: &P,
        max_age: Duration,
    ) -> blockhost_pve::Result<()> {
        if self.is_fresh(max_age).await {
            return Ok(());
        }
        let _one = self.refreshing.lock().await;
        // Another reconcile may have refreshed while we waited.
        if self.is_fresh(max_age).await {
            return Ok(());
        }
        self.refresh(pve).await
    }

    async fn is_fresh(&self, max_age: Duration) -> bool {
        self.vms
            .read()
            .await
            .fetched_at
            .is_some_and(|t| t.elapsed() < max_age)
    }

    /// Fetches the listing now.
    pub async fn refresh<P: Pve>(&self, pve: &P) -> blockhost_pve::Result<()> {
        let list = pve.cluster_vms().await?;
        let by_vmid = list.into_iter().map(|v| (v.vmid, v)).collect();
        *self.vms.write().await = Snapshot {
            fetched_at: Some(Instant::now()),
            by_vmid,
        };
        Ok(())
    }

    /// Forces the next [`Observed::ensure_fresh`] to fetch.
    pub async fn invalidate(&self) {
        self.vms.write().await.fetched_at = None;
    }

    /// A VM by id.
    pub async fn get(&self, vmid: VmId) -> Option<ClusterVm> {
        self.vms.read().await.by_vmid.get(&vmid).cloned()
    }

    /// Whether an id is in use.
    pub async fn contains(&self, vmid: VmId) -> bool {
        self.vms.read().await.by_vmid.contains_key(&vmid)
    }

    /// Every id in use (for choosing a free VMID).
    pub async fn vmids(&self) -> std::collections::HashSet<VmId> {
        self.vms.read().await.by_vmid.keys().copied().collect()
    }

    /// Records the effect of our own action on a VM.
    pub async fn patch(&self, vmid: VmId, f: impl FnOnce(&mut ClusterVm)) {
        if let Some(v) = self.vms.write().await.by_vmid.get_mut(&vmid) {
            f(v);
        }
    }

    /// Records the managed settings we just wrote to a VM.
    pub async fn record_config(&self, vm: &blockhost_crd::VirtualMachine, vmid: VmId) {
        let (cores, mem) = (
            vm.spec.resources.cores.get(),
            vm.spec.resources.memory_mib.get(),
        );
        let tags = super::spec::managed_tags(vm);
        self.patch(vmid, |cv| {
            cv.maxcpu = f64::from(cores);
            cv.maxmem = u64::from(mem) << 20;
            cv.tags = tags;
        })
        .await;
    }

    /// The fingerprint of a VM's listing entry, if the listing can be read without
    /// waiting (a resync check must not block the scheduler).
    pub fn try_print(&self, vmid: VmId) -> Option<Option<ListingPrint>> {
        let snap = self.vms.try_read().ok()?;
        Some(snap.by_vmid.get(&vmid).map(ListingPrint::of))
    }

    /// Records a VM we just created.
    pub async fn insert(&self, vm: ClusterVm) {
        self.vms.write().await.by_vmid.insert(vm.vmid, vm);
    }

    /// Records a VM we just deleted.
    pub async fn remove(&self, vmid: VmId) {
        self.vms.write().await.by_vmid.remove(&vmid);
    }
}

/// What a resync looks at in a VM's listing entry: everything that drift or a
/// vanished VM would change, and nothing that moves on its own (CPU load, uptime,
/// memory in use).
#[derive(Debug, Clone, PartialEq)]
pub struct ListingPrint {
    node: String,
    name: Option<String>,
    status: blockhost_pve::types::RunState,
    maxcpu: u64,
    maxmem: u64,
    maxdisk: u64,
    tags: Vec<String>,
    lock: Option<String>,
}

impl ListingPrint {
    /// The fingerprint of one listing entry.
    pub fn of(cv: &ClusterVm) -> Self {
        Self {
            node: cv.node.clone(),
            name: cv.name.clone(),
            status: cv.status.clone(),
            maxcpu: cv.maxcpu.to_bits(),
            maxmem: cv.maxmem,
            maxdisk: cv.maxdisk,
            tags: cv.tags.clone(),
            lock: cv.lock.clone(),
        }
    }
}
