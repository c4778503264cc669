//! Shared helpers of the capture tests: real processes that speak a tiny
//! line protocol on fds 3 (requests in) and 4 (answers out), the way thaw's
//! runtimes do.

#![allow(dead_code)]

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};

#[path = "../../../test-support/numpy_pandas.rs"]
pub mod numpy_pandas;

/// Whether `THAW_TEST_STRICT` is set (CI sets it): a missing prerequisite
/// then fails the test instead of skipping it.
pub fn strict() -> bool {
    std::env::var_os("THAW_TEST_STRICT").is_some()
}

/// Reports a missing prerequisite: with `THAW_TEST_STRICT` set the test
/// fails with `reason`; otherwise the skip is printed. Returns `false`, for
/// helpers that answer whether a test can run.
pub fn missing(reason: &str) -> bool {
    if strict() {
        panic!("THAW_TEST_STRICT is set and a prerequisite is missing: {reason}");
    }
    eprintln!("skipped: {reason}");
    false
}

/// Ends the test because a prerequisite is missing (`format!` arguments give
/// the reason); fails it instead when `THAW_TEST_STRICT` is set.
#[macro_export]
macro_rules! skip {
    ($($reason:tt)*) => {{
        $crate::capture_support::missing(&format!($($reason)*));
        return;
    }};
}

/// Whether the tests can ptrace arbitrary children; says why not (see
/// [`missing`]).
pub fn can_capture(test: &str) -> bool {
    if !nix::unistd::geteuid().is_root() {
        return missing(&format!(
            "{test} needs root (ptrace, /proc/pid/map_files, pagemap)"
        ));
    }
    true
}

/// Whether `/usr/bin/python3` exists; says why not (see [`missing`]).
pub fn have_python(test: &str) -> bool {
    if !Path::new("/usr/bin/python3").exists() {
        return missing(&format!("{test}: /usr/bin/python3 is missing"));
    }
    true
}

/// The folder holding numpy and pandas for `/usr/bin/python3` (installed
/// once per machine, see [`numpy_pandas`]); says why not (see [`missing`]).
pub fn numpy_path(test: &str) -> Option<String> {
    match numpy_pandas::path() {
        Ok(path) => Some(path.display().to_string()),
        Err(why) => {
            missing(&format!("{test}: no numpy and pandas: {why}"));
            None
        }
    }
}

/// Duplicates `fd` to a number >= 100 (close-on-exec).
fn high(fd: OwnedFd) -> OwnedFd {
    // SAFETY: F_DUPFD_CLOEXEC on a valid fd returns a new descriptor we own.
    let raw = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 100) };
    assert!(raw >= 100, "F_DUPFD_CLOEXEC failed");
    // SAFETY: `raw` is a fresh descriptor owned by nobody else.
    unsafe { OwnedFd::from_raw_fd(raw) }
}

/// A child process with request/answer pipes on its fds 3 and 4.
pub struct Worker {
    /// The process.
    pub child: Child,
    requests: File,
    answers: BufReader<File>,
}

impl Worker {
    /// Starts `program args`, with fd 3 the read end of the request pipe and
    /// fd 4 the write end of the answer pipe, then waits for its first line.
    pub fn spawn(program: &str, args: &[&str]) -> (Worker, String) {
        let (req_read, req_write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        let (ans_read, ans_write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        let (req_read, ans_write) = (high(req_read), high(ans_write));
        let (child_in, child_out) = (req_read.as_raw_fd(), ans_write.as_raw_fd());
        let mut command = Command::new(program);
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        // SAFETY: only async-signal-safe dup2 and close_range run between fork
        // and exec;
        // both source descriptors are >= 100 so they cannot be clobbered.
        unsafe {
            command.pre_exec(move || {
                if libc::dup2(child_in, 3) != 3 || libc::dup2(child_out, 4) != 4 {
                    return Err(std::io::Error::last_os_error());
                }
                // Descriptors leaked into the test process (by its own
                // parent) would make the capture refuse the worker.
                if libc::syscall(libc::SYS_close_range, 5u32, u32::MAX, 0u32) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command.spawn().unwrap();
        drop(req_read);
        drop(ans_write);
        let mut worker = Worker {
            child,
            requests: File::from(req_write),
            answers: BufReader::new(File::from(ans_read)),
        };
        let first = worker.read_line();
        (worker, first)
    }

    /// The pid.
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Reads one answer line (without the newline).
    pub fn read_line(&mut self) -> String {
        let mut line = String::new();
        self.answers.read_line(&mut line).unwrap();
        assert!(
            line.ends_with('\n'),
            "worker closed its answer pipe: {line:?}"
        );
        line.pop();
        line
    }

    /// Sends one request and returns the answer.
    pub fn ask(&mut self, request: &str) -> String {
        self.requests.write_all(request.as_bytes()).unwrap();
        self.read_line()
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The Python worker: sets up memory (and whatever `mode` asks for), says
/// `ready <sha256 of its data>`, then answers every request read from fd 3
/// with `echo:<request> <sha256 of its data>`.
pub const PYTHON_WORKER: &str = r#"
import hashlib, os, sys
mode = sys.argv[1] if len(sys.argv) > 1 else "plain"
blob = bytearray(os.urandom(1 << 20)) * 8
zeros = bytearray(b"\x01") * (4 << 20)
zeros[:] = bytes(4 << 20)
keep = []
if mode == "thread":
    import threading
    ev = threading.Event()
    t = threading.Thread(target=ev.wait, daemon=True)
    t.start()
    keep.append((ev, t))
elif mode == "thread_signal":
    import signal, threading
    ev = threading.Event()
    def blocked():
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
        ev.wait()
    t = threading.Thread(target=blocked, daemon=True)
    t.start()
    import time
    time.sleep(0.05)
    signal.pthread_kill(t.ident, signal.SIGUSR1)
    keep.append((ev, t))
elif mode == "child":
    import subprocess
    keep.append(subprocess.Popen(["/bin/sh", "-c", "read x"], stdin=subprocess.PIPE))
elif mode == "numpy":
    # argv[2]: the folder with numpy and pandas (numpy_path).
    sys.path.insert(0, sys.argv[2])
    # OpenBLAS would start worker threads, which a capture refuses.
    os.environ["OPENBLAS_NUM_THREADS"] = "1"
    os.environ["OMP_NUM_THREADS"] = "1"
    import numpy, pandas
    keep.append(pandas.DataFrame(numpy.arange(100000).reshape(-1, 10)))
    blob += keep[0].to_csv().encode()
elif mode == "tcp":
    import socket
    keep.append(socket.create_connection(("127.0.0.1", int(sys.argv[2]))))
elif mode == "packet":
    import socket
    keep.append(socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0))
def digest():
    return hashlib.sha256(blob).hexdigest() + " " + str(sum(zeros))
os.write(4, ("ready " + digest() + "\n").encode())
while True:
    data = os.read(3, 4096)
    if not data:
        break
    os.write(4, b"echo:" + data + b" " + digest().encode() + b"\n")
"#;

/// Starts the Python worker in `mode` (extra args follow).
pub fn python(mode: &str, extra: &[&str]) -> (Worker, String) {
    let mut args = vec!["-c", PYTHON_WORKER, mode];
    args.extend_from_slice(extra);
    let (worker, ready) = Worker::spawn("/usr/bin/python3", &args);
    wait_blocked_in_read(worker.pid());
    let digest = ready
        .strip_prefix("ready ")
        .expect("worker said ready")
        .to_string();
    (worker, digest)
}

/// Waits until `pid` is blocked in `read(3, …)` (`/proc/pid/syscall` starts
/// with `0 0x3 `), so that its memory no longer changes. Gives up (panics)
/// after a minute so a broken worker cannot hang the test run.
pub fn wait_blocked_in_read(pid: i32) {
    for _ in 0..60_000 {
        let text = std::fs::read_to_string(format!("/proc/{pid}/syscall")).unwrap_or_default();
        if text.starts_with("0 0x3 ") {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    panic!("pid {pid} never blocked in read(3, …)");
}

/// Compiles C `source` with `cc -O1` into `dir`; `None` (reported as a
/// missing prerequisite) when there is no working compiler.
pub fn compile_c(dir: &Path, name: &str, source: &str) -> Option<String> {
    let src = dir.join(format!("{name}.c"));
    let bin = dir.join(name);
    std::fs::write(&src, source).unwrap();
    match Command::new("cc")
        .arg("-O1")
        .arg("-o")
        .arg(&bin)
        .arg(&src)
        .status()
    {
        Ok(status) if status.success() => Some(bin.to_string_lossy().into_owned()),
        other => {
            missing(&format!("cannot compile a C helper with cc: {other:?}"));
            None
        }
    }
}

/// Whether the page at `addr` as read `now` equals the `captured` one,
/// ignoring the rseq area: the kernel rewrites its cpu and node fields
/// whenever the thread migrates to another CPU, even while it sleeps in
/// `read`.
pub fn same_page(
    state: &snapshotter::state::ProcessState,
    addr: u64,
    now: &[u8],
    captured: &[u8],
) -> bool {
    let mut now = now.to_vec();
    if let Some(rseq) = state.main_thread().rseq {
        let (start, end) = (rseq.address, rseq.address + u64::from(rseq.length));
        let page_end = addr + now.len() as u64;
        if start < page_end && end > addr {
            let from = start.max(addr) - addr;
            let to = end.min(page_end) - addr;
            now[from as usize..to as usize].copy_from_slice(&captured[from as usize..to as usize]);
        }
    }
    now == captured
}
