//! Seccomp filters of the captured process: read back with
//! `PTRACE_SECCOMP_GET_FILTER` and compared with the programs the caller
//! accepts ([`super::CaptureOptions::seccomp_filters`], thaw's own function
//! policy). A filter's program is all the kernel keeps of it, so a copy can
//! only get back a filter the restorer knows: any other filter, and strict
//! mode, is refused (the restore counterpart is `pool::restore::seccomp`).

use super::refuse::Refusal;
use super::CaptureError;

/// `PTRACE_SECCOMP_GET_FILTER`.
const PTRACE_SECCOMP_GET_FILTER: libc::c_uint = 0x420c;
/// Largest classic BPF program (`BPF_MAXINSNS`), in instructions.
const MAX_INSNS: usize = 4096;
/// Most filters read from one process (the kernel caps a chain by total
/// instructions; this bounds the loop).
const MAX_FILTERS: u64 = 64;

/// The programs of `pid`'s filters, oldest first (index 0 of
/// `PTRACE_SECCOMP_GET_FILTER` is the first installed; 8 bytes per
/// instruction, as `struct sock_filter`). `pid` must be stopped under our
/// ptrace.
pub fn filters(pid: i32) -> Result<Vec<Vec<u8>>, CaptureError> {
    let mut out = Vec::new();
    for index in 0..MAX_FILTERS {
        let mut buf = vec![0u8; MAX_INSNS * 8];
        // SAFETY: PTRACE_SECCOMP_GET_FILTER writes the program of filter
        // `index` (at most BPF_MAXINSNS instructions) into `buf`.
        let n = unsafe {
            libc::ptrace(
                PTRACE_SECCOMP_GET_FILTER,
                pid,
                index as usize,
                buf.as_mut_ptr(),
            )
        };
        if n < 0 {
            let errno = nix::errno::Errno::last();
            // ENOENT: no filter at this index, the chain is read.
            if errno == nix::errno::Errno::ENOENT {
                return Ok(out);
            }
            return Err(CaptureError::Sys {
                pid,
                call: "ptrace(PTRACE_SECCOMP_GET_FILTER)",
                errno,
            });
        }
        buf.truncate(n as usize * 8);
        out.push(buf);
    }
    Err(CaptureError::refused(
        pid,
        Refusal::Seccomp {
            what: format!("more than {MAX_FILTERS} seccomp filters"),
        },
    ))
}

/// Refuses `pid` unless it runs without seccomp (`mode` 0, from
/// `/proc/PID/status`) or only under filters listed in `accepted`.
pub fn check(pid: i32, mode: u32, accepted: &[Vec<u8>]) -> Result<(), CaptureError> {
    match mode {
        0 => Ok(()),
        2 => {
            let chain = filters(pid)?;
            for (index, program) in chain.iter().enumerate() {
                if !accepted.iter().any(|a| a == program) {
                    return Err(CaptureError::refused(
                        pid,
                        Refusal::Seccomp {
                            what: format!(
                                "seccomp filter {index} ({} instructions) is not thaw's function policy",
                                program.len() / 8
                            ),
                        },
                    ));
                }
            }
            Ok(())
        }
        other => Err(CaptureError::refused(
            pid,
            Refusal::Seccomp {
                what: format!("seccomp mode {other} (strict)"),
            },
        )),
    }
}
