//! Process trees (issue 14, acceptance 3): a parent that leads its session,
//! a helper child in its own process group (a pipe each way between them)
//! and a grandchild in its own session (a socket pair to the helper),
//! captured with `snapshot_to_dir` (what `thaw snapshot --pid` runs) and
//! restored in both memory modes (what `thaw restore` runs): both answer
//! through the pipes, and every process's pid, parent, process group and
//! session are the snapshot's (server/tests/c/tree.c). The helper has the
//! parent's pipes as its stdin and stdout, as a `subprocess` child has: on
//! the runtime protocol's descriptor numbers, yet pipes of the tree. Also: 50 tree
//! restores in a row leave nothing behind, and what a copy could not
//! recreate (a zombie child, a child sharing its parent's memory) is
//! refused, naming the process.

mod restore_support;

use pool::restore::Mode;
use restore_support::{can_restore, compile, restore_with_pipes, start, Copy};
use snapshotter::snapshot::{open_snapshot_dir, snapshot_to_dir};
use snapshotter::state::FdKind;

const TREE: &str = include_str!("../../server/tests/c/tree.c");

/// `/proc/PID/stat` fields 4, 5 and 6 (parent, group, session).
fn stat_ids(pid: i32) -> (i32, i32, i32) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<i32> = after
        .split_whitespace()
        .skip(1)
        .take(3)
        .map(|v| v.parse().unwrap())
        .collect();
    (f[0], f[1], f[2])
}

/// The children of `pid` as `/proc` lists them.
fn children(pid: i32) -> Vec<i32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap()
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect()
}

/// The innermost pid of `pid` (`NSpid`).
fn ns_pid(pid: i32) -> i32 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("NSpid:")).unwrap();
    line.split_whitespace().last().unwrap().parse().unwrap()
}

/// A captured tree: the snapshot directory, the pids (parent, helper,
/// grandchild) and the "ids" lines the original printed before.
struct Captured {
    _tmp: tempfile::TempDir,
    snap: std::path::PathBuf,
    pids: [i32; 3],
    ids: Vec<String>,
}

fn capture_tree() -> Captured {
    let tmp = tempfile::tempdir().unwrap();
    let program = compile(tmp.path(), "tree", TREE);
    let mut original = start(&program, &[]);
    let ready = original.line();
    let pids: Vec<i32> = ready
        .strip_prefix("ready ")
        .unwrap_or_else(|| panic!("{ready:?}"))
        .split(' ')
        .map(|p| p.parse().unwrap())
        .collect();
    let pids = [pids[0], pids[1], pids[2]];
    use std::io::Write;
    original.stdin.write_all(b"ids\n").unwrap();
    let ids: Vec<String> = (0..3).map(|_| original.line()).collect();
    assert!(ids.iter().all(|l| l.ends_with(" same")), "{ids:?}");
    // What the program says agrees with /proc.
    assert_eq!(stat_ids(pids[1]), (pids[0], pids[1], pids[0]));
    assert_eq!(stat_ids(pids[2]), (pids[1], pids[2], pids[2]));
    // An answer left unread: queued in the pipe from the helper when
    // captured (or still on its way; the copy must deliver it either way).
    original.stdin.write_all(b"w 7\n").unwrap();
    assert_eq!(original.line(), "sent");
    std::thread::sleep(std::time::Duration::from_millis(100));
    let snap = tmp.path().join("snap");
    let info = snapshot_to_dir(pids[0], &snap).unwrap();
    assert_eq!(info.processes, 3);
    let (snapshot, _) = open_snapshot_dir(&snap).unwrap();
    let saved: Vec<(i32, i32, i32, i32)> = snapshot
        .processes()
        .map(|(s, _)| (s.pid, s.ids.ppid, s.ids.pgid, s.ids.sid))
        .collect();
    assert_eq!(
        saved[1..],
        [
            (pids[1], pids[0], pids[1], pids[0]),
            (pids[2], pids[1], pids[2], pids[2])
        ]
    );
    // The helper's stdin and stdout are the parent's pipes: descriptors of
    // the protocol's range, recorded as pipes of the tree (both ends are in
    // it), sharing their inodes with the parent's fds 10 and 11.
    let inode = |state: &snapshotter::state::ProcessState, fd: i32| match state
        .fds
        .iter()
        .find(|f| f.fd == fd)
        .map(|f| &f.kind)
    {
        Some(FdKind::Pipe { inode, .. }) => *inode,
        other => panic!("fd {fd} of {}: {other:?}", state.pid),
    };
    if let Some(FdKind::Pipe { data, .. }) = snapshot
        .state
        .fds
        .iter()
        .find(|f| f.fd == 11)
        .map(|f| &f.kind)
    {
        println!("queued from the helper at capture: {data:?}");
    }
    let helper = &snapshot.children[0].state;
    assert_eq!(inode(helper, 0), inode(&snapshot.state, 10));
    assert_eq!(inode(helper, 1), inode(&snapshot.state, 11));
    assert!(matches!(
        snapshot.children[1]
            .state
            .fds
            .iter()
            .find(|f| f.fd == 10)
            .map(|f| &f.kind),
        Some(FdKind::SocketPair { .. })
    ));
    assert_eq!(saved[0].2, pids[0], "the parent leads its group");
    assert_eq!(saved[0].3, pids[0], "and its session");
    // The original was not disturbed.
    original.stdin.write_all(b"r\n").unwrap();
    assert_eq!(original.line(), "answer 16");
    original.stdin.write_all(b"n 1\n").unwrap();
    assert_eq!(original.line(), "answer 4");
    drop(original);
    Captured {
        _tmp: tmp,
        snap,
        pids,
        ids,
    }
}

/// Sends `line` and reads `n` lines back.
fn ask(copy: &mut Copy, line: &str, n: usize) -> Vec<String> {
    copy.send(format!("{line}\n").as_bytes());
    (0..n).map(|_| copy.line()).collect()
}

/// Restores `captured` in `mode` and checks the copy: answers through the
/// pipes and the socket pair, the same ids inside, the same tree outside.
fn check_copy(captured: &Captured, mode: Mode) -> Copy {
    let mut copy = restore_with_pipes(&captured.snap, mode);
    assert_eq!(ask(&mut copy, "r", 1), ["answer 16"], "the queued answer");
    assert_eq!(ask(&mut copy, "n 5", 1), ["answer 12"]);
    assert_eq!(ask(&mut copy, "n 20", 1), ["answer 42"]);
    assert_eq!(ask(&mut copy, "ids", 3), captured.ids, "{mode:?}");
    // Seen from outside: the parent's child is the helper, whose child is
    // the grandchild, each with its saved pid in the copy's namespace.
    let parent = copy.child.pid();
    let helper = children(parent);
    assert_eq!(helper.len(), 1, "{helper:?}");
    assert_eq!(ns_pid(helper[0]), captured.pids[1]);
    let grandchild = children(helper[0]);
    assert_eq!(grandchild.len(), 1, "{grandchild:?}");
    assert_eq!(ns_pid(grandchild[0]), captured.pids[2]);
    assert_eq!(stat_ids(helper[0]).0, parent);
    assert_eq!(stat_ids(grandchild[0]).0, helper[0]);
    copy
}

/// Ends the copy (end of input: every process exits) and checks its status.
fn finish(copy: Copy) {
    let Copy {
        mut child, stdin, ..
    } = copy;
    drop(stdin);
    assert_eq!(child.wait().unwrap(), 0);
}

#[test]
fn a_tree_restores_with_its_ids_and_pipes_in_mmap_mode() {
    if !can_restore("a_tree_restores_with_its_ids_and_pipes_in_mmap_mode", true) {
        return;
    }
    let captured = capture_tree();
    finish(check_copy(&captured, Mode::Mmap));
    // Twice at once: the copies are apart.
    let a = check_copy(&captured, Mode::Mmap);
    let b = check_copy(&captured, Mode::Mmap);
    finish(a);
    finish(b);
}

#[test]
fn a_tree_restores_with_its_ids_and_pipes_in_uffd_mode() {
    if !can_restore("a_tree_restores_with_its_ids_and_pipes_in_uffd_mode", true) {
        return;
    }
    let captured = capture_tree();
    finish(check_copy(&captured, Mode::Uffd));
}

/// What a restore could leave behind in the restorer.
#[derive(Debug, PartialEq, Eq)]
struct Footprint {
    fds: usize,
    maps: usize,
    threads: usize,
    children: usize,
    mounts: usize,
}

fn footprint() -> Footprint {
    let lines = |p: &str| std::fs::read_to_string(p).unwrap().lines().count();
    let me = std::process::id() as i32;
    let tasks: Vec<i32> = std::fs::read_dir("/proc/self/task")
        .unwrap()
        .map(|e| e.unwrap().file_name().to_str().unwrap().parse().unwrap())
        .collect();
    let children = tasks
        .iter()
        .map(|t| {
            std::fs::read_to_string(format!("/proc/{me}/task/{t}/children"))
                .unwrap_or_default()
                .split_whitespace()
                .count()
        })
        .sum();
    Footprint {
        fds: std::fs::read_dir("/proc/self/fd").unwrap().count(),
        maps: lines("/proc/self/maps"),
        threads: tasks.len(),
        children,
        mounts: lines("/proc/self/mountinfo"),
    }
}

#[test]
fn fifty_tree_restores_leak_nothing() {
    if !can_restore("fifty_tree_restores_leak_nothing", true) {
        return;
    }
    let captured = capture_tree();
    // Warm up (the image is built by the first restore).
    finish(check_copy(&captured, Mode::Mmap));
    finish(check_copy(&captured, Mode::Uffd));
    let before = footprint();
    let mut totals: [Vec<std::time::Duration>; 2] = [Vec::new(), Vec::new()];
    for i in 0..50 {
        let mode = if i % 2 == 0 { Mode::Mmap } else { Mode::Uffd };
        let mut copy = restore_with_pipes(&captured.snap, mode);
        totals[i % 2].push(copy.child.timings.total());
        assert_eq!(ask(&mut copy, "r", 1), ["answer 16"], "restore {i}");
        assert_eq!(ask(&mut copy, "n 1", 1), ["answer 4"], "restore {i}");
        finish(copy);
    }
    for (mode, mut t) in ["mmap", "uffd"].into_iter().zip(totals) {
        t.sort();
        println!(
            "tree of 3 processes, {mode}: median restore {:?}",
            t[t.len() / 2]
        );
    }
    let after = footprint();
    // The test harness may run other tests' threads meanwhile: threads and
    // fds may differ by what they hold, never grow with the restores.
    assert!(after.fds <= before.fds + 2, "fds {before:?} -> {after:?}");
    assert!(
        after.maps <= before.maps + 8,
        "maps {before:?} -> {after:?}"
    );
    assert_eq!(after.children, 0, "{after:?}");
    assert_eq!(after.mounts, before.mounts, "{before:?} -> {after:?}");
    assert!(
        after.threads <= before.threads + 2,
        "threads {before:?} -> {after:?}"
    );
}

/// A parent with a zombie child (argument "zombie") or with a child made
/// with CLONE_VM (argument "vm"); prints "ready PARENT CHILD".
const REFUSED: &str = r#"
#define _GNU_SOURCE
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
static int child_main(void *arg) { for (;;) pause(); return 0; }
int main(int argc, char **argv) {
    pid_t child;
    if (strcmp(argv[1], "zombie") == 0) {
        child = fork();
        if (child == 0) _exit(0);
        usleep(100000);
    } else {
        char *stack = malloc(1 << 16);
        child = clone(child_main, stack + (1 << 16), CLONE_VM | SIGCHLD, NULL);
    }
    printf("ready %d %d\n", (int)getpid(), (int)child);
    fflush(stdout);
    char c;
    read(0, &c, 1);
    if (strcmp(argv[1], "vm") == 0) kill(child, SIGKILL);
    return 0;
}
"#;

#[test]
fn what_a_copy_could_not_recreate_is_refused_naming_the_process() {
    if !can_restore(
        "what_a_copy_could_not_recreate_is_refused_naming_the_process",
        true,
    ) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let program = compile(tmp.path(), "refused", REFUSED);
    for (arg, why) in [
        ("zombie", "has exited and is not reaped (a zombie)"),
        ("vm", "shares its parent's memory (CLONE_VM)"),
    ] {
        let mut original = start(&program, &[arg]);
        let ready = original.line();
        let pids: Vec<i32> = ready
            .strip_prefix("ready ")
            .unwrap()
            .split(' ')
            .map(|p| p.parse().unwrap())
            .collect();
        let err = snapshot_to_dir(pids[0], &tmp.path().join(arg))
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            format!(
                "capture of pid {} refused: in its process tree: child of {} {why}; {}",
                pids[1],
                pids[0],
                if arg == "zombie" {
                    "a copy cannot recreate it"
                } else {
                    "thaw restores only children with their own memory"
                }
            )
        );
        use std::io::Write;
        original.stdin.write_all(b"x").unwrap();
        // The original still runs: the capture let it go.
        assert!(original.child.wait().unwrap().success());
    }
}

/// A tree inside a pid namespace of its own (as in a container): captured
/// from outside with the ids its namespace gives it, restored with them.
#[test]
fn a_tree_in_its_own_pid_namespace_keeps_the_ids_it_had_there() {
    if !can_restore(
        "a_tree_in_its_own_pid_namespace_keeps_the_ids_it_had_there",
        true,
    ) {
        return;
    }
    if std::process::Command::new("unshare")
        .arg("--version")
        .output()
        .is_err()
    {
        restore_support::missing("no unshare (util-linux)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let program = compile(tmp.path(), "tree", TREE);
    // sh is pid 1 of the namespace; the tree's root is its child, pid 2.
    let script = format!("{}; true", program.display());
    let mut original = start(
        std::path::Path::new("unshare"),
        &["--pid", "--fork", "sh", "-c", &script],
    );
    let ready = original.line();
    assert_eq!(ready.split(' ').nth(1), Some("2"), "{ready:?}");
    use std::io::Write;
    original.stdin.write_all(b"ids\n").unwrap();
    let ids: Vec<String> = (0..3).map(|_| original.line()).collect();
    let sh = children(original.child.id() as i32);
    let root = children(sh[0]);
    assert_eq!(ns_pid(root[0]), 2);
    let snap = tmp.path().join("snap");
    snapshot_to_dir(root[0], &snap).unwrap();
    let (snapshot, _) = open_snapshot_dir(&snap).unwrap();
    let pids: Vec<i32> = snapshot.processes().map(|(s, _)| s.pid).collect();
    assert_eq!(pids[0], 2, "saved as its namespace names it");
    assert_eq!(snapshot.children[0].state.ids.ppid, 2);
    drop(original);
    for mode in [Mode::Mmap, Mode::Uffd] {
        let mut copy = restore_with_pipes(&snap, mode);
        assert_eq!(ask(&mut copy, "n 5", 1), ["answer 12"], "{mode:?}");
        assert_eq!(ask(&mut copy, "ids", 3), ids, "{mode:?}");
        finish(copy);
    }
}
