//! Printing results: a table for people, JSON (`--json`) for machines.
//!
//! A run prints like this (all times in µs):
//!
//! ```text
//! POST http://127.0.0.1:7070/functions/hello/invoke
//! open loop at 200 req/s (at most 1024 in flight), 600 requests, warm-up 1s
//! 600 requests (598 ok, 2 failed) in 3.00 s: 199.4 req/s, sent at 200.0 req/s
//!
//!                       count     min     p50     p90     p99   p99.9     max     mean
//! latency                 598     180     240     310     900    1200    1300    251.2
//! service time            598     ...                   (open loop: from the actual send)
//! send lag                598     ...                   (open loop: send − intended)
//! server start            598     ...                   (x-thaw-start-us)
//! server handler          598     ...                   (x-thaw-duration-us)
//! start=warm              590     ...
//! start=restore             8     ...
//!
//! failed by status: 500 ×2
//! failed by kind: handler_error ×2
//! ```
//!
//! A comparison prints one line per scenario with the median of its
//! per-round medians, its ratio to the baseline and the ratio's interval.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::compare::CompareReport;
use crate::run::{Mode, RunConfig, Stop};
use crate::stats::{Percentiles, Summary};
use crate::target::Target;

/// Everything `thaw-loadtest run` reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunReport {
    /// The invoke URL.
    pub url: String,
    /// The function.
    pub function: String,
    /// The forced cold start, if any.
    pub cold: Option<String>,
    /// How the run was paced and ended.
    pub config: RunConfig,
    /// What was measured.
    pub summary: Summary,
    /// Whether the run was stopped early (Ctrl-C).
    #[serde(default)]
    pub interrupted: bool,
}

impl RunReport {
    /// Puts a run's description and results together.
    pub fn new(target: &Target, config: RunConfig, summary: Summary) -> Self {
        RunReport {
            url: target.uri().to_string(),
            function: target.function().to_owned(),
            cold: target.cold().map(|c| c.as_str().to_owned()),
            config,
            summary,
            interrupted: false,
        }
    }

    /// The report as a table.
    pub fn text(&self) -> String {
        let s = &self.summary;
        let mut out = String::new();
        let _ = writeln!(out, "POST {}", self.url);
        let _ = writeln!(out, "{}", describe(&self.config, self.cold.as_deref()));
        if self.interrupted {
            let _ = writeln!(
                out,
                "interrupted: the figures cover the requests sent until then"
            );
        }
        let _ = write!(
            out,
            "{} requests ({} ok, {} failed) in {:.2} s: {:.1} req/s",
            s.requests, s.ok, s.failed, s.elapsed_s, s.throughput_rps
        );
        let open = matches!(self.config.mode, Mode::Open { .. });
        if open {
            let _ = write!(out, ", sent at {:.1} req/s", s.send_rate_rps);
        }
        let _ = writeln!(out);
        if s.latency_us.is_some() {
            let _ = writeln!(
                out,
                "\n{:<18}{:>8}{:>9}{:>9}{:>9}{:>9}{:>9}{:>9}{:>10}",
                "(µs)", "count", "min", "p50", "p90", "p99", "p99.9", "max", "mean"
            );
        }
        let mut row = |label: &str, p: &Option<Percentiles>| {
            if let Some(p) = p {
                let _ = writeln!(out, "{}", percentile_row(label, p));
            }
        };
        row("latency", &s.latency_us);
        if open {
            row("service time", &s.service_us);
            row("send lag", &s.send_lag_us);
        }
        row("server start", &s.server_start_us);
        row("server handler", &s.server_duration_us);
        for (start, p) in &s.by_start {
            row(&format!("start={start}"), &Some(*p));
        }
        for (spare, p) in &s.by_spare {
            row(&format!("spare={spare}"), &Some(*p));
        }
        if !s.statuses.is_empty() {
            let list: Vec<String> = s
                .statuses
                .iter()
                .map(|(k, n)| format!("{k} ×{n}"))
                .collect();
            let _ = writeln!(out, "\nfailed by status: {}", list.join(", "));
        }
        if !s.errors.is_empty() {
            let list: Vec<String> = s.errors.iter().map(|(k, n)| format!("{k} ×{n}")).collect();
            let _ = writeln!(out, "failed by kind: {}", list.join(", "));
        }
        if let Some(detail) = &s.first_error_detail {
            let _ = writeln!(out, "first unanswered request: {detail}");
        }
        out
    }
}

fn percentile_row(label: &str, p: &Percentiles) -> String {
    format!(
        "{:<18}{:>8}{:>9}{:>9}{:>9}{:>9}{:>9}{:>9}{:>10.1}",
        label, p.count, p.min, p.p50, p.p90, p.p99, p.p999, p.max, p.mean
    )
}

/// One line describing how a run is paced and how long it lasts.
pub fn describe(config: &RunConfig, cold: Option<&str>) -> String {
    let mut line = match config.mode {
        Mode::Closed { concurrency } => format!("closed loop, {concurrency} clients"),
        Mode::Open {
            rate,
            max_in_flight,
        } => format!("open loop at {rate} req/s (at most {max_in_flight} in flight)"),
    };
    match config.stop {
        Stop::Duration(d) => {
            let _ = write!(line, ", for {d:?}");
        }
        Stop::Requests(n) => {
            let _ = write!(line, ", {n} requests");
        }
    }
    if !config.warmup.is_zero() {
        let _ = write!(line, ", warm-up {:?}", config.warmup);
    }
    if let Some(cold) = cold {
        let _ = write!(line, ", forced cold start: {cold}");
    }
    line
}

/// A comparison as a table.
pub fn compare_text(report: &CompareReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} rounds interleaved; median of per-round medians; ratio to {:?} with a {:.0}% bootstrap interval ({} resamples, seed {})\n",
        report.rounds,
        report.baseline,
        report.confidence * 100.0,
        report.resamples,
        report.seed
    );
    let _ = writeln!(
        out,
        "{:<20}{:>12}{:>9}{:>20}{:>11}{:>11}{:>9}",
        "scenario", "median µs", "ratio", "interval", "p99 µs", "requests", "failed"
    );
    for s in &report.scenarios {
        let interval = match s.ratio_ci {
            Some([lo, hi]) => format!("[{lo:.3}, {hi:.3}]"),
            None => "baseline".to_owned(),
        };
        let p99 = s.pooled_us.map_or("-".to_owned(), |p| p.p99.to_string());
        let _ = writeln!(
            out,
            "{:<20}{:>12.1}{:>9.3}{:>20}{:>11}{:>11}{:>9}",
            s.name, s.median_us, s.ratio, interval, p99, s.requests, s.failed
        );
    }
    for s in report.scenarios.iter().filter(|s| !s.errors.is_empty()) {
        let list: Vec<String> = s.errors.iter().map(|(k, n)| format!("{k} ×{n}")).collect();
        let _ = writeln!(out, "{} failed by kind: {}", s.name, list.join(", "));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compare::ScenarioResult;
    use std::collections::BTreeMap;
    use std::time::Duration;

    fn p(v: u64) -> Percentiles {
        Percentiles {
            count: 3,
            min: v,
            p50: v,
            p90: v,
            p99: v,
            p999: v,
            max: v,
            mean: v as f64,
        }
    }

    #[test]
    fn run_table_has_every_part() {
        let summary = Summary {
            requests: 3,
            ok: 2,
            failed: 1,
            elapsed_s: 1.0,
            throughput_rps: 3.0,
            send_rate_rps: 3.0,
            latency_us: Some(p(250)),
            service_us: Some(p(200)),
            send_lag_us: Some(p(50)),
            server_start_us: Some(p(10)),
            server_duration_us: Some(p(100)),
            by_start: BTreeMap::from([("warm".into(), p(250))]),
            by_spare: BTreeMap::from([("hit".into(), p(4000))]),
            statuses: BTreeMap::from([(500, 1)]),
            errors: BTreeMap::from([("handler_error".into(), 1)]),
            first_error_detail: None,
        };
        let target = Target::new("http://127.0.0.1:7070", "hello").unwrap();
        let config = RunConfig {
            mode: Mode::Open {
                rate: 3.0,
                max_in_flight: 8,
            },
            stop: Stop::Requests(3),
            warmup: Duration::from_secs(1),
        };
        let text = RunReport::new(&target, config, summary.clone()).text();
        for want in [
            "POST http://127.0.0.1:7070/functions/hello/invoke",
            "open loop at 3 req/s (at most 8 in flight), 3 requests, warm-up 1s",
            "3 requests (2 ok, 1 failed) in 1.00 s: 3.0 req/s, sent at 3.0 req/s",
            "service time",
            "send lag",
            "server handler",
            "start=warm",
            "spare=hit",
            "failed by status: 500 ×1",
            "failed by kind: handler_error ×1",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
        let json = serde_json::to_string(&RunReport::new(&target, config, summary)).unwrap();
        let back: RunReport = serde_json::from_str(&json).unwrap();
        assert_eq!(back.summary.latency_us.unwrap().p50, 250);
    }

    #[test]
    fn compare_table() {
        let result = |name: &str, median: f64, ci| ScenarioResult {
            name: name.into(),
            rounds_us: vec![median],
            median_us: median,
            ratio: median / 100.0,
            ratio_ci: ci,
            pooled_us: Some(p(median as u64)),
            requests: 10,
            failed: 0,
            errors: BTreeMap::new(),
        };
        let report = CompareReport {
            rounds: 1,
            baseline: "warm".into(),
            resamples: 10,
            seed: 1,
            confidence: 0.95,
            scenarios: vec![
                result("warm", 100.0, None),
                result("restore", 400.0, Some([3.5, 4.5])),
            ],
        };
        let text = compare_text(&report);
        assert!(
            text.contains("ratio to \"warm\" with a 95% bootstrap interval"),
            "{text}"
        );
        assert!(text.contains("baseline"), "{text}");
        assert!(text.contains("[3.500, 4.500]"), "{text}");
    }
}
