//! The Python runtime (`runtimes/python/bootstrap.py`) driven through the
//! protocol codec: a real `/usr/bin/python3` with real pipes on fds 3 and 4,
//! no sandbox.
//!
//! Skips (with a message) when `/usr/bin/python3` is missing; the numpy test
//! and the numpy-pandas example get numpy and pandas from the package index
//! (`restore_support::numpy_pandas`) and skip when pip cannot install them.

mod restore_support;

use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use nix::fcntl::OFlag;
use pool::protocol::{
    read_frame, write_frame, write_message, FromRuntime, ProtocolError, ToRuntime, PROTOCOL_VERSION,
};
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::net::unix::pipe;

const PYTHON: &str = "/usr/bin/python3";

/// Longest we wait for one frame before calling the runtime hung. Not a speed
/// assertion: only a guard so a broken runtime fails the test instead of
/// hanging it.
const HANG_GUARD: Duration = Duration::from_secs(120);

/// A handler module with one code path per test, chosen by `event["op"]`.
const TEST_HANDLER: &str = r#"
import os, random, subprocess, sys
import thaw

random.seed(12345)  # every process starts from the same random state
hooks_ran = []

@thaw.on_restore
def first():
    hooks_ran.append("first")

@thaw.on_restore
def second():
    hooks_ran.append("second")
    if os.environ.get("FAIL_HOOK"):
        raise RuntimeError("cannot reconnect")

class Oops(Exception):
    pass

def handler(event, context):
    if isinstance(event, bytes):
        return event
    if event is None:
        return thaw.Response("no event", status=200)
    if not isinstance(event, dict):
        return {"type": type(event).__name__, "value": event}
    op = event.get("op")
    if op == "echo":
        return {"event": event, "event_type": type(event).__name__}
    if op == "str":
        return "h\u00e9llo w\u00f6rld"
    if op == "bytes":
        return b"\x00\x01\xff"
    if op == "none":
        return None
    if op == "response":
        return thaw.Response({"made": 1}, status=201, headers={"X-Thing": "yes"})
    if op == "response_csv":
        return thaw.Response("a,b\n", status=202, headers={"Content-Type": "text/csv"})
    if op == "response_empty":
        return thaw.Response(status=204)
    if op == "context":
        return {
            "invocation_id": context.invocation_id,
            "function": context.function,
            "version": context.version,
            "deadline_ms": context.deadline_ms,
            "headers": context.headers,
            "remaining_ms": context.remaining_ms(),
        }
    if op == "raise":
        raise ValueError("no good: " + event.get("why", ""))
    if op == "custom":
        raise Oops("custom failure")
    if op == "exit":
        sys.exit(3)
    if op == "unserialisable":
        return {"x": object()}
    if op == "nan":
        return {"x": float("nan")}
    if op == "surrogate":
        raise ValueError("bad \udcff name")
    if op == "huge_header":
        return thaw.Response("x", headers={"x-big": "a" * (2 << 20)})
    if op == "print":
        print("log line one")
        print("\x08\x00\x00\x00\x00\x00\x00\x00{\"type\":\"result\",\"id\":\"fake\"}")
        sys.stderr.write("a line on stderr\n")
        sys.stdout.write("no newline at the end")
        return "printed"
    if op == "child_fds":
        out = subprocess.run(
            ["/bin/sh", "-c", "for f in 3 4; do [ -e /proc/$$/fd/$f ] && echo $f; done; true"],
            close_fds=False, capture_output=True, text=True,
        )
        return {"open": out.stdout.split()}
    if op == "random":
        return {"r": random.random(), "hooks": hooks_ran, "is_copy": thaw.is_copy()}
    return {"unknown_op": op}
"#;

/// Skips the test (see `skip!`) when `/usr/bin/python3` is missing.
macro_rules! require_python {
    () => {
        if !Path::new(PYTHON).exists() {
            skip!("{PYTHON} is not installed");
        }
    };
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

/// A task directory holding `main.py`.
fn task_dir(main_py: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("main.py"), main_py).expect("write main.py");
    dir
}

/// The runtime's `PYTHONPATH` with numpy and pandas first (installed once
/// per machine from the package index: `restore_support::numpy_pandas`);
/// says why not (see `restore_support::missing`).
fn numpy_pythonpath(test: &str) -> Option<String> {
    let numpy = restore_support::numpy_path(test)?;
    let runtime_dir = repo_root().join("runtimes/python");
    Some(format!("{numpy}:{}", runtime_dir.display()))
}

/// One runtime process and thaw's ends of its pipes.
struct Runtime {
    child: Child,
    requests: Option<pipe::Sender>,
    answers: pipe::Receiver,
    logs: tempfile::TempDir,
}

impl Runtime {
    /// Starts the bootstrap on `task`, handler `main.handler` unless `env`
    /// sets `THAW_HANDLER`.
    fn spawn(task: &Path, env: &[(&str, &str)]) -> Runtime {
        let (req_r, req_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).expect("pipe2");
        let (ans_r, ans_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).expect("pipe2");
        let logs = tempfile::tempdir().expect("temp dir");
        let stdout = std::fs::File::create(logs.path().join("stdout")).expect("stdout file");
        let stderr = std::fs::File::create(logs.path().join("stderr")).expect("stderr file");

        let runtime_dir = repo_root().join("runtimes/python");
        let mut cmd = Command::new(PYTHON);
        cmd.arg(runtime_dir.join("bootstrap.py"))
            .current_dir(task)
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("PYTHONPATH", &runtime_dir)
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .env("PYTHONHASHSEED", "0")
            .env("OPENBLAS_NUM_THREADS", "1")
            .env("OMP_NUM_THREADS", "1")
            .env("MKL_NUM_THREADS", "1")
            .env("NUMEXPR_NUM_THREADS", "1")
            .env("THAW_TASK_DIR", task)
            .env("THAW_HANDLER", "main.handler")
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
        // makes async-signal-safe calls (fcntl, dup2) on fds that are open in
        // the child (they were inherited from the parent).
        unsafe {
            cmd.pre_exec(move || {
                // Move both ends out of the way first: one of them may already
                // sit on fd 3 or 4, and dup2 onto itself would keep CLOEXEC.
                let a = libc::fcntl(child_in, libc::F_DUPFD_CLOEXEC, 10);
                let b = libc::fcntl(child_out, libc::F_DUPFD_CLOEXEC, 10);
                if a < 0 || b < 0 || libc::dup2(a, 3) < 0 || libc::dup2(b, 4) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().expect("spawn python3 bootstrap.py");
        // The child's ends now live in the child only.
        drop::<(OwnedFd, OwnedFd)>((req_r, ans_w));
        Runtime {
            child,
            requests: Some(pipe::Sender::from_owned_fd(req_w).expect("request pipe")),
            answers: pipe::Receiver::from_owned_fd(ans_r).expect("answer pipe"),
            logs,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    async fn recv(&mut self) -> Result<(FromRuntime, Bytes), ProtocolError> {
        match tokio::time::timeout(HANG_GUARD, read_frame(&mut self.answers)).await {
            Ok(r) => r,
            Err(_) => panic!(
                "runtime sent nothing for {HANG_GUARD:?}; stderr:\n{}",
                self.stderr()
            ),
        }
    }

    async fn expect_frame(&mut self) -> (FromRuntime, Bytes) {
        match self.recv().await {
            Ok(f) => f,
            Err(e) => panic!("no frame from the runtime: {e}; stderr:\n{}", self.stderr()),
        }
    }

    async fn expect_ready(&mut self) {
        let (msg, body) = self.expect_frame().await;
        assert_eq!(
            msg,
            FromRuntime::Ready {
                pid: self.pid(),
                runtime: "python3".into(),
                protocol: PROTOCOL_VERSION,
            }
        );
        assert!(body.is_empty());
    }

    fn sender(&mut self) -> &mut pipe::Sender {
        self.requests.as_mut().expect("request pipe still open")
    }

    async fn send(&mut self, msg: &ToRuntime, body: &[u8]) {
        write_frame(self.sender(), msg, body)
            .await
            .expect("write frame");
    }

    /// Sends an invoke with a deadline a minute away and returns the answer.
    async fn invoke(&mut self, id: &str, event: &[u8]) -> (FromRuntime, Bytes) {
        let msg = ToRuntime::Invoke {
            id: id.into(),
            deadline_ms: now_ms() + 60_000,
            function: "test-fn".into(),
            version: "1".into(),
            headers: BTreeMap::new(),
        };
        self.send(&msg, event).await;
        self.expect_frame().await
    }

    /// Invokes with a JSON event and expects a 200 `result`; returns the body.
    async fn call(&mut self, event: Value) -> Bytes {
        let (msg, body) = self.invoke("call", event.to_string().as_bytes()).await;
        match msg {
            FromRuntime::Result {
                id, status: 200, ..
            } if id == "call" => body,
            other => panic!("expected a 200 result for {event}, got {other:?}"),
        }
    }

    async fn call_json(&mut self, event: Value) -> Value {
        let body = self.call(event).await;
        serde_json::from_slice(&body).expect("JSON answer")
    }

    async fn restored(&mut self, seed: &str) -> FromRuntime {
        self.send(&ToRuntime::Restored { seed: seed.into() }, b"")
            .await;
        self.expect_frame().await.0
    }

    /// Closes thaw's end of the request pipe and waits for the exit.
    fn close_and_wait(&mut self) -> ExitStatus {
        self.requests = None;
        self.child.wait().expect("wait")
    }

    fn wait(&mut self) -> ExitStatus {
        self.child.wait().expect("wait")
    }

    fn stdout(&self) -> String {
        std::fs::read_to_string(self.logs.path().join("stdout")).unwrap_or_default()
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(self.logs.path().join("stderr")).unwrap_or_default()
    }

    /// Waits until the process sits in a syscall (not running) and returns
    /// the fields of `/proc/PID/syscall`.
    fn blocked_syscall(&self) -> Vec<String> {
        let path = format!("/proc/{}/syscall", self.pid());
        for _ in 0..2000 {
            let line = std::fs::read_to_string(&path).expect("read /proc/PID/syscall");
            let fields: Vec<String> = line.split_whitespace().map(str::to_owned).collect();
            if fields.first().is_some_and(|f| f != "running") {
                return fields;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("runtime {} never blocked in a syscall", self.pid());
    }

    fn thread_count(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/task", self.pid()))
            .expect("read /proc/PID/task")
            .count()
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn header(headers: &BTreeMap<String, String>, name: &str) -> Option<String> {
    headers.get(name).cloned()
}

#[tokio::test]
async fn ready_then_json_event_gives_json_answer() {
    require_python!();
    let task = task_dir(TEST_HANDLER);
    let mut rt = Runtime::spawn(task.path(), &[]);
    rt.expect_ready().await;

    let (msg, body) = rt
        .invoke("inv-1", br#"{"op": "echo", "n": [1, 2.5, "x"]}"#)
        .await;
    let FromRuntime::Result {
        id,
        status,
        headers,
    } = msg
    else {
        panic!("expected a result, got {msg:?}");
    };
    assert_eq!(id, "inv-1");
    assert_eq!(status, 200);
    assert_eq!(
        header(&headers, "content-type").as_deref(),
        Some("application/json")
    );
    let answer: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        answer,
        json!({"event": {"op": "echo", "n": [1, 2.5, "x"]}, "event_type": "dict"})
    );
    assert_eq!(
        rt.close_and_wait().code(),
        Some(0),
        "EOF on fd 3 is a clean exit"
    );
}

#[tokio::test]
async fn event_decoding_bytes_and_empty() {
    require_python!();
    let task = task_dir(TEST_HANDLER);
    let mut rt = Runtime::spawn(task.path(), &[]);
    rt.expect_ready().await;

    // Not UTF-8: the handler gets bytes (and echoes them).
    let raw = b"\xff\xfe{\"op\": \"echo\"}\x00";
    let (msg, body) = rt.invoke("b", raw).await;
    let FromRuntime::Result {
        status: 200,
        headers,
        ..
    } = msg
    else {
        panic!("expected a result, got {msg:?}");
    };
    assert_eq!(&body[..], raw);
    assert_eq!(
        header(&headers, "content-type").as_deref(),
        Some("application/octet-stream")
    );
    // UTF-8 but not JSON: bytes too.
    let (_, body) = rt.invoke("t", b"plain words").await;
    assert_eq!(&body[..], b"plain words");
    // Empty body: event is None.
    let (_, body) = rt.invoke("n", b"").await;
    assert_eq!(&body[..], b"no event");
    // Any JSON value is decoded.
    assert_eq!(
        rt.call_json(json!("hi")).await,
        json!({"type": "str", "value": "hi"})
    );
    assert_eq!(
        rt.call_json(json!([1, 2])).await,
        json!({"type": "list", "value": [1, 2]})
    );
    // JSON null is None, like an empty body.
    assert_eq!(&rt.call(json!(null)).await[..], b"no event");
}

#[tokio::test]
async fn return_values_map_to_bodies_and_headers() {
    require_python!();
    let task = task_dir(TEST_HANDLER);
    let mut rt = Runtime::spawn(task.path(), &[]);
    rt.expect_ready().await;

    let cases: [(&str, u16, Option<&str>, &[u8]); 6] = [
        (
            "str",
            200,
            Some("text/plain; charset=utf-8"),
            "héllo wörld".as_bytes(),
        ),
        (
            "bytes",
            200,
            Some("application/octet-stream"),
            b"\x00\x01\xff",
        ),
        ("none", 200, Some("application/json"), b"null"),
        ("response", 201, Some("application/json"), br#"{"made": 1}"#),
        ("response_csv", 202, Some("text/csv"), b"a,b\n"),
        ("response_empty", 204, None, b""),
    ];
    for (op, want_status, want_type, want_body) in cases {
        let (msg, body) = rt
            .invoke(op, json!({"op": op}).to_string().as_bytes())
            .await;
        let FromRuntime::Result {
            id,
            status,
            headers,
        } = msg
        else {
            panic!("{op}: expected a result, got {msg:?}");
        };
        assert_eq!(id, op);
        assert_eq!(status, want_status, "{op}");
        assert_eq!(
            header(&headers, "content-type").as_deref(),
            want_type,
            "{op}"
        );
        assert_eq!(&body[..], want_body, "{op}");
        if op == "response" {
            assert_eq!(header(&headers, "x-thing").as_deref(), Some("yes"));
        }
    }
}

#[tokio::test]
async fn context_carries_the_invocation() {
    require_python!();
    let task = task_dir(TEST_HANDLER);
    let mut rt = Runtime::spawn(task.path(), &[]);
    rt.expect_ready().await;

    let deadline = now_ms() + 60_000;
    let msg = ToRuntime::Invoke {
        id: "ctx-1".into(),
        deadline_ms: deadline,
        function: "fn-name".into(),
        version: "7".into(),
        headers: BTreeMap::from([("x-request-id".to_string(), "r1".to_string())]),
    };
    rt.send(&msg, br#"{"op": "context"}"#).await;
    let (_, body) = rt.expect_frame().await;
    let ctx: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(ctx["invocation_id"], "ctx-1");
    assert_eq!(ctx["function"], "fn-name");
    assert_eq!(ctx["version"], "7");
    assert_eq!(ctx["deadline_ms"], deadline);
    assert_eq!(ctx["headers"], json!({"x-request-id": "r1"}));
    let remaining = ctx["remaining_ms"]
        .as_u64()
        .expect("remaining_ms is a number");
    assert!(
        remaining > 0 && remaining <= 60_000,
        "remaining_ms = {remaining}"
    );

    // A deadline in the past leaves nothing.
    let past = ToRuntime::Invoke {
        id: "ctx-2".into(),
        deadline_ms: 1,
        function: "fn-name".into(),
        version: "7".into(),
        headers: BTreeMap::new(),
    };
    rt.send(&past, br#"{"op": "context"}"#).await;
    let (_, body) = rt.expect_frame().await;
    let ctx: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(ctx["remaining_ms"], 0);
}

#[tokio::test]
async fn handler_errors_become_error_frames_and_the_runtime_keeps_serving() {
    require_python!();
    let task = task_dir(TEST_HANDLER);
    let mut rt = Runtime::spawn(task.path(), &[]);
    rt.expect_ready().await;

    let cases = [
        (
            json!({"op": "raise", "why": "bad input"}),
            "ValueError",
            "no good: bad input",
        ),
        (json!({"op": "custom"}), "main.Oops", "custom failure"),
        (json!({"op": "exit"}), "SystemExit", "3"),
        (
            json!({"op": "unserialisable"}),
            "TypeError",
            "Object of type object is not JSON serializable",
        ),
        (
            json!({"op": "nan"}),
            "ValueError",
            "Out of range float values are not JSON compliant",
        ),
    ];
    for (i, (event, want_type, want_message)) in cases.into_iter().enumerate() {
        let id = format!("err-{i}");
        let (msg, body) = rt.invoke(&id, event.to_string().as_bytes()).await;
        let FromRuntime::Error {
            id: got_id,
            error_type,
            message,
            traceback,
        } = msg
        else {
            panic!("{event}: expected an error frame, got {msg:?}");
        };
        assert_eq!(got_id, id);
        assert_eq!(error_type, want_type, "{event}");
        assert_eq!(message, want_message, "{event}");
        assert!(traceback.starts_with("Traceback"), "{event}: {traceback}");
        assert!(body.is_empty());
        // Still alive and serving after each error.
        assert_eq!(
            &rt.call(json!({"op": "str"})).await[..],
            "héllo wörld".as_bytes()
        );
    }
    // Text that is not UTF-8 (a lone surrogate) is replaced, not fatal.
    let (msg, _) = rt.invoke("sur", br#"{"op": "surrogate"}"#).await;
    let FromRuntime::Error { message, .. } = msg else {
        panic!("{msg:?}")
    };
    assert_eq!(message, "bad ? name");
    // An answer whose header would exceed 1 MiB is an error, not a corrupt frame.
    let (msg, _) = rt.invoke("huge", br#"{"op": "huge_header"}"#).await;
    let FromRuntime::Error {
        error_type,
        message,
        ..
    } = msg
    else {
        panic!("{msg:?}")
    };
    assert_eq!(error_type, "ValueError");
    assert!(
        message.ends_with("bytes exceeds the 1 MiB limit"),
        "{message}"
    );
    assert_eq!(&rt.call(json!({"op": "bytes"})).await[..], b"\x00\x01\xff");

    // The user's frames are shown, the runtime's are not.
    let (msg, _) = rt.invoke("tb", br#"{"op": "raise"}"#).await;
    let FromRuntime::Error { traceback, .. } = msg else {
        panic!("{msg:?}")
    };
    assert!(traceback.contains("main.py"), "{traceback}");
    assert!(!traceback.contains("bootstrap.py"), "{traceback}");
}

#[tokio::test]
async fn prints_go_to_the_logs_and_never_into_the_protocol() {
    require_python!();
    let task = task_dir(TEST_HANDLER);
    let mut rt = Runtime::spawn(task.path(), &[]);
    rt.expect_ready().await;

    let (msg, body) = rt.invoke("p", br#"{"op": "print"}"#).await;
    assert!(
        matches!(msg, FromRuntime::Result { ref id, status: 200, .. } if id == "p"),
        "{msg:?}"
    );
    assert_eq!(&body[..], b"printed");
    // The logs were flushed before the answer was sent.
    let out = rt.stdout();
    assert!(out.contains("log line one\n"), "stdout: {out:?}");
    assert!(
        out.contains("{\"type\":\"result\",\"id\":\"fake\"}"),
        "stdout: {out:?}"
    );
    assert!(out.ends_with("no newline at the end"), "stdout: {out:?}");
    assert!(
        rt.stderr().contains("a line on stderr\n"),
        "stderr: {:?}",
        rt.stderr()
    );
    // The protocol stream is intact.
    assert_eq!(&rt.call(json!({"op": "bytes"})).await[..], b"\x00\x01\xff");

    // Programs the handler starts do not inherit fds 3 and 4.
    let open = rt.call_json(json!({"op": "child_fds"})).await;
    assert_eq!(open, json!({"open": []}));
}

#[tokio::test]
async fn five_mib_binary_body_round_trips() {
    require_python!();
    let task = task_dir(TEST_HANDLER);
    let mut rt = Runtime::spawn(task.path(), &[]);
    rt.expect_ready().await;

    let mut event = vec![0xffu8]; // never valid UTF-8, so the handler sees bytes
    let mut x: u32 = 0x1234_5678;
    while event.len() < 5 << 20 {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        event.push((x >> 24) as u8);
    }
    for round in 0..2 {
        let (msg, body) = rt.invoke(&format!("big-{round}"), &event).await;
        assert!(
            matches!(msg, FromRuntime::Result { status: 200, .. }),
            "{msg:?}"
        );
        assert_eq!(body.len(), event.len());
        assert!(body[..] == event[..], "body differs");
    }
}

#[tokio::test]
async fn import_failure_is_an_init_error_and_a_nonzero_exit() {
    require_python!();
    let cases = [
        (
            "import no_such_module_for_thaw\n",
            "main.handler",
            "ModuleNotFoundError",
            "No module named 'no_such_module_for_thaw'",
        ),
        (
            "x = 1\n",
            "main.nope",
            "AttributeError",
            "module 'main' has no attribute 'nope'",
        ),
        (
            "import sys\nsys.exit(5)\n",
            "main.handler",
            "SystemExit",
            "5",
        ),
        (
            "handler = 42\n",
            "main.handler",
            "TypeError",
            "handler main.handler is a int, not a function",
        ),
    ];
    for (source, handler, want_type, want_message) in cases {
        let task = task_dir(source);
        let mut rt = Runtime::spawn(task.path(), &[("THAW_HANDLER", handler)]);
        let (msg, _) = rt.expect_frame().await;
        let FromRuntime::InitError {
            error_type,
            message,
            traceback,
        } = msg
        else {
            panic!("{source:?}: expected init_error, got {msg:?}");
        };
        assert_eq!(error_type, want_type, "{source:?}");
        assert_eq!(message, want_message, "{source:?}");
        assert!(traceback.starts_with("Traceback"), "{traceback}");
        assert!(matches!(rt.recv().await, Err(ProtocolError::Closed)));
        assert_eq!(rt.wait().code(), Some(1), "{source:?}");
    }
}

/// `random` state after `restored` is fresh: two copies of the same state
/// (here two processes seeded identically at import) agree before and
/// disagree after, even when told the same seed (the OS adds its own).
#[tokio::test]
async fn restored_reseeds_and_runs_hooks_in_order() {
    require_python!();
    let task = task_dir(TEST_HANDLER);
    let mut a = Runtime::spawn(task.path(), &[]);
    let mut b = Runtime::spawn(task.path(), &[]);
    let mut sibling = Runtime::spawn(task.path(), &[]);
    for rt in [&mut a, &mut b, &mut sibling] {
        rt.expect_ready().await;
    }
    let a1 = a.call_json(json!({"op": "random"})).await;
    let b1 = b.call_json(json!({"op": "random"})).await;
    let s1 = sibling.call_json(json!({"op": "random"})).await;
    assert_eq!(a1["r"], b1["r"]);
    assert_eq!(a1["r"], s1["r"]);
    assert_eq!(a1["hooks"], json!([]));
    assert_eq!(a1["is_copy"], false);

    let seed = "5a".repeat(32);
    assert_eq!(
        a.restored(&seed).await,
        FromRuntime::Restored {
            ok: true,
            message: None
        }
    );
    assert_eq!(
        b.restored(&seed).await,
        FromRuntime::Restored {
            ok: true,
            message: None
        }
    );

    let a2 = a.call_json(json!({"op": "random"})).await;
    let b2 = b.call_json(json!({"op": "random"})).await;
    let s2 = sibling.call_json(json!({"op": "random"})).await;
    assert_ne!(a2["r"], b2["r"], "copies share their random state");
    assert_ne!(a2["r"], s2["r"], "a copy continues the original's sequence");
    assert_ne!(b2["r"], s2["r"], "a copy continues the original's sequence");
    assert_eq!(a2["hooks"], json!(["first", "second"]));
    assert_eq!(a2["is_copy"], true);
    assert_eq!(s2["hooks"], json!([]));
    assert_eq!(s2["is_copy"], false);

    // A second restore runs the hooks again, in order.
    assert_eq!(
        a.restored(&seed).await,
        FromRuntime::Restored {
            ok: true,
            message: None
        }
    );
    let a3 = a.call_json(json!({"op": "random"})).await;
    assert_eq!(a3["hooks"], json!(["first", "second", "first", "second"]));
}

#[tokio::test]
async fn a_failing_restore_hook_answers_not_ok() {
    require_python!();
    let task = task_dir(TEST_HANDLER);
    let mut rt = Runtime::spawn(task.path(), &[("FAIL_HOOK", "1")]);
    rt.expect_ready().await;
    let msg = rt.restored(&"00".repeat(32)).await;
    assert_eq!(
        msg,
        FromRuntime::Restored {
            ok: false,
            message: Some("restore hook second raised RuntimeError: cannot reconnect".into()),
        }
    );
    // The hooks before the failing one ran; the runtime still answers.
    let after = rt.call_json(json!({"op": "random"})).await;
    assert_eq!(after["hooks"], json!(["first", "second"]));
    assert!(rt.stderr().contains("cannot reconnect"), "{}", rt.stderr());
}

#[tokio::test]
async fn restored_reseeds_numpy() {
    require_python!();
    let Some(pythonpath) = numpy_pythonpath("restored_reseeds_numpy") else {
        return;
    };
    let source = r#"
import numpy as np
np.random.seed(7)
def handler(event, context):
    return {"r": float(np.random.random())}
"#;
    let task = task_dir(source);
    let env = [("PYTHONPATH", pythonpath.as_str())];
    let mut a = Runtime::spawn(task.path(), &env);
    let mut b = Runtime::spawn(task.path(), &env);
    a.expect_ready().await;
    b.expect_ready().await;
    assert_eq!(a.call_json(json!({})).await, b.call_json(json!({})).await);
    let seed = "11".repeat(32);
    assert!(matches!(
        a.restored(&seed).await,
        FromRuntime::Restored { ok: true, .. }
    ));
    assert!(matches!(
        b.restored(&seed).await,
        FromRuntime::Restored { ok: true, .. }
    ));
    assert_ne!(a.call_json(json!({})).await, b.call_json(json!({})).await);
    assert_eq!(a.thread_count(), 1, "numpy started threads");
}

#[tokio::test]
async fn idle_runtime_is_blocked_in_read_on_fd_3() {
    require_python!();
    let task = task_dir(TEST_HANDLER);
    let mut rt = Runtime::spawn(task.path(), &[]);
    rt.expect_ready().await;
    for round in 0..2 {
        let fields = rt.blocked_syscall();
        assert_eq!(fields[0], "0", "round {round}: not in read(2): {fields:?}");
        assert_eq!(
            fields[1], "0x3",
            "round {round}: not reading fd 3: {fields:?}"
        );
        assert_eq!(rt.thread_count(), 1);
        rt.call(json!({"op": "str"})).await;
    }
}

#[tokio::test]
async fn unknown_frames_and_corrupt_streams() {
    require_python!();
    let task = task_dir(TEST_HANDLER);
    let mut rt = Runtime::spawn(task.path(), &[]);
    rt.expect_ready().await;

    // An unknown type is answered with an error frame; serving goes on.
    write_message(rt.sender(), &json!({"type": "shutdown", "id": "u1"}), b"")
        .await
        .unwrap();
    let (msg, _) = rt.expect_frame().await;
    assert_eq!(
        msg,
        FromRuntime::Error {
            id: "u1".into(),
            error_type: "ProtocolError".into(),
            message: "unknown frame type 'shutdown'".into(),
            traceback: String::new(),
        }
    );
    assert_eq!(&rt.call(json!({"op": "bytes"})).await[..], b"\x00\x01\xff");

    // A header length over 1 MiB means the stream is corrupt: exit 2.
    let mut prefix = Vec::new();
    prefix.extend_from_slice(&(2u32 << 20).to_le_bytes());
    prefix.extend_from_slice(&0u32.to_le_bytes());
    rt.sender().write_all(&prefix).await.unwrap();
    assert!(matches!(rt.recv().await, Err(ProtocolError::Closed)));
    let status = rt.wait();
    assert_eq!(
        status.code(),
        Some(2),
        "{status:?} (signal {:?})",
        status.signal()
    );
    assert!(
        rt.stderr().contains("corrupt request stream"),
        "{}",
        rt.stderr()
    );
}

#[tokio::test]
async fn torn_request_frame_exits_nonzero() {
    require_python!();
    let task = task_dir(TEST_HANDLER);
    let seed = ToRuntime::Restored {
        seed: "00".repeat(32),
    };
    let invoke = ToRuntime::Invoke {
        id: "torn".into(),
        deadline_ms: 0,
        function: String::new(),
        version: String::new(),
        headers: BTreeMap::new(),
    };
    // A small frame cut in its header, and a 1 MiB one cut in its body (the
    // runtime reads large bodies another way).
    for (msg, body, keep) in [(&seed, 0usize, 20usize), (&invoke, 1 << 20, 300_000)] {
        let mut rt = Runtime::spawn(task.path(), &[]);
        rt.expect_ready().await;
        let mut frame = Vec::new();
        write_frame(&mut frame, msg, &vec![0xffu8; body])
            .await
            .unwrap();
        rt.sender().write_all(&frame[..keep]).await.unwrap();
        assert_eq!(rt.close_and_wait().code(), Some(2), "cut at {keep}");
        assert!(
            rt.stderr()
                .contains("stream ended in the middle of a frame"),
            "{}",
            rt.stderr()
        );
    }
}

#[tokio::test]
async fn hello_example_answers() {
    require_python!();
    let dir = repo_root().join("examples/hello");
    let mut rt = Runtime::spawn(&dir, &[("THAW_FUNCTION", "hello")]);
    rt.expect_ready().await;
    let answer = rt.call_json(json!({"name": "thaw"})).await;
    assert_eq!(answer["hello"], "thaw");
    assert_eq!(answer["invocation_id"], "call");
    assert_eq!(answer["function"], "test-fn");
    assert_eq!(answer["restored_copy"], false);
    let answer = rt.call_json(json!({})).await;
    assert_eq!(answer["hello"], "world");
}

#[tokio::test]
async fn numpy_pandas_example_answers_single_threaded() {
    require_python!();
    let Some(pythonpath) = numpy_pythonpath("numpy_pandas_example_answers_single_threaded") else {
        return;
    };
    let dir = repo_root().join("examples/numpy-pandas");
    let mut rt = Runtime::spawn(&dir, &[("PYTHONPATH", &pythonpath)]);
    rt.expect_ready().await;
    let query = json!({"store": 7, "column": "price", "min": 100.0});
    let answer = rt.call_json(query.clone()).await;
    assert_eq!(answer["rows"], 1_500_000);
    assert_eq!(answer["query"], query);
    let store_rows = answer["store_rows"].as_u64().unwrap();
    let matched = answer["matched"].as_u64().unwrap();
    assert!(
        store_rows > 10_000 && matched > 0 && matched < store_rows,
        "{answer}"
    );
    assert!(answer["mean"].as_f64().unwrap() >= 100.0, "{answer}");

    let (msg, body) = rt.invoke("bad", br#"{"store": 1000}"#).await;
    assert!(
        matches!(msg, FromRuntime::Result { status: 400, .. }),
        "{msg:?}"
    );
    assert!(String::from_utf8_lossy(&body).contains("store must be"));

    assert_eq!(rt.thread_count(), 1, "numpy/pandas started threads");
    let fields = rt.blocked_syscall();
    assert_eq!((fields[0].as_str(), fields[1].as_str()), ("0", "0x3"));
    assert!(matches!(
        rt.restored(&"ab".repeat(32)).await,
        FromRuntime::Restored { ok: true, .. }
    ));
    assert_eq!(rt.call_json(query).await["restored_copy"], true);
}

#[test]
fn example_manifests_parse() {
    require_python!();
    // Python 3.11's tomllib reads the manifests as `thaw deploy` will.
    let check = r#"
import sys, tomllib
for path in sys.argv[1:]:
    with open(path, "rb") as f:
        m = tomllib.load(f)
    assert isinstance(m["name"], str) and m["name"], path
    assert m["runtime"] == "python3", path
    assert m["handler"] == "main.handler", path
    for key in ("memory_mb", "timeout_ms", "concurrency"):
        assert isinstance(m[key], int) and m[key] > 0, (path, key)
    assert all(isinstance(v, str) for v in m.get("env", {}).values()), path
    assert all(isinstance(w, dict) for w in m.get("warmup", [])), path
    assert "warmup" not in m.get("env", {}), path
"#;
    let root = repo_root();
    let out = Command::new(PYTHON)
        .args(["-c", check])
        .arg(root.join("examples/hello/thaw.toml"))
        .arg(root.join("examples/numpy-pandas/thaw.toml"))
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn median_ms(samples: &mut [Duration]) -> f64 {
    samples.sort();
    samples[samples.len() / 2].as_secs_f64() * 1e3
}

/// Figures, not assertions: `cargo test -p pool --test python_runtime --
/// --ignored --nocapture runtime_figures`. Prints medians and ratios of a
/// cold boot to `ready`, warm invokes, a 5 MiB echo and a `restored`.
#[tokio::test]
#[ignore = "benchmark: prints figures"]
async fn runtime_figures() {
    require_python!();
    use std::time::Instant;

    let hello_dir = repo_root().join("examples/hello");
    let np_dir = repo_root().join("examples/numpy-pandas");
    let np_env = numpy_pythonpath("numpy-pandas boot figures");

    let boot = |dir: PathBuf, pythonpath: Option<String>, runs: usize| async move {
        let env: Vec<(&str, &str)> = pythonpath
            .iter()
            .map(|p| ("PYTHONPATH", p.as_str()))
            .collect();
        let mut samples = Vec::new();
        for _ in 0..runs {
            let start = Instant::now();
            let mut rt = Runtime::spawn(&dir, &env);
            rt.expect_ready().await;
            samples.push(start.elapsed());
        }
        median_ms(&mut samples)
    };
    let hello_boot = boot(hello_dir.clone(), None, 9).await;
    println!("boot to ready, hello:        median {hello_boot:8.2} ms (9 runs)");
    let np_boot = if let Some(pythonpath) = np_env.clone() {
        let ms = boot(np_dir.clone(), Some(pythonpath), 5).await;
        println!(
            "boot to ready, numpy-pandas: median {ms:8.2} ms (5 runs), {:.1}x hello",
            ms / hello_boot
        );
        Some(ms)
    } else {
        None
    };

    let mut rt = Runtime::spawn(&hello_dir, &[]);
    rt.expect_ready().await;
    let event = br#"{"name": "bench"}"#;
    let mut samples = Vec::new();
    for i in 0..1000 {
        let start = Instant::now();
        let (msg, _) = rt.invoke("w", event).await;
        samples.push(start.elapsed());
        assert!(matches!(msg, FromRuntime::Result { .. }), "{i}: {msg:?}");
    }
    let warm = median_ms(&mut samples);
    println!(
        "warm invoke, hello:          median {warm:8.3} ms (1000 runs); boot/warm {:.0}x",
        hello_boot / warm
    );

    let mut samples = Vec::new();
    for _ in 0..20 {
        let start = Instant::now();
        rt.restored(&"ab".repeat(32)).await;
        samples.push(start.elapsed());
    }
    println!(
        "restored round trip, hello:  median {:8.3} ms (20 runs)",
        median_ms(&mut samples)
    );

    let task = task_dir(TEST_HANDLER);
    let mut echo = Runtime::spawn(task.path(), &[]);
    echo.expect_ready().await;
    let big: Vec<u8> = std::iter::once(0xffu8)
        .chain((0..(5 << 20) - 1).map(|i| i as u8))
        .collect();
    let mut samples = Vec::new();
    for _ in 0..20 {
        let start = Instant::now();
        let (_, body) = echo.invoke("big", &big).await;
        samples.push(start.elapsed());
        assert_eq!(body.len(), big.len());
    }
    let big_ms = median_ms(&mut samples);
    println!(
        "5 MiB echo (in and out):     median {big_ms:8.2} ms (20 runs), {:.0} MiB/s each way",
        5.0 * 2.0 / (big_ms / 1e3)
    );

    if let (Some(np_boot), Some(pythonpath)) = (np_boot, np_env) {
        let mut np = Runtime::spawn(&np_dir, &[("PYTHONPATH", &pythonpath)]);
        np.expect_ready().await;
        let query = br#"{"store": 42, "column": "discount", "min": 0.1}"#;
        let mut samples = Vec::new();
        for _ in 0..200 {
            let start = Instant::now();
            np.invoke("q", query).await;
            samples.push(start.elapsed());
        }
        let q = median_ms(&mut samples);
        println!(
            "warm invoke, numpy-pandas:   median {q:8.3} ms (200 runs); boot/warm {:.0}x",
            np_boot / q
        );
    }
}
