//! Restoring each thread of the copy (the restore side of
//! `snapshotter::capture::thread`, state `snapshotter::state::ThreadState`):
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
//! set_registers   per thread: park, xsave, registers (restart rule), mask
//! ```
//!
//! The credentials are set in every thread too ([`super::credentials`]).

use snapshotter::state::{ProcessState, Restart, Rseq, Sched, ThreadState};

use super::batch::Batch;
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

/// Step 7 of the restore: makes every thread but the main one
/// ([`create_threads`]; they are added to `threads`, see there), then in
/// each, its scheduling ([`set_sched`]), its registrations ([`set_thread`])
/// and its credentials ([`super::credentials::set_credentials`]): their
/// batches run side by side, up to [`super::batch::SLOTS`] threads at once,
/// in `scratch`.
pub fn restore_others(
    remote: &mut Remote,
    threads: &mut Vec<Remote>,
    saved: &[ThreadState],
    scratch: u64,
    state: &ProcessState,
    credentials: &Credentials,
    timings: &mut RestoreTimings,
) -> Result<(), RestoreError> {
    create_threads(remote, state, threads)?;
    for (group, saved) in threads
        .chunks_mut(super::batch::SLOTS)
        .zip(saved.chunks(super::batch::SLOTS))
    {
        let mut batches = Vec::with_capacity(group.len());
        for (slot, (t, saved)) in group.iter().zip(saved).enumerate() {
            set_sched(t.pid(), saved.tid, &saved.sched)?;
            let mut batch = Batch::in_slot(scratch, slot);
            set_thread(&mut batch, saved)?;
            super::credentials::set_credentials(&mut batch, state, credentials)?;
            timings.batched += batch.len() as u32;
            batches.push(batch);
        }
        Remote::run_in_threads(group, batches)?;
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
