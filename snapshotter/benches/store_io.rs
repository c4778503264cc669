//! io_uring against plain syscalls and mmap for the store's I/O patterns.
//!
//! `cargo bench -p snapshotter --bench store_io` (`THAW_BENCH_MB` sets the
//! size, default 256; `THAW_BENCH_DIR` the directory, default the temp dir).
//!
//! Writes: building an image writes page-sized pieces from scattered
//! sources (mapped packs) to a new file. Reads: a page server or an image
//! builder reads whole packs. Every variant moves the same bytes; medians of
//! several runs are printed with the ratio to the plain-syscall baseline.

use std::fs::{File, OpenOptions};
use std::io::IoSlice;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

use io_uring::{opcode, types, IoUring};
use rayon::prelude::*;

const PAGE: usize = 4096;
const RUNS: usize = 5;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn mbps(bytes: usize, d: Duration) -> f64 {
    bytes as f64 / (1 << 20) as f64 / d.as_secs_f64()
}

fn fill(buf: &mut [u8]) {
    let mut x = 0x1234_5678_9abc_def1u64;
    for chunk in buf.chunks_exact_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes());
    }
}

/// Drops the file's pages from the page cache (cold reads).
fn drop_cache(file: &File) {
    file.sync_all().unwrap();
    // SAFETY: plain syscall on an open descriptor; no memory is passed.
    let rc = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    assert_eq!(rc, 0);
}

/// Submits `(offset, ptr, len)` requests with up to `depth` in flight.
fn uring_io(
    ring: &mut IoUring,
    file: &File,
    reqs: &[(u64, *mut u8, u32)],
    write: bool,
    depth: usize,
) {
    let fd = types::Fd(file.as_raw_fd());
    let mut next = 0;
    let mut inflight = 0;
    while next < reqs.len() || inflight > 0 {
        while next < reqs.len() && inflight < depth {
            let (off, ptr, len) = reqs[next];
            let entry = if write {
                opcode::Write::new(fd, ptr, len).offset(off).build()
            } else {
                opcode::Read::new(fd, ptr, len).offset(off).build()
            }
            .user_data(next as u64);
            // SAFETY: the buffers behind `ptr` outlive the ring operations:
            // this function waits for every completion before returning.
            unsafe { ring.submission().push(&entry) }.expect("queue has room: inflight < depth");
            next += 1;
            inflight += 1;
        }
        ring.submit_and_wait(1).unwrap();
        for cqe in ring.completion() {
            let i = cqe.user_data() as usize;
            assert_eq!(
                cqe.result(),
                reqs[i].2 as i32,
                "short or failed io_uring op"
            );
            inflight -= 1;
        }
    }
}

fn time<F: FnMut()>(mut f: F) -> Duration {
    let mut times = Vec::new();
    for _ in 0..RUNS {
        let t = Instant::now();
        f();
        times.push(t.elapsed());
    }
    median(times)
}

fn report(name: &str, bytes: usize, d: Duration, base: Duration) {
    println!(
        "  {name:<44} {:>9.1} MB/s  median {:>8.2} ms  x{:.2} vs baseline",
        mbps(bytes, d),
        d.as_secs_f64() * 1e3,
        base.as_secs_f64() / d.as_secs_f64()
    );
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
    let base_dir = std::env::var_os("THAW_BENCH_DIR")
        .map(Into::into)
        .unwrap_or_else(std::env::temp_dir);
    let dir = tempfile::tempdir_in(&base_dir).unwrap();
    let mut src = vec![0u8; bytes];
    fill(&mut src);
    let pages: Vec<&[u8]> = src.chunks_exact(PAGE).collect();
    println!(
        "store I/O: {mb} MiB, {RUNS} runs each, median; dir {}",
        base_dir.display()
    );

    let out = dir.path().join("out");
    let fresh = |p: &Path| -> File {
        let _ = std::fs::remove_file(p);
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(p)
            .unwrap()
    };

    println!("write {mb} MiB of pages to a new file (page cache, no fsync):");
    let base = time(|| {
        let f = fresh(&out);
        for (i, chunk) in pages.chunks(256).enumerate() {
            let mut iov: Vec<IoSlice<'_>> = chunk.iter().map(|p| IoSlice::new(p)).collect();
            write_vectored_at(&f, &mut iov, (i * 256 * PAGE) as u64);
        }
    });
    report(
        "pwritev 256 pages/call, 1 thread (baseline)",
        bytes,
        base,
        base,
    );
    let d = time(|| {
        let f = fresh(&out);
        pages.par_chunks(512).enumerate().for_each(|(i, chunk)| {
            for (j, sub) in chunk.chunks(256).enumerate() {
                let mut iov: Vec<IoSlice<'_>> = sub.iter().map(|p| IoSlice::new(p)).collect();
                write_vectored_at(&f, &mut iov, ((i * 512 + j * 256) * PAGE) as u64);
            }
        });
    });
    report(
        "pwritev 256 pages/call, all cores (image.rs)",
        bytes,
        d,
        base,
    );
    let d = time(|| {
        let f = fresh(&out);
        for (i, chunk) in src.chunks(1 << 20).enumerate() {
            f.write_all_at(chunk, (i << 20) as u64).unwrap();
        }
    });
    report("pwrite 1 MiB/call", bytes, d, base);
    let mut ring = IoUring::new(256).unwrap();
    let d = time(|| {
        let f = fresh(&out);
        let reqs: Vec<(u64, *mut u8, u32)> = src
            .chunks(1 << 20)
            .enumerate()
            .map(|(i, c)| ((i << 20) as u64, c.as_ptr() as *mut u8, c.len() as u32))
            .collect();
        uring_io(&mut ring, &f, &reqs, true, 32);
    });
    report("io_uring write 1 MiB/op, depth 32", bytes, d, base);
    let d = time(|| {
        let f = fresh(&out);
        let reqs: Vec<(u64, *mut u8, u32)> = pages
            .iter()
            .enumerate()
            .map(|(i, p)| ((i * PAGE) as u64, p.as_ptr() as *mut u8, PAGE as u32))
            .collect();
        uring_io(&mut ring, &f, &reqs, true, 256);
    });
    report("io_uring write 4 KiB/op, depth 256", bytes, d, base);

    println!("write {mb} MiB + fsync (durable image/pack):");
    let base = time(|| {
        let f = fresh(&out);
        for (i, chunk) in pages.chunks(256).enumerate() {
            let mut iov: Vec<IoSlice<'_>> = chunk.iter().map(|p| IoSlice::new(p)).collect();
            write_vectored_at(&f, &mut iov, (i * 256 * PAGE) as u64);
        }
        f.sync_all().unwrap();
    });
    report(
        "pwritev 256 pages/call + fsync (baseline)",
        bytes,
        base,
        base,
    );
    let d = time(|| {
        let f = fresh(&out);
        let reqs: Vec<(u64, *mut u8, u32)> = src
            .chunks(1 << 20)
            .enumerate()
            .map(|(i, c)| ((i << 20) as u64, c.as_ptr() as *mut u8, c.len() as u32))
            .collect();
        uring_io(&mut ring, &f, &reqs, true, 32);
        f.sync_all().unwrap();
    });
    report("io_uring write 1 MiB/op + fsync", bytes, d, base);

    // Reads of a whole file into memory.
    let f = fresh(&out);
    f.write_all_at(&src, 0).unwrap();
    f.sync_all().unwrap();
    let mut dst = vec![0u8; bytes];
    for cold in [false, true] {
        println!(
            "read {mb} MiB ({}):",
            if cold {
                "cold: page cache dropped"
            } else {
                "warm: in page cache"
            }
        );
        let prep = |f: &File| {
            if cold {
                drop_cache(f)
            }
        };
        let base = time(|| {
            prep(&f);
            // SAFETY: the file is not modified while mapped here.
            let map = unsafe { memmap2::Mmap::map(&f) }.unwrap();
            dst.copy_from_slice(&map);
        });
        report(
            "mmap + copy (baseline, how the store reads)",
            bytes,
            base,
            base,
        );
        let d = time(|| {
            prep(&f);
            for (i, chunk) in dst.chunks_mut(1 << 20).enumerate() {
                f.read_exact_at(chunk, (i << 20) as u64).unwrap();
            }
        });
        report("pread 1 MiB/call", bytes, d, base);
        let d = time(|| {
            prep(&f);
            let reqs: Vec<(u64, *mut u8, u32)> = dst
                .chunks_mut(1 << 20)
                .enumerate()
                .map(|(i, c)| ((i << 20) as u64, c.as_mut_ptr(), c.len() as u32))
                .collect();
            uring_io(&mut ring, &f, &reqs, false, 32);
        });
        report("io_uring read 1 MiB/op, depth 32", bytes, d, base);
        let d = time(|| {
            prep(&f);
            let reqs: Vec<(u64, *mut u8, u32)> = dst
                .chunks_mut(PAGE)
                .enumerate()
                .map(|(i, c)| ((i * PAGE) as u64, c.as_mut_ptr(), PAGE as u32))
                .collect();
            uring_io(&mut ring, &f, &reqs, false, 256);
        });
        report("io_uring read 4 KiB/op, depth 256", bytes, d, base);
        let d = time(|| {
            prep(&f);
            for (i, chunk) in dst.chunks_mut(PAGE).enumerate() {
                f.read_exact_at(chunk, (i * PAGE) as u64).unwrap();
            }
        });
        report("pread 4 KiB/call", bytes, d, base);
    }
}

fn write_vectored_at(file: &File, mut iov: &mut [IoSlice<'_>], mut offset: u64) {
    while !iov.is_empty() {
        let n = nix::sys::uio::pwritev(file, iov, offset as i64).unwrap();
        assert!(n > 0);
        offset += n as u64;
        IoSlice::advance_slices(&mut iov, n);
    }
}
