//! Snapshots of a real process: the self-contained directory form, a
//! second snapshot into the same store, and what loading refuses.

mod capture_support;

use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};

use snapshotter::capture::CaptureOptions;
use snapshotter::snapshot::{
    load_snapshot, manifest_path, open_snapshot_dir, snapshot_to_dir, take_snapshot,
    LoadSnapshotError, SnapshotError, DIR_SNAPSHOT_ID,
};
use snapshotter::store::{PageStore, ReadManifestError};

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A python3 process holding a few MiB of data, blocked reading stdin;
/// `None` (reported as a missing prerequisite) without root or python3.
fn python() -> Option<Killed> {
    if !capture_support::can_capture("snapshot_dir")
        || !capture_support::have_python("snapshot_dir")
    {
        return None;
    }
    let mut command = Command::new("/usr/bin/python3");
    command
        .args([
            "-c",
            "import sys; data = [bytes([i % 251]) * 4096 for i in range(1000)]; \
             print('ready', flush=True); sys.stdin.read()",
        ])
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
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.as_mut().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line, "ready\n");
    Some(Killed(child))
}

#[test]
fn snapshot_dir_round_trips_and_dedups() {
    let Some(worker) = python() else { return };
    let pid = worker.0.id() as i32;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("snap");
    let info = snapshot_to_dir(pid, &dir).unwrap();
    println!("{info:?}");
    assert_eq!(info.id, DIR_SNAPSHOT_ID);
    assert!(info.manifest.exists());
    assert!(info.stored_pages >= 1000, "{info:?}");
    assert!(info.new_pages <= info.stored_pages, "{info:?}");
    assert!(info.timings.total_us >= info.timings.pages_us);

    let (snapshot, store) = open_snapshot_dir(&dir).unwrap();
    assert_eq!(snapshot.state.pid, pid);
    assert_eq!(snapshot.areas.len(), snapshot.state.areas.len());
    assert_eq!(
        store.load_root(DIR_SNAPSHOT_ID).unwrap().areas,
        snapshot.areas
    );
    store.verify_snapshot(DIR_SNAPSHOT_ID).unwrap();
    let image = store.image(DIR_SNAPSHOT_ID).unwrap();
    assert_eq!(image.layout.areas.len(), snapshot.areas.len());

    // A second snapshot of the unchanged process into the same store adds
    // (next to) nothing.
    let again = take_snapshot(pid, &store, &dir, "again", &CaptureOptions::default()).unwrap();
    assert!(again.new_pages * 50 <= info.new_pages, "{again:?}");
    let loaded = load_snapshot(&dir, "again").unwrap();
    assert_eq!(loaded.id, "again");
    assert_eq!(store.snapshot_ids().unwrap().len(), 2);
}

#[test]
fn loading_refuses_bad_ids_and_corrupt_manifests() {
    let tmp = tempfile::tempdir().unwrap();
    assert!(matches!(
        load_snapshot(tmp.path(), "../x"),
        Err(LoadSnapshotError::InvalidId(_))
    ));
    let store = PageStore::open(tmp.path().join("store")).unwrap();
    assert!(matches!(
        take_snapshot(1, &store, tmp.path(), "a/b", &CaptureOptions::default()),
        Err(SnapshotError::InvalidId(_))
    ));
    let err = load_snapshot(tmp.path(), "missing").unwrap_err();
    assert!(
        matches!(
            err,
            LoadSnapshotError::Manifest(ReadManifestError::Io { .. })
        ),
        "{err}"
    );

    let Some(worker) = python() else { return };
    let dir = tmp.path().join("snap");
    snapshot_to_dir(worker.0.id() as i32, &dir).unwrap();
    let path = manifest_path(&dir, DIR_SNAPSHOT_ID);
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x55;
    std::fs::write(&path, &bytes).unwrap();
    let err = load_snapshot(&dir, DIR_SNAPSHOT_ID).unwrap_err();
    assert!(
        matches!(
            err,
            LoadSnapshotError::Manifest(ReadManifestError::ChecksumMismatch { .. })
        ),
        "{err}"
    );
}
