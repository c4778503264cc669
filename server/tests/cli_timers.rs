//! Issue 19 (timers, pending signals, process attributes), acceptance 1:
//! C programs of tests/c/ set up their state, say "ready", are captured
//! with `thaw snapshot --pid` and restored with `thaw restore` in both
//! memory modes; each copy checks its state and prints "ok".
//! Needs root (ptrace, pid namespaces) and a C compiler.

mod common;

use std::process::Command;

use common::c_programs::{
    assert_all_ok, capture_at_first_line, compile, prerequisites, run_copies,
};

/// Runs program `name` to its "ready", captures it, kills it, and restores
/// the snapshot once per memory mode; returns what each copy printed after
/// it was let go, with its exit code.
fn snapshot_and_restore(name: &str, source: &str) -> Vec<(String, String, i32)> {
    snapshot_and_restore_with(name, source, &[])
}

/// [`snapshot_and_restore`] with arguments for the program.
fn snapshot_and_restore_with(
    name: &str,
    source: &str,
    args: &[&str],
) -> Vec<(String, String, i32)> {
    let tmp = tempfile::tempdir().unwrap();
    let program = compile(tmp.path(), name, source);
    let snap = tmp.path().join(format!("{name}.snap"));
    let line = capture_at_first_line(Command::new(&program).args(args), &snap);
    assert_eq!(line, "ready\n", "{name}: {line}");
    run_copies(&snap)
}

/// Interval timers (real, profiling) and POSIX timers notifying a thread,
/// the process, or nobody: same ids, clocks and intervals in the copy,
/// and each fires there.
#[test]
fn timers_survive_thaw_snapshot_and_thaw_restore_in_both_modes() {
    if !prerequisites() {
        return;
    }
    assert_all_ok(
        "timers",
        snapshot_and_restore("timers", include_str!("c/timers.c")),
    );
}

/// Signals pending for the process and for each of two threads, with
/// their siginfo: each arrives once in the copy, in order, with its
/// `si_code`, `si_value` and sender.
#[test]
fn pending_signals_arrive_once_after_thaw_restore_in_both_modes() {
    if !prerequisites() {
        return;
    }
    assert_all_ok(
        "pending",
        snapshot_and_restore("pending", include_str!("c/pending.c")),
    );
}

/// oom_score_adj, the child subreaper flag, a membarrier registration,
/// each thread's parent-death signal, the personality and no_new_privs
/// read back equal in the copy.
#[test]
fn process_attributes_survive_thaw_snapshot_and_thaw_restore_in_both_modes() {
    if !prerequisites() {
        return;
    }
    assert_all_ok(
        "attributes",
        snapshot_and_restore("attributes", include_str!("c/attributes.c")),
    );
}

/// Anonymous shared memory: restored with its content, shared between the
/// copy and a child it forks, never between copies.
#[test]
fn shared_memory_is_shared_in_a_copy_and_not_between_copies_in_both_modes() {
    if !prerequisites() {
        return;
    }
    assert_all_ok(
        "shared",
        snapshot_and_restore("shared", include_str!("c/shared.c")),
    );
}

/// inotify: the watches come back at their wds with their masks (paths
/// resolved by the copy), and report events in the copy.
#[test]
fn inotify_watches_report_events_after_thaw_restore_in_both_modes() {
    if !prerequisites() {
        return;
    }
    let watched = tempfile::tempdir().unwrap();
    let dir = watched.path().to_str().unwrap();
    assert_all_ok(
        "inotify",
        snapshot_and_restore_with("inotify", include_str!("c/inotify.c"), &[dir]),
    );
}
