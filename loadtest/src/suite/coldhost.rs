//! A cold host (issue 16, goal 8): cold starts with the page cache dropped
//! before each one (`sync; echo 3 > /proc/sys/vm/drop_caches`), restore and
//! boot of the same function interleaved in one run, so both read what they
//! need from the disk: the restore its snapshot image's pages, the boot the
//! interpreter, the libraries and the function's code.

use std::time::Instant;

use bytes::Bytes;

use crate::compare::median;
use crate::target::{ColdStart, Target};

use super::markdown::{ratio, us, Table};
use super::throughput::settle;
use super::{Bench, Ctx};

/// Where the kernel takes the order to drop its caches.
const DROP_CACHES: &str = "/proc/sys/vm/drop_caches";

/// The two arms of one function.
#[derive(Debug, Clone, Default)]
pub struct ColdHostResult {
    /// The function.
    pub function: String,
    /// Latency of each forced restore, µs.
    pub restore: Vec<f64>,
    /// Latency of each forced boot, µs.
    pub boot: Vec<f64>,
}

impl ColdHostResult {
    /// Boot median ÷ restore median, when both ran.
    pub fn speedup(&self) -> Option<f64> {
        if self.restore.is_empty() || self.boot.is_empty() {
            return None;
        }
        Some(median(&self.boot) / median(&self.restore).max(1.0))
    }
}

/// Writes dirty pages back, then drops the page cache, dentries and inodes.
fn drop_caches() -> Result<(), String> {
    nix::unistd::sync();
    std::fs::write(DROP_CACHES, "3").map_err(|e| {
        format!("dropping the page cache ({DROP_CACHES}): {e} (the suite runs as root)")
    })
}

/// `rounds` rounds, each a restore then a boot of `bench`, every one after
/// the server settled and the caches were dropped.
pub async fn measure(
    ctx: &mut Ctx,
    bench: &Bench,
    rounds: usize,
) -> Result<ColdHostResult, String> {
    let target = |kind| {
        Target::new(&ctx.api.base_url(), bench.name)
            .and_then(|t| t.with_bodies(vec![Bytes::from(bench.body.to_owned())]))
            .map(|t| t.with_cold(Some(kind)))
            .map_err(|e| e.to_string())
    };
    let restore = target(ColdStart::Restore)?;
    let boot = target(ColdStart::Boot)?;
    let mut result = ColdHostResult {
        function: bench.name.to_owned(),
        ..ColdHostResult::default()
    };
    for round in 1..=rounds {
        for (name, t) in [("restore", &restore), ("boot", &boot)] {
            settle(ctx, bench.name, &mut 0, None).await?;
            drop_caches()?;
            let t0 = Instant::now();
            let outcome = ctx.client.send(t, round as u64).await;
            let took = t0.elapsed().as_secs_f64() * 1e6;
            if !outcome.is_ok() {
                return Err(format!(
                    "round {round}: the {name} failed: {}",
                    outcome
                        .error
                        .or(outcome.detail)
                        .unwrap_or_else(|| format!("status {:?}", outcome.status))
                ));
            }
            eprintln!(
                "  round {round}: {name:<8} on a cold host {}",
                us(Some(took))
            );
            match name {
                "restore" => result.restore.push(took),
                _ => result.boot.push(took),
            }
        }
    }
    Ok(result)
}

/// The section's table and how it was measured.
pub fn render(results: &[ColdHostResult], rounds: usize) -> String {
    let mut t = Table::new(&[
        "function",
        ">rounds",
        ">restore (median)",
        ">boot (median)",
        ">boot ÷ restore",
    ]);
    for r in results {
        let med = |v: &[f64]| (!v.is_empty()).then(|| median(v));
        t.row(vec![
            r.function.clone(),
            r.restore.len().min(r.boot.len()).to_string(),
            us(med(&r.restore)),
            us(med(&r.boot)),
            ratio(r.speedup()),
        ]);
    }
    let mut out = t.render();
    out.push_str(&format!(
        "\n{rounds} interleaved rounds of one forced restore (`x-thaw-cold: restore`, memory mode mmap, into a spare when one \
         is ready) and one forced boot (`x-thaw-cold: boot`) on the default server; before each, the server settled and \
         `sync; echo 3 > {DROP_CACHES}` emptied the page cache, so the restore reads its image's pages from the disk as it \
         touches them and the boot reads the interpreter, the libraries and the function's code. Latency from the request's \
         send to the whole answer.\n"
    ));
    out
}
