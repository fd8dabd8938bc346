//! The `signup` section of `blockhostd`'s configuration: where the public signup
//! page and its status endpoint are served, with which certificate, and which
//! RPC URL the buyers' browsers use.
//!
//! Absent section: no signup page. The page needs the chain section (contract
//! addresses, chain id, server key, public secret), so `signup` without `chain`
//! is refused by [`crate::DaemonConfig::validate`].

use std::net::SocketAddr;
use std::path::PathBuf;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The public signup page.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SignupConfig {
    /// Address to serve the page on, e.g. `0.0.0.0:443` (HTTPS with a certificate)
    /// or `127.0.0.1:8080` behind a reverse proxy.
    pub listen: SocketAddr,
    /// PEM certificate chain; with `tlsKey`, the page is served over HTTPS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tlsCert` (mode 0600).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
    /// The JSON-RPC URL buyers' browsers read the chain from (it is also the only
    /// other origin the page may connect to). It is published (in `config.json`
    /// and the CSP header), so it must carry no credentials. Absent: the first
    /// `chain.rpcUrls`, which is refused when that URL carries credentials or
    /// may (user:password, an API-key path or query): set a public URL here.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "rpc_url"
    )]
    pub rpc_url: Option<String>,
    /// Status requests one client address may make per minute (1–10,000); more
    /// are answered 429.
    #[serde(default = "default_rate", deserialize_with = "rate")]
    #[schemars(range(min = 1, max = 10000))]
    pub status_requests_per_minute: u32,
    /// IPv6 clients are counted by this prefix length for the rate limit and
    /// the per-client connection cap (32–128; default 64: one client usually
    /// holds a whole /64).
    #[serde(default = "default_prefix", deserialize_with = "prefix")]
    #[schemars(range(min = 32, max = 128))]
    pub client_ipv6_prefix: u8,
    /// Connection limits of the page's listener.
    #[serde(default, skip_serializing_if = "super::ConnectionLimits::is_default")]
    pub connections: super::ConnectionLimits,
}

impl SignupConfig {
    /// The RPC URL the page uses: `rpcUrl`, or else the chain's first endpoint.
    pub fn browser_rpc_url<'a>(&'a self, chain: &'a crate::config::ChainConfig) -> &'a str {
        self.rpc_url
            .as_deref()
            .or_else(|| chain.rpc_urls.first().map(String::as_str))
            .unwrap_or_default()
    }
}

fn default_prefix() -> u8 {
    64
}

fn prefix<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u8, D::Error> {
    let n = u8::deserialize(d)?;
    if !(32..=128).contains(&n) {
        return Err(serde::de::Error::custom(format!(
            "clientIpv6Prefix {n} is out of range 32..=128"
        )));
    }
    Ok(n)
}

/// Whether a URL carries credentials or may: a user or password, or anything
/// after the host (hosted nodes put API keys in the path, `/v3/KEY`, or the
/// query). Such a URL is never published and never logged whole.
pub fn url_may_hold_credentials(u: &str) -> bool {
    let rest = u.split_once("://").map_or(u, |(_, r)| r);
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    authority.contains('@') || !(tail.is_empty() || tail == "/")
}

fn default_rate() -> u32 {
    60
}

fn rate<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let n = u32::deserialize(d)?;
    if !(1..=10_000).contains(&n) {
        return Err(serde::de::Error::custom(format!(
            "statusRequestsPerMinute {n} is out of range 1..=10000"
        )));
    }
    Ok(n)
}

/// Checks a URL that goes into the page's Content-Security-Policy: http(s), and
/// none of the characters that would end or split a CSP source expression.
pub fn check_browser_url(u: &str) -> Result<(), String> {
    if !(u.starts_with("http://") || u.starts_with("https://")) {
        return Err(format!("rpc URL {u:?} must start with http:// or https://"));
    }
    if u.chars()
        .any(|c| c.is_whitespace() || c.is_control() || matches!(c, ';' | ',' | '\'' | '"'))
    {
        return Err(format!(
            "rpc URL {u:?} has a space, quote, comma or semicolon; browsers cannot be told to allow it"
        ));
    }
    Ok(())
}

fn rpc_url<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let u = String::deserialize(d)?;
    check_browser_url(&u).map_err(serde::de::Error::custom)?;
    let authority = u.split_once("://").map_or(u.as_str(), |(_, r)| r);
    if authority
        .split(['/', '?', '#'])
        .next()
        .is_some_and(|a| a.contains('@'))
    {
        return Err(serde::de::Error::custom(
            "rpcUrl is published to every visitor; it must not carry a user or password",
        ));
    }
    Ok(Some(u))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_refusals() {
        let c: SignupConfig =
            serde_json::from_value(serde_json::json!({"listen": "127.0.0.1:8080"})).unwrap();
        assert_eq!(c.status_requests_per_minute, 60);
        assert!(c.rpc_url.is_none() && c.tls_cert.is_none());
        for bad in [
            serde_json::json!({"listen": "127.0.0.1:8080", "rpcUrl": "ws://x"}),
            serde_json::json!({"listen": "127.0.0.1:8080", "rpcUrl": "https://x; script-src *"}),
            serde_json::json!({"listen": "127.0.0.1:8080", "statusRequestsPerMinute": 0}),
            serde_json::json!({"listen": "nowhere"}),
            serde_json::json!({"listen": "127.0.0.1:8080", "rpcUrl": "https://u:p@rpc.example"}),
            serde_json::json!({"listen": "127.0.0.1:8080", "clientIpv6Prefix": 8}),
        ] {
            assert!(
                serde_json::from_value::<SignupConfig>(bad.clone()).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn the_daemon_config_needs_a_chain_and_both_tls_files() {
        let chain = serde_json::json!({
            "chainId": 31337, "rpcUrls": ["http://127.0.0.1:8545"],
            "subscriptionsContract": "0x5fbdb2315678afecb367f032d93f642f64180aa3",
            "nftContract": "0xe7f1725e7734ce288f8367e1bb143e90bb3f0512",
            "serverKeyFile": "/k"
        });
        let cfg = |v: serde_json::Value| serde_json::from_value::<crate::DaemonConfig>(v).unwrap();
        let alone = cfg(serde_json::json!({"signup": {"listen": "127.0.0.1:8080"}}));
        assert!(alone.validate().unwrap_err().contains("chain"));
        let half_tls = cfg(serde_json::json!({"chain": chain,
            "signup": {"listen": "127.0.0.1:8080", "tlsCert": "/c.pem"}}));
        assert!(half_tls.validate().unwrap_err().contains("tlsKey"));
        let ok = cfg(serde_json::json!({"chain": chain, "signup": {"listen": "127.0.0.1:8080"}}));
        ok.validate().unwrap();
        let (s, c) = (ok.signup.as_ref().unwrap(), ok.chain.as_ref().unwrap());
        assert_eq!(s.browser_rpc_url(c), "http://127.0.0.1:8545");
        assert_eq!(s.client_ipv6_prefix, 64);
    }

    #[test]
    fn a_chain_url_with_credentials_is_never_the_public_one() {
        for secret in [
            "https://user:pw@rpc.example:8545",
            "https://mainnet.infura.io/v3/0123456789abcdef",
            "https://rpc.example/?apikey=abc",
        ] {
            assert!(url_may_hold_credentials(secret), "{secret}");
            let chain = serde_json::json!({
                "chainId": 1, "rpcUrls": [secret],
                "subscriptionsContract": "0x5fbdb2315678afecb367f032d93f642f64180aa3",
                "nftContract": "0xe7f1725e7734ce288f8367e1bb143e90bb3f0512",
                "serverKeyFile": "/k"
            });
            let cfg: crate::DaemonConfig = serde_json::from_value(serde_json::json!({
                "chain": chain, "signup": {"listen": "127.0.0.1:8080"}}))
            .unwrap();
            let e = cfg.validate().unwrap_err();
            assert!(e.contains("signup.rpcUrl"), "{e}");
            assert!(
                !e.contains("0123456789abcdef") && !e.contains("pw@") && !e.contains("apikey"),
                "{e}"
            );
            let cfg: crate::DaemonConfig = serde_json::from_value(serde_json::json!({
                "chain": chain, "signup": {"listen": "127.0.0.1:8080", "rpcUrl": "https://public.example"}}))
            .unwrap();
            cfg.validate().unwrap();
        }
        for public in [
            "http://127.0.0.1:8545",
            "https://rpc.example/",
            "https://rpc.example:8545",
        ] {
            assert!(!url_may_hold_credentials(public), "{public}");
        }
    }
}
