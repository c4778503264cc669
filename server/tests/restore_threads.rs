//! Issue 14, acceptance 5: a Python function whose init starts a thread
//! pool and a background ticker thread is snapshotted at deploy; a forced
//! restore (`x-thaw-cold: restore`) answers with the pool computing, the
//! ticker advancing and every thread id unchanged, in both memory modes.

mod common;

use common::{footprint, function, Server};
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

/// 16 threads: the main one, a ticker and a pool of 14.
const SIXTEEN: &str = r#"
import threading, time
from concurrent.futures import ThreadPoolExecutor
POOL = ThreadPoolExecutor(max_workers=14)
list(POOL.map(lambda x: time.sleep(0.05) or x, range(14)))
def _tick():
    while True:
        time.sleep(0.05)
threading.Thread(target=_tick, daemon=True).start()

def handler(event, context):
    return {"threads": len(threading.enumerate()), "sum": sum(POOL.map(abs, range(-20, 0)))}
"#;

/// Issue 14, acceptance 4: 1,000 restores in a row of a 16-thread function
/// leave no descriptors, mappings, cgroups, processes or mounts behind.
#[tokio::test]
async fn a_thousand_restores_of_a_sixteen_thread_function_leak_nothing() {
    require_root!();
    for mode in ["mmap", "uffd"] {
        let server = Server::start(&["--allow-forced-cold", "--memory-mode", mode]);
        let rec = server
            .deploy_ready(function(
                "sixteen",
                SIXTEEN,
                json!({"warmup": [{}], "keep_alive_s": 600}),
            ))
            .await;
        assert!(!rec["snapshot"].is_null(), "{mode}: {rec}");
        let restore = || async {
            let a = server
                .invoke_raw("sixteen", b"{}".to_vec(), &[("x-thaw-cold", "restore")])
                .await;
            assert_eq!(a.status, 200, "{mode}: {}", a.text());
            assert_eq!(a.header("x-thaw-start"), "restore");
            assert_eq!(a.json()["threads"], 16, "{mode}");
            assert_eq!(a.json()["sum"], 210, "{mode}");
        };
        for _ in 0..20 {
            restore().await;
        }
        server.settle("sixteen", 2).await;
        let before = footprint(&server);
        let started = std::time::Instant::now();
        for _ in 0..1000 {
            restore().await;
        }
        let took = started.elapsed();
        server.settle("sixteen", 2).await;
        let after = footprint(&server);
        eprintln!("{mode}: 1000 restores in {took:?}; before {before:?}, after {after:?}");
        assert_eq!(after.cgroups, before.cgroups, "{mode}: cgroups");
        assert_eq!(after.sandbox_pids, before.sandbox_pids, "{mode}: processes");
        assert_eq!(after.mounts, before.mounts, "{mode}: mounts");
        assert_eq!(after.run_entries, before.run_entries, "{mode}: run dir");
        assert!(
            after.fds <= before.fds + 16,
            "{mode}: fds {before:?} → {after:?}"
        );
        assert!(
            after.maps <= before.maps + 64,
            "{mode}: maps {before:?} → {after:?}"
        );
    }
}

/// numpy with its default BLAS thread pool (thaw no longer forces
/// `OPENBLAS_NUM_THREADS=1` and its relatives).
const NUMPY: &str = r#"
import os
import numpy as np
A = np.random.default_rng(3).random((300, 300))
B = A @ A

def handler(event, context):
    C = A @ A
    return {
        "same": bool(np.allclose(B, C)),
        "tasks": sorted(int(t) for t in os.listdir("/proc/self/task")),
        "forced": [v for v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS",
                   "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS") if v in os.environ],
        "copy": __import__("thaw").is_copy(),
    }
"#;

/// Issue 14, acceptance 5 (end): numpy with its default thread pool is
/// snapshotted and restores, in both modes.
#[tokio::test]
async fn numpy_with_its_thread_pool_restores() {
    require_root!();
    // numpy comes from the package index into the function's layer: the
    // example's requirements.txt, byte for byte, so the layer is shared.
    require_numpy_index!();
    for mode in ["mmap", "uffd"] {
        let mut server = Server::start(&["--allow-forced-cold", "--memory-mode", mode]);
        let rec = server
            .deploy_ready(function(
                "blas",
                NUMPY,
                json!({"warmup": [{}], "keep_alive_s": 600, "files": {
                    "main.py": NUMPY,
                    "requirements.txt": common::numpy_pandas::REQUIREMENTS,
                }}),
            ))
            .await;
        assert!(!rec["snapshot"].is_null(), "{mode}: no snapshot: {rec}");
        let original = server.invoke("blas", json!({})).await.json();
        assert_eq!(original["same"], true);
        assert_eq!(original["forced"], json!([]), "{mode}: {original}");
        assert!(
            original["tasks"].as_array().unwrap().len() > 1,
            "{mode}: BLAS started its threads: {original}"
        );
        assert!(server.stop().success());
        server.spawn();
        let a = server
            .invoke_raw("blas", b"{}".to_vec(), &[("x-thaw-cold", "restore")])
            .await;
        assert_eq!(a.status, 200, "{mode}: {}", a.text());
        assert_eq!(a.header("x-thaw-start"), "restore", "{mode}");
        let copy = a.json();
        assert_eq!(copy["copy"], true, "{mode}");
        assert_eq!(copy["same"], true, "{mode}: the copy computes");
        assert_eq!(copy["tasks"], original["tasks"], "{mode}: same threads");
    }
}
