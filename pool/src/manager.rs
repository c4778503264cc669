//! The pool: idle instances per function version, booting on demand,
//! keep-alive, `min_instances`, per-function concurrency with a bounded
//! queue, and the global memory budget.
//!
//! Memory accounting and the budget's rule live in [`accounting`]; keeping
//! `min_instances` copies in [`fill`].

mod accounting;
mod defer;
mod demand;
mod fill;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::instance::{BootError, Instance, Invocation, InvokeError, Outcome, RestorePhases, Stub};
use crate::logs::LogSink;
use crate::sandbox::{LaunchSpec, SandboxConfig};

mod recycle;
mod spares;

pub use defer::DEFER_ENV;
pub use demand::DEMAND_WINDOW_ENV;
pub use recycle::NotRecycled;
pub use spares::{SpareConfig, DEFAULT_DEMAND_HALF_LIFE};

/// Keep-alive of versions that were never registered.
pub const DEFAULT_KEEP_ALIVE: Duration = Duration::from_secs(600);

/// Identifies one deployed version. `uid` is unique per deployment, so a
/// function deleted and deployed again never meets the old instances.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FunctionKey {
    /// Function name.
    pub name: String,
    /// Version number.
    pub version: u64,
    /// Unique id of this deployment of the version.
    pub uid: u64,
}

/// How to start and keep instances of one version.
#[derive(Clone)]
pub struct StartSpec {
    /// The sandbox and command.
    pub launch: LaunchSpec,
    /// Idle time after which an instance is stopped.
    pub keep_alive: Duration,
    /// Most invocations of the function in flight at once.
    pub concurrency: usize,
    /// Most invocations waiting for a slot.
    pub queue: usize,
    /// Instances kept ready even when idle.
    pub min_instances: usize,
    /// Where the instances' output goes.
    pub logs: LogSink,
    /// The snapshot cold starts restore, when the version has one.
    pub snapshot: Option<crate::instance::SnapshotSource>,
}

impl std::fmt::Debug for StartSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StartSpec")
            .field("launch", &self.launch)
            .field("keep_alive", &self.keep_alive)
            .field("concurrency", &self.concurrency)
            .field("queue", &self.queue)
            .field("min_instances", &self.min_instances)
            .field("snapshot", &self.snapshot)
            .finish()
    }
}

/// How the instance that served an invocation was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartKind {
    /// An idle instance was reused.
    Warm,
    /// A copy was restored from a snapshot.
    Restore,
    /// A new instance was booted.
    Boot,
}

impl StartKind {
    /// The value of the `x-thaw-start` header.
    pub fn as_str(self) -> &'static str {
        match self {
            StartKind::Warm => "warm",
            StartKind::Restore => "restore",
            StartKind::Boot => "boot",
        }
    }
}

/// Why the pool could not serve an invocation.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// Concurrency limit reached and the queue is full.
    #[error("the function has {concurrency} invocations in flight and {queue} waiting")]
    ConcurrencyLimit {
        /// The limit.
        concurrency: usize,
        /// The queue length.
        queue: usize,
    },
    /// Starting an instance would exceed the memory budget.
    #[error("starting an instance needs {needed} MiB but only {free} MiB of the {budget} MiB budget are free")]
    MemoryBudget {
        /// MiB the start needs.
        needed: u64,
        /// MiB free.
        free: u64,
        /// The budget, MiB.
        budget: u64,
    },
    /// Booting failed.
    #[error(transparent)]
    Boot(#[from] BootError),
    /// The invocation killed the instance.
    #[error(transparent)]
    Invoke(#[from] InvokeError),
    /// The pool is shutting down.
    #[error("the server is shutting down")]
    ShuttingDown,
    /// A forced restore of a version without a ready snapshot.
    #[error("this version has no ready snapshot to restore")]
    NoSnapshot,
    /// A forced restore failed (unforced ones fall back to booting).
    #[error(transparent)]
    Restore(#[from] crate::instance::RestoreFailure),
}

/// Pool-wide settings.
#[derive(Clone)]
pub struct PoolConfig {
    /// How sandboxes are made.
    pub sandbox: SandboxConfig,
    /// Memory all instances may use together, bytes.
    pub memory_budget: u64,
    /// Time allowed for a runtime to load its handler.
    pub init_timeout: Duration,
    /// Restores copies from snapshots; `None`: every cold start boots.
    pub restorer: Option<crate::instance::Restorer>,
    /// Told when a restore failed (and the start fell back to booting), so
    /// the snapshot can be rebuilt.
    pub on_restore_failure: Option<RestoreFailureHook>,
    /// Pre-made stub sandboxes kept for cold starts.
    pub spares: SpareConfig,
}

/// Called with the version, the snapshot id and the reason when a restore
/// failed in a way that blames the snapshot (not when the sandbox could not
/// be made, see [`crate::instance::RestoreFailure::blames_snapshot`]).
pub type RestoreFailureHook = Arc<dyn Fn(&FunctionKey, &str, &str) + Send + Sync>;

/// Which idle instances a start may evict to fit the memory budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Room {
    /// Any idle instance (an invocation waits for this start).
    AnyIdle,
    /// Only idle instances beyond their version's `min_instances` (a
    /// `min_instances` copy never displaces another).
    Spare,
}

/// Environment variable that has forced cold starts measured right after
/// they start, as every other start is (`1`); see [`measure_after_start`].
pub const SAMPLE_FORCED_COLD_ENV: &str = "THAW_SAMPLE_FORCED_COLD";

/// Whether a start is measured (its processes' `smaps_rollup` read) right
/// after it is up. Not a forced cold start (`x-thaw-cold`): that instance
/// serves one invocation and is torn down, so the measurement, which walks
/// the page tables of a copy of a large process (about 0.6 ms of CPU for
/// numpy-pandas), would be thrown away; until it is measured an instance
/// counts its whole memory limit against the budget, which over-counts and
/// never lets the pool exceed it; nor does the maintenance tick measure
/// it (a numpy-pandas copy's page tables walked for nothing, by every tick
/// that finds it live). `THAW_SAMPLE_FORCED_COLD=1` measures them too, at
/// the start and by the tick (for A/B measurements).
fn measure_after_start(cold: Option<Cold>) -> bool {
    cold.is_none() || std::env::var_os(SAMPLE_FORCED_COLD_ENV).is_some_and(|v| v == "1")
}

/// How a forced cold start must start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cold {
    /// A fresh booted instance.
    Boot,
    /// A fresh copy restored from the version's snapshot.
    Restore,
}

struct Idle {
    instance: Instance,
    since: Instant,
}

struct Gate {
    sem: Arc<Semaphore>,
    waiting: AtomicUsize,
    concurrency: usize,
    queue: usize,
}

#[derive(Default)]
struct State {
    idle: HashMap<FunctionKey, Vec<Idle>>,
    busy: HashMap<FunctionKey, usize>,
    booting: HashMap<FunctionKey, usize>,
    /// Memory reserved by instances that are booting, bytes.
    reserved: u64,
    /// Every live instance, by sandbox id.
    live: HashMap<String, accounting::Live>,
    gates: HashMap<String, Arc<Gate>>,
    /// Versions whose instances must not be kept.
    retired: std::collections::HashSet<FunctionKey>,
    /// How each registered version is kept.
    specs: HashMap<FunctionKey, StartSpec>,
    /// Versions a `min_instances` filler is working on.
    filling: std::collections::HashSet<FunctionKey>,
    /// When every live instance's memory was last measured.
    sampled_at: Option<Instant>,
    /// Pre-made stub sandboxes (spares), by version.
    spares: HashMap<FunctionKey, Vec<Stub>>,
    /// Spares being launched, by version.
    spares_launching: HashMap<FunctionKey, usize>,
    /// Of those, torn-down copies' sandboxes being recycled ([`recycle`]).
    spares_recycling: HashMap<FunctionKey, usize>,
    /// Of those, forced restores' copies still running whose sandbox is
    /// expected back ([`recycle`]).
    spares_recycle_ahead: HashMap<FunctionKey, usize>,
    /// Versions whose last spare launch failed: failures in a row, and when
    /// to try again.
    spare_backoff: HashMap<FunctionKey, (u32, Instant)>,
    /// When each version was last invoked (or registered): spares go to the
    /// most recently used versions first.
    last_used: HashMap<FunctionKey, Instant>,
    /// Cold starts in flight, by version ([`demand`]).
    cold_in_flight: HashMap<FunctionKey, usize>,
    /// Learned demand (decaying peak of cold starts in flight), by version
    /// ([`demand`]).
    demand: HashMap<FunctionKey, demand::Demand>,
    /// Recent cold starts admitted, by version ([`demand`]).
    arrivals: HashMap<FunctionKey, demand::Arrivals>,
    /// Since when cold starts have been in flight without a pause (none
    /// now: `None`); background work waits for them ([`defer`]).
    cold_busy_since: Option<Instant>,
    /// Cold starts admitted since `cold_busy_since` ([`defer`]).
    cold_busy_arrivals: usize,
    /// Whether a cold start found no spare since `cold_busy_since`
    /// ([`defer`]).
    cold_busy_missed: bool,
    closed: bool,
}

/// One live instance, for reports.
#[derive(Debug, Clone, serde::Serialize)]
pub struct InstanceInfo {
    /// Sandbox id.
    pub id: String,
    /// Its version.
    pub version: u64,
    /// `idle` or `busy`.
    pub state: &'static str,
    /// How it started: `restore` or `boot`.
    pub start: &'static str,
    /// Memory of all its sandbox's processes (init, the function and its
    /// children) when last measured (zero until the first measurement,
    /// right after it started).
    pub memory: crate::memory::MemoryUse,
}

/// Instance counts of one version.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counts {
    /// Waiting for work.
    pub idle: usize,
    /// Serving an invocation.
    pub busy: usize,
    /// Starting.
    pub booting: usize,
    /// Pre-made stub sandboxes ready for a cold start (restore).
    pub spare: usize,
    /// Of those spares, the ones whose pre-map ([`crate::restore::premap`])
    /// is still to come or running: background work a server at rest has
    /// finished (a claim of one waits for it).
    pub premapping: usize,
}

/// Counters and signals shared by the pool's handles and tasks.
#[derive(Debug, Default)]
struct Shared {
    restore_failures: std::sync::atomic::AtomicU64,
    spare_hits: std::sync::atomic::AtomicU64,
    spare_misses: std::sync::atomic::AtomicU64,
    /// Torn-down copies' sandboxes recycled into spares, and those that
    /// were not, by reason ([`recycle`]).
    recycle: recycle::Counters,
    /// Wakes the task that launches spares.
    refill: tokio::sync::Notify,
    /// Sandboxes being torn down in the background.
    discarding: AtomicUsize,
    /// Signalled when a cold start has answered ([`defer`]).
    cold_done: tokio::sync::Notify,
}

/// The pool of instances. Cheap to clone.
#[derive(Clone)]
pub struct Pool {
    config: Arc<PoolConfig>,
    state: Arc<Mutex<State>>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for PoolConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolConfig")
            .field("sandbox", &self.sandbox)
            .field("memory_budget", &self.memory_budget)
            .field("init_timeout", &self.init_timeout)
            .field("restorer", &self.restorer.is_some())
            .field("spares", &self.spares)
            .finish()
    }
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("config", &self.config)
            .finish()
    }
}

/// A served invocation.
#[derive(Debug)]
pub struct Served {
    /// What the handler produced.
    pub outcome: Outcome,
    /// How the instance was obtained.
    pub start: StartKind,
    /// Time spent obtaining the instance.
    pub start_time: Duration,
    /// Phases of the restore, when the instance was restored for this
    /// invocation.
    pub restore: Option<RestorePhases>,
}

/// A failed invocation, with how far it got.
#[derive(Debug)]
pub struct Failed {
    /// Why.
    pub error: PoolError,
    /// How the instance was obtained, if one was.
    pub start: Option<StartKind>,
    /// Time spent obtaining the instance.
    pub start_time: Duration,
}

/// Instances torn down at once when the pool shuts down.
const SHUTDOWN_TEARDOWNS: usize = 32;

impl Pool {
    /// A pool with no instances. Starts the keep-alive task.
    pub fn new(config: PoolConfig) -> Pool {
        let pool = Pool {
            config: Arc::new(config),
            state: Arc::new(Mutex::new(State::default())),
            shared: Arc::new(Shared::default()),
        };
        let weak = Arc::downgrade(&pool.state);
        let config = pool.config.clone();
        let shared = pool.shared.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            loop {
                tick.tick().await;
                let Some(state) = weak.upgrade() else { break };
                let pool = Pool {
                    config: config.clone(),
                    state,
                    shared: shared.clone(),
                };
                if pool.state.lock().unwrap().closed {
                    break;
                }
                pool.maintain().await;
            }
        });
        pool.start_refiller();
        pool
    }

    /// The pool's settings.
    pub fn config(&self) -> &PoolConfig {
        &self.config
    }

    /// Instance counts of one version.
    pub fn counts(&self, key: &FunctionKey) -> Counts {
        let st = self.state.lock().unwrap();
        Counts {
            idle: st.idle.get(key).map_or(0, Vec::len),
            busy: st.busy.get(key).copied().unwrap_or(0),
            booting: st.booting.get(key).copied().unwrap_or(0),
            spare: st.spares.get(key).map_or(0, Vec::len),
            premapping: st
                .spares
                .get(key)
                .map_or(0, |l| l.iter().filter(|s| self.premap_pending(s)).count()),
        }
    }

    /// Sandboxes being torn down (or recycled into spares) in the
    /// background now: each counts until its processes, cgroup and run
    /// directory are gone (or it is a spare).
    pub fn teardowns_in_flight(&self) -> usize {
        self.shared.discarding.load(Ordering::SeqCst)
    }

    /// Spares being launched now (a launch makes the sandbox's run
    /// directory before its cgroup).
    pub fn spare_launches_in_flight(&self) -> usize {
        self.state.lock().unwrap().spares_launching.values().sum()
    }

    /// Instance counts over all versions.
    pub fn total_counts(&self) -> Counts {
        let st = self.state.lock().unwrap();
        Counts {
            idle: st.idle.values().map(Vec::len).sum(),
            busy: st.busy.values().sum(),
            booting: st.booting.values().sum(),
            spare: st.spares.values().map(Vec::len).sum(),
            premapping: st
                .spares
                .values()
                .flatten()
                .filter(|s| self.premap_pending(s))
                .count(),
        }
    }

    fn gate(&self, name: &str, spec: &StartSpec) -> Arc<Gate> {
        let mut st = self.state.lock().unwrap();
        let gate = st.gates.get(name);
        match gate {
            Some(g) if g.concurrency == spec.concurrency && g.queue == spec.queue => g.clone(),
            _ => {
                let g = Arc::new(Gate {
                    sem: Arc::new(Semaphore::new(spec.concurrency.max(1))),
                    waiting: AtomicUsize::new(0),
                    concurrency: spec.concurrency.max(1),
                    queue: spec.queue,
                });
                st.gates.insert(name.to_string(), g.clone());
                g
            }
        }
    }

    async fn admit(&self, name: &str, spec: &StartSpec) -> Result<OwnedSemaphorePermit, PoolError> {
        let gate = self.gate(name, spec);
        if let Ok(permit) = gate.sem.clone().try_acquire_owned() {
            return Ok(permit);
        }
        if gate.waiting.fetch_add(1, Ordering::SeqCst) >= gate.queue {
            gate.waiting.fetch_sub(1, Ordering::SeqCst);
            return Err(PoolError::ConcurrencyLimit {
                concurrency: gate.concurrency,
                queue: gate.queue,
            });
        }
        let permit = gate.sem.clone().acquire_owned().await;
        gate.waiting.fetch_sub(1, Ordering::SeqCst);
        permit.map_err(|_| PoolError::ShuttingDown)
    }

    /// Serves one invocation of `key`: a warm instance when one is idle,
    /// else a copy restored from the version's snapshot, else a boot. `cold`
    /// forces a fresh instance of that kind, discarded afterwards.
    pub async fn invoke(
        &self,
        key: &FunctionKey,
        spec: &StartSpec,
        inv: &Invocation,
        cold: Option<Cold>,
    ) -> Result<Served, Failed> {
        let fail = |error: PoolError, start: Option<StartKind>, start_time: Duration| Failed {
            error,
            start,
            start_time,
        };
        if cold == Some(Cold::Restore)
            && (spec.snapshot.is_none() || self.config.restorer.is_none())
        {
            return Err(fail(PoolError::NoSnapshot, None, Duration::ZERO));
        }
        let _permit = self
            .admit(&key.name, spec)
            .await
            .map_err(|e| fail(e, None, Duration::ZERO))?;
        let t0 = Instant::now();
        let warm = if cold.is_some() {
            None
        } else {
            self.take_idle(key)
        };
        // A cold start that may restore counts toward its version's demand
        // for spares until it has answered ([`demand`]).
        let in_flight = (warm.is_none() && cold != Some(Cold::Boot) && spec.snapshot.is_some())
            .then(|| self.cold_in_flight(key));
        let (mut instance, start, restore) = match warm {
            Some(instance) => (instance, StartKind::Warm, None),
            None => match self.cold_start(key, spec, cold, Room::AnyIdle).await {
                Ok(started) => started,
                Err((e, kind)) => return Err(fail(e, Some(kind), t0.elapsed())),
            },
        };
        // A forced restore's sandbox is expected back as a spare: the
        // refill does not launch one for it meanwhile ([`recycle`]).
        let recycle_claimed = cold.is_some()
            && start == StartKind::Restore
            && self.claim_recycle_ahead(key, spec, &instance);
        self.mark_busy(key, 1);
        let start_time = t0.elapsed();
        let result = instance.invoke(inv).await;
        self.mark_busy(key, -1);
        // Answered: no longer in flight (before the copy's recycle or
        // teardown is queued, which waits for the cold starts in flight:
        // [`defer`]).
        drop(in_flight);
        let refill = || {
            if start == StartKind::Restore {
                // Replace the spare this restore used (or lacked) now that
                // its first answer is in: launching one meanwhile would
                // compete with the restore and the first answer for the
                // CPUs.
                self.shared.refill.notify_one();
            }
        };
        if result.is_err() {
            refill();
        }
        match result {
            Ok(outcome) => {
                if cold.is_some() && start == StartKind::Restore {
                    // Torn down after the answer is sent, not before; its
                    // sandbox may become the spare the refill would make
                    // (claimed before the refill is woken).
                    self.recycle_or_discard_later(key, spec, instance, recycle_claimed);
                    refill();
                } else if cold.is_some() {
                    refill();
                    self.discard_later(instance);
                } else {
                    refill();
                    self.release(key, instance).await;
                }
                Ok(Served {
                    outcome,
                    start,
                    start_time,
                    restore,
                })
            }
            Err(e) => {
                if recycle_claimed {
                    self.release_recycle_claim(key);
                }
                self.discard(instance).await;
                Err(fail(e.into(), Some(start), start_time))
            }
        }
    }

    /// A new instance: restored when the version has a snapshot (falling
    /// back to a boot if the restore fails, unless a restore was forced),
    /// else booted.
    async fn cold_start(
        &self,
        key: &FunctionKey,
        spec: &StartSpec,
        cold: Option<Cold>,
        room: Room,
    ) -> Result<(Instance, StartKind, Option<RestorePhases>), (PoolError, StartKind)> {
        let restorer = self.config.restorer.as_ref();
        if let (Some(snapshot), Some(restorer), false) =
            (&spec.snapshot, restorer, cold == Some(Cold::Boot))
        {
            let measure = measure_after_start(cold);
            match self
                .restore(key, spec, snapshot, restorer, room, measure)
                .await
            {
                Ok((instance, phases)) => return Ok((instance, StartKind::Restore, Some(phases))),
                Err(PoolError::Restore(e)) => {
                    self.shared.restore_failures.fetch_add(1, Ordering::Relaxed);
                    let limit_key = format!("restore:{}", key.name);
                    if let Some(suppressed) = crate::ratelimit::POOL_LOG.allow(&limit_key) {
                        tracing::warn!(
                            function = %key.name,
                            version = key.version,
                            snapshot = %snapshot.id,
                            error = %e,
                            suppressed,
                            "restore failed; booting instead"
                        );
                    }
                    if let (Some(hook), true) =
                        (&self.config.on_restore_failure, e.blames_snapshot())
                    {
                        hook(key, &snapshot.id, &e.to_string());
                    }
                    if cold == Some(Cold::Restore) {
                        return Err((PoolError::Restore(e), StartKind::Restore));
                    }
                }
                Err(e) => return Err((e, StartKind::Restore)),
            }
        }
        self.boot_in(key, spec, room, measure_after_start(cold))
            .await
            .map(|i| (i, StartKind::Boot, None))
            .map_err(|e| (e, StartKind::Boot))
    }

    /// Restores a copy of `key` from its snapshot, within the memory budget:
    /// into a spare when one is ready, else into a stub sandbox launched now.
    async fn restore(
        &self,
        key: &FunctionKey,
        spec: &StartSpec,
        snapshot: &crate::instance::SnapshotSource,
        restorer: &crate::instance::Restorer,
        room: Room,
        measure: bool,
    ) -> Result<(Instance, RestorePhases), PoolError> {
        let started = Instant::now();
        let spare = self.take_spare(key, &snapshot.id).await;
        let start = async {
            let hit = spare.is_some();
            let stub = match spare {
                Some(stub) => stub,
                None => {
                    Stub::launch(
                        &self.config.sandbox,
                        &spec.launch,
                        snapshot,
                        restorer,
                        spec.logs.clone(),
                    )
                    .await?
                }
            };
            let claim = started.elapsed();
            let id = stub.id().to_string();
            let mut stub = stub;
            if stub.premapped() && crate::restore::premap::linger_wanted() {
                // The pre-map thread's clean-up after the claim waits with
                // the pool's other background work (`defer`).
                let (release, gate) = crate::restore::premap::linger();
                stub.linger(gate);
                let pool = self.clone();
                tokio::spawn(async move {
                    pool.after_cold_starts().await;
                    drop(release);
                });
            }
            match stub.restore(restorer, self.config.init_timeout).await {
                Ok((instance, mut phases)) => {
                    phases.claim = claim;
                    phases.spare = hit;
                    Ok((instance, phases))
                }
                Err(e) => {
                    // A spare is live until its restore fails (it is gone now).
                    self.state.lock().unwrap().live.remove(&id);
                    Err(PoolError::from(e))
                }
            }
        };
        let result = self
            .start_within_budget(key, spec, StartKind::Restore, room, measure, start)
            .await;
        if let Ok((_, phases)) = &result {
            tracing::debug!(
                function = %key.name,
                version = key.version,
                spare = phases.spare,
                claim_us = phases.claim.as_micros() as u64,
                seize_us = phases.seize.as_micros() as u64,
                mappings_us = phases.mappings.as_micros() as u64,
                state_us = phases.state.as_micros() as u64,
                resume_us = phases.resume.as_micros() as u64,
                restored_us = phases.restored.as_micros() as u64,
                premap_us = phases.premap.map(|d| d.as_micros() as u64),
                "restored"
            );
        }
        result
    }

    /// Records the working set of snapshot `snapshot_id` of `key` the way
    /// a deploy does (docs/cluster.md, "A working set recorded at
    /// deploy"): one copy restored in `uffd` mode whatever the version's
    /// memory mode, its page server filling each fault's page only
    /// ([`Stub::record_exactly`]), runs `invocations` (the warm-up events),
    /// has what it touched written as the snapshot's fetch set
    /// ([`crate::restore::working_set::fetch_path`]: the bucket's, not
    /// local copies' plan: they record their own), and is torn down.
    /// Within the memory budget like any start; never counted as a restore
    /// failure nor handed to the rebuild hook (the caller logs what
    /// failed). `Ok(Some(pages))`: the pages written; `Ok(None)`: the
    /// snapshot had a fetch set already.
    pub async fn record_working_set(
        &self,
        key: &FunctionKey,
        spec: &StartSpec,
        snapshot_id: &str,
        invocations: &[Invocation],
    ) -> Result<Option<usize>, PoolError> {
        let restorer = self.config.restorer.as_ref().ok_or(PoolError::NoSnapshot)?;
        let snapshot = crate::instance::SnapshotSource {
            id: snapshot_id.to_string(),
            mode: "uffd".to_string(),
        };
        let start = async {
            let mut stub = Stub::launch(
                &self.config.sandbox,
                &spec.launch,
                &snapshot,
                restorer,
                spec.logs.clone(),
            )
            .await?;
            stub.record_exactly();
            let (instance, phases) = stub.restore(restorer, self.config.init_timeout).await?;
            Ok::<_, PoolError>((instance, phases))
        };
        let (mut instance, _) = self
            .start_within_budget(key, spec, StartKind::Restore, Room::AnyIdle, false, start)
            .await?;
        let recorded = instance.invoke_and_record(invocations).await;
        self.discard(instance).await;
        Ok(recorded?)
    }

    /// The restorer, if cold starts may restore.
    pub fn restorer(&self) -> Option<&crate::instance::Restorer> {
        self.config.restorer.as_ref()
    }

    /// Restores that failed and fell back to booting, since the start.
    pub fn restore_failures(&self) -> u64 {
        self.shared.restore_failures.load(Ordering::Relaxed)
    }

    fn take_idle(&self, key: &FunctionKey) -> Option<Instance> {
        let mut st = self.state.lock().unwrap();
        st.last_used.insert(key.clone(), Instant::now());
        // Most recently used first: it is the most likely to be hot in cache.
        st.idle.get_mut(key)?.pop().map(|idle| idle.instance)
    }

    fn mark_busy(&self, key: &FunctionKey, delta: isize) {
        let mut st = self.state.lock().unwrap();
        let n = st.busy.entry(key.clone()).or_default();
        *n = n.saturating_add_signed(delta);
        if *n == 0 {
            st.busy.remove(key);
        }
    }

    /// Boots a new instance of `key`, within the memory budget (evicting
    /// idle instances of any function first when needed).
    pub async fn boot(&self, key: &FunctionKey, spec: &StartSpec) -> Result<Instance, PoolError> {
        self.boot_in(key, spec, Room::AnyIdle, true).await
    }

    /// [`Pool::boot`], making room as `room` allows.
    async fn boot_in(
        &self,
        key: &FunctionKey,
        spec: &StartSpec,
        room: Room,
        measure: bool,
    ) -> Result<Instance, PoolError> {
        let start = Instance::boot(
            &self.config.sandbox,
            &spec.launch,
            self.config.init_timeout,
            spec.logs.clone(),
        );
        self.start_within_budget(key, spec, StartKind::Boot, room, measure, async {
            start.await.map(|i| (i, ())).map_err(PoolError::from)
        })
        .await
        .map(|(i, ())| i)
    }

    /// Runs `start` (a boot or a restore of `key`) with the version's memory
    /// limit reserved from the budget (making room as `room` allows) and the
    /// start counted as booting; records the new instance as live and, with
    /// `measure`, has its memory measured in the background (see
    /// [`measure_after_start`]).
    async fn start_within_budget<T>(
        &self,
        key: &FunctionKey,
        spec: &StartSpec,
        kind: StartKind,
        room: Room,
        measure: bool,
        start: impl std::future::Future<Output = Result<(Instance, T), PoolError>>,
    ) -> Result<(Instance, T), PoolError> {
        let needed = spec.launch.limits.memory_bytes;
        self.reserve(needed, room).await?;
        *self
            .state
            .lock()
            .unwrap()
            .booting
            .entry(key.clone())
            .or_default() += 1;
        let result = start.await;
        let mut st = self.state.lock().unwrap();
        st.reserved -= needed;
        if let Some(n) = st.booting.get_mut(key) {
            *n -= 1;
            if *n == 0 {
                st.booting.remove(key);
            }
        }
        let (instance, extra) = result?;
        let mut live = accounting::Live::new(key.clone(), instance.cgroup().clone(), kind, needed);
        live.sampled = measure;
        st.live.insert(instance.id().to_string(), live);
        drop(st);
        if measure {
            self.spawn_sample(instance.id());
        }
        Ok((instance, extra))
    }

    /// Puts a healthy instance back to wait for work.
    pub async fn release(&self, key: &FunctionKey, instance: Instance) {
        let keep = {
            let st = self.state.lock().unwrap();
            !st.closed && !st.retired.contains(key)
        };
        if keep {
            let mut st = self.state.lock().unwrap();
            st.idle.entry(key.clone()).or_default().push(Idle {
                instance,
                since: Instant::now(),
            });
        } else {
            self.discard(instance).await;
        }
    }

    /// Stops an instance and forgets it.
    pub async fn discard(&self, instance: Instance) {
        self.state.lock().unwrap().live.remove(instance.id());
        let id = instance.id().to_string();
        let started = Instant::now();
        let destroyed = instance.destroy().await;
        tracing::debug!(sandbox = %id, teardown_us = started.elapsed().as_micros() as u64, "sandbox destroyed");
        if let Err(e) = destroyed {
            if let Some(suppressed) = crate::ratelimit::POOL_LOG.allow("cleanup") {
                tracing::warn!(sandbox = %id, error = %e, suppressed, "sandbox clean-up failed");
            }
        }
    }

    /// Forgets an instance now and stops it in the background ([`Pool::shutdown`]
    /// waits for such teardowns).
    fn discard_later(&self, instance: Instance) {
        self.state.lock().unwrap().live.remove(instance.id());
        self.shared.discarding.fetch_add(1, Ordering::SeqCst);
        let pool = self.clone();
        tokio::spawn(async move {
            pool.after_cold_starts().await;
            pool.discard(instance).await;
            pool.shared.discarding.fetch_sub(1, Ordering::SeqCst);
        });
    }

    /// Registers how `key` is kept: its keep-alive, `min_instances` (booted
    /// in the background from now on) and, when it has a snapshot, its
    /// spares (spares of a replaced snapshot are dropped).
    pub fn register(&self, key: &FunctionKey, spec: &StartSpec) {
        let stale = {
            let mut st = self.state.lock().unwrap();
            st.specs.insert(key.clone(), spec.clone());
            st.last_used.insert(key.clone(), Instant::now());
            st.spare_backoff.remove(key);
            let current = spec.snapshot.as_ref().map(|s| s.id.as_str());
            // Called from a page server's thread too (a lazy snapshot's
            // failed fetch): without a runtime to destroy them on, stale
            // spares are left for the refill's plan, which trims them.
            let runtime = tokio::runtime::Handle::try_current().is_ok();
            let stale = match st.spares.get_mut(key) {
                Some(list) if runtime => {
                    let (keep, stale): (Vec<Stub>, Vec<Stub>) = std::mem::take(list)
                        .into_iter()
                        .partition(|s| Some(s.snapshot_id()) == current && self.spare_current(s));
                    *list = keep;
                    stale
                }
                _ => Vec::new(),
            };
            for s in &stale {
                st.live.remove(s.id());
            }
            stale
        };
        if !stale.is_empty() {
            self.destroy_spares_later(stale);
        }
        self.shared.refill.notify_one();
    }

    /// Stops every instance of the versions of `name` and keeps none from now on.
    pub async fn retire_function(&self, name: &str) {
        let victims: (Vec<Instance>, Vec<Stub>) = {
            let mut st = self.state.lock().unwrap();
            let keys: Vec<FunctionKey> = st
                .live
                .values()
                .map(|l| l.key.clone())
                .chain(st.idle.keys().cloned())
                .chain(st.specs.keys().cloned())
                .chain(st.spares.keys().cloned())
                .filter(|k| k.name == name)
                .collect();
            let mut out = Vec::new();
            let mut stubs = Vec::new();
            for k in keys {
                st.specs.remove(&k);
                st.last_used.remove(&k);
                st.spare_backoff.remove(&k);
                if let Some(list) = st.idle.remove(&k) {
                    out.extend(list.into_iter().map(|i| i.instance));
                }
                stubs.extend(st.spares.remove(&k).unwrap_or_default());
                st.retired.insert(k);
            }
            for s in &stubs {
                st.live.remove(s.id());
            }
            st.gates.remove(name);
            (out, stubs)
        };
        let (victims, stubs) = victims;
        for instance in victims {
            self.discard(instance).await;
        }
        spares::destroy_all(stubs).await;
        self.wait_spare_launches(|k| k.name == name).await;
    }

    /// Stops the idle instances of one version (e.g. an older version).
    pub async fn retire(&self, key: &FunctionKey) {
        let (victims, stubs): (Vec<Instance>, Vec<Stub>) = {
            let mut st = self.state.lock().unwrap();
            st.specs.remove(key);
            st.last_used.remove(key);
            st.spare_backoff.remove(key);
            st.retired.insert(key.clone());
            let stubs = st.spares.remove(key).unwrap_or_default();
            for s in &stubs {
                st.live.remove(s.id());
            }
            let idle = st
                .idle
                .remove(key)
                .map(|l| l.into_iter().map(|i| i.instance).collect())
                .unwrap_or_default();
            (idle, stubs)
        };
        for instance in victims {
            self.discard(instance).await;
        }
        spares::destroy_all(stubs).await;
        self.wait_spare_launches(|k| k == key).await;
    }

    /// Keep-alive, `min_instances` and memory measurements: run
    /// periodically.
    async fn maintain(&self) {
        let now = Instant::now();
        let (expired, missing) = {
            let mut st = self.state.lock().unwrap();
            let st = &mut *st;
            let mut expired = Vec::new();
            for (key, list) in st.idle.iter_mut() {
                let (ttl, min) = st
                    .specs
                    .get(key)
                    .map_or((DEFAULT_KEEP_ALIVE, 0), |s| (s.keep_alive, s.min_instances));
                let busy = st.busy.get(key).copied().unwrap_or(0);
                // Oldest first; keep at least `min` instances in all.
                while let Some(first) = list.first() {
                    if list.len() + busy > min && now.duration_since(first.since) >= ttl {
                        expired.push(list.remove(0).instance);
                    } else {
                        break;
                    }
                }
            }
            st.idle.retain(|_, list| !list.is_empty());
            demand::forget_decayed(st, &self.config.spares, now);
            let missing = fill::claim_missing(st);
            (expired, missing)
        };
        for instance in expired {
            self.discard(instance).await;
        }
        // Spares whose launch failed are tried again once their back-off ends.
        self.shared.refill.notify_one();
        for key in missing {
            tokio::spawn(self.clone().fill(key));
        }
        // Not while a burst is served (the next tick measures): [`defer`].
        if !self.holding_for_cold_starts() {
            self.sample_if_due(now).await;
        }
    }

    /// Stops every instance and spare; the pool keeps none from now on.
    pub async fn shutdown(&self) {
        let victims: Vec<Instance> = {
            let mut st = self.state.lock().unwrap();
            st.closed = true;
            st.idle
                .drain()
                .flat_map(|(_, l)| l.into_iter().map(|i| i.instance))
                .collect()
        };
        // Teardowns mostly wait for the kernel (processes dying, cgroups
        // emptying): run several at once so a thousand idle copies stop in
        // seconds, not one after the other.
        let mut teardowns = tokio::task::JoinSet::new();
        for instance in victims {
            if teardowns.len() >= SHUTDOWN_TEARDOWNS {
                let _ = teardowns.join_next().await;
            }
            let pool = self.clone();
            teardowns.spawn(async move { pool.discard(instance).await });
        }
        while teardowns.join_next().await.is_some() {}
        self.drop_all_spares().await;
        // A spare launched meanwhile sees the pool closed and destroys itself.
        self.wait_spare_launches(|_| true).await;
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.shared.discarding.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}
