//! A page-store root (`<store>/roots/<id>`): `THAWSNAP` container +
//! bincode `SnapshotRoot`, as `PageStore::load_root` reads it for gc,
//! verification, statistics and image building.
//!
//! Mode byte 0: the rest is a whole root file. Any other: the rest is the
//! payload, wrapped with a correct checksum.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use snapshotter::store::{
    decode_manifest, parse_root, ImageLayout, SnapshotRoot, DEFAULT_MANIFEST_LIMIT, MAX_ROOT_PAGES,
};

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
    let path = Path::new("roots/fuzz");
    let Ok(named) = decode_manifest::<SnapshotRoot>(bytes, path, DEFAULT_MANIFEST_LIMIT) else {
        return;
    };
    let Ok(root) = parse_root(bytes, &named.id, path) else {
        return;
    };
    // What gc, stats and the image cache compute from a root.
    let _ = root.content_key();
    let mut total = 0;
    for pages in &root.areas {
        total += pages.page_count();
        let _ = pages.counts();
        let _ = pages.hashes().count();
    }
    assert!(total <= MAX_ROOT_PAGES);
    let layout = ImageLayout::of(&root.areas);
    assert_eq!(layout.size, total * 4096);
});
