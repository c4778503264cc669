//! Process capture and the content-addressed page store.
//!
//! * [`store`]: the deduplicated, blake3-addressed page store, snapshot
//!   manifests and the per-snapshot memory images built from them.
//! * [`capture`]: stopping a live process with ptrace and reading everything a
//!   faithful restore needs.
//! * [`state`]: the serialisable description of a captured process.
//! * [`snapshot`]: snapshots (state + page lists in a manifest, store root).

pub mod capture;
pub mod snapshot;
pub mod state;
pub mod store;
