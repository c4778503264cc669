//! Taking a version's snapshot after its warm-up: capture the idle runtime
//! into the page store ([`snapshotter::snapshot`]) and keep a summary in the
//! version's record.
//!
//! ```text
//! <data>/store/                          the content-addressed page store (one per installation)
//! <data>/snapshots/<id>.snapshot         the captured state and per-area page lists
//! ```
//!
//! The snapshot id names the function, version and deployment, so a root in
//! the store always belongs to exactly one version; deleting the function
//! removes its roots and `thaw store gc` frees the pages nothing else uses.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use snapshotter::capture::CaptureOptions;
use snapshotter::snapshot::{manifest_path, take_snapshot};
use snapshotter::store::PageStore;

/// A snapshot as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SnapshotInfo {
    /// Id.
    pub id: String,
    /// Unix time of the capture, ms.
    pub created_ms: u64,
    /// Memory areas.
    pub areas: usize,
    /// Pages of private memory stored (not zero, not file-backed).
    pub stored_pages: u64,
    /// Of which new to the store.
    pub new_pages: u64,
    /// Zero pages (not stored).
    pub zero_pages: u64,
    /// Time the capture took, µs (stop to detach, pages written).
    pub capture_us: u64,
}

/// Errors of taking a snapshot.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The runtime process could not be found in its sandbox.
    #[error("the runtime process of the instance was not found")]
    NoProcess,
    /// The capture refused or failed, or the store could not take it.
    #[error(transparent)]
    Take(#[from] snapshotter::snapshot::SnapshotError),
    /// The capture task died.
    #[error("capture task: {0}")]
    Task(String),
}

/// The snapshot id of a version.
pub fn snapshot_id(name: &str, version: u64, uid: u64) -> String {
    format!("{name}-v{version}-{uid:016x}")
}

/// Where snapshot files live.
pub fn snapshots_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("snapshots")
}

/// Captures `pid` into the store as snapshot `id` and writes its manifest.
/// Blocking: run it on a blocking thread. The process keeps running.
/// `connections`: the spec's `on_snapshot_connections`.
pub fn take(
    store: &PageStore,
    dir: &Path,
    id: &str,
    pid: i32,
    connections: snapshotter::capture::ConnectionPolicy,
) -> Result<SnapshotInfo, SnapshotError> {
    // Functions run under thaw's seccomp policy: the one filter accepted.
    // A function whose init started helper processes is captured with them
    // (issue 14: restored as a tree in the copy's sandbox); what a tree
    // cannot have (a zombie, a CLONE_VM child, other credentials, ...) is
    // refused with its reason, and the function keeps booting.
    let options = CaptureOptions {
        seccomp_filters: vec![pool::sandbox::seccomp::program_bytes()],
        tree: true,
        connections,
        ..CaptureOptions::default()
    };
    let info = take_snapshot(pid, store, dir, id, &options)?;
    Ok(SnapshotInfo {
        id: info.id,
        created_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0),
        areas: info.areas,
        stored_pages: info.stored_pages,
        new_pages: info.new_pages,
        zero_pages: info.zero_pages,
        capture_us: info.timings.total_us,
    })
}

/// Removes a snapshot's manifest and store root (its pages are freed by the
/// next gc).
pub fn remove(store: &PageStore, dir: &Path, id: &str) {
    let _ = std::fs::remove_file(manifest_path(dir, id));
    let _ = std::fs::remove_file(pool::restore::working_set::path(dir, id));
    let _ = std::fs::remove_file(pool::restore::working_set::fetch_path(dir, id));
    if let Err(e) = store.remove_snapshot(id) {
        tracing::warn!(snapshot = %id, error = %e, "removing the snapshot root failed");
    }
}
