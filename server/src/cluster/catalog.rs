//! The two objects the writer publishes: `#writer` (where it is, its
//! heartbeat, the catalog's generation) and `#catalog` (every function's
//! record). Both are sealed like every object (remote-store), under names
//! no function can have.

use std::collections::BTreeMap;

use remote_store::{Kind, ObjectError, RemoteStore};
use serde::{Deserialize, Serialize};

use crate::registry::FunctionRecord;

/// Address of the writer object.
pub const WRITER_ADDRESS: &[u8] = b"#writer";
/// Address of the catalog object.
pub const CATALOG_ADDRESS: &[u8] = b"#catalog";
/// Format of both objects.
pub const FORMAT: u32 = 1;

/// `#writer`: small, read by every reader every second.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriterObject {
    /// [`FORMAT`].
    pub format: u32,
    /// Where the writer's API is reached, `http://HOST:PORT`.
    pub url: String,
    /// The generation of the catalog published last (changes with it).
    pub generation: u64,
    /// Unix time of this write, ms.
    pub heartbeat_ms: u64,
}

/// `#catalog`: the functions that exist, with their records.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Catalog {
    /// [`FORMAT`].
    pub format: u32,
    /// Equals the `#writer` generation that announced it.
    pub generation: u64,
    /// Every function, by name.
    pub functions: BTreeMap<String, FunctionRecord>,
    /// The dependency layers the versions name (`VersionRecord::layer`),
    /// by key, as uploaded (cluster::layers). Absent from catalogs of
    /// writers before layers travelled.
    #[serde(default)]
    pub layers: BTreeMap<String, super::layers::LayerObject>,
}

/// Errors of reading a published object.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] ObjectError),
    /// The object is not what this thaw reads.
    #[error("{what} in {url} cannot be read by this thaw: {source}")]
    Decode {
        /// Which object.
        what: &'static str,
        /// The store.
        url: String,
        /// The error.
        #[source]
        source: serde_json::Error,
    },
}

async fn read<T: for<'de> Deserialize<'de>>(
    remote: &RemoteStore,
    address: &[u8],
    what: &'static str,
) -> Result<Option<T>, ReadError> {
    let Some(bytes) = remote.get_blob(Kind::Function, address).await? else {
        return Ok(None);
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|source| ReadError::Decode {
            what,
            url: remote.url().to_string(),
            source,
        })
}

/// Reads `#writer`.
pub async fn read_writer(remote: &RemoteStore) -> Result<Option<WriterObject>, ReadError> {
    read(remote, WRITER_ADDRESS, "the writer object").await
}

/// Reads `#catalog`.
pub async fn read_catalog(remote: &RemoteStore) -> Result<Option<Catalog>, ReadError> {
    read(remote, CATALOG_ADDRESS, "the catalog").await
}

/// Writes `#writer`.
pub async fn write_writer(remote: &RemoteStore, w: &WriterObject) -> Result<(), ObjectError> {
    let bytes = serde_json::to_vec(w).expect("serialises");
    remote
        .put_blob(Kind::Function, WRITER_ADDRESS, &bytes)
        .await
        .map(drop)
}

/// Writes `#catalog`.
pub async fn write_catalog(remote: &RemoteStore, c: &Catalog) -> Result<(), ObjectError> {
    let bytes = serde_json::to_vec(c).expect("serialises");
    remote
        .put_blob(Kind::Function, CATALOG_ADDRESS, &bytes)
        .await
        .map(drop)
}
