//! Sockets of the copy (the state is `snapshotter::state::socket`, the
//! capture `snapshotter::capture::socket`): made by the copy itself, with
//! system calls run in the stub, so each lands in the copy's own network
//! namespace, mount namespace and root, whatever the restorer's are.
//!
//! ```text
//! every socket   socket() (one injected call: its number is the lowest free
//!                one), then one batch: dup3 to the saved number, close the
//!                first, options (setsockopt, before binding: IPV6_V6ONLY,
//!                SO_REUSEADDR ...), buffer sizes, O_NONBLOCK
//! Open           bind to the saved address (when it had one)
//! Listening      bind, listen(backlog); connections that waited at capture
//!                are gone (their clients see a reset)
//! Connected      bind, connect to the saved peer (UDP)
//! Unix path      bound with the copy's filesystem ids (setfsuid/setfsgid:
//!                the function's in a sandbox) and saved umask, inside the
//!                copy's root: a copy only gets a path it could bind itself
//! Cut, TCP       a connection made and reset on the copy's loopback:
//!                listener L on 127.0.0.1:0 (or [::1]:0), the socket connects
//!                to it, the accepted end closes with SO_LINGER 0 (a RST):
//!                the socket reads ECONNRESET then end of file, writes fail
//!                with EPIPE, poll reports POLLHUP (still a TCP socket of its
//!                family: getsockopt, setsockopt, getsockname work)
//! Cut, Unix      one end of a fresh socket pair whose other end is closed:
//!                end of file, EPIPE, POLLHUP
//! dups           dup3 of the socket once it is made
//! ```
//!
//! This runs before the batch that sets close-on-exec and registers
//! descriptors with epoll instances, so both find the sockets in place.
//! Every other descriptor is already at its number; the saved numbers of
//! sockets are the holes below the restorer's own descriptors, so a new
//! socket never lands on a descriptor the copy keeps.

use snapshotter::state::{FdKind, FdState, SocketAddress, SocketRole, SocketState};

use super::batch::Batch;
use super::remote::Remote;
use super::{Credentials, RestoreError};

/// The filesystem ids and umask a Unix socket's path is created with.
#[derive(Debug, Clone, Copy)]
pub struct FsIds {
    /// Filesystem uid.
    pub uid: u32,
    /// Filesystem gid.
    pub gid: u32,
    /// File creation mask.
    pub umask: u32,
}

impl FsIds {
    /// The function's ids for a sandboxed copy; the snapshot's own
    /// filesystem ids for `thaw restore`.
    pub fn of(state: &snapshotter::state::ProcessState, credentials: &Credentials) -> FsIds {
        let (uid, gid) = match credentials {
            Credentials::Function { uid, gid } => (*uid, *gid),
            Credentials::Snapshot => (state.process.uids[3], state.process.gids[3]),
        };
        FsIds {
            uid,
            gid,
            umask: state.process.umask,
        }
    }
}

/// Whether this module makes `saved` (a socket, or a dup of one), so the
/// plan leaves its number free.
pub fn made_in_copy(saved: &FdState, all: &[FdState]) -> bool {
    match saved.kind {
        FdKind::Socket(_) => true,
        FdKind::Dup { of } => all
            .iter()
            .any(|f| f.fd == of && matches!(f.kind, FdKind::Socket(_))),
        _ => false,
    }
}

/// Whether the copy has sockets to make.
pub fn any(fds: &[FdState]) -> bool {
    fds.iter().any(|f| matches!(f.kind, FdKind::Socket(_)))
}

/// `struct sockaddr_*` bytes of `address`.
pub fn sockaddr(address: &SocketAddress) -> Result<Vec<u8>, RestoreError> {
    let mut out = Vec::with_capacity(28);
    match address {
        SocketAddress::Inet(std::net::SocketAddr::V4(a)) => {
            out.extend_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
            out.extend_from_slice(&a.port().to_be_bytes());
            out.extend_from_slice(&a.ip().octets());
            out.extend_from_slice(&[0; 8]);
        }
        SocketAddress::Inet(std::net::SocketAddr::V6(a)) => {
            out.extend_from_slice(&(libc::AF_INET6 as u16).to_ne_bytes());
            out.extend_from_slice(&a.port().to_be_bytes());
            out.extend_from_slice(&a.flowinfo().to_be_bytes());
            out.extend_from_slice(&a.ip().octets());
            out.extend_from_slice(&a.scope_id().to_ne_bytes());
        }
        SocketAddress::UnixPath(path) => {
            if path.len() >= 108 || path.contains('\0') {
                return Err(RestoreError::Unsupported(format!(
                    "Unix socket path {path:?} is too long or holds a NUL byte"
                )));
            }
            out.extend_from_slice(&(libc::AF_UNIX as u16).to_ne_bytes());
            out.extend_from_slice(path.as_bytes());
            out.push(0);
        }
        SocketAddress::UnixAbstract(name) => {
            if name.len() >= 108 {
                return Err(RestoreError::Unsupported(format!(
                    "abstract Unix socket name of {} bytes",
                    name.len()
                )));
            }
            out.extend_from_slice(&(libc::AF_UNIX as u16).to_ne_bytes());
            out.push(0);
            out.extend_from_slice(name);
        }
        SocketAddress::Netlink { groups, .. } => {
            // The port id is the kernel's choice (the copy's pid when it is
            // free): another process of the namespace may hold the saved one.
            out.extend_from_slice(&(libc::AF_NETLINK as u16).to_ne_bytes());
            out.extend_from_slice(&[0; 2]);
            out.extend_from_slice(&0u32.to_ne_bytes());
            out.extend_from_slice(&groups.to_ne_bytes());
        }
    }
    Ok(out)
}

/// Makes every socket of `fds` in the stub at its saved number (see the
/// module doc). Returns a description of every cut connection, `fd N
/// (tcp 10.0.0.5:5432 ESTABLISHED)`, each also logged.
pub fn restore(
    remote: &mut Remote,
    scratch: u64,
    fds: &[FdState],
    ids: FsIds,
) -> Result<Vec<String>, RestoreError> {
    let mut cut = Vec::new();
    for saved in fds {
        let FdKind::Socket(socket) = &saved.kind else {
            continue;
        };
        let nonblock = saved.flags & libc::O_NONBLOCK as u32 != 0;
        match &socket.role {
            SocketRole::Cut { .. } if socket.family == libc::AF_UNIX => {
                cut_unix(remote, scratch, saved.fd, socket, nonblock)?
            }
            SocketRole::Cut { .. } => cut_tcp(remote, scratch, saved.fd, socket, nonblock)?,
            _ => remake(remote, scratch, saved.fd, socket, nonblock, ids)?,
        }
        if let SocketRole::Listening { waiting, .. } = socket.role {
            if waiting > 0 {
                tracing::info!(
                    fd = saved.fd,
                    waiting,
                    "fd {} ({}): {waiting} connections waiting to be accepted at the snapshot are not in the copy",
                    saved.fd,
                    socket.describe()
                );
            }
        }
        if matches!(socket.role, SocketRole::Cut { .. }) {
            let line = format!("fd {} ({})", saved.fd, socket.describe());
            tracing::info!(fd = saved.fd, connection = %socket.describe(), "{line} was cut");
            cut.push(line);
        }
    }
    let mut batch = Batch::new(scratch);
    for saved in fds {
        if let FdKind::Dup { of } = saved.kind {
            if made_in_copy(saved, fds) {
                batch.call(
                    format!("dup3(fd {of}, fd {}) (socket)", saved.fd),
                    libc::SYS_dup3,
                    [of as u64, saved.fd as u64, 0, 0, 0, 0],
                );
            }
        }
    }
    remote.run(batch)?;
    Ok(cut)
}

/// `socket(family, type, protocol)` in the stub: its number.
fn new_socket(
    remote: &mut Remote,
    fd: i32,
    family: i32,
    ty: i32,
    protocol: i32,
) -> Result<i32, RestoreError> {
    let r = remote.sys(
        &format!("socket({family}, {ty}, {protocol}) for fd {fd}"),
        libc::SYS_socket,
        [family as u64, ty as u64, protocol as u64, 0, 0, 0],
    )?;
    Ok(r as i32)
}

/// Moves the stub's descriptor `from` to `to`.
fn place(batch: &mut Batch, from: i32, to: i32) {
    if from != to {
        batch.call(
            format!("dup3(fd {from}, fd {to}) (socket)"),
            libc::SYS_dup3,
            [from as u64, to as u64, 0, 0, 0, 0],
        );
        batch.call(
            format!("close(fd {from}) (socket)"),
            libc::SYS_close,
            [from as u64, 0, 0, 0, 0, 0],
        );
    }
}

fn setsockopt(
    batch: &mut Batch,
    fd: i32,
    level: i32,
    name: i32,
    value: &[u8],
) -> Result<(), RestoreError> {
    let at = batch.data(value)?;
    batch.call(
        format!("setsockopt(fd {fd}, {level}, {name})"),
        libc::SYS_setsockopt,
        [
            fd as u64,
            level as u64,
            name as u64,
            at,
            value.len() as u64,
            0,
        ],
    );
    Ok(())
}

/// The saved options and buffer sizes, set on the stub's `fd`.
fn set_options(batch: &mut Batch, fd: i32, socket: &SocketState) -> Result<(), RestoreError> {
    for o in &socket.options {
        setsockopt(batch, fd, o.level, o.name, &o.value)?;
    }
    if let Some(size) = socket.rcvbuf {
        setsockopt(
            batch,
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            &(size as i32).to_ne_bytes(),
        )?;
    }
    if let Some(size) = socket.sndbuf {
        setsockopt(
            batch,
            fd,
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            &(size as i32).to_ne_bytes(),
        )?;
    }
    Ok(())
}

fn set_nonblock(batch: &mut Batch, fd: i32, nonblock: bool) {
    if nonblock {
        batch.call(
            format!("fcntl(fd {fd}, F_SETFL, O_NONBLOCK)"),
            libc::SYS_fcntl,
            [
                fd as u64,
                libc::F_SETFL as u64,
                libc::O_NONBLOCK as u64,
                0,
                0,
                0,
            ],
        );
    }
}

/// Whether `address` is worth binding (an unbound netlink socket reads
/// back as port 0, no groups).
fn bound(address: &SocketAddress) -> bool {
    !matches!(address, SocketAddress::Netlink { port: 0, groups: 0 })
}

/// A listening, unconnected or connected (UDP) socket, made again.
fn remake(
    remote: &mut Remote,
    scratch: u64,
    fd: i32,
    socket: &SocketState,
    nonblock: bool,
    ids: FsIds,
) -> Result<(), RestoreError> {
    let made = new_socket(remote, fd, socket.family, socket.sock_type, socket.protocol)?;
    let mut batch = Batch::new(scratch);
    place(&mut batch, made, fd);
    set_options(&mut batch, fd, socket)?;
    if let Some(local) = socket.local.as_ref().filter(|a| bound(a)) {
        let addr = sockaddr(local)?;
        let at = batch.data(&addr)?;
        let path = matches!(local, SocketAddress::UnixPath(_));
        if path {
            // The path is made as the copy would make it.
            batch.call(
                "setfsgid (bind)",
                libc::SYS_setfsgid,
                [ids.gid as u64, 0, 0, 0, 0, 0],
            );
            batch.call(
                "setfsuid (bind)",
                libc::SYS_setfsuid,
                [ids.uid as u64, 0, 0, 0, 0, 0],
            );
            batch.call(
                "umask (bind)",
                libc::SYS_umask,
                [ids.umask as u64, 0, 0, 0, 0, 0],
            );
        }
        batch.call(
            format!("bind(fd {fd}, {local})"),
            libc::SYS_bind,
            [fd as u64, at, addr.len() as u64, 0, 0, 0],
        );
        if path {
            batch.call("setfsuid (after bind)", libc::SYS_setfsuid, [0; 6]);
            batch.call("setfsgid (after bind)", libc::SYS_setfsgid, [0; 6]);
        }
    }
    match &socket.role {
        SocketRole::Listening { backlog, .. } => batch.call(
            format!("listen(fd {fd}, {backlog})"),
            libc::SYS_listen,
            [fd as u64, *backlog as u64, 0, 0, 0, 0],
        ),
        SocketRole::Connected { peer } => {
            let addr = sockaddr(peer)?;
            let at = batch.data(&addr)?;
            batch.call(
                format!("connect(fd {fd}, {peer})"),
                libc::SYS_connect,
                [fd as u64, at, addr.len() as u64, 0, 0, 0],
            );
        }
        SocketRole::Open | SocketRole::Cut { .. } => {}
    }
    set_nonblock(&mut batch, fd, nonblock);
    remote.run(batch)
}

/// A TCP connection that is gone: made on the copy's loopback and reset
/// (see the module doc).
fn cut_tcp(
    remote: &mut Remote,
    scratch: u64,
    fd: i32,
    socket: &SocketState,
    nonblock: bool,
) -> Result<(), RestoreError> {
    let loopback = if socket.family == libc::AF_INET6 {
        SocketAddress::Inet("[::1]:0".parse().expect("an address"))
    } else {
        SocketAddress::Inet("127.0.0.1:0".parse().expect("an address"))
    };
    let any_port = sockaddr(&loopback)?;
    // The listener, on a port of the kernel's choice.
    let listener = new_socket(
        remote,
        fd,
        socket.family,
        libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
        0,
    )?;
    let mut batch = Batch::new(scratch);
    let at = batch.data(&any_port)?;
    batch.call(
        format!("bind(loopback listener for fd {fd})"),
        libc::SYS_bind,
        [listener as u64, at, any_port.len() as u64, 0, 0, 0],
    );
    batch.call(
        format!("listen(loopback listener for fd {fd})"),
        libc::SYS_listen,
        [listener as u64, 1, 0, 0, 0, 0],
    );
    let name_at = batch.data(&[0u8; 28])?;
    let len_at = batch.data(&(any_port.len() as u32).to_ne_bytes())?;
    batch.call(
        format!("getsockname(loopback listener for fd {fd})"),
        libc::SYS_getsockname,
        [listener as u64, name_at, len_at, 0, 0, 0],
    );
    remote.run(batch)?;
    let mut name = vec![0u8; any_port.len()];
    remote.read(name_at, &mut name)?;
    // The socket itself, connected to it (its options first: IPV6_V6ONLY
    // only takes before it is bound).
    let made = new_socket(remote, fd, socket.family, socket.sock_type, socket.protocol)?;
    let mut batch = Batch::new(scratch);
    set_options(&mut batch, made, socket)?;
    let at = batch.data(&name)?;
    batch.call(
        format!("connect(fd {fd} to its loopback listener)"),
        libc::SYS_connect,
        [made as u64, at, name.len() as u64, 0, 0, 0],
    );
    remote.run(batch)?;
    let accepted = remote.sys(
        &format!("accept4(loopback listener for fd {fd})"),
        libc::SYS_accept4,
        [listener as u64, 0, 0, libc::SOCK_CLOEXEC as u64, 0, 0],
    )? as i32;
    // The accepted end closes with SO_LINGER 0: a reset.
    let mut batch = Batch::new(scratch);
    let linger = [1i32.to_ne_bytes(), 0i32.to_ne_bytes()].concat();
    setsockopt(
        &mut batch,
        accepted,
        libc::SOL_SOCKET,
        libc::SO_LINGER,
        &linger,
    )?;
    for temporary in [accepted, listener] {
        batch.call(
            format!("close(loopback end for fd {fd})"),
            libc::SYS_close,
            [temporary as u64, 0, 0, 0, 0, 0],
        );
    }
    place(&mut batch, made, fd);
    set_nonblock(&mut batch, fd, nonblock);
    remote.run(batch)
}

/// A Unix stream connection that is gone: one end of a fresh pair whose
/// other end is closed.
fn cut_unix(
    remote: &mut Remote,
    scratch: u64,
    fd: i32,
    socket: &SocketState,
    nonblock: bool,
) -> Result<(), RestoreError> {
    let mut batch = Batch::new(scratch);
    let pair_at = batch.data(&[0u8; 8])?;
    batch.call(
        format!("socketpair (cut fd {fd})"),
        libc::SYS_socketpair,
        [
            libc::AF_UNIX as u64,
            socket.sock_type as u64,
            0,
            pair_at,
            0,
            0,
        ],
    );
    remote.run(batch)?;
    let mut pair = [0u8; 8];
    remote.read(pair_at, &mut pair)?;
    let this = i32::from_ne_bytes(pair[..4].try_into().expect("4 bytes"));
    let other = i32::from_ne_bytes(pair[4..].try_into().expect("4 bytes"));
    let mut batch = Batch::new(scratch);
    batch.call(
        format!("close(other end of cut fd {fd})"),
        libc::SYS_close,
        [other as u64, 0, 0, 0, 0, 0],
    );
    set_options(&mut batch, this, socket)?;
    place(&mut batch, this, fd);
    set_nonblock(&mut batch, fd, nonblock);
    remote.run(batch)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_addresses_encode_as_the_kernel_reads_them() {
        let v4 = sockaddr(&SocketAddress::Inet("127.0.0.1:8080".parse().unwrap())).unwrap();
        assert_eq!(v4.len(), 16);
        assert_eq!(&v4[2..8], &[0x1f, 0x90, 127, 0, 0, 1]);
        let v6 = sockaddr(&SocketAddress::Inet("[::1]:80".parse().unwrap())).unwrap();
        assert_eq!(v6.len(), 28);
        assert_eq!(v6[23], 1);
        let abs = sockaddr(&SocketAddress::UnixAbstract(b"x".to_vec())).unwrap();
        assert_eq!(&abs[2..], b"\0x");
        let path = sockaddr(&SocketAddress::UnixPath("/tmp/s".into())).unwrap();
        assert_eq!(&path[2..], b"/tmp/s\0");
        // Round trip through the capture's parser.
        for a in [
            SocketAddress::Inet("10.1.2.3:5432".parse().unwrap()),
            SocketAddress::Inet("[fe80::1%2]:443".parse().unwrap()),
            SocketAddress::UnixAbstract(b"thaw".to_vec()),
            SocketAddress::UnixPath("/run/x.sock".into()),
        ] {
            let parsed = snapshotter::capture::socket::parse_address(&sockaddr(&a).unwrap());
            assert_eq!(parsed.unwrap(), Some(a));
        }
        assert!(sockaddr(&SocketAddress::UnixPath("/".repeat(200))).is_err());
    }
}
