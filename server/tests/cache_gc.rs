//! The shared store's gc and the local store as a cache (docs/cluster.md,
//! "Gc of the bucket"), with real `thaw serve` processes on a private
//! Garage (test-support/garage.rs):
//!
//! - gc: a writer with a short grace; a stray pack (an aborted upload's);
//!   `thaw store gc --remote --dry-run` names it and deletes nothing; a gc
//!   by hand without `--force` is refused while the writer runs; the writer
//!   collects the stray pack, and after a function is deleted its snapshot,
//!   working set, record and code; the other function's objects all remain
//!   and a fresh reader restores it.
//! - cache: a reader restarted with `--store-cache-mb` between one and two
//!   snapshots evicts the older; a cold start fetches it again and restores
//!   it; a snapshot with a running copy is not evicted; `thaw store verify`
//!   passes. The same eviction on the writer fetches back without a rebuild.
//!
//! Needs root (sandboxes) and the garage binary (`./dev.sh s3`).

mod cluster_support;
mod common;
#[path = "../../test-support/garage.rs"]
mod garage;

use std::time::{Duration, Instant};

use cluster_support::{metric, store, verify, wait_for, SERIAL};
use common::{function, Server};
use garage::BUCKET;
use remote_store::{Kind, RemoteStore};

/// A function whose answer tells when its process started: a restore
/// answers the snapshot's `born`.
fn born(name: &str) -> serde_json::Value {
    function(
        name,
        "import time\nBORN = time.time_ns()\ndef handler(event, context):\n    return {'born': BORN}\n",
        serde_json::json!({}),
    )
}

/// Whether the object of `kind` for `address` is in the bucket.
async fn has(remote: &RemoteStore, kind: Kind, address: &str) -> bool {
    let name = remote.name(kind, address.as_bytes());
    remote
        .list(kind)
        .await
        .unwrap()
        .iter()
        .any(|l| l.name == name)
}

/// The snapshot id and code address of a function's only version.
async fn version_of(server: &Server, name: &str) -> (String, String) {
    let v = server.get(&format!("/functions/{name}")).await.json();
    let snapshot = v["snapshot"]["id"].as_str().unwrap().to_string();
    // `<name>-v<N>-<uid hex>` (server/src/snapshots.rs).
    let uid = u64::from_str_radix(snapshot.rsplit('-').next().unwrap(), 16).unwrap();
    (snapshot, server::remote::code_address(name, 1, uid))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_writer_collects_what_no_function_references() {
    require_root!();
    let _serial = SERIAL.lock().await;
    let s = match store("gc") {
        Ok(s) => s,
        Err(why) => skip!("{why}"),
    };
    let a = s.server(&["--store-writer", "--store-gc-grace-secs", "8"]);
    for name in ["keep", "drop"] {
        let v = a.deploy_ready(born(name)).await;
        assert_eq!(v["state"], "ready", "{v}");
    }
    let remote = s.remote();
    let (keep_snap, keep_code) = version_of(&a, "keep").await;
    let (drop_snap, drop_code) = version_of(&a, "drop").await;
    wait_for(
        "both snapshots complete in the bucket",
        Duration::from_secs(120),
        async || {
            let k = remote.snapshot_status(&keep_snap).await.unwrap();
            let d = remote.snapshot_status(&drop_snap).await.unwrap();
            k.present && k.pages_missing == 0 && d.present && d.pages_missing == 0
        },
    )
    .await;
    wait_for(
        "both records and codes",
        Duration::from_secs(60),
        async || {
            has(&remote, Kind::Function, "keep").await
                && has(&remote, Kind::Function, "drop").await
                && has(&remote, Kind::Code, &keep_code).await
                && has(&remote, Kind::Code, &drop_code).await
        },
    )
    .await;

    // The published catalog names both snapshots (else a gc with no grace
    // would rightly count one as garbage).
    wait_for(
        "the catalog names both snapshots",
        Duration::from_secs(60),
        async || {
            let Some(c) = server::cluster::catalog::read_catalog(&remote)
                .await
                .unwrap()
            else {
                return false;
            };
            ["keep", "drop"].iter().all(|f| {
                c.functions
                    .get(*f)
                    .is_some_and(|r| r.versions.iter().all(|v| v.snapshot.is_some()))
            })
        },
    )
    .await;

    // An aborted upload's pack: no index, referenced by nothing.
    let s3 = object_store::aws::AmazonS3Builder::from_env()
        .with_bucket_name(BUCKET)
        .build()
        .unwrap();
    let stray = remote.object_path(Kind::Pack, &"5a".repeat(32));
    object_store::ObjectStore::put(&s3, &stray.as_str().into(), vec![1u8; 8192].into())
        .await
        .unwrap();
    let stray_there = async || {
        remote
            .list(Kind::Pack)
            .await
            .unwrap()
            .iter()
            .any(|l| l.name == "5a".repeat(32))
    };

    // A dry run names it and deletes nothing.
    let before = remote.status().await.unwrap();
    let (ok, out) = s.thaw_store(&["gc", "--remote", "--dry-run", "--grace-secs", "0"]);
    assert!(ok, "{out}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["dry_run"], true, "{report}");
    assert!(
        report["objects"]
            .as_array()
            .unwrap()
            .iter()
            .any(|o| o == &format!("packs/{}", "5a".repeat(32))),
        "{report}"
    );
    assert_eq!(
        report["deleted"]["snapshots"],
        serde_json::Value::Null,
        "{report}"
    );
    assert!(stray_there().await, "the dry run deleted the stray pack");
    assert_eq!(remote.status().await.unwrap().kinds, before.kinds);
    // Deleting by hand while the writer runs is refused.
    let (ok, out) = s.thaw_store(&["gc", "--remote", "--grace-secs", "0"]);
    assert!(!ok, "{out}");
    assert!(out.contains("use --dry-run"), "{out}");
    assert!(stray_there().await);

    // The writer collects it once it is older than the grace.
    wait_for(
        "the stray pack collected",
        Duration::from_secs(60),
        async || !stray_there().await,
    )
    .await;
    assert_eq!(remote.status().await.unwrap().uncommitted_packs, 0);

    // A deleted function's objects go; the other's stay.
    let r = a
        .request(reqwest::Method::DELETE, "/functions/drop", None, &[])
        .await;
    assert_eq!(r.status, 204, "{}", r.text());
    let t0 = Instant::now();
    wait_for(
        "drop's objects collected",
        Duration::from_secs(90),
        async || {
            !remote.snapshot_status(&drop_snap).await.unwrap().present
                && !has(&remote, Kind::Function, "drop").await
                && !has(&remote, Kind::Code, &drop_code).await
        },
    )
    .await;
    eprintln!(
        "drop's objects collected {:?} after its delete",
        t0.elapsed()
    );
    let k = remote.snapshot_status(&keep_snap).await.unwrap();
    assert!(k.present && k.pages_missing == 0, "{k:?}");
    assert!(has(&remote, Kind::Function, "keep").await);
    assert!(has(&remote, Kind::Code, &keep_code).await);
    let m = a.get("/metrics").await.text();
    assert!(
        m.lines()
            .any(|l| l.starts_with("thaw_remote_gc_deleted_objects_total ") && !l.ends_with(" 0")),
        "{m}"
    );

    // A fresh reader restores what is left.
    let b = s.server(&["--store-writer=false"]);
    wait_for(
        "keep restorable on B",
        Duration::from_secs(120),
        async || {
            let r = b
                .invoke_raw("keep", b"{}".to_vec(), &[("x-thaw-cold", "restore")])
                .await;
            r.status == 200 && r.header("x-thaw-start") == "restore"
        },
    )
    .await;
    let on_b = b
        .invoke_raw("keep", b"{}".to_vec(), &[("x-thaw-cold", "restore")])
        .await;
    let on_a = a
        .invoke_raw("keep", b"{}".to_vec(), &[("x-thaw-cold", "restore")])
        .await;
    assert_eq!(on_b.json()["born"], on_a.json()["born"]);
    assert_eq!(b.get("/functions/drop").await.status, 404);
}

/// A function holding 12 MiB of its own random bytes (pages no other
/// function shares), answering when its process started.
fn big(name: &str) -> serde_json::Value {
    function(
        name,
        "import os, time\nBORN = time.time_ns()\nDATA = os.urandom(12 << 20)\ndef handler(event, context):\n    return {'born': BORN, 'n': len(DATA)}\n",
        serde_json::json!({}),
    )
}

async fn forced_restore(server: &Server, name: &str) -> common::Answer {
    server
        .invoke_raw(name, b"{}".to_vec(), &[("x-thaw-cold", "restore")])
        .await
}

fn store_bytes(server: &Server) -> u64 {
    server::cluster::cache::disk_bytes(&server.data.join("store"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_capped_store_evicts_the_older_snapshot_and_fetches_it_again() {
    require_root!();
    let _serial = SERIAL.lock().await;
    let s = match store("cache") {
        Ok(s) => s,
        Err(why) => skip!("{why}"),
    };
    let a = s.server(&["--store-writer"]);
    let mut b = s.server(&["--store-writer=false"]);
    let remote = s.remote();
    let manifest = |server: &Server, id: &str| {
        snapshotter::snapshot::manifest_path(&server.data.join("snapshots"), id)
    };

    // B holds f1, then f1 and f2 (each restored once: images built).
    let mut sizes = Vec::new();
    let mut ids = Vec::new();
    for (i, name) in ["f1", "f2"].into_iter().enumerate() {
        let v = a.deploy_ready(big(name)).await;
        assert_eq!(v["state"], "ready", "{v}");
        let (id, _) = version_of(&a, name).await;
        // B restores it lazily first (cluster/fetch.rs), then completes it.
        wait_for(
            &format!("{name} on B"),
            Duration::from_secs(180),
            async || forced_restore(&b, name).await.status == 200,
        )
        .await;
        wait_for(
            &format!("{name} complete on B"),
            Duration::from_secs(180),
            async || {
                metric(&b, "thaw_remote_snapshot_fetches_total{result=\"ok\"}").await
                    >= (i + 1) as f64
            },
        )
        .await;
        let r = forced_restore(&b, name).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.header("x-thaw-start"), "restore");
        sizes.push(store_bytes(&b));
        ids.push(id);
    }
    let (one, both) = (sizes[0], sizes[1]);
    assert!(both > one + (8 << 20), "{sizes:?}");
    let born_f1 = forced_restore(&a, "f1").await.json()["born"].clone();
    assert!(remote.snapshot_status(&ids[0]).await.unwrap().present);

    // Restarted with a cap between one snapshot and two: f1, the older,
    // goes; f2 stays.
    let cap_mb = (one + (both - one) / 2) >> 20;
    b.stop();
    b.args
        .extend(["--store-cache-mb".to_string(), cap_mb.to_string()]);
    b.spawn();
    wait_for("an eviction on B", Duration::from_secs(60), async || {
        metric(&b, "thaw_store_cache_evictions_total").await >= 1.0
    })
    .await;
    assert!(!manifest(&b, &ids[0]).exists(), "f1 is still local");
    assert!(manifest(&b, &ids[1]).exists(), "f2 was evicted");
    assert!(
        store_bytes(&b) <= cap_mb << 20,
        "{} > {cap_mb} MiB",
        store_bytes(&b)
    );
    assert_eq!(
        metric(&b, "thaw_store_cache_cap_bytes").await,
        (cap_mb << 20) as f64
    );
    verify(&b.data);

    // A copy of f2 runs (idle, kept alive) ...
    let r = b.invoke("f2", serde_json::json!({})).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-thaw-start"), "restore");

    // ... while f1's cold starts fetch it again and then restore it, with
    // its snapshot's state.
    let t0 = Instant::now();
    let on_b = loop {
        let r = forced_restore(&b, "f1").await;
        if r.status == 200 && r.header("x-thaw-start") == "restore" {
            break r;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "f1 never restored on B again: {} {}",
            r.status,
            r.text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(on_b.json()["born"], born_f1);
    // That restore may have been lazy: B completes f1 locally after its
    // copy resumed (with the working set recorded at deploy, the copy can
    // answer before the completion ends).
    wait_for(
        "B completed f1 again",
        Duration::from_secs(60),
        async || manifest(&b, &ids[0]).exists(),
    )
    .await;
    // Over the cap again, but f2 has a running copy and f1 is the newest:
    // neither is evicted.
    wait_for(
        "B over its cap again",
        Duration::from_secs(60),
        async || metric(&b, "thaw_store_cache_bytes").await > (cap_mb << 20) as f64,
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(manifest(&b, &ids[1]).exists(), "f2 evicted under its copy");
    assert_eq!(metric(&b, "thaw_store_cache_evictions_total").await, 1.0);
    let r = b.invoke("f2", serde_json::json!({})).await;
    assert_eq!(r.status, 200, "{}", r.text());
    verify(&b.data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_capped_writer_evicts_an_uploaded_snapshot_and_fetches_it_back_without_a_rebuild() {
    require_root!();
    let _serial = SERIAL.lock().await;
    let s = match store("wcache") {
        Ok(s) => s,
        Err(why) => skip!("{why}"),
    };
    let mut a = s.server(&["--store-writer"]);
    let remote = s.remote();
    let mut sizes = Vec::new();
    let mut ids = Vec::new();
    let mut borns = Vec::new();
    for name in ["f1", "f2"] {
        let v = a.deploy_ready(big(name)).await;
        assert_eq!(v["state"], "ready", "{v}");
        let (id, _) = version_of(&a, name).await;
        wait_for(
            &format!("{name} uploaded"),
            Duration::from_secs(120),
            async || {
                let st = remote.snapshot_status(&id).await.unwrap();
                st.present && st.pages_missing == 0
            },
        )
        .await;
        let r = forced_restore(&a, name).await;
        assert_eq!(r.header("x-thaw-start"), "restore", "{}", r.text());
        borns.push(r.json()["born"].clone());
        sizes.push(store_bytes(&a));
        ids.push(id);
    }
    let (one, both) = (sizes[0], sizes[1]);
    assert!(both > one + (8 << 20), "{sizes:?}");
    let cap_mb = (one + (both - one) / 2) >> 20;
    a.stop();
    a.args
        .extend(["--store-cache-mb".to_string(), cap_mb.to_string()]);
    a.spawn();
    wait_for("an eviction on A", Duration::from_secs(60), async || {
        metric(&a, "thaw_store_cache_evictions_total").await >= 1.0
    })
    .await;
    let manifest = |id: &str| snapshotter::snapshot::manifest_path(&a.data.join("snapshots"), id);
    assert!(!manifest(&ids[0]).exists(), "f1 is still local");
    assert!(manifest(&ids[1]).exists());
    verify(&a.data);

    // f1 comes back from the bucket: its snapshot's state, no rebuild, the
    // same snapshot in its record.
    let t0 = Instant::now();
    let r = loop {
        let r = forced_restore(&a, "f1").await;
        if r.status == 200 && r.header("x-thaw-start") == "restore" {
            break r;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "f1 never restored on A again: {} {}",
            r.status,
            r.text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(r.json()["born"], borns[0]);
    let v = a.get("/functions/f1").await.json();
    assert_eq!(v["snapshot"]["id"], ids[0].as_str(), "{v}");
    assert_eq!(v["state"], "ready", "{v}");
    let m = a.get("/metrics").await.text();
    assert!(
        !m.lines().any(
            |l| l.starts_with("thaw_remote_uploads_total{result=\"error\"}") && !l.ends_with(" 0")
        ),
        "an upload failed: {m}"
    );
    verify(&a.data);
}
