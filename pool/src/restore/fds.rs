//! The descriptors a copy starts with, and the files its mappings need.
//!
//! Everything is opened in the restorer and checked against the identity
//! the capture recorded, then handed to the stub through its init (see
//! `spawn`): the copy's descriptors at their saved numbers, and above them
//! (from `first_private_fd` up) the files to map, the image and the
//! executable, which the stub closes once its memory and mm fields are set.
//!
//! ```text
//! stub fds:  0 .. max saved fd        the copy's (supplied or reopened)
//!            first_private_fd ..      mapped files, image, exe (closed later)
//! ```

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};

use snapshotter::state::{AreaKind, FdKind, FileIdentity, ProcessState};

use super::RestoreError;

/// What to hand to the stub.
#[derive(Debug)]
pub struct FdPlan {
    /// Descriptors opened here; kept until init has its copies.
    pub held: Vec<OwnedFd>,
    /// `(restorer fd, stub fd)` for init.
    pub moves: Vec<(RawFd, RawFd)>,
    /// Stub fd of each file-backed area, by area index.
    pub area_fds: HashMap<usize, i32>,
    /// Stub fd of the image.
    pub image_fd: i32,
    /// Stub fd of the executable.
    pub exe_fd: i32,
    /// The first stub fd that is the restorer's, not the copy's.
    pub first_private_fd: i32,
    /// Copy fds that had close-on-exec.
    pub cloexec: Vec<i32>,
}

/// Which parts of a file's identity must match.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Check {
    /// Same file (device and inode).
    Same,
    /// Same file, same size and modification time (its content is used).
    Unchanged,
}

/// Opens `host` (the copy's `path`) with exactly the access mode of
/// `flags` (`O_RDONLY`, `O_WRONLY`, `O_RDWR`; `O_PATH` kept, so such a
/// descriptor never comes back readable) and its other flags, close-on-exec
/// here, and checks it is the file the snapshot saw.
fn open_checked(
    path: &str,
    host: &str,
    flags: i32,
    identity: Option<&FileIdentity>,
    check: Check,
) -> Result<File, RestoreError> {
    let access = flags & libc::O_ACCMODE;
    let file = OpenOptions::new()
        .read(access != libc::O_WRONLY)
        .write(access != libc::O_RDONLY)
        .custom_flags((flags & !libc::O_ACCMODE) | libc::O_CLOEXEC)
        .open(host)
        .map_err(|source| RestoreError::Io {
            what: if host == path {
                format!("open {path}")
            } else {
                format!("open {path} (here {host})")
            },
            source,
        })?;
    if let Some(id) = identity {
        let meta = file.metadata().map_err(|source| RestoreError::Io {
            what: format!("stat {path}"),
            source,
        })?;
        let changed = |what: String| RestoreError::FileChanged {
            path: path.to_string(),
            what,
        };
        if meta.dev() != id.dev || meta.ino() != id.inode {
            return Err(changed(format!(
                "now device {} inode {}, was device {} inode {}",
                meta.dev(),
                meta.ino(),
                id.dev,
                id.inode
            )));
        }
        if check == Check::Unchanged
            && (meta.size() != id.size
                || meta.mtime() != id.mtime_sec
                || meta.mtime_nsec() != id.mtime_nsec)
        {
            return Err(changed(format!(
                "size {} mtime {}.{:09}, was size {} mtime {}.{:09}",
                meta.size(),
                meta.mtime(),
                meta.mtime_nsec(),
                id.size,
                id.mtime_sec,
                id.mtime_nsec
            )));
        }
    }
    Ok(file)
}

/// Where the copy's paths are on the restorer's side: `(prefix, host
/// directory)` pairs, the copy's `prefix/x` being the host's `dir/x` (a
/// sandbox's `/var/task` is its function's code folder). Paths under no
/// prefix are the same on both sides.
#[derive(Debug, Clone, Default)]
pub struct PathMap(pub Vec<(String, std::path::PathBuf)>);

impl PathMap {
    /// The restorer's path for the copy's `path`.
    pub fn host(&self, path: &str) -> std::borrow::Cow<'_, str> {
        for (prefix, dir) in &self.0 {
            if let Some(rest) = path.strip_prefix(prefix.as_str()) {
                if rest.is_empty() || rest.starts_with('/') {
                    return format!("{}{rest}", dir.display()).into();
                }
            }
        }
        path.to_string().into()
    }
}

/// Opens what the copy needs; `supplied` are the caller's descriptors by
/// copy fd number, `image` the snapshot's image, `paths` where the copy's
/// paths are here.
pub fn plan(
    state: &ProcessState,
    supplied: &[(i32, BorrowedFd<'_>)],
    image: RawFd,
    paths: &PathMap,
) -> Result<FdPlan, RestoreError> {
    plan_with(
        state,
        supplied,
        image,
        paths,
        &mut super::kobj::Pipes::default(),
    )
}

/// [`plan`] for one process of a tree: `pipes` holds the pipes and socket
/// pairs made for the processes planned before, so an object whose ends
/// are in several processes is made once and shared.
pub fn plan_with(
    state: &ProcessState,
    supplied: &[(i32, BorrowedFd<'_>)],
    image: RawFd,
    paths: &PathMap,
    pipes: &mut super::kobj::Pipes,
) -> Result<FdPlan, RestoreError> {
    let mut held: Vec<OwnedFd> = Vec::new();
    let mut moves = Vec::new();
    let mut cloexec = Vec::new();
    for saved in &state.fds {
        if saved.flags & libc::O_CLOEXEC as u32 != 0 {
            cloexec.push(saved.fd);
        }
        if let Some((_, fd)) = supplied.iter().find(|(n, _)| *n == saved.fd) {
            moves.push((fd.as_raw_fd(), saved.fd));
            continue;
        }
        if super::kobj::is_object(&saved.kind) {
            let fd = super::kobj::create(saved, pipes)?;
            moves.push((fd.as_raw_fd(), saved.fd));
            held.push(fd);
            continue;
        }
        if let FdKind::Dup { of } = saved.kind {
            let Some(&(raw, _)) = moves.iter().find(|(_, n)| *n == of) else {
                return Err(RestoreError::Unsupported(format!(
                    "fd {} duplicates fd {of}, which the snapshot does not have before it",
                    saved.fd
                )));
            };
            // SAFETY: F_DUPFD_CLOEXEC of a descriptor held above (or the
            // caller's, borrowed for the call); the result is ours.
            let fd = unsafe { libc::fcntl(raw, libc::F_DUPFD_CLOEXEC, 0) };
            if fd < 0 {
                return Err(RestoreError::Io {
                    what: format!("dup (fd {} as fd {of})", saved.fd),
                    source: std::io::Error::last_os_error(),
                });
            }
            // SAFETY: a fresh descriptor nobody else owns.
            let fd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
            moves.push((fd.as_raw_fd(), saved.fd));
            held.push(fd);
            continue;
        }
        let flags = saved.flags as i32;
        let access = flags & libc::O_ACCMODE;
        let o_path = flags & libc::O_PATH;
        // An O_PATH descriptor keeps O_PATH (never readable); others their
        // access mode and status flags.
        let open_flags = if o_path != 0 {
            libc::O_PATH | (flags & libc::O_NOFOLLOW)
        } else {
            access | (flags & (libc::O_APPEND | libc::O_NONBLOCK | libc::O_DIRECT | libc::O_SYNC))
        };
        let file = match &saved.kind {
            FdKind::File {
                path,
                position,
                identity,
            } => {
                let file = open_checked(
                    path,
                    &paths.host(path),
                    open_flags,
                    Some(identity),
                    Check::Same,
                )?;
                if o_path == 0 {
                    seek(&file, path, *position)?;
                }
                file
            }
            FdKind::Directory { path, .. } => open_checked(
                path,
                &paths.host(path),
                open_flags | libc::O_DIRECTORY,
                None,
                Check::Same,
            )?,
            FdKind::Device { path, .. } => {
                open_checked(path, &paths.host(path), open_flags, None, Check::Same)?
            }
            FdKind::ProtocolPipe { .. } => {
                return Err(RestoreError::FdNotSupplied {
                    fd: saved.fd,
                    what: "pipe",
                })
            }
            FdKind::ProtocolSocket { .. } => {
                return Err(RestoreError::FdNotSupplied {
                    fd: saved.fd,
                    what: "socket",
                })
            }
            FdKind::Eventfd { .. }
            | FdKind::Signalfd { .. }
            | FdKind::Timerfd(_)
            | FdKind::Epoll { .. }
            | FdKind::Pipe { .. }
            | FdKind::SocketPair { .. }
            | FdKind::Memfd { .. }
            | FdKind::Dup { .. } => unreachable!("kernel objects and dups are made above"),
        };
        let fd = OwnedFd::from(file);
        moves.push((fd.as_raw_fd(), saved.fd));
        held.push(fd);
    }

    let first_private_fd = state.fds.iter().map(|f| f.fd + 1).max().unwrap_or(0).max(3);
    let mut next = first_private_fd;
    let mut by_file: HashMap<(String, bool), i32> = HashMap::new();
    let mut area_fds = HashMap::new();
    for (index, area) in state.areas.iter().enumerate() {
        if !matches!(area.kind, AreaKind::FileUnchanged | AreaKind::FilePrivate) {
            continue;
        }
        let Some(path) = &area.path else {
            return Err(RestoreError::Unsupported(format!(
                "file area {:#x} without a path",
                area.start
            )));
        };
        if area.shared && area.deleted && path.starts_with("/memfd:") {
            // The copy's new memfd, already at its saved number.
            let Some(memfd) = state
                .fds
                .iter()
                .find(|f| matches!(f.kind, FdKind::Memfd { inode, .. } if inode == area.inode))
            else {
                return Err(RestoreError::Unsupported(format!(
                    "shared mapping of {path} at {:#x} without its memfd",
                    area.start
                )));
            };
            area_fds.insert(index, memfd.fd);
            continue;
        }
        let write = area.shared && area.prot.write;
        let key = (path.clone(), write);
        let fd = match by_file.get(&key) {
            Some(&fd) => fd,
            None => {
                // A shared mapping's content is live: only its identity
                // counts. A private one reads pages from the file: it must
                // be unchanged.
                let check = if area.shared {
                    Check::Same
                } else {
                    Check::Unchanged
                };
                let access = if write { libc::O_RDWR } else { libc::O_RDONLY };
                let file =
                    open_checked(path, &paths.host(path), access, area.file.as_ref(), check)?;
                let fd = OwnedFd::from(file);
                moves.push((fd.as_raw_fd(), next));
                held.push(fd);
                by_file.insert(key, next);
                next += 1;
                next - 1
            }
        };
        area_fds.insert(index, fd);
    }
    let image_fd = next;
    moves.push((image, image_fd));
    let exe = open_checked(
        &state.mm.exe_path,
        &paths.host(&state.mm.exe_path),
        libc::O_RDONLY,
        Some(&state.mm.exe),
        Check::Unchanged,
    )?;
    let exe = OwnedFd::from(exe);
    let exe_fd = next + 1;
    moves.push((exe.as_raw_fd(), exe_fd));
    held.push(exe);
    Ok(FdPlan {
        held,
        moves,
        area_fds,
        image_fd,
        exe_fd,
        first_private_fd,
        cloexec,
    })
}

fn seek(file: &File, path: &str, position: u64) -> Result<(), RestoreError> {
    use std::io::Seek;
    let mut f = file;
    f.seek(std::io::SeekFrom::Start(position))
        .map_err(|source| RestoreError::Io {
            what: format!("seek {path} to {position}"),
            source,
        })?;
    Ok(())
}
