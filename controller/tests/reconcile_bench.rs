//! VM reconciler benchmarks against the zero-latency in-process `FakeCluster`
//! (ignored by default; `bench/reconcile.sh` runs them in release mode and prints
//! the figures). Nothing here asserts on time: the figures are printed.
//!
//! - `bench_create`: N specs (default 1,000) from empty to all Running — wall time
//!   and Proxmox API requests per VM, task polls counted apart.
//! - `bench_steady`: N Running VMs (default 10,000) in steady state — requests per
//!   resync and CPU time per resync, then this process's RSS.
//!
//! What runs is the daemon's reconcile stack minus HTTP: the real store (redb on a
//! temp dir on disk, fsync and all), the real runtime (`reconcile::run` with the
//! store's change feed and periodic resync) and the real `VmReconciler`; only
//! Proxmox is the fake. The RSS therefore also holds the fake cluster's own state
//! for every VM, which the daemon would not: it is an upper bound for the daemon.
//!
//! Sizes: `BENCH_CREATE_VMS`, `BENCH_STEADY_VMS`, `BENCH_CONCURRENCY`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use blockhost_controller::metrics::Metrics;
use blockhost_controller::reconcile::runtime::{
    self, Action, ErrorPolicy, Reconciler, RuntimeConfig,
};
use blockhost_controller::reconcile::vm::VmReconciler;
use blockhost_controller::reconcile::vm::observed::Observed;
use blockhost_controller::store::alloc::Pools;
use blockhost_controller::store::{Store, StoreOptions};
use blockhost_crd::config::{Ipv4Pool, Ipv6Pool, NetworkConfig, ProxmoxConfig};
use blockhost_crd::resource::AnyObject;
use blockhost_crd::{VirtualMachine, VmPhase};
use blockhost_pve::WaitOptions;
use blockhost_pve::fake::FakeCluster;
use tokio_util::sync::CancellationToken;

const GIB: u64 = 1 << 30;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Counts reconciles (everything else is forwarded to the real reconciler).
struct Counting<R> {
    inner: R,
    runs: AtomicU64,
}

impl<R: Reconciler> Reconciler for Counting<R> {
    type Error = R::Error;
    fn name(&self) -> &'static str {
        self.inner.name()
    }
    fn error_policy(&self, e: &R::Error) -> ErrorPolicy {
        self.inner.error_policy(e)
    }
    async fn reconcile(&self, key: String) -> Result<Action, R::Error> {
        self.runs.fetch_add(1, Ordering::Relaxed);
        self.inner.reconcile(key).await
    }
    async fn before_resync(&self) {
        self.inner.before_resync().await;
    }
    fn resync_skip(&self, key: &str) -> bool {
        self.inner.resync_skip(key)
    }
}

fn network() -> NetworkConfig {
    NetworkConfig {
        ipv4: Some(Ipv4Pool {
            cidr: "10.64.0.0/16".parse().unwrap(),
            gateway: "10.64.0.1".parse().unwrap(),
            first: None,
            last: None,
        }),
        ipv6: Some(Ipv6Pool {
            prefix: "2001:db8:64::/64".parse().unwrap(),
            gateway: "2001:db8:64::1".parse().unwrap(),
        }),
        bridge: "vmbr0".into(),
        nameservers: vec!["10.64.0.1".parse().unwrap()],
    }
}

struct Bench {
    _dir: tempfile::TempDir,
    store: Store,
    pve: Arc<FakeCluster>,
    r: Arc<Counting<VmReconciler<FakeCluster>>>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

/// Opens a store, applies `n` specs, and starts the runtime with `resync`.
async fn start(n: usize, resync: Duration) -> Bench {
    let dir = tempfile::tempdir().unwrap();
    let net = network();
    let opts = StoreOptions {
        pools: Pools {
            ipv4: net.ipv4.clone(),
            ipv6: net.ipv6.clone(),
        },
        ..StoreOptions::default()
    };
    let store = Store::open(&dir.path().join("state.redb"), opts).unwrap();
    let pve = Arc::new(FakeCluster::standard());
    // One node big enough for every VM (placement checks free memory).
    pve.add_node("pve1", 64 * 1024 * GIB, 4096);
    let cfg: ProxmoxConfig = serde_json::from_value(serde_json::json!({
        "url": "https://127.0.0.1:8006", "tokenId": "root@pam!blockhost", "tokenSecretFile": "/dev/null",
        "vmidFirst": 100000, "vmidLast": 199999
    }))
    .unwrap();
    // Applied in batches of 500 (one transaction each), as a chain catch-up would.
    let objs: Vec<AnyObject> = (0..n)
        .map(|i| {
            let v: VirtualMachine = serde_json::from_value(serde_json::json!({
                "apiVersion": "blockhost.io/v1alpha1", "kind": "VirtualMachine",
                "metadata": {"name": format!("vm-{i:05}")},
                "spec": {"owner": "0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266",
                         "resources": {"cores": 1, "memoryMiB": 512, "diskGiB": 10}, "guestUser": "alice"}
            }))
            .unwrap();
            AnyObject::VirtualMachine(Box::new(v))
        })
        .collect();
    for chunk in objs.chunks(500) {
        store.apply(chunk.to_vec(), false).unwrap();
    }
    let concurrency = env("BENCH_CONCURRENCY", u64::from(cfg.concurrency)) as usize;
    let r = Arc::new(Counting {
        inner: VmReconciler {
            store: store.clone(),
            pve: pve.clone(),
            network: net,
            chain_id: 0,
            observed: Observed::default(),
            listing_max_age: blockhost_controller::reconcile::vm::setup::listing_max_age(resync),
            wait: WaitOptions {
                interval: Duration::from_millis(1),
                max_interval: Duration::from_millis(5),
                deadline: Duration::from_secs(30),
                log_tail: 5,
            },
            settled: Default::default(),
            guard: Default::default(),
            cfg,
        },
        runs: AtomicU64::new(0),
    });
    let shutdown = CancellationToken::new();
    let triggers = runtime::store_triggers(&store, "VirtualMachine", shutdown.clone());
    let ks = store.clone();
    let keys = move || ks.for_each_names("VirtualMachine").unwrap();
    let task = tokio::spawn(runtime::run(
        r.clone(),
        RuntimeConfig {
            concurrency,
            resync,
            ..RuntimeConfig::default()
        },
        Arc::new(Metrics::new()),
        triggers,
        keys,
        shutdown.clone(),
    ));
    eprintln!("setup: {n} specs applied, concurrency {concurrency}, resync {resync:?}");
    Bench {
        _dir: dir,
        store,
        pve,
        r,
        shutdown,
        task,
    }
}

impl Bench {
    fn running(&self) -> usize {
        self.store
            .list::<VirtualMachine>()
            .unwrap()
            .iter()
            .filter(|v| v.status.phase == VmPhase::Running)
            .count()
    }

    /// Waits (bounded: 30 min) until every VM is Running.
    async fn all_running(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(1800);
        loop {
            let running = self.running();
            if running == n {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "only {running}/{n} Running after 30 min"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.unwrap();
    }
}

/// CPU time (user + system) of this process.
fn cpu_time() -> Duration {
    let mut ru = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the struct it is given.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, ru.as_mut_ptr()) };
    assert_eq!(rc, 0);
    // SAFETY: initialised by the successful call above.
    let ru = unsafe { ru.assume_init() };
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// `VmRSS` and `VmHWM` of this process, in MiB.
fn rss_mib() -> (f64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<f64>().ok())
            .unwrap()
            / 1024.0
    };
    (field("VmRSS:"), field("VmHWM:"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark; run bench/reconcile.sh"]
async fn bench_create() {
    // Measure the allocator configuration blockhostd runs with.
    blockhost_controller::tune_allocator();
    let n = env("BENCH_CREATE_VMS", 1000) as usize;
    let b = start(n, Duration::from_secs(3600)).await;
    let t0 = Instant::now();
    let cpu0 = cpu_time();
    b.all_running(n).await;
    let wall = t0.elapsed();
    let cpu = cpu_time() - cpu0;
    let all = b.pve.requests();
    let no_polls = b.pve.requests_without_task_polls();
    eprintln!(
        "RESULT create: {n} VMs empty -> all Running in {:.2} s ({:.1} VMs/s), CPU {:.2} s",
        wall.as_secs_f64(),
        n as f64 / wall.as_secs_f64(),
        cpu.as_secs_f64()
    );
    eprintln!(
        "RESULT create: API requests per VM {:.2} besides task polls ({:.2} with polls); reconciles {}",
        no_polls as f64 / n as f64,
        all as f64 / n as f64,
        b.r.runs.load(Ordering::Relaxed)
    );
    eprintln!("RESULT create: requests by op {:?}", b.pve.requests_by_op());
    assert_eq!(
        b.pve.vmids().len(),
        n + 1,
        "one VM per spec plus the template"
    );
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark; run bench/reconcile.sh"]
async fn bench_steady() {
    // Measure the allocator configuration blockhostd runs with.
    blockhost_controller::tune_allocator();
    let n = env("BENCH_STEADY_VMS", 10_000) as usize;
    let resync = Duration::from_secs(env("BENCH_RESYNC_SECS", 5));
    let b = start(n, resync).await;
    let t0 = Instant::now();
    b.all_running(n).await;
    eprintln!(
        "setup: {n} VMs Running after {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    // Let the reconciles that were queued while creating drain: two quiet resyncs.
    tokio::time::sleep(resync * 2).await;
    b.pve.reset_requests();
    let runs0 = b.r.runs.load(Ordering::Relaxed);
    let cpu0 = cpu_time();
    let window = resync * 4;
    tokio::time::sleep(window).await;
    let cpu = cpu_time() - cpu0;
    let runs = b.r.runs.load(Ordering::Relaxed) - runs0;
    // Resyncs are counted by time: settled VMs are skipped, so reconciles no
    // longer tell how many resyncs ran.
    let resyncs = window.as_secs_f64() / resync.as_secs_f64();
    let requests = b.pve.requests();
    eprintln!(
        "RESULT steady: {n} Running VMs, {resyncs:.0} resyncs in {window:?}, {runs} reconciles (settled VMs are skipped)"
    );
    eprintln!(
        "RESULT steady: API requests per resync {:.2} ({:?})",
        requests as f64 / resyncs.max(f64::MIN_POSITIVE),
        b.pve.requests_by_op()
    );
    eprintln!(
        "RESULT steady: CPU per resync {:.1} ms (process total {:.1} ms over the window)",
        cpu.as_secs_f64() * 1000.0 / resyncs.max(f64::MIN_POSITIVE),
        cpu.as_secs_f64() * 1000.0
    );
    let (rss, hwm) = rss_mib();
    eprintln!(
        "RESULT rss: {n} Running VMs in-process (store + runtime + reconciler + fake cluster): VmRSS {rss:.1} MiB, VmHWM {hwm:.1} MiB"
    );
    b.stop().await;
}

/// Baseline for the RSS figure: a process holding only the fake cluster with the
/// same number of VMs, made through the same `Pve` calls a create makes (clone,
/// config, start, access-file write). The daemon's own share of `bench_steady`'s
/// RSS is roughly the difference.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark; run bench/reconcile.sh"]
async fn bench_fake_only_rss() {
    // Measure the allocator configuration blockhostd runs with.
    blockhost_controller::tune_allocator();
    use blockhost_pve::{CloneRequest, ConfigUpdate, Pve};
    let n = env("BENCH_STEADY_VMS", 10_000) as u32;
    let pve = FakeCluster::standard();
    pve.add_node("pve1", 64 * 1024 * GIB, 4096);
    let wait = WaitOptions {
        interval: Duration::from_millis(1),
        max_interval: Duration::from_millis(5),
        deadline: Duration::from_secs(30),
        log_tail: 5,
    };
    let access = "{\"version\": 1, \"machine\": \"vm-00000\", \"chain_id\": 0, \"wallets\": [\"0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266\"], \"users\": [\"alice\"]}\n";
    for i in 0..n {
        let vmid = 100_000 + i;
        let name = format!("vm-{i:05}");
        let upid = pve
            .clone_vm(
                "pve1",
                9001,
                &CloneRequest::full(vmid)
                    .name(name.clone())
                    .description(format!("Managed by BlockHost; do not edit. object=VirtualMachine/{name} uid=00000000-0000-0000-0000-000000000000")),
            )
            .await
            .unwrap();
        pve.wait_task(&upid, wait).await.unwrap();
        let cfg = ConfigUpdate::new()
            .cores(1)
            .memory_mib(512)
            .tags(vec![
                "blockhost".to_owned(),
                "bh-00000000-0000-0000-0000-000000000000".to_owned(),
            ])
            .ciuser("alice".to_owned())
            .nameserver("10.64.0.1".to_owned())
            .agent(true)
            .onboot(true);
        pve.set_vm_config("pve1", vmid, &cfg).await.unwrap();
        let upid = pve.start_vm("pve1", vmid).await.unwrap();
        pve.wait_task(&upid, wait).await.unwrap();
        pve.agent_file_write("pve1", vmid, "/etc/blockhost/access.json", access)
            .await
            .unwrap();
    }
    let (rss, hwm) = rss_mib();
    eprintln!(
        "RESULT rss baseline: the fake cluster alone with {n} running VMs: VmRSS {rss:.1} MiB, VmHWM {hwm:.1} MiB"
    );
}
