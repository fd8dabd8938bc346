//! The reconcile scheduler (see the module docs of [`crate::reconcile`]).
//!
//! Design notes, in the manner of kube-runtime's controller but smaller:
//! - Work is keyed by object name. A key is *pending* (with a due time), *running*,
//!   or idle. A trigger for a running key marks it *dirty*: it runs again as soon as
//!   the current run ends, so a spec change made mid-reconcile is never lost, and
//!   two reconciles of one key never overlap.
//! - When a key is requested twice, the earliest due time wins.
//! - Each failure is judged by the reconciler's [`Reconciler::error_policy`]:
//!   [`Retry::Transient`] (a lock, an outage) backs off on a short curve,
//!   [`Retry::Operator`] (a missing template, refused credentials) on a long one,
//!   since retrying cannot help until someone acts; the reconciler's condition
//!   says what to do. Either curve is `base * 2^(n-1)` capped at `max`, with
//!   "equal jitter" (half fixed, half random) so that many keys failing together
//!   (a Proxmox outage) do not retry in lock-step. Success resets the count.
//! - Due times are kept in `tokio_util`'s `DelayQueue`, one entry per key (reset
//!   to the earlier time when requested again); the one-run-per-key rule is the
//!   `running`/`dirty` sets', which the queue cannot know about.
//! - A reconcile that panics is an internal failure of its key (long backoff):
//!   the key is neither lost nor left marked running.
//! - The periodic resync enqueues every idle key; it never shortens a backoff.
//! - Triggers come from the store's change feed, and only for spec-level changes
//!   (creation, spec, deletion): a reconciler's own status writes do not re-trigger it.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use rand::Rng;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::time::{DelayQueue, delay_queue};

use crate::metrics::Metrics;
use crate::store::{Change, ChangeKind, Store};

/// What a successful reconcile asks for next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Nothing until the next trigger or resync.
    Done,
    /// Run again after this long (e.g. to watch a long task or an expiry time).
    RequeueAfter(Duration),
}

/// How a failure is retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Likely to pass by itself (a lock, an outage, a timeout): short backoff.
    Transient,
    /// Cannot pass until someone acts (configuration, capacity, a bug): long
    /// backoff; the reconciler's condition says what to do.
    Operator,
}

/// A reconciler's verdict on one failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorPolicy {
    /// Short stable label for metrics and logs (a CamelCase condition reason).
    pub reason: &'static str,
    /// Which backoff curve the retry follows.
    pub retry: Retry,
}

/// Label of a reconcile that exceeded [`RuntimeConfig::timeout`].
pub const TIMEOUT_REASON: &str = "Timeout";

/// Label of a reconcile task that panicked.
pub const PANIC_REASON: &str = "Internal";

/// A reconcile loop for one kind of work.
pub trait Reconciler: Send + Sync + 'static {
    /// Failure of one reconcile.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Name used in logs and metrics (`virtualmachine`).
    fn name(&self) -> &'static str;

    /// Brings the object named `key` one step closer to its spec.
    fn reconcile(&self, key: String) -> impl Future<Output = Result<Action, Self::Error>> + Send;

    /// What a failure means: its label and how it is retried.
    fn error_policy(&self, error: &Self::Error) -> ErrorPolicy;

    /// Runs once before each periodic resync (e.g. to read the world once for all keys).
    fn before_resync(&self) -> impl Future<Output = ()> + Send {
        async {}
    }

    /// Whether a periodic resync may skip `key`: nothing a resync exists to catch
    /// (drift outside the store, a deadline) can have changed since its last settled
    /// success. Only resync visits consult this; triggered runs (spec changes, a
    /// lagging change feed, requeues, retries) always run.
    fn resync_skip(&self, _key: &str) -> bool {
        false
    }
}

/// Tuning of the scheduler.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Reconciles running at once, across keys.
    pub concurrency: usize,
    /// First retry delay after a transient failure.
    pub backoff_base: Duration,
    /// Longest retry delay after transient failures.
    pub backoff_max: Duration,
    /// First retry delay after a failure that needs an operator.
    pub operator_backoff_base: Duration,
    /// Longest retry delay after failures that need an operator.
    pub operator_backoff_max: Duration,
    /// A reconcile running longer than this is abandoned and counted as a failure.
    pub timeout: Duration,
    /// Every idle key is reconciled at least this often.
    pub resync: Duration,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            concurrency: 8,
            backoff_base: Duration::from_millis(500),
            backoff_max: Duration::from_secs(60),
            operator_backoff_base: Duration::from_secs(60),
            operator_backoff_max: Duration::from_secs(900),
            timeout: Duration::from_secs(600),
            resync: Duration::from_secs(60),
        }
    }
}

impl RuntimeConfig {
    /// The delay before retry number `failures` (1-based) on `retry`'s curve, jittered.
    pub fn backoff(&self, retry: Retry, failures: u32, rng: &mut impl Rng) -> Duration {
        let (base, max) = match retry {
            Retry::Transient => (self.backoff_base, self.backoff_max),
            Retry::Operator => (self.operator_backoff_base, self.operator_backoff_max),
        };
        let exp = base.saturating_mul(2u32.saturating_pow(failures.saturating_sub(1).min(31)));
        let capped = exp.min(max);
        let half = capped / 2;
        half + half.mul_f64(rng.r#gen::<f64>())
    }
}

/// A request to reconcile a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trigger {
    /// This key, now.
    Key(String),
    /// Every key listed by the key source (the change feed lagged: re-list).
    All,
}

/// Feeds triggers from the store's change feed: creations, spec changes and
/// deletions of `kind`; status-only writes are ignored. A lagging feed turns into
/// [`Trigger::All`].
pub fn store_triggers(
    store: &Store,
    kind: &'static str,
    shutdown: CancellationToken,
) -> mpsc::Receiver<Trigger> {
    store_triggers_with_sender(store, kind, shutdown).1
}

/// [`store_triggers`], plus a sender into the same queue for other parts of the
/// daemon that need a key reconciled after a status-only write (the minter, once
/// a VM's token id is known, so its access file names it).
pub fn store_triggers_with_sender(
    store: &Store,
    kind: &'static str,
    shutdown: CancellationToken,
) -> (mpsc::Sender<Trigger>, mpsc::Receiver<Trigger>) {
    change_triggers(
        store,
        move |c| c.kind == kind && c.what != ChangeKind::Status,
        shutdown,
    )
}

/// Feeds a trigger for every change `wanted` accepts (a reconciler that reacts
/// to status, such as the minter waiting for a VM to run, filters here); a
/// lagging feed turns into [`Trigger::All`]. Also returns a sender into the
/// same queue.
pub fn change_triggers(
    store: &Store,
    wanted: impl Fn(&Change) -> bool + Send + 'static,
    shutdown: CancellationToken,
) -> (mpsc::Sender<Trigger>, mpsc::Receiver<Trigger>) {
    let mut rx = store.subscribe();
    let (tx, out) = mpsc::channel(1024);
    let extra = tx.clone();
    tokio::spawn(async move {
        loop {
            let change = tokio::select! {
                () = shutdown.cancelled() => return,
                c = rx.recv() => c,
            };
            let trigger = match change {
                Ok(c) if wanted(&c) => Trigger::Key(c.name),
                Ok(_) => continue,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, "change feed lagged; re-listing every object");
                    Trigger::All
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            };
            if tx.send(trigger).await.is_err() {
                return;
            }
        }
    });
    (extra, out)
}

type Labels = Vec<(String, String)>;

/// Why a reconcile failed, as the scheduler needs it.
#[derive(Debug)]
struct Failure {
    policy: ErrorPolicy,
    message: String,
}

/// A finished reconcile: its key, its outcome, and how long it took.
type Finished = (String, Result<Action, Failure>, Duration);

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// Scheduler state; private to [`run`].
#[derive(Default)]
struct Queue {
    /// Pending keys by due time, one entry per key.
    delays: DelayQueue<String>,
    /// Keys due now, in request order. They bypass `delays`: its timer wheel
    /// fires on the next millisecond tick at the earliest, which a new purchase
    /// (trigger → first Proxmox request) would wait for on every hop.
    ready: std::collections::VecDeque<String>,
    /// Each pending key's entry in `delays` and its due time (`None`: in `ready`).
    pending: HashMap<String, (Option<delay_queue::Key>, Instant)>,
    running: HashSet<String>,
    /// Triggered while running: run again right after.
    dirty: HashSet<String>,
    failures: HashMap<String, u32>,
    /// Which key each running task reconciles (to recover the key of a panic).
    tasks: HashMap<tokio::task::Id, String>,
}

impl Queue {
    /// Requests `key` at `due`; the earliest request wins.
    fn request(&mut self, key: String, due: Instant) {
        if self.running.contains(&key) {
            self.dirty.insert(key);
            return;
        }
        let now = Instant::now();
        match self.pending.get_mut(&key) {
            // In `ready` already: it runs as soon as a slot is free.
            Some((None, at)) => *at = (*at).min(due),
            Some((_, at)) if *at <= due => {}
            Some((entry, at)) if due <= now => {
                if let Some(e) = entry.take() {
                    self.delays.remove(&e);
                }
                *at = due;
                self.ready.push_back(key);
            }
            Some((Some(entry), at)) => {
                self.delays.reset_at(entry, due);
                *at = due;
            }
            None if due <= now => {
                self.pending.insert(key.clone(), (None, due));
                self.ready.push_back(key);
            }
            None => {
                let entry = self.delays.insert_at(key.clone(), due);
                self.pending.insert(key, (Some(entry), due));
            }
        }
    }

    /// Starts a reconcile of a key whose due time came, marking it running.
    fn spawn<R: Reconciler>(
        &mut self,
        tasks: &mut JoinSet<Finished>,
        reconciler: &Arc<R>,
        key: String,
        timeout: Duration,
    ) {
        self.pending.remove(&key);
        self.running.insert(key.clone());
        let id = tasks
            .spawn(attempt(reconciler.clone(), key.clone(), timeout))
            .id();
        self.tasks.insert(id, key);
    }

    /// Records the end of a run: the next due time, if any (a trigger that came
    /// mid-run means new desired state: run again now).
    fn finish(&mut self, key: String, next: Option<Instant>, now: Instant) {
        self.running.remove(&key);
        let next = if self.dirty.remove(&key) {
            Some(now)
        } else {
            next
        };
        if let Some(at) = next {
            self.request(key, at);
        }
    }
}

/// Runs one reconcile of `key`, bounded by `timeout`, and judges its failure.
async fn attempt<R: Reconciler>(r: Arc<R>, key: String, timeout: Duration) -> Finished {
    let started = Instant::now();
    let result = match tokio::time::timeout(timeout, r.reconcile(key.clone())).await {
        Ok(Ok(action)) => Ok(action),
        Ok(Err(e)) => Err(Failure {
            policy: r.error_policy(&e),
            message: crate::error_chain(&e),
        }),
        Err(_) => Err(Failure {
            policy: ErrorPolicy {
                reason: TIMEOUT_REASON,
                retry: Retry::Transient,
            },
            message: format!("reconcile did not finish within {timeout:?}"),
        }),
    };
    (key, result, started.elapsed())
}

/// Runs `reconciler` until `shutdown`: triggers from `triggers`, every key from
/// `keys()` at start and at each resync. Returns when shut down, after the running
/// reconciles finish (each is bounded by the timeout).
pub async fn run<R: Reconciler>(
    reconciler: Arc<R>,
    cfg: RuntimeConfig,
    metrics: Arc<Metrics>,
    mut triggers: mpsc::Receiver<Trigger>,
    keys: impl Fn() -> Vec<String> + Send + 'static,
    shutdown: CancellationToken,
) {
    let name = reconciler.name();
    let mut q = Queue::default();
    let mut tasks: JoinSet<Finished> = JoinSet::new();
    // StdRng is Send (thread_rng is not), so this future can run on any worker.
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::from_entropy();
    let mut next_resync = Instant::now();
    let mut triggers_open = true;
    // Keys that existed at the last resync, to notice deletions.
    let mut known: HashSet<String> = HashSet::new();
    let depth = metrics
        .reconcile_queue_depth
        .get_or_create(&labels(&[("controller", name)]))
        .clone();
    let concurrency = cfg.concurrency.max(1);
    loop {
        if Instant::now() >= next_resync {
            reconciler.before_resync().await;
            let now = Instant::now();
            known = resync(&mut q, reconciler.as_ref(), &metrics, keys(), &known, now);
            next_resync = now + cfg.resync;
        }
        depth.set(i64::try_from(q.pending.len()).unwrap_or(i64::MAX));
        while tasks.len() < concurrency
            && let Some(key) = q.ready.pop_front()
        {
            q.spawn(&mut tasks, &reconciler, key, cfg.timeout);
        }
        let free = tasks.len() < concurrency && !q.delays.is_empty();
        tokio::select! {
            () = shutdown.cancelled() => break,
            t = triggers.recv(), if triggers_open => match t {
                Some(Trigger::Key(k)) => q.request(k, Instant::now()),
                Some(Trigger::All) => {
                    for k in keys() {
                        q.request(k, Instant::now());
                    }
                }
                None => triggers_open = false,
            },
            Some(due) = q.delays.next(), if free => {
                q.spawn(&mut tasks, &reconciler, due.into_inner(), cfg.timeout);
            },
            Some(done) = tasks.join_next_with_id(), if !tasks.is_empty() => {
                let (key, result, took) = match done {
                    Ok((id, finished)) => {
                        q.tasks.remove(&id);
                        finished
                    }
                    Err(e) => {
                        let Some(key) = q.tasks.remove(&e.id()) else { continue };
                        tracing::error!(controller = name, object = %key, error = %e, "a reconcile task panicked");
                        let failure = Failure {
                            policy: ErrorPolicy { reason: PANIC_REASON, retry: Retry::Operator },
                            message: format!("the reconcile task failed ({e}); this is a bug in blockhostd"),
                        };
                        (key, Err(failure), Duration::ZERO)
                    }
                };
                let now = Instant::now();
                metrics.reconcile_duration.get_or_create(&labels(&[("controller", name)])).observe(took.as_secs_f64());
                let next = settle(&mut q, &cfg, &metrics, name, &key, result, &mut rng, now);
                q.finish(key, next, now);
            },
            () = tokio::time::sleep_until(next_resync) => {},
        }
    }
    // Let running reconciles finish (bounded by their timeout) so none is cut mid-step.
    while tasks.join_next().await.is_some() {}
    tracing::info!(controller = name, "reconciler stopped");
}

/// A periodic resync: forgets objects that are gone and requests every idle
/// key. A key waiting for a requeue time is visited like the others (a deadline
/// may have come early: a clock that follows the chain, a suspended host); a key
/// retrying after failures keeps its backoff. Returns the keys seen.
fn resync<R: Reconciler>(
    q: &mut Queue,
    reconciler: &R,
    metrics: &Metrics,
    keys: Vec<String>,
    known: &HashSet<String>,
    now: Instant,
) -> HashSet<String> {
    let all: HashSet<String> = keys.into_iter().collect();
    // Objects gone since the last resync: drop their backoff state and metric
    // series, which would otherwise accumulate forever.
    q.failures.retain(|k, _| all.contains(k));
    for k in known.difference(&all) {
        forget_object(metrics, reconciler.name(), k);
    }
    for k in &all {
        if !q.running.contains(k) && !q.failures.contains_key(k) && !reconciler.resync_skip(k) {
            q.request(k.clone(), now);
        }
    }
    all
}

/// Counts a finished reconcile and returns when its key is due again.
#[allow(clippy::too_many_arguments)]
fn settle(
    q: &mut Queue,
    cfg: &RuntimeConfig,
    metrics: &Metrics,
    name: &str,
    key: &str,
    result: Result<Action, Failure>,
    rng: &mut impl Rng,
    now: Instant,
) -> Option<Instant> {
    let count = |result: &str| {
        metrics
            .reconciles
            .get_or_create(&labels(&[("controller", name), ("result", result)]))
            .inc();
    };
    match result {
        Ok(action) => {
            q.failures.remove(key);
            count("success");
            let secs = chrono::Utc::now().timestamp();
            metrics
                .reconcile_last_success
                .get_or_create(&labels(&[("controller", name), ("object", key)]))
                .set(secs);
            match action {
                Action::Done => None,
                Action::RequeueAfter(d) => Some(now + d),
            }
        }
        Err(Failure { policy, message }) => {
            let n = q.failures.entry(key.to_owned()).or_insert(0);
            *n = n.saturating_add(1);
            let delay = cfg.backoff(policy.retry, *n, rng);
            count("error");
            metrics
                .reconcile_failures
                .get_or_create(&labels(&[("controller", name), ("reason", policy.reason)]))
                .inc();
            tracing::warn!(controller = name, object = %key, reason = policy.reason, retry = ?policy.retry, failures = *n, retry_in = ?delay, error = %message, "reconcile failed");
            Some(now + delay)
        }
    }
}

/// Forgets metrics of an object that no longer exists.
fn forget_object(metrics: &Metrics, controller: &str, key: &str) {
    metrics
        .reconcile_last_success
        .remove(&labels(&[("controller", controller), ("object", key)]));
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[derive(Debug, thiserror::Error)]
    #[error("fake failure")]
    struct Fail;

    /// A reconciler whose behaviour per key is scripted and whose calls are logged.
    #[derive(Default)]
    struct Script {
        log: Mutex<Vec<(String, Instant)>>,
        work: Duration,
        fail_times: Mutex<HashMap<String, u32>>,
        requeue: Option<Duration>,
        in_flight: AtomicUsize,
        max_in_flight: AtomicUsize,
        per_key: Mutex<HashMap<String, usize>>,
        max_per_key: AtomicUsize,
    }

    impl Reconciler for Script {
        type Error = Fail;
        fn name(&self) -> &'static str {
            "test"
        }
        fn error_policy(&self, _: &Fail) -> ErrorPolicy {
            ErrorPolicy {
                reason: "fake",
                retry: Retry::Transient,
            }
        }
        async fn reconcile(&self, key: String) -> Result<Action, Fail> {
            self.log.lock().unwrap().push((key.clone(), Instant::now()));
            let n = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            self.max_in_flight.fetch_max(n, Ordering::SeqCst);
            let per = {
                let mut m = self.per_key.lock().unwrap();
                let e = m.entry(key.clone()).or_insert(0);
                *e += 1;
                *e
            };
            self.max_per_key.fetch_max(per, Ordering::SeqCst);
            tokio::time::sleep(self.work).await;
            *self.per_key.lock().unwrap().get_mut(&key).unwrap() -= 1;
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
            let mut f = self.fail_times.lock().unwrap();
            if let Some(left) = f.get_mut(&key)
                && *left > 0
            {
                *left -= 1;
                return Err(Fail);
            }
            Ok(self.requeue.map_or(Action::Done, Action::RequeueAfter))
        }
    }

    fn cfg() -> RuntimeConfig {
        RuntimeConfig {
            concurrency: 3,
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(16),
            operator_backoff_base: Duration::from_secs(100),
            operator_backoff_max: Duration::from_secs(400),
            timeout: Duration::from_secs(30),
            resync: Duration::from_secs(3600),
        }
    }

    struct Harness {
        script: Arc<Script>,
        tx: mpsc::Sender<Trigger>,
        stop: CancellationToken,
        metrics: Arc<Metrics>,
        handle: tokio::task::JoinHandle<()>,
    }

    fn start(script: Script, cfg: RuntimeConfig, keys: Vec<String>) -> Harness {
        let script = Arc::new(script);
        let (tx, rx) = mpsc::channel(100);
        let stop = CancellationToken::new();
        let metrics = Arc::new(Metrics::new());
        let handle = tokio::spawn(run(
            script.clone(),
            cfg,
            metrics.clone(),
            rx,
            move || keys.clone(),
            stop.clone(),
        ));
        Harness {
            script,
            tx,
            stop,
            metrics,
            handle,
        }
    }

    impl Harness {
        fn runs(&self, key: &str) -> Vec<Instant> {
            self.script
                .log
                .lock()
                .unwrap()
                .iter()
                .filter(|(k, _)| k == key)
                .map(|(_, t)| *t)
                .collect()
        }
        async fn stop(self) -> Arc<Script> {
            self.stop.cancel();
            self.handle.await.unwrap();
            self.script
        }
    }

    #[tokio::test(start_paused = true)]
    async fn one_key_never_runs_twice_at_once_and_dirty_reruns_once() {
        let h = start(
            Script {
                work: Duration::from_secs(5),
                ..Script::default()
            },
            cfg(),
            vec![],
        );
        h.tx.send(Trigger::Key("a".into())).await.unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
        for _ in 0..5 {
            h.tx.send(Trigger::Key("a".into())).await.unwrap();
        }
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert_eq!(
            h.runs("a").len(),
            2,
            "one run plus one re-run for the triggers that came mid-run"
        );
        let s = h.stop().await;
        assert_eq!(s.max_per_key.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn concurrency_is_bounded() {
        let keys: Vec<String> = (0..10).map(|i| format!("k{i}")).collect();
        let h = start(
            Script {
                work: Duration::from_secs(1),
                ..Script::default()
            },
            cfg(),
            keys,
        );
        tokio::time::sleep(Duration::from_secs(20)).await;
        let s = h.stop().await;
        assert_eq!(s.log.lock().unwrap().len(), 10);
        assert_eq!(s.max_in_flight.load(Ordering::SeqCst), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn failures_back_off_exponentially_with_jitter_and_reset_on_success() {
        let script = Script::default();
        script.fail_times.lock().unwrap().insert("a".into(), 6);
        let h = start(script, cfg(), vec!["a".into()]);
        tokio::time::sleep(Duration::from_secs(120)).await;
        let runs = h.runs("a");
        assert_eq!(runs.len(), 7, "six failures then a success");
        let gaps: Vec<f64> = runs
            .windows(2)
            .map(|w| (w[1] - w[0]).as_secs_f64())
            .collect();
        // Retry n waits between half and all of min(1s * 2^(n-1), 16s).
        for (i, g) in gaps.iter().enumerate() {
            let full = (2f64.powi(i32::try_from(i).unwrap())).min(16.0);
            assert!(
                *g >= full / 2.0 - 0.01 && *g <= full + 0.01,
                "gap {i} = {g}s, expected within [{}, {full}]",
                full / 2.0
            );
        }
        // After the success, a new failure starts again from the base delay.
        h.script.fail_times.lock().unwrap().insert("a".into(), 1);
        let t = Instant::now();
        h.tx.send(Trigger::Key("a".into())).await.unwrap();
        tokio::time::sleep(Duration::from_secs(5)).await;
        let after: Vec<Instant> = h.runs("a").into_iter().filter(|r| *r >= t).collect();
        assert_eq!(after.len(), 2);
        assert!((after[1] - after[0]) <= Duration::from_secs(1));
        let text = h.metrics.render_registry_only();
        assert!(
            text.contains(
                "blockhost_reconcile_failures_total{controller=\"test\",reason=\"fake\"} 7"
            ),
            "{text}"
        );
        h.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_hung_reconcile_times_out_and_is_retried() {
        let mut c = cfg();
        c.timeout = Duration::from_secs(2);
        let h = start(
            Script {
                work: Duration::from_secs(3600),
                ..Script::default()
            },
            c,
            vec!["a".into()],
        );
        tokio::time::sleep(Duration::from_secs(4)).await;
        assert!(h.runs("a").len() >= 2, "timed out and retried");
        let text = h.metrics.render_registry_only();
        assert!(text.contains("reason=\"Timeout\""), "{text}");
        h.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn requeue_after_and_earliest_due_wins() {
        let h = start(
            Script {
                requeue: Some(Duration::from_secs(100)),
                ..Script::default()
            },
            cfg(),
            vec!["a".into()],
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(h.runs("a").len(), 1);
        // Due in 99 s, but a trigger now runs it now.
        h.tx.send(Trigger::Key("a".into())).await.unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(h.runs("a").len(), 2);
        tokio::time::sleep(Duration::from_secs(100)).await;
        assert_eq!(h.runs("a").len(), 3, "requeued after 100 s");
        h.stop().await;
    }

    /// A far requeue time does not hide a key from resyncs: its deadline may
    /// come early (a clock that follows the chain), and only the reconciler's
    /// `resync_skip` knows.
    #[tokio::test(start_paused = true)]
    async fn resync_visits_keys_waiting_for_a_far_requeue() {
        let mut c = cfg();
        c.resync = Duration::from_secs(10);
        let h = start(
            Script {
                requeue: Some(Duration::from_secs(1000)),
                ..Script::default()
            },
            c,
            vec!["a".into()],
        );
        tokio::time::sleep(Duration::from_secs(25)).await;
        assert_eq!(h.runs("a").len(), 3, "start, 10 s, 20 s");
        h.stop().await;
    }

    /// A reconciler that asks resyncs to skip one key.
    struct Skipper(Arc<Script>);

    impl Reconciler for Skipper {
        type Error = Fail;
        fn name(&self) -> &'static str {
            "skipper"
        }
        fn error_policy(&self, _: &Fail) -> ErrorPolicy {
            ErrorPolicy {
                reason: "fake",
                retry: Retry::Transient,
            }
        }
        async fn reconcile(&self, key: String) -> Result<Action, Fail> {
            self.0.reconcile(key).await
        }
        fn resync_skip(&self, key: &str) -> bool {
            key == "settled"
        }
    }

    #[tokio::test(start_paused = true)]
    async fn resync_skips_what_the_reconciler_calls_settled_but_triggers_never_skip() {
        let script = Arc::new(Script::default());
        let (tx, rx) = mpsc::channel(10);
        let stop = CancellationToken::new();
        let mut c = cfg();
        c.resync = Duration::from_secs(10);
        let keys = vec!["settled".to_owned(), "other".to_owned()];
        let handle = tokio::spawn(run(
            Arc::new(Skipper(script.clone())),
            c,
            Arc::new(Metrics::new()),
            rx,
            move || keys.clone(),
            stop.clone(),
        ));
        tokio::time::sleep(Duration::from_secs(25)).await;
        tx.send(Trigger::Key("settled".into())).await.unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
        stop.cancel();
        handle.await.unwrap();
        let log = script.log.lock().unwrap();
        assert_eq!(
            log.iter().filter(|(k, _)| k == "other").count(),
            3,
            "start, 10 s, 20 s"
        );
        assert_eq!(
            log.iter().filter(|(k, _)| k == "settled").count(),
            1,
            "only the trigger"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn deleted_objects_lose_their_metric_series_at_the_next_resync() {
        let script = Arc::new(Script::default());
        let (_tx, rx) = mpsc::channel(10);
        let stop = CancellationToken::new();
        let mut c = cfg();
        c.resync = Duration::from_secs(10);
        let keys = Arc::new(Mutex::new(vec!["a".to_owned(), "b".to_owned()]));
        let k2 = keys.clone();
        let metrics = Arc::new(Metrics::new());
        let handle = tokio::spawn(run(
            script,
            c,
            metrics.clone(),
            rx,
            move || k2.lock().unwrap().clone(),
            stop.clone(),
        ));
        tokio::time::sleep(Duration::from_secs(1)).await;
        let text = metrics.render_registry_only();
        assert!(
            text.contains("object=\"a\"") && text.contains("object=\"b\""),
            "{text}"
        );
        keys.lock().unwrap().retain(|k| k != "b");
        tokio::time::sleep(Duration::from_secs(10)).await;
        let text = metrics.render_registry_only();
        assert!(text.contains("object=\"a\""), "{text}");
        assert!(!text.contains("object=\"b\""), "{text}");
        stop.cancel();
        handle.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn resync_visits_idle_keys_but_never_cuts_a_backoff_short() {
        let mut c = cfg();
        c.resync = Duration::from_secs(10);
        c.backoff_base = Duration::from_secs(60);
        c.backoff_max = Duration::from_secs(60);
        let script = Script::default();
        script.fail_times.lock().unwrap().insert("bad".into(), 100);
        let h = start(script, c, vec!["good".into(), "bad".into()]);
        tokio::time::sleep(Duration::from_secs(25)).await;
        assert_eq!(h.runs("good").len(), 3, "start, 10 s, 20 s");
        assert_eq!(h.runs("bad").len(), 1, "still backing off (30..60 s)");
        h.stop().await;
    }

    /// Fails each key by its name: `op*` as needing an operator, `panic*` by
    /// panicking, anything else transiently.
    struct Judge(Arc<Script>);

    #[derive(Debug, thiserror::Error)]
    #[error("judged failure")]
    struct Judged(Retry);

    impl Reconciler for Judge {
        type Error = Judged;
        fn name(&self) -> &'static str {
            "judge"
        }
        fn error_policy(&self, e: &Judged) -> ErrorPolicy {
            ErrorPolicy {
                reason: match e.0 {
                    Retry::Transient => "Flaky",
                    Retry::Operator => "Misconfigured",
                },
                retry: e.0,
            }
        }
        async fn reconcile(&self, key: String) -> Result<Action, Judged> {
            self.0
                .log
                .lock()
                .unwrap()
                .push((key.clone(), Instant::now()));
            if key.starts_with("panic") {
                panic!("scripted panic");
            }
            Err(Judged(if key.starts_with("op") {
                Retry::Operator
            } else {
                Retry::Transient
            }))
        }
    }

    #[test]
    fn each_curve_doubles_within_its_own_bounds() {
        let c = cfg();
        let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(7);
        for n in 1..10u32 {
            let t = c.backoff(Retry::Transient, n, &mut rng).as_secs_f64();
            let o = c.backoff(Retry::Operator, n, &mut rng).as_secs_f64();
            let tf = (2f64.powi(i32::try_from(n - 1).unwrap())).min(16.0);
            let of = (100.0 * 2f64.powi(i32::try_from(n - 1).unwrap())).min(400.0);
            assert!(t >= tf / 2.0 && t <= tf, "transient {n}: {t}");
            assert!(o >= of / 2.0 && o <= of, "operator {n}: {o}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn failures_needing_an_operator_back_off_longer_and_panics_are_internal() {
        let script = Arc::new(Script::default());
        let (_tx, rx) = mpsc::channel(10);
        let stop = CancellationToken::new();
        let metrics = Arc::new(Metrics::new());
        let keys = vec!["flaky".to_owned(), "op".to_owned(), "panic".to_owned()];
        let handle = tokio::spawn(run(
            Arc::new(Judge(script.clone())),
            cfg(),
            metrics.clone(),
            rx,
            move || keys.clone(),
            stop.clone(),
        ));
        tokio::time::sleep(Duration::from_secs(45)).await;
        let runs = |k: &str| {
            script
                .log
                .lock()
                .unwrap()
                .iter()
                .filter(|(n, _)| n == k)
                .count()
        };
        // Transient: gaps of at most 1, 2, 4, 8, 16 s → six runs within 31 s.
        assert!(runs("flaky") >= 6, "{}", runs("flaky"));
        // Needing an operator: the first retry waits 50..100 s.
        assert_eq!(runs("op"), 1);
        // A panic is not lost: the key is retried on the long curve too.
        assert_eq!(runs("panic"), 1);
        tokio::time::sleep(Duration::from_secs(60)).await; // 105 s: past 100 s
        assert_eq!(runs("op"), 2);
        assert_eq!(runs("panic"), 2, "the panicked key is not stuck as running");
        let text = metrics.render_registry_only();
        for reason in ["Flaky", "Misconfigured", "Internal"] {
            assert!(text.contains(&format!("reason=\"{reason}\"")), "{text}");
        }
        stop.cancel();
        handle.await.unwrap();
    }
}
