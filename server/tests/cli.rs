//! The `thaw` command line against a real server, as the README uses it.

mod common;

use std::path::Path;
use std::process::Command;

use common::Server;

fn thaw(server: &Server, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_thaw"))
        .args(args)
        .env("THAW_SERVER", &server.url)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn deploy_invoke_ls_logs_rm() {
    require_root!();
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let hello = examples.join("hello").display().to_string();
    // As `./dev.sh run` starts it: the example deployed at start.
    let server = Server::start(&["--deploy", &hello]);
    server.wait_state("hello").await;

    let (ok, out, err) = thaw(
        &server,
        &["invoke", "hello", "--data", r#"{"name": "cli"}"#, "-v"],
    );
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["hello"], "cli");
    assert!(
        err.contains("HTTP 200") && err.contains("x-thaw-start"),
        "{err}"
    );

    // Deploying the folder again makes version 2.
    let (ok, out, err) = thaw(&server, &["deploy", &hello]);
    assert!(ok, "{err}");
    assert!(out.contains("deployed hello version 2"), "{out}");
    server.wait_state("hello").await;

    let (ok, out, _) = thaw(&server, &["ls"]);
    assert!(ok);
    assert!(
        out.lines()
            .any(|l| l.starts_with("hello") && l.contains("ready")),
        "{out}"
    );

    // Logs: the follow stream delivers a line printed after it started.
    let url = format!("{}/functions/hello/logs?tail=0&follow=1", server.url);
    let mut stream = reqwest::Client::new().get(&url).send().await.unwrap();
    assert_eq!(stream.status(), 200);
    let code = "def handler(e, c):\n    print('streamed line', c.invocation_id)\n    return 1\n";
    server
        .deploy_ready(common::function("printer", code, serde_json::json!({})))
        .await;
    let url = format!("{}/functions/printer/logs?tail=0&follow=1", server.url);
    drop(stream);
    stream = reqwest::Client::new().get(&url).send().await.unwrap();
    let a = server.invoke("printer", serde_json::json!({})).await;
    let id = a.header("x-thaw-invocation-id");
    let mut seen = String::new();
    while !seen.contains(&format!("streamed line {id}")) {
        let chunk = tokio::time::timeout(std::time::Duration::from_secs(30), stream.chunk())
            .await
            .expect("a log event within 30 s")
            .unwrap()
            .expect("stream open");
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(seen.contains("event: log"), "{seen}");

    let (ok, out, _) = thaw(&server, &["logs", "printer", "--tail", "10"]);
    assert!(ok);
    assert!(out.contains(&format!("[{id}] streamed line {id}")), "{out}");

    let (ok, out, _) = thaw(&server, &["rm", "hello"]);
    assert!(ok);
    assert!(out.contains("deleted hello"));
    let (ok, _, err) = thaw(&server, &["invoke", "hello"]);
    assert!(!ok);
    let _ = err;
    let (ok, _, err) = thaw(&server, &["rm", "hello"]);
    assert!(!ok);
    assert!(err.contains("404") && err.contains("not_found"), "{err}");
}

#[test]
fn a_server_that_is_not_there_is_a_clear_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_thaw"))
        .args(["ls", "--server", "http://127.0.0.1:9"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot reach the thaw server at http://127.0.0.1:9"),
        "{err}"
    );
}
