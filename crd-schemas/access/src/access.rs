//! The VM access file, `/etc/blockhost/access.json`.
//!
//! The controller writes it into each VM through the guest agent; the PAM module
//! inside the VM reads it at every login. It is the only channel through which a VM
//! learns who may log in, so its type is defined once, here, and shared by both ends:
//! a field added on one side cannot be silently missing on the other.
//!
//! It is JSON: `pam_blockhost.so` runs inside sshd, and JSON needs no parser
//! there beyond the one the module already links for the signing page's answers.

use serde::{Deserialize, Serialize};

use crate::WalletAddress;

/// Where the controller writes the access file inside a VM.
pub const ACCESS_FILE_PATH: &str = "/etc/blockhost/access.json";

/// Current format version; readers refuse other versions rather than guess.
pub const ACCESS_FILE_VERSION: u32 = 1;

/// Largest access file a reader accepts, in bytes. A real one is a few hundred bytes;
/// the bound keeps a corrupted or hostile file from costing memory at login.
pub const ACCESS_FILE_MAX_BYTES: usize = 64 * 1024;

/// Contents of the access file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct AccessFile {
    /// Format version, [`ACCESS_FILE_VERSION`].
    pub version: u32,
    /// The machine's name (the VirtualMachine object's name, e.g. `blockhost-007`);
    /// the domain of the Sign-In-with-Ethereum login message.
    pub machine: String,
    /// EIP-155 chain id of the chain holding the access NFT.
    pub chain_id: u64,
    /// Token id of the access NFT, once minted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nft_token_id: Option<u64>,
    /// Wallets allowed to log in (the NFT holder; possibly more for operators).
    pub wallets: Vec<WalletAddress>,
    /// Unix users that may log in with a wallet signature. Others are refused.
    pub users: Vec<String>,
    /// URL of the signing page the login prompt shows, if one is served.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing_url: Option<String>,
}

/// Why an access file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum AccessFileError {
    /// Larger than [`ACCESS_FILE_MAX_BYTES`].
    #[error("access file is {0} bytes, more than the {ACCESS_FILE_MAX_BYTES} allowed")]
    TooLarge(usize),
    /// Not valid JSON of this shape.
    #[error("access file is malformed")]
    Malformed(#[source] serde_json::Error),
    /// A version this code does not understand.
    #[error("access file version {found} is not supported (expected {ACCESS_FILE_VERSION})")]
    UnsupportedVersion {
        /// The version found in the file.
        found: u32,
    },
    /// Parsed but nobody could log in with it, or a name is unusable.
    #[error("access file is invalid: {0}")]
    Invalid(String),
}

impl AccessFile {
    /// Parses and validates the JSON text of an access file.
    pub fn from_json(text: &str) -> Result<Self, AccessFileError> {
        if text.len() > ACCESS_FILE_MAX_BYTES {
            return Err(AccessFileError::TooLarge(text.len()));
        }
        let file: AccessFile = serde_json::from_str(text).map_err(AccessFileError::Malformed)?;
        if file.version != ACCESS_FILE_VERSION {
            return Err(AccessFileError::UnsupportedVersion {
                found: file.version,
            });
        }
        file.validate()?;
        Ok(file)
    }

    /// Renders the JSON text written into the VM (pretty, one field a line, so
    /// an operator reading it inside the VM sees who may log in).
    pub fn to_json(&self) -> Result<String, AccessFileError> {
        self.validate()?;
        let mut text = serde_json::to_string_pretty(self).map_err(AccessFileError::Malformed)?;
        text.push('\n');
        Ok(text)
    }

    fn validate(&self) -> Result<(), AccessFileError> {
        crate::validate::dns_label(&self.machine)
            .map_err(|e| AccessFileError::Invalid(format!("machine: {e}")))?;
        if self.wallets.is_empty() {
            return Err(AccessFileError::Invalid(
                "wallets: at least one wallet is required".into(),
            ));
        }
        if self.users.is_empty() {
            return Err(AccessFileError::Invalid(
                "users: at least one Unix user is required".into(),
            ));
        }
        for u in &self.users {
            crate::validate::unix_user(u)
                .map_err(|e| AccessFileError::Invalid(format!("users: {e}")))?;
        }
        if let Some(url) = &self.signing_url
            && !(url.starts_with("https://") || url.starts_with("http://"))
        {
            return Err(AccessFileError::Invalid(
                "signing_url: must be an http(s) URL".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> AccessFile {
        AccessFile {
            version: 1,
            machine: "blockhost-007".into(),
            chain_id: 31337,
            nft_token_id: Some(3),
            wallets: vec![
                "0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266"
                    .parse()
                    .unwrap(),
            ],
            users: vec!["user".into()],
            signing_url: Some("https://127.0.0.1:8443/".into()),
        }
    }

    #[test]
    fn round_trips_through_json() {
        let text = sample().to_json().unwrap();
        assert!(text.contains("\"machine\": \"blockhost-007\""), "{text}");
        assert_eq!(AccessFile::from_json(&text).unwrap(), sample());
    }

    #[test]
    fn rejects_unknown_fields_versions_and_empty_lists() {
        let text = sample().to_json().unwrap();
        let extra = text.replacen('{', "{\"extra\": 1,", 1);
        assert!(matches!(
            AccessFile::from_json(&extra),
            Err(AccessFileError::Malformed(_))
        ));
        assert!(matches!(
            AccessFile::from_json(&format!("{text} trailing")),
            Err(AccessFileError::Malformed(_))
        ));
        let v2 = text.replace("\"version\": 1", "\"version\": 2");
        assert_ne!(v2, text);
        assert!(matches!(
            AccessFile::from_json(&v2),
            Err(AccessFileError::UnsupportedVersion { found: 2 })
        ));
        let mut empty = sample();
        empty.wallets.clear();
        assert!(empty.to_json().is_err());
        let mut bad_user = sample();
        bad_user.users = vec!["root;rm".into()];
        assert!(bad_user.to_json().is_err());
        assert!(matches!(
            AccessFile::from_json(&" ".repeat(ACCESS_FILE_MAX_BYTES + 1)),
            Err(AccessFileError::TooLarge(_))
        ));
    }
}
