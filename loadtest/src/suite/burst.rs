//! Bursts of cold starts (issue 16, goal 3): [`BURST`] forced restores of
//! one function sent at the same instant to a server at rest (its spares
//! ready), and how long the last of them takes to answer, against the
//! median of single restores into the server at rest ([`single_median`]).

use std::time::Instant;

use bytes::Bytes;
use tokio::task::JoinSet;

use crate::compare::median;
use crate::target::{ColdStart, Target};

use super::coldstart::hit_rate;
use super::deploy::spares_ready;
use super::markdown::{ratio, us, Table};
use super::throughput::settle;
use super::{Bench, Ctx};

/// Cold starts sent at once.
pub const BURST: usize = 16;

/// Single restores measured for the bursts' reference ([`single_median`]).
pub const SINGLES: usize = 15;

/// What the bursts of one function left.
#[derive(Debug, Clone, Default)]
pub struct BurstResult {
    /// The function.
    pub function: String,
    /// Latency of the last answer of each burst, µs.
    pub last: Vec<f64>,
    /// Median latency within each burst, µs.
    pub median: Vec<f64>,
    /// Restores that found a spare, and that did not, over every burst.
    pub spares: (u64, u64),
    /// The same per burst, in order.
    pub spares_each: Vec<(u64, u64)>,
    /// Failed requests over every burst.
    pub failed: u64,
}

impl BurstResult {
    /// Median over the bursts of the last answer's latency, µs.
    pub fn last_median(&self) -> Option<f64> {
        (!self.last.is_empty()).then(|| median(&self.last))
    }

    /// The first burst's last answer, µs: the server had seen no burst of
    /// this function before (a pool that learns from bursts has learned
    /// nothing yet).
    pub fn first_last(&self) -> Option<f64> {
        self.last.first().copied()
    }

    /// Median over the bursts after the first of the last answer, µs.
    pub fn later_last_median(&self) -> Option<f64> {
        (self.last.len() > 1).then(|| median(&self.last[1..]))
    }

    /// Spare hits and misses of the first burst, and of the later ones.
    pub fn spares_first_later(&self) -> ((u64, u64), (u64, u64)) {
        let first = self.spares_each.first().copied().unwrap_or_default();
        let later = self
            .spares_each
            .iter()
            .skip(1)
            .fold((0, 0), |(h, m), (a, b)| (h + a, m + b));
        (first, later)
    }
}

/// Sends `bursts` bursts of [`BURST`] forced restores of `bench`, each from
/// a settled server.
pub async fn measure(ctx: &mut Ctx, bench: &Bench, bursts: usize) -> Result<BurstResult, String> {
    let target = Target::new(&ctx.api.base_url(), bench.name)
        .and_then(|t| t.with_bodies(vec![Bytes::from(bench.body.to_owned())]))
        .map_err(|e| e.to_string())?
        .with_cold(Some(ColdStart::Restore));
    settle(ctx, bench.name, &mut 0, None).await?;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let mut spares = spares_ready(&ctx.api, bench.name)
        .await
        .map_err(|e| e.to_string())?;
    let at_rest = settle(ctx, bench.name, &mut spares, None).await?;
    let mut result = BurstResult {
        function: bench.name.to_owned(),
        ..BurstResult::default()
    };
    for burst in 1..=bursts {
        settle(ctx, bench.name, &mut spares, Some(at_rest)).await?;
        let mut set = JoinSet::new();
        let t0 = Instant::now();
        for seq in 0..BURST as u64 {
            let client = ctx.client.clone();
            let target = target.clone();
            set.spawn(async move {
                let outcome = client.send(&target, seq).await;
                (outcome, t0.elapsed())
            });
        }
        let mut latencies = Vec::with_capacity(BURST);
        let mut spares = (0, 0);
        while let Some(joined) = set.join_next().await {
            let (outcome, took) = joined.map_err(|e| format!("burst task: {e}"))?;
            if !outcome.is_ok() {
                result.failed += 1;
                continue;
            }
            match outcome.spare.as_deref() {
                Some("hit") => spares.0 += 1,
                Some("miss") => spares.1 += 1,
                _ => {}
            }
            latencies.push(took.as_secs_f64() * 1e6);
        }
        if latencies.len() < BURST {
            return Err(format!(
                "burst {burst}: {} of {BURST} cold starts failed",
                BURST - latencies.len()
            ));
        }
        result.spares.0 += spares.0;
        result.spares.1 += spares.1;
        result.spares_each.push(spares);
        let last = latencies.iter().copied().fold(0.0, f64::max);
        eprintln!(
            "  burst {burst}: {} of {BURST} answered, last after {}, spare hits {}",
            latencies.len(),
            us(Some(last)),
            hit_rate(spares.0, spares.1)
        );
        result.last.push(last);
        result.median.push(median(&latencies));
    }
    Ok(result)
}

/// Single forced restores of `bench`, one at a time, each into a server at
/// rest (its spares ready and pre-mapped), `n` of them: the median
/// latency, µs: the bursts' reference.
pub async fn single_median(ctx: &mut Ctx, bench: &Bench, n: usize) -> Result<f64, String> {
    let target = Target::new(&ctx.api.base_url(), bench.name)
        .and_then(|t| t.with_bodies(vec![Bytes::from(bench.body.to_owned())]))
        .map_err(|e| e.to_string())?
        .with_cold(Some(ColdStart::Restore));
    settle(ctx, bench.name, &mut 0, None).await?;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let mut spares = spares_ready(&ctx.api, bench.name)
        .await
        .map_err(|e| e.to_string())?;
    let at_rest = settle(ctx, bench.name, &mut spares, None).await?;
    let mut latencies = Vec::with_capacity(n);
    for seq in 0..n as u64 {
        settle(ctx, bench.name, &mut spares, Some(at_rest)).await?;
        let t0 = Instant::now();
        let outcome = ctx.client.send(&target, seq).await;
        if !outcome.is_ok() {
            return Err(format!("single restore {seq} failed"));
        }
        latencies.push(t0.elapsed().as_secs_f64() * 1e6);
    }
    Ok(median(&latencies))
}

/// The section: each burst's figures and the ratio to the single restore.
/// `single` is the single-restore median (µs) of the same function.
pub fn render(results: &[(BurstResult, Option<f64>)], bursts: usize) -> String {
    let mut t = Table::new(&[
        "function",
        ">bursts",
        ">last answer (median of bursts)",
        ">median answer in a burst",
        ">single restore (median of rounds)",
        ">last ÷ single",
        ">spare hits",
        ">failed",
    ]);
    let over = |l: Option<f64>, s: &Option<f64>| match (l, s) {
        (Some(l), Some(s)) => ratio(Some(l / s.max(1.0))),
        _ => "–".into(),
    };
    for (r, single) in results {
        let last = r.last_median();
        t.row(vec![
            r.function.clone(),
            r.last.len().to_string(),
            us(last),
            us((!r.median.is_empty()).then(|| median(&r.median))),
            us(*single),
            over(last, single),
            hit_rate(r.spares.0, r.spares.1),
            r.failed.to_string(),
        ]);
    }
    let mut out = t.render();
    let mut split = Table::new(&[
        "function",
        ">first burst: last answer",
        ">÷ single",
        ">spare hits",
        ">later bursts: last answer (median)",
        ">÷ single",
        ">spare hits",
    ]);
    for (r, single) in results {
        let ((fh, fm), (lh, lm)) = r.spares_first_later();
        split.row(vec![
            r.function.clone(),
            us(r.first_last()),
            over(r.first_last(), single),
            hit_rate(fh, fm),
            us(r.later_last_median()),
            over(r.later_last_median(), single),
            hit_rate(lh, lm),
        ]);
    }
    out.push_str(
        "\nThe first burst apart from the later ones: before the first, the server had seen no burst of this \
         function (its spares are `spare_sandboxes`); after it, the pool keeps as many spares ready as the peak of \
         its recent concurrent cold starts (`spare_sandboxes_burst`, decaying; docs/restore.md).\n\n",
    );
    out.push_str(&split.render());
    out.push_str(&format!(
        "\n{bursts} bursts of {BURST} requests with `x-thaw-cold: restore` sent at the same instant (one connection each) \
         to the default server at rest (nothing busy, its spares ready); latency from the burst's start to each whole \
         answer. \"single restore\" is the median of {SINGLES} single forced restores, each into the server at rest (its \
         spares made and pre-mapped), measured before the bursts (before 2026-12-07: the restore (mmap) row of the \
         cold-start section, whose restores come back to back).\n"
    ));
    out
}
