//! `bhctl`: BlockHost's command line. See the `cli` module.

use std::process::ExitCode;

use bhctl::{self as cli, Cli, CliError};
use blockhost_crd::error_chain;
use blockhost_crd::sanitize::Escaped;
use clap::Parser;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Logs only when asked for (RUST_LOG); stdout is reserved for output.
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    // One thread: bhctl makes a request or two; a pool would only slow start-up.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("bhctl: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cli::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(CliError::Io(e) | CliError::Chain(cli::chain::ChainCliError::Io(e)))
            if e.kind() == std::io::ErrorKind::BrokenPipe =>
        {
            ExitCode::SUCCESS
        }
        Err(CliError::Manifests(errors)) => {
            for e in &errors {
                eprintln!("error: {e}");
            }
            eprintln!(
                "bhctl: {} problem(s) found; nothing was applied",
                errors.len()
            );
            ExitCode::FAILURE
        }
        Err(CliError::Client(blockhost_api::client::ClientError::Api {
            message, details, ..
        })) => {
            // The daemon's words may quote stored text: escaped like all output.
            eprintln!("error: {}", Escaped(&message));
            for d in details {
                eprintln!("  {}", Escaped(&d));
            }
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("error: {}", Escaped(&error_chain(&e)));
            ExitCode::FAILURE
        }
    }
}
