//! Gc and commits in one process while another process keeps reading a live
//! snapshot and its image: the reader never sees an error or a wrong byte.
//!
//! The reader is this test binary re-run as a child (`store_reader_child`).

use std::path::Path;
use std::process::{Command, Stdio};

use snapshotter::store::{AreaPages, PageStore, ReadError, PAGE_SIZE};

const CHILD_DIR_ENV: &str = "THAW_STORE_READER_DIR";

/// A page that names its own seed in its first 8 bytes, so a reader can
/// check any page it sees without knowing which snapshot version it reads.
fn page(seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(PAGE_SIZE);
    out.extend_from_slice(&seed.to_le_bytes());
    while out.len() < PAGE_SIZE {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out
}

fn check_page(bytes: &[u8]) {
    let seed = u64::from_le_bytes(bytes[..8].try_into().unwrap());
    assert!(bytes == page(seed), "page claiming seed {seed} is wrong");
}

/// Pages `1..=100` in every version of `keep`.
const SHARED: std::ops::Range<u64> = 1..101;

/// The child: reads snapshot `keep` (pages and image) until `stop` appears.
fn reader(dir: &Path) {
    let store = PageStore::open(dir).unwrap();
    let mut rounds = 0u64;
    let mut replaced = 0u64;
    while !dir.join("stop").exists() {
        // Through the image, as an mmap restore does.
        let image = store.image("keep").unwrap();
        // SAFETY: published images are never modified (gc only unlinks them).
        let map = unsafe { memmap2::Mmap::map(&image.file) }.unwrap();
        assert_eq!(map.len() as u64, image.layout.size);
        assert_eq!(map.len(), 200 * PAGE_SIZE);
        map.chunks_exact(PAGE_SIZE).for_each(check_page);
        // Page by page from the store, as a page server does.
        let root = store.load_root("keep").unwrap();
        for h in root.areas[0].hashes() {
            match store.get(h) {
                Ok(p) => check_page(&p),
                Err(ReadError::NotFound { .. }) => {
                    // Only if `keep` was replaced and gc freed the old pages.
                    assert_ne!(store.load_root("keep").unwrap(), root);
                    replaced += 1;
                    break;
                }
                Err(e) => panic!("{e}"),
            }
        }
        rounds += 1;
    }
    println!("reader rounds: {rounds}, {replaced} raced with a replacement");
    assert!(rounds > 0);
}

/// Stores `keep` = SHARED + 100 pages of this round, plus 100 pages nobody
/// references, all in one pack: gc must move this round's live pages.
fn new_version(store: &PageStore, round: u64) {
    let live = 1000 * (round + 1)..1000 * (round + 1) + 100;
    let dead = 500_000 + 1000 * round..500_000 + 1000 * round + 100;
    let mut w = store.writer().unwrap();
    let data: Vec<u8> = SHARED.chain(live).flat_map(page).collect();
    let area = AreaPages::from_refs(&w.put_batch(&data).unwrap());
    let junk: Vec<u8> = dead.flat_map(page).collect();
    w.put_batch(&junk).unwrap();
    w.commit_snapshot("keep", &[area]).unwrap();
}

#[test]
fn store_reader_child() {
    if let Some(dir) = std::env::var_os(CHILD_DIR_ENV) {
        reader(Path::new(&dir));
    }
}

#[test]
fn readers_in_other_processes_survive_gc_and_commits() {
    let dir = tempfile::tempdir().unwrap();
    let store = PageStore::open(dir.path()).unwrap();
    new_version(&store, 0);
    store.gc().unwrap();
    // Stops the reader even if an assertion below fails.
    struct Stop<'a>(&'a Path);
    impl Drop for Stop<'_> {
        fn drop(&mut self) {
            let _ = std::fs::write(self.0.join("stop"), b"");
        }
    }
    let stop = Stop(dir.path());
    let child = Command::new(std::env::current_exe().unwrap())
        .args([
            "store_reader_child",
            "--exact",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(CHILD_DIR_ENV, dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut moved = 0;
    for round in 1..40u64 {
        new_version(&store, round);
        let report = store.gc().unwrap();
        // The previous version's own pages and this round's junk.
        assert_eq!(report.objects_freed, 200, "round {round}");
        moved += report.objects_moved;
    }
    drop(stop);
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "reader failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary = stdout
        .lines()
        .find_map(|l| l.split_once("reader rounds: ").map(|(_, r)| r));
    eprintln!("{summary:?}, gc moved {moved} live objects");
    assert!(summary.is_some(), "{stdout}");
    assert!(moved >= 39 * 100);
    store.verify().unwrap();
    assert_eq!(store.object_count(), 200);
}
