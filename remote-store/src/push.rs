//! Uploading a snapshot: the pages the bucket lacks, in packs, then the
//! working set, then the snapshot object (manifest and page locations)
//! last.
//!
//! ```text
//! 1. refresh the bucket index (list packidx/, read new pack indexes)
//! 2. the snapshot's distinct stored pages the index lacks, in upload
//!    order (the working set's first, then address order: a lazy restore
//!    reads them in few ranged reads), cut into packs of PACK_PAGES; for each pack (PACKS_IN_FLIGHT at once):
//!      read and verify its pages from the local store, encrypt,
//!      PUT packs/<name>, then PUT packidx/<name> (the pack's commit)
//! 3. PUT workingsets/<name> if the snapshot has one and the bucket's differs
//! 4. the working-set packs, unless the bucket has them: the pages a lazy
//!    restore fetches before the copy resumes (the working set's, the
//!    areas the page server does not fill, the live stacks: pool's
//!    pages_before_resume), again, contiguous, in image order, in packs of
//!    at most MAX_PACK_PAGES: wspacks/<name>, named by that list (not in
//!    the bucket index: uploads never find pages there), kept by the gc
//!    while a snapshot object names them. THAW_STORE_WORKING_PACK=0: none
//! 5. PUT snapshots/<name> unless the bucket's is the same
//! ```
//!
//! Every name is derived from content (a pack's from its page list), so a
//! retry writes the same objects again, and a crash leaves at worst a pack
//! without its index, which readers ignore. A new run sends only what is
//! not committed: packs committed before the crash are not sent again.
//! A snapshot object names only committed packs, so a node that can read
//! it can fetch every page of it.

use std::sync::Arc;

use futures_util::{stream, StreamExt, TryStreamExt};
use snapshotter::snapshot::{parse_snapshot, LoadSnapshotError};
use snapshotter::store::{PageHash, PageStore, ReadError, PAGE_SIZE};

use crate::bucket::{ObjectError, RemoteStore};
use crate::index::pack_address;
use crate::key::{Keys, Kind};
use crate::local::LocalSnapshot;
use crate::manifest::RemoteSnapshot;
use crate::seal;

/// Pages per pack (1 MiB of pages).
pub const PACK_PAGES: usize = 256;
/// Packs uploaded at once.
pub const PACKS_IN_FLIGHT: usize = 4;

/// What an upload did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PushReport {
    /// The snapshot's name in the bucket.
    pub remote_id: String,
    /// Distinct stored pages of the snapshot.
    pub pages: u64,
    /// Of which the bucket held already.
    pub pages_in_bucket: u64,
    /// Of which sent now.
    pub pages_sent: u64,
    /// Packs sent (each with its index).
    pub packs_sent: u64,
    /// Objects written, every kind.
    pub objects_sent: u64,
    /// Bytes written (encrypted).
    pub bytes_sent: u64,
    /// Whether the snapshot object was written (false: the bucket had it).
    pub manifest_sent: bool,
    /// Whether the working set was written.
    pub working_set_sent: bool,
    /// Pages in the snapshot's working-set packs (0: none).
    pub working_pack_pages: u64,
    /// Working-set packs written (0 when the bucket had them).
    pub working_packs_sent: u64,
}

/// Why an upload failed.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    /// The local manifest is unreadable.
    #[error("reading the manifest of snapshot {id}: {source}")]
    Manifest {
        /// The local id.
        id: String,
        /// Why.
        #[source]
        source: LoadSnapshotError,
    },
    /// A local file is unreadable.
    #[error("reading {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A page of the snapshot is missing or corrupt in the local store.
    #[error("snapshot {id}: {source}")]
    Page {
        /// The local id.
        id: String,
        /// Why.
        #[source]
        source: ReadError,
    },
    /// An object could not be read or written.
    #[error(transparent)]
    Object(#[from] ObjectError),
    /// A worker thread died.
    #[error("upload worker: {0}")]
    Task(String),
}

/// Aborts the process at the named point when `THAW_FAILPOINT` names it
/// (tests of resuming after a crash; see `snapshotter::store::failpoint`).
fn failpoint(name: &str) {
    if std::env::var("THAW_FAILPOINT").is_ok_and(|v| v == name) {
        eprintln!("thaw: failure point {name} reached, aborting");
        std::process::abort();
    }
}

/// Uploads snapshot `local` as `remote_id` (see the module doc).
pub async fn push_snapshot(
    remote: &RemoteStore,
    local: &LocalSnapshot,
    remote_id: &str,
) -> Result<PushReport, PushError> {
    // Shared with other uploads; a gc of the bucket waits for it (gc.rs).
    let _upload = remote.uploads.read().await;
    let before = remote.transfers();
    let manifest_path = local.manifest();
    let manifest = std::fs::read(&manifest_path).map_err(|source| PushError::Io {
        path: manifest_path.display().to_string(),
        source,
    })?;
    let snapshot = parse_snapshot(&manifest, &local.id, &manifest_path).map_err(|source| {
        PushError::Manifest {
            id: local.id.clone(),
            source,
        }
    })?;
    let mut hashes: Vec<PageHash> = snapshot
        .processes()
        .flat_map(|(_, areas)| areas.iter().flat_map(|a| a.hashes().copied()))
        .collect();
    hashes.sort_unstable();
    hashes.dedup();

    remote.refresh_index().await?;
    let missing: Vec<PageHash> = {
        let index = remote.index.lock().await;
        hashes
            .iter()
            .filter(|h| index.get(h).is_none())
            .copied()
            .collect()
    };
    let working_set = std::fs::read(&local.working_set)
        .ok()
        .and_then(|b| pool::restore::working_set::decode(&b, &local.working_set).ok())
        .unwrap_or_default();
    let missing = upload_order(&snapshot, &working_set, missing);
    let mut report = PushReport {
        remote_id: remote_id.to_string(),
        pages: hashes.len() as u64,
        pages_in_bucket: (hashes.len() - missing.len()) as u64,
        ..PushReport::default()
    };
    tracing::info!(
        snapshot = %local.id,
        remote = %remote_id,
        pages = report.pages,
        in_bucket = report.pages_in_bucket,
        packs = missing.len().div_ceil(PACK_PAGES),
        "uploading snapshot"
    );
    let packs: Vec<Vec<PageHash>> = missing.chunks(PACK_PAGES).map(|c| c.to_vec()).collect();
    let sent: Vec<usize> = stream::iter(packs)
        .map(|pack| upload_pack(remote, &local.store, &local.id, pack))
        .buffer_unordered(PACKS_IN_FLIGHT)
        .try_collect()
        .await?;
    report.packs_sent = sent.len() as u64;
    report.pages_sent = sent.iter().sum::<usize>() as u64;

    match std::fs::read(&local.working_set) {
        Ok(bytes) => {
            report.working_set_sent = remote
                .put_blob(Kind::WorkingSet, remote_id.as_bytes(), &bytes)
                .await?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(PushError::Io {
                path: local.working_set.display().to_string(),
                source,
            })
        }
    }

    let working_packs = if std::env::var(ENV_WORKING_PACK).as_deref() == Ok("0") {
        Vec::new()
    } else {
        let early = pool::restore::page_source::pages_before_resume(&snapshot, &working_set);
        upload_working_packs(remote, &local.store, &local.id, early, &mut report).await?
    };

    let object = {
        let index = remote.index.lock().await;
        let mut object = RemoteSnapshot::new(&local.id, manifest, &hashes, &index)
            .expect("every page was found in or added to the index");
        for (name, pages) in &working_packs {
            object.add_working_pack(name, pages);
        }
        object
    };
    report.manifest_sent = remote
        .put_blob(Kind::Snapshot, remote_id.as_bytes(), &object.encode())
        .await?;
    let after = remote.transfers();
    report.objects_sent = after.objects_sent - before.objects_sent;
    report.bytes_sent = after.bytes_sent - before.bytes_sent;
    tracing::info!(
        snapshot = %local.id,
        remote = %remote_id,
        pages_sent = report.pages_sent,
        packs_sent = report.packs_sent,
        bytes_sent = report.bytes_sent,
        manifest_sent = report.manifest_sent,
        "snapshot uploaded"
    );
    Ok(report)
}

/// The order `missing` pages go into packs: those of the working set
/// (saved addresses, first-touch order) first, then the rest in address
/// order, so that a lazy restore reads the working set, and the pages
/// around a fault, in few ranged reads (`lazy.rs`).
fn upload_order(
    snapshot: &snapshotter::snapshot::Snapshot,
    working_set: &[u64],
    missing: Vec<PageHash>,
) -> Vec<PageHash> {
    use snapshotter::store::PageSlot;
    use std::collections::HashSet;
    let wanted: HashSet<PageHash> = missing.iter().copied().collect();
    // Every stored page with its saved address, in address order.
    let mut by_address: Vec<(u64, PageHash)> = snapshot
        .processes()
        .flat_map(|(state, areas)| {
            state.areas.iter().zip(areas).flat_map(|(area, pages)| {
                pages
                    .iter()
                    .enumerate()
                    .filter_map(move |(i, slot)| match slot {
                        PageSlot::Hash(h) => Some((area.start + i as u64 * PAGE_SIZE as u64, h)),
                        _ => None,
                    })
            })
        })
        .collect();
    by_address.sort_unstable_by_key(|(a, _)| *a);
    let at: std::collections::HashMap<u64, PageHash> = if working_set.is_empty() {
        Default::default()
    } else {
        by_address.iter().copied().collect()
    };
    let mut seen = HashSet::with_capacity(wanted.len());
    let mut out = Vec::with_capacity(missing.len());
    let first = working_set
        .iter()
        .filter_map(|p| at.get(&(p & !(PAGE_SIZE as u64 - 1))).copied());
    for hash in first.chain(by_address.iter().map(|(_, h)| *h)) {
        if wanted.contains(&hash) && seen.insert(hash) {
            out.push(hash);
        }
    }
    out
}

/// `THAW_STORE_WORKING_PACK=0`: uploads make no working-set pack (the
/// bucket as before 2026-12-07; readers then fetch from the shared packs).
pub const ENV_WORKING_PACK: &str = "THAW_STORE_WORKING_PACK";

/// Sends the working-set packs of the pages `early` (see the module doc)
/// the bucket lacks; returns every one's name and pages.
async fn upload_working_packs(
    remote: &RemoteStore,
    store: &Arc<PageStore>,
    id: &str,
    early: Vec<PageHash>,
    report: &mut PushReport,
) -> Result<Vec<(String, Vec<PageHash>)>, PushError> {
    let mut packs = Vec::new();
    for pages in early.chunks(seal::MAX_PACK_PAGES as usize) {
        let name = remote.name(Kind::WorkingPack, &pack_address(pages));
        if !remote.has_object(Kind::WorkingPack, &name).await? {
            let sealed =
                seal_pages(remote, store, id, Kind::WorkingPack, &name, pages.to_vec()).await?;
            remote.put_raw(Kind::WorkingPack, &name, sealed).await?;
            report.working_packs_sent += 1;
        }
        report.working_pack_pages += pages.len() as u64;
        packs.push((name, pages.to_vec()));
    }
    if !packs.is_empty() {
        tracing::debug!(
            snapshot = %id,
            pages = report.working_pack_pages,
            sent = report.working_packs_sent,
            "working-set packs"
        );
    }
    Ok(packs)
}

/// Reads `hashes` from the local store (each verified) and seals them as
/// the pack `name` of `kind` (a pack or a working-set pack).
async fn seal_pages(
    remote: &RemoteStore,
    store: &Arc<PageStore>,
    id: &str,
    kind: Kind,
    name: &str,
    hashes: Vec<PageHash>,
) -> Result<Vec<u8>, PushError> {
    let store = store.clone();
    let keys: Keys = remote.keys.clone();
    let rel = RemoteStore::rel(kind, name);
    let id = id.to_string();
    tokio::task::spawn_blocking(move || {
        let mut pages = Vec::with_capacity(hashes.len() * PAGE_SIZE);
        for hash in &hashes {
            let page = store.get(hash).map_err(|source| PushError::Page {
                id: id.clone(),
                source,
            })?;
            pages.extend_from_slice(&page);
        }
        Ok::<_, PushError>(seal::seal_pack(&keys, &rel, &pages))
    })
    .await
    .map_err(|e| PushError::Task(e.to_string()))?
}

/// Sends one pack and its index; returns its page count.
async fn upload_pack(
    remote: &RemoteStore,
    store: &Arc<PageStore>,
    id: &str,
    hashes: Vec<PageHash>,
) -> Result<usize, PushError> {
    let name = remote.name(Kind::Pack, &pack_address(&hashes));
    let sealed = seal_pages(remote, store, id, Kind::Pack, &name, hashes.clone()).await?;
    remote.put_raw(Kind::Pack, &name, sealed).await?;
    remote
        .put_sealed(Kind::PackIndex, &name, &pack_address(&hashes))
        .await?;
    remote.index.lock().await.add(&name, &hashes);
    tracing::debug!(pack = %name, pages = hashes.len(), "pack uploaded");
    failpoint("remote-pack-committed");
    Ok(hashes.len())
}
