//! A snapshot that can no longer be restored (a mapped library changed, its
//! manifest is missing, a page in the store is corrupt): the next cold start
//! falls back to booting, answers correctly, says why, and the snapshot is
//! rebuilt so that later cold starts restore again. A library replaced by
//! the same bytes (another inode, as on another node) still restores: files
//! are matched by content (issue 18).

mod common;

use std::time::{Duration, Instant};

use common::{function, Server};
use serde_json::{json, Value};

/// A handler that maps a shared library from its own code folder (a copy of
/// the system's zlib) and counts its calls.
const LIBRARY: &str = r#"
import ctypes, os
LIB = ctypes.CDLL(os.path.join(os.path.dirname(__file__), "libzcopy.so"))
LIB.zlibVersion.restype = ctypes.c_char_p
CALLS = 0

def handler(event, context):
    global CALLS
    CALLS += 1
    return {"calls": CALLS, "zlib": LIB.zlibVersion().decode()}
"#;

fn zlib() -> Option<Vec<u8>> {
    [
        "/usr/lib/x86_64-linux-gnu/libz.so.1",
        "/lib/x86_64-linux-gnu/libz.so.1",
    ]
    .iter()
    .find_map(|p| std::fs::read(p).ok())
}

fn library_spec(lib: &[u8]) -> Value {
    use base64::Engine;
    let mut tar = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::fast(),
    ));
    for (name, bytes) in [("main.py", LIBRARY.as_bytes()), ("libzcopy.so", lib)] {
        let mut h = tar::Header::new_gnu();
        h.set_size(bytes.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        tar.append_data(&mut h, name, bytes).unwrap();
    }
    let gz = tar.into_inner().unwrap().finish().unwrap();
    json!({
        "name": "lib",
        "handler": "main.handler",
        "archive": base64::engine::general_purpose::STANDARD.encode(gz),
        "warmup": [{}, {}],
        "keep_alive_s": 600,
    })
}

/// Waits until the function's `restore_failure` shows a finished rebuild.
async fn wait_rebuild(server: &Server, name: &str) -> Value {
    let t0 = Instant::now();
    loop {
        let v = server.get(&format!("/functions/{name}")).await.json();
        let state = v["restore_failure"]["rebuild"].as_str().unwrap_or("");
        if matches!(state, "rebuilt" | "failed" | "gave_up") {
            return v;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "no rebuild finished: {v}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The failure is reported, the snapshot rebuilt under a new id, and a
/// forced restore of the new one answers from its warm-up state.
async fn check_fallback_and_rebuild(
    server: &Server,
    name: &str,
    old: &str,
    why: &str,
    event: Value,
    warm_calls: u64,
) {
    let a = server.invoke(name, event.clone()).await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.header("x-thaw-start"), "boot", "fell back to booting");
    assert_eq!(a.json()["calls"], 1, "a fresh boot answered: {}", a.text());

    let v = wait_rebuild(server, name).await;
    let note = &v["restore_failure"];
    assert_eq!(note["snapshot"], old, "{v}");
    assert!(
        note["reason"].as_str().unwrap().contains(why),
        "the reason names the cause ({why}): {note}"
    );
    assert_eq!(note["rebuild"], "rebuilt", "{note}");
    let new = v["snapshot"]["id"].as_str().unwrap();
    assert_ne!(new, old, "rebuilt under a new id");
    assert_eq!(note["rebuilt_as"], new);
    assert!(
        !server
            .data
            .join(format!("snapshots/{old}.snapshot"))
            .exists(),
        "the failed snapshot's manifest is gone"
    );
    let metrics = server.get("/metrics").await.text();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("thaw_restore_failures_total ") && !l.ends_with(" 0")),
        "{metrics}"
    );

    // The rebuilt snapshot restores: its warm-up ran again.
    let a = server
        .invoke_raw(
            name,
            serde_json::to_vec(&event).unwrap(),
            &[("x-thaw-cold", "restore")],
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.header("x-thaw-start"), "restore");
    assert_eq!(a.json()["calls"], warm_calls + 1, "{}", a.text());
}

#[tokio::test]
async fn a_changed_library_file_falls_back_to_boot_and_is_rebuilt() {
    require_root!();
    let Some(lib) = zlib() else {
        skip!("no libz.so.1 to map from the function's folder");
    };
    let mut server = Server::start(&["--allow-forced-cold"]);
    let rec = server.deploy_ready(library_spec(&lib)).await;
    let old = rec["snapshot"]["id"]
        .as_str()
        .expect("a snapshot")
        .to_string();
    // The library is mapped from the code folder, so the snapshot depends on
    // that very file.
    let a = server
        .invoke_raw("lib", b"{}".to_vec(), &[("x-thaw-cold", "restore")])
        .await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.header("x-thaw-start"), "restore");
    let zlib_version = a.json()["zlib"].clone();

    // Replace the library by the same bytes in a new file (another inode,
    // as another node has it): matched by content, it still restores.
    assert!(server.stop().success());
    let path = server.data.join("functions/lib/v1/code/libzcopy.so");
    assert!(path.exists(), "code lives at {}", path.display());
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, &lib).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    server.spawn();
    let a = server
        .invoke_raw("lib", b"{}".to_vec(), &[("x-thaw-cold", "restore")])
        .await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.header("x-thaw-start"), "restore", "same content restores");

    // Replace it by other bytes (what an upgrade does; here the same
    // library with a few bytes more, which loads the same at boot): this
    // node's file is not the snapshot's.
    assert!(server.stop().success());
    let mut upgraded = lib.clone();
    upgraded.extend_from_slice(&[0u8; 64]);
    std::fs::write(&tmp, &upgraded).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    server.spawn();

    check_fallback_and_rebuild(
        &server,
        "lib",
        &old,
        "cannot be restored on this node (incompatible): /var/task/libzcopy.so",
        json!({}),
        2,
    )
    .await;
    let a = server.invoke("lib", json!({})).await;
    assert_eq!(a.json()["zlib"], zlib_version);
}

const COUNTER: &str = r#"
CALLS = 0
def handler(event, context):
    global CALLS
    CALLS += 1
    return {"calls": CALLS}
"#;

#[tokio::test]
async fn a_missing_image_is_rebuilt_and_a_missing_manifest_falls_back() {
    require_root!();
    let mut server = Server::start(&["--allow-forced-cold"]);
    let rec = server
        .deploy_ready(function(
            "counter",
            COUNTER,
            json!({"warmup": [{}, {}, {}], "keep_alive_s": 600}),
        ))
        .await;
    let old = rec["snapshot"]["id"]
        .as_str()
        .expect("a snapshot")
        .to_string();

    // The mapped image is a cache of the store: without it, the restore
    // builds it again from verified pages and succeeds.
    assert!(server.stop().success());
    std::fs::remove_dir_all(server.data.join("store/images")).unwrap();
    server.spawn();
    let a = server.invoke("counter", json!({})).await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(
        a.header("x-thaw-start"),
        "restore",
        "image rebuilt from the store"
    );
    assert_eq!(a.json()["calls"], 4);

    // Without its manifest the snapshot cannot be restored at all.
    assert!(server.stop().success());
    std::fs::remove_file(server.data.join(format!("snapshots/{old}.snapshot"))).unwrap();
    server.spawn();
    check_fallback_and_rebuild(&server, "counter", &old, &old, json!({}), 3).await;
}

#[tokio::test]
async fn a_file_changed_in_place_after_a_spare_was_made_is_refused_at_claim() {
    require_root!();
    let Some(lib) = zlib() else {
        skip!("no libz.so.1 to copy");
    };
    let server = Server::start(&["--allow-forced-cold"]);
    server.deploy_ready(library_spec(&lib)).await;
    // The spares opened and checked the library when they were made.
    server.wait_spares("lib", 2).await;
    // Now it changes in place (same file, a new modification time); a
    // forced restore claims a spare and refuses (it never falls back).
    change_library_and_expect_refusal(&server).await;
}

/// Changes the deployed library in place (same file, a new modification
/// time), then checks that a forced restore claiming a spare refuses,
/// naming the change, and makes no copy.
async fn change_library_and_expect_refusal(server: &Server) {
    let path = server.data.join("functions/lib/v1/code/libzcopy.so");
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.set_modified(std::time::SystemTime::now() + Duration::from_secs(60))
        .unwrap();
    drop(f);
    let a = server
        .invoke_raw("lib", b"{}".to_vec(), &[("x-thaw-cold", "restore")])
        .await;
    assert_eq!(
        a.header("x-thaw-spare"),
        "",
        "no copy was made: {}",
        a.text()
    );
    assert_ne!(a.status, 200, "{}", a.text());
    assert!(
        a.text().contains("changed in place"),
        "the claim checked the file again: {}",
        a.text()
    );
}

/// Sandbox processes of `server` traced by it (pre-mapped stubs, see
/// server/tests/premap_spares.rs).
fn traced_stubs(server: &Server) -> Vec<i32> {
    server
        .sandbox_pids()
        .into_iter()
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/status")).is_ok_and(|s| {
                s.lines().any(|l| {
                    l.starts_with("TracerPid:") && l.split_whitespace().nth(1) != Some("0")
                })
            })
        })
        .collect()
}

#[tokio::test]
async fn a_file_changed_in_place_after_a_spare_was_pre_mapped_is_refused_at_claim() {
    require_root!();
    let Some(lib) = zlib() else {
        skip!("no libz.so.1 to copy");
    };
    if std::env::var_os("THAW_PREMAP_SPARES").is_some_and(|v| v == "0") {
        // Not a missing prerequisite: the other arm of the A/B, covered by
        // the test above.
        eprintln!("pre-mapped spares are off (THAW_PREMAP_SPARES=0): nothing to check");
        return;
    }
    let server = Server::start(&["--allow-forced-cold"]);
    server.deploy_ready(library_spec(&lib)).await;
    server.wait_spares("lib", 2).await;
    // Both spares pre-mapped (their stubs mapped from the library already).
    let t0 = std::time::Instant::now();
    while traced_stubs(&server).len() < 2 {
        assert!(t0.elapsed() < Duration::from_secs(30), "never pre-mapped");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    change_library_and_expect_refusal(&server).await;
}
