//! The state of one thread: what capture reads per thread and restore sets
//! per thread (capture: `capture::thread`, restore: `pool::restore::thread`).
//!
//! ```text
//! ThreadState
//! ├── tid, name                 thread id (in the captured pid namespace),
//! │                             /proc/PID/task/TID/comm
//! ├── registers                 user_regs_struct (orig_rax, fs_base = TLS)
//! ├── xsave                     NT_X86_XSTATE bytes
//! ├── blocked                   signal mask (PTRACE_GETSIGMASK)
//! ├── rseq                      registration (or none)
//! ├── tid_address               clear_child_tid (injected PR_GET_TID_ADDRESS)
//! ├── robust_list, _len         get_robust_list(tid)
//! ├── alt_stack                 injected sigaltstack(NULL, &old)
//! ├── sched                     policy, priority, nice, CPU affinity
//! ├── pending[]                 signals queued for this thread (siginfo)
//! └── parent_death_signal       injected PR_GET_PDEATHSIG
//! ```
//!
//! Each thread stopped where it was: in a futex wait, `nanosleep`, `read`,
//! `epoll_wait`, or in user code. The syscall-restart rule
//! ([`Registers::restart_pending`]) is decided per thread on restore.

use serde::{Deserialize, Serialize};

/// One thread of a captured process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThreadState {
    /// Thread id in the captured process's pid namespace (the main thread's
    /// is the pid).
    pub tid: i32,
    /// `/proc/PID/task/TID/comm` without the trailing newline.
    pub name: String,
    /// General purpose registers as read with `PTRACE_GETREGS`.
    pub registers: Registers,
    /// Extended processor state as read with `PTRACE_GETREGSET`
    /// `NT_X86_XSTATE` (the kernel's user xsave layout, 512-byte legacy area,
    /// 64-byte header, then the enabled components).
    pub xsave: Vec<u8>,
    /// Blocked signals (bit `n - 1` is signal `n`), from `PTRACE_GETSIGMASK`.
    pub blocked: u64,
    /// The thread's rseq registration, if any.
    pub rseq: Option<Rseq>,
    /// `set_tid_address` pointer (`clear_child_tid`), from
    /// `prctl(PR_GET_TID_ADDRESS)` run in the thread; 0 when unset.
    pub tid_address: u64,
    /// `set_robust_list` head, from `get_robust_list`; 0 when unset.
    pub robust_list: u64,
    /// Length argument of the robust list registration.
    pub robust_list_len: u64,
    /// The alternate signal stack, `None` when disabled.
    pub alt_stack: Option<AltStack>,
    /// Scheduling policy, priority, nice value and affinity.
    pub sched: Sched,
    /// Signals pending for this thread alone (its own queue), in queue
    /// order, with their `siginfo`.
    pub pending: Vec<super::PendingSignal>,
    /// `PR_GET_PDEATHSIG` run in the thread: the signal it gets when its
    /// parent dies; 0 for none.
    pub parent_death_signal: i32,
}

/// A thread's scheduling attributes.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Sched {
    /// `sched_getscheduler` (`SCHED_OTHER` 0, `SCHED_BATCH` 3,
    /// `SCHED_IDLE` 5; the real-time ones are refused on restore), without
    /// `SCHED_RESET_ON_FORK`.
    pub policy: i32,
    /// `sched_param.sched_priority` (0 for the non-real-time policies).
    pub priority: i32,
    /// Nice value, -20..=19.
    pub nice: i32,
    /// CPUs the thread may run on, as `sched_getaffinity`'s bitmask words.
    pub affinity: Vec<u64>,
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

impl Registers {
    /// These registers as the kernel itself would resume the thread from
    /// the stop they were read in, when no signal handler runs: like
    /// [`Registers::with_restart_applied`], except that
    /// `-ERESTART_RESTARTBLOCK` enters `restart_syscall` (the thread still
    /// has its restart block: this is for the original process, after a
    /// capture injected system calls into it, never for a copy).
    pub fn resumed_in_place(&self) -> Registers {
        match self.restart_pending() {
            Restart::RestartBlock => {
                let mut regs = *self;
                regs.rax = libc::SYS_restart_syscall as u64;
                regs.rip -= 2;
                regs.orig_rax = u64::MAX;
                regs
            }
            Restart::None | Restart::Same => self.with_restart_applied(),
        }
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
        // The original keeps its restart block: it re-enters through
        // restart_syscall (a timed sleep continues, no EINTR).
        let in_place = regs.resumed_in_place();
        assert_eq!(in_place.rax, libc::SYS_restart_syscall as u64);
        assert_eq!(in_place.rip, 0x2000);
        assert_eq!(in_place.orig_rax, u64::MAX);
    }
}
