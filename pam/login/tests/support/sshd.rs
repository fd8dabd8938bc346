//! A real Debian sshd on a loopback port, with its own config, host key and PAM
//! service (`/etc/pam.d/<service>`, never `/etc/pam.d/sshd`), and an OpenSSH client
//! that answers keyboard-interactive prompts through an `SSH_ASKPASS` script.
//!
//! sshd takes its PAM service name from its program name, so it is started through a
//! symlink named after the test service. Everything is removed on drop: the sshd
//! process, the PAM service file and the test user (if this run created it).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::*;

/// The askpass script: answers each prompt according to the word in `$DIR/mode`.
/// It records every prompt, and the last signature made, for the test to inspect.
const ASKPASS: &str = r#"#!/bin/bash
# Test askpass for ssh keyboard-interactive: $1 is the prompt sshd relayed.
set -u
dir="$(dirname "$0")"
mode="$(cat "$dir/mode")"
printf '%s' "$1" > "$dir/last-prompt"
sign() { # $1 = anvil account index
  local msg
  msg="$("$dir/blockhost-login" extract <<<"$PROMPT")" || exit 1
  "$dir/cast" wallet sign --mnemonic "$dir/mnemonic" --mnemonic-index "$1" "$msg" | tee "$dir/last-sig"
}
PROMPT="$1"
case "$mode" in
  cast) sign 0 ;;
  cli) BLOCKHOST_KEY_FILE="$dir/key0.hex" exec "$dir/blockhost-login-askpass" "$1" ;;
  other-wallet) sign 1 ;;
  slow) sleep 2.5; sign 0 ;;
  replay) cat "$dir/replay-sig" ;;
  garbage) echo 'let me in' ;;
  oversized) head -c 1048576 /dev/zero | tr '\0' 'f'; echo ;;
  enter) grep -o 'https://[^ ]*' <<<"$PROMPT" | head -1 > "$dir/url.tmp" && mv "$dir/url.tmp" "$dir/url"; echo ;;
  *) exit 1 ;;
esac
"#;

/// GECOS comment of the Unix users these tests create.
const TEST_USER_MARK: &str = "blockhost wallet-login test user";

/// The GECOS comment of `user`, or None if there is no such user.
fn passwd_comment(user: &str) -> Option<String> {
    let out = Command::new("getent")
        .args(["passwd", user])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let line = String::from_utf8_lossy(&out.stdout).into_owned();
    Some(line.split(':').nth(4).unwrap_or_default().to_owned())
}

/// A running test sshd.
pub struct Sshd {
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub user: String,
    service: String,
    process: Option<Guard>,
    created_user: bool,
}

impl Sshd {
    /// Starts sshd as PAM service `service` for Unix user `user`, with the module
    /// configured by `options` and the access file `access`.
    pub fn start(service: &str, user: &str, access: &str, options: &str) -> Self {
        require_root();
        for tool in [
            "/usr/sbin/sshd",
            "/usr/bin/ssh",
            "/usr/bin/ssh-keygen",
            "/usr/sbin/useradd",
        ] {
            assert!(
                Path::new(tool).exists(),
                "{tool} missing: apt-get install openssh-server openssh-client"
            );
        }
        let dir = tempfile::Builder::new()
            .prefix("bh-sshd-")
            .tempdir()
            .unwrap();
        // sshd's privilege separation refuses group/world-writable parents.
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        // A user left by an interrupted earlier run carries our marker and is ours
        // to reuse and remove; any other existing user is left alone.
        let created_user = match passwd_comment(user) {
            None => {
                let ok = Command::new("useradd")
                    .args([
                        "--create-home",
                        "--shell",
                        "/bin/sh",
                        "--comment",
                        TEST_USER_MARK,
                        user,
                    ])
                    .status()
                    .unwrap();
                assert!(ok.success(), "useradd {user} failed");
                true
            }
            Some(comment) => comment == TEST_USER_MARK,
        };
        let port = free_port();
        let mut s = Self {
            dir,
            port,
            user: user.into(),
            service: service.into(),
            process: None,
            created_user,
        };
        let d = s.dir.path().to_path_buf();
        write_file(&d.join("access.json"), access, 0o644);
        s.write_pam(options);
        let ok = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(d.join("host_key"))
            .status()
            .unwrap();
        assert!(ok.success());
        write_file(
            &d.join("sshd_config"),
            &format!(
                // The authentication settings are the packaged snippet itself, so the
                // test proves what the VM template ships.
                "Include {snippet}\nListenAddress 127.0.0.1:{port}\nHostKey {hk}\nPidFile {d}/sshd.pid\n\
                 AllowUsers {user}\nMaxAuthTries 6\nLoginGraceTime 60\nStrictModes no\nUseDNS no\n\
                 PrintMotd no\nPrintLastLog no\nX11Forwarding no\nLogLevel VERBOSE\n",
                snippet = Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("../packaging/sshd_config.d-50-blockhost.conf")
                    .display(),
                hk = d.join("host_key").display(),
                d = d.display()
            ),
            0o600,
        );
        // Tools the askpass script calls, next to it.
        std::os::unix::fs::symlink(bin("blockhost-login"), d.join("blockhost-login")).unwrap();
        std::os::unix::fs::symlink(bin("blockhost-login"), d.join("blockhost-login-askpass"))
            .unwrap();
        std::os::unix::fs::symlink(cast(), d.join("cast")).unwrap();
        mnemonic_file(&d);
        key_file(&d);
        write_file(&d.join("askpass"), ASKPASS, 0o755);
        std::fs::create_dir_all("/run/sshd").unwrap();
        let link = d.join(service);
        std::os::unix::fs::symlink("/usr/sbin/sshd", &link).unwrap();
        let log = std::fs::File::create(d.join("sshd.log")).unwrap();
        let child = Command::new(&link)
            .args(["-D", "-e", "-f"])
            .arg(d.join("sshd_config"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        s.process = Some(Guard(child));
        wait_for_port(port, "sshd");
        s
    }

    fn pam_path(&self) -> PathBuf {
        PathBuf::from("/etc/pam.d").join(&self.service)
    }

    /// (Re)writes the PAM service; sshd reads it at each new connection.
    pub fn write_pam(&self, options: &str) {
        let d = self.dir.path();
        write_file(
            &self.pam_path(),
            &format!(
                "# Written by BlockHost's wallet-login tests; removed when they end.\n\
                 auth required {} access_file={} socket={} {options}\n\
                 account required pam_unix.so\nsession required pam_permit.so\n",
                module_path().display(),
                d.join("access.json").display(),
                d.join("signer.sock").display()
            ),
            0o644,
        );
    }

    /// Replaces the auth line with `pam_permit.so` (no prompt): a baseline for
    /// benchmarks, everything of a login except the wallet round trip.
    pub fn write_pam_permit(&self) {
        write_file(
            &self.pam_path(),
            "auth required pam_permit.so\naccount required pam_unix.so\nsession required pam_permit.so\n",
            0o644,
        );
    }

    /// True while the sshd listener process runs.
    pub fn alive(&mut self) -> bool {
        matches!(self.process.as_mut().unwrap().0.try_wait(), Ok(None))
    }

    /// sshd's log so far (for assertion messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sshd.log")).unwrap_or_default()
    }

    /// Logs in with the askpass script in `mode`, running `echo wallet-login-ok; id -un`.
    pub fn ssh(&self, mode: &str) -> Output {
        self.set_mode(mode);
        self.ssh_as(mode)
    }

    /// Chooses how the askpass script answers.
    pub fn set_mode(&self, mode: &str) {
        std::fs::write(self.dir.path().join("mode"), mode).unwrap();
    }

    /// Like [`Sshd::ssh`] for a mode already written (safe to call from several
    /// threads at once with the same mode).
    pub fn ssh_as(&self, mode: &str) -> Output {
        let d = self.dir.path();
        assert_eq!(std::fs::read_to_string(d.join("mode")).unwrap(), mode);
        let mut cmd = Command::new("ssh");
        cmd.args([
            "-F",
            "/dev/null",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "StrictHostKeyChecking=no",
        ])
        .args([
            "-o",
            "LogLevel=ERROR",
            "-o",
            "PreferredAuthentications=keyboard-interactive",
        ])
        .args([
            "-o",
            "NumberOfPasswordPrompts=1",
            "-o",
            "ConnectTimeout=10",
            "-o",
            "BatchMode=no",
        ])
        .args([
            "-p",
            &self.port.to_string(),
            &format!("{}@127.0.0.1", self.user),
        ])
        .arg("echo wallet-login-ok; id -un")
        .env("SSH_ASKPASS", d.join("askpass"))
        .env("SSH_ASKPASS_REQUIRE", "force")
        .env("DISPLAY", ":0")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        run_bounded(cmd, Duration::from_secs(60))
    }

    /// True if the output shows the command ran as the test user.
    pub fn logged_in(&self, out: &Output) -> bool {
        out.status.success()
            && String::from_utf8_lossy(&out.stdout) == format!("wallet-login-ok\n{}\n", self.user)
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        self.process.take();
        let _ = std::fs::remove_file(self.pam_path());
        if self.created_user {
            // userdel refuses while the user's last session processes are still
            // exiting (sshd was just stopped); give them a moment.
            for _ in 0..50 {
                let done = Command::new("userdel")
                    .args(["--remove", &self.user])
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success());
                if done || passwd_comment(&self.user).is_none() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// Runs a command, killing it if it outlives `limit`.
pub fn run_bounded(mut cmd: Command, limit: Duration) -> Output {
    let child = cmd.spawn().unwrap();
    let id = child.id();
    let deadline = Instant::now() + limit;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    loop {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(out) => return out.unwrap(),
            Err(_) if Instant::now() < deadline => continue,
            Err(_) => {
                // SAFETY: signalling our own child by its pid.
                unsafe { libc::kill(id as i32, libc::SIGKILL) };
                panic!("command did not finish within {limit:?}: {cmd:?}");
            }
        }
    }
}

/// Path of a file in the sshd test directory.
pub fn in_dir(s: &Sshd, name: &str) -> PathBuf {
    s.dir.path().join(name)
}
