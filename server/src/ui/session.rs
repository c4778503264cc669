//! Browser sessions: a bearer token exchanged once for a cookie.
//!
//! Browsers cannot put an `authorization` header on `EventSource` or
//! WebSocket requests, so the page posts the token to `POST /session` and
//! gets back
//!
//! ```text
//! set-cookie: thaw_session=<64 hex digits>; HttpOnly; SameSite=Strict; Path=/; Max-Age=43200
//! ```
//!
//! Sessions live in memory (a restart signs everyone out). Each remembers
//! the role of the token it was made from and the token set it was checked
//! against, so a session of one router is never accepted by another router
//! of the same process with other tokens.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;

use crate::api::AppState;
use crate::auth::Role;
use crate::service::{ApiError, ErrorKind};

/// Name of the cookie.
pub const COOKIE: &str = "thaw_session";

/// How long a session lasts.
pub const LIFETIME: Duration = Duration::from_secs(12 * 3600);

/// Most sessions kept at once; the oldest go first beyond it.
const MAX_SESSIONS: usize = 10_000;

#[derive(Debug, Clone)]
struct Session {
    role: Role,
    /// Identity of the token set that accepted the token.
    tokens: usize,
    expires: Instant,
}

static SESSIONS: LazyLock<Mutex<HashMap<String, Session>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

fn tokens_id(state: &AppState) -> usize {
    Arc::as_ptr(&state.tokens) as usize
}

fn new_id() -> String {
    // `rand`'s thread generator is a CSPRNG seeded from the OS.
    let bytes: [u8; 32] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The value of our cookie in a request, if any.
fn cookie_value(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v)
}

/// The role of the session named by the request's cookie, if it is live and
/// was made against this router's tokens.
pub fn session_role(state: &AppState, headers: &HeaderMap) -> Option<Role> {
    let id = cookie_value(headers)?;
    let mut sessions = SESSIONS.lock().unwrap();
    let s = sessions.get(id)?;
    if s.expires <= Instant::now() {
        sessions.remove(id);
        return None;
    }
    (s.tokens == tokens_id(state)).then_some(s.role)
}

/// Body of `POST /session`.
#[derive(Debug, Deserialize)]
pub struct SessionRequest {
    /// An API token.
    pub token: String,
}

/// `POST /session`: checks the token and sets the cookie.
pub async fn create(State(state): State<AppState>, body: axum::body::Bytes) -> Response {
    if state.tokens.is_empty() {
        return Json(serde_json::json!({ "auth_required": false, "role": "admin" }))
            .into_response();
    }
    let req: SessionRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return ApiError::new(
                ErrorKind::BadRequest,
                format!("expected {{\"token\": \"...\"}}: {e}"),
            )
            .into_response()
        }
    };
    let Some(role) = state.tokens.role_of(req.token.trim().as_bytes()) else {
        return ApiError::new(ErrorKind::Unauthorized, "that token is not valid").into_response();
    };
    let id = new_id();
    {
        let mut sessions = SESSIONS.lock().unwrap();
        let now = Instant::now();
        sessions.retain(|_, s| s.expires > now);
        if sessions.len() >= MAX_SESSIONS {
            if let Some(oldest) = sessions
                .iter()
                .min_by_key(|(_, s)| s.expires)
                .map(|(k, _)| k.clone())
            {
                sessions.remove(&oldest);
            }
        }
        sessions.insert(
            id.clone(),
            Session {
                role,
                tokens: tokens_id(&state),
                expires: now + LIFETIME,
            },
        );
    }
    let cookie = format!(
        "{COOKIE}={id}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}",
        LIFETIME.as_secs()
    );
    let mut resp = Json(serde_json::json!({
        "auth_required": true,
        "role": role_name(role),
    }))
    .into_response();
    resp.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_str(&cookie).expect("hex id makes a valid header"),
    );
    resp
}

/// `GET /session`: whether a token is needed and whether this browser has a
/// session.
pub async fn status(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let required = !state.tokens.is_empty();
    let role = if required {
        session_role(&state, &headers)
    } else {
        Some(Role::Admin)
    };
    Json(serde_json::json!({
        "auth_required": required,
        "signed_in": role.is_some(),
        "role": role.map(role_name),
    }))
    .into_response()
}

/// `DELETE /session`: forgets the session and clears the cookie.
pub async fn remove(headers: HeaderMap) -> Response {
    if let Some(id) = cookie_value(&headers) {
        SESSIONS.lock().unwrap().remove(id);
    }
    let mut resp = StatusCode::NO_CONTENT.into_response();
    resp.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("thaw_session=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0"),
    );
    resp
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::Admin => "admin",
        Role::Invoke => "invoke",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_our_cookie_among_others() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; thaw_session=abc; b=2"),
        );
        assert_eq!(cookie_value(&h), Some("abc"));
        h.insert(header::COOKIE, HeaderValue::from_static("thaw_sessionx=1"));
        assert_eq!(cookie_value(&h), None);
    }

    #[test]
    fn ids_are_random_hex() {
        let (a, b) = (new_id(), new_id());
        assert_eq!(a.len(), 64);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }
}
