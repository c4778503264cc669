//! The `thaw` commands that talk to a server over HTTP.

use std::io::Write;
use std::path::Path;

use anyhow::{bail, Context, Result};
use base64::Engine;
use futures_util::StreamExt;

/// An HTTP client of one server.
#[derive(Debug, Clone)]
pub struct Client {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl Client {
    /// A client of `base` (e.g. `http://127.0.0.1:7070`).
    pub fn new(base: &str, token: Option<String>) -> Client {
        Client {
            base: base.trim_end_matches('/').to_string(),
            token,
            http: reqwest::Client::new(),
        }
    }

    fn req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let mut r = self.http.request(method, format!("{}{}", self.base, path));
        if let Some(t) = &self.token {
            r = r.bearer_auth(t);
        }
        r
    }

    async fn send(&self, r: reqwest::RequestBuilder) -> Result<reqwest::Response> {
        let resp = r
            .send()
            .await
            .with_context(|| format!("cannot reach the thaw server at {}", self.base))?;
        Ok(resp)
    }

    async fn json_or_error(&self, resp: reqwest::Response) -> Result<serde_json::Value> {
        let status = resp.status();
        let bytes = resp.bytes().await?;
        let value: serde_json::Value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| serde_json::json!({ "message": String::from_utf8_lossy(&bytes) }));
        if !status.is_success() {
            bail!(
                "{} {}: {}",
                status.as_u16(),
                value["error"].as_str().unwrap_or("error"),
                value["message"].as_str().unwrap_or("")
            );
        }
        Ok(value)
    }

    /// `thaw deploy DIR`.
    pub async fn deploy(&self, path: &Path) -> Result<serde_json::Value> {
        let bundle = crate::bundle::read_bundle(path)?;
        let mut body = serde_json::to_value(&bundle.spec)?;
        body["files"] = serde_json::to_value(bundle.files)?;
        if let Some(a) = bundle.archive {
            body["archive"] = base64::engine::general_purpose::STANDARD.encode(a).into();
        }
        let resp = self
            .send(self.req(reqwest::Method::POST, "/functions").json(&body))
            .await?;
        self.json_or_error(resp).await
    }

    /// `thaw invoke NAME --data ...`: prints the answer body, returns the
    /// status.
    pub async fn invoke(&self, name: &str, data: Vec<u8>, verbose: bool) -> Result<u16> {
        let resp = self
            .send(
                self.req(reqwest::Method::POST, &format!("/functions/{name}/invoke"))
                    .header("content-type", "application/json")
                    .body(data),
            )
            .await?;
        let status = resp.status().as_u16();
        if verbose {
            eprintln!("HTTP {status}");
            for (k, v) in resp.headers() {
                if k.as_str().starts_with("x-thaw") || k == "content-type" {
                    eprintln!("{k}: {}", v.to_str().unwrap_or("?"));
                }
            }
        }
        let body = resp.bytes().await?;
        let mut out = std::io::stdout();
        out.write_all(&body)?;
        if !body.ends_with(b"\n") {
            out.write_all(b"\n")?;
        }
        Ok(status)
    }

    /// `GET /functions`.
    pub async fn list(&self) -> Result<serde_json::Value> {
        let resp = self
            .send(self.req(reqwest::Method::GET, "/functions"))
            .await?;
        self.json_or_error(resp).await
    }

    /// `DELETE /functions/NAME`.
    pub async fn remove(&self, name: &str) -> Result<()> {
        let resp = self
            .send(self.req(reqwest::Method::DELETE, &format!("/functions/{name}")))
            .await?;
        if resp.status().is_success() {
            return Ok(());
        }
        self.json_or_error(resp).await.map(|_| ())
    }

    /// `thaw logs NAME [-f]`: prints lines until the stream ends.
    pub async fn logs(&self, name: &str, tail: usize, follow: bool) -> Result<()> {
        let path = format!(
            "/functions/{name}/logs?tail={tail}{}",
            if follow { "&follow=1" } else { "" }
        );
        let resp = self.send(self.req(reqwest::Method::GET, &path)).await?;
        if !follow {
            let v = self.json_or_error(resp).await?;
            for line in v["lines"].as_array().into_iter().flatten() {
                print_line(line);
            }
            return Ok(());
        }
        if !resp.status().is_success() {
            return self.json_or_error(resp).await.map(|_| ());
        }
        let mut stream = resp.bytes_stream();
        let mut buf = Vec::new();
        while let Some(chunk) = stream.next().await {
            buf.extend_from_slice(&chunk?);
            while let Some(pos) = buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = buf.drain(..=pos).collect();
                let text = String::from_utf8_lossy(&line);
                if let Some(data) = text.trim_end().strip_prefix("data:") {
                    if let Ok(v) = serde_json::from_str::<serde_json::Value>(data.trim()) {
                        print_line(&v);
                    }
                }
            }
        }
        Ok(())
    }
}

fn print_line(v: &serde_json::Value) {
    println!(
        "{} {} [{}] {}",
        v["time_ms"].as_u64().unwrap_or(0),
        v["stream"].as_str().unwrap_or("?"),
        v["invocation_id"].as_str().unwrap_or("-"),
        v["line"].as_str().unwrap_or("")
    );
}
