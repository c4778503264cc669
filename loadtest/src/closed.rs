//! Closed loop: N clients, each sending its next request as soon as the
//! previous one answered.
//!
//! ```text
//! client 1: |--req--|--req--|----slow req----|--req--|
//! client 2: |-req-|--req--|-req-|--req--|--req--|
//!           ^ start        ^ warm-up end            ^ end (duration)
//! ```
//!
//! A request belongs to the warm-up if it started before the warm-up ended;
//! those are sent but not accounted. With [`Stop::Duration`] no request
//! starts after the end (requests in flight then still count); with
//! [`Stop::Requests`] the clients share a ticket counter, so exactly that
//! many measured requests are sent. Latency is measured from the send: a
//! closed loop by design sends nothing while the server stalls, which is why
//! rates and tails under load come from [`crate::open`].
//!
//! [`Progress::interrupt`] stops the clients before their next request.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::client::Client;
use crate::progress::Progress;
use crate::run::Stop;
use crate::stats::{Sample, Stats};
use crate::target::Target;

/// Runs `concurrency` clients until `stop`, after `warmup`.
pub async fn run(
    client: &Client,
    target: &Target,
    concurrency: usize,
    stop: Stop,
    warmup: Duration,
    progress: &Arc<Progress>,
) -> Stats {
    let start = Instant::now();
    let warm_end = start + warmup;
    let (end, limit) = match stop {
        Stop::Duration(d) => (Some(warm_end + d), None),
        Stop::Requests(n) => (None, Some(n)),
    };
    let tickets = Arc::new(AtomicU64::new(0));
    let seq = Arc::new(AtomicU64::new(0));
    let (tx, mut rx) = mpsc::unbounded_channel::<Sample>();
    let mut clients = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        let (client, target, progress) = (client.clone(), target.clone(), Arc::clone(progress));
        let (tickets, seq, tx) = (Arc::clone(&tickets), Arc::clone(&seq), tx.clone());
        clients.push(tokio::spawn(async move {
            loop {
                let now = Instant::now();
                if end.is_some_and(|end| now >= end) || progress.is_interrupted() {
                    break;
                }
                let measured = now >= warm_end;
                if measured && limit.is_some_and(|n| tickets.fetch_add(1, Ordering::Relaxed) >= n) {
                    break;
                }
                let i = seq.fetch_add(1, Ordering::Relaxed);
                progress.sent();
                let sent = Instant::now();
                let outcome = client.send(&target, i).await;
                let done = Instant::now();
                progress.finished(outcome.is_ok());
                if measured {
                    // The collector outlives every client.
                    let _ = tx.send(Sample {
                        intended: sent,
                        sent,
                        done,
                        outcome,
                    });
                }
            }
        }));
    }
    drop(tx);
    let mut stats = Stats::new();
    while let Some(sample) = rx.recv().await {
        stats.record(&sample);
    }
    for c in clients {
        if let Err(err) = c.await {
            if err.is_panic() {
                std::panic::resume_unwind(err.into_panic());
            }
        }
    }
    stats
}
