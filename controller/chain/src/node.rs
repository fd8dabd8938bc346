//! What the watcher needs from an Ethereum node, as a trait: the JSON-RPC client
//! ([`super::rpc`]) implements it for real nodes, and tests implement it with an
//! in-memory chain that can reorg on command.

use std::future::Future;

/// One log as a node returns it, shape-checked but not yet decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawLog {
    /// Emitting contract.
    pub address: [u8; 20],
    /// Topics (signature first).
    pub topics: Vec<[u8; 32]>,
    /// ABI-encoded non-indexed data.
    pub data: Vec<u8>,
    /// Block height.
    pub block_number: u64,
    /// Block hash.
    pub block_hash: [u8; 32],
    /// Index in the block.
    pub log_index: u64,
    /// Transaction hash.
    pub transaction_hash: [u8; 32],
}

impl RawLog {
    /// The event's identity: block hash and log index. A log re-fetched after a
    /// reorg into a different block is a different event; re-delivered in the same
    /// block it is the same one.
    pub fn id(&self) -> String {
        format!("0x{}:{}", hex::encode(self.block_hash), self.log_index)
    }
}

/// A transaction as the admin-command reader needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawTx {
    /// Transaction hash.
    pub hash: [u8; 32],
    /// Index in the block.
    pub index: u64,
    /// Sender (as the node recovered it).
    pub from: [u8; 20],
    /// Recipient; `None` for a contract creation.
    pub to: Option<[u8; 20]>,
    /// Input data.
    pub input: Vec<u8>,
}

/// A block's header fields and the transactions sent to one address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockTxs {
    /// Block hash.
    pub hash: [u8; 32],
    /// Block timestamp, Unix seconds.
    pub timestamp: u64,
    /// Its transactions to the address asked for, in block order.
    pub txs: Vec<RawTx>,
}

/// Why a node request failed.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// No endpoint answered (connection refused, timeout, HTTP 5xx).
    #[error("no RPC endpoint answered (tried {tried})")]
    Unavailable {
        /// How many endpoints were tried.
        tried: usize,
        /// The last failure.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The node answered with a JSON-RPC error (for `eth_getLogs`, usually a
    /// range or result-size limit).
    #[error("the node refused {method}: {message} (code {code})")]
    Refused {
        /// The method.
        method: &'static str,
        /// JSON-RPC error code.
        code: i64,
        /// Its message.
        message: String,
    },
    /// No endpoint serving the configured chain answered: `endpoint` (redacted)
    /// serves another and is out of rotation.
    #[error(
        "the RPC endpoint {endpoint} serves chain id {got}, not {want} (chain.chainId), and no endpoint on chain {want} answered; point chain.rpcUrls at a node of chain {want}"
    )]
    WrongChain {
        /// The endpoint, scheme, host and port only.
        endpoint: String,
        /// The configured chain id.
        want: u64,
        /// What it reports.
        got: u64,
    },
    /// The answer does not have the expected shape.
    #[error("malformed answer to {method}: {detail}")]
    Malformed {
        /// The method.
        method: &'static str,
        /// What is wrong.
        detail: String,
    },
}

/// The node operations the watcher uses.
pub trait Node: Send + Sync + 'static {
    /// `eth_chainId`.
    fn chain_id(&self) -> impl Future<Output = Result<u64, NodeError>> + Send;
    /// `eth_blockNumber`.
    fn head(&self) -> impl Future<Output = Result<u64, NodeError>> + Send;
    /// The hash of the block at a height, `None` above the head.
    fn block_hash(
        &self,
        number: u64,
    ) -> impl Future<Output = Result<Option<[u8; 32]>, NodeError>> + Send;
    /// The timestamp (Unix seconds) of the block at a height; `None` when
    /// unknown. Only read with `chain.followChainTime`.
    fn block_time(
        &self,
        _number: u64,
    ) -> impl Future<Output = Result<Option<u64>, NodeError>> + Send {
        async { Ok(None) }
    }
    /// The block at a height with its transactions to `to` (`None` above the
    /// head): where admin commands are read.
    fn block_txs_to(
        &self,
        number: u64,
        to: [u8; 20],
    ) -> impl Future<Output = Result<Option<BlockTxs>, NodeError>> + Send;
    /// `eth_getLogs` over `[from, to]` for the given emitters.
    fn logs(
        &self,
        from: u64,
        to: u64,
        addresses: &[[u8; 20]],
    ) -> impl Future<Output = Result<Vec<RawLog>, NodeError>> + Send;
}
