//! Which pages of an area hold private content: `/proc/pid/pagemap`.
//!
//! Two ways to ask, same answer:
//!
//! * the `PAGEMAP_SCAN` ioctl (Linux 6.7+) on the pagemap file returns
//!   ranges of pages matching category masks, so a 200 MB heap costs a few
//!   ioctls instead of 400 KB of entries;
//! * reading the 64-bit entries themselves:
//!
//! ```text
//! bit 63    page present
//! bit 62    page swapped
//! bit 61    page is a file page or shared anonymous
//! bit 56    page exclusively mapped
//! bit 55    pte soft-dirty
//! bits 0-54 page frame number (root only)
//! ```
//!
//! A page is *private content* when it is present or swapped and not a file
//! page: anonymous memory that was touched, or a copy-on-write copy inside a
//! private file mapping. With `PAGEMAP_SCAN`, pages that map the shared zero
//! page (read but never written) are left out too: they read as zero.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;

use nix::errno::Errno;

use crate::state::PAGE_SIZE;

const PM_PRESENT: u64 = 1 << 63;
const PM_SWAPPED: u64 = 1 << 62;
const PM_FILE: u64 = 1 << 61;

const PAGE_IS_FILE: u64 = 1 << 2;
const PAGE_IS_PRESENT: u64 = 1 << 3;
const PAGE_IS_SWAPPED: u64 = 1 << 4;
const PAGE_IS_PFNZERO: u64 = 1 << 5;

/// `struct pm_scan_arg` from `<linux/fs.h>`.
#[repr(C)]
#[derive(Debug, Default)]
struct PmScanArg {
    size: u64,
    flags: u64,
    start: u64,
    end: u64,
    walk_end: u64,
    vec: u64,
    vec_len: u64,
    max_pages: u64,
    category_inverted: u64,
    category_mask: u64,
    category_anyof_mask: u64,
    return_mask: u64,
}
const _: () = assert!(std::mem::size_of::<PmScanArg>() == 96);

/// `struct page_region` from `<linux/fs.h>`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct PageRegion {
    start: u64,
    end: u64,
    categories: u64,
}
const _: () = assert!(std::mem::size_of::<PageRegion>() == 24);

/// `_IOWR('f', 16, struct pm_scan_arg)`.
const PAGEMAP_SCAN: libc::c_ulong = (3 << 30) | (96 << 16) | ((b'f' as libc::c_ulong) << 8) | 16;

/// Regions asked for per ioctl.
const SCAN_REGIONS: usize = 1024;
/// Entries read per `pread` of the pagemap file (512 KiB).
const READ_ENTRIES: usize = 64 * 1024;

/// Failure reading pagemap.
#[derive(Debug, thiserror::Error)]
pub enum PagemapError {
    /// Opening `/proc/pid/pagemap`.
    #[error("cannot open /proc/{pid}/pagemap: {source}")]
    Open {
        /// The process.
        pid: i32,
        /// Why.
        source: std::io::Error,
    },
    /// Reading entries or scanning.
    #[error("reading /proc/{pid}/pagemap at {start:#x}..{end:#x} failed: {source}")]
    Read {
        /// The process.
        pid: i32,
        /// Range start.
        start: u64,
        /// Range end.
        end: u64,
        /// Why.
        source: std::io::Error,
    },
}

/// A contiguous range of private pages, by address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    /// First address (page aligned).
    pub start: u64,
    /// One past the last address.
    pub end: u64,
}

/// An open pagemap of one process.
#[derive(Debug)]
pub struct Pagemap {
    pid: i32,
    file: File,
    /// `None` until tried; then whether `PAGEMAP_SCAN` works here.
    scan_works: Option<bool>,
    entries: Vec<u64>,
}

impl Pagemap {
    /// Opens `/proc/pid/pagemap`. With `use_scan` false, only entry reads are
    /// used.
    pub fn open(pid: i32, use_scan: bool) -> Result<Pagemap, PagemapError> {
        let file = File::open(format!("/proc/{pid}/pagemap"))
            .map_err(|source| PagemapError::Open { pid, source })?;
        Ok(Pagemap {
            pid,
            file,
            scan_works: if use_scan { None } else { Some(false) },
            entries: Vec::new(),
        })
    }

    /// Whether the last call used `PAGEMAP_SCAN`.
    pub fn uses_scan(&self) -> bool {
        self.scan_works == Some(true)
    }

    /// Appends to `out` the ranges of private-content pages in
    /// `start..end`.
    pub fn private_ranges(
        &mut self,
        start: u64,
        end: u64,
        out: &mut Vec<Range>,
    ) -> Result<(), PagemapError> {
        if self.scan_works != Some(false) {
            match self.scan(start, end, out) {
                Ok(()) => {
                    self.scan_works = Some(true);
                    return Ok(());
                }
                Err(Errno::ENOTTY | Errno::EINVAL | Errno::EOPNOTSUPP)
                    if self.scan_works.is_none() =>
                {
                    tracing::debug!("PAGEMAP_SCAN not usable, reading pagemap entries");
                    self.scan_works = Some(false);
                }
                Err(errno) => {
                    return Err(PagemapError::Read {
                        pid: self.pid,
                        start,
                        end,
                        source: errno.into(),
                    })
                }
            }
        }
        self.read_entries(start, end, out)
    }

    fn scan(&mut self, start: u64, end: u64, out: &mut Vec<Range>) -> Result<(), Errno> {
        let mut regions = [PageRegion::default(); SCAN_REGIONS];
        let mut from = start;
        while from < end {
            let mut arg = PmScanArg {
                size: std::mem::size_of::<PmScanArg>() as u64,
                start: from,
                end,
                vec: regions.as_mut_ptr() as u64,
                vec_len: regions.len() as u64,
                // Not a file page and not the shared zero page ...
                category_inverted: PAGE_IS_FILE | PAGE_IS_PFNZERO,
                category_mask: PAGE_IS_FILE | PAGE_IS_PFNZERO,
                // ... and present or swapped.
                category_anyof_mask: PAGE_IS_PRESENT | PAGE_IS_SWAPPED,
                return_mask: PAGE_IS_PRESENT | PAGE_IS_SWAPPED,
                ..Default::default()
            };
            // SAFETY: `arg` is a correctly sized `pm_scan_arg` whose `vec`
            // points at `regions` (`vec_len` entries), both alive across the
            // call; the kernel writes at most `vec_len` regions and updates
            // `walk_end` in `arg`.
            let rc = unsafe {
                libc::ioctl(
                    self.file.as_raw_fd(),
                    PAGEMAP_SCAN,
                    &mut arg as *mut PmScanArg,
                )
            };
            if rc < 0 {
                return Err(Errno::last());
            }
            // The kernel's `walk_end` can lag behind the regions it returned:
            // when the regions exactly fill `vec` (a 16 MiB area with every
            // fourth page untouched is 1,024 regions), Linux 6.18 reports
            // regions up to the area's end but `walk_end` half way, so the
            // next call would return the second half again. Regions come in
            // address order and everything below the last one's end was
            // walked, so continue from whichever is further, and clip
            // anything below where this call started.
            let mut next = arg.walk_end;
            for region in &regions[..rc as usize] {
                let start = region.start.max(from);
                if start < region.end {
                    push_range(out, start, region.end);
                }
                next = next.max(region.end);
            }
            if next <= from {
                // No progress: never loop forever on a kernel surprise.
                return Err(Errno::EINVAL);
            }
            from = next;
        }
        Ok(())
    }

    fn read_entries(
        &mut self,
        start: u64,
        end: u64,
        out: &mut Vec<Range>,
    ) -> Result<(), PagemapError> {
        let mut page = start / PAGE_SIZE;
        let last = end / PAGE_SIZE;
        while page < last {
            let count = ((last - page) as usize).min(READ_ENTRIES);
            self.entries.resize(count, 0);
            // SAFETY: the u64 buffer is viewed as bytes of the same length;
            // every bit pattern is a valid u64.
            let bytes = unsafe {
                std::slice::from_raw_parts_mut(self.entries.as_mut_ptr().cast::<u8>(), count * 8)
            };
            self.file
                .read_exact_at(bytes, page * 8)
                .map_err(|source| PagemapError::Read {
                    pid: self.pid,
                    start: page * PAGE_SIZE,
                    end: (page + count as u64) * PAGE_SIZE,
                    source,
                })?;
            for (i, entry) in self.entries.iter().enumerate() {
                if entry & (PM_PRESENT | PM_SWAPPED) != 0 && entry & PM_FILE == 0 {
                    let addr = (page + i as u64) * PAGE_SIZE;
                    push_range(out, addr, addr + PAGE_SIZE);
                }
            }
            page += count as u64;
        }
        Ok(())
    }
}

fn push_range(out: &mut Vec<Range>, start: u64, end: u64) {
    if let Some(last) = out.last_mut() {
        if start <= last.end {
            last.end = last.end.max(end);
            return;
        }
    }
    out.push(Range { start, end });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scan_and_entry_reads_agree_on_own_memory() {
        // An anonymous area with a written page, a read-only-touched page
        // and untouched pages.
        let len = 64 * PAGE_SIZE as usize;
        let mut area = memmap2::MmapMut::map_anon(len).unwrap();
        area[0] = 1;
        area[5 * PAGE_SIZE as usize] = 7;
        area[6 * PAGE_SIZE as usize..8 * PAGE_SIZE as usize].fill(3);
        let _read = std::hint::black_box(area[20 * PAGE_SIZE as usize]);
        let start = area.as_ptr() as u64;
        let end = start + len as u64;
        let pid = std::process::id() as i32;

        let mut by_entries = Vec::new();
        Pagemap::open(pid, false)
            .unwrap()
            .private_ranges(start, end, &mut by_entries)
            .unwrap();
        let page = |i: u64| start + i * PAGE_SIZE;
        let expected_written = vec![
            Range {
                start: page(0),
                end: page(1),
            },
            Range {
                start: page(5),
                end: page(8),
            },
        ];
        // Entry reads include the zero-page mapping of page 20 only if the
        // kernel reports it as present without the file bit, as it does.
        assert!(by_entries.starts_with(&expected_written), "{by_entries:?}");

        let mut pagemap = Pagemap::open(pid, true).unwrap();
        let mut by_scan = Vec::new();
        pagemap.private_ranges(start, end, &mut by_scan).unwrap();
        if pagemap.uses_scan() {
            assert_eq!(by_scan, expected_written);
        } else {
            println!("PAGEMAP_SCAN not available: compared entry reads only");
            assert_eq!(by_scan, by_entries);
        }
    }

    /// Regression: an area with exactly as many runs of private pages as
    /// one `PAGEMAP_SCAN` call returns (and with more or fewer) gives the
    /// same ranges as reading entries, with none twice. Linux 6.18 reports
    /// a `walk_end` behind the last region when the regions fill the
    /// buffer exactly, which sent the second half of such an area twice
    /// (`page sink: area N page X arrived after page Y`).
    #[test]
    fn sparse_areas_scan_like_entry_reads() {
        let pid = std::process::id() as i32;
        for runs in [
            SCAN_REGIONS - 1,
            SCAN_REGIONS,
            SCAN_REGIONS + 1,
            3 * SCAN_REGIONS,
        ] {
            // Every fourth page untouched: runs of three written pages.
            let pages = runs * 4;
            let len = pages * PAGE_SIZE as usize;
            let mut area = memmap2::MmapMut::map_anon(len).unwrap();
            for p in (0..pages).filter(|p| p % 4 != 3) {
                area[p * PAGE_SIZE as usize] = 1;
            }
            let start = area.as_ptr() as u64;
            let end = start + len as u64;
            let mut by_entries = Vec::new();
            Pagemap::open(pid, false)
                .unwrap()
                .private_ranges(start, end, &mut by_entries)
                .unwrap();
            let expected: Vec<Range> = (0..runs as u64)
                .map(|r| Range {
                    start: start + 4 * r * PAGE_SIZE,
                    end: start + (4 * r + 3) * PAGE_SIZE,
                })
                .collect();
            assert_eq!(by_entries, expected, "entry reads, {runs} runs");
            let mut pagemap = Pagemap::open(pid, true).unwrap();
            let mut by_scan = Vec::new();
            pagemap.private_ranges(start, end, &mut by_scan).unwrap();
            if !pagemap.uses_scan() {
                println!("PAGEMAP_SCAN not available: compared entry reads only");
            }
            assert_eq!(by_scan.len(), expected.len(), "scan, {runs} runs");
            assert_eq!(by_scan, expected, "scan, {runs} runs");
        }
    }
}
