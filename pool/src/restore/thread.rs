//! Restoring the kernel state of the copy beside its memory: mm fields,
//! signal dispositions, process attributes, credentials, and per thread
//! (the restore side of `snapshotter::capture::{mm, signals, thread}` and
//! `ptrace`):
//!
//! ```text
//! create_threads  one batch in the main thread: clone3 per saved thread,
//!                 flags THREAD_FLAGS, set_tid = [saved tid] (in the copy's
//!                 pid namespace, while the stub is privileged), no stack:
//!                 the stub is traced with PTRACE_O_TRACECLONE, so each new
//!                 thread is attached and stopped before it runs a single
//!                 instruction; the restorer adopts it (Remote::adopt_thread)
//! set_thread      in that thread (a batch of its own, run by the same loop
//!                 in the shared scratch area): set_tid_address,
//!                 set_robust_list, sigaltstack, rseq, PR_SET_NAME
//! set_sched       from the restorer: policy, nice, affinity of its tid
//! set_credentials in every thread (a raw setresuid changes only the
//!                 calling thread's credentials)
//! set_registers   per thread: park, xsave, registers (restart rule), mask
//! ```
//!
//! `struct prctl_mm_map` as `PR_SET_MM_MAP` takes it (104 bytes):
//!
//! ```text
//! u64 start_code end_code start_data end_data start_brk brk start_stack
//!     arg_start arg_end env_start env_end
//! u64 auxv (pointer)   u32 auxv_size (bytes)   u32 exe_fd
//! ```

use snapshotter::state::{ProcessState, Restart, Rseq, Sched, ThreadState};

use super::batch::Batch;
use super::remote::{bytes_of, Remote};
use super::Credentials;
use super::RestoreError;

/// `struct prctl_mm_map`.
#[repr(C)]
#[derive(Clone, Copy)]
struct PrctlMmMap {
    start_code: u64,
    end_code: u64,
    start_data: u64,
    end_data: u64,
    start_brk: u64,
    brk: u64,
    start_stack: u64,
    arg_start: u64,
    arg_end: u64,
    env_start: u64,
    env_end: u64,
    auxv: u64,
    auxv_size: u32,
    exe_fd: u32,
}
const _: () = assert!(std::mem::size_of::<PrctlMmMap>() == 104);

/// `struct kernel_sigaction` of x86_64 (also used by [`super::anon`]).
#[repr(C)]
#[derive(Clone, Copy)]
pub(super) struct KernelSigaction {
    pub(super) handler: u64,
    pub(super) flags: u64,
    pub(super) restorer: u64,
    pub(super) mask: u64,
}
const _: () = assert!(std::mem::size_of::<KernelSigaction>() == 32);

/// `stack_t`.
#[repr(C)]
#[derive(Clone, Copy)]
struct StackT {
    sp: u64,
    flags: i32,
    pad: i32,
    size: u64,
}
const _: () = assert!(std::mem::size_of::<StackT>() == 24);

/// `RSEQ_FLAG_UNREGISTER`.
const RSEQ_FLAG_UNREGISTER: u64 = 1;

/// Drops the stub's inherited rseq registration (its area is about to be
/// unmapped; the kernel would write there on every return to user space).
pub fn unregister_rseq(remote: &Remote, batch: &mut Batch) -> Result<(), RestoreError> {
    let current = remote
        .seized
        .rseq()
        .map_err(|e| RestoreError::Stub(e.to_string()))?;
    if let Some(r) = current {
        batch.call(
            "rseq (unregister the stub's)",
            libc::SYS_rseq,
            [
                r.address,
                r.length as u64,
                RSEQ_FLAG_UNREGISTER,
                r.signature as u64,
                0,
                0,
            ],
        );
    }
    Ok(())
}

/// Registers the saved rseq area (its memory must be in place).
pub fn register_rseq(batch: &mut Batch, rseq: &Option<Rseq>) {
    if let Some(r) = rseq {
        batch.call(
            "rseq (register)",
            libc::SYS_rseq,
            [r.address, r.length as u64, 0, r.signature as u64, 0, 0],
        );
    }
}

/// `PR_SET_MM_MAP` with the saved fields, auxv and the executable (held by
/// the stub as `exe_fd`). The stub's own binary must be unmapped already.
pub fn set_mm(batch: &mut Batch, state: &ProcessState, exe_fd: i32) -> Result<(), RestoreError> {
    let mm = &state.mm;
    let auxv: Vec<u8> = mm
        .auxv
        .iter()
        .flat_map(|&(k, v)| k.to_ne_bytes().into_iter().chain(v.to_ne_bytes()))
        .collect();
    let auxv_addr = batch.data(&auxv)?;
    let map = PrctlMmMap {
        start_code: mm.start_code,
        end_code: mm.end_code,
        start_data: mm.start_data,
        end_data: mm.end_data,
        start_brk: mm.start_brk,
        brk: mm.brk,
        start_stack: mm.start_stack,
        arg_start: mm.arg_start,
        arg_end: mm.arg_end,
        env_start: mm.env_start,
        env_end: mm.env_end,
        auxv: auxv_addr,
        auxv_size: auxv.len() as u32,
        exe_fd: exe_fd as u32,
    };
    let addr = batch.data(bytes_of(&map))?;
    batch.call(
        "prctl(PR_SET_MM_MAP)",
        libc::SYS_prctl,
        [
            libc::PR_SET_MM as u64,
            libc::PR_SET_MM_MAP as u64,
            addr,
            std::mem::size_of::<PrctlMmMap>() as u64,
            0,
            0,
        ],
    );
    Ok(())
}

/// Signals the stub has a non-default disposition for (from its status).
fn stub_dispositions(pid: i32) -> Result<u64, RestoreError> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).map_err(|source| {
        RestoreError::Io {
            what: format!("read /proc/{pid}/status"),
            source,
        }
    })?;
    let mut set = 0u64;
    for line in text.lines() {
        for key in ["SigIgn:", "SigCgt:"] {
            if let Some(v) = line.strip_prefix(key) {
                set |= u64::from_str_radix(v.trim(), 16).unwrap_or(u64::MAX);
            }
        }
    }
    Ok(set)
}

/// Sets the saved dispositions and resets the stub's other ones.
pub fn set_signals(
    remote: &Remote,
    batch: &mut Batch,
    state: &ProcessState,
) -> Result<(), RestoreError> {
    let stub_set = stub_dispositions(remote.pid())?;
    let saved = &state.signals;
    for signal in 1..=64u32 {
        if signal == libc::SIGKILL as u32 || signal == libc::SIGSTOP as u32 {
            continue;
        }
        let action = saved.handlers.iter().find(|h| h.signal == signal);
        let stub_has = stub_set & (1 << (signal - 1)) != 0;
        let act = match action {
            Some(h) => KernelSigaction {
                handler: h.handler,
                flags: h.flags,
                restorer: h.restorer,
                mask: h.mask,
            },
            None if stub_has => KernelSigaction {
                handler: 0,
                flags: 0,
                restorer: 0,
                mask: 0,
            },
            None => continue,
        };
        let addr = batch.data(bytes_of(&act))?;
        batch.call(
            format!("rt_sigaction({signal})"),
            libc::SYS_rt_sigaction,
            [signal as u64, addr, 0, 8, 0, 0],
        );
    }
    Ok(())
}

/// Sets the thread's blocked signal mask.
pub fn set_mask(remote: &Remote, thread: &ThreadState) -> Result<(), RestoreError> {
    let mut mask = thread.blocked;
    // SAFETY: PTRACE_SETSIGMASK reads 8 bytes (`addr` is the size) from
    // `mask`, which lives across the call.
    let rc = unsafe {
        libc::ptrace(
            libc::PTRACE_SETSIGMASK,
            remote.pid(),
            std::mem::size_of::<u64>(),
            &mut mask as *mut u64,
        )
    };
    if rc == -1 {
        return Err(RestoreError::Io {
            what: "PTRACE_SETSIGMASK".into(),
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// `set_tid_address`, `set_robust_list`, `sigaltstack`, rseq and the
/// thread's name, in the batch of thread `t` (the memory of its rseq area
/// must be in place).
pub fn set_thread(batch: &mut Batch, t: &ThreadState) -> Result<(), RestoreError> {
    batch.call(
        "set_tid_address",
        libc::SYS_set_tid_address,
        [t.tid_address, 0, 0, 0, 0, 0],
    );
    if t.robust_list != 0 {
        batch.call(
            "set_robust_list",
            libc::SYS_set_robust_list,
            [t.robust_list, t.robust_list_len, 0, 0, 0, 0],
        );
    }
    let stack = match t.alt_stack {
        Some(s) => StackT {
            sp: s.sp,
            flags: s.flags,
            pad: 0,
            size: s.size,
        },
        None => StackT {
            sp: 0,
            flags: libc::SS_DISABLE,
            pad: 0,
            size: 0,
        },
    };
    let addr = batch.data(bytes_of(&stack))?;
    batch.call("sigaltstack", libc::SYS_sigaltstack, [addr, 0, 0, 0, 0, 0]);
    register_rseq(batch, &t.rseq);
    let mut comm = t.name.clone().into_bytes();
    comm.truncate(15);
    comm.push(0);
    let addr = batch.data(&comm)?;
    batch.call(
        "prctl(PR_SET_NAME)",
        libc::SYS_prctl,
        [libc::PR_SET_NAME as u64, addr, 0, 0, 0, 0],
    );
    Ok(())
}

/// cwd, umask and personality (in `batch`, run by the main thread before
/// the other threads are cloned: they inherit the personality), and
/// resource limits (set directly).
pub fn set_attributes(
    remote: &Remote,
    batch: &mut Batch,
    state: &ProcessState,
) -> Result<(), RestoreError> {
    let p = &state.process;
    let mut cwd = p.cwd.clone().into_bytes();
    cwd.push(0);
    let addr = batch.data(&cwd)?;
    batch.call(
        format!("chdir({})", p.cwd),
        libc::SYS_chdir,
        [addr, 0, 0, 0, 0, 0],
    );
    batch.call("umask", libc::SYS_umask, [p.umask as u64, 0, 0, 0, 0, 0]);
    batch.call(
        "personality",
        libc::SYS_personality,
        [state.personality as u64, 0, 0, 0, 0, 0],
    );
    let pid = remote.pid();
    for limit in &p.rlimits {
        let new = libc::rlimit {
            rlim_cur: limit.soft,
            rlim_max: limit.hard,
        };
        // SAFETY: `new` is a valid rlimit read by the kernel; no old value
        // is asked for.
        let rc = unsafe { libc::prlimit(pid, limit.resource as _, &new, std::ptr::null_mut()) };
        if rc != 0 {
            return Err(RestoreError::Io {
                what: format!("prlimit({}) of the copy", limit.resource),
                source: std::io::Error::last_os_error(),
            });
        }
    }
    Ok(())
}

/// Highest capability number this code knows (`CAP_LAST_CAP` of Linux 6.x),
/// used when `/proc/sys/kernel/cap_last_cap` cannot be read.
const CAP_LAST: u32 = 40;

/// The highest capability number of this kernel.
fn cap_last() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(CAP_LAST)
        .max(CAP_LAST)
}

/// `_LINUX_CAPABILITY_VERSION_3`.
const CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// `struct __user_cap_header_struct` + two `__user_cap_data_struct`.
#[repr(C)]
#[derive(Clone, Copy)]
struct CapSet {
    version: u32,
    pid: i32,
    /// effective, permitted, inheritable; for capabilities 0-31, then 32-63.
    data: [u32; 6],
}
const _: () = assert!(std::mem::size_of::<CapSet>() == 32);

/// The credentials of the thread running `batch`, last in its batch (they
/// drop the privileges the calls before needed); every thread runs this in
/// its own batch, since a raw `setresuid` changes only the calling thread.
/// The seccomp policy comes after (`super::seccomp`).
///
/// [`Credentials::Function`] (every sandboxed copy): the sandbox's policy
/// whatever the snapshot says: no ambient capabilities, an empty bounding
/// set, no supplementary groups, the function's gid and uid (real,
/// effective, saved), empty effective, permitted and inheritable sets
/// (`capset`, also for uid 0), `PR_SET_DUMPABLE` and `NoNewPrivs`.
///
/// [`Credentials::Snapshot`] (`thaw restore` of a snapshot the operator
/// made): the saved bounding set, groups, gids, uids (capabilities then
/// follow the usual rules of a uid change), `NoNewPrivs` as saved.
pub fn set_credentials(
    batch: &mut Batch,
    state: &ProcessState,
    credentials: &Credentials,
) -> Result<(), RestoreError> {
    let p = &state.process;
    // Mode 2 (thaw's policy, the only filter capture accepts) is
    // reinstalled after this (`super::seccomp`); strict mode is refused.
    super::seccomp::wanted(state, false)?;
    match credentials {
        Credentials::Function { uid, gid } => {
            batch.call(
                "prctl(PR_CAP_AMBIENT_CLEAR_ALL)",
                libc::SYS_prctl,
                [
                    libc::PR_CAP_AMBIENT as u64,
                    libc::PR_CAP_AMBIENT_CLEAR_ALL as u64,
                    0,
                    0,
                    0,
                    0,
                ],
            );
            for cap in 0..=cap_last() {
                batch.call(
                    format!("prctl(PR_CAPBSET_DROP, {cap})"),
                    libc::SYS_prctl,
                    [libc::PR_CAPBSET_DROP as u64, cap as u64, 0, 0, 0, 0],
                );
            }
            batch.call("setgroups", libc::SYS_setgroups, [0, 0, 0, 0, 0, 0]);
            let (u, g) = (*uid as u64, *gid as u64);
            batch.call("setresgid", libc::SYS_setresgid, [g, g, g, 0, 0, 0]);
            batch.call("setresuid", libc::SYS_setresuid, [u, u, u, 0, 0, 0]);
            let caps = CapSet {
                version: CAPABILITY_VERSION_3,
                pid: 0,
                data: [0; 6],
            };
            let header = batch.data(bytes_of(&caps))?;
            batch.call(
                "capset (none)",
                libc::SYS_capset,
                [header, header + 8, 0, 0, 0, 0],
            );
            dumpable(batch);
            batch.call(
                "prctl(PR_SET_NO_NEW_PRIVS)",
                libc::SYS_prctl,
                [libc::PR_SET_NO_NEW_PRIVS as u64, 1, 0, 0, 0, 0],
            );
        }
        Credentials::Snapshot => {
            let bounding = p.capabilities[3];
            for cap in 0..=CAP_LAST {
                if bounding & (1 << cap) == 0 {
                    batch.call(
                        format!("prctl(PR_CAPBSET_DROP, {cap})"),
                        libc::SYS_prctl,
                        [libc::PR_CAPBSET_DROP as u64, cap as u64, 0, 0, 0, 0],
                    );
                }
            }
            let groups: Vec<u8> = p.groups.iter().flat_map(|g| g.to_ne_bytes()).collect();
            let addr = if groups.is_empty() {
                0
            } else {
                batch.data(&groups)?
            };
            batch.call(
                "setgroups",
                libc::SYS_setgroups,
                [p.groups.len() as u64, addr, 0, 0, 0, 0],
            );
            let [rg, eg, sg, _] = p.gids;
            batch.call(
                "setresgid",
                libc::SYS_setresgid,
                [rg as u64, eg as u64, sg as u64, 0, 0, 0],
            );
            let [ru, eu, su, _] = p.uids;
            batch.call(
                "setresuid",
                libc::SYS_setresuid,
                [ru as u64, eu as u64, su as u64, 0, 0, 0],
            );
            dumpable(batch);
            if p.no_new_privs {
                batch.call(
                    "prctl(PR_SET_NO_NEW_PRIVS)",
                    libc::SYS_prctl,
                    [libc::PR_SET_NO_NEW_PRIVS as u64, 1, 0, 0, 0, 0],
                );
            }
        }
    }
    Ok(())
}

/// `PR_SET_DUMPABLE`: changing ids clears it; the original was dumpable or
/// it could not have been captured (and the copy's /proc files stay its
/// own).
fn dumpable(batch: &mut Batch) {
    batch.call(
        "prctl(PR_SET_DUMPABLE)",
        libc::SYS_prctl,
        [libc::PR_SET_DUMPABLE as u64, 1, 0, 0, 0, 0],
    );
}

/// Extended state and registers, with the syscall-restart rule applied.
///
/// The stub is parked in an interrupt stop first ([`Remote::park`]): a copy
/// captured in a restartable system call (`-ERESTARTSYS`, `-ERESTARTNOHAND`,
/// `-ERESTARTNOINTR`) gets its registers exactly as captured, and the kernel
/// decides on resume, as it would have for the original: restart, or
/// `EINTR` and the handler of a signal sent meanwhile. Pre-applying the
/// restart instead lost that `EINTR` (a `pause` woken by a signal sent right
/// after the restore slept on). `-ERESTART_RESTARTBLOCK` is turned into
/// `EINTR` here: the copy has no restart block of its own.
///
/// Per thread: a thread captured in an untimed futex wait (`-ERESTARTSYS`)
/// re-enters it and still wakes when the word changes; timed waits,
/// `nanosleep` and `poll` (`-ERESTART_RESTARTBLOCK`) return `EINTR`.
pub fn set_registers(remote: &mut Remote, thread: &ThreadState) -> Result<(), RestoreError> {
    remote.park()?;
    set_registers_here(remote, thread)
}

/// [`set_registers`] for a thread already in a stop inside the kernel's
/// signal handling: a thread whose last batch ended at the loop's `int3`
/// is in the `SIGTRAP` signal-delivery stop, which the kernel leaves
/// through the same restart rule as an interrupt stop (the trap is
/// discarded: the thread is resumed with no signal). Saves the park's
/// round trip per thread.
pub fn set_registers_after_batch(
    remote: &mut Remote,
    thread: &ThreadState,
) -> Result<(), RestoreError> {
    set_registers_here(remote, thread)
}

fn set_registers_here(remote: &mut Remote, thread: &ThreadState) -> Result<(), RestoreError> {
    remote
        .seized
        .set_xsave(&thread.xsave)
        .map_err(|e| RestoreError::Stub(e.to_string()))?;
    let regs = match thread.registers.restart_pending() {
        Restart::RestartBlock => thread.registers.with_restart_applied(),
        Restart::None | Restart::Same => thread.registers,
    };
    remote
        .seized
        .set_registers(&regs)
        .map_err(|e| RestoreError::Stub(e.to_string()))?;
    Ok(())
}

/// Flags of the `clone3` that makes each thread: what `pthread_create`
/// shares (memory, fs, files, signal handlers, thread group, System V
/// semaphore undo lists). No `CLONE_SETTLS` or tid pointers: the TLS base
/// is a register set later, the tid address is set in the thread.
pub const THREAD_FLAGS: u64 = (libc::CLONE_VM
    | libc::CLONE_FS
    | libc::CLONE_FILES
    | libc::CLONE_SIGHAND
    | libc::CLONE_THREAD
    | libc::CLONE_SYSVSEM) as u64;

/// Threads cloned per batch (bounded by the batch's argument data).
const CLONES_PER_BATCH: usize = 512;

/// Makes every thread of `state` but the main one in the stub (whose
/// scratch area is mapped), each with its saved tid, and adds them, held,
/// to `threads` in `state.threads[1..]` order, stopped before their first
/// instruction. On failure the threads made so far are in `threads` too
/// (the caller kills the copy before it lets them go).
pub fn create_threads(
    remote: &mut Remote,
    state: &ProcessState,
    threads: &mut Vec<Remote>,
) -> Result<(), RestoreError> {
    let others = &state.threads[1..];
    if others.is_empty() {
        return Ok(());
    }
    nix::sys::ptrace::setoptions(
        nix::unistd::Pid::from_raw(remote.pid()),
        nix::sys::ptrace::Options::PTRACE_O_TRACESYSGOOD
            | nix::sys::ptrace::Options::PTRACE_O_EXITKILL
            | nix::sys::ptrace::Options::PTRACE_O_TRACECLONE,
    )
    .map_err(|e| RestoreError::Stub(format!("PTRACE_SETOPTIONS (TRACECLONE): {e}")))?;
    let (scratch, _) = remote
        .scratch
        .ok_or(RestoreError::NoRoom("scratch area for the thread clones"))?;
    remote.cloned.clear();
    for chunk in others.chunks(CLONES_PER_BATCH) {
        let mut batch = Batch::new(scratch);
        for t in chunk {
            let set_tid = batch.data(&t.tid.to_ne_bytes())?;
            // SAFETY: clone_args is plain integers; all-zero is valid.
            let mut args: libc::clone_args = unsafe { std::mem::zeroed() };
            args.flags = THREAD_FLAGS;
            args.set_tid = set_tid;
            args.set_tid_size = 1;
            let addr = batch.data(bytes_of(&args))?;
            batch.call(
                format!("clone3 (thread {})", t.tid),
                libc::SYS_clone3,
                [
                    addr,
                    std::mem::size_of::<libc::clone_args>() as u64,
                    0,
                    0,
                    0,
                    0,
                ],
            );
        }
        let ran = remote.run(batch);
        // Threads made before a failure are adopted (and then die with the
        // stub) so none is left unwaited.
        for tid in std::mem::take(&mut remote.cloned) {
            threads.push(remote.adopt_thread(tid)?);
        }
        ran?;
    }
    if threads.len() != others.len() {
        return Err(RestoreError::Stub(format!(
            "{} threads cloned, {} expected",
            threads.len(),
            others.len()
        )));
    }
    Ok(())
}

/// Scheduling of the thread `tid` (restorer's namespace): policy, nice
/// value and affinity as saved. A real-time policy or a negative nice value
/// is refused (a copy never gets more than an unprivileged function could
/// take); the affinity is limited to the CPUs the copy may use now (none
/// left: unchanged).
pub fn set_sched(tid: i32, saved_tid: i32, s: &Sched) -> Result<(), RestoreError> {
    let io = |what: String| RestoreError::Io {
        what,
        source: std::io::Error::last_os_error(),
    };
    match s.policy {
        libc::SCHED_OTHER | libc::SCHED_BATCH | libc::SCHED_IDLE => {}
        other => {
            return Err(RestoreError::Unsupported(format!(
                "thread {saved_tid} had scheduling policy {other}; a copy may not run real-time"
            )))
        }
    }
    if s.nice < 0 {
        return Err(RestoreError::Unsupported(format!(
            "thread {saved_tid} had nice {}; a copy may not run above normal priority",
            s.nice
        )));
    }
    // SAFETY: sched_getscheduler takes a tid and no pointers.
    let current = unsafe { libc::sched_getscheduler(tid) };
    if current != s.policy {
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: `param` is a valid sched_param read by the kernel.
        if unsafe { libc::sched_setscheduler(tid, s.policy, &param) } != 0 {
            return Err(io(format!("sched_setscheduler of thread {saved_tid}")));
        }
    }
    if s.nice != 0 {
        // SAFETY: setpriority takes numbers only.
        if unsafe { libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, s.nice) } != 0 {
            return Err(io(format!("setpriority of thread {saved_tid}")));
        }
    }
    if s.affinity.is_empty() {
        return Ok(());
    }
    let mut allowed = [0u64; 16];
    // SAFETY: the kernel writes at most size_of_val(&allowed) bytes.
    let n = unsafe {
        libc::syscall(
            libc::SYS_sched_getaffinity,
            tid,
            std::mem::size_of_val(&allowed),
            allowed.as_mut_ptr(),
        )
    };
    if n < 0 {
        return Err(io(format!("sched_getaffinity of thread {saved_tid}")));
    }
    let mut wanted = allowed;
    for (i, w) in wanted.iter_mut().enumerate() {
        *w &= s.affinity.get(i).copied().unwrap_or(0);
    }
    if wanted == allowed || wanted.iter().all(|&w| w == 0) {
        return Ok(());
    }
    // SAFETY: the kernel reads size_of_val(&wanted) bytes from `wanted`.
    let r = unsafe {
        libc::syscall(
            libc::SYS_sched_setaffinity,
            tid,
            std::mem::size_of_val(&wanted),
            wanted.as_ptr(),
        )
    };
    if r < 0 {
        return Err(io(format!("sched_setaffinity of thread {saved_tid}")));
    }
    Ok(())
}

/// Areas that hold (or held) thread stacks, for mmap mode: a glibc thread
/// frees its stack with `madvise(MADV_DONTNEED)` on the way out, after
/// blocking every signal, so the anonymous-memory guard's trap would kill
/// it (a blocked `SIGSYS` from seccomp is fatal). These areas are mapped
/// anonymous and written instead, and the guard lets `madvise` inside them
/// through. An area qualifies when it is private anonymous read-write
/// memory and holds a thread's stack pointer (a thread other than the
/// main one), or sits right above a private `PROT_NONE` anonymous area
/// (the guard page of glibc's stacks, cached ones included; the guard area
/// is included too: glibc's `madvise` starts at the mapping's start, in
/// the guard). A false match
/// only costs copying its pages: real anonymous memory is always right.
pub fn thread_stack_areas(state: &ProcessState) -> std::collections::HashSet<usize> {
    use snapshotter::state::AreaKind;
    let areas = &state.areas;
    let plain = |i: usize| {
        let a = &areas[i];
        a.kind == AreaKind::Anonymous && !a.shared
    };
    let mut out = std::collections::HashSet::new();
    for (i, a) in areas.iter().enumerate() {
        if !(plain(i) && a.prot.read && a.prot.write) {
            continue;
        }
        let holds_sp = state.threads[1..]
            .iter()
            .any(|t| (a.start..a.end).contains(&t.registers.rsp));
        let guarded = i > 0 && {
            let below = &areas[i - 1];
            plain(i - 1)
                && below.end == a.start
                && !below.prot.read
                && !below.prot.write
                && !below.prot.exec
        };
        if holds_sp || guarded {
            out.insert(i);
        }
        // The guard belongs to the stack's mapping: glibc's madvise starts
        // there (at the mapping's start).
        if guarded {
            out.insert(i - 1);
        }
    }
    out
}

/// Checks that every thread runs under as many seccomp filters as the main
/// thread (`Seccomp_filters` of each thread's status): a filter installed
/// with `SECCOMP_FILTER_FLAG_TSYNC` that could not reach a thread reports it
/// with a positive return, which a batch does not see as an error.
pub fn check_filters_everywhere(main: &Remote, others: &[Remote]) -> Result<(), RestoreError> {
    let filters = |tid: i32| -> Result<Option<String>, RestoreError> {
        let path = format!("/proc/{tid}/status");
        let text = std::fs::read_to_string(&path).map_err(|source| RestoreError::Io {
            what: format!("read {path}"),
            source,
        })?;
        Ok(text
            .lines()
            .find_map(|l| l.strip_prefix("Seccomp_filters:"))
            .map(|v| v.trim().to_string()))
    };
    let want = filters(main.pid())?;
    for t in others {
        let got = filters(t.pid())?;
        if got != want {
            return Err(RestoreError::Unsupported(format!(
                "thread {} runs under {got:?} seccomp filters, the main thread under {want:?}",
                t.pid()
            )));
        }
    }
    Ok(())
}
