//! The benchmark suite: one command that measures thaw end to end and
//! writes `docs/benchmarks.md` (and its plots under `docs/benchmarks/`).
//!
//! [`run_suite`] starts its own `thaw serve` on a loopback ephemeral port
//! with a temporary data directory and `--allow-forced-cold`, deploys every
//! folder of `examples/`, waits for their snapshots, and measures:
//!
//! 1. **store**: each example's snapshot and the page store's dedup across
//!    them ([`memory::store_section`]);
//! 2. **capture**: time and MB/s of capturing copies of the benchmark
//!    functions ([`memory::capture_section`]);
//! 3. **cold starts** of every bench function by every start kind,
//!    interleaved: warm, boot, restore (mmap), restore (uffd + prefetch) on a
//!    second server, restore (mmap, no spares) on a third one started with
//!    `--spare-sandboxes 0`, and the fork floor (`thaw-fork-floor`, outside
//!    HTTP); a plot of each distribution, and the spare hit rate with the
//!    latency split by hit and miss (`x-thaw-spare`) ([`coldstart`]);
//! 4. **first invocation** after each kind of start (the server's handler
//!    time of the answers of step 3);
//! 5. **warm throughput** and **sustained cold starts** (8 clients forcing
//!    restores or boots, with the CPU per cold start) ([`throughput`]);
//! 6. **bursts** of 16 concurrent restores ([`burst`]);
//! 7. **density**: idle copies, booted and restored, and what they add
//!    ([`density::section`]);
//! 8. **remote restore** (issue 18): on a private Garage, a writer and in
//!    each round a fresh reader with an empty data directory: the reader's
//!    first (lazy) restore against its local restore and a boot, and the
//!    bytes it fetched against the working set ([`remote`]); a machine
//!    without Garage reports that start kind as not available;
//! 9. the **goals** of issue 16, each with its figure and verdict, and of
//!    issue 18 ([`goals`]), written first.
//!
//! A start kind the server cannot do yet (a forced restore answered `409`,
//! a restore mode it does not know) is reported as "not available: reason";
//! in the full mode that is not an error, so those rows fill in by
//! themselves once the server can, but the short mode (CI) fails on it
//! ([`SuiteReport::not_available`]). Any other failure is an error: the
//! document is still written (with the error in it) and
//! [`SuiteReport::errors`] lists it; the command then exits 1.
//!
//! The short mode ([`Plan::short`]) runs every step with a few requests
//! each, for CI; the full mode ([`Plan::full`]) is what produced
//! `docs/benchmarks.md`.
//!
//! Output layout:
//!
//! ```text
//! OUT/benchmarks.md          the document
//! OUT/benchmarks/cold-*.svg  one latency plot per function (CDF, log time)
//! ```

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::client::Client;

pub mod api;
pub mod burst;
pub mod cold;
pub mod coldhost;
pub mod coldstart;
pub mod cpu;
pub mod density;
pub mod deploy;
pub mod forkfloor;
pub mod goals;
pub mod machine;
pub mod markdown;
pub mod memory;
pub mod plot;
pub mod procfs;
pub mod remote;
pub mod server;
pub mod throughput;

use coldstart::{
    ColdResult, BOOT, FORK, RESTORE_MMAP, RESTORE_NO_SPARES, RESTORE_UFFD, WARM, WARM_IDLE,
};
use machine::Machine;
use markdown::Table;
use server::{Server, ServerError};

/// A function the suite measures, and the request body it sends.
#[derive(Debug, Clone, Copy)]
pub struct Bench {
    /// The example's folder name under `examples/` (and its function name).
    pub name: &'static str,
    /// The request body, JSON.
    pub body: &'static str,
    /// Whether the fork floor (`thaw-fork-floor`, a warm `python3`) applies:
    /// Python functions only.
    pub fork_floor: bool,
}

/// The functions whose starts are measured: Python's two, then the heavy
/// Node.js and Java examples (issue 15), whose bodies run their real
/// request paths (2,000 routes matched then a category's top list; a
/// warehouse's three most valuable items through a stream and JSON).
pub static BENCHES: [Bench; 4] = [
    Bench {
        name: "hello",
        body: r#"{"name": "bench"}"#,
        fork_floor: true,
    },
    Bench {
        name: "numpy-pandas",
        body: r#"{"store": 7, "column": "price", "min": 100.0}"#,
        fork_floor: true,
    },
    Bench {
        name: "node-catalog",
        body: r#"{"path": "/categories/7/top", "limit": 5}"#,
        fork_floor: false,
    },
    Bench {
        name: "java-inventory",
        body: r#"{"warehouse": 3}"#,
        fork_floor: false,
    },
];

/// A section `--only` can pick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    /// Sustained cold starts ([`throughput::cold_section`]).
    Sustained,
    /// Bursts ([`burst`]), against single restores measured for them.
    Burst,
    /// The first invocation after a restore in both memory modes against a
    /// warm one ([`coldstart::FIRST_INVOCATION_ARMS`], interleaved; a second
    /// server for uffd mode).
    FirstInvocation,
    /// The first restore on a node with nothing local, against a local
    /// restore and a boot, on a private Garage ([`remote`], issue 18).
    Remote,
}

impl std::str::FromStr for Section {
    type Err = String;
    fn from_str(s: &str) -> Result<Section, String> {
        match s {
            "sustained" => Ok(Section::Sustained),
            "burst" | "bursts" => Ok(Section::Burst),
            "first_invocation" | "first-invocation" | "first" => Ok(Section::FirstInvocation),
            "remote" => Ok(Section::Remote),
            other => Err(format!(
                "unknown section {other:?} (--only takes sustained, burst, first_invocation and remote)"
            )),
        }
    }
}

impl SuiteConfig {
    /// The bench functions of this run.
    pub fn benches(&self) -> Vec<Bench> {
        BENCHES
            .iter()
            .copied()
            .filter(|b| self.functions.is_empty() || self.functions.iter().any(|f| f == b.name))
            .collect()
    }
}

/// Examples that need a service outside thaw to become ready (their init
/// connects to it): the suite cannot deploy them on its own.
const NEEDS_A_SERVICE: &[&str] = &["postgres-client", "node-postgres"];

/// Where things are and where the results go.
#[derive(Debug, Clone)]
pub struct SuiteConfig {
    /// Few requests per scenario (CI) instead of the full run.
    pub short: bool,
    /// Only the density section (the others are left empty).
    pub only_density: bool,
    /// Only these sections ([`Section`]), empty: all (the others are left
    /// empty; no goals are judged).
    pub only: Vec<Section>,
    /// Only these bench functions (empty: all of [`BENCHES`]); with `only`,
    /// only these examples are deployed.
    pub functions: Vec<String>,
    /// The folder receiving `benchmarks.md` and `benchmarks/`.
    pub out: PathBuf,
    /// The `thaw` binary.
    pub thaw: PathBuf,
    /// The `thaw-fork-floor` binary.
    pub fork_floor: PathBuf,
    /// The workspace (with `examples/` and `runtimes/python`).
    pub repo: PathBuf,
    /// The interpreter of the fork floor.
    pub python: PathBuf,
}

impl SuiteConfig {
    /// Where the plots go.
    pub fn plot_dir(&self) -> PathBuf {
        self.out.join("benchmarks")
    }

    /// The document's path.
    pub fn doc_path(&self) -> PathBuf {
        self.out.join("benchmarks.md")
    }
}

/// How much of everything.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Interleaved rounds of the cold-start comparison.
    pub rounds: usize,
    /// Warm requests per round.
    pub warm_requests: u64,
    /// Booted starts per round.
    pub boot_requests: u64,
    /// Restored starts per round (each restore kind).
    pub restore_requests: u64,
    /// Forks per round of the fork floor.
    pub fork_iterations: u32,
    /// Runs of the fork floor's cost (CPU per copy, [`forkfloor`]).
    pub fork_cpu_runs: usize,
    /// Forks per run of the fork floor's cost.
    pub fork_cpu_forks: u32,
    /// Extra deploys of each function for the capture figures.
    pub capture_copies: usize,
    /// Idle booted instances held for density, per bench function.
    pub density: Vec<usize>,
    /// Idle restored copies held for density, per bench function.
    pub density_restored: Vec<usize>,
    /// Measured time of each throughput round.
    pub throughput: Duration,
    /// Warm-up before each throughput round.
    pub throughput_warmup: Duration,
    /// Throughput rounds.
    pub throughput_rounds: usize,
    /// Clients of the warm throughput runs.
    pub clients: usize,
    /// Bursts of [`burst::BURST`] cold starts.
    pub bursts: usize,
    /// Rounds of the cold host (page cache dropped before each start).
    pub cold_host_rounds: usize,
    /// Rounds of the remote section (a fresh reader each).
    pub remote_rounds: usize,
}

impl Plan {
    /// The full run (a few minutes on two cores).
    pub fn full(cores: usize) -> Plan {
        Plan {
            rounds: 9,
            warm_requests: 50,
            boot_requests: 5,
            restore_requests: 10,
            fork_iterations: 30,
            fork_cpu_runs: 3,
            fork_cpu_forks: 200,
            capture_copies: 4,
            density: vec![40, 12],
            // numpy-pandas holds the goal's 1,000 copies (issue 16 goal 7).
            density_restored: vec![100, goals::DENSITY_COPIES as usize, 100],
            throughput: Duration::from_secs(5),
            throughput_warmup: Duration::from_secs(1),
            throughput_rounds: 5,
            clients: 2 * cores,
            bursts: 7,
            cold_host_rounds: 5,
            remote_rounds: 5,
        }
    }

    /// The CI run: every step, a few requests each.
    pub fn short(cores: usize) -> Plan {
        Plan {
            rounds: 2,
            warm_requests: 5,
            boot_requests: 1,
            restore_requests: 2,
            fork_iterations: 3,
            fork_cpu_runs: 1,
            fork_cpu_forks: 3,
            capture_copies: 1,
            density: vec![2, 2],
            density_restored: vec![2, 2],
            throughput: Duration::from_secs(1),
            throughput_warmup: Duration::from_millis(200),
            throughput_rounds: 1,
            clients: 2 * cores,
            bursts: 1,
            cold_host_rounds: 1,
            remote_rounds: 1,
        }
    }
}

/// Why the suite could not run at all (a scenario's failure is not one of
/// these: it is written into the document and listed in the report).
#[derive(Debug, thiserror::Error)]
pub enum SuiteError {
    /// A needed file is missing.
    #[error("{what} not found at {path}")]
    Missing {
        /// What.
        what: &'static str,
        /// Where it was looked for.
        path: String,
    },
    /// The server did not start.
    #[error(transparent)]
    Server(#[from] ServerError),
    /// The examples did not become ready.
    #[error("the examples did not become ready: {0}")]
    Examples(String),
    /// The document or plots could not be written.
    #[error("cannot write {path}: {cause}")]
    Write {
        /// The file or folder.
        path: String,
        /// What the OS said.
        cause: std::io::Error,
    },
}

/// What a finished suite left.
#[derive(Debug, Clone)]
pub struct SuiteReport {
    /// The document written.
    pub doc: PathBuf,
    /// Every scenario error (empty on success).
    pub errors: Vec<String>,
    /// Every start kind reported as not available, with its reason.
    pub not_available: Vec<String>,
}

impl SuiteReport {
    /// Whether the run passes: no scenario error, and in the short mode
    /// (CI) no start kind that was not available either.
    pub fn check(&self, short: bool) -> Result<(), String> {
        if !self.errors.is_empty() {
            return Err(format!("{} scenario(s) failed", self.errors.len()));
        }
        if short && !self.not_available.is_empty() {
            return Err(format!(
                "{} start kind(s) not available (the short suite needs every one): {}",
                self.not_available.len(),
                self.not_available.join("; ")
            ));
        }
        Ok(())
    }
}

/// Shared state of the sections.
#[derive(Debug)]
pub struct Ctx {
    /// The server's API.
    pub api: api::Api,
    /// The load generator's client.
    pub client: Client,
    /// The server's pid.
    pub server_pid: u32,
    /// The server's data directory (the fork floor takes a function's
    /// dependency layer from it).
    pub server_data: PathBuf,
    /// How much.
    pub plan: Plan,
    /// Where.
    pub cfg: SuiteConfig,
    /// CPUs of the machine.
    pub machine_cores: usize,
    /// Scenario errors so far.
    pub errors: Vec<String>,
    /// Start kinds not available, with the server's full reason.
    pub not_available: Vec<String>,
}

impl Ctx {
    /// Records a scenario error (and prints it at once).
    pub fn error(&mut self, e: String) {
        eprintln!("suite: ERROR: {e}");
        self.errors.push(e);
    }

    /// Records a start kind the server cannot do yet.
    pub fn unavailable(&mut self, why: String) {
        eprintln!("suite: not available: {why}");
        self.not_available.push(why);
    }
}

/// Runs the whole suite and writes the document (see the module docs).
pub async fn run_suite(cfg: SuiteConfig) -> Result<SuiteReport, SuiteError> {
    for (what, path) in [
        ("the thaw binary", &cfg.thaw),
        ("the fork-floor helper", &cfg.fork_floor),
        ("the interpreter", &cfg.python),
    ] {
        if !path.is_file() {
            return Err(SuiteError::Missing {
                what,
                path: path.display().to_string(),
            });
        }
    }
    let examples_dir = cfg.repo.join("examples");
    let mut examples: Vec<String> = std::fs::read_dir(&examples_dir)
        .map_err(|_| SuiteError::Missing {
            what: "the examples folder",
            path: examples_dir.display().to_string(),
        })?
        .flatten()
        .filter(|e| e.path().join("thaw.toml").is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|e| !NEEDS_A_SERVICE.contains(&e.as_str()))
        .collect();
    if !cfg.only.is_empty() {
        // Only what the picked sections measure.
        let benches = cfg.benches();
        examples.retain(|e| benches.iter().any(|b| b.name == e));
    }
    examples.sort();
    // The bench functions first, so the store's "new pages" column shows what
    // the others add on top of them.
    examples.sort_by_key(|n| {
        BENCHES
            .iter()
            .position(|b| b.name == n)
            .unwrap_or(BENCHES.len())
    });
    for b in cfg.benches() {
        if !examples.iter().any(|e| e == b.name) {
            return Err(SuiteError::Missing {
                what: "a benchmark example",
                path: examples_dir.join(b.name).display().to_string(),
            });
        }
    }
    let plot_dir = cfg.plot_dir();
    std::fs::create_dir_all(&plot_dir).map_err(|cause| SuiteError::Write {
        path: plot_dir.display().to_string(),
        cause,
    })?;

    let machine = Machine::read(&cfg.repo);
    let plan = if cfg.short {
        Plan::short(machine.cores)
    } else {
        Plan::full(machine.cores)
    };
    let began = Instant::now();
    eprintln!("suite: starting {}", cfg.thaw.display());
    // Deploy the examples one by one (not with --deploy) so the store's
    // "new pages" follow a known order.
    let server = Server::start(&cfg.thaw, &cfg.repo, &[], &[]).await?;
    let mut ctx = Ctx {
        api: server.api(),
        client: Client::new(Duration::from_secs(120)),
        server_pid: server.pid(),
        server_data: server.data_dir(),
        plan,
        cfg: cfg.clone(),
        machine_cores: machine.cores,
        errors: Vec::new(),
        not_available: Vec::new(),
    };
    let body = measure_all(&mut ctx, &examples, &server).await;
    let log_tail = server.log_tail(15);
    server.stop().await;
    let body = match body {
        Ok(b) => b,
        Err(e) => {
            eprintln!("suite: server log:\n{log_tail}");
            return Err(e);
        }
    };

    let load_end = Machine::read(&cfg.repo).load;
    let doc = render_doc(&cfg, &machine, &load_end, &ctx, &body, began.elapsed());
    let path = cfg.doc_path();
    std::fs::write(&path, doc).map_err(|cause| SuiteError::Write {
        path: path.display().to_string(),
        cause,
    })?;
    Ok(SuiteReport {
        doc: path,
        errors: ctx.errors,
        not_available: ctx.not_available,
    })
}

/// The measured sections, as Markdown (and the cold-start results).
struct Body {
    store: String,
    capture: String,
    cold: Vec<ColdResult>,
    warm_throughput: String,
    cold_throughput: String,
    bursts: String,
    cold_host: String,
    density: String,
    remote: String,
    goals: Option<goals::Figures>,
    remote_goals: Option<goals::RemoteFigures>,
}

async fn measure_all(
    ctx: &mut Ctx,
    examples: &[String],
    server: &Server,
) -> Result<Body, SuiteError> {
    if ctx.cfg.only_density {
        let (density, _) = density::section(ctx, &BENCHES, &[]).await;
        return Ok(Body {
            store: String::new(),
            capture: String::new(),
            cold: Vec::new(),
            warm_throughput: String::new(),
            cold_throughput: String::new(),
            bursts: String::new(),
            cold_host: String::new(),
            density,
            remote: String::new(),
            goals: None,
            remote_goals: None,
        });
    }
    let empty = serde_json::Map::new();
    if !ctx.cfg.only.is_empty() {
        return measure_only(ctx, examples, server).await;
    }
    for name in examples {
        eprintln!("suite: deploying {name}");
        let folder = ctx.cfg.repo.join("examples").join(name);
        deploy::deploy(&ctx.api, &folder, name, &empty)
            .await
            .map_err(|e| SuiteError::Examples(e.to_string()))?;
        deploy::wait_ready(&ctx.api, name).await.map_err(|e| {
            SuiteError::Examples(format!("{e}\nserver log:\n{}", server.log_tail(15)))
        })?;
    }
    let store = memory::store_section(ctx, examples).await;
    let (capture, capture_p50) = memory::capture_section(ctx, &BENCHES).await;
    let uffd_server = start_other_server(ctx, &coldstart::UFFD_ARGS, RESTORE_UFFD).await;
    let uffd_api = uffd_server.as_ref().map(Server::api).map_err(Clone::clone);
    let no_spares_server =
        start_other_server(ctx, &coldstart::NO_SPARES_ARGS, RESTORE_NO_SPARES).await;
    let no_spares_api = no_spares_server
        .as_ref()
        .map(Server::api)
        .map_err(Clone::clone);
    let mut cold = Vec::new();
    for bench in &BENCHES {
        cold.push(coldstart::measure(ctx, bench, &uffd_api, &no_spares_api).await);
    }
    for s in [uffd_server, no_spares_server].into_iter().flatten() {
        s.stop().await;
    }
    let restore_unavailable: Vec<Option<String>> = cold
        .iter()
        .map(|r| {
            r.arm(RESTORE_MMAP)
                .and_then(|a| a.unavailable.clone().or_else(|| a.error.clone()))
        })
        .collect();
    let warm_throughput = throughput::warm_section(ctx, &BENCHES).await;
    let (cold_throughput, sustained) =
        throughput::cold_section(ctx, &BENCHES, &restore_unavailable).await;
    let burst_results = measure_bursts(ctx, &cold, &restore_unavailable).await;
    let bursts = burst::render(&burst_results, ctx.plan.bursts);
    let cold_host_results = measure_cold_host(ctx, &restore_unavailable).await;
    let cold_host = coldhost::render(&cold_host_results, ctx.plan.cold_host_rounds);
    let (density, density_figures) = density::section(ctx, &BENCHES, &restore_unavailable).await;
    let benches = ctx.cfg.benches();
    let (remote, remote_figures) = remote::section(ctx, &benches).await;
    let figures = collect_figures(
        &cold,
        &sustained,
        &burst_results,
        &capture_p50,
        &density_figures,
        &cold_host_results,
    );
    Ok(Body {
        store,
        capture,
        cold,
        warm_throughput,
        cold_throughput,
        bursts,
        cold_host,
        density,
        remote,
        goals: Some(figures),
        remote_goals: Some(remote_figures),
    })
}

/// `--only`: deploys the run's bench functions and measures the picked
/// sections.
async fn measure_only(
    ctx: &mut Ctx,
    examples: &[String],
    server: &Server,
) -> Result<Body, SuiteError> {
    let empty = serde_json::Map::new();
    for name in examples {
        eprintln!("suite: deploying {name}");
        let folder = ctx.cfg.repo.join("examples").join(name);
        deploy::deploy(&ctx.api, &folder, name, &empty)
            .await
            .map_err(|e| SuiteError::Examples(e.to_string()))?;
        deploy::wait_ready(&ctx.api, name).await.map_err(|e| {
            SuiteError::Examples(format!("{e}\nserver log:\n{}", server.log_tail(15)))
        })?;
    }
    let benches = ctx.cfg.benches();
    let mut cold_throughput = String::new();
    if ctx.cfg.only.contains(&Section::Sustained) {
        cold_throughput = throughput::cold_section(ctx, &benches, &[]).await.0;
    }
    let mut bursts = String::new();
    if ctx.cfg.only.contains(&Section::Burst) {
        let mut out = Vec::new();
        for bench in benches.iter().filter(|b| b.name == GOAL_FUNCTION) {
            eprintln!(
                "suite: {} single restores, then {} bursts of {} cold starts of {}",
                burst::SINGLES,
                ctx.plan.bursts,
                burst::BURST,
                bench.name
            );
            let single = match burst::single_median(ctx, bench, burst::SINGLES).await {
                Ok(m) => Some(m),
                Err(e) => {
                    ctx.error(format!("single restores of {}: {e}", bench.name));
                    None
                }
            };
            match burst::measure(ctx, bench, ctx.plan.bursts).await {
                Ok(r) => out.push((r, single)),
                Err(e) => ctx.error(format!("bursts of {}: {e}", bench.name)),
            }
        }
        bursts = burst::render(&out, ctx.plan.bursts);
    }
    let mut cold = Vec::new();
    if ctx.cfg.only.contains(&Section::FirstInvocation) {
        let uffd_server = start_other_server(ctx, &coldstart::UFFD_ARGS, RESTORE_UFFD).await;
        let uffd_api = uffd_server.as_ref().map(Server::api).map_err(Clone::clone);
        let none = Err("not measured in this section".to_string());
        for bench in &benches {
            cold.push(
                coldstart::measure_arms(
                    ctx,
                    bench,
                    &uffd_api,
                    &none,
                    Some(&coldstart::FIRST_INVOCATION_ARMS),
                )
                .await,
            );
        }
        if let Ok(s) = uffd_server {
            s.stop().await;
        }
    }
    let (mut remote, mut remote_goals) = (String::new(), None);
    if ctx.cfg.only.contains(&Section::Remote) {
        let (text, figures) = remote::section(ctx, &benches).await;
        remote = text;
        remote_goals = Some(figures);
    }
    Ok(Body {
        store: String::new(),
        capture: String::new(),
        cold,
        warm_throughput: String::new(),
        cold_throughput,
        bursts,
        cold_host: String::new(),
        density: String::new(),
        remote,
        goals: None,
        remote_goals,
    })
}

/// The function the issue's goals are about.
const GOAL_FUNCTION: &str = "numpy-pandas";

/// The goal's function, for a section named `what` that needs its
/// restores: `None` (and the reason in the errors) when they are not
/// available.
fn goal_bench(
    ctx: &mut Ctx,
    restore_unavailable: &[Option<String>],
    what: &str,
) -> Option<&'static Bench> {
    let i = BENCHES.iter().position(|b| b.name == GOAL_FUNCTION)?;
    if let Some(Some(why)) = restore_unavailable.get(i) {
        ctx.error(format!(
            "{what} of {GOAL_FUNCTION}: restores not available: {why}"
        ));
        return None;
    }
    Some(&BENCHES[i])
}

/// Cold starts of the goal's function on a cold host (page cache dropped).
async fn measure_cold_host(
    ctx: &mut Ctx,
    restore_unavailable: &[Option<String>],
) -> Vec<coldhost::ColdHostResult> {
    let Some(bench) = goal_bench(ctx, restore_unavailable, "cold host") else {
        return Vec::new();
    };
    eprintln!(
        "suite: {} rounds of cold starts of {} on a cold host",
        ctx.plan.cold_host_rounds, bench.name
    );
    match coldhost::measure(ctx, bench, ctx.plan.cold_host_rounds).await {
        Ok(r) => vec![r],
        Err(e) => {
            ctx.error(format!("cold host of {}: {e}", bench.name));
            Vec::new()
        }
    }
}

/// Bursts of cold starts of the goal's function, with its single-restore
/// median beside them.
async fn measure_bursts(
    ctx: &mut Ctx,
    cold: &[ColdResult],
    restore_unavailable: &[Option<String>],
) -> Vec<(burst::BurstResult, Option<f64>)> {
    let Some(bench) = goal_bench(ctx, restore_unavailable, "bursts") else {
        return Vec::new();
    };
    eprintln!(
        "suite: {} bursts of {} cold starts of {}",
        ctx.plan.bursts,
        burst::BURST,
        bench.name
    );
    // The bursts' reference: single restores into the server at rest, as
    // each burst comes to it (its spares made and pre-mapped). The
    // cold-start section's restores come back to back, into spares made
    // (and pre-mapped, or not yet) since the previous one: its median is
    // the fallback.
    let single = match burst::single_median(ctx, bench, burst::SINGLES).await {
        Ok(m) => Some(m),
        Err(e) => {
            ctx.error(format!("single restores of {}: {e}", bench.name));
            cold.iter()
                .find(|r| r.function == bench.name)
                .and_then(|r| r.arm(RESTORE_MMAP))
                .and_then(|a| a.median())
        }
    };
    match burst::measure(ctx, bench, ctx.plan.bursts).await {
        Ok(r) => vec![(r, single)],
        Err(e) => {
            ctx.error(format!("bursts of {}: {e}", bench.name));
            Vec::new()
        }
    }
}

/// The goals' figures, from the sections' results.
fn collect_figures(
    cold: &[ColdResult],
    sustained: &[throughput::ColdRow],
    bursts: &[(burst::BurstResult, Option<f64>)],
    capture_p50: &[(String, Option<f64>)],
    density: &[density::RestoredFigure],
    cold_host: &[coldhost::ColdHostResult],
) -> goals::Figures {
    let sustained_of = |f: &str| -> Result<goals::Sustained, String> {
        let row = sustained
            .iter()
            .find(|r| r.function == f && r.kind == "restore")
            .ok_or_else(|| format!("no sustained restores of {f}"))?;
        let r = row.row.as_ref().map_err(Clone::clone)?;
        Ok(goals::Sustained {
            rate: r.rate(),
            failed: r.failed,
            cpu: r.cpu(),
            fork: row
                .fork
                .as_ref()
                .and_then(|f| f.as_ref().ok())
                .map(|f| (f.cpu(), f.first_over_warm())),
        })
    };
    let numpy_cold = cold.iter().find(|r| r.function == GOAL_FUNCTION);
    let arm_median = |name: &str| -> Result<f64, String> {
        let arm = numpy_cold
            .and_then(|r| r.arm(name))
            .ok_or_else(|| format!("no {name} arm"))?;
        arm.median()
            .ok_or_else(|| format!("{name}: {}", coldstart::absent(arm)))
    };
    let burst = match bursts.iter().find(|(r, _)| r.function == GOAL_FUNCTION) {
        Some((r, Some(single))) => r
            .last_median()
            .map(|l| (l, *single))
            .ok_or_else(|| "no burst answered".to_string()),
        Some((_, None)) => Err("no single-restore median".into()),
        None => Err("the bursts did not run".into()),
    };
    let burst_first = bursts
        .iter()
        .find(|(r, _)| r.function == GOAL_FUNCTION)
        .and_then(|(r, _)| r.first_last());
    let on_demand = arm_median(RESTORE_NO_SPARES).and_then(|none| {
        let arm = numpy_cold
            .and_then(|r| r.arm(RESTORE_MMAP))
            .ok_or("no restore (mmap) arm")?;
        if arm.spare_hit.is_empty() {
            return Err("no restore of the default server found a spare ready".into());
        }
        Ok((none, arm.spare_hit.value_at_quantile(0.5) as f64))
    });
    let floor = arm_median(RESTORE_MMAP).and_then(|r| Ok((r, arm_median(FORK)?)));
    let floor_at_rest = bursts
        .iter()
        .find(|(r, _)| r.function == GOAL_FUNCTION)
        .and_then(|(_, single)| *single);
    let first_over = |name: &str, warm_name: &str| -> Result<f64, String> {
        let r = numpy_cold.ok_or("no cold starts")?;
        let (Some(warm), Some(arm)) = (r.arm(warm_name), r.arm(name)) else {
            return Err(format!("no {name} or {warm_name} arm"));
        };
        if !arm.measured() || arm.handler.is_empty() || warm.handler.is_empty() {
            return Err(format!("{name}: {}", coldstart::absent(arm)));
        }
        Ok(arm.handler.value_at_quantile(0.5) as f64
            / (warm.handler.value_at_quantile(0.5) as f64).max(1.0))
    };
    goals::Figures {
        hello: sustained_of("hello"),
        numpy: sustained_of(GOAL_FUNCTION),
        burst,
        burst_first,
        on_demand,
        floor,
        floor_at_rest,
        first: (
            first_over(RESTORE_MMAP, WARM),
            first_over(RESTORE_UFFD, WARM),
        ),
        first_idle: (
            first_over(RESTORE_MMAP, WARM_IDLE),
            first_over(RESTORE_UFFD, WARM_IDLE),
        ),
        capture: capture_p50
            .iter()
            .find(|(f, _)| f == GOAL_FUNCTION)
            .and_then(|(_, p)| *p)
            .ok_or_else(|| "no capture figures".to_string()),
        density: density
            .iter()
            .find(|(f, _, _)| f == GOAL_FUNCTION)
            .map(|(_, n, b)| (*n, *b))
            .ok_or_else(|| "no restored density row".to_string()),
        cold_host: cold_host
            .iter()
            .find(|r| r.function == GOAL_FUNCTION)
            .and_then(coldhost::ColdHostResult::speedup)
            .ok_or_else(|| "the cold-host rounds did not run".to_string()),
    }
}

/// Starts another server with `args` (the uffd one, the one without
/// spares) with the bench functions ready, for the arm `arm`; or says why
/// there is none (a `thaw serve` without the flag is "not available",
/// anything else an error).
async fn start_other_server(ctx: &mut Ctx, args: &[&str], arm: &str) -> Result<Server, String> {
    let flags = args.join(" ");
    eprintln!("suite: starting another server with {flags}");
    let server = match Server::start(&ctx.cfg.thaw, &ctx.cfg.repo, args, &[]).await {
        Ok(s) => s,
        Err(ServerError::NotReady { log, .. }) if log.contains("unexpected argument") => {
            let first = log
                .lines()
                .find(|l| l.contains("error"))
                .unwrap_or(&log)
                .trim()
                .to_owned();
            ctx.unavailable(format!(
                "{arm}: `thaw serve {flags}` refused to start: {first}"
            ));
            return Err(format!("thaw serve has no `{}` flag yet", args[0]));
        }
        Err(e) => {
            ctx.error(format!("the server for {arm}: {e}"));
            return Err(format!("error: {e}"));
        }
    };
    let api = server.api();
    let empty = serde_json::Map::new();
    for b in &ctx.cfg.benches() {
        let folder = ctx.cfg.repo.join("examples").join(b.name);
        let ready = match deploy::deploy(&api, &folder, b.name, &empty).await {
            Ok(()) => deploy::wait_ready(&api, b.name).await.map(|_| ()),
            Err(e) => Err(e),
        };
        if let Err(e) = ready {
            ctx.error(format!("the server for {arm}: {e}"));
            server.stop().await;
            return Err(format!("error: {e}"));
        }
    }
    Ok(server)
}

fn render_doc(
    cfg: &SuiteConfig,
    m: &Machine,
    load_end: &str,
    ctx: &Ctx,
    body: &Body,
    took: Duration,
) -> String {
    let mut mode = match (cfg.short, cfg.only_density) {
        (true, true) => "short, density only",
        (true, false) => "short",
        (false, true) => "full, density only",
        (false, false) => "full",
    }
    .to_string();
    if !cfg.only.is_empty() {
        mode.push_str(&format!(", only {}", only_flags(cfg)));
    }
    let mut d = String::new();
    d.push_str("# thaw benchmarks\n\n");
    d.push_str(
        "Written by the benchmark suite (`thaw-loadtest suite`, `loadtest/src/suite.rs`); do not edit by hand, \
         run it again. Every figure below comes from the same run.\n\n",
    );
    let mut t = Table::new(&["", ""]);
    t.row(vec!["date".into(), m.date.clone()]);
    t.row(vec!["commit".into(), m.commit.clone()]);
    t.row(vec![
        "machine".into(),
        format!(
            "{}, {} CPUs, {:.1} GiB",
            m.cpu,
            m.cores,
            m.memory as f64 / (1u64 << 30) as f64
        ),
    ]);
    t.row(vec!["kernel".into(), format!("Linux {}", m.kernel)]);
    t.row(vec![
        "load average (1 min) at start, at end".into(),
        format!("{}, {load_end}", m.load),
    ]);
    t.row(vec![
        "mode".into(),
        format!("{mode} ({} s in all)", took.as_secs()),
    ]);
    t.row(vec![
        "server".into(),
        format!(
            "`thaw serve --allow-forced-cold` on loopback, temporary data directory (defaults: 2 spare sandboxes per version, \
             memory mode mmap); for two arms a second server with `{}` and a third with `{}`, each with the bench functions \
             deployed; generator and servers share the {} cores",
            coldstart::UFFD_ARGS.join(" "),
            coldstart::NO_SPARES_ARGS.join(" "),
            m.cores
        ),
    ]);
    d.push_str(&t.render());

    d.push_str("\n## Goals\n\n");
    match &body.goals {
        Some(f) => d.push_str(&goals::render(f)),
        None => d.push_str("Not judged: this run measured only one section.\n"),
    }
    if let Some(f) = &body.remote_goals {
        d.push('\n');
        d.push_str(&goals::render_remote(f));
    }

    d.push_str("\n## Summary\n\nRatios of medians (median of per-round medians, interleaved rounds) with their 95% paired-bootstrap interval, beside each restore's absolute p50 (all its latencies pooled); the fork floor applies to Python functions only (–).\n\n");
    let mut s = Table::new(&[
        "function",
        ">restore (mmap) p50",
        "restore (mmap) ÷ boot",
        "restore (mmap) ÷ fork floor",
        ">restore (uffd) p50",
        "restore (uffd) ÷ boot",
        "restore (uffd) ÷ fork floor",
        "boot ÷ warm",
        "fork floor ÷ warm",
    ]);
    for r in &body.cold {
        s.row(vec![
            r.function.clone(),
            p50_cell(r, RESTORE_MMAP),
            coldstart::ratio_cell(r, RESTORE_MMAP, BOOT),
            coldstart::ratio_cell(r, RESTORE_MMAP, FORK),
            p50_cell(r, RESTORE_UFFD),
            coldstart::ratio_cell(r, RESTORE_UFFD, BOOT),
            coldstart::ratio_cell(r, RESTORE_UFFD, FORK),
            coldstart::ratio_cell(r, BOOT, WARM),
            coldstart::ratio_cell(r, FORK, WARM),
        ]);
    }
    d.push_str(&s.render());

    d.push_str("\n## Cold starts\n\n");
    d.push_str(&format!(
        "Each start kind of a function, one request at a time: **{WARM}** (an idle instance), **{WARM_IDLE}** (the same, one \
         request every 50 ms: its caches as cold as a fresh copy's), **{BOOT}** (`x-thaw-cold: boot`: a fresh \
         sandbox, the runtime started and the handler's module imported, then the request; a forced boot runs none of the \
         function's `warmup` events, so the measured request is the handler's first call in that process), **{RESTORE_MMAP}** \
         (`x-thaw-cold: restore`: a copy of the snapshot with its private memory mapped from the image, into a pre-made \
         sandbox when one is ready), **{RESTORE_UFFD}** (the same on a second server started with `thaw serve {}`, whose \
         copies get their memory through userfaultfd), **{RESTORE_NO_SPARES}** (the same as {RESTORE_MMAP} on a third server \
         started with `thaw serve {}`: every restore makes its sandbox on demand), and the **{FORK}**: `thaw-fork-floor`, which \
         forks a warm `python3` running the same handler outside thaw and HTTP and times fork → answer; no restore can be \
         much faster.\n\n",
        coldstart::UFFD_ARGS.join(" "),
        coldstart::NO_SPARES_ARGS.join(" ")
    ));
    for r in &body.cold {
        d.push_str(&coldstart::render(r, ctx.plan.rounds));
        d.push('\n');
    }

    d.push_str(
        "### Spare sandboxes\n\nEvery restore answer says whether a pre-made sandbox was ready (`x-thaw-spare: hit`) or one was \
         made for it (`miss`): the hit rate of each restore arm above and its latency split by hit and miss.\n\n",
    );
    d.push_str(&coldstart::render_spares(&body.cold));

    d.push_str("\n## First invocation after a start\n\nThe server's handler time (`x-thaw-duration-us`) of the answers above: for boot and restore every answer is the first invocation of a fresh instance (after a restore: pages faulted in, runtime told it is a copy); for warm, a steady state.\n\n");
    d.push_str(&coldstart::render_first_invocation(&body.cold));

    d.push_str("\n## Capture\n\n");
    d.push_str(&body.capture);
    d.push_str("\n## Store: dedup across the examples\n\n");
    d.push_str(&body.store);
    d.push_str("\n## Density\n\n");
    d.push_str(&body.density);
    d.push_str("\n## Warm throughput\n\n");
    d.push_str(&body.warm_throughput);
    d.push_str("\n## Sustained cold starts\n\n");
    d.push_str(&body.cold_throughput);
    d.push_str("\n## Bursts\n\n");
    d.push_str(&body.bursts);
    d.push_str("\n## A cold host\n\n");
    d.push_str(&body.cold_host);
    d.push_str("\n## Remote restore\n\n");
    d.push_str(&body.remote);

    d.push_str("\n## Not available yet\n\n");
    if ctx.not_available.is_empty() {
        d.push_str("Every start kind ran.\n");
    } else {
        d.push_str("Start kinds the server cannot do yet, with what it answered; these rows fill in by themselves on the next run once it can (the short mode fails on them).\n\n");
        for n in &ctx.not_available {
            d.push_str(&format!("* {}\n", n.replace('\n', " ")));
        }
    }
    d.push_str("\n## Errors\n\n");
    if ctx.errors.is_empty() {
        d.push_str("None: every scenario ran (start kinds the server cannot do yet are marked \"not available\" above).\n");
    } else {
        for e in &ctx.errors {
            d.push_str(&format!("* {}\n", e.replace('\n', " ")));
        }
    }
    d.push_str(&format!(
        "\n## How to reproduce\n\n```\ncargo build --release -p server -p loadtest\ntarget/release/thaw-loadtest suite{}\n```\n\n\
         Needs root (sandboxes), `{}` with pip, and the package index for the examples' `requirements.txt` (numpy and pandas are installed into their layer; the fork floor imports them from it). Plan of this run: {} rounds; per round {} warm, {} boot, {} restore \
         requests and {} forks; {} extra captures per function; {:?} idle booted and {:?} restored copies for density; throughput {} rounds of {:?} with {} clients (warm) and {} clients (cold starts); {} bursts of {}; {} rounds of the remote section (Garage: `$THAW_GARAGE`, `garage` on `PATH` or `~/.cargo/bin/garage`, or `--garage`).\n",
        match (cfg.short, cfg.only_density, cfg.only.is_empty()) {
            (true, true, _) => " --short --only-density --out DIR".to_string(),
            (false, true, _) => " --only-density --out DIR".to_string(),
            (short, false, false) => format!(
                "{} --only {} --out DIR",
                if short { " --short" } else { "" },
                only_flags(cfg)
            ),
            (true, false, true) => " --short --out DIR".to_string(),
            (false, false, true) => String::new(),
        },
        cfg.python.display(),
        ctx.plan.rounds,
        ctx.plan.warm_requests,
        ctx.plan.boot_requests,
        ctx.plan.restore_requests,
        ctx.plan.fork_iterations,
        ctx.plan.capture_copies,
        ctx.plan.density,
        ctx.plan.density_restored,
        ctx.plan.throughput_rounds,
        ctx.plan.throughput,
        ctx.plan.clients,
        throughput::COLD_CLIENTS,
        ctx.plan.bursts,
        burst::BURST,
        ctx.plan.remote_rounds,
    ));
    d
}

/// The `--only` (and `--functions`) arguments of this run.
fn only_flags(cfg: &SuiteConfig) -> String {
    let sections: Vec<&str> = cfg
        .only
        .iter()
        .map(|s| match s {
            Section::Sustained => "sustained",
            Section::Burst => "burst",
            Section::FirstInvocation => "first_invocation",
            Section::Remote => "remote",
        })
        .collect();
    let mut out = sections.join(",");
    if !cfg.functions.is_empty() {
        out.push_str(&format!(" --functions {}", cfg.functions.join(",")));
    }
    out
}

/// The absolute p50 (every latency of the arm pooled) shown beside the
/// ratios, or `–`.
fn p50_cell(r: &ColdResult, arm: &str) -> String {
    r.arm(arm)
        .filter(|a| a.measured())
        .and_then(|a| a.pooled())
        .map_or_else(|| "–".into(), |p| markdown::us(Some(p.p50 as f64)))
}

/// The sibling of the running executable named `name` (where cargo puts
/// the binaries of one profile), if it exists.
pub fn sibling_binary(name: &str) -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let p = exe.parent()?.join(name);
    p.is_file().then_some(p)
}

/// True if `path` looks like the workspace root (has `examples/` and
/// `runtimes/python`).
pub fn is_repo(path: &Path) -> bool {
    path.join("examples").is_dir() && path.join("runtimes/python").is_dir()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_runs_fail_on_a_start_kind_not_available() {
        let mut report = SuiteReport {
            doc: PathBuf::from("x.md"),
            errors: Vec::new(),
            not_available: vec![
                "restore (uffd + prefetch): `thaw serve --memory-mode uffd` refused to start"
                    .into(),
            ],
        };
        assert_eq!(
            report.check(false),
            Ok(()),
            "the full run writes it down and passes"
        );
        let err = report.check(true).unwrap_err();
        assert!(
            err.starts_with("1 start kind(s) not available (the short suite needs every one): restore (uffd + prefetch)"),
            "{err}"
        );
        report.errors.push("boom".into());
        assert_eq!(report.check(false), Err("1 scenario(s) failed".into()));
        report.not_available.clear();
        report.errors.clear();
        assert_eq!(report.check(true), Ok(()));
    }
}
