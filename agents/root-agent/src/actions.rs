//! What each action does, once its caller was checked and its parameters parsed.

use serde_json::Value;
use tracing::{info, warn};

use crate::exec::{ExecError, Tools};
use crate::firewall::{self, TABLE};
use crate::proto::{
    Applied, BridgePort, FirewallStatus, Isolated, KnockAdd, KnockOpened, KnockRemove, Request,
    ok_body,
};

/// Why an action failed; its text goes back to the caller.
#[derive(Debug, thiserror::Error)]
pub enum ActionError {
    /// A command failed.
    #[error("applying the change failed")]
    Exec(#[from] ExecError),
    /// The firewall was applied but does not read back as built.
    #[error("the firewall was applied but reads back differently: {}", .0.join("; "))]
    NotInForce(Vec<String>),
    /// The VM has no such interface on a bridge.
    #[error(
        "VM {vmid} has no interface net{net} on a bridge (neither {fwpr} nor {tap} exists); is the VM running?"
    )]
    NoPort {
        /// The VM.
        vmid: u32,
        /// The index.
        net: u8,
        /// The port name behind a Proxmox VM firewall.
        fwpr: String,
        /// The tap name.
        tap: String,
    },
    /// The interface exists but is not enslaved to a bridge.
    #[error("{0} is not a bridge port")]
    NotBridgePort(String),
    /// The kernel did not keep the flag.
    #[error("{0}'s isolation flag did not change")]
    FlagNotSet(String),
}

/// Runs one request and returns the answer's body.
pub async fn run(tools: &Tools, req: Request) -> Result<Vec<u8>, ActionError> {
    match req {
        Request::FirewallApply(c) => apply(tools, &firewall::build(&c))
            .await
            .map(|a| ok_body(&a)),
        Request::FirewallVerify(c) => status(tools, &firewall::build(&c))
            .await
            .map(|s| ok_body(&s)),
        Request::KnockAdd(k) => knock_add(tools, &k).await.map(|k| ok_body(&k)),
        Request::KnockRemove(k) => knock_remove(tools, &k)
            .await
            .map(|()| ok_body(&Value::Null)),
        Request::BridgeIsolate(p) => isolate(tools, &p).await.map(|i| ok_body(&i)),
    }
}

async fn apply(tools: &Tools, rs: &firewall::Ruleset) -> Result<Applied, ActionError> {
    let knocks_kept = match tools.nft_script(&rs.apply_script()).await {
        Ok(()) => true,
        Err(e @ ExecError::Refused { .. }) => {
            // Only a table we cannot update in place gets here (e.g. a set of another
            // type left by hand): rebuild it, losing its knocks, rather than stay open.
            warn!(error = %e, "updating table inet {TABLE} in place failed; rebuilding it (open knocks are closed)");
            tools.nft_script(&rs.replace_script()).await?;
            false
        }
        Err(e) => return Err(e.into()),
    };
    let problems = rs.verify(tools.nft_table().await?.as_ref());
    if !problems.is_empty() {
        return Err(ActionError::NotInForce(problems));
    }
    let rules = u32::try_from(rs.rules.len()).unwrap_or(u32::MAX);
    info!(rules, knocks_kept, "firewall applied and verified");
    Ok(Applied { rules, knocks_kept })
}

async fn status(tools: &Tools, rs: &firewall::Ruleset) -> Result<FirewallStatus, ActionError> {
    let rb = tools.nft_table().await?;
    let problems = rs.verify(rb.as_ref());
    let knocks = rb.as_ref().map(firewall::open_knocks).unwrap_or_default();
    let ruleset = if rb.is_some() {
        tools.nft_table_text().await?
    } else {
        String::new()
    };
    Ok(FirewallStatus {
        in_force: problems.is_empty(),
        problems,
        ruleset,
        knocks,
    })
}

async fn knock_add(tools: &Tools, k: &KnockAdd) -> Result<KnockOpened, ActionError> {
    tools.nft_script(&firewall::knock_add_script(k)).await?;
    let source = k.source.map(|s| s.to_string());
    let ports: Vec<u16> = k.ports.ports().iter().map(|p| p.get()).collect();
    info!(
        source = source.as_deref().unwrap_or("any"),
        ?ports,
        secs = k.duration_secs.secs(),
        "knock opened"
    );
    Ok(KnockOpened {
        expires_secs: k.duration_secs.secs(),
    })
}

async fn knock_remove(tools: &Tools, k: &KnockRemove) -> Result<(), ActionError> {
    tools.nft_script(&firewall::knock_remove_script(k)).await?;
    let ports: Vec<u16> = k.ports.ports().iter().map(|p| p.get()).collect();
    info!(
        source = k.source.map(|s| s.to_string()).as_deref().unwrap_or("any"),
        ?ports,
        "knock closed"
    );
    Ok(())
}

async fn isolate(tools: &Tools, p: &BridgePort) -> Result<Isolated, ActionError> {
    let (vmid, net) = (p.vmid.get(), p.net.get());
    // With a Proxmox VM firewall the tap sits on a per-VM bridge and fwpr is the
    // VM's port on the real bridge; without one the tap is that port.
    let fwpr = format!("fwpr{vmid}p{net}");
    let tap = format!("tap{vmid}i{net}");
    let (name, link) = match tools.ip_link(&fwpr).await? {
        Some(l) => (fwpr, l),
        None => match tools.ip_link(&tap).await? {
            Some(l) => (tap, l),
            None => {
                return Err(ActionError::NoPort {
                    vmid,
                    net,
                    fwpr,
                    tap,
                });
            }
        },
    };
    if slave_kind(&link) != Some("bridge") {
        return Err(ActionError::NotBridgePort(name));
    }
    let was_isolated = isolated_flag(&link);
    tools.ip_set_isolated(&name, p.isolated).await?;
    let after = tools.ip_link(&name).await?;
    let isolated = after.as_ref().and_then(isolated_flag);
    if isolated != Some(p.isolated) {
        return Err(ActionError::FlagNotSet(name));
    }
    info!(interface = %name, isolated = p.isolated, ?was_isolated, "bridge port isolation set");
    Ok(Isolated {
        interface: name,
        isolated: p.isolated,
        was_isolated,
    })
}

fn slave_kind(link: &Value) -> Option<&str> {
    link.get("linkinfo")?.get("info_slave_kind")?.as_str()
}

fn isolated_flag(link: &Value) -> Option<bool> {
    link.get("linkinfo")?
        .get("info_slave_data")?
        .get("isolated")?
        .as_bool()
}
