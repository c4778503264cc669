//! A copy's time namespace (issue 18, "Clocks"): `CLOCK_MONOTONIC` and
//! `CLOCK_BOOTTIME` of a copy continue from the snapshot's values and never
//! go backwards, whatever this machine's clocks say (another node's, or
//! this one after a reboot).
//!
//! time_namespaces(7): `unshare(CLONE_NEWTIME)` makes a namespace for the
//! caller's *children* (the caller stays in its own); its offsets are
//! written to `/proc/self/timens_offsets` (one `write`, lines of
//! `<clock> <secs> <nanosecs>`) before any process has entered it, which
//! the first fork then does. The offsets come from the snapshot
//! (`crate::restore::depends::time_offsets`: how far this host's clocks are
//! behind the capture's, or 0), known when the copy's sandbox is made,
//! spares included. The vDSO keeps working in the namespace: its processes
//! get the namespace's vvar page, which the kernel fills with the offsets
//! (the restore moves the stub's own vvar areas, so the copy has them).
//!
//! ```text
//! sandbox   outer: unshare(mnt|pid|ipc|uts|net), then unshare(CLONE_NEWTIME),
//!           write the offsets, fork pid 1 (enters it), pid 1 forks the stub
//! restore   init (spawn.rs) does the same before it clones the stub
//! ```
//!
//! `THAW_TIME_NAMESPACE=0` turns it off (copies then share the host's
//! clocks, as before).

use snapshotter::state::Clocks;

/// Environment variable that turns copies' time namespaces off (`0`).
pub const TIME_NAMESPACE_ENV: &str = "THAW_TIME_NAMESPACE";

/// The timens_offsets path of the calling process.
pub const OFFSETS_PATH: &str = "/proc/self/timens_offsets";

/// Whether copies get a time namespace (default yes).
pub fn enabled() -> bool {
    std::env::var_os(TIME_NAMESPACE_ENV).is_none_or(|v| v != "0")
}

/// What is written to `timens_offsets` for `offsets` (nanoseconds, each
/// split into seconds and a non-negative remainder).
pub fn offsets_text(offsets: &Clocks) -> String {
    let line = |name: &str, ns: i64| {
        format!(
            "{name} {} {}\n",
            ns.div_euclid(1_000_000_000),
            ns.rem_euclid(1_000_000_000)
        )
    };
    line("monotonic", offsets.monotonic_ns) + &line("boottime", offsets.boottime_ns)
}

/// Makes a time namespace with `offsets` for the calling process's
/// children (single-threaded callers: the sandbox's outer process).
pub fn unshare_with(offsets: &Clocks) -> Result<(), String> {
    nix::sched::unshare(nix::sched::CloneFlags::from_bits_retain(
        libc::CLONE_NEWTIME,
    ))
    .map_err(|e| format!("unshare time namespace: {e}"))?;
    std::fs::write(OFFSETS_PATH, offsets_text(offsets))
        .map_err(|e| format!("write {OFFSETS_PATH}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_are_seconds_and_nanoseconds() {
        let text = offsets_text(&Clocks {
            monotonic_ns: 86_400_000_000_123,
            boottime_ns: 0,
        });
        assert_eq!(text, "monotonic 86400 123\nboottime 0 0\n");
        let text = offsets_text(&Clocks {
            monotonic_ns: -1,
            boottime_ns: 1_500_000_000,
        });
        assert_eq!(text, "monotonic -1 999999999\nboottime 1 500000000\n");
    }
}
