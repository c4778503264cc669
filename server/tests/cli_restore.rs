//! Ten small C programs, each captured mid-run with `thaw snapshot --pid`
//! and restored with `thaw restore` in both memory modes, check that their
//! state survived (tests/c/*.c): memory patterns, file mappings, signals,
//! cwd, umask, rlimits, file offsets, vDSO clocks, `sched_getcpu`, identity.
//! Needs root (ptrace, pid namespaces) and a C compiler.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use common::c_programs::{compile, thaw};

const PROGRAMS: [(&str, &str); 10] = [
    ("memory", include_str!("c/memory.c")),
    ("mappings", include_str!("c/mappings.c")),
    ("signals", include_str!("c/signals.c")),
    ("cwd", include_str!("c/cwd.c")),
    ("umask", include_str!("c/umask.c")),
    ("rlimits", include_str!("c/rlimits.c")),
    ("offsets", include_str!("c/offsets.c")),
    ("clocks", include_str!("c/clocks.c")),
    ("getcpu", include_str!("c/getcpu.c")),
    ("identity", include_str!("c/identity.c")),
];

/// The files a program works on, made afresh before each run.
struct Files {
    dir: PathBuf,
}

impl Files {
    fn new(dir: &Path) -> Files {
        let f = Files {
            dir: dir.join("files"),
        };
        std::fs::create_dir_all(f.dir.join("sub")).unwrap();
        std::fs::write(f.dir.join("private.bin"), vec![b'P'; 4 * 4096]).unwrap();
        std::fs::write(f.dir.join("data.txt"), b"head......0123456789tail").unwrap();
        std::fs::write(f.dir.join("sub/marker"), b"here!").unwrap();
        std::fs::write(f.dir.join("sub/inside"), b"x").unwrap();
        f.reset();
        f
    }

    /// Rewrites, in place (same inode), what runs change.
    fn reset(&self) {
        write_in_place(&self.dir.join("shared.bin"), &[b'S'; 4096]);
        write_in_place(&self.dir.join("log.txt"), b"one\n");
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }

    fn args(&self, program: &str) -> Vec<String> {
        match program {
            "mappings" => vec![self.path("private.bin"), self.path("shared.bin")],
            "cwd" => vec![self.path("sub")],
            "umask" => vec![self.path("sub")],
            "offsets" => vec![
                self.path("data.txt"),
                self.path("log.txt"),
                self.path("sub"),
            ],
            "identity" => vec!["an-argument".into()],
            _ => Vec::new(),
        }
    }

    /// What the test does to the world after the capture, before the copy
    /// checks itself.
    fn after_capture(&self, program: &str) {
        if program == "mappings" {
            let mut bytes = vec![b'S'; 4096];
            bytes[..6].copy_from_slice(b"after!");
            write_in_place(&self.dir.join("shared.bin"), &bytes);
        }
    }
}

fn write_in_place(path: &Path, bytes: &[u8]) {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(path)
        .unwrap();
    f.write_all(bytes).unwrap();
}

#[test]
fn ten_c_programs_survive_thaw_snapshot_and_thaw_restore_in_both_modes() {
    if !nix::unistd::geteuid().is_root() {
        skip!("thaw snapshot and thaw restore need root (ptrace, pid namespaces)");
    }
    if Command::new("cc").arg("--version").output().is_err() {
        skip!("no C compiler (cc)");
    }
    let tmp = tempfile::tempdir().unwrap();
    let files = Files::new(tmp.path());
    let mut failures = Vec::new();
    for (name, source) in PROGRAMS {
        let program = compile(tmp.path(), name, source);
        files.reset();
        // The original, paused at "ready" (blocked reading stdin).
        let mut command = Command::new(&program);
        command
            .args(files.args(name))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        common::only_stdio(&mut command);
        let mut original = command.spawn().unwrap();
        let mut out = BufReader::new(original.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        assert_eq!(line, "ready\n", "{name}: {line}");
        let snap = tmp.path().join(format!("{name}.snap"));
        let snapshot = thaw()
            .args(["snapshot", "--pid", &original.id().to_string(), "--out"])
            .arg(&snap)
            .output()
            .unwrap();
        assert!(
            snapshot.status.success(),
            "{name}: thaw snapshot: {}",
            String::from_utf8_lossy(&snapshot.stderr)
        );
        original.kill().unwrap();
        original.wait().unwrap();

        for mode in ["mmap", "uffd"] {
            files.reset();
            let copy = thaw()
                .args(["restore", "--mode", mode])
                .arg(&snap)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap();
            let (printed, status) = drive_copy(copy, || files.after_capture(name));
            println!("{name} ({mode}): exit {status}: {}", printed.trim());
            if printed != "ok\n" || status != 0 {
                failures.push(format!("{name} ({mode}): exit {status}: {printed}"));
            }
        }
    }
    assert!(failures.is_empty(), "failed: {failures:#?}");
}

/// A copy resumes blocked in its read of stdin (it printed "ready" before
/// the capture): let it go and collect the rest.
fn drive_copy(mut child: Child, before_go: impl FnOnce()) -> (String, i32) {
    before_go();
    child.stdin.as_mut().unwrap().write_all(b"g").unwrap();
    let mut rest = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut rest)
        .unwrap();
    let status = child.wait().unwrap();
    (rest, status.code().unwrap_or(-1))
}
