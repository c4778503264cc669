//! Control groups for sandboxes, on cgroup v2 or v1.
//!
//! thaw keeps every sandbox in its own cgroup below a parent that belongs to
//! this installation:
//!
//! * **v2** (a unified hierarchy whose root offers the `memory` and `pids`
//!   controllers): `<server's cgroup>/thaw-<tag>/<sandbox>`. The server moves
//!   itself into a `server` leaf first so that its own cgroup may enable
//!   controllers for children (the "no internal processes" rule).
//! * **v1** (separate `memory`, `pids` and `cpu` hierarchies, as on the
//!   machines thaw is developed on): `<mount>/<server's cgroup>/thaw-<tag>/<sandbox>`
//!   in each of the three hierarchies.
//!
//! `<tag>` is derived from the data directory, so two servers with two data
//! directories never clean up each other's sandboxes, while a restarted server
//! finds what its crashed predecessor left behind.
//!
//! **CPU of every sandbox together** ([`CgroupRoot::sandbox_cpu_time`]): a
//! sandbox's cgroup is removed when it ends, so its own counter goes with
//! it; the counter of a cgroup above all of them keeps what they used:
//!
//! * v2: `cpu.stat` `usage_usec` of `thaw-<tag>` (it includes children that
//!   are gone);
//! * v1 with `cpuacct` mounted with `cpu`: `cpuacct.usage` of `thaw-<tag>` in
//!   that hierarchy (charged to every ancestor as the CPU is used);
//! * v1 with a `cpuacct` hierarchy of its own (as on the machines thaw is
//!   developed on): one cgroup `<mount>/<server's cgroup>/thaw-<tag>` that
//!   every sandbox's init joins as well ([`Cgroup::join_files`]); its
//!   `cpuacct.usage` is the sum of every sandbox, living or ended.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Errors of creating, filling or removing cgroups.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// Neither a usable v2 hierarchy nor the v1 controllers were found.
    #[error("no usable cgroup hierarchy: need cgroup v2 with the memory and pids controllers, or cgroup v1 memory, pids and cpu hierarchies")]
    NotAvailable,
    /// A file in the cgroup filesystem could not be read or written.
    #[error("cgroup file {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// Processes stayed in a cgroup that was being removed.
    #[error("cgroup {0} still has processes after they were killed")]
    Busy(PathBuf),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> CgroupError + '_ {
    move |source| CgroupError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn write_file(path: &Path, value: &str) -> Result<(), CgroupError> {
    fs::write(path, value).map_err(io_err(path))
}

fn read_file(path: &Path) -> Result<String, CgroupError> {
    fs::read_to_string(path).map_err(io_err(path))
}

/// Which cgroup version thaw drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupVersion {
    /// The unified hierarchy.
    V2,
    /// Separate controller hierarchies.
    V1,
}

/// The limits applied to one sandbox.
#[derive(Debug, Clone, Copy)]
pub struct CgroupLimits {
    /// Hard memory limit in bytes (memory and swap together).
    pub memory_bytes: u64,
    /// Most processes and threads at once.
    pub pids: u64,
    /// CPU weight, 1..=10000, 100 being the default share.
    pub cpu_weight: u64,
    /// CPU cap in thousandths of a core (`500`: half a core), or `None`:
    /// uncapped. Sets the CFS bandwidth quota: `cpu.cfs_quota_us` over
    /// `cpu.cfs_period_us` on v1, `cpu.max` on v2.
    pub cpu_millicores: Option<u64>,
}

/// The CFS period thaw uses, µs (the kernel's default).
pub const CPU_PERIOD_US: u64 = 100_000;

/// The CFS quota per [`CPU_PERIOD_US`] of a cap of `millicores` (at least
/// 1 ms, the kernel's minimum).
pub fn cpu_quota_us(millicores: u64) -> u64 {
    (millicores * CPU_PERIOD_US / 1000).max(1000)
}

/// CFS bandwidth counters of a cgroup (`cpu.stat`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuStat {
    /// Periods in which the cgroup had runnable tasks.
    pub nr_periods: u64,
    /// Periods in which it used its whole quota and was throttled.
    pub nr_throttled: u64,
}

/// The parent cgroup(s) of this installation's sandboxes.
#[derive(Debug, Clone)]
pub struct CgroupRoot {
    version: CgroupVersion,
    /// v2: one directory. v1: the memory, pids and cpu directories.
    parents: Vec<PathBuf>,
    /// Where the CPU time of every sandbox adds up, if anywhere.
    cpu_account: Option<CpuAccount>,
}

/// A cgroup whose CPU counter includes every sandbox's (see the module
/// docs).
#[derive(Debug, Clone)]
enum CpuAccount {
    /// v2: `cpu.stat` (`usage_usec`) of this directory.
    Stat(PathBuf),
    /// v1: `cpuacct.usage` (ns) of this directory; `join`: sandboxes are
    /// not below it, their init joins it explicitly.
    Usage { dir: PathBuf, join: bool },
}

/// Reads `/proc/self/cgroup` and returns the path of this process in the
/// hierarchy that has `controller` (v1) or in the unified one (`""`).
fn own_cgroup(controller: &str) -> Option<String> {
    let text = fs::read_to_string("/proc/self/cgroup").ok()?;
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, ctrls, path) = (parts.next()?, parts.next()?, parts.next()?);
        if controller.is_empty() {
            if ctrls.is_empty() {
                return Some(path.to_string());
            }
        } else if ctrls.split(',').any(|c| c == controller) {
            return Some(path.to_string());
        }
    }
    None
}

/// Finds the mount point of a v1 controller hierarchy, or of the v2 one
/// (`controller` = `None`).
fn mount_point(controller: Option<&str>) -> Option<PathBuf> {
    let text = fs::read_to_string("/proc/self/mountinfo").ok()?;
    for line in text.lines() {
        // mountinfo: id parent major:minor root mountpoint options ... - fstype source superopts
        let (left, right) = line.split_once(" - ")?;
        let mut right = right.split(' ');
        let fstype = right.next()?;
        let superopts = right.nth(1).unwrap_or("");
        let mountpoint = left.split(' ').nth(4)?;
        match controller {
            None if fstype == "cgroup2" => return Some(PathBuf::from(mountpoint)),
            Some(c) if fstype == "cgroup" && superopts.split(',').any(|o| o == c) => {
                return Some(PathBuf::from(mountpoint))
            }
            _ => {}
        }
    }
    None
}

fn join_rel(base: &Path, rel: &str) -> PathBuf {
    base.join(rel.trim_start_matches('/'))
}

impl CgroupRoot {
    /// Finds the hierarchy to use and creates the installation's parent
    /// cgroup(s), named `thaw-<tag>`.
    pub fn detect(tag: &str) -> Result<CgroupRoot, CgroupError> {
        let name = format!("thaw-{tag}");
        if let Some(root) = Self::detect_v2(&name)? {
            return Ok(root);
        }
        let mut parents = Vec::new();
        for controller in ["memory", "pids", "cpu"] {
            let mount = mount_point(Some(controller)).ok_or(CgroupError::NotAvailable)?;
            let own = own_cgroup(controller).unwrap_or_else(|| "/".into());
            let parent = join_rel(&mount, &own).join(&name);
            fs::create_dir_all(&parent).map_err(io_err(&parent))?;
            parents.push(parent);
        }
        let cpu_account = Self::v1_cpu_account(&name, &parents[2])?;
        Ok(CgroupRoot {
            version: CgroupVersion::V1,
            parents,
            cpu_account,
        })
    }

    /// Where v1 sandboxes' CPU adds up: the cpu parent when `cpuacct` is
    /// mounted with `cpu`, else a `thaw-<tag>` group of its own hierarchy;
    /// none without `cpuacct`.
    fn v1_cpu_account(name: &str, cpu_parent: &Path) -> Result<Option<CpuAccount>, CgroupError> {
        if cpu_parent.join("cpuacct.usage").exists() {
            return Ok(Some(CpuAccount::Usage {
                dir: cpu_parent.to_path_buf(),
                join: false,
            }));
        }
        let Some(mount) = mount_point(Some("cpuacct")) else {
            return Ok(None);
        };
        let own = own_cgroup("cpuacct").unwrap_or_else(|| "/".into());
        let dir = join_rel(&mount, &own).join(name);
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        Ok(Some(CpuAccount::Usage { dir, join: true }))
    }

    fn detect_v2(name: &str) -> Result<Option<CgroupRoot>, CgroupError> {
        let Some(mount) = mount_point(None) else {
            return Ok(None);
        };
        let controllers = fs::read_to_string(mount.join("cgroup.controllers")).unwrap_or_default();
        let has = |c: &str| controllers.split_whitespace().any(|x| x == c);
        if !(has("memory") && has("pids")) {
            return Ok(None);
        }
        let own = join_rel(&mount, &own_cgroup("").unwrap_or_else(|| "/".into()));
        // Move ourselves into a leaf so `own` may delegate controllers.
        let procs = read_file(&own.join("cgroup.procs"))?;
        if !procs.trim().is_empty() && own != mount {
            let leaf = own.join("server");
            fs::create_dir_all(&leaf).map_err(io_err(&leaf))?;
            for pid in procs.split_whitespace() {
                // Processes may have gone away meanwhile; ignore those.
                let _ = fs::write(leaf.join("cgroup.procs"), pid);
            }
        }
        let enable = |dir: &Path| -> Result<(), CgroupError> {
            let mut wanted = String::from("+memory +pids");
            if has("cpu") {
                wanted.push_str(" +cpu");
            }
            write_file(&dir.join("cgroup.subtree_control"), &wanted)
        };
        enable(&own)?;
        let parent = own.join(name);
        fs::create_dir_all(&parent).map_err(io_err(&parent))?;
        enable(&parent)?;
        Ok(Some(CgroupRoot {
            version: CgroupVersion::V2,
            cpu_account: Some(CpuAccount::Stat(parent.clone())),
            parents: vec![parent],
        }))
    }

    /// The cgroup version in use.
    pub fn version(&self) -> CgroupVersion {
        self.version
    }

    /// Creates the cgroup of one sandbox with its limits.
    pub fn create(&self, id: &str, limits: &CgroupLimits) -> Result<Cgroup, CgroupError> {
        let dirs: Vec<PathBuf> = self.parents.iter().map(|p| p.join(id)).collect();
        for dir in &dirs {
            match fs::create_dir(dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(io_err(dir)(e)),
            }
        }
        let cgroup = Cgroup {
            version: self.version,
            dirs,
            also_join: self.also_join(),
            baseline: Default::default(),
        };
        cgroup.apply(limits)?;
        Ok(cgroup)
    }

    /// `cgroup.procs` files a sandbox joins beside its own cgroups.
    fn also_join(&self) -> Vec<PathBuf> {
        match &self.cpu_account {
            Some(CpuAccount::Usage { dir, join: true }) => vec![dir.join("cgroup.procs")],
            _ => Vec::new(),
        }
    }

    /// The CPU time every sandbox of this installation has used, those that
    /// ended included (see the module docs), or `None` where the hierarchy
    /// keeps no such counter.
    pub fn sandbox_cpu_time(&self) -> Option<Duration> {
        match self.cpu_account.as_ref()? {
            CpuAccount::Stat(dir) => {
                let text = fs::read_to_string(dir.join("cpu.stat")).ok()?;
                parse_usage_usec(&text).map(Duration::from_micros)
            }
            CpuAccount::Usage { dir, .. } => {
                let text = fs::read_to_string(dir.join("cpuacct.usage")).ok()?;
                text.trim().parse().ok().map(Duration::from_nanos)
            }
        }
    }

    /// Kills and removes every sandbox cgroup below this installation's
    /// parent: what a crashed earlier run left behind. Returns how many were
    /// removed.
    pub fn remove_stale(&self) -> Result<usize, CgroupError> {
        let mut names = std::collections::BTreeSet::new();
        for parent in &self.parents {
            let entries = fs::read_dir(parent).map_err(io_err(parent))?;
            for entry in entries.flatten() {
                if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    names.insert(entry.file_name().to_string_lossy().into_owned());
                }
            }
        }
        for name in &names {
            let cgroup = Cgroup {
                version: self.version,
                dirs: self.parents.iter().map(|p| p.join(name)).collect(),
                also_join: Vec::new(),
                baseline: Default::default(),
            };
            cgroup.destroy()?;
        }
        Ok(names.len())
    }

    /// A group of no directory (unit tests of what holds one).
    #[cfg(test)]
    pub(crate) fn none_for_tests() -> Cgroup {
        Cgroup {
            version: CgroupVersion::V2,
            dirs: Vec::new(),
            also_join: Vec::new(),
            baseline: Default::default(),
        }
    }

    /// Removes the installation's groups on a clean stop: any sandbox group
    /// still there (as [`CgroupRoot::remove_stale`] does), then the
    /// `thaw-<tag>` parents themselves, so a stopped server leaves nothing in
    /// the hierarchies. The sandboxes' CPU counter goes with them: the next
    /// server starts it from zero.
    pub fn remove(&self) -> Result<(), CgroupError> {
        self.remove_stale()?;
        let mut dirs = self.parents.clone();
        if let Some(CpuAccount::Usage { dir, join: true }) = &self.cpu_account {
            dirs.push(dir.clone());
        }
        Cgroup {
            version: self.version,
            dirs,
            also_join: Vec::new(),
            baseline: Default::default(),
        }
        .destroy()
    }

    /// Names of the sandbox cgroups that exist now (for tests and metrics).
    pub fn children(&self) -> Vec<String> {
        let Some(parent) = self.parents.first() else {
            return Vec::new();
        };
        let mut out: Vec<String> = fs::read_dir(parent)
            .map(|rd| {
                rd.flatten()
                    .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        out.sort();
        out
    }
}

/// Reads `nr_periods` and `nr_throttled` from the text of `cpu.stat`.
pub fn parse_cpu_stat(text: &str) -> CpuStat {
    let mut stat = CpuStat::default();
    for line in text.lines() {
        let Some((key, value)) = line.split_once(' ') else {
            continue;
        };
        let value = value.trim().parse().unwrap_or(0);
        match key {
            "nr_periods" => stat.nr_periods = value,
            "nr_throttled" => stat.nr_throttled = value,
            _ => {}
        }
    }
    stat
}

/// `usage_usec` from the text of a v2 `cpu.stat`.
pub fn parse_usage_usec(text: &str) -> Option<u64> {
    text.lines()
        .filter_map(|l| l.split_once(' '))
        .find(|(k, _)| *k == "usage_usec")
        .and_then(|(_, v)| v.trim().parse().ok())
}

/// The cgroup of one sandbox. Removing it is explicit ([`Cgroup::destroy`]),
/// because it must wait for its processes to die.
#[derive(Debug, Clone)]
pub struct Cgroup {
    version: CgroupVersion,
    dirs: Vec<PathBuf>,
    /// Shared cgroups the sandbox joins too (CPU accounting on v1), never
    /// read for its processes nor removed with it.
    also_join: Vec<PathBuf>,
    /// Counters as they stood when the cgroup last changed hands (a
    /// recycled sandbox's: see [`Cgroup::rebase`]), shared by every clone.
    baseline: std::sync::Arc<Baseline>,
}

/// What a cgroup's counters read when its sandbox was recycled: what the
/// pool reports of the next copy is counted from there.
#[derive(Debug, Default)]
struct Baseline {
    oom_kills: std::sync::atomic::AtomicU64,
}

impl Cgroup {
    fn apply(&self, limits: &CgroupLimits) -> Result<(), CgroupError> {
        let weight = limits.cpu_weight.clamp(1, 10_000);
        match self.version {
            CgroupVersion::V2 => {
                let dir = &self.dirs[0];
                write_file(&dir.join("memory.max"), &limits.memory_bytes.to_string())?;
                // No swap: a function over its limit is OOM-killed, not slowed.
                let swap = dir.join("memory.swap.max");
                if swap.exists() {
                    write_file(&swap, "0")?;
                }
                write_file(&dir.join("pids.max"), &limits.pids.to_string())?;
                let cpu = dir.join("cpu.weight");
                if cpu.exists() {
                    write_file(&cpu, &weight.to_string())?;
                }
                if let Some(m) = limits.cpu_millicores {
                    // Without the cpu controller there is nothing to cap
                    // with: refuse rather than run uncapped.
                    write_file(
                        &dir.join("cpu.max"),
                        &format!("{} {CPU_PERIOD_US}", cpu_quota_us(m)),
                    )?;
                }
            }
            CgroupVersion::V1 => {
                let (mem, pids, cpu) = (&self.dirs[0], &self.dirs[1], &self.dirs[2]);
                write_file(
                    &mem.join("memory.limit_in_bytes"),
                    &limits.memory_bytes.to_string(),
                )?;
                let memsw = mem.join("memory.memsw.limit_in_bytes");
                if memsw.exists() {
                    write_file(&memsw, &limits.memory_bytes.to_string())?;
                }
                write_file(&pids.join("pids.max"), &limits.pids.to_string())?;
                // v1 shares: 1024 is the default, as weight 100 is in v2.
                let shares = (weight * 1024 / 100).max(2);
                write_file(&cpu.join("cpu.shares"), &shares.to_string())?;
                if let Some(m) = limits.cpu_millicores {
                    write_file(&cpu.join("cpu.cfs_period_us"), &CPU_PERIOD_US.to_string())?;
                    write_file(&cpu.join("cpu.cfs_quota_us"), &cpu_quota_us(m).to_string())?;
                }
            }
        }
        Ok(())
    }

    /// The `cgroup.procs` files of the sandbox's own cgroups (one per
    /// hierarchy).
    pub fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs.iter().map(|d| d.join("cgroup.procs")).collect()
    }

    /// The `cgroup.procs` files a sandbox's init writes its pid into: its
    /// own cgroups and the shared one that counts every sandbox's CPU where
    /// that is a cgroup of its own (see the module docs).
    pub fn join_files(&self) -> Vec<PathBuf> {
        let mut files = self.procs_files();
        files.extend(self.also_join.iter().cloned());
        files
    }

    /// Memory charged to the cgroup now, in bytes.
    pub fn memory_current(&self) -> Option<u64> {
        let file = match self.version {
            CgroupVersion::V2 => self.dirs[0].join("memory.current"),
            CgroupVersion::V1 => self.dirs[0].join("memory.usage_in_bytes"),
        };
        fs::read_to_string(file).ok()?.trim().parse().ok()
    }

    /// How many times the kernel's OOM killer killed a process of this
    /// cgroup since it was made or last recycled ([`Cgroup::rebase`]).
    pub fn oom_kills(&self) -> u64 {
        let base = self
            .baseline
            .oom_kills
            .load(std::sync::atomic::Ordering::Relaxed);
        self.oom_kills_total().saturating_sub(base)
    }

    /// The sandbox of this cgroup is recycled (its processes are gone, the
    /// next copy's are to come): its counters count from here. The OOM
    /// kill count is remembered; the peak memory (v1
    /// `memory.max_usage_in_bytes`, v2 `memory.peak`) is reset where the
    /// kernel allows it. CPU is not read per sandbox (the installation's
    /// counter sums every sandbox: see the module docs).
    pub fn rebase(&self) {
        self.baseline
            .oom_kills
            .store(self.oom_kills_total(), std::sync::atomic::Ordering::Relaxed);
        let peak = match self.version {
            CgroupVersion::V2 => self.dirs[0].join("memory.peak"),
            CgroupVersion::V1 => self.dirs[0].join("memory.max_usage_in_bytes"),
        };
        let _ = fs::write(peak, "0");
    }

    /// The OOM kill count since the cgroup was made.
    fn oom_kills_total(&self) -> u64 {
        let (file, key) = match self.version {
            CgroupVersion::V2 => (self.dirs[0].join("memory.events"), "oom_kill"),
            CgroupVersion::V1 => (self.dirs[0].join("memory.oom_control"), "oom_kill"),
        };
        let text = fs::read_to_string(file).unwrap_or_default();
        text.lines()
            .filter_map(|l| l.split_once(' '))
            .find(|(k, _)| *k == key)
            .and_then(|(_, v)| v.trim().parse().ok())
            .unwrap_or(0)
    }

    /// The CPU cap in force: `(quota µs, period µs)`, or `None` when
    /// uncapped (or the cpu controller is absent).
    pub fn cpu_quota(&self) -> Option<(u64, u64)> {
        match self.version {
            CgroupVersion::V2 => {
                let text = fs::read_to_string(self.dirs[0].join("cpu.max")).ok()?;
                let (quota, period) = text.trim().split_once(' ')?;
                Some((quota.parse().ok()?, period.parse().ok()?))
            }
            CgroupVersion::V1 => {
                let dir = &self.dirs[2];
                let read = |f: &str| fs::read_to_string(dir.join(f)).ok();
                let quota: i64 = read("cpu.cfs_quota_us")?.trim().parse().ok()?;
                let period: u64 = read("cpu.cfs_period_us")?.trim().parse().ok()?;
                (quota > 0).then_some((quota as u64, period))
            }
        }
    }

    /// The CFS bandwidth counters (`cpu.stat`), zero where absent.
    pub fn cpu_stat(&self) -> CpuStat {
        let dir = match self.version {
            CgroupVersion::V2 => &self.dirs[0],
            CgroupVersion::V1 => &self.dirs[2],
        };
        parse_cpu_stat(&fs::read_to_string(dir.join("cpu.stat")).unwrap_or_default())
    }

    /// Pids of the processes in the cgroup.
    ///
    /// Read from the first hierarchy only (v2: the only one; v1: memory):
    /// a sandbox's init joins that one first ([`Cgroup::join_files`] keeps
    /// the order of the hierarchies) and every process of the sandbox is
    /// forked after its init joined them all, so the first hierarchy holds
    /// every process any other one does. One read instead of one per
    /// hierarchy: this runs on every teardown and every measurement.
    pub fn pids(&self) -> Vec<i32> {
        let mut out = Vec::new();
        if let Some(file) = self.procs_files().first() {
            if let Ok(text) = fs::read_to_string(file) {
                out.extend(
                    text.split_whitespace()
                        .filter_map(|p| p.parse::<i32>().ok()),
                );
            }
        }
        out.sort_unstable();
        out.dedup();
        out
    }

    /// Sends SIGKILL to every process of the cgroup.
    pub fn kill_all(&self) {
        if self.version == CgroupVersion::V2 {
            let kill_file = self.dirs[0].join("cgroup.kill");
            if kill_file.exists() && fs::write(&kill_file, "1").is_ok() {
                return;
            }
        }
        for pid in self.pids() {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }

    /// Kills every process, waits (briefly, blocking) until the cgroup is
    /// empty, then removes its directories. Blocking: call from a blocking
    /// context in async code.
    pub fn destroy(&self) -> Result<(), CgroupError> {
        for attempt in 0..200 {
            self.kill_all();
            let mut busy = None;
            for dir in &self.dirs {
                match fs::remove_dir(dir) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) if e.raw_os_error() == Some(libc::EBUSY) => busy = Some(dir.clone()),
                    Err(e) => return Err(io_err(dir)(e)),
                }
            }
            match busy {
                None => return Ok(()),
                Some(dir) if attempt == 199 => return Err(CgroupError::Busy(dir)),
                Some(_) => thread::sleep(Duration::from_millis(5)),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_is_read_from_a_v2_cpu_stat() {
        let text = "usage_usec 1234567\nuser_usec 1000000\nsystem_usec 234567\n";
        assert_eq!(parse_usage_usec(text), Some(1_234_567));
        assert_eq!(parse_usage_usec("nr_periods 3\n"), None);
    }

    #[test]
    fn quota_follows_the_cap() {
        assert_eq!(cpu_quota_us(500), 50_000);
        assert_eq!(cpu_quota_us(2000), 200_000);
        assert_eq!(cpu_quota_us(1), 1000, "the kernel's minimum");
    }

    #[test]
    fn cpu_stat_is_read_from_either_version() {
        let v1 = "nr_periods 12\nnr_throttled 7\nthrottled_time 123\n";
        assert_eq!(
            parse_cpu_stat(v1),
            CpuStat {
                nr_periods: 12,
                nr_throttled: 7
            }
        );
        let v2 = "usage_usec 5\nuser_usec 3\nsystem_usec 2\nnr_periods 4\nnr_throttled 1\nthrottled_usec 9\n";
        assert_eq!(
            parse_cpu_stat(v2),
            CpuStat {
                nr_periods: 4,
                nr_throttled: 1
            }
        );
    }
}
