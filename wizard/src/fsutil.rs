//! File writes with their modes set at creation (never a window where a key file
//! is world-readable), replaced atomically (a crash leaves the old file or the new
//! one, never half of one), and the directories that hold them.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// A file operation failed.
#[derive(Debug, thiserror::Error)]
#[error("cannot {what} {}", path.display())]
pub struct FsError {
    /// What was attempted.
    pub what: &'static str,
    /// The file.
    pub path: PathBuf,
    /// Why.
    #[source]
    pub source: std::io::Error,
}

fn err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> FsError + 'a {
    move |source| FsError {
        what,
        path: path.to_owned(),
        source,
    }
}

/// Creates `dir` (and parents) and sets its mode.
pub fn ensure_dir(dir: &Path, mode: u32) -> Result<(), FsError> {
    fs::create_dir_all(dir).map_err(err("create directory", dir))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(mode)).map_err(err("set the mode of", dir))
}

/// Writes `bytes` to `path` through a temporary file in the same directory created
/// with `mode`, synced, then renamed over `path`.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), FsError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let _ = fs::remove_file(&tmp);
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(err("create", &tmp))?;
    // The umask may have narrowed the mode; set it exactly.
    f.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(err("set the mode of", &tmp))?;
    f.write_all(bytes).map_err(err("write", &tmp))?;
    f.sync_all().map_err(err("sync", &tmp))?;
    drop(f);
    fs::rename(&tmp, path).map_err(err("replace", path))?;
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Writes a new file with `mode`, refusing to replace an existing one (for keys:
/// a second generation must never overwrite the first).
pub fn create_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), FsError> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(err("create", path))?;
    f.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(err("set the mode of", path))?;
    f.write_all(bytes).map_err(err("write", path))?;
    f.sync_all().map_err(err("sync", path))
}

/// Removes a file; absent is fine.
pub fn remove(path: &Path) -> Result<(), FsError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(err("remove", path)(e)),
    }
}

/// The mode bits of a file.
pub fn mode_of(path: &Path) -> Result<u32, FsError> {
    Ok(fs::metadata(path)
        .map_err(err("read the metadata of", path))?
        .permissions()
        .mode()
        & 0o777)
}

/// The uid and gid of `user` from `/etc/passwd`, if the user exists.
pub fn lookup_user(user: &str) -> Option<(u32, u32)> {
    let text = fs::read_to_string("/etc/passwd").ok()?;
    text.lines().find_map(|l| {
        let mut f = l.split(':');
        (f.next()? == user).then_some(())?;
        let _pw = f.next()?;
        let uid = f.next()?.parse().ok()?;
        let gid = f.next()?.parse().ok()?;
        Some((uid, gid))
    })
}

/// Gives `path` to `user` (and its group) when that user exists on this system;
/// blockhostd runs as `blockhost` and must own its 0600 key files.
pub fn give_to(path: &Path, user: &str) -> Result<(), FsError> {
    if user.is_empty() {
        return Ok(());
    }
    let Some((uid, gid)) = lookup_user(user) else {
        return Ok(());
    };
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).map_err(err("change the owner of", path))
}

/// Reads a JSON file; `None` when it does not exist.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Option<T>, FsError> {
    match fs::read(path) {
        Ok(b) => serde_json::from_slice(&b).map(Some).map_err(|e| {
            err("parse", path)(std::io::Error::new(std::io::ErrorKind::InvalidData, e))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(err("read", path)(e)),
    }
}

/// Writes a JSON file atomically with `mode`.
pub fn write_json<T: serde::Serialize>(path: &Path, value: &T, mode: u32) -> Result<(), FsError> {
    let mut bytes = serde_json::to_vec_pretty(value)
        .map_err(|e| err("encode", path)(std::io::Error::other(e)))?;
    bytes.push(b'\n');
    write_atomic(path, &bytes, mode)
}
