//! `blockhostd`: the BlockHost operator daemon. See the `daemon` module.

use std::path::PathBuf;
use std::process::ExitCode;

use blockhost_controller::{daemon, error_chain};
use blockhost_crd::config::{DEFAULT_CONFIG_PATH, LogFormat};
use clap::Parser;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

/// BlockHost operator daemon: stores declarative VM specs and serves them to bhctl.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Configuration file (YAML). Missing at the default path: local defaults.
    #[arg(long, env = "BLOCKHOST_CONFIG")]
    config: Option<PathBuf>,
    /// Database path; overrides `store` in the configuration.
    #[arg(long)]
    store: Option<PathBuf>,
    /// API socket path; overrides `api.socket` in the configuration.
    #[arg(long, env = "BLOCKHOST_SOCKET")]
    socket: Option<PathBuf>,
    /// Write the manual page into this directory and exit (packaging).
    #[arg(long, hide = true, value_name = "DIR")]
    generate_man: Option<PathBuf>,
}

fn main() -> ExitCode {
    blockhost_controller::tune_allocator();
    let args = Args::parse();
    if let Some(dir) = &args.generate_man {
        let cmd = <Args as clap::CommandFactory>::command().name("blockhostd");
        return match blockhost_api::manpages::write_all(cmd, dir, "8") {
            Ok(_) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!(
                    "blockhostd: cannot write the manual page into {}: {e}",
                    dir.display()
                );
                ExitCode::FAILURE
            }
        };
    }
    let explicit = args.config.is_some();
    let path = args.config.unwrap_or_else(|| DEFAULT_CONFIG_PATH.into());
    let mut cfg = match blockhost_api::config::load(&path, explicit) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("blockhostd: {}", error_chain(&e));
            return ExitCode::FAILURE;
        }
    };
    if let Some(s) = args.store {
        cfg.store = s;
    }
    if let Some(s) = args.socket {
        cfg.api.socket = s;
    }
    let filter = EnvFilter::try_from_default_env().or_else(|_| EnvFilter::try_new(&cfg.log.level));
    let filter = match filter {
        Ok(f) => f,
        Err(e) => {
            eprintln!("blockhostd: invalid log.level {:?}: {e}", cfg.log.level);
            return ExitCode::FAILURE;
        }
    };
    // Text lines escape outside text (RPC errors, labels); colours only on a terminal.
    blockhost_listen::log::init(filter, cfg.log.format == LogFormat::Json);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("blockhostd: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let shutdown = CancellationToken::new();
        tokio::spawn(stop_on_signal(shutdown.clone()));
        match daemon::run(cfg, shutdown).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!(error = %error_chain(&e), "blockhostd failed");
                ExitCode::FAILURE
            }
        }
    })
}

/// Cancels `token` on SIGTERM or SIGINT.
async fn stop_on_signal(token: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop with SIGKILL");
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = int.recv() => tracing::info!("SIGINT: shutting down"),
    }
    token.cancel();
}
