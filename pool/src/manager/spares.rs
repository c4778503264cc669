//! Spares: stub sandboxes made ahead of time for versions with a ready
//! snapshot, so that a cold start pays only for the restore.
//!
//! A spare is a [`Stub`]: the snapshot loaded and every file its copy maps
//! opened, and a stub sandbox (namespaces, cgroup with the version's limits,
//! mounts, init, stub waiting in `pause()`) holding those descriptors. A
//! restore takes one (a hit) or, when none is ready, makes one on the spot
//! (a miss). One task launches spares, one at a time, never on a request's
//! path: after the first answer of each restore, when a version is
//! registered, and on the pool's tick (which also retries failed launches
//! after their back-off).
//!
//! A spare of a single-process snapshot restored in `mmap` mode is also
//! pre-mapped once it is kept ([`Pool::premap_later`], background work held
//! while a burst is served): its own thread restores the copy's memory
//! ahead of the claim, which then runs only the rest of the restore
//! ([`crate::restore::premap`]; `THAW_PREMAP_SPARES=0` turns it off).
//!
//! Which versions get spares: every registered version with a snapshot,
//! most recently used first, `per_version` each until `max_total` spares in
//! all, then, within the same cap, the extra spares of versions whose cold
//! starts came in bursts ([`super::demand`]); spares beyond that are
//! destroyed. A version's spares go when it is
//! retired or deleted, when its snapshot is replaced, and at shutdown.
//! Spares are live sandboxes: their memory and processes count in the
//! pool's reports, and they die with the server like every sandbox.
//!
//! A version whose snapshot restores lazily (a reader node that does not
//! hold it, issue 18) gets spares too: the sandbox made and its files
//! checked ahead, but no page fetched until the claim
//! ([`Stub::launch_ahead`]), so the first remote restore pays its fetch and
//! not the sandbox's launch, and a store outage before the claim makes that
//! cold start boot, as without a spare. A spare made lazily is stale once
//! its snapshot restores locally (and a local one while it restores
//! lazily): never claimed, trimmed and replaced. On by default since
//! 2026-12-07, once a lazy image took the local store's pages at the fetch
//! rather than when the spare was made (docs/cluster.md, "Spares on a
//! reader": numpy-pandas's first remote restore 114 ms against 165 ms
//! without, bytes ×1.89 the working set's stored part);
//! `THAW_LAZY_SPARES=0` turns them off.

use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::Instant;

use super::{FunctionKey, Pool, StartSpec};
use crate::instance::Stub;

/// How many spares the pool keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpareConfig {
    /// Spares per version with a ready snapshot; 0 disables spares.
    pub per_version: usize,
    /// Most spares in all, over every version.
    pub max_total: usize,
    /// Most spares one version keeps when its cold starts come in bursts
    /// ([`super::demand`]); at most `per_version` turns that off.
    pub burst_max: usize,
    /// How fast a version's learned demand decays: it halves every
    /// `demand_half_life` ([`super::demand`]); zero turns learning off.
    pub demand_half_life: Duration,
}

impl Default for SpareConfig {
    fn default() -> Self {
        SpareConfig {
            per_version: 2,
            max_total: 64,
            burst_max: 16,
            demand_half_life: DEFAULT_DEMAND_HALF_LIFE,
        }
    }
}

/// Default [`SpareConfig::demand_half_life`].
pub const DEFAULT_DEMAND_HALF_LIFE: Duration = Duration::from_secs(120);

/// First wait after a failed spare launch; doubles per failure in a row.
const BACKOFF_FIRST: Duration = Duration::from_millis(200);
/// Longest wait between launch attempts of one version.
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Environment variable turning spares of lazily restored snapshots off
/// (`0`; on by default, see the module's documentation).
pub const LAZY_SPARES_ENV: &str = "THAW_LAZY_SPARES";

/// Whether versions whose snapshot restores lazily get spares (read once).
fn lazy_spares() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var_os(LAZY_SPARES_ENV).is_none_or(|v| v != "0"))
}

fn backoff(failures: u32) -> Duration {
    BACKOFF_FIRST
        .saturating_mul(1u32 << failures.saturating_sub(1).min(16))
        .min(BACKOFF_MAX)
}

/// What the refiller should do next.
struct Plan {
    /// A version that lacks a spare (counted as launching already).
    launch: Option<(FunctionKey, StartSpec)>,
    /// Spares beyond what their version is allotted (already forgotten).
    excess: Vec<Stub>,
}

/// Destroys stubs, logging (rate-limited) what could not be cleaned up.
pub(super) async fn destroy_all(stubs: Vec<Stub>) {
    for stub in stubs {
        let id = stub.id().to_string();
        if let Err(e) = stub.destroy().await {
            if let Some(suppressed) = crate::ratelimit::POOL_LOG.allow("cleanup") {
                tracing::warn!(sandbox = %id, error = %e, suppressed, "spare clean-up failed");
            }
        }
    }
}

impl Pool {
    /// The spare settings.
    pub fn spare_config(&self) -> SpareConfig {
        self.config.spares
    }

    /// Restores that found a spare ready, since the start.
    pub fn spare_hits(&self) -> u64 {
        self.shared.spare_hits.load(Ordering::Relaxed)
    }

    /// Restores that found no spare ready (with spares enabled), since the
    /// start.
    pub fn spare_misses(&self) -> u64 {
        self.shared.spare_misses.load(Ordering::Relaxed)
    }

    pub(super) fn spares_enabled(&self) -> bool {
        self.config.spares.per_version > 0
            && self.config.spares.max_total > 0
            && self.config.restorer.is_some()
    }

    /// Whether cold starts of `spec` restore lazily now (its snapshot is
    /// not local: [`crate::restore::sandboxed::SnapshotRestorer::set_lazy`]).
    pub(super) fn restores_lazily(&self, spec: &StartSpec) -> bool {
        match (&spec.snapshot, &self.config.restorer) {
            (Some(s), Some(r)) => r.is_lazy(&s.id),
            _ => false,
        }
    }

    /// Whether `stub` still fits how its snapshot restores: made lazily
    /// while it restores lazily, from the local store while it is local.
    pub(super) fn spare_current(&self, stub: &Stub) -> bool {
        let lazy = self
            .config
            .restorer
            .as_ref()
            .is_some_and(|r| r.is_lazy(stub.snapshot_id()));
        stub.is_lazy() == lazy
    }

    /// Starts the task that launches spares whenever it is woken.
    pub(super) fn start_refiller(&self) {
        if !self.spares_enabled() {
            return;
        }
        let weak = std::sync::Arc::downgrade(&self.state);
        let config = self.config.clone();
        let shared = self.shared.clone();
        tokio::spawn(async move {
            loop {
                shared.refill.notified().await;
                loop {
                    let Some(state) = weak.upgrade() else { return };
                    let pool = Pool {
                        config: config.clone(),
                        state,
                        shared: shared.clone(),
                    };
                    // Not while a burst is served (super::defer).
                    pool.after_cold_starts().await;
                    let plan = pool.plan_spares();
                    destroy_all(plan.excess).await;
                    match plan.launch {
                        Some((key, spec)) => pool.launch_spare(key, spec).await,
                        None => break,
                    }
                }
            }
        });
    }

    /// Takes a ready spare of `key` made for `snapshot_id`, and wakes the
    /// refiller. Counts the hit or miss.
    pub(super) async fn take_spare(&self, key: &FunctionKey, snapshot_id: &str) -> Option<Stub> {
        if !self.spares_enabled() {
            return None;
        }
        let mut dead = Vec::new();
        let found = {
            let mut st = self.state.lock().unwrap();
            let st = &mut *st;
            st.last_used.insert(key.clone(), Instant::now());
            let mut found = None;
            if let Some(list) = st.spares.get_mut(key) {
                while let Some(mut stub) = list.pop() {
                    if stub.snapshot_id() == snapshot_id
                        && self.spare_current(&stub)
                        && stub.usable()
                    {
                        found = Some(stub);
                        break;
                    }
                    st.live.remove(stub.id());
                    dead.push(stub);
                }
                if list.is_empty() {
                    st.spares.remove(key);
                }
            }
            found
        };
        let counter = if found.is_some() {
            &self.shared.spare_hits
        } else {
            // Held background work may make a spare for a later request
            // (super::defer).
            self.note_spare_missed();
            &self.shared.spare_misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        // The refill is woken once the restore's first answer is in (see
        // `Pool::invoke`), or by the next tick.
        if !dead.is_empty() {
            self.destroy_spares_later(dead);
        }
        found
    }

    /// Destroys `stubs` in the background, counted as teardowns in flight
    /// ([`Pool::teardowns_in_flight`]) until they are gone.
    pub(super) fn destroy_spares_later(&self, stubs: Vec<Stub>) {
        self.shared.discarding.fetch_add(1, Ordering::SeqCst);
        let pool = self.clone();
        tokio::spawn(async move {
            pool.after_cold_starts().await;
            destroy_all(stubs).await;
            pool.shared.discarding.fetch_sub(1, Ordering::SeqCst);
        });
    }

    /// Decides the next spare to launch and which spares are in excess.
    fn plan_spares(&self) -> Plan {
        let mut st = self.state.lock().unwrap();
        let st = &mut *st;
        let mut plan = Plan {
            launch: None,
            excess: Vec::new(),
        };
        if st.closed {
            return plan;
        }
        // Spares made for another snapshot than their version's, or for
        // another way of restoring it (lazily, or from the local store)
        // than the current one (`Pool::register` leaves them here when it
        // runs outside the runtime).
        for (key, list) in st.spares.iter_mut() {
            let current = st
                .specs
                .get(key)
                .and_then(|s| s.snapshot.as_ref())
                .map(|s| s.id.as_str());
            let (keep, stale): (Vec<Stub>, Vec<Stub>) = std::mem::take(list)
                .into_iter()
                .partition(|s| Some(s.snapshot_id()) == current && self.spare_current(s));
            *list = keep;
            plan.excess.extend(stale);
        }
        st.spares.retain(|_, list| !list.is_empty());
        self.plan_premapped(st);
        let cfg = self.config.spares;
        let mut keys: Vec<&FunctionKey> = st
            .specs
            .iter()
            .filter(|(k, s)| s.snapshot.is_some() && !st.retired.contains(*k))
            // Lazily restored ones too: their spares fetch nothing before
            // the claim (the module doc), unless turned off.
            .filter(|(_, s)| lazy_spares() || !self.restores_lazily(s))
            .map(|(k, _)| k)
            .collect();
        // Most recently used first; then newest versions, for a stable order.
        keys.sort_by(|a, b| {
            st.last_used
                .get(*b)
                .cmp(&st.last_used.get(*a))
                .then_with(|| (&b.name, b.version).cmp(&(&a.name, a.version)))
        });
        // Spares never make room: none is launched while the budget is full.
        let full = super::accounting::counted(st) + (4 << 20) > self.config.memory_budget;
        let now = Instant::now();
        // Every version its `per_version` first, then what bursts taught
        // (super::demand), both most recently used first, within the cap.
        let mut allotted = 0;
        let mut allots: Vec<usize> = keys
            .iter()
            .map(|_| {
                let allot = cfg.per_version.min(cfg.max_total.saturating_sub(allotted));
                allotted += allot;
                allot
            })
            .collect();
        for (key, allot) in keys.iter().zip(allots.iter_mut()) {
            let extra = super::demand::target(st, &cfg, key, now)
                .saturating_sub(cfg.per_version)
                .min(cfg.max_total.saturating_sub(allotted));
            allotted += extra;
            *allot += extra;
        }
        let mut launch = None;
        let mut trim: Vec<(FunctionKey, usize)> = Vec::new();
        for (key, allot) in keys.into_iter().zip(allots) {
            let ready = st.spares.get(key).map_or(0, Vec::len);
            let launching = st.spares_launching.get(key).copied().unwrap_or(0);
            // Forced copies still running keep room for their recycled
            // sandboxes (super::recycle).
            let keep = allot + super::recycle::headroom(st, key);
            if ready > keep {
                trim.push((key.clone(), ready - keep));
            }
            let waiting = st
                .spare_backoff
                .get(key)
                .is_some_and(|(_, until)| *until > now);
            if launch.is_none() && ready + launching < allot && !waiting && !full {
                launch = Some((key.clone(), st.specs[key].clone()));
            }
        }
        // Spares of versions no longer registered (or without a snapshot).
        for (key, list) in &st.spares {
            let eligible = st
                .specs
                .get(key)
                .is_some_and(|s| s.snapshot.is_some() && !st.retired.contains(key));
            if !eligible {
                trim.push((key.clone(), list.len()));
            }
        }
        for (key, n) in trim {
            if let Some(list) = st.spares.get_mut(&key) {
                for _ in 0..n.min(list.len()) {
                    // Oldest first.
                    plan.excess.push(list.remove(0));
                }
                if list.is_empty() {
                    st.spares.remove(&key);
                }
            }
        }
        for stub in &plan.excess {
            st.live.remove(stub.id());
        }
        if let Some((key, _)) = &launch {
            *st.spares_launching.entry(key.clone()).or_default() += 1;
        }
        plan.launch = launch;
        plan
    }

    /// Launches one spare of `key` and keeps it if it is still wanted.
    async fn launch_spare(&self, key: FunctionKey, spec: StartSpec) {
        let (Some(snapshot), Some(restorer)) = (&spec.snapshot, &self.config.restorer) else {
            self.launch_done(&key);
            return;
        };
        let started = Instant::now();
        let mut sample = None;
        let result = Stub::launch_ahead(
            &self.config.sandbox,
            &spec.launch,
            snapshot,
            restorer,
            spec.logs.clone(),
        )
        .await;
        let unwanted = match result {
            Ok(stub) => {
                self.state.lock().unwrap().spare_backoff.remove(&key);
                match self.keep_spare(&key, stub, started) {
                    Ok(id) => {
                        self.premap_later(key.clone(), id.clone());
                        sample = Some(id);
                        None
                    }
                    Err(stub) => Some(*stub),
                }
            }
            Err(e) => {
                let mut st = self.state.lock().unwrap();
                let st = &mut *st;
                let failures = st.spare_backoff.get(&key).map_or(0, |(n, _)| *n) + 1;
                let wait = backoff(failures);
                st.spare_backoff
                    .insert(key.clone(), (failures, Instant::now() + wait));
                let limit_key = format!("spare:{}", key.name);
                if let Some(suppressed) = crate::ratelimit::POOL_LOG.allow(&limit_key) {
                    tracing::warn!(
                        function = %key.name,
                        version = key.version,
                        error = %e,
                        failures,
                        retry_in_ms = wait.as_millis() as u64,
                        suppressed,
                        "spare sandbox launch failed"
                    );
                }
                None
            }
        };
        // Destroyed before the launch counts as done, so that waiting for
        // launches (retire, shutdown) also waits for this clean-up.
        if let Some(stub) = unwanted {
            destroy_all(vec![stub]).await;
        }
        self.launch_done(&key);
        if let Some(id) = sample {
            self.sample_new_spare(&id);
        }
    }

    /// Whether `stub`'s pre-map is still to come or running, a plan in
    /// place ([`Pool::plan_premapped`]) included: what a server at rest has
    /// finished. Never blocks.
    pub(super) fn premap_pending(&self, stub: &Stub) -> bool {
        stub.premap_pending() || self.plan_pending(stub)
    }

    /// Whether `stub` was pre-mapped without a working set that its
    /// snapshot has now, and is to be planned in place. Never blocks.
    fn plan_pending(&self, stub: &Stub) -> bool {
        replan_enabled()
            && stub.premapped_without_plan()
            && self
                .config
                .restorer
                .as_ref()
                .is_some_and(|r| r.has_working_set_cached(stub.snapshot_id()) == Some(true))
    }

    /// Spares pre-mapped before their snapshot's working set was recorded
    /// (the first spares after a deploy) populate it in place once it is
    /// ([`Stub::plan_premap`]), so that their claim does not on the
    /// request's path. Run where the refill plans, after the cold starts
    /// in flight (background work, [`super::defer`]). `THAW_PREMAP_REPLAN=0`
    /// leaves them to populate at their claim (as before).
    fn plan_premapped(&self, st: &mut super::State) {
        let Some(restorer) = &self.config.restorer else {
            return;
        };
        for stub in st.spares.values_mut().flatten() {
            if self.plan_pending(stub) && stub.plan_premap() {
                tracing::debug!(sandbox = %stub.id(), snapshot = %stub.snapshot_id(), "planning a spare pre-mapped without a working set");
                // It will hold its working set's pages, as one pre-mapped
                // with it (`Pool::premap_later`).
                let bytes = restorer
                    .working_set_cached(stub.snapshot_id())
                    .map_or(0, |pages| pages as u64 * 4096);
                if let Some(live) = st.live.get_mut(stub.id()) {
                    live.add_estimate(bytes);
                }
            }
        }
    }

    /// Pre-maps spare `id` of `key` ([`crate::restore::premap`]) once no
    /// burst is being served ([`Pool::before_premap`]): background work.
    /// The spare is claimable meanwhile (restored whole if claimed before).
    pub(super) fn premap_later(&self, key: FunctionKey, id: String) {
        if self.config.restorer.is_none() || !crate::restore::premap::enabled() {
            return;
        }
        let pool = self.clone();
        tokio::spawn(async move {
            pool.before_premap().await;
            let Some(restorer) = &pool.config.restorer else {
                return;
            };
            let mut st = pool.state.lock().unwrap();
            let st = &mut *st;
            let Some(stub) = st
                .spares
                .get_mut(&key)
                .and_then(|list| list.iter_mut().find(|s| s.id() == id))
            else {
                // Claimed or dropped meanwhile.
                return;
            };
            // Quick: starts the spare's thread.
            if stub.premap(restorer) {
                if let Some(live) = st.live.get_mut(&id) {
                    live.add_estimate(stub.premap_estimate());
                }
            }
        });
    }

    /// Keeps `stub` (launched or recycled since `started`) as a spare of
    /// `key` if it is still wanted (the pool open, the version registered
    /// with the same snapshot); returns its id, or the stub when unwanted.
    /// The caller counted it as launching.
    pub(super) fn keep_spare(
        &self,
        key: &FunctionKey,
        stub: Stub,
        started: Instant,
    ) -> Result<String, Box<Stub>> {
        let mut st = self.state.lock().unwrap();
        let st = &mut *st;
        let wanted = !st.closed
            && !st.retired.contains(key)
            && st
                .specs
                .get(key)
                .and_then(|s| s.snapshot.as_ref())
                .is_some_and(|s| s.id == stub.snapshot_id())
            && self.spare_current(&stub);
        if !wanted {
            return Err(Box::new(stub));
        }
        tracing::debug!(
            function = %key.name,
            version = key.version,
            sandbox = %stub.id(),
            launch_us = started.elapsed().as_micros() as u64,
            "spare ready"
        );
        st.live.insert(
            stub.id().to_string(),
            super::accounting::Live::spare(key.clone(), stub.cgroup().clone()),
        );
        let id = stub.id().to_string();
        st.spares.entry(key.clone()).or_default().push(stub);
        Ok(id)
    }

    pub(super) fn launch_done(&self, key: &FunctionKey) {
        let mut st = self.state.lock().unwrap();
        if let Some(n) = st.spares_launching.get_mut(key) {
            *n -= 1;
            if *n == 0 {
                st.spares_launching.remove(key);
            }
        }
    }

    /// Destroys every ready spare.
    pub(super) async fn drop_all_spares(&self) {
        let stubs: Vec<Stub> = {
            let mut st = self.state.lock().unwrap();
            let stubs: Vec<Stub> = st.spares.drain().flat_map(|(_, l)| l).collect();
            for s in &stubs {
                st.live.remove(s.id());
            }
            stubs
        };
        destroy_all(stubs).await;
    }

    /// Waits (at most 10 s) until no spare of the versions `which` selects
    /// is being launched; such launches see their version retired (or the
    /// pool closed) and destroy what they made.
    pub(super) async fn wait_spare_launches(&self, which: impl Fn(&FunctionKey) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let busy = self
                .state
                .lock()
                .unwrap()
                .spares_launching
                .keys()
                .any(&which);
            if !busy || Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// Whether spares pre-mapped without a working set are planned in place
/// once one is recorded ([`Pool::plan_premapped`]; on unless
/// `THAW_PREMAP_REPLAN=0`).
fn replan_enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("THAW_PREMAP_REPLAN").is_none_or(|v| v != "0"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        assert_eq!(backoff(1), Duration::from_millis(200));
        assert_eq!(backoff(2), Duration::from_millis(400));
        assert_eq!(backoff(4), Duration::from_millis(1600));
        assert_eq!(backoff(30), BACKOFF_MAX);
    }
}
