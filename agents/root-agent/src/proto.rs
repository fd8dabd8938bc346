//! The root agent's wire protocol, shared by the agent and its client.
//!
//! One request per connection, framed as in the original: a 4-byte big-endian
//! length, then that many bytes of JSON `{"action": …, "params": {…}}`; the answer
//! is framed the same way, `{"ok": true, …}` or `{"ok": false, "error": "…"}`.
//! Unlike the original (10 MiB, 10 s) a request is at most [`MAX_REQUEST`] bytes
//! and must arrive whole within [`READ_TIMEOUT`]: no action needs more, and a
//! caller that trickles bytes must not hold a connection slot.
//!
//! Every action has a typed parameter struct that refuses unknown fields and
//! checks each value when parsed, so the handlers only ever see valid input.

use std::collections::BTreeSet;
use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use blockhost_crd::Vmid;
use blockhost_crd::config::FirewallConfig;
use blockhost_crd::config::firewall::Port;
use serde::{Deserialize, Deserializer, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Largest request body accepted, in bytes.
pub const MAX_REQUEST: u32 = 64 * 1024;
/// Largest answer a client accepts (a status lists every open knock).
pub const MAX_RESPONSE: u32 = 4 * 1024 * 1024;
/// A request must arrive whole within this time.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Most ports one knock may name.
pub const MAX_KNOCK_PORTS: usize = 8;
/// Longest knock, in seconds (the original's clamp).
pub const MAX_KNOCK_SECS: u32 = 3600;

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The peer closed the connection early.
    #[error("the connection closed before a whole message arrived")]
    Truncated,
    /// The announced length is over the limit.
    #[error("a message of {len} bytes is over the {max}-byte limit")]
    TooLarge {
        /// Announced length.
        len: u32,
        /// The limit.
        max: u32,
    },
    /// A zero length.
    #[error("an empty message (length 0)")]
    Empty,
    /// Reading failed.
    #[error("reading the message failed")]
    Io(#[source] std::io::Error),
}

/// Prefixes `body` with its 4-byte big-endian length.
pub fn encode_frame(body: &[u8]) -> Vec<u8> {
    let len = u32::try_from(body.len()).unwrap_or(u32::MAX);
    let mut out = Vec::with_capacity(body.len() + 4);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// Splits one frame off the front of `buf`: the body and what follows it.
/// The pure twin of [`read_frame`] (the fuzz target drives it).
pub fn decode_frame(buf: &[u8], max: u32) -> Result<(&[u8], &[u8]), FrameError> {
    let Some((head, rest)) = buf.split_first_chunk::<4>() else {
        return Err(FrameError::Truncated);
    };
    let len = check_len(u32::from_be_bytes(*head), max)?;
    if rest.len() < len {
        return Err(FrameError::Truncated);
    }
    Ok(rest.split_at(len))
}

fn check_len(len: u32, max: u32) -> Result<usize, FrameError> {
    if len == 0 {
        return Err(FrameError::Empty);
    }
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    usize::try_from(len).map_err(|_| FrameError::TooLarge { len, max })
}

/// Reads one frame of at most `max` bytes. The caller bounds the time.
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R, max: u32) -> Result<Vec<u8>, FrameError> {
    let mut head = [0u8; 4];
    r.read_exact(&mut head).await.map_err(eof_is_truncated)?;
    let len = check_len(u32::from_be_bytes(head), max)?;
    // Allocated only after the length passed the limit.
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await.map_err(eof_is_truncated)?;
    Ok(body)
}

fn eof_is_truncated(e: std::io::Error) -> FrameError {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        FrameError::Truncated
    } else {
        FrameError::Io(e)
    }
}

/// Writes one frame.
pub async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, body: &[u8]) -> std::io::Result<()> {
    w.write_all(&encode_frame(body)).await?;
    w.flush().await
}

/// A request: an action and its parameters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    tag = "action",
    content = "params",
    rename_all = "kebab-case",
    deny_unknown_fields
)]
pub enum Request {
    /// Install (or update in place) the host firewall; open knocks are kept.
    FirewallApply(FirewallConfig),
    /// Compare the firewall in force with this configuration; list open knocks.
    FirewallVerify(FirewallConfig),
    /// Open management ports to a source (or to any source) for a while.
    KnockAdd(KnockAdd),
    /// Close a knock before its time.
    KnockRemove(KnockRemove),
    /// Turn bridge port isolation of a VM's network interface on or off.
    BridgeIsolate(BridgePort),
}

impl Request {
    /// Parses a request body.
    pub fn parse(body: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(body)
    }
    /// The action's name, for logs.
    pub fn action(&self) -> &'static str {
        match self {
            Request::FirewallApply(_) => "firewall-apply",
            Request::FirewallVerify(_) => "firewall-verify",
            Request::KnockAdd(_) => "knock-add",
            Request::KnockRemove(_) => "knock-remove",
            Request::BridgeIsolate(_) => "bridge-isolate",
        }
    }
}

/// `knock-add`: open `ports` to `source` (absent: any source) for `durationSecs`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KnockAdd {
    /// The admin's address; absent: any source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<KnockSource>,
    /// The ports to open (the firewall opens only its `knockTcpPorts`).
    pub ports: KnockPorts,
    /// How long, 1–3600 s; the kernel closes the knock by itself afterwards.
    pub duration_secs: KnockDuration,
}

/// `knock-remove`: close `ports` for `source` (absent: the any-source knock).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KnockRemove {
    /// The address the knock was opened for; absent: the any-source knock.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<KnockSource>,
    /// The ports to close.
    pub ports: KnockPorts,
}

/// A knock's source address: a unicast IPv4 or IPv6 address that is not loopback
/// (loopback needs no knock). IPv4-mapped IPv6 is read as the IPv4 address, since
/// that is what the firewall sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct KnockSource(IpAddr);

impl KnockSource {
    /// Checks the address.
    pub fn new(a: IpAddr) -> Result<Self, String> {
        let a = a.to_canonical();
        if a.is_unspecified() || a.is_multicast() || a.is_loopback() {
            return Err(format!(
                "{a} cannot be a knock's source (unspecified, multicast or loopback); omit source for any source"
            ));
        }
        if let IpAddr::V4(v4) = a
            && v4.is_broadcast()
        {
            return Err(format!("{a} is the broadcast address"));
        }
        Ok(Self(a))
    }
    /// The address.
    pub fn addr(self) -> IpAddr {
        self.0
    }
}

impl fmt::Display for KnockSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl<'de> Deserialize<'de> for KnockSource {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        KnockSource::new(IpAddr::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// 1–[`MAX_KNOCK_PORTS`] distinct ports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct KnockPorts(Vec<Port>);

impl KnockPorts {
    /// Checks the list.
    pub fn new(ports: Vec<Port>) -> Result<Self, String> {
        if ports.is_empty() || ports.len() > MAX_KNOCK_PORTS {
            return Err(format!(
                "a knock names 1 to {MAX_KNOCK_PORTS} ports, not {}",
                ports.len()
            ));
        }
        let distinct: BTreeSet<_> = ports.iter().collect();
        if distinct.len() != ports.len() {
            return Err("a knock names a port twice".into());
        }
        Ok(Self(ports))
    }
    /// The ports.
    pub fn ports(&self) -> &[Port] {
        &self.0
    }
}

impl<'de> Deserialize<'de> for KnockPorts {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        KnockPorts::new(Vec::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// A knock's duration, 1–[`MAX_KNOCK_SECS`] seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct KnockDuration(u32);

impl KnockDuration {
    /// Checks the bounds.
    pub fn new(secs: u32) -> Result<Self, String> {
        if (1..=MAX_KNOCK_SECS).contains(&secs) {
            Ok(Self(secs))
        } else {
            Err(format!(
                "a knock lasts 1 to {MAX_KNOCK_SECS} seconds, not {secs}"
            ))
        }
    }
    /// Clamps any number of seconds into the allowed range (what the daemon does
    /// with a command's `duration`).
    pub fn clamped(secs: u64) -> Self {
        Self(secs.clamp(1, u64::from(MAX_KNOCK_SECS)) as u32)
    }
    /// Seconds.
    pub const fn secs(self) -> u32 {
        self.0
    }
}

impl<'de> Deserialize<'de> for KnockDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        KnockDuration::new(u32::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// `bridge-isolate`: a VM's network interface `net<net>` on its bridge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BridgePort {
    /// The VM.
    pub vmid: Vmid,
    /// Its interface index (`net0` is 0), 0–31.
    pub net: NetIndex,
    /// Isolated ports cannot talk to each other, only to non-isolated ones (the uplink).
    pub isolated: bool,
}

/// A Proxmox network device index, 0–31.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct NetIndex(u8);

impl NetIndex {
    /// Checks the bound.
    pub fn new(i: u8) -> Result<Self, String> {
        if i <= 31 {
            Ok(Self(i))
        } else {
            Err(format!("net{i} does not exist: Proxmox has net0 to net31"))
        }
    }
    /// The index.
    pub const fn get(self) -> u8 {
        self.0
    }
}

impl<'de> Deserialize<'de> for NetIndex {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        NetIndex::new(u8::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// `firewall-apply`'s answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Applied {
    /// Rules in force.
    pub rules: u32,
    /// Whether open knocks survived (false when the table had to be rebuilt).
    pub knocks_kept: bool,
}

/// `firewall-verify`'s answer: the firewall in force and the open knocks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FirewallStatus {
    /// The table in force is exactly the one this configuration builds.
    pub in_force: bool,
    /// What differs, one sentence each (empty when `in_force`).
    pub problems: Vec<String>,
    /// The rules in force, as nftables lists them (empty when the table is absent).
    pub ruleset: String,
    /// Open knocks.
    pub knocks: Vec<OpenKnock>,
}

/// One open knock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OpenKnock {
    /// The admin's address; absent: any source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<IpAddr>,
    /// The TCP port.
    pub port: u16,
    /// The knock's whole duration, in seconds.
    pub timeout_secs: u64,
    /// Seconds left until the kernel closes it.
    pub expires_secs: u64,
}

/// `knock-add`'s answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KnockOpened {
    /// Seconds until it closes by itself.
    pub expires_secs: u32,
}

/// `bridge-isolate`'s answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Isolated {
    /// The bridge port that was set (`fwpr…p…` behind a Proxmox VM firewall, else `tap…i…`).
    pub interface: String,
    /// Its isolation flag as read back from the kernel.
    pub isolated: bool,
    /// The flag before this request set it: `Some(false)` on a port that was not
    /// isolated (new after a start, or cleared by someone); `None` when the
    /// kernel did not say (or from an agent older than this field).
    #[serde(default)]
    pub was_isolated: Option<bool>,
}

/// The body of a success answer: `{"ok": true, …result}`.
pub fn ok_body<T: Serialize>(result: &T) -> Vec<u8> {
    let mut v = serde_json::to_value(result).unwrap_or(serde_json::Value::Null);
    if !v.is_object() {
        v = serde_json::Value::Object(serde_json::Map::new());
    }
    if let Some(o) = v.as_object_mut() {
        o.insert("ok".into(), serde_json::Value::Bool(true));
    }
    serde_json::to_vec(&v).unwrap_or_else(|_| br#"{"ok":true}"#.to_vec())
}

/// The body of a refusal: `{"ok": false, "error": "…"}`.
pub fn error_body(error: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({"ok": false, "error": error}))
        .unwrap_or_else(|_| br#"{"ok":false,"error":"internal error"}"#.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_limits_hold() {
        let f = encode_frame(b"{}");
        assert_eq!(f, [0, 0, 0, 2, b'{', b'}']);
        assert_eq!(decode_frame(&f, 10).unwrap(), (&b"{}"[..], &b""[..]));
        assert!(matches!(
            decode_frame(&[0, 1, 0, 0], 1024),
            Err(FrameError::TooLarge { len: 65536, .. })
        ));
        assert!(matches!(
            decode_frame(&[0, 0, 0, 0], 10),
            Err(FrameError::Empty)
        ));
        assert!(matches!(
            decode_frame(&[0, 0, 0, 5, 1], 10),
            Err(FrameError::Truncated)
        ));
        assert!(matches!(
            decode_frame(&[0, 0], 10),
            Err(FrameError::Truncated)
        ));
    }

    #[tokio::test]
    async fn read_frame_refuses_before_allocating() {
        let mut r: &[u8] = &[0xff, 0xff, 0xff, 0xff];
        let err = read_frame(&mut r, MAX_REQUEST).await.unwrap_err();
        assert!(matches!(err, FrameError::TooLarge { .. }), "{err}");
        let mut r: &[u8] = &[0, 0, 0, 3, b'a'];
        assert!(matches!(
            read_frame(&mut r, MAX_REQUEST).await,
            Err(FrameError::Truncated)
        ));
    }

    #[test]
    fn requests_are_strict() {
        let ok = Request::parse(
            br#"{"action":"knock-add","params":{"source":"::ffff:10.0.0.2","ports":[22],"durationSecs":300}}"#,
        )
        .unwrap();
        let Request::KnockAdd(k) = ok else {
            panic!("{ok:?}")
        };
        assert_eq!(k.source.unwrap().to_string(), "10.0.0.2");
        for bad in [
            &br#"{"action":"shell","params":{"cmd":"id"}}"#[..],
            br#"{"action":"knock-add","params":{"ports":[22],"durationSecs":0}}"#,
            br#"{"action":"knock-add","params":{"ports":[22],"durationSecs":3601}}"#,
            br#"{"action":"knock-add","params":{"ports":[],"durationSecs":3}}"#,
            br#"{"action":"knock-add","params":{"ports":[22,22],"durationSecs":3}}"#,
            br#"{"action":"knock-add","params":{"ports":[22],"durationSecs":3,"x":1}}"#,
            br#"{"action":"knock-add","params":{"source":"127.0.0.1","ports":[22],"durationSecs":3}}"#,
            br#"{"action":"knock-add","params":{"source":"ff02::1","ports":[22],"durationSecs":3}}"#,
            br#"{"action":"knock-add","params":{"ports":[22],"durationSecs":3},"extra":1}"#,
            br#"{"action":"bridge-isolate","params":{"vmid":99,"net":0,"isolated":true}}"#,
            br#"{"action":"bridge-isolate","params":{"vmid":100,"net":32,"isolated":true}}"#,
            br#"{"action":"firewall-apply","params":{"vmBridges":["a b"]}}"#,
        ] {
            assert!(Request::parse(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn answers_carry_ok() {
        let v: serde_json::Value =
            serde_json::from_slice(&ok_body(&KnockOpened { expires_secs: 3 })).unwrap();
        assert_eq!(v, serde_json::json!({"ok": true, "expiresSecs": 3}));
        let v: serde_json::Value = serde_json::from_slice(&error_body("no")).unwrap();
        assert_eq!(v, serde_json::json!({"ok": false, "error": "no"}));
    }
}
