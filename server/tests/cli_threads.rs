//! Issue 14, acceptance 1 through the CLI: a program with 32 threads
//! blocked in futex waits (untimed and timed), condition variables,
//! `nanosleep`, `poll`, `read` on a pipe, or spinning is captured with
//! `thaw snapshot --pid` and restored with `thaw restore` in both memory
//! modes; every thread of the copy checks its thread id, TLS, name and
//! signal mask (the program is pool/tests/restore_support/threads.c).

mod common;

use std::process::Command;

use common::c_programs::{
    compile, kill, prerequisites, run_copy, snapshot_of, start_to_first_line,
};

const THREADS: &str = include_str!("../../pool/tests/restore_support/threads.c");

#[test]
fn thirty_two_threads_survive_thaw_snapshot_and_thaw_restore() {
    if !prerequisites() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let program = compile(tmp.path(), "threads", THREADS);
    let mut original = start_to_first_line(&mut Command::new(&program));
    let line = &original.line;
    assert!(
        line.starts_with(&format!("ready {} ", original.child.id())),
        "{line}"
    );
    let snap = tmp.path().join("threads.snap");
    snapshot_of(&mut original.child, &snap);
    kill(original.child);

    for mode in ["mmap", "uffd"] {
        let copy = run_copy(&snap, mode);
        assert_eq!(copy.printed, "ok 32\n", "{mode}: {}", copy.log);
        assert_eq!(copy.code, 0, "{mode}");
    }
}
