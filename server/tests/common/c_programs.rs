//! The C test programs of `thaw snapshot` + `thaw restore` (`tests/c/`):
//! the `thaw` binary, compiling a program beside `common.h`, the
//! prerequisites, and the check that every run printed "ok".

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// `tests/c/common.h`, written beside each program.
pub const COMMON_H: &str = include_str!("../c/common.h");

/// The `thaw` binary of this build.
pub fn thaw() -> Command {
    Command::new(env!("CARGO_BIN_EXE_thaw"))
}

/// Compiles `source` as program `name` in `dir` (with `common.h`).
pub fn compile(dir: &Path, name: &str, source: &str) -> PathBuf {
    std::fs::write(dir.join("common.h"), COMMON_H).unwrap();
    let c = dir.join(format!("{name}.c"));
    std::fs::write(&c, source).unwrap();
    let out = dir.join(name);
    let status = Command::new("cc")
        .args(["-O1", "-Wall", "-pthread", "-o"])
        .arg(&out)
        .arg(&c)
        .status()
        .unwrap();
    assert!(status.success(), "cc failed for {name}");
    out
}

/// Whether the test can run: root and a C compiler (skips, or fails under
/// `THAW_TEST_STRICT`).
pub fn prerequisites() -> bool {
    if !nix::unistd::geteuid().is_root() {
        super::missing("thaw snapshot and thaw restore need root (ptrace, pid namespaces)");
        return false;
    }
    if Command::new("cc").arg("--version").output().is_err() {
        super::missing("no C compiler (cc)");
        return false;
    }
    true
}

/// Asserts every run (who, what it printed, exit code) printed exactly
/// "ok" and exited 0.
pub fn assert_all_ok(name: &str, results: Vec<(String, String, i32)>) {
    for (who, printed, code) in &results {
        println!("{name} ({who}): exit {code}: {}", printed.trim());
    }
    let failed: Vec<_> = results
        .iter()
        .filter(|(_, printed, code)| printed != "ok\n" || *code != 0)
        .collect();
    assert!(failed.is_empty(), "{name}: {failed:#?}");
}

/// Restores snapshot folder `snap` once in each memory mode, tells each
/// copy to go on ("g" on its stdin) and collects what it printed until it
/// exited and its exit code, as [`assert_all_ok`] takes them.
pub fn run_copies(snap: &Path) -> Vec<(String, String, i32)> {
    let mut results = Vec::new();
    for mode in ["mmap", "uffd"] {
        let mut copy = thaw()
            .args(["restore", "--mode", mode])
            .arg(snap)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        copy.stdin.as_mut().unwrap().write_all(b"g").unwrap();
        let mut rest = String::new();
        copy.stdout
            .take()
            .unwrap()
            .read_to_string(&mut rest)
            .unwrap();
        let status = copy.wait().unwrap();
        results.push((mode.to_string(), rest, status.code().unwrap_or(-1)));
    }
    results
}
