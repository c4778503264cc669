//! The HTTP API (axum). Build it with [`app`].

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{MatchedPath, Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use futures_util::stream::{self, Stream, StreamExt};
use serde::Deserialize;
use tokio_stream::wrappers::BroadcastStream;

use crate::auth::{Role, Tokens};
use crate::service::{ApiError, ErrorKind, InvokeRequest, Service};
use crate::spec::{DeployRequest, FunctionSpec};

/// Shared state of the router.
#[derive(Clone, Debug)]
pub struct AppState {
    /// The control plane.
    pub service: Service,
    /// Tokens accepted on every route but `/healthz` (none: open, which the
    /// server allows on loopback only).
    pub tokens: Arc<Tokens>,
    /// Browser sessions made from those tokens.
    pub sessions: Arc<crate::ui::session::Sessions>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.kind.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut body = serde_json::json!({
            "error": self.kind.as_str(),
            "message": self.message,
        });
        if let Some(id) = &self.invocation_id {
            body["invocation_id"] = id.clone().into();
        }
        if let Some(tb) = &self.traceback {
            body["traceback"] = tb.clone().into();
        }
        let mut resp = (status, Json(body)).into_response();
        let h = resp.headers_mut();
        if let Some(id) = &self.invocation_id {
            if let Ok(v) = HeaderValue::from_str(id) {
                h.insert("x-thaw-invocation-id", v);
            }
        }
        if let Some(start) = self.start {
            h.insert("x-thaw-start", HeaderValue::from_static(start.as_str()));
        }
        if let Some(t) = self.start_time {
            h.insert("x-thaw-start-us", HeaderValue::from(t.as_micros() as u64));
        }
        if matches!(
            self.kind,
            ErrorKind::ConcurrencyLimit | ErrorKind::MemoryBudget
        ) {
            h.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if self.kind == ErrorKind::PayloadTooLarge {
            // The rest of the body stays unread: this connection cannot be reused.
            h.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if self.kind == ErrorKind::Unauthorized {
            h.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}

/// The router with every route.
pub fn app(state: AppState) -> Router {
    Router::new()
        .merge(crate::ui::protected())
        .route("/functions", post(deploy).get(list))
        .route("/functions/{id}", get(show).delete(remove))
        .route("/functions/{id}/invoke", post(invoke))
        .route("/functions/{id}/logs", get(logs))
        .route("/store", get(store_stats))
        .route("/metrics", get(metrics))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token))
        .merge(crate::ui::public())
        .route("/healthz", get(healthz))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            crate::guard::guard,
        ))
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::new(ErrorKind::NotFound, "no such route")
}

/// `ok`, and with a shared store this node's role and the store's state
/// (docs/cluster.md): a node whose store is down still serves, so the
/// status stays 200. The store's URL, its last error and the writer's URL
/// only to a caller with a token (or on a server without tokens): the
/// route itself is open.
async fn healthz(State(state): State<AppState>, headers: HeaderMap) -> String {
    let Some(c) = &state.service.config.cluster else {
        return "ok\n".to_string();
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let details = state.tokens.is_empty() || state.tokens.role_of(given.as_bytes()).is_some();
    format!("ok\n{}", c.health_text(details))
}

/// The cluster that forwards deploys and deletes to its writer, on a reader.
fn forwarder(state: &AppState) -> Option<std::sync::Arc<crate::cluster::Cluster>> {
    state
        .service
        .config
        .cluster
        .clone()
        .filter(|c| c.forwards())
}

/// Checks the caller's token (or session) against what the matched route
/// needs ([`crate::auth::required_role`]) and records the caller's role in
/// the request. Without tokens (loopback only) every caller is an admin.
async fn require_token(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    if state.tokens.is_empty() {
        req.extensions_mut().insert(Role::Admin);
        return next.run(req).await;
    }
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let role = state.tokens.role_of(given.as_bytes());
    // Browsers (the dashboard) present a session cookie instead.
    let role = role.or_else(|| crate::ui::session_role(&state, req.headers()));
    let Some(role) = role else {
        return ApiError::new(ErrorKind::Unauthorized, "a valid bearer token is required")
            .into_response();
    };
    // Every route behind this layer is matched (the fallback is outside it);
    // an unmatched one would need an admin.
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("", |m| m.as_str());
    let needed = crate::auth::required_role(req.method(), route, req.headers());
    if role < needed {
        return ApiError::new(
            ErrorKind::Forbidden,
            "this token may only invoke functions and read state",
        )
        .into_response();
    }
    req.extensions_mut().insert(role);
    next.run(req).await
}

/// The caller's role, as [`require_token`] recorded it.
#[derive(Debug, Clone, Copy)]
pub struct Caller(pub Role);

impl Caller {
    /// Whether the caller may see secrets (`env` values).
    pub fn is_admin(self) -> bool {
        self.0 == Role::Admin
    }
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Caller {
    type Rejection = Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _state: &S,
    ) -> Result<Self, Self::Rejection> {
        // Routes outside the token check see the least role.
        Ok(Caller(
            parts
                .extensions
                .get::<Role>()
                .copied()
                .unwrap_or(Role::Invoke),
        ))
    }
}

async fn read_body(body: Body, limit: usize) -> Result<Bytes, ApiError> {
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        let inner = e.into_inner();
        if inner
            .downcast_ref::<http_body_util::LengthLimitError>()
            .is_some()
        {
            ApiError::new(
                ErrorKind::PayloadTooLarge,
                format!("the request body is larger than the limit of {limit} bytes"),
            )
        } else {
            ApiError::new(
                ErrorKind::BadRequest,
                format!("reading the request body failed: {inner}"),
            )
        }
    })
}

async fn deploy(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    // Code archives are larger than events: allow 16x the event limit.
    let limit = state.service.config.max_body.saturating_mul(16);
    let bytes = read_body(body, limit).await?;
    if let Some(cluster) = forwarder(&state) {
        return cluster
            .forward(axum::http::Method::POST, "/functions", &headers, bytes)
            .await;
    }
    let req: DeployRequest = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::new(ErrorKind::InvalidSpec, format!("invalid JSON: {e}")))?;
    let spec = FunctionSpec::from_fields(req.spec)
        .map_err(|e| ApiError::new(ErrorKind::InvalidSpec, e.to_string()))?;
    let archive = match &req.archive {
        Some(b64) => Some(
            base64::engine::general_purpose::STANDARD
                .decode(b64.trim())
                .map_err(|e| {
                    ApiError::new(
                        ErrorKind::InvalidSpec,
                        format!("field `archive` is not base64: {e}"),
                    )
                })?,
        ),
        None => None,
    };
    if req.files.is_empty() && archive.is_none() {
        return Err(ApiError::new(
            ErrorKind::InvalidSpec,
            "field `files` or `archive` must hold the function's code",
        ));
    }
    let service = state.service.clone();
    let view =
        tokio::task::spawn_blocking(move || service.deploy(spec, &req.files, archive.as_deref()))
            .await
            .map_err(|e| ApiError::new(ErrorKind::Internal, e.to_string()))??;
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

async fn list(State(state): State<AppState>, caller: Caller) -> Response {
    let views: Vec<_> = state
        .service
        .list()
        .into_iter()
        .map(|v| crate::redact::view_for(v, caller))
        .collect();
    Json(serde_json::json!({ "functions": views })).into_response()
}

async fn show(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    state
        .service
        .view(&id)
        .map(|v| Json(crate::redact::view_for(v, caller)).into_response())
        .ok_or_else(|| ApiError::new(ErrorKind::NotFound, format!("no function named {id:?}")))
}

async fn remove(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if let Some(cluster) = forwarder(&state) {
        if !crate::spec::valid_name(&id) {
            return Err(ApiError::new(
                ErrorKind::NotFound,
                format!("no function named {id:?}"),
            ));
        }
        return cluster
            .forward(
                axum::http::Method::DELETE,
                &format!("/functions/{id}"),
                &headers,
                Bytes::new(),
            )
            .await;
    }
    state.service.delete(&id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Debug, Deserialize)]
struct InvokeQuery {
    version: Option<u64>,
}

/// `POST /functions/{id}/invoke`: every answer, the function's or an
/// error, is confined ([`crate::answer`]).
async fn invoke(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<InvokeQuery>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let mut resp = invoke_unconfined(state, id, q, headers, body)
        .await
        .unwrap_or_else(IntoResponse::into_response);
    crate::answer::confine(resp.headers_mut());
    resp
}

async fn invoke_unconfined(
    state: AppState,
    id: String,
    q: InvokeQuery,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let body = read_body(body, state.service.config.max_body).await?;
    let cold = headers
        .get("x-thaw-cold")
        .map(|v| v.to_str().unwrap_or("?").to_string());
    let passed: BTreeMap<String, String> = headers
        .iter()
        .filter(|(k, _)| {
            !matches!(
                k.as_str(),
                "authorization" | "cookie" | "x-thaw-cold" | "connection" | "content-length"
            )
        })
        .filter_map(|(k, v)| Some((k.as_str().to_string(), v.to_str().ok()?.to_string())))
        .collect();
    let answer = state
        .service
        .invoke(InvokeRequest {
            name: id,
            version: q.version,
            cold,
            headers: passed,
            body,
        })
        .await?;
    let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::OK);
    let mut resp = Response::new(Body::from(answer.body));
    *resp.status_mut() = status;
    *resp.headers_mut() = crate::answer::from_function(&answer.headers);
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&answer.id) {
        h.insert("x-thaw-invocation-id", v);
    }
    h.insert(
        "x-thaw-start",
        HeaderValue::from_static(answer.start.as_str()),
    );
    h.insert(
        "x-thaw-start-us",
        HeaderValue::from(answer.start_time.as_micros() as u64),
    );
    h.insert(
        "x-thaw-duration-us",
        HeaderValue::from(answer.duration.as_micros() as u64),
    );
    if let Some(phases) = &answer.restore {
        h.insert(
            "x-thaw-spare",
            HeaderValue::from_static(if phases.spare { "hit" } else { "miss" }),
        );
        if let Ok(v) = HeaderValue::from_str(&restore_phases_header(phases)) {
            h.insert("x-thaw-restore-us", v);
        }
        // A spare pre-mapped ahead of its claim: how long that took (off
        // the request's path).
        if let Some(premap) = phases.premap {
            h.insert(
                "x-thaw-premap-us",
                HeaderValue::from(premap.as_micros() as u64),
            );
        }
    }
    Ok(resp)
}

#[derive(Debug, Deserialize)]
struct LogsQuery {
    tail: Option<usize>,
    follow: Option<String>,
}

async fn logs(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<LogsQuery>,
) -> Result<Response, ApiError> {
    if state.service.view(&id).is_none() {
        return Err(ApiError::new(
            ErrorKind::NotFound,
            format!("no function named {id:?}"),
        ));
    }
    let n = q.tail.unwrap_or(100).min(100_000);
    let follow = matches!(q.follow.as_deref(), Some("1" | "true" | "yes"));
    if !follow {
        let lines = state.service.logs.tail(&id, n);
        return Ok(Json(serde_json::json!({ "lines": lines })).into_response());
    }
    let (tail, rx) = state.service.logs.follow(&id, n);
    let first = stream::iter(tail.into_iter().map(|l| Ok::<_, Infallible>(to_event(&l))));
    let live = BroadcastStream::new(rx)
        .filter_map(|item| async move { item.ok().map(|l| Ok::<_, Infallible>(to_event(&l))) });
    let events: std::pin::Pin<Box<dyn Stream<Item = Result<Event, Infallible>> + Send>> =
        Box::pin(first.chain(live));
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response())
}

fn to_event(line: &pool::logs::LogLine) -> Event {
    Event::default()
        .event("log")
        .data(serde_json::to_string(line).unwrap_or_default())
}

async fn metrics(State(state): State<AppState>) -> Response {
    state.service.refresh_gauges();
    if let Some(cluster) = &state.service.config.cluster {
        cluster.export();
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.service.metrics.encode(),
    )
        .into_response()
}

async fn store_stats(State(state): State<AppState>) -> Result<Response, ApiError> {
    let store = state.service.store.clone();
    let stats = tokio::task::spawn_blocking(move || crate::store_view::stats(&store))
        .await
        .map_err(|e| ApiError::new(ErrorKind::Internal, e.to_string()))?
        .map_err(|e| ApiError::new(ErrorKind::Internal, format!("{e:#}")))?;
    Ok(Json(stats).into_response())
}

/// `x-thaw-restore-us`: each phase of the restore in microseconds,
/// `claim=..,seize=..,mappings=..,state=..,resume=..,restored=..`.
fn restore_phases_header(phases: &pool::instance::RestorePhases) -> String {
    phases
        .named()
        .iter()
        .map(|(name, d)| format!("{name}={}", d.as_micros()))
        .collect::<Vec<_>>()
        .join(",")
}
