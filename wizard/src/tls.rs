//! The wizard's HTTPS certificate: generated on the host at first start (no
//! network, no CA), kept in the state directory (key 0600), and shown on the
//! console by its SHA-256 fingerprint so the operator can compare it with what
//! the browser shows before trusting the page.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::fsutil::{self, FsError};

/// Why the certificate could not be made or loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or written.
    #[error(transparent)]
    Fs(#[from] FsError),
    /// Generation failed.
    #[error("cannot generate the wizard's certificate")]
    Generate(#[source] rcgen::Error),
}

/// The certificate files and fingerprint.
#[derive(Debug, Clone)]
pub struct Certificate {
    /// PEM certificate.
    pub cert_pem: PathBuf,
    /// PEM private key (0600).
    pub key_pem: PathBuf,
    /// SHA-256 of the DER certificate, `AB:CD:…`, as browsers show it.
    pub fingerprint: String,
}

/// `AB:CD:…` of SHA-256 over `der`.
pub fn fingerprint(der: &[u8]) -> String {
    Sha256::digest(der)
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Loads the certificate in `dir`, or generates one for `names` (host names and
/// addresses) when there is none.
pub fn ensure(dir: &Path, names: &[String]) -> Result<Certificate, TlsError> {
    fsutil::ensure_dir(dir, 0o700)?;
    let cert_pem = dir.join("cert.pem");
    let key_pem = dir.join("key.pem");
    let der_path = dir.join("cert.der");
    if let (Ok(der), true, true) = (
        std::fs::read(&der_path),
        cert_pem.exists(),
        key_pem.exists(),
    ) {
        return Ok(Certificate {
            fingerprint: fingerprint(&der),
            cert_pem,
            key_pem,
        });
    }
    let made = rcgen::generate_simple_self_signed(names.to_vec()).map_err(TlsError::Generate)?;
    // Key first: a certificate without its key would be loaded next time and fail.
    fsutil::write_atomic(&key_pem, made.signing_key.serialize_pem().as_bytes(), 0o600)?;
    fsutil::write_atomic(&cert_pem, made.cert.pem().as_bytes(), 0o644)?;
    fsutil::write_atomic(&der_path, made.cert.der(), 0o644)?;
    tracing::info!(names = ?names, "generated the wizard's certificate");
    Ok(Certificate {
        fingerprint: fingerprint(made.cert.der()),
        cert_pem,
        key_pem,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn generated_once_and_key_private() {
        let dir = tempfile::tempdir().unwrap();
        let a = ensure(dir.path(), &["127.0.0.1".into(), "blockhost".into()]).unwrap();
        assert_eq!(fsutil::mode_of(&a.key_pem).unwrap(), 0o600);
        assert_eq!(a.fingerprint.len(), 32 * 3 - 1);
        let b = ensure(dir.path(), &["other".into()]).unwrap();
        assert_eq!(a.fingerprint, b.fingerprint, "kept across restarts");
    }
}
