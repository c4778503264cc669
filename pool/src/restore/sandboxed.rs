//! Restoring copies inside thaw's sandboxes: the bridge between the pool
//! (which makes a stub sandbox, see [`crate::sandbox::SandboxSpec::stub`])
//! and the restorer.
//!
//! ```text
//! prepare   load the snapshot (cached), open its image and every file it maps
//! launch    the pool starts a stub sandbox holding those descriptors at the
//!           plan's numbers (fds 0-4 are the sandbox's own: logs, protocol)
//! finish    restore_into(stub): the stub becomes the copy, pid 2 as captured
//! ```

use std::collections::HashMap;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use snapshotter::snapshot::{load_snapshot, Snapshot};
use snapshotter::store::PageStore;

use super::fds::PathMap;
use super::{
    prepare_mapped, restore_into, Mode, Prepared, RestoreError, RestoreOptions, RestoreTimings,
};

/// Restores snapshots of one installation into sandbox stubs.
#[derive(Debug)]
pub struct SnapshotRestorer {
    snapshots_dir: PathBuf,
    store: Arc<PageStore>,
    cache: Mutex<HashMap<String, Arc<Snapshot>>>,
    devnull: OwnedFd,
}

/// A restore made ready before its stub exists.
#[derive(Debug)]
pub struct PreparedCopy {
    snapshot: Arc<Snapshot>,
    prepared: Prepared,
}

impl PreparedCopy {
    /// The descriptors the stub sandbox must hold, at these numbers (all 5
    /// and up: 0-4 are the sandbox's own).
    pub fn fds(&self) -> Vec<(BorrowedFd<'_>, i32)> {
        self.prepared
            .moves()
            .iter()
            .filter(|(_, n)| *n >= 5)
            .map(|(raw, n)| {
                // SAFETY: `raw` is an fd owned by `self.prepared` (its plan
                // holds it open), which outlives the returned borrows.
                (unsafe { BorrowedFd::borrow_raw(*raw) }, *n)
            })
            .collect()
    }
}

impl SnapshotRestorer {
    /// Restores snapshots whose manifests are in `snapshots_dir` and whose
    /// pages are in `store`.
    pub fn new(snapshots_dir: PathBuf, store: Arc<PageStore>) -> std::io::Result<SnapshotRestorer> {
        let devnull = std::fs::File::open("/dev/null")?.into();
        Ok(SnapshotRestorer {
            snapshots_dir,
            store,
            cache: Mutex::new(HashMap::new()),
            devnull,
        })
    }

    fn snapshot(&self, id: &str) -> Result<Arc<Snapshot>, RestoreError> {
        if let Some(s) = self.cache.lock().unwrap().get(id) {
            return Ok(s.clone());
        }
        let s = Arc::new(load_snapshot(&self.snapshots_dir, id)?);
        self.cache.lock().unwrap().insert(id.to_string(), s.clone());
        Ok(s)
    }

    /// Forgets a snapshot (it was deleted or is being rebuilt).
    pub fn forget(&self, id: &str) {
        self.cache.lock().unwrap().remove(id);
    }

    /// Loads the snapshot and opens everything its copy needs. Blocking.
    pub fn prepare(&self, id: &str) -> Result<PreparedCopy, RestoreError> {
        self.prepare_mapped(id, &PathMap::default())
    }

    /// [`SnapshotRestorer::prepare`] for a copy whose sandbox mounts some
    /// host directories elsewhere (see `LaunchSpec::host_paths`).
    pub fn prepare_mapped(&self, id: &str, paths: &PathMap) -> Result<PreparedCopy, RestoreError> {
        let snapshot = self.snapshot(id)?;
        // fds 0-4 of the copy are the sandbox's (stdin, log pipes, protocol
        // pipes): stand-ins here, never moved.
        let fds = snapshot
            .state
            .fds
            .iter()
            .filter(|f| f.fd < 5)
            .map(|f| (f.fd, self.devnull.as_fd()))
            .collect();
        let options = options(fds);
        let prepared = prepare_mapped(&snapshot, &self.store, &options, paths)?;
        Ok(PreparedCopy { snapshot, prepared })
    }

    /// Turns the stub (host pid `stub_pid`, holding [`PreparedCopy::fds`])
    /// into the copy. Blocking; ptrace from the calling thread.
    pub fn finish(
        &self,
        copy: &PreparedCopy,
        stub_pid: i32,
    ) -> Result<RestoreTimings, RestoreError> {
        restore_into(
            stub_pid,
            &copy.snapshot,
            &copy.prepared,
            &options(Vec::new()),
        )
    }
}

fn options(fds: Vec<(i32, BorrowedFd<'_>)>) -> RestoreOptions<'_> {
    RestoreOptions {
        mode: Mode::Mmap,
        fds,
        cgroups: Vec::new(),
        prefetch: Vec::new(),
        prefetch_in_background: false,
    }
}
