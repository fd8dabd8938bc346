//! The path of a Unix socket before binding and after serving: only a socket
//! is ever removed there. A configured path that holds a regular file (a
//! typo'd path pointing at a database, a log) or a directory is an error, not
//! a "stale socket" to delete.

use std::os::unix::fs::FileTypeExt;
use std::path::Path;

/// Why a socket path cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SocketPathError {
    /// A live server answers on it.
    #[error("a server is already listening on this socket")]
    InUse,
    /// Something that is not a socket is there; it is left alone.
    #[error(
        "the path holds a {what}, not a socket; it was left untouched: remove it yourself or configure another path"
    )]
    NotASocket {
        /// What is there (`regular file`, `directory`, …).
        what: &'static str,
    },
    /// The path could not be inspected or the stale socket removed.
    #[error("cannot inspect or remove the old socket")]
    Io(#[source] std::io::Error),
}

fn describe(t: std::fs::FileType) -> &'static str {
    if t.is_file() {
        "regular file"
    } else if t.is_dir() {
        "directory"
    } else if t.is_symlink() {
        "symbolic link"
    } else if t.is_fifo() {
        "FIFO"
    } else {
        "special file"
    }
}

/// Makes `path` free for binding: nothing there is fine; a socket nobody
/// answers on is removed (returns `true`); a live socket or anything else is
/// an error. A symbolic link is not followed.
pub async fn clear_stale(path: &Path) -> Result<bool, SocketPathError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(SocketPathError::Io(e)),
    };
    if !meta.file_type().is_socket() {
        return Err(SocketPathError::NotASocket {
            what: describe(meta.file_type()),
        });
    }
    if tokio::net::UnixStream::connect(path).await.is_ok() {
        return Err(SocketPathError::InUse);
    }
    std::fs::remove_file(path).map_err(SocketPathError::Io)?;
    Ok(true)
}

/// Removes the socket at `path` after serving, if a socket is what is there.
pub fn remove_socket(path: &Path) {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            if let Err(e) = std::fs::remove_file(path) {
                tracing::debug!(path = %path.display(), error = %e, "cannot remove the socket");
            }
        }
        Ok(m) => {
            tracing::warn!(path = %path.display(), what = describe(m.file_type()), "the socket path no longer holds a socket; left untouched")
        }
        Err(_) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn only_a_dead_socket_is_removed() {
        let dir = std::env::temp_dir().join(format!("bh-sock-{}", std::process::id()));
        std::fs::create_dir_all(&dir)
            .map_err(|e| e.to_string())
            .unwrap_or(());
        let file = dir.join("precious.txt");
        std::fs::write(&file, "keep me").unwrap_or(());
        assert!(matches!(
            clear_stale(&file).await,
            Err(SocketPathError::NotASocket {
                what: "regular file"
            })
        ));
        remove_socket(&file);
        assert_eq!(
            std::fs::read_to_string(&file).unwrap_or_default(),
            "keep me"
        );
        let sock = dir.join("s.sock");
        let _ = std::fs::remove_file(&sock);
        let live = tokio::net::UnixListener::bind(&sock);
        assert!(live.is_ok());
        assert!(matches!(
            clear_stale(&sock).await,
            Err(SocketPathError::InUse)
        ));
        drop(live);
        assert!(matches!(clear_stale(&sock).await, Ok(true)));
        assert!(matches!(clear_stale(&sock).await, Ok(false)));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
