//! The network of a sandbox.
//!
//! Every sandbox has a network namespace of its own. With `network = "none"`
//! it holds only a loopback interface. With `network = "outbound"` the
//! server makes the namespace before the sandbox starts and joins it to the
//! host with a veth pair:
//!
//! ```text
//!  host (server's namespace)                     sandbox namespace
//!  ─────────────────────────                     ─────────────────
//!  thwXXXXXXXX  gateway/32  ◄──── veth ────►     eth0  address/32
//!    route address/32 dev thwXXXXXXXX              route gateway dev eth0
//!                                                  default via gateway
//!  nftables table `inet thaw`:
//!    forward  from thw*: IPv6 refused; network_allow entries accepted;
//!             private, link-local, loopback, CGNAT, multicast refused;
//!             the rest accepted and masqueraded out of the host.
//!             to thw*: only replies (established, related).
//!    input    from thw*: only DNS (UDP/TCP 53) to the gateway; everything
//!             else (the host's own addresses) refused.
//!  DNS forwarder of the server on gateway:53 (server/src/dns.rs);
//!  the sandbox's /etc/resolv.conf (a generated file bound over it)
//!  names the gateway.
//! ```
//!
//! * Addresses: the server's range (`network_range`, default
//!   [`DEFAULT_RANGE`]). Its first host address is the gateway, the same for
//!   every sandbox of the server (so a restored copy's resolver needs no
//!   change); each sandbox gets one more address of the range as a /32.
//! * The host-side link is named `thw` + the sandbox address in hex, so two
//!   servers sharing a range can never hand out one address twice: the
//!   kernel refuses the second link of a name. Its alias records the owning
//!   server (tag and pid), so a server that starts removes what a dead one
//!   left ([`HostNetwork::remove_stale`]).
//! * The sandbox's end is made in the new namespace directly (one `ip`
//!   batch on the host side) and configured from a thread inside it with
//!   ioctls (`ifconfig.rs`); the namespace reaches the sandbox init as a
//!   descriptor ([`super::NETNS_FD`]) that it joins with `setns` before
//!   making its other namespaces.
//! * Per-sandbox firewall state is only set elements keyed by interface
//!   index (`network_allow` entries); the rules are the same for every
//!   sandbox and every server, installed idempotently at the first outbound
//!   sandbox. A stale element of a dead link never matches a new one (the
//!   kernel does not reuse indexes until they wrap), and a server that
//!   starts removes those whose link is gone.
//! * Teardown (nft elements, then the link, whose peer goes with it) runs on
//!   a thread of its own, off the request path.

mod allow;
mod host;
mod ifconfig;
pub(super) mod inside;
mod range;

pub use allow::{AllowRule, AllowRuleError};
pub use range::Ipv4Range;

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// Default address range of outbound sandboxes: inside 100.64.0.0/10
/// (shared address space, never routed on the internet) and unlikely to be
/// used by the host.
pub const DEFAULT_RANGE: &str = "100.96.0.0/12";

/// Prefix of host-side interface names of sandboxes (`thw` + 8 hex digits).
pub const LINK_PREFIX: &str = "thw";

/// How a server's outbound sandboxes are networked.
#[derive(Debug, Clone)]
pub struct NetSettings {
    /// Addresses of gateway and sandboxes.
    pub range: Ipv4Range,
    /// Where the generated `resolv.conf` is written (bound in sandboxes).
    pub resolv_conf: PathBuf,
    /// Names this server's links (with its pid) in their alias.
    pub owner_tag: String,
}

/// Errors of setting up or tearing down sandbox networks.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// A command (`ip`, `nft`) failed.
    #[error("{what}: `{command}` failed: {stderr}")]
    Command {
        /// What was being done.
        what: &'static str,
        /// The command line.
        command: String,
        /// Its error output.
        stderr: String,
    },
    /// A command could not be run at all.
    #[error("{what}: cannot run `{command}` ({source}){hint}")]
    Spawn {
        /// What was being done.
        what: &'static str,
        /// The program.
        command: String,
        /// How to fix it.
        hint: &'static str,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A file or namespace operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Every address of the range is taken.
    #[error("no free address in the sandbox range {0} (network_range)")]
    Exhausted(Ipv4Range),
    /// The host already uses an address of the range.
    #[error("network_range {range} holds the host's address {address} (on {interface}): choose a range the host does not use")]
    RangeInUse {
        /// The configured range.
        range: Ipv4Range,
        /// The host's address inside it.
        address: Ipv4Addr,
        /// Its interface.
        interface: String,
    },
    /// The range cannot hold a gateway and a sandbox.
    #[error("network range {0} is too small (a /30 or larger is needed)")]
    RangeTooSmall(Ipv4Range),
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> NetError {
    let what = what.into();
    move |source| NetError::Io { what, source }
}

/// The host side of sandbox networking for one server: the address range,
/// what is allocated from it, and the one-time host setup.
#[derive(Debug)]
pub struct HostNetwork {
    settings: NetSettings,
    gateway: Ipv4Addr,
    alloc: Mutex<Alloc>,
    ready: Mutex<bool>,
}

#[derive(Debug, Default)]
struct Alloc {
    next: u64,
    used: HashSet<Ipv4Addr>,
}

impl HostNetwork {
    /// Prepares the network of a server's sandboxes: checks the range and
    /// writes the sandbox `resolv.conf`. Changes nothing on the host yet
    /// (that happens at the first outbound sandbox).
    pub fn new(settings: NetSettings) -> Result<Arc<HostNetwork>, NetError> {
        if settings.range.prefix() > 30 {
            return Err(NetError::RangeTooSmall(settings.range));
        }
        let gateway = settings.range.nth(1).expect("a /30 has a second address");
        let text = format!(
            "# Written by thaw: DNS is forwarded by the server on the sandbox's gateway.\n\
             nameserver {gateway}\noptions ndots:1 timeout:2 attempts:2\n"
        );
        if let Some(dir) = settings.resolv_conf.parent() {
            std::fs::create_dir_all(dir).map_err(io_err(format!("create {}", dir.display())))?;
        }
        std::fs::write(&settings.resolv_conf, text)
            .map_err(io_err(format!("write {}", settings.resolv_conf.display())))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            &settings.resolv_conf,
            std::fs::Permissions::from_mode(0o644),
        )
        .map_err(io_err("chmod resolv.conf"))?;
        Ok(Arc::new(HostNetwork {
            settings,
            gateway,
            alloc: Mutex::new(Alloc::default()),
            ready: Mutex::new(false),
        }))
    }

    /// The gateway address: where sandboxes send DNS queries and traffic.
    pub fn gateway(&self) -> Ipv4Addr {
        self.gateway
    }

    /// The address range.
    pub fn range(&self) -> Ipv4Range {
        self.settings.range
    }

    /// The `resolv.conf` bound in outbound sandboxes.
    pub fn resolv_conf(&self) -> &std::path::Path {
        &self.settings.resolv_conf
    }

    /// Refuses a range that holds one of the host's own addresses (other
    /// than gateways and sandbox links of thaw): routing into it would
    /// shadow the host's network.
    pub fn check_range(&self) -> Result<(), NetError> {
        let addrs = nix::ifaddrs::getifaddrs().map_err(|e| NetError::Io {
            what: "list the host's addresses".into(),
            source: e.into(),
        })?;
        for a in addrs {
            if a.interface_name.starts_with(LINK_PREFIX) {
                continue;
            }
            let Some(v4) = a.address.as_ref().and_then(|s| s.as_sockaddr_in()) else {
                continue;
            };
            let ip = v4.ip();
            if self.settings.range.contains(ip) {
                return Err(NetError::RangeInUse {
                    range: self.settings.range,
                    address: ip,
                    interface: a.interface_name.clone(),
                });
            }
        }
        Ok(())
    }

    /// Removes sandbox links a dead server left behind (ours from an earlier
    /// run, or any whose owner process is gone). Returns how many.
    pub fn remove_stale(&self) -> Result<usize, NetError> {
        let links = host::remove_stale_links(&self.settings.owner_tag)?;
        Ok(links + host::remove_stale_elements())
    }

    fn ensure_ready(&self) -> Result<(), NetError> {
        let mut ready = self.ready.lock().unwrap_or_else(|e| e.into_inner());
        if !*ready {
            host::install(self.settings.range, self.gateway)?;
            *ready = true;
        }
        Ok(())
    }

    fn take_address(&self) -> Option<Ipv4Addr> {
        let mut alloc = self.alloc.lock().unwrap_or_else(|e| e.into_inner());
        // Host addresses after the gateway, before the broadcast address.
        let count = self.settings.range.size() - 3;
        for _ in 0..count {
            let i = 2 + alloc.next % count;
            alloc.next = (alloc.next + 1) % count;
            let addr = self.settings.range.nth(i).expect("inside the range");
            if alloc.used.insert(addr) {
                return Some(addr);
            }
        }
        None
    }

    fn release(&self, addr: Ipv4Addr) {
        let mut alloc = self.alloc.lock().unwrap_or_else(|e| e.into_inner());
        alloc.used.remove(&addr);
    }

    /// Makes the network of one outbound sandbox: a new network namespace
    /// joined to the host by a veth pair, with an address of the range and
    /// `allow` opened. Blocking (runs `ip` and `nft`): call it from a
    /// blocking task.
    pub fn lease(self: &Arc<Self>, allow: &[AllowRule]) -> Result<NetLease, NetError> {
        self.ensure_ready()?;
        // Addresses another server holds (its link exists) are skipped.
        let mut tries = 0;
        loop {
            let addr = self
                .take_address()
                .ok_or(NetError::Exhausted(self.settings.range))?;
            let link = format!("{LINK_PREFIX}{:08x}", u32::from(addr));
            match host::make_pair(&link, addr, self.gateway, &self.settings.owner_tag) {
                Ok(netns) => {
                    let mut lease = NetLease {
                        net: self.clone(),
                        ifindex: 0,
                        link,
                        addr,
                        allow: Vec::new(),
                        netns: Some(netns),
                        closed: false,
                    };
                    // From here on, dropping the lease tears down the link.
                    lease.ifindex = host::ifindex(&lease.link)?;
                    if !allow.is_empty() {
                        host::allow(lease.ifindex, allow)?;
                        lease.allow = allow.to_vec();
                    }
                    return Ok(lease);
                }
                Err(host::PairError::Taken) => {
                    tries += 1;
                    if tries > 64 {
                        self.release(addr);
                        return Err(NetError::Exhausted(self.settings.range));
                    }
                    // Keep it marked used until this server restarts: it
                    // belongs to another server.
                }
                Err(host::PairError::Failed(e)) => {
                    self.release(addr);
                    return Err(e);
                }
            }
        }
    }
}

/// The network of one outbound sandbox. [`NetLease::close`] tears it down
/// (nft elements, then the veth pair) and returns the address to the
/// range; dropping it does the same on a thread of its own.
#[derive(Debug)]
pub struct NetLease {
    net: Arc<HostNetwork>,
    link: String,
    ifindex: u32,
    addr: Ipv4Addr,
    allow: Vec<AllowRule>,
    netns: Option<OwnedFd>,
    closed: bool,
}

impl NetLease {
    /// The sandbox's address.
    pub fn address(&self) -> Ipv4Addr {
        self.addr
    }

    /// The host-side interface name.
    pub fn link(&self) -> &str {
        &self.link
    }

    /// The network namespace the sandbox init joins.
    pub fn netns(&self) -> Option<&OwnedFd> {
        self.netns.as_ref()
    }

    /// The `resolv.conf` to bind in the sandbox.
    pub fn resolv_conf(&self) -> PathBuf {
        self.net.resolv_conf().to_path_buf()
    }

    /// Closes the server's handle of the namespace (the sandbox holds it).
    pub fn forget_netns(&mut self) {
        self.netns = None;
    }

    /// Tears the network down now (blocking: runs `nft` and `ip`).
    pub fn close(mut self) -> Result<(), NetError> {
        self.netns = None;
        let allow = std::mem::take(&mut self.allow);
        let result = host::teardown(&self.link, self.ifindex, &allow);
        self.net.release(self.addr);
        self.closed = true;
        result
    }
}

impl Drop for NetLease {
    fn drop(&mut self) {
        if self.closed {
            return;
        }
        let net = self.net.clone();
        let (link, ifindex, addr) = (self.link.clone(), self.ifindex, self.addr);
        let allow = std::mem::take(&mut self.allow);
        self.netns = None;
        let spawned = std::thread::Builder::new()
            .name("thaw-net-teardown".into())
            .spawn(move || {
                if let Err(e) = host::teardown(&link, ifindex, &allow) {
                    tracing::warn!(%link, error = %e, "sandbox network teardown failed");
                }
                net.release(addr);
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot start the network teardown thread");
        }
    }
}
