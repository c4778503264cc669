//! Signal mask and dispositions.
//!
//! Dispositions are process-wide (the masks are per thread, see
//! [`super::thread`]); the ignored and caught sets come from
//! `/proc/pid/status`. Handler addresses, flags, restorer and handler masks
//! exist only inside the process: they are read by running
//! `rt_sigaction(sig, NULL, &old, 8)` in it ([`super::inject`]), into
//! scratch memory laid out as the kernel's `struct sigaction`:
//!
//! ```text
//! offset 0   handler   u64
//! offset 8   flags     u64
//! offset 16  restorer  u64
//! offset 24  mask      u64
//! ```

use super::inject::Injector;
use super::memory;
use super::procfs::Status;
use super::ptrace::Seized;
use super::CaptureError;
use crate::state::{SigAction, SignalState};

/// Size of the kernel's `struct sigaction` on x86_64.
const KERNEL_SIGACTION: usize = 32;
/// Number of signals (1..=64).
const SIGNALS: u32 = 64;

/// Reads the signal dispositions through the held main thread.
pub fn capture(
    seized: &mut Seized,
    injector: &Injector,
    status: &Status,
) -> Result<SignalState, CaptureError> {
    let ignored = status.hex("SigIgn")?;
    let caught = status.hex("SigCgt")?;
    let wanted: Vec<u32> = (1..=SIGNALS)
        .filter(|&sig| {
            let bit = 1u64 << (sig - 1);
            (ignored | caught) & bit != 0 || sig == libc::SIGCHLD as u32
        })
        .filter(|&sig| sig != libc::SIGKILL as u32 && sig != libc::SIGSTOP as u32)
        .collect();
    let pid = seized.pid();
    let handlers =
        injector.with_scratch(seized, KERNEL_SIGACTION, |injector, seized, scratch| {
            let mut handlers = Vec::with_capacity(wanted.len());
            for &signal in &wanted {
                let rc = injector.syscall(
                    seized,
                    libc::SYS_rt_sigaction,
                    [u64::from(signal), 0, scratch, 8, 0, 0],
                )?;
                if rc < 0 {
                    return Ok(Err(CaptureError::Injected {
                        pid,
                        call: format!("rt_sigaction({signal})"),
                        errno: -rc as i32,
                    }));
                }
                let mut raw = [0u8; KERNEL_SIGACTION];
                memory::read_remote(pid, scratch, &mut raw)?;
                let word = |i: usize| u64::from_ne_bytes(raw[i * 8..i * 8 + 8].try_into().unwrap());
                handlers.push(SigAction {
                    signal,
                    handler: word(0),
                    flags: word(1),
                    restorer: word(2),
                    mask: word(3),
                });
            }
            Ok(Ok(handlers))
        })??;
    Ok(SignalState {
        ignored,
        caught,
        handlers,
    })
}
