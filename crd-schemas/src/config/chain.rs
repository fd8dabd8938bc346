//! The `chain` section of `blockhostd`'s configuration: which chain and contracts
//! the watcher follows, how it talks to nodes, and where the server key lives.
//!
//! Absent section: no chain is watched. The server key is never in this file,
//! only the path of a file holding it, so the configuration can be shown and
//! shared without leaking the key.

use std::path::PathBuf;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::WalletAddress;
use crate::vm::Resources;

/// The chain the watcher follows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ChainConfig {
    /// EIP-155 chain id; the watcher refuses a node that reports another one.
    pub chain_id: u64,
    /// JSON-RPC endpoints over HTTP(S), tried in order; the next one is used when
    /// one fails.
    #[serde(deserialize_with = "rpc_urls")]
    #[schemars(length(min = 1))]
    pub rpc_urls: Vec<String>,
    /// WebSocket endpoints (`ws://`, `wss://`) for `eth_subscribe("newHeads")`,
    /// tried in order: each new block wakes the watcher at once. Polling every
    /// `pollIntervalMs` stays the fallback. Empty: polling only.
    #[serde(default, deserialize_with = "ws_urls")]
    pub ws_urls: Vec<String>,
    /// Address of `BlockhostSubscriptions`. Absent before the contracts are
    /// deployed (`bhctl chain deploy` writes it); blockhostd needs it to watch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscriptions_contract: Option<WalletAddress>,
    /// Address of `AccessCredentialNFT`. Absent before the contracts are
    /// deployed (`bhctl chain deploy` writes it); blockhostd needs it to watch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nft_contract: Option<WalletAddress>,
    /// Block the contracts were deployed in; the first run reads events from it.
    #[serde(default)]
    pub deployment_block: u64,
    /// Blocks a block must be buried under before its events are applied (0 for a
    /// dev chain; 3 by default).
    #[serde(default = "default_confirmations", deserialize_with = "confirmations")]
    #[schemars(range(max = 1000))]
    pub confirmations: u64,
    /// Milliseconds between head polls (10–60,000).
    #[serde(default = "default_poll", deserialize_with = "poll_interval")]
    #[schemars(range(min = 10, max = 60000))]
    pub poll_interval_ms: u64,
    /// Largest block range asked of `eth_getLogs` at once; halved while a node
    /// refuses a range, grown back after successes (1–1,000,000).
    #[serde(default = "default_range", deserialize_with = "max_range")]
    #[schemars(range(min = 1, max = 1000000))]
    pub max_block_range: u64,
    /// File holding the server's secp256k1 key as hex (mode 0600 or 0400; the
    /// daemon refuses a group- or world-readable file).
    pub server_key_file: PathBuf,
    /// The text buyers sign with `personal_sign` (the operator's public secret).
    #[serde(default = "default_secret")]
    pub public_secret: String,
    /// Resources and template of a plan created on chain that no operator `Plan`
    /// describes yet (the mirrored `Plan` starts with these; edit it afterwards).
    #[serde(default)]
    pub plan_defaults: PlanDefaults,
    /// Judge expiry by the later of the wall clock and the newest confirmed
    /// block's timestamp (for dev chains that travel in time with
    /// `evm_increaseTime`). Off by default: a node you do not control must not
    /// be able to move the clock that suspends and deletes VMs.
    #[serde(default)]
    pub follow_chain_time: bool,
}

/// What a plan first seen on chain gets until an operator describes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PlanDefaults {
    /// CPU, memory and disk (default 1 core, 1024 MiB, 10 GiB: the smallest useful
    /// Debian VM).
    #[serde(default = "default_resources")]
    pub resources: Resources,
    /// Template VMID (default 9001, the original's template).
    #[serde(default = "default_template")]
    pub template: crate::Vmid,
}

impl Default for PlanDefaults {
    fn default() -> Self {
        Self {
            resources: default_resources(),
            template: default_template(),
        }
    }
}

// Literals inside the bounds of each type: these cannot fail.
#[allow(clippy::expect_used)]
fn default_resources() -> Resources {
    Resources {
        cores: crate::Cores::new(1).expect("1 core is in range"),
        memory_mib: crate::MemoryMib::new(1024).expect("1024 MiB is in range"),
        disk_gib: crate::DiskGib::new(10).expect("10 GiB is in range"),
    }
}

#[allow(clippy::expect_used)]
fn default_template() -> crate::Vmid {
    crate::Vmid::new(9001).expect("9001 is a valid VMID")
}

/// The deployed contracts a watcher follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Contracts {
    /// `BlockhostSubscriptions`.
    pub subscriptions: WalletAddress,
    /// `AccessCredentialNFT`.
    pub nft: WalletAddress,
}

/// The configuration names no contracts yet (written before deploying).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "chain.subscriptionsContract and chain.nftContract must both be set; deploy the contracts with `bhctl chain deploy` (it writes them into the configuration) or set the addresses of deployed ones"
)]
pub struct ContractsNotSet;

impl ChainConfig {
    /// Both contract addresses, or [`ContractsNotSet`] when either is missing.
    pub fn contracts(&self) -> Result<Contracts, ContractsNotSet> {
        match (self.subscriptions_contract, self.nft_contract) {
            (Some(subscriptions), Some(nft)) => Ok(Contracts { subscriptions, nft }),
            _ => Err(ContractsNotSet),
        }
    }
}

fn default_confirmations() -> u64 {
    3
}
fn default_poll() -> u64 {
    1000
}
fn default_range() -> u64 {
    2000
}
fn default_secret() -> String {
    "blockhost-access".into()
}

fn rpc_urls<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let urls = Vec::<String>::deserialize(d)?;
    if urls.is_empty() {
        return Err(serde::de::Error::custom("rpcUrls needs at least one URL"));
    }
    for u in &urls {
        if !(u.starts_with("http://") || u.starts_with("https://")) {
            return Err(serde::de::Error::custom(format!(
                "rpc URL {u:?} must start with http:// or https://"
            )));
        }
    }
    Ok(urls)
}

fn ws_urls<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let urls = Vec::<String>::deserialize(d)?;
    for u in &urls {
        if !(u.starts_with("ws://") || u.starts_with("wss://")) {
            return Err(serde::de::Error::custom(format!(
                "WebSocket URL {u:?} must start with ws:// or wss://"
            )));
        }
    }
    Ok(urls)
}

fn confirmations<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let n = u64::deserialize(d)?;
    if n > 1000 {
        return Err(serde::de::Error::custom(format!(
            "confirmations {n} is out of range 0..=1000"
        )));
    }
    Ok(n)
}

fn poll_interval<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let n = u64::deserialize(d)?;
    if !(10..=60_000).contains(&n) {
        return Err(serde::de::Error::custom(format!(
            "pollIntervalMs {n} is out of range 10..=60000"
        )));
    }
    Ok(n)
}

fn max_range<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let n = u64::deserialize(d)?;
    if !(1..=1_000_000).contains(&n) {
        return Err(serde::de::Error::custom(format!(
            "maxBlockRange {n} is out of range 1..=1000000"
        )));
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_section_gets_defaults_and_bad_values_are_refused() {
        let c: ChainConfig = serde_json::from_value(serde_json::json!({
            "chainId": 31337,
            "rpcUrls": ["http://127.0.0.1:8545"],
            "subscriptionsContract": "0x5fbdb2315678afecb367f032d93f642f64180aa3",
            "nftContract": "0xe7f1725e7734ce288f8367e1bb143e90bb3f0512",
            "serverKeyFile": "/etc/blockhost/server.key"
        }))
        .unwrap();
        assert_eq!(c.confirmations, 3);
        assert_eq!(c.poll_interval_ms, 1000);
        assert_eq!(c.plan_defaults.template.get(), 9001);
        assert_eq!(c.public_secret, "blockhost-access");
        assert!(c.contracts().is_ok());
        // Written before deploying: valid, but names no contracts.
        let pre: ChainConfig = serde_json::from_value(serde_json::json!({
            "chainId": 31337,
            "rpcUrls": ["http://127.0.0.1:8545"],
            "serverKeyFile": "/etc/blockhost/server.key"
        }))
        .unwrap();
        assert_eq!(pre.contracts(), Err(ContractsNotSet));
        for bad in [
            serde_json::json!({"rpcUrls": []}),
            serde_json::json!({"rpcUrls": ["ws://x"]}),
            serde_json::json!({"confirmations": 5000}),
            serde_json::json!({"maxBlockRange": 0}),
        ] {
            let mut v = serde_json::json!({
                "chainId": 1, "rpcUrls": ["http://127.0.0.1:8545"],
                "subscriptionsContract": "0x5fbdb2315678afecb367f032d93f642f64180aa3",
                "nftContract": "0xe7f1725e7734ce288f8367e1bb143e90bb3f0512",
                "serverKeyFile": "/k"
            });
            for (k, val) in bad.as_object().unwrap() {
                v[k] = val.clone();
            }
            assert!(serde_json::from_value::<ChainConfig>(v).is_err(), "{bad}");
        }
    }
}
