//! Latency distributions drawn as SVG: one cumulative distribution curve per
//! scenario on a logarithmic time axis, so a reader sees the whole
//! distribution (its body, its tail, the gap between start kinds) and not
//! only medians.
//!
//! The SVG is written by hand (a few dozen elements: axes, grid, one
//! `<polyline>` per series, a legend); text is plain `<text>`, so no font
//! files are needed to make it, and any browser draws it.
//!
//! ```text
//!  1.0 ┤        ┌───────          ┌──────
//!      │        │   warm          │  boot
//!  0.5 ┤       ┌┘                ┌┘
//!      │       │                 │
//!  0.0 ┼───────┴─────────────────┴──────────
//!      10 µs   100 µs   1 ms   10 ms   100 ms
//! ```

use std::fmt::Write as _;

use hdrhistogram::Histogram;

const WIDTH: f64 = 760.0;
const PLOT_H: f64 = 340.0;
const LEFT: f64 = 60.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 50.0;
const LEGEND_ROW: f64 = 18.0;
const COLOURS: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
];

/// One curve: its name and the latencies (µs) it is drawn from.
#[derive(Debug, Clone, Copy)]
pub struct Series<'a> {
    /// The legend text.
    pub name: &'a str,
    /// The values.
    pub values: &'a Histogram<u64>,
}

/// The SVG of the cumulative distributions of `series` (empty ones are
/// left out), titled `title`.
pub fn cdf_svg(title: &str, series: &[Series<'_>]) -> String {
    let drawn: Vec<&Series<'_>> = series.iter().filter(|s| !s.values.is_empty()).collect();
    let lo = drawn
        .iter()
        .map(|s| s.values.min().max(1))
        .min()
        .unwrap_or(1);
    let hi = drawn
        .iter()
        .map(|s| s.values.max().max(1))
        .max()
        .unwrap_or(10);
    let first = (lo as f64).log10().floor() as i32;
    let mut last = (hi as f64).log10().ceil() as i32;
    if last <= first {
        last = first + 1;
    }
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = PLOT_H;
    // The legend goes under the axis, one row per curve.
    let height = TOP + plot_h + BOTTOM + LEGEND_ROW * drawn.len() as f64 + 8.0;
    let x_of = |us: f64| {
        LEFT + ((us.max(1.0).log10() - f64::from(first)) / f64::from(last - first)) * plot_w
    };
    let y_of = |share: f64| TOP + (1.0 - share) * plot_h;

    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        svg,
        r#"<rect width="100%" height="100%" fill="white"/><text x="{}" y="22" text-anchor="middle" font-size="15">{}</text>"#,
        WIDTH / 2.0,
        escape(title)
    );
    // Grid and axes.
    for k in first..=last {
        let decade = 10f64.powi(k);
        let x = x_of(decade);
        let _ = writeln!(
            svg,
            r##"<line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{:.1}" stroke="#ccc"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
            TOP + plot_h,
            TOP + plot_h + 18.0,
            time_label(decade)
        );
        if k < last {
            for m in [2.0, 5.0] {
                let xm = x_of(decade * m);
                let _ = writeln!(
                    svg,
                    r##"<line x1="{xm:.1}" y1="{TOP}" x2="{xm:.1}" y2="{:.1}" stroke="#eee"/>"##,
                    TOP + plot_h
                );
            }
        }
    }
    for i in 0..=4 {
        let share = f64::from(i) / 4.0;
        let y = y_of(share);
        let _ = writeln!(
            svg,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ccc"/><text x="{:.1}" y="{:.1}" text-anchor="end">{share:.2}</text>"##,
            LEFT + plot_w,
            LEFT - 6.0,
            y + 4.0
        );
    }
    let _ = writeln!(
        svg,
        r##"<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#333"/><text x="{:.1}" y="{:.1}" text-anchor="middle">latency (log scale)</text><text x="16" y="{:.1}" text-anchor="middle" transform="rotate(-90 16 {:.1})">share of requests at or below</text>"##,
        LEFT + plot_w / 2.0,
        TOP + plot_h + 40.0,
        TOP + plot_h / 2.0,
        TOP + plot_h / 2.0
    );
    // Curves: a step up at every recorded value.
    let mut legend = String::new();
    for (i, s) in drawn.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let total = s.values.len() as f64;
        let mut points = String::new();
        let mut seen = 0u64;
        let mut y_prev = y_of(0.0);
        for v in s.values.iter_recorded() {
            let x = x_of(s.values.highest_equivalent(v.value_iterated_to()) as f64);
            seen += v.count_since_last_iteration();
            let y = y_of(seen as f64 / total);
            let _ = write!(points, "{x:.1},{y_prev:.1} {x:.1},{y:.1} ");
            y_prev = y;
        }
        let _ = writeln!(
            svg,
            r#"<polyline fill="none" stroke="{colour}" stroke-width="2" points="{}"/>"#,
            points.trim_end()
        );
        let lx = LEFT;
        let ly = TOP + plot_h + BOTTOM + 6.0 + LEGEND_ROW * i as f64;
        let _ = writeln!(
            legend,
            r#"<line x1="{lx:.1}" y1="{ly:.1}" x2="{:.1}" y2="{ly:.1}" stroke="{colour}" stroke-width="3"/><text x="{:.1}" y="{:.1}">{} (n={}, p50 {}, p90 {})</text>"#,
            lx + 24.0,
            lx + 30.0,
            ly + 4.0,
            escape(s.name),
            s.values.len(),
            time_label(s.values.value_at_quantile(0.5) as f64),
            time_label(s.values.value_at_quantile(0.9) as f64)
        );
    }
    svg.push_str(&legend);
    svg.push_str("</svg>\n");
    svg
}

/// A duration in µs as a short label: `50 µs`, `1.5 ms`, `2 s`.
pub fn time_label(us: f64) -> String {
    let trim = |v: f64| {
        let s = if v >= 100.0 {
            format!("{v:.0}")
        } else if v >= 10.0 {
            format!("{v:.1}")
        } else {
            format!("{v:.2}")
        };
        let s = if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').to_owned()
        } else {
            s
        };
        s
    };
    if us >= 1e6 {
        format!("{} s", trim(us / 1e6))
    } else if us >= 1e3 {
        format!("{} ms", trim(us / 1e3))
    } else {
        format!("{} µs", trim(us))
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::histogram;

    #[test]
    fn labels() {
        assert_eq!(time_label(50.0), "50 µs");
        assert_eq!(time_label(1500.0), "1.5 ms");
        assert_eq!(time_label(100_000.0), "100 ms");
        assert_eq!(time_label(2_000_000.0), "2 s");
        assert_eq!(time_label(3.25), "3.25 µs");
    }

    #[test]
    fn draws_one_curve_per_non_empty_series() {
        let mut a = histogram();
        let mut b = histogram();
        for v in [100, 120, 130, 5000] {
            a.record(v).unwrap();
        }
        b.record(40_000).unwrap();
        let empty = histogram();
        let svg = cdf_svg(
            "hello <cold>",
            &[
                Series {
                    name: "warm",
                    values: &a,
                },
                Series {
                    name: "boot",
                    values: &b,
                },
                Series {
                    name: "restore",
                    values: &empty,
                },
            ],
        );
        assert!(svg.starts_with("<svg"));
        assert!(svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.contains("hello &lt;cold&gt;"));
        assert!(svg.contains("warm (n=4"));
        assert!(!svg.contains("restore (n="));
        assert!(svg.contains(">100 µs<") && svg.contains(">100 ms<"));
    }
}
