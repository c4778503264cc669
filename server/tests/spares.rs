//! Spares: pre-made stub sandboxes that cold starts restore into, through
//! the real server binary.

mod common;

use std::time::{Duration, Instant};

use common::{function, pid_alive, Server};
use serde_json::{json, Value};

const COUNTER: &str = r#"
import os
CALLS = 0

def handler(event, context):
    global CALLS
    CALLS += 1
    return {"calls": CALLS, "pid": os.getpid(), "v": event.get("v")}
"#;

fn spec(extra: Value) -> Value {
    function("counter", COUNTER, extra)
}

/// The value of a metric line that starts with `prefix` (name and labels).
fn metric(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

async fn metrics(server: &Server) -> String {
    server.get("/metrics").await.text()
}

async fn forced_restore(server: &Server) -> common::Answer {
    server
        .invoke_raw("counter", b"{}".to_vec(), &[("x-thaw-cold", "restore")])
        .await
}

fn spare_ids(v: &Value) -> Vec<String> {
    v["instance_list"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["state"] == "spare")
        .map(|i| i["id"].as_str().unwrap().to_string())
        .collect()
}

fn mounts_under(path: &std::path::Path) -> usize {
    let p = path.display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.split(' ').nth(4).is_some_and(|m| m.starts_with(&p)))
        .count()
}

/// Polls until every pid in `pids` is gone, at most `limit`.
fn wait_dead(pids: &[i32], limit: Duration) -> Vec<i32> {
    let t0 = Instant::now();
    loop {
        let alive: Vec<i32> = pids.iter().copied().filter(|p| pid_alive(*p)).collect();
        if alive.is_empty() || t0.elapsed() > limit {
            return alive;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[tokio::test]
async fn a_cold_start_restores_into_a_spare_and_the_pool_refills() {
    require_root!();
    let server = Server::start(&["--allow-forced-cold"]);
    let rec = server.deploy_ready(spec(json!({"warmup": [{}, {}]}))).await;
    assert!(!rec["snapshot"].is_null(), "{rec}");
    let v = server.wait_spares("counter", 2).await;
    let spares = spare_ids(&v);
    assert_eq!(spares.len(), 2, "{v}");
    let m = metrics(&server).await;
    assert_eq!(metric(&m, "thaw_spare_sandboxes "), Some(2.0), "{m}");
    assert_eq!(
        metric(&m, "thaw_spare_sandboxes_per_version "),
        Some(2.0),
        "{m}"
    );
    assert_eq!(metric(&m, "thaw_spare_sandboxes_max "), Some(64.0), "{m}");
    assert_eq!(
        metric(&m, "thaw_instances{state=\"spare\"} "),
        Some(2.0),
        "{m}"
    );
    // A spare is a sandbox with its processes (init and the stub).
    assert!(server.sandbox_cgroups().len() >= 3, "instance + 2 spares");

    let a = forced_restore(&server).await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.header("x-thaw-start"), "restore");
    assert_eq!(a.header("x-thaw-spare"), "hit");
    assert_eq!(a.json()["calls"], 3, "the snapshot's state: {}", a.text());
    let phases = a.header("x-thaw-restore-us");
    for phase in ["claim", "seize", "mappings", "state", "resume", "restored"] {
        assert!(
            phases
                .split(',')
                .any(|p| p.starts_with(&format!("{phase}="))),
            "{phase} missing from x-thaw-restore-us: {phases}"
        );
    }
    let m = metrics(&server).await;
    assert_eq!(
        metric(&m, "thaw_spare_claims_total{result=\"hit\"} "),
        Some(1.0),
        "{m}"
    );
    assert!(
        metric(&m, "thaw_restore_phase_seconds_count{phase=\"mappings\"} ").unwrap_or(0.0) >= 1.0,
        "{m}"
    );

    // The claimed spare's sandbox became the copy. After the forced
    // restore it is recycled into a spare again (docs/restore.md,
    // "Recycled sandboxes"), or, with recycling off, destroyed and the pool
    // makes a new one.
    let v = server.wait_spares("counter", 2).await;
    let now = spare_ids(&v);
    if std::env::var_os("THAW_SANDBOX_RECYCLE").is_some_and(|v| v == "0") {
        assert_eq!(
            now.iter().filter(|id| spares.contains(id)).count(),
            1,
            "one old spare kept, one new: {spares:?} -> {now:?}"
        );
    } else {
        let (mut old, mut new) = (spares.clone(), now.clone());
        old.sort();
        new.sort();
        assert_eq!(
            old, new,
            "the claimed spare recycled: {spares:?} -> {now:?}"
        );
        let m = metrics(&server).await;
        assert_eq!(metric(&m, "thaw_sandbox_recycled_total "), Some(1.0), "{m}");
    }
    assert_eq!(
        metric(&metrics(&server).await, "thaw_spare_sandboxes "),
        Some(2.0)
    );
    // Copies restored into spares are independent of each other.
    let b = forced_restore(&server).await;
    assert_eq!(b.header("x-thaw-spare"), "hit");
    assert_eq!(b.json()["calls"], 3);
}

#[tokio::test]
async fn a_new_version_or_a_delete_removes_the_old_spares() {
    require_root!();
    let server = Server::start(&[]);
    server.deploy_ready(spec(json!({}))).await;
    let v = server.wait_spares("counter", 2).await;
    let old = spare_ids(&v);
    let old_pids = server.sandbox_pids();

    // Version 2: version 1 is retired, its spares with it.
    server
        .deploy_ready(function(
            "counter",
            &COUNTER.replace("CALLS = 0", "CALLS = 100"),
            json!({}),
        ))
        .await;
    let t0 = Instant::now();
    let v = loop {
        let v = server.wait_spares("counter", 2).await;
        if spare_ids(&v).iter().all(|id| !old.contains(id)) {
            break v;
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "{v}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(v["versions"][0]["instances"]["spare"], 0, "{v}");
    assert_eq!(v["versions"][1]["instances"]["spare"], 2, "{v}");
    // A retired version's spares are torn down in the background: their
    // cgroups go soon after the view stops counting them.
    let t0 = Instant::now();
    loop {
        let cgroups: Vec<String> = server
            .sandbox_cgroups()
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        let left: Vec<&String> = old.iter().filter(|id| cgroups.contains(id)).collect();
        if left.is_empty() {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "spares {left:?} of version 1 left"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Restores of version 2 come from its own snapshot.
    let a = server.invoke("counter", json!({})).await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert!(a.json()["calls"].as_u64().unwrap() > 100, "{}", a.text());

    // Deleting the function leaves no process, cgroup, mount or directory.
    let del = server
        .request(reqwest::Method::DELETE, "/functions/counter", None, &[])
        .await;
    assert_eq!(del.status, 204);
    assert!(
        server.sandbox_pids().is_empty(),
        "{:?}",
        server.sandbox_pids()
    );
    assert!(
        server.sandbox_cgroups().is_empty(),
        "{:?}",
        server.sandbox_cgroups()
    );
    let alive = wait_dead(&old_pids, Duration::from_secs(5));
    assert!(alive.is_empty(), "processes of version 1 left: {alive:?}");
    assert_eq!(mounts_under(&server.data), 0);
    let run: Vec<_> = std::fs::read_dir(server.data.join("run"))
        .unwrap()
        .flatten()
        .collect();
    assert!(run.is_empty(), "sandbox directories left: {run:?}");
    let m = metrics(&server).await;
    assert_eq!(metric(&m, "thaw_spare_sandboxes "), Some(0.0), "{m}");
}

#[tokio::test]
async fn kill_9_with_spares_ready_leaves_nothing_and_restarts_clean() {
    require_root!();
    let mut server = Server::start(&[]);
    server.deploy_ready(spec(json!({}))).await;
    server.wait_spares("counter", 2).await;
    let pids = server.sandbox_pids();
    let cgroups = server.sandbox_cgroups();
    assert!(pids.len() >= 6, "spares have processes: {pids:?}");
    server.kill9();
    // Spares die with the server like every sandbox (parent-death signal).
    let alive = wait_dead(&pids, Duration::from_secs(2));
    assert!(
        alive.is_empty(),
        "spare processes outlived the server: {alive:?}"
    );

    server.spawn();
    for cg in &cgroups {
        assert!(!cg.exists(), "stale cgroup {} after restart", cg.display());
    }
    assert_eq!(mounts_under(&server.data), 0);
    let a = server.invoke("counter", json!({})).await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.header("x-thaw-start"), "restore");
    server.wait_spares("counter", 2).await;

    // A graceful stop removes them too.
    let pids = server.sandbox_pids();
    assert!(server.stop().success());
    assert!(server.sandbox_pids().is_empty());
    assert!(
        server.sandbox_cgroups().is_empty(),
        "{:?}",
        server.sandbox_cgroups()
    );
    let alive = wait_dead(&pids, Duration::from_secs(2));
    assert!(alive.is_empty(), "{alive:?}");
}

#[tokio::test]
async fn with_spares_disabled_cold_starts_launch_their_own_sandbox() {
    require_root!();
    let server = Server::start(&["--allow-forced-cold", "--spare-sandboxes", "0"]);
    server.deploy_ready(spec(json!({}))).await;
    let a = forced_restore(&server).await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.header("x-thaw-start"), "restore");
    assert_eq!(a.header("x-thaw-spare"), "miss");
    assert_eq!(a.json()["calls"], 1);
    let a = server.invoke("counter", json!({})).await;
    assert_eq!(a.status, 200, "{}", a.text());
    // Give a (wrongly) enabled refiller time to show itself.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let v = server.get("/functions/counter").await.json();
    assert_eq!(v["instances"]["spare"], 0, "{v}");
    assert!(spare_ids(&v).is_empty(), "{v}");
    assert_eq!(server.sandbox_cgroups().len(), 1, "only the warm instance");
    let m = metrics(&server).await;
    assert_eq!(metric(&m, "thaw_spare_sandboxes "), Some(0.0), "{m}");
    assert_eq!(
        metric(&m, "thaw_spare_sandboxes_per_version "),
        Some(0.0),
        "{m}"
    );
    assert_eq!(
        metric(&m, "thaw_spare_claims_total{result=\"hit\"} ").unwrap_or(0.0),
        0.0,
        "{m}"
    );
}
