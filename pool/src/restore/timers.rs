//! Timers of the copy (the restore side of `snapshotter::capture::timers`,
//! state `snapshotter::state::TimerSet`), in the main thread's last batch
//! (step 8 of `prepare_process`), after every thread exists (a timer may
//! signal one of them) and with every signal blocked in every thread of
//! the copy until the resume: a timer that expires before the copy runs
//! leaves its signal pending, never lost in a ptrace stop.
//!
//! ```text
//! prctl(PR_TIMER_CREATE_RESTORE_IDS, ON)      timer_create takes the id it
//!                                             finds in *created_timer_id
//! per POSIX timer:
//!   timer_create(clock, &sigevent, &id)       id = the saved one
//!   timer_settime(id, 0, &itimerspec, NULL)   armed ones: remaining time
//!                                             (relative, from now), period
//! prctl(PR_TIMER_CREATE_RESTORE_IDS, OFF)     the program's own calls get
//!                                             ids as usual again
//! per armed interval timer:
//!   setitimer(which, &itimerval, NULL)
//! ```
//!
//! The copy's timers count from the restore, not from the capture: a copy
//! made an hour after the snapshot does not get an hour of expirations.
//! `PR_TIMER_CREATE_RESTORE_IDS` needs a kernel that has it (6.17 and
//! later); on an older one the restore of a snapshot with POSIX timers
//! fails with that call named.

use snapshotter::state::{TimerNotify, TimerSet};

use super::batch::Batch;
use super::remote::bytes_of;
use super::RestoreError;

/// `PR_TIMER_CREATE_RESTORE_IDS` and its arguments (`<linux/prctl.h>`).
const PR_TIMER_CREATE_RESTORE_IDS: u64 = 77;
const RESTORE_IDS_OFF: u64 = 0;
const RESTORE_IDS_ON: u64 = 1;
/// `SIGEV_SIGNAL`, `SIGEV_NONE`, `SIGEV_THREAD_ID`.
const SIGEV_SIGNAL: i32 = 0;
const SIGEV_NONE: i32 = 1;
const SIGEV_THREAD_ID: i32 = 4;

/// The kernel's `struct sigevent` on x86_64 (64 bytes; `_tid` is the
/// first word of the union).
#[repr(C)]
#[derive(Clone, Copy)]
struct Sigevent {
    value: u64,
    signo: i32,
    notify: i32,
    tid: i32,
    pad: [i32; 11],
}
const _: () = assert!(std::mem::size_of::<Sigevent>() == 64);

/// `struct itimerspec` / `struct itimerval`: interval, then value, each
/// `{ sec, nsec | usec }`.
#[repr(C)]
#[derive(Clone, Copy)]
struct Setting {
    interval: [u64; 2],
    value: [u64; 2],
}
const _: () = assert!(std::mem::size_of::<Setting>() == 32);

fn setting(interval: u64, value: u64, per_second: u64) -> Setting {
    Setting {
        interval: [interval / per_second, interval % per_second],
        value: [value / per_second, value % per_second],
    }
}

/// Adds the calls that give the copy `timers` to `batch` (see the module
/// doc). Nothing is added when there are none.
pub fn set_timers(batch: &mut Batch, timers: &TimerSet) -> Result<(), RestoreError> {
    if !timers.posix.is_empty() {
        batch.call(
            "prctl(PR_TIMER_CREATE_RESTORE_IDS, ON): a kernel with it (6.17 or later) is needed for POSIX timers",
            libc::SYS_prctl,
            [PR_TIMER_CREATE_RESTORE_IDS, RESTORE_IDS_ON, 0, 0, 0, 0],
        );
    }
    for t in &timers.posix {
        let (notify, tid) = match t.notify {
            TimerNotify::None => (SIGEV_NONE, 0),
            TimerNotify::Process => (SIGEV_SIGNAL, 0),
            TimerNotify::Thread { tid } => (SIGEV_THREAD_ID, tid),
        };
        let event = Sigevent {
            value: t.value,
            signo: t.signal,
            notify,
            tid,
            pad: [0; 11],
        };
        let event_at = batch.data(bytes_of(&event))?;
        let id_at = batch.data(&t.id.to_ne_bytes())?;
        batch.call(
            format!("timer_create(clock {}, id {})", t.clock, t.id),
            libc::SYS_timer_create,
            [t.clock as u64, event_at, id_at, 0, 0, 0],
        );
        if t.value_ns != 0 {
            let spec = setting(t.interval_ns, t.value_ns, 1_000_000_000);
            let spec_at = batch.data(bytes_of(&spec))?;
            batch.call(
                format!("timer_settime({})", t.id),
                libc::SYS_timer_settime,
                [t.id as u64, 0, spec_at, 0, 0, 0],
            );
        }
    }
    if !timers.posix.is_empty() {
        batch.call(
            "prctl(PR_TIMER_CREATE_RESTORE_IDS, OFF)",
            libc::SYS_prctl,
            [PR_TIMER_CREATE_RESTORE_IDS, RESTORE_IDS_OFF, 0, 0, 0, 0],
        );
    }
    for t in &timers.interval {
        let val = setting(t.interval_us, t.value_us, 1_000_000);
        let at = batch.data(bytes_of(&val))?;
        batch.call(
            format!("setitimer({})", t.which),
            libc::SYS_setitimer,
            [t.which as u64, at, 0, 0, 0, 0],
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_split_into_seconds_and_the_rest() {
        let s = setting(250_000_000, 2_500_000_000, 1_000_000_000);
        assert_eq!(s.interval, [0, 250_000_000]);
        assert_eq!(s.value, [2, 500_000_000]);
        let v = setting(1_000_000, 1_500_000, 1_000_000);
        assert_eq!(v.interval, [1, 0]);
        assert_eq!(v.value, [1, 500_000]);
    }
}
