//! Saved descriptors come back with exactly their access mode and flags
//! (issue 12, finding 1): an `O_PATH` descriptor of `/etc/shadow` stays
//! `O_PATH` (not readable), a write-only `O_APPEND` file stays write-only,
//! an `O_PATH` directory stays `O_PATH`, a write-only `/dev/null` stays that
//! device. Each check is first run in the original (the control), then in
//! copies in both modes. Directories and devices are identity-checked like
//! files: a manifest forged to reopen another directory or device (the
//! host's `/`, `/dev/zero`) is refused, while the unforged one restores.

mod restore_support;

use std::io::Write;

use pool::restore::{restore, Credentials, Mode, RestoreError, RestoreOptions};
use restore_support::{can_restore, compile, restore_with_pipes, start};
use snapshotter::snapshot::{manifest_path, open_snapshot_dir, snapshot_to_dir, DIR_SNAPSHOT_ID};
use snapshotter::state::FdKind;
use snapshotter::store::write_manifest;

const PROGRAM: &str = r#"
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
static int failed;
#define CHECK(c, what) do { if (!(c)) { printf("FAIL %s (errno %d)\n", what, errno); failed = 1; } } while (0)
static void at(int fd, int want) { if (fd != want) { dup2(fd, want); close(fd); } }
int main(int argc, char **argv) {
    at(open("/etc/shadow", O_PATH), 10);
    at(open(argv[1], O_WRONLY | O_APPEND), 11);
    at(open(argv[2], O_PATH | O_DIRECTORY), 12);
    at(open(argv[2], O_RDONLY | O_DIRECTORY), 13);
    at(open("/dev/null", O_WRONLY), 14);
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
    struct stat st, null;
    CHECK(fstat(14, &st) == 0 && stat("/dev/null", &null) == 0 && S_ISCHR(st.st_mode)
          && st.st_rdev == null.st_rdev, "fd 14 is /dev/null");
    CHECK((fcntl(14, F_GETFL) & O_ACCMODE) == O_WRONLY, "fd 14 is write-only");
    CHECK(write(14, "x", 1) == 1, "fd 14 writes");
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

/// Restores `dir` (stdin and stdout on pipes) and returns why it failed, or
/// `None` once the copy answered `ok` after a go.
fn try_restore(dir: &std::path::Path, mode: Mode) -> Option<RestoreError> {
    use std::io::Read;
    use std::os::fd::AsFd;
    let (snapshot, store) = open_snapshot_dir(dir).unwrap();
    let (in_read, in_write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
    let (out_read, out_write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
    let stderr = std::io::stderr();
    let result = restore(
        &snapshot,
        &store,
        &RestoreOptions {
            mode,
            fds: vec![
                (0, in_read.as_fd()),
                (1, out_write.as_fd()),
                (2, stderr.as_fd()),
            ],
            cgroups: Vec::new(),
            prefetch: Vec::new(),
            prefetch_in_background: false,
            uffd_keeper: None,
            credentials: Credentials::Snapshot,
        },
    );
    drop((in_read, out_write));
    let mut child = match result {
        Ok(child) => child,
        Err(e) => return Some(e),
    };
    std::fs::File::from(in_write).write_all(b"c").unwrap();
    let mut out = String::new();
    std::fs::File::from(out_read)
        .read_to_string(&mut out)
        .unwrap();
    assert_eq!(out, "ok\n", "{mode:?}");
    assert_eq!(child.wait().unwrap(), 0, "{mode:?}");
    None
}

#[test]
fn directories_and_devices_are_identity_checked() {
    if !can_restore("directories_and_devices_are_identity_checked", true) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let program = compile(tmp.path(), "modes", PROGRAM);
    let log = tmp.path().join("log");
    std::fs::write(&log, b"").unwrap();
    let dir = tmp.path().join("dir");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("inside"), b"in").unwrap();
    // Another directory that also has `inside`: only its identity differs.
    let other = tmp.path().join("other");
    std::fs::create_dir(&other).unwrap();
    std::fs::write(other.join("inside"), b"in").unwrap();
    let args = [log.to_str().unwrap(), dir.to_str().unwrap()];
    let mut original = start(&program, &args);
    assert_eq!(original.line(), "ready");
    let snap = tmp.path().join("snap");
    snapshot_to_dir(original.child.id() as i32, &snap).unwrap();
    drop(original);
    let (saved, _) = open_snapshot_dir(&snap).unwrap();
    let manifest = manifest_path(&snap, DIR_SNAPSHOT_ID);

    // Control: the snapshot as captured restores in both modes.
    for mode in [Mode::Mmap, Mode::Uffd] {
        if let Some(e) = try_restore(&snap, mode) {
            panic!("control: {mode:?}: {e}");
        }
    }

    // Each forgery points one saved descriptor elsewhere.
    let other_path = other.to_str().unwrap().to_string();
    let forgeries: Vec<(&str, i32, String, &str)> = vec![
        (
            "a directory reopened as another",
            13,
            other_path.clone(),
            "inode",
        ),
        (
            "an O_PATH directory as the host's /",
            12,
            "/".into(),
            "inode",
        ),
        ("/dev/null as /dev/zero", 14, "/dev/zero".into(), "rdev"),
    ];
    for (what, fd, path, why) in forgeries {
        let mut forged = saved.clone();
        let entry = forged.state.fds.iter_mut().find(|f| f.fd == fd).unwrap();
        match &mut entry.kind {
            FdKind::Directory { path: p, .. } | FdKind::Device { path: p, .. } => *p = path.clone(),
            other => panic!("fd {fd} is {other:?}"),
        }
        write_manifest(&manifest, &forged).unwrap();
        for mode in [Mode::Mmap, Mode::Uffd] {
            let err = try_restore(&snap, mode)
                .unwrap_or_else(|| panic!("{what}: {mode:?}: the forged manifest restored"));
            let text = err.to_string();
            assert!(
                matches!(err, RestoreError::FileChanged { .. })
                    && text.contains(&path)
                    && text.contains(why),
                "{what}: {mode:?}: {text}"
            );
        }
    }
}
