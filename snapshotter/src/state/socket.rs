//! Sockets of a captured process other than the runtime protocol's and
//! socket pairs (those are in `fds`): TCP, UDP, Unix and netlink route
//! sockets. Capture: `capture::socket`; restore: `pool::restore::socket`.
//!
//! ```text
//! role         what                                      in each copy
//! Listening    TCP or Unix stream/seqpacket listening    re-created with its options,
//!              (backlog, connections waiting)            bound, listening again; the
//!                                                        waiting connections are dropped
//! Open         UDP (bound or not), a TCP or Unix socket  re-created with its options,
//!              neither listening nor connected, netlink  bound where it was
//! Connected    UDP connected to a peer                   re-created, bound, connected
//! Cut          TCP in any connected state, Unix stream   a connection that is gone:
//!              connected outside the process             reads see a reset or end of
//!                                                        file, writes fail (EPIPE)
//! ```
//!
//! Every socket is made in the copy's own network namespace (the copy
//! runs the system calls), so a copy never gets a socket of the host's
//! network. Options are recorded as the kernel returns them
//! (`getsockopt`) and set back before the socket is bound.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// A socket the copy re-creates in its own network namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SocketState {
    /// `AF_INET`, `AF_INET6`, `AF_UNIX` or `AF_NETLINK`.
    pub family: i32,
    /// `SOCK_STREAM`, `SOCK_DGRAM`, `SOCK_SEQPACKET` or `SOCK_RAW`
    /// (without the `SOCK_NONBLOCK`/`SOCK_CLOEXEC` bits).
    pub sock_type: i32,
    /// `SO_PROTOCOL` (`IPPROTO_TCP`, `IPPROTO_UDP`, `NETLINK_ROUTE`, 0).
    pub protocol: i32,
    /// Inode of the socket at capture (for information only).
    pub inode: u64,
    /// Its own address (`getsockname`); `None`: not bound.
    pub local: Option<SocketAddress>,
    /// What it was doing, and so what the copy gets.
    pub role: SocketRole,
    /// Options set back before binding, in this order.
    pub options: Vec<SocketOption>,
    /// `SO_RCVBUF` to set (half what `getsockopt` read: the kernel doubles
    /// it), only when it differed from a fresh socket's of the same kind.
    pub rcvbuf: Option<u32>,
    /// `SO_SNDBUF` to set, likewise.
    pub sndbuf: Option<u32>,
}

/// An address of a socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SocketAddress {
    /// IPv4 or IPv6 address and port.
    Inet(SocketAddr),
    /// A Unix socket bound to an absolute path (as the process sees it).
    UnixPath(String),
    /// A Unix socket in the abstract namespace (the name without its
    /// leading NUL); abstract names are per network namespace.
    UnixAbstract(Vec<u8>),
    /// A netlink socket's port id and multicast groups (`sockaddr_nl`).
    Netlink {
        /// `nl_pid`.
        port: u32,
        /// `nl_groups`.
        groups: u32,
    },
}

/// What a socket was doing at capture.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SocketRole {
    /// Listening.
    Listening {
        /// The `listen` backlog.
        backlog: u32,
        /// Connections waiting to be accepted at capture (dropped).
        waiting: u32,
    },
    /// Neither listening nor connected (or a netlink socket).
    Open,
    /// A datagram socket connected to `peer`.
    Connected {
        /// The peer.
        peer: SocketAddress,
    },
    /// A connection to outside the process, cut in every copy.
    Cut {
        /// The peer, when the kernel names it.
        peer: Option<SocketAddress>,
        /// The connection's state at capture (`ESTABLISHED`, ...).
        state: String,
    },
}

/// One socket option as `getsockopt` returned it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SocketOption {
    /// `SOL_SOCKET`, `IPPROTO_TCP`, `IPPROTO_IPV6`, ...
    pub level: i32,
    /// The option.
    pub name: i32,
    /// Its value, as the kernel returned it.
    pub value: Vec<u8>,
}

impl SocketState {
    /// Short name of the kind: `tcp`, `tcp6`, `udp`, `udp6`, `unix stream`,
    /// `unix dgram`, `unix seqpacket`, `netlink route`.
    pub fn kind_name(&self) -> String {
        match self.family {
            libc::AF_INET | libc::AF_INET6 => {
                let proto = if self.sock_type == libc::SOCK_STREAM {
                    "tcp"
                } else {
                    "udp"
                };
                let six = if self.family == libc::AF_INET6 {
                    "6"
                } else {
                    ""
                };
                format!("{proto}{six}")
            }
            libc::AF_UNIX => format!("unix {}", type_name(self.sock_type)),
            libc::AF_NETLINK => "netlink route".into(),
            other => format!("family {other}"),
        }
    }

    /// For logs: `tcp 10.0.0.5:5432` (a cut connection names its peer),
    /// `tcp 0.0.0.0:8080 listening`, `unix stream /tmp/s`.
    pub fn describe(&self) -> String {
        let name = self.kind_name();
        match &self.role {
            SocketRole::Cut { peer, state } => match peer {
                Some(peer) => format!("{name} {peer} {state}"),
                None => format!("{name} {state}"),
            },
            SocketRole::Listening { .. } => match &self.local {
                Some(local) => format!("{name} {local} listening"),
                None => format!("{name} listening"),
            },
            SocketRole::Connected { peer } => format!("{name} connected to {peer}"),
            SocketRole::Open => match &self.local {
                Some(local) => format!("{name} {local}"),
                None => name,
            },
        }
    }
}

/// `stream`, `dgram`, `seqpacket`, `raw`.
pub fn type_name(sock_type: i32) -> &'static str {
    match sock_type {
        libc::SOCK_STREAM => "stream",
        libc::SOCK_DGRAM => "dgram",
        libc::SOCK_SEQPACKET => "seqpacket",
        libc::SOCK_RAW => "raw",
        _ => "socket",
    }
}

impl std::fmt::Display for SocketAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SocketAddress::Inet(a) => write!(f, "{a}"),
            SocketAddress::UnixPath(p) => write!(f, "{p}"),
            SocketAddress::UnixAbstract(name) => {
                write!(f, "@{}", String::from_utf8_lossy(name))
            }
            SocketAddress::Netlink { port, groups } => {
                write!(f, "port {port} groups {groups:#x}")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptions_name_kind_and_address() {
        let cut = SocketState {
            family: libc::AF_INET,
            sock_type: libc::SOCK_STREAM,
            protocol: libc::IPPROTO_TCP,
            inode: 1,
            local: Some(SocketAddress::Inet("10.0.0.2:40000".parse().unwrap())),
            role: SocketRole::Cut {
                peer: Some(SocketAddress::Inet("10.0.0.5:5432".parse().unwrap())),
                state: "ESTABLISHED".into(),
            },
            options: Vec::new(),
            rcvbuf: None,
            sndbuf: None,
        };
        assert_eq!(cut.describe(), "tcp 10.0.0.5:5432 ESTABLISHED");
        let listening = SocketState {
            family: libc::AF_UNIX,
            sock_type: libc::SOCK_STREAM,
            protocol: 0,
            local: Some(SocketAddress::UnixAbstract(b"thaw".to_vec())),
            role: SocketRole::Listening {
                backlog: 5,
                waiting: 0,
            },
            ..cut
        };
        assert_eq!(listening.describe(), "unix stream @thaw listening");
    }
}
