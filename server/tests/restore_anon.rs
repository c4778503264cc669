//! Anonymous-memory semantics in a copy restored through the server (mmap
//! mode, issue 5, acceptance 5): a Python handler releases memory that
//! existed before the snapshot with `madvise(MADV_DONTNEED)` (zeros), grows
//! a mapping with `mremap` (zeros in the new part), and allocates and frees
//! a few hundred MB, and runs a program (python3 with threads), answering
//! correctly after a forced restore.

mod common;

use common::{function, Server};
use serde_json::json;

const ANON: &str = r#"
import ctypes, mmap, subprocess, sys
import thaw

MIB = 1 << 20
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
libc.mremap.restype = ctypes.c_void_p
libc.mremap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t, ctypes.c_int]
libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
MADV_DONTNEED, MREMAP_MAYMOVE = 4, 1
PATTERN = bytes((i * 7 + 1) % 251 + 1 for i in range(4096))

# Before the snapshot: an anonymous area filled through Python's mmap, and
# one made with libc's mmap (to grow with mremap), both full of a pattern.
AREA = mmap.mmap(-1, 16 * MIB, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
AREA[:] = PATTERN * (16 * MIB // len(PATTERN))
AREA_ADDR = ctypes.addressof(ctypes.c_char.from_buffer(AREA))
RAW_LEN = 4 * MIB
RAW = libc.mmap(None, RAW_LEN, mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, -1, 0)
ctypes.memmove(RAW, PATTERN * (RAW_LEN // len(PATTERN)), RAW_LEN)

def is_pattern(data):
    return data == PATTERN * (len(data) // len(PATTERN))

def handler(event, context):
    global RAW, RAW_LEN
    if event.get("op") != "check":
        return {"copy": thaw.is_copy()}
    out = {"copy": thaw.is_copy()}
    # 1. MADV_DONTNEED on the first half: zeros; the second half as it was.
    out["madvise_rc"] = libc.madvise(AREA_ADDR, 8 * MIB, MADV_DONTNEED)
    out["released_zero"] = AREA[:8 * MIB] == bytes(8 * MIB)
    out["kept"] = is_pattern(AREA[8 * MIB:])
    # 2. mremap growing (and maybe moving): old part kept, new part zeros.
    new_len = 32 * MIB
    grown = libc.mremap(RAW, RAW_LEN, new_len, MREMAP_MAYMOVE)
    out["mremap_ok"] = grown is not None and grown != ctypes.c_void_p(-1).value
    if out["mremap_ok"]:
        RAW, RAW_LEN = grown, new_len
        out["grown_kept"] = is_pattern(ctypes.string_at(RAW, 4 * MIB))
        out["grown_zero"] = ctypes.string_at(RAW + 4 * MIB, new_len - 4 * MIB) == bytes(new_len - 4 * MIB)
    # 3. The allocator takes and returns a few hundred MB.
    total = 0
    for round in range(4):
        block = bytearray(96 * MIB)
        total += block.count(0)
        block[::4096] = bytes([round + 1]) * len(block[::4096])
        total += sum(block[::4096])
        del block
    out["allocated"] = total
    # 4. A program the copy runs (the same runtime, whose threads release
    # their stacks with madvise) works and exits 0.
    child = subprocess.run(
        [sys.executable, "-c", "import threading\nts = [threading.Thread(target=sum, args=([1],)) for _ in range(8)]\n[t.start() for t in ts]\n[t.join() for t in ts]\nprint('child ok')"],
        capture_output=True, text=True, timeout=30)
    out["child"] = [child.returncode, child.stdout.strip()]
    return out

"#;

const ALLOCATED: u64 = 4 * 96 * 1024 * 1024 + (1 + 2 + 3 + 4) * (96 * 1024 * 1024 / 4096);

fn check_answer(v: &serde_json::Value, copy: bool) {
    assert_eq!(v["copy"], copy, "{v}");
    assert_eq!(v["madvise_rc"], 0, "{v}");
    assert_eq!(v["released_zero"], true, "MADV_DONTNEED reads zeros: {v}");
    assert_eq!(v["kept"], true, "the rest keeps its content: {v}");
    assert_eq!(v["mremap_ok"], true, "{v}");
    assert_eq!(v["grown_kept"], true, "mremap keeps the content: {v}");
    assert_eq!(v["grown_zero"], true, "the grown part reads zeros: {v}");
    assert_eq!(v["allocated"], ALLOCATED, "{v}");
    assert_eq!(
        v["child"],
        json!([0, "child ok"]),
        "a program the copy runs: {v}"
    );
}

#[tokio::test]
async fn a_restored_copy_releases_and_grows_memory_like_the_original() {
    require_root!();
    let server = Server::start(&["--allow-forced-cold"]);
    let spec = function(
        "anon",
        ANON,
        json!({"warmup": [{}], "keep_alive_s": 600, "memory_mb": 512, "timeout_ms": 60000}),
    );
    let rec = server.deploy_ready(spec).await;
    assert!(!rec["snapshot"].is_null(), "{rec}");
    for _ in 0..2 {
        let a = server
            .invoke_raw(
                "anon",
                serde_json::to_vec(&json!({"op": "check"})).unwrap(),
                &[("x-thaw-cold", "restore")],
            )
            .await;
        assert_eq!(a.status, 200, "{}", a.text());
        assert_eq!(a.header("x-thaw-start"), "restore");
        check_answer(&a.json(), true);
    }
    // The original, warm, answers the same.
    let a = server.invoke("anon", json!({"op": "check"})).await;
    assert_eq!(a.status, 200, "{}", a.text());
    check_answer(&a.json(), false);
}
