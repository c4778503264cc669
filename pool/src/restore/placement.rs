//! Which image of a snapshot a restore maps: packed (the default) or with
//! its large areas placed for PMD mappings
//! ([`snapshotter::store::Placement::PmdAligned`], a prototype).
//!
//! With `THAW_IMAGE_PMD=1` in the restorer's environment (read at every
//! restore, so one process can alternate the two for an A/B), a run of
//! areas adjacent in memory that holds a whole 2 MiB-aligned block lies in
//! the image at an offset congruent to its address modulo 2 MiB, written
//! in 2 MiB page-cache folios; the kernel then maps each such block of a
//! copy's `MAP_PRIVATE` mapping of the image with one PMD when the copy
//! reads it (a fault or `MADV_POPULATE_READ`), as long as no page of the
//! block was written first (a write fault on the PMD splits it; a block
//! with written pages is mapped page by page). docs/restore.md has the
//! measurements.

use snapshotter::snapshot::Snapshot;
use snapshotter::store::{CachedImage, ImageError, PageStore, Placement};

/// Whether restores map PMD-aligned images: `THAW_IMAGE_PMD=1`.
pub fn pmd_wanted() -> bool {
    std::env::var_os("THAW_IMAGE_PMD").is_some_and(|v| v == "1")
}

/// Every process's area start addresses, in the store root's order (the
/// root process's areas, then each child's).
pub fn area_starts(snapshot: &Snapshot) -> Vec<u64> {
    snapshot
        .processes()
        .flat_map(|(state, _)| state.areas.iter().map(|a| a.start))
        .collect()
}

/// The snapshot's image as the restorer's environment asks for it
/// (packed, or PMD-aligned with `THAW_IMAGE_PMD=1`), opened or built.
pub fn image(snapshot: &Snapshot, store: &PageStore) -> Result<CachedImage, ImageError> {
    if pmd_wanted() {
        let starts = area_starts(snapshot);
        store.image_placed(&snapshot.id, Placement::PmdAligned(&starts))
    } else {
        store.image(&snapshot.id)
    }
}
