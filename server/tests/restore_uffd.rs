//! `uffd` memory mode through the server: restored copies whose private
//! memory is anonymous and filled by a userfaultfd page server of the
//! server process (docs/restore.md), real sandboxes, real HTTP.

mod common;

use std::time::{Duration, Instant};

use common::{function, pid_alive, Server};
use serde_json::{json, Value};

/// A function with 32 MiB of patterned data made before the snapshot, a
/// counter the warm-up advances, and the memory operations of acceptance 5
/// on areas mapped before the snapshot (`ctypes`).
const PAGES: &str = r#"
import ctypes, hashlib, json, mmap, os, sys, time
import thaw

PAGE = 4096
BLOCK = bytes((i * 7 + 1) % 251 for i in range(1 << 16))
BIG = bytearray(BLOCK) * 512                     # 32 MiB, no zero page
DIGEST = hashlib.sha256(BIG).hexdigest()
CALLS = 0

libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
libc.mremap.restype = ctypes.c_void_p
libc.mremap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t, ctypes.c_int]
libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
libc.sbrk.restype = ctypes.c_void_p
libc.sbrk.argtypes = [ctypes.c_long]

def anon(pages, fill):
    p = libc.mmap(None, pages * PAGE, 3, 0x22, -1, 0)     # rw, private|anonymous
    ctypes.memset(p, fill, pages * PAGE)
    return p

DONTNEED = anon(64, 0xab)
GROW = anon(16, 0xcd)

def read(addr, n):
    return ctypes.string_at(addr, n)

def handler(event, context):
    global CALLS
    CALLS += 1
    op = event.get("op", "count")
    if op == "count":
        return {"calls": CALLS, "copy": thaw.is_copy(), "digest": hashlib.sha256(BIG).hexdigest() == DIGEST}
    if op == "slow-touch":
        # Page by page, slowly: most pages are still missing for a long time.
        total = 0
        for i in range(0, min(len(BIG), event.get("pages", 1 << 30) * PAGE), PAGE):
            total += BIG[i]
            time.sleep(0.002)
        return {"total": total}
    if op == "touch":
        return {"digest": hashlib.sha256(BIG).hexdigest() == DIGEST}
    if op == "churn":
        ok = True
        for round in range(3):
            b = bytearray(os.urandom(1 << 20)) * 100          # 100 MiB
            ok = ok and len(b) == 100 << 20 and b[-1] == b[(99 << 20) + (1 << 20) - 1]
            del b
        return {"ok": ok, "digest": hashlib.sha256(BIG).hexdigest() == DIGEST, "calls": CALLS}
    if op == "dontneed":
        before = read(DONTNEED, 64 * PAGE)
        rc = libc.madvise(DONTNEED, 64 * PAGE, 4)             # MADV_DONTNEED
        after = read(DONTNEED, 64 * PAGE)
        return {"rc": rc, "before": before == b"\xab" * (64 * PAGE), "zeros": after == bytes(64 * PAGE)}
    if op == "mremap":
        p = libc.mremap(GROW, 16 * PAGE, 64 * PAGE, 1)        # MREMAP_MAYMOVE
        if p == ctypes.c_void_p(-1).value:
            return {"error": ctypes.get_errno()}
        return {"kept": read(p, 16 * PAGE) == b"\xcd" * (16 * PAGE),
                "zeros": read(p + 16 * PAGE, 48 * PAGE) == bytes(48 * PAGE)}
    if op == "brk-stack":
        start = libc.sbrk(0)
        got = libc.sbrk(64 * PAGE)
        ok_brk = got == start and libc.sbrk(0) == start + 64 * PAGE
        ctypes.memset(start, 0x5a, 64 * PAGE)
        ok_brk = ok_brk and read(start, 64 * PAGE) == b"\x5a" * (64 * PAGE)
        libc.sbrk(-64 * PAGE)
        # The C json scanner recurses: megabytes of stack below the
        # snapshot's.
        sys.setrecursionlimit(20000)
        depth = 8000
        nested = json.loads("[" * depth + "]" * depth)
        n = 0
        while nested:
            nested = nested[0]
            n += 1
        return {"brk": ok_brk, "stack": n == depth - 1}
    raise ValueError(op)
"#;

fn spec(name: &str, extra: Value) -> Value {
    let mut extra = extra;
    for (k, v) in [
        ("warmup", json!([{}, {}, {}])),
        ("memory_mb", json!(768)),
        ("keep_alive_s", json!(600)),
        ("timeout_ms", json!(60_000)),
    ] {
        if extra.get(k).is_none() {
            extra[k] = v;
        }
    }
    function(name, PAGES, extra)
}

async fn restore(server: &Server, name: &str, event: Value) -> common::Answer {
    server
        .invoke_raw(
            name,
            serde_json::to_vec(&event).unwrap(),
            &[("x-thaw-cold", "restore")],
        )
        .await
}

/// The most bytes of the snapshot image any process of the server's
/// sandboxes maps writable-private, sampled while a copy runs
/// `slow-touch`: in mmap mode the 32 MiB heap is among them; in uffd mode
/// only private file pages written before the capture (small overlays) are.
async fn copy_maps_image(server: &std::sync::Arc<Server>, name: &str) -> u64 {
    let images = server.data.canonicalize().unwrap().join("store/images");
    let s2 = server.clone();
    let name2 = name.to_string();
    let slow = tokio::spawn(async move {
        restore(&s2, &name2, json!({"op": "slow-touch", "pages": 500})).await
    });
    let mut mapped = 0;
    let mut seen_copy = false;
    let t0 = Instant::now();
    while !slow.is_finished() && t0.elapsed() < Duration::from_secs(20) {
        for pid in server.sandbox_pids() {
            let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
            // The copy: the function's 32 MiB are mapped somewhere.
            if maps.lines().count() > 50 {
                seen_copy = true;
            }
            let bytes: u64 = maps
                .lines()
                .filter(|l| l.contains(images.to_str().unwrap()) && l.contains(" rw-p "))
                .map(|l| {
                    let (a, b) = l
                        .split_whitespace()
                        .next()
                        .unwrap()
                        .split_once('-')
                        .unwrap();
                    u64::from_str_radix(b, 16).unwrap() - u64::from_str_radix(a, 16).unwrap()
                })
                .sum();
            mapped = mapped.max(bytes);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let a = slow.await.unwrap();
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.header("x-thaw-start"), "restore");
    assert!(seen_copy, "the copy's maps were read while it ran");
    mapped
}

#[tokio::test]
async fn a_uffd_copy_answers_from_the_snapshot_and_the_function_mode_wins() {
    require_root!();
    let server = std::sync::Arc::new(Server::start(&[
        "--allow-forced-cold",
        "--memory-mode",
        "uffd",
    ]));
    let rec = server.deploy_ready(spec("lazy", json!({}))).await;
    assert!(!rec["snapshot"].is_null(), "{rec}");
    assert_eq!(rec["memory_mode"], "uffd", "the server's default: {rec}");
    assert!(rec["spec"]["memory_mode"].is_null(), "{rec}");
    let a = restore(&server, "lazy", json!({})).await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.header("x-thaw-start"), "restore");
    let v = a.json();
    assert_eq!(
        v["calls"], 4,
        "the warm-up's 3 calls are in the snapshot: {v}"
    );
    assert_eq!(v["copy"], true);
    assert_eq!(v["digest"], true, "32 MiB served by the page server: {v}");
    let mapped = copy_maps_image(&server, "lazy").await;
    assert!(
        mapped < 32 << 20,
        "a uffd copy's heap is not the image ({mapped} bytes of it mapped)"
    );

    // A function asking for mmap gets mmap on this uffd server.
    let rec = server
        .deploy_ready(spec("mapped", json!({"memory_mode": "mmap"})))
        .await;
    assert_eq!(rec["memory_mode"], "mmap", "{rec}");
    assert_eq!(rec["spec"]["memory_mode"], "mmap", "{rec}");
    let mapped = copy_maps_image(&server, "mapped").await;
    assert!(
        mapped >= 32 << 20,
        "an mmap copy maps its heap from the image ({mapped} bytes)"
    );

    // A bad mode is refused and names the field.
    let a = server
        .deploy(spec("bad", json!({"memory_mode": "lazy"})))
        .await;
    assert_eq!(a.status, 400, "{}", a.text());
    assert!(a.text().contains("memory_mode"), "{}", a.text());
}

/// How many times the server process maps each file under
/// `store/images` (its `/proc/PID/maps` lines, by path).
fn server_image_maps(server: &Server) -> std::collections::BTreeMap<String, usize> {
    let images = server.data.canonicalize().unwrap().join("store/images");
    let maps = std::fs::read_to_string(format!("/proc/{}/maps", server.pid())).unwrap();
    let mut out = std::collections::BTreeMap::new();
    for l in maps.lines() {
        if let Some(at) = l.find(images.to_str().unwrap()) {
            *out.entry(l[at..].to_string()).or_insert(0) += 1;
        }
    }
    out
}

#[tokio::test]
async fn uffd_copies_running_at_once_share_the_servers_one_mapping_of_the_image() {
    require_root!();
    let server = std::sync::Arc::new(Server::start(&[
        "--allow-forced-cold",
        "--memory-mode",
        "uffd",
    ]));
    server.deploy_ready(spec("shared", json!({}))).await;
    // The first copy records the working set; the next ones prefetch it.
    let a = restore(&server, "shared", json!({})).await;
    assert_eq!(a.status, 200, "{}", a.text());
    // Three copies alive at once, each still faulting its heap in.
    let copies: Vec<_> = (0..3)
        .map(|_| {
            let s = server.clone();
            tokio::spawn(async move {
                restore(&s, "shared", json!({"op": "slow-touch", "pages": 1500})).await
            })
        })
        .collect();
    let mut most_copies = 0;
    let mut most_maps = std::collections::BTreeMap::new();
    let t0 = Instant::now();
    while copies.iter().any(|c| !c.is_finished()) && t0.elapsed() < Duration::from_secs(30) {
        // A copy: a sandbox process mapping far more than a stub does.
        let running = server
            .sandbox_pids()
            .into_iter()
            .filter(|pid| {
                std::fs::read_to_string(format!("/proc/{pid}/maps"))
                    .unwrap_or_default()
                    .lines()
                    .count()
                    > 50
            })
            .count();
        let maps = server_image_maps(&server);
        if running >= most_copies {
            most_copies = running;
            for (path, n) in maps {
                let e = most_maps.entry(path).or_insert(0);
                *e = n.max(*e);
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for c in copies {
        let a = c.await.unwrap();
        assert_eq!(a.status, 200, "{}", a.text());
        assert_eq!(a.header("x-thaw-start"), "restore");
    }
    assert!(
        most_copies >= 2,
        "copies ran side by side (at most {most_copies} seen)"
    );
    assert!(!most_maps.is_empty(), "the server maps the image");
    for (path, n) in &most_maps {
        assert_eq!(
            *n, 1,
            "{path}: mapped {n} times by the server with {most_copies} copies running: one mapping per image, not one per copy's page server"
        );
    }
}

#[tokio::test]
async fn a_uffd_function_on_an_mmap_server_records_then_prefetches_its_working_set() {
    require_root!();
    let mut server = Server::start(&["--allow-forced-cold"]);
    let rec = server
        .deploy_ready(spec("ws", json!({"memory_mode": "uffd"})))
        .await;
    assert_eq!(rec["memory_mode"], "uffd", "{rec}");
    assert!(
        rec["working_set"].is_null(),
        "none before a copy ran: {rec}"
    );

    // The first invocation of the first copy records what it touched.
    let a = restore(&server, "ws", json!({"op": "touch"})).await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.json()["digest"], true);
    let ws = wait_working_set(&server, "ws").await;
    let pages = ws["pages"].as_u64().unwrap();
    assert!(pages > 100, "the 32 MiB touched are in it: {ws}");
    assert_eq!(ws["bytes"].as_u64().unwrap(), pages * 4096);
    assert_eq!(ws["copies_prefetched"], 0, "{ws}");
    let file = working_set_file(&server);

    // A later server run reads it from disk and prefetches it.
    assert!(server.stop().success());
    server.spawn();
    let a = server.invoke("ws", json!({"op": "touch"})).await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.header("x-thaw-start"), "restore");
    assert_eq!(a.json()["digest"], true, "prefetched pages are right");
    let ws = server.get("/functions/ws").await.json()["working_set"].clone();
    assert_eq!(ws["pages"].as_u64().unwrap(), pages, "{ws}");
    assert_eq!(ws["copies_prefetched"], 1, "{ws}");
    assert!(
        ws["pages_prefetched"].as_u64().unwrap() >= pages / 2,
        "the copy's page server filled the working set ahead: {ws}"
    );

    // A corrupt file is ignored (never trusted), the copy still answers, and
    // the next first invocation records a good one again.
    assert!(server.stop().success());
    let mut bytes = std::fs::read(&file).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0xff;
    std::fs::write(&file, &bytes).unwrap();
    server.spawn();
    let v = server.get("/functions/ws").await.json();
    assert!(
        v["working_set"].is_null(),
        "a corrupt file is not shown: {v}"
    );
    let a = server.invoke("ws", json!({"op": "touch"})).await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.json()["digest"], true);
    let ws = wait_working_set(&server, "ws").await;
    assert_eq!(
        ws["copies_prefetched"], 0,
        "nothing prefetched from it: {ws}"
    );
    assert!(ws["pages"].as_u64().unwrap() > 100, "{ws}");
}

async fn wait_working_set(server: &Server, name: &str) -> Value {
    let t0 = Instant::now();
    loop {
        let v = server.get(&format!("/functions/{name}")).await.json();
        if !v["working_set"].is_null() {
            return v["working_set"].clone();
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "no working set recorded: {v}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn working_set_file(server: &Server) -> std::path::PathBuf {
    std::fs::read_dir(server.data.join("snapshots"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "workingset"))
        .expect("a .workingset file next to the snapshot")
}

#[tokio::test]
async fn a_failing_page_server_crashes_the_invocation_and_the_next_copy_works() {
    require_root!();
    // Without the opt-in the test switch is refused.
    let server = Server::start(&["--memory-mode", "uffd"]);
    server.deploy_ready(spec("fails", json!({}))).await;
    let a = server
        .invoke_raw(
            "fails",
            b"{}".to_vec(),
            &[("x-thaw-test-fail-page-server", "1")],
        )
        .await;
    assert_eq!(a.status, 403, "{}", a.text());
    drop(server);

    let server = Server::start(&["--allow-forced-cold", "--memory-mode", "uffd"]);
    server.deploy_ready(spec("fails", json!({}))).await;
    let a = server
        .invoke_raw(
            "fails",
            serde_json::to_vec(&json!({"op": "touch"})).unwrap(),
            &[
                ("x-thaw-cold", "restore"),
                ("x-thaw-test-fail-page-server", "1"),
            ],
        )
        .await;
    assert_eq!(a.status, 502, "{}", a.text());
    assert_eq!(a.json()["error"], "function_crashed", "{}", a.text());
    // The copy is gone, not handed zeros; the next copy answers.
    let a = restore(&server, "fails", json!({"op": "touch"})).await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.json()["digest"], true);
}

#[tokio::test]
async fn kill_9_of_the_server_kills_uffd_copies_mid_fault_within_a_second() {
    require_root!();
    let mut server = Server::start(&["--allow-forced-cold", "--memory-mode", "uffd"]);
    server
        .deploy_ready(spec("touchy", json!({"concurrency": 4})))
        .await;
    // A process with many mappings is a runtime (the booted original now,
    // restored copies later); stubs and inits map few. A copy restored into
    // a spare keeps the spare stub's pid, so the pids present now are not
    // all excluded: only the runtimes among them.
    let maps_many = |p: &i32| {
        std::fs::read_to_string(format!("/proc/{p}/maps"))
            .map(|m| m.lines().count() > 50)
            .unwrap_or(false)
    };
    let original: Vec<i32> = server
        .sandbox_pids()
        .into_iter()
        .filter(maps_many)
        .collect();
    // Three copies touching their 32 MiB page by page (no working set yet:
    // nothing is prefetched). The requests fail when the server dies.
    let tasks: Vec<_> = (0..3)
        .map(|_| {
            let req = server
                .http
                .post(format!("{}/functions/touchy/invoke", server.url))
                .header("x-thaw-cold", "restore")
                .body(r#"{"op": "slow-touch"}"#);
            tokio::spawn(async move { req.send().await.map(|r| r.status().as_u16()) })
        })
        .collect();
    // Wait for three restored copies (a restored Python maps hundreds of
    // areas; stubs, inits and spare stubs a few).
    let t0 = Instant::now();
    loop {
        let restored = server
            .sandbox_pids()
            .into_iter()
            .filter(|p| !original.contains(p))
            .filter(maps_many)
            .count();
        if restored >= 3 {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "copies did not start ({restored} restored)"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Let them fault for a while: each takes ~16 s to touch every page.
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Every process of every sandbox: copies, their inits, spare stubs.
    let copies = server.sandbox_pids();
    server.kill9();
    let killed = Instant::now();
    let deadline = killed + Duration::from_secs(1);
    let mut alive: Vec<i32> = copies.clone();
    while !alive.is_empty() && Instant::now() < deadline {
        alive.retain(|p| pid_alive(*p));
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(
        alive.is_empty(),
        "copies alive 1 s after kill -9 of the server: {alive:?}"
    );
    for t in tasks {
        let r = t.await.unwrap();
        assert!(r.is_err(), "no answer from a killed server: {r:?}");
    }
    // After a restart, invocations work.
    server.spawn();
    let a = server.invoke("touchy", json!({"op": "touch"})).await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.json()["digest"], true);
}

/// Acceptance 5 in one memory mode: allocation churn, MADV_DONTNEED zeros,
/// mremap growth zeros, brk and stack growth, each on a fresh copy.
async fn acceptance_5(mode: &str) {
    let server = Server::start(&["--allow-forced-cold", "--memory-mode", mode]);
    let name = format!("acc-{mode}");
    server.deploy_ready(spec(&name, json!({}))).await;
    let v = restore(&server, &name, json!({"op": "churn"})).await;
    assert_eq!(v.status, 200, "{mode}: {}", v.text());
    let v = v.json();
    assert_eq!(v["ok"], true, "{mode}: {v}");
    assert_eq!(v["digest"], true, "{mode}: {v}");
    // The same copy stays warm and keeps answering (non-forced: restore,
    // then warm).
    for i in 0..3 {
        let a = server.invoke(&name, json!({"op": "churn"})).await;
        assert_eq!(a.status, 200, "{mode} round {i}: {}", a.text());
        assert_eq!(a.json()["ok"], true, "{mode}: {}", a.text());
        assert_eq!(a.json()["digest"], true, "{mode}: {}", a.text());
    }
    let v = restore(&server, &name, json!({"op": "dontneed"}))
        .await
        .json();
    assert_eq!(v["rc"], 0, "{mode}: {v}");
    assert_eq!(v["before"], true, "{mode}: {v}");
    assert_eq!(v["zeros"], true, "{mode}: MADV_DONTNEED reads zeros: {v}");
    let v = restore(&server, &name, json!({"op": "mremap"}))
        .await
        .json();
    assert_eq!(v["kept"], true, "{mode}: {v}");
    assert_eq!(v["zeros"], true, "{mode}: the grown part is zeros: {v}");
    let v = restore(&server, &name, json!({"op": "brk-stack"}))
        .await
        .json();
    assert_eq!(v["brk"], true, "{mode}: {v}");
    assert_eq!(v["stack"], true, "{mode}: {v}");
}

#[tokio::test]
async fn acceptance_5_memory_semantics_in_uffd_mode() {
    require_root!();
    acceptance_5("uffd").await;
}

/// The mmap arm: anonymous semantics over the image come from the
/// anonymous-semantics work (seccomp-trapped madvise and mremap).
#[tokio::test]
async fn acceptance_5_memory_semantics_in_mmap_mode() {
    require_root!();
    acceptance_5("mmap").await;
}
