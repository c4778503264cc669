//! The DNS forwarder outbound sandboxes use: it listens on the sandboxes'
//! gateway address, port 53, UDP and TCP, and relays each query unchanged
//! to the host's resolvers (from the host's `/etc/resolv.conf`, or the
//! `dns_upstream` setting). Sandboxes cannot reach the host's resolver
//! themselves: it may sit on a private address or on the host's loopback
//! (127.0.0.53), both refused to them.
//!
//! The sockets are bound with `IP_FREEBIND` (the gateway address exists
//! only while a sandbox's link carries it) and `SO_REUSEPORT` (several
//! servers on one host may share a range and so a gateway). Work per
//! sandbox is bounded: queries in flight and TCP connections are capped,
//! and every exchange has a deadline.

use std::net::{IpAddr, SocketAddr};
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use nix::sys::socket::{self, sockopt, AddressFamily, SockFlag, SockType, SockaddrStorage};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Semaphore;

/// How long one upstream may take to answer.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);
/// An idle TCP client is dropped after this long.
const TCP_IDLE: Duration = Duration::from_secs(10);
/// Most UDP queries relayed at once.
const MAX_UDP_IN_FLIGHT: usize = 256;
/// Most TCP clients at once.
const MAX_TCP_CLIENTS: usize = 64;
/// Largest message (TCP framing allows 64 KiB).
const MAX_MESSAGE: usize = 65_535;

/// The host's resolvers from a `resolv.conf` text (port 53).
pub fn resolvers_from(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            (words.next() == Some("nameserver"))
                .then(|| words.next())
                .flatten()
        })
        // A scoped IPv6 address (fe80::1%eth0) is left out.
        .filter_map(|a| a.parse::<IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

/// Parses `ip` or `ip:port` (IPv6 as `[ip]:port`).
pub fn parse_upstream(s: &str) -> Result<SocketAddr, String> {
    let s = s.trim();
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, 53));
    }
    s.parse::<SocketAddr>()
        .map_err(|_| format!("{s:?} is not an address or address:port"))
}

/// A running forwarder.
#[derive(Debug)]
pub struct Forwarder {
    /// The address it answers on.
    pub addr: SocketAddr,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn bound_socket(addr: SocketAddr, ty: SockType) -> Result<OwnedFd> {
    let family = match addr {
        SocketAddr::V4(_) => AddressFamily::Inet,
        SocketAddr::V6(_) => AddressFamily::Inet6,
    };
    let fd = socket::socket(
        family,
        ty,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )
    .context("dns socket")?;
    socket::setsockopt(&fd, sockopt::ReuseAddr, &true).context("SO_REUSEADDR")?;
    socket::setsockopt(&fd, sockopt::ReusePort, &true).context("SO_REUSEPORT")?;
    if addr.is_ipv4() {
        socket::setsockopt(&fd, sockopt::IpFreebind, &true).context("IP_FREEBIND")?;
    }
    socket::bind(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &SockaddrStorage::from(addr),
    )
    .with_context(|| format!("bind {addr}"))?;
    Ok(fd)
}

/// Starts a forwarder on `addr` (UDP and TCP) relaying to `upstreams`.
pub fn start(addr: SocketAddr, upstreams: Vec<SocketAddr>) -> Result<Forwarder> {
    anyhow::ensure!(
        !upstreams.is_empty(),
        "no upstream resolver (dns_upstream, or nameserver lines in /etc/resolv.conf)"
    );
    let udp_fd = bound_socket(addr, SockType::Datagram)?;
    let udp = UdpSocket::from_std(std::net::UdpSocket::from(udp_fd)).context("dns udp socket")?;
    let addr = udp.local_addr()?;
    // TCP on the same port (the UDP bind picked it if `addr` had port 0).
    let tcp_fd = bound_socket(addr, SockType::Stream)?;
    socket::listen(&tcp_fd, socket::Backlog::new(128).expect("valid backlog"))
        .context("dns listen")?;
    let tcp =
        TcpListener::from_std(std::net::TcpListener::from(tcp_fd)).context("dns tcp socket")?;
    let upstreams = Arc::new(upstreams);
    let tasks = vec![
        tokio::spawn(serve_udp(Arc::new(udp), upstreams.clone())),
        tokio::spawn(serve_tcp(tcp, upstreams)),
    ];
    Ok(Forwarder { addr, tasks })
}

/// A query worth relaying: a header and the query flag clear.
fn is_query(msg: &[u8]) -> bool {
    msg.len() >= 12 && msg[2] & 0x80 == 0
}

async fn serve_udp(socket: Arc<UdpSocket>, upstreams: Arc<Vec<SocketAddr>>) {
    let slots = Arc::new(Semaphore::new(MAX_UDP_IN_FLIGHT));
    let mut buf = vec![0u8; MAX_MESSAGE];
    loop {
        let (n, client) = match socket.recv_from(&mut buf).await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "dns forwarder: receive failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let query = buf[..n].to_vec();
        if !is_query(&query) {
            continue;
        }
        // Over the cap, a query is dropped: the client retries.
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            continue;
        };
        let (socket, upstreams) = (socket.clone(), upstreams.clone());
        tokio::spawn(async move {
            let _permit = permit;
            if let Some(answer) = relay_udp(&query, &upstreams).await {
                let _ = socket.send_to(&answer, client).await;
            }
        });
    }
}

async fn relay_udp(query: &[u8], upstreams: &[SocketAddr]) -> Option<Vec<u8>> {
    for up in upstreams {
        let local: SocketAddr = if up.is_ipv4() {
            "0.0.0.0:0".parse().expect("valid")
        } else {
            "[::]:0".parse().expect("valid")
        };
        let Ok(sock) = UdpSocket::bind(local).await else {
            continue;
        };
        if sock.connect(up).await.is_err() || sock.send(query).await.is_err() {
            continue;
        }
        let mut buf = vec![0u8; MAX_MESSAGE];
        let deadline = tokio::time::Instant::now() + UPSTREAM_TIMEOUT;
        // Skip stray datagrams whose id is not the query's.
        while let Ok(Ok(n)) = tokio::time::timeout_at(deadline, sock.recv(&mut buf)).await {
            if n >= 12 && buf[..2] == query[..2] && buf[2] & 0x80 != 0 {
                buf.truncate(n);
                return Some(buf);
            }
        }
    }
    None
}

async fn serve_tcp(listener: TcpListener, upstreams: Arc<Vec<SocketAddr>>) {
    let slots = Arc::new(Semaphore::new(MAX_TCP_CLIENTS));
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            continue;
        };
        let upstreams = upstreams.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let _ = serve_tcp_client(stream, &upstreams).await;
        });
    }
}

async fn read_frame(stream: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let len = stream.read_u16().await? as usize;
    let mut msg = vec![0u8; len];
    stream.read_exact(&mut msg).await?;
    Ok(msg)
}

async fn write_frame(stream: &mut TcpStream, msg: &[u8]) -> std::io::Result<()> {
    let len = u16::try_from(msg.len()).map_err(|_| std::io::Error::other("message too long"))?;
    let mut out = Vec::with_capacity(msg.len() + 2);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(msg);
    stream.write_all(&out).await
}

async fn serve_tcp_client(mut client: TcpStream, upstreams: &[SocketAddr]) -> std::io::Result<()> {
    loop {
        let query = tokio::time::timeout(TCP_IDLE, read_frame(&mut client))
            .await
            .map_err(|_| std::io::Error::other("idle"))??;
        if !is_query(&query) {
            return Ok(());
        }
        let mut answered = false;
        for up in upstreams {
            let exchange = async {
                let mut s = TcpStream::connect(up).await?;
                write_frame(&mut s, &query).await?;
                read_frame(&mut s).await
            };
            if let Ok(Ok(answer)) = tokio::time::timeout(UPSTREAM_TIMEOUT, exchange).await {
                write_frame(&mut client, &answer).await?;
                answered = true;
                break;
            }
        }
        if !answered {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(id: u16) -> Vec<u8> {
        // Header (id, RD, one question) + "a.test" IN A.
        let mut q = id.to_be_bytes().to_vec();
        q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
        q.extend_from_slice(b"\x01a\x04test\x00\x00\x01\x00\x01");
        q
    }

    fn answer_to(q: &[u8]) -> Vec<u8> {
        let mut a = q.to_vec();
        a[2] |= 0x80;
        a.extend_from_slice(b"ANSWER");
        a
    }

    #[test]
    fn resolvers_come_from_nameserver_lines() {
        let got = resolvers_from(
            "# x\nsearch lan\nnameserver 10.255.255.53\nnameserver ::1\nnameserver fe80::1%eth0\n",
        );
        assert_eq!(
            got,
            vec![
                "10.255.255.53:53".parse().unwrap(),
                "[::1]:53".parse().unwrap()
            ]
        );
        assert_eq!(
            parse_upstream("203.0.113.10").unwrap(),
            "203.0.113.10:53".parse().unwrap()
        );
        assert_eq!(
            parse_upstream("127.0.0.1:5353").unwrap(),
            "127.0.0.1:5353".parse().unwrap()
        );
        assert!(parse_upstream("resolver.lan").is_err());
    }

    #[tokio::test]
    async fn queries_are_relayed_over_udp_and_tcp() {
        // An upstream on loopback that answers UDP and TCP.
        let up_udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let up_addr = up_udp.local_addr().unwrap();
        let up_tcp = TcpListener::bind(up_addr).await.unwrap();
        tokio::spawn(async move {
            let mut buf = [0u8; 512];
            loop {
                let (n, from) = up_udp.recv_from(&mut buf).await.unwrap();
                // A stray answer with another id first: must be skipped.
                let mut stray = answer_to(&buf[..n]);
                stray[0] ^= 0xff;
                up_udp.send_to(&stray, from).await.unwrap();
                up_udp.send_to(&answer_to(&buf[..n]), from).await.unwrap();
            }
        });
        tokio::spawn(async move {
            loop {
                let (mut s, _) = up_tcp.accept().await.unwrap();
                let q = read_frame(&mut s).await.unwrap();
                write_frame(&mut s, &answer_to(&q)).await.unwrap();
            }
        });
        // A dead upstream first: the forwarder moves on to the next.
        let dead = UdpSocket::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap();
        let fwd = start("127.0.0.1:0".parse().unwrap(), vec![dead, up_addr]).unwrap();

        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        client.send_to(&query(0x1234), fwd.addr).await.unwrap();
        let mut buf = [0u8; 512];
        let n = tokio::time::timeout(Duration::from_secs(10), client.recv(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&buf[..n], &answer_to(&query(0x1234))[..]);

        let mut s = TcpStream::connect(fwd.addr).await.unwrap();
        write_frame(&mut s, &query(7)).await.unwrap();
        assert_eq!(read_frame(&mut s).await.unwrap(), answer_to(&query(7)));
        // Answers (not queries) are not relayed.
        write_frame(&mut s, &answer_to(&query(8))).await.unwrap();
        assert!(read_frame(&mut s).await.is_err());
    }
}
