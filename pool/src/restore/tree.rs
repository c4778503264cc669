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

use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::time::Instant;

use snapshotter::snapshot::Snapshot;
use snapshotter::state::tree::{plan_ids, IdStep};
use snapshotter::state::{FdKind, MemoryArea, ProcessState};
use snapshotter::store::{ImageLayout, PageStore};

use super::batch::Batch;
use super::remote::{bytes_of, Remote};
use super::{
    fds, memory, pidfd_open, prepare_process, spawn, Driving, InitGuard, PageServerThread,
    ProcessView, RestoreError, RestoreOptions, RestoreTimings, RestoredChild,
};

/// The descriptors of every process of a tree.
#[derive(Debug)]
struct TreePlan {
    /// Per process (the root first): its plan, as if it were alone.
    plans: Vec<fds::FdPlan>,
    /// Per process: the first number of its staging block in the root
    /// stub's table (the root's own: 0, unused).
    stages: Vec<RawFd>,
    /// `(restorer fd, root stub fd)` for init.
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

fn plan(
    snapshot: &Snapshot,
    options: &RestoreOptions<'_>,
    image: RawFd,
) -> Result<TreePlan, RestoreError> {
    let mut pipes = super::kobj::Pipes::default();
    let mut plans = Vec::new();
    for (index, (state, _)) in snapshot.processes().enumerate() {
        let supplied = supplied_for(state, index == 0, &options.fds);
        let mut plan = fds::plan_with(state, &supplied, image, &mut pipes)?;
        // No sandbox: the files are opened here (`thaw restore`).
        plan.open_here()?;
        plans.push(plan);
    }
    let top = plans
        .iter()
        .flat_map(|p| p.moves.iter().map(|&(_, target)| target))
        .max()
        .unwrap_or(0)
        + 1;
    let mut moves = plans[0].moves.clone();
    let mut stages = vec![0];
    let mut next = top;
    for p in &plans[1..] {
        stages.push(next);
        for (i, &(source, _)) in p.moves.iter().enumerate() {
            moves.push((source, next + i as RawFd));
        }
        next += p.moves.len() as RawFd;
    }
    Ok(TreePlan {
        plans,
        stages,
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
fn create(
    root: &mut Remote,
    snapshot: &Snapshot,
    steps: &[IdStep],
    scratch: u64,
) -> Result<Vec<Remote>, RestoreError> {
    let pids: Vec<i32> = snapshot.processes().map(|(s, _)| s.pid).collect();
    if steps[0] == IdStep::NewSession {
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
        let made = std::mem::take(&mut parent.cloned);
        // A process made before a failure is adopted (it dies with the
        // namespace) so none is left unwaited.
        let adopted = made
            .iter()
            .map(|&pid| parent.adopt_process(pid))
            .collect::<Result<Vec<_>, _>>()?;
        ran?;
        let mut adopted = adopted.into_iter();
        let (Some(mut remote), None) = (adopted.next(), adopted.next()) else {
            return Err(RestoreError::Stub(format!(
                "the clone3 of process {} made {} processes",
                state.pid,
                made.len()
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

/// Moves child process's staging block (`stage`, one per entry of
/// `plan.moves`) to its numbers and closes every other descriptor.
fn arrange_fds(
    remote: &mut Remote,
    plan: &fds::FdPlan,
    stage: RawFd,
    scratch: u64,
) -> Result<(), RestoreError> {
    let mut batch = Batch::new(scratch);
    let mut keep: Vec<u32> = Vec::with_capacity(plan.moves.len());
    for (i, &(_, target)) in plan.moves.iter().enumerate() {
        batch.call(
            "dup3 (staged descriptor)",
            libc::SYS_dup3,
            [(stage + i as RawFd) as u64, target as u64, 0, 0, 0, 0],
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
    let ids: Vec<_> = snapshot.processes().map(|(s, _)| (s.pid, s.ids)).collect();
    let steps = plan_ids(&ids).map_err(|e| RestoreError::Unsupported(e.to_string()))?;
    let image = {
        static BUILDING: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _one = BUILDING.lock().unwrap_or_else(|e| e.into_inner());
        store.image(&snapshot.id)?
    };
    let expected: usize = snapshot.processes().map(|(s, _)| s.areas.len()).sum();
    if image.layout.areas.len() != expected {
        return Err(RestoreError::Unsupported(format!(
            "the image of {} lays out {} areas, its processes have {expected}",
            snapshot.id,
            image.layout.areas.len()
        )));
    }
    let tree = plan(snapshot, options, image.file.as_raw_fd())?;
    timings.plan = started.elapsed();

    let started = Instant::now();
    let root_state = &snapshot.state;
    let spawned = spawn::spawn(root_state.pid, &tree.moves)?;
    let mut guard = InitGuard(Some(spawned.init_pid));
    super::join_cgroups(&options.cgroups, &[spawned.init_pid, spawned.stub_pid])?;
    let mut root = Remote::seize(spawned.stub_pid)?;
    timings.stub = started.elapsed();

    let started = Instant::now();
    let stub_map = memory::stub_map(root.pid())?;
    let every_area: Vec<MemoryArea> = snapshot
        .processes()
        .flat_map(|(s, _)| s.areas.iter().cloned())
        .collect();
    let places = memory::prepare_scratch(&mut root, &stub_map, &every_area)?;
    let mut children = create(&mut root, snapshot, &steps, places.scratch)?;
    for (index, child) in children.iter_mut().enumerate() {
        arrange_fds(
            child,
            &tree.plans[index + 1],
            tree.stages[index + 1],
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
    let mut readies = Vec::with_capacity(children.len() + 1);
    for (index, remote) in children.into_iter().enumerate() {
        let child = &snapshot.children[index];
        let pidfd = match options.mode {
            super::Mode::Uffd => Some(pidfd_open(remote.pid())?),
            super::Mode::Mmap => None,
        };
        let ctx = Driving {
            snapshot,
            view: ProcessView {
                state: &child.state,
                areas: &child.areas,
                layout: &layouts[index],
            },
            places: Some(places),
            image: &image,
            plan: &tree.plans[index + 1],
            options,
            stub_pidfd: pidfd.as_ref(),
            keep_uffd: false,
        };
        readies.push(prepare_process(remote, &ctx, &mut timings)?);
    }
    let ctx = Driving {
        snapshot,
        view: ProcessView::root(snapshot, &image),
        places: Some(places),
        image: &image,
        plan: &tree.plans[0],
        options,
        stub_pidfd: Some(&spawned.stub_pidfd),
        keep_uffd: false,
    };
    let root_ready = prepare_process(root, &ctx, &mut timings)?;
    let mut child_servers: Vec<PageServerThread> = Vec::new();
    let root_pidfd = match options.mode {
        super::Mode::Uffd => Some(std::sync::Arc::new(
            spawned
                .stub_pidfd
                .try_clone()
                .map_err(|source| RestoreError::Io {
                    what: "dup pidfd".into(),
                    source,
                })?,
        )),
        super::Mode::Mmap => None,
    };
    for mut ready in readies {
        // A child's page server that fails kills the root: the whole copy.
        ready.kill_with = root_pidfd.clone();
        if let Some((thread, _)) = ready.resume(&mut timings)? {
            child_servers.push(thread);
        }
    }
    let server = root_ready.resume(&mut timings)?.map(|(thread, _)| thread);
    drop(tree);
    guard.0 = None;
    Ok(RestoredChild {
        init_pid: spawned.init_pid,
        pid: spawned.stub_pid,
        ns_pid: root_state.pid,
        pidfd: spawned.stub_pidfd,
        status: None,
        server,
        child_servers,
        server_stats: None,
        timings,
    })
}
