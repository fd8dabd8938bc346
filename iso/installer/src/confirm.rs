//! What counts as consent to erase a disk.
//!
//! Interactive: the operator types `ERASE` and the name of one offered disk (or
//! its serial). Anything else — an empty line, `yes`, a name that is not
//! offered, a serial two disks share — erases nothing. There is no default and
//! no timeout: the prompt waits for as long as it takes.
//!
//! Unattended (tests, automation): only with the kernel argument
//! `blockhost.unattended-erase=NAME:SERIAL`, and only when exactly one offered
//! disk has both that name and that (non-empty) serial. A serial belongs to one
//! physical disk, so a stick prepared for one machine erases nothing when booted
//! in another one.

use crate::disks::Disk;

/// The word the operator types before the disk's name.
pub const ERASE_WORD: &str = "ERASE";

/// The outcome of one typed answer.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer<'a> {
    Erase(&'a Disk),
    /// Nothing is erased; the text says why, for the operator.
    Refused(String),
}

/// Reads one typed line against the offered disks.
pub fn parse_answer<'a>(line: &str, offered: &'a [Disk]) -> Answer<'a> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let [word, target] = words.as_slice() else {
        return Answer::Refused(format!(
            "Not confirmed: type {ERASE_WORD}, a space and the disk's name (e.g. {ERASE_WORD} {})",
            offered.first().map_or("sda", |d| d.name.as_str())
        ));
    };
    if *word != ERASE_WORD {
        return Answer::Refused(format!(
            "Not confirmed: the answer must start with {ERASE_WORD} in capitals"
        ));
    }
    let target = target.strip_prefix("/dev/").unwrap_or(target);
    let matching: Vec<&Disk> = offered
        .iter()
        .filter(|d| d.name == target || (!d.serial.is_empty() && d.serial == target))
        .collect();
    match matching.as_slice() {
        [disk] => Answer::Erase(disk),
        [] => Answer::Refused(format!(
            "Not confirmed: no offered disk is named {target} or has that serial"
        )),
        _ => Answer::Refused(format!(
            "Not confirmed: several disks match {target}; type the disk's name instead"
        )),
    }
}

/// The installer's kernel arguments.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct KernelArgs {
    /// `blockhost.unattended-erase=NAME:SERIAL`.
    pub unattended: Option<(String, String)>,
    /// `blockhost.hostname=NAME`, else `blockhost`.
    pub hostname: Option<String>,
    /// The `console=` arguments, carried over to the installed system so it
    /// talks on the same consoles as the installer did.
    pub consoles: Vec<String>,
}

/// Parses `/proc/cmdline`.
pub fn kernel_args(cmdline: &str) -> KernelArgs {
    let mut args = KernelArgs::default();
    for arg in cmdline.split_whitespace() {
        if let Some(v) = arg.strip_prefix("blockhost.unattended-erase=") {
            args.unattended = v.split_once(':').map(|(n, s)| (n.to_owned(), s.to_owned()));
        } else if let Some(v) = arg.strip_prefix("blockhost.hostname=") {
            args.hostname = Some(v.to_owned());
        } else if arg.starts_with("console=") {
            args.consoles.push(arg.to_owned());
        }
    }
    args
}

/// The disk the unattended argument names, or why none is erased.
pub fn unattended_disk<'a>(
    name: &str,
    serial: &str,
    offered: &'a [Disk],
) -> Result<&'a Disk, String> {
    if name.is_empty() || serial.is_empty() {
        return Err(
            "blockhost.unattended-erase needs NAME:SERIAL, both non-empty (e.g. vda:BH0001)"
                .to_owned(),
        );
    }
    let matching: Vec<&Disk> = offered
        .iter()
        .filter(|d| d.name == name && d.serial == serial)
        .collect();
    match matching.as_slice() {
        [disk] => Ok(disk),
        [] => Err(format!(
            "no offered disk is named {name} with serial {serial}; nothing is erased unattended"
        )),
        _ => Err(format!(
            "several disks match {name}:{serial}; nothing is erased unattended"
        )),
    }
}

/// A hostname the installed system can use: a single DNS label.
pub fn valid_hostname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && !name.starts_with('-')
        && !name.ends_with('-')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk(name: &str, serial: &str) -> Disk {
        Disk {
            name: name.into(),
            path: format!("/dev/{name}"),
            model: String::new(),
            serial: serial.into(),
            size: 1 << 34,
            transport: String::new(),
        }
    }

    #[test]
    fn only_erase_and_an_offered_disk_confirm() {
        let disks = [disk("vda", "BH1"), disk("sda", "WD-123")];
        assert_eq!(parse_answer("ERASE vda", &disks), Answer::Erase(&disks[0]));
        assert_eq!(
            parse_answer("  ERASE   /dev/sda \n", &disks),
            Answer::Erase(&disks[1])
        );
        assert_eq!(
            parse_answer("ERASE WD-123", &disks),
            Answer::Erase(&disks[1])
        );
        for wrong in [
            "",
            "\n",
            "yes",
            "y",
            "ERASE",
            "erase vda",
            "Erase vda",
            "ERASE vdb",
            "ERASE vda sda",
            "ERASE sr0",
            "vda",
            "ERASE bh1",
            "ERASE *",
        ] {
            assert!(
                matches!(parse_answer(wrong, &disks), Answer::Refused(_)),
                "{wrong:?} must not confirm"
            );
        }
    }

    #[test]
    fn a_shared_serial_or_no_disk_confirms_nothing() {
        let disks = [disk("sda", "SAME"), disk("sdb", "SAME")];
        assert!(matches!(
            parse_answer("ERASE SAME", &disks),
            Answer::Refused(_)
        ));
        assert_eq!(parse_answer("ERASE sdb", &disks), Answer::Erase(&disks[1]));
        assert!(matches!(parse_answer("ERASE sda", &[]), Answer::Refused(_)));
        // An empty serial never matches an empty word.
        let disks = [disk("vda", "")];
        assert!(matches!(parse_answer("ERASE ", &disks), Answer::Refused(_)));
    }

    #[test]
    fn kernel_arguments() {
        let a = kernel_args(
            "BOOT_IMAGE=/live/vmlinuz boot=live console=tty0 console=ttyS0,115200n8 blockhost.unattended-erase=vda:BH1 blockhost.hostname=node1",
        );
        assert_eq!(a.unattended, Some(("vda".into(), "BH1".into())));
        assert_eq!(a.hostname.as_deref(), Some("node1"));
        assert_eq!(a.consoles, ["console=tty0", "console=ttyS0,115200n8"]);
        assert_eq!(kernel_args("quiet").unattended, None);
        assert_eq!(
            kernel_args("blockhost.unattended-erase=vda").unattended,
            None
        );
    }

    #[test]
    fn unattended_needs_name_and_serial_of_one_disk() {
        let disks = [disk("vda", "BH1"), disk("vdb", "")];
        assert_eq!(unattended_disk("vda", "BH1", &disks), Ok(&disks[0]));
        assert!(unattended_disk("vda", "OTHER", &disks).is_err());
        assert!(unattended_disk("vdb", "", &disks).is_err());
        assert!(unattended_disk("", "BH1", &disks).is_err());
        assert!(unattended_disk("sda", "BH1", &disks).is_err());
    }

    #[test]
    fn hostnames() {
        assert!(valid_hostname("blockhost"));
        assert!(valid_hostname("node-1"));
        for bad in ["", "-a", "a-", "Node", "a.b", "a b", &"x".repeat(64)] {
            assert!(!valid_hostname(bad), "{bad:?}");
        }
    }
}
