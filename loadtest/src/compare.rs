//! Comparisons: several scenarios run interleaved, round after round
//! (A, B, C, A, B, C, ...), so that the machine's noise (other tenants,
//! frequency changes, the page cache) hits all of them alike.
//!
//! Each round of a scenario gives one sample: the median latency of that
//! round's successful (2xx) requests (for an `exec` helper, the median of the
//! values it printed). Failed requests are counted, never timed, so a fast
//! error never passes for a fast start; a round without a success stops the
//! comparison. A
//! scenario's figure is the median of its per-round samples, and each
//! scenario is compared with the baseline by the ratio of those medians.
//!
//! The confidence interval of a ratio comes from a paired bootstrap over
//! rounds: draw `n` round indices with replacement, take the median of the
//! scenario's and of the baseline's samples at those rounds (the same rounds
//! for both, which keeps the pairing the interleaving bought), divide, and
//! repeat; the interval is the central `confidence` share of those ratios.
//! The draws come from a SplitMix64 generator seeded by the caller, so the
//! same samples and seed give the same interval on every machine.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::client::Client;
use crate::progress::Progress;
use crate::run::{run, RunError};
use crate::scenario::{Scenario, ScenarioKind};
use crate::stats::{histogram, Percentiles, Stats};

/// Bootstrap resamples when none is given.
pub const DEFAULT_RESAMPLES: usize = 10_000;
/// Bootstrap seed when none is given.
pub const DEFAULT_SEED: u64 = 1;

/// How a comparison runs and is analysed.
#[derive(Debug, Clone, PartialEq)]
pub struct CompareConfig {
    /// Rounds; every scenario runs once per round.
    pub rounds: usize,
    /// The scenario the others are divided by (the first if `None`).
    pub baseline: Option<String>,
    /// Bootstrap resamples.
    pub resamples: usize,
    /// Bootstrap seed.
    pub seed: u64,
    /// Share of the bootstrap distribution inside the interval (0.95).
    pub confidence: f64,
}

impl Default for CompareConfig {
    fn default() -> Self {
        CompareConfig {
            rounds: 5,
            baseline: None,
            resamples: DEFAULT_RESAMPLES,
            seed: DEFAULT_SEED,
            confidence: 0.95,
        }
    }
}

/// Why a comparison failed.
#[derive(Debug, thiserror::Error)]
pub enum CompareError {
    /// At least one round is needed.
    #[error("rounds must be at least 1")]
    Rounds,
    /// A comparison needs two scenarios.
    #[error("a comparison needs at least two scenarios, got {0}")]
    Scenarios(usize),
    /// The baseline is not one of the scenarios.
    #[error("baseline {0:?} is not one of the scenarios")]
    Baseline(String),
    /// Bootstrap parameters out of range.
    #[error("resamples must be at least 1 and confidence strictly between 0 and 1")]
    Bootstrap,
    /// An HTTP scenario could not run.
    #[error("scenario {scenario:?}: {cause}")]
    Run {
        /// The scenario.
        scenario: String,
        /// Why.
        cause: RunError,
    },
    /// No request of a round of an HTTP scenario succeeded.
    #[error("scenario {scenario:?}, round {round}: no request succeeded ({detail})")]
    NoSuccess {
        /// The scenario.
        scenario: String,
        /// The round, from 1.
        round: usize,
        /// The failures by kind, and what went wrong with the first
        /// unanswered request.
        detail: String,
    },
    /// An `exec` helper failed or printed nothing usable.
    #[error("scenario {scenario:?}, round {round}: {why}")]
    Exec {
        /// The scenario.
        scenario: String,
        /// The round, from 1.
        round: usize,
        /// What went wrong.
        why: String,
    },
}

/// One scenario's results.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScenarioResult {
    /// Its name.
    pub name: String,
    /// One sample per round: that round's median, µs.
    pub rounds_us: Vec<f64>,
    /// Median of the per-round samples, µs.
    pub median_us: f64,
    /// `median_us` divided by the baseline's.
    pub ratio: f64,
    /// Bootstrap interval of `ratio` (`None` for the baseline itself).
    pub ratio_ci: Option<[f64; 2]>,
    /// Percentiles of every value of every round together (2xx only).
    pub pooled_us: Option<Percentiles>,
    /// HTTP requests measured over all rounds (0 for `exec`).
    pub requests: u64,
    /// HTTP requests that failed.
    pub failed: u64,
    /// Failed HTTP requests by error kind.
    pub errors: BTreeMap<String, u64>,
}

/// A whole comparison.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompareReport {
    /// Rounds run.
    pub rounds: usize,
    /// The baseline's name.
    pub baseline: String,
    /// Bootstrap resamples.
    pub resamples: usize,
    /// Bootstrap seed.
    pub seed: u64,
    /// Share inside the intervals.
    pub confidence: f64,
    /// The scenarios, in run order.
    pub scenarios: Vec<ScenarioResult>,
}

/// A finished round of one scenario, for progress output.
#[derive(Debug, Clone, Copy)]
pub struct RoundDone<'a> {
    /// The round, from 1.
    pub round: usize,
    /// Rounds in all.
    pub rounds: usize,
    /// The scenario.
    pub scenario: &'a str,
    /// The round's sample (median), µs.
    pub median_us: f64,
}

/// Accumulates one scenario's rounds.
struct Tally {
    samples: Vec<f64>,
    stats: Stats,
    exec_values: hdrhistogram::Histogram<u64>,
}

/// Runs `scenarios` interleaved for `cfg.rounds` rounds and analyses them.
/// `on_round` hears of every finished round.
pub async fn compare(
    client: &Client,
    scenarios: &[Scenario],
    cfg: &CompareConfig,
    mut on_round: impl FnMut(RoundDone<'_>),
) -> Result<CompareReport, CompareError> {
    if cfg.rounds == 0 {
        return Err(CompareError::Rounds);
    }
    if scenarios.len() < 2 {
        return Err(CompareError::Scenarios(scenarios.len()));
    }
    let baseline = baseline_index(scenarios, cfg)?;
    if cfg.resamples == 0 || !(cfg.confidence > 0.0 && cfg.confidence < 1.0) {
        return Err(CompareError::Bootstrap);
    }
    let mut tallies: Vec<Tally> = scenarios
        .iter()
        .map(|_| Tally {
            samples: Vec::with_capacity(cfg.rounds),
            stats: Stats::new(),
            exec_values: histogram(),
        })
        .collect();
    for round in 1..=cfg.rounds {
        for (scenario, tally) in scenarios.iter().zip(&mut tallies) {
            let sample = run_round(client, scenario, round, tally).await?;
            tally.samples.push(sample);
            on_round(RoundDone {
                round,
                rounds: cfg.rounds,
                scenario: &scenario.name,
                median_us: sample,
            });
        }
    }
    let samples: Vec<Vec<f64>> = tallies.iter().map(|t| t.samples.clone()).collect();
    let base_median = median(&samples[baseline]);
    let results = scenarios
        .iter()
        .zip(&tallies)
        .enumerate()
        .map(|(i, (scenario, tally))| {
            let median_us = median(&tally.samples);
            let ratio_ci = (i != baseline).then(|| {
                bootstrap_ratio_ci(
                    &tally.samples,
                    &samples[baseline],
                    cfg.resamples,
                    cfg.seed,
                    cfg.confidence,
                )
            });
            let pooled_us = match scenario.kind {
                ScenarioKind::Http { .. } => Percentiles::of(tally.stats.ok_latency()),
                ScenarioKind::Exec { .. } => Percentiles::of(&tally.exec_values),
            };
            ScenarioResult {
                name: scenario.name.clone(),
                rounds_us: tally.samples.clone(),
                median_us,
                ratio: median_us / base_median,
                ratio_ci,
                pooled_us,
                requests: tally.stats.requests(),
                failed: tally.stats.failed(),
                errors: tally.stats.errors().clone(),
            }
        })
        .collect();
    Ok(CompareReport {
        rounds: cfg.rounds,
        baseline: scenarios[baseline].name.clone(),
        resamples: cfg.resamples,
        seed: cfg.seed,
        confidence: cfg.confidence,
        scenarios: results,
    })
}

fn baseline_index(scenarios: &[Scenario], cfg: &CompareConfig) -> Result<usize, CompareError> {
    match &cfg.baseline {
        None => Ok(0),
        Some(name) => scenarios
            .iter()
            .position(|s| &s.name == name)
            .ok_or_else(|| CompareError::Baseline(name.clone())),
    }
}

/// Runs one round of `scenario` and returns its sample (median µs).
async fn run_round(
    client: &Client,
    scenario: &Scenario,
    round: usize,
    tally: &mut Tally,
) -> Result<f64, CompareError> {
    match &scenario.kind {
        ScenarioKind::Http { target, config } => {
            let stats = run(client, target, config, &Progress::new())
                .await
                .map_err(|cause| CompareError::Run {
                    scenario: scenario.name.clone(),
                    cause,
                })?;
            tally.stats.merge(&stats);
            let Some(p) = Percentiles::of(stats.ok_latency()) else {
                let summary = stats.summary();
                let mut detail: Vec<String> = summary
                    .errors
                    .iter()
                    .map(|(kind, n)| format!("{kind} ×{n}"))
                    .collect();
                detail.extend(summary.first_error_detail);
                return Err(CompareError::NoSuccess {
                    scenario: scenario.name.clone(),
                    round,
                    detail: detail.join("; "),
                });
            };
            Ok(p.p50 as f64)
        }
        ScenarioKind::Exec { argv } => {
            let values = run_exec(argv, round)
                .await
                .map_err(|why| CompareError::Exec {
                    scenario: scenario.name.clone(),
                    round,
                    why,
                })?;
            for v in &values {
                tally.exec_values.saturating_record(v.round() as u64);
            }
            Ok(median(&values))
        }
    }
}

/// Runs an `exec` helper and reads the latencies (µs) it printed.
async fn run_exec(argv: &[String], round: usize) -> Result<Vec<f64>, String> {
    let (program, args) = argv.split_first().ok_or("empty command")?;
    let output = tokio::process::Command::new(program)
        .args(args)
        .env("THAW_LOADTEST_ROUND", round.to_string())
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .output()
        .await
        .map_err(|e| format!("cannot run {program:?}: {e}"))?;
    if !output.status.success() {
        return Err(format!("{program:?} failed: {}", output.status));
    }
    parse_latencies(&format!("{program:?}"), &output.stdout)
}

/// Parses a helper's output: one latency in µs per line (blank lines
/// ignored). `program` names the helper in errors.
pub fn parse_latencies(program: &str, stdout: &[u8]) -> Result<Vec<f64>, String> {
    let text = String::from_utf8_lossy(stdout);
    let mut values = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let v: f64 = line
            .parse()
            .ok()
            .filter(|v: &f64| v.is_finite() && *v >= 0.0)
            .ok_or_else(|| format!("{program} printed {line:?}, not a latency in µs"))?;
        values.push(v);
    }
    if values.is_empty() {
        return Err(format!("{program} printed no latencies"));
    }
    Ok(values)
}

/// The median of `values` (the mean of the middle two for an even count);
/// NaN for none.
pub fn median(values: &[f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    }
}

/// The `confidence` bootstrap interval of `median(num) / median(den)`, with
/// rounds resampled in pairs (see the module docs). `num` and `den` hold one
/// sample per round and must be equally long and not empty.
pub fn bootstrap_ratio_ci(
    num: &[f64],
    den: &[f64],
    resamples: usize,
    seed: u64,
    confidence: f64,
) -> [f64; 2] {
    assert_eq!(num.len(), den.len(), "paired samples");
    assert!(!num.is_empty(), "at least one round");
    let n = num.len();
    let mut rng = SplitMix64::new(seed);
    let mut ratios = Vec::with_capacity(resamples);
    let (mut a, mut b) = (vec![0.0; n], vec![0.0; n]);
    for _ in 0..resamples {
        for k in 0..n {
            let i = rng.below(n);
            a[k] = num[i];
            b[k] = den[i];
        }
        ratios.push(median(&a) / median(&b));
    }
    ratios.sort_by(f64::total_cmp);
    let tail = (1.0 - confidence) / 2.0;
    [quantile(&ratios, tail), quantile(&ratios, 1.0 - tail)]
}

/// Linear interpolation between the order statistics of sorted `v`.
fn quantile(v: &[f64], q: f64) -> f64 {
    let pos = q * (v.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    v[lo] + (v[hi] - v[lo]) * (pos - lo as f64)
}

/// SplitMix64 (Steele, Lea, Flood 2014): a tiny, well-mixed generator whose
/// output is fixed by its definition, so seeded results never change.
#[derive(Debug, Clone)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// A generator starting from `seed`.
    pub fn new(seed: u64) -> Self {
        SplitMix64 { state: seed }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (multiply-shift; the bias is below 2^-50 for the
    /// small `n` used here).
    pub fn below(&mut self, n: usize) -> usize {
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix_matches_its_reference_values() {
        // First outputs for seed 0 of the reference implementation.
        let mut r = SplitMix64::new(0);
        assert_eq!(r.next_u64(), 0xe220_a839_7b1d_cdaf);
        assert_eq!(r.next_u64(), 0x6e78_9e6a_a1b9_65f4);
        let mut r = SplitMix64::new(7);
        assert!((0..1000).all(|_| r.below(5) < 5));
    }

    #[test]
    fn medians() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert!(median(&[]).is_nan());
    }

    #[test]
    fn quantile_interpolates() {
        let v = [0.0, 10.0, 20.0, 30.0, 40.0];
        assert_eq!(quantile(&v, 0.0), 0.0);
        assert_eq!(quantile(&v, 0.5), 20.0);
        assert_eq!(quantile(&v, 0.625), 25.0);
        assert_eq!(quantile(&v, 1.0), 40.0);
    }
}
