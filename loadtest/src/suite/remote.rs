//! The remote section (issue 18): the first restore of a function on a
//! node that holds none of its pages, against a local restore and a boot on
//! that node, and the bytes that first restore fetched against the working
//! set.
//!
//! ```text
//! Garage        a private one (test-support/garage.rs: single-node layout,
//!               one bucket, one imported key, region "garage", free ports,
//!               its data in a temporary folder), a generated store key
//! writer A      thaw serve --store-writer --store-url s3://BUCKET/suite
//!               (AWS_* of that Garage); the remote bench functions
//!               deployed, each version's snapshot complete in the bucket
//!               (`thaw store remote-status ID` exits 0: manifest last)
//! per round     a reader B with an empty data directory on the same store:
//!   wait        B's log says it restores each function's snapshot lazily
//!   for each function, in turn:
//!     spare     B at rest; when B makes spares of snapshots it restores
//!               lazily (unless `THAW_LAZY_SPARES=0`), a pre-made sandbox of the
//!               function ready, as a deployment's reader makes once it
//!               sees the version (up to 5 s); `THAW_SUITE_REMOTE_SPARE_WAIT_MS`
//!               sets the wait whatever B does, 0 the first restore at
//!               once; whether it was a spare hit is reported
//!     first     forced restore (`x-thaw-cold: restore`), send → whole answer:
//!               lazy (uffd, pages from the bucket); B counts it in
//!               thaw_remote_lazy_restores_total{result="ok"}
//!     complete  B's log says the snapshot is complete locally
//!     local     forced restore again, once B has a pre-made sandbox ready:
//!               from B's local store (mmap); not measured: it records B's
//!               working set (B's copies do not use the bucket's)
//!     local     the same again, measured
//!     boot      forced boot
//!   B stopped (its data directory removed)
//! ```
//!
//! Bytes of the first restore: `thaw_remote_fetched_bytes` of B after the
//! completion minus before the first request, less what the completion
//! itself fetched (its log line's `bytes_fetched`): the page server's
//! fetches for that copy (working set, prepare-time pages, faults), sealed
//! slots as read. That holds while the completion starts after the first
//! restore's faults: B starts it once its page source fetched nothing for
//! 150 ms (`remote_store::lazy::COMPLETE_QUIET`); when it started at the
//! resume (before 2026-12-06, or with `THAW_LAZY_COMPLETE_AT_ONCE=1`), the
//! faults it overlapped counted as its own and this figure was short of
//! them (numpy-pandas: 6.5 MiB reported of 8.8 MiB fetched).
//! The working set is what the bucket holds for the version
//! (`working_set_pages` of B's "restore lazily" line: the pages it lists).
//! A listed page over a mapped file is not in the bucket and never
//! fetched: the goal compares with the set's stored part, which B's
//! "copy resumed" line reports (`working_set_stored_pages`). A server that
//! does not report it gives a bound instead: every stored page of the set
//! is fetched before the copy resumes, so the stored part is at most
//! `min(listed, fetched at the resume)` pages, the ratio is then a lower
//! bound, and the goal's verdict says "met" only with the exact figure
//! ([`RemoteFigures::bytes`]).
//!
//! An A/B in the same run: `THAW_SUITE_REMOTE_OLD=NAME=VALUE[,...]` starts
//! every other reader with those variables (the switch of an old
//! behaviour), the two arms interleaved round by round and reported apart
//! (the old arm's rows are named `function (NAME=VALUE)`); issue 18's goals
//! are judged on the first arm. `THAW_SUITE_REMOTE_LOGS=DIR` keeps each
//! reader's log there (`reader-ROUND[-old].log`; with
//! `THAW_LOG=info,pool=debug,remote_store=debug,server=debug` they hold the
//! timeline of the first restore).
//!
//! A machine without Garage reports the start kind as not available
//! (`suite --short` fails on it, like on any start kind it cannot run).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::Value;

use crate::compare::median;
use crate::target::{ColdStart, Target};

use super::api::Api;
use super::markdown::{mib, ratio, us, Table};
use super::server::{Env, Server};
use super::{deploy, Bench, Ctx};

#[allow(missing_debug_implementations)]
#[path = "../../../test-support/garage.rs"]
mod garage;

/// The start kind's name (in "Not available yet" and the tables).
pub const REMOTE: &str = "restore (remote, first on an empty node)";
/// The functions the section measures (the issue names numpy-pandas; hello
/// beside it).
pub const FUNCTIONS: [&str; 2] = ["hello", "numpy-pandas"];
/// The bucket's prefix.
const PREFIX: &str = "suite";
/// Longest wait for an upload, for B to see a version, for a completion.
const WAIT: Duration = Duration::from_secs(600);
/// B's log line when it will restore a snapshot lazily.
const LINE_LAZY: &str = "cold starts restore the snapshot lazily from the shared store";
/// B's log line when a lazy copy resumed.
const LINE_RESUMED: &str = "lazy restore: the copy resumed (pages from the shared store)";
/// B's log line when a local copy recorded B's working set.
const LINE_RECORDED: &str = "working set recorded";
/// B's log line when the snapshot is complete locally.
const LINE_COMPLETE: &str =
    "snapshot complete locally; cold starts restore it in the configured mode";

/// One round of one function on a fresh reader.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RemoteRound {
    /// First (lazy) forced restore, µs.
    pub first: f64,
    /// Whether the first restore claimed a spare (`x-thaw-spare: hit`).
    pub first_spare: bool,
    /// Forced restore once the snapshot is local, µs.
    pub local: f64,
    /// Forced boot, µs.
    pub boot: f64,
    /// Bytes the page server fetched for the first restore.
    pub bytes: u64,
    /// Pages the bucket's working set lists (0: none in the bucket).
    pub working_set_pages: u64,
    /// Pages fetched before the copy resumed.
    pub pages_at_resume: u64,
    /// Pages of the working set the bucket stores (0: not reported).
    pub working_set_stored_pages: u64,
    /// Bytes of the snapshot object and working set (read before).
    pub bytes_metadata: u64,
}

/// The rounds of one function.
#[derive(Debug, Clone, Default)]
pub struct RemoteResult {
    /// The function.
    pub function: String,
    /// Whether the bucket held a working set for its version.
    pub working_set_in_bucket: bool,
    /// Each round.
    pub rounds: Vec<RemoteRound>,
    /// Why rounds are missing, if any failed.
    pub error: Option<String>,
}

/// A quantile of `values` (nearest rank), `None` when empty.
pub fn quantile(values: &[f64], q: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    Some(v[rank - 1])
}

impl RemoteResult {
    fn column(&self, f: impl Fn(&RemoteRound) -> f64) -> Vec<f64> {
        self.rounds.iter().map(f).collect()
    }

    fn med(&self, f: impl Fn(&RemoteRound) -> f64) -> Option<f64> {
        (!self.rounds.is_empty()).then(|| median(&self.column(f)))
    }

    /// Median of the per-round ratios first ÷ local (paired rounds).
    pub fn first_over_local(&self) -> Option<f64> {
        self.med(|r| r.first / r.local.max(1.0))
    }

    /// Median of the per-round ratios first ÷ boot.
    pub fn first_over_boot(&self) -> Option<f64> {
        self.med(|r| r.first / r.boot.max(1.0))
    }

    /// Median bytes fetched by the first restore.
    pub fn bytes(&self) -> Option<f64> {
        self.med(|r| r.bytes as f64)
    }

    /// The working set's stored part in bytes (median of rounds) and
    /// whether it is exact: as the server reported it, or else at most
    /// `min(listed, fetched at the resume)` pages; `None` without a
    /// working set in the bucket.
    pub fn working_set_bound(&self) -> Option<(f64, bool)> {
        if !self.working_set_in_bucket || self.rounds.is_empty() {
            return None;
        }
        if self.rounds.iter().all(|r| r.working_set_stored_pages > 0) {
            return self
                .med(|r| (r.working_set_stored_pages * PAGE) as f64)
                .map(|b| (b, true));
        }
        self.med(|r| (r.working_set_pages.min(r.pages_at_resume) * PAGE) as f64)
            .filter(|b| *b > 0.0)
            .map(|b| (b, false))
    }
}

/// Pre-made sandboxes B has ready before its local restore (of the
/// server's default 2 per version).
const LOCAL_SPARES: u64 = 1;

/// Longest wait for a spare before the first restore, ms, when the reader
/// makes spares of snapshots it restores lazily (unless
/// `THAW_LAZY_SPARES=0`); a reader that makes none is not waited for.
const FIRST_SPARE_WAIT_MS: u64 = 5000;
/// Sets the wait for a spare before the first restore, whatever the
/// reader's setting (0: the first restore once B is at rest).
const ENV_SPARE_WAIT: &str = "THAW_SUITE_REMOTE_SPARE_WAIT_MS";
/// The reader's switch of spares for lazily restored snapshots (pool's
/// `manager::spares::LAZY_SPARES_ENV`; on unless `0`).
const ENV_LAZY_SPARES: &str = "THAW_LAZY_SPARES";

/// How long to wait for a spare before the first restore on a reader
/// started with `env` (over the suite's own environment): [`ENV_SPARE_WAIT`]
/// if set, else [`FIRST_SPARE_WAIT_MS`] when the reader makes spares of
/// lazily restored snapshots and nothing when it does not (a wait for a
/// spare that never comes cost 5 s per function per round).
fn first_spare_wait(env: &Env) -> Duration {
    if let Some(ms) = std::env::var(ENV_SPARE_WAIT)
        .ok()
        .and_then(|v| v.parse().ok())
    {
        return Duration::from_millis(ms);
    }
    let set = env.set.iter().rev().find(|(k, _)| k == ENV_LAZY_SPARES);
    let lazy_spares = match set {
        Some((_, v)) => v != "0",
        None => {
            env.remove.iter().any(|k| k == ENV_LAZY_SPARES)
                || std::env::var(ENV_LAZY_SPARES).map_or(true, |v| v != "0")
        }
    };
    Duration::from_millis(if lazy_spares { FIRST_SPARE_WAIT_MS } else { 0 })
}

/// Bytes of a page.
const PAGE: u64 = 4096;

/// The figures of issue 18's goals (numpy-pandas); `Err` says why one is
/// missing.
#[derive(Debug, Clone)]
pub struct RemoteFigures {
    /// First remote restore ÷ local restore (median of rounds).
    pub first_over_local: Result<f64, String>,
    /// First remote restore ÷ boot.
    pub first_over_boot: Result<f64, String>,
    /// Bytes fetched by the first restore and the working set's stored
    /// part: `(bytes, set, exact)`, `exact` false when `set` is only an
    /// upper bound of the stored part (the ratio then a lower bound).
    pub bytes: Result<(f64, f64, bool), String>,
}

impl RemoteFigures {
    /// The figures of `function` in `results` (or why there are none).
    pub fn of(results: &[RemoteResult], function: &str, why_none: Option<&str>) -> RemoteFigures {
        let r = results.iter().find(|r| r.function == function);
        let missing = || match (why_none, r.and_then(|r| r.error.clone())) {
            (Some(w), _) => w.to_owned(),
            (None, Some(e)) => e,
            (None, None) => format!("the remote section did not measure {function}"),
        };
        let some = r.filter(|r| !r.rounds.is_empty());
        RemoteFigures {
            first_over_local: some
                .and_then(RemoteResult::first_over_local)
                .ok_or_else(missing),
            first_over_boot: some
                .and_then(RemoteResult::first_over_boot)
                .ok_or_else(missing),
            bytes: match some {
                None => Err(missing()),
                Some(r) if !r.working_set_in_bucket => {
                    Err("no working set in the bucket for this version".into())
                }
                Some(r) => match (r.bytes(), r.working_set_bound()) {
                    (Some(b), Some((ws, exact))) => Ok((b, ws, exact)),
                    _ => Err("no working set pages fetched".into()),
                },
            },
        }
    }
}

/// The function issue 18's goals are about.
const GOAL_FUNCTION: &str = "numpy-pandas";

/// What the section measured, as Markdown, and the figures of issue 18's
/// goals.
pub async fn section(ctx: &mut Ctx, benches: &[Bench]) -> (String, RemoteFigures) {
    let benches: Vec<Bench> = benches
        .iter()
        .filter(|b| FUNCTIONS.contains(&b.name))
        .copied()
        .collect();
    if benches.is_empty() {
        let why = "none of this run's functions is one of the remote section's";
        return (
            format!("Not measured: {why}.\n"),
            RemoteFigures::of(&[], GOAL_FUNCTION, Some(why)),
        );
    }
    let rounds = ctx.plan.remote_rounds;
    eprintln!(
        "suite: remote: {rounds} rounds of a fresh reader's first restore of {}",
        benches
            .iter()
            .map(|b| b.name)
            .collect::<Vec<_>>()
            .join(", ")
    );
    let results = match measure(ctx, &benches, rounds).await {
        Ok(r) => r,
        Err(Failure::Unavailable(why)) => {
            ctx.unavailable(format!("{REMOTE}: {why}"));
            return (
                format!("Not available: {why}.\n"),
                RemoteFigures::of(&[], GOAL_FUNCTION, Some(&why)),
            );
        }
        Err(Failure::Error(e)) => {
            ctx.error(format!("remote: {e}"));
            return (
                format!("Error: {}\n", e.replace('\n', " ")),
                RemoteFigures::of(&[], GOAL_FUNCTION, Some(&e)),
            );
        }
    };
    for r in &results {
        if let Some(e) = &r.error {
            ctx.error(format!("remote, {}: {e}", r.function));
        }
    }
    (
        render(&results, rounds),
        RemoteFigures::of(&results, GOAL_FUNCTION, None),
    )
}

/// Why the section did not run.
#[derive(Debug)]
enum Failure {
    /// A prerequisite of the machine is missing (no Garage).
    Unavailable(String),
    /// Something failed.
    Error(String),
}

/// The store both nodes share, and the writer.
struct Shared {
    garage: garage::Garage,
    env: Env,
    url: String,
    key_file: PathBuf,
    layers: PathBuf,
}

impl Shared {
    fn args<'a>(&'a self, role: &'a str) -> Vec<&'a str> {
        vec![
            role,
            "--store-url",
            &self.url,
            "--store-key-file",
            self.key_file.to_str().unwrap_or_default(),
            "--layer-cache",
            self.layers.to_str().unwrap_or_default(),
            "--log-format",
            "json",
        ]
    }
}

/// The garage binary (`$THAW_GARAGE`, `garage` on `PATH`,
/// `~/.cargo/bin/garage`), if it is a file.
pub fn binary() -> Result<PathBuf, String> {
    let bin = garage::binary()?;
    if bin.is_file() {
        Ok(bin)
    } else {
        Err(format!(
            "the garage binary is missing: {} (from $THAW_GARAGE) is not a file",
            bin.display()
        ))
    }
}

async fn measure(
    ctx: &mut Ctx,
    benches: &[Bench],
    rounds: usize,
) -> Result<Vec<RemoteResult>, Failure> {
    let bin = binary().map_err(Failure::Unavailable)?;
    eprintln!(
        "suite: remote: starting a private Garage ({})",
        bin.display()
    );
    let garage = tokio::task::spawn_blocking(garage::Garage::start)
        .await
        .map_err(|e| Failure::Error(e.to_string()))?
        .map_err(|e| Failure::Error(format!("starting Garage: {e}")))?;
    let key: String = (0..32)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect();
    let key_file = garage.dir().join("store.key");
    std::fs::write(&key_file, key).map_err(|e| Failure::Error(e.to_string()))?;
    let env = Env {
        set: garage
            .env()
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect(),
        // Settings of a developer's shell (`eval "$(./dev.sh s3)"`) that
        // would win over the flags.
        remove: [
            "THAW_STORE_KEY",
            "THAW_STORE_URL",
            "THAW_STORE_WRITER",
            "THAW_STORE_KEY_FILE",
            "THAW_STORE_CACHE_MB",
            "THAW_ADVERTISE_URL",
        ]
        .map(String::from)
        .to_vec(),
    };
    // One layer cache for A and every B (thaw allows sharing one on a
    // machine): the suite's own, so numpy and pandas are installed once.
    let layers = std::env::var_os("THAW_LAYER_CACHE")
        .map_or_else(|| ctx.server_data.join("layers"), PathBuf::from);
    let shared = Shared {
        url: format!("s3://{}/{PREFIX}", garage::BUCKET),
        garage,
        env,
        key_file,
        layers,
    };
    let writer = Server::start_with_env(
        &ctx.cfg.thaw,
        &ctx.cfg.repo,
        &shared.args("--store-writer"),
        &[],
        &shared.env,
    )
    .await
    .map_err(|e| Failure::Error(format!("the writer: {e}")))?;
    let out = measure_on(ctx, &shared, &writer, benches, rounds).await;
    if out.is_err() {
        eprintln!("suite: remote: the writer's log:\n{}", writer.log_tail(15));
    }
    writer.stop().await;
    drop(shared.garage);
    out
}

/// Deploys `benches` on `writer`, waits for their uploads, then the rounds.
async fn measure_on(
    ctx: &mut Ctx,
    shared: &Shared,
    writer: &Server,
    benches: &[Bench],
    rounds: usize,
) -> Result<Vec<RemoteResult>, Failure> {
    let api = writer.api();
    let mut results = Vec::new();
    let mut ids = Vec::new();
    let empty = serde_json::Map::new();
    for b in benches {
        eprintln!("suite: remote: deploying {} on the writer", b.name);
        let folder = ctx.cfg.repo.join("examples").join(b.name);
        deploy::deploy(&api, &folder, b.name, &empty)
            .await
            .map_err(|e| Failure::Error(e.to_string()))?;
        let record = deploy::wait_ready(&api, b.name)
            .await
            .map_err(|e| Failure::Error(e.to_string()))?;
        let id = record
            .pointer("/snapshot/id")
            .and_then(Value::as_str)
            .ok_or_else(|| Failure::Error(format!("{}: no snapshot in {record}", b.name)))?
            .to_owned();
        let status = uploaded(ctx, shared, &id).await.map_err(Failure::Error)?;
        let ws = status
            .pointer("/snapshot/working_set")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        eprintln!(
            "suite: remote: {} uploaded (snapshot {id}, {} pages, {} working set in the bucket)",
            b.name,
            status
                .pointer("/snapshot/pages")
                .map_or_else(|| "?".into(), Value::to_string),
            if ws { "a" } else { "no" }
        );
        ids.push(id);
        results.push(RemoteResult {
            function: b.name.to_owned(),
            working_set_in_bucket: ws,
            ..RemoteResult::default()
        });
    }
    // An A/B in the same run: with THAW_SUITE_REMOTE_OLD, every other
    // reader runs with those variables (the old behaviour's switch), the
    // arms interleaved round by round; the goals are judged on the build
    // as it is (the first arm).
    let old_arm = old_arm_env(&shared.env).map_err(Failure::Error)?;
    let mut old_results: Vec<RemoteResult> = results
        .iter()
        .map(|r| RemoteResult {
            function: format!("{} ({})", r.function, old_arm.as_ref().map_or("", |a| &a.0)),
            ..r.clone()
        })
        .collect();
    let arms: Vec<Option<&(String, Env)>> = match &old_arm {
        Some(arm) => vec![None, Some(arm)],
        None => vec![None],
    };
    let logs = std::env::var_os(ENV_LOGS).map(PathBuf::from);
    'rounds: for round in 1..=rounds {
        for arm in &arms {
            let env = match arm {
                Some((_, env)) => env,
                None => &shared.env,
            };
            let reader = Server::start_with_env(
                &ctx.cfg.thaw,
                &ctx.cfg.repo,
                &shared.args("--store-writer=false"),
                &[],
                env,
            )
            .await
            .map_err(|e| Failure::Error(format!("round {round}: a reader: {e}")))?;
            let res = if arm.is_some() {
                &mut old_results
            } else {
                &mut results
            };
            let r = one_round(
                ctx,
                &reader,
                benches,
                &ids,
                res,
                round,
                first_spare_wait(env),
            )
            .await;
            if let Some(dir) = &logs {
                let name = format!(
                    "reader-{round}{}.log",
                    if arm.is_some() { "-old" } else { "" }
                );
                let _ = std::fs::create_dir_all(dir);
                let _ = std::fs::write(dir.join(name), reader.log_text());
            }
            if let Err(e) = &r {
                eprintln!("suite: remote: the reader's log:\n{}", reader.log_tail(15));
                let e = format!("round {round}: {e}");
                for res in res.iter_mut() {
                    res.error.get_or_insert_with(|| e.clone());
                }
            }
            reader.stop().await;
            if r.is_err() {
                break 'rounds;
            }
        }
    }
    if old_arm.is_some() {
        results.extend(old_results);
    }
    Ok(results)
}

/// The environment of the A/B's old arm: `NAME=VALUE` pairs, comma
/// separated, set on every other reader.
const ENV_OLD: &str = "THAW_SUITE_REMOTE_OLD";
/// A folder to keep each reader's log in (`reader-ROUND[-old].log`).
const ENV_LOGS: &str = "THAW_SUITE_REMOTE_LOGS";

/// The old arm's label and environment (`shared`'s and the pairs
/// [`ENV_OLD`] names), if it asks for one.
fn old_arm_env(shared: &Env) -> Result<Option<(String, Env)>, String> {
    let Ok(spec) = std::env::var(ENV_OLD) else {
        return Ok(None);
    };
    let mut env = shared.clone();
    env.set.extend(parse_old_arm(&spec)?.set);
    Ok(Some((spec, env)))
}

/// `NAME=VALUE,NAME=VALUE` as variables to set.
fn parse_old_arm(spec: &str) -> Result<Env, String> {
    let mut env = Env::default();
    for pair in spec.split(',').filter(|p| !p.is_empty()) {
        let (k, v) = pair
            .split_once('=')
            .filter(|(k, _)| !k.is_empty())
            .ok_or_else(|| format!("{ENV_OLD}: {pair:?} is not NAME=VALUE"))?;
        env.set.push((k.to_owned(), v.to_owned()));
    }
    Ok(env)
}

/// Polls `thaw store remote-status ID` until the snapshot is complete in
/// the bucket (the writer uploads the manifest last); its JSON.
async fn uploaded(ctx: &Ctx, shared: &Shared, id: &str) -> Result<Value, String> {
    let t0 = Instant::now();
    loop {
        let out = tokio::process::Command::new(&ctx.cfg.thaw)
            .args(["store", "remote-status", id, "--store-url", &shared.url])
            .arg("--store-key-file")
            .arg(&shared.key_file)
            .envs(shared.env.set.iter().map(|(k, v)| (k, v)))
            .env_remove("THAW_STORE_KEY")
            .output()
            .await
            .map_err(|e| format!("running thaw store remote-status: {e}"))?;
        if out.status.success() {
            return serde_json::from_slice(&out.stdout).map_err(|e| {
                format!(
                    "thaw store remote-status printed no JSON ({e}): {}",
                    String::from_utf8_lossy(&out.stdout)
                )
            });
        }
        if t0.elapsed() > WAIT {
            return Err(format!(
                "snapshot {id} not complete in the bucket after {WAIT:?}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// One reader's round: every function's first, local and boot starts.
async fn one_round(
    ctx: &Ctx,
    reader: &Server,
    benches: &[Bench],
    ids: &[String],
    results: &mut [RemoteResult],
    round: usize,
    spare_wait: Duration,
) -> Result<(), String> {
    // B sees every version (code, record, snapshot object) first.
    let mut opened = Vec::new();
    for id in ids {
        opened.push(wait_line(reader, LINE_LAZY, id).await?);
    }
    let api = reader.api();
    for (i, bench) in benches.iter().enumerate() {
        let id = &ids[i];
        let target = |kind| {
            Target::new(&api.base_url(), bench.name)
                .and_then(|t| t.with_bodies(vec![Bytes::from(bench.body.to_owned())]))
                .map(|t| t.with_cold(Some(kind)))
                .map_err(|e| e.to_string())
        };
        let (restore, boot) = (target(ColdStart::Restore)?, target(ColdStart::Boot)?);
        // Each start from B at rest: nothing busy; before the local restore
        // a pre-made sandbox ready, as for any local restore (none are made
        // of a snapshot restored lazily).
        let settle = |spares: u64| {
            let api = api.clone();
            async move {
                deploy::wait_settled(&api, bench.name, spares)
                    .await
                    .map(|_| ())
                    .map_err(|e| format!("{}: waiting for B to settle: {e}", bench.name))
            }
        };
        settle(0).await?;
        // A deployment's reader sees a version some time before its first
        // cold start, and may make a spare meanwhile.
        let waited = Instant::now();
        while waited.elapsed() < spare_wait
            && deploy::spares_ready(&api, bench.name)
                .await
                .map_err(|e| e.to_string())?
                == 0
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        settle(0).await?;
        let lazy_before = metric(&api, "thaw_remote_lazy_restores_total{result=\"ok\"}").await?;
        let bytes_before = metric(&api, "thaw_remote_fetched_bytes").await?;
        let (first, first_spare) = timed_spare(ctx, &restore, "restore", "first restore").await?;
        let lazy_after = metric(&api, "thaw_remote_lazy_restores_total{result=\"ok\"}").await?;
        if lazy_after != lazy_before + 1.0 {
            return Err(format!(
                "{}: the first restore was not lazy (lazy restores {lazy_before} → {lazy_after})",
                bench.name
            ));
        }
        let resumed = wait_line(reader, LINE_RESUMED, id).await?;
        let complete = wait_line(reader, LINE_COMPLETE, id).await?;
        let bytes_after = metric(&api, "thaw_remote_fetched_bytes").await?;
        let completion = field(&complete, "bytes_fetched");
        let bytes = (bytes_after - bytes_before).max(0.0) as u64;
        // B's first local copy has no plan yet: it records B's working set
        // (B's copies never use the bucket's set, its fetch set). The local
        // restore measured is the next, as on a node that served the
        // function before.
        settle(LOCAL_SPARES).await?;
        timed(ctx, &restore, "restore", "first local restore").await?;
        // The spare made for that copy's claim once the set is recorded
        // populates it ahead, and claims take the newest spare first.
        wait_line(reader, LINE_RECORDED, id).await?;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        settle(LOCAL_SPARES).await?;
        let local = timed(ctx, &restore, "restore", "local restore").await?;
        if metric(&api, "thaw_remote_lazy_restores_total{result=\"ok\"}").await? != lazy_after {
            return Err(format!(
                "{}: the restore after the completion was lazy again",
                bench.name
            ));
        }
        settle(0).await?;
        let booted = timed(ctx, &boot, "boot", "boot").await?;
        let r = RemoteRound {
            first,
            first_spare: first_spare.as_deref() == Some("hit"),
            local,
            boot: booted,
            bytes: bytes.saturating_sub(completion),
            working_set_pages: field(&opened[i], "working_set_pages"),
            pages_at_resume: field(&resumed, "pages_fetched"),
            working_set_stored_pages: field(&resumed, "working_set_stored_pages"),
            bytes_metadata: field(&opened[i], "bytes_metadata"),
        };
        eprintln!(
            "  round {round}: {:<13} first {} (spare {}) local {} boot {}, fetched {} (working set {} pages listed, {} pages before the resume, completion {})",
            bench.name,
            us(Some(r.first)),
            first_spare.as_deref().unwrap_or("-"),
            us(Some(r.local)),
            us(Some(r.boot)),
            mib(r.bytes as f64),
            r.working_set_pages,
            r.pages_at_resume,
            mib(completion as f64)
        );
        results[i].rounds.push(r);
    }
    Ok(())
}

/// Sends one forced start and times it from send to whole answer, µs; the
/// answer must be a 200 of start kind `kind`.
async fn timed(ctx: &Ctx, target: &Target, kind: &str, what: &str) -> Result<f64, String> {
    timed_spare(ctx, target, kind, what).await.map(|(t, _)| t)
}

/// [`timed`], and the answer's `x-thaw-spare` (`hit`, `miss`).
async fn timed_spare(
    ctx: &Ctx,
    target: &Target,
    kind: &str,
    what: &str,
) -> Result<(f64, Option<String>), String> {
    let t0 = Instant::now();
    let outcome = ctx.client.send(target, 0).await;
    let took = t0.elapsed().as_secs_f64() * 1e6;
    if !outcome.is_ok() {
        return Err(format!(
            "{what} of {}: {}",
            target.function(),
            outcome
                .error
                .or(outcome.detail)
                .unwrap_or_else(|| format!("status {:?}", outcome.status))
        ));
    }
    if outcome.start.as_deref() != Some(kind) {
        return Err(format!(
            "{what} of {}: started by {:?}, not {kind}",
            target.function(),
            outcome.start
        ));
    }
    Ok((took, outcome.spare))
}

/// The sum of the metric lines of `/metrics` that start with `prefix`.
async fn metric(api: &Api, prefix: &str) -> Result<f64, String> {
    let (status, text) = api.get_text("/metrics").await.map_err(|e| e.to_string())?;
    if status != 200 {
        return Err(format!("/metrics answered {status}"));
    }
    Ok(sum_metric(&text, prefix))
}

/// The sum of the values of the lines of `text` that start with `prefix`.
pub fn sum_metric(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter(|l| l[prefix.len()..].starts_with([' ', '{']) || prefix.ends_with('}'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Waits until the server's JSON log has a line `message` about snapshot
/// `id`, and returns its fields.
async fn wait_line(server: &Server, message: &str, id: &str) -> Result<Value, String> {
    let t0 = Instant::now();
    loop {
        if let Some(fields) = find_line(&server.log_text(), message, id) {
            return Ok(fields);
        }
        if t0.elapsed() > WAIT {
            return Err(format!(
                "no log line {message:?} for snapshot {id} within {WAIT:?}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The fields of the first line of a JSON log (`tracing`'s format:
/// `{"fields": {"message": ..., ...}}`) with `message` and `snapshot` `id`.
pub fn find_line(log: &str, message: &str, id: &str) -> Option<Value> {
    log.lines()
        .filter(|l| l.contains(message))
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| v.get("fields").cloned())
        .find(|f| {
            f.get("message").and_then(Value::as_str) == Some(message)
                && f.get("snapshot").and_then(Value::as_str) == Some(id)
        })
}

/// A number field of a log line (0 when absent).
fn field(fields: &Value, name: &str) -> u64 {
    fields.get(name).and_then(Value::as_u64).unwrap_or(0)
}

/// The section's tables.
pub fn render(results: &[RemoteResult], rounds: usize) -> String {
    let mut out = format!(
        "The first cold start of a function on a node that holds none of its pages (issue 18): a private Garage, a writer A \
         that deployed the function and uploaded its snapshot, and in each of {rounds} rounds a new reader B with an empty \
         data directory on the same store. B's **first** forced restore (`x-thaw-cold: restore`) is lazy (uffd, pages \
         fetched from the bucket: the working set before the resume, then what faults), sent once B is at rest and \
         has a pre-made sandbox of the function ready (up to 5 s: a reader sees a version before its first cold \
         start; \"from a spare\" counts the rounds where it was a spare hit); once B completed the snapshot \
         locally, a **local** forced restore (mmap, once a pre-made sandbox is ready; the second on B: the first, not \
         measured, records B's own working set, as a node's first copy does) and a forced **boot** on B, each \
         from B at rest. Times from send to the whole answer; \
         ratios are medians of the per-round ratios. Bytes: what B's page server fetched for the first restore (sealed \
         slots, `thaw_remote_fetched_bytes` less the completion's own fetch), against the working set the bucket holds: \
         the pages it lists, and its stored part (pages over mapped files are not fetched), as B reports it \
         (`working_set_stored_pages` of its \"copy resumed\" line); a server that does not report it gives a bound (at \
         most the pages fetched before the resume), shown with ≤ and the ratio with ≥. A and B share the machine, its cores and one \
         layer cache.\n\n"
    );
    let mut t = Table::new(&[
        "function",
        "working set in the bucket",
        ">first remote p50",
        ">first remote p90",
        ">local p50",
        ">boot p50",
        ">first ÷ local",
        ">first ÷ boot",
        ">first from a spare",
        ">fetched by the first",
        ">working set (listed)",
        ">stored part",
        ">fetched ÷ stored part",
    ]);
    for r in results {
        let first = r.column(|x| x.first);
        let ws_listed = r.med(|x| (x.working_set_pages * PAGE) as f64);
        let bound = r.working_set_bound();
        t.row(vec![
            r.function.clone(),
            if r.working_set_in_bucket { "yes" } else { "no" }.into(),
            us(quantile(&first, 0.5)),
            us(quantile(&first, 0.9)),
            us(r.med(|x| x.local)),
            us(r.med(|x| x.boot)),
            ratio(r.first_over_local()),
            ratio(r.first_over_boot()),
            format!(
                "{}/{}",
                r.rounds.iter().filter(|x| x.first_spare).count(),
                r.rounds.len()
            ),
            r.bytes().map_or_else(|| "–".into(), mib),
            ws_listed
                .filter(|_| r.working_set_in_bucket)
                .map_or_else(|| "–".into(), mib),
            bound.map_or_else(
                || "–".into(),
                |(w, exact)| {
                    if exact {
                        mib(w)
                    } else {
                        format!("≤ {}", mib(w))
                    }
                },
            ),
            match (r.bytes(), bound) {
                (Some(b), Some((w, true))) => ratio(Some(b / w)),
                (Some(b), Some((w, false))) => format!("≥ {}", ratio(Some(b / w))),
                _ => "–".into(),
            },
        ]);
    }
    out.push_str(&t.render());
    out.push_str("\nEach round:\n\n");
    let mut t = Table::new(&[
        "function",
        ">round",
        ">first",
        "first spare",
        ">local",
        ">boot",
        ">fetched",
        ">pages before the resume",
        ">metadata",
    ]);
    for r in results {
        for (i, x) in r.rounds.iter().enumerate() {
            t.row(vec![
                r.function.clone(),
                (i + 1).to_string(),
                us(Some(x.first)),
                if x.first_spare { "hit" } else { "miss" }.into(),
                us(Some(x.local)),
                us(Some(x.boot)),
                mib(x.bytes as f64),
                x.pages_at_resume.to_string(),
                mib(x.bytes_metadata as f64),
            ]);
        }
    }
    out.push_str(&t.render());
    for r in results {
        if let Some(e) = &r.error {
            out.push_str(&format!(
                "\n{}: stopped early: {}\n",
                r.function,
                e.replace('\n', " ")
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_spare_wait_follows_the_readers_lazy_spares_setting() {
        // The suite's own THAW_SUITE_REMOTE_SPARE_WAIT_MS wins over both:
        // nothing to check then.
        if std::env::var_os(ENV_SPARE_WAIT).is_some() {
            return;
        }
        let with = |v: &str| Env {
            set: vec![
                (ENV_LAZY_SPARES.to_string(), "0".to_string()),
                (ENV_LAZY_SPARES.to_string(), v.to_string()),
            ],
            remove: Vec::new(),
        };
        assert_eq!(
            first_spare_wait(&with("1")),
            Duration::from_millis(FIRST_SPARE_WAIT_MS)
        );
        assert_eq!(first_spare_wait(&with("0")), Duration::ZERO);
        let removed = Env {
            set: Vec::new(),
            remove: vec![ENV_LAZY_SPARES.to_string()],
        };
        assert_eq!(
            first_spare_wait(&removed),
            Duration::from_millis(FIRST_SPARE_WAIT_MS)
        );
    }

    #[test]
    fn the_old_arm_is_name_value_pairs() {
        let env = parse_old_arm("THAW_A=0,THAW_B=x=y").unwrap();
        assert_eq!(
            env.set,
            vec![
                ("THAW_A".to_string(), "0".to_string()),
                ("THAW_B".to_string(), "x=y".to_string())
            ]
        );
        assert!(parse_old_arm("THAW_A").unwrap_err().contains("NAME=VALUE"));
        assert!(parse_old_arm("=1").is_err());
    }

    #[test]
    fn finds_a_json_log_line_by_message_and_snapshot() {
        let log = format!(
            "{{\"level\":\"INFO\",\"fields\":{{\"message\":\"{LINE_COMPLETE}\",\"snapshot\":\"a\",\"bytes_fetched\":5}}}}\n\
             not json {LINE_COMPLETE}\n\
             {{\"level\":\"INFO\",\"fields\":{{\"message\":\"{LINE_COMPLETE}\",\"snapshot\":\"b\",\"bytes_fetched\":7}}}}\n"
        );
        let f = find_line(&log, LINE_COMPLETE, "b").unwrap();
        assert_eq!(field(&f, "bytes_fetched"), 7);
        assert!(find_line(&log, LINE_RESUMED, "b").is_none());
        assert!(find_line(&log, LINE_COMPLETE, "c").is_none());
    }

    #[test]
    fn sums_a_metric_without_its_longer_namesakes() {
        let text = "thaw_remote_fetched_bytes 100\nthaw_remote_fetched_bytes_x 5\n\
                    thaw_remote_lazy_restores_total{result=\"ok\"} 2\n\
                    thaw_remote_lazy_restores_total{result=\"boot\"} 1\n";
        assert_eq!(sum_metric(text, "thaw_remote_fetched_bytes"), 100.0);
        assert_eq!(
            sum_metric(text, "thaw_remote_lazy_restores_total{result=\"ok\"}"),
            2.0
        );
        assert_eq!(sum_metric(text, "thaw_remote_lazy_restores_total"), 3.0);
    }

    fn result(ws: bool) -> RemoteResult {
        let round = |first: f64, bytes: u64| RemoteRound {
            first,
            first_spare: true,
            local: 10_000.0,
            boot: 300_000.0,
            bytes,
            working_set_pages: 1000,
            pages_at_resume: 800,
            working_set_stored_pages: 0,
            bytes_metadata: 1,
        };
        RemoteResult {
            function: "numpy-pandas".into(),
            working_set_in_bucket: ws,
            rounds: vec![
                round(20_000.0, 4_000_000),
                round(40_000.0, 6_000_000),
                round(90_000.0, 9_000_000),
            ],
            error: None,
        }
    }

    #[test]
    fn figures_are_medians_of_paired_ratios_and_the_set_is_a_bound() {
        let r = result(true);
        assert_eq!(r.first_over_local(), Some(4.0));
        assert!((r.first_over_boot().unwrap() - 40.0 / 300.0).abs() < 1e-9);
        assert_eq!(r.working_set_bound(), Some((800.0 * 4096.0, false)));
        let mut exact = r.clone();
        for x in &mut exact.rounds {
            x.working_set_stored_pages = 600;
        }
        assert_eq!(exact.working_set_bound(), Some((600.0 * 4096.0, true)));
        assert_eq!(quantile(&[3.0, 1.0, 2.0], 0.9), Some(3.0));
        assert_eq!(quantile(&[3.0, 1.0, 2.0], 0.5), Some(2.0));
        let f = RemoteFigures::of(&[r], "numpy-pandas", None);
        assert_eq!(f.first_over_local, Ok(4.0));
        assert_eq!(f.bytes, Ok((6_000_000.0, 800.0 * 4096.0, false)));
        let f = RemoteFigures::of(&[result(false)], "numpy-pandas", None);
        assert_eq!(
            f.bytes,
            Err("no working set in the bucket for this version".into())
        );
        let f = RemoteFigures::of(&[], "numpy-pandas", Some("no Garage"));
        assert_eq!(f.first_over_boot, Err("no Garage".into()));
        let text = render(&[result(true)], 3);
        assert!(
            text.contains("| numpy-pandas | yes | 40 ms | 90 ms |"),
            "{text}"
        );
        assert!(
            text.contains("| 3/3 |") && text.contains("| hit |"),
            "{text}"
        );
    }
}
