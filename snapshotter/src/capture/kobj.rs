//! Kernel objects inside the process: what `/proc/PID/fdinfo/N` says about
//! eventfds, signalfds, timerfds and epoll instances, and what a duplicate
//! of the descriptor (`pidfd_getfd`) reads from pipes and memfds without
//! changing them.
//!
//! ```text
//! eventfd   eventfd-count:   (hex)   5        eventfd-semaphore: 1
//! signalfd  sigmask:  0000000000004000
//! timerfd   clockid: 1  ticks: 0  settime flags: 01
//!           it_value: (0, 49856123)  it_interval: (0, 200000000)
//! epoll     tfd:        4 events:       19 data:                4  pos:0 ino:.. sdev:..
//! ```
//!
//! The state types are in `crate::state::fds`; the restorer's side is
//! `pool::restore::kobj`.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use super::CaptureError;
use crate::state::{EpollRegistration, FdKind, TimerState};

/// `KCMP_FILE` and `KCMP_EPOLL_TFD` from `<linux/kcmp.h>`.
const KCMP_FILE: u64 = 0;
const KCMP_EPOLL_TFD: u64 = 7;

/// `struct kcmp_epoll_slot`.
#[repr(C)]
struct KcmpEpollSlot {
    efd: u32,
    tfd: u32,
    toff: u32,
}
const _: () = assert!(std::mem::size_of::<KcmpEpollSlot>() == 12);

/// Largest memfd or queued data thaw copies into a manifest.
pub const MAX_COPIED: usize = 64 << 20;

fn parse_error(pid: i32, fd: i32, what: impl Into<String>) -> CaptureError {
    CaptureError::Parse {
        path: format!("/proc/{pid}/fdinfo/{fd}"),
        what: what.into(),
    }
}

/// The value after `key` on its line of `text`, trimmed.
fn field<'t>(text: &'t str, key: &str) -> Option<&'t str> {
    text.lines()
        .find_map(|line| line.strip_prefix(key))
        .map(str::trim)
}

fn hex_field(pid: i32, fd: i32, text: &str, key: &str) -> Result<u64, CaptureError> {
    field(text, key)
        .and_then(|v| u64::from_str_radix(v, 16).ok())
        .ok_or_else(|| parse_error(pid, fd, format!("no hexadecimal {key}")))
}

fn dec_field(pid: i32, fd: i32, text: &str, key: &str) -> Result<u64, CaptureError> {
    field(text, key)
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| parse_error(pid, fd, format!("no number {key}")))
}

/// `(sec, nsec)` of an `it_value:` / `it_interval:` line, in nanoseconds.
fn timespec_field(pid: i32, fd: i32, text: &str, key: &str) -> Result<u64, CaptureError> {
    let bad = || parse_error(pid, fd, format!("no (sec, nsec) {key}"));
    let v = field(text, key).ok_or_else(bad)?;
    let inner = v
        .strip_prefix('(')
        .and_then(|v| v.strip_suffix(')'))
        .ok_or_else(bad)?;
    let (sec, nsec) = inner.split_once(',').ok_or_else(bad)?;
    let sec: u64 = sec.trim().parse().map_err(|_| bad())?;
    let nsec: u64 = nsec.trim().parse().map_err(|_| bad())?;
    Ok(sec * 1_000_000_000 + nsec)
}

/// An eventfd's counter and mode.
pub fn eventfd(pid: i32, fd: i32, text: &str) -> Result<FdKind, CaptureError> {
    Ok(FdKind::Eventfd {
        count: hex_field(pid, fd, text, "eventfd-count:")?,
        // Kernels before 6.6 do not print the mode.
        semaphore: field(text, "eventfd-semaphore:") == Some("1"),
    })
}

/// A signalfd's mask.
pub fn signalfd(pid: i32, fd: i32, text: &str) -> Result<FdKind, CaptureError> {
    Ok(FdKind::Signalfd {
        mask: hex_field(pid, fd, text, "sigmask:")?,
    })
}

/// Reads `clock` now, in nanoseconds.
fn clock_now(clock: i32) -> Result<u64, CaptureError> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec we own.
    if unsafe { libc::clock_gettime(clock, &mut ts) } != 0 {
        return Err(CaptureError::Sys {
            pid: 0,
            call: "clock_gettime",
            errno: nix::errno::Errno::last(),
        });
    }
    Ok(ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64)
}

/// A timerfd's clock, setting and unread expirations. An absolute timer
/// keeps its deadline; a relative one its remaining time.
///
/// A periodic timer that expired and was not read yet shows no remaining
/// time and one tick in fdinfo: the kernel forwards it (counting the
/// expirations missed meanwhile) only when it is read or asked for its
/// setting. `timerfd_gettime` on a duplicate does that forwarding first,
/// exactly as the process's next read would, so fdinfo then shows the
/// next expiration and every unread tick.
pub fn timerfd(pid: i32, fd: i32, grabber: &mut Grabber) -> Result<FdKind, CaptureError> {
    let dup = grabber.grab(fd)?;
    let mut setting = libc::itimerspec {
        it_interval: libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        },
        it_value: libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        },
    };
    // SAFETY: timerfd_gettime writes one itimerspec we own.
    if unsafe { libc::timerfd_gettime(dup.as_raw_fd(), &mut setting) } != 0 {
        return Err(CaptureError::Sys {
            pid,
            call: "timerfd_gettime",
            errno: nix::errno::Errno::last(),
        });
    }
    let text = super::procfs::read_text(pid, &format!("fdinfo/{fd}"))?;
    timerfd_from(pid, fd, &text)
}

fn timerfd_from(pid: i32, fd: i32, text: &str) -> Result<FdKind, CaptureError> {
    let clock = dec_field(pid, fd, text, "clockid:")? as i32;
    let settime_flags = field(text, "settime flags:")
        .and_then(|v| i32::from_str_radix(v, 8).ok())
        .ok_or_else(|| parse_error(pid, fd, "no octal settime flags"))?;
    let remaining_ns = timespec_field(pid, fd, text, "it_value:")?;
    let interval_ns = timespec_field(pid, fd, text, "it_interval:")?;
    let ticks = dec_field(pid, fd, text, "ticks:")?;
    let deadline_ns = if settime_flags & libc::TFD_TIMER_ABSTIME != 0 && remaining_ns != 0 {
        Some(clock_now(clock)? + remaining_ns)
    } else {
        None
    };
    Ok(FdKind::Timerfd(TimerState {
        clock,
        settime_flags,
        remaining_ns,
        interval_ns,
        deadline_ns,
        ticks,
    }))
}

/// `kcmp(pid, pid, type, a, b)`: 0 when equal.
fn kcmp(pid: i32, kind: u64, a: u64, b: u64) -> Result<i64, CaptureError> {
    // SAFETY: kcmp only reads `b` as a pointer for KCMP_EPOLL_TFD, where the
    // caller passes the address of a live `KcmpEpollSlot`.
    let r = unsafe { libc::syscall(libc::SYS_kcmp, pid, pid, kind, a, b) };
    if r < 0 {
        return Err(CaptureError::Sys {
            pid,
            call: "kcmp",
            errno: nix::errno::Errno::last(),
        });
    }
    Ok(r)
}

/// Whether descriptors `a` and `b` of `pid` are one open file description.
pub fn same_file(pid: i32, a: i32, b: i32) -> Result<bool, CaptureError> {
    Ok(kcmp(pid, KCMP_FILE, a as u64, b as u64)? == 0)
}

/// An epoll instance's registrations; each registered descriptor number
/// must still name the file it was registered for.
pub fn epoll(pid: i32, fd: i32, text: &str) -> Result<Vec<EpollRegistration>, CaptureError> {
    let mut out = Vec::new();
    for line in text.lines().filter(|l| l.starts_with("tfd:")) {
        let bad = || parse_error(pid, fd, format!("bad epoll line {line:?}"));
        let words: Vec<&str> = line.split_whitespace().collect();
        let value = |key: &str| {
            words
                .iter()
                .position(|w| *w == key)
                .and_then(|i| words.get(i + 1))
                .copied()
        };
        let tfd: i32 = value("tfd:").and_then(|v| v.parse().ok()).ok_or_else(bad)?;
        let events = value("events:")
            .and_then(|v| u32::from_str_radix(v, 16).ok())
            .ok_or_else(bad)?;
        let data = value("data:")
            .and_then(|v| u64::from_str_radix(v, 16).ok())
            .ok_or_else(bad)?;
        let slot = KcmpEpollSlot {
            efd: fd as u32,
            tfd: tfd as u32,
            toff: 0,
        };
        let names_it = match kcmp(pid, KCMP_EPOLL_TFD, tfd as u64, &slot as *const _ as u64) {
            Ok(r) => r == 0,
            // The descriptor was closed since (the registration lives on
            // while the file is open elsewhere).
            Err(CaptureError::Sys {
                errno: nix::errno::Errno::EBADF | nix::errno::Errno::ENOENT,
                ..
            }) => false,
            Err(e) => return Err(e),
        };
        if !names_it {
            return Err(CaptureError::refused(
                pid,
                super::Refusal::Descriptor {
                    fd,
                    what: format!("an epoll instance registering fd {tfd}"),
                    why: "that descriptor no longer names the file it was registered for (closed or reused); a copy could not make the same registration",
                },
            ));
        }
        out.push(EpollRegistration {
            fd: tfd,
            events,
            data,
        });
    }
    Ok(out)
}

/// Duplicates descriptors of the process (`pidfd_getfd`) to read objects
/// without changing them.
#[derive(Debug)]
pub struct Grabber {
    pid: i32,
    pidfd: Option<OwnedFd>,
}

impl Grabber {
    /// For `pid` (opened on first use).
    pub fn new(pid: i32) -> Grabber {
        Grabber { pid, pidfd: None }
    }

    fn sys(&self, call: &'static str) -> CaptureError {
        CaptureError::Sys {
            pid: self.pid,
            call,
            errno: nix::errno::Errno::last(),
        }
    }

    /// A descriptor of this process on the same open file as `fd` there.
    pub fn grab(&mut self, fd: i32) -> Result<OwnedFd, CaptureError> {
        if self.pidfd.is_none() {
            // SAFETY: pidfd_open returns a new descriptor or -1.
            let r = unsafe { libc::syscall(libc::SYS_pidfd_open, self.pid, 0) };
            if r < 0 {
                return Err(self.sys("pidfd_open"));
            }
            // SAFETY: a fresh descriptor nobody else owns.
            self.pidfd = Some(unsafe { OwnedFd::from_raw_fd(r as i32) });
        }
        let pidfd = self.pidfd.as_ref().expect("opened above").as_raw_fd();
        // SAFETY: pidfd_getfd returns a new descriptor (close-on-exec) or -1.
        let r = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd, fd, 0) };
        if r < 0 {
            return Err(self.sys("pidfd_getfd"));
        }
        // SAFETY: a fresh descriptor nobody else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(r as i32) })
    }
}

/// The bytes queued in the pipe whose read end is `read_end` (a duplicate),
/// copied with `tee` into a scratch pipe so the pipe keeps them, and the
/// pipe's capacity.
pub fn pipe_data(pid: i32, read_end: &OwnedFd) -> Result<(Vec<u8>, u32), CaptureError> {
    let sys = |call| CaptureError::Sys {
        pid,
        call,
        errno: nix::errno::Errno::last(),
    };
    // SAFETY: F_GETPIPE_SZ on a descriptor we own.
    let capacity = unsafe { libc::fcntl(read_end.as_raw_fd(), libc::F_GETPIPE_SZ) };
    if capacity < 0 {
        return Err(sys("F_GETPIPE_SZ"));
    }
    let (scratch_read, scratch_write) = nix::unistd::pipe2(
        nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK,
    )
    .map_err(|errno| CaptureError::Sys {
        pid,
        call: "pipe2",
        errno,
    })?;
    // SAFETY: F_SETPIPE_SZ on our scratch pipe (root may exceed the
    // unprivileged maximum, as the process's pipe may have).
    if unsafe { libc::fcntl(scratch_write.as_raw_fd(), libc::F_SETPIPE_SZ, capacity) } < 0 {
        return Err(sys("F_SETPIPE_SZ"));
    }
    // SAFETY: tee between two pipe descriptors we own; it copies without
    // consuming from `read_end`.
    let n = unsafe {
        libc::tee(
            read_end.as_raw_fd(),
            scratch_write.as_raw_fd(),
            capacity as usize,
            libc::SPLICE_F_NONBLOCK,
        )
    };
    let n = if n < 0 {
        match nix::errno::Errno::last() {
            // Empty, writers open.
            nix::errno::Errno::EAGAIN => 0,
            _ => return Err(sys("tee")),
        }
    } else {
        n as usize
    };
    let mut data = vec![0u8; n];
    let mut at = 0;
    while at < n {
        match nix::unistd::read(&scratch_read, &mut data[at..]) {
            Ok(0) => break,
            Ok(k) => at += k,
            Err(nix::errno::Errno::EINTR) => {}
            Err(errno) => {
                return Err(CaptureError::Sys {
                    pid,
                    call: "read (scratch pipe)",
                    errno,
                })
            }
        }
    }
    data.truncate(at);
    Ok((data, capacity as u32))
}

/// A memfd's content (read at offsets, the position untouched) and seals.
pub fn memfd(pid: i32, fd: i32, file: &OwnedFd) -> Result<(Vec<u8>, u32), CaptureError> {
    let sys = |call| CaptureError::Sys {
        pid,
        call,
        errno: nix::errno::Errno::last(),
    };
    let st = nix::sys::stat::fstat(file).map_err(|errno| CaptureError::Sys {
        pid,
        call: "fstat (memfd)",
        errno,
    })?;
    let size = st.st_size as usize;
    if size > MAX_COPIED {
        return Err(CaptureError::refused(
            pid,
            super::Refusal::Descriptor {
                fd,
                what: format!("a memfd of {size} bytes"),
                why: "thaw copies memfds of at most 64 MiB into a snapshot",
            },
        ));
    }
    let mut content = vec![0u8; size];
    let mut at = 0;
    while at < size {
        match nix::sys::uio::pread(file, &mut content[at..], at as i64) {
            Ok(0) => break,
            Ok(k) => at += k,
            Err(nix::errno::Errno::EINTR) => {}
            Err(errno) => {
                return Err(CaptureError::Sys {
                    pid,
                    call: "pread (memfd)",
                    errno,
                })
            }
        }
    }
    // SAFETY: F_GET_SEALS on a descriptor we own.
    let seals = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GET_SEALS) };
    if seals < 0 {
        return Err(sys("F_GET_SEALS"));
    }
    Ok((content, seals as u32))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_fdinfo_of_kernel_objects() {
        let ev = "pos:\t0\nflags:\t04002\nmnt_id:\t17\nino:\t1038\neventfd-count:                5\neventfd-id: 1\neventfd-semaphore: 1\n";
        assert_eq!(
            eventfd(1, 3, ev).unwrap(),
            FdKind::Eventfd {
                count: 5,
                semaphore: true
            }
        );
        let tfd = "clockid: 1\nticks: 3\nsettime flags: 00\nit_value: (0, 49856123)\nit_interval: (1, 500)\n";
        match timerfd_from(1, 3, tfd).unwrap() {
            FdKind::Timerfd(t) => {
                assert_eq!(t.clock, 1);
                assert_eq!(t.ticks, 3);
                assert_eq!(t.remaining_ns, 49_856_123);
                assert_eq!(t.interval_ns, 1_000_000_500);
                assert_eq!(t.deadline_ns, None);
            }
            other => panic!("{other:?}"),
        }
        let sig = "pos:\t0\nsigmask:\t0000000000004000\n";
        assert_eq!(
            signalfd(1, 3, sig).unwrap(),
            FdKind::Signalfd { mask: 0x4000 }
        );
    }
}
