//! Sandboxes: a function process in its own namespaces and cgroup.
//!
//! A sandbox is made of Linux primitives only, no container runtime:
//!
//! ```text
//!  thaw server
//!    └─ sandbox-init (outer)       joins the cgroup (and the network namespace
//!         │                        made for an outbound sandbox), unshares
//!         │                        mnt/pid/ipc/uts (and net for the others)
//!         └─ init, pid 1           builds the root filesystem, pivots into it, reaps
//!              └─ function, pid 2  unprivileged uid, no capabilities, no_new_privs
//! ```
//!
//! * The outer process is the thaw binary run with a hidden subcommand (see
//!   [`init::init_main`]); it receives its [`SandboxSpec`] in the environment.
//! * pid 1 keeps ordinary signal semantics for the function: a pid 1 ignores
//!   signals it has no handler for, even SIGKILL sent from inside, so the
//!   function is never pid 1. When the function exits, pid 1 exits with the
//!   same status, and the kernel kills whatever else was left in the
//!   namespace (a fork bomb dies with it).
//! * A stub sandbox made recyclable ([`recycle`], loopback-only network)
//!   keeps its pid 1 after the copy: on the server's order pid 1 kills
//!   every other process of the namespace, resets what a copy could leave
//!   (`/tmp`, the IPC namespace, the host name; the mount table and the
//!   network namespace are checked) and forks the next stub, so a torn-down
//!   copy's sandbox becomes its version's next spare. A copy that exits on
//!   its own still ends its sandbox as above.
//! * Every process of the sandbox dies with the server: the outer process and
//!   pid 1 both have `PR_SET_PDEATHSIG(SIGKILL)`, and pid 1's death kills the
//!   whole pid namespace.
//!
//! The root filesystem ([`mounts`]) is a small read-only tmpfs holding
//! read-only binds of what the function's runtime needs of the host, an
//! allow-list declared per runtime in [`binds`] (`/usr`, a few files of
//! `/etc`; never `/home`, `/root`, `/opt`, `/srv`, `/var`, ...), its own
//! `/etc/passwd` and `/etc/group`, the function's code
//! at `/var/task`, the runtime at `/var/runtime`, a size-limited tmpfs `/tmp`,
//! a fresh `/proc`, and a `/dev` with only `null`, `zero`, `full`, `random`
//! and `urandom`. thaw's data directory is masked with an empty read-only
//! tmpfs.

pub mod binds;
pub mod init;
mod launch;
mod mounts;
pub mod net;
pub mod netns_pool;
pub mod open_files;
mod process;
pub mod recycle;
pub mod seccomp;
pub mod timens;
pub mod zygote;

pub use launch::{
    host_pid_of, LaunchError, LaunchPhases, LaunchSpec, Sandbox, SandboxConfig, SandboxExit,
};

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Environment variable of the launching process (a benchmark's, not the
/// server's): when set to a folder, every sandbox's init appends its timing
/// points to `<folder>/<sandbox id>`: `init` (its spec read), `joined` (its
/// cgroups joined), `unshared` (its namespaces made), `pid1` (pid 1 running),
/// `root` (the root's mounts built), `ready` (host name and loopback set, the
/// function about to be started), each with `CLOCK_MONOTONIC` in ns. For
/// benchmarks only: the init keeps that file open, so a restore stub's copy
/// would inherit it.
pub const PHASES_DIR_ENV: &str = "THAW_SANDBOX_PHASES_DIR";

/// Environment variable that carries the JSON [`SandboxSpec`] to the init.
pub const SPEC_ENV: &str = "THAW_SANDBOX_SPEC";

/// The fd on which the init reports a setup failure (closed on success).
/// High, so that descriptors handed to a restore stub can take the low
/// numbers; below the sandbox's `RLIMIT_NOFILE`.
pub const STATUS_FD: i32 = 1000;

/// In a stub sandbox: pid 1's end of a socket on which the restorer hands
/// it a `uffd` copy's userfaultfd to hold (see [`init`],
/// `Sandbox::uffd_keeper`). Above [`STATUS_FD`], so never a number the
/// restorer places descriptors at; the stub closes it.
pub const KEEPER_FD: i32 = STATUS_FD + 1;
/// The fd at which an outbound sandbox's init finds the network namespace
/// the server made for it ([`net`]); the init joins it and closes it.
pub const NETNS_FD: i32 = STATUS_FD - 1;

/// The uid and gid functions run as by default (`nobody`).
pub const DEFAULT_UID: u32 = 65534;

/// What network a sandbox gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Network {
    /// A network namespace of its own with only the loopback interface.
    #[default]
    None,
    /// A network namespace of its own joined to the host by a veth pair,
    /// NAT to the outside, private and host addresses refused unless
    /// `network_allow` opens them ([`net`]).
    Outbound,
}

/// Everything the sandbox init needs, serialised into [`SPEC_ENV`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SandboxSpec {
    /// Sandbox id, for messages.
    pub id: String,
    /// An empty host directory used as the mount point of the new root.
    pub root_dir: PathBuf,
    /// Host directory bound read-only at `/var/task`.
    pub code_dir: PathBuf,
    /// Host directory bound read-only at `/var/runtime`, if any.
    pub runtime_dir: Option<PathBuf>,
    /// Host paths bound read-only at the same place: the runtime's
    /// allow-list ([`binds`]).
    pub binds: Vec<PathBuf>,
    /// Host paths hidden inside the sandbox.
    pub mask: Vec<PathBuf>,
    /// Size of the private `/tmp`, MiB.
    pub tmp_mb: u64,
    /// Network mode.
    pub network: Network,
    /// Outbound: the fd ([`NETNS_FD`]) of the network namespace to join
    /// instead of making one.
    #[serde(default)]
    pub netns_fd: Option<i32>,
    /// Outbound: host file bound over the sandbox's `/etc/resolv.conf`.
    #[serde(default)]
    pub resolv_conf: Option<PathBuf>,
    /// uid the function runs as.
    pub uid: u32,
    /// gid the function runs as.
    pub gid: u32,
    /// `cgroup.procs` files the init writes its pid into.
    pub cgroup_procs: Vec<PathBuf>,
    /// The function's command line; `argv[0]` is an absolute path.
    pub argv: Vec<String>,
    /// The function's whole environment.
    pub env: Vec<(String, String)>,
    /// Working directory inside the sandbox.
    pub cwd: PathBuf,
    /// Host name inside the sandbox.
    pub hostname: String,
    /// `RLIMIT_NOFILE` of the function.
    pub nofile: u64,
    /// Run the function without address-space randomisation, so that every
    /// boot of a runtime lays out memory alike (snapshots of different boots
    /// and functions then share more pages).
    pub no_aslr: bool,
    /// Instead of executing `argv`, start a restore stub as pid 2 that waits
    /// in `pause()` (privileged, fds 0-4 in place) for a restorer to turn
    /// into a copy.
    pub stub: bool,
    /// Descriptors the launcher placed for the stub besides 0-4 (files the
    /// restorer maps, the image, the executable): the stub keeps them.
    #[serde(default)]
    pub keep_fds: Vec<i32>,
    /// Files the stub opens at these numbers inside the sandbox, as the
    /// function ([`open_files`]); the restorer checks them afterwards.
    #[serde(default)]
    pub open_files: Vec<open_files::OpenFile>,
    /// Where the init appends its timing points (`label monotonic-ns`
    /// lines), when the launcher was asked to ([`PHASES_DIR_ENV`]).
    #[serde(default)]
    pub phases_file: Option<PathBuf>,
    /// A time namespace for the sandbox's processes (a restore stub's):
    /// the offsets of `CLOCK_MONOTONIC` and `CLOCK_BOOTTIME` they see
    /// ([`timens`]); `None`: the host's clocks.
    #[serde(default)]
    pub time_offsets: Option<snapshotter::state::Clocks>,
    /// A stub sandbox whose pid 1 survives its copy and, on the server's
    /// order, resets the sandbox and starts a new stub ([`recycle`]).
    #[serde(default)]
    pub recyclable: bool,
}
