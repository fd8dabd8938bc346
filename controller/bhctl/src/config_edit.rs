//! In-place edits of `blockhostd`'s YAML configuration, for `bhctl chain deploy`.
//!
//! The file is the operator's: comments, key order and formatting must survive
//! a deploy. A YAML round trip through serde would drop all of that, so this
//! edits lines: it finds the top-level `chain:` block, replaces the values of
//! the keys it sets (keeping a trailing comment) and appends the missing ones at
//! the end of the block with the block's indentation. The caller re-parses the
//! result before writing it, so a layout this cannot handle is refused rather
//! than written wrong. The write is atomic (temporary file in the same directory,
//! then rename) and keeps the file's mode and owner.

use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Why the configuration could not be edited.
#[derive(Debug, thiserror::Error)]
pub enum EditError {
    /// No block-style `chain:` at the top level.
    #[error("no top-level `chain:` block found")]
    NoChainBlock,
    /// `chain: {…}` on one line.
    #[error(
        "the `chain` section is written in flow style (`chain: {{…}}`); write it as an indented block"
    )]
    FlowStyle,
    /// The edited text does not parse to the values set (an unusual layout).
    #[error(
        "the edited configuration would not read back as intended (unusual YAML layout in the chain section)"
    )]
    Unverified,
    /// Writing failed.
    #[error("cannot write {}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Leading spaces of a line.
fn indent(line: &str) -> usize {
    line.len() - line.trim_start_matches(' ').len()
}

/// Blank, or only a comment: neither ends nor belongs to a block.
fn is_filler(line: &str) -> bool {
    let t = line.trim();
    t.is_empty() || t.starts_with('#')
}

/// The key of a `key: value` line (quotes removed), and the byte offset just
/// past its colon.
fn key_of(line: &str) -> Option<(&str, usize)> {
    let start = indent(line);
    let rest = &line[start..];
    let colon = rest.find(':')?;
    let key = rest[..colon].trim().trim_matches(|c| c == '"' || c == '\'');
    Some((key, start + colon + 1))
}

/// Where a trailing `# comment` starts in `s` (a `#` after whitespace, outside
/// quotes), if any.
fn comment_start(s: &str) -> Option<usize> {
    let mut quote = None;
    let mut prev_space = true;
    for (i, c) in s.char_indices() {
        match (quote, c) {
            (None, '"' | '\'') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            (None, '#') if prev_space => return Some(i),
            _ => {}
        }
        prev_space = c.is_whitespace();
    }
    None
}

/// Sets `entries` (key, YAML scalar) inside the top-level `chain:` block of
/// `text`, replacing existing values in place and appending missing keys.
pub fn set_chain_keys(text: &str, entries: &[(&str, String)]) -> Result<String, EditError> {
    let mut lines: Vec<String> = text.split_inclusive('\n').map(str::to_owned).collect();
    let head = chain_head(&lines)?;
    let ChainBlock {
        child_indent: ci,
        mut last,
        found,
    } = scan_block(&lines, head, entries);

    // Replace in place, from the bottom up so earlier indices stay valid when a
    // multi-line value is collapsed.
    let mut order: Vec<(usize, usize)> = found
        .iter()
        .enumerate()
        .filter_map(|(k, at)| at.map(|at| (at, k)))
        .collect();
    order.sort_unstable_by(|a, b| b.cmp(a));
    for (at, k) in order {
        replace_value(&mut lines, at, &entries[k].1, ci, &mut last);
    }

    let pad = " ".repeat(ci);
    let missing: Vec<String> = entries
        .iter()
        .zip(&found)
        .filter(|(_, at)| at.is_none())
        .map(|((key, value), _)| format!("{pad}{key}: {value}\n"))
        .collect();
    if !missing.is_empty() {
        if !lines[last].ends_with('\n') {
            lines[last].push('\n');
        }
        for (n, l) in missing.into_iter().enumerate() {
            lines.insert(last + 1 + n, l);
        }
    }
    Ok(lines.concat())
}

/// The index of the top-level `chain:` line, refusing `chain: {…}`, whose
/// flow style this line editor cannot extend.
fn chain_head(lines: &[String]) -> Result<usize, EditError> {
    let head = lines
        .iter()
        .position(|l| {
            l.strip_prefix("chain")
                .and_then(|r| r.trim_start_matches(' ').strip_prefix(':'))
                .is_some()
        })
        .ok_or(EditError::NoChainBlock)?;
    let after = lines[head].split_once(':').map_or("", |(_, v)| v);
    let inline = match comment_start(after) {
        Some(c) => &after[..c],
        None => after,
    };
    if !inline.trim().is_empty() {
        return Err(EditError::FlowStyle);
    }
    Ok(head)
}

/// What [`scan_block`] learnt of the `chain` block.
struct ChainBlock {
    /// The indentation of its keys (2 when the block is empty).
    child_indent: usize,
    /// Its last line that is not blank or a comment (the head when empty).
    last: usize,
    /// Per entry, the line of its key, if the block has it.
    found: Vec<Option<usize>>,
}

/// Finds the block's extent and the lines of the keys to set: the lines after
/// the head until one at column 0 (or a document marker); its keys sit at the
/// indentation of its first line.
fn scan_block(lines: &[String], head: usize, entries: &[(&str, String)]) -> ChainBlock {
    let mut child_indent = None;
    let mut last = head;
    let mut found: Vec<Option<usize>> = vec![None; entries.len()];
    let mut i = head + 1;
    while i < lines.len() {
        let line = lines[i].trim_end_matches(['\n', '\r']);
        if is_filler(line) {
            i += 1;
            continue;
        }
        let ind = indent(line);
        if ind == 0 {
            break;
        }
        let ci = *child_indent.get_or_insert(ind);
        if ind < ci {
            break;
        }
        last = i;
        if ind == ci
            && let Some((key, _)) = key_of(line)
            && let Some(k) = entries.iter().position(|(name, _)| *name == key)
        {
            found[k] = Some(i);
        }
        i += 1;
    }
    ChainBlock {
        child_indent: child_indent.unwrap_or(2),
        last,
        found,
    }
}

/// Gives the key on line `at` the scalar `value`, keeping its trailing
/// comment; a value written on the following, deeper lines is dropped, and
/// `last` (the block's last line) is moved up by the lines removed.
fn replace_value(lines: &mut Vec<String>, at: usize, value: &str, ci: usize, last: &mut usize) {
    let line = lines[at].clone();
    let body = line.trim_end_matches(['\n', '\r']);
    let ending = &line[body.len()..];
    let Some((_, value_at)) = key_of(body) else {
        return;
    };
    let rest = &body[value_at..];
    let comment = match comment_start(rest) {
        Some(c) => {
            // Keep the spacing before the comment as written.
            let before = rest[..c].trim_end();
            &rest[before.len()..]
        }
        None => "",
    };
    let value_empty = rest[..comment_start(rest).unwrap_or(rest.len())]
        .trim()
        .is_empty();
    lines[at] = format!("{}: {value}{comment}{ending}", &body[..value_at - 1]);
    // `key:` with its value on the following, deeper lines: drop those.
    if value_empty {
        let mut j = at + 1;
        while j < lines.len() {
            let l = lines[j].trim_end_matches(['\n', '\r']);
            if !is_filler(l) && indent(l) <= ci {
                break;
            }
            j += 1;
        }
        // Keep trailing blank/comment lines that belong to what follows.
        while j > at + 1 && is_filler(lines[j - 1].trim_end_matches(['\n', '\r'])) {
            j -= 1;
        }
        lines.drain(at + 1..j);
        if *last >= j {
            *last -= j - (at + 1);
        } else if *last > at {
            *last = at;
        }
    }
}

/// Replaces `path` with `text` atomically, keeping its mode and owner: a crash leaves
/// either the old file or the new one, never half of one. A symbolic link is
/// followed and its target replaced.
pub fn write_atomic(path: &Path, text: &str) -> Result<(), EditError> {
    let err = |source| EditError::Write {
        path: path.to_owned(),
        source,
    };
    let target = std::fs::canonicalize(path).map_err(err)?;
    let meta = std::fs::metadata(&target).map_err(err)?;
    let mode = meta.permissions().mode() & 0o7777;
    let dir = target
        .parent()
        .ok_or_else(|| err(std::io::Error::other("the file has no directory")))?;
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.bhctl-{}.tmp", std::process::id()));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        // Root editing a root:blockhost 0640 file must not leave a root:root
        // one that blockhostd (as user blockhost) can no longer read.
        let created = f.metadata()?;
        if (meta.uid(), meta.gid()) != (created.uid(), created.gid()) {
            std::os::unix::fs::fchown(&f, Some(meta.uid()), Some(meta.gid()))?;
        }
        // The umask may have narrowed the mode given at creation.
        f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, &target)?;
        // The rename is durable once the directory is.
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(err)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn entries() -> Vec<(&'static str, String)> {
        vec![
            ("subscriptionsContract", "\"0xAA\"".into()),
            ("nftContract", "\"0xBB\"".into()),
            ("deploymentBlock", "7".into()),
        ]
    }

    #[test]
    fn appends_missing_keys_at_the_end_of_the_block() {
        let text = "# top\nstore: /s\nchain:\n  chainId: 1   # main\n  rpcUrls:\n    - http://x\n\n# proxmox next\nproxmox:\n  url: https://p\n";
        let out = set_chain_keys(text, &entries()).unwrap();
        assert_eq!(
            out,
            "# top\nstore: /s\nchain:\n  chainId: 1   # main\n  rpcUrls:\n    - http://x\n  subscriptionsContract: \"0xAA\"\n  nftContract: \"0xBB\"\n  deploymentBlock: 7\n\n# proxmox next\nproxmox:\n  url: https://p\n"
        );
    }

    #[test]
    fn replaces_existing_values_keeping_comments_and_order() {
        let text = "chain:\n    nftContract: \"0x11\"  # the NFT\n    chainId: 5\n    deploymentBlock: 3\n    subscriptionsContract:\n      \"0x22\"\n    serverKeyFile: /k\n";
        let out = set_chain_keys(text, &entries()).unwrap();
        assert_eq!(
            out,
            "chain:\n    nftContract: \"0xBB\"  # the NFT\n    chainId: 5\n    deploymentBlock: 7\n    subscriptionsContract: \"0xAA\"\n    serverKeyFile: /k\n"
        );
        // Idempotent.
        assert_eq!(set_chain_keys(&out, &entries()).unwrap(), out);
    }

    #[test]
    fn end_of_file_without_newline_and_nested_keys_of_the_same_name() {
        let text = "chain:\n  planDefaults:\n    deploymentBlock: 9\n  chainId: 1";
        let out = set_chain_keys(text, &entries()).unwrap();
        assert_eq!(
            out,
            "chain:\n  planDefaults:\n    deploymentBlock: 9\n  chainId: 1\n  subscriptionsContract: \"0xAA\"\n  nftContract: \"0xBB\"\n  deploymentBlock: 7\n"
        );
    }

    #[test]
    fn refuses_what_it_cannot_edit() {
        assert!(matches!(
            set_chain_keys("store: /s\n", &entries()),
            Err(EditError::NoChainBlock)
        ));
        assert!(matches!(
            set_chain_keys("  chain:\n    chainId: 1\n", &entries()),
            Err(EditError::NoChainBlock)
        ));
        assert!(matches!(
            set_chain_keys("chain: {chainId: 1}\n", &entries()),
            Err(EditError::FlowStyle)
        ));
        // A comment after `chain:` is fine.
        assert!(set_chain_keys("chain:  # ours\n  chainId: 1\n", &entries()).is_ok());
    }

    #[test]
    fn atomic_write_keeps_the_mode() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.yaml");
        std::fs::write(&p, "old").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640)).unwrap();
        write_atomic(&p, "new\n").unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "new\n");
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o640);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    /// Only root can give a file away; elsewhere this checks nothing new.
    #[test]
    fn atomic_write_keeps_the_owner_when_root() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.yaml");
        std::fs::write(&p, "old").unwrap();
        std::os::unix::fs::chown(&p, Some(4321), Some(8765)).unwrap();
        write_atomic(&p, "new\n").unwrap();
        let meta = std::fs::metadata(&p).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (4321, 8765));
    }
}
