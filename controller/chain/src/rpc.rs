//! A small JSON-RPC client for Ethereum nodes over HTTP(S), with failover across
//! several endpoints.
//!
//! Why not alloy's provider crates: the watcher needs four read-only methods
//! (`eth_chainId`, `eth_blockNumber`, `eth_getBlockByNumber`, `eth_getLogs`), and
//! the provider stack (transports, fillers, network types) roughly doubles the
//! controller's build on our two-core machines for nothing the watcher uses.
//! reqwest with rustls is already in the workspace for Proxmox, and decoding the
//! logs themselves still uses the `sol!` bindings of `blockhost-chain`. Minting
//! (signing, fees, nonces) may justify alloy's signer and consensus crates later.
//!
//! Every answer is checked: hex shapes, lengths, and a body-size cap (a hostile or
//! broken node cannot make the daemon buffer gigabytes; an oversized `eth_getLogs`
//! answer is reported as a refusal so the watcher narrows its range). Given the
//! expected chain id ([`RpcClient::for_chain`]), every endpoint is checked to
//! serve that chain before it is used and again after a failure; one on another
//! chain is left out of rotation ([`crate::endpoints`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::{Value, json};

use crate::endpoints::{ChainCheck, EndpointEvents, Gate};
use crate::node::{BlockTxs, Node, NodeError, RawLog, RawTx};

/// Largest answer accepted from a node.
const MAX_BODY: usize = 64 * 1024 * 1024;

/// JSON-RPC over HTTP to one of several endpoints; sticks to the one that last
/// answered and moves to the next when it fails.
#[derive(Debug)]
pub struct RpcClient {
    http: reqwest::Client,
    urls: Vec<String>,
    current: AtomicUsize,
    ids: AtomicUsize,
    /// The expected chain and each endpoint's standing; `None`: unchecked.
    check: Option<ChainCheck>,
}

#[derive(Debug, thiserror::Error)]
enum Transport {
    #[error("HTTP request to {url} failed")]
    Http {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{url} answered HTTP {status}")]
    Status { url: String, status: u16 },
    #[error("{url} sent an answer larger than {MAX_BODY} bytes")]
    TooLarge { url: String },
    #[error("{url} sent something that is not JSON-RPC")]
    NotJson {
        url: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("{url} did not answer eth_chainId with a chain id")]
    NoChainId { url: String },
    #[error("{url} serves chain id {got}, not {want}; it is out of rotation")]
    WrongChain { url: String, want: u64, got: u64 },
}

impl Transport {
    /// Of two failures, the one worth reporting: another chain beats the rest.
    fn keep(last: Option<Self>, e: Self) -> Option<Self> {
        match last {
            Some(w @ Self::WrongChain { .. }) if !matches!(e, Self::WrongChain { .. }) => Some(w),
            _ => Some(e),
        }
    }
}

impl RpcClient {
    /// A client for `urls`, tried in order.
    pub fn new(urls: Vec<String>) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(3))
            .timeout(Duration::from_secs(20))
            .pool_max_idle_per_host(2)
            .build()?;
        Ok(Self {
            http,
            urls,
            current: AtomicUsize::new(0),
            ids: AtomicUsize::new(1),
            check: None,
        })
    }

    /// A client for `urls` that uses only endpoints serving chain `chain_id`
    /// (checked with `eth_chainId` before first use and after a failure).
    pub fn for_chain(urls: Vec<String>, chain_id: u64) -> Result<Self, reqwest::Error> {
        let n = urls.len();
        let mut c = Self::new(urls)?;
        c.check = Some(ChainCheck::new(chain_id, n));
        Ok(c)
    }

    /// Hands what the chain-id checks find to `events` (the daemon's metrics
    /// and status); without it they are only logged.
    pub fn with_endpoint_events(mut self, events: Arc<dyn EndpointEvents>) -> Self {
        if let Some(c) = &mut self.check {
            c.events = events;
        }
        self
    }

    /// How long an endpoint on another chain stays out before it is asked
    /// again, and how long a verified one is used before it is asked again
    /// (tests shorten them; see [`crate::endpoints`] for the defaults).
    pub fn with_check_intervals(
        mut self,
        reprobe_after: Duration,
        recheck_after: Duration,
    ) -> Self {
        if let Some(c) = &mut self.check {
            c.reprobe_after = reprobe_after;
            c.recheck_after = recheck_after;
        }
        self
    }

    /// The endpoint in use (for logs and metrics; URLs may carry API keys in
    /// their path, so only the host is shown).
    pub fn current_host(&self) -> String {
        let i = self.current.load(Ordering::Relaxed) % self.urls.len().max(1);
        self.urls
            .get(i)
            .and_then(|u| reqwest::Url::parse(u).ok())
            .map(|u| {
                format!(
                    "{}:{}",
                    u.host_str().unwrap_or("?"),
                    u.port_or_known_default().unwrap_or(0)
                )
            })
            .unwrap_or_default()
    }

    async fn post(&self, url: &str, body: &Value) -> Result<Value, Transport> {
        // reqwest's errors quote the whole URL (user, password, API-key path):
        // strip it, the redacted one goes alongside.
        let http = |source: reqwest::Error| Transport::Http {
            url: redact(url),
            source: source.without_url(),
        };
        let mut resp = self.http.post(url).json(body).send().await.map_err(http)?;
        if resp.status().is_server_error()
            || resp.status() == reqwest::StatusCode::TOO_MANY_REQUESTS
        {
            return Err(Transport::Status {
                url: redact(url),
                status: resp.status().as_u16(),
            });
        }
        let mut buf = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(http)? {
            if buf.len() + chunk.len() > MAX_BODY {
                return Err(Transport::TooLarge { url: redact(url) });
            }
            buf.extend_from_slice(&chunk);
        }
        serde_json::from_slice(&buf).map_err(|source| Transport::NotJson {
            url: redact(url),
            source,
        })
    }

    /// Calls `method`, failing over to the next endpoints on transport errors.
    pub async fn call(&self, method: &'static str, params: Value) -> Result<Value, NodeError> {
        self.call_with_error_data(method, params)
            .await
            .map_err(|(e, _)| e)
    }

    /// Like [`Self::call`], but a JSON-RPC error also yields its `data` member:
    /// for `eth_call` and `eth_estimateGas` that is the revert data, which
    /// names a contract's custom error (`bhctl` decodes it for the operator).
    pub async fn call_with_error_data(
        &self,
        method: &'static str,
        params: Value,
    ) -> Result<Value, (NodeError, Option<Value>)> {
        let id = self.ids.fetch_add(1, Ordering::Relaxed);
        let body = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        let n = self.urls.len();
        let start = self.current.load(Ordering::Relaxed);
        let mut last = None;
        for step in 0..n {
            let i = (start + step) % n;
            let Some(url) = self.urls.get(i) else {
                continue;
            };
            let answer = match self.admit(i, url, method).await {
                Ok(Some(probe)) => Ok(probe),
                Ok(None) => self.post(url, &body).await,
                Err(e) => Err(e),
            };
            match answer {
                Ok(v) => {
                    if step > 0 {
                        tracing::warn!(endpoint = %self.current_host_of(i), "RPC failover: using another endpoint");
                        self.current.store(i, Ordering::Relaxed);
                    }
                    return answer_of(method, v);
                }
                Err(Transport::TooLarge { .. }) if method == "eth_getLogs" => {
                    return Err((
                        NodeError::Refused {
                            method,
                            code: 0,
                            message: format!("answer larger than {MAX_BODY} bytes"),
                        },
                        None,
                    ));
                }
                Err(e) => {
                    if let Some(c) = &self.check {
                        c.failed(i);
                    }
                    tracing::debug!(error = %blockhost_crd::error_chain(&e), "RPC endpoint failed");
                    last = Transport::keep(last, e);
                }
            }
        }
        Err((none_answered(n, last), None))
    }

    /// Checks endpoint `i`'s chain when it is due: `Ok(None)` to go ahead,
    /// `Ok(Some(answer))` when the call was `eth_chainId` and the check
    /// answered it, `Err` when the endpoint is out (another chain) or failed.
    async fn admit(
        &self,
        i: usize,
        url: &str,
        method: &'static str,
    ) -> Result<Option<Value>, Transport> {
        let Some(check) = &self.check else {
            return Ok(None);
        };
        let (want, redacted) = (check.want, redact(url));
        match check.gate(i, method == "eth_chainId") {
            Gate::Use => return Ok(None),
            Gate::Skip { got } => {
                return Err(Transport::WrongChain {
                    url: redacted,
                    want,
                    got,
                });
            }
            Gate::Probe => {}
        }
        let id = self.ids.fetch_add(1, Ordering::Relaxed);
        let body = json!({"jsonrpc": "2.0", "id": id, "method": "eth_chainId", "params": []});
        let v = self.post(url, &body).await?;
        let Some(got) = v
            .get("result")
            .and_then(|r| quantity("eth_chainId", r).ok())
        else {
            return Err(Transport::NoChainId { url: redacted });
        };
        if !check.probed(i, &redacted, got) {
            return Err(Transport::WrongChain {
                url: redacted,
                want,
                got,
            });
        }
        Ok((method == "eth_chainId").then_some(v))
    }

    fn current_host_of(&self, i: usize) -> String {
        self.urls.get(i).map(|u| redact(u)).unwrap_or_default()
    }
}

/// A JSON-RPC answer's result, or its error (with the error's `data`).
fn answer_of(method: &'static str, mut v: Value) -> Result<Value, (NodeError, Option<Value>)> {
    if let Some(err) = v.get_mut("error").filter(|e| !e.is_null()) {
        let refused = NodeError::Refused {
            method,
            code: err["code"].as_i64().unwrap_or(0),
            message: err["message"]
                .as_str()
                .unwrap_or("(no message)")
                .chars()
                .take(300)
                .collect(),
        };
        let data = err.get_mut("data").map(Value::take);
        return Err((refused, data));
    }
    Ok(v["result"].take())
}

/// The error when no endpoint answered: another chain when that kept one out.
fn none_answered(tried: usize, last: Option<Transport>) -> NodeError {
    match last {
        Some(Transport::WrongChain { url, want, got }) => NodeError::WrongChain {
            endpoint: url,
            want,
            got,
        },
        Some(e) => NodeError::Unavailable {
            tried,
            source: Box::new(e),
        },
        None => NodeError::Unavailable {
            tried,
            source: "no RPC URL configured".into(),
        },
    }
}

/// Scheme, host and port of a URL, without path or credentials (URLs of
/// hosted nodes carry API keys).
pub fn redact(url: &str) -> String {
    reqwest::Url::parse(url)
        .ok()
        .map(|u| {
            format!(
                "{}://{}:{}",
                u.scheme(),
                u.host_str().unwrap_or("?"),
                u.port_or_known_default().unwrap_or(0)
            )
        })
        .unwrap_or_else(|| "(unparsable URL)".into())
}

fn malformed(method: &'static str, detail: impl Into<String>) -> NodeError {
    NodeError::Malformed {
        method,
        detail: detail.into(),
    }
}

/// Parses a `0x…` quantity.
pub fn quantity(method: &'static str, v: &Value) -> Result<u64, NodeError> {
    let s = v
        .as_str()
        .ok_or_else(|| malformed(method, format!("expected a hex quantity, got {}", short(v))))?;
    let digits = s
        .strip_prefix("0x")
        .ok_or_else(|| malformed(method, format!("quantity {s:?} lacks 0x")))?;
    if digits.is_empty() || digits.len() > 16 {
        return Err(malformed(
            method,
            format!("quantity {s:?} is not a 64-bit number"),
        ));
    }
    u64::from_str_radix(digits, 16)
        .map_err(|_| malformed(method, format!("quantity {s:?} is not hex")))
}

fn data(method: &'static str, v: &Value, what: &str) -> Result<Vec<u8>, NodeError> {
    let s = v
        .as_str()
        .and_then(|s| s.strip_prefix("0x"))
        .ok_or_else(|| malformed(method, format!("{what}: expected 0x-hex, got {}", short(v))))?;
    hex::decode(s).map_err(|_| malformed(method, format!("{what}: invalid hex")))
}

fn fixed<const N: usize>(
    method: &'static str,
    v: &Value,
    what: &str,
) -> Result<[u8; N], NodeError> {
    let b = data(method, v, what)?;
    <[u8; N]>::try_from(b.as_slice()).map_err(|_| {
        malformed(
            method,
            format!("{what}: expected {N} bytes, got {}", b.len()),
        )
    })
}

fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.len() > 80 {
        format!(
            "{}…",
            &s[..s.char_indices().nth(80).map_or(s.len(), |(i, _)| i)]
        )
    } else {
        s
    }
}

/// Parses one log of an `eth_getLogs` answer.
pub fn parse_log(v: &Value) -> Result<RawLog, NodeError> {
    const M: &str = "eth_getLogs";
    let topics = v["topics"]
        .as_array()
        .ok_or_else(|| malformed(M, "log without topics"))?;
    if topics.len() > 4 {
        return Err(malformed(M, format!("log with {} topics", topics.len())));
    }
    Ok(RawLog {
        address: fixed(M, &v["address"], "address")?,
        topics: topics
            .iter()
            .map(|t| fixed(M, t, "topic"))
            .collect::<Result<_, _>>()?,
        data: data(M, &v["data"], "data")?,
        block_number: quantity(M, &v["blockNumber"])?,
        block_hash: fixed(M, &v["blockHash"], "blockHash")?,
        log_index: quantity(M, &v["logIndex"])?,
        transaction_hash: fixed(M, &v["transactionHash"], "transactionHash")?,
    })
}

fn hex_q(n: u64) -> String {
    format!("0x{n:x}")
}

impl Node for RpcClient {
    async fn chain_id(&self) -> Result<u64, NodeError> {
        let v = self.call("eth_chainId", json!([])).await?;
        quantity("eth_chainId", &v)
    }

    async fn head(&self) -> Result<u64, NodeError> {
        let v = self.call("eth_blockNumber", json!([])).await?;
        quantity("eth_blockNumber", &v)
    }

    async fn block_hash(&self, number: u64) -> Result<Option<[u8; 32]>, NodeError> {
        let v = self
            .call("eth_getBlockByNumber", json!([hex_q(number), false]))
            .await?;
        if v.is_null() {
            return Ok(None);
        }
        let got = quantity("eth_getBlockByNumber", &v["number"])?;
        if got != number {
            return Err(malformed(
                "eth_getBlockByNumber",
                format!("asked for block {number}, got {got}"),
            ));
        }
        fixed("eth_getBlockByNumber", &v["hash"], "hash").map(Some)
    }

    async fn block_time(&self, number: u64) -> Result<Option<u64>, NodeError> {
        let v = self
            .call("eth_getBlockByNumber", json!([hex_q(number), false]))
            .await?;
        if v.is_null() {
            return Ok(None);
        }
        quantity("eth_getBlockByNumber", &v["timestamp"]).map(Some)
    }

    async fn block_txs_to(&self, number: u64, to: [u8; 20]) -> Result<Option<BlockTxs>, NodeError> {
        const M: &str = "eth_getBlockByNumber";
        let v = self.call(M, json!([hex_q(number), true])).await?;
        if v.is_null() {
            return Ok(None);
        }
        let got = quantity(M, &v["number"])?;
        if got != number {
            return Err(malformed(M, format!("asked for block {number}, got {got}")));
        }
        let all = v["transactions"]
            .as_array()
            .ok_or_else(|| malformed(M, "block without a transaction list"))?;
        let mut txs = Vec::new();
        for t in all {
            // Contract creations have `to: null`; they are never commands.
            let dest = match t.get("to") {
                Some(a) if !a.is_null() => fixed::<20>(M, a, "to")?,
                _ => continue,
            };
            if dest != to {
                continue;
            }
            txs.push(RawTx {
                hash: fixed(M, &t["hash"], "hash")?,
                index: quantity(M, &t["transactionIndex"])?,
                from: fixed(M, &t["from"], "from")?,
                to: Some(dest),
                input: data(M, &t["input"], "input")?,
            });
        }
        Ok(Some(BlockTxs {
            hash: fixed(M, &v["hash"], "hash")?,
            timestamp: quantity(M, &v["timestamp"])?,
            txs,
        }))
    }

    async fn logs(
        &self,
        from: u64,
        to: u64,
        addresses: &[[u8; 20]],
    ) -> Result<Vec<RawLog>, NodeError> {
        let addrs: Vec<String> = addresses
            .iter()
            .map(|a| format!("0x{}", hex::encode(a)))
            .collect();
        let v = self
            .call(
                "eth_getLogs",
                json!([{"fromBlock": hex_q(from), "toBlock": hex_q(to), "address": addrs}]),
            )
            .await?;
        let items = v.as_array().ok_or_else(|| {
            malformed(
                "eth_getLogs",
                format!("expected an array, got {}", short(&v)),
            )
        })?;
        let mut out = Vec::with_capacity(items.len());
        for item in items {
            // A removed log is one the node already knows was reorged away.
            if item["removed"].as_bool() == Some(true) {
                continue;
            }
            out.push(parse_log(item)?);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_and_logs_are_checked() {
        assert_eq!(quantity("m", &json!("0x1f")).unwrap(), 31);
        assert!(quantity("m", &json!("1f")).is_err());
        assert!(quantity("m", &json!("0x")).is_err());
        assert!(quantity("m", &json!("0x1ffffffffffffffff")).is_err());
        assert!(quantity("m", &json!(12)).is_err());
        let good = json!({
            "address": format!("0x{}", "11".repeat(20)),
            "topics": [format!("0x{}", "22".repeat(32))],
            "data": "0x",
            "blockNumber": "0x5", "blockHash": format!("0x{}", "33".repeat(32)),
            "logIndex": "0x0", "transactionHash": format!("0x{}", "44".repeat(32))
        });
        let log = parse_log(&good).unwrap();
        assert_eq!(log.block_number, 5);
        assert!(log.id().ends_with(":0"));
        for (field, bad) in [
            ("address", json!("0x1234")),
            ("topics", json!(["0x00"])),
            ("data", json!("zz")),
            ("blockNumber", json!(null)),
            ("blockHash", json!(7)),
        ] {
            let mut v = good.clone();
            v[field] = bad;
            assert!(parse_log(&v).is_err(), "{field}");
        }
    }

    #[tokio::test]
    async fn a_failing_endpoint_never_shows_its_credentials() {
        let client = RpcClient::new(vec!["http://user:hunter2@127.0.0.1:9/v3/SECRETKEY".into()])
            .expect("client");
        let e = client
            .call("eth_chainId", json!([]))
            .await
            .expect_err("nothing listens on port 9");
        let text = format!("{} {e:?}", blockhost_crd::error_chain(&e));
        assert!(
            !text.contains("SECRETKEY") && !text.contains("hunter2"),
            "{text}"
        );
        assert!(text.contains("127.0.0.1:9"), "{text}");
    }

    #[test]
    fn urls_are_shown_without_paths() {
        assert_eq!(
            redact("https://user:pw@rpc.example:8545/v3/SECRET"),
            "https://rpc.example:8545"
        );
    }
}
