//! Starting and stopping sandboxes, from the server's side.

use std::fs;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::fcntl::OFlag;
use nix::unistd::pipe2;
use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe;
use tokio::process::Command;

use super::process::OuterProcess;

use super::net::{AllowRule, HostNetwork, NetError, NetLease};
use super::{Network, SandboxSpec, KEEPER_FD, NETNS_FD, SPEC_ENV, STATUS_FD};
use crate::cgroup::{Cgroup, CgroupError, CgroupLimits, CgroupRoot};

/// How sandboxes are made on this host. Shared by all launches.
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// The executable that runs the sandbox init (the thaw binary).
    pub init_exe: PathBuf,
    /// Arguments that select the init in that executable.
    pub init_args: Vec<String>,
    /// Directory under which each sandbox gets an empty root mount point.
    pub run_dir: PathBuf,
    /// Host paths masked in every sandbox (the data directory).
    pub mask: Vec<PathBuf>,
    /// uid and gid functions run as.
    pub uid: u32,
    /// gid functions run as.
    pub gid: u32,
    /// Where sandbox cgroups are made.
    pub cgroups: CgroupRoot,
    /// Networking of outbound sandboxes; `None`: they cannot be made.
    pub network: Option<std::sync::Arc<HostNetwork>>,
}

/// What to run in one sandbox, and with which limits.
#[derive(Debug, Clone)]
pub struct LaunchSpec {
    /// Host directory bound read-only at `/var/task`.
    pub code_dir: PathBuf,
    /// Host directory bound read-only at `/var/runtime`.
    pub runtime_dir: Option<PathBuf>,
    /// Host paths the runtime needs, bound read-only at the same place
    /// (an allow-list: [`super::binds::RuntimeBinds::paths`]).
    pub binds: Vec<PathBuf>,
    /// Command line, `argv[0]` absolute.
    pub argv: Vec<String>,
    /// Whole environment of the function.
    pub env: Vec<(String, String)>,
    /// Working directory inside the sandbox.
    pub cwd: PathBuf,
    /// cgroup limits.
    pub limits: CgroupLimits,
    /// Size of `/tmp`, MiB.
    pub tmp_mb: u64,
    /// Network mode.
    pub network: Network,
    /// Private destinations opened to an outbound sandbox.
    pub network_allow: Vec<AllowRule>,
    /// Start without address-space randomisation (see [`SandboxSpec::no_aslr`]).
    pub no_aslr: bool,
    /// Start a stopped restore stub instead of `argv` (see
    /// [`SandboxSpec::stub`]).
    pub stub: bool,
}

/// Errors of starting a sandbox.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// The cgroup could not be made.
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    /// A host-side resource (pipe, directory, process) could not be made.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The init reported that setting the sandbox up failed.
    #[error("sandbox setup failed: {0}")]
    Setup(String),
    /// A restore stub could not open a file its copy names, inside the
    /// sandbox as the function ([`super::open_files`]): the snapshot names
    /// something this sandbox does not give the function.
    #[error("{0}")]
    OpenFile(String),
    /// The network of an outbound sandbox could not be made.
    #[error("sandbox network: {0}")]
    Network(#[from] NetError),
}

fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> LaunchError {
    move |source| LaunchError::Io { what, source }
}

fn nix_io(what: &'static str) -> impl FnOnce(nix::Error) -> LaunchError {
    move |e| LaunchError::Io {
        what,
        source: std::io::Error::from(e),
    }
}

/// How a sandbox ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SandboxExit {
    /// The function exited with this code.
    Exited(i32),
    /// The function was killed by this signal.
    Signaled(i32),
}

impl SandboxExit {
    fn from_status(status: ExitStatus) -> SandboxExit {
        use std::os::unix::process::ExitStatusExt;
        match (status.code(), status.signal()) {
            // The init mirrors a signal death of the function as 128 + signal.
            (Some(code), _) if code > 128 && code < 160 => SandboxExit::Signaled(code - 128),
            (Some(code), _) => SandboxExit::Exited(code),
            (None, Some(sig)) => SandboxExit::Signaled(sig),
            (None, None) => SandboxExit::Exited(255),
        }
    }
}

impl std::fmt::Display for SandboxExit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SandboxExit::Exited(code) => write!(f, "exited with status {code}"),
            SandboxExit::Signaled(sig) => {
                let name = nix::sys::signal::Signal::try_from(*sig)
                    .map(|s| s.as_str().to_string())
                    .unwrap_or_else(|_| format!("signal {sig}"));
                write!(f, "killed by {name}")
            }
        }
    }
}

/// Where the time of one [`Sandbox::launch`] went, measured on the
/// server's side (for `cargo bench -p pool --bench sandbox` and logs).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LaunchPhases {
    /// The sandbox's cgroups made and their limits written.
    pub cgroup: Duration,
    /// Waiting for an outbound sandbox's network (made on a blocking thread
    /// meanwhile; zero for loopback-only sandboxes, whose network namespace
    /// the init makes).
    pub network: Duration,
    /// From spawning the init until the function's executable runs: fork
    /// and exec of the init, joining the cgroups, the namespaces
    /// (`unshare`), pid 1's fork, the root's mounts, the function's exec.
    pub init: Duration,
}

/// A running sandbox. Call [`Sandbox::destroy`] to stop it and free its
/// cgroup; dropping it only kills its processes.
#[derive(Debug)]
pub struct Sandbox {
    /// Sandbox id (also the cgroup's name).
    pub id: String,
    child: OuterProcess,
    cgroup: Cgroup,
    root_dir: PathBuf,
    /// The veth pair and firewall entries of an outbound sandbox, torn down
    /// when the sandbox is dropped or destroyed.
    net: Option<NetLease>,
    /// Requests to the runtime (its fd 3).
    pub requests: Option<pipe::Sender>,
    /// Responses from the runtime (its fd 4).
    pub responses: Option<pipe::Receiver>,
    /// The function's stdout.
    pub stdout: Option<pipe::Receiver>,
    /// The function's stderr.
    pub stderr: Option<pipe::Receiver>,
    /// Stub sandboxes: the server's end of the socket to pid 1 (see
    /// [`Sandbox::uffd_keeper`]).
    keeper: Option<OwnedFd>,
    /// Where the launch's time went.
    phases: LaunchPhases,
    /// A loopback-only sandbox's network namespace, offered for reuse by
    /// a later sandbox of the same function (`key`, its code folder) once
    /// this one is destroyed ([`super::netns_pool`]).
    reusable_netns: Option<(PathBuf, OwnedFd)>,
    /// Whether pid 1 survives the copy and can reset the sandbox for the
    /// next one ([`super::recycle`]).
    recyclable: bool,
}

/// Longest wait for pid 1 to reset a recycled sandbox (killing a copy
/// stuck in a fault, a fork bomb): the sandbox is destroyed after it.
const RECYCLE_WAIT: Duration = Duration::from_secs(2);

/// How the zygote fared with one launch.
enum Zygote {
    /// It forked the outer process.
    Forked(super::process::Forked),
    /// Off, or not working: spawn the init instead.
    Unavailable,
    /// The launch fails.
    Failed(LaunchError),
}

/// The blocking task making an outbound sandbox's network.
type NetTask = tokio::task::JoinHandle<Result<NetLease, NetError>>;

fn pipe_pair() -> Result<(OwnedFd, OwnedFd), LaunchError> {
    pipe2(OFlag::O_CLOEXEC).map_err(nix_io("create pipe"))
}

/// A connected pair of `SOCK_SEQPACKET` Unix sockets (close-on-exec).
fn keeper_pair() -> Result<(OwnedFd, OwnedFd), LaunchError> {
    use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
    socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(nix_io("create keeper socket"))
}

fn new_id() -> String {
    format!("sb-{:016x}", rand::random::<u64>())
}

impl Sandbox {
    /// Starts `spec` in a new sandbox. Returns once the function's executable
    /// is running (or the setup failed).
    pub async fn launch(config: &SandboxConfig, spec: &LaunchSpec) -> Result<Sandbox, LaunchError> {
        Self::launch_with_fds(config, spec, &[]).await
    }

    /// Like [`Sandbox::launch`], and places `extra` descriptors (`(source,
    /// number)`) in the sandbox's processes at the given numbers (5 up to
    /// the status fd); a restore stub keeps them.
    pub async fn launch_with_fds(
        config: &SandboxConfig,
        spec: &LaunchSpec,
        extra: &[(std::os::fd::BorrowedFd<'_>, i32)],
    ) -> Result<Sandbox, LaunchError> {
        Self::launch_stub(config, spec, extra, &[]).await
    }

    /// Like [`Sandbox::launch_with_fds`] for a restore stub that also opens
    /// `open_files` itself, inside the sandbox as the function (see
    /// [`super::open_files`]), before it waits for the restorer. Their
    /// numbers must differ from `extra`'s (5 up to the status fd).
    pub async fn launch_stub(
        config: &SandboxConfig,
        spec: &LaunchSpec,
        extra: &[(std::os::fd::BorrowedFd<'_>, i32)],
        open_files: &[super::open_files::OpenFile],
    ) -> Result<Sandbox, LaunchError> {
        Self::launch_copy(config, spec, extra, open_files, None).await
    }

    /// [`Sandbox::launch_stub`] whose processes live in a time namespace
    /// with `time_offsets` (see [`super::timens`]; `None`: the host's
    /// clocks). Made for restore stubs; a sandbox that runs `spec.argv`
    /// gets the namespace too.
    pub async fn launch_copy(
        config: &SandboxConfig,
        spec: &LaunchSpec,
        extra: &[(std::os::fd::BorrowedFd<'_>, i32)],
        open_files: &[super::open_files::OpenFile],
        time_offsets: Option<snapshotter::state::Clocks>,
    ) -> Result<Sandbox, LaunchError> {
        check_open_files(spec, extra, open_files)?;
        if let Some((_, n)) = extra.iter().find(|(_, n)| *n < 5 || *n >= NETNS_FD) {
            return Err(LaunchError::Setup(format!(
                "descriptor number {n} is reserved (extra fds must be 5..{NETNS_FD})"
            )));
        }
        // The network is made on a blocking thread while the cgroup is made
        // here. A task whose result nobody awaits (an error below) still
        // finishes, and dropping its lease tears the network down.
        let net_task = Self::start_network(config, spec)?;
        let id = new_id();
        let root_dir = config.run_dir.join(&id);
        fs::create_dir_all(&root_dir).map_err(io("create sandbox directory"))?;
        let t0 = Instant::now();
        let cgroup = match config.cgroups.create(&id, &spec.limits) {
            Ok(c) => c,
            Err(e) => {
                let _ = fs::remove_dir(&root_dir);
                return Err(e.into());
            }
        };
        let mut phases = LaunchPhases {
            cgroup: t0.elapsed(),
            ..LaunchPhases::default()
        };
        let t1 = Instant::now();
        let net = match Self::finish_network(net_task).await {
            Ok(net) => net,
            Err(e) => {
                let cg = cgroup.clone();
                let _ = tokio::task::spawn_blocking(move || cg.destroy()).await;
                let _ = fs::remove_dir(&root_dir);
                return Err(e);
            }
        };
        phases.network = t1.elapsed();
        let t2 = Instant::now();
        match Self::spawn(
            config,
            spec,
            &id,
            &root_dir,
            &cgroup,
            extra,
            (open_files, time_offsets),
            net,
        )
        .await
        {
            Ok(mut sandbox) => {
                phases.init = t2.elapsed();
                sandbox.phases = phases;
                Ok(sandbox)
            }
            Err(e) => {
                let cg = cgroup.clone();
                let _ = tokio::task::spawn_blocking(move || cg.destroy()).await;
                let _ = fs::remove_dir(&root_dir);
                Err(e)
            }
        }
    }

    /// Starts making the network namespace and veth pair of an outbound
    /// sandbox, on a blocking thread (it runs `ip`).
    fn start_network(
        config: &SandboxConfig,
        spec: &LaunchSpec,
    ) -> Result<Option<NetTask>, LaunchError> {
        if spec.network != Network::Outbound {
            return Ok(None);
        }
        let Some(net) = config.network.clone() else {
            return Err(LaunchError::Setup(
                "outbound network is not configured on this server".into(),
            ));
        };
        let allow = spec.network_allow.clone();
        Ok(Some(tokio::task::spawn_blocking(move || net.lease(&allow))))
    }

    /// Waits for what [`Sandbox::start_network`] started.
    async fn finish_network(task: Option<NetTask>) -> Result<Option<NetLease>, LaunchError> {
        let Some(task) = task else {
            return Ok(None);
        };
        let lease = task
            .await
            .map_err(|e| LaunchError::Setup(format!("network task: {e}")))??;
        Ok(Some(lease))
    }

    #[allow(clippy::too_many_arguments)]
    async fn spawn(
        config: &SandboxConfig,
        spec: &LaunchSpec,
        id: &str,
        root_dir: &Path,
        cgroup: &Cgroup,
        extra: &[(std::os::fd::BorrowedFd<'_>, i32)],
        (open_files, time_offsets): (
            &[super::open_files::OpenFile],
            Option<snapshotter::state::Clocks>,
        ),
        mut net: Option<NetLease>,
    ) -> Result<Sandbox, LaunchError> {
        // A loopback-only sandbox joins a namespace kept from an earlier
        // sandbox of its function, if there is one.
        let reuse = spec.network == Network::None && super::netns_pool::reuse_enabled();
        let kept_netns = if reuse {
            super::netns_pool::take(&spec.code_dir)
        } else {
            None
        };
        let sandbox_spec = SandboxSpec {
            id: id.to_string(),
            root_dir: root_dir.to_path_buf(),
            code_dir: spec.code_dir.clone(),
            runtime_dir: spec.runtime_dir.clone(),
            binds: spec.binds.clone(),
            mask: config.mask.clone(),
            tmp_mb: spec.tmp_mb,
            network: spec.network,
            netns_fd: (net.is_some() || kept_netns.is_some()).then_some(NETNS_FD),
            resolv_conf: net.as_ref().map(|n| n.resolv_conf()),
            uid: config.uid,
            gid: config.gid,
            cgroup_procs: cgroup.join_files(),
            argv: spec.argv.clone(),
            env: spec.env.clone(),
            cwd: spec.cwd.clone(),
            hostname: "thaw".into(),
            nofile: 1024,
            no_aslr: spec.no_aslr,
            stub: spec.stub,
            keep_fds: extra.iter().map(|(_, n)| *n).collect(),
            open_files: open_files.to_vec(),
            phases_file: std::env::var_os(super::PHASES_DIR_ENV)
                .map(|dir| PathBuf::from(dir).join(id)),
            time_offsets,
            recyclable: spec.stub && spec.network == Network::None && super::recycle::enabled(),
        };
        let json = serde_json::to_string(&sandbox_spec).expect("spec serialises");

        let (req_r, req_w) = pipe_pair()?;
        let (resp_r, resp_w) = pipe_pair()?;
        let (out_r, out_w) = pipe_pair()?;
        let (err_r, err_w) = pipe_pair()?;
        let (status_r, status_w) = pipe_pair()?;
        let keeper = if spec.stub {
            Some(keeper_pair()?)
        } else {
            None
        };

        let mut targets: Vec<(RawFd, RawFd)> = vec![
            (req_r.as_raw_fd(), 3),
            (resp_w.as_raw_fd(), 4),
            (status_w.as_raw_fd(), STATUS_FD),
        ];
        if let Some((_, init_end)) = &keeper {
            targets.push((init_end.as_raw_fd(), KEEPER_FD));
        }
        targets.extend(extra.iter().map(|(fd, n)| (fd.as_raw_fd(), *n)));
        if let Some(ns) = net.as_ref().and_then(|n| n.netns()) {
            targets.push((ns.as_raw_fd(), NETNS_FD));
        }
        if let Some(ns) = &kept_netns {
            targets.push((ns.as_raw_fd(), NETNS_FD));
        }
        let status_r = match Self::fork_by_zygote(config, &sandbox_spec, &targets, &out_w, &err_w)
            .await
        {
            Zygote::Forked(forked) => {
                drop((out_w, err_w, req_r, resp_w, status_w));
                let keeper = keeper.map(|(server_end, _init_end)| server_end);
                if let Some(n) = net.as_mut() {
                    n.forget_netns();
                }
                let child = OuterProcess::Forked(forked);
                return Self::finish_spawn(
                    id, root_dir, cgroup, net, child, keeper, status_r, req_w, resp_r, out_r, err_r,
                )
                .await
                .map(|sb| sb.keep_netns(reuse, &spec.code_dir, kept_netns))
                .map(|sb| sb.recyclable(sandbox_spec.recyclable));
            }
            Zygote::Failed(e) => return Err(e),
            Zygote::Unavailable => status_r,
        };
        // Sources are first moved above every target, so no dup2 can clobber
        // a source that is still to be placed.
        let above = targets.iter().map(|(_, n)| *n).max().unwrap_or(0) + 1;
        let mut cmd = Command::new(&config.init_exe);
        cmd.args(&config.init_args)
            .env_clear()
            .env(SPEC_ENV, json)
            .stdin(Stdio::null())
            .stdout(Stdio::from(out_w))
            .stderr(Stdio::from(err_w))
            .kill_on_drop(true);
        let mut moved = vec![0; targets.len()];
        // The init joins its cgroups before its exec, not after: what the
        // exec and its start cost is then charged to the sandbox (its memory,
        // and its CPU in the counter of every sandbox's CPU); the init joins
        // again after (a no-op). Paths made C strings before the fork.
        let join: Vec<std::ffi::CString> = cgroup
            .join_files()
            .iter()
            .map(|p| std::ffi::CString::new(p.as_os_str().as_encoded_bytes()))
            .collect::<Result<_, _>>()
            .map_err(|e| LaunchError::Setup(format!("cgroup path: {e}")))?;
        // SAFETY: the closure runs between fork and exec and only calls
        // async-signal-safe functions (open, write, close, fcntl, dup2,
        // prctl) on fds that are open in the child or it opened; `moved` and
        // `join` were allocated before the fork and are only read or written
        // in place.
        unsafe {
            cmd.pre_exec(move || {
                for (i, (src, _)) in targets.iter().enumerate() {
                    let fd = libc::fcntl(*src, libc::F_DUPFD_CLOEXEC, above);
                    if fd < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    moved[i] = fd;
                }
                for (i, (_, dst)) in targets.iter().enumerate() {
                    // dup2 leaves the new fd without close-on-exec.
                    if libc::dup2(moved[i], *dst) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                for path in &join {
                    let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                    if fd < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    // "0": the writing process itself.
                    let written = libc::write(fd, b"0".as_ptr().cast(), 1);
                    let err = std::io::Error::last_os_error();
                    libc::close(fd);
                    if written != 1 {
                        return Err(err);
                    }
                }
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(io("start sandbox init"))?;
        drop(cmd);
        drop((req_r, resp_w, status_w));
        let keeper = keeper.map(|(server_end, _init_end)| server_end);
        // The init holds the namespace now.
        if let Some(n) = net.as_mut() {
            n.forget_netns();
        }
        Self::finish_spawn(
            id,
            root_dir,
            cgroup,
            net,
            OuterProcess::Spawned(child),
            keeper,
            status_r,
            req_w,
            resp_r,
            out_r,
            err_r,
        )
        .await
        .map(|sb| sb.keep_netns(reuse, &spec.code_dir, kept_netns))
        .map(|sb| sb.recyclable(sandbox_spec.recyclable))
    }

    fn recyclable(mut self, recyclable: bool) -> Sandbox {
        self.recyclable = recyclable;
        self
    }

    /// Keeps a handle on a loopback-only sandbox's network namespace (the
    /// one it was given, or the one its init made) to offer it back for
    /// reuse when it is destroyed.
    fn keep_netns(mut self, reuse: bool, key: &Path, given: Option<OwnedFd>) -> Sandbox {
        if !reuse {
            return self;
        }
        let ns = given.or_else(|| {
            self.child
                .id()
                .and_then(|pid| super::netns_pool::of_process(pid).ok())
        });
        self.reusable_netns = ns.map(|ns| (key.to_path_buf(), ns));
        self
    }

    /// Forks the outer process through the zygote ([`super::zygote`]) when
    /// it is enabled, with `targets` and the log pipes at 0-2.
    async fn fork_by_zygote(
        config: &SandboxConfig,
        spec: &SandboxSpec,
        targets: &[(RawFd, RawFd)],
        out_w: &OwnedFd,
        err_w: &OwnedFd,
    ) -> Zygote {
        use std::os::fd::{AsFd, BorrowedFd};
        if !super::zygote::zygote_enabled() {
            return Zygote::Unavailable;
        }
        let devnull = match fs::File::open("/dev/null") {
            Ok(f) => OwnedFd::from(f),
            Err(e) => return Zygote::Failed(io("open /dev/null")(e)),
        };
        let mut fds: Vec<BorrowedFd<'_>> = vec![devnull.as_fd(), out_w.as_fd(), err_w.as_fd()];
        let mut numbers: Vec<RawFd> = vec![0, 1, 2];
        for (src, dst) in targets {
            // SAFETY: every source is an fd the caller keeps open until the
            // zygote has answered (this function's lifetime).
            fds.push(unsafe { BorrowedFd::borrow_raw(*src) });
            numbers.push(*dst);
        }
        match super::zygote::fork_outer(&config.init_exe, &config.init_args, spec, &fds, &numbers)
            .await
        {
            Ok(f) => Zygote::Forked(super::process::Forked::new(f.pid, f.pidfd)),
            // The outer process may exist (it then fails on its own, its
            // cgroup is removed): never start a second one with the same
            // pipes.
            Err(e @ super::zygote::ZygoteError::Gone) => {
                Zygote::Failed(LaunchError::Setup(e.to_string()))
            }
            Err(e) => {
                if let Some(suppressed) = crate::ratelimit::POOL_LOG.allow("zygote") {
                    tracing::warn!(error = %e, suppressed, "sandbox zygote unavailable; spawning the init");
                }
                Zygote::Unavailable
            }
        }
    }

    /// The launch's common end: waits for the init's report and builds the
    /// sandbox.
    #[allow(clippy::too_many_arguments)]
    async fn finish_spawn(
        id: &str,
        root_dir: &Path,
        cgroup: &Cgroup,
        net: Option<NetLease>,
        child: OuterProcess,
        keeper: Option<OwnedFd>,
        status_r: OwnedFd,
        req_w: OwnedFd,
        resp_r: OwnedFd,
        out_r: OwnedFd,
        err_r: OwnedFd,
    ) -> Result<Sandbox, LaunchError> {
        // The status pipe closes when the function's exec succeeded; any
        // bytes on it are a setup error.
        let mut status = pipe::Receiver::from_owned_fd(status_r).map_err(io("status pipe"))?;
        let mut message = String::new();
        let _ = status.read_to_string(&mut message).await;
        let mut sandbox = Sandbox {
            id: id.to_string(),
            child,
            cgroup: cgroup.clone(),
            root_dir: root_dir.to_path_buf(),
            net,
            requests: Some(pipe::Sender::from_owned_fd(req_w).map_err(io("request pipe"))?),
            responses: Some(pipe::Receiver::from_owned_fd(resp_r).map_err(io("response pipe"))?),
            stdout: Some(pipe::Receiver::from_owned_fd(out_r).map_err(io("stdout pipe"))?),
            stderr: Some(pipe::Receiver::from_owned_fd(err_r).map_err(io("stderr pipe"))?),
            keeper,
            phases: LaunchPhases::default(),
            reusable_netns: None,
            recyclable: false,
        };
        if !message.is_empty() {
            sandbox.kill();
            let _ = sandbox.child.wait().await;
            if message.starts_with(super::open_files::FAILED) {
                return Err(LaunchError::OpenFile(message));
            }
            return Err(LaunchError::Setup(message));
        }
        Ok(sandbox)
    }

    /// The host pid of the outer init process.
    pub fn init_pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Stub sandboxes: a socket to pid 1, which holds whatever descriptor
    /// is sent on it (`SCM_RIGHTS`) for as long as the sandbox lives. A
    /// `uffd` copy's userfaultfd goes there, so that no process of the
    /// function holds one while the kernel still never releases it (a
    /// released userfaultfd would turn the copy's missing pages into zeros
    /// if the server died). pid 1 takes one message; closing this end
    /// without sending releases it to its usual wait.
    pub fn uffd_keeper(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        use std::os::fd::AsFd;
        self.keeper.as_ref().map(|k| k.as_fd())
    }

    /// Where the time of its launch went.
    pub fn launch_phases(&self) -> LaunchPhases {
        self.phases
    }

    /// The sandbox's cgroup.
    pub fn cgroup(&self) -> &Cgroup {
        &self.cgroup
    }

    /// Host pids of the sandbox's processes.
    pub fn pids(&self) -> Vec<i32> {
        self.cgroup.pids()
    }

    /// Host pid of the function process (pid 2 inside the sandbox), or of
    /// the restore stub.
    pub fn function_pid(&self) -> Option<i32> {
        host_pid_of(&self.pids(), 2)
    }

    /// Host pid of the restore stub of a stub sandbox not restored yet (or
    /// just recycled): the only child of pid 1, itself the only child of
    /// the outer process, read from their `children` files (two short
    /// reads, where [`Sandbox::function_pid`] reads the cgroup's process
    /// list and then the `status` of each process, a few hundred
    /// microseconds of the server's CPU per cold start). Nothing else runs
    /// in such a sandbox: the outer process forks only pid 1, and pid 1
    /// forks only the stub (once the previous copy and all it started are
    /// reaped, when recycled). Falls back to [`Sandbox::function_pid`] when
    /// either has another number of children.
    pub fn stub_pid(&self) -> Option<i32> {
        let outer = self.child.id().and_then(|p| i32::try_from(p).ok());
        outer
            .and_then(only_child)
            .and_then(only_child)
            .or_else(|| self.function_pid())
    }

    /// Kills every process of the sandbox now (does not wait).
    pub fn kill(&mut self) {
        self.cgroup.kill_all();
        let _ = self.child.start_kill();
    }

    /// Waits for the sandbox to end and says how the function ended.
    pub async fn wait(&mut self) -> SandboxExit {
        match self.child.wait().await {
            Ok(status) => SandboxExit::from_status(status),
            Err(_) => SandboxExit::Exited(255),
        }
    }

    /// Returns how the sandbox ended, if it has.
    pub fn try_wait(&mut self) -> Option<SandboxExit> {
        self.child
            .try_wait()
            .ok()
            .flatten()
            .map(SandboxExit::from_status)
    }

    /// Stops the sandbox and frees everything it held: processes, cgroup,
    /// mount point.
    pub async fn destroy(mut self) -> Result<(), LaunchError> {
        self.kill();
        let _ = self.child.wait().await;
        let cgroup = self.cgroup.clone();
        let netns = self.reusable_netns.take();
        tokio::task::spawn_blocking(move || {
            cgroup.destroy()?;
            // Every process of the sandbox is gone: its namespace may serve
            // the next sandbox of the function.
            if let Some((key, ns)) = netns {
                super::netns_pool::give_back(&key, ns);
            }
            Ok::<(), CgroupError>(())
        })
        .await
        .map_err(|e| LaunchError::Setup(format!("cgroup clean-up task: {e}")))??;
        let _ = fs::remove_dir(&self.root_dir);
        if let Some(net) = self.net.take() {
            // Deleting a link takes tens of milliseconds (RCU grace
            // periods): nothing waits for it.
            tokio::task::spawn_blocking(move || {
                let link = net.link().to_string();
                if let Err(e) = net.close() {
                    tracing::warn!(%link, error = %e, "sandbox network teardown failed");
                }
            });
        }
        Ok(())
    }

    /// Whether the sandbox can be recycled ([`Sandbox::recycle`]).
    pub fn is_recyclable(&self) -> bool {
        self.recyclable && self.keeper.is_some()
    }

    /// Recycles a stub sandbox whose copy is no longer wanted
    /// ([`super::recycle`]): pid 1 kills every process but itself, resets
    /// what a copy could have left, and starts a new stub with `extra`
    /// placed and `open_files` opened, as [`Sandbox::launch_stub`] would;
    /// then the network namespace is checked and the cgroup rebased. The
    /// protocol and log pipes are new (the old ones reach their end). On
    /// error the sandbox must be destroyed.
    pub async fn recycle(
        &mut self,
        extra: &[(std::os::fd::BorrowedFd<'_>, i32)],
        open_files: &[super::open_files::OpenFile],
    ) -> Result<(), super::recycle::RecycleError> {
        use super::recycle::RecycleError;
        use std::os::fd::AsFd;
        if !self.is_recyclable() {
            return Err(RecycleError::NotRecyclable);
        }
        let io =
            |what: &'static str| move |source: std::io::Error| RecycleError::Io { what, source };
        let keeper = self
            .keeper
            .as_ref()
            .expect("checked above")
            .try_clone()
            .map_err(io("keeper socket"))?;
        let pipe = || pipe2(OFlag::O_CLOEXEC).map_err(|e| io("create pipe")(e.into()));
        let (req_r, req_w) = pipe()?;
        let (resp_r, resp_w) = pipe()?;
        let (out_r, out_w) = pipe()?;
        let (err_r, err_w) = pipe()?;
        let (status_r, status_w) = pipe()?;
        let extra: Vec<(OwnedFd, i32)> = extra
            .iter()
            .map(|(fd, n)| fd.try_clone_to_owned().map(|fd| (fd, *n)))
            .collect::<Result<_, _>>()
            .map_err(io("duplicate a descriptor"))?;
        let open_files = open_files.to_vec();
        let netns = match &self.reusable_netns {
            Some((_, ns)) => ns.try_clone().ok(),
            None => self
                .child
                .id()
                .and_then(|pid| super::netns_pool::of_process(pid).ok()),
        };
        let cgroup = self.cgroup.clone();
        tokio::task::spawn_blocking(move || {
            let borrowed: Vec<_> = extra.iter().map(|(fd, n)| (fd.as_fd(), *n)).collect();
            super::recycle::order(
                keeper.as_fd(),
                [
                    out_w.as_fd(),
                    err_w.as_fd(),
                    req_r.as_fd(),
                    resp_w.as_fd(),
                    status_w.as_fd(),
                ],
                &borrowed,
                &open_files,
                RECYCLE_WAIT,
            )?;
            // The stub's ends are the stub's alone now.
            drop((out_w, err_w, req_r, resp_w, status_w, extra));
            // As at a launch: the stub closes its status fd once it is
            // set up; bytes on it are a failure.
            let mut message = String::new();
            let _ = std::io::Read::read_to_string(&mut fs::File::from(status_r), &mut message);
            if !message.is_empty() {
                return Err(RecycleError::Stub(message));
            }
            if let Some(ns) = &netns {
                super::netns_pool::check_clean(ns).map_err(RecycleError::Network)?;
            }
            cgroup.rebase();
            Ok(())
        })
        .await
        .map_err(|e| RecycleError::Refused(format!("recycle task: {e}")))??;
        let wrap = |what: &'static str| io(what);
        self.requests = Some(pipe::Sender::from_owned_fd(req_w).map_err(wrap("request pipe"))?);
        self.responses =
            Some(pipe::Receiver::from_owned_fd(resp_r).map_err(wrap("response pipe"))?);
        self.stdout = Some(pipe::Receiver::from_owned_fd(out_r).map_err(wrap("stdout pipe"))?);
        self.stderr = Some(pipe::Receiver::from_owned_fd(err_r).map_err(wrap("stderr pipe"))?);
        Ok(())
    }

    /// The sandbox's address, if it is outbound.
    pub fn address(&self) -> Option<std::net::Ipv4Addr> {
        self.net.as_ref().map(|n| n.address())
    }
}

/// Files a stub opens need a stub, and numbers of their own in the range
/// extra descriptors may use.
fn check_open_files(
    spec: &LaunchSpec,
    extra: &[(std::os::fd::BorrowedFd<'_>, i32)],
    open_files: &[super::open_files::OpenFile],
) -> Result<(), LaunchError> {
    if !open_files.is_empty() && !spec.stub {
        return Err(LaunchError::Setup(
            "only a restore stub opens files for a copy".into(),
        ));
    }
    let mut seen: std::collections::HashSet<i32> = extra.iter().map(|(_, n)| *n).collect();
    for f in open_files {
        if f.fd < 5 || f.fd >= NETNS_FD || !seen.insert(f.fd) {
            return Err(LaunchError::Setup(format!(
                "descriptor number {} of {} is reserved or taken (files a stub opens must be 5..{NETNS_FD}, each its own)",
                f.fd, f.path
            )));
        }
    }
    Ok(())
}

/// The only child of the single-threaded process `pid`, from
/// `/proc/PID/task/PID/children` (`None`: none, several, or gone).
fn only_child(pid: i32) -> Option<i32> {
    let text = fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).ok()?;
    let mut children = text.split_whitespace();
    let child = children.next()?.parse().ok()?;
    children.next().is_none().then_some(child)
}

/// Finds, among `pids`, the host pid of the process that is `ns_pid` in its
/// own (innermost) pid namespace.
pub fn host_pid_of(pids: &[i32], ns_pid: u32) -> Option<i32> {
    pids.iter().copied().find(|pid| {
        fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|s| {
                let line = s.lines().find(|l| l.starts_with("NSpid:"))?.to_string();
                let mut fields = line.split_whitespace().skip(1);
                // Only processes in a nested namespace (two or more fields).
                let _host = fields.next()?;
                fields.last()?.parse::<u32>().ok()
            })
            == Some(ns_pid)
    })
}

#[cfg(test)]
mod tests {
    use super::only_child;
    use std::io::Read;
    use std::process::{Command, Stdio};

    /// A shell that starts `n` sleeps in the background, prints their pids
    /// and waits: its pid and theirs.
    fn shell_with_children(n: usize) -> (std::process::Child, Vec<i32>) {
        let script =
            format!("for i in $(seq {n}); do sleep 30 >/dev/null & echo $!; done; exec 1>&-; wait");
        let mut shell = Command::new("/bin/sh")
            .args(["-c", &script])
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn sh");
        let mut out = String::new();
        shell
            .stdout
            .take()
            .expect("piped")
            .read_to_string(&mut out)
            .expect("read the pids");
        let pids = out.lines().map(|l| l.parse().expect("a pid")).collect();
        (shell, pids)
    }

    fn end(mut shell: std::process::Child, children: &[i32]) {
        for &pid in children {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let _ = shell.wait();
    }

    #[test]
    fn only_child_finds_the_single_child_and_refuses_two() {
        let (shell, children) = shell_with_children(1);
        assert_eq!(only_child(shell.id() as i32), Some(children[0]));
        end(shell, &children);

        let (shell, children) = shell_with_children(2);
        assert_eq!(only_child(shell.id() as i32), None, "two children");
        end(shell, &children);

        let (shell, children) = shell_with_children(0);
        assert_eq!(only_child(shell.id() as i32), None, "no child");
        end(shell, &children);
    }
}
