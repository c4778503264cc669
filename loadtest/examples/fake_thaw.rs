//! A trivial stand-in for thaw's invoke endpoint, to calibrate the load
//! generator against other tools (wrk, oha) without a real server:
//!
//! ```text
//! cargo run --release -p loadtest --example fake_thaw -- 127.0.0.1:7071
//! ```
//!
//! `POST /functions/{name}/invoke` answers 200 with the request body and
//! `x-thaw-start: warm`, `x-thaw-start-us: 0`, `x-thaw-duration-us: 0`.
//! Runs on one worker thread, so pinning it with `taskset` pins all of it.

#![forbid(unsafe_code)]

use axum::body::Bytes;
use axum::routing::post;
use axum::Router;

async fn invoke(body: Bytes) -> ([(&'static str, &'static str); 3], Bytes) {
    (
        [
            ("x-thaw-start", "warm"),
            ("x-thaw-start-us", "0"),
            ("x-thaw-duration-us", "0"),
        ],
        body,
    )
}

fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:7071".to_owned());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(&addr).await?;
        eprintln!("fake thaw on http://{}", listener.local_addr()?);
        let app = Router::new().route("/functions/{name}/invoke", post(invoke));
        axum::serve(listener, app).await
    })
}
