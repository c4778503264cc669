//! CPU time of a cold start: what the server process used plus what its
//! sandboxes used, read before and after a run.
//!
//! * The server: `utime + stime` of `/proc/PID/stat` (every thread of the
//!   process; not its reaped children, whose time the sandboxes' counter
//!   already holds), in clock ticks.
//! * The sandboxes: `thaw_sandbox_cpu_seconds_total` of the server's
//!   `/metrics`, a cgroup counter that includes every sandbox ever made by
//!   it, those already torn down too (pool/src/cgroup.rs, "CPU of every
//!   sandbox together"): the copies, the spares made for them, their inits.
//!
//! CPU per cold start = (Δ server + Δ sandboxes) ÷ cold starts answered.

use std::time::Duration;

use super::api::Api;

/// The metric holding the CPU time of every sandbox.
pub const SANDBOX_CPU_METRIC: &str = "thaw_sandbox_cpu_seconds_total";

/// CPU used so far by the server and by its sandboxes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CpuReading {
    /// The server process's own CPU time.
    pub server: Duration,
    /// Every sandbox's CPU time.
    pub sandboxes: Duration,
}

impl CpuReading {
    /// Reads both counters now.
    pub async fn take(api: &Api, server_pid: u32) -> Result<CpuReading, String> {
        let server = process_cpu(server_pid)
            .ok_or_else(|| format!("cannot read /proc/{server_pid}/stat"))?;
        let (status, text) = api.get_text("/metrics").await.map_err(|e| e.to_string())?;
        if status != 200 {
            return Err(format!("GET /metrics: status {status}"));
        }
        let sandboxes = metric(&text, SANDBOX_CPU_METRIC).ok_or_else(|| {
            format!("the server's /metrics has no {SANDBOX_CPU_METRIC} (no CPU accounting cgroup on this host?)")
        })?;
        Ok(CpuReading {
            server,
            sandboxes: Duration::from_secs_f64(sandboxes.max(0.0)),
        })
    }

    /// What was used between `self` and `later`.
    pub fn until(&self, later: &CpuReading) -> CpuReading {
        CpuReading {
            server: later.server.saturating_sub(self.server),
            sandboxes: later.sandboxes.saturating_sub(self.sandboxes),
        }
    }

    /// Server and sandboxes together.
    pub fn total(&self) -> Duration {
        self.server + self.sandboxes
    }
}

/// The value of an unlabelled metric in Prometheus text.
pub fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (key, value) = l.split_once(' ')?;
        (key == name).then(|| value.trim().parse().ok())?
    })
}

/// `utime + stime` of a process (all its threads), from `/proc/PID/stat`.
pub fn process_cpu(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let ticks = parse_cpu_ticks(&stat)?;
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .filter(|&hz| hz > 0)
        .unwrap_or(100) as f64;
    Some(Duration::from_secs_f64(ticks as f64 / hz))
}

/// `utime + stime` (fields 14 and 15) of a stat line, in clock ticks;
/// fields are counted from the last `)` since the command may hold spaces.
fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let after = &stat[stat.rfind(')')? + 1..];
    let mut fields = after.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_from_a_stat_line() {
        // pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt
        // majflt cmajflt utime stime ...
        let line = "42 (thaw serve) S 1 42 42 0 -1 4194560 100 0 0 0 250 37 5 6 20 0";
        assert_eq!(parse_cpu_ticks(line), Some(287));
        assert_eq!(parse_cpu_ticks("nonsense"), None);
    }

    #[test]
    fn metric_by_exact_name() {
        let text =
            "# HELP thaw_sandbox_cpu_seconds_total CPU\n# TYPE thaw_sandbox_cpu_seconds counter\n\
                    thaw_sandbox_cpu_seconds_total_other 9\nthaw_sandbox_cpu_seconds_total 12.5\n";
        assert_eq!(metric(text, SANDBOX_CPU_METRIC), Some(12.5));
        assert_eq!(metric(text, "thaw_missing"), None);
    }

    #[test]
    fn this_process_uses_cpu() {
        let me = std::process::id();
        let t0 = process_cpu(me).expect("own stat");
        let spin = std::time::Instant::now();
        let mut x = 0u64;
        while spin.elapsed() < Duration::from_millis(120) {
            x = x.wrapping_mul(31).wrapping_add(7);
        }
        std::hint::black_box(x);
        let t1 = process_cpu(me).expect("own stat");
        assert!(t1 > t0, "{t0:?} -> {t1:?}");
    }
}
