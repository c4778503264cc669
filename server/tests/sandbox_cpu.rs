//! `thaw_sandbox_cpu_seconds_total`: the CPU time of every sandbox, kept
//! after a sandbox's cgroup is removed, through the real server binary.

mod common;

use std::time::{Duration, Instant};

use common::{function, Server};
use serde_json::json;

/// Burns about `ms` milliseconds of CPU in the handler (time spent on the
/// CPU by this process, not wall time).
const BURN: &str = r#"
import time

def handler(event, context):
    ms = event.get("ms", 0)
    t0 = time.process_time()
    n = 0
    while time.process_time() - t0 < ms / 1000:
        n += 1
    return {"spins": n}
"#;

fn metric(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

async fn sandbox_cpu(server: &Server) -> f64 {
    let m = server.get("/metrics").await.text();
    metric(&m, "thaw_sandbox_cpu_seconds_total ")
        .unwrap_or_else(|| panic!("no thaw_sandbox_cpu_seconds_total in:\n{m}"))
}

#[tokio::test]
async fn cpu_of_ended_sandboxes_stays_counted() {
    require_root!();
    let server = Server::start(&["--allow-forced-cold"]);
    server
        .deploy_ready(function("burn", BURN, json!({"warmup": [{}]})))
        .await;
    let before = sandbox_cpu(&server).await;
    // Three forced restores, each a copy that burns 150 ms of CPU and is
    // torn down (its cgroup removed) after its answer.
    for _ in 0..3 {
        let a = server
            .invoke_raw(
                "burn",
                br#"{"ms": 150}"#.to_vec(),
                &[("x-thaw-cold", "restore")],
            )
            .await;
        assert_eq!(a.status, 200, "{}", a.text());
        assert_eq!(a.header("x-thaw-start"), "restore");
    }
    // The copies' cgroups go once their answers are sent: wait until only
    // the idle original and the spares are left.
    let t0 = Instant::now();
    loop {
        let v = server.get("/functions/burn").await.json();
        let copies = v["instance_list"]
            .as_array()
            .map_or(0, |l| l.iter().filter(|i| i["start"] == "restore").count());
        if copies == 0 {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "copies stay: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let after = sandbox_cpu(&server).await;
    assert!(
        after - before >= 0.45,
        "3 copies burnt 0.45 s of CPU, the counter grew by {:.3} s ({before} -> {after})",
        after - before
    );
}
