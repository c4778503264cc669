//! The bridge from capture to the store: a [`PageSink`] that puts captured
//! pages into a [`StoreWriter`], and the conversion of a captured
//! [`MemoryArea`]'s runs plus the stored hashes into an [`AreaPages`].
//!
//! ```text
//! capture ──pages(area, first_page, data)──> StoreSink ──put_batch──> pack
//!                                               │
//!                       hashes per area, in address order
//!                                               │
//! MemoryArea.pages (Stored / Zero runs) ──area_pages──> AreaPages (manifest, root)
//! ```

use crate::capture::{PageSink, SinkError};
use crate::state::{AreaKind, MemoryArea, PageRunKind};

use super::hash::{PageHash, PAGE_SIZE};
use super::pagelist::{AreaPages, PageRef};
use super::writer::StoreWriter;

/// A [`PageSink`] writing into a store transaction.
#[derive(Debug)]
pub struct StoreSink<'w, 's> {
    writer: &'w mut StoreWriter<'s>,
    /// Per area: `(page index, hash)` of every stored page, in order.
    stored: Vec<Vec<(u64, PageHash)>>,
}

/// The sink was given pages out of order.
#[derive(Debug, thiserror::Error)]
#[error("page sink: area {area} page {page} arrived after page {last}")]
pub struct OutOfOrder {
    /// The area.
    pub area: usize,
    /// The page received.
    pub page: u64,
    /// The last page received before.
    pub last: u64,
}

impl<'w, 's> StoreSink<'w, 's> {
    /// A sink putting pages through `writer`.
    pub fn new(writer: &'w mut StoreWriter<'s>) -> StoreSink<'w, 's> {
        StoreSink {
            writer,
            stored: Vec::new(),
        }
    }

    /// Hashes of the stored pages of `area`, with their page index, in order.
    pub fn stored(&self, area: usize) -> &[(u64, PageHash)] {
        self.stored.get(area).map_or(&[], |v| v.as_slice())
    }

    /// Hashes of the stored pages of every area, in order.
    pub fn into_stored(self) -> Vec<Vec<(u64, PageHash)>> {
        self.stored
    }
}

impl PageSink for StoreSink<'_, '_> {
    fn pages(&mut self, area: usize, first_page: u64, data: &[u8]) -> Result<(), SinkError> {
        if self.stored.len() <= area {
            self.stored.resize_with(area + 1, Vec::new);
        }
        let list = &mut self.stored[area];
        if let Some(&(last, _)) = list.last() {
            if first_page <= last {
                return Err(SinkError(Box::new(OutOfOrder {
                    area,
                    page: first_page,
                    last,
                })));
            }
        }
        let refs = self
            .writer
            .put_batch(data)
            .map_err(|e| SinkError(Box::new(e)))?;
        for (i, r) in refs.iter().enumerate() {
            let page = first_page + i as u64;
            match r {
                PageRef::Hash(h) => list.push((page, *h)),
                // Capture sends only non-zero pages; a zero one gets no hash,
                // and `area_pages` reports the mismatch with its runs.
                PageRef::Zero => {}
            }
        }
        Ok(())
    }
}

/// Error converting a captured area.
#[derive(Debug, thiserror::Error)]
pub enum AreaPagesError {
    /// The runs and the stored hashes disagree.
    #[error("area at {start:#x}: stored page {page} is not in a Stored run")]
    Unexpected {
        /// The area's start address.
        start: u64,
        /// The page index.
        page: u64,
    },
    /// A Stored run has no hash for one of its pages.
    #[error("area at {start:#x}: no stored hash for page {page} of a Stored run")]
    Missing {
        /// The area's start address.
        start: u64,
        /// The page index.
        page: u64,
    },
}

/// The page list of a captured area: pages in `Stored` runs take their hash
/// from `stored` (every one must have one),
/// `Zero` runs are zero, and pages in no run are the file's (file mappings)
/// or zero (anonymous memory).
pub fn area_pages(
    area: &MemoryArea,
    stored: &[(u64, PageHash)],
) -> Result<AreaPages, AreaPagesError> {
    let total = area.len() / PAGE_SIZE as u64;
    let untouched_is_file = matches!(area.kind, AreaKind::FileUnchanged | AreaKind::FilePrivate);
    let mut out = AreaPages::new();
    let mut at = 0u64;
    let mut next = stored.iter().peekable();
    let gap = |out: &mut AreaPages, n: u64| {
        if untouched_is_file {
            out.push_file(n)
        } else {
            out.push_zero(n)
        }
    };
    for run in &area.pages {
        if run.first > at {
            gap(&mut out, run.first - at);
        }
        let end = run.first + run.count;
        match run.kind {
            PageRunKind::Zero => out.push_zero(run.count),
            PageRunKind::Stored => {
                for page in run.first..end {
                    match next.peek() {
                        Some(&&(p, h)) if p == page => {
                            out.push_hash(h);
                            next.next();
                        }
                        Some(&&(p, _)) if p < page => {
                            return Err(AreaPagesError::Unexpected {
                                start: area.start,
                                page: p,
                            })
                        }
                        _ => {
                            return Err(AreaPagesError::Missing {
                                start: area.start,
                                page,
                            })
                        }
                    }
                }
            }
        }
        at = end.max(at);
    }
    if total > at {
        gap(&mut out, total - at);
    }
    if let Some(&(page, _)) = next.next() {
        return Err(AreaPagesError::Unexpected {
            start: area.start,
            page,
        });
    }
    Ok(out)
}
