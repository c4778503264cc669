//! A process tree restored lazily on a reader (docs/cluster.md, "Lazy
//! restore in the server"): a Python function whose init starts a helper
//! child process (talking over pipes, holding 6 MiB of random bytes of its
//! own) is deployed on the writer A; B, whose local store is empty, answers
//! its first forced restore by restoring the tree lazily from the shared
//! store (`thaw_remote_lazy_restores_total{result="ok"}` = 1, bytes
//! fetched, no boot): parent and helper answer with the snapshot's state
//! (the helper's pages came through the lazy source: B has nothing local).
//! Once B completed the snapshot locally, it restores the tree from there.
//!
//! Needs root (sandboxes) and the garage binary (`./dev.sh s3`).

mod cluster_support;
mod common;
#[path = "../../test-support/garage.rs"]
mod garage;

use std::time::Duration;

use cluster_support::{
    boots, first_restore, lazy_restores, metric, restore, store, wait_for, SERIAL,
};
use common::function;

const TREE: &str = r#"
import hashlib, json, os, subprocess, sys, time

HELPER_CODE = r'''
import hashlib, json, os, sys
BUF = os.urandom(6 << 20)
TOKEN = os.urandom(8).hex()
count = 0
for line in sys.stdin:
    count += 1
    answer = [TOKEN, hashlib.sha256(BUF).hexdigest(), count, os.getpid()]
    print(json.dumps(answer), flush=True)
'''

HELPER = subprocess.Popen(
    [sys.executable, "-c", HELPER_CODE],
    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1,
    start_new_session=True,
)
MINE = os.urandom(4 << 20)
BORN = time.time_ns()

def ask():
    HELPER.stdin.write("state\n")
    HELPER.stdin.flush()
    answer = HELPER.stdout.readline()
    if not answer:
        raise RuntimeError("the helper is gone (status %r)" % HELPER.poll())
    return json.loads(answer)

ask()  # the helper runs before the snapshot

def handler(event, context):
    token, digest, count, pid = ask()
    return {
        "born": BORN,
        "mine": hashlib.sha256(MINE).hexdigest(),
        "helper": {"token": token, "digest": digest, "count": count, "pid": pid},
        "popen_pid": HELPER.pid,
    }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_tree_restores_lazily_on_a_reader() {
    require_root!();
    let _serial = SERIAL.lock().await;
    let s = match store("lazytree") {
        Ok(s) => s,
        Err(why) => skip!("{why}"),
    };
    let a = s.writer();
    let b = s.reader();

    let v = a
        .deploy_ready(function(
            "tree",
            TREE,
            serde_json::json!({"keep_alive_s": 600}),
        ))
        .await;
    assert_eq!(v["state"], "ready", "{v}");
    assert!(v["snapshot"]["id"].is_string(), "{v}");
    let on_a = restore(&a, "tree").await;
    assert_eq!(on_a.status, 200, "{}", on_a.text());
    assert_eq!(on_a.header("x-thaw-start"), "restore");
    let snapshot = on_a.json();
    assert_eq!(
        snapshot["helper"]["count"], 2,
        "the helper answered once before the snapshot: {snapshot}"
    );
    assert_eq!(snapshot["helper"]["pid"], snapshot["popen_pid"]);

    // B's first restore: lazy, the whole tree.
    let on_b = first_restore(&b, "tree").await;
    assert_eq!(on_b.header("x-thaw-start"), "restore");
    let answer = on_b.json();
    assert_eq!(answer, snapshot, "B's tree is not the snapshot's");
    assert_eq!(
        lazy_restores(&b, "ok").await,
        1.0,
        "B's restore of the tree was not lazy"
    );
    assert_eq!(lazy_restores(&b, "boot").await, 0.0);
    assert_eq!(lazy_restores(&b, "killed").await, 0.0);
    let fetched = metric(&b, "thaw_remote_fetched_bytes").await;
    assert!(
        fetched > (6 << 20) as f64,
        "B fetched {fetched} bytes: less than the helper's own memory"
    );
    assert_eq!(boots(&b, "tree").await, Vec::<String>::new(), "B booted");

    // Then B completes the snapshot locally and restores the tree from it.
    wait_for(
        "B completed the tree's snapshot",
        Duration::from_secs(120),
        async || metric(&b, "thaw_remote_snapshot_fetches_total{result=\"ok\"}").await >= 1.0,
    )
    .await;
    wait_for(
        "B restores the tree locally",
        Duration::from_secs(10),
        async || metric(&b, "thaw_remote_lazy_snapshots").await == 0.0,
    )
    .await;
    let local = restore(&b, "tree").await;
    assert_eq!(local.status, 200, "{}", local.text());
    assert_eq!(local.header("x-thaw-start"), "restore");
    assert_eq!(local.json(), snapshot);
    assert_eq!(lazy_restores(&b, "ok").await, 1.0);
    assert_eq!(boots(&b, "tree").await, Vec::<String>::new(), "B booted");
    cluster_support::verify(&b.data);
}
