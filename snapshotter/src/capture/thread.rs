//! One thread's state ([`ThreadState`]), read while every thread of the
//! process is stopped.
//!
//! From outside: registers, xsave, signal mask, pending signals
//! ([`super::pending`]), rseq (ptrace of that thread), `get_robust_list(tid)`, `/proc/PID/task/TID/comm`,
//! `sched_getscheduler`, `sched_getparam`, `getpriority`,
//! `sched_getaffinity`. Inside the thread (its own registers and stack,
//! [`super::inject`]), into scratch memory below its stack:
//!
//! ```text
//! prctl(PR_GET_TID_ADDRESS, &u64)        -> clear_child_tid pointer
//! sigaltstack(NULL, &stack_t)            -> { ss_sp u64, ss_flags i32, pad, ss_size u64 }
//! prctl(PR_GET_PDEATHSIG, &i32)          -> parent-death signal
//! ```
//!
//! The registers are read before anything is injected: they are the ones
//! the thread stopped with (a pending syscall restart included).

use super::inject::Injector;
use super::memory;
use super::procfs;
use super::ptrace::Seized;
use super::CaptureError;
use crate::state::{AltStack, Sched, ThreadState};

/// Scratch bytes: enough for the largest out-parameter (`stack_t`).
const SCRATCH: usize = 32;
/// Words of the affinity mask read (1,024 CPUs).
const AFFINITY_WORDS: usize = 16;

/// Runs `nr(args…)` in the thread; an error return becomes
/// [`CaptureError::Injected`].
fn call(
    injector: &Injector,
    seized: &mut Seized,
    name: &str,
    nr: i64,
    args: [u64; 6],
) -> Result<(), CaptureError> {
    let rc = injector.syscall(seized, nr, args)?;
    if rc < 0 {
        return Err(CaptureError::Injected {
            pid: seized.pid(),
            call: name.to_string(),
            errno: -rc as i32,
        });
    }
    Ok(())
}

fn word(bytes: &[u8], index: usize) -> u64 {
    u64::from_ne_bytes(bytes[index * 8..index * 8 + 8].try_into().expect("8 bytes"))
}

fn sys_error(pid: i32, call: &'static str) -> CaptureError {
    CaptureError::Sys {
        pid,
        call,
        errno: nix::errno::Errno::last(),
    }
}

/// Reads the state of one held thread of process `pid`.
pub fn capture(
    pid: i32,
    seized: &mut Seized,
    injector: &Injector,
) -> Result<ThreadState, CaptureError> {
    let tid = seized.pid();
    let registers = seized.registers()?;
    let xsave = seized.xsave()?;
    let blocked = seized.signal_mask()?;
    let pending = super::pending::thread(pid, tid)?;
    let rseq = seized.rseq()?;

    let mut head: u64 = 0;
    let mut len: u64 = 0;
    // SAFETY: get_robust_list writes one pointer and one size_t through the
    // two out-pointers, both valid u64 locals.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_get_robust_list,
            tid,
            &mut head as *mut u64,
            &mut len as *mut u64,
        )
    };
    if rc != 0 {
        return Err(sys_error(tid, "get_robust_list"));
    }

    let (tid_address, alt_stack, parent_death_signal) =
        injector.with_scratch(seized, SCRATCH, |injector, seized, scratch| {
            let mut inner = || -> Result<(u64, Option<AltStack>, i32), CaptureError> {
                let mut raw = [0u8; SCRATCH];
                call(
                    injector,
                    seized,
                    "prctl(PR_GET_TID_ADDRESS)",
                    libc::SYS_prctl,
                    [libc::PR_GET_TID_ADDRESS as u64, scratch, 0, 0, 0, 0],
                )?;
                memory::read_remote(tid, scratch, &mut raw[..8])?;
                let tid_address = word(&raw, 0);
                call(
                    injector,
                    seized,
                    "sigaltstack",
                    libc::SYS_sigaltstack,
                    [0, scratch, 0, 0, 0, 0],
                )?;
                memory::read_remote(tid, scratch, &mut raw[..24])?;
                let flags = word(&raw, 1) as u32 as i32;
                let alt_stack = (flags & libc::SS_DISABLE == 0).then(|| AltStack {
                    sp: word(&raw, 0),
                    flags: flags & !libc::SS_ONSTACK,
                    size: word(&raw, 2),
                });
                call(
                    injector,
                    seized,
                    "prctl(PR_GET_PDEATHSIG)",
                    libc::SYS_prctl,
                    [libc::PR_GET_PDEATHSIG as u64, scratch, 0, 0, 0, 0],
                )?;
                memory::read_remote(tid, scratch, &mut raw[..4])?;
                let parent_death_signal = i32::from_ne_bytes(raw[..4].try_into().expect("4 bytes"));
                Ok((tid_address, alt_stack, parent_death_signal))
            };
            Ok(inner())
        })??;

    let name = procfs::read_text(pid, &format!("task/{tid}/comm"))?
        .trim_end_matches('\n')
        .to_string();
    Ok(ThreadState {
        tid: namespace_tid(pid, tid)?,
        name,
        registers,
        xsave,
        blocked,
        rseq,
        tid_address,
        robust_list: head,
        robust_list_len: len,
        alt_stack,
        sched: sched(tid)?,
        pending,
        parent_death_signal,
    })
}

/// The thread's id in its own pid namespace (the last `NSpid` of its
/// status): what the program knows and a copy must have.
fn namespace_tid(pid: i32, tid: i32) -> Result<i32, CaptureError> {
    let status =
        procfs::Status::parse(tid, &procfs::read_text(pid, &format!("task/{tid}/status"))?);
    let ids = status.numbers("NSpid")?;
    Ok(ids.last().map(|&n| n as i32).unwrap_or(tid))
}

/// Policy, priority, nice and affinity of thread `tid`.
fn sched(tid: i32) -> Result<Sched, CaptureError> {
    // SAFETY: sched_getscheduler takes a tid and no pointers.
    let policy = unsafe { libc::sched_getscheduler(tid) };
    if policy < 0 {
        return Err(sys_error(tid, "sched_getscheduler"));
    }
    let mut param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` is a valid out-parameter.
    if unsafe { libc::sched_getparam(tid, &mut param) } != 0 {
        return Err(sys_error(tid, "sched_getparam"));
    }
    // getpriority returns -1 for nice -1 too: errno tells them apart.
    // SAFETY: clearing this thread's errno, then a call without pointers.
    let nice = unsafe {
        *libc::__errno_location() = 0;
        libc::getpriority(libc::PRIO_PROCESS, tid as libc::id_t)
    };
    if nice == -1 && nix::errno::Errno::last_raw() != 0 {
        return Err(sys_error(tid, "getpriority"));
    }
    let mut mask = [0u64; AFFINITY_WORDS];
    // SAFETY: the raw syscall writes at most `size_of_val(&mask)` bytes into
    // `mask` and returns how many it wrote.
    let written = unsafe {
        libc::syscall(
            libc::SYS_sched_getaffinity,
            tid,
            std::mem::size_of_val(&mask),
            mask.as_mut_ptr(),
        )
    };
    if written < 0 {
        return Err(sys_error(tid, "sched_getaffinity"));
    }
    let words = (written as usize).div_ceil(8).min(AFFINITY_WORDS);
    Ok(Sched {
        policy: policy & !libc::SCHED_RESET_ON_FORK,
        priority: param.sched_priority,
        nice,
        affinity: mask[..words].to_vec(),
    })
}
