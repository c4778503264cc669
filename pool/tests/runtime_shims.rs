//! The Node.js and Java runtimes' `restored` path, driven through the
//! protocol codec over real pipes on fds 3 and 4 (no sandbox): until
//! multi-threaded processes can be snapshotted this is where a copy's
//! reseeding and hooks are tested.
//!
//! Copies start from the same state. Two processes started with the same
//! seeds (V8's `--random-seed`; the JDK generators seeded by the handler at
//! init) stand for two copies: they draw the same numbers until `restored`,
//! and different ones after. Needs `/usr/bin/node` and `/usr/bin/cc`, or
//! `/usr/bin/java` and `/usr/bin/javac`; a missing one skips with the
//! reason, and fails under `THAW_TEST_STRICT=1`.

use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use nix::fcntl::OFlag;
use pool::protocol::{read_frame, write_frame, FromRuntime, ToRuntime};
use serde_json::{json, Value};
use tokio::net::unix::pipe;

/// Only a guard so that a broken runtime fails the test instead of hanging.
const HANG_GUARD: Duration = Duration::from_secs(120);

fn have(programs: &[&str]) -> bool {
    for p in programs {
        if !Path::new(p).exists() {
            let msg = format!("{p} is missing");
            if std::env::var_os("THAW_TEST_STRICT").is_some() {
                panic!("THAW_TEST_STRICT: {msg}");
            }
            eprintln!("skipped: {msg}");
            return false;
        }
    }
    true
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("pool has a parent directory")
        .to_path_buf()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as u64
}

fn run(cmd: &mut Command) {
    let out = cmd.output().expect("run a build tool");
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let dst = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dst);
        } else {
            std::fs::copy(e.path(), dst).unwrap();
        }
    }
}

/// One runtime process and thaw's ends of its pipes.
struct Proc {
    child: Child,
    requests: pipe::Sender,
    answers: pipe::Receiver,
    logs: tempfile::TempDir,
}

impl Proc {
    fn spawn(argv: &[String], cwd: &Path, env: &[(&str, String)]) -> Proc {
        let (req_r, req_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).expect("pipe2");
        let (ans_r, ans_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).expect("pipe2");
        let logs = tempfile::tempdir().expect("temp dir");
        let stdout = std::fs::File::create(logs.path().join("stdout")).unwrap();
        let stderr = std::fs::File::create(logs.path().join("stderr")).unwrap();
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..])
            .current_dir(cwd)
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("THAW_FUNCTION", "test-fn")
            .env("THAW_VERSION", "1")
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let (child_in, child_out) = (req_r.as_raw_fd(), ans_w.as_raw_fd());
        // SAFETY: the closure runs in the forked child before exec and only
        // makes async-signal-safe calls (fcntl, dup2) on fds open in the child.
        unsafe {
            cmd.pre_exec(move || {
                let a = libc::fcntl(child_in, libc::F_DUPFD_CLOEXEC, 10);
                let b = libc::fcntl(child_out, libc::F_DUPFD_CLOEXEC, 10);
                if a < 0 || b < 0 || libc::dup2(a, 3) < 0 || libc::dup2(b, 4) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().expect("spawn the runtime");
        drop::<(OwnedFd, OwnedFd)>((req_r, ans_w));
        Proc {
            child,
            requests: pipe::Sender::from_owned_fd(req_w).expect("request pipe"),
            answers: pipe::Receiver::from_owned_fd(ans_r).expect("answer pipe"),
            logs,
        }
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(self.logs.path().join("stderr")).unwrap_or_default()
    }

    async fn frame(&mut self) -> (FromRuntime, Bytes) {
        match tokio::time::timeout(HANG_GUARD, read_frame(&mut self.answers)).await {
            Ok(Ok(f)) => f,
            Ok(Err(e)) => panic!("no frame: {e}; stderr:\n{}", self.stderr()),
            Err(_) => panic!("nothing for {HANG_GUARD:?}; stderr:\n{}", self.stderr()),
        }
    }

    async fn ready(&mut self, runtime: &str) {
        match self.frame().await.0 {
            FromRuntime::Ready {
                runtime: r, pid, ..
            } => {
                assert_eq!(r, runtime);
                assert_eq!(pid, self.child.id());
            }
            other => panic!("expected ready, got {other:?}; stderr:\n{}", self.stderr()),
        }
    }

    async fn call(&mut self, event: Value) -> Value {
        self.call_as("call", event).await
    }

    /// An invocation with the given id (`warmup-N` for a warm-up one).
    async fn call_as(&mut self, id: &str, event: Value) -> Value {
        let msg = ToRuntime::Invoke {
            id: id.into(),
            deadline_ms: now_ms() + 60_000,
            function: "test-fn".into(),
            version: "1".into(),
            headers: BTreeMap::new(),
        };
        write_frame(&mut self.requests, &msg, event.to_string().as_bytes())
            .await
            .expect("write frame");
        match self.frame().await {
            (FromRuntime::Result { status: 200, .. }, body) => {
                serde_json::from_slice(&body).expect("JSON answer")
            }
            other => panic!(
                "expected a result, got {other:?}; stderr:\n{}",
                self.stderr()
            ),
        }
    }

    async fn restored(&mut self, seed: &str) -> FromRuntime {
        write_frame(
            &mut self.requests,
            &ToRuntime::Restored { seed: seed.into() },
            b"",
        )
        .await
        .expect("write frame");
        self.frame().await.0
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const OK: FromRuntime = FromRuntime::Restored {
    ok: true,
    message: None,
};

// ---- Node.js -------------------------------------------------------------------

const NODE_HANDLER: &str = r#"
const crypto = require('crypto');
const thaw = require('thaw');
const hooks = [];
thaw.onRestore(() => { hooks.push('first'); });
thaw.onRestore(async () => {
  hooks.push('second');
  if (process.env.FAIL_HOOK) throw new Error('cannot reconnect');
});
const early = Math.random; // a reference taken before the snapshot
crypto.randomUUID(); // fills the UUID cache before the "snapshot"
exports.handler = async () => ({
  r: Math.random(), early: early(), hooks, copy: thaw.isCopy(),
  uuid: crypto.randomUUID(), int: crypto.randomInt(1 << 30),
});
"#;

/// The node runtime folder with its addon built, and a task folder.
fn node_setup() -> (tempfile::TempDir, tempfile::TempDir) {
    let rt = tempfile::tempdir().unwrap();
    copy_dir(&repo_root().join("runtimes/node"), rt.path());
    run(Command::new("/usr/bin/cc")
        .args(["-shared", "-fPIC", "-O2", "-o", "reseed.node", "reseed.c"])
        .current_dir(rt.path()));
    let task = tempfile::tempdir().unwrap();
    std::fs::write(task.path().join("index.js"), NODE_HANDLER).unwrap();
    (rt, task)
}

fn node(rt: &Path, task: &Path, extra: &[(&str, String)]) -> Proc {
    let argv = vec![
        "/usr/bin/node".to_string(),
        // Every copy starts from one state: so do these two processes.
        "--random-seed=42".into(),
        rt.join("bootstrap.js").display().to_string(),
    ];
    let mut env = vec![
        ("THAW_TASK_DIR", task.display().to_string()),
        ("THAW_HANDLER", "index.handler".to_string()),
        ("NODE_PATH", rt.join("node_modules").display().to_string()),
    ];
    env.extend(extra.iter().cloned());
    Proc::spawn(&argv, task, &env)
}

#[tokio::test]
async fn node_restored_replaces_math_random_and_runs_hooks() {
    if !have(&["/usr/bin/node", "/usr/bin/cc"]) {
        return;
    }
    let (rt, task) = node_setup();
    let mut a = node(rt.path(), task.path(), &[]);
    let mut b = node(rt.path(), task.path(), &[]);
    a.ready("node20").await;
    b.ready("node20").await;
    let a1 = a.call(json!({})).await;
    let b1 = b.call(json!({})).await;
    assert_eq!(a1["r"], b1["r"], "the control: same V8 seed, same numbers");
    assert_eq!(a1["copy"], false);
    assert_eq!(a1["hooks"], json!([]));

    let seed = "5a".repeat(32);
    assert_eq!(a.restored(&seed).await, OK, "stderr:\n{}", a.stderr());
    assert_eq!(b.restored(&seed).await, OK, "stderr:\n{}", b.stderr());
    let a2 = a.call(json!({})).await;
    let b2 = b.call(json!({})).await;
    assert_ne!(a2["r"], b2["r"], "Math.random repeats across copies");
    assert_ne!(a2["uuid"], b2["uuid"]);
    assert_ne!(a2["int"], b2["int"]);
    // As documented: a reference taken before the snapshot still repeats.
    assert_eq!(a2["early"], b2["early"]);
    assert_eq!(a2["hooks"], json!(["first", "second"]));
    assert_eq!(a2["copy"], true);
    let r = a2["r"].as_f64().unwrap();
    assert!((0.0..1.0).contains(&r), "{r}");
}

const NODE_HEAP_HANDLER: &str = r#"
const v8 = require('v8');
const vm = require('vm');
let kept = 0;
exports.handler = async (event) => {
  if (event.garbage) {
    const a = [];
    for (let i = 0; i < 4000; i++) a.push({ i, s: `item ${i}` });
    kept += a.length;
    return { ok: true };
  }
  const young = v8.getHeapSpaceStatistics().find((s) => s.space_name === 'new_space');
  return { young: young.space_used_size, gc: typeof gc, gcInContext: vm.runInNewContext('typeof gc') };
};
"#;

/// thaw snapshots right after the last warm-up answer: the runtime answers
/// a warm-up invocation only after a young-generation collection, so copies
/// do not start with a new space full of the warm-up's garbage (which the
/// first allocations of every copy would scavenge). It gets the collector
/// without exposing `gc` to the function.
#[tokio::test]
async fn node_warmup_answers_leave_an_empty_young_generation_and_no_gc_global() {
    if !have(&["/usr/bin/node", "/usr/bin/cc"]) {
        return;
    }
    let (rt, task) = node_setup();
    std::fs::write(task.path().join("index.js"), NODE_HEAP_HANDLER).unwrap();
    let mut p = node(rt.path(), task.path(), &[]);
    p.ready("node20").await;
    // An empty young generation first, then the control: garbage made by
    // an ordinary invocation is still there at the next one.
    p.call_as("warmup-1", json!({"garbage": true})).await;
    p.call(json!({"garbage": true})).await;
    let control = p.call(json!({})).await;
    let control_young = control["young"].as_u64().unwrap();
    assert!(
        control_young >= 150_000,
        "the control's garbage is gone ({control_young} bytes young): the test cannot tell"
    );
    p.call_as("warmup-2", json!({"garbage": true})).await;
    let settled = p.call(json!({})).await;
    let settled_young = settled["young"].as_u64().unwrap();
    assert!(
        settled_young < control_young / 3,
        "after a warm-up answer {settled_young} bytes young, against {control_young} after an ordinary one"
    );
    assert_eq!(settled["gc"], "undefined", "gc is exposed to the function");
    assert_eq!(
        settled["gcInContext"], "undefined",
        "gc is exposed in new contexts"
    );
    assert!(
        !p.stderr().contains("garbage collector"),
        "stderr:\n{}",
        p.stderr()
    );
}

#[tokio::test]
async fn node_failing_restore_hook_answers_not_ok() {
    if !have(&["/usr/bin/node", "/usr/bin/cc"]) {
        return;
    }
    let (rt, task) = node_setup();
    let mut p = node(rt.path(), task.path(), &[("FAIL_HOOK", "1".into())]);
    p.ready("node20").await;
    assert_eq!(
        p.restored(&"00".repeat(32)).await,
        FromRuntime::Restored {
            ok: false,
            message: Some("restore hook anonymous raised Error: cannot reconnect".into()),
        }
    );
    let after = p.call(json!({})).await;
    assert_eq!(after["hooks"], json!(["first", "second"]));
}

#[tokio::test]
async fn node_without_its_reseeding_addon_refuses_to_be_a_copy() {
    if !have(&["/usr/bin/node"]) {
        return;
    }
    let rt = tempfile::tempdir().unwrap();
    copy_dir(&repo_root().join("runtimes/node"), rt.path());
    let task = tempfile::tempdir().unwrap();
    std::fs::write(task.path().join("index.js"), NODE_HANDLER).unwrap();
    let mut p = node(rt.path(), task.path(), &[]);
    p.ready("node20").await;
    match p.restored(&"00".repeat(32)).await {
        FromRuntime::Restored { ok: false, message } => {
            let m = message.unwrap_or_default();
            assert!(m.contains("reseeding failed") && m.contains("addon"), "{m}");
        }
        other => panic!("a copy that cannot reseed OpenSSL was accepted: {other:?}"),
    }
}

// ---- Java ------------------------------------------------------------------------

const JAVA_HANDLER: &str = r#"
package t;

import java.lang.reflect.Field;
import java.util.Random;
import java.util.UUID;
import java.util.concurrent.ThreadLocalRandom;

public class H {
    static final StringBuilder HOOKS = new StringBuilder();

    static {
        try {
            // Every copy starts from one state: so do these two processes.
            Class<?> holder = Class.forName("java.lang.Math$RandomNumberGeneratorHolder");
            Field f = holder.getDeclaredField("randomNumberGenerator");
            f.setAccessible(true);
            ((Random) f.get(null)).setSeed(42);
            ThreadLocalRandom.current();
            Field s = Thread.class.getDeclaredField("threadLocalRandomSeed");
            s.setAccessible(true);
            s.setLong(Thread.currentThread(), 42);
        } catch (ReflectiveOperationException e) {
            throw new RuntimeException(e);
        }
        thaw.Runtime.onRestore(() -> HOOKS.append("first,"));
        thaw.Runtime.onRestore(() -> {
            HOOKS.append("second,");
            if (System.getenv("FAIL_HOOK") != null) throw new IllegalStateException("cannot reconnect");
        });
    }

    public static String handle(String event) {
        return "{\"r\": " + Math.random() + ", \"tlr\": " + ThreadLocalRandom.current().nextLong()
            + ", \"random\": " + new Random().nextLong() + ", \"uuid\": \"" + UUID.randomUUID()
            + "\", \"hooks\": \"" + HOOKS + "\", \"copy\": " + thaw.Runtime.isCopy() + "}";
    }
}
"#;

/// The compiled shim and handler.
fn java_setup() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let shim = repo_root().join("runtimes/java/thaw");
    let mut sources: Vec<PathBuf> = std::fs::read_dir(&shim)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "java"))
        .collect();
    std::fs::create_dir_all(dir.path().join("src/t")).unwrap();
    let handler = dir.path().join("src/t/H.java");
    std::fs::write(&handler, JAVA_HANDLER).unwrap();
    sources.push(handler);
    run(Command::new("/usr/bin/javac")
        .args(["-encoding", "UTF-8", "-proc:none", "-d"])
        .arg(dir.path().join("classes"))
        .args(&sources));
    dir
}

/// The JVM options of runtimes/java/runtime.toml that matter here.
fn java(dir: &Path, extra: &[(&str, String)]) -> Proc {
    let mut argv: Vec<String> = [
        "/usr/bin/java",
        "-XX:-UsePerfData",
        "-XX:+UseSerialGC",
        "--add-opens=java.base/java.io=ALL-UNNAMED",
        "--add-opens=java.base/java.lang=ALL-UNNAMED",
        "--add-opens=java.base/java.util=ALL-UNNAMED",
        "--add-opens=java.base/java.util.concurrent=ALL-UNNAMED",
        "-cp",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    argv.push(dir.join("classes").display().to_string());
    argv.push("thaw.Bootstrap".into());
    let mut env = vec![("THAW_HANDLER", "t.H::handle".to_string())];
    env.extend(extra.iter().cloned());
    Proc::spawn(&argv, dir, &env)
}

#[tokio::test]
async fn java_restored_reseeds_the_jdk_generators_and_runs_hooks() {
    if !have(&["/usr/bin/java", "/usr/bin/javac"]) {
        return;
    }
    let dir = java_setup();
    let mut a = java(dir.path(), &[]);
    let mut b = java(dir.path(), &[]);
    a.ready("java17").await;
    b.ready("java17").await;
    let a1 = a.call(json!({})).await;
    let b1 = b.call(json!({})).await;
    assert_eq!(a1["r"], b1["r"], "the control: same seed, same Math.random");
    assert_eq!(a1["tlr"], b1["tlr"], "the control: same ThreadLocalRandom");
    assert_eq!(a1["copy"], false);

    let seed = "5a".repeat(32);
    assert_eq!(a.restored(&seed).await, OK, "stderr:\n{}", a.stderr());
    assert_eq!(b.restored(&seed).await, OK, "stderr:\n{}", b.stderr());
    let a2 = a.call(json!({})).await;
    let b2 = b.call(json!({})).await;
    assert_ne!(a2["r"], b2["r"], "Math.random repeats across copies");
    assert_ne!(
        a2["tlr"], b2["tlr"],
        "ThreadLocalRandom repeats across copies"
    );
    assert_ne!(a2["random"], b2["random"]);
    assert_ne!(a2["uuid"], b2["uuid"]);
    assert_eq!(a2["hooks"], "first,second,");
    assert_eq!(a2["copy"], true);
}

#[tokio::test]
async fn java_failing_restore_hook_answers_not_ok() {
    if !have(&["/usr/bin/java", "/usr/bin/javac"]) {
        return;
    }
    let dir = java_setup();
    let mut p = java(dir.path(), &[("FAIL_HOOK", "1".into())]);
    p.ready("java17").await;
    match p.restored(&"00".repeat(32)).await {
        FromRuntime::Restored { ok: false, message } => {
            let m = message.unwrap_or_default();
            assert!(
                m.contains("raised java.lang.IllegalStateException: cannot reconnect"),
                "{m}"
            );
        }
        other => panic!("expected ok: false, got {other:?}"),
    }
    let after = p.call(json!({})).await;
    assert_eq!(after["hooks"], "first,second,");
}

const JIT_CHECK: &str = r#"
package thaw;

import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.util.stream.Stream;

public class JitCheck {
    static long hot(int n) {
        long s = 0;
        for (int i = 0; i < n; i++) s += Integer.toString(i).hashCode() ^ (s >>> 3);
        return s;
    }

    public static void main(String[] args) throws Exception {
        String running = "123 (C2 CompilerThre) R 1 2 3";
        String sleeping = "123 (C2 CompilerThre) S 1 2 3";
        if (!Jit.compiling("C2 CompilerThre", running) || Jit.compiling("C2 CompilerThre", sleeping)
                || Jit.compiling("main", running)) {
            throw new AssertionError("Jit.compiling misreads a stat line");
        }
        long s = hot(3_000_000);
        Jit.settle();
        boolean busy = Jit.anyCompiling();
        long sockets;
        try (Stream<Path> fds = Files.list(Paths.get("/proc/self/fd"))) {
            sockets = fds.filter(p -> {
                try {
                    return Files.readSymbolicLink(p).toString().startsWith("socket:");
                } catch (Exception e) {
                    return false;
                }
            }).count();
        }
        System.out.println("after settle (" + s + "): sockets " + sockets);
        System.out.println(busy ? "BUSY" : sockets == 0 ? "IDLE" : "SOCKET");
    }
}
"#;

#[test]
fn java_jit_settle_waits_for_an_empty_compile_queue() {
    if !have(&["/usr/bin/java", "/usr/bin/javac"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let shim = repo_root().join("runtimes/java/thaw");
    let mut sources: Vec<PathBuf> = std::fs::read_dir(&shim)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "java"))
        .collect();
    let check = dir.path().join("JitCheck.java");
    std::fs::write(&check, JIT_CHECK).unwrap();
    sources.push(check);
    run(Command::new("/usr/bin/javac")
        .args(["-encoding", "UTF-8", "-proc:none", "-d"])
        .arg(dir.path().join("classes"))
        .args(&sources));
    let out = Command::new("/usr/bin/java")
        .args(["-XX:-UsePerfData", "-XX:+UseSerialGC", "-cp"])
        .arg(dir.path().join("classes"))
        .arg("thaw.JitCheck")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Settle returned with no compiler thread running, and left no socket
    // behind (capture refuses sockets outside the protocol's fds).
    assert!(text.trim_end().ends_with("IDLE"), "{text}");
}
