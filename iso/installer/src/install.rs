//! Writes BlockHost to the confirmed disk: GPT with a BIOS boot partition, an EFI
//! system partition, the root filesystem (copied from the prebuilt image on the
//! medium) and the rest as an LVM thin pool for Proxmox VE (`pve/data`, the name
//! Proxmox's own installer uses); GRUB for BIOS and for UEFI (the removable
//! path, so no firmware boot entry is needed); hostname, fstab, fresh SSH host
//! keys and machine id. Nothing here needs the network.

use crate::disks::{Disk, human_size};
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;
/// The smallest disk worth installing to: the root's minimum, the ESP and a
/// little room.
pub const MIN_DISK: u64 = 10 * GIB;
const ESP: u64 = 512 * MIB;

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("could not start {program} (is it in the installer image?)")]
    Spawn {
        program: String,
        #[source]
        source: io::Error,
    },
    #[error("{program} {args} failed ({status}): {stderr}")]
    Command {
        program: String,
        args: String,
        status: std::process::ExitStatus,
        stderr: String,
    },
    #[error("could not write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("partition {0} did not appear within 20 s after partitioning")]
    NoPartition(String),
    #[error("the disk is {size}, smaller than the {min} BlockHost needs", size = human_size(*.0), min = human_size(MIN_DISK))]
    TooSmall(u64),
    #[error(
        "the system image {0} is missing from the installer medium (was the ISO written completely?)"
    )]
    NoImage(PathBuf),
}

/// How the disk is split.
#[derive(Debug, PartialEq, Eq)]
pub struct Layout {
    /// Bytes of the root partition; `None`: the rest of the disk.
    pub root: Option<u64>,
    /// Whether an LVM thin pool gets the rest.
    pub pool: bool,
}

/// A quarter of the disk for the root, between 8 and 64 GiB; the rest for the
/// thin pool, unless that would be under 2 GiB (then the root takes it all).
pub fn layout(size: u64) -> Result<Layout, InstallError> {
    if size < MIN_DISK {
        return Err(InstallError::TooSmall(size));
    }
    let root = (size / 4).clamp(8 * GIB, 64 * GIB);
    let rest = size.saturating_sub(root + ESP + 2 * MIB);
    Ok(if rest < 2 * GIB {
        Layout {
            root: None,
            pool: false,
        }
    } else {
        Layout {
            root: Some(root),
            pool: true,
        }
    })
}

/// The sfdisk script for a layout.
pub fn sfdisk_script(layout: &Layout) -> String {
    let mut s = String::from("label: gpt\n");
    s.push_str("size=1MiB, type=21686148-6449-6E6F-744E-656564454649, name=\"bios-boot\"\n");
    s.push_str("size=512MiB, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name=\"EFI\"\n");
    match layout.root {
        Some(bytes) => s.push_str(&format!(
            "size={}MiB, type=4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709, name=\"blockhost-root\"\n",
            bytes / MIB
        )),
        None => s.push_str("type=4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709, name=\"blockhost-root\"\n"),
    }
    if layout.pool {
        s.push_str("type=E6D6D379-F507-44C2-A23C-238F2A3DF928, name=\"pve\"\n");
    }
    s
}

/// The `/etc/default/grub.d` snippet: the installer's consoles carried over,
/// and GRUB itself on the serial port too when one was used.
pub fn grub_defaults(consoles: &[String]) -> String {
    let mut s = String::from("# Written by the BlockHost installer.\n");
    s.push_str(&format!("GRUB_CMDLINE_LINUX=\"{}\"\n", consoles.join(" ")));
    if consoles.iter().any(|c| c.starts_with("console=ttyS")) {
        s.push_str("GRUB_TERMINAL=\"console serial\"\n");
        s.push_str("GRUB_SERIAL_COMMAND=\"serial --unit=0 --speed=115200\"\n");
    }
    s
}

/// Where things are and what to call the machine.
#[derive(Debug)]
pub struct Plan<'a> {
    pub disk: &'a Disk,
    pub image: PathBuf,
    pub hostname: String,
    pub consoles: Vec<String>,
    pub log: PathBuf,
}

/// Progress lines for the operator, also kept in the install log.
pub struct Progress<'a> {
    out: &'a mut dyn Write,
    log: Option<fs::File>,
    step: usize,
    steps: usize,
    started: Instant,
}

impl std::fmt::Debug for Progress<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Progress")
            .field("step", &self.step)
            .finish()
    }
}

impl<'a> Progress<'a> {
    pub fn new(out: &'a mut dyn Write, log: &Path, steps: usize) -> Self {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .ok();
        Progress {
            out,
            log,
            step: 0,
            steps,
            started: Instant::now(),
        }
    }

    pub fn step(&mut self, what: &str) {
        self.step += 1;
        let line = format!(
            "[{}/{}] {what} ({} s)",
            self.step,
            self.steps,
            self.started.elapsed().as_secs()
        );
        self.line(&line);
    }

    pub fn line(&mut self, line: &str) {
        // The console may have hung up; the install goes on regardless.
        let _ = writeln!(self.out, "{line}");
        let _ = self.out.flush();
        if let Some(log) = self.log.as_mut() {
            let _ = writeln!(log, "{line}");
        }
    }
}

fn run(program: &str, args: &[&str]) -> Result<String, InstallError> {
    run_with_input(program, args, None)
}

fn run_with_input(
    program: &str,
    args: &[&str],
    input: Option<&str>,
) -> Result<String, InstallError> {
    let spawn_err = |source| InstallError::Spawn {
        program: program.to_owned(),
        source,
    };
    let mut child = Command::new(program)
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn_err)?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin.write_all(text.as_bytes()).map_err(spawn_err)?;
    }
    let out = child.wait_with_output().map_err(spawn_err)?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        // The last lines say what went wrong; the rest is noise on a console.
        let tail: Vec<&str> = stderr.lines().rev().take(5).collect();
        return Err(InstallError::Command {
            program: program.to_owned(),
            args: args.join(" "),
            status: out.status,
            stderr: tail.into_iter().rev().collect::<Vec<_>>().join(" / "),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs with the console attached, for commands that show their own progress.
fn run_visible(program: &str, args: &[&str]) -> Result<(), InstallError> {
    let status = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .status()
        .map_err(|source| InstallError::Spawn {
            program: program.to_owned(),
            source,
        })?;
    if !status.success() {
        return Err(InstallError::Command {
            program: program.to_owned(),
            args: args.join(" "),
            status,
            stderr: "see its output above".to_owned(),
        });
    }
    Ok(())
}

fn write(path: &Path, text: &str) -> Result<(), InstallError> {
    fs::write(path, text).map_err(|source| InstallError::Write {
        path: path.to_owned(),
        source,
    })
}

fn wait_for(path: &str) -> Result<(), InstallError> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !Path::new(path).exists() {
        if Instant::now() > deadline {
            return Err(InstallError::NoPartition(path.to_owned()));
        }
        let _ = run("udevadm", &["settle", "--timeout=5"]);
        sleep(Duration::from_millis(200));
    }
    Ok(())
}

fn uuid_of(dev: &str) -> Result<String, InstallError> {
    Ok(run("blkid", &["-s", "UUID", "-o", "value", dev])?
        .trim()
        .to_owned())
}

/// Mounts made during the install, undone in reverse order whatever happens.
#[derive(Debug, Default)]
struct Mounts(Vec<String>);

impl Mounts {
    fn mount(&mut self, args: &[&str], target: &str) -> Result<(), InstallError> {
        let mut all: Vec<&str> = args.to_vec();
        all.push(target);
        run("mount", &all)?;
        self.0.push(target.to_owned());
        Ok(())
    }
}

impl Drop for Mounts {
    fn drop(&mut self) {
        for target in self.0.iter().rev() {
            let _ = run("umount", &[target]);
        }
    }
}

/// The number of steps [`install`] reports.
pub const STEPS: usize = 8;

/// Erases `plan.disk` and installs BlockHost on it.
pub fn install(plan: &Plan<'_>, progress: &mut Progress<'_>) -> Result<(), InstallError> {
    let disk = plan.disk;
    let layout = layout(disk.size)?;
    if !plan.image.is_file() {
        return Err(InstallError::NoImage(plan.image.clone()));
    }

    progress.step(&format!(
        "Erasing {} and writing its partition table",
        disk.path
    ));
    // Old signatures inside partitions would otherwise resurface where the new
    // partitions land on the same offsets (an old LVM PV, an old filesystem).
    let parts = run("lsblk", &["-n", "-l", "-p", "-o", "PATH,TYPE", &disk.path])?;
    for line in parts.lines() {
        if let Some((path, "part")) = line.split_once(' ').map(|(p, t)| (p, t.trim())) {
            run("wipefs", &["--all", "--force", path])?;
        }
    }
    run("wipefs", &["--all", "--force", &disk.path])?;
    run_with_input(
        "sfdisk",
        &[
            "--quiet",
            "--wipe",
            "always",
            "--wipe-partitions",
            "always",
            &disk.path,
        ],
        Some(&sfdisk_script(&layout)),
    )?;
    let (esp, root, pv) = (
        disk.partition_path(2),
        disk.partition_path(3),
        disk.partition_path(4),
    );
    for p in [&esp, &root] {
        wait_for(p)?;
    }

    progress.step("Making the filesystems");
    run("mkfs.vfat", &["-F", "32", "-n", "EFI", &esp])?;
    run("mkfs.ext4", &["-q", "-F", "-L", "blockhost-root", &root])?;

    let target = "/run/blockhost-installer/target";
    fs::create_dir_all(target).map_err(|source| InstallError::Write {
        path: target.into(),
        source,
    })?;
    let mut mounts = Mounts::default();
    mounts.mount(&[&root], target)?;

    progress.step(&format!("Copying the system from {}", plan.image.display()));
    let image = plan.image.to_string_lossy();
    run_visible("unsquashfs", &["-f", "-q", "-d", target, &image])?;
    let efi_dir = format!("{target}/boot/efi");
    fs::create_dir_all(&efi_dir).map_err(|source| InstallError::Write {
        path: efi_dir.clone().into(),
        source,
    })?;
    mounts.mount(&["-o", "umask=0077", &esp], &efi_dir)?;

    progress.step("Configuring the system (hostname, fstab, host keys)");
    let t = Path::new(target);
    let root_uuid = uuid_of(&root)?;
    let esp_uuid = uuid_of(&esp)?;
    write(
        &t.join("etc/fstab"),
        &format!(
            "# Written by the BlockHost installer.\nUUID={root_uuid} / ext4 errors=remount-ro 0 1\nUUID={esp_uuid} /boot/efi vfat umask=0077 0 1\n"
        ),
    )?;
    write(&t.join("etc/hostname"), &format!("{}\n", plan.hostname))?;
    write(
        &t.join("etc/hosts"),
        &format!(
            "127.0.0.1 localhost\n127.0.1.1 {h}\n::1 localhost ip6-localhost ip6-loopback\nff02::1 ip6-allnodes\nff02::2 ip6-allrouters\n",
            h = plan.hostname
        ),
    )?;
    // An empty machine-id makes systemd create one on first boot (and run
    // first-boot presets); every install gets its own.
    write(&t.join("etc/machine-id"), "")?;
    fs::create_dir_all(t.join("etc/default/grub.d")).map_err(|source| InstallError::Write {
        path: t.join("etc/default/grub.d"),
        source,
    })?;
    write(
        &t.join("etc/default/grub.d/blockhost.cfg"),
        &grub_defaults(&plan.consoles),
    )?;

    for dir in ["/dev", "/proc", "/sys", "/run"] {
        mounts.mount(&["--bind", dir], &format!("{target}{dir}"))?;
    }
    // Host keys are made here, not in the image: every machine needs its own.
    run("chroot", &[target, "ssh-keygen", "-A"])?;
    // The root account stays locked (no password exists); recovery is from the
    // console (README: "Console recovery").
    run("chroot", &[target, "usermod", "--lock", "root"])?;

    progress.step("Installing the boot loader for BIOS and UEFI");
    run(
        "chroot",
        &[target, "grub-install", "--target=i386-pc", &disk.path],
    )?;
    run(
        "chroot",
        &[
            target,
            "grub-install",
            "--target=x86_64-efi",
            "--efi-directory=/boot/efi",
            "--removable",
            "--no-nvram",
        ],
    )?;
    // Upgrades of grub-pc re-install to this disk, by its stable name.
    let by_id = run(
        "udevadm",
        &["info", "--query=symlink", "--name", &disk.path],
    )
    .ok()
    .and_then(|s| {
        s.split_whitespace()
            .find(|l| l.starts_with("disk/by-id/"))
            .map(|l| format!("/dev/{l}"))
    })
    .unwrap_or_else(|| disk.path.clone());
    run_with_input(
        "chroot",
        &[target, "debconf-set-selections"],
        Some(&format!(
            "grub-pc grub-pc/install_devices multiselect {by_id}\n"
        )),
    )?;
    run("chroot", &[target, "update-grub"])?;

    progress.step(if layout.pool {
        "Creating the LVM thin pool pve/data for Proxmox VE storage"
    } else {
        "No room left for an LVM thin pool (the disk is small): skipped"
    });
    if layout.pool {
        wait_for(&pv)?;
        run("pvcreate", &["--force", "--force", "--yes", &pv])?;
        run("vgcreate", &["pve", &pv])?;
        run(
            "lvcreate",
            &[
                "--yes",
                "--type",
                "thin-pool",
                "--extents",
                "95%FREE",
                "--name",
                "data",
                "pve",
            ],
        )?;
        run("vgchange", &["--activate", "n", "pve"])?;
    }

    progress.step("Saving the install log");
    let log_dir = t.join("var/log");
    let _ = fs::copy(&plan.log, log_dir.join("blockhost-installer.log"));

    progress.step("Unmounting");
    drop(mounts);
    run("sync", &[])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts() {
        assert!(matches!(layout(8 * GIB), Err(InstallError::TooSmall(_))));
        // A 12 GiB test disk: 8 GiB root, ~3.5 GiB pool.
        assert_eq!(
            layout(12 * GIB).expect("fits"),
            Layout {
                root: Some(8 * GIB),
                pool: true
            }
        );
        // Just too small for a pool: the root takes it all.
        assert_eq!(
            layout(10 * GIB).expect("fits"),
            Layout {
                root: None,
                pool: false
            }
        );
        assert_eq!(layout(1000 * GIB).expect("fits").root, Some(64 * GIB));
        assert_eq!(layout(100 * GIB).expect("fits").root, Some(25 * GIB));
    }

    #[test]
    fn partition_table() {
        let s = sfdisk_script(&layout(12 * GIB).expect("fits"));
        assert!(s.starts_with("label: gpt\n"));
        assert!(s.contains("size=8192MiB"));
        assert_eq!(s.lines().count(), 5);
        assert!(s.lines().last().is_some_and(|l| l.contains("name=\"pve\"")));
        let s = sfdisk_script(&layout(10 * GIB).expect("fits"));
        assert_eq!(s.lines().count(), 4);
    }

    #[test]
    fn grub_follows_the_consoles() {
        let s = grub_defaults(&["console=tty0".into(), "console=ttyS0,115200n8".into()]);
        assert!(s.contains("GRUB_CMDLINE_LINUX=\"console=tty0 console=ttyS0,115200n8\""));
        assert!(s.contains("GRUB_TERMINAL=\"console serial\""));
        assert!(!grub_defaults(&[]).contains("GRUB_TERMINAL"));
    }
}
