//! What the bucket holds (`thaw store remote-status`).

use crate::bucket::{ObjectError, RemoteStore};
use crate::key::Kind;
use crate::manifest::RemoteSnapshot;

/// Objects of one kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KindCount {
    /// The kind.
    pub kind: Kind,
    /// Objects.
    pub objects: u64,
    /// Bytes (encrypted).
    pub bytes: u64,
}

/// The bucket as a whole.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteStatus {
    /// Objects and bytes per kind.
    pub kinds: Vec<KindCount>,
    /// Distinct pages in committed packs.
    pub pages: u64,
    /// Packs without their index (left by an interrupted upload).
    pub uncommitted_packs: u64,
}

/// One snapshot in the bucket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotStatus {
    /// Its name in the bucket.
    pub remote_id: String,
    /// Whether its snapshot object is there (and readable with this key).
    pub present: bool,
    /// Its distinct stored pages.
    pub pages: u64,
    /// Of which in no committed pack.
    pub pages_missing: u64,
    /// Whether a working set is there.
    pub working_set: bool,
}

impl RemoteStore {
    /// Counts what the bucket holds.
    pub async fn status(&self) -> Result<RemoteStatus, ObjectError> {
        let mut kinds = Vec::new();
        let mut packs = Vec::new();
        let mut indexes = Vec::new();
        for kind in Kind::ALL {
            let listed = self.list(kind).await?;
            kinds.push(KindCount {
                kind,
                objects: listed.len() as u64,
                bytes: listed.iter().map(|l| l.size).sum(),
            });
            match kind {
                Kind::Pack => packs = listed.into_iter().map(|l| l.name).collect(),
                Kind::PackIndex => indexes = listed.into_iter().map(|l| l.name).collect(),
                _ => {}
            }
        }
        self.refresh_index().await?;
        let (pages, _) = self.index_counts().await;
        Ok(RemoteStatus {
            kinds,
            pages: pages as u64,
            uncommitted_packs: packs.iter().filter(|p| !indexes.contains(p)).count() as u64,
        })
    }

    /// Whether snapshot `remote_id` is complete in the bucket.
    pub async fn snapshot_status(&self, remote_id: &str) -> Result<SnapshotStatus, ObjectError> {
        let mut status = SnapshotStatus {
            remote_id: remote_id.to_string(),
            present: false,
            pages: 0,
            pages_missing: 0,
            working_set: false,
        };
        let Some(bytes) = self.get_blob(Kind::Snapshot, remote_id.as_bytes()).await? else {
            return Ok(status);
        };
        let object = RemoteSnapshot::decode(&bytes).map_err(|what| ObjectError::Invalid {
            object: self.describe(
                Kind::Snapshot,
                &self.name(Kind::Snapshot, remote_id.as_bytes()),
            ),
            what,
        })?;
        self.refresh_index().await?;
        let index = self.index.lock().await;
        status.present = true;
        status.pages = object.pages.len() as u64;
        status.pages_missing = object
            .pages
            .iter()
            .filter(|p| !index.has_pack(&object.packs[p.pack as usize]))
            .count() as u64;
        drop(index);
        status.working_set = self
            .get_blob(Kind::WorkingSet, remote_id.as_bytes())
            .await?
            .is_some();
        Ok(status)
    }
}
