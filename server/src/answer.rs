//! The headers of a function's answer, as thaw serves them.
//!
//! A function's answer is served on the origin of the dashboard, whose
//! session cookie it must not reach, and beside headers thaw itself sets.
//! So every answer of `POST /functions/{id}/invoke` (errors too) carries
//!
//! ```text
//! content-security-policy: sandbox     its pages run as an opaque origin:
//!                                      no cookies, no same-origin requests
//! x-content-type-options: nosniff      served as the type it says it is
//! ```
//!
//! and these headers set by the function are dropped:
//!
//! ```text
//! set-cookie, set-cookie2, clear-site-data    state of the dashboard's origin
//! connection, keep-alive, proxy-connection,   hop-by-hop (RFC 9110 7.6.1);
//! te, trailer, transfer-encoding, upgrade,    framing is the server's
//! proxy-authenticate, proxy-authorization,
//! content-length
//! alt-svc                                     where browsers reconnect
//! x-thaw-*                                    thaw's own (x-thaw-start,
//!                                             x-thaw-spare, ...) are facts
//!                                             a function must not forge
//! ```
//!
//! A `content-security-policy` of the function's own is kept beside thaw's:
//! browsers enforce every policy an answer carries.

use std::collections::BTreeMap;

use axum::http::{header, HeaderMap, HeaderName, HeaderValue};

/// Headers a function may not set (lower case).
const DROPPED: [&str; 14] = [
    "set-cookie",
    "set-cookie2",
    "clear-site-data",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authenticate",
    "proxy-authorization",
    "content-length",
    "alt-svc",
];

/// Whether a header a function set may reach the client.
pub fn allowed(name: &HeaderName) -> bool {
    let name = name.as_str();
    !name.starts_with("x-thaw-") && !DROPPED.contains(&name)
}

/// The function's headers that may reach the client.
pub fn from_function(headers: &BTreeMap<String, String>) -> HeaderMap {
    let mut out = HeaderMap::new();
    for (k, v) in headers {
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_str(v),
        ) else {
            continue;
        };
        if allowed(&name) {
            out.append(name, value);
        }
    }
    out
}

/// Adds the headers every function answer carries.
pub fn confine(headers: &mut HeaderMap) {
    headers.append(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("sandbox"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forged_and_hop_by_hop_headers_are_dropped() {
        let set: BTreeMap<String, String> = [
            ("Set-Cookie", "thaw_session=stolen"),
            ("X-Thaw-Start", "restore"),
            ("x-thaw-spare", "hit"),
            ("transfer-encoding", "chunked"),
            ("connection", "close"),
            ("content-length", "1"),
            ("content-type", "text/html"),
            ("x-custom", "yes"),
            ("bad header", "x"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let mut h = from_function(&set);
        confine(&mut h);
        let names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(
            names,
            [
                "content-type",
                "x-custom",
                "content-security-policy",
                "x-content-type-options"
            ]
        );
        assert_eq!(h["content-security-policy"], "sandbox");
        assert_eq!(h["x-content-type-options"], "nosniff");
    }

    #[test]
    fn a_function_policy_is_kept_beside_the_sandbox() {
        let set = BTreeMap::from([(
            "content-security-policy".to_string(),
            "default-src 'self'".to_string(),
        )]);
        let mut h = from_function(&set);
        confine(&mut h);
        let csp: Vec<_> = h.get_all("content-security-policy").iter().collect();
        assert_eq!(csp, ["default-src 'self'", "sandbox"]);
    }
}
