//! Cold starts that restore run a few at a time.
//!
//! A restore and its first answer are CPU work (the server's ptrace
//! requests and the stub's mappings, then the copy's reseeding and first
//! invocation) in a chain of hand-offs between the server and the copy. A
//! burst of 16 on 2 cores run all at once shares the CPUs 16 ways: every
//! chain waits behind the 15 others at each hand-off, every copy's first
//! pages and caches are evicted by the others', and the first answer comes
//! as late as the last. With a few slots (by default two per CPU: one
//! running while the other waits on its hand-off) the cold starts are
//! served in their order of arrival, and the burst's CPU goes to finishing
//! cold starts rather than to switching between them.
//!
//! A slot is taken after admission (the version's concurrency and queue)
//! and before the spare is claimed (a waiting cold start holds no spare, so
//! one made meanwhile serves whichever comes first), and held through the
//! restore and the first invocation. Nothing holds one for long: a slot is
//! given up after [`SLOT_HOLD_MAX`] whatever the cold start is doing (a
//! handler that sleeps or calls another function through the server, a
//! restore that fell back to a boot), so slots never stall cold starts
//! behind slow or waiting ones, only order CPU-bound ones.
//!
//! `THAW_RESTORE_SLOTS` sets how many; `0` lets every cold start run at
//! once (the behaviour before, for A/B measurements).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// Environment variable: how many cold starts restore at once; `0`: no
/// limit.
pub const SLOTS_ENV: &str = "THAW_RESTORE_SLOTS";

/// Longest time a cold start holds its slot (see the module docs). A
/// numpy-pandas cold start is over in ~10 ms on a quiet 2-core machine and
/// in ~100 ms on a loaded one; past this, it is waiting on something other
/// than the CPU.
pub const SLOT_HOLD_MAX: Duration = Duration::from_millis(250);

/// How many slots a pool has: `THAW_RESTORE_SLOTS`, else two per CPU the
/// process may run on. `None`: no limit.
pub fn configured() -> Option<usize> {
    let from_env = std::env::var(SLOTS_ENV)
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok());
    let n = from_env.unwrap_or_else(|| {
        2 * std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
    });
    (n > 0).then_some(n)
}

/// The slots of one pool.
#[derive(Debug)]
pub struct Slots {
    sem: Option<Arc<Semaphore>>,
    hold_max: Duration,
}

impl Default for Slots {
    fn default() -> Slots {
        Slots::new(configured(), SLOT_HOLD_MAX)
    }
}

impl Slots {
    /// `n` slots (`None`: no limit), each held at most `hold_max`.
    pub fn new(n: Option<usize>, hold_max: Duration) -> Slots {
        Slots {
            sem: n.map(|n| Arc::new(Semaphore::new(n))),
            hold_max,
        }
    }

    /// Waits for a slot (in order of arrival) when there is a limit.
    pub async fn acquire(&self) -> Slot {
        let Some(sem) = &self.sem else {
            return Slot::none();
        };
        let asked = Instant::now();
        // The semaphore is never closed.
        let permit = sem.clone().acquire_owned().await.ok();
        let waited = asked.elapsed();
        if waited >= Duration::from_millis(1) {
            tracing::debug!(
                waited_us = waited.as_micros() as u64,
                "cold start waited for a restore slot"
            );
        }
        Slot {
            permit,
            until: Instant::now() + self.hold_max,
        }
    }

    /// Slots free now (`None`: no limit).
    pub fn available(&self) -> Option<usize> {
        self.sem.as_ref().map(|s| s.available_permits())
    }
}

/// A slot held by one cold start (or none: no limit, or not a restore).
/// Given back when dropped or at its deadline.
#[derive(Debug)]
pub struct Slot {
    permit: Option<OwnedSemaphorePermit>,
    until: Instant,
}

impl Slot {
    /// No slot: [`Slot::run`] just runs.
    pub fn none() -> Slot {
        Slot {
            permit: None,
            until: Instant::now(),
        }
    }

    /// Whether the slot is still held.
    pub fn held(&self) -> bool {
        self.permit.is_some()
    }

    /// Runs `fut`, giving the slot back if its deadline passes first.
    pub async fn run<F: Future>(&mut self, fut: F) -> F::Output {
        if self.permit.is_none() {
            return fut.await;
        }
        tokio::pin!(fut);
        tokio::select! {
            biased;
            out = &mut fut => out,
            () = tokio::time::sleep_until(self.until) => {
                self.permit = None;
                fut.await
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_slot_is_taken_in_turn_and_never_held_past_its_limit() {
        let slots = Arc::new(Slots::new(Some(1), Duration::from_millis(100)));
        let mut first = slots.acquire().await;
        assert!(first.held());
        assert_eq!(slots.available(), Some(0));
        // The second waits while the first runs.
        let waiter = {
            let slots = slots.clone();
            tokio::spawn(async move { slots.acquire().await })
        };
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        // A cold start that outlasts the limit gives its slot up and still
        // finishes.
        let out = first
            .run(async {
                tokio::time::sleep(Duration::from_secs(5)).await;
                7
            })
            .await;
        assert_eq!(out, 7);
        assert!(!first.held());
        let second = waiter.await.unwrap();
        assert!(second.held());
        drop(second);
        assert_eq!(slots.available(), Some(1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_slot_is_given_back_and_no_limit_never_waits() {
        let slots = Slots::new(Some(2), Duration::from_millis(100));
        let a = slots.acquire().await;
        let mut b = slots.acquire().await;
        assert_eq!(slots.available(), Some(0));
        assert_eq!(b.run(async { 1 }).await, 1);
        assert!(b.held());
        drop(a);
        drop(b);
        assert_eq!(slots.available(), Some(2));
        let free = Slots::new(None, Duration::from_millis(100));
        let mut s = free.acquire().await;
        assert!(!s.held());
        assert_eq!(s.run(async { 2 }).await, 2);
        assert_eq!(free.available(), None);
    }
}
