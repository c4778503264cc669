//! Issue 14, acceptance 3 through the CLI: a parent that leads its session,
//! a helper child in its own process group (a pipe each way) and a
//! grandchild in its own session (a socket pair to the helper) are captured
//! with `thaw snapshot --pid PARENT` and restored with `thaw restore` in
//! both memory modes: the copy answers through the pipes and the socket
//! pair, and every process reports the pid, parent, process group and
//! session it had (the program is tests/c/tree.c).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

const TREE: &str = include_str!("c/tree.c");

/// Whether the test can run; with `THAW_TEST_STRICT` set a missing
/// prerequisite fails it.
fn prerequisites() -> bool {
    let missing = if !nix::unistd::geteuid().is_root() {
        Some("thaw snapshot and thaw restore need root (ptrace, pid namespaces)")
    } else if Command::new("cc").arg("--version").output().is_err() {
        Some("no C compiler (cc)")
    } else {
        None
    };
    match missing {
        None => true,
        Some(why) if std::env::var_os("THAW_TEST_STRICT").is_some() => {
            panic!("THAW_TEST_STRICT: {why}")
        }
        Some(why) => {
            eprintln!("skipped: {why}");
            false
        }
    }
}

/// Sends `line` to `stdin` and reads `n` lines from `out`.
fn ask(stdin: &mut impl Write, out: &mut impl BufRead, line: &str, n: usize) -> Vec<String> {
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
    let c = tmp.path().join("tree.c");
    std::fs::write(&c, TREE).unwrap();
    let program = tmp.path().join("tree");
    let status = Command::new("cc")
        .args(["-O1", "-Wall", "-o"])
        .arg(&program)
        .arg(&c)
        .status()
        .unwrap();
    assert!(status.success());

    let mut command = Command::new(&program);
    command.stdin(Stdio::piped()).stdout(Stdio::piped());
    // SAFETY: only close_range runs between fork and exec (the harness's
    // descriptors would make the capture refuse).
    unsafe {
        command.pre_exec(|| {
            libc::syscall(libc::SYS_close_range, 3, u32::MAX, 0);
            Ok(())
        });
    }
    let mut original = command.spawn().unwrap();
    let mut stdin = original.stdin.take().unwrap();
    let mut out = BufReader::new(original.stdout.take().unwrap());
    let mut ready = String::new();
    out.read_line(&mut ready).unwrap();
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
    let snapshot = thaw()
        .args(["snapshot", "--pid", &pids[0].to_string(), "--out"])
        .arg(&snap)
        .output()
        .unwrap();
    assert!(
        snapshot.status.success(),
        "thaw snapshot: {}",
        String::from_utf8_lossy(&snapshot.stderr)
    );
    // The original goes on, then ends with its input.
    assert_eq!(ask(&mut stdin, &mut out, "r", 1), ["answer 16"]);
    assert_eq!(ask(&mut stdin, &mut out, "n 2", 1), ["answer 6"]);
    drop(stdin);
    assert!(original.wait().unwrap().success());

    for mode in ["mmap", "uffd"] {
        let mut copy = thaw()
            .args(["restore", "--mode", mode])
            .arg(&snap)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = copy.stdin.take().unwrap();
        let mut out = BufReader::new(copy.stdout.take().unwrap());
        assert_eq!(ask(&mut stdin, &mut out, "r", 1), ["answer 16"], "{mode}");
        assert_eq!(ask(&mut stdin, &mut out, "n 5", 1), ["answer 12"], "{mode}");
        assert_eq!(ask(&mut stdin, &mut out, "ids", 3), ids, "{mode}");
        drop(stdin);
        let status = copy.wait().unwrap();
        assert_eq!(status.code(), Some(0), "{mode}");
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
        if std::env::var_os("THAW_TEST_STRICT").is_some() {
            panic!("THAW_TEST_STRICT: no python3");
        }
        eprintln!("skipped: no python3");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let script = tmp.path().join("tree.py");
    std::fs::write(&script, PYTHON_TREE).unwrap();
    let mut command = Command::new("python3");
    command
        .arg(&script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    // SAFETY: only close_range runs between fork and exec.
    unsafe {
        command.pre_exec(|| {
            libc::syscall(libc::SYS_close_range, 3, u32::MAX, 0);
            Ok(())
        });
    }
    let mut original = command.spawn().unwrap();
    let stdin = original.stdin.take().unwrap();
    let mut out = BufReader::new(original.stdout.take().unwrap());
    let mut ready = String::new();
    out.read_line(&mut ready).unwrap();
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
    let snapshot = thaw()
        .args(["snapshot", "--pid", parent, "--out"])
        .arg(&snap)
        .output()
        .unwrap();
    assert!(
        snapshot.status.success(),
        "thaw snapshot: {}",
        String::from_utf8_lossy(&snapshot.stderr)
    );
    drop(stdin);
    assert!(original.wait().unwrap().success());
    for mode in ["mmap", "uffd"] {
        let mut copy = thaw()
            .args(["restore", "--mode", mode])
            .arg(&snap)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = copy.stdin.take().unwrap();
        let mut out = BufReader::new(copy.stdout.take().unwrap());
        // The helper answers with the pid, parent, group and session it had.
        assert_eq!(
            ask(&mut stdin, &mut out, "21", 1),
            [format!("answer 42 {helper_ids}")],
            "{mode}"
        );
        drop(stdin);
        assert_eq!(copy.wait().unwrap().code(), Some(0), "{mode}");
    }
}

fn thaw() -> Command {
    Command::new(env!("CARGO_BIN_EXE_thaw"))
}
