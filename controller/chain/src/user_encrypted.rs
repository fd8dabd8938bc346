//! The `userEncrypted` argument of `buySubscription`.
//!
//! At purchase the buyer signs the operator's public secret (default text
//! `blockhost-access`) with `personal_sign`, and ECIES-encrypts the resulting
//! signature — as the text `0x` + 130 hex digits, 132 bytes — to the server's
//! public key (REFERENCE.md §2). The server decrypts it to learn the signature,
//! from which it derives the NFT payload key ([`crate::nft_payload`]).
//!
//! The plaintext is validated strictly: anything but exactly `0x` + 130 hex
//! digits with a plausible recovery byte is refused, so a malformed purchase is
//! reported instead of minting a credential nobody can open. Whether the
//! signature really is the subscriber's is a separate check the caller makes
//! with `blockhost_crd::eip191::verify` (that module owns the EIP-191 rules).

use blockhost_crd::eip191::{SIGNATURE_LEN, Signature};
use k256::{PublicKey, SecretKey};

use crate::ecies::{self, EciesError};

/// Length of the decrypted plaintext: `0x` + two hex digits per signature byte.
pub const PLAINTEXT_LEN: usize = 2 + 2 * SIGNATURE_LEN;

/// Why `userEncrypted` was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UserEncryptedError {
    /// Not an ECIES message for the server key (or damaged).
    #[error("userEncrypted does not decrypt with the server key")]
    Decrypt(#[source] EciesError),
    /// Decrypted, but not 132 bytes long.
    #[error(
        "decrypted userEncrypted is {len} bytes; expected {PLAINTEXT_LEN} (\"0x\" + 130 hex digits)"
    )]
    WrongLength {
        /// Length of the plaintext.
        len: usize,
    },
    /// Decrypted, but does not start with `0x`.
    #[error("decrypted userEncrypted does not start with \"0x\"")]
    MissingPrefix,
    /// Decrypted, but holds a character that is not a hex digit.
    #[error("decrypted userEncrypted has a non-hex character at offset {offset}")]
    NotHex {
        /// Byte offset in the plaintext.
        offset: usize,
    },
    /// The last byte (`v`) is not one a wallet produces.
    #[error("signature recovery byte v must be 0, 1, 27 or 28, got {0}")]
    BadRecoveryByte(u8),
}

/// Decrypts `userEncrypted` from a `SubscriptionCreated` event with the server
/// key and returns the buyer's signature.
pub fn decrypt_signature(
    server: &SecretKey,
    user_encrypted: &[u8],
) -> Result<Signature, UserEncryptedError> {
    let plaintext = ecies::decrypt(server, user_encrypted).map_err(UserEncryptedError::Decrypt)?;
    parse_plaintext(&plaintext)
}

/// Parses the decrypted text: exactly `0x` followed by 130 hex digits (either
/// case), `v` in {0, 1, 27, 28}.
pub fn parse_plaintext(plaintext: &[u8]) -> Result<Signature, UserEncryptedError> {
    if plaintext.len() != PLAINTEXT_LEN {
        return Err(UserEncryptedError::WrongLength {
            len: plaintext.len(),
        });
    }
    let digits = plaintext
        .strip_prefix(b"0x")
        .ok_or(UserEncryptedError::MissingPrefix)?;
    let mut bytes = [0u8; SIGNATURE_LEN];
    for (i, pair) in digits.chunks_exact(2).enumerate() {
        let hi = hex_value(pair[0]).ok_or(UserEncryptedError::NotHex { offset: 2 + 2 * i })?;
        let lo = hex_value(pair[1]).ok_or(UserEncryptedError::NotHex { offset: 3 + 2 * i })?;
        bytes[i] = hi << 4 | lo;
    }
    let v = bytes[SIGNATURE_LEN - 1];
    if !matches!(v, 0 | 1 | 27 | 28) {
        return Err(UserEncryptedError::BadRecoveryByte(v));
    }
    Ok(Signature::from_bytes(bytes))
}

/// What a buyer's page does: encrypts the signature's `0x…` text to the server
/// key. Used by tests, the end-to-end flow and `bhctl`.
pub fn encrypt_signature(server: &PublicKey, signature: &Signature) -> Result<Vec<u8>, EciesError> {
    ecies::encrypt(server, signature.to_hex().as_bytes())
}

fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use blockhost_crd::eip191;
    use k256::ecdsa::SigningKey;

    use super::*;

    /// anvil's dev account 0 key: a well-known test key, never a real secret.
    const ANVIL0: &str = "ac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80";
    /// anvil's dev account 1 key, standing in for the server here.
    const ANVIL1: &str = "59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d";

    fn server() -> SecretKey {
        SecretKey::from_slice(&hex::decode(ANVIL1).unwrap()).unwrap()
    }

    fn buyer_signature() -> Signature {
        let key = SigningKey::from_slice(&hex::decode(ANVIL0).unwrap()).unwrap();
        eip191::sign(&key, b"blockhost-access").unwrap()
    }

    #[test]
    fn round_trip() {
        let sig = buyer_signature();
        let msg = encrypt_signature(&server().public_key(), &sig).unwrap();
        assert_eq!(msg.len(), ecies::OVERHEAD + PLAINTEXT_LEN);
        assert_eq!(decrypt_signature(&server(), &msg).unwrap(), sig);
    }

    #[test]
    fn upper_case_hex_and_all_v_conventions() {
        let sig = buyer_signature();
        let upper = format!("0x{}", hex::encode_upper(sig.as_bytes()));
        assert_eq!(parse_plaintext(upper.as_bytes()).unwrap(), sig);
        for v in [0u8, 1, 27, 28] {
            let mut bytes = *sig.as_bytes();
            bytes[64] = v;
            let text = Signature::from_bytes(bytes).to_hex();
            assert_eq!(parse_plaintext(text.as_bytes()).unwrap().as_bytes()[64], v);
        }
    }

    #[test]
    fn strict_format() {
        let good = buyer_signature().to_hex();
        assert_eq!(good.len(), PLAINTEXT_LEN);

        let short = &good[..PLAINTEXT_LEN - 2];
        assert_eq!(
            parse_plaintext(short.as_bytes()),
            Err(UserEncryptedError::WrongLength { len: 130 })
        );
        let bare = &good[2..];
        assert_eq!(
            parse_plaintext(bare.as_bytes()),
            Err(UserEncryptedError::WrongLength { len: 130 })
        );
        let padded = format!("{good}\n");
        assert_eq!(
            parse_plaintext(padded.as_bytes()),
            Err(UserEncryptedError::WrongLength { len: 133 })
        );
        let raw_bytes = buyer_signature().as_bytes().to_vec();
        assert_eq!(
            parse_plaintext(&raw_bytes),
            Err(UserEncryptedError::WrongLength { len: 65 })
        );
        let no_prefix = format!("00{}", &good[2..]);
        assert_eq!(
            parse_plaintext(no_prefix.as_bytes()),
            Err(UserEncryptedError::MissingPrefix)
        );
        let capital_x = format!("0X{}", &good[2..]);
        assert_eq!(
            parse_plaintext(capital_x.as_bytes()),
            Err(UserEncryptedError::MissingPrefix)
        );
        let mut not_hex = good.clone().into_bytes();
        not_hex[57] = b'g';
        assert_eq!(
            parse_plaintext(&not_hex),
            Err(UserEncryptedError::NotHex { offset: 57 })
        );
        let mut bad_v = good.into_bytes();
        bad_v[130] = b'0';
        bad_v[131] = b'2';
        assert_eq!(
            parse_plaintext(&bad_v),
            Err(UserEncryptedError::BadRecoveryByte(2))
        );
        // Non-ASCII input is reported, not sliced through.
        let mut utf8 = vec![b'0', b'x'];
        utf8.extend_from_slice("é".repeat(65).as_bytes());
        assert_eq!(
            parse_plaintext(&utf8),
            Err(UserEncryptedError::NotHex { offset: 2 })
        );
    }

    #[test]
    fn undecryptable_input() {
        let server = server();
        assert!(matches!(
            decrypt_signature(&server, b""),
            Err(UserEncryptedError::Decrypt(EciesError::TooShort { len: 0 }))
        ));
        let other = SecretKey::from_slice(&hex::decode(ANVIL0).unwrap()).unwrap();
        let for_other = encrypt_signature(&other.public_key(), &buyer_signature()).unwrap();
        assert_eq!(
            decrypt_signature(&server, &for_other),
            Err(UserEncryptedError::Decrypt(EciesError::DecryptionFailed))
        );
        // Well-formed ECIES around the wrong plaintext.
        let wrong_text = ecies::encrypt(&server.public_key(), b"hello").unwrap();
        assert_eq!(
            decrypt_signature(&server, &wrong_text),
            Err(UserEncryptedError::WrongLength { len: 5 })
        );
    }

    #[test]
    fn error_messages_do_not_repeat_the_source() {
        let err = UserEncryptedError::Decrypt(EciesError::DecryptionFailed);
        assert_eq!(
            err.to_string(),
            "userEncrypted does not decrypt with the server key"
        );
        assert!(std::error::Error::source(&err).is_some());
    }
}
