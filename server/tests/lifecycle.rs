//! Restarts: clean stop, kill -9, and what is left behind.

mod common;

use common::{function, pid_alive, Server};
use serde_json::json;

const HELLO: &str = "def handler(e, c):\n    return {'hi': e.get('name')}\n";

#[tokio::test]
async fn functions_survive_a_restart() {
    require_root!();
    let mut server = Server::start(&[]);
    server
        .deploy_ready(function("hello", HELLO, json!({})))
        .await;
    assert_eq!(
        server.invoke("hello", json!({"name": "a"})).await.status,
        200
    );
    let status = server.stop();
    assert!(status.success(), "clean stop exits 0: {status:?}");
    assert!(
        server.sandbox_pids().is_empty(),
        "instances stopped with the server"
    );

    server.spawn();
    let list = server.get("/functions").await.json();
    assert_eq!(list["functions"][0]["name"], "hello");
    assert_eq!(list["functions"][0]["state"], "ready");
    // No instance exists after a restart: the first call is a cold start
    // (restored from the snapshot), the next is warm.
    let a = server.invoke("hello", json!({"name": "b"})).await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.json(), json!({"hi": "b"}));
    assert_eq!(a.header("x-thaw-start"), "restore");
    let a = server.invoke("hello", json!({"name": "c"})).await;
    assert_eq!(a.header("x-thaw-start"), "warm");
}

fn mounts_under(path: &std::path::Path) -> usize {
    let p = path.display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.split(' ').nth(4).is_some_and(|m| m.starts_with(&p)))
        .count()
}

#[tokio::test]
async fn kill_9_leaves_nothing_behind_after_restart() {
    require_root!();
    let mut server = Server::start(&[]);
    let slow = "import time\ndef handler(e, c):\n    time.sleep(e.get('s', 0))\n    return 1\n";
    server
        .deploy_ready(function("slow", slow, json!({"concurrency": 4})))
        .await;
    let server_arc = std::sync::Arc::new(std::sync::Mutex::new(()));
    let _ = server_arc;
    // Instances busy in invocations when the server dies.
    let url = server.url.clone();
    let mut inflight = Vec::new();
    for _ in 0..3 {
        let url = url.clone();
        inflight.push(tokio::spawn(async move {
            reqwest::Client::new()
                .post(format!("{url}/functions/slow/invoke"))
                .body(r#"{"s": 30}"#)
                .send()
                .await
        }));
    }
    loop {
        let v = server.get("/functions/slow").await.json();
        if v["instances"]["busy"].as_u64().unwrap() >= 3 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let before_pids = server.sandbox_pids();
    let before_cgroups = server.sandbox_cgroups();
    let run = server.data.join("run");
    let before_run: Vec<_> = std::fs::read_dir(&run)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(!before_run.is_empty(), "the sandboxes' folders under run/");
    assert!(
        before_pids.len() >= 9,
        "three sandboxes of three processes: {before_pids:?}"
    );
    server.kill9();
    for t in inflight {
        assert!(
            t.await.unwrap().is_err(),
            "the connection died with the server"
        );
    }
    // Every sandbox process dies with the server (parent-death signal).
    for _ in 0..200 {
        if before_pids.iter().all(|p| !pid_alive(*p)) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let alive: Vec<_> = before_pids.iter().filter(|p| pid_alive(**p)).collect();
    assert!(
        alive.is_empty(),
        "sandbox processes outlived the server: {alive:?}"
    );

    server.spawn();
    for cg in &before_cgroups {
        assert!(
            !cg.exists(),
            "stale cgroup {} left after restart",
            cg.display()
        );
    }
    assert_eq!(
        mounts_under(&server.data),
        0,
        "no mounts under the data directory"
    );
    // The restarted server may already be making new sandboxes (spares):
    // only the killed server's folders must be gone.
    let leftovers: Vec<_> = before_run.iter().filter(|p| p.exists()).collect();
    assert!(leftovers.is_empty(), "stale sandbox dirs: {leftovers:?}");
    let a = server.invoke("slow", json!({})).await;
    assert_eq!(a.status, 200, "{}", a.text());
}

async fn wait_for(
    server: &Server,
    name: &str,
    what: &str,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let t0 = std::time::Instant::now();
    loop {
        let v = server.get(&format!("/functions/{name}")).await.json();
        if pred(&v) {
            return v;
        }
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(60),
            "never saw {what}: {v}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn keep_alive_stops_idle_instances_and_min_instances_keeps_some() {
    require_root!();
    let server = Server::start(&[]);
    server
        .deploy_ready(function("brief", HELLO, json!({"keep_alive_s": 1})))
        .await;
    // The warm-up instance goes away once idle for keep_alive_s...
    wait_for(&server, "brief", "no idle instance", |v| {
        v["instances"]["idle"] == 0
    })
    .await;
    // ...so the next call is a cold start.
    let a = server.invoke("brief", json!({})).await;
    assert_eq!(a.header("x-thaw-start"), "restore");

    server
        .deploy_ready(function(
            "kept",
            HELLO,
            json!({"keep_alive_s": 1, "min_instances": 2}),
        ))
        .await;
    wait_for(&server, "kept", "two idle instances", |v| {
        v["instances"]["idle"] == 2
    })
    .await;
    // Well past keep_alive_s, min_instances are still there (the pool
    // replaced nothing: invocations are warm).
    wait_for(&server, "brief", "brief's instance expired again", |v| {
        v["instances"]["idle"] == 0
    })
    .await;
    let v = server.get("/functions/kept").await.json();
    assert_eq!(v["instances"]["idle"], 2, "{v}");
    let a = server.invoke("kept", json!({})).await;
    assert_eq!(a.header("x-thaw-start"), "warm");
}

#[tokio::test]
async fn sigterm_finishes_accepted_invocations_then_exits_0() {
    require_root!();
    let mut server = Server::start(&[]);
    let slow = "import time\ndef handler(e, c):\n    time.sleep(e.get('s', 0))\n    return {'slept': e.get('s', 0)}\n";
    server
        .deploy_ready(function("slow", slow, json!({"concurrency": 4})))
        .await;
    let url = server.url.clone();
    let mut inflight = Vec::new();
    for _ in 0..4 {
        let url = url.clone();
        inflight.push(tokio::spawn(async move {
            let resp = reqwest::Client::new()
                .post(format!("{url}/functions/slow/invoke"))
                .body(r#"{"s": 1}"#)
                .send()
                .await
                .expect("accepted invocations are answered");
            (resp.status().as_u16(), resp.text().await.unwrap())
        }));
    }
    loop {
        let v = server.get("/functions/slow").await.json();
        if v["instances"]["busy"].as_u64().unwrap() >= 4 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let status = tokio::task::spawn_blocking(move || {
        let st = server.stop();
        (st, server)
    });
    for t in inflight {
        let (code, body) = t.await.unwrap();
        assert_eq!(code, 200, "{body}");
        assert!(body.contains("slept"), "{body}");
    }
    let (st, mut server) = status.await.unwrap();
    assert!(st.success(), "exit status {st:?}");
    assert!(server.sandbox_pids().is_empty());
    assert_store_sound(&server);
    server.spawn();
    let v = server.get("/functions/slow").await.json();
    assert!(!v["snapshot"].is_null(), "the snapshot survived: {v}");
    assert_eq!(server.invoke("slow", json!({})).await.status, 200);
}

fn assert_store_sound(server: &Server) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_thaw"))
        .args(["store", "verify", "--data-dir"])
        .arg(&server.data)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "thaw store verify: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn kill_9_during_a_capture_leaves_a_sound_store() {
    require_root!();
    // numpy-pandas brings numpy and pandas in its requirements.txt.
    require_numpy_index!();
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/numpy-pandas");
    let mut server = Server::start(&[]);
    server
        .deploy_ready(function("hello", HELLO, json!({})))
        .await;
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_thaw"))
        .args(["deploy"])
        .arg(&example)
        .env("THAW_SERVER", &server.url)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Kill the server while it captures (numpy-pandas takes the longest),
    // with invocations of another function in flight.
    let url = server.url.clone();
    let burst: Vec<_> = (0..4)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move {
                let _ = reqwest::Client::new()
                    .post(format!("{url}/functions/hello/invoke"))
                    .body("{}")
                    .send()
                    .await;
            })
        })
        .collect();
    let mut caught = false;
    for _ in 0..2000 {
        let v = server.get("/functions/numpy-pandas").await.json();
        if v["state"] == "snapshotting" {
            caught = true;
            break;
        }
        if v["state"] == "ready" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    let before = server.sandbox_pids();
    server.kill9();
    for t in burst {
        let _ = t.await;
    }
    println!("killed during the capture: {caught}");
    for _ in 0..200 {
        if before.iter().all(|p| !pid_alive(*p)) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(
        before.iter().all(|p| !pid_alive(*p)),
        "sandboxes outlived the server"
    );
    assert_store_sound(&server);
    server.spawn();
    assert_eq!(
        server
            .invoke("hello", json!({"name": "again"}))
            .await
            .status,
        200
    );
    // The interrupted deploy runs again and ends ready with a snapshot.
    let v = server.wait_state("numpy-pandas").await;
    assert_eq!(v["state"], "ready", "{v}");
    assert!(!v["snapshot"].is_null(), "{v}");
    assert_store_sound(&server);
    assert_eq!(
        server
            .invoke("numpy-pandas", json!({"store": 1}))
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn a_client_that_goes_away_does_not_strand_the_instance() {
    require_root!();
    let server = Server::start(&[]);
    let slow = "import time\ndef handler(e, c):\n    time.sleep(e.get('s', 0))\n    return 1\n";
    server.deploy_ready(function("slow", slow, json!({}))).await;
    // A client that gives up after 200 ms of a 1 s invocation.
    let r = reqwest::Client::new()
        .post(format!("{}/functions/slow/invoke", server.url))
        .body(r#"{"s": 1}"#)
        .timeout(std::time::Duration::from_millis(200))
        .send()
        .await;
    assert!(r.is_err(), "the client timed out");
    let v = wait_for(&server, "slow", "the instance back to idle", |v| {
        v["instances"]["idle"] == 1 && v["instances"]["busy"] == 0
    })
    .await;
    let instances = v["instance_list"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["state"] != "spare")
        .count();
    assert_eq!(instances, 1, "{v}");
    let a = server.invoke("slow", json!({})).await;
    assert_eq!(a.header("x-thaw-start"), "warm");
    // The instance and the two spares (pre-made stub sandboxes), nothing else.
    server.wait_spares("slow", 2).await;
    assert_eq!(server.sandbox_cgroups().len(), 1 + 2, "no stranded sandbox");
}
