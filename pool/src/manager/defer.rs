//! Background work waits while a burst of cold starts is served.
//!
//! On 2 cores a burst of cold starts is CPU-bound: whatever else runs
//! meanwhile delays the last answer. Nothing the pool does in the
//! background helps a cold start already in flight (a cold start that
//! finds no spare makes its own sandbox on its path), so while cold starts
//! are in flight the pool holds back, at each one's start:
//! * recycling an answered copy's sandbox into a spare ([`super::recycle`]),
//! * tearing down an answered copy or a dropped spare,
//! * launching spares (the refill, [`super::spares`]),
//! * the periodic memory measurement of live sandboxes (skipped by a tick
//!   that finds cold starts in flight; the next one does it),
//! * the clean-up of a claimed pre-mapped copy's thread (its files closed,
//!   the thread ended: [`crate::restore::premap::Linger`]),
//! * pre-mapping a spare ([`crate::restore::premap`]), which also waits
//!   when a cold start of the busy period missed a spare (see
//!   [`premap_held_until`]); the spare is kept, claimable, meanwhile.
//!
//! They run once no cold start is in flight, or as soon as a cold start of
//! the busy period (since the count last rose from zero) found no spare
//! ready, or once its cold starts are more than a burst the pool keeps
//! spares for (`spare_sandboxes_burst`, at least `spare_sandboxes`): then
//! the spares do not cover the demand (a first burst, before the pool
//! learned it; sustained load, many clients forcing cold starts back to
//! back, whose count in flight never drops to zero), and a recycled
//! sandbox or a new spare may serve a request of the same busy period
//! that would otherwise make its own on its path. Nothing waits longer
//! than the hold limit ([`hold_max`], 2 s by default) either. Held work is
//! counted as in flight already (teardowns in
//! `thaw_sandbox_teardowns_in_flight`, recycles also as spares being
//! made), so nothing settles, and nothing leaks, while it waits. A held
//! copy no longer counts against the memory budget (as before, from its
//! answer on), so for up to the hold limit the pool's memory may exceed
//! the budget by the copies of one burst.
//!
//! `THAW_BURST_DEFER_MS` sets the hold limit in milliseconds; `0` turns
//! holding off (the behaviour before, for A/B measurements).

use std::time::Duration;

use tokio::time::Instant;

use super::{Pool, State};

/// Environment variable: the hold limit in milliseconds ([`hold_max`]);
/// `0` runs background work at once, as before.
pub const DEFER_ENV: &str = "THAW_BURST_DEFER_MS";

/// Default [`hold_max`]. A burst of 16 numpy cold starts is over in ~0.1 s
/// on a quiet 2-core machine, 0.3-0.9 s on a loaded one (2026-12-06: with
/// a limit of 0.5 s the slowest bursts ran their recycles in their tail).
const DEFAULT_HOLD_MAX: Duration = Duration::from_secs(2);

/// Longest time background work waits for cold starts in flight, counted
/// from the moment their count last rose from zero
/// (`THAW_BURST_DEFER_MS`); zero: it never waits.
pub fn hold_max() -> Duration {
    static HOLD: std::sync::OnceLock<Duration> = std::sync::OnceLock::new();
    *HOLD.get_or_init(|| {
        std::env::var(DEFER_ENV)
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map_or(DEFAULT_HOLD_MAX, Duration::from_millis)
    })
}

/// Until when background work should wait now, if it should: cold starts
/// are in flight, each found a spare, no more of them came since the count
/// rose from zero than `burst` (a burst the pool keeps spares for), and
/// not for `hold_max`.
fn held_until(st: &State, now: Instant, hold_max: Duration, burst: usize) -> Option<Instant> {
    if st.closed || st.cold_busy_missed || st.cold_busy_arrivals > burst {
        return None;
    }
    let until = st.cold_busy_since? + hold_max;
    (until > now).then_some(until)
}

/// Until when a spare's pre-map ([`crate::restore::premap`]) should wait
/// now, if it should: as [`held_until`], but also when a cold start of the
/// busy period found no spare. A spare made during a burst serves none of
/// it (each cold start claims a spare, or launches its own, as it
/// arrives), so pre-mapping it then only takes CPU from the burst; the
/// spare itself is kept at once (claimed before its pre-map, it restores
/// whole, as without one).
fn premap_held_until(
    st: &State,
    now: Instant,
    hold_max: Duration,
    burst: usize,
) -> Option<Instant> {
    if st.closed || st.cold_busy_arrivals > burst {
        return None;
    }
    let until = st.cold_busy_since? + hold_max;
    (until > now).then_some(until)
}

/// When background work waits ([`held_until`] or [`premap_held_until`]).
type HoldRule = fn(&State, Instant, Duration, usize) -> Option<Instant>;

impl Pool {
    /// Waits until no cold start is in flight, or they have been in flight
    /// for [`hold_max`] (see the module docs). Returns at once when holding
    /// is off.
    pub(super) async fn after_cold_starts(&self) {
        self.hold_while(held_until).await
    }

    /// Waits, before pre-mapping a spare, until no cold start is in flight
    /// ([`premap_held_until`]), at most [`hold_max`].
    pub(super) async fn before_premap(&self) {
        self.hold_while(premap_held_until).await
    }

    async fn hold_while(&self, rule: HoldRule) {
        if hold_max().is_zero() {
            return;
        }
        let mut waited = false;
        let started = Instant::now();
        loop {
            // Registered before the check: a cold start that ends between
            // the check and the wait still wakes it.
            let done = self.shared.cold_done.notified();
            let Some(until) = self.hold_deadline_by(rule) else {
                break;
            };
            waited = true;
            let _ = tokio::time::timeout_at(until, done).await;
        }
        if waited {
            tracing::debug!(
                waited_us = started.elapsed().as_micros() as u64,
                "background work held for cold starts"
            );
        }
    }

    /// Whether background work is being held now (see the module docs).
    pub(super) fn holding_for_cold_starts(&self) -> bool {
        self.hold_deadline().is_some()
    }

    /// Until when background work is held now, if it is ([`held_until`]
    /// with this pool's state, limit and burst size; never when holding is
    /// off).
    fn hold_deadline(&self) -> Option<Instant> {
        self.hold_deadline_by(held_until)
    }

    /// Until when background work waiting by `rule` is held now.
    fn hold_deadline_by(&self, rule: HoldRule) -> Option<Instant> {
        let hold = hold_max();
        if hold.is_zero() {
            return None;
        }
        rule(
            &self.state.lock().unwrap(),
            Instant::now(),
            hold,
            self.burst_size(),
        )
    }

    /// Notes that a cold start found no spare: work held for the busy
    /// period runs now (see the module docs).
    pub(super) fn note_spare_missed(&self) {
        let mut st = self.state.lock().unwrap();
        if st.cold_busy_since.is_some() && !st.cold_busy_missed {
            st.cold_busy_missed = true;
            drop(st);
            self.shared.cold_done.notify_waiters();
        }
    }

    /// The most cold starts of a busy period that count as a burst.
    fn burst_size(&self) -> usize {
        let cfg = self.config.spares;
        cfg.burst_max.max(cfg.per_version)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_while_cold_starts_are_in_flight_up_to_the_limit() {
        let mut st = State::default();
        let t0 = Instant::now();
        let hold = Duration::from_millis(500);
        assert_eq!(held_until(&st, t0, hold, 16), None);
        st.cold_busy_since = Some(t0);
        st.cold_busy_arrivals = 16;
        assert_eq!(held_until(&st, t0, hold, 16), Some(t0 + hold));
        assert_eq!(held_until(&st, t0 + hold, hold, 16), None);
        // More cold starts than a burst: sustained load, nothing held.
        st.cold_busy_arrivals = 17;
        assert_eq!(held_until(&st, t0, hold, 16), None);
        st.cold_busy_arrivals = 1;
        // A cold start that found no spare: the spares do not cover it.
        st.cold_busy_missed = true;
        assert_eq!(held_until(&st, t0, hold, 16), None);
        st.cold_busy_missed = false;
        st.closed = true;
        assert_eq!(held_until(&st, t0, hold, 16), None);
    }

    #[test]
    fn a_premap_waits_for_a_burst_even_after_a_miss() {
        let mut st = State::default();
        let t0 = Instant::now();
        let hold = Duration::from_millis(500);
        assert_eq!(premap_held_until(&st, t0, hold, 16), None);
        st.cold_busy_since = Some(t0);
        st.cold_busy_arrivals = 16;
        st.cold_busy_missed = true;
        assert_eq!(held_until(&st, t0, hold, 16), None);
        assert_eq!(premap_held_until(&st, t0, hold, 16), Some(t0 + hold));
        assert_eq!(premap_held_until(&st, t0 + hold, hold, 16), None);
        // Sustained load: not held (its spares serve later arrivals).
        st.cold_busy_arrivals = 17;
        assert_eq!(premap_held_until(&st, t0, hold, 16), None);
        st.cold_busy_arrivals = 1;
        st.closed = true;
        assert_eq!(premap_held_until(&st, t0, hold, 16), None);
    }
}
