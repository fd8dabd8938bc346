//! EIP-191 `personal_sign`: message hashing, signing with a secp256k1 key, and
//! recovery and verification of the signer's address.
//!
//! Shared by the PAM module (wallet SSH login) and the controller (purchase
//! signatures), so there is one place where the rules are enforced:
//! - a signature is exactly 65 bytes `r || s || v`, written as 130 hex digits with an
//!   optional `0x`;
//! - `v` is 0, 1, 27 or 28 (wallets and libraries use both conventions);
//! - a high-`s` signature is refused: it is the malleable twin of a valid one, and
//!   accepting both would give one authorisation two spellings (a replay check keyed
//!   on the signature bytes could then be bypassed);
//! - the recovered address is compared with the expected ones in constant time.

use std::fmt;
use std::str::FromStr;

use k256::ecdsa::{RecoveryId, Signature as EcdsaSignature, SigningKey, VerifyingKey};
use k256::elliptic_curve::scalar::IsHigh;
use sha3::{Digest, Keccak256};
use subtle::ConstantTimeEq;

use crate::WalletAddress;

/// Length of an Ethereum signature in bytes: `r` (32) || `s` (32) || `v` (1).
pub const SIGNATURE_LEN: usize = 65;

/// Longest text [`Signature::from_str`] looks at: `0x` + 130 hex digits. Anything
/// longer is refused before any work, so a hostile caller cannot make parsing costly.
pub const SIGNATURE_HEX_MAX: usize = 2 + 2 * SIGNATURE_LEN;

/// The prefix EIP-191 (version 0x45, "personal_sign") puts before the message length.
const PREFIX: &[u8] = b"\x19Ethereum Signed Message:\n";

/// Why a signature was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Eip191Error {
    /// The text is not 130 hex digits (with an optional `0x`).
    #[error("a signature is 65 bytes written as 130 hex digits, got {0} characters")]
    WrongLength(usize),
    /// A character that is not a hex digit.
    #[error("a signature holds only hex digits")]
    NotHex,
    /// `v` outside {0, 1, 27, 28}.
    #[error("signature recovery byte v must be 0, 1, 27 or 28, got {0}")]
    BadRecoveryByte(u8),
    /// `s` in the upper half of the curve order (malleable).
    #[error("signature has a high s value (malleable form); re-sign with a standard wallet")]
    HighS,
    /// `r` or `s` is zero or not below the curve order.
    #[error("signature scalars are out of range")]
    BadScalars,
    /// No public key recovers from this signature and message.
    #[error("no public key recovers from this signature")]
    RecoveryFailed,
    /// The signature is valid but made by a wallet that is not allowed.
    #[error("signature was made by {recovered}, which is not an allowed wallet")]
    WrongSigner {
        /// The address that did sign.
        recovered: WalletAddress,
    },
    /// The signing library refused (should not happen with a valid key).
    #[error("signing failed")]
    SigningFailed,
}

/// A 65-byte `r || s || v` signature, as produced by `personal_sign`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Signature([u8; SIGNATURE_LEN]);

impl Signature {
    /// Wraps raw bytes; the checks happen at recovery.
    pub const fn from_bytes(bytes: [u8; SIGNATURE_LEN]) -> Self {
        Self(bytes)
    }

    /// The raw 65 bytes.
    pub const fn as_bytes(&self) -> &[u8; SIGNATURE_LEN] {
        &self.0
    }

    /// `0x` + 130 lower-case hex digits, the form wallets return.
    pub fn to_hex(&self) -> String {
        format!("0x{}", hex::encode(self.0))
    }
}

impl FromStr for Signature {
    type Err = Eip191Error;

    /// Parses `0x…` or bare hex; surrounding whitespace (a pasted newline) is ignored.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // Bound before trimming so a megabyte of spaces is not scanned either.
        if s.len() > SIGNATURE_HEX_MAX + 64 {
            return Err(Eip191Error::WrongLength(s.len()));
        }
        let s = s.trim();
        let digits = s
            .strip_prefix("0x")
            .or_else(|| s.strip_prefix("0X"))
            .unwrap_or(s);
        if digits.len() != 2 * SIGNATURE_LEN {
            return Err(Eip191Error::WrongLength(s.len()));
        }
        let mut bytes = [0u8; SIGNATURE_LEN];
        hex::decode_to_slice(digits, &mut bytes).map_err(|_| Eip191Error::NotHex)?;
        Ok(Self(bytes))
    }
}

impl fmt::Display for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signature({})", self.to_hex())
    }
}

/// `keccak256("\x19Ethereum Signed Message:\n" + len(message) + message)`, the
/// digest `personal_sign` signs. The length is the byte length in decimal.
pub fn hash_message(message: &[u8]) -> [u8; 32] {
    let mut hasher = Keccak256::new();
    hasher.update(PREFIX);
    hasher.update(message.len().to_string().as_bytes());
    hasher.update(message);
    hasher.finalize().into()
}

/// The Ethereum address of a public key: the last 20 bytes of the keccak256 of its
/// uncompressed encoding without the leading 0x04.
pub fn address_of(key: &VerifyingKey) -> WalletAddress {
    let point = key.to_encoded_point(false);
    let hash = Keccak256::digest(&point.as_bytes()[1..]);
    let mut out = [0u8; 20];
    out.copy_from_slice(&hash[12..]);
    WalletAddress::from_bytes(out)
}

/// Signs `message` as `personal_sign` does: deterministic (RFC 6979), low-`s`,
/// `v` = 27 or 28.
pub fn sign(key: &SigningKey, message: &[u8]) -> Result<Signature, Eip191Error> {
    let digest = hash_message(message);
    let (sig, recid) = key
        .sign_prehash_recoverable(&digest)
        .map_err(|_| Eip191Error::SigningFailed)?;
    // k256 already returns low-s; normalising again keeps the output valid for
    // `recover` even if that default ever changed (flipping s flips the parity).
    let (sig, recid) = match sig.normalize_s() {
        Some(low) => (
            low,
            RecoveryId::new(!recid.is_y_odd(), recid.is_x_reduced()),
        ),
        None => (sig, recid),
    };
    let mut out = [0u8; SIGNATURE_LEN];
    out[..64].copy_from_slice(&sig.to_bytes());
    out[64] = 27 + recid.to_byte();
    Ok(Signature(out))
}

/// Recovers the address that signed `message`, refusing malleable or malformed
/// signatures.
pub fn recover(message: &[u8], signature: &Signature) -> Result<WalletAddress, Eip191Error> {
    let bytes = signature.as_bytes();
    let v = bytes[64];
    let parity = match v {
        0 | 27 => false,
        1 | 28 => true,
        other => return Err(Eip191Error::BadRecoveryByte(other)),
    };
    let sig = EcdsaSignature::from_slice(&bytes[..64]).map_err(|_| Eip191Error::BadScalars)?;
    if bool::from(sig.s().as_ref().is_high()) {
        return Err(Eip191Error::HighS);
    }
    // x-reduced recovery ids (v = 29/30 in some encodings) are never produced by
    // wallets for secp256k1 in practice and are not accepted by the v rule above.
    let recid = RecoveryId::new(parity, false);
    let digest = hash_message(message);
    let key = VerifyingKey::recover_from_prehash(&digest, &sig, recid)
        .map_err(|_| Eip191Error::RecoveryFailed)?;
    Ok(address_of(&key))
}

/// Verifies that one of `allowed` signed `message`; returns that wallet.
///
/// Every allowed address is compared, in constant time, whatever the outcome of
/// earlier comparisons: how long verification takes says nothing about which wallet,
/// or how much of one, matched.
pub fn verify_any(
    message: &[u8],
    signature: &Signature,
    allowed: &[WalletAddress],
) -> Result<WalletAddress, Eip191Error> {
    let recovered = recover(message, signature)?;
    let mut found = subtle::Choice::from(0u8);
    for candidate in allowed {
        found |= candidate.as_bytes().ct_eq(recovered.as_bytes());
    }
    if bool::from(found) {
        Ok(recovered)
    } else {
        Err(Eip191Error::WrongSigner { recovered })
    }
}

/// Verifies that `expected` signed `message`.
pub fn verify(
    message: &[u8],
    signature: &Signature,
    expected: &WalletAddress,
) -> Result<(), Eip191Error> {
    verify_any(message, signature, std::slice::from_ref(expected)).map(|_| ())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// anvil's first dev account (a well-known test key, never a real secret).
    const ANVIL0_KEY: &str = "ac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80";
    const ANVIL0_ADDR: &str = "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266";
    const ANVIL1_ADDR: &str = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8";

    /// Made with foundry 1.7.1, an independent implementation:
    /// `cast wallet sign --mnemonic <file holding anvil's "test … junk" mnemonic> 'blockhost-access'`
    /// (index 0 = ANVIL0). RFC 6979 makes it reproducible.
    const CAST_ACCESS_SIG: &str = "0x606417ac6090dfce72677942e534666c5872ca918013a66399fc99c4deffa6f55be822206b541f51db9400f5a1e7316563d7482a96582e7fe8012ef5d74878371b";

    /// Same command, message "hello\nworld" (multi-line, as a SIWE message is).
    const CAST_MULTILINE_SIG: &str = "0xa468bb778aa915f72de0b8a721c581b590666ab8cf2c6fa6ef5a34cdb4d3f0ac7fe8f2bb474183178581d9c8d224ee5c065e2b9e80658726ea48daa20bf2a3751c";

    fn key() -> SigningKey {
        SigningKey::from_slice(&hex::decode(ANVIL0_KEY).unwrap()).unwrap()
    }

    fn addr(s: &str) -> WalletAddress {
        s.parse().unwrap()
    }

    #[test]
    fn hash_matches_known_digest() {
        // keccak256("\x19Ethereum Signed Message:\n5hello"), as computed by
        // `cast hash-message hello`.
        assert_eq!(
            hex::encode(hash_message(b"hello")),
            "50b2c43fd39106bafbba0da34fc430e1f91e3c96ea2acee2bc34119f92b37750"
        );
    }

    #[test]
    fn key_maps_to_its_known_address() {
        assert_eq!(address_of(key().verifying_key()), addr(ANVIL0_ADDR));
    }

    #[test]
    fn cast_vectors_verify_and_we_sign_identically() {
        for (msg, sig) in [
            ("blockhost-access", CAST_ACCESS_SIG),
            ("hello\nworld", CAST_MULTILINE_SIG),
        ] {
            let sig: Signature = sig.parse().unwrap();
            verify(msg.as_bytes(), &sig, &addr(ANVIL0_ADDR)).unwrap();
            // RFC 6979: our signature is byte-identical to foundry's.
            assert_eq!(sign(&key(), msg.as_bytes()).unwrap(), sig);
        }
    }

    #[test]
    fn v_in_both_conventions_is_accepted_and_others_refused() {
        let sig = sign(&key(), b"m").unwrap();
        let mut zero_one = *sig.as_bytes();
        zero_one[64] -= 27;
        verify(b"m", &Signature::from_bytes(zero_one), &addr(ANVIL0_ADDR)).unwrap();
        for bad_v in [2u8, 26, 29, 30, 255] {
            let mut b = *sig.as_bytes();
            b[64] = bad_v;
            assert_eq!(
                recover(b"m", &Signature::from_bytes(b)),
                Err(Eip191Error::BadRecoveryByte(bad_v))
            );
        }
    }

    #[test]
    fn malleable_twin_is_refused() {
        let sig = sign(&key(), b"m").unwrap();
        let ecdsa = EcdsaSignature::from_slice(&sig.as_bytes()[..64]).unwrap();
        // s' = n - s is the other valid signature of the same message.
        let high_s = -*ecdsa.s();
        let twin = EcdsaSignature::from_scalars(ecdsa.r().to_bytes(), high_s.to_bytes()).unwrap();
        let mut b = [0u8; SIGNATURE_LEN];
        b[..64].copy_from_slice(&twin.to_bytes());
        b[64] = if sig.as_bytes()[64] == 27 { 28 } else { 27 };
        assert_eq!(
            recover(b"m", &Signature::from_bytes(b)),
            Err(Eip191Error::HighS)
        );
    }

    #[test]
    fn wrong_signer_and_wrong_message_fail() {
        let sig = sign(&key(), b"m").unwrap();
        assert!(matches!(
            verify(b"m", &sig, &addr(ANVIL1_ADDR)),
            Err(Eip191Error::WrongSigner { .. })
        ));
        assert!(verify(b"other", &sig, &addr(ANVIL0_ADDR)).is_err());
        assert_eq!(
            verify_any(b"m", &sig, &[addr(ANVIL1_ADDR), addr(ANVIL0_ADDR)]).unwrap(),
            addr(ANVIL0_ADDR)
        );
    }

    #[test]
    fn malformed_text_is_refused() {
        let good = sign(&key(), b"m").unwrap().to_hex();
        assert!(good.parse::<Signature>().is_ok());
        assert!(good[2..].parse::<Signature>().is_ok());
        assert!(format!("  {good}\n").parse::<Signature>().is_ok());
        assert!(matches!(
            good[..good.len() - 2].parse::<Signature>(),
            Err(Eip191Error::WrongLength(_))
        ));
        assert!(matches!(
            format!("{good}00").parse::<Signature>(),
            Err(Eip191Error::WrongLength(_))
        ));
        assert!(matches!(
            format!("0x{}", "zz".repeat(65)).parse::<Signature>(),
            Err(Eip191Error::NotHex)
        ));
        assert!(matches!(
            "a".repeat(1 << 20).parse::<Signature>(),
            Err(Eip191Error::WrongLength(_))
        ));
        assert!("".parse::<Signature>().is_err());
        // Zero scalars parse as text but never verify.
        let zeros: Signature = format!("0x{}1b", "00".repeat(64)).parse().unwrap();
        assert_eq!(recover(b"m", &zeros), Err(Eip191Error::BadScalars));
    }
}
