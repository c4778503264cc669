//! File descriptors: `/proc/pid/fd/N` (what), `/proc/pid/fdinfo/N` (where).
//!
//! ```text
//! /proc/pid/fd/3      -> pipe:[15144] | socket:[4242] | anon_inode:[eventfd] | /path
//! /proc/pid/fdinfo/3     pos:    0
//!                        flags:  0100002        (octal, O_* | O_CLOEXEC)
//!                        mnt_id: 24
//! ```
//!
//! Regular files, directories and device nodes are recorded for reopening.
//! Pipes and Unix sockets are accepted only on the descriptors the runtime
//! protocol uses ([`super::CaptureOptions::protocol_fds`]): the restorer
//! connects fresh ones there. Everything else is refused.

use std::collections::HashSet;

use super::mm::identity;
use super::procfs;
use super::refuse::{self, Refusal};
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

/// `pos` and `flags` of fdinfo; a `lock:` line (a lock this descriptor
/// holds) refuses the capture.
fn fdinfo(pid: i32, fd: i32) -> Result<(u64, u32), CaptureError> {
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
    ))
}

/// The inode inside `pipe:[N]` / `socket:[N]`.
fn bracket_inode(target: &str, prefix: &str) -> Option<u64> {
    target.strip_prefix(prefix)?.strip_suffix(']')?.parse().ok()
}

/// Describes every descriptor of `pid`, refusing what cannot be restored.
pub fn capture(pid: i32, protocol_fds: &[i32]) -> Result<Vec<FdState>, CaptureError> {
    let protocol: HashSet<i32> = protocol_fds.iter().copied().collect();
    let mut tcp = None;
    let mut unix = None;
    let mut out = Vec::new();
    for fd in open_fds(pid)? {
        let target = procfs::read_link(pid, &format!("fd/{fd}"))?;
        let (position, flags) = fdinfo(pid, fd)?;
        let kind = if let Some(inode) = bracket_inode(&target, "pipe:[") {
            if !protocol.contains(&fd) {
                return Err(refuse(pid, fd, target, "a pipe outside the runtime protocol descriptors; its other end is not in the copy"));
            }
            let end = if flags & libc::O_ACCMODE as u32 == libc::O_RDONLY as u32 {
                PipeEnd::Read
            } else {
                PipeEnd::Write
            };
            FdKind::ProtocolPipe { end, inode }
        } else if let Some(inode) = bracket_inode(&target, "socket:[") {
            let tcp = match &tcp {
                Some(tcp) => tcp,
                None => tcp.insert(refuse::tcp_sockets(pid)?),
            };
            if let Some(entry) = tcp.get(&inode) {
                return Err(CaptureError::refused(
                    pid,
                    Refusal::TcpSocket {
                        fd,
                        local: entry.local,
                        remote: entry.remote,
                        state: entry.state,
                    },
                ));
            }
            let unix = match &unix {
                Some(unix) => unix,
                None => unix.insert(refuse::unix_sockets(pid)?),
            };
            if !unix.contains(&inode) {
                return Err(refuse(
                    pid,
                    fd,
                    target,
                    "a socket that is neither TCP nor Unix; thaw cannot recreate it",
                ));
            }
            if !protocol.contains(&fd) {
                return Err(refuse(pid, fd, target, "a Unix socket outside the runtime protocol descriptors; its peer is not in the copy"));
            }
            FdKind::ProtocolSocket { inode }
        } else if target.starts_with("anon_inode:") {
            return Err(refuse(
                pid,
                fd,
                target,
                "a kernel object (anon inode) thaw cannot recreate",
            ));
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
            match st.st_mode & libc::S_IFMT {
                libc::S_IFREG => FdKind::File {
                    path: target,
                    position,
                    identity: identity(&link)?,
                },
                libc::S_IFDIR => FdKind::Directory {
                    path: target,
                    position,
                },
                libc::S_IFCHR | libc::S_IFBLK => FdKind::Device {
                    path: target,
                    rdev: st.st_rdev,
                    block: st.st_mode & libc::S_IFMT == libc::S_IFBLK,
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
    Ok(out)
}
