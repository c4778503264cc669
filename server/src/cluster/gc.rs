//! The bucket's gc as the server and the CLI run it
//! (`remote_store::RemoteStore::gc` does the work): what is live, the
//! writer's periodic run, and `thaw store gc --remote [--dry-run]`.
//!
//! Live is what the catalog names: every function's record
//! (`functions/<name>`), `#catalog` and `#writer`, every version's code
//! (`code/<name/vN/uid>`) and dependency layer (`code/` objects named by
//! `cluster::layers::code_objects` from the catalog's `layers`) and snapshot (its object, working set, and the
//! packs holding its pages). On the writer the records in memory count too
//! (a version captured and uploaded but not published yet), so a gc there
//! never deletes what the writer is about to publish.
//!
//! Only the writer deletes, every grace period (at most every 10 minutes,
//! at least every second), the first time one period after it started.
//! Readers never delete. By hand, `thaw store gc --remote` deletes only when
//! no writer's heartbeat is fresh (`--force` to run anyway): an upload of
//! another process may name an old pack the gc would delete (the argument
//! is in `remote-store/src/gc.rs`); `--dry-run` deletes nothing and always
//! runs.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use remote_store::{GcOptions, GcReport, Kind, Live, RemoteStore};

use super::catalog::{self, CATALOG_ADDRESS, WRITER_ADDRESS};
use super::layers::LayerObject;
use super::Cluster;
use crate::registry::FunctionRecord;
use crate::service::Service;

/// Default of `store_gc_grace_secs`: one hour.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(3600);
/// Longest wait between two runs on the writer.
const MOST_EVERY: Duration = Duration::from_secs(600);
/// A writer whose heartbeat is younger than this counts as running.
const WRITER_FRESH: Duration = Duration::from_secs(10);

/// What the records name, as content addresses; `layers` is the catalog's
/// (a version's dependency layer is a `code/` object, `cluster::layers`).
pub fn live<'a>(
    records: impl IntoIterator<Item = &'a FunctionRecord>,
    layers: &BTreeMap<String, LayerObject>,
) -> Live {
    let mut live = Live {
        functions: vec![
            String::from_utf8_lossy(CATALOG_ADDRESS).into_owned(),
            String::from_utf8_lossy(WRITER_ADDRESS).into_owned(),
        ],
        ..Live::default()
    };
    for record in records {
        live.functions.push(record.name.clone());
        for v in &record.versions {
            live.code
                .extend(super::layers::code_objects(&record.name, v, layers));
            if let Some(s) = &v.snapshot {
                live.snapshots.push(s.id.clone());
            }
        }
    }
    live.functions.sort();
    live.functions.dedup();
    live.code.sort();
    live.code.dedup();
    live.snapshots.sort();
    live.snapshots.dedup();
    live
}

/// How often the writer runs the gc for a grace period.
pub fn every(grace: Duration) -> Duration {
    grace.clamp(Duration::from_secs(1), MOST_EVERY)
}

/// Starts the writer's periodic gc.
pub fn spawn(cluster: Arc<Cluster>, service: Service) {
    let grace = cluster.options.gc_grace;
    let period = every(grace);
    tracing::info!(
        grace_s = grace.as_secs_f64(),
        every_s = period.as_secs_f64(),
        "the writer collects garbage from the shared store"
    );
    tokio::spawn(async move {
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if !cluster.health.is_up() {
                continue;
            }
            let result = run_on_writer(&cluster, &service, grace).await;
            let ok = result.is_ok();
            if let Some(m) = cluster.metrics() {
                m.remote_gc_runs
                    .get_or_create(&crate::metrics::ResultLabels {
                        result: if ok { "ok" } else { "error" }.into(),
                    })
                    .inc();
            }
            match result {
                Ok(Some(r)) => {
                    if let Some(m) = cluster.metrics() {
                        m.remote_gc_deleted.inc_by(r.deleted.len() as u64);
                        m.remote_gc_freed_bytes.inc_by(r.bytes_freed);
                    }
                    if !r.deleted.is_empty() {
                        tracing::info!(
                            objects = r.deleted.len(),
                            bytes_freed = r.bytes_freed,
                            packs = r.deleted_of(Kind::Pack),
                            snapshots = r.deleted_of(Kind::Snapshot),
                            records = r.deleted_of(Kind::Function),
                            code = r.deleted_of(Kind::Code),
                            young_kept = r.young_kept,
                            "garbage deleted from the shared store (nothing live references it)"
                        );
                    }
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(
                    error = %format!("{e:#}"),
                    "collecting garbage from the shared store failed; nothing more deleted"
                ),
            }
        }
    });
}

/// One run on the writer: live is its records and the published catalog.
/// `None` while no catalog is published (nothing is known live yet).
async fn run_on_writer(
    cluster: &Cluster,
    service: &Service,
    grace: Duration,
) -> Result<Option<GcReport>> {
    let Some(published) = catalog::read_catalog(&cluster.remote)
        .await
        .context("reading the catalog")?
    else {
        return Ok(None);
    };
    let mine = super::publish::records(service);
    let live = live(
        mine.values().chain(published.functions.values()),
        &published.layers,
    );
    let report = cluster
        .remote
        .gc(
            &live,
            GcOptions {
                grace,
                dry_run: false,
            },
        )
        .await?;
    Ok(Some(report))
}

/// `thaw store gc --remote [--dry-run] [--force]`: the bucket's gc by hand,
/// live being what the published catalog names.
pub async fn cli_gc(
    remote: &RemoteStore,
    grace: Duration,
    dry_run: bool,
    force: bool,
) -> Result<serde_json::Value> {
    let published = catalog::read_catalog(remote).await?.with_context(|| {
        format!(
            "{} has no catalog: no writer published what is live, so gc would delete every \
                 snapshot; nothing done",
            remote.url()
        )
    })?;
    if !dry_run && !force {
        if let Some(w) = catalog::read_writer(remote).await? {
            let age = crate::service::now_ms().saturating_sub(w.heartbeat_ms);
            anyhow::ensure!(
                age >= WRITER_FRESH.as_millis() as u64,
                "the writer {} published {:.1} s ago: it collects garbage itself every {} s \
                 (store_gc_grace_secs), and its uploads may name packs a gc from here would \
                 delete; use --dry-run to see what is garbage, or --force",
                w.url,
                age as f64 / 1000.0,
                every(grace).as_secs()
            );
        }
    }
    let live = live(published.functions.values(), &published.layers);
    let r = remote.gc(&live, GcOptions { grace, dry_run }).await?;
    let mut per_kind: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
    for c in &r.deleted {
        let e = per_kind.entry(c.kind.folder()).or_default();
        e.0 += 1;
        e.1 += c.bytes;
    }
    Ok(serde_json::json!({
        "store": remote.url().to_string(),
        "dry_run": r.dry_run,
        "grace_secs": grace.as_secs(),
        "catalog_generation": published.generation,
        "functions": published.functions.len(),
        "objects_listed": r.objects,
        "roots": r.roots,
        "live_pages": r.live_pages,
        "deleted_objects": r.deleted.len(),
        "bytes_freed": r.bytes_freed,
        "young_kept": r.young_kept,
        "deleted": per_kind.iter().map(|(k, (n, b))| (k.to_string(), serde_json::json!({"objects": n, "bytes": b}))).collect::<serde_json::Map<_, _>>(),
        "objects": r.deleted.iter().map(|c| format!("{}/{}", c.kind.folder(), c.name)).collect::<Vec<_>>(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gc_period_follows_the_grace_within_bounds() {
        assert_eq!(every(Duration::from_millis(10)), Duration::from_secs(1));
        assert_eq!(every(Duration::from_secs(30)), Duration::from_secs(30));
        assert_eq!(every(DEFAULT_GRACE), Duration::from_secs(600));
    }
}
