//! The example functions deploy, snapshot and answer; the store dedups
//! across them; a corrupted object is caught by `thaw store verify`.

mod common;

use std::path::Path;

use common::Server;
use serde_json::json;

const EXAMPLES: [&str; 5] = [
    "hello",
    "json-api",
    "text-stats",
    "sqlite-report",
    "numpy-pandas",
];

#[tokio::test]
async fn five_examples_snapshot_share_pages_and_answer() {
    require_root!();
    // numpy-pandas brings numpy and pandas in its requirements.txt.
    require_numpy_index!();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut args = vec!["--allow-forced-cold".to_string()];
    for name in EXAMPLES {
        args.push("--deploy".to_string());
        args.push(root.join(name).display().to_string());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let server = Server::start(&args);
    println!(
        "{:<14} {:>8} {:>8} {:>8}",
        "snapshot", "pages", "new", "new %"
    );
    let mut logical = 0;
    for name in EXAMPLES {
        let rec = server.wait_state(name).await;
        assert_eq!(rec["state"], "ready", "{rec}");
        assert!(rec["error"].is_null(), "{rec}");
        let s = &rec["snapshot"];
        let (pages, new) = (
            s["stored_pages"].as_u64().unwrap(),
            s["new_pages"].as_u64().unwrap(),
        );
        logical += pages;
        println!(
            "{name:<14} {pages:>8} {new:>8} {:>7.1}%",
            100.0 * new as f64 / pages as f64
        );
    }
    let store = server.get("/store").await.json();
    println!(
        "store: {} objects, {} MiB stored, {} MiB logical, dedup x{:.2}",
        store["objects"],
        store["stored_bytes"].as_u64().unwrap() >> 20,
        store["logical_bytes"].as_u64().unwrap() >> 20,
        store["dedup_ratio"].as_f64().unwrap()
    );
    assert_eq!(store["logical_bytes"].as_u64().unwrap(), logical * 4096);
    assert!(
        store["objects"].as_u64().unwrap() < logical,
        "pages are shared"
    );

    let checks = [
        ("hello", json!({"name": "x"}), "hello"),
        ("json-api", json!({"sku": "B-150", "qty": 3}), "total"),
        ("text-stats", json!({"text": "a b a"}), "common"),
        ("sqlite-report", json!({"region": "south"}), "top"),
        ("numpy-pandas", json!({"store": 3}), "store_rows"),
    ];
    for (name, event, field) in checks {
        let a = server.invoke(name, event.clone()).await;
        assert_eq!(a.status, 200, "{name}: {}", a.text());
        assert!(a.json().get(field).is_some(), "{name}: {}", a.text());
        // A restored copy gives the same answer as the warm original.
        let r = server
            .invoke_raw(
                name,
                serde_json::to_vec(&event).unwrap(),
                &[("x-thaw-cold", "restore")],
            )
            .await;
        assert_eq!(r.status, 200, "{name} restored: {}", r.text());
        assert_eq!(r.header("x-thaw-start"), "restore", "{name}");
        assert_eq!(
            r.json()[field],
            a.json()[field],
            "{name}: the copy answers as the original"
        );
    }
    assert_eq!(
        server
            .invoke("json-api", json!({"sku": "Z-1"}))
            .await
            .status,
        500
    );
}

#[tokio::test]
async fn a_flipped_byte_is_named_by_store_verify() {
    require_root!();
    let server = Server::start(&[]);
    server
        .deploy_ready(common::function(
            "tiny",
            "X = list(range(50000))\ndef handler(e, c):\n    return len(X)\n",
            json!({}),
        ))
        .await;
    let packs: Vec<_> = std::fs::read_dir(server.data.join("store/packs"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(!packs.is_empty());
    // Flip one byte in the middle of the first pack's data.
    let pack = &packs[0];
    let mut bytes = std::fs::read(pack).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0xff;
    std::fs::write(pack, &bytes).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_thaw"))
        .args(["store", "verify", "--data-dir"])
        .arg(&server.data)
        .output()
        .unwrap();
    assert!(!out.status.success(), "verify must fail");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: stdout {:?} stderr {:?}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert_eq!(report["ok"], false);
    let bad = &report["bad_objects"][0];
    assert_eq!(bad["object"].as_str().unwrap().len(), 64, "{report}");
    assert!(
        bad["problem"].as_str().unwrap().contains("hashes to"),
        "{report}"
    );
}
