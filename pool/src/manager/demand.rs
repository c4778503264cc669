//! Spares that follow demand: a version whose cold starts come in bursts
//! keeps more spares ready than `spare_sandboxes`.
//!
//! The pool counts, per version, the cold starts in flight (from the
//! request's admission to its answer, for versions with a snapshot, forced
//! boots excepted). Its *demand* is the peak of that count, decaying
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

use std::time::Duration;

use tokio::time::Instant;

use super::spares::SpareConfig;
use super::{FunctionKey, Pool, State};

/// Demand below this is forgotten (its target is `per_version` anyway).
const FORGET_BELOW: f64 = 0.25;

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
/// the count when it is higher.
fn begin(st: &mut State, cfg: &SpareConfig, key: &FunctionKey, now: Instant) {
    let n = st.cold_in_flight.entry(key.clone()).or_default();
    *n += 1;
    tracing::debug!(function = %key.name, version = key.version, in_flight = *n, "cold start admitted");
    let in_flight = *n as f64;
    if !learning(cfg) {
        return;
    }
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
}

/// Forgets the demand of versions whose level decayed away (or that are
/// gone).
pub(super) fn forget_decayed(st: &mut State, cfg: &SpareConfig, now: Instant) {
    let State { demand, specs, .. } = st;
    demand.retain(|k, d| {
        specs.contains_key(k) && d.decayed(now, cfg.demand_half_life) >= FORGET_BELOW
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
            begin(&mut st, &cfg, &key(), t0);
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
            begin(&mut st, &cfg, &key(), t0);
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
            begin(&mut st, &cfg, &key(), t0);
        }
        assert_eq!(target(&st, &cfg, &key(), t0), 2);
        // The count in flight is kept either way.
        assert_eq!(st.cold_in_flight[&key()], 8);
    }
}
