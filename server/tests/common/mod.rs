//! A real `thaw serve` process on a temporary data directory, and a real
//! HTTP client. Needs root (sandboxes).
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

pub mod c_programs;
pub mod index;

#[path = "../../../test-support/numpy_pandas.rs"]
pub mod numpy_pandas;

/// Whether `THAW_TEST_STRICT` is set (CI sets it): a missing prerequisite
/// then fails the test instead of skipping it.
pub fn strict() -> bool {
    std::env::var_os("THAW_TEST_STRICT").is_some()
}

/// Reports a missing prerequisite: with `THAW_TEST_STRICT` set the test
/// fails with `reason`; otherwise the skip is printed. Use [`skip!`].
pub fn missing(reason: &str) {
    if strict() {
        panic!("THAW_TEST_STRICT is set and a prerequisite is missing: {reason}");
    }
    eprintln!("skipped: {reason}");
}

/// Ends the test because a prerequisite is missing (`format!` arguments give
/// the reason); fails it instead when `THAW_TEST_STRICT` is set.
#[macro_export]
macro_rules! skip {
    ($($reason:tt)*) => {{
        $crate::common::missing(&format!($($reason)*));
        return;
    }};
}

/// Skips the test (see [`skip!`]) when not root or without python3.
#[macro_export]
macro_rules! require_root {
    () => {
        if !nix::unistd::geteuid().is_root() {
            $crate::skip!("thaw serve needs root (namespaces, mounts, cgroups)");
        }
        if !std::path::Path::new("/usr/bin/python3").exists() {
            $crate::skip!("/usr/bin/python3 is missing");
        }
    };
}

/// Skips the test (see [`skip!`]) when pip cannot install numpy and pandas
/// from the package index (the shared test folder of [`numpy_pandas`], which
/// tells whether the index answers): a function deployed with
/// `examples/numpy-pandas/requirements.txt` would fail to build.
#[macro_export]
macro_rules! require_numpy_index {
    () => {
        if let Err(why) = $crate::common::numpy_pandas::path() {
            $crate::skip!("numpy and pandas cannot be installed from the package index: {why}");
        }
    };
}

/// The layer cache the tests' servers share (docs/dependencies.md).
pub const SHARED_LAYER_CACHE: &str = "/var/tmp/thaw-test-layers";

pub struct Server {
    pub child: Option<Child>,
    pub url: String,
    pub data: PathBuf,
    pub args: Vec<String>,
    /// A command that runs the server (`unshare -T ...`), empty for none.
    pub wrap: Vec<String>,
    _dir: Option<tempfile::TempDir>,
    pub http: reqwest::Client,
}

pub struct Answer {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
    pub fn header(&self, name: &str) -> String {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default()
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

impl Server {
    pub fn start(args: &[&str]) -> Server {
        Server::start_wrapped(&[], args)
    }

    /// [`Server::start`] run by `wrap` (a command that execs its
    /// arguments, such as `unshare -T --monotonic N`).
    pub fn start_wrapped(wrap: &[&str], args: &[&str]) -> Server {
        let dir = tempfile::Builder::new()
            .prefix("thaw-test")
            .tempdir_in("/var/tmp")
            .unwrap();
        let data = dir.path().join("data");
        let mut s = Server {
            child: None,
            url: String::new(),
            data,
            args: args.iter().map(|s| s.to_string()).collect(),
            wrap: wrap.iter().map(|s| s.to_string()).collect(),
            _dir: Some(dir),
            http: reqwest::Client::new(),
        };
        s.spawn();
        s
    }

    /// Starts the server process (again) on the same data directory.
    pub fn spawn(&mut self) {
        let mut cmd = match self.wrap.split_first() {
            Some((program, args)) => {
                let mut cmd = Command::new(program);
                cmd.args(args).arg(env!("CARGO_BIN_EXE_thaw"));
                cmd
            }
            None => Command::new(env!("CARGO_BIN_EXE_thaw")),
        };
        cmd.arg("serve");
        if !self.args.iter().any(|a| a == "--listen") {
            cmd.arg("--listen").arg("127.0.0.1:0");
        }
        // The servers of the tests share one layer cache (unless the
        // environment names one), so that an example's dependencies
        // (numpy-pandas: numpy and pandas from the real index) are
        // installed once per machine, not once per test.
        if std::env::var_os("THAW_LAYER_CACHE").is_none() {
            cmd.env("THAW_LAYER_CACHE", SHARED_LAYER_CACHE);
        }
        // Spares that follow demand (docs/restore.md) are off in the test
        // servers unless the environment or a test's flags turn them on
        // (`--spare-sandboxes-burst`, as server/tests/spares_demand.rs
        // does): the other tests count a version's spares, processes and
        // cgroups after bursts of forced restores, with `spare_sandboxes`
        // each.
        if std::env::var_os("THAW_SPARE_SANDBOXES_BURST").is_none() {
            cmd.env("THAW_SPARE_SANDBOXES_BURST", "0");
        }
        let mut child = cmd
            .arg("--data-dir")
            .arg(&self.data)
            .args(&self.args)
            .env("THAW_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start thaw serve");
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let url = loop {
            let line = lines
                .next()
                .expect("thaw serve exited before listening")
                .unwrap();
            if let Some(url) = line.strip_prefix("thaw listening on ") {
                break url.trim().to_string();
            }
        };
        // Keep draining stdout so the server never blocks on it.
        std::thread::spawn(move || for _ in lines {});
        // A server on every address is reached over loopback.
        self.url = url.replace("0.0.0.0", "127.0.0.1");
        self.child = Some(child);
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().unwrap().id() as i32
    }

    /// SIGTERM and wait.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().unwrap();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        child.wait().unwrap()
    }

    /// SIGKILL and wait.
    pub fn kill9(&mut self) {
        let mut child = self.child.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }

    pub async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Vec<u8>>,
        headers: &[(&str, &str)],
    ) -> Answer {
        let mut r = self.http.request(method, format!("{}{}", self.url, path));
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        if let Some(b) = body {
            r = r.body(b);
        }
        let resp = r.send().await.expect("request");
        Answer {
            status: resp.status().as_u16(),
            headers: resp.headers().clone(),
            body: resp.bytes().await.unwrap().to_vec(),
        }
    }

    pub async fn get(&self, path: &str) -> Answer {
        self.request(reqwest::Method::GET, path, None, &[]).await
    }

    pub async fn deploy(&self, spec: Value) -> Answer {
        self.request(
            reqwest::Method::POST,
            "/functions",
            Some(serde_json::to_vec(&spec).unwrap()),
            &[("content-type", "application/json")],
        )
        .await
    }

    pub async fn invoke(&self, name: &str, event: Value) -> Answer {
        self.invoke_raw(name, serde_json::to_vec(&event).unwrap(), &[])
            .await
    }

    pub async fn invoke_raw(&self, name: &str, body: Vec<u8>, headers: &[(&str, &str)]) -> Answer {
        self.request(
            reqwest::Method::POST,
            &format!("/functions/{name}/invoke"),
            Some(body),
            headers,
        )
        .await
    }

    /// Deploys and waits until the version leaves `deploying`.
    pub async fn deploy_ready(&self, spec: Value) -> Value {
        let a = self.deploy(spec.clone()).await;
        assert_eq!(a.status, 201, "deploy: {}", a.text());
        self.wait_state(spec["name"].as_str().unwrap()).await
    }

    pub async fn wait_state(&self, name: &str) -> Value {
        let t0 = Instant::now();
        loop {
            let v = self.get(&format!("/functions/{name}")).await.json();
            if !matches!(
                v["state"].as_str(),
                Some("deploying" | "building" | "warming" | "snapshotting")
            ) {
                return v;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(120),
                "{name} never left deploying"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until `name` has exactly `n` spares ready, none of its
    /// sandboxes is starting and no spare's pre-map is to come or running
    /// (what the load tester's "at rest" waits for); returns the record.
    pub async fn wait_spares(&self, name: &str, n: u64) -> Value {
        let t0 = Instant::now();
        loop {
            let v = self.get(&format!("/functions/{name}")).await.json();
            // Settled: no boot running and no spare's pre-map to come or
            // running (`instances.premapping`), so two records compare.
            if v["instances"]["spare"] == n
                && v["instances"]["booting"] == 0
                && v["instances"]["premapping"] == 0
            {
                return v;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "{name} never had {n} spares: {v}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The sum of the values of this server's metric lines that start
    /// with `prefix`.
    pub async fn metric(&self, prefix: &str) -> f64 {
        self.get("/metrics")
            .await
            .text()
            .lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// Waits until function `name` has its `spares`, no sandbox is being
    /// launched or torn down in the background (the pool's own counts,
    /// `thaw_spare_launches_in_flight` and
    /// `thaw_sandbox_teardowns_in_flight`: a teardown counts until its
    /// sandbox's processes, cgroup and run directory are gone) and every
    /// sandbox cgroup is one the pool lists. A [`footprint`] taken then
    /// counts no sandbox on its way in or out.
    pub async fn settle(&self, name: &str, spares: u64) {
        let t0 = Instant::now();
        loop {
            let v = self.wait_spares(name, spares).await;
            let listed = v["instance_list"].as_array().map_or(0, Vec::len);
            let launches = self.metric("thaw_spare_launches_in_flight ").await;
            let teardowns = self.metric("thaw_sandbox_teardowns_in_flight ").await;
            let cgroups = self.sandbox_cgroups().len();
            if launches == 0.0 && teardowns == 0.0 && cgroups == listed {
                return;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(120),
                "never settled: {launches} launches and {teardowns} teardowns in flight, {cgroups} cgroups: {v}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// pids in this server's sandbox cgroups.
    pub fn sandbox_pids(&self) -> Vec<i32> {
        let mut out = Vec::new();
        for dir in self.sandbox_cgroups() {
            if let Ok(text) = std::fs::read_to_string(dir.join("cgroup.procs")) {
                out.extend(
                    text.split_whitespace()
                        .filter_map(|p| p.parse::<i32>().ok()),
                );
            }
        }
        out
    }

    /// This server's sandbox cgroup directories (memory hierarchy, or v2).
    pub fn sandbox_cgroups(&self) -> Vec<PathBuf> {
        let data = self.data.canonicalize().unwrap_or(self.data.clone());
        let tag = format!("thaw-{}", server::serve::install_tag(&data));
        let mut out = Vec::new();
        for root in cgroup_roots() {
            let parent = root.join(&tag);
            if let Ok(rd) = std::fs::read_dir(&parent) {
                for e in rd.flatten() {
                    if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                        out.push(e.path());
                    }
                }
            }
        }
        out
    }
}

impl Drop for Server {
    /// Stops the server cleanly (SIGTERM) so it removes its sandboxes and
    /// cgroups, as an operator's stop does; one that has not exited after a
    /// few seconds (a test left a request hanging) is killed.
    fn drop(&mut self) {
        let Some(mut c) = self.child.take() else {
            return;
        };
        let pid = nix::unistd::Pid::from_raw(c.id() as i32);
        if nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).is_ok() {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            while std::time::Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        }
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// Parents under which the server (our child, in our cgroup) makes its
/// sandbox cgroups.
fn cgroup_roots() -> Vec<PathBuf> {
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let mut out = Vec::new();
    for line in own.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, ctrls, path) = (
            parts.next().unwrap(),
            parts.next().unwrap_or(""),
            parts.next().unwrap_or("/"),
        );
        let base = if ctrls.split(',').any(|c| c == "memory") {
            Path::new("/sys/fs/cgroup/memory").to_path_buf()
        } else if ctrls.is_empty() {
            if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
                Path::new("/sys/fs/cgroup").to_path_buf()
            } else {
                Path::new("/sys/fs/cgroup/unified").to_path_buf()
            }
        } else {
            continue;
        };
        out.push(base.join(path.trim_start_matches('/')));
        // v2 servers move themselves into a `server` leaf.
        out.push(
            base.join(path.trim_start_matches('/'))
                .parent()
                .unwrap_or(Path::new("/"))
                .to_path_buf(),
        );
    }
    out
}

/// A spec with one `main.py`.
pub fn function(name: &str, code: &str, extra: Value) -> Value {
    let mut spec = json!({
        "name": name,
        "runtime": "python3",
        "handler": "main.handler",
        "files": { "main.py": code },
        "memory_mb": 128,
        "timeout_ms": 10000,
    });
    for (k, v) in extra.as_object().unwrap() {
        spec[k] = v.clone();
    }
    spec
}

pub fn pid_alive(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

/// What a leak of restored copies would grow on the server's side: its
/// descriptors, mappings and mounts, the sandboxes' cgroups and processes,
/// and the run directory's entries.
///
/// `mounts` counts the mounts of the server's mount namespace that lie
/// under its data directory, where every host-side path of a sandbox is
/// (its root, run directory and layers): the host's whole table also moves
/// with other tests running beside this one (`ip netns add` mounts
/// `/run/netns`), which is not thaw's leak.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Footprint {
    pub fds: usize,
    pub maps: usize,
    pub cgroups: usize,
    pub sandbox_pids: usize,
    pub mounts: usize,
    pub run_entries: usize,
}

fn count_lines(path: &str) -> usize {
    std::fs::read_to_string(path)
        .map(|t| t.lines().count())
        .unwrap_or(0)
}

/// Mounts in `pid`'s mount namespace whose mount point is `dir` or under
/// it (`/proc/PID/mountinfo`'s fifth field; octal escapes such as `\040`
/// for a space are compared as written, and data directories have none).
fn mounts_under(pid: i32, dir: &Path) -> usize {
    let dir = dir.to_string_lossy();
    let dir = dir.trim_end_matches('/');
    std::fs::read_to_string(format!("/proc/{pid}/mountinfo"))
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .filter(|point| {
            *point == dir
                || point
                    .strip_prefix(dir)
                    .is_some_and(|rest| rest.starts_with('/'))
        })
        .count()
}

/// The server's [`Footprint`] now.
pub fn footprint(server: &Server) -> Footprint {
    let pid = server.pid();
    Footprint {
        fds: std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|d| d.count())
            .unwrap_or(0),
        maps: count_lines(&format!("/proc/{pid}/maps")),
        cgroups: server.sandbox_cgroups().len(),
        sandbox_pids: server.sandbox_pids().len(),
        mounts: mounts_under(pid, &server.data),
        run_entries: std::fs::read_dir(server.data.join("run"))
            .map(|d| d.count())
            .unwrap_or(0),
    }
}

/// Makes `command`'s child start with only its stdio: every other
/// descriptor this harness holds (cargo's jobserver pipe, sockets of other
/// tests) closed between fork and exec, so a capture of it does not meet
/// (and refuse) them.
pub fn only_stdio(command: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: only close_range (async-signal-safe) runs between fork and
    // exec.
    unsafe {
        command.pre_exec(|| {
            libc::syscall(libc::SYS_close_range, 3, u32::MAX, 0);
            Ok(())
        });
    }
}
