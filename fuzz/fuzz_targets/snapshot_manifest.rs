//! The snapshot manifest: `THAWSNAP` container + bincode `Snapshot`, as
//! `load_snapshot` reads it before a restore.
//!
//! Mode byte 0: the rest is a whole manifest file. Any other: the rest is
//! the payload, wrapped in a container with a correct checksum, so that
//! mutations reach the bincode decoder and the snapshot checks.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use snapshotter::snapshot::{parse_snapshot, Snapshot};
use snapshotter::store::{decode_manifest, encode_manifest, DEFAULT_MANIFEST_LIMIT};

fuzz_target!(|data: &[u8]| {
    let (mode, rest) = thaw_fuzz::mode(data);
    let wrapped;
    let bytes = if mode == 0 {
        rest
    } else {
        wrapped = thaw_fuzz::wrap_manifest(rest);
        &wrapped
    };
    // Checked as if the file's name were the id it holds, so that inputs
    // need not spell a particular name to get past the id check.
    let path = Path::new("fuzz.snapshot");
    let Ok(named) = decode_manifest::<Snapshot>(bytes, path, DEFAULT_MANIFEST_LIMIT) else {
        return;
    };
    let id = named.id;
    let Ok(snapshot) = parse_snapshot(bytes, &id, path) else {
        return;
    };
    // What the server and the restorer compute from a loaded snapshot.
    let _ = snapshot.state.stored_pages();
    let _ = snapshot.state.zero_pages();
    for pages in &snapshot.areas {
        let _ = pages.counts();
        let _ = pages.hashes().count();
    }
    // A snapshot that loads re-encodes to one that loads as the same value.
    let again = encode_manifest(&snapshot).expect("a decoded snapshot encodes");
    let back = parse_snapshot(&again, &id, path).expect("re-encoded snapshot loads");
    assert_eq!(back, snapshot);
});
