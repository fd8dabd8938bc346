//! Booting a clone of the guest image under qemu, laid out like a Proxmox VE VM:
//! virtio-scsi disk (`scsihw: virtio-scsi-pci`, `scsi0`), the cloud-init drive as
//! `ide2` (SeaBIOS) or a SCSI CD-ROM (OVMF, whose IDE is not probed), virtio-net,
//! the guest agent on a virtio-serial port (`agent: 1`), and the serial console
//! (`serial0: socket`) captured to a log file.
//!
//! Each VM runs on its own copy-on-write overlay (like a linked clone), with
//! user-mode networking (`restrict=on`: the guest reaches nothing) and its SSH
//! port forwarded to a 127.x loopback address. A [`Vm`] kills its qemu when
//! dropped, however the test ends.

use std::io::Read;
use std::net::{SocketAddrV4, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::agent::{self, Agent, AgentError};

/// Firmware, as Proxmox's `bios` option.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Firmware {
    /// SeaBIOS, PVE's default (`bios: seabios`, machine i440fx).
    Bios,
    /// OVMF (`bios: ovmf`, machine q35).
    Ovmf,
}

/// How qemu runs the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// Emulation: slow, works everywhere.
    Tcg,
    /// Hardware virtualisation.
    Kvm,
}

/// The OVMF code and variable-template files (Debian's `ovmf` package).
pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
/// See [`OVMF_CODE`].
pub const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";

/// One VM to boot.
#[derive(Debug, Clone)]
pub struct VmSpec {
    /// The template image (never written: the VM runs on an overlay).
    pub image: PathBuf,
    /// Working directory for the overlay, sockets and logs (created).
    pub dir: PathBuf,
    /// Firmware.
    pub firmware: Firmware,
    /// Accelerator.
    pub accel: Accel,
    /// Memory in MiB.
    pub memory_mib: u32,
    /// Virtual CPUs.
    pub cpus: u32,
    /// The cloud-init drive.
    pub seed_iso: Option<PathBuf>,
    /// Host side of the SSH forward (a 127.x address).
    pub ssh_forward: Option<SocketAddrV4>,
    /// The guest's static address (the cloud-init `ipconfig0`), target of the forward.
    pub guest_addr: String,
    /// net0's MAC (matched by the cloud-init network config).
    pub mac: String,
}

/// Why a VM could not be run or did not come up.
#[derive(Debug, thiserror::Error)]
pub enum QemuError {
    /// A host tool is missing.
    #[error("{tool} is missing: apt-get install {package}")]
    Missing {
        /// The program or file.
        tool: String,
        /// The Debian package providing it.
        package: &'static str,
    },
    /// Preparing the VM's files or starting qemu failed.
    #[error("cannot {what}")]
    Io {
        /// What was being done.
        what: String,
        /// Why.
        source: std::io::Error,
    },
    /// qemu-img failed.
    #[error("qemu-img could not make the overlay: {0}")]
    Overlay(String),
    /// qemu exited.
    #[error("qemu exited ({status}); its log is {qemu_log}, the serial console {serial_log}")]
    Exited {
        /// Exit status.
        status: std::process::ExitStatus,
        /// qemu's stderr.
        qemu_log: PathBuf,
        /// The guest's serial console.
        serial_log: PathBuf,
    },
    /// The guest did not reach a state in time.
    #[error("{what} not within {after:?}; serial console: {serial_log}")]
    Timeout {
        /// What was awaited.
        what: String,
        /// How long we waited.
        after: Duration,
        /// The guest's serial console.
        serial_log: PathBuf,
    },
    /// The guest agent failed.
    #[error("guest agent; serial console: {serial_log}")]
    Agent {
        /// The guest's serial console.
        serial_log: PathBuf,
        /// Why.
        source: AgentError,
    },
}

/// A running VM; qemu is killed on drop.
#[derive(Debug)]
pub struct Vm {
    child: Option<Child>,
    spec: VmSpec,
    /// When qemu was started.
    pub started: Instant,
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> QemuError {
    let what = what.into();
    move |source| QemuError::Io { what, source }
}

/// Checks that qemu, qemu-img (and OVMF when asked) are installed.
pub fn check_tools(firmware: Firmware) -> Result<(), QemuError> {
    for (tool, package) in [
        ("/usr/bin/qemu-system-x86_64", "qemu-system-x86"),
        ("/usr/bin/qemu-img", "qemu-utils"),
        ("/usr/bin/xorriso", "xorriso"),
    ] {
        if !Path::new(tool).exists() {
            return Err(QemuError::Missing {
                tool: tool.into(),
                package,
            });
        }
    }
    if firmware == Firmware::Ovmf {
        for f in [OVMF_CODE, OVMF_VARS] {
            if !Path::new(f).exists() {
                return Err(QemuError::Missing {
                    tool: f.into(),
                    package: "ovmf",
                });
            }
        }
    }
    Ok(())
}

impl Vm {
    /// Makes the overlay and starts qemu.
    pub fn start(spec: VmSpec) -> Result<Self, QemuError> {
        check_tools(spec.firmware)?;
        let dir = &spec.dir;
        std::fs::create_dir_all(dir).map_err(io(format!("create {}", dir.display())))?;
        let overlay = dir.join("disk.qcow2");
        let _ = std::fs::remove_file(&overlay);
        let out = Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
            .arg(&spec.image)
            .arg(&overlay)
            .output()
            .map_err(io("run qemu-img"))?;
        if !out.status.success() {
            return Err(QemuError::Overlay(
                String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            ));
        }
        let mut cmd = Command::new("qemu-system-x86_64");
        cmd.args(["-nodefaults", "-no-user-config", "-display", "none"]);
        match spec.accel {
            Accel::Tcg => cmd.args(["-accel", "tcg"]),
            Accel::Kvm => cmd.args(["-accel", "kvm", "-cpu", "host"]),
        };
        cmd.args(["-m", &spec.memory_mib.to_string()])
            .args(["-smp", &spec.cpus.to_string()]);
        match spec.firmware {
            Firmware::Bios => {
                cmd.args(["-machine", "pc"]);
            }
            Firmware::Ovmf => {
                let vars = dir.join("OVMF_VARS.fd");
                std::fs::copy(OVMF_VARS, &vars).map_err(io("copy the OVMF variables"))?;
                cmd.args(["-machine", "q35"])
                    .arg("-drive")
                    .arg(format!(
                        "if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}"
                    ))
                    .arg("-drive")
                    .arg(format!(
                        "if=pflash,format=raw,unit=1,file={}",
                        vars.display()
                    ));
            }
        }
        let serial = dir.join("serial.log");
        cmd.arg("-chardev")
            .arg(format!("file,id=serial0,path={}", serial.display()))
            .args(["-serial", "chardev:serial0"]);
        cmd.args(["-device", "virtio-scsi-pci,id=scsihw0"])
            .arg("-drive")
            .arg(format!(
                "file={},if=none,id=drive-scsi0,format=qcow2,cache=unsafe,discard=unmap",
                overlay.display()
            ))
            .args([
                "-device",
                "scsi-hd,bus=scsihw0.0,channel=0,scsi-id=0,lun=0,drive=drive-scsi0,id=scsi0,bootindex=100",
            ]);
        if let Some(iso) = &spec.seed_iso {
            cmd.arg("-drive").arg(format!(
                "file={},if=none,id=drive-ide2,media=cdrom,format=raw,readonly=on",
                iso.display()
            ));
            match spec.firmware {
                Firmware::Bios => cmd.args([
                    "-device",
                    "ide-cd,bus=ide.1,unit=0,drive=drive-ide2,id=ide2",
                ]),
                Firmware::Ovmf => cmd.args([
                    "-device",
                    "scsi-cd,bus=scsihw0.0,scsi-id=2,drive=drive-ide2,id=ide2",
                ]),
            };
        }
        let mut netdev = "user,id=net0,restrict=on".to_owned();
        if let Some(f) = spec.ssh_forward {
            netdev.push_str(&format!(
                ",hostfwd=tcp:{}:{}-{}:22",
                f.ip(),
                f.port(),
                spec.guest_addr
            ));
        }
        cmd.args(["-netdev", &netdev]).arg("-device").arg(format!(
            "virtio-net-pci,netdev=net0,mac={},id=net0",
            spec.mac
        ));
        cmd.arg("-chardev")
            .arg(format!(
                "socket,path={},server=on,wait=off,id=qga0",
                agent_socket(dir).display()
            ))
            .args(["-device", "virtio-serial,id=qga-serial"])
            .args([
                "-device",
                "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0",
            ]);
        let log = std::fs::File::create(dir.join("qemu.log")).map_err(io("create qemu.log"))?;
        tracing::debug!(?cmd, "starting qemu");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(io("open qemu.log"))?)
            .stderr(log)
            .spawn()
            .map_err(io("start qemu-system-x86_64"))?;
        Ok(Self {
            child: Some(child),
            spec,
            started: Instant::now(),
        })
    }

    /// The serial console log.
    pub fn serial_log(&self) -> PathBuf {
        self.spec.dir.join("serial.log")
    }

    /// The guest agent's socket.
    pub fn agent_socket(&self) -> PathBuf {
        agent_socket(&self.spec.dir)
    }

    /// The spec it was started with.
    pub fn spec(&self) -> &VmSpec {
        &self.spec
    }

    /// An error unless qemu still runs.
    pub fn check_running(&mut self) -> Result<(), QemuError> {
        let Some(child) = self.child.as_mut() else {
            return Ok(());
        };
        if let Ok(Some(status)) = child.try_wait() {
            return Err(QemuError::Exited {
                status,
                qemu_log: self.spec.dir.join("qemu.log"),
                serial_log: self.serial_log(),
            });
        }
        Ok(())
    }

    fn timeout(&self, what: &str, after: Duration) -> QemuError {
        QemuError::Timeout {
            what: what.into(),
            after,
            serial_log: self.serial_log(),
        }
    }

    /// Waits until sshd sends its banner through the forward; returns the time since start.
    pub fn wait_for_ssh(&mut self, limit: Duration) -> Result<Duration, QemuError> {
        let Some(addr) = self.spec.ssh_forward else {
            return Err(self.timeout("sshd (no SSH forward configured)", Duration::ZERO));
        };
        let deadline = self.started + limit;
        loop {
            self.check_running()?;
            // slirp accepts at once even while nothing listens in the guest: only
            // the banner proves sshd is up.
            if let Ok(mut s) = TcpStream::connect_timeout(&addr.into(), Duration::from_secs(2)) {
                let _ = s.set_read_timeout(Some(Duration::from_secs(3)));
                let mut buf = [0u8; 4];
                if s.read_exact(&mut buf).is_ok() && &buf == b"SSH-" {
                    return Ok(self.started.elapsed());
                }
            }
            if Instant::now() >= deadline {
                return Err(self.timeout("sshd's banner", limit));
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Waits until the guest agent answers `guest-ping`; returns the session and the
    /// time since start.
    pub fn wait_for_agent(&mut self, limit: Duration) -> Result<(Agent, Duration), QemuError> {
        let deadline = self.started + limit;
        loop {
            self.check_running()?;
            let attempt_end = (Instant::now() + Duration::from_secs(5)).min(deadline);
            match agent::wait_for_ping(&self.agent_socket(), attempt_end) {
                Ok(a) => return Ok((a, self.started.elapsed())),
                Err(_) if Instant::now() < deadline => continue,
                Err(source) => {
                    return Err(QemuError::Agent {
                        serial_log: self.serial_log(),
                        source,
                    });
                }
            }
        }
    }

    /// Waits until the serial console shows `needle`.
    pub fn wait_for_serial(&mut self, needle: &str, limit: Duration) -> Result<(), QemuError> {
        let deadline = self.started + limit;
        loop {
            self.check_running()?;
            if std::fs::read(self.serial_log())
                .is_ok_and(|b| String::from_utf8_lossy(&b).contains(needle))
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(self.timeout(&format!("{needle:?} on the serial console"), limit));
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// Asks the guest to power off (guest agent), then waits up to `limit` for qemu
    /// to exit, killing it after that.
    pub fn shutdown(&mut self, agent: &mut Agent, limit: Duration) {
        let _ = agent.shutdown();
        let deadline = Instant::now() + limit;
        if let Some(child) = self.child.as_mut() {
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    self.child = None;
                    return;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        self.kill();
    }

    /// Kills qemu now.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.kill();
        // The overlay is the only big file; logs stay for the caller to keep or delete.
        let _ = std::fs::remove_file(self.spec.dir.join("disk.qcow2"));
    }
}

fn agent_socket(dir: &Path) -> PathBuf {
    dir.join("qga.sock")
}

/// The accelerator to use: `BLOCKHOST_QEMU_ACCEL=tcg|kvm` if set; otherwise KVM
/// only if a probe boot of `image` under KVM reaches the kernel's init within 60 s
/// (nested KVM crashed Debian guests on some hosts), else TCG. Probed once per
/// process.
pub fn choose_accel(image: &Path, work: &Path) -> Accel {
    static CHOICE: OnceLock<Accel> = OnceLock::new();
    *CHOICE.get_or_init(|| match std::env::var("BLOCKHOST_QEMU_ACCEL").as_deref() {
        Ok("tcg") => Accel::Tcg,
        Ok("kvm") => Accel::Kvm,
        _ => {
            let a = probe_kvm(image, work);
            tracing::info!(accel = ?a, "qemu accelerator chosen");
            a
        }
    })
}

fn probe_kvm(image: &Path, work: &Path) -> Accel {
    if std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_err()
    {
        return Accel::Tcg;
    }
    let spec = VmSpec {
        image: image.to_owned(),
        dir: work.join("kvm-probe"),
        firmware: Firmware::Bios,
        accel: Accel::Kvm,
        memory_mib: 512,
        cpus: 1,
        seed_iso: None,
        ssh_forward: None,
        guest_addr: "10.0.2.15".into(),
        mac: "bc:24:11:00:00:ff".into(),
    };
    let Ok(mut vm) = Vm::start(spec) else {
        return Accel::Tcg;
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let qemu_log = work.join("kvm-probe/qemu.log");
    let result = loop {
        if vm.check_running().is_err()
            || std::fs::read_to_string(&qemu_log).is_ok_and(|l| l.contains("KVM internal error"))
        {
            break Accel::Tcg;
        }
        if std::fs::read(vm.serial_log()).is_ok_and(|b| {
            let s = String::from_utf8_lossy(&b);
            s.contains("Run /init as init process") || s.contains("Welcome to")
        }) {
            break Accel::Kvm;
        }
        if Instant::now() >= deadline {
            break Accel::Tcg;
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    drop(vm);
    let _ = std::fs::remove_dir_all(work.join("kvm-probe"));
    result
}

/// A free TCP port on `ip` (bound and released).
pub fn free_port(ip: std::net::Ipv4Addr) -> Result<SocketAddrV4, QemuError> {
    let l = std::net::TcpListener::bind(SocketAddrV4::new(ip, 0))
        .map_err(io(format!("bind a port on {ip}")))?;
    match l.local_addr().map_err(io("read a bound address"))? {
        std::net::SocketAddr::V4(a) => Ok(a),
        std::net::SocketAddr::V6(_) => Err(QemuError::Io {
            what: "bind an IPv4 port".into(),
            source: std::io::Error::other("got an IPv6 address"),
        }),
    }
}
