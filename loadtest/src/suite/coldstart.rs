//! The cold-start section: every start kind of one function (boot, restore
//! from the mapped image, restore with userfaultfd and prefetch, warm, and
//! the fork floor), interleaved; its table, its plot, and the first
//! invocation's handler time after each kind of start.

use std::path::Path;
use std::time::Duration;

use crate::run::{Mode, RunConfig, Stop};
use crate::target::{ColdStart, Target};

use super::api::Api;
use super::cold::{probe, run_rounds, Arm, ArmKind};
use super::markdown::{ratio, us, Table};
use super::plot::{cdf_svg, Series};
use super::{Bench, Ctx};

/// The `thaw serve` arguments of the second server, whose restores use
/// userfaultfd + prefetch.
pub const UFFD_ARGS: [&str; 2] = ["--memory-mode", "uffd"];
/// The `thaw serve` arguments of the third server, which keeps no
/// pre-made sandboxes: every restore makes its sandbox on demand.
pub const NO_SPARES_ARGS: [&str; 2] = ["--spare-sandboxes", "0"];

/// Arm names, in the order they run within a round.
pub const WARM: &str = "warm";
/// An idle instance, one request every [`IDLE_GAP`]: the same warm code
/// after the caches went cold, the reference that tells what a restore
/// itself adds to a first invocation (goal 5 is judged against [`WARM`]).
pub const WARM_IDLE: &str = "warm (after 50 ms idle)";
/// The idle time between the requests of [`WARM_IDLE`].
pub const IDLE_GAP: Duration = Duration::from_millis(50);
/// A fresh booted instance per request.
pub const BOOT: &str = "boot";
/// A restored copy, private memory mapped from the snapshot's image.
pub const RESTORE_MMAP: &str = "restore (mmap)";
/// A restored copy, memory served by userfaultfd with prefetch.
pub const RESTORE_UFFD: &str = "restore (uffd + prefetch)";
/// A restored copy (mmap) on a server that keeps no spare sandboxes.
pub const RESTORE_NO_SPARES: &str = "restore (mmap, no spares)";
/// fork() of a warm process outside thaw.
pub const FORK: &str = "fork floor";

/// What one function's cold-start measurements left.
#[derive(Debug)]
pub struct ColdResult {
    /// The function.
    pub function: String,
    /// The arms, measured or not.
    pub arms: Vec<Arm>,
    /// The plot's file name (next to the doc, under `benchmarks/`).
    pub plot: Option<String>,
}

impl ColdResult {
    /// The arm named `name`.
    pub fn arm(&self, name: &str) -> Option<&Arm> {
        self.arms.iter().find(|a| a.name == name)
    }
}

fn http(
    ctx: &Ctx,
    function: &str,
    body: &str,
    cold: Option<ColdStart>,
    requests: u64,
) -> Result<ArmKind, String> {
    http_at(&ctx.api.base_url(), function, body, cold, requests)
}

fn http_at(
    server: &str,
    function: &str,
    body: &str,
    cold: Option<ColdStart>,
    requests: u64,
) -> Result<ArmKind, String> {
    let target = Target::new(server, function)
        .and_then(|t| t.with_bodies(vec![bytes::Bytes::from(body.to_owned())]))
        .map_err(|e| e.to_string())?
        .with_cold(cold);
    Ok(ArmKind::Http {
        target,
        config: RunConfig {
            mode: Mode::Closed { concurrency: 1 },
            stop: Stop::Requests(requests),
            warmup: Duration::ZERO,
        },
    })
}

/// [`WARM_IDLE`]'s requests: an open loop of one request per
/// [`IDLE_GAP`], one in flight at most.
fn warm_after_idle(
    ctx: &Ctx,
    function: &str,
    body: &str,
    requests: u64,
) -> Result<ArmKind, String> {
    let mut kind = http(ctx, function, body, None, requests)?;
    if let ArmKind::Http { config, .. } = &mut kind {
        config.mode = Mode::Open {
            rate: 1.0 / IDLE_GAP.as_secs_f64(),
            max_in_flight: 1,
        };
    }
    Ok(kind)
}

/// Measures `bench`'s start kinds; problems go to `ctx.errors`. `uffd` is
/// the server started with [`UFFD_ARGS`], `no_spares` the one started with
/// [`NO_SPARES_ARGS`], or why there is none.
pub async fn measure(
    ctx: &mut Ctx,
    bench: &Bench,
    uffd: &Result<Api, String>,
    no_spares: &Result<Api, String>,
) -> ColdResult {
    measure_arms(ctx, bench, uffd, no_spares, None).await
}

/// The arms `--only first_invocation` runs: a warm instance and the two
/// memory modes' restores, whose answers are first invocations.
pub const FIRST_INVOCATION_ARMS: [&str; 4] = [WARM, WARM_IDLE, RESTORE_MMAP, RESTORE_UFFD];

/// [`measure`], only the arms named in `only` (all with `None`).
pub async fn measure_arms(
    ctx: &mut Ctx,
    bench: &Bench,
    uffd: &Result<Api, String>,
    no_spares: &Result<Api, String>,
    only: Option<&[&str]>,
) -> ColdResult {
    let plan = ctx.plan.clone();
    let f = bench.name;
    let mut arms = Vec::new();
    let mut push = |ctx: &mut Ctx, name: &str, kind: Result<ArmKind, String>| match kind {
        Ok(kind) => arms.push(Arm::new(name, kind)),
        Err(why) => ctx.error(format!("{f}: {name}: {why}")),
    };
    push(
        ctx,
        WARM,
        http(ctx, f, bench.body, None, plan.warm_requests),
    );
    push(
        ctx,
        WARM_IDLE,
        warm_after_idle(ctx, f, bench.body, plan.restore_requests),
    );
    push(
        ctx,
        BOOT,
        http(
            ctx,
            f,
            bench.body,
            Some(ColdStart::Boot),
            plan.boot_requests,
        ),
    );
    let mmap = http(
        ctx,
        f,
        bench.body,
        Some(ColdStart::Restore),
        plan.restore_requests,
    );
    push(ctx, RESTORE_MMAP, mmap);
    for (name, other) in [(RESTORE_UFFD, uffd), (RESTORE_NO_SPARES, no_spares)] {
        let base = match other {
            Ok(api) => api.base_url(),
            Err(_) => ctx.api.base_url(),
        };
        let kind = http_at(
            &base,
            f,
            bench.body,
            Some(ColdStart::Restore),
            plan.restore_requests,
        );
        push(ctx, name, kind);
    }
    if bench.fork_floor {
        let folder = ctx.cfg.repo.join("examples").join(f);
        let fork_argv = fork_argv(ctx, &folder, bench.body, plan.fork_iterations);
        push(ctx, FORK, Ok(ArmKind::Exec { argv: fork_argv }));
    }

    if let Some(only) = only {
        arms.retain(|a| only.contains(&a.name.as_str()));
    }

    // Probe the restores: a 409 means "not yet", not an error.
    for arm in arms.iter_mut().filter(|a| a.name == RESTORE_MMAP) {
        match probe(&ctx.api, f, ColdStart::Restore, bench.body).await {
            Ok(None) => {}
            Ok(Some(why)) => {
                arm.unavailable = Some(short_409(&why));
                ctx.unavailable(format!(
                    "{f} {RESTORE_MMAP}: the server answered 409: {why}"
                ));
            }
            Err(why) => arm.error = Some(why),
        }
    }
    for (name, other) in [(RESTORE_UFFD, uffd), (RESTORE_NO_SPARES, no_spares)] {
        let Some(arm) = arms.iter_mut().find(|a| a.name == name) else {
            continue;
        };
        match other {
            Err(why) => arm.unavailable = Some(why.clone()),
            Ok(api) => match probe(api, f, ColdStart::Restore, bench.body).await {
                Ok(None) => {}
                Ok(Some(why)) => {
                    arm.unavailable = Some(short_409(&why));
                    ctx.unavailable(format!("{f} {name}: the server answered 409: {why}"));
                }
                Err(why) => arm.error = Some(why),
            },
        }
    }

    eprintln!("suite: cold starts of {f}: {} rounds", plan.rounds);
    run_rounds(&ctx.client, &mut arms, plan.rounds, |round, arm| {
        let m = arm.samples.last().copied();
        eprintln!("  round {round}: {:<26} median {}", arm.name, us(m));
    })
    .await;
    for arm in &arms {
        if let Some(e) = &arm.error {
            ctx.error(format!("{f}: {}: {e}", arm.name));
        }
    }

    let series: Vec<Series<'_>> = arms
        .iter()
        .filter(|a| a.measured())
        .map(|a| Series {
            name: &a.name,
            values: &a.latency,
        })
        .collect();
    let plot = if series.is_empty() {
        None
    } else {
        let file = format!("cold-{f}.svg");
        let svg = cdf_svg(
            &format!("{f}: latency to the answer by start kind"),
            &series,
        );
        match std::fs::write(ctx.cfg.plot_dir().join(&file), svg) {
            Ok(()) => Some(file),
            Err(e) => {
                ctx.error(format!("cannot write the plot {file}: {e}"));
                None
            }
        }
    };
    ColdResult {
        function: f.to_owned(),
        arms,
        plot,
    }
}

/// A short reason for a 409 answer: its error kind.
fn short_409(why: &str) -> String {
    let kind = why.split(':').next().unwrap_or(why).trim();
    format!("409 {kind}")
}

/// The fork floor's command line for `folder`: its layer on `PYTHONPATH`
/// when the server installed one.
pub fn fork_argv(ctx: &Ctx, folder: &Path, body: &str, iterations: u32) -> Vec<String> {
    let mut argv = vec![
        ctx.cfg.fork_floor.display().to_string(),
        "--dir".into(),
        folder.display().to_string(),
        "--iterations".into(),
        iterations.to_string(),
        "--event".into(),
        body.to_owned(),
        "--runtime-dir".into(),
        ctx.cfg.repo.join("runtimes/python").display().to_string(),
        "--python".into(),
        ctx.cfg.python.display().to_string(),
    ];
    // The layer the server installed for the deployed version (numpy and
    // pandas of numpy-pandas): the fork floor imports the same packages.
    let name = folder.file_name().unwrap_or_default();
    let versions = ctx.server_data.join("functions").join(name);
    let newest = std::fs::read_dir(&versions)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_str()?
                .strip_prefix('v')?
                .parse::<u64>()
                .ok()
        })
        .max();
    if let Some(v) = newest {
        let layer = versions.join(format!("v{v}/code/.thaw/python"));
        if layer.is_dir() {
            argv.extend(["--pythonpath".into(), layer.display().to_string()]);
        }
    }
    argv
}

/// A cell saying why an arm has no figures.
pub fn absent(arm: &Arm) -> String {
    match (&arm.unavailable, &arm.error) {
        (Some(why), _) => format!("not available: {why}"),
        (_, Some(e)) => format!("error: {e}"),
        _ => "no data".into(),
    }
}

/// The section's Markdown for one function.
pub fn render(result: &ColdResult, rounds: usize) -> String {
    let mut out = format!("### {}\n\n", result.function);
    let warm = result.arm(WARM);
    let mut t = Table::new(&[
        "start kind",
        ">median of rounds",
        ">p50",
        ">p90",
        ">p99",
        ">n",
        ">÷ warm [95% CI]",
        "server start p50",
    ]);
    for arm in &result.arms {
        let Some(p) = arm.pooled().filter(|_| arm.measured()) else {
            t.row(vec![arm.name.clone(), absent(arm)]);
            continue;
        };
        let vs_warm = match warm.and_then(|w| arm.ratio_to(w)) {
            Some((_, _)) if arm.name == WARM => "×1".into(),
            Some((r, [lo, hi])) => format!("{} [{:.2}, {:.2}]", ratio(Some(r)), lo, hi),
            None => "–".into(),
        };
        let start = if arm.start.is_empty() {
            "–".into()
        } else {
            us(Some(arm.start.value_at_quantile(0.5) as f64))
        };
        t.row(vec![
            arm.name.clone(),
            us(arm.median()),
            us(Some(p.p50 as f64)),
            us(Some(p.p90 as f64)),
            us(Some(p.p99 as f64)),
            p.count.to_string(),
            vs_warm,
            start,
        ]);
    }
    out.push_str(&t.render());
    out.push_str(&format!(
        "\n{rounds} interleaved rounds; latency from the request's send to the whole answer (client side, HTTP \
         on loopback); the fork floor is timed inside its helper (fork → answer read from a pipe). \
         \"median of rounds\" is the median of the per-round medians, the figure the ratios divide.\n"
    ));
    if let Some(plot) = &result.plot {
        out.push_str(&format!(
            "\n![{} cold-start latency distributions](benchmarks/{plot})\n",
            result.function
        ));
    }
    out
}

/// The restore arms, whose answers say whether a spare was ready.
pub const RESTORE_ARMS: [&str; 3] = [RESTORE_MMAP, RESTORE_UFFD, RESTORE_NO_SPARES];

/// Hits and misses of an arm's restores.
pub fn spare_counts(arm: &Arm) -> (u64, u64) {
    (arm.spare_hit.len(), arm.spare_miss.len())
}

/// `hits/all (rate%)`, or `–` when no answer said.
pub fn hit_rate(hits: u64, misses: u64) -> String {
    let all = hits + misses;
    if all == 0 {
        return "–".into();
    }
    format!("{hits}/{all} ({:.0}%)", hits as f64 * 100.0 / all as f64)
}

fn p50_of(h: &hdrhistogram::Histogram<u64>) -> String {
    if h.is_empty() {
        "–".into()
    } else {
        us(Some(h.value_at_quantile(0.5) as f64))
    }
}

/// Every restore arm's spare hit rate and its latency split by hit and
/// miss (`x-thaw-spare` of each answer).
pub fn render_spares(results: &[ColdResult]) -> String {
    let mut t = Table::new(&[
        "function",
        "start kind",
        ">spare hits",
        ">p50 hit",
        ">p90 hit",
        ">p50 miss",
        ">p90 miss",
        ">miss ÷ hit (p50)",
    ]);
    for r in results {
        for name in RESTORE_ARMS {
            let Some(arm) = r.arm(name) else { continue };
            if !arm.measured() {
                t.row(vec![r.function.clone(), name.into(), absent(arm)]);
                continue;
            }
            let (hits, misses) = spare_counts(arm);
            let q = |h: &hdrhistogram::Histogram<u64>, q: f64| {
                (!h.is_empty()).then(|| h.value_at_quantile(q) as f64)
            };
            let ratio_p50 = match (q(&arm.spare_miss, 0.5), q(&arm.spare_hit, 0.5)) {
                (Some(m), Some(h)) => ratio(Some(m / h.max(1.0))),
                _ => "–".into(),
            };
            t.row(vec![
                r.function.clone(),
                name.into(),
                hit_rate(hits, misses),
                p50_of(&arm.spare_hit),
                us(q(&arm.spare_hit, 0.9)),
                p50_of(&arm.spare_miss),
                us(q(&arm.spare_miss, 0.9)),
                ratio_p50,
            ]);
        }
    }
    t.render()
}

/// `a ÷ b` with its interval, or why not.
pub fn ratio_cell(result: &ColdResult, num: &str, den: &str) -> String {
    let (Some(a), Some(b)) = (result.arm(num), result.arm(den)) else {
        return "–".into();
    };
    if !a.measured() {
        return absent(a);
    }
    if !b.measured() {
        return absent(b);
    }
    match a.ratio_to(b) {
        Some((r, [lo, hi])) => format!("{} [{lo:.3}, {hi:.3}]", ratio(Some(r))),
        None => "–".into(),
    }
}

/// The handler time of the first invocation after each start kind.
pub fn render_first_invocation(results: &[ColdResult]) -> String {
    let mut t = Table::new(&[
        "function",
        "start kind",
        ">handler p50",
        ">handler p90",
        ">÷ warm handler p50",
        ">÷ warm after 50 ms idle p50",
    ]);
    for r in results {
        let p50_of = |name: &str| {
            r.arm(name)
                .filter(|w| !w.handler.is_empty())
                .map(|w| w.handler.value_at_quantile(0.5) as f64)
        };
        let warm_p50 = p50_of(WARM);
        let idle_p50 = p50_of(WARM_IDLE);
        for name in [
            WARM,
            WARM_IDLE,
            BOOT,
            RESTORE_MMAP,
            RESTORE_UFFD,
            RESTORE_NO_SPARES,
        ] {
            let Some(arm) = r.arm(name) else { continue };
            if !arm.measured() || arm.handler.is_empty() {
                t.row(vec![r.function.clone(), name.into(), absent(arm)]);
                continue;
            }
            let p50 = arm.handler.value_at_quantile(0.5) as f64;
            t.row(vec![
                r.function.clone(),
                name.into(),
                us(Some(p50)),
                us(Some(arm.handler.value_at_quantile(0.9) as f64)),
                ratio(warm_p50.map(|w| p50 / w.max(1.0))),
                ratio(idle_p50.map(|w| p50 / w.max(1.0))),
            ]);
        }
    }
    t.render()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arm(name: &str, samples: &[f64]) -> Arm {
        let mut a = Arm::new(
            name,
            ArmKind::Exec {
                argv: vec!["true".into()],
            },
        );
        for &s in samples {
            a.samples.push(s);
            a.latency.record(s as u64).unwrap();
        }
        a
    }

    #[test]
    fn ratios_and_absent_arms_in_the_tables() {
        let mut restore = arm(RESTORE_MMAP, &[]);
        restore.unavailable = Some("409 no_snapshot".into());
        let mut uffd = arm(RESTORE_UFFD, &[1.0]);
        uffd.error = Some("round 1: boom".into());
        let result = ColdResult {
            function: "f".into(),
            arms: vec![
                arm(WARM, &[100.0, 110.0, 90.0]),
                arm(BOOT, &[10_000.0, 11_000.0, 9_000.0]),
                restore,
                uffd,
                arm(FORK, &[200.0, 220.0, 180.0]),
            ],
            plot: Some("cold-f.svg".into()),
        };
        assert_eq!(
            ratio_cell(&result, RESTORE_MMAP, BOOT),
            "not available: 409 no_snapshot"
        );
        assert_eq!(
            ratio_cell(&result, RESTORE_UFFD, FORK),
            "error: round 1: boom"
        );
        assert!(
            ratio_cell(&result, BOOT, WARM).starts_with("×100 ["),
            "{}",
            ratio_cell(&result, BOOT, WARM)
        );
        let md = render(&result, 3);
        assert!(md.starts_with("### f\n"));
        assert!(
            md.contains("| restore (mmap) | not available: 409 no_snapshot |"),
            "{md}"
        );
        assert!(md.contains("| boot | 10 ms |"), "{md}");
        assert!(md.contains("| fork floor | 200 µs |"), "{md}");
        assert!(md.contains("](benchmarks/cold-f.svg)"));
    }
}
