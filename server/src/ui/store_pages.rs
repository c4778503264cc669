//! Store maintenance for the dashboard: per-snapshot page sharing, verify
//! and gc.
//!
//! `GET /store/snapshots` answers, for each snapshot root in the store:
//!
//! ```text
//! {"snapshots": [{"id", "function", "version", "pages", "zero_pages",
//!                 "file_pages", "stored_pages", "unique_pages", "shared_pages"}]}
//! ```
//!
//! A stored page is *unique* when no other snapshot holds its hash, *shared*
//! otherwise (a page repeated inside one snapshot only is unique).

use std::collections::HashMap;

use axum::extract::State;
use axum::response::Response;
use serde_json::{json, Value};
use snapshotter::store::PageRun;
use snapshotter::store::PageStore;

use crate::api::AppState;
use crate::service::ApiError;

/// Page sharing of every snapshot in the store.
pub fn sharing(store: &PageStore) -> anyhow::Result<Vec<Value>> {
    let ids = store.snapshot_ids()?;
    let mut roots = Vec::with_capacity(ids.len());
    // How many snapshots hold each hash.
    let mut holders: HashMap<[u8; 32], u32> = HashMap::new();
    for id in ids {
        let root = match store.load_root(&id) {
            Ok(r) => r,
            // A root removed meanwhile (gc, delete) is simply not listed.
            Err(_) => continue,
        };
        let mut mine: Vec<[u8; 32]> = Vec::new();
        let (mut zero, mut file) = (0u64, 0u64);
        for area in &root.areas {
            for run in area.runs() {
                match run {
                    PageRun::Zero(n) => zero += n,
                    PageRun::File(n) => file += n,
                    PageRun::Hashes(hs) => mine.extend(hs.iter().map(|h| *h.as_bytes())),
                }
            }
        }
        let stored = mine.len() as u64;
        mine.sort_unstable();
        mine.dedup();
        for h in &mine {
            *holders.entry(*h).or_default() += 1;
        }
        roots.push((id, zero, file, stored, mine));
    }
    Ok(roots
        .into_iter()
        .map(|(id, zero, file, stored, mine)| {
            let shared = mine.iter().filter(|h| holders[*h] > 1).count() as u64;
            json!({
                "id": id,
                "pages": zero + file + stored,
                "zero_pages": zero,
                "file_pages": file,
                "stored_pages": stored,
                "distinct_pages": mine.len(),
                "unique_pages": mine.len() as u64 - shared,
                "shared_pages": shared,
            })
        })
        .collect())
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(super::internal)?
        .map_err(|e| super::internal(format!("{e:#}")))
}

/// `GET /store/snapshots`, with the function and version of each snapshot
/// that a deployed version uses.
pub async fn snapshots(State(state): State<AppState>) -> Result<Response, ApiError> {
    let store = state.service.store.clone();
    let mut list = blocking(move || sharing(&store)).await?;
    let mut owners: HashMap<String, (String, u64)> = HashMap::new();
    for f in state.service.list() {
        if let Some(id) = f.snapshot.as_ref().and_then(|s| s["id"].as_str()) {
            owners.insert(id.to_string(), (f.name.clone(), f.version));
        }
    }
    for s in &mut list {
        if let Some((name, version)) = s["id"].as_str().and_then(|id| owners.get(id)) {
            s["function"] = json!(name);
            s["version"] = json!(version);
        }
    }
    Ok(super::ok_json(json!({ "snapshots": list })))
}

/// `POST /store/verify`: the report of `thaw store verify`.
pub async fn verify(State(state): State<AppState>) -> Result<Response, ApiError> {
    let store = state.service.store.clone();
    let started = std::time::Instant::now();
    let (mut report, _ok) = blocking(move || crate::store_view::verify(&store)).await?;
    report["elapsed_ms"] = json!(started.elapsed().as_millis() as u64);
    Ok(super::ok_json(report))
}

/// `POST /store/gc`: the report of `thaw store gc`.
pub async fn gc(State(state): State<AppState>) -> Result<Response, ApiError> {
    let store = state.service.store.clone();
    let started = std::time::Instant::now();
    let mut report = blocking(move || crate::store_view::gc(&store)).await?;
    report["elapsed_ms"] = json!(started.elapsed().as_millis() as u64);
    Ok(super::ok_json(report))
}
