//! Snapshot roots: what keeps pages alive through gc.
//!
//! `roots/<snapshot-id>` holds a [`SnapshotRoot`] in the `THAWSNAP` container
//! (see the manifest module), written atomically by
//! [`StoreWriter::commit_snapshot`](super::StoreWriter::commit_snapshot) after
//! every object it references is indexed. Deleting a function or replacing
//! its snapshot removes or replaces the root; the next gc frees what no root
//! references.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::atomic::sync_dir;
use super::manifest::{
    decode_manifest, read_manifest, write_manifest, ReadManifestError, WriteManifestError,
    DEFAULT_MANIFEST_LIMIT,
};
use super::pagelist::AreaPages;
use super::PageStore;

/// The root of one snapshot: its memory areas' page lists.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotRoot {
    /// The snapshot id (also the file name).
    pub id: String,
    /// Page lists, one per memory area, in capture order.
    pub areas: Vec<AreaPages>,
}

impl SnapshotRoot {
    /// A key that changes whenever the page lists change: names the cached
    /// image of this version of the snapshot.
    pub fn content_key(&self) -> String {
        let bytes = bincode::serialize(&self.areas).expect("page lists always encode");
        blake3::hash(&bytes).to_hex()[..32].to_string()
    }
}

/// A snapshot id that cannot name a file.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid snapshot id {0:?}: use 1-200 of A-Z a-z 0-9 . _ -, not starting with '.'")]
pub struct InvalidSnapshotId(pub String);

/// Checks that `id` is usable as a file name.
pub fn validate_snapshot_id(id: &str) -> Result<(), InvalidSnapshotId> {
    let ok = !id.is_empty()
        && id.len() <= 200
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(InvalidSnapshotId(id.to_string()))
    }
}

/// Error reading, writing or removing a root.
#[derive(Debug, thiserror::Error)]
pub enum RootError {
    /// Bad id.
    #[error(transparent)]
    InvalidId(#[from] InvalidSnapshotId),
    /// No root by that id.
    #[error("no snapshot {0} in the store")]
    NotFound(String),
    /// The root file is unreadable.
    #[error(transparent)]
    Read(#[from] ReadManifestError),
    /// Writing failed.
    #[error(transparent)]
    Write(#[from] WriteManifestError),
    /// The page lists cannot be a process's memory.
    #[error("root {path}: {what}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// The root names another snapshot than its file.
    #[error("root {path} names snapshot {found}")]
    Mismatch {
        /// The file.
        path: PathBuf,
        /// The id inside.
        found: String,
    },
    /// Listing or removing failed.
    #[error("cannot access roots in {path}: {source}")]
    Io {
        /// What failed.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
}

/// Most pages a root may list in all: a 57-bit (5-level paging) x86-64
/// user address space. Keeps every page count and image size computed from a
/// root far from overflowing.
pub const MAX_ROOT_PAGES: u64 = 1 << 44;

/// Decodes the bytes of root `id` held in memory (`path` only names it in
/// errors) and checks them as [`PageStore::load_root`] does. The pure entry
/// point the fuzz targets drive.
pub fn parse_root(bytes: &[u8], id: &str, path: &Path) -> Result<SnapshotRoot, RootError> {
    let root: SnapshotRoot = decode_manifest(bytes, path, DEFAULT_MANIFEST_LIMIT)?;
    check_root(root, id, path)
}

/// Checks that a decoded root is root `id` and that its page lists could
/// describe one process (at most [`MAX_ROOT_PAGES`] pages in all).
fn check_root(root: SnapshotRoot, id: &str, path: &Path) -> Result<SnapshotRoot, RootError> {
    if root.id != id {
        return Err(RootError::Mismatch {
            path: path.to_path_buf(),
            found: root.id,
        });
    }
    let total = root
        .areas
        .iter()
        .try_fold(0u64, |sum, a| sum.checked_add(a.checked_page_count()?));
    if total.is_none_or(|n| n > MAX_ROOT_PAGES) {
        return Err(RootError::Invalid {
            path: path.to_path_buf(),
            what: format!("page lists of more than {MAX_ROOT_PAGES} pages"),
        });
    }
    Ok(root)
}

pub(crate) fn write_root(store: &PageStore, root: &SnapshotRoot) -> Result<(), RootError> {
    validate_snapshot_id(&root.id)?;
    write_manifest(&store.root_path(&root.id), root)?;
    Ok(())
}

impl PageStore {
    pub(crate) fn root_path(&self, id: &str) -> PathBuf {
        self.dir().join("roots").join(id)
    }

    /// Ids of all snapshots with a root, sorted.
    pub fn snapshot_ids(&self) -> Result<Vec<String>, RootError> {
        let dir = self.dir().join("roots");
        let io = |source| RootError::Io {
            path: dir.clone(),
            source,
        };
        let mut ids = Vec::new();
        for entry in std::fs::read_dir(&dir).map_err(io)? {
            let name = entry.map_err(io)?.file_name();
            let name = name.to_string_lossy();
            if validate_snapshot_id(&name).is_ok() {
                ids.push(name.into_owned());
            }
        }
        ids.sort();
        Ok(ids)
    }

    /// Loads the root of snapshot `id`.
    pub fn load_root(&self, id: &str) -> Result<SnapshotRoot, RootError> {
        validate_snapshot_id(id)?;
        let path = self.root_path(id);
        if !path.exists() {
            return Err(RootError::NotFound(id.to_string()));
        }
        let root: SnapshotRoot = read_manifest(&path)?;
        check_root(root, id, &path)
    }

    /// Removes snapshot `id`'s root (its pages become garbage for the next
    /// gc unless other snapshots share them). Returns false if there was none.
    ///
    /// Needs no lock: removing a root can only make gc keep more than needed
    /// for one more cycle, never free too much.
    pub fn remove_snapshot(&self, id: &str) -> Result<bool, RootError> {
        validate_snapshot_id(id)?;
        let path = self.root_path(id);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(source) => return Err(RootError::Io { path, source }),
        }
        let dir = self.dir().join("roots");
        sync_dir(&dir).map_err(|source| RootError::Io { path: dir, source })?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{encode_manifest, PageRun};

    fn root(runs: Vec<PageRun>) -> Vec<u8> {
        let areas = vec![bincode::deserialize(&bincode::serialize(&runs).unwrap()).unwrap()];
        encode_manifest(&SnapshotRoot {
            id: "s".into(),
            areas,
        })
        .unwrap()
    }

    #[test]
    fn a_root_parses_and_names_its_snapshot() {
        let bytes = root(vec![PageRun::Zero(3), PageRun::File(2)]);
        let r = parse_root(&bytes, "s", Path::new("roots/s")).unwrap();
        assert_eq!(r.areas[0].page_count(), 5);
        let err = parse_root(&bytes, "t", Path::new("roots/t")).unwrap_err();
        assert_eq!(err.to_string(), "root roots/t names snapshot s");
    }

    /// Found by the store_root fuzz target: runs adding up past u64::MAX
    /// overflowed `AreaPages::counts` (a panic in debug builds); a huge but
    /// finite list made image building size and walk an absurd image.
    #[test]
    fn page_lists_beyond_an_address_space_are_refused() {
        for runs in [
            vec![PageRun::Zero(u64::MAX), PageRun::File(2)],
            vec![PageRun::Zero(MAX_ROOT_PAGES + 1)],
        ] {
            let err = parse_root(&root(runs), "s", Path::new("roots/s")).unwrap_err();
            assert!(err.to_string().contains("page lists of more than"), "{err}");
        }
        let ok = root(vec![PageRun::Zero(MAX_ROOT_PAGES)]);
        assert!(parse_root(&ok, "s", Path::new("roots/s")).is_ok());
    }
}
