//! Pending signals of the copy (the restore side of
//! `snapshotter::capture::pending`, state `snapshotter::state::PendingSignal`):
//! each queued again, with its whole `siginfo`, by the copy itself, so the
//! kernel lets any `si_code` through (a process may queue anything to
//! itself; `rt_tgsigqueueinfo` to a thread, only from that thread):
//!
//! ```text
//! each thread, in its own batch (the other threads: step 7; the main
//! thread: step 8), every signal blocked first:
//!   rt_tgsigqueueinfo(pid, tid, signo, &siginfo)    its own queue
//! the main thread, step 8, after its timers:
//!   rt_sigqueueinfo(pid, signo, &siginfo)           the process's queue
//! ```
//!
//! Every thread of the copy blocks every signal until its saved mask is set
//! at the resume, so each signal stays queued until then and is delivered
//! once, by the program's own mask and handlers. A thread's batch holds at
//! most about 25 of them (its slot of the scratch area, 4 KiB of data).

use snapshotter::state::PendingSignal;

use super::batch::Batch;
use super::RestoreError;

/// Queues `signals` for thread `tid` of process `pid` (pids of the copy's
/// namespace), in `tid`'s own batch.
pub fn queue_for_thread(
    batch: &mut Batch,
    pid: i32,
    tid: i32,
    signals: &[PendingSignal],
) -> Result<(), RestoreError> {
    for s in signals {
        let info = batch.data(&s.info)?;
        batch.call(
            format!("rt_tgsigqueueinfo({tid}, signal {})", s.signal),
            libc::SYS_rt_tgsigqueueinfo,
            [pid as u64, tid as u64, s.signal as u64, info, 0, 0],
        );
    }
    Ok(())
}

/// Queues `signals` for process `pid` (its shared queue), in a batch of
/// its main thread.
pub fn queue_for_process(
    batch: &mut Batch,
    pid: i32,
    signals: &[PendingSignal],
) -> Result<(), RestoreError> {
    for s in signals {
        let info = batch.data(&s.info)?;
        batch.call(
            format!("rt_sigqueueinfo(signal {})", s.signal),
            libc::SYS_rt_sigqueueinfo,
            [pid as u64, s.signal as u64, info, 0, 0, 0],
        );
    }
    Ok(())
}
