//! The server's secret key file: read by the daemon (decrypting purchases,
//! signing mints) and by `bhctl chain …` (deploys, plan changes), with the
//! same permission rule for both.

use std::path::{Path, PathBuf};

use k256::SecretKey;

/// Why the server key cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The server key file cannot be read.
    #[error("cannot read the server key file {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The key file is readable by others.
    #[error("the server key file {} has mode {mode:o}; make it readable by its owner only (chmod 600)", path.display())]
    Permissions {
        /// The file.
        path: PathBuf,
        /// Its mode bits.
        mode: u32,
    },
    /// The key file does not hold a secp256k1 key in hex.
    #[error("the server key file {} does not hold a secp256k1 secret key as 64 hex digits", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
    },
}

/// Reads the server's secret key: hex (with or without `0x`, surrounding
/// whitespace allowed) in a file no one but its owner may read. The key is never
/// logged and error messages never quote the file's content.
pub fn load_server_key(path: &Path) -> Result<SecretKey, KeyError> {
    use std::os::unix::fs::PermissionsExt;
    let read = |source| KeyError::Read {
        path: path.to_owned(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(read)?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(KeyError::Permissions {
            path: path.to_owned(),
            mode,
        });
    }
    let text = std::fs::read_to_string(path).map_err(read)?;
    let invalid = || KeyError::Invalid {
        path: path.to_owned(),
    };
    let digits = text.trim();
    let digits = digits.strip_prefix("0x").unwrap_or(digits);
    let bytes = hex::decode(digits).map_err(|_| invalid())?;
    SecretKey::from_slice(&bytes).map_err(|_| invalid())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn write(dir: &Path, text: &str, mode: u32) -> PathBuf {
        let p = dir.join("server.key");
        std::fs::write(&p, text).expect("write");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).expect("chmod");
        p
    }

    #[test]
    fn reads_hex_with_or_without_prefix() {
        let d = tempfile::tempdir().expect("tempdir");
        let hex = "ac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80";
        assert!(load_server_key(&write(d.path(), &format!("0x{hex}\n"), 0o600)).is_ok());
        assert!(load_server_key(&write(d.path(), hex, 0o400)).is_ok());
    }

    #[test]
    fn refuses_open_modes_and_garbage_without_quoting_it() {
        let d = tempfile::tempdir().expect("tempdir");
        let hex = "ac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80";
        for mode in [0o644, 0o640, 0o604] {
            let e = load_server_key(&write(d.path(), hex, mode)).expect_err("mode");
            assert!(matches!(e, KeyError::Permissions { .. }), "{mode:o}: {e:?}");
        }
        let e = load_server_key(&d.path().join("missing")).expect_err("missing");
        assert!(matches!(e, KeyError::Read { .. }), "{e:?}");
        let e = load_server_key(&write(d.path(), "not-a-key-SECRET", 0o600)).expect_err("garbage");
        assert!(matches!(e, KeyError::Invalid { .. }));
        assert!(!e.to_string().contains("SECRET"));
    }
}
