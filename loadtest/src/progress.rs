//! A progress line on stderr, once per second, while a run goes on.
//!
//! ```text
//! [  3s] 1234 done (411/s), 0 failed, 3 in flight
//! ```
//!
//! On a terminal the line is rewritten in place; otherwise (a log file, CI)
//! one line is printed per second. Counts include the warm-up.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Counters shared by the tasks of a run and read by the progress line.
#[derive(Debug)]
pub struct Progress {
    started: Instant,
    done: AtomicU64,
    failed: AtomicU64,
    in_flight: AtomicI64,
    interrupted: AtomicBool,
}

impl Default for Progress {
    fn default() -> Self {
        Progress {
            started: Instant::now(),
            done: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            in_flight: AtomicI64::new(0),
            interrupted: AtomicBool::new(false),
        }
    }
}

impl Progress {
    /// Fresh counters, shareable between tasks.
    pub fn new() -> Arc<Self> {
        Arc::new(Progress::default())
    }

    /// A request was handed to the client.
    pub fn sent(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
    }

    /// A request finished, successfully or not.
    pub fn finished(&self, ok: bool) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.done.fetch_add(1, Ordering::Relaxed);
        if !ok {
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Requests finished so far.
    pub fn done(&self) -> u64 {
        self.done.load(Ordering::Relaxed)
    }

    /// Asks the run to stop early: no new request is sent, those in flight
    /// finish and are accounted (used on Ctrl-C).
    pub fn interrupt(&self) {
        self.interrupted.store(true, Ordering::Relaxed);
    }

    /// Whether [`Progress::interrupt`] was called.
    pub fn is_interrupted(&self) -> bool {
        self.interrupted.load(Ordering::Relaxed)
    }

    /// Requests in flight now.
    pub fn in_flight(&self) -> i64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// The progress line as it reads now, given the count one second ago.
    pub fn line(&self, previous_done: u64) -> String {
        let done = self.done();
        format!(
            "[{:>3}s] {done} done ({}/s), {} failed, {} in flight",
            self.started.elapsed().as_secs(),
            done.saturating_sub(previous_done),
            self.failed.load(Ordering::Relaxed),
            self.in_flight()
        )
    }

    /// Starts printing the line once per second until the returned guard is
    /// finished or dropped. Must be called inside a tokio runtime.
    pub fn print_every_second(self: &Arc<Self>) -> Printer {
        let progress = Arc::clone(self);
        let tty = std::io::stderr().is_terminal();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            let mut previous = 0;
            loop {
                tick.tick().await;
                let line = progress.line(previous);
                previous = progress.done();
                let mut err = std::io::stderr().lock();
                // A progress line that cannot be written is not worth failing for.
                let _ = if tty {
                    write!(err, "\r\x1b[2K{line}")
                } else {
                    writeln!(err, "{line}")
                };
                let _ = err.flush();
            }
        });
        Printer { task, tty }
    }
}

/// Stops the progress line when finished or dropped.
#[derive(Debug)]
pub struct Printer {
    task: tokio::task::JoinHandle<()>,
    tty: bool,
}

impl Printer {
    /// Stops printing and ends the line on a terminal.
    pub fn finish(self) {
        // Drop does the work.
    }
}

impl Drop for Printer {
    fn drop(&mut self) {
        self.task.abort();
        if self.tty {
            let _ = write!(std::io::stderr(), "\r\x1b[2K");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_line() {
        let p = Progress::new();
        p.sent();
        p.sent();
        p.sent();
        p.finished(true);
        p.finished(false);
        assert_eq!(p.done(), 2);
        assert_eq!(p.in_flight(), 1);
        let line = p.line(0);
        assert!(
            line.ends_with("2 done (2/s), 1 failed, 1 in flight"),
            "{line}"
        );
        assert!(!p.is_interrupted());
        p.interrupt();
        assert!(p.is_interrupted());
    }
}
