//! The BlockHost root agent: the host's only root process, and a small one. It
//! serves blockhostd over a Unix socket and does nothing but these typed actions:
//! install and verify the host's default-deny firewall, open and close admin
//! knocks, and isolate a VM's bridge port. No shell, no guest exec, no files.
//!
//! - [`proto`]: framing (4-byte big-endian length + JSON), requests and answers.
//! - [`server`]: the socket, the `SO_PEERCRED` caller check, concurrency.
//! - [`actions`]: what each action does. [`exec`]: running `nft` and `ip`.
//! - [`firewall`]: the nftables ruleset built from the typed configuration, the
//!   knock sets, and verification by reading the table back.
//! - [`config`]: the agent's own configuration (socket, allowed callers).
//! - [`client`]: what blockhostd uses to call the agent.
//! - [`fuzz`]: the fuzz entry point (framing and request parsing).

pub mod actions;
pub mod client;
pub mod config;
pub mod exec;
pub mod firewall;
pub mod fuzz;
pub mod proto;
pub mod server;

/// An error and each of its sources, joined with ": ".
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
