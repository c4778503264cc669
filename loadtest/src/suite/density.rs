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
//! reads Σ PSS of every process under the server from `/proc` (before the
//! deploy and after). For the restored row the original's PSS (as the server
//! measured it) is taken out of the difference, so the row is the M copies
//! alone. The comparison (100 restored against 100 booted) uses
//! the booted per-copy figure times 100 when fewer were booted.

use serde_json::{json, Map, Value};

use super::deploy::{deploy, remove, wait_idle, wait_ready, wait_started, DeployError};
use super::markdown::{mib, Table};
use super::memory::quantile;
use super::procfs::tree_memory;
use super::{Bench, Ctx};

/// The memory the "copies that fit" are counted in.
const FIT_BYTES: f64 = 20.0 * (1u64 << 30) as f64;
/// Copies of the comparison.
const COMPARE_COPIES: f64 = 100.0;

/// One measured row.
struct Row {
    /// Copies measured.
    copies: u64,
    /// Δ Σ PSS of the copies, bytes.
    delta: f64,
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
    let before = tree_memory(ctx.server_pid);
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
    let mut after = tree_memory(ctx.server_pid);
    for _ in 0..5 {
        let again = ctx.api.get(&format!("/functions/{name}")).await?.body;
        if again["instance_list"] == record["instance_list"] {
            break;
        }
        record = again;
        after = tree_memory(ctx.server_pid);
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
        delta: after.pss as f64 - before.pss as f64 - others,
        record,
        kind,
    })
}

/// Holds idle booted instances and idle restored copies of each bench
/// function and measures them.
pub async fn section(
    ctx: &mut Ctx,
    benches: &[Bench],
    restore_unavailable: &[Option<String>],
) -> String {
    let mut t = Table::new(&[
        "function",
        "instances",
        ">idle copies",
        ">Δ Σ PSS (from /proc)",
        ">PSS per copy (/proc)",
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
                mib(r.per_copy()),
                r.server("pss").map_or("–".into(), mib),
                r.server("rss").map_or("–".into(), mib),
                r.server("uss").map_or("–".into(), mib),
                fit(r.per_copy()),
            ]);
        }
        if let [Some(b), Some(r)] = &rows[..] {
            let booted_100 = b.per_copy() * COMPARE_COPIES;
            let restored_100 = r.per_copy() * COMPARE_COPIES;
            let ratio = r.per_copy() / b.per_copy();
            notes.push_str(&format!(
                "* **{}**: {} restored copies add {} of PSS ({} each); {} booted instances would add {} \
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
        "\nΔ Σ PSS: the sum of `Pss` in `/proc/PID/smaps_rollup` over every process under the server (found by walking \
         parent pids), after the copies are idle minus before they were deployed, i.e. the physical memory the copies \
         added, shared pages divided among their sharers. Booted: `min_instances` with `snapshot: false`, so every \
         instance boots. Restored: `min_instances` = copies + 1 on a version with a snapshot: the captured original \
         (booted) stays and its PSS, as the server measured it, is taken out of the difference. The server's \
         per-instance figures (`GET /functions/NAME`, instances of the row's start kind) are shown beside it. The last \
         column divides 20 GiB by the PSS per copy, which carries its share of the one-time cost (the image's and \
         libraries' pages), so it is a lower bound when more copies share them.\n",
    );
    out
}
