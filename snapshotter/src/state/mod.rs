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
//! One module per kind of state, named as its capture module
//! (`capture::X`) and its restore module (`pool::restore::X`) are:
//! [`signals`](SignalState), [`mm`](MmState), [`process`](ProcessAttributes)
//! (with credentials), `memory` ([`MemoryArea`]), `timers` ([`TimerSet`]), `fds` ([`FdState`], the
//! kernel objects behind them included), [`thread`] ([`ThreadState`]).
//! What is process-wide hangs off [`ProcessState`] directly; what each
//! thread has is in its [`ThreadState`].
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
//! ├── ids              parent, process group, session ([`tree`])
//! ├── timers           interval timers, POSIX timers ([`TimerSet`])
//! └── pending[]        signals queued for the process, with their siginfo
//! ```
//!
//! A snapshot of a process tree holds one `ProcessState` per process
//! (`crate::snapshot::Snapshot::children`).

pub mod depends;
mod fds;
pub(crate) mod memory;
mod mm;
mod pending;
mod process;
mod signals;
mod socket;
pub mod thread;
mod timers;
pub mod tree;

pub use depends::{Clocks, CpuFeatures, Dependencies, FileContent, VdsoImage};
pub use fds::{EpollRegistration, FdKind, FdState, InotifyWatch, PairType, PipeEnd, TimerState};
pub use memory::{
    sysv_attachments, AreaKind, FileIdentity, MemoryArea, PageRun, PageRunKind, Protection,
    SysvSegment,
};
pub use mm::MmState;
pub use pending::{PendingSignal, SIGINFO_SIZE};
pub use process::{ProcessAttributes, Rlimit};
pub use signals::{SigAction, SignalState};
pub use socket::{type_name, SocketAddress, SocketOption, SocketRole, SocketState};
pub use thread::{restart, AltStack, Registers, Restart, Rseq, Sched, ThreadState};
pub use timers::{IntervalTimer, PosixTimer, TimerNotify, TimerSet};
pub use tree::{ProcessIds, MAX_PROCESSES};

use serde::{Deserialize, Serialize};

/// Version of the [`ProcessState`] layout; bump on any incompatible change.
/// Version 2: threads (`threads[]`, the per-thread fields moved there).
/// Version 3: process trees (`ids`: parent, process group, session).
/// Version 4: timers (`timers`: interval and POSIX timers), pending
/// signals (`pending`, and each thread's).
pub const STATE_VERSION: u32 = 4;

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
    /// Interval and POSIX timers.
    pub timers: TimerSet,
    /// Signals pending for the process (its shared queue), in queue order;
    /// each thread's own are in its [`ThreadState::pending`].
    pub pending: Vec<PendingSignal>,
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
