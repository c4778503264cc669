//! Issue 19 through the API, in real sandboxes: a Python function whose
//! init arms an interval timer (a handler counts its ticks), leaves a
//! blocked signal pending, and raises its `oom_score_adj` is snapshotted at
//! deploy; a forced restore (`x-thaw-cold: restore`) of it sees its timer
//! tick at the saved interval, gets the pending signal once with its
//! sender, and keeps its `oom_score_adj`.

mod common;

use common::{function, Server};
use serde_json::json;

const TIMERS: &str = r#"
import os, signal, time

TICKS = 0

def _tick(signum, frame):
    global TICKS
    TICKS += 1

signal.signal(signal.SIGALRM, _tick)
signal.setitimer(signal.ITIMER_REAL, 0.05, 0.05)
signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGUSR1])
os.kill(os.getpid(), signal.SIGUSR1)
with open("/proc/self/oom_score_adj", "w") as f:
    f.write("345")

def handler(event, context):
    start = TICKS
    deadline = time.monotonic() + 10
    while TICKS < start + 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    pending = signal.SIGUSR1 in signal.sigpending()
    first = signal.sigtimedwait([signal.SIGUSR1], 0)
    second = signal.sigtimedwait([signal.SIGUSR1], 0)
    with open("/proc/self/oom_score_adj") as f:
        oom = int(f.read())
    return {
        "ticked": TICKS - start,
        "interval": signal.getitimer(signal.ITIMER_REAL)[1],
        "pending": pending,
        "sender": first.si_pid if first else None,
        "code": first.si_code if first else None,
        "pid": os.getpid(),
        "again": second is not None,
        "oom": oom,
    }
"#;

#[tokio::test]
async fn a_restored_function_keeps_its_timer_pending_signal_and_oom_score_adj() {
    require_root!();
    let server = Server::start(&["--allow-forced-cold"]);
    let rec = server
        .deploy_ready(function("timers", TIMERS, json!({"keep_alive_s": 600})))
        .await;
    assert!(!rec["snapshot"].is_null(), "not snapshotted: {rec}");
    let answer = server
        .invoke_raw("timers", b"{}".to_vec(), &[("x-thaw-cold", "restore")])
        .await;
    assert_eq!(
        answer.header("x-thaw-start"),
        "restore",
        "{}",
        answer.text()
    );
    let body = answer.json();
    assert!(body["ticked"].as_u64().unwrap() >= 2, "{body}");
    assert_eq!(body["interval"], 0.05, "{body}");
    assert_eq!(body["pending"], true, "{body}");
    assert_eq!(body["sender"], body["pid"], "{body}");
    assert_eq!(body["code"], 0, "SI_USER: {body}");
    assert_eq!(body["again"], false, "delivered once: {body}");
    assert_eq!(body["oom"], 345, "{body}");
}

/// An inotify watch on the sandbox's own `/tmp`, made at init: the copy's
/// watch is re-added by path inside the copy's sandbox (its own `/tmp`)
/// and reports a file created there, with the saved wd.
#[tokio::test]
async fn a_restored_function_keeps_its_inotify_watch_in_its_own_sandbox() {
    require_root!();
    let server = Server::start(&["--allow-forced-cold"]);
    let code = r#"
import ctypes, os, struct
libc = ctypes.CDLL(None, use_errno=True)
WATCH = libc.inotify_init1(os.O_NONBLOCK)
assert WATCH >= 0, ctypes.get_errno()
WD = libc.inotify_add_watch(WATCH, b"/tmp", 0x100)

def handler(event, context):
    with open("/tmp/" + event["name"], "w"):
        pass
    data = os.read(WATCH, 4096)
    wd, mask, cookie, length = struct.unpack_from("iIII", data)
    name = data[16:16 + length].rstrip(b"\0").decode()
    return {"wd": wd, "saved_wd": WD, "mask": mask, "name": name}
"#;
    let rec = server
        .deploy_ready(function("watcher", code, json!({"keep_alive_s": 600})))
        .await;
    assert!(!rec["snapshot"].is_null(), "not snapshotted: {rec}");
    let answer = server
        .invoke_raw(
            "watcher",
            br#"{"name": "made-in-the-copy"}"#.to_vec(),
            &[("x-thaw-cold", "restore")],
        )
        .await;
    assert_eq!(
        answer.header("x-thaw-start"),
        "restore",
        "{}",
        answer.text()
    );
    let body = answer.json();
    assert_eq!(body["wd"], body["saved_wd"], "{body}");
    assert_eq!(body["mask"], 0x100, "IN_CREATE: {body}");
    assert_eq!(body["name"], "made-in-the-copy", "{body}");
}
