//! Manual pages generated from the clap definitions (clap_mangen), for the Debian
//! package (feature `man`; used by both `bhctl` and `blockhostd`): one page for the program and one per subcommand (`bhctl-get.1`, …),
//! so `man bhctl-template-install` works like git's pages do.

use std::path::{Path, PathBuf};

/// Writes `<name>.<section>` and a page per (nested) visible subcommand into `dir`;
/// returns the files written.
pub fn write_all(cmd: clap::Command, dir: &Path, section: &str) -> std::io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let mut cmd = cmd;
    cmd.build();
    let mut written = vec![];
    write_one(&cmd, cmd.get_name().to_owned(), dir, section, &mut written)?;
    Ok(written)
}

fn write_one(
    cmd: &clap::Command,
    name: String,
    dir: &Path,
    section: &str,
    written: &mut Vec<PathBuf>,
) -> std::io::Result<()> {
    let page = cmd.clone().name(name.clone());
    let path = dir.join(format!("{name}.{section}"));
    let mut buf = Vec::new();
    clap_mangen::Man::new(page)
        .section(section)
        .manual("BlockHost")
        .render(&mut buf)?;
    std::fs::write(&path, buf)?;
    written.push(path);
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        if sub.get_name() == "help" {
            continue;
        }
        write_one(
            sub,
            format!("{name}-{}", sub.get_name()),
            dir,
            section,
            written,
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_page_per_command() {
        let d = tempfile::tempdir().unwrap();
        let cmd = clap::Command::new("bhctl")
            .subcommand(clap::Command::new("get"))
            .subcommand(clap::Command::new("template").subcommand(clap::Command::new("install")))
            .subcommand(clap::Command::new("generate-man").hide(true));
        let files = write_all(cmd, d.path(), "1").unwrap();
        let names: Vec<String> = files
            .iter()
            .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        for want in ["bhctl.1", "bhctl-get.1", "bhctl-template-install.1"] {
            assert!(names.iter().any(|n| n == want), "{want} not in {names:?}");
        }
        assert!(!names.iter().any(|n| n.contains("generate-man")));
        let page = std::fs::read_to_string(d.path().join("bhctl-get.1")).unwrap();
        assert!(page.starts_with(".ie") || page.contains(".TH"), "{page}");
    }
}
