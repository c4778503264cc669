//! Per-function log lines, capped by size and age, with live followers.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pool::logs::LogLine;
use tokio::sync::broadcast;

/// Limits of the log store.
#[derive(Debug, Clone, Copy)]
pub struct LogLimits {
    /// Bytes of text kept per function.
    pub bytes_per_function: usize,
    /// Oldest line kept.
    pub max_age: Duration,
}

impl Default for LogLimits {
    fn default() -> Self {
        LogLimits {
            bytes_per_function: 1 << 20,
            max_age: Duration::from_secs(24 * 3600),
        }
    }
}

struct FunctionLogs {
    lines: VecDeque<LogLine>,
    bytes: usize,
    live: broadcast::Sender<LogLine>,
}

/// The log lines of every function.
#[derive(Clone)]
pub struct LogStore {
    limits: LogLimits,
    inner: Arc<Mutex<HashMap<String, FunctionLogs>>>,
}

impl std::fmt::Debug for LogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogStore")
            .field("limits", &self.limits)
            .finish()
    }
}

impl LogStore {
    /// An empty store.
    pub fn new(limits: LogLimits) -> LogStore {
        LogStore {
            limits,
            inner: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    fn entry<'a>(map: &'a mut HashMap<String, FunctionLogs>, name: &str) -> &'a mut FunctionLogs {
        map.entry(name.to_string()).or_insert_with(|| FunctionLogs {
            lines: VecDeque::new(),
            bytes: 0,
            live: broadcast::channel(1024).0,
        })
    }

    /// Adds a line of `function`.
    pub fn push(&self, function: &str, line: LogLine) {
        let mut map = self.inner.lock().unwrap();
        let logs = Self::entry(&mut map, function);
        let _ = logs.live.send(line.clone());
        logs.bytes += line.line.len() + 64;
        logs.lines.push_back(line);
        let oldest_ok = now_ms().saturating_sub(self.limits.max_age.as_millis() as u64);
        while let Some(front) = logs.lines.front() {
            if logs.bytes > self.limits.bytes_per_function || front.time_ms < oldest_ok {
                logs.bytes -= front.line.len() + 64;
                logs.lines.pop_front();
            } else {
                break;
            }
        }
    }

    /// The last `n` lines of `function`.
    pub fn tail(&self, function: &str, n: usize) -> Vec<LogLine> {
        let map = self.inner.lock().unwrap();
        map.get(function)
            .map(|l| {
                l.lines
                    .iter()
                    .skip(l.lines.len().saturating_sub(n))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The last `n` lines and a receiver of the lines that follow them.
    pub fn follow(&self, function: &str, n: usize) -> (Vec<LogLine>, broadcast::Receiver<LogLine>) {
        let mut map = self.inner.lock().unwrap();
        let logs = Self::entry(&mut map, function);
        let rx = logs.live.subscribe();
        let tail = logs
            .lines
            .iter()
            .skip(logs.lines.len().saturating_sub(n))
            .cloned()
            .collect();
        (tail, rx)
    }

    /// Forgets a function's lines.
    pub fn remove(&self, function: &str) {
        self.inner.lock().unwrap().remove(function);
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use pool::logs::Stream;

    fn line(text: &str) -> LogLine {
        LogLine {
            time_ms: now_ms(),
            stream: Stream::Stdout,
            invocation_id: Some("i".into()),
            line: text.into(),
        }
    }

    #[test]
    fn keeps_the_newest_lines_within_the_byte_cap() {
        let store = LogStore::new(LogLimits {
            bytes_per_function: 1000,
            max_age: Duration::from_secs(60),
        });
        for i in 0..100 {
            store.push("f", line(&format!("line {i}")));
        }
        let tail = store.tail("f", 1000);
        assert!(tail.len() < 100 && !tail.is_empty());
        assert_eq!(tail.last().unwrap().line, "line 99");
        assert_eq!(store.tail("f", 2).len(), 2);
        assert!(store.tail("other", 10).is_empty());
    }
}
