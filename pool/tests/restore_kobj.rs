//! Kernel objects inside the process restored with their state (issue 14,
//! acceptance 2): restore_support/kobj.c sets up an epoll instance with
//! registrations, eventfds (one with a dup, one in semaphore mode), a
//! signalfd, timerfds (periodic with unread expirations, an expired one
//! shot, a relative one shot, an absolute realtime deadline), a pipe with
//! queued data and a dup of its write end, and a sealed memfd. It is
//! captured with `snapshot_to_dir` (`thaw snapshot --pid`) and restored in
//! both memory modes; the copy checks every object and prints "ok". The
//! same program checked without a snapshot (the control) prints "ok" too.
//! Objects thaw cannot recreate are refused, naming them.

mod restore_support;

use std::io::Write;

use pool::restore::Mode;
use restore_support::{can_restore, compile, restore_with_pipes, start};
use snapshotter::snapshot::snapshot_to_dir;

fn prerequisites(test: &str) -> bool {
    let ok = can_restore(test, true);
    if !ok && std::env::var_os("THAW_TEST_STRICT").is_some() {
        panic!("{test}: prerequisites missing (see above) and THAW_TEST_STRICT is set");
    }
    ok
}

#[test]
fn kernel_objects_work_with_their_state_after_restore() {
    if !prerequisites("kernel_objects_work_with_their_state_after_restore") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let program = compile(tmp.path(), "kobj", include_str!("restore_support/kobj.c"));

    // Control: the checks pass in the original process.
    let mut control = start(&program, &[]);
    assert_eq!(control.line(), "ready");
    control.stdin.write_all(b"c").unwrap();
    assert_eq!(control.line(), "ok", "the checks fail without any restore");

    let mut original = start(&program, &[]);
    assert_eq!(original.line(), "ready");
    let snap = tmp.path().join("snap");
    let info = snapshot_to_dir(original.child.id() as i32, &snap).unwrap();
    println!(
        "snapshot: {} areas, {} stored pages",
        info.areas, info.stored_pages
    );
    drop(original);

    for mode in [Mode::Mmap, Mode::Uffd] {
        let mut copy = restore_with_pipes(&snap, mode);
        copy.send(b"c");
        let out = copy.rest();
        let status = copy.child.wait().unwrap();
        assert_eq!(out, "ok\n", "{mode:?}");
        assert_eq!(status, 0, "{mode:?}");
    }
}

/// An inotify descriptor is a kernel object thaw does not recreate yet: the
/// capture is refused and names it.
#[test]
fn other_kernel_objects_are_refused_by_name() {
    if !prerequisites("other_kernel_objects_are_refused_by_name") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let program = compile(
        tmp.path(),
        "inotify",
        r#"
#include <stdio.h>
#include <sys/inotify.h>
#include <unistd.h>
int main(void) {
    int fd = inotify_init1(0);
    inotify_add_watch(fd, "/tmp", IN_CREATE);
    printf("ready %d\n", fd);
    fflush(stdout);
    char c;
    read(0, &c, 1);
    return 0;
}
"#,
    );
    let mut original = start(&program, &[]);
    let ready = original.line();
    let fd = ready.strip_prefix("ready ").unwrap();
    let err = snapshot_to_dir(original.child.id() as i32, &tmp.path().join("snap")).unwrap_err();
    let message = format!("{err:#}");
    assert!(
        message.contains(&format!("fd {fd} is anon_inode:inotify")),
        "{message}"
    );
    assert!(message.contains("cannot recreate"), "{message}");
}
