//! `blockhost-installer`: runs on each console of the installer ISO (a systemd
//! unit per console), lists the disks and installs BlockHost to the one the
//! operator names by typing `ERASE <disk>`. One instance installs at a time (a
//! lock in /run); the others say so. See `confirm` for what counts as consent.

mod confirm;
mod disks;
mod install;

use confirm::{Answer, ERASE_WORD};
use disks::{Disk, LSBLK_COLUMNS, Survey};
use install::{InstallError, Plan, Progress};
use std::fs;
use std::io::{self, BufRead, Write};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::thread::sleep;
use std::time::Duration;

const VERSION: &str = env!("CARGO_PKG_VERSION");
const LOCK: &str = "/run/blockhost-installer.lock";
const LOG: &str = "/run/blockhost-installer.log";

#[derive(Debug, thiserror::Error)]
enum Error {
    #[error("could not run {0}")]
    Tool(&'static str, #[source] io::Error),
    #[error("{0} failed: {1}")]
    ToolFailed(&'static str, String),
    #[error(
        "the installer medium is not mounted at {0}; boot the BlockHost ISO with its default menu entry"
    )]
    NoMedium(String),
    #[error(transparent)]
    Disks(#[from] disks::DisksError),
    #[error("could not open the lock {LOCK}")]
    Lock(#[source] io::Error),
    #[error("could not read the console")]
    Console(#[source] io::Error),
    #[error("installing failed")]
    Install(#[source] InstallError),
}

/// Options, from the command line (the systemd unit passes none normally).
#[derive(Debug)]
struct Options {
    medium: String,
    image: Option<PathBuf>,
    cmdline: PathBuf,
}

fn options() -> Result<Options, String> {
    let mut o = Options {
        medium: "/run/live/medium".into(),
        image: None,
        cmdline: "/proc/cmdline".into(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--medium" => o.medium = value()?,
            "--image" => o.image = Some(value()?.into()),
            "--cmdline" => o.cmdline = value()?.into(),
            "--version" => return Err(format!("blockhost-installer {VERSION}")),
            _ => {
                return Err(format!(
                    "unknown argument {a}; usage: blockhost-installer [--medium DIR] [--image FILE] [--cmdline FILE]"
                ));
            }
        }
    }
    Ok(o)
}

fn tool(program: &'static str, args: &[&str]) -> Result<String, Error> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| Error::Tool(program, e))?;
    if !out.status.success() {
        return Err(Error::ToolFailed(
            program,
            String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn survey(medium: &str) -> Result<Survey, Error> {
    let source = tool(
        "findmnt",
        &["--noheadings", "--output", "SOURCE", "--mountpoint", medium],
    )
    .map_err(|_| Error::NoMedium(medium.to_owned()))?;
    let source = source.trim();
    let json = tool("lsblk", &["--json", "--bytes", "--output", LSBLK_COLUMNS])?;
    Ok(disks::candidates(&json, source)?)
}

/// The lock held while one console installs (released when the process ends).
fn try_lock() -> Result<Option<fs::File>, Error> {
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(LOCK)
        .map_err(Error::Lock)?;
    // SAFETY: flock on a descriptor we own; no memory is shared.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    Ok((rc == 0).then_some(file))
}

struct Ui {
    out: io::Stdout,
}

impl Ui {
    fn say(&mut self, text: &str) {
        // A console that hung up is not a reason to stop an install.
        let _ = writeln!(self.out, "{text}");
        let _ = self.out.flush();
    }

    fn show(&mut self, survey: &Survey) {
        self.say("");
        self.say(&format!("BlockHost {VERSION} installer"));
        self.say("==========================");
        self.say("WARNING: installing ERASES the disk you choose, all of it.");
        self.say("");
        if survey.offered.is_empty() {
            self.say("No disk can be installed to.");
        } else {
            self.say("Disks (name, size, model, serial):");
            for d in &survey.offered {
                self.say(&format!("  {d}"));
            }
        }
        for (name, why) in &survey.excluded {
            if !name.starts_with("loop") {
                self.say(&format!("  (not offered: {name}, {why})"));
            }
        }
        self.say("");
    }
}

fn hostname(args: &confirm::KernelArgs, ui: &mut Ui) -> String {
    match args.hostname.as_deref() {
        Some(h) if confirm::valid_hostname(h) => h.to_owned(),
        Some(h) => {
            ui.say(&format!(
                "blockhost.hostname={h} is not a valid hostname (lowercase letters, digits, '-'); using blockhost"
            ));
            "blockhost".into()
        }
        None => "blockhost".into(),
    }
}

fn do_install(
    disk: &Disk,
    opts: &Options,
    args: &confirm::KernelArgs,
    ui: &mut Ui,
) -> Result<(), Error> {
    let plan = Plan {
        disk,
        image: opts
            .image
            .clone()
            .unwrap_or_else(|| PathBuf::from(&opts.medium).join("blockhost/root.squashfs")),
        hostname: hostname(args, ui),
        consoles: args.consoles.clone(),
        log: LOG.into(),
    };
    ui.say(&format!("Installing BlockHost to {} ({disk})", disk.path));
    let mut out = io::stdout();
    let mut progress = Progress::new(&mut out, &plan.log, install::STEPS);
    install::install(&plan, &mut progress).map_err(Error::Install)?;
    progress.line("BlockHost is installed. Remove the installer medium; rebooting in 5 s.");
    sleep(Duration::from_secs(5));
    let _ = Command::new("systemctl").arg("reboot").status();
    // Stay here until the reboot takes the process down.
    loop {
        sleep(Duration::from_secs(60));
    }
}

fn same_disk(a: &Disk, survey: &Survey) -> bool {
    survey.offered.iter().any(|b| b == a)
}

fn run(opts: &Options) -> Result<(), Error> {
    let mut ui = Ui { out: io::stdout() };
    // Disks may still be appearing right after boot.
    let _ = tool("udevadm", &["settle", "--timeout=30"]);
    let args = confirm::kernel_args(&fs::read_to_string(&opts.cmdline).unwrap_or_default());

    if let Some((name, serial)) = &args.unattended {
        let survey = survey(&opts.medium)?;
        ui.show(&survey);
        match confirm::unattended_disk(name, serial, &survey.offered) {
            Ok(disk) => match try_lock()? {
                Some(_lock) => {
                    ui.say(&format!(
                        "Unattended install (blockhost.unattended-erase={name}:{serial})"
                    ));
                    return do_install(disk, opts, &args, &mut ui);
                }
                None => ui.say("The unattended install runs on another console."),
            },
            Err(why) => ui.say(&format!("Unattended install refused: {why}.")),
        }
    }

    let stdin = io::stdin();
    loop {
        let shown = survey(&opts.medium)?;
        ui.show(&shown);
        if shown.offered.is_empty() {
            ui.say("Attach a disk, then press Enter to look again.");
        } else {
            ui.say(&format!(
                "To erase a disk and install BlockHost on it, type {ERASE_WORD} and its name, e.g.:"
            ));
            ui.say(&format!("  {ERASE_WORD} {}", shown.offered[0].name));
            ui.say("Anything else erases nothing.");
        }
        let _ = write!(ui.out, "> ");
        let _ = ui.out.flush();
        let mut line = String::new();
        if stdin.lock().read_line(&mut line).map_err(Error::Console)? == 0 {
            // The console hung up; systemd starts a fresh prompt.
            return Ok(());
        }
        let disk = match confirm::parse_answer(&line, &shown.offered) {
            Answer::Refused(why) => {
                ui.say(&format!("{why}. No disk was touched."));
                continue;
            }
            Answer::Erase(disk) => disk.clone(),
        };
        // The answer named what was on screen; make sure that is still what is
        // attached (a disk swapped meanwhile must not inherit the consent).
        if !same_disk(&disk, &survey(&opts.medium)?) {
            ui.say("The disks changed since they were listed. No disk was touched.");
            continue;
        }
        let Some(_lock) = try_lock()? else {
            ui.say("An install is already running on another console. No disk was touched.");
            continue;
        };
        if let Err(e) = do_install(&disk, opts, &args, &mut ui) {
            ui.say(&format!("ERROR: {}", chain(&e)));
            ui.say(&format!(
                "{} may be partly written; no other disk was touched. The log is {LOG}.",
                disk.path
            ));
        }
    }
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

fn main() -> ExitCode {
    let opts = match options() {
        Ok(o) => o,
        Err(msg) => {
            eprintln!("{msg}");
            return ExitCode::from(2);
        }
    };
    match run(&opts) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("blockhost-installer: {}", chain(&e));
            // Keep the message on screen before systemd restarts the prompt.
            sleep(Duration::from_secs(10));
            ExitCode::FAILURE
        }
    }
}
