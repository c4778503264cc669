//! Rebuilding the address space of the copy inside the stub (mmap mode).
//!
//! ```text
//! stub's map:   [its binary, heap, libs, stack ...]  [vvar][vvar_vclock][vdso]
//!   1. scratch: one anonymous area in a hole of the saved map
//!   2. munmap everything but the scratch and the special areas
//!   3. mremap [vvar] [vvar_vclock] [vdso] to a temporary hole, then to the
//!      saved addresses (two steps, so no move ever overlaps another area)
//!   4. map every saved area at its address with its protection:
//!        file areas        the same file (identity checked), same offset;
//!                          FilePrivate: stored pages written over it
//!        anonymous, heap,  MAP_PRIVATE of the snapshot's image file at the
//!        copied files      area's offset in the image (copy on write)
//!        stack             anonymous MAP_GROWSDOWN, stored pages written in
//! ```

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;

use snapshotter::capture::maps::{parse_maps, Pseudo};
use snapshotter::state::{AreaKind, MemoryArea, PAGE_SIZE};
use snapshotter::store::{AreaPages, ImageLayout, PageSlot};

use super::remote::Remote;
use super::RestoreError;

/// Size of the scratch area (arguments of injected calls).
pub const SCRATCH_LEN: u64 = 4 * PAGE_SIZE;
/// Lowest address used for scratch and temporary areas.
const LOW: u64 = 0x10_0000;
/// Highest user address (47-bit address space).
const TASK_END: u64 = 0x7fff_ffff_f000;

/// A special kernel area of the stub or of the snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Special {
    /// Which one.
    pub kind: AreaKind,
    /// First address.
    pub start: u64,
    /// Length in bytes.
    pub len: u64,
}

/// The stub's memory map as far as the restore cares.
#[derive(Debug, Clone)]
pub struct StubMap {
    /// `[vvar]`, `[vvar_vclock]`, `[vdso]`.
    pub specials: Vec<Special>,
}

/// Reads the stub's special areas.
pub fn stub_map(pid: i32) -> Result<StubMap, RestoreError> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/maps")).map_err(|source| {
        RestoreError::Io {
            what: format!("read /proc/{pid}/maps"),
            source,
        }
    })?;
    let entries = parse_maps(&text).map_err(|e| RestoreError::Stub(e.to_string()))?;
    let specials = entries
        .iter()
        .filter_map(|e| {
            let kind = match e.pseudo() {
                Pseudo::Vdso => AreaKind::Vdso,
                Pseudo::Vvar => AreaKind::Vvar,
                Pseudo::VvarVclock => AreaKind::VvarVclock,
                _ => return None,
            };
            Some(Special {
                kind,
                start: e.start,
                len: e.end - e.start,
            })
        })
        .collect();
    Ok(StubMap { specials })
}

/// The special areas of the snapshot.
pub fn saved_specials(areas: &[MemoryArea]) -> Vec<Special> {
    areas
        .iter()
        .filter(|a| {
            matches!(
                a.kind,
                AreaKind::Vdso | AreaKind::Vvar | AreaKind::VvarVclock
            )
        })
        .map(|a| Special {
            kind: a.kind,
            start: a.start,
            len: a.len(),
        })
        .collect()
}

/// The lowest address >= [`LOW`] where `len` bytes plus a guard page on each
/// side touch none of `busy` (ranges `[start, end)`).
pub fn find_hole(busy: &[(u64, u64)], len: u64) -> Option<u64> {
    let mut busy: Vec<(u64, u64)> = busy.to_vec();
    busy.sort_unstable();
    let mut candidate = LOW;
    for &(start, end) in &busy {
        if end + PAGE_SIZE <= candidate {
            continue;
        }
        if candidate + len + PAGE_SIZE <= start {
            return Some(candidate);
        }
        candidate = candidate.max(end + PAGE_SIZE);
    }
    (candidate + len <= TASK_END).then_some(candidate)
}

const MAP_FIXED: u64 = libc::MAP_FIXED as u64;

/// Maps the scratch area, unmaps everything else of the stub but the
/// special areas, and moves those to their saved addresses.
pub fn clear_and_move_specials(
    remote: &mut Remote,
    stub: &StubMap,
    areas: &[MemoryArea],
) -> Result<(), RestoreError> {
    let saved = saved_specials(areas);
    let mut busy: Vec<(u64, u64)> = areas
        .iter()
        .filter(|a| a.kind != AreaKind::Vsyscall)
        .map(|a| (a.start, a.end))
        .collect();
    busy.extend(stub.specials.iter().map(|s| (s.start, s.start + s.len)));
    let scratch = find_hole(&busy, SCRATCH_LEN).ok_or(RestoreError::NoRoom("scratch"))?;
    busy.push((scratch, scratch + SCRATCH_LEN));
    let special_len: u64 = stub.specials.iter().map(|s| s.len + PAGE_SIZE).sum();
    let temp = find_hole(&busy, special_len).ok_or(RestoreError::NoRoom("vDSO move"))?;

    remote.sys(
        "mmap (scratch)",
        libc::SYS_mmap,
        [
            scratch,
            SCRATCH_LEN,
            (libc::PROT_READ | libc::PROT_WRITE) as u64,
            (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64 | MAP_FIXED,
            u64::MAX,
            0,
        ],
    )?;
    remote.scratch = Some((scratch, SCRATCH_LEN));

    // Unmap the complement of the scratch and the specials.
    let mut keep: Vec<(u64, u64)> = stub
        .specials
        .iter()
        .map(|s| (s.start, s.start + s.len))
        .collect();
    keep.push((scratch, scratch + SCRATCH_LEN));
    keep.sort_unstable();
    let mut at = 0u64;
    for &(start, end) in keep.iter().chain(std::iter::once(&(TASK_END, TASK_END))) {
        if start > at {
            remote.sys(
                "munmap (stub)",
                libc::SYS_munmap,
                [at, start - at, 0, 0, 0, 0],
            )?;
        }
        at = at.max(end);
    }

    // Special areas: the same set, the same sizes, moved in two steps.
    for s in &stub.specials {
        if !saved.iter().any(|d| d.kind == s.kind) {
            remote.sys(
                "munmap (special)",
                libc::SYS_munmap,
                [s.start, s.len, 0, 0, 0, 0],
            )?;
        }
    }
    let vdso = stub.specials.iter().find(|s| s.kind == AreaKind::Vdso);
    let syscall_offset = vdso.map(|v| remote.syscall_address() - v.start);
    let mut moves = Vec::new();
    let mut t = temp;
    for d in &saved {
        let Some(s) = stub.specials.iter().find(|s| s.kind == d.kind) else {
            return Err(RestoreError::Incompatible(format!(
                "the snapshot has {:?} but this kernel gives none",
                d.kind
            )));
        };
        if s.len != d.len {
            return Err(RestoreError::Incompatible(format!(
                "{:?} is {} bytes here, {} in the snapshot",
                d.kind, s.len, d.len
            )));
        }
        moves.push((*s, t, d.start));
        t += s.len + PAGE_SIZE;
    }
    let remap = (libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED) as u64;
    for &(s, t, _) in &moves {
        remote.sys(
            "mremap (special to temporary)",
            libc::SYS_mremap,
            [s.start, s.len, s.len, remap, t, 0],
        )?;
        if s.kind == AreaKind::Vdso {
            remote.set_syscall_address(t + syscall_offset.unwrap_or(0));
        }
    }
    for &(s, t, d) in &moves {
        remote.sys(
            "mremap (special to saved address)",
            libc::SYS_mremap,
            [t, s.len, s.len, remap, d, 0],
        )?;
        if s.kind == AreaKind::Vdso {
            remote.set_syscall_address(d + syscall_offset.unwrap_or(0));
        }
    }
    Ok(())
}

/// Descriptors the stub holds for mapping.
#[derive(Debug)]
pub struct MapSources<'a> {
    /// Stub fd of each mapped file, by area index.
    pub area_fds: &'a HashMap<usize, i32>,
    /// Stub fd of the image.
    pub image_fd: i32,
    /// The image, for reading pages in the restorer.
    pub image: &'a File,
    /// Where each area lies in the image.
    pub layout: &'a ImageLayout,
}

/// Maps every saved area (see the module doc).
pub fn map_areas(
    remote: &mut Remote,
    areas: &[MemoryArea],
    pages: &[AreaPages],
    sources: &MapSources<'_>,
) -> Result<(), RestoreError> {
    for (index, area) in areas.iter().enumerate() {
        let prot = area.prot.to_prot() as u64;
        let len = area.len();
        let what = |how: &str| format!("mmap {how} at {:#x}-{:#x}", area.start, area.end);
        match area.kind {
            AreaKind::Vdso | AreaKind::Vvar | AreaKind::VvarVclock | AreaKind::Vsyscall => {}
            AreaKind::FileUnchanged | AreaKind::FilePrivate => {
                let fd = sources.area_fds[&index];
                let share = if area.shared {
                    libc::MAP_SHARED
                } else {
                    libc::MAP_PRIVATE
                };
                remote.sys(
                    &what("(file)"),
                    libc::SYS_mmap,
                    [
                        area.start,
                        len,
                        prot,
                        share as u64 | MAP_FIXED,
                        fd as u64,
                        area.offset,
                    ],
                )?;
                if area.kind == AreaKind::FilePrivate {
                    write_pages(remote, index, area, &pages[index], sources, true)?;
                }
            }
            AreaKind::Anonymous | AreaKind::Heap | AreaKind::FileCopied => {
                if area.shared {
                    return Err(RestoreError::Unsupported(format!(
                        "shared memory at {:#x}-{:#x}",
                        area.start, area.end
                    )));
                }
                let offset = sources.layout.areas[index].offset;
                remote.sys(
                    &what("(image)"),
                    libc::SYS_mmap,
                    [
                        area.start,
                        len,
                        prot,
                        libc::MAP_PRIVATE as u64 | MAP_FIXED,
                        sources.image_fd as u64,
                        offset,
                    ],
                )?;
            }
            AreaKind::Stack => {
                remote.sys(
                    &what("(stack)"),
                    libc::SYS_mmap,
                    [
                        area.start,
                        len,
                        prot,
                        (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_GROWSDOWN) as u64
                            | MAP_FIXED,
                        u64::MAX,
                        0,
                    ],
                )?;
                write_pages(remote, index, area, &pages[index], sources, false)?;
            }
        }
    }
    Ok(())
}

/// Writes the stored pages of area `index` (and, over a file, its zero
/// pages) from the image into the stub, in runs of consecutive pages.
fn write_pages(
    remote: &Remote,
    index: usize,
    area: &MemoryArea,
    pages: &AreaPages,
    sources: &MapSources<'_>,
    zeros_too: bool,
) -> Result<(), RestoreError> {
    let area_offset = sources.layout.areas[index].offset;
    let mut buf = Vec::new();
    let mut flush = |run: &mut Option<(u64, u64)>| -> Result<(), RestoreError> {
        if let Some((first, count)) = run.take() {
            buf.resize((count * PAGE_SIZE) as usize, 0);
            sources
                .image
                .read_exact_at(&mut buf, area_offset + first * PAGE_SIZE)
                .map_err(|source| RestoreError::Io {
                    what: "read the image".into(),
                    source,
                })?;
            remote.write(area.start + first * PAGE_SIZE, &buf)?;
        }
        Ok(())
    };
    // (first page, count) of the run being collected.
    let mut run: Option<(u64, u64)> = None;
    for (i, slot) in pages.iter().enumerate() {
        let i = i as u64;
        let wanted = match slot {
            PageSlot::Hash(_) => true,
            PageSlot::Zero => zeros_too,
            PageSlot::File => false,
        };
        if wanted {
            match &mut run {
                Some((first, count)) if *first + *count == i => *count += 1,
                _ => {
                    flush(&mut run)?;
                    run = Some((i, 1));
                }
            }
        } else {
            flush(&mut run)?;
        }
    }
    flush(&mut run)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holes_avoid_busy_ranges_with_guards() {
        let busy = [(LOW, LOW + 0x3000), (LOW + 0x5000, LOW + 0x9000)];
        // Between the two: 0x4000..0x5000 would touch both guards.
        assert_eq!(find_hole(&busy, 0x1000), Some(LOW + 0xa000));
        assert_eq!(find_hole(&[], 0x1000), Some(LOW));
        let busy = [(LOW, LOW + 0x1000), (LOW + 0x10000, LOW + 0x11000)];
        assert_eq!(find_hole(&busy, 0x2000), Some(LOW + 0x2000));
    }
}
