//! Running the image builder (`iso/guest/build-image.sh`) and caching its output.
//!
//! The script writes machine-readable lines on stdout (`progress N/TOTAL what`,
//! then `image PATH`, `manifest PATH`, `sha256 HEX`, `seconds N`); everything else
//! goes to stderr, which we keep in a log file next to the output so a failure
//! can point at it.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use sha2::{Digest, Sha256};

/// Where the builder script and its package list are in this source tree.
pub fn source_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

/// What to build.
#[derive(Debug, Clone)]
pub struct BuildRequest {
    /// `build-image.sh` (its `packages.txt` beside it).
    pub script: PathBuf,
    /// Local packages installed into the image (blockhost-guest).
    pub debs: Vec<PathBuf>,
    /// Output directory.
    pub output: PathBuf,
    /// apt cache kept between builds (rebuildable).
    pub cache: PathBuf,
    /// Debian release.
    pub suite: String,
    /// Debian mirror; None: the script's default (deb.debian.org).
    pub mirror: Option<String>,
    /// Base name of the output files; None: `blockhost-guest-SUITE-amd64`.
    pub name: Option<String>,
}

impl BuildRequest {
    /// A request with this tree's script and the default release (trixie).
    pub fn new(debs: Vec<PathBuf>, output: PathBuf, cache: PathBuf) -> Self {
        Self {
            script: source_dir().join("build-image.sh"),
            debs,
            output,
            cache,
            suite: DEFAULT_SUITE.into(),
            mirror: None,
            name: None,
        }
    }
}

/// Debian 13, the base of Proxmox VE 9.
pub const DEFAULT_SUITE: &str = "trixie";

/// One step of the build starting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    /// 1-based step number.
    pub step: u32,
    /// Number of steps.
    pub total: u32,
    /// What the step does.
    pub what: String,
}

/// A built image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuiltImage {
    /// The qcow2 image.
    pub image: PathBuf,
    /// Every package and version in the image, one `name\tversion` a line.
    pub manifest: PathBuf,
    /// SHA-256 of the qcow2 file, hex.
    pub sha256: String,
    /// How long the build took, in seconds (of the build that made it, if cached).
    pub seconds: u64,
}

/// Why a build failed.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The script could not be started.
    #[error("cannot run {script}")]
    Spawn {
        /// The script.
        script: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Reading or writing the output or log failed.
    #[error("{what} {path}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The script failed.
    #[error("the image build failed ({status}); its log is {log}:\n{tail}")]
    Failed {
        /// Exit status.
        status: std::process::ExitStatus,
        /// The full log.
        log: PathBuf,
        /// The log's last lines.
        tail: String,
    },
    /// The script ended without naming its image.
    #[error("the image builder ended without reporting an image; its log is {0}")]
    NoResult(PathBuf),
}

/// Runs the builder, calling `on_progress` as each step starts. The builder's
/// stderr goes to `<output>/build.log`.
pub fn run(
    req: &BuildRequest,
    mut on_progress: impl FnMut(&Progress),
) -> Result<BuiltImage, BuildError> {
    std::fs::create_dir_all(&req.output).map_err(|source| BuildError::Io {
        what: "cannot create",
        path: req.output.clone(),
        source,
    })?;
    let log_path = req.output.join("build.log");
    let log = std::fs::File::create(&log_path).map_err(|source| BuildError::Io {
        what: "cannot create",
        path: log_path.clone(),
        source,
    })?;
    let mut cmd = Command::new("bash");
    cmd.arg(&req.script);
    for d in &req.debs {
        cmd.arg("--deb").arg(d);
    }
    cmd.arg("--output")
        .arg(&req.output)
        .arg("--cache")
        .arg(&req.cache)
        .args(["--suite", &req.suite]);
    if let Some(m) = &req.mirror {
        cmd.args(["--mirror", m]);
    }
    if let Some(n) = &req.name {
        cmd.args(["--name", n]);
    }
    tracing::info!(script = %req.script.display(), output = %req.output.display(), "building the guest image");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .map_err(|source| BuildError::Spawn {
            script: req.script.clone(),
            source,
        })?;
    let mut image = None;
    let mut manifest = None;
    let mut sha256 = None;
    let mut seconds = 0;
    if let Some(out) = child.stdout.take() {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            let (key, value) = line.split_once(' ').unwrap_or((line.as_str(), ""));
            match key {
                "progress" => {
                    if let Some(p) = parse_progress(value) {
                        on_progress(&p);
                    }
                }
                "image" => image = Some(PathBuf::from(value)),
                "manifest" => manifest = Some(PathBuf::from(value)),
                "sha256" => sha256 = Some(value.to_owned()),
                "seconds" => seconds = value.parse().unwrap_or(0),
                _ => {}
            }
        }
    }
    let status = child.wait().map_err(|source| BuildError::Spawn {
        script: req.script.clone(),
        source,
    })?;
    if !status.success() {
        return Err(BuildError::Failed {
            status,
            tail: tail_of(&log_path, 25),
            log: log_path,
        });
    }
    match (image, manifest, sha256) {
        (Some(image), Some(manifest), Some(sha256)) => Ok(BuiltImage {
            image,
            manifest,
            sha256,
            seconds,
        }),
        _ => Err(BuildError::NoResult(log_path)),
    }
}

fn parse_progress(v: &str) -> Option<Progress> {
    let (frac, what) = v.split_once(' ')?;
    let (step, total) = frac.split_once('/')?;
    Some(Progress {
        step: step.parse().ok()?,
        total: total.parse().ok()?,
        what: what.to_owned(),
    })
}

/// The last `n` lines of a file (for error messages).
pub fn tail_of(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The inputs that decide an image's content, for [`cached`].
#[derive(Debug, Clone)]
pub struct CacheKey {
    hasher: Sha256,
}

impl Default for CacheKey {
    fn default() -> Self {
        Self::new()
    }
}

impl CacheKey {
    /// An empty key.
    pub fn new() -> Self {
        Self {
            hasher: Sha256::new(),
        }
    }

    /// Adds a labelled value.
    pub fn text(&mut self, label: &str, value: &str) -> &mut Self {
        for part in [label.as_bytes(), value.as_bytes()] {
            self.hasher.update((part.len() as u64).to_le_bytes());
            self.hasher.update(part);
        }
        self
    }

    /// Adds a file's name and content.
    pub fn file(&mut self, path: &Path) -> Result<&mut Self, BuildError> {
        let bytes = std::fs::read(path).map_err(|source| BuildError::Io {
            what: "cannot read",
            path: path.to_owned(),
            source,
        })?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        self.hasher.update((name.len() as u64).to_le_bytes());
        self.hasher.update(name.as_bytes());
        self.hasher.update((bytes.len() as u64).to_le_bytes());
        self.hasher.update(&bytes);
        Ok(self)
    }

    /// The key, 16 hex digits (enough to tell builds apart in one cache).
    pub fn finish(&self) -> String {
        hex::encode(&self.hasher.clone().finalize()[..8])
    }
}

/// Builds the image unless `<root>/<key>/` already holds one, and returns it.
///
/// `key` must cover everything that changes the image: `make_debs` is only called
/// on a miss, so the (slow) package build is skipped too. A finished build is
/// marked by `<root>/<key>/image.json`; an interrupted one is started again. The
/// apt cache is shared by all keys (`<root>/apt-cache`). Older keys are left for
/// the caller to prune (`prune_except`).
pub fn cached(
    root: &Path,
    key: &mut CacheKey,
    make_debs: impl FnOnce() -> Result<Vec<PathBuf>, BuildError>,
    on_progress: impl FnMut(&Progress),
) -> Result<BuiltImage, BuildError> {
    let script = source_dir().join("build-image.sh");
    key.file(&script)?
        .file(&source_dir().join("packages.txt"))?
        .text("suite", DEFAULT_SUITE);
    let dir = root.join(key.finish());
    let record = dir.join("image.json");
    if let Ok(text) = std::fs::read_to_string(&record)
        && let Ok(v) = serde_json::from_str::<serde_json::Value>(&text)
        && let Some(img) = from_record(&v)
        && img.image.exists()
    {
        tracing::info!(image = %img.image.display(), "guest image from the cache");
        mark_current(root, &record)?;
        return Ok(img);
    }
    let _ = std::fs::remove_dir_all(&dir);
    let debs = make_debs()?;
    let req = BuildRequest::new(debs, dir.join("out"), root.join("apt-cache"));
    let img = run(&req, on_progress)?;
    let v = serde_json::json!({
        "image": img.image, "manifest": img.manifest, "sha256": img.sha256, "seconds": img.seconds,
    });
    std::fs::write(&record, v.to_string()).map_err(|source| BuildError::Io {
        what: "cannot write",
        path: record.clone(),
        source,
    })?;
    mark_current(root, &record)?;
    Ok(img)
}

/// The record of the image the last [`cached`] call returned, for harnesses that
/// boot it without the binaries that key it (the real-guest end-to-end tests run
/// after the boot test built or found it).
const CURRENT: &str = "current.json";

/// Points `root/current.json` at `record` (a copy: the record is small).
fn mark_current(root: &Path, record: &Path) -> Result<(), BuildError> {
    let current = root.join(CURRENT);
    let tmp = root.join(".current.json.tmp");
    let io = |what, path: &Path| {
        let path = path.to_path_buf();
        move |source| BuildError::Io { what, path, source }
    };
    std::fs::copy(record, &tmp).map_err(io("cannot copy the image record to", &tmp))?;
    std::fs::rename(&tmp, &current).map_err(io("cannot replace", &current))
}

/// The image the last [`cached`] call under `root` returned, if it still exists.
pub fn current(root: &Path) -> Option<BuiltImage> {
    let text = std::fs::read_to_string(root.join(CURRENT)).ok()?;
    let img = from_record(&serde_json::from_str(&text).ok()?)?;
    img.image.exists().then_some(img)
}

fn from_record(v: &serde_json::Value) -> Option<BuiltImage> {
    Some(BuiltImage {
        image: PathBuf::from(v.get("image")?.as_str()?),
        manifest: PathBuf::from(v.get("manifest")?.as_str()?),
        sha256: v.get("sha256")?.as_str()?.to_owned(),
        seconds: v.get("seconds")?.as_u64()?,
    })
}

/// Removes every cached build under `root` except `keep` (and the apt cache).
pub fn prune_except(root: &Path, keep: &Path) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.file_name().is_some_and(|n| n == "apt-cache") || keep.starts_with(&p) {
            continue;
        }
        if p.is_dir() {
            let _ = std::fs::remove_dir_all(&p);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn progress_lines_parse() {
        assert_eq!(
            parse_progress("2/7 installing Debian"),
            Some(Progress {
                step: 2,
                total: 7,
                what: "installing Debian".into()
            })
        );
        assert_eq!(parse_progress("x/7 a"), None);
        assert_eq!(parse_progress("2/7"), None);
    }

    #[test]
    fn keys_depend_on_labels_content_and_names() {
        let d = tempfile::tempdir().unwrap();
        let a = d.path().join("a");
        std::fs::write(&a, "one").unwrap();
        let k1 = CacheKey::new().file(&a).unwrap().finish();
        std::fs::write(&a, "two").unwrap();
        let k2 = CacheKey::new().file(&a).unwrap().finish();
        assert_ne!(k1, k2);
        assert_ne!(
            CacheKey::new().text("a", "bc").finish(),
            CacheKey::new().text("ab", "c").finish()
        );
        assert_eq!(k2, CacheKey::new().file(&a).unwrap().finish());
    }

    #[test]
    fn a_failing_build_names_its_log() {
        let d = tempfile::tempdir().unwrap();
        let script = d.path().join("fail.sh");
        std::fs::write(
            &script,
            "echo 'progress 1/2 first'; echo 'it broke' >&2; exit 3\n",
        )
        .unwrap();
        let mut req = BuildRequest::new(vec![], d.path().join("out"), d.path().join("cache"));
        req.script = script;
        let mut seen = vec![];
        let err = run(&req, |p| seen.push(p.clone())).unwrap_err();
        assert_eq!(seen.len(), 1);
        let msg = err.to_string();
        assert!(
            msg.contains("build.log") && msg.contains("it broke"),
            "{msg}"
        );
    }
}
