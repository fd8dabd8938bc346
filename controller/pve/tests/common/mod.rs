//! Test harness: one fakepve process per test, on its own 127.0.10.x address, port 8006.
//!
//! The server script (`tests/fakepve_server.py`) prints its URL and certificate fingerprint,
//! then takes JSON commands on stdin (fault injection, inspection). Dropping [`FakePve`] kills
//! the process; the script also exits on its own when stdin closes, so nothing outlives a
//! crashed test.

#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::ops::{Deref, DerefMut};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::AtomicU32;

use blockhost_pve::{ClientConfig, Credentials, Fingerprint, PveClient, TlsMode};

#[path = "process.rs"]
mod fakepve_process;
pub use fakepve_process::{FakePveProcess, TOKEN_ID, TOKEN_SECRET};

// 127.0.10.0/24 is this crate's range; other crates' tests use other ranges.
static NEXT_HOST: AtomicU32 = AtomicU32::new(1);

/// A running fakepve with its fingerprint parsed for the client.
pub struct FakePve {
    process: FakePveProcess,
    /// `https://127.0.10.x:8006`.
    pub url: String,
    /// The server certificate's SHA-256 fingerprint.
    pub fingerprint: Fingerprint,
}

impl Deref for FakePve {
    type Target = FakePveProcess;
    fn deref(&self) -> &FakePveProcess {
        &self.process
    }
}

impl DerefMut for FakePve {
    fn deref_mut(&mut self) -> &mut FakePveProcess {
        &mut self.process
    }
}

impl FakePve {
    /// Start a server with node pve1 (and `extra_nodes`) and template 9001.
    pub fn start(extra_nodes: &[&str]) -> FakePve {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
        let process =
            FakePveProcess::start(&root, "127.0.10", &NEXT_HOST, extra_nodes, Stdio::inherit);
        let url = process.url.clone();
        let fingerprint = process.fingerprint.parse().unwrap();
        FakePve {
            process,
            url,
            fingerprint,
        }
    }

    /// A client config with the API token and the pinned fingerprint.
    pub fn token_config(&self) -> ClientConfig {
        ClientConfig::new(
            &self.url,
            Credentials::api_token(TOKEN_ID, TOKEN_SECRET),
            TlsMode::Pinned(self.fingerprint),
        )
    }

    /// A client with the API token and the pinned fingerprint.
    pub fn client(&self) -> PveClient {
        PveClient::new(self.token_config()).unwrap()
    }
}
