//! `blockhost-wizard`: serves the setup of a host that is not set up yet
//! (`serve`, the default), or makes a new one-time code (`new-code`, for the
//! console: the code is printed there and on the console text, never logged).

use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use blockhost_wizard::code::CodeStore;
use blockhost_wizard::finalize::Finalizer;
use blockhost_wizard::session::Sessions;
use blockhost_wizard::settings::Settings;
use blockhost_wizard::{console, error_chain, fsutil, server, tls};
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "blockhost-wizard",
    version,
    about = "BlockHost's one-time setup wizard (HTTPS)"
)]
struct Cli {
    #[command(flatten)]
    settings: Settings,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the setup page (the default).
    Serve,
    /// Replace the one-time code with a new one (failures reset) and show it.
    NewCode,
    /// Write the manual pages into DIR and exit (packaging).
    #[command(hide = true)]
    GenerateMan {
        /// The directory to write `blockhost-wizard.8` and its subcommands' pages into.
        dir: std::path::PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let result = match cli.command.unwrap_or(Command::Serve) {
        // Only serving needs the runtime.
        Command::Serve => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the runtime: {e}"))
            .and_then(|runtime| runtime.block_on(serve(cli.settings))),
        Command::NewCode => new_code(&cli.settings),
        Command::GenerateMan { dir } => {
            let cmd = <Cli as clap::CommandFactory>::command();
            blockhost_api::manpages::write_all(cmd, &dir, "8")
                .map(drop)
                .map_err(|e| format!("cannot write the manual pages into {}: {e}", dir.display()))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("blockhost-wizard: {e}");
            ExitCode::FAILURE
        }
    }
}

fn cert_names(s: &Settings) -> Vec<String> {
    let mut names = vec![s.host_name()];
    for u in s.urls() {
        if let Some(h) = u.strip_prefix("https://").and_then(|r| r.split('/').next()) {
            let host = match h.strip_prefix('[') {
                Some(v6) => v6.split(']').next().unwrap_or(v6),
                None => h.split(':').next().unwrap_or(h),
            };
            if !names.iter().any(|n| n == host) {
                names.push(host.to_owned());
            }
        }
    }
    names
}

fn show_console(s: &Settings, code: &str) -> Result<(), String> {
    let cert = tls::ensure(&s.tls_dir(), &cert_names(s)).map_err(|e| error_chain(&e))?;
    let text = console::text(&s.host_name(), &s.urls(), code, &cert.fingerprint);
    console::show(&s.issue_file(), &text, &s.console_refresh).map_err(|e| error_chain(&e))
}

fn prepare_dirs(s: &Settings) -> Result<(), String> {
    fsutil::ensure_dir(&s.state_dir, 0o700).map_err(|e| error_chain(&e))?;
    fsutil::ensure_dir(&s.secrets_dir(), 0o700).map_err(|e| error_chain(&e))
}

#[allow(clippy::print_stdout)] // the console command's output is for the person at the console
fn new_code(s: &Settings) -> Result<(), String> {
    if s.done_marker.exists() {
        return Err(format!(
            "this host is already set up ({} exists); the wizard does not run again",
            s.done_marker.display()
        ));
    }
    prepare_dirs(s)?;
    let code = CodeStore::new(s.code_file())
        .renew(chrono::Utc::now())
        .map_err(|e| error_chain(&e))?;
    show_console(s, &code.code)?;
    println!("New one-time code: {}  (valid 4 hours)", code.code);
    Ok(())
}

async fn serve(s: Settings) -> Result<(), String> {
    if s.done_marker.exists() {
        tracing::info!(marker = %s.done_marker.display(), "this host is already set up; the wizard does not run");
        return Ok(());
    }
    // axum-server's rustls needs a process-wide provider; ring, as elsewhere.
    let _ = rustls::crypto::ring::default_provider().install_default();
    prepare_dirs(&s)?;
    let settings = Arc::new(s);
    let code = Arc::new(CodeStore::new(settings.code_file()));
    let current = code
        .current_or_new(chrono::Utc::now())
        .map_err(|e| error_chain(&e))?;
    show_console(&settings, &current.code)?;
    drop(current);
    let cert =
        tls::ensure(&settings.tls_dir(), &cert_names(&settings)).map_err(|e| error_chain(&e))?;
    let tls = axum_server::tls_rustls::RustlsConfig::from_pem_file(&cert.cert_pem, &cert.key_pem)
        .await
        .map_err(|e| format!("cannot load the wizard's certificate: {e}"))?;
    let sessions = Arc::new(Sessions::load(settings.sessions_file()).map_err(|e| error_chain(&e))?);
    let answers = fsutil::read_json(&settings.answers_file())
        .map_err(|e| error_chain(&e))?
        .unwrap_or_default();
    let (done_tx, done_rx) = tokio::sync::watch::channel(false);
    let finalizer = Finalizer::load(settings.clone(), code.clone(), sessions.clone(), done_tx)
        .map_err(|e| error_chain(&e))?;
    let app = Arc::new(server::App {
        settings: settings.clone(),
        code,
        sessions,
        answers: Mutex::new(answers),
        finalizer: finalizer.clone(),
    });
    // A run the last process did not finish (it was killed) resumes at once.
    if finalizer.interrupted() {
        let st = finalizer.snapshot();
        if let Some(admin) = st.admin {
            tracing::info!("resuming the interrupted finalization");
            if let Err(e) = finalizer.start(
                app.answers
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone(),
                admin,
            ) {
                tracing::warn!(error = %e, "cannot resume the finalization; start it from the page");
            }
        }
    }
    tracing::info!(fingerprint = %cert.fingerprint, urls = ?settings.urls(), "serving the setup; the one-time code is on the console");
    server::serve(app, tls, done_rx)
        .await
        .map_err(|e| format!("the HTTPS server failed: {e}"))
}
