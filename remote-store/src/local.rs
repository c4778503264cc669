//! A snapshot in a node's data directory (or a `thaw snapshot` directory):
//! the page store, the manifest, the working set.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use snapshotter::store::PageStore;

/// Where a snapshot lives locally.
#[derive(Clone, Debug)]
pub struct LocalSnapshot {
    /// The page store holding its pages (and its root).
    pub store: Arc<PageStore>,
    /// The folder of its manifest (`<id>.snapshot`).
    pub snapshots_dir: PathBuf,
    /// Its id (manifest and root name).
    pub id: String,
    /// Its recorded working set file (may not exist).
    pub working_set: PathBuf,
}

impl LocalSnapshot {
    /// The manifest's path.
    pub fn manifest(&self) -> PathBuf {
        snapshotter::snapshot::manifest_path(&self.snapshots_dir, &self.id)
    }
}

/// Writes `bytes` to `path` atomically (temporary file, fsync, rename,
/// fsync of the directory), as a 0600 file.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        path.file_name().unwrap_or_default().to_string_lossy(),
        std::process::id()
    ));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}
