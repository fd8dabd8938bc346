//! YAML parsing that reports where a problem is: file, line, column and field path.
//!
//! Used for manifests (`bhctl apply -f`) and the daemon's configuration file. A
//! stream is split into documents here (rather than by the parser) so each
//! document's kind can be read before choosing the type to parse it into, while
//! positions stay relative to the whole file.

use std::fmt;

use serde::de::DeserializeOwned;

/// Largest YAML file read, in bytes.
pub const MAX_YAML_BYTES: usize = 64 * 1024 * 1024;

/// A parse or validation problem at a known place.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct YamlError {
    /// File name as given by the user (`-` for standard input).
    pub file: String,
    /// 1-based line, when known.
    pub line: Option<u64>,
    /// 1-based column, when known.
    pub column: Option<u64>,
    /// Dotted field path, e.g. `spec.resources.cores`, when known.
    pub path: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for YamlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(l) = self.line {
            write!(f, ":{l}")?;
            if let Some(c) = self.column {
                write!(f, ":{c}")?;
            }
        }
        write!(f, ": ")?;
        if let Some(p) = &self.path {
            write!(f, "{p}: ")?;
        }
        f.write_str(&self.message)
    }
}

/// One document of a YAML stream, with where it starts in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Doc {
    /// 1-based line of its first content line in the file.
    pub first_line: u64,
    /// Lines of the file before `text` begins; added to positions the parser reports.
    pub line_offset: u64,
    /// Its text only (not padded: padding made a long stream quadratic to parse).
    pub text: String,
}

/// Splits a YAML stream at `---` / `...` lines.
pub fn split_documents(text: &str) -> Vec<Doc> {
    let mut docs = Vec::new();
    let mut cur = String::new();
    let mut line_offset = 0u64;
    let mut first_line = 1u64;
    let mut has_content = false;
    for (i, line) in text.split_inclusive('\n').enumerate() {
        let lineno = i as u64 + 1;
        let is_marker =
            line.starts_with("---") && line[3..].chars().next().is_none_or(char::is_whitespace);
        let is_end = line.starts_with("...") && line[3..].trim().is_empty();
        if is_marker || is_end {
            if has_content {
                docs.push(Doc {
                    first_line,
                    line_offset,
                    text: std::mem::take(&mut cur),
                });
            }
            cur.clear();
            has_content = false;
            line_offset = lineno;
            // Content after `--- ` on the marker line itself (rare): keep its columns.
            if is_marker && !line[3..].trim().is_empty() {
                cur.push_str("   ");
                cur.push_str(&line[3..]);
                has_content = true;
                first_line = lineno;
                line_offset = lineno - 1;
            }
            continue;
        }
        let trimmed = line.trim();
        if !has_content
            && !trimmed.is_empty()
            && !trimmed.starts_with('#')
            && !trimmed.starts_with('%')
        {
            has_content = true;
            first_line = lineno;
        }
        if trimmed.starts_with('%') {
            cur.push('\n');
        } else {
            cur.push_str(line);
        }
    }
    if has_content {
        docs.push(Doc {
            first_line,
            line_offset,
            text: cur,
        });
    }
    docs
}

/// Parses one document into `T`, reporting position and field path on failure.
pub fn from_doc<T: DeserializeOwned>(file: &str, doc: &Doc) -> Result<T, YamlError> {
    let mut path: Option<String> = None;
    let result = serde_saphyr::with_deserializer_from_str(&doc.text, |de| {
        serde_path_to_error::deserialize(de).map_err(|e| {
            let p = e.path().to_string();
            if p != "." && p != "?" && !p.is_empty() {
                path = Some(p);
            }
            e.into_inner()
        })
    });
    result.map_err(|e| to_yaml_error(file, doc, &e, path))
}

/// Converts a saphyr error, keeping its position but not its rendered snippet.
pub fn to_yaml_error(
    file: &str,
    doc: &Doc,
    e: &serde_saphyr::Error,
    path: Option<String>,
) -> YamlError {
    let (line, column) = match e.location() {
        Some(l) if l.line() > 0 => (Some(l.line() + doc.line_offset), Some(l.column())),
        _ => (Some(doc.first_line), None),
    };
    YamlError {
        file: file.into(),
        line,
        column,
        path,
        message: plain_message(e),
    }
}

/// saphyr's Display may include a source snippet; keep the first line, the message.
fn plain_message(e: &serde_saphyr::Error) -> String {
    let inner = match e {
        serde_saphyr::Error::WithSnippet { error, .. } => error.as_ref(),
        other => other,
    };
    let text = inner.to_string();
    let first = text.lines().next().unwrap_or("invalid YAML").trim();
    // saphyr appends " at line L, column C"; we print the position in front instead.
    match first.rfind(" at line ") {
        Some(i) => first[..i].to_owned(),
        None => first.to_owned(),
    }
}

/// Parses a single-document YAML file (the daemon configuration). An empty file,
/// or one of only comments, yields `T::default()`.
pub fn from_single<T: DeserializeOwned + Default>(file: &str, text: &str) -> Result<T, YamlError> {
    let docs = split_documents(text);
    match docs.as_slice() {
        [] => Ok(T::default()),
        [doc] => from_doc(file, doc),
        [_, second, ..] => Err(YamlError {
            file: file.into(),
            line: Some(second.first_line),
            column: None,
            path: None,
            message: "expected one YAML document, found several".into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_documents_and_keeps_file_line_numbers() {
        let text = "# header\n---\na: 1\n---\n\n# c\nb: 2\n...\n---\n";
        let docs = split_documents(text);
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0].first_line, 3);
        assert_eq!(docs[1].first_line, 7);
        assert_eq!(docs[1].line_offset, 4);
        assert_eq!(docs[1].text.lines().nth(2), Some("b: 2"));
    }

    #[test]
    fn reports_position_and_path() {
        #[derive(Debug, serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Inner {
            #[allow(dead_code)]
            n: u8,
        }
        #[derive(Debug, serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Outer {
            #[allow(dead_code)]
            inner: Inner,
        }
        let text = "---\ninner: {n: 1}\n---\ninner:\n  n: 300\n";
        let docs = split_documents(text);
        assert!(from_doc::<Outer>("f.yaml", &docs[0]).is_ok());
        let err = from_doc::<Outer>("f.yaml", &docs[1]).unwrap_err();
        assert_eq!(err.line, Some(5), "{err}");
        assert_eq!(err.path.as_deref(), Some("inner.n"), "{err}");
        assert!(err.to_string().starts_with("f.yaml:5:"), "{err}");
    }
}
