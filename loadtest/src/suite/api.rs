//! A small JSON client for thaw's management API (`/functions`, `/store`),
//! which the suite reads between measurements. Invocations that are measured
//! go through [`crate::Client`] instead.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{CONTENT_TYPE, HOST};
use hyper::{Method, Request};
use hyper_util::client::legacy::{connect::HttpConnector, Client as HyperClient};
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

/// Longest wait for one management request.
const TIMEOUT: Duration = Duration::from_secs(120);

/// Why a management request failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// No answer (refused, reset, timed out).
    #[error("{method} {path}: no answer: {why}")]
    Transport {
        /// The method.
        method: String,
        /// The path.
        path: String,
        /// What went wrong.
        why: String,
    },
    /// The answer is not JSON.
    #[error("{method} {path}: status {status}, not JSON: {body}")]
    NotJson {
        /// The method.
        method: String,
        /// The path.
        path: String,
        /// The status.
        status: u16,
        /// The start of the body.
        body: String,
    },
}

/// An answer: status and JSON body.
#[derive(Debug, Clone)]
pub struct Answer {
    /// HTTP status.
    pub status: u16,
    /// The JSON body.
    pub body: Value,
}

impl Answer {
    /// True for 2xx.
    pub fn is_ok(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// `error: message` of a thaw error answer (or the whole body).
    pub fn error_text(&self) -> String {
        match (self.body.get("error"), self.body.get("message")) {
            (Some(Value::String(e)), Some(Value::String(m))) => format!("{e}: {m}"),
            (Some(Value::String(e)), _) => e.clone(),
            _ => self.body.to_string(),
        }
    }
}

/// thaw's management API at one address.
#[derive(Debug, Clone)]
pub struct Api {
    authority: String,
    client: HyperClient<HttpConnector, Full<Bytes>>,
}

impl Api {
    /// The API of the server at `authority` (`host:port`).
    pub fn new(authority: &str) -> Self {
        Api {
            authority: authority.to_owned(),
            client: HyperClient::builder(TokioExecutor::new()).build_http(),
        }
    }

    /// `http://host:port`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.authority)
    }

    /// Sends `method path` with an optional JSON body and extra headers.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        headers: &[(&str, &str)],
    ) -> Result<Answer, ApiError> {
        let (status, raw) = self.send_raw(method.clone(), path, body, headers).await?;
        let body = if raw.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&raw).map_err(|_| ApiError::NotJson {
                method: method.to_string(),
                path: path.to_owned(),
                status,
                body: String::from_utf8_lossy(&raw[..raw.len().min(200)]).into_owned(),
            })?
        };
        Ok(Answer { status, body })
    }

    /// `GET path` of a text answer (`/metrics`): status and body.
    pub async fn get_text(&self, path: &str) -> Result<(u16, String), ApiError> {
        let (status, raw) = self.send_raw(Method::GET, path, None, &[]).await?;
        Ok((status, String::from_utf8_lossy(&raw).into_owned()))
    }

    async fn send_raw(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        headers: &[(&str, &str)],
    ) -> Result<(u16, Bytes), ApiError> {
        let transport = |why: String| ApiError::Transport {
            method: method.to_string(),
            path: path.to_owned(),
            why,
        };
        let bytes = body.map_or_else(Bytes::new, |b| Bytes::from(b.to_string()));
        let mut req = Request::builder()
            .method(method.clone())
            .uri(format!("http://{}{}", self.authority, path))
            .header(HOST, &self.authority)
            .header(CONTENT_TYPE, "application/json");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req
            .body(Full::new(bytes))
            .map_err(|e| transport(e.to_string()))?;
        let exchange = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| transport(format!("{e:?}")))?;
            let status = resp.status().as_u16();
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| transport(e.to_string()))?
                .to_bytes();
            Ok::<_, ApiError>((status, body))
        };
        tokio::time::timeout(TIMEOUT, exchange)
            .await
            .map_err(|_| transport(format!("no answer within {TIMEOUT:?}")))?
    }

    /// `GET path`.
    pub async fn get(&self, path: &str) -> Result<Answer, ApiError> {
        self.send(Method::GET, path, None, &[]).await
    }
}
