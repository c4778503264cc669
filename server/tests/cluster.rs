//! Two thaw nodes on one shared store (docs/cluster.md): a writer A
//! (`--store-writer`) and a reader B with its own, empty data directory,
//! both real `thaw serve` processes on loopback ports, against a private
//! Garage (test-support/garage.rs).
//!
//! - acceptance 1: B answers its first forced restore of A's function from
//!   the snapshot's state, restored lazily from the store (uffd, pages
//!   fetched as needed), never booting it; once B completed the snapshot
//!   locally, later restores are local;
//! - acceptance 2: a delete on A is seen on B within 2 s, a new version on A
//!   serves on B, deploys and deletes sent to B land through A, and B
//!   without its writer answers `503 writer_unavailable`;
//! - acceptance 3 (store outage): with Garage stopped B restores what it
//!   has, boots the rest and says so in /healthz and /metrics; with Garage
//!   back the writer's uploads and B's fetches resume; `thaw store verify`
//!   passes on both nodes;
//! - lazy restore failures: the store gone before B's first cold start
//!   makes it boot (no rebuild); gone after the lazy copy resumed while it
//!   still faults, the copy is killed and the invocation answers
//!   `502 function_crashed`, and B serves on; a completion that failed
//!   while the store answers is retried in the background.
//!
//! Needs root (sandboxes) and the garage binary (`./dev.sh s3`).

mod cluster_support;
mod common;
#[path = "../../test-support/garage.rs"]
mod garage;

use std::path::Path;
use std::time::{Duration, Instant};

use cluster_support::{
    boots, first_restore, lazy_reader, lazy_restores, metric, restore, still_ready, store,
    store_on, verify, wait_for, Store, SERIAL,
};
use common::{function, Answer, Server};
use garage::BUCKET;
use remote_store::Kind;

/// A function whose answer tells its version and when its process started:
/// a restore answers the snapshot's `born`, a boot a new one.
fn born(name: &str, version: u32) -> serde_json::Value {
    function(
        name,
        &format!(
            "import time\nBORN = time.time_ns()\ndef handler(event, context):\n    return {{'born': BORN, 'v': {version}}}\n"
        ),
        serde_json::json!({}),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_follows_the_writer_and_forwards_to_it() {
    require_root!();
    let _serial = SERIAL.lock().await;
    let s = match store("follow") {
        Ok(s) => s,
        Err(why) => skip!("{why}"),
    };
    let mut a = s.writer();
    let b = s.reader();

    // Acceptance 1: deployed on A, restored on B from the snapshot's state.
    let v = a.deploy_ready(born("f", 1)).await;
    assert_eq!(v["state"], "ready", "{v}");
    assert!(v["snapshot"]["id"].is_string(), "{v}");
    let on_a = restore(&a, "f").await;
    assert_eq!(on_a.status, 200, "{}", on_a.text());
    assert_eq!(on_a.header("x-thaw-start"), "restore");
    let snapshot_born = on_a.json()["born"].clone();
    let ready_on_a = Instant::now();
    // B's first restore: lazy (nothing of f is local, and B completes the
    // snapshot locally only after a lazy copy resumed).
    let on_b = first_restore(&b, "f").await;
    eprintln!(
        "f restored on B {:?} after A answered its first restore",
        ready_on_a.elapsed()
    );
    assert_eq!(on_b.header("x-thaw-start"), "restore");
    assert_eq!(
        on_b.json()["born"],
        snapshot_born,
        "B's copy is not the snapshot's"
    );
    assert_eq!(
        lazy_restores(&b, "ok").await,
        1.0,
        "B's restore was not lazy"
    );
    assert!(
        metric(&b, "thaw_remote_fetched_bytes").await > 0.0,
        "B fetched nothing from the store"
    );
    let view = b.get("/functions/f").await;
    assert_eq!(view.status, 200, "{}", view.text());
    assert_eq!(view.json()["state"], "ready", "{}", view.text());
    // Then B completes the snapshot locally, and restores it from there.
    wait_for(
        "B completed f's snapshot",
        Duration::from_secs(120),
        async || metric(&b, "thaw_remote_snapshot_fetches_total{result=\"ok\"}").await >= 1.0,
    )
    .await;
    wait_for(
        "B restores f locally",
        Duration::from_secs(10),
        async || metric(&b, "thaw_remote_lazy_snapshots").await == 0.0,
    )
    .await;
    let local = restore(&b, "f").await;
    assert_eq!(local.status, 200, "{}", local.text());
    assert_eq!(local.header("x-thaw-start"), "restore");
    assert_eq!(local.json()["born"], snapshot_born);
    assert_eq!(
        lazy_restores(&b, "ok").await,
        1.0,
        "B restored lazily again with the snapshot local"
    );
    assert_eq!(boots(&b, "f").await, Vec::<String>::new(), "B booted f");
    let health = b.get("/healthz").await.text();
    assert!(health.contains("role: reader"), "{health}");
    assert!(health.contains("store: up"), "{health}");
    assert!(health.contains(&format!("writer: {}", a.url)), "{health}");

    // `thaw store remote-status` shows the writer and its catalog.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_thaw"))
        .args(["store", "remote-status", "--store-url", &s.url])
        .args(["--store-key-file", &s.key_file])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["writer"]["url"], a.url.as_str(), "{status}");
    assert_eq!(
        status["writer"]["functions"],
        serde_json::json!(["f"]),
        "{status}"
    );

    // A new version on A serves on B.
    let v = a.deploy_ready(born("f", 2)).await;
    assert_eq!(v["state"], "ready", "{v}");
    wait_for("B serves f v2", Duration::from_secs(60), async || {
        let r = b.invoke("f", serde_json::json!({})).await;
        r.status == 200 && r.json()["v"] == 2
    })
    .await;

    // A deploy sent to B lands through A, and comes back to B.
    let r = b.deploy(born("g", 1)).await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.header("x-thaw-forwarded-to"), a.url);
    assert_eq!(a.get("/functions/g").await.status, 200);
    wait_for("B has g", Duration::from_secs(60), async || {
        b.get("/functions/g").await.status == 200
    })
    .await;

    // A delete on A is seen on B within 2 s.
    let r = a
        .request(reqwest::Method::DELETE, "/functions/f", None, &[])
        .await;
    assert_eq!(r.status, 204, "{}", r.text());
    let t0 = Instant::now();
    loop {
        let status = b.get("/functions/f").await.status;
        if status == 404 {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(2),
            "B still has f {:?} after the delete on A",
            t0.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("delete seen on B after {:?}", t0.elapsed());
    assert_eq!(b.invoke("f", serde_json::json!({})).await.status, 404);

    // A delete sent to B lands through A.
    let r = b
        .request(reqwest::Method::DELETE, "/functions/g", None, &[])
        .await;
    assert_eq!(r.status, 204, "{}", r.text());
    assert_eq!(a.get("/functions/g").await.status, 404);
    wait_for("g gone from B", Duration::from_secs(10), async || {
        b.get("/functions/g").await.status == 404
    })
    .await;

    // Without its writer, B says so.
    a.stop();
    let r = b.deploy(born("h", 1)).await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.json()["error"], "writer_unavailable", "{}", r.text());

    verify(&a.data);
    verify(&b.data);
    drop(s);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_rides_out_a_store_outage() {
    require_root!();
    let _serial = SERIAL.lock().await;
    let mut s = match store("outage") {
        Ok(s) => s,
        Err(why) => skip!("{why}"),
    };
    let a = s.writer();
    for name in ["f1", "f2"] {
        let v = a.deploy_ready(born(name, 1)).await;
        assert_eq!(v["state"], "ready", "{v}");
    }
    wait_for(
        "A uploaded f1 and f2",
        Duration::from_secs(120),
        async || metric(&a, "thaw_remote_uploads_total{result=\"ok\"}").await >= 2.0,
    )
    .await;
    // f2's snapshot object goes (an upload cut short): B gets f2's record
    // and code but cannot fetch its snapshot.
    let f2 = a.get("/functions/f2").await.json()["snapshot"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let remote = s.remote();
    let s3 = object_store::aws::AmazonS3Builder::from_env()
        .with_bucket_name(BUCKET)
        .build()
        .unwrap();
    let manifest = remote.object_path(Kind::Snapshot, &remote.name(Kind::Snapshot, f2.as_bytes()));
    object_store::ObjectStore::delete(&s3, &manifest.as_str().into())
        .await
        .unwrap();

    let b = s.reader();
    // f1 restores lazily on B, which then completes it locally.
    let r = first_restore(&b, "f1").await;
    assert_eq!(r.header("x-thaw-start"), "restore");
    wait_for(
        "B fetched f1, not f2",
        Duration::from_secs(120),
        async || {
            metric(&b, "thaw_remote_snapshot_fetches_total{result=\"ok\"}").await >= 1.0
                && metric(&b, "thaw_remote_snapshot_fetches_total{result=\"error\"}").await >= 1.0
        },
    )
    .await;
    assert_eq!(b.get("/functions/f2").await.status, 200);

    // The store goes away.
    s.garage.stop();
    wait_for(
        "B reports the store down",
        Duration::from_secs(60),
        async || b.get("/healthz").await.text().contains("store: down"),
    )
    .await;
    assert_eq!(metric(&b, "thaw_remote_store_up").await, 0.0);
    let r = restore(&b, "f1").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.header("x-thaw-start"),
        "restore",
        "B restores what it has"
    );
    let r = b.invoke("f2", serde_json::json!({})).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-thaw-start"), "boot", "B boots what it lacks");
    // The writer deploys meanwhile (captured here, uploaded later).
    let v = a.deploy_ready(born("f3", 1)).await;
    assert_eq!(v["state"], "ready", "{v}");
    wait_for(
        "A reports the store down",
        Duration::from_secs(60),
        async || a.get("/healthz").await.text().contains("store: down"),
    )
    .await;

    // The store returns: A uploads again, B fetches and follows.
    s.garage.restart().expect("garage restarts");
    wait_for(
        "B reports the store up",
        Duration::from_secs(60),
        async || b.get("/healthz").await.text().contains("store: up"),
    )
    .await;
    assert_eq!(metric(&b, "thaw_remote_store_up").await, 1.0);
    for name in ["f2", "f3"] {
        wait_for(
            &format!("B restores {name}"),
            Duration::from_secs(120),
            async || {
                let r = restore(&b, name).await;
                assert!(
                    matches!(r.status, 200 | 404 | 409),
                    "{name}: {} {}",
                    r.status,
                    r.text()
                );
                r.status == 200 && r.header("x-thaw-start") == "restore"
            },
        )
        .await;
    }
    assert!(boots(&b, "f3").await.is_empty(), "B booted f3");
    assert!(remote.snapshot_status(&f2).await.unwrap().present);

    let (mut a, mut b) = (a, b);
    a.stop();
    b.stop();
    verify(&a.data);
    verify(&b.data);
}

/// Acceptance 3, last part: the writer dies in the middle of an upload
/// (`THAW_FAILPOINT=remote-pack-committed` aborts it right after its first
/// committed pack, as a `kill -9` there would); started again, it finishes
/// the upload without writing the committed packs again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_killed_during_an_upload_resumes_it() {
    require_root!();
    let _serial = SERIAL.lock().await;
    let s = match store("crash") {
        Ok(s) => s,
        Err(why) => skip!("{why}"),
    };
    std::env::set_var("THAW_FAILPOINT", "remote-pack-committed");
    let mut a = s.writer();
    std::env::remove_var("THAW_FAILPOINT");
    let r = a.deploy(born("f", 1)).await;
    assert_eq!(r.status, 201, "{}", r.text());
    let t0 = Instant::now();
    let status = loop {
        if let Some(status) = a.child.as_mut().unwrap().try_wait().unwrap() {
            break status;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "the writer did not reach the failure point"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    a.child = None;
    assert!(!status.success(), "{status:?}");
    let remote = s.remote();
    let committed = remote.list(Kind::PackIndex).await.unwrap();
    assert!(!committed.is_empty(), "no pack was committed");
    let packs_before = remote.list(Kind::Pack).await.unwrap();
    assert!(
        remote.list(Kind::Snapshot).await.unwrap().is_empty(),
        "the manifest went up before the pages"
    );

    a.spawn();
    let id = a.get("/functions/f").await.json()["snapshot"]["id"]
        .as_str()
        .expect("the record kept its snapshot")
        .to_string();
    wait_for(
        "the upload finished after the restart",
        Duration::from_secs(120),
        async || {
            let st = remote.snapshot_status(&id).await.unwrap();
            st.present && st.pages_missing == 0
        },
    )
    .await;
    let packs_after = remote.list(Kind::Pack).await.unwrap();
    for idx in &committed {
        let before = packs_before.iter().find(|p| p.name == idx.name).unwrap();
        let after = packs_after.iter().find(|p| p.name == idx.name).unwrap();
        assert_eq!(
            (&before.e_tag, before.last_modified),
            (&after.e_tag, after.last_modified),
            "committed pack {} was written again",
            idx.name
        );
    }
    eprintln!(
        "{} of {} packs committed before the crash; none written again",
        committed.len(),
        packs_after.len()
    );
}

/// With API tokens: a reader checks the caller's token itself, and the
/// writer checks it again on the forwarded request (the nodes share their
/// tokens).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forwarded_deploy_carries_the_callers_token() {
    require_root!();
    let _serial = SERIAL.lock().await;
    let s = match store("tokens") {
        Ok(s) => s,
        Err(why) => skip!("{why}"),
    };
    let token = "cluster-test-admin-token";
    std::env::set_var("THAW_TOKEN", token);
    let a = s.writer();
    let b = s.reader();
    std::env::remove_var("THAW_TOKEN");
    let bearer = format!("Bearer {token}");
    wait_for(
        "B has seen the writer",
        Duration::from_secs(30),
        async || {
            b.request(
                reqwest::Method::GET,
                "/healthz",
                None,
                &[("authorization", &bearer)],
            )
            .await
            .text()
            .contains("writer: http://")
        },
    )
    .await;
    // Without a token /healthz says how the store is, not where it is.
    let open = b.get("/healthz").await.text();
    assert!(
        open.contains("role: reader") && open.contains("store: up"),
        "{open}"
    );
    assert!(
        !open.contains("s3://") && !open.contains("http://"),
        "{open}"
    );
    let spec = serde_json::to_vec(&born("t", 1)).unwrap();
    let json = ("content-type", "application/json");
    let r = b
        .request(
            reqwest::Method::POST,
            "/functions",
            Some(spec.clone()),
            &[json],
        )
        .await;
    assert_eq!(r.status, 401, "B checks the token: {}", r.text());
    let r = b
        .request(
            reqwest::Method::POST,
            "/functions",
            Some(spec.clone()),
            &[json, ("authorization", "Bearer not-the-token")],
        )
        .await;
    assert_eq!(r.status, 401, "{}", r.text());
    let r = b
        .request(
            reqwest::Method::POST,
            "/functions",
            Some(spec),
            &[json, ("authorization", &bearer)],
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.header("x-thaw-forwarded-to"), a.url);
    let r = a
        .request(
            reqwest::Method::GET,
            "/functions/t",
            None,
            &[("authorization", &bearer)],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
}

/// A function whose init fills 24 MiB with random bytes that only the
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lazy_restore_whose_store_is_gone_before_it_boots() {
    require_root!();
    let _serial = SERIAL.lock().await;
    let mut s = match store("lazyboot") {
        Ok(s) => s,
        Err(why) => skip!("{why}"),
    };
    let (a, b, snapshot) = lazy_reader(&s).await;
    let on_a = restore(&a, "f").await;
    assert_eq!(on_a.status, 200, "{}", on_a.text());
    let snapshot_born = on_a.json()["born"].clone();

    s.garage.stop();
    // B's first cold start of f: its pages cannot be fetched before the
    // copy would resume, so it boots.
    let r = b.invoke("f", serde_json::json!({})).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-thaw-start"), "boot");
    assert_ne!(r.json()["born"], snapshot_born, "a boot answers its own");
    assert_eq!(lazy_restores(&b, "boot").await, 1.0);
    assert_eq!(lazy_restores(&b, "ok").await, 0.0);
    assert_eq!(metric(&b, "thaw_remote_store_up").await, 0.0);
    assert!(b.get("/healthz").await.text().contains("store: down"));
    // No rebuild, nothing failed: on B nor on A.
    still_ready(&b, &snapshot).await;
    still_ready(&a, &snapshot).await;

    // The store back: B restores f lazily again.
    s.garage.restart().expect("garage restarts");
    let r = first_restore(&b, "f").await;
    assert_eq!(r.header("x-thaw-start"), "restore");
    assert_eq!(r.json()["born"], snapshot_born);
    assert!(lazy_restores(&b, "ok").await >= 1.0);
    let (mut a, mut b) = (a, b);
    a.stop();
    b.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lazy_copy_whose_store_is_gone_after_the_resume_is_killed() {
    require_root!();
    let _serial = SERIAL.lock().await;
    let mut s = match store("lazykill") {
        Ok(s) => s,
        Err(why) => skip!("{why}"),
    };
    // (No restore on A: its working set, with the 24 MiB in it, must not
    // reach the bucket.)
    let (a, b, snapshot) = lazy_reader(&s).await;

    // A forced restore on B whose handler reads the 24 MiB (none of it in
    // the copy before it resumed) only after a pause; the store goes away
    // once the copy resumed (B counts it), within that pause.
    let b = std::sync::Arc::new(b);
    let call = {
        let b = b.clone();
        tokio::spawn(async move {
            b.invoke_raw(
                "f",
                br#"{"big": 5}"#.to_vec(),
                &[("x-thaw-cold", "restore")],
            )
            .await
        })
    };
    wait_for(
        "B's lazy copy resumed",
        Duration::from_secs(60),
        async || lazy_restores(&b, "ok").await >= 1.0,
    )
    .await;
    s.garage.stop();
    let r = call.await.unwrap();
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(r.json()["error"], "function_crashed", "{}", r.text());
    assert!(r.json().get("digest").is_none(), "the copy answered");
    assert_eq!(lazy_restores(&b, "killed").await, 1.0);
    // B stays up for other work, and nothing is rebuilt.
    assert_eq!(b.get("/healthz").await.status, 200);
    let again = b.invoke("f", serde_json::json!({})).await;
    assert_eq!(again.status, 200, "{}", again.text());
    still_ready(&b, &snapshot).await;
    still_ready(&a, &snapshot).await;
    let mut a = a;
    a.stop();
    drop(b);
}

/// A completion that fails while the store answers is tried again in the
/// background, not only by the next lazy copy: B opens f lazily, f's
/// snapshot object then leaves the bucket (B holds what it read of it), so
/// the completion started by B's first lazy copy fails; once the object is
/// back, B completes f without another lazy copy, and its next forced
/// restore is local.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_completion_is_retried_in_the_background() {
    require_root!();
    let _serial = SERIAL.lock().await;
    let s = match store("retry") {
        Ok(s) => s,
        Err(why) => skip!("{why}"),
    };
    let (mut a, b, snapshot) = lazy_reader(&s).await;
    // The writer is not needed any more (nor can it put anything back).
    a.stop();
    let remote = s.remote();
    let s3 = object_store::aws::AmazonS3Builder::from_env()
        .with_bucket_name(BUCKET)
        .build()
        .unwrap();
    let path: object_store::path::Path = remote
        .object_path(
            Kind::Snapshot,
            &remote.name(Kind::Snapshot, snapshot.as_bytes()),
        )
        .as_str()
        .into();
    let object = object_store::ObjectStore::get(&s3, &path)
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    object_store::ObjectStore::delete(&s3, &path).await.unwrap();

    let r = first_restore(&b, "f").await;
    assert_eq!(r.header("x-thaw-start"), "restore");
    assert_eq!(lazy_restores(&b, "ok").await, 1.0);
    wait_for(
        "B's completion failed",
        Duration::from_secs(60),
        async || metric(&b, "thaw_remote_snapshot_fetches_total{result=\"error\"}").await >= 1.0,
    )
    .await;
    assert_eq!(metric(&b, "thaw_remote_lazy_snapshots").await, 1.0);
    assert_eq!(
        metric(&b, "thaw_remote_snapshot_fetches_total{result=\"ok\"}").await,
        0.0
    );

    // The object back: a retry completes f, with no lazy copy since.
    object_store::ObjectStore::put(&s3, &path, object.into())
        .await
        .unwrap();
    wait_for(
        "B completed f by a retry",
        Duration::from_secs(120),
        async || metric(&b, "thaw_remote_lazy_snapshots").await == 0.0,
    )
    .await;
    assert_eq!(
        metric(&b, "thaw_remote_snapshot_fetches_total{result=\"ok\"}").await,
        1.0
    );
    assert_eq!(
        metric(&b, "thaw_remote_completion_retries_total{result=\"ok\"}").await,
        1.0
    );
    assert_eq!(lazy_restores(&b, "ok").await, 1.0);
    // Local now: a forced restore answers without a lazy copy.
    let r = restore(&b, "f").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-thaw-start"), "restore");
    assert_eq!(lazy_restores(&b, "ok").await, 1.0);
    still_ready(&b, &snapshot).await;
    let mut b = b;
    b.stop();
}

/// A function with 4 MiB of random bytes every event hashes (`HOT`) and
/// 32 MiB that no event reads (`COLD`), and one warm-up event.
fn hot_and_cold(name: &str) -> serde_json::Value {
    function(
        name,
        "import hashlib, os, time\nBORN = time.time_ns()\nHOT = os.urandom(4 << 20)\n\
         DIGEST = hashlib.sha256(HOT).hexdigest()\nCOLD = os.urandom(32 << 20)\n\
         def handler(event, context):\n    \
         return {'born': BORN, 'hot': hashlib.sha256(HOT).hexdigest() == DIGEST}\n",
        serde_json::json!({"warmup": [{}]}),
    )
}

/// Issue 18, a working set recorded at deploy: A (mmap mode) deploys a
/// function and never invokes it; the bucket holds the working set A's
/// deploy recorded (a uffd copy replaying the warm-up event: the hot 4 MiB
/// in it, not the cold 32 MiB), A's fetch set, not the set A's own copies
/// use (they record theirs); B's first lazy
/// restore fetches it before its copy resumes and answers from the
/// snapshot's state, and everything B's copy fetched is at most twice the
/// set's stored bytes (the 32 MiB stay in the bucket).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_working_set_recorded_at_deploy_is_fetched_first_by_a_reader() {
    require_root!();
    let _serial = SERIAL.lock().await;
    let s = match store("wsdeploy") {
        Ok(s) => s,
        Err(why) => skip!("{why}"),
    };
    let mut a = s.writer();
    let v = a.deploy_ready(hot_and_cold("f")).await;
    assert_eq!(v["state"], "ready", "{v}");
    assert_eq!(v["memory_mode"], "mmap", "{v}");
    let id = v["snapshot"]["id"].as_str().unwrap().to_string();
    wait_for("A uploaded f", Duration::from_secs(120), async || {
        metric(&a, "thaw_remote_uploads_total{result=\"ok\"}").await >= 1.0
    })
    .await;
    assert_eq!(
        metric(&a, "thaw_invocations_total").await,
        0.0,
        "nothing invoked f on A"
    );

    // The bucket's working set is A's deploy recording.
    let remote = s.remote();
    let bytes = remote
        .get_blob(Kind::WorkingSet, id.as_bytes())
        .await
        .unwrap()
        .expect("the bucket holds the working set recorded at deploy");
    // Written as A's fetch set, not as the plan of A's own copies (they
    // record theirs from their first invocation, below).
    let local = a.data.join("snapshots").join(format!("{id}.fetchset"));
    let own = a.data.join("snapshots").join(format!("{id}.workingset"));
    assert_eq!(
        std::fs::read(&local).unwrap(),
        bytes,
        "the bucket's working set is A's fetch set"
    );
    assert!(!own.exists(), "no copy of f ran on A yet");
    let pages = pool::restore::working_set::decode(&bytes, &local).unwrap();
    assert!(
        pages.len() >= 1024,
        "the 1,024 pages the warm-up event hashes are in it: {} pages",
        pages.len()
    );
    assert!(
        pages.len() < 8192,
        "the 8,192 pages no event reads are not: {} pages",
        pages.len()
    );
    let written = pages
        .iter()
        .filter(|p| *p & pool::restore::working_set::WRITTEN != 0)
        .count();
    assert!(
        written > 0 && written < pages.len() - 1024,
        "pages first touched by a write are tagged (for mmap copies), the hot ones it reads are not: {written} of {}",
        pages.len()
    );

    // B, started after the upload, restores f lazily: the set first.
    let b = s.reader();
    wait_for(
        "B restores f lazily",
        Duration::from_secs(120),
        async || metric(&b, "thaw_remote_lazy_snapshots").await >= 1.0,
    )
    .await;
    let r = restore(&b, "f").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-thaw-start"), "restore");
    assert_eq!(r.json()["hot"], true, "{}", r.text());
    assert_eq!(lazy_restores(&b, "ok").await, 1.0);
    let set = metric(&b, "thaw_remote_lazy_working_set_bytes").await;
    let before = metric(&b, "thaw_remote_lazy_fetched_before_resume_bytes").await;
    let after = metric(&b, "thaw_remote_lazy_fetched_after_resume_bytes").await;
    eprintln!(
        "working set: {} pages, {set} stored bytes; B fetched {before} bytes before the resume, {after} after",
        pages.len()
    );
    assert!(
        set >= 1024.0 * 4096.0,
        "the set's stored part holds the hot pages: {set}"
    );
    assert!(
        before >= set,
        "B fetched the working set before the copy resumed: {before} < {set}"
    );
    assert!(
        before + after <= 2.0 * set,
        "B's copy fetched {} bytes, more than twice the set's {set}",
        before + after
    );
    assert_eq!(boots(&b, "f").await, Vec::<String>::new(), "B booted f");

    // The snapshot's state: A's own forced restore answers the same, and
    // its copy records A's working set (fault-around and all), apart from
    // the fetch set, which stays the bucket's.
    let on_a = restore(&a, "f").await;
    assert_eq!(on_a.status, 200, "{}", on_a.text());
    assert_eq!(on_a.json()["born"], r.json()["born"]);
    wait_for(
        "A's copy recorded A's own working set",
        Duration::from_secs(30),
        async || own.exists(),
    )
    .await;
    let own_pages = pool::restore::working_set::load(&own)
        .unwrap()
        .expect("A's working set");
    assert_ne!(
        own_pages, pages,
        "A's copies' set is their own, not the fetch set"
    );
    // The writer's publisher (every 2 s) does not send it up in its place.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let bytes_now = remote
        .get_blob(Kind::WorkingSet, id.as_bytes())
        .await
        .unwrap()
        .expect("the bucket still holds a working set");
    assert_eq!(bytes_now, bytes, "the bucket's set is still the fetch set");

    // B's completion writes the bucket's set as B's fetch set; B's local
    // copies record their own.
    let b_fetch = b.data.join("snapshots").join(format!("{id}.fetchset"));
    let b_own = b.data.join("snapshots").join(format!("{id}.workingset"));
    wait_for(
        "B completed f locally",
        Duration::from_secs(120),
        async || std::fs::read(&b_fetch).is_ok_and(|f| f == bytes),
    )
    .await;
    assert!(!b_own.exists(), "no local copy of f ran on B yet");
    let local_b = restore(&b, "f").await;
    assert_eq!(local_b.status, 200, "{}", local_b.text());
    assert_eq!(local_b.json()["born"], r.json()["born"]);
    wait_for(
        "B's local copy recorded B's own working set",
        Duration::from_secs(30),
        async || b_own.exists(),
    )
    .await;
    let mut b = b;
    b.stop();
    a.stop();
}

/// A working set recorded after the snapshot went up (here: the deploy's
/// recording turned off, `THAW_DEPLOY_WORKING_SET=0`, then a copy's first
/// invocation records one) is uploaded by the writer without a restart or
/// a `thaw store push`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_working_set_recorded_after_the_upload_goes_up_too() {
    require_root!();
    let _serial = SERIAL.lock().await;
    let s = match store("wslater") {
        Ok(s) => s,
        Err(why) => skip!("{why}"),
    };
    std::env::set_var("THAW_DEPLOY_WORKING_SET", "0");
    let mut a = s.writer();
    std::env::remove_var("THAW_DEPLOY_WORKING_SET");
    let v = a.deploy_ready(born("f", 1)).await;
    assert_eq!(v["state"], "ready", "{v}");
    let id = v["snapshot"]["id"].as_str().unwrap().to_string();
    wait_for("A uploaded f", Duration::from_secs(120), async || {
        metric(&a, "thaw_remote_uploads_total{result=\"ok\"}").await >= 1.0
    })
    .await;
    let remote = s.remote();
    assert!(
        remote
            .get_blob(Kind::WorkingSet, id.as_bytes())
            .await
            .unwrap()
            .is_none(),
        "no working set recorded at this deploy"
    );
    let r = restore(&a, "f").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let local = a.data.join("snapshots").join(format!("{id}.workingset"));
    wait_for(
        "A uploaded the working set its copy recorded",
        Duration::from_secs(60),
        async || {
            remote
                .get_blob(Kind::WorkingSet, id.as_bytes())
                .await
                .unwrap()
                .is_some_and(|b| std::fs::read(&local).is_ok_and(|l| l == b))
        },
    )
    .await;
    a.stop();
}

/// Time of one request, ms.
async fn timed(server: &Server, name: &str, cold: &str) -> (f64, Answer) {
    let t0 = Instant::now();
    let r = server
        .invoke_raw(name, b"{}".to_vec(), &[("x-thaw-cold", cold)])
        .await;
    (t0.elapsed().as_secs_f64() * 1e3, r)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Five rounds, each with a new reader on an empty data directory: its
/// first forced restore of `f` (lazy), the median of three forced restores
/// once complete locally (mmap), a forced boot. Prints and returns the
/// medians (ms).
async fn lazy_rounds(s: &Store, arm: &str) -> (f64, f64, f64) {
    let (mut lazy, mut local, mut boot) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..5 {
        let mut b = s.reader();
        wait_for(
            "B restores f lazily",
            Duration::from_secs(120),
            async || metric(&b, "thaw_remote_lazy_snapshots").await >= 1.0,
        )
        .await;
        let (ms, r) = timed(&b, "f", "restore").await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(lazy_restores(&b, "ok").await, 1.0);
        lazy.push(ms);
        wait_for("B completed f", Duration::from_secs(120), async || {
            metric(&b, "thaw_remote_lazy_snapshots").await == 0.0
        })
        .await;
        let mut l = Vec::new();
        for _ in 0..3 {
            let (ms, r) = timed(&b, "f", "restore").await;
            assert_eq!(r.header("x-thaw-start"), "restore", "{}", r.text());
            l.push(ms);
        }
        assert_eq!(lazy_restores(&b, "ok").await, 1.0);
        local.push(median(l));
        let (ms, r) = timed(&b, "f", "boot").await;
        assert_eq!(r.header("x-thaw-start"), "boot", "{}", r.text());
        boot.push(ms);
        eprintln!(
            "{arm}, round {round}: first (lazy) {:.1} ms, local {:.1} ms, boot {:.1} ms",
            lazy[round], local[round], boot[round]
        );
        b.stop();
    }
    let (lz, lc, bt) = (median(lazy), median(local), median(boot));
    eprintln!(
        "{arm}, medians of 5: first remote restore {lz:.1} ms, local restore {lc:.1} ms, boot {bt:.1} ms: first/local x{:.2}, first/boot x{:.2}",
        lz / lc,
        lz / bt
    );
    (lz, lc, bt)
}

/// The figure in docs/cluster.md: through HTTP, a reader's first restore
/// of a function it holds nothing of (lazy) against a later local restore
/// (mmap) and a boot; without a working set in the bucket (A started with
/// `THAW_DEPLOY_WORKING_SET=0`), then with the one A's deploy of version 2
/// recorded.
/// `cargo test -p server --test cluster bench -- --ignored --nocapture`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: run with --ignored --nocapture"]
async fn bench_first_lazy_restore_through_http() {
    require_root!();
    let _serial = SERIAL.lock().await;
    let s = match store("bench") {
        Ok(s) => s,
        Err(why) => skip!("{why}"),
    };
    // First without the working set a deploy records.
    std::env::set_var("THAW_DEPLOY_WORKING_SET", "0");
    let mut a = s.writer();
    std::env::remove_var("THAW_DEPLOY_WORKING_SET");
    let v = a.deploy_ready(born("f", 1)).await;
    assert_eq!(v["state"], "ready", "{v}");
    let id = v["snapshot"]["id"].as_str().unwrap().to_string();
    wait_for("A uploaded f", Duration::from_secs(120), async || {
        metric(&a, "thaw_remote_uploads_total{result=\"ok\"}").await >= 1.0
    })
    .await;
    let remote = s.remote();
    assert!(remote
        .get_blob(Kind::WorkingSet, id.as_bytes())
        .await
        .unwrap()
        .is_none());
    lazy_rounds(&s, "no working set").await;

    // Then with the working set a deploy records (A started again with
    // it, deploying version 2).
    a.stop();
    a.spawn();
    let v = a.deploy_ready(born("f", 2)).await;
    assert_eq!(v["state"], "ready", "{v}");
    let id = v["snapshot"]["id"].as_str().unwrap().to_string();
    wait_for(
        "A uploaded f's working set",
        Duration::from_secs(120),
        async || {
            remote
                .get_blob(Kind::WorkingSet, id.as_bytes())
                .await
                .unwrap()
                .is_some()
        },
    )
    .await;
    lazy_rounds(&s, "working set").await;
}

/// A handler that imports a package of its layer (pure Python) and one
/// that maps a shared library of the layer (so the snapshot depends on that
/// file by content), and tells when its process started.
const LAYER_HANDLER: &str = r#"
import time
import thawpure
import thawbin
BORN = time.time_ns()

def handler(event, context=None):
    return {
        "born": BORN,
        "greet": thawpure.greet("b"),
        "add": thawbin.add(2, 3),
        "from": thawpure.__file__,
    }
"#;

/// Piece 1 of the reader's dependency layers (docs/cluster.md, "Functions
/// with a dependency file"): a function with a `requirements.txt`, installed
/// on A from the test's own package index (loopback, never the internet);
/// B, with its own empty layer cache, installs the layer from the bucket
/// (never the index), restores the snapshot (no boot) and boots it too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_function_with_a_dependency_file_restores_on_a_reader() {
    require_root!();
    if !Path::new("/usr/bin/cc").exists() {
        skip!("/usr/bin/cc is missing (the test's package index compiles a library)");
    }
    let pip = std::process::Command::new("/usr/bin/python3")
        .args(["-m", "pip", "--version"])
        .output();
    if !pip.is_ok_and(|o| o.status.success()) {
        skip!("pip for /usr/bin/python3 is missing (python3-pip)");
    }
    let _serial = SERIAL.lock().await;
    let s = match store("layers") {
        Ok(s) => s,
        Err(why) => skip!("{why}"),
    };
    let index = common::index::Index::start();
    let cache = |what: &str| {
        tempfile::Builder::new()
            .prefix(what)
            .tempdir_in("/var/tmp")
            .unwrap()
    };
    let (cache_a, cache_b) = (cache("thaw-layers-a"), cache("thaw-layers-b"));
    let simple = index.simple();
    let with = |role: &str, cache: &Path| -> Vec<String> {
        vec![
            role.to_string(),
            "--store-url".into(),
            s.url.clone(),
            "--store-key-file".into(),
            s.key_file.clone(),
            "--allow-forced-cold".into(),
            "--layer-cache".into(),
            cache.display().to_string(),
            "--package-index".into(),
            simple.clone(),
        ]
    };
    let a_args = with("--store-writer", cache_a.path());
    let b_args = with("--store-writer=false", cache_b.path());
    let a = Server::start(&a_args.iter().map(String::as_str).collect::<Vec<_>>());
    let b = Server::start(&b_args.iter().map(String::as_str).collect::<Vec<_>>());

    let spec = serde_json::json!({
        "name": "deps",
        "runtime": "python3",
        "handler": "main.handler",
        "memory_mb": 128,
        "timeout_ms": 10000,
        "files": {"main.py": LAYER_HANDLER, "requirements.txt": "thawpure==1.0\nthawbin\n"},
    });
    let v = a.deploy_ready(spec).await;
    assert_eq!(v["state"], "ready", "{v}");
    assert!(v["snapshot"]["id"].is_string(), "{v}");
    let on_a = restore(&a, "deps").await;
    assert_eq!(on_a.status, 200, "{}", on_a.text());
    let snapshot_born = on_a.json()["born"].clone();
    let index_requests = index.requests().len();
    assert!(index_requests > 0, "A installed from the test's index");

    // B restores deps (lazily, the first time).
    first_restore(&b, "deps").await;

    // The layer: one folder in A's cache (its key); the bucket holds its
    // archive under its key and hash, and the code object without it.
    let keys: Vec<String> = std::fs::read_dir(cache_a.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    assert_eq!(keys.len(), 1, "A's layers: {keys:?}");
    let key = &keys[0];
    let in_b: Vec<String> = std::fs::read_dir(cache_b.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    assert_eq!(in_b.len(), 1, "B's layers: {in_b:?}");
    let hash16 = in_b[0]
        .strip_prefix(&format!("{key}-"))
        .unwrap_or_else(|| panic!("B's layer {} is not A's {key}", in_b[0]));
    let remote = s.remote();
    let catalog = server::cluster::catalog::read_catalog(&remote)
        .await
        .unwrap()
        .expect("a catalog");
    let obj = &catalog.layers[key];
    assert!(obj.blake3.starts_with(hash16), "{obj:?} vs {hash16}");
    let mut archive = Vec::new();
    let streamed = remote
        .get_blob_to(
            Kind::Code,
            server::cluster::layers::address(key, &obj.blake3).as_bytes(),
            &mut archive,
        )
        .await
        .unwrap()
        .expect("the layer's archive in the bucket");
    assert_eq!(blake3::hash(&archive).to_hex().to_string(), obj.blake3);
    assert_eq!(streamed.blake3.to_hex().to_string(), obj.blake3);
    assert_eq!(streamed.bytes, obj.bytes);
    let record = &catalog.functions["deps"].versions[0];
    let code = remote
        .get_blob(
            Kind::Code,
            server::remote::code_address("deps", 1, record.uid).as_bytes(),
        )
        .await
        .unwrap()
        .expect("the code in the bucket");
    let files: Vec<String> = tar::Archive::new(&code[..])
        .entries()
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.header().entry_type().is_file())
        .map(|e| e.path().unwrap().display().to_string())
        .collect();
    assert!(files.iter().any(|n| n.ends_with("main.py")), "{files:?}");
    assert!(
        !files.iter().any(|n| n.contains(".thaw/")),
        "the layer travels apart from the code: {files:?}"
    );

    // B's code folder links B's layer (one inode), installed, not built.
    let file = "functions/deps/v1/code/.thaw/python/thawbin/libthawbin.so";
    let in_code = std::fs::metadata(b.data.join(file)).unwrap();
    let in_cache =
        std::fs::metadata(cache_b.path().join(&in_b[0]).join("thawbin/libthawbin.so")).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        (in_code.dev(), in_code.ino()),
        (in_cache.dev(), in_cache.ino())
    );
    assert_eq!(
        std::fs::read(b.data.join(file)).unwrap(),
        std::fs::read(a.data.join(file)).unwrap()
    );

    // A forced restore on B: the snapshot's state, the layer's packages.
    let on_b = restore(&b, "deps").await;
    assert_eq!(on_b.status, 200, "{}", on_b.text());
    assert_eq!(on_b.header("x-thaw-start"), "restore");
    let answer = on_b.json();
    assert_eq!(
        answer["born"], snapshot_born,
        "B's copy is not the snapshot's"
    );
    assert_eq!(answer["greet"], "hello b from thawpure");
    assert_eq!(answer["add"], 1005);
    assert_eq!(
        boots(&b, "deps").await,
        Vec::<String>::new(),
        "B booted deps"
    );

    // A forced boot on B: a new process importing from B's layer.
    let booted = b
        .invoke_raw("deps", b"{}".to_vec(), &[("x-thaw-cold", "boot")])
        .await;
    assert_eq!(booted.status, 200, "{}", booted.text());
    assert_eq!(booted.header("x-thaw-start"), "boot");
    let booted = booted.json();
    assert_ne!(booted["born"], snapshot_born);
    assert_eq!(booted["greet"], "hello b from thawpure");
    assert_eq!(booted["add"], 1005);
    assert_eq!(
        booted["from"],
        "/var/task/.thaw/python/thawpure/__init__.py"
    );

    // The same for Node.js: a package.json with its lockfile (npm ci on A),
    // node_modules installed on B from the bucket.
    let package = serde_json::json!({
        "name": "nodedeps", "version": "1.0.0", "dependencies": {"thaw-left-pad": "1.0.0"}
    })
    .to_string();
    let node = serde_json::json!({
        "name": "nodedeps",
        "runtime": "node20",
        "handler": "index.handler",
        "memory_mb": 256,
        "timeout_ms": 10000,
        "files": {
            "index.js": "const pad = require('thaw-left-pad');\nconst BORN = process.hrtime.bigint().toString();\nexports.handler = async () => ({ padded: pad('ab', 6), from: require.resolve('thaw-left-pad'), born: BORN });\n",
            "package.json": package,
            "package-lock.json": index.lockfile(),
        },
    });
    let v = a.deploy_ready(node).await;
    assert_eq!(v["state"], "ready", "{v}");
    let on_a = restore(&a, "nodedeps").await;
    assert_eq!(on_a.status, 200, "{}", on_a.text());
    let node_born = on_a.json()["born"].clone();
    let index_requests = index.requests().len();
    first_restore(&b, "nodedeps").await;
    let on_b = restore(&b, "nodedeps").await;
    assert_eq!(on_b.status, 200, "{}", on_b.text());
    assert_eq!(on_b.header("x-thaw-start"), "restore");
    let answer = on_b.json();
    assert_eq!(answer["born"], node_born, "B's copy is not the snapshot's");
    assert_eq!(answer["padded"], "****ab");
    assert_eq!(
        answer["from"],
        "/var/task/node_modules/thaw-left-pad/index.js"
    );
    assert_eq!(boots(&b, "nodedeps").await, Vec::<String>::new());
    let layers_b = std::fs::read_dir(cache_b.path())
        .unwrap()
        .filter(|e| {
            !e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with('.')
        })
        .count();
    assert_eq!(layers_b, 2, "B installed both layers");

    assert_eq!(
        index.requests().len(),
        index_requests,
        "B never asked the package index"
    );
    verify(&a.data);
    verify(&b.data);
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// A test host: a network namespace joined to this one by a veth pair,
/// `10.218.N.1/30` here and `10.218.N.2/30` there (a private range on the
/// veth only, nothing routed off the machine). Removed when dropped.
struct TestHost {
    name: String,
    link: String,
    here: String,
    there: String,
}

impl TestHost {
    fn create() -> Result<TestHost, String> {
        let n = std::process::id() % 200 + 20;
        let host = TestHost {
            name: format!("thaw-node-{n}"),
            // Not `thw*`: thaw's firewall treats those as sandboxes' links.
            link: format!("tnode{n}"),
            here: format!("10.218.{n}.1"),
            there: format!("10.218.{n}.2"),
        };
        host.remove();
        let run = |args: &[&str]| -> Result<(), String> {
            let out = std::process::Command::new("ip")
                .args(args)
                .output()
                .map_err(|e| format!("ip: {e}"))?;
            if out.status.success() {
                Ok(())
            } else {
                Err(format!(
                    "ip {}: {}",
                    args.join(" "),
                    String::from_utf8_lossy(&out.stderr)
                ))
            }
        };
        let (ns, link) = (host.name.as_str(), host.link.as_str());
        run(&["netns", "add", ns])?;
        run(&[
            "link", "add", link, "type", "veth", "peer", "name", "eth0", "netns", ns,
        ])?;
        run(&["addr", "add", &format!("{}/30", host.here), "dev", link])?;
        run(&["link", "set", link, "up"])?;
        run(&[
            "-n",
            ns,
            "addr",
            "add",
            &format!("{}/30", host.there),
            "dev",
            "eth0",
        ])?;
        run(&["-n", ns, "link", "set", "eth0", "up"])?;
        run(&["-n", ns, "link", "set", "lo", "up"])?;
        Ok(host)
    }

    /// The command that runs a program in the namespace: `nsenter` joins
    /// its network namespace only (`ip netns exec` would also remount
    /// `/sys`, hiding the cgroup filesystems thaw needs).
    fn wrap(&self) -> Vec<String> {
        vec!["nsenter".into(), format!("--net=/run/netns/{}", self.name)]
    }

    /// Whether a TCP connection to `addr` opens from inside the namespace.
    fn connects(&self, addr: &str) -> bool {
        let (ip, port) = addr.rsplit_once(':').unwrap();
        std::process::Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.name))
            .args([
                "/usr/bin/python3",
                "-c",
                "import socket, sys; socket.create_connection((sys.argv[1], int(sys.argv[2])), 3)",
                ip,
                port,
            ])
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    fn remove(&self) {
        for args in [
            vec!["netns", "del", self.name.as_str()],
            vec!["link", "del", self.link.as_str()],
        ] {
            let _ = std::process::Command::new("ip")
                .args(&args)
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
}

impl Drop for TestHost {
    fn drop(&mut self) {
        self.remove();
    }
}

/// Issue 18's "each node may run in its own network namespace as a test
/// host": B runs in a network namespace of its own and reaches A and
/// Garage only over a veth (10.218.N.0/30), never over loopback; A and
/// Garage listen on the veth's address. B restores A's function from the
/// snapshot's state, a deploy sent to B lands through A, a delete on A is
/// seen on B.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_in_its_own_network_namespace_follows_the_writer_over_a_veth() {
    require_root!();
    for tool in ["ip", "nsenter"] {
        let found = std::process::Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            skip!("`{tool}` is missing (iproute2, util-linux): needed to run a node in a network namespace");
        }
    }
    let _serial = SERIAL.lock().await;
    let host = match TestHost::create() {
        Ok(h) => h,
        Err(why) => skip!("cannot make a network namespace with a veth pair: {why}"),
    };
    let s = match store_on("netns", &host.here) {
        Ok(s) => s,
        Err(why) => skip!("{why}"),
    };
    let garage = s.garage.endpoint.trim_start_matches("http://").to_string();
    let port = garage.rsplit_once(':').unwrap().1;
    assert!(
        host.connects(&garage),
        "the test host reaches Garage at {garage} over the veth"
    );
    assert!(
        !host.connects(&format!("127.0.0.1:{port}")),
        "the test host's loopback is its own"
    );

    // A node that listens on anything but loopback needs a token.
    let token = "netns-test-admin-token";
    std::env::set_var("THAW_TOKEN", token);
    let role = |writer: bool, listen: &str| {
        vec![
            if writer {
                "--store-writer"
            } else {
                "--store-writer=false"
            }
            .to_string(),
            "--listen".into(),
            format!("{listen}:0"),
            "--store-url".into(),
            s.url.clone(),
            "--store-key-file".into(),
            s.key_file.clone(),
            "--allow-forced-cold".into(),
        ]
    };
    let mut a = Server::start(&strs(&role(true, &host.here)));
    let wrap = host.wrap();
    let mut b = Server::start_wrapped(&strs(&wrap), &strs(&role(false, &host.there)));
    std::env::remove_var("THAW_TOKEN");
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert("authorization", format!("Bearer {token}").parse().unwrap());
    for node in [&mut a, &mut b] {
        node.http = reqwest::Client::builder()
            .default_headers(headers.clone())
            .build()
            .unwrap();
    }
    assert!(a.url.contains(&host.here), "{}", a.url);
    assert!(b.url.contains(&host.there), "{}", b.url);

    let v = a.deploy_ready(born("f", 1)).await;
    assert_eq!(v["state"], "ready", "{v}");
    let on_a = restore(&a, "f").await;
    assert_eq!(on_a.status, 200, "{}", on_a.text());
    let snapshot_born = on_a.json()["born"].clone();
    // B restores f (lazily: its pages over the veth).
    first_restore(&b, "f").await;
    let health = b.get("/healthz").await.text();
    assert!(
        health.contains(&format!("writer: {}", a.url)),
        "B sees the writer at its veth address: {health}"
    );
    let on_b = restore(&b, "f").await;
    assert_eq!(on_b.status, 200, "{}", on_b.text());
    assert_eq!(on_b.header("x-thaw-start"), "restore");
    assert_eq!(on_b.json()["born"], snapshot_born);
    assert!(metric(&b, "thaw_remote_fetched_bytes").await > 0.0);
    assert_eq!(boots(&b, "f").await, Vec::<String>::new(), "B booted f");

    // A deploy sent to B lands on A (over the veth), then serves on B.
    let r = b.deploy(born("g", 1)).await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.header("x-thaw-forwarded-to"), a.url);
    assert_eq!(a.get("/functions/g").await.status, 200);
    wait_for("B serves g", Duration::from_secs(120), async || {
        b.get("/functions/g").await.json()["state"] == "ready"
    })
    .await;
    let g = b.invoke("g", serde_json::json!({})).await;
    assert_eq!(g.status, 200, "{}", g.text());

    // A delete on A is seen on B.
    let d = a
        .request(reqwest::Method::DELETE, "/functions/f", None, &[])
        .await;
    assert!(d.status < 300, "{}", d.text());
    wait_for("B dropped f", Duration::from_secs(10), async || {
        b.get("/functions/f").await.status == 404
    })
    .await;
    verify(&a.data);
    verify(&b.data);
}

/// Figures for docs/cluster.md ("Functions with a dependency file"): the
/// numpy-pandas example (numpy and pandas in its requirements.txt, from the
/// package index the host's pip uses, or the tests' shared layer cache)
/// deployed on A; B with an empty layer cache of its own installs the
/// layer from the bucket and restores. Prints the layer's size and the
/// times; asserts what the small test asserts. A bench:
/// `cargo test -p server --test cluster -- --ignored --nocapture numpy`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a bench: numpy and pandas on two nodes (minutes on a busy machine)"]
async fn numpy_pandas_layer_travels_to_a_reader() {
    require_root!();
    require_numpy_index!();
    let _serial = SERIAL.lock().await;
    let s = match store("numpy") {
        Ok(s) => s,
        Err(why) => skip!("{why}"),
    };
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/numpy-pandas");
    let cache_b = tempfile::Builder::new()
        .prefix("thaw-layers-b")
        .tempdir_in("/var/tmp")
        .unwrap();
    let a = Server::start(&[
        "--store-writer",
        "--store-url",
        &s.url,
        "--store-key-file",
        &s.key_file,
        "--allow-forced-cold",
        "--deploy",
        &example.display().to_string(),
    ]);
    let b = Server::start(&[
        "--store-writer=false",
        "--store-url",
        &s.url,
        "--store-key-file",
        &s.key_file,
        "--allow-forced-cold",
        "--layer-cache",
        &cache_b.path().display().to_string(),
    ]);
    let v = a.wait_state("numpy-pandas").await;
    assert_eq!(v["state"], "ready", "{v}");
    let ready = Instant::now();
    wait_for(
        "B has numpy-pandas (code and layer)",
        Duration::from_secs(600),
        async || b.get("/functions/numpy-pandas").await.status == 200,
    )
    .await;
    let applied = ready.elapsed();
    wait_for(
        "B restores the snapshot lazily",
        Duration::from_secs(600),
        async || metric(&b, "thaw_remote_lazy_snapshots").await >= 1.0,
    )
    .await;
    let restorable = ready.elapsed();
    let catalog = server::cluster::catalog::read_catalog(&s.remote())
        .await
        .unwrap()
        .unwrap();
    let layer = catalog.layers.values().next().expect("a layer").clone();
    let event = serde_json::to_vec(&serde_json::json!({"store": 3})).unwrap();
    let t = Instant::now();
    let on_b = b
        .invoke_raw("numpy-pandas", event.clone(), &[("x-thaw-cold", "restore")])
        .await;
    let restore_ms = t.elapsed().as_millis();
    assert_eq!(on_b.status, 200, "{}", on_b.text());
    assert_eq!(on_b.header("x-thaw-start"), "restore");
    assert_eq!(boots(&b, "numpy-pandas").await, Vec::<String>::new());
    let t = Instant::now();
    let booted = b
        .invoke_raw("numpy-pandas", event, &[("x-thaw-cold", "boot")])
        .await;
    let boot_ms = t.elapsed().as_millis();
    assert_eq!(booted.status, 200, "{}", booted.text());
    assert_eq!(booted.header("x-thaw-start"), "boot");
    eprintln!(
        "numpy-pandas on B: layer archive {:.1} MB; A ready -> B has the version (code + layer installed) {:.2} s, -> restorable (lazily) {:.2} s; first forced restore on B (lazy) {restore_ms} ms, forced boot {boot_ms} ms",
        layer.bytes as f64 / 1e6,
        applied.as_secs_f64(),
        restorable.as_secs_f64()
    );
}
