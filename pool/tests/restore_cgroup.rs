//! The copy and its init join the given cgroup before the copy's memory is
//! mapped; the copy runs there.

mod restore_support;

use std::path::PathBuf;

use pool::restore::Mode;
use restore_support::{can_restore, compile, restore_into, start};
use snapshotter::snapshot::snapshot_to_dir;

const WAIT: &str = r#"
#include <unistd.h>
int main(void) {
    write(1, "ready\n", 6);
    char c;
    if (read(0, &c, 1) != 1) return 3;
    write(1, "done\n", 5);
    return 0;
}
"#;

/// A fresh cgroup directory to test with: the v1 pids hierarchy, else the
/// v2 root's child; `None` (reported as a missing prerequisite) if neither
/// works.
fn test_cgroup() -> Option<PathBuf> {
    let name = format!("thaw-restore-test-{}", std::process::id());
    for base in [
        "/sys/fs/cgroup/pids",
        "/sys/fs/cgroup/unified",
        "/sys/fs/cgroup",
    ] {
        let dir = PathBuf::from(base).join(&name);
        if std::fs::create_dir(&dir).is_ok() {
            if dir.join("cgroup.procs").exists() {
                return Some(dir);
            }
            let _ = std::fs::remove_dir(&dir);
        }
    }
    restore_support::missing("copy_joins_its_cgroup: cannot create a cgroup");
    None
}

#[test]
fn copy_joins_its_cgroup() {
    if !can_restore("copy_joins_its_cgroup", true) {
        return;
    }
    let Some(cgroup) = test_cgroup() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let program = compile(tmp.path(), "wait", WAIT);
    let mut original = start(&program, &[]);
    assert_eq!(original.line(), "ready");
    let snap = tmp.path().join("snap");
    snapshot_to_dir(original.child.id() as i32, &snap).unwrap();
    drop(original);

    let mut copy = restore_into(&snap, Mode::Mmap, vec![cgroup.clone()]);
    let procs = std::fs::read_to_string(cgroup.join("cgroup.procs")).unwrap();
    let members: Vec<i32> = procs.lines().map(|l| l.parse().unwrap()).collect();
    assert!(members.contains(&copy.child.pid()), "{members:?}");
    assert!(members.contains(&copy.child.init_pid()), "{members:?}");
    copy.send(b"g");
    assert_eq!(copy.line(), "done");
    assert_eq!(copy.child.wait().unwrap(), 0);
    // Empty again: it can go.
    std::fs::remove_dir(&cgroup).unwrap();
}
