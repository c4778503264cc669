//! Outbound network (issue 12, finding 2): what an `outbound` function can
//! and cannot reach, on a booted instance and on restored copies in both
//! memory modes.
//!
//! Everything the test talks to is a test host it makes itself, each in a
//! network namespace of its own, reached from the host through a veth pair:
//!
//! ```text
//!   thawt-pub    203.0.113.10/24  "public": TCP 80 and a DNS server (UDP 53)
//!   thawt-priv   10.213.7.10/24   private: TCP 80, only through network_allow
//!   thawt-meta   169.254.169.254  cloud metadata look-alike: TCP 80
//! ```
//!
//! The test hosts have no default route, and blackhole routes under their
//! prefixes keep packets for them on this machine even if a link goes away;
//! thaw's own catch-all route does the same for the sandbox range. Every
//! probe first succeeds from a control (the host), then is tried from the
//! function.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{function, Server};
use serde_json::{json, Value};

const RANGE: &str = "100.127.200.0/24";
const GATEWAY: &str = "100.127.200.1";
const PUBLIC: &str = "203.0.113.10";
const PRIVATE: &str = "10.213.7.10";
const METADATA: &str = "169.254.169.254";
const PUBLIC_NAME: &str = "public.thaw.test";

/// Answers TCP connections on port 80 with "hello from NAME", and (when
/// given) DNS A queries for the names in NAMES over UDP on DNS_ADDR.
const TEST_HOST_PY: &str = r#"
import socket, sys, threading
name, dns_addr = sys.argv[1], sys.argv[2]
NAMES = {"public.thaw.test": "203.0.113.10", "private.thaw.test": "10.213.7.10"}

# Bound before "ready" is printed.
tcp_sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
tcp_sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
tcp_sock.bind(("0.0.0.0", 80))
tcp_sock.listen(64)
dns_sock = dns_tcp = None
if dns_addr != "-":
    dns_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    dns_sock.bind((dns_addr, 53))
    dns_tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    dns_tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    dns_tcp.bind((dns_addr, 53))
    dns_tcp.listen(16)

def tcp():
    while True:
        c, _ = tcp_sock.accept()
        try:
            c.sendall(("hello from %s\n" % name).encode())
        finally:
            c.close()

def answer(q):
    i, labels = 12, []
    while q[i]:
        n = q[i]
        labels.append(q[i + 1:i + 1 + n].decode().lower())
        i += 1 + n
    qtype = int.from_bytes(q[i + 1:i + 3], "big")
    end = i + 5
    ip = NAMES.get(".".join(labels))
    found = ip is not None and qtype == 1
    flags = bytes([0x81, 0x80 if ip is not None else 0x83])
    header = q[:2] + flags + b"\x00\x01" + (b"\x00\x01" if found else b"\x00\x00") + b"\x00\x00\x00\x00"
    body = q[12:end]
    if found:
        body += b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04" + socket.inet_aton(ip)
    return header + body

def dns():
    while True:
        q, peer = dns_sock.recvfrom(512)
        try:
            dns_sock.sendto(answer(q), peer)
        except Exception:
            pass

def dns_over_tcp():
    while True:
        c, _ = dns_tcp.accept()
        try:
            n = int.from_bytes(c.recv(2), "big")
            q = b""
            while len(q) < n:
                q += c.recv(n - len(q))
            a = answer(q)
            c.sendall(len(a).to_bytes(2, "big") + a)
        except Exception:
            pass
        finally:
            c.close()

threading.Thread(target=tcp, daemon=True).start()
if dns_sock is not None:
    threading.Thread(target=dns, daemon=True).start()
    threading.Thread(target=dns_over_tcp, daemon=True).start()
print("ready", flush=True)
threading.Event().wait()
"#;

/// The function: tries each probe `{name: [host, port, resolve]}` and says
/// what happened; `resolve` looks the host name up first (through the
/// sandbox's resolv.conf).
const PROBE_PY: &str = r#"
import socket

def probe(host, port, resolve):
    ip = host
    try:
        if resolve:
            ip = socket.getaddrinfo(host, port, socket.AF_INET, socket.SOCK_STREAM)[0][4][0]
        s = socket.create_connection((ip, port), timeout=3)
    except OSError as e:
        return {"ok": False, "ip": ip, "error": "%s: %s" % (type(e).__name__, e)}
    reply = ""
    try:
        s.settimeout(1)
        reply = s.recv(100).decode(errors="replace").strip()
    except OSError:
        pass
    finally:
        s.close()
    return {"ok": True, "ip": ip, "reply": reply}

def dns_over_tcp(server, name):
    # One A query over TCP (the forwarder's TCP side), by hand.
    q = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00"
    q += b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\x00\x00\x01\x00\x01"
    try:
        s = socket.create_connection((server, 53), timeout=3)
        s.sendall(len(q).to_bytes(2, "big") + q)
        data = b""
        while len(data) < 2 or len(data) < 2 + int.from_bytes(data[:2], "big"):
            chunk = s.recv(512)
            if not chunk:
                break
            data += chunk
        s.close()
        a = data[2:]
        return socket.inet_ntoa(a[-4:]) if len(a) > len(q) else "no answer"
    except OSError as e:
        return "%s: %s" % (type(e).__name__, e)

def handler(event, context):
    out = {k: probe(*v) for k, v in event["probes"].items()}
    out["_dns_tcp"] = dns_over_tcp(event["gateway"], "public.thaw.test")
    with open("/etc/resolv.conf") as f:
        out["_resolv"] = f.read()
    try:
        with open("/proc/net/if_inet6") as f:
            out["_ipv6_interfaces"] = sorted({line.split()[-1] for line in f})
    except OSError:
        out["_ipv6_interfaces"] = []
    return out
"#;

/// What is missing to run these tests, if anything.
fn prerequisites() -> Result<(), String> {
    if !nix::unistd::geteuid().is_root() {
        return Err("needs root (network namespaces, veth pairs, nftables)".into());
    }
    for tool in ["/usr/bin/python3"] {
        if !std::path::Path::new(tool).exists() {
            return Err(format!("{tool} is missing"));
        }
    }
    for tool in ["ip", "nft"] {
        let found = Command::new(tool)
            .arg("-V")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok();
        if !found {
            return Err(format!(
                "`{tool}` is missing (apt-get install iproute2 nftables)"
            ));
        }
    }
    Ok(())
}

/// Skips the test when a prerequisite is missing (fails it under
/// `THAW_TEST_STRICT`, see `common::missing`).
macro_rules! require_network {
    () => {
        if let Err(why) = prerequisites() {
            skip!("{why}");
        }
    };
}

fn sh(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn sh_quiet(args: &[&str]) {
    let _ = Command::new(args[0])
        .args(&args[1..])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// The test hosts; removed on drop.
struct Topology {
    hosts: Vec<Child>,
    _lock: nix::fcntl::Flock<std::fs::File>,
}

const NAMESPACES: [&str; 3] = ["thawt-pub", "thawt-priv", "thawt-meta"];
const LINKS: [&str; 5] = ["tt-pub", "tt-priv", "tt-meta", "tt-stale", "thw647fc8fe"];
const BLACKHOLES: [&str; 3] = ["203.0.113.0/24", "10.213.0.0/16", "169.254.169.252/30"];

fn remove_topology() {
    for ns in NAMESPACES {
        sh_quiet(&["ip", "netns", "del", ns]);
    }
    for link in LINKS {
        sh_quiet(&["ip", "link", "del", link]);
    }
    for net in BLACKHOLES {
        sh_quiet(&["ip", "route", "del", "blackhole", net, "metric", "3000"]);
    }
}

impl Topology {
    fn build() -> Topology {
        // One run at a time on this machine: the addresses are fixed.
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open("/run/lock/thaw-network-test.lock")
            .unwrap();
        let lock = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| e)
            .unwrap();
        // Whatever a failed earlier run left.
        remove_topology();
        // Packets for the test prefixes stay here even if a link is gone.
        for net in BLACKHOLES {
            sh(&["ip", "route", "add", "blackhole", net, "metric", "3000"]);
        }
        let mut topo = Topology {
            hosts: Vec::new(),
            _lock: lock,
        };
        for (ns, link, host_cidr, inside_cidr, dns) in [
            (
                "thawt-pub",
                "tt-pub",
                "203.0.113.1/24",
                "203.0.113.10/24",
                PUBLIC,
            ),
            (
                "thawt-priv",
                "tt-priv",
                "10.213.7.1/24",
                "10.213.7.10/24",
                "-",
            ),
            (
                "thawt-meta",
                "tt-meta",
                "169.254.169.253/30",
                "169.254.169.254/30",
                "-",
            ),
        ] {
            sh(&["ip", "netns", "add", ns]);
            sh(&[
                "ip", "link", "add", link, "type", "veth", "peer", "name", "eth0", "netns", ns,
            ]);
            sh(&["ip", "link", "set", link, "addrgenmode", "none"]);
            sh(&["ip", "addr", "add", host_cidr, "dev", link]);
            sh(&["ip", "link", "set", link, "up"]);
            // No default route: a test host can only answer its own link.
            sh(&["ip", "-n", ns, "link", "set", "lo", "up"]);
            sh(&["ip", "-n", ns, "link", "set", "eth0", "addrgenmode", "none"]);
            sh(&["ip", "-n", ns, "addr", "add", inside_cidr, "dev", "eth0"]);
            sh(&["ip", "-n", ns, "link", "set", "eth0", "up"]);
            let name = ns.trim_start_matches("thawt-");
            let mut child = Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    ns,
                    "python3",
                    "-c",
                    TEST_HOST_PY,
                    name,
                    dns,
                ])
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .unwrap();
            let mut ready = [0u8; 6];
            child.stdout.take().unwrap().read_exact(&mut ready).unwrap();
            assert_eq!(&ready, b"ready\n");
            topo.hosts.push(child);
        }
        topo
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for child in &mut self.hosts {
            let _ = child.kill();
            let _ = child.wait();
        }
        remove_topology();
    }
}

/// A DNS A query for `name`, asked straight from the host (the control of
/// the by-name probe).
fn resolve_from_host(server: SocketAddr, name: &str) -> Option<Ipv4Addr> {
    let mut q = vec![0x42, 0x42, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in name.split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    let sock = UdpSocket::bind("0.0.0.0:0").ok()?;
    sock.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    sock.send_to(&q, server).ok()?;
    let mut buf = [0u8; 512];
    let n = sock.recv(&mut buf).ok()?;
    (n >= q.len() + 16 && buf[7] == 1)
        .then(|| Ipv4Addr::new(buf[n - 4], buf[n - 3], buf[n - 2], buf[n - 1]))
}

/// Connects from the host (a control): true if a connection is accepted.
fn reachable_from_host(ip: IpAddr, port: u16) -> bool {
    TcpStream::connect_timeout(&SocketAddr::new(ip, port), Duration::from_secs(3)).is_ok()
}

/// The host's own addresses (IPv4 and IPv6, not loopback, not another
/// server's sandbox gateway that may vanish while the test runs).
fn host_addresses() -> Vec<IpAddr> {
    let out = Command::new("ip")
        .args(["-j", "addr", "show"])
        .output()
        .unwrap();
    let links: Value = serde_json::from_slice(&out.stdout).unwrap();
    let cgnat = |ip: &IpAddr| matches!(ip, IpAddr::V4(v4) if v4.octets()[0] == 100 && (64..128).contains(&v4.octets()[1]));
    let mut out = Vec::new();
    for link in links.as_array().unwrap() {
        for a in link["addr_info"].as_array().into_iter().flatten() {
            let Some(ip) = a["local"].as_str().and_then(|s| s.parse::<IpAddr>().ok()) else {
                continue;
            };
            let link_local_v6 = matches!(ip, IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80);
            if ip.is_loopback() || link_local_v6 || (cgnat(&ip) && ip.to_string() != GATEWAY) {
                continue;
            }
            if !out.contains(&ip) {
                out.push(ip);
            }
        }
    }
    out
}

/// A listener on every host address (dual stack) answering "hello from host".
fn host_listener() -> u16 {
    let listener = TcpListener::bind("[::]:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut c in listener.incoming().flatten() {
            let _ = c.write_all(b"hello from host\n");
        }
    });
    port
}

struct Probes {
    /// name → (host, port, resolve)
    list: BTreeMap<String, (String, u16, bool)>,
}

impl Probes {
    fn json(&self) -> Value {
        let map: serde_json::Map<String, Value> = self
            .list
            .iter()
            .map(|(k, (h, p, r))| (k.clone(), json!([h, p, r])))
            .collect();
        json!({ "probes": map, "gateway": GATEWAY })
    }
}

/// Builds the probe list and checks that each one works from the host.
fn probes_with_controls(admin_port: u16, host_port: u16) -> Probes {
    let mut list = BTreeMap::new();
    let public_dns: SocketAddr = format!("{PUBLIC}:53").parse().unwrap();
    assert_eq!(
        resolve_from_host(public_dns, PUBLIC_NAME),
        Some(PUBLIC.parse().unwrap()),
        "control: the test DNS server answers the host"
    );
    assert!(
        reachable_from_host(PUBLIC.parse().unwrap(), 53),
        "control: the test DNS server takes TCP from the host"
    );
    for (name, host, port, resolve) in [
        ("public_ip", PUBLIC, 80, false),
        ("public_name", PUBLIC_NAME, 80, true),
        ("private", PRIVATE, 80, false),
        ("metadata", METADATA, 80, false),
        ("host_loopback_api", "127.0.0.1", admin_port, false),
    ] {
        let ip: IpAddr = if resolve {
            PUBLIC.parse().unwrap()
        } else {
            host.parse().unwrap()
        };
        assert!(
            reachable_from_host(ip, port),
            "control: the host reaches {name} ({ip}:{port})"
        );
        list.insert(name.to_string(), (host.to_string(), port, resolve));
    }
    let addrs = host_addresses();
    assert!(
        addrs.iter().any(|a| a.to_string() == GATEWAY),
        "the gateway is a host address once a sandbox exists: {addrs:?}"
    );
    for ip in addrs {
        assert!(
            reachable_from_host(ip, host_port),
            "control: the host reaches its own {ip}:{host_port}"
        );
        list.insert(
            format!("host_addr {ip}"),
            (ip.to_string(), host_port, false),
        );
    }
    Probes { list }
}

/// What a function may reach: the public host always; the private one
/// only when `private_open`; nothing else.
fn check(label: &str, answer: &Value, probes: &Probes, outbound: bool, private_open: bool) {
    for name in probes.list.keys() {
        let got = &answer[name];
        let expect =
            outbound && (name.starts_with("public") || (name == "private" && private_open));
        assert_eq!(got["ok"], expect, "{label}: probe {name}: {got}");
        if expect {
            let from = if name == "private" { "priv" } else { "pub" };
            assert_eq!(
                got["reply"],
                format!("hello from {from}"),
                "{label}: {name}: {got}"
            );
        }
    }
    // Loopback's ::1 shows the list was read; eth0 has no IPv6 at all.
    assert_eq!(
        answer["_ipv6_interfaces"],
        json!(["lo"]),
        "{label}: no IPv6 address but loopback's"
    );
    if outbound {
        assert_eq!(
            answer["_dns_tcp"], PUBLIC,
            "{label}: DNS over TCP through the gateway"
        );
    } else {
        assert_ne!(
            answer["_dns_tcp"], PUBLIC,
            "{label}: no DNS without network"
        );
    }
    if outbound {
        assert_eq!(
            answer["public_name"]["ip"], PUBLIC,
            "{label}: resolved through thaw's forwarder"
        );
        assert!(
            answer["_resolv"]
                .as_str()
                .unwrap()
                .contains(&format!("nameserver {GATEWAY}")),
            "{label}: resolv.conf names the gateway: {}",
            answer["_resolv"]
        );
    }
}

/// Links of this test's range on the host.
fn range_links() -> Vec<String> {
    std::fs::read_dir("/sys/class/net")
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        // 100.127.200.x is 647fc8xx.
        .filter(|n| n.starts_with("thw647fc8"))
        .collect()
}

#[tokio::test]
async fn outbound_functions_reach_the_public_host_and_nothing_private() {
    require_network!();
    let _topology = Topology::build();

    // A link a dead server left (its owner pid cannot exist) is removed at
    // start.
    sh(&[
        "ip",
        "link",
        "add",
        "thw647fc8fe",
        "type",
        "veth",
        "peer",
        "name",
        "tt-stale",
    ]);
    sh(&[
        "ip",
        "link",
        "set",
        "thw647fc8fe",
        "alias",
        "thaw deadbeef 4294967",
    ]);

    // A range that holds one of the host's addresses is refused at start.
    let data = tempfile::Builder::new()
        .prefix("thaw-test")
        .tempdir_in("/var/tmp")
        .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_thaw"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--network-range",
            "203.0.113.0/24",
            "--data-dir",
        ])
        .arg(data.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a range in use must be refused");
    assert!(
        stderr.contains(
            "network_range 203.0.113.0/24 holds the host's address 203.0.113.1 (on tt-pub)"
        ),
        "{stderr}"
    );

    let mut server = Server::start(&[
        "--network-range",
        RANGE,
        "--dns-upstream",
        PUBLIC,
        "--allow-forced-cold",
    ]);
    assert!(
        !std::path::Path::new("/sys/class/net/thw647fc8fe").exists(),
        "the stale link is removed at start"
    );
    let admin_port: u16 = server.url.rsplit(':').next().unwrap().parse().unwrap();
    let host_port = host_listener();

    // (name, network, network_allow)
    let kinds: [(&str, &str, Vec<&str>); 4] = [
        ("open", "outbound", vec![]),
        ("allowed", "outbound", vec!["10.213.7.10/32:80"]),
        ("otherport", "outbound", vec!["10.213.7.0/24:81"]),
        ("none", "none", vec![]),
    ];
    // (label, extra spec)
    let starts = [
        ("boot", json!({"snapshot": false})),
        ("mmap", json!({"memory_mode": "mmap"})),
        ("uffd", json!({"memory_mode": "uffd"})),
    ];
    let mut deployed = Vec::new();
    for (kind, network, allow) in &kinds {
        for (start, extra) in &starts {
            if *kind == "otherport" && *start != "boot" {
                continue;
            }
            let name = format!("net-{kind}-{start}");
            let mut spec = json!({"network": network, "timeout_ms": 30000});
            if !allow.is_empty() {
                spec["network_allow"] = json!(allow);
            }
            for (k, v) in extra.as_object().unwrap() {
                spec[k] = v.clone();
            }
            let v = server.deploy_ready(function(&name, PROBE_PY, spec)).await;
            assert_eq!(v["state"], "ready", "{name}: {v}");
            deployed.push((name, *kind, *start));
        }
    }

    let probes = probes_with_controls(admin_port, host_port);
    let body = serde_json::to_vec(&probes.json()).unwrap();
    let mut spare_hits = 0;
    for (name, kind, start) in &deployed {
        let outbound = *kind != "none";
        let private_open = *kind == "allowed";
        // A booted instance: the warmed one, then a forced boot; a restored
        // copy: every forced cold start (the first ones come from pre-made
        // spares).
        let rounds: &[Option<&str>] = if *start == "boot" {
            &[None, Some("boot")]
        } else {
            &[Some("restore"), Some("restore"), Some("restore")]
        };
        for cold in rounds {
            let headers: Vec<(&str, &str)> = cold.iter().map(|c| ("x-thaw-cold", *c)).collect();
            let a = server.invoke_raw(name, body.clone(), &headers).await;
            assert_eq!(a.status, 200, "{name}: {}", a.text());
            let expected_start = match (*start, cold) {
                ("boot", None) => "warm",
                ("boot", Some(_)) => "boot",
                _ => "restore",
            };
            assert_eq!(a.header("x-thaw-start"), expected_start, "{name}");
            let v = a.json();
            let summary: Vec<String> = probes
                .list
                .keys()
                .map(|k| match v[k]["ok"].as_bool() {
                    Some(true) => format!("{k}=ok"),
                    _ => format!("{k}=refused({})", v[k]["error"].as_str().unwrap_or("?")),
                })
                .collect();
            eprintln!(
                "{name} [{} spare={}]: {}",
                a.header("x-thaw-start"),
                a.header("x-thaw-spare"),
                summary.join(", ")
            );
            if a.header("x-thaw-spare") == "hit" {
                spare_hits += 1;
            }
            check(
                &format!("{name} ({})", a.header("x-thaw-start")),
                &a.json(),
                &probes,
                outbound,
                private_open,
            );
        }
    }
    eprintln!("restored copies from spares: {spare_hits}");
    assert!(
        spare_hits > 0,
        "some restored copies came from pre-made spares"
    );

    // Every sandbox's link goes with it.
    for (name, _, _) in &deployed {
        let a = server
            .request(
                reqwest::Method::DELETE,
                &format!("/functions/{name}"),
                None,
                &[],
            )
            .await;
        assert!(a.status < 300, "delete {name}: {}", a.text());
    }
    server.stop();
    let t0 = Instant::now();
    while !range_links().is_empty() {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "links left: {:?}",
            range_links()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Whatever network_allow entries the stop left are removed when a
    // server starts again.
    server.spawn();
    assert_eq!(stale_allow_elements(), Vec::<String>::new());
    server.stop();
}

/// `network_allow` elements of links that are gone (listed by bare index).
fn stale_allow_elements() -> Vec<String> {
    let mut out = Vec::new();
    for set in ["allow_net", "allow_port"] {
        let o = Command::new("nft")
            .args(["-j", "list", "set", "inet", "thaw", set])
            .output()
            .unwrap();
        let v: Value = serde_json::from_slice(&o.stdout).unwrap_or(Value::Null);
        for item in v["nftables"].as_array().into_iter().flatten() {
            for e in item["set"]["elem"].as_array().into_iter().flatten() {
                if e["concat"][0]
                    .as_str()
                    .is_some_and(|i| i.parse::<u32>().is_ok())
                {
                    out.push(e.to_string());
                }
            }
        }
    }
    out
}

#[tokio::test]
async fn copies_restored_without_a_spare_get_the_same_network() {
    require_network!();
    let _topology = Topology::build();
    let server = Server::start(&[
        "--network-range",
        RANGE,
        "--dns-upstream",
        PUBLIC,
        "--allow-forced-cold",
        "--spare-sandboxes",
        "0",
    ]);
    let admin_port: u16 = server.url.rsplit(':').next().unwrap().parse().unwrap();
    let host_port = host_listener();
    let mut deployed = Vec::new();
    for mode in ["mmap", "uffd"] {
        for (kind, allow) in [("open", json!([])), ("allowed", json!(["10.213.7.10:80"]))] {
            let name = format!("ondemand-{kind}-{mode}");
            let spec = json!({"network": "outbound", "network_allow": allow, "memory_mode": mode});
            let v = server.deploy_ready(function(&name, PROBE_PY, spec)).await;
            assert_eq!(v["state"], "ready", "{name}: {v}");
            deployed.push((name, kind == "allowed"));
        }
    }
    let probes = probes_with_controls(admin_port, host_port);
    let body = serde_json::to_vec(&probes.json()).unwrap();
    for (name, private_open) in &deployed {
        let a = server
            .invoke_raw(name, body.clone(), &[("x-thaw-cold", "restore")])
            .await;
        assert_eq!(a.status, 200, "{name}: {}", a.text());
        assert_eq!(a.header("x-thaw-start"), "restore", "{name}");
        assert_eq!(
            a.header("x-thaw-spare"),
            "miss",
            "{name}: no spares on this server"
        );
        check(name, &a.json(), &probes, true, *private_open);
    }
}

fn median(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    v[v.len() / 2]
}

/// The cost of the network: forced restores of the same function with
/// `network = "none"` and `"outbound"`, interleaved, with pre-made spares
/// and without (then the sandbox, its namespace and veth pair are made on
/// the request path). Prints medians; asserts nothing about time. Run by
/// hand: `cargo test -p server --test network -- --ignored --nocapture`.
#[tokio::test]
#[ignore = "a measurement, run by hand"]
async fn network_cost() {
    require_network!();
    let _topology = Topology::build();
    const ROUNDS: usize = 25;
    for spares in ["0", "2"] {
        let server = Server::start(&[
            "--network-range",
            RANGE,
            "--dns-upstream",
            PUBLIC,
            "--allow-forced-cold",
            "--spare-sandboxes",
            spares,
        ]);
        let code = "def handler(event, context):\n    return {'ok': True}\n";
        for network in ["none", "outbound"] {
            let name = format!("cost-{network}");
            server
                .deploy_ready(function(&name, code, json!({"network": network})))
                .await;
        }
        let mut start_us: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
        let mut claim_us: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
        let mut wall_us: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
        for _ in 0..ROUNDS {
            for network in ["none", "outbound"] {
                if spares != "0" {
                    server.wait_spares(&format!("cost-{network}"), 2).await;
                }
                let t0 = Instant::now();
                let a = server
                    .invoke_raw(
                        &format!("cost-{network}"),
                        b"{}".to_vec(),
                        &[("x-thaw-cold", "restore")],
                    )
                    .await;
                wall_us
                    .entry(network)
                    .or_default()
                    .push(t0.elapsed().as_micros() as u64);
                assert_eq!(a.status, 200, "{}", a.text());
                start_us
                    .entry(network)
                    .or_default()
                    .push(a.header("x-thaw-start-us").parse().unwrap());
                let claim = a
                    .header("x-thaw-restore-us")
                    .split(',')
                    .find_map(|p| p.strip_prefix("claim=").map(|v| v.parse::<u64>().unwrap()))
                    .unwrap();
                claim_us.entry(network).or_default().push(claim);
            }
        }
        for network in ["none", "outbound"] {
            eprintln!(
                "spares={spares} network={network:8}: restore p50 {} us (start), claim p50 {} us, invoke wall p50 {} us ({ROUNDS} rounds)",
                median(start_us[network].clone()),
                median(claim_us[network].clone()),
                median(wall_us[network].clone()),
            );
        }
    }
}
