//! Restore of a process tree: the root as a single process is restored,
//! every other process created by its restored parent with its saved pid,
//! session and process group, each then restored like a single process,
//! and all resumed together.
//!
//! ```text
//! plan      every process's descriptors (fds::plan_with), one Pipes for
//!           all: a pipe or socket pair with ends in several processes is
//!           made once, its queued data written once
//! stub      init → root stub; its fd table: the root's plan at its numbers,
//!           each child's plan in a staging block above every number any
//!           plan uses (inherited by every process forked below)
//! scratch   mapped in the root stub in a hole of every process's saved map
//!           (each child inherits it, with the batch loop, at the same place)
//! sessions  root: setsid() if it led its session
//! processes parents before children: the parent's stub runs clone3
//!           (set_tid = [saved pid], SIGCHLD, no CLONE_VM / CLONE_THREAD:
//!           a fork); the child, auto-attached (PTRACE_O_TRACEFORK), is
//!           adopted; if it led its session: setsid(), before it creates
//!           children of its own (they must be born in its session)
//! groups    leaders first (setpgid(0, 0)), then members (setpgid(0, pgid)):
//!           a group must exist before another process joins it
//! fds       each child: dup3 of its staging block to its numbers, every
//!           other descriptor closed (after every fork: a grandchild is
//!           forked with its staging block still there)
//! shared    anonymous shared memory: one memfd per object in the root
//!           stub, taken by each child that maps it (`shared::make_for_tree`)
//! restore   each process as a single one (`prepare_process`): memory in
//!           the mode asked (each its own areas of the one image, MAP_PRIVATE,
//!           or its own userfaultfd and page server), kernel objects,
//!           threads, credentials, seccomp policy, anonymous-memory guard,
//!           registers; the root's close_range drops the staging blocks
//! resume    every process's threads let go, children first, the root last;
//!           a child's page server that fails kills the root (init then
//!           ends and the namespace with every process dies)
//! ```
//!
//! The copy's exit status stays the root's (through init): its children
//! are reparented to init when it ends and die with the namespace.
//!
//! In a sandbox ([`prepare_tree_for_sandbox`], [`restore_tree_into`]) the
//! root stub is the sandbox's pid 2, already made (and, for a spare, long
//! ago); what differs:
//!
//! ```text
//! plan      as above, but no file is opened here: the stub opens every
//!           process's files inside the sandbox as the function, the
//!           root's at their numbers, a child's at its staging numbers
//!           (`open_files`), and `adopt` takes each back and checks it.
//!           A child's protocol fds (0-4: log pipes, the protocol's) are
//!           not staged: it keeps the sandbox's, inherited from the stub
//! sessions  the stub led its session already (its setsid): the root's
//!           saved one must be its own
//! uffd      each process's userfaultfd goes to the sandbox's pid 1, all in
//!           one message once every process is prepared; one page server
//!           thread per process, all handed back in one `CopyServer`
//! errors    the root killed (the sandbox's pid 1 then ends and its
//!           namespace with every process); traced ones reaped
//! ```
//!
//! Lazily, from a page source (a node that lacks the snapshot's pages,
//! [`prepare_tree_lazily_for_sandbox`]): one lazy image lays out every
//! process's areas as the store's image does; each process's restore steps
//! and page server see their own stretch of it (`LazyPages::process`), all
//! over the one source. The root's working set is fetched before the
//! resume; the children prefetch nothing and fault their pages in.

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use snapshotter::snapshot::Snapshot;
use snapshotter::state::tree::{plan_ids, IdStep};
use snapshotter::state::{FdKind, MemoryArea, ProcessState};
use snapshotter::store::{CachedImage, ImageLayout, PageStore};

use super::batch::Batch;
use super::page_source::LazyPages;
use super::remote::{bytes_of, Remote};
use super::{
    fds, memory, pidfd_open, prepare_process, recheck_plan, send_to_keeper, spawn, CopyServer,
    Driving, InitGuard, Mode, PageServerThread, ProcessView, RestoreError, RestoreOptions,
    RestoreTimings, RestoredChild, Served,
};
use crate::sandbox::open_files::OpenFile;

/// The descriptors of every process of a tree.
#[derive(Debug)]
pub(crate) struct TreePlan {
    /// Per process (the root first): its plan, as if it were alone.
    plans: Vec<fds::FdPlan>,
    /// Per process: its staging block, `(root stub fd, its fd)` (the
    /// root's: empty).
    staged: Vec<Vec<(RawFd, RawFd)>>,
    /// Per process: numbers it keeps as the root stub has them (in a
    /// sandbox: the sandbox's fds 0-4 it had as protocol fds).
    inherited: Vec<Vec<RawFd>>,
    /// Per process, in a sandbox: the root stub's number of each of its
    /// wanted files, by its own number (the root's: empty, at its own).
    wanted_at: Vec<HashMap<RawFd, RawFd>>,
    /// `(restorer fd, root stub fd)` for init (or the sandbox launcher).
    moves: Vec<(RawFd, RawFd)>,
}

/// The descriptors the caller supplies that process `state` gets: every
/// one for the root; for the others only those their snapshot has as
/// protocol pipes or sockets (a child's `/dev/null` stays `/dev/null`).
fn supplied_for<'a>(
    state: &ProcessState,
    root: bool,
    supplied: &[(i32, BorrowedFd<'a>)],
) -> Vec<(i32, BorrowedFd<'a>)> {
    supplied
        .iter()
        .filter(|(n, _)| {
            root || state.fds.iter().any(|f| {
                f.fd == *n
                    && matches!(
                        f.kind,
                        FdKind::ProtocolPipe { .. } | FdKind::ProtocolSocket { .. }
                    )
            })
        })
        .copied()
        .collect()
}

/// Plans every process's descriptors. `sandboxed`: the files are opened
/// by the stub inside its sandbox (see the module docs), and a child's
/// supplied fds (the sandbox's 0-4) are inherited from the stub rather than
/// staged; otherwise (`thaw restore`) they are opened here.
fn plan(
    snapshot: &Snapshot,
    options: &RestoreOptions<'_>,
    image: RawFd,
    sandboxed: bool,
) -> Result<TreePlan, RestoreError> {
    super::depends::check_host(snapshot)?;
    let mut pipes = super::kobj::Pipes::default();
    let mut plans = Vec::new();
    let mut inherited = Vec::new();
    for (index, (state, _)) in snapshot.processes().enumerate() {
        let supplied = supplied_for(state, index == 0, &options.fds);
        let mut plan = fds::plan_with(state, &supplied, image, &mut pipes)?;
        super::depends::attach(&mut plan, snapshot);
        if sandboxed {
            inherited.push(match index {
                0 => Vec::new(),
                _ => supplied.iter().map(|&(n, _)| n).collect(),
            });
        } else {
            // No sandbox: the files are opened here (`thaw restore`).
            plan.open_here()?;
            inherited.push(Vec::new());
        }
        plans.push(plan);
    }
    let top = plans
        .iter()
        .flat_map(|p| {
            p.moves
                .iter()
                .map(|&(_, target)| target)
                .chain(p.wanted.iter().map(|w| w.fd))
        })
        .max()
        .unwrap_or(0)
        + 1;
    let mut moves = plans[0].moves.clone();
    let mut staged = vec![Vec::new()];
    let mut wanted_at = vec![HashMap::new()];
    let mut next = top;
    for (p, inherit) in plans[1..].iter().zip(&inherited[1..]) {
        let mut block = Vec::new();
        for &(source, target) in &p.moves {
            if inherit.contains(&target) {
                continue;
            }
            moves.push((source, next));
            block.push((next, target));
            next += 1;
        }
        let mut at = HashMap::new();
        if sandboxed {
            for w in &p.wanted {
                at.insert(w.fd, next);
                block.push((next, w.fd));
                next += 1;
            }
        }
        staged.push(block);
        wanted_at.push(at);
    }
    if sandboxed && next > crate::sandbox::NETNS_FD {
        return Err(RestoreError::Unsupported(format!(
            "the tree's {} processes need descriptor numbers up to {}; a sandbox's stub holds them below {}",
            plans.len(),
            next - 1,
            crate::sandbox::NETNS_FD
        )));
    }
    Ok(TreePlan {
        plans,
        staged,
        inherited,
        wanted_at,
        moves,
    })
}

/// The `clone3` arguments of a fork with pid `pid` (the batch's data).
fn fork_call(batch: &mut Batch, pid: i32) -> Result<(), RestoreError> {
    let set_tid = batch.data(&pid.to_ne_bytes())?;
    // SAFETY: clone_args is plain integers; all-zero is valid.
    let mut args: libc::clone_args = unsafe { std::mem::zeroed() };
    args.exit_signal = libc::SIGCHLD as u64;
    args.set_tid = set_tid;
    args.set_tid_size = 1;
    let addr = batch.data(bytes_of(&args))?;
    batch.call(
        format!("clone3 (process {pid})"),
        libc::SYS_clone3,
        [
            addr,
            std::mem::size_of::<libc::clone_args>() as u64,
            0,
            0,
            0,
            0,
        ],
    );
    Ok(())
}

/// Creates every process of the tree but the root, each by its parent's
/// stub, with its session, then gives every process its group (see the
/// module docs). Returns the children's stubs in `snapshot.children`
/// order.
/// `root_session`: whether the root leads its session already (a
/// sandbox's stub). `made`: the host pid of every process made, recorded
/// as soon as it exists (for the caller's cleanup on failure).
fn create(
    root: &mut Remote,
    snapshot: &Snapshot,
    steps: &[IdStep],
    scratch: u64,
    root_session: bool,
    made: &mut Vec<i32>,
) -> Result<Vec<Remote>, RestoreError> {
    let pids: Vec<i32> = snapshot.processes().map(|(s, _)| s.pid).collect();
    if steps[0] == IdStep::NewSession && !root_session {
        root.sys("setsid (root)", libc::SYS_setsid, [0; 6])?;
    }
    let mut children: Vec<Remote> = Vec::with_capacity(snapshot.children.len());
    for (index, child) in snapshot.children.iter().enumerate() {
        let state = &child.state;
        let parent_index = pids[..index + 1]
            .iter()
            .position(|&p| p == state.ids.ppid)
            .ok_or_else(|| {
                RestoreError::Unsupported(format!(
                    "process {}: its parent {} is not restored before it",
                    state.pid, state.ids.ppid
                ))
            })?;
        let parent = if parent_index == 0 {
            &mut *root
        } else {
            &mut children[parent_index - 1]
        };
        nix::sys::ptrace::setoptions(
            nix::unistd::Pid::from_raw(parent.pid()),
            nix::sys::ptrace::Options::PTRACE_O_TRACESYSGOOD
                | nix::sys::ptrace::Options::PTRACE_O_EXITKILL
                | nix::sys::ptrace::Options::PTRACE_O_TRACEFORK,
        )
        .map_err(|e| RestoreError::Stub(format!("PTRACE_SETOPTIONS (TRACEFORK): {e}")))?;
        parent.cloned.clear();
        let mut batch = Batch::new(scratch);
        fork_call(&mut batch, state.pid)?;
        let ran = parent.run(batch);
        // Forks are traced only here (the threads are made otherwise).
        nix::sys::ptrace::setoptions(
            nix::unistd::Pid::from_raw(parent.pid()),
            nix::sys::ptrace::Options::PTRACE_O_TRACESYSGOOD
                | nix::sys::ptrace::Options::PTRACE_O_EXITKILL,
        )
        .map_err(|e| RestoreError::Stub(format!("PTRACE_SETOPTIONS: {e}")))?;
        let cloned = std::mem::take(&mut parent.cloned);
        made.extend(&cloned);
        // A process made before a failure is adopted (it dies with the
        // namespace) so none is left unwaited.
        let adopted = cloned
            .iter()
            .map(|&pid| parent.adopt_process(pid))
            .collect::<Result<Vec<_>, _>>()?;
        ran?;
        let mut adopted = adopted.into_iter();
        let (Some(mut remote), None) = (adopted.next(), adopted.next()) else {
            return Err(RestoreError::Stub(format!(
                "the clone3 of process {} made {} processes",
                state.pid,
                cloned.len()
            )));
        };
        if steps[index + 1] == IdStep::NewSession {
            remote.sys("setsid", libc::SYS_setsid, [0; 6])?;
        }
        children.push(remote);
    }
    // Group leaders before the members that join them.
    for leaders in [true, false] {
        for (index, step) in steps.iter().enumerate() {
            let remote = if index == 0 {
                &mut *root
            } else {
                &mut children[index - 1]
            };
            match *step {
                IdStep::LeadGroup if leaders => {
                    remote.sys("setpgid (group leader)", libc::SYS_setpgid, [0; 6])?;
                }
                IdStep::JoinGroup(pgid) if !leaders => {
                    remote.sys(
                        &format!("setpgid (join group {pgid})"),
                        libc::SYS_setpgid,
                        [0, pgid as u64, 0, 0, 0, 0],
                    )?;
                }
                _ => {}
            }
        }
    }
    Ok(children)
}

/// Moves a child process's staging block (`(stub fd, its fd)`) to its
/// numbers and closes every other descriptor but `inherited`.
fn arrange_fds(
    remote: &mut Remote,
    staged: &[(RawFd, RawFd)],
    inherited: &[RawFd],
    scratch: u64,
) -> Result<(), RestoreError> {
    let mut batch = Batch::new(scratch);
    let mut keep: Vec<u32> = inherited.iter().map(|&n| n as u32).collect();
    for &(stage, target) in staged {
        batch.call(
            "dup3 (staged descriptor)",
            libc::SYS_dup3,
            [stage as u64, target as u64, 0, 0, 0, 0],
        );
        keep.push(target as u32);
    }
    keep.sort_unstable();
    keep.dedup();
    let mut next = 0u32;
    for &k in &keep {
        if k > next {
            batch.call(
                "close_range (other processes' descriptors)",
                libc::SYS_close_range,
                [next as u64, (k - 1) as u64, 0, 0, 0, 0],
            );
        }
        next = k + 1;
    }
    batch.call(
        "close_range (staging blocks)",
        libc::SYS_close_range,
        [next as u64, u32::MAX as u64, 0, 0, 0, 0],
    );
    remote.run(batch)
}

/// Restores `snapshot`, a tree of processes (see the module docs). Called
/// by [`super::restore`] when the snapshot has children.
pub(crate) fn restore_tree(
    snapshot: &Snapshot,
    store: &PageStore,
    options: &RestoreOptions<'_>,
) -> Result<RestoredChild, RestoreError> {
    let mut timings = RestoreTimings::default();
    let started = Instant::now();
    let steps = check_ids(snapshot, false)?;
    let image = image_of(snapshot, store)?;
    let tree = plan(snapshot, options, image.file.as_raw_fd(), false)?;
    timings.plan = started.elapsed();

    let started = Instant::now();
    let root_state = &snapshot.state;
    let time = super::copy_time_offsets(snapshot)?;
    let spawned = spawn::spawn_with_time(root_state.pid, &tree.moves, time.as_ref())?;
    let mut guard = InitGuard(Some(spawned.init_pid));
    super::join_cgroups(&options.cgroups, &[spawned.init_pid, spawned.stub_pid])?;
    let root = Remote::seize(spawned.stub_pid)?;
    timings.stub = started.elapsed();

    let mut made = Vec::new();
    let built = build(
        root,
        &spawned.stub_pidfd,
        &Building {
            snapshot,
            image: &image,
            tree: &tree,
            steps: &steps,
            options,
            sandboxed: false,
            lazy: None,
        },
        &mut made,
        &mut timings,
    )?;
    drop(tree);
    guard.0 = None;
    Ok(RestoredChild {
        init_pid: spawned.init_pid,
        pid: spawned.stub_pid,
        ns_pid: root_state.pid,
        pidfd: spawned.stub_pidfd,
        status: None,
        live: built.root.as_ref().map(|(_, live)| live.clone()),
        server: built.root.map(|(thread, _)| thread),
        child_servers: built.children,
        server_stats: None,
        timings,
    })
}

/// What [`build`] works from.
struct Building<'a, 'o> {
    snapshot: &'a Snapshot,
    image: &'a CachedImage,
    tree: &'a TreePlan,
    steps: &'a [IdStep],
    options: &'a RestoreOptions<'o>,
    /// In a sandbox: the root stub leads its session already, the
    /// userfaultfds go to the sandbox's pid 1, the policy always applies.
    sandboxed: bool,
    /// A lazy restore (uffd mode): the image's pages come from its source
    /// as each process needs them (each its own view of the one image).
    lazy: Option<&'a std::sync::Arc<LazyPages>>,
}

/// The page servers of a tree's processes (`uffd` mode).
struct Built {
    root: Option<Served>,
    children: Vec<PageServerThread>,
}

/// Everything after the root stub is seized, for both the restorer's own
/// stubs and a sandbox's: the children made and given their descriptors,
/// every process prepared, then all resumed, children first. `made`
/// collects the children's host pids as they are made.
fn build(
    mut root: Remote,
    root_pidfd: &OwnedFd,
    b: &Building<'_, '_>,
    made: &mut Vec<i32>,
    timings: &mut RestoreTimings,
) -> Result<Built, RestoreError> {
    let (snapshot, image, tree, options) = (b.snapshot, b.image, b.tree, b.options);
    let started = Instant::now();
    let stub_map = memory::stub_map(root.pid())?;
    let every_area: Vec<MemoryArea> = snapshot
        .processes()
        .flat_map(|(s, _)| s.areas.iter().cloned())
        .collect();
    let places = memory::prepare_scratch(&mut root, &stub_map, &every_area)?;
    let mut children = create(
        &mut root,
        snapshot,
        b.steps,
        places.scratch,
        b.sandboxed,
        made,
    )?;
    for (index, child) in children.iter_mut().enumerate() {
        arrange_fds(
            child,
            &tree.staged[index + 1],
            &tree.inherited[index + 1],
            places.scratch,
        )?;
    }
    timings.stub += started.elapsed();

    // Each child's layout: its own stretch of the image's.
    let layouts: Vec<ImageLayout> = (1..=snapshot.children.len())
        .map(|index| {
            let base = snapshot.area_base(index);
            let count = snapshot.children[index - 1].state.areas.len();
            ImageLayout {
                areas: image.layout.areas[base..base + count].to_vec(),
                size: image.layout.size,
            }
        })
        .collect();
    // A lazy restore: each process's view of the one lazy image.
    let views: Vec<Option<std::sync::Arc<LazyPages>>> = (0..=snapshot.children.len())
        .map(|index| b.lazy.and_then(|l| l.process(index)))
        .collect();
    let uffds = std::cell::RefCell::new(Vec::new());
    let collect = b.sandboxed.then_some(&uffds);
    // The recorded working set is the root's (its first invocations'
    // pages): the other processes prefetch nothing.
    let child_options = RestoreOptions {
        mode: options.mode,
        fds: options.fds.clone(),
        cgroups: options.cgroups.clone(),
        prefetch: Vec::new(),
        credentials: options.credentials.clone(),
        prefetch_in_background: options.prefetch_in_background,
        uffd_keeper: options.uffd_keeper,
    };
    // Anonymous shared memory: one memfd per object for the whole tree,
    // once every process exists.
    let tree_areas: Vec<&[MemoryArea]> = snapshot
        .processes()
        .map(|(s, _)| s.areas.as_slice())
        .collect();
    let memfds =
        super::shared::make_for_tree(&mut root, &mut children, places.scratch, &tree_areas)?;
    let mut readies = Vec::with_capacity(children.len() + 1);
    for (index, remote) in children.into_iter().enumerate() {
        let child = &snapshot.children[index];
        let pidfd = match options.mode {
            Mode::Uffd => Some(pidfd_open(remote.pid())?),
            Mode::Mmap => None,
        };
        let ctx = Driving {
            snapshot,
            view: ProcessView {
                state: &child.state,
                areas: &child.areas,
                layout: &layouts[index],
            },
            places: Some(places),
            image,
            plan: &tree.plans[index + 1],
            options: &child_options,
            stub_pidfd: pidfd.as_ref(),
            keep_uffd: b.sandboxed,
            lazy: views[index + 1].as_ref(),
            collect_uffds: collect,
            shared_memfds: Some(&memfds[index + 1]),
            plans: None,
        };
        readies.push(prepare_process(remote, &ctx, timings)?);
    }
    let ctx = Driving {
        snapshot,
        view: ProcessView::root(snapshot, image),
        places: Some(places),
        image,
        plan: &tree.plans[0],
        options,
        stub_pidfd: Some(root_pidfd),
        keep_uffd: b.sandboxed,
        lazy: views[0].as_ref(),
        collect_uffds: collect,
        shared_memfds: Some(&memfds[0]),
        plans: None,
    };
    let root_ready = prepare_process(root, &ctx, timings)?;
    let uffds = uffds.into_inner();
    if !uffds.is_empty() {
        let keeper = options.uffd_keeper.ok_or_else(|| {
            RestoreError::Unsupported(
                "a uffd copy in a sandbox needs the sandbox's keeper socket".into(),
            )
        })?;
        send_to_keeper(keeper, &uffds)?;
    }
    let mut child_servers: Vec<PageServerThread> = Vec::new();
    let kill_root = match options.mode {
        Mode::Uffd => Some(std::sync::Arc::new(root_pidfd.try_clone().map_err(
            |source| RestoreError::Io {
                what: "dup pidfd".into(),
                source,
            },
        )?)),
        Mode::Mmap => None,
    };
    for mut ready in readies {
        // A child's page server that fails kills the root: the whole copy.
        ready.kill_with = kill_root.clone();
        if let Some((thread, _)) = ready.resume(timings)? {
            child_servers.push(thread);
        }
    }
    let root = root_ready.resume(timings)?;
    if let Some(lazy) = b.lazy {
        lazy.set_resumed();
    }
    Ok(Built {
        root,
        children: child_servers,
    })
}

/// A tree's restore made ready before its stub sandbox exists (see the
/// module docs): its image, every process's plan. The stub opens
/// [`PreparedTree::open_files`] and holds [`PreparedTree::moves`].
#[derive(Debug)]
pub struct PreparedTree {
    image: CachedImage,
    tree: TreePlan,
    took: Duration,
    /// A lazy restore ([`prepare_tree_lazily_for_sandbox`]): where missing
    /// pages come from.
    lazy: Option<std::sync::Arc<LazyPages>>,
}

impl PreparedTree {
    /// A lazy restore: starts fetching what the copies need before they
    /// resume ([`LazyPages::start_fetch`]); once only.
    /// Returns whether this call started it.
    pub fn start_fetch(&self) -> bool {
        self.lazy.as_ref().is_some_and(|lazy| lazy.start_fetch())
    }

    /// `(restorer fd, stub fd)`: what the root stub must hold: the root's
    /// descriptors at their numbers, every child's in its staging block.
    pub fn moves(&self) -> &[(RawFd, RawFd)] {
        &self.tree.moves
    }

    /// What the stub opens inside its sandbox as the function: the root's
    /// files at their numbers, each child's at its staging numbers.
    pub fn open_files(&self) -> Vec<OpenFile> {
        let mut files = self.tree.plans[0].open_files();
        for (plan, at) in self.tree.plans[1..].iter().zip(&self.tree.wanted_at[1..]) {
            files.extend(plan.open_files().into_iter().map(|mut f| {
                f.fd = at[&f.fd];
                f
            }));
        }
        files
    }

    /// Takes back and checks the files the stub (host pid `stub_pid`, not
    /// running yet) opened, every process's (see [`fds::FdPlan::adopt`]).
    pub fn adopt(&mut self, stub_pid: i32) -> Result<(), RestoreError> {
        let pidfd = pidfd_open(stub_pid)?;
        let (root, others) = self
            .tree
            .plans
            .split_first_mut()
            .expect("a tree has a root");
        root.adopt(pidfd.as_fd())?;
        for (plan, at) in others.iter_mut().zip(&self.tree.wanted_at[1..]) {
            plan.adopt_numbered(pidfd.as_fd(), |fd| at.get(&fd).copied().unwrap_or(-1))?;
        }
        Ok(())
    }

    /// [`super::Prepared::recheck`] for every process.
    pub fn recheck(&self, snapshot: &Snapshot) -> Result<(), RestoreError> {
        for ((state, _), plan) in snapshot.processes().zip(&self.tree.plans) {
            recheck_plan(plan, state)?;
        }
        Ok(())
    }
}

/// [`super::prepare_for_sandbox`] for a tree: the image, the kernel
/// objects (one of each shared by several processes), every process's plan
/// and the root stub's table. `options.fds`: stand-ins for the sandbox's
/// fds 0-4 (never moved).
pub fn prepare_tree_for_sandbox(
    snapshot: &Snapshot,
    store: &PageStore,
    options: &RestoreOptions<'_>,
) -> Result<PreparedTree, RestoreError> {
    let started = Instant::now();
    check_ids(snapshot, true)?;
    let image = image_of(snapshot, store)?;
    let tree = plan(snapshot, options, image.file.as_raw_fd(), true)?;
    Ok(PreparedTree {
        image,
        tree,
        took: started.elapsed(),
        lazy: None,
    })
}

/// [`prepare_tree_for_sandbox`] of a lazy restore (`uffd` mode only): the
/// image of every process is made by [`LazyPages::new`] in `dir` from what
/// `local` has; the pages the page servers do not fill are fetched from
/// `source` once [`PreparedTree::start_fetch`] starts it (at the latest by
/// the restore; a failure is [`RestoreError::Fetch`]). Each process then
/// gets its pages through its own page server over that one image and
/// source: the root's working set (`options.prefetch` at the restore)
/// before the resume, every process's faults after.
pub fn prepare_tree_lazily_for_sandbox(
    snapshot: &Snapshot,
    local: Option<std::sync::Arc<PageStore>>,
    source: std::sync::Arc<dyn super::page_source::PageSource>,
    dir: &std::path::Path,
    options: &RestoreOptions<'_>,
) -> Result<PreparedTree, RestoreError> {
    if options.mode != Mode::Uffd {
        return Err(RestoreError::Unsupported(
            "a lazy restore from a page source needs uffd mode".into(),
        ));
    }
    let started = Instant::now();
    check_ids(snapshot, true)?;
    super::depends::check_host(snapshot)?;
    let (lazy, image) = LazyPages::new(snapshot, local, source, dir, &options.prefetch)?;
    let tree = plan(snapshot, options, image.file.as_raw_fd(), true)?;
    Ok(PreparedTree {
        image,
        tree,
        took: started.elapsed(),
        lazy: Some(std::sync::Arc::new(lazy)),
    })
}

/// The sessions and groups of the tree's processes (see
/// [`plan_ids`]); in a sandbox the root must lead its session (the stub
/// did `setsid`, as the function's process did when it was booted).
fn check_ids(snapshot: &Snapshot, sandboxed: bool) -> Result<Vec<IdStep>, RestoreError> {
    let ids: Vec<_> = snapshot.processes().map(|(s, _)| (s.pid, s.ids)).collect();
    let steps = plan_ids(&ids).map_err(|e| RestoreError::Unsupported(e.to_string()))?;
    if sandboxed && steps[0] != IdStep::NewSession {
        return Err(RestoreError::Unsupported(format!(
            "process {} (the root) does not lead its session; in a sandbox the root's stub does",
            snapshot.state.pid
        )));
    }
    Ok(steps)
}

/// The snapshot's image, checked to lay out every process's areas.
fn image_of(snapshot: &Snapshot, store: &PageStore) -> Result<CachedImage, RestoreError> {
    let image = {
        static BUILDING: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _one = BUILDING.lock().unwrap_or_else(|e| e.into_inner());
        super::placement::image(snapshot, store)?
    };
    let expected: usize = snapshot.processes().map(|(s, _)| s.areas.len()).sum();
    if image.layout.areas.len() != expected {
        return Err(RestoreError::Unsupported(format!(
            "the image of {} lays out {} areas, its processes have {expected}",
            snapshot.id,
            image.layout.areas.len()
        )));
    }
    Ok(image)
}

/// Kills a sandboxed tree being made unless disarmed: the root (the
/// sandbox's pid 2; pid 1 then ends, and the namespace with every process)
/// and each child made, each reaped if this thread still traces it.
struct KillTree {
    root: i32,
    children: Vec<i32>,
    armed: bool,
}

impl Drop for KillTree {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        for &pid in self.children.iter().chain([&self.root]) {
            // SAFETY: kill takes numbers only.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        for &pid in self.children.iter().chain([&self.root]) {
            super::reap_traced(pid);
        }
    }
}

/// [`super::restore_into`] for a tree: turns the sandbox's stub (host pid
/// `stub_pid`, holding [`PreparedTree::moves`] and the files it opened,
/// adopted) into the root, makes every other process with its saved pid in
/// the sandbox's pid namespace, and resumes them all. In `uffd` mode the
/// returned server serves every process.
pub fn restore_tree_into(
    stub_pid: i32,
    snapshot: &Snapshot,
    prepared: &PreparedTree,
    options: &RestoreOptions<'_>,
) -> Result<(RestoreTimings, Option<CopyServer>), RestoreError> {
    if !prepared.tree.plans.iter().all(fds::FdPlan::ready) {
        return Err(RestoreError::Unsupported(
            "the stub's files were not taken back and checked (PreparedTree::adopt)".into(),
        ));
    }
    let steps = check_ids(snapshot, true)?;
    let mut timings = RestoreTimings {
        plan: prepared.took,
        ..RestoreTimings::default()
    };
    let started = Instant::now();
    let root_pidfd = pidfd_open(stub_pid)?;
    let root = Remote::seize(stub_pid)?;
    timings.stub = started.elapsed();
    let mut kill = KillTree {
        root: stub_pid,
        children: Vec::new(),
        armed: true,
    };
    let built = build(
        root,
        &root_pidfd,
        &Building {
            snapshot,
            image: &prepared.image,
            tree: &prepared.tree,
            steps: &steps,
            options,
            sandboxed: true,
            lazy: prepared.lazy.as_ref(),
        },
        &mut kill.children,
        &mut timings,
    )?;
    kill.armed = false;
    let server = built.root.map(|(thread, live)| CopyServer {
        thread,
        live,
        others: built.children,
    });
    Ok((timings, server))
}
