//! A small fake thaw server on a loopback ephemeral port, for the tests.
//!
//! `POST /functions/{name}/invoke` behaves by function name:
//!
//! | name | answer |
//! |------|--------|
//! | `ok` | 200, `x-thaw-start: warm`, start 5 µs, handler 100 µs |
//! | `close` | like `ok`, with `connection: close` |
//! | `mixed` | by arrival `n % 4`: 500 `handler_error`, 429 `concurrency_limit`, 502 non-JSON, 200 `restore` |
//! | `split` | by arrival `n % 3`: `boot` (start 40000 µs) or `warm` (start 3 µs) |
//! | `stall` | every request passes one lock; the request that arrives `STALL_AT`-th holds it `STALL` long |
//! | `sleep-MS` | 200 after sleeping MS milliseconds |
//!
//! Every request's `x-thaw-cold`, `authorization` and body are recorded.

#![allow(dead_code)]

/// Whether `THAW_TEST_STRICT` is set (CI sets it): a missing prerequisite
/// then fails the test instead of skipping it.
pub fn strict() -> bool {
    std::env::var_os("THAW_TEST_STRICT").is_some()
}

/// Reports a missing prerequisite: with `THAW_TEST_STRICT` set the test
/// fails with `reason`; otherwise the skip is printed. Use [`skip!`].
pub fn missing(reason: &str) {
    if strict() {
        panic!("THAW_TEST_STRICT is set and a prerequisite is missing: {reason}");
    }
    eprintln!("skipped: {reason}");
}

/// Ends the test because a prerequisite is missing (`format!` arguments give
/// the reason); fails it instead when `THAW_TEST_STRICT` is set.
#[macro_export]
macro_rules! skip {
    ($($reason:tt)*) => {{
        $crate::common::missing(&format!($($reason)*));
        return;
    }};
}

use std::collections::HashMap;

#[path = "../../../test-support/numpy_pandas.rs"]
pub mod numpy_pandas;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;

/// Arrival number (from 0) at which `stall` stalls.
pub const STALL_AT: u64 = 100;
/// How long `stall` stalls.
pub const STALL: Duration = Duration::from_millis(500);

/// `(x-thaw-cold, authorization, body)` of one request.
pub type SeenRequest = (Option<String>, Option<String>, Vec<u8>);

/// What the server saw.
#[derive(Default)]
pub struct Seen {
    counts: Mutex<HashMap<String, Arc<AtomicU64>>>,
    /// `(x-thaw-cold, authorization, body)` of every request, in arrival order.
    pub requests: Mutex<Vec<SeenRequest>>,
    gate: tokio::sync::Mutex<()>,
}

impl Seen {
    fn counter(&self, name: &str) -> Arc<AtomicU64> {
        Arc::clone(
            self.counts
                .lock()
                .unwrap()
                .entry(name.to_owned())
                .or_default(),
        )
    }

    /// Requests received for `name` so far.
    pub fn count(&self, name: &str) -> u64 {
        self.counter(name).load(Ordering::SeqCst)
    }
}

/// A running fake server.
pub struct FakeThaw {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// What it saw.
    pub seen: Arc<Seen>,
}

/// Starts the fake server on the current runtime.
pub async fn start() -> FakeThaw {
    let seen = Arc::new(Seen::default());
    let app = Router::new()
        .route("/functions/{name}/invoke", post(invoke))
        .with_state(Arc::clone(&seen));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    FakeThaw { url, seen }
}

fn thaw_ok(start: &str, start_us: u64, duration_us: u64, body: Bytes) -> Response {
    (
        StatusCode::OK,
        [
            ("x-thaw-start", start.to_owned()),
            ("x-thaw-start-us", start_us.to_string()),
            ("x-thaw-duration-us", duration_us.to_string()),
            ("x-thaw-invocation-id", "inv-1".to_owned()),
        ],
        body,
    )
        .into_response()
}

fn thaw_error(status: StatusCode, kind: &str) -> Response {
    let body = format!(r#"{{"error":"{kind}","message":"test","invocation_id":"inv-2"}}"#);
    (status, [("content-type", "application/json")], body).into_response()
}

async fn invoke(
    State(seen): State<Arc<Seen>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let n = seen.counter(&name).fetch_add(1, Ordering::SeqCst);
    let header = |h: &str| headers.get(h).map(|v| v.to_str().unwrap().to_owned());
    seen.requests.lock().unwrap().push((
        header("x-thaw-cold"),
        header("authorization"),
        body.to_vec(),
    ));
    match name.as_str() {
        "ok" => thaw_ok("warm", 5, 100, body),
        "close" => {
            let mut resp = thaw_ok("warm", 5, 100, body);
            resp.headers_mut()
                .insert("connection", "close".parse().unwrap());
            resp
        }
        "mixed" => match n % 4 {
            0 => thaw_error(StatusCode::INTERNAL_SERVER_ERROR, "handler_error"),
            1 => thaw_error(StatusCode::TOO_MANY_REQUESTS, "concurrency_limit"),
            2 => (StatusCode::BAD_GATEWAY, "<html>bad gateway</html>").into_response(),
            _ => thaw_ok("restore", 3_000, 100, body),
        },
        "split" => {
            if n % 3 == 0 {
                thaw_ok("boot", 40_000, 100, body)
            } else {
                thaw_ok("warm", 3, 100, body)
            }
        }
        "stall" => {
            let guard = seen.gate.lock().await;
            if n == STALL_AT {
                tokio::time::sleep(STALL).await;
            }
            drop(guard);
            thaw_ok("warm", 1, 1, body)
        }
        other => match other.strip_prefix("sleep-").and_then(|ms| ms.parse().ok()) {
            Some(ms) => {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                thaw_ok("warm", 1, ms * 1000, body)
            }
            None => thaw_error(StatusCode::NOT_FOUND, "not_found"),
        },
    }
}
