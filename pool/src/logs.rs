//! The log tap: reads a function's stdout and stderr and tags every line
//! with the invocation that was running when it was printed.
//!
//! The runtime flushes its output before it writes an answer, so when thaw
//! holds the answer every line of that invocation is already in the pipe. The
//! instance then asks the tap to drain what is buffered ([`LogTap::barrier`])
//! before it forgets the invocation id, so no line is attributed to the wrong
//! invocation.

use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tokio::net::unix::pipe;
use tokio::sync::{mpsc, oneshot};

/// Longest line kept; longer lines are cut into pieces of this size.
pub const MAX_LINE: usize = 16 * 1024;

/// Which stream a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// One line a function printed.
#[derive(Debug, Clone, Serialize)]
pub struct LogLine {
    /// Unix time in milliseconds when thaw read it.
    pub time_ms: u64,
    /// stdout or stderr.
    pub stream: Stream,
    /// The invocation that was running, if any.
    pub invocation_id: Option<String>,
    /// The text, without its newline (invalid UTF-8 replaced).
    pub line: String,
}

/// Receives the lines of one function's instances.
pub type LogSink = Arc<dyn Fn(LogLine) + Send + Sync>;

/// Handle on the task that reads one instance's output.
#[derive(Debug)]
pub struct LogTap {
    current: Arc<Mutex<Option<String>>>,
    barrier: mpsc::Sender<oneshot::Sender<()>>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

struct Reader {
    pipe: pipe::Receiver,
    stream: Stream,
    partial: Vec<u8>,
    open: bool,
}

impl Reader {
    /// Reads what is in the pipe now without waiting; emits complete lines.
    ///
    /// This reads the (non-blocking) fd directly instead of through tokio's
    /// `try_read`, which answers `WouldBlock` without asking the kernel
    /// while the reactor has not yet seen the pipe become readable: a
    /// barrier must see every byte already written.
    fn drain(&mut self, current: &Mutex<Option<String>>, sink: &LogSink) {
        let mut buf = [0u8; 64 * 1024];
        while self.open {
            match nix::unistd::read(&self.pipe, &mut buf) {
                Ok(0) => {
                    self.open = false;
                    self.flush(current, sink);
                }
                Ok(n) => {
                    self.partial.extend_from_slice(&buf[..n]);
                    self.emit_lines(current, sink);
                }
                Err(nix::errno::Errno::EAGAIN) => {
                    // Clear the reactor's readiness, so `readable()` waits
                    // for new data instead of firing again at once.
                    let _ = self
                        .pipe
                        .try_io(|| Err::<(), _>(std::io::ErrorKind::WouldBlock.into()));
                    break;
                }
                Err(nix::errno::Errno::EINTR) => continue,
                Err(_) => {
                    self.open = false;
                    self.flush(current, sink);
                }
            }
        }
    }

    fn emit_lines(&mut self, current: &Mutex<Option<String>>, sink: &LogSink) {
        let id = current.lock().unwrap().clone();
        let mut start = 0;
        while let Some(pos) = self.partial[start..].iter().position(|&b| b == b'\n') {
            let end = start + pos;
            emit(sink, self.stream, &id, &self.partial[start..end]);
            start = end + 1;
        }
        while self.partial.len() - start >= MAX_LINE {
            emit(
                sink,
                self.stream,
                &id,
                &self.partial[start..start + MAX_LINE],
            );
            start += MAX_LINE;
        }
        self.partial.drain(..start);
    }

    fn flush(&mut self, current: &Mutex<Option<String>>, sink: &LogSink) {
        if !self.partial.is_empty() {
            let id = current.lock().unwrap().clone();
            emit(sink, self.stream, &id, &self.partial);
            self.partial.clear();
        }
    }
}

fn emit(sink: &LogSink, stream: Stream, id: &Option<String>, bytes: &[u8]) {
    let text = String::from_utf8_lossy(bytes);
    sink(LogLine {
        time_ms: now_ms(),
        stream,
        invocation_id: id.clone(),
        line: text.trim_end_matches('\r').to_string(),
    });
}

impl LogTap {
    /// Starts the task that reads `stdout` and `stderr` into `sink`.
    pub fn start(stdout: pipe::Receiver, stderr: pipe::Receiver, sink: LogSink) -> LogTap {
        let current = Arc::new(Mutex::new(None));
        let (tx, mut rx) = mpsc::channel::<oneshot::Sender<()>>(4);
        let cur = current.clone();
        tokio::spawn(async move {
            let mut readers = [
                Reader {
                    pipe: stdout,
                    stream: Stream::Stdout,
                    partial: Vec::new(),
                    open: true,
                },
                Reader {
                    pipe: stderr,
                    stream: Stream::Stderr,
                    partial: Vec::new(),
                    open: true,
                },
            ];
            loop {
                let [out, err] = &mut readers;
                if !out.open && !err.open {
                    // Answer barriers until the instance is gone.
                    match rx.recv().await {
                        Some(ack) => {
                            let _ = ack.send(());
                            continue;
                        }
                        None => break,
                    }
                }
                tokio::select! {
                    r = out.pipe.readable(), if out.open => {
                        if r.is_err() { out.open = false; }
                        out.drain(&cur, &sink);
                    }
                    r = err.pipe.readable(), if err.open => {
                        if r.is_err() { err.open = false; }
                        err.drain(&cur, &sink);
                    }
                    ack = rx.recv() => {
                        out.drain(&cur, &sink);
                        err.drain(&cur, &sink);
                        out.flush(&cur, &sink);
                        err.flush(&cur, &sink);
                        match ack {
                            Some(ack) => { let _ = ack.send(()); }
                            None => break,
                        }
                    }
                }
            }
        });
        LogTap {
            current,
            barrier: tx,
        }
    }

    /// Sets the invocation that lines are attributed to from now on.
    pub fn set_invocation(&self, id: Option<String>) {
        *self.current.lock().unwrap() = id;
    }

    /// Waits until everything already in the pipes has been read and tagged.
    pub async fn barrier(&self) {
        let (tx, rx) = oneshot::channel();
        if self.barrier.send(tx).await.is_ok() {
            let _ = rx.await;
        }
    }
}
