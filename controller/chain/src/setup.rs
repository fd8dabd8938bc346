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

/// The RPC client over the configured endpoints (failover in order).
pub fn rpc_client(urls: &[String]) -> Result<crate::rpc::RpcClient, SetupError> {
    crate::rpc::RpcClient::new(urls.to_vec()).map_err(SetupError::Http)
}
