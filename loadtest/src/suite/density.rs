//! Density: how many idle copies of a function a machine holds, booted and
//! restored, and what each costs in PSS.
//!
//! For each bench function, two deployments in turn:
//!
//! * **booted**: `min_instances` = N with `snapshot: false`, so every
//!   instance boots (the warmed original is one of them);
//! * **restored**: `min_instances` = M + 1: the captured original (booted)
//!   and M copies restored from its snapshot.
//!
//! Each time the suite waits until the instances are idle and measured, then
//! reads the server's footprint ([`super::procfs::footprint`]: Σ PSS of the
//! server process and of every process under it, the spares included, with
//! the snapshot images' page cache counted whole instead of by mapping),
//! before the deploy and after. For the restored row the original's PSS
//! (as the server measured it) is taken out of the difference, so the row
//! is the M copies with everything they brought (their image's page cache,
//! the server's own growth, the spares of their version). The issue's
//! comparison (100 restored against 100 booted) uses the booted per-copy
//! figure times 100 when fewer were booted. The drop of `MemAvailable` is
//! shown beside it.

use serde_json::{json, Map, Value};

use super::deploy::{deploy, remove, wait_idle, wait_ready, wait_started, DeployError};
use super::markdown::{mib, Table};
use super::memory::quantile;
use super::procfs::{footprint, mem_available};
use super::{Bench, Ctx};

/// The memory the "copies that fit" are counted in.
const FIT_BYTES: f64 = 20.0 * (1u64 << 30) as f64;
/// Copies of the comparison.
const COMPARE_COPIES: f64 = 100.0;

/// One measured row.
struct Row {
    /// Copies measured.
    copies: u64,
    /// Δ footprint of the copies, bytes.
    delta: f64,
    /// Of which the images' page cache, bytes.
    image_cache: f64,
    /// Drop of `MemAvailable`, bytes (machine-wide).
    available_drop: f64,
    /// The server's per-instance figures of the copies.
    record: Value,
    /// Their start kind.
    kind: &'static str,
}

impl Row {
    fn per_copy(&self) -> f64 {
        self.delta / self.copies.max(1) as f64
    }

    /// p50 of the server's `k` over the copies.
    fn server(&self, k: &str) -> Option<f64> {
        let v: Vec<f64> = instance_list(&self.record)
            .iter()
            .filter(|i| i["start"] == self.kind)
            .filter_map(|i| i.pointer(&format!("/memory/{k}"))?.as_f64())
            .collect();
        quantile(&v, 0.5)
    }
}

fn instance_list(record: &Value) -> Vec<Value> {
    record
        .get("instance_list")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

fn fit(per_copy: f64) -> String {
    if per_copy > 0.0 {
        format!("{:.0}", (FIT_BYTES / per_copy).floor())
    } else {
        "–".into()
    }
}

fn gib(bytes: f64) -> String {
    if bytes.abs() < (1u64 << 30) as f64 {
        mib(bytes)
    } else {
        format!("{:.2} GiB", bytes / (1u64 << 30) as f64)
    }
}

/// Deploys `name` with `extra`, waits with `wait`, and measures Δ Σ PSS
/// around it (after letting page-cache sharing and lazy frees settle).
async fn hold(
    ctx: &Ctx,
    bench: &Bench,
    name: &str,
    extra: Map<String, Value>,
    kind: &'static str,
    copies: u64,
) -> Result<Row, DeployError> {
    let folder = ctx.cfg.repo.join("examples").join(bench.name);
    let measure = || footprint(ctx.server_pid, &ctx.server_data).map_err(DeployError::Measure);
    let before = measure()?;
    let available_before = mem_available().unwrap_or(0);
    deploy(&ctx.api, &folder, name, &extra).await?;
    wait_ready(&ctx.api, name).await?;
    match kind {
        "boot" => wait_idle(&ctx.api, name, copies).await?,
        _ => wait_started(&ctx.api, name, kind, copies).await?,
    };
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    // Two measurements of the server apart (one instant of /proc): the
    // record first, then /proc, then the record again until both records
    // agree (the server re-measures every 2 s).
    let mut record = ctx.api.get(&format!("/functions/{name}")).await?.body;
    let mut after = measure()?;
    let mut available_after = mem_available().unwrap_or(0);
    for _ in 0..5 {
        let again = ctx.api.get(&format!("/functions/{name}")).await?.body;
        if again["instance_list"] == record["instance_list"] {
            break;
        }
        record = again;
        after = measure()?;
        available_after = mem_available().unwrap_or(0);
    }
    let list = instance_list(&record);
    let counted = list.iter().filter(|i| i["start"] == kind).count() as u64;
    // Instances of the other kind (the booted original beside restored
    // copies) are taken out by their own PSS.
    let others: f64 = list
        .iter()
        .filter(|i| i["start"] != kind)
        .filter_map(|i| i.pointer("/memory/pss")?.as_f64())
        .sum();
    Ok(Row {
        copies: counted,
        delta: after.total() as f64 - before.total() as f64 - others,
        image_cache: after.image_cache as f64 - before.image_cache as f64,
        available_drop: available_before as f64 - available_after as f64,
        record,
        kind,
    })
}

/// What the restored rows measured: function, copies, Δ memory (bytes).
pub type RestoredFigure = (String, u64, f64);

/// Holds idle booted instances and idle restored copies of each bench
/// function and measures them; returns the section and the restored rows'
/// figures.
pub async fn section(
    ctx: &mut Ctx,
    benches: &[Bench],
    restore_unavailable: &[Option<String>],
) -> (String, Vec<RestoredFigure>) {
    let mut figures = Vec::new();
    let mut t = Table::new(&[
        "function",
        "instances",
        ">idle copies",
        ">Δ memory (server, sandboxes, image cache)",
        ">of which image page cache",
        ">per copy",
        ">Δ MemAvailable (machine)",
        ">PSS per copy (server, p50)",
        ">RSS per copy (server, p50)",
        ">USS per copy (server, p50)",
        ">copies in 20 GiB at this PSS",
    ]);
    let mut notes = String::new();
    for (i, bench) in benches.iter().enumerate() {
        let n = ctx.plan.density[i.min(ctx.plan.density.len() - 1)];
        let m = ctx.plan.density_restored[i.min(ctx.plan.density_restored.len() - 1)];
        let mut rows: Vec<Option<Row>> = Vec::new();

        let name = format!("{}-density", bench.name);
        eprintln!("suite: density: {n} idle booted instances of {name}");
        let mut extra = Map::new();
        extra.insert("min_instances".into(), json!(n));
        extra.insert("snapshot".into(), json!(false));
        let booted = hold(ctx, bench, &name, extra, "boot", n as u64).await;
        remove(&ctx.api, &name).await;
        match booted {
            Ok(r) => rows.push(Some(r)),
            Err(e) => {
                ctx.error(format!("density (booted) of {name}: {e}"));
                rows.push(None);
            }
        }

        let why = restore_unavailable.get(i).cloned().flatten();
        if let Some(why) = &why {
            rows.push(None);
            t.row(vec![
                bench.name.into(),
                "restored".into(),
                format!("not available: {why}"),
            ]);
        } else {
            let name = format!("{}-density-restored", bench.name);
            eprintln!("suite: density: {m} idle restored copies of {name}");
            let mut extra = Map::new();
            // The captured original stays as one more.
            extra.insert("min_instances".into(), json!(m + 1));
            let restored = hold(ctx, bench, &name, extra, "restore", m as u64).await;
            remove(&ctx.api, &name).await;
            match restored {
                Ok(r) => rows.push(Some(r)),
                Err(e) => {
                    ctx.error(format!("density (restored) of {name}: {e}"));
                    rows.push(None);
                }
            }
        }

        for (row, label) in rows.iter().zip([
            "booted (min_instances, snapshot off)",
            "restored (min_instances)",
        ]) {
            let Some(r) = row else { continue };
            t.row(vec![
                bench.name.into(),
                label.into(),
                r.copies.to_string(),
                mib(r.delta),
                mib(r.image_cache),
                mib(r.per_copy()),
                mib(r.available_drop),
                r.server("pss").map_or("–".into(), mib),
                r.server("rss").map_or("–".into(), mib),
                r.server("uss").map_or("–".into(), mib),
                fit(r.per_copy()),
            ]);
        }
        if let Some(Some(r)) = rows.get(1) {
            figures.push((bench.name.to_owned(), r.copies, r.delta));
        }
        if let [Some(b), Some(r)] = &rows[..] {
            let booted_100 = b.per_copy() * COMPARE_COPIES;
            let restored_100 = r.per_copy() * COMPARE_COPIES;
            let ratio = r.per_copy() / b.per_copy();
            notes.push_str(&format!(
                "* **{}**: {} restored copies add {} ({} each); {} booted instances would add {} \
                 ({}, {} each{}). Restored ÷ booted per copy: **{:.1}%** (goal: under 10%). \
                 Idle copies that fit in 20 GiB: {} restored, {} booted.\n",
                bench.name,
                r.copies,
                gib(r.delta),
                mib(r.per_copy()),
                COMPARE_COPIES,
                gib(booted_100),
                if b.copies as f64 == COMPARE_COPIES {
                    "measured".to_string()
                } else {
                    format!("extrapolated from {} booted", b.copies)
                },
                mib(b.per_copy()),
                if r.copies as f64 == COMPARE_COPIES {
                    String::new()
                } else {
                    format!("; restored ×100 would be {}", gib(restored_100))
                },
                ratio * 100.0,
                fit(r.per_copy()),
                fit(b.per_copy()),
            ));
        }
    }
    let mut out = t.render();
    if !notes.is_empty() {
        out.push('\n');
        out.push_str(&notes);
    }
    out.push_str(
        "\nΔ memory counts the server process, every process under it (instances, copies, **spares**, their inits; found by \
         walking parent pids) and the **snapshot images' page cache**: the sum of `Pss` in `/proc/PID/smaps_rollup` over \
         those processes, less the `Pss` of their mappings of snapshot images (`/proc/PID/smaps`), plus the resident page \
         cache of every image file under the server's data directory counted whole, once, mapped or not (`fincore`); after \
         the copies are idle minus before they were deployed, i.e. the physical memory the copies added, shared pages \
         divided among their sharers. Δ MemAvailable is `/proc/meminfo`'s drop over the same span, machine-wide: anything \
         else running moves it, and the kernel counts page cache as available. Booted: `min_instances` with `snapshot: false`, so every \
         instance boots. Restored: `min_instances` = copies + 1 on a version with a snapshot: the captured original \
         (booted) stays and its PSS, as the server measured it, is taken out of the difference. The server's \
         per-instance figures (`GET /functions/NAME`, instances of the row's start kind) are shown beside it. The last \
         column divides 20 GiB by the PSS per copy, which carries its share of the one-time cost (the image's and \
         libraries' pages), so it is a lower bound when more copies share them.\n",
    );
    (out, figures)
}
