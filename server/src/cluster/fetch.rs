//! Getting a snapshot this node does not hold, for its cold starts.
//!
//! [`Cluster::snapshot_for_restore`] is the one place a reader asks for a
//! snapshot. It restores it lazily (docs/cluster.md, "Lazy restore"):
//!
//! ```text
//! open       GET snapshots/<name>, GET workingsets/<name> (remote_store::open_lazy)
//!            -> the restorer restores copies of it lazily (SnapshotRestorer::set_lazy):
//!               uffd mode, each copy its own image and page server over the
//!               one shared LazySource (its fetched pages go into the local store)
//!            -> cold starts restore (ForRestore::Lazy), into spares made
//!               ahead that fetch nothing before their claim (pool spares.rs)
//! a copy resumed         thaw_remote_lazy_restores_total{result="ok"}; the first
//!                        starts the completion (one per registration)
//! complete   LazySource::complete: what the local store lacks, root, manifest,
//!            working set -> clear_lazy; cold starts restore locally in the
//!            configured mode (ForRestore::Local)
//! complete fails         retried in the background (1 s, doubling, at most
//!            30 s; not while the store is down) until it succeeds or the
//!            registration is gone: thaw_remote_completion_retries_total
//! a fetch fails before a copy resumed   {result="boot"}: that cold start boots;
//!            the snapshot is dropped from lazy restores and the version boots
//!            (ForRestore::Fetching) until the follower asks again with the
//!            store up
//! a fetch fails after    {result="killed"}: the page server kills the copy (the
//!            invocation answers 502 function_crashed), never zeros; later
//!            cold starts boot as above until the store answers
//! ```
//!
//! A process tree restores lazily the same way: one lazy image for every
//! process, a page server per process over the one source (the root's
//! working set before the resume, see `pool::restore::tree`). A node
//! without a restorer downloads the whole snapshot instead
//! (`remote_store::pull_snapshot`) while cold starts boot.
//!
//! Each registration has its own generation (lazy_registrations.rs): a
//! failure of a copy made from an older registration of the same snapshot
//! (dropped, then registered again by the follower) leaves the newer one.
//!
//! Failures are logged and counted, and mark the store down in `/healthz`.
//! Store errors never mark a snapshot for rebuild: only a failed restore of
//! a local snapshot does.

use std::sync::Arc;

use pool::restore::page_source::{LazyEvent, LazyOrigin, PageSource};
use remote_store::LazySource;

use super::lazy_registrations::{completion_backoff, Which};
use super::Cluster;
use crate::metrics::ResultLabels;

/// What cold starts of a snapshot can do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForRestore {
    /// Complete in the local store: restore it in the configured mode.
    Local,
    /// Not local, restored lazily from the shared store (uffd mode).
    Lazy,
    /// Being fetched, or the store failed: boot meanwhile.
    Fetching,
}

/// How cold starts restore snapshot `id` lazily: in uffd mode, whatever
/// the function's memory mode.
pub fn lazy_source(id: &str) -> pool::instance::SnapshotSource {
    pool::instance::SnapshotSource {
        id: id.to_string(),
        mode: "uffd".to_string(),
    }
}

/// Told when what cold starts of a snapshot can do changes.
type OnChange = Arc<dyn Fn(ForRestore) + Send + Sync>;

/// A lazy registration, as its copies' events see it.
#[derive(Clone, Copy)]
struct Registered<'a> {
    id: &'a str,
    generation: u64,
    source: &'a Arc<LazySource>,
    on_change: &'a OnChange,
}

/// One download or completion at a time into the local store.
static PULLS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

impl Cluster {
    /// Whether snapshot `id` is complete in the local store (its manifest
    /// is written last, after its pages and root).
    pub fn is_local(&self, id: &str) -> bool {
        snapshotter::snapshot::manifest_path(&self.snapshots_dir, id).exists()
    }

    /// Whether snapshot `id` (a version's, as its record names it) can be
    /// restored here now; if not, starts getting it (once, however often it
    /// is asked) and calls `on_change` each time that changes: with
    /// [`ForRestore::Lazy`] once copies can restore lazily, with
    /// [`ForRestore::Local`] once it is complete locally, with
    /// [`ForRestore::Fetching`] when the store failed (ask again later).
    pub fn snapshot_for_restore(
        self: &Arc<Self>,
        id: &str,
        on_change: impl Fn(ForRestore) + Send + Sync + 'static,
    ) -> ForRestore {
        if self.is_local(id) {
            return ForRestore::Local;
        }
        if !self.fetching.lock().unwrap().insert(id.to_string()) {
            return ForRestore::Fetching;
        }
        let this = self.clone();
        let id = id.to_string();
        let on_change: OnChange = Arc::new(on_change);
        tokio::spawn(async move {
            this.open_lazily(&id, on_change).await;
            this.export();
        });
        ForRestore::Fetching
    }

    /// Snapshots restored lazily now.
    pub fn lazy_snapshots(&self) -> usize {
        self.lazy.len()
    }

    /// How cold starts restore snapshot `id` while it is restored lazily
    /// (`None`: it is not).
    pub fn lazy_source(&self, id: &str) -> Option<pool::instance::SnapshotSource> {
        self.lazy.contains(id).then(|| lazy_source(id))
    }

    /// Stops restoring lazily the snapshots not in `wanted` (their
    /// versions are gone): their sources are dropped with the last copy.
    pub fn keep_lazy(&self, wanted: &std::collections::HashSet<String>) {
        for id in self.lazy.ids() {
            if !wanted.contains(&id) && self.unlazy(&id, Which::Any) {
                self.fetching.lock().unwrap().remove(&id);
            }
        }
    }

    /// Stops restoring snapshot `id` lazily if its registration is `which`;
    /// returns whether it did (not if a newer registration is current).
    fn unlazy(&self, id: &str, which: Which) -> bool {
        let restorer = self.restorer.get();
        let left = self.lazy.unregister(id, which, || {
            if let Some(r) = restorer {
                r.clear_lazy(id);
            }
        });
        let Some(n) = left else { return false };
        if let Some(m) = self.metrics() {
            m.remote_lazy_snapshots.set(n as i64);
        }
        true
    }

    async fn open_lazily(self: &Arc<Self>, id: &str, on_change: OnChange) {
        let Some(restorer) = self.restorer.get().cloned() else {
            return self.pull(id, on_change).await;
        };
        let opened =
            remote_store::open_lazy(self.remote.clone(), id, id, Some(self.store.clone())).await;
        let lazy = match opened {
            Ok(lazy) => lazy,
            Err(e) => {
                if let remote_store::LazyError::Pull(p) = &e {
                    self.store_down_if_unreachable(p);
                }
                self.count_fetch(false);
                tracing::warn!(
                    snapshot = %id,
                    error = %format!("{:#}", anyhow::Error::from(e)),
                    "reading the snapshot from the shared store failed; cold starts boot until it is read"
                );
                self.fetching.lock().unwrap().remove(id);
                return;
            }
        };
        self.health.ok();
        // The host's files the copies map (the interpreter, system
        // libraries: the sandbox binds them from the host at the same
        // paths), hashed now rather than by the first copy's checks; the
        // code's are hashed when it is installed (follow.rs).
        if let Some(depends) = &lazy.snapshot.depends {
            let host: Vec<std::path::PathBuf> = depends
                .files
                .iter()
                .filter(|f| !f.path.starts_with("/var/"))
                .map(|f| std::path::PathBuf::from(&f.path))
                .collect();
            let id = id.to_string();
            let _ = tokio::task::spawn_blocking(move || {
                let started = std::time::Instant::now();
                let bytes = pool::restore::depends::warm_hashes(host, None);
                tracing::debug!(snapshot = %id, bytes, took_ms = started.elapsed().as_millis() as u64, "the snapshot's host files hashed ahead");
            })
            .await;
        }
        let report = lazy.source.report();
        self.lazy_bytes
            .opened(id, lazy.source.counter(), report.working_set_stored_pages);
        let source = lazy.source.clone();
        let snapshot = Arc::new(lazy.snapshot);
        let working_set = lazy.working_set;
        let registered = self.lazy.register(id, |generation| {
            let events = {
                let cluster = Arc::downgrade(self);
                let handle = tokio::runtime::Handle::current();
                let id = id.to_string();
                let on_change = on_change.clone();
                let source = source.clone();
                Arc::new(move |event: LazyEvent| {
                    if let Some(cluster) = cluster.upgrade() {
                        let lazy = Registered {
                            id: &id,
                            generation,
                            source: &source,
                            on_change: &on_change,
                        };
                        cluster.lazy_event(&handle, lazy, event);
                    }
                })
            };
            restorer.set_lazy(LazyOrigin {
                snapshot,
                working_set,
                source: source.clone() as Arc<dyn PageSource>,
                events,
            })
        });
        let n = match registered {
            Ok((_, n)) => n,
            Err(e) => {
                tracing::warn!(snapshot = %id, error = %e, "cannot restore lazily; fetching it whole");
                return self.pull(id, on_change).await;
            }
        };
        if let Some(m) = self.metrics() {
            m.remote_lazy_snapshots.set(n as i64);
        }
        tracing::info!(
            snapshot = %id,
            working_set_pages = report.working_set_pages,
            bytes_metadata = report.bytes_metadata,
            "cold starts restore the snapshot lazily from the shared store"
        );
        on_change(ForRestore::Lazy);
    }

    /// What a lazy copy made from registration `lazy` did (called from the
    /// restorer's and the page servers' threads).
    fn lazy_event(
        self: &Arc<Self>,
        handle: &tokio::runtime::Handle,
        lazy: Registered<'_>,
        event: LazyEvent,
    ) {
        let Registered {
            id,
            generation,
            source,
            on_change,
        } = lazy;
        let result = match &event {
            LazyEvent::Resumed => "ok",
            LazyEvent::FailedBeforeResume(_) => "boot",
            LazyEvent::Killed(_) => "killed",
        };
        if let Some(m) = self.metrics() {
            m.remote_lazy_restores
                .get_or_create(&ResultLabels {
                    result: result.into(),
                })
                .inc();
        }
        if matches!(event, LazyEvent::Resumed) {
            self.lazy_bytes.resumed(id);
        }
        let r = source.report();
        match event {
            LazyEvent::Resumed => {
                tracing::info!(
                    snapshot = %id,
                    pages_fetched = r.pages_fetched,
                    bytes_fetched = r.bytes_fetched,
                    ranges = r.ranges,
                    working_set_pages = r.working_set_pages,
                    working_set_stored_pages = r.working_set_stored_pages,
                    working_pack_pages = r.working_pack_pages,
                    "lazy restore: the copy resumed (pages from the shared store)"
                );
                if self.lazy.start_completion(id, generation) {
                    let (this, id) = (self.clone(), id.to_string());
                    let (source, on_change) = (source.clone(), on_change.clone());
                    handle.spawn(
                        async move { this.complete(&id, generation, source, on_change).await },
                    );
                }
            }
            LazyEvent::FailedBeforeResume(error) => {
                self.health.failed(&error);
                tracing::warn!(
                    snapshot = %id,
                    error,
                    "lazy restore: fetching failed before the copy resumed; the cold start boots, and so do later ones until the store answers"
                );
                // Only this registration's: a copy of an older one that
                // failed late leaves a newer one be.
                if self.unlazy(id, Which::Generation(generation)) {
                    self.fetching.lock().unwrap().remove(id);
                    on_change(ForRestore::Fetching);
                }
            }
            LazyEvent::Killed(error) => {
                self.health.failed(&error);
                tracing::error!(
                    snapshot = %id,
                    error,
                    "lazy restore: fetching failed after the copy resumed; the copy is killed"
                );
                // Later cold starts boot until the store answers, as after
                // a failure before a resume: with its working set local
                // (fetched by the copy before), the next lazy copy would
                // resume without the store and be killed at its first
                // fault.
                if self.unlazy(id, Which::Generation(generation)) {
                    self.fetching.lock().unwrap().remove(id);
                    on_change(ForRestore::Fetching);
                }
            }
        }
        self.export();
    }

    /// The rest of snapshot `id` into the local store, after a copy made
    /// from its registration `generation` resumed; then cold starts
    /// restore it locally. A failed attempt is tried again after a backoff
    /// (not while the store is down), until one succeeds or the
    /// registration is gone (dropped after a failed fetch, or replaced).
    async fn complete(
        self: &Arc<Self>,
        id: &str,
        generation: u64,
        source: Arc<LazySource>,
        on_change: OnChange,
    ) {
        let mut attempt = 0u32;
        loop {
            if attempt > 0 {
                tokio::time::sleep(completion_backoff(attempt)).await;
                if !self.lazy.is_current(id, generation) {
                    tracing::info!(
                        snapshot = %id,
                        attempts = attempt,
                        "no more retries of the completion: the snapshot is not restored lazily from that registration any more"
                    );
                    return;
                }
                if !self.health.is_up() {
                    // Not an attempt: the store must answer first (the
                    // follower asks it every second).
                    continue;
                }
            }
            let result = {
                let _one = PULLS.lock().await;
                let local = crate::remote::pull_target(self.store.clone(), &self.snapshots_dir, id);
                source.complete(&local).await
            };
            let ok = result.is_ok();
            if attempt > 0 {
                self.count_completion_retry(ok);
            }
            // Counted once cold starts restore it locally (tests wait on it).
            match result {
                Ok(r) => {
                    self.health.ok();
                    // The cache's check runs (cache.rs); this one is newest.
                    self.cache.fetched(id);
                    tracing::info!(
                        snapshot = %id,
                        pages = r.pages,
                        pages_fetched = r.pages_fetched,
                        bytes_fetched = r.bytes_fetched,
                        retries = attempt,
                        "snapshot complete locally; cold starts restore it in the configured mode"
                    );
                    // Whichever registration is current: it is local now.
                    self.unlazy(id, Which::Any);
                    self.fetching.lock().unwrap().remove(id);
                    on_change(ForRestore::Local);
                }
                Err(e) => {
                    self.store_down_if_unreachable(&e);
                    attempt = attempt.saturating_add(1);
                    tracing::warn!(
                        snapshot = %id,
                        error = %format!("{:#}", anyhow::Error::from(e)),
                        retry_in_secs = completion_backoff(attempt).as_secs(),
                        "completing the snapshot locally failed; cold starts keep restoring it lazily, and the completion is tried again"
                    );
                }
            }
            self.count_fetch(ok);
            self.export();
            if ok {
                return;
            }
        }
    }

    fn count_completion_retry(&self, ok: bool) {
        if let Some(m) = self.metrics() {
            m.remote_completion_retries
                .get_or_create(&ResultLabels {
                    result: if ok { "ok" } else { "error" }.into(),
                })
                .inc();
        }
    }

    /// A pull that failed because the store did not answer (not because an
    /// object was damaged or missing) marks the store down in `/healthz`.
    fn store_down_if_unreachable(&self, e: &remote_store::PullError) {
        if matches!(
            e,
            remote_store::PullError::Object(remote_store::ObjectError::Request { .. })
        ) {
            self.health.failed(&format!("{e:#}"));
        }
    }

    /// Downloads snapshot `id` whole while cold starts boot.
    async fn pull(self: &Arc<Self>, id: &str, on_change: OnChange) {
        let result = {
            let _one = PULLS.lock().await;
            let local = crate::remote::pull_target(self.store.clone(), &self.snapshots_dir, id);
            remote_store::pull_snapshot(&self.remote, id, &local).await
        };
        self.fetching.lock().unwrap().remove(id);
        self.count_fetch(result.is_ok());
        match result {
            Ok(r) => {
                self.health.ok();
                // The cache's check runs (cache.rs); this one is newest.
                self.cache.fetched(id);
                tracing::info!(
                    snapshot = %id,
                    pages = r.pages,
                    pages_fetched = r.pages_fetched,
                    bytes_fetched = r.bytes_fetched,
                    ranges = r.ranges,
                    "snapshot fetched from the shared store; cold starts restore it"
                );
                on_change(ForRestore::Local);
            }
            Err(e) => {
                self.store_down_if_unreachable(&e);
                tracing::warn!(
                    snapshot = %id,
                    error = %format!("{e:#}"),
                    "fetching the snapshot failed; cold starts boot until it is local"
                );
            }
        }
    }

    fn count_fetch(&self, ok: bool) {
        if let Some(m) = self.metrics() {
            m.remote_fetches
                .get_or_create(&ResultLabels {
                    result: if ok { "ok" } else { "error" }.into(),
                })
                .inc();
        }
    }
}
