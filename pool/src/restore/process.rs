//! Process attributes of the copy (the restore side of
//! `snapshotter::capture::process`, state
//! `snapshotter::state::ProcessAttributes`): working directory, umask and
//! personality, run by the main thread before the other threads are cloned
//! (they inherit them), and resource limits, set from the restorer with
//! `prlimit`. The credentials in the same state are set apart and last
//! ([`super::credentials`]).

use snapshotter::state::ProcessAttributes;

use super::batch::Batch;
use super::remote::Remote;
use super::RestoreError;

/// cwd, umask and personality (in `batch`, run by the main thread before
/// the other threads are cloned: they inherit the personality), and
/// resource limits (set directly).
pub fn set_attributes(
    remote: &Remote,
    batch: &mut Batch,
    p: &ProcessAttributes,
    personality: u32,
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
