//! Coordinated omission: a server that stalls once for 500 ms.
//!
//! The open loop keeps its schedule (200 requests/s) and charges the stall to
//! every request that should have left during it: about 100 requests get
//! latencies spread from 500 ms down to nothing, so its p99 shows the stall.
//! A naive measurement (the same open loop timed from the actual send, or a
//! closed loop) sees one slow request among 600 and a p99 that hides it.
//!
//! The assertions count requests above a threshold of half the stall; the
//! expected counts (about 50 for the open loop, 1 for the naive views) sit
//! far from the bounds, so a noisy machine does not flip them.

mod common;

use std::time::Duration;

use loadtest::progress::Progress;
use loadtest::stats::MAX_MICROS;
use loadtest::{run, Client, Mode, RunConfig, Stats, Stop, Target};

const REQUESTS: u64 = 600;
const RATE: f64 = 200.0;

fn slow(h: &hdrhistogram::Histogram<u64>) -> u64 {
    let half_stall = (common::STALL / 2).as_micros() as u64;
    h.count_between(half_stall, MAX_MICROS)
}

async fn go(target: &Target, mode: Mode) -> Stats {
    let cfg = RunConfig {
        mode,
        stop: Stop::Requests(REQUESTS),
        warmup: Duration::ZERO,
    };
    run(
        &Client::new(Duration::from_secs(30)),
        target,
        &cfg,
        &Progress::new(),
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_loop_p99_shows_a_stall_that_naive_timing_hides() {
    let srv = common::start().await;
    let target = Target::new(&srv.url, "stall").unwrap();
    // One request in flight at a time: while the stalled request is out, the
    // schedule's next requests wait in the generator.
    let stats = go(
        &target,
        Mode::Open {
            rate: RATE,
            max_in_flight: 1,
        },
    )
    .await;
    assert_eq!(stats.requests(), REQUESTS);
    assert_eq!(stats.ok(), REQUESTS);
    let corrected = slow(stats.latency());
    let naive = slow(stats.service());
    eprintln!(
        "open loop: {corrected} requests slower than half the stall from the intended time, \
         {naive} from the actual send; p99 {} µs vs {} µs",
        stats.latency().value_at_quantile(0.99),
        stats.service().value_at_quantile(0.99)
    );
    // About STALL × RATE / 2 = 50 requests waited more than half the stall.
    assert!(corrected >= 20, "corrected: {corrected}");
    assert!(
        stats.latency().value_at_quantile(0.99) >= (common::STALL / 2).as_micros() as u64,
        "p99 must show the stall"
    );
    // Timed from the send, only the stalled request itself is slow.
    assert!((1..=3).contains(&naive), "naive: {naive}");
    assert!(stats.service().value_at_quantile(0.99) < (common::STALL / 2).as_micros() as u64);
    // Both see the stalled request's full length.
    assert!(stats.latency().max() >= common::STALL.as_micros() as u64);
    assert!(stats.service().max() >= common::STALL.as_micros() as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_loop_with_many_in_flight_also_shows_the_stall() {
    let srv = common::start().await;
    let target = Target::new(&srv.url, "stall").unwrap();
    // Requests keep leaving during the stall and queue in the server.
    let stats = go(
        &target,
        Mode::Open {
            rate: RATE,
            max_in_flight: 256,
        },
    )
    .await;
    assert_eq!(stats.ok(), REQUESTS);
    let corrected = slow(stats.latency());
    eprintln!("open loop, 256 in flight: {corrected} slow requests");
    assert!(corrected >= 20, "corrected: {corrected}");
    assert!(stats.latency().value_at_quantile(0.99) >= (common::STALL / 2).as_micros() as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_loop_sees_the_stall_once() {
    let srv = common::start().await;
    let target = Target::new(&srv.url, "stall").unwrap();
    let stats = go(&target, Mode::Closed { concurrency: 1 }).await;
    assert_eq!(stats.ok(), REQUESTS);
    let naive = slow(stats.latency());
    eprintln!(
        "closed loop: {naive} slow requests, p99 {} µs, max {} µs",
        stats.latency().value_at_quantile(0.99),
        stats.latency().max()
    );
    assert!((1..=3).contains(&naive), "closed: {naive}");
    assert!(stats.latency().value_at_quantile(0.99) < (common::STALL / 2).as_micros() as u64);
    assert!(stats.latency().max() >= common::STALL.as_micros() as u64);
}
