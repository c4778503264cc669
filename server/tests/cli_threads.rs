//! Issue 14, acceptance 1 through the CLI: a program with 32 threads
//! blocked in futex waits (untimed and timed), condition variables,
//! `nanosleep`, `poll`, `read` on a pipe, or spinning is captured with
//! `thaw snapshot --pid` and restored with `thaw restore` in both memory
//! modes; every thread of the copy checks its thread id, TLS, name and
//! signal mask (the program is pool/tests/restore_support/threads.c).

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

const THREADS: &str = include_str!("../../pool/tests/restore_support/threads.c");

/// Whether the test can run; with `THAW_TEST_STRICT` set a missing
/// prerequisite fails it.
fn prerequisites() -> bool {
    let missing = if !nix::unistd::geteuid().is_root() {
        Some("thaw snapshot and thaw restore need root (ptrace, pid namespaces)")
    } else if Command::new("cc").arg("--version").output().is_err() {
        Some("no C compiler (cc)")
    } else {
        None
    };
    match missing {
        None => true,
        Some(why) if std::env::var_os("THAW_TEST_STRICT").is_some() => {
            panic!("THAW_TEST_STRICT: {why}")
        }
        Some(why) => {
            eprintln!("skipped: {why}");
            false
        }
    }
}

#[test]
fn thirty_two_threads_survive_thaw_snapshot_and_thaw_restore() {
    if !prerequisites() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let c = tmp.path().join("threads.c");
    std::fs::write(&c, THREADS).unwrap();
    let program = tmp.path().join("threads");
    let status = Command::new("cc")
        .args(["-O1", "-Wall", "-pthread", "-o"])
        .arg(&program)
        .arg(&c)
        .status()
        .unwrap();
    assert!(status.success());

    let mut command = Command::new(&program);
    command.stdin(Stdio::piped()).stdout(Stdio::piped());
    // SAFETY: only close_range runs between fork and exec (the harness's
    // descriptors would make the capture refuse).
    unsafe {
        command.pre_exec(|| {
            libc::syscall(libc::SYS_close_range, 3, u32::MAX, 0);
            Ok(())
        });
    }
    let mut original = command.spawn().unwrap();
    let mut out = BufReader::new(original.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert!(
        line.starts_with(&format!("ready {} ", original.id())),
        "{line}"
    );
    let snap = tmp.path().join("threads.snap");
    let snapshot = thaw()
        .args(["snapshot", "--pid", &original.id().to_string(), "--out"])
        .arg(&snap)
        .output()
        .unwrap();
    assert!(
        snapshot.status.success(),
        "thaw snapshot: {}",
        String::from_utf8_lossy(&snapshot.stderr)
    );
    original.kill().unwrap();
    original.wait().unwrap();

    for mode in ["mmap", "uffd"] {
        let mut copy = thaw()
            .args(["restore", "--mode", mode])
            .arg(&snap)
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
        assert_eq!(rest, "ok 32\n", "{mode}");
        assert_eq!(status.code(), Some(0), "{mode}");
    }
}

fn thaw() -> Command {
    Command::new(env!("CARGO_BIN_EXE_thaw"))
}
