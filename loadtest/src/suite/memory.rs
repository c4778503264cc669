//! Snapshots: capture time and throughput, and the page store's dedup
//! across the example functions (density is in [`super::density`]).

use serde_json::{Map, Value};

use crate::compare::median;

use super::deploy::{deploy, remove, wait_ready};
use super::markdown::{mib, us, Table};
use super::{Bench, Ctx};

const PAGE: f64 = 4096.0;

/// The p-quantile (nearest rank) of `v`.
pub(super) fn quantile(v: &[f64], q: f64) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let rank = ((q * s.len() as f64).ceil() as usize).clamp(1, s.len());
    Some(s[rank - 1])
}

/// Reads the `GET /store` figures and every example's snapshot record.
pub async fn store_section(ctx: &mut Ctx, examples: &[String]) -> String {
    let mut out = String::new();
    let mut t = Table::new(&[
        "function",
        ">areas",
        ">pages stored",
        ">new pages at capture",
        ">zero pages",
        ">capture",
    ]);
    for name in examples {
        match ctx.api.get(&format!("/functions/{name}")).await {
            Ok(a) if a.is_ok() => {
                let s = &a.body["snapshot"];
                let n = |k: &str| {
                    s.get(k)
                        .and_then(Value::as_u64)
                        .map_or("–".into(), |v| v.to_string())
                };
                let cap = s.get("capture_us").and_then(Value::as_f64);
                t.row(vec![
                    name.clone(),
                    n("areas"),
                    n("stored_pages"),
                    n("new_pages"),
                    n("zero_pages"),
                    us(cap),
                ]);
            }
            Ok(a) => ctx.error(format!("GET /functions/{name}: {}", a.error_text())),
            Err(e) => ctx.error(e.to_string()),
        }
    }
    out.push_str(&t.render());
    match ctx.api.get("/store").await {
        Ok(a) if a.is_ok() => {
            let b = &a.body;
            let f = |k: &str| b.get(k).and_then(Value::as_f64).unwrap_or(f64::NAN);
            let mut s = Table::new(&[
                ">snapshots",
                ">objects",
                ">logical",
                ">stored",
                ">dedup ratio",
                ">zero pages",
            ]);
            s.row(vec![
                format!("{}", f("snapshots")),
                format!("{}", f("objects")),
                mib(f("logical_bytes")),
                mib(f("stored_bytes")),
                format!("{:.2}", f("dedup_ratio")),
                format!("{}", f("zero_pages")),
            ]);
            out.push_str("\nThe whole store after deploying the examples above, in the order listed (`GET /store`; logical = pages referenced by all snapshots, stored = distinct pages kept):\n\n");
            out.push_str(&s.render());
        }
        Ok(a) => ctx.error(format!("GET /store: {}", a.error_text())),
        Err(e) => ctx.error(e.to_string()),
    }
    out
}

/// Deploys copies of each bench function and reports capture time and MB/s;
/// also returns each function's capture p50 (µs).
pub async fn capture_section(
    ctx: &mut Ctx,
    benches: &[Bench],
) -> (String, Vec<(String, Option<f64>)>) {
    let mut p50s = Vec::new();
    let copies = ctx.plan.capture_copies;
    let mut t = Table::new(&[
        "function",
        ">captures",
        ">pages stored",
        ">capture p50",
        ">capture p90",
        ">MB/s p50",
        ">new pages (copies, median)",
    ]);
    for bench in benches {
        let folder = ctx.cfg.repo.join("examples").join(bench.name);
        let mut records: Vec<Value> = Vec::new();
        match ctx.api.get(&format!("/functions/{}", bench.name)).await {
            Ok(a) if a.is_ok() => records.push(a.body),
            Ok(a) => ctx.error(format!("{}: {}", bench.name, a.error_text())),
            Err(e) => ctx.error(e.to_string()),
        }
        let mut copy_new = Vec::new();
        for i in 1..=copies {
            let name = format!("{}-capture-{i}", bench.name);
            eprintln!("suite: capture {name}");
            let rec = match deploy(&ctx.api, &folder, &name, &Map::new()).await {
                Ok(()) => wait_ready(&ctx.api, &name).await,
                Err(e) => Err(e),
            };
            match rec {
                Ok(r) => {
                    if let Some(n) = r.pointer("/snapshot/new_pages").and_then(Value::as_f64) {
                        copy_new.push(n);
                    }
                    records.push(r);
                }
                Err(e) => ctx.error(format!("capture of {name}: {e}")),
            }
            remove(&ctx.api, &name).await;
        }
        let caps: Vec<f64> = records
            .iter()
            .filter_map(|r| r.pointer("/snapshot/capture_us").and_then(Value::as_f64))
            .collect();
        let rates: Vec<f64> = records
            .iter()
            .filter_map(|r| {
                let pages = r.pointer("/snapshot/stored_pages")?.as_f64()?;
                let cap = r.pointer("/snapshot/capture_us")?.as_f64()?;
                (cap > 0.0).then(|| pages * PAGE / cap)
            })
            .collect();
        let pages = records
            .first()
            .and_then(|r| r.pointer("/snapshot/stored_pages"))
            .map_or("–".into(), Value::to_string);
        if caps.is_empty() {
            ctx.error(format!(
                "{}: no capture figures (no snapshot in the records)",
                bench.name
            ));
        }
        p50s.push((bench.name.to_owned(), quantile(&caps, 0.5)));
        t.row(vec![
            bench.name.into(),
            caps.len().to_string(),
            pages,
            us(quantile(&caps, 0.5)),
            us(quantile(&caps, 0.9)),
            quantile(&rates, 0.5).map_or("–".into(), |r| format!("{r:.0}")),
            if copy_new.is_empty() {
                "–".into()
            } else {
                format!("{:.0}", median(&copy_new))
            },
        ]);
    }
    let mut out = t.render();
    out.push_str(
        "\nCapture time is the server's `capture_us` of each deploy (the example's own and its copies): \
         stop the warmed process, read its state and hash and store its pages. MB/s = pages stored × 4 KiB ÷ capture time \
         (10⁶ bytes per second). A copy of a function finds almost all its pages already in the store: its *new pages* are the \
         ones it added.\n",
    );
    (out, p50s)
}
