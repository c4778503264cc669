//! Cold starts of one function by every start kind, interleaved round after
//! round like [`crate::compare`], but keeping every latency (for the plots)
//! and the server's own handler times (for the first invocation after a
//! start).
//!
//! An arm that the server cannot run yet (a restore answered `409`, a
//! restore mode it does not know) is probed once before the rounds and
//! reported as not available with the server's reason; it is not an error.

use hdrhistogram::Histogram;
use hyper::Method;

use crate::client::Client;
use crate::compare::{bootstrap_ratio_ci, median};
use crate::progress::Progress;
use crate::run::{run, RunConfig};
use crate::stats::{histogram, Percentiles, Stats};
use crate::target::{ColdStart, Target, COLD_HEADER};

use super::api::Api;

/// Bootstrap resamples of the ratio intervals.
const RESAMPLES: usize = 10_000;
/// Bootstrap seed.
const SEED: u64 = 1;

/// What an arm runs.
// A suite holds a handful of these: their size does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum ArmKind {
    /// Invocations through HTTP.
    Http {
        /// Where (with its forced cold start, if any).
        target: Target,
        /// How many per round.
        config: RunConfig,
    },
    /// A helper printing one latency (µs) per line, run once per round.
    Exec {
        /// Program and arguments.
        argv: Vec<String>,
    },
}

/// One start kind of one function.
#[derive(Debug)]
pub struct Arm {
    /// Short name (`warm`, `boot`, `restore-mmap`, ...).
    pub name: String,
    /// What it runs.
    pub kind: ArmKind,
    /// Why it cannot run, if it cannot (not an error).
    pub unavailable: Option<String>,
    /// Why it failed, if it did (an error of the suite).
    pub error: Option<String>,
    /// One sample per round: that round's median, µs.
    pub samples: Vec<f64>,
    /// Every successful latency, µs.
    pub latency: Histogram<u64>,
    /// The server's handler time (`x-thaw-duration-us`) of the answers.
    pub handler: Histogram<u64>,
    /// The server's start time (`x-thaw-start-us`) of the answers.
    pub start: Histogram<u64>,
    /// Latency of the restores that found a pre-made sandbox ready
    /// (`x-thaw-spare: hit`).
    pub spare_hit: Histogram<u64>,
    /// Latency of the restores that had to make one (`x-thaw-spare: miss`).
    pub spare_miss: Histogram<u64>,
    /// Requests sent and failed (HTTP only).
    pub requests: u64,
    /// Requests that failed.
    pub failed: u64,
}

impl Arm {
    /// An arm that will run `kind`.
    pub fn new(name: &str, kind: ArmKind) -> Arm {
        Arm {
            name: name.to_owned(),
            kind,
            unavailable: None,
            error: None,
            samples: Vec::new(),
            latency: histogram(),
            handler: histogram(),
            start: histogram(),
            spare_hit: histogram(),
            spare_miss: histogram(),
            requests: 0,
            failed: 0,
        }
    }

    /// An arm that cannot run, for `why`.
    pub fn not_available(name: &str, kind: ArmKind, why: String) -> Arm {
        let mut arm = Arm::new(name, kind);
        arm.unavailable = Some(why);
        arm
    }

    /// True if it ran every round.
    pub fn measured(&self) -> bool {
        self.unavailable.is_none() && self.error.is_none() && !self.samples.is_empty()
    }

    /// Median of the round medians, µs.
    pub fn median(&self) -> Option<f64> {
        self.measured().then(|| median(&self.samples))
    }

    /// Percentiles of every latency together.
    pub fn pooled(&self) -> Option<Percentiles> {
        Percentiles::of(&self.latency)
    }

    /// Ratio of the medians of `self` over `base` and its paired bootstrap
    /// interval (95%), when both were measured over the same rounds.
    pub fn ratio_to(&self, base: &Arm) -> Option<(f64, [f64; 2])> {
        if !(self.measured() && base.measured()) || self.samples.len() != base.samples.len() {
            return None;
        }
        let ratio = median(&self.samples) / median(&base.samples);
        let ci = bootstrap_ratio_ci(&self.samples, &base.samples, RESAMPLES, SEED, 0.95);
        Some((ratio, ci))
    }
}

/// Sends one forced-cold request and says whether that start kind is
/// available: `Ok(None)` if it answered 2xx, `Ok(Some(reason))` if the
/// server answered 409 (the documented "not yet"), `Err` otherwise.
pub async fn probe(
    api: &Api,
    function: &str,
    cold: ColdStart,
    body: &str,
) -> Result<Option<String>, String> {
    let body: serde_json::Value = serde_json::from_str(body).map_err(|e| e.to_string())?;
    let answer = api
        .send(
            Method::POST,
            &format!("/functions/{function}/invoke"),
            Some(&body),
            &[(COLD_HEADER, cold.as_str())],
        )
        .await
        .map_err(|e| e.to_string())?;
    match answer.status {
        200..=299 => Ok(None),
        409 => Ok(Some(answer.error_text())),
        status => Err(format!(
            "probe of {} with x-thaw-cold: {}: status {status}: {}",
            function,
            cold.as_str(),
            answer.error_text()
        )),
    }
}

/// Runs the available arms interleaved for `rounds` rounds. An arm that
/// fails stops (its error is kept); the others go on. `on_round` hears of
/// each finished round of each arm.
pub async fn run_rounds(
    client: &Client,
    arms: &mut [Arm],
    rounds: usize,
    mut on_round: impl FnMut(usize, &Arm),
) {
    for round in 1..=rounds {
        for arm in arms.iter_mut() {
            if arm.unavailable.is_some() || arm.error.is_some() {
                continue;
            }
            match run_one(client, arm, round).await {
                Ok(sample) => arm.samples.push(sample),
                Err(why) => arm.error = Some(format!("round {round}: {why}")),
            }
            on_round(round, arm);
        }
    }
}

async fn run_one(client: &Client, arm: &mut Arm, round: usize) -> Result<f64, String> {
    match &arm.kind {
        ArmKind::Http { target, config } => {
            let stats = run(client, target, config, &Progress::new())
                .await
                .map_err(|e| e.to_string())?;
            absorb(arm, &stats)
        }
        ArmKind::Exec { argv } => {
            let values = run_exec(argv, round).await?;
            for v in &values {
                arm.latency.saturating_record(v.round() as u64);
            }
            Ok(median(&values))
        }
    }
}

/// Adds a round's stats to the arm and returns the round's median.
fn absorb(arm: &mut Arm, stats: &Stats) -> Result<f64, String> {
    arm.requests += stats.requests();
    arm.failed += stats.failed();
    let _ = arm.latency.add(stats.ok_latency());
    let _ = arm.handler.add(stats.server_duration());
    let _ = arm.start.add(stats.server_start());
    if let Some(h) = stats.by_spare().get("hit") {
        let _ = arm.spare_hit.add(h);
    }
    if let Some(h) = stats.by_spare().get("miss") {
        let _ = arm.spare_miss.add(h);
    }
    let Some(p) = Percentiles::of(stats.ok_latency()) else {
        let summary = stats.summary();
        let mut detail: Vec<String> = summary
            .errors
            .iter()
            .map(|(kind, n)| format!("{kind} ×{n}"))
            .collect();
        detail.extend(summary.first_error_detail);
        return Err(format!("no request succeeded ({})", detail.join("; ")));
    };
    if stats.failed() > 0 {
        return Err(format!(
            "{} of {} requests failed: {:?}",
            stats.failed(),
            stats.requests(),
            stats.errors()
        ));
    }
    Ok(p.p50 as f64)
}

/// Runs a helper and reads the latencies (µs) it printed, one per line.
pub async fn run_exec(argv: &[String], round: usize) -> Result<Vec<f64>, String> {
    let (program, args) = argv.split_first().ok_or("empty command")?;
    let output = tokio::process::Command::new(program)
        .args(args)
        .env("THAW_LOADTEST_ROUND", round.to_string())
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .output()
        .await
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    if !output.status.success() {
        let err = String::from_utf8_lossy(&output.stderr);
        let tail: Vec<&str> = err.lines().rev().take(5).collect();
        return Err(format!(
            "{program} failed ({}): {}",
            output.status,
            tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
        ));
    }
    crate::compare::parse_latencies(&program.to_string(), &output.stdout)
}
