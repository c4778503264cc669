//! Restoring each thread of the copy (the restore side of
//! `snapshotter::capture::thread`, state `snapshotter::state::ThreadState`):
//!
//! ```text
//! restore_others  per group of up to SLOTS threads, one run of the main
//!                 thread (Remote::run_clones), the first thread it makes
//!                 making the second half at the same time: clone3 per
//!                 saved thread, flags THREAD_FLAGS, set_tid = [saved
//!                 tid] (in the copy's pid namespace, while the stub is
//!                 privileged), no stack;
//!                 each new thread (every signal blocked: it has the main
//!                 thread's mask) runs its own table at once, untraced:
//!                 its scheduling (sched_in_batch),
//!                 set_new_thread (set_tid_address, set_robust_list,
//!                 rseq; sigaltstack and PR_SET_NAME unless clone3 gave
//!                 it those already), its credentials; then it
//!                 parks in pause and the main thread, which waited for all
//!                 of them, stops. No ptrace stop per thread until then.
//! adopt           the new threads' ids translated from the copy's pid
//!                 namespace (NS_GET_PID_FROM_PIDNS; older kernels: listed,
//!                 a thread's r13 naming its record), then all seized and
//!                 interrupted at once, then each waited for
//! set_registers   per thread: xsave, registers (restart rule), mask
//! ```
//!
//! The credentials are set in every thread too ([`super::credentials`]).
//! In uffd mode the live threads' stacks are written, not served
//! ([`live_stacks`]), and the futex words of waiting threads filled before
//! the resume ([`restart_pages`]).

use snapshotter::state::{ProcessState, Restart, Rseq, Sched, ThreadState};

use super::batch::{Batch, NewThread, SLOTS};
use super::remote::{bytes_of, Remote};
use super::Credentials;
use super::RestoreError;
use super::RestoreTimings;

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

/// Blocks every signal in the thread running `batch` (its saved mask is
/// set with [`set_mask`] just before the resume): signals that come while
/// the copy is being made (a restored timer's, a re-queued pending one)
/// wait, pending, instead of meeting a ptrace stop that would drop them.
pub fn block_all_signals(batch: &mut Batch) -> Result<(), RestoreError> {
    let all = batch.data(&u64::MAX.to_ne_bytes())?;
    batch.call(
        "rt_sigprocmask (block every signal)",
        libc::SYS_rt_sigprocmask,
        [libc::SIG_SETMASK as u64, all, 0, 8, 0, 0],
    );
    Ok(())
}

/// `PR_SET_PDEATHSIG` of thread `t`, in its batch, after its credentials
/// (a change of credentials clears it).
pub fn set_parent_death_signal(batch: &mut Batch, t: &ThreadState) {
    if t.parent_death_signal != 0 {
        batch.call(
            "prctl(PR_SET_PDEATHSIG)",
            libc::SYS_prctl,
            [
                libc::PR_SET_PDEATHSIG as u64,
                t.parent_death_signal as u64,
                0,
                0,
                0,
                0,
            ],
        );
    }
}

/// `set_tid_address`, `set_robust_list`, `sigaltstack`, rseq and the
/// thread's name, in the batch of thread `t` (the memory of its rseq area
/// must be in place). For the main thread, which has the stub's.
pub fn set_thread(batch: &mut Batch, t: &ThreadState) -> Result<(), RestoreError> {
    set_thread_from(batch, t, None)
}

/// [`set_thread`] for a thread just made by `clone3` in the main thread
/// (`main`, already set): what the clone gave it already is not set again.
/// `clone3` with `CLONE_VM` (no `CLONE_VFORK`) starts it without an
/// alternate signal stack, and with the main thread's name; a thread with
/// neither of its own skips two calls (30 in a 16-thread copy).
pub fn set_new_thread(
    batch: &mut Batch,
    t: &ThreadState,
    main: &ThreadState,
) -> Result<(), RestoreError> {
    set_thread_from(batch, t, Some(main))
}

/// The thread's name as `PR_SET_NAME` takes it: at most 15 bytes and a NUL.
fn comm(name: &str) -> Vec<u8> {
    let mut comm = name.as_bytes().to_vec();
    comm.truncate(15);
    comm.push(0);
    comm
}

fn set_thread_from(
    batch: &mut Batch,
    t: &ThreadState,
    cloned_from: Option<&ThreadState>,
) -> Result<(), RestoreError> {
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
        Some(s) => Some(StackT {
            sp: s.sp,
            flags: s.flags,
            pad: 0,
            size: s.size,
        }),
        // A new thread has none already.
        None if cloned_from.is_some() => None,
        None => Some(StackT {
            sp: 0,
            flags: libc::SS_DISABLE,
            pad: 0,
            size: 0,
        }),
    };
    if let Some(stack) = stack {
        let addr = batch.data(bytes_of(&stack))?;
        batch.call("sigaltstack", libc::SYS_sigaltstack, [addr, 0, 0, 0, 0, 0]);
    }
    register_rseq(batch, &t.rseq);
    let comm = comm(&t.name);
    // A new thread has the name of the thread that cloned it.
    if cloned_from.is_none_or(|main| self::comm(&main.name) != comm) {
        let addr = batch.data(&comm)?;
        batch.call(
            "prctl(PR_SET_NAME)",
            libc::SYS_prctl,
            [libc::PR_SET_NAME as u64, addr, 0, 0, 0, 0],
        );
    }
    Ok(())
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
/// signal handling: a thread made by [`restore_others`] is in the
/// interrupt stop it was seized into, parked in `pause` (like the main
/// thread after [`Remote::park`]); the kernel leaves it through the restart
/// rule of the registers set here. Saves the park's round trip per thread.
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

/// Step 7 of the restore: makes every thread but the main one, each with
/// its saved tid, in groups of up to [`SLOTS`], and adds them, held and
/// stopped, to `threads` in `saved` order. Each group is one run of the
/// main thread ([`Remote::run_clones`]) in which every new thread, born
/// with every signal blocked (the main thread's mask since batch 2; its own
/// is set at the resume), sets itself up from its own table: its
/// scheduling ([`sched_in_batch`]), its registrations
/// ([`set_thread`]) and its credentials
/// ([`super::credentials::set_credentials`]). The threads are then seized
/// together ([`adopt`]). On failure the threads held so far are in
/// `threads` (the caller kills the copy before it lets them go; the
/// others die with it).
pub fn restore_others(
    remote: &mut Remote,
    threads: &mut Vec<Remote>,
    saved: &[ThreadState],
    scratch: u64,
    state: &ProcessState,
    credentials: &Credentials,
    timings: &mut RestoreTimings,
) -> Result<(), RestoreError> {
    if saved.is_empty() {
        return Ok(());
    }
    let inherited = Inherited::of(remote.pid())?;
    for group in saved.chunks(SLOTS) {
        let mut new = Vec::with_capacity(group.len());
        let mut data_from = 0;
        for (slot, t) in group.iter().enumerate() {
            // Every signal is blocked already: the main thread's mask
            // (blocked since batch 2) is copied by clone3.
            let mut batch = Batch::for_thread(scratch, slot, data_from);
            super::pending::queue_for_thread(&mut batch, state.pid, t.tid, &t.pending)?;
            sched_in_batch(&mut batch, t, &inherited)?;
            set_new_thread(&mut batch, t, &state.threads[0])?;
            super::credentials::set_credentials(&mut batch, state, credentials)?;
            set_parent_death_signal(&mut batch, t);
            timings.batched += batch.len() as u32;
            data_from = batch.data_end();
            new.push(NewThread { tid: t.tid, batch });
        }
        let records = remote.run_clones(THREAD_FLAGS, &new)?;
        adopt(remote, threads, group, &records)?;
    }
    Ok(())
}

/// Seizes the threads of `group` the last [`Remote::run_clones`] made (they
/// are parked, untraced): all seized and interrupted first, then each
/// waited for, so their stops overlap; added to `threads` in `group`
/// order. Their ids in the restorer's namespace come from the copy's pid
/// namespace ([`translated_ids`]: one `ioctl` per thread), or, on a kernel
/// without that (before 6.11), from listing `/proc/PID/task`, each told
/// apart by its `r13`, the address of its record (`records[n]` for
/// `group[n]`).
fn adopt(
    remote: &Remote,
    threads: &mut Vec<Remote>,
    group: &[ThreadState],
    records: &[u64],
) -> Result<(), RestoreError> {
    use nix::sys::ptrace;
    use nix::unistd::Pid;
    let main = remote.pid();
    let count = group.len();
    let translated = translated_ids(main, group)?;
    let new: Vec<i32> = match &translated {
        Some(ids) => ids.clone(),
        None => {
            let tids = snapshotter::capture::ptrace::task_ids(main)
                .map_err(|e| RestoreError::Stub(e.to_string()))?;
            tids.into_iter()
                .filter(|&t| t != main && !threads.iter().any(|h| h.pid() == t))
                .collect()
        }
    };
    if new.len() != count {
        return Err(RestoreError::Stub(format!(
            "{} new threads in the copy, {count} made",
            new.len()
        )));
    }
    for &tid in &new {
        let err = |what: &str, e: nix::errno::Errno| {
            RestoreError::Stub(format!("{what} of thread {tid}: {e}"))
        };
        ptrace::seize(
            Pid::from_raw(tid),
            ptrace::Options::PTRACE_O_TRACESYSGOOD | ptrace::Options::PTRACE_O_EXITKILL,
        )
        .map_err(|e| err("PTRACE_SEIZE", e))?;
        ptrace::interrupt(Pid::from_raw(tid)).map_err(|e| err("PTRACE_INTERRUPT", e))?;
    }
    if translated.is_some() {
        // Already in `group` order.
        for &tid in &new {
            threads.push(remote.adopt_thread(tid)?);
        }
        return Ok(());
    }
    let mut held: Vec<(usize, Remote)> = Vec::with_capacity(count);
    for &tid in &new {
        let t = remote.adopt_thread(tid)?;
        let r13 = t
            .seized
            .registers()
            .map_err(|e| RestoreError::Stub(e.to_string()))?
            .r13;
        let Some(n) = records.iter().position(|&r| r == r13) else {
            return Err(RestoreError::Stub(format!(
                "thread {} stopped outside the records (r13 {r13:#x})",
                t.pid()
            )));
        };
        held.push((n, t));
    }
    held.sort_by_key(|(n, _)| *n);
    for (i, (n, t)) in held.iter().enumerate() {
        if *n != i {
            return Err(RestoreError::Stub(format!(
                "thread {} stopped at record {n}, expected {i}",
                t.pid()
            )));
        }
    }
    threads.extend(held.into_iter().map(|(_, t)| t));
    Ok(())
}

/// The ids, in the restorer's pid namespace, of the threads of `group`
/// made in the process `main` (restorer's namespace), in `group` order:
/// each saved tid translated from the copy's pid namespace with
/// `NS_GET_PID_FROM_PIDNS` on `/proc/MAIN/ns/pid` (Linux 6.11), and
/// checked to belong to `main` (`NS_GET_TGID_FROM_PIDNS`). Listing
/// `/proc/MAIN/task` instead cost ~0.06 ms for 15 new threads (the first
/// listing makes a proc dentry and inode per task). `None` when the
/// kernel has no such `ioctl`.
fn translated_ids(main: i32, group: &[ThreadState]) -> Result<Option<Vec<i32>>, RestoreError> {
    use std::os::fd::AsRawFd;
    let path = format!("/proc/{main}/ns/pid");
    let ns = std::fs::File::open(&path).map_err(|source| RestoreError::Io {
        what: format!("open {path}"),
        source,
    })?;
    let mut ids = Vec::with_capacity(group.len());
    for t in group {
        let ask = |request| {
            // SAFETY: these nsfs requests take the id by value and return
            // the translated id (or -1); no memory is passed.
            let r = unsafe { libc::ioctl(ns.as_raw_fd(), request, t.tid as libc::c_ulong) };
            if r < 0 {
                Err(std::io::Error::last_os_error())
            } else {
                Ok(r)
            }
        };
        let tid = match ask(libc::NS_GET_PID_FROM_PIDNS) {
            Ok(tid) => tid,
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTTY | libc::EINVAL)) => {
                return Ok(None)
            }
            Err(source) => {
                return Err(RestoreError::Io {
                    what: format!("the id of thread {} outside the copy", t.tid),
                    source,
                })
            }
        };
        let tgid = ask(libc::NS_GET_TGID_FROM_PIDNS).map_err(|source| RestoreError::Io {
            what: format!("the process of thread {} outside the copy", t.tid),
            source,
        })?;
        if tgid != main || tid == main || tid == 0 {
            return Err(RestoreError::Stub(format!(
                "thread {} of the copy is {tid} of process {tgid} here, not a new thread of {main}",
                t.tid
            )));
        }
        ids.push(tid);
    }
    Ok(Some(ids))
}

/// The CPU mask thread `tid` may run on (restorer's namespace), as the
/// kernel's bitmap of up to 1,024 CPUs.
fn allowed_cpus(tid: i32) -> std::io::Result<[u64; 16]> {
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
        return Err(std::io::Error::last_os_error());
    }
    Ok(allowed)
}

/// The scheduling a new thread starts with: the main thread's, which it
/// inherits at `clone3`.
#[derive(Debug)]
pub struct Inherited {
    policy: i32,
    allowed: [u64; 16],
}

impl Inherited {
    /// Reads the policy and affinity of thread `tid` (restorer's
    /// namespace).
    pub fn of(tid: i32) -> Result<Inherited, RestoreError> {
        // SAFETY: sched_getscheduler takes a tid and no pointers.
        let policy = unsafe { libc::sched_getscheduler(tid) };
        if policy < 0 {
            return Err(RestoreError::Io {
                what: "sched_getscheduler of the stub".into(),
                source: std::io::Error::last_os_error(),
            });
        }
        let allowed = allowed_cpus(tid).map_err(|source| RestoreError::Io {
            what: "sched_getaffinity of the stub".into(),
            source,
        })?;
        Ok(Inherited { policy, allowed })
    }
}

/// A thread's scheduling, set by the thread itself in its batch (what
/// [`set_sched`] does from outside, with the same refusals): the policy if
/// it differs from the inherited one, the nice value if not 0, the
/// affinity limited to the CPUs the copy may use now (none left or all of
/// them: unchanged).
pub fn sched_in_batch(
    batch: &mut Batch,
    t: &ThreadState,
    inherited: &Inherited,
) -> Result<(), RestoreError> {
    let s = &t.sched;
    check_sched(t.tid, s)?;
    if s.policy != inherited.policy {
        let param = batch.data(&0i32.to_ne_bytes())?;
        batch.call(
            "sched_setscheduler",
            libc::SYS_sched_setscheduler,
            [0, s.policy as u64, param, 0, 0, 0],
        );
    }
    if s.nice != 0 {
        batch.call(
            "setpriority",
            libc::SYS_setpriority,
            [libc::PRIO_PROCESS as u64, 0, s.nice as u64, 0, 0, 0],
        );
    }
    if s.affinity.is_empty() {
        return Ok(());
    }
    let mut wanted = inherited.allowed;
    for (i, w) in wanted.iter_mut().enumerate() {
        *w &= s.affinity.get(i).copied().unwrap_or(0);
    }
    if wanted == inherited.allowed || wanted.iter().all(|&w| w == 0) {
        return Ok(());
    }
    let bytes: Vec<u8> = wanted.iter().flat_map(|w| w.to_ne_bytes()).collect();
    let mask = batch.data(&bytes)?;
    batch.call(
        "sched_setaffinity",
        libc::SYS_sched_setaffinity,
        [0, bytes.len() as u64, mask, 0, 0, 0],
    );
    Ok(())
}

/// Refuses what a copy may not have: a real-time policy, a negative nice
/// value.
fn check_sched(saved_tid: i32, s: &Sched) -> Result<(), RestoreError> {
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
    check_sched(saved_tid, s)?;
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
    let Ok(allowed) = allowed_cpus(tid) else {
        return Err(io(format!("sched_getaffinity of thread {saved_tid}")));
    };
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

/// Most stored pages of a live thread's stack area [`live_stacks`] writes
/// (1 MiB): an area holding a thread's stack pointer that holds more is
/// not a plain thread stack (a runtime's heap its green threads' stacks
/// live in) and stays lazy.
pub const LIVE_STACK_PAGES: u64 = 256;

/// uffd mode: the areas holding the stack pointer of a thread other than
/// the main one (private anonymous read-write memory with at most
/// [`LIVE_STACK_PAGES`] stored pages), and the `PROT_NONE` guard right
/// below each. They are mapped anonymous and their stored pages written
/// with the main stack's before any thread exists, instead of registered
/// with the userfaultfd: a 16-thread copy then skips 30 `UFFDIO_REGISTER`
/// calls and the filling of each thread's rseq page (its descriptor, TLS
/// and rseq area sit at the top of its stack), and its threads take no
/// fault on their stacks once they run. Plain anonymous memory keeps its
/// own semantics (zeros after `MADV_DONTNEED`, as a thread's exit does).
pub fn live_stacks(
    state: &ProcessState,
    pages: &[snapshotter::store::AreaPages],
) -> std::collections::HashSet<usize> {
    use snapshotter::state::AreaKind;
    let areas = &state.areas;
    let plain = |i: usize| areas[i].kind == AreaKind::Anonymous && !areas[i].shared;
    let mut out = std::collections::HashSet::new();
    for t in &state.threads[1..] {
        let sp = t.registers.rsp;
        let Some(i) = areas.iter().position(|a| (a.start..a.end).contains(&sp)) else {
            continue;
        };
        let a = &areas[i];
        let small = pages
            .get(i)
            .is_some_and(|p| p.counts().hashed <= LIVE_STACK_PAGES);
        if !(plain(i) && a.prot.read && a.prot.write && small) {
            continue;
        }
        out.insert(i);
        if i > 0 {
            let below = &areas[i - 1];
            if plain(i - 1)
                && below.end == a.start
                && !below.prot.read
                && !below.prot.write
                && !below.prot.exec
            {
                out.insert(i - 1);
            }
        }
    }
    out
}

/// uffd mode: the pages a thread reads the moment it runs again, beyond
/// its stack ([`live_stacks`]): the futex word of a thread captured in a
/// `futex` call (`rdi`). An untimed wait re-enters the call, which reads the
/// word at once; a timed one returns `EINTR` and glibc reads the word
/// again. Filled before the resume, they spare a 16-thread copy's threads,
/// all waking into the same lazy page, a round of faults through the page
/// server while the restorer is finishing (measured with the threads
/// bench: one such page, faulted by every thread right after the detach).
/// Sorted, each page once.
pub fn restart_pages(state: &ProcessState) -> Vec<u64> {
    let mut pages: Vec<u64> = state
        .threads
        .iter()
        .filter(|t| {
            t.registers.orig_rax == libc::SYS_futex as u64
                && t.registers.restart_pending() != Restart::None
        })
        .map(|t| t.registers.rdi & !(snapshotter::state::PAGE_SIZE - 1))
        .collect();
    pages.sort_unstable();
    pages.dedup();
    pages
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
