//! Getting a snapshot this node does not hold, for its cold starts.
//!
//! [`Cluster::snapshot_for_restore`] is the one place a reader asks for a
//! snapshot: today it downloads the whole snapshot in the background
//! (`remote_store::pull_snapshot`, every page verified by its blake3) while
//! cold starts boot, and says when the copy is complete so cold starts
//! restore from then on. A lazy page server that fetches pages from the
//! bucket on demand replaces the body of this function, not its callers.
//!
//! A failed download is logged and counted, and the version keeps booting;
//! the follower asks again on its next pass. Store errors never mark a
//! snapshot for rebuild: only a failed restore of a local snapshot does.

use std::sync::Arc;

use super::Cluster;

/// What a cold start of a snapshot can do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForRestore {
    /// Complete in the local store: restore it.
    Local,
    /// Being fetched: boot meanwhile; `on_ready` runs once it is local.
    Fetching,
}

/// One download at a time into the local store.
static PULLS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

impl Cluster {
    /// Whether snapshot `id` is complete in the local store (its manifest
    /// is written last, after its pages and root).
    pub fn is_local(&self, id: &str) -> bool {
        snapshotter::snapshot::manifest_path(&self.snapshots_dir, id).exists()
    }

    /// Whether snapshot `id` (a version's, as its record names it) can be
    /// restored here now; if not, starts getting it (once, however often it
    /// is asked) and calls `on_ready` when it can.
    pub fn snapshot_for_restore(
        self: &Arc<Self>,
        id: &str,
        on_ready: impl FnOnce() + Send + 'static,
    ) -> ForRestore {
        if self.is_local(id) {
            return ForRestore::Local;
        }
        if !self.fetching.lock().unwrap().insert(id.to_string()) {
            return ForRestore::Fetching;
        }
        let this = self.clone();
        let id = id.to_string();
        tokio::spawn(async move {
            let result = {
                let _one = PULLS.lock().await;
                let local =
                    crate::remote::local_snapshot(this.store.clone(), &this.snapshots_dir, &id);
                remote_store::pull_snapshot(&this.remote, &id, &local).await
            };
            this.fetching.lock().unwrap().remove(&id);
            let ok = result.is_ok();
            if let Some(m) = this.metrics() {
                m.remote_fetches
                    .get_or_create(&crate::metrics::ResultLabels {
                        result: if ok { "ok" } else { "error" }.into(),
                    })
                    .inc();
            }
            match result {
                Ok(r) => {
                    this.health.ok();
                    // The cache's check runs (cache.rs); this one is newest.
                    this.cache.fetched(&id);
                    tracing::info!(
                        snapshot = %id,
                        pages = r.pages,
                        pages_fetched = r.pages_fetched,
                        bytes_fetched = r.bytes_fetched,
                        ranges = r.ranges,
                        "snapshot fetched from the shared store; cold starts restore it"
                    );
                    on_ready();
                }
                Err(e) => {
                    if matches!(
                        e,
                        remote_store::PullError::Object(remote_store::ObjectError::Request { .. })
                    ) {
                        this.health.failed(&format!("{e:#}"));
                    }
                    tracing::warn!(
                        snapshot = %id,
                        error = %format!("{e:#}"),
                        "fetching the snapshot failed; cold starts boot until it is local"
                    );
                }
            }
            this.export();
        });
        ForRestore::Fetching
    }
}
