//! Sandbox benchmark: making and tearing down a sandbox, step by step
//! (issue 16, goal 3: "making a sandbox should cost about a millisecond:
//! measure each step"). Prints the median of each step over [`ROUNDS`]
//! rounds:
//!
//! * **cgroup create** / **cgroup remove**: `CgroupRoot::create` (the
//!   directories in every hierarchy and the limits written) and
//!   `Cgroup::destroy` of the empty cgroups;
//! * **cgroup placement**: writing a process's pid into every
//!   `cgroup.procs` file the sandbox's init joins (`Cgroup::join_files`);
//! * **mount namespace**, **network namespace** (loopback only), **pid +
//!   ipc + uts namespaces**: `unshare` of each, alone, on a thread (the
//!   mount namespace copies this process's mount tree, as the init's does
//!   the server's); the network namespace's **release** is the `setns`
//!   back, which drops the last reference (the kernel's cleanup then runs in
//!   the background and is not in the figure);
//! * **launch** of a whole sandbox (`Sandbox::launch` of `/bin/sleep`) and
//!   its phases as the launcher measures them (`LaunchPhases`: cgroup,
//!   network, init), the init's part split by its own timing points
//!   (`THAW_SANDBOX_PHASES_DIR`, see `pool::sandbox::PHASES_DIR_ENV`): init
//!   exec'd (spawn → its spec read), cgroup placement (joining), namespaces
//!   (`unshare` of mount, pid, ipc, uts, network), pid 1 forked, root
//!   mounts (the mount namespace's root assembled), host name + loopback,
//!   and the function's fork + exec until the launcher hears of it;
//! * **teardown**: `Sandbox::destroy` (kill, wait, remove the cgroups and
//!   the mount point);
//! * each launch and teardown twice per round: with the sandbox's outer
//!   process **forked by the zygote** (the default, see
//!   `pool::sandbox::zygote`) and **spawned** (fork of this process, exec
//!   of the init binary: `THAW_SANDBOX_ZYGOTE=0`), and the **CPU per
//!   sandbox** of each (this process's threads + the zygote + every
//!   sandbox's cgroup, from launch to the end of the teardown; the kernel's
//!   background work, such as a network namespace's cleanup, is not in it).
//!   CPU rows print their mean too: the zygote's counter moves in ticks.
//! * **stub sandbox: launch + teardown** against **recycle** (issue 16:
//!   a torn-down copy's sandbox made the next spare, see
//!   `pool::sandbox::recycle`): a restore stub's sandbox launched by the
//!   zygote and destroyed, against one kept stub sandbox recycled
//!   (`Sandbox::recycle`: pid 1 kills the stub, resets `/tmp`, the IPC
//!   namespace and the host name, checks the mount table, forks a new
//!   stub; the server checks the network namespace and rebases the
//!   cgroup), each with its wall time and CPU (as above); and the recycle
//!   with pid 1's old bookkeeping (`THAW_RECYCLE_LEAN=0`: the mount table
//!   read twice, a zeroed receive buffer per message) in a second kept
//!   sandbox, the two ways alternated round by round.
//! * **seccomp policy install**: the CPU time (`CLOCK_THREAD_CPUTIME_ID`)
//!   of the `seccomp` call that installs the function policy
//!   (`pool::sandbox::seccomp::install`, made in every function and every
//!   restored copy) in a forked child, against the same calls denied by a
//!   linear list of comparisons (the policy's layout before it searched),
//!   alternately: the kernel emulates the program for every system call
//!   number when it installs it, so its cost follows the path length.
//!
//! `cargo bench -p pool --bench sandbox` (needs root).

#[path = "../tests/restore_support/mod.rs"]
mod restore_support;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::sched::{setns, unshare, CloneFlags};
use pool::cgroup::{CgroupLimits, CgroupRoot};
use pool::sandbox::zygote::ZYGOTE_ENV;
use pool::sandbox::{LaunchSpec, Network, Sandbox, SandboxConfig, PHASES_DIR_ENV};

const ROUNDS: usize = 40;

const LIMITS: CgroupLimits = CgroupLimits {
    memory_bytes: 128 << 20,
    pids: 64,
    cpu_weight: 100,
    cpu_millicores: None,
};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// One named step and its samples.
struct Step {
    name: &'static str,
    samples: Vec<Duration>,
}

fn print(steps: &[Step]) {
    for s in steps {
        if s.samples.is_empty() {
            continue;
        }
        let samples = s.samples.clone();
        let min = *samples.iter().min().unwrap();
        let mean = samples.iter().sum::<Duration>() / samples.len() as u32;
        println!(
            "  {:<48} median {:>8.3} ms   min {:>8.3} ms   mean {:>8.3} ms   (n = {})",
            s.name,
            median(samples).as_secs_f64() * 1e3,
            min.as_secs_f64() * 1e3,
            mean.as_secs_f64() * 1e3,
            s.samples.len()
        );
    }
}

/// Times `unshare(flags)` on a thread of its own, and `release` (a `setns`
/// back to this process's namespace of `back`, if given) after it.
fn unshare_on_thread(
    flags: CloneFlags,
    back: Option<&'static str>,
) -> (Duration, Option<Duration>) {
    std::thread::spawn(move || {
        let home = back.map(|ns| {
            std::fs::File::open(format!("/proc/thread-self/ns/{ns}")).expect("own namespace")
        });
        let t0 = Instant::now();
        unshare(flags).expect("unshare");
        let made = t0.elapsed();
        let released = home.map(|f| {
            let t1 = Instant::now();
            setns(&f, CloneFlags::empty()).expect("setns back");
            t1.elapsed()
        });
        (made, released)
    })
    .join()
    .expect("namespace thread")
}

/// `CLOCK_MONOTONIC` now, ns (the clock of the init's timing points).
fn monotonic_ns() -> i128 {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).expect("clock");
    t.tv_sec() as i128 * 1_000_000_000 + t.tv_nsec() as i128
}

/// The init's timing points of one sandbox, by label.
fn points(file: &std::path::Path) -> std::collections::HashMap<String, i128> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (label, ns) = l.split_once(' ')?;
            Some((label.to_string(), ns.parse().ok()?))
        })
        .collect()
}

/// How the sandboxes of a round are started.
#[derive(Clone, Copy)]
enum Mode {
    /// Forked by the zygote (the default).
    Zygote,
    /// Spawned: fork of this process, exec of the init binary.
    Spawned,
}

fn set_mode(mode: Mode) {
    // Read by Sandbox::launch at every launch; this bench is the only
    // thread that launches.
    match mode {
        Mode::Zygote => std::env::remove_var(ZYGOTE_ENV),
        Mode::Spawned => std::env::set_var(ZYGOTE_ENV, "0"),
    }
}

/// `utime + stime` of a process or thread (`/proc/.../stat`).
fn stat_cpu(path: &str) -> Duration {
    let Ok(stat) = std::fs::read_to_string(path) else {
        return Duration::ZERO;
    };
    let Some(end) = stat.rfind(')') else {
        return Duration::ZERO;
    };
    let f: Vec<u64> = stat[end + 1..]
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|v| v.parse().ok())
        .collect();
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    Duration::from_secs_f64(f.iter().sum::<u64>() as f64 / hz)
}

/// CPU used so far by this process (every thread), its zygote and every
/// sandbox (their cgroups' counter). Ticks: only a sum over many rounds
/// means much; the median of a step is the typical one.
fn cpu_now(cgroups: &CgroupRoot) -> Duration {
    // SAFETY: getrusage writes into `usage`, which lives for the call.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    let me = tv(usage.ru_utime) + tv(usage.ru_stime);
    let zygote: Duration = zygotes()
        .iter()
        .map(|pid| stat_cpu(&format!("/proc/{pid}/stat")))
        .sum();
    me + zygote + cgroups.sandbox_cpu_time().unwrap_or_default()
}

/// The pids of this process's zygotes, found once (a scan of `/proc` on
/// every reading would be counted in this process's CPU, hence in the CPU
/// per sandbox).
fn zygotes() -> Vec<u32> {
    static FOUND: std::sync::Mutex<Vec<u32>> = std::sync::Mutex::new(Vec::new());
    let mut found = FOUND.lock().unwrap();
    let alive = |pid: &u32| std::path::Path::new(&format!("/proc/{pid}")).exists();
    if !found.is_empty() && found.iter().all(alive) {
        return found.clone();
    }
    let me_pid = std::process::id().to_string();
    *found = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            comm.trim() == "thaw-zygote"
                && stat
                    .rsplit(')')
                    .next()
                    .and_then(|r| r.split_whitespace().nth(1))
                    == Some(me_pid.as_str())
        })
        .collect();
    found.clone()
}

fn main() {
    if !nix::unistd::geteuid().is_root() {
        skip!("sandbox bench: sandboxes need root (namespaces, mounts, cgroups)");
    }
    let dir = tempfile::Builder::new()
        .prefix("thaw-bench-sbx")
        .tempdir_in("/var/tmp")
        .unwrap();
    let phases_dir = dir.path().join("phases");
    std::fs::create_dir_all(&phases_dir).unwrap();
    // Read by Sandbox::launch: every init of this process reports its points.
    std::env::set_var(PHASES_DIR_ENV, &phases_dir);
    let code = dir.path().join("code");
    std::fs::create_dir_all(&code).unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let cgroups = CgroupRoot::detect("bench-sandbox").expect("cgroups");
    cgroups.remove_stale().expect("stale cgroups");
    let config = SandboxConfig {
        init_exe: PathBuf::from(env!("CARGO_BIN_EXE_thaw-sandbox-init")),
        init_args: vec![],
        run_dir: data.join("run"),
        mask: vec![data.clone()],
        uid: 65534,
        gid: 65534,
        cgroups: cgroups.clone(),
        network: None,
    };
    let spec = LaunchSpec {
        code_dir: code,
        runtime_dir: None,
        binds: pool::sandbox::binds::PYTHON3.paths(),
        argv: vec!["/bin/sleep".into(), "600".into()],
        env: vec![("PATH".into(), "/usr/bin:/bin".into())],
        cwd: "/var/task".into(),
        limits: LIMITS,
        tmp_mb: 64,
        network: Network::None,
        network_allow: Vec::new(),
        no_aslr: false,
        stub: false,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();

    let mut names = vec![
        "cgroup create",
        "cgroup placement (join)",
        "cgroup remove (empty)",
        "mount namespace (unshare)",
        "network namespace (unshare)",
        "network namespace release (setns)",
        "pid + ipc + uts namespaces",
    ];
    for mode in ["zygote", "spawned init"] {
        let leak = |s: String| -> &'static str { Box::leak(s.into_boxed_str()) };
        names.push(leak(format!("launch ({mode}): total (to function exec)")));
        names.push(leak(format!("launch ({mode}): cgroup phase")));
        names.push(leak(format!("launch ({mode}): network phase")));
        names.push(leak(format!("launch ({mode}): init phase")));
        names.push(leak(format!(
            "  {}",
            if mode == "zygote" {
                "outer forked (request -> spec read)"
            } else {
                "init exec'd (spawn -> spec read)"
            }
        )));
        names.push("  cgroup placement (join)");
        names.push("  namespaces (unshare)");
        names.push("  pid 1 forked");
        names.push("  root mounts (build_root)");
        names.push("  host name + loopback");
        names.push("  function fork + exec, heard");
        names.push(leak(format!("teardown ({mode}, Sandbox::destroy)")));
        names.push(leak(format!("CPU per sandbox ({mode}: launch + teardown)")));
    }
    names.push("stub sandbox: launch + teardown (wall)");
    names.push("stub sandbox: CPU per launch + teardown");
    names.push("stub sandbox: recycle (wall)");
    names.push("stub sandbox: CPU per recycle");
    names.push("stub sandbox: recycle, old way (wall)");
    names.push("stub sandbox: CPU per recycle, old way");
    let stub_base = names.len() - 6;
    let mut stub_spec = spec.clone();
    stub_spec.stub = true;
    let mut kept = rt
        .block_on(Sandbox::launch_stub(&config, &stub_spec, &[], &[]))
        .expect("launch the stub sandbox to recycle");
    assert!(kept.is_recyclable(), "THAW_SANDBOX_RECYCLE=0?");
    // The same, recycled with pid 1's old bookkeeping (THAW_RECYCLE_LEAN=0):
    // a sandbox of its own, as pid 1 keeps its template between recycles.
    let mut kept_old = rt
        .block_on(Sandbox::launch_stub(&config, &stub_spec, &[], &[]))
        .expect("launch the stub sandbox to recycle the old way");
    let mut steps: Vec<Step> = names
        .iter()
        .map(|&name| Step {
            name,
            samples: Vec::new(),
        })
        .collect();
    let mut add = |i: usize, d: Duration| steps[i].samples.push(d);

    for round in 0..ROUNDS {
        // The cgroup on its own: create, place a process, remove.
        let id = format!("bench-{round}");
        let t = Instant::now();
        let cg = cgroups.create(&id, &LIMITS).expect("create cgroup");
        add(0, t.elapsed());
        let mut child = std::process::Command::new("/bin/sleep")
            .arg("600")
            .spawn()
            .expect("sleep");
        let pid = child.id().to_string();
        let t = Instant::now();
        for file in cg.join_files() {
            std::fs::write(&file, &pid).expect("join cgroup");
        }
        add(1, t.elapsed());
        child.kill().unwrap();
        child.wait().unwrap();
        let t = Instant::now();
        cg.destroy().expect("remove cgroup");
        add(2, t.elapsed());

        // The namespaces, each alone.
        let (mnt, _) = unshare_on_thread(CloneFlags::CLONE_NEWNS, None);
        add(3, mnt);
        let (net, released) = unshare_on_thread(CloneFlags::CLONE_NEWNET, Some("net"));
        add(4, net);
        add(5, released.expect("released"));
        let (other, _) = unshare_on_thread(
            CloneFlags::CLONE_NEWPID | CloneFlags::CLONE_NEWIPC | CloneFlags::CLONE_NEWUTS,
            None,
        );
        add(6, other);

        // A whole sandbox, then its teardown: forked by the zygote, then
        // spawned (fork of this process and exec of the init), alternately.
        for (mode, base) in [(Mode::Zygote, 7), (Mode::Spawned, 20)] {
            set_mode(mode);
            let cpu0 = cpu_now(&cgroups);
            let t = Instant::now();
            let sandbox = rt
                .block_on(Sandbox::launch(&config, &spec))
                .expect("launch");
            let exec_heard = monotonic_ns();
            add(base, t.elapsed());
            let p = sandbox.launch_phases();
            add(base + 1, p.cgroup);
            add(base + 2, p.network);
            add(base + 3, p.init);
            // The init phase began p.init before the launcher heard of the exec.
            let spawned = exec_heard - p.init.as_nanos() as i128;
            let at = points(&phases_dir.join(&sandbox.id));
            let order = ["init", "joined", "unshared", "pid1", "root", "ready"];
            if order.iter().all(|k| at.contains_key(*k)) {
                let mut prev = spawned;
                for (i, k) in order.iter().enumerate() {
                    add(
                        base + 4 + i,
                        Duration::from_nanos((at[*k] - prev).max(0) as u64),
                    );
                    prev = at[*k];
                }
                add(
                    base + 10,
                    Duration::from_nanos((exec_heard - prev).max(0) as u64),
                );
            }
            let t = Instant::now();
            rt.block_on(sandbox.destroy()).expect("destroy");
            add(base + 11, t.elapsed());
            add(base + 12, cpu_now(&cgroups).saturating_sub(cpu0));
        }
        set_mode(Mode::Zygote);

        // A stub sandbox launched and destroyed, against one recycled.
        let cpu0 = cpu_now(&cgroups);
        let t = Instant::now();
        let sandbox = rt
            .block_on(Sandbox::launch_stub(&config, &stub_spec, &[], &[]))
            .expect("launch stub");
        rt.block_on(sandbox.destroy()).expect("destroy stub");
        add(stub_base, t.elapsed());
        add(stub_base + 1, cpu_now(&cgroups).saturating_sub(cpu0));
        // The two ways of recycling alternately, the order flipped every
        // round (`Sandbox::recycle` reads THAW_RECYCLE_LEAN at each order).
        let ways = if round % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        for old_way in ways {
            let (sandbox, at) = if old_way {
                std::env::set_var(pool::sandbox::recycle::LEAN_ENV, "0");
                (&mut kept_old, stub_base + 4)
            } else {
                std::env::remove_var(pool::sandbox::recycle::LEAN_ENV);
                (&mut kept, stub_base + 2)
            };
            let cpu0 = cpu_now(&cgroups);
            let t = Instant::now();
            rt.block_on(sandbox.recycle(&[], &[])).expect("recycle");
            add(at, t.elapsed());
            add(at + 1, cpu_now(&cgroups).saturating_sub(cpu0));
        }
        std::env::remove_var(pool::sandbox::recycle::LEAN_ENV);
    }
    rt.block_on(kept.destroy())
        .expect("destroy the recycled sandbox");
    rt.block_on(kept_old.destroy())
        .expect("destroy the sandbox recycled the old way");
    set_mode(Mode::Zygote);
    println!("== sandbox creation and teardown steps (median of {ROUNDS} rounds)");
    print(&steps);

    let policy = pool::sandbox::seccomp::program();
    let linear = linear_policy();
    let mut installs = [
        Step {
            name: "seccomp policy install (binary search, the policy)",
            samples: Vec::new(),
        },
        Step {
            name: "seccomp policy install (linear list, as before)",
            samples: Vec::new(),
        },
    ];
    for _ in 0..SECCOMP_ROUNDS {
        installs[0].samples.push(install_cpu(policy));
        installs[1].samples.push(install_cpu(&linear));
    }
    println!(
        "== seccomp policy install, CPU of the call (median of {SECCOMP_ROUNDS}; policy {} instructions, linear {})",
        policy.len(),
        linear.len()
    );
    print(&installs);
}

const SECCOMP_ROUNDS: usize = 200;

/// The policy's calls as a linear list of comparisons (its layout before
/// the binary search), for comparison: same header, one `JEQ` per call.
fn linear_policy() -> Vec<libc::sock_filter> {
    let op = |code: u16, jt: u8, jf: u8, k: u32| libc::sock_filter { code, jt, jf, k };
    let numbers: Vec<u32> = pool::sandbox::seccomp::denied_numbers()
        .map(|(nr, _)| nr as u32)
        .chain([libc::SYS_clone as u32, libc::SYS_clone3 as u32])
        .collect();
    let n = numbers.len();
    let mut p = vec![
        op(0x20, 0, 0, 4),
        // Not x86_64: to the last return (kill).
        op(0x15, 0, (n + 4) as u8, 0xc000_003e),
        op(0x20, 0, 0, 0),
        op(0x35, (n + 1) as u8, 0, 0x4000_0000),
    ];
    for (i, nr) in numbers.iter().enumerate() {
        // Found: to the EPERM return, past the rest and the allow.
        p.push(op(0x15, (n - i) as u8, 0, *nr));
    }
    p.push(op(0x06, 0, 0, 0x7fff_0000));
    p.push(op(0x06, 0, 0, 0x0005_0000 | libc::EPERM as u32));
    p.push(op(0x06, 0, 0, 0x8000_0000));
    p
}

/// CPU time of installing `program` with `seccomp` in a forked child
/// (under `no_new_privs`).
fn install_cpu(program: &[libc::sock_filter]) -> Duration {
    let fprog = libc::sock_fprog {
        len: program.len() as u16,
        filter: program.as_ptr() as *mut libc::sock_filter,
    };
    let mut pipe = [0i32; 2];
    // SAFETY: pipe fills the two-element array.
    assert_eq!(unsafe { libc::pipe(pipe.as_mut_ptr()) }, 0);
    // SAFETY: the child makes only prctl, clock_gettime, seccomp, write
    // and _exit calls (async-signal-safe).
    match unsafe { libc::fork() } {
        // SAFETY: as above; `fprog` and `program` are in the child's copy of
        // this process's memory.
        0 => unsafe {
            let cpu = || {
                let mut t: libc::timespec = std::mem::zeroed();
                libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t);
                t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
            };
            libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
            let t0 = cpu();
            let rc = libc::syscall(
                libc::SYS_seccomp,
                1 as libc::c_uint,
                0 as libc::c_uint,
                &fprog as *const libc::sock_fprog,
            );
            let ns: u64 = if rc == 0 { cpu() - t0 } else { u64::MAX };
            libc::write(pipe[1], (&ns as *const u64).cast(), 8);
            libc::_exit(0);
        },
        // SAFETY: reads 8 bytes into `ns`, reaps the child, closes the pipe
        // this process made.
        pid => unsafe {
            let mut ns = 0u64;
            libc::read(pipe[0], (&mut ns as *mut u64).cast(), 8);
            libc::waitpid(pid, std::ptr::null_mut(), 0);
            libc::close(pipe[0]);
            libc::close(pipe[1]);
            assert_ne!(ns, u64::MAX, "seccomp refused the program");
            Duration::from_nanos(ns)
        },
    }
}
