//! Kubernetes-shaped object metadata, conditions and events shared by every kind.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::Name;

/// The API group and version of every BlockHost object.
pub const API_VERSION: &str = "blockhost.io/v1alpha1";

/// Metadata of a stored object. `name` and `labels` come from the user; every other
/// field is owned by the store and ignored when applying.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ObjectMeta {
    /// Unique name within the kind.
    pub name: Name,
    /// Free-form key/value labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Set by the store at creation; stable for the object's life.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    /// Bumped by the store on every change to `spec` (or labels), never by status writes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<u64>,
    /// Bumped by the store on every write of this object; a database-wide sequence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_version: Option<u64>,
    /// When the store first saw the object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creation_timestamp: Option<DateTime<Utc>>,
    /// Set when deletion was requested while finalizers remain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletion_timestamp: Option<DateTime<Utc>>,
    /// Controllers that must clean up before the object may be removed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub finalizers: Vec<String>,
}

impl ObjectMeta {
    /// Metadata with only a name, as a user writes it.
    pub fn named(name: Name) -> Self {
        Self {
            name,
            labels: BTreeMap::new(),
            uid: None,
            generation: None,
            resource_version: None,
            creation_timestamp: None,
            deletion_timestamp: None,
            finalizers: Vec::new(),
        }
    }
}

/// Truth value of a condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ConditionStatus {
    /// The condition holds.
    True,
    /// The condition does not hold.
    False,
    /// Not known yet.
    Unknown,
}

/// One observation about an object, as in Kubernetes' `metav1.Condition`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Condition {
    /// What is observed, e.g. `Ready`, `Provisioned`, `Lost`.
    #[serde(rename = "type")]
    pub type_: String,
    /// Whether it holds.
    pub status: ConditionStatus,
    /// One CamelCase word a script can match.
    pub reason: String,
    /// A sentence for people.
    pub message: String,
    /// When `status` last changed (not when the condition was last written).
    pub last_transition_time: DateTime<Utc>,
}

/// Sets a condition in a list, changing `lastTransitionTime` only when its status
/// changes. Returns whether anything changed.
pub fn set_condition(conditions: &mut Vec<Condition>, mut new: Condition) -> bool {
    match conditions.iter_mut().find(|c| c.type_ == new.type_) {
        Some(old) => {
            if old.status == new.status {
                new.last_transition_time = old.last_transition_time;
            }
            let changed = *old != new;
            *old = new;
            changed
        }
        None => {
            conditions.push(new);
            true
        }
    }
}

/// Severity of an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum EventType {
    /// Something expected happened.
    Normal,
    /// Something needs attention.
    Warning,
}

/// An entry of an object's append-only event log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Event {
    /// Database-wide sequence number; orders events.
    pub seq: u64,
    /// When it happened.
    pub time: DateTime<Utc>,
    /// Kind of the object it concerns.
    pub kind: String,
    /// Name of the object it concerns.
    pub name: String,
    /// Normal or Warning.
    #[serde(rename = "type")]
    pub type_: EventType,
    /// One CamelCase word.
    pub reason: String,
    /// A sentence for people.
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn cond(status: ConditionStatus, secs: i64, msg: &str) -> Condition {
        Condition {
            type_: "Ready".into(),
            status,
            reason: "R".into(),
            message: msg.into(),
            last_transition_time: Utc.timestamp_opt(secs, 0).single().unwrap(),
        }
    }

    #[test]
    fn transition_time_moves_only_when_status_changes() {
        let mut list = vec![];
        assert!(set_condition(
            &mut list,
            cond(ConditionStatus::False, 10, "a")
        ));
        assert!(set_condition(
            &mut list,
            cond(ConditionStatus::False, 20, "b")
        ));
        assert_eq!(list[0].last_transition_time.timestamp(), 10);
        assert_eq!(list[0].message, "b");
        assert!(!set_condition(
            &mut list,
            cond(ConditionStatus::False, 30, "b")
        ));
        assert!(set_condition(
            &mut list,
            cond(ConditionStatus::True, 40, "c")
        ));
        assert_eq!(list[0].last_transition_time.timestamp(), 40);
        assert_eq!(list.len(), 1);
    }
}
