//! Sandboxes, instances and (later) the restorer and the userfaultfd page server.
//!
//! * [`cgroup`]: cgroup v1/v2 limits and accounting for sandboxes.
//! * [`sandbox`]: namespaces, root filesystem, init and privileges.
//! * [`protocol`]: the runtime protocol's frames (docs/protocol.md).
//! * [`instance`]: one runtime in one sandbox, serving invocations.
//! * [`logs`]: the function output tap.
//! * [`memory`]: RSS, PSS and USS from `smaps_rollup`.
//! * [`ratelimit`]: log lines a function can trigger, rate-limited.
//! * [`restore`]: turning a snapshot back into a running process.
//! * [`manager`]: the pool of instances: warm reuse, boots, keep-alive,
//!   concurrency, memory budget.

pub mod cgroup;
pub mod first_call;
pub mod instance;
pub mod logs;
pub mod manager;
pub mod memory;
pub mod protocol;
pub mod ratelimit;
pub mod restore;
pub mod sandbox;

pub use manager::{Cold, FunctionKey, Pool, PoolConfig, PoolError, StartKind, StartSpec};
