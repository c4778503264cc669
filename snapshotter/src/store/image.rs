//! Per-snapshot memory images: one file laid out for `mmap`, built from the
//! store, cached, never changed once published.
//!
//! ```text
//! images/<snapshot-id>.<content-key>.<boot>.img
//! offset                      contents
//! 0                           area 0, page by page (area 0 has n0 pages)
//! 4096 * n0                   area 1
//! 4096 * (n0 + n1)            area 2 ...
//! ```
//!
//! Each area starts at a page-aligned offset ([`ImageLayout`]); page `i` of
//! an area is at `offset + 4096 * i`.
//!
//! **PMD-aligned placement** ([`Placement::PmdAligned`], a prototype: the
//! restore asks for it with `THAW_IMAGE_PMD=1`). The kernel maps a 2 MiB
//! page-cache folio of a file with one PMD instead of 512 PTEs, also in a
//! `MAP_PRIVATE` mapping (`filemap_map_pages` -> `filemap_map_pmd` ->
//! `do_set_pmd`), when the mapping covers the folio's whole 2 MiB-aligned
//! virtual block and the file offset is congruent to the address modulo
//! 2 MiB. So a run of areas adjacent in memory that holds such a block
//! starts at an offset congruent to its address modulo [`PMD_SIZE`] (the
//! areas after it in the run follow contiguously, so adjacent mappings
//! still merge), the gap before it a hole; and the image is written in
//! whole 2 MiB blocks, each one `pwritev` from its block start (gaps and
//! holes inside written as zeros), which is what makes ext4 (large
//! folios since Linux 6.16) put each block in one 2 MiB folio. Such an
//! image has its own name (`<snapshot-id>.<content-key>.pmd.<boot>.img`). Zero pages and file-backed pages read
//! as zeros: runs of 16 pages or more are holes (the file is sparse), shorter
//! ones are written as zeros, which keeps writes long. File-backed pages are
//! mapped from their own file at restore. Stored pages are read from the
//! mapped packs, verified against their hash on all cores, and written with
//! `pwritev`, several threads at once.
//!
//! The image is built under a temporary name (`.<name>.<pid>.tmp`) and
//! renamed, so a mapped image never changes: a new version of the snapshot
//! has another content key, hence another file. Images are derived data; gc
//! deletes those no root needs (unlinking a mapped file is safe), and any can
//! be rebuilt from the store.
//!
//! Images are *not* fsynced: that took most of the build time (the data of a
//! 256 MiB snapshot is written in a fraction of the time the disk needs to
//! persist it). Instead their name carries the boot id
//! (`images/<snapshot-id>.<content-key>.<boot>.img`, `boot` from
//! `/proc/sys/kernel/random/boot_id`). A process crash cannot lose page-cache
//! data, so within one boot a renamed image is always whole; after a power
//! loss or kernel crash the machine reboots, the boot id changes, and images
//! whose data may never have reached the disk are neither used nor kept (gc
//! removes them) but rebuilt.
//!
//! I/O choice: `io_uring` writes and reads were measured against `pwritev`
//! and memory-mapped reads by `cargo bench -p snapshotter --bench store_io`;
//! see docs/store.md for the figures. Plain `pwritev` from several threads
//! was as fast or faster, so it is what this module uses.

use std::fs::File;
use std::io::IoSlice;
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use super::failpoint;
use super::hash::{PageHash, PAGE_SIZE};
use super::pack::write_vectored_at;
use super::pagelist::{AreaPages, PageSlot};
use super::roots::RootError;
use super::{Page, PageStore, ReadError};

/// Where one area lies in an image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImageArea {
    /// Byte offset in the image (page-aligned).
    pub offset: u64,
    /// Pages in the area.
    pub pages: u64,
}

/// Where every area lies in an image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageLayout {
    /// One entry per area, in order.
    pub areas: Vec<ImageArea>,
    /// Total size of the image file.
    pub size: u64,
}

/// Bytes one PMD maps on x86-64: a 2 MiB block.
pub const PMD_SIZE: u64 = 2 << 20;

/// How an image places its areas.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement<'a> {
    /// One after another, each at the page after the last.
    Packed,
    /// Runs of areas adjacent in memory that hold a whole 2 MiB-aligned
    /// block start at an offset congruent to their start address modulo
    /// [`PMD_SIZE`]; written in whole 2 MiB blocks (see the module doc).
    /// The slice holds each area's start address, in the areas' order.
    PmdAligned(&'a [u64]),
}

impl Placement<'_> {
    /// True for [`Placement::PmdAligned`].
    pub fn pmd_aligned(&self) -> bool {
        matches!(self, Placement::PmdAligned(_))
    }
}

impl ImageLayout {
    /// The layout of an image of `areas`, packed.
    pub fn of(areas: &[AreaPages]) -> ImageLayout {
        ImageLayout::placed(areas, Placement::Packed)
    }

    /// The layout of an image of `areas` placed as `placement` says. A
    /// [`Placement::PmdAligned`] whose list of addresses does not match
    /// `areas` gives the packed layout.
    pub fn placed(areas: &[AreaPages], placement: Placement<'_>) -> ImageLayout {
        let starts = match placement {
            Placement::PmdAligned(starts) if starts.len() == areas.len() => Some(starts),
            _ => None,
        };
        let page = PAGE_SIZE as u64;
        let mut offset = 0u64;
        let mut previous_end = None;
        let mut placed = Vec::with_capacity(areas.len());
        for (index, a) in areas.iter().enumerate() {
            let pages = a.page_count();
            if let Some(starts) = starts {
                let start = starts[index];
                if previous_end != Some(start) && run_holds_pmd_block(areas, starts, index) {
                    // The smallest offset at or after this one congruent to
                    // `start` modulo the (power of two) block size.
                    offset += start.wrapping_sub(offset) % PMD_SIZE;
                }
                previous_end = Some(start + pages * page);
            }
            placed.push(ImageArea { offset, pages });
            offset += pages * page;
        }
        if starts.is_some() {
            offset = offset.next_multiple_of(PMD_SIZE);
        }
        ImageLayout {
            areas: placed,
            size: offset,
        }
    }
}

/// Whether the run of areas adjacent in memory that starts at `first`
/// holds a whole 2 MiB-aligned block inside one of its areas (a block two
/// areas share is two mappings: no PMD maps it).
fn run_holds_pmd_block(areas: &[AreaPages], starts: &[u64], first: usize) -> bool {
    let page = PAGE_SIZE as u64;
    let mut index = first;
    loop {
        let start = starts[index];
        let end = start + areas[index].page_count() * page;
        if start.next_multiple_of(PMD_SIZE) + PMD_SIZE <= end {
            return true;
        }
        index += 1;
        if index >= areas.len() || starts[index] != end {
            return false;
        }
    }
}

/// Error building or finding an image.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// A page could not be read or failed verification.
    #[error("cannot build image {}: {source}", path.display())]
    Read {
        /// The image.
        path: PathBuf,
        /// Why.
        source: ReadError,
    },
    /// Writing the image failed.
    #[error("cannot write image {}: {source}", path.display())]
    Io {
        /// The image.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The snapshot's root is unusable.
    #[error(transparent)]
    Root(#[from] RootError),
}

/// Runs of zero (or file-backed) pages at least this long stay holes;
/// shorter ones are written as zeros. A hole saves disk space only: reading
/// one through a private mapping still puts a zeroed page in the page cache.
/// Writing short gaps turns the scattered pages of a heap into long writes
/// (fewer syscalls and extents).
const HOLE_MIN_PAGES: usize = 16;
/// Most iovecs per `pwritev`.
const IOV_MAX: usize = 1024;
/// Pages per parallel task.
const TASK_PAGES: usize = 512;

/// Builds the image of `areas` at `out` (atomically: temporary file, rename)
/// from `store`, verifying every page. Returns the layout.
///
/// The image is not fsynced (see the module doc): it is whole for every
/// process as long as the machine stays up, which is all a cache tied to the
/// boot needs. A caller keeping images across reboots must fsync them itself.
pub fn build_image(
    store: &PageStore,
    areas: &[AreaPages],
    out: &Path,
) -> Result<ImageLayout, ImageError> {
    build_image_placed(store, areas, Placement::Packed, out)
}

/// [`build_image`] with the areas placed as `placement` says.
pub fn build_image_placed(
    store: &PageStore,
    areas: &[AreaPages],
    placement: Placement<'_>,
    out: &Path,
) -> Result<ImageLayout, ImageError> {
    let layout = ImageLayout::placed(areas, placement);
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = out.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ImageError::Io { path, source }
    };
    let file = super::atomic::private_file().open(&tmp).map_err(io(&tmp))?;
    let whole_blocks = placement.pmd_aligned();
    let result = write_pages(store, areas, &layout, whole_blocks, &file, &tmp).and_then(|()| {
        failpoint::hit("image-written");
        std::fs::rename(&tmp, out).map_err(io(out))
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map(|()| layout)
}

/// Writes the stored pages of `areas` where `layout` places them: in
/// tasks of [`TASK_PAGES`], or with `whole_blocks` one task per 2 MiB
/// block of the file that holds a stored page, written whole.
fn write_pages(
    store: &PageStore,
    areas: &[AreaPages],
    layout: &ImageLayout,
    whole_blocks: bool,
    file: &File,
    tmp: &Path,
) -> Result<(), ImageError> {
    file.set_len(layout.size).map_err(|source| ImageError::Io {
        path: tmp.to_path_buf(),
        source,
    })?;
    let mut items: Vec<(u64, PageHash)> = Vec::new();
    for (area, place) in areas.iter().zip(&layout.areas) {
        for (i, slot) in area.iter().enumerate() {
            if let PageSlot::Hash(h) = slot {
                items.push((place.offset + (i * PAGE_SIZE) as u64, h));
            }
        }
    }
    let tasks: Vec<&[(u64, PageHash)]> = if whole_blocks {
        items
            .chunk_by(|a, b| a.0 / PMD_SIZE == b.0 / PMD_SIZE)
            .collect()
    } else {
        items.chunks(TASK_PAGES).collect()
    };
    let write = |task: &[(u64, PageHash)]| {
        if whole_blocks {
            write_block(store, task, layout.size, file, tmp)
        } else {
            write_task(store, task, file, tmp)
        }
    };
    let Some((first, rest)) = tasks.split_first() else {
        return Ok(());
    };
    write(first)?;
    failpoint::hit("image-partial");
    rest.par_iter().try_for_each(|task| write(task))
}

/// An all-zero page, written for gaps.
static ZERO_PAGE: [u8; PAGE_SIZE] = [0; PAGE_SIZE];

/// The pages of `task` read from `store`, each verified against its hash.
fn verified_pages(
    store: &PageStore,
    task: &[(u64, PageHash)],
    tmp: &Path,
) -> Result<Vec<Page>, ImageError> {
    let read_err = |source| ImageError::Read {
        path: tmp.to_path_buf(),
        source,
    };
    let hashes: Vec<PageHash> = task.iter().map(|(_, h)| *h).collect();
    let mut pages = Vec::with_capacity(task.len());
    for (view, hash) in store.views(&hashes).into_iter().zip(&hashes) {
        let page = match view {
            Ok(p) => p,
            // Committed after we loaded the index? `get` refreshes.
            Err(ReadError::NotFound { .. }) => store.get_unverified(hash).map_err(read_err)?,
            Err(e) => return Err(read_err(e)),
        };
        page.verify(hash).map_err(read_err)?;
        pages.push(page);
    }
    Ok(pages)
}

/// Writes the 2 MiB block of the file that holds `task` (its stored
/// pages, all in that block) with one `pwritev` from the block's start to
/// its end (or the file's), zeros between the pages.
fn write_block(
    store: &PageStore,
    task: &[(u64, PageHash)],
    size: u64,
    file: &File,
    tmp: &Path,
) -> Result<(), ImageError> {
    let pages = verified_pages(store, task, tmp)?;
    let block_start = task[0].0 / PMD_SIZE * PMD_SIZE;
    let block_end = (block_start + PMD_SIZE).min(size);
    let page = PAGE_SIZE as u64;
    let mut iov: Vec<IoSlice<'_>> = Vec::with_capacity((PMD_SIZE / page) as usize);
    let mut at = block_start;
    for ((offset, _), data) in task.iter().zip(&pages) {
        while at < *offset {
            iov.push(IoSlice::new(&ZERO_PAGE));
            at += page;
        }
        iov.push(IoSlice::new(data));
        at += page;
    }
    while at < block_end {
        iov.push(IoSlice::new(&ZERO_PAGE));
        at += page;
    }
    write_vectored_at(file, &mut iov, block_start).map_err(|source| ImageError::Io {
        path: tmp.to_path_buf(),
        source,
    })
}

/// Verifies and writes one run of pages.
fn write_task(
    store: &PageStore,
    task: &[(u64, PageHash)],
    file: &File,
    tmp: &Path,
) -> Result<(), ImageError> {
    let pages = verified_pages(store, task, tmp)?;
    // One pwritev per stretch of pages; gaps shorter than `HOLE_MIN_PAGES`
    // are written as zeros so that the stretch goes on.
    let mut iov: Vec<IoSlice<'_>> = Vec::with_capacity(IOV_MAX);
    let mut start = 0u64;
    let mut end = 0u64;
    for ((offset, _), page) in task.iter().zip(&pages) {
        let gap = (offset.saturating_sub(end) / PAGE_SIZE as u64) as usize;
        let joins =
            !iov.is_empty() && *offset >= end && gap < HOLE_MIN_PAGES && iov.len() + gap < IOV_MAX;
        if !joins && !iov.is_empty() {
            write_vectored_at(file, &mut iov, start).map_err(|source| ImageError::Io {
                path: tmp.to_path_buf(),
                source,
            })?;
            iov.clear();
        }
        if iov.is_empty() {
            start = *offset;
        } else {
            iov.extend(std::iter::repeat_n(IoSlice::new(&ZERO_PAGE), gap));
        }
        iov.push(IoSlice::new(page));
        end = offset + PAGE_SIZE as u64;
    }
    if !iov.is_empty() {
        write_vectored_at(file, &mut iov, start).map_err(|source| ImageError::Io {
            path: tmp.to_path_buf(),
            source,
        })?;
    }
    Ok(())
}

/// A published image of a snapshot, opened.
#[derive(Debug)]
pub struct CachedImage {
    /// The image file (may be unlinked by gc later; `file` stays valid).
    pub path: PathBuf,
    /// The open image, read-only: map it `MAP_PRIVATE`.
    pub file: File,
    /// Where each area lies.
    pub layout: ImageLayout,
    /// True if this call built it, false if it was cached.
    pub built: bool,
}

impl PageStore {
    /// File name of the cached image of a snapshot version in this boot.
    pub(crate) fn image_name(id: &str, key: &str) -> String {
        format!("{id}.{key}.{}.img", boot_id())
    }

    /// File name of the cached PMD-aligned image of a snapshot version in
    /// this boot ([`Placement::PmdAligned`]).
    pub(crate) fn pmd_image_name(id: &str, key: &str) -> String {
        format!("{id}.{key}.pmd.{}.img", boot_id())
    }

    /// The image of snapshot `id` as its root stands now: opened from the
    /// cache, or built, published and opened. Safe to call from several
    /// processes at once (each builds under its own temporary name; the
    /// results are identical).
    ///
    /// A handle remembers the images it opened: while the root file is the
    /// same (same inode, size and times), a call costs a `stat` and an
    /// `open` instead of decoding the root.
    pub fn image(&self, id: &str) -> Result<CachedImage, ImageError> {
        self.image_placed(id, Placement::Packed)
    }

    /// [`PageStore::image`] with the areas placed as `placement` says: a
    /// PMD-aligned image is another file than the packed one, cached beside
    /// it. `placement`'s addresses are those of the snapshot's areas, in
    /// the root's order.
    pub fn image_placed(
        &self,
        id: &str,
        placement: Placement<'_>,
    ) -> Result<CachedImage, ImageError> {
        super::roots::validate_snapshot_id(id).map_err(RootError::from)?;
        let root_path = self.root_path(id);
        let root_meta = std::fs::metadata(&root_path).ok();
        let aligned = placement.pmd_aligned();
        // Remembered apart: the same snapshot's two images.
        let memo_key = if aligned {
            format!("{id}/pmd")
        } else {
            id.to_string()
        };
        if let Some(meta) = &root_meta {
            let known = self.remembered_images().get(&memo_key).cloned();
            if let Some(r) = known.filter(|r| r.root == RootStamp::of(meta)) {
                match File::open(&r.path) {
                    Ok(file) => {
                        return Ok(CachedImage {
                            path: r.path,
                            file,
                            layout: r.layout,
                            built: false,
                        })
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(source) => {
                        return Err(ImageError::Io {
                            path: r.path,
                            source,
                        })
                    }
                }
            }
        }
        let root = self.load_root(id)?;
        let name = if aligned {
            PageStore::pmd_image_name(id, &root.content_key())
        } else {
            PageStore::image_name(id, &root.content_key())
        };
        let path = self.dir().join("images").join(name);
        let layout = ImageLayout::placed(&root.areas, placement);
        let io = |source| ImageError::Io {
            path: path.clone(),
            source,
        };
        let mut built = false;
        let file = match File::open(&path) {
            Ok(file) if file.metadata().map_err(io)?.len() == layout.size => file,
            Ok(_) => {
                tracing::warn!(path = %path.display(), "cached image has the wrong size, rebuilding");
                built = true;
                self.build_and_open(&root.areas, placement, &path)?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                built = true;
                self.build_and_open(&root.areas, placement, &path)?
            }
            Err(e) => return Err(io(e)),
        };
        if let Some(meta) = root_meta {
            self.remembered_images().insert(
                memo_key,
                Remembered {
                    root: RootStamp::of(&meta),
                    path: path.clone(),
                    layout: layout.clone(),
                },
            );
        }
        Ok(CachedImage {
            path,
            file,
            layout,
            built,
        })
    }

    fn build_and_open(
        &self,
        areas: &[AreaPages],
        placement: Placement<'_>,
        path: &Path,
    ) -> Result<File, ImageError> {
        build_image_placed(self, areas, placement, path)?;
        File::open(path).map_err(|source| ImageError::Io {
            path: path.to_path_buf(),
            source,
        })
    }

    fn remembered_images(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, Remembered>> {
        self.images.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Identifies one version of a root file: roots are replaced by rename, so a
/// new version is a new inode with new times.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RootStamp {
    ino: u64,
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

impl RootStamp {
    fn of(meta: &std::fs::Metadata) -> RootStamp {
        use std::os::unix::fs::MetadataExt;
        RootStamp {
            ino: meta.ino(),
            size: meta.size(),
            mtime_ns: meta.mtime() as i128 * 1_000_000_000 + meta.mtime_nsec() as i128,
            ctime_ns: meta.ctime() as i128 * 1_000_000_000 + meta.ctime_nsec() as i128,
        }
    }
}

/// An image a handle opened before.
#[derive(Clone, Debug)]
pub(crate) struct Remembered {
    root: RootStamp,
    path: PathBuf,
    layout: ImageLayout,
}

/// A short form of this boot's id (changes at every boot).
fn boot_id() -> &'static str {
    static BOOT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BOOT.get_or_init(
        || match std::fs::read_to_string("/proc/sys/kernel/random/boot_id") {
            Ok(s) => s
                .trim()
                .chars()
                .filter(|c| c.is_ascii_hexdigit())
                .take(16)
                .collect(),
            Err(err) => {
                // Without a boot id, tie images to this process: always correct,
                // merely rebuilt more often.
                tracing::warn!(
                    ?err,
                    "cannot read the boot id; images will not be reused across processes"
                );
                format!("pid{}", std::process::id())
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zeros(pages: u64) -> AreaPages {
        let mut a = AreaPages::new();
        a.push_zero(pages);
        a
    }

    const MIB: u64 = 1 << 20;

    #[test]
    fn packed_areas_follow_each_other() {
        let areas = [zeros(3), zeros(1024), zeros(2)];
        let layout = ImageLayout::of(&areas);
        let offsets: Vec<u64> = layout.areas.iter().map(|a| a.offset).collect();
        assert_eq!(offsets, [0, 3 * 4096, 1027 * 4096]);
        assert_eq!(layout.size, 1029 * 4096);
    }

    #[test]
    fn runs_holding_a_pmd_block_start_congruent_to_their_address() {
        // 0: small, alone. 1: 5 MiB, not adjacent to 0 (aligned).
        // 2: adjacent to 1 (follows it). 3: small, alone (packed after 2).
        // 4 and 5: a run of two 1.5 MiB areas whose block straddles both
        // (no PMD: packed). 6: small, then 7: adjacent and 4 MiB (the run
        // starting at 6 is aligned).
        let starts = [
            0x1000,
            0x7f00_0012_3000,
            0x7f00_0012_3000 + 5 * MIB,
            0x7f10_0000_0000,
            0x7f20_0010_0000,
            0x7f20_0028_0000,
            0x7f30_0000_5000,
            0x7f30_0000_8000,
        ];
        let pages = [1, 1280, 7, 2, 384, 384, 3, 1024];
        let areas: Vec<AreaPages> = pages.iter().map(|&p| zeros(p)).collect();
        let layout = ImageLayout::placed(&areas, Placement::PmdAligned(&starts));
        let off: Vec<u64> = layout.areas.iter().map(|a| a.offset).collect();
        assert_eq!(off[0], 0);
        assert_eq!(off[1] % PMD_SIZE, starts[1] % PMD_SIZE);
        assert!(off[1] >= 4096 && off[1] < 4096 + PMD_SIZE);
        assert_eq!(
            off[2],
            off[1] + 1280 * 4096,
            "an adjacent area follows its run"
        );
        assert_eq!(off[3], off[2] + 7 * 4096, "a small area stays packed");
        assert_eq!(
            off[4],
            off[3] + 2 * 4096,
            "a run with no whole block stays packed"
        );
        assert_eq!(off[5], off[4] + 384 * 4096);
        assert_eq!(
            off[6] % PMD_SIZE,
            starts[6] % PMD_SIZE,
            "the run is aligned at its start"
        );
        assert_eq!(off[7], off[6] + 3 * 4096);
        assert_eq!(off[7] % PMD_SIZE, starts[7] % PMD_SIZE);
        assert_eq!(layout.size % PMD_SIZE, 0);
        assert!(layout.size >= off[7] + 1024 * 4096);
        // A list of addresses that does not match the areas: packed.
        assert_eq!(
            ImageLayout::placed(&areas, Placement::PmdAligned(&starts[1..])),
            ImageLayout::of(&areas)
        );
    }
}
