//! What the in-memory bucket tests share: the strict-mode skip, a captured
//! python3 process, and a captured folder as a `LocalSnapshot`.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;

use remote_store::LocalSnapshot;
use snapshotter::snapshot::{snapshot_to_dir, DIR_SNAPSHOT_ID};
use snapshotter::store::PageStore;

/// Reports a missing prerequisite: fails the test when `THAW_TEST_STRICT`
/// is set (CI), otherwise prints why it is skipped.
pub fn skip(reason: &str) {
    if std::env::var_os("THAW_TEST_STRICT").is_some() {
        panic!("THAW_TEST_STRICT is set and a prerequisite is missing: {reason}");
    }
    eprintln!("skipped: {reason}");
}

/// The snapshot captured into folder `dir` (`snapshot_to_dir`), with its
/// page store, as push and pull take it.
pub fn local(dir: &Path) -> LocalSnapshot {
    std::fs::create_dir_all(dir.join("store")).unwrap();
    LocalSnapshot {
        store: Arc::new(PageStore::open(dir.join("store")).unwrap()),
        snapshots_dir: dir.to_path_buf(),
        id: DIR_SNAPSHOT_ID.to_string(),
        working_set: dir.join("snapshot.workingset"),
    }
}

/// Captures into `dir` a python3 holding `mib` MiB of its own random bytes.
pub fn capture(dir: &Path, mib: u32) {
    let mut command = Command::new("/usr/bin/python3");
    command
        .args([
            "-c",
            &format!(
                "import os,sys; d=os.urandom({mib}<<20); print('ready', flush=True); sys.stdin.read(1)"
            ),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    // SAFETY: only close_range (async-signal-safe) runs between fork and
    // exec; the harness's descriptors would make the capture refuse.
    unsafe {
        command.pre_exec(|| {
            libc::syscall(libc::SYS_close_range, 3, u32::MAX, 0);
            Ok(())
        });
    }
    let mut child = command.spawn().unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line, "ready\n");
    snapshot_to_dir(child.id() as i32, dir).unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
}
