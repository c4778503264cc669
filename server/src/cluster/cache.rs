//! The local page store as a cache in front of the shared store, capped by
//! `store_cache_mb` (docs/cluster.md, "The local store as a cache").
//!
//! A check runs at start, after each snapshot fetched or captured, and
//! every [`CHECK_EVERY`] (which counts the images restores build, and
//! snapshots uploaded since their capture). When the store's files
//! (packs, index, roots, images: blocks allocated) exceed the cap:
//!
//! ```text
//! 1. local gc: free the pages and images no local snapshot needs
//! 2. while still over, evict one local snapshot, the least recently
//!    restored first (never restored: oldest capture first), skipping
//!      - the most recently used one (the one a cold start waits for)
//!      - one a copy of this node runs from (idle or busy instances of a
//!        version with that snapshot: in mmap mode they map its image)
//!      - one not complete in the shared store (on the writer: not uploaded
//!        yet; its only copy is here)
//!    evicting: versions with it stop restoring it (cold starts boot),
//!    then its manifest is removed (first: a half-evicted snapshot is never
//!    "local"), then its working set and root; then local gc again
//! ```
//!
//! An evicted snapshot is fetched again on the next invocation of its
//! version (that cold start boots, later ones restore): a reader does not
//! fetch it back in the background as it does new snapshots. A restore that
//! already started keeps what it opened or mapped: an unlinked file stays
//! readable. Without a cap nothing here runs but the bookkeeping of
//! restores.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::Cluster;
use crate::service::{now_ms, Service};

/// How often the check runs without a reason.
pub const CHECK_EVERY: Duration = Duration::from_secs(30);

/// What the cache keeps between checks.
#[derive(Debug, Default)]
pub struct Cache {
    /// Snapshots evicted and not asked for since.
    evicted: Mutex<HashSet<String>>,
    /// Unix ms of each snapshot's last restore or fetch (kept with a cap).
    used: Mutex<HashMap<String, u64>>,
    capped: std::sync::atomic::AtomicBool,
    wake: tokio::sync::Notify,
}

impl Cache {
    /// Runs the check soon (after a fetch, an upload, a restore).
    pub fn poke(&self) {
        self.wake.notify_one();
    }

    /// Snapshot `id` was restored now (the periodic check counts the image
    /// a first restore may have built).
    pub fn touch(&self, id: &str) {
        if self.capped.load(std::sync::atomic::Ordering::Relaxed) {
            self.used.lock().unwrap().insert(id.to_string(), now_ms());
        }
    }

    /// Snapshot `id` was fetched now: the check runs.
    pub fn fetched(&self, id: &str) {
        self.touch(id);
        self.poke();
    }

    /// Whether `id` was evicted and not asked for since (a reader does not
    /// fetch it back in the background).
    pub fn is_evicted(&self, id: &str) -> bool {
        self.evicted.lock().unwrap().contains(id)
    }
}

/// Bytes the files under `dir` take on disk (allocated blocks: images are
/// sparse).
pub fn disk_bytes(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    for entry in entries.flatten() {
        let Ok(meta) = entry.metadata() else { continue };
        if meta.is_dir() {
            total += disk_bytes(&entry.path());
        } else {
            total += meta.blocks() * 512;
        }
    }
    total
}

impl Cluster {
    /// Before an invocation of `key`: if its snapshot was evicted, fetch it
    /// again (this cold start boots; later ones restore once it is local).
    pub fn ask_for_evicted(self: &Arc<Self>, service: &Service, key: &pool::FunctionKey) {
        let id = {
            let map = service.functions.read().unwrap();
            let Some(v) = map
                .get(&key.name)
                .and_then(|l| l.iter().find(|v| v.key == *key))
            else {
                return;
            };
            if v.start.snapshot.is_some() {
                return;
            }
            match &v.record.snapshot {
                Some(s) => s.id.clone(),
                None => return,
            }
        };
        if !self.cache.evicted.lock().unwrap().remove(&id) {
            return;
        }
        tracing::info!(function = %key.name, version = key.version, snapshot = %id, "an evicted snapshot is asked for: fetching it again");
        let svc = service.clone();
        let k = key.clone();
        let snapshot = id.clone();
        let this = self.clone();
        let ready = move |how| {
            this.cache.fetched(&snapshot);
            super::follow::restorable(&svc, &k, &snapshot, how);
        };
        if self.snapshot_for_restore(&id, ready.clone()) == super::ForRestore::Local {
            ready(super::ForRestore::Local);
        }
    }
}

/// Starts the cache's checks (a node with `store_cache_mb`; without it
/// nothing is evicted and nothing here runs).
pub fn spawn(cluster: Arc<Cluster>, service: Service) {
    let Some(cap) = cluster.options.cache_cap else {
        return;
    };
    cluster
        .cache
        .capped
        .store(true, std::sync::atomic::Ordering::Relaxed);
    // Versions whose snapshot is not local (evicted before a restart):
    // fetched when asked for, never restored from a missing manifest.
    {
        let mut map = service.functions.write().unwrap();
        for v in map.values_mut().flatten() {
            let Some(id) = v.record.snapshot.as_ref().map(|s| s.id.clone()) else {
                continue;
            };
            if !cluster.is_local(&id) && v.start.snapshot.is_some() {
                v.start.snapshot = None;
                service.keep(v);
                if cluster.is_writer() {
                    cluster.cache.evicted.lock().unwrap().insert(id);
                }
            }
        }
    }
    if let Some(m) = cluster.metrics() {
        m.store_cache_cap.set(cap as i64);
    }
    tracing::info!(
        cap_bytes = cap,
        "the local store is a cache of the shared store"
    );
    tokio::spawn(async move {
        loop {
            if let Err(e) = check(&cluster, &service, cap).await {
                tracing::warn!(error = %format!("{e:#}"), "checking the local store's cap failed");
            }
            let _ = tokio::time::timeout(CHECK_EVERY, cluster.cache.wake.notified()).await;
        }
    });
}

/// A local snapshot that might be evicted.
struct Candidate {
    id: String,
    last_used: u64,
    created_ms: u64,
    keys: Vec<pool::FunctionKey>,
}

fn in_use(service: &Service, keys: &[pool::FunctionKey]) -> bool {
    keys.iter().any(|k| {
        let c = service.pool.counts(k);
        c.idle + c.busy + c.booting > 0
    })
}

async fn local_gc(cluster: &Cluster) -> anyhow::Result<()> {
    let store = cluster.store.clone();
    tokio::task::spawn_blocking(move || store.gc()).await??;
    Ok(())
}

/// One check: under the cap, or as near as what may be evicted allows.
async fn check(cluster: &Arc<Cluster>, service: &Service, cap: u64) -> anyhow::Result<()> {
    let dir = cluster.store.dir().to_path_buf();
    let mut bytes = disk_bytes(&dir);
    let export = |bytes: u64| {
        if let Some(m) = cluster.metrics() {
            m.store_cache_bytes.set(bytes as i64);
        }
    };
    export(bytes);
    if bytes <= cap {
        return Ok(());
    }
    local_gc(cluster).await?;
    let after_gc = disk_bytes(&dir);
    tracing::info!(
        bytes_before = bytes,
        bytes = after_gc,
        cap,
        "the local store was over its cap: pages no local snapshot needs freed"
    );
    bytes = after_gc;
    export(bytes);
    if bytes <= cap {
        return Ok(());
    }

    // Local snapshots of versions, least recently used first.
    let mut candidates: Vec<Candidate> = {
        let map = service.functions.read().unwrap();
        let used = cluster.cache.used.lock().unwrap();
        let mut by_id: HashMap<String, Candidate> = HashMap::new();
        for v in map.values().flatten() {
            let Some(s) = &v.record.snapshot else {
                continue;
            };
            if !cluster.is_local(&s.id) {
                continue;
            }
            let c = by_id.entry(s.id.clone()).or_insert_with(|| Candidate {
                id: s.id.clone(),
                last_used: used.get(&s.id).copied().unwrap_or(0),
                created_ms: s.created_ms,
                keys: Vec::new(),
            });
            c.keys.push(v.key.clone());
        }
        by_id.into_values().collect()
    };
    // Snapshots no version has any more are forgotten.
    cluster
        .cache
        .used
        .lock()
        .unwrap()
        .retain(|id, _| candidates.iter().any(|c| &c.id == id) || cluster.is_local(id));
    candidates.sort_by_key(|c| (c.last_used, c.created_ms));
    // The most recently used stays: a cold start may be waiting for it.
    candidates.pop();
    for c in candidates {
        if bytes <= cap {
            break;
        }
        if in_use(service, &c.keys) {
            tracing::debug!(snapshot = %c.id, "not evicted: a copy runs from it");
            continue;
        }
        match cluster.remote.snapshot_status(&c.id).await {
            Ok(s) if s.present && s.pages_missing == 0 => {}
            Ok(_) => {
                tracing::debug!(snapshot = %c.id, "not evicted: not complete in the shared store");
                continue;
            }
            Err(e) => {
                cluster.health.failed(&format!("{e:#}"));
                anyhow::bail!("asking the shared store for snapshot {}: {e}", c.id);
            }
        }
        if !evict(cluster, service, &c) {
            continue;
        }
        local_gc(cluster).await?;
        let now = disk_bytes(&dir);
        tracing::info!(
            snapshot = %c.id,
            functions = ?c.keys.iter().map(|k| format!("{}/v{}", k.name, k.version)).collect::<Vec<_>>(),
            last_restored_ms_ago = (c.last_used > 0).then(|| now_ms().saturating_sub(c.last_used)),
            bytes_before = bytes,
            bytes = now,
            cap,
            "snapshot evicted from the local store (over its cap; least recently restored, complete in the shared store); its next cold start fetches it again"
        );
        if let Some(m) = cluster.metrics() {
            m.store_cache_evictions.inc();
        }
        bytes = now;
        export(bytes);
    }
    if bytes > cap {
        tracing::warn!(
            bytes,
            cap,
            "the local store stays over its cap: every other snapshot is in use, the newest, or not in the shared store yet"
        );
    }
    Ok(())
}

/// Evicts `c` unless a copy started from it meanwhile; returns whether it
/// did.
fn evict(cluster: &Cluster, service: &Service, c: &Candidate) -> bool {
    // Cold starts boot from now on ...
    {
        let mut map = service.functions.write().unwrap();
        for v in map.values_mut().flatten() {
            if c.keys.contains(&v.key) {
                v.start.snapshot = None;
                service.keep(v);
            }
        }
    }
    // ... unless one restored meanwhile: then it stays.
    if in_use(service, &c.keys) {
        for k in &c.keys {
            super::follow::restorable(service, k, &c.id, super::ForRestore::Local);
        }
        return false;
    }
    cluster.cache.evicted.lock().unwrap().insert(c.id.clone());
    cluster.cache.used.lock().unwrap().remove(&c.id);
    // The manifest first (snapshots::remove): never "local" half-evicted.
    crate::snapshots::remove(&cluster.store, &cluster.snapshots_dir, &c.id);
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_bytes_counts_allocated_blocks_of_every_file_below() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("a/b")).unwrap();
        std::fs::write(dir.path().join("a/b/full"), vec![1u8; 64 << 10]).unwrap();
        // A sparse file of 1 GiB with one written page.
        let f = std::fs::File::create(dir.path().join("sparse")).unwrap();
        f.set_len(1 << 30).unwrap();
        std::os::unix::fs::FileExt::write_at(&f, &[1u8; 4096], 0).unwrap();
        let n = disk_bytes(dir.path());
        assert!((64 << 10..(1 << 20)).contains(&n), "{n}");
        assert_eq!(disk_bytes(&dir.path().join("missing")), 0);
    }
}
