//! Zero pages of the snapshot that a uffd copy writes
//! (restore_support/zero.c): the recording copy's working set tags them
//! written (`working_set::tag_written_zero_faults`, from its pagemap), not
//! the zero pages it only read; a later copy prefetching that working set
//! gets a private zeroed page there, so its writes take no copy-on-write
//! fault (`THAW_UFFD_ZERO`, default `written`; with `map` the same writes
//! take one fault each, as before).

mod restore_support;

use pool::restore::uffd::ZeroFill;
use pool::restore::working_set::{tag_written_zero_faults, WRITTEN};
use pool::restore::Mode;
use restore_support::{can_restore, compile, restore_full, start, Copy};
use snapshotter::snapshot::snapshot_to_dir;
use snapshotter::state::PAGE_SIZE;

/// Sends `command` and returns the page faults the copy counted for it.
fn faults(copy: &mut Copy, command: &str) -> u64 {
    copy.send(format!("{command}\n").as_bytes());
    let line = copy.line();
    assert!(line.ends_with(" sum 0"), "{command}: {line:?}");
    line.split(' ').nth(1).unwrap().parse().unwrap()
}

#[test]
fn written_zero_pages_are_private_in_the_next_copy() {
    if !can_restore("written_zero_pages_are_private_in_the_next_copy", true) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let program = compile(tmp.path(), "zero", include_str!("restore_support/zero.c"));
    let mut original = start(&program, &[]);
    let ready = original.line();
    let start = ready
        .strip_prefix("ready ")
        .and_then(|a| u64::from_str_radix(a, 16).ok())
        .unwrap_or_else(|| panic!("{ready:?}"));
    let snap = tmp.path().join("snap");
    snapshot_to_dir(original.child.id() as i32, &snap).unwrap();
    drop(original);

    // The recording copy: reads some zero pages, writes others, reads then
    // writes a third part.
    let mut first = restore_full(&snap, Mode::Uffd, Vec::new(), Vec::new(), false);
    for command in ["r", "w", "m"] {
        println!(
            "recording copy, {command}: {} faults",
            faults(&mut first, command)
        );
    }
    let live = first
        .child
        .page_server()
        .expect("a uffd copy has a page server");
    let zero = live.zero_faults();
    let tagged = tag_written_zero_faults(first.child.pid(), live.touched(), &zero).unwrap();
    drop(first.stdin);
    assert_eq!(first.child.wait().unwrap(), 0);
    let report = first.child.server_stats.clone().unwrap();
    println!(
        "recording copy: {} faults, {} zero ({} private)",
        report.faults, report.zero, report.zero_private
    );

    // Of the area's pages, those written are tagged: 64..96 and 192..208.
    let page = |i: u64| start + i * PAGE_SIZE;
    let written: Vec<u64> = tagged
        .iter()
        .filter(|&&p| p & WRITTEN != 0 && (page(0)..page(256)).contains(&p))
        .map(|p| p & !(PAGE_SIZE - 1))
        .collect();
    assert_eq!(
        written.len(),
        48,
        "32 written + 16 read then written: {tagged:x?}"
    );
    for i in (64..96).chain(192..208) {
        assert!(written.contains(&page(i)), "page {i} written, not tagged");
    }
    for i in 128..160 {
        assert!(zero.contains(&page(i)), "page {i} is a zero fault");
        assert!(tagged.contains(&page(i)), "page {i} read: listed, untagged");
    }
    let mode = ZeroFill::from_env();
    if mode != ZeroFill::Map {
        // Its write faults got private pages already.
        assert!(report.zero_private >= 32, "{report:?}");
    }

    // A copy prefetching that working set.
    let mut next = restore_full(&snap, Mode::Uffd, Vec::new(), tagged, false);
    let counted: Vec<u64> = ["r", "w", "m"]
        .iter()
        .map(|c| faults(&mut next, c))
        .collect();
    drop(next.stdin);
    assert_eq!(next.child.wait().unwrap(), 0);
    let report = next.child.server_stats.clone().unwrap();
    println!(
        "prefetching copy ({mode:?}): faults r/w/m {counted:?}; server: {} faults, {} prefetched, {} zero ({} private)",
        report.faults, report.prefetched, report.zero, report.zero_private
    );
    // Reading prefetched zero pages costs nothing in any mode.
    assert!(counted[0] <= 2, "reads: {counted:?}");
    match mode {
        // The shared zero page: each write copies it.
        ZeroFill::Map => {
            assert!(counted[1] >= 32 && counted[2] >= 16, "{counted:?}");
            assert_eq!(report.zero_private, 0);
        }
        ZeroFill::Written | ZeroFill::Copy => {
            assert!(counted[1] <= 2 && counted[2] <= 2, "writes: {counted:?}");
            assert!(report.zero_private >= 48, "{report:?}");
        }
    }
}
