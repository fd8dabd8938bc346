//! The `Subscription` kind: an on-chain subscription of `BlockhostSubscriptions`,
//! mirrored by the chain watcher.
//!
//! The spec is what the chain says (ids, subscriber, expiry, cancellation) and the
//! status is what the watcher made of it (a VM, or why not). Only the watcher
//! writes these objects: `bhctl apply` and `bhctl delete` refuse them, because an
//! operator edit would be silently overwritten by the next event or undone by a
//! reorg, and the chain is the only authority on what was bought.
//!
//! The buyer's `userEncrypted` payload is deliberately absent: its plaintext is the
//! key to the NFT payload, and even the ciphertext has no use outside the watcher.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::WalletAddress;
use crate::bounded::Name;
use crate::meta::{Condition, ObjectMeta};
use crate::resource::impl_resource;

/// A subscription bought on chain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Subscription {
    /// Always `blockhost.io/v1alpha1`.
    #[schemars(extend("const" = "blockhost.io/v1alpha1"))]
    pub api_version: String,
    /// Always `Subscription`.
    #[schemars(extend("const" = "Subscription"))]
    pub kind: String,
    /// Name (`blockhost-<id>`, the same as its VM), labels and store-managed fields.
    pub metadata: ObjectMeta,
    /// What the chain says.
    pub spec: SubscriptionSpec,
    /// What the watcher made of it.
    #[serde(default)]
    pub status: SubscriptionStatus,
}

impl_resource!(
    Subscription,
    SubscriptionSpec,
    SubscriptionStatus,
    "Subscription",
    "subscriptions",
    ["subscription", "sub", "subs"]
);

impl Subscription {
    /// A new object with empty status.
    pub fn new(name: Name, spec: SubscriptionSpec) -> Self {
        Self {
            api_version: crate::meta::API_VERSION.into(),
            kind: "Subscription".into(),
            metadata: ObjectMeta::named(name),
            spec,
            status: SubscriptionStatus::default(),
        }
    }
}

/// The VM name of a subscription: `blockhost-` and the id zero-padded to three
/// digits (`blockhost-007`, `blockhost-1234`), as the original named them.
// A fixed prefix and at most 20 digits is always a valid DNS label.
#[allow(clippy::expect_used)]
pub fn vm_name_for(subscription_id: u64) -> Name {
    Name::new(format!("blockhost-{subscription_id:03}")).expect("blockhost-<digits> is a DNS label")
}

/// What the chain says about a subscription.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SubscriptionSpec {
    /// The subscription id in `BlockhostSubscriptions` (ids start at 1).
    pub subscription_id: u64,
    /// The on-chain plan id it was bought under.
    pub plan_id: u64,
    /// The buying wallet.
    pub subscriber: WalletAddress,
    /// When it ends (absolute; extensions replace it).
    pub expires_at: DateTime<Utc>,
    /// Whether the contract owner cancelled it.
    #[serde(default)]
    pub cancelled: bool,
    /// The VM it maps to.
    pub vm_name: Name,
    /// Block number of the purchase.
    pub block_number: u64,
    /// Transaction hash of the purchase (`0x…`).
    pub transaction_hash: String,
}

/// Where a subscription stands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum SubscriptionState {
    /// Not looked at yet.
    #[default]
    Pending,
    /// Its VM spec is written.
    Active,
    /// The buyer's payload cannot be used; no VM (see the `PayloadValid` condition).
    PayloadInvalid,
    /// No `Plan` has its `chainPlanId`; the VM is written when one appears.
    PlanUnknown,
    /// Cancelled on chain; its VM is deleted.
    Cancelled,
}

/// What the watcher made of a subscription.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SubscriptionStatus {
    /// Where it stands.
    #[serde(default)]
    pub state: SubscriptionState,
    /// The VM written for it, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm: Option<Name>,
    /// The access NFT minted for it, once minted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nft_token_id: Option<u64>,
    /// `PayloadValid`, `PlanKnown`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_names_pad_to_three_digits() {
        assert_eq!(vm_name_for(7).as_str(), "blockhost-007");
        assert_eq!(vm_name_for(42).as_str(), "blockhost-042");
        assert_eq!(vm_name_for(1234).as_str(), "blockhost-1234");
        assert_eq!(
            vm_name_for(u64::MAX).as_str(),
            "blockhost-18446744073709551615"
        );
    }
}
