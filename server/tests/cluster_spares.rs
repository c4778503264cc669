//! Spares of a snapshot a reader restores lazily (issue 18, docs/cluster.md
//! "Spares on a reader"): a writer A and a reader B with an empty data
//! directory, real `thaw serve` processes on a private Garage.
//!
//! - B makes spares of a function it restores lazily before any request;
//!   its first forced restore claims one (`x-thaw-spare: hit`), is lazy
//!   and answers from the snapshot's state; once B completed the snapshot
//!   locally, its spares are local ones and serve (no lazy copy again);
//! - a spare fetches nothing before its claim: with the store stopped once
//!   B's spare is ready, B's first cold start claims it and boots (the
//!   fetch fails before the resume), never answering from a copy, nothing
//!   rebuilt; with the store back B restores the snapshot lazily again.
//!
//! Spares of lazily restored snapshots are on by default
//! (`THAW_LAZY_SPARES=1` is set here for the nodes all the same, in case the
//! environment running the tests turned them off). Needs root (sandboxes) and the garage binary
//! (`./dev.sh s3`).

mod cluster_support;
mod common;
#[path = "../../test-support/garage.rs"]
mod garage;

use std::time::Duration;

use cluster_support::{
    boots, first_restore, lazy_reader, lazy_restores, metric, restore, still_ready, store,
    wait_for, SERIAL,
};
use common::Server;

/// `thaw_spare_claims_total{result="..."}` (`hit` or `miss`).
async fn spare_claims(server: &Server, result: &str) -> f64 {
    metric(
        server,
        &format!("thaw_spare_claims_total{{result=\"{result}\"}}"),
    )
    .await
}

/// Waits until `server` has a spare of `f` ready.
async fn a_spare_of_f(server: &Server, what: &str) {
    wait_for(what, Duration::from_secs(60), async || {
        let v = server.get("/functions/f").await.json();
        v["instances"]["spare"].as_u64().unwrap_or(0) >= 1
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_readers_first_lazy_restore_claims_a_spare_made_ahead() {
    require_root!();
    let _serial = SERIAL.lock().await;
    // Spares of lazily restored snapshots (pool's spares.rs; on by
    // default): the nodes inherit this.
    std::env::set_var("THAW_LAZY_SPARES", "1");
    let s = match store("lazyspare") {
        Ok(s) => s,
        Err(why) => skip!("{why}"),
    };
    let (mut a, mut b, snapshot) = lazy_reader(&s).await;
    let on_a = restore(&a, "f").await;
    assert_eq!(on_a.status, 200, "{}", on_a.text());
    let snapshot_born = on_a.json()["born"].clone();

    // Before any request, B makes a spare of f, which it restores lazily.
    a_spare_of_f(&b, "B has a spare of f while it restores f lazily").await;
    assert_eq!(metric(&b, "thaw_remote_lazy_snapshots").await, 1.0);
    assert_eq!(lazy_restores(&b, "ok").await, 0.0, "a copy resumed already");
    let hits = spare_claims(&b, "hit").await;

    // B's first forced restore claims it: lazy, the snapshot's state.
    let r = restore(&b, "f").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-thaw-start"), "restore");
    assert_eq!(r.header("x-thaw-spare"), "hit");
    assert_eq!(
        r.json()["born"],
        snapshot_born,
        "B's copy is not the snapshot's"
    );
    assert_eq!(
        lazy_restores(&b, "ok").await,
        1.0,
        "B's restore was not lazy"
    );
    assert_eq!(lazy_restores(&b, "boot").await, 0.0);
    wait_for("B counts the hit", Duration::from_secs(10), async || {
        spare_claims(&b, "hit").await > hits
    })
    .await;

    // Once B completed the snapshot, its spares are local ones, and serve.
    wait_for(
        "B restores f locally",
        Duration::from_secs(120),
        async || metric(&b, "thaw_remote_lazy_snapshots").await == 0.0,
    )
    .await;
    a_spare_of_f(&b, "B has a local spare of f").await;
    let local = restore(&b, "f").await;
    assert_eq!(local.status, 200, "{}", local.text());
    assert_eq!(local.header("x-thaw-start"), "restore");
    assert_eq!(local.header("x-thaw-spare"), "hit");
    assert_eq!(local.json()["born"], snapshot_born);
    assert_eq!(
        lazy_restores(&b, "ok").await,
        1.0,
        "a spare made lazily served after the completion"
    );
    assert_eq!(boots(&b, "f").await, Vec::<String>::new(), "B booted f");
    still_ready(&b, &snapshot).await;
    a.stop();
    b.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lazy_spare_claimed_with_the_store_gone_boots() {
    require_root!();
    let _serial = SERIAL.lock().await;
    std::env::set_var("THAW_LAZY_SPARES", "1");
    let mut s = match store("lazysparedown") {
        Ok(s) => s,
        Err(why) => skip!("{why}"),
    };
    let (mut a, mut b, snapshot) = lazy_reader(&s).await;
    let on_a = restore(&a, "f").await;
    assert_eq!(on_a.status, 200, "{}", on_a.text());
    let snapshot_born = on_a.json()["born"].clone();
    a_spare_of_f(&b, "B has a spare of f while it restores f lazily").await;
    let hits = spare_claims(&b, "hit").await;

    // The store gone after B made its spare: had the spare fetched f's
    // pages ahead, its copy would resume (a plain event reads nothing
    // more) and answer the snapshot's state; it boots.
    s.garage.stop();
    let r = b.invoke("f", serde_json::json!({})).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-thaw-start"), "boot");
    assert_ne!(r.json()["born"], snapshot_born, "a boot answers its own");
    wait_for("B counts the claim", Duration::from_secs(10), async || {
        spare_claims(&b, "hit").await > hits
    })
    .await;
    assert_eq!(lazy_restores(&b, "boot").await, 1.0);
    assert_eq!(lazy_restores(&b, "ok").await, 0.0);
    assert_eq!(lazy_restores(&b, "killed").await, 0.0);
    assert_eq!(metric(&b, "thaw_remote_store_up").await, 0.0);
    // No rebuild, nothing failed: on B nor on A.
    still_ready(&b, &snapshot).await;
    still_ready(&a, &snapshot).await;

    // The store back: B restores f lazily again.
    s.garage.restart().expect("garage restarts");
    let r = first_restore(&b, "f").await;
    assert_eq!(r.header("x-thaw-start"), "restore");
    assert_eq!(r.json()["born"], snapshot_born);
    assert!(lazy_restores(&b, "ok").await >= 1.0);
    a.stop();
    b.stop();
}
