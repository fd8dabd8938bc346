//! `bhctl chain deploy` and `bhctl plan create`: the operator's transactions,
//! signed with the configured server key.
//!
//! Both read `blockhostd`'s configuration (`chain.rpcUrls`, `chain.chainId`,
//! `chain.serverKeyFile`), check that the node serves the configured chain, and
//! send through [`ServerWallet::transact`]. Before a call is sent it is tried
//! with `eth_call`, so a revert is reported with the contract's custom error
//! name (`PlanPriceMustBePositive`, `OwnableUnauthorizedAccount`, …) rather
//! than a node's generic "execution reverted".
//!
//! `chain deploy` then writes the new addresses and the deployment block into
//! the configuration file in place ([`crate::config_edit`]), so blockhostd
//! starts watching them at its next start.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use alloy_primitives::{Address, U256};
use alloy_sol_types::{SolCall, SolConstructor, SolEvent};
use blockhost_chain::bindings::{AccessCredentialNFT, BlockhostSubscriptions, MockERC20};
use blockhost_crd::WalletAddress;
use blockhost_crd::config::{ChainConfig, DEFAULT_CONFIG_PATH};
use clap::{Args, Subcommand, ValueEnum};
use serde_json::json;

use crate::config_edit::{self, EditError};
use blockhost_api::config::ConfigError;
use blockhost_chain::node::NodeError;
use blockhost_chain::rpc::RpcClient;
use blockhost_chain::setup::SetupError;
use blockhost_chain::wallet::{Receipt, ServerWallet, WalletError};

/// Longest plan name accepted (the contract takes any string; signup pages and
/// tables do not).
pub const MAX_PLAN_NAME: usize = 64;

/// Output of the chain commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Lines for people.
    Text,
    /// One JSON object.
    Json,
}

/// Where the configuration is.
#[derive(Debug, Clone, Args)]
pub struct ConfigArg {
    /// blockhostd's configuration file (its `chain` section is used).
    #[arg(long, env = "BLOCKHOST_CONFIG", default_value = DEFAULT_CONFIG_PATH)]
    pub config: PathBuf,
}

/// `bhctl chain …`.
#[derive(Debug, Subcommand)]
pub enum ChainCommand {
    /// Deploy BlockhostSubscriptions and AccessCredentialNFT with the server key
    /// and write their addresses into the configuration.
    Deploy {
        #[command(flatten)]
        config: ConfigArg,
        /// The ERC-20 buyers pay with (setPrimaryStablecoin).
        #[arg(long, value_name = "ADDRESS", conflicts_with = "dev_stablecoin")]
        stablecoin: Option<WalletAddress>,
        /// Deploy a mock ERC-20 with 6 decimals and make it the payment token
        /// (local development chains only: anyone can mint it).
        #[arg(long)]
        dev_stablecoin: bool,
        /// Deploy even though the configuration names contracts that exist.
        #[arg(long)]
        force: bool,
        /// How long to wait for each receipt, in seconds.
        #[arg(long, default_value_t = 120)]
        timeout: u64,
        /// Output format.
        #[arg(short, long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
}

/// `bhctl plan …`.
#[derive(Debug, Subcommand)]
pub enum PlanCommand {
    /// Create a plan on chain (createPlan) with the server key.
    Create {
        /// The plan's name (1–64 characters).
        name: String,
        /// Price per day in US cents (> 0).
        cents_per_day: u64,
        #[command(flatten)]
        config: ConfigArg,
        /// How long to wait for the receipt, in seconds.
        #[arg(long, default_value_t = 120)]
        timeout: u64,
        /// Output format.
        #[arg(short, long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
}

/// Why a chain command failed. Messages say what to do.
#[derive(Debug, thiserror::Error)]
pub enum ChainCliError {
    /// The configuration file could not be loaded.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// It has no `chain` section.
    #[error(
        "{} has no `chain` section; add one with chainId, rpcUrls and serverKeyFile (see README.md, Configuration)",
        path.display()
    )]
    NoChainSection {
        /// The file.
        path: PathBuf,
    },
    /// The chain client cannot be set up (server key, RPC client, contracts).
    #[error(transparent)]
    Setup(#[from] SetupError),
    /// No endpoint answered.
    #[error("cannot reach the chain at {urls}; check chain.rpcUrls and that the node is running")]
    Unreachable {
        /// The configured endpoints.
        urls: String,
        /// Why.
        #[source]
        source: NodeError,
    },
    /// A node request failed.
    #[error(transparent)]
    Node(#[from] NodeError),
    /// A transaction failed.
    #[error(transparent)]
    Wallet(#[from] WalletError),
    /// A call would revert with a known error.
    #[error("{what} would revert with {error}{hint}")]
    Revert {
        /// What was attempted.
        what: String,
        /// The decoded error (name, or the raw selector).
        error: String,
        /// What to do about it, with a leading separator.
        hint: String,
    },
    /// The configuration already names live contracts.
    #[error(
        "{} already names contracts with code on chain {chain_id} (subscriptions {subscriptions}, nft {nft}); pass --force to deploy new ones (blockhostd will then watch only the new ones)",
        path.display()
    )]
    AlreadyDeployed {
        /// The file.
        path: PathBuf,
        /// The chain.
        chain_id: u64,
        /// Configured address.
        subscriptions: String,
        /// Configured address.
        nft: String,
    },
    /// The contracts were deployed but the file could not be updated.
    #[error(
        "the contracts were deployed (subscriptionsContract {subscriptions}, nftContract {nft}, deploymentBlock {block}) but {} could not be updated; add these keys to its chain section by hand",
        path.display()
    )]
    ConfigUpdate {
        /// The file.
        path: PathBuf,
        /// New address.
        subscriptions: WalletAddress,
        /// New address.
        nft: WalletAddress,
        /// Deployment block.
        block: u64,
        /// Why.
        #[source]
        source: EditError,
    },
    /// A bad argument.
    #[error("{0}")]
    Invalid(String),
    /// Neither the flags nor the default configuration say where the NFT is.
    #[error("give --rpc-url and --nft-contract")]
    NoEndpoints(#[source] Box<ChainCliError>),
    /// The token's payload is not what `bhctl` can decrypt and read.
    #[error("token {token_id}")]
    Payload {
        /// The token.
        token_id: u64,
        /// Why.
        #[source]
        source: blockhost_chain::nft_payload::NftPayloadError,
    },
    /// A file named on the command line cannot be read.
    #[error("cannot read {}", path.display())]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A receipt lacks what a successful transaction must carry.
    #[error(
        "the receipt of transaction 0x{} has no {what}; check that the configured contract is BlockhostSubscriptions",
        hex::encode(hash)
    )]
    Receipt {
        /// The transaction.
        hash: [u8; 32],
        /// What is missing.
        what: &'static str,
    },
    /// The admin key file cannot be used (`bhctl admin knock --key-file`).
    #[error("cannot use the admin key")]
    AdminKey(#[source] blockhost_chain::key::KeyError),
    /// Writing output failed.
    #[error("cannot write output")]
    Io(#[from] std::io::Error),
}

/// Loads the configuration's `chain` section.
pub fn load_chain(path: &Path) -> Result<ChainConfig, ChainCliError> {
    let cfg = blockhost_api::config::load(path, true)?;
    cfg.chain.ok_or_else(|| ChainCliError::NoChainSection {
        path: path.to_owned(),
    })
}

/// The server wallet on the configured chain, after checking that the node
/// answers and serves that chain.
pub async fn server_wallet(chain: &ChainConfig) -> Result<ServerWallet, ChainCliError> {
    let key =
        blockhost_chain::key::load_server_key(&chain.server_key_file).map_err(SetupError::from)?;
    let rpc = blockhost_chain::setup::rpc_client(&chain.rpc_urls, Some(chain.chain_id))?;
    let wallet = ServerWallet::new(&key, chain.chain_id, Arc::new(rpc));
    match wallet.check_chain().await {
        Ok(()) => Ok(wallet),
        Err(WalletError::Node(source @ NodeError::Unavailable { .. })) => {
            Err(ChainCliError::Unreachable {
                // Hosted nodes' URLs carry keys: scheme, host and port only.
                urls: chain
                    .rpc_urls
                    .iter()
                    .map(|u| blockhost_chain::rpc::redact(u))
                    .collect::<Vec<_>>()
                    .join(", "),
                source,
            })
        }
        Err(e) => Err(e.into()),
    }
}

pub use blockhost_chain::wallet::{decode_revert, revert_data};

fn revert_hint(name: &str, wallet: &ServerWallet) -> String {
    match name {
        "OwnableUnauthorizedAccount" => format!(
            ": the server key ({}) does not own the contract; use the key that deployed it (chain.serverKeyFile)",
            wallet.address()
        ),
        "PlanPriceMustBePositive" => ": the price must be above 0".into(),
        "InvalidAddress" => ": give a non-zero address".into(),
        _ => String::new(),
    }
}

/// `eth_call` of `data` to `to` from the server wallet; `Err(Revert)` when the
/// contract would refuse it.
async fn preflight(
    wallet: &ServerWallet,
    to: [u8; 20],
    data: &[u8],
    what: &str,
) -> Result<(), ChainCliError> {
    let call = json!({
        "from": wallet.address().to_lower_hex(),
        "to": format!("0x{}", hex::encode(to)),
        "data": format!("0x{}", hex::encode(data)),
    });
    match wallet
        .rpc()
        .call_with_error_data("eth_call", json!([call, "latest"]))
        .await
    {
        Ok(_) => Ok(()),
        Err((NodeError::Refused { message, .. }, data)) => {
            let error = revert_data(data.as_ref())
                .and_then(|d| decode_revert(&d))
                .unwrap_or(message);
            Err(ChainCliError::Revert {
                what: what.to_owned(),
                hint: revert_hint(&error, wallet),
                error,
            })
        }
        Err((e, _)) => Err(e.into()),
    }
}

/// Tries, then sends a call, and waits for its receipt (also used by the setup wizard).
pub async fn send_call(
    wallet: &ServerWallet,
    to: [u8; 20],
    data: Vec<u8>,
    what: &str,
    timeout: Duration,
) -> Result<Receipt, ChainCliError> {
    preflight(wallet, to, &data, what).await?;
    Ok(wallet.transact(Some(to), data, timeout).await?)
}

/// Deploys `code` (creation bytecode with constructor arguments) and returns the
/// new contract's address from the receipt.
pub async fn deploy_code(
    wallet: &ServerWallet,
    code: Vec<u8>,
    timeout: Duration,
) -> Result<(WalletAddress, Receipt), ChainCliError> {
    let r = wallet.transact(None, code, timeout).await?;
    let addr = r.contract_address.ok_or(ChainCliError::Receipt {
        hash: r.hash,
        what: "contract address",
    })?;
    Ok((WalletAddress::from_bytes(addr), r))
}

/// Whether `addr` holds contract code at the latest block.
pub async fn has_code(rpc: &RpcClient, addr: &WalletAddress) -> Result<bool, NodeError> {
    let v = rpc
        .call("eth_getCode", json!([addr.to_lower_hex(), "latest"]))
        .await?;
    Ok(v.as_str().is_some_and(|s| s.len() > 2))
}

fn progress(steps: u64, quiet: bool) -> indicatif::ProgressBar {
    if quiet || !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(steps);
    if let Ok(style) = indicatif::ProgressStyle::with_template("{spinner} [{pos}/{len}] {msg}") {
        bar.set_style(style);
    }
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}

/// Name of the mock token `--dev-stablecoin` deploys.
pub const DEV_TOKEN_NAME: &str = "Dev USD";
/// Its symbol.
pub const DEV_TOKEN_SYMBOL: &str = "dUSD";
/// Its decimals (as USDC).
pub const DEV_TOKEN_DECIMALS: u8 = 6;

/// Runs a `chain` command.
pub async fn chain(out: &mut impl Write, cmd: ChainCommand) -> Result<(), ChainCliError> {
    match cmd {
        ChainCommand::Deploy {
            config,
            stablecoin,
            dev_stablecoin,
            force,
            timeout,
            output,
        } => {
            let args = DeployArgs {
                path: config.config,
                stablecoin,
                dev_stablecoin,
                force,
                timeout: Duration::from_secs(timeout),
                output,
            };
            deploy(out, args).await
        }
    }
}

/// `chain deploy`'s arguments, taken out of the clap enum so its steps can share them.
struct DeployArgs {
    path: PathBuf,
    stablecoin: Option<WalletAddress>,
    dev_stablecoin: bool,
    force: bool,
    timeout: Duration,
    output: Output,
}

/// `bhctl chain deploy`: checks, deploys, records the addresses in the
/// configuration, reports.
async fn deploy(out: &mut impl Write, args: DeployArgs) -> Result<(), ChainCliError> {
    let chain = load_chain(&args.path)?;
    let wallet = server_wallet(&chain).await?;
    if !args.force {
        refuse_live_contracts(&chain, &wallet, &args.path).await?;
    }
    // Checked before anything is deployed: setPrimaryStablecoin on an address
    // without code would revert only after two contracts cost gas.
    if let Some(t) = args.stablecoin
        && !has_code(wallet.rpc(), &t).await?
    {
        return Err(ChainCliError::Invalid(format!(
            "there is no contract at {t} on chain {}; --stablecoin takes the address of the ERC-20 token buyers pay with",
            chain.chain_id
        )));
    }
    let d = deploy_with_progress(&wallet, &args).await?;
    update_config(&args.path, d.subs, d.nft, d.block).map_err(|source| {
        ChainCliError::ConfigUpdate {
            path: args.path.clone(),
            subscriptions: d.subs,
            nft: d.nft,
            block: d.block,
            source,
        }
    })?;
    print_deployment(out, &args, chain.chain_id, &wallet, &d)
}

/// Refuses to deploy over contracts the configuration names that still have
/// code: blockhostd would silently stop watching them.
async fn refuse_live_contracts(
    chain: &ChainConfig,
    wallet: &ServerWallet,
    path: &Path,
) -> Result<(), ChainCliError> {
    let mut live = false;
    for a in [chain.subscriptions_contract, chain.nft_contract]
        .iter()
        .flatten()
    {
        live |= has_code(wallet.rpc(), a).await?;
    }
    if live {
        let show = |a: Option<WalletAddress>| a.map_or("unset".into(), |a| a.to_string());
        return Err(ChainCliError::AlreadyDeployed {
            path: path.to_owned(),
            chain_id: chain.chain_id,
            subscriptions: show(chain.subscriptions_contract),
            nft: show(chain.nft_contract),
        });
    }
    Ok(())
}

/// Runs [`deploy_all`] under a progress bar; on failure, names what was
/// already deployed, since the configuration does not record it.
async fn deploy_with_progress(
    wallet: &ServerWallet,
    args: &DeployArgs,
) -> Result<Deployment, ChainCliError> {
    let (stablecoin, dev) = (args.stablecoin, args.dev_stablecoin);
    let steps = 2 + u64::from(dev) + u64::from(dev || stablecoin.is_some());
    let bar = progress(steps, args.output == Output::Json);
    let mut done = Vec::new();
    let result = deploy_all(wallet, stablecoin, dev, args.timeout, &bar, &mut done).await;
    bar.finish_and_clear();
    if result.is_err() {
        // What was deployed before the failure is not in the configuration;
        // say where it is so the operator can reuse or ignore it.
        for (name, addr) in &done {
            eprintln!(
                "note: {name} was deployed at {addr} before the failure; the configuration was not changed"
            );
        }
    }
    result
}

/// Reports the deployment: one JSON object, or lines for people.
fn print_deployment(
    out: &mut impl Write,
    args: &DeployArgs,
    chain_id: u64,
    wallet: &ServerWallet,
    d: &Deployment,
) -> Result<(), ChainCliError> {
    let Deployment {
        subs,
        nft,
        token,
        block,
    } = d;
    let path = &args.path;
    match args.output {
        Output::Json => {
            let v = json!({
                "chainId": chain_id,
                "subscriptionsContract": subs.to_checksum(),
                "nftContract": nft.to_checksum(),
                "stablecoin": token.map(|t| t.to_checksum()),
                "devStablecoin": args.dev_stablecoin,
                "deploymentBlock": block,
                "owner": wallet.address().to_checksum(),
                "config": path.display().to_string(),
            });
            serde_json::to_writer_pretty(&mut *out, &v).map_err(std::io::Error::from)?;
            writeln!(out)?;
        }
        Output::Text => {
            writeln!(out, "BlockhostSubscriptions  {}", subs.to_checksum())?;
            writeln!(out, "AccessCredentialNFT     {}", nft.to_checksum())?;
            match token {
                Some(t) if args.dev_stablecoin => writeln!(
                    out,
                    "stablecoin              {} (dev MockERC20, {DEV_TOKEN_DECIMALS} decimals)",
                    t.to_checksum()
                )?,
                Some(t) => writeln!(out, "stablecoin              {}", t.to_checksum())?,
                None => writeln!(
                    out,
                    "stablecoin              not set (buyers cannot pay until setPrimaryStablecoin is called)"
                )?,
            }
            writeln!(out, "deployment block        {block}")?;
            writeln!(
                out,
                "owner                   {}",
                wallet.address().to_checksum()
            )?;
            writeln!(
                out,
                "{} updated; restart blockhostd to watch the new contracts",
                path.display()
            )?;
        }
    }
    Ok(())
}

/// What `chain deploy` created.
struct Deployment {
    subs: WalletAddress,
    nft: WalletAddress,
    token: Option<WalletAddress>,
    block: u64,
}

/// The deployment transactions, in order; `done` collects each contract as it
/// lands, for the report when a later step fails.
async fn deploy_all(
    wallet: &ServerWallet,
    stablecoin: Option<WalletAddress>,
    dev_stablecoin: bool,
    timeout: Duration,
    bar: &indicatif::ProgressBar,
    done: &mut Vec<(&'static str, WalletAddress)>,
) -> Result<Deployment, ChainCliError> {
    bar.set_message(format!(
        "deploying BlockhostSubscriptions from {}",
        wallet.address()
    ));
    let (subs, r) = deploy_code(wallet, BlockhostSubscriptions::BYTECODE.to_vec(), timeout).await?;
    done.push(("BlockhostSubscriptions", subs));
    let block = r.block_number;
    bar.inc(1);
    bar.set_message("deploying AccessCredentialNFT");
    let (nft, _) = deploy_code(wallet, AccessCredentialNFT::BYTECODE.to_vec(), timeout).await?;
    done.push(("AccessCredentialNFT", nft));
    bar.inc(1);

    let mut token = stablecoin;
    if dev_stablecoin {
        bar.set_message("deploying the dev stablecoin (MockERC20)");
        let args = MockERC20::constructorCall {
            name_: DEV_TOKEN_NAME.into(),
            symbol_: DEV_TOKEN_SYMBOL.into(),
            decimals_: DEV_TOKEN_DECIMALS,
        }
        .abi_encode();
        let code = [MockERC20::BYTECODE.as_ref(), &args].concat();
        let (t, _) = deploy_code(wallet, code, timeout).await?;
        done.push(("the dev stablecoin (MockERC20)", t));
        token = Some(t);
        bar.inc(1);
    }
    if let Some(t) = token {
        bar.set_message(format!("setting the payment token {t}"));
        let data = BlockhostSubscriptions::setPrimaryStablecoinCall {
            stablecoin: Address::from(*t.as_bytes()),
        }
        .abi_encode();
        send_call(
            wallet,
            *subs.as_bytes(),
            data,
            "setPrimaryStablecoin",
            timeout,
        )
        .await?;
        bar.inc(1);
    }
    Ok(Deployment {
        subs,
        nft,
        token,
        block,
    })
}

/// Writes the addresses and block into the configuration's `chain` section,
/// checking that the edited file parses to exactly those values before
/// replacing it.
fn update_config(
    path: &Path,
    subs: WalletAddress,
    nft: WalletAddress,
    block: u64,
) -> Result<(), EditError> {
    let text = std::fs::read_to_string(path).map_err(|source| EditError::Write {
        path: path.to_owned(),
        source,
    })?;
    let edited = config_edit::set_chain_keys(
        &text,
        &[
            (
                "subscriptionsContract",
                format!("\"{}\"", subs.to_checksum()),
            ),
            ("nftContract", format!("\"{}\"", nft.to_checksum())),
            ("deploymentBlock", block.to_string()),
        ],
    )?;
    let parsed: Option<blockhost_crd::DaemonConfig> =
        blockhost_api::yaml::from_single(&path.display().to_string(), &edited).ok();
    let chain = parsed.and_then(|c| c.chain);
    let ok = chain.is_some_and(|c| {
        c.subscriptions_contract == Some(subs)
            && c.nft_contract == Some(nft)
            && c.deployment_block == block
    });
    if !ok {
        return Err(EditError::Unverified);
    }
    config_edit::write_atomic(path, &edited)
}

/// Checks a plan's name and price before anything is sent.
pub fn validate_plan(name: &str, cents_per_day: u64) -> Result<(), String> {
    if name.trim().is_empty() {
        return Err("the plan name is empty; give a name such as `basic`".into());
    }
    let len = name.chars().count();
    if len > MAX_PLAN_NAME {
        return Err(format!(
            "the plan name has {len} characters; at most {MAX_PLAN_NAME} are allowed"
        ));
    }
    if name.chars().any(char::is_control) {
        return Err("the plan name contains control characters".into());
    }
    if cents_per_day == 0 {
        return Err("the price per day must be above 0 cents".into());
    }
    Ok(())
}

/// `createPlan(name, cents_per_day)` with the server wallet; returns the receipt
/// and the `PlanCreated` event of this very transaction (also used by the setup
/// wizard).
pub async fn create_plan(
    wallet: &ServerWallet,
    subs: WalletAddress,
    name: &str,
    cents_per_day: u64,
    timeout: Duration,
) -> Result<(Receipt, BlockhostSubscriptions::PlanCreated), ChainCliError> {
    let data = BlockhostSubscriptions::createPlanCall {
        name: name.to_owned(),
        pricePerDayUsdCents: U256::from(cents_per_day),
    }
    .abi_encode();
    let r = send_call(wallet, *subs.as_bytes(), data, "createPlan", timeout).await?;
    // The id comes from the event of this very transaction: a counter read
    // afterwards could already include someone else's plan.
    let created = r
        .logs
        .iter()
        .filter(|l| &l.address == subs.as_bytes())
        .find_map(|l| {
            let topics = l
                .topics
                .iter()
                .map(|t| alloy_primitives::B256::from(*t))
                .collect::<Vec<_>>();
            BlockhostSubscriptions::PlanCreated::decode_raw_log(topics, &l.data).ok()
        })
        .ok_or(ChainCliError::Receipt {
            hash: r.hash,
            what: "PlanCreated event",
        })?;
    Ok((r, created))
}

/// Runs a `plan` command.
pub async fn plan(out: &mut impl Write, cmd: PlanCommand) -> Result<(), ChainCliError> {
    let PlanCommand::Create {
        name,
        cents_per_day,
        config,
        timeout,
        output,
    } = cmd;
    validate_plan(&name, cents_per_day).map_err(ChainCliError::Invalid)?;
    let chain = load_chain(&config.config)?;
    let subs = chain.contracts().map_err(SetupError::from)?.subscriptions;
    let wallet = server_wallet(&chain).await?;
    let (r, created) = create_plan(
        &wallet,
        subs,
        &name,
        cents_per_day,
        Duration::from_secs(timeout),
    )
    .await?;
    let id = created.planId;
    match output {
        Output::Json => {
            // A number for scripts (`jq .planId`); ids past 2^64 are not
            // reachable by createPlan's counter in practice.
            let plan_id = u64::try_from(id).map_or_else(|_| json!(id.to_string()), |n| json!(n));
            let v = json!({
                "planId": plan_id,
                "name": created.name,
                "pricePerDayUsdCents": cents_per_day,
                "transaction": format!("0x{}", hex::encode(r.hash)),
                "block": r.block_number,
            });
            serde_json::to_writer_pretty(&mut *out, &v).map_err(std::io::Error::from)?;
            writeln!(out)?;
        }
        Output::Text => writeln!(
            out,
            "plan {id} created: {:?}, {} cents/day (transaction 0x{}, block {})",
            created.name,
            created.pricePerDayUsdCents,
            hex::encode(r.hash),
            r.block_number
        )?,
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use alloy_sol_types::SolError;

    use super::*;

    #[test]
    fn plan_inputs_are_checked() {
        assert!(validate_plan("basic", 150).is_ok());
        assert!(validate_plan(&"é".repeat(64), 1).is_ok());
        assert!(validate_plan("", 150).is_err());
        assert!(validate_plan("  ", 150).is_err());
        assert!(validate_plan(&"a".repeat(65), 150).is_err());
        assert!(validate_plan("a\nb", 150).is_err());
        assert!(validate_plan("basic", 0).unwrap_err().contains("above 0"));
    }

    #[test]
    fn reverts_are_named() {
        let data = BlockhostSubscriptions::PlanPriceMustBePositive {}.abi_encode();
        assert_eq!(decode_revert(&data).unwrap(), "PlanPriceMustBePositive");
        let data = AccessCredentialNFT::ERC721NonexistentToken {
            tokenId: U256::from(3u64),
        }
        .abi_encode();
        assert_eq!(decode_revert(&data).unwrap(), "ERC721NonexistentToken");
        let data = alloy_sol_types::Revert {
            reason: "nope".into(),
        }
        .abi_encode();
        assert_eq!(decode_revert(&data).unwrap(), "Error(\"nope\")");
        assert!(decode_revert(&[1, 2, 3, 4]).unwrap().contains("0x01020304"));
        assert_eq!(decode_revert(&[1]), None);
        assert_eq!(
            revert_data(Some(&json!("0xabcd"))).unwrap(),
            vec![0xab, 0xcd]
        );
        assert_eq!(
            revert_data(Some(&json!({"data": "0x01"}))).unwrap(),
            vec![1]
        );
        assert_eq!(revert_data(None), None);
    }
}
