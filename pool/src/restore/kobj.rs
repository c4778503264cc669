//! Kernel objects inside the copy: eventfd, signalfd, timerfd, epoll,
//! pipes whose both ends the copy holds, memfd (the capture side is
//! `snapshotter::capture::kobj`, the state `snapshotter::state::fds`).
//!
//! ```text
//! plan (restorer)   create each object with its state and hand it to the
//!                   stub like a reopened file: eventfd2 + write(count),
//!                   signalfd4(mask), timerfd_create (disarmed),
//!                   epoll_create1 (empty), pipe2 + F_SETPIPE_SZ + the
//!                   queued data, socketpair + each end's queued data sent
//!                   from the other, memfd_create + content + F_ADD_SEALS,
//!                   inotify_init1 (no watches);
//!                   a dup shares the earlier descriptor's object
//! state batch       with every descriptor at its number: epoll_ctl ADD of
//! (in the stub)     every registration (so each names the copy's fd
//!                   number), inotify_add_watch per watch (`inotify`):
//!                   `register`; timerfd_settime (a relative timer's
//!                   remaining time counts from here, an absolute deadline
//!                   is kept) and TFD_IOC_SET_TICKS for unread
//!                   expirations: `arm` (a pre-mapped spare registers at
//!                   its pre-map and arms at its claim, in the claim's
//!                   batch)
//! ```

use std::collections::HashMap;
use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use snapshotter::state::{FdKind, FdState, PairType, PipeEnd, TimerState};

use super::batch::Batch;
use super::RestoreError;

/// `_IOW('T', 0, u64)`.
const TFD_IOC_SET_TICKS: u64 = 0x4008_5400;

/// `struct epoll_event` (packed on x86_64).
#[repr(C, packed)]
#[derive(Clone, Copy)]
struct EpollEvent {
    events: u32,
    data: u64,
}
const _: () = assert!(std::mem::size_of::<EpollEvent>() == 12);

/// `struct itimerspec`.
#[repr(C)]
#[derive(Clone, Copy)]
struct Itimerspec {
    interval_sec: i64,
    interval_nsec: i64,
    value_sec: i64,
    value_nsec: i64,
}
const _: () = assert!(std::mem::size_of::<Itimerspec>() == 32);

fn io(what: impl Into<String>) -> RestoreError {
    RestoreError::Io {
        what: what.into(),
        source: std::io::Error::last_os_error(),
    }
}

/// Takes ownership of a raw descriptor a successful call returned.
fn owned(raw: i32, what: &str) -> Result<OwnedFd, RestoreError> {
    if raw < 0 {
        return Err(io(what));
    }
    // SAFETY: a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// Pipes and socket pairs made so far: pipes by the saved pipe's inode
/// (read end, write end), pair ends by the saved end's inode (this end,
/// the other end), and the pair ends whose queued data was sent (once,
/// however many processes of a tree hold the end).
#[derive(Debug, Default)]
pub struct Pipes(
    HashMap<u64, (OwnedFd, OwnedFd)>,
    HashMap<u64, (OwnedFd, OwnedFd)>,
    std::collections::HashSet<u64>,
);

/// Whether [`create`] makes this kind.
pub fn is_object(kind: &FdKind) -> bool {
    matches!(
        kind,
        FdKind::Eventfd { .. }
            | FdKind::Signalfd { .. }
            | FdKind::Timerfd(_)
            | FdKind::Epoll { .. }
            | FdKind::Pipe { .. }
            | FdKind::SocketPair { .. }
            | FdKind::Memfd { .. }
            | FdKind::Inotify { .. }
    )
}

/// Creates the kernel object `saved` names, with its state (timers stay
/// disarmed until [`arm_and_register`]), close-on-exec in the restorer.
pub fn create(saved: &FdState, pipes: &mut Pipes) -> Result<OwnedFd, RestoreError> {
    let nonblock = saved.flags & libc::O_NONBLOCK as u32 != 0;
    let nb = |flag: i32| if nonblock { flag } else { 0 };
    match &saved.kind {
        FdKind::Eventfd { count, semaphore } => {
            let flags = libc::EFD_CLOEXEC
                | nb(libc::EFD_NONBLOCK)
                | if *semaphore { libc::EFD_SEMAPHORE } else { 0 };
            // SAFETY: eventfd returns a new descriptor or -1.
            let fd = owned(unsafe { libc::eventfd(0, flags) }, "eventfd")?;
            if *count > 0 {
                // The counter is 64 bits, eventfd's initial value 32.
                nix::unistd::write(&fd, &count.to_ne_bytes()).map_err(|e| RestoreError::Io {
                    what: "write (eventfd counter)".into(),
                    source: e.into(),
                })?;
            }
            Ok(fd)
        }
        FdKind::Signalfd { mask } => {
            let flags = libc::SFD_CLOEXEC | nb(libc::SFD_NONBLOCK);
            // SAFETY: signalfd4 reads 8 bytes of mask from a live u64.
            let raw = unsafe {
                libc::syscall(libc::SYS_signalfd4, -1, mask as *const u64, 8usize, flags)
            };
            owned(raw as i32, "signalfd4")
        }
        FdKind::Timerfd(t) => {
            let flags = libc::TFD_CLOEXEC | nb(libc::TFD_NONBLOCK);
            // SAFETY: timerfd_create returns a new descriptor or -1.
            owned(
                unsafe { libc::timerfd_create(t.clock, flags) },
                &format!("timerfd_create (clock {})", t.clock),
            )
        }
        FdKind::Inotify { .. } => {
            // SAFETY: inotify_init1 returns a new descriptor or -1.
            let raw = unsafe { libc::inotify_init1(libc::IN_CLOEXEC | nb(libc::IN_NONBLOCK)) };
            owned(raw, "inotify_init1")
        }
        FdKind::Epoll { .. } => {
            // SAFETY: epoll_create1 returns a new descriptor or -1.
            owned(
                unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) },
                "epoll_create1",
            )
        }
        FdKind::Pipe {
            end,
            inode,
            data,
            capacity,
        } => {
            if !pipes.0.contains_key(inode) {
                let packet = saved.flags as i32 & libc::O_DIRECT;
                let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::from_bits_truncate(
                    libc::O_CLOEXEC | packet,
                ))
                .map_err(|e| RestoreError::Io {
                    what: "pipe2".into(),
                    source: e.into(),
                })?;
                if *capacity > 0 {
                    // SAFETY: F_SETPIPE_SZ on a pipe we own.
                    let rc =
                        unsafe { libc::fcntl(write.as_raw_fd(), libc::F_SETPIPE_SZ, *capacity) };
                    if rc < 0 {
                        return Err(io(format!("F_SETPIPE_SZ {capacity}")));
                    }
                }
                let mut at = 0;
                while at < data.len() {
                    at +=
                        nix::unistd::write(&write, &data[at..]).map_err(|e| RestoreError::Io {
                            what: "write (pipe data)".into(),
                            source: e.into(),
                        })?;
                }
                pipes.0.insert(*inode, (read, write));
            }
            let (read, write) = &pipes.0[inode];
            let this = match end {
                PipeEnd::Read => read,
                PipeEnd::Write => write,
            };
            set_nonblock(this, nonblock)?;
            this.try_clone().map_err(|source| RestoreError::Io {
                what: "dup (pipe end)".into(),
                source,
            })
        }
        FdKind::SocketPair {
            inode,
            peer,
            kind,
            data,
        } => {
            if !pipes.1.contains_key(inode) {
                let ty = match kind {
                    PairType::Stream => libc::SOCK_STREAM,
                    PairType::Datagram => libc::SOCK_DGRAM,
                    PairType::SeqPacket => libc::SOCK_SEQPACKET,
                };
                let mut ends = [0i32; 2];
                // SAFETY: socketpair writes two descriptors into `ends`.
                if unsafe {
                    libc::socketpair(libc::AF_UNIX, ty | libc::SOCK_CLOEXEC, 0, ends.as_mut_ptr())
                } != 0
                {
                    return Err(io("socketpair"));
                }
                let (a, b) = (owned(ends[0], "socketpair")?, owned(ends[1], "socketpair")?);
                let dup = |fd: &OwnedFd| {
                    fd.try_clone().map_err(|source| RestoreError::Io {
                        what: "dup (socket pair end)".into(),
                        source,
                    })
                };
                pipes.1.insert(*peer, (dup(&b)?, dup(&a)?));
                pipes.1.insert(*inode, (a, b));
            }
            let (this, other) = &pipes.1[inode];
            // What was queued to this end is sent from the other one.
            let mut at = if pipes.2.insert(*inode) {
                0
            } else {
                data.len()
            };
            while at < data.len() {
                at += nix::unistd::write(other, &data[at..]).map_err(|e| RestoreError::Io {
                    what: "send (socket pair data)".into(),
                    source: e.into(),
                })?;
            }
            set_nonblock(this, nonblock)?;
            this.try_clone().map_err(|source| RestoreError::Io {
                what: "dup (socket pair end)".into(),
                source,
            })
        }
        FdKind::Memfd {
            name,
            content,
            seals,
            position,
            ..
        } => {
            let cname = CString::new(name.as_str()).map_err(|_| {
                RestoreError::Unsupported(format!("memfd name {name:?} holds a NUL byte"))
            })?;
            // SAFETY: memfd_create with a NUL-terminated name.
            let raw = unsafe {
                libc::memfd_create(cname.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING)
            };
            let fd = owned(raw, "memfd_create")?;
            let mut at = 0;
            while at < content.len() {
                at += nix::sys::uio::pwrite(&fd, &content[at..], at as i64).map_err(|e| {
                    RestoreError::Io {
                        what: format!("write (memfd {name})"),
                        source: e.into(),
                    }
                })?;
            }
            nix::unistd::ftruncate(&fd, content.len() as i64).map_err(|e| RestoreError::Io {
                what: format!("ftruncate (memfd {name})"),
                source: e.into(),
            })?;
            // SAFETY: F_ADD_SEALS on a memfd we own.
            if *seals != 0 && unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, *seals) } < 0
            {
                return Err(io(format!("F_ADD_SEALS {seals:#x} (memfd {name})")));
            }
            let access = saved.flags as i32 & libc::O_ACCMODE;
            let fd = if access == libc::O_RDWR {
                fd
            } else {
                // The same memfd opened with the saved access mode.
                let path = CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd()))
                    .expect("no NUL in a number");
                // SAFETY: open with a NUL-terminated path.
                let raw = unsafe { libc::open(path.as_ptr(), access | libc::O_CLOEXEC) };
                owned(raw, "reopen memfd")?
            };
            // SAFETY: lseek on a descriptor we own.
            if unsafe { libc::lseek(fd.as_raw_fd(), *position as i64, libc::SEEK_SET) } < 0 {
                return Err(io(format!("lseek (memfd {name})")));
            }
            Ok(fd)
        }
        other => Err(RestoreError::Unsupported(format!(
            "fd {} ({other:?}) is not a kernel object",
            saved.fd
        ))),
    }
}

fn set_nonblock(fd: &OwnedFd, nonblock: bool) -> Result<(), RestoreError> {
    // SAFETY: F_GETFL/F_SETFL on a descriptor we own.
    unsafe {
        let flags = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
        if flags < 0 {
            return Err(io("F_GETFL"));
        }
        let want = if nonblock {
            flags | libc::O_NONBLOCK
        } else {
            flags & !libc::O_NONBLOCK
        };
        if want != flags && libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, want) < 0 {
            return Err(io("F_SETFL"));
        }
    }
    Ok(())
}

fn split_ns(ns: u64) -> (i64, i64) {
    ((ns / 1_000_000_000) as i64, (ns % 1_000_000_000) as i64)
}

/// The `timerfd_settime` flags and setting that continue `t`: an absolute
/// timer keeps its deadline, a relative one gets its remaining time from
/// now; `None` when it was disarmed.
fn timer_setting(t: &TimerState) -> Option<(i32, Itimerspec)> {
    if t.remaining_ns == 0 {
        return None;
    }
    let (interval_sec, interval_nsec) = split_ns(t.interval_ns);
    let (flags, value) = match t.deadline_ns {
        Some(deadline) => (t.settime_flags, deadline),
        None => (
            t.settime_flags & !(libc::TFD_TIMER_ABSTIME | libc::TFD_TIMER_CANCEL_ON_SET),
            t.remaining_ns,
        ),
    };
    let (value_sec, value_nsec) = split_ns(value);
    Some((
        flags,
        Itimerspec {
            interval_sec,
            interval_nsec,
            value_sec,
            value_nsec,
        },
    ))
}

/// Adds to the last state batch (every descriptor is at its number): the
/// epoll registrations, the timers' settings and unread expirations, and
/// the inotify watches ([`super::inotify`]): [`register`] then [`arm`].
pub fn arm_and_register(batch: &mut Batch, fds: &[FdState]) -> Result<(), RestoreError> {
    register(batch, fds)?;
    arm(batch, fds)
}

/// Adds to `batch` what does not count from "now" (a pre-mapped spare's
/// pre-map runs it long before the claim): the epoll registrations and the
/// inotify watches ([`super::inotify`]).
pub fn register(batch: &mut Batch, fds: &[FdState]) -> Result<(), RestoreError> {
    for saved in fds {
        match &saved.kind {
            FdKind::Epoll { registrations } => {
                for r in registrations {
                    let event = EpollEvent {
                        events: r.events,
                        data: r.data,
                    };
                    // SAFETY: EpollEvent is packed plain data.
                    let bytes = unsafe {
                        std::slice::from_raw_parts(
                            (&event as *const EpollEvent).cast::<u8>(),
                            std::mem::size_of::<EpollEvent>(),
                        )
                    };
                    let at = batch.data(bytes)?;
                    batch.call(
                        format!("epoll_ctl(fd {}, ADD, fd {})", saved.fd, r.fd),
                        libc::SYS_epoll_ctl,
                        [
                            saved.fd as u64,
                            libc::EPOLL_CTL_ADD as u64,
                            r.fd as u64,
                            at,
                            0,
                            0,
                        ],
                    );
                }
            }
            FdKind::Inotify { watches } => {
                super::inotify::add_watches(batch, saved.fd, watches)?;
            }
            _ => {}
        }
    }
    Ok(())
}

/// Whether [`arm`] adds anything for `fds`: a timerfd armed or with unread
/// expirations.
pub fn any_to_arm(fds: &[FdState]) -> bool {
    fds.iter().any(|saved| match &saved.kind {
        FdKind::Timerfd(t) => timer_setting(t).is_some() || t.ticks > 0,
        _ => false,
    })
}

/// Adds to `batch` the timerfds' settings (a relative timer's remaining
/// time counts from this batch) and unread expirations: what must run at
/// the claim of a pre-mapped spare, not at its pre-map. The calls need no
/// privilege and pass the function's seccomp policy (`timerfd_settime`,
/// `ioctl` on the copy's own timerfd).
pub fn arm(batch: &mut Batch, fds: &[FdState]) -> Result<(), RestoreError> {
    for saved in fds {
        let FdKind::Timerfd(t) = &saved.kind else {
            continue;
        };
        if let Some((flags, spec)) = timer_setting(t) {
            let at = batch.data(super::remote::bytes_of(&spec))?;
            batch.call(
                format!("timerfd_settime(fd {})", saved.fd),
                libc::SYS_timerfd_settime,
                [saved.fd as u64, flags as u64, at, 0, 0, 0],
            );
        }
        if t.ticks > 0 {
            let at = batch.data(&t.ticks.to_ne_bytes())?;
            batch.call(
                format!("ioctl(fd {}, TFD_IOC_SET_TICKS)", saved.fd),
                libc::SYS_ioctl,
                [saved.fd as u64, TFD_IOC_SET_TICKS, at, 0, 0, 0],
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timers_continue_from_the_resume_or_keep_their_deadline() {
        let relative = TimerState {
            clock: libc::CLOCK_MONOTONIC,
            settime_flags: 0,
            remaining_ns: 1_500_000_000,
            interval_ns: 250_000_000,
            deadline_ns: None,
            ticks: 2,
        };
        let (flags, spec) = timer_setting(&relative).unwrap();
        assert_eq!(flags, 0);
        assert_eq!((spec.value_sec, spec.value_nsec), (1, 500_000_000));
        assert_eq!((spec.interval_sec, spec.interval_nsec), (0, 250_000_000));
        let absolute = TimerState {
            clock: libc::CLOCK_REALTIME,
            settime_flags: libc::TFD_TIMER_ABSTIME,
            deadline_ns: Some(2_000_000_000_000_000_123),
            ..relative
        };
        let (flags, spec) = timer_setting(&absolute).unwrap();
        assert_eq!(flags, libc::TFD_TIMER_ABSTIME);
        assert_eq!((spec.value_sec, spec.value_nsec), (2_000_000_000, 123));
        let disarmed = TimerState {
            remaining_ns: 0,
            ..relative
        };
        assert!(timer_setting(&disarmed).is_none());
    }
}
