//! The benchmark suite (not written yet).
//!
//! TODO(benchmark suite): once the thaw server exists, this module will:
//! 1. start a `thaw` server on an ephemeral loopback port with
//!    `--allow-forced-cold` and a temporary data directory, pinned to one core
//!    (`taskset`), with the generator pinned to another;
//! 2. deploy the benchmark functions (a trivial Python handler, and one that
//!    imports numpy and pandas) and wait for their snapshots;
//! 3. run the cold-start comparison with [`crate::compare`]: `boot`,
//!    `restore` in mmap mode, `restore` in uffd + prefetch mode, `warm`, and
//!    the fork floor (an `exec` scenario running the snapshotter's fork
//!    helper), interleaved over several rounds;
//! 4. run the warm throughput check (a fixed open-loop rate, five rounds
//!    interleaved with `oha` or `wrk` when installed) and the memory figures;
//! 5. write the results, the machine description and the exact commands to
//!    `docs/benchmarks.md`;
//! 6. offer a short mode (few rounds, few requests) for CI.
//!
//! Until then the suite is run by hand with `thaw-loadtest compare` (see
//! `docs/loadtest.md`).
