//! Rebuilding the address space of the copy inside the stub (mmap mode).
//!
//! ```text
//! stub's map:   [its binary, heap, libs, stack ...]  [vvar][vvar_vclock][vdso]
//!   1. scratch: one anonymous area in a hole of the saved map, holding the
//!      batch loop (see `batch`); everything below runs as one batch
//!   2. munmap everything but the scratch and the special areas
//!   3. mremap [vvar] [vvar_vclock] [vdso] to a temporary hole, then to the
//!      saved addresses (two steps, so no move ever overlaps another area)
//!   4. map every saved area at its address with its protection:
//!        file areas        the same file (identity checked), same offset;
//!                          FilePrivate: run by run, the file's own pages
//!                          from the file, stored/zero pages MAP_PRIVATE
//!                          from the image (each page mapped once)
//!        anonymous, heap,  MAP_PRIVATE of the snapshot's image file at the
//!        copied files      area's offset in the image (copy on write)
//!        stack             anonymous MAP_GROWSDOWN, stored pages written in
//!        thread stacks     (mmap mode, see `stacks::eager_areas`)
//!                          anonymous, stored pages written in: a thread
//!                          frees its stack with MADV_DONTNEED as it exits,
//!                          all signals blocked, where the anonymous-memory
//!                          guard could not trap it; (uffd mode, see
//!                          `thread::live_stacks`) the live threads' stacks
//!                          are written in too, not registered
//!
//!   Consecutive calls that continue each other (the same file or image at
//!   the next offset, or anonymous, with the same protection and flags)
//!   are one `mmap` (`Batch::call_mmap`; the kernel would merge the two
//!   areas anyway): numpy-pandas's batch makes 498 calls instead of 547.
//!   `THAW_MMAP_MERGE=0` keeps one call each.
//! ```

use std::collections::HashMap;
use std::fs::File;

use snapshotter::capture::maps::{parse_maps, Pseudo};
use snapshotter::state::{AreaKind, MemoryArea, PAGE_SIZE};
use snapshotter::store::{AreaPages, ImageLayout, PageRun, PageSlot};

use super::batch::{Batch, CallName, SCRATCH_LEN};
use super::remote::Remote;
use super::RestoreError;

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
    StubMap::parse(&text)
}

impl StubMap {
    /// The stub's `[vdso]`: (start, end).
    pub fn vdso(&self) -> Option<(u64, u64)> {
        self.specials
            .iter()
            .find(|s| s.kind == AreaKind::Vdso)
            .map(|s| (s.start, s.start + s.len))
    }

    /// The special areas of a `/proc/PID/maps` text.
    pub fn parse(text: &str) -> Result<StubMap, RestoreError> {
        let entries = parse_maps(text).map_err(|e| RestoreError::Stub(e.to_string()))?;
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

/// Where the restorer's own areas go.
#[derive(Debug, Clone, Copy)]
pub struct Places {
    /// The scratch area (loop, data, table).
    pub scratch: u64,
    /// The temporary place of the special areas while they move.
    pub temp: u64,
}

/// Chooses the scratch and temporary places, maps the scratch area
/// (injected, rwx) and installs the batch loop in it.
pub fn prepare_scratch(
    remote: &mut Remote,
    stub: &StubMap,
    areas: &[MemoryArea],
) -> Result<Places, RestoreError> {
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
            (libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC) as u64,
            (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64 | MAP_FIXED,
            u64::MAX,
            0,
        ],
    )?;
    remote.scratch = Some((scratch, SCRATCH_LEN));
    remote.install_loop(scratch)?;
    Ok(Places { scratch, temp })
}

/// Adds to `batch`: unmap everything of the stub but the scratch area and
/// the special areas, then move those to their saved addresses. Returns
/// where the vDSO's `syscall` instruction (now `syscall_at`) will be.
pub fn clear_and_move_specials(
    batch: &mut Batch,
    stub: &StubMap,
    areas: &[MemoryArea],
    places: Places,
    syscall_at: u64,
) -> Result<u64, RestoreError> {
    let saved = saved_specials(areas);
    let mut keep: Vec<(u64, u64)> = stub
        .specials
        .iter()
        .map(|s| (s.start, s.start + s.len))
        .collect();
    keep.push((places.scratch, places.scratch + SCRATCH_LEN));
    keep.sort_unstable();
    let mut at = 0u64;
    for &(start, end) in keep.iter().chain(std::iter::once(&(TASK_END, TASK_END))) {
        if start > at {
            batch.call(
                "munmap (stub)",
                libc::SYS_munmap,
                [at, start - at, 0, 0, 0, 0],
            );
        }
        at = at.max(end);
    }
    for s in &stub.specials {
        if !saved.iter().any(|d| d.kind == s.kind) {
            batch.call(
                "munmap (special)",
                libc::SYS_munmap,
                [s.start, s.len, 0, 0, 0, 0],
            );
        }
    }
    let mut new_syscall_at = syscall_at;
    let mut moves = Vec::new();
    let mut t = places.temp;
    for d in &saved {
        let Some(s) = stub.specials.iter().find(|s| s.kind == d.kind) else {
            return Err(RestoreError::Incompatible {
                what: format!("the snapshot has {:?} but this kernel gives none", d.kind),
            });
        };
        if s.len != d.len {
            return Err(RestoreError::Incompatible {
                what: format!(
                    "{:?} is {} bytes here, {} in the snapshot",
                    d.kind, s.len, d.len
                ),
            });
        }
        if s.kind == AreaKind::Vdso && (s.start..s.start + s.len).contains(&syscall_at) {
            new_syscall_at = d.start + (syscall_at - s.start);
        }
        moves.push((*s, t, d.start));
        t += s.len + PAGE_SIZE;
    }
    let remap = (libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED) as u64;
    for &(s, t, _) in &moves {
        batch.call(
            "mremap (special to temporary)",
            libc::SYS_mremap,
            [s.start, s.len, s.len, remap, t, 0],
        );
    }
    for &(s, t, d) in &moves {
        batch.call(
            "mremap (special to saved address)",
            libc::SYS_mremap,
            [t, s.len, s.len, remap, d, 0],
        );
    }
    Ok(new_syscall_at)
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
    /// `uffd` mode: private memory is mapped anonymous, filled on demand.
    pub lazy: bool,
    /// Indices of anonymous areas mapped anonymous and written (thread
    /// stacks) instead of mapped from the image (mmap mode) or served by
    /// the page server (uffd mode).
    pub eager: &'a std::collections::HashSet<usize>,
    /// The copy's memfd of each anonymous shared area, by area index
    /// ([`super::shared`]).
    pub shared_fds: &'a HashMap<usize, i32>,
}

/// Adds to `batch` the mapping of every saved area (see the module doc).
pub fn map_areas(
    batch: &mut Batch,
    areas: &[MemoryArea],
    pages: &[AreaPages],
    sources: &MapSources<'_>,
) -> Result<(), RestoreError> {
    // Read once per restore, not once per area (an environment lookup
    // takes the environment's lock).
    let overlay = overlay_wanted();
    // Adjacent mappings merged into one call ([`Batch::call_mmap`]); the
    // overlaid layout maps over what it mapped, so it keeps one call each.
    let merge = !overlay && merge_wanted();
    for (index, area) in areas.iter().enumerate() {
        let prot = area.prot.to_prot() as u64;
        let len = area.len();
        let what = |how: &'static str| CallName::Range(how, area.start, area.end);
        match area.kind {
            AreaKind::Vdso | AreaKind::Vvar | AreaKind::VvarVclock | AreaKind::Vsyscall => {}
            // Attached after the batch ([`super::sysv`]): left free here.
            AreaKind::SysvShm(_) => {}
            AreaKind::FilePrivate if !area.shared && !overlay => {
                map_file_private(batch, index, area, &pages[index], sources, merge);
            }
            AreaKind::FileUnchanged | AreaKind::FilePrivate => {
                let fd = sources.area_fds[&index];
                let share = if area.shared {
                    libc::MAP_SHARED
                } else {
                    libc::MAP_PRIVATE
                };
                batch.call_mmap(
                    what("mmap (file)"),
                    [
                        area.start,
                        len,
                        prot,
                        share as u64 | MAP_FIXED,
                        fd as u64,
                        area.offset,
                    ],
                    merge,
                );
                if area.kind == AreaKind::FilePrivate {
                    overlay_private_pages(batch, index, area, &pages[index], sources);
                }
            }
            AreaKind::Anonymous | AreaKind::Heap | AreaKind::FileCopied => {
                if area.shared {
                    let Some(&fd) = sources.shared_fds.get(&index) else {
                        return Err(RestoreError::Unsupported(format!(
                            "shared memory at {:#x}-{:#x}",
                            area.start, area.end
                        )));
                    };
                    batch.call_mmap(
                        what("mmap (shared memory)"),
                        [
                            area.start,
                            len,
                            prot,
                            libc::MAP_SHARED as u64 | MAP_FIXED,
                            fd as u64,
                            area.offset,
                        ],
                        merge,
                    );
                    continue;
                }
                if sources.lazy || sources.eager.contains(&index) {
                    batch.call_mmap(
                        what("mmap (anonymous)"),
                        [
                            area.start,
                            len,
                            prot,
                            (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64 | MAP_FIXED,
                            u64::MAX,
                            0,
                        ],
                        merge,
                    );
                    continue;
                }
                let offset = sources.layout.areas[index].offset;
                batch.call_mmap(
                    what("mmap (image)"),
                    [
                        area.start,
                        len,
                        prot,
                        libc::MAP_PRIVATE as u64 | MAP_FIXED,
                        sources.image_fd as u64,
                        offset,
                    ],
                    merge,
                );
            }
            AreaKind::Stack => {
                batch.call(
                    what("mmap (stack)"),
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
                );
            }
        }
    }
    Ok(())
}

/// Whether a private file area is mapped whole from its file with the
/// image's runs laid over it ([`overlay_private_pages`], the layout before
/// [`map_file_private`]): `THAW_FILE_PRIVATE_MAP=overlay` in the server's
/// environment, for measuring one against the other.
fn overlay_wanted() -> bool {
    std::env::var_os("THAW_FILE_PRIVATE_MAP").is_some_and(|v| v == "overlay")
}

/// Whether adjacent mappings are merged into one `mmap` of the mapping
/// batch ([`Batch::call_mmap`]): yes unless `THAW_MMAP_MERGE=0` in the
/// server's environment (one call per area and run, as before, for
/// measuring one against the other).
fn merge_wanted() -> bool {
    std::env::var_os("THAW_MMAP_MERGE").is_none_or(|v| v != "0")
}

/// Adds to `batch` the mapping of a private file area (`FilePrivate`) run
/// by run, each page once: runs of the file's own pages `MAP_PRIVATE` from
/// the file at their offset, runs of stored or zero pages `MAP_PRIVATE`
/// from the image. Most such areas (a library's data and relocated
/// pages) hold no page of the file at all (numpy-pandas: 162 of 168), so
/// they take one `mmap` of the image instead of an `mmap` of the file
/// that the image's then replaced (a second `mmap` that first unmaps the
/// first), and a partly written area is never split after it is mapped.
fn map_file_private(
    batch: &mut Batch,
    index: usize,
    area: &MemoryArea,
    pages: &AreaPages,
    sources: &MapSources<'_>,
    merge: bool,
) {
    let file_fd = sources.area_fds[&index];
    let image_offset = sources.layout.areas[index].offset;
    for (from_file, first, count) in file_private_runs(pages, area.len() / PAGE_SIZE) {
        let at = area.start + first * PAGE_SIZE;
        let (what, fd, offset) = if from_file {
            (
                "mmap (file)",
                file_fd as u64,
                area.offset + first * PAGE_SIZE,
            )
        } else {
            (
                "mmap (image over file)",
                sources.image_fd as u64,
                image_offset + first * PAGE_SIZE,
            )
        };
        batch.call_mmap(
            CallName::At(what, at),
            [
                at,
                count * PAGE_SIZE,
                area.prot.to_prot() as u64,
                libc::MAP_PRIVATE as u64 | MAP_FIXED,
                fd,
                offset,
            ],
            merge,
        );
    }
}

/// The mappings of a private file area of `total` pages listed by
/// `pages`: (from the file, first page, pages), in order, alternating,
/// covering the area. Stored and zero pages come from the image; a list
/// shorter than the area (never written so) leaves the rest to the file,
/// as a whole-file mapping would.
fn file_private_runs(pages: &AreaPages, total: u64) -> Vec<(bool, u64, u64)> {
    let mut out: Vec<(bool, u64, u64)> = Vec::new();
    let mut add = |from_file: bool, n: u64, at: u64| match out.last_mut() {
        Some((f, _, count)) if *f == from_file => *count += n,
        _ => out.push((from_file, at, n)),
    };
    let mut at = 0u64;
    for r in pages.runs() {
        let (from_file, n) = match r {
            PageRun::File(n) => (true, *n),
            PageRun::Zero(n) => (false, *n),
            PageRun::Hashes(h) => (false, h.len() as u64),
        };
        let n = n.min(total.saturating_sub(at));
        if n > 0 {
            add(from_file, n, at);
        }
        at += n;
    }
    if at < total {
        add(true, total - at, at);
    }
    out
}

/// Adds to `batch`: over a private file mapping, every run of pages that
/// are not the file's (stored or zero) mapped `MAP_PRIVATE` from the image.
/// Measured on python3 (`cargo bench -p pool --bench restore`): writing
/// those ~550 pages through `/proc/PID/mem` took ~1.6 ms (2.9 µs a page),
/// the overlay a few µs per run inside the batch. The area becomes several
/// mappings; each is still private and keeps the area's protection.
fn overlay_private_pages(
    batch: &mut Batch,
    index: usize,
    area: &MemoryArea,
    pages: &AreaPages,
    sources: &MapSources<'_>,
) {
    let image_offset = sources.layout.areas[index].offset;
    let mut emit = |first: u64, count: u64| {
        batch.call(
            CallName::At("mmap (image over file)", area.start + first * PAGE_SIZE),
            libc::SYS_mmap,
            [
                area.start + first * PAGE_SIZE,
                count * PAGE_SIZE,
                area.prot.to_prot() as u64,
                libc::MAP_PRIVATE as u64 | MAP_FIXED,
                sources.image_fd as u64,
                image_offset + first * PAGE_SIZE,
            ],
        );
    };
    let mut run: Option<(u64, u64)> = None;
    for (i, slot) in pages.iter().enumerate() {
        let i = i as u64;
        if matches!(slot, PageSlot::File) {
            if let Some((first, count)) = run.take() {
                emit(first, count);
            }
            continue;
        }
        match &mut run {
            Some((first, count)) if *first + *count == i => *count += 1,
            _ => {
                if let Some((first, count)) = run.take() {
                    emit(first, count);
                }
                run = Some((i, 1));
            }
        }
    }
    if let Some((first, count)) = run {
        emit(first, count);
    }
}

/// Writes the saved content the mappings do not provide: the stored pages
/// of the stack and (mmap mode) of the areas mapped eagerly. `plans`: the
/// snapshot's shared plans, which keep the image mapped between restores.
pub fn write_private_pages(
    remote: &Remote,
    areas: &[MemoryArea],
    pages: &[AreaPages],
    sources: &MapSources<'_>,
    plans: Option<&super::plans::SnapshotPlans>,
) -> Result<(), RestoreError> {
    // Every run of every written area, written straight from the image
    // (mapped read-only here, no copy through a buffer) with as few calls
    // as possible (`Remote::write_runs`): with 16 thread stacks, a read
    // and a `/proc/PID/mem` write per run cost several times more.
    let mut runs: Vec<(u64, u64, usize)> = Vec::new();
    for (index, area) in areas.iter().enumerate() {
        if area.kind == AreaKind::Stack || sources.eager.contains(&index) {
            stored_runs(index, area, &pages[index], sources, &mut runs);
        }
    }
    if runs.is_empty() {
        return Ok(());
    }
    let mapped = match plans {
        Some(plans) => plans.image_map(sources.image),
        // SAFETY: the image is never changed once published (see the
        // store's image module); the mapping is read-only.
        None => unsafe { memmap2::Mmap::map(sources.image) }.map(std::sync::Arc::new),
    };
    let image = mapped.map_err(|source| RestoreError::Io {
        what: "map the image".into(),
        source,
    })?;
    let mut slices = Vec::with_capacity(runs.len());
    for &(addr, offset, len) in &runs {
        let bytes = usize::try_from(offset)
            .ok()
            .and_then(|o| image.get(o..o.checked_add(len)?))
            .ok_or_else(|| RestoreError::Io {
                what: format!("pages at {offset:#x} of the image"),
                source: std::io::Error::from(std::io::ErrorKind::UnexpectedEof),
            })?;
        slices.push((addr, bytes));
    }
    remote.write_runs(&slices)
}

/// Adds the stored pages of area `index` to `runs`, in runs of consecutive
/// pages: (address in the stub, offset in the image, length).
fn stored_runs(
    index: usize,
    area: &MemoryArea,
    pages: &AreaPages,
    sources: &MapSources<'_>,
    runs: &mut Vec<(u64, u64, usize)>,
) {
    let area_offset = sources.layout.areas[index].offset;
    // Walked by the list's runs, not page by page: a thread's stack is
    // 2,048 pages, most of them one zero run.
    let mut at = 0u64;
    let mut last: Option<u64> = None; // end page of the last run added
    for r in pages.runs() {
        match r {
            PageRun::Zero(n) | PageRun::File(n) => at += n,
            PageRun::Hashes(h) => {
                let n = h.len() as u64;
                match (last, runs.last_mut()) {
                    (Some(end), Some(run)) if end == at => run.2 += (n * PAGE_SIZE) as usize,
                    _ => runs.push((
                        area.start + at * PAGE_SIZE,
                        area_offset + at * PAGE_SIZE,
                        (n * PAGE_SIZE) as usize,
                    )),
                }
                at += n;
                last = Some(at);
            }
        }
    }
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

    #[test]
    fn private_file_areas_map_each_page_once() {
        let hash = snapshotter::store::PageHash([7; 32]);
        // Wholly stored or zero (a library's data): one mapping, the image.
        let mut data = AreaPages::new();
        data.push_hash(hash);
        data.push_zero(2);
        data.push_hash(hash);
        assert_eq!(file_private_runs(&data, 4), vec![(false, 0, 4)]);
        // File, stored, zero, file: three mappings, alternating.
        let mut mixed = AreaPages::new();
        mixed.push_file(2);
        mixed.push_hash(hash);
        mixed.push_zero(1);
        mixed.push_file(3);
        assert_eq!(
            file_private_runs(&mixed, 7),
            vec![(true, 0, 2), (false, 2, 2), (true, 4, 3)]
        );
        // A list shorter than the area: the rest from the file; longer: cut.
        let mut short = AreaPages::new();
        short.push_zero(1);
        assert_eq!(
            file_private_runs(&short, 3),
            vec![(false, 0, 1), (true, 1, 2)]
        );
        assert_eq!(
            file_private_runs(&mixed, 3),
            vec![(true, 0, 2), (false, 2, 1)]
        );
    }
}
