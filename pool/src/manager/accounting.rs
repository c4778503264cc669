//! What the pool counts against its memory budget, and how it makes room.
//!
//! The rule: a starting instance reserves its memory limit until it is up;
//! from then on it counts its last measured PSS (its processes' `Pss` from
//! `/proc/PID/smaps_rollup`, summed over the sandbox: init, the function and
//! its children), or its limit until the first measurement lands. PSS
//! divides every shared page among the processes mapping it, so copies
//! restored from one image count its page cache once in all, not once each.
//! Measurements are taken off the request path: right after each start (in
//! the background) and for every live instance every [`SAMPLE_EVERY`] from
//! the maintenance tick; they are cached, so reports and the budget check
//! read no `/proc` files.
//!
//! A busy instance may grow between measurements: when a start asks for
//! room, each busy instance's cgroup charge is read (one small file) and
//! what it gained since its last measurement is counted on top of its PSS.
//!
//! A start that does not fit evicts idle instances, oldest first, those
//! beyond their version's `min_instances` before the others (and a
//! `min_instances` copy evicts only those beyond).
//!
//! Caveat: PSS moves as sharers come and go. When copies of an image are
//! evicted, the share of the image each remaining copy carries grows, so the
//! sum can rise without anything starting (it is corrected at the next
//! measurement, and the next start makes room again); page cache of the
//! image that no copy maps is not counted at all.

use std::time::Duration;

use tokio::time::Instant;

use super::{FunctionKey, InstanceInfo, Pool, PoolError, Room, StartKind, State};
use crate::cgroup::Cgroup;
use crate::instance::Instance;
use crate::memory::MemoryUse;

/// How often every live instance's memory is measured.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(2);

/// One live instance as the pool accounts it.
pub(super) struct Live {
    /// Its version.
    pub key: FunctionKey,
    /// Its sandbox's cgroup (whose processes are the instance).
    pub cgroup: Cgroup,
    /// How it started.
    pub start: StartKind,
    /// Its memory limit: what it counts until first measured.
    pub limit: u64,
    /// Its last measurement.
    pub memory: Option<MemoryUse>,
    /// Its cgroup's memory charge when last measured.
    pub charge_at_sample: Option<u64>,
    /// How much its cgroup's charge grew since it was last measured, as
    /// read when a start asked for room (a busy instance allocating).
    pub grown: u64,
    /// A spare: a stub sandbox waiting for a restore, not an instance yet.
    pub spare: bool,
    /// Measured by the maintenance tick. Not a forced cold start's
    /// instance (see `measure_after_start`): it serves one invocation and
    /// counts its limit until torn down.
    pub sampled: bool,
}

/// What a spare counts until first measured: a stub sandbox's init and
/// stub share the thaw binary's pages (a few MiB of PSS between them). A
/// pre-mapped spare counts its working set's pages on top
/// ([`Live::add_estimate`]): a numpy-pandas one held 19.7 MiB of PSS, all
/// but 1 MiB its populated pages (docs/restore.md, "Pre-mapped spares").
const SPARE_ESTIMATE: u64 = 4 << 20;

/// Environment variable that has every spare measured right after it is
/// made or recycled (`1`), as it was before; see [`measure_new_spares`].
pub const SAMPLE_SPARES_ENV: &str = "THAW_SAMPLE_SPARES";

/// Whether a spare is measured (its processes' `smaps_rollup` read) as
/// soon as it is made or recycled. Not by default: under sustained forced
/// cold starts a spare is made (or recycled) for every cold start, and
/// measuring its three processes (outer init, pid 1, stub) cost about
/// 0.4 ms of the server's CPU per numpy-pandas cold start on the AMD VM
/// (2026-12-06, docs/restore.md "The server's part, AMD") to learn a
/// figure that hardly varies: about 1 MiB of PSS, the same for every
/// function (the copy is not restored yet). Until measured, a spare counts
/// [`SPARE_ESTIMATE`], more than that: the budget over-counts, never lets
/// the pool exceed it. The maintenance tick measures every live spare
/// every [`SAMPLE_EVERY`] as before. `THAW_SAMPLE_SPARES=1` measures each
/// at once (for A/B measurements).
fn measure_new_spares() -> bool {
    std::env::var_os(SAMPLE_SPARES_ENV).is_some_and(|v| v == "1")
}

impl Live {
    pub fn new(key: FunctionKey, cgroup: Cgroup, start: StartKind, limit: u64) -> Live {
        Live {
            key,
            cgroup,
            start,
            limit,
            memory: None,
            charge_at_sample: None,
            grown: 0,
            spare: false,
            sampled: true,
        }
    }

    /// A spare of `key` (see `spares.rs`).
    pub fn spare(key: FunctionKey, cgroup: Cgroup) -> Live {
        Live {
            key,
            cgroup,
            start: StartKind::Restore,
            limit: SPARE_ESTIMATE,
            memory: None,
            charge_at_sample: None,
            grown: 0,
            spare: true,
            sampled: true,
        }
    }

    /// A spare being pre-mapped ([`crate::restore::premap`]) will hold
    /// about `bytes` more (the working set its pre-map populates): counted
    /// from now until its next measurement.
    pub fn add_estimate(&mut self, bytes: u64) {
        match self.memory {
            None => self.limit += bytes,
            Some(_) => self.grown += bytes,
        }
    }

    /// What it counts against the budget, bytes: its last PSS plus what
    /// its cgroup gained since.
    fn counted(&self) -> u64 {
        self.memory.map_or(self.limit, |m| m.pss + self.grown)
    }
}

/// Bytes counted against the budget: live instances (and spares) plus
/// reservations.
pub(super) fn counted(st: &State) -> u64 {
    st.live.values().map(Live::counted).sum::<u64>() + st.reserved
}

/// Takes the idle instance to evict, if `room` allows one.
fn take_victim(st: &mut State, room: Room) -> Option<Instance> {
    // (key, oldest idle's age, beyond min_instances)
    let mut best: Option<(FunctionKey, Instant, bool)> = None;
    for (key, list) in &st.idle {
        let Some(first) = list.first() else { continue };
        let min = st.specs.get(key).map_or(0, |s| s.min_instances);
        let kept = list.len() + st.busy.get(key).copied().unwrap_or(0);
        let spare = kept > min;
        if !spare && room == Room::Spare {
            continue;
        }
        let better = match &best {
            None => true,
            Some((_, since, best_spare)) => {
                (spare && !best_spare) || (spare == *best_spare && first.since < *since)
            }
        };
        if better {
            best = Some((key.clone(), first.since, spare));
        }
    }
    let (key, _, _) = best?;
    let list = st.idle.get_mut(&key)?;
    let victim = list.remove(0).instance;
    if list.is_empty() {
        st.idle.remove(&key);
    }
    Some(victim)
}

impl Pool {
    /// Bytes counted against the memory budget: the last measured PSS of
    /// every live instance (its limit until first measured) plus the limits
    /// reserved by starting ones. Reads no files.
    pub fn memory_used(&self) -> u64 {
        counted(&self.state.lock().unwrap())
    }

    /// Memory charged to the cgroups of the live instances of one version,
    /// bytes.
    pub fn memory_of(&self, key: &FunctionKey) -> u64 {
        let cgroups: Vec<Cgroup> = {
            let st = self.state.lock().unwrap();
            st.live
                .values()
                .filter(|l| l.key == *key)
                .map(|l| l.cgroup.clone())
                .collect()
        };
        cgroups
            .iter()
            .map(|cg| cg.memory_current().unwrap_or(0))
            .sum()
    }

    /// Every live instance of `key` with its state, how it started and its
    /// last measured memory (RSS, PSS, USS of all its sandbox's processes).
    /// Spares are listed with state and start `spare`.
    pub fn instances(&self, key: &FunctionKey) -> Vec<InstanceInfo> {
        let st = self.state.lock().unwrap();
        let idle: std::collections::HashSet<&str> = st
            .idle
            .get(key)
            .map(|l| l.iter().map(|i| i.instance.id()).collect())
            .unwrap_or_default();
        let mut out: Vec<InstanceInfo> = st
            .live
            .iter()
            .filter(|(_, l)| l.key == *key)
            .map(|(id, l)| InstanceInfo {
                id: id.clone(),
                version: l.key.version,
                state: if l.spare {
                    "spare"
                } else if idle.contains(id.as_str()) {
                    "idle"
                } else {
                    "busy"
                },
                start: if l.spare { "spare" } else { l.start.as_str() },
                memory: l.memory.unwrap_or_default(),
            })
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }

    /// Host pids of every live sandbox (for tests and clean-up checks).
    pub fn pids(&self) -> Vec<i32> {
        let st = self.state.lock().unwrap();
        st.live.values().flat_map(|l| l.cgroup.pids()).collect()
    }

    /// Reserves `needed` bytes of the budget, evicting idle instances as
    /// `room` allows when they do not fit.
    pub(super) async fn reserve(&self, needed: u64, room: Room) -> Result<(), PoolError> {
        self.note_growth();
        loop {
            let budget = self.config.memory_budget;
            let victim = {
                let mut st = self.state.lock().unwrap();
                let used = counted(&st);
                if used + needed <= budget {
                    st.reserved += needed;
                    return Ok(());
                }
                match take_victim(&mut st, room) {
                    Some(v) => v,
                    None => {
                        return Err(PoolError::MemoryBudget {
                            needed: needed >> 20,
                            free: budget.saturating_sub(used) >> 20,
                            budget: budget >> 20,
                        })
                    }
                }
            };
            self.discard(victim).await;
        }
    }

    /// Busy instances may have allocated since they were last measured:
    /// read each one's cgroup charge (one small file) and count what it
    /// gained on top of its last PSS, so a start cannot slip under the
    /// budget on a stale figure.
    fn note_growth(&self) {
        let busy: Vec<(String, Cgroup, u64)> = {
            let st = self.state.lock().unwrap();
            let idle: std::collections::HashSet<&str> = st
                .idle
                .values()
                .flatten()
                .map(|i| i.instance.id())
                .collect();
            st.live
                .iter()
                .filter(|(id, l)| !l.spare && !idle.contains(id.as_str()))
                .filter_map(|(id, l)| Some((id.clone(), l.cgroup.clone(), l.charge_at_sample?)))
                .collect()
        };
        let grown: Vec<(String, u64)> = busy
            .into_iter()
            .map(|(id, cg, then)| {
                let now = cg.memory_current().unwrap_or(then);
                (id, now.saturating_sub(then))
            })
            .collect();
        let mut st = self.state.lock().unwrap();
        for (id, g) in grown {
            if let Some(l) = st.live.get_mut(&id) {
                l.grown = g;
            }
        }
    }

    /// Measures the instances `ids` (every live one if `None`) now, off the
    /// async threads, and caches the figures.
    pub(super) async fn sample(&self, ids: Option<Vec<String>>) {
        let targets: Vec<(String, Cgroup)> = {
            let st = self.state.lock().unwrap();
            match ids {
                None => st
                    .live
                    .iter()
                    .filter(|(_, l)| l.sampled)
                    .map(|(id, l)| (id.clone(), l.cgroup.clone()))
                    .collect(),
                Some(ids) => ids
                    .into_iter()
                    .filter_map(|id| {
                        let cg = st.live.get(&id)?.cgroup.clone();
                        Some((id, cg))
                    })
                    .collect(),
            }
        };
        if targets.is_empty() {
            return;
        }
        let measured = tokio::task::spawn_blocking(move || {
            targets
                .into_iter()
                .map(|(id, cg)| {
                    let charge = cg.memory_current();
                    (id, crate::memory::of_pids(&cg.pids()), charge)
                })
                .collect::<Vec<_>>()
        })
        .await
        .unwrap_or_default();
        let mut st = self.state.lock().unwrap();
        for (id, m, charge) in measured {
            // A sandbox whose processes are already gone reads as nothing:
            // keep what was known.
            if m.rss == 0 {
                continue;
            }
            if let Some(l) = st.live.get_mut(&id) {
                l.memory = Some(m);
                l.charge_at_sample = charge;
                l.grown = 0;
            }
        }
    }

    /// Measures one new instance in the background.
    pub(super) fn spawn_sample(&self, id: &str) {
        let pool = self.clone();
        let id = id.to_string();
        tokio::spawn(async move { pool.sample(Some(vec![id])).await });
    }

    /// A spare just made or recycled: measured in the background only with
    /// `THAW_SAMPLE_SPARES=1` (see [`measure_new_spares`]); else it counts
    /// [`SPARE_ESTIMATE`] until the maintenance tick measures it.
    pub(super) fn sample_new_spare(&self, id: &str) {
        if measure_new_spares() {
            self.spawn_sample(id);
        }
    }

    /// Measures every live instance if the last round is [`SAMPLE_EVERY`]
    /// old.
    pub(super) async fn sample_if_due(&self, now: Instant) {
        {
            let mut st = self.state.lock().unwrap();
            if st
                .sampled_at
                .is_some_and(|t| now.duration_since(t) < SAMPLE_EVERY)
            {
                return;
            }
            st.sampled_at = Some(now);
        }
        self.sample(None).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pre_mapped_spare_counts_its_working_set_until_measured() {
        let key = FunctionKey {
            name: "f".into(),
            version: 1,
            uid: 1,
        };
        let cgroup = crate::cgroup::CgroupRoot::none_for_tests();
        let mut live = Live::spare(key, cgroup);
        assert_eq!(live.counted(), SPARE_ESTIMATE);
        live.add_estimate(20 << 20);
        assert_eq!(live.counted(), SPARE_ESTIMATE + (20 << 20));
        // Measured: its PSS, plus what it is expected to grow by since.
        live.memory = Some(MemoryUse {
            rss: 22 << 20,
            pss: 21 << 20,
            uss: 19 << 20,
        });
        live.add_estimate(1 << 20);
        assert_eq!(live.counted(), 22 << 20);
    }
}
