//! The bucket's gc (`RemoteStore::gc`) through an in-memory object store:
//! two captured python3 processes pushed as `a` and `b`, a stray pack
//! without its index; with only `b` live the gc deletes `a`'s snapshot, its
//! working set, its working-set pack and the packs only it used, and the
//! stray pack, keeps every
//! pack `b` needs (`b` still pulls whole and verifies), and a dry run or a
//! long grace deletes nothing. The same against a real Garage and servers is
//! in server/tests/cache_gc.rs. Needs root (ptrace) and python3.

mod support;

use support::{capture, local, skip};

use std::sync::Arc;
use std::time::Duration;

use object_store::ObjectStore;
use remote_store::{pull_snapshot, push_snapshot, GcOptions, Kind, Live, RemoteStore, StoreKey};
use snapshotter::store::PageStore;

async fn count(remote: &RemoteStore, kind: Kind) -> usize {
    remote.list(kind).await.unwrap().len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_deletes_what_no_live_snapshot_needs_and_keeps_the_rest() {
    if !nix::unistd::geteuid().is_root() {
        return skip("capturing a process needs root (ptrace)");
    }
    if !std::path::Path::new("/usr/bin/python3").exists() {
        return skip("/usr/bin/python3 is missing");
    }
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    capture(&a, 2);
    capture(&b, 2);
    std::fs::write(a.join("snapshot.workingset"), b"a's working set").unwrap();

    let bucket = Arc::new(object_store::memory::InMemory::new());
    let key = StoreKey::generate();
    let remote = RemoteStore::with_client("s3://mem/x".parse().unwrap(), &key, bucket.clone());
    let pa = push_snapshot(&remote, &local(&a), "a").await.unwrap();
    let pb = push_snapshot(&remote, &local(&b), "b").await.unwrap();
    assert!(pa.working_set_sent);
    // Each has a working-set pack (its stacks, the pages the page server
    // does not fill: what a lazy restore fetches before the resume).
    assert!(
        pa.working_packs_sent >= 1 && pb.working_packs_sent >= 1,
        "{pa:?} {pb:?}"
    );
    assert_eq!(
        count(&remote, Kind::WorkingPack).await as u64,
        pa.working_packs_sent + pb.working_packs_sent
    );
    // A pack a killed upload left without its index.
    bucket
        .put(
            &object_store::path::Path::from(format!("x/packs/{}", "ab".repeat(32))),
            vec![7u8; 4096].into(),
        )
        .await
        .unwrap();
    let packs_before = count(&remote, Kind::Pack).await;
    assert_eq!(
        packs_before as u64,
        pa.packs_sent + pb.packs_sent + 1,
        "{pa:?} {pb:?}"
    );
    assert_eq!(remote.status().await.unwrap().uncommitted_packs, 1);

    let live = Live {
        snapshots: vec!["b".into()],
        ..Live::default()
    };
    let before = all_objects(&remote).await;

    // A long grace: everything is young, nothing goes.
    let kept = remote
        .gc(
            &live,
            GcOptions {
                grace: Duration::from_secs(3600),
                dry_run: false,
            },
        )
        .await
        .unwrap();
    assert!(kept.deleted.is_empty(), "{kept:?}");
    assert!(kept.young_kept >= 3, "{kept:?}");
    assert_eq!(all_objects(&remote).await, before);

    // A dry run says what would go and deletes nothing.
    let dry = remote
        .gc(
            &live,
            GcOptions {
                grace: Duration::ZERO,
                dry_run: true,
            },
        )
        .await
        .unwrap();
    assert!(dry.dry_run && !dry.deleted.is_empty());
    assert_eq!(all_objects(&remote).await, before);

    let done = remote
        .gc(
            &live,
            GcOptions {
                grace: Duration::ZERO,
                dry_run: false,
            },
        )
        .await
        .unwrap();
    assert_eq!(done.deleted, dry.deleted, "the dry run named the same");
    assert_eq!(done.deleted_of(Kind::Snapshot), 1);
    assert_eq!(done.deleted_of(Kind::WorkingSet), 1);
    // a's working-set pack went with it, b's stays.
    assert_eq!(
        done.deleted_of(Kind::WorkingPack) as u64,
        pa.working_packs_sent
    );
    assert_eq!(
        count(&remote, Kind::WorkingPack).await as u64,
        pb.working_packs_sent
    );
    // a's own packs (its random bytes) and the stray one; every pack
    // deleted had its index deleted too, except the stray one.
    assert!(done.deleted_of(Kind::Pack) >= 2, "{done:?}");
    assert_eq!(
        done.deleted_of(Kind::PackIndex) + 1,
        done.deleted_of(Kind::Pack)
    );
    assert_eq!(
        done.bytes_freed,
        done.deleted.iter().map(|c| c.bytes).sum::<u64>()
    );
    assert_eq!(
        count(&remote, Kind::Pack).await,
        packs_before - done.deleted_of(Kind::Pack)
    );
    let status = remote.status().await.unwrap();
    assert_eq!(status.uncommitted_packs, 0);
    assert!(!remote.snapshot_status("a").await.unwrap().present);
    let sb = remote.snapshot_status("b").await.unwrap();
    assert!(sb.present && sb.pages_missing == 0, "{sb:?}");

    // b is whole: a fresh node pulls and verifies it.
    let other = RemoteStore::with_client("s3://mem/x".parse().unwrap(), &key, bucket.clone());
    let c = tmp.path().join("c");
    let pulled = pull_snapshot(&other, "b", &local(&c)).await.unwrap();
    assert_eq!(pulled.pages_fetched, pb.pages);
    assert!(PageStore::open(c.join("store"))
        .unwrap()
        .verify()
        .unwrap()
        .is_ok());

    // After the gc this process's index was forgotten: pushing a again
    // sends its pages again instead of naming deleted packs.
    let again = push_snapshot(&remote, &local(&a), "a").await.unwrap();
    assert!(again.pages_sent > 0, "{again:?}");
    let sa = remote.snapshot_status("a").await.unwrap();
    assert!(sa.present && sa.pages_missing == 0, "{sa:?}");
}

async fn all_objects(remote: &RemoteStore) -> Vec<remote_store::Listed> {
    let mut all = Vec::new();
    for kind in Kind::ALL {
        all.extend(remote.list(kind).await.unwrap());
    }
    all.sort_by(|x, y| x.name.cmp(&y.name));
    all
}
