//! Spares that follow demand: a version whose cold starts come in bursts
//! keeps more spares ready than `spare_sandboxes`.
//!
//! The pool counts, per version, the cold starts in flight (from the
//! request's admission to its answer, for versions with a snapshot, forced
//! boots excepted) and the cold starts admitted within the last
//! [`window`] (one second by default): a burst whose requests arrive spread
//! over a few hundred milliseconds, fewer of them in flight at once than
//! the burst has, is counted whole. Its *demand* is the peak of the larger
//! of the two counts, decaying
//! exponentially with a half-life ([`SpareConfig::demand_half_life`],
//! minutes by default): a burst of 16 raises it to 16, and with a
//! half-life of 2 minutes it is back to 2 after about 6 minutes without
//! another burst. A version's spare *target* is its demand rounded, never
//! below `per_version` nor above `burst_max`; the refill keeps that many
//! ready, recycled sandboxes are kept up to it, and spares beyond it are
//! trimmed as it decays. The node cap (`max_total`) still bounds the sum,
//! and the extra spares a burst asks for are handed out only after every
//! version got its `per_version`, most recently used first, so a bursty
//! function never takes another's base spares. The memory budget bounds
//! them too: no spare is launched while the budget is full (spares count
//! their PSS).
//!
//! `burst_max <= per_version` turns the learning off (the target is always
//! `per_version`).

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

use super::spares::SpareConfig;
use super::{FunctionKey, Pool, State};

/// Demand below this is forgotten (its target is `per_version` anyway).
const FORGET_BELOW: f64 = 0.25;

/// Environment variable: the window, in milliseconds, within which a
/// version's cold starts count as one burst ([`window`]); `0` counts only
/// those in flight at once (the behaviour before, for A/B measurements).
pub const DEMAND_WINDOW_ENV: &str = "THAW_SPARE_DEMAND_WINDOW_MS";

/// Default [`window`].
const DEFAULT_WINDOW: Duration = Duration::from_secs(1);

/// Cold starts of one version admitted within this window count together
/// toward its demand (`THAW_SPARE_DEMAND_WINDOW_MS`, default 1 s). A burst
/// of 16 requests sent at once reaches the server spread over 100-350 ms
/// on a busy 2-core machine, and the first answers come before the last
/// arrive: the count in flight peaked at 10-13, so the pool kept too few
/// spares for the next burst (docs/restore.md, "A burst's timeline").
pub(super) fn window() -> Duration {
    static WINDOW: std::sync::OnceLock<Duration> = std::sync::OnceLock::new();
    *WINDOW.get_or_init(|| {
        std::env::var(DEMAND_WINDOW_ENV)
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map_or(DEFAULT_WINDOW, Duration::from_millis)
    })
}

/// The cold starts of one version admitted within the window, oldest
/// first (at most `burst_max` kept: more never raise the target).
#[derive(Debug, Default)]
pub(super) struct Arrivals(VecDeque<Instant>);

impl Arrivals {
    /// Records an arrival at `now` and returns how many arrived within
    /// `window` of it (this one included), at most `cap`.
    fn record(&mut self, now: Instant, window: Duration, cap: usize) -> usize {
        while self
            .0
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= window)
        {
            self.0.pop_front();
        }
        if window.is_zero() {
            return 1;
        }
        self.0.push_back(now);
        while self.0.len() > cap.max(1) {
            self.0.pop_front();
        }
        self.0.len()
    }
}

/// The learned demand of one version.
#[derive(Debug, Clone, Copy)]
pub(super) struct Demand {
    /// Peak of concurrent cold starts, as of `at`.
    level: f64,
    /// When `level` was last set.
    at: Instant,
}

impl Demand {
    /// The level decayed to `now`.
    fn decayed(&self, now: Instant, half_life: Duration) -> f64 {
        if half_life.is_zero() {
            return 0.0;
        }
        let halves = now.saturating_duration_since(self.at).as_secs_f64() / half_life.as_secs_f64();
        self.level * 0.5f64.powf(halves)
    }
}

/// Whether spares follow demand at all.
fn learning(cfg: &SpareConfig) -> bool {
    cfg.burst_max > cfg.per_version && !cfg.demand_half_life.is_zero()
}

/// The spares `key` should keep ready now (before the node cap).
pub(super) fn target(st: &State, cfg: &SpareConfig, key: &FunctionKey, now: Instant) -> usize {
    if !learning(cfg) {
        return cfg.per_version;
    }
    let learned = st
        .demand
        .get(key)
        .map_or(0.0, |d| d.decayed(now, cfg.demand_half_life));
    (learned.round() as usize).clamp(cfg.per_version, cfg.burst_max)
}

/// Counts one more cold start of `key` in flight and raises its demand to
/// the count in flight, or to the count admitted within `window`, when
/// that is higher.
fn begin(st: &mut State, cfg: &SpareConfig, key: &FunctionKey, now: Instant, window: Duration) {
    let n = st.cold_in_flight.entry(key.clone()).or_default();
    *n += 1;
    let in_flight = *n;
    if st.cold_busy_since.is_none() {
        st.cold_busy_since = Some(now);
        st.cold_busy_arrivals = 0;
        st.cold_busy_missed = false;
    }
    st.cold_busy_arrivals += 1;
    let arrived = if learning(cfg) {
        st.arrivals
            .entry(key.clone())
            .or_default()
            .record(now, window, cfg.burst_max)
    } else {
        0
    };
    tracing::debug!(function = %key.name, version = key.version, in_flight, arrived, "cold start admitted");
    if !learning(cfg) {
        return;
    }
    let in_flight = in_flight.max(arrived) as f64;
    let level = st
        .demand
        .get(key)
        .map_or(0.0, |d| d.decayed(now, cfg.demand_half_life));
    if in_flight > level {
        st.demand.insert(
            key.clone(),
            Demand {
                level: in_flight,
                at: now,
            },
        );
    }
}

/// Counts one less cold start of `key` in flight.
fn end(st: &mut State, key: &FunctionKey) {
    if let Some(n) = st.cold_in_flight.get_mut(key) {
        *n = n.saturating_sub(1);
        tracing::debug!(function = %key.name, version = key.version, in_flight = *n, "cold start answered");
        if *n == 0 {
            st.cold_in_flight.remove(key);
        }
    }
    if st.cold_in_flight.is_empty() {
        st.cold_busy_since = None;
    }
}

/// Forgets the demand of versions whose level decayed away (or that are
/// gone).
pub(super) fn forget_decayed(st: &mut State, cfg: &SpareConfig, now: Instant) {
    let State {
        demand,
        specs,
        arrivals,
        ..
    } = st;
    demand.retain(|k, d| {
        specs.contains_key(k) && d.decayed(now, cfg.demand_half_life) >= FORGET_BELOW
    });
    let window = window();
    arrivals.retain(|k, a| {
        specs.contains_key(k)
            && a.0
                .back()
                .is_some_and(|t| now.saturating_duration_since(*t) < window)
    });
}

/// A cold start of one version in flight; counted until dropped.
pub(super) struct ColdInFlight {
    pool: Pool,
    key: FunctionKey,
}

impl Drop for ColdInFlight {
    fn drop(&mut self) {
        end(&mut self.pool.state.lock().unwrap(), &self.key);
        // Background work deferred while cold starts were in flight may
        // run now (super::defer).
        self.pool.shared.cold_done.notify_waiters();
    }
}

impl Pool {
    /// Counts a cold start of `key` in flight until the returned guard is
    /// dropped (see the module docs).
    pub(super) fn cold_in_flight(&self, key: &FunctionKey) -> ColdInFlight {
        begin(
            &mut self.state.lock().unwrap(),
            &self.config.spares,
            key,
            Instant::now(),
            window(),
        );
        ColdInFlight {
            pool: self.clone(),
            key: key.clone(),
        }
    }

    /// The spare target of every registered version with a snapshot: what
    /// the refill keeps ready for it when the node cap and the budget
    /// allow (`per_version`, more after bursts; see the module docs).
    pub fn spare_targets(&self) -> Vec<(FunctionKey, usize)> {
        let st = self.state.lock().unwrap();
        let now = Instant::now();
        let mut out: Vec<(FunctionKey, usize)> = st
            .specs
            .iter()
            .filter(|(k, s)| s.snapshot.is_some() && !st.retired.contains(*k))
            .map(|(k, _)| (k.clone(), target(&st, &self.config.spares, k, now)))
            .collect();
        out.sort_by(|a, b| (&a.0.name, a.0.version).cmp(&(&b.0.name, b.0.version)));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> FunctionKey {
        FunctionKey {
            name: "f".into(),
            version: 1,
            uid: 1,
        }
    }

    fn cfg(half_life: Duration) -> SpareConfig {
        SpareConfig {
            per_version: 2,
            max_total: 16,
            burst_max: 12,
            demand_half_life: half_life,
        }
    }

    #[test]
    fn a_burst_raises_the_target_which_halves_per_half_life() {
        let cfg = cfg(Duration::from_secs(60));
        let mut st = State::default();
        let t0 = Instant::now();
        assert_eq!(target(&st, &cfg, &key(), t0), 2);
        for _ in 0..8 {
            begin(&mut st, &cfg, &key(), t0, Duration::ZERO);
        }
        for _ in 0..8 {
            end(&mut st, &key());
        }
        assert!(st.cold_in_flight.is_empty());
        assert_eq!(target(&st, &cfg, &key(), t0), 8);
        assert_eq!(target(&st, &cfg, &key(), t0 + Duration::from_secs(60)), 4);
        assert_eq!(target(&st, &cfg, &key(), t0 + Duration::from_secs(600)), 2);
    }

    #[test]
    fn the_target_stays_within_per_version_and_burst_max() {
        let cfg = cfg(Duration::from_secs(60));
        let mut st = State::default();
        let t0 = Instant::now();
        for _ in 0..30 {
            begin(&mut st, &cfg, &key(), t0, Duration::ZERO);
        }
        assert_eq!(target(&st, &cfg, &key(), t0), 12);
    }

    #[test]
    fn learning_off_keeps_per_version() {
        let mut cfg = cfg(Duration::from_secs(60));
        cfg.burst_max = 2;
        let mut st = State::default();
        let t0 = Instant::now();
        for _ in 0..8 {
            begin(&mut st, &cfg, &key(), t0, Duration::ZERO);
        }
        assert_eq!(target(&st, &cfg, &key(), t0), 2);
        // The count in flight is kept either way.
        assert_eq!(st.cold_in_flight[&key()], 8);
    }

    /// `n` cold starts `gap_ms` apart from `t0`, each answered before the
    /// next.
    fn one_at_a_time(
        st: &mut State,
        cfg: &SpareConfig,
        t0: Instant,
        n: u64,
        gap_ms: u64,
        window: Duration,
    ) {
        for i in 0..n {
            begin(
                st,
                cfg,
                &key(),
                t0 + Duration::from_millis(gap_ms * i),
                window,
            );
            end(st, &key());
        }
    }

    #[test]
    fn arrivals_within_the_window_count_even_when_they_do_not_overlap() {
        let cfg = cfg(Duration::from_secs(60));
        let window = Duration::from_secs(1);
        let mut st = State::default();
        let t0 = Instant::now();
        // Ten cold starts 30 ms apart, each answered before the next.
        one_at_a_time(&mut st, &cfg, t0, 10, 30, window);
        assert!(st.cold_in_flight.is_empty());
        assert_eq!(
            target(&st, &cfg, &key(), t0 + Duration::from_millis(270)),
            10
        );
        // Counted only in flight (window 0), the same arrivals teach nothing.
        let mut st = State::default();
        one_at_a_time(&mut st, &cfg, t0, 10, 30, Duration::ZERO);
        assert_eq!(
            target(&st, &cfg, &key(), t0 + Duration::from_millis(270)),
            2
        );
    }

    #[test]
    fn arrivals_older_than_the_window_do_not_count() {
        let cfg = cfg(Duration::from_secs(60));
        let window = Duration::from_millis(100);
        let mut st = State::default();
        let t0 = Instant::now();
        // One cold start every 60 ms: never more than 2 within 100 ms.
        one_at_a_time(&mut st, &cfg, t0, 20, 60, window);
        assert_eq!(st.arrivals[&key()].0.len(), 2);
        assert_eq!(
            target(&st, &cfg, &key(), t0 + Duration::from_millis(1140)),
            2
        );
        // The count is capped at burst_max.
        for _ in 0..40 {
            begin(&mut st, &cfg, &key(), t0 + Duration::from_secs(2), window);
        }
        assert_eq!(st.arrivals[&key()].0.len(), cfg.burst_max);
        assert_eq!(target(&st, &cfg, &key(), t0 + Duration::from_secs(2)), 12);
    }
}
