//! Capture of a live process and all its threads.
//!
//! [`capture`] stops every thread of a process without disturbing it
//! (`PTRACE_SEIZE` + `PTRACE_INTERRUPT` each, `/proc/PID/task` listed again
//! until stable: [`ptrace::stop_all`]), refuses it if a copy could not be
//! faithful ([`Refusal`]), reads its process-wide state through the main
//! thread and each thread's own state ([`thread`]) into a [`ProcessState`],
//! hands every page of private content that is not zero to a [`PageSink`],
//! and detaches every thread: the original keeps running.
//!
//! ```text
//!   seize + interrupt every thread ─ refuse? (children, seccomp filters
//!   other than the accepted ones) ─ the process's pending signals
//!   (PTRACE_PEEKSIGINFO_SHARED)
//!   ─ fds (refuse TCP, foreign pipes, locks) ─ maps (refuse shared memory
//!     other processes map)
//!   ─ main thread, injected: rt_sigaction ×n, brk(0), timer_gettime ×n,
//!     getitimer ×3 (refuse timers on clocks a copy cannot have),
//!     PR_GET_CHILD_SUBREAPER, membarrier registrations
//!   ─ per thread: regs, xsave, sigmask, pending signals, rseq, robust
//!     list, name, sched;
//!     injected in that thread: PR_GET_TID_ADDRESS, sigaltstack,
//!     PR_GET_PDEATHSIG
//!   ─ pagemap scan
//!   ─ process_vm_readv batches + zero check (reader thread) ─ sink
//!   ─ detach every thread
//! ```
//!
//! Injected calls run in one thread at a time while all others stay
//! stopped: what is process-wide goes through the main thread, what is
//! per thread through that thread.
//!
//! A process with children is captured with them by [`tree`] (each process
//! as above, all of them stopped together).
//!
//! Modules: [`ptrace`] (holding the threads), [`inject`] (running syscalls
//! in one, reusable by the restorer), [`refuse`], [`procfs`], and one
//! module per kind of state, named as its
//! state type's module (`state::X`) and its restore (`pool::restore::X`):
//! [`signals`], [`mm`], [`process`], [`memory`] (with [`maps`], [`areas`],
//! [`pagemap`]), [`fds`] (with [`kobj`], [`inotify`], [`unixpair`]), [`thread`],
//! [`seccomp`], [`timers`], [`pending`], [`shared`], [`sysv`], [`tree`].

pub mod areas;
pub mod depends;
pub mod fds;
pub mod inject;
pub mod inotify;
pub mod kobj;
pub mod maps;
pub mod memory;
pub mod mm;
pub mod pagemap;
pub mod pending;
pub mod process;
pub mod procfs;
pub mod ptrace;
pub mod refuse;
pub mod seccomp;
pub mod shared;
pub mod signals;
pub mod socket;
pub mod sysv;
pub mod thread;
pub mod timers;
pub mod tree;
pub mod unixpair;

use std::time::{Duration, Instant};

pub use inject::{InjectError, Injector};
pub use memory::MemoryError;
pub use pagemap::PagemapError;
pub use ptrace::{stop_all, PtraceError, Seized};
pub use refuse::Refusal;
pub use socket::ConnectionPolicy;

use crate::state::{AreaKind, ProcessState, PAGE_SIZE, STATE_VERSION};
use memory::AreaPlan;
use pagemap::{Pagemap, Range};
use procfs::Status;

/// A sink could not take pages.
#[derive(Debug, thiserror::Error)]
#[error("page sink failed: {0}")]
pub struct SinkError(pub Box<dyn std::error::Error + Send + Sync>);

/// Where captured page contents go.
pub trait PageSink {
    /// Receives `data.len() / 4096` consecutive non-zero pages of area
    /// number `area` (index into [`ProcessState::areas`]), the first of which
    /// is page `first_page` of that area (counted from the area's start).
    /// Calls come in address order; `data` is only valid during the call.
    fn pages(&mut self, area: usize, first_page: u64, data: &[u8]) -> Result<(), SinkError>;
}

/// A [`PageSink`] that keeps everything in memory (for tests and tools).
#[derive(Debug, Default)]
pub struct VecSink {
    /// `(area, first_page, data)` per call, in call order.
    pub batches: Vec<(usize, u64, Vec<u8>)>,
}

impl VecSink {
    /// Every stored page as `(area, page index, content)`.
    pub fn pages(&self) -> impl Iterator<Item = (usize, u64, &[u8])> + '_ {
        self.batches.iter().flat_map(|(area, first, data)| {
            data.chunks_exact(PAGE_SIZE as usize)
                .enumerate()
                .map(move |(i, page)| (*area, first + i as u64, page))
        })
    }

    /// Total bytes received.
    pub fn bytes(&self) -> u64 {
        self.batches.iter().map(|(_, _, d)| d.len() as u64).sum()
    }
}

impl PageSink for VecSink {
    fn pages(&mut self, area: usize, first_page: u64, data: &[u8]) -> Result<(), SinkError> {
        self.batches.push((area, first_page, data.to_vec()));
        Ok(())
    }
}

/// How to capture.
#[derive(Debug, Clone)]
pub struct CaptureOptions {
    /// Descriptors that belong to the runtime protocol and the function's
    /// logs: pipes and Unix sockets there are recorded as ends the restorer
    /// reconnects; anywhere else they are refused. Default 0..=4.
    pub protocol_fds: Vec<i32>,
    /// Bytes read per `process_vm_readv` batch. Default 2 MiB (small enough that
    /// the batch is still in cache when the sink hashes it).
    pub batch_bytes: usize,
    /// Use the `PAGEMAP_SCAN` ioctl when the kernel has it (else pagemap
    /// entries are read). Default true.
    pub pagemap_scan: bool,
    /// Seccomp programs (8 bytes per instruction, as the kernel returns
    /// them) a captured process may run under: each of its filters must be
    /// one of these, or the capture is refused ([`seccomp::check`]). Default
    /// none: a process under any filter is refused.
    pub seccomp_filters: Vec<Vec<u8>>,
    /// Capture the process's descendants too, as one tree
    /// ([`tree::capture_tree_timed`]); when false a process with children
    /// is refused. Default false; `thaw snapshot` and the server's capture
    /// at deploy set it (both restore trees).
    pub tree: bool,
    /// What to do with connections to outside the process (the spec field
    /// `on_snapshot_connections`): cut them in every copy (default) or
    /// refuse the capture. Listening, UDP and netlink sockets are re-created
    /// either way.
    pub connections: ConnectionPolicy,
}

impl Default for CaptureOptions {
    fn default() -> Self {
        CaptureOptions {
            protocol_fds: vec![0, 1, 2, 3, 4],
            batch_bytes: 2 << 20,
            pagemap_scan: true,
            seccomp_filters: Vec::new(),
            tree: false,
            connections: ConnectionPolicy::Cut,
        }
    }
}

/// Where the time of a capture went.
#[derive(Debug, Clone, Copy, Default)]
pub struct CaptureTimings {
    /// Seize, interrupt, wait for the stop.
    pub stop: Duration,
    /// Refusal checks, fds, maps, registers, injected syscalls, attributes.
    pub state: Duration,
    /// Finding private pages (pagemap).
    pub scan: Duration,
    /// Reading pages and checking them for zero (reader thread).
    pub read: Duration,
    /// Inside the page sink (calling thread, overlapping `read`).
    pub sink: Duration,
    /// Wall time of reading and storing pages together.
    pub pages: Duration,
    /// Detaching.
    pub detach: Duration,
    /// Bytes read from the process.
    pub bytes_read: u64,
    /// Bytes handed to the sink.
    pub bytes_stored: u64,
    /// Whether `PAGEMAP_SCAN` was used.
    pub used_pagemap_scan: bool,
}

impl CaptureTimings {
    /// Total time from seize to detach.
    pub fn total(&self) -> Duration {
        self.stop + self.state + self.scan + self.pages + self.detach
    }
}

/// Why a capture failed. A refused capture names what could not be copied.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// The process cannot be restored faithfully.
    #[error("capture of pid {pid} refused: {reason}")]
    Refused {
        /// The process.
        pid: i32,
        /// What and why.
        reason: Refusal,
    },
    /// Holding the process failed.
    #[error(transparent)]
    Ptrace(#[from] PtraceError),
    /// Running a syscall in the process failed.
    #[error(transparent)]
    Inject(#[from] InjectError),
    /// A syscall run in the process returned an error.
    #[error("{call} inside pid {pid} failed with errno {errno}")]
    Injected {
        /// The process.
        pid: i32,
        /// The call.
        call: String,
        /// The errno it returned.
        errno: i32,
    },
    /// Reading memory or storing pages failed.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// Reading pagemap failed.
    #[error(transparent)]
    Pagemap(#[from] PagemapError),
    /// The memory map could not be parsed.
    #[error(transparent)]
    Maps(#[from] maps::MapsError),
    /// A `/proc` file could not be read.
    #[error("cannot read {path}: {source}")]
    Proc {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// A `/proc` file had unexpected content.
    #[error("unexpected content in {path}: {what}")]
    Parse {
        /// The file.
        path: String,
        /// What was wrong.
        what: String,
    },
    /// A system call of the capturing process failed.
    #[error("{call} for pid {pid} failed: {errno}")]
    Sys {
        /// The process.
        pid: i32,
        /// The call.
        call: &'static str,
        /// Why.
        errno: nix::errno::Errno,
    },
}

impl CaptureError {
    /// A refusal of `pid` for `reason`.
    pub fn refused(pid: i32, reason: Refusal) -> CaptureError {
        CaptureError::Refused { pid, reason }
    }
}

/// Captures `pid`: see the module docs. Non-zero private pages go to `sink`.
pub fn capture(
    pid: i32,
    options: &CaptureOptions,
    sink: &mut dyn PageSink,
) -> Result<ProcessState, CaptureError> {
    capture_timed(pid, options, sink).map(|(state, _)| state)
}

/// [`capture`], also reporting where the time went. A process with
/// children is refused ([`tree::capture_tree_timed`] captures them too).
pub fn capture_timed(
    pid: i32,
    options: &CaptureOptions,
    sink: &mut dyn PageSink,
) -> Result<(ProcessState, CaptureTimings), CaptureError> {
    let mut timings = CaptureTimings::default();
    let started = Instant::now();
    refuse::check_main_thread(pid)?;
    let mut held = ptrace::stop_all(pid)?;
    timings.stop = started.elapsed();
    let started = Instant::now();
    refuse::check_children(pid)?;
    timings.state += started.elapsed();
    let state = capture_held(pid, &mut held, options, false, &[], sink, &mut timings)?;
    detach(held, &mut timings)?;
    Ok((state, timings))
}

/// Lets every thread of a captured process go: every thread but the main
/// one first, so the main thread (which programs wait on the least) is the
/// last to run again.
fn detach(mut held: Vec<Seized>, timings: &mut CaptureTimings) -> Result<(), CaptureError> {
    let started = Instant::now();
    while let Some(seized) = held.pop() {
        seized.detach()?;
    }
    timings.detach += started.elapsed();
    Ok(())
}

/// Captures the process `pid` whose threads are all `held` (stopped, the
/// main thread first), adding to `timings`; it stays stopped. `in_tree`:
/// it is one process of a tree being captured, whose pipes and socket
/// pairs may have their other ends in other processes of the tree (checked
/// by [`tree`] once all are captured); `tree`: the host pids of every
/// process of that tree (empty for a single process), which may share its
/// anonymous shared memory.
fn capture_held(
    pid: i32,
    held: &mut [Seized],
    options: &CaptureOptions,
    in_tree: bool,
    tree: &[i32],
    sink: &mut dyn PageSink,
    timings: &mut CaptureTimings,
) -> Result<ProcessState, CaptureError> {
    let started = Instant::now();
    let status = Status::read(pid)?;
    let pending = pending::process(pid, &status)?;
    seccomp::check(
        pid,
        status.number("Seccomp")? as u32,
        &options.seccomp_filters,
    )?;
    let fds = fds::capture_with(pid, &options.protocol_fds, in_tree, options.connections)?;
    let entries = maps::parse_maps(&procfs::read_text(pid, "maps")?)?;
    let mut areas = areas::classify(pid, &entries)?;
    areas::link_memfd_areas(pid, &fds, &areas)?;
    shared::check_unshared(pid, tree, &areas)?;
    sysv::describe(pid, tree, &mut areas)?;
    let (main, _) = held
        .split_first_mut()
        .expect("stop_all holds the main thread");
    let injector = Injector::find(main)?;
    // Per thread first: the registers are read before anything is injected
    // into that thread.
    let mut threads = Vec::with_capacity(held.len());
    for seized in held.iter_mut() {
        threads.push(thread::capture(pid, seized, &injector)?);
    }
    let tids: Vec<(i32, i32)> = held
        .iter()
        .zip(&threads)
        .map(|(seized, thread)| (seized.pid(), thread.tid))
        .collect();
    let main = &mut held[0];
    let signals = signals::capture(main, &injector, &status)?;
    let mm = mm::capture(main, &injector)?;
    let timers = timers::capture(main, &injector, &tids)?;
    let mut process = process::capture(pid, &status)?;
    process::injected(&mut held[0], &injector, &mut process)?;
    let personality = process::personality(pid)?;
    let ids = tree::read_ids(pid)?;
    timings.state += started.elapsed();

    let started = Instant::now();
    let plans = plan_pages(pid, &mut areas, options)?;
    timings.scan += started.elapsed();

    let stats = memory::read_pages(pid, &plans.plans, &mut areas, options.batch_bytes, sink)?;
    timings.read += stats.read;
    timings.sink += stats.sink;
    timings.pages += stats.wall;
    timings.bytes_read += stats.bytes_read;
    timings.bytes_stored += stats.bytes_stored;
    timings.used_pagemap_scan = plans.used_scan;

    Ok(ProcessState {
        version: STATE_VERSION,
        pid: threads[0].tid,
        personality,
        signals,
        mm,
        process,
        areas,
        fds,
        threads,
        ids,
        timers,
        pending,
    })
}

struct Plans {
    plans: Vec<AreaPlan>,
    used_scan: bool,
}

/// Finds the pages to read in every area that can hold private content,
/// and settles `FileUnchanged` versus `FilePrivate`.
fn plan_pages(
    pid: i32,
    areas: &mut [crate::state::MemoryArea],
    options: &CaptureOptions,
) -> Result<Plans, CaptureError> {
    let mut pagemap = Pagemap::open(pid, options.pagemap_scan)?;
    let mut plans = Vec::new();
    for (index, area) in areas.iter_mut().enumerate() {
        let scan = match area.kind {
            AreaKind::FileUnchanged => !area.shared,
            kind => kind.has_private_pages(),
        };
        if !scan {
            continue;
        }
        let mut ranges = Vec::new();
        if shared::is_shared_anonymous_area(area) {
            ranges = shared::ranges(pid, area)?;
        } else if sysv::is_sysv(area) {
            ranges = sysv::ranges(pid, area)?;
        } else {
            pagemap.private_ranges(area.start, area.end, &mut ranges)?;
        }
        if area.kind == AreaKind::FileCopied {
            ranges = copied_file_ranges(area, ranges);
        }
        if area.kind == AreaKind::FileUnchanged && !ranges.is_empty() {
            area.kind = AreaKind::FilePrivate;
        }
        if !ranges.is_empty() {
            plans.push(AreaPlan {
                area: index,
                readable: area.prot.read,
                ranges,
            });
        }
    }
    Ok(Plans {
        plans,
        used_scan: pagemap.uses_scan(),
    })
}

/// For a mapping of a deleted file, every page that lies inside the file,
/// plus private pages beyond its end.
fn copied_file_ranges(area: &crate::state::MemoryArea, private: Vec<Range>) -> Vec<Range> {
    let size = area.file.map(|f| f.size).unwrap_or(0);
    let in_file = size.saturating_sub(area.offset).div_ceil(PAGE_SIZE) * PAGE_SIZE;
    let file_end = (area.start + in_file).min(area.end);
    let mut ranges = Vec::new();
    if file_end > area.start {
        ranges.push(Range {
            start: area.start,
            end: file_end,
        });
    }
    for range in private {
        let start = range.start.max(file_end);
        if start < range.end {
            ranges.push(Range {
                start,
                end: range.end,
            });
        }
    }
    ranges
}
