//! The populating calls of the mapping batch: the recorded working set's
//! ranges ([`working_set::populate_ranges`]) faulted in by the stub before
//! the copy resumes.
//!
//! One `madvise` per range costs a system call each (numpy-pandas: ~480
//! ranges, most of one page). Since Linux 6.13 a process may give itself
//! any advice through `process_madvise` with a vector of ranges, and since
//! 6.14 name itself without a pidfd (`PIDFD_SELF_THREAD_GROUP`): the stub
//! makes one call per advice and [`UIO_MAXIOV`] ranges instead. The
//! restorer checks once, on itself, that the kernel accepts it
//! ([`vector_supported`]); otherwise, or with `THAW_POPULATE_VECTOR=0` in
//! the server's environment, it is one `madvise` per range as before.
//! Either way the calls are best effort: a range the kernel refuses ends
//! the populating, never the restore.
//!
//! **Reads by fault-around** ([`by_fault_around`]). A read fault at page
//! `p` of a file mapping maps the pages in the page cache of the 16 pages
//! (the kernel's default `fault_around_bytes`, 64 KiB) from `p`'s
//! 16-page-aligned block start, or from the mapping's start when that is
//! later (`do_fault_around`); the pages a first invocation brought in (the
//! [`working_set::INVOKED`] ones populated for reading) are mostly such
//! blocks. `MADV_POPULATE_READ` of a whole run walks it page by page
//! (`follow_page_pte` for every page, a fault at each absent one):
//! numpy-pandas populates 4,102 pages for reading, in 223 runs over 291
//! blocks, and the walk of pages already mapped was about a quarter of the
//! populating's CPU. So each read run is populated one page per block it
//! touches, the run's *last* page in that block: its fault maps the run's
//! pages of the block from the block's (or the mapping's) start up to it;
//! and when it is mapped already, the fault that mapped it covered those
//! pages too (a fault-around window never starts after the block of the
//! page that faulted; the first page would not do: a window that starts at
//! a mapping's start inside the block before reaches into this block).
//! Pages not in the page cache, and those a fault-around passes over (a
//! folio locked, not up to date, or a readahead mark), are left to the
//! copy's own faults. Writes are unchanged (each written page is copied,
//! one by one either way).
//! On by default since every recorded page is populated for reading
//! (the `restored` exchange's too, [`working_set::for_mode`]): ~10,700
//! read pages for numpy-pandas, whose page-by-page walk made sustained
//! forced restores cost ~1 ms more CPU each than before (12.8 against
//! 11.9 ms of the machine per cold start, interleaved runs, 2026-12-07);
//! by blocks they cost what they did (12.4 against 12.6 ms).
//! `THAW_POPULATE_AROUND=0` (server environment) walks every page again.
//! (Measured alone in the suite, 2026-12-06 23:55, before that change, it
//! saved at most ~0.3 ms of the sandboxes' CPU, within the noise: docs/
//! restore.md, "Where a numpy-pandas cold start's CPU goes, AMD".)

use std::sync::OnceLock;

use super::batch::{Batch, CallName};
use super::working_set::{self, Populate};
use snapshotter::state::{AreaKind, MemoryArea, PAGE_SIZE};

/// `PIDFD_SELF_THREAD_GROUP` (Linux 6.14): the calling process, for
/// system calls taking a pidfd.
const PIDFD_SELF_THREAD_GROUP: i64 = -10001;
/// Most ranges one `process_madvise` takes (the kernel's `UIO_MAXIOV`).
pub const UIO_MAXIOV: usize = 1024;

/// Adds to `batch` (best effort) the calls populating `ranges`; returns
/// how many calls were added.
pub fn add(batch: &mut Batch, ranges: &[Populate]) -> usize {
    if ranges.is_empty() {
        return 0;
    }
    if vector_wanted() && vector_supported() {
        if let Some(calls) = vectors(batch, ranges) {
            return calls;
        }
    }
    for r in ranges {
        batch.call_best_effort(
            CallName::At("madvise(populate)", r.start),
            libc::SYS_madvise,
            [r.start, r.len, r.advice, 0, 0, 0],
        );
    }
    ranges.len()
}

/// One `process_madvise` of the stub on itself per advice and at most
/// [`UIO_MAXIOV`] ranges, their vectors in the batch's data. `None` when
/// the batch's data has no room for them (nothing added then).
fn vectors(batch: &mut Batch, ranges: &[Populate]) -> Option<usize> {
    let mut calls: Vec<(u64, u64, u64)> = Vec::new(); // (advice, iovec address, count)
    for advice in [
        working_set::MADV_POPULATE_WRITE,
        working_set::MADV_POPULATE_READ,
    ] {
        let wanted: Vec<&Populate> = ranges.iter().filter(|r| r.advice == advice).collect();
        for chunk in wanted.chunks(UIO_MAXIOV) {
            let bytes = iovecs(chunk);
            let at = batch.data(&bytes).ok()?;
            calls.push((advice, at, chunk.len() as u64));
        }
    }
    for &(advice, at, count) in &calls {
        batch.call_best_effort(
            CallName::At("process_madvise(populate)", at),
            libc::SYS_process_madvise,
            [PIDFD_SELF_THREAD_GROUP as u64, at, count, advice, 0, 0],
        );
    }
    Some(calls.len())
}

/// Pages a read fault maps around it (the kernel's default
/// `fault_around_bytes`, 64 KiB): from the 16-page-aligned block start of
/// the page that faulted, or from its mapping's start when that is later.
pub const FAULT_AROUND_PAGES: u64 = 16;

/// `ranges` (over `areas`, the snapshot's, sorted) with each
/// [`working_set::MADV_POPULATE_READ`] range replaced by one page per
/// 16-page-aligned block it touches (its last page in that block), in the
/// same order; other ranges as they are. A range lies in one area
/// ([`working_set::populate_ranges`] never crosses one), which the
/// restore maps as one mapping, so the fault of that page maps the
/// range's pages of the block up to it that are in the page cache (see the
/// module doc). Except a
/// private file area's: it is mapped run by run (the file's pages from
/// the file, the others from the image), and a fault-around stops at the
/// end of its mapping, so its read ranges are kept whole. Two ranges
/// sharing a block each keep their page (two areas: two mappings).
pub fn by_fault_around(ranges: &[Populate], areas: &[MemoryArea]) -> Vec<Populate> {
    let block = FAULT_AROUND_PAGES * PAGE_SIZE;
    let one_mapping = |start: u64| {
        let i = areas.partition_point(|a| a.end <= start);
        areas
            .get(i)
            .is_some_and(|a| a.start <= start && a.kind != AreaKind::FilePrivate)
    };
    let mut out = Vec::with_capacity(ranges.len());
    for r in ranges {
        if r.advice != working_set::MADV_POPULATE_READ || !one_mapping(r.start) {
            out.push(*r);
            continue;
        }
        let end = r.start + r.len;
        let mut from = r.start;
        while from < end {
            let block_end = (from / block + 1) * block;
            out.push(Populate {
                start: block_end.min(end) - PAGE_SIZE,
                len: PAGE_SIZE,
                advice: r.advice,
            });
            from = block_end;
        }
    }
    out
}

/// Whether read ranges are populated one page per fault-around block
/// ([`by_fault_around`]): by default; `THAW_POPULATE_AROUND=0` in the
/// server's environment walks every page (see the module docs).
pub fn around_wanted() -> bool {
    std::env::var_os("THAW_POPULATE_AROUND").is_none_or(|v| v != "0")
}

/// `struct iovec` of each range, as the kernel reads them.
fn iovecs(ranges: &[&Populate]) -> Vec<u8> {
    let mut out = Vec::with_capacity(ranges.len() * 16);
    for r in ranges {
        out.extend_from_slice(&r.start.to_ne_bytes());
        out.extend_from_slice(&r.len.to_ne_bytes());
    }
    out
}

/// Whether populating by vectors is wanted: yes unless
/// `THAW_POPULATE_VECTOR=0` in the server's environment (one `madvise` per
/// range, for measuring one against the other).
fn vector_wanted() -> bool {
    std::env::var_os("THAW_POPULATE_VECTOR").is_none_or(|v| v != "0")
}

/// Whether this kernel populates through `process_madvise` on the calling
/// process (checked once, on a page of the restorer's own).
pub fn vector_supported() -> bool {
    static SUPPORTED: OnceLock<bool> = OnceLock::new();
    *SUPPORTED.get_or_init(probe)
}

fn probe() -> bool {
    let page = 4096usize;
    // SAFETY: a fresh private anonymous page, unmapped below; nothing else
    // refers to it.
    let addr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            page,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if addr == libc::MAP_FAILED {
        return false;
    }
    let iov = libc::iovec {
        iov_base: addr,
        iov_len: page,
    };
    // SAFETY: process_madvise reads one iovec describing the page mapped
    // above and faults it in; it writes no memory of ours.
    let done = unsafe {
        libc::syscall(
            libc::SYS_process_madvise,
            PIDFD_SELF_THREAD_GROUP as libc::c_long,
            &iov as *const libc::iovec,
            1usize,
            working_set::MADV_POPULATE_WRITE as libc::c_long,
            0u32,
        )
    };
    // SAFETY: unmaps exactly the page mapped above.
    unsafe { libc::munmap(addr, page) };
    done == page as libc::c_long
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(start: u64, pages: u64, advice: u64) -> Populate {
        Populate {
            start,
            len: pages * 4096,
            advice,
        }
    }

    #[test]
    fn one_call_per_advice_and_vector() {
        if !vector_supported() {
            eprintln!("skipped: the kernel does not populate through process_madvise");
            return;
        }
        let w = working_set::MADV_POPULATE_WRITE;
        let r = working_set::MADV_POPULATE_READ;
        let mut ranges = vec![
            range(0x1000, 1, w),
            range(0x3000, 2, r),
            range(0x6000, 1, w),
        ];
        let mut batch = Batch::new(0x10_0000);
        assert_eq!(add(&mut batch, &ranges), 2);
        assert_eq!(batch.len(), 2);
        // More ranges of one advice than a vector takes: two calls for them.
        ranges.extend((0..UIO_MAXIOV as u64).map(|i| range(0x10_0000 + i * 0x2000, 1, r)));
        let mut batch = Batch::new(0x10_0000);
        assert_eq!(add(&mut batch, &ranges), 3);
    }

    fn area(start: u64, end: u64, kind: AreaKind) -> MemoryArea {
        working_set::tests::area(start, end, kind, false)
    }

    #[test]
    fn reads_become_one_page_per_fault_around_block() {
        let w = working_set::MADV_POPULATE_WRITE;
        let r = working_set::MADV_POPULATE_READ;
        let block = FAULT_AROUND_PAGES * 4096;
        let areas = vec![
            area(0, 7 * block, AreaKind::FileUnchanged),
            area(7 * block, 9 * block, AreaKind::FilePrivate),
        ];
        let ranges = vec![
            // A write run is kept whole.
            range(0x1000, 3, w),
            // A read run inside one block: its last page.
            range(block + 0x2000, 5, r),
            // A read run from the middle of a block across two more: the
            // last page of each.
            range(4 * block + 0x3000, 2 * FAULT_AROUND_PAGES, r),
            // Another run in the last block of the one before: its own
            // page (the two might be two areas).
            range(6 * block + 0x5000, 1, r),
            // A private file area's run is kept whole (mapped run by run).
            range(7 * block + 0x1000, 20, r),
        ];
        let out = by_fault_around(&ranges, &areas);
        let starts: Vec<(u64, u64, u64)> = out.iter().map(|p| (p.start, p.len, p.advice)).collect();
        assert_eq!(
            starts,
            vec![
                (0x1000, 3 * 4096, w),
                (block + 0x6000, 4096, r),
                (5 * block - 0x1000, 4096, r),
                (6 * block - 0x1000, 4096, r),
                (6 * block + 0x2000, 4096, r),
                (6 * block + 0x5000, 4096, r),
                (7 * block + 0x1000, 20 * 4096, r),
            ]
        );
        // Every page of every read run is in a run kept whole or at or
        // below a page kept in its block.
        for run in ranges.iter().filter(|x| x.advice == r) {
            for page in (run.start..run.start + run.len).step_by(4096) {
                assert!(out.iter().any(|p| p.advice == r
                    && ((p.start..p.start + p.len).contains(&page)
                        || (p.start / block == page / block && page <= p.start))));
            }
        }
    }

    #[test]
    fn the_vector_is_the_ranges() {
        let a = range(0x1000, 1, working_set::MADV_POPULATE_WRITE);
        let b = range(0x5000, 3, working_set::MADV_POPULATE_WRITE);
        let bytes = iovecs(&[&a, &b]);
        assert_eq!(bytes.len(), 32);
        assert_eq!(
            u64::from_ne_bytes(bytes[16..24].try_into().unwrap()),
            0x5000
        );
        assert_eq!(
            u64::from_ne_bytes(bytes[24..32].try_into().unwrap()),
            0x3000
        );
    }
}
