//! Store statistics: how much is stored against how much the snapshots
//! reference.

use super::hash::PAGE_SIZE;
use super::pagelist::PageCounts;
use super::roots::RootError;
use super::PageStore;

/// Sizes of the store and of what its snapshots reference.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct StoreStats {
    /// Distinct objects stored.
    pub objects: u64,
    /// Bytes of object data (`objects * 4096`).
    pub stored_bytes: u64,
    /// Bytes of pack files on disk, headers included.
    pub pack_bytes: u64,
    /// Snapshots (roots).
    pub snapshots: u64,
    /// Sum over roots of stored (non-zero, non-file) pages × 4096, repeats
    /// counted: what the snapshots would take without deduplication.
    pub logical_bytes: u64,
    /// `logical_bytes / stored_bytes` (0 if nothing is stored).
    pub dedup_ratio: f64,
    /// Zero pages over all roots (never stored).
    pub zero_pages: u64,
    /// File-backed pages over all roots (never stored).
    pub file_pages: u64,
}

/// Error computing statistics.
#[derive(Debug, thiserror::Error)]
pub enum StatsError {
    /// The index could not be reloaded.
    #[error(transparent)]
    Open(#[from] super::OpenError),
    /// A root could not be read.
    #[error(transparent)]
    Root(#[from] RootError),
}

impl PageStore {
    /// Current statistics (reloads the index first).
    pub fn stats(&self) -> Result<StoreStats, StatsError> {
        self.refresh()?;
        let mut counts = PageCounts::default();
        let ids = self.snapshot_ids()?;
        for id in &ids {
            for area in &self.load_root(id)?.areas {
                counts.add(area.counts());
            }
        }
        let (objects, packs) = {
            let state = self.read_state();
            (
                state.objects.len() as u64,
                state.packs.keys().copied().collect::<Vec<_>>(),
            )
        };
        let pack_bytes = packs
            .iter()
            .filter_map(|id| std::fs::metadata(self.pack_path(*id)).ok())
            .map(|m| m.len())
            .sum();
        let stored_bytes = objects * PAGE_SIZE as u64;
        let logical_bytes = counts.hashed * PAGE_SIZE as u64;
        Ok(StoreStats {
            objects,
            stored_bytes,
            pack_bytes,
            snapshots: ids.len() as u64,
            logical_bytes,
            dedup_ratio: if stored_bytes == 0 {
                0.0
            } else {
                logical_bytes as f64 / stored_bytes as f64
            },
            zero_pages: counts.zero,
            file_pages: counts.file,
        })
    }
}
