//! Reads the server's own metrics back from their text exposition, which is
//! the one public view of `prometheus_client` counters and histograms.
//!
//! ```text
//! # TYPE thaw_invocations counter
//! thaw_invocations_total{function="hello",start="warm",outcome="ok"} 3
//! thaw_start_latency_seconds_bucket{start="warm",le="0.0001"} 2
//! thaw_start_latency_seconds_count{start="warm"} 3
//! ```

use std::collections::BTreeMap;

use serde::Serialize;

/// One sample: metric name, labels, value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Metric name with its suffix (`_total`, `_bucket`, ...).
    pub name: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Value.
    pub value: f64,
}

/// Parses every sample line; comments and malformed lines are skipped.
pub fn parse(text: &str) -> Vec<Sample> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<Sample> {
    if line.starts_with('#') || line.trim().is_empty() {
        return None;
    }
    let (name, labels, rest) = match line.find('{') {
        Some(open) => {
            let close = open + line[open..].rfind('}')?;
            (
                &line[..open],
                parse_labels(&line[open + 1..close]),
                &line[close + 1..],
            )
        }
        None => {
            let (n, r) = line.split_once(' ')?;
            (n, BTreeMap::new(), r)
        }
    };
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        v => v.parse().ok()?,
    };
    Some(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

fn parse_labels(s: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut chars = s.chars().peekable();
    loop {
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            chars.next();
            if c == '=' {
                break;
            }
            if c != ',' && !c.is_whitespace() {
                key.push(c);
            }
        }
        if key.is_empty() || chars.next() != Some('"') {
            return out;
        }
        let mut value = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some('n') => value.push('\n'),
                    Some(o) => value.push(o),
                    None => break,
                },
                '"' => break,
                c => value.push(c),
            }
        }
        out.insert(key, value);
    }
}

/// A histogram by one label, with its buckets made non-cumulative.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Histogram {
    /// Upper bounds of the buckets, seconds (the last is +Inf, written as
    /// `null` in JSON).
    pub bounds: Vec<Option<f64>>,
    /// Observations in each bucket.
    pub counts: Vec<u64>,
    /// All observations.
    pub count: u64,
    /// Sum of the observations, seconds.
    pub sum: f64,
}

impl Histogram {
    /// The value below which a fraction `q` of observations fall, linearly
    /// interpolated inside its bucket (so as exact as the buckets allow).
    pub fn quantile(&self, q: f64) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        let rank = q * self.count as f64;
        let mut seen = 0.0;
        let mut lower = 0.0;
        for (bound, n) in self.bounds.iter().zip(&self.counts) {
            let n = *n as f64;
            if seen + n >= rank && n > 0.0 {
                let Some(upper) = *bound else {
                    return Some(lower);
                };
                return Some(lower + (upper - lower) * ((rank - seen) / n).clamp(0.0, 1.0));
            }
            seen += n;
            if let Some(b) = bound {
                lower = *b;
            }
        }
        Some(lower)
    }
}

/// The histograms named `name` (without `_bucket`), one per value of
/// `label`, summed over every other label (e.g. over functions).
pub fn histograms(samples: &[Sample], name: &str, label: &str) -> BTreeMap<String, Histogram> {
    histograms_where(samples, name, label, None)
}

/// Like [`histograms`], counting only samples whose label `filter.0` is
/// `filter.1`.
pub fn histograms_where(
    samples: &[Sample],
    name: &str,
    label: &str,
    filter: Option<(&str, &str)>,
) -> BTreeMap<String, Histogram> {
    let mut out: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    let mut sums: BTreeMap<String, f64> = BTreeMap::new();
    let bucket = format!("{name}_bucket");
    let sum = format!("{name}_sum");
    for s in samples {
        let Some(key) = s.labels.get(label) else {
            continue;
        };
        if let Some((k, v)) = filter {
            if s.labels.get(k).map(String::as_str) != Some(v) {
                continue;
            }
        }
        if s.name == bucket {
            let le = match s.labels.get("le").map(String::as_str) {
                Some("+Inf") => f64::INFINITY,
                Some(v) => v.parse().unwrap_or(f64::INFINITY),
                None => continue,
            };
            out.entry(key.clone()).or_default().push((le, s.value));
        } else if s.name == sum {
            *sums.entry(key.clone()).or_default() += s.value;
        }
    }
    // Series of the same bucket bound (other labels differing) add up.
    for buckets in out.values_mut() {
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        buckets.dedup_by(|later, first| {
            if later.0 == first.0 {
                first.1 += later.1;
                true
            } else {
                false
            }
        });
    }
    out.into_iter()
        .map(|(key, mut buckets)| {
            buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
            let mut h = Histogram {
                sum: sums.get(&key).copied().unwrap_or(0.0),
                ..Histogram::default()
            };
            let mut prev = 0.0;
            for (le, cum) in buckets {
                h.bounds.push(le.is_finite().then_some(le));
                h.counts.push((cum - prev).max(0.0) as u64);
                prev = cum;
            }
            h.count = prev as u64;
            (key, h)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# HELP x\n# TYPE thaw_invocations counter\n\
thaw_invocations_total{function=\"a\",start=\"warm\",outcome=\"ok\"} 3\n\
thaw_start_latency_seconds_sum{start=\"warm\"} 0.3\n\
thaw_start_latency_seconds_count{start=\"warm\"} 4\n\
thaw_start_latency_seconds_bucket{le=\"0.1\",start=\"warm\"} 2\n\
thaw_start_latency_seconds_bucket{le=\"0.2\",start=\"warm\"} 4\n\
thaw_start_latency_seconds_bucket{le=\"+Inf\",start=\"warm\"} 4\n\
thaw_functions 7\n# EOF\n";

    #[test]
    fn parses_samples() {
        let s = parse(TEXT);
        assert_eq!(s.len(), 7);
        assert_eq!(s[0].name, "thaw_invocations_total");
        assert_eq!(s[0].labels["function"], "a");
        assert_eq!(s[0].labels["outcome"], "ok");
        assert_eq!(s[0].value, 3.0);
        assert_eq!(s[6].name, "thaw_functions");
        assert_eq!(s[6].value, 7.0);
    }

    #[test]
    fn escaped_label_values() {
        let s = parse("m{a=\"x\\\"y\",b=\"z\"} 1\n");
        assert_eq!(s[0].labels["a"], "x\"y");
        assert_eq!(s[0].labels["b"], "z");
    }

    #[test]
    fn histograms_add_up_across_functions_or_filter_one() {
        let text = "h_bucket{function=\"a\",start=\"warm\",le=\"0.1\"} 1\n\
h_bucket{function=\"a\",start=\"warm\",le=\"+Inf\"} 2\n\
h_sum{function=\"a\",start=\"warm\"} 0.5\n\
h_bucket{function=\"b\",start=\"warm\",le=\"0.1\"} 3\n\
h_bucket{function=\"b\",start=\"warm\",le=\"+Inf\"} 3\n\
h_sum{function=\"b\",start=\"warm\"} 0.2\n";
        let samples = parse(text);
        let all = &histograms(&samples, "h", "start")["warm"];
        assert_eq!((all.count, all.counts.clone()), (5, vec![4, 1]));
        assert!((all.sum - 0.7).abs() < 1e-9);
        let a = &histograms_where(&samples, "h", "start", Some(("function", "a")))["warm"];
        assert_eq!((a.count, a.counts.clone()), (2, vec![1, 1]));
    }

    #[test]
    fn histogram_buckets_and_quantiles() {
        let h = histograms(&parse(TEXT), "thaw_start_latency_seconds", "start");
        let w = &h["warm"];
        assert_eq!(w.counts, vec![2, 2, 0]);
        assert_eq!(w.bounds, vec![Some(0.1), Some(0.2), None]);
        assert_eq!(w.count, 4);
        assert!((w.quantile(0.5).unwrap() - 0.1).abs() < 1e-9);
        assert!((w.quantile(1.0).unwrap() - 0.2).abs() < 1e-9);
        assert!((w.quantile(0.75).unwrap() - 0.15).abs() < 1e-9);
        assert_eq!(Histogram::default().quantile(0.5), None);
    }
}
