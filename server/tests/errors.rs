//! Every error kind, produced by a real function, answered as specified; and
//! a good function keeps working after each.

mod common;

use common::{function, Server};
use serde_json::json;

const BAD: &str = r#"
import os, time
def handler(event, context):
    what = event.get("do")
    if what == "raise":
        raise ValueError("boom")
    if what == "kill":
        os.kill(os.getpid(), 9)
    if what == "exit":
        os._exit(3)
    if what == "oom":
        hog = []
        while True:
            hog.append(bytearray(16 << 20))
    if what == "sleep":
        time.sleep(event["s"])
    return {"fine": True}
"#;

async fn good_still_works(server: &Server) {
    let a = server.invoke("good", json!({})).await;
    assert_eq!(a.status, 200, "good function after an error: {}", a.text());
}

fn assert_error(a: &common::Answer, status: u16, kind: &str) -> serde_json::Value {
    assert_eq!(a.status, status, "{}", a.text());
    let v = a.json();
    assert_eq!(v["error"], kind, "{v}");
    assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    v
}

#[tokio::test]
async fn each_error_kind_is_answered_and_the_server_keeps_serving() {
    require_root!();
    let server = Server::start(&["--max-body-mb", "1"]);
    server
        .deploy_ready(function(
            "good",
            "def handler(e, c):\n    return 1\n",
            json!({}),
        ))
        .await;
    server
        .deploy_ready(function(
            "bad",
            BAD,
            json!({"timeout_ms": 1500, "memory_mb": 64}),
        ))
        .await;

    let a = server.invoke("bad", json!({"do": "raise"})).await;
    let v = assert_error(&a, 500, "handler_error");
    assert!(
        v["message"].as_str().unwrap().contains("ValueError: boom"),
        "{v}"
    );
    assert_eq!(v["invocation_id"], a.header("x-thaw-invocation-id"));
    // The instance survives a handler error: the next call is warm.
    let a = server.invoke("bad", json!({})).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.header("x-thaw-start"), "warm");
    good_still_works(&server).await;

    let a = server.invoke("bad", json!({"do": "kill"})).await;
    let v = assert_error(&a, 502, "function_crashed");
    assert!(v["message"].as_str().unwrap().contains("SIGKILL"), "{v}");
    // The crashed instance is replaced (by a copy of the snapshot).
    let a = server.invoke("bad", json!({})).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.header("x-thaw-start"), "restore");
    good_still_works(&server).await;

    let a = server.invoke("bad", json!({"do": "exit"})).await;
    let v = assert_error(&a, 502, "function_crashed");
    assert!(v["message"].as_str().unwrap().contains("status 3"), "{v}");

    let a = server.invoke("bad", json!({"do": "oom"})).await;
    let v = assert_error(&a, 502, "function_crashed");
    assert!(v["message"].as_str().unwrap().contains("memory"), "{v}");
    good_still_works(&server).await;

    let a = server.invoke("bad", json!({"do": "sleep", "s": 30})).await;
    assert_error(&a, 504, "timeout");
    good_still_works(&server).await;

    let a = server.invoke_raw("good", vec![b'x'; 2 << 20], &[]).await;
    assert_error(&a, 413, "payload_too_large");
    good_still_works(&server).await;

    let a = server.invoke("nope", json!({})).await;
    assert_error(&a, 404, "not_found");

    let a = server
        .invoke_raw("good", b"{}".to_vec(), &[("x-thaw-cold", "boot")])
        .await;
    assert_error(&a, 403, "forbidden");
    good_still_works(&server).await;
}

#[tokio::test]
async fn burst_past_concurrency_gets_429_with_retry_after() {
    require_root!();
    let server = Server::start(&[]);
    let slow =
        "import time\ndef handler(e, c):\n    time.sleep(e.get('s', 0))\n    return 'done'\n";
    server
        .deploy_ready(function(
            "slow",
            slow,
            json!({"concurrency": 2, "queue": 1}),
        ))
        .await;
    let server = std::sync::Arc::new(server);
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let s = server.clone();
        tasks.push(tokio::spawn(async move {
            s.invoke("slow", json!({"s": 2})).await
        }));
    }
    let mut ok = 0;
    let mut limited = 0;
    for t in tasks {
        let a = t.await.unwrap();
        match a.status {
            200 => ok += 1,
            429 => {
                assert_eq!(a.json()["error"], "concurrency_limit");
                assert_eq!(a.header("retry-after"), "1");
                limited += 1;
            }
            other => panic!("unexpected {other}: {}", a.text()),
        }
    }
    // Two run, one waits, three are refused.
    assert_eq!((ok, limited), (3, 3));
    let a = server.invoke("slow", json!({})).await;
    assert_eq!(a.status, 200);
}

#[tokio::test]
async fn import_failure_marks_the_version_failed() {
    require_root!();
    let server = Server::start(&[]);
    let rec = server
        .deploy_ready(function("broken", "import no_such_module\n", json!({})))
        .await;
    assert_eq!(rec["state"], "failed");
    assert!(
        rec["error"].as_str().unwrap().contains("no_such_module"),
        "{rec}"
    );
    let a = server.invoke("broken", json!({})).await;
    let v = assert_error(&a, 502, "init_error");
    assert!(
        v["message"].as_str().unwrap().contains("no_such_module"),
        "{v}"
    );
}

#[tokio::test]
async fn memory_budget_is_enforced() {
    require_root!();
    let server = Server::start(&["--memory-budget-mb", "100"]);
    let a = server
        .deploy(function(
            "big",
            "def handler(e, c):\n    return 1\n",
            json!({"memory_mb": 256}),
        ))
        .await;
    assert_eq!(a.status, 201);
    let rec = server.wait_state("big").await;
    // Not the handler's fault: the version stays servable, the error says why.
    assert_eq!(rec["state"], "ready", "{rec}");
    assert!(rec["error"].as_str().unwrap().contains("budget"), "{rec}");
    let a = server.invoke("big", json!({})).await;
    assert_error(&a, 429, "memory_budget");
    assert_eq!(a.header("retry-after"), "1");

    // Instances that really use memory fill the budget: 40 MiB in use plus
    // a 64 MiB start does not fit in 100 MiB, even after evicting idle ones.
    let hog = "import time\ndef handler(e, c):\n    x = bytearray(40 << 20)\n    for i in range(0, len(x), 4096):\n        x[i] = 1\n    time.sleep(e.get('s', 0))\n    return 1\n";
    let server = std::sync::Arc::new(server);
    server
        .deploy_ready(function("hog", hog, json!({"memory_mb": 64})))
        .await;
    let s2 = server.clone();
    let first = tokio::spawn(async move { s2.invoke("hog", json!({"s": 3})).await });
    loop {
        let v = server.get("/functions/hog").await.json();
        if v["memory_bytes"].as_u64().unwrap() > 40 << 20 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let second = server.invoke("hog", json!({})).await;
    assert_error(&second, 429, "memory_budget");
    assert_eq!(first.await.unwrap().status, 200);
}
