//! The server wallet: the configured key acting on chain — reading its nonce and
//! balance, pricing EIP-1559 fees, signing, broadcasting, and reading receipts.
//!
//! Two users: the minter (`crate::reconcile::mint`), which stores every signed transaction
//! before broadcasting it and so only uses the step-by-step methods, and `bhctl`
//! (`chain deploy`, `plan create`), which uses [`ServerWallet::transact`] to send
//! one transaction and wait for its receipt.
//!
//! Node errors on `eth_sendRawTransaction` are classified ([`SendError`]) because
//! the minter reacts differently to each: a known transaction is success, a used
//! nonce means "look for the receipt or start over", missing funds is a condition
//! the operator must fix.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::bindings::{AccessCredentialNFT, BlockhostSubscriptions};
use crate::tx::{Eip1559Tx, SignedTx, address_of};
use alloy_primitives::U256;
use blockhost_crd::WalletAddress;
use k256::SecretKey;
use k256::ecdsa::SigningKey;
use serde_json::{Value, json};

use crate::node::{NodeError, RawLog};
use crate::rpc::{RpcClient, parse_log, quantity};

/// Tip used when the node cannot suggest one (`eth_maxPriorityFeePerGas` is not
/// universal): 1 gwei, enough on mainnet-like chains outside congestion.
const DEFAULT_PRIORITY_FEE: u128 = 1_000_000_000;

/// Gas estimates are raised by this percentage: an estimate is exact for the
/// state it ran against, and a plan or token created in between can cost more.
const GAS_MARGIN_PERCENT: u64 = 25;

/// A transaction's outcome as its receipt tells it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    /// The transaction.
    pub hash: [u8; 32],
    /// Whether it succeeded (`status` 1).
    pub success: bool,
    /// The block that holds it.
    pub block_number: u64,
    /// That block's hash.
    pub block_hash: [u8; 32],
    /// Address of the contract it created, if any.
    pub contract_address: Option<[u8; 20]>,
    /// Its logs.
    pub logs: Vec<RawLog>,
}

/// Fees for the next transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fees {
    /// `maxFeePerGas`.
    pub max_fee: u128,
    /// `maxPriorityFeePerGas`.
    pub priority_fee: u128,
}

/// What a node said to a raw transaction.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The sender cannot pay gas × fee (+ value).
    #[error("the server wallet cannot pay for the transaction: {0}")]
    InsufficientFunds(String),
    /// The nonce is already used by a mined transaction.
    #[error("nonce already used: {0}")]
    NonceTooLow(String),
    /// A transaction with this nonce is pending and pays more or the same.
    #[error("a pending transaction with the same nonce pays as much or more: {0}")]
    Underpriced(String),
    /// Any other refusal (invalid signature, wrong chain, gas limit above the
    /// block's, …).
    #[error("the node refused the transaction: {0}")]
    Rejected(String),
    /// The node could not be asked.
    #[error(transparent)]
    Node(#[from] NodeError),
}

/// Why [`ServerWallet::transact`] failed.
#[derive(Debug, thiserror::Error)]
pub enum WalletError {
    /// A node request failed.
    #[error(transparent)]
    Node(#[from] NodeError),
    /// The node refused the signed transaction.
    #[error(transparent)]
    Send(#[from] SendError),
    /// Signing failed.
    #[error("cannot sign the transaction")]
    Sign(#[from] crate::tx::TxError),
    /// The balance does not cover gas at the offered fee.
    #[error(
        "the server wallet {address} holds {balance} wei but the transaction may cost up to {needed} wei; send it funds"
    )]
    InsufficientFunds {
        /// The wallet.
        address: WalletAddress,
        /// Its balance.
        balance: U256,
        /// Gas limit × max fee + value.
        needed: U256,
    },
    /// The call would revert (found while estimating gas).
    #[error("the transaction would fail: {0}")]
    WouldRevert(String),
    /// Mined, but reverted.
    #[error(
        "transaction 0x{} was mined in block {block} but reverted",
        hex::encode(hash)
    )]
    Reverted {
        /// The transaction.
        hash: [u8; 32],
        /// Its block.
        block: u64,
    },
    /// No receipt in time.
    #[error(
        "transaction 0x{} has no receipt after {waited:?}; it may still be mined (check the hash on the chain)",
        hex::encode(hash)
    )]
    Timeout {
        /// The transaction.
        hash: [u8; 32],
        /// How long we waited.
        waited: Duration,
    },
    /// The node is on another chain than configured.
    #[error("the RPC endpoint serves chain {actual}, but the configuration says {expected}")]
    WrongChain {
        /// Configured.
        expected: u64,
        /// Served.
        actual: u64,
    },
}

/// The name of a revert's custom error, from any of our contracts' ABIs, or
/// the `Error(string)` reason, or the raw selector.
pub fn decode_revert(data: &[u8]) -> Option<String> {
    let selector: [u8; 4] = data.get(..4)?.try_into().ok()?;
    if let Some(name) =
        BlockhostSubscriptions::BlockhostSubscriptionsErrors::name_by_selector(selector)
            .or_else(|| AccessCredentialNFT::AccessCredentialNFTErrors::name_by_selector(selector))
    {
        return Some(name.to_owned());
    }
    if let Ok(r) = <alloy_sol_types::Revert as alloy_sol_types::SolError>::abi_decode(data) {
        return Some(format!("Error({:?})", r.reason));
    }
    Some(format!(
        "an unknown error (selector 0x{})",
        hex::encode(selector)
    ))
}

/// Revert data in a JSON-RPC error's `data`: a hex string, or an object
/// holding one (node wordings differ).
pub fn revert_data(data: Option<&Value>) -> Option<Vec<u8>> {
    let s = match data? {
        Value::String(s) => s.as_str(),
        Value::Object(o) => o.get("data")?.as_str()?,
        _ => return None,
    };
    hex::decode(s.strip_prefix("0x")?).ok()
}

/// The configured key on a chain.
#[derive(Debug, Clone)]
pub struct ServerWallet {
    key: SigningKey,
    address: [u8; 20],
    chain_id: u64,
    rpc: Arc<RpcClient>,
}

fn hex0x(b: &[u8]) -> String {
    format!("0x{}", hex::encode(b))
}

fn malformed(method: &'static str, detail: impl Into<String>) -> NodeError {
    NodeError::Malformed {
        method,
        detail: detail.into(),
    }
}

fn u256_of(method: &'static str, v: &Value) -> Result<U256, NodeError> {
    let s = v
        .as_str()
        .ok_or_else(|| malformed(method, "expected a hex quantity"))?;
    let digits = s
        .strip_prefix("0x")
        .ok_or_else(|| malformed(method, format!("quantity {s:?} lacks 0x")))?;
    U256::from_str_radix(digits, 16)
        .map_err(|_| malformed(method, format!("quantity {s:?} is not a 256-bit number")))
}

fn u128_of(method: &'static str, v: &Value) -> Result<u128, NodeError> {
    let n = u256_of(method, v)?;
    u128::try_from(n).map_err(|_| malformed(method, "fee above 2^128 wei"))
}

fn bytes_of<const N: usize>(method: &'static str, v: &Value) -> Result<[u8; N], NodeError> {
    let s = v
        .as_str()
        .and_then(|s| s.strip_prefix("0x"))
        .ok_or_else(|| malformed(method, "expected 0x-hex"))?;
    let b = hex::decode(s).map_err(|_| malformed(method, "invalid hex"))?;
    <[u8; N]>::try_from(b.as_slice())
        .map_err(|_| malformed(method, format!("expected {N} bytes, got {}", b.len())))
}

/// Sorts a node's refusal of a raw transaction by what the caller should do.
/// Node wordings differ (geth, anvil, reth, erigon); these substrings cover the
/// ones in use.
pub fn classify_send_error(message: &str) -> SendError {
    let m = message.to_ascii_lowercase();
    let msg = message.to_owned();
    if m.contains("insufficient funds") || m.contains("insufficientfunds") {
        SendError::InsufficientFunds(msg)
    } else if m.contains("nonce too low")
        || m.contains("noncetoolow")
        || m.contains("nonce is too low")
    {
        SendError::NonceTooLow(msg)
    } else if m.contains("underpriced") {
        SendError::Underpriced(msg)
    } else {
        SendError::Rejected(msg)
    }
}

impl ServerWallet {
    /// The wallet of `key` on chain `chain_id` through `rpc`.
    pub fn new(key: &SecretKey, chain_id: u64, rpc: Arc<RpcClient>) -> Self {
        let key = SigningKey::from(key);
        let address = address_of(&key);
        Self {
            key,
            address,
            chain_id,
            rpc,
        }
    }

    /// The wallet's address.
    pub fn address(&self) -> WalletAddress {
        WalletAddress::from_bytes(self.address)
    }

    /// The chain id transactions are signed for.
    pub fn chain_id(&self) -> u64 {
        self.chain_id
    }

    /// The RPC client.
    pub fn rpc(&self) -> &RpcClient {
        &self.rpc
    }

    /// Fails unless the node serves the configured chain (a transaction signed
    /// for one chain is refused by another, but a read is not: check first).
    pub async fn check_chain(&self) -> Result<(), WalletError> {
        let v = self.rpc.call("eth_chainId", json!([])).await?;
        let actual = quantity("eth_chainId", &v)?;
        if actual != self.chain_id {
            return Err(WalletError::WrongChain {
                expected: self.chain_id,
                actual,
            });
        }
        Ok(())
    }

    /// The account nonce at `block` (`"latest"`: mined transactions only;
    /// `"pending"`: including the node's mempool).
    pub async fn nonce(&self, block: &'static str) -> Result<u64, NodeError> {
        let v = self
            .rpc
            .call(
                "eth_getTransactionCount",
                json!([hex0x(&self.address), block]),
            )
            .await?;
        quantity("eth_getTransactionCount", &v)
    }

    /// The wallet's balance in wei.
    pub async fn balance(&self) -> Result<U256, NodeError> {
        let v = self
            .rpc
            .call("eth_getBalance", json!([hex0x(&self.address), "latest"]))
            .await?;
        u256_of("eth_getBalance", &v)
    }

    /// Fees for a transaction now: twice the latest base fee plus the tip, so the
    /// offer survives several full blocks of base-fee increases (12.5 % each).
    pub async fn fees(&self) -> Result<Fees, NodeError> {
        let block = self
            .rpc
            .call("eth_getBlockByNumber", json!(["latest", false]))
            .await?;
        let base = match block.get("baseFeePerGas") {
            Some(v) if !v.is_null() => u128_of("eth_getBlockByNumber", v)?,
            _ => 0,
        };
        let priority_fee = match self.rpc.call("eth_maxPriorityFeePerGas", json!([])).await {
            Ok(v) => u128_of("eth_maxPriorityFeePerGas", &v)?,
            Err(NodeError::Refused { .. }) => DEFAULT_PRIORITY_FEE,
            Err(e) => return Err(e),
        };
        Ok(Fees {
            max_fee: base.saturating_mul(2).saturating_add(priority_fee),
            priority_fee,
        })
    }

    /// Estimates gas for a call (or a deployment when `to` is `None`), with a
    /// margin. A revert is reported with the node's reason.
    pub async fn estimate_gas(
        &self,
        to: Option<[u8; 20]>,
        data: &[u8],
    ) -> Result<u64, WalletError> {
        let mut call = json!({"from": hex0x(&self.address), "data": hex0x(data)});
        if let Some(to) = to {
            call["to"] = json!(hex0x(&to));
        }
        match self
            .rpc
            .call_with_error_data("eth_estimateGas", json!([call]))
            .await
        {
            Ok(v) => {
                let gas = quantity("eth_estimateGas", &v)?;
                Ok(gas.saturating_add(gas * GAS_MARGIN_PERCENT / 100))
            }
            // Named when the revert data decodes against our ABIs, so the
            // condition says e.g. `OwnableUnauthorizedAccount`, not hex.
            Err((NodeError::Refused { message, .. }, data)) => Err(WalletError::WouldRevert(
                revert_data(data.as_ref())
                    .and_then(|d| decode_revert(&d))
                    .map_or(message, |name| format!("{name} (revert)")),
            )),
            Err((e, _)) => Err(e.into()),
        }
    }

    /// `eth_call` at the latest block; returns the raw return data.
    pub async fn call(&self, to: [u8; 20], data: &[u8]) -> Result<Vec<u8>, NodeError> {
        let v = self
            .rpc
            .call(
                "eth_call",
                json!([{"to": hex0x(&to), "data": hex0x(data)}, "latest"]),
            )
            .await?;
        let s = v
            .as_str()
            .and_then(|s| s.strip_prefix("0x"))
            .ok_or_else(|| malformed("eth_call", "expected 0x-hex"))?;
        hex::decode(s).map_err(|_| malformed("eth_call", "invalid hex"))
    }

    /// A transaction to `to` with `data` at `nonce`, gas estimated and fees
    /// priced now.
    pub async fn prepare(
        &self,
        to: Option<[u8; 20]>,
        data: Vec<u8>,
        nonce: u64,
    ) -> Result<Eip1559Tx, WalletError> {
        let gas_limit = self.estimate_gas(to, &data).await?;
        let fees = self.fees().await?;
        Ok(Eip1559Tx {
            chain_id: self.chain_id,
            nonce,
            max_priority_fee_per_gas: fees.priority_fee,
            max_fee_per_gas: fees.max_fee,
            gas_limit,
            to,
            value: U256::ZERO,
            input: data,
        })
    }

    /// Fails with [`WalletError::InsufficientFunds`] unless the balance covers the
    /// transaction's worst case.
    pub async fn ensure_funds(&self, tx: &Eip1559Tx) -> Result<(), WalletError> {
        let needed = U256::from(tx.gas_limit) * U256::from(tx.max_fee_per_gas) + tx.value;
        let balance = self.balance().await?;
        if balance < needed {
            return Err(WalletError::InsufficientFunds {
                address: self.address(),
                balance,
                needed,
            });
        }
        Ok(())
    }

    /// Signs with the server key.
    pub fn sign(&self, tx: &Eip1559Tx) -> Result<SignedTx, crate::tx::TxError> {
        tx.sign(&self.key)
    }

    /// Broadcasts a signed transaction. A node that already has it answers
    /// "already known"; that counts as sent.
    pub async fn send_raw(&self, tx: &SignedTx) -> Result<(), SendError> {
        match self
            .rpc
            .call("eth_sendRawTransaction", json!([hex0x(&tx.raw)]))
            .await
        {
            Ok(_) => Ok(()),
            Err(NodeError::Refused { message, .. }) => {
                let m = message.to_ascii_lowercase();
                if m.contains("already known") || m.contains("already imported") {
                    return Ok(());
                }
                Err(classify_send_error(&message))
            }
            Err(e) => Err(SendError::Node(e)),
        }
    }

    /// Whether the node knows the transaction (pending or mined).
    pub async fn known(&self, hash: &[u8; 32]) -> Result<bool, NodeError> {
        let v = self
            .rpc
            .call("eth_getTransactionByHash", json!([hex0x(hash)]))
            .await?;
        Ok(!v.is_null())
    }

    /// The receipt of a mined transaction; `None` while pending or unknown.
    pub async fn receipt(&self, hash: &[u8; 32]) -> Result<Option<Receipt>, NodeError> {
        const M: &str = "eth_getTransactionReceipt";
        let v = self.rpc.call(M, json!([hex0x(hash)])).await?;
        if v.is_null() {
            return Ok(None);
        }
        let got: [u8; 32] = bytes_of(M, &v["transactionHash"])?;
        if &got != hash {
            return Err(malformed(M, "receipt of another transaction"));
        }
        let logs = v["logs"]
            .as_array()
            .ok_or_else(|| malformed(M, "receipt without logs"))?
            .iter()
            .map(parse_log)
            .collect::<Result<Vec<_>, _>>()?;
        let contract_address = match v.get("contractAddress") {
            Some(a) if !a.is_null() => Some(bytes_of(M, a)?),
            _ => None,
        };
        Ok(Some(Receipt {
            hash: *hash,
            success: quantity(M, &v["status"])? == 1,
            block_number: quantity(M, &v["blockNumber"])?,
            block_hash: bytes_of(M, &v["blockHash"])?,
            contract_address,
            logs,
        }))
    }

    /// The chain head.
    pub async fn head(&self) -> Result<u64, NodeError> {
        let v = self.rpc.call("eth_blockNumber", json!([])).await?;
        quantity("eth_blockNumber", &v)
    }

    /// Sends one transaction and waits for its receipt (for `bhctl`; the
    /// minter stores its transactions before sending and does not use this).
    /// A reverted transaction is an error.
    pub async fn transact(
        &self,
        to: Option<[u8; 20]>,
        data: Vec<u8>,
        timeout: Duration,
    ) -> Result<Receipt, WalletError> {
        let nonce = self.nonce("pending").await?;
        let tx = self.prepare(to, data, nonce).await?;
        self.ensure_funds(&tx).await?;
        let signed = self.sign(&tx)?;
        tracing::debug!(hash = %hex0x(&signed.hash), nonce, "sending transaction");
        self.send_raw(&signed).await?;
        let start = Instant::now();
        let mut delay = Duration::from_millis(50);
        loop {
            if let Some(r) = self.receipt(&signed.hash).await? {
                if !r.success {
                    return Err(WalletError::Reverted {
                        hash: r.hash,
                        block: r.block_number,
                    });
                }
                return Ok(r);
            }
            if start.elapsed() >= timeout {
                return Err(WalletError::Timeout {
                    hash: signed.hash,
                    waited: start.elapsed(),
                });
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(2));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_refusals_are_classified() {
        for (m, want) in [
            ("insufficient funds for gas * price + value", "funds"),
            ("Insufficient funds for gas * price + value", "funds"),
            ("nonce too low: next nonce 5, tx nonce 3", "nonce"),
            ("replacement transaction underpriced", "under"),
            ("transaction underpriced", "under"),
            ("invalid sender", "other"),
        ] {
            let got = match classify_send_error(m) {
                SendError::InsufficientFunds(_) => "funds",
                SendError::NonceTooLow(_) => "nonce",
                SendError::Underpriced(_) => "under",
                _ => "other",
            };
            assert_eq!(got, want, "{m}");
        }
    }
}
