//! Prometheus metrics (`GET /metrics`), all prefixed `thaw_`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Labels of an invocation.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct InvocationLabels {
    /// Function name.
    pub function: String,
    /// `warm`, `restore`, `boot` or `none` (never got an instance).
    pub start: String,
    /// `ok`, or the error kind.
    pub outcome: String,
}

/// Labels by function and start kind.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StartLabels {
    /// Function name.
    pub function: String,
    /// `warm`, `restore` or `boot`.
    pub start: String,
}

/// Labels of a function's memory.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MemoryLabels {
    /// Function name.
    pub function: String,
    /// `rss`, `pss` or `uss`.
    pub kind: String,
}

/// Labels of a version's memory.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VersionMemoryLabels {
    /// Function name.
    pub function: String,
    /// Version number.
    pub version: String,
    /// `rss`, `pss` or `uss`.
    pub kind: String,
}

/// Labels of one instance's memory.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct InstanceMemoryLabels {
    /// Function name.
    pub function: String,
    /// Version number.
    pub version: String,
    /// Sandbox id.
    pub instance: String,
    /// How it started: `restore` or `boot`.
    pub start: String,
    /// `rss`, `pss` or `uss`.
    pub kind: String,
}

/// Labels by instance state.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    /// `idle`, `busy`, `booting` or `spare`.
    pub state: String,
}

/// Labels of a restore's claim of a stub sandbox.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClaimLabels {
    /// `hit` (a spare was ready) or `miss` (one was launched on the spot).
    pub result: String,
}

/// Labels of one version.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VersionLabels {
    /// Function name.
    pub function: String,
    /// Version number.
    pub version: String,
}

/// Labels of a restore phase.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabels {
    /// `claim`, `seize`, `mappings`, `state`, `resume` or `restored`.
    pub phase: String,
}

/// Labels of a shared-store upload.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// `ok` or `error`.
    pub result: String,
}

/// Labels of a torn-down copy's sandbox that was not recycled.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// `off`, `not_wanted` or `failed` (`pool::manager::NotRecycled`).
    pub reason: String,
}

/// A counter that follows a running total kept elsewhere.
#[derive(Debug, Default)]
struct Follow(std::sync::atomic::AtomicU64);

impl Follow {
    fn to(&self, counter: &Counter, total: u64) {
        let seen = self.0.swap(total, std::sync::atomic::Ordering::Relaxed);
        if total > seen {
            counter.inc_by(total - seen);
        }
    }
}

fn latency_histogram() -> Histogram {
    // 50 µs .. ~ 400 s.
    Histogram::new(exponential_buckets(0.000_05, 2.0, 23))
}

/// Every metric the server exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Invocations by function, start kind and outcome.
    pub invocations: Family<InvocationLabels, Counter>,
    /// Time to obtain an instance, seconds.
    pub start_latency: Family<StartLabels, Histogram, fn() -> Histogram>,
    /// Handler time, seconds.
    pub duration: Family<StartLabels, Histogram, fn() -> Histogram>,
    /// Instances by state.
    pub instances: Family<StateLabels, Gauge>,
    /// Memory counted against the budget, bytes.
    pub memory_bytes: Gauge,
    /// Memory budget, bytes.
    pub memory_budget_bytes: Gauge,
    /// Deployed functions.
    pub functions: Gauge,
    /// Memory of each function's instances by kind (rss, pss, uss), bytes.
    pub function_memory: Family<MemoryLabels, Gauge>,
    /// The same per version.
    pub version_memory: Family<VersionMemoryLabels, Gauge>,
    /// The same per instance.
    pub instance_memory: Family<InstanceMemoryLabels, Gauge>,
    /// Restores that failed and fell back to booting.
    pub restore_failures: Counter,
    restore_failures_seen: std::sync::atomic::AtomicU64,
    /// Spares ready now.
    pub spares: Gauge,
    /// Spares kept per version (the setting).
    pub spares_per_version: Gauge,
    /// Most spares in all (the setting).
    pub spares_max: Gauge,
    /// Spares each version with a snapshot should keep ready now: the
    /// setting, more after bursts (`pool::manager::demand`).
    pub spare_target: Family<VersionLabels, Gauge>,
    /// Restores by whether a spare was ready.
    pub spare_claims: Family<ClaimLabels, Counter>,
    spare_hits_seen: Follow,
    spare_misses_seen: Follow,
    /// Forced cold starts' sandboxes recycled into spares
    /// (`thaw_sandbox_recycled_total`).
    pub sandbox_recycled: Counter,
    sandbox_recycled_seen: Follow,
    /// Forced cold starts' restored sandboxes not recycled, by reason.
    pub sandbox_not_recycled: Family<ReasonLabels, Counter>,
    sandbox_not_recycled_seen: [Follow; 3],
    /// Restore phases, seconds.
    pub restore_phases: Family<PhaseLabels, Histogram, fn() -> Histogram>,
    /// CPU time of every sandbox, ended ones included, seconds
    /// (`thaw_sandbox_cpu_seconds_total`).
    pub sandbox_cpu: Counter<f64, std::sync::atomic::AtomicU64>,
    sandbox_cpu_seen_ns: std::sync::atomic::AtomicU64,
    /// Versions uploaded to the shared store, by result (docs/cluster.md).
    pub remote_uploads: Family<ResultLabels, Counter>,
    /// Uploads to the shared store not finished yet.
    pub remote_pending: Gauge,
    /// Bytes written to the shared store since the start.
    pub remote_bytes_sent: Gauge,
    /// 1 while the shared store answers, 0 while it does not.
    pub remote_store_up: Gauge,
    /// Unix time of the last request the shared store answered, seconds.
    pub remote_store_last_success: Gauge,
    /// Bytes read from the shared store since the start (encrypted).
    pub remote_bytes_fetched: Gauge,
    /// Snapshots downloaded by a reader node, by result.
    pub remote_fetches: Family<ResultLabels, Counter>,
    /// Lazy restores (a snapshot not local, pages from the shared store)
    /// by result: `ok` (the copy resumed), `boot` (a fetch failed before
    /// the resume: the cold start booted), `killed` (a fetch failed after
    /// the resume: the copy was killed).
    pub remote_lazy_restores: Family<ResultLabels, Counter>,
    /// Snapshots this node restores lazily now (not complete locally yet).
    pub remote_lazy_snapshots: Gauge,
    /// Bytes lazy restores' page sources read from packs before the first
    /// copy of their snapshot resumed (cluster::lazy_bytes).
    pub remote_lazy_fetched_before_resume: Gauge,
    /// The same after it (the copies' faults).
    pub remote_lazy_fetched_after_resume: Gauge,
    /// Stored bytes of the working sets of the snapshots restored lazily.
    pub remote_lazy_working_set_bytes: Gauge,
    /// Bytes the local page store takes (with `store_cache_mb`).
    pub store_cache_bytes: Gauge,
    /// `store_cache_mb` in bytes.
    pub store_cache_cap: Gauge,
    /// Local snapshots evicted to keep the store under its cap.
    pub store_cache_evictions: Counter,
    /// Runs of the bucket's gc on the writer, by result.
    pub remote_gc_runs: Family<ResultLabels, Counter>,
    /// Objects the writer's gc deleted from the bucket.
    pub remote_gc_deleted: Counter,
    /// Bytes the writer's gc deleted from the bucket.
    pub remote_gc_freed_bytes: Counter,
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("thaw");
        let invocations = Family::<InvocationLabels, Counter>::default();
        registry.register(
            "invocations",
            "Invocations by function, start kind and outcome",
            invocations.clone(),
        );
        let start_latency: Family<StartLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(latency_histogram);
        registry.register(
            "start_latency_seconds",
            "Time spent obtaining an instance, by start kind",
            start_latency.clone(),
        );
        let duration: Family<StartLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(latency_histogram);
        registry.register(
            "invocation_duration_seconds",
            "Handler time, by start kind",
            duration.clone(),
        );
        let instances = Family::<StateLabels, Gauge>::default();
        registry.register("instances", "Instances by state", instances.clone());
        let memory_bytes = Gauge::default();
        registry.register(
            "memory_used_bytes",
            "Memory counted against the budget: last measured PSS of every live instance plus the limits reserved by starting ones",
            memory_bytes.clone(),
        );
        let memory_budget_bytes = Gauge::default();
        registry.register(
            "memory_budget_bytes",
            "Memory budget of all instances",
            memory_budget_bytes.clone(),
        );
        let functions = Gauge::default();
        registry.register("functions", "Deployed functions", functions.clone());
        let function_memory = Family::<MemoryLabels, Gauge>::default();
        registry.register(
            "function_memory_bytes",
            "Memory of a function's instances: rss, pss (shared pages divided among sharers), uss (private)",
            function_memory.clone(),
        );
        let version_memory = Family::<VersionMemoryLabels, Gauge>::default();
        registry.register(
            "version_memory_bytes",
            "Memory of a version's instances: rss, pss, uss",
            version_memory.clone(),
        );
        let instance_memory = Family::<InstanceMemoryLabels, Gauge>::default();
        registry.register(
            "instance_memory_bytes",
            "Memory of one instance (all its sandbox's processes): rss, pss, uss",
            instance_memory.clone(),
        );
        let restore_failures = Counter::default();
        registry.register(
            "restore_failures",
            "Restores that failed and fell back to booting",
            restore_failures.clone(),
        );
        let spares = Gauge::default();
        registry.register(
            "spare_sandboxes",
            "Pre-made stub sandboxes ready for a cold start",
            spares.clone(),
        );
        let spares_per_version = Gauge::default();
        registry.register(
            "spare_sandboxes_per_version",
            "Pre-made stub sandboxes kept per version with a snapshot (setting)",
            spares_per_version.clone(),
        );
        let spares_max = Gauge::default();
        registry.register(
            "spare_sandboxes_max",
            "Most pre-made stub sandboxes in all (setting)",
            spares_max.clone(),
        );
        let spare_target = Family::<VersionLabels, Gauge>::default();
        registry.register(
            "spare_sandboxes_target",
            "Pre-made stub sandboxes a version with a snapshot should keep ready now: spare_sandboxes, more after bursts of cold starts (up to spare_sandboxes_burst, decaying), before the node cap and the memory budget",
            spare_target.clone(),
        );
        let spare_claims = Family::<ClaimLabels, Counter>::default();
        registry.register(
            "spare_claims",
            "Restores by whether a pre-made stub sandbox was ready (hit) or not (miss)",
            spare_claims.clone(),
        );
        let sandbox_recycled = Counter::default();
        registry.register(
            "sandbox_recycled",
            "Sandboxes of forced cold starts' copies reset and kept as the next spare of their version instead of being destroyed",
            sandbox_recycled.clone(),
        );
        let sandbox_not_recycled = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "sandbox_not_recycled",
            "Sandboxes of forced cold starts' copies destroyed instead of recycled, by reason: off (recycling off or an outbound sandbox), not_wanted (the version has its spares), failed (the reset failed)",
            sandbox_not_recycled.clone(),
        );
        let restore_phases: Family<PhaseLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(latency_histogram);
        registry.register(
            "restore_phase_seconds",
            "Phases of restores through the pool: claim of the stub sandbox, seize, mappings, state, resume, restored exchange",
            restore_phases.clone(),
        );
        let sandbox_cpu = Counter::<f64, std::sync::atomic::AtomicU64>::default();
        registry.register(
            "sandbox_cpu_seconds",
            "CPU time used by every sandbox (functions, restored copies, spares, their inits), those that ended included",
            sandbox_cpu.clone(),
        );
        let remote_uploads = Family::<ResultLabels, Counter>::default();
        registry.register(
            "remote_uploads",
            "Versions uploaded to the shared store after their capture, by result",
            remote_uploads.clone(),
        );
        let remote_pending = Gauge::default();
        registry.register(
            "remote_uploads_pending",
            "Uploads to the shared store not finished yet",
            remote_pending.clone(),
        );
        let remote_bytes_sent = Gauge::default();
        registry.register(
            "remote_sent_bytes",
            "Bytes written to the shared store since the server started (encrypted)",
            remote_bytes_sent.clone(),
        );
        let remote_store_up = Gauge::default();
        registry.register(
            "remote_store_up",
            "1 while the shared store answers, 0 while it does not (docs/cluster.md)",
            remote_store_up.clone(),
        );
        let remote_store_last_success = Gauge::default();
        registry.register(
            "remote_store_last_success_seconds",
            "Unix time of the last request the shared store answered",
            remote_store_last_success.clone(),
        );
        let remote_bytes_fetched = Gauge::default();
        registry.register(
            "remote_fetched_bytes",
            "Bytes read from the shared store since the server started (encrypted)",
            remote_bytes_fetched.clone(),
        );
        let remote_fetches = Family::<ResultLabels, Counter>::default();
        registry.register(
            "remote_snapshot_fetches",
            "Snapshots a reader node downloaded from the shared store, by result",
            remote_fetches.clone(),
        );
        let remote_lazy_restores = Family::<ResultLabels, Counter>::default();
        registry.register(
            "remote_lazy_restores",
            "Lazy restores from the shared store, by result: ok (resumed), boot (a fetch failed before the resume), killed (a fetch failed after it)",
            remote_lazy_restores.clone(),
        );
        let remote_lazy_snapshots = Gauge::default();
        registry.register(
            "remote_lazy_snapshots",
            "Snapshots this node restores lazily from the shared store now (not complete locally yet)",
            remote_lazy_snapshots.clone(),
        );
        let remote_lazy_fetched_before_resume = Gauge::default();
        registry.register(
            "remote_lazy_fetched_before_resume_bytes",
            "Bytes lazy restores read from the shared store's packs before the first copy of their snapshot resumed (its working set, pages the restore writes), since the start",
            remote_lazy_fetched_before_resume.clone(),
        );
        let remote_lazy_fetched_after_resume = Gauge::default();
        registry.register(
            "remote_lazy_fetched_after_resume_bytes",
            "Bytes lazy restores read from the shared store's packs for faults after their copy resumed (not the completion's pull), since the start",
            remote_lazy_fetched_after_resume.clone(),
        );
        let remote_lazy_working_set_bytes = Gauge::default();
        registry.register(
            "remote_lazy_working_set_bytes",
            "Stored bytes (sealed slots) of the working sets of the snapshots restored lazily since the start",
            remote_lazy_working_set_bytes.clone(),
        );
        let store_cache_bytes = Gauge::default();
        registry.register(
            "store_cache_bytes",
            "Bytes the local page store takes on disk, checked against store_cache_mb (docs/cluster.md)",
            store_cache_bytes.clone(),
        );
        let store_cache_cap = Gauge::default();
        registry.register(
            "store_cache_cap_bytes",
            "store_cache_mb in bytes (absent: no cap)",
            store_cache_cap.clone(),
        );
        let store_cache_evictions = Counter::default();
        registry.register(
            "store_cache_evictions",
            "Local snapshots evicted to keep the local store under store_cache_mb (fetched again when asked for)",
            store_cache_evictions.clone(),
        );
        let remote_gc_runs = Family::<ResultLabels, Counter>::default();
        registry.register(
            "remote_gc_runs",
            "Runs of the shared store's gc on the writer, by result",
            remote_gc_runs.clone(),
        );
        let remote_gc_deleted = Counter::default();
        registry.register(
            "remote_gc_deleted_objects",
            "Objects the writer's gc deleted from the shared store (nothing live referenced them)",
            remote_gc_deleted.clone(),
        );
        let remote_gc_freed_bytes = Counter::default();
        registry.register(
            "remote_gc_freed_bytes",
            "Bytes the writer's gc deleted from the shared store",
            remote_gc_freed_bytes.clone(),
        );
        Metrics {
            registry,
            store_cache_bytes,
            store_cache_cap,
            store_cache_evictions,
            remote_gc_runs,
            remote_gc_deleted,
            remote_gc_freed_bytes,
            remote_lazy_restores,
            remote_lazy_snapshots,
            remote_lazy_fetched_before_resume,
            remote_lazy_fetched_after_resume,
            remote_lazy_working_set_bytes,
            remote_store_up,
            remote_store_last_success,
            remote_bytes_fetched,
            remote_fetches,
            remote_uploads,
            remote_pending,
            remote_bytes_sent,
            sandbox_cpu,
            sandbox_cpu_seen_ns: std::sync::atomic::AtomicU64::new(0),
            spares,
            spares_per_version,
            spares_max,
            spare_target,
            spare_claims,
            spare_hits_seen: Follow::default(),
            spare_misses_seen: Follow::default(),
            sandbox_recycled,
            sandbox_recycled_seen: Follow::default(),
            sandbox_not_recycled,
            sandbox_not_recycled_seen: Default::default(),
            restore_phases,
            restore_failures,
            restore_failures_seen: std::sync::atomic::AtomicU64::new(0),
            invocations,
            start_latency,
            duration,
            instances,
            memory_bytes,
            memory_budget_bytes,
            functions,
            function_memory,
            version_memory,
            instance_memory,
        }
    }

    /// Brings [`Metrics::restore_failures`] up to `total`.
    pub fn set_restore_failures(&self, total: u64) {
        let seen = self
            .restore_failures_seen
            .swap(total, std::sync::atomic::Ordering::Relaxed);
        if total > seen {
            self.restore_failures.inc_by(total - seen);
        }
    }

    /// Brings [`Metrics::sandbox_cpu`] up to `total` (the cgroup counter of
    /// every sandbox, [`pool::cgroup::CgroupRoot::sandbox_cpu_time`]). The
    /// first call counts what sandboxes of this data directory used before
    /// this server started too (the counter lives as long as the cgroup).
    pub fn set_sandbox_cpu(&self, total: std::time::Duration) {
        let total_ns = u64::try_from(total.as_nanos()).unwrap_or(u64::MAX);
        let seen = self
            .sandbox_cpu_seen_ns
            .swap(total_ns, std::sync::atomic::Ordering::Relaxed);
        if total_ns > seen {
            self.sandbox_cpu.inc_by((total_ns - seen) as f64 / 1e9);
        }
    }

    /// Brings the spare claim counters up to the pool's totals.
    pub fn set_spare_claims(&self, hits: u64, misses: u64) {
        for (result, total, seen) in [
            ("hit", hits, &self.spare_hits_seen),
            ("miss", misses, &self.spare_misses_seen),
        ] {
            let counter = self.spare_claims.get_or_create(&ClaimLabels {
                result: result.into(),
            });
            seen.to(&counter, total);
        }
    }

    /// Brings the recycling counters up to the pool's totals.
    pub fn set_recycled(&self, recycled: u64, not: &[(&str, u64)]) {
        self.sandbox_recycled_seen
            .to(&self.sandbox_recycled, recycled);
        for ((reason, total), seen) in not.iter().zip(&self.sandbox_not_recycled_seen) {
            let counter = self.sandbox_not_recycled.get_or_create(&ReasonLabels {
                reason: reason.to_string(),
            });
            seen.to(&counter, *total);
        }
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
