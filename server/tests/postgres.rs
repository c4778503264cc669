//! Issue 19, acceptances 2 and 3: a Python function whose init opens a
//! PostgreSQL connection (examples/postgres-client, pg8000 from its
//! requirements.txt) and a Node.js one (examples/node-postgres, `pg` from
//! its package.json and package-lock.json, `npm ci` at deploy with the
//! build sandbox's empty npm cache) are snapshotted at deploy; forced
//! restores answer a query after the copy's cut connection is noticed and
//! replaced by its `on_restore` / `thaw.onRestore` hook.
//!
//! The database is the distribution's PostgreSQL, started by the test on a
//! test host in a network namespace of its own, reached by the function
//! through `network = "outbound"` and `network_allow`:
//!
//! ```text
//!   host  tt-pg 10.213.9.1/24  <-veth->  thawt-pg eth0 10.213.9.10/24
//!                                        postgres -p 5432 (trust, test only)
//! ```
//!
//! Needs root, `ip`, `nft`, PostgreSQL (`apt-get install postgresql`) and
//! the package registries (pg8000 from PyPI, pg from npm).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::Server;
use serde_json::{json, Value};

const NS: &str = "thawt-pg";
const LINK: &str = "tt-pg";
const HOST_CIDR: &str = "10.213.9.1/24";
const DB_CIDR: &str = "10.213.9.10/24";
const DB: &str = "10.213.9.10";
const BLACKHOLE: &str = "10.213.9.0/24";
const RANGE: &str = "100.127.200.0/24";

/// The newest PostgreSQL server binaries of the distribution.
fn postgres_bin() -> Option<PathBuf> {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| Some(e.ok()?.path().join("bin")))
        .filter(|bin| bin.join("postgres").exists() && bin.join("initdb").exists())
        .collect();
    versions.sort();
    versions.pop()
}

fn prerequisites() -> Result<PathBuf, String> {
    if !nix::unistd::geteuid().is_root() {
        return Err("needs root (network namespaces, veth pairs, sandboxes)".into());
    }
    for tool in ["ip", "nft", "runuser"] {
        let found = Command::new(tool)
            .arg("-V")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok();
        if !found {
            return Err(format!("`{tool}` is missing"));
        }
    }
    if nix::unistd::User::from_name("postgres")
        .ok()
        .flatten()
        .is_none()
    {
        return Err("no user `postgres` (apt-get install postgresql)".into());
    }
    postgres_bin().ok_or_else(|| "no PostgreSQL server (apt-get install postgresql)".into())
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

fn remove_topology() {
    sh_quiet(&["ip", "netns", "del", NS]);
    sh_quiet(&["ip", "link", "del", LINK]);
    sh_quiet(&[
        "ip",
        "route",
        "del",
        "blackhole",
        BLACKHOLE,
        "metric",
        "3000",
    ]);
}

/// The database host: its namespace, link and server; removed on drop.
struct Database {
    server: Child,
    _data: tempfile::TempDir,
    _lock: nix::fcntl::Flock<std::fs::File>,
}

impl Database {
    fn start(bin: &Path) -> Database {
        // The network tests' lock: one topology at a time on this machine.
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open("/run/lock/thaw-network-test.lock")
            .unwrap();
        let lock = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| e)
            .unwrap();
        remove_topology();
        sh(&[
            "ip",
            "route",
            "add",
            "blackhole",
            BLACKHOLE,
            "metric",
            "3000",
        ]);
        sh(&["ip", "netns", "add", NS]);
        sh(&[
            "ip", "link", "add", LINK, "type", "veth", "peer", "name", "eth0", "netns", NS,
        ]);
        sh(&["ip", "link", "set", LINK, "addrgenmode", "none"]);
        sh(&["ip", "addr", "add", HOST_CIDR, "dev", LINK]);
        sh(&["ip", "link", "set", LINK, "up"]);
        sh(&["ip", "-n", NS, "link", "set", "lo", "up"]);
        sh(&["ip", "-n", NS, "link", "set", "eth0", "addrgenmode", "none"]);
        sh(&["ip", "-n", NS, "addr", "add", DB_CIDR, "dev", "eth0"]);
        sh(&["ip", "-n", NS, "link", "set", "eth0", "up"]);

        let data = tempfile::Builder::new()
            .prefix("thaw-test-pg")
            .tempdir_in("/var/tmp")
            .unwrap();
        let dir = data.path().join("db");
        std::fs::create_dir(&dir).unwrap();
        let pg = nix::unistd::User::from_name("postgres").unwrap().unwrap();
        nix::unistd::chown(&dir, Some(pg.uid), Some(pg.gid)).unwrap();
        let dir_s = dir.display().to_string();
        let initdb = bin.join("initdb").display().to_string();
        sh(&[
            "runuser",
            "-u",
            "postgres",
            "--",
            &initdb,
            "-D",
            &dir_s,
            "-A",
            "trust",
            "-U",
            "postgres",
            "--no-sync",
        ]);
        // Test only: anyone on the test link may connect.
        let hba = dir.join("pg_hba.conf");
        let mut text = std::fs::read_to_string(&hba).unwrap();
        text.push_str("host all all 0.0.0.0/0 trust\n");
        std::fs::write(&hba, text).unwrap();
        let postgres = bin.join("postgres").display().to_string();
        let server = Command::new("ip")
            .args(["netns", "exec", NS, "runuser", "-u", "postgres", "--"])
            .arg(&postgres)
            .args(["-D", &dir_s, "-k", &dir_s, "-p", "5432"])
            .args(["-c", &format!("listen_addresses={DB}")])
            .args(["-c", "fsync=off"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let db = Database {
            server,
            _data: data,
            _lock: lock,
        };
        let started = Instant::now();
        let addr = format!("{DB}:5432").parse().unwrap();
        while std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "PostgreSQL did not start"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        db
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        // SIGTERM: a smart shutdown (the `ip netns exec` child execs into
        // runuser, which passes it on).
        // SAFETY: kill takes numbers only.
        unsafe { libc::kill(self.server.id() as i32, libc::SIGTERM) };
        let _ = self.server.wait();
        remove_topology();
    }
}

fn example_file(example: &str, name: &str) -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../examples")
            .join(example)
            .join(name),
    )
    .unwrap()
}

/// The spec of a database client function in memory mode `mode`: the
/// database host allowed, its `PG*` variables, one warm-up; `code` adds
/// the runtime, handler and files.
fn client_spec(name: &str, mode: &str, code: Value) -> Value {
    let mut spec = json!({
        "name": name,
        "network": "outbound",
        "network_allow": [format!("{DB}/32:5432")],
        "env": {"PGHOST": DB, "PGUSER": "postgres", "PGDATABASE": "postgres"},
        "warmup": [{"n": 2}],
        "memory_mode": mode,
        "timeout_ms": 20000,
    });
    for (k, v) in code.as_object().expect("an object") {
        spec[k] = v.clone();
    }
    spec
}

/// The database host, started once the prerequisites are there.
fn database() -> Result<Database, String> {
    prerequisites().map(|bin| Database::start(&bin))
}

/// A server whose functions may reach the database host.
fn client_server() -> Server {
    Server::start(&["--network-range", RANGE, "--allow-forced-cold"])
}

/// Deploys client function `name` in memory mode `mode` ([`client_spec`]
/// with `code`) and invokes it warm with `{"n": 4}`: the original's
/// answer, from its first connection.
async fn deploy_and_warm(server: &Server, name: &str, mode: &str, code: Value) -> Value {
    let rec = server.deploy_ready(client_spec(name, mode, code)).await;
    assert_eq!(rec["state"], "ready", "{rec}");
    assert!(!rec["snapshot"].is_null(), "{mode}: no snapshot: {rec}");
    let warm = server.invoke(name, json!({"n": 4})).await.json();
    assert_eq!(warm["squares"], json!([1, 4, 9, 16]), "{warm}");
    assert_eq!(warm["copy"], false, "{warm}");
    assert_eq!(warm["backend"], warm["first_backend"], "{warm}");
    warm
}

/// A forced restore of `name` invoked with `{"n": 3}`: the copy's answer,
/// served by a backend of its own (neither the snapshot's connection nor
/// the original's, `warm`).
async fn restored_copy(server: &Server, name: &str, mode: &str, warm: &Value) -> Value {
    let answer = server
        .invoke_raw(name, br#"{"n": 3}"#.to_vec(), &[("x-thaw-cold", "restore")])
        .await;
    let copy = answer.json();
    eprintln!("{mode} copy: {copy}");
    assert_eq!(copy["copy"], true, "{mode}: {copy}");
    assert_eq!(copy["squares"], json!([1, 4, 9]), "{mode}: {copy}");
    assert_ne!(copy["backend"], copy["first_backend"], "{mode}: {copy}");
    assert_ne!(copy["backend"], warm["backend"], "{mode}: {copy}");
    copy
}

#[tokio::test]
async fn a_postgres_client_function_reconnects_in_every_restored_copy() {
    require_root!();
    let _db = match database() {
        Ok(db) => db,
        Err(why) => skip!("{why}"),
    };
    let server = client_server();
    for mode in ["mmap", "uffd"] {
        let name = format!("pg-{mode}");
        let code = json!({
            "handler": "main.handler",
            "files": {
                "main.py": example_file("postgres-client", "main.py"),
                "requirements.txt": example_file("postgres-client", "requirements.txt"),
            },
        });
        let warm = deploy_and_warm(&server, &name, mode, code).await;
        for _ in 0..2 {
            let copy = restored_copy(&server, &name, mode, &warm).await;
            // The snapshot's connection was cut: the hook saw it fail and
            // opened its own, served by another backend.
            assert_eq!(
                copy["restores"],
                json!(["InterfaceError"]),
                "{mode}: {copy}"
            );
        }
    }
}

/// Acceptance 3: the Node.js twin. The copy's hook finds the old client's
/// query rejected (the connection was cut), opens a new client and the
/// handler writes and reads back a fresh row; the original instance's
/// backend is still connected, as the database itself reports.
#[tokio::test]
async fn a_node_postgres_function_reconnects_in_every_restored_copy() {
    require_root!();
    let _db = match database() {
        Ok(db) => db,
        Err(why) => skip!("{why}"),
    };
    let server = client_server();
    for mode in ["mmap", "uffd"] {
        let name = format!("node-pg-{mode}");
        let code = json!({
            "runtime": "node20",
            "handler": "index.handler",
            "files": {
                "index.js": example_file("node-postgres", "index.js"),
                "package.json": example_file("node-postgres", "package.json"),
                "package-lock.json": example_file("node-postgres", "package-lock.json"),
            },
        });
        let warm = deploy_and_warm(&server, &name, mode, code).await;
        let mut last_row = warm["row"].as_i64().expect("a row id");
        for _ in 0..2 {
            let copy = restored_copy(&server, &name, mode, &warm).await;
            // The hook's query on the snapshot's client was rejected: the
            // connection was cut, not shared with the original.
            let restores = copy["restores"].as_array().expect("restores");
            assert_eq!(restores.len(), 1, "{mode}: {copy}");
            assert!(
                restores[0].as_str().unwrap_or("").starts_with("cut: "),
                "{mode}: {copy}"
            );
            // A new backend (checked above) served a fresh row.
            let row = copy["row"].as_i64().expect("a row id");
            assert!(row > last_row, "{mode}: row {row} after {last_row}: {copy}");
            last_row = row;
            // The original's connection is untouched: its backend is still
            // connected.
            assert_eq!(copy["original_connected"], true, "{mode}: {copy}");
        }
    }
}
