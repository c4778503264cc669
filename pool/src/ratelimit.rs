//! Rate-limited log lines: anything a function can trigger (a crash loop, a
//! restore failing on every cold start) must not flood the server's log.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Allows `per_window` lines per key in each `window`; counts the rest.
#[derive(Debug)]
pub struct LogLimiter {
    per_window: u32,
    window: Duration,
    keys: Mutex<HashMap<String, Window>>,
}

#[derive(Debug)]
struct Window {
    start: Instant,
    lines: u32,
    suppressed: u64,
}

impl LogLimiter {
    /// A limiter of `per_window` lines per key per `window`.
    pub fn new(per_window: u32, window: Duration) -> LogLimiter {
        LogLimiter {
            per_window,
            window,
            keys: Mutex::new(HashMap::new()),
        }
    }

    /// Whether a line for `key` may be written now. `Some(n)`: yes, and `n`
    /// lines for the key were suppressed since the last one written (say so
    /// in the line); `None`: suppress it.
    pub fn allow(&self, key: &str) -> Option<u64> {
        let now = Instant::now();
        let mut keys = self.keys.lock().unwrap();
        if keys.len() > 10_000 {
            // Forget quiet keys rather than grow without bound.
            keys.retain(|_, w| now.duration_since(w.start) < self.window);
        }
        let w = keys.entry(key.to_string()).or_insert(Window {
            start: now,
            lines: 0,
            suppressed: 0,
        });
        if now.duration_since(w.start) >= self.window {
            w.start = now;
            w.lines = 0;
        }
        if w.lines < self.per_window {
            w.lines += 1;
            Some(std::mem::take(&mut w.suppressed))
        } else {
            w.suppressed += 1;
            None
        }
    }
}

/// The pool's limiter: 5 lines per key per minute.
pub static POOL_LOG: std::sync::LazyLock<LogLimiter> =
    std::sync::LazyLock::new(|| LogLimiter::new(5, Duration::from_secs(60)));

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn allows_a_burst_then_counts_until_the_window_turns() {
        let l = LogLimiter::new(2, Duration::from_secs(10));
        assert_eq!(l.allow("a"), Some(0));
        assert_eq!(l.allow("a"), Some(0));
        assert_eq!(l.allow("a"), None);
        assert_eq!(l.allow("a"), None);
        assert_eq!(l.allow("b"), Some(0), "keys are independent");
        tokio::time::advance(Duration::from_secs(11)).await;
        assert_eq!(
            l.allow("a"),
            Some(2),
            "the next line says what was suppressed"
        );
        assert_eq!(l.allow("a"), Some(0));
    }
}
