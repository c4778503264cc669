//! The processes a restore starts: a tiny init in a new pid namespace, and
//! under it the stub that becomes the copy, with the saved pid.
//!
//! ```text
//! restorer ──clone3(CLONE_NEWPID | CLONE_NEWIPC)──> init (pid 1 of a new
//!   pid namespace, in an IPC namespace of its own: System V objects the
//!   copy makes, `restore::sysv`, are its own)
//!   init: arrange fds (targets at their numbers, the rest closed)
//!   init: with time offsets, unshare(CLONE_NEWTIME) and write them to
//!         /proc/self/timens_offsets: the stub is the first to enter
//!         (`crate::sandbox::timens`)
//!   init ──clone3(set_tid = [saved pid], CLONE_PIDFD)──> stub
//!   stub: close the report socket, then pause() forever
//!   init: send (result, pidfd of the stub) to the restorer over a
//!         SOCK_SEQPACKET socket (SCM_RIGHTS), close every fd, reap children;
//!         when the stub (the copy) ends, exit with its status
//!         (exit code, or 128 + signal)
//! ```
//!
//! The restorer may be multi-threaded, so everything after the first
//! `clone3` in the children is raw system calls on memory prepared before
//! it: no allocation, no locks, no Rust runtime.
//!
//! No parent-death signal: Linux sends it when the *thread* that made the
//! child exits, and a restorer's thread (a blocking pool's) may exit while
//! its copies should live on. A copy outlives a restorer that dies; the
//! owner of [`super::RestoredChild`] kills it on drop.
//!
//! The restorer learns the stub's pid in its own namespace from the pidfd's
//! `/proc/self/fdinfo` (`Pid:`): the pid namespace of the copy is not the
//! restorer's.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// Why the init or the stub could not be started.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// A call of the restorer failed.
    #[error("{call} failed: {source}")]
    Sys {
        /// The call.
        call: &'static str,
        /// Why.
        source: std::io::Error,
    },
    /// The init reported a failure (step and errno).
    #[error("the restore init failed at {step}: {source}")]
    Init {
        /// Which step of the init.
        step: &'static str,
        /// Why.
        source: std::io::Error,
    },
    /// The saved pid cannot be given to a stub.
    #[error("pid {0} cannot be restored (pid 1 is the restore init's)")]
    BadPid(i32),
}

/// The started init and stub.
#[derive(Debug)]
pub struct Spawned {
    /// The init, a child of the restorer (pid in the restorer's namespace).
    pub init_pid: i32,
    /// The stub, in the restorer's pid namespace.
    pub stub_pid: i32,
    /// A pidfd of the stub.
    pub stub_pidfd: OwnedFd,
}

/// Init's failure steps, reported as a negative code `-(step << 16 | errno)`.
const STEPS: [&str; 7] = [
    "dup (temporary)",
    "dup3 (target)",
    "close_range",
    "clone3",
    "unshare (time namespace)",
    "write /proc/self/timens_offsets",
    "?",
];

/// What init needs to give the stub a time namespace, made before the
/// clone.
struct TimeSetup {
    /// `/proc/self/timens_offsets`, NUL-terminated.
    path: std::ffi::CString,
    /// The offsets' text.
    text: Vec<u8>,
}

/// Raw `syscall`, returning the kernel's value or `-errno`.
///
/// # Safety
/// The arguments must be valid for system call `nr`.
unsafe fn raw(nr: libc::c_long, a: u64, b: u64, c: u64, d: u64) -> i64 {
    // SAFETY: forwarded from the caller.
    let r = unsafe { libc::syscall(nr, a, b, c, d) };
    if r < 0 {
        // SAFETY: reading errno of this thread.
        -(unsafe { *libc::__errno_location() } as i64)
    } else {
        r
    }
}

/// The fd layout init sets up: `(source in the restorer, number in the copy)`.
#[derive(Debug)]
struct Layout {
    moves: Vec<(RawFd, RawFd)>,
    /// Temporary numbers, one per move, above every source and target.
    tmp_base: RawFd,
    /// Where the report socket goes (above every target and temporary).
    report: RawFd,
    /// Ranges `[first, last]` to close: everything but the targets and the
    /// report socket.
    close: Vec<(u32, u32)>,
}

impl Layout {
    fn new(moves: &[(RawFd, RawFd)], report_src: RawFd) -> Layout {
        let highest = moves
            .iter()
            .flat_map(|&(s, d)| [s, d])
            .chain([report_src])
            .max()
            .unwrap_or(0);
        let tmp_base = highest + 1;
        let report = tmp_base + moves.len() as RawFd;
        let mut keep: Vec<u32> = moves.iter().map(|&(_, d)| d as u32).collect();
        keep.push(report as u32);
        keep.sort_unstable();
        keep.dedup();
        let mut close = Vec::new();
        let mut next = 0u32;
        for &k in &keep {
            if k > next {
                close.push((next, k - 1));
            }
            next = k + 1;
        }
        close.push((next, u32::MAX));
        Layout {
            moves: moves.to_vec(),
            tmp_base,
            report,
            close,
        }
    }
}

/// What init sends back: the stub's pid in the new namespace, or a failure.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct Report {
    value: i64,
}

/// Starts init and the stub with pid `ns_pid`; the stub's fd table is
/// exactly `moves` (each source fd of the restorer at its target number).
pub fn spawn(ns_pid: i32, moves: &[(RawFd, RawFd)]) -> Result<Spawned, SpawnError> {
    spawn_with_time(ns_pid, moves, None)
}

/// [`spawn`] with the stub (and so the copy) in a new time namespace whose
/// clocks are the host's plus `time_offsets` (`None`: the host's own).
pub fn spawn_with_time(
    ns_pid: i32,
    moves: &[(RawFd, RawFd)],
    time_offsets: Option<&snapshotter::state::Clocks>,
) -> Result<Spawned, SpawnError> {
    if ns_pid <= 1 {
        return Err(SpawnError::BadPid(ns_pid));
    }
    let sys = |call| move |source| SpawnError::Sys { call, source };
    let (parent_sock, child_sock) = nix::sys::socket::socketpair(
        nix::sys::socket::AddressFamily::Unix,
        nix::sys::socket::SockType::SeqPacket,
        None,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
    )
    .map_err(|e| sys("socketpair")(e.into()))?;
    let layout = Layout::new(moves, child_sock.as_raw_fd());
    let set_tid: [libc::pid_t; 1] = [ns_pid];
    let mut stub_pidfd: libc::c_int = -1;
    // The kernel writes the pidfd through this pointer inside init; init
    // reads it back through the same pointer (volatile), never through a
    // reference the compiler could assume unchanged.
    let pidfd_ptr: *mut libc::c_int = &mut stub_pidfd;
    // Everything the children use is prepared here, before the clone.
    let mut stub_args: libc::clone_args = zeroed_args();
    stub_args.flags = libc::CLONE_PIDFD as u64;
    stub_args.pidfd = pidfd_ptr as u64;
    stub_args.exit_signal = libc::SIGCHLD as u64;
    stub_args.set_tid = set_tid.as_ptr() as u64;
    stub_args.set_tid_size = 1;
    let mut cmsg_buf = [0u64; 8];
    let time = time_offsets.map(|o| TimeSetup {
        path: std::ffi::CString::new(crate::sandbox::timens::OFFSETS_PATH).expect("no NUL"),
        text: crate::sandbox::timens::offsets_text(o).into_bytes(),
    });
    let mut init_args: libc::clone_args = zeroed_args();
    init_args.flags = (libc::CLONE_NEWPID | libc::CLONE_NEWIPC) as u64;
    init_args.exit_signal = libc::SIGCHLD as u64;

    // SAFETY: clone3 without CLONE_VM: the child gets a copy of this
    // thread's memory and continues on a copy of its stack, like fork. It
    // only runs `init_main`, which makes raw system calls on memory prepared
    // above and never returns.
    let pid = unsafe {
        raw(
            libc::SYS_clone3,
            &mut init_args as *mut libc::clone_args as u64,
            std::mem::size_of::<libc::clone_args>() as u64,
            0,
            0,
        )
    };
    if pid == 0 {
        // SAFETY: in the child; see above.
        unsafe {
            init_main(
                &layout,
                child_sock.as_raw_fd(),
                time.as_ref(),
                &mut stub_args,
                pidfd_ptr,
                &mut cmsg_buf,
            )
        }
    }
    if pid < 0 {
        return Err(sys("clone3 (init)")(std::io::Error::from_raw_os_error(
            -pid as i32,
        )));
    }
    let init_pid = pid as i32;
    drop(child_sock);
    let received = receive(&parent_sock);
    let (report, pidfd) = match received {
        Ok(r) => r,
        Err(e) => {
            reap(init_pid);
            return Err(e);
        }
    };
    if report.value < 0 {
        reap(init_pid);
        let code = -report.value;
        let step = STEPS[((code >> 16) as usize).min(STEPS.len() - 1)];
        return Err(SpawnError::Init {
            step,
            source: std::io::Error::from_raw_os_error((code & 0xffff) as i32),
        });
    }
    let Some(stub_pidfd) = pidfd else {
        reap(init_pid);
        return Err(SpawnError::Init {
            step: "send pidfd",
            source: std::io::Error::from_raw_os_error(libc::EPROTO),
        });
    };
    let stub_pid = match pid_of(&stub_pidfd) {
        Ok(p) => p,
        Err(e) => {
            reap(init_pid);
            return Err(e);
        }
    };
    Ok(Spawned {
        init_pid,
        stub_pid,
        stub_pidfd,
    })
}

fn zeroed_args() -> libc::clone_args {
    // SAFETY: clone_args is plain integers; all-zero is a valid value.
    unsafe { std::mem::zeroed() }
}

/// Kills init (which takes the whole namespace with it) and waits for it.
pub fn reap(init_pid: i32) {
    // SAFETY: plain kill and waitpid of our own child.
    unsafe {
        libc::kill(init_pid, libc::SIGKILL);
        let mut status = 0;
        while libc::waitpid(init_pid, &mut status, 0) < 0
            && *libc::__errno_location() == libc::EINTR
        {}
    }
}

/// Receives init's report and the stub's pidfd.
fn receive(sock: &OwnedFd) -> Result<(Report, Option<OwnedFd>), SpawnError> {
    let mut report = Report::default();
    let mut cmsg = [0u64; 8];
    let mut iov = libc::iovec {
        iov_base: (&mut report as *mut Report).cast(),
        iov_len: std::mem::size_of::<Report>(),
    };
    // SAFETY: msghdr is plain data; zero is a valid start.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cmsg.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&cmsg);
    let n = loop {
        // SAFETY: msg points at live buffers of the sizes it declares.
        let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if n < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
            continue;
        }
        break n;
    };
    if n < 0 {
        return Err(SpawnError::Sys {
            call: "recvmsg (init report)",
            source: std::io::Error::last_os_error(),
        });
    }
    if n as usize != std::mem::size_of::<Report>() {
        return Err(SpawnError::Init {
            step: "report",
            source: std::io::Error::from_raw_os_error(libc::EPIPE),
        });
    }
    let mut fd = None;
    // SAFETY: the CMSG macros walk the control buffer recvmsg filled in,
    // within msg_controllen.
    unsafe {
        let c = libc::CMSG_FIRSTHDR(&msg);
        if !c.is_null() && (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS
        {
            let raw = std::ptr::read_unaligned(libc::CMSG_DATA(c) as *const libc::c_int);
            fd = Some(OwnedFd::from_raw_fd(raw));
        }
    }
    Ok((report, fd))
}

/// The pid (in this namespace) a pidfd refers to.
fn pid_of(pidfd: &OwnedFd) -> Result<i32, SpawnError> {
    let path = format!("/proc/self/fdinfo/{}", pidfd.as_raw_fd());
    let text = std::fs::read_to_string(&path).map_err(|source| SpawnError::Sys {
        call: "read pidfd fdinfo",
        source,
    })?;
    text.lines()
        .find_map(|l| l.strip_prefix("Pid:"))
        .and_then(|v| v.trim().parse::<i32>().ok())
        .filter(|&p| p > 0)
        .ok_or(SpawnError::Init {
            step: "stub pid",
            source: std::io::Error::from_raw_os_error(libc::ESRCH),
        })
}

/// The init: see the module doc. Never returns.
///
/// # Safety
/// Only in the child of the first `clone3`; every pointer refers to memory
/// prepared before it (`stub_pidfd` is written by the kernel's clone3).
unsafe fn init_main(
    layout: &Layout,
    sock: RawFd,
    time: Option<&TimeSetup>,
    stub_args: &mut libc::clone_args,
    stub_pidfd: *const libc::c_int,
    cmsg_buf: &mut [u64; 8],
) -> ! {
    // SAFETY: raw system calls on the prepared memory (see the caller).
    unsafe {
        let fail = |step: i64, err: i64| -> i64 { -((step << 16) | (-err & 0xffff)) };
        let mut result: i64 = 0;
        for (i, &(src, _)) in layout.moves.iter().enumerate() {
            let r = raw(
                libc::SYS_dup3,
                src as u64,
                (layout.tmp_base + i as RawFd) as u64,
                0,
                0,
            );
            if r < 0 {
                result = fail(0, r);
                break;
            }
        }
        let r = raw(libc::SYS_dup3, sock as u64, layout.report as u64, 0, 0);
        if result == 0 && r < 0 {
            result = fail(0, r);
        }
        if result == 0 {
            for (i, &(_, dst)) in layout.moves.iter().enumerate() {
                let r = raw(
                    libc::SYS_dup3,
                    (layout.tmp_base + i as RawFd) as u64,
                    dst as u64,
                    0,
                    0,
                );
                if r < 0 {
                    result = fail(1, r);
                    break;
                }
            }
        }
        if result == 0 {
            for &(first, last) in &layout.close {
                let r = raw(libc::SYS_close_range, first as u64, last as u64, 0, 0);
                if r < 0 {
                    result = fail(2, r);
                    break;
                }
            }
        }
        let report = if r < 0 { sock } else { layout.report };
        if let (0, Some(time)) = (result, time) {
            let r = raw(libc::SYS_unshare, libc::CLONE_NEWTIME as u64, 0, 0, 0);
            if r < 0 {
                result = fail(4, r);
            } else {
                let fd = raw(
                    libc::SYS_openat,
                    libc::AT_FDCWD as u64,
                    time.path.as_ptr() as u64,
                    (libc::O_WRONLY | libc::O_CLOEXEC) as u64,
                    0,
                );
                let w = if fd < 0 {
                    fd
                } else {
                    let w = raw(
                        libc::SYS_write,
                        fd as u64,
                        time.text.as_ptr() as u64,
                        time.text.len() as u64,
                        0,
                    );
                    raw(libc::SYS_close, fd as u64, 0, 0, 0);
                    w
                };
                if w < 0 {
                    result = fail(5, w);
                }
            }
        }
        if result == 0 {
            let pid = raw(
                libc::SYS_clone3,
                stub_args as *mut libc::clone_args as u64,
                std::mem::size_of::<libc::clone_args>() as u64,
                0,
                0,
            );
            if pid == 0 {
                stub_main(layout.report);
            }
            result = if pid < 0 { fail(3, pid) } else { pid };
        }
        let stub = result;
        send(
            report,
            result,
            if stub > 0 { *stub_pidfd } else { -1 },
            cmsg_buf,
        );
        raw(libc::SYS_close_range, 0, u32::MAX as u64, 0, 0);
        if stub <= 0 {
            raw(libc::SYS_exit_group, 127, 0, 0, 0);
        }
        loop {
            let mut status: libc::c_int = 0;
            let r = raw(
                libc::SYS_wait4,
                u64::MAX, // -1: any child
                &mut status as *mut libc::c_int as u64,
                libc::__WALL as u64,
                0,
            );
            if r == stub {
                let code = if libc::WIFEXITED(status) {
                    libc::WEXITSTATUS(status)
                } else if libc::WIFSIGNALED(status) {
                    128 + libc::WTERMSIG(status)
                } else {
                    continue;
                };
                raw(libc::SYS_exit_group, code as u64, 0, 0, 0);
            }
            if r == -(libc::ECHILD as i64) {
                raw(libc::SYS_exit_group, 255, 0, 0, 0);
            }
        }
    }
}

/// Sends `value` and, if `fd >= 0`, the fd over `sock`.
///
/// # Safety
/// Raw system calls only; `cmsg_buf` is prepared memory.
unsafe fn send(sock: RawFd, value: i64, fd: RawFd, cmsg_buf: &mut [u64; 8]) {
    let mut report = Report { value };
    let mut iov = libc::iovec {
        iov_base: (&mut report as *mut Report).cast(),
        iov_len: std::mem::size_of::<Report>(),
    };
    // SAFETY: plain data, built on the stack; the CMSG macros stay inside
    // `cmsg_buf` (CMSG_SPACE of one int is 24 bytes of its 64).
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        if fd >= 0 {
            msg.msg_control = cmsg_buf.as_mut_ptr().cast();
            msg.msg_controllen =
                libc::CMSG_SPACE(std::mem::size_of::<libc::c_int>() as u32) as usize;
            let c = libc::CMSG_FIRSTHDR(&msg);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<libc::c_int>() as u32) as usize;
            std::ptr::write_unaligned(libc::CMSG_DATA(c) as *mut libc::c_int, fd);
        }
        raw(
            libc::SYS_sendmsg,
            sock as u64,
            &msg as *const libc::msghdr as u64,
            libc::MSG_NOSIGNAL as u64,
            0,
        );
    }
}

/// The stub: waits to be seized and turned into the copy. Never returns.
///
/// # Safety
/// Only in the child of the second `clone3`.
unsafe fn stub_main(report: RawFd) -> ! {
    // SAFETY: raw system calls without pointers.
    unsafe {
        raw(libc::SYS_close, report as u64, 0, 0, 0);
        loop {
            raw(libc::SYS_pause, 0, 0, 0, 0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_closes_everything_but_targets_and_report() {
        let l = Layout::new(&[(7, 0), (9, 1), (12, 5)], 20);
        assert_eq!(l.tmp_base, 21);
        assert_eq!(l.report, 24);
        assert_eq!(l.close, vec![(2, 4), (6, 23), (25, u32::MAX)]);
    }
}
