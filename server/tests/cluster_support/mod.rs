//! What the tests of nodes sharing a store have in common: a private Garage
//! with a bucket and a store key, `thaw serve` processes on it, the bucket
//! as a `RemoteStore`, `thaw store` commands, metrics and waits, forced
//! restores and what they count.
//!
//! A test crate that uses it declares `mod common;`, `mod garage;` (test-
//! support/garage.rs) and `mod cluster_support;` at its root.
#![allow(dead_code)]

use std::path::Path;
use std::time::{Duration, Instant};

use remote_store::{RemoteStore, StoreKey};

use crate::common::{Answer, Server};
use crate::garage::{Garage, BUCKET};

/// The tests set the process's AWS_* variables (the servers inherit them)
/// for their own Garage: one at a time.
pub static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A private Garage, its bucket under a prefix, and the store key in a file.
pub struct Store {
    pub garage: Garage,
    pub key: StoreKey,
    pub key_file: String,
    pub url: String,
}

/// A store on a Garage listening on loopback.
pub fn store(prefix: &str) -> Result<Store, String> {
    store_on(prefix, "127.0.0.1")
}

/// [`store`] with Garage's S3 API on address `host`.
pub fn store_on(prefix: &str, host: &str) -> Result<Store, String> {
    let garage = Garage::start_on(host)?;
    let key = StoreKey::generate();
    let key_file = garage.dir().join("store.key");
    std::fs::write(&key_file, key.to_hex()).unwrap();
    for (k, v) in garage.env() {
        std::env::set_var(k, v);
    }
    std::env::remove_var("THAW_STORE_KEY");
    Ok(Store {
        key,
        key_file: key_file.display().to_string(),
        url: format!("s3://{BUCKET}/{prefix}"),
        garage,
    })
}

impl Store {
    /// `thaw serve` on this store with forced cold starts allowed and
    /// `extra` arguments.
    pub fn server(&self, extra: &[&str]) -> Server {
        let mut args = vec![
            "--store-url",
            &self.url,
            "--store-key-file",
            &self.key_file,
            "--allow-forced-cold",
        ];
        args.extend_from_slice(extra);
        Server::start(&args)
    }

    /// The writer node.
    pub fn writer(&self) -> Server {
        self.server(&["--store-writer"])
    }

    /// A reader node (whatever THAW_STORE_WRITER the environment holds).
    pub fn reader(&self) -> Server {
        self.server(&["--store-writer=false"])
    }

    /// The bucket, read with this store's key.
    pub fn remote(&self) -> RemoteStore {
        RemoteStore::from_env(self.url.parse().unwrap(), &self.key).unwrap()
    }

    /// `thaw store ARGS` against this store: exit status and output.
    pub fn thaw_store(&self, args: &[&str]) -> (bool, String) {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_thaw"))
            .arg("store")
            .args(args)
            .args(["--store-url", &self.url, "--store-key-file", &self.key_file])
            .output()
            .unwrap();
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    }
}

/// The sum of the values of the metric lines that start with `prefix`.
pub async fn metric(server: &Server, prefix: &str) -> f64 {
    server.metric(prefix).await
}

/// Polls `check` until it holds; fails the test after `limit`.
pub async fn wait_for(what: &str, limit: Duration, mut check: impl AsyncFnMut() -> bool) {
    let t0 = Instant::now();
    while !check().await {
        assert!(t0.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `thaw store verify` of a node's data directory passes.
pub fn verify(data: &Path) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_thaw"))
        .args(["store", "verify", "--data-dir"])
        .arg(data)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "thaw store verify {}: {}{}",
        data.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A forced restore (`x-thaw-cold: restore`) of `name`.
pub async fn restore(server: &Server, name: &str) -> Answer {
    server
        .invoke_raw(name, b"{}".to_vec(), &[("x-thaw-cold", "restore")])
        .await
}

/// Forced restores of `name` until one answers 200 (before the node has
/// the version with a snapshot it may restore: 404, or 409 `no_snapshot`).
pub async fn first_restore(server: &Server, name: &str) -> Answer {
    let t0 = Instant::now();
    loop {
        let r = restore(server, name).await;
        if r.status == 200 {
            return r;
        }
        assert!(
            matches!(r.status, 404 | 409),
            "{name}: {} {}",
            r.status,
            r.text()
        );
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "{name} not restorable within 120 s: {}",
            r.text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `thaw_remote_lazy_restores_total{result="..."}`.
pub async fn lazy_restores(server: &Server, result: &str) -> f64 {
    metric(
        server,
        &format!("thaw_remote_lazy_restores_total{{result=\"{result}\"}}"),
    )
    .await
}

/// Lines of /metrics that count invocations of `name` that booted.
pub async fn boots(server: &Server, name: &str) -> Vec<String> {
    server
        .get("/metrics")
        .await
        .text()
        .lines()
        .filter(|l| {
            l.starts_with("thaw_invocations_total{")
                && l.contains(&format!("function=\"{name}\""))
                && l.contains("start=\"boot\"")
        })
        .map(str::to_string)
        .collect()
}

/// event `{"big": SECONDS}` reads (after sleeping that long): a lazy copy
/// answers plain events without those pages, and faults on them only then.
pub fn big(name: &str) -> serde_json::Value {
    crate::common::function(
        name,
        "import hashlib, os, time\nBORN = time.time_ns()\nBIG = os.urandom(24 << 20)\n\
         def handler(event, context):\n    if event.get('big'):\n        time.sleep(event['big'])\n        \
         return {'born': BORN, 'digest': hashlib.sha256(BIG).hexdigest()}\n    return {'born': BORN}\n",
        serde_json::json!({}),
    )
}

/// A writer with `f` (the `big` function) deployed and uploaded, and a
/// reader started after the upload that restores `f` lazily.
pub async fn lazy_reader(s: &Store) -> (Server, Server, String) {
    let a = s.writer();
    let v = a.deploy_ready(big("f")).await;
    assert_eq!(v["state"], "ready", "{v}");
    let snapshot = v["snapshot"]["id"].as_str().unwrap().to_string();
    wait_for("A uploaded f", Duration::from_secs(120), async || {
        metric(&a, "thaw_remote_uploads_total{result=\"ok\"}").await >= 1.0
    })
    .await;
    let b = s.reader();
    wait_for(
        "B restores f lazily",
        Duration::from_secs(120),
        async || metric(&b, "thaw_remote_lazy_snapshots").await >= 1.0,
    )
    .await;
    (a, b, snapshot)
}

/// The version's record on `server` keeps its snapshot and is not failed
/// (no rebuild).
pub async fn still_ready(server: &Server, snapshot: &str) {
    let view = server.get("/functions/f").await;
    assert_eq!(view.status, 200, "{}", view.text());
    let v = view.json();
    assert_eq!(v["state"], "ready", "{v}");
    assert_eq!(v["snapshot"]["id"], snapshot, "{v}");
}
