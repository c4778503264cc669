//! A snapshot's recorded working set: the pages its first invocation after
//! a restore touched, kept next to the snapshot so that later copies (and
//! later server runs) have them in place before they resume
//! ([`super::RestoreOptions::prefetch`]): `uffd` copies prefetch them,
//! `mmap` copies populate them ([`populate_ranges`]).
//!
//! Recorded once per snapshot, by the first copy that served an
//! invocation: a `uffd` copy's page server lists the pages it filled, in
//! first-touch order; an `mmap` copy's resident pages are read from
//! `/proc/PID/pagemap` ([`resident_pages`]), in address order, each
//! tagged [`WRITTEN`] when the copy holds its own (copied-on-write) page
//! there rather than the shared one of the image or the file, and
//! [`INVOKED`] when it was not resident yet when the invocation began
//! (read in twice, before and after: [`tag_invoked`]): the pages the
//! first invocation itself faulted in (with their fault-around), apart
//! from those of the `restored` exchange.
//!
//! ```text
//! <snapshots_dir>/<id>.workingset
//!   0   8  magic "THAWWSET"
//!   8   4  format version (u32 LE, 1)
//!  12   4  reserved (0)
//!  16   8  page count n (u64 LE, at most MAX_PAGES)
//!  24  8n  saved page addresses (u64 LE), bit 0 = WRITTEN,
//!          bit 1 = INVOKED (absent from lists written before it existed)
//!  ..  32  blake3 of every byte before it
//! ```
//!
//! Written atomically (temporary file, fsync, rename, fsync of the
//! directory). A file that fails any check is reported as corrupt and never
//! used: prefetching the wrong pages would only cost time, but a list that
//! is not what was recorded is not trusted either.

use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use snapshotter::state::{AreaKind, MemoryArea, PAGE_SIZE};

const MAGIC: &[u8; 8] = b"THAWWSET";
const VERSION: u32 = 1;
const HEADER: usize = 24;
const HASH: usize = 32;
/// Most pages a working set may list (4 GiB of memory).
pub const MAX_PAGES: u64 = 1 << 20;

/// Why a working set could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum WorkingSetError {
    /// Reading or writing the file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not a working set this version wrote intact.
    #[error("{path}: corrupt working set ({why})")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What check failed.
        why: String,
    },
}

/// Tag of a page address (its low bit): the copy wrote the page (it held
/// its own copy after the first invocation).
pub const WRITTEN: u64 = 1;
/// Tag of a page address (bit 1): an `mmap` copy's page that became
/// resident during the first invocation (not in the `restored` exchange
/// before it). Populated for reading before the resume
/// ([`populate_ranges`]): these are the read faults the first invocation
/// would otherwise take.
pub const INVOKED: u64 = 2;
/// `madvise` advice: fault the range in for reading (Linux 5.14).
pub const MADV_POPULATE_READ: u64 = 22;
/// `madvise` advice: fault the range in for writing (copy on write now).
pub const MADV_POPULATE_WRITE: u64 = 23;
/// Most ranges one copy populates (a batch entry each).
pub const MAX_RANGES: usize = 4096;

/// pagemap entry bits (Documentation/admin-guide/mm/pagemap.rst).
const PM_PRESENT: u64 = 1 << 63;
const PM_FILE: u64 = 1 << 61;
/// The page is mapped once (never set for the shared zero page, which is
/// no page of the process's own).
const PM_MMAP_EXCLUSIVE: u64 = 1 << 56;

/// Whether an area's pages are worth recording and populating: memory the
/// copy maps from a file or the image and can read (not the kernel's
/// special areas, not the stack, which is written in at restore).
fn populatable(a: &MemoryArea) -> bool {
    a.prot.read
        && !a.shared
        && matches!(
            a.kind,
            AreaKind::FileUnchanged
                | AreaKind::FilePrivate
                | AreaKind::FileCopied
                | AreaKind::Anonymous
                | AreaKind::Heap
        )
}

/// Why the resident pages of a copy could not be read.
#[derive(Debug, thiserror::Error)]
#[error("read /proc/{pid}/pagemap: {source}")]
pub struct ResidentError {
    /// The copy's (host) pid.
    pub pid: i32,
    /// What the OS said.
    #[source]
    pub source: std::io::Error,
}

/// The pages of `areas` (the snapshot's) resident in process `pid` now,
/// in address order, tagged [`WRITTEN`] where the process holds an
/// anonymous page (its own copy) rather than a file or image page.
pub fn resident_pages(pid: i32, areas: &[MemoryArea]) -> Result<Vec<u64>, ResidentError> {
    let err = |source| ResidentError { pid, source };
    let file = std::fs::File::open(format!("/proc/{pid}/pagemap")).map_err(err)?;
    let mut out = Vec::new();
    let mut buf = Vec::new();
    for a in areas.iter().filter(|a| populatable(a)) {
        let pages = ((a.end - a.start) / PAGE_SIZE) as usize;
        buf.resize(pages * 8, 0);
        file.read_exact_at(&mut buf, a.start / PAGE_SIZE * 8)
            .map_err(err)?;
        out.extend(resident_in(a.start, &buf));
        if out.len() as u64 > MAX_PAGES {
            out.truncate(MAX_PAGES as usize);
            break;
        }
    }
    Ok(out)
}

/// The tagged addresses of the present pages in `entries`, the pagemap
/// entries of the pages from `start` on.
fn resident_in(start: u64, entries: &[u8]) -> impl Iterator<Item = u64> + '_ {
    entries
        .chunks_exact(8)
        .enumerate()
        .filter_map(move |(i, e)| {
            let e = u64::from_le_bytes(e.try_into().expect("8 bytes"));
            (e & PM_PRESENT != 0).then(|| {
                let addr = start + i as u64 * PAGE_SIZE;
                if e & PM_FILE == 0 {
                    addr | WRITTEN
                } else {
                    addr
                }
            })
        })
}

/// `after` (resident pages after the first invocation, tagged as
/// [`resident_pages`] gives them) with [`INVOKED`] added to each page
/// that `before` (the same, read when the invocation began) does not list.
pub fn tag_invoked(after: Vec<u64>, before: &[u64]) -> Vec<u64> {
    let mut was: Vec<u64> = before.iter().map(|p| p & !(PAGE_SIZE - 1)).collect();
    was.sort_unstable();
    after
        .into_iter()
        .map(|p| {
            if was.binary_search(&(p & !(PAGE_SIZE - 1))).is_ok() {
                p
            } else {
                p | INVOKED
            }
        })
        .collect()
}

/// A `uffd` copy's working set: `faults` (its page server's faults, saved
/// addresses in first-touch order) first, then the pages of `resident`
/// (tagged, see [`resident_pages`]) outside the areas the page server fills
/// ([`super::uffd::is_lazy`]; `areas` sorted) that the `restored` exchange
/// or the first invocation brought in: the mapped files' pages, which the
/// copy reads without the page server, worth populating. Left out: those
/// written before the invocation began and not brought in by it
/// ([`WRITTEN`] without [`INVOKED`]: written in at restore, populating them
/// would copy each twice). Prefetch
/// fills the served pages ahead of any fault (each listed fault with the
/// pages after it, see `PageServer::prefetch_step`); the others are
/// populated like an `mmap` copy's. (Listing every resident served page
/// too, the server's fault-around, made the prefetch copy far more pages:
/// +4-8 ms of restore for numpy-pandas.)
pub fn faults_then_resident(
    faults: Vec<u64>,
    resident: Vec<u64>,
    areas: &[MemoryArea],
) -> Vec<u64> {
    let mut seen: Vec<u64> = faults.iter().map(|p| p & !(PAGE_SIZE - 1)).collect();
    seen.sort_unstable();
    let lazy = |page: u64| {
        let i = areas.partition_point(|a| a.end <= page);
        areas
            .get(i)
            .is_some_and(|a| a.start <= page && super::uffd::is_lazy(a))
    };
    let mut out = faults;
    out.extend(resident.into_iter().filter(|&p| {
        let page = p & !(PAGE_SIZE - 1);
        let written_at_restore = p & (WRITTEN | INVOKED) == WRITTEN;
        seen.binary_search(&page).is_err() && !lazy(page) && !written_at_restore
    }));
    out
}

/// The pages of `pages` outside every area a `uffd` copy's page server
/// fills ([`super::uffd::is_lazy`]): the only ones such a copy may
/// populate before its resume (`areas` sorted, as the snapshot's are).
pub fn outside_lazy_areas(pages: &[u64], areas: &[MemoryArea]) -> Vec<u64> {
    pages
        .iter()
        .copied()
        .filter(|&p| {
            let page = p & !(PAGE_SIZE - 1);
            let i = areas.partition_point(|a| a.end <= page);
            areas
                .get(i)
                .is_some_and(|a| a.start <= page && !super::uffd::is_lazy(a))
        })
        .collect()
}

/// `faults` (a `uffd` copy's page server's faults, as
/// [`super::uffd::LiveReport::touched`] lists them) with [`WRITTEN`] added
/// to each of `zero_faults` (those on zero pages of the snapshot,
/// [`super::uffd::LiveReport::zero_faults`]) where process `pid` now holds
/// a page of its own (present, anonymous, mapped once): the copy wrote it,
/// either at its fault or after the shared zero page was placed (a
/// copy-on-write fault the page server never sees). Later copies get a
/// private zeroed page there before they resume
/// ([`super::uffd::ZeroFill`]); those only read keep the zero page.
pub fn tag_written_zero_faults(
    pid: i32,
    faults: Vec<u64>,
    zero_faults: &[u64],
) -> Result<Vec<u64>, ResidentError> {
    let err = |source| ResidentError { pid, source };
    let mut zero: Vec<u64> = zero_faults.iter().map(|p| p & !(PAGE_SIZE - 1)).collect();
    zero.sort_unstable();
    zero.dedup();
    if zero.is_empty() {
        return Ok(faults);
    }
    let file = std::fs::File::open(format!("/proc/{pid}/pagemap")).map_err(err)?;
    let mut written = Vec::new();
    let mut entry = [0u8; 8];
    for &page in &zero {
        file.read_exact_at(&mut entry, page / PAGE_SIZE * 8)
            .map_err(err)?;
        if own_page(u64::from_le_bytes(entry)) {
            written.push(page);
        }
    }
    Ok(faults
        .into_iter()
        .map(|p| {
            if written.binary_search(&(p & !(PAGE_SIZE - 1))).is_ok() {
                p | WRITTEN
            } else {
                p
            }
        })
        .collect())
}

/// Whether a pagemap entry is a page of the process's own: present,
/// anonymous and mapped once (not the shared zero page, which a read of a
/// zero page maps).
fn own_page(entry: u64) -> bool {
    entry & PM_PRESENT != 0 && entry & PM_FILE == 0 && entry & PM_MMAP_EXCLUSIVE != 0
}

/// One `madvise` of the populate batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Populate {
    /// First address.
    pub start: u64,
    /// Bytes.
    pub len: u64,
    /// [`MADV_POPULATE_READ`] or [`MADV_POPULATE_WRITE`].
    pub advice: u64,
}

/// The working set `pages` (tagged addresses, any order) as `madvise`
/// ranges over `areas` (the snapshot's, sorted): runs of consecutive pages
/// of one area, the [`WRITTEN`] ones of writable areas populated for
/// writing (copied now rather than in a fault each), the [`INVOKED`] ones
/// that were only read for reading (one fault each in the first
/// invocation otherwise, their fault-around included); pages outside
/// populatable areas are left out; at most [`MAX_RANGES`] ranges (the
/// lowest addresses). With `reads`, every run of recorded pages (written
/// or not) is first populated for reading, one range per run, then the
/// written ones for writing.
///
/// Reads are off by default ([`super::populate`] passes
/// [`reads_wanted`]): a read fault maps its neighbours already in the page
/// cache too (fault-around, whole large folios), so one fault serves many
/// pages, and the resident pages a copy leaves are many more than it read
/// (numpy-pandas: 10,842 resident after the first invocation, 693 of them
/// written, ~360 read faults). A write fault copies one page: those are
/// the faults worth taking ahead.
pub fn populate_ranges(pages: &[u64], areas: &[MemoryArea], reads: bool) -> Vec<Populate> {
    let mut sorted: Vec<u64> = pages.to_vec();
    sorted.sort_unstable_by_key(|p| p & !(PAGE_SIZE - 1));
    sorted.dedup_by_key(|p| *p & !(PAGE_SIZE - 1));
    let mut out: Vec<Populate> = Vec::new();
    let passes: &[bool] = if reads { &[false, true] } else { &[true] };
    for &writes in passes {
        let mut last_area: Option<usize> = None;
        for &tagged in &sorted {
            let page = tagged & !(PAGE_SIZE - 1);
            let i = areas.partition_point(|a| a.end <= page);
            let Some(a) = areas.get(i).filter(|a| a.start <= page && populatable(a)) else {
                continue;
            };
            let advice = if !writes {
                MADV_POPULATE_READ
            } else if tagged & WRITTEN != 0 && a.prot.write {
                MADV_POPULATE_WRITE
            } else if tagged & INVOKED != 0 {
                MADV_POPULATE_READ
            } else {
                continue;
            };
            match out.last_mut() {
                Some(r)
                    if last_area == Some(i) && r.start + r.len == page && r.advice == advice =>
                {
                    r.len += PAGE_SIZE
                }
                _ => {
                    if out.len() == MAX_RANGES {
                        return out;
                    }
                    out.push(Populate {
                        start: page,
                        len: PAGE_SIZE,
                        advice,
                    });
                }
            }
            last_area = Some(i);
        }
    }
    out
}

/// Whether `mmap` copies populate the recorded pages they only read too
/// (`THAW_POPULATE=reads` in the server's environment; an experiment, off
/// by default: see [`populate_ranges`]).
pub fn reads_wanted() -> bool {
    std::env::var_os("THAW_POPULATE").is_some_and(|v| v == "reads")
}

/// What a copy restored in `mode` gets of the recorded working set: all of
/// it. `uffd` copies prefetch it; `mmap` copies populate every recorded
/// page: the written ones for writing, the others for reading (each tagged
/// [`INVOKED`] here, see [`populate_ranges`]), unless the server runs with
/// `THAW_POPULATE=0` (for measuring with and without).
///
/// The pages the `restored` exchange read (reseeding: Python's `random`,
/// `hashlib`, numpy's generator; resident before the first invocation, so
/// not tagged [`INVOKED`] when recorded) are populated too: left to the
/// copy's own faults they made that exchange the largest part of a claimed
/// pre-mapped spare's cold start (numpy-pandas, 2026-12-07: `restored`
/// 1.0-1.5 ms against 0.43-0.53 ms with them populated, the claim's start
/// 1.45 -> 0.86 ms, bursts of 16: last answer 18.2 -> 13.1 ms, medians of
/// interleaved runs).
///
/// `THAW_POPULATE=invoked` populates for reading only the [`INVOKED`]
/// pages (the first invocation's, as before); `THAW_POPULATE=written`
/// leaves out every read (only the written pages are populated, as before
/// that tag existed).
pub fn for_mode(pages: &[u64], mode: super::Mode) -> Vec<u64> {
    let populate = std::env::var("THAW_POPULATE").ok();
    match (mode, populate.as_deref()) {
        (super::Mode::Mmap, Some("0")) => Vec::new(),
        (_, Some("written")) => pages.iter().map(|p| p & !INVOKED).collect(),
        (_, None | Some("all")) => pages.iter().map(|p| p | INVOKED).collect(),
        _ => pages.to_vec(),
    }
}

/// The working-set file of snapshot `id`: the plan local copies
/// prefetch or populate (recorded by the first copy that served an
/// invocation, fault-around and all).
pub fn path(snapshots_dir: &Path, id: &str) -> PathBuf {
    snapshots_dir.join(format!("{id}.workingset"))
}

/// The fetch-set file of snapshot `id` (same format): a working set
/// recorded exactly at deploy on the writer of a shared store (every
/// page a replay of the warm-up events touched, no fault-around, the
/// zero pages written tagged), the set that goes up to the bucket for
/// lazy restores' first fetch. Not a plan for local copies: without the
/// neighbours the kernel's fault-around maps and without the non-zero
/// pages written tagged, an `mmap` copy's first invocation ran ×2.5
/// slower with it (docs/cluster.md, "A working set recorded at deploy").
pub fn fetch_path(snapshots_dir: &Path, id: &str) -> PathBuf {
    snapshots_dir.join(format!("{id}.fetchset"))
}

/// Encodes `pages` (see the module doc).
pub fn encode(pages: &[u64]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + pages.len() * 8 + HASH);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&(pages.len() as u64).to_le_bytes());
    for p in pages {
        out.extend_from_slice(&p.to_le_bytes());
    }
    let hash = blake3::hash(&out);
    out.extend_from_slice(hash.as_bytes());
    out
}

/// Decodes a working set, checking magic, version, length and checksum.
pub fn decode(bytes: &[u8], path: &Path) -> Result<Vec<u64>, WorkingSetError> {
    let corrupt = |why: &str| WorkingSetError::Corrupt {
        path: path.to_path_buf(),
        why: why.to_string(),
    };
    if bytes.len() < HEADER + HASH {
        return Err(corrupt("too short"));
    }
    if &bytes[..8] != MAGIC {
        return Err(corrupt("bad magic"));
    }
    let version = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
    if version != VERSION {
        return Err(corrupt(&format!("unknown version {version}")));
    }
    let count = u64::from_le_bytes(bytes[16..24].try_into().expect("8 bytes"));
    if count > MAX_PAGES {
        return Err(corrupt(&format!("{count} pages is more than {MAX_PAGES}")));
    }
    let body = HEADER + count as usize * 8;
    if bytes.len() != body + HASH {
        return Err(corrupt("length does not match the page count"));
    }
    if blake3::hash(&bytes[..body]).as_bytes() != &bytes[body..] {
        return Err(corrupt("checksum mismatch"));
    }
    Ok(bytes[HEADER..body]
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
        .collect())
}

/// Reads the working set at `path`: `Ok(None)` when there is none.
pub fn load(path: &Path) -> Result<Option<Vec<u64>>, WorkingSetError> {
    match std::fs::read(path) {
        Ok(bytes) => decode(&bytes, path).map(Some),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(WorkingSetError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Writes `pages` to `path` atomically and durably.
pub fn save(path: &Path, pages: &[u64]) -> Result<(), WorkingSetError> {
    let io = |source| WorkingSetError::Io {
        path: path.to_path_buf(),
        source,
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    // Private to the server, like everything in the data directory.
    let mut file = std::os::unix::fs::OpenOptionsExt::mode(
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true),
        0o600,
    )
    .open(&tmp)
    .map_err(io)?;
    file.write_all(&encode(pages)).map_err(io)?;
    file.sync_all().map_err(io)?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(io)?;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io)
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use snapshotter::state::Protection;

    /// A readable private area (writable with `write`), for the restore's
    /// unit tests.
    pub(in crate::restore) fn area(
        start: u64,
        end: u64,
        kind: AreaKind,
        write: bool,
    ) -> MemoryArea {
        MemoryArea {
            start,
            end,
            prot: Protection {
                read: true,
                write,
                exec: false,
            },
            shared: false,
            offset: 0,
            path: None,
            deleted: false,
            maps_dev: 0,
            inode: 0,
            file: None,
            kind,
            pages: Vec::new(),
        }
    }

    #[test]
    fn pagemap_entries_give_present_pages_tagged_when_anonymous() {
        let mut entries = Vec::new();
        for e in [0u64, PM_PRESENT | PM_FILE | 42, PM_PRESENT | 7, 1 << 62] {
            entries.extend_from_slice(&e.to_le_bytes());
        }
        let got: Vec<u64> = resident_in(0x10000, &entries).collect();
        assert_eq!(got, vec![0x11000, 0x12000 | WRITTEN]);
    }

    #[test]
    fn ranges_merge_runs_of_one_area_and_tag() {
        let areas = vec![
            area(0x10000, 0x14000, AreaKind::Anonymous, true),
            area(0x14000, 0x18000, AreaKind::FileUnchanged, false),
            area(0x18000, 0x1a000, AreaKind::Stack, true),
            area(0x1a000, 0x1c000, AreaKind::Vdso, false),
        ];
        let pages = [
            0x11000 | WRITTEN,
            0x10000,
            0x12000 | WRITTEN,
            0x13000,
            // Next area, contiguous: a range of its own; written pages of
            // a read-only area are populated for reading.
            0x14000 | WRITTEN,
            0x15000,
            // Stack, vDSO, outside every area: left out.
            0x18000,
            0x1a000,
            0x90000,
            // A duplicate.
            0x13000,
        ];
        let writes: Vec<(u64, u64, u64)> = populate_ranges(&pages, &areas, false)
            .iter()
            .map(|p| (p.start, p.len, p.advice))
            .collect();
        assert_eq!(writes, vec![(0x11000, 0x2000, MADV_POPULATE_WRITE)]);
        let r = populate_ranges(&pages, &areas, true);
        // Reads first, one range per run of recorded pages of an area,
        // then the written pages of writable areas.
        let want = [
            (0x10000, 0x4000, MADV_POPULATE_READ),
            (0x14000, 0x2000, MADV_POPULATE_READ),
            (0x11000, 0x2000, MADV_POPULATE_WRITE),
        ];
        let got: Vec<(u64, u64, u64)> = r.iter().map(|p| (p.start, p.len, p.advice)).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn pages_new_since_the_invocation_began_are_tagged_invoked() {
        let before = [0x10000, 0x11000 | WRITTEN];
        let after = vec![
            0x10000 | WRITTEN,
            0x11000 | WRITTEN,
            0x12000,
            0x13000 | WRITTEN,
        ];
        assert_eq!(
            tag_invoked(after, &before),
            vec![
                0x10000 | WRITTEN,
                0x11000 | WRITTEN,
                0x12000 | INVOKED,
                0x13000 | WRITTEN | INVOKED
            ]
        );
    }

    #[test]
    fn a_uffd_working_set_lists_its_faults_first_then_the_files_pages_read_since_the_restore() {
        let areas = vec![
            area(0x10000, 0x14000, AreaKind::Anonymous, true),
            area(0x14000, 0x18000, AreaKind::FileUnchanged, false),
        ];
        let faults = vec![0x13000, 0x11000];
        let resident = vec![
            // The served area's pages: the faults stand for them.
            0x10000 | WRITTEN,
            0x11000 | WRITTEN,
            0x12000 | INVOKED,
            0x13000,
            // A file's pages: those the `restored` exchange read (resident
            // before the invocation, not written) and those the invocation
            // brought in, not the others (written before it: written in
            // at restore).
            0x14000,
            0x15000 | INVOKED,
            0x16000 | WRITTEN,
            0x17000 | WRITTEN | INVOKED,
        ];
        assert_eq!(
            faults_then_resident(faults, resident, &areas),
            vec![
                0x13000,
                0x11000,
                0x14000,
                0x15000 | INVOKED,
                0x17000 | WRITTEN | INVOKED
            ]
        );
    }

    #[test]
    fn a_uffd_copy_populates_only_outside_its_served_areas() {
        let areas = vec![
            area(0x10000, 0x12000, AreaKind::Anonymous, true),
            area(0x12000, 0x14000, AreaKind::FileUnchanged, false),
            area(0x14000, 0x16000, AreaKind::Heap, true),
        ];
        let pages = [
            0x10000 | INVOKED,
            0x12000 | INVOKED,
            0x13000,
            0x15000,
            0x90000,
        ];
        assert_eq!(
            outside_lazy_areas(&pages, &areas),
            vec![0x12000 | INVOKED, 0x13000]
        );
    }

    #[test]
    fn invoked_pages_are_populated_for_reading_written_ones_for_writing() {
        let areas = vec![
            area(0x10000, 0x18000, AreaKind::Anonymous, true),
            area(0x18000, 0x1c000, AreaKind::FileUnchanged, false),
        ];
        let pages = [
            // Read in the `restored` exchange only: left to its fault.
            0x10000,
            // Read in the invocation: a run for reading.
            0x11000 | INVOKED,
            0x12000 | INVOKED,
            // Written in it: for writing.
            0x13000 | INVOKED | WRITTEN,
            // Code read in it, in a read-only file area.
            0x18000 | INVOKED,
            0x19000 | INVOKED,
        ];
        let got: Vec<(u64, u64, u64)> = populate_ranges(&pages, &areas, false)
            .iter()
            .map(|p| (p.start, p.len, p.advice))
            .collect();
        assert_eq!(
            got,
            vec![
                (0x11000, 0x2000, MADV_POPULATE_READ),
                (0x13000, 0x1000, MADV_POPULATE_WRITE),
                (0x18000, 0x2000, MADV_POPULATE_READ),
            ]
        );
    }

    #[test]
    fn resident_pages_of_this_process() {
        // A private anonymous area: one page read (the shared zero page is
        // not reported present by every kernel, so write both), one never
        // touched, one written.
        let len = 3 * PAGE_SIZE as usize;
        // SAFETY: a fresh private anonymous mapping, unmapped below.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED);
        let start = p as u64;
        // SAFETY: both writes are inside the mapping made above.
        unsafe {
            *(p as *mut u8) = 1;
            *((p as *mut u8).add(2 * PAGE_SIZE as usize)) = 1;
        }
        let areas = [area(start, start + len as u64, AreaKind::Anonymous, true)];
        let got = resident_pages(std::process::id() as i32, &areas).unwrap();
        // SAFETY: unmapping the mapping made above, no longer used.
        unsafe { libc::munmap(p, len) };
        assert_eq!(
            got,
            vec![start | WRITTEN, (start + 2 * PAGE_SIZE) | WRITTEN]
        );
    }

    #[test]
    fn zero_faults_written_since_are_tagged_and_those_only_read_are_not() {
        // Four private anonymous pages: 0 read (the shared zero page), 1
        // read then written (copy on write), 2 written, 3 never touched.
        let len = 4 * PAGE_SIZE as usize;
        // SAFETY: a fresh private anonymous mapping, unmapped below.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED);
        let start = p as u64;
        let page = |i: u64| start + i * PAGE_SIZE;
        // SAFETY: every access is inside the mapping made above; volatile
        // so that the reads are not optimised away.
        unsafe {
            let base = p as *mut u8;
            // No huge page over the four: each is its own.
            libc::madvise(p, len, libc::MADV_NOHUGEPAGE);
            assert_eq!(std::ptr::read_volatile(base), 0);
            assert_eq!(std::ptr::read_volatile(base.add(PAGE_SIZE as usize)), 0);
            std::ptr::write_volatile(base.add(PAGE_SIZE as usize), 1);
            std::ptr::write_volatile(base.add(2 * PAGE_SIZE as usize), 1);
        }
        // Faults in this order; page 2 is no zero fault (stored: untagged
        // whatever it holds).
        let faults = vec![page(2), page(0), page(1), page(3)];
        let zero = [page(0), page(1), page(3)];
        let got = tag_written_zero_faults(std::process::id() as i32, faults, &zero).unwrap();
        // SAFETY: unmapping the mapping made above, no longer used.
        unsafe { libc::munmap(p, len) };
        assert_eq!(got, vec![page(2), page(0), page(1) | WRITTEN, page(3)]);
    }

    #[test]
    fn round_trip_and_every_corruption_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = path(dir.path(), "f-v1-00");
        assert!(load(&p).unwrap().is_none());
        let pages = vec![0x7f00_0000_1000, 0x5555_0000, 0x7f00_0000_0000];
        save(&p, &pages).unwrap();
        assert_eq!(load(&p).unwrap().unwrap(), pages);

        let good = std::fs::read(&p).unwrap();
        for (at, what) in [(0, "bad magic"), (30, "checksum"), (8, "version")] {
            let mut bad = good.clone();
            bad[at] ^= 0xff;
            std::fs::write(&p, &bad).unwrap();
            let err = load(&p).unwrap_err().to_string();
            assert!(err.contains(what), "{err}");
        }
        std::fs::write(&p, &good[..good.len() - 1]).unwrap();
        assert!(load(&p).unwrap_err().to_string().contains("length"));
        std::fs::write(&p, b"x").unwrap();
        assert!(load(&p).unwrap_err().to_string().contains("too short"));
    }
}
