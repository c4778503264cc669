//! Signal dispositions of the copy, process-wide (the restore side of
//! `snapshotter::capture::signals`, state `snapshotter::state::SignalState`):
//! one `rt_sigaction` per saved handler, and one resetting each disposition
//! the stub had that the snapshot does not. Run by the main thread before
//! the other threads exist (they share the handlers). The blocked masks are
//! per thread ([`super::thread::set_mask`]).

use snapshotter::state::SignalState;

use super::batch::Batch;
use super::remote::{bytes_of, Remote};
use super::RestoreError;

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
    saved: &SignalState,
) -> Result<(), RestoreError> {
    let stub_set = stub_dispositions(remote.pid())?;
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
            super::batch::CallName::Numbered("rt_sigaction(", signal as u64, ")"),
            libc::SYS_rt_sigaction,
            [signal as u64, addr, 0, 8, 0, 0],
        );
    }
    Ok(())
}
