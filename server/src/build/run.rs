//! One installer run in a build sandbox.
//!
//! ```text
//! server                                   build sandbox (function's uid,
//!                                          limits below, netns with lo only)
//! inputs dir (dependency files) ─bind ro─> /var/task
//! launch ───────────────────────────────> sh: read go <&3   (waits)
//! listener in the sandbox's netns,
//!   127.0.0.1:3128 ── proxy::serve
//! "go\n" on fd 3 ───────────────────────> cp /var/task/* /tmp/build; cd there
//!                                         installer (pip / npm) via the proxy
//! stdout, stderr ──> function's logs <──  its output
//! fd 4 ──> layer::unpack into tmp  <────  tar -C <output> -c . >&4
//! exit status 0: the layer is complete
//! ```
//!
//! The sandbox is the pool's ordinary one (`pool::sandbox`): read-only root,
//! the runtime's binds, private `/tmp` (the installer's only writable
//! place), pid/ipc/uts/net namespaces, a cgroup. Nothing of it stays.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pool::cgroup::CgroupLimits;
use pool::logs::{LogLine, LogSink, Stream};
use pool::sandbox::{LaunchSpec, Network, Sandbox, SandboxConfig, SandboxExit};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use super::proxy::{self, Allowed};
use super::DepsError;

/// Port of the proxy inside the build sandbox's network namespace.
pub const PROXY_PORT: u16 = 3128;
/// Memory (and swap) of a build sandbox, MiB: the installer and its `/tmp`,
/// where the layer is assembled, together.
pub const BUILD_MEMORY_MB: u64 = 2048;
/// Size of a build sandbox's `/tmp`, MiB (the largest layer).
pub const BUILD_TMP_MB: u64 = 1536;
/// Processes and threads of a build sandbox.
pub const BUILD_PIDS: u64 = 256;
/// The longest an install may take.
pub const BUILD_TIMEOUT: Duration = Duration::from_secs(600);
/// Most bytes of the installer's output kept for the version's error.
const MAX_OUTPUT: usize = 16 * 1024;

/// The script the sandbox runs: `$1` the output folder, the rest the
/// installer's command line.
const SCRIPT: &str = r#"set -e
read -r go <&3
mkdir /tmp/build
cp /var/task/* /tmp/build/
cd /tmp/build
out="$1"
shift
"$@"
mkdir -p "$out"
tar -C "$out" -cf - . >&4
"#;

/// What to run.
pub(super) struct Run<'a> {
    pub sandbox: &'a SandboxConfig,
    /// Folder holding the dependency file and its lockfile (bound at
    /// `/var/task`).
    pub inputs: PathBuf,
    /// Host paths the installer needs.
    pub binds: Vec<PathBuf>,
    /// The installer's command line.
    pub command: Vec<String>,
    /// The folder it fills, relative to where it runs.
    pub output: String,
    /// Where the proxy may connect.
    pub allowed: Arc<Vec<Allowed>>,
    /// The function's logs.
    pub logs: &'a LogSink,
    /// The dependency file (for messages).
    pub file: &'a str,
}

fn push(logs: &LogSink, stream: Stream, line: String) {
    logs(LogLine {
        time_ms: crate::service::now_ms(),
        stream,
        invocation_id: None,
        line,
    });
}

/// Keeps the last [`MAX_OUTPUT`] bytes of the installer's output.
#[derive(Default)]
struct Tail(String);

impl Tail {
    fn add(&mut self, line: &str) {
        self.0.push_str(line);
        self.0.push('\n');
        if self.0.len() > 2 * MAX_OUTPUT {
            let mut cut = self.0.len() - MAX_OUTPUT;
            while !self.0.is_char_boundary(cut) {
                cut += 1;
            }
            self.0.drain(..cut);
        }
    }

    fn text(&self) -> String {
        let t = self.0.trim();
        if t.len() <= MAX_OUTPUT {
            return t.to_string();
        }
        let mut cut = t.len() - MAX_OUTPUT;
        while !t.is_char_boundary(cut) {
            cut += 1;
        }
        format!("…\n{}", &t[cut..])
    }
}

/// Makes a TCP listener on `127.0.0.1:PROXY_PORT` inside the network
/// namespace of process `pid`, from a thread of its own that ends after
/// (a thread's network namespace is its own; the socket keeps the
/// namespace it was made in).
fn listen_in(pid: i32) -> std::io::Result<std::net::TcpListener> {
    std::thread::spawn(move || {
        let ns = std::fs::File::open(format!("/proc/{pid}/ns/net"))?;
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)?;
        let l = std::net::TcpListener::bind(("127.0.0.1", PROXY_PORT))?;
        l.set_nonblocking(true)?;
        Ok(l)
    })
    .join()
    .map_err(|_| std::io::Error::other("the listener thread panicked"))?
}

/// Runs the installer; its layer is unpacked into `dst`.
pub(super) async fn run(r: Run<'_>, dst: &Path) -> Result<(), DepsError> {
    let mut argv = vec![
        "/bin/sh".to_string(),
        "-c".into(),
        SCRIPT.into(),
        "sh".into(),
        r.output.clone(),
    ];
    argv.extend(r.command.iter().cloned());
    let spec = LaunchSpec {
        code_dir: r.inputs.clone(),
        runtime_dir: None,
        binds: r.binds.clone(),
        argv,
        env: vec![
            ("PATH".into(), "/usr/local/bin:/usr/bin:/bin".into()),
            ("HOME".into(), "/tmp".into()),
            ("LANG".into(), "C.UTF-8".into()),
        ],
        cwd: "/tmp".into(),
        limits: CgroupLimits {
            memory_bytes: BUILD_MEMORY_MB << 20,
            pids: BUILD_PIDS,
            cpu_weight: 100,
            cpu_millicores: None,
        },
        tmp_mb: BUILD_TMP_MB,
        network: Network::None,
        network_allow: Vec::new(),
        no_aslr: false,
        stub: false,
    };
    let mut sandbox = Sandbox::launch(r.sandbox, &spec)
        .await
        .map_err(DepsError::Sandbox)?;
    let result = drive(&r, &mut sandbox, dst).await;
    if let Err(e) = sandbox.destroy().await {
        tracing::warn!(error = %e, "build sandbox clean-up failed");
    }
    result
}

async fn drive(r: &Run<'_>, sandbox: &mut Sandbox, dst: &Path) -> Result<(), DepsError> {
    let pid = sandbox
        .function_pid()
        .ok_or_else(|| DepsError::Proxy(std::io::Error::other("the installer is gone")))?;
    let listener = tokio::task::spawn_blocking(move || listen_in(pid))
        .await
        .map_err(|e| DepsError::Proxy(std::io::Error::other(e.to_string())))?
        .map_err(DepsError::Proxy)?;
    let listener = tokio::net::TcpListener::from_std(listener).map_err(DepsError::Proxy)?;
    let proxy = tokio::spawn(proxy::serve(listener, r.allowed.clone()));
    struct AbortOnDrop(tokio::task::JoinHandle<()>);
    impl Drop for AbortOnDrop {
        fn drop(&mut self) {
            self.0.abort();
        }
    }
    let _proxy = AbortOnDrop(proxy);

    let tail = Arc::new(Mutex::new(Tail::default()));
    let mut readers = Vec::new();
    for (pipe, stream) in [
        (sandbox.stdout.take(), Stream::Stdout),
        (sandbox.stderr.take(), Stream::Stderr),
    ] {
        let Some(pipe) = pipe else { continue };
        let logs = r.logs.clone();
        let tail = tail.clone();
        readers.push(tokio::spawn(async move {
            let mut lines = BufReader::new(pipe).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                tail.lock().unwrap().add(&line);
                push(&logs, stream, line);
            }
        }));
    }
    let unpack = match sandbox.responses.take() {
        Some(rx) => {
            let fd = rx.into_blocking_fd().map_err(DepsError::Proxy)?;
            let dst = dst.to_path_buf();
            tokio::task::spawn_blocking(move || super::layer::unpack(std::fs::File::from(fd), &dst))
        }
        None => return Err(DepsError::Proxy(std::io::Error::other("no output pipe"))),
    };
    if let Some(mut go) = sandbox.requests.take() {
        // An installer already gone shows in its exit status below.
        let _ = go.write_all(b"go\n").await;
    }
    let exit = match tokio::time::timeout(BUILD_TIMEOUT, sandbox.wait()).await {
        Ok(exit) => exit,
        Err(_) => {
            sandbox.kill();
            let _ = sandbox.wait().await;
            unpack.abort();
            return Err(DepsError::Timeout {
                file: r.file.to_string(),
                secs: BUILD_TIMEOUT.as_secs(),
            });
        }
    };
    for t in readers {
        let _ = t.await;
    }
    let unpacked = unpack
        .await
        .map_err(|e| DepsError::Proxy(std::io::Error::other(e.to_string())))?;
    if exit != SandboxExit::Exited(0) {
        return Err(DepsError::Failed {
            file: r.file.to_string(),
            status: exit.to_string(),
            output: tail.lock().unwrap().text(),
        });
    }
    unpacked?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_error_keeps_the_end_of_the_installers_output() {
        let mut t = Tail::default();
        for i in 0..10_000 {
            t.add(&format!("line {i} é"));
        }
        t.add("ERROR: No matching distribution found for x");
        let text = t.text();
        assert!(text.len() <= MAX_OUTPUT + 8, "{}", text.len());
        assert!(text.starts_with('…'));
        assert!(text.ends_with("No matching distribution found for x"));
        let mut short = Tail::default();
        short.add("only line");
        assert_eq!(short.text(), "only line");
    }
}
