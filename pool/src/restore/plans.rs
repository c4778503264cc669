//! What every restore of one snapshot computes alike, computed by the first
//! and shared by the rest (the server restores the same snapshot many times
//! a second; each restore's own work stays per restore).
//!
//! ```text
//! populate  the recorded working set as madvise ranges (uffd mode: only
//!           its pages outside the areas the page server fills,
//!           `working_set::outside_lazy_areas`, a search per page)
//!           (`working_set::populate_ranges`: a copy, a sort and a walk of
//!           every page of the set), kept with the input it was made from
//!           (the set as given, before that filter) and made again when
//!           that input differs
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
    scope: PopulateScope,
    around: bool,
    ranges: Arc<Vec<Populate>>,
}

/// Which pages of a working set a copy populates before its resume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PopulateScope {
    /// Every page (mmap mode).
    All,
    /// Only those outside the areas the page server fills (uffd mode:
    /// [`working_set::outside_lazy_areas`]).
    OutsideLazyAreas,
}

impl PopulateScope {
    /// [`working_set::populate_ranges`] of the pages of `pages` in this
    /// scope, over `areas`.
    pub fn ranges(self, pages: &[u64], areas: &[MemoryArea], reads: bool) -> Vec<Populate> {
        match self {
            PopulateScope::All => working_set::populate_ranges(pages, areas, reads),
            PopulateScope::OutsideLazyAreas => working_set::populate_ranges(
                &working_set::outside_lazy_areas(pages, areas),
                areas,
                reads,
            ),
        }
    }

    /// [`PopulateScope::ranges`], with `around` its reads one page per
    /// fault-around block ([`super::populate::by_fault_around`]).
    pub fn ranges_around(
        self,
        pages: &[u64],
        areas: &[MemoryArea],
        reads: bool,
        around: bool,
    ) -> Vec<Populate> {
        let ranges = self.ranges(pages, areas, reads);
        if around {
            super::populate::by_fault_around(&ranges, areas)
        } else {
            ranges
        }
    }
}

impl SnapshotPlans {
    /// [`PopulateScope::ranges`] of `pages` over `areas` (the snapshot's
    /// own: the same in every call), with `around` its reads one page per
    /// fault-around block ([`super::populate::by_fault_around`]), made once
    /// per distinct `(pages, reads, scope, around)`: a later restore
    /// compares its `pages` with the kept input and neither filters nor
    /// sorts them again.
    pub fn populate_ranges(
        &self,
        pages: &[u64],
        areas: &[MemoryArea],
        reads: bool,
        scope: PopulateScope,
        around: bool,
    ) -> Arc<Vec<Populate>> {
        let mut slot = self.populate.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = slot.as_ref() {
            if p.reads == reads && p.scope == scope && p.around == around && p.pages == pages {
                return p.ranges.clone();
            }
        }
        let ranges = Arc::new(scope.ranges_around(pages, areas, reads, around));
        *slot = Some(PopulatePlan {
            pages: pages.to_vec(),
            reads,
            scope,
            around,
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
        let all = PopulateScope::All;
        let first = plans.populate_ranges(&pages, &areas, false, all, false);
        assert_eq!(*first, working_set::populate_ranges(&pages, &areas, false));
        let again = plans.populate_ranges(&pages, &areas, false, all, false);
        assert!(
            Arc::ptr_eq(&first, &again),
            "the same input reuses the plan"
        );
        let reads = plans.populate_ranges(&pages, &areas, true, all, false);
        assert_eq!(*reads, working_set::populate_ranges(&pages, &areas, true));
        assert_ne!(*reads, *first, "reads add MADV_POPULATE_READ ranges");
        let other = vec![0x18000 | w];
        let changed = plans.populate_ranges(&other, &areas, false, all, false);
        assert_eq!(
            *changed,
            working_set::populate_ranges(&other, &areas, false)
        );
        assert_ne!(*changed, *first, "another working set is planned anew");
        // Reads by fault-around are a plan of their own.
        let invoked = working_set::INVOKED;
        let read = vec![0x11000 | invoked, 0x12000 | invoked, 0x13000 | w];
        let whole = plans.populate_ranges(&read, &areas, false, all, false);
        let around = plans.populate_ranges(&read, &areas, false, all, true);
        assert_eq!(
            *around,
            super::super::populate::by_fault_around(&whole, &areas)
        );
        assert_ne!(*around, *whole, "two read pages of one block: one kept");
    }

    /// In uffd mode the plan filters out the pages of the areas the page
    /// server fills once, and keeps the unfiltered set to compare with.
    #[test]
    fn the_uffd_scope_is_filtered_once_and_kept_apart() {
        let mut file = anonymous(0x30000, 0x40000);
        file.kind = AreaKind::FilePrivate;
        let areas = vec![anonymous(0x10000, 0x20000), file];
        assert!(super::super::uffd::is_lazy(&areas[0]));
        assert!(!super::super::uffd::is_lazy(&areas[1]));
        let w = working_set::WRITTEN;
        let pages = vec![0x12000 | w, 0x31000 | w, 0x11000 | w, 0x32000 | w];
        let outside = PopulateScope::OutsideLazyAreas;
        let plans = SnapshotPlans::default();
        let first = plans.populate_ranges(&pages, &areas, false, outside, false);
        let fresh = working_set::populate_ranges(
            &working_set::outside_lazy_areas(&pages, &areas),
            &areas,
            false,
        );
        assert_eq!(*first, fresh);
        assert!(
            !first.is_empty() && first.iter().all(|r| r.start >= 0x30000),
            "the file's pages, nothing of the lazy area: {first:?}"
        );
        let again = plans.populate_ranges(&pages, &areas, false, outside, false);
        assert!(Arc::ptr_eq(&first, &again), "the same input reuses it");
        let all = plans.populate_ranges(&pages, &areas, false, PopulateScope::All, false);
        assert_eq!(*all, working_set::populate_ranges(&pages, &areas, false));
        assert_ne!(*all, *first, "the other scope is planned apart");
    }
}
