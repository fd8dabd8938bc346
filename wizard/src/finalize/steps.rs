//! The finalization steps. Each looks first and acts second, so running it again
//! after a crash, a failure or a success changes nothing that is already right.
//!
//! Transactions are the delicate part: a runner killed after broadcasting but
//! before recording must not send a second deployment, plan or mint. Two rules
//! make that hold:
//! - **Settle, then look.** Before deciding what is missing, wait until the server
//!   wallet has nothing pending (its `pending` nonce equals its `latest`): a
//!   transaction sent just before the crash is then either mined (and seen) or
//!   gone (and sent again). The server key is made by this wizard and used by
//!   nothing else during setup.
//! - **Known addresses.** The contract step records the wallet's next nonce before
//!   sending anything; deployment *i* takes nonce `base + i`, so each contract's
//!   address (`CREATE(sender, nonce)`) is known in advance and "is it deployed?"
//!   is a code check at that address.
//!
//! Plans are found by name among the contract's plans, NFT #0 by `totalSupply`
//! and `ownerOf(0)`, the Proxmox role, user, token and ACLs by listing them.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use alloy_primitives::U256;
use alloy_sol_types::{SolCall, SolConstructor, SolEvent};
use bhctl::chain::{
    DEV_TOKEN_DECIMALS, DEV_TOKEN_NAME, DEV_TOKEN_SYMBOL, create_plan, deploy_code, has_code,
    send_call,
};
use blockhost_api::client::Client as DaemonClient;
use blockhost_chain::bindings::{AccessCredentialNFT, BlockhostSubscriptions, MockERC20};
use blockhost_chain::nft_payload::{self, ConnectionDetails};
use blockhost_chain::rpc::RpcClient;
use blockhost_chain::wallet::ServerWallet;
use blockhost_crd::config::firewall::{IfName, Port};
use blockhost_crd::config::{
    AdminConfig, ChainConfig, FirewallConfig, Ipv4Pool, Ipv6Pool, NetworkConfig, PlanDefaults,
    ProxmoxConfig,
};
use blockhost_crd::eip191::Signature;
use blockhost_crd::{DaemonConfig, WalletAddress};
use blockhost_pve::Pve;
use blockhost_pve::access::AclSubject;
use blockhost_pve::auth::Credentials;
use blockhost_pve::client::{ClientConfig, PveClient};
use blockhost_pve::tls::TlsMode;
use k256::SecretKey;
use serde_json::json;

use super::Finalizer;
use crate::answers::{Answers, is_dev_chain};
use crate::error_chain;
use crate::fsutil;
use crate::probe::{admin_client, alloy, verify_contracts};
use crate::settings::{Settings, split_command};

/// The role blockhostd's token holds: exactly what its Proxmox calls need
/// (`controller/pve/src/client.rs`), by the check PVE's API schema states for each.
///
/// | privilege | needed by |
/// |---|---|
/// | `VM.Audit` | `GET …/qemu/{vmid}/config`, `…/status/current`, `…/firewall/options`, `…/firewall/ipset/{name}`; `cluster/resources` lists only audited VMs |
/// | `VM.Clone` | `POST …/qemu/{template}/clone` |
/// | `VM.Allocate` | the clone's new VMID, `DELETE …/qemu/{vmid}` |
/// | `VM.Config.CPU`, `.Memory`, `.Network`, `.Options`, `.Cloudinit` | `PUT/POST …/config` (cores, memory, net0, name and tags, ipconfig0/ciuser/sshkeys); `.Network` also the VM's firewall (`PUT …/firewall/options`, `POST`/`DELETE …/firewall/ipset…`) |
/// | `VM.Config.Disk` | `PUT …/resize` |
/// | `VM.PowerMgmt` | `…/status/{start,stop,shutdown,suspend,resume}` |
/// | `VM.GuestAgent.Audit` | `…/agent/ping` |
/// | `VM.GuestAgent.FileWrite` | `…/agent/file-write` (the access file) |
/// | `Sys.Audit` | `GET /nodes/{node}/status` (placement by free memory); on `/` through [`AUDIT_ROLE`] alone, `GET /cluster/firewall/options` (is the datacenter firewall on) |
/// | `Datastore.AllocateSpace`, `Datastore.Audit` | the clone's disks on the chosen storage |
/// | `SDN.Use` | attaching the clone's `net0` to the bridge (PVE 8+) |
///
/// Not granted: `VM.GuestAgent.Unrestricted` (no arbitrary commands in tenant
/// VMs), `VM.Console`, `VM.Migrate`, `VM.Snapshot`, `Sys.Modify`, any
/// `Permissions.*`, `User.*` or `Realm.*`.
pub const BLOCKHOST_PRIVILEGES: &[&str] = &[
    "Datastore.AllocateSpace",
    "Datastore.Audit",
    "SDN.Use",
    "Sys.Audit",
    "VM.Allocate",
    "VM.Audit",
    "VM.Clone",
    "VM.Config.CPU",
    "VM.Config.Cloudinit",
    "VM.Config.Disk",
    "VM.Config.Memory",
    "VM.Config.Network",
    "VM.Config.Options",
    "VM.GuestAgent.Audit",
    "VM.GuestAgent.FileWrite",
    "VM.PowerMgmt",
];
/// The role's name.
pub const ROLE: &str = "BlockHost";
/// A second role, granted on `/` only: PVE checks the datacenter firewall's
/// options (`GET /cluster/firewall/options`, read by the VM firewall step to say
/// whether Proxmox enforces tenant isolation) against `/`, and the BlockHost role
/// must not be granted there (it would then hold on every VM, storage and node).
pub const AUDIT_ROLE: &str = "BlockHostAudit";
/// The audit role's privileges: read-only.
pub const AUDIT_PRIVILEGES: &[&str] = &["Sys.Audit"];
/// The user the token belongs to (PVE realm: no password, no shell).
pub const PVE_USER: &str = "blockhost@pve";
/// The token's id.
pub const PVE_TOKEN: &str = "blockhostd";

/// What a step sees.
#[derive(Debug)]
pub struct Ctx<'a> {
    /// Paths and commands.
    pub settings: &'a Settings,
    /// The answers.
    pub answers: &'a Answers,
    /// The admin wallet.
    pub admin: WalletAddress,
    /// The runner (outputs, code, sessions).
    pub finalizer: &'a Arc<Finalizer>,
}

/// A step's failure: the sentence the page shows (never a secret).
pub type StepResult = Result<(), String>;

/// "what: the error's chain", the sentence a failed step shows.
pub(crate) fn fail(what: &str, e: &(dyn std::error::Error + 'static)) -> String {
    format!("{what}: {}", error_chain(e))
}

/// Runs step `id`.
pub async fn run(id: &str, ctx: &mut Ctx<'_>) -> StepResult {
    match id {
        "server-key" => server_key(ctx),
        "contracts" => contracts(ctx).await,
        "plans" => plans(ctx).await,
        "proxmox-token" => proxmox_token(ctx).await,
        "template" => super::host::template(ctx).await,
        "host-firewall" => super::host::host_firewall(ctx).await,
        "config" => config(ctx),
        "daemon" => daemon(ctx).await,
        "plan-resources" => plan_resources(ctx).await,
        "nft" => nft(ctx).await,
        "done" => done(ctx),
        other => Err(format!("unknown step {other}")),
    }
}

/// Records outputs at once.
pub(crate) fn record(ctx: &Ctx<'_>, f: impl FnOnce(&mut super::Outputs)) -> StepResult {
    ctx.finalizer
        .record(f)
        .map_err(|e| fail("cannot record the step's result", &e))
}

/// Makes the server key if there is none (the chain step makes it so the page can
/// show its address; this step covers a state from before that).
pub fn ensure_server_key(settings: &Settings) -> Result<SecretKey, String> {
    let path = settings.server_key_file();
    if !path.exists() {
        fsutil::ensure_dir(&settings.etc_dir, 0o750)
            .map_err(|e| fail("cannot create the configuration directory", &e))?;
        let key = SecretKey::random(&mut rand::rngs::OsRng);
        let text = format!("{}\n", hex::encode(key.to_bytes()));
        // create_new: a key once made is never replaced (it may own contracts).
        fsutil::create_new(&path, text.as_bytes(), 0o600)
            .map_err(|e| fail("cannot write the server key", &e))?;
        fsutil::give_to(&path, &settings.key_owner)
            .map_err(|e| fail("cannot hand the server key to blockhostd's user", &e))?;
        tracing::info!(path = %path.display(), "generated the server key");
    }
    blockhost_chain::key::load_server_key(&path).map_err(|e| fail("the server key is unusable", &e))
}

fn server_key(ctx: &mut Ctx<'_>) -> StepResult {
    let key = ensure_server_key(ctx.settings)?;
    let mode = fsutil::mode_of(&ctx.settings.server_key_file())
        .map_err(|e| fail("cannot read the server key's mode", &e))?;
    if mode != 0o600 {
        return Err(format!(
            "{} has mode {mode:o}; it must be 0600",
            ctx.settings.server_key_file().display()
        ));
    }
    let address =
        blockhost_crd::eip191::address_of(&k256::ecdsa::VerifyingKey::from(&key.public_key()));
    record(ctx, |o| o.server_address = Some(address))
}

fn wallet(ctx: &Ctx<'_>) -> Result<ServerWallet, String> {
    let key = ensure_server_key(ctx.settings)?;
    let rpc = RpcClient::new(ctx.answers.chain.rpc_urls.clone())
        .map_err(|e| fail("cannot set up the RPC client", &e))?;
    Ok(ServerWallet::new(
        &key,
        ctx.answers.chain.chain_id,
        Arc::new(rpc),
    ))
}

/// Waits until the server wallet has no pending transaction; returns its nonce.
async fn settle(w: &ServerWallet, timeout: Duration) -> Result<u64, String> {
    let start = Instant::now();
    loop {
        let latest = w
            .nonce("latest")
            .await
            .map_err(|e| fail("cannot read the server wallet's nonce", &e))?;
        let pending = w
            .nonce("pending")
            .await
            .map_err(|e| fail("cannot read the server wallet's nonce", &e))?;
        if pending <= latest {
            return Ok(latest);
        }
        if start.elapsed() > timeout {
            return Err(format!(
                "the server wallet has transactions pending (nonces {latest}–{}); retry once they are mined",
                pending - 1
            ));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn view<C: SolCall>(
    w: &ServerWallet,
    to: &WalletAddress,
    call: C,
) -> Result<C::Return, String> {
    let out = w
        .call(*to.as_bytes(), &call.abi_encode())
        .await
        .map_err(|e| fail("a contract read failed", &e))?;
    C::abi_decode_returns(&out)
        .map_err(|e| format!("a contract read returned something unexpected: {e}"))
}

/// The address `CREATE` gives a contract deployed by `sender` at `nonce`:
/// the last 20 bytes of keccak256(rlp([sender, nonce])).
fn created_at(sender: WalletAddress, nonce: u64) -> WalletAddress {
    let mut payload = vec![0x80 + 20];
    payload.extend_from_slice(sender.as_bytes());
    match nonce {
        0 => payload.push(0x80),
        1..=0x7f => payload.push(nonce as u8),
        _ => {
            let be = nonce.to_be_bytes();
            let first = be.iter().position(|b| *b != 0).unwrap_or(7);
            payload.push(0x80 + (8 - first) as u8);
            payload.extend_from_slice(&be[first..]);
        }
    }
    // The list is always short (< 56 bytes): one prefix byte.
    let mut rlp = vec![0xc0 + payload.len() as u8];
    rlp.extend_from_slice(&payload);
    let hash = alloy_primitives::keccak256(&rlp);
    let mut out = [0u8; 20];
    out.copy_from_slice(&hash[12..]);
    WalletAddress::from_bytes(out)
}

async fn contracts(ctx: &mut Ctx<'_>) -> StepResult {
    let w = wallet(ctx)?;
    w.check_chain()
        .await
        .map_err(|e| fail("the chain check failed", &e))?;
    let timeout = ctx.settings.tx_timeout();
    let chain = &ctx.answers.chain;
    if chain.contracts == "reuse" {
        let subs: WalletAddress = chain.subscriptions_contract.trim().parse().map_err(|_| {
            "the subscriptions contract address is invalid; fix it in the chain step".to_owned()
        })?;
        let nft: WalletAddress = chain.nft_contract.trim().parse().map_err(|_| {
            "the NFT contract address is invalid; fix it in the chain step".to_owned()
        })?;
        if let Some((_, m)) = verify_contracts(&w, &subs, &nft).await.into_iter().next() {
            return Err(m);
        }
        record(ctx, |o| {
            o.subscriptions = Some(subs);
            o.nft = Some(nft);
            o.start_block = Some(chain.deployment_block);
        })?;
    } else {
        let out = ctx.finalizer.outputs();
        let base = match out.base_nonce {
            Some(b) => b,
            None => {
                let n = settle(&w, timeout).await?;
                let head = w
                    .head()
                    .await
                    .map_err(|e| fail("cannot read the chain head", &e))?;
                // Recorded before anything is sent: the addresses follow from it.
                record(ctx, |o| {
                    o.base_nonce = Some(n);
                    o.start_block = Some(head);
                })?;
                n
            }
        };
        let mut plan: Vec<(&str, Vec<u8>)> = vec![
            (
                "BlockhostSubscriptions",
                BlockhostSubscriptions::BYTECODE.to_vec(),
            ),
            (
                "AccessCredentialNFT",
                AccessCredentialNFT::BYTECODE.to_vec(),
            ),
        ];
        if chain.stablecoin_mode == "dev" && is_dev_chain(chain.chain_id) {
            let args = MockERC20::constructorCall {
                name_: DEV_TOKEN_NAME.into(),
                symbol_: DEV_TOKEN_SYMBOL.into(),
                decimals_: DEV_TOKEN_DECIMALS,
            }
            .abi_encode();
            plan.push((
                "the test stablecoin",
                [MockERC20::BYTECODE.as_ref(), &args].concat(),
            ));
        }
        let mut addrs = Vec::new();
        for (i, (what, code)) in plan.into_iter().enumerate() {
            let nonce = base + i as u64;
            let expected = created_at(w.address(), nonce);
            if !has_code(w.rpc(), &expected)
                .await
                .map_err(|e| fail("cannot read the chain", &e))?
            {
                let next = settle(&w, timeout).await?;
                if has_code(w.rpc(), &expected)
                    .await
                    .map_err(|e| fail("cannot read the chain", &e))?
                {
                    addrs.push(expected);
                    continue;
                }
                if next != nonce {
                    return Err(format!(
                        "the server wallet's transaction with nonce {nonce} did not deploy {what} at {expected} (the wallet is at nonce {next}); was the server key used elsewhere?"
                    ));
                }
                tracing::info!(contract = what, nonce, "deploying");
                let (got, _) = deploy_code(&w, code, timeout)
                    .await
                    .map_err(|e| fail(&format!("deploying {what} failed"), &e))?;
                if got != expected {
                    return Err(format!(
                        "{what} was deployed at {got}, not at the expected {expected}"
                    ));
                }
            }
            addrs.push(expected);
        }
        let token = match chain.stablecoin_mode.as_str() {
            "dev" => addrs.get(2).copied(),
            _ => chain.stablecoin.trim().parse().ok(),
        };
        record(ctx, |o| {
            o.subscriptions = addrs.first().copied();
            o.nft = addrs.get(1).copied();
            o.stablecoin = token;
        })?;
    }
    // The payment token, set once (read first: a retry finds it set).
    let out = ctx.finalizer.outputs();
    let subs = out
        .subscriptions
        .ok_or("no subscriptions contract recorded")?;
    let token: Option<WalletAddress> = match chain.stablecoin_mode.as_str() {
        "dev" => out.stablecoin,
        _ => chain.stablecoin.trim().parse().ok(),
    };
    if let Some(token) = token {
        let current = view(
            &w,
            &subs,
            BlockhostSubscriptions::getPrimaryStablecoinCall {},
        )
        .await?;
        if current != alloy(&token) {
            settle(&w, timeout).await?;
            let current = view(
                &w,
                &subs,
                BlockhostSubscriptions::getPrimaryStablecoinCall {},
            )
            .await?;
            if current != alloy(&token) {
                let data = BlockhostSubscriptions::setPrimaryStablecoinCall {
                    stablecoin: alloy(&token),
                }
                .abi_encode();
                send_call(&w, *subs.as_bytes(), data, "setPrimaryStablecoin", timeout)
                    .await
                    .map_err(|e| fail("setting the payment token failed", &e))?;
            }
        }
        record(ctx, |o| o.stablecoin = Some(token))?;
    }
    Ok(())
}

async fn plans(ctx: &mut Ctx<'_>) -> StepResult {
    let w = wallet(ctx)?;
    let timeout = ctx.settings.tx_timeout();
    let subs = ctx
        .finalizer
        .outputs()
        .subscriptions
        .ok_or("the contracts step has not recorded the subscriptions contract")?;
    settle(&w, timeout).await?;
    let count = view(&w, &subs, BlockhostSubscriptions::getTotalPlanCountCall {}).await?;
    let count = u64::try_from(count).map_err(|_| "the plan count is out of range".to_owned())?;
    let mut existing = Vec::new();
    for id in 1..=count {
        let p = view(
            &w,
            &subs,
            BlockhostSubscriptions::getPlanCall {
                planId: U256::from(id),
            },
        )
        .await?;
        existing.push((id, p._0, p._2));
    }
    let mut made = Vec::new();
    for p in &ctx.answers.chain.plans {
        let name = p.name.trim();
        if let Some((id, _, _)) = existing.iter().find(|(_, n, active)| n == name && *active) {
            made.push((name.to_owned(), *id));
            continue;
        }
        let (_, created) = create_plan(&w, subs, name, p.price_per_day_cents, timeout)
            .await
            .map_err(|e| fail(&format!("creating plan {name} failed"), &e))?;
        let id = u64::try_from(created.planId)
            .map_err(|_| "the new plan's id is out of range".to_owned())?;
        made.push((name.to_owned(), id));
        let snapshot = made.clone();
        record(ctx, |o| o.plans = snapshot)?;
    }
    record(ctx, |o| o.plans = made)
}

/// The ACL paths blockhostd's token needs.
fn acl_paths(ctx: &Ctx<'_>, nodes: &[String]) -> Vec<String> {
    let a = &ctx.answers.proxmox;
    let mut v = vec!["/vms".to_owned()];
    v.extend(nodes.iter().map(|n| format!("/nodes/{n}")));
    v.push(format!("/storage/{}", a.storage.trim()));
    v.push(format!("/sdn/zones/localnetwork/{}", a.bridge.trim()));
    v
}

fn token_client(ctx: &Ctx<'_>, secret: &str) -> Result<PveClient, String> {
    let a = &ctx.answers.proxmox;
    let tls = match a.fingerprint.trim() {
        "" => TlsMode::SystemRoots,
        fp => TlsMode::Pinned(
            fp.to_ascii_uppercase()
                .parse()
                .map_err(|e| fail("the fingerprint is invalid", &e))?,
        ),
    };
    PveClient::new(
        ClientConfig::new(
            a.url.trim(),
            Credentials::api_token(format!("{PVE_USER}!{PVE_TOKEN}"), secret),
            tls,
        )
        .request_timeout(Duration::from_secs(15)),
    )
    .map_err(|e| fail("cannot set up the Proxmox client", &e))
}

async fn proxmox_token(ctx: &mut Ctx<'_>) -> StepResult {
    let settings = ctx.settings;
    let full = format!("{PVE_USER}!{PVE_TOKEN}");
    let secret_file = settings.pve_token_file();
    let password = std::fs::read_to_string(settings.pve_password_file()).ok();
    let Some(password) = password else {
        // Without the administrator's password only a finished token can be confirmed.
        if let Ok(s) = std::fs::read_to_string(&secret_file)
            && token_client(ctx, s.trim())?.version().await.is_ok()
        {
            return record(ctx, |o| o.token_id = Some(full));
        }
        return Err("the Proxmox administrator's password is needed again: enter it in the Proxmox step, then retry".into());
    };
    let admin = admin_client(&ctx.answers.proxmox, password.trim_end_matches('\n'))
        .map_err(|e| fail("cannot set up the Proxmox client", &e))?;
    let pve_err = |what: &str| {
        let what = what.to_owned();
        move |e: blockhost_pve::error::Error| fail(&what, &e)
    };
    // The roles, with exactly BlockHost's privileges.
    let roles = admin
        .roles()
        .await
        .map_err(pve_err("cannot list Proxmox roles"))?;
    for (name, privs) in [(ROLE, BLOCKHOST_PRIVILEGES), (AUDIT_ROLE, AUDIT_PRIVILEGES)] {
        match roles.iter().find(|r| r.roleid == name) {
            None => admin
                .create_role(name, privs)
                .await
                .map_err(pve_err(&format!("cannot create the {name} role")))?,
            Some(r) if r.privileges() != privs => admin
                .set_role(name, privs)
                .await
                .map_err(pve_err(&format!("cannot set the {name} role's privileges")))?,
            Some(_) => {}
        }
    }
    // The user.
    let users = admin
        .users()
        .await
        .map_err(pve_err("cannot list Proxmox users"))?;
    if !users.iter().any(|u| u.userid == PVE_USER) {
        admin
            .create_user(PVE_USER, "BlockHost's daemon (blockhostd); API token only")
            .await
            .map_err(pve_err("cannot create the blockhost@pve user"))?;
    }
    // The token: its secret is shown only once, so a token whose secret we do not
    // hold (a crash between creation and the write) is replaced.
    let tokens = admin
        .tokens(PVE_USER)
        .await
        .map_err(pve_err("cannot list the user's tokens"))?;
    let exists = tokens.iter().any(|t| t.tokenid == PVE_TOKEN);
    let held = std::fs::read_to_string(&secret_file).ok();
    let usable = match (&held, exists) {
        (Some(s), true) => token_client(ctx, s.trim())?.version().await.is_ok(),
        _ => false,
    };
    if !usable {
        if exists {
            admin
                .delete_token(PVE_USER, PVE_TOKEN)
                .await
                .map_err(pve_err("cannot replace the old token"))?;
        }
        let made = admin
            .create_token(
                PVE_USER,
                PVE_TOKEN,
                "blockhostd (privilege-separated, BlockHost role)",
            )
            .await
            .map_err(pve_err("cannot create the API token"))?;
        fsutil::ensure_dir(&settings.etc_dir, 0o750)
            .map_err(|e| fail("cannot create the configuration directory", &e))?;
        fsutil::write_atomic(&secret_file, format!("{}\n", made.value).as_bytes(), 0o600)
            .map_err(|e| fail("cannot write the token secret", &e))?;
        fsutil::give_to(&secret_file, &settings.key_owner)
            .map_err(|e| fail("cannot hand the token secret to blockhostd's user", &e))?;
    }
    // ACLs: the role on each path, for the token and (PVE intersects a separated
    // token's rights with its user's) for the user.
    let nodes: Vec<String> = if ctx.answers.proxmox.nodes.is_empty() {
        admin
            .nodes()
            .await
            .map_err(pve_err("cannot list the nodes"))?
            .into_iter()
            .map(|n| n.node)
            .collect()
    } else {
        ctx.answers.proxmox.nodes.clone()
    };
    let acl = admin.acl().await.map_err(pve_err("cannot list the ACLs"))?;
    let grants = acl_paths(ctx, &nodes)
        .into_iter()
        .map(|p| (p, ROLE))
        .chain([("/".to_owned(), AUDIT_ROLE)]);
    for (path, role) in grants {
        for (kind, who) in [
            ("token", AclSubject::Token(&full)),
            ("user", AclSubject::User(PVE_USER)),
        ] {
            let id = match who {
                AclSubject::Token(t) | AclSubject::User(t) => t,
            };
            let present = acl
                .iter()
                .any(|e| e.path == path && e.roleid == role && e.kind == kind && e.ugid == id);
            if !present {
                admin
                    .grant(&path, role, who)
                    .await
                    .map_err(pve_err(&format!("cannot grant the {role} role on {path}")))?;
            }
        }
    }
    // The password is kept for the template step, which deletes it.
    record(ctx, |o| o.token_id = Some(full))
}

/// blockhostd's configuration from the answers and outputs.
pub fn daemon_config(
    settings: &Settings,
    answers: &Answers,
    out: &super::Outputs,
    admin: WalletAddress,
) -> Result<DaemonConfig, String> {
    let a = &answers.proxmox;
    let c = &answers.chain;
    let first = c.plans.first().ok_or("no plan")?;
    let resources = blockhost_crd::vm::Resources {
        cores: blockhost_crd::Cores::new(first.cores)?,
        memory_mib: blockhost_crd::MemoryMib::new(first.memory_mib)?,
        disk_gib: blockhost_crd::DiskGib::new(first.disk_gib)?,
    };
    let template = blockhost_crd::Vmid::new(a.template_vmid)?;
    let chain = ChainConfig {
        chain_id: c.chain_id,
        rpc_urls: c.rpc_urls.clone(),
        ws_urls: vec![],
        subscriptions_contract: out.subscriptions,
        nft_contract: out.nft,
        deployment_block: out.start_block.unwrap_or(0),
        confirmations: c.confirmations,
        poll_interval_ms: 1000,
        max_block_range: 2000,
        server_key_file: settings.server_key_file(),
        public_secret: "blockhost-access".into(),
        plan_defaults: PlanDefaults {
            resources,
            template,
        },
        follow_chain_time: false,
    };
    // Built through serde so every field not asked for takes the type's default.
    let proxmox: ProxmoxConfig = serde_json::from_value(json!({
        "url": a.url.trim(),
        "tokenId": out.token_id.clone().ok_or("no Proxmox token recorded")?,
        "tokenSecretFile": settings.pve_token_file(),
        "tlsFingerprint": Some(a.fingerprint.trim().to_ascii_uppercase()).filter(|f| !f.is_empty()),
        "nodes": a.nodes,
        "vmidFirst": a.vmid_first,
        "vmidLast": a.vmid_last,
        "defaultTemplate": a.template_vmid,
        "storage": a.storage.trim(),
        "gracePeriodDays": a.grace_days,
    }))
    .map_err(|e| format!("the Proxmox answers do not make a configuration: {e}"))?;
    let ipv4 = Ipv4Pool {
        cidr: a.ipv4_cidr.trim().parse()?,
        gateway: a
            .ipv4_gateway
            .trim()
            .parse()
            .map_err(|_| "the IPv4 gateway is invalid".to_owned())?,
        first: None,
        last: None,
    };
    let ipv6 = match a.ipv6_mode.as_str() {
        "manual" => Some(Ipv6Pool {
            prefix: a.ipv6_prefix.trim().parse()?,
            gateway: a
                .ipv6_gateway
                .trim()
                .parse()
                .map_err(|_| "the IPv6 gateway is invalid".to_owned())?,
        }),
        _ => None,
    };
    let network = NetworkConfig {
        ipv4: Some(ipv4),
        ipv6,
        bridge: a.bridge.trim().to_owned(),
        nameservers: a
            .nameservers
            .iter()
            .filter_map(|n| n.parse().ok())
            .collect(),
    };
    let mut cfg = DaemonConfig {
        store: settings.daemon_store.clone(),
        chain: Some(chain),
        proxmox: Some(proxmox),
        network,
        ..DaemonConfig::default()
    };
    if settings.manages_firewall() {
        let (firewall, admin) = firewall_and_admin(settings, answers, admin)?;
        cfg.firewall = Some(firewall);
        cfg.admin = admin;
        cfg.root_agent.socket = settings.root_agent_socket.clone();
    }
    cfg.api.socket = settings.daemon_socket.clone();
    cfg.api.socket_group = Some(settings.socket_group.clone()).filter(|g| !g.is_empty());
    Ok(cfg)
}

/// The host firewall and the admin commands from the answers. With admin
/// commands on, the knock ports are the ones a knock may open (closed to all
/// but the cluster's nodes until the admin knocks); off, SSH and the Proxmox GUI
/// stay public, as there would be no way to open them but the console.
fn firewall_and_admin(
    settings: &Settings,
    answers: &Answers,
    wallet: WalletAddress,
) -> Result<(FirewallConfig, Option<AdminConfig>), String> {
    let ports =
        |v: &[u16]| -> Result<Vec<Port>, String> { v.iter().map(|p| Port::new(*p)).collect() };
    let bridge =
        IfName::new(answers.proxmox.bridge.trim()).map_err(|e| format!("the bridge name: {e}"))?;
    let a = &answers.admin;
    let (public, knock) = if a.enabled {
        (vec![], ports(&a.ports)?)
    } else {
        (ports(&[22, 8006])?, vec![])
    };
    let firewall = FirewallConfig {
        public_tcp_ports: public,
        knock_tcp_ports: knock.clone(),
        vm_bridges: vec![bridge],
        ..FirewallConfig::default()
    };
    firewall.check()?;
    let admin = if a.enabled {
        let command = std::fs::read_to_string(settings.admin_command_file()).map_err(|_| {
            "the admin command name is missing; enter it in the admin commands step, then retry"
                .to_owned()
        })?;
        let admin = AdminConfig {
            wallet,
            target: None,
            command: command.trim_end_matches('\n').to_owned(),
            allowed_ports: knock.clone(),
            default_ports: knock.clone(),
            default_duration_secs: a.default_duration_secs,
        };
        admin.check(&knock)?;
        Some(admin)
    } else {
        None
    };
    Ok((firewall, admin))
}

fn config(ctx: &mut Ctx<'_>) -> StepResult {
    let settings = ctx.settings;
    let out = ctx.finalizer.outputs();
    let cfg = daemon_config(settings, ctx.answers, &out, ctx.admin)?;
    let yaml = serde_saphyr::to_string(&cfg)
        .map_err(|e| format!("cannot write the configuration as YAML: {e}"))?;
    let text = format!(
        "# Written by blockhost-wizard at setup; see README.md (Configuration) for every field.\n{yaml}"
    );
    let path = settings.config_file();
    fsutil::ensure_dir(&settings.etc_dir, 0o750)
        .map_err(|e| fail("cannot create the configuration directory", &e))?;
    fsutil::write_atomic(&path, text.as_bytes(), 0o640)
        .map_err(|e| fail("cannot write the configuration", &e))?;
    // Schema-valid: blockhostd's own loader (every field's validation) reads it
    // back to exactly what was meant.
    let parsed = blockhost_api::config::load(&path, true)
        .map_err(|e| fail("the written configuration does not load", &e))?;
    if parsed != cfg {
        return Err("the written configuration reads back differently; this is a bug".into());
    }
    for key in [settings.server_key_file(), settings.pve_token_file()] {
        let mode = fsutil::mode_of(&key).map_err(|e| fail("a key file is missing", &e))?;
        if mode & 0o037 != 0 {
            return Err(format!(
                "{} has mode {mode:o}; keys must be 0600 or 0640",
                key.display()
            ));
        }
    }
    record(ctx, |o| o.config_file = Some(path))
}

async fn healthy(socket: &Path) -> bool {
    DaemonClient::new(socket)
        .request(hyper::Method::GET, "/healthz", None)
        .await
        .is_ok()
}

async fn daemon(ctx: &mut Ctx<'_>) -> StepResult {
    let settings = ctx.settings;
    let socket = &settings.daemon_socket;
    if !healthy(socket).await {
        let (program, args) = split_command(&settings.daemon_start)
            .ok_or("no command to start blockhostd is configured")?;
        let out = tokio::time::timeout(
            Duration::from_secs(120),
            tokio::process::Command::new(&program)
                .args(&args)
                .env("BLOCKHOST_CONFIG", settings.config_file())
                .stdin(std::process::Stdio::null())
                .output(),
        )
        .await
        .map_err(|_| format!("{} did not finish within 120 s", settings.daemon_start))?
        .map_err(|e| fail(&format!("cannot run {}", settings.daemon_start), &e))?;
        if !out.status.success() {
            let tail: String = String::from_utf8_lossy(&out.stderr)
                .chars()
                .rev()
                .take(400)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            return Err(format!(
                "{} failed ({}): {}",
                settings.daemon_start,
                out.status,
                tail.trim()
            ));
        }
        let deadline = Instant::now() + Duration::from_secs(settings.health_timeout_secs);
        while !healthy(socket).await {
            if Instant::now() > deadline {
                return Err(format!(
                    "blockhostd does not answer on {} after {} s; see its log (journalctl -u blockhostd)",
                    socket.display(),
                    settings.health_timeout_secs
                ));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    Ok(())
}

async fn plan_resources(ctx: &mut Ctx<'_>) -> StepResult {
    let client = DaemonClient::new(&ctx.settings.daemon_socket);
    let out = ctx.finalizer.outputs();
    let template = ctx.answers.proxmox.template_vmid;
    let mut objects = Vec::new();
    for (name, id) in &out.plans {
        let Some(p) = ctx
            .answers
            .chain
            .plans
            .iter()
            .find(|p| p.name.trim() == name)
        else {
            continue;
        };
        // The name blockhostd's watcher gives a mirrored chain plan; applying it
        // first (or after) leaves one object either way.
        objects.push(json!({
            "apiVersion": blockhost_crd::API_VERSION,
            "kind": "Plan",
            "metadata": {"name": format!("plan-{id}")},
            "spec": {
                "chainPlanId": id,
                "displayName": name,
                "resources": {"cores": p.cores, "memoryMiB": p.memory_mib, "diskGiB": p.disk_gib},
                "template": template,
                "pricePerDayUsdCents": p.price_per_day_cents,
                "active": true,
            },
        }));
    }
    let body = serde_json::to_vec(&json!({ "objects": objects }))
        .map_err(|e| format!("cannot encode the plans: {e}"))?;
    client
        .request(
            hyper::Method::POST,
            &format!("{}/apply", blockhost_api::API_PREFIX),
            Some(body),
        )
        .await
        .map_err(|e| fail("blockhostd refused the plans", &e))?;
    Ok(())
}

/// NFT #0's payload: how the admin reaches the host.
fn host_details(settings: &Settings) -> ConnectionDetails {
    let hostname = settings
        .urls()
        .first()
        .and_then(|u| u.strip_prefix("https://"))
        .and_then(|r| r.split(['/', ':']).next().map(str::to_owned))
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| settings.host_name());
    ConnectionDetails {
        hostname,
        port: 22,
        username: "root".into(),
    }
}

async fn nft(ctx: &mut Ctx<'_>) -> StepResult {
    let w = wallet(ctx)?;
    let timeout = ctx.settings.tx_timeout();
    let nft = ctx
        .finalizer
        .outputs()
        .nft
        .ok_or("the contracts step has not recorded the NFT contract")?;
    settle(&w, timeout).await?;
    let supply = view(&w, &nft, AccessCredentialNFT::totalSupplyCall {}).await?;
    if supply > U256::ZERO {
        let owner = view(
            &w,
            &nft,
            AccessCredentialNFT::ownerOfCall {
                tokenId: U256::ZERO,
            },
        )
        .await?;
        if owner != alloy(&ctx.admin) {
            return Err(format!(
                "NFT #0 exists and belongs to {owner}, not to the admin {}",
                ctx.admin
            ));
        }
    } else {
        let text = std::fs::read_to_string(ctx.settings.access_signature_file())
            .map_err(|_| "the admin's signature of the access secret is missing; sign in again on the page, then retry".to_owned())?;
        let sig: Signature = text
            .trim()
            .parse()
            .map_err(|e| fail("the stored access signature is invalid", &e))?;
        let payload = nft_payload::encrypt(&sig, &host_details(ctx.settings))
            .map_err(|e| fail("cannot encrypt NFT #0's details", &e))?;
        let data = AccessCredentialNFT::mintCall {
            to: alloy(&ctx.admin),
            userEncrypted: payload.into(),
        }
        .abi_encode();
        let r = send_call(&w, *nft.as_bytes(), data, "mint", timeout)
            .await
            .map_err(|e| fail("minting NFT #0 failed", &e))?;
        let minted = r
            .logs
            .iter()
            .filter(|l| &l.address == nft.as_bytes())
            .find_map(|l| {
                let topics: Vec<_> = l
                    .topics
                    .iter()
                    .map(|t| alloy_primitives::B256::from(*t))
                    .collect();
                AccessCredentialNFT::CredentialMinted::decode_raw_log(topics, &l.data).ok()
            })
            .ok_or("the mint's receipt has no CredentialMinted event")?;
        if minted.tokenId != U256::ZERO {
            return Err(format!("the admin's NFT got id {}, not 0", minted.tokenId));
        }
    }
    fsutil::remove(&ctx.settings.access_signature_file())
        .map_err(|e| fail("cannot remove the access signature", &e))?;
    record(ctx, |o| o.nft_token_id = Some(0))
}

fn done(ctx: &mut Ctx<'_>) -> StepResult {
    let s = ctx.settings;
    if let Some(dir) = s.done_marker.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| fail("cannot create the marker's directory", &e))?;
    }
    fsutil::write_atomic(
        &s.done_marker,
        format!("{}\n", chrono::Utc::now().to_rfc3339()).as_bytes(),
        0o644,
    )
    .map_err(|e| fail("cannot write the set-up marker", &e))?;
    ctx.finalizer
        .code()
        .destroy()
        .map_err(|e| fail("cannot destroy the one-time code", &e))?;
    crate::console::clear(&s.issue_file(), &s.console_refresh)
        .map_err(|e| fail("cannot clear the console text", &e))?;
    let _ = std::fs::remove_dir_all(s.secrets_dir());
    // The sessions end when the server stops, a moment later (the page reads
    // the final state first).
    if let Some((program, args)) = split_command(&s.disable_self) {
        match std::process::Command::new(&program)
            .args(&args)
            .stdin(std::process::Stdio::null())
            .status()
        {
            Ok(st) if st.success() => {}
            Ok(st) => {
                tracing::warn!(command = %s.disable_self, status = %st, "disabling the wizard failed; the set-up marker keeps it from starting again")
            }
            Err(e) => {
                tracing::warn!(command = %s.disable_self, error = %e, "disabling the wizard failed; the set-up marker keeps it from starting again")
            }
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn deployment_addresses_follow_the_nonce() {
        // anvil account 0's first deployment is the well-known 0x5FbDB2315678afecb367f032d93F642f64180aa3.
        let a: WalletAddress = "0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266"
            .parse()
            .unwrap();
        assert_eq!(
            created_at(a, 0).to_lower_hex(),
            "0x5fbdb2315678afecb367f032d93f642f64180aa3"
        );
        assert_eq!(
            created_at(a, 1).to_lower_hex(),
            "0xe7f1725e7734ce288f8367e1bb143e90bb3f0512"
        );
        // A two-byte nonce takes the long form (checked against `cast compute-address`).
        assert_eq!(
            created_at(a, 300).to_lower_hex(),
            "0x9338ca7d556248055f5751d85cda7ad6ef254433"
        );
    }

    #[derive(clap::Parser)]
    struct Wrap {
        #[command(flatten)]
        s: Settings,
    }

    #[test]
    fn firewall_and_admin_follow_the_admin_answers() {
        use clap::Parser;
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display().to_string();
        let s = Wrap::parse_from(["wizard", "--state-dir", &d, "--etc-dir", &d]).s;
        let wallet: WalletAddress = "0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266"
            .parse()
            .unwrap();
        let port = |p| Port::new(p).unwrap();
        let mut a = Answers::default();
        // Off: nothing to knock with, so SSH and the GUI stay reachable.
        a.admin.enabled = false;
        let (fw, admin) = firewall_and_admin(&s, &a, wallet).unwrap();
        assert_eq!(fw.public_tcp_ports, vec![port(22), port(8006)]);
        assert!(fw.knock_tcp_ports.is_empty() && admin.is_none());
        assert_eq!(fw.vm_bridges[0].to_string(), "vmbr0");
        // On: the ports close behind a knock, and the command name is required.
        a.admin.enabled = true;
        a.admin.ports = vec![22];
        let e = firewall_and_admin(&s, &a, wallet).unwrap_err();
        assert!(e.contains("command name is missing"), "{e}");
        fsutil::ensure_dir(&s.secrets_dir(), 0o700).unwrap();
        std::fs::write(s.admin_command_file(), "open-sesame-42").unwrap();
        let (fw, admin) = firewall_and_admin(&s, &a, wallet).unwrap();
        assert!(fw.public_tcp_ports.is_empty());
        assert_eq!(fw.knock_tcp_ports, vec![port(22)]);
        let admin = admin.unwrap();
        assert_eq!(admin.command, "open-sesame-42");
        assert_eq!(admin.wallet, wallet);
        assert_eq!(admin.allowed_ports, vec![port(22)]);
    }

    #[test]
    fn the_role_is_sorted_and_has_no_admin_privileges() {
        let mut sorted = BLOCKHOST_PRIVILEGES.to_vec();
        sorted.sort();
        assert_eq!(
            sorted, BLOCKHOST_PRIVILEGES,
            "sorted, as Role::privileges compares"
        );
        for p in BLOCKHOST_PRIVILEGES {
            assert!(
                !p.starts_with("Permissions.")
                    && !p.starts_with("User.")
                    && !p.starts_with("Realm.")
                    && *p != "Sys.Modify"
                    && *p != "VM.GuestAgent.Unrestricted",
                "{p}"
            );
        }
    }
}
