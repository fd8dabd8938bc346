//! `blockhost-wizard`: the one-time setup of a BlockHost host, served over HTTPS
//! to the operator's browser, and the finalization that leaves blockhostd running.
//!
//! Module map:
//! - [`settings`]: paths and commands (all configurable, so tests run unprivileged).
//! - [`fsutil`]: atomic writes with the right modes (0600 keys, 0640 config).
//! - [`code`]: the one-time code — 6 characters, 4 hours, single use, locked after
//!   10 wrong tries, compared in constant time.
//! - [`tls`]: the certificate generated at first start and its SHA-256 fingerprint.
//! - [`console`]: the console text in `/etc/issue.d` (URL, code, fingerprint).
//! - [`session`]: server-side sessions behind a random cookie, with a CSRF token.
//! - [`login`]: the admin's Sign-In-with-Ethereum challenge, verified server-side.
//! - [`answers`]: the operator's answers per step and their server-side validation.
//! - [`probe`]: what validation asks of Proxmox VE and the chain.
//! - [`finalize`]: the persisted, locked, resumable step runner and its steps.
//! - [`server`]: the HTTPS server, the page (compiled in) and its JSON API.
//!
//! Secrets (the server key, the Proxmox password and token secret, the admin's
//! access signature) live only in 0600 files; they are never in the state files,
//! an API response or a log line.

pub mod answers;
pub mod code;
pub mod console;
pub mod finalize;
pub mod fsutil;
pub mod login;
pub mod probe;
pub mod server;
pub mod session;
pub mod settings;
pub mod tls;

pub use blockhost_crd::error_chain;
