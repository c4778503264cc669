//! Push and pull of a real captured process through an in-memory object
//! store (object_store's own `InMemory`): the logic of what is sent, what
//! is fetched and what is verified, without an S3 server. The same paths
//! against a real Garage, with restores, are in server/tests/remote_store.rs.
//! Needs root (ptrace) and python3.

mod support;

use support::{capture, local, skip};

use std::sync::Arc;

use remote_store::{pull_snapshot, push_snapshot, RemoteStore, StoreKey};
use snapshotter::snapshot::{load_snapshot, DIR_SNAPSHOT_ID};
use snapshotter::store::PageStore;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_sends_only_what_is_missing_and_pull_rebuilds_the_same_snapshot() {
    if !nix::unistd::geteuid().is_root() {
        return skip("capturing a process needs root (ptrace)");
    }
    if !std::path::Path::new("/usr/bin/python3").exists() {
        return skip("/usr/bin/python3 is missing");
    }
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    capture(&a, 3);
    std::fs::write(a.join("snapshot.workingset"), b"not really a working set").unwrap();

    let bucket = Arc::new(object_store::memory::InMemory::new());
    let key = StoreKey::generate();
    let url = "s3://mem/x".parse().unwrap();
    let remote = RemoteStore::with_client(url, &key, bucket.clone());
    let first = push_snapshot(&remote, &local(&a), "py").await.unwrap();
    assert!(first.pages >= 768, "{first:?}");
    assert_eq!(first.pages_sent, first.pages);
    assert_eq!(
        first.packs_sent as usize,
        (first.pages as usize).div_ceil(256)
    );
    assert!(first.manifest_sent && first.working_set_sent);

    // A second node with the same key (a fresh index) sends nothing.
    let other = RemoteStore::with_client("s3://mem/x".parse().unwrap(), &key, bucket.clone());
    let second = push_snapshot(&other, &local(&a), "py").await.unwrap();
    assert_eq!(second.pages_in_bucket, first.pages);
    assert_eq!(
        (second.pages_sent, second.objects_sent, second.bytes_sent),
        (0, 0, 0)
    );
    assert!(!second.manifest_sent && !second.working_set_sent);

    let pulled = pull_snapshot(&other, "py", &local(&b)).await.unwrap();
    assert_eq!(pulled.pages_fetched, first.pages);
    assert!(pulled.working_set);
    assert!(pulled.ranges <= first.packs_sent, "{pulled:?}");
    let (sa, sb) = (
        load_snapshot(&a, DIR_SNAPSHOT_ID).unwrap(),
        load_snapshot(&b, DIR_SNAPSHOT_ID).unwrap(),
    );
    assert_eq!(sa, sb);
    let store_b = PageStore::open(b.join("store")).unwrap();
    let report = store_b.verify().unwrap();
    assert!(report.is_ok());
    assert_eq!(report.objects_checked, first.pages);
    assert_eq!(
        store_b.load_root(DIR_SNAPSHOT_ID).unwrap().areas,
        PageStore::open(a.join("store"))
            .unwrap()
            .load_root(DIR_SNAPSHOT_ID)
            .unwrap()
            .areas
    );
    assert_eq!(
        std::fs::read(b.join("snapshot.workingset")).unwrap(),
        b"not really a working set"
    );

    // A pull into a store that has everything fetches no page.
    let again = pull_snapshot(&other, "py", &local(&b)).await.unwrap();
    assert_eq!((again.pages_local, again.pages_fetched), (first.pages, 0));

    // Another key reads nothing.
    let stranger =
        RemoteStore::with_client("s3://mem/x".parse().unwrap(), &StoreKey::generate(), bucket);
    let err = pull_snapshot(&stranger, "py", &local(&tmp.path().join("c")))
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "snapshot py is not in s3://mem/x");
}
