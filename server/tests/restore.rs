//! Cold starts by restore, through the API, in real sandboxes.

mod common;

use common::{function, Server};
use serde_json::json;

/// A counter the warm-up advances (so a copy shows the snapshot's state),
/// and the randomness a copy must not share.
const COUNTER: &str = r#"
import os, random, time, uuid
import thaw

CALLS = 0
HOOKS = []

@thaw.on_restore
def _hook():
    HOOKS.append("ran")

def handler(event, context):
    global CALLS
    CALLS += 1
    time.sleep(event.get("sleep", 0))
    return {
        "calls": CALLS,
        "copy": thaw.is_copy(),
        "hooks": len(HOOKS),
        "pid": os.getpid(),
        "random": random.random(),
        "uuid": str(uuid.uuid4()),
        "urandom": os.urandom(8).hex(),
        "time": time.time(),
    }
"#;

fn spec() -> serde_json::Value {
    function(
        "counter",
        COUNTER,
        json!({"warmup": [{}, {}, {}], "keep_alive_s": 600}),
    )
}

async fn restore(server: &Server, event: serde_json::Value) -> common::Answer {
    server
        .invoke_raw(
            "counter",
            serde_json::to_vec(&event).unwrap(),
            &[("x-thaw-cold", "restore")],
        )
        .await
}

#[tokio::test]
async fn a_restored_copy_answers_from_the_snapshot_not_a_boot_or_fork() {
    require_root!();
    let mut server = Server::start(&["--allow-forced-cold"]);
    let rec = server.deploy_ready(spec()).await;
    assert!(!rec["snapshot"].is_null(), "{rec}");
    // The original (warm) has counted the 3 warm-up calls.
    let original = server.invoke("counter", json!({})).await.json();
    assert_eq!(original["calls"], 4);
    assert_eq!(original["copy"], false);

    // Restart: no process of the function is alive any more.
    assert!(server.stop().success());
    assert!(server.sandbox_pids().is_empty());
    server.spawn();

    // A forced restore answers from the snapshot's state: 3 calls before it.
    let server = std::sync::Arc::new(server);
    let s2 = server.clone();
    let slow = tokio::spawn(async move { restore(&s2, json!({"sleep": 1})).await });
    // While it runs, its private memory maps the snapshot's image file.
    let images = server.data.canonicalize().unwrap().join("store/images");
    let mut mapped = false;
    for _ in 0..500 {
        for pid in server.sandbox_pids() {
            let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
            if maps
                .lines()
                .any(|l| l.contains(images.to_str().unwrap()) && l.contains(" rw-p "))
            {
                mapped = true;
            }
        }
        if mapped {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let a = slow.await.unwrap();
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.header("x-thaw-start"), "restore");
    let copy = a.json();
    assert_eq!(
        copy["calls"], 4,
        "the warm-up's 3 calls are in the snapshot: {copy}"
    );
    assert_eq!(copy["copy"], true);
    assert_eq!(copy["hooks"], 1, "thaw.on_restore hooks ran once");
    assert_eq!(
        copy["pid"], original["pid"],
        "the copy has the original's pid"
    );
    assert!(
        mapped,
        "the copy's private areas map the image under {}",
        images.display()
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        (copy["time"].as_f64().unwrap() - now).abs() < 60.0,
        "clock right in the copy: {copy}"
    );

    // Copies are unique: fresh randomness, unlike each other and the original.
    let b = restore(&server, json!({})).await.json();
    for field in ["random", "uuid", "urandom"] {
        assert_ne!(copy[field], b[field], "{field} differs across copies");
        assert_ne!(
            copy[field], original[field],
            "{field} differs from the original"
        );
    }

    // Without forcing, the first cold start after the restart restores, and
    // the copy then stays on as a warm instance.
    let a = server.invoke("counter", json!({})).await;
    assert_eq!(a.header("x-thaw-start"), "restore");
    assert_eq!(a.json()["calls"], 4);
    let a = server.invoke("counter", json!({})).await;
    assert_eq!(a.header("x-thaw-start"), "warm");
    assert_eq!(a.json()["calls"], 5);
}

#[tokio::test]
async fn twenty_copies_at_once_are_independent() {
    require_root!();
    let server = std::sync::Arc::new(Server::start(&["--allow-forced-cold"]));
    server
        .deploy_ready(function(
            "counter",
            COUNTER,
            json!({"warmup": [{}, {}, {}], "concurrency": 20}),
        ))
        .await;
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let s = server.clone();
            tokio::spawn(async move { restore(&s, json!({"sleep": 0.2})).await })
        })
        .collect();
    let mut uuids = std::collections::HashSet::new();
    for t in tasks {
        let a = t.await.unwrap();
        assert_eq!(a.status, 200, "{}", a.text());
        assert_eq!(a.header("x-thaw-start"), "restore");
        let v = a.json();
        assert_eq!(
            v["calls"], 4,
            "each copy counts from the snapshot alone: {v}"
        );
        uuids.insert(v["uuid"].as_str().unwrap().to_string());
    }
    assert_eq!(uuids.len(), 20);
    // Only the warm original and the spares (refilled) are left.
    let v = server.wait_spares("counter", 2).await;
    let kept: Vec<_> = v["instance_list"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["state"] != "spare")
        .collect();
    assert!(kept.len() <= 1, "forced copies are discarded: {v}");
    // Their sandboxes are torn down after the answers, in the background.
    let t0 = std::time::Instant::now();
    while server.sandbox_pids().len() > 3 * (1 + 2) {
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(10),
            "forced copies are discarded: {:?}",
            server.sandbox_pids()
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_corrupt_store_object_falls_back_to_boot_and_says_why() {
    require_root!();
    let mut server = Server::start(&[]);
    server.deploy_ready(spec()).await;
    server.stop();
    // No cached image, and a flipped byte in the store: the image cannot be
    // rebuilt from verified pages.
    let store = server.data.join("store");
    let _ = std::fs::remove_dir_all(store.join("images"));
    let pack = std::fs::read_dir(store.join("packs"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .next()
        .unwrap();
    let mut bytes = std::fs::read(&pack).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0xff;
    std::fs::write(&pack, &bytes).unwrap();
    server.spawn();
    let a = server.invoke("counter", json!({})).await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.header("x-thaw-start"), "boot", "fell back to booting");
    assert_eq!(a.json()["calls"], 1, "a fresh boot");
    // The version says why, and the snapshot is marked for rebuild.
    let v = server.get("/functions/counter").await.json();
    let note = &v["restore_failure"];
    assert!(
        note["reason"].as_str().unwrap_or("").contains("corrupt"),
        "{v}"
    );
    assert!(note["rebuild"].is_string(), "{note}");
    let metrics = server.get("/metrics").await.text();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("thaw_restore_failures_total ") && !l.ends_with(" 0")),
        "{metrics}"
    );
}
