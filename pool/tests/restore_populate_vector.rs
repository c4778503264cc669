//! The working set populated by vectors (`restore::populate`: one
//! `process_madvise` of the stub on itself per advice): before the copy
//! runs, every page its recorded first invocation wrote is its own page
//! already and every page that invocation read is mapped, exactly as with
//! one `madvise` per range (`THAW_POPULATE_VECTOR=0`); the copy answers the
//! same either way.

mod restore_support;

use std::io::Write;
use std::path::Path;

use pool::restore::working_set::{self, INVOKED, WRITTEN};
use pool::restore::Mode;
use restore_support::{can_restore_python, restore_full, restore_with_pipes, start};
use snapshotter::snapshot::{open_snapshot_dir, snapshot_to_dir};

const SCRIPT: &str = r#"
import sys, json, hashlib
table = {i: hashlib.sha256(str(i).encode()).hexdigest() for i in range(20000)}
sys.stdout.write("ready\n")
sys.stdout.flush()
for line in sys.stdin:
    n = int(line)
    table[n] = table[n][::-1]
    sys.stdout.write(json.dumps({"n": n, "h": table[n], "l": len(table)}) + "\n")
    sys.stdout.flush()
"#;

#[test]
fn populating_by_vectors_brings_in_the_working_set() {
    if !can_restore_python("populating_by_vectors_brings_in_the_working_set") {
        return;
    }
    if !pool::restore::populate::vector_supported() {
        skip!("populating_by_vectors_brings_in_the_working_set: this kernel does not populate through process_madvise (Linux 6.14 or later does)");
    }
    let tmp = tempfile::tempdir().unwrap();
    let mut original = start(Path::new("/usr/bin/python3"), &["-c", SCRIPT]);
    assert_eq!(original.line(), "ready");
    let snap = tmp.path().join("snap");
    snapshot_to_dir(original.child.id() as i32, &snap).unwrap();
    original.stdin.write_all(b"7\n").unwrap();
    let expected = original.line();
    drop(original);
    let (snapshot, _) = open_snapshot_dir(&snap).unwrap();
    let areas = &snapshot.state.areas;

    // The working set, recorded as the server records an mmap copy's.
    let mut first = restore_with_pipes(&snap, Mode::Mmap);
    let pid = first.child.pid();
    let before = working_set::resident_pages(pid, areas).unwrap();
    first.send(b"7\n");
    assert_eq!(first.line(), expected);
    let after = working_set::resident_pages(pid, areas).unwrap();
    drop(first.stdin);
    assert_eq!(first.child.wait().unwrap(), 0);
    let recorded = working_set::tag_invoked(after, &before);
    let ranges = working_set::populate_ranges(&recorded, areas, false);
    assert!(
        ranges
            .iter()
            .any(|r| r.advice == working_set::MADV_POPULATE_WRITE),
        "the first invocation wrote no page: nothing to check"
    );

    for vectors in [true, false] {
        if vectors {
            std::env::remove_var("THAW_POPULATE_VECTOR");
        } else {
            std::env::set_var("THAW_POPULATE_VECTOR", "0");
        }
        let mut copy = restore_full(&snap, Mode::Mmap, Vec::new(), recorded.clone(), false);
        std::env::remove_var("THAW_POPULATE_VECTOR");
        let pid = copy.child.pid();
        // Before the copy runs: what the stub populated.
        let now = working_set::resident_pages(pid, areas).unwrap();
        let mut resident: Vec<u64> = now.iter().map(|p| p & !0xfff).collect();
        resident.sort_unstable();
        let own: Vec<u64> = {
            let mut v: Vec<u64> = now
                .iter()
                .filter(|p| *p & WRITTEN != 0)
                .map(|p| p & !0xfff)
                .collect();
            v.sort_unstable();
            v
        };
        for r in &ranges {
            for page in (r.start..r.start + r.len).step_by(4096) {
                if r.advice == working_set::MADV_POPULATE_WRITE {
                    assert!(
                        own.binary_search(&page).is_ok(),
                        "vectors {vectors}: written page {page:#x} not copied in before the resume"
                    );
                } else {
                    assert!(
                        resident.binary_search(&page).is_ok(),
                        "vectors {vectors}: read page {page:#x} not mapped before the resume"
                    );
                }
            }
        }
        copy.send(b"7\n");
        assert_eq!(copy.line(), expected, "vectors {vectors}");
        drop(copy.stdin);
        assert_eq!(copy.child.wait().unwrap(), 0);
        println!(
            "vectors {vectors}: {} ranges ({} of written pages), {} pages resident before the resume, {} recorded ({} invoked)",
            ranges.len(),
            ranges
                .iter()
                .filter(|r| r.advice == working_set::MADV_POPULATE_WRITE)
                .count(),
            now.len(),
            recorded.len(),
            recorded.iter().filter(|p| *p & INVOKED != 0).count()
        );
    }
}
