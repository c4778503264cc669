//! A reader's deploys and deletes go to the writer: the request is sent on
//! to the URL the writer published (`#writer`), with the caller's
//! `authorization` (the nodes share their tokens; a request that came
//! without one, on a reader that needs none, carries this node's
//! `THAW_TOKEN` if it has one), and the writer's answer is relayed as it is. Without a writer, or when it cannot be reached, the
//! answer is `503 writer_unavailable`.

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::Response;

use super::Cluster;
use crate::service::{ApiError, ErrorKind};

/// A writer whose heartbeat is older than this is reported as such in the
/// error when it cannot be reached.
const STALE_MS: u64 = 10_000;

impl Cluster {
    /// Whether this node forwards deploys and deletes.
    pub fn forwards(&self) -> bool {
        !self.is_writer()
    }

    /// Sends `method path` with `body` to the writer and relays its answer.
    pub async fn forward(
        &self,
        method: Method,
        path: &str,
        headers: &HeaderMap,
        body: Bytes,
    ) -> Result<Response, ApiError> {
        let Some(writer) = self.writer() else {
            return Err(ApiError::new(
                ErrorKind::WriterUnavailable,
                format!(
                    "this node is a reader of {} and no writer has published there yet: \
                     deploys and deletes need a node started with --store-writer",
                    self.remote.url()
                ),
            ));
        };
        let url = format!("{}{path}", writer.url);
        let mut req = self.http.request(method.clone(), &url).body(body);
        for name in [header::AUTHORIZATION, header::CONTENT_TYPE] {
            if let Some(v) = headers.get(&name) {
                req = req.header(name, v);
            }
        }
        if !headers.contains_key(header::AUTHORIZATION) {
            if let Some(token) = &self.token {
                req = req.bearer_auth(&token.0);
            }
        }
        let resp = req.send().await.map_err(|e| {
            let age = crate::service::now_ms().saturating_sub(writer.heartbeat_ms);
            let stale = if age > STALE_MS {
                format!(" (its last heartbeat was {} s ago)", age / 1000)
            } else {
                String::new()
            };
            ApiError::new(
                ErrorKind::WriterUnavailable,
                format!(
                    "the store's writer at {} cannot be reached{stale}: {e}",
                    writer.url
                ),
            )
        })?;
        let status = StatusCode::from_u16(resp.status().as_u16())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let content_type = resp.headers().get(header::CONTENT_TYPE).cloned();
        let bytes = resp.bytes().await.map_err(|e| {
            ApiError::new(
                ErrorKind::WriterUnavailable,
                format!(
                    "the store's writer at {} broke off its answer: {e}",
                    writer.url
                ),
            )
        })?;
        tracing::info!(%method, path, writer = %writer.url, status = status.as_u16(), "forwarded to the writer");
        let mut out = Response::new(Body::from(bytes));
        *out.status_mut() = status;
        if let Some(ct) = content_type {
            out.headers_mut().insert(header::CONTENT_TYPE, ct);
        }
        out.headers_mut().insert(
            "x-thaw-forwarded-to",
            header::HeaderValue::from_str(&writer.url)
                .unwrap_or(header::HeaderValue::from_static("writer")),
        );
        Ok(out)
    }
}
