//! File descriptors: `/proc/pid/fd/N` (what), `/proc/pid/fdinfo/N` (where).
//!
//! ```text
//! /proc/pid/fd/3      -> pipe:[15144] | socket:[4242] | anon_inode:[eventfd] | /path
//! /proc/pid/fdinfo/3     pos:    0
//!                        flags:  0100002        (octal, O_* | O_CLOEXEC)
//!                        mnt_id: 24
//! ```
//!
//! Regular files, directories and device nodes are recorded for reopening,
//! with their identity (device, inode; size and modification time). Those on
//! a filesystem that exists only inside the process's sandbox (its root
//! tmpfs, `/tmp`, `/proc`: [`refuse::PrivateFilesystems`]) are refused: a
//! copy gets a sandbox of its own and could not be given the same file.
//! Pipes and Unix sockets on the descriptors the runtime protocol uses
//! ([`super::CaptureOptions::protocol_fds`]) are connected afresh by the
//! restorer. Kernel objects inside the process (see [`super::kobj`]) are
//! recorded with their state: eventfd, signalfd, timerfd, epoll, memfd, and
//! pipes whose both ends the process holds (a descriptor on the same open
//! file as an earlier one is a [`FdKind::Dup`]). TCP, UDP, Unix and
//! netlink route sockets are recorded for the copy to re-create, or as
//! connections it gets cut ([`socket`]). Everything else is refused,
//! naming it.

use std::collections::HashSet;

use super::inotify;
use super::kobj;
use super::mm::identity;
use super::procfs;
use super::refuse::{self, Refusal};
use super::socket::{self, ConnectionPolicy};
use super::unixpair;
use super::CaptureError;
use crate::state::{FdKind, FdState, PipeEnd};

fn refuse(pid: i32, fd: i32, what: impl Into<String>, why: &'static str) -> CaptureError {
    CaptureError::refused(
        pid,
        Refusal::Descriptor {
            fd,
            what: what.into(),
            why,
        },
    )
}

/// Numbers of the open descriptors, ascending.
fn open_fds(pid: i32) -> Result<Vec<i32>, CaptureError> {
    let path = format!("/proc/{pid}/fd");
    let dir = std::fs::read_dir(&path).map_err(|source| CaptureError::Proc {
        path: path.clone(),
        source,
    })?;
    let mut fds = Vec::new();
    for entry in dir {
        let entry = entry.map_err(|source| CaptureError::Proc {
            path: path.clone(),
            source,
        })?;
        if let Some(fd) = entry.file_name().to_str().and_then(|n| n.parse().ok()) {
            fds.push(fd);
        }
    }
    fds.sort_unstable();
    Ok(fds)
}

/// `pos` and `flags` of fdinfo, and its whole text; a `lock:` line (a lock
/// this descriptor holds) refuses the capture.
fn fdinfo(pid: i32, fd: i32) -> Result<(u64, u32, String), CaptureError> {
    let text = procfs::read_text(pid, &format!("fdinfo/{fd}"))?;
    let bad = |what: &str| CaptureError::Parse {
        path: format!("/proc/{pid}/fdinfo/{fd}"),
        what: what.into(),
    };
    let mut pos = None;
    let mut flags = None;
    for line in text.lines() {
        if let Some(v) = line.strip_prefix("pos:") {
            pos = v.trim().parse().ok();
        } else if let Some(v) = line.strip_prefix("flags:") {
            flags = u32::from_str_radix(v.trim(), 8).ok();
        } else if let Some(v) = line.strip_prefix("lock:") {
            let lock = v.split_whitespace().collect::<Vec<_>>().join(" ");
            return Err(CaptureError::refused(pid, Refusal::FileLock { fd, lock }));
        }
    }
    Ok((
        pos.ok_or_else(|| bad("no pos"))?,
        flags.ok_or_else(|| bad("no flags"))?,
        text,
    ))
}

/// Inodes of every socket `pid` holds.
fn socket_inodes(pid: i32) -> Result<HashSet<u64>, CaptureError> {
    let mut out = HashSet::new();
    for fd in open_fds(pid)? {
        match procfs::read_link(pid, &format!("fd/{fd}")) {
            Ok(target) => out.extend(bracket_inode(&target, "socket:[")),
            // Closed meanwhile (another thread of a process being held
            // cannot close it; be lenient anyway).
            Err(CaptureError::Proc { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// The inode inside `pipe:[N]` / `socket:[N]`.
fn bracket_inode(target: &str, prefix: &str) -> Option<u64> {
    target.strip_prefix(prefix)?.strip_suffix(']')?.parse().ok()
}

/// Describes every descriptor of `pid`, refusing what cannot be restored.
pub fn capture(pid: i32, protocol_fds: &[i32]) -> Result<Vec<FdState>, CaptureError> {
    capture_with(pid, protocol_fds, false, ConnectionPolicy::Cut)
}

/// [`capture`]; `in_tree`: `pid` is one process of a tree, and a pipe or
/// socket pair with an end missing here may have it in another process of
/// the tree (`super::tree::link_fds` checks that and fills in the data of a
/// pipe whose read end is elsewhere). `connections`: what to do with
/// connections to outside the process ([`socket`]).
pub fn capture_with(
    pid: i32,
    protocol_fds: &[i32],
    in_tree: bool,
    connections: ConnectionPolicy,
) -> Result<Vec<FdState>, CaptureError> {
    let protocol: HashSet<i32> = protocol_fds.iter().copied().collect();
    let mut unix = None;
    let mut own_sockets = None;
    let mut out = Vec::new();
    let mut grabber = kobj::Grabber::new(pid);
    let mut peers = None;
    let private = refuse::PrivateFilesystems::read(pid)?;
    // Kernel objects and inner pipe ends seen so far (for dups).
    let mut objects: Vec<i32> = Vec::new();
    for fd in open_fds(pid)? {
        let target = procfs::read_link(pid, &format!("fd/{fd}"))?;
        let (position, flags, info) = fdinfo(pid, fd)?;
        let object = target.starts_with("anon_inode:")
            || target.starts_with("/memfd:")
            || ((target.starts_with("pipe:[") || target.starts_with("socket:["))
                && !protocol.contains(&fd));
        if object {
            let mut dup_of = None;
            for &earlier in &objects {
                if kobj::same_file(pid, earlier, fd)? {
                    dup_of = Some(earlier);
                    break;
                }
            }
            if let Some(of) = dup_of {
                out.push(FdState {
                    fd,
                    flags,
                    kind: FdKind::Dup { of },
                });
                continue;
            }
            objects.push(fd);
        }
        let kind = if let Some(inode) = bracket_inode(&target, "pipe:[") {
            let end = if flags & libc::O_ACCMODE as u32 == libc::O_RDONLY as u32 {
                PipeEnd::Read
            } else {
                PipeEnd::Write
            };
            if protocol.contains(&fd) {
                FdKind::ProtocolPipe { end, inode }
            } else {
                // Data and capacity are filled in once both ends are known.
                FdKind::Pipe {
                    end,
                    inode,
                    data: Vec::new(),
                    capacity: 0,
                }
            }
        } else if let Some(inode) = bracket_inode(&target, "socket:[") {
            let unix = match &unix {
                Some(unix) => unix,
                None => unix.insert(refuse::unix_sockets(pid)?),
            };
            if !unix.contains(&inode) {
                // TCP, UDP, netlink: re-created or cut (`socket`).
                let sock = grabber.grab(fd)?;
                socket::capture(pid, fd, &sock, &target, inode, connections)?
            } else if protocol.contains(&fd) {
                FdKind::ProtocolSocket { inode }
            } else {
                let peers = match &peers {
                    Some(p) => p,
                    None => peers.insert(unixpair::peers(pid)?),
                };
                let (kind, peer) = peers.get(&inode).copied().unwrap_or((0, 0));
                let own = match &own_sockets {
                    Some(own) => own,
                    None => own_sockets.insert(socket_inodes(pid)?),
                };
                // A peer in this process (or, in a tree, maybe in another
                // process of it) makes a socket pair; otherwise the socket
                // is listening, unconnected, or connected outside (`socket`).
                let paired = peer != 0 && (in_tree || own.contains(&peer));
                if !paired {
                    let sock = grabber.grab(fd)?;
                    socket::capture(pid, fd, &sock, &target, inode, connections)?
                } else {
                    let Some(kind) = unixpair::pair_type(kind) else {
                        return Err(refuse(
                            pid,
                            fd,
                            target,
                            "a Unix socket of a type thaw cannot recreate",
                        ));
                    };
                    let sock = grabber.grab(fd)?;
                    let data = match unixpair::queued(pid, &sock, kind)? {
                        Ok(data) => data,
                        Err(why) => return Err(refuse(pid, fd, target, why)),
                    };
                    FdKind::SocketPair {
                        inode,
                        peer,
                        kind,
                        data,
                    }
                }
            }
        } else if target == "anon_inode:[eventfd]" {
            kobj::eventfd(pid, fd, &info)?
        } else if target == "anon_inode:[signalfd]" {
            kobj::signalfd(pid, fd, &info)?
        } else if target == "anon_inode:[timerfd]" {
            kobj::timerfd(pid, fd, &mut grabber)?
        } else if target == "anon_inode:[eventpoll]" {
            FdKind::Epoll {
                registrations: kobj::epoll(pid, fd, &info)?,
            }
        } else if target == "anon_inode:inotify" {
            match inotify::capture(pid, fd, &info, &mut grabber)? {
                Ok(kind) => kind,
                Err(why) => return Err(refuse(pid, fd, target, why)),
            }
        } else if target.starts_with("anon_inode:") {
            return Err(refuse(
                pid,
                fd,
                target,
                "a kernel object thaw cannot recreate (eventfd, signalfd, timerfd, epoll and inotify can be)",
            ));
        } else if let Some(name) = target
            .strip_prefix("/memfd:")
            .and_then(|n| n.strip_suffix(" (deleted)"))
        {
            let file = grabber.grab(fd)?;
            let (content, seals) = kobj::memfd(pid, fd, &file)?;
            let inode = nix::sys::stat::fstat(&file)
                .map(|st| st.st_ino)
                .unwrap_or(0);
            FdKind::Memfd {
                name: name.to_string(),
                inode,
                content,
                seals,
                position,
            }
        } else if target.ends_with(" (deleted)") {
            return Err(refuse(
                pid,
                fd,
                target,
                "an open file that was deleted; a copy cannot reopen it",
            ));
        } else {
            let link = format!("/proc/{pid}/fd/{fd}");
            let st = nix::sys::stat::stat(link.as_str()).map_err(|errno| CaptureError::Proc {
                path: link.clone(),
                source: errno.into(),
            })?;
            if private.contains(st.st_dev) {
                return Err(refuse(
                    pid,
                    fd,
                    target,
                    "on a filesystem that exists only inside the process's sandbox (its root, /tmp, /proc); a copy gets its own sandbox, so thaw could not give it this one",
                ));
            }
            match st.st_mode & libc::S_IFMT {
                libc::S_IFREG => FdKind::File {
                    path: target,
                    position,
                    identity: identity(&link)?,
                },
                libc::S_IFDIR => FdKind::Directory {
                    path: target,
                    position,
                    identity: identity(&link)?,
                },
                libc::S_IFCHR | libc::S_IFBLK => FdKind::Device {
                    path: target,
                    rdev: st.st_rdev,
                    block: st.st_mode & libc::S_IFMT == libc::S_IFBLK,
                    identity: identity(&link)?,
                },
                _ => {
                    return Err(refuse(
                        pid,
                        fd,
                        target,
                        "a named pipe or special file thaw cannot recreate",
                    ))
                }
            }
        };
        out.push(FdState { fd, flags, kind });
    }
    fill_pipes(pid, &mut out, &mut grabber, in_tree)?;
    if !in_tree {
        check_pairs(pid, &out)?;
    }
    Ok(out)
}

/// Every socket pair needs both ends in the process.
fn check_pairs(pid: i32, fds: &[FdState]) -> Result<(), CaptureError> {
    let ends: HashSet<u64> = fds
        .iter()
        .filter_map(|f| match f.kind {
            FdKind::SocketPair { inode, .. } => Some(inode),
            _ => None,
        })
        .collect();
    for f in fds {
        if let FdKind::SocketPair { inode, peer, .. } = f.kind {
            if !ends.contains(&peer) {
                return Err(refuse(
                    pid,
                    f.fd,
                    format!("socket:[{inode}]"),
                    "a Unix socket whose peer is not in the process (outside the runtime protocol descriptors); the copy would not have it",
                ));
            }
        }
    }
    Ok(())
}

/// Every inner pipe needs both ends in the process (`in_tree`: a read end
/// in the process is enough, the tree checks the rest); records the data
/// queued in it (read through a duplicate of its read end) and its
/// capacity on each of its ends.
fn fill_pipes(
    pid: i32,
    fds: &mut [FdState],
    grabber: &mut kobj::Grabber,
    in_tree: bool,
) -> Result<(), CaptureError> {
    let mut pipes: Vec<(u64, Option<i32>, Option<i32>)> = Vec::new();
    for f in fds.iter() {
        if let FdKind::Pipe { end, inode, .. } = f.kind {
            let entry = match pipes.iter_mut().find(|p| p.0 == inode) {
                Some(e) => e,
                None => {
                    pipes.push((inode, None, None));
                    pipes.last_mut().expect("pushed")
                }
            };
            match end {
                PipeEnd::Read => entry.1 = entry.1.or(Some(f.fd)),
                PipeEnd::Write => entry.2 = entry.2.or(Some(f.fd)),
            }
        }
    }
    for (inode, read, write) in pipes {
        let read = match (read, write) {
            (Some(read), _) if in_tree => read,
            (None, Some(_)) if in_tree => continue,
            (Some(read), Some(_)) => read,
            _ => {
                let fd = read.or(write).expect("one end seen");
                return Err(refuse(
                pid,
                fd,
                format!("pipe:[{inode}]"),
                "a pipe outside the runtime protocol descriptors whose other end is not in the process; the copy would not have it",
            ));
            }
        };
        let dup = grabber.grab(read)?;
        let (queued, size) = kobj::pipe_data(pid, &dup)?;
        for f in fds.iter_mut() {
            if let FdKind::Pipe {
                inode: i,
                data,
                capacity,
                ..
            } = &mut f.kind
            {
                if *i == inode {
                    data.clone_from(&queued);
                    *capacity = size;
                }
            }
        }
    }
    Ok(())
}
