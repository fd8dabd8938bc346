//! The admin's wallet login: an EIP-4361 (Sign-In with Ethereum) message naming
//! this host, a single-use nonce and the issue time, signed in the browser's
//! wallet with `personal_sign`; the server recovers the signer (EIP-191) and that
//! recovered address — never an address the browser claims — becomes the admin.
//!
//! The message type is the wallet login's (`pam_blockhost::siwe`) and recovery is
//! `blockhost_crd::eip191`, shared with the PAM module: one set of rules.

use std::str::FromStr;

use blockhost_crd::WalletAddress;
use blockhost_crd::eip191::{self, Eip191Error, Signature};
use chrono::{DateTime, Duration, Timelike, Utc};
use pam_blockhost::siwe::SiweMessage;
use rand::Rng;

use crate::session::PendingLogin;

/// How long a sign-in message may wait for its signature.
pub const CHALLENGE_MINUTES: i64 = 10;

/// Why a sign-in was refused.
#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    /// No message was asked for (or it was used).
    #[error("no sign-in message is waiting; ask for a new one")]
    NoChallenge,
    /// Too old.
    #[error("the sign-in message expired; sign a new one")]
    Expired,
    /// Not a usable signature.
    #[error("the signature is not valid")]
    BadSignature(#[source] Eip191Error),
    /// Another wallet signed.
    #[error(
        "the message was signed by {recovered}, not by {expected}; sign with the wallet you connected"
    )]
    OtherWallet {
        /// Named in the message.
        expected: WalletAddress,
        /// Recovered from the signature.
        recovered: WalletAddress,
    },
    /// The domain is not a plain authority.
    #[error("the page's address is not a host name or address")]
    BadDomain,
}

fn nonce() -> String {
    const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rngs::OsRng;
    (0..32)
        .map(|_| char::from(ALNUM[rng.gen_range(0..ALNUM.len())]))
        .collect()
}

/// Whether `domain` is an RFC 3986 authority we accept (host, IPv4, `[IPv6]`, port).
fn plain_authority(domain: &str) -> bool {
    !domain.is_empty()
        && domain.len() <= 255
        && domain
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
}

/// The message for `address` to sign, on the page at `domain` (the browser's
/// `Host`), for the host `host` and chain `chain_id` (the wallet's).
pub fn challenge(
    domain: &str,
    host: &str,
    address: WalletAddress,
    chain_id: u64,
    now: DateTime<Utc>,
) -> Result<PendingLogin, LoginError> {
    if !plain_authority(domain) {
        return Err(LoginError::BadDomain);
    }
    let host: String = host.chars().filter(|c| !c.is_control()).take(64).collect();
    // SIWE times are written in whole seconds; keep the stored expiry identical.
    let issued_at = now.with_nanosecond(0).unwrap_or(now);
    let msg = SiweMessage {
        domain: domain.to_owned(),
        address,
        statement: format!(
            "Become the administrator of BlockHost host {host}: this wallet receives its admin NFT and signs its admin commands."
        ),
        uri: format!("https://{domain}/"),
        chain_id,
        nonce: nonce(),
        issued_at,
        expiration_time: issued_at + Duration::minutes(CHALLENGE_MINUTES),
    };
    Ok(PendingLogin {
        text: msg.to_text(),
        address,
        expires_at: msg.expiration_time,
    })
}

/// Checks a signature of the pending message; returns the recovered admin.
pub fn verify(
    pending: &PendingLogin,
    signature: &str,
    now: DateTime<Utc>,
) -> Result<WalletAddress, LoginError> {
    if now >= pending.expires_at {
        return Err(LoginError::Expired);
    }
    let sig = Signature::from_str(signature.trim()).map_err(LoginError::BadSignature)?;
    let recovered =
        eip191::recover(pending.text.as_bytes(), &sig).map_err(LoginError::BadSignature)?;
    if recovered != pending.address {
        return Err(LoginError::OtherWallet {
            expected: pending.address,
            recovered,
        });
    }
    Ok(recovered)
}

/// Checks the admin's signature of the public secret (the key of NFT #0's
/// payload); returns it parsed.
pub fn verify_access(
    admin: WalletAddress,
    public_secret: &str,
    signature: &str,
) -> Result<Signature, LoginError> {
    let sig = Signature::from_str(signature.trim()).map_err(LoginError::BadSignature)?;
    let recovered =
        eip191::recover(public_secret.as_bytes(), &sig).map_err(LoginError::BadSignature)?;
    if recovered != admin {
        return Err(LoginError::OtherWallet {
            expected: admin,
            recovered,
        });
    }
    Ok(sig)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use k256::ecdsa::SigningKey;

    // anvil's dev accounts 0 and 1 (well-known test keys).
    const KEY0: &str = "ac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80";
    const KEY1: &str = "59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d";

    fn key(h: &str) -> SigningKey {
        SigningKey::from_slice(&hex::decode(h).unwrap()).unwrap()
    }

    #[test]
    fn the_signer_is_recovered_and_others_refused() {
        let k0 = key(KEY0);
        let a0 = eip191::address_of(k0.verifying_key());
        let now = Utc::now();
        let p = challenge("127.0.0.1:8443", "pve1", a0, 31337, now).unwrap();
        let parsed = SiweMessage::parse(&p.text).unwrap();
        assert_eq!(parsed.address, a0);
        assert_eq!(parsed.domain, "127.0.0.1:8443");
        let sig = eip191::sign(&k0, p.text.as_bytes()).unwrap();
        assert_eq!(verify(&p, &sig.to_hex(), now).unwrap(), a0);

        // Another wallet's signature of the same text.
        let other = eip191::sign(&key(KEY1), p.text.as_bytes()).unwrap();
        assert!(matches!(
            verify(&p, &other.to_hex(), now),
            Err(LoginError::OtherWallet { .. })
        ));
        // A forged signature: valid shape, altered bytes.
        let mut forged = *sig.as_bytes();
        forged[10] ^= 0x55;
        let forged = Signature::from_bytes(forged).to_hex();
        assert!(verify(&p, &forged, now).is_err());
        // The right signature of another message (a replayed older challenge).
        let q = challenge("127.0.0.1:8443", "pve1", a0, 31337, now).unwrap();
        assert_ne!(p.text, q.text, "each challenge has its own nonce");
        let replay = eip191::sign(&k0, q.text.as_bytes()).unwrap();
        assert!(verify(&p, &replay.to_hex(), now).is_err());
        // Too late.
        let late = now + Duration::minutes(CHALLENGE_MINUTES);
        assert!(matches!(
            verify(&p, &sig.to_hex(), late),
            Err(LoginError::Expired)
        ));
        assert!(challenge("evil.example/path", "pve1", a0, 1, now).is_err());
    }

    #[test]
    fn access_signature_must_be_the_admins() {
        let k0 = key(KEY0);
        let a0 = eip191::address_of(k0.verifying_key());
        let sig = eip191::sign(&k0, b"blockhost-access").unwrap();
        assert!(verify_access(a0, "blockhost-access", &sig.to_hex()).is_ok());
        let other = eip191::sign(&key(KEY1), b"blockhost-access").unwrap();
        assert!(verify_access(a0, "blockhost-access", &other.to_hex()).is_err());
    }
}
