//! Recycled sandboxes (docs/restore.md, "Recycled sandboxes"): a forced
//! cold start's sandbox, reset by its pid 1, becomes the next spare of its
//! version, and the next copy in it sees nothing of the previous one. Real
//! server, real sandboxes, both memory modes.

mod common;

use std::time::{Duration, Instant};

use common::{function, Server};
use serde_json::{json, Value};

/// Reports what a copy can see of its sandbox; on request leaves behind
/// everything a copy could: a file in /tmp, System V objects, a POSIX
/// queue, a daemon (setsid + double fork), a fork bomb, a child killed by
/// the OOM killer.
const PROBE: &str = r#"
import ctypes, os, socket, time

libc = ctypes.CDLL(None, use_errno=True)
IPC_CREAT = 0o1000
KEY = 0x7468

def rows(path):
    return [l for l in open(path).read().splitlines()[1:] if l.strip()]

def mq_exists():
    fd = libc.mq_open(b"/thaw-recycle", os.O_RDONLY)
    if fd >= 0:
        libc.close(fd)
        return True
    return False

def daemon(body):
    pid = os.fork()
    if pid == 0:
        os.setsid()
        if os.fork() == 0:
            try:
                body()
            finally:
                os._exit(0)
        os._exit(0)
    os.waitpid(pid, 0)

def spin():
    while True:
        pass

def bomb():
    while True:
        try:
            os.fork()
        except OSError:
            time.sleep(0.001)

def hog():
    hog = []
    while True:
        hog.append(bytearray(8 << 20))

def handler(event, context):
    seen = {
        "mntns": os.readlink("/proc/self/ns/mnt"),
        "ipcns": os.readlink("/proc/self/ns/ipc"),
        "hostname": socket.gethostname(),
        "tmp": sorted(os.listdir("/tmp")),
        "shm": len(rows("/proc/sysvipc/shm")),
        "sem": len(rows("/proc/sysvipc/sem")),
        "msg": len(rows("/proc/sysvipc/msg")),
        "mq": mq_exists(),
        "others": sorted(int(p) for p in os.listdir("/proc")
                         if p.isdigit() and int(p) not in (1, os.getpid())),
        "pid": os.getpid(),
    }
    what = event.get("do")
    if what == "dirty":
        open("/tmp/left-behind", "w").write("x")
        assert libc.shmget(KEY, 4096, IPC_CREAT | 0o600) >= 0, ctypes.get_errno()
        assert libc.semget(KEY, 1, IPC_CREAT | 0o600) >= 0, ctypes.get_errno()
        assert libc.msgget(KEY, IPC_CREAT | 0o600) >= 0, ctypes.get_errno()
        mqd = libc.mq_open(b"/thaw-recycle", os.O_CREAT | os.O_RDWR, 0o600, None)
        assert mqd >= 0, ctypes.get_errno()
        # A child the OOM killer takes (the biggest process of the cgroup).
        pid = os.fork()
        if pid == 0:
            hog()
        _, status = os.waitpid(pid, 0)
        seen["hog_killed"] = os.WIFSIGNALED(status) and os.WTERMSIG(status) == 9
        daemon(spin)
        daemon(bomb)
        time.sleep(0.05)
        seen["left"] = len([p for p in os.listdir("/proc") if p.isdigit()])
    if what == "exit":
        os._exit(3)
    return seen
"#;

fn metric(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

async fn recycled(server: &Server) -> f64 {
    let m = server.get("/metrics").await.text();
    metric(&m, "thaw_sandbox_recycled_total ").unwrap_or(0.0)
}

/// Waits until `n` sandboxes were recycled and the spare is ready again.
async fn wait_recycled(server: &Server, n: f64) {
    let t0 = Instant::now();
    while recycled(server).await < n {
        let m = server.get("/metrics").await.text();
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "no recycle: {}",
            m.lines()
                .filter(|l| l.contains("recycled"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.wait_spares("probe", 1).await;
}

async fn forced(server: &Server, event: Value) -> common::Answer {
    server
        .invoke_raw(
            "probe",
            serde_json::to_vec(&event).unwrap(),
            &[("x-thaw-cold", "restore")],
        )
        .await
}

fn assert_clean(seen: &Value, what: &str) {
    assert_eq!(seen["hostname"], "thaw", "{what}: {seen}");
    assert_eq!(seen["tmp"], json!([]), "{what}: /tmp: {seen}");
    for kind in ["shm", "sem", "msg"] {
        assert_eq!(seen[kind], 0, "{what}: System V {kind}: {seen}");
    }
    assert_eq!(seen["mq"], false, "{what}: POSIX queue: {seen}");
    assert_eq!(seen["others"], json!([]), "{what}: other processes: {seen}");
}

async fn a_recycled_sandbox_shows_nothing_of_the_previous_copy(mode: &str) {
    let server = Server::start(&[
        "--allow-forced-cold",
        "--spare-sandboxes",
        "1",
        "--memory-mode",
        mode,
    ]);
    let rec = server
        .deploy_ready(function(
            "probe",
            PROBE,
            json!({"warmup": [{}], "keep_alive_s": 600, "memory_mb": 96, "pids": 64}),
        ))
        .await;
    assert!(!rec["snapshot"].is_null(), "{rec}");
    server.wait_spares("probe", 1).await;

    // The first copy, in a fresh spare, leaves everything behind.
    let a = forced(&server, json!({"do": "dirty"})).await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.header("x-thaw-spare"), "hit");
    let first = a.json();
    assert_clean(&first, "a fresh sandbox");
    assert_eq!(first["hog_killed"], true, "{first}");
    assert!(
        first["left"].as_u64().unwrap() > 3,
        "daemons running: {first}"
    );

    // Its sandbox is recycled into the spare the next cold start takes.
    wait_recycled(&server, 1.0).await;
    let b = forced(&server, json!({})).await;
    assert_eq!(b.status, 200, "{}", b.text());
    assert_eq!(b.header("x-thaw-spare"), "hit");
    let second = b.json();
    assert_eq!(
        second["mntns"], first["mntns"],
        "the same sandbox (mount namespace): {first} / {second}"
    );
    assert_ne!(second["ipcns"], first["ipcns"], "a fresh IPC namespace");
    assert_clean(&second, "a recycled sandbox");
    assert_eq!(second["pid"], first["pid"], "the snapshot's pid");

    // The OOM kill of the first copy's child is not the next copy's: its
    // own crash is reported as what it is.
    wait_recycled(&server, 2.0).await;
    let c = forced(&server, json!({"do": "exit"})).await;
    assert_eq!(c.status, 502, "{}", c.text());
    let v = c.json();
    let message = v["message"].as_str().unwrap();
    assert!(message.contains("status 3"), "{v}");
    assert!(!message.contains("memory"), "{v}");

    // A crashed copy's sandbox is not recycled; the pool makes a new spare,
    // and a copy there still answers.
    server.wait_spares("probe", 1).await;
    let d = forced(&server, json!({})).await;
    assert_eq!(d.status, 200, "{}", d.text());
    assert_clean(&d.json(), "after a crash");
    let m = server.get("/metrics").await.text();
    assert_eq!(
        metric(&m, "thaw_sandbox_not_recycled_total{reason=\"failed\"} ").unwrap_or(0.0),
        0.0,
        "{m}"
    );
}

#[tokio::test]
async fn a_recycled_sandbox_shows_nothing_of_the_previous_copy_mmap() {
    require_root!();
    a_recycled_sandbox_shows_nothing_of_the_previous_copy("mmap").await;
}

#[tokio::test]
async fn a_recycled_sandbox_shows_nothing_of_the_previous_copy_uffd() {
    require_root!();
    a_recycled_sandbox_shows_nothing_of_the_previous_copy("uffd").await;
}
