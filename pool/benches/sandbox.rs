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
//!   the mount point).
//!
//! `cargo bench -p pool --bench sandbox` (needs root).

#[path = "../tests/restore_support/mod.rs"]
mod restore_support;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::sched::{setns, unshare, CloneFlags};
use pool::cgroup::{CgroupLimits, CgroupRoot};
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
        println!(
            "  {:<34} median {:>8.3} ms   min {:>8.3} ms   (n = {})",
            s.name,
            median(samples).as_secs_f64() * 1e3,
            min.as_secs_f64() * 1e3,
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

    let names = [
        "cgroup create",
        "cgroup placement (join)",
        "cgroup remove (empty)",
        "mount namespace (unshare)",
        "network namespace (unshare)",
        "network namespace release (setns)",
        "pid + ipc + uts namespaces",
        "launch: total (to function exec)",
        "launch: cgroup phase",
        "launch: network phase",
        "launch: init phase",
        "  init exec'd (spawn -> spec read)",
        "  cgroup placement (join)",
        "  namespaces (unshare)",
        "  pid 1 forked",
        "  root mounts (build_root)",
        "  host name + loopback",
        "  function fork + exec, heard",
        "teardown (Sandbox::destroy)",
    ];
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

        // A whole sandbox, then its teardown.
        let t = Instant::now();
        let sandbox = rt
            .block_on(Sandbox::launch(&config, &spec))
            .expect("launch");
        let exec_heard = monotonic_ns();
        add(7, t.elapsed());
        let p = sandbox.launch_phases();
        add(8, p.cgroup);
        add(9, p.network);
        add(10, p.init);
        // The init phase began p.init before the launcher heard of the exec.
        let spawned = exec_heard - p.init.as_nanos() as i128;
        let at = points(&phases_dir.join(&sandbox.id));
        let order = ["init", "joined", "unshared", "pid1", "root", "ready"];
        if order.iter().all(|k| at.contains_key(*k)) {
            let mut prev = spawned;
            for (i, k) in order.iter().enumerate() {
                add(11 + i, Duration::from_nanos((at[*k] - prev).max(0) as u64));
                prev = at[*k];
            }
            add(17, Duration::from_nanos((exec_heard - prev).max(0) as u64));
        }
        let t = Instant::now();
        rt.block_on(sandbox.destroy()).expect("destroy");
        add(18, t.elapsed());
    }
    println!("== sandbox creation and teardown steps (median of {ROUNDS} rounds)");
    print(&steps);
}
