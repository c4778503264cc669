//! Unix socket pairs whose both ends the process holds: finding each end's
//! peer (`NETLINK_SOCK_DIAG` with `UDIAG_SHOW_PEER`, asked in the process's
//! network namespace) and reading what is queued to each end without
//! taking it (`MSG_PEEK` from offset 0 with `SO_PEEK_OFF`, on a duplicate
//! of the descriptor; the socket's own peek offset is put back).
//!
//! ```text
//! request   nlmsghdr(SOCK_DIAG_BY_FAMILY, DUMP) + unix_diag_req{AF_UNIX,
//!           states all, show PEER}
//! answer    nlmsghdr + unix_diag_msg{family, type, state, ino, cookie}
//!           + rtattr UNIX_DIAG_PEER (u32 peer inode) ...
//! ```

use std::collections::HashMap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use super::CaptureError;
use crate::state::PairType;

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const UDIAG_SHOW_PEER: u32 = 0x4;
const UNIX_DIAG_PEER: u16 = 2;
const UDIAG_SHOW_RQLEN: u32 = 0x10;
const UNIX_DIAG_RQLEN: u16 = 4;
const NLMSG_DONE: u16 = 3;
const NLMSG_ERROR: u16 = 2;

/// `nlmsghdr` + `unix_diag_req`.
#[repr(C)]
struct Request {
    len: u32,
    kind: u16,
    flags: u16,
    seq: u32,
    pid: u32,
    family: u8,
    protocol: u8,
    pad: u16,
    states: u32,
    ino: u32,
    show: u32,
    cookie: [u32; 2],
}
const _: () = assert!(std::mem::size_of::<Request>() == 16 + 24);

fn sys(pid: i32, call: &'static str) -> CaptureError {
    CaptureError::Sys {
        pid,
        call,
        errno: nix::errno::Errno::last(),
    }
}

/// Every Unix socket of `pid`'s network namespace: inode → (type, peer
/// inode or 0).
pub fn peers(pid: i32) -> Result<HashMap<u64, (u8, u64)>, CaptureError> {
    Ok(dump(pid, UDIAG_SHOW_PEER)?
        .into_iter()
        .map(|d| (d.inode, (d.kind, d.peer)))
        .collect())
}

/// Every listening Unix socket of `pid`'s network namespace: inode →
/// (connections waiting to be accepted, backlog), from `UNIX_DIAG_RQLEN`.
pub fn listen_queues(pid: i32) -> Result<HashMap<u64, (u32, u32)>, CaptureError> {
    Ok(dump(pid, UDIAG_SHOW_RQLEN)?
        .into_iter()
        .filter(|d| d.state == TCP_LISTEN)
        .filter_map(|d| Some((d.inode, d.queues?)))
        .collect())
}

/// `TCP_LISTEN`, the state the kernel reports for a listening Unix socket.
const TCP_LISTEN: u8 = 10;

/// One socket of a `unix_diag` dump.
struct Diag {
    inode: u64,
    kind: u8,
    state: u8,
    peer: u64,
    /// `UNIX_DIAG_RQLEN`: (queued, limit); for a listening socket the
    /// connections waiting and the backlog.
    queues: Option<(u32, u32)>,
}

/// Dumps every Unix socket of `pid`'s network namespace with the
/// attributes `show` asks for.
fn dump(pid: i32, show: u32) -> Result<Vec<Diag>, CaptureError> {
    let sock = socket_in_netns(
        pid,
        libc::AF_NETLINK,
        libc::SOCK_DGRAM,
        libc::NETLINK_SOCK_DIAG,
    )?;
    let request = Request {
        len: std::mem::size_of::<Request>() as u32,
        kind: SOCK_DIAG_BY_FAMILY,
        flags: (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16,
        seq: 1,
        pid: 0,
        family: libc::AF_UNIX as u8,
        protocol: 0,
        pad: 0,
        states: u32::MAX,
        ino: 0,
        show,
        cookie: [u32::MAX; 2],
    };
    // SAFETY: send reads `size_of::<Request>()` bytes of a live repr(C) value.
    let sent = unsafe {
        libc::send(
            sock.as_raw_fd(),
            (&request as *const Request).cast(),
            std::mem::size_of::<Request>(),
            0,
        )
    };
    if sent < 0 {
        return Err(sys(pid, "send (sock_diag)"));
    }
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let u16_at = |b: &[u8], i: usize| u16::from_ne_bytes([b[i], b[i + 1]]);
    let u32_at = |b: &[u8], i: usize| u32::from_ne_bytes(b[i..i + 4].try_into().expect("4 bytes"));
    loop {
        // SAFETY: recv into a buffer we own.
        let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(sys(pid, "recv (sock_diag)"));
        }
        let data = &buf[..n as usize];
        let mut at = 0;
        while at + 16 <= data.len() {
            let len = u32_at(data, at) as usize;
            let kind = u16_at(data, at + 4);
            if len < 16 || at + len > data.len() {
                break;
            }
            if kind == NLMSG_DONE {
                return Ok(out);
            }
            if kind == NLMSG_ERROR {
                return Err(CaptureError::Sys {
                    pid,
                    call: "sock_diag",
                    errno: nix::errno::Errno::from_raw(-(u32_at(data, at + 16) as i32)),
                });
            }
            // unix_diag_msg: family u8, type u8, state u8, pad u8, ino u32, cookie.
            let msg = &data[at + 16..at + len];
            if msg.len() >= 16 {
                let kind = msg[1];
                let state = msg[2];
                let ino = u32_at(msg, 4) as u64;
                let mut peer = 0u64;
                let mut queues = None;
                let mut a = 16;
                while a + 4 <= msg.len() {
                    let alen = u16_at(msg, a) as usize;
                    let atype = u16_at(msg, a + 2);
                    if alen < 4 || a + alen > msg.len() {
                        break;
                    }
                    if atype == UNIX_DIAG_PEER && alen >= 8 {
                        peer = u32_at(msg, a + 4) as u64;
                    }
                    if atype == UNIX_DIAG_RQLEN && alen >= 12 {
                        queues = Some((u32_at(msg, a + 4), u32_at(msg, a + 8)));
                    }
                    a += alen.next_multiple_of(4);
                }
                out.push(Diag {
                    inode: ino,
                    kind,
                    state,
                    peer,
                    queues,
                });
            }
            at += len.next_multiple_of(4);
        }
    }
}

/// A new socket (close-on-exec) made in `pid`'s network namespace: by a
/// thread of ours that enters it (`setns` changes only that thread).
pub fn socket_in_netns(
    pid: i32,
    domain: i32,
    ty: i32,
    protocol: i32,
) -> Result<OwnedFd, CaptureError> {
    let ns = std::fs::File::open(format!("/proc/{pid}/ns/net")).map_err(|source| {
        CaptureError::Proc {
            path: format!("/proc/{pid}/ns/net"),
            source,
        }
    })?;
    std::thread::scope(|s| {
        s.spawn(|| -> Result<OwnedFd, CaptureError> {
            // SAFETY: setns on this thread with a namespace fd we hold.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(sys(pid, "setns (net)"));
            }
            // SAFETY: socket returns a new descriptor or -1.
            let raw = unsafe { libc::socket(domain, ty | libc::SOCK_CLOEXEC, protocol) };
            if raw < 0 {
                return Err(sys(pid, "socket (in the process's network namespace)"));
            }
            // SAFETY: a fresh descriptor nobody else owns.
            Ok(unsafe { OwnedFd::from_raw_fd(raw) })
        })
        .join()
        .expect("setns thread panicked")
    })
}

/// The socket type named by a `unix_diag_msg` type.
pub fn pair_type(kind: u8) -> Option<PairType> {
    match kind as i32 {
        libc::SOCK_STREAM => Some(PairType::Stream),
        libc::SOCK_DGRAM => Some(PairType::Datagram),
        libc::SOCK_SEQPACKET => Some(PairType::SeqPacket),
        _ => None,
    }
}

/// The bytes queued to be read from the socket `sock` (a duplicate of the
/// process's). `Err(reason)` when they cannot be copied faithfully.
pub fn queued(
    pid: i32,
    sock: &OwnedFd,
    kind: PairType,
) -> Result<Result<Vec<u8>, &'static str>, CaptureError> {
    let fd = sock.as_raw_fd();
    let mut pending: libc::c_int = 0;
    // SAFETY: SIOCINQ writes one int.
    if unsafe { libc::ioctl(fd, libc::FIONREAD, &mut pending) } < 0 {
        return Err(sys(pid, "ioctl (SIOCINQ)"));
    }
    if pending == 0 {
        return Ok(Ok(Vec::new()));
    }
    if kind != PairType::Stream {
        return Ok(Err("a datagram or seqpacket socket pair with messages queued; thaw copies queued bytes of stream pairs only"));
    }
    let mut old: libc::c_int = -1;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes one int and its length.
    if unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_PEEK_OFF,
            (&mut old as *mut libc::c_int).cast(),
            &mut len,
        )
    } < 0
    {
        return Err(sys(pid, "getsockopt (SO_PEEK_OFF)"));
    }
    let set = |v: libc::c_int| {
        // SAFETY: setsockopt reads one int.
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_PEEK_OFF,
                (&v as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        }
    };
    if set(0) < 0 {
        return Err(sys(pid, "setsockopt (SO_PEEK_OFF)"));
    }
    let mut data = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut truncated = false;
    loop {
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        // SAFETY: an all-zero msghdr is valid; we set the iovec.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        // SAFETY: recvmsg into our buffer; no control buffer.
        let n = unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_PEEK | libc::MSG_DONTWAIT) };
        if n <= 0 {
            break;
        }
        if msg.msg_flags & libc::MSG_CTRUNC != 0 {
            truncated = true;
            break;
        }
        data.extend_from_slice(&buf[..n as usize]);
        if data.len() > super::kobj::MAX_COPIED {
            truncated = true;
            break;
        }
    }
    set(old);
    if truncated {
        return Ok(Err("a socket pair with descriptors in flight or over 64 MiB queued; a copy could not have the same"));
    }
    Ok(Ok(data))
}
