//! The text the host's console shows while it is not set up: where to point a
//! browser, the one-time code, and the certificate's fingerprint to compare with
//! the browser's. Written to `/etc/issue.d/` (agetty shows every `*.issue` file
//! there) and followed by a getty refresh so a waiting login prompt redraws.
//!
//! The file is 0600: agetty reads it as root, and no local user needs the code.

use std::path::Path;

use crate::fsutil::{self, FsError};
use crate::settings::split_command;

/// The console text.
pub fn text(host: &str, urls: &[String], code: &str, fingerprint: &str) -> String {
    let mut s = String::new();
    s.push_str(&format!("\nBlockHost setup for {host}\n\n"));
    s.push_str("Open in a browser:\n");
    for u in urls {
        s.push_str(&format!("    {u}\n"));
    }
    s.push_str(&format!("\nOne-time code:  {code}\n"));
    s.push_str("\nCertificate SHA-256 fingerprint (check that your browser shows the same):\n");
    // Two lines of 16 bytes fit an 80-column console.
    let parts: Vec<&str> = fingerprint.split(':').collect();
    for chunk in parts.chunks(16) {
        s.push_str(&format!("    {}\n", chunk.join(":")));
    }
    s.push_str("\nA new code: blockhost-wizard new-code\n\n");
    // agetty treats backslashes as escapes; none of the above has one, but a host
    // name could.
    s.replace('\\', "\\\\")
}

/// Writes the console text and refreshes the gettys.
pub fn show(file: &Path, text: &str, refresh: &str) -> Result<(), FsError> {
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir).map_err(|source| FsError {
            what: "create directory",
            path: dir.to_owned(),
            source,
        })?;
    }
    fsutil::write_atomic(file, text.as_bytes(), 0o600)?;
    run_refresh(refresh);
    Ok(())
}

/// Removes the console text (setup done) and refreshes the gettys.
pub fn clear(file: &Path, refresh: &str) -> Result<(), FsError> {
    fsutil::remove(file)?;
    run_refresh(refresh);
    Ok(())
}

fn run_refresh(refresh: &str) {
    let Some((program, args)) = split_command(refresh) else {
        return;
    };
    match std::process::Command::new(&program)
        .args(&args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
    {
        Ok(s) if s.success() => {}
        Ok(s) => {
            tracing::warn!(command = %refresh, status = %s, "console refresh failed; the console shows the new text at the next login prompt")
        }
        Err(e) => {
            tracing::warn!(command = %refresh, error = %e, "console refresh could not run; the console shows the new text at the next login prompt")
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn text_has_url_code_and_fingerprint() {
        let fp = crate::tls::fingerprint(b"x");
        let t = text("pve1", &["https://192.0.2.10/".into()], "ABC234", &fp);
        assert!(t.contains("https://192.0.2.10/") && t.contains("ABC234"));
        assert!(t.lines().all(|l| l.len() <= 80), "{t}");
        let joined: String = t
            .lines()
            .filter(|l| l.starts_with("    ") && l.contains(':') && !l.contains("http"))
            .map(str::trim)
            .collect::<Vec<_>>()
            .join(":");
        assert_eq!(joined, fp);
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("issue.d/blockhost-wizard.issue");
        show(&f, &t, "").unwrap();
        assert_eq!(fsutil::mode_of(&f).unwrap(), 0o600);
        clear(&f, "").unwrap();
        assert!(!f.exists());
    }
}
