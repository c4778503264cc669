//! Loopback-only network namespaces kept for reuse.
//!
//! Making a network namespace is cheap, destroying one is not: the kernel
//! tears it down in a kworker (`cleanup_net`), charged to no cgroup, and
//! RCU grace periods follow. A sandbox with `network = "none"` has a
//! namespace with only `lo` in it that its function, running without
//! capabilities, cannot reconfigure; once the sandbox is gone that namespace
//! can serve the next sandbox of the same function, if it is provably
//! empty:
//!
//! ```text
//! launch   take a namespace kept for this function (its code folder), if
//!          any: the init joins it (NETNS_FD) instead of unsharing one;
//!          otherwise the init makes one and the launcher keeps a handle
//!          (/proc/OUTER/ns/net) to offer it back later
//! destroy  every process of the sandbox dead and reaped, then on the
//!          checker thread: setns into it and read its /proc/net files —
//!          no socket of any kind ("sockets: used 0"), no TCP socket in
//!          TIME_WAIT ("tw 0"), no UDP, raw or fragment state, only the
//!          interface `lo`, up, and its addresses only 127.0.0.1/8 and ::1;
//!          kept if so (at most PER_KEY per function, TOTAL in all),
//!          else dropped (the kernel destroys it as before)
//! ```
//!
//! Kept only for the same function: a namespace carries counters (`lo`'s
//! bytes and packets, `/proc/net/snmp`) that a later sandbox can read, so
//! they only ever show a sandbox what earlier copies of its own function
//! did. The function cannot change the namespace's configuration (no
//! `CAP_NET_ADMIN` over it; the init and the stub, which are privileged,
//! only bring `lo` up); the checks above hold whatever it did.
//! `THAW_NETNS_REUSE=0` turns reuse off.

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Mutex, OnceLock};

use nix::sched::{setns, CloneFlags};

/// Namespaces kept per function.
pub const PER_KEY: usize = 8;
/// Namespaces kept in all.
pub const TOTAL: usize = 64;

/// Environment variable turning reuse off (`0`).
pub const REUSE_ENV: &str = "THAW_NETNS_REUSE";

/// Whether namespaces are reused in this process.
pub fn reuse_enabled() -> bool {
    std::env::var_os(REUSE_ENV).is_none_or(|v| v != "0")
}

/// Kept namespaces, by function (code folder), oldest first.
#[derive(Default)]
struct Kept {
    by_key: HashMap<PathBuf, Vec<OwnedFd>>,
    total: usize,
    /// Namespaces taken from here again, since the start.
    reused: u64,
    /// Namespaces offered back and refused by the checks.
    refused: u64,
}

fn kept() -> &'static Mutex<Kept> {
    static KEPT: OnceLock<Mutex<Kept>> = OnceLock::new();
    KEPT.get_or_init(|| Mutex::new(Kept::default()))
}

/// A kept namespace for a sandbox of the function whose code is `key`.
pub fn take(key: &Path) -> Option<OwnedFd> {
    if !reuse_enabled() {
        return None;
    }
    let mut k = kept().lock().unwrap();
    let ns = k.by_key.get_mut(key)?.pop()?;
    k.total -= 1;
    k.reused += 1;
    Some(ns)
}

/// `(reused, refused)` since the start of this process.
pub fn stats() -> (u64, u64) {
    let k = kept().lock().unwrap();
    (k.reused, k.refused)
}

/// Offers back the namespace of a sandbox of `key` whose processes are all
/// gone: kept if [`check_clean`] passes and there is room. Blocking (a
/// round trip to the checker thread).
pub fn give_back(key: &Path, ns: OwnedFd) {
    if !reuse_enabled() {
        return;
    }
    {
        let k = kept().lock().unwrap();
        if k.total >= TOTAL || k.by_key.get(key).is_some_and(|v| v.len() >= PER_KEY) {
            return;
        }
    }
    let clean = check_clean(&ns);
    let mut k = kept().lock().unwrap();
    if let Err(why) = clean {
        k.refused += 1;
        tracing::debug!(%why, "network namespace not reused");
        return;
    }
    if k.total >= TOTAL {
        return;
    }
    let list = k.by_key.entry(key.to_path_buf()).or_default();
    if list.len() < PER_KEY {
        list.push(ns);
        k.total += 1;
    }
}

/// Drops every namespace kept for `key` (its function is gone).
pub fn forget(key: &Path) {
    let mut k = kept().lock().unwrap();
    if let Some(list) = k.by_key.remove(key) {
        k.total -= list.len();
    }
}

/// A request to the checker thread.
type Check = (OwnedFd, mpsc::Sender<Result<(), String>>);

/// The thread that enters namespaces to read their `/proc/net` files: a
/// thread of its own, so that no other code ever runs in a sandbox's
/// namespace (it goes back to its own after each check, and ends if it
/// cannot).
fn checker() -> &'static Mutex<Option<mpsc::Sender<Check>>> {
    static CHECKER: OnceLock<Mutex<Option<mpsc::Sender<Check>>>> = OnceLock::new();
    CHECKER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Check>();
        let started = std::thread::Builder::new()
            .name("thaw-netns".into())
            .spawn(move || {
                let Ok(home) = std::fs::File::open("/proc/thread-self/ns/net") else {
                    return;
                };
                while let Ok((ns, reply)) = rx.recv() {
                    let result = inspect(&ns);
                    if setns(home.as_fd(), CloneFlags::CLONE_NEWNET).is_err() {
                        let _ = reply.send(Err("cannot return to the home namespace".into()));
                        // Never serve another check from a foreign namespace.
                        return;
                    }
                    let _ = reply.send(result);
                }
            });
        Mutex::new(started.ok().map(|_| tx))
    })
}

/// Whether the namespace `ns` is as a fresh loopback-only one, its counters
/// aside (see the module docs). Blocking.
pub fn check_clean(ns: &OwnedFd) -> Result<(), String> {
    let ns = ns.try_clone().map_err(|e| format!("dup: {e}"))?;
    let (tx, rx) = mpsc::channel();
    {
        let mut checker = checker().lock().unwrap();
        let Some(sender) = checker.as_ref() else {
            return Err("no checker thread".into());
        };
        if sender.send((ns, tx)).is_err() {
            *checker = None;
            return Err("the checker thread is gone".into());
        }
    }
    rx.recv()
        .map_err(|_| "the checker thread is gone".to_string())?
}

/// On the checker thread: enters `ns` and reads it.
fn inspect(ns: &OwnedFd) -> Result<(), String> {
    setns(ns.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|e| format!("setns: {e}"))?;
    let read = |f: &str| {
        std::fs::read_to_string(format!("/proc/thread-self/net/{f}"))
            .map_err(|e| format!("read {f}: {e}"))
    };
    sockets_clean(&read("sockstat")?, &read("sockstat6")?)?;
    interfaces_clean(&read("dev")?, &read("if_inet6").unwrap_or_default())?;
    loopback_clean()
}

/// No socket at all, none in TIME_WAIT, no fragments queued.
fn sockets_clean(sockstat: &str, sockstat6: &str) -> Result<(), String> {
    for line in sockstat.lines().chain(sockstat6.lines()) {
        let Some((proto, rest)) = line.split_once(':') else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        for pair in fields.chunks(2) {
            let [key, value] = pair else { continue };
            // `alloc`, `mem` and `orphan` count the whole machine; the
            // others this namespace.
            let per_namespace = matches!(*key, "used" | "inuse" | "tw" | "memory");
            if per_namespace && *value != "0" {
                return Err(format!("{proto}: {key} {value}"));
            }
        }
    }
    Ok(())
}

/// Only `lo` (from `/proc/net/dev`), and IPv6 only on it as `::1`.
fn interfaces_clean(dev: &str, if_inet6: &str) -> Result<(), String> {
    let names: Vec<&str> = dev
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next().map(str::trim))
        .collect();
    if names != ["lo"] {
        return Err(format!("interfaces {names:?}"));
    }
    for line in if_inet6.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.first() != Some(&"00000000000000000000000000000001") || f.last() != Some(&"lo") {
            return Err(format!("IPv6 address {line}"));
        }
    }
    Ok(())
}

/// `lo` is up with exactly 127.0.0.1/8 (the kernel's own), read with an
/// ioctl socket made in the namespace (closed before returning, so the
/// next check does not see it).
fn loopback_clean() -> Result<(), String> {
    use std::os::fd::{AsRawFd, FromRawFd};
    // SAFETY: plain socket(2); checked and owned below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(format!("socket: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: a fresh socket nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: ifreq is plain data; all-zero is valid.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS fills req, which lives for the call.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) } < 0 {
        return Err(format!("lo flags: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: the member SIOCGIFFLAGS filled.
    let flags = unsafe { req.ifr_ifru.ifru_flags } as libc::c_int;
    if flags & libc::IFF_UP == 0 {
        return Err("lo is down".into());
    }
    // Every IPv4 address of the namespace (SIOCGIFCONF): only lo's own.
    let mut buf = [0u8; 4 * std::mem::size_of::<libc::ifreq>()];
    // SAFETY: ifconf is plain data; all-zero is valid.
    let mut conf: libc::ifconf = unsafe { std::mem::zeroed() };
    conf.ifc_len = buf.len() as libc::c_int;
    conf.ifc_ifcu.ifcu_buf = buf.as_mut_ptr().cast();
    // SAFETY: SIOCGIFCONF writes at most ifc_len bytes into buf, which
    // lives for the call.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFCONF, &mut conf) } < 0 {
        return Err(format!("addresses: {}", std::io::Error::last_os_error()));
    }
    let n = conf.ifc_len as usize / std::mem::size_of::<libc::ifreq>();
    if n != 1 {
        return Err(format!("{n} IPv4 addresses"));
    }
    // SAFETY: the kernel wrote one ifreq at the start of buf; read it
    // unaligned as bytes were.
    let one: libc::ifreq = unsafe { std::ptr::read_unaligned(buf.as_ptr().cast()) };
    // SAFETY: for SIOCGIFCONF the address member is filled, an AF_INET
    // sockaddr_in.
    let addr: libc::sockaddr_in = unsafe {
        std::ptr::read_unaligned((&one.ifr_ifru.ifru_addr as *const libc::sockaddr).cast())
    };
    if u32::from_be(addr.sin_addr.s_addr) != 0x7f00_0001 {
        return Err(format!(
            "IPv4 address {}",
            std::net::Ipv4Addr::from(u32::from_be(addr.sin_addr.s_addr))
        ));
    }
    Ok(())
}

/// A handle on the network namespace of process `pid` (host pid).
pub fn of_process(pid: u32) -> std::io::Result<OwnedFd> {
    Ok(std::fs::File::open(format!("/proc/{pid}/ns/net"))?.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockstat_of_an_empty_namespace_passes() {
        let four = "sockets: used 0\nTCP: inuse 0 orphan 3 tw 0 alloc 41 mem 2\nUDP: inuse 0 mem 5\nUDPLITE: inuse 0\nRAW: inuse 0\nFRAG: inuse 0 memory 0\n";
        let six = "TCP6: inuse 0\nUDP6: inuse 0\nUDPLITE6: inuse 0\nRAW6: inuse 0\nFRAG6: inuse 0 memory 0\n";
        assert_eq!(sockets_clean(four, six), Ok(()));
    }

    #[test]
    fn a_socket_or_time_wait_is_refused() {
        let six = "TCP6: inuse 0\n";
        let used = "sockets: used 1\nTCP: inuse 0 orphan 0 tw 0 alloc 1 mem 0\n";
        assert_eq!(sockets_clean(used, six), Err("sockets: used 1".into()));
        let tw = "sockets: used 0\nTCP: inuse 0 orphan 0 tw 2 alloc 1 mem 0\n";
        assert_eq!(sockets_clean(tw, six), Err("TCP: tw 2".into()));
        let frag = "sockets: used 0\nFRAG: inuse 0 memory 4096\n";
        assert_eq!(sockets_clean(frag, six), Err("FRAG: memory 4096".into()));
    }

    #[test]
    fn only_loopback_interfaces_pass() {
        let dev = "Inter-|   Receive\n face |bytes\n    lo: 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0\n";
        let six = "00000000000000000000000000000001 01 80 10 80       lo\n";
        assert_eq!(interfaces_clean(dev, six), Ok(()));
        let dummy = format!("{dev}  dummy0: 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0\n");
        assert!(interfaces_clean(&dummy, six).is_err());
        let extra = format!("{six}fd000000000000000000000000000001 01 40 00 80       lo\n");
        assert!(interfaces_clean(dev, &extra).is_err());
    }
}
