//! File descriptors of a captured process.
//!
//! Files, directories and devices are reopened by path; protocol pipes and
//! sockets are supplied by the restorer's caller. Kernel objects inside the
//! process are recreated with their state:
//!
//! ```text
//! kind        state (from /proc/PID/fdinfo/N unless said)    restored by
//! eventfd     eventfd-count, eventfd-semaphore               eventfd2(count, flags)
//! signalfd    sigmask                                        signalfd4(-1, mask, flags)
//! timerfd     clockid, settime flags, it_value, it_interval, timerfd_create; in the
//!             ticks (unread expirations)                      last batch: settime,
//!                                                             TFD_IOC_SET_TICKS
//! epoll       tfd, events, data per registration (each       epoll_create1; in the
//!             checked with kcmp KCMP_EPOLL_TFD)               last batch: epoll_ctl ADD
//! pipe        both ends in the process: data queued (tee     pipe2, F_SETPIPE_SZ, data
//!             into a scratch pipe), F_GETPIPE_SZ              written, dup per fd
//! socketpair  Unix pair, both ends in the process (peer from  socketpair, each end's
//!             sock_diag): stream data queued per end          data sent from the
//!             (MSG_PEEK from SO_PEEK_OFF 0)                   other end
//! memfd       name, content, size, seals (F_GET_SEALS)       memfd_create, write,
//!                                                             F_ADD_SEALS
//! dup         kcmp KCMP_FILE: same description as an earlier  dup of that one
//! inotify     "inotify wd:" lines: wd, mask, file handle      inotify_init1; in the
//!             (path: open_by_handle_at through the process's  copy: inotify_add_watch
//!             root, readlink); no queued events (FIONREAD)    per watch, wd order
//! socket      TCP, UDP, Unix, netlink route (`super::socket`)  re-created in the
//!                                                             copy, or cut
//! ```

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
        /// Identity at capture time (device and inode are checked).
        identity: FileIdentity,
    },
    /// A character or block device node such as `/dev/null`.
    Device {
        /// Path as `/proc/pid/fd/N` shows it.
        path: String,
        /// `st_rdev`.
        rdev: u64,
        /// Block device (true) or character device (false).
        block: bool,
        /// Identity of the node at capture time (device and inode are
        /// checked, besides `rdev` and the kind).
        identity: FileIdentity,
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
    /// An eventfd.
    Eventfd {
        /// The counter.
        count: u64,
        /// `EFD_SEMAPHORE`.
        semaphore: bool,
    },
    /// A signalfd.
    Signalfd {
        /// The signals it reads (bit `n - 1` for signal `n`).
        mask: u64,
    },
    /// A timerfd.
    Timerfd(TimerState),
    /// An epoll instance and its registrations.
    Epoll {
        /// Every registration, in fdinfo order.
        registrations: Vec<EpollRegistration>,
    },
    /// One end of a pipe whose both ends are in the process.
    Pipe {
        /// Which end.
        end: PipeEnd,
        /// Inode of the pipe: the descriptors with the same one are its
        /// ends.
        inode: u64,
        /// Bytes queued in the pipe (recorded on every end; the same).
        data: Vec<u8>,
        /// Its capacity (`F_GETPIPE_SZ`).
        capacity: u32,
    },
    /// One end of a Unix socket pair whose both ends are in the process.
    SocketPair {
        /// Inode of this end.
        inode: u64,
        /// Inode of the other end.
        peer: u64,
        /// Socket type.
        kind: PairType,
        /// Bytes queued to be read from this end (stream pairs).
        data: Vec<u8>,
    },
    /// The same open file description as the earlier descriptor `of` (a
    /// `dup` of a kernel object or pipe end, found with `kcmp KCMP_FILE`).
    Dup {
        /// The earlier descriptor.
        of: i32,
    },
    /// A memfd (`memfd_create`): its content and seals.
    Memfd {
        /// The name given to `memfd_create` (without `/memfd:`).
        name: String,
        /// Inode (descriptors and shared areas with the same one share it).
        inode: u64,
        /// Its content (its size is the length).
        content: Vec<u8>,
        /// `F_GET_SEALS`.
        seals: u32,
        /// File position.
        position: u64,
    },
    /// An inotify instance and its watches (queued events are refused at
    /// capture).
    Inotify {
        /// Every watch, in watch-descriptor order.
        watches: Vec<InotifyWatch>,
    },
    /// A TCP, UDP, Unix or netlink route socket the copy re-creates (or
    /// gets as a cut connection): see [`super::SocketState`].
    Socket(super::SocketState),
}

/// One watch of an inotify instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InotifyWatch {
    /// The watch descriptor the program holds (the copy's gets the same).
    pub wd: i32,
    /// The watched file or directory, as the process names it.
    pub path: String,
    /// The event mask with the `IN_ONESHOT` / `IN_EXCL_UNLINK` flags.
    pub mask: u32,
}

/// One registration of an epoll instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpollRegistration {
    /// The registered descriptor number (checked at capture to still name
    /// the file it was registered for).
    pub fd: i32,
    /// `epoll_event.events` (including `EPOLLET`, `EPOLLONESHOT`, ...).
    pub events: u32,
    /// `epoll_event.data`.
    pub data: u64,
}

/// A timerfd's setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimerState {
    /// `clockid`.
    pub clock: i32,
    /// `settime flags` (`TFD_TIMER_ABSTIME`, `TFD_TIMER_CANCEL_ON_SET`).
    pub settime_flags: i32,
    /// Time to the next expiration at capture, in nanoseconds; 0 when
    /// disarmed.
    pub remaining_ns: u64,
    /// Period in nanoseconds; 0 for a one-shot timer.
    pub interval_ns: u64,
    /// For an absolute timer: the deadline on its clock (capture-time
    /// reading of the clock plus `remaining_ns`), kept as it is.
    pub deadline_ns: Option<u64>,
    /// Expirations not read yet.
    pub ticks: u64,
}

/// The socket type of a Unix socket pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PairType {
    /// `SOCK_STREAM`.
    Stream,
    /// `SOCK_DGRAM`.
    Datagram,
    /// `SOCK_SEQPACKET`.
    SeqPacket,
}
