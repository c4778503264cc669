//! Restoring one snapshot many times: every copy works, and the restorer
//! leaks neither descriptors nor mappings nor children. Also the failure
//! paths: a changed file, an unsupplied pipe, a copy killed by a signal.

mod restore_support;

use std::os::fd::AsFd;

use pool::restore::{restore, Mode, RestoreError, RestoreOptions};
use restore_support::{can_restore, compile, restore_with_pipes, start};
use snapshotter::snapshot::{open_snapshot_dir, snapshot_to_dir};

/// Counts a few pages, reads a byte, answers with its pid and the count.
const ECHO: &str = r#"
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/mman.h>
int main(int argc, char **argv) {
    unsigned char *area = malloc(1 << 20);
    memset(area, 5, 1 << 20);
    int fd = open(argv[1], 0);
    char *file = mmap(NULL, 4096, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    char line[64];
    int n = snprintf(line, sizeof line, "ready %d\n", (int)getpid());
    write(1, line, n);
    char c;
    if (read(0, &c, 1) != 1) return 3;
    long sum = 0;
    for (int i = 0; i < (1 << 20); i++) sum += area[i];
    n = snprintf(line, sizeof line, "%d %ld %c%c\n", (int)getpid(), sum, c, file[0]);
    write(1, line, n);
    if (c == 'k') { for (;;) pause(); }
    return 0;
}
"#;

fn count(path: &str) -> usize {
    std::fs::read_dir(path).unwrap().count()
}

fn maps_lines() -> usize {
    std::fs::read_to_string("/proc/self/maps")
        .unwrap()
        .lines()
        .count()
}

#[test]
fn hundred_restores_of_one_snapshot_leak_nothing() {
    if !can_restore("hundred_restores_of_one_snapshot_leak_nothing", true) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let program = compile(tmp.path(), "echo", ECHO);
    let mapped = tmp.path().join("mapped.txt");
    std::fs::write(&mapped, vec![b'M'; 4096]).unwrap();
    let mut original = start(&program, &[mapped.to_str().unwrap()]);
    let ready = original.line();
    let pid: i32 = ready.strip_prefix("ready ").unwrap().parse().unwrap();
    let snap = tmp.path().join("snap");
    snapshot_to_dir(pid, &snap).unwrap();
    drop(original);

    // Warm up once (the image is built by the first restore).
    let mut first = restore_with_pipes(&snap, Mode::Mmap);
    first.send(b"x");
    assert_eq!(first.line(), format!("{pid} {} xM", 5 << 20));
    assert_eq!(first.child.wait().unwrap(), 0);
    drop(first);

    let fds_before = count("/proc/self/fd");
    let maps_before = maps_lines();
    let mut totals = Vec::new();
    for i in 0..100u32 {
        let mut copy = restore_with_pipes(&snap, Mode::Mmap);
        totals.push(copy.child.timings.total());
        let c = b'A' + (i % 26) as u8;
        copy.send(&[c]);
        assert_eq!(
            copy.line(),
            format!("{pid} {} {}M", 5 << 20, c as char),
            "copy {i}"
        );
        assert_eq!(copy.child.wait().unwrap(), 0, "copy {i}");
    }
    totals.sort();
    println!(
        "100 restores: median {:?}, min {:?}, max {:?}",
        totals[50], totals[0], totals[99]
    );
    assert_eq!(count("/proc/self/fd"), fds_before, "descriptors leaked");
    assert_eq!(maps_lines(), maps_before, "mappings leaked");
    // No child left behind (all inits reaped).
    // SAFETY: waitpid with WNOHANG on any child, no status wanted.
    let r = unsafe { libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) };
    assert_eq!(r, -1, "a child was left");

    // A copy killed by a signal reports 128 + signal.
    let mut copy = restore_with_pipes(&snap, Mode::Mmap);
    copy.send(b"k");
    assert_eq!(copy.line(), format!("{pid} {} kM", 5 << 20));
    copy.child.signal(libc::SIGKILL).unwrap();
    assert_eq!(copy.child.wait().unwrap(), 128 + libc::SIGKILL);

    // Refusals.
    let (snapshot, store) = open_snapshot_dir(&snap).unwrap();
    let err = restore(
        &snapshot,
        &store,
        &RestoreOptions {
            mode: Mode::Mmap,
            fds: vec![],
            cgroups: vec![],
            prefetch: vec![],
            prefetch_in_background: false,
            uffd_keeper: None,
            credentials: pool::restore::Credentials::Snapshot,
        },
    )
    .unwrap_err();
    assert!(
        matches!(err, RestoreError::FdNotSupplied { fd: 0, .. }),
        "{err}"
    );
    assert_eq!(
        err.to_string(),
        "fd 0 of the snapshot is a pipe: the caller must supply it"
    );
    let stderr = std::io::stderr();
    let fds = vec![
        (0, stderr.as_fd()),
        (1, stderr.as_fd()),
        (2, stderr.as_fd()),
    ];
    // uffd mode: the same answer, pages served on demand.
    let mut lazy = restore_with_pipes(&snap, Mode::Uffd);
    lazy.send(b"u");
    assert_eq!(lazy.line(), format!("{pid} {} uM", 5 << 20));
    assert_eq!(lazy.child.wait().unwrap(), 0);
    let report = lazy.child.server_stats.clone().unwrap();
    println!(
        "uffd: {} faults, {} pages copied, {} zero pages",
        report.faults, report.copied, report.zero
    );
    assert!(report.copied >= 256, "the 1 MiB area was read: {report:?}");
    // The mapped file changes: its pages would not be the captured ones
    // (matched by content since issue 18: refused as incompatible, naming
    // the file).
    std::fs::write(&mapped, vec![b'N'; 8192]).unwrap();
    let err = restore(
        &snapshot,
        &store,
        &RestoreOptions {
            mode: Mode::Mmap,
            fds,
            cgroups: vec![],
            prefetch: vec![],
            prefetch_in_background: false,
            uffd_keeper: None,
            credentials: pool::restore::Credentials::Snapshot,
        },
    )
    .unwrap_err();
    assert!(matches!(err, RestoreError::Incompatible { .. }), "{err}");
    assert!(err.to_string().contains("mapped.txt"), "{err}");
    println!("refused as expected: {err}");
}
