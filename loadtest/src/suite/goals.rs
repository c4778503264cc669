//! The goals of issue 16, each with the figure this run measured beside it
//! and a plain verdict: **met**, **not met**, or **not measured yet**; then
//! those of issue 18 (a shared store) in a table of their own.
//!
//! Every figure comes from a section of the same document; [`Figures`]
//! collects them and [`render`] writes one subsection per goal;
//! [`render_remote`] the table of issue 18 from [`RemoteFigures`].

use super::markdown::{mib, ratio, us};
pub use super::remote::RemoteFigures;

/// A goal's verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The figure meets the goal.
    Met,
    /// It does not.
    NotMet,
    /// No figure: why.
    NotMeasured(String),
}

impl Verdict {
    fn of(ok: bool) -> Verdict {
        if ok {
            Verdict::Met
        } else {
            Verdict::NotMet
        }
    }

    /// `met`, `not met` or `not measured yet (why)`.
    pub fn text(&self) -> String {
        match self {
            Verdict::Met => "**met**".into(),
            Verdict::NotMet => "**not met**".into(),
            Verdict::NotMeasured(why) => format!("**not measured yet** ({why})"),
        }
    }

    /// Both verdicts together: met only if both are.
    fn and(self, other: Verdict) -> Verdict {
        match (self, other) {
            (Verdict::NotMeasured(a), _) => Verdict::NotMeasured(a),
            (_, Verdict::NotMeasured(b)) => Verdict::NotMeasured(b),
            (Verdict::Met, Verdict::Met) => Verdict::Met,
            _ => Verdict::NotMet,
        }
    }
}

/// A sustained cold-start figure of one function.
#[derive(Debug, Clone, PartialEq)]
pub struct Sustained {
    /// Cold starts per second (median of rounds).
    pub rate: f64,
    /// Failed requests.
    pub failed: u64,
    /// CPU per cold start, seconds, if measured.
    pub cpu: Option<f64>,
    /// The fork floor's CPU per copy, seconds, and its child's first
    /// handler call ÷ a warm one, when measured (references for goals 1
    /// and 5, [`super::forkfloor`]).
    pub fork: Option<(f64, Option<f64>)>,
}

/// The figures the goals are judged on; `Err` holds why one is missing.
#[derive(Debug, Clone)]
pub struct Figures {
    /// Sustained forced restores of `hello`.
    pub hello: Result<Sustained, String>,
    /// Sustained forced restores of `numpy-pandas`.
    pub numpy: Result<Sustained, String>,
    /// Burst of numpy-pandas: (last answer µs, single restore µs).
    pub burst: Result<(f64, f64), String>,
    /// The first burst's last answer, µs (nothing learned yet), when
    /// there was one.
    pub burst_first: Option<f64>,
    /// numpy-pandas: (restore without spares µs, restore into a spare µs).
    pub on_demand: Result<(f64, f64), String>,
    /// numpy-pandas: (single restore µs, fork floor µs).
    pub floor: Result<(f64, f64), String>,
    /// numpy-pandas: the median of single restores into the server at
    /// rest (the bursts' reference), µs, when measured: printed beside
    /// goal 4, which is judged on [`Figures::floor`] (back to back).
    pub floor_at_rest: Option<f64>,
    /// numpy-pandas first invocation ÷ warm handler: (mmap, uffd).
    pub first: (Result<f64, String>, Result<f64, String>),
    /// The same first invocations ÷ a warm handler after 50 ms idle
    /// (reference only: the goal is judged on [`Figures::first`]).
    pub first_idle: (Result<f64, String>, Result<f64, String>),
    /// numpy-pandas capture p50, µs.
    pub capture: Result<f64, String>,
    /// numpy-pandas idle restored copies held, and the memory they added
    /// (bytes, as the density section counts it).
    pub density: Result<(u64, f64), String>,
    /// numpy-pandas on a cold host: boot median ÷ restore median.
    pub cold_host: Result<f64, String>,
}

/// Goal 5's source line, with the first invocations against a warm
/// instance after the same cold caches, when measured.
fn first_reference(
    idle: &(Result<f64, String>, Result<f64, String>),
    numpy: &Result<Sustained, String>,
) -> String {
    let from = "From \"First invocation after a start\" below.";
    let fork = match numpy {
        Ok(Sustained {
            fork: Some((_, Some(first))),
            ..
        }) => format!(
            " A copy made by `fork` of a warm `python3` outside thaw calls the handler first in {} a warm call's time \
             (its memory shared copy-on-write: \"Sustained cold starts\").",
            ratio(Some(*first))
        ),
        _ => String::new(),
    };
    let text = match idle {
        (Ok(m), Ok(u)) => format!(
            "{from} For reference (not the goal): against a warm instance's handler after 50 ms idle, \
             whose caches are as cold, mmap {}, uffd {}: what the restore itself adds.",
            ratio(Some(*m)),
            ratio(Some(*u))
        ),
        _ => from.to_string(),
    };
    text + &fork
}

/// Goal 1: CPU per cold start of numpy-pandas, seconds.
pub const CPU_GOAL: f64 = 0.005;
/// Goal 2: sustained cold starts per second.
pub const HELLO_RATE_GOAL: f64 = 300.0;
/// Goal 2 for numpy-pandas.
pub const NUMPY_RATE_GOAL: f64 = 150.0;
/// Goal 3: last answer of a burst ÷ single restore.
pub const BURST_GOAL: f64 = 6.0;
/// Goal 3: on-demand sandbox ÷ spare.
pub const ON_DEMAND_GOAL: f64 = 2.0;
/// Goal 4: restore ÷ fork floor.
pub const FLOOR_GOAL: f64 = 1.0;
/// Goal 5: first invocation ÷ warm.
pub const FIRST_GOAL: f64 = 1.5;
/// Goal 6: capture, µs.
pub const CAPTURE_GOAL_US: f64 = 60_000.0;
/// Goal 7: copies.
pub const DENSITY_COPIES: u64 = 1000;
/// Goal 8: boot ÷ restore with the page cache dropped.
pub const COLD_HOST_GOAL: f64 = 10.0;
/// Goal 7: memory, bytes.
pub const DENSITY_BYTES: f64 = 20.0 * (1u64 << 30) as f64;

fn ms(seconds: f64) -> String {
    format!("{:.2} ms", seconds * 1e3)
}

fn section(
    out: &mut String,
    title: &str,
    goal: &str,
    measured: &str,
    verdict: &Verdict,
    more: &str,
) {
    out.push_str(&format!(
        "### {title}\n\n* Goal: {goal}\n* Measured: {measured}\n* Verdict: {}\n",
        verdict.text()
    ));
    if !more.is_empty() {
        out.push_str(&format!("* {more}\n"));
    }
    out.push('\n');
}

/// One line per goal: its number, title and verdict (for the summary).
pub fn verdicts(f: &Figures) -> Vec<(&'static str, Verdict)> {
    render_parts(f)
        .into_iter()
        .map(|(t, v, _)| (t, v))
        .collect()
}

fn render_parts(f: &Figures) -> Vec<(&'static str, Verdict, String)> {
    let mut parts = Vec::new();
    let mut out = String::new();

    // 1. CPU per cold start.
    let (measured, verdict) = match &f.numpy {
        Ok(Sustained { cpu: Some(c), .. }) => {
            let hello = match &f.hello {
                Ok(Sustained { cpu: Some(h), .. }) => format!("; hello {}", ms(*h)),
                _ => String::new(),
            };
            (
                format!("numpy-pandas {}{hello}", ms(*c)),
                Verdict::of(*c <= CPU_GOAL),
            )
        }
        Ok(_) => ("–".into(), Verdict::NotMeasured("no CPU reading".into())),
        Err(e) => ("–".into(), Verdict::NotMeasured(e.clone())),
    };
    let mut source = String::from(
        "From \"Sustained cold starts\" below (median of rounds; how it is counted is written there).",
    );
    if let Ok(Sustained {
        fork: Some((fork, _)),
        ..
    }) = &f.numpy
    {
        source.push_str(&format!(
            " For reference (not the goal): a copy made by `fork` of a warm numpy-pandas `python3` outside thaw \
             (no sandbox, no HTTP; the child answers once and exits) costs {} of CPU; the goal is {} of that.",
            ms(*fork),
            ratio(Some(CPU_GOAL / fork))
        ));
    }
    section(
        &mut out,
        "1. CPU per cold start",
        &format!("(Δ CPU of the server + Σ CPU of the sandboxes' cgroups) ÷ cold starts, {} clients forcing restores: numpy-pandas ≤ {}", super::throughput::COLD_CLIENTS, ms(CPU_GOAL)),
        &measured,
        &verdict,
        &source,
    );
    parts.push(("1. CPU per cold start", verdict, std::mem::take(&mut out)));

    // 2. Sustained cold starts.
    let one = |r: &Result<Sustained, String>, goal: f64| match r {
        Ok(s) => (
            format!("{:.1}/s, {} failed", s.rate, s.failed),
            Verdict::of(s.rate >= goal && s.failed == 0),
        ),
        Err(e) => ("–".into(), Verdict::NotMeasured(e.clone())),
    };
    let (h, hv) = one(&f.hello, HELLO_RATE_GOAL);
    let (n, nv) = one(&f.numpy, NUMPY_RATE_GOAL);
    let verdict = hv.and(nv);
    section(
        &mut out,
        "2. Sustained cold starts",
        &format!(
            "≥ {HELLO_RATE_GOAL:.0}/s for hello, ≥ {NUMPY_RATE_GOAL:.0}/s for numpy-pandas, {} clients forcing restores, no failures",
            super::throughput::COLD_CLIENTS
        ),
        &format!("hello {h}; numpy-pandas {n}"),
        &verdict,
        "From \"Sustained cold starts\" below.",
    );
    parts.push((
        "2. Sustained cold starts",
        verdict,
        std::mem::take(&mut out),
    ));

    // 3. Bursts.
    let (b, bv) = match &f.burst {
        Ok((last, single)) => {
            let r = last / single.max(1.0);
            (
                format!(
                    "the last of {} answers after {} = {} the single-restore median ({})",
                    super::burst::BURST,
                    us(Some(*last)),
                    ratio(Some(r)),
                    us(Some(*single))
                ),
                Verdict::of(r <= BURST_GOAL),
            )
        }
        Err(e) => ("–".into(), Verdict::NotMeasured(e.clone())),
    };
    let b = match (&f.burst, f.burst_first) {
        (Ok((_, single)), Some(first)) => format!(
            "{b} (median of the bursts; the first, before the server had seen a burst, {} = {})",
            us(Some(first)),
            ratio(Some(first / single.max(1.0)))
        ),
        _ => b,
    };
    let (o, ov) = match &f.on_demand {
        Ok((none, spare)) => {
            let r = none / spare.max(1.0);
            (
                format!(
                    "a restore with no spare {} = {} one into a spare ({})",
                    us(Some(*none)),
                    ratio(Some(r)),
                    us(Some(*spare))
                ),
                Verdict::of(r <= ON_DEMAND_GOAL),
            )
        }
        Err(e) => ("–".into(), Verdict::NotMeasured(e.clone())),
    };
    let verdict = bv.and(ov);
    section(
        &mut out,
        "3. Bursts",
        &format!(
            "{} concurrent cold starts of numpy-pandas all answered within ×{BURST_GOAL} the single-restore p50; a sandbox made on demand costs ≤ ×{ON_DEMAND_GOAL} a spare",
            super::burst::BURST
        ),
        &format!("{b}; {o}"),
        &verdict,
        "From \"Bursts\" and \"Spare sandboxes\" below (on demand: the median of rounds of the no-spares server; spare: the p50 of the default server's restores that hit a spare). Each step of making a sandbox: `cargo bench -p pool --bench sandbox`.",
    );
    parts.push(("3. Bursts", verdict, std::mem::take(&mut out)));

    // 4. The floor.
    let (m, verdict) = match &f.floor {
        Ok((restore, fork)) => {
            let r = restore / fork.max(1.0);
            let at_rest = f.floor_at_rest.map_or(String::new(), |single| {
                format!(
                    "; a single restore into the server at rest (its spares pre-mapped) {} = {}",
                    us(Some(single)),
                    ratio(Some(single / fork.max(1.0)))
                )
            });
            (
                format!(
                    "restore (mmap) {} = {} the fork floor ({}), back to back{at_rest}",
                    us(Some(*restore)),
                    ratio(Some(r)),
                    us(Some(*fork))
                ),
                Verdict::of(r <= FLOOR_GOAL),
            )
        }
        Err(e) => ("–".into(), Verdict::NotMeasured(e.clone())),
    };
    section(
        &mut out,
        "4. At the floor",
        "a single forced restore of numpy-pandas through HTTP no slower than the fork floor (×1)",
        &m,
        &verdict,
        "From \"Cold starts\" below (medians of rounds; its restores come one after another, each into a spare made since the previous one, pre-mapped or not yet: the verdict is on those); the single restores at rest are the bursts' reference (\"Bursts\").",
    );
    parts.push(("4. At the floor", verdict, std::mem::take(&mut out)));

    // 5. First invocation.
    let one = |r: &Result<f64, String>| match r {
        Ok(x) => (ratio(Some(*x)), Verdict::of(*x <= FIRST_GOAL)),
        Err(e) => ("–".into(), Verdict::NotMeasured(e.clone())),
    };
    let (a, av) = one(&f.first.0);
    let (b, bv) = one(&f.first.1);
    let verdict = av.and(bv);
    section(
        &mut out,
        "5. First invocation",
        &format!("the first invocation after a restore ≤ ×{FIRST_GOAL} a warm one, in both modes (numpy-pandas)"),
        &format!("mmap {a}, uffd {b} (handler time p50 ÷ warm handler p50)"),
        &verdict,
        &first_reference(&f.first_idle, &f.numpy),
    );
    parts.push(("5. First invocation", verdict, std::mem::take(&mut out)));

    // 6. Capture.
    let (m, verdict) = match &f.capture {
        Ok(c) => (
            format!("p50 {}", us(Some(*c))),
            Verdict::of(*c <= CAPTURE_GOAL_US),
        ),
        Err(e) => ("–".into(), Verdict::NotMeasured(e.clone())),
    };
    section(
        &mut out,
        "6. Capture",
        &format!(
            "numpy-pandas captured into a usable snapshot in ≤ {}",
            us(Some(CAPTURE_GOAL_US))
        ),
        &m,
        &verdict,
        "From \"Capture\" below (the server's `capture_us`).",
    );
    parts.push(("6. Capture", verdict, std::mem::take(&mut out)));

    // 7. Density.
    let (m, verdict) = match &f.density {
        Ok((copies, bytes)) if *copies >= DENSITY_COPIES => (
            format!(
                "{copies} copies added {:.2} GiB",
                bytes / (1u64 << 30) as f64
            ),
            Verdict::of(*bytes < DENSITY_BYTES),
        ),
        Ok((copies, bytes)) => (
            format!(
                "{copies} copies added {:.1} MiB (not extrapolated)",
                bytes / (1u64 << 20) as f64
            ),
            Verdict::NotMeasured(format!(
                "this run held {copies} copies; the goal needs {DENSITY_COPIES} actually started"
            )),
        ),
        Err(e) => ("–".into(), Verdict::NotMeasured(e.clone())),
    };
    section(
        &mut out,
        "7. Density",
        &format!(
            "{DENSITY_COPIES} idle restored numpy-pandas copies actually started add under 20 GiB, the image's page cache and the server counted"
        ),
        &m,
        &verdict,
        "From \"Density\" below.",
    );
    parts.push(("7. Density", verdict, std::mem::take(&mut out)));

    // 8. A cold host.
    let (m, verdict) = match &f.cold_host {
        Ok(speedup) => (
            format!("numpy-pandas: boot ÷ restore ×{speedup:.1}"),
            Verdict::of(*speedup >= COLD_HOST_GOAL),
        ),
        Err(e) => ("–".into(), Verdict::NotMeasured(e.clone())),
    };
    section(
        &mut out,
        "8. A cold host",
        &format!(
            "with the page cache dropped before each cold start, restore ≥ ×{COLD_HOST_GOAL:.0} faster than boot in the same run"
        ),
        &m,
        &verdict,
        "From \"A cold host\" below (medians of the rounds).",
    );
    parts.push(("8. A cold host", verdict, std::mem::take(&mut out)));
    parts
}

/// The goals section: a summary table, then one subsection per goal.
pub fn render(f: &Figures) -> String {
    let parts = render_parts(f);
    let mut out = String::from(
        "The goals of issue 16 (on this 2-core machine), each with this run's figure and whether it is met. Goals 1, 2, 3 \
         and 5 are the ones the issue is for.\n\n| goal | verdict |\n|--|--|\n",
    );
    for (title, verdict, _) in &parts {
        out.push_str(&format!(
            "| {title} | {} |\n",
            verdict.text().replace('|', "\\|")
        ));
    }
    out.push('\n');
    for (_, _, text) in parts {
        out.push_str(&text);
    }
    out
}

/// Issue 18: first remote restore ÷ local restore, at most.
pub const REMOTE_LOCAL_GOAL: f64 = 3.0;
/// Issue 18: first remote restore ÷ boot, at most.
pub const REMOTE_BOOT_GOAL: f64 = 0.1;
/// Issue 18: bytes fetched by the first remote restore ÷ working set, at
/// most.
pub const REMOTE_BYTES_GOAL: f64 = 2.0;

/// Issue 18's goals (numpy-pandas): title, measured, verdict.
pub fn remote_verdicts(f: &RemoteFigures) -> Vec<(&'static str, String, Verdict)> {
    let ratio_goal = |r: &Result<f64, String>, goal: f64| match r {
        Ok(x) => (ratio(Some(*x)), Verdict::of(*x <= goal)),
        Err(e) => ("–".into(), Verdict::NotMeasured(e.clone())),
    };
    let (local, lv) = ratio_goal(&f.first_over_local, REMOTE_LOCAL_GOAL);
    let (boot, bv) = ratio_goal(&f.first_over_boot, REMOTE_BOOT_GOAL);
    let (bytes, yv) = match &f.bytes {
        Ok((b, set, exact)) => {
            let r = b / set.max(1.0);
            let text = format!(
                "{} fetched ÷ {} {} = {}{}",
                mib(*b),
                if *exact {
                    "stored working set"
                } else {
                    "at most"
                },
                mib(*set),
                if *exact { "" } else { "≥ " },
                ratio(Some(r))
            );
            let verdict = if *exact || r > REMOTE_BYTES_GOAL {
                Verdict::of(r <= REMOTE_BYTES_GOAL)
            } else {
                Verdict::NotMeasured(
                    "the server does not report the working set's stored part; the ratio is only known to be at least this"
                        .into(),
                )
            };
            (text, verdict)
        }
        Err(e) => ("–".into(), Verdict::NotMeasured(e.clone())),
    };
    vec![
        ("first remote restore ≤ ×3 a local restore", local, lv),
        ("first remote restore ≤ 1/10 of a boot", boot, bv),
        ("bytes fetched ≤ ×2 the working set", bytes, yv),
    ]
}

/// Issue 18's goals as a table (numpy-pandas, from "Remote restore").
pub fn render_remote(f: &RemoteFigures) -> String {
    let mut out = String::from(
        "### Issue 18: a shared store\n\nThe first restore of numpy-pandas on a node that holds none of its pages, from \"Remote restore\" below (medians of rounds, each a fresh node).\n\n| goal (issue 18) | measured | verdict |\n|--|--|--|\n",
    );
    for (title, measured, verdict) in remote_verdicts(f) {
        out.push_str(&format!(
            "| {title} | {} | {} |\n",
            measured.replace('|', "\\|"),
            verdict.text().replace('|', "\\|")
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn figures() -> Figures {
        Figures {
            hello: Ok(Sustained {
                rate: 320.0,
                failed: 0,
                cpu: Some(0.003),
                fork: None,
            }),
            numpy: Ok(Sustained {
                rate: 90.0,
                failed: 0,
                cpu: Some(0.004),
                fork: None,
            }),
            burst: Ok((150_000.0, 9_000.0)),
            burst_first: Some(160_000.0),
            on_demand: Ok((15_000.0, 9_000.0)),
            floor: Err("fork floor: error: boom".into()),
            floor_at_rest: None,
            first: (Ok(1.2), Ok(1.4)),
            first_idle: (Ok(0.9), Err("no warm (after 50 ms idle) arm".into())),
            capture: Ok(196_000.0),
            density: Ok((100, 300.0 * (1u64 << 20) as f64)),
            cold_host: Err("the cold-host rounds did not run".into()),
        }
    }

    #[test]
    fn every_goal_has_a_section_and_a_verdict() {
        let text = render(&figures());
        for n in 1..=8 {
            assert!(text.contains(&format!("### {n}. ")), "goal {n} in:\n{text}");
        }
        let v = verdicts(&figures());
        assert_eq!(v[0].1, Verdict::Met, "4 ms ≤ 5 ms");
        assert_eq!(v[1].1, Verdict::NotMet, "numpy 90/s < 150/s");
        assert_eq!(v[2].1, Verdict::NotMet, "burst ×16.7 > ×6");
        assert!(matches!(v[3].1, Verdict::NotMeasured(_)));
        assert_eq!(v[4].1, Verdict::Met);
        assert_eq!(v[5].1, Verdict::NotMet);
        assert!(matches!(&v[6].1, Verdict::NotMeasured(w) if w.contains("100 copies")));
        assert!(matches!(v[7].1, Verdict::NotMeasured(_)));
        assert!(
            text.contains("| 1. CPU per cold start | **met** |"),
            "{text}"
        );
        assert!(
            text.contains("numpy-pandas 4.00 ms; hello 3.00 ms"),
            "{text}"
        );
        assert!(
            text.contains("**not measured yet** (fork floor: error: boom)"),
            "{text}"
        );
    }

    #[test]
    fn the_first_invocation_is_judged_on_warm_and_the_idle_reference_only_shown() {
        let mut f = figures();
        let text = render(&f);
        assert!(
            !text.contains("For reference"),
            "one mode missing: no line\n{text}"
        );
        f.first = (Ok(2.4), Ok(2.6));
        f.first_idle = (Ok(1.1), Ok(1.2));
        assert_eq!(
            verdicts(&f)[4].1,
            Verdict::NotMet,
            "judged on warm, not on the reference"
        );
        let text = render(&f);
        assert!(
            text.contains("mmap ×1.10, uffd ×1.20: what the restore itself adds"),
            "{text}"
        );
    }

    #[test]
    fn the_fork_floor_is_a_reference_beside_goals_1_and_5() {
        let mut f = figures();
        let text = render(&f);
        assert!(
            !text.contains("made by `fork`"),
            "not measured: no line\n{text}"
        );
        f.numpy = Ok(Sustained {
            rate: 170.0,
            failed: 0,
            cpu: Some(0.011),
            fork: Some((0.007, Some(9.5))),
        });
        f.first = (Ok(2.1), Ok(2.5));
        let v = verdicts(&f);
        assert_eq!(v[0].1, Verdict::NotMet, "judged on the restores' 11 ms");
        assert_eq!(v[4].1, Verdict::NotMet, "judged on warm");
        let text = render(&f);
        assert!(
            text.contains("costs 7.00 ms of CPU; the goal is ×0.71 of that."),
            "{text}"
        );
        assert!(
            text.contains("calls the handler first in ×9.50 a warm call's time"),
            "{text}"
        );
    }

    #[test]
    fn the_cold_host_goal_is_judged_on_boot_over_restore() {
        let mut f = figures();
        f.cold_host = Ok(12.5);
        assert_eq!(verdicts(&f)[7].1, Verdict::Met, "×12.5 ≥ ×10");
        f.cold_host = Ok(4.0);
        assert_eq!(verdicts(&f)[7].1, Verdict::NotMet, "×4 < ×10");
        assert!(render(&f).contains("boot ÷ restore ×4.0"));
    }

    #[test]
    fn failures_fail_the_sustained_goal() {
        let mut f = figures();
        f.hello = Ok(Sustained {
            rate: 400.0,
            failed: 1,
            cpu: None,
            fork: None,
        });
        f.numpy = Ok(Sustained {
            rate: 200.0,
            failed: 0,
            cpu: Some(0.006),
            fork: None,
        });
        let v = verdicts(&f);
        assert_eq!(v[0].1, Verdict::NotMet, "6 ms > 5 ms");
        assert_eq!(v[1].1, Verdict::NotMet, "a failure");
    }

    #[test]
    fn issue_18_verdicts_are_computed() {
        let f = RemoteFigures {
            first_over_local: Ok(2.5),
            first_over_boot: Ok(0.2),
            bytes: Ok((3.0 * 1048576.0, 1048576.0, false)),
        };
        let v = remote_verdicts(&f);
        assert_eq!(v[0].2, Verdict::Met, "×2.5 ≤ ×3");
        assert_eq!(v[1].2, Verdict::NotMet, "1/5 > 1/10");
        assert_eq!(v[2].2, Verdict::NotMet, "at least ×3 > ×2");
        assert_eq!(v[2].1, "3.0 MiB fetched ÷ at most 1.0 MiB = ≥ ×3.00");
        let f = RemoteFigures {
            bytes: Ok((1.5 * 1048576.0, 1048576.0, false)),
            ..f
        };
        assert!(matches!(remote_verdicts(&f)[2].2, Verdict::NotMeasured(_)));
        let f = RemoteFigures {
            bytes: Ok((1.5 * 1048576.0, 1048576.0, true)),
            first_over_local: Err("no Garage".into()),
            ..f
        };
        let v = remote_verdicts(&f);
        assert_eq!(v[2].2, Verdict::Met);
        assert_eq!(v[0].2, Verdict::NotMeasured("no Garage".into()));
        let text = render_remote(&f);
        assert!(text.contains("| first remote restore ≤ ×3 a local restore | – | **not measured yet** (no Garage) |"), "{text}");
    }
}
