//! The page store's index (`<store>/index`): header, then checksummed
//! records, as `PageStore::open` and `refresh` read it, torn-tail and
//! corruption rules included.
//!
//! Mode byte 0: the rest is a whole index file. Any other: the same, but
//! every record whose magic and length fit gets its checksum fixed first,
//! so that mutations reach the record decoder and the tail rules.
#![no_main]

use libfuzzer_sys::fuzz_target;
use snapshotter::store::{
    check_index_header, encode_record, parse_records, Tail, INDEX_HEADER_LEN,
};

const FIXED: usize = 16;
const SUM: usize = 32;

/// Rewrites the checksum of each whole record in `log` (records start at 0).
fn fix_checksums(log: &mut [u8]) {
    let mut pos = 0usize;
    while log.len() - pos >= FIXED && log[pos..pos + 4] == *b"IREC" {
        let count = u32::from_le_bytes(log[pos + 8..pos + 12].try_into().unwrap()) as usize;
        let need = FIXED + 32 * count + SUM;
        if log.len() - pos < need {
            return;
        }
        let sum = blake3::hash(&log[pos..pos + need - SUM]);
        log[pos + need - SUM..pos + need].copy_from_slice(sum.as_bytes());
        pos += need;
    }
}

fuzz_target!(|data: &[u8]| {
    let (mode, rest) = thaw_fuzz::mode(data);
    let mut bytes = rest.to_vec();
    if check_index_header(&bytes).is_err() {
        return;
    }
    let start = INDEX_HEADER_LEN as usize;
    if mode != 0 {
        fix_checksums(&mut bytes[start..]);
    }
    let parsed = parse_records(&bytes[start..], start as u64);
    let end = bytes.len() as u64;
    assert!(parsed.good_end >= start as u64 && parsed.good_end <= end);
    // The good records take exactly the bytes up to good_end (the writer's
    // encoding of them has the same length; the reserved field is not read).
    let again: usize = parsed
        .records
        .iter()
        .map(|r| encode_record(r.pack, &r.hashes).len())
        .sum();
    assert_eq!(start + again, parsed.good_end as usize);
    match parsed.tail {
        Tail::Clean => assert_eq!(parsed.good_end, end),
        Tail::Torn { offset, len } | Tail::Corrupt { offset, len } => {
            assert_eq!(offset, parsed.good_end);
            assert_eq!(offset + len, end);
            assert!(len > 0);
        }
    }
});
