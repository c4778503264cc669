//! What every restore of one snapshot computes alike, computed by the first
//! and shared by the rest (the server restores the same snapshot many times
//! a second; each restore's own work stays per restore).
//!
//! ```text
//! populate  the recorded working set as madvise ranges (uffd mode: only
//!           its pages outside the areas the page server fills)
//!           (`working_set::populate_ranges`: a copy, a sort and a walk of
//!           every page of the set), kept with the input it was made from
//!           and made again when that input differs
//! guard     mmap mode: the anonymous-memory guard's seccomp filter
//!           (`anon::FilterMemo`), built from the snapshot's areas
//! image     the image mapped read-only in the server, from which every
//!           copy's stacks (and eagerly written areas) are written
//!           (`memory::write_private_pages`): mapped once, kept while the
//!           image file is the same (device and inode), instead of an
//!           `mmap` and a `munmap` per copy
//! ```
//!
//! A [`SnapshotPlans`] belongs to one loaded snapshot (its areas never
//! change): [`super::sandboxed::SnapshotRestorer`] keeps one beside each
//! snapshot it has loaded and drops it with the snapshot.

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::sync::{Arc, Mutex};

use snapshotter::state::MemoryArea;

use super::working_set::{self, Populate};

/// Plans shared by the restores of one snapshot.
#[derive(Debug, Default)]
pub struct SnapshotPlans {
    populate: Mutex<Option<PopulatePlan>>,
    /// The guard's filter (`anon::Guard::plan_with`).
    pub guard_filter: super::anon::FilterMemo,
    image: Mutex<Option<KeptImage>>,
}

/// The image mapped read-only, and which file it is.
#[derive(Debug)]
struct KeptImage {
    dev: u64,
    inode: u64,
    map: Arc<memmap2::Mmap>,
}

/// The populate ranges and what they were made from.
#[derive(Debug)]
struct PopulatePlan {
    pages: Vec<u64>,
    reads: bool,
    ranges: Arc<Vec<Populate>>,
}

impl SnapshotPlans {
    /// [`working_set::populate_ranges`] of `pages` over `areas` (the
    /// snapshot's own: the same in every call), made once per distinct
    /// `(pages, reads)`.
    pub fn populate_ranges(
        &self,
        pages: &[u64],
        areas: &[MemoryArea],
        reads: bool,
    ) -> Arc<Vec<Populate>> {
        let mut slot = self.populate.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = slot.as_ref() {
            if p.reads == reads && p.pages == pages {
                return p.ranges.clone();
            }
        }
        let ranges = Arc::new(working_set::populate_ranges(pages, areas, reads));
        *slot = Some(PopulatePlan {
            pages: pages.to_vec(),
            reads,
            ranges: ranges.clone(),
        });
        ranges
    }

    /// `image` (the snapshot's image file) mapped read-only: the mapping
    /// kept from an earlier restore when it is of the same file (device
    /// and inode: an image is never changed once published, but it may be
    /// rebuilt as a new file), else a new one, kept for the next.
    pub fn image_map(&self, image: &File) -> std::io::Result<Arc<memmap2::Mmap>> {
        let meta = image.metadata()?;
        let mut slot = self.image.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(kept) = slot.as_ref() {
            if kept.dev == meta.dev() && kept.inode == meta.ino() {
                return Ok(kept.map.clone());
            }
        }
        // SAFETY: the image is never changed once published (see the
        // store's image module); the mapping is read-only.
        let map = Arc::new(unsafe { memmap2::Mmap::map(image) }?);
        *slot = Some(KeptImage {
            dev: meta.dev(),
            inode: meta.ino(),
            map: map.clone(),
        });
        Ok(map)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use snapshotter::state::{AreaKind, Protection};

    fn anonymous(start: u64, end: u64) -> MemoryArea {
        MemoryArea {
            start,
            end,
            prot: Protection {
                read: true,
                write: true,
                exec: false,
            },
            shared: false,
            offset: 0,
            path: None,
            deleted: false,
            maps_dev: 0,
            inode: 0,
            file: None,
            kind: AreaKind::Anonymous,
            pages: Vec::new(),
        }
    }

    #[test]
    fn the_image_is_mapped_once_per_file() {
        let dir = std::env::temp_dir().join(format!("thaw-plans-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (a, b) = (dir.join("a"), dir.join("b"));
        std::fs::write(&a, vec![1u8; 8192]).unwrap();
        std::fs::write(&b, vec![2u8; 4096]).unwrap();
        let plans = SnapshotPlans::default();
        let first = plans.image_map(&File::open(&a).unwrap()).unwrap();
        let again = plans.image_map(&File::open(&a).unwrap()).unwrap();
        assert!(Arc::ptr_eq(&first, &again), "the same file keeps its map");
        let other = plans.image_map(&File::open(&b).unwrap()).unwrap();
        assert!(!Arc::ptr_eq(&first, &other), "another file is mapped anew");
        assert_eq!(other.len(), 4096);
        assert!(other.iter().all(|&byte| byte == 2));
        assert!(first.iter().all(|&byte| byte == 1));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn ranges_are_made_once_per_input_and_equal_a_fresh_computation() {
        let areas = vec![anonymous(0x10000, 0x20000)];
        let w = working_set::WRITTEN;
        let pages = vec![0x12000 | w, 0x11000 | w, 0x15000 | w];
        let plans = SnapshotPlans::default();
        let first = plans.populate_ranges(&pages, &areas, false);
        assert_eq!(*first, working_set::populate_ranges(&pages, &areas, false));
        let again = plans.populate_ranges(&pages, &areas, false);
        assert!(
            Arc::ptr_eq(&first, &again),
            "the same input reuses the plan"
        );
        let reads = plans.populate_ranges(&pages, &areas, true);
        assert_eq!(*reads, working_set::populate_ranges(&pages, &areas, true));
        assert_ne!(*reads, *first, "reads add MADV_POPULATE_READ ranges");
        let other = vec![0x18000 | w];
        let changed = plans.populate_ranges(&other, &areas, false);
        assert_eq!(
            *changed,
            working_set::populate_ranges(&other, &areas, false)
        );
        assert_ne!(*changed, *first, "another working set is planned anew");
    }
}
