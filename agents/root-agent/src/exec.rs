//! Running `nft` and `ip`: the agent's only side effects. Commands are spawned
//! directly (never through a shell) with fixed arguments; the only variable text
//! is a script built from validated parameters, passed on standard input. Each run
//! is bounded in time and killed when it overruns.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use crate::firewall::TABLE;

/// How long one `nft` or `ip` run may take.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// The program could not be started.
    #[error("cannot run {program}: is it installed (Debian package nftables / iproute2)?")]
    Spawn {
        /// The program.
        program: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Talking to it failed.
    #[error("lost contact with {program} while it ran")]
    Io {
        /// The program.
        program: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// It took too long and was killed.
    #[error("{program} did not finish within {COMMAND_TIMEOUT:?} and was killed")]
    Timeout {
        /// The program.
        program: String,
    },
    /// It refused: the kernel or the program said no.
    #[error("{program} refused ({status}): {stderr}")]
    Refused {
        /// The program.
        program: String,
        /// Its exit status.
        status: std::process::ExitStatus,
        /// What it printed on standard error (trimmed, at most 2 KiB).
        stderr: String,
    },
    /// Its output was not the JSON expected.
    #[error("{program} printed output that is not the JSON expected")]
    Output {
        /// The program.
        program: String,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
}

/// The programs the agent runs.
#[derive(Debug, Clone)]
pub struct Tools {
    /// `nft` (package nftables).
    pub nft: PathBuf,
    /// `ip` (package iproute2).
    pub ip: PathBuf,
}

impl Default for Tools {
    fn default() -> Self {
        Self {
            nft: "/usr/sbin/nft".into(),
            ip: "/usr/sbin/ip".into(),
        }
    }
}

async fn run(program: &PathBuf, args: &[&str], stdin: Option<&str>) -> Result<Vec<u8>, ExecError> {
    let name = program.display().to_string();
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
    let mut child = cmd.spawn().map_err(|source| ExecError::Spawn {
        program: name.clone(),
        source,
    })?;
    let work = async {
        if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(text.as_bytes()).await?;
            pipe.shutdown().await?;
        }
        child.wait_with_output().await
    };
    let out = tokio::time::timeout(COMMAND_TIMEOUT, work)
        .await
        .map_err(|_| ExecError::Timeout {
            program: name.clone(),
        })?
        .map_err(|source| ExecError::Io {
            program: name.clone(),
            source,
        })?;
    if !out.status.success() {
        let mut stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        stderr.truncate(2048);
        return Err(ExecError::Refused {
            program: name,
            status: out.status,
            stderr,
        });
    }
    Ok(out.stdout)
}

impl Tools {
    /// Runs an nftables script as one transaction (`nft -f -`).
    pub async fn nft_script(&self, script: &str) -> Result<(), ExecError> {
        run(&self.nft, &["-f", "-"], Some(script)).await.map(|_| ())
    }

    /// Reads the table back as JSON (`nft -j list table inet blockhost`); `None`
    /// when it does not exist.
    pub async fn nft_table(&self) -> Result<Option<Value>, ExecError> {
        match run(&self.nft, &["-j", "list", "table", "inet", TABLE], None).await {
            Ok(out) => serde_json::from_slice(&out)
                .map(Some)
                .map_err(|source| ExecError::Output {
                    program: self.nft.display().to_string(),
                    source,
                }),
            Err(ExecError::Refused { stderr, .. })
                if stderr.contains("No such file or directory") =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// The table as nftables prints it, for people.
    pub async fn nft_table_text(&self) -> Result<String, ExecError> {
        run(&self.nft, &["list", "table", "inet", TABLE], None)
            .await
            .map(|o| String::from_utf8_lossy(&o).into_owned())
    }

    /// One link's details (`ip -j -d link show dev NAME`); `None` when it does not exist.
    pub async fn ip_link(&self, name: &str) -> Result<Option<Value>, ExecError> {
        match run(&self.ip, &["-j", "-d", "link", "show", "dev", name], None).await {
            Ok(out) => {
                let v: Value =
                    serde_json::from_slice(&out).map_err(|source| ExecError::Output {
                        program: self.ip.display().to_string(),
                        source,
                    })?;
                Ok(v.as_array().and_then(|a| a.first()).cloned())
            }
            Err(ExecError::Refused { stderr, .. }) if stderr.contains("does not exist") => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Sets a bridge port's isolation flag.
    pub async fn ip_set_isolated(&self, name: &str, on: bool) -> Result<(), ExecError> {
        let flag = if on { "on" } else { "off" };
        run(
            &self.ip,
            &[
                "link",
                "set",
                "dev",
                name,
                "type",
                "bridge_slave",
                "isolated",
                flag,
            ],
            None,
        )
        .await
        .map(|_| ())
    }
}
