//! The dashboard end to end: a real headless Chromium, driven through
//! chromedriver (WebDriver) by fantoccini, against a real `thaw serve` that
//! requires a token.
//!
//! It signs in, deploys a function through the Deploy page and waits for
//! `ready` (and one with a `requirements.txt`, from the test's own package
//! index, whose steps include `building`), invokes it from the Function page and reads the answer and the
//! handler's log line, sees the invocation counted on the Overview, verifies
//! the store from the Store page, watches a broken deploy fail with its
//! reason, then deploys 200 more functions through the API and checks that
//! the Overview lists every one with the API's state and counts. It ends by
//! signing out. Every page's
//! resources must come from the server itself. Screenshots of the four pages
//! go to `docs/screenshots/`.
//!
//! Needs root (sandboxes), `/usr/bin/chromium` and `/usr/bin/chromedriver`
//! (Debian: `apt-get install chromium chromium-driver`); skips otherwise.

mod common;

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::index::Index;
use common::{function, Server};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};

const ADMIN: &str = "dashboard-admin-token-0123456789";
const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// How many functions the Overview must list.
const MANY: usize = 200;
/// Longest wait for anything the page should show; a guard against hangs,
/// not a measurement.
const PATIENCE: Duration = Duration::from_secs(90);

/// A chromedriver process on a free loopback port; killed on drop.
struct Driver {
    child: Child,
    url: String,
    _profile: tempfile::TempDir,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // A test that panics never closes its session, and chromedriver
        // killed leaves its browser behind: end the processes that use our
        // own profile directory (and only those).
        let marker = format!("--user-data-dir={}", self._profile.path().display());
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            if cmdline
                .split(|b| *b == 0)
                .any(|arg| arg == marker.as_bytes())
            {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn start_browser() -> (Driver, Client) {
    let port = free_port();
    let child = Command::new(CHROMEDRIVER)
        .arg(format!("--port={port}"))
        .arg("--allowed-ips=127.0.0.1")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromedriver");
    let profile = tempfile::Builder::new()
        .prefix("thaw-chromium")
        .tempdir()
        .unwrap();
    let driver = Driver {
        child,
        url: format!("http://127.0.0.1:{port}"),
        _profile: profile,
    };
    let t0 = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(t0.elapsed() < PATIENCE, "chromedriver never listened");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let args = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--window-size=1440,1400",
        &format!("--user-data-dir={}", driver._profile.path().display()),
    ];
    let caps = json!({
        "browserName": "chrome",
        "goog:chromeOptions": { "binary": CHROMIUM, "args": args },
    });
    let caps = match caps {
        Value::Object(m) => m,
        _ => unreachable!(),
    };
    let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&driver.url)
        .await
        .expect("WebDriver session with chromium");
    (driver, client)
}

/// Polls `script` (returning a value) until `done` accepts it.
async fn wait_for(c: &Client, what: &str, script: &str, done: impl Fn(&Value) -> bool) -> Value {
    let t0 = Instant::now();
    loop {
        let v = c.execute(script, vec![]).await.unwrap_or(Value::Null);
        if done(&v) {
            return v;
        }
        if t0.elapsed() > PATIENCE {
            let shown = c
                .execute(
                    "return document.getElementById('error').textContent + ' | ' + document.getElementById('main').innerText.slice(0, 2000)",
                    vec![],
                )
                .await
                .unwrap_or(Value::Null);
            panic!("waited in vain for {what}; last value {v}; page shows: {shown}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn text_of(c: &Client, css: &str) -> String {
    c.find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("no {css}: {e}"))
        .text()
        .await
        .unwrap()
}

/// Acceptance 4: every resource the page loaded came from the server. Also:
/// the page shows no error.
async fn assert_only_local(c: &Client, page: &str) {
    let error = c
        .execute(
            "const e = document.getElementById('error'); return e.hidden ? null : e.textContent",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(error, Value::Null, "{page} shows an error");
    let urls = c
        .execute(
            "return [location.href, ...performance.getEntriesByType('resource').map(e => e.name)]",
            vec![],
        )
        .await
        .unwrap();
    let urls = urls.as_array().unwrap();
    assert!(urls.len() > 1, "{page}: no resources recorded");
    for u in urls {
        let u = u.as_str().unwrap();
        let host = u
            .split_once("://")
            .map(|(_, rest)| rest.split(['/', '?', '#']).next().unwrap_or(""))
            .unwrap_or("");
        let host = host.rsplit_once(':').map_or(host, |(h, _)| h);
        assert!(
            matches!(host, "127.0.0.1" | "localhost" | "[::1]"),
            "{page}: the page fetched {u} from outside the server"
        );
    }
}

async fn screenshot(c: &Client, name: &str) {
    let dir: PathBuf = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    // Let the charts draw the last event.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let png = c.screenshot().await.expect("screenshot");
    let path = dir.join(format!("{name}.png"));
    std::fs::write(&path, png).unwrap();
    eprintln!("screenshot: {}", path.display());
}

async fn goto(c: &Client, server: &Server, hash: &str) {
    c.goto(&format!("{}/{hash}", server.url)).await.unwrap();
}

async fn set_value(c: &Client, css: &str, value: &str) {
    let e = c.find(Locator::Css(css)).await.unwrap();
    e.clear().await.unwrap();
    e.send_keys(value).await.unwrap();
}

/// Follows the Deploy page's status until `ready` or `failed`, checks that
/// it ended `ready` and that the states it showed came in the order of
/// `order` (some may be skipped between two polls); returns them.
async fn watch_deploy(c: &Client, order: &[&str]) -> Vec<String> {
    let mut seen: Vec<String> = Vec::new();
    let t0 = Instant::now();
    loop {
        let s = c
            .execute(
                "return document.getElementById('deploy-status').dataset.state || ''",
                vec![],
            )
            .await
            .unwrap();
        let s = s.as_str().unwrap_or("").to_string();
        if !s.is_empty() && seen.last() != Some(&s) {
            seen.push(s.clone());
        }
        if s == "ready" || s == "failed" {
            break;
        }
        assert!(t0.elapsed() < PATIENCE, "deploy never finished: {seen:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!("deploy page showed: {}", seen.join(" → "));
    assert_eq!(seen.last().map(String::as_str), Some("ready"), "{seen:?}");
    let ranks: Vec<usize> = seen
        .iter()
        .map(|s| {
            order
                .iter()
                .position(|o| o == s)
                .unwrap_or_else(|| panic!("unexpected state {s:?} in {seen:?}"))
        })
        .collect();
    assert!(
        ranks.windows(2).all(|w| w[0] < w[1]),
        "states out of order: {seen:?}"
    );
    seen
}

/// The Deploy page's steps as `step:class`.
async fn deploy_steps(c: &Client) -> Value {
    c.execute(
        "return [...document.querySelectorAll('#deploy-steps li')].map(l => l.dataset.step + ':' + l.className)",
        vec![],
    )
    .await
    .unwrap()
}

async fn api_get(server: &Server, path: &str) -> Value {
    let bearer = format!("Bearer {ADMIN}");
    let a = server
        .request(
            reqwest::Method::GET,
            path,
            None,
            &[("authorization", &bearer)],
        )
        .await;
    assert_eq!(a.status, 200, "GET {path}: {}", a.text());
    a.json()
}

/// What the Overview table shows, by function name.
const TABLE_SCRIPT: &str =
    "return [...document.querySelectorAll('#functions tbody tr[data-name]')].map(r => [
    r.dataset.name,
    r.querySelector('.state-cell').dataset.state,
    r.children[2].textContent.trim(),
    r.querySelector('.idle').textContent.trim(),
    r.querySelector('.busy').textContent.trim(),
    r.querySelector('.booting').textContent.trim(),
    r.querySelector('.invocations').textContent.trim()])";

fn table_of(v: &Value) -> BTreeMap<String, Vec<String>> {
    v.as_array()
        .map(|rows| {
            rows.iter()
                .map(|r| {
                    let cells: Vec<String> = r
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|c| c.as_str().unwrap_or("").to_string())
                        .collect();
                    (cells[0].clone(), cells[1..].to_vec())
                })
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_end_to_end() {
    require_root!();
    for tool in [CHROMIUM, CHROMEDRIVER] {
        if !Path::new(tool).exists() {
            skip!("{tool} is missing (apt-get install chromium chromium-driver)");
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, format!("admin:{ADMIN}\n")).unwrap();
    // The test's own package index for the function with a dependency file,
    // and a layer cache of this server's own (the index's port is in the
    // layer's key, so a shared cache would only collect them).
    let index = Index::start();
    let layers = dir.path().join("layers");
    let server = Server::start(&[
        "--token-file",
        tokens.to_str().unwrap(),
        "--package-index",
        &index.simple(),
        "--layer-cache",
        layers.to_str().unwrap(),
    ]);
    let (_driver, c) = start_browser().await;
    let started = Instant::now();

    // Without the token the page shows nothing but the prompt, and the API
    // refuses the browser's requests.
    goto(&c, &server, "#/overview").await;
    c.wait()
        .for_element(Locator::Css("#login[open]"))
        .await
        .unwrap();
    let shown = text_of(&c, "#main").await;
    assert!(shown.contains("Sign in"), "{shown}");
    let refused = c
        .execute_async(
            "const done = arguments[0]; fetch('/functions').then(r => done(r.status))",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(refused, json!(401));
    // A wrong token is refused with a message.
    set_value(&c, "#login-token", "not-the-token-0123456789").await;
    c.find(Locator::Css("#login-submit"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_for(
        &c,
        "the refusal",
        "return document.getElementById('login-error').textContent",
        |v| v.as_str().is_some_and(|s| s.contains("401")),
    )
    .await;
    set_value(&c, "#login-token", ADMIN).await;
    c.find(Locator::Css("#login-submit"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_for(
        &c,
        "the overview after signing in",
        "return document.getElementById('count-functions') && document.getElementById('count-functions').textContent",
        |v| v == "0",
    )
    .await;
    // The session cookie is HttpOnly: the page's script cannot read it.
    let cookies = c.execute("return document.cookie", vec![]).await.unwrap();
    assert_eq!(cookies, json!(""));
    assert_only_local(&c, "overview").await;

    // Deploy through the Deploy page and watch the states.
    goto(&c, &server, "#/deploy").await;
    c.wait()
        .for_element(Locator::Css("#deploy-form"))
        .await
        .unwrap();
    set_value(&c, "#deploy-name", "hello-web").await;
    c.find(Locator::Css("#deploy-submit"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    watch_deploy(&c, &["deploying", "warming", "snapshotting", "ready"]).await;
    // No dependency file: no `building` step.
    assert_eq!(
        deploy_steps(&c).await,
        json!([
            "deploying:done",
            "warming:done",
            "snapshotting:done",
            "ready:done"
        ])
    );
    screenshot(&c, "deploy").await;
    assert_only_local(&c, "deploy").await;

    // Invoke it from its Function page.
    c.find(Locator::Css("#deploy-open"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_for(
        &c,
        "the function page",
        "const e = document.getElementById('fn-state'); return e && e.dataset.state",
        |v| v == "ready",
    )
    .await;
    set_value(&c, "#invoke-body", r#"{"name": "chromium"}"#).await;
    c.find(Locator::Css("#invoke-submit"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let answer = wait_for(
        &c,
        "the answer",
        "const r = document.getElementById('invoke-result'); return r.hidden ? '' : document.getElementById('invoke-answer').textContent",
        |v| v.as_str().is_some_and(|s| !s.is_empty()),
    )
    .await;
    let answer: Value = serde_json::from_str(answer.as_str().unwrap()).unwrap();
    assert_eq!(answer, json!({"hello": "chromium"}));
    assert!(text_of(&c, "#invoke-status").await.starts_with("200"));
    let start = text_of(&c, "#invoke-start").await;
    assert!(
        matches!(start.as_str(), "warm" | "restore" | "boot"),
        "{start}"
    );
    let headers = text_of(&c, "#invoke-headers").await;
    assert!(headers.contains("x-thaw-invocation-id"), "{headers}");
    // The invocation reaches the function's own counts on the live stream.
    wait_for(
        &c,
        "the invocation in the function's counts",
        "return document.querySelector('#invocations tbody').textContent",
        |v| v.as_str().is_some_and(|s| s.contains("ok")),
    )
    .await;
    // The handler's print arrives in the live log.
    wait_for(
        &c,
        "the handler's output in the live log",
        "return document.getElementById('logs').textContent",
        |v| v.as_str().is_some_and(|s| s.contains("greeting chromium")),
    )
    .await;
    screenshot(&c, "function").await;
    assert_only_local(&c, "function").await;

    // The Overview counts it.
    goto(&c, &server, "#/overview").await;
    wait_for(
        &c,
        "hello-web's invocation on the overview",
        "const r = document.querySelector('#functions tr[data-name=\"hello-web\"] .invocations'); return r && r.textContent",
        |v| v == "1",
    )
    .await;
    wait_for(
        &c,
        "the invocation total",
        "return document.getElementById('count-invocations').textContent",
        |v| v == "1",
    )
    .await;
    assert_only_local(&c, "overview").await;

    // The Store page: snapshots with their sharing, verify.
    goto(&c, &server, "#/store").await;
    wait_for(
        &c,
        "the snapshot table",
        "return document.querySelectorAll('#store-table tbody tr td a').length",
        |v| v.as_u64() == Some(1),
    )
    .await;
    c.find(Locator::Css("#store-verify"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let report = wait_for(
        &c,
        "the verify report",
        "const r = document.getElementById('store-result'); return r.dataset.done === 'verify' ? r.textContent : ''",
        |v| v.as_str().is_some_and(|s| !s.is_empty()),
    )
    .await;
    let report: Value = serde_json::from_str(report.as_str().unwrap()).unwrap();
    assert_eq!(report["ok"], json!(true), "{report}");
    wait_for(
        &c,
        "store statistics",
        "return document.getElementById('store-objects').textContent",
        |v| v.as_str().is_some_and(|s| s.parse::<u64>().is_ok()),
    )
    .await;
    assert_only_local(&c, "store").await;

    // A deploy that fails shows the failure and its reason.
    goto(&c, &server, "#/deploy").await;
    c.wait()
        .for_element(Locator::Css("#deploy-form"))
        .await
        .unwrap();
    set_value(&c, "#deploy-name", "broken-web").await;
    set_value(&c, "#deploy-code", "import no_such_module\n").await;
    c.find(Locator::Css("#deploy-submit"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_for(
        &c,
        "the failed deploy",
        "return document.getElementById('deploy-status').dataset.state || ''",
        |v| v == "failed",
    )
    .await;
    let reason = text_of(&c, "#deploy-failure").await;
    assert!(reason.contains("no_such_module"), "{reason}");
    let failed = c
        .execute(
            "return document.querySelectorAll('#deploy-steps li.failed').length",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(failed, json!(1));
    assert_only_local(&c, "deploy (failed)").await;

    // With a requirements.txt the version is `building` while pip installs
    // it (from the test's own index), and the page shows that step. (Away
    // and back, so the page starts afresh instead of showing the failure.)
    goto(&c, &server, "#/overview").await;
    goto(&c, &server, "#/deploy").await;
    wait_for(
        &c,
        "a fresh deploy page",
        "const e = document.getElementById('deploy-status'); return e ? (e.dataset.state || 'fresh') : ''",
        |v| v == "fresh",
    )
    .await;
    set_value(&c, "#deploy-name", "deps-web").await;
    let files = json!({"files": {
        "main.py": "import thawpure\ndef handler(event, context):\n    return {'greet': thawpure.greet('web')}\n",
        "requirements.txt": "thawpure==1.0\n",
    }});
    set_value(&c, "#deploy-extra", &files.to_string()).await;
    c.find(Locator::Css("#deploy-submit"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let seen = watch_deploy(
        &c,
        &["deploying", "building", "warming", "snapshotting", "ready"],
    )
    .await;
    assert_eq!(
        deploy_steps(&c).await,
        json!([
            "deploying:done",
            "building:done",
            "warming:done",
            "snapshotting:done",
            "ready:done"
        ]),
        "{seen:?}"
    );
    let bearer = format!("Bearer {ADMIN}");
    let greet = server
        .invoke_raw("deps-web", b"{}".to_vec(), &[("authorization", &bearer)])
        .await;
    assert_eq!(greet.status, 200, "{}", greet.text());
    assert_eq!(greet.json()["greet"], "hello web from thawpure");

    // 200 more functions through the API, a few at a time.
    let t_many = Instant::now();
    let names: Vec<String> = (0..MANY).map(|i| format!("fn-{i:03}")).collect();
    for chunk in names.chunks(8) {
        let deploys = chunk.iter().map(|name| {
            let spec = function(
                name,
                "def handler(event, context):\n    return {'ok': True}\n",
                json!({"memory_mb": 32, "keep_alive_s": 0, "min_instances": 0}),
            );
            let bearer = bearer.clone();
            let server = &server;
            async move {
                let a = server
                    .request(
                        reqwest::Method::POST,
                        "/functions",
                        Some(serde_json::to_vec(&spec).unwrap()),
                        &[
                            ("content-type", "application/json"),
                            ("authorization", &bearer),
                        ],
                    )
                    .await;
                assert_eq!(a.status, 201, "deploy {}: {}", spec["name"], a.text());
            }
        });
        futures_util::future::join_all(deploys).await;
    }
    // Wait until the API says none is still deploying.
    let t0 = Instant::now();
    let api = loop {
        let list = api_get(&server, "/functions").await;
        let busy = list["functions"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|f| {
                matches!(
                    f["state"].as_str(),
                    Some("deploying" | "warming" | "snapshotting")
                )
            })
            .count();
        if busy == 0 {
            break list;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(300),
            "{busy} functions never left deploying"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    eprintln!(
        "{MANY} functions deployed and settled in {:.1} s",
        t_many.elapsed().as_secs_f64()
    );
    let states: Vec<&str> = api["functions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["state"].as_str().unwrap())
        .collect();
    assert_eq!(states.len(), MANY + 3);
    assert_eq!(states.iter().filter(|s| **s == "failed").count(), 1);
    assert!(
        states.iter().filter(|s| **s == "ready").count() == MANY + 2,
        "not all ready: {:?}",
        api["functions"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|f| f["state"] != "ready" && f["name"] != "broken-web")
            .map(|f| (&f["name"], &f["error"]))
            .collect::<Vec<_>>()
    );

    // Some traffic for the Overview's charts while it is open: warm starts
    // of hello-web, restores of functions whose instances are gone.
    goto(&c, &server, "#/overview").await;
    for round in 0..4 {
        for i in 0..5 {
            let a = server
                .invoke_raw("hello-web", b"{}".to_vec(), &[("authorization", &bearer)])
                .await;
            assert_eq!(a.status, 200, "{}", a.text());
            let a = server
                .invoke_raw(
                    &names[round * 5 + i],
                    b"{}".to_vec(),
                    &[("authorization", &bearer)],
                )
                .await;
            assert_eq!(a.status, 200, "{}", a.text());
        }
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }

    // The Overview lists all of them, with the API's state and counts.
    let mut rounds = 0;
    let t0 = Instant::now();
    loop {
        rounds += 1;
        let shown = table_of(&c.execute(TABLE_SCRIPT, vec![]).await.unwrap());
        let list = api_get(&server, "/functions").await;
        let metrics = server
            .request(
                reqwest::Method::GET,
                "/metrics",
                None,
                &[("authorization", &bearer)],
            )
            .await
            .text();
        let mut invocations: BTreeMap<String, u64> = BTreeMap::new();
        for line in metrics
            .lines()
            .filter(|l| l.starts_with("thaw_invocations_total{"))
        {
            let f = line.split("function=\"").nth(1).unwrap().split('"').next();
            let n: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
            *invocations.entry(f.unwrap().to_string()).or_default() += n as u64;
        }
        let expected: BTreeMap<String, Vec<String>> = list["functions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| {
                let name = f["name"].as_str().unwrap().to_string();
                let i = &f["instances"];
                let cells = vec![
                    f["state"].as_str().unwrap().to_string(),
                    f["version"].to_string(),
                    i["idle"].to_string(),
                    i["busy"].to_string(),
                    i["booting"].to_string(),
                    invocations.get(&name).copied().unwrap_or(0).to_string(),
                ];
                (name, cells)
            })
            .collect();
        let cards = c
            .execute(
                "return ['functions','ready','failed','deploying'].map(k => document.getElementById('count-' + k).textContent)",
                vec![],
            )
            .await
            .unwrap();
        if shown == expected
            && cards == json!([(MANY + 3).to_string(), (MANY + 2).to_string(), "1", "0"])
        {
            eprintln!(
                "overview matched the API on {} functions after {rounds} comparisons",
                shown.len()
            );
            break;
        }
        if t0.elapsed() > PATIENCE {
            let differ: Vec<_> = expected
                .iter()
                .filter(|(k, v)| shown.get(*k) != Some(v))
                .take(5)
                .map(|(k, v)| (k, v, shown.get(k)))
                .collect();
            panic!(
                "the overview shows {} rows, the API {}; cards {cards}; first differences (api, page): {differ:?}",
                shown.len(),
                expected.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    screenshot(&c, "overview").await;
    assert_only_local(&c, "overview with many functions").await;

    // The Store page again, with every snapshot and the pages they share.
    goto(&c, &server, "#/store").await;
    wait_for(
        &c,
        "every snapshot in the store table",
        "return document.querySelectorAll('#store-table tbody tr td a').length",
        |v| v.as_u64() == Some(MANY as u64 + 2),
    )
    .await;
    c.find(Locator::Css("#store-verify"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let report = wait_for(
        &c,
        "the verify report",
        "const r = document.getElementById('store-result'); return r.dataset.done === 'verify' ? r.textContent : ''",
        |v| v.as_str().is_some_and(|s| !s.is_empty()),
    )
    .await;
    let report: Value = serde_json::from_str(report.as_str().unwrap()).unwrap();
    assert_eq!(report["ok"], json!(true), "{report}");
    assert_eq!(report["snapshots_checked"], json!(MANY + 2), "{report}");
    screenshot(&c, "store").await;

    // Signing out: the prompt returns and the API refuses the browser.
    c.find(Locator::Css("#signout"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    c.wait()
        .for_element(Locator::Css("#login[open]"))
        .await
        .unwrap();
    let refused = c
        .execute_async(
            "const done = arguments[0]; fetch('/functions').then(r => done(r.status))",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(refused, json!(401));
    eprintln!(
        "dashboard test took {:.1} s",
        started.elapsed().as_secs_f64()
    );
    c.close().await.unwrap();
}

/// The dashboard's routes without a browser: public assets, the session
/// exchange and its cookie, roles, the live stream, sign-out.
#[tokio::test]
async fn sessions_assets_and_live_stream() {
    require_root!();
    const INVOKER: &str = "dashboard-invoke-token-0123456789";
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, format!("admin:{ADMIN}\ninvoke:{INVOKER}\n")).unwrap();
    let server = Server::start(&["--token-file", tokens.to_str().unwrap()]);
    let get = |path: &str, cookie: Option<String>| {
        let path = path.to_string();
        let server = &server;
        async move {
            let cookie = cookie.map(|c| format!("thaw_session={c}"));
            let headers: Vec<(&str, &str)> =
                cookie.iter().map(|c| ("cookie", c.as_str())).collect();
            server
                .request(reqwest::Method::GET, &path, None, &headers)
                .await
        }
    };

    // The page and its assets are public; data is not.
    let page = get("/", None).await;
    assert_eq!(page.status, 200);
    assert!(page.header("content-type").starts_with("text/html"));
    assert!(page
        .header("content-security-policy")
        .contains("default-src 'self'"));
    assert!(page.text().contains("/ui/app.js"));
    assert_eq!(get("/ui/", None).await.status, 200);
    let js = get("/ui/pages/overview.js", None).await;
    assert_eq!(js.status, 200);
    assert!(js.header("content-type").starts_with("text/javascript"));
    assert_eq!(get("/ui/vendor/uplot/uPlot.esm.js", None).await.status, 200);
    assert_eq!(get("/ui/nope.js", None).await.status, 404);
    assert_eq!(get("/ui/../Cargo.toml", None).await.status, 404);
    assert_eq!(get("/functions", None).await.status, 401);
    assert_eq!(get("/events", None).await.status, 401);
    let status = get("/session", None).await.json();
    assert_eq!(
        status,
        json!({"auth_required": true, "signed_in": false, "role": null})
    );

    // Exchanging tokens.
    let post_session = |token: &str| {
        let body = serde_json::to_vec(&json!({ "token": token })).unwrap();
        let server = &server;
        async move {
            server
                .request(reqwest::Method::POST, "/session", Some(body), &[])
                .await
        }
    };
    let wrong = post_session("not-a-token-0123456789").await;
    assert_eq!(wrong.status, 401, "{}", wrong.text());
    assert!(wrong.header("set-cookie").is_empty());
    let cookie_of = |a: &common::Answer| {
        let c = a.header("set-cookie");
        assert!(c.contains("HttpOnly"), "{c}");
        assert!(c.contains("SameSite=Strict"), "{c}");
        assert!(c.contains("Path=/"), "{c}");
        c.strip_prefix("thaw_session=")
            .unwrap()
            .split(';')
            .next()
            .unwrap()
            .to_string()
    };
    let admin = post_session(ADMIN).await;
    assert_eq!(admin.status, 200);
    assert_eq!(admin.json()["role"], "admin");
    let admin = cookie_of(&admin);
    assert_eq!(admin.len(), 64);
    let invoker = post_session(INVOKER).await;
    assert_eq!(invoker.json()["role"], "invoke");
    let invoker = cookie_of(&invoker);
    assert_ne!(admin, invoker);
    let status = get("/session", Some(admin.clone())).await.json();
    assert_eq!(status["signed_in"], true);
    assert_eq!(get("/functions", Some(admin.clone())).await.status, 200);
    assert_eq!(get("/functions", Some("0".repeat(64))).await.status, 401);

    // The cookie carries the role: an invoke session cannot deploy or gc.
    let spec = serde_json::to_vec(&function(
        "live",
        "def handler(event, context):\n    return 1\n",
        json!({}),
    ))
    .unwrap();
    let with = |c: &str| format!("thaw_session={c}");
    let a = server
        .request(
            reqwest::Method::POST,
            "/functions",
            Some(spec.clone()),
            &[
                ("cookie", &with(&invoker)),
                ("content-type", "application/json"),
            ],
        )
        .await;
    assert_eq!(a.status, 403, "{}", a.text());
    let a = server
        .request(
            reqwest::Method::POST,
            "/store/gc",
            None,
            &[("cookie", &with(&invoker))],
        )
        .await;
    assert_eq!(a.status, 403, "{}", a.text());
    let a = server
        .request(
            reqwest::Method::POST,
            "/functions",
            Some(spec),
            &[
                ("cookie", &with(&admin)),
                ("content-type", "application/json"),
            ],
        )
        .await;
    assert_eq!(a.status, 201, "{}", a.text());

    // The live stream: an overview naming the function, and the function's
    // own record until it is ready.
    let resp = server
        .http
        .get(format!("{}/events?function=live", server.url))
        .header("cookie", with(&invoker))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let mut resp = resp;
    let mut buf = String::new();
    let (mut overview, mut ready) = (None::<Value>, false);
    let t0 = Instant::now();
    while overview.is_none() || !ready {
        assert!(t0.elapsed() < PATIENCE, "stream so far: {buf}");
        let chunk = resp.chunk().await.unwrap().expect("stream ended");
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buf.find("\n\n") {
            let event: String = buf.drain(..end + 2).collect();
            let kind = event.lines().find_map(|l| l.strip_prefix("event: "));
            let data: String = event
                .lines()
                .filter_map(|l| l.strip_prefix("data: "))
                .collect();
            match kind {
                Some("overview") => overview = Some(serde_json::from_str(&data).unwrap()),
                Some("function") => {
                    let f: Value = serde_json::from_str(&data).unwrap();
                    assert_eq!(f["name"], "live");
                    ready |= f["view"]["state"] == "ready";
                }
                _ => {}
            }
        }
    }
    let o = overview.unwrap();
    assert_eq!(o["functions"][0]["name"], "live");
    assert!(o["memory"]["budget"].as_u64().unwrap() > 0);
    assert!(o["states"].get("ready").is_some());

    // Invoke through the cookie; the next overviews count it.
    let a = server
        .request(
            reqwest::Method::POST,
            "/functions/live/invoke",
            Some(b"{}".to_vec()),
            &[("cookie", &with(&invoker))],
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.text());
    let snapshots = get("/store/snapshots", Some(invoker.clone())).await.json();
    let s = &snapshots["snapshots"][0];
    assert_eq!(s["function"], "live");
    assert_eq!(
        s["unique_pages"].as_u64().unwrap() + s["shared_pages"].as_u64().unwrap(),
        s["distinct_pages"].as_u64().unwrap()
    );

    // Signing out ends the session.
    let out = server
        .request(
            reqwest::Method::DELETE,
            "/session",
            None,
            &[("cookie", &with(&admin))],
        )
        .await;
    assert_eq!(out.status, 204);
    assert!(out.header("set-cookie").contains("Max-Age=0"));
    assert_eq!(get("/functions", Some(admin)).await.status, 401);
    assert_eq!(get("/functions", Some(invoker)).await.status, 200);
}
