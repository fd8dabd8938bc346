//! A QEMU guest agent client on the VM's virtio-serial socket, speaking the same
//! commands Proxmox VE sends: `guest-ping`, `guest-file-open`/`write`/`close`
//! (PVE's `agent/file-write`), `guest-exec` + `guest-exec-status`, `guest-shutdown`.
//!
//! The channel has no framing of its own; a reply left over from an earlier client
//! (or a half-finished command) may be waiting, so every session starts with
//! `guest-sync-delimited`, whose reply is preceded by a 0xFF byte, and drops
//! everything up to the reply carrying its random id.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{Value, json};

/// Why talking to the agent failed.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// Connecting, reading or writing the socket failed.
    #[error("guest agent socket {path}")]
    Io {
        /// The socket.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The agent answered with an error.
    #[error("guest agent refused {command}: {class}: {desc}")]
    Refused {
        /// The command.
        command: String,
        /// QMP error class.
        class: String,
        /// QMP error description.
        desc: String,
    },
    /// The agent answered something that is not a reply.
    #[error("guest agent sent an unexpected reply to {command}: {reply}")]
    Protocol {
        /// The command.
        command: String,
        /// What came back.
        reply: String,
    },
    /// Nothing answered in time.
    #[error("guest agent did not answer {command} within {after:?}")]
    Timeout {
        /// The command.
        command: String,
        /// How long we waited.
        after: Duration,
    },
}

/// A session with one VM's guest agent.
#[derive(Debug)]
pub struct Agent {
    path: PathBuf,
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

/// What `guest-exec` reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutput {
    /// Exit code (None: killed by a signal).
    pub exit_code: Option<i64>,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl Agent {
    /// Connects and synchronises, waiting at most `timeout` for the agent to answer.
    pub fn connect(path: &Path, timeout: Duration) -> Result<Self, AgentError> {
        let io = |source| AgentError::Io {
            path: path.to_owned(),
            source,
        };
        let stream = UnixStream::connect(path).map_err(io)?;
        stream.set_read_timeout(Some(timeout)).map_err(io)?;
        let writer = stream.try_clone().map_err(io)?;
        let mut agent = Self {
            path: path.to_owned(),
            reader: BufReader::new(stream),
            writer,
        };
        agent.sync(timeout)?;
        Ok(agent)
    }

    fn io(&self, source: std::io::Error) -> AgentError {
        AgentError::Io {
            path: self.path.clone(),
            source,
        }
    }

    fn sync(&mut self, timeout: Duration) -> Result<(), AgentError> {
        let id: u32 = rand_id();
        let cmd = json!({"execute": "guest-sync-delimited", "arguments": {"id": id}});
        let deadline = Instant::now() + timeout;
        self.send(&cmd)?;
        loop {
            let line = self.read_line("guest-sync-delimited", deadline, timeout)?;
            // The 0xFF sentinel precedes the reply; drop it and anything stale.
            let text = line.trim_start_matches(|c: char| c == '\u{FFFD}' || c.is_whitespace());
            if let Ok(v) = serde_json::from_str::<Value>(text)
                && v.get("return").and_then(Value::as_u64) == Some(u64::from(id))
            {
                return Ok(());
            }
        }
    }

    fn send(&mut self, cmd: &Value) -> Result<(), AgentError> {
        let mut bytes = serde_json::to_vec(cmd).map_err(|e| self.io(e.into()))?;
        bytes.push(b'\n');
        self.writer.write_all(&bytes).map_err(|e| self.io(e))
    }

    fn read_line(
        &mut self,
        command: &str,
        deadline: Instant,
        timeout: Duration,
    ) -> Result<String, AgentError> {
        let mut buf = Vec::new();
        loop {
            match self.reader.read_until(b'\n', &mut buf) {
                Ok(0) => {
                    return Err(self.io(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "the agent closed the channel",
                    )));
                }
                Ok(_) => return Ok(String::from_utf8_lossy(&buf).into_owned()),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    if Instant::now() >= deadline {
                        return Err(AgentError::Timeout {
                            command: command.into(),
                            after: timeout,
                        });
                    }
                }
                Err(e) => return Err(self.io(e)),
            }
        }
    }

    /// Runs one command and returns its `return` value.
    pub fn call(&mut self, command: &str, arguments: Value) -> Result<Value, AgentError> {
        let mut cmd = json!({ "execute": command });
        if !arguments.is_null() {
            cmd["arguments"] = arguments;
        }
        self.send(&cmd)?;
        let timeout = Duration::from_secs(30);
        let line = self.read_line(command, Instant::now() + timeout, timeout)?;
        let v: Value = serde_json::from_str(line.trim()).map_err(|_| AgentError::Protocol {
            command: command.into(),
            reply: line.clone(),
        })?;
        if let Some(r) = v.get("return") {
            return Ok(r.clone());
        }
        if let Some(e) = v.get("error") {
            return Err(AgentError::Refused {
                command: command.into(),
                class: e["class"].as_str().unwrap_or_default().into(),
                desc: e["desc"].as_str().unwrap_or_default().into(),
            });
        }
        Err(AgentError::Protocol {
            command: command.into(),
            reply: line,
        })
    }

    /// `guest-ping`.
    pub fn ping(&mut self) -> Result<(), AgentError> {
        self.call("guest-ping", Value::Null).map(drop)
    }

    /// Writes `content` to `path` the way Proxmox VE's `agent/file-write` does:
    /// `guest-file-open` (mode `wb`), one `guest-file-write` with `buf-b64`,
    /// `guest-file-close`.
    pub fn file_write(&mut self, path: &str, content: &[u8]) -> Result<(), AgentError> {
        let handle = self.call("guest-file-open", json!({"path": path, "mode": "wb"}))?;
        let b64 = base64::engine::general_purpose::STANDARD.encode(content);
        let written = self.call(
            "guest-file-write",
            json!({"handle": handle, "buf-b64": b64}),
        );
        let closed = self.call("guest-file-close", json!({"handle": handle}));
        written?;
        closed.map(drop)
    }

    /// Runs a program in the guest and waits for it (at most `timeout`).
    pub fn exec(
        &mut self,
        path: &str,
        args: &[&str],
        timeout: Duration,
    ) -> Result<ExecOutput, AgentError> {
        let r = self.call(
            "guest-exec",
            json!({"path": path, "arg": args, "capture-output": true}),
        )?;
        let pid = r.get("pid").cloned().ok_or_else(|| AgentError::Protocol {
            command: "guest-exec".into(),
            reply: r.to_string(),
        })?;
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.call("guest-exec-status", json!({"pid": pid}))?;
            if s.get("exited").and_then(Value::as_bool) == Some(true) {
                let text = |k: &str| {
                    s.get(k)
                        .and_then(Value::as_str)
                        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
                        .map(|b| String::from_utf8_lossy(&b).into_owned())
                        .unwrap_or_default()
                };
                return Ok(ExecOutput {
                    exit_code: s.get("exitcode").and_then(Value::as_i64),
                    stdout: text("out-data"),
                    stderr: text("err-data"),
                });
            }
            if Instant::now() >= deadline {
                return Err(AgentError::Timeout {
                    command: format!("guest-exec {path}"),
                    after: timeout,
                });
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Runs `sh -c script` in the guest; an error unless it exits 0.
    pub fn sh(&mut self, script: &str) -> Result<String, AgentError> {
        let out = self.exec("/bin/sh", &["-c", script], Duration::from_secs(120))?;
        if out.exit_code != Some(0) {
            return Err(AgentError::Refused {
                command: format!("sh -c {script:?}"),
                class: format!("exit {:?}", out.exit_code),
                desc: format!("{}{}", out.stdout, out.stderr),
            });
        }
        Ok(out.stdout)
    }

    /// `guest-shutdown` (the agent does not answer it: the guest goes down).
    pub fn shutdown(&mut self) -> Result<(), AgentError> {
        self.send(&json!({"execute": "guest-shutdown"}))
    }
}

/// Waits until the agent at `path` answers `guest-ping`, trying a fresh session
/// every couple of seconds until `deadline`.
pub fn wait_for_ping(path: &Path, deadline: Instant) -> Result<Agent, AgentError> {
    loop {
        let attempt = Agent::connect(path, Duration::from_secs(3)).and_then(|mut a| {
            a.ping()?;
            Ok(a)
        });
        match attempt {
            Ok(a) => return Ok(a),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_secs(1)),
        }
    }
}

fn rand_id() -> u32 {
    // Unpredictability is not needed, only a value unlikely to be in a stale reply.
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    (t ^ std::process::id().rotate_left(16)) & 0x7fff_ffff
}
