//! The configuration loader shared by `blockhostd` (start-up) and `bhctl` (commands
//! that read the daemon's file: `chain`, `template install`), so both read the same
//! file with the same rules and report problems the same way.

use std::path::{Path, PathBuf};

use blockhost_crd::DaemonConfig;

use crate::yaml::{self, YamlError};

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read the configuration file {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a valid configuration.
    #[error("invalid configuration; fix the file and start again")]
    Invalid(#[source] YamlError),
}

/// Loads the configuration. A missing file at the default path means local
/// defaults; a missing file that was asked for explicitly is an error.
pub fn load(path: &Path, explicit: bool) -> Result<DaemonConfig, ConfigError> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let file = path.display().to_string();
            let cfg: DaemonConfig =
                yaml::from_single(&file, &text).map_err(ConfigError::Invalid)?;
            cfg.validate().map_err(|message| {
                ConfigError::Invalid(YamlError {
                    file,
                    line: None,
                    column: None,
                    path: None,
                    message,
                })
            })?;
            Ok(cfg)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => {
            tracing::info!(path = %path.display(), "no configuration file; running on local defaults (nothing is driven)");
            Ok(DaemonConfig::default())
        }
        Err(source) => Err(ConfigError::Read {
            path: path.to_owned(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_default_file_means_defaults_but_explicit_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("absent.yaml");
        assert!(load(&path, false).is_ok());
        let err = load(&path, true).expect_err("explicit missing file");
        assert!(matches!(err, ConfigError::Read { .. }), "{err:?}");
    }

    #[test]
    fn invalid_file_names_the_place_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("bad.yaml");
        std::fs::write(&path, "store: [1, 2\n").expect("write");
        let err = load(&path, true).expect_err("invalid");
        let ConfigError::Invalid(inner) = &err else {
            panic!("expected Invalid, got {err:?}");
        };
        assert_eq!(inner.file, path.display().to_string());
        // The outer message does not repeat the inner one.
        assert!(!err.to_string().contains(&inner.message));
    }
}
