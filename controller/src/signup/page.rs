//! The signup page's files: the hand-written HTML, CSS and JavaScript and the
//! bundled crypto libraries from `signup/static/` (compiled into `blockhostd`),
//! and `config.json`, generated from the operator's configuration.
//!
//! The page reads everything specific to this server from `config.json` at
//! start-up (chain id, browser RPC URL, contract addresses, server public key,
//! public secret), so the static files are the same for every operator and no
//! inline script is needed (the CSP forbids them).

use blockhost_crd::config::{ChainConfig, Contracts, SignupConfig};
use k256::PublicKey;
use k256::elliptic_curve::sec1::ToEncodedPoint;
use serde::Serialize;

/// `index.html`.
pub const INDEX_HTML: &str = include_str!("../../../signup/static/index.html");
/// `app.js`: the page's logic.
pub const APP_JS: &str = include_str!("../../../signup/static/app.js");
/// `style.css`.
pub const STYLE_CSS: &str = include_str!("../../../signup/static/style.css");
/// `vendor.js`: eciesjs and keccak256 bundled by `signup/build.sh` (pinned in
/// package-lock.json; `signup/build.sh --check` proves it fresh).
pub const VENDOR_JS: &str = include_str!("../../../signup/static/vendor.js");

/// What the page needs to know about this server (`GET /config.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PageConfig {
    /// EIP-155 chain id.
    pub chain_id: u64,
    /// The same, as the `0x…` hex wallets expect in `wallet_switchEthereumChain`.
    pub chain_id_hex: String,
    /// JSON-RPC URL the page reads the chain from.
    pub rpc_url: String,
    /// `BlockhostSubscriptions`, `0x…` lower case.
    pub subscriptions_contract: String,
    /// `AccessCredentialNFT`.
    pub nft_contract: String,
    /// The server's secp256k1 public key, uncompressed, hex without `0x` (what
    /// eciesjs `encrypt(pubHex, data)` takes).
    pub server_public_key: String,
    /// The text buyers sign.
    pub public_secret: String,
}

impl PageConfig {
    /// Builds the page's configuration from the daemon's.
    pub fn new(
        chain: &ChainConfig,
        contracts: Contracts,
        signup: &SignupConfig,
        server: &PublicKey,
    ) -> Self {
        Self {
            chain_id: chain.chain_id,
            chain_id_hex: format!("0x{:x}", chain.chain_id),
            rpc_url: signup.browser_rpc_url(chain).to_owned(),
            subscriptions_contract: contracts.subscriptions.to_lower_hex(),
            nft_contract: contracts.nft.to_lower_hex(),
            server_public_key: hex::encode(server.to_encoded_point(false).as_bytes()),
            public_secret: chain.public_secret.clone(),
        }
    }

    /// The Content-Security-Policy of every answer: scripts, styles and images
    /// from this origin only, connections to this origin and the RPC URL only.
    pub fn content_security_policy(&self) -> String {
        format!(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
             connect-src 'self' {}; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
            self.rpc_url
        )
    }
}
