//! Comparisons: the bootstrap, and interleaved runs against a real server
//! and a real helper process.

mod common;

use std::time::Duration;

use loadtest::compare::{bootstrap_ratio_ci, compare, median, CompareConfig, CompareError};
use loadtest::scenario::{build_all, ScenarioSpec};
use loadtest::Client;

/// Per-round medians of a fast and a slow scenario, noisy but paired: round
/// 3 was slow for both.
const FAST: [f64; 7] = [310.0, 295.0, 420.0, 301.0, 288.0, 330.0, 305.0];
const SLOW: [f64; 7] = [1250.0, 1190.0, 1600.0, 1230.0, 1180.0, 1320.0, 1215.0];

#[test]
fn bootstrap_is_reproducible_and_seed_dependent() {
    let a = bootstrap_ratio_ci(&SLOW, &FAST, 5_000, 42, 0.95);
    let b = bootstrap_ratio_ci(&SLOW, &FAST, 5_000, 42, 0.95);
    assert_eq!(a, b, "same seed, same interval, bit for bit");
    // Pinned: SplitMix64 is fixed by definition, so this holds everywhere.
    // (1215/305 and 1230/301: ratios of per-round medians.)
    assert_eq!(a, [1215.0 / 305.0, 1230.0 / 301.0]);
    // The median of a resample is one of the samples, so with few rounds
    // neighbouring seeds may well land on the same interval; across many
    // rounds and seeds they must not all agree.
    let mut rng = loadtest::compare::SplitMix64::new(5);
    let mut noisy = |base: f64| -> Vec<f64> {
        (0..41)
            .map(|_| base * (1.0 + (rng.next_u64() % 1000) as f64 / 2000.0))
            .collect()
    };
    let (num, den) = (noisy(1000.0), noisy(250.0));
    let intervals: Vec<[f64; 2]> = (0..8)
        .map(|seed| bootstrap_ratio_ci(&num, &den, 1_000, seed, 0.95))
        .collect();
    assert!(intervals.windows(2).any(|w| w[0] != w[1]), "{intervals:?}");
}

#[test]
fn bootstrap_interval_contains_the_point_ratio() {
    let point = median(&SLOW) / median(&FAST);
    for seed in 0..20 {
        let [lo, hi] = bootstrap_ratio_ci(&SLOW, &FAST, 2_000, seed, 0.95);
        assert!(lo <= point && point <= hi, "seed {seed}: {lo} {point} {hi}");
        assert!(lo < hi);
        // The interval stays within the per-round ratios' range.
        assert!(lo >= 1190.0 / 420.0 && hi <= 1600.0 / 288.0, "{lo} {hi}");
    }
    let [lo90, hi90] = bootstrap_ratio_ci(&SLOW, &FAST, 2_000, 1, 0.90);
    let [lo99, hi99] = bootstrap_ratio_ci(&SLOW, &FAST, 2_000, 1, 0.99);
    assert!(
        lo99 <= lo90 && hi90 <= hi99,
        "wider confidence, wider interval"
    );
}

#[test]
fn identical_samples_give_a_point_interval() {
    let [lo, hi] = bootstrap_ratio_ci(&FAST, &FAST, 1_000, 7, 0.95);
    assert_eq!((lo, hi), (1.0, 1.0));
}

fn specs(args: &[&str]) -> Vec<ScenarioSpec> {
    args.iter()
        .map(|a| ScenarioSpec::parse_arg(a).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenarios_run_interleaved_and_are_compared() {
    let srv = common::start().await;
    let defaults = ScenarioSpec {
        server: Some(srv.url.clone()),
        requests: Some(5),
        ..ScenarioSpec::default()
    };
    let scenarios = build_all(
        &specs(&[
            "fast=function=ok",
            "slow=function=sleep-20,cold=restore",
            "helper=exec=sh -c echo${IFS}100;echo${IFS}300;echo${IFS}200",
        ]),
        &defaults,
        None,
    )
    .unwrap();
    let cfg = CompareConfig {
        rounds: 3,
        baseline: Some("fast".into()),
        resamples: 1_000,
        seed: 9,
        confidence: 0.95,
    };
    let mut order = Vec::new();
    let report = compare(
        &Client::new(Duration::from_secs(30)),
        &scenarios,
        &cfg,
        |d| order.push((d.round, d.scenario.to_owned())),
    )
    .await
    .unwrap();
    let want: Vec<(usize, String)> = (1..=3)
        .flat_map(|r| ["fast", "slow", "helper"].map(|s| (r, s.to_owned())))
        .collect();
    assert_eq!(order, want, "A, B, C, A, B, C, ...");
    assert_eq!(srv.seen.count("ok"), 15);
    assert_eq!(srv.seen.count("sleep-20"), 15);
    assert!(srv
        .seen
        .requests
        .lock()
        .unwrap()
        .iter()
        .any(|r| r.0.as_deref() == Some("restore")));

    assert_eq!(report.baseline, "fast");
    let [fast, slow, helper] = &report.scenarios[..] else {
        panic!("three scenarios");
    };
    assert_eq!(fast.ratio, 1.0);
    assert_eq!(fast.ratio_ci, None);
    assert_eq!(fast.requests, 15);
    assert_eq!(fast.rounds_us.len(), 3);
    // A 20 ms sleep is a floor under every slow sample.
    assert!(slow.rounds_us.iter().all(|&v| v >= 20_000.0), "{slow:?}");
    assert_eq!(slow.ratio, slow.median_us / fast.median_us);
    let [lo, hi] = slow.ratio_ci.unwrap();
    assert!(lo <= slow.ratio && slow.ratio <= hi);
    // The helper printed 100, 300, 200 each round.
    assert_eq!(helper.rounds_us, vec![200.0; 3]);
    assert_eq!(helper.median_us, 200.0);
    assert_eq!(helper.pooled_us.unwrap().count, 9);
    assert_eq!(helper.requests, 0);

    // Same samples, same seed: the analysis is reproducible from the JSON.
    let json = serde_json::to_string(&report).unwrap();
    let back: loadtest::compare::CompareReport = serde_json::from_str(&json).unwrap();
    let again = bootstrap_ratio_ci(
        &back.scenarios[1].rounds_us,
        &back.scenarios[0].rounds_us,
        1_000,
        9,
        0.95,
    );
    assert_eq!(Some(again), slow.ratio_ci);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_name_the_scenario_and_round() {
    let srv = common::start().await;
    let defaults = ScenarioSpec {
        server: Some(srv.url.clone()),
        requests: Some(2),
        ..ScenarioSpec::default()
    };
    let client = Client::new(Duration::from_secs(30));
    let cfg = CompareConfig {
        rounds: 2,
        ..CompareConfig::default()
    };
    let run = |args: &'static [&'static str]| {
        let scenarios = build_all(&specs(args), &defaults, None).unwrap();
        let (client, cfg) = (client.clone(), cfg.clone());
        async move {
            compare(&client, &scenarios, &cfg, |_| {})
                .await
                .unwrap_err()
        }
    };
    let err = run(&["a=function=ok", "b=exec=false"]).await;
    assert!(matches!(err, CompareError::Exec { round: 1, .. }), "{err}");
    assert_eq!(
        err.to_string(),
        "scenario \"b\", round 1: \"false\" failed: exit status: 1"
    );
    let err = run(&["a=function=ok", "b=exec=echo not-a-number"]).await;
    assert_eq!(
        err.to_string(),
        "scenario \"b\", round 1: \"echo\" printed \"not-a-number\", not a latency in µs"
    );
    let err = run(&["a=function=ok"]).await;
    assert_eq!(
        err.to_string(),
        "a comparison needs at least two scenarios, got 1"
    );

    let refused = ScenarioSpec {
        server: Some("http://127.0.0.1:1".into()),
        ..defaults.clone()
    };
    let scenarios = build_all(&specs(&["a=function=ok", "b=function=ok"]), &refused, None).unwrap();
    let err = compare(&client, &scenarios, &cfg, |_| {})
        .await
        .unwrap_err();
    assert!(
        err.to_string().starts_with(
            "scenario \"a\", round 1: no request succeeded (transport ×2; cannot connect to 127.0.0.1:1: "
        ),
        "{err}"
    );
    let failing = build_all(
        &specs(&["a=function=ok", "b=function=nope"]),
        &defaults,
        None,
    )
    .unwrap();
    let err = compare(&client, &failing, &cfg, |_| {}).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "scenario \"b\", round 1: no request succeeded (not_found ×2)"
    );
    let bad_base = CompareConfig {
        baseline: Some("zzz".into()),
        ..cfg.clone()
    };
    let err = compare(&client, &scenarios, &bad_base, |_| {})
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "baseline \"zzz\" is not one of the scenarios"
    );
}
