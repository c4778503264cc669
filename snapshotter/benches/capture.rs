//! Capture benchmark: a `python3` holding ~200 MB of random bytes, waiting
//! in `read(3, …)`, captured repeatedly. Prints the median of every phase
//! (stop, state, page scan, read, hash, write) and the memory throughput.
//!
//! The sink does what the page store will do with each batch: blake3 of
//! every page (rayon, both cores) and a write of the batch to a file.
//!
//! Run: `cargo bench -p snapshotter --bench capture` (as root).

#[path = "../tests/capture_support/mod.rs"]
mod capture_support;

use std::fs::File;
use std::io::{Seek, Write};
use std::time::{Duration, Instant};

use rayon::prelude::*;
use snapshotter::capture::{capture_timed, CaptureOptions, PageSink, SinkError};

const MEGABYTES: usize = 200;
const ROUNDS: usize = 7;

const SCRIPT: &str = r#"
import os, random, sys
blob = random.randbytes(int(sys.argv[1]) << 20)
os.write(4, b"ready\n")
while True:
    data = os.read(3, 4096)
    if not data:
        break
    os.write(4, b"echo:ok\n")
"#;

/// Hashes every page and writes the batch to a file, timing both.
struct HashWriteSink {
    file: File,
    hash: Duration,
    write: Duration,
    hashes: Vec<blake3::Hash>,
    /// False: drop the pages (measures the capture alone).
    store: bool,
}

impl PageSink for HashWriteSink {
    fn pages(&mut self, _area: usize, _first_page: u64, data: &[u8]) -> Result<(), SinkError> {
        if !self.store {
            return Ok(());
        }
        let started = Instant::now();
        data.par_chunks(4096)
            .map(blake3::hash)
            .collect_into_vec(&mut self.hashes);
        self.hash += started.elapsed();
        let started = Instant::now();
        self.file
            .write_all(data)
            .map_err(|e| SinkError(Box::new(e)))?;
        self.write += started.elapsed();
        Ok(())
    }
}

fn median(mut values: Vec<Duration>) -> Duration {
    values.sort();
    values[values.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:8.2} ms", d.as_secs_f64() * 1e3)
}

fn run(
    label: &str,
    pid: i32,
    options: &CaptureOptions,
    store: bool,
    worker: &mut capture_support::Worker,
) {
    let dir = tempfile::tempdir().unwrap();
    let mut phases: [Vec<Duration>; 9] = Default::default();
    let mut bytes_read = 0;
    let mut bytes_stored = 0;
    let mut used_scan = false;
    for _ in 0..ROUNDS {
        let file = File::create(dir.path().join("pages")).unwrap();
        let mut sink = HashWriteSink {
            file,
            hash: Duration::ZERO,
            write: Duration::ZERO,
            hashes: Vec::new(),
            store,
        };
        let (_state, t) = capture_timed(pid, options, &mut sink).unwrap();
        let total = t.total();
        for (i, d) in [
            t.stop, t.state, t.scan, t.read, sink.hash, sink.write, t.pages, t.detach, total,
        ]
        .into_iter()
        .enumerate()
        {
            phases[i].push(d);
        }
        bytes_read = t.bytes_read;
        bytes_stored = t.bytes_stored;
        used_scan = t.used_pagemap_scan;
        sink.file.rewind().unwrap();
        assert!(worker.ask("x").starts_with("echo:"));
        capture_support::wait_blocked_in_read(pid);
    }
    let [stop, state, scan, read, hash, write, pages, detach, total] = phases.map(median);
    let mb = |bytes: u64, d: Duration| bytes as f64 / 1e6 / d.as_secs_f64();
    println!(
        "== {label} (PAGEMAP_SCAN used: {used_scan}, batch {} MiB, {ROUNDS} rounds, medians)",
        options.batch_bytes >> 20
    );
    println!("  stop    {}", ms(stop));
    println!("  state   {}", ms(state));
    println!("  scan    {}", ms(scan));
    println!(
        "  read    {}   {:7.0} MB/s (read + zero check)",
        ms(read),
        mb(bytes_read, read)
    );
    println!(
        "  hash    {}   {:7.0} MB/s",
        ms(hash),
        mb(bytes_stored, hash)
    );
    println!(
        "  write   {}   {:7.0} MB/s",
        ms(write),
        mb(bytes_stored, write)
    );
    println!(
        "  pages   {}   {:7.0} MB/s (read, hash, write overlapped; wall)",
        ms(pages),
        mb(bytes_read, pages)
    );
    println!("  detach  {}", ms(detach));
    println!(
        "  total   {}   {:7.0} MB/s of private memory end to end",
        ms(total),
        mb(bytes_read, total)
    );
    println!(
        "  read {:.1} MB, stored {:.1} MB",
        bytes_read as f64 / 1e6,
        bytes_stored as f64 / 1e6
    );
}

fn main() {
    if !capture_support::can_capture("capture bench")
        || !capture_support::have_python("capture bench")
    {
        return;
    }
    let size = MEGABYTES.to_string();
    let (mut worker, ready) =
        capture_support::Worker::spawn("/usr/bin/python3", &["-c", SCRIPT, &size]);
    assert_eq!(ready, "ready");
    let pid = worker.pid();
    capture_support::wait_blocked_in_read(pid);
    let default = CaptureOptions::default();
    run(
        "default, pages dropped (capture alone)",
        pid,
        &default,
        false,
        &mut worker,
    );
    run(
        "default, pages hashed and written",
        pid,
        &default,
        true,
        &mut worker,
    );
    let entries = CaptureOptions {
        pagemap_scan: false,
        ..CaptureOptions::default()
    };
    run("pagemap entry reads", pid, &entries, true, &mut worker);
    for mib in [1, 8, 64] {
        let options = CaptureOptions {
            batch_bytes: mib << 20,
            ..CaptureOptions::default()
        };
        run(
            &format!("{mib} MiB batches"),
            pid,
            &options,
            true,
            &mut worker,
        );
    }
    drop(worker);

    // A warmed data-science function: numpy and pandas imported.
    let Some(numpy) = capture_support::numpy_path("capture bench's numpy run") else {
        return;
    };
    let (mut worker, _digest) = capture_support::python("numpy", &[&numpy]);
    let pid = worker.pid();
    run(
        "python3 + numpy + pandas, hashed and written",
        pid,
        &default,
        true,
        &mut worker,
    );
}
