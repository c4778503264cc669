//! Addresses and routes inside a new sandbox namespace, set with the
//! classic `SIOC*` ioctls from a thread in that namespace: four system
//! calls instead of starting an `ip` process (which, on a busy machine,
//! costs more than all of the namespace's netlink work).

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

fn last_err(what: &str) -> io::Error {
    let e = io::Error::last_os_error();
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

fn ifreq(name: &str) -> libc::ifreq {
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req
        .ifr_name
        .iter_mut()
        .zip(name.bytes().take(libc::IFNAMSIZ - 1))
    {
        *dst = src as libc::c_char;
    }
    req
}

fn sockaddr(ip: Ipv4Addr) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(ip).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr have the same size (16 bytes) and
    // sockaddr is plain old data; the kernel reads it as sockaddr_in.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

const _: () =
    assert!(std::mem::size_of::<libc::sockaddr_in>() == std::mem::size_of::<libc::sockaddr>());

fn inet_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2) call; the result is checked and owned below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(last_err("socket"));
    }
    // SAFETY: fd is a fresh, valid socket that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn set_up(sock: &OwnedFd, name: &str) -> io::Result<()> {
    let mut req = ifreq(name);
    // SAFETY: SIOCGIFFLAGS fills req's flags; req lives for the call.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) } < 0 {
        return Err(last_err(&format!("read flags of {name}")));
    }
    // SAFETY: ifru_flags is the union member SIOCGIFFLAGS filled.
    unsafe { req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
    // SAFETY: SIOCSIFFLAGS reads req, which lives for the call.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) } < 0 {
        return Err(last_err(&format!("bring up {name}")));
    }
    Ok(())
}

fn set_addr(sock: &OwnedFd, name: &str, request: libc::c_ulong, ip: Ipv4Addr) -> io::Result<()> {
    let mut req = ifreq(name);
    req.ifr_ifru.ifru_addr = sockaddr(ip);
    // SAFETY: SIOCSIFADDR/SIOCSIFNETMASK read req, which lives for the call.
    if unsafe { libc::ioctl(sock.as_raw_fd(), request, &req) } < 0 {
        return Err(last_err(&format!("set address {ip} on {name}")));
    }
    Ok(())
}

fn add_route(
    sock: &OwnedFd,
    dev: &str,
    dst: Ipv4Addr,
    mask: Ipv4Addr,
    gateway: Option<Ipv4Addr>,
) -> io::Result<()> {
    let mut dev_name: Vec<libc::c_char> = dev.bytes().map(|b| b as libc::c_char).collect();
    dev_name.push(0);
    // SAFETY: rtentry is plain old data; all-zero is a valid value.
    let mut rt: libc::rtentry = unsafe { std::mem::zeroed() };
    rt.rt_dst = sockaddr(dst);
    rt.rt_genmask = sockaddr(mask);
    rt.rt_flags = libc::RTF_UP;
    if mask == Ipv4Addr::BROADCAST {
        rt.rt_flags |= libc::RTF_HOST;
    }
    if let Some(gw) = gateway {
        rt.rt_gateway = sockaddr(gw);
        rt.rt_flags |= libc::RTF_GATEWAY;
    }
    rt.rt_dev = dev_name.as_mut_ptr();
    // SAFETY: SIOCADDRT reads rt and the device name it points to; both
    // live for the call.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCADDRT, &rt) } < 0 {
        return Err(last_err(&format!("add route to {dst}/{mask} on {dev}")));
    }
    Ok(())
}

/// Inside the calling thread's network namespace: loopback up; `eth0`
/// without IPv6, with `addr`/32, up; a route to `gateway` on the link and
/// the default route through it.
pub(super) fn configure_inside(addr: Ipv4Addr, gateway: Ipv4Addr) -> io::Result<()> {
    let sock = inet_socket()?;
    set_up(&sock, "lo")?;
    // No IPv6 on the link (not even link-local): /proc/sys/net is the
    // opening thread's namespace's.
    let _ = std::fs::write("/proc/sys/net/ipv6/conf/eth0/disable_ipv6", "1");
    set_addr(&sock, "eth0", libc::SIOCSIFADDR, addr)?;
    set_addr(&sock, "eth0", libc::SIOCSIFNETMASK, Ipv4Addr::BROADCAST)?;
    set_up(&sock, "eth0")?;
    add_route(&sock, "eth0", gateway, Ipv4Addr::BROADCAST, None)?;
    add_route(
        &sock,
        "eth0",
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        Some(gateway),
    )
}
