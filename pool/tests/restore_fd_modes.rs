//! Saved descriptors come back with exactly their access mode and flags
//! (issue 12, finding 1, in part): an `O_PATH` descriptor of `/etc/shadow`
//! stays `O_PATH` (not readable), a write-only `O_APPEND` file stays
//! write-only, an `O_PATH` directory stays `O_PATH`. Each check is first
//! run in the original (the control), then in copies in both modes.

mod restore_support;

use std::io::Write;

use pool::restore::Mode;
use restore_support::{can_restore, compile, restore_with_pipes, start};
use snapshotter::snapshot::snapshot_to_dir;

const PROGRAM: &str = r#"
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
static int failed;
#define CHECK(c, what) do { if (!(c)) { printf("FAIL %s (errno %d)\n", what, errno); failed = 1; } } while (0)
static void at(int fd, int want) { if (fd != want) { dup2(fd, want); close(fd); } }
int main(int argc, char **argv) {
    at(open("/etc/shadow", O_PATH), 10);
    at(open(argv[1], O_WRONLY | O_APPEND), 11);
    at(open(argv[2], O_PATH | O_DIRECTORY), 12);
    at(open(argv[2], O_RDONLY | O_DIRECTORY), 13);
    printf("ready\n");
    fflush(stdout);
    char c;
    while (read(0, &c, 1) < 0 && errno == EINTR) {}
    char buf[16];
    CHECK(fcntl(10, F_GETFL) & O_PATH, "fd 10 is O_PATH");
    CHECK(read(10, buf, 1) == -1 && errno == EBADF, "O_PATH /etc/shadow is not readable");
    CHECK((fcntl(11, F_GETFL) & O_ACCMODE) == O_WRONLY, "fd 11 is write-only");
    CHECK(fcntl(11, F_GETFL) & O_APPEND, "fd 11 appends");
    CHECK(read(11, buf, 1) == -1 && errno == EBADF, "write-only fd is not readable");
    CHECK(write(11, "x", 1) == 1, "write-only fd writes");
    CHECK(fcntl(12, F_GETFL) & O_PATH, "fd 12 is O_PATH");
    CHECK(fcntl(13, F_GETFL) & O_PATH ? 0 : 1, "fd 13 is not O_PATH");
    int f = openat(13, "inside", O_RDONLY);
    CHECK(f >= 0, "openat through the directory fd");
    printf(failed ? "failed\n" : "ok\n");
    fflush(stdout);
    return failed;
}
"#;

#[test]
fn descriptors_keep_access_mode_and_o_path() {
    if !can_restore("descriptors_keep_access_mode_and_o_path", true) {
        assert!(
            std::env::var_os("THAW_TEST_STRICT").is_none(),
            "prerequisites missing and THAW_TEST_STRICT is set"
        );
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let program = compile(tmp.path(), "modes", PROGRAM);
    let log = tmp.path().join("log");
    std::fs::write(&log, b"").unwrap();
    let dir = tmp.path().join("dir");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("inside"), b"in").unwrap();
    let args = [log.to_str().unwrap(), dir.to_str().unwrap()];

    let mut control = start(&program, &args);
    assert_eq!(control.line(), "ready");
    control.stdin.write_all(b"c").unwrap();
    assert_eq!(control.line(), "ok", "the checks fail in the original");

    let mut original = start(&program, &args);
    assert_eq!(original.line(), "ready");
    let snap = tmp.path().join("snap");
    snapshot_to_dir(original.child.id() as i32, &snap).unwrap();
    drop(original);
    for mode in [Mode::Mmap, Mode::Uffd] {
        let mut copy = restore_with_pipes(&snap, mode);
        copy.send(b"c");
        let out = copy.rest();
        assert_eq!(out, "ok\n", "{mode:?}");
        assert_eq!(copy.child.wait().unwrap(), 0, "{mode:?}");
    }
}
