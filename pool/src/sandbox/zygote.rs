//! The sandbox zygote: one long-lived init process per server that forks
//! every sandbox's outer process, so that making a sandbox costs neither a
//! fork of the (large, multi-threaded) server nor an exec of the thaw
//! binary (issue 16: "making a sandbox should cost about a millisecond").
//!
//! ```text
//!  thaw server ── zygote thread (lives as long as the server)
//!    │               └─ spawns: thaw sandbox-init  (THAW_SANDBOX_ZYGOTE=1)
//!    │                     zygote: single-threaded, waits on ZYGOTE_FD
//!    │  request: spec JSON + fds ──────────▶ │
//!    │                                        clone3(CLONE_PARENT | CLONE_PIDFD)
//!    ├─ sandbox-init (outer) ◀────────────────┘  (a child of the server, not
//!    │     places its fds, then the usual          of the zygote)
//!    │     outer init: cgroups, unshare, pid 1
//!    │  reply: pid + pidfd, on the request's own socket
//! ```
//!
//! * **Who is whose parent.** The zygote forks with `CLONE_PARENT`, so every
//!   outer process is the server's child, as when the server spawned it: it
//!   reaps it (with the pidfd it gets back, [`super::process`]) and the
//!   outer's parent-death signal follows the server. That signal belongs to
//!   the thread that made the zygote: a thread of its own here, which never
//!   exits, never a pool thread that might.
//! * **One request, one socket.** Each launch makes a socket pair and sends
//!   one end with its request (one `SOCK_SEQPACKET` message on the shared
//!   socket, so concurrent launches need no lock); the zygote answers on it.
//! * **Failures.** A zygote that cannot be started or has died is started
//!   again once; when that fails too the launcher falls back to spawning the
//!   init the old way ([`zygote_enabled`] turns the zygote off altogether:
//!   `THAW_SANDBOX_ZYGOTE=0`).
//! * **What is not inherited.** The zygote is a fresh process of the thaw
//!   binary whose environment is only its own marker; a sandbox's outer
//!   process keeps exactly the descriptors placed for it (everything else is
//!   closed right after the fork), and it finds its spec in the request, not
//!   in an environment variable.

use std::collections::HashMap;
use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex, OnceLock};

use nix::sys::socket::{
    recvmsg, sendmsg, socketpair, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags,
    SockFlag, SockType,
};
use serde::{Deserialize, Serialize};

use super::SandboxSpec;

/// Environment variable that starts the init binary as a zygote (`1`), and
/// that turns the zygote off in a launching process (`0`).
pub const ZYGOTE_ENV: &str = "THAW_SANDBOX_ZYGOTE";

/// The fd of the zygote's socket to the server, in the zygote.
pub const ZYGOTE_FD: RawFd = super::KEEPER_FD + 1;

/// Most descriptors one request carries (the kernel's `SCM_MAX_FD` is 253;
/// one is the reply socket).
pub const MAX_FDS: usize = 250;

/// Largest request (the spec's JSON), bytes.
const MAX_REQUEST: usize = 1 << 20;

/// Whether launches of this process go through a zygote (default yes;
/// `THAW_SANDBOX_ZYGOTE=0` turns it off, for A/B measurements).
pub fn zygote_enabled() -> bool {
    std::env::var_os(ZYGOTE_ENV).is_none_or(|v| v != "0")
}

/// What a launch sends the zygote (with the descriptors, in `targets`
/// order, and the reply socket last).
#[derive(Debug, Serialize, Deserialize)]
struct Request {
    /// The sandbox's spec (what the exec'd init reads from its environment).
    spec: SandboxSpec,
    /// The fd number each received descriptor takes in the outer process.
    targets: Vec<RawFd>,
    /// The server's pid: the outer process checks that it is its parent
    /// once its parent-death signal is set.
    server: i32,
}

/// Errors of launching through the zygote.
#[derive(Debug, thiserror::Error)]
pub enum ZygoteError {
    /// The zygote could not be started (or started again).
    #[error("start the sandbox zygote: {0}")]
    Start(#[source] std::io::Error),
    /// A system call of the exchange failed.
    #[error("sandbox zygote: {what}: {source}")]
    Sys {
        /// What was being done.
        what: &'static str,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The zygote answered with an error (its fork failed, or the request
    /// was refused).
    #[error("sandbox zygote: {0}")]
    Refused(String),
    /// The zygote went away before it answered.
    #[error("the sandbox zygote went away before it answered")]
    Gone,
}

fn sys(what: &'static str) -> impl FnOnce(nix::Error) -> ZygoteError {
    move |e| ZygoteError::Sys {
        what,
        source: std::io::Error::from(e),
    }
}

/// An outer process forked by the zygote: a child of this process.
#[derive(Debug)]
pub struct Forked {
    /// Its pid.
    pub pid: i32,
    /// Its pidfd (close-on-exec).
    pub pidfd: OwnedFd,
}

/// A running zygote, from the server's side.
#[derive(Debug)]
struct Handle {
    /// Our end of its socket (blocking, close-on-exec).
    sock: OwnedFd,
    /// Bumped when it is replaced, so that two launches that both saw it
    /// die start only one new one.
    generation: u64,
}

/// The zygotes of this process, by (executable, arguments).
type Registry = Mutex<HashMap<(PathBuf, Vec<String>), Arc<Handle>>>;

fn registry() -> &'static Registry {
    static ZYGOTES: OnceLock<Registry> = OnceLock::new();
    ZYGOTES.get_or_init(|| Mutex::new(HashMap::new()))
}

/// Asks the zygote thread to start a zygote of `exe args`, and waits.
type StartRequest = (PathBuf, Vec<String>, mpsc::Sender<std::io::Result<OwnedFd>>);

/// The thread that starts zygotes and reaps those that were replaced. It
/// never exits: the parent-death signal of every sandbox's outer process
/// (whose parent is, through `CLONE_PARENT`, the thread that made the
/// zygote) must not fire while the server lives.
fn starter() -> &'static Mutex<mpsc::Sender<StartRequest>> {
    static STARTER: OnceLock<Mutex<mpsc::Sender<StartRequest>>> = OnceLock::new();
    STARTER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<StartRequest>();
        std::thread::Builder::new()
            .name("thaw-zygote".into())
            .spawn(move || {
                let mut running: HashMap<(PathBuf, Vec<String>), std::process::Child> =
                    HashMap::new();
                while let Ok((exe, args, reply)) = rx.recv() {
                    if let Some(mut old) = running.remove(&(exe.clone(), args.clone())) {
                        let _ = old.kill();
                        let _ = old.wait();
                    }
                    let started = start_zygote(&exe, &args);
                    let _ = reply.send(started.map(|(child, sock)| {
                        running.insert((exe, args), child);
                        sock
                    }));
                }
                // The senders live in a static: never reached. Park rather
                // than exit, for the reason above.
                loop {
                    std::thread::park();
                }
            })
            .expect("spawn the zygote thread");
        Mutex::new(tx)
    })
}

/// Spawns `exe args` as a zygote with its socket at [`ZYGOTE_FD`].
fn start_zygote(exe: &PathBuf, args: &[String]) -> std::io::Result<(std::process::Child, OwnedFd)> {
    use std::os::unix::process::CommandExt;
    let (ours, theirs) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )?;
    let src = theirs.as_raw_fd();
    let server = std::process::id().to_string();
    let mut cmd = std::process::Command::new(exe);
    cmd.args(args)
        .env_clear()
        .env(ZYGOTE_ENV, "1")
        .env("THAW_SANDBOX_ZYGOTE_PARENT", server)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null());
    // SAFETY: between fork and exec only dup2 and prctl, on an fd that is
    // open in the child.
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(src, ZYGOTE_FD) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn()?;
    drop(theirs);
    Ok((child, ours))
}

/// The zygote of `exe args`, started if there is none (or if the one seen
/// as `dead` died).
fn zygote(exe: &Path, args: &[String], dead: Option<u64>) -> Result<Arc<Handle>, ZygoteError> {
    let key = (exe.to_path_buf(), args.to_vec());
    let mut zygotes = registry().lock().unwrap();
    let generation = match zygotes.get(&key) {
        Some(h) if Some(h.generation) != dead => return Ok(h.clone()),
        Some(h) => h.generation + 1,
        None => 0,
    };
    let (tx, rx) = mpsc::channel();
    starter()
        .lock()
        .unwrap()
        .send((exe.to_path_buf(), args.to_vec(), tx))
        .map_err(|_| ZygoteError::Start(std::io::Error::other("the zygote thread is gone")))?;
    let sock = rx
        .recv()
        .map_err(|_| ZygoteError::Start(std::io::Error::other("the zygote thread is gone")))?
        .map_err(ZygoteError::Start)?;
    let handle = Arc::new(Handle { sock, generation });
    zygotes.insert(key, handle.clone());
    Ok(handle)
}

/// Forks a sandbox's outer process through the zygote of `exe args`: it
/// runs the init with `spec`, holding `fds[i]` at `targets[i]`. Starts the
/// zygote on first use and once more if it died.
pub async fn fork_outer(
    exe: &Path,
    args: &[String],
    spec: &SandboxSpec,
    fds: &[BorrowedFd<'_>],
    targets: &[RawFd],
) -> Result<Forked, ZygoteError> {
    if fds.len() != targets.len() || fds.len() + 1 > MAX_FDS {
        return Err(ZygoteError::Refused(format!(
            "{} descriptors for {} targets (at most {})",
            fds.len(),
            targets.len(),
            MAX_FDS - 1
        )));
    }
    let request = serde_json::to_vec(&Request {
        spec: spec.clone(),
        targets: targets.to_vec(),
        server: std::process::id() as i32,
    })
    .expect("request serialises");
    if request.len() > MAX_REQUEST {
        return Err(ZygoteError::Refused(format!(
            "request of {} bytes (at most {MAX_REQUEST})",
            request.len()
        )));
    }
    let (reply_ours, reply_theirs) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
    )
    .map_err(sys("socketpair"))?;
    let mut raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
    raw.push(reply_theirs.as_raw_fd());
    let mut dead = None;
    for attempt in 0..2 {
        let handle = zygote(exe, args, dead)?;
        let cmsg = [ControlMessage::ScmRights(&raw)];
        match sendmsg::<()>(
            handle.sock.as_raw_fd(),
            &[IoSlice::new(&request)],
            &cmsg,
            MsgFlags::MSG_NOSIGNAL,
            None,
        ) {
            Ok(_) => break,
            Err(nix::errno::Errno::EPIPE | nix::errno::Errno::ECONNRESET) if attempt == 0 => {
                dead = Some(handle.generation);
            }
            Err(e) => return Err(sys("send the request")(e)),
        }
    }
    // Only the zygote (and the outer process) hold the other end now: its
    // end of file means the zygote died before it answered.
    drop(reply_theirs);
    read_reply(reply_ours).await
}

/// Waits for the zygote's answer on the request's own socket.
async fn read_reply(sock: OwnedFd) -> Result<Forked, ZygoteError> {
    // SAFETY: an OwnedFd keeps its descriptor open and unchanged for as
    // long as the AsyncFd owns it.
    let sock = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(sock, tokio::io::Interest::READABLE)
    }
    .map_err(|e| ZygoteError::Sys {
        what: "register the reply socket",
        source: e.into(),
    })?;
    loop {
        let mut guard = sock.readable().await.map_err(|e| ZygoteError::Sys {
            what: "wait for the reply",
            source: e,
        })?;
        let mut buf = [0u8; 512];
        let got = guard
            .try_io(|s| receive(s.get_ref().as_raw_fd(), &mut buf).map_err(std::io::Error::from));
        match got {
            Ok(Ok(Some((len, mut received)))) => {
                let data = &buf[..len];
                if let Some(message) = data.strip_prefix(b"E") {
                    return Err(ZygoteError::Refused(
                        String::from_utf8_lossy(message).into_owned(),
                    ));
                }
                let pid = std::str::from_utf8(data)
                    .ok()
                    .and_then(|s| s.parse::<i32>().ok());
                return match (pid, received.pop()) {
                    (Some(pid), Some(pidfd)) if received.is_empty() => Ok(Forked { pid, pidfd }),
                    _ => Err(ZygoteError::Refused("malformed reply".into())),
                };
            }
            Ok(Ok(None)) => return Err(ZygoteError::Gone),
            Ok(Err(e)) => {
                return Err(ZygoteError::Sys {
                    what: "read the reply",
                    source: e,
                })
            }
            Err(_would_block) => continue,
        }
    }
}

/// One message into `buf` (its length is the most read) and the
/// descriptors it carries (close-on-exec); `None` at end of file. Returns
/// the message's length.
fn receive(fd: RawFd, buf: &mut [u8]) -> nix::Result<Option<(usize, Vec<OwnedFd>)>> {
    let mut space = nix::cmsg_space!([RawFd; MAX_FDS]);
    let (len, fds) = {
        let mut iov = [IoSliceMut::new(buf)];
        let msg = recvmsg::<()>(fd, &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)?;
        let mut fds = Vec::new();
        for cmsg in msg.cmsgs()? {
            if let ControlMessageOwned::ScmRights(received) = cmsg {
                // SAFETY: descriptors the kernel just installed for us.
                fds.extend(
                    received
                        .into_iter()
                        .map(|f| unsafe { OwnedFd::from_raw_fd(f) }),
                );
            }
        }
        if msg.flags.contains(MsgFlags::MSG_TRUNC) || msg.flags.contains(MsgFlags::MSG_CTRUNC) {
            return Err(nix::errno::Errno::EMSGSIZE);
        }
        (msg.bytes, fds)
    };
    if len == 0 && fds.is_empty() {
        return Ok(None);
    }
    Ok(Some((len, fds)))
}

/// Sends `data` and at most one descriptor on `fd` (best effort).
fn answer(fd: RawFd, data: &[u8], pass: Option<RawFd>) {
    let fds: Vec<RawFd> = pass.into_iter().collect();
    let cmsg = [ControlMessage::ScmRights(&fds)];
    let cmsgs: &[ControlMessage<'_>] = if fds.is_empty() { &[] } else { &cmsg };
    let _ = sendmsg::<()>(
        fd,
        &[IoSlice::new(data)],
        cmsgs,
        MsgFlags::MSG_NOSIGNAL,
        None,
    );
}

/// The zygote's main loop (in the init binary, started with
/// [`ZYGOTE_ENV`]`=1`): one fork per request until the server closes its
/// socket. Never returns.
pub(super) fn zygote_main() -> ! {
    // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes.
    unsafe { libc::prctl(libc::PR_SET_NAME, c"thaw-zygote".as_ptr() as libc::c_ulong) };
    let parent: Option<i32> = std::env::var("THAW_SANDBOX_ZYGOTE_PARENT")
        .ok()
        .and_then(|p| p.parse().ok());
    // Set by the launcher before the exec; a server that died before that
    // made us an orphan.
    if parent != Some(nix::unistd::getppid().as_raw()) {
        std::process::exit(super::init::SETUP_FAILED);
    }
    // One buffer for every request (a fresh megabyte per request would cost
    // its page faults each time).
    let mut buf = vec![0u8; MAX_REQUEST];
    loop {
        let (len, mut fds) = match receive(ZYGOTE_FD, &mut buf) {
            Ok(Some(m)) => m,
            Ok(None) => std::process::exit(0),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(nix::errno::Errno::EMSGSIZE) => continue,
            Err(_) => std::process::exit(super::init::SETUP_FAILED),
        };
        let Some(reply) = fds.pop() else { continue };
        let request: Request = match serde_json::from_slice(&buf[..len]) {
            Ok(r) => r,
            Err(e) => {
                answer(
                    reply.as_raw_fd(),
                    format!("Ebad request: {e}").as_bytes(),
                    None,
                );
                continue;
            }
        };
        if request.targets.len() != fds.len() {
            answer(reply.as_raw_fd(), b"Edescriptors and targets differ", None);
            continue;
        }
        match fork_child(&request, &fds, &reply) {
            Ok((pid, pidfd)) => {
                answer(
                    reply.as_raw_fd(),
                    pid.to_string().as_bytes(),
                    Some(pidfd.as_raw_fd()),
                );
            }
            Err(e) => answer(reply.as_raw_fd(), format!("Efork: {e}").as_bytes(), None),
        }
        // The request's descriptors and its reply socket close here.
    }
}

/// Forks the outer process of `request`: a child of the zygote's parent
/// (`CLONE_PARENT`). Returns its pid and pidfd.
fn fork_child(
    request: &Request,
    fds: &[OwnedFd],
    reply: &OwnedFd,
) -> std::io::Result<(i32, OwnedFd)> {
    let mut pidfd: libc::c_int = -1;
    // SAFETY: clone_args is plain integers; all-zero is valid.
    let mut args: libc::clone_args = unsafe { std::mem::zeroed() };
    args.flags = (libc::CLONE_PARENT | libc::CLONE_PIDFD) as u64;
    args.pidfd = &mut pidfd as *mut libc::c_int as u64;
    // Ignored with CLONE_PARENT (the zygote's own, SIGCHLD, is used).
    args.exit_signal = 0;
    // SAFETY: clone3 without CLONE_VM is a fork: the child gets a copy of
    // this single-threaded process and runs `outer_child`, which never
    // returns.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &mut args as *mut libc::clone_args,
            std::mem::size_of::<libc::clone_args>(),
        )
    };
    if pid < 0 {
        return Err(std::io::Error::last_os_error());
    }
    if pid == 0 {
        outer_child(request, fds, reply)
    }
    // SAFETY: the kernel wrote a fresh pidfd that only we hold.
    Ok((pid as i32, unsafe { OwnedFd::from_raw_fd(pidfd) }))
}

/// In the forked outer process: places the request's descriptors at their
/// numbers, closes every other one, and runs the outer init.
fn outer_child(request: &Request, fds: &[OwnedFd], reply: &OwnedFd) -> ! {
    // Not the zygote's name (inherited by the fork): what `ps` shows for
    // the outer process, pid 1 and a stub.
    // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes.
    unsafe { libc::prctl(libc::PR_SET_NAME, c"thaw-sandbox".as_ptr() as libc::c_ulong) };
    let placed = place(fds, &request.targets);
    if placed.is_err() {
        // Nobody to tell but the zygote's caller, through the reply socket.
        answer(reply.as_raw_fd(), b"Eplace descriptors", None);
        // SAFETY: _exit ends this process at once.
        unsafe { libc::_exit(super::init::SETUP_FAILED) };
    }
    super::init::outer_from_zygote(&request.spec, request.server)
}

/// Puts `fds[i]` at `targets[i]` (without close-on-exec) and closes every
/// other descriptor of this process.
fn place(fds: &[OwnedFd], targets: &[RawFd]) -> std::io::Result<()> {
    let above = targets.iter().copied().max().unwrap_or(2).max(ZYGOTE_FD) + 1;
    let mut moved = Vec::with_capacity(fds.len());
    for fd in fds {
        // SAFETY: fcntl on a descriptor we own.
        let m = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, above) };
        if m < 0 {
            return Err(std::io::Error::last_os_error());
        }
        moved.push(m);
    }
    for (m, &t) in moved.iter().zip(targets) {
        // SAFETY: dup2 onto a number this process owns from now on.
        if unsafe { libc::dup2(*m, t) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    let mut keep: Vec<u32> = targets.iter().map(|&t| t as u32).collect();
    keep.sort_unstable();
    keep.dedup();
    let mut from = 0u32;
    for fd in keep {
        if fd > from {
            // SAFETY: close_range only closes descriptors.
            unsafe { libc::syscall(libc::SYS_close_range, from, fd - 1, 0u32) };
        }
        from = fd + 1;
    }
    // SAFETY: as above.
    unsafe { libc::syscall(libc::SYS_close_range, from, u32::MAX, 0u32) };
    Ok(())
}
