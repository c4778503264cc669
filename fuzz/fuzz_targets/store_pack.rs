//! Pack headers (`<store>/packs/pack-<id>.pack`), as `PageStore::open`
//! maps and checks them.
//!
//! Input: pack id (u32 LE), a file length (u64 LE), then the first bytes of
//! the pack. The pure header check runs with that length (a fuzz input
//! cannot be a 2^52-page file; a sparse pack on disk can); then the bytes
//! themselves are written as a real pack file and opened, and every slot the
//! opened pack claims is read.
#![no_main]

use libfuzzer_sys::fuzz_target;
use snapshotter::store::{check_pack_header, PageStore, PACK_HEADER_LEN, PAGE_SIZE};

fuzz_target!(|data: &[u8]| {
    if data.len() < 12 {
        return;
    }
    let id = u32::from_le_bytes(data[..4].try_into().unwrap());
    let claimed_len = u64::from_le_bytes(data[4..12].try_into().unwrap());
    let pack = &data[12..];
    if let Ok(count) = check_pack_header(pack, id, claimed_len) {
        assert_eq!(
            Some(claimed_len),
            count
                .checked_mul(PAGE_SIZE as u64)
                .and_then(|b| b.checked_add(PACK_HEADER_LEN))
        );
    }

    // The real file, through the store: an index naming this pack with as
    // many hashes as its header claims (capped), then open and read.
    let dir = tempfile::tempdir().expect("tempdir");
    let count = check_pack_header(pack, id, pack.len() as u64).unwrap_or(0);
    std::fs::create_dir_all(dir.path().join("packs")).unwrap();
    std::fs::create_dir_all(dir.path().join("roots")).unwrap();
    std::fs::write(dir.path().join(format!("packs/pack-{id}.pack")), pack).unwrap();
    let hashes: Vec<_> = (0..count.min(64))
        .map(|i| snapshotter::store::PageHash::of(&i.to_le_bytes()))
        .collect();
    let mut index = snapshotter::store::encode_index_header().to_vec();
    index.extend_from_slice(&snapshotter::store::encode_record(id, &hashes));
    std::fs::write(dir.path().join("index"), index).unwrap();
    let Ok(store) = PageStore::open(dir.path()) else {
        return;
    };
    for h in &hashes {
        // The hashes are made up: every read must fail verification cleanly.
        assert!(store.get(h).is_err());
        match store.get_unverified(h) {
            Ok(page) => assert_eq!(page.len(), PAGE_SIZE),
            // Only a pack whose header claims more objects than listed is
            // refused (the listing is capped at 64).
            Err(e) => assert!(count > 64, "{e}"),
        }
    }
});
