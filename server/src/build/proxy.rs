//! The build sandbox's only way out: an HTTP proxy that reaches the
//! configured package indexes and nothing else.
//!
//! ```text
//! build sandbox netns                      host netns
//! pip / npm ──> 127.0.0.1:3128 ══ listener made in the sandbox's netns,
//!                                 served by this task ──> index host:port
//! ```
//!
//! Two request forms are served, one per connection:
//! * `CONNECT host:port` (HTTPS): answered `200` and relayed both ways when
//!   `host:port` is allowed;
//! * `GET http://host:port/path` (plain HTTP indexes): sent on to the host in
//!   origin form with `Connection: close`, and the answer relayed back.
//!
//! Anything else, or a host not in the allow-list, is answered `403` with a
//! sentence the installer prints. Names are resolved here, on the host: the
//! sandbox needs no DNS.

use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Longest request head read before refusing it.
const MAX_HEAD: usize = 16 * 1024;

/// A `host:port` the proxy may reach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allowed {
    /// Host name or address, lower case, IPv6 without brackets.
    pub host: String,
    /// Port.
    pub port: u16,
}

impl std::fmt::Display for Allowed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// Parses `host`, `host:port`, `[v6]:port` (default port `default`).
pub fn parse_authority(text: &str, default: u16) -> Option<Allowed> {
    let text = text.trim();
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let (h, after) = rest.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().ok()?,
            None if after.is_empty() => default,
            None => return None,
        };
        (h, port)
    } else {
        match text.rsplit_once(':') {
            Some((h, p)) => (h, p.parse().ok()?),
            None => (text, default),
        }
    };
    if host.is_empty() || host.contains(['/', ' ', '@']) {
        return None;
    }
    Some(Allowed {
        host: host.to_ascii_lowercase(),
        port,
    })
}

/// The `host:port` of an `http://` or `https://` URL.
pub fn authority_of_url(url: &str) -> Option<Allowed> {
    let (scheme, rest) = url.split_once("://")?;
    let default = match scheme.to_ascii_lowercase().as_str() {
        "http" => 80,
        "https" => 443,
        _ => return None,
    };
    let auth = rest.split(['/', '?', '#']).next()?;
    // user:password@host: the credentials are the installer's business.
    let auth = auth.rsplit_once('@').map_or(auth, |(_, h)| h);
    parse_authority(auth, default)
}

/// Serves `listener` until the task is aborted.
pub async fn serve(listener: TcpListener, allowed: Arc<Vec<Allowed>>) {
    loop {
        let Ok((conn, _)) = listener.accept().await else {
            continue;
        };
        let allowed = allowed.clone();
        tokio::spawn(async move {
            if let Err(e) = relay(conn, &allowed).await {
                tracing::debug!(error = %e, "build proxy connection ended");
            }
        });
    }
}

async fn refuse(mut conn: TcpStream, status: &str, why: &str) -> std::io::Result<()> {
    let body = format!("thaw build proxy: {why}\n");
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    conn.write_all(head.as_bytes()).await?;
    conn.write_all(body.as_bytes()).await?;
    conn.shutdown().await
}

/// Reads a request head (up to the blank line); returns it and what came
/// after it.
async fn read_head(conn: &mut TcpStream) -> std::io::Result<Option<(String, Vec<u8>)>> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buf.split_off(end + 4);
            return Ok(Some((String::from_utf8_lossy(&buf).into_owned(), rest)));
        }
        if buf.len() > MAX_HEAD {
            return Ok(None);
        }
        let n = conn.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

async fn relay(mut conn: TcpStream, allowed: &[Allowed]) -> std::io::Result<()> {
    let Some((head, rest)) = read_head(&mut conn).await? else {
        return refuse(conn, "400 Bad Request", "no request head").await;
    };
    let mut lines = head.split("\r\n");
    let request = lines.next().unwrap_or_default();
    let mut parts = request.split(' ');
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return refuse(conn, "400 Bad Request", "malformed request line").await;
    };
    if method.eq_ignore_ascii_case("CONNECT") {
        let Some(to) = parse_authority(target, 443) else {
            return refuse(conn, "400 Bad Request", "malformed CONNECT target").await;
        };
        if !allowed.contains(&to) {
            let why = format!("{to} is not a configured package index");
            return refuse(conn, "403 Forbidden", &why).await;
        }
        let mut upstream = match TcpStream::connect((to.host.as_str(), to.port)).await {
            Ok(s) => s,
            Err(e) => {
                let why = format!("cannot reach {to}: {e}");
                return refuse(conn, "502 Bad Gateway", &why).await;
            }
        };
        conn.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
            .await?;
        upstream.write_all(&rest).await?;
        tokio::io::copy_bidirectional(&mut conn, &mut upstream).await?;
        return Ok(());
    }
    let Some(after) = target
        .get(..7)
        .filter(|s| s.eq_ignore_ascii_case("http://"))
        .map(|_| &target[7..])
    else {
        return refuse(
            conn,
            "400 Bad Request",
            "only CONNECT and absolute http:// requests are proxied",
        )
        .await;
    };
    let (auth, path) = match after.find('/') {
        Some(i) => (&after[..i], &after[i..]),
        None => (after, "/"),
    };
    let Some(to) = parse_authority(auth, 80) else {
        return refuse(conn, "400 Bad Request", "malformed URL").await;
    };
    if !allowed.contains(&to) {
        let why = format!("{to} is not a configured package index");
        return refuse(conn, "403 Forbidden", &why).await;
    }
    let mut upstream = match TcpStream::connect((to.host.as_str(), to.port)).await {
        Ok(s) => s,
        Err(e) => {
            let why = format!("cannot reach {to}: {e}");
            return refuse(conn, "502 Bad Gateway", &why).await;
        }
    };
    let mut out = format!("{method} {path} {version}\r\n");
    for line in lines.filter(|l| !l.is_empty()) {
        let name = line.split(':').next().unwrap_or_default().trim();
        let hop = [
            "connection",
            "proxy-connection",
            "keep-alive",
            "proxy-authorization",
        ];
        if hop.iter().any(|h| name.eq_ignore_ascii_case(h)) {
            continue;
        }
        out.push_str(line);
        out.push_str("\r\n");
    }
    out.push_str("Connection: close\r\n\r\n");
    upstream.write_all(out.as_bytes()).await?;
    upstream.write_all(&rest).await?;
    tokio::io::copy_bidirectional(&mut conn, &mut upstream).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authorities_parse() {
        let a = |h: &str, p| Allowed {
            host: h.into(),
            port: p,
        };
        assert_eq!(
            authority_of_url("https://pypi.org/simple"),
            Some(a("pypi.org", 443))
        );
        assert_eq!(
            authority_of_url("http://127.0.0.1:8080/simple/"),
            Some(a("127.0.0.1", 8080))
        );
        assert_eq!(
            authority_of_url("https://u:p@Registry.NPMjs.org/"),
            Some(a("registry.npmjs.org", 443))
        );
        assert_eq!(authority_of_url("http://[::1]:81/x"), Some(a("::1", 81)));
        assert_eq!(authority_of_url("ftp://x/"), None);
        assert_eq!(
            parse_authority("files.pythonhosted.org:443", 80),
            Some(a("files.pythonhosted.org", 443))
        );
        assert_eq!(parse_authority("x:notaport", 80), None);
        assert_eq!(a("::1", 81).to_string(), "[::1]:81");
    }

    #[tokio::test]
    async fn refuses_hosts_that_are_not_indexes_and_relays_those_that_are() {
        // An "index" on loopback answering one request.
        let index = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let index_port = index.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (mut c, _) = index.accept().await.unwrap();
            let mut buf = vec![0u8; 4096];
            let n = c.read(&mut buf).await.unwrap();
            let req = String::from_utf8_lossy(&buf[..n]).into_owned();
            let body = if req.starts_with("GET /simple/ HTTP/1.1\r\n")
                && req.contains("Connection: close")
            {
                "origin-form"
            } else {
                "wrong"
            };
            let answer = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            c.write_all(answer.as_bytes()).await.unwrap();
        });
        let proxy = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy_addr = proxy.local_addr().unwrap();
        let allowed = Arc::new(vec![Allowed {
            host: "127.0.0.1".into(),
            port: index_port,
        }]);
        let task = tokio::spawn(serve(proxy, allowed));
        let ask = |req: String| async move {
            let mut c = TcpStream::connect(proxy_addr).await.unwrap();
            c.write_all(req.as_bytes()).await.unwrap();
            let mut out = String::new();
            c.read_to_string(&mut out).await.unwrap();
            out
        };
        let ok = ask(format!(
            "GET http://127.0.0.1:{index_port}/simple/ HTTP/1.1\r\nHost: 127.0.0.1\r\nProxy-Connection: keep-alive\r\n\r\n"
        ))
        .await;
        assert!(ok.ends_with("origin-form"), "{ok}");
        let other = index_port.wrapping_add(1);
        let no = ask(format!("CONNECT 127.0.0.1:{other} HTTP/1.1\r\n\r\n")).await;
        assert!(no.starts_with("HTTP/1.1 403"), "{no}");
        assert!(no.contains("is not a configured package index"), "{no}");
        let no = ask("GET http://example.com/ HTTP/1.1\r\n\r\n".into()).await;
        assert!(no.starts_with("HTTP/1.1 403"), "{no}");
        task.abort();
    }
}
