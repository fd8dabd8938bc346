//! Fails when the committed JSON Schemas differ from what the types generate.

use std::path::Path;

#[test]
fn committed_schemas_are_fresh() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas");
    let mut stale = Vec::new();
    for (name, text) in blockhost_crd::schema::all() {
        match std::fs::read_to_string(dir.join(name)) {
            Ok(committed) if committed == text => {}
            _ => stale.push(name),
        }
    }
    assert!(
        stale.is_empty(),
        "stale schema files {stale:?}: run `cargo run -p blockhost-crd --bin gen-schemas` and commit crd-schemas/schemas/"
    );
}
