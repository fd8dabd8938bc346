//! ECIES on secp256k1, byte-compatible with npm `eciesjs` 0.4 in its default
//! configuration — the library a signup page uses in the browser to encrypt to
//! the server key.
//!
//! Wire format: `ephemeral public key (65, uncompressed) || nonce (16) || tag (16)
//! || ciphertext`. Key derivation, as eciesjs 0.4.15 does it (read from its
//! `dist/keys` and `dist/utils/hash.js`): the shared point `ephemeral_secret *
//! receiver_public` (or `receiver_secret * ephemeral_public`), both points
//! serialised *uncompressed*; `key = HKDF-SHA256(ikm = ephemeral_pk || shared_point,
//! salt = none, info = empty, 32 bytes)`; AES-256-GCM with a 16-byte nonce and no
//! associated data.
//!
//! Why not the Rust `ecies` crate: its default features use OpenSSL for AES (the
//! pure-Rust backend is an opt-in feature), and it brings a second secp256k1
//! implementation; k256, hkdf and aes-gcm are already pure Rust and in use here.

use aes_gcm::aead::consts::U16;
use aes_gcm::aead::{AeadInPlace, KeyInit};
use aes_gcm::aes::Aes256;
use aes_gcm::{AesGcm, Nonce, Tag};
use hkdf::Hkdf;
use k256::elliptic_curve::sec1::ToEncodedPoint;
use k256::{PublicKey, SecretKey};
use rand::RngCore;
use sha2::Sha256;

/// Length of the uncompressed ephemeral public key at the start of a message.
pub const EPHEMERAL_KEY_LEN: usize = 65;
/// AES-GCM nonce length eciesjs uses (16, not the usual 12).
pub const NONCE_LEN: usize = 16;
/// AES-GCM tag length.
pub const TAG_LEN: usize = 16;
/// Bytes an encrypted message carries beyond its plaintext.
pub const OVERHEAD: usize = EPHEMERAL_KEY_LEN + NONCE_LEN + TAG_LEN;

/// AES-256-GCM with eciesjs's 16-byte nonce.
type Aes256Gcm16 = AesGcm<Aes256, U16>;

/// Why an ECIES operation failed. Deliberately coarse for decryption: a caller
/// (or an attacker) learns "not for this key or damaged", nothing finer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EciesError {
    /// Shorter than an empty message would be.
    #[error("ECIES message is {len} bytes; at least {OVERHEAD} are needed")]
    TooShort {
        /// Length received.
        len: usize,
    },
    /// The first 65 bytes are not an uncompressed point on secp256k1.
    #[error("ECIES message does not start with a valid uncompressed secp256k1 public key")]
    InvalidEphemeralKey,
    /// Authentication failed: wrong key, or the message was altered.
    #[error("ECIES message does not decrypt with this key (wrong key or tampered data)")]
    DecryptionFailed,
    /// A receiver public key that is not a secp256k1 point in a known encoding.
    #[error("not a secp256k1 public key (expected 33, 64 or 65 bytes of a valid point)")]
    InvalidPublicKey,
    /// A secret key that is not a valid secp256k1 scalar.
    #[error("not a secp256k1 secret key (expected 32 bytes, non-zero and below the curve order)")]
    InvalidSecretKey,
    /// The cipher refused to encrypt (only for absurd plaintext lengths).
    #[error("AES-GCM encryption failed")]
    EncryptionFailed,
}

/// Parses a receiver public key the way eciesjs accepts one: compressed (33
/// bytes), uncompressed (65), or Ethereum-style uncompressed without the 0x04
/// prefix (64).
pub fn parse_public_key(bytes: &[u8]) -> Result<PublicKey, EciesError> {
    let parsed = if bytes.len() == 64 {
        let mut full = [0u8; 65];
        full[0] = 0x04;
        full[1..].copy_from_slice(bytes);
        PublicKey::from_sec1_bytes(&full)
    } else {
        PublicKey::from_sec1_bytes(bytes)
    };
    parsed.map_err(|_| EciesError::InvalidPublicKey)
}

/// Parses a 32-byte secret key.
pub fn parse_secret_key(bytes: &[u8]) -> Result<SecretKey, EciesError> {
    // k256 would left-pad slices of 24..32 bytes; a key file cut short must
    // be an error, not a different key.
    if bytes.len() != 32 {
        return Err(EciesError::InvalidSecretKey);
    }
    SecretKey::from_slice(bytes).map_err(|_| EciesError::InvalidSecretKey)
}

/// Encrypts `plaintext` to `receiver` with a fresh ephemeral key and nonce.
pub fn encrypt(receiver: &PublicKey, plaintext: &[u8]) -> Result<Vec<u8>, EciesError> {
    let mut rng = rand::rngs::OsRng;
    let ephemeral = SecretKey::random(&mut rng);
    let mut nonce = [0u8; NONCE_LEN];
    rng.fill_bytes(&mut nonce);
    encrypt_with(receiver, plaintext, &ephemeral, &nonce)
}

/// The deterministic core of [`encrypt`]; tests pin its output with it.
fn encrypt_with(
    receiver: &PublicKey,
    plaintext: &[u8],
    ephemeral: &SecretKey,
    nonce: &[u8; NONCE_LEN],
) -> Result<Vec<u8>, EciesError> {
    let ephemeral_pk = ephemeral.public_key().to_encoded_point(false);
    let cipher = cipher_for(ephemeral_pk.as_bytes(), ephemeral, receiver)?;

    let mut out = Vec::with_capacity(OVERHEAD + plaintext.len());
    out.extend_from_slice(ephemeral_pk.as_bytes());
    out.extend_from_slice(nonce);
    // Reserve the tag's slot now; it is only known after encryption.
    out.extend_from_slice(&[0u8; TAG_LEN]);
    out.extend_from_slice(plaintext);
    let tag = cipher
        .encrypt_in_place_detached(Nonce::from_slice(nonce), b"", &mut out[OVERHEAD..])
        .map_err(|_| EciesError::EncryptionFailed)?;
    out[EPHEMERAL_KEY_LEN + NONCE_LEN..OVERHEAD].copy_from_slice(&tag);
    Ok(out)
}

/// Decrypts a message made by eciesjs's `encrypt` (or ours) for `receiver`.
pub fn decrypt(receiver: &SecretKey, message: &[u8]) -> Result<Vec<u8>, EciesError> {
    if message.len() < OVERHEAD {
        return Err(EciesError::TooShort { len: message.len() });
    }
    let (ephemeral_bytes, rest) = message.split_at(EPHEMERAL_KEY_LEN);
    let (nonce, rest) = rest.split_at(NONCE_LEN);
    let (tag, ciphertext) = rest.split_at(TAG_LEN);

    // Only the uncompressed form is valid here (eciesjs's default writes it,
    // and a 65-byte slot holding a 33-byte key would misalign everything).
    if ephemeral_bytes[0] != 0x04 {
        return Err(EciesError::InvalidEphemeralKey);
    }
    let ephemeral =
        PublicKey::from_sec1_bytes(ephemeral_bytes).map_err(|_| EciesError::InvalidEphemeralKey)?;
    let cipher = cipher_for(ephemeral_bytes, receiver, &ephemeral)?;

    let mut plaintext = ciphertext.to_vec();
    cipher
        .decrypt_in_place_detached(
            Nonce::from_slice(nonce),
            b"",
            &mut plaintext,
            Tag::from_slice(tag),
        )
        .map_err(|_| EciesError::DecryptionFailed)?;
    Ok(plaintext)
}

/// The AES key both sides derive: HKDF-SHA256 over the ephemeral public key and
/// the shared point, both uncompressed (eciesjs's `isHkdfKeyCompressed = false`).
fn cipher_for(
    ephemeral_pk_uncompressed: &[u8],
    secret: &SecretKey,
    public: &PublicKey,
) -> Result<Aes256Gcm16, EciesError> {
    let shared = (public.to_projective() * *secret.to_nonzero_scalar()).to_affine();
    let shared = shared.to_encoded_point(false);

    let mut ikm = Vec::with_capacity(EPHEMERAL_KEY_LEN * 2);
    ikm.extend_from_slice(ephemeral_pk_uncompressed);
    ikm.extend_from_slice(shared.as_bytes());
    let mut key = [0u8; 32];
    Hkdf::<Sha256>::new(None, &ikm)
        .expand(&[], &mut key)
        // 32 bytes is far below HKDF-SHA256's 8160-byte limit; map anyway
        // rather than unwrap.
        .map_err(|_| EciesError::EncryptionFailed)?;
    Aes256Gcm16::new_from_slice(&key).map_err(|_| EciesError::EncryptionFailed)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// anvil's dev account 0 key: a well-known test key, never a real secret.
    const ANVIL0: &str = "ac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80";

    fn server() -> SecretKey {
        parse_secret_key(&hex::decode(ANVIL0).unwrap()).unwrap()
    }

    #[test]
    fn round_trip_and_layout() {
        let sk = server();
        for len in [0usize, 1, 15, 16, 17, 132, 4096] {
            let plaintext: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let msg = encrypt(&sk.public_key(), &plaintext).unwrap();
            assert_eq!(msg.len(), OVERHEAD + len);
            assert_eq!(msg[0], 0x04, "uncompressed ephemeral key first");
            assert_eq!(decrypt(&sk, &msg).unwrap(), plaintext);
        }
    }

    #[test]
    fn fresh_randomness_each_time() {
        let pk = server().public_key();
        let a = encrypt(&pk, b"same").unwrap();
        let b = encrypt(&pk, b"same").unwrap();
        assert_ne!(a[..EPHEMERAL_KEY_LEN], b[..EPHEMERAL_KEY_LEN]);
        assert_ne!(a, b);
    }

    #[test]
    fn public_key_encodings() {
        let pk = server().public_key();
        let unc = pk.to_encoded_point(false);
        let cmp = pk.to_encoded_point(true);
        assert_eq!(parse_public_key(unc.as_bytes()).unwrap(), pk);
        assert_eq!(parse_public_key(cmp.as_bytes()).unwrap(), pk);
        assert_eq!(parse_public_key(&unc.as_bytes()[1..]).unwrap(), pk);
        assert_eq!(
            parse_public_key(&[0u8; 33]),
            Err(EciesError::InvalidPublicKey)
        );
        assert_eq!(parse_public_key(&[]), Err(EciesError::InvalidPublicKey));
        let mut off_curve = unc.as_bytes().to_vec();
        off_curve[64] ^= 1;
        assert_eq!(
            parse_public_key(&off_curve),
            Err(EciesError::InvalidPublicKey)
        );
        assert_eq!(
            parse_secret_key(&[0u8; 32]),
            Err(EciesError::InvalidSecretKey)
        );
        assert_eq!(
            parse_secret_key(&[1u8; 31]),
            Err(EciesError::InvalidSecretKey)
        );
    }

    #[test]
    fn short_inputs_are_errors() {
        let sk = server();
        for len in [0, 1, 64, 65, 80, OVERHEAD - 1] {
            assert_eq!(
                decrypt(&sk, &vec![4u8; len]),
                Err(EciesError::TooShort { len })
            );
        }
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let sk = server();
        let mut state = 0x1234_5678_u32;
        for len in [OVERHEAD, OVERHEAD + 1, 200, 1000] {
            for _ in 0..50 {
                let bytes: Vec<u8> = (0..len)
                    .map(|_| {
                        // xorshift: cheap deterministic noise
                        state ^= state << 13;
                        state ^= state >> 17;
                        state ^= state << 5;
                        state as u8
                    })
                    .collect();
                assert!(decrypt(&sk, &bytes).is_err());
            }
        }
        // A compressed key in the ephemeral slot is refused up front.
        let mut msg = encrypt(&sk.public_key(), b"x").unwrap();
        msg[0] = 0x02;
        assert_eq!(decrypt(&sk, &msg), Err(EciesError::InvalidEphemeralKey));
    }

    #[test]
    fn any_flipped_bit_is_detected() {
        let sk = server();
        let msg = encrypt(&sk.public_key(), b"0x1234 signature bytes").unwrap();
        for i in 0..msg.len() {
            let mut bad = msg.clone();
            bad[i] ^= 0x01;
            let err = decrypt(&sk, &bad).unwrap_err();
            if i < EPHEMERAL_KEY_LEN {
                // Either not a point any more, or a different point: both fail.
                assert!(matches!(
                    err,
                    EciesError::InvalidEphemeralKey | EciesError::DecryptionFailed
                ));
            } else {
                assert_eq!(err, EciesError::DecryptionFailed, "byte {i}");
            }
        }
        let mut truncated = msg.clone();
        truncated.pop();
        assert_eq!(decrypt(&sk, &truncated), Err(EciesError::DecryptionFailed));
    }

    #[test]
    fn wrong_key_fails() {
        let msg = encrypt(&server().public_key(), b"secret").unwrap();
        let other = parse_secret_key(&[7u8; 32]).unwrap();
        assert_eq!(decrypt(&other, &msg), Err(EciesError::DecryptionFailed));
    }

    /// Pins the derivation: a fixed ephemeral key and nonce give a fixed output.
    /// The expected tag || ciphertext came from eciesjs 0.4.15's own primitives
    /// (`PrivateKey([0x11; 32]).encapsulate(receiver, false)` as the AES key,
    /// `@ecies/ciphers` aes256gcm with nonce `[0x22; 16]`), so this fails if the
    /// KDF input or order ever diverges, even without node at hand.
    #[test]
    fn deterministic_vector() {
        let receiver = server().public_key();
        let ephemeral = parse_secret_key(&[0x11; 32]).unwrap();
        let nonce = [0x22; NONCE_LEN];
        let msg = encrypt_with(&receiver, b"blockhost", &ephemeral, &nonce).unwrap();
        assert_eq!(hex::encode(&msg[OVERHEAD - TAG_LEN..]), VECTOR_TAG_AND_CT);
    }

    const VECTOR_TAG_AND_CT: &str = "0cb013567b6a08d0c173bc064d39e9c4820ce64f6ad4aadf53";
}
