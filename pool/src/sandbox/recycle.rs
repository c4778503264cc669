//! Recycling a stub sandbox: the sandbox of a torn-down copy becomes the
//! next spare of the same function version instead of being destroyed.
//!
//! Making a sandbox and tearing it down (outer init, pid 1, namespaces,
//! root mounts, cgroups; kill, wait, rmdir, namespace destruction) costs
//! a few milliseconds of CPU; a forced cold start used to pay it twice, for
//! its own sandbox and for the spare made to replace it. A recyclable
//! sandbox's pid 1 survives its copy instead and, on the server's order,
//! makes the sandbox as it was before the copy ran:
//!
//! ```text
//! server                                   pid 1 (recyclable stub sandbox)
//!   order 'R' on the keeper socket  ───>   kill(-1, SIGKILL), reap until no
//!   (JSON: fd numbers, files to open;      child is left (ECHILD: none in the
//!    SCM_RIGHTS: stdout, stderr, fd 3,     namespace but pid 1)
//!    fd 4, status, the copy's files)       close the userfaultfds it held
//!                                          mount table == the one it read at
//!                                            the last reset (/tmp's mount ID
//!                                            and device aside: `comparable`)
//!                                          a fresh tmpfs on /tmp
//!                                          unshare(CLONE_NEWIPC): System V
//!                                            objects and POSIX queues gone
//!                                          host name set again
//!                                          ns_last_pid = 1, fork: the new
//!                                            stub is pid 2 again, its fds
//!                                            placed as at a launch
//!   <─── "ok" (or "error: ...", then pid 1 exits: the sandbox is destroyed)
//!   the stub's status pipe (open_files failures), as at a launch
//!   the network namespace checked as empty (netns_pool::check_clean)
//!   the cgroup's baselines recorded (OOM kills, peak memory)
//! ```
//!
//! Only the same version's next copy ever gets a recycled sandbox (the
//! pool checks the snapshot id; limits, code, network mode are the
//! version's). Outbound sandboxes are never recycled. A sandbox whose reset
//! fails, or finds anything unexpected, is destroyed and logged.
//! `THAW_SANDBOX_RECYCLE=0` turns recycling off.
//!
//! The protocol on the keeper socket (`SOCK_SEQPACKET`, one message each):
//! tag byte `0` (a `uffd` copy's userfaultfds, held by pid 1: see
//! `init::hold_sent_descriptor`), tag [`ORDER`] followed by the JSON
//! [`Order`] and the first descriptors, tag [`MORE`] followed by nothing
//! and more descriptors (at most [`FDS_PER_MESSAGE`] per message); pid 1
//! answers an order with `ok` or `error: <reason>`.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::open_files::OpenFile;
use super::STATUS_FD;

/// Environment variable turning recycling off (`0`).
pub const RECYCLE_ENV: &str = "THAW_SANDBOX_RECYCLE";

/// Whether stub sandboxes are made recyclable in this process.
pub fn enabled() -> bool {
    std::env::var_os(RECYCLE_ENV).is_none_or(|v| v != "0")
}

/// Tag of an order message.
const ORDER: u8 = b'R';
/// Tag of a message carrying more of an order's descriptors.
const MORE: u8 = b'F';
/// Descriptors per message (the kernel's `SCM_MAX_FD` is 253).
const FDS_PER_MESSAGE: usize = 240;
/// Longest order message (the JSON of the files to open).
const MAX_ORDER: usize = 256 * 1024;

/// The fixed numbers the first descriptors of an order go to: stdout,
/// stderr, requests (fd 3), responses (fd 4), status. The copy's own
/// descriptors follow, at [`Order::keep_fds`].
const FIXED: [RawFd; 5] = [1, 2, 3, 4, STATUS_FD];

/// What the new stub gets besides its fixed descriptors.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Order {
    /// The numbers of the descriptors sent after the fixed ones, in order.
    keep_fds: Vec<i32>,
    /// Files the stub opens itself, as at a launch.
    open_files: Vec<OpenFile>,
    /// pid 1's bookkeeping the old way ([`LEAN_ENV`]`=0`): the mount table
    /// read again after `/tmp` is replaced, a zeroed receive buffer per
    /// message.
    #[serde(default)]
    old_way: bool,
}

/// Environment variable (server side) that turns pid 1's leaner
/// bookkeeping off (`0`): one mount-table read per recycle instead of two,
/// one receive buffer for pid 1's life instead of a zeroed one per message.
pub const LEAN_ENV: &str = "THAW_RECYCLE_LEAN";

fn lean() -> bool {
    std::env::var_os(LEAN_ENV).is_none_or(|v| v != "0")
}

/// Errors of recycling a sandbox (it is destroyed then).
#[derive(Debug, thiserror::Error)]
pub enum RecycleError {
    /// The sandbox was not made recyclable.
    #[error("the sandbox is not recyclable")]
    NotRecyclable,
    /// Talking to pid 1 failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// pid 1 did not answer in time.
    #[error("pid 1 did not answer within {0:?}")]
    Timeout(Duration),
    /// pid 1 found something it could not reset, or failed to.
    #[error("reset refused: {0}")]
    Refused(String),
    /// The new stub failed to set itself up.
    #[error("the new stub failed: {0}")]
    Stub(String),
    /// The network namespace is not as a fresh one.
    #[error("network namespace not clean: {0}")]
    Network(String),
}

fn io(what: &'static str) -> impl FnOnce(nix::Error) -> RecycleError {
    move |e| RecycleError::Io {
        what,
        source: e.into(),
    }
}

/// The server's side: sends pid 1 the order to reset the sandbox and start
/// a new stub with `fixed` (stdout, stderr, fd 3, fd 4, status: see
/// [`FIXED`]) and `extra` at their numbers, and waits (blocking, at most
/// `wait`) for its answer.
pub(super) fn order(
    keeper: BorrowedFd<'_>,
    fixed: [BorrowedFd<'_>; 5],
    extra: &[(BorrowedFd<'_>, i32)],
    open_files: &[OpenFile],
    wait: Duration,
) -> Result<(), RecycleError> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    let order = Order {
        keep_fds: extra.iter().map(|(_, n)| *n).collect(),
        open_files: open_files.to_vec(),
        old_way: !lean(),
    };
    let mut first = vec![ORDER];
    first.extend(serde_json::to_vec(&order).expect("order serialises"));
    if first.len() > MAX_ORDER {
        return Err(RecycleError::Refused("order too long".into()));
    }
    let fds: Vec<RawFd> = fixed
        .iter()
        .map(|f| f.as_raw_fd())
        .chain(extra.iter().map(|(f, _)| f.as_raw_fd()))
        .collect();
    for (i, chunk) in fds.chunks(FDS_PER_MESSAGE).enumerate() {
        let more = [MORE];
        let payload: &[u8] = if i == 0 { &first } else { &more };
        let iov = [std::io::IoSlice::new(payload)];
        sendmsg::<()>(
            keeper.as_raw_fd(),
            &iov,
            &[ControlMessage::ScmRights(chunk)],
            MsgFlags::MSG_NOSIGNAL,
            None,
        )
        .map_err(io("send the recycle order to pid 1"))?;
    }
    // The answer.
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let mut fds = [PollFd::new(keeper, PollFlags::POLLIN)];
    let ms = PollTimeout::try_from(wait).unwrap_or(PollTimeout::MAX);
    loop {
        match poll(&mut fds, ms) {
            Ok(0) => return Err(RecycleError::Timeout(wait)),
            Ok(_) => break,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(io("wait for pid 1's answer")(e)),
        }
    }
    let mut answer = [0u8; 4096];
    let n = nix::sys::socket::recv(keeper.as_raw_fd(), &mut answer, MsgFlags::MSG_DONTWAIT)
        .map_err(io("read pid 1's answer"))?;
    match &answer[..n] {
        b"ok" => Ok(()),
        [] => Err(RecycleError::Refused("pid 1 exited".into())),
        other => Err(RecycleError::Refused(
            String::from_utf8_lossy(other)
                .trim_start_matches("error: ")
                .to_string(),
        )),
    }
}

/// A sandbox's mount table (`/proc/self/mountinfo`) as a recycle compares
/// it: every line as it is but the `/tmp` mount's, which is put last
/// without its mount ID and device (each recycle mounts a fresh tmpfs
/// there, with new ones). Exactly one mount at `/tmp`, or an error.
fn comparable(table: &str) -> Result<String, String> {
    let mut rest = String::with_capacity(table.len());
    let mut tmp = None;
    for line in table.lines() {
        // ID, parent ID, major:minor, then root, mount point, ...
        let mut fields = line.splitn(4, ' ');
        let (_id, parent, _dev, after) = (
            fields.next(),
            fields.next().unwrap_or(""),
            fields.next(),
            fields.next().unwrap_or(""),
        );
        if after.split(' ').nth(1) == Some("/tmp") {
            if tmp.is_some() {
                return Err("two mounts at /tmp".into());
            }
            tmp = Some(format!("/tmp: {parent} {after}"));
        } else {
            rest.push_str(line);
            rest.push('\n');
        }
    }
    rest.push_str(&tmp.ok_or("no mount at /tmp")?);
    Ok(rest)
}

/// pid 1's side (see the module docs).
pub(super) mod inside {
    use super::*;
    use nix::errno::Errno;
    use nix::sys::signal::{SigSet, Signal};
    use nix::sys::signalfd::{SfdFlags, SignalFd};
    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
    use nix::unistd::{fork, ForkResult, Pid};

    use crate::sandbox::{SandboxSpec, KEEPER_FD};

    /// What pid 1 of a recyclable stub sandbox does once it forked the
    /// first stub (`child`): serves the keeper socket (userfaultfds to
    /// hold, recycle orders) and reaps. Returns the exit code pid 1 exits
    /// with: the stub's (or copy's) own when it ends without an order, as
    /// in every sandbox.
    pub(in crate::sandbox) fn serve(spec: &SandboxSpec, first: Pid) -> i32 {
        let mut child = first;
        // pid 1's own output goes nowhere: the log pipes are the copy's,
        // and a recycled sandbox's next copy gets new ones.
        to_dev_null(&[1, 2]);
        let mut mask = SigSet::empty();
        mask.add(Signal::SIGCHLD);
        if mask.thread_block().is_err() {
            return crate::sandbox::init::wait_for_child(child);
        }
        let Ok(sigfd) = SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
        else {
            return crate::sandbox::init::wait_for_child(child);
        };
        let mut template = mount_table().unwrap_or_default();
        let mut held: Vec<OwnedFd> = Vec::new();
        // One receive buffer for pid 1's life: allocated (untouched, so
        // unmapped until written) once, not zeroed again per message.
        let mut buf = vec![0u8; MAX_ORDER];
        // The last order's [`Order::old_way`]: a zeroed buffer per message.
        let mut old_way = false;
        // SAFETY: KEEPER_FD was placed by the launcher for stub sandboxes;
        // pid 1 keeps it open for its whole life.
        let keeper = unsafe { BorrowedFd::borrow_raw(KEEPER_FD) };
        loop {
            // Children that ended before SIGCHLD was blocked, or since.
            if let Some(code) = reap_ready(child) {
                return code;
            }
            use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
            let mut fds = [
                PollFd::new(keeper, PollFlags::POLLIN),
                PollFd::new(sigfd.as_fd(), PollFlags::POLLIN),
            ];
            match poll(&mut fds, PollTimeout::NONE) {
                Err(Errno::EINTR) => continue,
                Err(_) => return crate::sandbox::init::wait_for_child(child),
                Ok(_) => {}
            }
            if fds[1].revents().is_some_and(|r| !r.is_empty()) {
                while let Ok(Some(_)) = sigfd.read_signal() {}
            }
            if fds[0].revents().is_none_or(|r| r.is_empty()) {
                continue;
            }
            if old_way {
                buf = vec![0u8; MAX_ORDER];
            }
            let (tag, payload, fds) = match receive(keeper, &mut buf) {
                Ok(Some(message)) => message,
                // The server closed its end (the sandbox is being
                // destroyed, or the server died): wait as any sandbox.
                Ok(None) | Err(_) => return crate::sandbox::init::wait_for_child(child),
            };
            match tag {
                ORDER => {
                    let result =
                        collect(keeper, &mut buf, &payload, fds).and_then(|(order, fds)| {
                            old_way = order.old_way;
                            recycle(spec, &mut held, &mut template, order, fds)
                        });
                    match result {
                        Ok(stub) => {
                            child = stub;
                            let _ = nix::sys::socket::send(
                                KEEPER_FD,
                                b"ok",
                                nix::sys::socket::MsgFlags::MSG_NOSIGNAL,
                            );
                        }
                        Err(reason) => {
                            let _ = nix::sys::socket::send(
                                KEEPER_FD,
                                format!("error: {reason}").as_bytes(),
                                nix::sys::socket::MsgFlags::MSG_NOSIGNAL,
                            );
                            kill_all_and_reap();
                            return crate::sandbox::init::SETUP_FAILED;
                        }
                    }
                }
                // A copy's userfaultfds: held until the copy is gone.
                _ => held.extend(fds),
            }
        }
    }

    /// Reaps every child that has ended; returns `child`'s exit code if it
    /// was among them.
    fn reap_ready(child: Pid) -> Option<i32> {
        loop {
            match waitpid(None::<Pid>, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) if pid == child => return Some(code),
                Ok(WaitStatus::Signaled(pid, sig, _)) if pid == child => {
                    return Some(128 + sig as i32)
                }
                Ok(WaitStatus::StillAlive) | Err(_) => return None,
                Ok(_) => continue,
            }
        }
    }

    /// One message from the server: its tag, the rest of its bytes, the
    /// descriptors it carried. `None`: the server closed its end.
    #[allow(clippy::type_complexity)]
    fn receive(
        keeper: BorrowedFd<'_>,
        buf: &mut [u8],
    ) -> Result<Option<(u8, Vec<u8>, Vec<OwnedFd>)>, String> {
        use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
        use std::os::fd::FromRawFd;
        let mut iov = [std::io::IoSliceMut::new(buf)];
        let mut space = nix::cmsg_space!([RawFd; 253]);
        let msg = recvmsg::<()>(
            keeper.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )
        .map_err(|e| format!("receive: {e}"))?;
        let mut fds = Vec::new();
        for cmsg in msg.cmsgs().map_err(|e| format!("cmsgs: {e}"))? {
            if let ControlMessageOwned::ScmRights(received) = cmsg {
                // SAFETY: descriptors the kernel just installed for us.
                fds.extend(
                    received
                        .into_iter()
                        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                );
            }
        }
        let n = msg.bytes;
        if n == 0 && fds.is_empty() {
            return Ok(None);
        }
        // The buffer is reused: only its first `n` bytes are this message.
        Ok(Some((
            if n > 0 { buf[0] } else { 0 },
            buf[1..n.max(1)].to_vec(),
            fds,
        )))
    }

    /// Reads the order and the rest of its descriptors.
    fn collect(
        keeper: BorrowedFd<'_>,
        buf: &mut [u8],
        payload: &[u8],
        mut fds: Vec<OwnedFd>,
    ) -> Result<(Order, Vec<OwnedFd>), String> {
        let order: Order =
            serde_json::from_slice(payload).map_err(|e| format!("parse the order: {e}"))?;
        let want = FIXED.len() + order.keep_fds.len();
        while fds.len() < want {
            match receive(keeper, buf)? {
                Some((MORE, _, more)) if !more.is_empty() => fds.extend(more),
                _ => return Err("the order's descriptors are missing".into()),
            }
        }
        if fds.len() != want {
            return Err(format!("{} descriptors for {want} numbers", fds.len()));
        }
        Ok((order, fds))
    }

    /// Kills every other process of the namespace and reaps them all.
    fn kill_all_and_reap() {
        for _ in 0..3 {
            // SAFETY: kill(-1) from pid 1 signals every process of its pid
            // namespace but itself.
            unsafe { libc::kill(-1, libc::SIGKILL) };
            while let Ok(_) | Err(Errno::EINTR) = waitpid(None::<Pid>, None) {}
        }
    }

    /// The sandbox's mount table as pid 1 sees it.
    fn mount_table() -> Result<String, String> {
        std::fs::read_to_string("/proc/self/mountinfo").map_err(|e| format!("read mountinfo: {e}"))
    }

    fn to_dev_null(fds: &[RawFd]) {
        if let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") {
            for &fd in fds {
                // SAFETY: dup2 onto a number this process owns.
                unsafe { libc::dup2(null.as_raw_fd(), fd) };
            }
        }
    }

    /// Resets the sandbox and forks the next stub; returns its pid (2).
    fn recycle(
        spec: &SandboxSpec,
        held: &mut Vec<OwnedFd>,
        template: &mut String,
        order: Order,
        fds: Vec<OwnedFd>,
    ) -> Result<Pid, String> {
        kill_all_and_reap();
        // The copy is gone: its userfaultfds may go.
        held.clear();
        let now = mount_table()?;
        if order.old_way {
            if &now != template {
                return Err("the mount table changed".into());
            }
            crate::sandbox::mounts::fresh_tmp(spec)?;
            *template = mount_table()?;
        } else {
            // The fresh `/tmp` below gets a new mount ID and device, which
            // `comparable` leaves out: the table read now is the next
            // recycle's template, no second read.
            if super::comparable(&now)? != super::comparable(template)? {
                return Err("the mount table changed".into());
            }
            crate::sandbox::mounts::fresh_tmp(spec)?;
            *template = now;
        }
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWIPC)
            .map_err(|e| format!("unshare ipc: {e}"))?;
        nix::unistd::sethostname(&spec.hostname).map_err(|e| format!("set host name: {e}"))?;
        // The next pid allocated in the namespace is 2: the stub's, as in
        // every sandbox (the copy keeps its snapshot's pid).
        std::fs::write("/proc/sys/kernel/ns_last_pid", "1")
            .map_err(|e| format!("set ns_last_pid: {e}"))?;
        let mut next = spec.clone();
        next.keep_fds = order.keep_fds.clone();
        next.open_files = order.open_files;
        let targets: Vec<RawFd> = FIXED.iter().copied().chain(order.keep_fds).collect();
        let above = targets.iter().copied().max().unwrap_or(0) + 1;
        // SAFETY: pid 1 is single-threaded.
        match unsafe { fork() }.map_err(|e| format!("fork the stub: {e}"))? {
            ForkResult::Child => {
                place(&fds, &targets, above);
                let mut mask = SigSet::empty();
                mask.add(Signal::SIGCHLD);
                let _ = mask.thread_unblock();
                // SAFETY: back to the default disposition of the signal
                // pid 1 handles (the stub must not inherit the handler).
                unsafe { libc::signal(libc::SIGUSR1, libc::SIG_DFL) };
                crate::sandbox::init::run_stub(&next)
            }
            ForkResult::Parent { child } => {
                drop(fds);
                if child.as_raw() != 2 {
                    // SAFETY: a plain kill of our own child.
                    unsafe { libc::kill(child.as_raw(), libc::SIGKILL) };
                    return Err(format!("the stub got pid {child}, not 2"));
                }
                Ok(child)
            }
        }
    }

    /// In the new stub: puts each of `fds` at its number in `targets`
    /// (first above every target, so no dup2 clobbers a source still to
    /// be placed); exits on failure.
    fn place(fds: &[OwnedFd], targets: &[RawFd], above: RawFd) {
        let mut moved = Vec::with_capacity(fds.len());
        for fd in fds {
            // SAFETY: fcntl on a descriptor we own.
            let m = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, above) };
            if m < 0 {
                std::process::exit(127);
            }
            moved.push(m);
        }
        for (m, t) in moved.iter().zip(targets) {
            // SAFETY: dup2 onto a number this process owns; the new fd is
            // not close-on-exec, as at a launch.
            if unsafe { libc::dup2(*m, *t) } < 0 {
                std::process::exit(127);
            }
        }
        let status = STATUS_FD;
        // The status fd is close-on-exec, as the launcher's.
        // SAFETY: fcntl on a descriptor just placed.
        unsafe { libc::fcntl(status, libc::F_SETFD, libc::FD_CLOEXEC) };
    }
}

#[cfg(test)]
mod tests {
    use super::comparable;

    const TABLE: &str = "\
612 611 0:95 / / ro,relatime - overlay overlay ro
613 612 0:96 / /proc rw,nosuid,nodev,noexec,relatime - proc proc rw
614 612 0:97 / /tmp rw,nosuid,nodev,relatime - tmpfs tmpfs rw,size=64m,mode=1777
615 612 254:0 /srv/code /var/task ro,relatime - ext4 /dev/vda rw
";

    #[test]
    fn a_fresh_tmp_compares_equal_wherever_it_is_listed() {
        // The fresh tmpfs: a new ID and device, listed last.
        let after = "\
612 611 0:95 / / ro,relatime - overlay overlay ro
613 612 0:96 / /proc rw,nosuid,nodev,noexec,relatime - proc proc rw
615 612 254:0 /srv/code /var/task ro,relatime - ext4 /dev/vda rw
640 612 0:131 / /tmp rw,nosuid,nodev,relatime - tmpfs tmpfs rw,size=64m,mode=1777
";
        assert_eq!(comparable(TABLE).unwrap(), comparable(after).unwrap());
    }

    #[test]
    fn any_other_change_differs() {
        let base = comparable(TABLE).unwrap();
        // A mount added (under /tmp too), one gone, options changed.
        let added = format!("{TABLE}641 614 0:132 / /tmp/x rw - tmpfs tmpfs rw\n");
        let gone = TABLE.replace(
            "615 612 254:0 /srv/code /var/task ro,relatime - ext4 /dev/vda rw\n",
            "",
        );
        let tmp_rw = TABLE.replace("rw,nosuid,nodev,relatime - tmpfs", "rw,relatime - tmpfs");
        let tmp_size = TABLE.replace("size=64m", "size=65m");
        let tmp_parent = TABLE.replace("614 612 0:97", "614 613 0:97");
        let code_rw = TABLE.replace("/var/task ro,", "/var/task rw,");
        for other in [added, gone, tmp_rw, tmp_size, tmp_parent, code_rw] {
            assert_ne!(comparable(&other).unwrap(), base, "{other}");
        }
    }

    #[test]
    fn tmp_must_be_mounted_once() {
        let twice = format!("{TABLE}650 612 0:140 / /tmp rw - tmpfs tmpfs rw\n");
        assert_eq!(comparable(&twice).unwrap_err(), "two mounts at /tmp");
        let none = TABLE.replace(
            "614 612 0:97 / /tmp rw,nosuid,nodev,relatime - tmpfs tmpfs rw,size=64m,mode=1777\n",
            "",
        );
        assert_eq!(comparable(&none).unwrap_err(), "no mount at /tmp");
    }
}
