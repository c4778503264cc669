//! The working set recorded at deploy (issue 18; docs/cluster.md, "A
//! working set recorded at deploy"). On the writer of a shared store, right
//! after each capture (a deploy's or a rebuild's) and before the version is
//! ready and uploaded:
//!
//! ```text
//! one copy of the new snapshot, restored in uffd mode (whatever the
//!   version's memory mode), its page server filling each fault's page
//!   only (no fault-around: every page listed was touched)
//! the `restored` exchange, then the warm-up events replayed (one round)
//! what it touched written as the snapshot's fetch set, `<id>.fetchset`
//!   (faults in first-touch order, then the mapped files' pages the
//!   events read), the copy torn down
//! ```
//!
//! The fetch set is the bucket's working set, never a plan for this
//! node's own copies: those record their `<id>.workingset` from their
//! first invocation as on a node without a store (fault-around included,
//! pages written tagged). Used for local copies as it was until
//! 2026-12-07, the exact set made an `mmap` copy's first invocation ×2.5
//! slower (1.2 against 0.47 ms for numpy-pandas: the real request's
//! context touches pages the replay did not, and the non-zero pages it
//! writes were not tagged, so each took a copy-on-write fault).
//!
//! The upload that follows puts the set's pages first in its packs and
//! sends the set before the manifest, so a node that holds none of the
//! snapshot fetches what a first invocation touches in a few ranged reads
//! before its copy resumes. A function without warm-up events gets the
//! pages of the `restored` exchange. A failure is logged and the snapshot
//! goes up without a working set (a copy's first invocation records one
//! later, and the writer uploads it then: `crate::cluster::publish`).
//! `THAW_DEPLOY_WORKING_SET=0` turns the recording off (for measuring).

use std::time::Instant;

use crate::service::{warmup_invocations, Service, Version};
use crate::snapshots::SnapshotInfo;

/// Whether deploys record a working set (`THAW_DEPLOY_WORKING_SET=0`: no).
fn enabled() -> bool {
    std::env::var_os("THAW_DEPLOY_WORKING_SET").is_none_or(|v| v != "0")
}

impl Service {
    /// Records the working set of `v`'s new snapshot `info` (see the module
    /// doc), on the writer of a shared store only. Never fails the deploy.
    pub(crate) async fn record_deploy_working_set(&self, v: &Version, info: &SnapshotInfo) {
        let writer = self.config.cluster.as_ref().is_some_and(|c| c.is_writer());
        if !writer || !enabled() {
            return;
        }
        let started = Instant::now();
        let events: Vec<_> = warmup_invocations(v, 1)
            .into_iter()
            .map(|(_, inv)| inv)
            .collect();
        let recorded = self
            .pool
            .record_working_set(&v.key, &v.start, &info.id, &events)
            .await;
        let record_ms = started.elapsed().as_millis() as u64;
        match recorded {
            Ok(Some(pages)) => tracing::info!(
                function = %v.key.name,
                version = v.key.version,
                snapshot = %info.id,
                pages,
                events = events.len(),
                record_ms,
                capture_ms = info.capture_us / 1000,
                "working set recorded at deploy"
            ),
            Ok(None) => tracing::info!(
                function = %v.key.name,
                version = v.key.version,
                snapshot = %info.id,
                "the snapshot has a fetch set already"
            ),
            Err(e) => tracing::warn!(
                function = %v.key.name,
                version = v.key.version,
                snapshot = %info.id,
                error = %e,
                record_ms,
                "recording the working set at deploy failed; the snapshot goes up without one"
            ),
        }
    }
}
