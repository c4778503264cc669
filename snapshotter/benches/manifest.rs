//! Loading a snapshot manifest (`load_snapshot`) against the path before
//! 2026-12-06, which read, checked and hashed the file twice (once for its
//! format field, once whole): the same manifests, rounds interleaved.
//!
//! `cargo bench -p snapshotter --bench manifest`: the fuzz corpus's seed
//! (a sleeping process) as captured, and with its thread state repeated
//! to 16 threads; `THAW_BENCH_MANIFEST=FILE` adds a manifest of a real
//! snapshot (`DIR/snapshot.snapshot` of `thaw snapshot --out DIR`).
//! Prints the medians and the ratio before / now.

use std::path::Path;
use std::time::{Duration, Instant};

use snapshotter::snapshot::{
    load_snapshot, manifest_path, parse_snapshot, Snapshot, DIR_SNAPSHOT_ID,
};
use snapshotter::store::{encode_manifest, read_manifest};

const ROUNDS: usize = 2000;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// The path before: the format field read from the file first, then the
/// whole manifest (what `load_snapshot` does now, once).
fn load_twice(dir: &Path) -> Snapshot {
    let format: u32 = read_manifest(&manifest_path(dir, DIR_SNAPSHOT_ID)).unwrap();
    assert!(format >= 3);
    load_snapshot(dir, DIR_SNAPSHOT_ID).unwrap()
}

fn measure(name: &str, bytes: &[u8]) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(manifest_path(dir.path(), DIR_SNAPSHOT_ID), bytes).unwrap();
    let (mut before, mut now) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let t = Instant::now();
        std::hint::black_box(load_twice(dir.path()));
        before.push(t.elapsed());
        let t = Instant::now();
        std::hint::black_box(load_snapshot(dir.path(), DIR_SNAPSHOT_ID).unwrap());
        now.push(t.elapsed());
    }
    let (b, n) = (median(before), median(now));
    println!(
        "  {name:<28} {:>8} bytes  before {:>7.1} µs  now {:>7.1} µs  before/now {:.2}",
        bytes.len(),
        b.as_secs_f64() * 1e6,
        n.as_secs_f64() * 1e6,
        b.as_secs_f64() / n.as_secs_f64()
    );
}

fn main() {
    let seed = &include_bytes!("../../fuzz/corpus/snapshot_manifest/seed-sleep")[1..];
    let snapshot = parse_snapshot(seed, DIR_SNAPSHOT_ID, Path::new("seed")).unwrap();
    let mut sixteen = snapshot.clone();
    let thread = sixteen.state.threads[0].clone();
    for n in 1..16 {
        let mut t = thread.clone();
        t.tid += n;
        sixteen.state.threads.push(t);
    }
    println!("== loading a manifest (median of {ROUNDS}, rounds interleaved)");
    measure("seed, 1 thread", &encode_manifest(&snapshot).unwrap());
    measure("seed, 16 threads", &encode_manifest(&sixteen).unwrap());
    if let Some(file) = std::env::var_os("THAW_BENCH_MANIFEST") {
        measure("THAW_BENCH_MANIFEST", &std::fs::read(file).unwrap());
    }
}
