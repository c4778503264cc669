//! The Node.js and Java runtimes through a real `thaw serve` and real HTTP:
//! deploy from a folder (CLI) and from files, invoke, every error kind, logs
//! tagged by invocation, warm-up rounds, the runtime shown by `thaw ls`.
//!
//! Needs root (sandboxes), `/usr/bin/node` (20 or later) and a C compiler for
//! the Node tests, `/usr/bin/java` and `/usr/bin/javac` (17) for the Java
//! tests. A missing one skips with the reason, and fails under
//! `THAW_TEST_STRICT=1`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::Server;
use serde_json::{json, Value};

/// Skips (or, under THAW_TEST_STRICT, fails) when a program is missing.
fn have(programs: &[&str]) -> bool {
    for p in programs {
        if !Path::new(p).exists() {
            let msg = format!("{p} is missing");
            if std::env::var_os("THAW_TEST_STRICT").is_some() {
                panic!("THAW_TEST_STRICT: {msg}");
            }
            eprintln!("skipped: {msg}");
            return false;
        }
    }
    true
}

macro_rules! require {
    ($($p:expr),*) => {
        require_root!();
        if !have(&[$($p),*]) {
            return;
        }
    };
}

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

/// Runs the `thaw` CLI against `server`.
fn cli(server: &Server, args: &[&str]) -> (bool, String, String) {
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

/// The version is ready; its snapshot was taken or, while multi-threaded
/// runtimes cannot be captured, refused with the reason.
fn assert_ready(rec: &Value) {
    assert_eq!(rec["state"], "ready", "{rec}");
    if rec["snapshot"].is_null() {
        let err = rec["error"].as_str().unwrap_or("");
        assert!(err.starts_with("snapshot failed"), "{rec}");
    } else {
        assert!(rec["error"].is_null(), "{rec}");
    }
}

/// Log lines of `name` printed during invocation `id`.
async fn logs_of(server: &Server, name: &str, id: &str) -> Vec<String> {
    let v = server.get(&format!("/functions/{name}/logs")).await.json();
    v["lines"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["invocation_id"] == id)
        .map(|l| l["line"].as_str().unwrap().to_string())
        .collect()
}

async fn deploy_files(server: &Server, spec: Value, files: &[(&str, &str)]) -> Value {
    let mut spec = spec;
    let map: serde_json::Map<String, Value> = files
        .iter()
        .map(|(k, v)| (k.to_string(), Value::from(*v)))
        .collect();
    spec["files"] = Value::Object(map);
    server.deploy_ready(spec).await
}

async fn invoke_json(server: &Server, name: &str, event: Value) -> (u16, Value) {
    let a = server.invoke(name, event).await;
    let body = serde_json::from_slice(&a.body).unwrap_or(Value::String(a.text()));
    (a.status, body)
}

// ---- Node.js ---------------------------------------------------------------

const NODE_OPS: &str = r#"
const thaw = require('thaw');
let count = 0;
exports.handler = async (event, context) => {
  count += 1;
  const op = event && event.op;
  if (op === 'count') return { count };
  if (op === 'object') return { a: 1, nested: [true, null] };
  if (op === 'buffer') return Buffer.from([0, 1, 255]);
  if (op === 'string') return 'h\u00e9llo';
  if (op === 'response') return thaw.response('made', { status: 201, headers: { 'X-Made': 'yes' } });
  if (op === 'throw') throw new RangeError('out of range: ' + event.why);
  if (op === 'reject') return Promise.reject(new Error('rejected'));
  if (op === 'exit') process.exit(3);
  if (op === 'log') {
    console.log('log line from', context.invocationId);
    console.error('an error line');
    return 'logged';
  }
  if (op === 'context') return { id: context.invocationId, fn: context.function, version: context.version, remaining: context.remainingMs() };
  return { event };
};
exports.plain = (event) => 'plain ' + JSON.stringify(event);
"#;

#[tokio::test]
async fn node_answers_every_return_kind_and_error_kind() {
    require!("/usr/bin/node", "/usr/bin/cc");
    let server = Server::start(&[]);
    let rec = deploy_files(
        &server,
        json!({"name": "node-ops", "runtime": "node20", "warmup": [{"op": "count"}]}),
        &[("index.js", NODE_OPS)],
    )
    .await;
    assert_ready(&rec);
    assert_eq!(rec["spec"]["runtime"], "node20");
    assert_eq!(
        rec["spec"]["handler"], "index.handler",
        "the runtime's default"
    );

    // Return values, as in Python.
    let (s, v) = invoke_json(&server, "node-ops", json!({"op": "object"})).await;
    assert_eq!((s, v), (200, json!({"a": 1, "nested": [true, null]})));
    let a = server.invoke("node-ops", json!({"op": "buffer"})).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.body, [0, 1, 255]);
    assert_eq!(a.header("content-type"), "application/octet-stream");
    let a = server.invoke("node-ops", json!({"op": "string"})).await;
    assert_eq!(a.text(), "h\u{e9}llo");
    assert_eq!(a.header("content-type"), "text/plain; charset=utf-8");
    let a = server.invoke("node-ops", json!({"op": "response"})).await;
    assert_eq!((a.status, a.text()), (201, "made".to_string()));
    assert_eq!(a.header("x-made"), "yes");
    let a = server.invoke_raw("node-ops", vec![0xff, 0x00], &[]).await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(
        a.json()["event"]["type"],
        "Buffer",
        "a non-JSON body is a Buffer"
    );
    let (_, v) = invoke_json(&server, "node-ops", json!({"op": "context"})).await;
    assert_eq!(v["fn"], "node-ops");
    assert_eq!(v["version"], "1");
    assert!(v["remaining"].as_u64().unwrap() > 0, "{v}");

    // Errors.
    let (s, v) = invoke_json(&server, "node-ops", json!({"op": "throw", "why": "x"})).await;
    assert_eq!(s, 500, "{v}");
    assert_eq!(v["error"], "handler_error");
    assert_eq!(v["message"], "RangeError: out of range: x");
    assert!(v["traceback"].as_str().unwrap().contains("index.js"), "{v}");
    let (s, v) = invoke_json(&server, "node-ops", json!({"op": "reject"})).await;
    assert_eq!(
        (s, v["error"].as_str()),
        (500, Some("handler_error")),
        "{v}"
    );
    assert_eq!(v["message"], "Error: rejected");
    // The runtime kept serving; the warm-up's invocation counted.
    let (_, v) = invoke_json(&server, "node-ops", json!({"op": "count"})).await;
    assert!(v["count"].as_u64().unwrap() >= 2, "{v}");

    // Logs, tagged with the invocation that printed them.
    let a = server.invoke("node-ops", json!({"op": "log"})).await;
    assert_eq!(a.text(), "logged");
    let id = a.header("x-thaw-invocation-id");
    let mut lines = Vec::new();
    for _ in 0..100 {
        lines = logs_of(&server, "node-ops", &id).await;
        if lines.len() >= 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(
        lines.iter().any(|l| l.starts_with("log line from "))
            && lines.contains(&"an error line".to_string()),
        "lines of {id}: {lines:?}"
    );

    // process.exit is a crash; the next invocation boots a fresh instance.
    let (s, v) = invoke_json(&server, "node-ops", json!({"op": "exit"})).await;
    assert_eq!(
        (s, v["error"].as_str()),
        (502, Some("function_crashed")),
        "{v}"
    );
    let (s, _) = invoke_json(&server, "node-ops", json!({"op": "object"})).await;
    assert_eq!(s, 200);

    // A plain (not async) function as the handler.
    let rec = deploy_files(
        &server,
        json!({"name": "node-plain", "runtime": "node20", "handler": "index.plain"}),
        &[("index.js", NODE_OPS)],
    )
    .await;
    assert_eq!(rec["state"], "ready", "{rec}");
    let a = server.invoke("node-plain", json!([1])).await;
    assert_eq!(a.text(), "plain [1]");
}

#[tokio::test]
async fn node_es_modules_imports_and_init_errors() {
    require!("/usr/bin/node", "/usr/bin/cc");
    let server = Server::start(&[]);
    // An ES module importing thaw both ways, in a subfolder.
    let rec = deploy_files(
        &server,
        json!({"name": "node-esm", "runtime": "node20", "handler": "lib/app.main"}),
        &[(
            "lib/app.mjs",
            "import thaw from 'thaw';\nimport { onRestore, response } from 'thaw';\n\
             onRestore(() => {});\n\
             export const main = async (e) => response({ esm: true, same: thaw.response === response, copy: thaw.isCopy() }, { status: 202 });\n",
        )],
    )
    .await;
    assert_ready(&rec);
    let a = server.invoke("node-esm", json!({})).await;
    assert_eq!(a.status, 202, "{}", a.text());
    assert_eq!(a.json(), json!({"esm": true, "same": true, "copy": false}));

    // A module that throws at import: the version fails with the message.
    let rec = deploy_files(
        &server,
        json!({"name": "node-broken", "runtime": "node20"}),
        &[(
            "index.js",
            "require('no-such-package');\nexports.handler = () => 1;\n",
        )],
    )
    .await;
    assert_eq!(rec["state"], "failed", "{rec}");
    assert!(
        rec["error"]
            .as_str()
            .unwrap()
            .contains("Cannot find module 'no-such-package'"),
        "{rec}"
    );
    let (s, v) = invoke_json(&server, "node-broken", json!({})).await;
    assert_eq!((s, v["error"].as_str()), (502, Some("init_error")), "{v}");
    assert!(
        v["message"].as_str().unwrap().contains("no-such-package"),
        "{v}"
    );

    // A missing export, a missing file, a syntax error.
    for (name, handler, file, code, says) in [
        (
            "node-noexport",
            "index.handler",
            "index.js",
            "exports.other = () => 1;\n",
            "exports no function \"handler\"",
        ),
        (
            "node-nofile",
            "main.handler",
            "index.js",
            "exports.handler = () => 1;\n",
            "no main.js, main.mjs or main.cjs",
        ),
        (
            "node-syntax",
            "index.handler",
            "index.mjs",
            "export const handler = (=> 1;\n",
            "SyntaxError",
        ),
    ] {
        let rec = deploy_files(
            &server,
            json!({"name": name, "runtime": "node20", "handler": handler}),
            &[(file, code)],
        )
        .await;
        assert_eq!(rec["state"], "failed", "{rec}");
        assert!(
            rec["error"].as_str().unwrap().contains(says),
            "{name}: {rec}"
        );
    }

    // Handler syntax is checked per runtime at deploy.
    let a = server
        .deploy(json!({"name": "node-bad", "runtime": "node20", "handler": "index", "files": {"index.js": ""}}))
        .await;
    assert_eq!(a.status, 400);
    assert_eq!(a.json()["error"], "invalid_spec");
    assert!(
        a.json()["message"]
            .as_str()
            .unwrap()
            .contains("file.export"),
        "{}",
        a.text()
    );
}

#[tokio::test]
async fn node_warmup_repeats_and_the_cli_shows_the_runtime() {
    require!("/usr/bin/node", "/usr/bin/cc");
    let server = Server::start(&[]);
    let rec = deploy_files(
        &server,
        json!({"name": "node-rounds", "runtime": "node20", "warmup": [{"op": "count"}, {"op": "count"}], "warmup_repeat": 3}),
        &[("index.js", NODE_OPS)],
    )
    .await;
    assert_ready(&rec);
    assert_eq!(rec["spec"]["warmup_repeat"], 3);
    let (_, v) = invoke_json(&server, "node-rounds", json!({"op": "count"})).await;
    // Six warm-up invocations on the instance that stayed warm, then this one.
    assert_eq!(v["count"], 7, "{v}");

    // The example, from its folder, through the CLI.
    let folder = examples().join("node-hello").display().to_string();
    let (ok, out, err) = cli(&server, &["deploy", &folder]);
    assert!(ok, "{out}{err}");
    let rec = server.wait_state("node-hello").await;
    assert_ready(&rec);
    let (ok, out, err) = cli(
        &server,
        &["invoke", "node-hello", "--data", r#"{"name": "cli"}"#],
    );
    assert!(ok, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["hello"], "cli");
    assert!(
        v["invocations"].as_u64().unwrap() >= 2,
        "the warm-up counted: {v}"
    );
    assert_eq!(v["restored_copy"], false);
    let (ok, out, _) = cli(&server, &["ls"]);
    assert!(ok);
    let line = out
        .lines()
        .find(|l| l.starts_with("node-hello"))
        .unwrap_or_default();
    assert!(line.contains("node20"), "{out}");
    assert!(out.lines().next().unwrap().contains("RUNTIME"), "{out}");
}

#[tokio::test]
async fn node_catalog_example_builds_at_init_and_answers() {
    require!("/usr/bin/node", "/usr/bin/cc");
    let folder = examples().join("node-catalog").display().to_string();
    let server = Server::start(&["--deploy", &folder]);
    let rec = server.wait_state("node-catalog").await;
    assert_ready(&rec);
    let (s, v) = invoke_json(
        &server,
        "node-catalog",
        json!({"path": "/products/sku-000042"}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["sku"], "sku-000042");
    let (s, v) = invoke_json(
        &server,
        "node-catalog",
        json!({"path": "/categories/7/top", "limit": 3}),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(v.as_array().unwrap().len(), 3);
    let (s, v) = invoke_json(&server, "node-catalog", json!({"path": "/v42/orders/9"})).await;
    assert_eq!(
        (s, v),
        (200, json!({"resource": "orders", "version": 42, "id": "9"}))
    );
    let (s, v) = invoke_json(&server, "node-catalog", json!({"path": "/nowhere"})).await;
    assert_eq!(s, 404);
    println!("node-catalog init: {} ms", v["init_ms"]);
}

// ---- Java --------------------------------------------------------------------

const JAVA_OPS: &str = r#"
package example;

import thaw.Context;

public class Ops {
    static int count;

    public static String handle(String event, Context context) {
        count++;
        if (event.contains("\"count\"")) return "{\"count\": " + count + "}";
        if (event.contains("\"json\"")) return "{\"a\": [1, 2.5, true, null], \"s\": \"h\u00e9\"}";
        if (event.contains("\"text\"")) return "not json {";
        if (event.contains("\"null\"")) return null;
        if (event.contains("\"throw\"")) throw new IllegalStateException("bad state: " + event.length());
        if (event.contains("\"exit\"")) { System.exit(3); }
        if (event.contains("\"log\"")) {
            System.out.println("log line from " + context.invocationId());
            System.err.println("an error line");
            return "logged";
        }
        if (event.contains("\"context\"")) {
            return "{\"fn\": \"" + context.function() + "\", \"version\": \"" + context.version()
                + "\", \"remaining\": " + context.remainingMs() + ", \"copy\": " + thaw.Runtime.isCopy() + "}";
        }
        return event;
    }

    public static String plain(String event) {
        return "plain " + event;
    }
}
"#;

#[tokio::test]
async fn java_compiles_at_deploy_and_maps_answers_and_errors() {
    require!("/usr/bin/java", "/usr/bin/javac");
    let server = Server::start(&[]);
    let rec = deploy_files(
        &server,
        json!({"name": "java-ops", "runtime": "java17", "handler": "example.Ops::handle",
               "warmup": [{"op": "count"}], "warmup_repeat": 5}),
        &[("example/Ops.java", JAVA_OPS)],
    )
    .await;
    assert_ready(&rec);
    // Five warm-up rounds on the instance that stayed warm, then this one.
    let (_, v) = invoke_json(&server, "java-ops", json!({"op": "count"})).await;
    assert_eq!(v["count"], 6, "{v}");

    let a = server.invoke("java-ops", json!({"op": "json"})).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.header("content-type"), "application/json");
    assert_eq!(a.json(), json!({"a": [1, 2.5, true, null], "s": "h\u{e9}"}));
    let a = server.invoke("java-ops", json!({"op": "text"})).await;
    assert_eq!((a.status, a.text().as_str()), (200, "not json {"));
    assert_eq!(a.header("content-type"), "text/plain; charset=utf-8");
    let a = server.invoke("java-ops", json!({"op": "null"})).await;
    assert_eq!(a.json(), Value::Null);
    let a = server
        .invoke_raw("java-ops", b"raw text event".to_vec(), &[])
        .await;
    assert_eq!(a.text(), "raw text event", "the event is the body as text");
    let (_, v) = invoke_json(&server, "java-ops", json!({"op": "context"})).await;
    assert_eq!(v["fn"], "java-ops");
    assert_eq!(v["version"], "1");
    assert_eq!(v["copy"], false);
    assert!(v["remaining"].as_i64().unwrap() > 0, "{v}");

    let (s, v) = invoke_json(&server, "java-ops", json!({"op": "throw"})).await;
    assert_eq!(
        (s, v["error"].as_str()),
        (500, Some("handler_error")),
        "{v}"
    );
    assert_eq!(
        v["message"],
        "java.lang.IllegalStateException: bad state: 14"
    );
    let tb = v["traceback"].as_str().unwrap();
    assert!(tb.contains("at example.Ops.handle(Ops.java:"), "{tb}");
    assert!(
        !tb.contains("thaw.Bootstrap"),
        "runtime frames are cut: {tb}"
    );

    let a = server.invoke("java-ops", json!({"op": "log"})).await;
    assert_eq!(a.text(), "logged");
    let id = a.header("x-thaw-invocation-id");
    let mut lines = Vec::new();
    for _ in 0..100 {
        lines = logs_of(&server, "java-ops", &id).await;
        if lines.len() >= 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(
        lines.contains(&format!("log line from {id}"))
            && lines.contains(&"an error line".to_string()),
        "lines of {id}: {lines:?}"
    );

    let (s, v) = invoke_json(&server, "java-ops", json!({"op": "exit"})).await;
    assert_eq!(
        (s, v["error"].as_str()),
        (502, Some("function_crashed")),
        "{v}"
    );
    let (s, _) = invoke_json(&server, "java-ops", json!({"op": "json"})).await;
    assert_eq!(s, 200, "a fresh instance after the crash");

    // The one-argument form.
    let rec = deploy_files(
        &server,
        json!({"name": "java-plain", "runtime": "java17", "handler": "example.Ops::plain"}),
        &[("example/Ops.java", JAVA_OPS)],
    )
    .await;
    assert_eq!(rec["state"], "ready", "{rec}");
    assert_eq!(
        server.invoke("java-plain", json!(1)).await.text(),
        "plain 1"
    );
}

#[tokio::test]
async fn java_compile_errors_init_errors_and_handler_syntax() {
    require!("/usr/bin/java", "/usr/bin/javac");
    let server = Server::start(&[]);
    // javac's message fails the version.
    let rec = deploy_files(
        &server,
        json!({"name": "java-typo", "runtime": "java17", "handler": "Typo::handle"}),
        &[(
            "Typo.java",
            "public class Typo {\n  public static String handle(String e) { return e }\n}\n",
        )],
    )
    .await;
    assert_eq!(rec["state"], "failed", "{rec}");
    let err = rec["error"].as_str().unwrap();
    assert!(
        err.contains("javac failed") && err.contains("Typo.java:2: error: ';' expected"),
        "{err}"
    );

    // An exception in static init is an init error, at deploy and invoke.
    let rec = deploy_files(
        &server,
        json!({"name": "java-static", "runtime": "java17", "handler": "Boom::handle"}),
        &[(
            "Boom.java",
            "public class Boom {\n  static final int X = Integer.parseInt(\"not a number\");\n  \
             public static String handle(String e) { return e; }\n}\n",
        )],
    )
    .await;
    assert_eq!(rec["state"], "failed", "{rec}");
    assert!(
        rec["error"]
            .as_str()
            .unwrap()
            .contains("java.lang.NumberFormatException"),
        "{rec}"
    );
    let (s, v) = invoke_json(&server, "java-static", json!({})).await;
    assert_eq!((s, v["error"].as_str()), (502, Some("init_error")), "{v}");
    assert!(
        v["message"].as_str().unwrap().contains("not a number"),
        "{v}"
    );

    // A method of the wrong shape, a class that is not there.
    for (name, handler, says) in [
        (
            "java-shape",
            "Shape::handle",
            "has no public static String handle(String)",
        ),
        ("java-noclass", "Missing::handle", "no class Missing"),
    ] {
        let rec = deploy_files(
            &server,
            json!({"name": name, "runtime": "java17", "handler": handler}),
            &[(
                "Shape.java",
                "public class Shape {\n  public static int handle(String e) { return 1; }\n}\n",
            )],
        )
        .await;
        assert_eq!(rec["state"], "failed", "{rec}");
        assert!(
            rec["error"].as_str().unwrap().contains(says),
            "{name}: {rec}"
        );
    }

    // Handler syntax is checked per runtime; java17 has no default handler.
    for spec in [
        json!({"name": "java-bad", "runtime": "java17", "handler": "example.Ops.handle"}),
        json!({"name": "java-bad", "runtime": "java17"}),
    ] {
        let mut spec = spec;
        spec["files"] = json!({"A.java": "class A {}"});
        let a = server.deploy(spec).await;
        assert_eq!(a.status, 400, "{}", a.text());
        assert_eq!(a.json()["error"], "invalid_spec");
        assert!(
            a.json()["message"].as_str().unwrap().contains("handler"),
            "{}",
            a.text()
        );
    }
}

#[tokio::test]
async fn java_folders_with_jars_deploy_through_the_cli() {
    require!("/usr/bin/java", "/usr/bin/javac", "/usr/bin/jar");
    let server = Server::start(&[]);
    // A folder with a library jar (built here) and a source using it.
    let dir = tempfile::tempdir().unwrap();
    let lib_src = dir.path().join("libsrc/util");
    std::fs::create_dir_all(&lib_src).unwrap();
    std::fs::write(
        lib_src.join("Shout.java"),
        "package util;\npublic class Shout { public static String loud(String s) { return s.toUpperCase() + \"!\"; } }\n",
    )
    .unwrap();
    let classes = dir.path().join("libclasses");
    let ok = Command::new("/usr/bin/javac")
        .arg("-d")
        .arg(&classes)
        .arg(lib_src.join("Shout.java"))
        .status()
        .unwrap();
    assert!(ok.success());
    let func = dir.path().join("func");
    std::fs::create_dir_all(func.join("lib")).unwrap();
    let ok = Command::new("/usr/bin/jar")
        .arg("cf")
        .arg(func.join("lib/shout.jar"))
        .arg("-C")
        .arg(&classes)
        .arg(".")
        .status()
        .unwrap();
    assert!(ok.success());
    std::fs::write(
        func.join("thaw.toml"),
        "name = \"java-jar\"\nruntime = \"java17\"\nhandler = \"app.Main::handle\"\n",
    )
    .unwrap();
    std::fs::create_dir_all(func.join("app")).unwrap();
    std::fs::write(
        func.join("app/Main.java"),
        "package app;\npublic class Main { public static String handle(String e) { return util.Shout.loud(e); } }\n",
    )
    .unwrap();
    let (ok, out, err) = cli(&server, &["deploy", &func.display().to_string()]);
    assert!(ok, "{out}{err}");
    let rec = server.wait_state("java-jar").await;
    assert_ready(&rec);
    let (ok, out, err) = cli(&server, &["invoke", "java-jar", "--data", "hey"]);
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "HEY!");

    // The example, from its folder.
    let folder = examples().join("java-hello").display().to_string();
    let (ok, out, err) = cli(&server, &["deploy", &folder]);
    assert!(ok, "{out}{err}");
    let rec = server.wait_state("java-hello").await;
    assert_ready(&rec);
    let (ok, out, err) = cli(
        &server,
        &["invoke", "java-hello", "--data", r#"{"name": "cli"}"#],
    );
    assert!(ok, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["hello"], "cli");
    assert_eq!(
        v["invocations"], 21,
        "twenty warm-up rounds, then this: {v}"
    );
    let (ok, out, _) = cli(&server, &["ls"]);
    assert!(ok);
    let line = out
        .lines()
        .find(|l| l.starts_with("java-hello"))
        .unwrap_or_default();
    assert!(line.contains("java17"), "{out}");
}

#[tokio::test]
async fn java_inventory_example_builds_at_init_and_answers() {
    require!("/usr/bin/java", "/usr/bin/javac");
    let folder = examples().join("java-inventory").display().to_string();
    let server = Server::start(&["--deploy", &folder]);
    let rec = server.wait_state("java-inventory").await;
    assert_ready(&rec);
    let (s, v) = invoke_json(&server, "java-inventory", json!({"sku": "SKU-0000042"})).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["sku"], "SKU-0000042");
    let (_, v) = invoke_json(&server, "java-inventory", json!({"warehouse": 3})).await;
    assert_eq!(v.as_array().unwrap().len(), 3);
    let (_, v) = invoke_json(&server, "java-inventory", json!({"day": "2026-03-01"})).await;
    assert!(v["restocked"].as_u64().unwrap() > 0, "{v}");
    let (_, v) = invoke_json(&server, "java-inventory", json!({})).await;
    println!("java-inventory init: {} ms", v["init_ms"]);
}

// ---- Python ------------------------------------------------------------------

#[tokio::test]
async fn python_ssl_rand_bytes_differ_across_restored_copies() {
    require_root!();
    let server = Server::start(&["--allow-forced-cold"]);
    let main = "import random, ssl\n\
                ssl.RAND_bytes(16)  # OpenSSL's generator is set up before the snapshot\n\
                def handler(event, context):\n    \
                return {'ssl': ssl.RAND_bytes(16).hex(), 'random': random.random()}\n";
    let rec = deploy_files(
        &server,
        json!({"name": "py-ssl", "warmup": [{}]}),
        &[("main.py", main)],
    )
    .await;
    assert_eq!(rec["state"], "ready", "{rec}");
    assert!(
        !rec["snapshot"].is_null(),
        "a Python function is snapshotted: {rec}"
    );
    let mut seen = Vec::new();
    for _ in 0..3 {
        let a = server
            .invoke_raw("py-ssl", b"{}".to_vec(), &[("x-thaw-cold", "restore")])
            .await;
        assert_eq!(a.status, 200, "{}", a.text());
        assert_eq!(a.header("x-thaw-start"), "restore");
        seen.push(a.json());
    }
    for (i, a) in seen.iter().enumerate() {
        for b in &seen[i + 1..] {
            assert_ne!(
                a["ssl"], b["ssl"],
                "ssl.RAND_bytes repeats across copies: {seen:?}"
            );
            assert_ne!(a["random"], b["random"], "{seen:?}");
        }
    }
}

// ---- restarts ------------------------------------------------------------------

#[tokio::test]
async fn node_and_java_versions_boot_after_a_restart_and_a_changed_runtime() {
    require!(
        "/usr/bin/node",
        "/usr/bin/cc",
        "/usr/bin/java",
        "/usr/bin/javac"
    );
    let mut server = Server::start(&[]);
    let rec = deploy_files(
        &server,
        json!({"name": "java-ops", "runtime": "java17", "handler": "example.Ops::handle"}),
        &[("example/Ops.java", JAVA_OPS)],
    )
    .await;
    assert_ready(&rec);
    let rec = deploy_files(
        &server,
        json!({"name": "node-ops", "runtime": "node20"}),
        &[("index.js", NODE_OPS)],
    )
    .await;
    assert_ready(&rec);
    server.stop();
    // As after an upgrade of thaw: the prepared runtimes' files changed, and
    // their built parts are gone.
    let runtime = server.data.join("runtime");
    for folder in ["java", "node"] {
        std::fs::write(runtime.join(folder).join(".prepared"), "an older thaw").unwrap();
    }
    std::fs::remove_dir_all(runtime.join("java/classes")).unwrap();
    std::fs::remove_file(runtime.join("node/reseed.node")).unwrap();
    server.spawn();
    assert!(
        runtime.join("java/classes/thaw/Bootstrap.class").is_file(),
        "the Java shim was compiled again at start"
    );
    assert!(
        runtime.join("node/reseed.node").is_file(),
        "the addon was built again at start"
    );
    let (s, v) = invoke_json(&server, "java-ops", json!({"op": "json"})).await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = invoke_json(&server, "node-ops", json!({"op": "object"})).await;
    assert_eq!(s, 200, "{v}");
    // A runtime never used here is not prepared at start.
    let fresh = Server::start(&[]);
    assert!(!fresh.data.join("runtime/java/classes").exists());
    assert!(!fresh.data.join("runtime/node/reseed.node").exists());
}

#[tokio::test]
async fn a_runtime_the_host_lacks_is_refused_at_deploy() {
    require_root!();
    let server = Server::start(&["--python", "/nonexistent/python3"]);
    let a = server
        .deploy(json!({"name": "no-python", "files": {"main.py": "def handler(e, c): return 1\n"}}))
        .await;
    assert_eq!(a.status, 400, "{}", a.text());
    assert_eq!(a.json()["error"], "invalid_spec");
    assert_eq!(
        a.json()["message"],
        "runtime python3 needs /nonexistent/python3, which this server does not have"
    );
    let a = server
        .deploy(json!({"name": "ruby", "runtime": "ruby3", "files": {"main.rb": ""}}))
        .await;
    assert_eq!(a.status, 400);
    assert!(
        a.json()["message"]
            .as_str()
            .unwrap()
            .contains(r#"must be one of "python3", "node20", "java17""#),
        "{}",
        a.text()
    );
}

// ---- restored copies -------------------------------------------------------------

/// Acceptance 2 of issue 15: after a restart, with no process of the function
/// alive, forced restores answer from the snapshot's state (the warm-up's
/// counter), with a timer or thread still running, and their random values
/// differ across copies.
async fn restored_copies_answer_from_the_snapshot(example: &str, random_keys: &[&str]) {
    let folder = examples().join(example).display().to_string();
    let mut server = Server::start(&["--allow-forced-cold", "--deploy", &folder]);
    let rec = server.wait_state(example).await;
    assert_eq!(rec["state"], "ready", "{rec}");
    assert!(
        !rec["snapshot"].is_null(),
        "{example} was snapshotted: {rec}"
    );
    let warmups = rec["spec"]["warmup"].as_array().unwrap().len() as u64
        * rec["spec"]["warmup_repeat"].as_u64().unwrap();
    server.stop();
    server.spawn();
    let mut copies = Vec::new();
    for _ in 0..3 {
        let a = server
            .invoke_raw(
                example,
                br#"{"name": "copy"}"#.to_vec(),
                &[("x-thaw-cold", "restore")],
            )
            .await;
        assert_eq!(a.status, 200, "{}", a.text());
        assert_eq!(a.header("x-thaw-start"), "restore", "{}", a.text());
        let v = a.json();
        assert_eq!(
            v["invocations"],
            warmups + 1,
            "the warm-up's count, then this: {v}"
        );
        assert_eq!(v["restored_copy"], true, "{v}");
        assert_eq!(v["restores"], 1, "the onRestore hook ran once: {v}");
        copies.push(v);
    }
    // The timer (Node) or thread (Java) keeps ticking in a copy.
    let first = copies[0]["ticks"].as_u64().unwrap();
    let mut later = first;
    for _ in 0..100 {
        let a = server.invoke(example, json!({"name": "again"})).await;
        later = a.json()["ticks"].as_u64().unwrap();
        if later > first + 1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(
        later > first + 1,
        "ticks stayed at {first}: the timer stopped"
    );
    for (i, a) in copies.iter().enumerate() {
        for b in &copies[i + 1..] {
            for k in random_keys {
                assert_ne!(a[k], b[k], "{k} repeats across copies: {copies:?}");
            }
        }
    }
}

#[tokio::test]
async fn node_restored_copies_answer_from_the_snapshot_and_differ() {
    require!("/usr/bin/node", "/usr/bin/cc");
    restored_copies_answer_from_the_snapshot("node-hello", &["random", "random_bytes", "uuid"])
        .await;
}

#[tokio::test]
async fn java_restored_copies_answer_from_the_snapshot_and_differ() {
    require!("/usr/bin/java", "/usr/bin/javac");
    restored_copies_answer_from_the_snapshot(
        "java-hello",
        &["random", "thread_local_random", "uuid"],
    )
    .await;
}

/// Wraps examples/node-catalog (a ~100 MB heap built at init, as the
/// memory reducer finds worth reducing) and counts the major GCs the
/// process runs (`perf_hooks` gc entries), from zero again in a copy;
/// `{"collect": true}` runs one.
const NODE_GC_WATCH: &str = r#"
import v8 from 'v8';
import vm from 'vm';
import { PerformanceObserver, constants } from 'perf_hooks';
import thaw from 'thaw';
import { handler as catalog } from './index.mjs';
let major = 0;
new PerformanceObserver((list) => {
  for (const e of list.getEntries()) {
    if (e.detail && e.detail.kind === constants.NODE_PERFORMANCE_GC_MAJOR) major++;
  }
}).observe({ entryTypes: ['gc'] });
thaw.onRestore(() => { major = 0; });
v8.setFlagsFromString('--expose-gc');
const collect = vm.runInNewContext('gc');
v8.setFlagsFromString('--no-expose-gc');
export async function handler(event, context) {
  if (event && event.collect) collect();
  if (event && event.wait) await new Promise((r) => setTimeout(r, event.wait));
  const answer = await catalog(event, context);
  return { major, copy: thaw.isCopy(), answer };
}
"#;

/// A copy restored long after its snapshot finds V8's memory-reducer timer
/// overdue on its first event-loop turn; with the reducer on, that starts a
/// full GC of the whole heap in every copy (marking, and in `mmap` mode
/// copying, every page before the first answer). The runtime starts Node
/// with `--no-memory-reducer`: a copy runs no major GC in its first
/// seconds. The control: a GC the handler forces in a copy is counted.
#[tokio::test]
async fn node_copies_run_no_memory_reducer_gc_after_a_restore() {
    require!("/usr/bin/node", "/usr/bin/cc");
    let server = Server::start(&["--allow-forced-cold"]);
    let catalog = std::fs::read_to_string(examples().join("node-catalog/index.mjs")).unwrap();
    let rec = server
        .deploy_ready(json!({
            "name": "node-gc",
            "runtime": "node20",
            "handler": "watch.handler",
            "files": { "index.mjs": catalog, "watch.mjs": NODE_GC_WATCH },
            "memory_mb": 256,
            "timeout_ms": 30000,
            "warmup": [ { "path": "/products/sku-000042" }, { "path": "/search", "q": "blue" } ],
        }))
        .await;
    assert_eq!(rec["state"], "ready", "{rec}");
    assert!(!rec["snapshot"].is_null(), "node-gc was snapshotted: {rec}");
    // The reducer's watchdog (a reducing GC at the latest 100 s after the
    // last full GC, V8's kWatchdogDelayMs) is overdue in copies made from
    // now on: the one slow step of this test.
    tokio::time::sleep(std::time::Duration::from_secs(105)).await;
    let mut majors = Vec::new();
    for event in [
        br#"{"path": "/products/sku-000007", "wait": 3000}"#.to_vec(),
        br#"{"path": "/products/sku-000007", "collect": true, "wait": 200}"#.to_vec(),
    ] {
        let a = server
            .invoke_raw("node-gc", event, &[("x-thaw-cold", "restore")])
            .await;
        assert_eq!(a.status, 200, "{}", a.text());
        assert_eq!(a.header("x-thaw-start"), "restore", "{}", a.text());
        let v = a.json();
        assert_eq!(v["copy"], true, "{v}");
        assert_eq!(v["answer"]["sku"], "sku-000007", "{v}");
        majors.push(v["major"].as_u64().unwrap());
    }
    assert!(
        majors[1] >= 1,
        "a GC forced in a copy was not counted ({majors:?}): the test cannot tell"
    );
    assert_eq!(majors[0], 0, "a copy ran a major GC after its restore");
}
