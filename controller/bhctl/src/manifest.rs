//! Manifests: the YAML (or JSON) files `bhctl apply -f` reads.
//!
//! A path may be a file, a directory (its `*.yaml`, `*.yml` and `*.json` files in
//! name order; `-R` descends) or `-` for standard input. Every document is checked
//! (header, then the full typed parse with its validation) and *all* problems are
//! reported, each with file, line, column and field path, before anything is sent:
//! an apply is all or nothing.

use std::io::Read;
use std::path::{Path, PathBuf};

use blockhost_crd::resource::{AnyObject, TypeMeta};

use blockhost_api::yaml::{self, Doc, YamlError};

/// A parsed object and where it came from.
#[derive(Debug, Clone)]
pub struct Manifest {
    /// File name as the user gave it.
    pub file: String,
    /// 1-based line the document starts on.
    pub line: u64,
    /// The object.
    pub object: AnyObject,
}

/// Expands the paths into files, in a stable order.
pub fn collect_files(paths: &[PathBuf], recursive: bool) -> Result<Vec<PathBuf>, YamlError> {
    let mut out = Vec::new();
    for p in paths {
        if p.as_os_str() == "-" {
            out.push(p.clone());
            continue;
        }
        let meta = std::fs::metadata(p).map_err(|e| io_error(p, &e))?;
        if meta.is_dir() {
            walk(p, recursive, &mut out)?;
        } else {
            out.push(p.clone());
        }
    }
    Ok(out)
}

fn walk(dir: &Path, recursive: bool, out: &mut Vec<PathBuf>) -> Result<(), YamlError> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| io_error(dir, &e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    for e in entries {
        if e.is_dir() {
            if recursive {
                walk(&e, recursive, out)?;
            }
        } else if matches!(
            e.extension().and_then(|x| x.to_str()),
            Some("yaml" | "yml" | "json")
        ) {
            out.push(e);
        }
    }
    Ok(())
}

fn io_error(p: &Path, e: &std::io::Error) -> YamlError {
    let hint = match e.kind() {
        std::io::ErrorKind::NotFound => " (no such file or directory)",
        std::io::ErrorKind::PermissionDenied => " (permission denied)",
        _ => "",
    };
    YamlError {
        file: p.display().to_string(),
        line: None,
        column: None,
        path: None,
        message: format!("cannot read: {e}{hint}"),
    }
}

/// Reads a file (or standard input for `-`), bounded in size.
pub fn read_source(p: &Path) -> Result<String, YamlError> {
    let mut buf = Vec::new();
    let limit = yaml::MAX_YAML_BYTES as u64 + 1;
    let read = if p.as_os_str() == "-" {
        std::io::stdin().lock().take(limit).read_to_end(&mut buf)
    } else {
        std::fs::File::open(p).and_then(|f| f.take(limit).read_to_end(&mut buf))
    };
    read.map_err(|e| io_error(p, &e))?;
    let name = display_name(p);
    if buf.len() > yaml::MAX_YAML_BYTES {
        return Err(YamlError {
            file: name,
            line: None,
            column: None,
            path: None,
            message: format!("larger than {} MiB", yaml::MAX_YAML_BYTES >> 20),
        });
    }
    String::from_utf8(buf).map_err(|e| YamlError {
        file: name,
        line: None,
        column: None,
        path: None,
        message: format!("not UTF-8 text: {e}"),
    })
}

fn display_name(p: &Path) -> String {
    if p.as_os_str() == "-" {
        "<stdin>".into()
    } else {
        p.display().to_string()
    }
}

/// Parses every document of one file's text; returns the objects or every problem.
pub fn parse(file: &str, text: &str) -> Result<Vec<Manifest>, Vec<YamlError>> {
    let mut ok = Vec::new();
    let mut errors = Vec::new();
    for doc in yaml::split_documents(text) {
        match parse_doc(file, &doc) {
            Ok(object) => ok.push(Manifest {
                file: file.into(),
                line: doc.first_line,
                object,
            }),
            Err(e) => errors.push(e),
        }
    }
    if errors.is_empty() {
        Ok(ok)
    } else {
        Err(errors)
    }
}

fn parse_doc(file: &str, doc: &Doc) -> Result<AnyObject, YamlError> {
    let header: TypeMeta = yaml::from_doc(file, doc)?;
    let kind = header.check().map_err(|e| {
        let line = line_of_key(
            doc,
            if header.api_version.is_some() {
                "kind"
            } else {
                "apiVersion"
            },
        );
        YamlError {
            file: file.into(),
            line: Some(line.unwrap_or(doc.first_line)),
            column: None,
            path: None,
            message: e.to_string(),
        }
    })?;
    let mut path: Option<String> = None;
    let result = serde_saphyr::with_deserializer_from_str(&doc.text, |de| {
        AnyObject::deserialize_kind(kind, de).map_err(|e| {
            let p = e.path().to_string();
            if p != "." && p != "?" {
                path = Some(p);
            }
            e.into_inner()
        })
    });
    result.map_err(|e| yaml::to_yaml_error(file, doc, &e, path))
}

/// The line of a top-level key in a document, for header errors.
fn line_of_key(doc: &Doc, key: &str) -> Option<u64> {
    doc.text
        .lines()
        .position(|l| l.starts_with(key) && l[key.len()..].trim_start().starts_with(':'))
        .map(|i| i as u64 + 1)
}

/// Loads every path; returns all objects, or all problems (nothing partial).
pub fn load(paths: &[PathBuf], recursive: bool) -> Result<Vec<Manifest>, Vec<YamlError>> {
    let files = collect_files(paths, recursive).map_err(|e| vec![e])?;
    let mut all = Vec::new();
    let mut errors = Vec::new();
    for f in files {
        let name = display_name(&f);
        match read_source(&f) {
            Ok(text) => match parse(&name, &text) {
                Ok(mut m) => all.append(&mut m),
                Err(mut e) => errors.append(&mut e),
            },
            Err(e) => errors.push(e),
        }
    }
    // The same object twice would make the result depend on document order.
    let mut seen: std::collections::HashMap<(&str, String), (String, u64)> =
        std::collections::HashMap::new();
    for m in &all {
        let key = (m.object.kind(), m.object.meta().name.to_string());
        if let Some((f, l)) = seen.get(&key) {
            errors.push(YamlError {
                file: m.file.clone(),
                line: Some(m.line),
                column: None,
                path: Some("metadata.name".into()),
                message: format!(
                    "{}/{} is already defined at {f}:{l}",
                    key.0.to_lowercase(),
                    key.1
                ),
            });
        } else {
            seen.insert(key, (m.file.clone(), m.line));
        }
    }
    if errors.is_empty() {
        Ok(all)
    } else {
        Err(errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VM: &str = "apiVersion: blockhost.io/v1alpha1
kind: VirtualMachine
metadata:
  name: web-1
spec:
  owner: \"0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266\"
  resources:
    cores: 2
    memoryMiB: 2048
    diskGiB: 20
";

    #[test]
    fn parses_a_vm() {
        let m = parse("vm.yaml", VM).unwrap();
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].object.meta().name.as_str(), "web-1");
    }

    #[test]
    fn unknown_field_is_located() {
        let text = VM.replace("    diskGiB: 20\n", "    diskGiB: 20\n    gpu: 1\n");
        let errs = parse("vm.yaml", &text).unwrap_err();
        assert_eq!(errs.len(), 1);
        let e = &errs[0];
        assert_eq!(e.line, Some(11), "{e}");
        assert!(e.message.contains("gpu"), "{e}");
        assert_eq!(e.path.as_deref(), Some("spec.resources.gpu"), "{e}");
    }

    #[test]
    fn bad_checksum_is_located_with_path() {
        let text = VM.replace(
            "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266",
            "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92267",
        );
        let e = &parse("vm.yaml", &text).unwrap_err()[0];
        assert_eq!(e.line, Some(6), "{e}");
        assert_eq!(e.path.as_deref(), Some("spec.owner"), "{e}");
        assert!(e.message.contains("checksum"), "{e}");
    }

    #[test]
    fn out_of_range_and_bad_kind_and_bad_yaml() {
        let text = VM.replace("cores: 2", "cores: 999");
        let e = &parse("vm.yaml", &text).unwrap_err()[0];
        assert_eq!(
            (e.line, e.path.as_deref()),
            (Some(8), Some("spec.resources.cores")),
            "{e}"
        );
        let text = VM.replace("kind: VirtualMachine", "kind: Pod");
        let e = &parse("vm.yaml", &text).unwrap_err()[0];
        assert_eq!(e.line, Some(2), "{e}");
        assert!(e.message.contains("unknown kind"), "{e}");
        let e = &parse("vm.yaml", "a: [1, 2\nb: 3\n").unwrap_err()[0];
        assert!(e.line.is_some(), "{e}");
    }

    #[test]
    fn every_bad_document_is_reported() {
        let text = format!(
            "{VM}---\n{}---\n{}",
            VM.replace("web-1", "Web_1"),
            VM.replace("web-1", "web-3")
        );
        let errs = parse("vm.yaml", &text).unwrap_err();
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].path.as_deref(), Some("metadata.name"));
        assert_eq!(errs[0].line, Some(15));
    }
}
