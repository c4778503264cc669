//! Named failure points for crash-safety tests.
//!
//! Setting the environment variable `THAW_FAILPOINT=<name>` makes the process
//! abort (`SIGABRT`, no unwinding, no destructors, nothing flushed) the first
//! time it reaches the point of that name. Tests run a child process with the
//! variable set and check that the store it leaves behind is consistent.
//!
//! The variable is read once; with it unset a failure point costs one
//! initialised-`OnceLock` check.

use std::sync::OnceLock;

/// Environment variable naming the failure point to abort at.
pub const ENV: &str = "THAW_FAILPOINT";

/// Every failure point of the store, in the order a snapshot commit, a root
/// write, an image build, a manifest write and a gc reach them.
pub const NAMES: &[&str] = &[
    // Store writer.
    "pack-partial",   // some pages of a new pack written, not synced
    "pack-synced",    // pack fully written and fsynced under its tmp name
    "pack-renamed",   // pack renamed to its final name, index not yet appended
    "index-torn",     // half of the index record appended
    "index-appended", // index record appended and synced, root not yet written
    // Atomic file writes (roots, manifests).
    "atomic-tmp-written", // tmp file written, not synced
    "atomic-tmp-synced",  // tmp file synced, not renamed
    "atomic-renamed",     // renamed, directory not yet synced
    // Image build.
    "image-partial", // part of the image written
    "image-written", // image complete under its tmp name, not renamed
    // Garbage collection.
    "gc-pack-written",   // new compacted pack written
    "gc-index-written",  // new index written under its tmp name, not synced
    "gc-index-synced",   // new index synced under its tmp name
    "gc-index-switched", // new index renamed in place, old packs still there
    "gc-pack-deleted",   // first old pack deleted
];

fn armed() -> Option<&'static str> {
    static ARMED: OnceLock<Option<String>> = OnceLock::new();
    ARMED
        .get_or_init(|| std::env::var(ENV).ok().filter(|s| !s.is_empty()))
        .as_deref()
}

/// Aborts the process if `THAW_FAILPOINT` names this point.
#[inline]
pub fn hit(name: &'static str) {
    debug_assert!(NAMES.contains(&name), "unknown failure point {name}");
    if armed() == Some(name) {
        eprintln!("thaw: failure point {name} reached, aborting");
        std::process::abort();
    }
}
