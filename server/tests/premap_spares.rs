//! Pre-mapped spares (docs/restore.md, "Pre-mapped spares"): a spare's
//! copy restored up to its memory by a thread of its own ahead of the
//! claim, through the real server binary. With `THAW_PREMAP_SPARES=0` in
//! the environment the same tests check that nothing is pre-mapped and the
//! claims restore as before.

mod common;

use std::time::{Duration, Instant};

use common::{function, Server};
use serde_json::{json, Value};

const SEEDED: &str = r#"
import os, random
CALLS = 0
STATE = random.random()

def handler(event, context):
    global CALLS
    CALLS += 1
    return {"calls": CALLS, "state": STATE, "fresh": random.random(), "pid": os.getpid()}
"#;

fn spec() -> Value {
    function("seeded", SEEDED, json!({"warmup": [{}, {}]}))
}

/// Whether the server pre-maps spares (the tests' environment decides).
fn premap_on() -> bool {
    std::env::var_os("THAW_PREMAP_SPARES").is_none_or(|v| v != "0")
}

/// The server's threads named `thaw-premap`.
fn premap_threads(server: &Server) -> usize {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{}/task", server.pid())) else {
        return 0;
    };
    tasks
        .flatten()
        .filter(|t| {
            std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim() == "thaw-premap")
        })
        .count()
}

/// A field of `/proc/PID/status`.
fn status_field(pid: i32, name: &str) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_string()))
}

/// The sandbox processes that are pre-mapped stubs: traced by the server
/// and mapping the snapshot's image.
fn premapped_stubs(server: &Server) -> Vec<i32> {
    server
        .sandbox_pids()
        .into_iter()
        .filter(|&pid| status_field(pid, "TracerPid:").is_some_and(|t| t != "0"))
        .filter(|&pid| {
            std::fs::read_to_string(format!("/proc/{pid}/maps"))
                .is_ok_and(|m| m.contains("/store/images/"))
        })
        .collect()
}

/// Waits until `n` stubs are pre-mapped (with pre-mapping on).
async fn wait_premapped(server: &Server, n: usize) -> Vec<i32> {
    let t0 = Instant::now();
    loop {
        let stubs = premapped_stubs(server);
        if stubs.len() == n {
            return stubs;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "never {n} pre-mapped stubs: {stubs:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the working set of the snapshot in deploy record `rec` is
/// recorded (its file written).
async fn wait_working_set(server: &Server, rec: &Value) {
    let id = rec["snapshot"]["id"].as_str().unwrap();
    let file = server.data.join(format!("snapshots/{id}.workingset"));
    let t0 = Instant::now();
    while !file.exists() {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "no {}",
            file.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sandbox processes that are zombies.
fn zombies(server: &Server) -> Vec<i32> {
    server
        .sandbox_pids()
        .into_iter()
        .filter(|&pid| status_field(pid, "State:").is_some_and(|s| s.starts_with('Z')))
        .collect()
}

async fn forced_restore(server: &Server) -> common::Answer {
    server
        .invoke_raw("seeded", b"{}".to_vec(), &[("x-thaw-cold", "restore")])
        .await
}

/// The value of phase `name` in `x-thaw-restore-us`.
fn phase(a: &common::Answer, name: &str) -> u64 {
    a.header("x-thaw-restore-us")
        .split(',')
        .find_map(|p| p.strip_prefix(&format!("{name}=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {}", a.header("x-thaw-restore-us")))
}

#[tokio::test]
async fn a_premapped_spare_answers_with_the_snapshot_state_and_a_fresh_seed() {
    require_root!();
    let server = Server::start(&["--allow-forced-cold"]);
    let rec = server.deploy_ready(spec()).await;
    assert!(!rec["snapshot"].is_null(), "{rec}");
    server.wait_spares("seeded", 2).await;
    if premap_on() {
        wait_premapped(&server, 2).await;
        assert_eq!(premap_threads(&server), 2, "a thread per pre-mapped spare");
        // Once the record counts no pre-map left, both stubs are mapped.
        server.wait_spares("seeded", 2).await;
        assert_eq!(premapped_stubs(&server).len(), 2);
    } else {
        server.wait_spares("seeded", 2).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(premapped_stubs(&server).is_empty());
        assert_eq!(premap_threads(&server), 0);
    }
    let mut answers = Vec::new();
    for round in 0..3 {
        if round == 2 {
            // Spares made and pre-mapped once the working set is recorded.
            wait_working_set(&server, &rec).await;
            server.settle("seeded", 2).await;
            if premap_on() {
                // Those left from before the recording: claimed first.
                for _ in 0..2 {
                    let a = forced_restore(&server).await;
                    assert_eq!(a.status, 200, "{}", a.text());
                }
                server.settle("seeded", 2).await;
                wait_premapped(&server, 2).await;
            }
        }
        let a = forced_restore(&server).await;
        assert_eq!(a.status, 200, "{}", a.text());
        assert_eq!(a.header("x-thaw-start"), "restore");
        assert_eq!(a.header("x-thaw-spare"), "hit");
        if premap_on() {
            assert!(
                a.header("x-thaw-premap-us")
                    .parse::<u64>()
                    .is_ok_and(|us| us > 0),
                "pre-mapped: {:?}",
                a.header("x-thaw-premap-us")
            );
            assert_eq!(phase(&a, "seize"), 0, "seized at the pre-map");
            // Spares pre-mapped before the working set was recorded (at
            // deploy) have it populated at the claim (`mappings`); one
            // pre-mapped after has nothing left to map.
            if round == 2 {
                assert_eq!(phase(&a, "mappings"), 0, "mapped at the pre-map");
            }
        } else {
            assert_eq!(a.header("x-thaw-premap-us"), "");
            assert!(phase(&a, "mappings") > 0);
        }
        answers.push(a.json());
    }
    // Each copy has the snapshot's state (two warm-up calls, the value
    // drawn at import) and a generator reseeded at its restore.
    for a in &answers {
        assert_eq!(a["calls"], 3, "{a}");
        assert_eq!(a["state"], answers[0]["state"], "{answers:?}");
    }
    assert_ne!(answers[0]["fresh"], answers[1]["fresh"], "{answers:?}");
    assert_ne!(answers[1]["fresh"], answers[2]["fresh"], "{answers:?}");
    if premap_on() {
        // A claimed copy's thread cleans up once no cold start is in
        // flight (`premap::Linger`): then only the spares' threads are left.
        server.wait_spares("seeded", 2).await;
        let t0 = Instant::now();
        while premap_threads(&server) != 2 {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "claimed copies' threads never ended: {} threads for 2 spares",
                premap_threads(&server)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // A warm call of a pre-mapped copy goes on from its state.
    let a = server.invoke("seeded", json!({})).await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert!(a.json()["calls"].as_u64().unwrap() >= 3, "{}", a.text());
}

#[tokio::test]
async fn dropped_premapped_spares_leave_no_process_thread_or_cgroup() {
    require_root!();
    let mut server = Server::start(&["--allow-forced-cold"]);
    server.deploy_ready(spec()).await;
    server.settle("seeded", 2).await;
    // The spares' processes: those of the sandboxes listed as spares.
    let v = server.get("/functions/seeded").await.json();
    let spares: Vec<String> = v["instance_list"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["state"] == "spare")
        .map(|i| i["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(spares.len(), 2, "{v}");
    let old_pids: Vec<i32> = server
        .sandbox_cgroups()
        .into_iter()
        .filter(|cg| {
            spares
                .iter()
                .any(|id| cg.to_string_lossy().ends_with(id.as_str()))
        })
        .flat_map(|cg| {
            std::fs::read_to_string(cg.join("cgroup.procs"))
                .unwrap_or_default()
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<i32>>()
        })
        .collect();
    assert!(
        old_pids.len() >= 4,
        "init and stub of each spare: {old_pids:?}"
    );
    if premap_on() {
        wait_premapped(&server, 2).await;
    }
    // A new version: the old version's spares are stale and dropped.
    let rec = server.deploy_ready(spec()).await;
    assert_eq!(rec["version"], 2, "{rec}");
    server.settle("seeded", 2).await;
    let t0 = Instant::now();
    while old_pids
        .iter()
        .any(|p| std::path::Path::new(&format!("/proc/{p}")).exists())
    {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "old spares' processes (or zombies) left: {old_pids:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if premap_on() {
        wait_premapped(&server, 2).await;
        assert_eq!(premap_threads(&server), 2, "the old spares' threads ended");
    }
    // Deleting the function drops every spare.
    let a = server
        .request(reqwest::Method::DELETE, "/functions/seeded", None, &[])
        .await;
    assert!(a.status < 300, "{}", a.text());
    let t0 = Instant::now();
    loop {
        let (threads, pids, cgroups) = (
            premap_threads(&server),
            server.sandbox_pids(),
            server.sandbox_cgroups(),
        );
        if threads == 0 && pids.is_empty() && cgroups.is_empty() {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "left after the delete: {threads} threads, pids {pids:?}, cgroups {cgroups:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // And a server stop with pre-mapped spares ready leaves nothing.
    server.deploy_ready(spec()).await;
    server.wait_spares("seeded", 2).await;
    if premap_on() {
        wait_premapped(&server, 2).await;
    }
    let pids = server.sandbox_pids();
    assert!(server.stop().success());
    assert!(
        server.sandbox_cgroups().is_empty(),
        "{:?}",
        server.sandbox_cgroups()
    );
    // Gone, not left as zombies (the sandboxes die with their pid 1s).
    let t0 = Instant::now();
    loop {
        let left: Vec<i32> = pids
            .iter()
            .copied()
            .filter(|p| std::path::Path::new(&format!("/proc/{p}")).exists())
            .collect();
        if left.is_empty() {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "outlived the server: {left:?} ({:?})",
            left.iter()
                .map(|p| status_field(*p, "State:"))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_killed_premapped_stub_is_skipped_and_the_claim_still_answers() {
    require_root!();
    let server = Server::start(&["--allow-forced-cold"]);
    server.deploy_ready(spec()).await;
    server.settle("seeded", 2).await;
    let stubs = if premap_on() {
        wait_premapped(&server, 2).await
    } else {
        // The stubs waiting in pause(): pid 2 of each spare sandbox.
        server
            .sandbox_pids()
            .into_iter()
            .filter(|&p| status_field(p, "NSpid:").is_some_and(|n| n.ends_with("\t2")))
            .collect()
    };
    assert!(!stubs.is_empty());
    for pid in &stubs {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(*pid),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
    }
    // Dead: a zombie (a pre-mapped stub's tracer has not waited for it
    // yet) or gone.
    let t0 = Instant::now();
    while stubs
        .iter()
        .any(|&p| status_field(p, "State:").is_some_and(|s| !s.starts_with('Z')))
    {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "{stubs:?} still alive"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let a = forced_restore(&server).await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.json()["calls"], 3, "{}", a.text());
    // Its spares were of no use: the claim made its own stub.
    assert_eq!(a.header("x-thaw-spare"), "miss", "{}", a.text());
    // The dead spares were torn down, new ones made; nothing is left
    // unreaped.
    server.settle("seeded", 2).await;
    assert!(zombies(&server).is_empty(), "{:?}", zombies(&server));
    if premap_on() {
        wait_premapped(&server, 2).await;
        assert_eq!(premap_threads(&server), 2);
    }
    let a = forced_restore(&server).await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.header("x-thaw-spare"), "hit");
}

/// Arms, in its warm-up (just before the snapshot), an interval timer
/// (`ITIMER_REAL`, whose `SIGALRM` handler counts firings), a timerfd and
/// a POSIX timer (`SIGEV_NONE`), each one-shot for `T` seconds, and a
/// timerfd that expired once, unread; an invocation answers what each
/// timer has left, how often `SIGALRM` came and the expired timerfd's
/// count.
const ALARM: &str = r#"
import ctypes, os, signal, struct, time

libc = ctypes.CDLL(None, use_errno=True)
T = 2.0
FIRED = 0
TFD = -1
EXPIRED = -1
TIMER = ctypes.c_void_p()

def _alarm(signum, frame):
    global FIRED
    FIRED += 1

signal.signal(signal.SIGALRM, _alarm)

class Timespec(ctypes.Structure):
    _fields_ = [("sec", ctypes.c_long), ("nsec", ctypes.c_long)]

class Itimerspec(ctypes.Structure):
    _fields_ = [("interval", Timespec), ("value", Timespec)]

class Sigevent(ctypes.Structure):
    _fields_ = [("value", ctypes.c_uint64), ("signo", ctypes.c_int),
                ("notify", ctypes.c_int), ("pad", ctypes.c_int * 12)]

def _spec(seconds):
    s = Itimerspec()
    s.value.sec = int(seconds)
    s.value.nsec = int((seconds % 1) * 1e9)
    return s

def _left(spec):
    return spec.value.sec + spec.value.nsec / 1e9

def handler(event, context):
    global TFD, EXPIRED
    if event.get("arm"):
        EXPIRED = libc.timerfd_create(time.CLOCK_MONOTONIC, os.O_NONBLOCK)
        assert EXPIRED >= 0, ctypes.get_errno()
        assert libc.timerfd_settime(EXPIRED, 0, ctypes.byref(_spec(0.001)), None) == 0, ctypes.get_errno()
        time.sleep(0.05)
        signal.setitimer(signal.ITIMER_REAL, T)
        TFD = libc.timerfd_create(time.CLOCK_MONOTONIC, os.O_NONBLOCK)
        assert TFD >= 0, ctypes.get_errno()
        assert libc.timerfd_settime(TFD, 0, ctypes.byref(_spec(T)), None) == 0, ctypes.get_errno()
        none = Sigevent(notify=1)
        assert libc.timer_create(time.CLOCK_MONOTONIC, ctypes.byref(none), ctypes.byref(TIMER)) == 0, ctypes.get_errno()
        assert libc.timer_settime(TIMER, 0, ctypes.byref(_spec(T)), None) == 0, ctypes.get_errno()
        return {"armed": True}
    tfd = Itimerspec()
    assert libc.timerfd_gettime(TFD, ctypes.byref(tfd)) == 0, ctypes.get_errno()
    posix = Itimerspec()
    assert libc.timer_gettime(TIMER, ctypes.byref(posix)) == 0, ctypes.get_errno()
    try:
        ticks = struct.unpack("Q", os.read(EXPIRED, 8))[0]
    except BlockingIOError:
        ticks = 0
    return {
        "ticks": ticks,
        "fired": FIRED,
        "itimer": signal.getitimer(signal.ITIMER_REAL)[0],
        "timerfd": _left(tfd),
        "posix": _left(posix),
    }
"#;

/// A timer armed in the snapshot counts from the claim, not from the
/// pre-map (docs/restore.md, "Pre-mapped spares": timers are set in the
/// claim's batch): a spare pre-mapped, then left waiting longer than the
/// timers had left, answers its first invocation with no `SIGALRM` yet and
/// each timer with about what it had left in the snapshot (2 s less the
/// time to the capture), not expired. Timers set at the pre-map would have
/// fired while the spare waited.
#[tokio::test]
async fn timers_of_a_premapped_spare_count_from_its_claim() {
    require_root!();
    let server = Server::start(&["--allow-forced-cold"]);
    let rec = server
        .deploy_ready(function("alarm", ALARM, json!({"warmup": [{"arm": true}]})))
        .await;
    assert!(!rec["snapshot"].is_null(), "not snapshotted: {rec}");
    server.settle("alarm", 2).await;
    // A first copy records the working set; the spares pre-mapped before
    // it existed (pre-mapped to their memory only: their claim populates
    // it) are claimed, so that those made next are pre-mapped with it,
    // as far ahead as they go.
    let claim = || async {
        let a = server
            .invoke_raw("alarm", b"{}".to_vec(), &[("x-thaw-cold", "restore")])
            .await;
        assert_eq!(a.status, 200, "{}", a.text());
        assert_eq!(a.header("x-thaw-start"), "restore", "{}", a.text());
        a
    };
    claim().await;
    wait_working_set(&server, &rec).await;
    server.settle("alarm", 2).await;
    for _ in 0..2 {
        claim().await;
    }
    server.settle("alarm", 2).await;
    if premap_on() {
        wait_premapped(&server, 2).await;
    }
    // Longer than the timers' 2 s.
    tokio::time::sleep(Duration::from_millis(3_000)).await;
    let a = claim().await;
    assert_eq!(a.header("x-thaw-spare"), "hit", "{}", a.text());
    if premap_on() {
        assert_eq!(phase(&a, "mappings"), 0, "mapped at the pre-map");
    }
    let body = a.json();
    assert_eq!(body["fired"], 0, "SIGALRM came before the claim: {body}");
    assert_eq!(body["ticks"], 1, "the unread expiration: {body}");
    for timer in ["itimer", "timerfd", "posix"] {
        let left = body[timer].as_f64().unwrap();
        assert!(
            left > 1.0 && left <= 2.0,
            "{timer}: {left} s left, not counted from the claim: {body}"
        );
    }
}

/// Whether spares pre-mapped without a working set are planned in place
/// once one is recorded (the tests' environment decides, as the server's).
fn replan_on() -> bool {
    std::env::var_os("THAW_PREMAP_REPLAN").is_none_or(|v| v != "0")
}

/// The spares made at deploy are pre-mapped before any copy recorded the
/// snapshot's working set; once the first copy has, the one left populates
/// it in place (docs/restore.md, "Pre-mapped spares"), so that claiming it
/// populates nothing on the request's path. Two claims at once take both
/// spares, that one among them. With `THAW_PREMAP_REPLAN=0` it is populated
/// at its claim instead.
#[tokio::test]
async fn a_spare_premapped_before_the_working_set_is_planned_in_place() {
    require_root!();
    if !premap_on() {
        eprintln!("pre-mapped spares are off (THAW_PREMAP_SPARES=0): nothing to plan");
        return;
    }
    let server = Server::start(&["--allow-forced-cold"]);
    let rec = server.deploy_ready(spec()).await;
    assert!(!rec["snapshot"].is_null(), "{rec}");
    server.settle("seeded", 2).await;
    wait_premapped(&server, 2).await;
    let id = rec["snapshot"]["id"].as_str().unwrap();
    assert!(
        !server
            .data
            .join(format!("snapshots/{id}.workingset"))
            .exists(),
        "the spares are to be pre-mapped before a working set exists"
    );
    // The first copy (a spare without a plan, and none to populate yet)
    // records the working set in its first invocation.
    let first = forced_restore(&server).await;
    assert_eq!(first.status, 200, "{}", first.text());
    assert_eq!(first.header("x-thaw-spare"), "hit");
    wait_working_set(&server, &rec).await;
    server.settle("seeded", 2).await;
    wait_premapped(&server, 2).await;
    let (a, b) = tokio::join!(forced_restore(&server), forced_restore(&server));
    let mut populated_at_claim = 0;
    for answer in [&a, &b] {
        assert_eq!(answer.status, 200, "{}", answer.text());
        assert_eq!(answer.header("x-thaw-spare"), "hit", "two spares ready");
        assert_eq!(phase(answer, "seize"), 0, "seized at the pre-map");
        if phase(answer, "mappings") > 0 {
            populated_at_claim += 1;
        }
        assert_eq!(answer.json()["calls"], 3, "{}", answer.text());
    }
    if replan_on() {
        assert_eq!(
            populated_at_claim,
            0,
            "the spare from before the recording was planned in place: {} / {}",
            a.header("x-thaw-restore-us"),
            b.header("x-thaw-restore-us")
        );
    } else {
        assert_eq!(populated_at_claim, 1, "the spare from before the recording");
    }
}
