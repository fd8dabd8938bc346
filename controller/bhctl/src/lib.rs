//! `bhctl`, BlockHost's kubectl: argument parsing and command dispatch.
//!
//! The object commands talk to the daemon through [`blockhost_api::client::Client`];
//! `chain`, `plan` and `nft` talk to the chain directly ([`chain`], [`nft`]).
//! Output for people goes to stdout as tables; `-o json|yaml|name` is for scripts.
//! Errors go to stderr and the exit code is 1.

pub mod admin;
pub mod chain;
pub mod config_edit;
pub mod manifest;
pub mod nft;
pub mod output;
pub mod template;
pub mod template_install;

use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use blockhost_crd::{Event, Plan, Subscription, VirtualMachine};
use clap::{Parser, Subcommand, ValueEnum};
use hyper::Method;

use blockhost_api::ApplyOutcome;
use blockhost_api::client::{Client, ClientError};
use blockhost_api::{API_PREFIX, ApplyRequest, ApplyResponse, DeleteResponse};
use output::Format;

/// Default socket path.
pub const DEFAULT_SOCKET: &str = blockhost_crd::config::DEFAULT_SOCKET_PATH;

/// Command line of `bhctl`.
#[derive(Debug, Parser)]
#[command(
    name = "bhctl",
    version,
    about = "Control BlockHost: list, inspect and apply VM and plan specs",
    propagate_version = true
)]
pub struct Cli {
    /// blockhostd's API socket.
    #[arg(long, global = true, env = "BLOCKHOST_SOCKET", default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Object types `get` accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum GetType {
    /// VirtualMachine objects.
    #[value(alias = "vm", alias = "virtualmachine", alias = "virtualmachines")]
    Vms,
    /// Plan objects.
    #[value(alias = "plan")]
    Plans,
    /// Subscription objects (mirrored from the chain).
    #[value(alias = "subscription", alias = "sub", alias = "subs")]
    Subscriptions,
    /// The event log.
    #[value(alias = "event", alias = "ev")]
    Events,
}

/// Object types `describe` and `delete` accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ObjType {
    /// A VirtualMachine.
    #[value(alias = "vms", alias = "virtualmachine", alias = "virtualmachines")]
    Vm,
    /// A Plan.
    #[value(alias = "plans")]
    Plan,
    /// A Subscription.
    #[value(alias = "subscriptions", alias = "sub", alias = "subs")]
    Subscription,
}

impl ObjType {
    fn plural(self) -> &'static str {
        match self {
            ObjType::Vm => "virtualmachines",
            ObjType::Plan => "plans",
            ObjType::Subscription => "subscriptions",
        }
    }
}

/// `bhctl`'s commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// List objects, or show one (`-w` keeps watching).
    Get {
        /// vms, plans or events.
        #[arg(value_enum)]
        what: GetType,
        /// Only this object (for events: the events of this VM).
        name: Option<String>,
        /// Output format.
        #[arg(short, long, value_enum, default_value_t = Format::Table)]
        output: Format,
        /// After listing, keep printing changes until interrupted.
        #[arg(short, long)]
        watch: bool,
        /// With `events`: the host's own events (admin commands, knocks).
        #[arg(long, conflicts_with_all = ["name", "watch"])]
        host: bool,
    },
    /// Show an object in detail: spec, status, conditions and recent events.
    Describe {
        /// vm or plan.
        #[arg(value_enum)]
        what: ObjType,
        /// Its name.
        name: String,
    },
    /// Create or update objects from YAML/JSON files (all or nothing).
    Apply {
        /// A file, a directory of *.yaml/*.yml/*.json, or - for standard input. Repeatable.
        #[arg(short, long = "filename", required = true)]
        file: Vec<PathBuf>,
        /// Descend into subdirectories.
        #[arg(short = 'R', long)]
        recursive: bool,
        /// Validate against the daemon and report what would change; write nothing.
        #[arg(long)]
        dry_run: bool,
        /// Output format of the result lines.
        #[arg(short, long, value_enum, default_value_t = Format::Table)]
        output: Format,
    },
    /// Delete objects (VMs are cleaned up in Proxmox first when a controller manages them).
    Delete {
        /// vm or plan.
        #[arg(value_enum)]
        what: ObjType,
        /// Names.
        #[arg(required = true)]
        names: Vec<String>,
        /// Delete a VM the chain owns (bought on chain) anyway; the daemon records
        /// an event naming your uid.
        #[arg(long)]
        force: bool,
    },
    /// Show the daemon's own conditions (an RPC endpoint serving another chain).
    Status {
        /// Output format (json and yaml keep the exact text).
        #[arg(short, long, value_enum, default_value_t = Format::Table)]
        output: Format,
    },
    /// The host firewall (on the host, through blockhostd and the root agent).
    Firewall {
        /// What to do.
        #[command(subcommand)]
        command: admin::FirewallCommand,
    },
    /// Admin commands over the chain (the admin, with the admin wallet's key).
    Admin {
        /// What to do.
        #[command(subcommand)]
        command: admin::AdminCommand,
    },
    /// Deploy the contracts (operators; signs with the configured server key).
    Chain {
        /// What to do.
        #[command(subcommand)]
        command: chain::ChainCommand,
    },
    /// Manage plans on chain (operators; signs with the configured server key).
    Plan {
        /// What to do.
        #[command(subcommand)]
        command: chain::PlanCommand,
    },
    /// Access NFTs (users: decrypt your VM's connection details).
    Nft {
        /// What to do.
        #[command(subcommand)]
        command: nft::NftCommand,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completion {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// The guest VM template: build its image, install it into Proxmox VE.
    Template {
        /// What to do.
        #[command(subcommand)]
        command: template::TemplateCommand,
    },
    /// Write bhctl's manual pages into a directory (packaging).
    #[command(hide = true)]
    GenerateMan {
        /// Output directory.
        dir: PathBuf,
    },
}

/// Errors of a command, printed by `main`.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Talking to the daemon failed.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// Manifests are invalid; one line per problem.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Manifests(Vec<blockhost_api::yaml::YamlError>),
    /// The daemon sent something we cannot decode.
    #[error("unexpected answer from blockhostd")]
    Decode(#[from] serde_json::Error),
    /// A chain command failed.
    #[error(transparent)]
    Chain(#[from] chain::ChainCliError),
    /// A template command failed.
    #[error(transparent)]
    Template(#[from] template::TemplateError),
    /// Arguments that do not go together.
    #[error("{0}")]
    Usage(&'static str),
    /// Writing output failed (a closed pipe is not an error).
    #[error("cannot write output")]
    Io(#[from] std::io::Error),
}

/// Runs a parsed command line.
pub async fn run(cli: Cli) -> Result<(), CliError> {
    let client = Client::new(&cli.socket);
    // Block-buffered: stdout is line-buffered by default, a syscall per line of JSON.
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let result = match cli.command {
        Command::Get {
            what,
            name,
            output,
            watch,
            host,
        } => {
            let name = match (host, what) {
                (true, GetType::Events) => Some(EventsOf::Host),
                (true, _) => return Err(CliError::Usage("--host goes with `get events`")),
                (false, _) => name.map(EventsOf::Vm),
            };
            get(&client, &mut out, what, name, output, watch).await
        }
        Command::Describe { what, name } => describe(&client, &mut out, what, &name).await,
        Command::Apply {
            file,
            recursive,
            dry_run,
            output,
        } => apply(&client, &mut out, &file, recursive, dry_run, output).await,
        Command::Delete { what, names, force } => {
            delete(&client, &mut out, what, &names, force).await
        }
        Command::Status { output } => status(&client, &mut out, output).await,
        Command::Firewall { command } => admin::firewall(&client, &mut out, command).await,
        Command::Admin { command } => admin::admin(&mut out, command).await.map_err(Into::into),
        Command::Chain { command } => chain::chain(&mut out, command).await.map_err(Into::into),
        Command::Plan { command } => chain::plan(&mut out, command).await.map_err(Into::into),
        Command::Nft { command } => nft::nft(&mut out, command).await.map_err(Into::into),
        Command::Completion { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cmd, "bhctl", &mut out);
            Ok(())
        }
        Command::Template { command } => template::run(&mut out, command).await.map_err(Into::into),
        Command::GenerateMan { dir } => {
            blockhost_api::manpages::write_all(<Cli as clap::CommandFactory>::command(), &dir, "1")
                .map(drop)
                .map_err(Into::into)
        }
    };
    out.flush()?;
    result
}

/// `bhctl get`: events, one object or a list, then (`-w`) its changes.
async fn get(
    client: &Client,
    out: &mut impl Write,
    what: GetType,
    name: Option<EventsOf>,
    format: Format,
    watch: bool,
) -> Result<(), CliError> {
    let now = chrono::Utc::now();
    if what == GetType::Events {
        return get_events(client, out, name.as_ref(), format, now).await;
    }
    let name = match &name {
        Some(EventsOf::Vm(n)) => Some(n.as_str()),
        _ => None,
    };
    let plural = match what {
        GetType::Vms => "virtualmachines",
        GetType::Subscriptions => "subscriptions",
        _ => "plans",
    };
    match name {
        Some(n) => get_one(client, out, what, plural, n, format, now).await?,
        None if !watch => get_list(client, out, what, plural, format, now).await?,
        None => {}
    }
    out.flush()?;
    // `-o json` of one object prints the daemon's document and stops there.
    if watch && !(name.is_some() && format == Format::Json) {
        watch_changes(client, out, what, plural, name, format, now).await?;
    }
    Ok(())
}

/// `status`: the daemon's conditions; text for people is escaped.
async fn status(client: &Client, out: &mut impl Write, format: Format) -> Result<(), CliError> {
    let body = client.request(Method::GET, "/status", None).await?;
    let status: blockhost_api::DaemonStatus = serde_json::from_slice(&body)?;
    match format {
        Format::Table | Format::Wide | Format::Name => {
            output::status_table(out, &status.conditions, chrono::Utc::now())?
        }
        _ => output::print_value(out, &serde_json::from_slice(&body)?, format)?,
    }
    Ok(())
}

/// Whose events `get events` shows; for other kinds, the object's name.
#[derive(Debug, Clone)]
enum EventsOf {
    /// A VM (or, for other kinds, the object named).
    Vm(String),
    /// The host's own log (`Host/admin`).
    Host,
}

/// `get events [VM | --host]`: the event log, one VM's events, or the host's.
async fn get_events(
    client: &Client,
    out: &mut impl Write,
    name: Option<&EventsOf>,
    format: Format,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<(), CliError> {
    let path = match name {
        Some(EventsOf::Host) => format!(
            "{API_PREFIX}/events?kind={}&name={}",
            blockhost_crd::resource::HOST_KIND,
            blockhost_crd::resource::HOST_ADMIN
        ),
        Some(EventsOf::Vm(n)) => format!("{API_PREFIX}/events?kind=VirtualMachine&name={n}"),
        None => format!("{API_PREFIX}/events"),
    };
    let body = client.request(Method::GET, &path, None).await?;
    let list: serde_json::Value = serde_json::from_slice(&body)?;
    let events: Vec<Event> = serde_json::from_value(list["items"].clone())?;
    match format {
        Format::Table | Format::Wide => output::events_table(out, &events, now, true)?,
        _ => output::print_value(out, &list, format)?,
    }
    Ok(())
}

/// `get KIND NAME`: one object. JSON is streamed through as the daemon sent
/// it; other formats parse it first.
async fn get_one(
    client: &Client,
    out: &mut impl Write,
    what: GetType,
    plural: &str,
    name: &str,
    format: Format,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<(), CliError> {
    let body = client
        .request(Method::GET, &format!("{API_PREFIX}/{plural}/{name}"), None)
        .await?;
    if format == Format::Json {
        output::pretty_json(out, &body)?;
        return Ok(());
    }
    let value: serde_json::Value = serde_json::from_slice(&body)?;
    match format {
        Format::Table | Format::Wide => output::table(
            out,
            what,
            std::slice::from_ref(&value),
            format == Format::Wide,
            now,
            true,
        )?,
        _ => output::print_value(out, &value, format)?,
    }
    Ok(())
}

/// `get KIND`: every object of a kind; an empty table is said on stderr, so
/// stdout stays parseable.
async fn get_list(
    client: &Client,
    out: &mut impl Write,
    what: GetType,
    plural: &str,
    format: Format,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<(), CliError> {
    let body = client
        .request(Method::GET, &format!("{API_PREFIX}/{plural}"), None)
        .await?;
    if format == Format::Json {
        output::pretty_json(out, &body)?;
        return Ok(());
    }
    let mut list: serde_json::Value = serde_json::from_slice(&body)?;
    let items = match list["items"].take() {
        serde_json::Value::Array(a) => a,
        _ => Vec::new(),
    };
    match format {
        Format::Table | Format::Wide => {
            if items.is_empty() {
                eprintln!(
                    "No {} found.",
                    match what {
                        GetType::Vms => "VMs",
                        GetType::Subscriptions => "subscriptions",
                        _ => "plans",
                    }
                );
            } else {
                output::table(out, what, &items, format == Format::Wide, now, true)?;
            }
        }
        _ => {
            list["items"] = serde_json::Value::Array(items);
            output::print_value(out, &list, format)?;
        }
    }
    Ok(())
}

/// `get -w`: follows the kind's watch stream until interrupted or the daemon
/// ends it (an ERROR event, e.g. a resourceVersion too old, becomes `Expired`).
async fn watch_changes(
    client: &Client,
    out: &mut impl Write,
    what: GetType,
    plural: &str,
    name: Option<&str>,
    format: Format,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<(), CliError> {
    // The stream starts with every current object as ADDED, then changes. With
    // a NAME, the object was printed above; only its changes follow.
    let table = matches!(format, Format::Table | Format::Wide);
    let wide = format == Format::Wide;
    let mut skip_initial = if name.is_some() {
        count(client, plural).await?
    } else {
        0
    };
    if table && name.is_none() {
        output::watch_row(out, what, None, &serde_json::Value::Null, wide, now)?;
    }
    let path = format!("{API_PREFIX}/{plural}?watch=true");
    let mut failed = None;
    client
        .stream_lines(&path, |line| {
            let Ok(ev) = serde_json::from_slice::<serde_json::Value>(line) else {
                return true;
            };
            if ev["type"] == "ERROR" {
                failed = ev["object"]["message"].as_str().map(str::to_owned);
                return false;
            }
            if skip_initial > 0 && ev["type"] == "ADDED" {
                skip_initial -= 1;
                return true;
            }
            skip_initial = 0;
            if let Some(n) = name
                && ev["object"]["metadata"]["name"] != n
            {
                return true;
            }
            print_watch_event(out, what, &ev, format).is_ok()
        })
        .await?;
    match failed {
        Some(m) => Err(CliError::Client(ClientError::Api {
            status: hyper::StatusCode::GONE,
            code: "Expired".into(),
            message: m,
            details: vec![],
        })),
        None => Ok(()),
    }
}

/// One watch event in the chosen format, flushed at once so a pipe sees it
/// as it happens.
fn print_watch_event(
    out: &mut impl Write,
    what: GetType,
    ev: &serde_json::Value,
    format: Format,
) -> std::io::Result<()> {
    match format {
        Format::Table | Format::Wide => output::watch_row(
            out,
            what,
            ev["type"].as_str(),
            &ev["object"],
            format == Format::Wide,
            chrono::Utc::now(),
        ),
        Format::Json => serde_json::to_writer(&mut *out, ev)
            .map_err(std::io::Error::from)
            .and_then(|()| writeln!(out)),
        _ => output::print_value(out, ev, format),
    }?;
    out.flush()
}

async fn count(client: &Client, plural: &str) -> Result<usize, CliError> {
    let body = client
        .request(Method::GET, &format!("{API_PREFIX}/{plural}"), None)
        .await?;
    let list: serde_json::Value = serde_json::from_slice(&body)?;
    Ok(list["items"].as_array().map_or(0, Vec::len))
}

async fn describe(
    client: &Client,
    out: &mut impl Write,
    what: ObjType,
    name: &str,
) -> Result<(), CliError> {
    let body = client
        .request(
            Method::GET,
            &format!("{API_PREFIX}/{}/{name}", what.plural()),
            None,
        )
        .await?;
    let kind = match what {
        ObjType::Vm => "VirtualMachine",
        ObjType::Plan => "Plan",
        ObjType::Subscription => "Subscription",
    };
    let ev_body = client
        .request(
            Method::GET,
            &format!("{API_PREFIX}/events?kind={kind}&name={name}&limit=20"),
            None,
        )
        .await?;
    let events: Vec<Event> = serde_json::from_value(
        serde_json::from_slice::<serde_json::Value>(&ev_body)?["items"].take(),
    )?;
    let now = chrono::Utc::now();
    match what {
        ObjType::Vm => output::describe_vm(
            out,
            &serde_json::from_slice::<VirtualMachine>(&body)?,
            &events,
            now,
        )?,
        ObjType::Plan => {
            output::describe_plan(out, &serde_json::from_slice::<Plan>(&body)?, &events, now)?
        }
        ObjType::Subscription => output::describe_subscription(
            out,
            &serde_json::from_slice::<Subscription>(&body)?,
            &events,
            now,
        )?,
    }
    Ok(())
}

async fn apply(
    client: &Client,
    out: &mut impl Write,
    files: &[PathBuf],
    recursive: bool,
    dry_run: bool,
    format: Format,
) -> Result<(), CliError> {
    let manifests = manifest::load(files, recursive).map_err(CliError::Manifests)?;
    if manifests.is_empty() {
        eprintln!("bhctl: no objects found in the given files");
        return Ok(());
    }
    let objects = manifests
        .iter()
        .map(|m| serde_json::to_value(&m.object))
        .collect::<Result<Vec<_>, _>>()?;
    let body = serde_json::to_vec(&ApplyRequest { objects, dry_run })?;
    let spinner = (manifests.len() > 200 && std::io::stderr().is_terminal()).then(|| {
        let s = indicatif::ProgressBar::new_spinner();
        s.set_message(format!("applying {} objects", manifests.len()));
        s.enable_steady_tick(std::time::Duration::from_millis(120));
        s
    });
    let result = client
        .request(Method::POST, &format!("{API_PREFIX}/apply"), Some(body))
        .await;
    if let Some(s) = spinner {
        s.finish_and_clear();
    }
    let resp: ApplyResponse = serde_json::from_slice(&result?)?;
    if matches!(format, Format::Json | Format::Yaml) {
        return output::print_value(out, &serde_json::to_value(&resp)?, format).map_err(Into::into);
    }
    let suffix = if dry_run { " (dry run)" } else { "" };
    for r in &resp.results {
        let what = match r.outcome {
            ApplyOutcome::Created => "created",
            ApplyOutcome::Configured => "configured",
            ApplyOutcome::Unchanged => "unchanged",
        };
        if format == Format::Name {
            writeln!(out, "{}/{}", r.kind.to_lowercase(), r.name)?;
        } else {
            writeln!(out, "{}/{} {what}{suffix}", r.kind.to_lowercase(), r.name)?;
        }
    }
    Ok(())
}

async fn delete(
    client: &Client,
    out: &mut impl Write,
    what: ObjType,
    names: &[String],
    force: bool,
) -> Result<(), CliError> {
    let query = if force { "?force=true" } else { "" };
    for name in names {
        let body = client
            .request(
                Method::DELETE,
                &format!("{API_PREFIX}/{}/{name}{query}", what.plural()),
                None,
            )
            .await?;
        let resp: DeleteResponse = serde_json::from_slice(&body)?;
        let note = match resp.outcome {
            blockhost_api::DeleteOutcome::Deleted => "deleted",
            blockhost_api::DeleteOutcome::Terminating => "terminating (cleaning up in Proxmox)",
        };
        writeln!(out, "{}/{} {note}", resp.kind.to_lowercase(), resp.name)?;
    }
    Ok(())
}
