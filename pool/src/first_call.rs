//! A probe of an instance's first invocation, for finding where its extra
//! time goes (docs/benchmarks.md, "First invocation after a start"). With
//! `THAW_TRACE_FIRST=1` in the server's environment, the first invocation
//! of every instance (`=all`: every invocation) logs, beside its handler
//! time:
//!
//! ```text
//! minflt, majflt   page faults of the runtime process (all its threads)
//! threads          each thread that ran meanwhile: ns on a CPU and ns
//!                  waiting for one (/proc/PID/task/TID/schedstat)
//! uffd_pages       uffd copies: the pages the page server filled on a
//!                  fault, each with the line of /proc/PID/maps it is in
//! uffd_zero        of those, how many were zero pages of the snapshot
//!                  (the others: stored pages, freed ranges)
//! ```
//!
//! Off by default: reading /proc costs the server time.
//!
//! `THAW_TRACE_FIRST=span` reads nothing around the invocation: every
//! invocation logs the span its handler time measures as `CLOCK_MONOTONIC`
//! nanoseconds (the clock `perf record -k CLOCK_MONOTONIC` stamps its
//! events with), whether it was the instance's first, and the host pid of
//! the runtime process (looked up after the span's end), to place a
//! scheduler trace's events inside or outside the span.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::restore::uffd::LiveReport;

/// What `THAW_TRACE_FIRST` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Unset or unknown: nothing.
    Off,
    /// `1`: the probe, on each instance's first invocation.
    First,
    /// `all`: the probe, on every invocation.
    All,
    /// `span`: every invocation's span, nothing read from /proc within it.
    Span,
}

impl Mode {
    fn parse(value: Option<&str>) -> Mode {
        match value {
            Some("1") => Mode::First,
            Some("all") => Mode::All,
            Some("span") => Mode::Span,
            _ => Mode::Off,
        }
    }
}

/// `THAW_TRACE_FIRST`, read once.
fn mode() -> Mode {
    static MODE: std::sync::OnceLock<Mode> = std::sync::OnceLock::new();
    *MODE.get_or_init(|| Mode::parse(std::env::var("THAW_TRACE_FIRST").ok().as_deref()))
}

/// Whether the invocation numbered `served` (0: the instance's first) is
/// probed: with `THAW_TRACE_FIRST=1` the first, with `THAW_TRACE_FIRST=all`
/// every one (the warm ones to compare with).
pub fn wanted(served: u64) -> bool {
    match mode() {
        Mode::All => true,
        Mode::First => served == 0,
        Mode::Off | Mode::Span => false,
    }
}

/// Diagnostic: `THAW_FIRST_DELAY_US` makes an instance wait that long
/// before its first invocation (to tell background work right after a
/// start from the copy's own cost).
pub fn first_delay() -> Option<Duration> {
    static DELAY: std::sync::OnceLock<Option<Duration>> = std::sync::OnceLock::new();
    *DELAY.get_or_init(|| parse_delay(std::env::var("THAW_FIRST_DELAY_US").ok().as_deref()))
}

fn parse_delay(value: Option<&str>) -> Option<Duration> {
    value?
        .trim()
        .parse()
        .ok()
        .filter(|&us| us > 0)
        .map(Duration::from_micros)
}

/// `CLOCK_MONOTONIC` now, in ns, when `THAW_TRACE_FIRST=span`.
pub fn span_mark() -> Option<u64> {
    if mode() != Mode::Span {
        return None;
    }
    let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).ok()?;
    Some(now.tv_sec() as u64 * 1_000_000_000 + now.tv_nsec() as u64)
}

/// Logs an invocation's span (`THAW_TRACE_FIRST=span`): from `start` to
/// `end`, both [`span_mark`]s (the end taken before `pid` was looked up,
/// which reads /proc).
pub fn log_span(start: u64, end: u64, pid: Option<i32>, served: u64) {
    tracing::info!(
        pid = pid.unwrap_or(0),
        first = served == 0,
        start_ns = start,
        end_ns = end,
        "invocation span (THAW_TRACE_FIRST=span)"
    );
}

/// A process's fault counters (`/proc/PID/stat`, all its threads).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Faults {
    minflt: u64,
    majflt: u64,
}

/// The fault counters of a `/proc/PID/stat` line.
fn parse_stat(stat: &str) -> Option<Faults> {
    // The fields after the command (which may hold spaces and parentheses)
    // start with field 3, the state.
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let f: Vec<&str> = rest.split(' ').collect();
    Some(Faults {
        minflt: f.get(7)?.parse().ok()?,
        majflt: f.get(9)?.parse().ok()?,
    })
}

/// Per thread of process `pid`: name, ns on a CPU, ns waiting for one.
fn thread_times(pid: i32) -> BTreeMap<i32, (String, u64, u64)> {
    let mut out = BTreeMap::new();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for e in dir.flatten() {
        let Ok(tid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let comm = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
        let sched = std::fs::read_to_string(e.path().join("schedstat")).unwrap_or_default();
        let mut f = sched
            .split_whitespace()
            .map(|x| x.parse::<u64>().unwrap_or(0));
        let (run, wait) = (f.next().unwrap_or(0), f.next().unwrap_or(0));
        out.insert(tid, (comm.trim().to_string(), run, wait));
    }
    out
}

/// The line of a `/proc/PID/maps` text whose range holds `addr`.
fn maps_line(maps: &str, addr: u64) -> &str {
    maps.lines()
        .find(|l| {
            let range = l.split(' ').next().unwrap_or("");
            let mut r = range.split('-');
            let s = u64::from_str_radix(r.next().unwrap_or(""), 16).unwrap_or(0);
            let e = u64::from_str_radix(r.next().unwrap_or(""), 16).unwrap_or(0);
            (s..e).contains(&addr)
        })
        .unwrap_or("")
}

/// What was read before the invocation.
#[derive(Debug)]
pub struct Probe {
    pid: i32,
    faults: Faults,
    threads: BTreeMap<i32, (String, u64, u64)>,
    touched: usize,
    zero_faults: usize,
}

impl Probe {
    /// Reads the runtime process `pid` (host pid) before the invocation.
    pub fn start(pid: i32, server: Option<&LiveReport>) -> Option<Probe> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        Some(Probe {
            pid,
            faults: parse_stat(&stat)?,
            threads: thread_times(pid),
            touched: server.map(|s| s.touched().len()).unwrap_or(0),
            zero_faults: server.map(|s| s.zero_faults().len()).unwrap_or(0),
        })
    }

    /// Reads it again after the invocation and logs the difference.
    pub fn finish(
        self,
        function: &str,
        served: u64,
        duration: Duration,
        server: Option<&LiveReport>,
    ) {
        let Some(after) = std::fs::read_to_string(format!("/proc/{}/stat", self.pid))
            .ok()
            .and_then(|s| parse_stat(&s))
        else {
            return;
        };
        let mut threads = Vec::new();
        for (tid, (comm, run, wait)) in thread_times(self.pid) {
            let (r0, w0) = self.threads.get(&tid).map(|t| (t.1, t.2)).unwrap_or((0, 0));
            if run > r0 {
                threads.push(format!(
                    "{comm}[{tid}] run {}us wait {}us",
                    (run - r0) / 1000,
                    wait.saturating_sub(w0) / 1000
                ));
            }
        }
        let maps = std::fs::read_to_string(format!("/proc/{}/maps", self.pid)).unwrap_or_default();
        let uffd_pages: Vec<String> = server
            .map(|s| s.touched())
            .unwrap_or_default()
            .iter()
            .skip(self.touched)
            .map(|&a| format!("{a:#x} in {}", maps_line(&maps, a)))
            .collect();
        let uffd_zero = server
            .map(|s| s.zero_faults().len())
            .unwrap_or(0)
            .saturating_sub(self.zero_faults);
        tracing::info!(
            function,
            first = served == 0,
            duration_us = duration.as_micros() as u64,
            minflt = after.minflt.saturating_sub(self.faults.minflt),
            majflt = after.majflt.saturating_sub(self.faults.majflt),
            ?threads,
            ?uffd_pages,
            uffd_zero,
            "invocation probed (THAW_TRACE_FIRST)"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_after_a_command_with_spaces() {
        let line = "42 (C1 CompilerThre) S 1 42 42 0 -1 4194560 1234 0 56 0 7 8 0 0 20 0";
        assert_eq!(
            parse_stat(line),
            Some(Faults {
                minflt: 1234,
                majflt: 56
            })
        );
        assert_eq!(parse_stat("42 (x"), None);
    }

    #[test]
    fn trace_modes_and_delay_parse() {
        assert_eq!(Mode::parse(None), Mode::Off);
        assert_eq!(Mode::parse(Some("1")), Mode::First);
        assert_eq!(Mode::parse(Some("all")), Mode::All);
        assert_eq!(Mode::parse(Some("span")), Mode::Span);
        assert_eq!(Mode::parse(Some("0")), Mode::Off);
        assert_eq!(parse_delay(Some("50000")), Some(Duration::from_millis(50)));
        assert_eq!(parse_delay(Some("0")), None);
        assert_eq!(parse_delay(Some("soon")), None);
        assert_eq!(parse_delay(None), None);
    }

    #[test]
    fn this_process_is_probed() {
        let pid = std::process::id() as i32;
        let probe = Probe::start(pid, None).expect("own /proc");
        assert!(probe.threads.contains_key(&pid));
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        let here = maps_line as fn(&str, u64) -> &str as usize as u64;
        let perms = maps_line(&maps, here).split(' ').nth(1).unwrap_or("");
        assert!(perms.contains('x'), "code is executable: {perms}");
        assert_eq!(maps_line(&maps, 0), "");
    }
}
