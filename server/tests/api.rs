//! Deploy → invoke through the real HTTP server, with real sandboxes.

mod common;

use common::{function, Server};
use serde_json::json;

const ECHO: &str = r#"
import thaw

def handler(event, context):
    if isinstance(event, dict) and event.get("response"):
        return thaw.Response({"made": True}, status=201, headers={"x-custom": "yes"})
    if isinstance(event, (bytes, bytearray)):
        return bytes(reversed(event))
    return {
        "event": event,
        "invocation_id": context.invocation_id,
        "function": context.function,
        "version": context.version,
        "deadline_ms": context.deadline_ms,
        "remaining_ms": context.remaining_ms(),
    }
"#;

#[tokio::test]
async fn deploy_invoke_context_response_and_versions() {
    require_root!();
    let server = Server::start(&[]);
    let created = server.deploy(function("echo", ECHO, json!({}))).await;
    assert_eq!(created.status, 201, "{}", created.text());
    let rec = created.json();
    assert_eq!(rec["name"], "echo");
    assert_eq!(rec["version"], 1);
    assert!(rec["snapshot"].is_null());
    assert!(rec["state"] == "deploying" || rec["state"] == "ready");
    let rec = server.wait_state("echo").await;
    assert_eq!(rec["state"], "ready", "{rec}");

    // JSON event → JSON answer, with context and the x-thaw headers.
    let a = server.invoke("echo", json!({"n": 1})).await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.header("content-type"), "application/json");
    let v = a.json();
    assert_eq!(v["event"], json!({"n": 1}));
    assert_eq!(v["function"], "echo");
    assert_eq!(v["version"], "1");
    assert_eq!(v["invocation_id"], a.header("x-thaw-invocation-id"));
    assert!(v["remaining_ms"].as_i64().unwrap() > 0);
    assert!(v["remaining_ms"].as_i64().unwrap() <= 10_000);
    assert_eq!(
        a.header("x-thaw-start"),
        "warm",
        "deploy left a warm instance"
    );
    assert!(a.header("x-thaw-start-us").parse::<u64>().is_ok());
    assert!(a.header("x-thaw-duration-us").parse::<u64>().is_ok());

    // thaw.Response sets status and headers.
    let a = server.invoke("echo", json!({"response": true})).await;
    assert_eq!(a.status, 201);
    assert_eq!(a.header("x-custom"), "yes");
    assert_eq!(a.json(), json!({"made": true}));

    // Non-JSON bodies arrive as bytes, binary-safe.
    let a = server.invoke_raw("echo", vec![0, 1, 2, 255], &[]).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.body, vec![255, 2, 1, 0]);

    // A new version takes new invocations; ?version reaches the old one.
    let v2 = ECHO.replace("\"event\": event", "\"event\": event, \"v2\": True");
    let rec = server.deploy_ready(function("echo", &v2, json!({}))).await;
    assert_eq!(rec["version"], 2);
    assert_eq!(server.invoke("echo", json!({})).await.json()["v2"], true);
    let old = server
        .request(
            reqwest::Method::POST,
            "/functions/echo/invoke?version=1",
            Some(b"{}".to_vec()),
            &[],
        )
        .await;
    assert_eq!(old.status, 200, "{}", old.text());
    assert!(old.json().get("v2").is_none());
    assert_eq!(old.json()["version"], "1");

    // Listing and deletion.
    let list = server.get("/functions").await.json();
    assert_eq!(list["functions"].as_array().unwrap().len(), 1);
    let del = server
        .request(reqwest::Method::DELETE, "/functions/echo", None, &[])
        .await;
    assert_eq!(del.status, 204);
    assert_eq!(server.get("/functions/echo").await.status, 404);
    assert!(!server.data.join("functions/echo").exists(), "files freed");
    assert!(server.sandbox_pids().is_empty(), "instances stopped");
}

#[tokio::test]
async fn archive_deploy_with_a_binary_file() {
    require_root!();
    use base64::Engine;
    let server = Server::start(&[]);
    let code = br#"
import os
def handler(event, context):
    data = open(os.path.join(os.path.dirname(__file__), "blob.bin"), "rb").read()
    return data
"#;
    let blob: Vec<u8> = (0..=255u8).cycle().take(10_000).collect();
    let mut tar = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::fast(),
    ));
    for (name, bytes) in [("main.py", &code[..]), ("blob.bin", &blob[..])] {
        let mut h = tar::Header::new_gnu();
        h.set_size(bytes.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        tar.append_data(&mut h, name, bytes).unwrap();
    }
    let gz = tar.into_inner().unwrap().finish().unwrap();
    let spec = json!({
        "name": "blob",
        "handler": "main.handler",
        "archive": base64::engine::general_purpose::STANDARD.encode(gz),
    });
    let rec = server.deploy_ready(spec).await;
    assert_eq!(rec["state"], "ready", "{rec}");
    let a = server.invoke("blob", json!({})).await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.header("content-type"), "application/octet-stream");
    assert_eq!(a.body, blob);
}

#[tokio::test]
async fn invalid_specs_are_refused_with_the_field_named() {
    require_root!();
    let server = Server::start(&[]);
    for (spec, field) in [
        (json!({"name": "Bad!", "files": {"main.py": ""}}), "name"),
        (
            json!({"name": "ok", "files": {"main.py": ""}, "memory_mb": 1}),
            "memory_mb",
        ),
        (
            json!({"name": "ok", "files": {"main.py": ""}, "timeout_ms": "soon"}),
            "timeout_ms",
        ),
        (json!({"name": "ok", "files": {"../evil.py": ""}}), "files"),
        (json!({"name": "ok"}), "files"),
        (
            json!({"name": "ok", "archive": "@@@", "files": {}}),
            "archive",
        ),
    ] {
        let a = server.deploy(spec.clone()).await;
        assert_eq!(a.status, 400, "{spec}: {}", a.text());
        let v = a.json();
        assert_eq!(v["error"], "invalid_spec");
        assert!(
            v["message"].as_str().unwrap().contains(field),
            "{v} should name {field}"
        );
    }
    let a = server
        .request(
            reqwest::Method::POST,
            "/functions",
            Some(b"{not json".to_vec()),
            &[],
        )
        .await;
    assert_eq!(a.status, 400);
    assert_eq!(a.json()["error"], "invalid_spec");
    assert!(server.get("/functions").await.json()["functions"]
        .as_array()
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn logs_carry_invocation_ids_and_metrics_count_invocations() {
    require_root!();
    let server = Server::start(&[]);
    let code = r#"
import sys
def handler(event, context):
    print("hello from", context.invocation_id)
    print("to stderr", file=sys.stderr)
    return "ok"
"#;
    server
        .deploy_ready(function("talker", code, json!({})))
        .await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        let a = server.invoke("talker", json!({})).await;
        assert_eq!(a.status, 200);
        ids.push(a.header("x-thaw-invocation-id"));
    }
    let logs = server.get("/functions/talker/logs?tail=50").await.json();
    let lines = logs["lines"].as_array().unwrap();
    for id in &ids {
        let line = lines
            .iter()
            .find(|l| l["line"] == format!("hello from {id}"))
            .unwrap_or_else(|| panic!("no line for {id} in {logs}"));
        assert_eq!(line["invocation_id"], id.as_str());
        assert_eq!(line["stream"], "stdout");
        assert!(lines
            .iter()
            .any(|l| l["invocation_id"] == id.as_str() && l["stream"] == "stderr"));
    }
    assert_eq!(server.get("/functions/nope/logs").await.status, 404);

    let text = server.get("/metrics").await.text();
    let mut found = None;
    for line in text.lines() {
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        // name{labels} value
        let (name_labels, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad line {line:?}"));
        assert!(value.parse::<f64>().is_ok(), "bad value in {line:?}");
        assert!(
            name_labels.starts_with("thaw_"),
            "unprefixed metric {line:?}"
        );
        if name_labels.starts_with("thaw_invocations_total{")
            && name_labels.contains("function=\"talker\"")
            && name_labels.contains("outcome=\"ok\"")
        {
            found = Some(value.parse::<f64>().unwrap());
        }
    }
    assert_eq!(found, Some(3.0), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("thaw_function_memory_bytes{")
                && l.contains("function=\"talker\"")
                && l.contains("kind=\"pss\"")
                && !l.ends_with(" 0")),
        "PSS of the function is exported: {text}"
    );
    let v = server.get("/functions/talker").await.json();
    // The instance, besides the spares (pre-made stub sandboxes).
    let list: Vec<&serde_json::Value> = v["instance_list"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["state"] != "spare")
        .collect();
    assert_eq!(list.len(), 1, "{v}");
    let inst = list[0];
    assert_eq!(inst["state"], "idle", "{v}");
    let (rss, pss, uss) = (
        inst["memory"]["rss"].as_u64().unwrap(),
        inst["memory"]["pss"].as_u64().unwrap(),
        inst["memory"]["uss"].as_u64().unwrap(),
    );
    assert!(uss <= pss && pss <= rss && uss > 0, "{v}");
    assert_eq!(server.get("/healthz").await.status, 200);
}

#[tokio::test]
async fn store_stats_are_served() {
    require_root!();
    let server = Server::start(&[]);
    let a = server.get("/store").await;
    assert_eq!(a.status, 200, "{}", a.text());
    let v = a.json();
    for field in [
        "objects",
        "stored_bytes",
        "logical_bytes",
        "dedup_ratio",
        "zero_pages",
    ] {
        assert!(v.get(field).is_some(), "GET /store lacks {field}: {v}");
    }
}

#[tokio::test]
async fn forced_cold_boot_serves_from_a_fresh_instance_and_discards_it() {
    require_root!();
    let server = Server::start(&["--allow-forced-cold"]);
    let code = "import os\ndef handler(e, c):\n    return {'boot': os.environ.get('X', '') + str(id(object()))}\n";
    server.deploy_ready(function("cold", code, json!({}))).await;
    // Spares (pre-made stub sandboxes) are made in the background: let them
    // settle so the counts compare.
    let before = server.wait_spares("cold", 2).await["instances"].clone();
    let a = server
        .invoke_raw("cold", b"{}".to_vec(), &[("x-thaw-cold", "boot")])
        .await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.header("x-thaw-start"), "boot");
    // The fresh instance was discarded: the idle count is what it was.
    let after = server.get("/functions/cold").await.json()["instances"].clone();
    assert_eq!(before, after);
    let a = server.invoke("cold", json!({})).await;
    assert_eq!(a.header("x-thaw-start"), "warm");
    // A forced restore is a fresh copy of the snapshot, discarded after.
    let a = server
        .invoke_raw("cold", b"{}".to_vec(), &[("x-thaw-cold", "restore")])
        .await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.header("x-thaw-start"), "restore");
    let after = server.wait_spares("cold", 2).await["instances"].clone();
    assert_eq!(before, after);
    // A version without a snapshot cannot be restored.
    server
        .deploy_ready(function(
            "nosnap",
            "def handler(e, c):\n    return 1\n",
            json!({"snapshot": false}),
        ))
        .await;
    let a = server
        .invoke_raw("nosnap", b"{}".to_vec(), &[("x-thaw-cold", "restore")])
        .await;
    assert_eq!(a.status, 409, "{}", a.text());
    assert_eq!(a.json()["error"], "no_snapshot");
    let a = server
        .invoke_raw("cold", b"{}".to_vec(), &[("x-thaw-cold", "lukewarm")])
        .await;
    assert_eq!(a.status, 400);
}

#[tokio::test]
async fn every_answer_carries_a_request_id() {
    require_root!();
    let server = Server::start(&[]);
    let a = server.get("/functions").await;
    assert_eq!(a.header("x-request-id").len(), 36, "a fresh uuid");
    let a = server
        .request(
            reqwest::Method::GET,
            "/functions",
            None,
            &[("x-request-id", "client-chosen-1")],
        )
        .await;
    assert_eq!(a.header("x-request-id"), "client-chosen-1");
}
