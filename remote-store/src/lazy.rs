//! Lazy restore from the bucket (issue 18): a page source for the `uffd`
//! page server ([`pool::restore::page_source`]) that fetches the pages a
//! node lacks by ranged reads of packs, as the restore and the copy need
//! them, and keeps what it fetched in the local store as a cache.
//!
//! ```text
//! open_lazy   GET snapshots/<name> (manifest + page locations, the
//!             working-set packs), GET workingsets/<name> (the pages to
//!             fetch first, if any)
//! fetch(pages)  each page from the snapshot's working-set pack if it is
//!             there (the pages needed before the resume, contiguous: a
//!             few reads of up to RANGE_SLOTS slots; unless
//!             THAW_LAZY_WORKING_PACK=0), else from the shared pack the
//!             page locations name;
//!             grouped by pack, runs of slots merged when at most
//!             LAZY_GAP unneeded slots lie between (so at most twice the
//!             bytes wanted are read; in a working-set pack
//!             WORKING_PACK_GAP: its slots are all pages needed before the
//!             resume, the unneeded ones those the node holds already),
//!             RANGES_IN_FLIGHT ranged GETs at once, every slot decrypted and its page rehashed; the pages go
//!             back to the page server and, on another thread, into the
//!             local store (a writer commit per batch of CACHE_BATCH pages
//!             or after CACHE_IDLE without pages: durable, atomic)
//! complete    after the copy resumed: the rest of the snapshot pulled
//!             into the local store (pull_snapshot: only what it lacks),
//!             root, manifest and working set written, so later copies
//!             restore locally in the configured mode
//! ```
//!
//! The source runs its own small tokio runtime: the page server's thread
//! and the restorer call [`LazySource::fetch`] synchronously, from inside
//! an async runtime or not.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{stream, StreamExt, TryStreamExt};
use pool::restore::page_source::{PageSource, PageSourceError};
use snapshotter::snapshot::{parse_snapshot, Snapshot};
use snapshotter::store::{PageHash, PageStore, PAGE_SIZE};

use crate::bucket::RemoteStore;
use crate::key::Kind;
use crate::local::LocalSnapshot;
use crate::manifest::RemoteSnapshot;
use crate::pull::{fetch_range, pull_snapshot, ranges, PullError, PullReport};
use crate::seal;

/// Unneeded slots read rather than starting another request: 1 keeps the
/// bytes read at most twice the bytes wanted.
pub const LAZY_GAP: u32 = 1;
/// Unneeded slots of a working-set pack read rather than starting another
/// request (`THAW_LAZY_WORKING_PACK_GAP=N` sets it; 1 is the old way).
/// Every slot of that pack is a page the restore needs before the resume:
/// the unneeded ones are pages the node's store holds already (another
/// snapshot's, brought by its completion), so a read never holds a page
/// that is not the snapshot's, and the bytes read stay at most the pack's.
/// Against Garage a ranged read costs ~3 ms whatever its size up to a few
/// hundred KiB (2026-12-07, docs/cluster.md): numpy-pandas's first fetch
/// took 22 reads where the pack alone needs 7.
pub const WORKING_PACK_GAP: u32 = 16;

/// [`WORKING_PACK_GAP`], or `THAW_LAZY_WORKING_PACK_GAP` when it is a
/// count of slots from 1 to 256.
fn working_pack_gap() -> u32 {
    static VALUE: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *VALUE.get_or_init(|| {
        std::env::var("THAW_LAZY_WORKING_PACK_GAP")
            .ok()
            .and_then(|v| v.parse().ok())
            .filter(|n| (1..=256).contains(n))
            .unwrap_or(WORKING_PACK_GAP)
    })
}

/// Ranged reads at once per fetch.
pub const RANGES_IN_FLIGHT: usize = 16;
/// Longest a fetch may take (the client's retries included) before it
/// fails: the copy waiting on a fault is killed rather than hung.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(20);
/// Pages gathered before the cache writes them into the local store (it
/// writes sooner when no page came for [`CACHE_IDLE`]): a burst of fetches
/// before a resume is not slowed by hashing and syncing on the side.
const CACHE_BATCH: usize = 8192;
/// Quiet time after which the cache writes what it gathered.
const CACHE_IDLE: Duration = Duration::from_millis(200);
/// The completion starts once no page was fetched for this long (the
/// copy is done with its first invocation's faults), or after
/// [`COMPLETE_WAIT_MAX`]: pulling the rest of the snapshot (140 MB for
/// numpy-pandas: reads, decryption, hashing, writes) took the machine's
/// cores from that invocation's faults and its code when it started at the
/// resume.
pub const COMPLETE_QUIET: Duration = Duration::from_millis(150);
/// The longest the completion waits for [`COMPLETE_QUIET`].
pub const COMPLETE_WAIT_MAX: Duration = Duration::from_secs(3);
/// `THAW_LAZY_COMPLETE_AT_ONCE=1`: the completion starts at once, as
/// before 2026-12-06 (the A/B's old arm).
pub const ENV_COMPLETE_AT_ONCE: &str = "THAW_LAZY_COMPLETE_AT_ONCE";
/// `THAW_LAZY_WORKING_PACK=0`: the snapshot's working-set packs are not
/// read; every page comes from the shared packs, as before 2026-12-07 (the
/// A/B's old arm).
pub const ENV_WORKING_PACK: &str = "THAW_LAZY_WORKING_PACK";

/// Why a lazy restore could not start.
#[derive(Debug, thiserror::Error)]
pub enum LazyError {
    /// The snapshot or its working set could not be read.
    #[error(transparent)]
    Pull(#[from] PullError),
    /// The working set in the bucket is not usable.
    #[error("the working set of snapshot {id} in the bucket: {source}")]
    WorkingSet {
        /// The remote id.
        id: String,
        /// Why.
        #[source]
        source: pool::restore::working_set::WorkingSetError,
    },
    /// The source's runtime could not start.
    #[error("starting the fetch runtime: {0}")]
    Runtime(#[source] std::io::Error),
}

/// What a lazy restore fetched (the server turns it into metrics).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LazyReport {
    /// Pages fetched from packs (and verified).
    pub pages_fetched: u64,
    /// Ranged reads of packs.
    pub ranges: u64,
    /// Bytes of those reads (sealed slots).
    pub bytes_fetched: u64,
    /// Bytes of the snapshot object and the working set.
    pub bytes_metadata: u64,
    /// Calls of `fetch` (one per fault-around run, one for the working
    /// set, one for the pages of areas the page server does not fill).
    pub fetches: u64,
    /// Pages the working set lists (0: none recorded).
    pub working_set_pages: u64,
    /// Of those, the pages the bucket holds (stored pages of the snapshot,
    /// not zero pages nor pages of mapped files the node has): what
    /// fetching the working set costs ([`stored_pages`]).
    pub working_set_stored_pages: u64,
    /// Pages the snapshot's working-set packs hold, when they are read (0:
    /// none in the bucket, or [`ENV_WORKING_PACK`] is `0`).
    pub working_pack_pages: u64,
}

/// How many of `working_set`'s pages (saved addresses, tags in the low
/// bits) are stored pages of `snapshot` (in the bucket), counted once each.
pub fn stored_pages(snapshot: &Snapshot, working_set: &[u64]) -> u64 {
    use snapshotter::store::PageSlot;
    let mut wanted: Vec<u64> = working_set
        .iter()
        .map(|p| p & !(PAGE_SIZE as u64 - 1))
        .collect();
    wanted.sort_unstable();
    wanted.dedup();
    let mut stored = 0;
    for (state, areas) in snapshot.processes() {
        for (area, pages) in state.areas.iter().zip(areas) {
            let from = wanted.partition_point(|&p| p < area.start);
            let to = wanted.partition_point(|&p| p < area.end);
            if from == to {
                continue;
            }
            let slots: Vec<PageSlot> = pages.iter().collect();
            stored += wanted[from..to]
                .iter()
                .filter(|&&p| {
                    let i = ((p - area.start) / PAGE_SIZE as u64) as usize;
                    matches!(slots.get(i), Some(PageSlot::Hash(_)))
                })
                .count() as u64;
        }
    }
    stored
}

/// A handle on a [`LazySource`]'s counters that does not keep the source
/// (its runtime and cache thread) alive: for metrics read after the copies
/// that used it ended.
#[derive(Clone, Debug)]
pub struct LazyCounter(Arc<Counts>);

impl LazyCounter {
    /// Bytes of ranged reads of packs made so far (sealed slots).
    pub fn bytes_fetched(&self) -> u64 {
        self.0.bytes.load(Ordering::Relaxed)
    }
}

/// One ranged read's wanted (slot, hash) and their pages back to back.
type FetchedRange = (Vec<(u32, PageHash)>, Vec<u8>);

#[derive(Debug, Default)]
struct Counts {
    pages: AtomicU64,
    ranges: AtomicU64,
    bytes: AtomicU64,
    fetches: AtomicU64,
}

/// Whether the source is fetching, and when it last was.
#[derive(Debug)]
struct Activity {
    in_flight: AtomicU64,
    last_end: std::sync::Mutex<tokio::time::Instant>,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            in_flight: AtomicU64::new(0),
            last_end: std::sync::Mutex::new(tokio::time::Instant::now()),
        }
    }

    /// Counts a fetch until the guard is dropped.
    fn fetching(&self) -> FetchGuard<'_> {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        FetchGuard(self)
    }

    /// How long no fetch ran (zero while one does).
    fn quiet_for(&self) -> Duration {
        let last = *self.last_end.lock().unwrap_or_else(|e| e.into_inner());
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return Duration::ZERO;
        }
        tokio::time::Instant::now().saturating_duration_since(last)
    }
}

/// A fetch under way ([`Activity::fetching`]).
struct FetchGuard<'a>(&'a Activity);

impl Drop for FetchGuard<'_> {
    fn drop(&mut self) {
        *self.0.last_end.lock().unwrap_or_else(|e| e.into_inner()) = tokio::time::Instant::now();
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Waits until `activity` was quiet for `quiet` (or `longest` passed);
/// returns how long it waited.
async fn wait_quiet(activity: &Activity, quiet: Duration, longest: Duration) -> Duration {
    let started = tokio::time::Instant::now();
    loop {
        let quiet_for = activity.quiet_for();
        let waited = started.elapsed();
        if quiet_for >= quiet || waited >= longest {
            return waited;
        }
        let step = (quiet - quiet_for).clamp(Duration::from_millis(5), quiet);
        tokio::time::sleep(step.min(longest - waited)).await;
    }
}

/// A snapshot in the bucket, ready to restore lazily.
#[derive(Debug)]
pub struct LazySnapshot {
    /// The snapshot (its id is the local one given to [`open_lazy`]).
    pub snapshot: Snapshot,
    /// Its working set (saved page addresses), empty when none is
    /// recorded: pass it as the restore's `prefetch`.
    pub working_set: Vec<u64>,
    /// The page source to restore it with.
    pub source: Arc<LazySource>,
}

/// Reads snapshot `remote_id` from the bucket (manifest, page locations,
/// working set) and makes its page source; fetched pages are also written
/// into `cache` (the local store), if given.
pub async fn open_lazy(
    remote: Arc<RemoteStore>,
    remote_id: &str,
    local_id: &str,
    cache: Option<Arc<PageStore>>,
) -> Result<LazySnapshot, LazyError> {
    let before = remote.transfers();
    let invalid = |what: String| PullError::Invalid {
        id: remote_id.to_string(),
        what,
    };
    let bytes = remote
        .get_blob(Kind::Snapshot, remote_id.as_bytes())
        .await
        .map_err(PullError::from)?
        .ok_or_else(|| PullError::NotInBucket {
            id: remote_id.to_string(),
            url: remote.url().to_string(),
        })?;
    let object = RemoteSnapshot::decode(&bytes).map_err(&invalid)?;
    let name = remote.describe(
        Kind::Snapshot,
        &remote.name(Kind::Snapshot, remote_id.as_bytes()),
    );
    let mut snapshot = parse_snapshot(
        &object.manifest,
        &object.manifest_id,
        std::path::Path::new(&name),
    )
    .map_err(|e| invalid(e.to_string()))?;
    snapshot.id = local_id.to_string();
    let working_set: Vec<u64> = match remote
        .get_blob(Kind::WorkingSet, remote_id.as_bytes())
        .await
        .map_err(PullError::from)?
    {
        Some(ws) => pool::restore::working_set::decode(
            &ws,
            std::path::Path::new(&remote.describe(
                Kind::WorkingSet,
                &remote.name(Kind::WorkingSet, remote_id.as_bytes()),
            )),
        )
        .map_err(|source| LazyError::WorkingSet {
            id: remote_id.to_string(),
            source,
        })?,
        None => Vec::new(),
    };
    let metadata = remote.transfers().bytes_fetched - before.bytes_fetched;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("thaw-lazy-fetch")
        .enable_all()
        .build()
        .map_err(LazyError::Runtime)?;
    let mut locations: HashMap<PageHash, (u32, u32)> = object
        .pages
        .iter()
        .map(|p| (PageHash(p.hash), (p.pack, p.slot)))
        .collect();
    // The packs a fetch reads: the shared ones, then the working-set
    // packs; a page found in a working-set pack is read there.
    let mut packs: Vec<(Kind, String)> = object
        .packs
        .iter()
        .map(|name| (Kind::Pack, name.clone()))
        .collect();
    let mut working_pack_pages = 0;
    if std::env::var(ENV_WORKING_PACK).as_deref() != Ok("0") {
        for w in &object.working_packs {
            let pack = packs.len() as u32;
            packs.push((Kind::WorkingPack, w.name.clone()));
            for (slot, hash) in w.pages.iter().enumerate() {
                if let Some(at) = locations.get_mut(&PageHash(*hash)) {
                    *at = (pack, slot as u32);
                    working_pack_pages += 1;
                }
            }
        }
    }
    let source = LazySource {
        remote,
        runtime: Some(runtime),
        remote_id: remote_id.to_string(),
        packs: Arc::new(packs),
        locations,
        cache: cache.map(Cache::start),
        counts: Arc::default(),
        activity: Activity::new(),
        bytes_metadata: metadata,
        working_set_pages: working_set.len() as u64,
        working_set_stored_pages: stored_pages(&snapshot, &working_set),
        working_pack_pages,
    };
    Ok(LazySnapshot {
        snapshot,
        working_set,
        source: Arc::new(source),
    })
}

/// The page source of a lazy restore from the bucket (see the module doc).
#[derive(Debug)]
pub struct LazySource {
    remote: Arc<RemoteStore>,
    /// Taken on drop (shut down without waiting: dropping a runtime inside
    /// another one's context would panic).
    runtime: Option<tokio::runtime::Runtime>,
    remote_id: String,
    /// The packs `locations` name, with their kind.
    packs: Arc<Vec<(Kind, String)>>,
    locations: HashMap<PageHash, (u32, u32)>,
    cache: Option<Cache>,
    counts: Arc<Counts>,
    activity: Activity,
    bytes_metadata: u64,
    working_set_pages: u64,
    working_set_stored_pages: u64,
    working_pack_pages: u64,
}

impl LazySource {
    /// What was fetched so far.
    pub fn report(&self) -> LazyReport {
        LazyReport {
            pages_fetched: self.counts.pages.load(Ordering::Relaxed),
            ranges: self.counts.ranges.load(Ordering::Relaxed),
            bytes_fetched: self.counts.bytes.load(Ordering::Relaxed),
            bytes_metadata: self.bytes_metadata,
            fetches: self.counts.fetches.load(Ordering::Relaxed),
            working_set_pages: self.working_set_pages,
            working_set_stored_pages: self.working_set_stored_pages,
            working_pack_pages: self.working_pack_pages,
        }
    }

    /// Its counters, apart from it (see [`LazyCounter`]).
    pub fn counter(&self) -> LazyCounter {
        LazyCounter(self.counts.clone())
    }

    /// The rest of the snapshot into `local` (waiting for the cache to
    /// write what was fetched first, so it is not fetched again): after
    /// this, `local` holds the snapshot whole (root, manifest, working
    /// set) and restores it without the bucket.
    ///
    /// It starts once the source fetched nothing for [`COMPLETE_QUIET`]
    /// (at most [`COMPLETE_WAIT_MAX`] later), unless
    /// [`ENV_COMPLETE_AT_ONCE`] is `1`.
    pub async fn complete(&self, local: &LocalSnapshot) -> Result<PullReport, PullError> {
        if std::env::var(ENV_COMPLETE_AT_ONCE).as_deref() != Ok("1") {
            let waited = wait_quiet(&self.activity, COMPLETE_QUIET, COMPLETE_WAIT_MAX).await;
            tracing::debug!(
                remote = %self.remote_id,
                waited_us = waited.as_micros() as u64,
                "the completion starts: no page fetched for a while"
            );
        }
        if let Some(cache) = &self.cache {
            let cache = cache.sender();
            tokio::task::spawn_blocking(move || Cache::flush_with(&cache))
                .await
                .map_err(|e| PullError::Task(e.to_string()))?;
        }
        local
            .store
            .refresh()
            .map_err(|e| PullError::Task(format!("reloading the local store: {e}")))?;
        pull_snapshot(&self.remote, &self.remote_id, local).await
    }

    async fn fetch_async(
        remote: Arc<RemoteStore>,
        packs: Arc<Vec<(Kind, String)>>,
        by_pack: BTreeMap<u32, Vec<(u32, PageHash)>>,
    ) -> Result<(Vec<FetchedRange>, u64, u64), PullError> {
        let (working, shared): (BTreeMap<_, _>, BTreeMap<_, _>) = by_pack
            .into_iter()
            .partition(|(pack, _)| packs[*pack as usize].0 == Kind::WorkingPack);
        let mut reads = ranges(shared, LAZY_GAP);
        reads.extend(ranges(working, working_pack_gap()));
        let count = reads.len() as u64;
        let bytes: u64 = reads
            .iter()
            .map(|r| {
                let s = seal::slot_range(r.first, r.end);
                s.end - s.start
            })
            .sum();
        let fetched: Vec<FetchedRange> = stream::iter(reads)
            .map(|range| {
                let remote = remote.clone();
                let packs = packs.clone();
                async move {
                    let (kind, name) = &packs[range.pack as usize];
                    let (_, pages) = fetch_range(&remote, *kind, name, &range).await?;
                    Ok::<_, PullError>((range.wanted, pages))
                }
            })
            .buffer_unordered(RANGES_IN_FLIGHT)
            .try_collect()
            .await?;
        Ok((fetched, count, bytes))
    }
}

impl Drop for LazySource {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

impl PageSource for LazySource {
    fn fetch(&self, hashes: &[PageHash]) -> Result<Vec<u8>, PageSourceError> {
        let err = |e: PullError| PageSourceError(Box::new(e));
        let _fetching = self.activity.fetching();
        let mut by_pack: BTreeMap<u32, Vec<(u32, PageHash)>> = BTreeMap::new();
        let mut distinct = hashes.to_vec();
        distinct.sort_unstable();
        distinct.dedup();
        for hash in &distinct {
            let (pack, slot) = *self.locations.get(hash).ok_or_else(|| {
                err(PullError::Invalid {
                    id: self.remote_id.clone(),
                    what: format!("page {hash} has no location"),
                })
            })?;
            by_pack.entry(pack).or_default().push((slot, *hash));
        }
        let runtime = self
            .runtime
            .as_ref()
            .expect("the runtime lives until the source is dropped");
        let started = std::time::Instant::now();
        let (tx, rx) = std::sync::mpsc::channel();
        let job = Self::fetch_async(self.remote.clone(), self.packs.clone(), by_pack);
        let remote_id = self.remote_id.clone();
        runtime.spawn(async move {
            let result = match tokio::time::timeout(FETCH_TIMEOUT, job).await {
                Ok(r) => r,
                Err(_) => Err(PullError::Task(format!(
                    "fetching pages of snapshot {remote_id} took more than {} s",
                    FETCH_TIMEOUT.as_secs()
                ))),
            };
            let _ = tx.send(result);
        });
        let (fetched, ranges, bytes) = rx
            .recv()
            .map_err(|_| err(PullError::Task("the fetch runtime stopped".into())))?
            .map_err(err)?;
        let fetch_us = started.elapsed().as_micros() as u64;
        let pages: usize = fetched.iter().map(|(wanted, _)| wanted.len()).sum();
        self.counts.ranges.fetch_add(ranges, Ordering::Relaxed);
        self.counts.bytes.fetch_add(bytes, Ordering::Relaxed);
        self.counts.fetches.fetch_add(1, Ordering::Relaxed);
        self.counts.pages.fetch_add(pages as u64, Ordering::Relaxed);
        // Each page where its read holds it (read, page), copied once into
        // the answer; the reads themselves go to the cache as they are.
        let mut at: HashMap<PageHash, (usize, usize)> = HashMap::with_capacity(pages);
        for (r, (wanted, _)) in fetched.iter().enumerate() {
            for (n, (_, hash)) in wanted.iter().enumerate() {
                at.insert(*hash, (r, n * PAGE_SIZE));
            }
        }
        let mut out = Vec::with_capacity(hashes.len() * PAGE_SIZE);
        for hash in hashes {
            let (r, offset) = at[hash];
            out.extend_from_slice(&fetched[r].1[offset..offset + PAGE_SIZE]);
        }
        if let Some(cache) = &self.cache {
            for (_, pages) in fetched {
                cache.put(pages);
            }
        }
        tracing::debug!(
            pages = hashes.len(),
            ranges,
            bytes,
            fetch_us,
            total_us = started.elapsed().as_micros() as u64,
            "pages fetched"
        );
        Ok(out)
    }
}

enum CacheMessage {
    Pages(Vec<u8>),
    Flush(std::sync::mpsc::Sender<()>),
}

/// A thread writing fetched pages into the local store, in batches (a
/// store writer each: new pages in a pack, made durable and indexed
/// atomically by its commit). A cache: a write that fails is logged, never
/// an error of the restore.
#[derive(Debug)]
struct Cache {
    tx: std::sync::Mutex<std::sync::mpsc::Sender<CacheMessage>>,
}

impl Cache {
    fn start(store: Arc<PageStore>) -> Cache {
        let (tx, rx) = std::sync::mpsc::channel::<CacheMessage>();
        std::thread::Builder::new()
            .name("thaw-lazy-cache".into())
            .spawn(move || {
                let mut pending: Vec<u8> = Vec::new();
                let write = |pending: &mut Vec<u8>| {
                    if pending.is_empty() {
                        return;
                    }
                    let result = store.writer().map_err(|e| e.to_string()).and_then(|mut w| {
                        w.put_batch(pending).map_err(|e| e.to_string())?;
                        w.commit().map_err(|e| e.to_string())
                    });
                    if let Err(err) = result {
                        tracing::warn!(%err, "could not keep fetched pages in the local store");
                    }
                    pending.clear();
                };
                loop {
                    match rx.recv_timeout(CACHE_IDLE) {
                        Ok(CacheMessage::Pages(p)) => {
                            pending.extend_from_slice(&p);
                            if pending.len() >= CACHE_BATCH * PAGE_SIZE {
                                write(&mut pending);
                            }
                        }
                        Ok(CacheMessage::Flush(done)) => {
                            write(&mut pending);
                            let _ = done.send(());
                        }
                        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => write(&mut pending),
                        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                            write(&mut pending);
                            return;
                        }
                    }
                }
            })
            .expect("spawning the cache thread");
        Cache {
            tx: std::sync::Mutex::new(tx),
        }
    }

    fn sender(&self) -> std::sync::mpsc::Sender<CacheMessage> {
        self.tx.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn put(&self, pages: Vec<u8>) {
        let _ = self.sender().send(CacheMessage::Pages(pages));
    }

    /// Waits until everything sent so far is written.
    fn flush_with(tx: &std::sync::mpsc::Sender<CacheMessage>) {
        let (done, wait) = std::sync::mpsc::channel();
        if tx.send(CacheMessage::Flush(done)).is_ok() {
            let _ = wait.recv();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_completion_waits_for_a_quiet_source_but_not_forever() {
        let quiet = Duration::from_millis(150);
        let longest = Duration::from_secs(3);
        let activity = Activity::new();
        // Quiet already (nothing fetched since it was made, 150 ms ago).
        tokio::time::advance(quiet).await;
        assert_eq!(wait_quiet(&activity, quiet, longest).await, Duration::ZERO);
        // A fetch just ended: a whole quiet period from its end.
        drop(activity.fetching());
        let waited = wait_quiet(&activity, quiet, longest).await;
        assert!(waited >= quiet && waited < quiet * 2, "{waited:?}");
        // A fetch under way: never quiet; the wait ends at its longest.
        let _running = activity.fetching();
        assert_eq!(activity.quiet_for(), Duration::ZERO);
        let waited = wait_quiet(&activity, quiet, longest).await;
        assert!(waited >= longest && waited < longest + quiet, "{waited:?}");
    }

    #[test]
    fn merged_reads_never_hold_more_than_twice_the_slots_wanted() {
        // Every other slot, every third, runs, lone slots: never more than
        // one unneeded slot per wanted one.
        for step in 1..6u32 {
            let mut by_pack = BTreeMap::new();
            by_pack.insert(
                0,
                (0..200)
                    .map(|i| (i * step, PageHash([i as u8; 32])))
                    .collect::<Vec<_>>(),
            );
            let r = ranges(by_pack, LAZY_GAP);
            let read: u32 = r.iter().map(|r| r.end - r.first).sum();
            let wanted: usize = r.iter().map(|r| r.wanted.len()).sum();
            assert_eq!(wanted, 200);
            assert!(read <= 2 * 200, "step {step}: {read} slots read");
            if step == 1 {
                assert_eq!(r.len(), 1, "step {step}: one read");
            }
        }
    }
}
