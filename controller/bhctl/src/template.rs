//! `bhctl template`: the guest VM template.
//!
//! - `build` runs the image builder shipped in the blockhost package
//!   (`/usr/share/blockhost/guest-image/build-image.sh`, from `iso/guest/`) with a
//!   progress display: Debian from Debian's registry, blockhost-guest, no machine
//!   identity; the image, its manifest and SHA-256 land next to `--output`.
//! - `install` puts an image into Proxmox VE through its API only
//!   ([`crate::template_install`]).

use std::path::{Path, PathBuf};
use std::time::Duration;

use blockhost_image::build::{self, BuildError, BuildRequest};
use clap::Subcommand;

/// Where the blockhost package installs the builder and the guest package.
pub const BUILDER_DIR: &str = "/usr/share/blockhost/guest-image";
/// The apt cache kept between builds (rebuildable: delete it any time).
pub const DEFAULT_CACHE: &str = "/var/cache/blockhost/guest-image";

/// `bhctl template …`.
#[derive(Debug, Subcommand)]
pub enum TemplateCommand {
    /// Build the guest template image (as root): Debian with cloud-init, the guest
    /// agent, sshd and wallet login; no host keys, machine-id or passwords inside.
    Build {
        /// The qcow2 image to write; its .manifest, .sha256 and .json go beside it.
        #[arg(long, default_value = "blockhost-guest-trixie-amd64.qcow2")]
        output: PathBuf,
        /// The blockhost-guest package to install in the image (default: the one
        /// shipped in the builder directory).
        #[arg(long)]
        guest_deb: Option<PathBuf>,
        /// Directory holding build-image.sh and packages.txt.
        #[arg(long, default_value = BUILDER_DIR)]
        builder: PathBuf,
        /// apt cache reused by later builds.
        #[arg(long, default_value = DEFAULT_CACHE)]
        cache: PathBuf,
        /// Debian release (trixie is the base of Proxmox VE 9).
        #[arg(long, default_value = build::DEFAULT_SUITE)]
        suite: String,
        /// Debian mirror (default: deb.debian.org).
        #[arg(long)]
        mirror: Option<String>,
    },
    /// Put an image into Proxmox VE as a VM template, through the API only.
    Install(crate::template_install::InstallArgs),
}

/// Errors of `bhctl template`.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    /// The builder or the guest package is not where expected.
    #[error("{0}")]
    Setup(String),
    /// The thread running the build panicked or was cancelled.
    #[error("the build thread failed")]
    BuildThread(#[source] tokio::task::JoinError),
    /// The build failed.
    #[error(transparent)]
    Build(#[from] BuildError),
    /// Installing into Proxmox failed.
    #[error(transparent)]
    Install(#[from] crate::template_install::InstallError),
    /// Writing output failed.
    #[error("cannot write output")]
    Io(#[from] std::io::Error),
}

/// Runs a `bhctl template` command.
pub async fn run(out: &mut impl std::io::Write, cmd: TemplateCommand) -> Result<(), TemplateError> {
    match cmd {
        TemplateCommand::Build {
            output,
            guest_deb,
            builder,
            cache,
            suite,
            mirror,
        } => {
            let req = build_request(&output, guest_deb, &builder, cache, suite, mirror)?;
            // The build is blocking work (a child process); keep the runtime free.
            let img = tokio::task::spawn_blocking(move || build_with_progress(&req))
                .await
                .map_err(TemplateError::BuildThread)??;
            writeln!(out, "image:    {}", img.image.display())?;
            writeln!(out, "manifest: {}", img.manifest.display())?;
            writeln!(out, "sha256:   {}", img.sha256)?;
            writeln!(out, "built in {} s", img.seconds)?;
            Ok(())
        }
        TemplateCommand::Install(args) => crate::template_install::install(out, args)
            .await
            .map_err(Into::into),
    }
}

fn build_request(
    output: &Path,
    guest_deb: Option<PathBuf>,
    builder: &Path,
    cache: PathBuf,
    suite: String,
    mirror: Option<String>,
) -> Result<BuildRequest, TemplateError> {
    let script = builder.join("build-image.sh");
    if !script.exists() {
        return Err(TemplateError::Setup(format!(
            "{} does not exist: install the blockhost package, or pass --builder iso/guest from a source tree",
            script.display()
        )));
    }
    let deb = match guest_deb {
        Some(d) => d,
        None => find_guest_deb(builder)?,
    };
    let name = output
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .filter(|s| !s.is_empty())
        .ok_or_else(|| {
            TemplateError::Setup(format!("--output {} names no file", output.display()))
        })?;
    let dir = match output.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut req = BuildRequest::new(vec![deb], dir, cache);
    req.script = script;
    req.suite = suite;
    req.mirror = mirror;
    req.name = Some(name);
    Ok(req)
}

fn find_guest_deb(dir: &Path) -> Result<PathBuf, TemplateError> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name().is_some_and(|n| {
                        let n = n.to_string_lossy();
                        n.starts_with("blockhost-guest_") && n.ends_with(".deb")
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(TemplateError::Setup(format!(
            "no blockhost-guest_*.deb in {}: pass --guest-deb (packaging/build-debs.sh builds it)",
            dir.display()
        ))),
        _ => Err(TemplateError::Setup(format!(
            "several blockhost-guest packages in {}: choose one with --guest-deb",
            dir.display()
        ))),
    }
}

/// Runs the build with an indicatif bar: one position per builder step, the
/// step's name as the message, and elapsed time (mmdebstrap alone takes minutes).
fn build_with_progress(req: &BuildRequest) -> Result<build::BuiltImage, BuildError> {
    let bar = indicatif::ProgressBar::new(1);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] step {pos}/{len} {wide_msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    let result = build::run(req, |p| {
        bar.set_length(u64::from(p.total));
        bar.set_position(u64::from(p.step));
        bar.set_message(p.what.clone());
    });
    match &result {
        Ok(_) => bar.finish_with_message("done"),
        Err(_) => bar.abandon_with_message("failed"),
    }
    result
}
