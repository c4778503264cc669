//! Pending signals ([`PendingSignal`]), read from outside while every
//! thread is held: `PTRACE_PEEKSIGINFO` copies queued `siginfo`s without
//! dequeuing them, from one thread's own queue, or with
//! `PTRACE_PEEKSIGINFO_SHARED` from the process's shared one. Restore:
//! `pool::restore::pending`.
//!
//! ```text
//! struct ptrace_peeksiginfo_args { u64 off; u32 flags; s32 nr; }
//! ptrace(PTRACE_PEEKSIGINFO, tid, &args, siginfo_t[nr])  -> how many copied
//! ```
//!
//! The capture's own stops queue nothing: threads are held with
//! `PTRACE_SEIZE` + `PTRACE_INTERRUPT` (no `SIGSTOP`), and a signal that
//! arrives while a thread is held is taken out of its queue by the
//! signal-delivery stop and handed back to the original when it is
//! detached ([`super::ptrace::Seized`]); it is not in the snapshot.
//!
//! The queues are checked against the pending masks of
//! `/proc/PID/task/TID/status` (`SigPnd`) and `/proc/PID/status`
//! (`ShdPnd`): a signal in a mask but in no queue (the kernel queues a
//! standard signal without `siginfo` when it cannot allocate one) is
//! refused ([`Refusal::ThreadSignals`], [`Refusal::PendingSignals`]).

use super::procfs::{self, Status};
use super::refuse::Refusal;
use super::CaptureError;
use crate::state::{PendingSignal, SIGINFO_SIZE};

/// `PTRACE_PEEKSIGINFO` and its flag (`<linux/ptrace.h>`).
const PTRACE_PEEKSIGINFO: libc::c_uint = 0x4209;
const PTRACE_PEEKSIGINFO_SHARED: u32 = 1;
/// `siginfo`s read per call.
const BATCH: usize = 32;
/// Most signals one queue may yield (the kernel's `RLIMIT_SIGPENDING`
/// bounds real queues far below; a forged bound keeps the loop finite).
const MAX_QUEUED: usize = 1 << 16;

/// `struct ptrace_peeksiginfo_args`.
#[repr(C)]
struct PeekArgs {
    off: u64,
    flags: u32,
    nr: i32,
}
const _: () = assert!(std::mem::size_of::<PeekArgs>() == 16);

/// Every `siginfo` queued for held thread `tid` (its own queue), or with
/// `shared` for its process.
fn peek(tid: i32, shared: bool) -> Result<Vec<PendingSignal>, CaptureError> {
    let mut out = Vec::new();
    let mut buffer = vec![0u8; BATCH * SIGINFO_SIZE];
    loop {
        let mut args = PeekArgs {
            off: out.len() as u64,
            flags: if shared { PTRACE_PEEKSIGINFO_SHARED } else { 0 },
            nr: BATCH as i32,
        };
        // SAFETY: the kernel reads `args` and writes at most `nr` siginfos
        // (BATCH * SIGINFO_SIZE bytes) into `buffer`; both outlive the call.
        let copied = unsafe {
            libc::ptrace(
                PTRACE_PEEKSIGINFO,
                tid,
                &mut args as *mut PeekArgs,
                buffer.as_mut_ptr(),
            )
        };
        if copied < 0 {
            return Err(CaptureError::Sys {
                pid: tid,
                call: "PTRACE_PEEKSIGINFO",
                errno: nix::errno::Errno::last(),
            });
        }
        let copied = copied as usize;
        for raw in buffer[..copied * SIGINFO_SIZE].chunks_exact(SIGINFO_SIZE) {
            let signal = PendingSignal::from_siginfo(raw).ok_or_else(|| CaptureError::Parse {
                path: format!("PTRACE_PEEKSIGINFO of {tid}"),
                what: "a siginfo without a signal number in 1..=64".into(),
            })?;
            out.push(signal);
        }
        if copied < BATCH || out.len() >= MAX_QUEUED {
            return Ok(out);
        }
    }
}

/// The bits of `mask` no signal of `queue` accounts for.
fn unaccounted(mask: u64, queue: &[PendingSignal]) -> u64 {
    queue.iter().fold(mask, |left, s| left & !s.bit())
}

/// Signals queued for thread `tid` of process `pid` alone (held).
pub fn thread(pid: i32, tid: i32) -> Result<Vec<PendingSignal>, CaptureError> {
    let queue = peek(tid, false)?;
    let status = Status::parse(tid, &procfs::read_text(pid, &format!("task/{tid}/status"))?);
    let mask = unaccounted(status.hex("SigPnd")?, &queue);
    if mask != 0 {
        return Err(CaptureError::refused(
            pid,
            Refusal::ThreadSignals { tid, mask },
        ));
    }
    Ok(queue)
}

/// Signals queued for process `pid` (its shared queue; the main thread is
/// held). `status` is its `/proc/PID/status`.
pub fn process(pid: i32, status: &Status) -> Result<Vec<PendingSignal>, CaptureError> {
    let queue = peek(pid, true)?;
    let mask = unaccounted(status.hex("ShdPnd")?, &queue);
    if mask != 0 {
        return Err(CaptureError::refused(pid, Refusal::PendingSignals { mask }));
    }
    Ok(queue)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signal(n: i32) -> PendingSignal {
        let mut raw = [0u8; SIGINFO_SIZE];
        raw[..4].copy_from_slice(&n.to_ne_bytes());
        PendingSignal::from_siginfo(&raw).unwrap()
    }

    #[test]
    fn a_mask_bit_without_a_queued_siginfo_is_unaccounted() {
        let queue = [signal(10), signal(34), signal(34)];
        assert_eq!(unaccounted((1 << 9) | (1 << 33), &queue), 0);
        assert_eq!(unaccounted((1 << 9) | (1 << 11), &queue), 1 << 11);
        assert_eq!(unaccounted(0, &[]), 0);
    }
}
