//! Timers ([`TimerSet`]): the interval timers and the POSIX timers of a
//! process, process-wide, read through the held main thread. Restore:
//! `pool::restore::timers`.
//!
//! `/proc/PID/timers` lists every POSIX timer, four lines each:
//!
//! ```text
//! ID: 6
//! signal: 10/000000000000002a        sigev_signo / sigev_value (hex)
//! notify: signal/pid.27748           signal|none|thread / pid.N|tid.N
//! ClockID: 1
//! ```
//!
//! (`tid.N` is `SIGEV_THREAD_ID`; N is the thread id in the pid namespace
//! of the `/proc` read, the capturer's). What remains of each timer, and
//! its period, exist only inside the process: injected into the main
//! thread ([`super::inject`]), into scratch memory below its stack:
//!
//! ```text
//! timer_gettime(id, &itimerspec)     -> { interval {sec, nsec}, value {sec, nsec} }
//! getitimer(which, &itimerval) ×3    -> { interval {sec, usec}, value {sec, usec} }
//! ```
//!
//! A timer a copy could not have the same way is refused
//! ([`Refusal::Timers`]): a clock other than the realtime, monotonic and
//! boot-time clocks and the CPU clocks of the process and its threads (the
//! CPU clock of another process, the alarm clocks), or the calling
//! thread's CPU clock in a process with more than one thread (which thread
//! created it cannot be told). The clock id is kept as the program gave
//! it: CPU clocks name pids of the process's own namespace, which the copy
//! has too.

use super::inject::Injector;
use super::memory;
use super::procfs;
use super::ptrace::Seized;
use super::refuse::Refusal;
use super::CaptureError;
use crate::state::{IntervalTimer, PosixTimer, TimerNotify, TimerSet};

/// Scratch bytes: an `itimerspec` or an `itimerval` (32 bytes each).
const SCRATCH: usize = 32;

/// Clocks of a restored timer that measure time, not CPU use:
/// `CLOCK_REALTIME`, `CLOCK_MONOTONIC` and `CLOCK_BOOTTIME`.
const TIME_CLOCKS: [i32; 3] = [
    libc::CLOCK_REALTIME,
    libc::CLOCK_MONOTONIC,
    libc::CLOCK_BOOTTIME,
];

/// What a CPU clock id measures: the kernel's encoding
/// `(!pid << 3) | thread << 2 | kind` (glibc passes pid 0, "the caller",
/// for `CLOCK_PROCESS_CPUTIME_ID` and `CLOCK_THREAD_CPUTIME_ID`; the
/// constants 2 and 3 themselves mean the same).
fn cpu_clock(clock: i32) -> Option<(i32, bool)> {
    match clock {
        libc::CLOCK_PROCESS_CPUTIME_ID => Some((0, false)),
        libc::CLOCK_THREAD_CPUTIME_ID => Some((0, true)),
        c if c < 0 && c & 3 != 3 => Some((!(c >> 3), c & 4 != 0)),
        _ => None,
    }
}

/// One timer of `/proc/PID/timers` before its setting is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listed {
    /// Timer id.
    pub id: i32,
    /// `sigev_signo`.
    pub signal: i32,
    /// `sigev_value`.
    pub value: u64,
    /// Notification; for a thread, the tid as `/proc` showed it.
    pub notify: TimerNotify,
    /// Clock id.
    pub clock: i32,
}

/// Parses `/proc/PID/timers` (see the module doc).
pub fn parse(text: &str) -> Result<Vec<Listed>, String> {
    let mut out = Vec::new();
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    while let Some(first) = lines.next() {
        let field = |line: Option<&str>, key: &str| -> Result<String, String> {
            let line = line.ok_or_else(|| format!("timer list ends before {key:?}"))?;
            line.strip_prefix(key)
                .map(|v| v.trim().to_string())
                .ok_or_else(|| format!("{line:?} where {key:?} was expected"))
        };
        let bad = |what: &str, v: &str| format!("{what} {v:?}");
        let id = field(Some(first), "ID:")?;
        let id: i32 = id.parse().map_err(|_| bad("timer id", &id))?;
        let signal = field(lines.next(), "signal:")?;
        let (signo, value) = signal
            .split_once('/')
            .ok_or_else(|| bad("signal line", &signal))?;
        let signo: i32 = signo.parse().map_err(|_| bad("signal", signo))?;
        let value = u64::from_str_radix(value, 16).map_err(|_| bad("sigev_value", value))?;
        let notify = field(lines.next(), "notify:")?;
        let (how, target) = notify
            .split_once('/')
            .ok_or_else(|| bad("notify line", &notify))?;
        let notify = match (how, target.split_once('.')) {
            ("none", _) => TimerNotify::None,
            // The kernel treats a raw SIGEV_THREAD as SIGEV_SIGNAL.
            ("signal" | "thread", Some(("pid", _))) => TimerNotify::Process,
            ("signal", Some(("tid", tid))) => TimerNotify::Thread {
                tid: tid.parse().map_err(|_| bad("notify line", &notify))?,
            },
            _ => return Err(bad("notify line", &notify)),
        };
        let clock = field(lines.next(), "ClockID:")?;
        let clock: i32 = clock.parse().map_err(|_| bad("clock id", &clock))?;
        out.push(Listed {
            id,
            signal: signo,
            value,
            notify,
            clock,
        });
    }
    out.sort_by_key(|t| t.id);
    Ok(out)
}

/// Checks one listed timer against what a copy can have and turns its
/// thread id into the process's own (`tids`: host tid to namespace tid of
/// every thread).
fn restorable(listed: Listed, tids: &[(i32, i32)]) -> Result<Listed, String> {
    let own_pid = tids.first().map(|&(_, ns)| ns).unwrap_or(0);
    let clock_ok = if TIME_CLOCKS.contains(&listed.clock) {
        true
    } else {
        match cpu_clock(listed.clock) {
            // The process's own CPU clock (its pid is the copy's too).
            Some((pid, false)) => pid == 0 || pid == own_pid,
            // The calling thread's: which thread created the timer cannot
            // be told, unless there is only one.
            Some((0, true)) => {
                if tids.len() > 1 {
                    return Err(format!(
                        "POSIX timer {} runs on the CPU clock of the thread that created it, in a process of {} threads (which one cannot be told)",
                        listed.id,
                        tids.len()
                    ));
                }
                true
            }
            // A named thread of the process (tids are kept in the copy).
            Some((tid, true)) => tids.iter().any(|&(_, ns)| ns == tid),
            None => false,
        }
    };
    if !clock_ok {
        return Err(format!(
            "POSIX timer {} runs on clock {} (only the realtime, monotonic and boot-time clocks and the CPU clocks of the process and its threads can be restored)",
            listed.id, listed.clock
        ));
    }
    let notify = match listed.notify {
        TimerNotify::Thread { tid } => {
            let (_, own) = tids.iter().find(|(host, _)| *host == tid).ok_or_else(|| {
                format!(
                    "POSIX timer {} signals thread {tid}, not one of the process",
                    listed.id
                )
            })?;
            TimerNotify::Thread { tid: *own }
        }
        other => other,
    };
    Ok(Listed { notify, ..listed })
}

fn word(bytes: &[u8], index: usize) -> u64 {
    u64::from_ne_bytes(bytes[index * 8..index * 8 + 8].try_into().expect("8 bytes"))
}

/// Reads the timers of the process held by `seized` (its main thread);
/// `tids` maps every thread's host tid to its tid in the process's own pid
/// namespace.
pub fn capture(
    seized: &mut Seized,
    injector: &Injector,
    tids: &[(i32, i32)],
) -> Result<TimerSet, CaptureError> {
    let pid = seized.pid();
    let path = format!("/proc/{pid}/timers");
    let listed = parse(&procfs::read_text(pid, "timers")?)
        .map_err(|what| CaptureError::Parse { path, what })?;
    let mut restorable_timers = Vec::with_capacity(listed.len());
    for timer in listed {
        let timer = restorable(timer, tids)
            .map_err(|what| CaptureError::refused(pid, Refusal::Timers { what }))?;
        restorable_timers.push(timer);
    }
    injector.with_scratch(seized, SCRATCH, |injector, seized, scratch| {
        let mut inner = || -> Result<TimerSet, CaptureError> {
            let mut raw = [0u8; SCRATCH];
            let mut set = TimerSet::default();
            let mut call = |seized: &mut Seized, name: String, nr: i64, arg0: u64| {
                let rc = injector.syscall(seized, nr, [arg0, scratch, 0, 0, 0, 0])?;
                if rc < 0 {
                    return Err(CaptureError::Injected {
                        pid,
                        call: name,
                        errno: -rc as i32,
                    });
                }
                memory::read_remote(pid, scratch, &mut raw)?;
                Ok::<_, CaptureError>(raw)
            };
            for timer in &restorable_timers {
                let raw = call(
                    seized,
                    format!("timer_gettime({})", timer.id),
                    libc::SYS_timer_gettime,
                    timer.id as u64,
                )?;
                let ns = |sec: u64, nsec: u64| sec.saturating_mul(1_000_000_000) + nsec;
                set.posix.push(PosixTimer {
                    id: timer.id,
                    clock: timer.clock,
                    notify: timer.notify,
                    signal: timer.signal,
                    value: timer.value,
                    interval_ns: ns(word(&raw, 0), word(&raw, 1)),
                    value_ns: ns(word(&raw, 2), word(&raw, 3)),
                });
            }
            for which in [libc::ITIMER_REAL, libc::ITIMER_VIRTUAL, libc::ITIMER_PROF] {
                let raw = call(
                    seized,
                    format!("getitimer({which})"),
                    libc::SYS_getitimer,
                    which as u64,
                )?;
                let us = |sec: u64, usec: u64| sec.saturating_mul(1_000_000) + usec;
                let value_us = us(word(&raw, 2), word(&raw, 3));
                if value_us != 0 {
                    set.interval.push(IntervalTimer {
                        which: which as u32,
                        value_us,
                        interval_us: us(word(&raw, 0), word(&raw, 1)),
                    });
                }
            }
            Ok(set)
        };
        Ok(inner())
    })?
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIST: &str = "ID: 6\nsignal: 10/000000000000002a\nnotify: signal/pid.27748\nClockID: 1\n\
                        ID: 1\nsignal: 34/00007f00deadbeef\nnotify: signal/tid.27750\nClockID: 0\n\
                        ID: 2\nsignal: 0/0000000000000000\nnotify: none/pid.27748\nClockID: 7\n";

    #[test]
    fn parses_every_notification_in_id_order() {
        let timers = parse(LIST).unwrap();
        assert_eq!(timers.len(), 3);
        assert_eq!(
            timers[0],
            Listed {
                id: 1,
                signal: 34,
                value: 0x7f00deadbeef,
                notify: TimerNotify::Thread { tid: 27750 },
                clock: 0,
            }
        );
        assert_eq!(timers[1].notify, TimerNotify::None);
        assert_eq!(timers[1].clock, 7);
        assert_eq!(timers[2].id, 6);
        assert_eq!(timers[2].notify, TimerNotify::Process);
        assert_eq!(timers[2].value, 42);
        assert_eq!(parse("").unwrap(), Vec::new());
    }

    #[test]
    fn a_truncated_or_odd_list_is_an_error() {
        assert!(parse("ID: 1\nsignal: 10/0\n").is_err());
        assert!(parse("ID: x\nsignal: 10/0\nnotify: signal/pid.1\nClockID: 0\n").is_err());
        assert!(parse("ID: 1\nsignal: 10/0\nnotify: bogus/pid.1\nClockID: 0\n").is_err());
    }

    #[test]
    fn thread_ids_become_the_process_own_and_odd_clocks_are_refused() {
        let tids = [(500, 7), (501, 8)];
        let listed = Listed {
            id: 3,
            signal: 10,
            value: 0,
            notify: TimerNotify::Thread { tid: 501 },
            clock: 1,
        };
        assert_eq!(
            restorable(listed, &tids).unwrap().notify,
            TimerNotify::Thread { tid: 8 }
        );
        let stranger = Listed {
            notify: TimerNotify::Thread { tid: 999 },
            ..listed
        };
        assert!(restorable(stranger, &tids).is_err());
        // The CPU clock of process 500 (MAKE_PROCESS_CPUCLOCK), not this one.
        let on = |clock: i32| Listed {
            clock,
            notify: TimerNotify::Process,
            ..listed
        };
        assert!(restorable(on((!500 << 3) | 2), &tids)
            .unwrap_err()
            .contains("clock"));
        // glibc's CLOCK_PROCESS_CPUTIME_ID (pid 0), this process's by pid.
        assert!(restorable(on(-6), &tids).is_ok());
        assert!(restorable(on((!7 << 3) | 2), &tids).is_ok());
        // A thread's clock by tid (8 is one of the process's).
        assert!(restorable(on((!8 << 3) | 4 | 2), &tids).is_ok());
        assert!(restorable(on((!9 << 3) | 4 | 2), &tids).is_err());
        // The calling thread's clock (glibc's -2, or 3): one thread only.
        for clock in [-2, libc::CLOCK_THREAD_CPUTIME_ID] {
            assert!(restorable(on(clock), &tids).is_err());
            assert!(restorable(on(clock), &tids[..1]).is_ok());
        }
        assert!(restorable(on(libc::CLOCK_REALTIME_ALARM), &tids).is_err());
    }
}
