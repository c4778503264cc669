//! Pre-mapped spares: a spare's copy restored up to its memory ahead of
//! its claim, so that a cold start runs only the rest of the restore.
//!
//! ```text
//! spare     the stub sandbox made (or recycled), its files adopted and
//!           checked (`Stub::hold`); the stub waits in pause()
//! pre-map   background work (held while a burst is served): a thread of
//!           its own, `thaw-premap`, seizes the stub, checks the files
//!           again and runs step 1 of the restore (`map_process`: the
//!           stub's areas out, every saved area mapped from the image, the
//!           recorded working set populated, stacks and guard written),
//!           then steps 2-8 but what counts from the resume
//!           (`settle_process`, `Settle::Ahead`: sockets, mm, fds
//!           registered, signals, attributes, every thread, the guard,
//!           credentials, parent-death signal, seccomp).
//!           The stub stays stopped under ptrace, running nothing
//! plan      a spare pre-mapped before its snapshot had a working set:
//!           told by the refill once one is recorded, the thread populates
//!           it and runs steps 2-8 as the pre-map would have
//! claim     the request sends a claim to that thread (queued behind a
//!           pre-map still running); the thread checks the files once more
//!           (`recheck`, as every claim does), runs what was left
//!           (`Settled::finish`: timerfds armed, timers, pending signals
//!           queued again, in one batch as the function under its policy,
//!           the scratch area unmapped; none of it for a snapshot without
//!           timers or pending signals), the registers and the resume, and
//!           answers
//! drop      the claim channel closes: the thread kills the stub, waits for
//!           its death to be reported to it (so the sandbox's pid 1, its
//!           parent, can reap it), and ends
//! ```
//!
//! Why a thread per spare: ptrace requests are taken only from the thread
//! that seized the tracee, so the thread that maps a stub must be the one
//! that later finishes it, and it must stay alive (a tracer that exits
//! detaches, here kills: `PTRACE_O_EXITKILL`) for as long as the spare
//! waits. A pool of tracer threads would have to pin each spare to one of
//! them anyway; an idle thread costs a few pages of stack.
//!
//! Only single-process snapshots restored in `mmap` mode from the local
//! store are pre-mapped ([`super::sandboxed::PreparedCopy::premappable`]);
//! trees, `uffd` copies and lazy copies take the usual path at the claim.
//! The working set populated is the one recorded when the pre-map runs; a
//! spare pre-mapped before its snapshot's working set was recorded (the
//! first spares after a deploy) stops after step 1, since the populate
//! must come before the seccomp policy (which denies `process_madvise`).
//! Once a copy has recorded the set, the pool's refill tells such a
//! spare's thread to plan ([`PremappedCopy::plan`], background work): it
//! populates the set in place and goes on with steps 2-8 as a pre-map made
//! then would (`THAW_PREMAP_REPLAN=0` turns that off). A spare claimed
//! still without a plan has the set populated at its claim, in a batch of
//! its own (`mappings` of that claim's timings), as a copy restored whole
//! then would.
//!
//! Security is what it is without the pre-map: the stub is thaw's, has run
//! no function code and runs none until the claim; the copy gets its
//! credentials and seccomp policy at the pre-map (the stub, stopped, then
//! waits as the function, under its policy) and (from the runtime) its
//! fresh seed after the claim, as every copy does.
//!
//! `THAW_PREMAP_SPARES=0` turns pre-mapping off (every claim restores the
//! whole copy, as before); `THAW_PREMAP_AHEAD=0` keeps the pre-map to
//! step 1 (the claim runs steps 2-9, `set_process`).

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use snapshotter::snapshot::Snapshot;

use super::remote::Remote;
use super::sandboxed::{PreparedCopy, SnapshotRestorer};
use super::{
    map_process, set_process, settle_process, working_set, Credentials, Driving, Mapped, Mode,
    Prepared, ProcessView, RestoreError, RestoreTimings, Settle, Settled,
};

/// Environment variable: `0` turns pre-mapped spares off.
pub const PREMAP_ENV: &str = "THAW_PREMAP_SPARES";

/// Whether spares are pre-mapped (read once; on unless
/// `THAW_PREMAP_SPARES=0`).
pub fn enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var_os(PREMAP_ENV).is_none_or(|v| v != "0"))
}

/// Environment variable: `0` keeps a pre-map to step 1 (the claim runs
/// steps 2-9, as before the pre-map went ahead).
pub const AHEAD_ENV: &str = "THAW_PREMAP_AHEAD";

/// Whether a pre-map goes on past step 1, up to what must wait for the
/// claim (read once; on unless `THAW_PREMAP_AHEAD=0`).
pub fn ahead() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var_os(AHEAD_ENV).is_none_or(|v| v != "0"))
}

/// What a pre-map leaves for the claim.
enum Staged {
    /// Step 1 done (`THAW_PREMAP_AHEAD=0`).
    Mapped(Mapped),
    /// Steps 1-8 done but what counts from the resume.
    Settled(Settled),
}

/// The pre-map is running (or queued on its thread).
const MAPPING: u8 = 0;
/// The copy's memory is in place; the thread waits for the claim.
const MAPPED: u8 = 1;
/// The pre-map failed: the stub is dead, the spare useless.
const FAILED: u8 = 2;

/// A spare's copy being pre-mapped, or pre-mapped, by its own thread.
/// Dropping it ends the thread, which kills the stub (not waiting for it:
/// see [`PremappedCopy::stop`]).
#[derive(Debug)]
pub struct PremappedCopy {
    orders: Option<mpsc::Sender<Order>>,
    thread: Option<std::thread::JoinHandle<()>>,
    state: Arc<AtomicU8>,
    /// Set by the thread while its copy is mapped without a working set
    /// populated ([`PremappedCopy::without_plan`]).
    planless: Arc<AtomicBool>,
    /// A [`PremappedCopy::plan`] was sent.
    plan_sent: bool,
    linger: Option<Linger>,
}

/// What the thread is told while it waits.
enum Order {
    /// Populate the working set recorded since the pre-map, and go on
    /// with what the pre-map left for lack of it ([`PremappedCopy::plan`]).
    Plan,
    /// Finish the copy and answer.
    Claim(Claim),
}

/// A claim sent to the thread.
struct Claim {
    sent: Instant,
    reply: tokio::sync::oneshot::Sender<Result<Claimed, RestoreError>>,
    linger: Option<Linger>,
}

/// Given to a claim ([`PremappedCopy::linger`]): once the thread has
/// answered, it keeps what it owns (the stub's files, the restore's plan
/// and scratch) and itself until the gate opens (its [`LingerRelease`]
/// dropped), so that closing ~90 descriptors, freeing and ending the
/// thread do not take CPU from the cold starts in flight (a burst: the
/// pool opens it with its other held work, [`crate::manager`]'s `defer`).
#[derive(Debug)]
pub struct Linger(mpsc::Receiver<()>);

/// Opens a [`Linger`] gate when dropped.
#[derive(Debug)]
pub struct LingerRelease(#[allow(dead_code)] mpsc::Sender<()>);

/// Whether claims hold their thread's clean-up ([`Linger`]): by default;
/// `THAW_PREMAP_LINGER=0` in the server's environment cleans up at once
/// (as before, for A/B measurements).
pub fn linger_wanted() -> bool {
    std::env::var_os("THAW_PREMAP_LINGER").is_none_or(|v| v != "0")
}

/// A closed gate and what opens it.
pub fn linger() -> (LingerRelease, Linger) {
    let (tx, rx) = mpsc::channel();
    (LingerRelease(tx), Linger(rx))
}

/// What the claim of a pre-mapped copy took.
#[derive(Debug, Clone, Copy)]
pub struct Claimed {
    /// The claim's part of the restore: what the pre-map left of steps
    /// 2-9 and the resume (`stub` and `mappings` are zero: they ran at the
    /// pre-map; `mappings` is the populating of a working set recorded
    /// after the pre-map; `state` is the claim's batch and the scratch
    /// area's unmapping, or steps 2-8 with `THAW_PREMAP_AHEAD=0`).
    pub timings: RestoreTimings,
    /// The pre-map: seizing the stub, step 1 and (unless
    /// `THAW_PREMAP_AHEAD=0`) steps 2-8 but what waits for the claim.
    pub premap: Duration,
    /// Working-set ranges populated (by the pre-map, or at the claim).
    pub populated: u32,
    /// From the claim being sent to its thread taking it up (including a
    /// pre-map still running then).
    pub handoff: Duration,
    /// Whether the pre-map was still running when the claim came.
    pub waited: bool,
}

/// Why a copy could not be pre-mapped.
#[derive(Debug, thiserror::Error)]
pub enum PremapError {
    /// Not a copy this pre-maps (a tree, or lazy): given back.
    #[error("this copy is not pre-mapped (a tree or a lazy copy)")]
    NotPremappable(Box<PreparedCopy>),
    /// The thread could not be started; the copy is lost with it.
    #[error("start the pre-map thread: {0}")]
    Thread(#[source] std::io::Error),
}

impl PremappedCopy {
    /// Starts pre-mapping `copy` into the stub `stub_pid` (host pid; it
    /// holds the copy's files, adopted and checked) in `mmap` mode, the
    /// copy to run as `credentials` once claimed.
    pub fn start(
        restorer: Arc<SnapshotRestorer>,
        copy: PreparedCopy,
        stub_pid: i32,
        credentials: Credentials,
    ) -> Result<PremappedCopy, PremapError> {
        let (snapshot, prepared) = copy
            .into_local_process()
            .map_err(PremapError::NotPremappable)?;
        let (orders, received) = mpsc::channel();
        let state = Arc::new(AtomicU8::new(MAPPING));
        let planless = Arc::new(AtomicBool::new(false));
        let job = Job {
            restorer,
            snapshot,
            prepared,
            stub_pid,
            credentials,
            state: state.clone(),
            planless: planless.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("thaw-premap".into())
            .spawn(move || job.run(received))
            .map_err(PremapError::Thread)?;
        Ok(PremappedCopy {
            orders: Some(orders),
            thread: Some(thread),
            state,
            planless,
            plan_sent: false,
            linger: None,
        })
    }

    /// Whether the copy is mapped without a working set populated (a spare
    /// pre-mapped before its snapshot's working set was recorded: the
    /// first spares after a deploy) and no [`PremappedCopy::plan`] was
    /// sent: its claim would populate on the request's path. Never blocks.
    pub fn without_plan(&self) -> bool {
        !self.plan_sent
            && self.state.load(Ordering::Acquire) == MAPPED
            && self.planless.load(Ordering::Acquire)
    }

    /// Tells the thread to populate the working set recorded since its
    /// pre-map and to go on with what the pre-map left for lack of it
    /// (steps 2-8 but what counts from the resume), as a pre-map made now
    /// would: background work, the caller's to schedule. The copy counts as
    /// being pre-mapped ([`PremappedCopy::mapping`]) until that is done; a
    /// claim sent meanwhile waits for it. Returns whether it was sent (only
    /// to a copy [`PremappedCopy::without_plan`]). Never blocks.
    pub fn plan(&mut self) -> bool {
        if !self.without_plan() {
            return false;
        }
        let Some(orders) = &self.orders else {
            return false;
        };
        self.state.store(MAPPING, Ordering::Release);
        if orders.send(Order::Plan).is_err() {
            // The thread is gone: the stub with it.
            self.state.store(FAILED, Ordering::Release);
            return false;
        }
        self.plan_sent = true;
        true
    }

    /// Whether the pre-map failed (the stub is dead: the spare is of no
    /// use). Never blocks.
    pub fn failed(&self) -> bool {
        self.state.load(Ordering::Acquire) == FAILED
    }

    /// Whether the pre-map is still running (or queued on its thread): a
    /// claim now would wait for it. Never blocks.
    pub fn mapping(&self) -> bool {
        self.state.load(Ordering::Acquire) == MAPPING
    }

    /// Finishes the copy: what the pre-map left of steps 2-9 and the
    /// resume, on its thread, after the pre-map if that is still running.
    /// On an error the stub is dead. The thread's clean-up waits for the
    /// gate given by [`PremappedCopy::linger`], if any.
    pub async fn claim(mut self) -> Result<Claimed, RestoreError> {
        let waited = self.state.load(Ordering::Acquire) == MAPPING;
        let (reply, answer) = tokio::sync::oneshot::channel();
        let orders = self.orders.take().expect("claimed once");
        let sent = orders.send(Order::Claim(Claim {
            sent: Instant::now(),
            reply,
            linger: self.linger.take(),
        }));
        drop(orders);
        if sent.is_err() {
            return Err(RestoreError::Stub("the pre-map thread is gone".into()));
        }
        let mut claimed = answer.await.map_err(|_| {
            RestoreError::Stub("the pre-map thread ended without answering".into())
        })??;
        claimed.waited = waited;
        // The thread ends once it has answered.
        self.thread.take();
        Ok(claimed)
    }

    /// Makes the thread's clean-up after the claim wait for `gate` (see
    /// [`Linger`]).
    pub fn linger(&mut self, gate: Linger) {
        self.linger = Some(gate);
    }

    /// Ends the thread and waits for it: the stub is killed and its death
    /// reported to the thread, so that the sandbox's pid 1 can reap it.
    /// Blocking (at most a pre-map still running, a few milliseconds).
    pub fn stop(mut self) {
        self.orders.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for PremappedCopy {
    fn drop(&mut self) {
        // The thread sees the channel closed, kills the stub and ends.
        self.orders.take();
    }
}

/// What a pre-map thread owns.
struct Job {
    restorer: Arc<SnapshotRestorer>,
    snapshot: Arc<Snapshot>,
    prepared: Prepared,
    stub_pid: i32,
    credentials: Credentials,
    state: Arc<AtomicU8>,
    planless: Arc<AtomicBool>,
}

impl Job {
    /// The thread: pre-map, wait for the claim (or the end), finish; a
    /// copy pre-mapped without a working set is planned when told to.
    fn run(self, orders: mpsc::Receiver<Order>) {
        let Job {
            restorer,
            snapshot,
            prepared,
            stub_pid,
            credentials,
            state,
            planless: planless_flag,
        } = self;
        let started = Instant::now();
        let mut options = super::sandboxed::options(Vec::new());
        options.mode = Mode::Mmap;
        options.credentials = credentials;
        let recorded = restorer.working_set(&snapshot.id);
        // No working set recorded yet (not: nothing to populate, which
        // `THAW_POPULATE=0` makes of every set): the claim populates it
        // if one exists by then.
        let mut planless = recorded.is_none();
        if let Some(pages) = recorded {
            options.prefetch = working_set::for_mode(&pages, Mode::Mmap);
        }
        let ctx = Driving {
            snapshot: &snapshot,
            view: ProcessView::root(&snapshot, &prepared.image),
            places: None,
            image: &prepared.image,
            plan: &prepared.plan,
            options: &options,
            stub_pidfd: None,
            keep_uffd: true,
            collect_uffds: None,
            shared_memfds: None,
            lazy: None,
            plans: prepared.plans.as_deref(),
        };
        let mut at_premap = RestoreTimings::default();
        // A file changed since the spare was made: nothing is mapped, the
        // stub is left as it is, and the claim refuses as it would have
        // without the pre-map (the spare is not skipped as a failed one).
        let rechecked = prepared.recheck(&snapshot);
        let refused = rechecked.is_err();
        let mapped = rechecked.and_then(|()| {
            let mapped = premap(&ctx, &prepared, stub_pid, &mut at_premap)?;
            // No working set recorded yet (the first spares after a
            // deploy): the claim populates it once it exists, which must
            // come before the seccomp policy (it denies `process_madvise`,
            // the populate's vectors): those stay at step 1.
            if !ahead() || options.prefetch.is_empty() {
                return Ok(Staged::Mapped(mapped));
            }
            settle_process(mapped, &ctx, &mut at_premap, Settle::Ahead).map(Staged::Settled)
        });
        let mut premap_took = started.elapsed();
        match &mapped {
            Err(err) if refused => {
                tracing::debug!(snapshot = %snapshot.id, pid = stub_pid, %err, "spare not pre-mapped: a file changed");
            }
            Ok(_) => {
                planless_flag.store(planless, Ordering::Release);
                state.store(MAPPED, Ordering::Release);
                tracing::debug!(
                    snapshot = %snapshot.id,
                    pid = stub_pid,
                    premap_us = premap_took.as_micros() as u64,
                    seize_us = at_premap.stub.as_micros() as u64,
                    mappings_us = at_premap.mappings.as_micros() as u64,
                    state_us = at_premap.state.as_micros() as u64,
                    populated = at_premap.populated,
                    "spare pre-mapped"
                );
            }
            Err(err) => {
                state.store(FAILED, Ordering::Release);
                if let Some(suppressed) = crate::ratelimit::POOL_LOG.allow("premap") {
                    tracing::warn!(snapshot = %snapshot.id, pid = stub_pid, %err, suppressed, "pre-mapping a spare failed");
                }
            }
        }
        // Dropped, the spare's copy: `mapped` kills the stub on the way out.
        let mut mapped = mapped;
        let claim = loop {
            match orders.recv() {
                Err(_) => return,
                Ok(Order::Claim(claim)) => break claim,
                Ok(Order::Plan) => {
                    let began = Instant::now();
                    mapped = plan_in_place(
                        mapped,
                        &ctx,
                        &restorer,
                        &snapshot,
                        &mut planless,
                        &mut at_premap,
                    );
                    premap_took += began.elapsed();
                    planless_flag.store(planless, Ordering::Release);
                    state.store(
                        if mapped.is_ok() { MAPPED } else { FAILED },
                        Ordering::Release,
                    );
                }
            }
        };
        let handoff = claim.sent.elapsed();
        let mut timings = RestoreTimings {
            plan: prepared.took,
            injected: at_premap.injected,
            batched: at_premap.batched,
            populated: at_premap.populated,
            ..RestoreTimings::default()
        };
        let finished = mapped.and_then(|mut staged| {
            // The copy may have waited: its files must still be as the
            // snapshot saw them (the stub dies with `staged` otherwise).
            prepared.recheck(&snapshot)?;
            // Mapped before its snapshot's working set was recorded (the
            // first spares after a deploy): populated now, as a copy
            // restored whole at the claim would be.
            if planless {
                let started = Instant::now();
                if populate_recorded(&mut staged, &ctx, &restorer, &snapshot, &mut timings)?
                    .is_some()
                {
                    timings.mappings = started.elapsed();
                }
            }
            let ready = match staged {
                Staged::Mapped(mapped) => set_process(mapped, &ctx, &mut timings)?,
                Staged::Settled(settled) => settled.finish(&ctx, &mut timings)?,
            };
            ready.resume(&mut timings)
        });
        let answer = finished.map(|server| {
            debug_assert!(server.is_none(), "mmap mode has no page server");
            Claimed {
                timings,
                premap: premap_took,
                populated: timings.populated,
                handoff,
                waited: false,
            }
        });
        // A claim given up (its request gone) leaves a running copy in its
        // sandbox, which the sandbox's teardown ends.
        let _ = claim.reply.send(answer);
        if let Some(Linger(gate)) = claim.linger {
            // Returns once the sender is dropped (it never sends).
            let _ = gate.recv();
        }
    }
}

/// Populates the working set recorded since a copy was pre-mapped without
/// one and, unless `THAW_PREMAP_AHEAD=0`, runs steps 2-8 but what counts
/// from the resume, as a pre-map made now would have ([`Order::Plan`]).
/// A copy with a plan already, or still without a recorded set, is left as
/// it is; on an error the stub dies with the copy.
fn plan_in_place(
    mapped: Result<Staged, RestoreError>,
    ctx: &Driving<'_, '_>,
    restorer: &SnapshotRestorer,
    snapshot: &Snapshot,
    planless: &mut bool,
    timings: &mut RestoreTimings,
) -> Result<Staged, RestoreError> {
    let mut staged = mapped?;
    if !*planless {
        return Ok(staged);
    }
    let Some(has_pages) = populate_recorded(&mut staged, ctx, restorer, snapshot, timings)? else {
        return Ok(staged);
    };
    *planless = false;
    let staged = match staged {
        Staged::Mapped(copy) if ahead() && has_pages => {
            settle_process(copy, ctx, timings, Settle::Ahead).map(Staged::Settled)?
        }
        other => other,
    };
    tracing::debug!(
        snapshot = %snapshot.id,
        populated = timings.populated,
        "pre-mapped spare planned in place"
    );
    Ok(staged)
}

/// Populates the working set recorded since a copy was pre-mapped without
/// one into it (a copy at step 1: `Staged::Mapped`), counting the ranges in
/// `timings.populated`. `None` while no set is recorded; otherwise whether
/// the set had pages to populate (none with `THAW_POPULATE=0`).
fn populate_recorded(
    staged: &mut Staged,
    ctx: &Driving<'_, '_>,
    restorer: &SnapshotRestorer,
    snapshot: &Snapshot,
    timings: &mut RestoreTimings,
) -> Result<Option<bool>, RestoreError> {
    let Some(pages) = restorer.working_set(&snapshot.id) else {
        return Ok(None);
    };
    let pages = working_set::for_mode(&pages, Mode::Mmap);
    if let Staged::Mapped(copy) = staged {
        timings.populated = copy.populate(ctx, &pages)?;
    }
    Ok(Some(!pages.is_empty()))
}

/// Seizes the stub and maps the copy's memory (step 1). The caller
/// checked the files again first (the spare may have waited for its
/// pre-map, held while a burst was served).
fn premap(
    ctx: &Driving<'_, '_>,
    prepared: &Prepared,
    stub_pid: i32,
    timings: &mut RestoreTimings,
) -> Result<Mapped, RestoreError> {
    if !prepared.plan.ready() {
        return Err(RestoreError::Unsupported(
            "the stub's files were not taken back and checked (Prepared::adopt)".into(),
        ));
    }
    let started = Instant::now();
    let remote = Remote::seize(stub_pid)?;
    timings.stub = started.elapsed();
    map_process(remote, ctx, timings)
}
