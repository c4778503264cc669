//! The `thaw-loadtest` binary, run as a real process against a loopback
//! server.

mod common;

use std::process::Output;

use loadtest::compare::CompareReport;
use loadtest::report::RunReport;

async fn thaw_loadtest(args: Vec<String>) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_thaw-loadtest"))
        .args(args)
        .env_remove("THAW_TOKEN")
        .output()
        .await
        .unwrap()
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_prints_json_with_every_figure() {
    let srv = common::start().await;
    let dir = tempfile::tempdir().unwrap();
    let bodies = dir.path().join("bodies.json");
    std::fs::write(&bodies, r#"[{"n":1},{"n":2},{"n":3}]"#).unwrap();
    let out = thaw_loadtest(args(&[
        "run",
        "--server",
        &srv.url,
        "--function",
        "split",
        "--body-file",
        bodies.to_str().unwrap(),
        "--rate",
        "300",
        "--requests",
        "30",
        "--warmup",
        "100ms",
        "--cold",
        "restore",
        "--token",
        "abc",
        "--json",
        "--quiet",
    ]))
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: RunReport = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report.summary.requests, 30);
    assert_eq!(report.summary.ok, 30);
    assert_eq!(report.cold.as_deref(), Some("restore"));
    assert!(report.summary.by_start.contains_key("warm"));
    assert!(report.summary.server_start_us.is_some());
    // 100 ms of warm-up at 300/s: 30 more requests reached the server.
    assert_eq!(srv.seen.count("split"), 60);
    let seen = srv.seen.requests.lock().unwrap().clone();
    assert!(seen
        .iter()
        .all(|(cold, auth, _)| cold.as_deref() == Some("restore")
            && auth.as_deref() == Some("Bearer abc")));
    // Bodies are cycled in order (request n carries body n % 3), but
    // concurrent requests may reach the server in any order: count them.
    for body in [&br#"{"n":1}"#[..], br#"{"n":2}"#, br#"{"n":3}"#] {
        let n = seen.iter().filter(|(_, _, b)| b.as_slice() == body).count();
        assert_eq!(n, 20, "{}", String::from_utf8_lossy(body));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_prints_a_table_and_progress() {
    let srv = common::start().await;
    let out = thaw_loadtest(args(&[
        "run",
        "--server",
        &srv.url,
        "--function",
        "mixed",
        "--concurrency",
        "2",
        "--duration",
        "1200ms",
    ]))
    .await;
    assert!(out.status.success());
    let table = String::from_utf8(out.stdout).unwrap();
    for want in [
        "closed loop, 2 clients, for 1.2s",
        "latency",
        "start=restore",
        "failed by status: ",
        "failed by kind: concurrency_limit ×",
    ] {
        assert!(table.contains(want), "missing {want:?} in\n{table}");
    }
    let progress = String::from_utf8(out.stderr).unwrap();
    assert!(
        progress.contains(" done ("),
        "no progress line in {progress:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compare_reads_a_file_and_flags() {
    let srv = common::start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cmp.toml");
    std::fs::write(
        &file,
        format!(
            r#"
rounds = 2
[defaults]
server = "{}"
requests = 3
[[scenario]]
name = "warm"
function = "ok"
[[scenario]]
name = "floor"
exec = ["echo", "50"]
"#,
            srv.url
        ),
    )
    .unwrap();
    let out = thaw_loadtest(args(&[
        "compare",
        "--file",
        file.to_str().unwrap(),
        "--scenario",
        "slow=function=sleep-3,requests=2",
        "--rounds",
        "3",
        "--baseline",
        "floor",
        "--json",
    ]))
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: CompareReport = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report.rounds, 3);
    assert_eq!(report.baseline, "floor");
    let names: Vec<_> = report.scenarios.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["warm", "floor", "slow"]);
    assert_eq!(report.scenarios[0].requests, 9);
    assert_eq!(report.scenarios[2].requests, 6);
    assert_eq!(srv.seen.count("sleep-3"), 6);
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("round 3/3: slow"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_arguments_fail_with_a_message() {
    let out = thaw_loadtest(args(&["run", "--function", "a/b"])).await;
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(
        err.trim(),
        "thaw-loadtest: scenario \"run\": bad function name \"a/b\": use letters, digits, '.', '_', '-' or '~'"
    );
    let out = thaw_loadtest(args(&[
        "run",
        "--function",
        "f",
        "--rate",
        "1",
        "--concurrency",
        "2",
    ]))
    .await;
    assert!(!out.status.success());
    let out = thaw_loadtest(args(&["compare", "--scenario", "x"])).await;
    assert_eq!(
        String::from_utf8(out.stderr).unwrap().trim(),
        "thaw-loadtest: bad scenario \"x\": expected NAME=KEY=VALUE,..."
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_ends_a_run_with_its_report() {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let srv = common::start().await;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_thaw-loadtest"))
        .args(args(&[
            "run",
            "--server",
            &srv.url,
            "--function",
            "ok",
            "--rate",
            "100",
            "--duration",
            "1h",
            "--json",
        ]))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for the first progress line: the run is under way.
    let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = Vec::new();
    for _ in 0..10 {
        let Some(line) = stderr.next_line().await.unwrap() else {
            break;
        };
        seen.push(line);
        if seen.last().unwrap().contains(" done (") {
            break;
        }
    }
    assert!(
        seen.last().is_some_and(|l| l.contains(" done (")),
        "no progress line in {seen:?}"
    );
    let pid = nix::unistd::Pid::from_raw(child.id().unwrap() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
    let out = child.wait_with_output().await.unwrap();
    assert!(out.status.success(), "{:?}", out.status);
    let report: RunReport = serde_json::from_slice(&out.stdout).unwrap();
    assert!(report.interrupted);
    assert!(report.summary.requests > 0);
    assert_eq!(report.summary.requests, srv.seen.count("ok"));
}
