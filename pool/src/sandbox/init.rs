//! The sandbox init: the code that runs inside a new sandbox before the
//! function. It runs in a freshly executed, single-threaded process, so it may
//! fork freely.

use std::ffi::CString;
use std::fs;
use std::os::fd::{BorrowedFd, RawFd};
use std::process;

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, FdFlag};
use nix::sched::{unshare, CloneFlags};
use nix::sys::prctl;
use nix::sys::resource::{setrlimit, Resource};
use nix::sys::signal::Signal;
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{
    chdir, close, execve, fork, getpid, getppid, sethostname, setresgid, setresuid, setsid,
    ForkResult, Gid, Pid, Uid,
};

use super::{mounts, net, SandboxSpec, KEEPER_FD, NETNS_FD, SPEC_ENV, STATUS_FD};

/// Exit status of the outer process when the sandbox could not be set up.
pub const SETUP_FAILED: i32 = 125;

/// Entry point of the hidden `sandbox-init` subcommand. Never returns.
pub fn init_main() -> ! {
    if std::env::var_os(super::zygote::ZYGOTE_ENV).is_some_and(|v| v == "1") {
        super::zygote::zygote_main();
    }
    let code = match run_outer() {
        Ok(code) => code,
        Err(message) => {
            report(&message);
            SETUP_FAILED
        }
    };
    process::exit(code)
}

/// Writes a setup failure to the status fd (best effort).
fn report(message: &str) {
    // SAFETY: STATUS_FD was placed by the launcher; if it is not open the
    // write fails with EBADF, which we ignore.
    let fd = unsafe { BorrowedFd::borrow_raw(STATUS_FD) };
    let _ = nix::unistd::write(fd, message.as_bytes());
}

/// Appends a timing point to the spec's phases file, if it has one (see
/// [`super::PHASES_DIR_ENV`]); best effort. The file is opened at the first
/// point, on the host, and stays open (close-on-exec) for pid 1, whose root
/// is the sandbox's once it is built.
fn mark(spec: &SandboxSpec, label: &str) {
    static FILE: std::sync::OnceLock<Option<fs::File>> = std::sync::OnceLock::new();
    let file = FILE.get_or_init(|| {
        let path = spec.phases_file.as_ref()?;
        fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .ok()
    });
    let Some(mut file) = file.as_ref() else {
        return;
    };
    let Ok(now) = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC) else {
        return;
    };
    let ns = now.tv_sec() as i128 * 1_000_000_000 + now.tv_nsec() as i128;
    let _ = std::io::Write::write_all(&mut file, format!("{label} {ns}\n").as_bytes());
}

fn ctx<E: std::fmt::Display>(what: &str) -> impl FnOnce(E) -> String + '_ {
    move |e| format!("{what}: {e}")
}

fn run_outer() -> Result<i32, String> {
    let parent = getppid();
    prctl::set_pdeathsig(Signal::SIGKILL).map_err(ctx("set parent-death signal"))?;
    if getppid() != parent {
        return Err("the server went away during start".into());
    }
    set_cloexec(STATUS_FD);
    let spec_json = std::env::var(SPEC_ENV).map_err(ctx("read sandbox spec"))?;
    let spec: SandboxSpec = serde_json::from_str(&spec_json).map_err(ctx("parse sandbox spec"))?;
    mark(&spec, "init");
    outer(&spec)
}

/// The outer process forked by the zygote ([`super::zygote`]), its
/// descriptors in place: the same as an exec'd init from its spec on, with
/// the server (`server`, its parent through `CLONE_PARENT`) checked once
/// the parent-death signal is set. Never returns.
pub(super) fn outer_from_zygote(spec: &SandboxSpec, server: i32) -> ! {
    let result = prctl::set_pdeathsig(Signal::SIGKILL)
        .map_err(ctx("set parent-death signal"))
        .and_then(|()| {
            if getppid().as_raw() != server {
                return Err("the server went away during start".to_string());
            }
            set_cloexec(STATUS_FD);
            mark(spec, "init");
            outer(spec)
        });
    let code = match result {
        Ok(code) => code,
        Err(message) => {
            report(&message);
            SETUP_FAILED
        }
    };
    process::exit(code)
}

/// The outer process from its spec on: joins the cgroups, makes the
/// namespaces, forks pid 1 and waits for it.
fn outer(spec: &SandboxSpec) -> Result<i32, String> {
    let me = getpid().to_string();
    for procs in &spec.cgroup_procs {
        fs::write(procs, &me).map_err(|e| format!("join cgroup {}: {e}", procs.display()))?;
    }
    mark(spec, "joined");
    let flags = CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWPID
        | CloneFlags::CLONE_NEWIPC
        | CloneFlags::CLONE_NEWUTS
        | net::inside::namespace_flags(spec)?;
    unshare(flags).map_err(ctx("unshare namespaces"))?;
    if let Some(offsets) = &spec.time_offsets {
        // Before pid 1 is forked: it is the first to enter.
        super::timens::unshare_with(offsets)?;
    }
    mark(spec, "unshared");
    // pid 1's parent-death signal only covers deaths after it is set: this
    // pipe, whose write end only this process keeps, tells pid 1 whether we
    // died before (then every writer is gone and the read end hangs up).
    let (alive_r, alive_w) = nix::unistd::pipe().map_err(ctx("pipe"))?;
    // SAFETY: this process is single-threaded (freshly executed init).
    match unsafe { fork() }.map_err(ctx("fork pid 1"))? {
        ForkResult::Child => {
            drop(alive_w);
            let code = match set_pdeathsig_checked(alive_r).and_then(|()| run_pid1(spec)) {
                Ok(code) => code,
                Err(message) => {
                    report(&message);
                    SETUP_FAILED
                }
            };
            process::exit(code)
        }
        ForkResult::Parent { child } => {
            drop(alive_r);
            // Kept open (never written) until this process ends.
            std::mem::forget(alive_w);
            close_quietly(STATUS_FD);
            close_quietly(KEEPER_FD);
            close_quietly(3);
            close_quietly(4);
            close_stub_fds(spec);
            if spec.recyclable {
                // The log pipes are the copy's; a recycled sandbox's next
                // copy gets new ones, and the old ones must reach their end.
                if let Ok(null) = fs::OpenOptions::new().write(true).open("/dev/null") {
                    use std::os::fd::AsRawFd;
                    // SAFETY: dup2 onto numbers this process owns.
                    unsafe {
                        libc::dup2(null.as_raw_fd(), 1);
                        libc::dup2(null.as_raw_fd(), 2);
                    }
                }
            }
            Ok(wait_for(child))
        }
    }
}

/// Sets pid 1's parent-death signal, then makes sure the parent did not die
/// before it was set (`alive` hangs up once the parent is gone).
fn set_pdeathsig_checked(alive: std::os::fd::OwnedFd) -> Result<(), String> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    prctl::set_pdeathsig(Signal::SIGKILL).map_err(ctx("set parent-death signal"))?;
    let mut fds = [PollFd::new(
        std::os::fd::AsFd::as_fd(&alive),
        PollFlags::POLLIN,
    )];
    let ready = poll(&mut fds, PollTimeout::ZERO).map_err(ctx("poll the parent pipe"))?;
    let gone = ready > 0
        && fds[0]
            .revents()
            .is_some_and(|r| r.intersects(PollFlags::POLLHUP | PollFlags::POLLIN));
    if gone {
        return Err("the sandbox's outer process went away during start".into());
    }
    Ok(())
}

/// pid 1 of the sandbox: builds the filesystem, starts the function, reaps.
fn run_pid1(spec: &SandboxSpec) -> Result<i32, String> {
    mark(spec, "pid1");
    mounts::build_root(spec)?;
    mark(spec, "root");
    sethostname(&spec.hostname).map_err(ctx("set host name"))?;
    if spec.netns_fd.is_none() {
        // A namespace of our own (the server configured an outbound one).
        mounts::loopback_up().map_err(ctx("bring up loopback"))?;
    }
    // The OOM killer should pick the function, never its init.
    let _ = fs::write("/proc/self/oom_score_adj", "-1000");
    mark(spec, "ready");
    // SAFETY: pid 1 is single-threaded.
    match unsafe { fork() }.map_err(ctx("fork function"))? {
        ForkResult::Child if spec.stub => run_stub(spec),
        ForkResult::Child => {
            let err = exec_function(spec);
            report(&err);
            process::exit(127)
        }
        ForkResult::Parent { child } => {
            close_quietly(STATUS_FD);
            close_quietly(3);
            close_quietly(4);
            close_stub_fds(spec);
            if spec.stub {
                kill_copy_before_exit_on_parent_death();
                if spec.recyclable {
                    // pid 1 survives the copy ([`super::recycle`]).
                    return Ok(super::recycle::inside::serve(spec, child));
                }
                hold_sent_descriptor(child);
            }
            close_quietly(KEEPER_FD);
            Ok(wait_for(child))
        }
    }
}

/// The descriptors placed for a restore stub are the stub's alone: the
/// outer process and pid 1 close their copies. A pipe's or socket pair's
/// end left open there would keep the copy from ever seeing end-of-file
/// (a helper process that dies would leave its parent blocked on the pipe).
fn close_stub_fds(spec: &SandboxSpec) {
    for &fd in &spec.keep_fds {
        if fd >= 5 && fd != STATUS_FD && fd != KEEPER_FD && fd != NETNS_FD {
            close_quietly(fd);
        }
    }
}

/// Stub sandboxes: when the outer process dies (the server died), pid 1
/// kills every other process of the namespace and reaps them before it
/// exits itself. A plain `SIGKILL` of pid 1 would close its descriptors
/// (among them a `uffd` copy's userfaultfd, see [`hold_sent_descriptor`])
/// before the kernel kills the namespace, leaving a moment in which the
/// released userfaultfd turns the copy's missing pages into zeros. With
/// the copy dead first, its memory is gone before the userfaultfd is.
fn kill_copy_before_exit_on_parent_death() {
    extern "C" fn on_parent_death(_: libc::c_int) {
        // SAFETY: kill, waitpid and _exit are async-signal-safe; pid 1 may
        // signal every process of its namespace (-1: all but itself).
        unsafe {
            libc::kill(-1, libc::SIGKILL);
            loop {
                let r = libc::waitpid(-1, std::ptr::null_mut(), 0);
                if r < 0 && *libc::__errno_location() != libc::EINTR {
                    break;
                }
            }
            libc::_exit(128 + libc::SIGKILL);
        }
    }
    // SAFETY: a sigaction with a valid handler and a full mask; then the
    // parent-death signal (replacing SIGKILL atomically: never unset).
    unsafe {
        let mut act: libc::sigaction = std::mem::zeroed();
        act.sa_sigaction = on_parent_death as extern "C" fn(libc::c_int) as *const () as usize;
        libc::sigfillset(&mut act.sa_mask);
        act.sa_flags = libc::SA_RESTART;
        if libc::sigaction(libc::SIGUSR1, &act, std::ptr::null_mut()) == 0 {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGUSR1 as libc::c_ulong);
        }
    }
}

/// Stub sandboxes: pid 1 waits until the restorer sends it descriptors
/// on [`KEEPER_FD`] (a `uffd` copy's userfaultfd, one per process of a
/// tree, in one message), closes its end, or the
/// stub ends, whichever comes first, and holds a received descriptor until
/// the sandbox ends (pid 1 never closes it). So no process of the function
/// holds a userfaultfd, yet the kernel cannot release it, and turn the
/// copy's missing pages into zeros, while the copy lives, even if the
/// server dies (the copy then waits on its fault until it is killed with
/// its sandbox).
fn hold_sent_descriptor(child: Pid) {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    // SAFETY: pidfd_open of our own child, no flags; checked below.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, child.as_raw(), 0) };
    if pidfd < 0 {
        return;
    }
    // SAFETY: a fresh descriptor nobody else owns.
    let pidfd =
        unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(pidfd as i32) };
    // SAFETY: KEEPER_FD was placed by the launcher for stub sandboxes and
    // stays open for this borrow (closed by the caller afterwards).
    let keeper = unsafe { BorrowedFd::borrow_raw(KEEPER_FD) };
    loop {
        let mut fds = [
            PollFd::new(keeper, PollFlags::POLLIN),
            PollFd::new(std::os::fd::AsFd::as_fd(&pidfd), PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            Err(Errno::EINTR) => continue,
            Err(_) => return,
            Ok(_) => {}
        }
        let ready = |fd: &PollFd| fd.revents().is_some_and(|r| !r.is_empty());
        if ready(&fds[0]) {
            let mut byte = [0u8; 1];
            let mut iov = [std::io::IoSliceMut::new(&mut byte)];
            // One message: a copy's userfaultfds, one per process of a
            // tree (restore::tree sends them together).
            let mut space = nix::cmsg_space!([RawFd; snapshotter::state::tree::MAX_PROCESSES]);
            if let Ok(msg) = recvmsg::<()>(KEEPER_FD, &mut iov, Some(&mut space), MsgFlags::empty())
            {
                if let Ok(cmsgs) = msg.cmsgs() {
                    for cmsg in cmsgs {
                        if let ControlMessageOwned::ScmRights(received) = cmsg {
                            // Held, never closed: see above.
                            let _kept = received;
                        }
                    }
                }
            }
            return;
        }
        if ready(&fds[1]) {
            return;
        }
    }
}

/// The restore stub: pid 2 of a sandbox, still privileged, with the protocol
/// fds 3 and 4 in place, waiting in `pause()` until a restorer takes it over
/// (ptrace) and turns it into a copy of a snapshot. The restorer drops its
/// privileges.
pub(super) fn run_stub(spec: &SandboxSpec) -> ! {
    let result = (|| -> Result<(), String> {
        setsid().map_err(ctx("setsid"))?;
        let _ = fs::write("/proc/self/oom_score_adj", "0");
        setrlimit(Resource::RLIMIT_NOFILE, spec.nofile, spec.nofile)
            .map_err(ctx("set RLIMIT_NOFILE"))?;
        chdir(&spec.cwd).map_err(|e| format!("chdir {}: {e}", spec.cwd.display()))?;
        Ok(())
    })();
    let result = result.and_then(|()| open_files_for_copy(spec));
    if let Err(e) = result {
        report(&e);
        process::exit(127);
    }
    // Close everything but 0-4 and the descriptors placed for the restorer
    // or opened for the copy.
    let mut keep: Vec<u32> = spec
        .keep_fds
        .iter()
        .chain(spec.open_files.iter().map(|f| &f.fd))
        .map(|&fd| fd as u32)
        .collect();
    keep.sort_unstable();
    let mut from = 5u32;
    for fd in keep.into_iter().filter(|&fd| fd >= 5) {
        if fd > from {
            // SAFETY: close_range only closes descriptors.
            unsafe { libc::syscall(libc::SYS_close_range, from, fd - 1, 0u32) };
        }
        from = from.max(fd + 1);
    }
    // SAFETY: as above.
    unsafe { libc::syscall(libc::SYS_close_range, from, u32::MAX, 0u32) };
    // Wait in pause() until the restorer seizes the stub and replaces
    // everything it is; a stub nobody restores just waits to be killed.
    loop {
        // SAFETY: pause takes no arguments and only waits for a signal.
        unsafe { libc::pause() };
    }
}

/// The stub opens the files its copy gets (saved descriptors, mapped
/// files, the executable) here, inside the sandbox, with the function's
/// filesystem credentials and no capabilities ([`super::open_files`]).
fn open_files_for_copy(spec: &SandboxSpec) -> Result<(), String> {
    super::open_files::open_as_function(&spec.open_files, spec.uid, spec.gid)
}

/// Drops privileges and executes the function. Returns only on failure.
fn exec_function(spec: &SandboxSpec) -> String {
    match try_exec(spec) {
        Ok(never) => match never {},
        Err(e) => e,
    }
}

fn try_exec(spec: &SandboxSpec) -> Result<std::convert::Infallible, String> {
    setsid().map_err(ctx("setsid"))?;
    let _ = fs::write("/proc/self/oom_score_adj", "0");
    setrlimit(Resource::RLIMIT_NOFILE, spec.nofile, spec.nofile)
        .map_err(ctx("set RLIMIT_NOFILE"))?;
    setrlimit(Resource::RLIMIT_CORE, 0, 0).map_err(ctx("set RLIMIT_CORE"))?;
    if spec.no_aslr {
        let current = nix::sys::personality::get().map_err(ctx("read personality"))?;
        nix::sys::personality::set(current | nix::sys::personality::Persona::ADDR_NO_RANDOMIZE)
            .map_err(ctx("disable address randomisation"))?;
    }
    chdir(&spec.cwd).map_err(|e| format!("chdir {}: {e}", spec.cwd.display()))?;
    drop_capability_bounding_set();
    nix::unistd::setgroups(&[]).map_err(ctx("setgroups"))?;
    let gid = Gid::from_raw(spec.gid);
    setresgid(gid, gid, gid).map_err(ctx("setresgid"))?;
    let uid = Uid::from_raw(spec.uid);
    // Changing every uid away from 0 clears the permitted, effective and
    // ambient capability sets.
    setresuid(uid, uid, uid).map_err(ctx("setresuid"))?;
    prctl::set_no_new_privs().map_err(ctx("set no_new_privs"))?;
    install_syscall_policy()?;
    // Only fds 0-4 and the status fd stay; the status fd is close-on-exec,
    // so it closes when execve succeeds and reports when it fails.
    let status = STATUS_FD as u32;
    // SAFETY: close_range only closes descriptors.
    unsafe {
        libc::syscall(libc::SYS_close_range, 5u32, status - 1, 0u32);
        libc::syscall(libc::SYS_close_range, status + 1, u32::MAX, 0u32);
    }
    let argv: Vec<CString> = spec
        .argv
        .iter()
        .map(|a| CString::new(a.as_str()))
        .collect::<Result<_, _>>()
        .map_err(ctx("argv"))?;
    let env: Vec<CString> = spec
        .env
        .iter()
        .map(|(k, v)| CString::new(format!("{k}={v}")))
        .collect::<Result<_, _>>()
        .map_err(ctx("environment"))?;
    let Some(path) = argv.first() else {
        return Err("empty argv".into());
    };
    let err = execve(path, &argv, &env).unwrap_err();
    Err(format!("execute {}: {err}", spec.argv[0]))
}

/// Installs the function's system-call policy ([`super::seccomp`]): after
/// `no_new_privs` (an unprivileged process may install a filter only then)
/// and before `execve`, which keeps it.
fn install_syscall_policy() -> Result<(), String> {
    super::seccomp::install().map_err(ctx("install the seccomp policy"))
}

/// Drops every capability from the bounding set, so nothing executed later
/// can regain one.
fn drop_capability_bounding_set() {
    let last: i32 = fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40);
    for cap in 0..=last {
        // SAFETY: PR_CAPBSET_DROP takes a capability number and no pointers.
        unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
    }
}

/// [`wait_for`], for pid 1's other loops.
pub(super) fn wait_for_child(child: Pid) -> i32 {
    wait_for(child)
}

/// Reaps children until `child` exits; returns its exit code, or 128 + the
/// signal that killed it.
fn wait_for(child: Pid) -> i32 {
    loop {
        match waitpid(None::<Pid>, None) {
            Ok(WaitStatus::Exited(pid, code)) if pid == child => return code,
            Ok(WaitStatus::Signaled(pid, sig, _)) if pid == child => return 128 + sig as i32,
            Ok(_) | Err(Errno::EINTR) => continue,
            Err(_) => return 255,
        }
    }
}

fn set_cloexec(fd: RawFd) {
    // SAFETY: fd is only used for this fcntl; failure (not open) is ignored.
    let fd = unsafe { BorrowedFd::borrow_raw(fd) };
    let _ = fcntl(fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC));
}

fn close_quietly(fd: RawFd) {
    let _ = close(fd);
}
