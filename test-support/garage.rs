//! A private Garage (the S3-compatible store of docs/cluster.md) for one
//! test, set up the way `./dev.sh s3` sets up the development one: a
//! single-node layout, one bucket, one imported key; on ports of its own
//! and in a temporary folder, killed when dropped.
//!
//! The binary is `$THAW_GARAGE`, else `garage` on `PATH`, else
//! `~/.cargo/bin/garage` (where `./dev.sh s3` installs it). Without it
//! [`Garage::start`] returns `Err` with the reason; the caller skips (or
//! fails under `THAW_TEST_STRICT`). `THAW_GARAGE_CONFIG` adds top-level
//! lines to its configuration (for measuring settings such as
//! `block_size = "256K"` or `compression_level = "none"`; `;` separates
//! lines; a key set there replaces its default, e.g. `db_engine = "lmdb"`).

#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Garage's `s3_region`, which clients must use.
pub const REGION: &str = "garage";
/// The bucket made for the test.
pub const BUCKET: &str = "thaw-test";

/// A running private Garage.
pub struct Garage {
    child: Child,
    bin: PathBuf,
    config: PathBuf,
    dir: tempfile::TempDir,
    /// `http://127.0.0.1:PORT` (or the address of [`Garage::start_on`]).
    pub endpoint: String,
    /// The imported key's id.
    pub key_id: String,
    /// Its secret.
    pub secret: String,
}

/// Where the garage binary is, if anywhere.
pub fn binary() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("THAW_GARAGE") {
        return Ok(PathBuf::from(p));
    }
    if let Ok(out) = Command::new("sh")
        .args(["-c", "command -v garage"])
        .output()
    {
        let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if out.status.success() && !path.is_empty() {
            return Ok(PathBuf::from(path));
        }
    }
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"));
    let p = home.join("bin/garage");
    if p.exists() {
        Ok(p)
    } else {
        Err(format!(
            "the garage binary is missing (looked at $THAW_GARAGE, PATH, {}): `./dev.sh s3` installs it",
            p.display()
        ))
    }
}

/// A port Garage can listen on. Not one of the kernel's ephemeral range
/// (what binding port 0 gives): between this check and Garage's own bind,
/// any outbound connection may take such a port, and the store client
/// opens one per ranged read whose TIME_WAIT entry keeps a listener off
/// that port ("Address already in use", a Garage that aborts at start).
fn free_port() -> u16 {
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let (from, to) = (10_000u16, ephemeral_low.max(10_100));
    for _ in 0..500 {
        let port = rand::random_range(from..to);
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The top-level lines of a configuration: `defaults`, then the
/// `;`-separated lines of `extra` (`THAW_GARAGE_CONFIG`); a key `extra`
/// sets replaces its default line (TOML refuses a key set twice).
fn with_extra_lines(defaults: &[String], extra: &str) -> String {
    let key = |line: &str| {
        line.split('=')
            .next()
            .unwrap_or_default()
            .trim()
            .to_string()
    };
    let extra: Vec<&str> = extra
        .split(';')
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let set: Vec<String> = extra.iter().map(|l| key(l)).collect();
    defaults
        .iter()
        .map(String::as_str)
        .filter(|l| !set.contains(&key(l)))
        .chain(extra.iter().copied())
        .map(|l| format!("{l}\n"))
        .collect()
}

fn hex(n: usize) -> String {
    (0..n)
        .map(|_| format!("{:x}", rand::random::<u8>() & 15))
        .collect()
}

impl Garage {
    /// Starts Garage and makes the bucket and the key.
    pub fn start() -> Result<Garage, String> {
        Garage::start_on("127.0.0.1")
    }

    /// [`Garage::start`] with its S3 API on address `host` (a test host's
    /// address on a veth, say) instead of loopback; its RPC stays on
    /// loopback.
    pub fn start_on(host: &str) -> Result<Garage, String> {
        let bin = binary()?;
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let (s3, rpc) = (free_port(), free_port());
        let config = dir.path().join("garage.toml");
        let root = dir.path().display();
        let defaults = [
            format!("metadata_dir = \"{root}/meta\""),
            format!("data_dir = \"{root}/data\""),
            "db_engine = \"sqlite\"".to_string(),
            "replication_factor = 1".to_string(),
            format!("rpc_bind_addr = \"127.0.0.1:{rpc}\""),
            format!("rpc_public_addr = \"127.0.0.1:{rpc}\""),
            format!("rpc_secret = \"{}\"", hex(64)),
        ];
        let top = with_extra_lines(
            &defaults,
            &std::env::var("THAW_GARAGE_CONFIG").unwrap_or_default(),
        );
        std::fs::write(
            &config,
            format!(
                "{top}\n[s3_api]\ns3_region = \"{REGION}\"\napi_bind_addr = \"{host}:{s3}\"\n\
                 root_domain = \".s3.garage.localhost\"\n"
            ),
        )
        .map_err(|e| e.to_string())?;
        let child = spawn_server(&bin, &config, dir.path())?;
        let mut garage = Garage {
            child,
            bin,
            config,
            dir,
            endpoint: format!("http://{host}:{s3}"),
            key_id: format!("GK{}", hex(24)),
            secret: hex(64),
        };
        garage.set_up()?;
        Ok(garage)
    }

    /// Kills the server (as an outage would); its data stays for
    /// [`Garage::restart`].
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the server again on the same data and ports, and waits until
    /// it answers.
    pub fn restart(&mut self) -> Result<(), String> {
        self.stop();
        self.child = spawn_server(&self.bin, &self.config, self.dir.path())?;
        self.wait_ready()
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.cli(&["status"]).status.success() {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("garage exited ({status}): {}", self.log()));
            }
            if Instant::now() > deadline {
                return Err(format!("garage did not answer in 60 s: {}", self.log()));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(())
    }

    fn set_up(&mut self) -> Result<(), String> {
        self.wait_ready()?;
        let id = self.ok(&["node", "id", "-q"])?;
        let node = id.trim().split('@').next().unwrap_or_default().to_string();
        self.ok(&["layout", "assign", "-z", "dc1", "-c", "1G", &node])?;
        self.ok(&["layout", "apply", "--version", "1"])?;
        self.ok(&["bucket", "create", BUCKET])?;
        let (key_id, secret) = (self.key_id.clone(), self.secret.clone());
        self.ok(&[
            "key",
            "import",
            "--yes",
            "-n",
            "thaw-test",
            &key_id,
            &secret,
        ])?;
        self.ok(&[
            "bucket", "allow", "--read", "--write", "--owner", BUCKET, "--key", &key_id,
        ])?;
        Ok(())
    }

    /// Runs `garage -c CONFIG ARGS...`.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(&self.bin)
            .arg("-c")
            .arg(&self.config)
            .args(args)
            .output()
            .expect("running garage")
    }

    fn ok(&self, args: &[&str]) -> Result<String, String> {
        let out = self.cli(args);
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "garage {}: {}{}",
                args.join(" "),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("garage.log")).unwrap_or_default()
    }

    /// The folder of its config and data.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The variables that point an S3 client (and `thaw`) at it.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.endpoint.clone()),
            ("AWS_ACCESS_KEY_ID", self.key_id.clone()),
            ("AWS_SECRET_ACCESS_KEY", self.secret.clone()),
            ("AWS_REGION", REGION.to_string()),
            ("AWS_ALLOW_HTTP", "true".to_string()),
        ]
    }
}

fn spawn_server(bin: &Path, config: &Path, dir: &Path) -> Result<Child, String> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("garage.log"))
        .map_err(|e| e.to_string())?;
    Command::new(bin)
        .arg("-c")
        .arg(config)
        .arg("server")
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(|e| e.to_string())?)
        .stderr(log)
        .spawn()
        .map_err(|e| format!("starting {}: {e}", bin.display()))
}

impl Drop for Garage {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
