//! Tokens: required beyond loopback, admin and invoke-only roles.

mod common;

use common::{function, Server};
use serde_json::json;

const ADMIN: &str = "admin-token-0123456789abcdef";
const INVOKER: &str = "invoke-token-0123456789abcdef";

#[test]
fn refuses_a_public_address_without_a_token() {
    require_root!();
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_thaw"))
        .args(["serve", "--listen", "0.0.0.0:0", "--data-dir"])
        .arg(dir.path())
        .env_remove("THAW_TOKEN")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("refusing to listen on 0.0.0.0"), "{err}");
    assert!(err.contains("token"), "{err}");
}

#[tokio::test]
async fn tokens_and_roles_are_enforced() {
    require_root!();
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, format!("admin:{ADMIN}\ninvoke:{INVOKER}\n")).unwrap();
    let server = Server::start(&[
        "--listen",
        "0.0.0.0:0",
        "--token-file",
        tokens.to_str().unwrap(),
        "--allow-forced-cold",
    ]);
    let spec = function("hello", "def handler(e, c):\n    return 'hi'\n", json!({}));
    let body = serde_json::to_vec(&spec).unwrap();
    let post = |token: Option<&str>, path: &str, body: Vec<u8>| {
        let mut headers = vec![];
        let auth;
        if let Some(t) = token {
            auth = format!("Bearer {t}");
            headers.push(("authorization", auth.clone()));
        }
        let server = &server;
        let path = path.to_string();
        async move {
            let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            server
                .request(reqwest::Method::POST, &path, Some(body), &h)
                .await
        }
    };
    // No token, a wrong token: 401.
    let a = post(None, "/functions", body.clone()).await;
    assert_eq!(a.status, 401, "{}", a.text());
    assert_eq!(a.json()["error"], "unauthorized");
    assert_eq!(
        post(Some("wrong-token-0123456789"), "/functions", body.clone())
            .await
            .status,
        401
    );
    // An invoke-only token cannot deploy.
    let a = post(Some(INVOKER), "/functions", body.clone()).await;
    assert_eq!(a.status, 403, "{}", a.text());
    assert_eq!(a.json()["error"], "forbidden");
    // The admin token can.
    assert_eq!(
        post(Some(ADMIN), "/functions", body.clone()).await.status,
        201
    );
    // Health needs nothing.
    assert_eq!(server.get("/healthz").await.status, 200);
    // Wait for ready with the invoke token (reads are allowed).
    loop {
        let a = server
            .request(
                reqwest::Method::GET,
                "/functions/hello",
                None,
                &[("authorization", &format!("Bearer {INVOKER}"))],
            )
            .await;
        assert_eq!(a.status, 200);
        if a.json()["state"] == "ready" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let a = post(Some(INVOKER), "/functions/hello/invoke", b"{}".to_vec()).await;
    assert_eq!(a.status, 200, "{}", a.text());
    // Forced cold starts are an admin's.
    let a = server
        .request(
            reqwest::Method::POST,
            "/functions/hello/invoke",
            Some(b"{}".to_vec()),
            &[
                ("authorization", &format!("Bearer {INVOKER}")),
                ("x-thaw-cold", "boot"),
            ],
        )
        .await;
    assert_eq!(a.status, 403);
    let a = server
        .request(
            reqwest::Method::DELETE,
            "/functions/hello",
            None,
            &[("authorization", &format!("Bearer {INVOKER}"))],
        )
        .await;
    assert_eq!(a.status, 403);
    let a = server
        .request(
            reqwest::Method::DELETE,
            "/functions/hello",
            None,
            &[("authorization", &format!("Bearer {ADMIN}"))],
        )
        .await;
    assert_eq!(a.status, 204);
}
