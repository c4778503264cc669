//! Sending one request and reading what thaw said about it.
//!
//! One [`Client`] (an HTTP/1 keep-alive connection pool over TCP with
//! `TCP_NODELAY`) is shared by all the tasks of a run. [`Client::send`]
//! always reads the whole answer, so the connection goes back to the pool,
//! and turns it into an [`Outcome`]: the status, thaw's `x-thaw-start`,
//! `x-thaw-start-us` and `x-thaw-duration-us` headers, and for a failed
//! request the error kind (the `error` field of thaw's JSON error answer).

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// Response header: how the instance that served the request was obtained.
pub const START_HEADER: &str = "x-thaw-start";
/// Response header: µs the server spent getting an instance.
pub const START_US_HEADER: &str = "x-thaw-start-us";
/// Response header: µs the handler ran.
pub const DURATION_US_HEADER: &str = "x-thaw-duration-us";

/// Error kind of a failed answer whose body has no JSON `error` field.
pub const KIND_UNKNOWN: &str = "unknown";
/// Error kind of a request that got no HTTP answer (refused, reset...).
pub const KIND_TRANSPORT: &str = "transport";
/// Error kind of a request that got no answer within the client's timeout.
pub const KIND_CLIENT_TIMEOUT: &str = "client_timeout";

/// A keep-alive HTTP/1 client shared by every task of a run.
#[derive(Debug, Clone)]
pub struct Client {
    inner: hyper_util::client::legacy::Client<HttpConnector, Full<Bytes>>,
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
}

impl Client {
    /// A client that gives up on a request (and counts it as
    /// [`KIND_CLIENT_TIMEOUT`]) after `timeout`.
    pub fn new(timeout: Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let inner = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(usize::MAX)
            .build(connector);
        Client { inner, timeout }
    }

    /// Sends `req`, reads the whole answer and describes it.
    pub async fn send(&self, req: Request<Full<Bytes>>) -> Outcome {
        match tokio::time::timeout(self.timeout, self.exchange(req)).await {
            Ok(outcome) => outcome,
            Err(_) => Outcome {
                error: Some(KIND_CLIENT_TIMEOUT.to_owned()),
                detail: Some(format!("no answer within {:?}", self.timeout)),
                ..Outcome::default()
            },
        }
    }

    async fn exchange(&self, req: Request<Full<Bytes>>) -> Outcome {
        let resp = match self.inner.request(req).await {
            Ok(resp) => resp,
            Err(err) => return transport_failure(&err),
        };
        let (parts, body) = resp.into_parts();
        let header_str = |name: &str| {
            parts
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let header_u64 = |name: &str| header_str(name).and_then(|v| v.trim().parse().ok());
        let mut outcome = Outcome {
            status: Some(parts.status.as_u16()),
            start: header_str(START_HEADER),
            start_us: header_u64(START_US_HEADER),
            duration_us: header_u64(DURATION_US_HEADER),
            error: None,
            detail: None,
        };
        let body = match body.collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(err) => {
                let failed = transport_failure(&err);
                outcome.error = failed.error;
                outcome.detail = failed.detail;
                return outcome;
            }
        };
        if !outcome.is_ok() {
            outcome.error = Some(error_kind(&body));
        }
        outcome
    }
}

/// The `error` field of a JSON error answer, or [`KIND_UNKNOWN`].
pub fn error_kind(body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("error")?.as_str().map(str::to_owned))
        .filter(|kind| !kind.is_empty())
        .unwrap_or_else(|| KIND_UNKNOWN.to_owned())
}

fn transport_failure(err: &(dyn std::error::Error + 'static)) -> Outcome {
    let mut detail = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        detail.push_str(": ");
        detail.push_str(&cause.to_string());
        source = cause.source();
    }
    Outcome {
        error: Some(KIND_TRANSPORT.to_owned()),
        detail: Some(detail),
        ..Outcome::default()
    }
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
        let outcome = Client::new(Duration::from_secs(5))
            .send(target.request(0))
            .await;
        assert_eq!(outcome.status, None);
        assert_eq!(outcome.error.as_deref(), Some(KIND_TRANSPORT));
        assert!(outcome.detail.is_some());
        assert!(!outcome.is_ok());
    }
}
