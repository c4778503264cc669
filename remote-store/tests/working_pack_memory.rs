//! A snapshot's working-set pack through an in-memory object store
//! (object_store's own `InMemory`): the upload lays out the pages a lazy
//! restore fetches before the copy resumes (pool's `pages_before_resume`)
//! in `wspacks/`; a lazy source reads all of them from there in reads of
//! contiguous slots, nothing unneeded; told not to
//! (`THAW_LAZY_WORKING_PACK=0`), or for a snapshot uploaded without one
//! (`THAW_STORE_WORKING_PACK=0`), it reads the same pages from the shared
//! packs; a damaged working-set pack fails the fetch naming it. The same
//! with restores against a real Garage: server/tests/remote_lazy.rs.
//! Needs root (ptrace) and python3.

mod support;

use support::{capture, local, skip};

use std::sync::Arc;

use object_store::ObjectStore;
use pool::restore::page_source::{pages_before_resume, PageSource};
use remote_store::{open_lazy, push_snapshot, seal, LazyReport, RemoteStore, StoreKey};
use snapshotter::snapshot::{load_snapshot, DIR_SNAPSHOT_ID};
use snapshotter::store::{PageHash, PAGE_SIZE};

/// Opens `remote_id` lazily and fetches `pages` in one call of its source.
async fn fetch(
    remote: &Arc<RemoteStore>,
    remote_id: &str,
    pages: &[PageHash],
) -> (Result<Vec<u8>, String>, LazyReport) {
    let lazy = open_lazy(remote.clone(), remote_id, "local", None)
        .await
        .unwrap();
    let source = lazy.source.clone();
    let wanted = pages.to_vec();
    let got = tokio::task::spawn_blocking(move || source.fetch(&wanted))
        .await
        .unwrap()
        .map_err(|e| anyhow_chain(&e));
    (got, lazy.source.report())
}

/// The error and its sources, one line.
fn anyhow_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pages_before_the_resume_come_from_the_working_set_pack() {
    if !nix::unistd::geteuid().is_root() {
        return skip("capturing a process needs root (ptrace)");
    }
    if !std::path::Path::new("/usr/bin/python3").exists() {
        return skip("/usr/bin/python3 is missing");
    }
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a");
    capture(&a, 3);
    let snapshot = load_snapshot(&a, DIR_SNAPSHOT_ID).unwrap();
    let early = pages_before_resume(&snapshot, &[]);
    assert!(!early.is_empty(), "stacks at least");

    let bucket = Arc::new(object_store::memory::InMemory::new());
    let key = StoreKey::generate();
    let remote = Arc::new(RemoteStore::with_client(
        "s3://mem/x".parse().unwrap(),
        &key,
        bucket.clone(),
    ));
    let pushed = push_snapshot(&remote, &local(&a), "py").await.unwrap();
    assert_eq!(pushed.working_pack_pages, early.len() as u64, "{pushed:?}");
    assert!(pushed.working_packs_sent >= 1, "{pushed:?}");
    let again = push_snapshot(&remote, &local(&a), "py").await.unwrap();
    assert_eq!(again.working_packs_sent, 0, "{again:?}");
    assert_eq!(again.objects_sent, 0, "{again:?}");

    // Every page from the working-set pack: reads of up to 256 contiguous
    // slots, no unneeded slot.
    let (got, report) = fetch(&remote, "py", &early).await;
    let bytes = got.unwrap();
    for (page, hash) in bytes.chunks(PAGE_SIZE).zip(&early) {
        assert_eq!(PageHash::of(page), *hash);
    }
    println!("from the working-set pack: {report:?}");
    assert_eq!(report.working_pack_pages, early.len() as u64);
    assert_eq!(report.pages_fetched, early.len() as u64);
    assert_eq!(report.bytes_fetched, early.len() as u64 * seal::SLOT_LEN);
    let n = early.len() as u64;
    assert!(
        report.ranges <= n.div_ceil(256) + n.div_ceil(1024),
        "{report:?}"
    );

    // The old arm reads the same pages from the shared packs.
    std::env::set_var("THAW_LAZY_WORKING_PACK", "0");
    let (old, report) = fetch(&remote, "py", &early).await;
    std::env::remove_var("THAW_LAZY_WORKING_PACK");
    assert_eq!(old.unwrap(), bytes);
    println!("from the shared packs: {report:?}");
    assert_eq!(report.working_pack_pages, 0);

    // A snapshot uploaded without one (as before 2026-12-07).
    std::env::set_var("THAW_STORE_WORKING_PACK", "0");
    let pushed = push_snapshot(&remote, &local(&a), "py-old").await.unwrap();
    std::env::remove_var("THAW_STORE_WORKING_PACK");
    assert_eq!(pushed.working_pack_pages, 0);
    let (old, report) = fetch(&remote, "py-old", &early).await;
    assert_eq!(old.unwrap(), bytes);
    assert_eq!(report.working_pack_pages, 0);

    // A damaged working-set pack fails the fetch, naming it.
    let listed: Vec<object_store::ObjectMeta> = {
        use futures_util::TryStreamExt;
        bucket
            .list(Some(&object_store::path::Path::from("x/wspacks")))
            .try_collect()
            .await
            .unwrap()
    };
    assert_eq!(listed.len() as u64, early.len().div_ceil(1024) as u64);
    for meta in &listed {
        let mut pack = bucket
            .get(&meta.location)
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap()
            .to_vec();
        let mut slot = 0;
        while seal::slot_range(slot, slot + 1).end as usize <= pack.len() {
            pack[seal::slot_range(slot, slot + 1).start as usize + 100] ^= 0x55;
            slot += 1;
        }
        bucket.put(&meta.location, pack.into()).await.unwrap();
    }
    let (damaged, _) = fetch(&remote, "py", &early).await;
    let err = damaged.unwrap_err();
    assert!(
        err.contains("s3://mem/x/wspacks/") && err.contains("does not decrypt with this store key"),
        "{err}"
    );
}

/// A lazy image takes each page its node's store holds from there when a
/// fetch needs it, pages the store got after the image was made included
/// (a spare's image made before another snapshot's completion brought
/// shared pages): the source fetches only the others, reading the
/// working-set pack across the slots the node holds (as few reads as the
/// whole pack), and every page needed before the resume is in the image,
/// the snapshot's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lazy_image_takes_the_pages_its_store_got_after_it_was_made() {
    use pool::restore::page_source::LazyPages;
    use snapshotter::store::{PageSlot, PageStore};
    use std::os::unix::fs::FileExt;

    if !nix::unistd::geteuid().is_root() {
        return skip("capturing a process needs root (ptrace)");
    }
    if !std::path::Path::new("/usr/bin/python3").exists() {
        return skip("/usr/bin/python3 is missing");
    }
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a");
    capture(&a, 2);
    let snapshot = load_snapshot(&a, DIR_SNAPSHOT_ID).unwrap();
    let early = pages_before_resume(&snapshot, &[]);
    assert!(early.len() >= 4, "stacks at least: {}", early.len());
    let remote = Arc::new(RemoteStore::with_client(
        "s3://mem/x".parse().unwrap(),
        &StoreKey::generate(),
        Arc::new(object_store::memory::InMemory::new()),
    ));
    push_snapshot(&remote, &local(&a), "py").await.unwrap();

    // The node's store is empty when the image is made.
    let node = tmp.path().join("node");
    std::fs::create_dir_all(node.join("store")).unwrap();
    let store = Arc::new(PageStore::open(node.join("store")).unwrap());
    let lazy = open_lazy(remote.clone(), "py", "local", None)
        .await
        .unwrap();
    let (pages, image) = LazyPages::new(
        &snapshot,
        Some(store.clone()),
        lazy.source.clone(),
        &node,
        &[],
    )
    .unwrap();

    // Then half the pages needed before the resume reach it: runs of 4
    // of the working-set pack's slots (laid out in this order), every
    // other run.
    let captured = local(&a).store;
    let given: Vec<PageHash> = early
        .iter()
        .enumerate()
        .filter(|(k, _)| (k / 4) % 2 == 0)
        .map(|(_, h)| *h)
        .collect();
    let mut data = Vec::new();
    for hash in &given {
        data.extend_from_slice(&captured.get_loaded(hash).unwrap().unwrap());
    }
    let mut writer = store.writer().unwrap();
    writer.put_batch(&data).unwrap();
    writer.commit().unwrap();

    let pages = Arc::new(pages);
    let waiting = pages.clone();
    tokio::task::spawn_blocking(move || {
        assert!(waiting.start_fetch());
        waiting.ready()
    })
    .await
    .unwrap()
    .unwrap();
    let report = lazy.source.report();
    assert_eq!(
        report.pages_fetched,
        (early.len() - given.len()) as u64,
        "{report:?}"
    );
    // The pack read across the slots the node holds (WORKING_PACK_GAP):
    // as few reads as the whole pack, never a slot beyond it.
    let n = early.len() as u64;
    assert!(
        report.ranges <= n.div_ceil(256) + n.div_ceil(1024),
        "{report:?}"
    );
    assert!(report.bytes_fetched <= n * seal::SLOT_LEN, "{report:?}");

    // Every page needed before the resume is in the image, where the
    // layout puts it.
    let wanted: std::collections::HashSet<PageHash> = early.iter().copied().collect();
    let mut checked = std::collections::HashSet::new();
    let areas = snapshot.processes().flat_map(|(_, areas)| areas.iter());
    for (area, laid) in areas.zip(&image.layout.areas) {
        for (i, slot) in area.iter().enumerate() {
            let PageSlot::Hash(hash) = slot else { continue };
            if !wanted.contains(&hash) {
                continue;
            }
            let mut page = vec![0u8; PAGE_SIZE];
            image
                .file
                .read_exact_at(&mut page, laid.offset + (i * PAGE_SIZE) as u64)
                .unwrap();
            assert_eq!(PageHash::of(&page), hash, "page {i} of an area");
            checked.insert(hash);
        }
    }
    assert_eq!(checked, wanted);
}
