//! Issue 14, acceptance 5: a Python function whose init starts a thread
//! pool and a background ticker thread is snapshotted at deploy; a forced
//! restore (`x-thaw-cold: restore`) answers with the pool computing, the
//! ticker advancing and every thread id unchanged, in both memory modes.

mod common;

use common::{function, Server};
use serde_json::json;

const THREADED: &str = r#"
import os, threading, time
from concurrent.futures import ThreadPoolExecutor
import thaw

POOL = ThreadPoolExecutor(max_workers=4, thread_name_prefix="pool")
# Start every worker now (init), so they exist in the snapshot.
list(POOL.map(lambda x: time.sleep(0.02) or x, range(8)))
TICKS = 0

def _tick():
    global TICKS
    while True:
        TICKS += 1
        time.sleep(0.01)

TICKER = threading.Thread(target=_tick, daemon=True, name="ticker")
TICKER.start()

def _square(x):
    return x * x

def handler(event, context):
    before = TICKS
    total = sum(POOL.map(_square, range(1000)))
    deadline = time.time() + 10
    while TICKS < before + 3 and time.time() < deadline:
        time.sleep(0.005)
    return {
        "sum": total,
        "ticks_before": before,
        "ticks_after": TICKS,
        "copy": thaw.is_copy(),
        "threads": sorted(t.native_id for t in threading.enumerate()),
        "workers": sorted(t.native_id for t in POOL._threads),
        "ticker": TICKER.native_id,
        "tasks": sorted(int(t) for t in os.listdir("/proc/self/task")),
    }
"#;

async fn run(mode: &str) {
    let mut server = Server::start(&["--allow-forced-cold"]);
    let spec = function(
        "threaded",
        THREADED,
        json!({"warmup": [{}], "keep_alive_s": 600, "memory_mode": mode}),
    );
    let rec = server.deploy_ready(spec).await;
    assert!(!rec["snapshot"].is_null(), "{mode}: no snapshot: {rec}");
    let original = server.invoke("threaded", json!({})).await.json();
    assert_eq!(original["copy"], false);
    let want_sum: u64 = (0..1000u64).map(|x| x * x).sum();
    assert_eq!(original["sum"], want_sum);
    assert_eq!(original["workers"].as_array().unwrap().len(), 4);
    assert_eq!(
        original["threads"].as_array().unwrap().len(),
        6,
        "main, ticker, 4 workers: {original}"
    );

    // Restart: no process of the function is alive any more.
    assert!(server.stop().success());
    assert!(server.sandbox_pids().is_empty());
    server.spawn();
    for _ in 0..2 {
        let a = server
            .invoke_raw(
                "threaded",
                serde_json::to_vec(&json!({})).unwrap(),
                &[("x-thaw-cold", "restore")],
            )
            .await;
        assert_eq!(a.status, 200, "{mode}: {}", a.text());
        assert_eq!(a.header("x-thaw-start"), "restore", "{mode}");
        let copy = a.json();
        assert_eq!(copy["copy"], true, "{mode}");
        assert_eq!(copy["sum"], want_sum, "{mode}: the pool computes");
        assert!(
            copy["ticks_after"].as_u64().unwrap() >= copy["ticks_before"].as_u64().unwrap() + 3,
            "{mode}: the ticker advances: {copy}"
        );
        for key in ["threads", "workers", "ticker", "tasks"] {
            assert_eq!(copy[key], original[key], "{mode}: {key} unchanged");
        }
    }
}

#[tokio::test]
async fn a_thread_pool_and_a_ticker_survive_a_forced_restore_mmap() {
    require_root!();
    run("mmap").await;
}

#[tokio::test]
async fn a_thread_pool_and_a_ticker_survive_a_forced_restore_uffd() {
    require_root!();
    run("uffd").await;
}
