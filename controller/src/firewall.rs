//! The host firewall, from blockhostd's side: the `firewall` section is
//! installed through the root agent at start and checked again every minute
//! (a table someone flushed or edited is installed again), and `GET /firewall`
//! asks the agent what is in force and which knocks are open.
//!
//! blockhostd never touches nftables itself: it runs unprivileged and the agent
//! is the host's only root process. While the agent cannot be reached the
//! daemon keeps running (the table already in the kernel stays in force, and
//! its knocks still close on time) and the `HostFirewall` condition at
//! `GET /status` says so.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use blockhost_api::{FirewallReport, KnockReport};
use blockhost_crd::Condition;
use blockhost_crd::config::FirewallConfig;
use blockhost_crd::meta::ConditionStatus;
use blockhost_root_agent::client::{ClientError, RootAgentClient};
use chrono::Utc;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// Type of the condition on the host firewall.
pub const HOST_FIREWALL: &str = "HostFirewall";
/// How often the firewall in force is compared with the configuration.
pub const CHECK_EVERY: Duration = Duration::from_secs(60);
/// First retry after a failed install; doubled up to [`CHECK_EVERY`].
const FIRST_RETRY: Duration = Duration::from_secs(1);

/// The configured firewall and the agent that installs it.
#[derive(Debug)]
pub struct HostFirewall {
    agent: RootAgentClient,
    config: FirewallConfig,
    metrics: Arc<Metrics>,
    condition: Mutex<Option<Condition>>,
}

impl HostFirewall {
    /// The firewall of `config`, installed through `agent`.
    pub fn new(agent: RootAgentClient, config: FirewallConfig, metrics: Arc<Metrics>) -> Self {
        Self {
            agent,
            config,
            metrics,
            condition: Mutex::new(None),
        }
    }

    /// The agent's client (the watcher opens knocks through it too).
    pub fn agent(&self) -> &RootAgentClient {
        &self.agent
    }

    /// The `HostFirewall` condition, once anything was tried.
    pub fn condition(&self) -> Option<Condition> {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Condition>> {
        self.condition.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set(&self, ok: bool, reason: &str, message: String) {
        let status = if ok {
            ConditionStatus::True
        } else {
            ConditionStatus::False
        };
        let mut c = self.lock();
        let since = match c.as_ref() {
            Some(old) if old.status == status => old.last_transition_time,
            _ => Utc::now(),
        };
        *c = Some(Condition {
            type_: HOST_FIREWALL.into(),
            status,
            reason: reason.into(),
            message,
            last_transition_time: since,
        });
    }

    fn count(&self, result: &str) {
        self.metrics
            .host_firewall
            .get_or_create(&vec![("result".into(), result.into())])
            .inc();
    }

    /// Installs the firewall and reads it back; records the outcome.
    pub async fn apply(&self) -> Result<(), ClientError> {
        match self.agent.apply_firewall(&self.config).await {
            Ok(a) => {
                self.count("applied");
                tracing::info!(
                    rules = a.rules,
                    knocks_kept = a.knocks_kept,
                    "host firewall installed and verified through the root agent"
                );
                self.set(true, "InForce", format!("{} rules in force", a.rules));
                Ok(())
            }
            Err(e) => {
                self.count("failed");
                let why = blockhost_root_agent::error_chain(&e);
                tracing::error!(error = %why, "cannot install the host firewall; the root agent's table (if any) stays as it was");
                self.set(
                    false,
                    "AgentFailed",
                    format!("cannot install the firewall: {why}"),
                );
                Err(e)
            }
        }
    }

    /// One periodic check: compares, and installs again on drift.
    async fn check(&self) -> Result<(), ClientError> {
        let s = self.agent.verify_firewall(&self.config).await?;
        if s.in_force {
            self.count("in_force");
            return Ok(());
        }
        self.count("drift");
        tracing::warn!(problems = %s.problems.join("; "), "the host firewall differs from the configuration; installing it again");
        self.apply().await
    }

    /// Installs at start, retrying until it works, then checks every
    /// [`CHECK_EVERY`] until `shutdown`.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut retry = FIRST_RETRY;
        let mut installed = false;
        loop {
            let result = if installed {
                self.check().await
            } else {
                self.apply().await
            };
            let wait = match result {
                Ok(()) => {
                    installed = true;
                    retry = FIRST_RETRY;
                    CHECK_EVERY
                }
                Err(e) => {
                    if installed {
                        let why = blockhost_root_agent::error_chain(&e);
                        tracing::warn!(error = %why, "cannot check the host firewall");
                        self.set(
                            false,
                            "AgentFailed",
                            format!("cannot check the firewall: {why}"),
                        );
                    }
                    let w = retry;
                    retry = (retry * 2).min(CHECK_EVERY);
                    w
                }
            };
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// What the agent reads back now (`GET /firewall`).
    pub async fn report(&self) -> Result<FirewallReport, ClientError> {
        let s = self.agent.verify_firewall(&self.config).await?;
        let now = u64::try_from(Utc::now().timestamp()).unwrap_or(0);
        Ok(FirewallReport {
            in_force: s.in_force,
            problems: s.problems,
            ruleset: s.ruleset,
            knocks: s
                .knocks
                .into_iter()
                .map(|k| KnockReport {
                    source: k.source,
                    port: k.port,
                    timeout_secs: k.timeout_secs,
                    expires_secs: k.expires_secs,
                    expires_at: now + k.expires_secs,
                })
                .collect(),
            checked_at: now,
        })
    }
}
