//! The control plane's state and operations, independent of HTTP: deploy,
//! version routing, invoke, delete.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use pool::instance::{BootError, Invocation, Outcome};
use pool::logs::LogSink;
use pool::manager::{Counts, Failed, Served};
use pool::{Cold, FunctionKey, Pool, PoolError, StartKind, StartSpec};

use crate::logstore::LogStore;
use crate::metrics::{InvocationLabels, Metrics, StartLabels};
use crate::registry::{FunctionRecord, Registry, RegistryError, VersionRecord, VersionState};
use crate::snapshots::{self, SnapshotError, SnapshotInfo};
use crate::spec::FunctionSpec;

/// Server settings the service needs.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    /// Data directory.
    pub data_dir: PathBuf,
    /// The runtimes, installed in the data directory.
    pub runtimes: Arc<crate::runtime::Runtimes>,
    /// Installs dependency files into layers.
    pub deps: Arc<crate::build::Builder>,
    /// Largest request body, bytes.
    pub max_body: usize,
    /// Whether `x-thaw-cold` is honoured.
    pub allow_forced_cold: bool,
    /// How restored copies get their memory: `mmap` or `uffd`.
    pub memory_mode: String,
    /// Uploads captured versions to the shared store (docs/cluster.md).
    pub uploader: Option<crate::remote::Uploader>,
    /// This node's part among the nodes sharing the store (None: no store).
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
}

/// The error kinds of the API, with their HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// 400
    InvalidSpec,
    /// 400
    BadRequest,
    /// 401
    Unauthorized,
    /// 403
    Forbidden,
    /// 404
    NotFound,
    /// 409
    NoSnapshot,
    /// 413
    PayloadTooLarge,
    /// 429
    ConcurrencyLimit,
    /// 429
    MemoryBudget,
    /// 429
    RateLimited,
    /// 500
    HandlerError,
    /// 500
    Internal,
    /// 502
    InitError,
    /// 502
    FunctionCrashed,
    /// 503
    ShuttingDown,
    /// 503: a reader node cannot reach the store's writer.
    WriterUnavailable,
    /// 504
    Timeout,
}

impl ErrorKind {
    /// The `error` field of the JSON body.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::InvalidSpec => "invalid_spec",
            ErrorKind::BadRequest => "bad_request",
            ErrorKind::Unauthorized => "unauthorized",
            ErrorKind::Forbidden => "forbidden",
            ErrorKind::NotFound => "not_found",
            ErrorKind::NoSnapshot => "no_snapshot",
            ErrorKind::PayloadTooLarge => "payload_too_large",
            ErrorKind::ConcurrencyLimit => "concurrency_limit",
            ErrorKind::MemoryBudget => "memory_budget",
            ErrorKind::RateLimited => "rate_limited",
            ErrorKind::HandlerError => "handler_error",
            ErrorKind::Internal => "internal_error",
            ErrorKind::InitError => "init_error",
            ErrorKind::FunctionCrashed => "function_crashed",
            ErrorKind::ShuttingDown => "shutting_down",
            ErrorKind::WriterUnavailable => "writer_unavailable",
            ErrorKind::Timeout => "timeout",
        }
    }

    /// The HTTP status.
    pub fn status(self) -> u16 {
        match self {
            ErrorKind::InvalidSpec | ErrorKind::BadRequest => 400,
            ErrorKind::Unauthorized => 401,
            ErrorKind::Forbidden => 403,
            ErrorKind::NotFound => 404,
            ErrorKind::NoSnapshot => 409,
            ErrorKind::PayloadTooLarge => 413,
            ErrorKind::ConcurrencyLimit | ErrorKind::MemoryBudget | ErrorKind::RateLimited => 429,
            ErrorKind::HandlerError | ErrorKind::Internal => 500,
            ErrorKind::InitError | ErrorKind::FunctionCrashed => 502,
            ErrorKind::ShuttingDown | ErrorKind::WriterUnavailable => 503,
            ErrorKind::Timeout => 504,
        }
    }
}

/// An error answered to a client.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// Kind (and status).
    pub kind: ErrorKind,
    /// A sentence for the user.
    pub message: String,
    /// The invocation it concerns.
    pub invocation_id: Option<String>,
    /// Python traceback of a handler error.
    pub traceback: Option<String>,
    /// How the instance was obtained, when one was.
    pub start: Option<StartKind>,
    /// Time spent obtaining the instance.
    pub start_time: Option<Duration>,
}

impl ApiError {
    /// An error of `kind`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> ApiError {
        ApiError {
            kind,
            message: message.into(),
            invocation_id: None,
            traceback: None,
            start: None,
            start_time: None,
        }
    }
}

impl From<RegistryError> for ApiError {
    fn from(e: RegistryError) -> Self {
        match e {
            RegistryError::BadCode(m) => ApiError::new(ErrorKind::InvalidSpec, m),
            other => {
                tracing::error!(error = %other, "registry error");
                ApiError::new(
                    ErrorKind::Internal,
                    "storing the function failed; see the server log",
                )
            }
        }
    }
}

/// A version in memory: its record and how to start it.
#[derive(Debug, Clone)]
pub(crate) struct Version {
    pub(crate) record: VersionRecord,
    pub(crate) key: FunctionKey,
    pub(crate) start: StartSpec,
}

/// What `GET /functions/:id` answers.
#[derive(Debug, serde::Serialize)]
pub struct FunctionView {
    /// Name.
    pub name: String,
    /// Newest version.
    pub version: u64,
    /// State of the newest version.
    pub state: &'static str,
    /// Error of the newest version.
    pub error: Option<String>,
    /// Instance counts (all versions).
    pub instances: Counts,
    /// The snapshot (none until snapshots exist).
    pub snapshot: Option<serde_json::Value>,
    /// How the newest version's restored copies get their memory (`mmap`
    /// or `uffd`: its spec's `memory_mode`, else the server's).
    pub memory_mode: String,
    /// The working set recorded for the newest version's snapshot (`uffd`
    /// copies prefetch it), if any.
    pub working_set: Option<WorkingSetView>,
    /// The newest version's last failed restore and its rebuild (why cold
    /// starts boot instead of restoring), if any.
    pub restore_failure: Option<crate::rebuild::RestoreFailureNote>,
    /// Memory charged to its instances' cgroups, bytes.
    pub memory_bytes: u64,
    /// RSS, PSS and USS summed over its instances.
    pub memory: pool::memory::MemoryUse,
    /// Every live instance with its state and memory.
    pub instance_list: Vec<pool::manager::InstanceInfo>,
    /// The newest version's settings.
    pub spec: FunctionSpec,
    /// Every version, oldest first.
    pub versions: Vec<VersionView>,
}

/// A recorded working set in [`FunctionView`].
#[derive(Debug, serde::Serialize)]
pub struct WorkingSetView {
    /// Pages listed.
    pub pages: usize,
    /// The same in bytes.
    pub bytes: u64,
    /// Copies restored with it prefetched since the server started.
    pub copies_prefetched: u64,
    /// Pages their page servers filled before the copies resumed.
    pub pages_prefetched: u64,
}

/// One version in [`FunctionView`].
#[derive(Debug, serde::Serialize)]
pub struct VersionView {
    /// Number.
    pub version: u64,
    /// State.
    pub state: &'static str,
    /// Error.
    pub error: Option<String>,
    /// Deploy time, Unix ms.
    pub created_ms: u64,
    /// Instance counts.
    pub instances: Counts,
    /// RSS, PSS and USS summed over its instances (last measured).
    pub memory: pool::memory::MemoryUse,
    /// Its last failed restore, if any.
    pub restore_failure: Option<crate::rebuild::RestoreFailureNote>,
}

/// The control plane.
#[derive(Clone)]
pub struct Service {
    /// Settings.
    pub config: Arc<ServiceConfig>,
    /// Instances.
    pub pool: Pool,
    /// Durable records.
    pub registry: Registry,
    /// Function output.
    pub logs: LogStore,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// The content-addressed page store.
    pub store: Arc<snapshotter::store::PageStore>,
    pub(crate) functions: Arc<RwLock<BTreeMap<String, Vec<Version>>>>,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service")
            .field("config", &self.config)
            .finish()
    }
}

/// RSS, PSS and USS summed over `list`.
fn sum_memory(list: &[pool::manager::InstanceInfo]) -> pool::memory::MemoryUse {
    list.iter()
        .fold(pool::memory::MemoryUse::default(), |mut acc, i| {
            acc += i.memory;
            acc
        })
}

/// The warm-up events of `v` as invocations, `rounds` times over, each with
/// the index of its event (ids `warmup-N`, or `warmup-N-ROUND` with more
/// than one round).
pub(crate) fn warmup_invocations(v: &Version, rounds: usize) -> Vec<(usize, Invocation)> {
    let timeout = Duration::from_millis(v.record.spec.timeout_ms);
    let events = &v.record.spec.warmup;
    let all = events
        .iter()
        .enumerate()
        .cycle()
        .take(events.len() * rounds);
    all.enumerate()
        .map(|(n, (i, event))| {
            let round = n / events.len().max(1) + 1;
            let inv = Invocation {
                id: if rounds == 1 {
                    format!("warmup-{}", i + 1)
                } else {
                    format!("warmup-{}-{round}", i + 1)
                },
                function: v.key.name.clone(),
                version: v.key.version,
                timeout,
                headers: BTreeMap::from([("content-type".into(), "application/json".into())]),
                body: Bytes::from(serde_json::to_vec(event).expect("json value serialises")),
            };
            (i, inv)
        })
        .collect()
}

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A request to invoke.
#[derive(Debug)]
pub struct InvokeRequest {
    /// Function name.
    pub name: String,
    /// `?version=N`.
    pub version: Option<u64>,
    /// `x-thaw-cold`.
    pub cold: Option<String>,
    /// Headers passed to the handler.
    pub headers: BTreeMap<String, String>,
    /// The event.
    pub body: Bytes,
}

/// A served invocation, for the HTTP layer.
#[derive(Debug)]
pub struct InvokeAnswer {
    /// Invocation id.
    pub id: String,
    /// Status.
    pub status: u16,
    /// Headers from the handler.
    pub headers: BTreeMap<String, String>,
    /// Body.
    pub body: Bytes,
    /// Start kind.
    pub start: StartKind,
    /// Time to obtain the instance.
    pub start_time: Duration,
    /// Handler time.
    pub duration: Duration,
    /// Phases of the restore, when this invocation restored its instance.
    pub restore: Option<pool::instance::RestorePhases>,
}

impl Service {
    /// A service over an opened registry and pool; call [`Service::recover`]
    /// next.
    pub fn new(
        config: ServiceConfig,
        pool: Pool,
        registry: Registry,
        logs: LogStore,
        store: Arc<snapshotter::store::PageStore>,
    ) -> Service {
        let metrics = Arc::new(Metrics::new());
        metrics
            .memory_budget_bytes
            .set(pool.config().memory_budget as i64);
        let spares = pool.spare_config();
        metrics.spares_per_version.set(spares.per_version as i64);
        metrics.spares_max.set(spares.max_total as i64);
        Service {
            config: Arc::new(config),
            pool,
            registry,
            logs,
            metrics,
            store,
            functions: Arc::new(RwLock::new(BTreeMap::new())),
        }
    }

    /// Loads every stored function; versions that were deploying when the
    /// server stopped deploy again.
    pub fn recover(&self) -> Result<usize, RegistryError> {
        self.registry.sweep_root();
        let records = self.registry.load_all()?;
        let n = records.len();
        for record in records {
            let versions: Vec<Version> = record
                .versions
                .iter()
                .map(|v| self.version_of(&record.name, v.clone()))
                .collect();
            for v in &versions {
                self.keep(v);
            }
            // A reader node never warms up: the writer does (docs/cluster.md).
            let reader = self.config.cluster.as_ref().is_some_and(|c| !c.is_writer());
            let redo: Vec<Version> = versions
                .iter()
                .filter(|v| !reader && v.record.state.in_progress())
                .cloned()
                .collect();
            self.functions
                .write()
                .unwrap()
                .insert(record.name.clone(), versions);
            for v in redo {
                self.spawn_warmup(v);
            }
        }
        Ok(n)
    }

    /// Registers how the pool keeps `v`. Its `min_instances` copies wait
    /// until the version is ready, so that they restore its snapshot instead
    /// of booting during the warm-up.
    pub(crate) fn keep(&self, v: &Version) {
        if v.record.state.in_progress() {
            let mut start = v.start.clone();
            start.min_instances = 0;
            self.pool.register(&v.key, &start);
        } else {
            self.pool.register(&v.key, &v.start);
        }
    }

    fn log_sink(&self, name: &str) -> LogSink {
        let logs = self.logs.clone();
        let name = name.to_string();
        Arc::new(move |line| logs.push(&name, line))
    }

    pub(crate) fn version_of(&self, name: &str, record: VersionRecord) -> Version {
        let spec = &record.spec;
        let launch = self.config.runtimes.launch(
            spec,
            name,
            record.version,
            self.registry.code_dir(name, record.version),
        );
        let start = StartSpec {
            launch,
            keep_alive: Duration::from_secs(spec.keep_alive_s),
            concurrency: spec.concurrency,
            queue: spec.queue,
            min_instances: spec.min_instances,
            logs: self.log_sink(name),
            snapshot: record
                .snapshot
                .as_ref()
                .map(|s| pool::instance::SnapshotSource {
                    id: s.id.clone(),
                    mode: self.memory_mode(&record.spec),
                }),
        };
        Version {
            key: FunctionKey {
                name: name.to_string(),
                version: record.version,
                uid: record.uid,
            },
            record,
            start,
        }
    }

    /// Deploys a new version; returns at once (the version boots in the
    /// background).
    pub fn deploy(
        &self,
        spec: FunctionSpec,
        files: &BTreeMap<String, String>,
        archive: Option<&[u8]>,
    ) -> Result<FunctionView, ApiError> {
        let name = spec.name.clone();
        self.config
            .runtimes
            .check_available(&spec.runtime)
            .map_err(|e| ApiError::new(ErrorKind::InvalidSpec, e.to_string()))?;
        // One deploy or delete of a name at a time: the number chosen here
        // is in the record before the next deploy chooses one. (Blocking:
        // callers run this on a blocking thread.)
        let _serial = self.registry.name_lock(&name).blocking_lock_owned();
        let number = {
            let map = self.functions.read().unwrap();
            map.get(&name)
                .and_then(|v| v.last())
                .map_or(1, |v| v.record.version + 1)
        };
        self.registry.write_code(&name, number, files, archive)?;
        let record = VersionRecord {
            version: number,
            uid: rand::random(),
            spec,
            state: VersionState::Deploying,
            error: None,
            snapshot: None,
            created_ms: now_ms(),
            restore_failure: None,
            rebuilds: 0,
            layer: None,
        };
        let version = self.version_of(&name, record);
        {
            let mut map = self.functions.write().unwrap();
            let list = map.entry(name.clone()).or_default();
            list.push(version.clone());
            if let Err(e) = self.save_versions(&name, list) {
                list.pop();
                if list.is_empty() {
                    map.remove(&name);
                }
                return Err(e.into());
            }
        }
        self.keep(&version);
        tracing::info!(function = %name, version = number, "deployed");
        self.spawn_warmup(version);
        self.view(&name)
            .ok_or_else(|| ApiError::new(ErrorKind::NotFound, "function vanished"))
    }

    /// Boots the version's first instance, runs its warm-up events, captures
    /// it and marks the version ready (or failed).
    fn spawn_warmup(&self, version: Version) {
        let svc = self.clone();
        tokio::spawn(async move {
            let (state, error, snapshot) = svc.warm_up(&version).await;
            let upload = snapshot.as_ref().map(|s| crate::remote::VersionUpload {
                name: version.key.name.clone(),
                version: version.key.version,
                uid: version.key.uid,
                snapshot: s.id.clone(),
            });
            svc.set_state(&version.key, state, error, snapshot);
            if let (Some(uploader), Some(upload)) = (&svc.config.uploader, upload) {
                uploader.spawn(svc.metrics.clone(), upload);
            }
        });
    }

    async fn warm_up(&self, v: &Version) -> (VersionState, Option<String>, Option<SnapshotInfo>) {
        // A dependency file: `building` while its layer is installed or
        // found in the cache (docs/dependencies.md).
        if let Err(e) = self.install_dependencies(v).await {
            tracing::warn!(function = %v.key.name, version = v.key.version, error = %e, "installing dependencies failed");
            return (VersionState::Failed, Some(e.to_string()), None);
        }
        // Compile what the runtime compiles (Java sources) before the first
        // boot; its tool's message fails the version.
        if let Err(e) = self
            .config
            .runtimes
            .build(&v.record.spec.runtime, &v.start.launch.code_dir)
            .await
        {
            tracing::warn!(function = %v.key.name, version = v.key.version, error = %e, "build failed");
            return (VersionState::Failed, Some(e.to_string()), None);
        }
        let instance = match self.pool.boot(&v.key, &v.start).await {
            Ok(i) => i,
            Err(PoolError::Boot(BootError::Init {
                error_type,
                message,
                ..
            })) => {
                return (
                    VersionState::Failed,
                    Some(format!("{error_type}: {message}")),
                    None,
                )
            }
            Err(e) => {
                // Not the handler's fault (memory budget, sandbox): the version
                // stays servable and later invocations boot it again.
                tracing::warn!(function = %v.key.name, version = v.key.version, error = %e, "first boot failed");
                return (
                    VersionState::Ready,
                    Some(format!("first boot failed: {e}")),
                    None,
                );
            }
        };
        self.set_progress(&v.key, VersionState::Warming);
        let instance = match self.run_warmup(v, instance).await {
            Ok(i) => i,
            Err(message) => return (VersionState::Failed, Some(message), None),
        };
        if !v.record.spec.snapshot {
            // Asked for no snapshot: the warmed instance stays on as a warm
            // one and cold starts boot.
            self.pool.release(&v.key, instance).await;
            return (VersionState::Ready, None, None);
        }
        self.set_progress(&v.key, VersionState::Snapshotting);
        let id = snapshots::snapshot_id(&v.key.name, v.key.version, v.key.uid);
        let result = self.snapshot(v, &instance, id).await;
        // The captured original stays on as a warm instance.
        self.pool.release(&v.key, instance).await;
        match result {
            Ok(info) => {
                // Before the version is ready and its upload starts: the
                // upload sends it (docs/cluster.md).
                self.record_deploy_working_set(v, &info).await;
                (VersionState::Ready, None, Some(info))
            }
            Err(e) => {
                tracing::warn!(function = %v.key.name, version = v.key.version, error = %e, "snapshot failed; the version boots instead");
                (
                    VersionState::Ready,
                    Some(format!("snapshot failed: {e}")),
                    None,
                )
            }
        }
    }

    /// Installs the version's dependency file, if its code has one, into a
    /// layer linked into its code folder.
    async fn install_dependencies(&self, v: &Version) -> Result<(), crate::build::DepsError> {
        let runtimes = &self.config.runtimes;
        let code = &v.start.launch.code_dir;
        if !crate::build::Builder::has_dependencies(runtimes, &v.record.spec.runtime, code) {
            return Ok(());
        }
        self.set_progress(&v.key, VersionState::Building);
        let logs = self.log_sink(&v.key.name);
        let installed = self
            .config
            .deps
            .install(runtimes, &v.record.spec.runtime, code, &logs)
            .await?;
        let key = match installed {
            crate::build::Installed::Reused(key) | crate::build::Installed::Built(key) => key,
            crate::build::Installed::Nothing => return Ok(()),
        };
        if let Some((_, deps)) = runtimes.dependencies(&v.record.spec.runtime) {
            // Named in the record: the writer of a shared store uploads the
            // layer, readers install it (docs/cluster.md).
            let layer = crate::build::layer::LayerRef {
                key,
                into: deps.into.clone(),
            };
            let mut map = self.functions.write().unwrap();
            if let Some(v) = map
                .get_mut(&v.key.name)
                .and_then(|list| list.iter_mut().find(|o| o.key == v.key))
            {
                v.record.layer = Some(layer);
            }
        }
        Ok(())
    }

    /// Runs the version's warm-up events on a fresh instance. On error the
    /// instance is released or discarded and the message says which event
    /// failed and how.
    pub(crate) async fn run_warmup(
        &self,
        v: &Version,
        mut instance: pool::instance::Instance,
    ) -> Result<pool::instance::Instance, String> {
        let rounds = v.record.spec.warmup_repeat.max(1) as usize;
        for (i, inv) in warmup_invocations(v, rounds) {
            match instance.invoke(&inv).await {
                Ok(Outcome::Answer { .. }) => {}
                Ok(Outcome::HandlerError {
                    error_type,
                    message,
                    ..
                }) => {
                    self.pool.release(&v.key, instance).await;
                    return Err(format!(
                        "warm-up event {} raised {error_type}: {message}",
                        i + 1
                    ));
                }
                Err(e) => {
                    self.pool.discard(instance).await;
                    return Err(format!("warm-up event {} failed: {e}", i + 1));
                }
            }
        }
        Ok(instance)
    }

    /// Captures an idle instance of `v`.
    pub(crate) async fn snapshot(
        &self,
        v: &Version,
        instance: &pool::instance::Instance,
        id: String,
    ) -> Result<SnapshotInfo, SnapshotError> {
        let pid = instance
            .runtime_host_pid()
            .ok_or(SnapshotError::NoProcess)?;
        let store = self.store.clone();
        let dir = snapshots::snapshots_dir(&self.config.data_dir);
        let connections = v.record.spec.on_snapshot_connections.policy();
        let info = tokio::task::spawn_blocking(move || {
            snapshots::take(&store, &dir, &id, pid, connections)
        })
        .await
        .map_err(|e| SnapshotError::Task(e.to_string()))??;
        tracing::info!(
            function = %v.key.name,
            version = v.key.version,
            snapshot = %info.id,
            stored_pages = info.stored_pages,
            new_pages = info.new_pages,
            capture_ms = info.capture_us / 1000,
            "snapshot taken"
        );
        Ok(info)
    }

    /// Records a step on the way to ready (in memory; a restart redoes the
    /// whole warm-up anyway).
    fn set_progress(&self, key: &FunctionKey, state: VersionState) {
        let mut map = self.functions.write().unwrap();
        if let Some(v) = map
            .get_mut(&key.name)
            .and_then(|list| list.iter_mut().find(|v| v.key == *key))
        {
            v.record.state = state;
        }
    }

    fn set_state(
        &self,
        key: &FunctionKey,
        state: VersionState,
        error: Option<String>,
        snapshot: Option<SnapshotInfo>,
    ) {
        let older: Vec<FunctionKey>;
        {
            let mut map = self.functions.write().unwrap();
            let Some(list) = map.get_mut(&key.name) else {
                return;
            };
            let Some(v) = list.iter_mut().find(|v| v.key == *key) else {
                return;
            };
            v.record.state = state;
            v.record.error = error.clone();
            v.start.snapshot = snapshot.as_ref().map(|s| pool::instance::SnapshotSource {
                id: s.id.clone(),
                mode: self.memory_mode(&v.record.spec),
            });
            if let (Some(cluster), Some(_)) = (&self.config.cluster, &snapshot) {
                // A capture grew the local store: the cache checks its cap.
                cluster.cache.poke();
            }
            v.record.snapshot = snapshot;
            self.keep(v);
            self.save_or_log(&key.name, list);
            older = if state == VersionState::Ready {
                list.iter()
                    .filter(|o| o.key.version < key.version)
                    .map(|o| o.key.clone())
                    .collect()
            } else {
                Vec::new()
            };
        }
        match &error {
            Some(e) => {
                tracing::warn!(function = %key.name, version = key.version, state = state.as_str(), error = %e, "version deployed with an error")
            }
            None => {
                tracing::info!(function = %key.name, version = key.version, state = state.as_str(), "version deployed")
            }
        }
        // Idle instances of older versions are no longer needed.
        let pool = self.pool.clone();
        tokio::spawn(async move {
            for k in older {
                pool.retire(&k).await;
            }
        });
    }

    /// Writes the record of function `name` with these versions.
    pub(crate) fn save_versions(&self, name: &str, list: &[Version]) -> Result<(), RegistryError> {
        self.registry.save(&FunctionRecord {
            name: name.to_string(),
            versions: list.iter().map(|v| v.record.clone()).collect(),
        })
    }

    /// [`Service::save_versions`], logging a failure (the change stays in
    /// memory; the next save writes it).
    pub(crate) fn save_or_log(&self, name: &str, list: &[Version]) {
        if let Err(e) = self.save_versions(name, list) {
            tracing::error!(function = %name, error = %e, "saving the record failed");
        }
    }

    /// Every function, by name.
    pub fn list(&self) -> Vec<FunctionView> {
        let names: Vec<String> = self.functions.read().unwrap().keys().cloned().collect();
        names.iter().filter_map(|n| self.view(n)).collect()
    }

    /// One function.
    pub fn view(&self, name: &str) -> Option<FunctionView> {
        let map = self.functions.read().unwrap();
        let versions = map.get(name)?;
        let latest = versions.last()?;
        let mut total = Counts::default();
        let mut memory = 0;
        let mut instance_list = Vec::new();
        let views = versions
            .iter()
            .map(|v| {
                let c = self.pool.counts(&v.key);
                total.idle += c.idle;
                total.busy += c.busy;
                total.booting += c.booting;
                total.spare += c.spare;
                total.premapping += c.premapping;
                memory += self.pool.memory_of(&v.key);
                let list = self.pool.instances(&v.key);
                let used = sum_memory(&list);
                instance_list.extend(list);
                VersionView {
                    version: v.record.version,
                    state: v.record.state.as_str(),
                    error: v.record.error.clone(),
                    created_ms: v.record.created_ms,
                    instances: c,
                    memory: used,
                    restore_failure: v.record.restore_failure.clone(),
                }
            })
            .collect();
        Some(FunctionView {
            name: name.to_string(),
            version: latest.record.version,
            state: latest.record.state.as_str(),
            error: latest.record.error.clone(),
            instances: total,
            snapshot: latest
                .record
                .snapshot
                .as_ref()
                .map(|s| serde_json::to_value(s).expect("snapshot info serialises")),
            memory_mode: self.memory_mode(&latest.record.spec),
            working_set: latest.record.snapshot.as_ref().and_then(|s| {
                let r = self.pool.restorer()?;
                let w = r.working_set(&s.id)?;
                let used = r.prefetch_stats(&s.id);
                Some(WorkingSetView {
                    pages: w.len(),
                    bytes: w.len() as u64 * 4096,
                    copies_prefetched: used.copies,
                    pages_prefetched: used.pages,
                })
            }),
            restore_failure: latest.record.restore_failure.clone(),
            memory_bytes: memory,
            memory: sum_memory(&instance_list),
            instance_list,
            spec: latest.record.spec.clone(),
            versions: views,
        })
    }

    /// Deletes a function: stops its instances, frees its files and logs.
    pub async fn delete(&self, name: &str) -> Result<(), ApiError> {
        let _serial = self.registry.name_lock(name).lock_owned().await;
        let removed = self.functions.write().unwrap().remove(name);
        let Some(versions) = removed else {
            return Err(ApiError::new(
                ErrorKind::NotFound,
                format!("no function named {name:?}"),
            ));
        };
        self.pool.retire_function(name).await;
        let dir = snapshots::snapshots_dir(&self.config.data_dir);
        for v in &versions {
            if let Some(s) = &v.record.snapshot {
                snapshots::remove(&self.store, &dir, &s.id);
            }
        }
        self.registry.remove(name)?;
        self.logs.remove(name);
        tracing::info!(function = %name, "deleted");
        // Its code folders held links to its layers: drop the unused ones.
        let deps = self.config.deps.clone();
        let _ = tokio::task::spawn_blocking(move || deps.remove_unused_layers()).await;
        Ok(())
    }

    /// Picks the version an invocation goes to.
    fn route(&self, name: &str, version: Option<u64>) -> Result<Version, ApiError> {
        let map = self.functions.read().unwrap();
        let versions = map.get(name).ok_or_else(|| {
            ApiError::new(ErrorKind::NotFound, format!("no function named {name:?}"))
        })?;
        let failed = |v: &Version| {
            ApiError::new(
                ErrorKind::InitError,
                format!(
                    "version {} of {name:?} failed to start: {}",
                    v.record.version,
                    v.record.error.as_deref().unwrap_or("unknown error")
                ),
            )
        };
        if let Some(n) = version {
            let v = versions
                .iter()
                .find(|v| v.record.version == n)
                .ok_or_else(|| {
                    ApiError::new(ErrorKind::NotFound, format!("{name:?} has no version {n}"))
                })?;
            if v.record.state == VersionState::Failed {
                return Err(failed(v));
            }
            return Ok(v.clone());
        }
        let latest = versions.last().expect("a function has a version");
        match latest.record.state {
            VersionState::Ready => Ok(latest.clone()),
            // A new version still deploying, or one that failed: the newest
            // ready version keeps serving.
            VersionState::Deploying
            | VersionState::Building
            | VersionState::Warming
            | VersionState::Snapshotting
            | VersionState::Failed => {
                if let Some(ready) = versions
                    .iter()
                    .rev()
                    .find(|v| v.record.state == VersionState::Ready)
                {
                    Ok(ready.clone())
                } else if latest.record.state.in_progress() {
                    Ok(latest.clone())
                } else {
                    Err(failed(latest))
                }
            }
        }
    }

    /// Serves one invocation.
    ///
    /// The invocation runs in a task of its own: a client that goes away
    /// does not cut it short, so the instance finishes its work and returns
    /// to the pool (or is cleaned up) as usual.
    pub async fn invoke(&self, req: InvokeRequest) -> Result<InvokeAnswer, ApiError> {
        let id = uuid::Uuid::new_v4().to_string();
        let svc = self.clone();
        let task_id = id.clone();
        let result = tokio::spawn(async move { svc.invoke_inner(&task_id, req).await })
            .await
            .unwrap_or_else(|e| {
                Err(ApiError::new(
                    ErrorKind::Internal,
                    format!("the invocation task failed: {e}"),
                ))
            });
        result.map_err(|mut e| {
            e.invocation_id = Some(id.clone());
            e
        })
    }

    /// The memory mode of copies of a version with this spec.
    fn memory_mode(&self, spec: &FunctionSpec) -> String {
        spec.memory_mode
            .clone()
            .unwrap_or_else(|| self.config.memory_mode.clone())
    }

    async fn invoke_inner(&self, id: &str, req: InvokeRequest) -> Result<InvokeAnswer, ApiError> {
        if req
            .headers
            .contains_key(pool::instance::FAIL_PAGE_SERVER_HEADER)
            && !self.config.allow_forced_cold
        {
            return Err(ApiError::new(
                ErrorKind::Forbidden,
                format!(
                    "{} (a test switch) needs a server started with --allow-forced-cold",
                    pool::instance::FAIL_PAGE_SERVER_HEADER
                ),
            ));
        }
        let cold = match req.cold.as_deref() {
            None => None,
            Some(kind) if !self.config.allow_forced_cold => {
                return Err(ApiError::new(
                    ErrorKind::Forbidden,
                    format!("x-thaw-cold: {kind} needs a server started with --allow-forced-cold"),
                ))
            }
            Some("boot") => Some(Cold::Boot),
            Some("restore") => Some(Cold::Restore),
            Some(other) => {
                return Err(ApiError::new(
                    ErrorKind::BadRequest,
                    format!("x-thaw-cold must be \"boot\" or \"restore\", got {other:?}"),
                ))
            }
        };
        let version = self.route(&req.name, req.version)?;
        let inv = Invocation {
            id: id.to_string(),
            function: req.name.clone(),
            version: version.key.version,
            timeout: Duration::from_millis(version.record.spec.timeout_ms),
            headers: req.headers,
            body: req.body,
        };
        if let Some(cluster) = &self.config.cluster {
            // An evicted snapshot is fetched again (cluster/cache.rs).
            cluster.ask_for_evicted(self, &version.key);
        }
        let result = self
            .pool
            .invoke(&version.key, &version.start, &inv, cold)
            .await;
        if let (Some(cluster), Some(s), Ok(served)) =
            (&self.config.cluster, &version.start.snapshot, &result)
        {
            if served.start == StartKind::Restore {
                cluster.cache.touch(&s.id);
            }
        }
        self.account(&req.name, &result);
        match result {
            Ok(Served {
                outcome,
                start,
                start_time,
                restore,
            }) => match outcome {
                Outcome::Answer {
                    status,
                    headers,
                    body,
                    duration,
                } => Ok(InvokeAnswer {
                    id: id.to_string(),
                    status,
                    headers,
                    body,
                    start,
                    start_time,
                    duration,
                    restore,
                }),
                Outcome::HandlerError {
                    error_type,
                    message,
                    traceback,
                    ..
                } => {
                    let mut e =
                        ApiError::new(ErrorKind::HandlerError, format!("{error_type}: {message}"));
                    e.traceback = Some(traceback);
                    e.start = Some(start);
                    e.start_time = Some(start_time);
                    Err(e)
                }
            },
            Err(Failed {
                error,
                start,
                start_time,
            }) => {
                let (kind, message) = match &error {
                    PoolError::ConcurrencyLimit { .. } => {
                        (ErrorKind::ConcurrencyLimit, error.to_string())
                    }
                    PoolError::MemoryBudget { .. } => (ErrorKind::MemoryBudget, error.to_string()),
                    PoolError::Boot(BootError::Init {
                        error_type,
                        message,
                        ..
                    }) => (
                        ErrorKind::InitError,
                        format!("the handler could not be loaded: {error_type}: {message}"),
                    ),
                    PoolError::Boot(BootError::Launch(e)) => {
                        tracing::error!(function = %req.name, error = %e, "sandbox launch failed");
                        (
                            ErrorKind::Internal,
                            format!("starting a sandbox failed: {e}"),
                        )
                    }
                    PoolError::Boot(e) => (ErrorKind::FunctionCrashed, e.to_string()),
                    PoolError::Invoke(pool::instance::InvokeError::Timeout(d)) => (
                        ErrorKind::Timeout,
                        format!(
                            "the function did not answer within {} ms and was stopped",
                            d.as_millis()
                        ),
                    ),
                    PoolError::Invoke(e) => (ErrorKind::FunctionCrashed, e.to_string()),
                    PoolError::ShuttingDown => (ErrorKind::ShuttingDown, error.to_string()),
                    PoolError::NoSnapshot => (ErrorKind::NoSnapshot, error.to_string()),
                    PoolError::Restore(e) => (ErrorKind::FunctionCrashed, e.to_string()),
                };
                let mut e = ApiError::new(kind, message);
                e.start = start;
                e.start_time = Some(start_time);
                Err(e)
            }
        }
    }

    fn account(&self, name: &str, result: &Result<Served, Failed>) {
        let (start, outcome) = match result {
            Ok(s) => (
                Some(s.start),
                match s.outcome {
                    Outcome::Answer { .. } => "ok",
                    Outcome::HandlerError { .. } => "handler_error",
                },
            ),
            Err(f) => (
                f.start,
                match &f.error {
                    PoolError::ConcurrencyLimit { .. } => "concurrency_limit",
                    PoolError::MemoryBudget { .. } => "memory_budget",
                    PoolError::Boot(BootError::Init { .. }) => "init_error",
                    PoolError::Invoke(pool::instance::InvokeError::Timeout(_)) => "timeout",
                    PoolError::ShuttingDown => "shutting_down",
                    PoolError::NoSnapshot => "no_snapshot",
                    _ => "function_crashed",
                },
            ),
        };
        let start_str = start.map_or("none", StartKind::as_str).to_string();
        self.metrics
            .invocations
            .get_or_create(&InvocationLabels {
                function: name.to_string(),
                start: start_str.clone(),
                outcome: outcome.to_string(),
            })
            .inc();
        if let Some(phases) = result.as_ref().ok().and_then(|s| s.restore) {
            for (phase, d) in phases.named() {
                self.metrics
                    .restore_phases
                    .get_or_create(&crate::metrics::PhaseLabels {
                        phase: phase.into(),
                    })
                    .observe(d.as_secs_f64());
            }
        }
        if let Ok(s) = result {
            let labels = StartLabels {
                function: name.to_string(),
                start: start_str,
            };
            self.metrics
                .start_latency
                .get_or_create(&labels)
                .observe(s.start_time.as_secs_f64());
            let d = match &s.outcome {
                Outcome::Answer { duration, .. } | Outcome::HandlerError { duration, .. } => {
                    *duration
                }
            };
            self.metrics
                .duration
                .get_or_create(&labels)
                .observe(d.as_secs_f64());
        }
    }

    /// Refreshes gauges before a scrape.
    pub fn refresh_gauges(&self) {
        let c = self.pool.total_counts();
        self.metrics.spares.set(c.spare as i64);
        self.metrics.spare_target.clear();
        for (key, target) in self.pool.spare_targets() {
            self.metrics
                .spare_target
                .get_or_create(&crate::metrics::VersionLabels {
                    function: key.name,
                    version: key.version.to_string(),
                })
                .set(target as i64);
        }
        self.metrics
            .teardowns_in_flight
            .set(self.pool.teardowns_in_flight() as i64);
        self.metrics
            .spare_launches_in_flight
            .set(self.pool.spare_launches_in_flight() as i64);
        self.metrics
            .set_spare_claims(self.pool.spare_hits(), self.pool.spare_misses());
        self.metrics.set_recycled(
            self.pool.sandboxes_recycled(),
            &self
                .pool
                .sandboxes_not_recycled()
                .map(|(why, n)| (why.as_str(), n)),
        );
        for (state, n) in [
            ("idle", c.idle),
            ("busy", c.busy),
            ("booting", c.booting),
            ("spare", c.spare),
        ] {
            self.metrics
                .instances
                .get_or_create(&crate::metrics::StateLabels {
                    state: state.into(),
                })
                .set(n as i64);
        }
        self.metrics
            .memory_bytes
            .set(self.pool.memory_used() as i64);
        self.metrics
            .functions
            .set(self.functions.read().unwrap().len() as i64);
        self.metrics
            .set_restore_failures(self.pool.restore_failures());
        if let Some(cpu) = self.pool.config().sandbox.cgroups.sandbox_cpu_time() {
            self.metrics.set_sandbox_cpu(cpu);
        }
        self.metrics.function_memory.clear();
        self.metrics.version_memory.clear();
        self.metrics.instance_memory.clear();
        for view in self.list() {
            for (kind, value) in view.memory.kinds() {
                self.metrics
                    .function_memory
                    .get_or_create(&crate::metrics::MemoryLabels {
                        function: view.name.clone(),
                        kind: kind.into(),
                    })
                    .set(value as i64);
            }
            for v in &view.versions {
                for (kind, value) in v.memory.kinds() {
                    self.metrics
                        .version_memory
                        .get_or_create(&crate::metrics::VersionMemoryLabels {
                            function: view.name.clone(),
                            version: v.version.to_string(),
                            kind: kind.into(),
                        })
                        .set(value as i64);
                }
            }
            for i in &view.instance_list {
                for (kind, value) in i.memory.kinds() {
                    self.metrics
                        .instance_memory
                        .get_or_create(&crate::metrics::InstanceMemoryLabels {
                            function: view.name.clone(),
                            version: i.version.to_string(),
                            instance: i.id.clone(),
                            start: i.start.into(),
                            kind: kind.into(),
                        })
                        .set(value as i64);
                }
            }
        }
    }

    /// Names of functions, for tests.
    pub fn names(&self) -> Vec<String> {
        self.functions.read().unwrap().keys().cloned().collect()
    }
}
