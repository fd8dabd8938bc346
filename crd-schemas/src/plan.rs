//! The `Plan` kind: what a subscription plan buys (resources and template), keyed to
//! an on-chain plan id.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::bounded::Vmid;
use crate::meta::ObjectMeta;
use crate::resource::impl_resource;
use crate::vm::Resources;

/// A hosting plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Plan {
    /// Always `blockhost.io/v1alpha1`.
    #[schemars(extend("const" = "blockhost.io/v1alpha1"))]
    pub api_version: String,
    /// Always `Plan`.
    #[schemars(extend("const" = "Plan"))]
    pub kind: String,
    /// Name, labels and store-managed fields.
    pub metadata: ObjectMeta,
    /// What the plan provides.
    pub spec: PlanSpec,
    /// Observed state.
    #[serde(default)]
    pub status: PlanStatus,
}

impl_resource!(Plan, PlanSpec, PlanStatus, "Plan", "plans", ["plan"]);

/// What a plan provides.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PlanSpec {
    /// The plan id in `BlockhostSubscriptions` (ids start at 1); absent for off-chain plans.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "positive"
    )]
    #[schemars(range(min = 1))]
    pub chain_plan_id: Option<u64>,
    /// Human-readable name, as on chain.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "display_name"
    )]
    #[schemars(length(min = 1, max = 64))]
    pub display_name: Option<String>,
    /// Resources of each VM bought under this plan.
    pub resources: Resources,
    /// VMID of the Proxmox template VMs are cloned from.
    pub template: Vmid,
    /// Price per day in US cents, as on chain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub price_per_day_usd_cents: Option<u64>,
    /// Whether the plan can be bought.
    #[serde(default = "yes")]
    pub active: bool,
}

fn yes() -> bool {
    true
}

fn positive<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    match u64::deserialize(d)? {
        0 => Err(serde::de::Error::custom("on-chain plan ids start at 1")),
        n => Ok(Some(n)),
    }
}

fn display_name<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let s = String::deserialize(d)?;
    if s.is_empty() || s.chars().count() > 64 || s.chars().any(char::is_control) {
        return Err(serde::de::Error::custom(
            "displayName must be 1 to 64 printable characters",
        ));
    }
    Ok(Some(s))
}

/// Observed state of a plan.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PlanStatus {
    /// The `metadata.generation` the status reflects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<u64>,
}
