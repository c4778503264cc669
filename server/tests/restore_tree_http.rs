//! Issue 14, process trees through HTTP: a Python function whose init starts
//! a helper process (`subprocess.Popen`, in a session of its own, talking
//! to the parent over its stdin and stdout pipes) is snapshotted at deploy
//! as a tree, and every forced cold start (`x-thaw-cold: restore`) restores
//! the whole tree in the copy's sandbox, in both memory modes: the helper
//! answers through the pipe with the pid, parent, group and session it had
//! when booted; copies are independent; the helper's crash is a clean
//! error; 50 restores leave nothing behind; killing a copy (retire, the
//! root's crash, the server's kill -9) leaves no process behind.

mod common;

use common::{footprint, function, pid_alive, Server};
use serde_json::{json, Value};

const TREE: &str = r#"
import json, os, socket, subprocess, sys
import thaw

HELPER_CODE = r'''
import json, os, sys
count = 0
for line in sys.stdin:
    line = line.strip()
    count += 1
    if line == "ids":
        answer = [os.getpid(), os.getppid(), os.getpgrp(), os.getsid(0)]
    elif line == "fds":
        answer = {}
        for fd in os.listdir("/proc/self/fd"):
            try:
                answer[fd] = os.readlink("/proc/self/fd/" + fd)
            except OSError:
                pass  # the directory being listed, closed since
    elif line == "count":
        answer = count
    else:
        answer = 2 * int(line)
    print(json.dumps(answer), flush=True)
'''

HELPER = subprocess.Popen(
    [sys.executable, "-c", HELPER_CODE],
    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1,
    start_new_session=True,
)

# A second helper on a socket pair passed at a descriptor number of its
# own (fd 3 or above), in a process group of its own in the root's session.
SOCK_CODE = r'''
import json, os, socket, subprocess, sys
s = socket.socket(fileno=int(sys.argv[1]))
# A grandchild of the root: a tree two levels deep.
g = subprocess.Popen(["/bin/sleep", "100000"], stdin=subprocess.DEVNULL)
while True:
    data = s.recv(64)
    if not data:
        break
    ids = [os.getpid(), os.getppid(), os.getpgrp(), os.getsid(0)]
    with open("/proc/%d/stat" % g.pid) as f:
        gppid = int(f.read().rsplit(")", 1)[1].split()[1])
    s.sendall(json.dumps([3 * int(data), ids, [g.pid, gppid, g.poll()]]).encode())
'''
PARENT_SOCK, CHILD_SOCK = socket.socketpair()
SOCK_HELPER = subprocess.Popen(
    [sys.executable, "-c", SOCK_CODE, str(CHILD_SOCK.fileno())],
    pass_fds=[CHILD_SOCK.fileno()], process_group=0,
)
CHILD_SOCK.close()

def ask_sock(n):
    PARENT_SOCK.sendall(str(n).encode())
    return json.loads(PARENT_SOCK.recv(256))

def ask(line):
    HELPER.stdin.write(line + "\n")
    HELPER.stdin.flush()
    answer = HELPER.stdout.readline()
    if not answer:
        raise RuntimeError("the helper is gone (status %r)" % HELPER.poll())
    return json.loads(answer)

ask("1")  # the helper runs before the snapshot

def handler(event, context):
    if event.get("kill_helper"):
        os.kill(HELPER.pid, 9)
        HELPER.wait()
    if event.get("exit"):
        os._exit(3)
    ids = ask("ids")
    triple, sock_ids, grandchild = ask_sock(event.get("n", 21))
    return {
        "triple": triple,
        "sock_helper": sock_ids,
        "grandchild": grandchild,
        "double": ask(str(event.get("n", 21))),
        "helper": {"pid": ids[0], "ppid": ids[1], "pgid": ids[2], "sid": ids[3]},
        "helper_fds": sorted(ask("fds")),
        "count": ask("count"),
        "me": [os.getpid(), os.getpgrp(), os.getsid(0)],
        "popen_pid": HELPER.pid,
        "copy": thaw.is_copy(),
    }
"#;

async fn forced(server: &Server, event: Value) -> common::Answer {
    server
        .invoke_raw(
            "tree",
            serde_json::to_vec(&event).unwrap(),
            &[("x-thaw-cold", "restore")],
        )
        .await
}

async fn run(mode: &str) {
    let mut server = Server::start(&["--allow-forced-cold"]);
    let spec = function(
        "tree",
        TREE,
        json!({"warmup": [{}], "keep_alive_s": 600, "memory_mode": mode}),
    );
    let rec = server.deploy_ready(spec).await;
    assert!(!rec["snapshot"].is_null(), "{mode}: no snapshot: {rec}");

    // The booted instance (the one the snapshot was taken of).
    let booted = server.invoke("tree", json!({})).await;
    assert_eq!(booted.status, 200, "{mode}: {}", booted.text());
    let booted = booted.json();
    assert_eq!(booted["copy"], false, "{mode}");
    assert_eq!(booted["double"], 42);
    let helper = booted["helper"].clone();
    let me = booted["me"].clone();
    assert_eq!(
        helper["ppid"], me[0],
        "{mode}: the helper is the root's child"
    );
    assert_eq!(helper["pid"], booted["popen_pid"]);
    assert_eq!(
        helper["sid"], helper["pid"],
        "{mode}: start_new_session: {booted}"
    );
    assert_eq!(helper["pgid"], helper["pid"]);
    assert_eq!(booted["triple"], 63);
    let sock_helper = booted["sock_helper"].clone();
    assert_eq!(sock_helper[1], me[0], "{mode}: {booted}");
    assert_eq!(sock_helper[2], sock_helper[0], "{mode}: process_group=0");
    assert_eq!(sock_helper[3], me[2], "{mode}: the root's session");
    let grandchild = booted["grandchild"].clone();
    assert_eq!(grandchild[1], sock_helper[0], "{mode}: {booted}");
    assert_eq!(grandchild[2], Value::Null, "{mode}: running: {booted}");
    // Only stdin, stdout (the pipes) and stderr (the sandbox's log pipe):
    // no protocol descriptor leaked into the helper.
    assert_eq!(
        booted["helper_fds"],
        json!(["0", "1", "2"]),
        "{mode}: {booted}"
    );
    // The helper's count of questions in a copy: "1" at init and the
    // warm-up's 4 (the snapshot's state), then this invocation's 4.
    let copy_count = 9;

    for round in 0..2 {
        let a = forced(&server, json!({"n": 50 + round})).await;
        assert_eq!(a.status, 200, "{mode}: {}", a.text());
        assert_eq!(a.header("x-thaw-start"), "restore", "{mode}");
        let copy = a.json();
        assert_eq!(copy["copy"], true, "{mode}");
        assert_eq!(copy["double"], 2 * (50 + round), "{mode}: through the pipe");
        assert_eq!(copy["helper"], helper, "{mode}: the helper's ids");
        assert_eq!(
            copy["triple"],
            3 * (50 + round),
            "{mode}: through the socket"
        );
        assert_eq!(copy["sock_helper"], sock_helper, "{mode}: its ids");
        assert_eq!(copy["grandchild"], grandchild, "{mode}: the grandchild");
        assert_eq!(copy["me"], me, "{mode}: the root's ids");
        assert_eq!(copy["helper_fds"], booted["helper_fds"], "{mode}");
        // Each copy's helper counts from where the snapshot left it.
        assert_eq!(
            copy["count"], copy_count,
            "{mode}: a helper of its own, as the snapshot left it: {copy}"
        );
    }

    // Several copies at once: each its own helper.
    let answers =
        futures_util::future::join_all((0..4).map(|i| forced(&server, json!({"n": 100 + i}))))
            .await;
    for (i, a) in answers.iter().enumerate() {
        assert_eq!(a.status, 200, "{mode}: {}", a.text());
        assert_eq!(a.header("x-thaw-start"), "restore", "{mode}");
        let copy = a.json();
        assert_eq!(copy["double"], 2 * (100 + i as u64), "{mode}");
        assert_eq!(copy["helper"], helper, "{mode}");
        assert_eq!(copy["triple"], 3 * (100 + i as u64), "{mode}");
        assert_eq!(copy["count"], copy_count, "{mode}: independent helpers");
    }

    // The helper's crash: a clean handler error, not a hang.
    let a = forced(&server, json!({"kill_helper": true})).await;
    assert_eq!(a.header("x-thaw-start"), "restore", "{mode}");
    assert!(
        a.text().contains("Broken pipe") || a.text().contains("BrokenPipeError"),
        "{mode}: {} {}",
        a.status,
        a.text()
    );

    // No process, cgroup or mount left behind after many restores, the
    // root's crash included (its helper dies with the sandbox).
    server.settle("tree", 2).await;
    let before = footprint(&server);
    for i in 0..50 {
        let a = forced(&server, json!({"n": i})).await;
        assert_eq!(a.status, 200, "{mode}: {}", a.text());
        assert_eq!(a.json()["double"], 2 * i, "{mode}");
    }
    let a = forced(&server, json!({"exit": true})).await;
    assert_ne!(a.status, 200, "{mode}: the root exited: {}", a.text());
    // Both footprints are taken with nothing launched or torn down in the
    // background (the pool's counts): a leak grows these.
    server.settle("tree", 2).await;
    let after = footprint(&server);
    for (what, b, a) in [
        ("cgroups", before.cgroups, after.cgroups),
        ("processes", before.sandbox_pids, after.sandbox_pids),
        ("mounts", before.mounts, after.mounts),
        ("run dir", before.run_entries, after.run_entries),
    ] {
        assert!(a <= b, "{mode}: {what}: {before:?} → {after:?}");
    }
    assert!(
        after.fds <= before.fds + 16,
        "{mode}: fds {before:?} → {after:?}"
    );

    // (Forced copies are torn down after their answer: the footprint above
    // shows each went with its helper.) A copy that stays (an ordinary cold
    // start, no booted instance left after a restart) leaves no process
    // behind either, its helper included, when the server is killed with
    // SIGKILL and when the function is deleted (its instances retired).
    let helper_pid = helper["pid"].as_i64().unwrap() as i32;
    server.kill9();
    server.spawn();
    for how in ["kill -9", "delete"] {
        let a = server.invoke("tree", json!({})).await;
        assert_eq!(a.status, 200, "{mode} {how}: {}", a.text());
        assert_eq!(a.header("x-thaw-start"), "restore", "{mode} {how}");
        assert_eq!(a.json()["helper"], helper, "{mode} {how}");
        let helpers = with_ns_pid(&server, helper_pid);
        assert_eq!(helpers.len(), 1, "{mode} {how}: the idle copy's helper");
        let pids = server.sandbox_pids();
        if how == "kill -9" {
            server.kill9();
        } else {
            let d = server
                .request(reqwest::Method::DELETE, "/functions/tree", None, &[])
                .await;
            assert!(d.status < 300, "{mode}: delete: {}", d.text());
        }
        let t0 = std::time::Instant::now();
        loop {
            let alive: Vec<i32> = pids
                .iter()
                .chain(&helpers)
                .copied()
                .filter(|&p| pid_alive(p))
                .collect();
            if alive.is_empty() {
                break;
            }
            assert!(
                t0.elapsed().as_secs() < 20,
                "{mode}: left running after {how}: {alive:?} (helper {helpers:?})"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        if how == "kill -9" {
            server.spawn();
        }
    }
}

/// Host pids of this server's sandbox processes that are `ns_pid` in their
/// sandbox's pid namespace.
fn with_ns_pid(server: &Server, ns_pid: i32) -> Vec<i32> {
    server
        .sandbox_pids()
        .into_iter()
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/status"))
                .ok()
                .and_then(|s| {
                    let line = s.lines().find(|l| l.starts_with("NSpid:"))?.to_string();
                    line.split_whitespace().last()?.parse::<i32>().ok()
                })
                == Some(ns_pid)
        })
        .collect()
}

#[tokio::test]
async fn a_helper_process_is_restored_with_its_parent_through_http_mmap() {
    require_root!();
    run("mmap").await;
}

#[tokio::test]
async fn a_helper_process_is_restored_with_its_parent_through_http_uffd() {
    require_root!();
    run("uffd").await;
}

/// A child that exited and was never reaped cannot be recreated.
const ZOMBIE: &str = r#"
import subprocess, time
DONE = subprocess.Popen(["/bin/true"])
time.sleep(0.3)  # it exits; nobody reaps it

def handler(event, context):
    return {"ok": True}
"#;

/// What a tree cannot have refuses the capture with its reason, and the
/// function keeps booting.
#[tokio::test]
async fn a_function_whose_child_is_a_zombie_boots_with_the_reason() {
    require_root!();
    let server = Server::start(&["--allow-forced-cold"]);
    let rec = server
        .deploy_ready(function("zombie", ZOMBIE, json!({"warmup": [{}]})))
        .await;
    assert_eq!(rec["state"], "ready", "{rec}");
    assert!(rec["snapshot"].is_null(), "{rec}");
    let error = rec["error"].as_str().unwrap_or_default();
    assert!(
        error.starts_with("snapshot failed: ") && error.contains("zombie"),
        "{rec}"
    );
    let a = server
        .invoke_raw("zombie", b"{}".to_vec(), &[("x-thaw-cold", "boot")])
        .await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.header("x-thaw-start"), "boot");
    assert_eq!(a.json()["ok"], true);
}

/// The same function without its helper, for the figure below.
const SINGLE: &str = r#"
import os
def handler(event, context):
    return {"double": 2 * event.get("n", 21), "me": os.getpid()}
"#;

/// Prints the median forced cold start (client side, through HTTP) of the
/// tree function against a single-process one, interleaved, in both modes.
/// A figure for docs/restore.md, not a check: `cargo test -p server --test
/// restore_tree_http -- --ignored --nocapture`.
#[tokio::test]
#[ignore]
async fn measure_tree_against_single_cold_starts() {
    require_root!();
    for mode in ["mmap", "uffd"] {
        let server = Server::start(&["--allow-forced-cold"]);
        for (name, code) in [("tree", TREE), ("single", SINGLE)] {
            let rec = server
                .deploy_ready(function(
                    name,
                    code,
                    json!({"warmup": [{}], "keep_alive_s": 600, "memory_mode": mode}),
                ))
                .await;
            assert!(!rec["snapshot"].is_null(), "{rec}");
        }
        // Per function: client-side total, the server's start (the
        // restore), the handler's duration, then each restore phase (ms).
        let mut times: [std::collections::BTreeMap<String, Vec<f64>>; 2] = Default::default();
        for round in 0..40 {
            for (k, name) in ["tree", "single"].iter().enumerate() {
                server.wait_spares(name, 2).await;
                let t0 = std::time::Instant::now();
                let a = server
                    .invoke_raw(name, b"{}".to_vec(), &[("x-thaw-cold", "restore")])
                    .await;
                let took = t0.elapsed().as_secs_f64() * 1000.0;
                assert_eq!(a.status, 200, "{}", a.text());
                assert_eq!(a.json()["double"], 42);
                assert_eq!(a.header("x-thaw-spare"), "hit", "{name}");
                let header = |h: &str| a.header(h).parse::<f64>().unwrap_or(f64::NAN) / 1000.0;
                if round >= 5 {
                    let mut add = |what: &str, ms: f64| {
                        times[k].entry(what.to_string()).or_default().push(ms)
                    };
                    add("0 total (client)", took);
                    add("1 start", header("x-thaw-start-us"));
                    add("2 handler", header("x-thaw-duration-us"));
                    for phase in a.header("x-thaw-restore-us").split(',') {
                        if let Some((name, us)) = phase.split_once('=') {
                            add(
                                &format!("3 phase {name}"),
                                us.parse::<f64>().unwrap_or(f64::NAN) / 1000.0,
                            );
                        }
                    }
                }
            }
        }
        let median = |v: &mut Vec<f64>| {
            v.sort_by(|a, b| a.partial_cmp(b).unwrap());
            v[v.len() / 2]
        };
        let [mut tree, mut single] = times;
        for (what, t) in tree.iter_mut() {
            let Some(s) = single.get_mut(what) else {
                continue;
            };
            let (t, s) = (median(t), median(s));
            eprintln!(
                "{mode}: {what:<24} median of 35: tree (root + helper) {t:7.2} ms, single {s:7.2} ms, x{:.2}",
                t / s
            );
        }
    }
}

/// A pipe whose both ends the function holds, data queued in it.
const INNER_PIPE: &str = r#"
import os
R, W = os.pipe()
os.write(W, b"queued")

def handler(event, context):
    os.close(W)
    first = os.read(R, 100)
    # End of file only if no other process holds the write end.
    rest = os.read(R, 100)
    return {"first": first.decode(), "eof": rest == b""}
"#;

/// The descriptors placed for a restore stub are the copy's alone: neither
/// the sandbox's pid 1 nor its outer process keeps them (a write end held
/// there kept a reader from ever seeing end of file: the handler hung).
#[tokio::test]
async fn a_copy_that_closes_its_pipe_sees_end_of_file() {
    require_root!();
    for mode in ["mmap", "uffd"] {
        let server = Server::start(&["--allow-forced-cold"]);
        let rec = server
            .deploy_ready(function(
                "pipe",
                INNER_PIPE,
                json!({"memory_mode": mode, "keep_alive_s": 600, "timeout_ms": 5000}),
            ))
            .await;
        assert!(!rec["snapshot"].is_null(), "{mode}: {rec}");
        for _ in 0..2 {
            let a = server
                .invoke_raw("pipe", b"{}".to_vec(), &[("x-thaw-cold", "restore")])
                .await;
            assert_eq!(a.status, 200, "{mode}: {}", a.text());
            assert_eq!(a.header("x-thaw-start"), "restore", "{mode}");
            assert_eq!(a.json(), json!({"first": "queued", "eof": true}), "{mode}");
        }
    }
}
