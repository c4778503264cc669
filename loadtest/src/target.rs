//! What to load: the invoke URL of one function, the bodies to send, and the
//! headers every request carries.
//!
//! Requests are `POST {server}/functions/{name}/invoke` with
//! `content-type: application/json`, the optional `authorization: Bearer
//! <token>` and the optional `x-thaw-cold: boot|restore` that forces a cold
//! start (the server must run with `--allow-forced-cold`). Request number `n`
//! carries body `n % bodies.len()`, so a file of bodies is cycled in order.
//!
//! # Body files
//!
//! ```text
//! [ {"n": 1}, {"n": 2}, "text" ]      whole file is one JSON array:
//!                                     each element, serialized compactly,
//!                                     is one body ("text" is sent with its
//!                                     quotes, as JSON)
//!
//! {"n": 1}                            anything else: one body per line,
//! {"n": 2}                            without its line ending; blank
//!                                     lines are skipped
//! ```
//!
//! A file that parses as a single JSON array is always read the first way,
//! even if it is one line long.

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, HOST};
use hyper::{Method, Request, Uri};

/// Request header that forces a cold start on a server started with
/// `--allow-forced-cold`.
pub const COLD_HEADER: &str = "x-thaw-cold";

/// A forced cold start, sent as the `x-thaw-cold` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ColdStart {
    /// Boot a fresh instance of the function (no snapshot).
    Boot,
    /// Restore a fresh copy from the function's snapshot.
    Restore,
}

impl ColdStart {
    /// The header value: `boot` or `restore`.
    pub fn as_str(self) -> &'static str {
        match self {
            ColdStart::Boot => "boot",
            ColdStart::Restore => "restore",
        }
    }
}

impl FromStr for ColdStart {
    type Err = TargetError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "boot" => Ok(ColdStart::Boot),
            "restore" => Ok(ColdStart::Restore),
            other => Err(TargetError::Cold(other.to_owned())),
        }
    }
}

/// Why a [`Target`] or its bodies could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    /// The server address is not an `http://host[:port][/prefix]` URL.
    #[error("bad server address {0:?}: expected http://host[:port][/prefix]")]
    Server(String),
    /// The function name has characters that cannot go in a URL path as is.
    #[error("bad function name {0:?}: use letters, digits, '.', '_', '-' or '~'")]
    Function(String),
    /// `--cold` got something other than `boot` or `restore`.
    #[error("bad cold start {0:?}: expected boot or restore")]
    Cold(String),
    /// The token cannot be sent as a header value.
    #[error("bad token: it must be visible ASCII")]
    Token,
    /// There must be at least one body to send.
    #[error("no bodies to send")]
    NoBodies,
    /// The body file could not be read.
    #[error("cannot read body file {path}: {cause}")]
    BodyFile {
        /// The file named on the command line.
        path: String,
        /// What the OS said.
        cause: std::io::Error,
    },
}

/// One function on one server, with the bodies and headers to send.
///
/// Cheap to clone: the bodies are shared.
#[derive(Debug, Clone)]
pub struct Target {
    uri: Uri,
    path: Uri,
    host: HeaderValue,
    addr: String,
    function: String,
    bodies: Arc<[Bytes]>,
    cold: Option<ColdStart>,
    token: Option<HeaderValue>,
}

impl Target {
    /// The invoke URL of `function` on `server` (for example
    /// `http://127.0.0.1:7070`), sending the empty JSON object `{}`.
    pub fn new(server: &str, function: &str) -> Result<Self, TargetError> {
        let valid_name = !function.is_empty()
            && function
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-~".contains(&b));
        if !valid_name {
            return Err(TargetError::Function(function.to_owned()));
        }
        let base = server.trim_end_matches('/');
        let bad = || TargetError::Server(server.to_owned());
        let parsed: Uri = base.parse().map_err(|_| bad())?;
        if parsed.scheme_str() != Some("http")
            || parsed.host().is_none()
            || parsed.query().is_some()
        {
            return Err(bad());
        }
        let uri: Uri = format!("{base}/functions/{function}/invoke")
            .parse()
            .map_err(|_| bad())?;
        let path: Uri = uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/")
            .parse()
            .map_err(|_| bad())?;
        let authority = parsed.authority().ok_or_else(bad)?;
        let host = HeaderValue::from_str(authority.as_str()).map_err(|_| bad())?;
        let addr = format!(
            "{}:{}",
            authority.host(),
            authority.port_u16().unwrap_or(80)
        );
        Ok(Target {
            uri,
            path,
            host,
            addr,
            function: function.to_owned(),
            bodies: Arc::from(vec![Bytes::from_static(b"{}")]),
            cold: None,
            token: None,
        })
    }

    /// Replaces the bodies; request `n` carries body `n % bodies.len()`.
    pub fn with_bodies(mut self, bodies: Vec<Bytes>) -> Result<Self, TargetError> {
        if bodies.is_empty() {
            return Err(TargetError::NoBodies);
        }
        self.bodies = Arc::from(bodies);
        Ok(self)
    }

    /// Forces a cold start on every request (or none).
    pub fn with_cold(mut self, cold: Option<ColdStart>) -> Self {
        self.cold = cold;
        self
    }

    /// Sends `authorization: Bearer <token>` on every request (or not).
    pub fn with_token(mut self, token: Option<&str>) -> Result<Self, TargetError> {
        self.token = match token {
            None => None,
            Some(t) => Some(
                HeaderValue::from_str(&format!("Bearer {t}")).map_err(|_| TargetError::Token)?,
            ),
        };
        Ok(self)
    }

    /// The full invoke URL.
    pub fn uri(&self) -> &Uri {
        &self.uri
    }

    /// The `host:port` to connect to.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The function's name.
    pub fn function(&self) -> &str {
        &self.function
    }

    /// The forced cold start, if any.
    pub fn cold(&self) -> Option<ColdStart> {
        self.cold
    }

    /// How many distinct bodies are cycled.
    pub fn body_count(&self) -> usize {
        self.bodies.len()
    }

    /// Builds request number `seq`, in origin form (path only, with a `host`
    /// header), as sent on a connection to [`Target::addr`].
    pub fn request(&self, seq: u64) -> Request<Full<Bytes>> {
        let body = self.bodies[(seq % self.bodies.len() as u64) as usize].clone();
        let mut req = Request::new(Full::new(body));
        *req.method_mut() = Method::POST;
        *req.uri_mut() = self.path.clone();
        let headers = req.headers_mut();
        headers.insert(HOST, self.host.clone());
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let Some(token) = &self.token {
            headers.insert(AUTHORIZATION, token.clone());
        }
        if let Some(cold) = self.cold {
            headers.insert(COLD_HEADER, HeaderValue::from_static(cold.as_str()));
        }
        req
    }
}

/// Reads a body file (see the module docs for its two layouts).
pub fn bodies_from_file(path: &Path) -> Result<Vec<Bytes>, TargetError> {
    let text = std::fs::read(path).map_err(|cause| TargetError::BodyFile {
        path: path.display().to_string(),
        cause,
    })?;
    let bodies = parse_bodies(&text);
    if bodies.is_empty() {
        return Err(TargetError::NoBodies);
    }
    Ok(bodies)
}

/// Splits the contents of a body file into bodies (see the module docs).
pub fn parse_bodies(text: &[u8]) -> Vec<Bytes> {
    if let Ok(serde_json::Value::Array(items)) = serde_json::from_slice(text) {
        return items
            .iter()
            .map(|item| Bytes::from(item.to_string()))
            .collect();
    }
    text.split(|&b| b == b'\n')
        .map(|line| line.strip_suffix(b"\r").unwrap_or(line))
        .filter(|line| !line.iter().all(u8::is_ascii_whitespace))
        .map(Bytes::copy_from_slice)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_invoke_url_and_headers() {
        let t = Target::new("http://127.0.0.1:7070/", "hello")
            .unwrap()
            .with_cold(Some(ColdStart::Restore))
            .with_token(Some("s3cret"))
            .unwrap();
        assert_eq!(
            t.uri().to_string(),
            "http://127.0.0.1:7070/functions/hello/invoke"
        );
        assert_eq!(t.addr(), "127.0.0.1:7070");
        let req = t.request(0);
        assert_eq!(req.method(), Method::POST);
        assert_eq!(req.uri(), "/functions/hello/invoke");
        assert_eq!(req.headers()[HOST], "127.0.0.1:7070");
        assert_eq!(req.headers()[COLD_HEADER], "restore");
        assert_eq!(req.headers()[AUTHORIZATION], "Bearer s3cret");
        assert_eq!(req.headers()[CONTENT_TYPE], "application/json");
    }

    #[test]
    fn default_port_and_path_prefix() {
        let t = Target::new("http://thaw.local/api", "f").unwrap();
        assert_eq!(t.addr(), "thaw.local:80");
        assert_eq!(t.request(0).uri(), "/api/functions/f/invoke");
        assert_eq!(t.request(0).headers()[HOST], "thaw.local");
    }

    #[test]
    fn rejects_bad_addresses_and_names() {
        assert!(matches!(
            Target::new("https://x:1", "f"),
            Err(TargetError::Server(_))
        ));
        assert!(matches!(
            Target::new("127.0.0.1:7070", "f"),
            Err(TargetError::Server(_))
        ));
        assert!(matches!(
            Target::new("http://h:1", "a/b"),
            Err(TargetError::Function(_))
        ));
        assert!(matches!(
            Target::new("http://h:1", ""),
            Err(TargetError::Function(_))
        ));
        assert_eq!(
            "warm".parse::<ColdStart>().unwrap_err().to_string(),
            "bad cold start \"warm\": expected boot or restore"
        );
    }

    #[test]
    fn bodies_as_json_array_or_lines() {
        let arr = parse_bodies(b" [ {\"n\": 1}, \"x\", 3 ]\n");
        assert_eq!(arr, vec![&b"{\"n\":1}"[..], b"\"x\"", b"3"]);
        let lines = parse_bodies(b"{\"n\": 1}\r\n\n  \n[1,2]\nplain text\n");
        assert_eq!(lines, vec![&b"{\"n\": 1}"[..], b"[1,2]", b"plain text"]);
    }

    #[test]
    fn bodies_cycle_in_order() {
        let t = Target::new("http://h:1", "f")
            .unwrap()
            .with_bodies(vec![Bytes::from_static(b"a"), Bytes::from_static(b"b")])
            .unwrap();
        let seen: Vec<Bytes> = (0..3)
            .map(|i| t.request(i).into_body())
            .map(body_bytes)
            .collect();
        assert_eq!(seen, vec!["a", "b", "a"]);
    }

    fn body_bytes(b: Full<Bytes>) -> Bytes {
        use http_body_util::BodyExt;
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(b.collect()).unwrap().to_bytes()
    }

    #[test]
    fn body_file_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.jsonl");
        let err = bodies_from_file(&missing).unwrap_err().to_string();
        assert!(err.starts_with(&format!("cannot read body file {}", missing.display())));
        let empty = dir.path().join("empty");
        std::fs::write(&empty, "\n\n").unwrap();
        assert!(matches!(
            bodies_from_file(&empty),
            Err(TargetError::NoBodies)
        ));
    }
}
