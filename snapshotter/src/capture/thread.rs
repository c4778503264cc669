//! Per-thread kernel registrations, and timers that a copy would lose.
//!
//! Read by running syscalls inside the process ([`super::inject`]) into
//! scratch memory:
//!
//! ```text
//! prctl(PR_GET_TID_ADDRESS, &u64)        -> clear_child_tid pointer
//! sigaltstack(NULL, &stack_t)            -> { ss_sp u64, ss_flags i32, pad, ss_size u64 }
//! getitimer(REAL | VIRTUAL | PROF, &itimerval)
//!                                        -> { interval {sec, usec}, value {sec, usec} }
//! ```
//!
//! and from outside with `get_robust_list(pid, &head, &len)`. An armed
//! interval timer or a POSIX timer (`/proc/pid/timers`) refuses the capture:
//! the copy would never get its signal.

use super::inject::Injector;
use super::memory;
use super::procfs;
use super::ptrace::Seized;
use super::refuse::Refusal;
use super::CaptureError;
use crate::state::{AltStack, ThreadState};

/// Scratch bytes: enough for the largest out-parameter (`itimerval`).
const SCRATCH: usize = 32;

/// Runs `nr(args…)` in the process; an error return becomes
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

/// Reads the thread registrations and refuses armed timers.
pub fn capture(seized: &mut Seized, injector: &Injector) -> Result<ThreadState, CaptureError> {
    let pid = seized.pid();
    let timers = procfs::read_text(pid, "timers")?;
    if !timers.trim().is_empty() {
        let count = timers.lines().filter(|l| l.starts_with("ID:")).count();
        return Err(CaptureError::refused(
            pid,
            Refusal::Timers {
                what: format!("{count} POSIX timer(s)"),
            },
        ));
    }

    let mut head: u64 = 0;
    let mut len: u64 = 0;
    // SAFETY: get_robust_list writes one pointer and one size_t through the
    // two out-pointers, both valid u64 locals.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_get_robust_list,
            pid,
            &mut head as *mut u64,
            &mut len as *mut u64,
        )
    };
    if rc != 0 {
        return Err(CaptureError::Sys {
            pid,
            call: "get_robust_list",
            errno: nix::errno::Errno::last(),
        });
    }

    injector.with_scratch(seized, SCRATCH, |injector, seized, scratch| {
        let mut inner = || -> Result<ThreadState, CaptureError> {
            let mut raw = [0u8; SCRATCH];
            for (which, name) in [
                (libc::ITIMER_REAL, "ITIMER_REAL"),
                (libc::ITIMER_VIRTUAL, "ITIMER_VIRTUAL"),
                (libc::ITIMER_PROF, "ITIMER_PROF"),
            ] {
                call(
                    injector,
                    seized,
                    "getitimer",
                    libc::SYS_getitimer,
                    [which as u64, scratch, 0, 0, 0, 0],
                )?;
                memory::read_remote(pid, scratch, &mut raw)?;
                if word(&raw, 2) != 0 || word(&raw, 3) != 0 {
                    return Err(CaptureError::refused(
                        pid,
                        Refusal::Timers {
                            what: format!("{name} is armed"),
                        },
                    ));
                }
            }

            call(
                injector,
                seized,
                "prctl(PR_GET_TID_ADDRESS)",
                libc::SYS_prctl,
                [libc::PR_GET_TID_ADDRESS as u64, scratch, 0, 0, 0, 0],
            )?;
            memory::read_remote(pid, scratch, &mut raw[..8])?;
            let tid_address = word(&raw, 0);

            call(
                injector,
                seized,
                "sigaltstack",
                libc::SYS_sigaltstack,
                [0, scratch, 0, 0, 0, 0],
            )?;
            memory::read_remote(pid, scratch, &mut raw[..24])?;
            let flags = word(&raw, 1) as u32 as i32;
            let alt_stack = (flags & libc::SS_DISABLE == 0).then(|| AltStack {
                sp: word(&raw, 0),
                flags: flags & !libc::SS_ONSTACK,
                size: word(&raw, 2),
            });
            Ok(ThreadState {
                tid_address,
                robust_list: head,
                robust_list_len: len,
                alt_stack,
            })
        };
        Ok(inner())
    })?
}
