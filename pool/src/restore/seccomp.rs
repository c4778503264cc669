//! Reinstalling the function's seccomp policy in a copy (the restore side
//! of `snapshotter::capture::seccomp`).
//!
//! Capture accepts a process only under thaw's own policy
//! ([`crate::sandbox::seccomp`]), so a snapshot in seccomp mode 2 ran under
//! exactly that program: the copy gets it back. A copy restored into a
//! sandbox gets it whatever the snapshot says (the sandbox imposes its
//! policy; a snapshot file is not trusted to relax it). Strict mode (1) is
//! refused.
//!
//! Order: last in the state batch, after the credentials (the copy is then
//! unprivileged, so `no_new_privs` is set first, as the kernel requires)
//! and after every `clone3` of the restorer (the policy makes `clone3`
//! return `ENOSYS`). In `mmap` mode the anonymous-memory guard's filter
//! ([`super::anon`]) was installed before, while privileged; the policy
//! stacks on top of it. The two never act on the same call (the guard
//! traps `madvise`, `mremap`, `execve`, `execveat` and refuses
//! `rt_sigaction(SIGSYS)`; the policy allows all of those), and the guard's
//! handler only makes calls the policy allows.

use snapshotter::state::ProcessState;

use super::batch::Batch;
use super::remote::bytes_of;
use super::RestoreError;
use crate::sandbox::seccomp::program;

/// `struct sock_fprog` as the copy reads it (a 64-bit pointer).
#[repr(C)]
#[derive(Clone, Copy)]
struct SockFprog {
    len: u16,
    pad: [u16; 3],
    filter: u64,
}
const _: () = assert!(std::mem::size_of::<SockFprog>() == 16);

const SECCOMP_SET_MODE_FILTER: u64 = 1;

/// Whether the copy of `state` gets the policy: it ran under it (mode 2),
/// or `sandboxed`. Refuses strict mode.
pub fn wanted(state: &ProcessState, sandboxed: bool) -> Result<bool, RestoreError> {
    match state.process.seccomp {
        0 => Ok(sandboxed),
        2 => Ok(true),
        mode => Err(RestoreError::Unsupported(format!(
            "the process ran in seccomp mode {mode} (strict), which thaw does not restore"
        ))),
    }
}

/// `SECCOMP_FILTER_FLAG_TSYNC`.
const SECCOMP_FILTER_FLAG_TSYNC: u64 = 1;

/// Adds `no_new_privs` and the policy's installation to `batch` when
/// [`wanted`]. Call after the credentials, once every thread exists: the
/// filter reaches all of them (`SECCOMP_FILTER_FLAG_TSYNC`).
pub fn install(
    batch: &mut Batch,
    state: &ProcessState,
    sandboxed: bool,
) -> Result<(), RestoreError> {
    if !wanted(state, sandboxed)? {
        return Ok(());
    }
    let program = program();
    let mut code = Vec::with_capacity(program.len() * 8);
    for f in program {
        code.extend_from_slice(&f.code.to_ne_bytes());
        code.push(f.jt);
        code.push(f.jf);
        code.extend_from_slice(&f.k.to_ne_bytes());
    }
    let code_addr = batch.data(&code)?;
    let fprog = SockFprog {
        len: program.len() as u16,
        pad: [0; 3],
        filter: code_addr,
    };
    let fprog_addr = batch.data(bytes_of(&fprog))?;
    batch.call(
        "prctl(PR_SET_NO_NEW_PRIVS) (before the seccomp policy)",
        libc::SYS_prctl,
        [libc::PR_SET_NO_NEW_PRIVS as u64, 1, 0, 0, 0, 0],
    );
    // TSYNC: every thread of the copy gets it (they all run the same
    // filters so far: none, or the anonymous-memory guard, also TSYNC).
    batch.call(
        "seccomp (function policy, all threads)",
        libc::SYS_seccomp,
        [
            SECCOMP_SET_MODE_FILTER,
            SECCOMP_FILTER_FLAG_TSYNC,
            fprog_addr,
            0,
            0,
            0,
        ],
    );
    Ok(())
}
