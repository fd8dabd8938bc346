//! The checks that ask the outside world: Proxmox VE (login, nodes, storage with
//! image content, bridges, the host's LAN, the template) and the chain (its id,
//! the server wallet's balance, existing contracts and the payment token).
//! Each finding goes into a [`Report`] against the form field it concerns.

use std::sync::Arc;
use std::time::Duration;

use alloy_primitives::{Address, U256};
use alloy_sol_types::SolCall;
use blockhost_chain::bindings::{AccessCredentialNFT, BlockhostSubscriptions, MockERC20};
use blockhost_chain::rpc::{RpcClient, quantity};
use blockhost_chain::wallet::ServerWallet;
use blockhost_crd::WalletAddress;
use blockhost_crd::net::Ipv4Cidr;
use blockhost_pve::Pve;
use blockhost_pve::auth::Credentials;
use blockhost_pve::client::{ClientConfig, PveClient};
use blockhost_pve::error::{Error as PveError, ErrorKind};
use blockhost_pve::tls::{Fingerprint, TlsMode};
use blockhost_pve::types::NodeState;
use k256::SecretKey;
use serde_json::json;

use crate::answers::{ChainAnswers, ProxmoxAnswers, Report};
use crate::error_chain;

/// Gas the setup's transactions take on BlockHost's contracts, measured on anvil
/// with a margin: what the page says the server wallet needs.
pub const SETUP_GAS: u64 = 9_000_000;

/// A client for the administrator's answers.
pub fn admin_client(a: &ProxmoxAnswers, password: &str) -> Result<PveClient, PveError> {
    let tls = match a.fingerprint.trim() {
        "" => TlsMode::SystemRoots,
        fp => TlsMode::Pinned(fp.to_ascii_uppercase().parse::<Fingerprint>()?),
    };
    PveClient::new(
        ClientConfig::new(
            a.url.trim(),
            Credentials::password(a.admin_user.trim(), password),
            tls,
        )
        .request_timeout(Duration::from_secs(15)),
    )
}

/// What a PVE failure means for the form.
fn pve_problem(e: &PveError, r: &mut Report) {
    match e {
        PveError::Tls { .. } => r.error(
            "fingerprint",
            "the Proxmox certificate does not match this fingerprint; compare it with the node's (Datacenter → node → System → Certificates)",
        ),
        _ if e.kind() == ErrorKind::Auth => r.error(
            "password",
            "Proxmox refused this user and password",
        ),
        PveError::Transport { .. } => r.error(
            "url",
            "Proxmox does not answer at this address; check the URL and that pveproxy runs",
        ),
        _ => r.error("url", format!("Proxmox answered: {}", error_chain(e))),
    }
}

/// Checks the Proxmox answers against the cluster.
pub async fn proxmox(a: &ProxmoxAnswers, password: &str, r: &mut Report) {
    let client = match admin_client(a, password) {
        Ok(c) => c,
        Err(e) => return r.error("url", error_chain(&e)),
    };
    let nodes = match client.nodes().await {
        Ok(n) => n,
        Err(e) => return pve_problem(&e, r),
    };
    let online: Vec<String> = nodes
        .iter()
        .filter(|n| n.status == NodeState::Online)
        .map(|n| n.node.clone())
        .collect();
    r.found.insert("nodes".into(), json!(online));
    let chosen: Vec<String> = if a.nodes.is_empty() {
        online.clone()
    } else {
        a.nodes.clone()
    };
    if chosen.is_empty() {
        return r.error("nodes", "no node of this cluster is online");
    }
    let cidr: Option<Ipv4Cidr> = a.ipv4_cidr.trim().parse().ok();
    for node in &chosen {
        if !online.contains(node) {
            r.error(
                "nodes",
                format!(
                    "node {node} is not an online node of this cluster (online: {})",
                    online.join(", ")
                ),
            );
            continue;
        }
        match client.node_storages(node, Some("images")).await {
            Ok(list) => {
                let usable: Vec<String> = list
                    .iter()
                    .filter(|s| s.holds("images") && s.enabled)
                    .map(|s| s.storage.clone())
                    .collect();
                r.found.insert("storages".into(), json!(usable));
                if !usable.contains(&a.storage.trim().to_owned()) {
                    r.error(
                        "storage",
                        format!(
                            "storage {:?} on node {node} does not hold VM disk images; choose one of: {}",
                            a.storage,
                            usable.join(", ")
                        ),
                    );
                }
            }
            Err(e) => r.error(
                "storage",
                format!("cannot list the storages of {node}: {}", error_chain(&e)),
            ),
        }
        match client.node_interfaces(node).await {
            Ok(list) => {
                let bridges: Vec<String> = list
                    .iter()
                    .filter(|i| i.is_bridge())
                    .map(|i| i.iface.clone())
                    .collect();
                r.found.insert("bridges".into(), json!(bridges));
                if !bridges.contains(&a.bridge.trim().to_owned()) {
                    r.error(
                        "bridge",
                        format!(
                            "node {node} has no bridge {:?}; choose one of: {}",
                            a.bridge,
                            bridges.join(", ")
                        ),
                    );
                }
                // The host's own networks: a pool inside one would hand out
                // addresses the LAN's DHCP or other hosts also use.
                if let Some(pool) = cidr {
                    for i in &list {
                        let Some(lan) = i.cidr.as_deref().and_then(|c| c.parse::<Ipv4Cidr>().ok())
                        else {
                            continue;
                        };
                        if overlaps(&pool, &lan) {
                            r.warnings.push(format!(
                                "the IPv4 pool {pool} overlaps {}'s network {lan} on {node}: VMs would take addresses on the host's LAN; make sure no other machine or DHCP server uses them",
                                i.iface
                            ));
                        }
                    }
                }
            }
            Err(e) => r.error(
                "bridge",
                format!("cannot list the network of {node}: {}", error_chain(&e)),
            ),
        }
    }
    match client.cluster_vms().await {
        Ok(vms) => {
            if !vms.iter().any(|v| v.vmid == a.template_vmid && v.template) {
                r.warnings.push(format!(
                    "there is no template with VMID {} yet; VMs cannot be created until it exists (bhctl template build / install)",
                    a.template_vmid
                ));
            }
            if let Some(v) = vms
                .iter()
                .find(|v| (a.vmid_first..=a.vmid_last).contains(&v.vmid))
            {
                r.warnings.push(format!(
                    "VMID {} is already used in the range {}–{}; BlockHost skips used ids",
                    v.vmid, a.vmid_first, a.vmid_last
                ));
            }
        }
        Err(e) => r.warnings.push(format!(
            "cannot list the cluster's VMs: {}",
            error_chain(&e)
        )),
    }
}

fn overlaps(a: &Ipv4Cidr, b: &Ipv4Cidr) -> bool {
    a.contains(b.network()) || b.contains(a.network())
}

/// The chain's id as the first endpoint that answers reports it.
async fn chain_id_of(rpc: &RpcClient) -> Result<u64, String> {
    let v = rpc
        .call("eth_chainId", json!([]))
        .await
        .map_err(|e| error_chain(&e))?;
    quantity("eth_chainId", &v).map_err(|e| error_chain(&e))
}

/// `eth_call` returning decoded data, or `None` when it fails or does not decode.
async fn view<C: SolCall>(wallet: &ServerWallet, to: &WalletAddress, call: C) -> Option<C::Return> {
    let out = wallet.call(*to.as_bytes(), &call.abi_encode()).await.ok()?;
    C::abi_decode_returns(&out).ok()
}

async fn has_code(wallet: &ServerWallet, a: &WalletAddress) -> bool {
    wallet
        .rpc()
        .call("eth_getCode", json!([a.to_lower_hex(), "latest"]))
        .await
        .ok()
        .and_then(|v| v.as_str().map(|s| s.len() > 2))
        .unwrap_or(false)
}

/// An address as alloy's type.
pub fn alloy(a: &WalletAddress) -> Address {
    Address::from(*a.as_bytes())
}

/// Verifies existing contracts: code present, owned by the server key, and they
/// answer BlockHost's ABI.
pub async fn verify_contracts(
    wallet: &ServerWallet,
    subs: &WalletAddress,
    nft: &WalletAddress,
) -> Vec<(&'static str, String)> {
    let mut problems = Vec::new();
    let me = alloy(&wallet.address());
    for (field, addr, what) in [
        ("subscriptionsContract", subs, "BlockhostSubscriptions"),
        ("nftContract", nft, "AccessCredentialNFT"),
    ] {
        if !has_code(wallet, addr).await {
            problems.push((
                field,
                format!("there is no contract at {addr} on this chain"),
            ));
            continue;
        }
        let owner = if field == "nftContract" {
            view(wallet, addr, AccessCredentialNFT::ownerCall {}).await
        } else {
            view(wallet, addr, BlockhostSubscriptions::ownerCall {}).await
        };
        match owner {
            None => problems.push((field, format!("the contract at {addr} does not answer owner(); is it {what}?"))),
            Some(o) if o != me => problems.push((
                field,
                format!(
                    "{what} at {addr} is owned by {o}, not by this host's server key {}; transfer its ownership (transferOwnership) to the server key first",
                    wallet.address()
                ),
            )),
            Some(_) => {}
        }
    }
    if view(
        wallet,
        subs,
        BlockhostSubscriptions::getTotalPlanCountCall {},
    )
    .await
    .is_none()
    {
        problems.push((
            "subscriptionsContract",
            "the contract does not answer getTotalPlanCount(); it is not BlockhostSubscriptions"
                .into(),
        ));
    }
    match view(wallet, nft, AccessCredentialNFT::nameCall {}).await {
        Some(n) if n == "BlockhostAccess" => {}
        _ => problems.push((
            "nftContract",
            "the contract's name() is not BlockhostAccess; it is not BlockHost's AccessCredentialNFT".into(),
        )),
    }
    problems
}

/// Checks the chain answers; `key` is the server key (generated by then).
pub async fn chain(a: &ChainAnswers, key: &SecretKey, r: &mut Report) {
    let rpc = match RpcClient::new(a.rpc_urls.clone()) {
        Ok(c) => Arc::new(c),
        Err(e) => return r.error("rpcUrls", error_chain(&e)),
    };
    match chain_id_of(&rpc).await {
        Err(e) => return r.error("rpcUrls", format!("no endpoint answers eth_chainId: {e}")),
        Ok(id) if id != a.chain_id => {
            return r.error(
                "chainId",
                format!(
                    "the endpoint serves chain {id}, not {}; fix the chain id or the URL",
                    a.chain_id
                ),
            );
        }
        Ok(_) => {}
    }
    let wallet = ServerWallet::new(key, a.chain_id, rpc);
    r.found.insert(
        "serverAddress".into(),
        json!(wallet.address().to_checksum()),
    );
    let balance = wallet.balance().await.unwrap_or_default();
    r.found
        .insert("balanceWei".into(), json!(balance.to_string()));
    if let Ok(fees) = wallet.fees().await {
        let needed = U256::from(SETUP_GAS) * U256::from(fees.max_fee);
        r.found
            .insert("neededWei".into(), json!(needed.to_string()));
        if balance < needed {
            r.warnings.push(format!(
                "the server wallet {} holds {} wei; deploying and minting may cost up to {} wei at today's fees: send it funds before finalizing",
                wallet.address(),
                balance,
                needed
            ));
        }
    }
    if a.contracts == "reuse"
        && let (Ok(subs), Ok(nft)) = (
            a.subscriptions_contract.trim().parse::<WalletAddress>(),
            a.nft_contract.trim().parse::<WalletAddress>(),
        )
    {
        for (f, m) in verify_contracts(&wallet, &subs, &nft).await {
            r.error(f, m);
        }
    }
    if a.stablecoin_mode == "existing"
        && let Ok(token) = a.stablecoin.trim().parse::<WalletAddress>()
    {
        if !has_code(&wallet, &token).await {
            r.error(
                "stablecoin",
                format!("there is no contract at {token} on chain {}", a.chain_id),
            );
        } else {
            match view(&wallet, &token, MockERC20::decimalsCall {}).await {
                Some(d) => {
                    r.found.insert("stablecoinDecimals".into(), json!(d));
                }
                None => r.error(
                    "stablecoin",
                    "the contract does not answer decimals(); give an ERC-20 token",
                ),
            }
        }
    }
}
