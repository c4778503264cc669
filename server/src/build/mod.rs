//! Dependencies: a version's dependency file installed into a layer.
//!
//! ```text
//! warm-up of a version whose code has the runtime's dependency file
//! (runtime.toml `[dependencies]`: requirements.txt, package.json):
//!   state `building`
//!   key = blake3(runtime, installer command line, file, lockfile)  layer::key
//!   <layer_cache>/<key> exists?  yes: reuse it (no installer run)
//!                                no:  install in a build sandbox   run
//!                                     through the index proxy      proxy
//!                                     unpack, sync, rename          layer
//!   hard-link the layer into the code folder at `into`             layer
//!   (.thaw/python, node_modules), bound read-only at /var/task
//! ```
//!
//! The installer's output goes to the function's logs; a failed install
//! fails the version with that output. Settings: `layer_cache`,
//! `package_index`, `npm_registry`, `index_hosts` (docs/dependencies.md).

pub mod layer;
pub mod proxy;
mod run;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use pool::logs::{LogLine, LogSink, Stream};
use pool::sandbox::SandboxConfig;

use crate::runtime::Runtimes;
use proxy::Allowed;

pub use run::{BUILD_MEMORY_MB, BUILD_PIDS, BUILD_TIMEOUT, BUILD_TMP_MB, PROXY_PORT};

/// How long a layer no version links to is kept after it was last made or
/// linked (a redeploy within it reuses the layer), before
/// [`Builder::remove_unused_layers`] removes it.
pub const LAYER_GRACE: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// The index pip uses when neither the settings nor pip's configuration
/// name one.
pub const DEFAULT_PACKAGE_INDEX: &str = "https://pypi.org/simple";
/// The registry npm uses when neither the settings nor npm's configuration
/// name one.
pub const DEFAULT_NPM_REGISTRY: &str = "https://registry.npmjs.org/";
/// Where PyPI serves the files its index links to.
const PYPI_FILES: &str = "files.pythonhosted.org:443";

/// Settings of dependency builds.
#[derive(Debug, Clone)]
pub struct BuildSettings {
    /// Folder of the layer cache (may be shared by servers on one machine).
    pub layer_cache: PathBuf,
    /// pip's index URL (None: what pip is configured for on the host).
    pub package_index: Option<String>,
    /// npm's registry URL (None: what npm is configured for on the host).
    pub npm_registry: Option<String>,
    /// More `host:port` the installers may reach (e.g. where a mirror
    /// serves its files).
    pub index_hosts: Vec<String>,
    /// The python3 runtime's interpreter (asked for pip's configuration).
    pub python: PathBuf,
}

/// Errors of installing a version's dependencies.
#[derive(Debug, thiserror::Error)]
pub enum DepsError {
    /// The dependency file or lockfile could not be read.
    #[error("reading {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The installer's command line does not expand.
    #[error("installer command: {0}")]
    Command(String),
    /// A setting is wrong.
    #[error("{0}")]
    Settings(String),
    /// The layer could not be made or linked.
    #[error(transparent)]
    Layer(#[from] layer::LayerError),
    /// The build sandbox could not be made.
    #[error("build sandbox: {0}")]
    Sandbox(#[source] pool::sandbox::LaunchError),
    /// The proxy or the output pipe failed.
    #[error("build sandbox plumbing: {0}")]
    Proxy(#[source] std::io::Error),
    /// The installer failed; the message is its output.
    #[error("installing {file} failed ({status}):\n{output}")]
    Failed {
        /// The dependency file.
        file: String,
        /// How the installer ended.
        status: String,
        /// The end of its output.
        output: String,
    },
    /// The installer ran too long.
    #[error("installing {file}: still running after {secs}s, stopped")]
    Timeout {
        /// The dependency file.
        file: String,
        /// The limit.
        secs: u64,
    },
}

/// The indexes in force, resolved once.
#[derive(Debug)]
struct Indexes {
    package_index: String,
    npm_registry: String,
    allowed: Arc<Vec<Allowed>>,
}

/// Installs dependency files into cached layers.
#[derive(Debug)]
pub struct Builder {
    settings: BuildSettings,
    sandbox: SandboxConfig,
    indexes: tokio::sync::OnceCell<Indexes>,
    locks: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    installs: AtomicU64,
}

/// What [`Builder::install`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Installed {
    /// The runtime has no dependency file or the code has none.
    Nothing,
    /// The layer was in the cache.
    Reused(String),
    /// The installer ran and made the layer.
    Built(String),
}

/// What a host tool prints for a setting, if it runs and prints something.
async fn ask(program: &Path, args: &[&str]) -> Option<String> {
    let out = tokio::time::timeout(
        std::time::Duration::from_secs(20),
        tokio::process::Command::new(program)
            .args(args)
            .stdin(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .ok()?
    .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (out.status.success() && !text.is_empty() && text != "undefined").then_some(text)
}

impl Builder {
    /// A builder launching its sandboxes with `sandbox`; removes what an
    /// interrupted build left in the cache, and the layers no version uses.
    pub fn new(settings: BuildSettings, sandbox: SandboxConfig) -> Builder {
        layer::sweep(&settings.layer_cache, 2 * BUILD_TIMEOUT);
        let builder = Builder {
            settings,
            sandbox,
            indexes: tokio::sync::OnceCell::new(),
            locks: std::sync::Mutex::new(HashMap::new()),
            installs: AtomicU64::new(0),
        };
        builder.remove_unused_layers();
        builder
    }

    /// The folder of the layer cache.
    pub fn layer_cache(&self) -> &Path {
        &self.settings.layer_cache
    }

    /// Removes the cached layers that no version links to and that were not
    /// made or linked within [`LAYER_GRACE`] (at startup and after a
    /// function is deleted); logs what it removed. Blocking: it reads every
    /// file's link count.
    pub fn remove_unused_layers(&self) -> Vec<String> {
        let cache = &self.settings.layer_cache;
        let removed = layer::remove_unused(cache, LAYER_GRACE);
        if !removed.is_empty() {
            let short: Vec<&str> = removed.iter().map(|k| &k[..k.len().min(16)]).collect();
            tracing::info!(
                cache = %cache.display(),
                count = removed.len(),
                layers = ?short,
                "removed unused layers"
            );
        }
        removed
    }

    /// Installer runs since the server started.
    pub fn installs(&self) -> u64 {
        self.installs.load(Ordering::Relaxed)
    }

    /// Whether the code of a version of `runtime` has a dependency file
    /// that asks for something to install.
    pub fn has_dependencies(runtimes: &Runtimes, runtime: &str, code_dir: &Path) -> bool {
        runtimes.dependencies(runtime).is_some_and(|(_, d)| {
            std::fs::read(code_dir.join(&d.file)).is_ok_and(|c| d.wants_install(&c))
        })
    }

    /// The settings, the host's pip and npm configuration, or the
    /// defaults, in that order; and the `host:port` list they open.
    async fn indexes(&self) -> Result<&Indexes, DepsError> {
        self.indexes
            .get_or_try_init(|| async {
                let s = &self.settings;
                let package_index = match &s.package_index {
                    Some(u) => u.clone(),
                    None => match std::env::var("PIP_INDEX_URL") {
                        Ok(u) if !u.is_empty() => u,
                        _ => ask(&s.python, &["-m", "pip", "config", "get", "global.index-url"])
                            .await
                            .unwrap_or_else(|| DEFAULT_PACKAGE_INDEX.into()),
                    },
                };
                let npm_registry = match &s.npm_registry {
                    Some(u) => u.clone(),
                    None => ask(Path::new("/usr/bin/npm"), &["config", "get", "registry"])
                        .await
                        .unwrap_or_else(|| DEFAULT_NPM_REGISTRY.into()),
                };
                let mut allowed = Vec::new();
                for url in [&package_index, &npm_registry] {
                    let a = proxy::authority_of_url(url).ok_or_else(|| {
                        DepsError::Settings(format!("{url:?} is not an http(s) URL"))
                    })?;
                    if a.host == "pypi.org" {
                        allowed.extend(proxy::parse_authority(PYPI_FILES, 443));
                    }
                    allowed.push(a);
                }
                for h in &s.index_hosts {
                    allowed.push(proxy::parse_authority(h, 443).ok_or_else(|| {
                        DepsError::Settings(format!("index_hosts: {h:?} is not host:port"))
                    })?);
                }
                tracing::info!(%package_index, %npm_registry, allowed = ?allowed, "dependency indexes");
                Ok(Indexes {
                    package_index,
                    npm_registry,
                    allowed: Arc::new(allowed),
                })
            })
            .await
    }

    /// Installs the dependency file of `code_dir` (a version of `runtime`)
    /// into its layer, unless the cache has it, and links the layer into
    /// the code folder. Installer output and what was done go to `logs`.
    pub async fn install(
        &self,
        runtimes: &Runtimes,
        runtime: &str,
        code_dir: &Path,
        logs: &LogSink,
    ) -> Result<Installed, DepsError> {
        let Some((rt, deps)) = runtimes.dependencies(runtime) else {
            return Ok(Installed::Nothing);
        };
        let file = code_dir.join(&deps.file);
        if !file.is_file() {
            return Ok(Installed::Nothing);
        }
        let read = |p: &Path| {
            std::fs::read(p).map_err(|source| DepsError::Read {
                path: p.to_path_buf(),
                source,
            })
        };
        let content = read(&file)?;
        if !deps.wants_install(&content) {
            return Ok(Installed::Nothing);
        }
        let lock = match &deps.lockfile {
            Some(l) if code_dir.join(l).is_file() => Some((l.clone(), read(&code_dir.join(l))?)),
            _ => None,
        };
        let idx = self.indexes().await?;
        let settings = [
            ("package_index", idx.package_index.clone()),
            ("npm_registry", idx.npm_registry.clone()),
            ("proxy", format!("http://127.0.0.1:{PROXY_PORT}")),
        ];
        let command = runtimes
            .install_command(deps, lock.is_some(), &settings)
            .map_err(DepsError::Command)?;
        let mut inputs: Vec<layer::KeyInput<'_>> = vec![(&deps.file, Some(&content))];
        if let Some(l) = &deps.lockfile {
            inputs.push((
                l,
                lock.as_ref()
                    .filter(|(n, _)| n == l)
                    .map(|(_, b)| b.as_slice()),
            ));
        }
        let key = layer::key(rt.name(), &command, &inputs);
        let short = &key[..16];
        let cache = &self.settings.layer_cache;
        let dst = layer::path(cache, &key);
        let into = code_dir.join(&deps.into);
        let lock_of_key = {
            let mut locks = self.locks.lock().unwrap();
            locks.entry(key.clone()).or_default().clone()
        };
        let _one_build = lock_of_key.lock().await;
        let note = |line: String| {
            logs(LogLine {
                time_ms: crate::service::now_ms(),
                stream: Stream::Stderr,
                invocation_id: None,
                line,
            })
        };
        if dst.is_dir() {
            note(format!(
                "thaw: {}: reusing layer {short} (no install)",
                deps.file
            ));
            layer::touch(&dst)?;
            link(&dst, &into).await?;
            return Ok(Installed::Reused(key));
        }
        note(format!(
            "thaw: {}: installing into layer {short}: {}",
            deps.file,
            command.join(" ")
        ));
        let tmp = layer::temp_dir(cache, &key)?;
        let inputs_dir = tmp.with_extension("in");
        let result = async {
            std::fs::create_dir(&inputs_dir).map_err(|source| DepsError::Read {
                path: inputs_dir.clone(),
                source,
            })?;
            copy_input(&inputs_dir, &deps.file, &content)?;
            if let Some((name, bytes)) = &lock {
                copy_input(&inputs_dir, name, bytes)?;
            }
            run::run(
                run::Run {
                    sandbox: &self.sandbox,
                    inputs: inputs_dir.clone(),
                    binds: runtimes.binds(rt),
                    command: command.clone(),
                    output: deps.output.clone(),
                    allowed: idx.allowed.clone(),
                    logs,
                    file: &deps.file,
                },
                &tmp,
            )
            .await?;
            let (t, d) = (tmp.clone(), dst.clone());
            tokio::task::spawn_blocking(move || layer::publish(&t, &d))
                .await
                .map_err(|e| DepsError::Proxy(std::io::Error::other(e.to_string())))??;
            Ok::<(), DepsError>(())
        }
        .await;
        let _ = std::fs::remove_dir_all(&inputs_dir);
        if let Err(e) = result {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
        self.installs.fetch_add(1, Ordering::Relaxed);
        note(format!("thaw: {}: layer {short} ready", deps.file));
        link(&dst, &into).await?;
        Ok(Installed::Built(key))
    }
}

fn copy_input(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), DepsError> {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    let io = |source| DepsError::Read {
        path: path.clone(),
        source,
    };
    std::fs::write(&path, bytes).map_err(io)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).map_err(io)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).map_err(|source| {
        DepsError::Read {
            path: dir.to_path_buf(),
            source,
        }
    })
}

async fn link(layer: &Path, into: &Path) -> Result<(), DepsError> {
    let (l, i) = (layer.to_path_buf(), into.to_path_buf());
    tokio::task::spawn_blocking(move || layer::link_into(&l, &i))
        .await
        .map_err(|e| DepsError::Proxy(std::io::Error::other(e.to_string())))??;
    Ok(())
}
