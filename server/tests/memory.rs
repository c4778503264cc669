//! Memory through the API, in real sandboxes: `min_instances` copies
//! restored from the snapshot, RSS/PSS/USS per instance and per function in
//! `GET /functions/:id` and `/metrics`, and a memory budget that counts PSS.

mod common;

use std::time::{Duration, Instant};

use common::{function, Server};
use serde_json::{json, Value};

const MIB: u64 = 1 << 20;

/// Holds a few MiB of state built at import (in the snapshot), sleeps on
/// request.
const STATE: &str = r#"
import time
DATA = [str(i) * 8 for i in range(100_000)]

def handler(event, context):
    time.sleep(event.get("sleep", 0))
    return {"n": len(DATA)}
"#;

fn spec(name: &str, extra: Value) -> Value {
    let mut e = json!({"warmup": [{}], "keep_alive_s": 600});
    for (k, v) in extra.as_object().unwrap() {
        e[k] = v.clone();
    }
    function(name, STATE, e)
}

/// Polls `GET /functions/NAME` until `done` holds (deadline: 120 s).
async fn wait_for(server: &Server, name: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let t0 = Instant::now();
    loop {
        let v = server.get(&format!("/functions/{name}")).await.json();
        if done(&v) {
            return v;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "{name}: {what} not reached: {v:#}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The instances, without the spares (pre-made stub sandboxes).
fn instances(v: &Value) -> Vec<Value> {
    v["instance_list"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|i| i["state"] != "spare")
        .collect()
}

/// Instances started by `kind`, idle and measured.
fn idle_measured(v: &Value, kind: &str) -> usize {
    instances(v)
        .iter()
        .filter(|i| {
            i["start"] == kind && i["state"] == "idle" && i["memory"]["pss"].as_u64() > Some(0)
        })
        .count()
}

fn mem(v: &Value, k: &str) -> u64 {
    v[k].as_u64().unwrap_or_else(|| panic!("no {k} in {v}"))
}

/// A gauge's value from the text exposition (`name{labels} value`), where
/// every `labels` pair appears in the series' labels.
fn gauge(metrics: &str, name: &str, labels: &[(&str, &str)]) -> Option<u64> {
    metrics.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?;
        let (lbl, value) = rest.strip_prefix('{')?.split_once("} ")?;
        labels
            .iter()
            .all(|(k, v)| lbl.split(',').any(|p| p == format!("{k}=\"{v}\"")))
            .then(|| value.trim().parse::<f64>().ok().map(|f| f as u64))
            .flatten()
    })
}

fn pids_of(cgroup: &std::path::Path) -> Vec<i32> {
    std::fs::read_to_string(cgroup.join("cgroup.procs"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

#[tokio::test]
async fn min_instances_of_a_version_with_a_snapshot_are_restored_idle_copies() {
    require_root!();
    let server = Server::start(&[]);
    // The warmed original stays as one of the four; three copies restore.
    let rec = server
        .deploy_ready(spec("kept", json!({"min_instances": 4})))
        .await;
    assert!(!rec["snapshot"].is_null(), "{rec:#}");
    let v = wait_for(&server, "kept", "3 restored idle copies", |v| {
        idle_measured(v, "restore") >= 3
    })
    .await;
    let list = instances(&v);
    assert_eq!(list.len(), 4, "{v:#}");
    assert_eq!(
        list.iter().filter(|i| i["start"] == "boot").count(),
        1,
        "only the captured original boots: {v:#}"
    );
    // Each copy's private memory maps the snapshot's image (page cache shared
    // by the copies), so most of what it has resident is not its own.
    let images = server.data.canonicalize().unwrap().join("store/images");
    let cgroups = server.sandbox_cgroups();
    for i in list.iter().filter(|i| i["start"] == "restore") {
        let id = i["id"].as_str().unwrap();
        let cg = cgroups
            .iter()
            .find(|c| c.file_name().unwrap().to_string_lossy().contains(id))
            .unwrap_or_else(|| panic!("no cgroup for {id} in {cgroups:?}"));
        let maps: String = pids_of(cg)
            .iter()
            .map(|p| std::fs::read_to_string(format!("/proc/{p}/maps")).unwrap_or_default())
            .collect();
        assert!(
            maps.contains(images.to_str().unwrap()),
            "{id} does not map an image under {images:?}"
        );
        let (rss, uss) = (mem(&i["memory"], "rss"), mem(&i["memory"], "uss"));
        assert!(uss * 2 < rss, "{id}: USS {uss} is most of RSS {rss}: {i}");
    }
    // An invocation is served warm by one of them; none is started for it.
    let a = server.invoke("kept", json!({})).await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.header("x-thaw-start"), "warm");
    assert_eq!(a.json()["n"], 100_000);
    let v = server.get("/functions/kept").await.json();
    assert_eq!(instances(&v).len(), 4, "{v:#}");
}

#[tokio::test]
async fn rss_pss_uss_per_instance_and_function_agree_between_the_api_and_metrics() {
    require_root!();
    // No spares: the sums below are of exactly these instances.
    let server = Server::start(&["--spare-sandboxes", "0"]);
    server
        .deploy_ready(spec("measured", json!({"min_instances": 3})))
        .await;
    wait_for(&server, "measured", "3 measured idle instances", |v| {
        instances(v).len() == 3
            && instances(v)
                .iter()
                .all(|i| i["state"] == "idle" && i["memory"]["pss"].as_u64() > Some(0))
    })
    .await;
    // Figures are cached between measurements: read both sides until they
    // come from the same measurement.
    let t0 = Instant::now();
    let (v, metrics) = loop {
        let v = server.get("/functions/measured").await.json();
        let metrics = server.get("/metrics").await.text();
        let again = server.get("/functions/measured").await.json();
        if v["instance_list"] == again["instance_list"] {
            break (v, metrics);
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "figures never settled"
        );
    };
    let list = instances(&v);
    let mut sum = [0u64; 3];
    for i in &list {
        let m = &i["memory"];
        let (rss, pss, uss) = (mem(m, "rss"), mem(m, "pss"), mem(m, "uss"));
        assert!(uss > 0 && uss <= pss && pss <= rss, "{i}");
        for (s, k) in sum.iter_mut().zip(["rss", "pss", "uss"]) {
            *s += mem(m, k);
            let id = i["id"].as_str().unwrap();
            let start = i["start"].as_str().unwrap();
            assert_eq!(
                gauge(
                    &metrics,
                    "thaw_instance_memory_bytes",
                    &[
                        ("function", "measured"),
                        ("instance", id),
                        ("start", start),
                        ("kind", k)
                    ]
                ),
                Some(mem(m, k)),
                "{k} of {id} in /metrics:\n{metrics}"
            );
        }
    }
    for (s, k) in sum.iter().zip(["rss", "pss", "uss"]) {
        assert_eq!(mem(&v["memory"], k), *s, "function {k} is the sum: {v:#}");
        assert_eq!(mem(&v["versions"][0]["memory"], k), *s, "{v:#}");
        assert_eq!(
            gauge(
                &metrics,
                "thaw_function_memory_bytes",
                &[("function", "measured"), ("kind", k)]
            ),
            Some(*s),
            "function {k} in /metrics:\n{metrics}"
        );
        assert_eq!(
            gauge(
                &metrics,
                "thaw_version_memory_bytes",
                &[("function", "measured"), ("version", "1"), ("kind", k)]
            ),
            Some(*s),
            "version {k} in /metrics:\n{metrics}"
        );
    }
    // Nothing else runs: the budget counts exactly these instances' PSS.
    assert_eq!(
        gauge(&metrics, "thaw_memory_used_bytes", &[]).or_else(|| {
            metrics
                .lines()
                .find_map(|l| l.strip_prefix("thaw_memory_used_bytes "))
                .and_then(|x| x.trim().parse().ok())
        }),
        Some(sum[1]),
        "{metrics}"
    );
    // The server measures what /proc says of the sandboxes' processes (an
    // idle instance's memory holds still; allow for drift between reads).
    let cgroups = server.sandbox_cgroups();
    for i in &list {
        let id = i["id"].as_str().unwrap();
        let cg = cgroups
            .iter()
            .find(|c| c.file_name().unwrap().to_string_lossy().contains(id))
            .unwrap();
        let rss: u64 = pids_of(cg)
            .iter()
            .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/smaps_rollup")).ok())
            .filter_map(|t| {
                t.lines()
                    .find_map(|l| l.strip_prefix("Rss:"))
                    .and_then(|x| x.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            })
            .sum::<u64>()
            * 1024;
        let server_rss = mem(&i["memory"], "rss");
        assert!(
            rss / 2 < server_rss && server_rss < rss * 2,
            "{id}: server says RSS {server_rss}, /proc {rss}"
        );
    }
}

fn used(metrics: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("thaw_memory_used_bytes "))
        .and_then(|x| x.trim().parse::<f64>().ok())
        .map(|f| f as u64)
        .expect("thaw_memory_used_bytes")
}

#[tokio::test]
async fn the_budget_counts_pss_so_restored_copies_fit_where_their_limits_would_not() {
    require_root!();
    // Five instances with a 512 MiB limit each: 2,560 MiB by limits, three
    // times the budget. A start still reserves its limit while it runs.
    let budget = 900u64;
    // No spares: the budget figures below are of the instances alone.
    let server = Server::start(&[
        "--memory-budget-mb",
        &budget.to_string(),
        "--spare-sandboxes",
        "0",
    ]);
    let rec = server
        .deploy_ready(spec("dense", json!({"min_instances": 5, "memory_mb": 512})))
        .await;
    assert!(rec["error"].is_null(), "{rec:#}");
    let v = wait_for(&server, "dense", "5 measured idle instances", |v| {
        idle_measured(v, "restore") + idle_measured(v, "boot") == 5
    })
    .await;
    // By limits (a reservation beside the others), only one would fit.
    let limit = mem(&rec["spec"], "memory_mb");
    assert!(2 * limit > budget, "{rec:#}");
    let pss: u64 = instances(&v).iter().map(|i| mem(&i["memory"], "pss")).sum();
    let used = used(&server.get("/metrics").await.text());
    assert!(
        used <= budget * MIB,
        "{used} counted over a {budget} MiB budget"
    );
    assert!(
        used < 5 * limit * MIB && pss < budget * MIB,
        "counted {used}, PSS {pss}"
    );
}

#[tokio::test]
async fn over_the_budget_idle_instances_are_evicted_and_busy_ones_kept() {
    require_root!();
    let budget = 900u64;
    // No spares: the budget figures below are of the instances alone.
    let server = std::sync::Arc::new(Server::start(&[
        "--memory-budget-mb",
        &budget.to_string(),
        "--spare-sandboxes",
        "0",
    ]));
    server
        .deploy_ready(spec("filler", json!({"memory_mb": 200, "concurrency": 8})))
        .await;
    // Four at once: the warm original and three restored copies; then all
    // idle.
    let mut calls = Vec::new();
    for _ in 0..4 {
        let s = server.clone();
        calls.push(tokio::spawn(async move {
            s.invoke("filler", json!({"sleep": 1})).await.status
        }));
    }
    for c in calls {
        assert_eq!(c.await.unwrap(), 200);
    }
    wait_for(&server, "filler", "4 measured idle instances", |v| {
        idle_measured(v, "restore") + idle_measured(v, "boot") == 4
    })
    .await;
    // One stays busy for a while.
    let s = server.clone();
    let long = tokio::spawn(async move { s.invoke("filler", json!({"sleep": 6})).await });
    let v = wait_for(&server, "filler", "one busy", |v| {
        v["instances"]["busy"] == 1
    })
    .await;
    let idle_pss: u64 = instances(&v)
        .iter()
        .filter(|i| i["state"] == "idle")
        .map(|i| mem(&i["memory"], "pss"))
        .sum();
    let used = used(&server.get("/metrics").await.text());
    // A function whose limit fits only once about half the idle instances'
    // PSS is freed.
    let big = (budget * MIB - used + idle_pss / 2) / MIB + 1;
    assert!(big > 32, "the budget is too full to test: used {used}");
    let rec = server
        .deploy_ready(spec("big", json!({"memory_mb": big})))
        .await;
    assert!(rec["error"].is_null(), "big could not start: {rec:#}");
    assert_eq!(server.invoke("big", json!({})).await.status, 200);
    let v = server.get("/functions/filler").await.json();
    assert!(
        v["instances"]["idle"].as_u64().unwrap() < 3,
        "no idle instance was evicted: {v:#}"
    );
    // The busy one was not touched.
    let a = long.await.unwrap();
    assert_eq!(a.status, 200, "{}", a.text());
}
