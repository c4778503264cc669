//! Runtimes: what `runtime = "…"` in a spec means.
//!
//! A runtime is one folder under `runtimes/` holding a `runtime.toml` (its
//! description) and its protocol shim files. The folders are embedded in the
//! binary at build time (`server/build.rs`); [`REGISTERED`] says which of them
//! thaw offers. Adding a runtime is a new folder and a line there.
//!
//! ```text
//! runtimes/<folder>/runtime.toml   name, handler syntax, argv, env, binds,
//!                                  prepare and build steps (docs/runtimes.md)
//! runtimes/<folder>/…              shim files, written to
//!                                  <data>/runtime/<folder>/ and bound
//!                                  read-only at /var/runtime in the sandbox
//! ```
//!
//! Three moments use a description:
//! * deploy: [`Catalog::validate_handler`] checks the handler's syntax
//!   (`invalid_spec`), [`Runtimes::check_available`] that the host has the
//!   runtime's programs;
//! * warm-up, before the first boot: [`Runtimes::build`] runs the `prepare`
//!   steps once per data directory (e.g. compiling the Java shim) and the
//!   `build` steps on the version's code (e.g. `javac`); a failing build
//!   fails the version with the tool's message;
//! * every launch: [`Runtimes::launch`] turns the description and the spec
//!   into the sandbox's command line and environment.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use pool::cgroup::CgroupLimits;
use pool::sandbox::LaunchSpec;
use serde::Deserialize;

use crate::spec::FunctionSpec;

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/runtimes.rs"));
}

/// The runtime folders thaw offers, one line each.
pub const REGISTERED: &[&str] = &["python", "node", "java"];

/// Where a function's code is inside its sandbox.
pub const TASK_DIR: &str = "/var/task";
/// Where the runtime's folder is inside the sandbox.
pub const RUNTIME_DIR: &str = "/var/runtime";

/// The longest a build or prepare step may run.
const STEP_TIMEOUT: Duration = Duration::from_secs(300);
/// Most bytes of a failing step's output kept in the version's error.
const MAX_STEP_OUTPUT: usize = 16 * 1024;
/// The description's file name in a runtime folder.
const DESCRIPTION: &str = "runtime.toml";
/// Written into an installed runtime folder once its `prepare` steps ran on
/// exactly these files.
const PREPARED_STAMP: &str = ".prepared";

/// A `runtime.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Description {
    /// The spec's `runtime` value, e.g. `node20`.
    pub name: String,
    /// One line for people.
    pub description: String,
    /// Handler used when the spec names none (none: the spec must).
    #[serde(default)]
    pub default_handler: Option<String>,
    /// The handler's shape in words, e.g. `module.function`.
    pub handler_syntax: String,
    /// Regular expression a handler must match.
    pub handler_pattern: String,
    /// Host programs the runtime needs (templates).
    #[serde(default)]
    pub requires: Vec<String>,
    /// Command line of the runtime (templates; `argv[0]` absolute).
    pub argv: Vec<String>,
    /// Environment the runtime adds (templates); the spec's `env` can
    /// override it, never the `THAW_*` variables.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Host paths the sandbox shows read-only for this runtime.
    #[serde(default)]
    pub binds: Vec<String>,
    /// Steps run once on the installed runtime folder.
    #[serde(default)]
    pub prepare: Vec<Step>,
    /// Steps run on each version's code before its first boot.
    #[serde(default)]
    pub build: Vec<Step>,
    /// How a dependency file in the code folder becomes a layer
    /// (docs/dependencies.md).
    #[serde(default)]
    pub dependencies: Option<Dependencies>,
}

/// The `[dependencies]` table of a `runtime.toml`: the installer that turns
/// a dependency file into a layer, run in a build sandbox
/// ([`crate::build`]).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dependencies {
    /// The dependency file in the code folder, e.g. `requirements.txt`.
    pub file: String,
    /// Its lockfile, if the installer has one (e.g. `package-lock.json`).
    #[serde(default)]
    pub lockfile: Option<String>,
    /// The installer's command line (templates), run in a folder holding
    /// copies of the dependency file and its lockfile.
    pub install: Vec<String>,
    /// The command line when there is no lockfile (default: `install`).
    #[serde(default)]
    pub install_unlocked: Option<Vec<String>>,
    /// The folder, relative to where the installer runs, that it fills:
    /// the layer.
    pub output: String,
    /// Where the layer appears in the version's code folder (relative).
    pub into: String,
    /// When set, the dependency file is JSON and names something to
    /// install only when this key is a non-empty object (a `package.json`
    /// that only says `"type": "module"` installs nothing).
    #[serde(default)]
    pub json_key: Option<String>,
}

impl Dependencies {
    /// Whether `content` (the dependency file) asks for anything. A file
    /// that does not parse is left to the installer, whose message says
    /// why.
    pub fn wants_install(&self, content: &[u8]) -> bool {
        let Some(key) = &self.json_key else {
            return true;
        };
        match serde_json::from_slice::<serde_json::Value>(content) {
            Ok(v) => v
                .get(key)
                .and_then(|d| d.as_object())
                .is_some_and(|d| !d.is_empty()),
            Err(_) => true,
        }
    }
}

/// One step of `prepare` or `build`: a command, or a small file to write.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    /// What it is for (shown when it fails).
    pub what: String,
    /// Command to run (templates; `{inputs}` alone expands to the input
    /// files), in the folder it works on.
    #[serde(default)]
    pub run: Option<Vec<String>>,
    /// Extension of the input files (e.g. `.java`): the step runs only when
    /// the folder holds such files.
    #[serde(default)]
    pub inputs: Option<String>,
    /// A directory (relative) made empty before the command runs, for its
    /// output.
    #[serde(default)]
    pub output: Option<String>,
    /// Relative path of a file to write (skipped when its folder exists:
    /// the function's own files win).
    #[serde(default)]
    pub file: Option<String>,
    /// Contents of `file`.
    #[serde(default)]
    pub text: Option<String>,
}

/// A registered runtime: its description and files.
#[derive(Debug)]
pub struct Runtime {
    /// Its folder under `runtimes/`.
    pub folder: &'static str,
    /// Its `runtime.toml`.
    pub desc: Description,
    pattern: regex::Regex,
    files: embedded::Files,
}

/// Every registered runtime, parsed once.
#[derive(Debug)]
pub struct Catalog {
    list: Vec<Runtime>,
}

/// A runtime folder whose description is wrong (a bug of thaw's build, caught
/// by the tests).
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// A registered folder is not under `runtimes/`.
    #[error("runtime folder {0:?} is registered but not embedded")]
    Missing(&'static str),
    /// The description does not parse.
    #[error("runtimes/{folder}/runtime.toml: {source}")]
    Parse {
        /// The folder.
        folder: &'static str,
        /// The parser's error.
        #[source]
        source: toml::de::Error,
    },
    /// The description parses but says something impossible.
    #[error("runtimes/{folder}/runtime.toml: {message}")]
    Invalid {
        /// The folder.
        folder: &'static str,
        /// What is wrong.
        message: String,
    },
}

/// Values the templates of argv, env and steps may name.
#[derive(Debug, Clone, Default)]
pub struct Vars(BTreeMap<&'static str, String>);

impl Vars {
    fn set(&mut self, key: &'static str, value: impl Into<String>) -> &mut Self {
        self.0.insert(key, value.into());
        self
    }
}

/// Every name a template may use; the catalog refuses others.
const VARS: &[&str] = &[
    "python",
    "handler",
    "function",
    "version",
    "hash_seed",
    "memory_mb",
    "heap_mb",
    "cpus",
    "code_dir",
    "runtime_dir",
    "package_index",
    "npm_registry",
    "proxy",
];

/// Expands `{name}` in `template`; `{{` and `}}` are literal braces.
fn expand(template: &str, vars: &Vars) -> Result<String, String> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(i) = rest.find(['{', '}']) {
        out.push_str(&rest[..i]);
        let c = rest.as_bytes()[i];
        let after = &rest[i + 1..];
        if after.as_bytes().first() == Some(&c) {
            out.push(c as char);
            rest = &after[1..];
            continue;
        }
        if c == b'}' {
            return Err(format!("unmatched '}}' in {template:?}"));
        }
        let end = after
            .find('}')
            .ok_or_else(|| format!("unclosed '{{' in {template:?}"))?;
        let name = &after[..end];
        let value = vars
            .0
            .get(name)
            .ok_or_else(|| format!("unknown variable {{{name}}} in {template:?}"))?;
        out.push_str(value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

fn every_var() -> Vars {
    let mut v = Vars::default();
    for name in VARS {
        v.set(name, "x");
    }
    v
}

impl Runtime {
    fn parse(folder: &'static str, files: embedded::Files) -> Result<Runtime, CatalogError> {
        let invalid = |message: String| CatalogError::Invalid { folder, message };
        let text = files
            .iter()
            .find(|(p, _)| *p == DESCRIPTION)
            .map(|(_, b)| String::from_utf8_lossy(b).into_owned())
            .ok_or_else(|| invalid(format!("no {DESCRIPTION}")))?;
        let desc: Description =
            toml::from_str(&text).map_err(|source| CatalogError::Parse { folder, source })?;
        let pattern = regex::Regex::new(&desc.handler_pattern)
            .map_err(|e| invalid(format!("handler_pattern: {e}")))?;
        if let Some(h) = &desc.default_handler {
            if !pattern.is_match(h) {
                return Err(invalid(format!(
                    "default_handler {h:?} does not match handler_pattern"
                )));
            }
        }
        let all = every_var();
        let templates = desc
            .argv
            .iter()
            .chain(desc.env.values())
            .chain(&desc.requires)
            .chain(
                desc.prepare
                    .iter()
                    .chain(&desc.build)
                    .flat_map(|s| s.run.iter().flatten().filter(|a| a.as_str() != "{inputs}")),
            );
        for t in templates {
            expand(t, &all).map_err(invalid)?;
        }
        if desc.argv.is_empty() {
            return Err(invalid("argv is empty".into()));
        }
        if let Some(d) = &desc.dependencies {
            let commands = std::iter::once(&d.install).chain(&d.install_unlocked);
            for cmd in commands {
                if cmd.is_empty() {
                    return Err(invalid("dependencies: an empty install command".into()));
                }
                for t in cmd {
                    expand(t, &all).map_err(invalid)?;
                }
            }
            for rel in [&d.file, &d.output, &d.into].into_iter().chain(&d.lockfile) {
                if !crate::spec::valid_code_path(rel) {
                    return Err(invalid(format!("dependencies: {rel:?} is not relative")));
                }
            }
        }
        for b in &desc.binds {
            if !b.starts_with('/') {
                return Err(invalid(format!("bind {b:?} is not an absolute path")));
            }
        }
        for k in desc.env.keys() {
            if k.starts_with("THAW_") {
                return Err(invalid(format!("env {k}: THAW_* is set by thaw")));
            }
        }
        for s in desc.prepare.iter().chain(&desc.build) {
            let ok = match (&s.run, &s.file, &s.text) {
                (Some(run), None, None) => !run.is_empty(),
                (None, Some(_), Some(_)) => s.inputs.is_none() && s.output.is_none(),
                _ => false,
            };
            if !ok {
                return Err(invalid(format!(
                    "step {:?} must have either `run`, or `file` and `text`",
                    s.what
                )));
            }
            for rel in s.file.iter().chain(&s.output) {
                if !crate::spec::valid_code_path(rel) {
                    return Err(invalid(format!(
                        "step {:?}: {rel:?} is not relative",
                        s.what
                    )));
                }
            }
        }
        Ok(Runtime {
            folder,
            desc,
            pattern,
            files,
        })
    }

    /// The spec's `runtime` value.
    pub fn name(&self) -> &str {
        &self.desc.name
    }

    /// Checks the handler's syntax; the message names the expected shape.
    pub fn validate_handler(&self, handler: &str) -> Result<(), String> {
        if self.pattern.is_match(handler) {
            Ok(())
        } else {
            Err(format!(
                "field `handler` must look like \"{}\" for runtime {}, got {handler:?}",
                self.desc.handler_syntax, self.desc.name
            ))
        }
    }
}

impl Catalog {
    fn load() -> Result<Catalog, CatalogError> {
        let mut list = Vec::new();
        for folder in REGISTERED {
            let (_, files) = embedded::EMBEDDED
                .iter()
                .find(|(f, _)| f == folder)
                .ok_or(CatalogError::Missing(folder))?;
            let rt = Runtime::parse(folder, files)?;
            if list.iter().any(|r: &Runtime| r.name() == rt.name()) {
                return Err(CatalogError::Invalid {
                    folder,
                    message: format!("a second runtime named {:?}", rt.name()),
                });
            }
            list.push(rt);
        }
        Ok(Catalog { list })
    }

    /// The runtime a spec names.
    pub fn get(&self, name: &str) -> Option<&Runtime> {
        self.list.iter().find(|r| r.name() == name)
    }

    /// Every runtime's name, in registration order.
    pub fn names(&self) -> Vec<&str> {
        self.list.iter().map(Runtime::name).collect()
    }

    /// Every runtime.
    pub fn iter(&self) -> impl Iterator<Item = &Runtime> {
        self.list.iter()
    }
}

/// The registered runtimes. Panics if a description is broken: that is a bug
/// of the build, and `tests::catalog_loads` catches it.
pub fn catalog() -> &'static Catalog {
    static CATALOG: OnceLock<Catalog> = OnceLock::new();
    CATALOG.get_or_init(|| match Catalog::load() {
        Ok(c) => c,
        Err(e) => panic!("{e}"),
    })
}

/// The Java heap (and Node's old space) for a memory limit: five eighths,
/// leaving the rest to metaspace, code, stacks and the runtime's own memory.
pub fn heap_mb(memory_mb: u64) -> u64 {
    (memory_mb * 5 / 8).max(16)
}

/// Errors of writing the runtimes into the data directory.
#[derive(Debug, thiserror::Error)]
#[error("{what} {}: {source}", path.display())]
pub struct InstallError {
    what: &'static str,
    path: PathBuf,
    #[source]
    source: std::io::Error,
}

/// Errors of preparing a runtime or building a version's code.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The spec names no registered runtime.
    #[error("unknown runtime {0:?}")]
    Unknown(String),
    /// A file or directory could not be made.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// Where.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A step's template does not expand.
    #[error("{0}")]
    Template(String),
    /// A step could not be started.
    #[error("{what}: cannot run {program}: {source}")]
    Spawn {
        /// The step.
        what: String,
        /// Its program.
        program: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A step ran longer than allowed.
    #[error("{what}: still running after {}s, stopped", STEP_TIMEOUT.as_secs())]
    Timeout {
        /// The step.
        what: String,
    },
    /// A step failed; the message is its output.
    #[error("{what} failed ({status}):\n{output}")]
    Failed {
        /// The step.
        what: String,
        /// Its exit status.
        status: String,
        /// What it printed (cut to 16 KiB).
        output: String,
    },
}

/// A runtime the host cannot run.
#[derive(Debug, thiserror::Error)]
#[error("runtime {runtime} needs {path}, which this server does not have")]
pub struct Unavailable {
    /// The runtime.
    pub runtime: String,
    /// The missing program.
    pub path: String,
}

/// The registered runtimes installed in a data directory.
#[derive(Debug)]
pub struct Runtimes {
    catalog: &'static Catalog,
    root: PathBuf,
    python: PathBuf,
    hash_seed: u32,
    prepare_lock: tokio::sync::Mutex<()>,
}

fn io_err<'a>(
    what: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> InstallError + 'a {
    move |source| InstallError {
        what,
        path: path.to_path_buf(),
        source,
    }
}

fn build_io<'a>(
    what: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> BuildError + 'a {
    move |source| BuildError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// blake3 of a runtime's embedded files (names and contents).
fn files_hash(files: &[(&str, &[u8])]) -> String {
    let mut h = blake3::Hasher::new();
    for (path, data) in files {
        h.update(&(path.len() as u64).to_le_bytes());
        h.update(path.as_bytes());
        h.update(&(data.len() as u64).to_le_bytes());
        h.update(data);
    }
    h.finalize().to_hex().to_string()
}

/// Files with extension `ext` under `dir`, relative, sorted.
fn inputs(dir: &Path, ext: &str) -> Result<Vec<String>, BuildError> {
    fn walk(root: &Path, rel: &Path, ext: &str, out: &mut Vec<String>) -> Result<(), BuildError> {
        let here = root.join(rel);
        for entry in std::fs::read_dir(&here).map_err(build_io("list", &here))? {
            let entry = entry.map_err(build_io("list", &here))?;
            let ty = entry.file_type().map_err(build_io("stat", &entry.path()))?;
            let name = entry.file_name();
            let path = rel.join(&name);
            if ty.is_dir() {
                if name != ".thaw" {
                    walk(root, &path, ext, out)?;
                }
            } else if ty.is_file() && name.to_string_lossy().ends_with(ext) {
                out.push(path.to_string_lossy().into_owned());
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(dir, Path::new(""), ext, &mut out)?;
    out.sort();
    Ok(out)
}

impl Runtimes {
    /// Writes every registered runtime's files under `<data_dir>/runtime/`
    /// (world-readable: sandboxes bind them).
    pub fn install(
        data_dir: &Path,
        python: PathBuf,
        hash_seed: u32,
    ) -> Result<Runtimes, InstallError> {
        use std::os::unix::fs::PermissionsExt;
        let catalog = catalog();
        let root = data_dir.join("runtime");
        for rt in catalog.iter() {
            let dir = root.join(rt.folder);
            std::fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
            for (rel, data) in rt.files {
                let path = dir.join(rel);
                let parent = path.parent().expect("a file has a folder");
                std::fs::create_dir_all(parent).map_err(io_err("create", parent))?;
                if std::fs::read(&path).ok().as_deref() != Some(*data) {
                    crate::registry::write_atomic(&path, data).map_err(|e| InstallError {
                        what: "write",
                        path: path.clone(),
                        source: std::io::Error::other(e.to_string()),
                    })?;
                }
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))
                    .map_err(io_err("chmod", &path))?;
                let mut d = parent;
                while d.starts_with(&root) {
                    std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755))
                        .map_err(io_err("chmod", d))?;
                    match d.parent() {
                        Some(p) => d = p,
                        None => break,
                    }
                }
            }
        }
        Ok(Runtimes {
            catalog,
            root,
            python,
            hash_seed,
            prepare_lock: tokio::sync::Mutex::new(()),
        })
    }

    /// The registered runtimes.
    pub fn catalog(&self) -> &'static Catalog {
        self.catalog
    }

    /// Host folder of an installed runtime.
    pub fn dir(&self, rt: &Runtime) -> PathBuf {
        self.root.join(rt.folder)
    }

    fn base_vars(&self) -> Vars {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let mut v = Vars::default();
        v.set("python", self.python.display().to_string())
            .set("hash_seed", self.hash_seed.to_string())
            .set("cpus", cpus.to_string());
        v
    }

    /// Whether the host has what runtime `name` runs on.
    pub fn check_available(&self, name: &str) -> Result<(), Unavailable> {
        let Some(rt) = self.catalog.get(name) else {
            return Err(Unavailable {
                runtime: name.into(),
                path: "a runtime of that name".into(),
            });
        };
        let vars = self.base_vars();
        for r in &rt.desc.requires {
            let path = expand(r, &vars).unwrap_or_else(|_| r.clone());
            if !Path::new(&path).is_file() {
                return Err(Unavailable {
                    runtime: name.into(),
                    path,
                });
            }
        }
        Ok(())
    }

    /// The sandbox launch of one version: the runtime's command line and
    /// environment, the spec's limits. A runtime unknown to this build (a
    /// record written by another) gets a command that fails to start, so its
    /// boots fail with a clear error.
    pub fn launch(
        &self,
        spec: &FunctionSpec,
        function: &str,
        version: u64,
        code_dir: PathBuf,
    ) -> LaunchSpec {
        let mut vars = self.base_vars();
        vars.set("handler", spec.handler.clone())
            .set("function", function)
            .set("version", version.to_string())
            .set("memory_mb", spec.memory_mb.to_string())
            .set("heap_mb", heap_mb(spec.memory_mb).to_string());
        if let Some(cores) = spec.cpu {
            // A cap of 0.5 cores still runs on one CPU at a time.
            vars.set("cpus", (cores.ceil() as u64).max(1).to_string());
        }
        let mut env: Vec<(String, String)> = vec![
            ("PATH".into(), "/usr/local/bin:/usr/bin:/bin".into()),
            ("HOME".into(), "/tmp".into()),
            ("LANG".into(), "C.UTF-8".into()),
        ];
        let put = |env: &mut Vec<(String, String)>, k: &str, v: String| {
            env.retain(|(ek, _)| ek != k);
            env.push((k.to_string(), v));
        };
        let rt = self.catalog.get(&spec.runtime);
        let (argv, runtime_dir) = match rt {
            Some(rt) => {
                for (k, t) in &rt.desc.env {
                    let v = expand(t, &vars).expect("templates checked when the catalog loaded");
                    put(&mut env, k, v);
                }
                let argv = rt
                    .desc
                    .argv
                    .iter()
                    .map(|t| expand(t, &vars).expect("templates checked when the catalog loaded"))
                    .collect();
                (argv, Some(self.dir(rt)))
            }
            None => {
                tracing::error!(function, runtime = %spec.runtime, "unknown runtime");
                (vec![format!("/nonexistent/runtime/{}", spec.runtime)], None)
            }
        };
        for (k, v) in &spec.env {
            put(&mut env, k, v.clone());
        }
        put(&mut env, "THAW_HANDLER", spec.handler.clone());
        put(&mut env, "THAW_FUNCTION", function.to_string());
        put(&mut env, "THAW_VERSION", version.to_string());
        // What of the host the sandbox sees: the common base
        // (pool::sandbox::binds::BASE), the runtime's own `binds`, and the
        // interpreter wherever it is.
        let mut binds: Vec<PathBuf> = pool::sandbox::binds::BASE
            .iter()
            .map(PathBuf::from)
            .collect();
        if let Some(rt) = rt {
            binds.extend(rt.desc.binds.iter().map(PathBuf::from));
        }
        if let Some(exe) = argv.first() {
            binds.push(PathBuf::from(exe));
        }
        LaunchSpec {
            code_dir,
            runtime_dir,
            binds,
            argv,
            env,
            cwd: TASK_DIR.into(),
            limits: CgroupLimits {
                memory_bytes: spec.memory_mb << 20,
                pids: spec.pids,
                cpu_weight: spec.cpu_weight,
                cpu_millicores: spec.cpu.map(|cores| (cores * 1000.0).round() as u64),
            },
            tmp_mb: spec.tmp_mb,
            network: spec.network,
            // Validated at deploy; a record that no longer parses opens
            // nothing.
            network_allow: spec.network_allow_rules().unwrap_or_default(),
            // Warm-ups are captured: a fixed layout lets snapshots of every
            // boot and function share pages (see README, "Snapshots").
            no_aslr: true,
            stub: false,
        }
    }

    /// The runtime `name` and its `[dependencies]` table, if it has one.
    pub fn dependencies(&self, name: &str) -> Option<(&'static Runtime, &'static Dependencies)> {
        let rt = self.catalog.get(name)?;
        rt.desc.dependencies.as_ref().map(|d| (rt, d))
    }

    /// The installer command line of `deps` (`locked`: a lockfile is there)
    /// with the build's settings (`package_index`, `npm_registry`, `proxy`).
    pub fn install_command(
        &self,
        deps: &Dependencies,
        locked: bool,
        settings: &[(&'static str, String)],
    ) -> Result<Vec<String>, String> {
        let mut vars = self.base_vars();
        for (k, v) in settings {
            vars.set(k, v.clone());
        }
        let cmd = match (&deps.install_unlocked, locked) {
            (Some(unlocked), false) => unlocked,
            _ => &deps.install,
        };
        cmd.iter().map(|t| expand(t, &vars)).collect()
    }

    /// Host paths a sandbox of runtime `rt` sees (the common base, the
    /// runtime's binds, and the interpreter wherever it is).
    pub fn binds(&self, rt: &Runtime) -> Vec<PathBuf> {
        let mut binds: Vec<PathBuf> = pool::sandbox::binds::BASE
            .iter()
            .map(PathBuf::from)
            .collect();
        binds.extend(rt.desc.binds.iter().map(PathBuf::from));
        if let Some(exe) = rt.desc.argv.first() {
            if let Ok(exe) = expand(exe, &self.base_vars()) {
                binds.push(PathBuf::from(exe));
            }
        }
        binds
    }

    /// Runs the runtime's `prepare` steps unless they ran on these files.
    async fn prepare(&self, rt: &Runtime, vars: &Vars) -> Result<(), BuildError> {
        if rt.desc.prepare.is_empty() {
            return Ok(());
        }
        let rt_dir = self.dir(rt);
        let _guard = self.prepare_lock.lock().await;
        let stamp = rt_dir.join(PREPARED_STAMP);
        let want = files_hash(rt.files);
        if std::fs::read_to_string(&stamp).ok().as_deref() == Some(want.as_str()) {
            return Ok(());
        }
        for step in &rt.desc.prepare {
            run_step(step, &rt_dir, vars).await?;
        }
        crate::registry::write_atomic(&stamp, want.as_bytes()).map_err(|e| BuildError::Io {
            what: "write",
            path: stamp.clone(),
            source: std::io::Error::other(e.to_string()),
        })
    }

    fn step_vars(&self, rt: &Runtime, code_dir: &Path) -> Vars {
        let mut vars = self.base_vars();
        vars.set("runtime_dir", self.dir(rt).display().to_string())
            .set("code_dir", code_dir.display().to_string());
        vars
    }

    /// At start: prepares again every runtime prepared here before whose
    /// files changed (a new thaw binary), so that versions already deployed
    /// boot on the new shim. Runtimes never prepared here wait for their
    /// first deploy.
    pub async fn refresh_stale(&self) -> Result<(), BuildError> {
        for rt in self.catalog.iter() {
            let stamp = self.dir(rt).join(PREPARED_STAMP);
            if stamp.exists() {
                let vars = self.step_vars(rt, &self.dir(rt));
                self.prepare(rt, &vars).await?;
            }
        }
        Ok(())
    }

    /// Runs the runtime's `prepare` steps if they have not run on these
    /// files (its shim compiled in this data directory), without building
    /// any code: for a node that takes versions built elsewhere (a reader
    /// of a shared store, docs/cluster.md).
    pub async fn prepare_runtime(&self, runtime: &str) -> Result<(), BuildError> {
        let rt = self
            .catalog
            .get(runtime)
            .ok_or_else(|| BuildError::Unknown(runtime.into()))?;
        let vars = self.step_vars(rt, &self.dir(rt));
        self.prepare(rt, &vars).await
    }

    /// Runs the runtime's `prepare` steps if they have not run on these
    /// files, then its `build` steps on `code_dir`. Blocks the task, not the
    /// thread.
    pub async fn build(&self, runtime: &str, code_dir: &Path) -> Result<(), BuildError> {
        let rt = self
            .catalog
            .get(runtime)
            .ok_or_else(|| BuildError::Unknown(runtime.into()))?;
        let vars = self.step_vars(rt, code_dir);
        self.prepare(rt, &vars).await?;
        for step in &rt.desc.build {
            run_step(step, code_dir, &vars).await?;
        }
        Ok(())
    }
}

/// Runs one step in `dir`.
async fn run_step(step: &Step, dir: &Path, vars: &Vars) -> Result<(), BuildError> {
    use std::os::unix::fs::PermissionsExt;
    if let (Some(file), Some(text)) = (&step.file, &step.text) {
        let path = dir.join(file);
        let parent = path.parent().expect("a file has a folder");
        if parent.symlink_metadata().is_ok() {
            return Ok(());
        }
        std::fs::create_dir_all(parent).map_err(build_io("create", parent))?;
        let mut d = parent;
        while d.starts_with(dir) && d != dir {
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755))
                .map_err(build_io("chmod", d))?;
            d = d.parent().expect("inside dir");
        }
        std::fs::write(&path, text).map_err(build_io("write", &path))?;
        return std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))
            .map_err(build_io("chmod", &path));
    }
    let Some(run) = &step.run else {
        return Ok(());
    };
    let files = match &step.inputs {
        Some(ext) => {
            let files = inputs(dir, ext)?;
            if files.is_empty() {
                return Ok(());
            }
            files
        }
        None => Vec::new(),
    };
    if let Some(out) = &step.output {
        let out = dir.join(out);
        if out.symlink_metadata().is_ok() {
            std::fs::remove_dir_all(&out).map_err(build_io("empty", &out))?;
        }
        std::fs::create_dir_all(&out).map_err(build_io("create", &out))?;
        let mut d = out.as_path();
        while d.starts_with(dir) && d != dir {
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755))
                .map_err(build_io("chmod", d))?;
            d = d.parent().expect("inside dir");
        }
    }
    let mut argv = Vec::new();
    for a in run {
        if a == "{inputs}" {
            argv.extend(files.iter().cloned());
        } else {
            argv.push(expand(a, vars).map_err(BuildError::Template)?);
        }
    }
    let mut cmd = tokio::process::Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .current_dir(dir)
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("LANG", "C.UTF-8")
        .env("HOME", "/tmp")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let child = cmd.spawn().map_err(|source| BuildError::Spawn {
        what: step.what.clone(),
        program: argv[0].clone(),
        source,
    })?;
    let out = match tokio::time::timeout(STEP_TIMEOUT, child.wait_with_output()).await {
        Ok(r) => r.map_err(|source| BuildError::Spawn {
            what: step.what.clone(),
            program: argv[0].clone(),
            source,
        })?,
        Err(_) => {
            return Err(BuildError::Timeout {
                what: step.what.clone(),
            })
        }
    };
    if out.status.success() {
        // Make what it wrote readable by the function's uid.
        if let Some(o) = &step.output {
            readable(&dir.join(o)).map_err(build_io("chmod", &dir.join(o)))?;
        }
        return Ok(());
    }
    let mut text = String::from_utf8_lossy(&out.stderr).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stdout));
    let mut text = text.trim().to_string();
    if text.len() > MAX_STEP_OUTPUT {
        let mut cut = MAX_STEP_OUTPUT;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push_str("\n…");
    }
    Err(BuildError::Failed {
        what: step.what.clone(),
        status: out.status.to_string(),
        output: text,
    })
}

fn readable(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let ty = entry.file_type()?;
        if ty.is_dir() {
            readable(&entry.path())?;
        } else if ty.is_file() {
            std::fs::set_permissions(entry.path(), std::fs::Permissions::from_mode(0o644))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalog_loads() {
        let c = Catalog::load().expect("every registered description is valid");
        assert_eq!(c.names(), ["python3", "node20", "java17"]);
    }

    #[test]
    fn binds_match_the_sandbox_allow_list() {
        // pool::sandbox::binds keeps a per-runtime list too (its tests use
        // it); until it is dropped the two must say the same.
        for rt in catalog().iter() {
            let pool_list = pool::sandbox::binds::for_runtime(rt.name())
                .unwrap_or_else(|| panic!("{} has no pool bind list", rt.name()));
            assert_eq!(rt.desc.binds, pool_list.paths, "{}", rt.name());
        }
    }

    #[test]
    fn templates_expand() {
        let mut v = Vars::default();
        v.set("heap_mb", "160");
        assert_eq!(expand("-Xmx{heap_mb}m", &v).unwrap(), "-Xmx160m");
        assert_eq!(expand("{{x}}", &v).unwrap(), "{x}");
        assert!(expand("{nope}", &v)
            .unwrap_err()
            .contains("unknown variable {nope}"));
        assert!(expand("{heap_mb", &v).unwrap_err().contains("unclosed"));
    }

    #[test]
    fn handlers_are_checked_per_runtime() {
        let c = catalog();
        let ok = |rt: &str, h: &str| c.get(rt).unwrap().validate_handler(h).is_ok();
        assert!(ok("python3", "main.handler"));
        assert!(ok("python3", "pkg.mod.fn_1"));
        assert!(!ok("python3", "nodot"));
        assert!(!ok("python3", "1mod.handler"));
        assert!(ok("node20", "index.handler"));
        assert!(ok("node20", "lib/app.main"));
        assert!(ok("node20", "my-file.$handler"));
        assert!(!ok("node20", "../x.handler"));
        assert!(!ok("node20", "index"));
        assert!(!ok("node20", "/abs/index.handler"));
        assert!(ok("java17", "example.Hello::handle"));
        assert!(ok("java17", "Hello::handle"));
        assert!(!ok("java17", "example.Hello.handle"));
        assert!(!ok("java17", "example.Hello::"));
        let err = c
            .get("java17")
            .unwrap()
            .validate_handler("x.y")
            .unwrap_err();
        assert!(err.contains("pkg.Class::method"), "{err}");
    }

    #[test]
    fn a_package_json_without_dependencies_installs_nothing() {
        let (_, node) = catalog()
            .get("node20")
            .and_then(|r| r.desc.dependencies.as_ref().map(|d| (r, d)))
            .expect("node20 has a [dependencies] table");
        assert!(!node.wants_install(br#"{"type": "module"}"#));
        assert!(!node.wants_install(br#"{"dependencies": {}}"#));
        assert!(node.wants_install(br#"{"dependencies": {"a": "1"}}"#));
        assert!(node.wants_install(b"{not json"), "npm says what is wrong");
        let py = catalog().get("python3").unwrap();
        let py = py.desc.dependencies.as_ref().unwrap();
        assert!(py.wants_install(b""));
    }

    #[test]
    fn heap_is_five_eighths_of_memory() {
        assert_eq!(heap_mb(256), 160);
        assert_eq!(heap_mb(32), 20);
        assert_eq!(heap_mb(16), 16);
    }
}
