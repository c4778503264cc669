//! Issue 19, acceptance 1 for shared memory inside a snapshot: C programs
//! of tests/c/ set up their shared memory, say "ready", are captured with
//! `thaw snapshot --pid` (a process tree when they forked) while the
//! original keeps running, and restored with `thaw restore` in both memory
//! modes; each copy checks its memory and prints "ok". Then the original
//! is let go and checks that no copy's write reached it.
//! Needs root (ptrace, pid and IPC namespaces) and a C compiler.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};

use common::c_programs::{
    assert_all_ok, compile, prerequisites, run_copies, snapshot_of, start_to_first_line, thaw,
};

/// Starts program `name` (compiled in `dir`) with its stdin and stdout
/// piped and reads its "ready".
fn start(
    dir: &Path,
    name: &str,
    source: &str,
) -> (std::process::Child, BufReader<std::process::ChildStdout>) {
    let program = compile(dir, name, source);
    let started = start_to_first_line(&mut Command::new(&program));
    assert_eq!(started.line, "ready\n", "{name}: {}", started.line);
    (started.child, started.out)
}

/// Runs program `name` to its "ready", captures it and restores the
/// snapshot once per memory mode (each copy is sent `g`), then sends the
/// original `o`. Returns what each printed after it was let go, with its
/// exit code: the copies' (by mode), then the original's.
fn run(name: &str, source: &str) -> Vec<(String, String, i32)> {
    let tmp = tempfile::tempdir().unwrap();
    let (mut original, mut out) = start(tmp.path(), name, source);
    let snap = tmp.path().join(format!("{name}.snap"));
    snapshot_of(&mut original, &snap);
    let mut results = run_copies(&snap);
    original.stdin.as_mut().unwrap().write_all(b"o").unwrap();
    let mut rest = String::new();
    out.read_to_string(&mut rest).unwrap();
    let status = original.wait().unwrap();
    results.push(("original".into(), rest, status.code().unwrap_or(-1)));
    results
}

/// Anonymous shared memory a parent and its child map, captured as a tree:
/// in each copy the two see each other's writes; no copy sees another's,
/// and the original sees none of theirs.
#[test]
fn a_trees_anonymous_shared_memory_is_shared_in_each_copy_in_both_modes() {
    if !prerequisites() {
        return;
    }
    assert_all_ok(
        "shared_tree",
        run("shared_tree", include_str!("c/shared_tree.c")),
    );
}

/// System V shared memory of one process: a private segment attached in
/// three areas (an mprotect in the middle), a keyed one attached twice
/// (once read-only), a removed one: each copy (its own IPC namespace) finds
/// them with their ids, key, size, mode, owner and content, writable where
/// they were and shared with a child; the original sees no copy's write.
#[test]
fn system_v_shared_memory_comes_back_in_each_copy_in_both_modes() {
    if !prerequisites() {
        return;
    }
    assert_all_ok("sysv", run("sysv", include_str!("c/sysv.c")));
}

/// A System V segment another process (here the test) attaches too is
/// refused, naming the segment: a copy could not share it with that
/// process.
#[test]
fn a_system_v_segment_attached_outside_the_process_is_refused() {
    if !prerequisites() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (mut original, mut out) = start(tmp.path(), "sysv", include_str!("c/sysv.c"));
    let maps = std::fs::read_to_string(format!("/proc/{}/maps", original.id())).unwrap();
    let id: i32 = maps
        .lines()
        .find(|l| l.contains(" /SYSV"))
        .and_then(|l| l.split_whitespace().nth(4))
        .and_then(|n| n.parse().ok())
        .expect("a System V attachment in the maps");
    // SAFETY: a read-only attachment of the program's segment, detached
    // below; nothing reads through it.
    let at = unsafe { libc::shmat(id, std::ptr::null(), libc::SHM_RDONLY) };
    assert_ne!(
        at as isize,
        -1,
        "shmat: {}",
        std::io::Error::last_os_error()
    );
    let snap = tmp.path().join("sysv.snap");
    let snapshot = thaw()
        .args(["snapshot", "--pid", &original.id().to_string(), "--out"])
        .arg(&snap)
        .output()
        .unwrap();
    // SAFETY: detaches the attachment made above.
    unsafe { libc::shmdt(at) };
    let stderr = String::from_utf8_lossy(&snapshot.stderr).to_string();
    original.stdin.as_mut().unwrap().write_all(b"o").unwrap();
    let mut rest = String::new();
    out.read_to_string(&mut rest).unwrap();
    original.wait().unwrap();
    assert!(!snapshot.status.success(), "the capture was not refused");
    assert!(
        stderr.contains(&format!("System V shared memory segment {id} (key "))
            && stderr.contains(") attached 1 more time(s) outside the captured process)"),
        "{stderr}"
    );
    assert_eq!(rest, "ok\n", "the original after the refused capture");
}

/// A process that unmapped part of an attachment: thaw attaches whole
/// segments, so the capture is refused, naming the segment and the part.
const PARTIAL: &str = r#"
#include "common.h"
#include <sys/ipc.h>
#include <sys/shm.h>
int main(void) {
    int id = shmget(IPC_PRIVATE, 3 * 4096, 0600);
    CHECK(id >= 0);
    char *p = shmat(id, NULL, 0);
    CHECK(p != (void *)-1);
    CHECK(shmctl(id, IPC_RMID, NULL) == 0);
    p[0] = 1;
    CHECK(munmap(p + 2 * 4096, 4096) == 0);
    printf("%d\n", id);
    ready();
    CHECK(p[0] == 1);
    return ok();
}
"#;

#[test]
fn a_partly_unmapped_system_v_attachment_is_refused() {
    if !prerequisites() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let program = compile(tmp.path(), "partial", PARTIAL);
    let mut command = Command::new(&program);
    command.stdin(Stdio::piped()).stdout(Stdio::piped());
    common::only_stdio(&mut command);
    let mut original = command.spawn().unwrap();
    let mut out = BufReader::new(original.stdout.take().unwrap());
    let mut id = String::new();
    out.read_line(&mut id).unwrap();
    let mut ready = String::new();
    out.read_line(&mut ready).unwrap();
    assert_eq!(ready, "ready\n");
    let snapshot = thaw()
        .args(["snapshot", "--pid", &original.id().to_string(), "--out"])
        .arg(tmp.path().join("partial.snap"))
        .output()
        .unwrap();
    original.stdin.as_mut().unwrap().write_all(b"o").unwrap();
    let mut rest = String::new();
    out.read_to_string(&mut rest).unwrap();
    original.wait().unwrap();
    let stderr = String::from_utf8_lossy(&snapshot.stderr);
    assert!(!snapshot.status.success(), "the capture was not refused");
    assert!(
        stderr.contains(&format!(
            "System V shared memory segment {} attached in part (bytes 0x0-0x2000 of 0x3000); thaw re-attaches whole segments",
            id.trim()
        )),
        "{stderr}"
    );
    assert_eq!(rest, "ok\n", "the original after the refused capture");
}
