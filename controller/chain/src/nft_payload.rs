//! The encrypted connection details an access NFT carries (`mint(to, payload)`,
//! read back with `getUserEncrypted(tokenId)`).
//!
//! Format (REFERENCE.md §2): AES-256-GCM under `key = keccak256(the 65 signature
//! bytes)`, laid out `nonce (12) || ciphertext || tag (16)`, no associated data;
//! the plaintext is JSON `{"hostname": …, "port": 22, "username": …}`.
//!
//! The signature is the buyer's `personal_sign` of the operator's public
//! secret, which the server learnt from `userEncrypted` at purchase. RFC 6979
//! makes signatures deterministic, so the holder re-signs the same text with the
//! same wallet, gets the same 65 bytes and so the same key. (The key covers the
//! bytes as signed, `v` included: a wallet reporting `v` as 0/1 instead of 27/28
//! derives a different key.)

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use alloy_primitives::keccak256;
use blockhost_crd::eip191::Signature;
use rand::RngCore;
use serde::{Deserialize, Serialize};

/// AES-GCM nonce length at the start of a payload.
pub const NONCE_LEN: usize = 12;
/// AES-GCM tag length at the end of a payload.
pub const TAG_LEN: usize = 16;

/// What the holder needs to reach their VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionDetails {
    /// Host name or address to connect to.
    pub hostname: String,
    /// SSH port (22 unless the operator forwards another).
    pub port: u16,
    /// The VM's login user.
    pub username: String,
}

/// Why a payload could not be made or read.
#[derive(Debug, thiserror::Error)]
pub enum NftPayloadError {
    /// Too short to hold a nonce and a tag.
    #[error("NFT payload is {len} bytes; at least {} are needed", NONCE_LEN + TAG_LEN)]
    TooShort {
        /// Length received.
        len: usize,
    },
    /// Authentication failed: another wallet's signature, or altered data.
    #[error("NFT payload does not decrypt with this signature (another wallet, or damaged data)")]
    DecryptionFailed,
    /// Decrypted, but not the expected JSON object.
    #[error("decrypted NFT payload is not {{\"hostname\", \"port\", \"username\"}} JSON")]
    InvalidJson(#[source] serde_json::Error),
    /// The details could not be serialised or encrypted.
    #[error("could not build the NFT payload")]
    EncryptionFailed,
}

/// `keccak256` of the 65 signature bytes: the payload key.
pub fn derive_key(signature: &Signature) -> [u8; 32] {
    keccak256(signature.as_bytes()).0
}

/// Encrypts `details` for the holder of `signature`, with a fresh random nonce.
pub fn encrypt(
    signature: &Signature,
    details: &ConnectionDetails,
) -> Result<Vec<u8>, NftPayloadError> {
    let json = serde_json::to_vec(details).map_err(|_| NftPayloadError::EncryptionFailed)?;
    seal(&derive_key(signature), &json)
}

/// Decrypts a payload read from `getUserEncrypted` with the holder's signature.
pub fn decrypt(
    signature: &Signature,
    payload: &[u8],
) -> Result<ConnectionDetails, NftPayloadError> {
    let json = open(&derive_key(signature), payload)?;
    let value: serde_json::Value =
        serde_json::from_slice(&json).map_err(NftPayloadError::InvalidJson)?;
    // serde would also take a `[hostname, port, username]` array for the
    // struct; the format is an object, so anything else is refused.
    if !value.is_object() {
        return Err(NftPayloadError::InvalidJson(serde::de::Error::custom(
            "expected a JSON object",
        )));
    }
    serde_json::from_value(value).map_err(NftPayloadError::InvalidJson)
}

/// AES-256-GCM with a random nonce: `nonce || ciphertext || tag`.
pub fn seal(key: &[u8; 32], plaintext: &[u8]) -> Result<Vec<u8>, NftPayloadError> {
    let mut nonce = [0u8; NONCE_LEN];
    rand::rngs::OsRng.fill_bytes(&mut nonce);
    seal_with_nonce(key, &nonce, plaintext)
}

fn seal_with_nonce(
    key: &[u8; 32],
    nonce: &[u8; NONCE_LEN],
    plaintext: &[u8],
) -> Result<Vec<u8>, NftPayloadError> {
    let cipher = Aes256Gcm::new(key.into());
    // aes-gcm appends the tag to the ciphertext, which is exactly our layout.
    let sealed = cipher
        .encrypt(Nonce::from_slice(nonce), plaintext)
        .map_err(|_| NftPayloadError::EncryptionFailed)?;
    let mut out = Vec::with_capacity(NONCE_LEN + sealed.len());
    out.extend_from_slice(nonce);
    out.extend_from_slice(&sealed);
    Ok(out)
}

/// Inverse of [`seal`].
pub fn open(key: &[u8; 32], payload: &[u8]) -> Result<Vec<u8>, NftPayloadError> {
    if payload.len() < NONCE_LEN + TAG_LEN {
        return Err(NftPayloadError::TooShort { len: payload.len() });
    }
    let (nonce, sealed) = payload.split_at(NONCE_LEN);
    Aes256Gcm::new(key.into())
        .decrypt(Nonce::from_slice(nonce), sealed)
        .map_err(|_| NftPayloadError::DecryptionFailed)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::str::FromStr;

    use blockhost_crd::eip191;
    use k256::ecdsa::SigningKey;

    use super::*;

    /// anvil's dev account 0 key: a well-known test key, never a real secret.
    const ANVIL0: &str = "ac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80";
    const ANVIL0_ADDR: &str = "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266";

    /// `cast wallet sign --private-key 0xac09…ff80 blockhost-access` (foundry
    /// 1.7.1): a signature from an independent implementation.
    const CAST_SIG: &str = "0x606417ac6090dfce72677942e534666c5872ca918013a66399fc99c4deffa6f55be822206b541f51db9400f5a1e7316563d7482a96582e7fe8012ef5d74878371b";
    /// `cast keccak <CAST_SIG>`: the payload key that signature yields.
    const CAST_SIG_KEY: &str = "ae514f9d7aa32d0d9fd1fcad7077df19c7242b32d9f094c69d0b8238826208e6";

    fn cast_sig() -> Signature {
        Signature::from_str(CAST_SIG).unwrap()
    }

    fn details() -> ConnectionDetails {
        ConnectionDetails {
            hostname: "blockhost-001.example.net".into(),
            port: 22,
            username: "user".into(),
        }
    }

    #[test]
    fn cast_signature_is_anvil0_and_matches_ours() {
        // The holder's side: signing again gives the very same bytes.
        let key = SigningKey::from_slice(&hex::decode(ANVIL0).unwrap()).unwrap();
        assert_eq!(eip191::sign(&key, b"blockhost-access").unwrap(), cast_sig());
        let signer = eip191::recover(b"blockhost-access", &cast_sig()).unwrap();
        assert_eq!(signer.to_checksum(), ANVIL0_ADDR);
        assert_eq!(hex::encode(derive_key(&cast_sig())), CAST_SIG_KEY);
    }

    #[test]
    fn round_trip_with_cast_signature() {
        let payload = encrypt(&cast_sig(), &details()).unwrap();
        let json_len = serde_json::to_vec(&details()).unwrap().len();
        assert_eq!(payload.len(), NONCE_LEN + json_len + TAG_LEN);
        assert_eq!(decrypt(&cast_sig(), &payload).unwrap(), details());
    }

    #[test]
    fn plaintext_is_the_reference_json() {
        let payload = encrypt(&cast_sig(), &details()).unwrap();
        let json = open(&derive_key(&cast_sig()), &payload).unwrap();
        assert_eq!(
            String::from_utf8(json).unwrap(),
            r#"{"hostname":"blockhost-001.example.net","port":22,"username":"user"}"#
        );
    }

    /// A fixed vector, so the layout (nonce first, tag last) is pinned; the
    /// interop test decrypts payloads like it with node's own AES-GCM.
    #[test]
    fn layout_vector() {
        let key = derive_key(&cast_sig());
        let sealed = seal_with_nonce(&key, &[7u8; NONCE_LEN], b"{}").unwrap();
        assert_eq!(&sealed[..NONCE_LEN], &[7u8; NONCE_LEN]);
        assert_eq!(sealed.len(), NONCE_LEN + 2 + TAG_LEN);
        assert_eq!(open(&key, &sealed).unwrap(), b"{}");
    }

    #[test]
    fn another_wallet_cannot_read_it() {
        let payload = encrypt(&cast_sig(), &details()).unwrap();
        let other_key = SigningKey::from_slice(&[9u8; 32]).unwrap();
        let other = eip191::sign(&other_key, b"blockhost-access").unwrap();
        assert!(matches!(
            decrypt(&other, &payload),
            Err(NftPayloadError::DecryptionFailed)
        ));
        // Same wallet, other text (another operator's secret): another key.
        let key = SigningKey::from_slice(&hex::decode(ANVIL0).unwrap()).unwrap();
        let other_text = eip191::sign(&key, b"another-operator").unwrap();
        assert!(matches!(
            decrypt(&other_text, &payload),
            Err(NftPayloadError::DecryptionFailed)
        ));
    }

    #[test]
    fn truncated_or_tampered_payloads_fail() {
        let payload = encrypt(&cast_sig(), &details()).unwrap();
        for len in [0, 1, NONCE_LEN, NONCE_LEN + TAG_LEN - 1] {
            assert!(matches!(
                decrypt(&cast_sig(), &payload[..len]),
                Err(NftPayloadError::TooShort { len: l }) if l == len
            ));
        }
        for cut in 1..=payload.len() - (NONCE_LEN + TAG_LEN) {
            assert!(matches!(
                decrypt(&cast_sig(), &payload[..payload.len() - cut]),
                Err(NftPayloadError::DecryptionFailed)
            ));
        }
        for i in 0..payload.len() {
            let mut bad = payload.clone();
            bad[i] ^= 0x80;
            assert!(matches!(
                decrypt(&cast_sig(), &bad),
                Err(NftPayloadError::DecryptionFailed)
            ));
        }
    }

    #[test]
    fn authentic_but_wrong_json_is_reported() {
        let key = derive_key(&cast_sig());
        for text in [
            &b"not json"[..],
            br#"{"hostname":"h","username":"u"}"#,
            br#"{"hostname":"h","port":70000,"username":"u"}"#,
            br#"["h",22,"u"]"#,
        ] {
            let payload = seal(&key, text).unwrap();
            assert!(matches!(
                decrypt(&cast_sig(), &payload),
                Err(NftPayloadError::InvalidJson(_))
            ));
        }
        // Extra fields from a newer writer are tolerated.
        let payload = seal(
            &key,
            br#"{"hostname":"h","port":2222,"username":"u","ipv6":"::1"}"#,
        )
        .unwrap();
        assert_eq!(decrypt(&cast_sig(), &payload).unwrap().port, 2222);
    }

    #[test]
    fn fresh_nonce_each_time() {
        let a = encrypt(&cast_sig(), &details()).unwrap();
        let b = encrypt(&cast_sig(), &details()).unwrap();
        assert_ne!(a[..NONCE_LEN], b[..NONCE_LEN]);
    }
}
