//! `bhctl nft decrypt`: for users — read an access NFT's encrypted connection
//! details from the chain and decrypt them with the holder's wallet signature.
//!
//! The key is `keccak256` of the holder's `personal_sign` of the operator's
//! public secret (REFERENCE.md §2; [`blockhost_chain::nft_payload`]). The
//! signature comes from a file or standard input, or is made here from a key
//! file: never from an argument, because argv is visible to every local user
//! (`ps`, `/proc/*/cmdline`) and this signature is the key to the payload.
//!
//! Only reads are made (`eth_call`); no configuration is needed when
//! `--rpc-url` and `--nft-contract` are given.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use alloy_primitives::U256;
use alloy_sol_types::SolCall;
use blockhost_chain::bindings::AccessCredentialNFT;
use blockhost_chain::nft_payload::{self, ConnectionDetails, NftPayloadError};
use blockhost_crd::WalletAddress;
use blockhost_crd::config::DEFAULT_CONFIG_PATH;
use blockhost_crd::eip191::{self, Signature};
use clap::{ArgGroup, Subcommand};
use k256::ecdsa::SigningKey;
use serde_json::json;

use crate::chain::{ChainCliError, Output, decode_revert, load_chain, revert_data};
use blockhost_chain::node::NodeError;
use blockhost_chain::rpc::RpcClient;

/// The public secret the original signs when the operator set none.
pub const DEFAULT_PUBLIC_SECRET: &str = "blockhost-access";

/// `bhctl nft …`.
#[derive(Debug, Subcommand)]
pub enum NftCommand {
    /// Decrypt the connection details of your access NFT (hostname, port, user).
    #[command(group(ArgGroup::new("signer").required(true).args(["signature_file", "signature", "key_file"])))]
    Decrypt {
        /// The token id.
        #[arg(long)]
        token_id: u64,
        /// JSON-RPC endpoint (default: chain.rpcUrls of the configuration).
        #[arg(long, value_name = "URL")]
        rpc_url: Option<String>,
        /// AccessCredentialNFT address (default: chain.nftContract of the configuration).
        #[arg(long, value_name = "ADDRESS")]
        nft_contract: Option<WalletAddress>,
        /// blockhostd's configuration, read only for what the flags above leave out.
        #[arg(long, env = "BLOCKHOST_CONFIG")]
        config: Option<PathBuf>,
        /// File holding your 65-byte personal_sign signature of the public secret (hex).
        #[arg(long, value_name = "FILE")]
        signature_file: Option<PathBuf>,
        /// `-`: read the signature from standard input (never give it as an argument).
        #[arg(long, value_name = "-", value_parser = stdin_only)]
        signature: Option<String>,
        /// File holding your wallet's secp256k1 key (hex, chmod 600); the signature is made here.
        #[arg(long, value_name = "FILE")]
        key_file: Option<PathBuf>,
        /// The text signed (the operator's public secret).
        #[arg(long)]
        public_secret: Option<String>,
        /// Output format.
        #[arg(short, long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
}

fn stdin_only(s: &str) -> Result<String, String> {
    if s == "-" {
        Ok(s.to_owned())
    } else {
        Err("only `-` (standard input) is accepted: a signature in the arguments is visible to other users; use `--signature -` or `--signature-file FILE`".into())
    }
}

/// Reads a hex secp256k1 key from a file only its owner can read.
fn read_key_file(path: &Path) -> Result<SigningKey, ChainCliError> {
    use std::os::unix::fs::PermissionsExt;
    let invalid = |why: String| ChainCliError::Invalid(format!("{}: {why}", path.display()));
    let read = |source| ChainCliError::ReadFile {
        path: path.to_owned(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(read)?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(invalid(format!(
            "the key file has mode {mode:o}; make it readable by its owner only (chmod 600)"
        )));
    }
    let text = std::fs::read_to_string(path).map_err(read)?;
    let digits = text.trim();
    let digits = digits.strip_prefix("0x").unwrap_or(digits);
    hex::decode(digits)
        .ok()
        .and_then(|b| SigningKey::from_slice(&b).ok())
        .ok_or_else(|| invalid("does not hold a secp256k1 key as 64 hex digits".into()))
}

fn parse_signature(text: &str, from: &str) -> Result<Signature, ChainCliError> {
    Signature::from_str(text).map_err(|_| {
        ChainCliError::Invalid(format!(
            "{from} does not hold a 65-byte signature in hex (0x followed by 130 hex digits)"
        ))
    })
}

async fn eth_call(rpc: &RpcClient, to: &WalletAddress, data: Vec<u8>) -> CallResult {
    let call = json!({"to": to.to_lower_hex(), "data": format!("0x{}", hex::encode(data))});
    match rpc
        .call_with_error_data("eth_call", json!([call, "latest"]))
        .await
    {
        Ok(v) => v
            .as_str()
            .and_then(|s| s.strip_prefix("0x"))
            .and_then(|s| hex::decode(s).ok())
            .map_or(CallResult::Failed(None), CallResult::Ok),
        Err((NodeError::Refused { message, .. }, data)) => {
            let name = revert_data(data.as_ref()).and_then(|d| decode_revert(&d));
            CallResult::Reverted(name.unwrap_or(message))
        }
        Err((e, _)) => CallResult::Failed(Some(e)),
    }
}

enum CallResult {
    Ok(Vec<u8>),
    Reverted(String),
    Failed(Option<NodeError>),
}

/// Where the token lives and what its holder signed, from the flags and, for
/// what they leave out, the configuration.
struct Endpoints {
    /// JSON-RPC endpoints, tried in order.
    urls: Vec<String>,
    /// The chain they must serve, when they come from the configuration.
    chain_id: Option<u64>,
    /// The AccessCredentialNFT contract.
    contract: WalletAddress,
    /// The text the holder signs (the operator's public secret).
    secret: String,
}

/// Resolves the endpoints, the contract and the public secret: flags first,
/// the configuration only for what they leave out (a user's machine usually
/// has none, so it is read only when needed or named).
fn endpoints(
    rpc_url: Option<String>,
    nft_contract: Option<WalletAddress>,
    config: Option<PathBuf>,
    public_secret: Option<String>,
) -> Result<Endpoints, ChainCliError> {
    let needed = rpc_url.is_none() || nft_contract.is_none();
    let chain = match (config, needed) {
        (Some(path), _) => Some(load_chain(&path)?),
        (None, true) => Some(
            load_chain(Path::new(DEFAULT_CONFIG_PATH))
                .map_err(|e| ChainCliError::NoEndpoints(Box::new(e)))?,
        ),
        (None, false) => None,
    };
    let (urls, chain_id) = match (rpc_url, &chain) {
        (Some(u), _) => (vec![u], None),
        (None, Some(c)) => (c.rpc_urls.clone(), Some(c.chain_id)),
        (None, None) => return Err(ChainCliError::Invalid("give --rpc-url".into())),
    };
    let contract = match (nft_contract, &chain) {
        (Some(a), _) => a,
        (None, Some(c)) => c.nft_contract.ok_or_else(|| {
            ChainCliError::Invalid(
                "the configuration names no chain.nftContract; give --nft-contract".into(),
            )
        })?,
        (None, None) => return Err(ChainCliError::Invalid("give --nft-contract".into())),
    };
    let secret = public_secret
        .or_else(|| chain.as_ref().map(|c| c.public_secret.clone()))
        .unwrap_or_else(|| DEFAULT_PUBLIC_SECRET.into());
    Ok(Endpoints {
        urls,
        chain_id,
        contract,
        secret,
    })
}

/// The holder's signature of `secret`: made here from a key file, or read from
/// a signature file or standard input (never from argv, which others can see).
fn obtain_signature(
    key_file: Option<PathBuf>,
    signature_file: Option<PathBuf>,
    signature: Option<&str>,
    secret: &str,
) -> Result<Signature, ChainCliError> {
    if let Some(f) = key_file {
        let key = read_key_file(&f)?;
        eip191::sign(&key, secret.as_bytes())
            .map_err(|_| ChainCliError::Invalid("cannot sign with this key".into()))
    } else if let Some(f) = signature_file {
        let text = std::fs::read_to_string(&f).map_err(|source| ChainCliError::ReadFile {
            path: f.clone(),
            source,
        })?;
        parse_signature(&text, &f.display().to_string())
    } else {
        debug_assert_eq!(signature, Some("-"));
        let mut text = String::new();
        std::io::stdin().read_to_string(&mut text)?;
        parse_signature(&text, "standard input")
    }
}

/// Reads the token's encrypted payload (`getUserEncrypted`), turning reverts and
/// node failures into messages that say which flag to check.
async fn fetch_payload(
    rpc: &RpcClient,
    at: &Endpoints,
    token_id: u64,
) -> Result<Vec<u8>, ChainCliError> {
    let contract = &at.contract;
    let call = AccessCredentialNFT::getUserEncryptedCall {
        tokenId: U256::from(token_id),
    };
    match eth_call(rpc, contract, call.abi_encode()).await {
        CallResult::Ok(b) => Ok(
            AccessCredentialNFT::getUserEncryptedCall::abi_decode_returns(&b)
                .map_err(|_| {
                    ChainCliError::Invalid(format!(
                        "{contract} did not answer getUserEncrypted like an AccessCredentialNFT; check --nft-contract"
                    ))
                })?
                .to_vec(),
        ),
        CallResult::Reverted(e) if e == "ERC721NonexistentToken" => Err(ChainCliError::Invalid(
            format!("token {token_id} does not exist on {contract}"),
        )),
        CallResult::Reverted(e) => Err(ChainCliError::Invalid(format!(
            "getUserEncrypted({token_id}) on {contract} reverted with {e}; check --nft-contract"
        ))),
        CallResult::Failed(Some(e @ NodeError::Unavailable { .. })) => {
            Err(ChainCliError::Unreachable {
                urls: at.urls.join(", "),
                source: e,
            })
        }
        CallResult::Failed(Some(e)) => Err(e.into()),
        CallResult::Failed(None) => Err(ChainCliError::Invalid(format!(
            "the node's answer to getUserEncrypted({token_id}) is not hex data"
        ))),
    }
}

/// Warns when the token's owner is not the signer: the details may then be
/// stale or meant for someone else. Best effort; a failed read warns nothing.
async fn warn_if_not_owner(
    rpc: &RpcClient,
    contract: &WalletAddress,
    token_id: u64,
    signer: WalletAddress,
) {
    let call = AccessCredentialNFT::ownerOfCall {
        tokenId: U256::from(token_id),
    };
    if let CallResult::Ok(b) = eth_call(rpc, contract, call.abi_encode()).await
        && let Ok(owner) = AccessCredentialNFT::ownerOfCall::abi_decode_returns(&b)
        && owner.0.0 != *signer.as_bytes()
    {
        eprintln!(
            "warning: token {token_id} is owned by {}, not by the signer {signer}; the details may be stale or the token transferred",
            WalletAddress::from_bytes(owner.0.0)
        );
    }
}

/// Decrypts the payload, saying what a failure means for the holder (wrong
/// wallet or secret, or nothing written to the token yet).
fn decrypt(
    sig: &Signature,
    payload: &[u8],
    token_id: u64,
    secret: &str,
) -> Result<ConnectionDetails, ChainCliError> {
    match nft_payload::decrypt(sig, payload) {
        Ok(d) => Ok(d),
        Err(NftPayloadError::DecryptionFailed) => Err(ChainCliError::Invalid(format!(
            "this signature does not decrypt token {token_id}; sign the public secret ({secret:?}) with the wallet that received it"
        ))),
        Err(NftPayloadError::TooShort { len: 0 }) => Err(ChainCliError::Invalid(format!(
            "token {token_id} holds no connection details yet"
        ))),
        Err(source) => Err(ChainCliError::Payload { token_id, source }),
    }
}

/// Prints the connection details, with the `ssh` line that uses them.
fn print_details(
    out: &mut impl Write,
    token_id: u64,
    details: &ConnectionDetails,
    output: Output,
) -> Result<(), ChainCliError> {
    let ssh = format!(
        "ssh -p {} {}@{}",
        details.port, details.username, details.hostname
    );
    match output {
        Output::Json => {
            let v = json!({
                "tokenId": token_id,
                "hostname": details.hostname,
                "port": details.port,
                "username": details.username,
                "ssh": ssh,
            });
            serde_json::to_writer_pretty(&mut *out, &v).map_err(std::io::Error::from)?;
            writeln!(out)?;
        }
        Output::Text => {
            writeln!(out, "hostname  {}", details.hostname)?;
            writeln!(out, "port      {}", details.port)?;
            writeln!(out, "username  {}", details.username)?;
            writeln!(out, "ssh       {ssh}")?;
        }
    }
    Ok(())
}

/// Runs an `nft` command.
pub async fn nft(out: &mut impl Write, cmd: NftCommand) -> Result<(), ChainCliError> {
    let NftCommand::Decrypt {
        token_id,
        rpc_url,
        nft_contract,
        config,
        signature_file,
        signature,
        key_file,
        public_secret,
        output,
    } = cmd;
    let at = endpoints(rpc_url, nft_contract, config, public_secret)?;
    let sig = obtain_signature(key_file, signature_file, signature.as_deref(), &at.secret)?;
    // Who signed: a signature of another text recovers some other address,
    // so this is only used to warn about ownership.
    let signer = eip191::recover(at.secret.as_bytes(), &sig).ok();

    let rpc = blockhost_chain::setup::rpc_client(&at.urls, at.chain_id)?;
    let payload = fetch_payload(&rpc, &at, token_id).await?;
    if let Some(signer) = signer {
        warn_if_not_owner(&rpc, &at.contract, token_id, signer).await;
    }
    let details = decrypt(&sig, &payload, token_id, &at.secret)?;
    print_details(out, token_id, &details, output)
}
