//! Snapshots: a captured process's state plus its pages in the store.
//!
//! A snapshot is a manifest in the store's `THAWSNAP` container (see
//! [`crate::store::write_manifest`]) whose payload is a [`Snapshot`], and a
//! root in the page store (same id) that keeps its pages alive through gc.
//!
//! ```text
//! <snapshots_dir>/<id>.snapshot     THAWSNAP container, payload = Snapshot:
//!   format                          SNAPSHOT_FORMAT
//!   id, created_ms                  name and Unix time of the capture (ms)
//!   timings                         where the capture's time went (µs)
//!   state                           ProcessState (registers, signals, areas, fds ...)
//!                                   of the captured process (the tree's root)
//!   areas[]                         per memory area its AreaPages (zero / file / hashes)
//!   children[]                      the other processes of its tree, parents before
//!                                   their children: per process its state and areas[]
//!   depends                         what its copies depend on (format 4; `None` when
//!                                   read from a format 3 manifest): mapped files by
//!                                   content, CPU features, vDSO, clocks
//!                                   (crate::state::depends)
//! <store>/roots/<id>                the store root (written first): the page lists
//!                                   of every area of every process, the root's first
//!                                   and then each child's in `children` order (the
//!                                   image lays them out in that order)
//! ```
//!
//! A manifest of another format is refused by its number before the rest
//! is decoded (format 2 had no `children`), except format 3, which is
//! format 4 without `depends`: it is read, and its copies are restored
//! without the dependency checks (only what format 3 checked).
//!
//! The root is committed before the manifest is written (atomically): a
//! crash in between leaves a root without a manifest (gc keeps its pages
//! until the root is removed) and never a manifest whose pages may be gone.
//!
//! The self-contained directory form ([`snapshot_to_dir`], what
//! `thaw snapshot --pid PID --out DIR` writes) carries its own store:
//!
//! ```text
//! DIR/store/                        a page store holding just this snapshot's pages
//! DIR/snapshot.snapshot             the manifest, id "snapshot"
//! ```

use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::capture::depends::DependsError;
use crate::capture::tree::capture_tree_timed;
use crate::capture::{capture_timed, CaptureError, CaptureOptions};
use crate::state::{Dependencies, ProcessState, MAX_PROCESSES};
use crate::store::{
    area_pages, check_manifest, read_checked_manifest, write_manifest, AreaPages, AreaPagesError,
    CheckedManifest, CommitError, InvalidSnapshotId, OpenError, PageStore, ReadManifestError,
    StoreSink, WriteManifestError, WriterError, DEFAULT_MANIFEST_LIMIT,
};

/// Version of the [`Snapshot`] payload; bump on any incompatible change.
/// Format 2: directory and device descriptors carry an identity.
/// Format 3: process trees (`children`, and `ProcessState::ids`).
/// Format 4: `depends` (what the copies depend on, issue 18).
pub const SNAPSHOT_FORMAT: u32 = 4;
/// The older format this build still reads ([`SnapshotV3`]).
const FORMAT_3: u32 = 3;
/// Id of the snapshot in a self-contained snapshot directory.
pub const DIR_SNAPSHOT_ID: &str = "snapshot";
/// Extension of manifest files.
const EXTENSION: &str = "snapshot";

/// Where the time of taking a snapshot went, in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotTimings {
    /// Seize, interrupt, wait for the stop.
    pub stop_us: u64,
    /// Reading thread and process state.
    pub state_us: u64,
    /// Finding the private pages.
    pub scan_us: u64,
    /// Reading and storing the pages.
    pub pages_us: u64,
    /// Detaching.
    pub detach_us: u64,
    /// Committing the store and writing the manifest.
    pub commit_us: u64,
    /// Everything.
    pub total_us: u64,
}

/// The payload of a snapshot manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// [`SNAPSHOT_FORMAT`] at creation.
    pub format: u32,
    /// The snapshot id (also the store root's name).
    pub id: String,
    /// Unix time of the capture in milliseconds.
    pub created_ms: u64,
    /// Where the capture's time went.
    pub timings: SnapshotTimings,
    /// Everything about the process except page contents.
    pub state: ProcessState,
    /// For each of `state.areas`, where each page comes from.
    pub areas: Vec<AreaPages>,
    /// The captured process's descendants, parents before their children
    /// (empty for a single process).
    pub children: Vec<ChildProcess>,
    /// What its copies depend on; `None` for a format 3 manifest.
    pub depends: Option<Dependencies>,
}

/// A format 3 payload: [`Snapshot`] without `depends`.
#[derive(Deserialize)]
struct SnapshotV3 {
    format: u32,
    id: String,
    created_ms: u64,
    timings: SnapshotTimings,
    state: ProcessState,
    areas: Vec<AreaPages>,
    children: Vec<ChildProcess>,
}

impl From<SnapshotV3> for Snapshot {
    fn from(v: SnapshotV3) -> Snapshot {
        Snapshot {
            format: v.format,
            id: v.id,
            created_ms: v.created_ms,
            timings: v.timings,
            state: v.state,
            areas: v.areas,
            children: v.children,
            depends: None,
        }
    }
}

/// One process of a tree other than its root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChildProcess {
    /// Everything about the process except page contents.
    pub state: ProcessState,
    /// For each of `state.areas`, where each page comes from.
    pub areas: Vec<AreaPages>,
}

impl Snapshot {
    /// Every process of the snapshot, the root first, then the children in
    /// order: its state and its areas' page lists.
    pub fn processes(&self) -> impl Iterator<Item = (&ProcessState, &[AreaPages])> + '_ {
        std::iter::once((&self.state, self.areas.as_slice()))
            .chain(self.children.iter().map(|c| (&c.state, c.areas.as_slice())))
    }

    /// Index of the first area of process `index` (0 the root) in the
    /// store root's and the image's list of areas.
    pub fn area_base(&self, index: usize) -> usize {
        self.processes()
            .take(index)
            .map(|(s, _)| s.areas.len())
            .sum()
    }
}

/// The first field of every format's payload.
#[derive(Deserialize)]
struct FormatOnly {
    format: u32,
}

/// A summary of a snapshot just taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotInfo {
    /// The id.
    pub id: String,
    /// Where the manifest was written.
    pub manifest: PathBuf,
    /// Processes (1 unless the process had children).
    pub processes: usize,
    /// Memory areas (of every process).
    pub areas: usize,
    /// Non-zero private pages captured.
    pub stored_pages: u64,
    /// Of which new to the store.
    pub new_pages: u64,
    /// Zero pages (not stored).
    pub zero_pages: u64,
    /// Where the time went.
    pub timings: SnapshotTimings,
}

/// Why a snapshot could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The id cannot name a file.
    #[error(transparent)]
    InvalidId(#[from] InvalidSnapshotId),
    /// The store could not be opened.
    #[error(transparent)]
    Open(#[from] OpenError),
    /// The store's writer could not be had.
    #[error(transparent)]
    Writer(#[from] WriterError),
    /// The capture failed or was refused.
    #[error(transparent)]
    Capture(#[from] CaptureError),
    /// A captured area's page runs and stored pages disagree.
    #[error(transparent)]
    AreaPages(#[from] AreaPagesError),
    /// Committing the pages and the root failed.
    #[error(transparent)]
    Commit(#[from] CommitError),
    /// Writing the manifest failed.
    #[error(transparent)]
    Manifest(#[from] WriteManifestError),
    /// What the copies depend on could not be read.
    #[error(transparent)]
    Depends(#[from] DependsError),
    /// A directory could not be created.
    #[error("cannot create {}: {source}", path.display())]
    Dir {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// Why a snapshot could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadSnapshotError {
    /// The id cannot name a file.
    #[error(transparent)]
    InvalidId(#[from] InvalidSnapshotId),
    /// The manifest is missing, corrupt or from another version.
    #[error(transparent)]
    Manifest(#[from] ReadManifestError),
    /// The manifest is of a format this build does not read (a newer
    /// thaw's when `format` > [`SNAPSHOT_FORMAT`]).
    #[error("snapshot {}: {}", path.display(), format_refusal(*format))]
    Format {
        /// The manifest.
        path: PathBuf,
        /// Its format.
        format: u32,
    },
    /// The manifest decodes but is not a usable snapshot.
    #[error("snapshot {}: {what}", path.display())]
    Invalid {
        /// The manifest.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// The snapshot directory's store could not be opened.
    #[error(transparent)]
    Open(#[from] OpenError),
}

/// Path of the manifest of snapshot `id` in `snapshots_dir`.
pub fn manifest_path(snapshots_dir: &Path, id: &str) -> PathBuf {
    snapshots_dir.join(format!("{id}.{EXTENSION}"))
}

fn micros(d: std::time::Duration) -> u64 {
    d.as_micros() as u64
}

/// Captures `pid` into `store` as snapshot `id` and writes its manifest to
/// `snapshots_dir`. The process keeps running.
pub fn take_snapshot(
    pid: i32,
    store: &PageStore,
    snapshots_dir: &Path,
    id: &str,
    options: &CaptureOptions,
) -> Result<SnapshotInfo, SnapshotError> {
    crate::store::validate_snapshot_id(id)?;
    let started = Instant::now();
    std::fs::create_dir_all(snapshots_dir).map_err(|source| SnapshotError::Dir {
        path: snapshots_dir.to_path_buf(),
        source,
    })?;
    let mut writer = store.writer()?;
    let mut sink = StoreSink::new(&mut writer);
    let (mut states, capture) = if options.tree {
        capture_tree_timed(pid, options, &mut sink)?
    } else {
        let (state, timings) = capture_timed(pid, options, &mut sink)?;
        (vec![state], timings)
    };
    let stored = sink.into_stored();
    let mut base = 0;
    let mut page_lists = Vec::with_capacity(states.len());
    for state in &states {
        let areas = state
            .areas
            .iter()
            .enumerate()
            .map(|(i, area)| area_pages(area, stored.get(base + i).map_or(&[], |v| v.as_slice())))
            .collect::<Result<Vec<_>, _>>()?;
        base += state.areas.len();
        page_lists.push(areas);
    }
    let all_areas: Vec<AreaPages> = page_lists.iter().flatten().cloned().collect();
    let committing = Instant::now();
    let summary = writer.commit_snapshot(id, &all_areas)?;
    let mut page_lists = page_lists.into_iter();
    let areas = page_lists.next().expect("the root's areas");
    let children: Vec<ChildProcess> = states
        .drain(1..)
        .zip(page_lists)
        .map(|(state, areas)| ChildProcess { state, areas })
        .collect();
    let state = states.pop().expect("the root's state");
    // The processes still run (the capture detached): their files are read
    // through /proc, hashed once per version of the file (cache in the
    // store's directory).
    let processes: Vec<&ProcessState> = std::iter::once(&state)
        .chain(children.iter().map(|c| &c.state))
        .collect();
    let depends = crate::capture::depends::record(&processes, pid, Some(store.dir()))?;
    let mut snapshot = Snapshot {
        format: SNAPSHOT_FORMAT,
        id: id.to_string(),
        created_ms: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0),
        timings: SnapshotTimings {
            stop_us: micros(capture.stop),
            state_us: micros(capture.state),
            scan_us: micros(capture.scan),
            pages_us: micros(capture.pages),
            detach_us: micros(capture.detach),
            commit_us: 0,
            total_us: 0,
        },
        state,
        areas,
        children,
        depends: Some(depends),
    };
    snapshot.timings.commit_us = micros(committing.elapsed());
    snapshot.timings.total_us = micros(started.elapsed());
    let manifest = manifest_path(snapshots_dir, id);
    write_manifest(&manifest, &snapshot)?;
    Ok(SnapshotInfo {
        id: id.to_string(),
        manifest,
        processes: 1 + snapshot.children.len(),
        areas: all_areas.len(),
        stored_pages: snapshot.processes().map(|(s, _)| s.stored_pages()).sum(),
        new_pages: summary.new_objects,
        zero_pages: snapshot.processes().map(|(s, _)| s.zero_pages()).sum(),
        timings: snapshot.timings,
    })
}

/// Loads the manifest of snapshot `id` from `snapshots_dir` and checks that
/// its parts agree.
pub fn load_snapshot(snapshots_dir: &Path, id: &str) -> Result<Snapshot, LoadSnapshotError> {
    crate::store::validate_snapshot_id(id)?;
    let path = manifest_path(snapshots_dir, id);
    let manifest = read_checked_manifest(&path, DEFAULT_MANIFEST_LIMIT)?;
    decode_snapshot(&manifest, id, &path)
}

/// Decodes the manifest bytes of snapshot `id` held in memory (`path` only
/// names it in errors) and checks them as [`load_snapshot`] does. The pure
/// entry point the fuzz targets drive.
pub fn parse_snapshot(bytes: &[u8], id: &str, path: &Path) -> Result<Snapshot, LoadSnapshotError> {
    let manifest = check_manifest(bytes, path, DEFAULT_MANIFEST_LIMIT)?;
    decode_snapshot(&manifest, id, path)
}

/// Decodes a checked manifest as a snapshot of a format this build reads
/// (its format field first, then the whole payload once), and checks it.
fn decode_snapshot(
    manifest: &CheckedManifest<'_>,
    id: &str,
    path: &Path,
) -> Result<Snapshot, LoadSnapshotError> {
    let format: FormatOnly = manifest.decode()?;
    check_format(format.format, path)?;
    let snapshot: Snapshot = if format.format == FORMAT_3 {
        manifest.decode::<SnapshotV3>()?.into()
    } else {
        manifest.decode()?
    };
    check_snapshot(snapshot, id, path)
}

/// Refuses a manifest of another format than this build's (or format 3).
fn check_format(format: u32, path: &Path) -> Result<(), LoadSnapshotError> {
    if format != SNAPSHOT_FORMAT && format != FORMAT_3 {
        return Err(LoadSnapshotError::Format {
            path: path.to_path_buf(),
            format,
        });
    }
    Ok(())
}

/// Why a manifest of `format` is not read: "format N (this build reads 3
/// and 4)". A newer format than this build's is a snapshot of a newer thaw.
pub fn format_refusal(format: u32) -> String {
    let newer = if format > SNAPSHOT_FORMAT {
        ", a newer thaw's"
    } else {
        ""
    };
    format!("format {format}{newer} (this build reads {FORMAT_3} and {SNAPSHOT_FORMAT})")
}

/// Checks that a decoded snapshot is snapshot `id` of this build's format
/// and that its parts agree: areas page-aligned, in address order and not
/// overlapping, their page runs inside them, and one page list per area of
/// as many pages.
pub fn check_snapshot(
    snapshot: Snapshot,
    id: &str,
    path: &Path,
) -> Result<Snapshot, LoadSnapshotError> {
    let invalid = |what: String| LoadSnapshotError::Invalid {
        path: path.to_path_buf(),
        what,
    };
    // Format 3 comes without `depends`, format 4 with it.
    let expected = if snapshot.depends.is_some() {
        SNAPSHOT_FORMAT
    } else {
        FORMAT_3
    };
    if snapshot.format == SNAPSHOT_FORMAT && expected == FORMAT_3 {
        return Err(invalid(format!(
            "format {SNAPSHOT_FORMAT} without what its copies depend on"
        )));
    }
    if snapshot.format != expected {
        return Err(LoadSnapshotError::Format {
            path: path.to_path_buf(),
            format: snapshot.format,
        });
    }
    if snapshot.id != id {
        return Err(invalid(format!("names snapshot {:?}", snapshot.id)));
    }
    if snapshot.children.len() + 1 > MAX_PROCESSES {
        return Err(invalid(format!(
            "{} processes (at most {MAX_PROCESSES})",
            snapshot.children.len() + 1
        )));
    }
    let mut pids: Vec<i32> = Vec::new();
    for (state, areas) in snapshot.processes() {
        if pids.contains(&state.pid) {
            return Err(invalid(format!("process {} twice", state.pid)));
        }
        if !pids.is_empty() && !pids.contains(&state.ids.ppid) {
            return Err(invalid(format!(
                "process {}: its parent {} is not a process before it",
                state.pid, state.ids.ppid
            )));
        }
        pids.push(state.pid);
        check_areas(state, areas).map_err(|what| {
            invalid(if pids.len() == 1 {
                what
            } else {
                format!("process {}: {what}", state.pid)
            })
        })?;
    }
    Ok(snapshot)
}

/// Checks that `areas` are the page lists of `state.areas` (see
/// [`check_snapshot`]).
fn check_areas(state: &ProcessState, areas: &[AreaPages]) -> Result<(), String> {
    if areas.len() != state.areas.len() {
        return Err(format!(
            "{} page lists for {} areas",
            areas.len(),
            state.areas.len()
        ));
    }
    let page = crate::store::PAGE_SIZE as u64;
    let mut previous_end = 0;
    for (area, pages) in state.areas.iter().zip(areas) {
        let range = format!("area {:#x}-{:#x}", area.start, area.end);
        if area.end < area.start {
            return Err(format!("{range} ends before it starts"));
        }
        if area.start % page != 0 || area.end % page != 0 {
            return Err(format!("{range} is not page-aligned"));
        }
        // As /proc/PID/maps lists them: in address order, never overlapping
        // (which also bounds every sum of pages below by 2^52).
        if area.start < previous_end {
            return Err(format!("{range} overlaps or precedes the area before it"));
        }
        previous_end = area.end;
        let runs_inside = area.pages.iter().all(|run| {
            run.first
                .checked_add(run.count)
                .is_some_and(|end| end <= area.page_count())
        });
        if !runs_inside {
            return Err(format!("{range} has a page run outside it"));
        }
        let listed = pages.checked_page_count();
        if listed != Some(area.page_count()) {
            return Err(format!(
                "{range} has {} pages but its list {}",
                area.page_count(),
                listed.map_or("more than 2^64".to_string(), |n| n.to_string())
            ));
        }
    }
    Ok(())
}

/// Captures `pid` into a new self-contained snapshot directory `out_dir`
/// (its own store in `out_dir/store`, manifest id [`DIR_SNAPSHOT_ID`]).
/// A process with children is captured with its whole tree.
pub fn snapshot_to_dir(pid: i32, out_dir: &Path) -> Result<SnapshotInfo, SnapshotError> {
    let options = CaptureOptions {
        tree: true,
        ..CaptureOptions::default()
    };
    snapshot_to_dir_with(pid, out_dir, &options)
}

/// [`snapshot_to_dir`] with capture options.
pub fn snapshot_to_dir_with(
    pid: i32,
    out_dir: &Path,
    options: &CaptureOptions,
) -> Result<SnapshotInfo, SnapshotError> {
    let store_dir = out_dir.join("store");
    std::fs::create_dir_all(&store_dir).map_err(|source| SnapshotError::Dir {
        path: store_dir.clone(),
        source,
    })?;
    let store = PageStore::open(&store_dir)?;
    take_snapshot(pid, &store, out_dir, DIR_SNAPSHOT_ID, options)
}

/// Opens a snapshot directory written by [`snapshot_to_dir`]: its manifest
/// and its store.
pub fn open_snapshot_dir(dir: &Path) -> Result<(Snapshot, PageStore), LoadSnapshotError> {
    let snapshot = load_snapshot(dir, DIR_SNAPSHOT_ID)?;
    let store = PageStore::open(dir.join("store"))?;
    Ok((snapshot, store))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{encode_manifest, PageRun};

    /// A real manifest: the fuzz corpus's seed, a captured `sleep` (its
    /// first byte is the fuzz target's mode byte).
    /// The seed is a format 3 manifest: read as format 4 without
    /// `depends`; here given some, as this build writes them.
    fn seed() -> Snapshot {
        let mut s = seed_v3();
        s.format = SNAPSHOT_FORMAT;
        s.depends = Some(Dependencies {
            files: vec![crate::state::FileContent {
                path: "/usr/bin/sleep".into(),
                size: 1,
                blake3: [7; 32],
            }],
            cpu: crate::state::CpuFeatures {
                xcr0: 7,
                xsave_size: 832,
                features: vec!["avx2".into()],
            },
            vdso: crate::state::VdsoImage {
                size: 8192,
                blake3: [1; 32],
            },
            clocks: crate::state::Clocks {
                monotonic_ns: 5,
                boottime_ns: 6,
            },
        });
        s
    }

    fn seed_v3() -> Snapshot {
        let bytes = include_bytes!("../../fuzz/corpus/snapshot_manifest/seed-sleep");
        parse_snapshot(&bytes[1..], DIR_SNAPSHOT_ID, Path::new("seed")).unwrap()
    }

    /// A format 3 manifest is still read, without dependencies; a format 4
    /// one must have them.
    #[test]
    fn format_3_is_read_without_depends() {
        let s = seed_v3();
        assert_eq!(s.format, 3);
        assert!(s.depends.is_none());
        let mut s = seed();
        s.depends = None;
        let err = reload(&s).unwrap_err().to_string();
        assert!(
            err.contains("format 4 without what its copies depend on"),
            "{err}"
        );
    }

    fn reload(snapshot: &Snapshot) -> Result<Snapshot, LoadSnapshotError> {
        let bytes = encode_manifest(snapshot).unwrap();
        parse_snapshot(&bytes, DIR_SNAPSHOT_ID, Path::new("forged"))
    }

    /// A manifest file loads as its bytes parse, in both formats read, and
    /// a damaged one is refused by its checksum.
    #[test]
    fn a_manifest_file_loads_as_its_bytes_parse() {
        let dir = tempfile::tempdir().unwrap();
        let path = manifest_path(dir.path(), DIR_SNAPSHOT_ID);
        let v3 = include_bytes!("../../fuzz/corpus/snapshot_manifest/seed-sleep");
        let v4 = encode_manifest(&seed()).unwrap();
        for bytes in [&v3[1..], &v4[..]] {
            std::fs::write(&path, bytes).unwrap();
            let loaded = load_snapshot(dir.path(), DIR_SNAPSHOT_ID).unwrap();
            assert_eq!(
                loaded,
                parse_snapshot(bytes, DIR_SNAPSHOT_ID, &path).unwrap()
            );
            let mut damaged = bytes.to_vec();
            *damaged.last_mut().unwrap() ^= 1;
            std::fs::write(&path, &damaged).unwrap();
            let err = load_snapshot(dir.path(), DIR_SNAPSHOT_ID)
                .unwrap_err()
                .to_string();
            assert!(err.contains("checksum mismatch"), "{err}");
        }
    }

    #[test]
    fn the_seed_loads_and_reencodes() {
        let s = seed();
        assert!(!s.state.areas.is_empty());
        assert_eq!(reload(&s).unwrap(), s);
    }

    /// An area that ends before it starts made `page_count` underflow (a
    /// panic in debug builds, a huge count in release).
    #[test]
    fn an_area_ending_before_its_start_is_refused() {
        let mut s = seed();
        s.state.areas[0].end = s.state.areas[0].start - 4096;
        let err = reload(&s).unwrap_err().to_string();
        assert!(err.contains("ends before it starts"), "{err}");
    }

    #[test]
    fn overlapping_or_unaligned_areas_are_refused() {
        let mut s = seed();
        s.state.areas[1].start = s.state.areas[0].start;
        let err = reload(&s).unwrap_err().to_string();
        assert!(err.contains("overlaps"), "{err}");
        let mut s = seed();
        s.state.areas[0].end += 1;
        let err = reload(&s).unwrap_err().to_string();
        assert!(err.contains("not page-aligned"), "{err}");
        let mut s = seed();
        let area = &mut s.state.areas[0];
        area.pages.push(snapshotter_run(u64::MAX, 2));
        let err = reload(&s).unwrap_err().to_string();
        assert!(err.contains("page run outside it"), "{err}");
    }

    fn snapshotter_run(first: u64, count: u64) -> crate::state::PageRun {
        crate::state::PageRun {
            first,
            count,
            kind: crate::state::PageRunKind::Zero,
        }
    }

    /// A manifest of an earlier format (before trees) ends where format 3
    /// goes on: it is refused by its number, before the rest is decoded.
    #[test]
    fn another_format_is_refused_by_its_number() {
        let old = encode_manifest(&(2u32, "snapshot".to_string())).unwrap();
        let err = parse_snapshot(&old, DIR_SNAPSHOT_ID, Path::new("old"))
            .unwrap_err()
            .to_string();
        assert_eq!(err, "snapshot old: format 2 (this build reads 3 and 4)");
        let mut s = seed();
        s.format = 5;
        let err = reload(&s).unwrap_err().to_string();
        assert!(
            err.contains("format 5, a newer thaw's (this build reads 3 and 4)"),
            "{err}"
        );
    }

    /// A child must come after its parent, and no pid twice.
    #[test]
    fn a_tree_out_of_order_is_refused() {
        let root = seed();
        let mut child = ChildProcess {
            state: root.state.clone(),
            areas: root.areas.clone(),
        };
        child.state.pid = root.state.pid + 1;
        child.state.threads[0].tid = child.state.pid;
        child.state.ids.ppid = root.state.pid + 7;
        let mut s = root.clone();
        s.children.push(child.clone());
        let err = reload(&s).unwrap_err().to_string();
        assert!(
            err.contains("its parent") && err.contains("is not a process before it"),
            "{err}"
        );
        child.state.ids.ppid = root.state.pid;
        let mut s = root.clone();
        s.children.push(child.clone());
        assert_eq!(reload(&s).unwrap().children.len(), 1);
        s.children.push(child);
        let err = reload(&s).unwrap_err().to_string();
        assert!(err.contains("twice"), "{err}");
    }

    /// Page runs whose lengths add up past u64::MAX overflowed the sum.
    #[test]
    fn page_runs_that_overflow_are_refused() {
        let mut s = seed();
        let runs = vec![PageRun::Zero(u64::MAX), PageRun::File(2)];
        s.areas[0] = bincode::deserialize(&bincode::serialize(&runs).unwrap()).unwrap();
        let err = reload(&s).unwrap_err().to_string();
        assert!(err.contains("more than 2^64"), "{err}");
    }
}
