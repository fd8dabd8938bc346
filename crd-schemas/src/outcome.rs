//! What a write did to each object: returned by the store and carried as they
//! are by the API (`bhctl apply` and `delete` print them).

use serde::{Deserialize, Serialize};

/// What an apply did to one object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ApplyOutcome {
    /// It did not exist.
    Created,
    /// Its spec or labels changed.
    Configured,
    /// Nothing changed; nothing was written.
    Unchanged,
}

/// One line of an apply's result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApplyResult {
    /// Kind of the object.
    pub kind: String,
    /// Its name.
    pub name: String,
    /// What happened.
    pub outcome: ApplyOutcome,
    /// Its generation after the apply.
    pub generation: u64,
}

/// What a delete did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeleteOutcome {
    /// The object is gone.
    Deleted,
    /// Marked for deletion; controllers clean up first (finalizers remain).
    Terminating,
}
