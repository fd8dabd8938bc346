//! `blockhost-root-agent`: reads its configuration, binds its socket and serves
//! blockhostd until SIGTERM or SIGINT. Run by `blockhost-root-agent.service`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use blockhost_root_agent::config::{AgentConfig, DEFAULT_CONFIG};
use blockhost_root_agent::exec::Tools;
use blockhost_root_agent::{error_chain, server};
use clap::Parser;
use tokio::signal::unix::{SignalKind, signal};
use tracing::{error, info};

/// The BlockHost root agent (firewall, knocks, bridge port isolation).
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// The configuration file; a missing file at the default path means defaults.
    #[arg(long, default_value = DEFAULT_CONFIG)]
    config: PathBuf,
    /// The socket (overrides the file's `socket`).
    #[arg(long)]
    socket: Option<PathBuf>,
    /// Also allow this uid (repeatable).
    #[arg(long = "allow-uid")]
    allow_uid: Vec<u32>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            error!(error = %error_chain(&e), "cannot start the runtime");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!(error = %e, "root agent stopped");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), String> {
    let mut cfg = match AgentConfig::load(&args.config) {
        Ok(c) => c,
        Err(blockhost_root_agent::config::ConfigError::Read { source, .. })
            if source.kind() == std::io::ErrorKind::NotFound
                && args.config.as_os_str() == DEFAULT_CONFIG =>
        {
            AgentConfig::default()
        }
        Err(e) => return Err(error_chain(&e)),
    };
    if let Some(s) = args.socket {
        cfg.socket = s;
    }
    cfg.allowed_uids.extend(args.allow_uid);
    let allowed = cfg.allowed().map_err(|e| error_chain(&e))?;
    let gid = cfg.socket_gid().map_err(|e| error_chain(&e))?;
    let listener = server::bind(&cfg.socket, gid)
        .await
        .map_err(|e| error_chain(&e))?;
    let mut term = signal(SignalKind::terminate()).map_err(|e| error_chain(&e))?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| error_chain(&e))?;
    info!(socket = %cfg.socket.display(), ?allowed, "root agent serving");
    let agent = Arc::new(server::Agent {
        allowed,
        tools: Tools {
            nft: cfg.nft.clone(),
            ip: cfg.ip.clone(),
        },
    });
    let shutdown = async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    };
    server::serve(listener, agent, shutdown).await;
    let _ = std::fs::remove_file(&cfg.socket);
    info!("root agent stopped");
    Ok(())
}
