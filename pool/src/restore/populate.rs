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

use std::sync::OnceLock;

use super::batch::{Batch, CallName};
use super::working_set::{self, Populate};

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
