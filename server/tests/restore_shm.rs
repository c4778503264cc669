//! Issue 19, shared memory inside a snapshot through HTTP: a Python
//! function whose init attaches a System V segment (ctypes `shmget` /
//! `shmat`), maps anonymous shared memory (`mmap.mmap(-1, n)`) and forks a
//! child that keeps both, is snapshotted at deploy as a tree (captured
//! from inside its sandbox's IPC namespace); every forced cold start
//! restores it in a sandbox of its own, in both memory modes. In a copy,
//! the parent's write after the restore reaches the child through both
//! kinds, and the child's answer reaches the parent; a copy starts from
//! the snapshot's content (not the original's later writes, not another
//! copy's), and the original never sees a copy's writes.
//! Needs root (sandboxes).

mod common;

use common::{function, Server};
use serde_json::{json, Value};

const SHARED: &str = r#"
import ctypes, mmap, os
import thaw

libc = ctypes.CDLL(None, use_errno=True)
libc.shmget.argtypes = [ctypes.c_int, ctypes.c_size_t, ctypes.c_int]
libc.shmat.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int]
libc.shmat.restype = ctypes.c_void_p
SHMID = libc.shmget(0, 8192, 0o600)  # IPC_PRIVATE
if SHMID < 0:
    raise OSError(ctypes.get_errno(), "shmget")
SYSV = (ctypes.c_char * 8192).from_address(libc.shmat(SHMID, None, 0))
SYSV[0:4] = b"sysv"
ANON = mmap.mmap(-1, 8192)  # MAP_SHARED | MAP_ANONYMOUS
ANON[0:4] = b"anon"

ASK_R, ASK_W = os.pipe()
ANSWER_R, ANSWER_W = os.pipe()
CHILD = os.fork()
if CHILD == 0:
    # Only its own pipe ends: none of the runtime's descriptors.
    for fd in os.listdir("/proc/self/fd"):
        if int(fd) > 2 and int(fd) not in (ASK_R, ANSWER_W):
            try:
                os.close(int(fd))
            except OSError:
                pass
    while os.read(ASK_R, 1):
        SYSV[200:204] = SYSV[100:104]
        ANON[200:204] = ANON[100:104]
        os.write(ANSWER_W, b"k")
    os._exit(0)
os.close(ASK_R)
os.close(ANSWER_W)

def handler(event, context):
    tag = event["tag"].encode()
    before = [SYSV[100:104].decode(), ANON[100:104].decode()]
    SYSV[100:104] = tag
    ANON[100:104] = tag
    os.write(ASK_W, b"g")
    assert os.read(ANSWER_R, 1) == b"k"
    return {
        "copy": thaw.is_copy(),
        "init": [SYSV[0:4].decode(), ANON[0:4].decode()],
        "before": before,
        "child_saw": [SYSV[200:204].decode(), ANON[200:204].decode()],
        "shmid": SHMID,
    }
"#;

async fn invoke(server: &Server, tag: &str, forced: bool) -> Value {
    let headers: &[(&str, &str)] = if forced {
        &[("x-thaw-cold", "restore")]
    } else {
        &[]
    };
    let a = server
        .invoke_raw(
            "shm",
            serde_json::to_vec(&json!({ "tag": tag })).unwrap(),
            headers,
        )
        .await;
    assert_eq!(a.status, 200, "{tag}: {}", a.text());
    a.json()
}

async fn run(mode: &str) {
    let server = Server::start(&["--allow-forced-cold"]);
    let spec = function(
        "shm",
        SHARED,
        json!({"warmup": [{"tag": "warm"}], "keep_alive_s": 600, "memory_mode": mode}),
    );
    let rec = server.deploy_ready(spec).await;
    assert!(!rec["snapshot"].is_null(), "{mode}: no snapshot: {rec}");

    let booted = invoke(&server, "boot", false).await;
    assert_eq!(booted["copy"], false, "{mode}: {booted}");
    assert_eq!(
        booted["before"],
        json!(["warm", "warm"]),
        "{mode}: {booted}"
    );
    assert_eq!(booted["child_saw"], json!(["boot", "boot"]), "{mode}");

    for tag in ["cpy1", "cpy2"] {
        let copy = invoke(&server, tag, true).await;
        assert_eq!(copy["copy"], true, "{mode}: {copy}");
        assert_eq!(copy["init"], json!(["sysv", "anon"]), "{mode}: {copy}");
        assert_eq!(copy["shmid"], booted["shmid"], "{mode}: the same id");
        // The snapshot's content: neither the original's later write
        // ("boot") nor the previous copy's.
        assert_eq!(copy["before"], json!(["warm", "warm"]), "{mode}: {copy}");
        // Parent and child of the copy share both kinds.
        assert_eq!(copy["child_saw"], json!([tag, tag]), "{mode}: {copy}");
    }

    // The original, whenever an invocation reaches it, saw only its own
    // writes.
    for _ in 0..4 {
        let a = invoke(&server, "orig", false).await;
        if a["copy"] == false {
            for seen in a["before"].as_array().unwrap() {
                assert!(seen == "boot" || seen == "orig", "{mode}: {a}");
            }
        }
    }
}

#[tokio::test]
async fn shared_memory_of_a_function_tree_is_its_own_in_every_copy_mmap() {
    require_root!();
    run("mmap").await;
}

#[tokio::test]
async fn shared_memory_of_a_function_tree_is_its_own_in_every_copy_uffd() {
    require_root!();
    run("uffd").await;
}
