//! Connection limits of one listener (`api.connections`, `metrics.connections`,
//! `signup.connections`).
//!
//! Every field is optional; absent ones take the listener's default (listed
//! per field). The caps of all listeners plus 128 descriptors for the daemon
//! itself must fit under the open-file limit: the shipped unit sets
//! `LimitNOFILE=65536`, and the defaults (2048 + 32 + 256) fit many times
//! over. When they do not fit (a lower `ulimit -n`), the daemon raises its
//! soft limit to the hard one and, if still short, shrinks the caps at
//! start-up with a warning: the API socket keeps at least a quarter, so `bhctl`
//! keeps working while the public side is flooded.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Connection limits of a listener.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConnectionLimits {
    /// Connections open at once (1–1,000,000); more are closed on arrival while
    /// the open ones are served. Defaults: signup 2048, API socket 256,
    /// metrics 32.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "max"
    )]
    #[schemars(range(min = 1, max = 1000000))]
    pub max: Option<u32>,
    /// Connections one client may hold (an IPv4 address, or an IPv6 prefix of
    /// `clientIpv6Prefix` bits; 1–1,000,000). Defaults: signup 64, metrics
    /// none; the API socket has no client addresses.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "max"
    )]
    #[schemars(range(min = 1, max = 1000000))]
    pub per_client: Option<u32>,
    /// Seconds a connection may stay without a request in flight, HTTP/1 and
    /// HTTP/2 alike (1–3,600). Defaults: signup 30, API socket and metrics 120.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "secs"
    )]
    #[schemars(range(min = 1, max = 3600))]
    pub idle_timeout_secs: Option<u32>,
    /// Seconds for the TLS handshake and for each HTTP/1 request's headers
    /// (1–3,600; default 10).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "secs"
    )]
    #[schemars(range(min = 1, max = 3600))]
    pub header_timeout_secs: Option<u32>,
    /// HTTP/2 streams one connection may have open at once (1–1,000). Defaults:
    /// signup 32, API socket and metrics 64.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "streams"
    )]
    #[schemars(range(min = 1, max = 1000))]
    pub http2_max_streams: Option<u32>,
}

impl ConnectionLimits {
    /// Whether nothing is set (not written back when serialized).
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

fn ranged<'de, D: serde::Deserializer<'de>>(
    d: D,
    lo: u32,
    hi: u32,
) -> Result<Option<u32>, D::Error> {
    let n = u32::deserialize(d)?;
    if !(lo..=hi).contains(&n) {
        return Err(serde::de::Error::custom(format!(
            "{n} is out of range {lo}..={hi}"
        )));
    }
    Ok(Some(n))
}

fn max<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    ranged(d, 1, 1_000_000)
}

fn secs<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    ranged(d, 1, 3600)
}

fn streams<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    ranged(d, 1, 1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn optional_and_ranged() {
        let c: ConnectionLimits = serde_json::from_value(serde_json::json!({})).unwrap_or_default();
        assert!(c.is_default());
        let c: Result<ConnectionLimits, _> =
            serde_json::from_value(serde_json::json!({"max": 100, "idleTimeoutSecs": 5}));
        assert_eq!(c.ok().and_then(|c| c.max), Some(100));
        for bad in [
            serde_json::json!({"max": 0}),
            serde_json::json!({"idleTimeoutSecs": 0}),
            serde_json::json!({"http2MaxStreams": 5000}),
            serde_json::json!({"maxConnections": 5}),
        ] {
            assert!(
                serde_json::from_value::<ConnectionLimits>(bad.clone()).is_err(),
                "{bad}"
            );
        }
    }
}
