//! Restores of a C program that sets up memory, files, signals and process
//! attributes of every kind (restore_support/probe.c), checked by the copy
//! itself.

mod restore_support;

use pool::restore::Mode;
use restore_support::{can_restore, compile, restore_with_pipes, start};
use snapshotter::snapshot::snapshot_to_dir;

/// Files the probe maps and reads, in a temporary directory.
fn probe_files(dir: &std::path::Path) -> [String; 4] {
    let shared = dir.join("shared.bin");
    std::fs::write(&shared, vec![b'S'; 4096]).unwrap();
    let private = dir.join("private.bin");
    std::fs::write(&private, vec![b'P'; 4 * 4096]).unwrap();
    let data = dir.join("data.txt");
    std::fs::write(&data, b"headhead..0123456789tail").unwrap();
    let work = dir.join("work");
    std::fs::create_dir_all(&work).unwrap();
    [shared, private, data, work].map(|p| p.to_str().unwrap().to_string())
}

#[test]
fn probe_copy_checks_itself_and_exits_zero() {
    if !can_restore("probe_copy_checks_itself_and_exits_zero", true) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let probe = compile(tmp.path(), "probe", include_str!("restore_support/probe.c"));
    let files = probe_files(tmp.path());
    let args: Vec<&str> = files.iter().map(|s| s.as_str()).collect();
    let mut original = start(&probe, &args);
    let ready = original.line();
    assert!(ready.starts_with("ready "), "{ready:?}");
    let snap = tmp.path().join("snap");
    let info = snapshot_to_dir(original.child.id() as i32, &snap).unwrap();
    println!(
        "snapshot: {} areas, {} stored pages, {} zero pages",
        info.areas, info.stored_pages, info.zero_pages
    );
    drop(original);

    for mode in [Mode::Mmap, Mode::Uffd] {
        let mut copy = restore_with_pipes(&snap, mode);
        println!("restore ({mode:?}): {:?}", copy.child.timings);
        // A shared mapping shows the file as it is now.
        let mut shared = std::fs::read(&files[0]).unwrap();
        shared[..6].copy_from_slice(b"after!");
        std::fs::write(&files[0], &shared).unwrap();
        copy.send(b"g");
        let out = copy.rest();
        let status = copy.child.wait().unwrap();
        if let Some(r) = &copy.child.server_stats {
            println!(
                "page server: {} faults, {} copied, {} zero",
                r.faults, r.copied, r.zero
            );
        }
        assert_eq!(out, "ok\n", "{mode:?}");
        assert_eq!(status, 0, "{mode:?}");
        std::fs::write(&files[0], vec![b'S'; 4096]).unwrap();
    }
}
