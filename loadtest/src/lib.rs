//! thaw's load generator.
//!
//! Everything thaw claims about speed is measured with this crate. It drives
//! `POST /functions/:name/invoke` on a thaw server in one of two ways:
//!
//! * [`closed`]: N clients, each sending its next request when the previous
//!   one answered. Measures what a fixed population of callers sees.
//! * [`open`]: a fixed arrival rate. Every request has an intended send time
//!   taken from the schedule, and its latency is measured from that time, so
//!   a server that stalls is charged for every request that should have been
//!   sent during the stall (no coordinated omission).
//!
//! Answers are accounted in [`stats`] (HDR histograms in microseconds, error
//! counts by HTTP status and by the JSON `error` kind, the split by
//! `x-thaw-start`, the server's own `x-thaw-start-us` and
//! `x-thaw-duration-us`), printed by [`report`], and several scenarios can be
//! run interleaved and compared with bootstrap confidence intervals by
//! [`compare`].
//!
//! The binary `thaw-loadtest` is a thin shell over this library; see
//! `docs/loadtest.md` for its command line.

#![forbid(unsafe_code)]

pub mod client;
pub mod closed;
pub mod compare;
pub mod open;
pub mod progress;
pub mod report;
pub mod run;
pub mod scenario;
pub mod stats;
pub mod suite;
pub mod target;

pub use client::{Client, Outcome};
pub use run::{parse_duration, run, Mode, RunConfig, RunError, Stop};
pub use stats::{Stats, Summary};
pub use target::{ColdStart, Target};
