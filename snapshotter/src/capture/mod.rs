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
//!   seize + interrupt every thread ─ refuse? (children, pending signals
//!   of the process or of any thread, seccomp filters other than the
//!   accepted ones)
//!   ─ fds (refuse TCP, foreign pipes, locks) ─ maps (refuse shared memory)
//!   ─ main thread, injected: rt_sigaction ×n, brk(0), getitimer ×3
//!   ─ per thread: regs, xsave, sigmask, rseq, robust list, name, sched;
//!     injected in that thread: PR_GET_TID_ADDRESS, sigaltstack
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
//! in one, reusable by the restorer), [`maps`], [`areas`], [`pagemap`],
//! [`memory`], [`signals`], [`thread`], [`mm`], [`fds`], [`refuse`],
//! [`seccomp`], [`tree`].

pub mod areas;
pub mod fds;
pub mod inject;
pub mod kobj;
pub mod maps;
pub mod memory;
pub mod mm;
pub mod pagemap;
pub mod procfs;
pub mod ptrace;
pub mod refuse;
pub mod seccomp;
pub mod signals;
pub mod thread;
pub mod tree;
pub mod unixpair;

use std::time::{Duration, Instant};

pub use inject::{InjectError, Injector};
pub use memory::MemoryError;
pub use pagemap::PagemapError;
pub use ptrace::{stop_all, PtraceError, Seized};
pub use refuse::Refusal;

use crate::state::{AreaKind, ProcessAttributes, ProcessState, Rlimit, PAGE_SIZE, STATE_VERSION};
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
    /// is refused. Default false (a function's sandbox restores single
    /// processes); `thaw snapshot` sets it.
    pub tree: bool,
}

impl Default for CaptureOptions {
    fn default() -> Self {
        CaptureOptions {
            protocol_fds: vec![0, 1, 2, 3, 4],
            batch_bytes: 2 << 20,
            pagemap_scan: true,
            seccomp_filters: Vec::new(),
            tree: false,
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
    let state = capture_held(pid, &mut held, options, false, sink, &mut timings)?;
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
/// by [`tree`] once all are captured).
fn capture_held(
    pid: i32,
    held: &mut [Seized],
    options: &CaptureOptions,
    in_tree: bool,
    sink: &mut dyn PageSink,
    timings: &mut CaptureTimings,
) -> Result<ProcessState, CaptureError> {
    let started = Instant::now();
    let status = Status::read(pid)?;
    refuse::check_pending_signals(pid, &status)?;
    seccomp::check(
        pid,
        status.number("Seccomp")? as u32,
        &options.seccomp_filters,
    )?;
    for seized in held.iter() {
        refuse::check_thread_signals(pid, seized.pid())?;
    }
    let fds = fds::capture_with(pid, &options.protocol_fds, in_tree)?;
    let entries = maps::parse_maps(&procfs::read_text(pid, "maps")?)?;
    let mut areas = areas::classify(pid, &entries)?;
    areas::link_memfd_areas(pid, &fds, &areas)?;
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
    let main = &mut held[0];
    let signals = signals::capture(main, &injector, &status)?;
    let mm = mm::capture(main, &injector)?;
    thread::check_timers(main, &injector)?;
    let process = attributes(pid, &status)?;
    let ids = tree::read_ids(pid)?;
    let personality_text = procfs::read_text(pid, "personality")?;
    let personality =
        u32::from_str_radix(personality_text.trim(), 16).map_err(|_| CaptureError::Parse {
            path: format!("/proc/{pid}/personality"),
            what: format!("{personality_text:?} is not hexadecimal"),
        })?;
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
        pagemap.private_ranges(area.start, area.end, &mut ranges)?;
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

/// Number of `RLIMIT_*` resources Linux has (`RLIM_NLIMITS`).
const RLIMITS: u32 = 16;

/// cwd, umask, limits and credentials.
fn attributes(pid: i32, status: &Status) -> Result<ProcessAttributes, CaptureError> {
    let rlimits = match rlimits_prlimit(pid) {
        Ok(r) => r,
        // Reading another user's limits with prlimit needs CAP_SYS_RESOURCE,
        // which some hosts withhold even from root; /proc/PID/limits has them
        // too (ptrace access, which capture has anyway).
        Err(CaptureError::Sys {
            errno: nix::errno::Errno::EPERM,
            ..
        }) => rlimits_procfs(pid)?,
        Err(e) => return Err(e),
    };
    Ok(ProcessAttributes {
        rlimits,
        ..attributes_rest(pid, status)?
    })
}

/// Limits from `/proc/PID/limits`: one line per resource in `RLIMIT_*` order
/// after a header, columns at fixed offsets (name 26, soft 21, hard 21).
fn rlimits_procfs(pid: i32) -> Result<Vec<Rlimit>, CaptureError> {
    let text =
        std::fs::read_to_string(format!("/proc/{pid}/limits")).map_err(|e| CaptureError::Sys {
            pid,
            call: "read /proc/PID/limits",
            errno: nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
        })?;
    let parse = |field: &str| -> Option<u64> {
        match field.trim() {
            "unlimited" => Some(u64::MAX),
            n => n.parse().ok(),
        }
    };
    let mut out = Vec::new();
    for (resource, line) in text.lines().skip(1).take(RLIMITS as usize).enumerate() {
        let soft = line.get(26..47).and_then(parse);
        let hard = line.get(47..68).and_then(parse);
        let (Some(soft), Some(hard)) = (soft, hard) else {
            return Err(CaptureError::Sys {
                pid,
                call: "parse /proc/PID/limits",
                errno: nix::errno::Errno::EINVAL,
            });
        };
        out.push(Rlimit {
            resource: resource as u32,
            soft,
            hard,
        });
    }
    Ok(out)
}

fn rlimits_prlimit(pid: i32) -> Result<Vec<Rlimit>, CaptureError> {
    let mut rlimits = Vec::new();
    for resource in 0..RLIMITS {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: a null new-limit pointer only reads; `limit` is a valid
        // out-parameter for the old limit.
        let rc = unsafe { libc::prlimit(pid, resource as _, std::ptr::null(), &mut limit) };
        if rc != 0 {
            return Err(CaptureError::Sys {
                pid,
                call: "prlimit",
                errno: nix::errno::Errno::last(),
            });
        }
        rlimits.push(Rlimit {
            resource,
            soft: limit.rlim_cur,
            hard: limit.rlim_max,
        });
    }
    Ok(rlimits)
}

fn attributes_rest(pid: i32, status: &Status) -> Result<ProcessAttributes, CaptureError> {
    Ok(ProcessAttributes {
        cwd: procfs::read_link(pid, "cwd")?,
        umask: status.octal("Umask")?,
        rlimits: Vec::new(),
        uids: status.ids("Uid")?,
        gids: status.ids("Gid")?,
        groups: status.numbers("Groups")?,
        capabilities: [
            status.hex("CapInh")?,
            status.hex("CapPrm")?,
            status.hex("CapEff")?,
            status.hex("CapBnd")?,
            status.hex("CapAmb")?,
        ],
        no_new_privs: status.number("NoNewPrivs")? != 0,
        seccomp: status.number("Seccomp")? as u32,
    })
}

#[cfg(test)]
mod rlimit_tests {
    use super::*;

    #[test]
    fn procfs_limits_match_prlimit() {
        let me = std::process::id() as i32;
        assert_eq!(rlimits_procfs(me).unwrap(), rlimits_prlimit(me).unwrap());
    }
}
