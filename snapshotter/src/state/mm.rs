//! The mm fields `PR_SET_MM_MAP` restores, auxv and the executable.
//! Capture: `capture::mm`; restore: `pool::restore::mm`.

use serde::{Deserialize, Serialize};

use super::FileIdentity;

/// The fields `PR_SET_MM_MAP` restores, plus auxv and the executable.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[allow(missing_docs)]
pub struct MmState {
    pub start_code: u64,
    pub end_code: u64,
    pub start_data: u64,
    pub end_data: u64,
    pub start_brk: u64,
    /// The current program break (`brk(0)` run inside the process).
    pub brk: u64,
    pub start_stack: u64,
    pub arg_start: u64,
    pub arg_end: u64,
    pub env_start: u64,
    pub env_end: u64,
    /// `/proc/pid/auxv` as (type, value) pairs, including the final
    /// `AT_NULL` pair.
    pub auxv: Vec<(u64, u64)>,
    /// Target of `/proc/pid/exe`.
    pub exe_path: String,
    /// Identity of the executable file.
    pub exe: FileIdentity,
}
