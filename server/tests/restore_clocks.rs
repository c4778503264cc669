//! Clocks across nodes (issue 18, acceptance 4): a function captured by a
//! server whose monotonic clock is far ahead (another node, simulated by
//! running the server in a time namespace 10 days ahead) and restored by a
//! server on this host never sees `time.monotonic()` go backwards. The
//! handler checks its own clock against the value it read at import.

mod common;

use common::{function, Server};
use serde_json::json;

const CLOCK: &str = r#"
import time
AT_IMPORT = time.monotonic()
BOOT_AT_IMPORT = time.clock_gettime(time.CLOCK_BOOTTIME)

def handler(event, context):
    now = time.monotonic()
    boot = time.clock_gettime(time.CLOCK_BOOTTIME)
    return {"at_import": AT_IMPORT, "now": now, "forward": now >= AT_IMPORT and boot >= BOOT_AT_IMPORT}
"#;

#[tokio::test]
async fn a_copy_captured_on_a_node_whose_clock_was_ahead_never_sees_it_go_back() {
    require_root!();
    if !std::path::Path::new("/proc/self/timens_offsets").exists() {
        skip!("this kernel has no time namespaces");
    }
    if std::process::Command::new("unshare")
        .arg("--version")
        .output()
        .is_err()
    {
        skip!("needs unshare (util-linux)");
    }
    let ten_days = 864_000.0;
    let mut server = Server::start_wrapped(
        &[
            "unshare",
            "-T",
            "--monotonic",
            "864000",
            "--boottime",
            "864000",
        ],
        &["--allow-forced-cold"],
    );
    server
        .deploy_ready(function("clock", CLOCK, json!({"keep_alive_s": 600})))
        .await;
    // A copy restored by the server that captured it: its clock goes on.
    let a = server
        .invoke_raw("clock", b"{}".to_vec(), &[("x-thaw-cold", "restore")])
        .await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.header("x-thaw-start"), "restore");
    let at_import = a.json()["at_import"].as_f64().unwrap();
    let host_now = {
        let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).unwrap();
        t.tv_sec() as f64 + t.tv_nsec() as f64 / 1e9
    };
    assert!(
        at_import > host_now + ten_days - 3600.0,
        "captured 10 days ahead of this host: {at_import} vs {host_now}"
    );
    assert_eq!(a.json()["forward"], true, "{}", a.text());

    // The same data on this host's clocks (the node that restores is 10
    // days behind the one that captured).
    assert!(server.stop().success());
    server.wrap.clear();
    server.spawn();
    for _ in 0..2 {
        let a = server
            .invoke_raw("clock", b"{}".to_vec(), &[("x-thaw-cold", "restore")])
            .await;
        assert_eq!(a.status, 200, "{}", a.text());
        assert_eq!(a.header("x-thaw-start"), "restore", "{}", a.text());
        let v = a.json();
        assert_eq!(v["at_import"].as_f64().unwrap(), at_import);
        assert_eq!(v["forward"], true, "the copy's clock went back: {v}");
        assert!(v["now"].as_f64().unwrap() >= at_import, "{v}");
    }
}
