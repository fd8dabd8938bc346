//! EIP-4361 (Sign-In with Ethereum) login messages: building the one the module shows,
//! parsing one back (the CLI and tests need to know what they are signing), and
//! finding one inside a keyboard-interactive prompt.
//!
//! Why SIWE rather than a bare "code: 1234" text: wallets recognise the format and
//! render it as a login request for a named domain, and every field the module
//! checks (address, chain, nonce, expiry) is visible to the person signing.
//!
//! Only the fields BlockHost emits are supported (no `Not Before`, `Request ID` or
//! `Resources`); a parser that accepts exactly what we write is stricter than one
//! that accepts the whole grammar.

use std::fmt;

use blockhost_access::WalletAddress;
use chrono::{DateTime, SecondsFormat, Utc};

/// The line that follows the domain in every SIWE message.
const HEADER_TAIL: &str = " wants you to sign in with your Ethereum account:";

/// Marker lines around the message in the login prompt, so that people and scripts
/// can take exactly the signed bytes out of a terminal or an askpass argument.
pub const BEGIN_MARKER: &str = "----- BEGIN SIGN-IN MESSAGE -----";
/// See [`BEGIN_MARKER`].
pub const END_MARKER: &str = "----- END SIGN-IN MESSAGE -----";

/// Largest message text [`SiweMessage::parse`] accepts. A BlockHost message is about
/// 400 bytes; the bound keeps hostile input (CLI stdin, askpass argv) cheap.
pub const MESSAGE_MAX: usize = 4096;

/// A Sign-In-with-Ethereum message, as BlockHost uses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SiweMessage {
    /// RFC 3986 authority asking for the signature: the machine name.
    pub domain: String,
    /// The wallet expected to sign.
    pub address: WalletAddress,
    /// Human-readable statement (one line).
    pub statement: String,
    /// RFC 3986 URI naming what is being logged into (`ssh://user@machine`).
    pub uri: String,
    /// EIP-155 chain id.
    pub chain_id: u64,
    /// Random nonce, at least 8 alphanumeric characters.
    pub nonce: String,
    /// When the challenge was made.
    pub issued_at: DateTime<Utc>,
    /// When it stops being accepted.
    pub expiration_time: DateTime<Utc>,
}

/// Why a text is not a message this module would have written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SiweError {
    /// Longer than [`MESSAGE_MAX`].
    #[error("message is {0} bytes, more than {MESSAGE_MAX}")]
    TooLong(usize),
    /// A line is missing or not where EIP-4361 puts it.
    #[error("line {line}: expected {expected}")]
    Layout {
        /// 1-based line number.
        line: usize,
        /// What should be there.
        expected: &'static str,
    },
    /// The address line is not a valid EIP-55 address.
    #[error("invalid address")]
    Address(#[source] blockhost_access::WalletError),
    /// A field value is unusable.
    #[error("invalid {field}: {reason}")]
    Field {
        /// Field name as written in the message.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
}

impl SiweMessage {
    /// The exact text to sign: lines joined by `\n`, no trailing newline.
    pub fn to_text(&self) -> String {
        self.to_string()
    }

    /// Parses a message in the layout [`SiweMessage::to_text`] produces.
    pub fn parse(text: &str) -> Result<Self, SiweError> {
        if text.len() > MESSAGE_MAX {
            return Err(SiweError::TooLong(text.len()));
        }
        let lines: Vec<&str> = text.split('\n').collect();
        let line = |i: usize, expected: &'static str| {
            lines.get(i).copied().ok_or(SiweError::Layout {
                line: i + 1,
                expected,
            })
        };
        let field = |i: usize, prefix: &'static str| -> Result<&str, SiweError> {
            line(i, prefix)?
                .strip_prefix(prefix)
                .ok_or(SiweError::Layout {
                    line: i + 1,
                    expected: prefix,
                })
        };
        let domain = line(0, "the header")?
            .strip_suffix(HEADER_TAIL)
            .ok_or(SiweError::Layout {
                line: 1,
                expected: "\"<domain> wants you to sign in with your Ethereum account:\"",
            })?;
        if domain.is_empty() || domain.contains(char::is_whitespace) {
            return Err(SiweError::Field {
                field: "domain",
                reason: "must be a non-empty authority".into(),
            });
        }
        let address_text = line(1, "the address")?;
        let address: WalletAddress = address_text.parse().map_err(SiweError::Address)?;
        if address.to_checksum() != address_text {
            // EIP-4361 requires the EIP-55 checksummed spelling.
            return Err(SiweError::Field {
                field: "address",
                reason: "must be written EIP-55 checksummed".into(),
            });
        }
        if !line(2, "an empty line")?.is_empty() || !line(4, "an empty line")?.is_empty() {
            return Err(SiweError::Layout {
                line: 3,
                expected: "an empty line around the statement",
            });
        }
        let statement = line(3, "the statement")?;
        let uri = field(5, "URI: ")?;
        if field(6, "Version: ")? != "1" {
            return Err(SiweError::Field {
                field: "Version",
                reason: "only version 1 exists".into(),
            });
        }
        let chain_id = field(7, "Chain ID: ")?
            .parse::<u64>()
            .map_err(|e| SiweError::Field {
                field: "Chain ID",
                reason: e.to_string(),
            })?;
        let nonce = field(8, "Nonce: ")?;
        if nonce.len() < 8 || !nonce.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(SiweError::Field {
                field: "Nonce",
                reason: "must be at least 8 alphanumeric characters".into(),
            });
        }
        let time = |i: usize, name: &'static str| -> Result<DateTime<Utc>, SiweError> {
            DateTime::parse_from_rfc3339(field(i, name)?)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|e| SiweError::Field {
                    field: name,
                    reason: e.to_string(),
                })
        };
        let issued_at = time(9, "Issued At: ")?;
        let expiration_time = time(10, "Expiration Time: ")?;
        if lines.len() != 11 {
            return Err(SiweError::Layout {
                line: 12,
                expected: "the end of the message",
            });
        }
        Ok(Self {
            domain: domain.to_owned(),
            address,
            statement: statement.to_owned(),
            uri: uri.to_owned(),
            chain_id,
            nonce: nonce.to_owned(),
            issued_at,
            expiration_time,
        })
    }
}

impl fmt::Display for SiweMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ts = |t: &DateTime<Utc>| t.to_rfc3339_opts(SecondsFormat::Secs, true);
        write!(
            f,
            "{domain}{HEADER_TAIL}\n{address}\n\n{statement}\n\nURI: {uri}\nVersion: 1\n\
             Chain ID: {chain}\nNonce: {nonce}\nIssued At: {iat}\nExpiration Time: {exp}",
            domain = self.domain,
            address = self.address.to_checksum(),
            statement = self.statement,
            uri = self.uri,
            chain = self.chain_id,
            nonce = self.nonce,
            iat = ts(&self.issued_at),
            exp = ts(&self.expiration_time),
        )
    }
}

/// Finds the message between [`BEGIN_MARKER`] and [`END_MARKER`] in a prompt (as
/// sshd relays it, possibly with a `(user@host)` prefix and other lines around it).
pub fn extract_from_prompt(prompt: &str) -> Option<&str> {
    let start = prompt.find(BEGIN_MARKER)? + BEGIN_MARKER.len();
    let rest = prompt[start..].strip_prefix('\n')?;
    let end = rest.find(END_MARKER)?;
    rest[..end].strip_suffix('\n')
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn sample() -> SiweMessage {
        SiweMessage {
            domain: "blockhost-007".into(),
            address: "0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266"
                .parse()
                .unwrap(),
            statement: "Log in to blockhost-007 as Unix user alice.".into(),
            uri: "ssh://alice@blockhost-007".into(),
            chain_id: 31337,
            nonce: "0123456789abcdef0123456789abcdef".into(),
            issued_at: "2026-11-25T18:00:00Z".parse().unwrap(),
            expiration_time: "2026-11-25T18:05:00Z".parse().unwrap(),
        }
    }

    const SAMPLE_TEXT: &str = "blockhost-007 wants you to sign in with your Ethereum account:
0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266

Log in to blockhost-007 as Unix user alice.

URI: ssh://alice@blockhost-007
Version: 1
Chain ID: 31337
Nonce: 0123456789abcdef0123456789abcdef
Issued At: 2026-11-25T18:00:00Z
Expiration Time: 2026-11-25T18:05:00Z";

    #[test]
    fn renders_the_eip4361_layout() {
        assert_eq!(sample().to_text(), SAMPLE_TEXT);
    }

    #[test]
    fn parses_what_it_renders() {
        assert_eq!(SiweMessage::parse(SAMPLE_TEXT).unwrap(), sample());
    }

    #[test]
    fn refuses_altered_layouts() {
        let cases = [
            SAMPLE_TEXT.replace(" wants you", " asks you"),
            SAMPLE_TEXT.replace(
                "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266",
                "0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266",
            ),
            SAMPLE_TEXT.replace("Version: 1", "Version: 2"),
            SAMPLE_TEXT.replace("Chain ID: 31337", "Chain ID: x"),
            SAMPLE_TEXT.replace("Nonce: 0123456789abcdef0123456789abcdef", "Nonce: short"),
            SAMPLE_TEXT.replace("2026-11-25T18:05:00Z", "tomorrow"),
            format!("{SAMPLE_TEXT}\nResources:"),
            SAMPLE_TEXT.replace("\n\nURI", "\nURI"),
            SAMPLE_TEXT[..100].to_string(),
            String::new(),
            "x".repeat(MESSAGE_MAX + 1),
        ];
        for c in cases {
            assert!(SiweMessage::parse(&c).is_err(), "accepted: {c:?}");
        }
    }

    #[test]
    fn extracts_from_a_prompt() {
        let prompt = format!(
            "(alice@127.0.0.1) Sign this:\n{BEGIN_MARKER}\n{SAMPLE_TEXT}\n{END_MARKER}\nURL: x\nSignature: "
        );
        assert_eq!(extract_from_prompt(&prompt), Some(SAMPLE_TEXT));
        assert_eq!(extract_from_prompt("no markers"), None);
        assert_eq!(extract_from_prompt(&format!("{BEGIN_MARKER}\nabc")), None);
    }
}
