//! The C test programs of `thaw snapshot` + `thaw restore` (`tests/c/`),
//! and what every test of those two commands does: the `thaw` binary,
//! compiling a program beside `common.h`, the prerequisites, starting a
//! program up to its first line, capturing it, running copies, and the
//! check that every run printed "ok".

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};

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
    ["mmap", "uffd"]
        .into_iter()
        .map(|mode| {
            let copy = run_copy(snap, mode);
            eprint!("{}", copy.log);
            (mode.to_string(), copy.printed, copy.code)
        })
        .collect()
}

/// What a copy run by [`run_copy`] did.
#[derive(Debug)]
pub struct CopyRun {
    /// Its stdout, until it exited.
    pub printed: String,
    /// `thaw restore`'s stderr (`THAW_LOG=info`).
    pub log: String,
    /// Its exit code (-1: killed by a signal).
    pub code: i32,
}

/// Restores snapshot folder `snap` in `mode`, tells the copy to go on
/// ("g" on its stdin, kept open until it exited) and collects what it
/// printed, what thaw logged and its exit code.
pub fn run_copy(snap: &Path, mode: &str) -> CopyRun {
    run_copy_with(snap, mode, b"g")
}

/// [`run_copy`], sending `input` to the copy.
pub fn run_copy_with(snap: &Path, mode: &str, input: &[u8]) -> CopyRun {
    let mut copy = thaw()
        .args(["restore", "--mode", mode])
        .arg(snap)
        .env("THAW_LOG", "info")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = copy.stderr.take().unwrap();
    let log = std::thread::spawn(move || {
        let mut log = String::new();
        stderr.read_to_string(&mut log).unwrap();
        log
    });
    copy.stdin.as_mut().unwrap().write_all(input).unwrap();
    let mut printed = String::new();
    copy.stdout
        .take()
        .unwrap()
        .read_to_string(&mut printed)
        .unwrap();
    let status = copy.wait().unwrap();
    CopyRun {
        printed,
        log: log.join().unwrap(),
        code: status.code().unwrap_or(-1),
    }
}

/// A program started by [`start_to_first_line`].
pub struct Started {
    /// The process (its stdin piped and still open).
    pub child: Child,
    /// Its stdout, after the first line.
    pub out: BufReader<ChildStdout>,
    /// Its first line, with the newline.
    pub line: String,
}

/// Starts `command` with its stdin and stdout piped and no other
/// descriptor ([`super::only_stdio`]: a capture would refuse the harness's)
/// and reads its first line (its "ready").
pub fn start_to_first_line(command: &mut Command) -> Started {
    command.stdin(Stdio::piped()).stdout(Stdio::piped());
    super::only_stdio(command);
    let mut child = command.spawn().unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    Started { child, out, line }
}

/// `thaw snapshot --pid` of `original` into `snap`, which must succeed: if
/// it fails, the original is killed and the test fails with thaw's stderr.
/// The original runs on.
pub fn snapshot_of(original: &mut Child, snap: &Path) {
    if let Err(stderr) = snapshot_pid(original.id(), snap) {
        let _ = original.kill();
        let _ = original.wait();
        panic!("thaw snapshot of {}: {stderr}", snap.display());
    }
}

/// `thaw snapshot --pid PID --out SNAP`; its stderr if it failed.
pub fn snapshot_pid(pid: u32, snap: &Path) -> Result<(), String> {
    let snapshot = thaw()
        .args(["snapshot", "--pid", &pid.to_string(), "--out"])
        .arg(snap)
        .output()
        .unwrap();
    if snapshot.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&snapshot.stderr).into_owned())
    }
}

/// Starts `command` ([`start_to_first_line`]), captures it into `snap`
/// once it printed its first line ([`snapshot_of`]) and kills it; returns
/// that line.
pub fn capture_at_first_line(command: &mut Command, snap: &Path) -> String {
    let mut started = start_to_first_line(command);
    snapshot_of(&mut started.child, snap);
    kill(started.child);
    started.line
}

/// Kills `child` and reaps it.
pub fn kill(mut child: Child) {
    child.kill().unwrap();
    child.wait().unwrap();
}
