//! Sockets other than the runtime protocol's and inner socket pairs: TCP,
//! UDP, Unix and netlink route sockets, read from a duplicate of the
//! descriptor (`pidfd_getfd`), which answers `getsockopt`, `getsockname`
//! and `getpeername` like the process's own:
//!
//! ```text
//! SO_DOMAIN SO_TYPE SO_PROTOCOL   what it is (anything else is refused)
//! TCP_INFO                        TCP state; a listener's backlog and
//!                                 waiting connections (tcpi_sacked, tcpi_unacked)
//! SO_ACCEPTCONN                   a listening Unix socket (backlog from
//!                                 sock_diag UNIX_DIAG_RQLEN)
//! getsockname / getpeername       addresses
//! getsockopt (OPTIONS)            options set back in the copy
//! SO_RCVBUF SO_SNDBUF             kept when they differ from a fresh socket's
//!                                 of the same kind in the same namespace
//! ```
//!
//! Connections to outside the process (TCP in any connected state, Unix
//! stream sockets whose peer is elsewhere) are recorded as
//! [`SocketRole::Cut`], or refused with
//! [`ConnectionPolicy::Refuse`]. The state type is `crate::state::socket`;
//! the restorer's side is `pool::restore::socket`.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, OwnedFd};

use super::refuse::Refusal;
use super::CaptureError;
use crate::state::{FdKind, SocketAddress, SocketOption, SocketRole, SocketState};

/// What a capture does with connections to outside the process (the spec
/// field `on_snapshot_connections`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ConnectionPolicy {
    /// Record them; every copy gets them as connections that are gone.
    #[default]
    Cut,
    /// Refuse the capture.
    Refuse,
}

/// Options read and set back: `(level, name, length)`. Those a socket does
/// not have (`ENOPROTOOPT`) are skipped.
const OPTIONS: &[(i32, i32, usize)] = &[
    (libc::SOL_SOCKET, libc::SO_REUSEADDR, 4),
    (libc::SOL_SOCKET, libc::SO_REUSEPORT, 4),
    (libc::SOL_SOCKET, libc::SO_KEEPALIVE, 4),
    (libc::SOL_SOCKET, libc::SO_BROADCAST, 4),
    (libc::SOL_SOCKET, libc::SO_OOBINLINE, 4),
    (libc::SOL_SOCKET, libc::SO_PASSCRED, 4),
    (libc::SOL_SOCKET, libc::SO_LINGER, 8),
    (libc::SOL_SOCKET, libc::SO_RCVTIMEO, 16),
    (libc::SOL_SOCKET, libc::SO_SNDTIMEO, 16),
    (libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, 4),
    (libc::IPPROTO_TCP, libc::TCP_NODELAY, 4),
    (libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, 4),
    (libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, 4),
    (libc::IPPROTO_TCP, libc::TCP_KEEPCNT, 4),
    (libc::IPPROTO_TCP, libc::TCP_USER_TIMEOUT, 4),
];

fn refuse(pid: i32, fd: i32, what: impl Into<String>, why: &'static str) -> CaptureError {
    CaptureError::refused(
        pid,
        Refusal::Descriptor {
            fd,
            what: what.into(),
            why,
        },
    )
}

fn sys(pid: i32, call: &'static str, errno: nix::errno::Errno) -> CaptureError {
    CaptureError::Sys { pid, call, errno }
}

/// `getsockopt` of `len` bytes; `Err(errno)` when the kernel refuses it.
fn option(sock: &OwnedFd, level: i32, name: i32, len: usize) -> Result<Vec<u8>, nix::errno::Errno> {
    let mut value = vec![0u8; len.max(4)];
    let mut got = value.len() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `got` bytes into `value`.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            level,
            name,
            value.as_mut_ptr().cast(),
            &mut got,
        )
    };
    if rc < 0 {
        return Err(nix::errno::Errno::last());
    }
    value.truncate(got as usize);
    Ok(value)
}

fn int_option(sock: &OwnedFd, level: i32, name: i32) -> Result<i32, nix::errno::Errno> {
    let v = option(sock, level, name, 4)?;
    Ok(i32::from_ne_bytes(v[..4].try_into().expect("4 bytes")))
}

/// `getsockname` (`peer`: `getpeername`) as raw bytes; `None` when not
/// connected (`ENOTCONN`).
fn name(sock: &OwnedFd, peer: bool) -> Result<Option<Vec<u8>>, nix::errno::Errno> {
    // SAFETY: an all-zero sockaddr_storage is valid.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    let ptr = (&mut storage as *mut libc::sockaddr_storage).cast::<libc::sockaddr>();
    // SAFETY: get{sock,peer}name write at most `len` bytes into `storage`.
    let rc = unsafe {
        if peer {
            libc::getpeername(sock.as_raw_fd(), ptr, &mut len)
        } else {
            libc::getsockname(sock.as_raw_fd(), ptr, &mut len)
        }
    };
    if rc < 0 {
        return match nix::errno::Errno::last() {
            nix::errno::Errno::ENOTCONN => Ok(None),
            e => Err(e),
        };
    }
    let len = (len as usize).min(std::mem::size_of::<libc::sockaddr_storage>());
    // SAFETY: `storage` is plain bytes of its size; we read `len` of them.
    let bytes = unsafe {
        std::slice::from_raw_parts(
            (&storage as *const libc::sockaddr_storage).cast::<u8>(),
            len,
        )
    };
    Ok(Some(bytes.to_vec()))
}

/// What a raw socket address is; `Ok(None)` for an unbound one (an
/// unspecified address with port 0, an unnamed Unix socket); `Err` for a
/// relative Unix path.
pub fn parse_address(bytes: &[u8]) -> Result<Option<SocketAddress>, &'static str> {
    if bytes.len() < 2 {
        return Ok(None);
    }
    let family = u16::from_ne_bytes([bytes[0], bytes[1]]) as i32;
    let be16 = |i: usize| u16::from_be_bytes([bytes[i], bytes[i + 1]]);
    match family {
        libc::AF_INET if bytes.len() >= 8 => {
            let port = be16(2);
            let ip = Ipv4Addr::new(bytes[4], bytes[5], bytes[6], bytes[7]);
            if port == 0 && ip.is_unspecified() {
                return Ok(None);
            }
            Ok(Some(SocketAddress::Inet(SocketAddr::V4(
                SocketAddrV4::new(ip, port),
            ))))
        }
        libc::AF_INET6 if bytes.len() >= 28 => {
            let port = be16(2);
            let flow = u32::from_be_bytes(bytes[4..8].try_into().expect("4 bytes"));
            let octets: [u8; 16] = bytes[8..24].try_into().expect("16 bytes");
            let scope = u32::from_ne_bytes(bytes[24..28].try_into().expect("4 bytes"));
            let ip = Ipv6Addr::from(octets);
            if port == 0 && ip.is_unspecified() {
                return Ok(None);
            }
            Ok(Some(SocketAddress::Inet(SocketAddr::V6(
                SocketAddrV6::new(ip, port, flow, scope),
            ))))
        }
        libc::AF_UNIX => {
            let path = &bytes[2..];
            if path.is_empty() {
                return Ok(None);
            }
            if path[0] == 0 {
                return Ok(Some(SocketAddress::UnixAbstract(path[1..].to_vec())));
            }
            let end = path.iter().position(|&b| b == 0).unwrap_or(path.len());
            let path = String::from_utf8_lossy(&path[..end]).into_owned();
            if !path.starts_with('/') {
                return Err("a Unix socket bound to a relative path; thaw binds Unix sockets by absolute path");
            }
            Ok(Some(SocketAddress::UnixPath(path)))
        }
        libc::AF_NETLINK if bytes.len() >= 12 => {
            let port = u32::from_ne_bytes(bytes[4..8].try_into().expect("4 bytes"));
            let groups = u32::from_ne_bytes(bytes[8..12].try_into().expect("4 bytes"));
            Ok(Some(SocketAddress::Netlink { port, groups }))
        }
        _ => Ok(None),
    }
}

/// TCP state names by `tcpi_state`.
fn tcp_state(code: u8) -> &'static str {
    match code {
        1 => "ESTABLISHED",
        2 => "SYN_SENT",
        3 => "SYN_RECV",
        4 => "FIN_WAIT1",
        5 => "FIN_WAIT2",
        6 => "TIME_WAIT",
        7 => "CLOSE",
        8 => "CLOSE_WAIT",
        9 => "LAST_ACK",
        10 => "LISTEN",
        11 => "CLOSING",
        _ => "UNKNOWN",
    }
}

fn family_name(family: i32) -> String {
    match family {
        libc::AF_PACKET => "AF_PACKET".into(),
        libc::AF_INET => "AF_INET".into(),
        libc::AF_INET6 => "AF_INET6".into(),
        libc::AF_UNIX => "AF_UNIX".into(),
        libc::AF_NETLINK => "AF_NETLINK".into(),
        libc::AF_VSOCK => "AF_VSOCK".into(),
        libc::AF_ALG => "AF_ALG".into(),
        other => format!("family {other}"),
    }
}

/// Everything about a socket but its role, read from `sock` (a duplicate
/// of `fd` of `pid`).
struct Basics {
    family: i32,
    sock_type: i32,
    protocol: i32,
    local: Option<SocketAddress>,
    peer: Option<SocketAddress>,
    /// `getpeername` answered (a Unix peer may be unnamed: `peer` is then
    /// `None` though the socket is connected).
    connected: bool,
}

fn basics(pid: i32, fd: i32, sock: &OwnedFd, what: &str) -> Result<Basics, CaptureError> {
    let get = |name, call| int_option(sock, libc::SOL_SOCKET, name).map_err(|e| sys(pid, call, e));
    let family = get(libc::SO_DOMAIN, "getsockopt (SO_DOMAIN)")?;
    let sock_type = get(libc::SO_TYPE, "getsockopt (SO_TYPE)")?;
    let protocol = get(libc::SO_PROTOCOL, "getsockopt (SO_PROTOCOL)")?;
    if !matches!(
        family,
        libc::AF_INET | libc::AF_INET6 | libc::AF_UNIX | libc::AF_NETLINK
    ) {
        return Err(refuse(
            pid,
            fd,
            format!(
                "a {} socket ({}, {what})",
                family_name(family),
                crate::state::type_name(sock_type)
            ),
            "thaw re-creates TCP, UDP, Unix and netlink route sockets only",
        ));
    }
    let address = |peer: bool| -> Result<Option<SocketAddress>, CaptureError> {
        let call = if peer { "getpeername" } else { "getsockname" };
        match name(sock, peer).map_err(|e| sys(pid, call, e))? {
            None => Ok(None),
            Some(bytes) => parse_address(&bytes).map_err(|why| refuse(pid, fd, what, why)),
        }
    };
    let connected = name(sock, true)
        .map_err(|e| sys(pid, "getpeername", e))?
        .is_some();
    Ok(Basics {
        family,
        sock_type,
        protocol,
        local: address(false)?,
        peer: address(true)?,
        connected,
    })
}

/// `SO_RCVBUF` and `SO_SNDBUF` to set back, when worth it.
type Buffers = (Option<u32>, Option<u32>);

/// Options of `sock` as the kernel returns them (see [`OPTIONS`]), and the
/// buffer sizes worth setting back.
fn options(
    pid: i32,
    sock: &OwnedFd,
    b: &Basics,
) -> Result<(Vec<SocketOption>, Buffers), CaptureError> {
    if b.family == libc::AF_NETLINK {
        return Ok((Vec::new(), (None, None)));
    }
    let mut out = Vec::new();
    for &(level, name, len) in OPTIONS {
        let applies = match level {
            libc::IPPROTO_TCP => b.protocol == libc::IPPROTO_TCP,
            libc::IPPROTO_IPV6 => b.family == libc::AF_INET6,
            _ => true,
        };
        if !applies {
            continue;
        }
        match option(sock, level, name, len) {
            Ok(value) => out.push(SocketOption { level, name, value }),
            Err(nix::errno::Errno::ENOPROTOOPT | nix::errno::Errno::EOPNOTSUPP) => {}
            Err(e) => return Err(sys(pid, "getsockopt", e)),
        }
    }
    let rcv = int_option(sock, libc::SOL_SOCKET, libc::SO_RCVBUF)
        .map_err(|e| sys(pid, "getsockopt (SO_RCVBUF)", e))?;
    let snd = int_option(sock, libc::SOL_SOCKET, libc::SO_SNDBUF)
        .map_err(|e| sys(pid, "getsockopt (SO_SNDBUF)", e))?;
    let fresh = super::unixpair::socket_in_netns(pid, b.family, b.sock_type, b.protocol)?;
    let default =
        |name, call| int_option(&fresh, libc::SOL_SOCKET, name).map_err(|e| sys(pid, call, e));
    let rcv_default = default(libc::SO_RCVBUF, "getsockopt (SO_RCVBUF of a fresh socket)")?;
    let snd_default = default(libc::SO_SNDBUF, "getsockopt (SO_SNDBUF of a fresh socket)")?;
    // A connected TCP socket's buffers grow by themselves: only a listener's
    // or an unconnected socket's were set by the program.
    Ok((
        out,
        (
            (rcv != rcv_default).then_some(rcv as u32 / 2),
            (snd != snd_default).then_some(snd as u32 / 2),
        ),
    ))
}

/// A socket that is not one end of a socket pair inside the process (nor
/// the runtime protocol's): TCP, UDP, Unix or netlink route, recorded for
/// the copy to re-create, or as a cut connection; anything else refused,
/// naming it. `sock` is a duplicate of `fd` of `pid`; `target` names it
/// (`socket:[N]`); `inode` its inode.
pub fn capture(
    pid: i32,
    fd: i32,
    sock: &OwnedFd,
    target: &str,
    inode: u64,
    policy: ConnectionPolicy,
) -> Result<FdKind, CaptureError> {
    let b = basics(pid, fd, sock, target)?;
    let kind = b.sock_type;
    let role = match b.family {
        libc::AF_INET | libc::AF_INET6 => {
            let tcp = kind == libc::SOCK_STREAM && b.protocol == libc::IPPROTO_TCP;
            let udp = kind == libc::SOCK_DGRAM && b.protocol == libc::IPPROTO_UDP;
            if tcp {
                let info = option(sock, libc::IPPROTO_TCP, libc::TCP_INFO, 32)
                    .map_err(|e| sys(pid, "getsockopt (TCP_INFO)", e))?;
                let word = |i: usize| u32::from_ne_bytes(info[i..i + 4].try_into().expect("4"));
                match info[0] {
                    10 => SocketRole::Listening {
                        backlog: word(28),
                        waiting: word(24),
                    },
                    7 => SocketRole::Open,
                    state => {
                        let state = tcp_state(state);
                        if policy == ConnectionPolicy::Refuse {
                            let unspecified = SocketAddr::from(([0, 0, 0, 0], 0));
                            let inet = |a: &Option<SocketAddress>| match a {
                                Some(SocketAddress::Inet(a)) => *a,
                                _ => unspecified,
                            };
                            return Err(CaptureError::refused(
                                pid,
                                Refusal::TcpSocket {
                                    fd,
                                    local: inet(&b.local),
                                    remote: inet(&b.peer),
                                    state,
                                },
                            ));
                        }
                        SocketRole::Cut {
                            peer: b.peer.clone(),
                            state: state.into(),
                        }
                    }
                }
            } else if udp {
                match &b.peer {
                    Some(peer) => SocketRole::Connected { peer: peer.clone() },
                    None => SocketRole::Open,
                }
            } else {
                return Err(refuse(
                    pid,
                    fd,
                    format!(
                        "a {} socket of type {} protocol {}",
                        family_name(b.family),
                        crate::state::type_name(kind),
                        b.protocol
                    ),
                    "thaw re-creates TCP and UDP sockets of the Internet families only",
                ));
            }
        }
        libc::AF_UNIX => {
            if !matches!(
                kind,
                libc::SOCK_STREAM | libc::SOCK_DGRAM | libc::SOCK_SEQPACKET
            ) {
                return Err(refuse(
                    pid,
                    fd,
                    target,
                    "a Unix socket of a type thaw cannot recreate",
                ));
            }
            let listening = int_option(sock, libc::SOL_SOCKET, libc::SO_ACCEPTCONN)
                .map_err(|e| sys(pid, "getsockopt (SO_ACCEPTCONN)", e))?
                != 0;
            if listening {
                let (waiting, backlog) = super::unixpair::listen_queues(pid)?
                    .get(&inode)
                    .copied()
                    .unwrap_or((0, libc::SOMAXCONN as u32));
                SocketRole::Listening { backlog, waiting }
            } else if b.connected {
                let peer_name = match &b.peer {
                    Some(peer) => peer.to_string(),
                    None => "an unnamed socket of another process".to_string(),
                };
                let peer = &peer_name;
                if kind == libc::SOCK_DGRAM {
                    return Err(refuse(
                        pid,
                        fd,
                        format!("a Unix datagram socket connected to {peer}"),
                        "a copy could not be connected to the same socket; thaw re-creates Unix datagram sockets that are not connected",
                    ));
                }
                if policy == ConnectionPolicy::Refuse {
                    return Err(refuse(
                        pid,
                        fd,
                        format!("a Unix {} socket connected to {peer}", crate::state::type_name(kind)),
                        "a connection outside the process, and on_snapshot_connections is \"refuse\"",
                    ));
                }
                SocketRole::Cut {
                    peer: b.peer.clone(),
                    state: "CONNECTED".into(),
                }
            } else {
                SocketRole::Open
            }
        }
        libc::AF_NETLINK => {
            if b.protocol != libc::NETLINK_ROUTE {
                return Err(refuse(
                    pid,
                    fd,
                    format!("a netlink socket of protocol {}", b.protocol),
                    "thaw re-creates netlink route sockets (NETLINK_ROUTE) only",
                ));
            }
            SocketRole::Open
        }
        _ => unreachable!("other families are refused by `basics`"),
    };
    let (options, (rcvbuf, sndbuf)) = if matches!(role, SocketRole::Cut { .. }) {
        // A cut connection's buffers grew with its traffic: not set back.
        let (options, _) = options(pid, sock, &b)?;
        (options, (None, None))
    } else {
        options(pid, sock, &b)?
    };
    Ok(FdKind::Socket(SocketState {
        family: b.family,
        sock_type: kind,
        protocol: b.protocol,
        inode,
        local: b.local,
        role,
        options,
        rcvbuf,
        sndbuf,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_socket_addresses() {
        let mut v4 = vec![0u8; 16];
        v4[..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
        v4[2..4].copy_from_slice(&8080u16.to_be_bytes());
        v4[4..8].copy_from_slice(&[127, 0, 0, 1]);
        assert_eq!(
            parse_address(&v4).unwrap(),
            Some(SocketAddress::Inet("127.0.0.1:8080".parse().unwrap()))
        );
        v4[2..8].fill(0);
        assert_eq!(parse_address(&v4).unwrap(), None);
        let mut unix = (libc::AF_UNIX as u16).to_ne_bytes().to_vec();
        unix.extend_from_slice(b"\0thaw-abstract");
        assert_eq!(
            parse_address(&unix).unwrap(),
            Some(SocketAddress::UnixAbstract(b"thaw-abstract".to_vec()))
        );
        let mut path = (libc::AF_UNIX as u16).to_ne_bytes().to_vec();
        path.extend_from_slice(b"/tmp/s\0");
        assert_eq!(
            parse_address(&path).unwrap(),
            Some(SocketAddress::UnixPath("/tmp/s".into()))
        );
        let mut relative = (libc::AF_UNIX as u16).to_ne_bytes().to_vec();
        relative.extend_from_slice(b"s\0");
        assert!(parse_address(&relative).is_err());
        let unnamed = (libc::AF_UNIX as u16).to_ne_bytes().to_vec();
        assert_eq!(parse_address(&unnamed).unwrap(), None);
    }
}
