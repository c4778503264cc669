//! What a function can and cannot reach.

mod common;

use common::{function, Server};
use serde_json::json;

const PROBE: &str = r#"
import os, socket

def try_write(path):
    try:
        with open(path, "w") as f:
            f.write("x")
        return True
    except OSError:
        return False

def handler(event, context):
    if event.get("connect"):
        s = socket.socket()
        s.settimeout(2)
        try:
            s.connect(("127.0.0.1", event["connect"]))
            return {"connected": True}
        except OSError as e:
            return {"connected": False, "error": str(e)}
        finally:
            s.close()
    if event.get("forkbomb"):
        pids = []
        try:
            while True:
                pid = os.fork()
                if pid == 0:
                    import time
                    time.sleep(30)
                    os._exit(0)
                pids.append(pid)
        except OSError as e:
            return {"forked": len(pids), "error": str(e)}
    return {
        "uid": os.getuid(),
        "pid": os.getpid(),
        "write_usr": try_write("/usr/thaw-probe"),
        "write_task": try_write("/var/task/thaw-probe"),
        "write_etc": try_write("/etc/thaw-probe"),
        "write_tmp": try_write("/tmp/thaw-probe"),
        "procs": sorted(int(p) for p in os.listdir("/proc") if p.isdigit()),
        "data_dir_listing": (os.listdir(event["data"]) if os.path.isdir(event["data"]) else None),
        "functions_visible": os.path.exists(os.path.join(event["data"], "functions")),
        "hostname": socket.gethostname(),
    }
"#;

#[tokio::test]
async fn functions_are_confined() {
    require_root!();
    let server = Server::start(&[]);
    server
        .deploy_ready(function("probe", PROBE, json!({"pids": 16})))
        .await;
    let data = server.data.canonicalize().unwrap().display().to_string();
    let a = server.invoke("probe", json!({"data": data})).await;
    assert_eq!(a.status, 200, "{}", a.text());
    let v = a.json();
    assert_eq!(v["uid"], 65534, "unprivileged");
    assert_eq!(v["pid"], 2, "own pid namespace under a tiny init");
    assert_eq!(v["write_usr"], false);
    assert_eq!(v["write_task"], false);
    assert_eq!(v["write_etc"], false);
    assert_eq!(v["write_tmp"], true);
    assert_eq!(v["procs"], json!([1, 2]), "no host processes visible");
    assert_eq!(v["functions_visible"], false, "data directory masked: {v}");
    assert_eq!(v["hostname"], "thaw");

    // A port the host listens on (the thaw API itself) is unreachable.
    let port: u16 = server.url.rsplit(':').next().unwrap().parse().unwrap();
    let a = server.invoke("probe", json!({"connect": port})).await;
    assert_eq!(a.json()["connected"], false, "{}", a.text());

    // Nor with outbound network: the sandbox has a network namespace of its
    // own, and its 127.0.0.1 is its own loopback (issue 12, finding 2; the
    // whole outbound policy is in tests/network.rs).
    server
        .deploy_ready(function("netprobe", PROBE, json!({"network": "outbound"})))
        .await;
    let a = server.invoke("netprobe", json!({"connect": port})).await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.json()["connected"], false, "{}", a.text());
}

#[tokio::test]
async fn a_fork_bomb_is_contained() {
    require_root!();
    let server = Server::start(&[]);
    server
        .deploy_ready(function(
            "bomb",
            PROBE,
            json!({"pids": 16, "timeout_ms": 5000}),
        ))
        .await;
    let a = server.invoke("bomb", json!({"forkbomb": true})).await;
    // Either the handler sees fork fail at the pids limit, or it is stopped;
    // both are answers, and the server stays up.
    assert!(a.status == 200 || a.status >= 500, "{}", a.text());
    if a.status == 200 {
        let v = a.json();
        assert!(v["forked"].as_u64().unwrap() < 16, "{v}");
    }
    for pid in server.sandbox_pids() {
        let _ = pid;
    }
    assert_eq!(server.get("/healthz").await.status, 200);
    let a = server.invoke("bomb", json!({"data": "/nonexistent"})).await;
    assert_eq!(a.status, 200, "{}", a.text());
    // Deleting the function leaves no process behind.
    server
        .request(reqwest::Method::DELETE, "/functions/bomb", None, &[])
        .await;
    assert!(server.sandbox_pids().is_empty());
}
