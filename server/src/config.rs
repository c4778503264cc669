//! `thaw serve` settings: a TOML file (`--config`), overridden by `THAW_*`
//! environment variables, overridden by flags. Every key, its variable and
//! its default are in the README's configuration table.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use serde::Deserialize;

use crate::auth::{Role, Tokens};
use crate::serve::ServeOptions;

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// How restored copies get their private memory (docs/restore.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum, Default)]
#[serde(rename_all = "lowercase")]
pub enum MemoryMode {
    /// `MAP_PRIVATE` of the snapshot's image (shared page cache).
    #[default]
    Mmap,
    /// Anonymous memory filled by a userfaultfd page server, with the
    /// recorded working set prefetched.
    Uffd,
}

impl MemoryMode {
    /// The name used in specs, flags and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            MemoryMode::Mmap => "mmap",
            MemoryMode::Uffd => "uffd",
        }
    }
}

/// Settings as they may appear in the file, the environment or flags; unset
/// ones fall through to the next source.
#[derive(Debug, Clone, Default, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Address to listen on (default 127.0.0.1:7070). Anything but loopback
    /// needs a token.
    #[arg(long, env = "THAW_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Data directory: functions, code, store (default .thaw).
    #[arg(long, env = "THAW_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Python interpreter of the python3 runtime (default /usr/bin/python3).
    #[arg(long, env = "THAW_PYTHON")]
    pub python: Option<PathBuf>,
    /// Largest invocation body, MiB (default 6).
    #[arg(long, env = "THAW_MAX_BODY_MB")]
    pub max_body_mb: Option<usize>,
    /// Memory budget of all instances, MiB (default 75% of the machine).
    #[arg(long, env = "THAW_MEMORY_BUDGET_MB")]
    pub memory_budget_mb: Option<u64>,
    /// File of API tokens, one per line, `admin:` or `invoke:` prefixed.
    #[arg(long, env = "THAW_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// Honour the x-thaw-cold request header (benchmarks; default off).
    #[arg(long, env = "THAW_ALLOW_FORCED_COLD", num_args = 0..=1, default_missing_value = "true")]
    pub allow_forced_cold: Option<bool>,
    /// On SIGTERM, seconds in-flight invocations may take (default 30).
    #[arg(long, env = "THAW_STOP_TIMEOUT_S")]
    pub stop_timeout_s: Option<u64>,
    /// How restored copies get their memory: mmap or uffd (default mmap);
    /// a function's `memory_mode` overrides it.
    #[arg(long, env = "THAW_MEMORY_MODE", value_enum)]
    pub memory_mode: Option<MemoryMode>,
    /// Log format: text or json (default text).
    #[arg(long, env = "THAW_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// Log lines kept per function, KiB of text (default 1024).
    #[arg(long, env = "THAW_LOG_KB_PER_FUNCTION")]
    pub log_kb_per_function: Option<usize>,
    /// Oldest log line kept, seconds (default 86400).
    #[arg(long, env = "THAW_LOG_MAX_AGE_S")]
    pub log_max_age_s: Option<u64>,
    /// Pre-made stub sandboxes kept per function version with a snapshot,
    /// so a cold start pays only for the restore (default 2; 0 disables).
    #[arg(long, env = "THAW_SPARE_SANDBOXES")]
    pub spare_sandboxes: Option<usize>,
    /// Most pre-made stub sandboxes in all, over every version (default 16).
    #[arg(long, env = "THAW_SPARE_SANDBOXES_MAX")]
    pub spare_sandboxes_max: Option<usize>,
    /// Most spares one version keeps when its cold starts come in bursts:
    /// its target follows the peak of its concurrent cold starts, decaying
    /// (default 16; at most spare_sandboxes turns that off).
    #[arg(long, env = "THAW_SPARE_SANDBOXES_BURST")]
    pub spare_sandboxes_burst: Option<usize>,
    /// Half-life of a version's learned burst size, seconds: its extra
    /// spares halve every so long without a new burst (default 120; 0
    /// turns learning off).
    #[arg(long, env = "THAW_SPARE_DEMAND_HALF_LIFE_S")]
    pub spare_demand_half_life_s: Option<f64>,
    /// Most dashboard sessions kept at once per role; beyond it the oldest
    /// of that role is signed out (default 10000).
    #[arg(long, env = "THAW_SESSIONS_PER_ROLE")]
    pub sessions_per_role: Option<usize>,
    /// Addresses of outbound sandboxes, a CIDR (default 100.96.0.0/12): the
    /// first host address is their gateway, each sandbox takes one more.
    #[arg(long, env = "THAW_NETWORK_RANGE")]
    pub network_range: Option<String>,
    /// Resolvers the sandboxes' DNS forwarder relays to, `ip` or
    /// `ip:port`, comma-separated (default: the host's /etc/resolv.conf).
    #[arg(long, env = "THAW_DNS_UPSTREAM", value_delimiter = ',')]
    pub dns_upstream: Option<Vec<String>>,
    /// Folder of the dependency layer cache; servers on one machine may
    /// share one (default <data_dir>/layers).
    #[arg(long, env = "THAW_LAYER_CACHE")]
    pub layer_cache: Option<PathBuf>,
    /// Index URL pip installs requirements.txt from (default: what pip is
    /// configured for on the host, else https://pypi.org/simple).
    #[arg(long, env = "THAW_PACKAGE_INDEX")]
    pub package_index: Option<String>,
    /// Registry URL npm installs package.json from (default: what npm is
    /// configured for on the host, else https://registry.npmjs.org/).
    #[arg(long, env = "THAW_NPM_REGISTRY")]
    pub npm_registry: Option<String>,
    /// More `host:port` the installers may reach besides the index and
    /// registry, comma-separated (e.g. a mirror's file host).
    #[arg(long, env = "THAW_INDEX_HOSTS", value_delimiter = ',')]
    pub index_hosts: Option<Vec<String>>,
    /// The shared store, `s3://BUCKET/PREFIX` (docs/cluster.md): versions are
    /// uploaded after their capture. Endpoint and credentials come from
    /// AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
    /// AWS_REGION, AWS_ALLOW_HTTP. Default: none (local data only).
    #[arg(long, env = "THAW_STORE_URL")]
    pub store_url: Option<String>,
    /// File holding the store key (64 hex digits or 32 bytes) that encrypts
    /// and names every object; THAW_STORE_KEY (hex) takes precedence.
    #[arg(long, env = "THAW_STORE_KEY_FILE")]
    pub store_key_file: Option<PathBuf>,
    /// This node is the store's writer (docs/cluster.md): it takes deploys
    /// and deletes, captures and uploads, and publishes every change for
    /// the other nodes. Needs store_url. Default: false (a node with a store
    /// URL follows the writer and forwards deploys and deletes to it).
    #[arg(long, env = "THAW_STORE_WRITER", num_args = 0..=1, default_missing_value = "true")]
    pub store_writer: Option<bool>,
    /// Where the other nodes reach this writer's API, `http://HOST:PORT`
    /// (default: http:// and the address it listens on).
    #[arg(long, env = "THAW_ADVERTISE_URL")]
    pub advertise_url: Option<String>,
    /// The writer deletes objects nothing live references from the shared
    /// store once they are this old, seconds (default 3600); it checks every
    /// grace period (at most every 10 minutes). Only with store_writer.
    #[arg(long, env = "THAW_STORE_GC_GRACE_SECS")]
    pub store_gc_grace_secs: Option<u64>,
    /// Cap of the local page store with a shared store, MiB (default: no
    /// cap): over it, pages no local snapshot needs are freed, then whole
    /// local snapshots that are complete in the shared store are evicted,
    /// least recently restored first (fetched again on their next cold
    /// start). Needs store_url.
    #[arg(long, env = "THAW_STORE_CACHE_MB")]
    pub store_cache_mb: Option<u64>,
    /// Deploy the function in this folder at start (repeatable).
    #[arg(long = "deploy")]
    #[serde(default)]
    pub deploy: Vec<PathBuf>,
}

impl Settings {
    /// Reads a TOML settings file.
    pub fn from_file(path: &Path) -> Result<Settings> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading config file {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("parsing config file {}", path.display()))
    }

    /// `self` where set, else `below`.
    pub fn over(self, below: Settings) -> Settings {
        Settings {
            listen: self.listen.or(below.listen),
            data_dir: self.data_dir.or(below.data_dir),
            python: self.python.or(below.python),
            max_body_mb: self.max_body_mb.or(below.max_body_mb),
            memory_budget_mb: self.memory_budget_mb.or(below.memory_budget_mb),
            token_file: self.token_file.or(below.token_file),
            allow_forced_cold: self.allow_forced_cold.or(below.allow_forced_cold),
            stop_timeout_s: self.stop_timeout_s.or(below.stop_timeout_s),
            memory_mode: self.memory_mode.or(below.memory_mode),
            log_format: self.log_format.or(below.log_format),
            log_kb_per_function: self.log_kb_per_function.or(below.log_kb_per_function),
            log_max_age_s: self.log_max_age_s.or(below.log_max_age_s),
            spare_sandboxes: self.spare_sandboxes.or(below.spare_sandboxes),
            spare_sandboxes_max: self.spare_sandboxes_max.or(below.spare_sandboxes_max),
            spare_sandboxes_burst: self.spare_sandboxes_burst.or(below.spare_sandboxes_burst),
            spare_demand_half_life_s: self
                .spare_demand_half_life_s
                .or(below.spare_demand_half_life_s),
            sessions_per_role: self.sessions_per_role.or(below.sessions_per_role),
            network_range: self.network_range.or(below.network_range),
            dns_upstream: self.dns_upstream.or(below.dns_upstream),
            layer_cache: self.layer_cache.or(below.layer_cache),
            package_index: self.package_index.or(below.package_index),
            npm_registry: self.npm_registry.or(below.npm_registry),
            index_hosts: self.index_hosts.or(below.index_hosts),
            store_url: self.store_url.or(below.store_url),
            store_key_file: self.store_key_file.or(below.store_key_file),
            store_writer: self.store_writer.or(below.store_writer),
            advertise_url: self.advertise_url.or(below.advertise_url),
            store_gc_grace_secs: self.store_gc_grace_secs.or(below.store_gc_grace_secs),
            store_cache_mb: self.store_cache_mb.or(below.store_cache_mb),
            deploy: if self.deploy.is_empty() {
                below.deploy
            } else {
                self.deploy
            },
        }
    }

    /// The options `thaw serve` runs with, defaults filled in. `THAW_TOKEN`
    /// (an admin token) adds to the token file.
    pub fn resolve(self) -> Result<ServeOptions> {
        let mut tokens = match &self.token_file {
            Some(path) => Tokens::load(path)?,
            None => Tokens::none(),
        };
        if let Ok(t) = std::env::var("THAW_TOKEN") {
            if !t.trim().is_empty() {
                tokens.add(Role::Admin, &t).context("THAW_TOKEN")?;
            }
        }
        let network_range: pool::sandbox::net::Ipv4Range = self
            .network_range
            .as_deref()
            .unwrap_or(pool::sandbox::net::DEFAULT_RANGE)
            .parse()
            .map_err(|e| anyhow::anyhow!("network_range: {e}"))?;
        anyhow::ensure!(
            network_range.prefix() <= 30,
            "network_range: {network_range} is too small (a /30 or larger is needed)"
        );
        let dns_upstream = match &self.dns_upstream {
            Some(list) => Some(
                list.iter()
                    .map(|s| crate::dns::parse_upstream(s))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| anyhow::anyhow!("dns_upstream: {e}"))?,
            ),
            None => None,
        };
        for (key, url) in [
            ("package_index", &self.package_index),
            ("npm_registry", &self.npm_registry),
        ] {
            if let Some(url) = url {
                anyhow::ensure!(
                    crate::build::proxy::authority_of_url(url).is_some(),
                    "{key}: {url:?} is not an http:// or https:// URL"
                );
            }
        }
        for h in self.index_hosts.iter().flatten() {
            anyhow::ensure!(
                crate::build::proxy::parse_authority(h, 443).is_some(),
                "index_hosts: {h:?} is not host:port"
            );
        }
        let remote =
            crate::remote::settings(self.store_url.as_deref(), self.store_key_file.as_deref())?;
        let store_writer = self.store_writer.unwrap_or(false);
        anyhow::ensure!(
            !store_writer || remote.is_some(),
            "store_writer needs store_url: a writer publishes to the shared store"
        );
        anyhow::ensure!(
            self.deploy.is_empty() || remote.is_none() || store_writer,
            "deploy at start is for the store's writer: with store_url and without store_writer \
             this node follows the writer (deploy to it instead)"
        );
        if let Some(url) = &self.advertise_url {
            anyhow::ensure!(
                crate::build::proxy::authority_of_url(url).is_some(),
                "advertise_url: {url:?} is not an http:// or https:// URL"
            );
            anyhow::ensure!(
                store_writer,
                "advertise_url is where the writer is reached: set it with store_writer"
            );
        }
        anyhow::ensure!(
            self.store_gc_grace_secs.is_none() || store_writer,
            "store_gc_grace_secs is for the store's writer (readers never delete from the bucket): \
             set it with store_writer"
        );
        anyhow::ensure!(
            self.store_cache_mb.is_none() || remote.is_some(),
            "store_cache_mb caps the local store as a cache of the shared store: it needs store_url"
        );
        Ok(ServeOptions {
            cluster: crate::cluster::ClusterOptions {
                writer: store_writer,
                cache_cap: self
                    .store_cache_mb
                    .map(|mb| scaled(mb, 20, "store_cache_mb"))
                    .transpose()?,
                gc_grace: self
                    .store_gc_grace_secs
                    .map(Duration::from_secs)
                    .unwrap_or(crate::cluster::gc::DEFAULT_GRACE),
                advertise_url: self
                    .advertise_url
                    .map(|u| u.trim_end_matches('/').to_string()),
            },
            remote,
            layer_cache: self.layer_cache,
            package_index: self.package_index,
            npm_registry: self.npm_registry,
            index_hosts: self.index_hosts.unwrap_or_default(),
            network_range,
            dns_upstream,
            listen: self
                .listen
                .unwrap_or_else(|| "127.0.0.1:7070".parse().unwrap()),
            data_dir: self.data_dir.unwrap_or_else(|| PathBuf::from(".thaw")),
            python: self
                .python
                .unwrap_or_else(|| PathBuf::from("/usr/bin/python3")),
            max_body: scaled(self.max_body_mb.unwrap_or(6), 20, "max_body_mb")?,
            memory_budget: self
                .memory_budget_mb
                .map(|m| scaled(m, 20, "memory_budget_mb"))
                .transpose()?,
            tokens,
            token_file: self.token_file.clone(),
            allow_forced_cold: self.allow_forced_cold.unwrap_or(false),
            memory_mode: self.memory_mode.unwrap_or_default(),
            deploy: self.deploy,
            stop_timeout: Duration::from_secs(self.stop_timeout_s.unwrap_or(30)),
            logs: crate::logstore::LogLimits {
                bytes_per_function: scaled(
                    self.log_kb_per_function.unwrap_or(1024),
                    10,
                    "log_kb_per_function",
                )?,
                max_age: Duration::from_secs(self.log_max_age_s.unwrap_or(86_400)),
            },
            spares: {
                let d = pool::manager::SpareConfig::default();
                pool::manager::SpareConfig {
                    per_version: self.spare_sandboxes.unwrap_or(d.per_version),
                    max_total: self.spare_sandboxes_max.unwrap_or(d.max_total),
                    burst_max: self.spare_sandboxes_burst.unwrap_or(d.burst_max),
                    demand_half_life: match self.spare_demand_half_life_s {
                        Some(s) if !(s.is_finite() && s >= 0.0) => {
                            anyhow::bail!("spare_demand_half_life_s must be 0 or more, not {s}")
                        }
                        Some(s) => Duration::from_secs_f64(s),
                        None => d.demand_half_life,
                    },
                }
            },
            sessions_per_role: self
                .sessions_per_role
                .unwrap_or(crate::ui::session::DEFAULT_PER_ROLE),
        })
    }
}

/// `value << shift` (MiB or KiB to bytes), or an error naming the setting
/// when the bytes do not fit (a plain shift would silently drop the high
/// bits: `max_body_mb = 17592186044416` became a limit of 0 bytes).
fn scaled<T>(value: T, shift: u32, key: &str) -> Result<T>
where
    T: Copy
        + std::fmt::Display
        + std::ops::Shl<u32, Output = T>
        + std::ops::Shr<u32, Output = T>
        + PartialEq,
{
    let bytes = value << shift;
    if bytes >> shift != value {
        anyhow::bail!("{key} = {value} is too large");
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_the_file_and_defaults_fill_the_rest() {
        let file: Settings = toml::from_str(
            "listen = \"127.0.0.1:9000\"\nmax_body_mb = 2\nallow_forced_cold = true\nmemory_mode = \"uffd\"\n",
        )
        .unwrap();
        let flags = Settings {
            max_body_mb: Some(3),
            ..Settings::default()
        };
        let opts = flags.over(file).resolve().unwrap();
        assert_eq!(opts.listen.port(), 9000);
        assert_eq!(opts.max_body, 3 << 20);
        assert!(opts.allow_forced_cold);
        assert_eq!(opts.stop_timeout, Duration::from_secs(30));
        assert_eq!(opts.data_dir, PathBuf::from(".thaw"));
        assert_eq!(opts.spares.per_version, 2);
        assert_eq!(opts.spares.max_total, 64);
        assert_eq!(opts.spares.burst_max, 16);
        assert_eq!(
            opts.spares.demand_half_life,
            pool::manager::DEFAULT_DEMAND_HALF_LIFE
        );
    }

    #[test]
    fn spare_sandboxes_come_from_the_file_unless_a_flag_says_otherwise() {
        let file: Settings =
            toml::from_str("spare_sandboxes = 0\nspare_sandboxes_max = 4\n").unwrap();
        let opts = Settings::default().over(file.clone()).resolve().unwrap();
        assert_eq!(opts.spares.per_version, 0);
        assert_eq!(opts.spares.max_total, 4);
        let flags = Settings {
            spare_sandboxes: Some(3),
            ..Settings::default()
        };
        let opts = flags.over(file).resolve().unwrap();
        assert_eq!(opts.spares.per_version, 3);
        assert_eq!(opts.spares.max_total, 4);
    }

    #[test]
    fn spare_learning_is_set_by_its_two_keys() {
        let file: Settings =
            toml::from_str("spare_sandboxes_burst = 8\nspare_demand_half_life_s = 1.5\n").unwrap();
        let opts = Settings::default().over(file).resolve().unwrap();
        assert_eq!(opts.spares.burst_max, 8);
        assert_eq!(opts.spares.demand_half_life, Duration::from_millis(1500));
        let bad: Settings = toml::from_str("spare_demand_half_life_s = -1\n").unwrap();
        assert!(Settings::default().over(bad).resolve().is_err());
    }

    #[test]
    fn memory_mode_layers_like_every_setting() {
        let file: Settings = toml::from_str("memory_mode = \"uffd\"\n").unwrap();
        let opts = Settings::default().over(file).resolve().unwrap();
        assert_eq!(opts.memory_mode, MemoryMode::Uffd);
        let flags = Settings {
            memory_mode: Some(MemoryMode::Mmap),
            ..Settings::default()
        };
        let file: Settings = toml::from_str("memory_mode = \"uffd\"\n").unwrap();
        assert_eq!(
            flags.over(file).resolve().unwrap().memory_mode,
            MemoryMode::Mmap
        );
        assert_eq!(
            Settings::default().resolve().unwrap().memory_mode,
            MemoryMode::Mmap
        );
        let err = toml::from_str::<Settings>("memory_mode = \"lazy\"\n").unwrap_err();
        assert!(err.to_string().contains("mmap"), "{err}");
    }

    /// Seen while writing the config_file fuzz target (its input is
    /// fuzz/corpus/config_file/regress-max-body-wraps): sizes that do not
    /// fit in bytes wrapped instead of failing.
    #[test]
    fn sizes_too_large_for_bytes_are_errors() {
        for (text, key) in [
            ("max_body_mb = 17592186044416\n", "max_body_mb"),
            (
                "memory_budget_mb = 9223372036854775807\n",
                "memory_budget_mb",
            ),
            (
                "log_kb_per_function = 18014398509481984\n",
                "log_kb_per_function",
            ),
        ] {
            let file: Settings = toml::from_str(text).unwrap();
            let err = Settings::default().over(file).resolve().unwrap_err();
            assert!(err.to_string().contains(&format!("{key} = ")), "{err}");
            assert!(err.to_string().ends_with("is too large"), "{err}");
        }
        let file: Settings = toml::from_str("max_body_mb = 4096\n").unwrap();
        let opts = Settings::default().over(file).resolve().unwrap();
        assert_eq!(opts.max_body, 4096 << 20);
    }

    #[test]
    fn network_settings_parse_and_refuse_nonsense() {
        let opts = Settings::default().resolve().unwrap();
        assert_eq!(opts.network_range.to_string(), "100.96.0.0/12");
        assert_eq!(opts.dns_upstream, None);
        let file: Settings = toml::from_str(
            "network_range = \"100.127.200.0/24\"\ndns_upstream = [\"203.0.113.10\", \"127.0.0.1:5353\"]\n",
        )
        .unwrap();
        let opts = Settings::default().over(file).resolve().unwrap();
        assert_eq!(opts.network_range.to_string(), "100.127.200.0/24");
        assert_eq!(
            opts.dns_upstream.unwrap(),
            vec![
                "203.0.113.10:53".parse().unwrap(),
                "127.0.0.1:5353".parse().unwrap()
            ]
        );
        for (toml, needle) in [
            ("network_range = \"100.96.0.1/12\"", "host bits"),
            ("network_range = \"100.96.0.0/31\"", "too small"),
            ("network_range = \"nope\"", "network_range"),
            ("dns_upstream = [\"resolver.lan\"]", "dns_upstream"),
        ] {
            let file: Settings = toml::from_str(toml).unwrap();
            let err = Settings::default()
                .over(file)
                .resolve()
                .unwrap_err()
                .to_string();
            assert!(err.contains(needle), "{toml}: {err}");
        }
    }

    #[test]
    fn dependency_settings_layer_and_refuse_what_is_not_a_url() {
        let file: Settings = toml::from_str(
            "layer_cache = \"/var/cache/thaw-layers\"\npackage_index = \"http://127.0.0.1:3141/simple\"\nindex_hosts = [\"cdn.example:443\"]\n",
        )
        .unwrap();
        let opts = Settings::default().over(file).resolve().unwrap();
        assert_eq!(
            opts.layer_cache,
            Some(PathBuf::from("/var/cache/thaw-layers"))
        );
        assert_eq!(
            opts.package_index.as_deref(),
            Some("http://127.0.0.1:3141/simple")
        );
        assert_eq!(opts.npm_registry, None, "the host's npm configuration");
        assert_eq!(opts.index_hosts, vec!["cdn.example:443".to_string()]);
        for (toml, needle) in [
            ("package_index = \"pypi.org/simple\"", "package_index"),
            ("npm_registry = \"ftp://r/\"", "npm_registry"),
            ("index_hosts = [\"a b\"]", "index_hosts"),
        ] {
            let file: Settings = toml::from_str(toml).unwrap();
            let err = Settings::default()
                .over(file)
                .resolve()
                .unwrap_err()
                .to_string();
            assert!(err.contains(needle), "{toml}: {err}");
        }
    }

    #[test]
    fn the_cache_cap_and_the_gc_grace_need_a_store_and_a_writer() {
        if std::env::var_os("THAW_STORE_KEY").is_some() {
            return;
        }
        let opts = Settings::default().resolve().unwrap();
        assert_eq!(opts.cluster.cache_cap, None);
        assert_eq!(opts.cluster.gc_grace, crate::cluster::gc::DEFAULT_GRACE);
        let err = toml::from_str::<Settings>(
            "store_cache_mb = 100
",
        )
        .unwrap()
        .resolve()
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("store_cache_mb caps the local store"),
            "{err}"
        );
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("key");
        std::fs::write(&key, "ab".repeat(32)).unwrap();
        let text = format!(
            "store_url = \"s3://thaw/dev\"\nstore_key_file = {:?}\nstore_cache_mb = 100\nstore_gc_grace_secs = 5\n",
            key.display().to_string()
        );
        let err = toml::from_str::<Settings>(&text)
            .unwrap()
            .resolve()
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("store_gc_grace_secs is for the store's writer"),
            "{err}"
        );
        let opts = toml::from_str::<Settings>(&format!("{text}store_writer = true\n"))
            .unwrap()
            .resolve()
            .unwrap();
        assert_eq!(opts.cluster.cache_cap, Some(100 << 20));
        assert_eq!(opts.cluster.gc_grace, Duration::from_secs(5));
    }

    #[test]
    fn a_store_url_needs_a_key_and_a_usable_url() {
        if std::env::var_os("THAW_STORE_KEY").is_some() {
            // The variable would stand in for the file below.
            return;
        }
        assert!(Settings::default().resolve().unwrap().remote.is_none());
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("key");
        std::fs::write(&key, "ab".repeat(32)).unwrap();
        let file: Settings = toml::from_str(&format!(
            "store_url = \"s3://thaw/dev\"\nstore_key_file = {:?}\n",
            key.display().to_string()
        ))
        .unwrap();
        let opts = Settings::default().over(file).resolve().unwrap();
        assert_eq!(opts.remote.unwrap().url.to_string(), "s3://thaw/dev");
        let file: Settings = toml::from_str("store_url = \"s3://thaw/dev\"\n").unwrap();
        let err = format!(
            "{:#}",
            Settings::default().over(file).resolve().unwrap_err()
        );
        assert!(err.contains("THAW_STORE_KEY"), "{err}");
        let flags = Settings {
            store_url: Some("https://thaw/dev".into()),
            store_key_file: Some(key.clone()),
            ..Settings::default()
        };
        let err = format!("{:#}", flags.resolve().unwrap_err());
        assert!(err.starts_with("store_url: "), "{err}");
        std::fs::write(&key, "short").unwrap();
        let flags = Settings {
            store_url: Some("s3://thaw/dev".into()),
            store_key_file: Some(key),
            ..Settings::default()
        };
        let err = format!("{:#}", flags.resolve().unwrap_err());
        assert!(err.contains("64 hex digits or exactly 32 bytes"), "{err}");
    }

    #[test]
    fn store_writer_needs_a_store_and_takes_an_advertised_url() {
        if std::env::var_os("THAW_STORE_KEY").is_some() {
            return;
        }
        let opts = Settings::default().resolve().unwrap();
        assert!(!opts.cluster.writer);
        let err = toml::from_str::<Settings>("store_writer = true\n")
            .map(|f| Settings::default().over(f).resolve())
            .unwrap()
            .unwrap_err();
        assert!(
            err.to_string().contains("store_writer needs store_url"),
            "{err}"
        );
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("key");
        std::fs::write(&key, "ab".repeat(32)).unwrap();
        let file: Settings = toml::from_str(&format!(
            "store_url = \"s3://thaw/dev\"\nstore_key_file = {:?}\nstore_writer = true\nadvertise_url = \"http://10.0.0.1:7070/\"\n",
            key.display().to_string()
        ))
        .unwrap();
        let opts = Settings::default().over(file.clone()).resolve().unwrap();
        assert!(opts.cluster.writer);
        assert_eq!(
            opts.cluster.advertise_url.as_deref(),
            Some("http://10.0.0.1:7070")
        );
        let flags = Settings {
            advertise_url: Some("10.0.0.1:7070".into()),
            ..Settings::default()
        };
        let err = flags.over(file.clone()).resolve().unwrap_err();
        assert!(err.to_string().starts_with("advertise_url: "), "{err}");
        let reader = Settings {
            store_writer: Some(false),
            advertise_url: None,
            deploy: vec![PathBuf::from("examples/hello")],
            ..Settings::default()
        };
        let err = reader.over(file).resolve().unwrap_err();
        assert!(
            err.to_string()
                .starts_with("deploy at start is for the store's writer"),
            "{err}"
        );
    }

    #[test]
    fn unknown_keys_are_errors() {
        let err = toml::from_str::<Settings>("lissen = \"x\"\n").unwrap_err();
        assert!(err.to_string().contains("lissen"), "{err}");
    }
}
