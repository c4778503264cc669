//! thaw's shared store: snapshots, their pages, function records and code
//! in an S3-compatible bucket, encrypted client-side (docs/cluster.md).
//!
//! # Bucket layout
//!
//! ```text
//! s3://BUCKET/PREFIX/
//!   packs/<name>        pages, each slot encrypted alone      (seal.rs)
//!   packidx/<name>      the pack's page hashes: its commit    (index.rs)
//!   snapshots/<name>    manifest + page locations             (manifest.rs)
//!   workingsets/<name>  a snapshot's recorded working set
//!   wspacks/<name>      a snapshot's working-set pack: the pages a lazy
//!                       restore fetches before the resume, again,
//!                       contiguous (laid out as a pack; push.rs)
//!   functions/<name>    a function's record (function.json)
//!   code/<name>         a version's code (tar), a dependency layer's
//!                       archive (streamed: stream.rs)
//! ```
//!
//! Every object is encrypted (XChaCha20-Poly1305, random nonce, its path
//! bound as associated data) with a key derived from the node's store key,
//! and every `<name>` is a keyed blake3 hash of the object's content
//! address (a pack's page list, a snapshot id, a function name), so names
//! agree between nodes with the same key, never collide, and tell nothing
//! to someone without it (`key.rs`).
//!
//! # Operations
//!
//! - [`push_snapshot`]: upload what the bucket lacks, packs before their
//!   index, the snapshot object last; resumable (`push.rs`).
//! - [`pull_snapshot`]: download what the local store lacks, in ranged reads,
//!   every page verified by blake3 of its plaintext (`pull.rs`).
//! - [`open_lazy`]: a page source for a lazy `uffd` restore that fetches
//!   the pages the copy needs as it needs them (`lazy.rs`).
//! - [`RemoteStore::status`], [`RemoteStore::snapshot_status`]: what is there.
//! - [`RemoteStore::put_blob`], [`RemoteStore::get_blob`]: records and code.
//! - [`RemoteStore::put_blob_file`], [`RemoteStore::get_blob_to`]: large
//!   objects (dependency layers) streamed from and to files, sealed in
//!   chunks, sent in parts, never whole in memory (`stream.rs`).
//! - [`RemoteStore::gc`]: delete what nothing live references, after a
//!   grace period (`gc.rs`).
//!
//! Packs are laid out in fixed-size slots so a page server can fetch any
//! run of pages of a snapshot with one ranged read ([`seal::slot_range`]).
#![forbid(unsafe_code)]

mod bucket;
mod gc;
mod index;
pub mod key;
mod lazy;
mod local;
mod manifest;
mod pull;
mod push;
pub mod seal;
mod status;
pub mod stream;

pub use bucket::{
    BadStoreUrl, ConnectError, Listed, ObjectError, RemoteStore, StoreUrl, Transfers,
};
pub use gc::{Collected, GcError, GcOptions, GcReport, Live};
pub use index::{BucketIndex, PageLoc};
pub use key::{KeyError, Kind, StoreKey};
pub use lazy::{
    open_lazy, stored_pages, LazyCounter, LazyError, LazyReport, LazySnapshot, LazySource,
};
pub use local::LocalSnapshot;
pub use manifest::{RemotePage, RemoteSnapshot, WorkingPack, REMOTE_SNAPSHOT_FORMAT};
pub use object_store::aws::AmazonS3Builder;
pub use pull::{pull_snapshot, PullError, PullReport};
pub use push::{push_snapshot, PushError, PushReport, ENV_WORKING_PACK};
pub use status::{KindCount, RemoteStatus, SnapshotStatus};
