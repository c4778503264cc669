//! The benchmark suite end to end in its short mode, against a real `thaw
//! serve` it starts itself, and the fork-floor helper against real Python.
//!
//! Needs root (thaw's sandboxes), the `thaw` binary of the same profile
//! (built by `cargo build`/`cargo test --workspace`; `cargo test -p loadtest`
//! alone does not build it), `/usr/bin/python3`, and the package index pip
//! is configured for (numpy and pandas, `test-support/numpy_pandas.rs`;
//! the suite's server installs them into numpy-pandas's layer); without them the tests say why and pass, or fail when `THAW_TEST_STRICT`
//! is set (see `common::missing`).

mod common;
#[path = "../../test-support/garage.rs"]
mod garage;

use std::path::{Path, PathBuf};
use std::process::Command;

const PYTHON: &str = "/usr/bin/python3";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace")
        .to_path_buf()
}

/// `thaw` next to this package's binaries, or in the workspace's target.
fn thaw_binary() -> Option<PathBuf> {
    let beside = Path::new(env!("CARGO_BIN_EXE_thaw-loadtest")).with_file_name("thaw");
    if beside.is_file() {
        return Some(beside);
    }
    let fallback = repo().join("target/debug/thaw");
    fallback.is_file().then_some(fallback)
}

/// The layer cache of the tests' servers (server/tests/common), so that the
/// suite's server installs numpy-pandas's requirements once per machine.
const SHARED_LAYER_CACHE: &str = "/var/tmp/thaw-test-layers";

/// Runs `thaw-fork-floor` from the workspace with `args`, checks that it
/// succeeded and returns what it printed (one latency per line).
fn fork_floor(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_thaw-fork-floor"))
        .current_dir(repo())
        .args(args)
        .output()
        .expect("run thaw-fork-floor");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn fork_floor_prints_one_latency_per_fork() {
    if !Path::new(PYTHON).is_file() {
        skip!("no {PYTHON}");
    }
    let text = fork_floor(&[
        "--dir",
        "examples/hello",
        "--iterations",
        "4",
        "--event",
        r#"{"name": "floor"}"#,
    ]);
    let values: Vec<f64> = text.lines().map(|l| l.parse().unwrap()).collect();
    assert_eq!(values.len(), 4, "{text}");
    assert!(values.iter().all(|v| *v > 0.0), "{text}");
}

/// `--summary-out` writes the CPU the forks cost and every child's handler
/// time, as the suite reads them (`loadtest::suite::forkfloor::Summary`).
#[test]
fn fork_floor_writes_its_cpu_and_handler_times() {
    if !Path::new(PYTHON).is_file() {
        skip!("no {PYTHON}");
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("summary.json");
    let printed = fork_floor(&[
        "--dir",
        "examples/hello",
        "--iterations",
        "5",
        "--event",
        r#"{"name": "floor"}"#,
        "--summary-out",
        path.to_str().expect("a UTF-8 temporary path"),
    ]);
    assert_eq!(printed.lines().count(), 5, "{printed}");
    let text = std::fs::read_to_string(&path).expect("the summary");
    let summary: loadtest::suite::forkfloor::Summary =
        serde_json::from_str(&text).expect("a summary");
    assert_eq!(summary.forks, 5, "{text}");
    assert_eq!(summary.child_handler_us.len(), 5, "{text}");
    assert_eq!(summary.warm_handler_us.len(), 10, "{text}");
    assert!(summary.child_handler_us.iter().all(|v| *v > 0.0), "{text}");
    // Five forks of a python3 cost CPU in the parent (fork) and the
    // children (their handler call and exit).
    assert!(summary.parent_cpu_us > 0.0, "{text}");
    assert!(summary.children_cpu_us > 0.0, "{text}");
    assert!(summary.cpu_per_fork_us().unwrap() > 0.0, "{text}");
}

/// The numpy-pandas example needs its layer: `--pythonpath` gives it numpy
/// and pandas from the package index (as the suite gives it the server's).
#[test]
fn fork_floor_runs_numpy_pandas_with_a_pythonpath() {
    if !Path::new(PYTHON).is_file() {
        skip!("no {PYTHON}");
    }
    let numpy = match common::numpy_pandas::path() {
        Ok(p) => p,
        Err(why) => skip!("no numpy and pandas from the package index: {why}"),
    };
    let text = fork_floor(&[
        "--dir",
        "examples/numpy-pandas",
        "--iterations",
        "2",
        "--event",
        r#"{"store": 7, "column": "price", "min": 100.0}"#,
        "--pythonpath",
        numpy.to_str().expect("a UTF-8 layer path"),
    ]);
    assert_eq!(text.lines().count(), 2, "{text}");
}

#[test]
fn fork_floor_reports_a_broken_function() {
    if !Path::new(PYTHON).is_file() {
        skip!("no {PYTHON}");
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("main.py"),
        "def handler(event, context):\n    raise ValueError('boom')\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_thaw-fork-floor"))
        .current_dir(repo())
        .arg("--dir")
        .arg(dir.path())
        .output()
        .expect("run thaw-fork-floor");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("boom"), "{err}");
    assert!(err.contains("thaw-fork-floor: the driver failed"), "{err}");
}

#[test]
fn short_suite_runs_end_to_end() {
    if !nix::unistd::geteuid().is_root() {
        skip!("thaw's sandboxes need root");
    }
    let Some(thaw) = thaw_binary() else {
        skip!("no thaw binary (build the workspace first: cargo build)");
    };
    // numpy-pandas installs numpy and pandas from the package index.
    if let Err(why) = common::numpy_pandas::path() {
        skip!("numpy and pandas cannot be installed from the package index: {why}");
    }
    // The remote section (issue 18) needs Garage: without it the suite
    // still runs and the remote start kind alone is "not available" (the
    // short run fails on it); under THAW_TEST_STRICT (CI) the test fails.
    let garage = garage::binary().and_then(|p| {
        if p.is_file() {
            Ok(p)
        } else {
            Err(format!(
                "the garage binary is missing: {} is not a file",
                p.display()
            ))
        }
    });
    if let Err(why) = &garage {
        common::missing(&format!("the remote section cannot run: {why}"));
    }
    let out_dir = tempfile::tempdir().unwrap();
    let mut suite = Command::new(env!("CARGO_BIN_EXE_thaw-loadtest"));
    if std::env::var_os("THAW_LAYER_CACHE").is_none() {
        suite.env("THAW_LAYER_CACHE", SHARED_LAYER_CACHE);
    }
    let out = suite
        .arg("suite")
        .arg("--short")
        .arg("--out")
        .arg(out_dir.path())
        .arg("--thaw")
        .arg(&thaw)
        .arg("--fork-floor")
        .arg(env!("CARGO_BIN_EXE_thaw-fork-floor"))
        .arg("--repo")
        .arg(repo())
        .output()
        .expect("run the suite");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let doc = std::fs::read_to_string(out_dir.path().join("benchmarks.md")).unwrap();
    if garage.is_err() {
        assert!(!out.status.success(), "no Garage, yet:\n{stderr}");
        let missing = doc
            .split("## Not available yet\n\n")
            .nth(1)
            .and_then(|s| s.split("\n## ").next())
            .unwrap_or_default();
        assert_eq!(
            missing.lines().filter(|l| l.starts_with("* ")).count(),
            1,
            "{doc}"
        );
        assert!(
            missing.contains(
                "* restore (remote, first on an empty node): the garage binary is missing"
            ),
            "{doc}"
        );
        assert!(doc.contains("## Errors\n\nNone"), "{doc}");
        return;
    }
    assert!(out.status.success(), "the short suite failed:\n{stderr}");
    for heading in [
        "# thaw benchmarks",
        "## Goals",
        "### 1. CPU per cold start",
        "### 2. Sustained cold starts",
        "### 3. Bursts",
        "### 4. At the floor",
        "### 5. First invocation",
        "### 6. Capture",
        "### 7. Density",
        "### 8. A cold host",
        "## Summary",
        "### hello",
        "### numpy-pandas",
        "### Spare sandboxes",
        "### node-catalog",
        "### java-inventory",
        "## First invocation after a start",
        "## Capture",
        "## Store: dedup across the examples",
        "## Density",
        "## Warm throughput",
        "## Sustained cold starts",
        "## Bursts",
        "## A cold host",
        "### Issue 18: a shared store",
        "## Remote restore",
        "## Not available yet\n\nEvery start kind ran.",
        "## Errors\n\nNone",
    ] {
        assert!(doc.contains(heading), "no {heading:?} in:\n{doc}");
    }
    for kind in [
        "| warm |",
        "| boot |",
        "| restore (mmap) |",
        "| restore (uffd + prefetch) |",
        "| restore (mmap, no spares) |",
        "| fork floor |",
    ] {
        assert!(doc.contains(kind), "no row {kind:?} in:\n{doc}");
    }
    // Every goal has a verdict, and each one measured has its figure: the
    // short run measures all but the density of 1,000 copies.
    let goals = &doc[doc.find("## Goals").unwrap()..doc.find("### Issue 18").unwrap()];
    assert_eq!(goals.matches("* Verdict: ").count(), 8, "{goals}");
    assert_eq!(goals.matches("**not measured yet**").count(), 2, "{goals}");
    assert!(
        goals.contains("numpy-pandas") && goals.contains(" ms"),
        "{goals}"
    );
    // The spares: the no-spares server never hits one.
    assert!(
        doc.lines()
            .any(|l| l.starts_with("| numpy-pandas | restore (mmap, no spares) | 0/")),
        "{doc}"
    );
    // The CPU per cold start of every sustained restore row.
    let sustained = &doc[doc.find("## Sustained cold starts").unwrap()..];
    assert!(
        sustained
            .lines()
            .filter(|l| l.starts_with("| hello | restore |")
                || l.starts_with("| numpy-pandas | restore |"))
            .all(|l| {
                // The CPU per cold start cell: "N ms (server + sandboxes)".
                let cells: Vec<&str> = l.split('|').map(str::trim).collect();
                cells
                    .get(10)
                    .is_some_and(|c| c.ends_with(')') && c.contains(" + "))
            }),
        "{sustained}"
    );
    // The Node.js and Java rows (issue 15): every start kind but the fork
    // floor, which is Python's.
    for f in ["node-catalog", "java-inventory"] {
        let section = doc
            .split(&format!("### {f}\n"))
            .nth(1)
            .and_then(|s| s.split("\n### ").next())
            .and_then(|s| s.split("\n## ").next())
            .unwrap_or_default();
        for kind in ["| warm |", "| boot |", "| restore (mmap) |"] {
            assert!(section.contains(kind), "no {kind:?} for {f}:\n{section}");
        }
        assert!(!section.contains("| fork floor |"), "{section}");
        assert!(
            doc.contains(&format!("| {f} | restore (mmap) |")),
            "no first-invocation row for {f}:\n{doc}"
        );
    }
    // The remote section: a row per function with its figures, one round
    // each, and issue 18's verdicts computed.
    let remote =
        &doc[doc.find("## Remote restore").unwrap()..doc.find("## Not available yet").unwrap()];
    for f in ["hello", "numpy-pandas"] {
        let row = remote
            .lines()
            .find(|l| l.starts_with(&format!("| {f} | ")))
            .unwrap_or_else(|| panic!("no remote row of {f}:\n{remote}"));
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        // first p50, p90, local, boot, first ÷ local, first ÷ boot, first
        // from a spare, bytes.
        for (i, c) in cells[3..11].iter().enumerate() {
            assert!(*c != "–" && !c.is_empty(), "cell {i} of {row}");
        }
        assert!(cells[9].ends_with("/1"), "{row}");
        assert!(cells[10].ends_with(" MiB"), "{row}");
        assert!(
            remote.contains(&format!("| {f} | 1 | ")),
            "no round of {f}:\n{remote}"
        );
    }
    let issue18 = &doc[doc.find("### Issue 18").unwrap()..doc.find("## Summary").unwrap()];
    assert_eq!(
        issue18
            .lines()
            .filter(|l| l.starts_with("| first remote restore"))
            .count(),
        2,
        "{issue18}"
    );
    for goal in ["a local restore | ×", "of a boot | ×"] {
        let line = issue18.lines().find(|l| l.contains(goal)).unwrap();
        assert!(
            line.ends_with("| **met** |") || line.ends_with("| **not met** |"),
            "{line}"
        );
    }
    assert!(
        issue18.contains("| bytes fetched ≤ ×2 the working set |"),
        "{issue18}"
    );
    for f in ["hello", "numpy-pandas", "node-catalog", "java-inventory"] {
        let svg = std::fs::read_to_string(out_dir.path().join(format!("benchmarks/cold-{f}.svg")))
            .expect("a plot per function");
        assert!(
            svg.starts_with("<svg") && svg.contains("<polyline"),
            "{svg}"
        );
        assert!(doc.contains(&format!("](benchmarks/cold-{f}.svg)")));
    }
}

#[test]
fn short_mode_needs_an_out_folder() {
    let out = Command::new(env!("CARGO_BIN_EXE_thaw-loadtest"))
        .current_dir(repo())
        .args(["suite", "--short"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        "thaw-loadtest: --short, --only-density and --only need --out DIR (they must not replace docs/benchmarks.md)"
    );
}
