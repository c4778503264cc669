//! The working-set file (`<snapshots>/<id>.workingset`), as a restore in
//! `uffd` mode reads it to prefetch.
//!
//! Mode byte 0: the rest is a whole file. Any other: the rest is the file
//! without its trailing checksum, which the target appends, so mutations
//! reach the length checks.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use pool::restore::working_set::{decode, encode, MAX_PAGES};

fuzz_target!(|data: &[u8]| {
    let (mode, rest) = thaw_fuzz::mode(data);
    let mut fixed;
    let bytes = if mode == 0 {
        rest
    } else {
        fixed = rest.to_vec();
        fixed.extend_from_slice(blake3::hash(rest).as_bytes());
        &fixed
    };
    let path = Path::new("fuzz.workingset");
    if let Ok(pages) = decode(bytes, path) {
        assert!(pages.len() as u64 <= MAX_PAGES);
        // The same length as the writer's (the reserved field aside) and a
        // list that survives its own round trip.
        assert_eq!(encode(&pages).len(), bytes.len());
        assert_eq!(decode(&encode(&pages), path).expect("own encoding"), pages);
    }
});
