//! Admin commands over the chain ("port knocking"), compatible with the original.
//!
//! The admin wallet sends a transaction (0 value, to itself by default) whose
//! input data is ECIES-encrypted to the server key, in the original's layout —
//! not eciesjs's:
//!
//! `ephemeral public key (65, uncompressed) || IV (12) || ciphertext || tag (16)`,
//! key = HKDF-SHA256(ikm = x-coordinate of the ECDH shared point, zero salt,
//! empty info, 32 bytes), AES-256-GCM.
//!
//! The plaintext is JSON `{"command": "<configured name>", "params": {"ports"?,
//! "duration"?, "source"?}, "nonce": "<uuid>", "timestamp": <unix seconds>}`.
//!
//! [`check`] turns a transaction's sender and data into a [`Verdict`] with the
//! original's rules: the sender is the admin wallet, the data decrypts, the
//! command is at most 300 s old and at most 60 s in the future, its name is the
//! configured one; `knock` ports must be in the allowlist (default 22), the
//! duration is clamped to 1–3600 s, the source (IPv4 or IPv6) is optional. Whether
//! the nonce was seen before is the store's question (it records nonces in the
//! same transaction as the block cursor), so it is not decided here.

use std::net::IpAddr;

use aes_gcm::aead::{AeadInPlace, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce, Tag};
use hkdf::Hkdf;
use k256::elliptic_curve::sec1::ToEncodedPoint;
use k256::{PublicKey, SecretKey};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::ecies::EciesError;

/// Length of the ephemeral public key.
pub const EPHEMERAL_KEY_LEN: usize = 65;
/// AES-GCM IV length in the admin layout.
pub const IV_LEN: usize = 12;
/// AES-GCM tag length.
pub const TAG_LEN: usize = 16;
/// Bytes beyond the plaintext.
pub const OVERHEAD: usize = EPHEMERAL_KEY_LEN + IV_LEN + TAG_LEN;
/// Oldest command accepted, in seconds.
pub const MAX_AGE_SECS: i64 = 300;
/// Furthest in the future a command may be dated (clock skew), in seconds.
pub const MAX_FUTURE_SECS: i64 = 60;
/// Longest knock, in seconds.
pub const MAX_KNOCK_SECS: u64 = 3600;
/// Largest plaintext considered (a command is a few hundred bytes).
pub const MAX_PLAINTEXT: usize = 4096;

fn cipher(secret: &SecretKey, public: &PublicKey) -> Result<Aes256Gcm, EciesError> {
    let shared = (public.to_projective() * *secret.to_nonzero_scalar()).to_affine();
    let point = shared.to_encoded_point(false);
    let x = point.x().ok_or(EciesError::InvalidEphemeralKey)?;
    let mut key = [0u8; 32];
    // A zero salt of hash length is what HKDF uses when none is given.
    Hkdf::<Sha256>::new(Some(&[0u8; 32]), x)
        .expand(&[], &mut key)
        .map_err(|_| EciesError::EncryptionFailed)?;
    Aes256Gcm::new_from_slice(&key).map_err(|_| EciesError::EncryptionFailed)
}

/// Encrypts a command to the server key in the admin layout.
pub fn encrypt(receiver: &PublicKey, plaintext: &[u8]) -> Result<Vec<u8>, EciesError> {
    let mut rng = rand::rngs::OsRng;
    let ephemeral = SecretKey::random(&mut rng);
    let mut iv = [0u8; IV_LEN];
    rng.fill_bytes(&mut iv);
    let c = cipher(&ephemeral, receiver)?;
    let mut out = Vec::with_capacity(OVERHEAD + plaintext.len());
    out.extend_from_slice(ephemeral.public_key().to_encoded_point(false).as_bytes());
    out.extend_from_slice(&iv);
    out.extend_from_slice(plaintext);
    let tag = c
        .encrypt_in_place_detached(
            Nonce::from_slice(&iv),
            b"",
            &mut out[EPHEMERAL_KEY_LEN + IV_LEN..],
        )
        .map_err(|_| EciesError::EncryptionFailed)?;
    out.extend_from_slice(&tag);
    Ok(out)
}

/// Decrypts a command in the admin layout.
pub fn decrypt(receiver: &SecretKey, message: &[u8]) -> Result<Vec<u8>, EciesError> {
    if message.len() < OVERHEAD {
        return Err(EciesError::TooShort { len: message.len() });
    }
    let (eph, rest) = message.split_at(EPHEMERAL_KEY_LEN);
    let (iv, rest) = rest.split_at(IV_LEN);
    let (ciphertext, tag) = rest.split_at(rest.len() - TAG_LEN);
    if eph[0] != 0x04 {
        return Err(EciesError::InvalidEphemeralKey);
    }
    let eph = PublicKey::from_sec1_bytes(eph).map_err(|_| EciesError::InvalidEphemeralKey)?;
    let c = cipher(receiver, &eph)?;
    let mut plain = ciphertext.to_vec();
    c.decrypt_in_place_detached(Nonce::from_slice(iv), b"", &mut plain, Tag::from_slice(tag))
        .map_err(|_| EciesError::DecryptionFailed)?;
    Ok(plain)
}

/// The command as sent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Command {
    /// The configured (secret) command name.
    pub command: String,
    /// Its parameters.
    #[serde(default)]
    pub params: KnockParams,
    /// Unique per command (a UUID in the original); replays are refused.
    pub nonce: String,
    /// When it was made, Unix seconds.
    pub timestamp: i64,
}

/// `knock`'s parameters as sent (loosely typed, as the original's senders write them).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct KnockParams {
    /// Ports to open; absent: the default (22).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<Vec<u64>>,
    /// Seconds; absent: the policy's default. Clamped to 1–3600.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<u64>,
    /// The admin's address; absent: any source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

/// What the operator configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// The admin wallet (20 bytes).
    pub admin: [u8; 20],
    /// The command name that means `knock`.
    pub knock_command: String,
    /// Ports a knock may open.
    pub allowed_ports: Vec<u16>,
    /// Ports opened when a command names none.
    pub default_ports: Vec<u16>,
    /// Duration when a command names none, in seconds.
    pub default_duration: u64,
}

/// An accepted knock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Knock {
    /// The command's nonce (the store records it before anything runs).
    pub nonce: String,
    /// Ports to open (each in the allowlist).
    pub ports: Vec<u16>,
    /// Seconds, 1–3600.
    pub duration_secs: u32,
    /// The admin's address; `None`: any source.
    pub source: Option<IpAddr>,
    /// The command's timestamp.
    pub timestamp: i64,
}

/// Why a command was refused; the event reason and the metric label.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The sender is not the admin wallet.
    #[error("sent by {0}, not the admin wallet")]
    OtherWallet(String),
    /// The data does not decrypt with the server key.
    #[error("the data does not decrypt with the server key (not a command, or for another server)")]
    Undecryptable,
    /// It decrypts but is not a command.
    #[error("the decrypted data is not a command: {0}")]
    Malformed(String),
    /// Too old.
    #[error("the command is {0} s old; at most {MAX_AGE_SECS} s is accepted")]
    Stale(i64),
    /// Dated in the future.
    #[error(
        "the command is dated {0} s in the future; at most {MAX_FUTURE_SECS} s is accepted (check the sender's clock)"
    )]
    Future(i64),
    /// Not the configured command name.
    #[error("unknown command name")]
    UnknownCommand,
    /// The nonce was seen before.
    #[error("nonce already used: a replayed command")]
    Replayed,
    /// Ports or source are not acceptable.
    #[error("bad parameters: {0}")]
    BadParams(String),
}

impl Refusal {
    /// A short label for metrics and event reasons.
    pub fn label(&self) -> &'static str {
        match self {
            Refusal::OtherWallet(_) => "OtherWallet",
            Refusal::Undecryptable => "Undecryptable",
            Refusal::Malformed(_) => "Malformed",
            Refusal::Stale(_) => "Stale",
            Refusal::Future(_) => "Future",
            Refusal::UnknownCommand => "UnknownCommand",
            Refusal::Replayed => "Replayed",
            Refusal::BadParams(_) => "BadParams",
        }
    }
}

/// Decides on one transaction from `from` carrying `data`, at time `now` (Unix s).
/// The nonce's novelty is checked by the caller.
pub fn check(
    policy: &Policy,
    server: &SecretKey,
    from: [u8; 20],
    data: &[u8],
    now: i64,
) -> Result<Knock, Refusal> {
    if from != policy.admin {
        return Err(Refusal::OtherWallet(format!("0x{}", hex::encode(from))));
    }
    let plain = decrypt(server, data).map_err(|_| Refusal::Undecryptable)?;
    if plain.len() > MAX_PLAINTEXT {
        return Err(Refusal::Malformed(format!(
            "{} bytes is too long",
            plain.len()
        )));
    }
    let cmd: Command =
        serde_json::from_slice(&plain).map_err(|e| Refusal::Malformed(e.to_string()))?;
    let age = now.saturating_sub(cmd.timestamp);
    if age > MAX_AGE_SECS {
        return Err(Refusal::Stale(age));
    }
    if -age > MAX_FUTURE_SECS {
        return Err(Refusal::Future(-age));
    }
    // Constant time is not needed: the name is only reachable through a valid
    // ciphertext to the server key sent by the admin wallet.
    if cmd.command != policy.knock_command {
        return Err(Refusal::UnknownCommand);
    }
    if cmd.nonce.is_empty() || cmd.nonce.len() > 128 {
        return Err(Refusal::Malformed(
            "the nonce must be 1-128 characters".into(),
        ));
    }
    let ports = knock_ports(policy, cmd.params.ports.as_deref())?;
    let duration = cmd
        .params
        .duration
        .unwrap_or(policy.default_duration)
        .clamp(1, MAX_KNOCK_SECS);
    let source = knock_source(cmd.params.source.as_deref())?;
    Ok(Knock {
        nonce: cmd.nonce,
        ports,
        duration_secs: u32::try_from(duration).unwrap_or(3600),
        source,
        timestamp: cmd.timestamp,
    })
}

/// The ports a knock opens: the policy's defaults, or the requested ones when
/// each is allowed (duplicates folded).
fn knock_ports(policy: &Policy, requested: Option<&[u64]>) -> Result<Vec<u16>, Refusal> {
    let ports = match requested {
        None => policy.default_ports.clone(),
        Some(ps) => {
            let mut out = Vec::new();
            for &p in ps {
                let port = u16::try_from(p)
                    .ok()
                    .filter(|p| policy.allowed_ports.contains(p))
                    .ok_or_else(|| {
                        Refusal::BadParams(format!(
                            "port {p} is not one a knock may open ({:?})",
                            policy.allowed_ports
                        ))
                    })?;
                if !out.contains(&port) {
                    out.push(port);
                }
            }
            out
        }
    };
    if ports.is_empty() {
        return Err(Refusal::BadParams("no port to open".into()));
    }
    Ok(ports)
}

/// The client address a knock is limited to, if it names one: never an address
/// that cannot be a client (unspecified, multicast, loopback).
fn knock_source(source: Option<&str>) -> Result<Option<IpAddr>, Refusal> {
    match source {
        None | Some("") => Ok(None),
        Some(s) => {
            let a: IpAddr = s
                .parse()
                .map_err(|_| Refusal::BadParams(format!("source {s:?} is not an IP address")))?;
            let a = a.to_canonical();
            if a.is_unspecified() || a.is_multicast() || a.is_loopback() {
                return Err(Refusal::BadParams(format!(
                    "source {a} cannot be a client address"
                )));
            }
            Ok(Some(a))
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// anvil's dev account 0 key: a well-known test key, never a real secret.
    const ANVIL0: &str = "ac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80";

    fn server() -> SecretKey {
        crate::ecies::parse_secret_key(&hex::decode(ANVIL0).unwrap()).unwrap()
    }

    fn policy() -> Policy {
        Policy {
            admin: [7; 20],
            knock_command: "open-sesame".into(),
            allowed_ports: vec![22, 8006],
            default_ports: vec![22],
            default_duration: 300,
        }
    }

    fn tx(json: &str) -> Vec<u8> {
        encrypt(&server().public_key(), json.as_bytes()).unwrap()
    }

    #[test]
    fn layout_round_trips() {
        let m = tx("{}");
        assert_eq!(m.len(), OVERHEAD + 2);
        assert_eq!(m[0], 0x04);
        assert_eq!(decrypt(&server(), &m).unwrap(), b"{}");
        let mut bad = m.clone();
        bad[70] ^= 1;
        assert!(decrypt(&server(), &bad).is_err());
        // The eciesjs layout (16-byte nonce first) does not decrypt here.
        let other = crate::ecies::encrypt(&server().public_key(), b"{}").unwrap();
        assert!(decrypt(&server(), &other).is_err());
    }

    #[test]
    fn rules_of_the_original() {
        let now = 1_800_000_000;
        let ok = |t: i64, params: &str| {
            tx(&format!(
                r#"{{"command":"open-sesame","params":{params},"nonce":"n-{t}","timestamp":{t}}}"#
            ))
        };
        let k = check(&policy(), &server(), [7; 20], &ok(now, "{}"), now).unwrap();
        assert_eq!(
            (k.ports.clone(), k.duration_secs, k.source),
            (vec![22], 300, None)
        );
        let k = check(
            &policy(),
            &server(),
            [7; 20],
            &ok(
                now - 300,
                r#"{"ports":[8006,22],"duration":99999,"source":"2001:db8::7"}"#,
            ),
            now,
        )
        .unwrap();
        assert_eq!((k.ports, k.duration_secs), (vec![8006, 22], 3600));
        assert_eq!(k.source, Some("2001:db8::7".parse().unwrap()));
        let d0 = check(
            &policy(),
            &server(),
            [7; 20],
            &ok(now, r#"{"duration":0}"#),
            now,
        )
        .unwrap();
        assert_eq!(d0.duration_secs, 1);

        let refused = |from: [u8; 20], data: &[u8]| {
            check(&policy(), &server(), from, data, now)
                .unwrap_err()
                .label()
        };
        assert_eq!(refused([8; 20], &ok(now, "{}")), "OtherWallet");
        assert_eq!(refused([7; 20], b"garbage"), "Undecryptable");
        assert_eq!(refused([7; 20], &tx("not json")), "Malformed");
        assert_eq!(refused([7; 20], &ok(now - 301, "{}")), "Stale");
        assert_eq!(refused([7; 20], &ok(now + 61, "{}")), "Future");
        assert!(check(&policy(), &server(), [7; 20], &ok(now + 60, "{}"), now).is_ok());
        assert_eq!(
            refused(
                [7; 20],
                &tx(&format!(
                    r#"{{"command":"other","nonce":"x","timestamp":{now}}}"#
                ))
            ),
            "UnknownCommand"
        );
        assert_eq!(
            refused([7; 20], &ok(now, r#"{"ports":[3306]}"#)),
            "BadParams"
        );
        assert_eq!(
            refused([7; 20], &ok(now, r#"{"source":"localhost"}"#)),
            "BadParams"
        );
        assert_eq!(
            refused([7; 20], &ok(now, r#"{"source":"0.0.0.0"}"#)),
            "BadParams"
        );
    }
}
