//! CPU time of a cold start: what the server process used plus what its
//! sandboxes used, read before and after a run, and beside it what the
//! kernel and the whole machine spent.
//!
//! * The server: `utime + stime` of `/proc/PID/stat` (every thread of the
//!   process; not its reaped children, whose time the sandboxes' counter
//!   already holds), in clock ticks, plus its sandbox zygote (its child
//!   named `thaw-zygote`, which forks every sandbox's outer process:
//!   pool/src/sandbox/zygote.rs).
//! * The sandboxes: `thaw_sandbox_cpu_seconds_total` of the server's
//!   `/metrics`, a cgroup counter that includes every sandbox ever made by
//!   it, those already torn down too (pool/src/cgroup.rs, "CPU of every
//!   sandbox together"): the copies, the spares made for them, their inits.
//! * Not charged to either, and counted apart: **kernel threads** (the
//!   children of `kthreadd`: kworkers running a network namespace's cleanup,
//!   RCU, softirq threads; `utime + stime` of each), and the **whole
//!   machine** (every CPU's busy time in `/proc/stat` less this load
//!   generator's own CPU). Both include whatever else the machine runs:
//!   meaningful on a quiet machine only.
//!
//! CPU per cold start = (Δ server + Δ sandboxes) ÷ cold starts answered.

use std::time::Duration;

use super::api::Api;

/// The metric holding the CPU time of every sandbox.
pub const SANDBOX_CPU_METRIC: &str = "thaw_sandbox_cpu_seconds_total";

/// The name (`comm`) of the server's sandbox zygote.
pub const ZYGOTE_COMM: &str = "thaw-zygote";

/// CPU used so far by the server and by its sandboxes, and by the kernel
/// and the machine.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CpuReading {
    /// The server process's own CPU time and its zygote's.
    pub server: Duration,
    /// Every sandbox's CPU time.
    pub sandboxes: Duration,
    /// Every kernel thread's CPU time.
    pub kernel: Duration,
    /// Busy time of every CPU of the machine, less this process's CPU.
    pub machine: Duration,
}

impl CpuReading {
    /// Reads every counter now.
    pub async fn take(api: &Api, server_pid: u32) -> Result<CpuReading, String> {
        let (status, text) = api.get_text("/metrics").await.map_err(|e| e.to_string())?;
        if status != 200 {
            return Err(format!("GET /metrics: status {status}"));
        }
        let sandboxes = metric(&text, SANDBOX_CPU_METRIC).ok_or_else(|| {
            format!("the server's /metrics has no {SANDBOX_CPU_METRIC} (no CPU accounting cgroup on this host?)")
        })?;
        let server = process_cpu(server_pid)
            .ok_or_else(|| format!("cannot read /proc/{server_pid}/stat"))?
            + zygote_cpu(server_pid);
        let machine = machine_busy()
            .unwrap_or_default()
            .saturating_sub(process_cpu(std::process::id()).unwrap_or_default());
        Ok(CpuReading {
            server,
            sandboxes: Duration::from_secs_f64(sandboxes.max(0.0)),
            kernel: kernel_threads_cpu(),
            machine,
        })
    }

    /// What was used between `self` and `later`.
    pub fn until(&self, later: &CpuReading) -> CpuReading {
        CpuReading {
            server: later.server.saturating_sub(self.server),
            sandboxes: later.sandboxes.saturating_sub(self.sandboxes),
            kernel: later.kernel.saturating_sub(self.kernel),
            machine: later.machine.saturating_sub(self.machine),
        }
    }

    /// Server and sandboxes together.
    pub fn total(&self) -> Duration {
        self.server + self.sandboxes
    }
}

/// Clock ticks per second.
fn hz() -> f64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .filter(|&hz| hz > 0)
        .unwrap_or(100) as f64
}

/// `(comm, ppid, utime + stime ticks)` of every process.
fn processes() -> Vec<(String, u32, u64)> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let comm = stat.get(stat.find('(')? + 1..stat.rfind(')')?)?.to_string();
            Some((comm, parse_ppid(&stat)?, parse_cpu_ticks(&stat)?))
        })
        .collect()
}

/// CPU of the server's zygote (its children named [`ZYGOTE_COMM`]).
fn zygote_cpu(server_pid: u32) -> Duration {
    let ticks: u64 = processes()
        .into_iter()
        .filter(|(comm, ppid, _)| *ppid == server_pid && comm == ZYGOTE_COMM)
        .map(|(_, _, t)| t)
        .sum();
    Duration::from_secs_f64(ticks as f64 / hz())
}

/// CPU of every kernel thread: `kthreadd` (pid 2) and its children.
fn kernel_threads_cpu() -> Duration {
    let ticks: u64 = processes()
        .into_iter()
        .filter(|(_, ppid, _)| *ppid == 2)
        .map(|(_, _, t)| t)
        .sum::<u64>()
        + std::fs::read_to_string("/proc/2/stat")
            .ok()
            .and_then(|s| parse_cpu_ticks(&s))
            .unwrap_or(0);
    Duration::from_secs_f64(ticks as f64 / hz())
}

/// Busy time of every CPU (`/proc/stat`'s first line: user, nice, system,
/// irq, softirq; not idle, iowait, steal or guest).
fn machine_busy() -> Option<Duration> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    let ticks = parse_busy_ticks(text.lines().next()?)?;
    Some(Duration::from_secs_f64(ticks as f64 / hz()))
}

/// user + nice + system + irq + softirq of a `cpu` line of `/proc/stat`.
fn parse_busy_ticks(line: &str) -> Option<u64> {
    let mut f = line.split_whitespace();
    if !f.next()?.starts_with("cpu") {
        return None;
    }
    let v: Vec<u64> = f.take(7).map(|x| x.parse().ok()).collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq
    (v.len() == 7).then(|| v[0] + v[1] + v[2] + v[5] + v[6])
}

/// The parent pid (field 4) of a stat line.
fn parse_ppid(stat: &str) -> Option<u32> {
    stat[stat.rfind(')')? + 1..]
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
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
    Some(Duration::from_secs_f64(ticks as f64 / hz()))
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
    fn busy_time_and_parent_from_proc_lines() {
        let cpu = "cpu  100 5 50 9000 7 3 2 11 0 0";
        assert_eq!(parse_busy_ticks(cpu), Some(100 + 5 + 50 + 3 + 2));
        assert_eq!(parse_busy_ticks("intr 1 2 3"), None);
        let line = "42 (thaw (x) y) S 17 42 42 0 -1 4194560 100 0 0 0 250 37 5 6 20 0";
        assert_eq!(parse_ppid(line), Some(17));
    }

    #[test]
    fn kernel_threads_and_machine_are_read() {
        // kthreadd's children always exist on Linux; the machine has run.
        assert!(!processes().iter().any(|(c, _, _)| c.is_empty()));
        assert!(processes().iter().any(|(_, ppid, _)| *ppid == 2));
        assert!(machine_busy().is_some_and(|d| d > Duration::ZERO));
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
