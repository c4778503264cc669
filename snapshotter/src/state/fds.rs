//! File descriptors of a captured process.

use serde::{Deserialize, Serialize};

use super::FileIdentity;

/// One open file descriptor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FdState {
    /// The descriptor number.
    pub fd: i32,
    /// Open file status flags and access mode (`flags:` of fdinfo, octal
    /// there), including `O_CLOEXEC` as the kernel reports it.
    pub flags: u32,
    /// What it refers to.
    pub kind: FdKind,
}

/// Which end of a pipe a descriptor holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PipeEnd {
    /// Opened for reading.
    Read,
    /// Opened for writing.
    Write,
}

/// What a descriptor refers to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FdKind {
    /// A regular file: reopen `path` with `flags` and seek to `position`.
    File {
        /// Path as `/proc/pid/fd/N` shows it.
        path: String,
        /// File position.
        position: u64,
        /// Identity at capture time.
        identity: FileIdentity,
    },
    /// A directory, reopened by path.
    Directory {
        /// Path as `/proc/pid/fd/N` shows it.
        path: String,
        /// Position (directory stream offset).
        position: u64,
    },
    /// A character or block device node such as `/dev/null`.
    Device {
        /// Path as `/proc/pid/fd/N` shows it.
        path: String,
        /// `st_rdev`.
        rdev: u64,
        /// Block device (true) or character device (false).
        block: bool,
    },
    /// One end of a pipe that belongs to the runtime protocol (or the
    /// function's logs); the restorer connects a fresh pipe here.
    ProtocolPipe {
        /// Which end.
        end: PipeEnd,
        /// Inode of the original pipe (for information only).
        inode: u64,
    },
    /// A Unix socket that belongs to the runtime protocol; the restorer
    /// connects a fresh one here.
    ProtocolSocket {
        /// Inode of the original socket (for information only).
        inode: u64,
    },
}
