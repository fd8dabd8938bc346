//! How the client trusts the PVE server: system roots, a pinned certificate fingerprint, or
//! (only when explicitly configured) nothing at all.
//!
//! PVE ships a self-signed certificate per node, so most installations cannot use a CA. Pinning
//! the SHA-256 of the server's certificate (the fingerprint PVE's UI and `pvenode cert info`
//! show) gives the same protection as a CA for a single known server, without trusting anything
//! else. The pinned and insecure modes still verify the handshake signature against the
//! certificate's key, so a pinned certificate proves the server holds its private key.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, OtherError, SignatureScheme};
use sha2::{Digest, Sha256};

use crate::error::Error;

/// SHA-256 fingerprint of a DER certificate.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint([u8; 32]);

impl Fingerprint {
    /// The fingerprint of a DER-encoded certificate.
    pub fn of_der(der: &[u8]) -> Self {
        Fingerprint(Sha256::digest(der).into())
    }
    /// The raw digest.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl FromStr for Fingerprint {
    type Err = Error;
    /// Accepts PVE's `AB:CD:...` form, or 64 hex digits; case-insensitive.
    fn from_str(s: &str) -> Result<Self, Error> {
        let compact: String = s.trim().chars().filter(|c| *c != ':').collect();
        let bytes = hex::decode(&compact)
            .map_err(|_| Error::Config(format!("fingerprint {s:?} is not hex")))?;
        let arr: [u8; 32] = bytes
            .try_into()
            .map_err(|_| Error::Config(format!("fingerprint {s:?} is not 32 bytes (SHA-256)")))?;
        Ok(Fingerprint(arr))
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(":")?;
            }
            write!(f, "{b:02X}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

/// How to verify the server's certificate.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum TlsMode {
    /// The operating system's trust store (for PVE behind a CA-issued certificate).
    #[default]
    SystemRoots,
    /// Accept exactly the certificate with this SHA-256 fingerprint, whatever its name or issuer.
    Pinned(Fingerprint),
    /// Accept any certificate. Only for throwaway labs; logged as a warning on every client build.
    Insecure,
}

/// The certificate did not match the pinned fingerprint.
#[derive(Debug, thiserror::Error)]
#[error("certificate fingerprint {got} does not match the pinned {want}")]
struct FingerprintMismatch {
    got: Fingerprint,
    want: Fingerprint,
}

/// Accepts one certificate by fingerprint (`pinned: Some`) or any (`None`); always checks the
/// handshake signature with the provider's algorithms.
#[derive(Debug)]
struct FingerprintVerifier {
    pinned: Option<Fingerprint>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for FingerprintVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(want) = self.pinned else {
            return Ok(ServerCertVerified::assertion());
        };
        let got = Fingerprint::of_der(end_entity.as_ref());
        // A fingerprint is public; no constant-time comparison needed.
        if got == want {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(CertificateError::Other(
                OtherError(Arc::new(FingerprintMismatch { got, want })),
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Build the rustls configuration for a mode.
pub(crate) fn client_config(mode: &TlsMode) -> Result<rustls::ClientConfig, Error> {
    // An explicit provider: the process may not have installed a default one, and both
    // ring and aws-lc could be compiled in by other crates.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Config(format!("TLS protocol versions: {e}")))?;
    let config = match mode {
        TlsMode::SystemRoots => {
            let loaded = rustls_native_certs::load_native_certs();
            for e in &loaded.errors {
                tracing::warn!(error = %e, "could not load some system trust roots");
            }
            let mut roots = rustls::RootCertStore::empty();
            let (added, _ignored) = roots.add_parsable_certificates(loaded.certs);
            if added == 0 {
                return Err(Error::Config(
                    "no system trust roots found; pin the PVE certificate fingerprint instead"
                        .into(),
                ));
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        TlsMode::Pinned(fp) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(FingerprintVerifier {
                pinned: Some(*fp),
                provider,
            }))
            .with_no_client_auth(),
        TlsMode::Insecure => {
            tracing::warn!(
                "TLS certificate verification is DISABLED for the Proxmox VE API: \
                 anyone on the path can read the API credentials; pin the certificate fingerprint instead"
            );
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(FingerprintVerifier {
                    pinned: None,
                    provider,
                }))
                .with_no_client_auth()
        }
    };
    Ok(config)
}

/// True if `err` (or anything in its source chain) is a refused server certificate.
pub(crate) fn is_certificate_error(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return matches!(tls, rustls::Error::InvalidCertificate(_));
        }
        // io::Error hides its payload from source(): look inside explicitly.
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && let Some(inner) = io.get_ref()
            && is_certificate_error(inner)
        {
            return true;
        }
        cur = e.source();
    }
    false
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn fingerprint_forms() {
        let colon = "CC:A1:AD:BA:3A:9D:93:1B:1C:8D:AD:70:24:43:4D:EF:77:3D:54:38:EE:30:67:BB:AD:D3:0F:5E:11:0C:F8:CE";
        let a: Fingerprint = colon.parse().unwrap();
        let b: Fingerprint = colon.replace(':', "").to_lowercase().parse().unwrap();
        assert_eq!(a, b);
        assert_eq!(a.to_string(), colon);
        assert!("AB:CD".parse::<Fingerprint>().is_err());
        assert!("zz".repeat(32).parse::<Fingerprint>().is_err());
    }

    #[test]
    fn configs_build() {
        let fp = Fingerprint::of_der(b"x");
        assert!(client_config(&TlsMode::Pinned(fp)).is_ok());
        assert!(client_config(&TlsMode::Insecure).is_ok());
    }

    #[test]
    fn pinned_verifier_refuses_other_certificates() {
        let v = FingerprintVerifier {
            pinned: Some(Fingerprint::of_der(b"right")),
            provider: Arc::new(rustls::crypto::ring::default_provider()),
        };
        let name = ServerName::try_from("pve.example").unwrap();
        let ok = v.verify_server_cert(
            &CertificateDer::from(b"right".to_vec()),
            &[],
            &name,
            &[],
            UnixTime::now(),
        );
        assert!(ok.is_ok());
        let err = v
            .verify_server_cert(
                &CertificateDer::from(b"wrong".to_vec()),
                &[],
                &name,
                &[],
                UnixTime::now(),
            )
            .unwrap_err();
        assert!(is_certificate_error(&err));
        assert!(
            format!("{err:?}").contains("FingerprintMismatch"),
            "{err:?}"
        );
    }
}
