//! The write transaction: put pages, then commit them (and a snapshot root)
//! with one fsync round.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use nix::fcntl::Flock;

use super::atomic::sync_dir;
use super::failpoint;
use super::hash::{hash_pages_parallel, HashMapByPage, PageHash, PAGE_SIZE};
use super::index::{encode_record, IndexRecord, Tail};
use super::pack::{parse_pack_file_name, PackWriter, WritePackError};
use super::pagelist::{AreaPages, PageRef};
use super::roots::{write_root, InvalidSnapshotId, RootError, SnapshotRoot};
use super::PageStore;

/// Large puts are hashed and written in pieces of this size, the write of
/// one piece overlapping the hashing of the next.
const PIPELINE_BYTES: usize = 2 << 20;

/// Error starting a write transaction.
#[derive(Debug, thiserror::Error)]
pub enum WriterError {
    /// Taking the lock or cleaning up after a crash failed.
    #[error("cannot start writing to store {path}: {source}")]
    Io {
        /// What failed.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// Reloading the index failed.
    #[error(transparent)]
    Open(#[from] super::OpenError),
    /// The index ends in bytes no crash can leave; refusing to write.
    #[error(
        "index of store {path} is corrupt at offset {offset} ({len} bytes): refusing to write"
    )]
    IndexCorrupt {
        /// The index file.
        path: PathBuf,
        /// Offset of the bad bytes.
        offset: u64,
        /// Their length.
        len: u64,
    },
}

/// Error putting pages.
#[derive(Debug, thiserror::Error)]
pub enum PutError {
    /// The input is not a whole number of pages.
    #[error("put of {0} bytes: not a multiple of the 4096-byte page size")]
    NotPageMultiple(usize),
    /// Writing the pack failed.
    #[error(transparent)]
    Write(#[from] WritePackError),
    /// One pack holds at most `u32::MAX` objects.
    #[error("too many new objects in one transaction")]
    TooManyObjects,
}

/// Error committing.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    /// Finishing the pack failed.
    #[error(transparent)]
    Pack(#[from] WritePackError),
    /// Appending the index record failed.
    #[error("cannot append to index {path}: {source}")]
    Index {
        /// The index.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The snapshot id cannot name a file.
    #[error(transparent)]
    InvalidId(#[from] InvalidSnapshotId),
    /// A page list names an object that is neither stored nor in this
    /// transaction.
    #[error("snapshot {id} references object {hash}, which is not in the store")]
    MissingObject {
        /// The snapshot.
        id: String,
        /// The object.
        hash: PageHash,
    },
    /// Writing the root failed.
    #[error(transparent)]
    Root(#[from] RootError),
}

/// What a commit stored.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CommitSummary {
    /// Pages passed to `put_batch`.
    pub pages: u64,
    /// Of which zero pages.
    pub zero_pages: u64,
    /// Of which already stored (before or earlier in the transaction).
    pub duplicate_pages: u64,
    /// Of which new objects written.
    pub new_objects: u64,
    /// The pack the new objects went to, if any.
    pub pack: Option<u32>,
}

/// A write transaction holding the store lock.
///
/// Dropping it without committing discards the pages it wrote.
#[derive(Debug)]
pub struct StoreWriter<'s> {
    store: &'s PageStore,
    _lock: Flock<File>,
    next_pack: u32,
    pack: Option<PackWriter>,
    pending: HashMapByPage<u32>,
    new_hashes: Vec<PageHash>,
    summary: CommitSummary,
}

impl<'s> StoreWriter<'s> {
    pub(crate) fn begin(store: &'s PageStore) -> Result<StoreWriter<'s>, WriterError> {
        let dir = store.dir();
        let io = |path: PathBuf| move |source| WriterError::Io { path, source };
        let lock = store.lock().map_err(io(dir.join("LOCK")))?;
        // Under the lock the index on disk is complete: load what others added.
        store.refresh()?;
        let index_path = dir.join("index");
        {
            let mut state = store.write_state();
            match state.tail {
                Tail::Clean => {}
                Tail::Torn { offset, len } => {
                    tracing::warn!(offset, len, "truncating torn index tail left by a crash");
                    let f = OpenOptions::new()
                        .write(true)
                        .open(&index_path)
                        .map_err(io(index_path.clone()))?;
                    f.set_len(offset).map_err(io(index_path.clone()))?;
                    f.sync_all().map_err(io(index_path.clone()))?;
                    state.tail = Tail::Clean;
                }
                Tail::Corrupt { offset, len } => {
                    return Err(WriterError::IndexCorrupt {
                        path: index_path,
                        offset,
                        len,
                    })
                }
            }
        }
        // Packs not in the index were left by a crash (before the index
        // append, or by gc after its index switch): nothing can reference them.
        let packs_dir = dir.join("packs");
        let mut removed = false;
        let listing = std::fs::read_dir(&packs_dir).map_err(io(packs_dir.clone()))?;
        let state = store.read_state();
        for entry in listing {
            let entry = entry.map_err(io(packs_dir.clone()))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let orphan = match parse_pack_file_name(&name) {
                Some(id) => !state.packs.contains_key(&id),
                None => name.starts_with(".pack-") && name.ends_with(".tmp"),
            };
            if orphan {
                tracing::info!(file = %name, "removing pack left by an interrupted write");
                std::fs::remove_file(entry.path()).map_err(io(entry.path()))?;
                removed = true;
            }
        }
        let next_pack = state.packs.keys().next_back().map_or(1, |id| id + 1);
        drop(state);
        if removed {
            sync_dir(&packs_dir).map_err(io(packs_dir.clone()))?;
        }
        Ok(StoreWriter {
            store,
            _lock: lock,
            next_pack,
            pack: None,
            pending: HashMapByPage::default(),
            new_hashes: Vec::new(),
            summary: CommitSummary::default(),
        })
    }

    /// Stores the pages of `data` (a multiple of 4096 bytes): hashes them on
    /// all cores, skips zero pages and pages already stored, appends the rest
    /// to this transaction's pack. Returns one [`PageRef`] per page.
    ///
    /// Nothing is durable or visible to readers before a commit.
    pub fn put_batch(&mut self, data: &[u8]) -> Result<Vec<PageRef>, PutError> {
        if data.len() % PAGE_SIZE != 0 {
            return Err(PutError::NotPageMultiple(data.len()));
        }
        let mut refs = Vec::with_capacity(data.len() / PAGE_SIZE);
        if data.len() < 2 * PIPELINE_BYTES {
            let hashes = hash_pages_parallel(data);
            let fresh = self.classify(data, hashes, &mut refs)?;
            self.write(&fresh)?;
            return Ok(refs);
        }
        // Pipeline: write the new pages of one piece while hashing the next.
        let mut pieces = data.chunks(PIPELINE_BYTES);
        let first = pieces.next().expect("at least two pieces");
        let hashes = hash_pages_parallel(first);
        let mut fresh = self.classify(first, hashes, &mut refs)?;
        for piece in pieces {
            let pack = self.pack_for(&fresh)?;
            let (written, hashes) = rayon::join(
                || match pack {
                    Some(p) => p.append(&fresh).map(|_| ()),
                    None => Ok(()),
                },
                || hash_pages_parallel(piece),
            );
            written?;
            self.summary.new_objects += fresh.len() as u64;
            fresh = self.classify(piece, hashes, &mut refs)?;
        }
        self.write(&fresh)?;
        Ok(refs)
    }

    /// Sorts hashed pages into zero, known and new; records the new ones as
    /// pending and returns them.
    fn classify<'d>(
        &mut self,
        data: &'d [u8],
        hashes: Vec<Option<PageHash>>,
        refs: &mut Vec<PageRef>,
    ) -> Result<Vec<&'d [u8]>, PutError> {
        let mut fresh = Vec::new();
        let state = self.store.read_state();
        for (page, hash) in data.chunks_exact(PAGE_SIZE).zip(hashes) {
            self.summary.pages += 1;
            let Some(hash) = hash else {
                self.summary.zero_pages += 1;
                refs.push(PageRef::Zero);
                continue;
            };
            refs.push(PageRef::Hash(hash));
            if state.objects.contains_key(&hash) || self.pending.contains_key(&hash) {
                self.summary.duplicate_pages += 1;
                continue;
            }
            let slot =
                u32::try_from(self.new_hashes.len()).map_err(|_| PutError::TooManyObjects)?;
            self.pending.insert(hash, slot);
            self.new_hashes.push(hash);
            fresh.push(page);
        }
        Ok(fresh)
    }

    /// The transaction's pack, created on first need (`None` if `fresh` is
    /// empty and there is none yet).
    fn pack_for(&mut self, fresh: &[&[u8]]) -> Result<Option<&mut PackWriter>, PutError> {
        if fresh.is_empty() {
            return Ok(None);
        }
        if self.pack.is_none() {
            let pack = PackWriter::create(&self.store.dir().join("packs"), self.next_pack)?;
            self.pack = Some(pack);
        }
        Ok(self.pack.as_mut())
    }

    fn write(&mut self, fresh: &[&[u8]]) -> Result<(), PutError> {
        if let Some(pack) = self.pack_for(fresh)? {
            pack.append(fresh)?;
        }
        self.summary.new_objects += fresh.len() as u64;
        Ok(())
    }

    /// True if the object is stored or written by this transaction.
    pub fn has(&self, hash: &PageHash) -> bool {
        self.pending.contains_key(hash) || self.store.read_state().objects.contains_key(hash)
    }

    /// Makes the new objects durable and visible, without a snapshot root:
    /// the objects are garbage for the next gc unless a root references them.
    pub fn commit(mut self) -> Result<CommitSummary, CommitError> {
        self.commit_objects()
    }

    /// Makes the new objects durable and visible, then atomically writes (or
    /// replaces) the root of snapshot `id`, which keeps every page the areas
    /// reference alive through gc. This is the commit point of a snapshot.
    pub fn commit_snapshot(
        mut self,
        id: &str,
        areas: &[AreaPages],
    ) -> Result<CommitSummary, CommitError> {
        super::roots::validate_snapshot_id(id)?;
        for hash in areas.iter().flat_map(|a| a.hashes()) {
            if !self.has(hash) {
                return Err(CommitError::MissingObject {
                    id: id.to_string(),
                    hash: *hash,
                });
            }
        }
        let summary = self.commit_objects()?;
        let root = SnapshotRoot {
            id: id.to_string(),
            areas: areas.to_vec(),
        };
        write_root(self.store, &root)?;
        Ok(summary)
    }

    fn commit_objects(&mut self) -> Result<CommitSummary, CommitError> {
        let Some(pack) = self.pack.take() else {
            failpoint::hit("index-appended");
            return Ok(self.summary);
        };
        let id = pack.id();
        pack.finish()?;
        let index_path = self.store.dir().join("index");
        let err = |source| CommitError::Index {
            path: index_path.clone(),
            source,
        };
        let record = encode_record(id, &self.new_hashes);
        let file = OpenOptions::new()
            .write(true)
            .open(&index_path)
            .map_err(err)?;
        let at = self.store.read_state().read_pos;
        let half = record.len() / 2;
        file.write_all_at(&record[..half], at).map_err(err)?;
        failpoint::hit("index-torn");
        file.write_all_at(&record[half..], at + half as u64)
            .map_err(err)?;
        file.sync_data().map_err(err)?;
        failpoint::hit("index-appended");
        {
            let mut state = self.store.write_state();
            state.apply(
                self.store.dir(),
                IndexRecord {
                    pack: id,
                    hashes: std::mem::take(&mut self.new_hashes),
                },
            );
            state.read_pos = at + record.len() as u64;
        }
        self.pending.clear();
        self.summary.pack = Some(id);
        Ok(self.summary)
    }
}
