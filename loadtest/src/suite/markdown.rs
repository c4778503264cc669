//! Markdown pieces of `docs/benchmarks.md`: tables and number formats.

use super::plot::time_label;

/// A Markdown table built row by row.
#[derive(Debug, Clone)]
pub struct Table {
    header: Vec<String>,
    right: Vec<bool>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column titles; a title starting with `>` is
    /// right-aligned (the `>` is dropped).
    pub fn new(header: &[&str]) -> Table {
        Table {
            header: header
                .iter()
                .map(|h| h.trim_start_matches('>').to_owned())
                .collect(),
            right: header.iter().map(|h| h.starts_with('>')).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row (missing cells are left empty).
    pub fn row(&mut self, cells: Vec<String>) -> &mut Table {
        self.rows.push(cells);
        self
    }

    /// The table as Markdown, ending with a newline.
    pub fn render(&self) -> String {
        let cell = |s: &str| s.replace('|', "\\|").replace('\n', " ");
        let mut out = format!("| {} |\n|", self.header.join(" | "));
        for &r in &self.right {
            out.push_str(if r { "--:|" } else { "--|" });
        }
        out.push('\n');
        for row in &self.rows {
            let cells: Vec<String> = (0..self.header.len())
                .map(|i| row.get(i).map_or_else(String::new, |c| cell(c)))
                .collect();
            out.push_str(&format!("| {} |\n", cells.join(" | ")));
        }
        out
    }
}

/// A latency in µs, human-sized (`85 µs`, `3.8 ms`); `–` for none.
pub fn us(v: Option<f64>) -> String {
    v.map_or_else(|| "–".to_owned(), time_label)
}

/// A ratio like `×12.3` (three significant digits); `–` for none.
pub fn ratio(v: Option<f64>) -> String {
    match v {
        Some(r) if r.is_finite() => {
            if r >= 100.0 {
                format!("×{r:.0}")
            } else if r >= 10.0 {
                format!("×{r:.1}")
            } else {
                format!("×{r:.2}")
            }
        }
        _ => "–".to_owned(),
    }
}

/// Bytes as MiB with one decimal.
pub fn mib(bytes: f64) -> String {
    format!("{:.1} MiB", bytes / (1024.0 * 1024.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_a_table() {
        let mut t = Table::new(&["name", ">p50"]);
        t.row(vec!["a|b".into(), us(Some(1500.0))]);
        t.row(vec!["c".into()]);
        assert_eq!(
            t.render(),
            "| name | p50 |\n|--|--:|\n| a\\|b | 1.5 ms |\n| c |  |\n"
        );
        assert_eq!(ratio(Some(376.4)), "×376");
        assert_eq!(ratio(Some(1.234)), "×1.23");
        assert_eq!(ratio(None), "–");
        assert_eq!(mib(3.0 * 1024.0 * 1024.0), "3.0 MiB");
    }
}
