//! Issue 19 (sockets) through the API, in real sandboxes: a Python
//! function whose init opens a TCP listener, a connection to it, a UDP
//! socket, a Unix listener in its /tmp, an abstract Unix listener and a
//! netlink route socket is snapshotted at deploy; a forced restore (the
//! server's sandboxed restore into a stub sandbox) finds its listeners
//! listening again in the copy's own network namespace, the UDP socket
//! receiving, netlink answering, and the connection cut.

mod common;

use common::{function, Server};
use serde_json::json;

const SOCKETS: &str = r#"
import os, socket, struct, thaw

L = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
L.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
L.bind(("127.0.0.1", 7070))
L.listen(8)
C = socket.create_connection(("127.0.0.1", 7070))
C.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
A, _ = L.accept()
L6 = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
L6.bind(("::1", 7072))
L6.listen(1)
C6 = socket.create_connection(("::1", 7072))
A6, _ = L6.accept()
U = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
U.bind(("127.0.0.1", 7071))
P = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
P.bind("/tmp/fn.sock")
P.listen(1)
B = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
B.bind("\0thaw-fn")
B.listen(1)
N = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
N.bind((0, 0))

def cut(s):
    s.settimeout(5)
    try:
        data = s.recv(1)
    except ConnectionResetError:
        data = b""
    if data != b"":
        return False
    try:
        s.send(b"x")
        return False
    except (BrokenPipeError, ConnectionResetError):
        return True

def accepts(listener, family, address, kind=socket.SOCK_STREAM):
    with socket.socket(family, kind) as c:
        c.connect(address)
        c.send(b"x")
        s, _ = listener.accept()
        with s:
            return s.recv(1) == b"x"

def links():
    req = struct.pack("=IHHII", 32, 18, 0x301, 42, 0) + struct.pack("=BxHiII", 0, 0, 0, 0, 0)
    N.send(req)
    count = 0
    while True:
        data = N.recv(65536)
        at = 0
        while at + 16 <= len(data):
            length, kind = struct.unpack_from("=IH", data, at)
            if kind == 3:
                return count
            if kind == 16:
                count += 1
            at += (length + 3) & ~3

def handler(event, context):
    out = {"copy": thaw.is_copy(), "links": links()}
    if thaw.is_copy():
        out["cut_client"] = cut(C)
        out["cut_accepted"] = cut(A)
        out["cut_v6"] = cut(C6) and cut(A6)
        out["tcp6"] = accepts(L6, socket.AF_INET6, ("::1", 7072))
        out["nodelay"] = C.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        out["reuseaddr"] = L.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR)
        out["tcp"] = accepts(L, socket.AF_INET, ("127.0.0.1", 7070))
        out["unix"] = accepts(P, socket.AF_UNIX, "/tmp/fn.sock")
        out["abstract"] = accepts(B, socket.AF_UNIX, "\0thaw-fn")
        out["path_mode"] = oct(os.stat("/tmp/fn.sock").st_mode)
        out["path_uid"] = os.stat("/tmp/fn.sock").st_uid
        out["uid"] = os.getuid()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto(b"udp", ("127.0.0.1", 7071))
        U.settimeout(5)
        out["udp"] = U.recv(16).decode()
    return out
"#;

#[tokio::test]
async fn a_restored_copy_gets_its_sockets_in_its_own_sandbox() {
    require_root!();
    let server = Server::start(&["--allow-forced-cold"]);
    for mode in ["mmap", "uffd"] {
        let name = format!("sockets-{mode}");
        let rec = server
            .deploy_ready(function(
                &name,
                SOCKETS,
                json!({"warmup": [{}], "memory_mode": mode}),
            ))
            .await;
        assert!(!rec["snapshot"].is_null(), "{rec}");
        let warm = server.invoke(&name, json!({})).await.json();
        assert_eq!(warm["copy"], false, "{warm}");
        assert!(warm["links"].as_u64().unwrap() >= 1, "{warm}");
        for _ in 0..2 {
            let answer = server
                .invoke_raw(&name, b"{}".to_vec(), &[("x-thaw-cold", "restore")])
                .await;
            let copy = answer.json();
            assert_eq!(copy["copy"], true, "{mode}: {copy}");
            assert_eq!(copy["cut_client"], true, "{mode}: {copy}");
            assert_eq!(copy["cut_accepted"], true, "{mode}: {copy}");
            assert_eq!(copy["cut_v6"], true, "{mode}: {copy}");
            assert_eq!(copy["tcp6"], true, "{mode}: {copy}");
            assert_eq!(copy["nodelay"], 1, "{mode}: {copy}");
            assert_eq!(copy["reuseaddr"], 1, "{mode}: {copy}");
            assert_eq!(copy["tcp"], true, "{mode}: {copy}");
            assert_eq!(copy["unix"], true, "{mode}: {copy}");
            assert_eq!(copy["abstract"], true, "{mode}: {copy}");
            assert_eq!(copy["udp"], "udp", "{mode}: {copy}");
            assert!(copy["links"].as_u64().unwrap() >= 1, "{mode}: {copy}");
            // The socket's file was made as the function (not as root).
            assert_ne!(copy["uid"], 0, "{mode}: {copy}");
            assert_eq!(copy["path_uid"], copy["uid"], "{mode}: {copy}");
        }
    }
}

/// `on_snapshot_connections = "refuse"`: the function's connections make
/// the capture refuse; the version is ready without a snapshot, saying why.
#[tokio::test]
async fn refuse_keeps_a_function_with_connections_unsnapshotted() {
    require_root!();
    let server = Server::start(&[]);
    let rec = server
        .deploy_ready(function(
            "sockets-refuse",
            SOCKETS,
            json!({"on_snapshot_connections": "refuse"}),
        ))
        .await;
    assert_eq!(rec["state"], "ready", "{rec}");
    assert!(rec["snapshot"].is_null(), "{rec}");
    let error = rec["error"].as_str().unwrap_or_default();
    assert!(error.contains("is a TCP socket"), "{rec}");
    assert!(error.contains("(ESTABLISHED)"), "{rec}");
    let answer = server.invoke("sockets-refuse", json!({})).await.json();
    assert_eq!(answer["copy"], false, "{answer}");
}
