//! The page store as the API and the CLI show it: `GET /store`,
//! `thaw store stats|verify|gc`.

use std::path::Path;

use anyhow::{Context, Result};
use serde_json::{json, Value};
use snapshotter::store::PageStore;
use snapshotter::store::{BadObjectKind, VerifyError};

/// Where the store lives in a data directory.
pub fn store_dir(data_dir: &Path) -> std::path::PathBuf {
    data_dir.join("store")
}

/// Opens the store of a data directory.
pub fn open(data_dir: &Path) -> Result<PageStore> {
    let dir = store_dir(data_dir);
    PageStore::open(&dir).with_context(|| format!("opening the page store {}", dir.display()))
}

/// `GET /store` and `thaw store stats`.
pub fn stats(store: &PageStore) -> Result<Value> {
    let s = store.stats().context("reading store statistics")?;
    Ok(json!({
        "objects": s.objects,
        "stored_bytes": s.stored_bytes,
        "pack_bytes": s.pack_bytes,
        "snapshots": s.snapshots,
        "logical_bytes": s.logical_bytes,
        "dedup_ratio": s.dedup_ratio,
        "zero_pages": s.zero_pages,
        "file_pages": s.file_pages,
    }))
}

/// `thaw store verify`: rehashes every object. The second value is whether
/// the store is sound.
pub fn verify(store: &PageStore) -> Result<(Value, bool)> {
    let r = match store.verify() {
        Ok(r) => r,
        Err(VerifyError::Corrupt(report)) => *report,
        Err(e) => return Err(anyhow::Error::new(e).context("verifying the store")),
    };
    let bad: Vec<Value> = r
        .bad_objects
        .iter()
        .map(|b| {
            let problem = match &b.kind {
                BadObjectKind::Mismatch { actual } => format!("content hashes to {actual}"),
                BadObjectKind::PackUnavailable(why) => format!("pack unreadable: {why}"),
            };
            json!({
                "object": b.hash.to_hex(),
                "pack": b.pack,
                "path": b.path.display().to_string(),
                "offset": b.offset,
                "problem": problem,
            })
        })
        .collect();
    let ok = r.is_ok();
    Ok((
        json!({
            "ok": ok,
            "objects_checked": r.objects_checked,
            "packs": r.packs,
            "snapshots_checked": r.roots_checked,
            "bad_objects": bad,
            "bad_snapshots": r.bad_roots.iter().map(|(id, why)| json!({"snapshot": id, "problem": why})).collect::<Vec<_>>(),
            "missing_objects": r.missing_objects.iter().map(|(id, h)| json!({"snapshot": id, "object": h.to_hex()})).collect::<Vec<_>>(),
            "corrupt_index_tail": r.corrupt_index_tail.map(|(o, l)| json!({"offset": o, "length": l})),
        }),
        ok,
    ))
}

/// `thaw store gc`.
pub fn gc(store: &PageStore) -> Result<Value> {
    let r = store.gc().context("collecting garbage")?;
    Ok(json!({
        "snapshots": r.roots,
        "live_objects": r.live_objects,
        "objects_freed": r.objects_freed,
        "bytes_freed": r.bytes_freed,
        "packs_rewritten": r.packs_rewritten,
        "images_removed": r.images_removed,
    }))
}
