//! The `admin` and `rootAgent` sections of `blockhostd`'s configuration: who may
//! open the management ports with a command sent over the chain, which ports,
//! for how long by default, and where the root agent that opens them listens.
//!
//! The command name is the operator's secret (only a transaction carrying it,
//! encrypted to the server key and sent by the admin wallet, opens anything), so
//! this file should stay readable by blockhostd and root only.

use std::path::PathBuf;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::WalletAddress;
use crate::config::firewall::Port;

/// Default path of the root agent's socket.
pub const DEFAULT_AGENT_SOCKET: &str = "/run/blockhost/root-agent.sock";
/// Longest default knock, in seconds (a command may ask for 1–3600).
pub const MAX_DEFAULT_DURATION: u32 = 3600;

/// Admin commands over the chain ("port knocking").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AdminConfig {
    /// The admin wallet: only its transactions are commands.
    pub wallet: WalletAddress,
    /// Where the admin sends commands; absent: to the admin wallet itself (the
    /// original's default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<WalletAddress>,
    /// The command name that means `knock` (a secret: 8–64 characters).
    pub command: String,
    /// Ports a knock may open; each must be one of `firewall.knockTcpPorts`.
    #[serde(default = "default_ports")]
    pub allowed_ports: Vec<Port>,
    /// Ports opened when a command names none.
    #[serde(default = "default_ports")]
    pub default_ports: Vec<Port>,
    /// Seconds a knock lasts when a command names no duration (1–3600).
    #[serde(default = "default_duration")]
    #[schemars(range(min = 1, max = 3600))]
    pub default_duration_secs: u32,
}

fn default_ports() -> Vec<Port> {
    Port::new(22).map(|p| vec![p]).unwrap_or_default()
}

fn default_duration() -> u32 {
    300
}

impl AdminConfig {
    /// The address commands are sent to.
    pub fn target(&self) -> WalletAddress {
        self.target.unwrap_or(self.wallet)
    }

    /// Checks the section against the firewall's knock ports.
    pub fn check(&self, knock_ports: &[Port]) -> Result<(), String> {
        let n = self.command.chars().count();
        if !(8..=64).contains(&n) || self.command.chars().any(char::is_control) {
            return Err(format!(
                "admin.command must be 8-64 printable characters (it is the secret that opens the management ports), not {n}"
            ));
        }
        if !(1..=MAX_DEFAULT_DURATION).contains(&self.default_duration_secs) {
            return Err(format!(
                "admin.defaultDurationSecs {} is out of range 1..=3600",
                self.default_duration_secs
            ));
        }
        if self.allowed_ports.is_empty() {
            return Err("admin.allowedPorts is empty: a knock could open nothing".into());
        }
        for p in &self.allowed_ports {
            if !knock_ports.contains(p) {
                return Err(format!(
                    "admin.allowedPorts: port {p} is not in firewall.knockTcpPorts, so a knock for it would open nothing; add it there or remove it here"
                ));
            }
        }
        if self.default_ports.is_empty() {
            return Err("admin.defaultPorts is empty".into());
        }
        for p in &self.default_ports {
            if !self.allowed_ports.contains(p) {
                return Err(format!(
                    "admin.defaultPorts: port {p} is not in admin.allowedPorts"
                ));
            }
        }
        Ok(())
    }
}

/// The root agent blockhostd calls for the firewall and knocks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RootAgentConfig {
    /// The agent's Unix socket.
    #[serde(default = "default_socket")]
    pub socket: PathBuf,
}

impl Default for RootAgentConfig {
    fn default() -> Self {
        Self {
            socket: default_socket(),
        }
    }
}

impl RootAgentConfig {
    /// Whether this is the default (left out when serialised).
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

fn default_socket() -> PathBuf {
    DEFAULT_AGENT_SOCKET.into()
}

#[cfg(test)]
mod tests {
    use crate::DaemonConfig;

    fn check(extra: &str) -> Result<DaemonConfig, String> {
        let text = format!(
            r#"{{"chain": {{"chainId": 1, "rpcUrls": ["http://127.0.0.1:8545"], "serverKeyFile": "/k"}}{extra}}}"#
        );
        let c: DaemonConfig = serde_json::from_str(&text).map_err(|e| e.to_string())?;
        c.validate()?;
        Ok(c)
    }

    const ADMIN: &str =
        r#""wallet": "0x9965507d1a55bcc2695c58ba16fb37d819b0a4dc", "command": "open-sesame""#;

    #[test]
    fn admin_needs_a_firewall_and_ports_it_can_open() {
        let c = check(&format!(r#", "firewall": {{}}, "admin": {{{ADMIN}}}"#)).unwrap();
        let a = c.admin.unwrap();
        assert_eq!((a.default_duration_secs, a.target()), (300, a.wallet));
        assert_eq!(
            c.root_agent.socket.to_str(),
            Some(super::DEFAULT_AGENT_SOCKET)
        );
        for (extra, want) in [
            (format!(r#", "admin": {{{ADMIN}}}"#), "needs a firewall section"),
            (
                format!(r#", "firewall": {{"knockTcpPorts": [22]}}, "admin": {{{ADMIN}, "allowedPorts": [22, 8006]}}"#),
                "port 8006 is not in firewall.knockTcpPorts",
            ),
            (
                format!(r#", "firewall": {{}}, "admin": {{{ADMIN}, "defaultPorts": [8006], "allowedPorts": [22]}}"#),
                "admin.defaultPorts: port 8006",
            ),
            (
                format!(r#", "firewall": {{}}, "admin": {{{ADMIN}, "defaultDurationSecs": 0}}"#),
                "out of range",
            ),
            (
                r#", "firewall": {}, "admin": {"wallet": "0x9965507d1a55bcc2695c58ba16fb37d819b0a4dc", "command": "short"}"#.into(),
                "8-64 printable characters",
            ),
        ] {
            let err = check(&extra).unwrap_err();
            assert!(err.contains(want), "{extra}: {err}");
        }
    }
}
