//! Issue 14, acceptance 3 through the CLI: a parent that leads its session,
//! a helper child in its own process group (a pipe each way) and a
//! grandchild in its own session (a socket pair to the helper) are captured
//! with `thaw snapshot --pid PARENT` and restored with `thaw restore` in
//! both memory modes: the copy answers through the pipes and the socket
//! pair, and every process reports the pid, parent, process group and
//! session it had (the program is tests/c/tree.c).

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};

use common::c_programs::{
    compile, prerequisites, snapshot_of, snapshot_pid, start_to_first_line, thaw,
};

const TREE: &str = include_str!("c/tree.c");

/// Restores snapshot folder `snap` in `mode`, and has the copy's stdin
/// and stdout talk with `talk`; then the copy, its stdin closed, must
/// exit 0.
fn talk_to_copy(snap: &Path, mode: &str, talk: impl FnOnce(&mut dyn Write, &mut dyn BufRead)) {
    let mut copy = thaw()
        .args(["restore", "--mode", mode])
        .arg(snap)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = copy.stdin.take().unwrap();
    let mut out = BufReader::new(copy.stdout.take().unwrap());
    talk(&mut stdin, &mut out);
    drop(stdin);
    assert_eq!(copy.wait().unwrap().code(), Some(0), "{mode}");
}

/// Sends `line` to `stdin` and reads `n` lines from `out`.
fn ask(
    stdin: &mut (impl Write + ?Sized),
    out: &mut (impl BufRead + ?Sized),
    line: &str,
    n: usize,
) -> Vec<String> {
    stdin.write_all(format!("{line}\n").as_bytes()).unwrap();
    stdin.flush().unwrap();
    (0..n)
        .map(|_| {
            let mut s = String::new();
            out.read_line(&mut s).unwrap();
            s.trim_end().to_string()
        })
        .collect()
}

#[test]
fn a_process_tree_survives_thaw_snapshot_and_thaw_restore() {
    if !prerequisites() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let program = compile(tmp.path(), "tree", TREE);
    let started = start_to_first_line(&mut Command::new(&program));
    let (mut original, mut out, ready) = (started.child, started.out, started.line);
    let mut stdin = original.stdin.take().unwrap();
    let pids: Vec<i32> = ready
        .trim_end()
        .strip_prefix("ready ")
        .unwrap_or_else(|| panic!("{ready:?}"))
        .split(' ')
        .map(|p| p.parse().unwrap())
        .collect();
    assert_eq!(pids[0], original.id() as i32);
    let ids = ask(&mut stdin, &mut out, "ids", 3);
    assert_eq!(
        ids[1],
        format!(
            "ids helper pid={} ppid={} pgid={} sid={} same",
            pids[1], pids[0], pids[1], pids[0]
        )
    );
    assert_eq!(
        ids[2],
        format!(
            "ids grandchild pid={} ppid={} pgid={} sid={} same",
            pids[2], pids[1], pids[2], pids[2]
        )
    );

    // An answer left unread, queued in the pipe from the helper (or on its
    // way) when captured.
    assert_eq!(ask(&mut stdin, &mut out, "w 7", 1), ["sent"]);
    std::thread::sleep(std::time::Duration::from_millis(100));
    let snap = tmp.path().join("tree.snap");
    snapshot_of(&mut original, &snap);
    // The original goes on, then ends with its input.
    assert_eq!(ask(&mut stdin, &mut out, "r", 1), ["answer 16"]);
    assert_eq!(ask(&mut stdin, &mut out, "n 2", 1), ["answer 6"]);
    drop(stdin);
    assert!(original.wait().unwrap().success());

    for mode in ["mmap", "uffd"] {
        talk_to_copy(&snap, mode, |stdin, out| {
            assert_eq!(ask(stdin, out, "r", 1), ["answer 16"], "{mode}");
            assert_eq!(ask(stdin, out, "n 5", 1), ["answer 12"], "{mode}");
            assert_eq!(ask(stdin, out, "ids", 3), ids, "{mode}");
        });
    }
}

/// A Python parent whose helper is a `subprocess.Popen` of another Python
/// (its own executable and memory layout, in its own process group), the
/// pipes between them on the helper's stdin and stdout and on the parent's
/// protocol-range descriptors. The parent leads its session (a session
/// outside the tree could not be named in the copy's pid namespace).
const PYTHON_TREE: &str = r#"
import os, subprocess, sys
os.setsid()
helper = subprocess.Popen([sys.executable, "-c", """
import os, sys
os.setpgid(0, 0)
for line in sys.stdin:
    print(2 * int(line), os.getpid(), os.getppid(), os.getpgrp(), os.getsid(0), flush=True)
"""], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
def ask(n):
    helper.stdin.write(f"{n}\n")
    helper.stdin.flush()
    return helper.stdout.readline().strip()
print("ready", os.getpid(), helper.pid, ask(1), flush=True)
for line in sys.stdin:
    print("answer", ask(int(line)), flush=True)
"#;

#[test]
fn a_python_parent_with_a_subprocess_helper_survives_as_a_tree() {
    if !prerequisites() {
        return;
    }
    if Command::new("python3").arg("--version").output().is_err() {
        skip!("no python3");
    }
    let tmp = tempfile::tempdir().unwrap();
    let script = tmp.path().join("tree.py");
    std::fs::write(&script, PYTHON_TREE).unwrap();
    let started = start_to_first_line(Command::new("python3").arg(&script));
    let (mut original, ready) = (started.child, started.line);
    let stdin = original.stdin.take().unwrap();
    // "ready PARENT HELPER 2 HELPER PARENT HELPER SID"
    let fields: Vec<String> = ready.split_whitespace().map(str::to_string).collect();
    assert_eq!(fields[0], "ready", "{ready:?}");
    let (parent, helper) = (&fields[1], &fields[2]);
    assert_eq!(
        fields[4..7],
        [helper.clone(), parent.clone(), helper.clone()]
    );
    let helper_ids = fields[4..].join(" ");
    let snap = tmp.path().join("py.snap");
    if let Err(stderr) = snapshot_pid(parent.parse().unwrap(), &snap) {
        panic!("thaw snapshot: {stderr}");
    }
    drop(stdin);
    assert!(original.wait().unwrap().success());
    for mode in ["mmap", "uffd"] {
        talk_to_copy(&snap, mode, |stdin, out| {
            // The helper answers with the pid, parent, group and session
            // it had.
            assert_eq!(
                ask(stdin, out, "21", 1),
                [format!("answer 42 {helper_ids}")],
                "{mode}"
            );
        });
    }
}
