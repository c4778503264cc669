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
//! Sessions live in memory (a restart signs everyone out), in the router's
//! [`Sessions`], each with the role of the token it was made from.
//!
//! Limits: at most [`Sessions::per_role`] sessions per role (beyond it the
//! oldest session *of the same role* goes, so holders of invoke tokens can
//! never push out an admin's session), and `POST /session` is rate-limited
//! per client address ([`ATTEMPTS_PER_MINUTE`], then `429` with
//! `retry-after`).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use axum::Json;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use serde::Deserialize;

use crate::api::AppState;
use crate::auth::Role;
use crate::service::{ApiError, ErrorKind};

/// Name of the cookie.
pub const COOKIE: &str = "thaw_session";

/// How long a session lasts.
pub const LIFETIME: Duration = Duration::from_secs(12 * 3600);

/// Default of [`Sessions::per_role`].
pub const DEFAULT_PER_ROLE: usize = 10_000;

/// `POST /session` attempts allowed per client address and minute (all at
/// once, then one every `60 / N` seconds).
pub const ATTEMPTS_PER_MINUTE: u32 = 10;

#[derive(Debug, Clone)]
struct Session {
    role: Role,
    expires: Instant,
}

/// The sessions of one router.
pub struct Sessions {
    live: Mutex<HashMap<String, Session>>,
    per_role: usize,
    attempts: DefaultKeyedRateLimiter<IpAddr>,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the session ids.
        f.debug_struct("Sessions")
            .field("live", &self.live.lock().map(|m| m.len()).unwrap_or(0))
            .field("per_role", &self.per_role)
            .finish()
    }
}

impl Default for Sessions {
    fn default() -> Self {
        Sessions::new(DEFAULT_PER_ROLE)
    }
}

impl Sessions {
    /// No sessions; at most `per_role` at once per role (at least 1).
    pub fn new(per_role: usize) -> Sessions {
        let quota = Quota::per_minute(NonZeroU32::new(ATTEMPTS_PER_MINUTE).expect("not zero"));
        Sessions {
            live: Mutex::new(HashMap::new()),
            per_role: per_role.max(1),
            attempts: RateLimiter::keyed(quota),
        }
    }

    /// Most sessions kept at once per role.
    pub fn per_role(&self) -> usize {
        self.per_role
    }

    /// Counts an attempt from `client`: `Err(wait)` when it is over the rate.
    fn attempt(&self, client: IpAddr) -> Result<(), Duration> {
        self.attempts.retain_recent();
        self.attempts
            .check_key(&client)
            .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }

    /// Starts a session of `role`, evicting the oldest of the same role when
    /// the role is at its cap. Returns its id.
    fn start(&self, role: Role) -> String {
        let id = new_id();
        let mut live = self.live.lock().unwrap();
        let now = Instant::now();
        live.retain(|_, s| s.expires > now);
        let same_role = live.values().filter(|s| s.role == role).count();
        if same_role >= self.per_role {
            if let Some(oldest) = live
                .iter()
                .filter(|(_, s)| s.role == role)
                .min_by_key(|(_, s)| s.expires)
                .map(|(k, _)| k.clone())
            {
                live.remove(&oldest);
            }
        }
        live.insert(
            id.clone(),
            Session {
                role,
                expires: now + LIFETIME,
            },
        );
        id
    }

    /// The role of a live session.
    fn role(&self, id: &str) -> Option<Role> {
        let mut live = self.live.lock().unwrap();
        let s = live.get(id)?;
        if s.expires <= Instant::now() {
            live.remove(id);
            return None;
        }
        Some(s.role)
    }

    fn end(&self, id: &str) {
        self.live.lock().unwrap().remove(id);
    }
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

/// The role of the session named by the request's cookie, if it is live.
pub fn session_role(state: &AppState, headers: &HeaderMap) -> Option<Role> {
    state.sessions.role(cookie_value(headers)?)
}

/// Body of `POST /session`.
#[derive(Debug, Deserialize)]
pub struct SessionRequest {
    /// An API token.
    pub token: String,
}

/// `POST /session`: checks the token and sets the cookie.
pub async fn create(
    State(state): State<AppState>,
    client: Option<Extension<ConnectInfo<SocketAddr>>>,
    body: axum::body::Bytes,
) -> Response {
    let client = client.map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |c| c.0 .0.ip());
    if let Err(wait) = state.sessions.attempt(client) {
        let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        let mut resp = ApiError::new(
            ErrorKind::RateLimited,
            format!(
                "too many sign-in attempts from {client}: at most {ATTEMPTS_PER_MINUTE} a \
                 minute; retry in {secs} s"
            ),
        )
        .into_response();
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        return resp;
    }
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
    let id = state.sessions.start(role);
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
pub async fn remove(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if let Some(id) = cookie_value(&headers) {
        state.sessions.end(id);
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
    fn a_role_at_its_cap_evicts_only_its_own_sessions() {
        let s = Sessions::new(2);
        let admin = s.start(Role::Admin);
        let first = s.start(Role::Invoke);
        for _ in 0..10 {
            s.start(Role::Invoke);
        }
        assert_eq!(s.role(&admin), Some(Role::Admin));
        assert_eq!(s.role(&first), None);
        let live = s.live.lock().unwrap();
        assert_eq!(live.values().filter(|x| x.role == Role::Invoke).count(), 2);
    }

    #[test]
    fn attempts_are_limited_per_client() {
        let s = Sessions::new(2);
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        // Ten pass at once, then one every six seconds: only a run slower
        // than a minute could pass twice as many.
        let mut passed = 0;
        let wait = loop {
            match s.attempt(a) {
                Ok(()) => passed += 1,
                Err(wait) => break wait,
            }
            assert!(passed <= 2 * ATTEMPTS_PER_MINUTE, "not limited");
        };
        assert!(passed >= ATTEMPTS_PER_MINUTE, "{passed}");
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_secs(60),
            "{wait:?}"
        );
        assert!(s.attempt(b).is_ok());
    }

    #[test]
    fn ids_are_random_hex() {
        let (a, b) = (new_id(), new_id());
        assert_eq!(a.len(), 64);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }
}
