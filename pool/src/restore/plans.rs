//! What every restore of one snapshot computes alike, computed by the first
//! and shared by the rest (the server restores the same snapshot many times
//! a second; each restore's own work stays per restore).
//!
//! ```text
//! populate  mmap mode: the recorded working set as madvise ranges
//!           (`working_set::populate_ranges`: a copy, a sort and a walk of
//!           every page of the set), kept with the input it was made from
//!           and made again when that input differs
//! guard     mmap mode: the anonymous-memory guard's seccomp filter
//!           (`anon::FilterMemo`), built from the snapshot's areas
//! ```
//!
//! A [`SnapshotPlans`] belongs to one loaded snapshot (its areas never
//! change): [`super::sandboxed::SnapshotRestorer`] keeps one beside each
//! snapshot it has loaded and drops it with the snapshot.

use std::sync::{Arc, Mutex};

use snapshotter::state::MemoryArea;

use super::working_set::{self, Populate};

/// Plans shared by the restores of one snapshot.
#[derive(Debug, Default)]
pub struct SnapshotPlans {
    populate: Mutex<Option<PopulatePlan>>,
    /// The guard's filter (`anon::Guard::plan_with`).
    pub guard_filter: super::anon::FilterMemo,
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
