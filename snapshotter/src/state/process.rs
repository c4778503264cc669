//! Process attributes outside memory, signals and threads: working
//! directory, umask, resource limits, credentials, `NoNewPrivs`, seccomp
//! mode, `oom_score_adj`, the child subreaper flag, membarrier
//! registrations (the parent-death signal is per thread:
//! [`super::ThreadState::parent_death_signal`]). Capture: `capture::process`; restore: `pool::restore::process`
//! (credentials there too) and `pool::restore::seccomp`.

use serde::{Deserialize, Serialize};

/// Per-process attributes outside memory and registers.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ProcessAttributes {
    /// Target of `/proc/pid/cwd`.
    pub cwd: String,
    /// File creation mask.
    pub umask: u32,
    /// Resource limits, indexed by `RLIMIT_*` number.
    pub rlimits: Vec<Rlimit>,
    /// Real, effective, saved and filesystem uid.
    pub uids: [u32; 4],
    /// Real, effective, saved and filesystem gid.
    pub gids: [u32; 4],
    /// Supplementary groups.
    pub groups: Vec<u32>,
    /// Inheritable, permitted, effective, bounding and ambient capabilities.
    pub capabilities: [u64; 5],
    /// `NoNewPrivs` flag.
    pub no_new_privs: bool,
    /// Seccomp mode (0 none, 1 strict, 2 filter).
    pub seccomp: u32,
    /// `/proc/PID/oom_score_adj`, -1000..=1000 (a sandboxed copy never
    /// gets less than its sandbox gives it).
    pub oom_score_adj: i32,
    /// `PR_GET_CHILD_SUBREAPER`: orphaned descendants are reparented to
    /// this process.
    pub child_subreaper: bool,
    /// `membarrier(MEMBARRIER_CMD_GET_REGISTRATIONS)`: the `REGISTER_*`
    /// commands the process ran (a bit per command), run again in a copy.
    pub membarrier: u32,
}

/// One resource limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rlimit {
    /// `RLIMIT_*` number.
    pub resource: u32,
    /// Soft limit (`u64::MAX` is infinity).
    pub soft: u64,
    /// Hard limit (`u64::MAX` is infinity).
    pub hard: u64,
}
