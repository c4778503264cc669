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
//! ```
//!
//! A page server can turn any list of pages (the working set first) into
//! ranged reads of packs from `pages[]` alone.

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
        })
    }

    /// The payload bytes.
    pub fn encode(&self) -> Vec<u8> {
        bincode::serialize(self).expect("a snapshot object always encodes")
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
        let object: RemoteSnapshot = bincode::deserialize(bytes).map_err(|e| e.to_string())?;
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
