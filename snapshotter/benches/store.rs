//! Page store throughput: hashing, put, dedup put, image build, verify, gc.
//!
//! `cargo bench -p snapshotter --bench store` (`THAW_BENCH_MB` sets the
//! snapshot size, default 256; `THAW_BENCH_DIR` the directory, default the
//! temp dir). The snapshot is mixed like a real process: half distinct
//! random pages, a quarter zero pages, a quarter repeats of other pages.
//! Prints medians of several runs and the ratio of all cores to one core.

use std::path::Path;
use std::time::{Duration, Instant};

use snapshotter::store::{
    build_image, hash_pages_parallel, hash_pages_serial, AreaPages, PageStore, PAGE_SIZE,
};

const RUNS: usize = 5;
/// Bytes per `put_batch` call, as a capture would read them.
const BATCH: usize = 16 << 20;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn mbps(bytes: usize, d: Duration) -> f64 {
    bytes as f64 / (1 << 20) as f64 / d.as_secs_f64()
}

fn line(name: &str, bytes: usize, d: Duration) {
    println!(
        "  {name:<46} {:>9.1} MB/s  median {:>8.2} ms",
        mbps(bytes, d),
        d.as_secs_f64() * 1e3
    );
}

/// Half random, a quarter zero, a quarter copies of earlier random pages.
fn mixed(bytes: usize) -> Vec<u8> {
    let n = bytes / PAGE_SIZE;
    let mut out = vec![0u8; bytes];
    let mut x = 0x0123_4567_89ab_cdefu64;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for i in 0..n {
        match i % 4 {
            0 | 1 => {
                for w in out[i * PAGE_SIZE..(i + 1) * PAGE_SIZE].chunks_exact_mut(8) {
                    w.copy_from_slice(&next().to_le_bytes());
                }
            }
            2 => {}
            _ => {
                let src = (next() as usize % (i / 4 + 1)) * 4;
                out.copy_within(src * PAGE_SIZE..(src + 1) * PAGE_SIZE, i * PAGE_SIZE);
            }
        }
    }
    out
}

fn put_snapshot(store: &PageStore, id: &str, data: &[u8]) -> (AreaPages, Duration, Duration) {
    let t = Instant::now();
    let mut w = store.writer().unwrap();
    let mut area = AreaPages::new();
    for chunk in data.chunks(BATCH) {
        area.extend_refs(&w.put_batch(chunk).unwrap());
    }
    let put = t.elapsed();
    w.commit_snapshot(id, std::slice::from_ref(&area)).unwrap();
    (area, put, t.elapsed())
}

fn fresh_store(base: &Path) -> (tempfile::TempDir, PageStore) {
    let dir = tempfile::tempdir_in(base).unwrap();
    let store = PageStore::open(dir.path()).unwrap();
    (dir, store)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let mb: usize = std::env::var("THAW_BENCH_MB")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(256);
    let bytes = mb << 20;
    let base = std::env::var_os("THAW_BENCH_DIR")
        .map(Into::into)
        .unwrap_or_else(std::env::temp_dir);
    let cores = rayon::current_num_threads();
    let one_core = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    let data = mixed(bytes);
    println!(
        "page store: {mb} MiB snapshot (50% distinct, 25% zero, 25% repeats), {cores} cores, {RUNS} runs, medians; dir {}",
        base.display()
    );

    println!("hashing (zero check + blake3 per page):");
    let serial = median(
        (0..RUNS)
            .map(|_| time(|| drop(hash_pages_serial(&data))))
            .collect(),
    );
    let parallel = median(
        (0..RUNS)
            .map(|_| time(|| drop(hash_pages_parallel(&data))))
            .collect(),
    );
    line("1 core", bytes, serial);
    line(&format!("{cores} cores"), bytes, parallel);
    println!(
        "  ratio all cores / 1 core: x{:.2}",
        serial.as_secs_f64() / parallel.as_secs_f64()
    );

    println!("put a new snapshot into an empty store (16 MiB batches, one commit):");
    let mut puts = Vec::new();
    let mut totals = Vec::new();
    let mut puts1 = Vec::new();
    for _ in 0..RUNS {
        let (_d, store) = fresh_store(&base);
        let (_, put, total) = put_snapshot(&store, "s", &data);
        puts.push(put);
        totals.push(total);
        let (_d, store) = fresh_store(&base);
        let (_, put, _) = one_core.install(|| put_snapshot(&store, "s", &data));
        puts1.push(put);
    }
    let (put, total, put1) = (median(puts), median(totals), median(puts1));
    line("put_batch, hashing on 1 core", bytes, put1);
    line(&format!("put_batch, hashing on {cores} cores"), bytes, put);
    println!(
        "  ratio all cores / 1 core: x{:.2}",
        put1.as_secs_f64() / put.as_secs_f64()
    );
    line("put_batch + commit (fsync pack, index, root)", bytes, total);

    // A/B, interleaved: 1 MiB batches (hash, then write) against 16 MiB
    // batches (the write of each 2 MiB piece overlaps hashing the next).
    let mut serial_puts = Vec::new();
    let mut piped_puts = Vec::new();
    for _ in 0..RUNS {
        for (batch, out) in [(1 << 20, &mut serial_puts), (BATCH, &mut piped_puts)] {
            let (_d, store) = fresh_store(&base);
            let t = Instant::now();
            let mut w = store.writer().unwrap();
            for chunk in data.chunks(batch) {
                w.put_batch(chunk).unwrap();
            }
            out.push(t.elapsed());
            w.commit().unwrap();
        }
    }
    let (a, b) = (median(serial_puts), median(piped_puts));
    line("A: put_batch 1 MiB batches (hash, then write)", bytes, a);
    line("B: put_batch 16 MiB batches (pipelined)", bytes, b);
    println!("  ratio B / A: x{:.2}", a.as_secs_f64() / b.as_secs_f64());

    // Capture hands over runs of non-zero pages, often short ones.
    let small = median(
        (0..RUNS)
            .map(|_| {
                let (_d, store) = fresh_store(&base);
                let t = Instant::now();
                let mut w = store.writer().unwrap();
                for run in data.chunks(4 * PAGE_SIZE) {
                    w.put_batch(run).unwrap();
                }
                w.commit().unwrap();
                t.elapsed()
            })
            .collect(),
    );
    line("put_batch in runs of 4 pages + commit", bytes, small);

    let (_d, store) = fresh_store(&base);
    let (area, _, _) = put_snapshot(&store, "first", &data);
    let stats = store.stats().unwrap();
    println!(
        "  stored {} objects, {:.1} MiB for {mb} MiB of memory",
        stats.objects,
        stats.stored_bytes as f64 / (1 << 20) as f64
    );

    println!("put the same snapshot again (every page deduplicated):");
    let again = median(
        (0..RUNS)
            .map(|i| put_snapshot(&store, &format!("again{i}"), &data).2)
            .collect(),
    );
    line("put_batch + commit, no new objects", bytes, again);
    let stats = store.stats().unwrap();
    println!(
        "  after {} snapshots: {} objects, dedup ratio {:.2}",
        stats.snapshots, stats.objects, stats.dedup_ratio
    );

    println!("build the mmap image (verified reads on all cores, sparse, rename):");
    let img_dir = tempfile::tempdir_in(&base).unwrap();
    let image = median(
        (0..RUNS)
            .map(|i| {
                let out = img_dir.path().join(format!("{i}.img"));
                time(|| drop(build_image(&store, std::slice::from_ref(&area), &out).unwrap()))
            })
            .collect(),
    );
    line("build_image (bytes of memory)", bytes, image);
    let image1 = median(
        (0..RUNS)
            .map(|i| {
                let out = img_dir.path().join(format!("one{i}.img"));
                one_core.install(|| {
                    time(|| drop(build_image(&store, std::slice::from_ref(&area), &out).unwrap()))
                })
            })
            .collect(),
    );
    line("build_image on 1 core", bytes, image1);

    println!("open the cached image of a snapshot (restore path: load root, open):");
    store.image("first").unwrap();
    let cached = median(
        (0..RUNS)
            .map(|_| time(|| assert!(!store.image("first").unwrap().built)))
            .collect(),
    );
    println!(
        "  image() cache hit                              {:>9.2} ms",
        cached.as_secs_f64() * 1e3
    );

    println!("verify (rehash every object):");
    let verify = median(
        (0..RUNS)
            .map(|_| time(|| drop(store.verify().unwrap())))
            .collect(),
    );
    line(
        "verify (bytes of objects)",
        stats.stored_bytes as usize,
        verify,
    );

    println!("verified random reads:");
    let hashes: Vec<_> = area.hashes().copied().collect();
    let reads = median(
        (0..RUNS)
            .map(|_| {
                time(|| {
                    for h in hashes.iter().rev() {
                        std::hint::black_box(store.get(h).unwrap());
                    }
                })
            })
            .collect(),
    );
    println!(
        "  get() per page                                 {:>9.2} us",
        reads.as_secs_f64() * 1e6 / hashes.len() as f64
    );

    println!("gc after deleting all but one snapshot:");
    let (_d, store) = fresh_store(&base);
    put_snapshot(&store, "keep", &data[..bytes / 2]);
    put_snapshot(&store, "drop", &data);
    store.remove_snapshot("drop").unwrap();
    let t = Instant::now();
    let report = store.gc().unwrap();
    let gc = t.elapsed();
    println!(
        "  gc freed {} objects ({:.1} MiB), moved {} in {:.1} ms",
        report.objects_freed,
        report.bytes_freed as f64 / (1 << 20) as f64,
        report.objects_moved,
        gc.as_secs_f64() * 1e3
    );
}

fn time<F: FnOnce()>(f: F) -> Duration {
    let t = Instant::now();
    f();
    t.elapsed()
}
