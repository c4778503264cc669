//! Process attributes of the copy (the restore side of
//! `snapshotter::capture::process`, state
//! `snapshotter::state::ProcessAttributes`): working directory, umask,
//! personality, the child subreaper flag and the membarrier registrations,
//! run by the main thread before the other threads are cloned (they
//! inherit the personality); resource limits and `oom_score_adj`, set from
//! the restorer (`prlimit`, `/proc/PID/oom_score_adj`). The credentials in
//! the same state are set apart and last ([`super::credentials`]), and
//! with them `no_new_privs` (as saved for `thaw restore`, always set in a
//! sandbox).
//!
//! ```text
//! chdir, umask, personality
//! prctl(PR_SET_CHILD_SUBREAPER, 1)             if it was one
//! membarrier(MEMBARRIER_CMD_REGISTER_*, 0, 0)  per saved registration
//! ```
//!
//! `oom_score_adj` within the sandbox's policy: a sandboxed copy
//! ([`Credentials::Function`]) gets the saved value or what its sandbox gave
//! the stub, whichever is higher (a function never makes itself less
//! likely to be killed than its sandbox says); `thaw restore` gives the
//! saved value, or keeps the higher one it has when lowering is refused
//! (it needs `CAP_SYS_RESOURCE`, which some hosts withhold even from
//! root).

use snapshotter::state::ProcessAttributes;

use super::batch::Batch;
use super::remote::Remote;
use super::{Credentials, RestoreError};

/// The membarrier `REGISTER_*` commands a copy runs again:
/// `GLOBAL_EXPEDITED` (1 << 2), `PRIVATE_EXPEDITED` (1 << 4),
/// `PRIVATE_EXPEDITED_SYNC_CORE` (1 << 6), `PRIVATE_EXPEDITED_RSEQ`
/// (1 << 8).
const MEMBARRIER_REGISTRATIONS: [u32; 4] = [1 << 2, 1 << 4, 1 << 6, 1 << 8];

/// The `oom_score_adj` a copy gets: see the module doc.
fn oom_score_adj(saved: i32, stub: i32, credentials: &Credentials) -> i32 {
    match credentials {
        Credentials::Function { .. } => saved.max(stub),
        Credentials::Snapshot => saved,
    }
}

fn sets_oom_score_adj(
    pid: i32,
    p: &ProcessAttributes,
    credentials: &Credentials,
) -> Result<(), RestoreError> {
    let path = format!("/proc/{pid}/oom_score_adj");
    let io = |what: &str, source| RestoreError::Io {
        what: format!("{what} {path}"),
        source,
    };
    let text = std::fs::read_to_string(&path).map_err(|e| io("read", e))?;
    let stub: i32 = text.trim().parse().map_err(|_| {
        io(
            "parse",
            std::io::Error::new(std::io::ErrorKind::InvalidData, text.clone()),
        )
    })?;
    let value = oom_score_adj(p.oom_score_adj, stub, credentials);
    if value == stub {
        return Ok(());
    }
    match std::fs::write(&path, value.to_string()) {
        Ok(()) => Ok(()),
        // Lowering it needs CAP_SYS_RESOURCE, which some hosts withhold
        // even from root: the copy keeps the higher value (more likely to
        // be killed, never less).
        Err(e) if value < stub && e.kind() == std::io::ErrorKind::PermissionDenied => {
            tracing::warn!(
                pid,
                saved = value,
                kept = stub,
                "cannot lower the copy's oom_score_adj without CAP_SYS_RESOURCE"
            );
            Ok(())
        }
        Err(e) => Err(io("write", e)),
    }
}

/// cwd, umask, personality, subreaper flag and membarrier registrations
/// (in `batch`, run by the main thread before the other threads are
/// cloned: they inherit the personality), resource limits and
/// `oom_score_adj` (set directly; see the module doc).
pub fn set_attributes(
    remote: &Remote,
    batch: &mut Batch,
    p: &ProcessAttributes,
    personality: u32,
    credentials: &Credentials,
) -> Result<(), RestoreError> {
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
        [personality as u64, 0, 0, 0, 0, 0],
    );
    if p.child_subreaper {
        batch.call(
            "prctl(PR_SET_CHILD_SUBREAPER)",
            libc::SYS_prctl,
            [libc::PR_SET_CHILD_SUBREAPER as u64, 1, 0, 0, 0, 0],
        );
    }
    for command in MEMBARRIER_REGISTRATIONS {
        if p.membarrier & command != 0 {
            batch.call(
                format!("membarrier(register {command:#x})"),
                libc::SYS_membarrier,
                [command as u64, 0, 0, 0, 0, 0],
            );
        }
    }
    let pid = remote.pid();
    sets_oom_score_adj(pid, p, credentials)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sandboxed_copy_never_gets_a_lower_oom_score_adj_than_its_sandbox() {
        let function = Credentials::Function { uid: 1, gid: 1 };
        assert_eq!(oom_score_adj(-500, 0, &function), 0);
        assert_eq!(oom_score_adj(300, 0, &function), 300);
        assert_eq!(oom_score_adj(-500, 0, &Credentials::Snapshot), -500);
    }
}
