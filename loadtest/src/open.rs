//! Open loop: requests leave on a fixed schedule, whether or not earlier
//! ones have answered, and each one's latency is measured from the time the
//! schedule meant to send it.
//!
//! ```text
//! intended:  0    1/r   2/r   3/r   4/r   5/r   ...   (r = rate)
//!            |     |     |     |     |     |
//! server:    ok    [======= stall =======]  ok  ok
//! latency of request 2 = its answer − 2/r, even if the generator could only
//! send it at 4/r (all connections busy, or the `max_in_flight` cap reached)
//! ```
//!
//! A generator that measured from the actual send would record one slow
//! request for a stall and hide every request that *should* have been sent
//! during it (coordinated omission); this one charges the stall to all of
//! them.
//!
//! The schedule is uniform: request `i` is intended at `start + i / rate`.
//! The first `ceil(warmup × rate)` requests are the warm-up (sent, not
//! accounted). Then come `round(duration × rate)` requests for
//! [`Stop::Duration`], or exactly `n` for [`Stop::Requests`].
//!
//! Sends are paced by a dedicated thread (not the runtime's timer, whose
//! 1 ms granularity would add up to a millisecond of fake latency): it sleeps
//! until shortly before the intended time, then yields until it is reached,
//! takes one of the `max_in_flight` permits (waiting for one if needed) and
//! spawns the request on the runtime. How late sends leave is recorded as
//! the send lag. [`Progress::interrupt`] stops the pacing before the next
//! send.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, Semaphore};

use crate::client::Client;
use crate::progress::Progress;
use crate::run::Stop;
use crate::stats::{Sample, Stats};
use crate::target::Target;

/// Below this distance from the intended time the pacing thread stops
/// sleeping (the kernel's timer slack would make it late) and yields.
const SPIN_WINDOW: Duration = Duration::from_micros(80);

/// The intended send times of an open-loop run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Schedule {
    rate: f64,
    warmup: u64,
    measured: u64,
}

impl Schedule {
    /// A schedule at `rate` requests per second (must be above 0) with the
    /// given warm-up and end.
    pub fn new(rate: f64, stop: Stop, warmup: Duration) -> Self {
        let warmup = (warmup.as_secs_f64() * rate).ceil() as u64;
        let measured = match stop {
            Stop::Duration(d) => ((d.as_secs_f64() * rate).round() as u64).max(1),
            Stop::Requests(n) => n,
        };
        Schedule {
            rate,
            warmup,
            measured,
        }
    }

    /// Requests sent in all, warm-up included.
    pub fn total(&self) -> u64 {
        self.warmup + self.measured
    }

    /// Requests in the warm-up.
    pub fn warmup(&self) -> u64 {
        self.warmup
    }

    /// Whether request `i` is accounted.
    pub fn is_measured(&self, i: u64) -> bool {
        i >= self.warmup
    }

    /// When request `i` is meant to leave, counted from `start`.
    pub fn offset(&self, i: u64) -> Duration {
        Duration::from_secs_f64(i as f64 / self.rate)
    }
}

/// The pacing thread sleeps at most this long at a time, to notice an
/// interruption.
const MAX_NAP: Duration = Duration::from_millis(50);

/// Sleeps (then yields) until `t`, or until `stop()` says so. Returns false
/// if it stopped early.
fn wait_until(t: Instant, stop: impl Fn() -> bool) -> bool {
    loop {
        let now = Instant::now();
        if now >= t {
            return true;
        }
        if stop() {
            return false;
        }
        let left = t - now;
        if left > SPIN_WINDOW {
            std::thread::sleep((left - SPIN_WINDOW).min(MAX_NAP));
        } else {
            std::thread::yield_now();
        }
    }
}

/// Runs `schedule` with at most `max_in_flight` requests outstanding.
pub async fn run(
    client: &Client,
    target: &Target,
    schedule: Schedule,
    max_in_flight: usize,
    progress: &Arc<Progress>,
) -> Stats {
    let (tx, mut rx) = mpsc::unbounded_channel::<Sample>();
    let permits = Arc::new(Semaphore::new(max_in_flight.min(Semaphore::MAX_PERMITS)));
    let runtime = tokio::runtime::Handle::current();
    let (client, target, progress) = (client.clone(), target.clone(), Arc::clone(progress));
    let pacer = tokio::task::spawn_blocking(move || {
        let start = Instant::now();
        for i in 0..schedule.total() {
            let intended = start + schedule.offset(i);
            if !wait_until(intended, || progress.is_interrupted()) || progress.is_interrupted() {
                break;
            }
            // The semaphore is never closed.
            let permit = runtime
                .block_on(Arc::clone(&permits).acquire_owned())
                .expect("semaphore is never closed");
            let (client, target, progress, tx) = (
                client.clone(),
                target.clone(),
                Arc::clone(&progress),
                tx.clone(),
            );
            let measured = schedule.is_measured(i);
            runtime.spawn(async move {
                progress.sent();
                let sent = Instant::now();
                let outcome = client.send(&target, i).await;
                let done = Instant::now();
                drop(permit);
                progress.finished(outcome.is_ok());
                if measured {
                    // The collector outlives every request.
                    let _ = tx.send(Sample {
                        intended,
                        sent,
                        done,
                        outcome,
                    });
                }
            });
        }
    });
    let mut stats = Stats::new();
    while let Some(sample) = rx.recv().await {
        stats.record(&sample);
    }
    if let Err(err) = pacer.await {
        if err.is_panic() {
            std::panic::resume_unwind(err.into_panic());
        }
    }
    stats
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_counts_and_times() {
        let s = Schedule::new(
            200.0,
            Stop::Duration(Duration::from_secs(3)),
            Duration::from_millis(501),
        );
        assert_eq!(s.warmup(), 101);
        assert_eq!(s.total(), 101 + 600);
        assert!(!s.is_measured(100));
        assert!(s.is_measured(101));
        assert_eq!(s.offset(0), Duration::ZERO);
        assert_eq!(s.offset(200), Duration::from_secs(1));
        assert_eq!(s.offset(1), Duration::from_millis(5));
        let n = Schedule::new(3.0, Stop::Requests(7), Duration::ZERO);
        assert_eq!((n.warmup(), n.total()), (0, 7));
        // A very short duration still measures one request.
        let tiny = Schedule::new(
            1.0,
            Stop::Duration(Duration::from_millis(1)),
            Duration::ZERO,
        );
        assert_eq!(tiny.total(), 1);
    }

    #[test]
    fn wait_until_stops_when_asked() {
        let far = Instant::now() + Duration::from_secs(3600);
        assert!(!wait_until(far, || true));
    }

    #[test]
    fn wait_until_is_never_early() {
        for us in [0u64, 50, 300, 2_000] {
            let t = Instant::now() + Duration::from_micros(us);
            assert!(wait_until(t, || false));
            assert!(Instant::now() >= t);
        }
    }
}
