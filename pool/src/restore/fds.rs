//! The descriptors a copy starts with, and the files its mappings need.
//!
//! Two kinds of descriptors reach the stub, at the numbers this plan gives
//! them (the copy's saved numbers, and from `first_private_fd` up the files
//! to map, the image and the executable, which the stub closes once its
//! memory and mm fields are set):
//!
//! ```text
//! sockets made by the copy itself later (`super::socket`): their
//!         numbers stay free
//! moves   made by the restorer: the caller's (protocol pipes, stdio),
//!         kernel objects (eventfd, pipes, memfd, ...), their dups, and
//!         thaw's own image. Placed by the stub's init.
//! wanted  files the copy names by path: saved files, directories and
//!         devices, mapped files, the executable. Opened as the copy's
//!         sandbox would open them, then checked here:
//!           sandboxed copy   the stub opens them inside its sandbox (its
//!                            mount namespace and root) with the function's
//!                            fs credentials and no capabilities
//!                            (`sandbox::open_files`); `adopt` takes each
//!                            back with pidfd_getfd and checks it
//!           `thaw restore`   no sandbox: `open_here` opens them in the
//!                            restorer (the operator's own snapshot)
//!         Each is checked against the capture: device and inode (every
//!         kind), the kind (file, directory, character or block device),
//!         rdev for devices, size and modification time for files whose
//!         content is used (private mappings, the executable), and the
//!         open flags the kernel reports. A file whose content the
//!         snapshot recorded (format 4: private mappings and the
//!         executable, `super::depends`) is matched by content instead of
//!         device, inode, size and time: the same library on another node
//!         (or copied into place) restores, other bytes at the same path
//!         are refused (`RestoreError::Incompatible`).
//! ```
//!
//! ```text
//! stub fds:  0 .. max saved fd        the copy's
//!            first_private_fd ..      mapped files, image, exe (closed later)
//! ```

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};

use snapshotter::state::{AreaKind, FdKind, FileContent, FileIdentity, ProcessState};

use super::RestoreError;
use crate::sandbox::open_files::OpenFile;

/// What to hand to the stub.
#[derive(Debug)]
pub struct FdPlan {
    /// Descriptors made or opened here; kept until the copy is made.
    pub held: Vec<OwnedFd>,
    /// `(restorer fd, stub fd)` for init.
    pub moves: Vec<(RawFd, RawFd)>,
    /// Files the copy names by path, opened as its sandbox would
    /// ([`FdPlan::open_here`] or [`FdPlan::adopt`]).
    pub wanted: Vec<Wanted>,
    /// Stub fd -> index in `held` of our descriptor on the same open file,
    /// for every wanted file once it is opened and checked.
    pub opened: HashMap<i32, usize>,
    /// Stub fd -> what the wanted file opened there was when it was
    /// checked (`Prepared::recheck` compares against it).
    pub checked: HashMap<i32, FileIdentity>,
    /// Stub fd of each file-backed area, by area index.
    pub area_fds: HashMap<usize, i32>,
    /// Each file a private area reads its pages from, once: `(index of its
    /// first private area, stub fd)`, in the areas' order (what
    /// `recheck_plan` checks again before the restore drives the stub).
    pub private_files: Vec<(usize, i32)>,
    /// Stub fd of the image.
    pub image_fd: i32,
    /// Stub fd of the executable.
    pub exe_fd: i32,
    /// The first stub fd that is the restorer's, not the copy's.
    pub first_private_fd: i32,
    /// Copy fds that had close-on-exec.
    pub cloexec: Vec<i32>,
}

/// A file the copy gets by path, and what it must be.
#[derive(Debug, Clone)]
pub struct Wanted {
    /// Its number in the stub.
    pub fd: i32,
    /// The copy's path.
    pub path: String,
    /// Flags to open it with (no `O_CLOEXEC`).
    pub flags: i32,
    /// What the capture saw.
    pub expect: Expect,
    /// File position to set (regular files not opened `O_PATH`).
    pub position: Option<u64>,
    /// The content the capture recorded (`super::depends::attach`): when
    /// set, the file is matched by it instead of by identity.
    pub content: Option<FileContent>,
}

/// What a wanted file must be.
#[derive(Debug, Clone)]
pub enum Expect {
    /// A regular file with this identity; `unchanged`: its content is used
    /// (size and modification time must match too).
    File {
        /// The capture's identity (`None`: a mapping recorded without one).
        identity: Option<FileIdentity>,
        /// Size and modification time are checked too.
        unchanged: bool,
    },
    /// A directory with this device and inode.
    Directory(FileIdentity),
    /// A device node with this device and inode, `rdev` and kind.
    Device {
        /// The node's identity.
        identity: FileIdentity,
        /// `st_rdev`.
        rdev: u64,
        /// Block (true) or character device.
        block: bool,
    },
}

impl Wanted {
    /// The stub's instruction for this file.
    fn open_file(&self) -> OpenFile {
        OpenFile {
            fd: self.fd,
            path: self.path.clone(),
            flags: self.flags,
        }
    }

    /// Checks that `file` (opened from [`Wanted::path`]) is what the
    /// capture saw, with the flags asked for; then sets its position.
    /// Returns what it is now (for a later recheck).
    fn check(&self, file: &File) -> Result<FileIdentity, RestoreError> {
        let path = &self.path;
        let meta = file.metadata().map_err(|source| RestoreError::Io {
            what: format!("stat {path}"),
            source,
        })?;
        let changed = |what: String| RestoreError::FileChanged {
            path: path.to_string(),
            what,
        };
        let kind = meta.file_type();
        let (identity, unchanged) = match &self.expect {
            Expect::File {
                identity,
                unchanged,
            } => {
                if !kind.is_file() {
                    return Err(changed(format!(
                        "now {}, was a regular file",
                        kind_name(&meta)
                    )));
                }
                (identity.as_ref(), *unchanged)
            }
            Expect::Directory(identity) => {
                if !kind.is_dir() {
                    return Err(changed(format!(
                        "now {}, was a directory",
                        kind_name(&meta)
                    )));
                }
                (Some(identity), false)
            }
            Expect::Device {
                identity,
                rdev,
                block,
            } => {
                let same_kind = if *block {
                    kind.is_block_device()
                } else {
                    kind.is_char_device()
                };
                if !same_kind || meta.rdev() != *rdev {
                    return Err(changed(format!(
                        "now {} rdev {:#x}, was a {} device rdev {rdev:#x}",
                        kind_name(&meta),
                        meta.rdev(),
                        if *block { "block" } else { "character" }
                    )));
                }
                (Some(identity), false)
            }
        };
        let content = match (&self.expect, &self.content) {
            (
                Expect::File {
                    unchanged: true, ..
                },
                Some(content),
            ) => Some(content),
            _ => None,
        };
        if let Some(content) = content {
            super::depends::check_content(file, &meta, content)?;
        } else if let Some(id) = identity {
            if meta.dev() != id.dev || meta.ino() != id.inode {
                return Err(changed(format!(
                    "now device {} inode {}, was device {} inode {}",
                    meta.dev(),
                    meta.ino(),
                    id.dev,
                    id.inode
                )));
            }
            if unchanged
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
        // The open flags the kernel reports: access mode, O_PATH, O_APPEND
        // exactly as asked.
        // SAFETY: F_GETFL on a descriptor borrowed for the call.
        let got = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETFL) };
        let mask = libc::O_ACCMODE | libc::O_PATH | libc::O_APPEND;
        if got < 0 || got & mask != self.flags & mask {
            return Err(RestoreError::Unsupported(format!(
                "{path} was opened with flags {:#o}, wanted {:#o}",
                got & mask,
                self.flags & mask
            )));
        }
        if let Some(position) = self.position {
            // SAFETY: lseek on a descriptor borrowed for the call; it moves
            // the position of the open file the stub shares.
            let r =
                unsafe { libc::lseek(file.as_raw_fd(), position as libc::off_t, libc::SEEK_SET) };
            if r < 0 {
                return Err(RestoreError::Io {
                    what: format!("seek {path} to {position}"),
                    source: std::io::Error::last_os_error(),
                });
            }
        }
        Ok(FileIdentity {
            dev: meta.dev(),
            inode: meta.ino(),
            size: meta.size(),
            mtime_sec: meta.mtime(),
            mtime_nsec: meta.mtime_nsec(),
        })
    }
}

fn kind_name(meta: &std::fs::Metadata) -> &'static str {
    let t = meta.file_type();
    if t.is_file() {
        "a regular file"
    } else if t.is_dir() {
        "a directory"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_symlink() {
        "a symbolic link"
    } else {
        "a special file"
    }
}

impl FdPlan {
    /// Whether every wanted file is opened and checked.
    pub fn ready(&self) -> bool {
        self.wanted.iter().all(|w| self.opened.contains_key(&w.fd))
    }

    /// What a stub sandbox must open (inside the sandbox, as the function).
    pub fn open_files(&self) -> Vec<OpenFile> {
        self.wanted.iter().map(Wanted::open_file).collect()
    }

    /// Our descriptor on the open file the stub holds at `fd`.
    pub fn opened(&self, fd: i32) -> Option<BorrowedFd<'_>> {
        self.opened.get(&fd).map(|&i| self.held[i].as_fd())
    }

    /// Opens every wanted file here, by path, in the restorer's mount
    /// namespace with its credentials, and checks it: restores without a
    /// sandbox (`thaw restore` of an operator's snapshot). The stub's init
    /// places them.
    pub fn open_here(&mut self) -> Result<(), RestoreError> {
        for wanted in &self.wanted {
            if self.opened.contains_key(&wanted.fd) {
                continue;
            }
            let access = wanted.flags & libc::O_ACCMODE;
            let file = OpenOptions::new()
                .read(access != libc::O_WRONLY)
                .write(access != libc::O_RDONLY)
                .custom_flags((wanted.flags & !libc::O_ACCMODE) | libc::O_CLOEXEC | libc::O_NOCTTY)
                .open(&wanted.path)
                .map_err(|source| RestoreError::Io {
                    what: format!("open {} (fd {})", wanted.path, wanted.fd),
                    source,
                })?;
            let now = wanted.check(&file)?;
            self.checked.insert(wanted.fd, now);
            let fd = OwnedFd::from(file);
            self.moves.push((fd.as_raw_fd(), wanted.fd));
            self.opened.insert(wanted.fd, self.held.len());
            self.held.push(fd);
        }
        Ok(())
    }

    /// Takes back, with `pidfd_getfd`, every wanted file a stub sandbox
    /// opened (see [`FdPlan::open_files`]) and checks each is what the
    /// capture saw. `stub` is a pidfd of the stub, which must not run yet.
    pub fn adopt(&mut self, stub: BorrowedFd<'_>) -> Result<(), RestoreError> {
        self.adopt_numbered(stub, |fd| fd)
    }

    /// [`FdPlan::adopt`] for files the stub opened at other numbers than
    /// the copy's: `at(fd)` is the stub's number of the copy's fd `fd` (a
    /// process of a tree, whose files wait in a staging block of the root
    /// stub's table until the process is forked).
    pub fn adopt_numbered(
        &mut self,
        stub: BorrowedFd<'_>,
        at: impl Fn(i32) -> i32,
    ) -> Result<(), RestoreError> {
        for wanted in &self.wanted {
            if self.opened.contains_key(&wanted.fd) {
                continue;
            }
            let number = at(wanted.fd);
            // SAFETY: pidfd_getfd with a pidfd borrowed for the call; the
            // result is a new descriptor of ours (close-on-exec).
            let raw = unsafe { libc::syscall(libc::SYS_pidfd_getfd, stub.as_raw_fd(), number, 0) };
            if raw < 0 {
                return Err(RestoreError::Io {
                    what: format!(
                        "take fd {number} ({}, the copy's fd {}) from the stub",
                        wanted.path, wanted.fd
                    ),
                    source: std::io::Error::last_os_error(),
                });
            }
            // SAFETY: a fresh descriptor nobody else owns.
            let file = unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(raw as i32) };
            let now = wanted.check(&file)?;
            self.checked.insert(wanted.fd, now);
            let fd = OwnedFd::from(file);
            self.opened.insert(wanted.fd, self.held.len());
            self.held.push(fd);
        }
        Ok(())
    }
}

/// Plans what the copy needs: makes its kernel objects and takes the
/// caller's descriptors (`supplied`, by copy fd number) and the snapshot's
/// `image`; lists the files it names by path ([`FdPlan::wanted`]), opened
/// afterwards as its sandbox would ([`FdPlan::adopt`], [`FdPlan::open_here`]).
pub fn plan(
    state: &ProcessState,
    supplied: &[(i32, BorrowedFd<'_>)],
    image: RawFd,
) -> Result<FdPlan, RestoreError> {
    plan_with(state, supplied, image, &mut super::kobj::Pipes::default())
}

/// [`plan`] for one process of a tree: `pipes` holds the pipes and socket
/// pairs made for the processes planned before, so an object whose ends
/// are in several processes is made once and shared.
pub fn plan_with(
    state: &ProcessState,
    supplied: &[(i32, BorrowedFd<'_>)],
    image: RawFd,
    pipes: &mut super::kobj::Pipes,
) -> Result<FdPlan, RestoreError> {
    let mut held: Vec<OwnedFd> = Vec::new();
    let mut moves = Vec::new();
    let mut wanted = Vec::new();
    let mut cloexec = Vec::new();
    for saved in &state.fds {
        if saved.flags & libc::O_CLOEXEC as u32 != 0 {
            cloexec.push(saved.fd);
        }
        if let Some((_, fd)) = supplied.iter().find(|(n, _)| *n == saved.fd) {
            moves.push((fd.as_raw_fd(), saved.fd));
            continue;
        }
        if super::socket::made_in_copy(saved, &state.fds) {
            // Made by the copy itself, at this number (`socket`).
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
                    "fd {} duplicates fd {of}, which the snapshot does not have before it among its kernel objects",
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
        let (path, flags, expect, position) = match &saved.kind {
            FdKind::File {
                path,
                position,
                identity,
            } => (
                path,
                open_flags,
                Expect::File {
                    identity: Some(*identity),
                    unchanged: false,
                },
                (o_path == 0).then_some(*position),
            ),
            FdKind::Directory { path, identity, .. } => (
                path,
                open_flags | libc::O_DIRECTORY,
                Expect::Directory(*identity),
                None,
            ),
            FdKind::Device {
                path,
                rdev,
                block,
                identity,
            } => (
                path,
                open_flags,
                Expect::Device {
                    identity: *identity,
                    rdev: *rdev,
                    block: *block,
                },
                None,
            ),
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
            | FdKind::Inotify { .. }
            | FdKind::Socket(_)
            | FdKind::Dup { .. } => {
                unreachable!("kernel objects, sockets and dups are made above")
            }
        };
        wanted.push(Wanted {
            fd: saved.fd,
            path: path.clone(),
            flags,
            expect,
            position,
            content: None,
        });
    }

    let first_private_fd = state.fds.iter().map(|f| f.fd + 1).max().unwrap_or(0).max(3);
    let mut next = first_private_fd;
    // Keyed by the areas' own paths (borrowed: a numpy/pandas copy has
    // hundreds of file areas over ~90 files, planned for every copy).
    let file_areas = state
        .areas
        .iter()
        .filter(|a| matches!(a.kind, AreaKind::FileUnchanged | AreaKind::FilePrivate))
        .count();
    let mut by_file: HashMap<(&str, bool), i32> = HashMap::with_capacity(file_areas);
    let mut area_fds = HashMap::with_capacity(file_areas);
    let mut private_files: Vec<(usize, i32)> = Vec::new();
    let mut listed: Vec<bool> = Vec::new();
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
        let key = (path.as_str(), write);
        let fd = match by_file.get(&key) {
            Some(&fd) => fd,
            None => {
                // A shared mapping's content is live: only its identity
                // counts. A private one reads pages from the file: it must
                // be unchanged.
                wanted.push(Wanted {
                    fd: next,
                    path: path.clone(),
                    flags: if write { libc::O_RDWR } else { libc::O_RDONLY },
                    expect: Expect::File {
                        identity: area.file,
                        unchanged: !area.shared,
                    },
                    position: None,
                    content: None,
                });
                by_file.insert(key, next);
                next += 1;
                next - 1
            }
        };
        area_fds.insert(index, fd);
        // Numbers from `first_private_fd` up, one per file: a flag each.
        let slot = (fd - first_private_fd) as usize;
        if slot >= listed.len() {
            listed.resize(slot + 1, false);
        }
        if !area.shared && !listed[slot] {
            listed[slot] = true;
            private_files.push((index, fd));
        }
    }
    let image_fd = next;
    moves.push((image, image_fd));
    let exe_fd = next + 1;
    wanted.push(Wanted {
        fd: exe_fd,
        path: state.mm.exe_path.clone(),
        flags: libc::O_RDONLY,
        expect: Expect::File {
            identity: Some(state.mm.exe),
            unchanged: true,
        },
        position: None,
        content: None,
    });
    Ok(FdPlan {
        held,
        moves,
        wanted,
        opened: HashMap::new(),
        checked: HashMap::new(),
        area_fds,
        private_files,
        image_fd,
        exe_fd,
        first_private_fd,
        cloexec,
    })
}
