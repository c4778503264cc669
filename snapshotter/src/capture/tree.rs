//! Capture of a process tree: a process and all its descendants.
//!
//! ```text
//! stop, parents first:   P stopped (every thread) ─ its children listed
//!                        (/proc/P/task/*/children: final, P cannot fork
//!                        while stopped) ─ each child stopped ─ ...
//! refuse:                a zombie child; a child sharing its parent's
//!                        memory (CLONE_VM, kcmp KCMP_VM); other
//!                        credentials than the root's; an exit signal
//!                        other than SIGCHLD; a session or group the copy
//!                        could not recreate (state::tree::plan_ids);
//!                        more than MAX_PROCESSES processes
//! capture each process   as a single one (areas numbered after the
//!                        previous processes' for the page sink)
//! link descriptors       every pipe and socket pair end not in the
//!                        runtime protocol needs its other end somewhere in
//!                        the tree; a pipe's queued data is read once,
//!                        through a read end, and recorded on every end
//! detach                 children first, the root last
//! ```
//!
//! Every process of the tree stays stopped until all are captured: no
//! process runs while another is read, so a pipe's data and both its ends
//! are seen at one instant.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use super::procfs::{self, Status};
use super::ptrace::{self, Seized};
use super::refuse::{self, Refusal};
use super::{
    capture_held, detach, CaptureError, CaptureOptions, CaptureTimings, PageSink, SinkError,
};
use crate::state::tree::{plan_ids, ProcessIds, MAX_PROCESSES};
use crate::state::{FdKind, PipeEnd, ProcessState};

fn refused(pid: i32, why: impl Into<String>) -> CaptureError {
    CaptureError::refused(pid, Refusal::Tree { why: why.into() })
}

/// The fields of `/proc/PID/stat` after the command name, from field 3
/// (state) on.
fn stat_fields(pid: i32) -> Result<Vec<String>, CaptureError> {
    let text = procfs::read_text(pid, "stat")?;
    let close = text.rfind(')').ok_or_else(|| CaptureError::Parse {
        path: format!("/proc/{pid}/stat"),
        what: "no ')' after the command".into(),
    })?;
    Ok(text[close + 1..]
        .split_whitespace()
        .map(str::to_string)
        .collect())
}

fn stat_number(pid: i32, fields: &[String], field: usize) -> Result<i64, CaptureError> {
    fields
        .get(field - 3)
        .and_then(|f| f.parse().ok())
        .ok_or_else(|| CaptureError::Parse {
            path: format!("/proc/{pid}/stat"),
            what: format!("field {field} missing or not a number"),
        })
}

/// Parent, process group and session of `pid`, as its own pid namespace
/// names them (the last of `NSpid`, `NSpgid`, `NSsid` in
/// `/proc/PID/status`; the parent's `NSpid` when the parent is in the same
/// namespace, else 0, as `getppid()` answers there). The same as stat
/// fields 4, 5 and 6 when the capturer shares the namespace.
pub fn read_ids(pid: i32) -> Result<ProcessIds, CaptureError> {
    let status = Status::read(pid)?;
    let innermost = |status: &Status, key: &str| -> Result<(usize, i32), CaptureError> {
        let ids = status.numbers(key)?;
        Ok((ids.len(), ids.last().copied().unwrap_or(0) as i32))
    };
    let (depth, _) = innermost(&status, "NSpid")?;
    let (_, pgid) = innermost(&status, "NSpgid")?;
    let (_, sid) = innermost(&status, "NSsid")?;
    let host_ppid = status.number("PPid")? as i32;
    let ppid = match Status::read(host_ppid) {
        Ok(parent) if host_ppid > 0 => match innermost(&parent, "NSpid")? {
            (d, ppid) if d == depth => ppid,
            _ => 0,
        },
        _ => 0,
    };
    Ok(ProcessIds { ppid, pgid, sid })
}

/// How many pid namespaces deep `pid` is, as this process sees it (the
/// length of `NSpid`).
fn ns_depth(pid: i32) -> Result<usize, CaptureError> {
    Ok(Status::read(pid)?.numbers("NSpid")?.len())
}

/// Children of `pid` (of every thread), in pid order.
fn children(pid: i32) -> Result<Vec<i32>, CaptureError> {
    let mut pids = Vec::new();
    for task in ptrace::task_ids(pid)? {
        let text = procfs::read_text(pid, &format!("task/{task}/children"))?;
        pids.extend(
            text.split_whitespace()
                .filter_map(|p| p.parse::<i32>().ok()),
        );
    }
    pids.sort_unstable();
    pids.dedup();
    Ok(pids)
}

/// Refuses child `pid` of `parent` when a copy could not recreate it as it
/// is (see the module docs); `root` is the tree's root.
fn check_child(pid: i32, parent: i32, root: &Status) -> Result<(), CaptureError> {
    let fields = stat_fields(pid)?;
    let state = fields.first().map(String::as_str).unwrap_or("?");
    if state == "Z" || state == "X" {
        return Err(refused(
            pid,
            format!("child of {parent} has exited and is not reaped (a zombie); a copy cannot recreate it"),
        ));
    }
    if ns_depth(pid)? != ns_depth(parent)? {
        return Err(refused(
            pid,
            format!("child of {parent} is in a pid namespace of its own; thaw restores a tree in one namespace"),
        ));
    }
    let exit_signal = stat_number(pid, &fields, 38)?;
    if exit_signal != libc::SIGCHLD as i64 {
        return Err(refused(
            pid,
            format!("child of {parent} reports its end with signal {exit_signal}, not SIGCHLD; thaw recreates children with SIGCHLD"),
        ));
    }
    // SAFETY: kcmp compares two processes' kernel objects; no pointers.
    let same_vm = unsafe {
        libc::syscall(libc::SYS_kcmp, parent, pid, 1 /* KCMP_VM */, 0, 0)
    };
    if same_vm == 0 {
        return Err(refused(
            pid,
            format!("child of {parent} shares its parent's memory (CLONE_VM); thaw restores only children with their own memory"),
        ));
    }
    let status = Status::read(pid)?;
    for key in ["Uid", "Gid", "Groups", "CapEff", "CapPrm", "CapBnd"] {
        if status.get(key)? != root.get(key)? {
            return Err(refused(
                pid,
                format!(
                    "child of {parent} has other credentials than the root ({key} {} against {}); thaw restores a tree under one set",
                    status.get(key)?,
                    root.get(key)?
                ),
            ));
        }
    }
    Ok(())
}

/// The processes of a tree, each with every thread held, parents before
/// their children (the root first).
struct Held(Vec<(i32, Vec<Seized>)>);

impl Held {
    /// Lets every process go, children first, each main thread last.
    fn detach(mut self, timings: &mut CaptureTimings) -> Result<(), CaptureError> {
        while let Some((_, held)) = self.0.pop() {
            detach(held, timings)?;
        }
        Ok(())
    }
}

/// Stops `root` and all its descendants (see the module docs).
fn stop_tree(root: i32) -> Result<Held, CaptureError> {
    let mut held = Held(Vec::new());
    let root_status = Status::read(root)?;
    refuse::check_main_thread(root)?;
    let mut next = 0;
    held.0.push((root, ptrace::stop_all(root)?));
    while next < held.0.len() {
        let parent = held.0[next].0;
        next += 1;
        for pid in children(parent)? {
            if held.0.len() >= MAX_PROCESSES {
                return Err(refused(
                    pid,
                    format!("the tree has more than {MAX_PROCESSES} processes"),
                ));
            }
            check_child(pid, parent, &root_status)?;
            refuse::check_main_thread(pid)?;
            held.0.push((pid, ptrace::stop_all(pid)?));
        }
    }
    Ok(held)
}

/// Hands area `i` of one process to the tree's sink as area `base + i`.
struct Offset<'a> {
    sink: &'a mut dyn PageSink,
    base: usize,
}

impl PageSink for Offset<'_> {
    fn pages(&mut self, area: usize, first_page: u64, data: &[u8]) -> Result<(), SinkError> {
        self.sink.pages(self.base + area, first_page, data)
    }
}

/// Captures `root` and every descendant: their states, the root first and
/// parents before their children. Page contents go to `sink`, the areas of
/// each process numbered after those of the processes before it.
pub fn capture_tree_timed(
    root: i32,
    options: &CaptureOptions,
    sink: &mut dyn PageSink,
) -> Result<(Vec<ProcessState>, CaptureTimings), CaptureError> {
    let mut timings = CaptureTimings::default();
    let started = Instant::now();
    let mut held = stop_tree(root)?;
    timings.stop = started.elapsed();

    let started = Instant::now();
    // Sessions and groups as the tree's own pid namespace names them.
    let mut ids = Vec::with_capacity(held.0.len());
    for (pid, _) in &held.0 {
        let ns_pid = Status::read(*pid)?
            .numbers("NSpid")?
            .last()
            .copied()
            .unwrap_or(0) as i32;
        ids.push((ns_pid, read_ids(*pid)?));
    }
    plan_ids(&ids).map_err(|e| {
        let ns_pid = match e {
            crate::state::tree::TreeIdsError::Outside { pid, .. }
            | crate::state::tree::TreeIdsError::Session { pid, .. }
            | crate::state::tree::TreeIdsError::Group { pid, .. } => pid,
        };
        let pid = ids
            .iter()
            .zip(&held.0)
            .find(|((n, _), _)| *n == ns_pid)
            .map_or(ns_pid, |(_, (host, _))| *host);
        refused(pid, format!("{e}; a copy could not recreate it"))
    })?;
    timings.state += started.elapsed();

    let in_tree = held.0.len() > 1;
    let tree_pids: Vec<i32> = held.0.iter().map(|(pid, _)| *pid).collect();
    let mut states = Vec::with_capacity(held.0.len());
    let mut base = 0;
    for (pid, threads) in held.0.iter_mut() {
        let mut offset = Offset { sink, base };
        let state = capture_held(
            *pid,
            threads,
            options,
            in_tree,
            &tree_pids,
            &mut offset,
            &mut timings,
        )?;
        base += state.areas.len();
        states.push(state);
    }
    if in_tree {
        let started = Instant::now();
        let pids: Vec<i32> = held.0.iter().map(|(pid, _)| *pid).collect();
        promote_protocol_ends(&pids, &mut states)?;
        cut_outside_pairs(&pids, &mut states, options.connections)?;
        link_fds(&mut states)?;
        timings.state += started.elapsed();
    }
    held.detach(&mut timings)?;
    Ok((states, timings))
}

/// What the tree holds of one pipe: whether a process has its read end,
/// whether one has its write end, and `T` found through a read end.
#[derive(Debug)]
struct PipeEnds<T> {
    read: bool,
    write: bool,
    through_read: Option<T>,
}

impl<T> Default for PipeEnds<T> {
    fn default() -> Self {
        PipeEnds {
            read: false,
            write: false,
            through_read: None,
        }
    }
}

/// Pipes and Unix sockets on the runtime protocol's descriptors whose both
/// ends are in the tree (a parent's `subprocess` pipes, which the child has
/// as its stdin and stdout) are inner objects of the tree, not ends the
/// restorer's caller supplies: recorded as [`FdKind::Pipe`] (the data
/// queued read through a read end) or [`FdKind::SocketPair`].
fn promote_protocol_ends(pids: &[i32], states: &mut [ProcessState]) -> Result<(), CaptureError> {
    // Pipe inode -> its ends in the tree, and where one read end is
    // (process index, fd).
    let mut pipes: HashMap<u64, PipeEnds<(usize, i32)>> = HashMap::new();
    let mut sockets = HashSet::new();
    for (index, state) in states.iter().enumerate() {
        for f in &state.fds {
            match f.kind {
                FdKind::Pipe { end, inode, .. } | FdKind::ProtocolPipe { end, inode } => {
                    let entry = pipes.entry(inode).or_default();
                    match end {
                        PipeEnd::Read => {
                            entry.read = true;
                            entry.through_read.get_or_insert((index, f.fd));
                        }
                        PipeEnd::Write => entry.write = true,
                    }
                }
                FdKind::ProtocolSocket { inode } | FdKind::SocketPair { inode, .. } => {
                    sockets.insert(inode);
                }
                _ => {}
            }
        }
    }
    let mut data: HashMap<u64, (Vec<u8>, u32)> = HashMap::new();
    for (index, state) in states.iter_mut().enumerate() {
        let pid = pids[index];
        let mut peers = None;
        let mut grabber = super::kobj::Grabber::new(pid);
        for f in state.fds.iter_mut() {
            match f.kind {
                FdKind::ProtocolPipe { end, inode } => {
                    let Some(&PipeEnds {
                        read: true,
                        write: true,
                        through_read: Some((reader, read_fd)),
                    }) = pipes.get(&inode)
                    else {
                        continue;
                    };
                    if let std::collections::hash_map::Entry::Vacant(e) = data.entry(inode) {
                        let read_end = super::kobj::Grabber::new(pids[reader]).grab(read_fd)?;
                        e.insert(super::kobj::pipe_data(pids[reader], &read_end)?);
                    }
                    let (queued, capacity) = data[&inode].clone();
                    f.kind = FdKind::Pipe {
                        end,
                        inode,
                        data: queued,
                        capacity,
                    };
                }
                FdKind::ProtocolSocket { inode } => {
                    let peers = match &peers {
                        Some(p) => p,
                        None => peers.insert(super::unixpair::peers(pid)?),
                    };
                    let Some(&(kind, peer)) = peers.get(&inode) else {
                        continue;
                    };
                    let Some(kind) = super::unixpair::pair_type(kind) else {
                        continue;
                    };
                    if peer == 0 || !sockets.contains(&peer) {
                        continue;
                    }
                    let sock = grabber.grab(f.fd)?;
                    let queued = match super::unixpair::queued(pid, &sock, kind)? {
                        Ok(queued) => queued,
                        Err(why) => {
                            return Err(refused(
                                pid,
                                format!("fd {} is socket:[{inode}], one end of a socket pair in the tree: {why}", f.fd),
                            ))
                        }
                    };
                    f.kind = FdKind::SocketPair {
                        inode,
                        peer,
                        kind,
                        data: queued,
                    };
                }
                _ => {}
            }
        }
    }
    Ok(())
}

/// Unix stream and seqpacket sockets recorded as socket pair ends whose
/// peer is in no process of the tree are connections to outside it:
/// recorded to be cut in the copy (or refused, by `policy`), as for a
/// single process (`super::socket`). Runs while the tree is held.
fn cut_outside_pairs(
    pids: &[i32],
    states: &mut [ProcessState],
    policy: super::socket::ConnectionPolicy,
) -> Result<(), CaptureError> {
    let ends: HashSet<u64> = states
        .iter()
        .flat_map(|s| s.fds.iter())
        .filter_map(|f| match f.kind {
            FdKind::SocketPair { inode, .. } => Some(inode),
            _ => None,
        })
        .collect();
    for (index, state) in states.iter_mut().enumerate() {
        let pid = pids[index];
        let mut grabber = super::kobj::Grabber::new(pid);
        for f in state.fds.iter_mut() {
            let FdKind::SocketPair {
                inode, peer, kind, ..
            } = f.kind
            else {
                continue;
            };
            if ends.contains(&peer) || kind == crate::state::PairType::Datagram {
                continue;
            }
            let sock = grabber.grab(f.fd)?;
            let target = format!("socket:[{inode}]");
            f.kind = super::socket::capture(pid, f.fd, &sock, &target, inode, policy)?;
        }
    }
    Ok(())
}

/// Checks that every pipe and socket pair end of the tree has its other end
/// in the tree, and gives every end of a pipe the data read through its
/// read end (see the module docs).
pub fn link_fds(states: &mut [ProcessState]) -> Result<(), CaptureError> {
    // Per pipe inode: its ends seen, and the data and capacity read through
    // a read end.
    let mut pipes: HashMap<u64, PipeEnds<(Vec<u8>, u32)>> = HashMap::new();
    let mut pair_ends = HashSet::new();
    for state in states.iter() {
        let mut read_here = HashSet::new();
        for f in &state.fds {
            match &f.kind {
                FdKind::Pipe {
                    end,
                    inode,
                    data,
                    capacity,
                } => {
                    let entry = pipes.entry(*inode).or_default();
                    match end {
                        PipeEnd::Read => {
                            entry.read = true;
                            read_here.insert(*inode);
                        }
                        PipeEnd::Write => entry.write = true,
                    }
                    if entry.through_read.is_none() && *capacity > 0 {
                        entry.through_read = Some((data.clone(), *capacity));
                    }
                }
                FdKind::SocketPair { inode, .. } => {
                    pair_ends.insert(*inode);
                }
                _ => {}
            }
        }
    }
    for state in states.iter_mut() {
        for f in state.fds.iter_mut() {
            match &mut f.kind {
                FdKind::Pipe {
                    inode,
                    data,
                    capacity,
                    ..
                } => {
                    let PipeEnds {
                        read,
                        write,
                        through_read: filled,
                    } = &pipes[inode];
                    if !(*read && *write) {
                        return Err(refused(
                            state.pid,
                            format!("fd {} is pipe:[{inode}], whose other end is in no process of the tree; the copy would not have it", f.fd),
                        ));
                    }
                    if let Some((queued, size)) = filled {
                        data.clone_from(queued);
                        *capacity = *size;
                    }
                }
                FdKind::SocketPair { inode, peer, .. } if !pair_ends.contains(peer) => {
                    return Err(refused(
                        state.pid,
                        format!("fd {} is socket:[{inode}], one end of a Unix socket pair whose peer is in no process of the tree; the copy would not have it", f.fd),
                    ));
                }
                _ => {}
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{FdState, PipeEnd};

    /// Two processes from the fuzz seed's state, pids 10 and 11.
    fn two() -> Vec<ProcessState> {
        let bytes = include_bytes!("../../../fuzz/corpus/snapshot_manifest/seed-sleep");
        let seed = crate::snapshot::parse_snapshot(
            &bytes[1..],
            crate::snapshot::DIR_SNAPSHOT_ID,
            std::path::Path::new("seed"),
        )
        .unwrap();
        let mut a = seed.state.clone();
        a.pid = 10;
        a.fds.clear();
        let mut b = a.clone();
        b.pid = 11;
        vec![a, b]
    }

    fn pipe(fd: i32, end: PipeEnd, data: &[u8], capacity: u32) -> FdState {
        FdState {
            fd,
            flags: 0,
            kind: FdKind::Pipe {
                end,
                inode: 77,
                data: data.to_vec(),
                capacity,
            },
        }
    }

    #[test]
    fn a_pipe_between_two_processes_gets_its_data_on_both_ends() {
        let mut states = two();
        states[0].fds.push(pipe(10, PipeEnd::Write, b"", 0));
        states[1].fds.push(pipe(0, PipeEnd::Read, b"queued", 65536));
        link_fds(&mut states).unwrap();
        assert_eq!(states[0].fds[0], pipe(10, PipeEnd::Write, b"queued", 65536));
    }

    #[test]
    fn a_pipe_end_whose_other_end_is_outside_the_tree_is_refused() {
        let mut states = two();
        states[1].fds.push(pipe(12, PipeEnd::Write, b"", 0));
        let err = link_fds(&mut states).unwrap_err().to_string();
        assert_eq!(
            err,
            "capture of pid 11 refused: in its process tree: fd 12 is pipe:[77], whose other end is in no process of the tree; the copy would not have it"
        );
    }
}
