//! The dashboard's routes: the embedded page and its assets (public), the
//! session that stands in for a bearer token in a browser, the live stream
//! the pages draw from, and store maintenance.
//!
//! ```text
//! GET    /, /ui, /ui/          index.html                    public
//! GET    /ui/{path}            an embedded asset             public
//! GET    /session              {auth_required, signed_in, role}  public
//! POST   /session              {"token": "..."} -> cookie    public
//! DELETE /session              forget the session            public
//! GET    /events[?function=N]  SSE: `overview` every second,
//!                              `function` (N's record) when it changes
//! GET    /store/snapshots      unique and shared pages of each snapshot
//! POST   /store/verify         rehash every object (admin)
//! POST   /store/gc             collect garbage (admin)
//! ```
//!
//! The last four sit behind the API's token check, which also accepts the
//! session cookie (see [`session`]).

pub mod live;
pub mod prom;
pub mod session;
pub mod store_pages;

use axum::body::Body;
use axum::extract::Path;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};

use crate::api::AppState;
use crate::service::{ApiError, ErrorKind};

pub use session::session_role;

/// Policy of the page: everything from this server, nothing inline but
/// styles (uPlot positions its parts with style attributes).
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
img-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'none'; \
frame-ancestors 'none'; form-action 'none'";

/// Routes anyone may call: the page, its assets and the session exchange.
pub fn public() -> Router<AppState> {
    Router::new()
        .route("/", get(index))
        .route("/ui", get(index))
        .route("/ui/", get(index))
        .route("/ui/{*path}", get(asset))
        .route(
            "/session",
            get(session::status)
                .post(session::create)
                .delete(session::remove),
        )
}

/// Routes behind the token check: the live stream and store maintenance.
pub fn protected() -> Router<AppState> {
    Router::new()
        .route("/events", get(live::events))
        .route("/store/snapshots", get(store_pages::snapshots))
        .route("/store/verify", post(store_pages::verify))
        .route("/store/gc", post(store_pages::gc))
}

async fn index() -> Response {
    serve("index.html")
}

async fn asset(Path(path): Path<String>) -> Response {
    serve(&path)
}

fn serve(path: &str) -> Response {
    let Some((content_type, bytes)) = web::asset(path) else {
        return ApiError::new(ErrorKind::NotFound, format!("no asset {path:?}")).into_response();
    };
    let mut resp = Response::new(Body::from(bytes));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    // Assets change with the binary: revalidate, never serve stale code.
    h.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-cache"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        header::HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        header::HeaderValue::from_static(CSP),
    );
    h.insert(
        header::REFERRER_POLICY,
        header::HeaderValue::from_static("no-referrer"),
    );
    resp
}

/// A JSON error for failures of blocking work.
pub(crate) fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError::new(ErrorKind::Internal, e.to_string())
}

/// `200 {..}`.
pub(crate) fn ok_json(v: serde_json::Value) -> Response {
    (StatusCode::OK, Json(v)).into_response()
}
