//! Writes the JSON Schemas of the declarative types into `crd-schemas/schemas/`.
//!
//! Usage: `cargo run -p blockhost-crd --bin gen-schemas [OUT_DIR]`.

use std::path::PathBuf;

fn main() -> std::process::ExitCode {
    let out = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("schemas"));
    if let Err(e) = std::fs::create_dir_all(&out) {
        eprintln!("gen-schemas: cannot create {}: {e}", out.display());
        return std::process::ExitCode::FAILURE;
    }
    for (name, text) in blockhost_crd::schema::all() {
        let path = out.join(name);
        if let Err(e) = std::fs::write(&path, text) {
            eprintln!("gen-schemas: cannot write {}: {e}", path.display());
            return std::process::ExitCode::FAILURE;
        }
        eprintln!("wrote {}", path.display());
    }
    std::process::ExitCode::SUCCESS
}
