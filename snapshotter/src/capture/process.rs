//! Process attributes ([`ProcessAttributes`]) and the personality: the
//! working directory (`/proc/PID/cwd`), umask, credentials, capabilities,
//! `NoNewPrivs` and seccomp mode (`/proc/PID/status`), resource limits
//! (`prlimit`, or `/proc/PID/limits` when that is refused), and
//! `/proc/PID/personality`. Nothing is injected: all of it is readable from
//! outside. Restore: `pool::restore::process`.

use super::procfs::{self, Status};
use super::CaptureError;
use crate::state::{ProcessAttributes, Rlimit};

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
