//! `GET /events`: the live stream the dashboard draws from (server-sent
//! events).
//!
//! ```text
//! event: overview            every second
//! data: {"t": ms, "functions": [{name, version, runtime, state, error, instances,
//!        memory: {rss, pss, uss}, memory_bytes, invocations}],
//!        "states": {"ready": n, ..}, "instances": {idle, busy, booting},
//!        "invocations": {"total", "errors", "by_start": {"warm": n, ..}},
//!        "latency": {"warm": {count, p50, p90, p99}, ..}   (seconds),
//!        "memory": {used, budget, rss, pss, uss},
//!        "store": {objects, stored_bytes, logical_bytes, dedup_ratio, ..} | null}
//!
//! event: function            with ?function=NAME
//! data: {"name": NAME, "view": <GET /functions/NAME> | null,
//!        "invocations": {"warm": {"ok": n, ..}, ..},
//!        "start_latency": {"warm": <histogram>, ..},
//!        "duration": {"warm": <histogram>, ..}}
//! ```
//!
//! The function event is sent every second, and sooner when the record
//! changed: it is looked at every 50 ms while the function deploys (so the
//! page sees `warming` and `snapshotting` as they happen), else every
//! 250 ms.
//!
//! Counters are totals since the server started; the page turns them into
//! rates. Latency histograms come from the server-wide metrics (by start
//! kind, over all functions).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::time::{Duration, Instant};

use axum::extract::{Query, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream;
use serde::Deserialize;
use serde_json::{json, Value};

use super::prom::{self, Sample};
use crate::api::{AppState, Caller};
use crate::service::Service;

/// The stream's clock: how often a function that is deploying is looked at,
/// so the page sees `warming` and `snapshotting` even when they last a
/// fraction of a second.
const FAST: Duration = Duration::from_millis(50);
/// Ticks of [`FAST`] between looks at a function that is not deploying.
const SETTLED_EVERY: u32 = 5;
/// Ticks of [`FAST`] between overview events.
const OVERVIEW_EVERY: u32 = 20;
/// How often store statistics are read again.
const STORE_EVERY: Duration = Duration::from_secs(5);

/// Query of `GET /events`.
#[derive(Debug, Deserialize)]
pub struct EventsQuery {
    /// Also stream this function's record.
    pub function: Option<String>,
}

struct Stream {
    service: Service,
    /// Who watches: `env` values are redacted for non-admins.
    caller: Caller,
    function: Option<String>,
    tick: u32,
    interval: tokio::time::Interval,
    last_function: String,
    /// Whether the watched function was deploying when last seen.
    in_progress: bool,
    store: Value,
    store_read: Option<Instant>,
    queue: Vec<Event>,
}

/// `GET /events`.
pub async fn events(
    State(state): State<AppState>,
    caller: Caller,
    Query(q): Query<EventsQuery>,
) -> Response {
    let mut interval = tokio::time::interval(FAST);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let start = Stream {
        service: state.service.clone(),
        caller,
        function: q.function.filter(|f| !f.is_empty()),
        tick: 0,
        interval,
        last_function: String::new(),
        in_progress: true,
        store: Value::Null,
        store_read: None,
        queue: Vec::new(),
    };
    let events = stream::unfold(start, |mut s| async move {
        while s.queue.is_empty() {
            s.interval.tick().await;
            s.fill().await;
        }
        let e = s.queue.remove(0);
        Some((Ok::<_, Infallible>(e), s))
    });
    Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response()
}

impl Stream {
    async fn fill(&mut self) {
        let overview_due = self.tick % OVERVIEW_EVERY == 0;
        let function_due =
            self.function.is_some() && (self.in_progress || self.tick % SETTLED_EVERY == 0);
        self.tick = self.tick.wrapping_add(1);
        if !overview_due && !function_due {
            return;
        }
        if overview_due && self.store_read.is_none_or(|t| t.elapsed() >= STORE_EVERY) {
            let store = self.service.store.clone();
            if let Ok(Ok(v)) =
                tokio::task::spawn_blocking(move || crate::store_view::stats(&store)).await
            {
                self.store = v;
            }
            self.store_read = Some(Instant::now());
        }
        let service = self.service.clone();
        let function = self.function.clone().filter(|_| function_due);
        let store = self.store.clone();
        let caller = self.caller;
        let Ok((overview, func)) = tokio::task::spawn_blocking(move || {
            let samples = prom::parse(&service.metrics.encode());
            let o = overview_due.then(|| overview(&service, &samples, store));
            let f = function.map(|name| function_event(&service, &samples, &name, caller));
            (o, f)
        })
        .await
        else {
            return;
        };
        if let Some(f) = func {
            self.in_progress = matches!(
                f["view"]["state"].as_str(),
                Some("deploying" | "building" | "warming" | "snapshotting")
            );
            let text = f.to_string();
            if overview_due || text != self.last_function {
                self.queue
                    .push(Event::default().event("function").data(text.clone()));
                self.last_function = text;
            }
        }
        if let Some(o) = overview {
            self.queue
                .push(Event::default().event("overview").data(o.to_string()));
        }
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The overview event.
pub fn overview(service: &Service, samples: &[Sample], store: Value) -> Value {
    let views = service.list();
    let mut per_function: BTreeMap<&str, f64> = BTreeMap::new();
    let mut by_start: BTreeMap<&str, f64> = BTreeMap::new();
    let (mut total, mut errors) = (0.0, 0.0);
    for s in samples
        .iter()
        .filter(|s| s.name == "thaw_invocations_total")
    {
        let f = s.labels.get("function").map_or("", String::as_str);
        let start = s.labels.get("start").map_or("none", String::as_str);
        *per_function.entry(f).or_default() += s.value;
        *by_start.entry(start).or_default() += s.value;
        total += s.value;
        if s.labels.get("outcome").map(String::as_str) != Some("ok") {
            errors += s.value;
        }
    }
    let mut states: BTreeMap<&str, u64> =
        ["deploying", "warming", "snapshotting", "ready", "failed"]
            .into_iter()
            .map(|s| (s, 0))
            .collect();
    let mut memory = pool::memory::MemoryUse::default();
    let functions: Vec<Value> = views
        .iter()
        .map(|v| {
            *states.entry(v.state).or_default() += 1;
            memory += v.memory;
            json!({
                "name": v.name,
                "version": v.version,
                "runtime": v.spec.runtime,
                "state": v.state,
                "error": v.error,
                "instances": v.instances,
                "memory": v.memory,
                "memory_bytes": v.memory_bytes,
                "invocations": per_function.get(v.name.as_str()).copied().unwrap_or(0.0) as u64,
            })
        })
        .collect();
    let latency: BTreeMap<String, Value> =
        prom::histograms(samples, "thaw_start_latency_seconds", "start")
            .into_iter()
            .map(|(k, h)| {
                let v = json!({
                    "count": h.count,
                    "p50": h.quantile(0.5),
                    "p90": h.quantile(0.9),
                    "p99": h.quantile(0.99),
                });
                (k, v)
            })
            .collect();
    json!({
        "t": now_ms(),
        "functions": functions,
        "states": states,
        "instances": service.pool.total_counts(),
        "invocations": {
            "total": total as u64,
            "errors": errors as u64,
            "by_start": by_start.iter().map(|(k, v)| (k.to_string(), *v as u64)).collect::<BTreeMap<_, _>>(),
        },
        "latency": latency,
        "memory": {
            "used": service.pool.memory_used(),
            "budget": service.pool.config().memory_budget,
            "rss": memory.rss,
            "pss": memory.pss,
            "uss": memory.uss,
        },
        "store": store,
    })
}

/// The function event of `name`, as `caller` may see it.
pub fn function_event(service: &Service, samples: &[Sample], name: &str, caller: Caller) -> Value {
    let mut invocations: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    for s in samples.iter().filter(|s| {
        s.name == "thaw_invocations_total"
            && s.labels.get("function").map(String::as_str) == Some(name)
    }) {
        let start = s.labels.get("start").cloned().unwrap_or_default();
        let outcome = s.labels.get("outcome").cloned().unwrap_or_default();
        *invocations
            .entry(start)
            .or_default()
            .entry(outcome)
            .or_default() += s.value as u64;
    }
    json!({
        "name": name,
        "view": service.view(name).map(|v| crate::redact::view_for(v, caller)),
        "invocations": invocations,
        "start_latency": prom::histograms_where(samples, "thaw_start_latency_seconds", "start", Some(("function", name))),
        "duration": prom::histograms_where(samples, "thaw_invocation_duration_seconds", "start", Some(("function", name))),
    })
}
