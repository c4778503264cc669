//! Lazy restore from somewhere else than the local store (issue 18): the
//! pages a node lacks come from a [`PageSource`] (the shared store's
//! implementation is `remote_store::LazySource`), fetched as the restore
//! and then the copy need them.
//!
//! ```text
//! prepare_lazily
//!   image: an unlinked sparse file laid out as a store image
//!          (ImageLayout), empty
//! start_fetch (at once, or when a spare made ahead is claimed)
//!   pages of areas the page server does not fill (stack, private pages
//!   over files, shared memory) and the working set: those the local
//!   store holds written from it, the others fetched in one call,
//!   written in
//! every later fetch (a fault's run): the same, local pages first
//! restore (uffd mode only)
//!   working set (RestoreOptions::prefetch): fetched in one call before
//!   the copy resumes, written into the image, then copied in
//!   a fault on a page not in the image: the page and the fault-around
//!   run fetched (one call), written into the image, UFFDIO_COPY
//! a fetch that fails before the resume: RestoreError::Fetch, the copy
//! never ran; after it: the page server fails and kills the copy
//! ```
//!
//! The source checks every page against its hash before handing it out:
//! the server copies into the copy only what the snapshot names.

use std::fs::File;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use snapshotter::snapshot::Snapshot;
use snapshotter::state::PAGE_SIZE;
use snapshotter::store::{AreaPages, CachedImage, ImageLayout, PageHash, PageSlot, PageStore};

use super::{thread, RestoreError};

/// Why a [`PageSource`] could not hand out pages (its own error, kept as
/// the source).
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct PageSourceError(pub Box<dyn std::error::Error + Send + Sync + 'static>);

/// Where a lazy restore gets the pages the local store lacks. Called from
/// the restorer's thread before the copy resumes and from the page
/// server's thread after: blocking, and safe to call from any thread
/// (inside an async runtime or not).
pub trait PageSource: Send + Sync + std::fmt::Debug {
    /// The pages `hashes`, back to back in that order (4096 bytes each),
    /// every one checked against its hash.
    fn fetch(&self, hashes: &[PageHash]) -> Result<Vec<u8>, PageSourceError>;
}

/// Pages one fault fetches at least: its run and the pages of its area
/// after it (see [`LazyPages::ensure_run`]): mostly one ranged read. 128
/// since 2026-12-06 (256, a whole pack, before: numpy-pandas's first
/// remote restore fetched ×2.05 its working set's stored part with 256;
/// see docs/cluster.md); `THAW_LAZY_FETCH_AROUND=N` sets it (read once,
/// 1-4096: the A/B's other arm).
pub const FETCH_AROUND: usize = 128;

/// `THAW_LAZY_FILL_AT_PREPARE=1`: [`LazyPages::new`] writes every page the
/// local store has into the image at once (the old way, for A/B
/// measurements: 5-8 ms before numpy-pandas's first fetch could start, and
/// a spare's image as stale as the spare), rather than each page when a
/// fetch needs it.
pub const ENV_FILL_AT_PREPARE: &str = "THAW_LAZY_FILL_AT_PREPARE";

/// [`FETCH_AROUND`], or `THAW_LAZY_FETCH_AROUND` when it is a count of
/// pages from 1 to 4096.
pub fn fetch_around() -> usize {
    static VALUE: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *VALUE.get_or_init(|| {
        std::env::var("THAW_LAZY_FETCH_AROUND")
            .ok()
            .and_then(|v| v.parse().ok())
            .filter(|n| (1..=4096).contains(n))
            .unwrap_or(FETCH_AROUND)
    })
}

/// `THAW_LAZY_FETCH_UP=1`: a fault's fetch always takes the pages after
/// its run, never before (the way before 2026-12-07, for A/B
/// measurements).
pub const ENV_FETCH_UP: &str = "THAW_LAZY_FETCH_UP";

/// Whether [`ENV_FETCH_UP`] is set (read once).
fn only_up() -> bool {
    static VALUE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *VALUE.get_or_init(|| std::env::var_os(ENV_FETCH_UP).is_some_and(|v| v == "1"))
}

/// Which way a fault's fetch extends its run ([`fetch_window`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Direction {
    /// The pages after the run (the copy reads upwards).
    Up,
    /// The pages before it (downwards).
    Down,
    /// Half of the window each side.
    Both,
}

/// The pages (indices into an area of `len` pages) a fault's fetch asks
/// for: the run `index..index + count` and, to `around` pages in all
/// (never fewer than the run), pages of the area on the side `direction`
/// says, clipped to the area (what its first page cuts off the side
/// before goes after the run instead).
pub(crate) fn fetch_window(
    index: usize,
    count: usize,
    len: usize,
    around: usize,
    direction: Direction,
) -> std::ops::Range<usize> {
    let end_of_run = (index + count).min(len);
    let extra = around.saturating_sub(count);
    let before = match direction {
        Direction::Up => 0,
        Direction::Down => extra,
        Direction::Both => extra / 2,
    };
    let start = index.saturating_sub(before);
    // What the start could not take (the area's first page) goes after.
    let after = extra - (index - start);
    let end = (end_of_run + after).min(len);
    start..end
}

/// What the fetching of one lazy restore did (the source counts bytes and
/// requests; see its own report).
#[derive(Debug, Default)]
pub struct FetchCounts {
    /// Calls of [`PageSource::fetch`].
    pub fetches: AtomicU64,
    /// Pages fetched.
    pub pages: AtomicU64,
    /// Of which before the copy resumed.
    pub before_resume: AtomicU64,
}

/// The image of a lazy restore and which of its pages are there, as one
/// process of it sees it: a process tree's image lays out every process's
/// areas one after another (the root's first, `Snapshot::area_base`), and
/// each process's page server and restore steps name areas by their index
/// in that process ([`LazyPages::process`] gives each its view; all views
/// share the image, its source and what is present).
#[derive(Debug)]
pub struct LazyPages {
    image: Arc<LazyImage>,
    /// Index in the image of this view's area 0.
    base: usize,
}

/// What the views of one lazy image share.
#[derive(Debug)]
struct LazyImage {
    source: Arc<dyn PageSource>,
    /// The node's page store: a page it holds is written from there, not
    /// fetched (looked up when the page is needed, not when the image is
    /// made: a spare's image made before another snapshot's completion
    /// finds that snapshot's pages at its claim).
    local: Option<Arc<PageStore>>,
    /// The image, writable (the restore maps it read-only).
    file: File,
    layout: ImageLayout,
    /// Per area of the image, per page: its hash if the snapshot stores it.
    hashes: Vec<Vec<Option<PageHash>>>,
    /// Per area, per page: in the image.
    present: Vec<Vec<AtomicBool>>,
    /// Per process: the index of its first area.
    bases: Vec<usize>,
    /// Set once the copy resumed (counts fetches after it apart).
    resumed: AtomicBool,
    /// What was fetched.
    counts: FetchCounts,
    /// The first fetch (every page needed before the copy resumes):
    /// listed by [`LazyPages::new`], started by [`LazyPages::start_fetch`],
    /// joined by [`LazyPages::ready`].
    early: std::sync::Mutex<Early>,
    /// Why that fetch failed, once it did.
    early_failed: std::sync::OnceLock<String>,
}

/// Where the first fetch of a lazy image is.
#[derive(Debug)]
enum Early {
    /// Not started: the pages (image area, page) it fetches.
    Pending(Vec<(usize, usize)>),
    /// Running on a thread of its own.
    Started(std::thread::JoinHandle<Result<(), String>>),
    /// Joined (its failure, if any, in `early_failed`).
    Joined,
}

impl LazyPages {
    /// Makes the image of `snapshot` (a single process or a tree: every
    /// process's areas) in `dir` (an unlinked file) and lists every page
    /// the copy needs before it resumes:
    /// the pages of the areas the page server does not fill, the live
    /// threads' stacks, and the root's working set `prefetch` (saved
    /// addresses, tags in the low bits). Nothing is fetched yet:
    /// [`LazyPages::start_fetch`] starts that first fetch (in one call of
    /// the source, on a thread of its own), so that it runs while the
    /// copy's sandbox is made and its files are checked, or, for a spare
    /// made ahead, only once it is claimed (a spare holds no fetched page:
    /// a store outage before its claim makes that cold start boot, as it
    /// would without a spare). [`LazyPages::ready`] waits for it (starting
    /// it if nobody did; the restore calls it before it uses the image).
    /// The view returned is the root's.
    pub fn new(
        snapshot: &Snapshot,
        local: Option<Arc<PageStore>>,
        source: Arc<dyn PageSource>,
        dir: &Path,
        prefetch: &[u64],
    ) -> Result<(LazyPages, CachedImage), RestoreError> {
        let io = |what: String| move |source| RestoreError::Io { what, source };
        let every: Vec<AreaPages> = snapshot
            .processes()
            .flat_map(|(_, areas)| areas.iter().cloned())
            .collect();
        let fill_now = std::env::var_os(ENV_FILL_AT_PREPARE).is_some_and(|v| v == "1");
        let layout = ImageLayout::of(&every);
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_TMPFILE | libc::O_CLOEXEC)
            .mode(0o600)
            .open(dir)
            .map_err(io(format!("create a lazy image in {}", dir.display())))?;
        file.set_len(layout.size)
            .map_err(io("size the lazy image".into()))?;
        let hashes = stored_hashes(every.iter());
        let present = hashes
            .iter()
            .map(|a| a.iter().map(|_| AtomicBool::new(false)).collect())
            .collect();
        let bases = (0..=snapshot.children.len())
            .map(|i| snapshot.area_base(i))
            .collect();
        let lazy = LazyPages {
            image: Arc::new(LazyImage {
                source,
                // The old way looks the store up once, here, never later.
                local: local.clone().filter(|_| !fill_now),
                file,
                layout,
                hashes,
                present,
                bases,
                resumed: AtomicBool::new(false),
                counts: FetchCounts::default(),
                early: std::sync::Mutex::new(Early::Pending(Vec::new())),
                early_failed: std::sync::OnceLock::new(),
            }),
            base: 0,
        };
        if let Some(store) = local.as_deref().filter(|_| fill_now) {
            // The old way: every page the local store has, written now.
            // One reload of the index, not one per page it lacks (most of
            // them on a node that never held the snapshot).
            let _ = store.refresh();
            for (a, pages) in lazy.image.hashes.iter().enumerate() {
                for (i, hash) in pages.iter().enumerate() {
                    let Some(hash) = hash else { continue };
                    if let Some(Ok(page)) = store.get_loaded(hash) {
                        lazy.image.write(a, i, &page)?;
                    }
                }
            }
        }
        let early = early_pages(snapshot, &lazy.image.hashes, &lazy.image.bases, prefetch);
        *lazy.image.early.lock().unwrap_or_else(|e| e.into_inner()) = Early::Pending(early);
        let image = CachedImage {
            path: dir.to_path_buf(),
            file: lazy
                .image
                .file
                .try_clone()
                .map_err(io("dup the lazy image".into()))?,
            layout: lazy.image.layout.clone(),
            built: true,
        };
        Ok((lazy, image))
    }

    /// Starts the first fetch [`LazyPages::new`] listed (every page the
    /// copy needs before it resumes), on a thread of its own; once only
    /// (later calls, and calls on other views, do nothing). Should the
    /// thread not start, [`LazyPages::ready`] fetches them itself. Returns
    /// whether this call started it.
    pub fn start_fetch(&self) -> bool {
        let mut early = self.image.early.lock().unwrap_or_else(|e| e.into_inner());
        let Early::Pending(pages) = &mut *early else {
            return false;
        };
        let pages = Arc::new(std::mem::take(pages));
        let (image, listed) = (self.image.clone(), pages.clone());
        let spawned = std::thread::Builder::new()
            .name("thaw-lazy-early".into())
            .spawn(move || image.ensure_at(&listed).map_err(|e| error_chain(&e)));
        match spawned {
            Ok(fetch) => {
                *early = Early::Started(fetch);
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot start the lazy image's first fetch on a thread; the restore fetches it");
                *early = Early::Pending(Arc::unwrap_or_clone(pages));
                false
            }
        }
    }

    /// Waits for the first fetch ([`LazyPages::start_fetch`], started now
    /// if it was not): every page the copy needs before it resumes is in
    /// the image once this returns `Ok`. Its failure is
    /// [`RestoreError::Fetch`] (the copy never ran), for every caller and
    /// view.
    pub fn ready(&self) -> Result<(), RestoreError> {
        let early = std::mem::replace(
            &mut *self.image.early.lock().unwrap_or_else(|e| e.into_inner()),
            Early::Joined,
        );
        if !matches!(early, Early::Joined) {
            let waiting = std::time::Instant::now();
            let result = match early {
                // Never started (or its thread could not start): here.
                Early::Pending(pages) => self.image.ensure_at(&pages).map_err(|e| error_chain(&e)),
                Early::Started(fetch) => fetch
                    .join()
                    .unwrap_or_else(|_| Err("the lazy image's first fetch panicked".into())),
                Early::Joined => Ok(()),
            };
            tracing::debug!(
                waited_us = waiting.elapsed().as_micros() as u64,
                pages = self.image.counts.before_resume.load(Ordering::Relaxed),
                "lazy restore: the first fetch is in"
            );
            if let Err(why) = result {
                let _ = self.image.early_failed.set(why);
            }
        }
        match self.image.early_failed.get() {
            Some(why) => Err(RestoreError::Fetch(PageSourceError(why.clone().into()))),
            None => Ok(()),
        }
    }

    /// The view of process `index` of the snapshot (0 the root, then its
    /// children in order): its area `a` is the image's `base + a`.
    pub fn process(&self, index: usize) -> Option<Arc<LazyPages>> {
        Some(Arc::new(LazyPages {
            image: self.image.clone(),
            base: *self.image.bases.get(index)?,
        }))
    }

    /// What was fetched (by every view of the image).
    pub fn counts(&self) -> &FetchCounts {
        &self.image.counts
    }

    /// Areas of this view's process.
    fn areas_in_view(&self) -> usize {
        let end = self
            .image
            .bases
            .iter()
            .copied()
            .find(|&b| b > self.base)
            .unwrap_or(self.image.hashes.len());
        end - self.base
    }

    /// Whether page `index` of area `area` must be fetched before use.
    pub(crate) fn missing(&self, area: usize, index: usize) -> bool {
        self.image.missing_at(self.base + area, index)
    }

    /// Fetches (one call of the source) the stored pages of `pages`
    /// (area, page index) not in the image yet and writes them in.
    pub(crate) fn ensure(&self, pages: &[(usize, usize)]) -> Result<(), PageSourceError> {
        let pages: Vec<(usize, usize)> = pages.iter().map(|&(a, i)| (self.base + a, i)).collect();
        self.image.ensure_at(&pages)
    }

    /// [`Self::ensure`] for the run of `count` pages at page `index` of
    /// area `area` that a fault needs, and pages of the area around it up
    /// to [`fetch_around`] in all: one fetch costs a round trip to the
    /// store (milliseconds), a page more in it 4 KiB of the same read, and
    /// a copy touches its memory in runs (the rest of the snapshot follows
    /// in the background anyway). Which pages, as a readahead guesses a
    /// direction ([`fetch_window`]): after the run when the page before it
    /// was fetched already (a copy reading upwards), before it when the
    /// page after it was (downwards), half each side when neither (a touch
    /// of its own: numpy-pandas's faults after its first fetch land 1-60
    /// pages either side of pages the working set holds).
    ///
    /// A faulting page already in the image (fetched with the first fetch,
    /// or by an earlier fault's run) costs no fetch: the run shrinks to the
    /// pages in the image from it. Returns how many pages of the run, from
    /// `index`, are in the image now: the caller copies those, no more.
    pub(crate) fn ensure_run(
        &self,
        area: usize,
        index: usize,
        count: usize,
    ) -> Result<usize, PageSourceError> {
        if self.missing(area, index) {
            let len = self.image.hashes.get(self.base + area).map_or(0, Vec::len);
            let fetched = |i: usize| self.image.fetched_at(self.base + area, i);
            let direction = if only_up() || (index > 0 && fetched(index - 1)) {
                Direction::Up
            } else if fetched(index + count) {
                Direction::Down
            } else {
                Direction::Both
            };
            let window = fetch_window(index, count, len, fetch_around(), direction);
            let pages: Vec<(usize, usize)> = window.map(|i| (area, i)).collect();
            self.ensure(&pages)?;
        }
        Ok((0..count)
            .take_while(|&i| !self.missing(area, index + i))
            .count())
    }

    /// [`Self::ensure`] for every stored page of the areas `areas` (indices
    /// into the process's areas): areas the restore writes from the image
    /// instead of serving, such as the live threads' stacks in uffd mode.
    pub(crate) fn ensure_areas(
        &self,
        areas: impl IntoIterator<Item = usize>,
    ) -> Result<(), PageSourceError> {
        let count = self.areas_in_view();
        let pages: Vec<(usize, usize)> = areas
            .into_iter()
            .filter(|&a| a < count)
            .flat_map(|a| (0..self.image.hashes[self.base + a].len()).map(move |i| (a, i)))
            .collect();
        self.ensure(&pages)
    }

    /// Marks the copy as resumed (later fetches count as after it; every
    /// view of the image).
    pub(crate) fn set_resumed(&self) {
        self.image.resumed.store(true, Ordering::Relaxed);
    }

    /// Saved addresses of the pages of the areas the page server fills
    /// that are in the image now (what the copy needed so far, fault-around
    /// runs included, and what the local store had), in address order: a
    /// working set to record when the snapshot has none. `areas`: this
    /// view's process's.
    pub fn filled_pages(&self, areas: &[snapshotter::state::MemoryArea]) -> Vec<u64> {
        let mut out = Vec::new();
        let count = self.areas_in_view();
        for (a, area) in areas.iter().enumerate() {
            if !super::uffd::is_lazy(area) || a >= count {
                continue;
            }
            for (i, present) in self.image.present[self.base + a].iter().enumerate() {
                if present.load(Ordering::Acquire) {
                    out.push(area.start + i as u64 * PAGE_SIZE);
                }
            }
        }
        out
    }

    /// Pages of the snapshot (every process) not in the image yet.
    pub fn pages_missing(&self) -> u64 {
        (0..self.image.hashes.len())
            .map(|a| {
                (0..self.image.hashes[a].len())
                    .filter(|&i| self.image.missing_at(a, i))
                    .count() as u64
            })
            .sum()
    }
}

/// Every page (image area, index) a lazy copy of `snapshot` needs before
/// it resumes, in the order [`LazyPages::new`] asks for them: the pages of
/// the areas the page server does not fill, the live threads' stacks, the
/// pages the restore fills (rseq areas, futex words of interrupted waits),
/// then the root's working set `prefetch`. `hashes` holds the image's
/// areas' pages, `bases` each process's first area.
/// Each area's pages by index: the hash of a stored page, `None` for the
/// others (zero pages, pages of mapped files).
fn stored_hashes<'a>(areas: impl Iterator<Item = &'a AreaPages>) -> Vec<Vec<Option<PageHash>>> {
    areas
        .map(|a| {
            a.iter()
                .map(|s| match s {
                    PageSlot::Hash(h) => Some(h),
                    _ => None,
                })
                .collect()
        })
        .collect()
}

fn early_pages(
    snapshot: &Snapshot,
    hashes: &[Vec<Option<PageHash>>],
    bases: &[usize],
    prefetch: &[u64],
) -> Vec<(usize, usize)> {
    // Areas the page server does not serve read the image directly.
    let mut early: Vec<(usize, usize)> = snapshot
        .processes()
        .flat_map(|(state, _)| state.areas.iter())
        .enumerate()
        .filter(|(_, area)| !super::uffd::is_lazy(area))
        .flat_map(|(a, _)| (0..hashes[a].len()).map(move |i| (a, i)))
        .collect();
    // The live threads' stacks, written rather than served in uffd
    // mode (see `restore_memory`), of every process.
    for (p, (state, areas)) in snapshot.processes().enumerate() {
        let base = bases[p];
        for a in thread::live_stacks(state, areas) {
            early.extend((0..hashes[base + a].len()).map(|i| (base + a, i)));
        }
    }
    // The pages the restore fills before the resume, every process's:
    // each thread's rseq area and the futex words of interrupted
    // waits (see `restore_memory`). Missing, each was a fetch of its
    // own before the resume (one store round trip).
    for (p, (state, _)) in snapshot.processes().enumerate() {
        let base = bases[p];
        let mut pages = thread::restart_pages(state);
        pages.extend(
            state
                .threads
                .iter()
                .filter_map(|t| t.rseq.as_ref())
                .map(|r| r.address),
        );
        early.extend(pages_at(&state.areas, &pages).map(|(a, i)| (base + a, i)));
    }
    // The root's working set (its areas come first in the image).
    early.extend(pages_at(&snapshot.state.areas, prefetch));
    early
}

/// The stored pages a lazy restore of `snapshot` with the working set
/// `prefetch` (saved addresses, tags in the low bits) fetches before the
/// copy resumes (see [`LazyPages::new`]), each once, in the image's order
/// (process by process, areas by address): what a writer lays out
/// contiguously for readers (`remote_store`'s working-set pack). The
/// restore asks for all of them in one call; in address order the runs a
/// fault asks for later are contiguous too.
pub fn pages_before_resume(snapshot: &Snapshot, prefetch: &[u64]) -> Vec<PageHash> {
    let every = stored_hashes(snapshot.processes().flat_map(|(_, areas)| areas.iter()));
    let bases: Vec<usize> = (0..=snapshot.children.len())
        .map(|i| snapshot.area_base(i))
        .collect();
    let mut early = early_pages(snapshot, &every, &bases, prefetch);
    early.sort_unstable();
    let mut seen = std::collections::HashSet::new();
    early
        .into_iter()
        .filter_map(|(a, i)| every.get(a)?.get(i).copied().flatten())
        .filter(|h| seen.insert(*h))
        .collect()
}

/// The (area, page) of each saved address of `pages` (tags in the low
/// bits) inside `areas`, the rest left out.
fn pages_at(
    areas: &[snapshotter::state::MemoryArea],
    pages: &[u64],
) -> impl Iterator<Item = (usize, usize)> {
    let mut sorted: Vec<u64> = pages.iter().map(|p| p & !(PAGE_SIZE - 1)).collect();
    sorted.sort_unstable();
    sorted.dedup();
    let mut out = Vec::new();
    for (a, area) in areas.iter().enumerate() {
        let from = sorted.partition_point(|&p| p < area.start);
        let to = sorted.partition_point(|&p| p < area.end);
        out.extend(
            sorted[from..to]
                .iter()
                .map(move |&p| (a, ((p - area.start) / PAGE_SIZE) as usize)),
        );
    }
    out.into_iter()
}

impl LazyImage {
    /// Offset in the image of page `index` of the image's area `area`.
    fn offset(&self, area: usize, index: usize) -> u64 {
        self.layout.areas[area].offset + index as u64 * PAGE_SIZE
    }

    fn write(&self, area: usize, index: usize, page: &[u8]) -> Result<(), RestoreError> {
        self.write_run(area, index, page)
    }

    /// Writes `pages` (whole pages, back to back) at page `index` of the
    /// image's area `area` and marks them present (after the write: a
    /// page server that sees one present reads what was written).
    fn write_run(&self, area: usize, index: usize, pages: &[u8]) -> Result<(), RestoreError> {
        self.file
            .write_all_at(pages, self.offset(area, index))
            .map_err(|source| RestoreError::Io {
                what: "write fetched pages into the lazy image".into(),
                source,
            })?;
        let count = pages.len() / PAGE_SIZE as usize;
        for present in &self.present[area][index..index + count] {
            present.store(true, Ordering::Release);
        }
        Ok(())
    }

    /// Writes the pages of `wanted` (sorted) that the local store holds
    /// (reloading its index first: another snapshot's completion may have
    /// added pages since), in runs; returns the others, to fetch.
    fn fill_from_local(
        &self,
        store: &PageStore,
        wanted: Vec<(usize, usize)>,
    ) -> Result<Vec<(usize, usize)>, PageSourceError> {
        let _ = store.refresh();
        let mut rest = Vec::with_capacity(wanted.len());
        let mut run: Vec<u8> = Vec::new();
        let mut run_at: Option<(usize, usize)> = None;
        let page_size = PAGE_SIZE as usize;
        let flush = |run: &mut Vec<u8>, at: Option<(usize, usize)>| {
            if let Some((a, i)) = at {
                self.write_run(a, i, run)
                    .map_err(|e| PageSourceError(Box::new(e)))?;
            }
            run.clear();
            Ok::<_, PageSourceError>(())
        };
        for (a, i) in wanted {
            let hash = self.hashes[a][i].expect("missing pages are stored ones");
            match store.get_loaded(&hash) {
                Some(Ok(page)) => {
                    let next = run_at.map(|(b, j)| (b, j + run.len() / page_size));
                    if next != Some((a, i)) {
                        flush(&mut run, run_at)?;
                        run_at = Some((a, i));
                    }
                    run.extend_from_slice(&page);
                }
                // Not there (or not readable): fetched.
                _ => rest.push((a, i)),
            }
        }
        flush(&mut run, run_at)?;
        Ok(rest)
    }

    /// Whether page `index` of area `area` is a stored page (`Some`: one
    /// the bucket holds) and, if so, whether the image holds it now.
    fn stored_present(&self, area: usize, index: usize) -> Option<bool> {
        self.hashes[area]
            .get(index)
            .is_some_and(|h| h.is_some())
            .then(|| self.present[area][index].load(Ordering::Acquire))
    }

    /// Whether page `index` of area `area` is a stored page the image
    /// holds now (fetched, or taken from the local store).
    fn fetched_at(&self, area: usize, index: usize) -> bool {
        self.stored_present(area, index) == Some(true)
    }

    /// [`LazyPages::missing`] by the image's area index.
    fn missing_at(&self, area: usize, index: usize) -> bool {
        self.stored_present(area, index) == Some(false)
    }

    /// [`LazyPages::ensure`] by the image's area indices.
    fn ensure_at(&self, pages: &[(usize, usize)]) -> Result<(), PageSourceError> {
        let mut wanted: Vec<(usize, usize)> = pages
            .iter()
            .copied()
            .filter(|&(a, i)| self.missing_at(a, i))
            .collect();
        wanted.sort_unstable();
        wanted.dedup();
        if let Some(store) = &self.local {
            wanted = self.fill_from_local(store, wanted)?;
        }
        if wanted.is_empty() {
            return Ok(());
        }
        let hashes: Vec<PageHash> = wanted
            .iter()
            .map(|&(a, i)| self.hashes[a][i].expect("missing pages are stored ones"))
            .collect();
        let bytes = self.source.fetch(&hashes)?;
        if bytes.len() != hashes.len() * PAGE_SIZE as usize {
            return Err(PageSourceError(
                format!(
                    "the page source returned {} bytes for {} pages",
                    bytes.len(),
                    hashes.len()
                )
                .into(),
            ));
        }
        // One write per run of pages next to each other in the image (a
        // write per page cost ~40 µs each on a loaded machine: 65 ms for
        // the 1,611 pages of numpy-pandas's first fetch).
        let page = PAGE_SIZE as usize;
        let mut n = 0;
        while n < wanted.len() {
            let (a, i) = wanted[n];
            let run = wanted[n..]
                .iter()
                .enumerate()
                .take_while(|&(k, &(b, j))| b == a && j == i + k)
                .count();
            self.write_run(a, i, &bytes[n * page..(n + run) * page])
                .map_err(|e| PageSourceError(Box::new(e)))?;
            n += run;
        }
        self.counts.fetches.fetch_add(1, Ordering::Relaxed);
        self.counts
            .pages
            .fetch_add(wanted.len() as u64, Ordering::Relaxed);
        if !self.resumed.load(Ordering::Relaxed) {
            self.counts
                .before_resume
                .fetch_add(wanted.len() as u64, Ordering::Relaxed);
        }
        Ok(())
    }
}

/// What happened to a lazy copy, told to its [`LazyOrigin`]'s owner (the
/// server counts and logs it, and completes the snapshot locally once a
/// copy ran).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LazyEvent {
    /// A copy resumed: every page it needed before running was fetched.
    Resumed,
    /// A fetch failed before the copy resumed: it never ran (the caller
    /// boots instead). The error, as text.
    FailedBeforeResume(String),
    /// A fetch failed after the copy resumed: its page server kills it
    /// (told once per copy). The error, as text.
    Killed(String),
}

/// A snapshot that is not in the local store, restored lazily from a
/// [`PageSource`] (see [`crate::restore::sandboxed::SnapshotRestorer::set_lazy`]).
/// Every copy gets its own image and page server over the shared source.
pub struct LazyOrigin {
    /// The snapshot (a single process or a tree).
    pub snapshot: Arc<Snapshot>,
    /// Its working set (saved page addresses, first-touch order), fetched
    /// before each copy resumes; empty when none is recorded.
    pub working_set: Vec<u64>,
    /// Where the pages come from.
    pub source: Arc<dyn PageSource>,
    /// Told what happens to each copy. Called from the restorer's and the
    /// page servers' threads: quick, and never blocking on them.
    pub events: Arc<dyn Fn(LazyEvent) + Send + Sync>,
}

impl std::fmt::Debug for LazyOrigin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LazyOrigin")
            .field("snapshot", &self.snapshot.id)
            .field("working_set", &self.working_set.len())
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

/// The source of one lazy copy: its origin's, telling the origin when a
/// fetch fails after the copy resumed (the page server then kills it).
pub(crate) struct CopySource {
    origin: Arc<LazyOrigin>,
    resumed: AtomicBool,
    told: AtomicBool,
    /// A fetch that failed while `resumed` was not set yet: the copy may
    /// run already (the restore returned, `resumed` comes next) and its
    /// page server then kills it.
    early_failure: std::sync::Mutex<Option<String>>,
}

impl CopySource {
    pub(crate) fn new(origin: Arc<LazyOrigin>) -> CopySource {
        CopySource {
            origin,
            resumed: AtomicBool::new(false),
            told: AtomicBool::new(false),
            early_failure: std::sync::Mutex::new(None),
        }
    }

    /// The copy resumed.
    pub(crate) fn resumed(&self) {
        self.resumed.store(true, Ordering::Release);
        (self.origin.events)(LazyEvent::Resumed);
        let early = self
            .early_failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(error) = early {
            if !self.told.swap(true, Ordering::AcqRel) {
                (self.origin.events)(LazyEvent::Killed(error));
            }
        }
    }

    /// The restore failed before the resume; `err` is told if it was a
    /// fetch (other failures are not the source's).
    pub(crate) fn failed_before_resume(&self, err: &RestoreError) {
        if let RestoreError::Fetch(e) = err {
            if !self.told.swap(true, Ordering::AcqRel) {
                (self.origin.events)(LazyEvent::FailedBeforeResume(error_chain(e)));
            }
        }
    }

    /// The working set to fetch before the resume.
    pub(crate) fn working_set(&self) -> &[u64] {
        &self.origin.working_set
    }
}

impl std::fmt::Debug for CopySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CopySource")
            .field("origin", &self.origin)
            .field("resumed", &self.resumed)
            .finish()
    }
}

impl PageSource for CopySource {
    fn fetch(&self, hashes: &[PageHash]) -> Result<Vec<u8>, PageSourceError> {
        let result = self.origin.source.fetch(hashes);
        if let Err(e) = &result {
            if !self.resumed.load(Ordering::Acquire) {
                // Told by `failed_before_resume` if the restore fails with
                // it, by `resumed` if the copy ran all the same.
                *self.early_failure.lock().unwrap_or_else(|e| e.into_inner()) =
                    Some(error_chain(e));
            } else if !self.told.swap(true, Ordering::AcqRel) {
                (self.origin.events)(LazyEvent::Killed(error_chain(e)));
            }
        }
        result
    }
}

/// `err` and its sources, `: `-separated.
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut next = err.source();
    while let Some(e) = next {
        let s = e.to_string();
        if !out.contains(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        next = e.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::{fetch_window, Direction};

    #[test]
    fn a_fault_reading_upwards_fetches_after_its_run() {
        assert_eq!(fetch_window(100, 4, 1000, 128, Direction::Up), 100..228);
        // Clipped at the area's end.
        assert_eq!(fetch_window(950, 4, 1000, 128, Direction::Up), 950..1000);
    }

    #[test]
    fn a_fault_reading_downwards_fetches_before_its_run() {
        assert_eq!(fetch_window(500, 1, 1000, 128, Direction::Down), 373..501);
        // What the area's first page cuts off goes after the run.
        assert_eq!(fetch_window(10, 1, 1000, 128, Direction::Down), 0..128);
    }

    #[test]
    fn a_fault_of_its_own_fetches_both_sides() {
        assert_eq!(fetch_window(500, 1, 1000, 128, Direction::Both), 437..565);
        assert_eq!(fetch_window(20, 1, 1000, 128, Direction::Both), 0..128);
        assert_eq!(fetch_window(990, 1, 1000, 128, Direction::Both), 927..1000);
    }

    #[test]
    fn a_run_longer_than_the_window_is_fetched_whole() {
        assert_eq!(fetch_window(100, 300, 1000, 128, Direction::Both), 100..400);
        assert_eq!(
            fetch_window(900, 300, 1000, 128, Direction::Down),
            900..1000
        );
    }
}
