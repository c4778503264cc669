//! Recycling: a forced cold start's copy, once it has answered, leaves its
//! sandbox to its version as the next spare instead of having it destroyed
//! while a new one is made ([`crate::sandbox::recycle`] resets the
//! sandbox; [`Stub::recycle`] starts the next stub in it).
//!
//! The copy's sandbox is recycled when all of these hold, else it is
//! destroyed as before and the reason counted ([`NotRecycled`]):
//! * recycling is on (`THAW_SANDBOX_RECYCLE`, and spares are enabled) and
//!   the sandbox is recyclable (a stub sandbox, loopback-only network);
//! * its version is still registered with the snapshot the copy was
//!   restored from (so the next copy is of the same code, limits and
//!   network mode), is not restored lazily, and lacks a spare: its spares
//!   ready and being reset are fewer than its allotment plus its other
//!   forced copies still running (its allotment is its spare target, which
//!   rises after bursts: [`super::demand`]; under closed-loop load each of those is
//!   a client about to ask again; the refill trims spares only beyond that
//!   headroom). A forced copy's sandbox is counted as a spare being made
//!   from the copy's start, so the refill does not launch one meanwhile;
//! * the reset succeeds (pid 1 found nothing unexpected; the network
//!   namespace is clean; the new stub's files check out). A sandbox whose
//!   reset fails is destroyed and the failure logged.

use std::sync::atomic::{AtomicU64, Ordering};

use tokio::time::Instant;

use super::{FunctionKey, Pool, StartSpec};
use crate::instance::{Instance, Stub};

/// Why a torn-down copy's sandbox was not recycled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotRecycled {
    /// Recycling is off, or the sandbox is not recyclable (outbound).
    Off,
    /// Its version has the spares it is allotted, or is no longer
    /// registered with that snapshot.
    NotWanted,
    /// The reset failed or found something unexpected: destroyed.
    Failed,
}

impl NotRecycled {
    /// Every reason, in the order [`Counters`] keeps them.
    pub const ALL: [NotRecycled; 3] = [
        NotRecycled::Off,
        NotRecycled::NotWanted,
        NotRecycled::Failed,
    ];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            NotRecycled::Off => "off",
            NotRecycled::NotWanted => "not_wanted",
            NotRecycled::Failed => "failed",
        }
    }
}

/// Counts of recycled sandboxes and of those that were not.
#[derive(Debug, Default)]
pub(super) struct Counters {
    recycled: AtomicU64,
    not: [AtomicU64; 3],
}

impl Counters {
    fn not(&self, why: NotRecycled) {
        self.not[why as usize].fetch_add(1, Ordering::Relaxed);
    }
}

/// Counts one less of `key` in `map`.
fn decrement(map: &mut std::collections::HashMap<FunctionKey, usize>, key: &FunctionKey) {
    if let Some(n) = map.get_mut(key) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            map.remove(key);
        }
    }
}

/// Spares `key` may keep beyond its allotment: one per forced copy of it
/// still running whose sandbox is expected back (see the module docs).
pub(super) fn headroom(st: &super::State, key: &FunctionKey) -> usize {
    st.spares_recycle_ahead.get(key).copied().unwrap_or(0)
}

impl Pool {
    /// Sandboxes recycled into spares, since the start.
    pub fn sandboxes_recycled(&self) -> u64 {
        self.shared.recycle.recycled.load(Ordering::Relaxed)
    }

    /// Torn-down restored copies whose sandbox was not recycled, by reason,
    /// since the start.
    pub fn sandboxes_not_recycled(&self) -> [(NotRecycled, u64); 3] {
        NotRecycled::ALL.map(|why| {
            (
                why,
                self.shared.recycle.not[why as usize].load(Ordering::Relaxed),
            )
        })
    }

    /// A forced cold start's restored copy has answered and is no longer
    /// wanted: its sandbox becomes a spare of `key` when the version lacks
    /// one (see the module docs), else it is destroyed; both in the
    /// background ([`Pool::shutdown`] waits for them).
    pub(super) fn recycle_or_discard_later(
        &self,
        key: &FunctionKey,
        spec: &StartSpec,
        instance: Instance,
        claimed_ahead: bool,
    ) {
        let claimed = match self.claim_recycle(key, spec, &instance, claimed_ahead) {
            Ok(()) => true,
            Err(why) => {
                self.shared.recycle.not(why);
                false
            }
        };
        if !claimed {
            self.discard_later(instance);
            return;
        }
        let (Some(snapshot), Some(restorer)) =
            (spec.snapshot.clone(), self.config.restorer.clone())
        else {
            unreachable!("claim_recycle checked the snapshot and restorer");
        };
        self.state.lock().unwrap().live.remove(instance.id());
        self.shared
            .discarding
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let pool = self.clone();
        let key = key.clone();
        let sink = spec.logs.clone();
        tokio::spawn(async move {
            // Not while a burst is served (super::defer): the copy waits,
            // idle, counted as a teardown and a spare being made.
            pool.after_cold_starts().await;
            let started = Instant::now();
            let id = instance.id().to_string();
            let result =
                Stub::recycle(instance, &pool.config.sandbox, &snapshot, &restorer, sink).await;
            tracing::debug!(
                function = %key.name,
                version = key.version,
                sandbox = %id,
                recycle_us = started.elapsed().as_micros() as u64,
                ok = result.is_ok(),
                "sandbox recycled"
            );
            let mut sample = None;
            match result {
                Ok(stub) => {
                    pool.shared.recycle.recycled.fetch_add(1, Ordering::Relaxed);
                    match pool.keep_spare(&key, stub, started) {
                        Ok(id) => {
                            pool.premap_later(key.clone(), id.clone());
                            sample = Some(id)
                        }
                        Err(stub) => super::spares::destroy_all(vec![*stub]).await,
                    }
                }
                Err(e) => {
                    pool.shared.recycle.not(NotRecycled::Failed);
                    if let Some(suppressed) = crate::ratelimit::POOL_LOG.allow("recycle") {
                        tracing::warn!(
                            function = %key.name,
                            version = key.version,
                            sandbox = %id,
                            error = %e,
                            suppressed,
                            "sandbox recycle failed; destroyed"
                        );
                    }
                }
            }
            decrement(&mut pool.state.lock().unwrap().spares_recycling, &key);
            pool.launch_done(&key);
            pool.shared
                .discarding
                .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
            if let Some(id) = sample {
                pool.sample_new_spare(&id);
            }
            // Another spare may be wanted after all (a failed recycle).
            pool.shared.refill.notify_one();
        });
    }

    /// When a forced restore's copy starts: if its sandbox may come back
    /// as a spare of `key` (recycling on, a recyclable sandbox, spares on),
    /// counts it as a spare being made until it ends, so the refill does
    /// not launch one meanwhile. Returns whether it did; the claim is
    /// settled by [`Pool::recycle_or_discard_later`] or released by
    /// [`Pool::release_recycle_claim`].
    pub(super) fn claim_recycle_ahead(
        &self,
        key: &FunctionKey,
        spec: &StartSpec,
        instance: &Instance,
    ) -> bool {
        if !self.may_recycle(spec, instance) {
            return false;
        }
        let mut st = self.state.lock().unwrap();
        *st.spares_recycle_ahead.entry(key.clone()).or_default() += 1;
        *st.spares_launching.entry(key.clone()).or_default() += 1;
        true
    }

    /// Gives back a claim of [`Pool::claim_recycle_ahead`] (the copy
    /// failed, or its sandbox is not wanted) and wakes the refill.
    pub(super) fn release_recycle_claim(&self, key: &FunctionKey) {
        decrement(&mut self.state.lock().unwrap().spares_recycle_ahead, key);
        self.launch_done(key);
        self.shared.refill.notify_one();
    }

    fn may_recycle(&self, spec: &StartSpec, instance: &Instance) -> bool {
        crate::sandbox::recycle::enabled()
            && instance.recyclable()
            && spec.snapshot.is_some()
            && self.config.restorer.is_some()
            && self.spares_enabled()
    }

    /// Whether the sandbox of `instance` (restored from `spec`'s snapshot)
    /// should become a spare of `key`; if so, it is counted as a spare
    /// being recycled (already, with `claimed_ahead`; a claim not used is
    /// released).
    fn claim_recycle(
        &self,
        key: &FunctionKey,
        spec: &StartSpec,
        instance: &Instance,
        claimed_ahead: bool,
    ) -> Result<(), NotRecycled> {
        let result = self.decide_recycle(key, spec, instance, claimed_ahead);
        if result.is_err() && claimed_ahead {
            self.release_recycle_claim(key);
        }
        result
    }

    fn decide_recycle(
        &self,
        key: &FunctionKey,
        spec: &StartSpec,
        instance: &Instance,
        claimed_ahead: bool,
    ) -> Result<(), NotRecycled> {
        if !crate::sandbox::recycle::enabled() || !instance.recyclable() {
            return Err(NotRecycled::Off);
        }
        let (Some(snapshot), Some(_)) = (&spec.snapshot, &self.config.restorer) else {
            return Err(NotRecycled::Off);
        };
        if !self.spares_enabled() {
            return Err(NotRecycled::Off);
        }
        if self.restores_lazily(spec) {
            return Err(NotRecycled::NotWanted);
        }
        let mut st = self.state.lock().unwrap();
        let st = &mut *st;
        let current = st
            .specs
            .get(key)
            .and_then(|s| s.snapshot.as_ref())
            .is_some_and(|s| s.id == snapshot.id);
        if st.closed || st.retired.contains(key) || !current {
            return Err(NotRecycled::NotWanted);
        }
        // Wanted while the version's spares, ready and being reset, are
        // fewer than its allotment plus its other forced copies still
        // running (each is a client about to ask again: closed-loop load
        // keeps its sandboxes circulating instead of destroying them and
        // making new ones on demand). Fresh launches in flight do not
        // count: a spare in excess is trimmed by the refill, as this
        // sandbox would have been destroyed.
        let cfg = self.config.spares;
        let ready = st.spares.get(key).map_or(0, Vec::len);
        let recycling = st.spares_recycling.get(key).copied().unwrap_or(0);
        let ahead = st.spares_recycle_ahead.get(key).copied().unwrap_or(0);
        let others = ahead.saturating_sub(usize::from(claimed_ahead));
        let total: usize = st.spares.values().map(Vec::len).sum::<usize>()
            + st.spares_recycling.values().sum::<usize>();
        let target = super::demand::target(st, &cfg, key, Instant::now());
        if ready + recycling >= target + others || total >= cfg.max_total {
            return Err(NotRecycled::NotWanted);
        }
        if claimed_ahead {
            decrement(&mut st.spares_recycle_ahead, key);
        } else {
            *st.spares_launching.entry(key.clone()).or_default() += 1;
        }
        *st.spares_recycling.entry(key.clone()).or_default() += 1;
        Ok(())
    }
}
