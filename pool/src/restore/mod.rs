//! Restore: turning a snapshot back into a running process, without CRIU.
//!
//! ```text
//! plan      open the image, make the kernel objects; every file the copy
//!           names by path (saved fds, mapped files, the executable) is
//!           opened as its sandbox would open it: by a stub sandbox inside
//!           the sandbox with the function's credentials, then taken back
//!           and checked (`fds::FdPlan::adopt`); without a sandbox (`thaw
//!           restore`) here (`fds::FdPlan::open_here`). Identities (device,
//!           inode, kind, rdev, size and mtime where content is used)
//!           checked against the snapshot
//! stub      spawn: init (pid 1 of a new pid namespace) → stub with the saved
//!           pid (clone3 set_tid), fds already at their numbers; PTRACE_SEIZE
//! mappings  unregister the stub's rseq; scratch; unmap the stub; move
//!           [vvar] [vvar_vclock] [vdso] to the saved addresses; map every
//!           saved area (see `memory`)
//! state     PR_SET_MM_MAP; close the mapping fds; signals and mask; rseq;
//!           tid address, robust list, sigaltstack; cwd, umask, personality,
//!           comm, rlimits; every signal blocked, timers, pending signals;
//!           credentials (last); unmap the scratch
//! resume    xsave, registers (syscall-restart rule applied), detach
//! ```
//!
//! Every step in the stub is a system call run with ptrace: the first
//! (mapping the scratch area) and the last (unmapping it) injected one by
//! one with the capture's injector (borrowing the vDSO's `syscall`
//! instruction), everything between as two tables run by a small loop in
//! the scratch area, one ptrace round trip each (see [`batch`]).
//! The copy's exit status is init's: its exit code, or 128 + the signal
//! that killed it ([`RestoredChild::wait`]).
//!
//! Mechanism: [`spawn`] (init and stub), [`remote`] (driving the stub),
//! [`batch`] (tables of system calls), [`sandboxed`], [`premap`] (spares
//! whose memory is restored ahead of their claim), [`working_set`].
//!
//! One module per kind of state, each named as its state type's module
//! (`snapshotter::state::X`) and its capture (`snapshotter::capture::X`),
//! in the order `drive` restores them (docs/restore.md, "Order of the
//! restore"): [`memory`] (with [`anon`] in mmap mode, [`uffd`] in uffd
//! mode, [`stacks`]: which areas mmap mode copies, [`shared`]: anonymous
//! shared memory, [`sysv`]: System V shared memory), [`mm`], [`fds`] (with
//! [`kobj`], [`inotify`] and [`socket`]), [`signals`], [`process`], [`thread`], [`timers`],
//! [`pending`], [`credentials`], [`seccomp`].

pub mod anon;
pub mod batch;
pub mod credentials;
pub mod depends;
pub mod fds;
pub mod inotify;
pub mod kobj;
pub mod memory;
pub mod mm;
pub mod page_source;
pub mod pending;
pub mod placement;
pub mod plans;
pub mod populate;
pub mod premap;
pub mod process;
pub mod remote;
pub mod sandboxed;
pub mod seccomp;
pub mod shared;
pub mod signals;
pub mod socket;
pub mod spawn;
pub mod stacks;
pub mod sysv;
pub mod thread;
pub mod timers;
pub mod tree;
pub mod uffd;
pub mod working_set;

use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, Instant};

use snapshotter::snapshot::{open_snapshot_dir, LoadSnapshotError, Snapshot};
use snapshotter::state::ProcessState;
use snapshotter::store::{ImageError, PageStore};

use batch::Batch;
use memory::MapSources;
use remote::Remote;

/// How the copy's private memory is provided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `MAP_PRIVATE` of the snapshot's image file (page cache shared by all
    /// copies, copy on write).
    Mmap,
    /// Anonymous memory filled on demand by a userfaultfd page server
    /// thread of the restorer (see [`uffd`]).
    Uffd,
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Mode, String> {
        match s {
            "mmap" => Ok(Mode::Mmap),
            "uffd" => Ok(Mode::Uffd),
            other => Err(format!("unknown restore mode {other:?} (mmap or uffd)")),
        }
    }
}

/// Whose credentials a copy gets (issue 12, finding 4: a snapshot file is
/// not trusted to say who its copy runs as).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credentials {
    /// The sandbox's policy, whatever the snapshot says: this uid and gid
    /// (real, effective, saved), no supplementary groups, no capabilities
    /// (bounding, permitted, effective, inheritable, ambient),
    /// `no_new_privs`. Every sandboxed copy gets this.
    Function {
        /// The function's uid.
        uid: u32,
        /// The function's gid.
        gid: u32,
    },
    /// The snapshot's own ids and capability bounding set (`thaw restore`
    /// of a snapshot the operator made, trusted like the operator).
    Snapshot,
}

/// How to restore.
#[derive(Debug)]
pub struct RestoreOptions<'a> {
    /// Memory mode.
    pub mode: Mode,
    /// Descriptors the caller provides for given fd numbers of the copy
    /// (for example fresh protocol pipes, or its own stdio). Saved fds not
    /// listed are reopened (files, directories, devices) or refused (pipes
    /// and sockets).
    pub fds: Vec<(i32, BorrowedFd<'a>)>,
    /// Cgroup directories (one per v1 hierarchy, or the v2 one) the copy
    /// and its init join before any of the copy's memory is mapped, so its
    /// pages are charged there.
    pub cgroups: Vec<std::path::PathBuf>,
    /// The recorded working set (see [`working_set`]): page addresses
    /// (low bit: [`working_set::WRITTEN`]). `uffd` mode fills them before
    /// the copy faults on them, in sorted runs of up to 64 pages; `mmap`
    /// mode populates the written ones with `madvise` before the copy
    /// resumes (when the server enables it).
    pub prefetch: Vec<u64>,
    /// Whose credentials the copy (each of its threads) gets.
    pub credentials: Credentials,
    /// Fill `prefetch` while the copy runs (between faults) instead of
    /// before it resumes. Measured (docs/restore.md): before the resume was
    /// faster to the first answer on 2 vCPUs, the background costs nothing
    /// up front.
    pub prefetch_in_background: bool,
    /// `uffd` copies restored into a sandbox: the sandbox's keeper socket
    /// (`Sandbox::uffd_keeper`); the copy's userfaultfd is sent there, to
    /// be held by the sandbox's pid 1 rather than by the copy.
    pub uffd_keeper: Option<BorrowedFd<'a>>,
}

/// Where the time of a restore went.
#[derive(Debug, Clone, Copy, Default)]
pub struct RestoreTimings {
    /// Opening and checking files, the image.
    pub plan: Duration,
    /// Starting init and stub, seizing the stub.
    pub stub: Duration,
    /// Rebuilding the address space.
    pub mappings: Duration,
    /// Of which the batch that unmaps the stub, moves the special areas and
    /// maps every area (the rest is writing the stack, and in uffd mode
    /// setting up the page server).
    pub batch: Duration,
    /// mm fields, fds, signals, attributes, every thread, credentials,
    /// seccomp.
    pub state: Duration,
    /// Of which making the threads other than the main one, each with its
    /// registrations and credentials, and seizing them (step 7).
    pub threads: Duration,
    /// Registers and detach.
    pub resume: Duration,
    /// ptrace round trips that ran system calls (single calls and batches).
    pub injected: u32,
    /// System calls run by the batch loop.
    pub batched: u32,
    /// mmap mode: ranges of the recorded working set populated before the
    /// resume (`madvise` calls of the mapping batch; see [`working_set`]).
    pub populated: u32,
}

impl RestoreTimings {
    /// Total.
    pub fn total(&self) -> Duration {
        self.plan + self.stub + self.mappings + self.state + self.resume
    }
}

/// Why a restore failed. The stub and its init are gone when this is
/// returned.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// The snapshot could not be loaded.
    #[error(transparent)]
    Load(#[from] LoadSnapshotError),
    /// The snapshot's image could not be built or opened.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// Starting init or stub failed.
    #[error(transparent)]
    Spawn(#[from] spawn::SpawnError),
    /// Holding the stub failed.
    #[error("stub: {0}")]
    Stub(String),
    /// Injecting a system call failed.
    #[error("{what}: injection failed: {reason}")]
    Inject {
        /// The call.
        what: String,
        /// Why.
        reason: String,
    },
    /// A system call in the stub returned an error.
    #[error("{what} in the stub failed: {source}")]
    Remote {
        /// The call.
        what: String,
        /// The errno.
        source: std::io::Error,
    },
    /// A call of the restorer failed.
    #[error("{what}: {source}")]
    Io {
        /// What.
        what: String,
        /// Why.
        source: std::io::Error,
    },
    /// A file changed since the capture.
    #[error("{path} changed since the snapshot ({what})")]
    FileChanged {
        /// The file.
        path: String,
        /// What differs.
        what: String,
    },
    /// A saved descriptor needs one from the caller.
    #[error("fd {fd} of the snapshot is a {what}: the caller must supply it")]
    FdNotSupplied {
        /// The descriptor number.
        fd: i32,
        /// What it was.
        what: &'static str,
    },
    /// No free address range for the restorer's own areas.
    #[error("no free address range for the {0}")]
    NoRoom(&'static str),
    /// This node cannot run the snapshot's copies: a file it maps has other
    /// content, the CPU lacks a feature it may use, the kernel's vDSO or
    /// special areas differ ([`depends`]). Booting is the answer, not a
    /// rebuild elsewhere.
    #[error("snapshot incompatible with this node: {what}")]
    Incompatible {
        /// What differs, naming the file, feature or area.
        what: String,
    },
    /// Something the restorer cannot do yet.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// A lazy restore's page source failed ([`page_source`]). Returned
    /// by the restore: the copy never ran (the caller may boot instead).
    /// After the resume the page server fails with it and kills the copy.
    #[error("fetching pages from the page source failed: {0}")]
    Fetch(#[source] page_source::PageSourceError),
}

/// A running copy. Dropping it kills the copy (if still running) and reaps
/// its init.
#[derive(Debug)]
pub struct RestoredChild {
    init_pid: i32,
    pid: i32,
    ns_pid: i32,
    pidfd: OwnedFd,
    status: Option<i32>,
    server: Option<PageServerThread>,
    /// `uffd` mode: the page servers of the other processes of a tree.
    child_servers: Vec<PageServerThread>,
    /// `uffd` mode: what the page server has done so far (readable while
    /// the copy runs).
    live: Option<std::sync::Arc<uffd::LiveReport>>,
    /// `uffd` mode, once the copy ended: what its page server did
    /// (including the working set it touched, to prefetch next time).
    pub server_stats: Option<uffd::ServerReport>,
    /// Where the restore's time went.
    pub timings: RestoreTimings,
}

impl RestoredChild {
    /// The copy's pid in the restorer's pid namespace.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// `uffd` mode: what the copy's page server has done so far (its
    /// faults, the zero ones, prefetch), while the copy runs.
    pub fn page_server(&self) -> Option<&std::sync::Arc<uffd::LiveReport>> {
        self.live.as_ref()
    }

    /// The copy's pid in its own namespace (the saved pid).
    pub fn ns_pid(&self) -> i32 {
        self.ns_pid
    }

    /// The init of the copy's namespace (a child of the restorer).
    pub fn init_pid(&self) -> i32 {
        self.init_pid
    }

    /// Sends `signal` to the copy.
    pub fn signal(&self, signal: i32) -> Result<(), RestoreError> {
        // SAFETY: pidfd_send_signal with a pidfd we own and no siginfo.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.pidfd.as_raw_fd(),
                signal,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        if rc < 0 {
            return Err(RestoreError::Io {
                what: format!("pidfd_send_signal({signal})"),
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(())
    }

    /// Waits for the copy to end: its exit code, or 128 + signal.
    pub fn wait(&mut self) -> Result<i32, RestoreError> {
        if let Some(s) = self.status {
            return Ok(s);
        }
        let mut status = 0;
        loop {
            // SAFETY: waitpid of our own child with a valid status pointer.
            let r = unsafe { libc::waitpid(self.init_pid, &mut status, 0) };
            if r >= 0 {
                break;
            }
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EINTR) {
                return Err(RestoreError::Io {
                    what: "waitpid (restore init)".into(),
                    source: e,
                });
            }
        }
        let code = if libc::WIFEXITED(status) {
            libc::WEXITSTATUS(status)
        } else {
            128 + libc::WTERMSIG(status)
        };
        self.status = Some(code);
        for server in self.child_servers.drain(..) {
            match server.join() {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(e),
                Err(_) => return Err(RestoreError::Unsupported("a page server panicked".into())),
            }
        }
        if let Some(server) = self.server.take() {
            match server.join() {
                Ok(Ok(stats)) => self.server_stats = Some(stats),
                Ok(Err(e)) => return Err(e),
                Err(_) => return Err(RestoreError::Unsupported("the page server panicked".into())),
            }
        }
        Ok(code)
    }
}

impl Drop for RestoredChild {
    fn drop(&mut self) {
        if self.status.is_none() {
            spawn::reap(self.init_pid);
        }
        if let Some(server) = self.server.take() {
            let _ = server.join();
        }
        for server in self.child_servers.drain(..) {
            let _ = server.join();
        }
    }
}

/// The page server thread of a `uffd` copy.
pub(crate) type PageServerThread =
    std::thread::JoinHandle<Result<uffd::ServerReport, RestoreError>>;

/// Pulls descriptor `fd` out of the process `pidfd` refers to.
fn pidfd_getfd(pidfd: &OwnedFd, fd: i32) -> Result<OwnedFd, RestoreError> {
    // SAFETY: pidfd_getfd with a pidfd we own; it returns a new descriptor.
    let r = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) };
    if r < 0 {
        return Err(RestoreError::Io {
            what: "pidfd_getfd (userfaultfd)".into(),
            source: std::io::Error::last_os_error(),
        });
    }
    // SAFETY: a fresh descriptor nobody else owns.
    Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(r as i32) })
}

/// Sends `fds` (a copy's userfaultfds: one per process) in one message to
/// the sandbox's pid 1, which holds them while the sandbox lives (see
/// `Sandbox::uffd_keeper`; it takes one message of at most
/// [`snapshotter::state::tree::MAX_PROCESSES`] descriptors).
fn send_to_keeper(keeper: BorrowedFd<'_>, fds: &[OwnedFd]) -> Result<(), RestoreError> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    let fds: Vec<i32> = fds.iter().map(|fd| fd.as_raw_fd()).collect();
    let byte = [0u8; 1];
    let iov = [std::io::IoSlice::new(&byte)];
    sendmsg::<()>(
        keeper.as_raw_fd(),
        &iov,
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::MSG_NOSIGNAL,
        None,
    )
    .map_err(|e| RestoreError::Io {
        what: "hand the userfaultfd to the sandbox's pid 1".into(),
        source: e.into(),
    })?;
    Ok(())
}

/// Kills the copy being made (`SIGKILL` to its thread group) unless
/// disarmed: a restore that fails half-way never lets it run.
///
/// The restorer traces the copy's threads, so their deaths are reported to
/// it: until it has waited for them they stay zombies, the main thread
/// with them, and the copy's init, which waits for its child, would never
/// end (nor would the restorer reaping init). So after the kill every
/// traced thread is waited for, the main thread last (its death is
/// reported once the others are gone); threads this restorer does not
/// trace answer `ECHILD` and are reaped by the kernel.
pub(crate) struct KillOnError(pub(crate) Option<i32>);

impl Drop for KillOnError {
    fn drop(&mut self) {
        let Some(pid) = self.0 else {
            return;
        };
        // SAFETY: kill takes numbers only.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        let tids = snapshotter::capture::ptrace::task_ids(pid).unwrap_or_default();
        for tid in tids.into_iter().filter(|&t| t != pid).chain([pid]) {
            reap_traced(tid);
        }
    }
}

/// Waits until the traced thread `tid`, killed, has ended (or is not ours
/// to wait for).
fn reap_traced(tid: i32) {
    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
    let pid = nix::unistd::Pid::from_raw(tid);
    loop {
        match waitpid(pid, Some(WaitPidFlag::__WALL)) {
            Ok(WaitStatus::Exited(..)) | Ok(WaitStatus::Signaled(..)) => return,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return,
            // A stop reported before the kill took effect: the kill ends it.
            Ok(_) => continue,
        }
    }
}

/// Kills and reaps init unless disarmed.
pub(crate) struct InitGuard(pub(crate) Option<i32>);

impl Drop for InitGuard {
    fn drop(&mut self) {
        if let Some(pid) = self.0 {
            spawn::reap(pid);
        }
    }
}

/// Restores the self-contained snapshot directory `dir` (written by
/// `snapshot_to_dir`), the copy's stdin, stdout and stderr being the
/// caller's. This is `thaw restore DIR`.
pub fn restore_process(dir: &Path, mode: Mode) -> Result<RestoredChild, RestoreError> {
    let (snapshot, store) = open_snapshot_dir(dir)?;
    let fds = stdio_fds(&snapshot);
    restore(
        &snapshot,
        &store,
        &RestoreOptions {
            mode,
            fds,
            cgroups: Vec::new(),
            prefetch: Vec::new(),
            prefetch_in_background: false,
            uffd_keeper: None,
            credentials: Credentials::Snapshot,
        },
    )
}

/// This process's stdin, stdout and stderr for the copy's fds 0, 1 and 2
/// that the snapshot has (`thaw restore`: the copy's stdio are the
/// command's).
pub fn stdio_fds(snapshot: &Snapshot) -> Vec<(i32, BorrowedFd<'static>)> {
    // SAFETY: fds 0, 1 and 2 stay open for the life of this process.
    let stdio = unsafe {
        [
            BorrowedFd::borrow_raw(0),
            BorrowedFd::borrow_raw(1),
            BorrowedFd::borrow_raw(2),
        ]
    };
    (0..3)
        .filter(|fd| {
            snapshot
                .processes()
                .any(|(state, _)| state.fds.iter().any(|f| f.fd == *fd))
        })
        .map(|fd| (fd, stdio[fd as usize]))
        .collect()
}

/// Files and descriptors a restore needs, opened and checked in the
/// restorer before the stub exists (see [`prepare`]).
#[derive(Debug)]
pub struct Prepared {
    image: snapshotter::store::CachedImage,
    plan: fds::FdPlan,
    took: Duration,
    /// A lazy restore ([`prepare_lazily`]): where missing pages come from.
    lazy: Option<std::sync::Arc<page_source::LazyPages>>,
    /// What the restores of this snapshot share ([`Prepared::share_plans`]).
    plans: Option<std::sync::Arc<plans::SnapshotPlans>>,
}

impl Prepared {
    /// `(restorer fd, stub fd)`: the descriptors the stub must hold at these
    /// numbers before the restore drives it.
    pub fn moves(&self) -> &[(std::os::fd::RawFd, std::os::fd::RawFd)] {
        &self.plan.moves
    }

    /// What a stub sandbox must open for this copy, inside the sandbox as
    /// the function ([`crate::sandbox::open_files`]), before [`Prepared::adopt`].
    pub fn open_files(&self) -> Vec<crate::sandbox::open_files::OpenFile> {
        self.plan.open_files()
    }

    /// Takes back and checks the files a stub sandbox opened (host pid
    /// `stub_pid`, not running yet): see [`fds::FdPlan::adopt`].
    pub fn adopt(&mut self, stub_pid: i32) -> Result<(), RestoreError> {
        let pidfd = pidfd_open(stub_pid)?;
        self.plan.adopt(std::os::fd::AsFd::as_fd(&pidfd))
    }

    /// Checks again that every file a private area reads its pages from is
    /// unchanged (size, modification time) since it was opened: a prepared
    /// restore may wait a long time (a spare sandbox) before it runs.
    pub fn recheck(&self, snapshot: &Snapshot) -> Result<(), RestoreError> {
        recheck_plan(&self.plan, &snapshot.state)
    }

    /// Lets this restore use (and fill) `plans`, which belong to the same
    /// snapshot: what every restore of it computes alike is computed once.
    pub fn share_plans(&mut self, plans: std::sync::Arc<plans::SnapshotPlans>) {
        self.plans = Some(plans);
    }
}

/// [`Prepared::recheck`] of one process's plan (`state`: the process).
pub(crate) fn recheck_plan(plan: &fds::FdPlan, state: &ProcessState) -> Result<(), RestoreError> {
    // Each private file once, listed when the plan was made (not a walk of
    // every area's fd and a set of those seen, for every copy).
    for (index, number) in &plan.private_files {
        let Some(area) = state.areas.get(*index) else {
            continue;
        };
        // What the file was when it was checked (its identity at the
        // capture, or another file of the same content).
        let (Some(id), Some(fd)) = (
            plan.checked.get(number).or(area.file.as_ref()),
            plan.opened(*number),
        ) else {
            continue;
        };
        // The path is copied only for an error (this runs for every
        // mapped file of every copy).
        let path = || area.path.clone().unwrap_or_default();
        let st = nix::sys::stat::fstat(fd).map_err(|e| RestoreError::Io {
            what: format!("stat {}", path()),
            source: e.into(),
        })?;
        if st.st_size as u64 != id.size
            || st.st_mtime != id.mtime_sec
            || st.st_mtime_nsec != id.mtime_nsec
        {
            return Err(RestoreError::FileChanged {
                    path: path(),
                    what: format!(
                        "changed in place since the restore was prepared: size {} mtime {}.{:09}, was size {} mtime {}.{:09}",
                        st.st_size, st.st_mtime, st.st_mtime_nsec, id.size, id.mtime_sec, id.mtime_nsec
                    ),
                });
        }
    }
    Ok(())
}

/// Opens and checks everything `snapshot` needs, here: its image (built
/// from the store when missing), the files its areas map, its executable,
/// and the files behind its fds (`options.fds` are supplied by the
/// caller), all by path in the restorer's mount namespace. For restores
/// without a sandbox (`thaw restore`); a sandboxed copy uses
/// [`prepare_for_sandbox`].
pub fn prepare(
    snapshot: &Snapshot,
    store: &PageStore,
    options: &RestoreOptions<'_>,
) -> Result<Prepared, RestoreError> {
    let mut prepared = prepare_for_sandbox(snapshot, store, options)?;
    let started = Instant::now();
    prepared.plan.open_here()?;
    prepared.took += started.elapsed();
    Ok(prepared)
}

/// [`prepare`] for a copy restored into a stub sandbox: opens only thaw's
/// own files (the image) and makes the copy's kernel objects; the files the
/// copy names by path are opened by the stub inside its sandbox
/// ([`Prepared::open_files`]) and checked by [`Prepared::adopt`].
pub fn prepare_for_sandbox(
    snapshot: &Snapshot,
    store: &PageStore,
    options: &RestoreOptions<'_>,
) -> Result<Prepared, RestoreError> {
    let started = Instant::now();
    let image = {
        // The store builds a missing image under a temporary name made of
        // the process id: two threads of one process building it at once
        // would collide. One build at a time per process.
        static BUILDING: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _one = BUILDING.lock().unwrap_or_else(|e| e.into_inner());
        placement::image(snapshot, store)?
    };
    depends::check_host(snapshot)?;
    let mut plan = fds::plan(&snapshot.state, &options.fds, image.file.as_raw_fd())?;
    depends::attach(&mut plan, snapshot);
    Ok(Prepared {
        image,
        plan,
        took: started.elapsed(),
        lazy: None,
        plans: None,
    })
}

/// [`prepare_for_sandbox`] of a lazy restore (`uffd` mode only, a single
/// process): the image is made by [`page_source::LazyPages::new`] in
/// `dir` from what `local` has; the pages needed before the resume are
/// fetched from `source` once [`Prepared::start_fetch`] starts it (at the
/// latest by the restore; a failure is [`RestoreError::Fetch`]).
pub fn prepare_lazily_for_sandbox(
    snapshot: &Snapshot,
    local: Option<std::sync::Arc<PageStore>>,
    source: std::sync::Arc<dyn page_source::PageSource>,
    dir: &Path,
    options: &RestoreOptions<'_>,
) -> Result<Prepared, RestoreError> {
    if options.mode != Mode::Uffd {
        return Err(RestoreError::Unsupported(
            "a lazy restore from a page source needs uffd mode".into(),
        ));
    }
    if !snapshot.children.is_empty() {
        return Err(RestoreError::Unsupported(
            "a lazy restore of a process tree".into(),
        ));
    }
    let started = Instant::now();
    depends::check_host(snapshot)?;
    let (lazy, image) =
        page_source::LazyPages::new(snapshot, local, source, dir, &options.prefetch)?;
    let mut plan = fds::plan(&snapshot.state, &options.fds, image.file.as_raw_fd())?;
    depends::attach(&mut plan, snapshot);
    Ok(Prepared {
        image,
        plan,
        took: started.elapsed(),
        lazy: Some(std::sync::Arc::new(lazy)),
        plans: None,
    })
}

/// [`prepare_lazily_for_sandbox`] for a restore without a sandbox (`thaw
/// restore`): the files the copy names are opened here.
pub fn prepare_lazily(
    snapshot: &Snapshot,
    local: Option<std::sync::Arc<PageStore>>,
    source: std::sync::Arc<dyn page_source::PageSource>,
    dir: &Path,
    options: &RestoreOptions<'_>,
) -> Result<Prepared, RestoreError> {
    let mut prepared = prepare_lazily_for_sandbox(snapshot, local, source, dir, options)?;
    prepared.start_fetch();
    let started = Instant::now();
    prepared.plan.open_here()?;
    prepared.took += started.elapsed();
    Ok(prepared)
}

impl Prepared {
    /// A lazy restore: what its page source fetched so far, and what the
    /// image still lacks.
    pub fn lazy(&self) -> Option<&std::sync::Arc<page_source::LazyPages>> {
        self.lazy.as_ref()
    }

    /// A lazy restore: starts fetching what the copy needs before it
    /// resumes ([`page_source::LazyPages::start_fetch`]); once only.
    /// Returns whether this call started it.
    pub fn start_fetch(&self) -> bool {
        self.lazy.as_ref().is_some_and(|lazy| lazy.start_fetch())
    }
}

/// The offsets of the time namespace of a copy of `snapshot` restored
/// without a sandbox, or `None` when time namespaces are off
/// (`THAW_TIME_NAMESPACE=0`).
pub(crate) fn copy_time_offsets(
    snapshot: &Snapshot,
) -> Result<Option<snapshotter::state::Clocks>, RestoreError> {
    if !crate::sandbox::timens::enabled() {
        return Ok(None);
    }
    depends::time_offsets(snapshot).map(Some)
}

/// Restores `snapshot`, whose pages are in `store`.
pub fn restore(
    snapshot: &Snapshot,
    store: &PageStore,
    options: &RestoreOptions<'_>,
) -> Result<RestoredChild, RestoreError> {
    if !snapshot.children.is_empty() {
        return tree::restore_tree(snapshot, store, options);
    }
    let prepared = prepare(snapshot, store, options)?;
    restore_prepared(snapshot, prepared, options)
}

/// Restores `snapshot` (a single process) from what [`prepare`] or
/// [`prepare_lazily`] made, without a sandbox.
pub fn restore_prepared(
    snapshot: &Snapshot,
    prepared: Prepared,
    options: &RestoreOptions<'_>,
) -> Result<RestoredChild, RestoreError> {
    let state = &snapshot.state;
    let mut timings = RestoreTimings::default();
    let Prepared {
        image,
        plan,
        took,
        lazy,
        plans,
    } = prepared;
    timings.plan = took;

    let started = Instant::now();
    let time = copy_time_offsets(snapshot)?;
    let spawned = spawn::spawn_with_time(state.pid, &plan.moves, time.as_ref())?;
    let mut guard = InitGuard(Some(spawned.init_pid));
    join_cgroups(&options.cgroups, &[spawned.init_pid, spawned.stub_pid])?;
    let remote = Remote::seize(spawned.stub_pid)?;
    timings.stub = started.elapsed();
    let ctx = Driving {
        snapshot,
        view: ProcessView::root(snapshot, &image),
        places: None,
        image: &image,
        plan: &plan,
        options,
        stub_pidfd: Some(&spawned.stub_pidfd),
        keep_uffd: false,
        collect_uffds: None,
        shared_memfds: None,
        lazy: lazy.as_ref(),
        plans: plans.as_deref(),
    };
    let server = drive(remote, &ctx, &mut timings)?;
    if let Some(lazy) = &lazy {
        lazy.set_resumed();
    }
    let (server, live) = match server {
        Some((thread, live)) => (Some(thread), Some(live)),
        None => (None, None),
    };
    drop(plan);
    guard.0 = None;
    Ok(RestoredChild {
        init_pid: spawned.init_pid,
        pid: spawned.stub_pid,
        ns_pid: state.pid,
        pidfd: spawned.stub_pidfd,
        status: None,
        server,
        live,
        child_servers: Vec::new(),
        server_stats: None,
        timings,
    })
}

/// The page server of a copy made by [`restore_into`] in `uffd` mode: a
/// thread of the restorer serving the copy's faults until the copy ends.
/// Whoever owns the copy owns this: [`CopyServer::join`] it once the copy
/// is dead. If serving fails, the server kills the copy itself.
#[derive(Debug)]
pub struct CopyServer {
    thread: PageServerThread,
    live: std::sync::Arc<uffd::LiveReport>,
    /// A tree: the page servers of the processes other than the root.
    others: Vec<PageServerThread>,
}

impl CopyServer {
    /// What the server has done so far (working set, faults, prefetch).
    pub fn live(&self) -> &std::sync::Arc<uffd::LiveReport> {
        &self.live
    }

    /// Waits for the server to end (it ends when the copy has exited) and
    /// returns its report, or why it failed. Blocking.
    /// A tree's other servers are joined too (they end with their
    /// processes, which die with the root's namespace); the first failure
    /// is returned.
    pub fn join(self) -> Result<uffd::ServerReport, RestoreError> {
        let mut failed = None;
        for other in self.others {
            match other.join() {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => failed = failed.or(Some(e)),
                Err(_) => {
                    failed = failed.or(Some(RestoreError::Unsupported(
                        "a page server panicked".into(),
                    )))
                }
            }
        }
        let root = match self.thread.join() {
            Ok(r) => r,
            Err(_) => Err(RestoreError::Unsupported("the page server panicked".into())),
        };
        match failed {
            Some(e) => Err(e),
            None => root,
        }
    }
}

/// Moves `pids` (the copy's init and stub) into each cgroup directory of
/// `cgroups`.
fn join_cgroups(cgroups: &[std::path::PathBuf], pids: &[i32]) -> Result<(), RestoreError> {
    for dir in cgroups {
        let procs = dir.join("cgroup.procs");
        for pid in pids {
            std::fs::write(&procs, pid.to_string()).map_err(|source| RestoreError::Io {
                what: format!("join {}", procs.display()),
                source,
            })?;
        }
    }
    Ok(())
}

/// Opens a pidfd of `pid` (any process; not necessarily our child).
pub(crate) fn pidfd_open(pid: i32) -> Result<OwnedFd, RestoreError> {
    // SAFETY: pidfd_open with no flags returns a new descriptor or -1.
    let r = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if r < 0 {
        return Err(RestoreError::Io {
            what: format!("pidfd_open({pid})"),
            source: std::io::Error::last_os_error(),
        });
    }
    // SAFETY: a fresh descriptor nobody else owns.
    Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(r as i32) })
}

/// Turns a stub that already exists, holds [`Prepared::moves`] at their
/// numbers and waits in `pause()` (a sandbox's restore stub) into a copy of
/// `snapshot`. In `uffd` mode the userfaultfd is made in the stub while it
/// is still privileged and handed to the sandbox's pid 1
/// (`options.uffd_keeper`, required), which holds it (see docs/restore.md,
/// "uffd copies and the server's death"); the returned [`CopyServer`]
/// serves it.
pub fn restore_into(
    stub_pid: i32,
    snapshot: &Snapshot,
    prepared: &Prepared,
    options: &RestoreOptions<'_>,
) -> Result<(RestoreTimings, Option<CopyServer>), RestoreError> {
    if !prepared.plan.ready() {
        return Err(RestoreError::Unsupported(
            "the stub's files were not taken back and checked (Prepared::adopt)".into(),
        ));
    }
    let mut timings = RestoreTimings {
        plan: prepared.took,
        ..RestoreTimings::default()
    };
    let started = Instant::now();
    let pidfd = match options.mode {
        Mode::Uffd => Some(pidfd_open(stub_pid)?),
        Mode::Mmap => None,
    };
    let remote = Remote::seize(stub_pid)?;
    timings.stub = started.elapsed();
    let ctx = Driving {
        snapshot,
        view: ProcessView::root(snapshot, &prepared.image),
        places: None,
        image: &prepared.image,
        plan: &prepared.plan,
        options,
        stub_pidfd: pidfd.as_ref(),
        keep_uffd: true,
        collect_uffds: None,
        shared_memfds: None,
        lazy: prepared.lazy.as_ref(),
        plans: prepared.plans.as_deref(),
    };
    let server = drive(remote, &ctx, &mut timings)?;
    if let Some(lazy) = &prepared.lazy {
        lazy.set_resumed();
    }
    Ok((
        timings,
        server.map(|(thread, live)| CopyServer {
            thread,
            live,
            others: Vec::new(),
        }),
    ))
}

/// One process of a snapshot as the driver restores it: its state, its
/// areas' page lists and where those lie in the image.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ProcessView<'a> {
    /// The process.
    pub state: &'a ProcessState,
    /// Its areas' page lists.
    pub areas: &'a [snapshotter::store::AreaPages],
    /// Its areas in the image (entry `i` for area `i`).
    pub layout: &'a snapshotter::store::ImageLayout,
}

impl<'a> ProcessView<'a> {
    /// The snapshot's root process (its only one unless it is a tree).
    pub(crate) fn root(
        snapshot: &'a Snapshot,
        image: &'a snapshotter::store::CachedImage,
    ) -> ProcessView<'a> {
        ProcessView {
            state: &snapshot.state,
            areas: &snapshot.areas,
            layout: &image.layout,
        }
    }
}

/// What the steps of [`drive`] work from: the snapshot, what [`prepare`]
/// opened, the options, and how the stub was made.
pub(crate) struct Driving<'a, 'o> {
    pub(crate) snapshot: &'a Snapshot,
    /// The process restored (the root, or one process of a tree).
    pub(crate) view: ProcessView<'a>,
    /// The scratch area when the stub has it already (a process of a tree:
    /// mapped in the root stub before the forks, inherited at the same
    /// place); `None`: [`restore_memory`] maps it.
    pub(crate) places: Option<memory::Places>,
    pub(crate) image: &'a snapshotter::store::CachedImage,
    pub(crate) plan: &'a fds::FdPlan,
    pub(crate) options: &'a RestoreOptions<'o>,
    /// The stub's pidfd (required in `uffd` mode, to pull its userfaultfd).
    pub(crate) stub_pidfd: Option<&'a OwnedFd>,
    /// A copy restored into a sandbox: the copy's userfaultfd goes to the
    /// sandbox's pid 1 (`options.uffd_keeper`), which holds it, so the
    /// kernel never releases it, and never turns missing pages into zeros,
    /// while the copy lives; no process of the function holds it. Such
    /// copies also always get the seccomp policy.
    pub(crate) keep_uffd: bool,
    /// With `keep_uffd`, a process of a sandboxed tree: its userfaultfd is
    /// added here, and the tree's are sent to pid 1 together once every
    /// process is prepared (pid 1 takes one message).
    pub(crate) collect_uffds: Option<&'a std::cell::RefCell<Vec<OwnedFd>>>,
    /// A process of a tree: its anonymous shared memory's memfds, made for
    /// the whole tree ([`shared::make_for_tree`]); `None`:
    /// [`restore_memory`] makes the process's own.
    pub(crate) shared_memfds: Option<&'a shared::SharedMemfds>,
    /// A lazy restore: pages not in the image yet come from its source.
    pub(crate) lazy: Option<&'a std::sync::Arc<page_source::LazyPages>>,
    /// Plans shared with the other restores of the snapshot, if any.
    pub(crate) plans: Option<&'a plans::SnapshotPlans>,
}

/// The uffd page server of a copy and what it has done so far.
type Served = (PageServerThread, std::sync::Arc<uffd::LiveReport>);

/// Everything after the stub is seized, for a single process: see
/// [`prepare_process`], then [`Ready::resume`]. Returns the uffd page
/// server, if any.
fn drive(
    remote: Remote,
    ctx: &Driving<'_, '_>,
    timings: &mut RestoreTimings,
) -> Result<Option<Served>, RestoreError> {
    if !ctx.snapshot.children.is_empty() {
        return Err(RestoreError::Unsupported(format!(
            "snapshot {} is a tree of {} processes: restore it with `restore` (thaw restore) or `tree::restore_tree_into` (a sandbox's stub, as `SnapshotRestorer` does)",
            ctx.snapshot.id,
            ctx.snapshot.children.len() + 1
        )));
    }
    prepare_process(remote, ctx, timings)?.resume(timings)
}

/// A process of the copy with everything set but not yet running (every
/// thread held; see [`prepare_process`]). Dropping it kills the process.
pub(crate) struct Ready {
    // Fields drop in order: the process is killed before any of its
    // threads is detached (a half-made thread would run the batch loop's
    // code it was cloned in).
    kill_on_error: KillOnError,
    others: Vec<Remote>,
    remote: Remote,
    server: Option<uffd::PageServer>,
    server_pidfd: Option<OwnedFd>,
    /// A process of a tree other than the root: the root's pidfd, which
    /// its page server kills if serving fails (the whole copy dies).
    pub(crate) kill_with: Option<std::sync::Arc<OwnedFd>>,
}

impl Ready {
    /// Starts the page server, if any, and lets every thread run, the main
    /// thread last.
    pub(crate) fn resume(
        mut self,
        timings: &mut RestoreTimings,
    ) -> Result<Option<Served>, RestoreError> {
        let started = Instant::now();
        let server = match (self.server.take(), self.server_pidfd.take()) {
            (Some(s), Some(pidfd)) => {
                let live = s.live();
                let thread = match self.kill_with.take() {
                    Some(root) => s.spawn_in_tree(pidfd, root),
                    None => s.spawn(pidfd),
                };
                Some((thread, live))
            }
            _ => None,
        };
        // Every thread is set before any runs.
        for t in self.others.drain(..) {
            t.detach()?;
        }
        let Ready {
            mut kill_on_error,
            remote,
            ..
        } = self;
        remote.detach()?;
        kill_on_error.0 = None;
        timings.resume += started.elapsed();
        Ok(server)
    }
}

/// Turns the seized stub `remote` into the process `ctx.view`, up to the
/// resume: one step per kind of state, in the order docs/restore.md
/// ("Order of the restore") gives the reasons for. Step 1
/// ([`map_process`]) and steps 2-9 ([`set_process`]) may also run apart,
/// from the same thread (a pre-mapped spare, see [`premap`]).
pub(crate) fn prepare_process(
    remote: Remote,
    ctx: &Driving<'_, '_>,
    timings: &mut RestoreTimings,
) -> Result<Ready, RestoreError> {
    let mapped = map_process(remote, ctx, timings)?;
    set_process(mapped, ctx, timings)
}

/// A stub whose address space is the copy's (step 1 of
/// [`prepare_process`] done), still held by this thread, nothing else set.
/// Dropping it kills the stub and waits for its death to be reported
/// (see [`KillOnError`]), then detaches.
pub(crate) struct Mapped {
    // Fields drop in order: the kill before the detach.
    kill_on_error: KillOnError,
    remote: Remote,
    memory: RestoredMemory,
}

impl Mapped {
    /// mmap mode: populates the working set `pages` now, in a batch of its
    /// own (a copy mapped before its snapshot's working set was recorded;
    /// see [`populate`]). Returns the ranges populated.
    pub(crate) fn populate(
        &mut self,
        ctx: &Driving<'_, '_>,
        pages: &[u64],
    ) -> Result<u32, RestoreError> {
        let mut batch = Batch::new(self.memory.scratch);
        let ranges = populate(
            &mut batch,
            &ctx.view.state.areas,
            pages,
            plans::PopulateScope::All,
            ctx.plans,
        );
        if ranges > 0 {
            self.remote.run(batch)?;
        }
        Ok(ranges as u32)
    }
}

impl std::fmt::Debug for Mapped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mapped")
            .field("pid", &self.remote.pid())
            .field("scratch", &self.memory.scratch)
            .finish()
    }
}

/// Step 1 of [`prepare_process`]: the state checked, then the memory (the
/// stub's own areas out, the saved ones in, and in uffd mode the page
/// server), before anything refers to an address. From here on an error,
/// or dropping what is returned, kills the stub.
pub(crate) fn map_process(
    mut remote: Remote,
    ctx: &Driving<'_, '_>,
    timings: &mut RestoreTimings,
) -> Result<Mapped, RestoreError> {
    let state = ctx.view.state;
    state
        .validate()
        .map_err(|e| RestoreError::Unsupported(format!("snapshot state: {e}")))?;
    let kill_on_error = KillOnError(Some(remote.pid()));
    // 1. memory.
    let started = Instant::now();
    let memory = restore_memory(&mut remote, ctx, &state.areas, timings)?;
    timings.mappings += started.elapsed();
    Ok(Mapped {
        kill_on_error,
        remote,
        memory,
    })
}

/// Steps 2-9 of [`prepare_process`] on a stub [`map_process`] mapped, from
/// the thread that mapped it (its tracer), up to the resume: steps 2-8
/// whole ([`settle_process`] with [`Settle::Now`]), then the registers
/// ([`Settled::finish`]).
pub(crate) fn set_process(
    mapped: Mapped,
    ctx: &Driving<'_, '_>,
    timings: &mut RestoreTimings,
) -> Result<Ready, RestoreError> {
    settle_process(mapped, ctx, timings, Settle::Now)?.finish(ctx, timings)
}

/// When the steps that count from "now" run (docs/restore.md, "Order of
/// the restore" and "Pre-mapped spares").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Settle {
    /// With the rest of steps 2-8, the scratch area unmapped after them:
    /// [`Settled::finish`] sets only the registers. Every restore but a
    /// pre-mapped spare's (and a spare's with `THAW_PREMAP_AHEAD=0`).
    Now,
    /// A pre-mapped spare's pre-map: steps 2-8 except what counts from
    /// the copy's resume or must come after everything else, left to
    /// [`Settled::finish`] at the claim: the timerfds armed, the POSIX and
    /// interval timers, the main thread's and the process's pending
    /// signals queued again, the scratch area unmapped. With none of those
    /// to do, the scratch area is unmapped now too.
    Ahead,
}

/// A process of the copy with steps 2-8 done (but what [`Settle::Ahead`]
/// leaves to the claim), held by this thread, not running. Dropping it
/// kills the process.
pub(crate) struct Settled {
    // Fields drop in order: the process is killed before any of its
    // threads is detached.
    kill_on_error: KillOnError,
    others: Vec<Remote>,
    remote: Remote,
    server: Option<uffd::PageServer>,
    /// The scratch area (unmapped when `remote.scratch` is `None`).
    scratch: u64,
    /// The claim's batch is due ([`Settle::Ahead`], a snapshot with
    /// timers or pending signals).
    deferred: bool,
}

impl std::fmt::Debug for Settled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settled")
            .field("pid", &self.remote.pid())
            .field("threads", &(self.others.len() + 1))
            .field("scratch", &self.remote.scratch)
            .field("deferred", &self.deferred)
            .finish()
    }
}

/// Whether the process `state` has anything [`Settle::Ahead`] leaves to
/// the claim: an armed timerfd (or one with unread expirations), a POSIX
/// or interval timer, a pending signal of the main thread or the process.
pub(crate) fn due_at_claim(state: &ProcessState) -> bool {
    kobj::any_to_arm(&state.fds)
        || !state.timers.posix.is_empty()
        || !state.timers.interval.is_empty()
        || !state.pending.is_empty()
        || state.threads.first().is_some_and(|t| !t.pending.is_empty())
}

/// Steps 2-8 of [`prepare_process`] on a stub [`map_process`] mapped, from
/// the thread that mapped it (its tracer): all of them ([`Settle::Now`]),
/// or all but what counts from the resume ([`Settle::Ahead`]).
///
/// The state is destructured with every field named (no `..`) and unused
/// bindings are denied here: a kind of state the capture records but no
/// step restores does not compile.
#[deny(unused_variables)]
pub(crate) fn settle_process(
    mapped: Mapped,
    ctx: &Driving<'_, '_>,
    timings: &mut RestoreTimings,
    when: Settle,
) -> Result<Settled, RestoreError> {
    let ahead = when == Settle::Ahead;
    let state = ctx.view.state;
    let ProcessState {
        version: _, // checked by `validate` (`map_process`)
        pid,
        personality,
        signals,
        mm,
        process,
        areas, // mapped by `map_process`
        fds,
        threads,
        ids: _, // a tree's sessions and groups: `tree`, before this drive
        timers,
        pending,
    } = state;
    let (main, saved_others) = threads.split_first().expect("validated: a main thread");
    // Declared in this order so that on an error the copy is killed before
    // any of its threads is detached (a half-made thread would run the
    // scratch area's code it is parked in), and the main thread is
    // detached last.
    let mut remote = mapped.remote;
    let mut others: Vec<Remote> = Vec::new();
    let kill_on_error = mapped.kill_on_error;
    let memory = mapped.memory;

    let started = Instant::now();
    // 3a. sockets, made by the copy in its own namespaces, before the batch
    //     below sets close-on-exec and registers descriptors with epoll.
    //     The stub's userfaultfd sits in the lowest free number, which may
    //     be a socket's: it is closed first.
    let mut uffd_in_stub = memory.uffd_in_stub;
    if socket::any(fds) {
        if let Some(fd) = uffd_in_stub.take() {
            remote.sys("close (userfaultfd)", libc::SYS_close, [fd, 0, 0, 0, 0, 0])?;
        }
    }
    socket::restore(
        &mut remote,
        memory.scratch,
        fds,
        socket::FsIds::of(state, &ctx.options.credentials),
    )?;
    // One batch in the main thread, before any other thread exists.
    let mut batch = Batch::new(memory.scratch);
    // Every signal blocked in the main thread first, until the resume: a
    // signal that comes meanwhile (a restored timer's, a re-queued pending
    // one) waits, pending, and the threads made in step 7 start with
    // every signal blocked (clone3 copies the mask), so no handler of the
    // copy can run on the thread-making code.
    thread::block_all_signals(&mut batch)?;
    // 2. mm: needs the stub's binary unmapped (EBUSY otherwise) and the
    //    executable's fd still open.
    mm::set_mm(&mut batch, mm, ctx.plan.exe_fd)?;
    // 3. fds: the mapping fds closed (the executable's with them), the
    //    kernel objects armed and registered.
    //    (ahead of the claim: registered only, armed at the claim).
    restore_fds(&mut batch, fds, ctx.plan, uffd_in_stub, !ahead)?;
    // 4. signals: dispositions are shared by the threads.
    signals::set_signals(&remote, &mut batch, signals)?;
    // 5. process attributes: the threads cloned next inherit them.
    process::set_attributes(
        &remote,
        &mut batch,
        process,
        *personality,
        &ctx.options.credentials,
    )?;
    // 6. the main thread's own registrations.
    thread::set_thread(&mut batch, main)?;
    timings.batched += batch.len() as u32;
    remote.run(batch)?;
    let first_batch = started.elapsed();

    // 7. the other threads, each with its saved tid (while the stub is
    //    still privileged), its registrations, scheduling and credentials.
    let threads_started = Instant::now();
    thread::restore_others(
        &mut remote,
        &mut others,
        saved_others,
        memory.scratch,
        state,
        &ctx.options.credentials,
        timings,
    )?;
    thread::set_sched(remote.pid(), *pid, &main.sched)?;
    timings.threads = threads_started.elapsed();
    let policy_started = Instant::now();

    // 8. (every signal is blocked in every thread since batch 2) the
    //    timers, which may signal any thread and count from now; the
    //    pending signals of the main thread and of the process, queued
    //    again; the main thread's
    //    credentials, then the seccomp policy (and the mmap-mode guard)
    //    with TSYNC: they reach every thread (or the call fails), last of
    //    the steps that need privileges.
    //    Ahead of the claim, the timers and pending signals wait for the
    //    claim's batch (`Settled::finish`), which runs as the function,
    //    under its policy and the guard: none of its calls needs a
    //    privilege, the policy denies none of them, the guard traps none
    //    (and none from the scratch area).
    let mut batch = Batch::new(memory.scratch);
    if !ahead {
        timers::set_timers(&mut batch, timers)?;
        pending::queue_for_thread(&mut batch, *pid, main.tid, &main.pending)?;
        pending::queue_for_process(&mut batch, *pid, pending)?;
    }
    if let Some(g) = &memory.guard {
        g.install(&mut batch)?;
    }
    credentials::set_credentials(&mut batch, state, &ctx.options.credentials)?;
    // Changing credentials clears the parent-death signal: after them.
    thread::set_parent_death_signal(&mut batch, main);
    // Sandboxed copies (`restore_into`) always get the policy.
    seccomp::install(&mut batch, state, ctx.keep_uffd)?;
    timings.batched += batch.len() as u32;
    // The filters reached every thread: the batch fails when a TSYNC
    // install returns anything but 0 (see `batch`).
    remote.run(batch)?;
    let deferred = ahead && due_at_claim(state);
    if !deferred {
        unmap_scratch(&mut remote)?;
    }
    timings.state += started.elapsed();
    tracing::debug!(
        pid = remote.pid(),
        threads = saved_others.len() + 1,
        fds = fds.len(),
        areas = areas.len(),
        ahead,
        deferred,
        map_batch_us = timings.batch.as_micros() as u64,
        first_batch_us = first_batch.as_micros() as u64,
        threads_us = timings.threads.as_micros() as u64,
        policy_us = policy_started.elapsed().as_micros() as u64,
        "restore: state phase"
    );
    Ok(Settled {
        kill_on_error,
        others,
        remote,
        server: memory.server,
        scratch: memory.scratch,
        deferred,
    })
}

/// Unmaps the scratch area, if still mapped (one injected call).
fn unmap_scratch(remote: &mut Remote) -> Result<(), RestoreError> {
    if let Some((addr, len)) = remote.scratch.take() {
        remote.sys(
            "munmap (scratch)",
            libc::SYS_munmap,
            [addr, len, 0, 0, 0, 0],
        )?;
    }
    Ok(())
}

impl Settled {
    /// What [`Settle::Ahead`] left (the timerfds armed, the timers, the
    /// main thread's and the process's pending signals: one batch, as the
    /// function under its policy; the scratch area unmapped), then step 9:
    /// the registers and masks of every thread, up to the resume.
    pub(crate) fn finish(
        self,
        ctx: &Driving<'_, '_>,
        timings: &mut RestoreTimings,
    ) -> Result<Ready, RestoreError> {
        let state = ctx.view.state;
        let (main, saved_others) = state
            .threads
            .split_first()
            .expect("validated: a main thread");
        // Moved out in this order so that on an error the copy is killed
        // before any of its threads is detached, the main thread last.
        let mut remote = self.remote;
        let mut others = self.others;
        let kill_on_error = self.kill_on_error;
        let server = self.server;
        if self.deferred {
            // 8, at the claim: the timers count from here (every signal
            // is still blocked in every thread; a timer's signal waits).
            let started = Instant::now();
            let mut batch = Batch::new(self.scratch);
            kobj::arm(&mut batch, &state.fds)?;
            timers::set_timers(&mut batch, &state.timers)?;
            pending::queue_for_thread(&mut batch, state.pid, main.tid, &main.pending)?;
            pending::queue_for_process(&mut batch, state.pid, &state.pending)?;
            timings.batched += batch.len() as u32;
            remote.run(batch)?;
            unmap_scratch(&mut remote)?;
            timings.state += started.elapsed();
        } else if remote.scratch.is_some() {
            let started = Instant::now();
            unmap_scratch(&mut remote)?;
            timings.state += started.elapsed();
        }

        // 9. registers of every thread, then all resume together.
        let started = Instant::now();
        for (t, saved) in others.iter_mut().zip(saved_others) {
            thread::set_registers_after_batch(t, saved)?;
            thread::set_mask(t, saved)?;
            timings.injected += t.calls;
        }
        thread::set_registers(&mut remote, main)?;
        // The main thread's mask last: a signal that came since step 8 (a
        // timer's) stays pending through every stop until the resume.
        thread::set_mask(&remote, main)?;
        timings.injected += remote.calls;
        let server_pidfd = match &server {
            Some(_) => Some(
                ctx.stub_pidfd
                    .expect("uffd mode has the stub's pidfd")
                    .try_clone()
                    .map_err(|source| RestoreError::Io {
                        what: "dup pidfd".into(),
                        source,
                    })?,
            ),
            None => None,
        };
        timings.resume += started.elapsed();
        Ok(Ready {
            kill_on_error,
            others,
            remote,
            server,
            server_pidfd,
            kill_with: None,
        })
    }
}

/// What [`restore_memory`] leaves for the later steps.
struct RestoredMemory {
    /// The scratch area the batches run in.
    scratch: u64,
    /// mmap mode: the anonymous-memory guard, mapped, to install.
    guard: Option<anon::Guard>,
    /// uffd mode: the page server, to start when the copy resumes.
    server: Option<uffd::PageServer>,
    /// uffd mode: the userfaultfd's number in the stub, to close.
    uffd_in_stub: Option<u64>,
}

/// Adds to `batch` (the mapping batch, at its best-effort tail) the
/// copying in of the pages of the recorded working set the first copy
/// wrote, and the mapping of those its first invocation read, so that the
/// copy does not take those faults one by one in its first invocation
/// (`MADV_POPULATE_WRITE` or `MADV_POPULATE_READ` of each run, see
/// [`working_set::populate_ranges`], by vectors of runs where the kernel
/// allows, see the `populate` module; in uffd mode only the areas the page server
/// does not fill). In the same round trip
/// as the mappings: a round trip of its own cost more than the populating
/// on a busy machine. Best effort: a range the kernel refuses ends the
/// populating, never the restore.
fn populate(
    batch: &mut Batch,
    areas: &[snapshotter::state::MemoryArea],
    pages: &[u64],
    scope: plans::PopulateScope,
    plans: Option<&plans::SnapshotPlans>,
) -> usize {
    let reads = working_set::reads_wanted();
    let around = populate::around_wanted();
    let ranges = match plans {
        Some(plans) => plans.populate_ranges(pages, areas, reads, scope, around),
        None => std::sync::Arc::new(scope.ranges_around(pages, areas, reads, around)),
    };
    populate::add(batch, &ranges);
    ranges.len()
}

/// Step 1 of [`drive`]: the address space. The stub's rseq registration,
/// its areas and binary go; the special areas move to the saved addresses;
/// every saved area is mapped (see [`memory`]); in uffd mode the page
/// server is made (each thread's rseq page filled before it is registered,
/// the prefetch done unless it runs in the background); private pages that
/// are written rather than mapped are written.
fn restore_memory(
    remote: &mut Remote,
    ctx: &Driving<'_, '_>,
    areas: &[snapshotter::state::MemoryArea],
    timings: &mut RestoreTimings,
) -> Result<RestoredMemory, RestoreError> {
    let (state, options, image, plan) = (ctx.view.state, ctx.options, ctx.image, ctx.plan);
    let started = Instant::now();
    let stub_map = match remote.take_stub_map() {
        Some(map) => map,
        None => memory::stub_map(remote.pid())?,
    };
    let places = match ctx.places {
        Some(places) => places,
        None => memory::prepare_scratch(remote, &stub_map, areas)?,
    };
    // mmap mode: the guard that keeps anonymous-memory semantics (refuses
    // the restore when it cannot).
    // uffd mode: the live threads' stacks (a few pages each, touched as
    // soon as a thread runs) are written too rather than served.
    let eager = match options.mode {
        Mode::Mmap if anon::enabled() => stacks::eager_areas(state, &image.file, &image.layout),
        Mode::Mmap => Default::default(),
        Mode::Uffd => thread::live_stacks(state, ctx.view.areas),
    };
    // A lazy image holds only what was fetched: the areas written from it
    // rather than served (shared memory's too: `shared`, `sysv`) must be
    // fetched whole first.
    if let Some(lazy) = ctx.lazy {
        // What `LazyPages::new` started fetching (these areas among them).
        lazy.ready()?;
        let written = areas.iter().enumerate().filter(|(_, a)| {
            shared::is_shared_anonymous(a)
                || matches!(a.kind, snapshotter::state::AreaKind::SysvShm(_))
        });
        lazy.ensure_areas(eager.iter().copied().chain(written.map(|(i, _)| i)))
            .map_err(RestoreError::Fetch)?;
    }
    let guard = match options.mode {
        Mode::Mmap if anon::enabled() => Some(anon::Guard::plan_with(
            state,
            &image.file,
            &[(places.scratch, places.scratch + batch::SCRATCH_LEN)],
            &eager,
            ctx.plans.map(|p| &p.guard_filter),
        )?),
        _ => None,
    };
    // Shared memory: the copy's own memfds (a tree's: made for every
    // process already), before the batch maps them.
    let made;
    let shared_memfds = match ctx.shared_memfds {
        Some(memfds) => memfds,
        None => {
            made = shared::make(remote, places.scratch, areas)?;
            &made
        }
    };
    let mut batch = Batch::new(places.scratch);
    thread::unregister_rseq(remote, &mut batch)?;
    let syscall_at = memory::clear_and_move_specials(
        &mut batch,
        &stub_map,
        areas,
        places,
        remote.syscall_address(),
    )?;
    let sources = MapSources {
        area_fds: &plan.area_fds,
        image_fd: plan.image_fd,
        image: &image.file,
        layout: ctx.view.layout,
        lazy: options.mode == Mode::Uffd,
        eager: &eager,
        shared_fds: &shared_memfds.by_area,
    };
    memory::map_areas(&mut batch, areas, ctx.view.areas, &sources)?;
    if let Some(g) = &guard {
        g.map(&mut batch);
    }
    if !options.prefetch.is_empty() {
        let scope = match options.mode {
            Mode::Mmap => plans::PopulateScope::All,
            // Only the areas the page server does not fill (the mapped
            // files): populating a registered area now would wait for a
            // server that is not running yet.
            Mode::Uffd => plans::PopulateScope::OutsideLazyAreas,
        };
        timings.populated = populate(&mut batch, areas, &options.prefetch, scope, ctx.plans) as u32;
    }
    timings.batched += batch.len() as u32;
    remote.run(batch)?;
    if let Some(g) = &guard {
        g.write(remote)?;
    }
    remote.set_syscall_address(syscall_at);
    shared::fill_and_close(
        remote,
        shared_memfds,
        areas,
        ctx.view.areas,
        &image.file,
        ctx.view.layout,
    )?;
    sysv::restore(remote, areas, ctx.view.areas, &image.file, ctx.view.layout)?;
    timings.batch = started.elapsed();
    let mut server = None;
    let mut uffd_in_stub = None;
    if options.mode == Mode::Uffd {
        let fd = remote.sys(
            "userfaultfd",
            libc::SYS_userfaultfd,
            [(libc::O_CLOEXEC | libc::O_NONBLOCK) as u64, 0, 0, 0, 0, 0],
        )?;
        uffd_in_stub = Some(fd);
        let pidfd = ctx
            .stub_pidfd
            .ok_or_else(|| RestoreError::Unsupported("uffd mode needs the stub's pidfd".into()))?;
        let uffd = pidfd_getfd(pidfd, fd as i32)?;
        if ctx.keep_uffd {
            let keeper = options.uffd_keeper.ok_or_else(|| {
                RestoreError::Unsupported(
                    "a uffd copy in a sandbox needs the sandbox's keeper socket".into(),
                )
            })?;
            match ctx.collect_uffds {
                // A process of a tree: every process's is sent at once.
                Some(all) => {
                    all.borrow_mut()
                        .push(uffd.try_clone().map_err(|source| RestoreError::Io {
                            what: "dup userfaultfd".into(),
                            source,
                        })?)
                }
                None => send_to_keeper(keeper, std::slice::from_ref(&uffd))?,
            }
        }
        let mapped = match ctx.plans {
            // The server's restores of this snapshot share one mapping.
            Some(plans) => plans.image_map(&image.file),
            // SAFETY: the mapping is read-only. A store image is never
            // changed once published (see the store's image module). A
            // lazy restore's image (never shared through `plans`) is filled
            // while mapped, but only at pages its page source writes before
            // the page server reads them, and never rewritten after.
            None => unsafe { memmap2::Mmap::map(&image.file) }.map(std::sync::Arc::new),
        };
        let image_map = mapped.map_err(|source| RestoreError::Io {
            what: "map the image".into(),
            source,
        })?;
        let mut s = uffd::PageServer::new(
            uffd,
            image_map,
            ctx.view.layout,
            areas,
            ctx.view.areas,
            &eager,
        )?;
        if let Some(lazy) = ctx.lazy {
            s = s.with_lazy(lazy.clone());
        }
        // rseq: the kernel writes the area on every return to user space;
        // each thread's page must hold the saved content before it is
        // registered.
        for r in state.threads.iter().filter_map(|t| t.rseq.as_ref()) {
            if s.covers(r.address) {
                s.fill(r.address)?;
            }
        }
        // The futex words the threads read as soon as they run again.
        for page in thread::restart_pages(state) {
            if s.covers(page) {
                s.fill(page)?;
            }
        }
        s.prefetch(&options.prefetch);
        // A lazy restore fetches the working set before the resume, in one
        // call (large ranged reads), whether it is copied in now or later.
        s.fetch_prefetch()?;
        if !options.prefetch_in_background {
            s.prefetch_all()?;
        }
        server = Some(s);
    }
    memory::write_private_pages(remote, areas, ctx.view.areas, &sources, ctx.plans)?;
    Ok(RestoredMemory {
        scratch: places.scratch,
        guard,
        server,
        uffd_in_stub,
    })
}

/// Step 3 of [`drive`]: the descriptors. They are at their numbers since
/// the stub was made ([`Prepared::moves`]); here the fds that only served
/// the mappings are closed (the stub's userfaultfd too), close-on-exec is
/// set where it was, and the kernel objects get their state ([`kobj`]):
/// registered, and armed when `arm` (else at the claim, [`Settled::finish`]).
fn restore_fds(
    batch: &mut Batch,
    saved: &[snapshotter::state::FdState],
    plan: &fds::FdPlan,
    uffd_in_stub: Option<u64>,
    arm: bool,
) -> Result<(), RestoreError> {
    let close_to = u32::MAX as u64;
    if let Some(fd) = uffd_in_stub {
        batch.call("close (userfaultfd)", libc::SYS_close, [fd, 0, 0, 0, 0, 0]);
    }
    if (plan.first_private_fd as u64) <= close_to {
        batch.call(
            "close_range (mapping fds)",
            libc::SYS_close_range,
            [plan.first_private_fd as u64, close_to, 0, 0, 0, 0],
        );
    }
    for fd in &plan.cloexec {
        batch.call(
            "fcntl(F_SETFD)",
            libc::SYS_fcntl,
            [
                *fd as u64,
                libc::F_SETFD as u64,
                libc::FD_CLOEXEC as u64,
                0,
                0,
                0,
            ],
        );
    }
    if arm {
        kobj::arm_and_register(batch, saved)
    } else {
        kobj::register(batch, saved)
    }
}
