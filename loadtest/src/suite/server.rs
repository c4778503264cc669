//! The thaw server the suite measures: started on a loopback ephemeral port
//! with a temporary data directory, stopped (SIGTERM, then SIGKILL) when the
//! suite is done or dropped.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use super::api::Api;

/// How long the server may take to print its address.
const START_TIMEOUT: Duration = Duration::from_secs(120);
/// How long it may take to stop after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// What `thaw serve` prints once it listens.
const READY_PREFIX: &str = "thaw listening on http://";

/// Why the server could not be started.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The data directory could not be made.
    #[error("cannot make a data directory: {0}")]
    DataDir(std::io::Error),
    /// The binary could not be run.
    #[error("cannot run {path}: {cause}")]
    Spawn {
        /// The binary.
        path: String,
        /// What the OS said.
        cause: std::io::Error,
    },
    /// The server exited or never said where it listens.
    #[error("thaw serve did not start ({why}); its log ends with:\n{log}")]
    NotReady {
        /// What happened.
        why: String,
        /// The end of its stderr.
        log: String,
    },
}

/// Environment changes for a server ([`Server::start_with_env`]).
#[derive(Debug, Clone, Default)]
pub struct Env {
    /// Variables set (name, value).
    pub set: Vec<(String, String)>,
    /// Variables removed (inherited ones that would change its settings).
    pub remove: Vec<String>,
}

/// A running `thaw serve`.
#[derive(Debug)]
pub struct Server {
    child: Child,
    pid: u32,
    authority: String,
    log: PathBuf,
    // Removed (with the store) when the server is dropped.
    data: tempfile::TempDir,
}

impl Server {
    /// Starts `thaw serve` from `repo` (the workspace, for its `examples/`
    /// and `runtimes/`) with `extra` arguments, deploying each folder of
    /// `deploy`, and waits until it listens.
    pub async fn start(
        thaw: &Path,
        repo: &Path,
        extra: &[&str],
        deploy: &[PathBuf],
    ) -> Result<Server, ServerError> {
        Server::start_with_env(thaw, repo, extra, deploy, &Env::default()).await
    }

    /// [`Server::start`] with environment variables set (`env.set`) and
    /// removed (`env.remove`) for the server: a shared store's `AWS_*`
    /// settings, say.
    pub async fn start_with_env(
        thaw: &Path,
        repo: &Path,
        extra: &[&str],
        deploy: &[PathBuf],
        env: &Env,
    ) -> Result<Server, ServerError> {
        let data = tempfile::Builder::new()
            .prefix("thaw-suite-")
            .tempdir()
            .map_err(ServerError::DataDir)?;
        let log = data.path().join("server.log");
        let log_file = std::fs::File::create(&log).map_err(ServerError::DataDir)?;
        let mut cmd = Command::new(thaw);
        cmd.current_dir(repo)
            .arg("serve")
            .args(["--listen", "127.0.0.1:0", "--allow-forced-cold"])
            .arg("--data-dir")
            .arg(data.path().join("data"))
            .args(extra)
            .envs(env.set.iter().map(|(k, v)| (k, v)));
        for k in &env.remove {
            cmd.env_remove(k);
        }
        for dir in deploy {
            cmd.arg("--deploy").arg(dir);
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log_file))
            .kill_on_drop(true)
            .spawn()
            .map_err(|cause| ServerError::Spawn {
                path: thaw.display().to_string(),
                cause,
            })?;
        let pid = child.id().unwrap_or(0);
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut lines = BufReader::new(stdout).lines();
        let found = tokio::time::timeout(START_TIMEOUT, async {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(rest) = line.trim().strip_prefix(READY_PREFIX) {
                    return Some(rest.trim_end_matches('/').to_owned());
                }
            }
            None
        })
        .await;
        let not_ready = |why: String| ServerError::NotReady {
            why,
            log: tail(&log, 20),
        };
        let authority = match found {
            Ok(Some(a)) => a,
            Ok(None) => return Err(not_ready("it closed its stdout".into())),
            Err(_) => return Err(not_ready(format!("no address within {START_TIMEOUT:?}"))),
        };
        // Keep reading its stdout so it never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(Server {
            child,
            pid,
            authority,
            log,
            data,
        })
    }

    /// The server's pid (its sandboxes are its descendants).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// `host:port`.
    pub fn authority(&self) -> &str {
        &self.authority
    }

    /// Its data directory (`--data-dir`; the page store and snapshot
    /// images are below).
    pub fn data_dir(&self) -> PathBuf {
        self.data.path().join("data")
    }

    /// Its management API.
    pub fn api(&self) -> Api {
        Api::new(&self.authority)
    }

    /// Its log (stderr) so far, whole.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last `lines` lines of its log.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log, lines)
    }

    /// Stops it: SIGTERM, and SIGKILL if it is still there after a while.
    pub async fn stop(mut self) {
        if let Ok(pid) = i32::try_from(self.pid) {
            // The child is ours and not yet reaped, so the pid is still its.
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
        if tokio::time::timeout(STOP_TIMEOUT, self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

/// The last `n` lines of a file, or a note that it cannot be read.
fn tail(path: &Path, n: usize) -> String {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(n)..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}
