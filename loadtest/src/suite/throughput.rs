//! Throughput: sustained warm invocations, and cold starts per second with
//! every core busy, closed loop with twice as many clients as cores.

use crate::compare::median;
use crate::progress::Progress;
use crate::run::{run, Mode, RunConfig, Stop};
use crate::stats::{histogram, Percentiles};
use crate::target::{ColdStart, Target};

use super::markdown::{us, Table};
use super::{Bench, Ctx};

/// One row: a function under one kind of load, over several rounds.
struct Row {
    rates: Vec<f64>,
    latency: hdrhistogram::Histogram<u64>,
    requests: u64,
    failed: u64,
}

async fn load(ctx: &mut Ctx, bench: &Bench, cold: Option<ColdStart>) -> Result<Row, String> {
    let target = Target::new(&ctx.api.base_url(), bench.name)
        .and_then(|t| t.with_bodies(vec![bytes::Bytes::from(bench.body.to_owned())]))
        .map_err(|e| e.to_string())?
        .with_cold(cold);
    let config = RunConfig {
        mode: Mode::Closed {
            concurrency: ctx.plan.clients,
        },
        stop: Stop::Duration(ctx.plan.throughput),
        // A cold start may outlast a short warm-up, and then no request
        // would start inside the measured time: cold runs have none.
        warmup: if cold.is_some() {
            std::time::Duration::ZERO
        } else {
            ctx.plan.throughput_warmup
        },
    };
    let mut row = Row {
        rates: Vec::new(),
        latency: histogram(),
        requests: 0,
        failed: 0,
    };
    for round in 1..=ctx.plan.throughput_rounds {
        let stats = run(&ctx.client, &target, &config, &Progress::new())
            .await
            .map_err(|e| e.to_string())?;
        let s = stats.summary();
        eprintln!(
            "  round {round}: {} {}: {:.1} req/s, {} failed",
            bench.name,
            cold.map_or("warm", ColdStart::as_str),
            s.throughput_rps,
            s.failed
        );
        row.requests += s.requests;
        row.failed += s.failed;
        let _ = row.latency.add(stats.ok_latency());
        if s.ok == 0 {
            return Err(format!(
                "round {round}: no request succeeded: {:?} {:?}",
                s.errors, s.first_error_detail
            ));
        }
        if s.failed > 0 {
            return Err(format!(
                "round {round}: {} of {} requests failed: {:?}",
                s.failed, s.requests, s.errors
            ));
        }
        row.rates.push(s.throughput_rps);
    }
    Ok(row)
}

fn cells(name: &str, kind: &str, row: &Row) -> Vec<String> {
    let p = Percentiles::of(&row.latency);
    let q = |f: fn(&Percentiles) -> u64| us(p.as_ref().map(|p| f(p) as f64));
    vec![
        name.into(),
        kind.into(),
        format!("{:.1}", median(&row.rates)),
        q(|p| p.p50),
        q(|p| p.p90),
        q(|p| p.p99),
        row.requests.to_string(),
        row.failed.to_string(),
    ]
}

const HEADER: [&str; 8] = [
    "function",
    "start",
    ">req/s (median of rounds)",
    ">p50",
    ">p90",
    ">p99",
    ">requests",
    ">failed",
];

/// Warm invocations as fast as the clients can go.
pub async fn warm_section(ctx: &mut Ctx, benches: &[Bench]) -> String {
    let mut t = Table::new(&HEADER);
    for bench in benches {
        eprintln!("suite: warm throughput of {}", bench.name);
        match load(ctx, bench, None).await {
            Ok(row) => {
                t.row(cells(bench.name, "warm", &row));
            }
            Err(e) => {
                ctx.error(format!("warm throughput of {}: {e}", bench.name));
                t.row(vec![
                    bench.name.into(),
                    "warm".into(),
                    format!("error: {e}"),
                ]);
            }
        }
    }
    let mut out = t.render();
    out.push_str(&format!(
        "\nClosed loop, {} clients, {} rounds of {:?} after {:?} of warm-up each; the server keeps as many warm instances as the \
         load needs (up to the function's concurrency).\n",
        ctx.plan.clients, ctx.plan.throughput_rounds, ctx.plan.throughput, ctx.plan.throughput_warmup
    ));
    out
}

/// Forced cold starts, as many at once as there are clients.
pub async fn cold_section(
    ctx: &mut Ctx,
    benches: &[Bench],
    restore_unavailable: &[Option<String>],
) -> String {
    let mut t = Table::new(&HEADER);
    for (i, bench) in benches.iter().enumerate() {
        for cold in [ColdStart::Restore, ColdStart::Boot] {
            if cold == ColdStart::Restore {
                if let Some(Some(why)) = restore_unavailable.get(i) {
                    t.row(vec![
                        bench.name.into(),
                        "restore".into(),
                        format!("not available: {why}"),
                    ]);
                    continue;
                }
            }
            eprintln!(
                "suite: cold-start throughput of {} ({})",
                bench.name,
                cold.as_str()
            );
            match load(ctx, bench, Some(cold)).await {
                Ok(row) => {
                    t.row(cells(bench.name, cold.as_str(), &row));
                }
                Err(e) => {
                    ctx.error(format!(
                        "{} throughput of {}: {e}",
                        cold.as_str(),
                        bench.name
                    ));
                    t.row(vec![
                        bench.name.into(),
                        cold.as_str().into(),
                        format!("error: {e}"),
                    ]);
                }
            }
        }
    }
    let mut out = t.render();
    out.push_str(&format!(
        "\nEvery request forces a fresh instance (`x-thaw-cold`), {} at once on {} cores, {} rounds of {:?}; req/s is \
         starts completed per second.\n",
        ctx.plan.clients, ctx.machine_cores, ctx.plan.throughput_rounds, ctx.plan.throughput
    ));
    out
}
