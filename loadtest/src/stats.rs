//! Accounting of a run: HDR histograms in microseconds and error counts.
//!
//! Every answered request is a [`Sample`] with three instants: when it was
//! *intended* to be sent (the open-loop schedule; the send time in a closed
//! loop), when it was actually *sent*, and when its answer was *done*
//! (whole body read). From them:
//!
//! ```text
//! intended ──── send lag ────> sent ──── service time ────> done
//! └──────────────────────── latency ─────────────────────────┘
//! ```
//!
//! `latency` is the figure that counts: in an open loop it includes the time
//! a request waited because earlier ones had not answered (coordinated
//! omission corrected). `service` is what a naive generator would report.
//!
//! Latency histograms hold every request that got an HTTP answer, whatever
//! its status; requests that got none (refused, reset, client timeout) are
//! only counted under their error kind. Failed requests are also counted by
//! status and by the `error` field of thaw's JSON error answer. Answers are
//! split by their `x-thaw-start` header (`none` when missing), successful
//! restores also by their `x-thaw-spare` header (`hit`: a pre-made sandbox
//! was ready, `miss`: one was made on demand), and the server's own
//! `x-thaw-start-us` / `x-thaw-duration-us` go into histograms of their own.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::client::Outcome;

/// Highest value the histograms resolve, in µs (one hour); larger values are
/// recorded as this.
pub const MAX_MICROS: u64 = 3_600_000_000;
/// Significant decimal digits kept by the histograms.
pub const SIGNIFICANT_DIGITS: u8 = 3;
/// Key of the `x-thaw-start` split for answers without the header.
pub const NO_START: &str = "none";

/// One finished request.
#[derive(Debug, Clone)]
pub struct Sample {
    /// When the schedule wanted it sent.
    pub intended: Instant,
    /// When it was handed to the client.
    pub sent: Instant,
    /// When its answer had been read.
    pub done: Instant,
    /// What the answer said.
    pub outcome: Outcome,
}

/// A new histogram of microseconds with thaw's bounds.
pub fn histogram() -> Histogram<u64> {
    // The bounds are constants that satisfy the crate's preconditions.
    Histogram::new_with_bounds(1, MAX_MICROS, SIGNIFICANT_DIGITS)
        .expect("constant histogram bounds are valid")
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// Everything recorded about the measured part of a run.
#[derive(Debug, Clone)]
pub struct Stats {
    latency: Histogram<u64>,
    ok_latency: Histogram<u64>,
    service: Histogram<u64>,
    send_lag: Histogram<u64>,
    server_start: Histogram<u64>,
    server_duration: Histogram<u64>,
    by_start: BTreeMap<String, Histogram<u64>>,
    by_spare: BTreeMap<String, Histogram<u64>>,
    statuses: BTreeMap<u16, u64>,
    errors: BTreeMap<String, u64>,
    requests: u64,
    ok: u64,
    first_detail: Option<String>,
    first_intended: Option<Instant>,
    first_sent: Option<Instant>,
    last_sent: Option<Instant>,
    last_done: Option<Instant>,
}

impl Default for Stats {
    fn default() -> Self {
        Self::new()
    }
}

impl Stats {
    /// Empty accounting.
    pub fn new() -> Self {
        Stats {
            latency: histogram(),
            ok_latency: histogram(),
            service: histogram(),
            send_lag: histogram(),
            server_start: histogram(),
            server_duration: histogram(),
            by_start: BTreeMap::new(),
            by_spare: BTreeMap::new(),
            statuses: BTreeMap::new(),
            errors: BTreeMap::new(),
            requests: 0,
            ok: 0,
            first_detail: None,
            first_intended: None,
            first_sent: None,
            last_sent: None,
            last_done: None,
        }
    }

    /// Accounts one finished request.
    pub fn record(&mut self, s: &Sample) {
        self.requests += 1;
        let o = &s.outcome;
        self.first_intended = Some(
            self.first_intended
                .map_or(s.intended, |t| t.min(s.intended)),
        );
        self.first_sent = Some(self.first_sent.map_or(s.sent, |t| t.min(s.sent)));
        self.last_sent = Some(self.last_sent.map_or(s.sent, |t| t.max(s.sent)));
        self.last_done = Some(self.last_done.map_or(s.done, |t| t.max(s.done)));
        if o.is_ok() {
            self.ok += 1;
        } else if let Some(kind) = &o.error {
            *self.errors.entry(kind.clone()).or_default() += 1;
        }
        if self.first_detail.is_none() {
            self.first_detail = o.detail.clone();
        }
        let Some(status) = o.status else {
            return;
        };
        if !o.is_ok() {
            *self.statuses.entry(status).or_default() += 1;
        }
        let latency = micros(s.done.saturating_duration_since(s.intended));
        self.latency.saturating_record(latency);
        if o.is_ok() {
            self.ok_latency.saturating_record(latency);
        }
        self.service
            .saturating_record(micros(s.done.saturating_duration_since(s.sent)));
        self.send_lag
            .saturating_record(micros(s.sent.saturating_duration_since(s.intended)));
        let start = o.start.as_deref().unwrap_or(NO_START);
        self.by_start
            .entry(start.to_owned())
            .or_insert_with(histogram)
            .saturating_record(latency);
        if let (true, Some(spare)) = (o.is_ok(), o.spare.as_deref()) {
            self.by_spare
                .entry(spare.to_owned())
                .or_insert_with(histogram)
                .saturating_record(latency);
        }
        if let Some(us) = o.start_us {
            self.server_start.saturating_record(us);
        }
        if let Some(us) = o.duration_us {
            self.server_duration.saturating_record(us);
        }
    }

    /// Adds everything `other` recorded.
    pub fn merge(&mut self, other: &Stats) {
        fn add(into: &mut Histogram<u64>, from: &Histogram<u64>) {
            // Same bounds on both sides, so adding cannot fail.
            into.add(from).expect("histograms share bounds");
        }
        add(&mut self.latency, &other.latency);
        add(&mut self.ok_latency, &other.ok_latency);
        add(&mut self.service, &other.service);
        add(&mut self.send_lag, &other.send_lag);
        add(&mut self.server_start, &other.server_start);
        add(&mut self.server_duration, &other.server_duration);
        for (k, h) in &other.by_start {
            add(self.by_start.entry(k.clone()).or_insert_with(histogram), h);
        }
        for (k, h) in &other.by_spare {
            add(self.by_spare.entry(k.clone()).or_insert_with(histogram), h);
        }
        for (k, n) in &other.statuses {
            *self.statuses.entry(*k).or_default() += n;
        }
        for (k, n) in &other.errors {
            *self.errors.entry(k.clone()).or_default() += n;
        }
        self.requests += other.requests;
        self.ok += other.ok;
        if self.first_detail.is_none() {
            self.first_detail = other.first_detail.clone();
        }
        let min = |a: Option<Instant>, b: Option<Instant>| a.into_iter().chain(b).min();
        let max = |a: Option<Instant>, b: Option<Instant>| a.into_iter().chain(b).max();
        self.first_intended = min(self.first_intended, other.first_intended);
        self.first_sent = min(self.first_sent, other.first_sent);
        self.last_sent = max(self.last_sent, other.last_sent);
        self.last_done = max(self.last_done, other.last_done);
    }

    /// Requests accounted, answered or not.
    pub fn requests(&self) -> u64 {
        self.requests
    }

    /// Requests answered with a 2xx status.
    pub fn ok(&self) -> u64 {
        self.ok
    }

    /// Requests that failed (non-2xx or no answer).
    pub fn failed(&self) -> u64 {
        self.requests - self.ok
    }

    /// Latency from intended send to answer, µs, of every answered request.
    pub fn latency(&self) -> &Histogram<u64> {
        &self.latency
    }

    /// Latency of the 2xx answers only, µs (what comparisons use, so that a
    /// fast error answer never passes for a fast start).
    pub fn ok_latency(&self) -> &Histogram<u64> {
        &self.ok_latency
    }

    /// Latency from actual send to answer, µs (what a naive generator sees).
    pub fn service(&self) -> &Histogram<u64> {
        &self.service
    }

    /// How late requests were handed to the client, µs.
    pub fn send_lag(&self) -> &Histogram<u64> {
        &self.send_lag
    }

    /// The server's `x-thaw-start-us`, of answers that carried it.
    pub fn server_start(&self) -> &Histogram<u64> {
        &self.server_start
    }

    /// The server's `x-thaw-duration-us`, of answers that carried it.
    pub fn server_duration(&self) -> &Histogram<u64> {
        &self.server_duration
    }

    /// Latency histograms split by `x-thaw-start` ([`NO_START`] if absent).
    pub fn by_start(&self) -> &BTreeMap<String, Histogram<u64>> {
        &self.by_start
    }

    /// Latency of successful answers split by `x-thaw-spare` (`hit`,
    /// `miss`); answers without the header (not restores) are left out.
    pub fn by_spare(&self) -> &BTreeMap<String, Histogram<u64>> {
        &self.by_spare
    }

    /// Failed answers by HTTP status.
    pub fn statuses(&self) -> &BTreeMap<u16, u64> {
        &self.statuses
    }

    /// Failed requests by error kind.
    pub fn errors(&self) -> &BTreeMap<String, u64> {
        &self.errors
    }

    /// The time the measurement covers: from the first intended send to the
    /// last answer.
    pub fn elapsed(&self) -> Duration {
        match (self.first_intended, self.last_done) {
            (Some(a), Some(b)) => b.saturating_duration_since(a),
            _ => Duration::ZERO,
        }
    }

    /// Summarizes for printing or JSON.
    pub fn summary(&self) -> Summary {
        let elapsed = self.elapsed().as_secs_f64();
        let send_span = match (self.first_sent, self.last_sent) {
            (Some(a), Some(b)) => b.saturating_duration_since(a).as_secs_f64(),
            _ => 0.0,
        };
        Summary {
            requests: self.requests,
            ok: self.ok,
            failed: self.failed(),
            elapsed_s: elapsed,
            throughput_rps: if elapsed > 0.0 {
                self.requests as f64 / elapsed
            } else {
                0.0
            },
            send_rate_rps: if send_span > 0.0 && self.requests > 1 {
                (self.requests - 1) as f64 / send_span
            } else {
                0.0
            },
            latency_us: Percentiles::of(&self.latency),
            service_us: Percentiles::of(&self.service),
            send_lag_us: Percentiles::of(&self.send_lag),
            server_start_us: Percentiles::of(&self.server_start),
            server_duration_us: Percentiles::of(&self.server_duration),
            by_start: self
                .by_start
                .iter()
                .filter_map(|(k, h)| Some((k.clone(), Percentiles::of(h)?)))
                .collect(),
            by_spare: self
                .by_spare
                .iter()
                .filter_map(|(k, h)| Some((k.clone(), Percentiles::of(h)?)))
                .collect(),
            statuses: self.statuses.clone(),
            errors: self.errors.clone(),
            first_error_detail: self.first_detail.clone(),
        }
    }
}

/// Percentiles of one histogram, µs.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    /// Values recorded.
    pub count: u64,
    /// Smallest value.
    pub min: u64,
    /// Median.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
    /// Largest value.
    pub max: u64,
    /// Arithmetic mean.
    pub mean: f64,
}

impl Percentiles {
    /// The percentiles of `h`, or `None` if it is empty.
    pub fn of(h: &Histogram<u64>) -> Option<Self> {
        if h.is_empty() {
            return None;
        }
        Some(Percentiles {
            count: h.len(),
            min: h.min(),
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
            mean: h.mean(),
        })
    }
}

/// A run's results, ready to print or serialize (`--json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Requests measured (warm-up excluded).
    pub requests: u64,
    /// Answered 2xx.
    pub ok: u64,
    /// Non-2xx or unanswered.
    pub failed: u64,
    /// Seconds from the first intended send to the last answer.
    pub elapsed_s: f64,
    /// Requests finished per second over `elapsed_s`.
    pub throughput_rps: f64,
    /// Rate at which requests were actually sent.
    pub send_rate_rps: f64,
    /// Latency from intended send, µs (the headline figure).
    pub latency_us: Option<Percentiles>,
    /// Latency from actual send, µs.
    pub service_us: Option<Percentiles>,
    /// Lateness of sends against the schedule, µs.
    pub send_lag_us: Option<Percentiles>,
    /// The server's `x-thaw-start-us`.
    pub server_start_us: Option<Percentiles>,
    /// The server's `x-thaw-duration-us`.
    pub server_duration_us: Option<Percentiles>,
    /// Latency by `x-thaw-start`.
    pub by_start: BTreeMap<String, Percentiles>,
    /// Latency of successful restores by `x-thaw-spare` (`hit`, `miss`).
    #[serde(default)]
    pub by_spare: BTreeMap<String, Percentiles>,
    /// Failed answers by status.
    pub statuses: BTreeMap<u16, u64>,
    /// Failed requests by error kind.
    pub errors: BTreeMap<String, u64>,
    /// What went wrong with the first unanswered request, if any.
    pub first_error_detail: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(base: Instant, intended_ms: u64, sent_ms: u64, done_ms: u64, o: Outcome) -> Sample {
        Sample {
            intended: base + Duration::from_millis(intended_ms),
            sent: base + Duration::from_millis(sent_ms),
            done: base + Duration::from_millis(done_ms),
            outcome: o,
        }
    }

    fn ok(start: &str, start_us: u64, duration_us: u64) -> Outcome {
        Outcome {
            status: Some(200),
            start: Some(start.to_owned()),
            start_us: Some(start_us),
            duration_us: Some(duration_us),
            ..Outcome::default()
        }
    }

    #[test]
    fn histogram_percentiles_of_a_known_distribution() {
        let mut h = histogram();
        for v in 1..=10_000u64 {
            h.record(v).unwrap();
        }
        let p = Percentiles::of(&h).unwrap();
        assert_eq!(p.count, 10_000);
        assert_eq!(p.min, 1);
        // Three significant digits: within 0.1% of the exact value.
        let near =
            |got: u64, want: u64| (got as f64 - want as f64).abs() <= want as f64 * 0.001 + 1.0;
        assert!(near(p.p50, 5_000), "{p:?}");
        assert!(near(p.p90, 9_000), "{p:?}");
        assert!(near(p.p99, 9_900), "{p:?}");
        assert!(near(p.p999, 9_990), "{p:?}");
        assert!(near(p.max, 10_000), "{p:?}");
        assert!((p.mean - 5_000.5).abs() < 10.0, "{p:?}");
        assert!(Percentiles::of(&histogram()).is_none());
    }

    #[test]
    fn huge_values_saturate_instead_of_failing() {
        let mut s = Stats::new();
        let base = Instant::now();
        let mut smp = sample(base, 0, 0, 1, ok("warm", 0, 0));
        smp.done = base + Duration::from_secs(10 * 3600);
        s.record(&smp);
        let p = s.summary().latency_us.unwrap();
        assert!(p.max >= MAX_MICROS - MAX_MICROS / 500, "{p:?}");
    }

    #[test]
    fn latency_service_and_lag_are_apart() {
        let base = Instant::now();
        let mut s = Stats::new();
        s.record(&sample(base, 0, 30, 40, ok("warm", 5, 7)));
        let sum = s.summary();
        let near = |got: u64, want: u64| got.abs_diff(want) <= want / 100 + 1;
        assert!(near(sum.latency_us.unwrap().p50, 40_000));
        assert!(near(sum.service_us.unwrap().p50, 10_000));
        assert!(near(sum.send_lag_us.unwrap().p50, 30_000));
        assert_eq!(sum.server_start_us.unwrap().p50, 5);
        assert_eq!(sum.server_duration_us.unwrap().p50, 7);
    }

    #[test]
    fn errors_by_status_kind_and_start_split() {
        let base = Instant::now();
        let mut s = Stats::new();
        s.record(&sample(base, 0, 0, 1, ok("warm", 10, 100)));
        s.record(&sample(base, 0, 0, 2, ok("warm", 10, 100)));
        s.record(&sample(base, 0, 0, 50, ok("restore", 4_000, 100)));
        let mut miss = ok("restore", 9_000, 100);
        miss.spare = Some("miss".into());
        s.record(&sample(base, 0, 0, 60, miss));
        let mut hit = ok("restore", 3_000, 100);
        hit.spare = Some("hit".into());
        s.record(&sample(base, 0, 0, 30, hit.clone()));
        // A failed answer never counts as a hit or a miss.
        hit.status = Some(500);
        s.record(&sample(base, 0, 0, 30, hit));
        s.record(&sample(
            base,
            0,
            0,
            3,
            Outcome {
                status: Some(429),
                error: Some("concurrency_limit".into()),
                ..Outcome::default()
            },
        ));
        s.record(&sample(
            base,
            0,
            0,
            3,
            Outcome {
                error: Some("transport".into()),
                detail: Some("connection refused".into()),
                ..Outcome::default()
            },
        ));
        let sum = s.summary();
        assert_eq!((sum.requests, sum.ok, sum.failed), (8, 5, 3));
        assert_eq!(sum.statuses, BTreeMap::from([(429, 1), (500, 1)]));
        assert_eq!(
            sum.errors,
            BTreeMap::from([("concurrency_limit".into(), 1), ("transport".into(), 1)])
        );
        assert_eq!(sum.by_start["warm"].count, 2);
        assert_eq!(sum.by_start["restore"].count, 4);
        assert_eq!(sum.by_start[NO_START].count, 1);
        assert_eq!(sum.by_spare.len(), 2, "{:?}", sum.by_spare);
        assert_eq!(sum.by_spare["hit"].count, 1);
        assert_eq!(sum.by_spare["miss"].count, 1);
        assert!(sum.by_spare["miss"].p50 > sum.by_spare["hit"].p50);
        // The unanswered request is in no latency histogram.
        assert_eq!(sum.latency_us.unwrap().count, 7);
        assert_eq!(s.ok_latency().len(), 5);
        assert_eq!(sum.server_start_us.unwrap().count, 6);
        assert_eq!(
            sum.first_error_detail.as_deref(),
            Some("connection refused")
        );
    }

    #[test]
    fn merge_equals_recording_everything_in_one() {
        let base = Instant::now();
        let samples: Vec<Sample> = (0..100u64)
            .map(|i| {
                let o = if i % 10 == 0 {
                    Outcome {
                        status: Some(500),
                        error: Some("handler_error".into()),
                        ..Outcome::default()
                    }
                } else if i % 4 == 0 {
                    let mut o = ok("restore", i, i * 2);
                    o.spare = Some(if i % 8 == 0 { "hit" } else { "miss" }.into());
                    o
                } else {
                    ok(if i % 3 == 0 { "boot" } else { "warm" }, i, i * 2)
                };
                sample(base, i, i + 1, i + 2 + i % 7, o)
            })
            .collect();
        let mut all = Stats::new();
        let (mut a, mut b) = (Stats::new(), Stats::new());
        for (i, smp) in samples.iter().enumerate() {
            all.record(smp);
            if i % 2 == 0 { &mut a } else { &mut b }.record(smp);
        }
        a.merge(&b);
        assert_eq!(a.summary(), all.summary());
        let last_done = (0..100u64).map(|i| i + 2 + i % 7).max().unwrap();
        assert_eq!(all.elapsed(), Duration::from_millis(last_done));
    }
}
