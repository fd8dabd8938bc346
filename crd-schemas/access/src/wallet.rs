//! Ethereum wallet addresses: parsing with EIP-55 checksum verification, and one
//! normalized (lower-case) stored form.
//!
//! Why normalize: the same wallet may arrive checksummed from a YAML file, lower-case
//! from a chain log and upper-case from a script. Storing one form makes equality and
//! lookups exact; the checksummed form is produced again for display.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha3::{Digest, Keccak256};

/// A 20-byte Ethereum address.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WalletAddress([u8; 20]);

/// Why a string is not a wallet address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WalletError {
    /// Missing `0x` prefix.
    #[error("a wallet address starts with 0x (got {0:?})")]
    MissingPrefix(String),
    /// Wrong number of hex digits.
    #[error("a wallet address has 40 hex digits after 0x, got {0}")]
    WrongLength(usize),
    /// A character that is not a hex digit.
    #[error("a wallet address holds only hex digits (0-9, a-f)")]
    NotHex,
    /// Mixed case that does not match the EIP-55 checksum.
    #[error(
        "EIP-55 checksum mismatch: did you mean {expected}? (or write the address in all lower case)"
    )]
    BadChecksum {
        /// The correctly checksummed spelling.
        expected: String,
    },
}

impl WalletAddress {
    /// Wraps raw bytes.
    pub const fn from_bytes(bytes: [u8; 20]) -> Self {
        Self(bytes)
    }

    /// The raw 20 bytes.
    pub const fn as_bytes(&self) -> &[u8; 20] {
        &self.0
    }

    /// Lower-case `0x…` form, the one stored and compared.
    pub fn to_lower_hex(&self) -> String {
        format!("0x{}", hex::encode(self.0))
    }

    /// EIP-55 mixed-case checksummed form, for display.
    pub fn to_checksum(&self) -> String {
        let lower = hex::encode(self.0);
        let hash = Keccak256::digest(lower.as_bytes());
        let mut out = String::with_capacity(42);
        out.push_str("0x");
        for (i, c) in lower.chars().enumerate() {
            let nibble = (hash[i / 2] >> (if i % 2 == 0 { 4 } else { 0 })) & 0x0f;
            if c.is_ascii_alphabetic() && nibble >= 8 {
                out.push(c.to_ascii_uppercase());
            } else {
                out.push(c);
            }
        }
        out
    }
}

impl FromStr for WalletAddress {
    type Err = WalletError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let digits = s
            .strip_prefix("0x")
            .or_else(|| s.strip_prefix("0X"))
            .ok_or_else(|| WalletError::MissingPrefix(s.chars().take(12).collect()))?;
        if digits.len() != 40 {
            return Err(WalletError::WrongLength(digits.len()));
        }
        if !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(WalletError::NotHex);
        }
        let mut bytes = [0u8; 20];
        hex::decode_to_slice(digits, &mut bytes).map_err(|_| WalletError::NotHex)?;
        let addr = Self(bytes);
        let has_lower = digits.bytes().any(|b| b.is_ascii_lowercase());
        let has_upper = digits.bytes().any(|b| b.is_ascii_uppercase());
        // EIP-55: only a mixed-case spelling carries a checksum.
        if has_lower && has_upper {
            let expected = addr.to_checksum();
            if expected[2..] != *digits {
                return Err(WalletError::BadChecksum { expected });
            }
        }
        Ok(addr)
    }
}

impl fmt::Display for WalletAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_checksum())
    }
}

impl fmt::Debug for WalletAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WalletAddress({})", self.to_checksum())
    }
}

impl Serialize for WalletAddress {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_lower_hex())
    }
}

impl<'de> Deserialize<'de> for WalletAddress {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(feature = "schema")]
impl schemars::JsonSchema for WalletAddress {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "WalletAddress".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "pattern": "^0[xX][0-9a-fA-F]{40}$",
            "description": "A 20-byte Ethereum address as 0x-prefixed hex; a mixed-case spelling must carry a valid EIP-55 checksum. Stored in lower case."
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Vectors from the EIP-55 specification.
    const EIP55: &[&str] = &[
        "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed",
        "0xfB6916095ca1df60bB79Ce92cE3Ea74c37c5d359",
        "0xdbF03B407c01E7cD3CBea99509d93f8DDDC8C6FB",
        "0xD1220A0cf47c7B9Be7A2E6BA89F429762e7b9aDb",
    ];

    #[test]
    fn checksum_vectors_round_trip() {
        for v in EIP55 {
            let a: WalletAddress = v.parse().unwrap();
            assert_eq!(a.to_checksum(), *v);
            assert_eq!(a.to_lower_hex(), v.to_lowercase());
        }
    }

    #[test]
    fn all_lower_and_all_upper_are_accepted() {
        let v = EIP55[0];
        assert!(v.to_lowercase().parse::<WalletAddress>().is_ok());
        let upper = format!("0x{}", v[2..].to_uppercase());
        assert!(upper.parse::<WalletAddress>().is_ok());
    }

    #[test]
    fn bad_checksum_names_the_right_spelling() {
        let bad = "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAeD";
        match bad.parse::<WalletAddress>() {
            Err(WalletError::BadChecksum { expected }) => assert_eq!(expected, EIP55[0]),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn malformed_inputs_are_rejected() {
        assert!(matches!(
            "5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed".parse::<WalletAddress>(),
            Err(WalletError::MissingPrefix(_))
        ));
        assert!(matches!(
            "0x1234".parse::<WalletAddress>(),
            Err(WalletError::WrongLength(4))
        ));
        assert!(matches!(
            "0xzz".parse::<WalletAddress>(),
            Err(WalletError::WrongLength(2))
        ));
        assert!(matches!(
            format!("0x{}", "g".repeat(40)).parse::<WalletAddress>(),
            Err(WalletError::NotHex)
        ));
        assert!("".parse::<WalletAddress>().is_err());
    }

    #[test]
    fn serializes_lower_case() {
        let a: WalletAddress = EIP55[1].parse().unwrap();
        assert_eq!(
            serde_json::to_string(&a).unwrap(),
            format!("\"{}\"", EIP55[1].to_lowercase())
        );
        let back: WalletAddress = serde_json::from_str(&format!("\"{}\"", EIP55[1])).unwrap();
        assert_eq!(back, a);
    }
}
