//! Process attributes ([`ProcessAttributes`]) and the personality: the
//! working directory (`/proc/PID/cwd`), umask, credentials, capabilities,
//! `NoNewPrivs` and seccomp mode (`/proc/PID/status`), resource limits
//! (`prlimit`, or `/proc/PID/limits` when that is refused),
//! `/proc/PID/personality` and `/proc/PID/oom_score_adj`, all read from
//! outside; and two only the process can tell, injected through its held
//! main thread ([`injected`]):
//!
//! ```text
//! prctl(PR_GET_CHILD_SUBREAPER, &i32)            -> the subreaper flag
//! membarrier(MEMBARRIER_CMD_GET_REGISTRATIONS)   -> registered commands
//! ```
//!
//! Restore: `pool::restore::process`.

use super::inject::Injector;
use super::memory;
use super::procfs::{self, Status};
use super::ptrace::Seized;
use super::CaptureError;
use crate::state::{ProcessAttributes, Rlimit};

/// `MEMBARRIER_CMD_GET_REGISTRATIONS` (Linux 6.3).
const MEMBARRIER_CMD_GET_REGISTRATIONS: u64 = 1 << 9;

/// The child subreaper flag and the membarrier registrations of the
/// process held by `seized` (its main thread), into `attributes`. A kernel
/// without `MEMBARRIER_CMD_GET_REGISTRATIONS` (`EINVAL`), or one built
/// without membarrier (`ENOSYS`), has none to report.
pub fn injected(
    seized: &mut Seized,
    injector: &Injector,
    attributes: &mut ProcessAttributes,
) -> Result<(), CaptureError> {
    let pid = seized.pid();
    let (rc, subreaper, membarrier) =
        injector.with_scratch(seized, 8, |injector, seized, scratch| {
            let rc = injector.syscall(
                seized,
                libc::SYS_prctl,
                [libc::PR_GET_CHILD_SUBREAPER as u64, scratch, 0, 0, 0, 0],
            )?;
            let mut raw = [0u8; 4];
            memory::read_remote(pid, scratch, &mut raw)?;
            let membarrier = injector.syscall(
                seized,
                libc::SYS_membarrier,
                [MEMBARRIER_CMD_GET_REGISTRATIONS, 0, 0, 0, 0, 0],
            )?;
            Ok((rc, i32::from_ne_bytes(raw), membarrier))
        })?;
    if rc < 0 {
        return Err(CaptureError::Injected {
            pid,
            call: "prctl(PR_GET_CHILD_SUBREAPER)".into(),
            errno: -rc as i32,
        });
    }
    attributes.child_subreaper = subreaper != 0;
    attributes.membarrier = match membarrier {
        n if n >= 0 => n as u32,
        n if -n == libc::EINVAL as i64 || -n == libc::ENOSYS as i64 => 0,
        n => {
            return Err(CaptureError::Injected {
                pid,
                call: "membarrier(MEMBARRIER_CMD_GET_REGISTRATIONS)".into(),
                errno: -n as i32,
            })
        }
    };
    Ok(())
}

/// `/proc/PID/oom_score_adj`.
fn oom_score_adj(pid: i32) -> Result<i32, CaptureError> {
    let text = procfs::read_text(pid, "oom_score_adj")?;
    text.trim().parse().map_err(|_| CaptureError::Parse {
        path: format!("/proc/{pid}/oom_score_adj"),
        what: format!("{text:?} is not a number"),
    })
}

/// The personality of `pid` (`/proc/PID/personality`, hexadecimal).
pub fn personality(pid: i32) -> Result<u32, CaptureError> {
    let text = procfs::read_text(pid, "personality")?;
    u32::from_str_radix(text.trim(), 16).map_err(|_| CaptureError::Parse {
        path: format!("/proc/{pid}/personality"),
        what: format!("{text:?} is not hexadecimal"),
    })
}

/// Number of `RLIMIT_*` resources Linux has (`RLIM_NLIMITS`).
const RLIMITS: u32 = 16;

/// cwd, umask, limits and credentials of `pid` (`status` is its `/proc/PID/status`).
pub fn capture(pid: i32, status: &Status) -> Result<ProcessAttributes, CaptureError> {
    let rlimits = match rlimits_prlimit(pid) {
        Ok(r) => r,
        // Reading another user's limits with prlimit needs CAP_SYS_RESOURCE,
        // which some hosts withhold even from root; /proc/PID/limits has them
        // too (ptrace access, which capture has anyway).
        Err(CaptureError::Sys {
            errno: nix::errno::Errno::EPERM,
            ..
        }) => rlimits_procfs(pid)?,
        Err(e) => return Err(e),
    };
    Ok(ProcessAttributes {
        rlimits,
        ..attributes_rest(pid, status)?
    })
}

/// Limits from `/proc/PID/limits`: one line per resource in `RLIMIT_*` order
/// after a header, columns at fixed offsets (name 26, soft 21, hard 21).
fn rlimits_procfs(pid: i32) -> Result<Vec<Rlimit>, CaptureError> {
    let text =
        std::fs::read_to_string(format!("/proc/{pid}/limits")).map_err(|e| CaptureError::Sys {
            pid,
            call: "read /proc/PID/limits",
            errno: nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
        })?;
    let parse = |field: &str| -> Option<u64> {
        match field.trim() {
            "unlimited" => Some(u64::MAX),
            n => n.parse().ok(),
        }
    };
    let mut out = Vec::new();
    for (resource, line) in text.lines().skip(1).take(RLIMITS as usize).enumerate() {
        let soft = line.get(26..47).and_then(parse);
        let hard = line.get(47..68).and_then(parse);
        let (Some(soft), Some(hard)) = (soft, hard) else {
            return Err(CaptureError::Sys {
                pid,
                call: "parse /proc/PID/limits",
                errno: nix::errno::Errno::EINVAL,
            });
        };
        out.push(Rlimit {
            resource: resource as u32,
            soft,
            hard,
        });
    }
    Ok(out)
}

fn rlimits_prlimit(pid: i32) -> Result<Vec<Rlimit>, CaptureError> {
    let mut rlimits = Vec::new();
    for resource in 0..RLIMITS {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: a null new-limit pointer only reads; `limit` is a valid
        // out-parameter for the old limit.
        let rc = unsafe { libc::prlimit(pid, resource as _, std::ptr::null(), &mut limit) };
        if rc != 0 {
            return Err(CaptureError::Sys {
                pid,
                call: "prlimit",
                errno: nix::errno::Errno::last(),
            });
        }
        rlimits.push(Rlimit {
            resource,
            soft: limit.rlim_cur,
            hard: limit.rlim_max,
        });
    }
    Ok(rlimits)
}

fn attributes_rest(pid: i32, status: &Status) -> Result<ProcessAttributes, CaptureError> {
    Ok(ProcessAttributes {
        cwd: procfs::read_link(pid, "cwd")?,
        umask: status.octal("Umask")?,
        rlimits: Vec::new(),
        uids: status.ids("Uid")?,
        gids: status.ids("Gid")?,
        groups: status.numbers("Groups")?,
        capabilities: [
            status.hex("CapInh")?,
            status.hex("CapPrm")?,
            status.hex("CapEff")?,
            status.hex("CapBnd")?,
            status.hex("CapAmb")?,
        ],
        no_new_privs: status.number("NoNewPrivs")? != 0,
        seccomp: status.number("Seccomp")? as u32,
        oom_score_adj: oom_score_adj(pid)?,
        // Read inside the process by `injected`.
        child_subreaper: false,
        membarrier: 0,
    })
}

#[cfg(test)]
mod rlimit_tests {
    use super::*;

    #[test]
    fn procfs_limits_match_prlimit() {
        let me = std::process::id() as i32;
        assert_eq!(rlimits_procfs(me).unwrap(), rlimits_prlimit(me).unwrap());
    }
}
