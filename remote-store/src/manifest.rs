//! The snapshot object: what a node needs to rebuild a snapshot locally.
//!
//! ```text
//! snapshots/<name>   sealed; payload (bincode 1):
//!   format           REMOTE_SNAPSHOT_FORMAT
//!   manifest_id      the id inside the manifest
//!   manifest         the THAWSNAP manifest file, byte for byte
//!   packs[]          names of the packs holding its pages
//!   pages[]          per distinct stored page: hash, pack (index in packs),
//!                    slot; sorted by hash
//! then, since 2026-12-07, an extension (bincode 1; absent in older
//! objects; readers of format 1 ignore it, bincode 1 allows trailing bytes):
//!   working_packs[]  per working-set pack (wspacks/<name>): its name, its
//!                    page hashes in slot order (at most MAX_PACK_PAGES)
//! ```
//!
//! A page server can turn any list of pages (the working set first) into
//! ranged reads of packs from `pages[]` alone. A working-set pack holds
//! again, contiguous, the pages a lazy restore fetches before the copy
//! resumes (`push.rs`); `pages[]` still locates every page in the shared
//! packs, so a pull, an older reader or a reader told not to
//! (`THAW_LAZY_WORKING_PACK=0`) never reads it. The gc keeps it as long
//! as a snapshot object names it (`gc.rs`).

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use snapshotter::store::PageHash;

use crate::index::BucketIndex;

/// Version of the snapshot object's payload.
pub const REMOTE_SNAPSHOT_FORMAT: u32 = 1;

/// Where one page of a snapshot is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemotePage {
    /// The page's hash.
    pub hash: [u8; 32],
    /// Index in [`RemoteSnapshot::packs`].
    pub pack: u32,
    /// Slot in that pack.
    pub slot: u32,
}

/// The payload of a snapshot object.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteSnapshot {
    /// [`REMOTE_SNAPSHOT_FORMAT`].
    pub format: u32,
    /// The id inside the manifest.
    pub manifest_id: String,
    /// The manifest file.
    pub manifest: Vec<u8>,
    /// Names of the packs.
    pub packs: Vec<String>,
    /// Every distinct stored page, sorted by hash.
    pub pages: Vec<RemotePage>,
    /// The working-set packs (the extension after the format-1 payload;
    /// empty in objects without it).
    #[serde(skip)]
    pub working_packs: Vec<WorkingPack>,
}

/// A pack holding again, contiguous, pages a lazy restore fetches before
/// the copy resumes (see the module doc).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkingPack {
    /// Its name (in `wspacks/`).
    pub name: String,
    /// Its pages' hashes, in slot order.
    pub pages: Vec<[u8; 32]>,
}

/// What follows the format-1 payload.
#[derive(Serialize, Deserialize)]
struct Extension {
    working_packs: Vec<WorkingPack>,
}

impl RemoteSnapshot {
    /// The object for a manifest whose distinct pages are `hashes` (sorted),
    /// located through `index`; `None` if a page is not in it.
    pub(crate) fn new(
        manifest_id: &str,
        manifest: Vec<u8>,
        hashes: &[PageHash],
        index: &BucketIndex,
    ) -> Option<RemoteSnapshot> {
        let mut packs: Vec<String> = Vec::new();
        let mut numbers: HashMap<String, u32> = HashMap::new();
        let mut pages = Vec::with_capacity(hashes.len());
        for hash in hashes {
            let loc = index.get(hash)?;
            let pack = *numbers.entry(loc.pack.to_string()).or_insert_with(|| {
                packs.push(loc.pack.to_string());
                (packs.len() - 1) as u32
            });
            pages.push(RemotePage {
                hash: hash.0,
                pack,
                slot: loc.slot,
            });
        }
        Some(RemoteSnapshot {
            format: REMOTE_SNAPSHOT_FORMAT,
            manifest_id: manifest_id.to_string(),
            manifest,
            packs,
            pages,
            working_packs: Vec::new(),
        })
    }

    /// Adds the working-set pack `name` holding `pages` (slot order).
    pub(crate) fn add_working_pack(&mut self, name: &str, pages: &[PageHash]) {
        self.working_packs.push(WorkingPack {
            name: name.to_string(),
            pages: pages.iter().map(|h| h.0).collect(),
        });
    }

    /// The payload bytes: the format-1 fields, then the extension if there
    /// is a working-set pack.
    pub fn encode(&self) -> Vec<u8> {
        let mut bytes = bincode::serialize(self).expect("a snapshot object always encodes");
        if !self.working_packs.is_empty() {
            let extension = Extension {
                working_packs: self.working_packs.clone(),
            };
            bytes.extend(bincode::serialize(&extension).expect("an extension always encodes"));
        }
        bytes
    }

    /// Decodes a payload, checking its format and that every page names a
    /// pack it lists.
    pub fn decode(bytes: &[u8]) -> Result<RemoteSnapshot, String> {
        #[derive(Deserialize)]
        struct FormatOnly {
            format: u32,
        }
        let format: FormatOnly = bincode::deserialize(bytes).map_err(|e| e.to_string())?;
        if format.format != REMOTE_SNAPSHOT_FORMAT {
            return Err(format!(
                "snapshot object format {} (this build reads {REMOTE_SNAPSHOT_FORMAT})",
                format.format
            ));
        }
        let mut object: RemoteSnapshot = bincode::deserialize(bytes).map_err(|e| e.to_string())?;
        let fields = bincode::serialized_size(&object).map_err(|e| e.to_string())? as usize;
        if let Some(rest) = bytes.get(fields..).filter(|r| !r.is_empty()) {
            let extension: Extension = bincode::deserialize(rest)
                .map_err(|e| format!("the extension after the pages: {e}"))?;
            object.working_packs = extension.working_packs;
        }
        if let Some(w) = object
            .working_packs
            .iter()
            .find(|w| w.pages.len() > crate::seal::MAX_PACK_PAGES as usize)
        {
            return Err(format!(
                "working-set pack {} lists {} pages (at most {})",
                w.name,
                w.pages.len(),
                crate::seal::MAX_PACK_PAGES
            ));
        }
        if let Some(p) = object.pages.iter().find(|p| {
            p.pack as usize >= object.packs.len() || p.slot >= crate::seal::MAX_PACK_PAGES
        }) {
            return Err(format!(
                "page {} is in pack {} slot {} of {} packs",
                PageHash(p.hash),
                p.pack,
                p.slot,
                object.packs.len()
            ));
        }
        Ok(object)
    }
}
