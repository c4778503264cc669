//! Sending one request and reading what thaw said about it.
//!
//! One [`Client`] is shared by all the tasks of a run: a pool of HTTP/1
//! keep-alive connections (TCP with `TCP_NODELAY`) per server address. A
//! request takes an idle connection or opens a new one, so there are as many
//! connections as requests ever were in flight at once; after a complete
//! answer the connection goes back to the pool. The task that sends on a
//! connection also drives it (no connection task), and a pooled connection
//! found closed by the server is replaced before the request leaves. On
//! loopback this halves the per-request cost of hyper-util's pooled client
//! (see docs/loadtest.md, Calibration).
//!
//! [`Client::send`] always reads the whole answer and turns it into an
//! [`Outcome`]: the status, thaw's `x-thaw-start`, `x-thaw-start-us`,
//! `x-thaw-duration-us` and (after a restore) `x-thaw-spare` headers, and for a failed request the error kind (the
//! `error` field of thaw's JSON error answer).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use std::future::Future;
use std::pin::Pin;

use hyper::client::conn::http1::{Connection, SendRequest};
use hyper::http::response::Parts;
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::target::Target;

/// Response header: how the instance that served the request was obtained.
pub const START_HEADER: &str = "x-thaw-start";
/// Response header: µs the server spent getting an instance.
pub const START_US_HEADER: &str = "x-thaw-start-us";
/// Response header: µs the handler ran.
pub const DURATION_US_HEADER: &str = "x-thaw-duration-us";
/// Response header of a restore: `hit` (a pre-made sandbox was ready) or
/// `miss` (one was made for it).
pub const SPARE_HEADER: &str = "x-thaw-spare";

/// Error kind of a failed answer whose body has no JSON `error` field.
pub const KIND_UNKNOWN: &str = "unknown";
/// Error kind of a request that got no HTTP answer (refused, reset...).
pub const KIND_TRANSPORT: &str = "transport";
/// Error kind of a request that got no answer within the client's timeout.
pub const KIND_CLIENT_TIMEOUT: &str = "client_timeout";

type Sender = SendRequest<Full<Bytes>>;

/// A keep-alive HTTP/1 client shared by every task of a run.
#[derive(Debug, Clone)]
pub struct Client {
    idle: Arc<Mutex<HashMap<String, Vec<Conn>>>>,
    timeout: Duration,
}

/// What became of one request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    /// HTTP status, or `None` when no answer came.
    pub status: Option<u16>,
    /// The `x-thaw-start` header (`warm`, `restore`, `boot`), if sent.
    pub start: Option<String>,
    /// The `x-thaw-start-us` header, if sent and a number.
    pub start_us: Option<u64>,
    /// The `x-thaw-duration-us` header, if sent and a number.
    pub duration_us: Option<u64>,
    /// The `x-thaw-spare` header (`hit`, `miss`), if sent.
    pub spare: Option<String>,
    /// For a failed request, its kind: thaw's JSON `error` field,
    /// [`KIND_UNKNOWN`], [`KIND_TRANSPORT`] or [`KIND_CLIENT_TIMEOUT`].
    pub error: Option<String>,
    /// For a request with no answer, what went wrong.
    pub detail: Option<String>,
}

impl Outcome {
    /// True for a 2xx answer.
    pub fn is_ok(&self) -> bool {
        matches!(self.status, Some(200..=299))
    }

    fn failed(kind: &str, detail: String) -> Self {
        Outcome {
            error: Some(kind.to_owned()),
            detail: Some(detail),
            ..Outcome::default()
        }
    }
}

impl Client {
    /// A client that gives up on a request (and counts it as
    /// [`KIND_CLIENT_TIMEOUT`]) after `timeout`.
    pub fn new(timeout: Duration) -> Self {
        Client {
            idle: Arc::default(),
            timeout,
        }
    }

    /// Sends request number `seq` of `target`, reads the whole answer and
    /// describes it.
    pub async fn send(&self, target: &Target, seq: u64) -> Outcome {
        match tokio::time::timeout(self.timeout, self.exchange(target, seq)).await {
            Ok(outcome) => outcome,
            Err(_) => Outcome::failed(
                KIND_CLIENT_TIMEOUT,
                format!("no answer within {:?}", self.timeout),
            ),
        }
    }

    /// Connections open and idle for `addr` (for tests and diagnostics).
    pub fn idle_connections(&self, addr: &str) -> usize {
        self.idle
            .lock()
            .expect("pool lock")
            .get(addr)
            .map_or(0, Vec::len)
    }

    /// An idle connection to `addr` that is still open, if any.
    fn checkout(&self, addr: &str) -> Option<Conn> {
        let mut idle = self.idle.lock().expect("pool lock");
        let list = idle.get_mut(addr)?;
        while let Some(conn) = list.pop() {
            if !conn.sender.is_closed() {
                return Some(conn);
            }
        }
        None
    }

    fn checkin(&self, addr: &str, conn: Conn) {
        let mut idle = self.idle.lock().expect("pool lock");
        idle.entry(addr.to_owned()).or_default().push(conn);
    }

    async fn connect(addr: &str) -> Result<Conn, String> {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
        stream
            .set_nodelay(true)
            .map_err(|e| format!("cannot set TCP_NODELAY: {e}"))?;
        let (sender, driver) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| chain(&e))?;
        Ok(Conn {
            sender,
            driver: Some(Box::pin(driver)),
        })
    }

    async fn exchange(&self, target: &Target, seq: u64) -> Outcome {
        let addr = target.addr();
        for attempt in 1..=2 {
            let (mut conn, pooled) = match self.checkout(addr) {
                Some(conn) => (conn, true),
                None => match Self::connect(addr).await {
                    Ok(conn) => (conn, false),
                    Err(detail) => return Outcome::failed(KIND_TRANSPORT, detail),
                },
            };
            let result = conn.exchange(target.request(seq)).await;
            match result {
                Ok((parts, Ok(body))) => {
                    let outcome = describe(&parts, &body);
                    if conn.driver.is_some() {
                        self.checkin(addr, conn);
                    }
                    return outcome;
                }
                Ok((parts, Err(err))) => {
                    let mut outcome = describe(&parts, b"");
                    outcome.error = Some(KIND_TRANSPORT.to_owned());
                    outcome.detail = Some(chain(&err));
                    return outcome;
                }
                // A pooled connection the server closed while it sat idle:
                // the request never left, so it is sent again on a new one.
                Err(Failure::NotSent(_)) if pooled && attempt == 1 => continue,
                Err(Failure::NotSent(err) | Failure::Failed(err)) => {
                    return Outcome::failed(KIND_TRANSPORT, chain(&err))
                }
            }
        }
        unreachable!("the second attempt always returns")
    }
}

type Driver = Pin<Box<Connection<TokioIo<TcpStream>, Full<Bytes>>>>;

/// One HTTP/1 connection. Its driver (hyper's connection state machine) is
/// polled by the task that sends on it, not by a task of its own: that saves
/// two task wake-ups per request.
struct Conn {
    sender: Sender,
    /// `None` once the connection has ended.
    driver: Option<Driver>,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("closed", &self.sender.is_closed())
            .finish()
    }
}

/// Why an exchange got no answer.
enum Failure {
    /// The request was not sent (the connection had ended).
    NotSent(hyper::Error),
    /// It was sent, or may have been.
    Failed(hyper::Error),
}

impl Conn {
    /// Sends `req` and reads the answer, driving the connection meanwhile.
    async fn exchange(
        &mut self,
        req: Request<Full<Bytes>>,
    ) -> Result<(Parts, Result<Bytes, hyper::Error>), Failure> {
        let Conn { sender, driver } = self;
        let work = async {
            sender.ready().await.map_err(Failure::NotSent)?;
            let resp = sender.send_request(req).await.map_err(|e| {
                if e.is_canceled() {
                    Failure::NotSent(e)
                } else {
                    Failure::Failed(e)
                }
            })?;
            let (parts, body) = resp.into_parts();
            let body = body.collect().await.map(|c| c.to_bytes());
            Ok((parts, body))
        };
        let mut work = std::pin::pin!(work);
        std::future::poll_fn(|cx| {
            if let Some(d) = driver.as_mut() {
                // The connection ended (closed by the peer, or failed): drop
                // it, so a request still queued on it fails as not sent.
                if d.as_mut().poll(cx).is_ready() {
                    *driver = None;
                }
            }
            work.as_mut().poll(cx)
        })
        .await
    }
}

/// An answer as an [`Outcome`].
fn describe(parts: &Parts, body: &[u8]) -> Outcome {
    let header_str = |name: &str| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let header_u64 = |name: &str| header_str(name).and_then(|v| v.trim().parse().ok());
    let status = parts.status.as_u16();
    let mut outcome = Outcome {
        status: Some(status),
        start: header_str(START_HEADER),
        start_us: header_u64(START_US_HEADER),
        duration_us: header_u64(DURATION_US_HEADER),
        spare: header_str(SPARE_HEADER),
        error: None,
        detail: None,
    };
    if !outcome.is_ok() {
        outcome.error = Some(error_kind(body));
    }
    outcome
}

/// The `error` field of a JSON error answer, or [`KIND_UNKNOWN`].
pub fn error_kind(body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("error")?.as_str().map(str::to_owned))
        .filter(|kind| !kind.is_empty())
        .unwrap_or_else(|| KIND_UNKNOWN.to_owned())
}

/// An error and its causes, joined with ": ".
fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut detail = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        detail.push_str(": ");
        detail.push_str(&cause.to_string());
        source = cause.source();
    }
    detail
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_kind_from_json_or_unknown() {
        assert_eq!(
            error_kind(br#"{"error":"timeout","message":"x","invocation_id":"1"}"#),
            "timeout"
        );
        assert_eq!(error_kind(b"<html>bad gateway</html>"), KIND_UNKNOWN);
        assert_eq!(error_kind(br#"{"error": 5}"#), KIND_UNKNOWN);
        assert_eq!(error_kind(br#"{"message":"no kind"}"#), KIND_UNKNOWN);
    }

    #[tokio::test]
    async fn refused_connection_is_a_transport_error() {
        // Bind then drop a listener so the port is very likely closed.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let target = crate::Target::new(&format!("http://127.0.0.1:{port}"), "f").unwrap();
        let outcome = Client::new(Duration::from_secs(5)).send(&target, 0).await;
        assert_eq!(outcome.status, None);
        assert_eq!(outcome.error.as_deref(), Some(KIND_TRANSPORT));
        assert!(outcome.detail.is_some());
        assert!(!outcome.is_ok());
    }
}
