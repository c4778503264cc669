//! Shared helpers of the restore tests: skipping without root or a C
//! compiler, building the probe program, starting it with pipes on its
//! stdio, and restoring with fresh pipes.

#![allow(dead_code)]

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

#[path = "../../../test-support/numpy_pandas.rs"]
pub mod numpy_pandas;
pub mod sandbox_env;

use pool::restore::{restore, Mode, RestoreOptions, RestoredChild};
use snapshotter::snapshot::open_snapshot_dir;

/// Whether `THAW_TEST_STRICT` is set (CI sets it): a missing prerequisite
/// then fails the test instead of skipping it.
pub fn strict() -> bool {
    std::env::var_os("THAW_TEST_STRICT").is_some()
}

/// Reports a missing prerequisite: with `THAW_TEST_STRICT` set the test
/// fails with `reason`; otherwise the skip is printed. Returns `false`, for
/// helpers that answer whether a test can run.
pub fn missing(reason: &str) -> bool {
    if strict() {
        panic!("THAW_TEST_STRICT is set and a prerequisite is missing: {reason}");
    }
    eprintln!("skipped: {reason}");
    false
}

/// Ends the test because a prerequisite is missing (`format!` arguments give
/// the reason); fails it instead when `THAW_TEST_STRICT` is set.
#[macro_export]
macro_rules! skip {
    ($($reason:tt)*) => {{
        $crate::restore_support::missing(&format!($($reason)*));
        return;
    }};
}

/// Whether the test can run: root, and `cc` if `needs_cc`; says why not
/// (see [`missing`]).
pub fn can_restore(test: &str, needs_cc: bool) -> bool {
    if !nix::unistd::geteuid().is_root() {
        return missing(&format!(
            "{test} needs root (ptrace, pid namespaces, clone3 set_tid)"
        ));
    }
    if needs_cc && Command::new("cc").arg("--version").output().is_err() {
        return missing(&format!("{test} needs a C compiler (cc)"));
    }
    true
}

/// Whether a test of a python3 program can run: [`can_restore`] without a
/// C compiler, and `/usr/bin/python3`; says why not (see [`missing`]).
pub fn can_restore_python(test: &str) -> bool {
    if !can_restore(test, false) {
        return false;
    }
    if !Path::new("/usr/bin/python3").exists() {
        return missing(&format!("{test}: no /usr/bin/python3"));
    }
    true
}

/// A python3 program that builds a table of 20,000 hashes, prints `ready`,
/// then answers each number it reads with that number's hash as JSON (the
/// restore tests' and bench's plain Python workload).
pub const HASH_TABLE_PY: &str = r#"
import sys, os, json, hashlib
table = {i: hashlib.sha256(str(i).encode()).hexdigest() for i in range(20000)}
sys.stdout.write("ready\n")
sys.stdout.flush()
for line in sys.stdin:
    sys.stdout.write(json.dumps({"n": int(line), "h": table[int(line)]}) + "\n")
    sys.stdout.flush()
"#;

/// The folder holding numpy and pandas for `/usr/bin/python3` (installed
/// once per machine, see [`numpy_pandas`]); says why not (see [`missing`]).
pub fn numpy_path(test: &str) -> Option<String> {
    match numpy_pandas::path() {
        Ok(path) => Some(path.display().to_string()),
        Err(why) => {
            missing(&format!("{test}: no numpy and pandas: {why}"));
            None
        }
    }
}

/// Compiles `source` (C) into `dir` and returns the binary.
pub fn compile(dir: &Path, name: &str, source: &str) -> PathBuf {
    let c = dir.join(format!("{name}.c"));
    std::fs::write(&c, source).unwrap();
    let out = dir.join(name);
    let status = Command::new("cc")
        .args(["-O1", "-o"])
        .arg(&out)
        .arg(&c)
        .status()
        .unwrap();
    assert!(status.success(), "cc failed for {name}");
    out
}

/// A started program with pipes on stdin and stdout.
pub struct Started {
    /// The process.
    pub child: Child,
    /// Its stdin.
    pub stdin: File,
    /// Its stdout.
    pub stdout: BufReader<File>,
}

impl Started {
    /// Reads one line (without the newline).
    pub fn line(&mut self) -> String {
        let mut s = String::new();
        self.stdout.read_line(&mut s).unwrap();
        s.trim_end_matches('\n').to_string()
    }
}

impl Drop for Started {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `program args` with piped stdin/stdout and no other fds but 2.
pub fn start(program: &Path, args: &[&str]) -> Started {
    let mut command = Command::new(program);
    command
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    // SAFETY: only close_range runs between fork and exec.
    unsafe {
        command.pre_exec(|| {
            if libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = command.spawn().unwrap();
    let stdin = File::from(OwnedFd::from(child.stdin.take().unwrap()));
    let stdout = BufReader::new(File::from(OwnedFd::from(child.stdout.take().unwrap())));
    Started {
        child,
        stdin,
        stdout,
    }
}

/// A restored copy with pipes on its stdin and stdout.
pub struct Copy {
    /// The copy.
    pub child: RestoredChild,
    /// Its stdin.
    pub stdin: File,
    /// Its stdout.
    pub stdout: BufReader<File>,
}

impl Copy {
    /// Reads one line (without the newline).
    pub fn line(&mut self) -> String {
        let mut s = String::new();
        self.stdout.read_line(&mut s).unwrap();
        s.trim_end_matches('\n').to_string()
    }

    /// Everything until EOF.
    pub fn rest(&mut self) -> String {
        let mut s = String::new();
        self.stdout.read_to_string(&mut s).unwrap();
        s
    }

    /// Writes `data` to its stdin.
    pub fn send(&mut self, data: &[u8]) {
        self.stdin.write_all(data).unwrap();
    }
}

/// Restores the snapshot directory `dir` with fresh pipes on fds 0 and 1
/// and this process's stderr on fd 2.
pub fn restore_with_pipes(dir: &Path, mode: Mode) -> Copy {
    restore_into(dir, mode, Vec::new())
}

/// [`restore_with_pipes`], the copy joining `cgroups`.
pub fn restore_into(dir: &Path, mode: Mode, cgroups: Vec<PathBuf>) -> Copy {
    restore_full(dir, mode, cgroups, Vec::new(), false)
}

/// [`restore_into`], prefetching `prefetch` in uffd mode (in the
/// background if `background`).
pub fn restore_full(
    dir: &Path,
    mode: Mode,
    cgroups: Vec<PathBuf>,
    prefetch: Vec<u64>,
    background: bool,
) -> Copy {
    restore_as(
        dir,
        mode,
        cgroups,
        prefetch,
        background,
        pool::restore::Credentials::Snapshot,
    )
}

/// [`restore_full`], the copy's threads getting `credentials`.
pub fn restore_as(
    dir: &Path,
    mode: Mode,
    cgroups: Vec<PathBuf>,
    prefetch: Vec<u64>,
    background: bool,
    credentials: pool::restore::Credentials,
) -> Copy {
    try_restore_as(dir, mode, cgroups, prefetch, background, credentials).unwrap()
}

/// [`restore_as`], or why the restore was refused.
pub fn try_restore_as(
    dir: &Path,
    mode: Mode,
    cgroups: Vec<PathBuf>,
    prefetch: Vec<u64>,
    background: bool,
    credentials: pool::restore::Credentials,
) -> Result<Copy, pool::restore::RestoreError> {
    let (snapshot, store) = open_snapshot_dir(dir).unwrap();
    let (in_read, in_write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
    let (out_read, out_write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
    let stderr = std::io::stderr();
    let mut fds = vec![(0, in_read.as_fd()), (1, out_write.as_fd())];
    if snapshot.state.fds.iter().any(|f| f.fd == 2) {
        fds.push((2, stderr.as_fd()));
    }
    let child = restore(
        &snapshot,
        &store,
        &RestoreOptions {
            mode,
            fds,
            cgroups,
            prefetch,
            prefetch_in_background: background,
            uffd_keeper: None,
            credentials,
        },
    )?;
    drop(in_read);
    drop(out_write);
    Ok(Copy {
        child,
        stdin: File::from(in_write),
        stdout: BufReader::new(File::from(out_read)),
    })
}
