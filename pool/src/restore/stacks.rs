//! Which areas mmap mode maps anonymous and writes (the thread stacks),
//! narrowed with the image's content.
//!
//! [`super::thread::thread_stack_areas`] takes, besides the areas holding a
//! thread's stack pointer, every read-write anonymous area sitting right
//! above a `PROT_NONE` one, so that stacks glibc keeps in its cache after a
//! thread exits are found too. Managed runtimes lay out much bigger memory
//! the same way: the JVM's old generation sits above the uncommitted tail
//! of the young one, and each glibc malloc arena above the `PROT_NONE` tail
//! of the previous arena's 64 MiB reservation. Taken for stacks, those are
//! copied into every copy instead of shared from the image: measured on
//! `examples/java-inventory`, 55 MB written per restore (about 100 ms on
//! 2 vCPUs, and 55 MB of private memory per idle copy).
//!
//! A glibc stack, in use or cached, carries its thread descriptor at the
//! top of the area (TLS variant II on x86_64: `struct pthread` starts with
//! `tcbhead_t { void *tcb; dtv_t *dtv; void *self; ... }`, whose `tcb` and
//! `self` both point to the descriptor itself). [`eager_areas`] keeps an
//! area matched only by its guard when its last [`TOP`] bytes in the image
//! hold such a self-pointing pair; an area holding a thread's stack pointer
//! is kept whatever it holds. A missed stack would only be one that is
//! neither in use nor glibc's (no descriptor at its top), which glibc does
//! not free with signals blocked.

use std::collections::HashSet;
use std::fs::File;
use std::os::unix::fs::FileExt;

use snapshotter::state::{AreaKind, MemoryArea, ProcessState};
use snapshotter::store::ImageLayout;

/// Bytes at the top of an area searched for the thread descriptor: glibc
/// places it within `sizeof(struct pthread)` (about 2.3 KiB) plus the TLS
/// alignment of the top.
pub const TOP: u64 = 16 * 1024;

/// True if `top`, the bytes ending an area at address `top_addr` +
/// `top.len()`, holds a glibc thread descriptor: an 8-byte-aligned word
/// equal to its own address whose second next word is that address too.
pub fn holds_thread_descriptor(top: &[u8], top_addr: u64) -> bool {
    let word = |at: usize| -> Option<u64> {
        top.get(at..at + 8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
    };
    let first = (8 - (top_addr % 8) as usize) % 8;
    (first..top.len().saturating_sub(23)).step_by(8).any(|at| {
        let addr = top_addr + at as u64;
        word(at) == Some(addr) && word(at + 16) == Some(addr)
    })
}

/// The areas to map anonymous and write in mmap mode: those of
/// [`super::thread::thread_stack_areas`] that hold a thread's stack pointer
/// or a glibc thread descriptor (read from the image), with the guard
/// below each. An image that cannot be read keeps every candidate (a false
/// match only costs copying).
pub fn eager_areas(state: &ProcessState, image: &File, layout: &ImageLayout) -> HashSet<usize> {
    let candidates = super::thread::thread_stack_areas(state);
    let areas = &state.areas;
    let holds_sp = |a: &MemoryArea| {
        state.threads[1..]
            .iter()
            .any(|t| (a.start..a.end).contains(&t.registers.rsp))
    };
    let descriptor = |i: usize| -> bool {
        let (a, Some(place)) = (&areas[i], layout.areas.get(i)) else {
            return true;
        };
        let len = a.len().min(TOP);
        let mut buf = vec![0u8; len as usize];
        match image.read_exact_at(&mut buf, place.offset + a.len() - len) {
            Ok(()) => holds_thread_descriptor(&buf, a.end - len),
            Err(_) => true,
        }
    };
    let mut out = HashSet::new();
    for &i in &candidates {
        let a = &areas[i];
        let rw = a.kind == AreaKind::Anonymous && a.prot.read && a.prot.write;
        if rw && (holds_sp(a) || descriptor(i)) {
            out.insert(i);
            if i > 0 && candidates.contains(&(i - 1)) && !areas[i - 1].prot.write {
                out.insert(i - 1);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(buf: &mut [u8], at: usize, v: u64) {
        buf[at..at + 8].copy_from_slice(&v.to_le_bytes());
    }

    #[test]
    fn a_self_pointing_descriptor_is_found_and_look_alikes_are_not() {
        let base = 0x7f00_0000_0000u64;
        let mut top = vec![0u8; 4096];
        assert!(!holds_thread_descriptor(&top, base));
        // tcb == self == its own address, dtv between.
        let at = 0x6c0;
        put(&mut top, at, base + at as u64);
        put(&mut top, at + 8, 0x5555_0000);
        put(&mut top, at + 16, base + at as u64);
        assert!(holds_thread_descriptor(&top, base));
        // Only the first word self-pointing (a list head, say): not one.
        put(&mut top, at + 16, 0);
        assert!(!holds_thread_descriptor(&top, base));
        // Right at the end, the pair must fit.
        let mut top = vec![0u8; 64];
        put(&mut top, 40, base + 40);
        assert!(!holds_thread_descriptor(&top, base));
        put(&mut top, 32, base + 32);
        put(&mut top, 48, base + 32);
        assert!(holds_thread_descriptor(&top, base));
        // Unaligned words are not considered.
        let mut top = vec![0u8; 64];
        put(&mut top, 4, base + 4);
        put(&mut top, 20, base + 4);
        assert!(!holds_thread_descriptor(&top, base));
    }
}
