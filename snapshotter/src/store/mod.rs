//! The content-addressed page store.
//!
//! Pages of 4 KiB are stored once each, keyed by their blake3 hash, across all
//! snapshots of all functions. Zero pages are never stored. Every read
//! rehashes the page, so a corrupted object is reported (naming it), never
//! handed out.
//!
//! # On-disk layout
//!
//! ```text
//! <store>/
//!   LOCK                      flock'ed exclusively by the one writer (commits, gc)
//!   index                     append-only log: pack id -> hashes by slot  (see index.rs)
//!   packs/pack-<n>.pack       immutable packs of raw page objects        (see pack.rs)
//!   packs/.pack-<n>.pack.tmp  a pack being written (or left by a crash)
//!   roots/<snapshot-id>       gc root: the snapshot's page lists, in the
//!                             THAWSNAP container                          (see manifest.rs)
//!   images/<id>.<key>.<boot>.img  cached mmap images, derived data        (see image.rs)
//! ```
//!
//! # Writing and crash safety
//!
//! A [`StoreWriter`] holds the lock for one snapshot. [`StoreWriter::put_batch`]
//! hashes pages on all cores, skips zero and known pages and appends new ones
//! to a fresh pack under a temporary name. [`StoreWriter::commit_snapshot`]
//! then, in this order: fsyncs the pack, renames it to its final name (fsync
//! of the directory), appends one checksummed index record (fsync), and
//! writes the snapshot's root atomically. An object is indexed only once its
//! bytes are durable; a snapshot is rooted only once all its objects are
//! indexed. A crash anywhere leaves at worst an unindexed pack or a torn index
//! tail, both ignored by readers and cleaned by the next writer. See
//! `docs/store.md` for the full argument and [`failpoint`] for the test
//! switch.
//!
//! # Reading
//!
//! Readers (any number, in any process, concurrently with the writer) map the
//! packs read-only and keep the index in memory; [`PageStore::refresh`] picks
//! up appended records, and a whole new index after gc. [`PageStore::get`]
//! returns a zero-copy, verified view of a page.

mod atomic;
pub mod failpoint;
mod gc;
mod hash;
mod image;
mod index;
mod manifest;
mod pack;
mod pagelist;
mod roots;
mod sink;
mod stats;
mod verify;
mod writer;

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::ops::Deref;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use nix::fcntl::{Flock, FlockArg};

pub use gc::{GcError, GcReport};
pub use hash::{
    hash_pages_parallel, hash_pages_serial, is_zero_page, BuildHashKeyHasher, HashKeyHasher,
    HashMapByPage, HashSetOfPages, PageHash, ParseHashError, PAGE_SIZE,
};
pub use image::{
    build_image, build_image_placed, CachedImage, ImageArea, ImageError, ImageLayout, Placement,
    PMD_SIZE,
};
pub use index::{
    check_header as check_index_header, encode_header as encode_index_header, encode_record,
    parse_records, IndexHeaderError, IndexRecord, ParsedLog, Tail, INDEX_HEADER_LEN,
};
pub use manifest::{
    check_manifest, decode_manifest, encode_manifest, read_checked_manifest, read_manifest,
    read_manifest_with_limit, write_manifest, CheckedManifest, ReadManifestError,
    WriteManifestError, DEFAULT_MANIFEST_LIMIT, MANIFEST_HEADER_LEN, MANIFEST_MAGIC,
    MANIFEST_VERSION,
};
pub use pack::{check_pack_header, OpenPackError, WritePackError, PACK_HEADER_LEN};
pub use pagelist::{AreaPages, PageCounts, PageRef, PageRun, PageSlot};
pub use roots::{
    parse_root, validate_snapshot_id, InvalidSnapshotId, RootError, SnapshotRoot, MAX_ROOT_PAGES,
};
pub use sink::{area_pages, AreaPagesError, OutOfOrder, StoreSink};
pub use stats::{StatsError, StoreStats};
pub use verify::{BadObject, BadObjectKind, VerifyError, VerifyReport};
pub use writer::{CommitError, CommitSummary, PutError, StoreWriter, WriterError};

use index::check_header;
use pack::Pack;

/// Error opening a store (or reloading its index).
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// A file or directory of the store could not be used.
    #[error("cannot open store at {path}: {source}")]
    Io {
        /// What failed.
        path: PathBuf,
        /// Underlying error.
        source: io::Error,
    },
    /// The index header is wrong.
    #[error(transparent)]
    Header(#[from] IndexHeaderError),
    /// Packs exist but the index does not: refusing to start an empty one.
    #[error("{0} is missing but the store has packs; refusing to open (restore the index)")]
    IndexMissing(PathBuf),
    /// The index kept changing under us (gc running in a loop?).
    #[error("index of store {0} kept changing while loading it")]
    Unstable(PathBuf),
}

/// Error reading one object.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// No such object.
    #[error("object {hash} is not in the store")]
    NotFound {
        /// The object.
        hash: PageHash,
    },
    /// The stored bytes do not match the key.
    #[error("object {hash} in {} at offset {offset} is corrupt: its content hashes to {actual}", pack.display())]
    Corrupt {
        /// The object.
        hash: PageHash,
        /// The pack holding it.
        pack: PathBuf,
        /// Byte offset in the pack.
        offset: u64,
        /// Hash of what is stored there.
        actual: PageHash,
    },
    /// The pack holding the object cannot be read.
    #[error("object {hash} is in pack {pack}, which cannot be read: {reason}")]
    PackUnavailable {
        /// The object.
        hash: PageHash,
        /// The pack id.
        pack: u32,
        /// Why.
        reason: String,
    },
    /// The index could not be reloaded to look for the object.
    #[error("cannot look up object {hash}: {source}")]
    Index {
        /// The object.
        hash: PageHash,
        /// Why.
        source: Box<OpenError>,
    },
}

/// Error verifying one snapshot.
#[derive(Debug, thiserror::Error)]
pub enum VerifySnapshotError {
    /// The root is unusable.
    #[error(transparent)]
    Root(#[from] RootError),
    /// A page is missing or corrupt.
    #[error(transparent)]
    Read(#[from] ReadError),
}

/// Where an object lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Loc {
    pub(crate) pack: u32,
    pub(crate) slot: u32,
}

/// A pack as loaded: mapped, or why not.
#[derive(Clone, Debug)]
pub(crate) enum PackEntry {
    Mapped(Arc<Pack>),
    Broken(Arc<str>),
}

/// The in-memory view of the index and packs.
#[derive(Debug)]
pub(crate) struct State {
    pub(crate) objects: HashMapByPage<Loc>,
    pub(crate) packs: BTreeMap<u32, PackEntry>,
    index_file: File,
    index_ident: (u64, u64),
    /// End of the last good record read.
    pub(crate) read_pos: u64,
    pub(crate) tail: Tail,
}

impl State {
    fn apply(&mut self, dir: &Path, record: IndexRecord) {
        let entry = match Pack::open(&dir.join("packs"), record.pack) {
            Ok(p) if p.count() != record.hashes.len() as u64 => PackEntry::Broken(
                format!(
                    "{} holds {} objects but the index lists {}",
                    p.path().display(),
                    p.count(),
                    record.hashes.len()
                )
                .into(),
            ),
            Ok(p) => PackEntry::Mapped(Arc::new(p)),
            Err(e) => PackEntry::Broken(e.to_string().into()),
        };
        for (slot, hash) in record.hashes.into_iter().enumerate() {
            self.objects.entry(hash).or_insert(Loc {
                pack: record.pack,
                slot: slot as u32,
            });
        }
        self.packs.insert(record.pack, entry);
    }
}

/// A handle on a page store directory.
///
/// Any number of handles, in any number of processes, may read at once; one
/// at a time writes (see [`PageStore::writer`]).
#[derive(Debug)]
pub struct PageStore {
    dir: PathBuf,
    state: RwLock<State>,
    /// Images opened before, by snapshot id (see `image.rs`).
    images: std::sync::Mutex<std::collections::HashMap<String, image::Remembered>>,
}

/// A verified (or, from [`PageStore::get_unverified`], unverified) read-only
/// view of one stored page, borrowed from the mapped pack (no copy).
#[derive(Clone)]
pub struct Page {
    pack: Arc<Pack>,
    slot: u32,
}

impl Deref for Page {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        self.pack
            .object(self.slot)
            .expect("slot checked when the view was made")
    }
}

impl AsRef<[u8]> for Page {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl std::fmt::Debug for Page {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Page")
            .field("pack", &self.pack.id())
            .field("slot", &self.slot)
            .finish()
    }
}

impl Page {
    /// Byte offset of the page in its pack file (useful for `pread` or to
    /// name the object in messages).
    pub fn pack_offset(&self) -> u64 {
        pack::slot_offset(self.slot)
    }

    /// The pack file holding the page.
    pub fn pack_path(&self) -> &Path {
        self.pack.path()
    }

    /// Checks that the page hashes to `hash`.
    pub fn verify(&self, hash: &PageHash) -> Result<(), ReadError> {
        let actual = PageHash::of(self);
        if actual == *hash {
            Ok(())
        } else {
            Err(ReadError::Corrupt {
                hash: *hash,
                pack: self.pack.path().to_path_buf(),
                offset: self.pack_offset(),
                actual,
            })
        }
    }
}

fn ident(meta: &std::fs::Metadata) -> (u64, u64) {
    (meta.dev(), meta.ino())
}

impl PageStore {
    /// Opens the store in `dir`, creating it if needed.
    pub fn open(dir: impl AsRef<Path>) -> Result<PageStore, OpenError> {
        let dir = dir.as_ref().to_path_buf();
        let io_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| OpenError::Io { path, source }
        };
        for sub in ["packs", "roots", "images"] {
            let p = dir.join(sub);
            atomic::create_private_dir(&p).map_err(io_err(&p))?;
        }
        let index_path = dir.join("index");
        if !index_path.exists() {
            let _lock = lock_exclusive(&dir).map_err(io_err(&dir.join("LOCK")))?;
            if !index_path.exists() {
                // A new store has no packs. Packs without an index mean the
                // index was lost: creating an empty one would let the next
                // writer delete every pack as an orphan.
                let packs_dir = dir.join("packs");
                let has_packs = std::fs::read_dir(&packs_dir)
                    .map_err(io_err(&packs_dir))?
                    .flatten()
                    .any(|e| {
                        pack::parse_pack_file_name(&e.file_name().to_string_lossy()).is_some()
                    });
                if has_packs {
                    return Err(OpenError::IndexMissing(index_path));
                }
                atomic::write_atomic(&index_path, &[&index::encode_header()])
                    .map_err(io_err(&index_path))?;
            }
        }
        let state = load_state(&dir)?;
        Ok(PageStore {
            dir,
            state: RwLock::new(state),
            images: Default::default(),
        })
    }

    /// The store directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub(crate) fn read_state(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn write_state(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Picks up index records appended by other writers since the last load,
    /// or reloads everything if gc replaced the index.
    pub fn refresh(&self) -> Result<(), OpenError> {
        let index_path = self.dir.join("index");
        let meta = std::fs::metadata(&index_path).map_err(|source| OpenError::Io {
            path: index_path.clone(),
            source,
        })?;
        let mut state = self.write_state();
        if ident(&meta) != state.index_ident {
            *state = load_state(&self.dir)?;
            return Ok(());
        }
        let len = meta.len();
        if len <= state.read_pos {
            return Ok(());
        }
        let mut buf = vec![0u8; (len - state.read_pos) as usize];
        let got = read_fully_at(&state.index_file, &mut buf, state.read_pos).map_err(|source| {
            OpenError::Io {
                path: index_path.clone(),
                source,
            }
        })?;
        buf.truncate(got);
        let parsed = parse_records(&buf, state.read_pos);
        for record in parsed.records {
            state.apply(&self.dir, record);
        }
        state.read_pos = parsed.good_end;
        state.tail = parsed.tail;
        Ok(())
    }

    /// Number of objects indexed (as of the last load or refresh).
    pub fn object_count(&self) -> usize {
        self.read_state().objects.len()
    }

    /// True if the object is indexed (as of the last load or refresh).
    pub fn contains(&self, hash: &PageHash) -> bool {
        self.read_state().objects.contains_key(hash)
    }

    /// Ids of the packs in the index.
    pub fn pack_ids(&self) -> Vec<u32> {
        self.read_state().packs.keys().copied().collect()
    }

    /// Path of a pack file (it may not exist).
    pub fn pack_path(&self, id: u32) -> PathBuf {
        self.dir.join("packs").join(pack::pack_file_name(id))
    }

    /// Where an object lives: its pack file and byte offset.
    pub fn locate(&self, hash: &PageHash) -> Option<(PathBuf, u64)> {
        let loc = *self.read_state().objects.get(hash)?;
        Some((self.pack_path(loc.pack), pack::slot_offset(loc.slot)))
    }

    fn view(&self, state: &State, hash: &PageHash) -> Option<Result<Page, ReadError>> {
        let loc = *state.objects.get(hash)?;
        Some(match state.packs.get(&loc.pack) {
            Some(PackEntry::Mapped(p)) => match p.object(loc.slot) {
                Some(_) => Ok(Page {
                    pack: p.clone(),
                    slot: loc.slot,
                }),
                None => Err(ReadError::PackUnavailable {
                    hash: *hash,
                    pack: loc.pack,
                    reason: format!("slot {} beyond its end", loc.slot),
                }),
            },
            Some(PackEntry::Broken(reason)) => Err(ReadError::PackUnavailable {
                hash: *hash,
                pack: loc.pack,
                reason: reason.to_string(),
            }),
            None => Err(ReadError::PackUnavailable {
                hash: *hash,
                pack: loc.pack,
                reason: "not loaded".into(),
            }),
        })
    }

    /// The object's bytes without checking them against the hash.
    ///
    /// Only for code that already verified this object in this process (for
    /// example a page server that verified a whole snapshot once before
    /// serving it); everything else uses [`PageStore::get`].
    pub fn get_unverified(&self, hash: &PageHash) -> Result<Page, ReadError> {
        if let Some(r) = self.view(&self.read_state(), hash) {
            return r;
        }
        // Perhaps another process committed it since we loaded the index.
        self.refresh().map_err(|e| ReadError::Index {
            hash: *hash,
            source: Box::new(e),
        })?;
        self.view(&self.read_state(), hash)
            .unwrap_or(Err(ReadError::NotFound { hash: *hash }))
    }

    /// The object's bytes, checked against its hash.
    pub fn get(&self, hash: &PageHash) -> Result<Page, ReadError> {
        let page = self.get_unverified(hash)?;
        page.verify(hash)?;
        Ok(page)
    }

    /// [`PageStore::get`] from the index as loaded: `None` when it does not
    /// hold `hash` (no reload of the index on a miss). For a caller looking
    /// up many objects, most of them absent, after one
    /// [`PageStore::refresh`] (a lazy restore on a node that lacks the
    /// snapshot: one reload per missing page cost ~250 ms for numpy-pandas).
    pub fn get_loaded(&self, hash: &PageHash) -> Option<Result<Page, ReadError>> {
        let page = self.view(&self.read_state(), hash)?;
        Some(page.and_then(|page| {
            page.verify(hash)?;
            Ok(page)
        }))
    }

    /// Unverified views of many objects under one lock (no refresh on a
    /// miss); the caller verifies them, typically in parallel.
    pub(crate) fn views(&self, hashes: &[PageHash]) -> Vec<Result<Page, ReadError>> {
        let state = self.read_state();
        hashes
            .iter()
            .map(|h| {
                self.view(&state, h)
                    .unwrap_or(Err(ReadError::NotFound { hash: *h }))
            })
            .collect()
    }

    /// Reads and verifies every stored page of snapshot `id` on all cores
    /// (the check a page server makes once before serving with
    /// [`PageStore::get_unverified`]). Returns the number of pages checked.
    pub fn verify_snapshot(&self, id: &str) -> Result<u64, VerifySnapshotError> {
        use rayon::prelude::*;
        let root = self.load_root(id)?;
        let mut hashes: Vec<PageHash> = root
            .areas
            .iter()
            .flat_map(|a| a.hashes().copied())
            .collect();
        hashes.sort_unstable();
        hashes.dedup();
        hashes.par_chunks(256).try_for_each(|chunk| {
            for (view, hash) in self.views(chunk).into_iter().zip(chunk) {
                let page = match view {
                    Err(ReadError::NotFound { .. }) => self.get_unverified(hash)?,
                    other => other?,
                };
                page.verify(hash)?;
            }
            Ok::<(), ReadError>(())
        })?;
        Ok(hashes.len() as u64)
    }

    /// Starts a write transaction, waiting for the store lock.
    pub fn writer(&self) -> Result<StoreWriter<'_>, WriterError> {
        StoreWriter::begin(self)
    }

    pub(crate) fn lock(&self) -> io::Result<Flock<File>> {
        lock_exclusive(&self.dir)
    }
}

fn lock_exclusive(dir: &Path) -> io::Result<Flock<File>> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(atomic::PRIVATE_FILE)
        .open(dir.join("LOCK"))?;
    Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, errno)| errno.into())
}

pub(crate) fn read_fully_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// Loads the index and maps its packs, retrying if gc replaces the index
/// meanwhile.
fn load_state(dir: &Path) -> Result<State, OpenError> {
    let index_path = dir.join("index");
    let io_err = |source| OpenError::Io {
        path: index_path.clone(),
        source,
    };
    for _ in 0..16 {
        let file = File::open(&index_path).map_err(io_err)?;
        let meta = file.metadata().map_err(io_err)?;
        let mut bytes = vec![0u8; meta.len() as usize];
        let got = read_fully_at(&file, &mut bytes, 0).map_err(io_err)?;
        bytes.truncate(got);
        check_header(&bytes).map_err(|what| IndexHeaderError {
            path: index_path.clone(),
            what,
        })?;
        let start = index::INDEX_HEADER_LEN;
        let parsed = parse_records(&bytes[start as usize..], start);
        let mut state = State {
            objects: HashMapByPage::default(),
            packs: BTreeMap::new(),
            index_file: file,
            index_ident: ident(&meta),
            read_pos: parsed.good_end,
            tail: parsed.tail,
        };
        let total: usize = parsed.records.iter().map(|r| r.hashes.len()).sum();
        state.objects.reserve(total);
        for record in parsed.records {
            state.apply(dir, record);
        }
        let missing_pack = state.packs.values().any(|p| match p {
            PackEntry::Broken(_) => true,
            PackEntry::Mapped(_) => false,
        });
        if missing_pack {
            // A pack that vanished may mean gc switched the index meanwhile.
            let now = std::fs::metadata(&index_path).map_err(io_err)?;
            if ident(&now) != state.index_ident {
                continue;
            }
        }
        return Ok(state);
    }
    Err(OpenError::Unstable(dir.to_path_buf()))
}
