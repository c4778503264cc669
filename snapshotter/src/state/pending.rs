//! Signals waiting for delivery: the process's shared queue (signals sent
//! to the process) in [`super::ProcessState::pending`], each thread's own
//! queue (signals sent to that thread) in [`super::ThreadState::pending`].
//! Capture: `capture::pending`; restore: `pool::restore::pending`.
//!
//! Each is kept with its whole `siginfo` as the kernel queued it (who sent
//! it, `si_code`, `si_value`, a timer's id and overrun, a child's status),
//! in queue order, and queued again in the copy by the copy itself, so the
//! program receives it once, with the same `siginfo`.

use serde::{Deserialize, Serialize};

/// Size of the kernel's `siginfo_t`.
pub const SIGINFO_SIZE: usize = 128;

/// One queued signal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingSignal {
    /// The signal number (`si_signo`), 1..=64.
    pub signal: i32,
    /// `si_code` (for example `SI_USER` 0, `SI_QUEUE` -1, `SI_TIMER` -2,
    /// `SI_TKILL` -6, or a kernel code above 0).
    pub code: i32,
    /// The whole `siginfo_t` ([`SIGINFO_SIZE`] bytes).
    pub info: Vec<u8>,
}

impl PendingSignal {
    /// The signal from a raw `siginfo_t`, `None` unless `raw` is
    /// [`SIGINFO_SIZE`] bytes with a signal number in 1..=64.
    pub fn from_siginfo(raw: &[u8]) -> Option<PendingSignal> {
        if raw.len() != SIGINFO_SIZE {
            return None;
        }
        let int = |at: usize| i32::from_ne_bytes(raw[at..at + 4].try_into().expect("4 bytes"));
        let signal = int(0);
        (1..=64).contains(&signal).then(|| PendingSignal {
            signal,
            code: int(8),
            info: raw.to_vec(),
        })
    }

    /// The bit of this signal in a signal mask.
    pub fn bit(&self) -> u64 {
        1u64 << (self.signal - 1)
    }

    /// The `sigval` (`si_value`) as sent with `sigqueue` or by a timer
    /// (offset 24 of `siginfo_t` for those codes).
    pub fn value(&self) -> u64 {
        u64::from_ne_bytes(self.info[24..32].try_into().expect("8 bytes"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_signal_code_and_value_from_a_siginfo() {
        let mut raw = [0u8; SIGINFO_SIZE];
        raw[0..4].copy_from_slice(&34i32.to_ne_bytes());
        raw[8..12].copy_from_slice(&(-1i32).to_ne_bytes());
        raw[24..32].copy_from_slice(&99u64.to_ne_bytes());
        let s = PendingSignal::from_siginfo(&raw).unwrap();
        assert_eq!((s.signal, s.code, s.value()), (34, -1, 99));
        assert_eq!(s.bit(), 1 << 33);
        assert!(PendingSignal::from_siginfo(&raw[..64]).is_none());
        raw[0] = 0;
        assert!(PendingSignal::from_siginfo(&raw).is_none());
    }
}
