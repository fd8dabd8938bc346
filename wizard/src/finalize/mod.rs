//! Finalization: the steps that turn the answers into a running host, each
//! idempotent — it looks at the world (the chain, Proxmox, the files) and does
//! only what is missing — so a runner killed mid-step simply runs that step again
//! on the next start, and a failed step can be retried from the page.
//!
//! - State: `finalize.json` (0600) holds each step's status, error and time, and
//!   the public outputs (addresses, ids). Never a secret: those live in 0600 key
//!   files ([`crate::settings::Settings::secrets_dir`], `/etc/blockhost`).
//! - One runner at a time: an exclusive `flock` on `finalize.lock` is held for
//!   the whole run (a second wizard process cannot run alongside), plus an
//!   in-process flag.
//! - A state left `running` by a killed process is resumed at start-up.
//!
//! The steps themselves are in [`steps`]; transaction idempotency (deterministic
//! nonces and contract addresses, waiting for pending transactions before
//! deciding) is explained there.

pub mod host;
pub mod steps;

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use blockhost_crd::WalletAddress;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::answers::Answers;
use crate::code::CodeStore;
use crate::fsutil::{self, FsError};
use crate::session::Sessions;
use crate::settings::Settings;

/// The steps, in order: (id, what the page shows).
pub const STEPS: &[(&str, &str)] = &[
    ("server-key", "Server key"),
    ("contracts", "Contracts"),
    ("plans", "Plans"),
    ("proxmox-token", "Proxmox API token (BlockHost role)"),
    ("template", "Guest template (build and install)"),
    ("host-firewall", "Root agent (host firewall)"),
    ("config", "Configuration /etc/blockhost/blockhost.yaml"),
    ("daemon", "blockhostd started and healthy"),
    ("plan-resources", "Plan resources in blockhostd"),
    ("nft", "Admin NFT #0"),
    ("done", "Done: the wizard disables itself"),
];

/// The run as a whole.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    /// Not started.
    #[default]
    Idle,
    /// A runner is (or was, if it was killed) working.
    Running,
    /// A step failed; retry from the page.
    Failed,
    /// Every step is done.
    Done,
}

/// One step's status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StepStatus {
    /// Not started.
    #[default]
    Pending,
    /// Under way.
    Running,
    /// Finished.
    Done,
    /// Failed with `error`.
    Failed,
}

/// One step's record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StepRecord {
    /// Its id.
    pub id: String,
    /// What the page shows.
    pub title: String,
    /// Status.
    pub status: StepStatus,
    /// The last failure, for the page (no secrets: messages never quote them).
    pub error: Option<String>,
    /// Runs so far.
    pub attempts: u32,
    /// When it last finished.
    pub completed_at: Option<DateTime<Utc>>,
}

/// What the steps made; public values only.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Outputs {
    /// The server key's address.
    pub server_address: Option<WalletAddress>,
    /// The server wallet's next nonce when the contract step first ran: the
    /// deployments take the nonces from here, so their addresses are known before
    /// they are sent.
    pub base_nonce: Option<u64>,
    /// The chain head when the contract step first ran (the watcher's start).
    pub start_block: Option<u64>,
    /// BlockhostSubscriptions.
    pub subscriptions: Option<WalletAddress>,
    /// AccessCredentialNFT.
    pub nft: Option<WalletAddress>,
    /// The payment token.
    pub stablecoin: Option<WalletAddress>,
    /// Plans on chain: (name, id).
    pub plans: Vec<(String, u64)>,
    /// blockhostd's Proxmox token id.
    pub token_id: Option<String>,
    /// What the template install said (or that the template is not managed).
    pub template: Option<String>,
    /// The root agent's socket, once it answered (absent: firewall not managed).
    pub root_agent: Option<PathBuf>,
    /// The written configuration.
    pub config_file: Option<PathBuf>,
    /// The admin's NFT.
    pub nft_token_id: Option<u64>,
}

/// The persisted state.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct FinalizeState {
    /// The run.
    pub status: RunStatus,
    /// The admin the run was started for.
    pub admin: Option<WalletAddress>,
    /// Each step.
    pub steps: Vec<StepRecord>,
    /// Outputs.
    pub outputs: Outputs,
}

impl FinalizeState {
    fn fresh() -> Self {
        Self {
            steps: STEPS
                .iter()
                .map(|(id, title)| StepRecord {
                    id: (*id).into(),
                    title: (*title).into(),
                    status: StepStatus::Pending,
                    error: None,
                    attempts: 0,
                    completed_at: None,
                })
                .collect(),
            ..Default::default()
        }
    }
}

/// Why a run could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Another runner holds the lock.
    #[error("finalization is already running")]
    AlreadyRunning,
    /// Everything is done.
    #[error("finalization is already done")]
    AlreadyDone,
    /// Some step's answers did not pass their checks.
    #[error("some steps are not complete; check every step first")]
    Incomplete,
    /// The lock or state file failed.
    #[error(transparent)]
    Fs(#[from] FsError),
}

/// Takes the runner's lock: an exclusive, non-blocking `flock` on `path`, held as
/// long as the returned file is open (the kernel releases it if we die).
pub fn try_lock(path: &std::path::Path) -> Result<Option<File>, FsError> {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|source| FsError {
            what: "open the lock",
            path: path.to_owned(),
            source,
        })?;
    // SAFETY: flock on a file descriptor we own and keep open; no memory is shared.
    let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        return Ok(Some(f));
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        return Ok(None);
    }
    Err(FsError {
        what: "lock",
        path: path.to_owned(),
        source: e,
    })
}

/// The runner.
#[derive(Debug)]
pub struct Finalizer {
    settings: Arc<Settings>,
    state: Mutex<FinalizeState>,
    running: AtomicBool,
    code: Arc<CodeStore>,
    sessions: Arc<Sessions>,
    /// Set to true when the host is set up: the server stops.
    done: tokio::sync::watch::Sender<bool>,
}

impl Finalizer {
    /// Loads the state.
    pub fn load(
        settings: Arc<Settings>,
        code: Arc<CodeStore>,
        sessions: Arc<Sessions>,
        done: tokio::sync::watch::Sender<bool>,
    ) -> Result<Arc<Self>, FsError> {
        let mut state: FinalizeState =
            fsutil::read_json(&settings.finalize_file())?.unwrap_or_else(FinalizeState::fresh);
        // A state from an older list of steps: keep the records we know, add the rest.
        let mut fresh = FinalizeState::fresh();
        for rec in &mut fresh.steps {
            if let Some(old) = state.steps.iter().find(|s| s.id == rec.id) {
                *rec = old.clone();
            }
        }
        state.steps = fresh.steps;
        Ok(Arc::new(Self {
            settings,
            state: Mutex::new(state),
            running: AtomicBool::new(false),
            code,
            sessions,
            done,
        }))
    }

    /// A copy of the state for the page.
    pub fn snapshot(&self) -> FinalizeState {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn with_state<T>(&self, f: impl FnOnce(&mut FinalizeState) -> T) -> Result<T, FsError> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let out = f(&mut st);
        fsutil::write_json(&self.settings.finalize_file(), &*st, 0o600)?;
        Ok(out)
    }

    /// Whether the last run was interrupted (the process died while running).
    pub fn interrupted(&self) -> bool {
        self.snapshot().status == RunStatus::Running && !self.running.load(Ordering::SeqCst)
    }

    /// Starts (or resumes, or retries) a run in the background for `admin`.
    pub fn start(
        self: &Arc<Self>,
        answers: Answers,
        admin: WalletAddress,
    ) -> Result<(), StartError> {
        if self.snapshot().status == RunStatus::Done {
            return Err(StartError::AlreadyDone);
        }
        if !answers.complete() {
            return Err(StartError::Incomplete);
        }
        if self.running.swap(true, Ordering::SeqCst) {
            return Err(StartError::AlreadyRunning);
        }
        let lock = match try_lock(&self.settings.lock_file()) {
            Ok(Some(l)) => l,
            Ok(None) => {
                self.running.store(false, Ordering::SeqCst);
                return Err(StartError::AlreadyRunning);
            }
            Err(e) => {
                self.running.store(false, Ordering::SeqCst);
                return Err(e.into());
            }
        };
        if let Err(e) = self.with_state(|s| {
            s.status = RunStatus::Running;
            s.admin = Some(admin);
        }) {
            self.running.store(false, Ordering::SeqCst);
            return Err(e.into());
        }
        let me = Arc::clone(self);
        tokio::spawn(async move {
            me.run(answers, admin).await;
            drop(lock);
            me.running.store(false, Ordering::SeqCst);
        });
        Ok(())
    }

    async fn run(self: &Arc<Self>, answers: Answers, admin: WalletAddress) {
        for (id, _) in STEPS {
            let done = self
                .snapshot()
                .steps
                .iter()
                .any(|s| s.id == *id && s.status == StepStatus::Done);
            if done {
                continue;
            }
            if let Err(e) = self.with_state(|s| {
                if let Some(r) = s.steps.iter_mut().find(|r| r.id == *id) {
                    r.status = StepStatus::Running;
                    r.attempts += 1;
                }
            }) {
                tracing::error!(error = %crate::error_chain(&e), "cannot record the finalization state");
                return;
            }
            tracing::info!(step = id, "finalization step");
            let mut ctx = steps::Ctx {
                settings: &self.settings,
                answers: &answers,
                admin,
                finalizer: self,
            };
            let result = steps::run(id, &mut ctx).await;
            let recorded = self.with_state(|s| {
                if let Some(r) = s.steps.iter_mut().find(|r| r.id == *id) {
                    match &result {
                        Ok(()) => {
                            r.status = StepStatus::Done;
                            r.error = None;
                            r.completed_at = Some(Utc::now());
                        }
                        Err(e) => {
                            r.status = StepStatus::Failed;
                            r.error = Some(e.clone());
                        }
                    }
                }
                if result.is_err() {
                    s.status = RunStatus::Failed;
                }
            });
            if let Err(e) = recorded {
                tracing::error!(error = %crate::error_chain(&e), "cannot record the finalization state");
                return;
            }
            if let Err(e) = result {
                tracing::warn!(step = id, error = %e, "finalization step failed; retry from the page");
                return;
            }
        }
        if let Err(e) = self.with_state(|s| s.status = RunStatus::Done) {
            tracing::error!(error = %crate::error_chain(&e), "cannot record the finalization state");
            return;
        }
        tracing::info!("finalization done; the wizard stops");
        let _ = self.done.send(true);
    }

    /// Changes the outputs and stores them at once (before anything that depends on them).
    pub fn record(&self, f: impl FnOnce(&mut Outputs)) -> Result<(), FsError> {
        self.with_state(|s| f(&mut s.outputs))
    }

    /// The current outputs.
    pub fn outputs(&self) -> Outputs {
        self.snapshot().outputs
    }

    /// The code store (destroyed at the end).
    pub fn code(&self) -> &CodeStore {
        &self.code
    }

    /// The sessions (ended at the end).
    pub fn sessions(&self) -> &Sessions {
        &self.sessions
    }
}
