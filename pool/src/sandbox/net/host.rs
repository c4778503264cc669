//! Host-side commands: the nftables rules, veth pairs, stale links. Runs
//! `ip` (iproute2) and `nft` (nftables); everything here blocks.

use std::io::Write;
use std::net::Ipv4Addr;
use std::os::fd::OwnedFd;
use std::process::{Command, Stdio};

use super::{io_err, AllowRule, Ipv4Range, NetError, LINK_PREFIX};

/// The nftables table every thaw server on the host shares.
pub(super) const TABLE: &str = "thaw";

/// Destinations an outbound sandbox may not reach unless `network_allow`
/// names them: "this" network, private (RFC 1918), shared address space
/// (RFC 6598, which holds the sandboxes' own range), loopback, link-local
/// (cloud metadata at 169.254.169.254), IETF protocol assignments,
/// benchmarking, multicast and reserved.
pub(super) const REFUSED_V4: &[&str] = &[
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.0.0.0/24",
    "192.168.0.0/16",
    "198.18.0.0/15",
    "224.0.0.0/3",
];

/// Metric of the catch-all route of the sandbox range: below every
/// sandbox's own route, it keeps packets for a sandbox that is gone on the
/// host instead of following the default route out.
const RANGE_ROUTE_METRIC: u32 = 4242;

fn run(
    what: &'static str,
    program: &str,
    args: &[&str],
    stdin: Option<&str>,
) -> Result<(), NetError> {
    let hint = match program {
        "nft" => ": install nftables (`apt-get install nftables`)",
        "ip" => ": install iproute2",
        _ => "",
    };
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| NetError::Spawn {
            what,
            command: program.to_string(),
            hint,
            source,
        })?;
    if let Some(text) = stdin {
        let mut pipe = child.stdin.take().expect("piped stdin");
        // A command that fails early closes its input: its status says why.
        let _ = pipe.write_all(text.as_bytes());
    }
    let out = child
        .wait_with_output()
        .map_err(io_err(format!("wait for {program}")))?;
    if out.status.success() {
        return Ok(());
    }
    Err(NetError::Command {
        what,
        command: format!("{program} {}", args.join(" ")),
        stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
    })
}

fn write_sysctl(path: &str, value: &str) -> Result<(), NetError> {
    std::fs::write(path, value).map_err(io_err(format!("write {path}")))
}

/// The rules (idempotent: chains are flushed and refilled in one
/// transaction, sets kept), plus this server's gateway as a DNS address.
fn ruleset(gateway: Ipv4Addr) -> String {
    let t = TABLE;
    let refused = REFUSED_V4.join(", ");
    format!(
        "add table inet {t}
add set inet {t} allow_net {{ type iface_index . ipv4_addr ; flags interval ; }}
add set inet {t} allow_port {{ type iface_index . ipv4_addr . inet_proto . inet_service ; flags interval ; }}
add set inet {t} dns {{ type ipv4_addr ; }}
add chain inet {t} forward {{ type filter hook forward priority filter - 10 ; policy accept ; }}
add chain inet {t} input {{ type filter hook input priority filter - 10 ; policy accept ; }}
add chain inet {t} postrouting {{ type nat hook postrouting priority srcnat ; policy accept ; }}
add chain inet {t} from_sandbox
add chain inet {t} to_host
flush chain inet {t} forward
flush chain inet {t} input
flush chain inet {t} postrouting
flush chain inet {t} from_sandbox
flush chain inet {t} to_host
add rule inet {t} forward oifname \"{p}*\" ct state established,related accept
add rule inet {t} forward oifname \"{p}*\" drop
add rule inet {t} forward iifname \"{p}*\" jump from_sandbox
add rule inet {t} from_sandbox meta nfproto ipv6 reject with icmpx admin-prohibited
add rule inet {t} from_sandbox meta iif . ip daddr @allow_net accept
add rule inet {t} from_sandbox meta l4proto {{ tcp, udp }} meta iif . ip daddr . meta l4proto . th dport @allow_port accept
add rule inet {t} from_sandbox ip daddr {{ {refused} }} reject with icmpx admin-prohibited
add rule inet {t} from_sandbox accept
add rule inet {t} input iifname \"{p}*\" jump to_host
add rule inet {t} input ip daddr @dns meta l4proto {{ tcp, udp }} th dport 53 drop
add rule inet {t} to_host ip daddr @dns meta l4proto {{ tcp, udp }} th dport 53 accept
add rule inet {t} to_host meta l4proto tcp reject with tcp reset
add rule inet {t} to_host reject with icmpx admin-prohibited
add rule inet {t} postrouting iifname \"{p}*\" oifname != \"{p}*\" masquerade
add element inet {t} dns {{ {gateway} }}
",
        p = LINK_PREFIX,
    )
}

/// One-time host setup: the nftables rules, IPv4 forwarding, and the
/// catch-all route of the range.
pub(super) fn install(range: Ipv4Range, gateway: Ipv4Addr) -> Result<(), NetError> {
    run(
        "install the sandbox firewall",
        "nft",
        &["-f", "-"],
        Some(&ruleset(gateway)),
    )?;
    write_sysctl("/proc/sys/net/ipv4/ip_forward", "1")?;
    let range = range.to_string();
    let metric = RANGE_ROUTE_METRIC.to_string();
    run(
        "route the sandbox range",
        "ip",
        &["route", "replace", "unreachable", &range, "metric", &metric],
        None,
    )
}

/// Why a veth pair could not be made.
pub(super) enum PairError {
    /// A link of that name exists: another server holds the address.
    Taken,
    /// Anything else.
    Failed(NetError),
}

fn gettid() -> i32 {
    // SAFETY: gettid has no arguments and cannot fail.
    unsafe { libc::gettid() }
}

/// Makes a network namespace, a veth pair `link` (host) / `eth0` (sandbox)
/// between it and the host, and addresses and routes on both sides.
/// Returns the namespace.
pub(super) fn make_pair(
    link: &str,
    addr: Ipv4Addr,
    gateway: Ipv4Addr,
    owner_tag: &str,
) -> Result<OwnedFd, PairError> {
    use std::sync::mpsc;
    let (tid_tx, tid_rx) = mpsc::channel::<Result<i32, NetError>>();
    let (go_tx, go_rx) = mpsc::channel::<bool>();
    // A thread of its own enters the new namespace (a namespace is a
    // property of a thread): it names the namespace by its tid for the
    // host-side command, then configures the inside and hands back a
    // descriptor of it.
    let inside = std::thread::Builder::new()
        .name("thaw-netns".into())
        .spawn(move || -> Result<Option<OwnedFd>, NetError> {
            if let Err(e) = nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET) {
                let _ = tid_tx.send(Err(io_err("unshare the network namespace")(e.into())));
                return Ok(None);
            }
            let _ = tid_tx.send(Ok(gettid()));
            if !go_rx.recv().unwrap_or(false) {
                return Ok(None);
            }
            super::ifconfig::configure_inside(addr, gateway)
                .map_err(io_err("configure the sandbox's interfaces"))?;
            let fd = std::fs::File::open("/proc/thread-self/ns/net")
                .map_err(io_err("open the network namespace"))?;
            Ok(Some(OwnedFd::from(fd)))
        })
        .map_err(|e| PairError::Failed(io_err("start the namespace thread")(e)))?;
    let finish = |go: bool| -> Result<Option<OwnedFd>, NetError> {
        let _ = go_tx.send(go);
        inside.join().unwrap_or_else(|_| Ok(None))
    };
    let tid = match tid_rx.recv() {
        Ok(Ok(tid)) => tid,
        Ok(Err(e)) => return Err(PairError::Failed(e)),
        Err(_) => {
            return Err(PairError::Failed(NetError::Io {
                what: "the namespace thread ended".into(),
                source: std::io::Error::other("no namespace"),
            }))
        }
    };
    let alias = format!("thaw {owner_tag} {}", std::process::id());
    let host_script = format!(
        "link add {link} type veth peer name eth0 netns {tid}
link set {link} alias \"{alias}\"
link set {link} addrgenmode none
addr add {gateway}/32 dev {link}
link set {link} up
route add {addr}/32 dev {link} src {gateway}
"
    );
    if let Err(e) = run(
        "make the sandbox's veth pair",
        "ip",
        &["-batch", "-"],
        Some(&host_script),
    ) {
        let _ = finish(false);
        if let NetError::Command { stderr, .. } = &e {
            if stderr.contains("File exists") && !link_exists_ours(link, owner_tag) {
                return Err(PairError::Taken);
            }
        }
        let _ = delete_link(link);
        return Err(PairError::Failed(e));
    }
    // Source validation on the host side: only the sandbox's own address
    // comes in on its link.
    let _ = write_sysctl(&format!("/proc/sys/net/ipv4/conf/{link}/rp_filter"), "1");
    match finish(true) {
        Ok(Some(fd)) => Ok(fd),
        Ok(None) => {
            let _ = delete_link(link);
            Err(PairError::Failed(NetError::Io {
                what: "configure the sandbox namespace".into(),
                source: std::io::Error::other("the namespace thread gave up"),
            }))
        }
        Err(e) => {
            let _ = delete_link(link);
            Err(PairError::Failed(e))
        }
    }
}

/// Whether `link` exists and was made by this very server (then "File
/// exists" is a leftover of ours, not another server's address).
fn link_exists_ours(link: &str, owner_tag: &str) -> bool {
    std::fs::read_to_string(format!("/sys/class/net/{link}/ifalias"))
        .map(|a| a.trim() == format!("thaw {owner_tag} {}", std::process::id()))
        .unwrap_or(false)
}

fn delete_link(link: &str) -> Result<(), NetError> {
    run(
        "delete the sandbox's veth pair",
        "ip",
        &["link", "del", link],
        None,
    )
}

/// The interface index of `link` (set elements are keyed by it, so that a
/// stale element never matches a later link of the same name, and can be
/// deleted after the link is gone).
pub(super) fn ifindex(link: &str) -> Result<u32, NetError> {
    let path = format!("/sys/class/net/{link}/ifindex");
    let text = std::fs::read_to_string(&path).map_err(io_err(format!("read {path}")))?;
    text.trim().parse().map_err(|_| NetError::Io {
        what: format!("read {path}"),
        source: std::io::Error::other(format!("not a number: {text:?}")),
    })
}

fn elements(ifindex: u32, allow: &[AllowRule]) -> (Vec<String>, Vec<String>) {
    let (mut nets, mut ports) = (Vec::new(), Vec::new());
    for rule in allow {
        match rule.port {
            None => nets.push(format!("{ifindex} . {}", rule.net)),
            Some(p) => {
                for proto in ["tcp", "udp"] {
                    ports.push(format!("{ifindex} . {} . {proto} . {p}", rule.net));
                }
            }
        }
    }
    (nets, ports)
}

fn element_script(verb: &str, ifindex: u32, allow: &[AllowRule]) -> String {
    let (nets, ports) = elements(ifindex, allow);
    let mut script = String::new();
    if !nets.is_empty() {
        script += &format!(
            "{verb} element inet {TABLE} allow_net {{ {} }}\n",
            nets.join(", ")
        );
    }
    if !ports.is_empty() {
        script += &format!(
            "{verb} element inet {TABLE} allow_port {{ {} }}\n",
            ports.join(", ")
        );
    }
    script
}

/// Opens `allow` for the sandbox behind the link with index `ifindex`.
pub(super) fn allow(ifindex: u32, allow: &[AllowRule]) -> Result<(), NetError> {
    run(
        "open network_allow",
        "nft",
        &["-f", "-"],
        Some(&element_script("add", ifindex, allow)),
    )
}

/// Closes what [`allow`] opened and deletes the veth pair.
pub(super) fn teardown(link: &str, ifindex: u32, allow: &[AllowRule]) -> Result<(), NetError> {
    let closed = if allow.is_empty() {
        Ok(())
    } else {
        run(
            "close network_allow",
            "nft",
            &["-f", "-"],
            Some(&element_script("delete", ifindex, allow)),
        )
    };
    // The link may be gone already if the namespace died first.
    if std::path::Path::new(&format!("/sys/class/net/{link}")).exists() {
        delete_link(link)?;
    }
    closed
}

/// One member of a listed set element (`nft -j`) in nft's syntax.
fn element_part(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) if s.parse::<std::net::Ipv4Addr>().is_ok() => {
            Some(format!("{s}/32"))
        }
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        serde_json::Value::Object(o) => {
            if let Some(p) = o.get("prefix") {
                Some(format!("{}/{}", p["addr"].as_str()?, p["len"].as_u64()?))
            } else {
                let r = o.get("range")?.as_array()?;
                Some(format!(
                    "{}-{}",
                    element_part(r.first()?)?,
                    element_part(r.get(1)?)?
                ))
            }
        }
        _ => None,
    }
}

/// Elements of `set` whose interface is gone (listed as a bare index, not
/// a name): left by a server that died before its teardown.
fn stale_elements(listing: &str, set: &str) -> Vec<String> {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(listing) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for item in v["nftables"].as_array().into_iter().flatten() {
        let Some(elems) = item["set"]["elem"].as_array() else {
            continue;
        };
        for e in elems {
            let Some(parts) = e["concat"].as_array() else {
                continue;
            };
            let gone = parts
                .first()
                .and_then(|p| p.as_str())
                .is_some_and(|iface| iface.parse::<u32>().is_ok());
            if !gone {
                continue;
            }
            if let Some(text) = parts.iter().map(element_part).collect::<Option<Vec<_>>>() {
                out.push(format!(
                    "delete element inet {TABLE} {set} {{ {} }}",
                    text.join(" . ")
                ));
            }
        }
    }
    out
}

/// Deletes `network_allow` elements of links that no longer exist.
pub(super) fn remove_stale_elements() -> usize {
    let mut removed = 0;
    for set in ["allow_net", "allow_port"] {
        let Ok(out) = Command::new("nft")
            .args(["-j", "list", "set", "inet", TABLE, set])
            .output()
        else {
            return removed;
        };
        if !out.status.success() {
            continue;
        }
        for line in stale_elements(&String::from_utf8_lossy(&out.stdout), set) {
            // One by one: an element another server removed meanwhile must
            // not stop the rest.
            if run(
                "remove a stale network_allow entry",
                "nft",
                &["-f", "-"],
                Some(&line),
            )
            .is_ok()
            {
                removed += 1;
            }
        }
    }
    removed
}

/// Deletes sandbox links whose owner is dead or is an earlier run of this
/// server (same tag, another pid).
pub(super) fn remove_stale_links(owner_tag: &str) -> Result<usize, NetError> {
    let me = std::process::id();
    let mut removed = 0;
    let entries = match std::fs::read_dir("/sys/class/net") {
        Ok(e) => e,
        Err(e) => return Err(io_err("list /sys/class/net")(e)),
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with(LINK_PREFIX) {
            continue;
        }
        let alias = std::fs::read_to_string(entry.path().join("ifalias")).unwrap_or_default();
        let mut fields = alias.split_whitespace();
        if fields.next() != Some("thaw") {
            continue;
        }
        let (Some(tag), Some(pid)) = (
            fields.next(),
            fields.next().and_then(|p| p.parse::<u32>().ok()),
        ) else {
            continue;
        };
        let owner_alive = std::path::Path::new(&format!("/proc/{pid}")).exists();
        let stale = (tag == owner_tag && pid != me) || !owner_alive;
        if stale && delete_link(&name).is_ok() {
            removed += 1;
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elements_cover_both_protocols_for_a_port() {
        let allow: Vec<AllowRule> = ["10.0.0.0/8", "10.1.2.3:5432"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let script = element_script("add", 42, &allow);
        assert!(script.contains("allow_net { 42 . 10.0.0.0/8 }"), "{script}");
        assert!(
            script.contains("42 . 10.1.2.3/32 . tcp . 5432, 42 . 10.1.2.3/32 . udp . 5432"),
            "{script}"
        );
    }

    #[test]
    fn stale_elements_are_those_of_gone_links() {
        let listing = r#"{"nftables": [{"metainfo": {}}, {"set": {"family": "inet", "name": "allow_port", "table": "thaw",
            "elem": [{"concat": ["22", "10.213.7.10", "tcp", 80]}, {"concat": ["thw647fc802", "10.213.7.10", "udp", 80]},
                     {"concat": ["30", {"prefix": {"addr": "10.213.7.0", "len": 24}}, "udp", {"range": [81, 90]}]}]}}]}"#;
        assert_eq!(
            stale_elements(listing, "allow_port"),
            vec![
                "delete element inet thaw allow_port { 22 . 10.213.7.10/32 . tcp . 80 }"
                    .to_string(),
                "delete element inet thaw allow_port { 30 . 10.213.7.0/24 . udp . 81-90 }"
                    .to_string(),
            ]
        );
        assert!(stale_elements("not json", "allow_port").is_empty());
    }

    #[test]
    fn the_ruleset_refuses_what_the_docs_say() {
        let rules = ruleset("100.96.0.1".parse().unwrap());
        for net in [
            "10.0.0.0/8",
            "172.16.0.0/12",
            "192.168.0.0/16",
            "100.64.0.0/10",
            "127.0.0.0/8",
            "169.254.0.0/16",
        ] {
            assert!(rules.contains(net), "{net}");
        }
        assert!(rules.contains("meta nfproto ipv6 reject"));
        // The forwarder answers sandboxes only, never the network.
        let to_host = rules.find("jump to_host").unwrap();
        let dns_drop = rules
            .find("input ip daddr @dns meta l4proto { tcp, udp } th dport 53 drop")
            .unwrap();
        assert!(to_host < dns_drop);
        assert!(rules.contains("add element inet thaw dns { 100.96.0.1 }"));
    }
}
