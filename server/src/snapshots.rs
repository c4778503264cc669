//! Taking a version's snapshot after its warm-up: capture the idle runtime
//! into the page store and keep its state beside it.
//!
//! ```text
//! <data>/store/                       the content-addressed page store (one per installation)
//! <data>/snapshots/<id>.snap          the captured state and per-area page lists (a store manifest)
//! ```
//!
//! The snapshot id names the function, version and deployment, so a root in
//! the store always belongs to exactly one version; deleting the function
//! removes its roots and `thaw store gc` frees the pages nothing else uses.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use snapshotter::capture::{capture_timed, CaptureOptions};
use snapshotter::state::ProcessState;
use snapshotter::store::{area_pages, AreaPages, PageStore, StoreSink};

/// Format version of `<id>.snap` payloads.
pub const SNAPSHOT_FORMAT: u32 = 1;

/// What a snapshot file holds.
#[derive(Debug, Serialize, Deserialize)]
pub struct SnapshotFile {
    /// [`SNAPSHOT_FORMAT`].
    pub format: u32,
    /// Snapshot id (also the store root's name).
    pub id: String,
    /// Everything but page contents.
    pub state: ProcessState,
    /// Per memory area, where each page comes from.
    pub areas: Vec<AreaPages>,
}

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
    /// The capture refused or failed.
    #[error(transparent)]
    Capture(#[from] snapshotter::capture::CaptureError),
    /// Writing to the store failed.
    #[error("page store: {0}")]
    Store(String),
}

/// The snapshot id of a version.
pub fn snapshot_id(name: &str, version: u64, uid: u64) -> String {
    format!("{name}-v{version}-{uid:016x}")
}

/// Where snapshot files live.
pub fn snapshots_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("snapshots")
}

/// Captures `pid` into the store as snapshot `id` and writes its state file.
/// Blocking: run it on a blocking thread. The process keeps running.
pub fn take(
    store: &PageStore,
    dir: &Path,
    id: &str,
    pid: i32,
) -> Result<SnapshotInfo, SnapshotError> {
    let started = Instant::now();
    let store_err = |e: &dyn std::fmt::Display| SnapshotError::Store(e.to_string());
    let mut writer = store.writer().map_err(|e| store_err(&e))?;
    let mut sink = StoreSink::new(&mut writer);
    let (state, _timings) = capture_timed(pid, &CaptureOptions::default(), &mut sink)?;
    let stored = sink.into_stored();
    let areas: Vec<AreaPages> = state
        .areas
        .iter()
        .enumerate()
        .map(|(i, area)| area_pages(area, stored.get(i).map_or(&[], |v| v.as_slice())))
        .collect::<Result<_, _>>()
        .map_err(|e| store_err(&e))?;
    std::fs::create_dir_all(dir).map_err(|e| store_err(&e))?;
    let file = SnapshotFile {
        format: SNAPSHOT_FORMAT,
        id: id.to_string(),
        state,
        areas,
    };
    // The state file first, then the root: a crash in between leaves a state
    // file without a root, which is never used (restores need both).
    snapshotter::store::write_manifest(&dir.join(format!("{id}.snap")), &file)
        .map_err(|e| store_err(&e))?;
    let summary = writer
        .commit_snapshot(id, &file.areas)
        .map_err(|e| store_err(&e))?;
    Ok(SnapshotInfo {
        id: id.to_string(),
        created_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0),
        areas: file.areas.len(),
        stored_pages: summary.pages - summary.zero_pages,
        new_pages: summary.new_objects,
        zero_pages: summary.zero_pages,
        capture_us: started.elapsed().as_micros() as u64,
    })
}

/// Removes a snapshot's state file and store root (its pages are freed by
/// the next gc).
pub fn remove(store: &PageStore, dir: &Path, id: &str) {
    let _ = std::fs::remove_file(dir.join(format!("{id}.snap")));
    if let Err(e) = store.remove_snapshot(id) {
        tracing::warn!(snapshot = %id, error = %e, "removing the snapshot root failed");
    }
}
