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
//! an area is at `offset + 4096 * i`. Zero pages and file-backed pages read
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
use super::{PageStore, ReadError};

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

impl ImageLayout {
    /// The layout of an image of `areas`.
    pub fn of(areas: &[AreaPages]) -> ImageLayout {
        let mut offset = 0;
        let areas = areas
            .iter()
            .map(|a| {
                let area = ImageArea {
                    offset,
                    pages: a.page_count(),
                };
                offset += area.pages * PAGE_SIZE as u64;
                area
            })
            .collect();
        ImageLayout {
            areas,
            size: offset,
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
    let layout = ImageLayout::of(areas);
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
    let result = write_pages(store, areas, &layout, &file, &tmp).and_then(|()| {
        failpoint::hit("image-written");
        std::fs::rename(&tmp, out).map_err(io(out))
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map(|()| layout)
}

fn write_pages(
    store: &PageStore,
    areas: &[AreaPages],
    layout: &ImageLayout,
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
    let first = TASK_PAGES.min(items.len());
    write_task(store, &items[..first], file, tmp)?;
    failpoint::hit("image-partial");
    items[first..]
        .par_chunks(TASK_PAGES)
        .try_for_each(|task| write_task(store, task, file, tmp))
}

/// Verifies and writes one run of pages.
fn write_task(
    store: &PageStore,
    task: &[(u64, PageHash)],
    file: &File,
    tmp: &Path,
) -> Result<(), ImageError> {
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
    // One pwritev per stretch of pages; gaps shorter than `HOLE_MIN_PAGES`
    // are written as zeros so that the stretch goes on.
    static ZERO_PAGE: [u8; PAGE_SIZE] = [0; PAGE_SIZE];
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

    /// The image of snapshot `id` as its root stands now: opened from the
    /// cache, or built, published and opened. Safe to call from several
    /// processes at once (each builds under its own temporary name; the
    /// results are identical).
    ///
    /// A handle remembers the images it opened: while the root file is the
    /// same (same inode, size and times), a call costs a `stat` and an
    /// `open` instead of decoding the root.
    pub fn image(&self, id: &str) -> Result<CachedImage, ImageError> {
        super::roots::validate_snapshot_id(id).map_err(RootError::from)?;
        let root_path = self.root_path(id);
        let root_meta = std::fs::metadata(&root_path).ok();
        if let Some(meta) = &root_meta {
            let known = self.remembered_images().get(id).cloned();
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
        let path = self
            .dir()
            .join("images")
            .join(PageStore::image_name(id, &root.content_key()));
        let layout = ImageLayout::of(&root.areas);
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
                self.build_and_open(&root.areas, &path)?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                built = true;
                self.build_and_open(&root.areas, &path)?
            }
            Err(e) => return Err(io(e)),
        };
        if let Some(meta) = root_meta {
            self.remembered_images().insert(
                id.to_string(),
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

    fn build_and_open(&self, areas: &[AreaPages], path: &Path) -> Result<File, ImageError> {
        build_image(self, areas, path)?;
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
