//! `bhctl admin knock` (the admin, from their own machine: opens the host's
//! management ports for a while with a command sent over the chain) and
//! `bhctl firewall status` (on the host: the rules in force and the open
//! knocks, through blockhostd and the root agent).
//!
//! A knock is a 0-value transaction from the admin wallet to the target (by
//! default itself) whose data is the command JSON encrypted to the server's
//! public key in the original's layout (`blockhost_chain::admin`). The admin key
//! comes from a file or standard input, and the command name (a secret) from a
//! file or the environment: neither is ever on the command line.

use std::io::{BufRead, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use blockhost_api::FirewallReport;
use blockhost_api::client::Client;
use blockhost_chain::admin::{Command, KnockParams};
use blockhost_chain::rpc::RpcClient;
use blockhost_chain::wallet::{ServerWallet, WalletError};
use blockhost_crd::WalletAddress;
use clap::{Args, Subcommand};
use hyper::Method;
use k256::{PublicKey, SecretKey};

use crate::CliError;
use crate::chain::{ChainCliError, Output};
use crate::output::Format;

/// `bhctl admin …`.
#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Open management ports (SSH, the Proxmox GUI) for a while with a command
    /// signed by the admin wallet and sent over the chain.
    Knock(KnockArgs),
}

/// `bhctl admin knock`'s arguments.
#[derive(Debug, Args)]
pub struct KnockArgs {
    /// Ports to open (comma-separated); absent: the host's default ports.
    #[arg(long, value_delimiter = ',')]
    pub ports: Vec<u16>,
    /// Seconds the ports stay open (the host clamps to 1–3600); absent: its default.
    #[arg(long)]
    pub duration: Option<u64>,
    /// Open only to this address (IPv4 or IPv6); absent: to any source.
    #[arg(long, value_name = "ADDR")]
    pub source: Option<IpAddr>,
    /// File holding the admin wallet's secret key as hex (mode 0600), or - to
    /// read it from standard input.
    #[arg(long, value_name = "PATH")]
    pub key_file: PathBuf,
    /// File holding the command name (the host's `admin.command`); or set
    /// BLOCKHOST_ADMIN_COMMAND.
    #[arg(long, value_name = "PATH")]
    pub command_file: Option<PathBuf>,
    /// The server's public key (hex, 33 or 65 bytes) the command is encrypted to.
    #[arg(long, env = "BLOCKHOST_SERVER_PUBLIC_KEY", value_name = "HEX")]
    pub server_public_key: String,
    /// A JSON-RPC endpoint of the chain.
    #[arg(long, env = "BLOCKHOST_RPC_URL")]
    pub rpc_url: String,
    /// The chain id (the transaction is signed for it).
    #[arg(long, env = "BLOCKHOST_CHAIN_ID")]
    pub chain_id: u64,
    /// Where the command is sent (the host's `admin.target`); absent: the admin
    /// wallet itself.
    #[arg(long, value_name = "ADDRESS")]
    pub to: Option<WalletAddress>,
    /// Wait until the transaction is mined.
    #[arg(long)]
    pub wait: bool,
    /// Then wait until HOST accepts a TCP connection on each port (the knock
    /// is open); implies --wait.
    #[arg(long, value_name = "HOST")]
    pub wait_open: Option<IpAddr>,
    /// How long to wait, in seconds.
    #[arg(long, default_value_t = 120)]
    pub timeout: u64,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
}

fn invalid(s: impl Into<String>) -> ChainCliError {
    ChainCliError::Invalid(s.into())
}

fn read_file(path: &Path) -> Result<String, ChainCliError> {
    std::fs::read_to_string(path).map_err(|source| ChainCliError::ReadFile {
        path: path.to_owned(),
        source,
    })
}

/// The admin key: from a file (owner-only, as the server key) or one line of stdin.
fn admin_key(path: &Path) -> Result<SecretKey, ChainCliError> {
    if path != Path::new("-") {
        return blockhost_chain::key::load_server_key(path).map_err(ChainCliError::AdminKey);
    }
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|source| ChainCliError::ReadFile {
            path: path.to_owned(),
            source,
        })?;
    let digits = line.trim();
    let digits = digits.strip_prefix("0x").unwrap_or(digits);
    hex::decode(digits)
        .ok()
        .and_then(|b| SecretKey::from_slice(&b).ok())
        .ok_or_else(|| {
            invalid("standard input does not hold a secp256k1 secret key as 64 hex digits")
        })
}

fn command_name(file: Option<&Path>) -> Result<String, ChainCliError> {
    let name = match file {
        Some(p) => read_file(p)?.trim().to_owned(),
        None => std::env::var("BLOCKHOST_ADMIN_COMMAND").map_err(|_| {
            invalid(
                "give --command-file or set BLOCKHOST_ADMIN_COMMAND to the host's admin.command",
            )
        })?,
    };
    if name.is_empty() {
        return Err(invalid("the command name is empty"));
    }
    Ok(name)
}

fn server_public_key(hex_key: &str) -> Result<PublicKey, ChainCliError> {
    let digits = hex_key.trim().trim_start_matches("0x");
    hex::decode(digits)
        .ok()
        .and_then(|b| PublicKey::from_sec1_bytes(&b).ok())
        .ok_or_else(|| {
            invalid("--server-public-key is not a secp256k1 public key in hex (33 or 65 bytes)")
        })
}

/// The encrypted command of `a`, dated now.
pub fn command_data(
    a: &KnockArgs,
    name: String,
    server: &PublicKey,
) -> Result<Vec<u8>, ChainCliError> {
    let cmd = Command {
        command: name,
        params: KnockParams {
            ports: (!a.ports.is_empty()).then(|| a.ports.iter().map(|&p| u64::from(p)).collect()),
            duration: a.duration,
            source: a.source.map(|s| s.to_string()),
        },
        nonce: uuid::Uuid::new_v4().to_string(),
        timestamp: chrono::Utc::now().timestamp(),
    };
    let json = serde_json::to_vec(&cmd).map_err(|e| invalid(e.to_string()))?;
    blockhost_chain::admin::encrypt(server, &json)
        .map_err(|e| invalid(format!("cannot encrypt the command: {e}")))
}

/// `bhctl admin …`.
pub async fn admin(out: &mut impl Write, cmd: AdminCommand) -> Result<(), ChainCliError> {
    match cmd {
        AdminCommand::Knock(a) => knock(out, a).await,
    }
}

async fn knock(out: &mut impl Write, a: KnockArgs) -> Result<(), ChainCliError> {
    let key = admin_key(&a.key_file)?;
    let name = command_name(a.command_file.as_deref())?;
    let server = server_public_key(&a.server_public_key)?;
    let data = command_data(&a, name, &server)?;
    let rpc = RpcClient::for_chain(vec![a.rpc_url.clone()], a.chain_id)
        .map_err(|e| invalid(format!("cannot set up the RPC client: {e}")))?;
    let wallet = ServerWallet::new(&key, a.chain_id, Arc::new(rpc));
    wallet.check_chain().await?;
    let to = a.to.unwrap_or_else(|| wallet.address());
    let nonce = wallet.nonce("pending").await?;
    let tx = wallet.prepare(Some(*to.as_bytes()), data, nonce).await?;
    wallet.ensure_funds(&tx).await?;
    let signed = wallet.sign(&tx).map_err(WalletError::from)?;
    wallet.send_raw(&signed).await.map_err(WalletError::from)?;
    let hash = format!("0x{}", hex::encode(signed.hash));
    let start = Instant::now();
    let timeout = Duration::from_secs(a.timeout);
    let mut block = None;
    if a.wait || a.wait_open.is_some() {
        block = Some(wait_mined(&wallet, signed.hash, start, timeout).await?);
    }
    if let Some(host) = a.wait_open {
        wait_open(host, &a.ports, start, timeout).await?;
    }
    print_sent(out, a.output, &hash, block, a.wait_open.is_some())
}

async fn wait_mined(
    wallet: &ServerWallet,
    hash: [u8; 32],
    start: Instant,
    timeout: Duration,
) -> Result<u64, ChainCliError> {
    loop {
        if let Some(r) = wallet.receipt(&hash).await? {
            return Ok(r.block_number);
        }
        if start.elapsed() > timeout {
            return Err(invalid(format!(
                "transaction 0x{} not mined within {timeout:?}",
                hex::encode(hash)
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until `host` accepts a connection on each port (22 when none was named).
async fn wait_open(
    host: IpAddr,
    ports: &[u16],
    start: Instant,
    timeout: Duration,
) -> Result<(), ChainCliError> {
    let ports = if ports.is_empty() {
        vec![22]
    } else {
        ports.to_vec()
    };
    for p in ports {
        let addr = SocketAddr::new(host, p);
        loop {
            let ok = tokio::task::spawn_blocking(move || {
                TcpStream::connect_timeout(&addr, Duration::from_millis(300)).is_ok()
            })
            .await
            .unwrap_or(false);
            if ok {
                break;
            }
            if start.elapsed() > timeout {
                return Err(invalid(format!(
                    "{addr} did not open within {timeout:?}; see `bhctl get events` on the host (Host/admin)"
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

fn print_sent(
    out: &mut impl Write,
    format: Output,
    hash: &str,
    block: Option<u64>,
    open: bool,
) -> Result<(), ChainCliError> {
    let w = ChainCliError::Io;
    match format {
        Output::Json => {
            let v = serde_json::json!({"transactionHash": hash, "block": block, "open": open});
            writeln!(out, "{v}").map_err(w)
        }
        Output::Text => {
            writeln!(out, "{hash}").map_err(w)?;
            if let Some(b) = block {
                writeln!(out, "mined in block {b}").map_err(w)?;
            }
            if open {
                writeln!(out, "open").map_err(w)?;
            }
            Ok(())
        }
    }
}

/// `bhctl firewall …`.
#[derive(Debug, Subcommand)]
pub enum FirewallCommand {
    /// The host firewall in force and the open knocks (asked of the root agent
    /// through blockhostd).
    Status {
        /// Output format.
        #[arg(short, long, value_enum, default_value_t = Format::Table)]
        output: Format,
    },
}

/// `bhctl firewall status`.
pub async fn firewall(
    client: &Client,
    out: &mut impl Write,
    cmd: FirewallCommand,
) -> Result<(), CliError> {
    let FirewallCommand::Status { output } = cmd;
    let body = client.request(Method::GET, "/firewall", None).await?;
    let report: FirewallReport = serde_json::from_slice(&body)?;
    match output {
        Format::Table | Format::Wide | Format::Name => {
            firewall_table(out, &report, output == Format::Wide)?
        }
        _ => crate::output::print_value(out, &serde_json::from_slice(&body)?, output)?,
    }
    Ok(())
}

fn firewall_table(out: &mut impl Write, r: &FirewallReport, wide: bool) -> std::io::Result<()> {
    if r.in_force {
        writeln!(out, "firewall: in force")?;
    } else {
        writeln!(out, "firewall: NOT as configured")?;
        for p in &r.problems {
            writeln!(out, "  - {p}")?;
        }
    }
    if r.knocks.is_empty() {
        writeln!(out, "knocks: none open")?;
    } else {
        writeln!(
            out,
            "{:<40} {:>5} {:>9} {:>8}  EXPIRES",
            "SOURCE", "PORT", "DURATION", "LEFT"
        )?;
        for k in &r.knocks {
            let source = k.source.map_or_else(|| "any".into(), |s| s.to_string());
            let at = chrono::DateTime::from_timestamp(i64::try_from(k.expires_at).unwrap_or(0), 0)
                .map_or_else(String::new, |t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string());
            writeln!(
                out,
                "{source:<40} {:>5} {:>8}s {:>7}s  {at}",
                k.port, k.timeout_secs, k.expires_secs
            )?;
        }
    }
    if wide {
        writeln!(out, "\n{}", r.ruleset.trim_end())?;
    }
    Ok(())
}
