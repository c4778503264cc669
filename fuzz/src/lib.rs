//! What every fuzz target shares: an allocator that turns one unbounded
//! allocation into a crash, and helpers that put a fuzzer's bytes behind the
//! checksums thaw's formats carry (so that mutations reach the decoders
//! instead of dying at the checksum).
//!
//! libFuzzer's own `-malloc_limit_mb` needs a sanitizer's malloc hooks; the
//! targets are built without a sanitizer (docs/fuzzing.md says why), so the
//! limit is enforced here: any single allocation larger than
//! [`MAX_ALLOCATION`] prints its size and aborts, which libFuzzer reports as
//! a crash and saves the input. `-rss_limit_mb` in `fuzz/run.sh` bounds the
//! total.

use std::alloc::{GlobalAlloc, Layout, System};

/// The largest single allocation a parser may make while decoding a fuzz
/// input (at most a few hundred KiB). The runtime-protocol reader reserves
/// up to 16 MiB for a body by design; anything beyond 64 MiB is a length
/// taken from the input without a bound.
pub const MAX_ALLOCATION: usize = 64 << 20;

/// [`System`], refusing any allocation above [`MAX_ALLOCATION`] by aborting.
#[derive(Debug)]
pub struct LimitedAlloc;

impl LimitedAlloc {
    fn check(size: usize) {
        if size > MAX_ALLOCATION {
            // Not `eprintln!`: formatting may allocate, and we are inside
            // the allocator. A fixed message and the size in hex by hand.
            let mut msg = *b"thaw-fuzz: allocation of 0x0000000000000000 bytes exceeds the limit\n";
            let digits = b"0123456789abcdef";
            for i in 0..16 {
                msg[27 + i] = digits[(size >> (60 - 4 * i)) & 0xf];
            }
            // SAFETY: writes a stack buffer of the given length to stderr.
            unsafe {
                libc::write(2, msg.as_ptr().cast(), msg.len());
            }
            std::process::abort();
        }
    }
}

// SAFETY: every method forwards to `System` with the same arguments after a
// size check that only aborts; the layout contracts pass through unchanged.
unsafe impl GlobalAlloc for LimitedAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        Self::check(layout.size());
        // SAFETY: same layout as our caller's, which meets `alloc`'s contract.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        Self::check(layout.size());
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System` with this layout (every
        // allocation goes through us to `System`).
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        Self::check(new_size);
        // SAFETY: `ptr`/`layout` as for `dealloc`; `new_size` is the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: LimitedAlloc = LimitedAlloc;

/// A `THAWSNAP` container (see `snapshotter::store::decode_manifest`)
/// holding `payload` with a correct length and checksum.
pub fn wrap_manifest(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(snapshotter::store::MANIFEST_HEADER_LEN + payload.len());
    out.extend_from_slice(&snapshotter::store::MANIFEST_MAGIC);
    out.extend_from_slice(&snapshotter::store::MANIFEST_VERSION.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(blake3::hash(payload).as_bytes());
    out.extend_from_slice(payload);
    out
}

/// Splits a fuzz input into a mode byte and the rest (mode 0 for an empty
/// input).
pub fn mode(data: &[u8]) -> (u8, &[u8]) {
    match data.split_first() {
        Some((m, rest)) => (*m, rest),
        None => (0, data),
    }
}
