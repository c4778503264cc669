//! Crash safety: the test binary re-runs itself as a child that writes to a
//! store with `THAW_FAILPOINT=<name>` set, so it aborts (SIGABRT, no cleanup)
//! at that point; the parent then checks the store it left behind.
//!
//! For every failure point the store must pass `verify`, every snapshot that
//! has a root must read back exactly as written (no partial snapshot), every
//! published image and manifest must be whole, and the next writer and gc
//! must work and leave no debris.

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};

use serde::{Deserialize, Serialize};
use snapshotter::store::{
    failpoint, read_manifest, write_manifest, AreaPages, PageSlot, PageStore, PAGE_SIZE,
};

const CHILD_DIR_ENV: &str = "THAW_STORE_CRASH_DIR";

fn page(seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(PAGE_SIZE);
    while out.len() < PAGE_SIZE {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out
}

fn pages(seeds: &[u64]) -> Vec<u8> {
    seeds
        .iter()
        .flat_map(|&s| if s == 0 { vec![0; PAGE_SIZE] } else { page(s) })
        .collect()
}

/// Page seeds of each snapshot the workload writes (0 = zero page).
fn seeds_of(id: &str) -> Vec<u64> {
    match id {
        "base" => (1..=40).chain([0, 0]).collect(),
        // Shares 1..=10 with base.
        "one" => (1..=10).chain(100..=1400).chain([0]).collect(),
        // Shares 100..=199 with one.
        "two" => (100..=199).chain(2000..=2300).collect(),
        "after" => (3000..=3010).collect(),
        other => panic!("unknown snapshot {other}"),
    }
}

/// The capture side's manifest, standing in for the real one.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct FakeManifest {
    id: String,
    registers: Vec<u64>,
    areas: Vec<AreaPages>,
}

/// Writes snapshot `id` in two batches.
fn write_snapshot(store: &PageStore, id: &str) -> AreaPages {
    let seeds = seeds_of(id);
    let mut w = store.writer().unwrap();
    let half = seeds.len() / 2;
    let mut refs = w.put_batch(&pages(&seeds[..half])).unwrap();
    refs.extend(w.put_batch(&pages(&seeds[half..])).unwrap());
    let area = AreaPages::from_refs(&refs);
    w.commit_snapshot(id, std::slice::from_ref(&area)).unwrap();
    area
}

/// What the child does: every kind of store write, in order.
fn workload(dir: &Path) {
    let store = PageStore::open(dir).unwrap();
    let one = write_snapshot(&store, "one");
    write_manifest(
        &dir.join("one.manifest"),
        &FakeManifest {
            id: "one".into(),
            registers: vec![1, 2, 3],
            areas: vec![one],
        },
    )
    .unwrap();
    store.image("one").unwrap();
    write_snapshot(&store, "two");
    store.remove_snapshot("one").unwrap();
    store.gc().unwrap();
}

/// The child's entry point; does nothing in a normal test run.
#[test]
fn crash_child_workload() {
    if let Some(dir) = std::env::var_os(CHILD_DIR_ENV) {
        workload(Path::new(&dir));
    }
}

fn run_child(dir: &Path, point: Option<&str>) -> std::process::Output {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "crash_child_workload",
        "--exact",
        "--nocapture",
        "--test-threads",
        "1",
    ])
    .env(CHILD_DIR_ENV, dir)
    .env_remove(failpoint::ENV)
    .stdin(Stdio::null());
    if let Some(p) = point {
        cmd.env(failpoint::ENV, p);
    }
    cmd.output().unwrap()
}

/// Checks everything a restore could use in the store at `dir`.
fn check_store(dir: &Path, context: &str) {
    let store = PageStore::open(dir).unwrap();
    let report = store
        .verify()
        .unwrap_or_else(|e| panic!("{context}: verify: {e}"));
    // Every rooted snapshot reads back whole.
    for id in store.snapshot_ids().unwrap() {
        let root = store.load_root(&id).unwrap();
        assert_eq!(root.areas.len(), 1, "{context}: {id}");
        let slots: Vec<PageSlot> = root.areas[0].iter().collect();
        let seeds = seeds_of(&id);
        assert_eq!(slots.len(), seeds.len(), "{context}: {id}");
        for (slot, seed) in slots.iter().zip(&seeds) {
            match (slot, seed) {
                (PageSlot::Zero, 0) => {}
                (PageSlot::Hash(h), s) if *s != 0 => {
                    assert_eq!(&store.get(h).unwrap()[..], &page(*s)[..], "{context}: {id}");
                }
                other => panic!("{context}: {id}: unexpected {other:?}"),
            }
        }
    }
    // A published manifest is whole.
    let manifest = dir.join("one.manifest");
    if manifest.exists() {
        let m: FakeManifest =
            read_manifest(&manifest).unwrap_or_else(|e| panic!("{context}: manifest: {e}"));
        assert_eq!(m.registers, vec![1, 2, 3]);
    }
    // A published image is whole.
    for entry in std::fs::read_dir(dir.join("images")).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        let bytes = std::fs::read(entry.path()).unwrap();
        assert!(name.starts_with("one."), "{context}: {name}");
        assert_eq!(bytes, pages(&seeds_of("one")), "{context}: image {name}");
    }
    // The next writer cleans up after the crash and works.
    write_snapshot(&store, "after");
    let report2 = store.verify().unwrap();
    assert!(report2.orphan_packs.is_empty(), "{context}: {report2:?}");
    assert!(report2.torn_index_tail.is_none(), "{context}: {report2:?}");
    store.gc().unwrap();
    let report3 = store.verify().unwrap();
    assert!(report3.objects_checked > 0, "{context}");
    let _ = report;
    // And every remaining snapshot still reads back.
    for id in store.snapshot_ids().unwrap() {
        for h in store.load_root(&id).unwrap().areas[0].hashes() {
            store.get(h).unwrap();
        }
    }
    // No temporary files survive a gc, whatever the crash left.
    for sub in ["packs", "roots"] {
        for entry in std::fs::read_dir(dir.join(sub)).unwrap() {
            let name = entry.unwrap().file_name().to_string_lossy().into_owned();
            assert!(!name.ends_with(".tmp"), "{context}: {sub}/{name} left");
        }
    }
}

fn prepare(dir: &Path) {
    let store = PageStore::open(dir).unwrap();
    write_snapshot(&store, "base");
}

#[test]
fn workload_without_crash_completes() {
    let dir = tempfile::tempdir().unwrap();
    prepare(dir.path());
    let out = run_child(dir.path(), None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let store = PageStore::open(dir.path()).unwrap();
    assert_eq!(store.snapshot_ids().unwrap(), vec!["base", "two"]);
    check_store(dir.path(), "no crash");
}

#[test]
fn dying_at_every_failure_point_leaves_a_usable_store() {
    for point in failpoint::NAMES {
        let dir = tempfile::tempdir().unwrap();
        prepare(dir.path());
        let out = run_child(dir.path(), Some(point));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.signal(),
            Some(libc::SIGABRT),
            "failure point {point} was not reached: {:?}\n{stderr}",
            out.status
        );
        assert!(
            stderr.contains(&format!("failure point {point} reached")),
            "{point}: {stderr}"
        );
        check_store(dir.path(), point);
        eprintln!("failure point {point}: store consistent");
    }
}
