//! Timers of the process that signal it: the three interval timers
//! (`setitimer`) and the POSIX timers (`timer_create`). Both are
//! process-wide. Capture: `capture::timers`; restore:
//! `pool::restore::timers`.
//!
//! Only relative times are kept: what remained of each timer when it was
//! captured and its period. A copy arms each timer again with that
//! remaining time, counted from the copy's resume (a copy restored an hour
//! later does not get an hour of expirations at once). Overruns counted
//! before the capture are not kept (a copy starts with none).

use serde::{Deserialize, Serialize};

/// Process-wide timers.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct TimerSet {
    /// Armed interval timers (`ITIMER_REAL`, `ITIMER_VIRTUAL`,
    /// `ITIMER_PROF`); disarmed ones are not listed.
    pub interval: Vec<IntervalTimer>,
    /// POSIX timers, armed or not, in id order.
    pub posix: Vec<PosixTimer>,
}

impl TimerSet {
    /// Whether there is nothing to restore.
    pub fn is_empty(&self) -> bool {
        self.interval.is_empty() && self.posix.is_empty()
    }
}

/// One armed interval timer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IntervalTimer {
    /// `ITIMER_REAL` (0), `ITIMER_VIRTUAL` (1) or `ITIMER_PROF` (2).
    pub which: u32,
    /// Time left until the next expiration, in microseconds (never 0: a
    /// timer with nothing left is disarmed).
    pub value_us: u64,
    /// Period in microseconds; 0 for a one-shot timer.
    pub interval_us: u64,
}

/// How a POSIX timer tells its expiration (`sigev_notify`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TimerNotify {
    /// `SIGEV_NONE`: nothing; the program polls `timer_gettime`.
    None,
    /// `SIGEV_SIGNAL`: a signal to the process.
    Process,
    /// `SIGEV_THREAD_ID`: a signal to one thread (glibc's `SIGEV_THREAD`
    /// is this, aimed at its helper thread).
    Thread {
        /// The thread's id in the process's own pid namespace (the one the
        /// copy has too).
        tid: i32,
    },
}

/// One POSIX timer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PosixTimer {
    /// The timer id the program holds (`timer_t`); the copy's timer gets
    /// the same one.
    pub id: i32,
    /// Its clock id as the program gave it: `CLOCK_REALTIME` (0),
    /// `CLOCK_MONOTONIC` (1), `CLOCK_BOOTTIME` (7), or a CPU clock of the
    /// process or one of its threads (2, 3, or the kernel's negative
    /// encoding, which names pids of the process's own namespace).
    pub clock: i32,
    /// How it notifies.
    pub notify: TimerNotify,
    /// Signal number (`sigev_signo`); kept for `SIGEV_NONE` too.
    pub signal: i32,
    /// `sigev_value` as the program set it (an int or a pointer).
    pub value: u64,
    /// Time left until the next expiration, in nanoseconds; 0 when
    /// disarmed.
    pub value_ns: u64,
    /// Period in nanoseconds; 0 for a one-shot timer.
    pub interval_ns: u64,
}
