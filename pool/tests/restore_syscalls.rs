//! Copies captured inside other blocking system calls than `read`: a
//! `nanosleep` (ERESTART_RESTARTBLOCK: the copy sees EINTR and sleeps the
//! rest, as after any signal) and a `pause` woken by a signal sent to the
//! copy, whose restored handler runs.

mod restore_support;

use pool::restore::Mode;
use restore_support::{can_restore, compile, restore_with_pipes, start};
use snapshotter::snapshot::snapshot_to_dir;

const SLEEPER: &str = r#"
#include <errno.h>
#include <stdio.h>
#include <time.h>
#include <unistd.h>
int main(void) {
    write(1, "ready\n", 6);
    struct timespec ts = {0, 300 * 1000 * 1000}, rem;
    int interrupted = 0;
    while (nanosleep(&ts, &rem) == -1 && errno == EINTR) { ts = rem; interrupted++; }
    char line[64];
    int n = snprintf(line, sizeof line, "woke %d\n", interrupted > 0);
    write(1, line, n);
    return 0;
}
"#;

const PAUSER: &str = r#"
#include <signal.h>
#include <unistd.h>
static volatile sig_atomic_t got;
static void on_usr2(int sig) { got = sig; }
int main(void) {
    struct sigaction sa = {0};
    sa.sa_handler = on_usr2;
    sigaction(SIGUSR2, &sa, 0);
    write(1, "ready\n", 6);
    while (!got) pause();
    write(1, got == SIGUSR2 ? "handled\n" : "other\n", got == SIGUSR2 ? 8 : 6);
    return 0;
}
"#;

#[test]
fn sleeping_copy_finishes_its_sleep() {
    if !can_restore("sleeping_copy_finishes_its_sleep", true) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let program = compile(tmp.path(), "sleeper", SLEEPER);
    let mut original = start(&program, &[]);
    assert_eq!(original.line(), "ready");
    let snap = tmp.path().join("snap");
    snapshot_to_dir(original.child.id() as i32, &snap).unwrap();
    drop(original);
    for mode in [Mode::Mmap, Mode::Uffd] {
        let mut copy = restore_with_pipes(&snap, mode);
        // The capture itself interrupted the sleep once (ptrace stop), so
        // the copy may or may not have seen EINTR: either way it finishes.
        let line = copy.line();
        assert!(line.starts_with("woke "), "{mode:?}: {line:?}");
        assert_eq!(copy.child.wait().unwrap(), 0);
    }
}

#[test]
fn paused_copy_runs_its_handler() {
    if !can_restore("paused_copy_runs_its_handler", true) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let program = compile(tmp.path(), "pauser", PAUSER);
    let mut original = start(&program, &[]);
    assert_eq!(original.line(), "ready");
    let snap = tmp.path().join("snap");
    snapshot_to_dir(original.child.id() as i32, &snap).unwrap();
    drop(original);
    for mode in [Mode::Mmap, Mode::Uffd] {
        let mut copy = restore_with_pipes(&snap, mode);
        copy.child.signal(libc::SIGUSR2).unwrap();
        assert_eq!(copy.line(), "handled", "{mode:?}");
        assert_eq!(copy.child.wait().unwrap(), 0);
    }
}
