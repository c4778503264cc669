//! Functions bring their own dependencies (issue 17, docs/dependencies.md):
//! a `requirements.txt` or `package.json` installed at deploy in a build
//! sandbox into a cached layer, from a package index this test builds and
//! serves itself on loopback (server/tests/deps/index.py: a pure-Python
//! wheel, a platform-tagged wheel holding a shared library, an npm tarball
//! with its registry document). The installers reach it only through the
//! server's index proxy.
//!
//! Needs root (sandboxes), `/usr/bin/python3` with pip, `/usr/bin/npm` and
//! `/usr/bin/cc`; a missing one skips with the reason, and fails under
//! `THAW_TEST_STRICT=1`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::index::Index;
use common::Server;
use serde_json::{json, Value};

/// Skips (or, under THAW_TEST_STRICT, fails) without root or the tools.
macro_rules! require_tools {
    () => {
        require_root!();
        for p in ["/usr/bin/npm", "/usr/bin/node", "/usr/bin/cc"] {
            if !Path::new(p).exists() {
                skip!("{p} is missing");
            }
        }
        let pip = Command::new("/usr/bin/python3")
            .args(["-m", "pip", "--version"])
            .output();
        if !pip.is_ok_and(|o| o.status.success()) {
            skip!("pip for /usr/bin/python3 is missing (python3-pip)");
        }
    };
}

/// A server installing from `index`, with a layer cache of its own (kept
/// in the returned folder).
fn server_for(index: &Index, extra: &[&str]) -> (Server, tempfile::TempDir) {
    let cache = tempfile::Builder::new()
        .prefix("thaw-layers")
        .tempdir_in("/var/tmp")
        .unwrap();
    let (simple, npm) = (index.simple(), index.npm());
    let cache_arg = cache.path().display().to_string();
    let mut args = vec![
        "--layer-cache",
        &cache_arg,
        "--allow-forced-cold",
        "--package-index",
        &simple,
        "--npm-registry",
        &npm,
    ];
    args.extend_from_slice(extra);
    (Server::start(&args), cache)
}

const PY_HANDLER: &str = r#"
import sys
import thawpure
import thawbin

def handler(event, context=None):
    layer = "/var/task/.thaw/python"
    host = [i for i, p in enumerate(sys.path) if p.endswith(("dist-packages", "site-packages"))]
    return {
        "greet": thawpure.greet(event.get("who", "x")),
        "add": thawbin.add(2, 3),
        "lib": thawbin._lib._name,
        "layer_first": sys.path.index(layer) < min(host),
    }
"#;

const NODE_HANDLER: &str = r#"
const pad = require('thaw-left-pad');
exports.handler = async (event) => ({ padded: pad(event.s || 'ab', 6), from: require.resolve('thaw-left-pad') });
"#;

fn py_spec(name: &str, mode: &str) -> Value {
    json!({
        "name": name,
        "runtime": "python3",
        "handler": "main.handler",
        "memory_mb": 128,
        "timeout_ms": 10000,
        "memory_mode": mode,
        "files": {"main.py": PY_HANDLER, "requirements.txt": "thawpure==1.0\nthawbin\n"},
    })
}

/// The function's log lines.
async fn log_lines(server: &Server, name: &str) -> Vec<String> {
    let v = server.get(&format!("/functions/{name}/logs")).await.json();
    v["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["line"].as_str().unwrap().to_string())
        .collect()
}

/// Polls until `name`'s newest version is in `state`.
async fn wait_for(server: &Server, name: &str, state: &str) {
    let t0 = Instant::now();
    loop {
        let v = server.get(&format!("/functions/{name}")).await.json();
        if v["state"] == state {
            return;
        }
        assert!(
            v["state"] != "ready" && v["state"] != "failed",
            "{name} went {} without {state}: {v}",
            v["state"]
        );
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "{name} never {state}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Invokes `name` restoring a fresh copy; returns the answer.
async fn restored(server: &Server, name: &str, event: Value) -> Value {
    let a = server
        .invoke_raw(
            name,
            serde_json::to_vec(&event).unwrap(),
            &[("x-thaw-cold", "restore")],
        )
        .await;
    assert_eq!(a.status, 200, "{name}: {}", a.text());
    assert_eq!(a.header("x-thaw-start"), "restore", "{name}");
    a.json()
}

fn code_file(server: &Server, name: &str, version: u64, rel: &str) -> PathBuf {
    server
        .data
        .join("functions")
        .join(name)
        .join(format!("v{version}"))
        .join("code")
        .join(rel)
}

fn inode(p: &Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    (m.dev(), m.ino())
}

/// Acceptance 1 and 2 for Python: a pure-Python wheel and a binary wheel
/// from the test's index; `building` while installing; the layer before the
/// host's packages; snapshot and forced restores in both memory modes; a
/// second function and a second version with the same file reuse the layer
/// (same files, no request reaches the index).
#[tokio::test]
async fn python_requirements_install_once_and_restore_in_both_modes() {
    require_tools!();
    let index = Index::start();
    let (server, _cache) = server_for(&index, &[]);

    index.hold();
    let a = server.deploy(py_spec("py-mmap", "mmap")).await;
    assert_eq!(a.status, 201, "{}", a.text());
    wait_for(&server, "py-mmap", "building").await;
    index.release();
    let rec = server.wait_state("py-mmap").await;
    assert_eq!(rec["state"], "ready", "{rec}");
    assert!(rec["error"].is_null(), "{rec}");
    assert!(!rec["snapshot"].is_null(), "a snapshot was taken: {rec}");
    let served = index.requests();
    assert!(
        served
            .iter()
            .any(|r| r.contains("/files/thawbin-1.0-py3-none-linux_x86_64.whl")),
        "{served:?}"
    );
    let logs = log_lines(&server, "py-mmap").await;
    assert!(
        logs.iter()
            .any(|l| l.contains("requirements.txt: installing into layer")),
        "{logs:?}"
    );
    assert!(
        logs.iter()
            .any(|l| l.contains("Successfully installed thawbin-1.0 thawpure-1.0")),
        "pip's output is in the function's logs: {logs:?}"
    );

    let v = restored(&server, "py-mmap", json!({"who": "mmap"})).await;
    assert_eq!(v["greet"], "hello mmap from thawpure");
    assert_eq!(v["add"], 1005, "the shared library answered");
    assert_eq!(v["lib"], "/var/task/.thaw/python/thawbin/libthawbin.so");
    assert_eq!(v["layer_first"], true, "{v}");

    // A second function with the same requirements: the same layer, no
    // installer run (nothing asked of the index), restored with uffd.
    let rec = server.deploy_ready(py_spec("py-uffd", "uffd")).await;
    assert_eq!(rec["state"], "ready", "{rec}");
    assert!(!rec["snapshot"].is_null(), "{rec}");
    assert_eq!(index.requests(), served, "no installer ran");
    let logs = log_lines(&server, "py-uffd").await;
    assert!(
        logs.iter()
            .any(|l| l.contains("requirements.txt: reusing layer")),
        "{logs:?}"
    );
    assert!(
        !logs.iter().any(|l| l.contains("installing into layer")),
        "{logs:?}"
    );
    let so = "thawbin/libthawbin.so";
    assert_eq!(
        inode(&code_file(
            &server,
            "py-mmap",
            1,
            &format!(".thaw/python/{so}")
        )),
        inode(&code_file(
            &server,
            "py-uffd",
            1,
            &format!(".thaw/python/{so}")
        )),
        "both functions map one file"
    );
    let v = restored(&server, "py-uffd", json!({"who": "uffd"})).await;
    assert_eq!(v["greet"], "hello uffd from thawpure");
    assert_eq!(v["add"], 1005);
    assert_eq!(v["layer_first"], true, "{v}");

    // A new version of the first with the same file: reused too.
    let rec = server.deploy_ready(py_spec("py-mmap", "mmap")).await;
    assert_eq!(rec["version"], 2, "{rec}");
    assert_eq!(rec["state"], "ready", "{rec}");
    assert_eq!(index.requests(), served, "no installer ran");
    let v = restored(&server, "py-mmap", json!({"who": "v2"})).await;
    assert_eq!(v["greet"], "hello v2 from thawpure");

    // A function without a dependency file has no layer and no build.
    let rec = server
        .deploy_ready(common::function(
            "plain",
            "def handler(e, c=None):\n    return 1\n",
            json!({}),
        ))
        .await;
    assert_eq!(rec["state"], "ready", "{rec}");
    assert!(!code_file(&server, "plain", 1, ".thaw/python").exists());
    let logs = log_lines(&server, "plain").await;
    assert!(!logs.iter().any(|l| l.starts_with("thaw: ")), "{logs:?}");
}

/// Acceptance 1 and 2 for Node.js: `npm ci --omit=dev` with the lockfile,
/// restored in both modes; the second function reuses the layer.
#[tokio::test]
async fn node_package_json_installs_with_its_lockfile_and_restores() {
    require_tools!();
    let index = Index::start();
    let (server, _cache) = server_for(&index, &[]);
    let package =
        json!({"name": "nodedeps", "version": "1.0.0", "dependencies": {"thaw-left-pad": "1.0.0"}})
            .to_string();
    let lock = index.lockfile();
    let spec = |name: &str, mode: &str| {
        json!({
            "name": name,
            "runtime": "node20",
            "handler": "index.handler",
            "memory_mb": 256,
            "timeout_ms": 10000,
            "memory_mode": mode,
            "files": {"index.js": NODE_HANDLER, "package.json": package, "package-lock.json": lock},
        })
    };
    let rec = server.deploy_ready(spec("node-mmap", "mmap")).await;
    assert_eq!(rec["state"], "ready", "{rec}");
    let logs = log_lines(&server, "node-mmap").await;
    assert!(
        logs.iter()
            .any(|l| l.contains("/usr/bin/npm ci --omit=dev")),
        "{logs:?}"
    );
    let served = index.requests();
    assert!(
        served.iter().any(|r| r.contains("thaw-left-pad-1.0.0.tgz")),
        "{served:?}"
    );
    let check = |v: &Value| {
        assert_eq!(v["padded"], "****ab", "{v}");
        assert_eq!(v["from"], "/var/task/node_modules/thaw-left-pad/index.js");
    };
    if rec["snapshot"].is_null() {
        // While a Node.js process cannot be captured (its version error
        // says why), invocations boot it.
        let err = rec["error"].as_str().unwrap_or("");
        assert!(err.starts_with("snapshot failed"), "{rec}");
        let a = server.invoke("node-mmap", json!({})).await;
        assert_eq!(a.status, 200, "{}", a.text());
        check(&a.json());
    } else {
        check(&restored(&server, "node-mmap", json!({})).await);
    }

    let rec = server.deploy_ready(spec("node-uffd", "uffd")).await;
    assert_eq!(rec["state"], "ready", "{rec}");
    assert_eq!(index.requests(), served, "no installer ran");
    let logs = log_lines(&server, "node-uffd").await;
    assert!(
        logs.iter()
            .any(|l| l.contains("package.json: reusing layer")),
        "{logs:?}"
    );
    if !rec["snapshot"].is_null() {
        check(&restored(&server, "node-uffd", json!({})).await);
    }
    // The runtime's own `thaw` module still resolves beside the layer.
    assert!(code_file(&server, "node-uffd", 1, "node_modules/thaw/index.js").is_file());

    // A package.json without dependencies (an ES module's `"type"`) is no
    // dependency file: no build, no request, no thaw lines in the logs.
    let rec = server
        .deploy_ready(json!({
            "name": "node-esm",
            "runtime": "node20",
            "files": {
                "index.js": "export const handler = async () => ({ esm: true });\n",
                "package.json": "{\"type\": \"module\"}",
            },
        }))
        .await;
    assert_eq!(rec["state"], "ready", "{rec}");
    assert_eq!(index.requests(), served);
    let logs = log_lines(&server, "node-esm").await;
    assert!(!logs.iter().any(|l| l.starts_with("thaw: ")), "{logs:?}");
    let a = server.invoke("node-esm", json!({})).await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.json()["esm"], true);
}

/// Acceptance 2, failures: a requirement no index has fails the version
/// with pip's message, a package the registry lacks with npm's; an index
/// that is not configured is refused by the proxy and never reached.
#[tokio::test]
async fn missing_packages_fail_with_the_installers_message_and_other_hosts_are_refused() {
    require_tools!();
    let index = Index::start();
    let other = Index::start();
    let (server, cache) = server_for(&index, &[]);

    let rec = server
        .deploy_ready(json!({
            "name": "py-missing",
            "runtime": "python3",
            "files": {
                "main.py": "def handler(e, c=None):\n    return 1\n",
                "requirements.txt": format!("--extra-index-url {}\nthawpure\nthaw-no-such-package\n", other.simple()),
            },
        }))
        .await;
    assert_eq!(rec["state"], "failed", "{rec}");
    let err = rec["error"].as_str().unwrap();
    assert!(
        err.starts_with("installing requirements.txt failed"),
        "{err}"
    );
    assert!(
        err.contains("No matching distribution found for thaw-no-such-package"),
        "pip's message: {err}"
    );
    assert!(
        other.requests().is_empty(),
        "an index that is not configured was reached: {:?}",
        other.requests()
    );
    let logs = log_lines(&server, "py-missing").await;
    assert!(
        logs.iter()
            .any(|l| l.contains("No matching distribution found")),
        "{logs:?}"
    );

    let rec = server
        .deploy_ready(json!({
            "name": "node-missing",
            "runtime": "node20",
            "files": {
                "index.js": "exports.handler = async () => 1;\n",
                "package.json": json!({"name": "x", "version": "1.0.0", "dependencies": {"thaw-no-such-package": "^1.0.0"}}).to_string(),
            },
        }))
        .await;
    assert_eq!(rec["state"], "failed", "{rec}");
    let err = rec["error"].as_str().unwrap();
    assert!(err.starts_with("installing package.json failed"), "{err}");
    assert!(err.contains("404"), "npm's message: {err}");
    assert!(err.contains("thaw-no-such-package"), "npm's message: {err}");
    // A failed build leaves no layer behind.
    let layers: Vec<_> = std::fs::read_dir(cache.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(layers.is_empty(), "{layers:?}");
}

/// Sets the modification time of `dir` two days back (past the server's
/// grace period for unused layers, `LAYER_GRACE`).
fn age_two_days(dir: &Path) {
    let f = std::fs::File::open(dir).unwrap();
    f.set_modified(std::time::SystemTime::now() - Duration::from_secs(2 * 24 * 3600))
        .unwrap();
}

/// The layers of a cache (finished ones, not temporary folders).
fn layers(cache: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(cache)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    names.sort();
    names
}

/// A layer no version links to and older than the grace period is removed
/// when the server starts and after a function is deleted; a layer a
/// version links to, or a recent one, is kept.
#[tokio::test]
async fn unused_layers_are_removed_at_startup_and_after_a_delete() {
    require_tools!();
    let index = Index::start();
    let cache = tempfile::Builder::new()
        .prefix("thaw-layers")
        .tempdir_in("/var/tmp")
        .unwrap();
    for (name, old) in [("0old", true), ("1recent", false)] {
        let dir = cache.path().join(name);
        std::fs::create_dir_all(dir.join("pkg")).unwrap();
        std::fs::write(dir.join("pkg/__init__.py"), "x = 1\n").unwrap();
        if old {
            age_two_days(&dir);
        }
    }
    let cache_arg = cache.path().display().to_string();
    let simple = index.simple();
    let server = Server::start(&["--layer-cache", &cache_arg, "--package-index", &simple]);
    assert_eq!(layers(cache.path()), vec!["1recent"], "removed at startup");

    // Two functions share one layer; deleting one keeps it (the other
    // links it), deleting both removes it (once past the grace period).
    const MAIN: &str = "import thawpure\ndef handler(e, c=None):\n    return thawpure.greet('x')\n";
    let spec = |name: &str| {
        common::function(
            name,
            MAIN,
            json!({"files": {"main.py": MAIN, "requirements.txt": "thawpure==1.0\n"}}),
        )
    };
    for name in ["gc-a", "gc-b"] {
        let rec = server.deploy_ready(spec(name)).await;
        assert_eq!(rec["state"], "ready", "{rec}");
    }
    let all = layers(cache.path());
    assert_eq!(all.len(), 2, "{all:?}");
    let key = all.iter().find(|n| *n != "1recent").unwrap().clone();
    let layer = cache.path().join(&key);
    age_two_days(&layer);
    let delete = |name: &'static str| {
        let server = &server;
        async move {
            let a = server
                .request(
                    reqwest::Method::DELETE,
                    &format!("/functions/{name}"),
                    None,
                    &[],
                )
                .await;
            assert!(a.status == 200 || a.status == 204, "{}", a.text());
        }
    };
    delete("gc-a").await;
    assert!(layer.is_dir(), "gc-b still links {key}");
    delete("gc-b").await;
    assert!(!layer.exists(), "{key} outlived its last version");
    assert_eq!(layers(cache.path()), vec!["1recent"]);
}
