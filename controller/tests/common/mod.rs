//! Helpers shared by the integration tests: a real `blockhostd` on a temp dir and
//! a way to run the real `bhctl` against it.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)] // shared test helpers: a panic is a failure report

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Path of the repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// A running blockhostd, killed when dropped.
pub struct Daemon {
    pub child: Child,
    pub dir: PathBuf,
    pub socket: PathBuf,
    pub store: PathBuf,
}

impl Daemon {
    /// Starts blockhostd with its store and socket in `dir`, and waits until it serves.
    pub fn start(dir: &Path) -> Daemon {
        Self::start_with(dir, &[])
    }

    pub fn start_with(dir: &Path, extra: &[&str]) -> Daemon {
        Self::start_configured(dir, extra, |_| {})
    }

    /// As [`Self::start_with`], with `configure` applied to the command last
    /// (resource limits, environment).
    pub fn start_configured(
        dir: &Path,
        extra: &[&str],
        configure: impl FnOnce(&mut Command),
    ) -> Daemon {
        let socket = dir.join("api.sock");
        let store = dir.join("state.redb");
        // An empty config file: local defaults, never the machine's /etc/blockhost.
        let cfg = dir.join("blockhost.yaml");
        if !cfg.exists() {
            std::fs::write(&cfg, "# test: local defaults\n").unwrap();
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("daemon.log"))
            .unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_blockhostd"));
        cmd.arg("--store")
            .arg(&store)
            .arg("--socket")
            .arg(&socket)
            .args(extra)
            .env("BLOCKHOST_CONFIG", &cfg)
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(log);
        configure(&mut cmd);
        let child = cmd.spawn().unwrap();
        let mut d = Daemon {
            child,
            dir: dir.to_owned(),
            socket,
            store,
        };
        d.wait_ready();
        d
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if std::os::unix::net::UnixStream::connect(&self.socket).is_ok() {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("blockhostd exited early ({status}); log:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "blockhostd did not start serving within 20 s; log:\n{}",
            self.log()
        );
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("daemon.log")).unwrap_or_default()
    }

    /// Runs bhctl against this daemon.
    pub fn bhctl(&self, args: &[&str]) -> Output {
        bhctl(&self.socket, args, None)
    }

    pub fn signal(&self, sig: i32) {
        let pid = i32::try_from(self.child.id()).unwrap();
        // SAFETY: sending a signal to our own child process.
        let rc = unsafe { libc::kill(pid, sig) };
        assert_eq!(rc, 0, "kill failed");
    }

    pub fn kill9(mut self) {
        self.signal(libc::SIGKILL);
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// bhctl's binary. It is its own crate (`bhctl`), so cargo gives these tests no
/// path to it: it is found beside blockhostd in the same target directory, where
/// `cargo test --workspace` (scripts/test.sh) or `cargo build -p bhctl` puts it.
/// A missing or stale binary stops the test with what to run, rather than
/// testing yesterday's bhctl.
pub fn bhctl_bin() -> std::path::PathBuf {
    let bin = Path::new(env!("CARGO_BIN_EXE_blockhostd")).with_file_name("bhctl");
    let built = std::fs::metadata(&bin)
        .and_then(|m| m.modified())
        .unwrap_or_else(|_| {
            panic!(
                "{} is missing: run `cargo build -p bhctl` (cargo test --workspace builds it)",
                bin.display()
            )
        });
    let root = repo_root();
    for dir in ["controller/bhctl/src", "controller/api/src"] {
        for entry in std::fs::read_dir(root.join(dir)).expect("read bhctl's sources") {
            let path = entry.expect("source entry").path();
            let changed = std::fs::metadata(&path)
                .and_then(|m| m.modified())
                .expect("source mtime");
            assert!(
                changed <= built,
                "{} is older than {}: run `cargo build -p bhctl` first",
                bin.display(),
                path.display()
            );
        }
    }
    bin
}

/// Runs bhctl with a socket and optional standard input.
pub fn bhctl(socket: &Path, args: &[&str], stdin: Option<&str>) -> Output {
    let mut cmd = Command::new(bhctl_bin());
    cmd.args(args)
        .env("BLOCKHOST_SOCKET", socket)
        .env_remove("RUST_LOG")
        .current_dir(repo_root());
    output_with_stdin(&mut cmd, stdin)
}

/// Runs `cmd` to completion, feeding `stdin` (or nothing: closed) to it.
pub fn output_with_stdin(cmd: &mut Command, stdin: Option<&str>) -> Output {
    use std::io::Write;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut pipe = child.stdin.take().unwrap();
    if let Some(input) = stdin {
        pipe.write_all(input.as_bytes()).unwrap();
    }
    drop(pipe);
    child.wait_with_output().unwrap()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A VM manifest with a given name and core count.
pub fn vm_yaml(name: &str, cores: u32) -> String {
    format!(
        "apiVersion: blockhost.io/v1alpha1\nkind: VirtualMachine\nmetadata:\n  name: {name}\nspec:\n  owner: \"0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266\"\n  resources:\n    cores: {cores}\n    memoryMiB: 1024\n    diskGiB: 10\n"
    )
}

/// Names listed by `bhctl get vms -o json`.
pub fn vm_names(d: &Daemon) -> Vec<String> {
    let o = d.bhctl(&["get", "vms", "-o", "json"]);
    assert!(o.status.success(), "get vms failed: {}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["metadata"]["name"].as_str().unwrap().to_owned())
        .collect()
}
