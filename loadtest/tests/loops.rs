//! Closed and open loops against a real HTTP server on loopback.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use loadtest::progress::Progress;
use loadtest::stats::NO_START;
use loadtest::{run, Client, ColdStart, Mode, RunConfig, Stats, Stop, Target};

async fn go(target: &Target, mode: Mode, stop: Stop, warmup: Duration) -> Stats {
    let cfg = RunConfig { mode, stop, warmup };
    run(
        &Client::new(Duration::from_secs(30)),
        target,
        &cfg,
        &Progress::new(),
    )
    .await
    .unwrap()
}

const CLOSED4: Mode = Mode::Closed { concurrency: 4 };

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_loop_sends_exactly_the_requests_asked() {
    let srv = common::start().await;
    let target = Target::new(&srv.url, "ok").unwrap();
    let stats = go(&target, CLOSED4, Stop::Requests(200), Duration::ZERO).await;
    assert_eq!(stats.requests(), 200);
    assert_eq!(stats.ok(), 200);
    assert_eq!(srv.seen.count("ok"), 200);
    let s = stats.summary();
    assert_eq!(s.latency_us.unwrap().count, 200);
    assert_eq!(s.by_start["warm"].count, 200);
    assert_eq!(s.server_start_us.unwrap().p50, 5);
    assert_eq!(s.server_duration_us.unwrap().p50, 100);
    assert!(s.throughput_rps > 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_loop_warmup_is_sent_but_not_counted() {
    let srv = common::start().await;
    let target = Target::new(&srv.url, "sleep-2").unwrap();
    let stats = go(
        &target,
        Mode::Closed { concurrency: 2 },
        Stop::Requests(30),
        Duration::from_millis(200),
    )
    .await;
    assert_eq!(stats.requests(), 30);
    // At 2 ms a request, 2 clients send dozens during the 200 ms warm-up.
    assert!(
        srv.seen.count("sleep-2") > 30 + 10,
        "{}",
        srv.seen.count("sleep-2")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_loop_by_duration_stops() {
    let srv = common::start().await;
    let target = Target::new(&srv.url, "sleep-5").unwrap();
    let stats = go(
        &target,
        Mode::Closed { concurrency: 2 },
        Stop::Duration(Duration::from_millis(300)),
        Duration::ZERO,
    )
    .await;
    // Each request takes at least 5 ms: at most 2 × 300 / 5 (+2 in flight).
    assert!(
        stats.requests() >= 2 && stats.requests() <= 122,
        "{}",
        stats.requests()
    );
    assert_eq!(srv.seen.count("sleep-5"), stats.requests());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_loop_follows_the_schedule() {
    let srv = common::start().await;
    let target = Target::new(&srv.url, "ok").unwrap();
    let mode = Mode::Open {
        rate: 100.0,
        max_in_flight: 16,
    };
    // 0.2 s warm-up at 100/s = 20 requests, then 50 measured.
    let stats = go(
        &target,
        mode,
        Stop::Requests(50),
        Duration::from_millis(200),
    )
    .await;
    assert_eq!(stats.requests(), 50);
    assert_eq!(srv.seen.count("ok"), 70);
    // The 50 measured requests are intended 10 ms apart: the measurement
    // spans at least 49 intervals.
    assert!(
        stats.elapsed() >= Duration::from_millis(490),
        "{:?}",
        stats.elapsed()
    );
    let s = stats.summary();
    assert!(s.send_rate_rps > 0.0);
    assert_eq!(s.send_lag_us.unwrap().count, 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_loop_by_duration_sends_rate_times_duration() {
    let srv = common::start().await;
    let target = Target::new(&srv.url, "ok").unwrap();
    let mode = Mode::Open {
        rate: 200.0,
        max_in_flight: 16,
    };
    let stats = go(
        &target,
        mode,
        Stop::Duration(Duration::from_millis(500)),
        Duration::ZERO,
    )
    .await;
    assert_eq!(stats.requests(), 100);
    assert_eq!(srv.seen.count("ok"), 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_counted_by_status_and_kind() {
    let srv = common::start().await;
    let target = Target::new(&srv.url, "mixed").unwrap();
    let stats = go(
        &target,
        Mode::Closed { concurrency: 1 },
        Stop::Requests(40),
        Duration::ZERO,
    )
    .await;
    let s = stats.summary();
    assert_eq!((s.requests, s.ok, s.failed), (40, 10, 30));
    assert_eq!(
        s.statuses,
        BTreeMap::from([(429, 10), (500, 10), (502, 10)])
    );
    assert_eq!(
        s.errors,
        BTreeMap::from([
            ("concurrency_limit".to_owned(), 10),
            ("handler_error".to_owned(), 10),
            ("unknown".to_owned(), 10),
        ])
    );
    // Failed answers are still answers: they have latencies, and no
    // x-thaw-start.
    assert_eq!(s.latency_us.unwrap().count, 40);
    assert_eq!(s.by_start["restore"].count, 10);
    assert_eq!(s.by_start[NO_START].count, 30);
    assert_eq!(s.server_start_us.unwrap().count, 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_are_split_by_start_kind() {
    let srv = common::start().await;
    let target = Target::new(&srv.url, "split").unwrap();
    let stats = go(&target, CLOSED4, Stop::Requests(30), Duration::ZERO).await;
    let s = stats.summary();
    assert_eq!(s.by_start["boot"].count, 10);
    assert_eq!(s.by_start["warm"].count, 20);
    let server_start = s.server_start_us.unwrap();
    assert_eq!(server_start.count, 30);
    assert_eq!(server_start.min, 3);
    // 40000 µs, to the histogram's three significant digits.
    assert!(server_start.max.abs_diff(40_000) <= 40, "{server_start:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cold_header_token_and_bodies_are_sent() {
    let srv = common::start().await;
    let target = Target::new(&srv.url, "ok")
        .unwrap()
        .with_cold(Some(ColdStart::Boot))
        .with_token(Some("t0k"))
        .unwrap()
        .with_bodies(vec![
            Bytes::from_static(b"{\"a\":1}"),
            Bytes::from_static(b"[2]"),
        ])
        .unwrap();
    go(
        &target,
        Mode::Closed { concurrency: 1 },
        Stop::Requests(4),
        Duration::ZERO,
    )
    .await;
    let seen = srv.seen.requests.lock().unwrap().clone();
    assert_eq!(seen.len(), 4);
    for (i, (cold, auth, body)) in seen.iter().enumerate() {
        assert_eq!(cold.as_deref(), Some("boot"));
        assert_eq!(auth.as_deref(), Some("Bearer t0k"));
        let want: &[u8] = if i % 2 == 0 { b"{\"a\":1}" } else { b"[2]" };
        assert_eq!(body, want);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_function_is_a_not_found_kind() {
    let srv = common::start().await;
    let target = Target::new(&srv.url, "nope").unwrap();
    let stats = go(&target, CLOSED4, Stop::Requests(8), Duration::ZERO).await;
    assert_eq!(stats.errors().get("not_found"), Some(&8));
    assert_eq!(stats.statuses().get(&404), Some(&8));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_kept_alive_and_reused() {
    let srv = common::start().await;
    let target = Target::new(&srv.url, "ok").unwrap();
    let client = Client::new(Duration::from_secs(30));
    let cfg = RunConfig {
        mode: CLOSED4,
        stop: Stop::Requests(100),
        warmup: Duration::ZERO,
    };
    let stats = run(&client, &target, &cfg, &Progress::new()).await.unwrap();
    assert_eq!(stats.ok(), 100);
    // Four clients never need more than four connections.
    let idle = client.idle_connections(target.addr());
    assert!((1..=4).contains(&idle), "{idle}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_closing_every_connection_costs_no_errors() {
    let srv = common::start().await;
    let target = Target::new(&srv.url, "close").unwrap();
    let stats = go(&target, CLOSED4, Stop::Requests(100), Duration::ZERO).await;
    assert_eq!(stats.errors(), &BTreeMap::new());
    assert_eq!(stats.ok(), 100);
    assert_eq!(srv.seen.count("close"), 100);
}

/// Interrupts `progress` once `n` requests are done (polling, bounded).
async fn interrupt_after(progress: std::sync::Arc<Progress>, n: u64) {
    for _ in 0..3000 {
        if progress.done() >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    progress.interrupt();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_run_returns_what_it_measured() {
    let srv = common::start().await;
    let target = Target::new(&srv.url, "ok").unwrap();
    let client = Client::new(Duration::from_secs(30));
    for mode in [
        CLOSED4,
        Mode::Open {
            rate: 200.0,
            max_in_flight: 8,
        },
    ] {
        let cfg = RunConfig {
            mode,
            stop: Stop::Duration(Duration::from_secs(3600)),
            warmup: Duration::ZERO,
        };
        let progress = Progress::new();
        let stopper = tokio::spawn(interrupt_after(progress.clone(), 20));
        let stats = run(&client, &target, &cfg, &progress).await.unwrap();
        stopper.await.unwrap();
        assert!(stats.requests() >= 20, "{mode:?}: {}", stats.requests());
        assert_eq!(stats.requests(), progress.done(), "{mode:?}");
        assert_eq!(progress.in_flight(), 0);
    }
}
