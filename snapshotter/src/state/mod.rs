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
//! ```text
//! ProcessState
//! ├── pid, comm, personality
//! ├── registers        user_regs_struct (incl. orig_rax, fs_base, gs_base)
//! ├── xsave            NT_X86_XSTATE bytes (legacy FPU + SSE + AVX ...)
//! ├── signals          blocked mask, handlers of signals 1..=64
//! ├── rseq             address, length, signature, flags (or none)
//! ├── thread           clear_child_tid address, robust list, sigaltstack
//! ├── mm               PR_SET_MM fields, auxv, exe path + identity
//! ├── process          cwd, umask, rlimits, credentials
//! ├── areas[]          memory map; per area the stored / zero page runs
//! └── fds[]            what every file descriptor is
//! ```

mod fds;
pub(crate) mod memory;

pub use fds::{EpollRegistration, FdKind, FdState, PairType, PipeEnd, TimerState};
pub use memory::{AreaKind, FileIdentity, MemoryArea, PageRun, PageRunKind, Protection};

use serde::{Deserialize, Serialize};

/// Version of the [`ProcessState`] layout; bump on any incompatible change.
pub const STATE_VERSION: u32 = 1;

/// Size of a page on the architectures thaw supports.
pub const PAGE_SIZE: u64 = 4096;

/// Everything a faithful restore of a single-threaded process needs, except
/// the page contents.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessState {
    /// [`STATE_VERSION`] at capture time.
    pub version: u32,
    /// Pid of the captured process (and thread id of its only thread).
    pub pid: i32,
    /// `/proc/pid/comm` without the trailing newline.
    pub comm: String,
    /// `/proc/pid/personality`.
    pub personality: u32,
    /// General purpose registers as read with `PTRACE_GETREGS`.
    pub registers: Registers,
    /// Extended processor state as read with `PTRACE_GETREGSET`
    /// `NT_X86_XSTATE` (the kernel's user xsave layout, 512-byte legacy area,
    /// 64-byte header, then the enabled components).
    pub xsave: Vec<u8>,
    /// Signal mask and handlers.
    pub signals: SignalState,
    /// The thread's rseq registration, if any.
    pub rseq: Option<Rseq>,
    /// Other per-thread kernel registrations (tid address, robust futex
    /// list, alternate signal stack).
    pub thread: ThreadState,
    /// `PR_SET_MM` fields, auxv and executable.
    pub mm: MmState,
    /// Working directory, umask, limits, credentials.
    pub process: ProcessAttributes,
    /// The memory map, in address order.
    pub areas: Vec<MemoryArea>,
    /// Open file descriptors, in fd order.
    pub fds: Vec<FdState>,
}

/// `struct user_regs_struct` of x86_64, field for field.
#[allow(missing_docs)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registers {
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub rbp: u64,
    pub rbx: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rax: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rsi: u64,
    pub rdi: u64,
    pub orig_rax: u64,
    pub rip: u64,
    pub cs: u64,
    pub eflags: u64,
    pub rsp: u64,
    pub ss: u64,
    pub fs_base: u64,
    pub gs_base: u64,
    pub ds: u64,
    pub es: u64,
    pub fs: u64,
    pub gs: u64,
}

/// Kernel-internal return values that ask for a syscall to be restarted.
pub mod restart {
    /// `-ERESTARTSYS`.
    pub const ERESTARTSYS: i64 = -512;
    /// `-ERESTARTNOINTR`.
    pub const ERESTARTNOINTR: i64 = -513;
    /// `-ERESTARTNOHAND`.
    pub const ERESTARTNOHAND: i64 = -514;
    /// `-ERESTART_RESTARTBLOCK`.
    pub const ERESTART_RESTARTBLOCK: i64 = -516;
}

/// What the kernel would do with an interrupted syscall when the thread
/// resumes without running a signal handler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restart {
    /// Not stopped inside a syscall that wants a restart.
    None,
    /// Re-enter the same syscall: `rax = orig_rax`, `rip -= 2`.
    Same,
    /// `-ERESTART_RESTARTBLOCK`: the kernel enters `restart_syscall`; a copy
    /// has no restart block, so the restorer returns `-EINTR` instead.
    RestartBlock,
}

impl Registers {
    /// The syscall-restart rule that applies to these registers.
    pub fn restart_pending(&self) -> Restart {
        if self.orig_rax as i64 <= -1 {
            return Restart::None;
        }
        match self.rax as i64 {
            restart::ERESTARTSYS | restart::ERESTARTNOINTR | restart::ERESTARTNOHAND => {
                Restart::Same
            }
            restart::ERESTART_RESTARTBLOCK => Restart::RestartBlock,
            _ => Restart::None,
        }
    }

    /// These registers with the restart rule applied, as the thread would
    /// resume if no signal handler runs: afterwards `orig_rax` is -1 so the
    /// kernel does not apply it a second time.
    pub fn with_restart_applied(&self) -> Registers {
        let mut regs = *self;
        match self.restart_pending() {
            Restart::None => {}
            Restart::Same => {
                regs.rax = regs.orig_rax;
                regs.rip -= 2;
                regs.orig_rax = u64::MAX;
            }
            Restart::RestartBlock => {
                regs.rax = (-(libc::EINTR as i64)) as u64;
                regs.orig_rax = u64::MAX;
            }
        }
        regs
    }
}

impl From<libc::user_regs_struct> for Registers {
    fn from(r: libc::user_regs_struct) -> Self {
        Registers {
            r15: r.r15,
            r14: r.r14,
            r13: r.r13,
            r12: r.r12,
            rbp: r.rbp,
            rbx: r.rbx,
            r11: r.r11,
            r10: r.r10,
            r9: r.r9,
            r8: r.r8,
            rax: r.rax,
            rcx: r.rcx,
            rdx: r.rdx,
            rsi: r.rsi,
            rdi: r.rdi,
            orig_rax: r.orig_rax,
            rip: r.rip,
            cs: r.cs,
            eflags: r.eflags,
            rsp: r.rsp,
            ss: r.ss,
            fs_base: r.fs_base,
            gs_base: r.gs_base,
            ds: r.ds,
            es: r.es,
            fs: r.fs,
            gs: r.gs,
        }
    }
}

impl From<Registers> for libc::user_regs_struct {
    fn from(r: Registers) -> Self {
        libc::user_regs_struct {
            r15: r.r15,
            r14: r.r14,
            r13: r.r13,
            r12: r.r12,
            rbp: r.rbp,
            rbx: r.rbx,
            r11: r.r11,
            r10: r.r10,
            r9: r.r9,
            r8: r.r8,
            rax: r.rax,
            rcx: r.rcx,
            rdx: r.rdx,
            rsi: r.rsi,
            rdi: r.rdi,
            orig_rax: r.orig_rax,
            rip: r.rip,
            cs: r.cs,
            eflags: r.eflags,
            rsp: r.rsp,
            ss: r.ss,
            fs_base: r.fs_base,
            gs_base: r.gs_base,
            ds: r.ds,
            es: r.es,
            fs: r.fs,
            gs: r.gs,
        }
    }
}

/// Signal mask and dispositions of the (only) thread.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct SignalState {
    /// Blocked signals (bit `n - 1` is signal `n`), from `PTRACE_GETSIGMASK`.
    pub blocked: u64,
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

/// Per-thread registrations with the kernel that live outside memory and
/// registers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ThreadState {
    /// `set_tid_address` pointer (`clear_child_tid`), from
    /// `prctl(PR_GET_TID_ADDRESS)` run in the process; 0 when unset.
    pub tid_address: u64,
    /// `set_robust_list` head, from `get_robust_list`; 0 when unset.
    pub robust_list: u64,
    /// Length argument of the robust list registration.
    pub robust_list_len: u64,
    /// The alternate signal stack, `None` when disabled.
    pub alt_stack: Option<AltStack>,
}

/// A `sigaltstack` registration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AltStack {
    /// `ss_sp`.
    pub sp: u64,
    /// `ss_flags` (without `SS_ONSTACK`, which is not settable).
    pub flags: i32,
    /// `ss_size`.
    pub size: u64,
}

/// An rseq registration as `PTRACE_GET_RSEQ_CONFIGURATION` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rseq {
    /// Address of the `struct rseq` area.
    pub address: u64,
    /// Its registered length.
    pub length: u32,
    /// Abort signature.
    pub signature: u32,
    /// Registration flags.
    pub flags: u32,
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

impl ProcessState {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_rule_for_blocked_read() {
        let regs = Registers {
            rax: restart::ERESTARTSYS as u64,
            orig_rax: 0,
            rip: 0x1002,
            ..Default::default()
        };
        assert_eq!(regs.restart_pending(), Restart::Same);
        let applied = regs.with_restart_applied();
        assert_eq!(applied.rax, 0);
        assert_eq!(applied.rip, 0x1000);
        assert_eq!(applied.orig_rax, u64::MAX);
        assert_eq!(applied.restart_pending(), Restart::None);
    }

    #[test]
    fn no_restart_outside_syscalls() {
        let regs = Registers {
            rax: restart::ERESTARTSYS as u64,
            orig_rax: u64::MAX,
            ..Default::default()
        };
        assert_eq!(regs.restart_pending(), Restart::None);
        assert_eq!(regs.with_restart_applied(), regs);
    }

    #[test]
    fn restart_block_becomes_eintr() {
        let regs = Registers {
            rax: restart::ERESTART_RESTARTBLOCK as u64,
            orig_rax: 35,
            rip: 0x2002,
            ..Default::default()
        };
        let applied = regs.with_restart_applied();
        assert_eq!(applied.rax as i64, -(libc::EINTR as i64));
        assert_eq!(applied.rip, 0x2002);
    }
}
