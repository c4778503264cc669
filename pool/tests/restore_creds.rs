//! A process of an unprivileged user restored by root keeps its identity:
//! uids, gids, groups, and stays dumpable (its /proc files are its own).

mod restore_support;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use pool::restore::Mode;
use restore_support::{can_restore, compile, restore_with_pipes};
use snapshotter::snapshot::snapshot_to_dir;

const IDS: &str = r#"
#include <stdio.h>
#include <sys/prctl.h>
#include <unistd.h>
static int ids(char *buf, int n) {
    gid_t groups[64];
    int ng = getgroups(64, groups);
    return snprintf(buf, n, "%d %d %d %d %d %d\n", (int)getuid(), (int)geteuid(), (int)getgid(),
                    (int)getegid(), ng, prctl(PR_GET_DUMPABLE));
}
int main(void) {
    char line[128];
    int n = ids(line, sizeof line);
    write(1, line, n);
    char c;
    if (read(0, &c, 1) != 1) return 3;
    n = ids(line, sizeof line);
    write(1, line, n);
    return 0;
}
"#;

#[test]
fn unprivileged_process_keeps_its_identity() {
    if !can_restore("unprivileged_process_keeps_its_identity", true) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let program = compile(tmp.path(), "ids", IDS);
    let mut command = Command::new(&program);
    command
        .uid(65534)
        .gid(65534)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    // SAFETY: only close_range runs between fork and exec.
    unsafe {
        command.pre_exec(|| {
            libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
            Ok(())
        });
    }
    let mut child = command.spawn().unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut before = String::new();
    std::io::BufRead::read_line(&mut out, &mut before).unwrap();
    assert!(before.starts_with("65534 65534 65534 65534 "), "{before}");
    let snap = tmp.path().join("snap");
    snapshot_to_dir(child.id() as i32, &snap).unwrap();
    child.kill().unwrap();
    child.wait().unwrap();

    for mode in [Mode::Mmap, Mode::Uffd] {
        let mut copy = restore_with_pipes(&snap, mode);
        let status = std::fs::read_to_string(format!("/proc/{}/status", copy.child.pid())).unwrap();
        let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
        assert_eq!(
            uid_line.split_whitespace().nth(1),
            Some("65534"),
            "{uid_line}"
        );
        copy.send(b"g");
        assert_eq!(copy.line() + "\n", before, "{mode:?}");
        assert_eq!(copy.child.wait().unwrap(), 0);
    }
}
