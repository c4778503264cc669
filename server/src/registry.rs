//! Function records and code, kept durably in the data directory.
//!
//! ```text
//! <data>/functions/<name>/function.json     record: every version's spec and state
//! <data>/functions/<name>/v<N>/code/...     the code of version N (read-only to functions)
//! ```
//!
//! Everything here but the code trees is private to the server: records are
//! 0600 files in 0700 directories (see [`crate::private`]); a version's code
//! is 0755/0644 inside its 0700 version directory, so the function's user
//! reads it only through the sandbox's bind of it at `/var/task`.
//!
//! Deploys and deletes of one name are serialised by [`Registry::name_lock`]:
//! two deploys at once get distinct version numbers, each with its own code.
//!
//! `function.json` is replaced atomically (write to a temporary file, fsync,
//! rename, fsync the directory). A version's code is written to a temporary
//! directory that is renamed into place before the record names it, so a
//! crash never leaves a record pointing at half-written code.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::spec::{valid_code_path, valid_name, FunctionSpec, MAX_FILES};

/// Largest unpacked archive, bytes.
pub const MAX_UNPACKED: u64 = 1 << 30;

/// Lifecycle of a version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VersionState {
    /// Its first instance boots.
    Deploying,
    /// Its dependency file is being installed into a layer (only when the
    /// code has one: docs/dependencies.md).
    Building,
    /// Its first instance runs the warm-up events.
    Warming,
    /// Its warmed instance is being captured.
    Snapshotting,
    /// Ready to serve.
    Ready,
    /// Its handler could not be loaded.
    Failed,
}

impl VersionState {
    /// Whether the version is still on its way to `ready`.
    pub fn in_progress(self) -> bool {
        matches!(
            self,
            VersionState::Deploying
                | VersionState::Building
                | VersionState::Warming
                | VersionState::Snapshotting
        )
    }

    /// The name used in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            VersionState::Deploying => "deploying",
            VersionState::Building => "building",
            VersionState::Warming => "warming",
            VersionState::Snapshotting => "snapshotting",
            VersionState::Ready => "ready",
            VersionState::Failed => "failed",
        }
    }
}

/// One version as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VersionRecord {
    /// 1, 2, ...
    pub version: u64,
    /// Unique per deployment (instances of a deleted function never return).
    pub uid: u64,
    /// Its settings.
    pub spec: FunctionSpec,
    /// Lifecycle state.
    pub state: VersionState,
    /// Why it failed, or the last problem seen.
    pub error: Option<String>,
    /// Its snapshot, once taken.
    #[serde(default)]
    pub snapshot: Option<crate::snapshots::SnapshotInfo>,
    /// Unix time of the deploy, ms.
    pub created_ms: u64,
    /// The last restore of its snapshot that failed, and the rebuild it
    /// started (see [`crate::rebuild`]).
    #[serde(default)]
    pub restore_failure: Option<crate::rebuild::RestoreFailureNote>,
    /// Snapshots rebuilt after failed restores.
    #[serde(default)]
    pub rebuilds: u32,
    /// The dependency layer linked into its code folder, if its code has a
    /// dependency file (docs/dependencies.md); readers of a shared store
    /// install it from the bucket (docs/cluster.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layer: Option<crate::build::layer::LayerRef>,
}

/// A function with all its versions, as stored in `function.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FunctionRecord {
    /// Name.
    pub name: String,
    /// Versions, oldest first.
    pub versions: Vec<VersionRecord>,
}

impl FunctionRecord {
    /// The newest version.
    pub fn latest(&self) -> &VersionRecord {
        self.versions.last().expect("a record has a version")
    }

    /// A version by number.
    pub fn version(&self, n: u64) -> Option<&VersionRecord> {
        self.versions.iter().find(|v| v.version == n)
    }
}

/// Errors of reading or writing the registry.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// A file operation failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// Where.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A record could not be parsed.
    #[error("corrupt record {path}: {source}")]
    Corrupt {
        /// Where.
        path: PathBuf,
        /// The error.
        source: serde_json::Error,
    },
    /// The code is not acceptable (bad path, bad archive, too large).
    #[error("{0}")]
    BadCode(String),
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> RegistryError {
    let path = path.to_path_buf();
    move |source| RegistryError::Io { what, path, source }
}

/// Writes `bytes` to `path` atomically and durably, as a 0600 file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), RegistryError> {
    let dir = path.parent().expect("path has a parent");
    let tmp = dir.join(format!(
        ".{}.tmp-{:x}",
        path.file_name().unwrap().to_string_lossy(),
        rand::random::<u32>()
    ));
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io("create", &tmp))?;
    f.write_all(bytes).map_err(io("write", &tmp))?;
    f.sync_all().map_err(io("fsync", &tmp))?;
    drop(f);
    fs::rename(&tmp, path).map_err(io("rename", path))?;
    fsync_dir(dir)
}

fn fsync_dir(dir: &Path) -> Result<(), RegistryError> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("fsync", dir))
}

/// Creates `dir` and its missing parents as 0700 directories.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// One lock per function name; see [`Registry::name_lock`].
type NameLocks = Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>;

/// The function records of one data directory.
#[derive(Debug, Clone)]
pub struct Registry {
    root: PathBuf,
    names: NameLocks,
}

impl Registry {
    /// Opens (creating) `<data>/functions`.
    pub fn open(data_dir: &Path) -> Result<Registry, RegistryError> {
        let root = data_dir.join("functions");
        create_private_dir(&root).map_err(io("create", &root))?;
        Ok(Registry {
            root,
            names: NameLocks::default(),
        })
    }

    /// The lock that serialises changes of function `name` (deploy,
    /// delete): hold it from choosing a version number until the record
    /// names the version. Locks of names nobody holds are forgotten.
    pub fn name_lock(&self, name: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut names = self.names.lock().unwrap();
        names.retain(|_, lock| Arc::strong_count(lock) > 1);
        names.entry(name.to_string()).or_default().clone()
    }

    fn dir(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// The record file of a function.
    pub fn record_path(&self, name: &str) -> PathBuf {
        self.dir(name).join("function.json")
    }

    /// The code directory of a version.
    pub fn code_dir(&self, name: &str, version: u64) -> PathBuf {
        self.dir(name).join(format!("v{version}")).join("code")
    }

    /// Loads every record. Leftovers of interrupted deploys (temporary
    /// files, code directories no record names) are removed.
    pub fn load_all(&self) -> Result<Vec<FunctionRecord>, RegistryError> {
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.root).map_err(io("list", &self.root))? {
            let entry = entry.map_err(io("list", &self.root))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if !valid_name(&name) {
                continue;
            }
            let path = entry.path().join("function.json");
            let record: FunctionRecord = match fs::read(&path) {
                Ok(bytes) => {
                    serde_json::from_slice(&bytes).map_err(|source| RegistryError::Corrupt {
                        path: path.clone(),
                        source,
                    })?
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    // A deploy that died before its first record: nothing to keep.
                    let _ = fs::remove_dir_all(entry.path());
                    continue;
                }
                Err(e) => return Err(io("read", &path)(e)),
            };
            self.sweep(&record);
            out.push(record);
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn sweep(&self, record: &FunctionRecord) {
        let Ok(entries) = fs::read_dir(self.dir(&record.name)) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let known = name == "function.json"
                || name
                    .strip_prefix('v')
                    .and_then(|n| n.parse::<u64>().ok())
                    .is_some_and(|n| record.version(n).is_some());
            if !known {
                let _ = fs::remove_dir_all(entry.path()).or_else(|_| fs::remove_file(entry.path()));
            }
        }
    }

    /// Stores a record.
    pub fn save(&self, record: &FunctionRecord) -> Result<(), RegistryError> {
        let dir = self.dir(&record.name);
        create_private_dir(&dir).map_err(io("create", &dir))?;
        let json = serde_json::to_vec_pretty(record).expect("record serialises");
        write_atomic(&dir.join("function.json"), &json)
    }

    /// Writes the code of a new version: text files and an optional tar.gz.
    pub fn write_code(
        &self,
        name: &str,
        version: u64,
        files: &BTreeMap<String, String>,
        archive: Option<&[u8]>,
    ) -> Result<PathBuf, RegistryError> {
        if files.len() > MAX_FILES {
            return Err(RegistryError::BadCode(format!(
                "field `files` has more than {MAX_FILES} entries"
            )));
        }
        let fdir = self.dir(name);
        create_private_dir(&fdir).map_err(io("create", &fdir))?;
        let staging = fdir.join(format!(".staging-v{version}-{:x}", rand::random::<u32>()));
        let code = staging.join("code");
        // v<N> stays 0700: only the sandbox's bind reaches the code in it.
        create_private_dir(&code).map_err(io("create", &code))?;
        let result = (|| {
            if let Some(archive) = archive {
                unpack(archive, &code)?;
            }
            for (path, text) in files {
                if !valid_code_path(path) {
                    return Err(RegistryError::BadCode(format!(
                        "field `files`: {path:?} is not a relative path inside the function"
                    )));
                }
                let dst = code.join(path);
                if let Some(parent) = dst.parent() {
                    fs::create_dir_all(parent).map_err(io("create", parent))?;
                }
                let mut f = fs::File::create(&dst).map_err(io("create", &dst))?;
                f.write_all(text.as_bytes()).map_err(io("write", &dst))?;
                f.sync_all().map_err(io("fsync", &dst))?;
            }
            make_readable(&code)?;
            fsync_dir(&code)?;
            let final_dir = fdir.join(format!("v{version}"));
            let _ = fs::remove_dir_all(&final_dir);
            fs::rename(&staging, &final_dir).map_err(io("rename", &final_dir))?;
            fsync_dir(&fdir)?;
            Ok(final_dir.join("code"))
        })();
        if result.is_err() {
            let _ = fs::remove_dir_all(&staging);
        }
        result
    }

    /// Removes a function and all its code.
    pub fn remove(&self, name: &str) -> Result<(), RegistryError> {
        let dir = self.dir(name);
        // Rename first so a crash in the middle never leaves a half-deleted
        // function that looks alive.
        let doomed = self
            .root
            .join(format!(".deleted-{name}-{:x}", rand::random::<u32>()));
        fs::rename(&dir, &doomed).map_err(io("rename", &dir))?;
        fsync_dir(&self.root)?;
        fs::remove_dir_all(&doomed).map_err(io("remove", &doomed))
    }

    /// Removes leftovers of interrupted deletes.
    pub fn sweep_root(&self) {
        if let Ok(entries) = fs::read_dir(&self.root) {
            for entry in entries.flatten() {
                if entry.file_name().to_string_lossy().starts_with('.') {
                    let _ = fs::remove_dir_all(entry.path());
                }
            }
        }
    }
}

/// Files and directories of code: readable (not writable) by the function's
/// unprivileged user.
fn make_readable(dir: &Path) -> Result<(), RegistryError> {
    for entry in fs::read_dir(dir).map_err(io("list", dir))? {
        let entry = entry.map_err(io("list", dir))?;
        let path = entry.path();
        let ty = entry.file_type().map_err(io("stat", &path))?;
        if ty.is_dir() {
            fs::set_permissions(&path, fs::Permissions::from_mode(0o755))
                .map_err(io("chmod", &path))?;
            make_readable(&path)?;
        } else if ty.is_file() {
            let mode = entry
                .metadata()
                .map_err(io("stat", &path))?
                .permissions()
                .mode();
            let exec = if mode & 0o111 != 0 { 0o755 } else { 0o644 };
            fs::set_permissions(&path, fs::Permissions::from_mode(exec))
                .map_err(io("chmod", &path))?;
        }
    }
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).map_err(io("chmod", dir))
}

/// Unpacks a tar.gz into `dst`, refusing paths that leave it, links, devices
/// and archives that unpack to more than [`MAX_UNPACKED`] bytes. Public so
/// that the fuzz targets drive the real unpacker.
pub fn unpack(archive: &[u8], dst: &Path) -> Result<(), RegistryError> {
    let bad = |m: String| RegistryError::BadCode(format!("field `archive`: {m}"));
    let gz = flate2::read::GzDecoder::new(archive);
    let mut tar = tar::Archive::new(gz.take(MAX_UNPACKED + 1));
    let mut total = 0u64;
    let entries = tar
        .entries()
        .map_err(|e| bad(format!("not a tar.gz: {e}")))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| bad(format!("not a tar.gz: {e}")))?;
        let path = entry.path().map_err(|e| bad(e.to_string()))?.into_owned();
        let rel = path.to_string_lossy().trim_start_matches("./").to_string();
        if rel.is_empty() {
            continue;
        }
        if !valid_code_path(&rel) {
            return Err(bad(format!(
                "{rel:?} is not a relative path inside the function"
            )));
        }
        let ty = entry.header().entry_type();
        let out = dst.join(&rel);
        if ty.is_dir() {
            fs::create_dir_all(&out).map_err(io("create", &out))?;
        } else if ty.is_file() {
            total += entry.size();
            if total > MAX_UNPACKED {
                return Err(bad(format!("unpacks to more than {MAX_UNPACKED} bytes")));
            }
            if let Some(parent) = out.parent() {
                fs::create_dir_all(parent).map_err(io("create", parent))?;
            }
            let mut f = fs::File::create(&out).map_err(io("create", &out))?;
            std::io::copy(&mut entry, &mut f).map_err(|e| bad(format!("{rel}: {e}")))?;
            let mode = entry.header().mode().unwrap_or(0o644);
            fs::set_permissions(&out, fs::Permissions::from_mode(mode & 0o755))
                .map_err(io("chmod", &out))?;
            f.sync_all().map_err(io("fsync", &out))?;
        } else {
            return Err(bad(format!(
                "{rel:?}: only files and directories are allowed"
            )));
        }
    }
    Ok(())
}
