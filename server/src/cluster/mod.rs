//! Nodes that share one store (docs/cluster.md): one writer, readers that
//! follow it.
//!
//! ```text
//! writer (--store-writer)                    bucket (Kind::Function)          reader
//!   deploys, deletes, warms, captures,  --->  #catalog  every record        <--- GET #writer every second;
//!   uploads (remote::Uploader)                #writer   url, generation,          on a new generation GET
//!   every 200 ms: records changed?                      heartbeat                 #catalog and apply it:
//!     code tars, #catalog, #writer                                                code tars, records, deletes,
//!   every 2 s: #writer (heartbeat)                                                snapshots pulled (fetch.rs)
//! ```
//!
//! The catalog is the truth about which functions exist: a function the
//! writer deleted is absent from it (the tombstone), and a reader drops it.
//! Deploys and deletes a reader receives are forwarded to the writer the
//! `#writer` object names (forward.rs). `min_instances`, spares and the
//! memory budget stay per node: each node's pool keeps its own.
//!
//! `#catalog` and `#writer` are addressed like function records, with names
//! no function can have (`valid_name` refuses `#`).

pub mod cache;
pub mod catalog;
pub mod fetch;
pub mod follow;
pub mod forward;
pub mod gc;
pub mod layers;
pub mod lazy_bytes;
pub mod lazy_registrations;
pub mod publish;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use remote_store::RemoteStore;
use snapshotter::store::PageStore;

use crate::metrics::Metrics;

pub use catalog::{Catalog, WriterObject};
pub use fetch::ForRestore;

/// This node's part, from the settings.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// `store_writer`.
    pub writer: bool,
    /// `advertise_url` (no trailing slash).
    pub advertise_url: Option<String>,
    /// `store_gc_grace_secs`: the bucket's gc keeps younger garbage.
    pub gc_grace: std::time::Duration,
    /// `store_cache_mb` in bytes: the local store's cap (`None`: no cap).
    pub cache_cap: Option<u64>,
}

impl Default for ClusterOptions {
    fn default() -> ClusterOptions {
        ClusterOptions {
            writer: false,
            advertise_url: None,
            gc_grace: gc::DEFAULT_GRACE,
            cache_cap: None,
        }
    }
}

/// Whether the shared store answers, as this node last saw it.
#[derive(Debug, Default)]
pub struct StoreHealth {
    seen: AtomicBool,
    down: AtomicBool,
    last_ok_ms: AtomicU64,
    last_error: Mutex<Option<String>>,
}

impl StoreHealth {
    /// A request was answered. Returns whether the store was down before.
    pub fn ok(&self) -> bool {
        self.seen.store(true, Ordering::Relaxed);
        self.last_ok_ms
            .store(crate::service::now_ms(), Ordering::Relaxed);
        let was_down = self.down.swap(false, Ordering::Relaxed);
        if was_down {
            tracing::info!("the shared store answers again");
        }
        was_down
    }

    /// A request failed.
    pub fn failed(&self, error: &str) {
        self.seen.store(true, Ordering::Relaxed);
        if !self.down.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                error,
                "the shared store does not answer: local snapshots restore, the rest boots"
            );
        }
        *self.last_error.lock().unwrap() = Some(error.to_string());
    }

    /// Up, unless the last request failed.
    pub fn is_up(&self) -> bool {
        !self.down.load(Ordering::Relaxed)
    }

    /// Unix time of the last answered request, ms (0: none yet).
    pub fn last_ok_ms(&self) -> u64 {
        self.last_ok_ms.load(Ordering::Relaxed)
    }

    /// The last error, while down.
    pub fn last_error(&self) -> Option<String> {
        if self.is_up() {
            None
        } else {
            self.last_error.lock().unwrap().clone()
        }
    }
}

/// This node among the nodes sharing the store.
#[derive(Debug)]
pub struct Cluster {
    options: ClusterOptions,
    remote: Arc<RemoteStore>,
    store: Arc<PageStore>,
    snapshots_dir: PathBuf,
    /// Whether the store answers.
    pub health: StoreHealth,
    /// The writer as last published (a reader's view; a writer's own).
    writer: Mutex<Option<WriterObject>>,
    fetching: Mutex<std::collections::HashSet<String>>,
    /// Snapshots restored lazily now, and their completions (fetch.rs).
    lazy: lazy_registrations::LazyRegistrations,
    /// What lazy restores fetched, for the metrics.
    lazy_bytes: lazy_bytes::LazyTally,
    /// The pool's restorer (lazy restores go through it).
    restorer: OnceLock<pool::instance::Restorer>,
    metrics: OnceLock<Arc<Metrics>>,
    http: reqwest::Client,
    /// `THAW_TOKEN`: sent with a forwarded request that came without one.
    token: Option<Token>,
    /// The local store as a cache (`store_cache_mb`).
    pub cache: cache::Cache,
}

/// A token that never shows in `Debug` output.
#[derive(Clone)]
struct Token(String);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(..)")
    }
}

impl Cluster {
    /// A node of the store `remote`, with its local page store.
    pub fn new(
        options: ClusterOptions,
        remote: Arc<RemoteStore>,
        store: Arc<PageStore>,
        data_dir: &Path,
    ) -> Arc<Cluster> {
        Arc::new(Cluster {
            options,
            remote,
            store,
            snapshots_dir: crate::snapshots::snapshots_dir(data_dir),
            health: StoreHealth::default(),
            writer: Mutex::new(None),
            fetching: Default::default(),
            lazy: Default::default(),
            lazy_bytes: Default::default(),
            restorer: OnceLock::new(),
            metrics: OnceLock::new(),
            http: reqwest::Client::builder()
                .connect_timeout(std::time::Duration::from_secs(3))
                .timeout(std::time::Duration::from_secs(60))
                .build()
                .expect("an HTTP client"),
            token: std::env::var("THAW_TOKEN")
                .ok()
                .map(|t| t.trim().to_string())
                .filter(|t| !t.is_empty())
                .map(Token),
            cache: cache::Cache::default(),
        })
    }

    /// Whether this node is the writer.
    pub fn is_writer(&self) -> bool {
        self.options.writer
    }

    /// The store.
    pub fn remote(&self) -> &Arc<RemoteStore> {
        &self.remote
    }

    /// The writer as last seen.
    pub fn writer(&self) -> Option<WriterObject> {
        self.writer.lock().unwrap().clone()
    }

    fn metrics(&self) -> Option<&Arc<Metrics>> {
        self.metrics.get()
    }

    /// Copies the store's state into the metrics (each loop pass, and
    /// before a scrape so that `/metrics` agrees with `/healthz`).
    pub fn export(&self) {
        if let Some(m) = self.metrics() {
            m.remote_store_up.set(i64::from(self.health.is_up()));
            m.remote_store_last_success
                .set((self.health.last_ok_ms() / 1000) as i64);
            let t = self.remote.transfers();
            m.remote_bytes_fetched.set(t.bytes_fetched as i64);
            m.remote_bytes_sent.set(t.bytes_sent as i64);
            let lazy = self.lazy_bytes.totals();
            m.remote_lazy_fetched_before_resume
                .set(lazy.before_resume as i64);
            m.remote_lazy_fetched_after_resume
                .set(lazy.after_resume as i64);
            m.remote_lazy_working_set_bytes.set(lazy.working_set as i64);
        }
    }

    /// Starts the writer's publisher or the reader's follower.
    pub fn start(self: &Arc<Self>, service: crate::service::Service, listen_url: String) {
        let _ = self.metrics.set(service.metrics.clone());
        if let Some(r) = service.pool.restorer() {
            let _ = self.restorer.set(r.clone());
        }
        self.export();
        if self.is_writer() {
            let url = match self.options.advertise_url.clone() {
                Some(url) => url,
                None => {
                    if listen_url.contains("://0.0.0.0:") || listen_url.contains("://[::]:") {
                        tracing::warn!(
                            url = %listen_url,
                            "the writer listens on every address and advertises one no other node can use: set advertise_url"
                        );
                    }
                    listen_url
                }
            };
            publish::spawn(self.clone(), service.clone(), url);
            gc::spawn(self.clone(), service.clone());
        } else {
            follow::spawn(self.clone(), service.clone());
        }
        cache::spawn(self.clone(), service);
    }

    /// What `/healthz` adds: role, store state, the writer seen; with
    /// `details`, the store's URL, its last error and the writer's URL.
    pub fn health_text(&self, details: bool) -> String {
        let mut out = format!(
            "role: {}\n",
            if self.is_writer() { "writer" } else { "reader" }
        );
        let now = crate::service::now_ms();
        let last = self.health.last_ok_ms();
        let ago = if last == 0 {
            "never".to_string()
        } else {
            format!("{:.1} s ago", now.saturating_sub(last) as f64 / 1000.0)
        };
        let url = if details {
            format!("{}, ", self.remote.url())
        } else {
            String::new()
        };
        match self.health.last_error() {
            None => out += &format!("store: up ({url}last answer {ago})\n"),
            Some(e) => {
                let e = if details {
                    format!(": {e}")
                } else {
                    String::new()
                };
                out += &format!(
                    "store: down ({url}last answer {ago}){e}; local snapshots restore, the rest boots\n"
                )
            }
        }
        if !self.is_writer() && details {
            match self.writer() {
                Some(w) => {
                    out += &format!(
                        "writer: {} (heartbeat {:.1} s ago, generation {})\n",
                        w.url,
                        now.saturating_sub(w.heartbeat_ms) as f64 / 1000.0,
                        w.generation
                    )
                }
                None => out += "writer: none seen\n",
            }
        }
        out
    }
}

/// On a reader: failed restores are logged and the copy boots (the pool
/// does that); the snapshot stays the writer's, and no rebuild runs here.
pub fn drain_restore_failures(
    mut rx: tokio::sync::mpsc::UnboundedReceiver<(pool::FunctionKey, String, String)>,
) {
    tokio::spawn(async move {
        while let Some((key, snapshot, reason)) = rx.recv().await {
            tracing::warn!(
                function = %key.name,
                version = key.version,
                snapshot,
                reason,
                "restoring the writer's snapshot failed on this reader; the copy booted"
            );
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_health_tells_down_from_up_and_when_it_came_back() {
        let h = StoreHealth::default();
        assert!(h.is_up() && h.last_error().is_none() && h.last_ok_ms() == 0);
        assert!(!h.ok(), "up from the start: not a return");
        h.failed("connection refused");
        assert!(!h.is_up());
        assert_eq!(h.last_error().as_deref(), Some("connection refused"));
        h.failed("timed out");
        assert_eq!(h.last_error().as_deref(), Some("timed out"));
        assert!(h.ok(), "back after being down");
        assert!(h.is_up() && h.last_error().is_none() && h.last_ok_ms() > 0);
        assert!(!h.ok());
    }
}
