//! What lazy restores fetched, for the metrics (docs/cluster.md,
//! "Metrics"): per snapshot opened lazily, the bytes its page source read
//! from packs (prepare, working set, faults; not the completion's pull),
//! split at the first resume of a copy of it, and the stored bytes of its
//! working set (what fetching the set costs at least). The goal of issue
//! 18 compares the two: bytes fetched by a first restore at most twice
//! the working set's.

use std::collections::HashMap;
use std::sync::Mutex;

use remote_store::seal::SLOT_LEN;
use remote_store::LazyCounter;

#[derive(Debug)]
struct Opened {
    counter: LazyCounter,
    /// Bytes fetched when the first copy resumed.
    at_resume: Option<u64>,
    working_set_bytes: u64,
}

/// Totals over the snapshots opened lazily since the start.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct LazyBytes {
    /// Fetched before the first copy of each resumed (or so far, if none has).
    pub before_resume: u64,
    /// Fetched after it.
    pub after_resume: u64,
    /// Stored bytes of their working sets (in sealed slots).
    pub working_set: u64,
}

/// The per-snapshot counters (a snapshot opened again replaces its entry;
/// what the old one counted stays in the totals).
#[derive(Debug, Default)]
pub struct LazyTally {
    open: Mutex<HashMap<String, Opened>>,
    retired: Mutex<LazyBytes>,
}

impl LazyTally {
    /// Snapshot `id` is restored lazily from now on, by a source counting
    /// into `counter`, with a working set of `stored_pages` stored pages.
    pub fn opened(&self, id: &str, counter: LazyCounter, stored_pages: u64) {
        let old = self.open.lock().unwrap().insert(
            id.to_string(),
            Opened {
                counter,
                at_resume: None,
                working_set_bytes: stored_pages * SLOT_LEN,
            },
        );
        if let Some(old) = old {
            let mut r = self.retired.lock().unwrap();
            let b = bytes(&old);
            r.before_resume += b.before_resume;
            r.after_resume += b.after_resume;
            r.working_set += b.working_set;
        }
    }

    /// A copy of `id` resumed (only the first one counts).
    pub fn resumed(&self, id: &str) {
        if let Some(o) = self.open.lock().unwrap().get_mut(id) {
            o.at_resume.get_or_insert_with(|| o.counter.bytes_fetched());
        }
    }

    /// The totals now.
    pub fn totals(&self) -> LazyBytes {
        let mut t = *self.retired.lock().unwrap();
        for o in self.open.lock().unwrap().values() {
            let b = bytes(o);
            t.before_resume += b.before_resume;
            t.after_resume += b.after_resume;
            t.working_set += b.working_set;
        }
        t
    }
}

fn bytes(o: &Opened) -> LazyBytes {
    let now = o.counter.bytes_fetched();
    let before = o.at_resume.unwrap_or(now);
    LazyBytes {
        before_resume: before,
        after_resume: now - before,
        working_set: o.working_set_bytes,
    }
}
