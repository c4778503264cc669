//! Page store end to end on real files: dedup, verified reads, corruption
//! detection, gc, images, several handles and writers at once.

use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;

use snapshotter::store::{
    AreaPages, BadObjectKind, PageHash, PageRef, PageStore, PutError, ReadError, VerifyError,
    PAGE_SIZE,
};

/// A page of pseudo-random bytes determined by `seed`.
fn page(seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(PAGE_SIZE);
    while out.len() < PAGE_SIZE {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out
}

/// Pages for `seeds`, where seed 0 means a zero page.
fn pages(seeds: &[u64]) -> Vec<u8> {
    seeds
        .iter()
        .flat_map(|&s| if s == 0 { vec![0; PAGE_SIZE] } else { page(s) })
        .collect()
}

/// Stores `seeds` as one area of snapshot `id`; returns the page list.
fn snapshot(store: &PageStore, id: &str, seeds: &[u64]) -> AreaPages {
    let mut w = store.writer().unwrap();
    let refs = w.put_batch(&pages(seeds)).unwrap();
    let area = AreaPages::from_refs(&refs);
    w.commit_snapshot(id, std::slice::from_ref(&area)).unwrap();
    area
}

fn flip_byte(path: &Path, offset: u64) {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, offset).unwrap();
    b[0] ^= 0x40;
    f.write_all_at(&b, offset).unwrap();
}

#[test]
fn storing_the_same_pages_twice_adds_no_objects() {
    let dir = tempfile::tempdir().unwrap();
    let store = PageStore::open(dir.path()).unwrap();
    // 100 distinct pages, 20 zero pages, 30 repeats inside the batch.
    let mut seeds: Vec<u64> = (1..=100).collect();
    seeds.extend(std::iter::repeat_n(0, 20));
    seeds.extend(1..=30);
    let mut w = store.writer().unwrap();
    let refs = w.put_batch(&pages(&seeds)).unwrap();
    assert_eq!(refs.len(), 150);
    assert_eq!(refs[100], PageRef::Zero);
    assert_eq!(refs[0], refs[120]);
    let area = AreaPages::from_refs(&refs);
    let first = w.commit_snapshot("a", std::slice::from_ref(&area)).unwrap();
    assert_eq!(first.new_objects, 100);
    assert_eq!(first.zero_pages, 20);
    assert_eq!(first.duplicate_pages, 30);
    assert_eq!(store.object_count(), 100);
    let packs = store.pack_ids();
    assert_eq!(packs.len(), 1);

    // Again, from another handle, in two batches.
    let other = PageStore::open(dir.path()).unwrap();
    let mut w = other.writer().unwrap();
    let mut refs2 = w.put_batch(&pages(&seeds[..75])).unwrap();
    refs2.extend(w.put_batch(&pages(&seeds[75..])).unwrap());
    assert_eq!(refs2, refs);
    let second = w
        .commit_snapshot("b", &[AreaPages::from_refs(&refs2)])
        .unwrap();
    assert_eq!(second.new_objects, 0);
    assert_eq!(second.pack, None);
    assert_eq!(other.object_count(), 100);
    assert_eq!(other.pack_ids(), packs);
    let n_files = std::fs::read_dir(dir.path().join("packs")).unwrap().count();
    assert_eq!(n_files, 1);

    let stats = other.stats().unwrap();
    assert_eq!(stats.objects, 100);
    assert_eq!(stats.snapshots, 2);
    assert_eq!(stats.stored_bytes, 100 * 4096);
    assert_eq!(stats.logical_bytes, 2 * 130 * 4096);
    assert_eq!(stats.zero_pages, 40);
    assert!((stats.dedup_ratio - 2.6).abs() < 1e-9, "{stats:?}");
    assert!(other.verify().unwrap().is_ok());
}

#[test]
fn reads_return_the_stored_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let store = PageStore::open(dir.path()).unwrap();
    let area = snapshot(&store, "s", &[5, 0, 6, 7]);
    let hashes: Vec<PageHash> = area.hashes().copied().collect();
    assert_eq!(hashes.len(), 3);
    assert_eq!(store.verify_snapshot("s").unwrap(), 3);
    for (h, seed) in hashes.iter().zip([5, 6, 7]) {
        assert_eq!(&store.get(h).unwrap()[..], &page(seed)[..]);
        assert_eq!(*h, PageHash::of(&page(seed)));
    }
    let absent = PageHash::of(&page(99));
    let err = store.get(&absent).unwrap_err();
    assert!(matches!(err, ReadError::NotFound { .. }));
    assert_eq!(
        err.to_string(),
        format!("object {absent} is not in the store")
    );
    // Objects sit page-aligned in the pack.
    let (_, offset) = store.locate(&hashes[0]).unwrap();
    assert_eq!(offset % PAGE_SIZE as u64, 0);
}

#[test]
fn bad_input_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = PageStore::open(dir.path()).unwrap();
    let mut w = store.writer().unwrap();
    let err = w.put_batch(&[1u8; 100]).unwrap_err();
    assert!(matches!(err, PutError::NotPageMultiple(100)));
    let stranger = PageHash::of(b"never stored");
    let mut area = AreaPages::new();
    area.push_hash(stranger);
    let err = w.commit_snapshot("x", &[area]).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("snapshot x references object {stranger}, which is not in the store")
    );
    let w = store.writer().unwrap();
    let err = w.commit_snapshot("../evil", &[]).unwrap_err();
    assert!(err.to_string().contains("invalid snapshot id"), "{err}");
    assert!(store.snapshot_ids().unwrap().is_empty());
}

#[test]
fn a_flipped_byte_fails_verify_and_reads_naming_the_object() {
    let dir = tempfile::tempdir().unwrap();
    let store = PageStore::open(dir.path()).unwrap();
    let mut w = store.writer().unwrap();
    let area = AreaPages::from_refs(&w.put_batch(&pages(&[11, 12, 13])).unwrap());
    // A page in the same pack that no root keeps: gc must rewrite the pack.
    w.put_batch(&page(14)).unwrap();
    w.commit_snapshot("s", std::slice::from_ref(&area)).unwrap();
    let victim = *area.hashes().nth(1).unwrap();
    let (pack, offset) = store.locate(&victim).unwrap();
    flip_byte(&pack, offset + 1234);

    // A fresh handle, and the one that had the pack mapped already.
    for s in [PageStore::open(dir.path()).unwrap(), store] {
        let err = s.get(&victim).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, ReadError::Corrupt { .. }), "{msg}");
        assert!(
            msg.starts_with(&format!("object {victim} in {}", pack.display())),
            "{msg}"
        );
        assert!(
            msg.contains(&format!("at offset {offset} is corrupt")),
            "{msg}"
        );
        // Its neighbours are fine.
        for h in area.hashes().filter(|h| **h != victim) {
            s.get(h).unwrap();
        }
        let err = s.verify().unwrap_err();
        let VerifyError::Corrupt(report) = &err else {
            panic!("{err}")
        };
        assert_eq!(report.bad_objects.len(), 1);
        assert_eq!(report.bad_objects[0].hash, victim);
        assert_eq!(report.bad_objects[0].offset, offset);
        assert!(matches!(
            report.bad_objects[0].kind,
            BadObjectKind::Mismatch { .. }
        ));
        assert!(err.to_string().contains(&victim.to_string()), "{err}");
        // So does checking the snapshot that uses it.
        let err = s.verify_snapshot("s").unwrap_err().to_string();
        assert!(err.contains(&victim.to_string()), "{err}");
        // An image needing it cannot be built, and says why.
        let err = s.image("s").unwrap_err().to_string();
        assert!(err.contains(&victim.to_string()), "{err}");
        // gc refuses to copy a corrupt live object, and frees nothing.
        let err = s.gc().unwrap_err().to_string();
        assert!(err.starts_with("gc aborted: object"), "{err}");
        assert!(err.contains(&victim.to_string()), "{err}");
        assert_eq!(s.object_count(), 4);
    }
}

#[test]
fn a_missing_pack_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let store = PageStore::open(dir.path()).unwrap();
    let area = snapshot(&store, "s", &[21, 22]);
    let h = *area.hashes().next().unwrap();
    let (pack, _) = store.locate(&h).unwrap();
    std::fs::remove_file(&pack).unwrap();
    let fresh = PageStore::open(dir.path()).unwrap();
    let err = fresh.get(&h).unwrap_err();
    assert!(matches!(err, ReadError::PackUnavailable { .. }), "{err}");
    assert!(err.to_string().contains(&h.to_string()), "{err}");
    let err = fresh.verify().unwrap_err();
    assert!(err.to_string().contains("2 bad object(s)"), "{err}");
}

#[test]
fn gc_frees_what_no_snapshot_references() {
    let dir = tempfile::tempdir().unwrap();
    let store = PageStore::open(dir.path()).unwrap();
    let a = snapshot(&store, "a", &[1, 2, 3, 4, 100, 101]); // 100, 101 shared
    let b = snapshot(&store, "b", &[5, 6, 100, 101, 0]);
    assert_eq!(store.object_count(), 8);

    // A restore of `a` in progress: its image is open and mapped.
    let image_a = store.image("a").unwrap();
    assert!(image_a.built);
    // SAFETY: the image is never modified once published (gc only unlinks it).
    let map_a = unsafe { memmap2::Mmap::map(&image_a.file) }.unwrap();
    // A reader handle that has the packs mapped.
    let reader = PageStore::open(dir.path()).unwrap();

    assert!(store.remove_snapshot("a").unwrap());
    assert!(!store.remove_snapshot("a").unwrap());
    let report = store.gc().unwrap();
    assert_eq!(report.roots, 1);
    assert_eq!(report.objects_freed, 4);
    assert_eq!(report.live_objects, 4);
    assert_eq!(report.objects_moved, 2);
    assert_eq!(report.images_removed, 1);
    assert_eq!(report.bytes_freed, 4 * 4096);
    assert!(!image_a.path.exists());
    assert_eq!(store.object_count(), 4);
    store.verify().unwrap();

    // The running restore still reads its memory.
    assert_eq!(&map_a[..PAGE_SIZE], &page(1)[..]);
    assert_eq!(&map_a[5 * PAGE_SIZE..], &page(101)[..]);
    // The old reader still serves from its mapped (now deleted) packs...
    for h in a.hashes() {
        reader.get(h).unwrap();
    }
    // ...and after a refresh sees the new index.
    reader.refresh().unwrap();
    assert_eq!(reader.object_count(), 4);
    for h in b.hashes() {
        reader.get(h).unwrap();
    }
    assert!(matches!(
        reader.get(a.hashes().next().unwrap()),
        Err(ReadError::NotFound { .. })
    ));

    // Replacing b's snapshot frees the pages only the old version had.
    snapshot(&store, "b", &[5, 7]);
    let report = store.gc().unwrap();
    assert_eq!(report.objects_freed, 3); // 6, 100, 101
    assert_eq!(store.object_count(), 2);
    store.verify().unwrap();
    // Nothing to do: gc leaves the packs alone.
    let packs = store.pack_ids();
    let report = store.gc().unwrap();
    assert_eq!(report.objects_freed, 0);
    assert!(report.packs_rewritten.is_empty());
    assert_eq!(store.pack_ids(), packs);

    // Deleting everything empties the store.
    store.remove_snapshot("b").unwrap();
    store.gc().unwrap();
    assert_eq!(store.object_count(), 0);
    assert_eq!(
        std::fs::read_dir(dir.path().join("packs")).unwrap().count(),
        0
    );
    assert_eq!(store.stats().unwrap().objects, 0);
}

#[test]
fn images_are_sparse_mmap_layouts_and_cached() {
    let dir = tempfile::tempdir().unwrap();
    let store = PageStore::open(dir.path()).unwrap();
    let mut w = store.writer().unwrap();
    let refs1 = w.put_batch(&pages(&[1, 0, 2])).unwrap();
    let mut area1 = AreaPages::from_refs(&refs1);
    area1.push_file(2);
    let refs2 = w.put_batch(&pages(&[0, 0, 0, 0, 3])).unwrap();
    let mut area2 = AreaPages::new();
    area2.push_zero(1000); // a large hole
    area2.extend_refs(&refs2);
    w.commit_snapshot("img", &[area1, area2]).unwrap();

    let img = store.image("img").unwrap();
    assert!(img.built);
    assert_eq!(img.layout.areas.len(), 2);
    assert_eq!(img.layout.areas[0].offset, 0);
    assert_eq!(img.layout.areas[0].pages, 5);
    assert_eq!(img.layout.areas[1].offset, 5 * 4096);
    assert_eq!(img.layout.areas[1].pages, 1005);
    assert_eq!(img.layout.size, 1010 * 4096);
    let meta = img.file.metadata().unwrap();
    assert_eq!(meta.len(), 1010 * 4096);
    // Three data pages written; the rest are holes.
    assert!(meta.blocks() * 512 < 64 * 4096, "{} blocks", meta.blocks());
    let bytes = std::fs::read(&img.path).unwrap();
    let at = |p: usize| &bytes[p * PAGE_SIZE..(p + 1) * PAGE_SIZE];
    assert_eq!(at(0), &page(1)[..]);
    assert!(at(1).iter().all(|&b| b == 0));
    assert_eq!(at(2), &page(2)[..]);
    assert!(at(3).iter().all(|&b| b == 0));
    assert_eq!(at(1009), &page(3)[..]);

    let again = store.image("img").unwrap();
    assert!(!again.built);
    assert_eq!(again.path, img.path);

    // A new version of the snapshot gets a new image file; the old one is
    // untouched until gc.
    snapshot(&store, "img", &[4]);
    let v2 = store.image("img").unwrap();
    assert!(v2.built);
    assert_ne!(v2.path, img.path);
    assert_eq!(std::fs::read(&img.path).unwrap(), bytes);
    assert_eq!(std::fs::read(&v2.path).unwrap(), page(4));

    // gc keeps only the current version's image of this boot.
    let other_boot = v2
        .path
        .to_string_lossy()
        .replace(".img", "")
        .rsplit_once('.')
        .unwrap()
        .0
        .to_string()
        + ".0123456789abcdef.img";
    std::fs::copy(&v2.path, &other_boot).unwrap();
    let report = store.gc().unwrap();
    assert_eq!(report.images_removed, 2);
    assert!(!img.path.exists());
    assert!(!Path::new(&other_boot).exists());
    assert!(v2.path.exists());
}

#[test]
fn readers_see_commits_of_other_handles() {
    let dir = tempfile::tempdir().unwrap();
    let reader = PageStore::open(dir.path()).unwrap();
    let writer = PageStore::open(dir.path()).unwrap();
    let area = snapshot(&writer, "s", &[31, 32]);
    assert_eq!(reader.object_count(), 0);
    // A miss reloads the index tail.
    for (h, seed) in area.hashes().zip([31, 32]) {
        assert_eq!(&reader.get(h).unwrap()[..], &page(seed)[..]);
    }
    assert_eq!(reader.object_count(), 2);
}

#[test]
fn concurrent_writers_serialise_on_the_lock() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let path = path.clone();
            std::thread::spawn(move || {
                let store = PageStore::open(&path).unwrap();
                for round in 0..5u64 {
                    // Half the pages shared by every thread, half own.
                    let seeds: Vec<u64> = (1..=20)
                        .chain((1..=20).map(|i| 1000 * (t + 1) + 100 * round + i))
                        .collect();
                    snapshot(&store, &format!("t{t}"), &seeds);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let store = PageStore::open(&path).unwrap();
    // 20 shared + 4 threads x 5 rounds x 20 own.
    assert_eq!(store.object_count(), 20 + 4 * 5 * 20);
    store.verify().unwrap();
    let report = store.gc().unwrap();
    assert_eq!(report.objects_freed, 4 * 4 * 20);
    assert_eq!(store.object_count(), 20 + 4 * 20);
    store.verify().unwrap();
}

#[test]
fn a_lost_index_is_not_replaced_by_an_empty_one() {
    let dir = tempfile::tempdir().unwrap();
    let store = PageStore::open(dir.path()).unwrap();
    snapshot(&store, "s", &[41, 42]);
    drop(store);
    std::fs::remove_file(dir.path().join("index")).unwrap();
    let err = PageStore::open(dir.path()).unwrap_err().to_string();
    assert!(err.contains("is missing but the store has packs"), "{err}");
    assert_eq!(
        std::fs::read_dir(dir.path().join("packs")).unwrap().count(),
        1
    );
}

#[test]
fn a_corrupt_index_record_is_reported_and_never_truncated() {
    let dir = tempfile::tempdir().unwrap();
    let store = PageStore::open(dir.path()).unwrap();
    snapshot(&store, "a", &[51]);
    snapshot(&store, "b", &[52]);
    drop(store);
    // Flip a byte inside the first record: the second one is hidden behind it.
    let index = dir.path().join("index");
    flip_byte(&index, 16 + 20);
    let len = std::fs::metadata(&index).unwrap().len();
    let store = PageStore::open(dir.path()).unwrap();
    let err = store.verify().unwrap_err().to_string();
    assert!(err.contains("index corrupt at offset 16"), "{err}");
    assert!(err.contains("referenced object(s) missing"), "{err}");
    let err = store.writer().unwrap_err().to_string();
    assert!(err.contains("is corrupt at offset 16"), "{err}");
    assert!(store.gc().is_err());
    assert_eq!(std::fs::metadata(&index).unwrap().len(), len);
    // Both packs are still there for whoever repairs the index.
    assert_eq!(
        std::fs::read_dir(dir.path().join("packs")).unwrap().count(),
        2
    );
}

/// `get_loaded` answers from the index as loaded: a page another handle
/// committed since is not seen until one refresh (a lazy restore looks up
/// every page of a snapshot, most of them absent: one reload, not one per
/// miss), while `get` reloads on a miss and finds it.
#[test]
fn get_loaded_answers_from_the_loaded_index_without_reloading() {
    let dir = tempfile::tempdir().unwrap();
    let reader = PageStore::open(dir.path()).unwrap();
    let writer = PageStore::open(dir.path()).unwrap();
    snapshot(&writer, "s", &[7, 8]);
    let (seven, absent) = (PageHash::of(&page(7)), PageHash::of(&page(99)));
    assert!(reader.get_loaded(&seven).is_none(), "not reloaded");
    reader.refresh().unwrap();
    let got = reader.get_loaded(&seven).expect("in the index").unwrap();
    assert_eq!(&got[..], &page(7)[..]);
    assert!(reader.get_loaded(&absent).is_none());
    let other = PageStore::open(dir.path()).unwrap();
    snapshot(&writer, "t", &[9]);
    assert_eq!(
        &other.get(&PageHash::of(&page(9))).unwrap()[..],
        &page(9)[..]
    );
}
