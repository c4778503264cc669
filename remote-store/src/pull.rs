//! Downloading a snapshot into a local store: the pages it lacks, in ranged
//! reads of packs, each page decrypted and checked against its blake3 hash;
//! then the store root, the manifest and the working set.
//!
//! ```text
//! 1. GET snapshots/<name>: manifest and page locations
//! 2. pages the local store lacks, grouped by pack, runs of slots merged
//!    (gaps of up to MERGE_GAP slots read and dropped, at most RANGE_SLOTS
//!    per read); RANGES_IN_FLIGHT reads at once; every page decrypted and
//!    rehashed: a wrong or undecryptable page fails the pull, naming it
//! 3. one store writer puts the pages as they come, then commits the root
//! 4. the manifest (written after the root, as a capture does), then the
//!    working set, if the bucket has one
//! ```

use std::collections::BTreeMap;

use futures_util::{stream, StreamExt, TryStreamExt};
use snapshotter::snapshot::{parse_snapshot, Snapshot};
use snapshotter::store::{
    write_manifest, AreaPages, CommitError, PageHash, PutError, WriteManifestError, WriterError,
    PAGE_SIZE,
};

use crate::bucket::{ObjectError, RemoteStore};
use crate::key::Kind;
use crate::local::{write_atomic, LocalSnapshot};
use crate::manifest::RemoteSnapshot;
use crate::seal;

/// Unneeded slots read rather than starting another request.
pub const MERGE_GAP: u32 = 8;
/// Most slots per ranged read (~1 MiB).
pub const RANGE_SLOTS: u32 = 256;
/// Ranged reads at once.
pub const RANGES_IN_FLIGHT: usize = 8;

/// What a download did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PullReport {
    /// The snapshot's name in the bucket.
    pub remote_id: String,
    /// Distinct stored pages of the snapshot.
    pub pages: u64,
    /// Of which the local store held already.
    pub pages_local: u64,
    /// Of which fetched now.
    pub pages_fetched: u64,
    /// Ranged reads of packs.
    pub ranges: u64,
    /// Bytes read, every object.
    pub bytes_fetched: u64,
    /// Whether a working set came with it.
    pub working_set: bool,
}

/// Why a download failed.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    /// The bucket has no such snapshot.
    #[error("snapshot {id} is not in {url}")]
    NotInBucket {
        /// The remote id.
        id: String,
        /// The store URL.
        url: String,
    },
    /// The snapshot object is not usable.
    #[error("snapshot {id} in the bucket: {what}")]
    Invalid {
        /// The remote id.
        id: String,
        /// What is wrong.
        what: String,
    },
    /// An object could not be read, decrypted or verified.
    #[error(transparent)]
    Object(#[from] ObjectError),
    /// The local store refused the writer.
    #[error("local store: {0}")]
    Writer(#[source] WriterError),
    /// The local store could not take the pages.
    #[error("local store: {0}")]
    Put(#[source] PutError),
    /// The local store could not commit the snapshot.
    #[error("local store: {0}")]
    Commit(#[source] CommitError),
    /// The manifest could not be written.
    #[error(transparent)]
    Manifest(#[from] WriteManifestError),
    /// A file could not be written.
    #[error("writing {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A worker thread died.
    #[error("download worker: {0}")]
    Task(String),
}

/// A ranged read: slots `first..end` of pack `pack`, of which `wanted`
/// (slot, hash) are needed.
pub(crate) struct Range {
    pub(crate) pack: u32,
    pub(crate) first: u32,
    pub(crate) end: u32,
    pub(crate) wanted: Vec<(u32, PageHash)>,
}

/// The ranged reads of the slots `by_pack` lists: runs of slots merged
/// when at most `gap` unneeded slots lie between them, at most
/// [`RANGE_SLOTS`] slots a read.
pub(crate) fn ranges(mut by_pack: BTreeMap<u32, Vec<(u32, PageHash)>>, gap: u32) -> Vec<Range> {
    let mut out = Vec::new();
    for (pack, slots) in by_pack.iter_mut() {
        slots.sort_unstable_by_key(|(s, _)| *s);
        let mut current: Option<Range> = None;
        for &(slot, hash) in slots.iter() {
            match &mut current {
                Some(r) if slot <= r.end + gap && slot + 1 - r.first <= RANGE_SLOTS => {
                    r.end = slot + 1;
                    r.wanted.push((slot, hash));
                }
                _ => {
                    out.extend(current.take());
                    current = Some(Range {
                        pack: *pack,
                        first: slot,
                        end: slot + 1,
                        wanted: vec![(slot, hash)],
                    });
                }
            }
        }
        out.extend(current);
    }
    out
}

enum ToWriter {
    Pages(Vec<u8>),
    Commit(Vec<AreaPages>),
}

/// Downloads snapshot `remote_id` into `local` (see the module doc).
pub async fn pull_snapshot(
    remote: &RemoteStore,
    remote_id: &str,
    local: &LocalSnapshot,
) -> Result<PullReport, PullError> {
    let before = remote.transfers();
    let invalid = |what: String| PullError::Invalid {
        id: remote_id.to_string(),
        what,
    };
    let bytes = remote
        .get_blob(Kind::Snapshot, remote_id.as_bytes())
        .await?
        .ok_or_else(|| PullError::NotInBucket {
            id: remote_id.to_string(),
            url: remote.url().to_string(),
        })?;
    let object = RemoteSnapshot::decode(&bytes).map_err(&invalid)?;
    let mut snapshot: Snapshot = parse_snapshot(
        &object.manifest,
        &object.manifest_id,
        std::path::Path::new(&remote.describe(
            Kind::Snapshot,
            &remote.name(Kind::Snapshot, remote_id.as_bytes()),
        )),
    )
    .map_err(|e| invalid(e.to_string()))?;
    snapshot.id = local.id.clone();
    let areas: Vec<AreaPages> = snapshot
        .processes()
        .flat_map(|(_, areas)| areas.iter().cloned())
        .collect();
    let locations: BTreeMap<PageHash, (u32, u32)> = object
        .pages
        .iter()
        .map(|p| (PageHash(p.hash), (p.pack, p.slot)))
        .collect();
    let mut needed: Vec<PageHash> = areas.iter().flat_map(|a| a.hashes().copied()).collect();
    needed.sort_unstable();
    needed.dedup();
    let mut report = PullReport {
        remote_id: remote_id.to_string(),
        pages: needed.len() as u64,
        ..PullReport::default()
    };
    let mut by_pack: BTreeMap<u32, Vec<(u32, PageHash)>> = BTreeMap::new();
    for hash in &needed {
        if local.store.contains(hash) {
            report.pages_local += 1;
            continue;
        }
        let (pack, slot) = *locations
            .get(hash)
            .ok_or_else(|| invalid(format!("page {hash} has no location")))?;
        by_pack.entry(pack).or_default().push((slot, *hash));
    }
    let ranges = ranges(by_pack, MERGE_GAP);
    report.ranges = ranges.len() as u64;

    // One writer, fed as ranges arrive.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<ToWriter>(RANGES_IN_FLIGHT);
    let store = local.store.clone();
    let id = local.id.clone();
    let writer = tokio::task::spawn_blocking(move || {
        let mut writer = store.writer().map_err(PullError::Writer)?;
        while let Some(message) = rx.blocking_recv() {
            match message {
                ToWriter::Pages(pages) => {
                    writer.put_batch(&pages).map_err(PullError::Put)?;
                }
                ToWriter::Commit(areas) => {
                    writer
                        .commit_snapshot(&id, &areas)
                        .map_err(PullError::Commit)?;
                    return Ok(true);
                }
            }
        }
        // The fetch failed: nothing is committed.
        Ok::<bool, PullError>(false)
    });
    let fetched = stream::iter(ranges)
        .map(|range| {
            let tx = tx.clone();
            let packs = &object.packs;
            async move {
                let name = &packs[range.pack as usize];
                let n = fetch_range(remote, Kind::Pack, name, &range).await?;
                let _ = tx.send(ToWriter::Pages(n.1)).await;
                Ok::<u64, PullError>(n.0)
            }
        })
        .buffer_unordered(RANGES_IN_FLIGHT)
        .try_fold(0u64, |sum, n| async move { Ok(sum + n) })
        .await;
    let fetched = match fetched {
        Ok(n) => n,
        Err(e) => {
            drop(tx);
            let _ = writer.await;
            return Err(e);
        }
    };
    report.pages_fetched = fetched;
    let _ = tx.send(ToWriter::Commit(areas)).await;
    drop(tx);
    let committed = writer.await.map_err(|e| PullError::Task(e.to_string()))??;
    if !committed {
        return Err(PullError::Task("the store writer stopped early".into()));
    }

    std::fs::create_dir_all(&local.snapshots_dir).map_err(|source| PullError::Io {
        path: local.snapshots_dir.display().to_string(),
        source,
    })?;
    write_manifest(&local.manifest(), &snapshot)?;
    if let Some(ws) = remote
        .get_blob(Kind::WorkingSet, remote_id.as_bytes())
        .await?
    {
        write_atomic(&local.working_set, &ws).map_err(|source| PullError::Io {
            path: local.working_set.display().to_string(),
            source,
        })?;
        report.working_set = true;
    }
    report.bytes_fetched = remote.transfers().bytes_fetched - before.bytes_fetched;
    tracing::info!(
        remote = %remote_id,
        snapshot = %local.id,
        pages = report.pages,
        fetched = report.pages_fetched,
        ranges = report.ranges,
        "snapshot downloaded"
    );
    Ok(report)
}

/// Reads one range of the pack `pack` of `kind` (a pack or a working-set
/// pack), decrypts it and checks every wanted page; returns the count and
/// the wanted pages back to back.
pub(crate) async fn fetch_range(
    remote: &RemoteStore,
    kind: Kind,
    pack: &str,
    range: &Range,
) -> Result<(u64, Vec<u8>), PullError> {
    let bytes = remote
        .get_range(kind, pack, seal::slot_range(range.first, range.end))
        .await?;
    let keys = remote.keys.clone();
    let rel = RemoteStore::rel(kind, pack);
    let object = remote.describe(kind, pack);
    let first = range.first;
    let wanted = range.wanted.clone();
    tokio::task::spawn_blocking(move || {
        let plain = seal::open_slots(&keys, &rel, first, bytes).map_err(|(slot, source)| {
            ObjectError::OpenSlot {
                object: object.clone(),
                slot,
                source,
            }
        })?;
        let mut out = Vec::with_capacity(wanted.len() * PAGE_SIZE);
        for (slot, hash) in &wanted {
            let at = (slot - first) as usize * PAGE_SIZE;
            let page = &plain[at..at + PAGE_SIZE];
            let actual = PageHash::of(page);
            if actual != *hash {
                return Err(ObjectError::Corrupt {
                    object: object.clone(),
                    slot: *slot,
                    expected: hash.to_hex(),
                    actual: actual.to_hex(),
                }
                .into());
            }
            out.extend_from_slice(page);
        }
        Ok((wanted.len() as u64, out))
    })
    .await
    .map_err(|e| PullError::Task(e.to_string()))?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(n: u8) -> PageHash {
        PageHash([n; 32])
    }

    #[test]
    fn near_slots_share_a_read_and_far_ones_do_not() {
        let mut by_pack = BTreeMap::new();
        by_pack.insert(0, vec![(5, h(1)), (0, h(2)), (9, h(3)), (40, h(4))]);
        by_pack.insert(1, vec![(0, h(5))]);
        let r = ranges(by_pack, MERGE_GAP);
        let spans: Vec<(u32, u32, u32, usize)> = r
            .iter()
            .map(|r| (r.pack, r.first, r.end, r.wanted.len()))
            .collect();
        assert_eq!(spans, vec![(0, 0, 10, 3), (0, 40, 41, 1), (1, 0, 1, 1)]);
        let mut by_pack = BTreeMap::new();
        by_pack.insert(0, (0..600).map(|s| (s, h(0))).collect());
        let r = ranges(by_pack, MERGE_GAP);
        assert!(r.iter().all(|r| r.end - r.first <= RANGE_SLOTS));
        assert_eq!(r.iter().map(|r| r.wanted.len()).sum::<usize>(), 600);
    }
}
