//! An instance: one runtime process in one sandbox, serving one invocation
//! at a time over the runtime protocol (docs/protocol.md).

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tokio::net::unix::pipe;
use tokio::time::{timeout, Instant};

use crate::logs::{LogSink, LogTap};
use crate::protocol::{read_frame_limited, write_frame, FromRuntime, ProtocolError, ToRuntime};
use crate::sandbox::{LaunchError, LaunchSpec, Sandbox, SandboxConfig, SandboxExit};

mod recycle;
pub use recycle::RecycleFailure;

/// Largest answer body accepted from a runtime.
pub const MAX_ANSWER: usize = 64 << 20;

/// Test only: an invocation carrying this header makes the page server of
/// a `uffd` copy fail at its next fault (the copy is killed, the invocation
/// crashes). The server passes it on only when started with
/// `--allow-forced-cold`.
pub const FAIL_PAGE_SERVER_HEADER: &str = "x-thaw-test-fail-page-server";

/// How a start or an invocation ended the process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrashReport {
    /// How the function process ended, if known.
    pub exit: Option<SandboxExit>,
    /// Whether the kernel's OOM killer killed it.
    pub oom: bool,
    /// A sentence for the user.
    pub reason: String,
}

/// Errors of booting an instance.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// The sandbox could not be made.
    #[error(transparent)]
    Launch(#[from] LaunchError),
    /// Loading the handler failed.
    #[error("{error_type}: {message}")]
    Init {
        /// Exception type.
        error_type: String,
        /// Exception message.
        message: String,
        /// Traceback.
        traceback: String,
    },
    /// The runtime died before it was ready.
    #[error("the runtime died during start: {}", .0.reason)]
    Crashed(CrashReport),
    /// The runtime was not ready in time.
    #[error("the runtime was not ready within {0:?}")]
    Timeout(Duration),
    /// The runtime broke the protocol.
    #[error("runtime protocol: {0}")]
    Protocol(ProtocolError),
}

/// One request to run the handler.
#[derive(Debug, Clone)]
pub struct Invocation {
    /// Invocation id.
    pub id: String,
    /// Function name.
    pub function: String,
    /// Version.
    pub version: u64,
    /// Time allowed for the handler.
    pub timeout: Duration,
    /// Request headers passed on.
    pub headers: BTreeMap<String, String>,
    /// The event.
    pub body: Bytes,
}

/// What a finished invocation produced (the instance stays usable).
#[derive(Debug, Clone)]
pub enum Outcome {
    /// The handler returned.
    Answer {
        /// HTTP status.
        status: u16,
        /// Answer headers.
        headers: BTreeMap<String, String>,
        /// Answer body.
        body: Bytes,
        /// Time the handler took, as thaw saw it.
        duration: Duration,
    },
    /// The handler raised.
    HandlerError {
        /// Exception type.
        error_type: String,
        /// Exception message.
        message: String,
        /// Traceback.
        traceback: String,
        /// Time the handler took.
        duration: Duration,
    },
}

/// Restores copies from snapshots into stub sandboxes (see
/// [`crate::restore::sandboxed`]).
pub type Restorer = std::sync::Arc<crate::restore::sandboxed::SnapshotRestorer>;

/// Which snapshot a copy is restored from, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotSource {
    /// Snapshot id.
    pub id: String,
    /// Memory mode: `mmap` or `uffd`.
    pub mode: String,
}

/// Errors of restoring a copy (the caller falls back to booting).
#[derive(Debug, thiserror::Error)]
pub enum RestoreFailure {
    /// The stub sandbox could not be made.
    #[error(transparent)]
    Launch(#[from] LaunchError),
    /// The restorer failed.
    #[error("restore of snapshot {id} failed: {reason}")]
    Restorer {
        /// Snapshot id.
        id: String,
        /// Why.
        reason: String,
    },
    /// The copy did not confirm it was ready (reseeding or a restore hook
    /// failed, or it died).
    #[error("the restored copy did not come up: {0}")]
    Copy(String),
    /// This node cannot run the snapshot's copies (a mapped file with other
    /// content, a CPU feature missing, another vDSO:
    /// [`crate::restore::depends`]).
    #[error("snapshot {id} cannot be restored on this node (incompatible): {what}")]
    Incompatible {
        /// Snapshot id.
        id: String,
        /// What differs.
        what: String,
    },
    /// A lazy restore (a snapshot not in the local store) could not fetch
    /// pages before the copy resumed: the copy never ran. The store's
    /// fault, not the snapshot's.
    #[error("restore of snapshot {id} failed before the copy resumed: {reason}")]
    Fetch {
        /// Snapshot id.
        id: String,
        /// Why.
        reason: String,
    },
}

impl RestoreFailure {
    /// A failure of the restorer on snapshot `id`: [`RestoreFailure::Incompatible`]
    /// for what this node lacks, else [`RestoreFailure::Restorer`].
    pub fn restorer(id: &str, e: crate::restore::RestoreError) -> RestoreFailure {
        match e {
            crate::restore::RestoreError::Incompatible { what } => RestoreFailure::Incompatible {
                id: id.to_string(),
                what,
            },
            e @ crate::restore::RestoreError::Fetch(_) => {
                // The whole chain: the store's error is deep inside.
                let mut reason = e.to_string();
                let mut next = std::error::Error::source(&e);
                while let Some(source) = next {
                    let text = source.to_string();
                    if !reason.contains(&text) {
                        reason = format!("{reason}: {text}");
                    }
                    next = source.source();
                }
                RestoreFailure::Fetch {
                    id: id.to_string(),
                    reason,
                }
            }
            e => RestoreFailure::Restorer {
                id: id.to_string(),
                reason: e.to_string(),
            },
        }
    }

    /// Whether the snapshot (or what it depends on: its pages, image, the
    /// files it maps) is the likely cause, so that it should be rebuilt; a
    /// sandbox that could not be made says nothing about the snapshot, nor
    /// does a store that did not answer.
    pub fn blames_snapshot(&self) -> bool {
        !matches!(
            self,
            RestoreFailure::Launch(_) | RestoreFailure::Fetch { .. }
        )
    }
}

/// Invocations that ended the instance.
#[derive(Debug, thiserror::Error)]
pub enum InvokeError {
    /// The process crashed or was killed.
    #[error("{}", .0.reason)]
    Crashed(CrashReport),
    /// The handler ran past its time and the instance was killed.
    #[error("the handler did not answer within {0:?}")]
    Timeout(Duration),
}

/// A running runtime in its sandbox.
#[derive(Debug)]
pub struct Instance {
    sandbox: Sandbox,
    requests: pipe::Sender,
    responses: pipe::Receiver,
    logs: LogTap,
    memory_limit: u64,
    /// `uffd` copies: the page server (joined on destroy).
    page_server: Option<crate::restore::CopyServer>,
    /// Copies of a snapshot without a working set: where to record the
    /// pages the first invocation touched.
    record_to: Option<(Restorer, String)>,
    /// A copy whose page server records its working set exactly
    /// ([`Stub::record_exactly`]).
    record_exactly: bool,
    /// pid the runtime reported (inside its namespace).
    pub runtime_pid: u32,
    /// When the instance became ready.
    pub ready_at: Instant,
    /// Invocations served.
    pub served: u64,
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Instance {
    /// An instance over a freshly launched sandbox: its output tapped into
    /// `sink`, its protocol pipes (fds 3 and 4) taken.
    fn from_sandbox(
        mut sandbox: Sandbox,
        sink: LogSink,
        memory_limit: u64,
        runtime_pid: u32,
    ) -> Instance {
        let logs = LogTap::start(
            sandbox.stdout.take().expect("fresh sandbox has stdout"),
            sandbox.stderr.take().expect("fresh sandbox has stderr"),
            sink,
        );
        let requests = sandbox.requests.take().expect("fresh sandbox has fd 3");
        let responses = sandbox.responses.take().expect("fresh sandbox has fd 4");
        Instance {
            sandbox,
            requests,
            responses,
            logs,
            memory_limit,
            page_server: None,
            record_to: None,
            record_exactly: false,
            runtime_pid,
            ready_at: Instant::now(),
            served: 0,
        }
    }

    /// Boots a runtime: starts the sandbox and waits for `ready`.
    pub async fn boot(
        config: &SandboxConfig,
        spec: &LaunchSpec,
        init_timeout: Duration,
        sink: LogSink,
    ) -> Result<Instance, BootError> {
        let sandbox = Sandbox::launch(config, spec).await?;
        let mut instance = Instance::from_sandbox(sandbox, sink, spec.limits.memory_bytes, 0);
        let first = timeout(
            init_timeout,
            read_frame_limited(&mut instance.responses, 1 << 20),
        )
        .await;
        let failure = match first {
            Ok(Ok((FromRuntime::Ready { pid, .. }, _))) => {
                instance.runtime_pid = pid;
                instance.ready_at = Instant::now();
                return Ok(instance);
            }
            Ok(Ok((
                FromRuntime::InitError {
                    error_type,
                    message,
                    traceback,
                },
                _,
            ))) => BootError::Init {
                error_type,
                message,
                traceback,
            },
            Ok(Ok((other, _))) => BootError::Protocol(ProtocolError::Io(std::io::Error::other(
                format!("expected ready, got {other:?}"),
            ))),
            Ok(Err(ProtocolError::Closed | ProtocolError::Truncated)) => {
                BootError::Crashed(instance.crash_report().await)
            }
            Ok(Err(e)) => BootError::Protocol(e),
            Err(_) => BootError::Timeout(init_timeout),
        };
        instance.logs.barrier().await;
        let _ = instance.destroy().await;
        Err(failure)
    }

    /// Restores a copy of `snapshot` in a fresh stub sandbox: the restorer
    /// rebuilds the process, then the runtime is told it is a copy (it
    /// reseeds its random generators and runs the function's restore hooks)
    /// before it serves. [`Stub::launch`] then [`Stub::restore`].
    pub async fn restore(
        config: &SandboxConfig,
        spec: &LaunchSpec,
        snapshot: &SnapshotSource,
        restorer: &Restorer,
        ready_timeout: Duration,
        sink: LogSink,
    ) -> Result<(Instance, RestorePhases), RestoreFailure> {
        let started = Instant::now();
        let stub = Stub::launch(config, spec, snapshot, restorer, sink).await?;
        let claim = started.elapsed();
        let (instance, mut phases) = stub.restore(restorer, ready_timeout).await?;
        phases.claim = claim;
        Ok((instance, phases))
    }

    async fn become_copy(
        &mut self,
        pid: i32,
        snapshot: &SnapshotSource,
        restorer: &Restorer,
        copy: StubCopy,
        credentials: crate::restore::Credentials,
        ready_timeout: Duration,
    ) -> Result<RestorePhases, RestoreFailure> {
        let copy = match copy {
            StubCopy::Prepared(copy) => copy,
            StubCopy::Premapped(premapped) => {
                let claimed = premapped
                    .claim()
                    .await
                    .map_err(|e| RestoreFailure::restorer(&snapshot.id, e))?;
                return self
                    .after_restore(
                        snapshot,
                        restorer,
                        claimed.timings,
                        None,
                        Some(claimed),
                        ready_timeout,
                    )
                    .await;
            }
            StubCopy::Lost => return Err(RestoreFailure::Copy("the stub's copy was lost".into())),
        };
        let mode: crate::restore::Mode =
            snapshot
                .mode
                .parse()
                .map_err(|reason| RestoreFailure::Restorer {
                    id: snapshot.id.clone(),
                    reason,
                })?;
        let r = restorer.clone();
        // pid 1 of the sandbox holds a uffd copy's userfaultfd.
        let keeper = match self.sandbox.uffd_keeper().map(|k| k.try_clone_to_owned()) {
            Some(Ok(k)) => Some(k),
            Some(Err(e)) => return Err(RestoreFailure::Copy(format!("keeper socket: {e}"))),
            None => None,
        };
        let (timings, server) = tokio::task::spawn_blocking(move || {
            use std::os::fd::AsFd;
            r.finish(
                &copy,
                pid,
                mode,
                keeper.as_ref().map(|k| k.as_fd()),
                credentials,
            )
        })
        .await
        .map_err(|e| RestoreFailure::Copy(format!("restore task: {e}")))?
        .map_err(|e| RestoreFailure::restorer(&snapshot.id, e))?;
        self.after_restore(snapshot, restorer, timings, server, None, ready_timeout)
            .await
    }

    /// What follows the restore of a copy (whole, or the claim of a
    /// pre-mapped one: `premapped`): the working set recorded if its
    /// snapshot has none, the page server kept, and the `restored`
    /// exchange (reseeding, restore hooks).
    async fn after_restore(
        &mut self,
        snapshot: &SnapshotSource,
        restorer: &Restorer,
        timings: crate::restore::RestoreTimings,
        server: Option<crate::restore::CopyServer>,
        premapped: Option<crate::restore::premap::Claimed>,
        ready_timeout: Duration,
    ) -> Result<RestorePhases, RestoreFailure> {
        // Both modes record the working set once (uffd: the pages the page
        // server filled; mmap: the pages resident after the invocation).
        {
            // A lazy copy's working set is the store's.
            let recorded = if restorer.is_lazy(&snapshot.id) {
                true
            } else if self.record_exactly {
                // Recorded exactly (at deploy): the fetch set, apart from
                // the local copies' working set.
                let (r, id) = (restorer.clone(), snapshot.id.clone());
                tokio::task::spawn_blocking(move || r.has_fetch_set(&id))
                    .await
                    .unwrap_or(true)
            } else {
                match restorer.has_working_set_cached(&snapshot.id) {
                    Some(known) => known,
                    None => {
                        let (r, id) = (restorer.clone(), snapshot.id.clone());
                        tokio::task::spawn_blocking(move || r.working_set(&id).is_some())
                            .await
                            .unwrap_or(true)
                    }
                }
            };
            if !recorded {
                self.record_to = Some((restorer.clone(), snapshot.id.clone()));
            }
        }
        if let (true, Some(server)) = (self.record_exactly, &server) {
            server.live().record_exactly();
        }
        self.page_server = server;
        let mut phases = RestorePhases {
            seize: timings.stub,
            mappings: timings.mappings,
            state: timings.state,
            resume: timings.resume,
            premap: premapped.map(|c| c.premap),
            ..RestorePhases::default()
        };
        if let Some(c) = premapped {
            tracing::debug!(
                snapshot = %snapshot.id,
                premap_us = c.premap.as_micros() as u64,
                populated = c.populated,
                handoff_us = c.handoff.as_micros() as u64,
                waited = c.waited,
                state_us = timings.state.as_micros() as u64,
                resume_us = timings.resume.as_micros() as u64,
                "pre-mapped copy claimed"
            );
        }
        let exchanged = Instant::now();
        let seed: [u8; 32] = rand::random();
        let msg = ToRuntime::restored_with_seed(&seed);
        let exchange = async {
            write_frame(&mut self.requests, &msg, &[]).await?;
            read_frame_limited(&mut self.responses, 1 << 20).await
        };
        let answer = timeout(ready_timeout, exchange).await;
        phases.restored = exchanged.elapsed();
        match answer {
            Ok(Ok((FromRuntime::Restored { ok: true, .. }, _))) => Ok(phases),
            Ok(Ok((FromRuntime::Restored { ok: false, message }, _))) => Err(RestoreFailure::Copy(
                message.unwrap_or_else(|| "a restore hook failed".into()),
            )),
            Ok(Ok((other, _))) => Err(RestoreFailure::Copy(format!(
                "expected restored, got {other:?}"
            ))),
            Ok(Err(e)) => Err(RestoreFailure::Copy(format!(
                "{e}; {}",
                self.crash_report().await.reason
            ))),
            Err(_) => Err(RestoreFailure::Copy(format!(
                "no answer to restored within {ready_timeout:?}"
            ))),
        }
    }

    /// The sandbox's id.
    pub fn id(&self) -> &str {
        &self.sandbox.id
    }

    /// Memory charged to the instance's cgroup, bytes.
    pub fn memory_bytes(&self) -> u64 {
        self.sandbox.cgroup().memory_current().unwrap_or(0)
    }

    /// `uffd` copies: what the page server has done so far.
    pub fn page_server(&self) -> Option<&std::sync::Arc<crate::restore::uffd::LiveReport>> {
        self.page_server.as_ref().map(|s| s.live())
    }

    /// Host pid of the runtime process.
    pub fn runtime_host_pid(&self) -> Option<i32> {
        self.sandbox.function_pid()
    }

    /// The sandbox's cgroup.
    pub fn cgroup(&self) -> &crate::cgroup::Cgroup {
        self.sandbox.cgroup()
    }

    /// Host pids of the sandbox's processes.
    pub fn pids(&self) -> Vec<i32> {
        self.sandbox.pids()
    }

    /// Runs one invocation. `Ok` leaves the instance usable; `Err` means it is
    /// dead (it has been killed; call [`Instance::destroy`]).
    pub async fn invoke(&mut self, inv: &Invocation) -> Result<Outcome, InvokeError> {
        // The copy recording its snapshot's working set: what is resident
        // before its first invocation, to tell that invocation's own pages
        // apart (`working_set::INVOKED`). Once per snapshot.
        // The pid is looked up (a read of `cgroup.procs` and of each
        // process's `/proc/PID/status`) only for that copy, not for every
        // invocation.
        let resident_before = match &self.record_to {
            Some((restorer, id)) => self
                .runtime_host_pid()
                .and_then(|pid| restorer.resident_working_set(id, pid).ok()),
            None => None,
        };
        let probe = crate::first_call::wanted(self.served)
            .then(|| self.sandbox.function_pid())
            .flatten()
            .and_then(|pid| crate::first_call::Probe::start(pid, self.page_server().map(|s| &**s)));
        if self.served == 0 {
            if let Some(delay) = crate::first_call::first_delay() {
                tokio::time::sleep(delay).await;
            }
        }
        let span = crate::first_call::span_mark();
        let started = Instant::now();
        let deadline_ms = unix_ms() + inv.timeout.as_millis() as u64;
        let msg = ToRuntime::Invoke {
            id: inv.id.clone(),
            deadline_ms,
            function: inv.function.clone(),
            version: inv.version.to_string(),
            headers: inv.headers.clone(),
        };
        self.logs.set_invocation(Some(inv.id.clone()));
        if inv.headers.contains_key(FAIL_PAGE_SERVER_HEADER) {
            if let Some(server) = &self.page_server {
                tracing::warn!(invocation = %inv.id, "test switch: failing the page server");
                server.live().fail_next_fault();
            }
        }
        let exchange = async {
            write_frame(&mut self.requests, &msg, &inv.body).await?;
            read_frame_limited(&mut self.responses, MAX_ANSWER).await
        };
        let result = timeout(inv.timeout, exchange).await;
        let duration = started.elapsed();
        if let (Some(start), Some(end)) = (span, crate::first_call::span_mark()) {
            crate::first_call::log_span(start, end, self.sandbox.function_pid(), self.served);
        }
        if let Some(probe) = probe {
            let server = self.page_server().map(|s| &**s);
            probe.finish(&inv.function, self.served, duration, server);
        }
        let outcome = match result {
            Err(_) => {
                self.sandbox.kill();
                Err(InvokeError::Timeout(inv.timeout))
            }
            Ok(Ok((
                FromRuntime::Result {
                    id,
                    status,
                    headers,
                },
                body,
            ))) if id == inv.id => Ok(Outcome::Answer {
                status,
                headers,
                body,
                duration,
            }),
            Ok(Ok((
                FromRuntime::Error {
                    id,
                    error_type,
                    message,
                    traceback,
                },
                _,
            ))) if id == inv.id => Ok(Outcome::HandlerError {
                error_type,
                message,
                traceback,
                duration,
            }),
            Ok(Ok((other, _))) => {
                self.sandbox.kill();
                Err(InvokeError::Crashed(CrashReport {
                    exit: None,
                    oom: false,
                    reason: format!("the runtime broke the protocol: unexpected {other:?}"),
                }))
            }
            Ok(Err(ProtocolError::TooLarge { len, limit, .. })) => {
                self.sandbox.kill();
                Err(InvokeError::Crashed(CrashReport {
                    exit: None,
                    oom: false,
                    reason: format!("the answer of {len} bytes exceeds the limit of {limit}"),
                }))
            }
            Ok(Err(_)) => Err(InvokeError::Crashed(self.crash_report().await)),
        };
        self.logs.barrier().await;
        self.logs.set_invocation(None);
        if outcome.is_ok() {
            self.served += 1;
            // Written in the background.
            drop(self.record_working_set(resident_before));
        }
        outcome
    }

    /// After the first invocation of a copy whose snapshot has no working
    /// set: records the pages touched so far (restore-ready exchange and
    /// the invocation): a `uffd` copy's page server lists its faults; the
    /// resident pages (both modes) are read from the copy's pagemap now,
    /// while it waits, those not in
    /// `resident_before` (read when the invocation began) tagged
    /// [`crate::restore::working_set::INVOKED`]. Written in the background.
    /// A copy recording exactly (the deploy's, [`Stub::record_exactly`])
    /// writes the snapshot's fetch set instead
    /// ([`crate::restore::working_set::fetch_path`]).
    fn record_working_set(
        &mut self,
        resident_before: Option<Vec<u64>>,
    ) -> Option<tokio::task::JoinHandle<Option<usize>>> {
        let (restorer, id) = self.record_to.take()?;
        let pid = self.sandbox.function_pid()?;
        let resident = match restorer.resident_working_set(&id, pid) {
            Ok(pages) => match &resident_before {
                Some(before) => crate::restore::working_set::tag_invoked(pages, before),
                None => pages,
            },
            Err(err) => {
                tracing::warn!(snapshot = %id, %err, "reading the working set failed");
                return None;
            }
        };
        let pages = match &self.page_server {
            // uffd: the faults in first-touch order (the zero pages
            // written tagged), then the mapped files' pages the
            // invocation read.
            Some(server) => {
                let live = server.live();
                match restorer.uffd_working_set(
                    &id,
                    pid,
                    live.touched(),
                    &live.zero_faults(),
                    resident,
                ) {
                    Ok(pages) => pages,
                    Err(err) => {
                        tracing::warn!(snapshot = %id, %err, "reading the working set failed");
                        return None;
                    }
                }
            }
            None => resident,
        };
        let exact = self.record_exactly;
        Some(tokio::task::spawn_blocking(move || {
            let count = pages.len();
            let (written, what) = if exact {
                (restorer.record_fetch_set(&id, pages), "fetch set")
            } else {
                (restorer.record_working_set(&id, pages), "working set")
            };
            match written {
                Ok(true) => {
                    tracing::info!(snapshot = %id, pages = count, "{what} recorded");
                    Some(count)
                }
                Ok(false) => None,
                Err(err) => {
                    tracing::warn!(snapshot = %id, %err, "recording the {what} failed");
                    None
                }
            }
        }))
    }

    /// Runs `invocations` in order (the function's warm-up events, replayed
    /// on a fresh copy), then records the copy's working set from all of
    /// them (not just the first, as [`Instance::invoke`] does) and waits
    /// until it is written. `Ok(Some(pages))` when a working set was
    /// written, `Ok(None)` when the snapshot had one already (or recording
    /// failed, logged). A handler error is an answer like any other; an
    /// [`InvokeError`] ends the copy (destroy it).
    pub async fn invoke_and_record(
        &mut self,
        invocations: &[Invocation],
    ) -> Result<Option<usize>, InvokeError> {
        let record_to = self.record_to.take();
        let resident_before = match (&record_to, self.runtime_host_pid()) {
            (Some((restorer, id)), Some(pid)) if !invocations.is_empty() => {
                restorer.resident_working_set(id, pid).ok()
            }
            _ => None,
        };
        for inv in invocations {
            self.invoke(inv).await?;
        }
        self.record_to = record_to;
        match self.record_working_set(resident_before) {
            Some(written) => Ok(written.await.unwrap_or(None)),
            None => Ok(None),
        }
    }

    /// Waits (briefly) for the sandbox to end and describes how it ended.
    async fn crash_report(&mut self) -> CrashReport {
        let exit = match timeout(Duration::from_secs(2), self.sandbox.wait()).await {
            Ok(exit) => Some(exit),
            Err(_) => {
                self.sandbox.kill();
                None
            }
        };
        let oom = self.sandbox.cgroup().oom_kills() > 0;
        let reason = if oom {
            format!(
                "the function ran out of memory (limit {} MiB) and was killed",
                self.memory_limit >> 20
            )
        } else {
            match exit {
                Some(exit) => format!("the function process {exit}"),
                None => "the function closed its protocol channel".to_string(),
            }
        };
        CrashReport { exit, oom, reason }
    }

    /// Stops the instance and frees its sandbox; a `uffd` copy's page
    /// server is joined (it ends with the copy) and its report logged.
    pub async fn destroy(self) -> Result<(), LaunchError> {
        let result = self.sandbox.destroy().await;
        if let Some(server) = self.page_server {
            match tokio::task::spawn_blocking(move || server.join()).await {
                Ok(Ok(report)) => tracing::debug!(
                    faults = report.faults,
                    copied = report.copied,
                    zero = report.zero,
                    prefetched = report.prefetched,
                    "page server ended"
                ),
                Ok(Err(err)) => tracing::warn!(%err, "the page server had failed"),
                Err(err) => tracing::warn!(%err, "joining the page server failed"),
            }
        }
        result
    }
}

/// How long each phase of a restore took, as the pool saw it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RestorePhases {
    /// Whether a pre-made stub sandbox (a spare) was used.
    pub spare: bool,
    /// Obtaining the stub sandbox: taking a spare, or (without one) loading
    /// the snapshot, opening its files and launching a stub sandbox.
    pub claim: Duration,
    /// Seizing the stub with ptrace.
    pub seize: Duration,
    /// Rebuilding the address space.
    pub mappings: Duration,
    /// mm fields, signals, rseq, thread attributes, credentials.
    pub state: Duration,
    /// Registers and detach.
    pub resume: Duration,
    /// The `restored` exchange with the runtime (reseeding, restore hooks).
    pub restored: Duration,
    /// A spare pre-mapped ahead of its claim ([`crate::restore::premap`]):
    /// how long its pre-map (seize and mappings, off the request's path)
    /// took; `seize` and `mappings` are then zero. `None`: restored whole
    /// at the claim.
    pub premap: Option<Duration>,
}

impl RestorePhases {
    /// Every phase with its name, in order.
    pub fn named(&self) -> [(&'static str, Duration); 6] {
        [
            ("claim", self.claim),
            ("seize", self.seize),
            ("mappings", self.mappings),
            ("state", self.state),
            ("resume", self.resume),
            ("restored", self.restored),
        ]
    }
}

/// A stub sandbox made for one snapshot, its files opened and held at
/// their planned numbers, the stub waiting to become the copy. A spare is
/// one made ahead of time; see `docs/restore.md`.
#[derive(Debug)]
pub struct Stub {
    instance: Instance,
    /// Host pid of the stub (pid 2 of the sandbox), found once when the
    /// sandbox was made: the copy keeps it (`/proc` is not searched again
    /// on the restore's path).
    pid: i32,
    /// A pidfd of the stub: before the restore drives `pid`, it tells that
    /// the stub still exists (a spare waits; a pid freed meanwhile could be
    /// another process's by then).
    pidfd: std::os::fd::OwnedFd,
    copy: StubCopy,
    snapshot: SnapshotSource,
    /// What the copy runs as: the sandbox's uid and gid, never the
    /// snapshot's.
    credentials: crate::restore::Credentials,
    /// A `uffd` copy whose page server records the exact working set
    /// ([`Stub::record_exactly`]).
    exact: bool,
    /// See [`Stub::premap_estimate`].
    premap_estimate: u64,
}

impl Stub {
    /// Loads the snapshot, opens everything its copy maps, and starts a stub
    /// sandbox holding those descriptors (limits, mounts, environment of
    /// `spec`). A lazy copy starts fetching now, while the sandbox is made.
    pub async fn launch(
        config: &SandboxConfig,
        spec: &LaunchSpec,
        snapshot: &SnapshotSource,
        restorer: &Restorer,
        sink: LogSink,
    ) -> Result<Stub, RestoreFailure> {
        Self::launch_with(config, spec, snapshot, restorer, sink, false).await
    }

    /// [`Stub::launch`] of a spare, made ahead of its claim: a lazy copy
    /// fetches nothing until it is restored
    /// ([`crate::restore::sandboxed::SnapshotRestorer::prepare_ahead`]).
    pub async fn launch_ahead(
        config: &SandboxConfig,
        spec: &LaunchSpec,
        snapshot: &SnapshotSource,
        restorer: &Restorer,
        sink: LogSink,
    ) -> Result<Stub, RestoreFailure> {
        Self::launch_with(config, spec, snapshot, restorer, sink, true).await
    }

    async fn launch_with(
        config: &SandboxConfig,
        spec: &LaunchSpec,
        snapshot: &SnapshotSource,
        restorer: &Restorer,
        sink: LogSink,
        ahead: bool,
    ) -> Result<Stub, RestoreFailure> {
        let mut launch = spec.clone();
        launch.stub = true;
        let (r, id) = (restorer.clone(), snapshot.id.clone());
        let copy = tokio::task::spawn_blocking(move || match ahead {
            true => r.prepare_ahead(&id),
            false => r.prepare(&id),
        })
        .await
        .map_err(|e| RestoreFailure::Copy(format!("restore task: {e}")))?
        .map_err(|e| RestoreFailure::restorer(&snapshot.id, e))?;
        let time_offsets = match crate::sandbox::timens::enabled() {
            true => Some(
                copy.time_offsets()
                    .map_err(|e| RestoreFailure::restorer(&snapshot.id, e))?,
            ),
            false => None,
        };
        let sandbox = Sandbox::launch_copy(
            config,
            &launch,
            &copy.fds(),
            &copy.open_files(),
            time_offsets,
        )
        .await
        .map_err(|e| match e {
            // The snapshot names a file this sandbox does not give the
            // function: the snapshot's fault, not the sandbox's.
            LaunchError::OpenFile(reason) => RestoreFailure::Restorer {
                id: snapshot.id.clone(),
                reason,
            },
            other => RestoreFailure::Launch(other),
        })?;
        let instance = Instance::from_sandbox(sandbox, sink, spec.limits.memory_bytes, 2);
        Self::hold(instance, copy, snapshot, config).await
    }

    /// A stub sandbox's instance (launched or recycled) becomes a [`Stub`]
    /// of `copy`: the files the stub opened are checked against the
    /// snapshot and the stub is held by a pidfd. On failure the sandbox is
    /// destroyed.
    async fn hold(
        instance: Instance,
        mut copy: crate::restore::sandboxed::PreparedCopy,
        snapshot: &SnapshotSource,
        config: &SandboxConfig,
    ) -> Result<Stub, RestoreFailure> {
        // The files the stub opened inside its sandbox, as the function:
        // checked against the snapshot before the stub can become a copy.
        let pid = instance.sandbox.stub_pid();
        let adopted = match pid {
            Some(pid) => copy.adopt(pid),
            None => Err(crate::restore::RestoreError::Unsupported(
                "the stub sandbox has no stub".into(),
            )),
        };
        let held = adopted.and_then(|()| {
            let pid = pid.expect("adopting needed the stub's pid");
            crate::restore::pidfd_open(pid).map(|pidfd| (pid, pidfd))
        });
        let (pid, pidfd) = match held {
            Ok(held) => held,
            Err(e) => {
                let _ = instance.destroy().await;
                return Err(RestoreFailure::restorer(&snapshot.id, e));
            }
        };
        Ok(Stub {
            instance,
            pid,
            pidfd,
            copy: StubCopy::Prepared(Box::new(copy)),
            snapshot: snapshot.clone(),
            credentials: crate::restore::Credentials::Function {
                uid: config.uid,
                gid: config.gid,
            },
            exact: false,
            premap_estimate: 0,
        })
    }

    /// The copy (`uffd` mode) will record its working set exactly: its page
    /// server fills each fault's page only, from the moment the copy is
    /// restored, before the `restored` exchange (see
    /// [`crate::restore::uffd::LiveReport::record_exactly`]).
    pub fn record_exactly(&mut self) {
        self.exact = true;
    }

    /// The sandbox's id.
    pub fn id(&self) -> &str {
        self.instance.id()
    }

    /// The sandbox's cgroup.
    pub fn cgroup(&self) -> &crate::cgroup::Cgroup {
        self.instance.cgroup()
    }

    /// The snapshot this stub was made for.
    pub fn snapshot_id(&self) -> &str {
        &self.snapshot.id
    }

    /// Whether the copy restores lazily (made while its snapshot was not
    /// local; see [`crate::restore::sandboxed::PreparedCopy::is_lazy`]).
    pub fn is_lazy(&self) -> bool {
        match &self.copy {
            StubCopy::Prepared(copy) => copy.is_lazy(),
            StubCopy::Premapped(_) | StubCopy::Lost => false,
        }
    }

    /// Starts pre-mapping the copy ([`crate::restore::premap`]) when it is
    /// one that can be (a single process restored from the local store in
    /// `mmap` mode) and pre-mapping is on. Quick (starts a thread); the
    /// pre-map runs in the background. Returns whether it started.
    pub fn premap(&mut self, restorer: &Restorer) -> bool {
        if !self.premap_eligible() {
            return false;
        }
        let StubCopy::Prepared(copy) = std::mem::replace(&mut self.copy, StubCopy::Lost) else {
            return false;
        };
        use crate::restore::premap::{PremapError, PremappedCopy};
        let started =
            PremappedCopy::start(restorer.clone(), *copy, self.pid, self.credentials.clone());
        match started {
            Ok(premapped) => {
                self.premap_estimate = restorer
                    .working_set_cached(&self.snapshot.id)
                    .map_or(0, |pages| pages as u64 * 4096);
                self.copy = StubCopy::Premapped(premapped);
                true
            }
            Err(PremapError::NotPremappable(copy)) => {
                self.copy = StubCopy::Prepared(copy);
                false
            }
            Err(e @ PremapError::Thread(_)) => {
                // The copy went with the thread: the spare is of no use,
                // and is skipped at the claim (it stays `Lost`).
                tracing::warn!(sandbox = %self.instance.id(), err = %e, "pre-mapping a spare failed");
                false
            }
        }
    }

    /// Bytes a pre-mapped spare is expected to hold beyond a plain one:
    /// the pages of the working set its pre-map populates (known when the
    /// working set was read already; 0 otherwise, until measured).
    pub fn premap_estimate(&self) -> u64 {
        self.premap_estimate
    }

    /// Whether the copy is pre-mapped without a working set populated and
    /// not told to plan yet ([`crate::restore::premap::PremappedCopy::without_plan`]).
    pub fn premapped_without_plan(&self) -> bool {
        matches!(&self.copy, StubCopy::Premapped(copy) if copy.without_plan())
    }

    /// Has a copy pre-mapped without a working set populate the one recorded
    /// since, in place ([`crate::restore::premap::PremappedCopy::plan`]).
    /// Quick (a message to its thread). Returns whether it was sent.
    pub fn plan_premap(&mut self) -> bool {
        match &mut self.copy {
            StubCopy::Premapped(copy) => copy.plan(),
            _ => false,
        }
    }

    /// Whether the copy is pre-mapped: its claim may then take a
    /// [`Stub::linger`] gate.
    pub fn premapped(&self) -> bool {
        matches!(self.copy, StubCopy::Premapped(_))
    }

    /// Holds the clean-up of a pre-mapped copy's thread after its claim
    /// (the stub's files closed, the thread ended) until `gate` opens (see
    /// [`crate::restore::premap::Linger`]). No effect on a copy that is not
    /// pre-mapped.
    pub fn linger(&mut self, gate: crate::restore::premap::Linger) {
        if let StubCopy::Premapped(copy) = &mut self.copy {
            copy.linger(gate);
        }
    }

    /// Whether this stub's copy is one [`Stub::premap`] pre-maps: pre-maps
    /// on, a single process restored from the local store in `mmap` mode,
    /// not recording its working set exactly, and not pre-mapped yet.
    fn premap_eligible(&self) -> bool {
        crate::restore::premap::enabled()
            && self.snapshot.mode == "mmap"
            && !self.exact
            && matches!(&self.copy, StubCopy::Prepared(copy) if copy.premappable())
    }

    /// Whether a pre-map of this spare is still to come or running: it is
    /// one that is pre-mapped (see [`Stub::premap`]) and its memory is not
    /// in place yet. A server at rest has none. Never blocks.
    pub fn premap_pending(&self) -> bool {
        match &self.copy {
            StubCopy::Prepared(_) => self.premap_eligible(),
            StubCopy::Premapped(p) => p.mapping(),
            StubCopy::Lost => false,
        }
    }

    /// Whether the spare can still become a copy: its sandbox runs, its stub
    /// has not exited, and a pre-map of it did not fail. Never blocks.
    pub fn usable(&mut self) -> bool {
        let copy_ok = match &self.copy {
            StubCopy::Prepared(_) => true,
            StubCopy::Premapped(p) => !p.failed(),
            StubCopy::Lost => false,
        };
        copy_ok && !exited(&self.pidfd) && self.is_alive()
    }

    /// Whether the sandbox is still running (its init has not exited).
    pub fn is_alive(&mut self) -> bool {
        self.instance.sandbox.try_wait().is_none()
    }

    /// Turns the stub into the copy and tells the runtime it is one. On
    /// failure the sandbox is destroyed. `claim` of the phases is left for
    /// the caller.
    pub async fn restore(
        self,
        restorer: &Restorer,
        ready_timeout: Duration,
    ) -> Result<(Instance, RestorePhases), RestoreFailure> {
        let Stub {
            mut instance,
            pid,
            pidfd,
            copy,
            snapshot,
            credentials,
            exact,
            premap_estimate: _,
        } = self;
        let became = match (exists(&pidfd), copy) {
            (_, StubCopy::Lost) => Err(RestoreFailure::Copy("the stub's copy was lost".into())),
            (true, copy) => {
                // A spare's lazy copy fetches from its claim on (a launch
                // on the spot started already: nothing to do).
                if let StubCopy::Prepared(copy) = &copy {
                    copy.start_fetch();
                }
                instance.record_exactly = exact;
                instance
                    .become_copy(pid, &snapshot, restorer, copy, credentials, ready_timeout)
                    .await
            }
            (false, _) => Err(RestoreFailure::Copy("the stub is missing".into())),
        };
        drop(pidfd);
        match became {
            Ok(phases) => {
                instance.ready_at = Instant::now();
                Ok((instance, phases))
            }
            Err(e) => {
                instance.logs.barrier().await;
                let _ = instance.destroy().await;
                Err(e)
            }
        }
    }

    /// Stops the stub and frees its sandbox. A pre-mapped stub's thread
    /// kills it and is waited for first (the stub's death is reported to
    /// that thread, its tracer, before its parent can reap it).
    pub async fn destroy(self) -> Result<(), LaunchError> {
        if let StubCopy::Premapped(premapped) = self.copy {
            let _ = tokio::task::spawn_blocking(move || premapped.stop()).await;
        }
        self.instance.destroy().await
    }
}

/// What a stub becomes: a prepared copy restored whole at the claim, or one
/// being pre-mapped by its own thread.
#[derive(Debug)]
enum StubCopy {
    /// Restored whole at the claim.
    Prepared(Box<crate::restore::sandboxed::PreparedCopy>),
    /// Pre-mapped ([`crate::restore::premap`]).
    Premapped(crate::restore::premap::PremappedCopy),
    /// The pre-map thread could not start: the copy is gone.
    Lost,
}

/// Whether the process of `pidfd` has exited (a pidfd polls readable then;
/// a traced stub killed while it waits stays a zombie until its tracer
/// waits for it). Never blocks.
fn exited(pidfd: &std::os::fd::OwnedFd) -> bool {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use std::os::fd::AsFd;
    let mut fds = [PollFd::new(pidfd.as_fd(), PollFlags::POLLIN)];
    matches!(poll(&mut fds, PollTimeout::ZERO), Ok(n) if n > 0)
}

/// Whether the process of `pidfd` still exists (running, stopped, or
/// exited but not reaped: in each case its pid is still its own).
fn exists(pidfd: &std::os::fd::OwnedFd) -> bool {
    use std::os::fd::AsRawFd;
    // SAFETY: pidfd_send_signal of signal 0 (a check, nothing is sent) with
    // a pidfd we own and no siginfo.
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            0,
            std::ptr::null::<libc::siginfo_t>(),
            0u32,
        )
    };
    r == 0
}
