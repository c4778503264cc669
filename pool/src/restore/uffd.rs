//! The page server of `uffd` mode: the copy's private memory is anonymous
//! and registered with a userfaultfd; a thread of the restorer fills every
//! first touch from the snapshot's image (mapped read-only here).
//!
//! ```text
//! copy touches a missing page ─> kernel queues UFFD_EVENT_PAGEFAULT
//! server: address ─(undo mremaps)─> saved address ─> area, page index
//!   removed/unmapped range      UFFDIO_ZEROPAGE (the program expects zeros)
//!   zero page of the snapshot   UFFDIO_ZEROPAGE on a read; on a write a
//!                               private zeroed page (UFFDIO_COPY of
//!                               zeros: no copy-on-write fault after it)
//!   stored page                 UFFDIO_COPY from the image, with the next
//!                               stored pages of the area not yet served
//!                               (fault-around, up to FAULT_AROUND pages)
//! events: REMOVE (madvise) and UNMAP mark ranges as zero from now on,
//!         REMAP (mremap) records where pages moved
//! ```
//!
//! The userfaultfd is created inside the copy (an injected `userfaultfd`
//! call) and pulled out with `pidfd_getfd`. If the server fails, it kills
//! the copy: a copy never reads zeros where it had data. Kernel ABI structs
//! are declared here and checked for size at compile time.
//!
//! A `fork` in the copy (UFFD_EVENT_FORK) hands us the child's userfaultfd:
//! a server of its own (same state as the parent's at the fork) serves it
//! on another thread until the child ends or the copy does (its children
//! die with its pid namespace then). The kernel says nothing when a forked
//! child exits, so an idle child server probes every
//! [`CHILD_PROBE_MS`] whether its process still has its memory (a
//! `UFFDIO_ZEROPAGE` outside every served range answers `ESRCH` once the
//! memory is gone, `ENOENT` before) and ends then, releasing its thread,
//! descriptor and page state: a fork-and-exit loop does not grow the
//! server (live children are bounded by the sandbox's `pids` limit).
//!
//! Zero pages the working set says were written ([`ZeroFill`]): the shared
//! zero page that `UFFDIO_ZEROPAGE` maps is read-only, so the copy's first
//! write to it takes a copy-on-write fault of its own. Prefetch gives the
//! pages the recording copy wrote (tagged `working_set::WRITTEN`,
//! [`super::working_set::tag_written_zero_faults`]) a private zeroed page
//! instead (`UFFDIO_COPY` from [`ZEROS`]), so that first write costs
//! nothing; the pages only read keep the shared zero page (no memory).

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use snapshotter::state::{AreaKind, MemoryArea, PAGE_SIZE};
use snapshotter::store::{AreaPages, ImageLayout, PageRun};

use super::page_source::LazyPages;
use super::RestoreError;

/// Pages copied at most per fault.
const FAULT_AROUND: u64 = 16;
/// How often an idle server of a forked child checks that the child is
/// still there, ms.
pub const CHILD_PROBE_MS: i32 = 100;
/// `UFFDIO_ZEROPAGE_MODE_DONTWAKE`.
const ZEROPAGE_MODE_DONTWAKE: u64 = 1;
/// Pages copied at most per prefetch step.
const PREFETCH_RUN: usize = 64;
/// The source of private zeroed pages (`UFFDIO_COPY` of zeros): in the
/// zero-initialised data of the program, so reading it maps the zero page
/// and costs no memory.
static ZEROS: [u8; PREFETCH_RUN * PAGE_SIZE as usize] = [0; PREFETCH_RUN * PAGE_SIZE as usize];
/// `UFFD_PAGEFAULT_FLAG_WRITE`: the fault is a write.
const PAGEFAULT_FLAG_WRITE: u64 = 1;

/// How the page server places the zero pages of the snapshot that the copy
/// writes: `THAW_UFFD_ZERO` in the server's environment (`map`, `written`,
/// `copy`; default `written`), read once. For measuring the ways against
/// each other (docs/restore.md, "First invocation after a restore").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ZeroFill {
    /// `map`: the shared zero page always (`UFFDIO_ZEROPAGE`), as before
    /// this switch: a write after it takes a copy-on-write fault.
    Map,
    /// `written` (default): a private zeroed page for a write fault and for
    /// the prefetched pages the working set tags written; the zero page
    /// for the others.
    Written,
    /// `copy`: a private zeroed page for every prefetched zero page too
    /// (and write faults), written or not: no copy-on-write fault at all,
    /// 4 KiB of memory per page.
    Copy,
}

impl ZeroFill {
    /// The mode `THAW_UFFD_ZERO` names; `Err` with the value if it names
    /// none.
    pub fn parse(value: &str) -> Result<ZeroFill, String> {
        match value {
            "map" => Ok(ZeroFill::Map),
            "written" => Ok(ZeroFill::Written),
            "copy" => Ok(ZeroFill::Copy),
            other => Err(format!(
                "THAW_UFFD_ZERO={other:?}: expected map, written or copy"
            )),
        }
    }

    /// The server's mode: `THAW_UFFD_ZERO`, or [`ZeroFill::Written`] (a
    /// value it does not know is logged and the default used).
    pub fn from_env() -> ZeroFill {
        static MODE: std::sync::OnceLock<ZeroFill> = std::sync::OnceLock::new();
        *MODE.get_or_init(|| match std::env::var("THAW_UFFD_ZERO") {
            Ok(v) => ZeroFill::parse(&v).unwrap_or_else(|err| {
                tracing::warn!(%err, "using THAW_UFFD_ZERO=written");
                ZeroFill::Written
            }),
            Err(_) => ZeroFill::Written,
        })
    }
}

const UFFD_API: u64 = 0xaa;
const FEATURE_EVENT_FORK: u64 = 1 << 1;
const FEATURE_EVENT_REMAP: u64 = 1 << 2;
const FEATURE_EVENT_REMOVE: u64 = 1 << 3;
const FEATURE_EVENT_UNMAP: u64 = 1 << 6;
const REGISTER_MODE_MISSING: u64 = 1;
const EVENT_PAGEFAULT: u8 = 0x12;
const EVENT_FORK: u8 = 0x13;
const EVENT_REMAP: u8 = 0x14;
const EVENT_REMOVE: u8 = 0x15;
const EVENT_UNMAP: u8 = 0x16;

/// `_IOWR(0xAA, nr, size)`.
const fn iowr(nr: u64, size: usize) -> u64 {
    (3 << 30) | ((size as u64) << 16) | (0xaa << 8) | nr
}

#[repr(C)]
#[derive(Default)]
struct UffdioApi {
    api: u64,
    features: u64,
    ioctls: u64,
}
const _: () = assert!(std::mem::size_of::<UffdioApi>() == 24);

#[repr(C)]
#[derive(Default)]
struct UffdioRegister {
    start: u64,
    len: u64,
    mode: u64,
    ioctls: u64,
}
const _: () = assert!(std::mem::size_of::<UffdioRegister>() == 32);

#[repr(C)]
#[derive(Default)]
struct UffdioCopy {
    dst: u64,
    src: u64,
    len: u64,
    mode: u64,
    copy: i64,
}
const _: () = assert!(std::mem::size_of::<UffdioCopy>() == 40);

#[repr(C)]
#[derive(Default)]
struct UffdioZeropage {
    start: u64,
    len: u64,
    mode: u64,
    zeropage: i64,
}
const _: () = assert!(std::mem::size_of::<UffdioZeropage>() == 32);

/// `struct uffd_msg`: event, padding, then 24 bytes of arguments.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct UffdMsg {
    event: u8,
    reserved1: u8,
    reserved2: u16,
    reserved3: u32,
    arg: [u64; 3],
}
const _: () = assert!(std::mem::size_of::<UffdMsg>() == 32);

const UFFDIO_API: u64 = iowr(0x3f, std::mem::size_of::<UffdioApi>());
const UFFDIO_REGISTER: u64 = iowr(0x00, std::mem::size_of::<UffdioRegister>());
const UFFDIO_COPY: u64 = iowr(0x03, std::mem::size_of::<UffdioCopy>());
const UFFDIO_ZEROPAGE: u64 = iowr(0x04, std::mem::size_of::<UffdioZeropage>());

fn ioctl<T>(fd: RawFd, request: u64, arg: &mut T) -> std::io::Result<()> {
    // SAFETY: `arg` is the kernel struct `request` expects, alive and
    // exclusively borrowed for the call.
    let rc = unsafe { libc::ioctl(fd, request as _, arg as *mut T) };
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn uffd_err(what: &str, source: std::io::Error) -> RestoreError {
    RestoreError::Io {
        what: format!("userfaultfd: {what}"),
        source,
    }
}

/// One area served lazily.
#[derive(Debug, Clone)]
struct Served {
    /// Its index in the snapshot's areas.
    area: usize,
    start: u64,
    end: u64,
    /// Offset of the area in the image.
    image_offset: u64,
    /// Per page: stored in the snapshot (true) or zero (false).
    stored: Vec<bool>,
    /// Per page: already filled by the server.
    done: Vec<bool>,
}

/// The zeroed ranges after `len` bytes moved from `from` to `to`: what was
/// at the destination is gone (whatever was zero there no longer is: the
/// moved pages are), and zeroed parts of the source move with it.
fn remap_zeroed(zeroed: &[(u64, u64)], from: u64, to: u64, len: u64) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    for &(s, e) in zeroed {
        // Parts outside the destination stay.
        if s < to {
            out.push((s, e.min(to)));
        }
        if e > to + len {
            out.push((s.max(to + len), e));
        }
    }
    for &(s, e) in zeroed {
        // Parts of the source move.
        let (s2, e2) = (s.max(from), e.min(from + len));
        if s2 < e2 {
            out.push((to + (s2 - from), to + (e2 - from)));
        }
    }
    out.retain(|&(s, e)| s < e);
    out
}

/// The areas of `areas` that uffd mode maps anonymous and serves.
pub fn is_lazy(area: &MemoryArea) -> bool {
    matches!(
        area.kind,
        AreaKind::Anonymous | AreaKind::Heap | AreaKind::FileCopied
    ) && !area.shared
}

/// Which pages of an area the image holds, walked by the list's runs (a
/// thread's stack is 2,048 pages, most of them one zero run: page by page,
/// a 16-thread copy's stacks cost ~30,000 steps).
fn stored_pages(pages: &AreaPages) -> Vec<bool> {
    let mut stored = Vec::with_capacity(pages.page_count() as usize);
    for run in pages.runs() {
        match run {
            PageRun::Zero(n) | PageRun::File(n) => stored.resize(stored.len() + *n as usize, false),
            PageRun::Hashes(h) => stored.resize(stored.len() + h.len(), true),
        }
    }
    stored
}

/// The page server of one copy.
#[derive(Debug)]
pub struct PageServer {
    uffd: OwnedFd,
    image: Arc<memmap2::Mmap>,
    /// An eventfd made readable when the copy ended: servers of its forked
    /// children stop then (the children die with the copy's namespace).
    stop: Arc<OwnedFd>,
    areas: Vec<Served>,
    /// `(new start, length, old start)` of every mremap, newest last.
    remaps: Vec<(u64, u64, u64)>,
    /// Ranges (current addresses) whose content is zero from now on.
    zeroed: Vec<(u64, u64)>,
    /// What was served.
    pub report: ServerReport,
    /// Saved page addresses to fill ahead of faults, popped from the end.
    prefetch: Vec<u64>,
    /// Of the prefetch list, the pages tagged written (sorted): zero pages
    /// of the snapshot among them get a private zeroed page ([`ZeroFill`]).
    written: Vec<u64>,
    /// How zero pages the copy writes are placed.
    zero_fill: ZeroFill,
    /// What the server did so far, readable while it runs.
    live: Arc<LiveReport>,
    /// Serves a child the copy forked (ends when the child is gone).
    forked: bool,
    /// Faulted pages whose fill met `EAGAIN`: another thread of the copy is
    /// changing its map (`madvise`, `mremap`, `munmap`) and waits for the
    /// server to read that event; filled again after the next read.
    deferred: Vec<u64>,
    /// A lazy restore: pages not in the image yet are fetched from its
    /// source first ([`super::page_source`]).
    lazy: Option<Arc<LazyPages>>,
}

/// What a running page server has done so far, shared with its owner: the
/// working set can be taken at the end of an invocation, long before the
/// copy exits. Also carries the test-only failure switch.
#[derive(Debug, Default)]
pub struct LiveReport {
    touched: Mutex<Vec<u64>>,
    zero_faults: Mutex<Vec<u64>>,
    faults: AtomicU64,
    prefetched: AtomicU64,
    fail: AtomicBool,
    exact: AtomicBool,
}

impl LiveReport {
    /// Saved addresses of the pages that faulted so far, in first-touch
    /// order (see [`ServerReport::touched`]); while recording exactly
    /// ([`LiveReport::record_exactly`]) those first touched by a write are
    /// tagged [`super::working_set::WRITTEN`].
    pub fn touched(&self) -> Vec<u64> {
        self.touched
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Of [`LiveReport::touched`], the faults on zero pages of the
    /// snapshot (saved addresses, first-touch order): those a working set
    /// tags written if the copy holds its own page there afterwards
    /// ([`super::working_set::tag_written_zero_faults`]).
    pub fn zero_faults(&self) -> Vec<u64> {
        self.zero_faults
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Faults served so far.
    pub fn faults(&self) -> u64 {
        self.faults.load(Ordering::Relaxed)
    }

    /// Pages copied ahead of any fault so far.
    pub fn prefetched(&self) -> u64 {
        self.prefetched.load(Ordering::Relaxed)
    }

    /// Test only: makes the server fail at its next page fault (it then
    /// kills the copy, as on any real failure).
    pub fn fail_next_fault(&self) {
        self.fail.store(true, Ordering::Relaxed);
    }

    /// From now on each fault fills its own page only (no fault-around),
    /// so that [`LiveReport::touched`] lists every page the copy touched
    /// and nothing else: the exact working set a copy recording it at
    /// deploy hands to nodes that fetch it from a shared store (which
    /// fetch the pages listed, not the runs around them). Costs a fault
    /// per page touched: for one recording copy, not for serving. Pages
    /// whose first touch was a write are listed tagged
    /// [`super::working_set::WRITTEN`].
    pub fn record_exactly(&self) {
        self.exact.store(true, Ordering::Relaxed);
    }
}

/// What a page server did for its copy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerReport {
    /// Page faults served.
    pub faults: u64,
    /// Pages copied from the image (faults, fault-around and prefetch).
    pub copied: u64,
    /// Zero pages placed (the shared zero page or a private zeroed one).
    pub zero: u64,
    /// Of `zero`, private zeroed pages (copied, [`ZeroFill`]).
    pub zero_private: u64,
    /// Of `copied`, pages copied ahead of any fault.
    pub prefetched: u64,
    /// Saved addresses of the pages that faulted, in first-touch order: the
    /// copy's working set, to prefetch next time ([`PageServer::prefetch`]).
    pub touched: Vec<u64>,
}

impl PageServer {
    /// Sets up `uffd` (pulled from the copy) for the copy's lazy areas,
    /// but those of `written` (mapped anonymous and written before the copy
    /// runs: the live threads' stacks, see
    /// [`super::thread::live_stacks`]). `image` is the snapshot's image
    /// mapped read-only in the restorer (the server keeps one mapping per
    /// image for all its copies, [`super::plans::SnapshotPlans::image_map`]:
    /// a mapping per copy cost each copy the faults that map the image's
    /// pages into the restorer and a `munmap` with its TLB shootdown when
    /// the copy ended).
    pub fn new(
        uffd: OwnedFd,
        image: Arc<memmap2::Mmap>,
        layout: &ImageLayout,
        areas: &[MemoryArea],
        pages: &[AreaPages],
        written: &std::collections::HashSet<usize>,
    ) -> Result<PageServer, RestoreError> {
        let mut api = UffdioApi {
            api: UFFD_API,
            features: FEATURE_EVENT_FORK
                | FEATURE_EVENT_REMAP
                | FEATURE_EVENT_REMOVE
                | FEATURE_EVENT_UNMAP,
            ioctls: 0,
        };
        ioctl(uffd.as_raw_fd(), UFFDIO_API, &mut api).map_err(|e| uffd_err("UFFDIO_API", e))?;
        // SAFETY: eventfd with valid flags returns a new descriptor or -1.
        let stop = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if stop < 0 {
            return Err(uffd_err("eventfd", std::io::Error::last_os_error()));
        }
        // SAFETY: a fresh descriptor nobody else owns.
        let stop = Arc::new(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(stop) });
        let mut served = Vec::new();
        for (index, area) in areas.iter().enumerate() {
            if !is_lazy(area) || written.contains(&index) {
                continue;
            }
            let mut reg = UffdioRegister {
                start: area.start,
                len: area.len(),
                mode: REGISTER_MODE_MISSING,
                ioctls: 0,
            };
            ioctl(uffd.as_raw_fd(), UFFDIO_REGISTER, &mut reg)
                .map_err(|e| uffd_err(&format!("UFFDIO_REGISTER {:#x}", area.start), e))?;
            let stored = stored_pages(&pages[index]);
            served.push(Served {
                area: index,
                start: area.start,
                end: area.end,
                image_offset: layout.areas[index].offset,
                done: vec![false; stored.len()],
                stored,
            });
        }
        Ok(PageServer {
            uffd,
            image,
            stop,
            areas: served,
            remaps: Vec::new(),
            zeroed: Vec::new(),
            report: ServerReport::default(),
            prefetch: Vec::new(),
            written: Vec::new(),
            zero_fill: ZeroFill::from_env(),
            live: Arc::new(LiveReport::default()),
            forked: false,
            deferred: Vec::new(),
            lazy: None,
        })
    }

    /// Serves a lazy restore: pages not in the image yet are fetched from
    /// `lazy`'s source before they are copied.
    pub fn with_lazy(mut self, lazy: Arc<LazyPages>) -> PageServer {
        self.lazy = Some(lazy);
        self
    }

    /// Lazy restore: fetches every page of the prefetch list that is not
    /// in the image yet, in one call of the source (which merges them into
    /// large ranged reads), before the copy resumes.
    pub fn fetch_prefetch(&mut self) -> Result<(), RestoreError> {
        let Some(lazy) = &self.lazy else {
            return Ok(());
        };
        let pages: Vec<(usize, usize)> = self
            .prefetch
            .iter()
            .filter_map(|&p| {
                let a = self.areas.iter().find(|a| (a.start..a.end).contains(&p))?;
                Some((a.area, ((p - a.start) / PAGE_SIZE) as usize))
            })
            .collect();
        lazy.ensure(&pages).map_err(RestoreError::Fetch)
    }

    /// Lazy restore: makes pages `index..index + count` of served area `a`
    /// present in the image (fetching those that are not).
    fn ensure(&self, a: usize, index: usize, count: usize) -> Result<(), RestoreError> {
        let Some(lazy) = &self.lazy else {
            return Ok(());
        };
        let area = self.areas[a].area;
        let pages: Vec<(usize, usize)> = (index..index + count).map(|i| (area, i)).collect();
        lazy.ensure(&pages).map_err(RestoreError::Fetch)
    }

    /// [`PageServer::ensure`] for a fault's run: a lazy restore fetches
    /// the area's next pages with it unless the faulting page is in the
    /// image already ([`LazyPages::ensure_run`]). Returns how many pages of
    /// the run may be copied (all of them without a lazy source).
    fn ensure_fault(&self, a: usize, index: usize, count: usize) -> Result<usize, RestoreError> {
        let Some(lazy) = &self.lazy else {
            return Ok(count);
        };
        match lazy.ensure_run(self.areas[a].area, index, count) {
            Ok(0) => Err(RestoreError::Fetch(super::page_source::PageSourceError(
                format!("page {index} of area {a} is not in the lazy image after its fetch").into(),
            ))),
            Ok(n) => Ok(n),
            Err(e) => Err(RestoreError::Fetch(e)),
        }
    }

    /// The server's live report (shared; see [`LiveReport`]).
    pub fn live(&self) -> Arc<LiveReport> {
        self.live.clone()
    }

    /// Pages (saved addresses, as [`ServerReport::touched`] lists them,
    /// tagged as a working set lists them) to fill while the copy runs, in
    /// large sorted runs, whenever no fault is waiting. Zero pages tagged
    /// `working_set::WRITTEN` get a private zeroed page ([`ZeroFill`]).
    pub fn prefetch(&mut self, pages: &[u64]) {
        let mut list: Vec<u64> = pages.iter().map(|p| p & !(PAGE_SIZE - 1)).collect();
        list.sort_unstable();
        list.dedup();
        list.reverse();
        self.prefetch = list;
        let mut written: Vec<u64> = pages
            .iter()
            .filter(|&&p| p & super::working_set::WRITTEN != 0)
            .map(|p| p & !(PAGE_SIZE - 1))
            .collect();
        written.sort_unstable();
        written.dedup();
        self.written = written;
    }

    /// Whether a prefetched zero page at `page` gets a private zeroed page
    /// rather than the shared zero page.
    fn private_zero(&self, page: u64) -> bool {
        match self.zero_fill {
            ZeroFill::Map => false,
            ZeroFill::Written => self.written.binary_search(&page).is_ok(),
            ZeroFill::Copy => true,
        }
    }

    /// Fills every page of the prefetch list now (before the copy runs).
    pub fn prefetch_all(&mut self) -> Result<(), RestoreError> {
        while !self.prefetch.is_empty() {
            self.prefetch_step()?;
        }
        Ok(())
    }

    /// Fills up to [`PREFETCH_RUN`] pages from the prefetch list. Best
    /// effort: the copy runs meanwhile, so a page may be there already or
    /// its range gone; such pages are skipped, never an error. A lazy
    /// restore's fetch that fails is one.
    fn prefetch_step(&mut self) -> Result<(), RestoreError> {
        let Some(page) = self.prefetch.pop() else {
            return Ok(());
        };
        let busy = |s: &PageServer, p: u64| {
            s.zeroed.iter().any(|&(a, b)| (a..b).contains(&p))
                || s.remaps
                    .iter()
                    .any(|&(to, len, _)| (to..to + len).contains(&p))
        };
        if busy(self, page) {
            return Ok(());
        }
        let Some(a) = self
            .areas
            .iter()
            .position(|a| (a.start..a.end).contains(&page))
        else {
            return Ok(());
        };
        let area = &self.areas[a];
        let index = ((page - area.start) / PAGE_SIZE) as usize;
        // A run of pages alike: all stored (copied from the image) or all
        // zero in the snapshot (the zero page mapped, so that touching
        // them costs no round trip to this server; a private zeroed page
        // for those recorded written, so that writing them costs no
        // copy-on-write fault).
        let stored = area.stored.get(index).copied().unwrap_or(false);
        let private = !stored && self.private_zero(page);
        let mut count = 0;
        // A lazy restore's run stops at a page not fetched yet: the list
        // was fetched whole, the pages after it are left to their faults.
        // That holds for the run's first page too: a page the list does not
        // name (the page after a run, pushed below as the start of the
        // next) is not fetched here, one round trip to the store each (it
        // made a numpy-pandas restore with a working set recorded exactly
        // fetch ~200 single pages before its resume: +8 s).
        let fetched = |count: usize| {
            self.lazy
                .as_ref()
                .is_none_or(|l| !l.missing(area.area, index + count))
        };
        while count < PREFETCH_RUN
            && index + count < area.stored.len()
            && area.stored[index + count] == stored
            && !area.done[index + count]
            && !busy(self, page + (count as u64) * PAGE_SIZE)
            && fetched(count)
            && (stored || self.private_zero(page + (count as u64) * PAGE_SIZE) == private)
        {
            count += 1;
        }
        if count == 0 {
            return Ok(());
        }
        if stored {
            self.ensure(a, index, count)?;
        }
        let filled = if stored {
            let src_off = (area.image_offset + index as u64 * PAGE_SIZE) as usize;
            let src = &self.image[src_off..src_off + count * PAGE_SIZE as usize];
            self.copy(page, src).is_ok()
        } else if private {
            self.copy(page, &ZEROS[..count * PAGE_SIZE as usize])
                .is_ok()
        } else {
            self.zero_run(page, count as u64).is_ok()
        };
        if filled {
            for d in &mut self.areas[a].done[index..index + count] {
                *d = true;
            }
            if stored {
                self.report.copied += count as u64;
            } else {
                self.report.zero += count as u64;
                if private {
                    self.report.zero_private += count as u64;
                }
            }
            self.report.prefetched += count as u64;
            self.live
                .prefetched
                .fetch_add(count as u64, Ordering::Relaxed);
        }
        // Pages the run covered leave the list. Each stands for the pages
        // after it too (the recording copy's server filled up to
        // FAULT_AROUND pages from each fault, and a recorded list names the
        // faults only): when one lies so close to the run's end that its
        // pages reach past it, the next run starts where this one ended
        // (else those pages fault, one round trip each).
        let end = page + count as u64 * PAGE_SIZE;
        let mut reach = end;
        while let Some(&p) = self.prefetch.last().filter(|&&p| p < end) {
            self.prefetch.pop();
            reach = reach.max(p + FAULT_AROUND * PAGE_SIZE);
        }
        if reach > end && self.prefetch.last() != Some(&end) {
            self.prefetch.push(end);
        }
        Ok(())
    }

    /// Fills again the faults that met `EAGAIN` (those that meet it again
    /// stay deferred).
    fn retry_deferred(&mut self) -> Result<(), RestoreError> {
        for page in std::mem::take(&mut self.deferred) {
            self.fill(page)?;
        }
        Ok(())
    }

    /// Whether `addr` is in an area this server fills.
    pub fn covers(&self, addr: u64) -> bool {
        self.areas.iter().any(|a| (a.start..a.end).contains(&addr))
    }

    /// Fills the page at `addr` (and its fault-around) now.
    pub fn fill(&mut self, addr: u64) -> Result<(), RestoreError> {
        self.fill_fault(addr, false)
    }

    /// [`PageServer::fill`] for a fault, `write` if the copy writes: a
    /// zero page of the snapshot written gets a private zeroed page (unless
    /// [`ZeroFill::Map`]).
    fn fill_fault(&mut self, addr: u64, write: bool) -> Result<(), RestoreError> {
        let page = addr & !(PAGE_SIZE - 1);
        if let Some(&(_, end)) = self.zeroed.iter().find(|&&(s, e)| (s..e).contains(&page)) {
            tracing::trace!(page, end, "fault in a freed range");
            return self.zero_around(page, end, write);
        }
        let mut saved = page;
        for &(to, len, from) in self.remaps.iter().rev() {
            if (to..to + len).contains(&saved) {
                saved = from + (saved - to);
            }
        }
        let moved = saved != page;
        let Some(a) = self
            .areas
            .iter()
            .position(|a| (a.start..a.end).contains(&saved))
        else {
            // Not a page of the snapshot (can only be new memory): zeros.
            tracing::trace!(page, "fault outside the snapshot's areas");
            if write && self.zero_fill != ZeroFill::Map {
                return self.zero_private(page);
            }
            return self.zero(page);
        };
        let area = &self.areas[a];
        let index = ((saved - area.start) / PAGE_SIZE) as usize;
        if !area.stored[index] {
            tracing::trace!(page, write, "fault on a zero page of the snapshot");
            self.areas[a].done[index] = true;
            if !moved && !self.forked {
                self.live
                    .zero_faults
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(page);
            }
            if write && self.zero_fill != ZeroFill::Map {
                return self.zero_private(page);
            }
            return self.zero(page);
        }
        // Fault-around only where addresses are still the saved ones, and
        // not while the working set is recorded exactly.
        let mut count = 1;
        if !moved && !self.live.exact.load(Ordering::Relaxed) {
            while count < FAULT_AROUND as usize
                && index + count < area.stored.len()
                && area.stored[index + count]
                && !area.done[index + count]
                && !self
                    .zeroed
                    .iter()
                    .any(|&(s, e)| (s..e).contains(&(page + count as u64 * PAGE_SIZE)))
            {
                count += 1;
            }
        }
        if let Some(lazy) = &self.lazy {
            if lazy.missing(area.area, index) {
                tracing::debug!(
                    page = format_args!("{saved:#x}"),
                    area_start = format_args!("{:#x}", area.start),
                    area_end = format_args!("{:#x}", area.end),
                    write,
                    "lazy restore: a fault fetches"
                );
            }
        }
        let mut count = self.ensure_fault(a, index, count)?;
        let area = &self.areas[a];
        let src_off = (area.image_offset + index as u64 * PAGE_SIZE) as usize;
        let len = count as u64 * PAGE_SIZE;
        let src = &self.image[src_off..src_off + len as usize];
        let result = self.copy(page, src);
        let result = match result {
            // Some page of the run was there already (or is gone): just the
            // faulting one.
            Err(_) if count > 1 => {
                count = 1;
                self.copy(page, &src[..PAGE_SIZE as usize])
            }
            r => r,
        };
        match result {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
            // The process's memory is gone (it is exiting, a fault of its
            // exit path): nobody can read the page any more; the server
            // ends when the process's pidfd says it ended.
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => {
                self.deferred.push(page);
                return Ok(());
            }
            Err(e) => return Err(uffd_err(&format!("UFFDIO_COPY at {page:#x}"), e)),
        }
        let area = &mut self.areas[a];
        for d in &mut area.done[index..index + count] {
            *d = true;
        }
        self.report.copied += count as u64;
        Ok(())
    }

    fn copy(&self, dst: u64, src: &[u8]) -> std::io::Result<()> {
        let mut c = UffdioCopy {
            dst,
            src: src.as_ptr() as u64,
            len: src.len() as u64,
            mode: 0,
            copy: 0,
        };
        // EAGAIN (the map is changing: an event waits to be read) goes back
        // to the caller; retrying here would spin while the thread that
        // changes the map waits for this server.
        ioctl(self.uffd.as_raw_fd(), UFFDIO_COPY, &mut c)
    }

    /// Maps the zero page over `count` pages from `start` (prefetch: any
    /// error leaves them to be served at their fault).
    fn zero_run(&self, start: u64, count: u64) -> std::io::Result<()> {
        let mut z = UffdioZeropage {
            start,
            len: count * PAGE_SIZE,
            mode: 0,
            zeropage: 0,
        };
        ioctl(self.uffd.as_raw_fd(), UFFDIO_ZEROPAGE, &mut z)
    }

    /// Serves a fault at `page` in a range the program emptied (up to
    /// `end`): the zero page over it and the following pages of the range,
    /// up to [`FAULT_AROUND`], in one call. Memory a program frees with
    /// `madvise` or by shrinking its heap is usually reused soon, page
    /// after page: one round trip to this server instead of one each.
    /// Every page of the range reads as zeros whichever way it is served
    /// (see [`PageServer::fill`]); a run the kernel refuses whole (it
    /// crosses into another mapping) falls back to the one page. A write
    /// fault gets private zeroed pages (`UFFDIO_COPY` of zeros, unless
    /// [`ZeroFill::Map`]): reused memory is written, and each page of a
    /// shared zero page run would take a copy-on-write fault.
    fn zero_around(&mut self, page: u64, end: u64, write: bool) -> Result<(), RestoreError> {
        let count = ((end.saturating_sub(page)) / PAGE_SIZE).clamp(1, FAULT_AROUND);
        let private = write && self.zero_fill != ZeroFill::Map;
        if count > 1 {
            let (result, placed) = if private {
                let mut c = UffdioCopy {
                    dst: page,
                    src: ZEROS.as_ptr() as u64,
                    len: count * PAGE_SIZE,
                    mode: 0,
                    copy: 0,
                };
                let r = ioctl(self.uffd.as_raw_fd(), UFFDIO_COPY, &mut c);
                (r, c.copy)
            } else {
                let mut z = UffdioZeropage {
                    start: page,
                    len: count * PAGE_SIZE,
                    mode: 0,
                    zeropage: 0,
                };
                let r = ioctl(self.uffd.as_raw_fd(), UFFDIO_ZEROPAGE, &mut z);
                (r, z.zeropage)
            };
            let done = match result {
                Ok(()) => count * PAGE_SIZE,
                // Part of the run was mapped (and woken) before a page
                // already there stopped it: the faulting page, first, is.
                Err(_) if placed > 0 => placed as u64,
                Err(_) => 0,
            };
            if done > 0 {
                self.report.zero += done / PAGE_SIZE;
                if private {
                    self.report.zero_private += done / PAGE_SIZE;
                }
                return Ok(());
            }
        }
        if private {
            self.zero_private(page)
        } else {
            self.zero(page)
        }
    }

    /// A private zeroed page at `page` (`UFFDIO_COPY` of zeros), for a
    /// write fault on a page that reads zeros; errors as
    /// [`PageServer::zero`]'s.
    fn zero_private(&mut self, page: u64) -> Result<(), RestoreError> {
        match self.copy(page, &ZEROS[..PAGE_SIZE as usize]) {
            Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => {
                self.deferred.push(page);
                return Ok(());
            }
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => return Ok(()),
            Err(e) => return Err(uffd_err(&format!("UFFDIO_COPY (zeros) at {page:#x}"), e)),
            Ok(()) => self.report.zero_private += 1,
        }
        self.report.zero += 1;
        Ok(())
    }

    fn zero(&mut self, page: u64) -> Result<(), RestoreError> {
        let mut z = UffdioZeropage {
            start: page,
            len: PAGE_SIZE,
            mode: 0,
            zeropage: 0,
        };
        match ioctl(self.uffd.as_raw_fd(), UFFDIO_ZEROPAGE, &mut z) {
            Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => {
                self.deferred.push(page);
                return Ok(());
            }
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
            // As for UFFDIO_COPY: the memory is gone with the process.
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => return Ok(()),
            Err(e) => return Err(uffd_err(&format!("UFFDIO_ZEROPAGE at {page:#x}"), e)),
            Ok(()) => {}
        }
        self.report.zero += 1;
        Ok(())
    }

    fn event(&mut self, msg: &UffdMsg, copy: &Arc<OwnedFd>) -> Result<(), RestoreError> {
        match msg.event {
            EVENT_FORK => {
                // The kernel put the child's userfaultfd in our fd table. Its
                // missing pages are what ours are now (the fork waits for
                // this event to be read).
                let fd = msg.arg[0] as u32 as RawFd;
                // SAFETY: the kernel just installed `fd` for us.
                let uffd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
                let child = PageServer {
                    uffd,
                    image: self.image.clone(),
                    stop: self.stop.clone(),
                    areas: self.areas.clone(),
                    remaps: self.remaps.clone(),
                    zeroed: self.zeroed.clone(),
                    report: ServerReport::default(),
                    prefetch: Vec::new(),
                    written: Vec::new(),
                    zero_fill: self.zero_fill,
                    live: Arc::new(LiveReport::default()),
                    forked: true,
                    deferred: Vec::new(),
                    lazy: self.lazy.clone(),
                };
                let end = self.stop.clone();
                child.spawn_with(end, copy.clone());
                Ok(())
            }
            EVENT_PAGEFAULT => {
                if self.live.fail.load(Ordering::Relaxed) {
                    return Err(RestoreError::Unsupported(
                        "page server failure forced by the test switch".into(),
                    ));
                }
                self.report.faults += 1;
                self.live.faults.fetch_add(1, Ordering::Relaxed);
                let page = msg.arg[1] & !(PAGE_SIZE - 1);
                if !self
                    .remaps
                    .iter()
                    .any(|&(to, len, _)| (to..to + len).contains(&page))
                {
                    // Recording exactly: a first touch that writes is
                    // tagged, so that mmap copies populate the page for
                    // writing (a copy-on-write fault less each).
                    let tagged = if msg.arg[0] & PAGEFAULT_FLAG_WRITE != 0
                        && self.live.exact.load(Ordering::Relaxed)
                    {
                        page | super::working_set::WRITTEN
                    } else {
                        page
                    };
                    self.report.touched.push(page);
                    self.live
                        .touched
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(tagged);
                }
                self.fill_fault(page, msg.arg[0] & PAGEFAULT_FLAG_WRITE != 0)
            }
            EVENT_REMAP => {
                let (from, to, len) = (msg.arg[0], msg.arg[1], msg.arg[2]);
                self.zeroed = remap_zeroed(&self.zeroed, from, to, len);
                // The source is vacated: fault-around must not reach into it.
                if from + len <= to || to + len <= from {
                    self.zeroed.push((from, from + len));
                }
                self.remaps.push((to, len, from));
                Ok(())
            }
            EVENT_REMOVE | EVENT_UNMAP => {
                let (start, end) = (msg.arg[0], msg.arg[1]);
                self.zeroed.push((start, end));
                Ok(())
            }
            other => Err(RestoreError::Unsupported(format!(
                "userfaultfd event {other:#x}"
            ))),
        }
    }

    /// Whether the process this server's userfaultfd belongs to still has
    /// its memory: `UFFDIO_ZEROPAGE` of a page outside every range the
    /// server handles (so it can never place anything) fails with `ESRCH`
    /// once the memory is gone, and otherwise with `ENOENT`/`EINVAL`/
    /// `EEXIST` (no registered area there).
    fn process_alive(&self) -> Result<bool, RestoreError> {
        let handled = |page: u64| {
            self.areas.iter().any(|a| (a.start..a.end).contains(&page))
                || self
                    .remaps
                    .iter()
                    .any(|&(to, len, _)| (to..to + len).contains(&page))
        };
        let mut page = 0x10_0000u64;
        while handled(page) {
            page += PAGE_SIZE;
        }
        let mut zero = UffdioZeropage {
            start: page,
            len: PAGE_SIZE,
            mode: ZEROPAGE_MODE_DONTWAKE,
            zeropage: 0,
        };
        match ioctl(self.uffd.as_raw_fd(), UFFDIO_ZEROPAGE, &mut zero) {
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Ok(false),
            Ok(()) => Err(RestoreError::Unsupported(format!(
                "userfaultfd liveness probe placed a page at {page:#x}"
            ))),
            Err(_) => Ok(true),
        }
    }

    /// Serves until `end` is readable (the copy's pidfd, or the stop
    /// eventfd for a forked child's server). Returns the stats.
    fn serve(mut self, end: &OwnedFd, copy: &Arc<OwnedFd>) -> Result<ServerReport, RestoreError> {
        let mut msgs = [UffdMsg::default(); 16];
        loop {
            let mut fds = [
                libc::pollfd {
                    fd: self.uffd.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: end.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            // Deferred faults: the event they wait for may be read only
            // just before the kernel lets the map change finish; look again
            // shortly. A child's server probes now and then whether the
            // child is gone.
            let timeout = if !self.deferred.is_empty() {
                1
            } else if !self.prefetch.is_empty() {
                0
            } else if self.forked {
                CHILD_PROBE_MS
            } else {
                -1
            };
            // SAFETY: `fds` is a valid array of two pollfds.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, timeout) };
            if n == 0 {
                self.retry_deferred()?;
                if !self.prefetch.is_empty() {
                    self.prefetch_step()?;
                } else if self.forked && self.deferred.is_empty() && !self.process_alive()? {
                    return Ok(self.report);
                }
                continue;
            }
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.raw_os_error() == Some(libc::EINTR) {
                    continue;
                }
                return Err(uffd_err("poll", e));
            }
            if fds[0].revents & libc::POLLIN != 0 {
                // SAFETY: reading whole uffd_msg records into `msgs`.
                let r = unsafe {
                    libc::read(
                        self.uffd.as_raw_fd(),
                        msgs.as_mut_ptr().cast(),
                        std::mem::size_of_val(&msgs),
                    )
                };
                if r < 0 {
                    let e = std::io::Error::last_os_error();
                    if e.raw_os_error() == Some(libc::EAGAIN) {
                        continue;
                    }
                    return Err(uffd_err("read", e));
                }
                let count = r as usize / std::mem::size_of::<UffdMsg>();
                for msg in &msgs[..count] {
                    self.event(msg, copy)?;
                }
                self.retry_deferred()?;
                continue;
            }
            if fds[1].revents != 0 || fds[0].revents & (libc::POLLHUP | libc::POLLERR) != 0 {
                return Ok(self.report);
            }
        }
    }

    /// Runs the server on its own thread until the copy (`pidfd`) ends;
    /// kills the copy if serving fails.
    pub fn spawn(self, pidfd: OwnedFd) -> JoinHandle<Result<ServerReport, RestoreError>> {
        let copy = Arc::new(pidfd);
        self.spawn_with(copy.clone(), copy)
    }

    /// Runs the server on its own thread until the process `pidfd` ends; if
    /// serving fails, kills `copy` (the root of the process tree `pidfd`
    /// belongs to: the whole copy dies with its namespace, never reading
    /// zeros).
    pub fn spawn_in_tree(
        self,
        pidfd: OwnedFd,
        copy: Arc<OwnedFd>,
    ) -> JoinHandle<Result<ServerReport, RestoreError>> {
        self.spawn_with(Arc::new(pidfd), copy)
    }

    /// Runs the server until `end` is readable; on failure kills `copy`
    /// (its namespace, forked children included, dies with it). The copy's
    /// own server signals the stop eventfd when it returns.
    fn spawn_with(
        self,
        end: Arc<OwnedFd>,
        copy: Arc<OwnedFd>,
    ) -> JoinHandle<Result<ServerReport, RestoreError>> {
        std::thread::Builder::new()
            .name("thaw-uffd".into())
            .spawn(move || {
                let stop = self.stop.clone();
                let main = Arc::ptr_eq(&end, &copy);
                let result = self.serve(&end, &copy);
                if let Err(err) = &result {
                    tracing::error!(%err, "page server failed; killing the copy");
                    // SAFETY: pidfd_send_signal on a pidfd we own.
                    unsafe {
                        libc::syscall(
                            libc::SYS_pidfd_send_signal,
                            copy.as_raw_fd(),
                            libc::SIGKILL,
                            std::ptr::null::<libc::siginfo_t>(),
                            0,
                        );
                    }
                }
                if main {
                    let one = 1u64;
                    // SAFETY: an 8-byte write to an eventfd we own.
                    unsafe { libc::write(stop.as_raw_fd(), (&one as *const u64).cast(), 8) };
                }
                result
            })
            .expect("spawning the page server thread")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remap_clears_the_destination_and_moves_the_source() {
        // [0x1000, 0x5000) zeroed; move 0x2000 bytes from 0x8000 to 0x2000.
        let z = remap_zeroed(&[(0x1000, 0x5000)], 0x8000, 0x2000, 0x2000);
        assert_eq!(z, vec![(0x1000, 0x2000), (0x4000, 0x5000)]);
        // Zeroed source part moves along.
        let z = remap_zeroed(&[(0x9000, 0xa000)], 0x8000, 0x20000, 0x4000);
        assert_eq!(z, vec![(0x9000, 0xa000), (0x21000, 0x22000)]);
    }

    #[test]
    fn zero_fill_modes_by_name_and_a_clear_error_otherwise() {
        assert_eq!(ZeroFill::parse("map"), Ok(ZeroFill::Map));
        assert_eq!(ZeroFill::parse("written"), Ok(ZeroFill::Written));
        assert_eq!(ZeroFill::parse("copy"), Ok(ZeroFill::Copy));
        let err = ZeroFill::parse("zero").unwrap_err();
        assert!(err.contains("map, written or copy"), "{err}");
    }

    #[test]
    fn stored_pages_by_runs_match_the_page_list() {
        use snapshotter::store::PageSlot;
        let mut pages = AreaPages::new();
        pages.push_zero(3);
        pages.push_hash(snapshotter::store::PageHash([1; 32]));
        pages.push_hash(snapshotter::store::PageHash([2; 32]));
        pages.push_file(2);
        pages.push_hash(snapshotter::store::PageHash([3; 32]));
        pages.push_zero(2040);
        let by_page: Vec<bool> = pages
            .iter()
            .map(|s| matches!(s, PageSlot::Hash(_)))
            .collect();
        assert_eq!(stored_pages(&pages), by_page);
        assert_eq!(by_page.len(), 2048);
        assert_eq!(by_page.iter().filter(|&&s| s).count(), 3);
    }
}
