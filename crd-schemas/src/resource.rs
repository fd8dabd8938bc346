//! The [`Resource`] trait every stored kind implements, and [`AnyObject`], the
//! tagged union used where the kind is only known at run time (apply, the API).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::meta::{API_VERSION, ObjectMeta};
use crate::{Plan, Subscription, VirtualMachine};

/// A stored, declarative kind.
pub trait Resource:
    Clone + std::fmt::Debug + Serialize + DeserializeOwned + JsonSchema + Send + Sync + 'static
{
    /// `kind` as written in manifests, e.g. `VirtualMachine`.
    const KIND: &'static str;
    /// Plural used in API paths and `bhctl get`, e.g. `virtualmachines`.
    const PLURAL: &'static str;
    /// Other names `bhctl` accepts, e.g. `vm`, `vms`.
    const ALIASES: &'static [&'static str];
    /// The desired state.
    type Spec: Clone + std::fmt::Debug + PartialEq + Serialize + DeserializeOwned + Send + Sync;
    /// The observed state.
    type Status: Clone
        + std::fmt::Debug
        + Default
        + PartialEq
        + Serialize
        + DeserializeOwned
        + Send
        + Sync;

    /// Metadata.
    fn meta(&self) -> &ObjectMeta;
    /// Mutable metadata (the store's business).
    fn meta_mut(&mut self) -> &mut ObjectMeta;
    /// Desired state.
    fn spec(&self) -> &Self::Spec;
    /// Observed state.
    fn status(&self) -> &Self::Status;
    /// Mutable observed state.
    fn status_mut(&mut self) -> &mut Self::Status;
}

/// Implements [`Resource`] for a struct with `metadata`, `spec` and `status` fields.
macro_rules! impl_resource {
    ($ty:ty, $spec:ty, $status:ty, $kind:literal, $plural:literal, [$($alias:literal),*]) => {
        impl $crate::resource::Resource for $ty {
            const KIND: &'static str = $kind;
            const PLURAL: &'static str = $plural;
            const ALIASES: &'static [&'static str] = &[$($alias),*];
            type Spec = $spec;
            type Status = $status;
            fn meta(&self) -> &$crate::meta::ObjectMeta { &self.metadata }
            fn meta_mut(&mut self) -> &mut $crate::meta::ObjectMeta { &mut self.metadata }
            fn spec(&self) -> &Self::Spec { &self.spec }
            fn status(&self) -> &Self::Status { &self.status }
            fn status_mut(&mut self) -> &mut Self::Status { &mut self.status }
        }
    };
}
pub(crate) use impl_resource;

/// The `apiVersion` and `kind` of a document, read before choosing its type.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TypeMeta {
    /// Must be [`API_VERSION`].
    #[serde(default)]
    pub api_version: Option<String>,
    /// One of [`KINDS`].
    #[serde(default)]
    pub kind: Option<String>,
}

/// Every kind, as `(kind, plural, aliases)`.
pub const KINDS: &[(&str, &str, &[&str])] = &[
    (
        VirtualMachine::KIND,
        VirtualMachine::PLURAL,
        VirtualMachine::ALIASES,
    ),
    (Plan::KIND, Plan::PLURAL, Plan::ALIASES),
    (
        Subscription::KIND,
        Subscription::PLURAL,
        Subscription::ALIASES,
    ),
];

/// The kind under which events about the host itself are logged (admin
/// commands, firewall), with the name [`HOST_ADMIN`]: not an object kind, only
/// an event log (`GET …/events?kind=Host&name=admin`).
pub const HOST_KIND: &str = "Host";
/// The name of the host's admin-command event log.
pub const HOST_ADMIN: &str = "admin";

/// Resolves what a user typed (`vm`, `vms`, `virtualmachine`, `VirtualMachine`, …) to a kind.
pub fn kind_for(word: &str) -> Option<&'static str> {
    let w = word.to_ascii_lowercase();
    KINDS
        .iter()
        .find(|(kind, plural, aliases)| {
            kind.to_ascii_lowercase() == w || *plural == w || aliases.contains(&w.as_str())
        })
        .map(|(kind, _, _)| *kind)
}

/// Why a document's type header is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TypeMetaError {
    /// No `apiVersion`.
    #[error("missing apiVersion (expected {API_VERSION:?})")]
    MissingApiVersion,
    /// Another `apiVersion`.
    #[error("unsupported apiVersion {0:?} (expected {API_VERSION:?})")]
    WrongApiVersion(String),
    /// No `kind`.
    #[error("missing kind (one of: VirtualMachine, Plan, Subscription)")]
    MissingKind,
    /// A kind we do not know.
    #[error("unknown kind {0:?} (one of: VirtualMachine, Plan, Subscription)")]
    UnknownKind(String),
}

impl TypeMeta {
    /// Checks the header and returns the canonical kind name.
    pub fn check(&self) -> Result<&'static str, TypeMetaError> {
        match self.api_version.as_deref() {
            None => return Err(TypeMetaError::MissingApiVersion),
            Some(API_VERSION) => {}
            Some(other) => return Err(TypeMetaError::WrongApiVersion(other.to_string())),
        }
        let kind = self.kind.as_deref().ok_or(TypeMetaError::MissingKind)?;
        KINDS
            .iter()
            .find(|(k, _, _)| *k == kind)
            .map(|(k, _, _)| *k)
            .ok_or_else(|| TypeMetaError::UnknownKind(kind.to_string()))
    }
}

/// An object of any kind.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum AnyObject {
    /// A virtual machine.
    VirtualMachine(Box<VirtualMachine>),
    /// A plan.
    Plan(Box<Plan>),
    /// A subscription (written by the chain watcher only).
    Subscription(Box<Subscription>),
}

impl AnyObject {
    /// The kind name.
    pub fn kind(&self) -> &'static str {
        match self {
            AnyObject::VirtualMachine(_) => VirtualMachine::KIND,
            AnyObject::Plan(_) => Plan::KIND,
            AnyObject::Subscription(_) => Subscription::KIND,
        }
    }

    /// The metadata.
    pub fn meta(&self) -> &ObjectMeta {
        match self {
            AnyObject::VirtualMachine(o) => o.meta(),
            AnyObject::Plan(o) => o.meta(),
            AnyObject::Subscription(o) => o.meta(),
        }
    }

    /// Deserializes a document whose kind was checked with [`TypeMeta::check`],
    /// reporting the path of the offending field.
    pub fn deserialize_kind<'de, D: serde::Deserializer<'de>>(
        kind: &str,
        de: D,
    ) -> Result<Self, serde_path_to_error::Error<D::Error>> {
        match kind {
            "Plan" => serde_path_to_error::deserialize(de).map(|p| AnyObject::Plan(Box::new(p))),
            "Subscription" => {
                serde_path_to_error::deserialize(de).map(|s| AnyObject::Subscription(Box::new(s)))
            }
            _ => {
                serde_path_to_error::deserialize(de).map(|v| AnyObject::VirtualMachine(Box::new(v)))
            }
        }
    }

    /// Parses one object's JSON text (from an API request body), checking the
    /// header first. Typed straight from the text: no intermediate tree.
    pub fn from_json_str(text: &str) -> Result<Self, String> {
        let tm: TypeMeta = serde_json::from_str(text).map_err(|e| e.to_string())?;
        let kind = tm.check().map_err(|e| e.to_string())?;
        let mut de = serde_json::Deserializer::from_str(text);
        Self::deserialize_kind(kind, &mut de).map_err(|e| {
            let path = e.path().to_string();
            format!("{path}: {}", e.into_inner())
        })
    }

    /// Parses a JSON value (an API request body), checking the header first.
    pub fn from_json(value: serde_json::Value) -> Result<Self, String> {
        let tm: TypeMeta = serde_json::from_value(value.clone()).map_err(|e| e.to_string())?;
        let kind = tm.check().map_err(|e| e.to_string())?;
        Self::deserialize_kind(kind, value).map_err(|e| {
            let path = e.path().to_string();
            format!("{path}: {}", e.into_inner())
        })
    }
}
