//! Which snapshots this node restores lazily now, each registration with
//! its own generation (fetch.rs).
//!
//! A snapshot can be registered, dropped (a fetch failed) and registered
//! again by the follower within a second, while copies of the first
//! registration still run: their late events (a copy killed, a completion
//! that failed) must act on their own registration only. Every
//! registration gets a new generation; the events of a copy carry the
//! generation of the registration it was made from, and a failure
//! unregisters that generation, never a newer one.
//!
//! A registration also owns its completion (pulling the rest of the
//! snapshot into the local store): at most one runs per registration, and
//! it stops retrying once its registration is gone.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

/// The snapshots restored lazily now, by id.
#[derive(Debug, Default)]
pub struct LazyRegistrations {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// The last generation handed out (the first is 1).
    last: u64,
    by_id: HashMap<String, Registration>,
}

#[derive(Debug, Clone, Copy)]
struct Registration {
    generation: u64,
    completing: bool,
}

/// Which registrations [`LazyRegistrations::unregister`] drops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    /// Only this generation: a failure of a copy made from it.
    Generation(u64),
    /// Whichever is registered: the snapshot is complete locally, or its
    /// version is gone.
    Any,
}

impl LazyRegistrations {
    /// Registers snapshot `id` with a new generation, replacing any
    /// registration before it, after `install(generation)` succeeded
    /// (called under the lock, so that what it installs elsewhere changes
    /// in the same order as this map). Returns the generation and how many
    /// snapshots are registered.
    pub fn register<E>(
        &self,
        id: &str,
        install: impl FnOnce(u64) -> Result<(), E>,
    ) -> Result<(u64, usize), E> {
        let mut inner = self.inner.lock().unwrap();
        let generation = inner.last + 1;
        install(generation)?;
        inner.last = generation;
        inner.by_id.insert(
            id.to_string(),
            Registration {
                generation,
                completing: false,
            },
        );
        Ok((generation, inner.by_id.len()))
    }

    /// Drops the registration of `id` if it is `which`, calling
    /// `uninstall` under the lock. Returns how many snapshots stay
    /// registered, or `None` if nothing was dropped (a newer generation is
    /// registered, or none).
    pub fn unregister(&self, id: &str, which: Which, uninstall: impl FnOnce()) -> Option<usize> {
        let mut inner = self.inner.lock().unwrap();
        let current = inner.by_id.get(id)?.generation;
        if let Which::Generation(g) = which {
            if g != current {
                return None;
            }
        }
        inner.by_id.remove(id);
        uninstall();
        Some(inner.by_id.len())
    }

    /// Whether `generation` is the registration of `id` now.
    pub fn is_current(&self, id: &str, generation: u64) -> bool {
        self.inner
            .lock()
            .unwrap()
            .by_id
            .get(id)
            .is_some_and(|r| r.generation == generation)
    }

    /// Whether `id` is registered (any generation).
    pub fn contains(&self, id: &str) -> bool {
        self.inner.lock().unwrap().by_id.contains_key(id)
    }

    /// How many snapshots are registered.
    pub fn len(&self) -> usize {
        self.inner.lock().unwrap().by_id.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The registered ids.
    pub fn ids(&self) -> Vec<String> {
        self.inner.lock().unwrap().by_id.keys().cloned().collect()
    }

    /// Whether the completion of registration `generation` of `id` should
    /// start now: true once per registration, while it is current.
    pub fn start_completion(&self, id: &str, generation: u64) -> bool {
        let mut inner = self.inner.lock().unwrap();
        match inner.by_id.get_mut(id) {
            Some(r) if r.generation == generation && !r.completing => {
                r.completing = true;
                true
            }
            _ => false,
        }
    }
}

/// How long a failed completion waits before its attempt number
/// `attempt` (1 for the first retry): 1 s, doubled each time, at most
/// [`COMPLETION_RETRY_MAX`].
pub fn completion_backoff(attempt: u32) -> Duration {
    let secs = 1u64 << attempt.saturating_sub(1).min(16);
    Duration::from_secs(secs).min(COMPLETION_RETRY_MAX)
}

/// The longest wait between two attempts of a completion.
pub const COMPLETION_RETRY_MAX: Duration = Duration::from_secs(30);

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(_: u64) -> Result<(), ()> {
        Ok(())
    }

    #[test]
    fn a_late_failure_of_an_old_registration_leaves_the_new_one() {
        let r = LazyRegistrations::default();
        let (old, n) = r.register("s", ok).unwrap();
        assert_eq!(n, 1);
        // A copy of `old` failed before its resume: dropped.
        assert_eq!(r.unregister("s", Which::Generation(old), || ()), Some(0));
        // The follower registers it again.
        let (new, _) = r.register("s", ok).unwrap();
        assert_ne!(old, new);
        // A copy made from `old` is killed late: the new one stays.
        let mut uninstalled = false;
        assert_eq!(
            r.unregister("s", Which::Generation(old), || uninstalled = true),
            None
        );
        assert!(!uninstalled, "nothing uninstalled for a stale generation");
        assert!(r.is_current("s", new) && !r.is_current("s", old));
        // Its own failure drops it.
        assert_eq!(r.unregister("s", Which::Generation(new), || ()), Some(0));
        assert!(!r.contains("s") && r.is_empty());
    }

    #[test]
    fn a_completion_unregisters_any_generation() {
        let r = LazyRegistrations::default();
        r.register("a", ok).unwrap();
        r.register("b", ok).unwrap();
        let mut uninstalled = 0;
        assert_eq!(r.unregister("a", Which::Any, || uninstalled += 1), Some(1));
        assert_eq!(r.unregister("a", Which::Any, || uninstalled += 1), None);
        assert_eq!(uninstalled, 1);
        assert_eq!(r.ids(), vec!["b".to_string()]);
    }

    #[test]
    fn a_failed_install_registers_nothing() {
        let r = LazyRegistrations::default();
        assert_eq!(r.register("s", |_| Err("no")), Err("no"));
        assert!(r.is_empty());
        let (g, _) = r.register("s", ok).unwrap();
        assert_eq!(g, 1, "a failed install uses no generation");
    }

    #[test]
    fn one_completion_per_registration() {
        let r = LazyRegistrations::default();
        let (old, _) = r.register("s", ok).unwrap();
        assert!(r.start_completion("s", old));
        assert!(!r.start_completion("s", old), "one is running");
        let (new, _) = r.register("s", ok).unwrap();
        assert!(!r.start_completion("s", old), "not current any more");
        assert!(r.start_completion("s", new), "the new one completes apart");
        assert!(!r.start_completion("gone", 1));
    }

    #[test]
    fn the_backoff_doubles_up_to_its_cap() {
        let secs: Vec<u64> = (1..=8).map(|a| completion_backoff(a).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 30, 30, 30]);
        assert_eq!(completion_backoff(0), Duration::from_secs(1));
        assert_eq!(completion_backoff(u32::MAX), COMPLETION_RETRY_MAX);
    }
}
