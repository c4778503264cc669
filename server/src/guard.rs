//! Requests a browser was tricked into sending: cross-site requests and DNS
//! rebinding.
//!
//! A web page the user opens can make the browser send requests to thaw
//! (`fetch` with `mode: "no-cors"`, a form, an image), and a host name the
//! attacker controls can be made to resolve to 127.0.0.1 (DNS rebinding), so
//! that the attacker's page reads thaw's answers as its own. [`guard`] runs
//! before routing and refuses, with `403 forbidden`:
//!
//! ```text
//! every route but /healthz, when the server has no tokens:
//!     a Host that is not a loopback name (localhost, *.localhost,
//!     127.0.0.0/8, [::1]), or no Host at all          DNS rebinding
//! every method but GET, HEAD and OPTIONS:
//!     Sec-Fetch-Site other than same-origin or none
//!     Origin other than http(s)://<Host>  ("null" too)  cross-site
//! ```
//!
//! Requests without `Origin` and `Sec-Fetch-Site` (curl, scripts, the `thaw`
//! command) pass: only browsers send them, and browsers always do on the
//! requests that matter. Any content type is accepted, so `curl -d` keeps
//! working: the check is on where a request comes from, not on its body.

use std::net::IpAddr;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::api::AppState;
use crate::service::{ApiError, ErrorKind};

/// Why a request was refused, if it was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Token-less mode and a Host that is not a loopback name.
    Host(Option<String>),
    /// `Sec-Fetch-Site` says another site sent it.
    FetchSite(String),
    /// `Origin` names another origin.
    Origin(String),
}

impl Refusal {
    /// The sentence the client gets.
    pub fn message(&self) -> String {
        match self {
            Refusal::Host(Some(host)) => format!(
                "this server runs without API tokens and answers only to loopback host names \
                 (localhost, 127.0.0.1, [::1]), not Host: {host:?} (DNS rebinding protection; \
                 set a token to serve other names)"
            ),
            Refusal::Host(None) => "this server runs without API tokens and answers only \
                 requests with a loopback Host header"
                .to_string(),
            Refusal::FetchSite(site) => format!(
                "cross-site request refused (Sec-Fetch-Site: {site}): only pages of this \
                 server may change it"
            ),
            Refusal::Origin(origin) => {
                format!("cross-site request refused: Origin {origin:?} is not this server's origin")
            }
        }
    }
}

/// Whether `host` (a Host header: name or address, optional port) names
/// this machine's loopback.
pub fn is_loopback_host(host: &str) -> bool {
    let host = host.trim();
    let name = if let Some(rest) = host.strip_prefix('[') {
        // [::1] or [::1]:7070
        match rest.split_once(']') {
            Some((addr, tail)) if tail.is_empty() || tail.starts_with(':') => addr,
            _ => return false,
        }
    } else {
        match host.rsplit_once(':') {
            Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
            Some(_) => return false,
            None => host,
        }
    };
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    if name == "localhost" || name.ends_with(".localhost") {
        return true;
    }
    name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).map(|v| v.to_str().unwrap_or("\u{fffd}"))
}

/// The check itself, apart from HTTP plumbing: `host` is the request's Host
/// (or its URI's authority), `open` whether the server runs without tokens.
pub fn check(
    method: &Method,
    path: &str,
    host: Option<&str>,
    headers: &HeaderMap,
    open: bool,
) -> Result<(), Refusal> {
    if path == "/healthz" {
        return Ok(());
    }
    if open && !host.is_some_and(is_loopback_host) {
        return Err(Refusal::Host(host.map(str::to_string)));
    }
    if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
        return Ok(());
    }
    if let Some(site) = header(headers, "sec-fetch-site") {
        if !matches!(site, "same-origin" | "none") {
            return Err(Refusal::FetchSite(site.to_string()));
        }
    }
    if let Some(origin) = header(headers, header::ORIGIN.as_str()) {
        let ours = host.is_some_and(|h| {
            let h = h.to_ascii_lowercase();
            let o = origin.to_ascii_lowercase();
            o == format!("http://{h}") || o == format!("https://{h}")
        });
        if !ours {
            return Err(Refusal::Origin(origin.to_string()));
        }
    }
    Ok(())
}

/// Middleware over every route: see the module doc.
pub async fn guard(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let host = header(req.headers(), header::HOST.as_str())
        .map(str::to_string)
        .or_else(|| req.uri().authority().map(|a| a.as_str().to_string()));
    if let Err(refusal) = check(
        req.method(),
        req.uri().path(),
        host.as_deref(),
        req.headers(),
        state.tokens.is_empty(),
    ) {
        tracing::warn!(
            method = %req.method(),
            path = %req.uri().path(),
            reason = ?refusal,
            "request refused"
        );
        return ApiError::new(ErrorKind::Forbidden, refusal.message()).into_response();
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_names() {
        for ok in [
            "localhost",
            "localhost:7070",
            "LOCALHOST.",
            "dash.localhost:80",
            "127.0.0.1",
            "127.0.0.1:7070",
            "127.1.2.3:1",
            "[::1]",
            "[::1]:7070",
        ] {
            assert!(is_loopback_host(ok), "{ok}");
        }
        for bad in [
            "attacker.example",
            "attacker.example:7070",
            "localhost.attacker.example",
            "127.0.0.1.nip.io",
            "10.0.0.1:7070",
            "[::2]:7070",
            "[::1]x",
            "localhost:70x",
            "",
        ] {
            assert!(!is_loopback_host(bad), "{bad}");
        }
    }

    fn with(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn cross_site_changes_are_refused() {
        let host = Some("127.0.0.1:7070");
        let post = |h: &HeaderMap| check(&Method::POST, "/functions", host, h, true);
        assert_eq!(post(&with(&[])), Ok(()));
        assert_eq!(post(&with(&[("origin", "http://127.0.0.1:7070")])), Ok(()));
        assert_eq!(post(&with(&[("sec-fetch-site", "same-origin")])), Ok(()));
        assert!(matches!(
            post(&with(&[("origin", "https://evil.example")])),
            Err(Refusal::Origin(_))
        ));
        assert!(matches!(
            post(&with(&[("origin", "null")])),
            Err(Refusal::Origin(_))
        ));
        assert!(matches!(
            post(&with(&[("origin", "http://localhost:7070")])),
            Err(Refusal::Origin(_))
        ));
        assert!(matches!(
            post(&with(&[("sec-fetch-site", "cross-site")])),
            Err(Refusal::FetchSite(_))
        ));
        assert!(matches!(
            post(&with(&[("sec-fetch-site", "same-site")])),
            Err(Refusal::FetchSite(_))
        ));
        // Reads are left to the same-origin policy.
        let get = check(
            &Method::GET,
            "/functions",
            host,
            &with(&[("sec-fetch-site", "cross-site")]),
            true,
        );
        assert_eq!(get, Ok(()));
    }

    #[test]
    fn foreign_hosts_need_tokens() {
        let h = HeaderMap::new();
        let evil = Some("rebound.example:7070");
        assert!(matches!(
            check(&Method::GET, "/functions", evil, &h, true),
            Err(Refusal::Host(_))
        ));
        assert!(matches!(
            check(&Method::GET, "/functions", None, &h, true),
            Err(Refusal::Host(None))
        ));
        assert_eq!(check(&Method::GET, "/healthz", evil, &h, true), Ok(()));
        // With tokens, any name may reach the server (the token decides).
        assert_eq!(check(&Method::GET, "/functions", evil, &h, false), Ok(()));
    }
}
