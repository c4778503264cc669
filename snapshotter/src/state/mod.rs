//! The serialisable state of a captured process.
//!
//! [`ProcessState`] is everything a restorer needs besides the contents of
//! the stored pages (those went to a [`crate::capture::PageSink`]). It is
//! plain data: every field is what the kernel reported at capture time, with
//! no restore-side interpretation applied (for example the registers of a
//! process blocked in `read` still show `rax = -512` (`-ERESTARTSYS`) and
//! `orig_rax = 0`; the restorer applies the syscall-restart rule, see
//! [`Registers::restart_pending`]).
//!
//! What is process-wide is here; what each thread has is in [`thread`]
//! ([`ThreadState`]).
//!
//! ```text
//! ProcessState
//! ├── pid, personality
//! ├── signals          handlers of signals 1..=64 (shared by the threads)
//! ├── mm               PR_SET_MM fields, auxv, exe path + identity
//! ├── process          cwd, umask, rlimits, credentials
//! ├── areas[]          memory map; per area the stored / zero page runs
//! ├── fds[]            what every file descriptor is
//! ├── threads[]        the main thread first (tid = pid), then the others
//! │                    in tid order: registers, xsave, mask, rseq, tid
//! │                    address, robust list, sigaltstack, name, scheduling
//! └── ids              parent, process group, session ([`tree`])
//! ```
//!
//! A snapshot of a process tree holds one `ProcessState` per process
//! (`crate::snapshot::Snapshot::children`).

mod fds;
pub(crate) mod memory;
pub mod thread;
pub mod tree;

pub use fds::{EpollRegistration, FdKind, FdState, PairType, PipeEnd, TimerState};
pub use memory::{AreaKind, FileIdentity, MemoryArea, PageRun, PageRunKind, Protection};
pub use thread::{restart, AltStack, Registers, Restart, Rseq, Sched, ThreadState};
pub use tree::{ProcessIds, MAX_PROCESSES};

use serde::{Deserialize, Serialize};

/// Version of the [`ProcessState`] layout; bump on any incompatible change.
/// Version 2: threads (`threads[]`, the per-thread fields moved there).
/// Version 3: process trees (`ids`: parent, process group, session).
pub const STATE_VERSION: u32 = 3;

/// Size of a page on the architectures thaw supports.
pub const PAGE_SIZE: u64 = 4096;

/// Everything a faithful restore of a process and its threads needs, except
/// the page contents.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessState {
    /// [`STATE_VERSION`] at capture time.
    pub version: u32,
    /// Pid of the captured process (the thread id of its main thread).
    pub pid: i32,
    /// `/proc/pid/personality`.
    pub personality: u32,
    /// Signal dispositions (the masks are per thread).
    pub signals: SignalState,
    /// `PR_SET_MM` fields, auxv and executable.
    pub mm: MmState,
    /// Working directory, umask, limits, credentials.
    pub process: ProcessAttributes,
    /// The memory map, in address order.
    pub areas: Vec<MemoryArea>,
    /// Open file descriptors, in fd order.
    pub fds: Vec<FdState>,
    /// Every thread, the main thread (`tid == pid`) first.
    pub threads: Vec<ThreadState>,
    /// Parent, process group and session.
    pub ids: ProcessIds,
}

/// Signal dispositions of the process.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct SignalState {
    /// Ignored signals as `/proc/pid/status` `SigIgn` shows them.
    pub ignored: u64,
    /// Caught signals as `/proc/pid/status` `SigCgt` shows them.
    pub caught: u64,
    /// Dispositions read with `rt_sigaction` inside the process, for every
    /// signal that is caught or ignored, and for `SIGCHLD` (whose flags
    /// matter even when it has the default action). Signals not listed have
    /// the default action with no flags.
    pub handlers: Vec<SigAction>,
}

/// One signal's `struct kernel_sigaction` (x86_64 layout).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SigAction {
    /// Signal number, 1..=64.
    pub signal: u32,
    /// Handler address, or 0 (`SIG_DFL`) / 1 (`SIG_IGN`).
    pub handler: u64,
    /// `SA_*` flags (includes `SA_RESTORER` as glibc sets it).
    pub flags: u64,
    /// Address of the signal-return trampoline.
    pub restorer: u64,
    /// Signals blocked while the handler runs.
    pub mask: u64,
}

/// The fields `PR_SET_MM_MAP` restores, plus auxv and the executable.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[allow(missing_docs)]
pub struct MmState {
    pub start_code: u64,
    pub end_code: u64,
    pub start_data: u64,
    pub end_data: u64,
    pub start_brk: u64,
    /// The current program break (`brk(0)` run inside the process).
    pub brk: u64,
    pub start_stack: u64,
    pub arg_start: u64,
    pub arg_end: u64,
    pub env_start: u64,
    pub env_end: u64,
    /// `/proc/pid/auxv` as (type, value) pairs, including the final
    /// `AT_NULL` pair.
    pub auxv: Vec<(u64, u64)>,
    /// Target of `/proc/pid/exe`.
    pub exe_path: String,
    /// Identity of the executable file.
    pub exe: FileIdentity,
}

/// Per-process attributes outside memory and registers.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ProcessAttributes {
    /// Target of `/proc/pid/cwd`.
    pub cwd: String,
    /// File creation mask.
    pub umask: u32,
    /// Resource limits, indexed by `RLIMIT_*` number.
    pub rlimits: Vec<Rlimit>,
    /// Real, effective, saved and filesystem uid.
    pub uids: [u32; 4],
    /// Real, effective, saved and filesystem gid.
    pub gids: [u32; 4],
    /// Supplementary groups.
    pub groups: Vec<u32>,
    /// Inheritable, permitted, effective, bounding and ambient capabilities.
    pub capabilities: [u64; 5],
    /// `NoNewPrivs` flag.
    pub no_new_privs: bool,
    /// Seccomp mode (0 none, 1 strict, 2 filter).
    pub seccomp: u32,
}

/// One resource limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rlimit {
    /// `RLIMIT_*` number.
    pub resource: u32,
    /// Soft limit (`u64::MAX` is infinity).
    pub soft: u64,
    /// Hard limit (`u64::MAX` is infinity).
    pub hard: u64,
}

/// Most threads a snapshot may describe (a forged manifest must not make
/// the restorer clone without bound).
pub const MAX_THREADS: usize = 4096;

/// Why a [`ProcessState`] cannot describe a real process.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidState {
    /// Made by another version of thaw.
    #[error("state version {found} (this build reads {STATE_VERSION})")]
    Version {
        /// The version found.
        found: u32,
    },
    /// The thread list is not a main thread followed by distinct others.
    #[error("bad thread list: {0}")]
    Threads(String),
}

impl ProcessState {
    /// The main thread (`threads[0]`, whose tid is the pid).
    ///
    /// # Panics
    /// If the state has no thread ([`ProcessState::validate`] refuses that).
    pub fn main_thread(&self) -> &ThreadState {
        &self.threads[0]
    }

    /// The name of the process (its main thread's).
    pub fn comm(&self) -> &str {
        self.threads.first().map(|t| t.name.as_str()).unwrap_or("")
    }

    /// Checks what a restorer relies on: this version, a main thread first
    /// with `tid == pid`, at most [`MAX_THREADS`] threads, tids above 1 and
    /// distinct.
    pub fn validate(&self) -> Result<(), InvalidState> {
        if self.version != STATE_VERSION {
            return Err(InvalidState::Version {
                found: self.version,
            });
        }
        let bad = |what: String| Err(InvalidState::Threads(what));
        match self.threads.first() {
            None => return bad("no thread".into()),
            Some(t) if t.tid != self.pid => {
                return bad(format!(
                    "the first thread is {}, not the pid {}",
                    t.tid, self.pid
                ))
            }
            Some(_) => {}
        }
        if self.threads.len() > MAX_THREADS {
            return bad(format!(
                "{} threads (at most {MAX_THREADS})",
                self.threads.len()
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for t in &self.threads {
            if t.tid <= 1 {
                return bad(format!("thread id {}", t.tid));
            }
            if !seen.insert(t.tid) {
                return bad(format!("thread id {} twice", t.tid));
            }
        }
        Ok(())
    }

    /// Number of pages handed to the page sink.
    pub fn stored_pages(&self) -> u64 {
        self.areas
            .iter()
            .map(|a| a.count_pages(PageRunKind::Stored))
            .sum()
    }

    /// Number of pages recorded as entirely zero.
    pub fn zero_pages(&self) -> u64 {
        self.areas
            .iter()
            .map(|a| a.count_pages(PageRunKind::Zero))
            .sum()
    }
}
