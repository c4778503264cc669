//! `mmap` copies record their snapshot's working set from their pagemap
//! (pages written tagged, pages the first invocation brought in tagged),
//! and later copies get the written pages copied in and the invocation's
//! pages mapped before they resume: their first invocation writes those
//! pages without a copy-on-write fault each, reads the others without a
//! read fault, and still answers from the snapshot's state; the pages
//! its restore hook read in the `restored` exchange are mapped too
//! (docs/restore.md, "mmap copies record it too").

mod common;

use std::time::{Duration, Instant};

use common::{function, Server};
use pool::restore::working_set::{self, INVOKED, WRITTEN};
use serde_json::{json, Value};

/// 8 MiB made at init; each invocation writes one byte in each of the
/// first 256 pages and puts it back (counting its own minor faults
/// meanwhile), reads one byte of each of the next 512 pages (counting
/// again), then checks the whole digest. A restore hook (run in the
/// `restored` exchange, before the first invocation) reads one byte of
/// each of the 512 pages after those, counting its faults too.
const CODE: &str = r#"
import hashlib
import thaw

def minflt():
    # Minor and major faults (a page the page cache lost is a major one).
    with open("/proc/self/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[7]) + int(fields[9])

DATA = bytearray(b"\x5a" * (8 << 20))
DIGEST = hashlib.sha256(DATA).hexdigest()
CALLS = 0
HOOK = {"faults": None, "read": None}

@thaw.on_restore
def read_at_restore():
    before = minflt()
    total = 0
    for i in range(3 << 20, 5 << 20, 4096):
        total += DATA[i]
    HOOK["faults"] = minflt() - before
    HOOK["read"] = total == 0x5a * 512

def handler(event, context):
    global CALLS
    CALLS += 1
    before = minflt()
    for i in range(0, 1 << 20, 4096):
        DATA[i] = (DATA[i] + 1) % 256
    for i in range(0, 1 << 20, 4096):
        DATA[i] = (DATA[i] - 1) % 256
    faults = minflt() - before
    before = minflt()
    total = 0
    for i in range(1 << 20, 3 << 20, 4096):
        total += DATA[i]
    read_faults = minflt() - before
    return {"calls": CALLS, "digest": hashlib.sha256(DATA).hexdigest() == DIGEST,
            "faults": faults, "read_faults": read_faults, "read": total == 0x5a * 512,
            "hook_faults": HOOK["faults"], "hook_read": HOOK["read"]}
"#;

async fn restore(server: &Server) -> Value {
    let a = server
        .invoke_raw("wsm", b"{}".to_vec(), &[("x-thaw-cold", "restore")])
        .await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.header("x-thaw-start"), "restore");
    a.json()
}

#[tokio::test]
async fn mmap_copies_record_their_working_set_and_populate_the_written_pages() {
    require_root!();
    let server = Server::start(&["--allow-forced-cold"]);
    let rec = server
        .deploy_ready(function(
            "wsm",
            CODE,
            json!({"warmup": [{}, {}], "memory_mb": 256, "keep_alive_s": 600}),
        ))
        .await;
    assert_eq!(rec["memory_mode"], "mmap", "{rec}");
    assert!(rec["working_set"].is_null(), "none before a copy: {rec}");

    let first = restore(&server).await;
    assert_eq!(first["digest"], true, "{first}");
    assert_eq!(first["calls"], 3, "the snapshot's state: {first}");
    // Nothing populated yet: a copy-on-write fault per page written, and
    // read faults on the pages read (the kernel maps the cached pages
    // around a read fault too: 13 faults for the 512 pages here).
    assert!(
        first["faults"].as_u64().unwrap() >= 256,
        "the first copy faults on each page it writes: {first}"
    );
    assert_eq!(first["read"], true, "{first}");
    assert!(
        first["read_faults"].as_u64().unwrap() >= 8,
        "the first copy faults on the pages it reads: {first}"
    );
    assert_eq!(first["hook_read"], true, "{first}");
    assert!(
        first["hook_faults"].as_u64().unwrap() >= 8,
        "the first copy faults on the pages its restore hook reads: {first}"
    );

    let t0 = Instant::now();
    let ws = loop {
        let v = server.get("/functions/wsm").await.json();
        if !v["working_set"].is_null() {
            break v["working_set"].clone();
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "none recorded: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let file = std::fs::read_dir(server.data.join("snapshots"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "workingset"))
        .expect("a .workingset next to the snapshot");
    let pages = working_set::load(&file).unwrap().unwrap();
    assert_eq!(ws["pages"].as_u64().unwrap(), pages.len() as u64, "{ws}");
    let written = pages.iter().filter(|p| *p & WRITTEN != 0).count();
    assert!(
        written >= 256,
        "the 256 pages the invocation wrote are tagged: {written} of {}",
        pages.len()
    );
    assert!(
        pages.len() > written,
        "pages only read are recorded too (untagged)"
    );
    let invoked_reads = pages
        .iter()
        .filter(|p| *p & INVOKED != 0 && *p & WRITTEN == 0)
        .count();
    assert!(
        invoked_reads >= 512,
        "the 512 pages the invocation read are tagged: {invoked_reads} of {}",
        pages.len()
    );
    assert!(
        pages.iter().any(|p| *p & (INVOKED | WRITTEN) == 0),
        "pages the `restored` exchange brought in are not tagged"
    );
    // Unless THAW_POPULATE says otherwise (`invoked`: the first
    // invocation's reads only, as before), those are populated too.
    let exchange_populated = std::env::var("THAW_POPULATE").map_or(true, |v| v == "all");

    // Copies restored with the written pages copied in and the read ones
    // mapped answer from the snapshot's state, with the right bytes, and
    // write and read those pages without faulting on each.
    for _ in 0..3 {
        let a = restore(&server).await;
        assert_eq!(a["digest"], true, "{a}");
        assert_eq!(a["read"], true, "{a}");
        assert_eq!(a["calls"], 3, "{a}");
        assert!(
            a["faults"].as_u64().unwrap() < 64,
            "the written pages were populated before the resume: {a}"
        );
        assert!(
            a["read_faults"].as_u64().unwrap() < 4,
            "the pages read were mapped before the resume: {a}"
        );
        assert_eq!(a["hook_read"], true, "{a}");
        if exchange_populated {
            assert!(
                a["hook_faults"].as_u64().unwrap() < 4,
                "the pages the restore hook read were mapped before the resume: {a}"
            );
        }
    }
}
