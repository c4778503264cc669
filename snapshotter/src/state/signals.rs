//! Signal dispositions: process-wide, shared by the threads (each thread's
//! mask is in [`super::thread`]). Capture: `capture::signals`; restore:
//! `pool::restore::signals`.

use serde::{Deserialize, Serialize};

/// Signal dispositions of the process.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct SignalState {
    /// Ignored signals as `/proc/pid/status` `SigIgn` shows them.
    pub ignored: u64,
    /// Caught signals as `/proc/pid/status` `SigCgt` shows them.
    pub caught: u64,
    /// Dispositions read with `rt_sigaction` inside the process, for every
    /// signal that is caught or ignored, and for `SIGCHLD` (whose flags
    /// matter even when it has the default action). Signals not listed have
    /// the default action with no flags.
    pub handlers: Vec<SigAction>,
}

/// One signal's `struct kernel_sigaction` (x86_64 layout).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SigAction {
    /// Signal number, 1..=64.
    pub signal: u32,
    /// Handler address, or 0 (`SIG_DFL`) / 1 (`SIG_IGN`).
    pub handler: u64,
    /// `SA_*` flags (includes `SA_RESTORER` as glibc sets it).
    pub flags: u64,
    /// Address of the signal-return trampoline.
    pub restorer: u64,
    /// Signals blocked while the handler runs.
    pub mask: u64,
}
