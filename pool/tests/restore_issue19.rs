//! Issue 19 under the sandbox's credential policy: the C programs of
//! server/tests/c (timers, pending signals, process attributes, shared
//! memory) restored with `Credentials::Function` (what every sandboxed copy
//! gets: another uid, no capabilities, `no_new_privs`) check their state
//! in both memory modes; the parent-death signals survive the change of
//! credentials (set after it). And `oom_score_adj` within the policy: a
//! manifest claiming -900 gives a sandboxed copy no less than its stub's
//! value, a trusted restore the saved one.

mod restore_support;

use pool::restore::{Credentials, Mode};
use restore_support::{can_restore, compile, restore_as, start};
use snapshotter::snapshot::{manifest_path, open_snapshot_dir, snapshot_to_dir, DIR_SNAPSHOT_ID};
use snapshotter::store::write_manifest;

const COMMON: &str = include_str!("../../server/tests/c/common.h");
const NOBODY: u32 = 65534;
/// `CAP_SYS_RESOURCE` from `<linux/capability.h>`.
const CAP_SYS_RESOURCE: u32 = 24;

/// Compiles and starts `name`, waits for its "ready", captures it into
/// `dir/name.snap` and kills it.
fn snapshot(dir: &std::path::Path, name: &str, source: &str) -> std::path::PathBuf {
    std::fs::write(dir.join("common.h"), COMMON).unwrap();
    let program = compile(dir, name, source);
    let mut original = start(&program, &[]);
    assert_eq!(original.line().trim_end(), "ready", "{name}");
    let snap = dir.join(format!("{name}.snap"));
    snapshot_to_dir(original.child.id() as i32, &snap).unwrap();
    snap
}

fn oom_score_adj(pid: i32) -> i32 {
    std::fs::read_to_string(format!("/proc/{pid}/oom_score_adj"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn issue_19_state_survives_a_restore_under_the_sandbox_policy() {
    if !can_restore(
        "issue_19_state_survives_a_restore_under_the_sandbox_policy",
        true,
    ) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let policy = Credentials::Function {
        uid: NOBODY,
        gid: NOBODY,
    };
    for (name, source) in [
        ("timers", include_str!("../../server/tests/c/timers.c")),
        ("pending", include_str!("../../server/tests/c/pending.c")),
        (
            "attributes",
            include_str!("../../server/tests/c/attributes.c"),
        ),
        ("shared", include_str!("../../server/tests/c/shared.c")),
    ] {
        let snap = snapshot(tmp.path(), name, source);
        for mode in [Mode::Mmap, Mode::Uffd] {
            let mut copy = restore_as(&snap, mode, Vec::new(), Vec::new(), false, policy.clone());
            copy.send(b"g");
            assert_eq!(copy.rest(), "ok\n", "{name} {mode:?}");
            assert_eq!(copy.child.wait().unwrap(), 0, "{name} {mode:?}");
        }
    }

    // A manifest claiming oom_score_adj -900.
    let snap = tmp.path().join("attributes.snap");
    let (mut forged, _) = open_snapshot_dir(&snap).unwrap();
    assert_eq!(forged.state.process.oom_score_adj, 345);
    forged.state.process.oom_score_adj = -900;
    write_manifest(&manifest_path(&snap, DIR_SNAPSHOT_ID), &forged).unwrap();
    let ours = oom_score_adj(std::process::id() as i32);
    let copy = restore_as(&snap, Mode::Mmap, Vec::new(), Vec::new(), false, policy);
    assert_eq!(oom_score_adj(copy.child.pid()), ours.max(-900));
    assert_ne!(oom_score_adj(copy.child.pid()), -900);
    drop(copy);
    let copy = restore_as(
        &snap,
        Mode::Mmap,
        Vec::new(),
        Vec::new(),
        false,
        Credentials::Snapshot,
    );
    // Lowering needs CAP_SYS_RESOURCE (some hosts withhold it even from
    // root): without it the copy keeps the higher value it had.
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let effective = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
        .unwrap();
    let want = if effective & (1 << CAP_SYS_RESOURCE) != 0 {
        -900
    } else {
        ours
    };
    assert_eq!(oom_score_adj(copy.child.pid()), want);
}
