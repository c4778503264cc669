//! `thaw serve --store-url`: a deployed version's snapshot, code and record
//! reach the shared store (a private Garage, test-support/garage.rs) in the
//! background, and another data directory can pull the snapshot from it.
//! Needs root (sandboxes) and the garage binary (`./dev.sh s3`).

mod common;
#[path = "../../test-support/garage.rs"]
mod garage;

use std::time::{Duration, Instant};

use common::{function, Server};
use garage::{Garage, BUCKET};
use remote_store::{Kind, RemoteStore, StoreKey};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_captured_version_is_uploaded_with_its_code_and_record() {
    require_root!();
    let g = match Garage::start() {
        Ok(g) => g,
        Err(why) => skip!("{why}"),
    };
    let key = StoreKey::generate();
    let key_file = g.dir().join("store.key");
    std::fs::write(&key_file, key.to_hex()).unwrap();
    for (k, v) in g.env() {
        // This test binary runs this one test: the server inherits these.
        std::env::set_var(k, v);
    }
    std::env::remove_var("THAW_STORE_KEY");
    let url = format!("s3://{BUCKET}/srv");
    // The writer uploads; a node without --store-writer follows it
    // (tests/cluster.rs).
    let server = Server::start(&[
        "--store-writer",
        "--store-url",
        &url,
        "--store-key-file",
        key_file.to_str().unwrap(),
    ]);
    let v = server
        .deploy_ready(function(
            "up",
            "STATE = {'n': 41}\ndef handler(event, context):\n    STATE['n'] += 1\n    return STATE['n']\n",
            serde_json::json!({}),
        ))
        .await;
    assert_eq!(v["state"], "ready", "{v}");
    let snapshot = v["snapshot"]["id"]
        .as_str()
        .expect("a snapshot")
        .to_string();

    // The upload runs in the background: the metric says when it is done.
    let t0 = Instant::now();
    loop {
        let metrics = server.get("/metrics").await.text();
        if metrics.contains("thaw_remote_uploads_total{result=\"ok\"} 1") {
            break;
        }
        assert!(
            !metrics.contains("thaw_remote_uploads_total{result=\"error\"}"),
            "the upload failed: {metrics}"
        );
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "no upload: {metrics}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let remote = RemoteStore::from_env(url.parse().unwrap(), &key).unwrap();
    let status = remote.snapshot_status(&snapshot).await.unwrap();
    assert!(status.present && status.pages > 0, "{status:?}");
    assert_eq!(status.pages_missing, 0, "{status:?}");
    let record = remote
        .get_blob(Kind::Function, b"up")
        .await
        .unwrap()
        .expect("the record");
    let record: serde_json::Value = serde_json::from_slice(&record).unwrap();
    assert_eq!(record["name"], "up");
    assert_eq!(record["versions"][0]["snapshot"]["id"], snapshot.as_str());
    let uid = record["versions"][0]["uid"].as_u64().unwrap();
    let tar = remote
        .get_blob(
            Kind::Code,
            server::remote::code_address("up", 1, uid).as_bytes(),
        )
        .await
        .unwrap()
        .expect("the code");
    let mut archive = tar::Archive::new(tar.as_slice());
    let names: Vec<String> = archive
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().display().to_string())
        .collect();
    assert!(names.iter().any(|n| n.ends_with("main.py")), "{names:?}");

    // An upload cut short (here: the manifest deleted from the bucket) is
    // finished when the server starts again.
    let mut server = server;
    server.stop();
    let s3 = object_store::aws::AmazonS3Builder::from_env()
        .with_bucket_name(BUCKET)
        .build()
        .unwrap();
    let manifest = remote.object_path(
        Kind::Snapshot,
        &remote.name(Kind::Snapshot, snapshot.as_bytes()),
    );
    object_store::ObjectStore::delete(&s3, &manifest.as_str().into())
        .await
        .unwrap();
    let remote = RemoteStore::from_env(url.parse().unwrap(), &key).unwrap();
    assert!(!remote.snapshot_status(&snapshot).await.unwrap().present);
    server.spawn();
    let t0 = Instant::now();
    while !remote.snapshot_status(&snapshot).await.unwrap().present {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "not uploaded after the restart"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let metrics = server.get("/metrics").await.text();
    assert!(metrics.contains("thaw_remote_sent_bytes"), "{metrics}");

    // Another node's data directory gets the snapshot whole.
    let other = tempfile::tempdir().unwrap();
    let local = server::remote::local_snapshot(
        std::sync::Arc::new(
            snapshotter::store::PageStore::open(other.path().join("store")).unwrap(),
        ),
        &other.path().join("snapshots"),
        &snapshot,
    );
    let pulled = remote_store::pull_snapshot(&remote, &snapshot, &local)
        .await
        .unwrap();
    assert_eq!(pulled.pages_fetched, status.pages);
    assert!(local.store.verify().unwrap().is_ok());
}
