//! Restoring the kernel state of the copy beside its memory: mm fields,
//! signal dispositions and mask, rseq, per-thread registrations, process
//! attributes, and finally the registers (the restore side of
//! `snapshotter::capture::{mm, signals, thread}` and `ptrace`).
//!
//! `struct prctl_mm_map` as `PR_SET_MM_MAP` takes it (104 bytes):
//!
//! ```text
//! u64 start_code end_code start_data end_data start_brk brk start_stack
//!     arg_start arg_end env_start env_end
//! u64 auxv (pointer)   u32 auxv_size (bytes)   u32 exe_fd
//! ```

use snapshotter::state::{ProcessState, Restart, Rseq};

use super::batch::Batch;
use super::remote::{bytes_of, Remote};
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

/// Sets the blocked signal mask.
pub fn set_mask(remote: &Remote, state: &ProcessState) -> Result<(), RestoreError> {
    let mut mask = state.signals.blocked;
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

/// `set_tid_address`, `set_robust_list`, `sigaltstack`.
pub fn set_thread(batch: &mut Batch, state: &ProcessState) -> Result<(), RestoreError> {
    let t = &state.thread;
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
    Ok(())
}

/// cwd, umask, personality and name (in `batch`), and resource limits
/// (set directly).
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
    let mut comm = state.comm.clone().into_bytes();
    comm.truncate(15);
    comm.push(0);
    let addr = batch.data(&comm)?;
    batch.call(
        "prctl(PR_SET_NAME)",
        libc::SYS_prctl,
        [libc::PR_SET_NAME as u64, addr, 0, 0, 0, 0],
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

/// Highest capability number this code knows (`CAP_LAST_CAP` of Linux 6.x).
const CAP_LAST: u32 = 40;

/// Credentials, last in the batch (they may drop the privileges the calls
/// before needed): bounding set, groups, gids, uids, `NoNewPrivs`, and
/// `PR_SET_DUMPABLE` (changing ids clears it; the original was dumpable or
/// it could not have been captured). Capabilities follow the usual rules of
/// a uid change. The seccomp policy comes after (`super::seccomp`).
pub fn set_credentials(batch: &mut Batch, state: &ProcessState) -> Result<(), RestoreError> {
    let p = &state.process;
    // Mode 2 (thaw's policy, the only filter capture accepts) is
    // reinstalled after this (`super::seccomp`); strict mode is refused.
    super::seccomp::wanted(state, false)?;
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
    batch.call(
        "prctl(PR_SET_DUMPABLE)",
        libc::SYS_prctl,
        [libc::PR_SET_DUMPABLE as u64, 1, 0, 0, 0, 0],
    );
    if p.no_new_privs {
        batch.call(
            "prctl(PR_SET_NO_NEW_PRIVS)",
            libc::SYS_prctl,
            [libc::PR_SET_NO_NEW_PRIVS as u64, 1, 0, 0, 0, 0],
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
pub fn set_registers(remote: &mut Remote, state: &ProcessState) -> Result<(), RestoreError> {
    remote.park()?;
    remote
        .seized
        .set_xsave(&state.xsave)
        .map_err(|e| RestoreError::Stub(e.to_string()))?;
    let regs = match state.registers.restart_pending() {
        Restart::RestartBlock => state.registers.with_restart_applied(),
        Restart::None | Restart::Same => state.registers,
    };
    remote
        .seized
        .set_registers(&regs)
        .map_err(|e| RestoreError::Stub(e.to_string()))?;
    Ok(())
}
