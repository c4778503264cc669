//! Throughput: sustained warm invocations (closed loop, twice as many
//! clients as cores), and sustained cold starts: [`COLD_CLIENTS`] clients
//! each forcing a fresh instance per request (issue 16, goals 1 and 2),
//! with the CPU each cold start cost ([`super::cpu`]) and the spare hit
//! rate.

use crate::compare::median;
use crate::progress::Progress;
use crate::run::{run, Mode, RunConfig, Stop};
use crate::stats::{histogram, Percentiles};
use crate::target::{ColdStart, Target};

use super::coldstart::hit_rate;
use super::cpu::CpuReading;
use super::deploy::{spares_ready, wait_settled};
use super::forkfloor::{self, ForkCost};
use super::markdown::{us, Table};
use super::{Bench, Ctx};

/// Clients of the sustained cold-start runs (the definition).
pub const COLD_CLIENTS: usize = 8;

/// One row: a function under one kind of load, over several rounds.
#[derive(Debug, Clone)]
pub struct Row {
    /// Starts (or requests) answered per second, per round.
    pub rates: Vec<f64>,
    /// Latency of the successful answers, µs.
    pub latency: hdrhistogram::Histogram<u64>,
    /// Requests sent.
    pub requests: u64,
    /// Requests that failed.
    pub failed: u64,
    /// Restores that found a spare ready, and that did not.
    pub spares: (u64, u64),
    /// CPU per cold start (server + sandboxes), seconds, per round.
    pub cpu_per_start: Vec<f64>,
    /// Of which the server's, seconds, per round.
    pub server_cpu_per_start: Vec<f64>,
    /// Beside it, kernel threads' CPU per cold start, seconds, per round
    /// ([`super::cpu`]: not charged to the server or a sandbox).
    pub kernel_cpu_per_start: Vec<f64>,
    /// Beside it, the whole machine's busy CPU less the load generator's,
    /// per cold start, seconds, per round.
    pub machine_cpu_per_start: Vec<f64>,
}

impl Row {
    /// Median of the rounds' rates.
    pub fn rate(&self) -> f64 {
        median(&self.rates)
    }

    /// Median of the rounds' CPU per cold start, seconds.
    pub fn cpu(&self) -> Option<f64> {
        (!self.cpu_per_start.is_empty()).then(|| median(&self.cpu_per_start))
    }
}

/// A sustained cold-start row of one function: restores and boots.
#[derive(Debug, Clone)]
pub struct ColdRow {
    /// The function.
    pub function: String,
    /// `restore` or `boot`.
    pub kind: &'static str,
    /// What was measured, or why not.
    pub row: Result<Row, String>,
    /// Restores of a Python function: the fork floor's cost beside them
    /// ([`super::forkfloor`]), or why it is missing.
    pub fork: Option<Result<ForkCost, String>>,
}

/// The number of processes under the server once it has not changed for
/// a second (at most 30 s): the spares of the other functions too are made
/// by then, so the count is the server's at rest, not a moment of it.
async fn stable_count(server_pid: u32) -> Result<usize, String> {
    let t0 = std::time::Instant::now();
    let mut last = super::procfs::descendants(server_pid).len();
    let mut same = 0;
    while same < 5 {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let now = super::procfs::descendants(server_pid).len();
        same = if now == last { same + 1 } else { 0 };
        last = now;
        if t0.elapsed() > std::time::Duration::from_secs(30) {
            return Err(format!(
                "waiting for the server to settle: its process count still changes after 30 s ({now})"
            ));
        }
    }
    Ok(last)
}

/// How long [`settle`] waits for the spares it was asked for before it
/// reads how many the server keeps now.
pub const SPARES_WAIT: std::time::Duration = std::time::Duration::from_secs(15);

/// Waits until the function is at rest with at least `spares` ready, and
/// then until the server has `processes` processes under it again (a forced
/// copy leaves the server's lists before its sandbox is gone; its teardown
/// belongs to the round). `None`: returns the count at rest. A server that
/// keeps more spares than `spares` now (its spares follow demand: a burst
/// or many clients raised the function's target, docs/restore.md) has more
/// processes at rest than `processes`: then it is at rest once its process
/// count stops changing.
///
/// The server's spare target decays some seconds after the demand that
/// raised it: when `*spares` are not ready within [`SPARES_WAIT`], the
/// count ready then becomes `*spares` (said on stderr) and the wait goes
/// on for that many, rather than waiting for a count the server no longer
/// keeps.
pub async fn settle(
    ctx: &Ctx,
    name: &str,
    spares: &mut u64,
    processes: Option<usize>,
) -> Result<usize, String> {
    let settled = |n: u64| async move {
        wait_settled(&ctx.api, name, n)
            .await
            .map(|_| ())
            .map_err(|e| format!("waiting for the server to settle: {e}"))
    };
    if *spares == 0 {
        settled(0).await?;
    } else if let Ok(r) = tokio::time::timeout(SPARES_WAIT, settled(*spares)).await {
        r?;
    } else {
        let ready = spares_ready(&ctx.api, name)
            .await
            .map_err(|e| e.to_string())?;
        if ready < *spares {
            eprintln!(
                "suite: {name}: {ready} spares ready after {} s, not {} (the server's target decayed): counting on {ready} from now",
                SPARES_WAIT.as_secs(),
                *spares
            );
            *spares = ready;
        }
        settled(*spares).await?;
    }
    let spares = *spares;
    let t0 = std::time::Instant::now();
    if processes.is_none() {
        return stable_count(ctx.server_pid).await;
    }
    loop {
        let now = super::procfs::descendants(ctx.server_pid).len();
        match processes {
            None => return Ok(now),
            Some(n) if now <= n => return Ok(now),
            Some(_) if more_spares_than(ctx, name, spares).await => {
                return stable_count(ctx.server_pid).await
            }
            Some(n) if t0.elapsed() > std::time::Duration::from_secs(30) => {
                return Err(format!(
                    "waiting for the server to settle: {now} processes under it after 30 s, {n} at rest"
                ))
            }
            Some(_) => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
        }
    }
}

/// Whether `name` has more than `spares` spares ready now.
async fn more_spares_than(ctx: &Ctx, name: &str, spares: u64) -> bool {
    super::deploy::spares_ready(&ctx.api, name)
        .await
        .is_ok_and(|n| n > spares)
}

async fn load(ctx: &mut Ctx, bench: &Bench, cold: Option<ColdStart>) -> Result<Row, String> {
    let target = Target::new(&ctx.api.base_url(), bench.name)
        .and_then(|t| t.with_bodies(vec![bytes::Bytes::from(bench.body.to_owned())]))
        .map_err(|e| e.to_string())?
        .with_cold(cold);
    let config = RunConfig {
        mode: Mode::Closed {
            concurrency: if cold.is_some() {
                COLD_CLIENTS
            } else {
                ctx.plan.clients
            },
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
        spares: (0, 0),
        cpu_per_start: Vec::new(),
        server_cpu_per_start: Vec::new(),
        kernel_cpu_per_start: Vec::new(),
        machine_cpu_per_start: Vec::new(),
    };
    // The spares a resting server keeps for this function: each round
    // starts and ends with them, so the CPU of the spares made during a
    // round is the CPU of the cold starts that used them.
    let (mut spares, at_rest) = if cold.is_some() {
        settle(ctx, bench.name, &mut 0, None).await?;
        // Give the pool time to make its spares before counting them.
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        let spares = match cold {
            // Forced boots use no spare, and the spares a restore arm just
            // taught the pool to keep (its target follows demand) decay
            // during a slow boot arm: waiting for as many as were ready at
            // its start could wait forever.
            Some(ColdStart::Boot) => 0,
            _ => spares_ready(&ctx.api, bench.name)
                .await
                .map_err(|e| e.to_string())?,
        };
        let mut spares = spares;
        let at_rest = settle(ctx, bench.name, &mut spares, None).await?;
        (spares, Some(at_rest))
    } else {
        (0, None)
    };
    let mut failures = Vec::new();
    for round in 1..=ctx.plan.throughput_rounds {
        let before = match cold {
            Some(_) => {
                settle(ctx, bench.name, &mut spares, at_rest).await?;
                Some(CpuReading::take(&ctx.api, ctx.server_pid).await?)
            }
            None => None,
        };
        let stats = run(&ctx.client, &target, &config, &Progress::new())
            .await
            .map_err(|e| e.to_string())?;
        let s = stats.summary();
        // Starts of the asked kind that were answered.
        let starts = match cold {
            Some(kind) => s.by_start.get(kind.as_str()).map_or(0, |p| p.count),
            None => s.ok,
        };
        let elapsed = stats.elapsed().as_secs_f64();
        let rate = if elapsed > 0.0 {
            starts as f64 / elapsed
        } else {
            0.0
        };
        if let Some(before) = before {
            settle(ctx, bench.name, &mut spares, at_rest).await?;
            let after = CpuReading::take(&ctx.api, ctx.server_pid).await?;
            let used = before.until(&after);
            if starts > 0 {
                row.cpu_per_start
                    .push(used.total().as_secs_f64() / starts as f64);
                row.server_cpu_per_start
                    .push(used.server.as_secs_f64() / starts as f64);
                row.kernel_cpu_per_start
                    .push(used.kernel.as_secs_f64() / starts as f64);
                row.machine_cpu_per_start
                    .push(used.machine.as_secs_f64() / starts as f64);
            }
        }
        let hits = stats.by_spare().get("hit").map_or(0, |h| h.len());
        let misses = stats.by_spare().get("miss").map_or(0, |h| h.len());
        row.spares.0 += hits;
        row.spares.1 += misses;
        eprintln!(
            "  round {round}: {} {}: {rate:.1} starts/s, {} failed{}",
            bench.name,
            cold.map_or("warm", ColdStart::as_str),
            s.failed,
            row.cpu_per_start
                .last()
                .filter(|_| cold.is_some())
                .map_or(String::new(), |c| format!(
                    ", {:.2} ms CPU per start",
                    c * 1e3
                )),
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
            failures.push(format!(
                "round {round}: {} of {} requests failed: {:?}",
                s.failed, s.requests, s.errors
            ));
        }
        row.rates.push(rate);
    }
    if !failures.is_empty() {
        // The figures stay (the document shows the failures beside them);
        // the run is still an error of the suite.
        ctx.error(format!(
            "{} throughput of {}: {}",
            cold.map_or("warm", ColdStart::as_str),
            bench.name,
            failures.join("; ")
        ));
    }
    Ok(row)
}

fn cells(name: &str, kind: &str, row: &Row) -> Vec<String> {
    let p = Percentiles::of(&row.latency);
    let q = |f: fn(&Percentiles) -> u64| us(p.as_ref().map(|p| f(p) as f64));
    vec![
        name.into(),
        kind.into(),
        format!("{:.1}", row.rate()),
        q(|p| p.p50),
        q(|p| p.p90),
        q(|p| p.p99),
        row.requests.to_string(),
        row.failed.to_string(),
    ]
}

/// CPU per start as `total ms (server ms + sandboxes ms)`.
pub fn cpu_cell(row: &Row) -> String {
    match row.cpu() {
        Some(total) => {
            let server = median(&row.server_cpu_per_start);
            format!(
                "{:.2} ms ({:.2} + {:.2})",
                total * 1e3,
                server * 1e3,
                (total - server) * 1e3
            )
        }
        None => "–".into(),
    }
}

/// Kernel threads' and the whole machine's CPU per start, as
/// `kernel ms; machine ms` (medians of the rounds).
pub fn kernel_machine_cell(row: &Row) -> String {
    if row.kernel_cpu_per_start.is_empty() {
        return "–".into();
    }
    format!(
        "{:.2} ms; {:.2} ms",
        median(&row.kernel_cpu_per_start) * 1e3,
        median(&row.machine_cpu_per_start) * 1e3
    )
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

/// Forced cold starts, [`COLD_CLIENTS`] at once: restores (on the default
/// server, with its spares) and boots. Returns the section and its rows.
pub async fn cold_section(
    ctx: &mut Ctx,
    benches: &[Bench],
    restore_unavailable: &[Option<String>],
) -> (String, Vec<ColdRow>) {
    let mut t = Table::new(&[
        "function",
        "start",
        ">cold starts/s (median of rounds)",
        ">p50",
        ">p90",
        ">p99",
        ">requests",
        ">failed",
        ">spare hits",
        ">CPU per cold start (server + sandboxes)",
        ">kernel threads; whole machine",
    ]);
    let mut rows = Vec::new();
    for (i, bench) in benches.iter().enumerate() {
        for cold in [ColdStart::Restore, ColdStart::Boot] {
            if cold == ColdStart::Restore {
                if let Some(Some(why)) = restore_unavailable.get(i) {
                    t.row(vec![
                        bench.name.into(),
                        "restore".into(),
                        format!("not available: {why}"),
                    ]);
                    rows.push(ColdRow {
                        function: bench.name.into(),
                        kind: cold.as_str(),
                        row: Err(format!("not available: {why}")),
                        fork: None,
                    });
                    continue;
                }
            }
            eprintln!(
                "suite: sustained cold starts of {} ({}, {COLD_CLIENTS} clients)",
                bench.name,
                cold.as_str()
            );
            let result = load(ctx, bench, Some(cold)).await;
            match &result {
                Ok(row) => {
                    let mut c = cells(bench.name, cold.as_str(), row);
                    c.push(if cold == ColdStart::Restore {
                        hit_rate(row.spares.0, row.spares.1)
                    } else {
                        "–".into()
                    });
                    c.push(cpu_cell(row));
                    c.push(kernel_machine_cell(row));
                    t.row(c);
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
            let fork = if cold == ColdStart::Restore && bench.fork_floor {
                eprintln!(
                    "suite: the fork floor's cost for {} ({} runs of {} forks)",
                    bench.name, ctx.plan.fork_cpu_runs, ctx.plan.fork_cpu_forks
                );
                let cost = forkfloor::measure(ctx, bench).await;
                if let Err(e) = &cost {
                    ctx.error(format!("the fork floor's cost for {}: {e}", bench.name));
                }
                Some(cost)
            } else {
                None
            };
            rows.push(ColdRow {
                function: bench.name.into(),
                kind: cold.as_str(),
                row: result,
                fork,
            });
        }
    }
    let mut out = t.render();
    out.push_str(&format!(
        "\nEvery request forces a fresh instance (`x-thaw-cold: restore` or `boot`), {COLD_CLIENTS} clients at once on {} cores, \
         closed loop, {} rounds of {:?}; cold starts/s = answers of that start kind ÷ the round's time. Restores run on the \
         default server (its spares: `x-thaw-spare` of each answer gives the hit rate); each copy is torn down after its \
         answer. **CPU per cold start** = (Δ CPU time of the server process, `utime + stime` of `/proc/PID/stat`, + Δ \
         `thaw_sandbox_cpu_seconds_total`, the CPU of every sandbox's cgroup, those torn down included) ÷ cold starts \
         answered, over each round from a server at rest (nothing busy, no copy left, its spares made again) to a server \
         at rest again, so the teardown of the round's copies and the spares made for them are in it; median of the \
         rounds; the server's figure includes its sandbox zygote (the process that forks every sandbox). The load \
         generator's own CPU is not in it. Work the kernel does for no cgroup (a network namespace's cleanup runs in \
         kworkers) is not in it either: **kernel threads** is the Δ CPU of every kernel thread per cold start, \
         **whole machine** the Δ busy time of every CPU (`/proc/stat`) less the load generator's, per cold start; both \
         count whatever else the machine ran meanwhile, so they mean something on a quiet machine only.\n",
        ctx.machine_cores, ctx.plan.throughput_rounds, ctx.plan.throughput
    ));
    let forks: Vec<(Result<ForkCost, String>, Option<f64>)> = rows
        .iter()
        .filter_map(|r| {
            let cpu = r.row.as_ref().ok().and_then(Row::cpu);
            r.fork.clone().map(|f| (f, cpu))
        })
        .collect();
    out.push_str(&forkfloor::render(
        &forks,
        ctx.plan.fork_cpu_runs,
        ctx.plan.fork_cpu_forks,
    ));
    (out, rows)
}
