//! What can stop a chain client from being set up from the configuration, for
//! the daemon's watcher and minter and for `bhctl chain …` alike.

use crate::key::KeyError;

/// Why the chain client cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The server key file cannot be used.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// The HTTP client for the RPC endpoints could not be built.
    #[error("cannot set up the RPC client")]
    Http(#[source] reqwest::Error),
    /// The configuration was written before deploying: no contracts.
    #[error(transparent)]
    NotDeployed(#[from] blockhost_crd::config::ContractsNotSet),
}

/// The RPC client over the configured endpoints (failover in order), using
/// only those that serve `chain_id` when it is known (`chain.chainId`; `bhctl
/// nft` on a user's machine may have only a URL).
pub fn rpc_client(
    urls: &[String],
    chain_id: Option<u64>,
) -> Result<crate::rpc::RpcClient, SetupError> {
    let urls = urls.to_vec();
    match chain_id {
        Some(id) => crate::rpc::RpcClient::for_chain(urls, id),
        None => crate::rpc::RpcClient::new(urls),
    }
    .map_err(SetupError::Http)
}
