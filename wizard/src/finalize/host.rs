//! The finalization steps that act on the host itself rather than the chain:
//! the guest template (built, then installed into Proxmox VE) and the root
//! agent that holds the host firewall.
//!
//! - **Template**: `bhctl template build` writes the image unless it is there
//!   already; `bhctl template install` (idempotent itself: a template of the
//!   same image digest is left alone) puts it into Proxmox. blockhostd's own
//!   token cannot do that (its role has no `Datastore.AllocateTemplate`, no
//!   `VM.Config.HWType`), so the install runs with a short-lived token of the
//!   Proxmox administrator, made with the password the operator gave and
//!   deleted right after — whatever the install's outcome, and on the next run
//!   if the wizard was killed in between. Both commands are settings, so tests
//!   point them at a stand-in build and the real install.
//! - **Host firewall**: the root agent's configuration
//!   (`/etc/blockhost/root-agent.toml`: its socket and who may call it,
//!   blockhostd's user) is written, the agent enabled and started, and the step
//!   ends when the agent answers on its socket. blockhostd installs the firewall
//!   through it at start (the `firewall` section the configuration step writes).

use std::path::Path;
use std::time::{Duration, Instant};

use blockhost_root_agent::client::{ClientError, RootAgentClient};
use blockhost_root_agent::config::AgentConfig;

use super::steps::{Ctx, StepResult, daemon_config, fail, record};
use crate::fsutil;
use crate::probe::admin_client;
use crate::settings::{Settings, split_command};

/// The template install's short-lived token (on the administrator's account).
pub const SETUP_TOKEN: &str = "blockhost-setup";

/// Runs `line` plus `extra` arguments with `env`, within `timeout`; its stdout
/// on success, a sentence with the tail of its stderr otherwise.
async fn run_command(
    line: &str,
    extra: &[String],
    env: &[(&str, &Path)],
    timeout: Duration,
) -> Result<String, String> {
    let (program, mut args) =
        split_command(line).ok_or_else(|| "no command is configured".to_owned())?;
    args.extend(extra.iter().cloned());
    let mut cmd = tokio::process::Command::new(&program);
    cmd.args(&args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = tokio::time::timeout(timeout, cmd.output())
        .await
        .map_err(|_| format!("{line} did not finish within {} s", timeout.as_secs()))?
        .map_err(|e| fail(&format!("cannot run {line}"), &e))?;
    if !out.status.success() {
        let text = String::from_utf8_lossy(&out.stderr);
        let tail: String = text
            .chars()
            .rev()
            .take(600)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        return Err(format!("{line} failed ({}): {}", out.status, tail.trim()));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Deletes the setup token and its files (a leftover of an interrupted run
/// included; its secret may be lost, so it is never reused).
async fn drop_setup_token(
    admin: &blockhost_pve::client::PveClient,
    user: &str,
    settings: &Settings,
) -> Result<(), String> {
    let tokens = admin
        .tokens(user)
        .await
        .map_err(|e| fail(&format!("cannot list {user}'s tokens"), &e))?;
    if tokens.iter().any(|t| t.tokenid == SETUP_TOKEN) {
        admin
            .delete_token(user, SETUP_TOKEN)
            .await
            .map_err(|e| fail("cannot delete the template install's token", &e))?;
    }
    for f in [settings.setup_token_file(), settings.setup_config_file()] {
        fsutil::remove(&f).map_err(|e| fail("cannot remove the setup token's files", &e))?;
    }
    Ok(())
}

/// The template step: build the image if it is missing, install it.
pub async fn template(ctx: &mut Ctx<'_>) -> StepResult {
    let s = ctx.settings;
    if split_command(&s.template_install).is_none() {
        tracing::info!("no template install command configured; the template must exist already");
        fsutil::remove(&s.pve_password_file())
            .map_err(|e| fail("cannot remove the stored password", &e))?;
        return record(ctx, |o| {
            o.template = Some("not managed by the wizard (no install command)".into());
        });
    }
    let timeout = Duration::from_secs(s.template_timeout_secs);
    let image = &s.template_image;
    if !image.exists() {
        if split_command(&s.template_build).is_none() {
            return Err(format!(
                "there is no image at {} and no build command is configured; build one with `bhctl template build --output {}`, then retry",
                image.display(),
                image.display()
            ));
        }
        if let Some(dir) = image.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| fail("cannot create the image's directory", &e))?;
        }
        tracing::info!(image = %image.display(), "building the guest template image");
        let started = Instant::now();
        run_command(
            &s.template_build,
            &["--output".into(), image.display().to_string()],
            &[],
            timeout,
        )
        .await
        .map_err(|e| format!("building the template image failed: {e}"))?;
        if !image.exists() {
            return Err(format!(
                "{} finished but wrote no image at {}",
                s.template_build,
                image.display()
            ));
        }
        tracing::info!(
            seconds = started.elapsed().as_secs(),
            "template image built"
        );
    }
    let Ok(password) = std::fs::read_to_string(s.pve_password_file()) else {
        return Err("the Proxmox administrator's password is needed again to install the template: enter it in the Proxmox step, then retry".into());
    };
    let a = &ctx.answers.proxmox;
    let admin = admin_client(a, password.trim_end_matches('\n'))
        .map_err(|e| fail("cannot set up the Proxmox client", &e))?;
    let user = a.admin_user.trim().to_owned();
    drop_setup_token(&admin, &user, s).await?;
    let made = admin
        .create_token_with(
            &user,
            SETUP_TOKEN,
            "blockhost-wizard: template install (deleted right after)",
            false,
        )
        .await
        .map_err(|e| fail("cannot create the template install's token", &e))?;
    let installed = install_with(ctx, &user, &made.value, timeout).await;
    // Gone whatever happened; a failure to delete is reported over the install's.
    drop_setup_token(&admin, &user, s).await?;
    let summary = installed?;
    fsutil::remove(&s.pve_password_file())
        .map_err(|e| fail("cannot remove the stored password", &e))?;
    record(ctx, |o| o.template = Some(summary))
}

async fn install_with(
    ctx: &Ctx<'_>,
    user: &str,
    secret: &str,
    timeout: Duration,
) -> Result<String, String> {
    let s = ctx.settings;
    let a = &ctx.answers.proxmox;
    fsutil::ensure_dir(&s.secrets_dir(), 0o700)
        .map_err(|e| fail("cannot create the secrets directory", &e))?;
    fsutil::write_atomic(
        &s.setup_token_file(),
        format!("{secret}\n").as_bytes(),
        0o600,
    )
    .map_err(|e| fail("cannot write the setup token", &e))?;
    let mut cfg = daemon_config(s, ctx.answers, &ctx.finalizer.outputs(), ctx.admin)?;
    if let Some(p) = cfg.proxmox.as_mut() {
        p.token_id = format!("{user}!{SETUP_TOKEN}");
        p.token_secret_file = s.setup_token_file();
    }
    let yaml = serde_saphyr::to_string(&cfg)
        .map_err(|e| format!("cannot write the install's configuration: {e}"))?;
    fsutil::write_atomic(&s.setup_config_file(), yaml.as_bytes(), 0o600)
        .map_err(|e| fail("cannot write the install's configuration", &e))?;
    let mut extra = vec![
        "--image".into(),
        s.template_image.display().to_string(),
        "--config".into(),
        s.setup_config_file().display().to_string(),
        "--vmid".into(),
        a.template_vmid.to_string(),
        "--storage".into(),
        a.storage.trim().to_owned(),
        "--upload-storage".into(),
        s.template_upload_storage.clone(),
    ];
    // No node named (every node): bhctl takes the cluster's only online one, or
    // says to name one.
    if let Some(node) = a.nodes.first() {
        extra.extend(["--node".into(), node.clone()]);
    }
    tracing::info!(vmid = a.template_vmid, "installing the guest template");
    let out = run_command(&s.template_install, &extra, &[], timeout)
        .await
        .map_err(|e| format!("installing the template failed: {e}"))?;
    let last = out
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("installed")
        .trim()
        .to_owned();
    tracing::info!(result = %last, "template install");
    Ok(last)
}

/// The root agent's configuration: its socket, the socket's group, and the one
/// caller allowed, blockhostd's user (or, where that user does not exist, as in
/// tests, the uid the wizard runs as, which then also runs blockhostd).
pub fn agent_toml(s: &Settings) -> String {
    let q = |v: &str| serde_json::Value::String(v.to_owned()).to_string();
    let mut t = format!(
        "# Written by blockhost-wizard at setup: who may call the root agent.\nsocket = {}\n",
        q(&s.root_agent_socket.display().to_string())
    );
    if !s.socket_group.is_empty() {
        t.push_str(&format!("socketGroup = {}\n", q(&s.socket_group)));
    }
    if !s.key_owner.is_empty() && fsutil::lookup_user(&s.key_owner).is_some() {
        t.push_str(&format!("allowedUsers = [{}]\n", q(&s.key_owner)));
    } else {
        // SAFETY: getuid has no preconditions and cannot fail.
        let uid = unsafe { libc::getuid() };
        t.push_str(&format!("allowedUids = [{uid}]\n"));
    }
    t
}

/// Whether the agent answers on its socket. A refusal is an answer too: the
/// wizard is not among the agent's callers (only blockhostd is).
async fn agent_answers(client: &RootAgentClient) -> bool {
    match client
        .verify_firewall(&blockhost_crd::config::FirewallConfig::default())
        .await
    {
        Ok(_) | Err(ClientError::Refused(_)) => true,
        Err(e) => {
            tracing::debug!(error = %crate::error_chain(&e), "the root agent does not answer yet");
            false
        }
    }
}

/// The host firewall step: the root agent configured, started and answering.
pub async fn host_firewall(ctx: &mut Ctx<'_>) -> StepResult {
    let s = ctx.settings;
    if !s.manages_firewall() {
        tracing::info!("no root agent start command configured; the host firewall is not managed");
        return record(ctx, |o| o.root_agent = None);
    }
    let path = s.root_agent_config_file();
    let text = agent_toml(s);
    if std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
        fsutil::ensure_dir(&s.etc_dir, 0o750)
            .map_err(|e| fail("cannot create the configuration directory", &e))?;
        // Root's file, readable by all: it holds no secret, and only root writes it.
        fsutil::write_atomic(&path, text.as_bytes(), 0o644)
            .map_err(|e| fail("cannot write the root agent's configuration", &e))?;
    }
    // The agent's own loader reads it back (unknown users or groups fail here,
    // not in the agent's unit).
    let cfg = AgentConfig::load(&path)
        .map_err(|e| fail("the root agent's configuration does not load", &e))?;
    cfg.allowed()
        .map_err(|e| fail("the root agent's configuration allows nobody", &e))?;
    let client = RootAgentClient::new(&s.root_agent_socket);
    if !agent_answers(&client).await {
        tracing::info!(command = %s.root_agent_start, "starting the root agent");
        run_command(
            &s.root_agent_start,
            &[],
            &[("BLOCKHOST_ROOT_AGENT_CONFIG", path.as_path())],
            Duration::from_secs(120),
        )
        .await?;
        let deadline = Instant::now() + Duration::from_secs(s.health_timeout_secs);
        while !agent_answers(&client).await {
            if Instant::now() > deadline {
                return Err(format!(
                    "the root agent does not answer on {} after {} s; see its log (journalctl -u blockhost-root-agent)",
                    s.root_agent_socket.display(),
                    s.health_timeout_secs
                ));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let socket = s.root_agent_socket.clone();
    record(ctx, |o| o.root_agent = Some(socket))
}
