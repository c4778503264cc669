//! Deploy captures the warmed instance into the page store.

mod common;

use common::{function, Server};
use serde_json::json;

const APP: &str = r#"
import json, collections
TABLE = {i: str(i) * 3 for i in range(20000)}
COUNTER = collections.Counter()

def handler(event, context):
    COUNTER["calls"] += 1
    return {"size": len(TABLE), "calls": COUNTER["calls"], "echo": event}
"#;

const OTHER: &str = r#"
import re
WORDS = re.compile(r"\w+")
def handler(event, context):
    return {"words": len(WORDS.findall(str(event)))}
"#;

fn thaw_store(server: &Server, action: &str) -> serde_json::Value {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_thaw"))
        .args(["store", action, "--data-dir"])
        .arg(&server.data)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "thaw store {action}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test]
async fn deploy_snapshots_into_the_deduplicated_store() {
    require_root!();
    let server = Server::start(&[]);
    let rec = server
        .deploy_ready(function(
            "app",
            APP,
            json!({"warmup": [{"w": 1}, {"w": 2}]}),
        ))
        .await;
    assert_eq!(rec["state"], "ready", "{rec}");
    assert!(rec["error"].is_null(), "{rec}");
    let snap = &rec["snapshot"];
    let first_pages = snap["stored_pages"].as_u64().unwrap();
    assert!(first_pages > 100, "{snap}");
    assert!(snap["areas"].as_u64().unwrap() > 10, "{snap}");

    // The captured original stays on as a warm instance, its state intact
    // (the two warm-up calls were counted).
    let a = server.invoke("app", json!({"x": 1})).await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.header("x-thaw-start"), "warm");
    assert_eq!(a.json()["calls"], 3);

    let store = server.get("/store").await.json();
    assert_eq!(store["snapshots"], 1);
    assert_eq!(
        store["objects"].as_u64().unwrap(),
        first_pages.min(store["objects"].as_u64().unwrap())
    );
    assert!(store["objects"].as_u64().unwrap() > 0);

    // A second boot and capture of the same function adds few pages.
    let rec2 = server
        .deploy_ready(function(
            "app-again",
            APP,
            json!({"warmup": [{"w": 1}, {"w": 2}]}),
        ))
        .await;
    let again = &rec2["snapshot"];
    let new = again["new_pages"].as_u64().unwrap();
    let stored = again["stored_pages"].as_u64().unwrap();
    println!(
        "second capture of the same function: {new} new of {stored} pages ({:.1}%)",
        100.0 * new as f64 / stored as f64
    );
    assert!(new * 10 < stored, "{new} new of {stored}: {again}");

    // Another small function: print the share of pages it adds (goal < 30%).
    let rec3 = server
        .deploy_ready(function("other", OTHER, json!({})))
        .await;
    let other = &rec3["snapshot"];
    let new = other["new_pages"].as_u64().unwrap();
    let stored = other["stored_pages"].as_u64().unwrap();
    println!(
        "a second pure-Python function adds {new} new of {stored} pages ({:.1}%)",
        100.0 * new as f64 / stored as f64
    );

    let stats = thaw_store(&server, "stats");
    assert_eq!(stats["snapshots"], 3);
    assert!(stats["dedup_ratio"].as_f64().unwrap() > 1.5, "{stats}");
    let verify = thaw_store(&server, "verify");
    assert_eq!(verify["ok"], true, "{verify}");

    // Deleting the functions frees their pages at the next gc.
    for name in ["app", "app-again", "other"] {
        let d = server
            .request(
                reqwest::Method::DELETE,
                &format!("/functions/{name}"),
                None,
                &[],
            )
            .await;
        assert_eq!(d.status, 204);
    }
    let gc = thaw_store(&server, "gc");
    assert!(gc["objects_freed"].as_u64().unwrap() > 0, "{gc}");
    let stats = thaw_store(&server, "stats");
    assert_eq!(stats["objects"], 0, "{stats}");
    assert_eq!(stats["snapshots"], 0, "{stats}");
}

#[tokio::test]
async fn a_function_that_cannot_be_captured_still_serves_by_booting() {
    require_root!();
    let server = Server::start(&[]);
    // An inotify descriptor with an event not read yet cannot be copied
    // faithfully (the event would be lost; one without is, issue 19).
    let watcher = r#"
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
WATCH = libc.inotify_init1(0)
assert WATCH >= 0, ctypes.get_errno()
libc.inotify_add_watch(WATCH, b"/tmp", 0x100)
open("/tmp/unread-event", "w").close()
def handler(event, context):
    return "still here"
"#;
    let rec = server
        .deploy_ready(function("watcher", watcher, json!({})))
        .await;
    assert_eq!(rec["state"], "ready", "{rec}");
    assert!(rec["snapshot"].is_null(), "{rec}");
    let err = rec["error"].as_str().unwrap();
    assert!(
        err.contains("snapshot failed") && err.contains("inotify"),
        "{err}"
    );
    let a = server.invoke("watcher", json!({})).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.text(), "still here");
}
