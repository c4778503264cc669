//! Which pages the bucket holds: the union of its pack indexes.
//!
//! A pack `packs/<name>` is committed by its index `packidx/<name>`, written
//! after it: the sealed list of the pack's page hashes in slot order (32
//! bytes each). `<name>` is the keyed name of that list, so a pack index
//! that does not belong to its name is refused. A pack without an index (a
//! writer killed mid-upload) is ignored, and its pages are sent again.
//!
//! The index is kept in memory and refreshed by listing `packidx/` and
//! reading only the indexes not seen before (they never change).

use std::collections::HashSet;
use std::sync::Arc;

use futures_util::{stream, StreamExt, TryStreamExt};
use snapshotter::store::{HashMapByPage, PageHash};

use crate::bucket::{ObjectError, RemoteStore};
use crate::key::Kind;
use crate::seal::MAX_PACK_PAGES;

/// Where a page is in the bucket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PageLoc {
    /// The pack's name.
    pub pack: Arc<str>,
    /// Its slot.
    pub slot: u32,
}

/// The pages the bucket holds (as of the last refresh).
#[derive(Debug, Default)]
pub struct BucketIndex {
    packs: HashSet<String>,
    pages: HashMapByPage<PageLoc>,
}

impl BucketIndex {
    /// Where `hash` is, if the bucket has it.
    pub fn get(&self, hash: &PageHash) -> Option<&PageLoc> {
        self.pages.get(hash)
    }

    /// Committed packs.
    pub fn pack_count(&self) -> usize {
        self.packs.len()
    }

    /// Whether the pack is committed.
    pub fn has_pack(&self, name: &str) -> bool {
        self.packs.contains(name)
    }

    /// Distinct pages in committed packs.
    pub fn page_count(&self) -> usize {
        self.pages.len()
    }

    /// Records a pack this process committed.
    pub(crate) fn add(&mut self, name: &str, hashes: &[PageHash]) {
        let pack: Arc<str> = name.into();
        for (slot, hash) in hashes.iter().enumerate() {
            self.pages.entry(*hash).or_insert(PageLoc {
                pack: pack.clone(),
                slot: slot as u32,
            });
        }
        self.packs.insert(name.to_string());
    }
}

/// The address a pack's name is derived from: its hashes back to back.
pub(crate) fn pack_address(hashes: &[PageHash]) -> Vec<u8> {
    hashes.iter().flat_map(|h| h.0).collect()
}

impl RemoteStore {
    /// Lists the bucket's pack indexes and reads the new ones.
    pub async fn refresh_index(&self) -> Result<(), ObjectError> {
        let listed = self.list(Kind::PackIndex).await?;
        let fresh: Vec<String> = {
            let index = self.index.lock().await;
            listed
                .into_iter()
                .map(|l| l.name)
                .filter(|n| !index.packs.contains(n))
                .collect()
        };
        let read: Vec<(String, Vec<PageHash>)> = stream::iter(fresh)
            .map(|name| async move {
                let hashes = self.read_pack_index(&name).await?;
                Ok::<_, ObjectError>((name, hashes))
            })
            .buffer_unordered(16)
            .try_collect()
            .await?;
        let mut index = self.index.lock().await;
        for (name, hashes) in read {
            index.add(&name, &hashes);
        }
        Ok(())
    }

    pub(crate) async fn read_pack_index(&self, name: &str) -> Result<Vec<PageHash>, ObjectError> {
        let invalid = |what: String| ObjectError::Invalid {
            object: self.describe(Kind::PackIndex, name),
            what,
        };
        let bytes = self
            .get_sealed(Kind::PackIndex, name)
            .await?
            .ok_or_else(|| ObjectError::Missing {
                object: self.describe(Kind::PackIndex, name),
            })?;
        if bytes.len() % 32 != 0 || bytes.is_empty() || bytes.len() / 32 > MAX_PACK_PAGES as usize {
            return Err(invalid(format!("a list of {} bytes", bytes.len())));
        }
        if self.name(Kind::Pack, &bytes) != name {
            return Err(invalid("lists pages of another pack".into()));
        }
        Ok(bytes
            .chunks_exact(32)
            .map(|c| PageHash(c.try_into().expect("32 bytes")))
            .collect())
    }

    /// Pages the bucket holds and committed packs, as of the last refresh.
    pub async fn index_counts(&self) -> (usize, usize) {
        let index = self.index.lock().await;
        (index.page_count(), index.pack_count())
    }
}
