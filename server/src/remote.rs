//! The shared store (docs/cluster.md) as the server and the CLI use it:
//! settings (`store_url`, the store key), the upload of a version after its
//! capture, and `thaw store push|pull|remote-status`.
//!
//! What one version puts in the bucket, named by the keyed hash of:
//!
//! ```text
//! snapshots/, workingsets/, packs/, packidx/   its snapshot id (remote_store::push_snapshot)
//! functions/<name>                            the function name: function.json
//! code/<name>                                 "<function>/v<N>/<uid hex>": tar of v<N>/code
//!                                             (without its dependency layer's links)
//! code/<name>                                 "#layer/<key>/<blake3>": a dependency layer
//!                                             (cluster::layers)
//! ```
//!
//! Without a store URL nothing here runs and nothing leaves the machine.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use anyhow::{Context, Result};
use remote_store::{Kind, LocalSnapshot, PushReport, RemoteStore, StoreKey, StoreUrl};
use snapshotter::store::PageStore;

use crate::metrics::Metrics;
use crate::registry::Registry;

/// Where the shared store is and the key of its objects.
#[derive(Debug, Clone)]
pub struct RemoteSettings {
    /// `s3://BUCKET/PREFIX`.
    pub url: StoreUrl,
    /// The store key.
    pub key: StoreKey,
}

/// The shared store's settings from `store_url` and the key: `THAW_STORE_KEY`
/// (64 hex digits) or `store_key_file`. `None` without a URL.
pub fn settings(url: Option<&str>, key_file: Option<&Path>) -> Result<Option<RemoteSettings>> {
    let Some(url) = url.filter(|u| !u.trim().is_empty()) else {
        return Ok(None);
    };
    let url: StoreUrl = url.trim().parse().context("store_url")?;
    let key = match (
        std::env::var("THAW_STORE_KEY")
            .ok()
            .filter(|k| !k.trim().is_empty()),
        key_file,
    ) {
        (Some(hex), _) => StoreKey::from_hex(&hex).context("THAW_STORE_KEY")?,
        (None, Some(path)) => StoreKey::from_file(path).context("store_key_file")?,
        (None, None) => anyhow::bail!(
            "store_url {url} needs a store key to encrypt objects with: set THAW_STORE_KEY \
             (64 hex digits) or store_key_file (./dev.sh s3 prints one)"
        ),
    };
    Ok(Some(RemoteSettings { url, key }))
}

/// Connects to the store (endpoint and credentials from `AWS_*`).
pub fn connect(settings: &RemoteSettings) -> Result<Arc<RemoteStore>> {
    Ok(Arc::new(RemoteStore::from_env(
        settings.url.clone(),
        &settings.key,
    )?))
}

/// The name of a version's code in the bucket (before keyed hashing).
pub fn code_address(name: &str, version: u64, uid: u64) -> String {
    format!("{name}/v{version}/{uid:016x}")
}

/// A version's code as a tar archive (symbolic links stay links; the
/// hard links of its dependency layer `layer` are left out: the layer
/// travels as an object of its own, see `cluster::layers`).
pub fn code_tar(code_dir: &Path, layer: Option<&crate::build::layer::LayerRef>) -> Result<Vec<u8>> {
    crate::cluster::layers::code_tar(code_dir, layer)
}

/// The snapshot of `id` in a data directory (or a `thaw snapshot` folder).
/// Its working set as far as the bucket goes is its fetch set when it has
/// one (recorded exactly at deploy), else the working set its copies
/// recorded (`pool::restore::working_set`); a pull writes the bucket's
/// there.
pub fn local_snapshot(store: Arc<PageStore>, snapshots_dir: &Path, id: &str) -> LocalSnapshot {
    LocalSnapshot {
        store,
        working_set: bucket_working_set(snapshots_dir, id),
        snapshots_dir: snapshots_dir.to_path_buf(),
        id: id.to_string(),
    }
}

/// The snapshot of `id` in the server's data directory as its pulls
/// write it: the bucket's working set becomes its fetch set, never the
/// plan of this node's copies (they record their own from their first
/// invocation: see `crate::deploy_working_set`).
pub fn pull_target(store: Arc<PageStore>, snapshots_dir: &Path, id: &str) -> LocalSnapshot {
    LocalSnapshot {
        working_set: pool::restore::working_set::fetch_path(snapshots_dir, id),
        ..local_snapshot(store, snapshots_dir, id)
    }
}

/// The file of snapshot `id`'s working set that goes up to the bucket:
/// its fetch set when it has one, else its working set.
fn bucket_working_set(snapshots_dir: &Path, id: &str) -> std::path::PathBuf {
    let fetch = pool::restore::working_set::fetch_path(snapshots_dir, id);
    if fetch.exists() {
        fetch
    } else {
        pool::restore::working_set::path(snapshots_dir, id)
    }
}

/// Uploads versions in the background after their capture.
#[derive(Debug, Clone)]
pub struct Uploader {
    remote: Arc<RemoteStore>,
    store: Arc<PageStore>,
    snapshots_dir: PathBuf,
    registry: Registry,
    pending: Arc<AtomicI64>,
    working_sets: Arc<std::sync::Mutex<WorkingSetUploads>>,
}

/// Which snapshots' working sets went up with their upload, and which
/// uploads run now ([`upload_recorded_working_sets`]).
#[derive(Debug, Default)]
struct WorkingSetUploads {
    /// Snapshots uploaded with a local working set.
    sent: std::collections::HashSet<String>,
    /// Snapshots being uploaded now.
    in_flight: std::collections::HashSet<String>,
}

/// One version to upload.
#[derive(Debug, Clone)]
pub struct VersionUpload {
    /// Function name.
    pub name: String,
    /// Version number.
    pub version: u64,
    /// Deployment uid.
    pub uid: u64,
    /// Its snapshot id.
    pub snapshot: String,
}

impl Uploader {
    /// An uploader of the versions of a data directory.
    pub fn new(
        remote: Arc<RemoteStore>,
        store: Arc<PageStore>,
        data_dir: &Path,
        registry: Registry,
    ) -> Uploader {
        Uploader {
            remote,
            store,
            snapshots_dir: crate::snapshots::snapshots_dir(data_dir),
            registry,
            pending: Default::default(),
            working_sets: Default::default(),
        }
    }

    /// Whether snapshot `id` is neither being uploaded now nor was uploaded
    /// with a working set since the start.
    fn lacks_working_set_upload(&self, id: &str) -> bool {
        let w = self.working_sets.lock().unwrap();
        !w.sent.contains(id) && !w.in_flight.contains(id)
    }

    /// The store.
    pub fn remote(&self) -> &Arc<RemoteStore> {
        &self.remote
    }

    /// Starts uploading `v` (snapshot, record, code) in the background;
    /// progress and failures go to the log and the `thaw_remote_*` metrics.
    pub fn spawn(&self, metrics: Arc<Metrics>, v: VersionUpload) {
        let this = self.clone();
        this.pending.fetch_add(1, Ordering::Relaxed);
        metrics
            .remote_pending
            .set(this.pending.load(Ordering::Relaxed));
        this.working_sets
            .lock()
            .unwrap()
            .in_flight
            .insert(v.snapshot.clone());
        tokio::spawn(async move {
            let with_working_set = bucket_working_set(&this.snapshots_dir, &v.snapshot).exists();
            let result = this.upload(&v).await;
            {
                let mut w = this.working_sets.lock().unwrap();
                w.in_flight.remove(&v.snapshot);
                if with_working_set && result.is_ok() {
                    w.sent.insert(v.snapshot.clone());
                }
            }
            let left = this.pending.fetch_sub(1, Ordering::Relaxed) - 1;
            metrics.remote_pending.set(left);
            let t = this.remote.transfers();
            metrics.remote_bytes_sent.set(t.bytes_sent as i64);
            match result {
                Ok(report) => {
                    metrics.remote_uploads.get_or_create(&ok_label(true)).inc();
                    tracing::info!(
                        function = %v.name,
                        version = v.version,
                        snapshot = %v.snapshot,
                        pages = report.pages,
                        pages_sent = report.pages_sent,
                        bytes_sent = report.bytes_sent,
                        working_pack_pages = report.working_pack_pages,
                        store = %this.remote.url(),
                        "version uploaded to the shared store"
                    );
                }
                Err(e) => {
                    metrics.remote_uploads.get_or_create(&ok_label(false)).inc();
                    tracing::warn!(
                        function = %v.name,
                        version = v.version,
                        error = %format!("{e:#}"),
                        "uploading the version to the shared store failed"
                    );
                }
            }
        });
    }

    /// Uploads the snapshot, then the code, then the record (last: a node
    /// that reads a record finds what it names).
    pub async fn upload(&self, v: &VersionUpload) -> Result<PushReport> {
        let local = local_snapshot(self.store.clone(), &self.snapshots_dir, &v.snapshot);
        let report = remote_store::push_snapshot(&self.remote, &local, &v.snapshot).await?;
        let code_dir = self.registry.code_dir(&v.name, v.version);
        let record_path = self.registry.record_path(&v.name);
        let record = std::fs::read(&record_path)
            .with_context(|| format!("reading {}", record_path.display()))?;
        // The same archive the writer's catalog publishes (cluster::publish).
        let layer = serde_json::from_slice::<crate::registry::FunctionRecord>(&record)
            .ok()
            .and_then(|r| r.version(v.version).and_then(|v| v.layer.clone()));
        let tar =
            tokio::task::spawn_blocking(move || code_tar(&code_dir, layer.as_ref())).await??;
        self.remote
            .put_blob(
                Kind::Code,
                code_address(&v.name, v.version, v.uid).as_bytes(),
                &tar,
            )
            .await?;
        self.remote
            .put_blob(Kind::Function, v.name.as_bytes(), &record)
            .await?;
        Ok(report)
    }
}

/// Uploads every version that has a snapshot, in the background (at start,
/// and on the writer when the store answers again after an outage): each
/// sends only what the bucket lacks. Nothing without an uploader.
pub fn upload_all(service: &crate::service::Service) {
    let Some(uploader) = &service.config.uploader else {
        return;
    };
    // A snapshot evicted from the local store (cluster/cache.rs) was
    // complete in the bucket when it went.
    let versions = local_snapshot_versions(service, |_| true);
    for v in versions {
        uploader.spawn(service.metrics.clone(), v);
    }
}

/// Uploads again each version whose snapshot has a working set recorded
/// locally that did not go up with its upload (a copy's first invocation
/// recorded it afterwards: a deploy's recording failed, or the snapshot
/// predates recording at deploy): the upload sends the working set and
/// finds everything else in the bucket. Called by the writer's publisher
/// while the store answers; only the restorer's cached working sets are
/// looked at (no file is read).
pub fn upload_recorded_working_sets(service: &crate::service::Service) {
    let (Some(uploader), Some(restorer)) = (&service.config.uploader, service.pool.restorer())
    else {
        return;
    };
    // Not one evicted from the local store (it went up whole).
    let versions = local_snapshot_versions(service, |id| {
        restorer.has_working_set_cached(id) == Some(true) && uploader.lacks_working_set_upload(id)
    });
    for v in versions {
        tracing::info!(function = %v.name, version = v.version, snapshot = %v.snapshot, "uploading the working set recorded since the upload");
        uploader.spawn(service.metrics.clone(), v);
    }
}

/// The versions whose snapshot is in the local store (its manifest there)
/// and passes `keep` (given the snapshot's id), as uploads.
fn local_snapshot_versions(
    service: &crate::service::Service,
    keep: impl Fn(&str) -> bool,
) -> Vec<VersionUpload> {
    let snapshots_dir = crate::snapshots::snapshots_dir(&service.config.data_dir);
    service
        .functions
        .read()
        .unwrap()
        .iter()
        .flat_map(|(name, list)| {
            list.iter().filter_map(|v| {
                let id = &v.record.snapshot.as_ref()?.id;
                keep(id).then(|| VersionUpload {
                    name: name.clone(),
                    version: v.record.version,
                    uid: v.record.uid,
                    snapshot: id.clone(),
                })
            })
        })
        .filter(|v| snapshotter::snapshot::manifest_path(&snapshots_dir, &v.snapshot).exists())
        .collect()
}

fn ok_label(ok: bool) -> crate::metrics::ResultLabels {
    crate::metrics::ResultLabels {
        result: if ok { "ok" } else { "error" }.to_string(),
    }
}

/// Where `thaw store push|pull` finds a snapshot: the data directory's
/// (`<data>/store`, `<data>/snapshots/<id>.snapshot`), or a `thaw snapshot`
/// folder (`DIR/store`, `DIR/snapshot.snapshot`, local id `snapshot`).
fn cli_local(data_dir: &Path, snapshot_dir: Option<&Path>, id: &str) -> Result<LocalSnapshot> {
    let (store_dir, snapshots_dir, local_id) = match snapshot_dir {
        Some(dir) => (
            dir.join("store"),
            dir.to_path_buf(),
            snapshotter::snapshot::DIR_SNAPSHOT_ID.to_string(),
        ),
        None => (
            crate::store_view::store_dir(data_dir),
            crate::snapshots::snapshots_dir(data_dir),
            id.to_string(),
        ),
    };
    snapshotter::store::validate_snapshot_id(id)?;
    crate::registry::create_private_dir(&store_dir)
        .with_context(|| format!("creating {}", store_dir.display()))?;
    let store = PageStore::open(&store_dir)
        .with_context(|| format!("opening the page store {}", store_dir.display()))?;
    Ok(local_snapshot(Arc::new(store), &snapshots_dir, &local_id))
}

/// Connects for a `thaw store` command that needs the shared store.
pub fn cli_connect(settings: Option<RemoteSettings>) -> Result<Arc<RemoteStore>> {
    let settings = settings.context(
        "no shared store: set --store-url or THAW_STORE_URL (./dev.sh s3 prints the exports)",
    )?;
    connect(&settings)
}

/// `thaw store push ID`: uploads what the bucket lacks of a snapshot.
pub async fn cli_push(
    settings: Option<RemoteSettings>,
    data_dir: &Path,
    snapshot_dir: Option<&Path>,
    id: &str,
) -> Result<serde_json::Value> {
    let remote = cli_connect(settings)?;
    let local = cli_local(data_dir, snapshot_dir, id)?;
    let r = remote_store::push_snapshot(&remote, &local, id)
        .await
        .with_context(|| format!("uploading snapshot {id} to {}", remote.url()))?;
    Ok(serde_json::json!({
        "snapshot": r.remote_id,
        "store": remote.url().to_string(),
        "pages": r.pages,
        "pages_in_bucket": r.pages_in_bucket,
        "pages_sent": r.pages_sent,
        "packs_sent": r.packs_sent,
        "objects_sent": r.objects_sent,
        "bytes_sent": r.bytes_sent,
        "manifest_sent": r.manifest_sent,
        "working_set_sent": r.working_set_sent,
        "working_pack_pages": r.working_pack_pages,
        "working_packs_sent": r.working_packs_sent,
    }))
}

/// `thaw store pull ID`: downloads a snapshot into the local store. Into
/// a data directory the bucket's working set becomes the snapshot's fetch
/// set (as the server's pulls write it); into a `--snapshot-dir` folder,
/// the folder's working set (the plan of `thaw restore DIR`).
pub async fn cli_pull(
    settings: Option<RemoteSettings>,
    data_dir: &Path,
    snapshot_dir: Option<&Path>,
    id: &str,
) -> Result<serde_json::Value> {
    let remote = cli_connect(settings)?;
    let mut local = cli_local(data_dir, snapshot_dir, id)?;
    if snapshot_dir.is_none() {
        // Into a server's data directory: written as the server's own
        // pulls write it (the node's copies record their own plan).
        local = pull_target(local.store, &local.snapshots_dir, &local.id);
    }
    let r = remote_store::pull_snapshot(&remote, id, &local)
        .await
        .with_context(|| format!("downloading snapshot {id} from {}", remote.url()))?;
    Ok(serde_json::json!({
        "snapshot": r.remote_id,
        "store": remote.url().to_string(),
        "pages": r.pages,
        "pages_local": r.pages_local,
        "pages_fetched": r.pages_fetched,
        "ranges": r.ranges,
        "bytes_fetched": r.bytes_fetched,
        "working_set": r.working_set,
    }))
}

/// `thaw store remote-status [ID]`: what the bucket holds, and whether
/// snapshot ID is complete there (the second value).
pub async fn cli_status(
    settings: Option<RemoteSettings>,
    id: Option<&str>,
) -> Result<(serde_json::Value, bool)> {
    let remote = cli_connect(settings)?;
    let s = remote.status().await?;
    let mut value = serde_json::json!({
        "store": remote.url().to_string(),
        "pages": s.pages,
        "uncommitted_packs": s.uncommitted_packs,
        "objects": s.kinds.iter().map(|k| (k.kind.folder().to_string(), serde_json::json!({"objects": k.objects, "bytes": k.bytes}))).collect::<serde_json::Map<_, _>>(),
    });
    // The writer and its catalog (docs/cluster.md), when one publishes.
    if let Some(w) = crate::cluster::catalog::read_writer(&remote).await? {
        value["writer"] = serde_json::json!({
            "url": w.url,
            "generation": w.generation,
            "heartbeat_age_s": crate::service::now_ms().saturating_sub(w.heartbeat_ms) as f64 / 1000.0,
        });
        if let Some(c) = crate::cluster::catalog::read_catalog(&remote).await? {
            value["writer"]["catalog_generation"] = c.generation.into();
            value["writer"]["functions"] = c.functions.keys().cloned().collect::<Vec<_>>().into();
        }
    }
    let mut ok = true;
    if let Some(id) = id {
        let snap = remote.snapshot_status(id).await?;
        ok = snap.present && snap.pages_missing == 0;
        value["snapshot"] = serde_json::json!({
            "id": snap.remote_id,
            "present": snap.present,
            "pages": snap.pages,
            "pages_missing": snap.pages_missing,
            "working_set": snap.working_set,
            "complete": ok,
        });
    }
    Ok((value, ok))
}
