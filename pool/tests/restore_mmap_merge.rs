//! Adjacent mappings merged into one `mmap` of the mapping batch
//! (`Batch::call_mmap`, `THAW_MMAP_MERGE`): a python3 copy restored with
//! them merged has exactly the memory map of one restored with one call per
//! area and run (the kernel merges such neighbours either way), answers the
//! same, and its mapping batch makes fewer calls (in mmap mode; no more in
//! uffd mode). In both memory modes.

mod restore_support;

use std::io::Write;
use std::path::Path;

use pool::restore::Mode;
use restore_support::{can_restore_python, restore_with_pipes, start, HASH_TABLE_PY};
use snapshotter::snapshot::snapshot_to_dir;

/// The copy's memory map, read while it waits for its first request, and
/// its mapping batch's call count; then its answer to `7`.
fn restore_and_read(snap: &Path, mode: Mode, merge: bool) -> (String, u32, String) {
    if merge {
        std::env::remove_var("THAW_MMAP_MERGE");
    } else {
        std::env::set_var("THAW_MMAP_MERGE", "0");
    }
    let mut copy = restore_with_pipes(snap, mode);
    std::env::remove_var("THAW_MMAP_MERGE");
    let maps = std::fs::read_to_string(format!("/proc/{}/maps", copy.child.pid())).unwrap();
    let calls = copy.child.timings.batched;
    copy.send(b"7\n");
    let answer = copy.line();
    drop(copy.stdin);
    assert_eq!(copy.child.wait().unwrap(), 0);
    (maps, calls, answer)
}

#[test]
fn merged_mappings_give_the_same_memory_map() {
    if !can_restore_python("merged_mappings_give_the_same_memory_map") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let mut original = start(Path::new("/usr/bin/python3"), &["-c", HASH_TABLE_PY]);
    assert_eq!(original.line(), "ready");
    original.stdin.write_all(b"7\n").unwrap();
    let expected = original.line();
    let snap = tmp.path().join("snap");
    snapshot_to_dir(original.child.id() as i32, &snap).unwrap();
    drop(original);
    for mode in [Mode::Mmap, Mode::Uffd] {
        let (maps_one, calls_one, answer_one) = restore_and_read(&snap, mode, false);
        let (maps_merged, calls_merged, answer_merged) = restore_and_read(&snap, mode, true);
        assert_eq!(answer_one, expected, "{mode:?}, one call each");
        assert_eq!(answer_merged, expected, "{mode:?}, merged");
        assert_eq!(
            maps_merged, maps_one,
            "{mode:?}: the memory map differs with merged mappings"
        );
        // mmap mode maps areas and runs from the image: some continue
        // each other (python3: 111 calls, 107 merged). uffd mode maps
        // anonymous memory instead, where this process may have nothing
        // to merge.
        let fewer = match mode {
            Mode::Mmap => calls_merged < calls_one,
            Mode::Uffd => calls_merged <= calls_one,
        };
        assert!(
            fewer,
            "{mode:?}: {calls_merged} batched calls merged, {calls_one} one call each"
        );
        println!(
            "{mode:?}: {} areas; batched calls {calls_one} one each, {calls_merged} merged",
            maps_one.lines().count()
        );
    }
}
