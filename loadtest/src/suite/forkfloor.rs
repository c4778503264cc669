//! What a copy costs when the kernel's own `fork` makes it: the CPU per
//! copy and the copy's first handler call, read from `thaw-fork-floor
//! --summary-out` (Python functions only).
//!
//! The fork floor forks a warm `python3` outside thaw: no sandbox, no HTTP,
//! no restore; the child calls the handler once, writes the answer to a
//! pipe and exits. Its CPU per copy (the parent's `fork`, which copies the
//! page tables and write-protects every private page, plus the child's
//! handler call, copy-on-write faults and exit) and its first handler call
//! against the same handler called back to back in the warm parent are the
//! references printed beside issue 16's goals 1 (CPU per cold start) and 5
//! (first invocation): not goals themselves, but what the cheapest copy the
//! kernel knows costs on the same machine in the same run.

use crate::compare::median;

use super::coldstart::fork_argv;
use super::markdown::{ratio, us, Table};
use super::{Bench, Ctx};

/// What one run of `thaw-fork-floor --summary-out` wrote.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
pub struct Summary {
    /// Children forked and waited for.
    pub forks: u32,
    /// The parent's CPU over the forks, µs (`fork` runs in the parent).
    pub parent_cpu_us: f64,
    /// The children's CPU, µs (every child was waited for).
    pub children_cpu_us: f64,
    /// The handler called back to back in the warm parent, µs each.
    pub warm_handler_us: Vec<f64>,
    /// The handler's one call in each child, µs each.
    pub child_handler_us: Vec<f64>,
}

impl Summary {
    /// CPU per copy, µs; `None` without forks.
    pub fn cpu_per_fork_us(&self) -> Option<f64> {
        (self.forks > 0).then(|| (self.parent_cpu_us + self.children_cpu_us) / self.forks as f64)
    }
}

/// The fork floor's cost for one function, over several runs.
#[derive(Debug, Clone, PartialEq)]
pub struct ForkCost {
    /// The function.
    pub function: String,
    /// CPU per copy of each run, µs.
    pub cpu_per_fork_us: Vec<f64>,
    /// Every child's handler call, µs.
    pub child_handler_us: Vec<f64>,
    /// Every warm handler call, µs.
    pub warm_handler_us: Vec<f64>,
}

impl ForkCost {
    /// Folds runs' summaries into one figure.
    pub fn of(function: &str, runs: &[Summary]) -> Result<ForkCost, String> {
        let cpu: Vec<f64> = runs.iter().filter_map(Summary::cpu_per_fork_us).collect();
        if cpu.is_empty() {
            return Err("no fork ran".into());
        }
        Ok(ForkCost {
            function: function.to_owned(),
            cpu_per_fork_us: cpu,
            child_handler_us: runs
                .iter()
                .flat_map(|r| r.child_handler_us.clone())
                .collect(),
            warm_handler_us: runs
                .iter()
                .flat_map(|r| r.warm_handler_us.clone())
                .collect(),
        })
    }

    /// CPU per copy, seconds (median of the runs).
    pub fn cpu(&self) -> f64 {
        median(&self.cpu_per_fork_us) / 1e6
    }

    /// The children's first handler call p50 ÷ the warm handler p50.
    pub fn first_over_warm(&self) -> Option<f64> {
        if self.child_handler_us.is_empty() || self.warm_handler_us.is_empty() {
            return None;
        }
        let warm = median(&self.warm_handler_us);
        (warm > 0.0).then(|| median(&self.child_handler_us) / warm)
    }
}

/// Runs the fork floor of `bench` `ctx.plan.fork_cpu_runs` times with
/// `ctx.plan.fork_cpu_forks` forks each and folds what the runs wrote.
pub async fn measure(ctx: &Ctx, bench: &Bench) -> Result<ForkCost, String> {
    let folder = ctx.cfg.repo.join("examples").join(bench.name);
    let path = ctx.cfg.out.join(format!(".fork-floor-{}.json", bench.name));
    let mut runs = Vec::new();
    for run in 0..ctx.plan.fork_cpu_runs {
        let mut argv = fork_argv(ctx, &folder, bench.body, ctx.plan.fork_cpu_forks);
        argv.extend(["--summary-out".into(), path.display().to_string()]);
        let _ = std::fs::remove_file(&path);
        super::cold::run_exec(&argv, run).await?;
        let text = std::fs::read_to_string(&path).map_err(|e| {
            format!(
                "thaw-fork-floor wrote no summary at {}: {e}",
                path.display()
            )
        })?;
        let _ = std::fs::remove_file(&path);
        runs.push(
            serde_json::from_str::<Summary>(&text)
                .map_err(|e| format!("thaw-fork-floor's summary is not what it should be: {e}"))?,
        );
    }
    ForkCost::of(bench.name, &runs)
}

/// The table printed under the sustained cold starts: each function's
/// fork floor cost beside its restores' CPU per cold start (`restore_cpu`,
/// seconds, when measured).
pub fn render(
    costs: &[(Result<ForkCost, String>, Option<f64>)],
    runs: usize,
    forks: u32,
) -> String {
    if costs.is_empty() {
        return String::new();
    }
    let mut t = Table::new(&[
        "function",
        ">fork floor: CPU per copy",
        ">restore's CPU per cold start ÷ it",
        ">child's first handler call p50",
        ">warm handler p50",
        ">first ÷ warm",
    ]);
    for (cost, restore_cpu) in costs {
        match cost {
            Ok(c) => t.row(vec![
                c.function.clone(),
                format!("{:.2} ms", c.cpu() * 1e3),
                ratio(restore_cpu.map(|r| r / c.cpu())),
                us((!c.child_handler_us.is_empty()).then(|| median(&c.child_handler_us))),
                us((!c.warm_handler_us.is_empty()).then(|| median(&c.warm_handler_us))),
                ratio(c.first_over_warm()),
            ]),
            Err(e) => t.row(vec!["–".into(), format!("error: {e}")]),
        };
    }
    let mut out = String::from("\n**The fork floor's cost, for reference.** ");
    out.push_str(&format!(
        "`thaw-fork-floor` forks a warm `python3` running the same handler, outside thaw: no sandbox, no HTTP, \
         no restore; each child calls the handler once, writes the answer to a pipe and exits. **CPU per copy** = \
         (the parent's CPU over the forks, whose `fork` copies the page tables and write-protects every private \
         page, + the children's CPU, their copy-on-write faults and exit included) ÷ forks, `getrusage` around \
         the forks; median of {runs} runs of {forks} forks, on the same machine and in the same run as the table \
         above. The child's first handler call is timed inside the child; the warm one is the same request called \
         back to back in the parent before the forks.\n\n"
    ));
    out.push_str(&t.render());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(forks: u32, parent: f64, children: f64) -> Summary {
        Summary {
            forks,
            parent_cpu_us: parent,
            children_cpu_us: children,
            warm_handler_us: vec![100.0, 120.0, 110.0],
            child_handler_us: vec![900.0; forks as usize],
        }
    }

    #[test]
    fn cpu_per_copy_counts_the_parent_and_the_children() {
        let s = summary(4, 10_000.0, 30_000.0);
        assert_eq!(s.cpu_per_fork_us(), Some(10_000.0));
        assert_eq!(summary(0, 5.0, 5.0).cpu_per_fork_us(), None);
        let parsed: Summary = serde_json::from_str(
            r#"{"forks": 2, "parent_cpu_us": 1.5, "children_cpu_us": 2.5,
                "warm_handler_us": [1.0], "child_handler_us": [3.0, 5.0]}"#,
        )
        .unwrap();
        assert_eq!(parsed.cpu_per_fork_us(), Some(2.0));
    }

    #[test]
    fn runs_fold_into_medians_and_a_table() {
        let cost = ForkCost::of(
            "numpy-pandas",
            &[
                summary(2, 6_000.0, 8_000.0),
                summary(2, 7_000.0, 9_000.0),
                summary(2, 5_000.0, 7_000.0),
            ],
        )
        .unwrap();
        assert!((cost.cpu() - 0.007).abs() < 1e-12, "{}", cost.cpu());
        assert_eq!(cost.first_over_warm(), Some(900.0 / 110.0));
        assert!(ForkCost::of("x", &[summary(0, 1.0, 1.0)]).is_err());
        let md = render(&[(Ok(cost), Some(0.014))], 3, 2);
        assert!(
            md.contains("| numpy-pandas | 7.00 ms | ×2.00 | 900 µs | 110 µs | ×8.18 |"),
            "{md}"
        );
        assert!(render(&[], 3, 2).is_empty());
    }
}
