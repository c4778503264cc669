//! Spares that follow demand (docs/restore.md, "Spares that follow
//! demand"): a burst of forced cold starts raises the version's spare
//! target, the pool keeps that many spares ready within the node cap, and
//! the target decays back to `spare_sandboxes`; through the real server
//! binary.

mod common;

use std::time::{Duration, Instant};

use common::{function, Server};
use serde_json::{json, Value};

const SLEEPER: &str = r#"
import time

def handler(event, context):
    time.sleep(event.get("sleep", 0))
    return {"ok": True}
"#;

/// Concurrent forced cold starts of a burst.
const BURST: usize = 8;

fn spec() -> Value {
    function(
        "bursty",
        SLEEPER,
        json!({"warmup": [{}], "concurrency": 16, "memory_mb": 128}),
    )
}

/// The value of a metric line that starts with `prefix` (name and labels).
fn metric(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

const TARGET: &str = "thaw_spare_sandboxes_target{function=\"bursty\",version=\"1\"} ";

async fn target(server: &Server) -> f64 {
    let m = server.get("/metrics").await.text();
    metric(&m, TARGET).unwrap_or_else(|| panic!("no {TARGET}in {m}"))
}

async fn spares(server: &Server) -> u64 {
    let v = server.get("/functions/bursty").await.json();
    v["instances"]["spare"].as_u64().unwrap()
}

/// [`BURST`] forced restores at once, each sleeping long enough that all
/// are in flight together.
async fn burst(server: &Server) {
    let body = serde_json::to_vec(&json!({"sleep": 0.5})).unwrap();
    let answers = futures_util::future::join_all(
        (0..BURST)
            .map(|_| server.invoke_raw("bursty", body.clone(), &[("x-thaw-cold", "restore")])),
    )
    .await;
    for a in &answers {
        assert_eq!(a.status, 200, "{}", a.text());
        assert_eq!(a.header("x-thaw-start"), "restore");
    }
}

/// The most spares seen ready within `limit`, polling; stops early once
/// `enough` are.
async fn most_spares(server: &Server, enough: u64, limit: Duration) -> u64 {
    let t0 = Instant::now();
    let mut most = 0;
    while t0.elapsed() < limit {
        most = most.max(spares(server).await);
        if most >= enough {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    most
}

#[tokio::test]
async fn a_burst_raises_the_spare_target_and_it_decays_back() {
    require_root!();
    let server = Server::start(&[
        "--allow-forced-cold",
        "--spare-sandboxes-burst",
        "16",
        "--spare-demand-half-life-s",
        "6",
    ]);
    server.deploy_ready(spec()).await;
    server.wait_spares("bursty", 2).await;
    assert_eq!(target(&server).await, 2.0, "nothing learned yet");

    burst(&server).await;
    // Every cold start of the burst was in flight at once: the peak is
    // BURST, decayed by the time it takes to read it (at most a second
    // here: ×0.89).
    let raised = target(&server).await;
    assert!(
        (BURST as f64 - 2.0..=BURST as f64).contains(&raised),
        "target after a burst of {BURST}: {raised}"
    );
    // The pool makes (and recycles) spares up to it: more than
    // `spare_sandboxes`.
    let most = most_spares(&server, 5, Duration::from_secs(4)).await;
    assert!(most >= 5, "spares ready after the burst: at most {most}");

    // Without another burst the target halves every 6 s, back to 2, and
    // the spares beyond it are trimmed.
    let t0 = Instant::now();
    while target(&server).await > 2.0 {
        assert!(
            t0.elapsed() < Duration::from_secs(40),
            "the target never decayed"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        t0.elapsed() >= Duration::from_secs(3),
        "decayed too soon: {:?}",
        t0.elapsed()
    );
    server.wait_spares("bursty", 2).await;

    // A burst again raises it again.
    burst(&server).await;
    assert!(target(&server).await >= BURST as f64 - 2.0);
}

#[tokio::test]
async fn the_node_cap_bounds_the_spares_a_burst_asks_for() {
    require_root!();
    let server = Server::start(&[
        "--allow-forced-cold",
        "--spare-sandboxes-burst",
        "16",
        "--spare-sandboxes-max",
        "4",
        "--spare-demand-half-life-s",
        "600",
    ]);
    server.deploy_ready(spec()).await;
    server.wait_spares("bursty", 2).await;
    burst(&server).await;
    let raised = target(&server).await;
    assert!(raised > 4.0, "target after a burst of {BURST}: {raised}");
    // Up to the cap, never beyond, however long one waits.
    server.wait_spares("bursty", 4).await;
    let most = most_spares(&server, 5, Duration::from_secs(2)).await;
    assert_eq!(most, 4, "spares beyond spare_sandboxes_max");
    let m = server.get("/metrics").await.text();
    assert_eq!(metric(&m, "thaw_spare_sandboxes "), Some(4.0), "{m}");
}

#[tokio::test]
async fn with_learning_off_a_burst_leaves_spare_sandboxes() {
    require_root!();
    let server = Server::start(&["--allow-forced-cold", "--spare-sandboxes-burst", "0"]);
    server.deploy_ready(spec()).await;
    server.wait_spares("bursty", 2).await;
    burst(&server).await;
    assert_eq!(target(&server).await, 2.0);
    server.wait_spares("bursty", 2).await;
    let most = most_spares(&server, 3, Duration::from_secs(2)).await;
    assert_eq!(most, 2, "spares beyond spare_sandboxes with learning off");
}
