//! The JSON Schemas of the declarative types, as committed under
//! `crd-schemas/schemas/`. The `gen-schemas` binary writes them; a test fails when
//! the committed files differ from what the types generate (run
//! `cargo run -p blockhost-crd --bin gen-schemas` to refresh them).

use crate::{AccessFile, DaemonConfig, Plan, Subscription, VirtualMachine};

/// `(file name, pretty JSON text)` of every schema.
pub fn all() -> Vec<(&'static str, String)> {
    fn render<T: schemars::JsonSchema>() -> String {
        let schema = schemars::schema_for!(T);
        // serde_json cannot fail on a schemars Schema (string keys only).
        let mut text = serde_json::to_string_pretty(&schema).unwrap_or_default();
        text.push('\n');
        text
    }
    vec![
        ("virtualmachine.json", render::<VirtualMachine>()),
        ("plan.json", render::<Plan>()),
        ("subscription.json", render::<Subscription>()),
        ("daemon-config.json", render::<DaemonConfig>()),
        ("access-file.json", render::<AccessFile>()),
    ]
}
