//! The deploy request (`POST /functions`) and its validation.

use std::collections::BTreeMap;

use pool::sandbox::Network;
use serde::{Deserialize, Serialize};

/// Most files in one deployment.
pub const MAX_FILES: usize = 10_000;
/// Most warm-up events.
pub const MAX_WARMUP: usize = 100;
/// Most rounds of the warm-up events (`warmup_repeat`).
pub const MAX_WARMUP_REPEAT: u32 = 10_000;
/// Largest `min_instances` (idle copies restored from a snapshot cost a few
/// MiB each, see README "Memory").
pub const MAX_MIN_INSTANCES: usize = 4_000;

/// A function as deployed: everything but its code.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FunctionSpec {
    /// URL-safe name, the `:id` in every route.
    pub name: String,
    /// Runtime: `python3` (default), `node20` or `java17` (see
    /// docs/runtimes.md).
    #[serde(default = "default_runtime")]
    pub runtime: String,
    /// The handler, in the runtime's syntax (`module.function`,
    /// `file.export`, `pkg.Class::method`); default: the runtime's.
    #[serde(default)]
    pub handler: String,
    /// Memory limit, MiB (default 256).
    #[serde(default = "default_memory_mb")]
    pub memory_mb: u64,
    /// Time allowed per invocation, ms (default 10000).
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Environment of the function.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Most invocations in flight at once (default 8).
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// CPU weight 1..=10000 (default 100).
    #[serde(default = "default_cpu_weight")]
    pub cpu_weight: u64,
    /// CPU cap in cores (`0.5`: half of one core), enforced as a CFS
    /// quota; default none: uncapped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<f64>,
    /// Most processes and threads (default 64).
    #[serde(default = "default_pids")]
    pub pids: u64,
    /// Seconds an idle instance is kept (default 600).
    #[serde(default = "default_keep_alive_s")]
    pub keep_alive_s: u64,
    /// Instances kept ready (default 0).
    #[serde(default)]
    pub min_instances: usize,
    /// Most invocations waiting for a slot (default 64).
    #[serde(default = "default_queue")]
    pub queue: usize,
    /// `none` (loopback only, default) or `outbound`.
    #[serde(default)]
    pub network: Network,
    /// Private destinations an `outbound` function may reach,
    /// `CIDR[:port]` (docs/network.md).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub network_allow: Vec<String>,
    /// Events invoked before the version is marked ready.
    #[serde(default)]
    pub warmup: Vec<serde_json::Value>,
    /// How many times the `warmup` events run (default 1): enough rounds
    /// let a JIT compile the hot paths before the snapshot.
    #[serde(default = "default_warmup_repeat")]
    pub warmup_repeat: u32,
    /// Size of the private `/tmp`, MiB (default 64).
    #[serde(default = "default_tmp_mb")]
    pub tmp_mb: u64,
    /// Capture the warmed instance so cold starts and `min_instances`
    /// copies restore it (default true); `false`: they all boot.
    #[serde(default = "default_snapshot")]
    pub snapshot: bool,
    /// How restored copies get their memory: `mmap` or `uffd` (default:
    /// the server's `--memory-mode`).
    #[serde(default)]
    pub memory_mode: Option<String>,
    /// What the snapshot does with connections the warmed function holds
    /// to outside its process (a database connection, a Unix stream
    /// socket): `cut` (default), every copy gets them as connections that
    /// are gone and reconnects; `refuse`, the capture fails and the
    /// function boots on every cold start. Listening, UDP and netlink
    /// sockets are re-created either way (docs/restore.md, "Sockets").
    #[serde(default, skip_serializing_if = "OnSnapshotConnections::is_default")]
    pub on_snapshot_connections: OnSnapshotConnections,
}

/// The spec field `on_snapshot_connections`.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum OnSnapshotConnections {
    /// Cut them in every copy.
    #[default]
    Cut,
    /// Refuse the capture.
    Refuse,
}

impl OnSnapshotConnections {
    fn is_default(&self) -> bool {
        *self == OnSnapshotConnections::Cut
    }

    /// The capture's policy.
    pub fn policy(self) -> snapshotter::capture::ConnectionPolicy {
        match self {
            OnSnapshotConnections::Cut => snapshotter::capture::ConnectionPolicy::Cut,
            OnSnapshotConnections::Refuse => snapshotter::capture::ConnectionPolicy::Refuse,
        }
    }
}

/// The body of `POST /functions`: the spec plus the code.
#[derive(Debug, Deserialize)]
pub struct DeployRequest {
    /// The function's settings.
    #[serde(flatten)]
    pub spec: FunctionSpecFields,
    /// Relative path → UTF-8 text.
    #[serde(default)]
    pub files: BTreeMap<String, String>,
    /// Base64 of a tar.gz with code and dependencies.
    #[serde(default)]
    pub archive: Option<String>,
}

/// Same fields as [`FunctionSpec`]; flattening cannot be combined with
/// `deny_unknown_fields`, so unknown fields are checked by hand.
pub type FunctionSpecFields = serde_json::Map<String, serde_json::Value>;

fn default_runtime() -> String {
    "python3".into()
}
fn default_warmup_repeat() -> u32 {
    1
}
fn default_memory_mb() -> u64 {
    256
}
fn default_timeout_ms() -> u64 {
    10_000
}
fn default_concurrency() -> usize {
    8
}
fn default_cpu_weight() -> u64 {
    100
}
fn default_pids() -> u64 {
    64
}
fn default_keep_alive_s() -> u64 {
    600
}
fn default_queue() -> usize {
    64
}
fn default_tmp_mb() -> u64 {
    64
}
fn default_snapshot() -> bool {
    true
}

/// Smallest `cpu` cap, cores (1 ms of CPU per 100 ms period).
pub const MIN_CPU: f64 = 0.01;

/// Cores of this host (what a `cpu` cap may be at most).
fn host_cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// A spec that cannot be deployed; the message names the field.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct InvalidSpec(pub String);

fn invalid(msg: impl Into<String>) -> InvalidSpec {
    InvalidSpec(msg.into())
}

/// Whether `name` is a valid function name.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        && name.as_bytes()[0].is_ascii_alphanumeric()
}

fn range<T: PartialOrd + std::fmt::Display>(
    field: &str,
    v: T,
    lo: T,
    hi: T,
) -> Result<(), InvalidSpec> {
    if v < lo || v > hi {
        return Err(invalid(format!(
            "field `{field}` must be between {lo} and {hi}, got {v}"
        )));
    }
    Ok(())
}

impl FunctionSpec {
    /// Parses the settings part of a deploy request.
    pub fn from_fields(fields: FunctionSpecFields) -> Result<FunctionSpec, InvalidSpec> {
        let value = serde_json::Value::Object(fields);
        let mut spec: FunctionSpec = serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            if path == "." {
                invalid(format!("invalid spec: {}", e.inner()))
            } else {
                invalid(format!("field `{path}`: {}", e.inner()))
            }
        })?;
        if spec.handler.is_empty() {
            let rt = crate::runtime::catalog().get(&spec.runtime);
            if let Some(default) = rt.and_then(|rt| rt.desc.default_handler.as_ref()) {
                spec.handler = default.clone();
            } else if rt.is_some() {
                return Err(invalid(format!(
                    "field `handler` is required for runtime {}",
                    spec.runtime
                )));
            }
        }
        spec.validate()?;
        Ok(spec)
    }

    /// Checks every field; the error names the first bad one.
    pub fn validate(&self) -> Result<(), InvalidSpec> {
        if !valid_name(&self.name) {
            return Err(invalid(format!(
                "field `name` must be 1-63 characters of a-z, 0-9, '-' and '_', starting with a letter or digit, got {:?}",
                self.name
            )));
        }
        let catalog = crate::runtime::catalog();
        let Some(runtime) = catalog.get(&self.runtime) else {
            let names: Vec<String> = catalog.names().iter().map(|n| format!("{n:?}")).collect();
            return Err(invalid(format!(
                "field `runtime` must be one of {}, got {:?}",
                names.join(", "),
                self.runtime
            )));
        };
        runtime.validate_handler(&self.handler).map_err(invalid)?;
        range("memory_mb", self.memory_mb, 32, 65_536)?;
        range("timeout_ms", self.timeout_ms, 1, 900_000)?;
        range("concurrency", self.concurrency, 1, 1_000)?;
        range("cpu_weight", self.cpu_weight, 1, 10_000)?;
        if let Some(cpu) = self.cpu {
            let cores = host_cores();
            if !cpu.is_finite() || cpu < MIN_CPU || cpu > cores as f64 {
                return Err(invalid(format!(
                    "field `cpu` must be between {MIN_CPU} and {cores} (this host's cores), got {cpu}"
                )));
            }
        }
        range("pids", self.pids, 4, 32_768)?;
        range("keep_alive_s", self.keep_alive_s, 0, 7 * 86_400)?;
        range("min_instances", self.min_instances, 0, MAX_MIN_INSTANCES)?;
        range("queue", self.queue, 0, 100_000)?;
        range("tmp_mb", self.tmp_mb, 1, 16_384)?;
        if let Some(mode) = &self.memory_mode {
            if mode != "mmap" && mode != "uffd" {
                return Err(invalid(format!(
                    "field `memory_mode` must be \"mmap\" or \"uffd\", got {mode:?}"
                )));
            }
        }
        range("warmup_repeat", self.warmup_repeat, 1, MAX_WARMUP_REPEAT)?;
        self.network_allow_rules()?;
        if self.warmup.len() > MAX_WARMUP {
            return Err(invalid(format!(
                "field `warmup` has more than {MAX_WARMUP} events"
            )));
        }
        for key in self.env.keys() {
            if key.is_empty() || key.contains('=') || key.contains('\0') {
                return Err(invalid(format!("field `env` has an invalid name {key:?}")));
            }
            if key.starts_with("THAW_") {
                return Err(invalid(format!(
                    "field `env`: names starting with THAW_ are reserved ({key})"
                )));
            }
        }
        if self.env.values().any(|v| v.contains('\0')) {
            return Err(invalid("field `env` has a value with a NUL byte"));
        }
        Ok(())
    }
}

/// Most `network_allow` entries.
pub const MAX_NETWORK_ALLOW: usize = 64;

impl FunctionSpec {
    /// The parsed `network_allow` entries; only `outbound` functions may
    /// have any.
    pub fn network_allow_rules(&self) -> Result<Vec<pool::sandbox::net::AllowRule>, InvalidSpec> {
        if !self.network_allow.is_empty() && self.network != Network::Outbound {
            return Err(invalid(
                "field `network_allow` needs `network = \"outbound\"` (a function without network reaches nothing)",
            ));
        }
        if self.network_allow.len() > MAX_NETWORK_ALLOW {
            return Err(invalid(format!(
                "field `network_allow` has more than {MAX_NETWORK_ALLOW} entries"
            )));
        }
        self.network_allow
            .iter()
            .map(|e| {
                e.parse()
                    .map_err(|err| invalid(format!("field `network_allow`: {err}")))
            })
            .collect()
    }
}

/// Checks a relative path from `files` or an archive.
pub fn valid_code_path(path: &str) -> bool {
    let p = std::path::Path::new(path);
    !path.is_empty()
        && !path.contains('\0')
        && p.components()
            .all(|c| matches!(c, std::path::Component::Normal(_)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(json: serde_json::Value) -> FunctionSpecFields {
        json.as_object().unwrap().clone()
    }

    #[test]
    fn on_snapshot_connections_is_cut_or_refuse() {
        let s = FunctionSpec::from_fields(fields(serde_json::json!({"name": "db"}))).unwrap();
        assert_eq!(s.on_snapshot_connections, OnSnapshotConnections::Cut);
        assert_eq!(
            s.on_snapshot_connections.policy(),
            snapshotter::capture::ConnectionPolicy::Cut
        );
        let s = FunctionSpec::from_fields(fields(
            serde_json::json!({"name": "db", "on_snapshot_connections": "refuse"}),
        ))
        .unwrap();
        assert_eq!(
            s.on_snapshot_connections.policy(),
            snapshotter::capture::ConnectionPolicy::Refuse
        );
        let err = FunctionSpec::from_fields(fields(
            serde_json::json!({"name": "db", "on_snapshot_connections": "keep"}),
        ))
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with("field `on_snapshot_connections`: unknown variant `keep`"),
            "{err}"
        );
    }

    #[test]
    fn defaults_are_documented_values() {
        let s = FunctionSpec::from_fields(fields(serde_json::json!({"name": "hello"}))).unwrap();
        assert_eq!(s.memory_mb, 256);
        assert_eq!(s.timeout_ms, 10_000);
        assert_eq!(s.concurrency, 8);
        assert_eq!(s.pids, 64);
        assert_eq!(s.keep_alive_s, 600);
        assert_eq!(s.queue, 64);
        assert_eq!(s.min_instances, 0);
        assert!(s.snapshot);
        assert_eq!(s.network, Network::None);
        assert_eq!(s.memory_mode, None);
        assert_eq!(s.runtime, "python3");
        assert_eq!(s.handler, "main.handler");
        assert_eq!(s.warmup_repeat, 1);
        let s = FunctionSpec::from_fields(fields(
            serde_json::json!({"name": "a", "memory_mode": "uffd"}),
        ))
        .unwrap();
        assert_eq!(s.memory_mode.as_deref(), Some("uffd"));
    }

    #[test]
    fn errors_name_the_field() {
        for (json, field) in [
            (serde_json::json!({"name": "Bad Name"}), "name"),
            (
                serde_json::json!({"name": "a", "memory_mb": 1}),
                "memory_mb",
            ),
            (
                serde_json::json!({"name": "a", "runtime": "ruby"}),
                "runtime",
            ),
            (
                serde_json::json!({"name": "a", "handler": "nodot"}),
                "handler",
            ),
            (serde_json::json!({"name": "a", "bogus": 1}), "bogus"),
            (
                serde_json::json!({"name": "a", "timeout_ms": "x"}),
                "timeout_ms",
            ),
            (
                serde_json::json!({"name": "a", "network": "everywhere"}),
                "everywhere",
            ),
            (
                serde_json::json!({"name": "a", "memory_mode": "lazy"}),
                "memory_mode",
            ),
            (
                serde_json::json!({"name": "a", "runtime": "java17"}),
                "handler",
            ),
            (
                serde_json::json!({"name": "a", "runtime": "java17", "handler": "a.b"}),
                "handler",
            ),
            (
                serde_json::json!({"name": "a", "runtime": "node20", "handler": "index"}),
                "handler",
            ),
            (
                serde_json::json!({"name": "a", "warmup_repeat": 0}),
                "warmup_repeat",
            ),
        ] {
            let err = FunctionSpec::from_fields(fields(json))
                .unwrap_err()
                .to_string();
            assert!(err.contains(field), "{err} should name {field}");
        }
    }

    #[test]
    fn handler_defaults_per_runtime() {
        let s = FunctionSpec::from_fields(fields(
            serde_json::json!({"name": "a", "runtime": "node20"}),
        ))
        .unwrap();
        assert_eq!(s.handler, "index.handler");
        let s = FunctionSpec::from_fields(fields(serde_json::json!({
            "name": "a", "runtime": "java17", "handler": "example.Hello::handle", "warmup_repeat": 50
        })))
        .unwrap();
        assert_eq!(s.handler, "example.Hello::handle");
        assert_eq!(s.warmup_repeat, 50);
    }

    #[test]
    fn cpu_is_cores_validated_against_the_host() {
        let s = FunctionSpec::from_fields(fields(serde_json::json!({"name": "a"}))).unwrap();
        assert_eq!(s.cpu, None, "uncapped by default");
        assert!(!serde_json::to_string(&s).unwrap().contains("\"cpu\""));
        let s = FunctionSpec::from_fields(fields(serde_json::json!({"name": "a", "cpu": 0.5})))
            .unwrap();
        assert_eq!(s.cpu, Some(0.5));
        assert!(serde_json::to_string(&s).unwrap().contains("\"cpu\":0.5"));
        for bad in [
            serde_json::json!(0),
            serde_json::json!(-1),
            serde_json::json!(0.001),
            serde_json::json!(100_000),
            serde_json::json!("half"),
        ] {
            let err =
                FunctionSpec::from_fields(fields(serde_json::json!({"name": "a", "cpu": bad})))
                    .unwrap_err()
                    .to_string();
            assert!(err.contains("cpu"), "{err} should name cpu");
        }
    }

    #[test]
    fn network_allow_is_validated() {
        let s = FunctionSpec::from_fields(fields(serde_json::json!({
            "name": "a", "network": "outbound", "network_allow": ["10.1.2.0/24:5432", "192.168.7.7"]
        })))
        .unwrap();
        let rules = s.network_allow_rules().unwrap();
        assert_eq!(rules.len(), 2);
        assert_eq!(rules[0].port, Some(5432));
        for (json, needle) in [
            (
                serde_json::json!({"name": "a", "network_allow": ["10.0.0.0/8"]}),
                "outbound",
            ),
            (
                serde_json::json!({"name": "a", "network": "outbound", "network_allow": ["10.0.0.1/8"]}),
                "host bits",
            ),
            (
                serde_json::json!({"name": "a", "network": "outbound", "network_allow": ["db:5432"]}),
                "CIDR[:port]",
            ),
            (
                serde_json::json!({"name": "a", "network": "outbound", "network_allow": ["10.0.0.0/8:0"]}),
                "port",
            ),
            (
                serde_json::json!({"name": "a", "network": "outbound", "network_allow": ["fd00::/8"]}),
                "IPv6",
            ),
            (
                serde_json::json!({"name": "a", "network": "outbound", "network_allow": ["127.0.0.1"]}),
                "loopback",
            ),
            (
                serde_json::json!({"name": "a", "network": "outbound", "network_allow": "10.0.0.0/8"}),
                "network_allow",
            ),
        ] {
            let err = FunctionSpec::from_fields(fields(json))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("network_allow") && err.contains(needle),
                "{err} should name network_allow and {needle}"
            );
        }
    }

    #[test]
    fn code_paths_stay_inside() {
        assert!(valid_code_path("main.py"));
        assert!(valid_code_path("pkg/mod.py"));
        assert!(!valid_code_path("../x"));
        assert!(!valid_code_path("/etc/passwd"));
        assert!(!valid_code_path("a/../../b"));
        assert!(!valid_code_path(""));
    }
}
