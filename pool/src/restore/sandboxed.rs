//! Restoring copies inside thaw's sandboxes: the bridge between the pool
//! (which makes a stub sandbox, see [`crate::sandbox::SandboxSpec::stub`])
//! and the restorer.
//!
//! ```text
//! prepare   load the snapshot (cached), open its image, make its kernel
//!           objects; list the files the copy names by path
//! launch    the pool starts a stub sandbox holding those descriptors at the
//!           plan's numbers (fds 0-4 are the sandbox's own: logs, protocol);
//!           the stub opens the listed files itself, inside the sandbox with
//!           the function's credentials (`sandbox::open_files`)
//! adopt     take them back (pidfd_getfd) and check each is the file the
//!           snapshot saw: a host file can never reach a copy
//! finish    restore_into(stub): the stub becomes the copy, pid 2 as captured;
//!           in uffd mode with the snapshot's recorded working set prefetched
//! ```
//!
//! A snapshot of a process tree (a function whose init started a helper
//! process) goes the same way through [`super::tree`]: the stub also holds
//! and opens every child's descriptors (in staging blocks), and `finish`
//! makes the children with their saved pids in the sandbox's pid namespace
//! before it restores each process.
//!
//! A snapshot not in the local store can be restored lazily (issue 18):
//! [`SnapshotRestorer::set_lazy`] names its [`LazyOrigin`], and until
//! [`SnapshotRestorer::clear_lazy`] every copy of it is prepared with its own
//! image and page server over the origin's shared source
//! ([`super::prepare_lazily_for_sandbox`]; a tree: one image, a page server
//! per process, [`super::tree::prepare_tree_lazily_for_sandbox`]), in
//! `uffd` mode, the origin's working set fetched before the resume. A copy
//! prepared now fetches at once ([`SnapshotRestorer::prepare`]); one
//! prepared ahead for a spare ([`SnapshotRestorer::prepare_ahead`]) holds
//! no fetched page until [`PreparedCopy::start_fetch`] (its claim): a store
//! outage before the claim fails that restore before the resume (the cold
//! start boots), never after it.
//!
//! The restorer also keeps each snapshot's working set (see
//! [`super::working_set`]): recorded once, from the first invocation of a
//! `uffd` copy, then prefetched by every later `uffd` copy.

use std::collections::HashMap;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use snapshotter::snapshot::{load_snapshot, Snapshot};
use snapshotter::store::PageStore;

use super::page_source::{CopySource, LazyOrigin};
use super::plans::SnapshotPlans;
use super::working_set;
use super::{
    prepare_for_sandbox, restore_into, CopyServer, Credentials, Mode, Prepared, RestoreError,
    RestoreOptions, RestoreTimings,
};

/// Restores snapshots of one installation into sandbox stubs.
#[derive(Debug)]
pub struct SnapshotRestorer {
    snapshots_dir: PathBuf,
    store: Arc<PageStore>,
    /// Each loaded snapshot, with what its restores compute alike.
    cache: Mutex<HashMap<String, Loaded>>,
    /// Working sets read or recorded (`None`: none, or a corrupt file).
    working_sets: Mutex<HashMap<String, Option<Arc<Vec<u64>>>>>,
    /// Per snapshot: copies that prefetched its working set, and the pages
    /// their page servers filled ahead of faults.
    prefetches: Mutex<HashMap<String, PrefetchStats>>,
    /// Snapshots whose working set could not be written: not retried (one
    /// log line, not one per copy).
    unrecordable: Mutex<std::collections::HashSet<String>>,
    /// Snapshots restored lazily, from elsewhere than the local store.
    lazy: Mutex<HashMap<String, Arc<LazyOrigin>>>,
    devnull: OwnedFd,
}

/// A loaded snapshot and the plans its restores share.
type Loaded = (Arc<Snapshot>, Arc<SnapshotPlans>);

/// How a snapshot's working set was used since the restorer started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PrefetchStats {
    /// `uffd` copies restored with the working set prefetched.
    pub copies: u64,
    /// Pages their page servers filled before the copies resumed.
    pub pages: u64,
}

/// A restore made ready before its stub exists.
#[derive(Debug)]
pub struct PreparedCopy {
    snapshot: Arc<Snapshot>,
    prepared: Preparation,
    /// A lazy copy: its page source.
    lazy: Option<Arc<CopySource>>,
}

/// A single process, or a tree.
#[derive(Debug)]
enum Preparation {
    Process(Prepared),
    Tree(super::tree::PreparedTree),
}

impl PreparedCopy {
    /// Whether this copy restores lazily (made while its snapshot was not
    /// local): it is stale once the restorer restores that snapshot from
    /// the local store ([`SnapshotRestorer::is_lazy`]).
    pub fn is_lazy(&self) -> bool {
        self.lazy.is_some()
    }

    /// A lazy copy: starts fetching the pages it needs before it resumes,
    /// if that has not started ([`SnapshotRestorer::prepare_ahead`]). Quick
    /// (starts a thread); the restore waits for that fetch.
    pub fn start_fetch(&self) {
        let started = match &self.prepared {
            Preparation::Process(p) => p.start_fetch(),
            Preparation::Tree(t) => t.start_fetch(),
        };
        if started {
            // The timeline of a lazy restore (docs/cluster.md).
            tracing::debug!(snapshot = %self.snapshot.id, "lazy restore: the first fetch started");
        }
    }

    /// A single process restored from the local store (not lazily): its
    /// snapshot and what was prepared, for a pre-mapped spare
    /// ([`super::premap`]); anything else is given back.
    pub(crate) fn into_local_process(self) -> Result<(Arc<Snapshot>, Prepared), Box<PreparedCopy>> {
        match self {
            PreparedCopy {
                snapshot,
                prepared: Preparation::Process(p),
                lazy: None,
            } => Ok((snapshot, p)),
            other => Err(Box::new(other)),
        }
    }

    /// Whether this copy could be pre-mapped ([`super::premap`]): a single
    /// process, not lazy.
    pub fn premappable(&self) -> bool {
        self.lazy.is_none() && matches!(self.prepared, Preparation::Process(_))
    }

    /// The files the stub sandbox opens itself, inside the sandbox as the
    /// function (`Sandbox::launch_stub`).
    pub fn open_files(&self) -> Vec<crate::sandbox::open_files::OpenFile> {
        match &self.prepared {
            Preparation::Process(p) => p.open_files(),
            Preparation::Tree(t) => t.open_files(),
        }
    }

    /// The offsets of the copy's time namespace (see
    /// [`super::depends::time_offsets`]).
    pub fn time_offsets(&self) -> Result<snapshotter::state::Clocks, RestoreError> {
        super::depends::time_offsets(&self.snapshot)
    }

    /// Takes back the files the stub (host pid `stub_pid`, not running
    /// yet) opened and checks each is the one the snapshot saw (device,
    /// inode, kind, rdev, size and mtime where its content is used, or its
    /// recorded content, open flags). Blocking (a few system calls per
    /// file; hashing a file the first time it is seen).
    pub fn adopt(&mut self, stub_pid: i32) -> Result<(), RestoreError> {
        let started = std::time::Instant::now();
        let adopted = match &mut self.prepared {
            Preparation::Process(p) => p.adopt(stub_pid),
            Preparation::Tree(t) => t.adopt(stub_pid),
        };
        if self.lazy.is_some() {
            // The timeline of a lazy restore (docs/cluster.md).
            tracing::debug!(
                snapshot = %self.snapshot.id,
                check_us = started.elapsed().as_micros() as u64,
                "lazy restore: the stub's files checked"
            );
        }
        adopted
    }

    /// The descriptors the stub sandbox must hold, at these numbers (all 5
    /// and up: 0-4 are the sandbox's own).
    pub fn fds(&self) -> Vec<(BorrowedFd<'_>, i32)> {
        let moves = match &self.prepared {
            Preparation::Process(p) => p.moves(),
            Preparation::Tree(t) => t.moves(),
        };
        moves
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
        // Hashes of the files copies map, kept beside the store's pages.
        snapshotter::capture::depends::set_default_cache_dir(store.dir());
        Ok(SnapshotRestorer {
            snapshots_dir,
            store,
            cache: Mutex::new(HashMap::new()),
            working_sets: Mutex::new(HashMap::new()),
            prefetches: Mutex::new(HashMap::new()),
            unrecordable: Mutex::new(std::collections::HashSet::new()),
            lazy: Mutex::new(HashMap::new()),
            devnull,
        })
    }

    fn snapshot(&self, id: &str) -> Result<Arc<Snapshot>, RestoreError> {
        self.loaded(id).map(|(s, _)| s)
    }

    /// Snapshot `id`, loaded once, with the plans its restores share
    /// (dropped with it by [`SnapshotRestorer::forget`]).
    fn loaded(&self, id: &str) -> Result<Loaded, RestoreError> {
        if let Some(s) = self.cache.lock().unwrap().get(id) {
            return Ok(s.clone());
        }
        let s = match load_snapshot(&self.snapshots_dir, id) {
            Ok(s) => Arc::new(s),
            // A newer thaw's snapshot: this node cannot restore it (it is
            // not broken, another node may).
            Err(e @ snapshotter::snapshot::LoadSnapshotError::Format { format, .. })
                if format > snapshotter::snapshot::SNAPSHOT_FORMAT =>
            {
                return Err(RestoreError::Incompatible {
                    what: e.to_string(),
                })
            }
            Err(e) => return Err(e.into()),
        };
        let loaded = (s, Arc::new(SnapshotPlans::default()));
        self.cache
            .lock()
            .unwrap()
            .insert(id.to_string(), loaded.clone());
        Ok(loaded)
    }

    /// Forgets a snapshot (it was deleted or is being rebuilt).
    pub fn forget(&self, id: &str) {
        self.lazy.lock().unwrap().remove(id);
        self.cache.lock().unwrap().remove(id);
        self.working_sets.lock().unwrap().remove(id);
        self.unrecordable.lock().unwrap().remove(id);
    }

    /// Restores copies of snapshot `origin.snapshot.id` lazily from now on
    /// (see the module doc), until [`SnapshotRestorer::clear_lazy`]: a
    /// single process or a tree.
    pub fn set_lazy(&self, origin: LazyOrigin) -> Result<(), RestoreError> {
        let id = origin.snapshot.id.clone();
        self.lazy.lock().unwrap().insert(id, Arc::new(origin));
        Ok(())
    }

    /// Copies of snapshot `id` are restored from the local store from now
    /// on (it is complete there). Copies made lazily keep their sources.
    pub fn clear_lazy(&self, id: &str) {
        if self.lazy.lock().unwrap().remove(id).is_some() {
            self.cache.lock().unwrap().remove(id);
            self.working_sets.lock().unwrap().remove(id);
        }
    }

    /// Whether copies of snapshot `id` are restored lazily now.
    pub fn is_lazy(&self, id: &str) -> bool {
        self.lazy.lock().unwrap().contains_key(id)
    }

    /// Whether snapshot `id` has a recorded working set, when that is known
    /// without reading a file (`None`: ask [`SnapshotRestorer::working_set`],
    /// which may block). Never blocks: for async code on the restore's path.
    pub fn has_working_set_cached(&self, id: &str) -> Option<bool> {
        self.working_sets
            .lock()
            .unwrap()
            .get(id)
            .map(Option::is_some)
    }

    /// How many pages the recorded working set of snapshot `id` has, when
    /// it was read already (`None`: not read yet, or none). Never blocks.
    pub fn working_set_cached(&self, id: &str) -> Option<usize> {
        self.working_sets
            .lock()
            .unwrap()
            .get(id)
            .and_then(|w| w.as_ref().map(|w| w.len()))
    }

    /// The recorded working set of snapshot `id`, if any. A file that fails
    /// its checks is logged and ignored (the next recording replaces it).
    pub fn working_set(&self, id: &str) -> Option<Arc<Vec<u64>>> {
        if let Some(w) = self.working_sets.lock().unwrap().get(id) {
            return w.clone();
        }
        let loaded = match working_set::load(&working_set::path(&self.snapshots_dir, id)) {
            Ok(w) => w.map(Arc::new),
            Err(err) => {
                tracing::warn!(snapshot = %id, %err, "ignoring the working set");
                None
            }
        };
        self.working_sets
            .lock()
            .unwrap()
            .insert(id.to_string(), loaded.clone());
        loaded
    }

    /// Records `pages` (first-touch order) as the working set of snapshot
    /// `id`, unless one is recorded already (or writing it failed before).
    /// Blocking (writes and fsyncs). Returns whether it was written.
    pub fn record_working_set(
        &self,
        id: &str,
        pages: Vec<u64>,
    ) -> Result<bool, working_set::WorkingSetError> {
        if pages.is_empty()
            || self.working_set(id).is_some()
            || self.unrecordable.lock().unwrap().contains(id)
        {
            return Ok(false);
        }
        if let Err(e) = working_set::save(&working_set::path(&self.snapshots_dir, id), &pages) {
            self.unrecordable.lock().unwrap().insert(id.to_string());
            return Err(e);
        }
        self.working_sets
            .lock()
            .unwrap()
            .insert(id.to_string(), Some(Arc::new(pages)));
        Ok(true)
    }

    /// Records `pages` as the fetch set of snapshot `id`
    /// ([`working_set::fetch_path`]: what a shared store's lazy restores
    /// fetch first), unless it has one. Blocking (writes and fsyncs).
    /// Returns whether it was written. Local copies never use it.
    pub fn record_fetch_set(
        &self,
        id: &str,
        pages: Vec<u64>,
    ) -> Result<bool, working_set::WorkingSetError> {
        let path = working_set::fetch_path(&self.snapshots_dir, id);
        if pages.is_empty() || path.exists() {
            return Ok(false);
        }
        working_set::save(&path, &pages)?;
        Ok(true)
    }

    /// Whether snapshot `id` has a fetch set ([`Self::record_fetch_set`]).
    /// Blocking (a file's metadata).
    pub fn has_fetch_set(&self, id: &str) -> bool {
        working_set::fetch_path(&self.snapshots_dir, id).exists()
    }

    /// Loads the snapshot, opens its image and makes the copy's kernel
    /// objects. Blocking. The stub sandbox then opens
    /// [`PreparedCopy::open_files`], and [`PreparedCopy::adopt`] checks them.
    /// A lazy copy starts its first fetch now (it runs while the sandbox is
    /// made).
    pub fn prepare(&self, id: &str) -> Result<PreparedCopy, RestoreError> {
        let copy = self.prepare_ahead(id)?;
        copy.start_fetch();
        Ok(copy)
    }

    /// [`SnapshotRestorer::prepare`] for a spare, made ahead of its claim:
    /// a lazy copy fetches nothing until [`PreparedCopy::start_fetch`] (at
    /// the latest when it is restored).
    pub fn prepare_ahead(&self, id: &str) -> Result<PreparedCopy, RestoreError> {
        let origin = self.lazy.lock().unwrap().get(id).cloned();
        if let Some(origin) = origin {
            return self.prepare_lazily(origin);
        }
        let (snapshot, plans) = self.loaded(id)?;
        let fds = self.stand_ins(&snapshot);
        let options = options(fds);
        let prepared = if snapshot.children.is_empty() {
            let mut p = prepare_for_sandbox(&snapshot, &self.store, &options)?;
            p.share_plans(plans);
            Preparation::Process(p)
        } else {
            Preparation::Tree(super::tree::prepare_tree_for_sandbox(
                &snapshot,
                &self.store,
                &options,
            )?)
        };
        Ok(PreparedCopy {
            snapshot,
            prepared,
            lazy: None,
        })
    }

    /// [`SnapshotRestorer::prepare`] of a lazy copy: its image (an unlinked
    /// file in the snapshots folder) holds what the local store has, and
    /// the pages the page server does not fill are fetched now.
    fn prepare_lazily(&self, origin: Arc<LazyOrigin>) -> Result<PreparedCopy, RestoreError> {
        let snapshot = origin.snapshot.clone();
        let source = Arc::new(CopySource::new(origin));
        let fds = self.stand_ins(&snapshot);
        let mut options = options(fds);
        options.mode = Mode::Uffd;
        // Fetched with the other pages needed before the resume, in one
        // call (`PreparedCopy::start_fetch`); `finish` finds them there.
        options.prefetch = working_set::for_mode(source.working_set(), Mode::Uffd);
        std::fs::create_dir_all(&self.snapshots_dir).map_err(|source| RestoreError::Io {
            what: format!("create {}", self.snapshots_dir.display()),
            source,
        })?;
        let started = std::time::Instant::now();
        let prepared = if snapshot.children.is_empty() {
            super::prepare_lazily_for_sandbox(
                &snapshot,
                Some(self.store.clone()),
                source.clone(),
                &self.snapshots_dir,
                &options,
            )
            .map(Preparation::Process)
        } else {
            super::tree::prepare_tree_lazily_for_sandbox(
                &snapshot,
                Some(self.store.clone()),
                source.clone(),
                &self.snapshots_dir,
                &options,
            )
            .map(Preparation::Tree)
        }
        .inspect_err(|e| source.failed_before_resume(e))?;
        tracing::debug!(
            snapshot = %snapshot.id,
            prepare_us = started.elapsed().as_micros() as u64,
            "lazy restore: the copy prepared"
        );
        Ok(PreparedCopy {
            snapshot,
            prepared,
            lazy: Some(source),
        })
    }

    /// Stand-ins for the copy's fds 0-4 (the sandbox's own).
    fn stand_ins(&self, snapshot: &Snapshot) -> Vec<(i32, BorrowedFd<'_>)> {
        // fds 0-4 of the copy are the sandbox's (stdin, log pipes, protocol
        // pipes): stand-ins here, never moved (a tree's other processes
        // inherit the stub's: see `tree`).
        let mut numbers: Vec<i32> = snapshot
            .processes()
            .flat_map(|(state, _)| state.fds.iter().map(|f| f.fd))
            .filter(|&fd| fd < 5)
            .collect();
        numbers.sort_unstable();
        numbers.dedup();
        numbers
            .into_iter()
            .map(|fd| (fd, self.devnull.as_fd()))
            .collect()
    }

    /// Turns the stub (host pid `stub_pid`, holding [`PreparedCopy::fds`])
    /// into the copy. Blocking; ptrace from the calling thread. In `uffd`
    /// mode the snapshot's working set, if recorded, is prefetched before
    /// the copy resumes, and the copy's page server is returned: its owner
    /// keeps it until the copy is gone. `keeper`: the sandbox's
    /// `uffd_keeper` (required in `uffd` mode).
    /// Every thread of the copy runs as `credentials` (the sandbox's uid and
    /// gid, no capabilities, `no_new_privs`), whatever the snapshot says.
    pub fn finish(
        &self,
        copy: &PreparedCopy,
        stub_pid: i32,
        mode: Mode,
        keeper: Option<BorrowedFd<'_>>,
        credentials: Credentials,
    ) -> Result<(RestoreTimings, Option<CopyServer>), RestoreError> {
        // The copy may have waited (a spare): its files must still be as
        // the snapshot saw them.
        match &copy.prepared {
            Preparation::Process(p) => p.recheck(&copy.snapshot)?,
            Preparation::Tree(t) => t.recheck(&copy.snapshot)?,
        }
        let mut options = options(Vec::new());
        options.mode = mode;
        options.uffd_keeper = keeper;
        options.credentials = credentials;
        if let Some(lazy) = &copy.lazy {
            if mode != Mode::Uffd {
                return Err(RestoreError::Unsupported(
                    "a lazy copy restores in uffd mode only".into(),
                ));
            }
            options.prefetch = working_set::for_mode(lazy.working_set(), mode);
        } else if let Some(pages) = self.working_set(&copy.snapshot.id) {
            options.prefetch = working_set::for_mode(&pages, mode);
        }
        let prefetching = !options.prefetch.is_empty();
        let restored = match &copy.prepared {
            Preparation::Process(p) => restore_into(stub_pid, &copy.snapshot, p, &options),
            Preparation::Tree(t) => {
                super::tree::restore_tree_into(stub_pid, &copy.snapshot, t, &options)
            }
        };
        if let Some(lazy) = &copy.lazy {
            if let Ok((t, _)) = &restored {
                tracing::debug!(
                    snapshot = %copy.snapshot.id,
                    seize_us = t.stub.as_micros() as u64,
                    mappings_us = t.mappings.as_micros() as u64,
                    state_us = (t.state + t.threads).as_micros() as u64,
                    resume_us = t.resume.as_micros() as u64,
                    "lazy restore: the copy restored (resuming)"
                );
            }
            match &restored {
                Ok(_) => lazy.resumed(),
                Err(e) => lazy.failed_before_resume(e),
            }
        }
        let (timings, server) = restored?;
        if let (true, Some(server)) = (prefetching, &server) {
            let mut map = self.prefetches.lock().unwrap();
            let stats = map.entry(copy.snapshot.id.clone()).or_default();
            stats.copies += 1;
            stats.pages += server.live().prefetched();
        }
        Ok((timings, server))
    }

    /// Records the pages resident in the `mmap` copy `pid` (host pid) of
    /// snapshot `id` as its working set (see
    /// [`SnapshotRestorer::record_working_set`]). Reads the copy's pagemap
    /// now; writing the file is left to `save` (blocking, fsync).
    pub fn resident_working_set(&self, id: &str, pid: i32) -> Result<Vec<u64>, RestoreError> {
        let snapshot = self.snapshot(id)?;
        working_set::resident_pages(pid, &snapshot.state.areas).map_err(|e| RestoreError::Io {
            what: format!("read the working set of copy {pid}"),
            source: e.source,
        })
    }

    /// A `uffd` copy's working set from its page server's `faults` (those
    /// of `zero_faults` that copy `pid`, host pid, wrote tagged
    /// [`working_set::WRITTEN`]: see
    /// [`working_set::tag_written_zero_faults`]) and its `resident` pages
    /// (see [`working_set::faults_then_resident`]).
    pub fn uffd_working_set(
        &self,
        id: &str,
        pid: i32,
        faults: Vec<u64>,
        zero_faults: &[u64],
        resident: Vec<u64>,
    ) -> Result<Vec<u64>, RestoreError> {
        let snapshot = self.snapshot(id)?;
        let faults =
            working_set::tag_written_zero_faults(pid, faults, zero_faults).map_err(|e| {
                RestoreError::Io {
                    what: format!("read the written zero pages of copy {pid}"),
                    source: e.source,
                }
            })?;
        Ok(working_set::faults_then_resident(
            faults,
            resident,
            &snapshot.state.areas,
        ))
    }

    /// How snapshot `id`'s working set was prefetched since the start.
    pub fn prefetch_stats(&self, id: &str) -> PrefetchStats {
        self.prefetches
            .lock()
            .unwrap()
            .get(id)
            .copied()
            .unwrap_or_default()
    }
}

/// The options of a sandboxed copy (memory mode, working set and
/// credentials set by the caller).
pub(crate) fn options(fds: Vec<(i32, BorrowedFd<'_>)>) -> RestoreOptions<'_> {
    RestoreOptions {
        mode: Mode::Mmap,
        fds,
        cgroups: Vec::new(),
        prefetch: Vec::new(),
        prefetch_in_background: false,
        uffd_keeper: None,
        // Replaced by the sandbox's in `finish`; never the snapshot's.
        credentials: Credentials::Function {
            uid: crate::sandbox::DEFAULT_UID,
            gid: crate::sandbox::DEFAULT_UID,
        },
    }
}
