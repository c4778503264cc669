//! The `thaw` command: the server and the commands that talk to it.
#![forbid(unsafe_code)]

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use server::config::LogFormat;

/// thaw: functions whose cold starts restore snapshots instead of booting.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Args)]
struct ServerArgs {
    /// URL of the thaw server.
    #[arg(
        long,
        env = "THAW_SERVER",
        default_value = "http://127.0.0.1:7070",
        global = true
    )]
    server: String,
    /// API token (bearer), when the server requires one.
    #[arg(long, env = "THAW_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
}

// Parsed once per run: the size of the settings variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server (control plane and dashboard).
    Serve {
        /// TOML file with the settings below (overridden by THAW_* variables
        /// and flags).
        #[arg(long, env = "THAW_CONFIG")]
        config: Option<PathBuf>,
        #[command(flatten)]
        settings: server::config::Settings,
    },
    /// Deploy a function folder (a thaw.toml and the code).
    Deploy {
        /// The folder, or its thaw.toml.
        path: PathBuf,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Invoke a function and print its answer.
    Invoke {
        /// Function name.
        name: String,
        /// The event: JSON text, or @FILE.
        #[arg(long, short)]
        data: Option<String>,
        /// Print the status and x-thaw headers on stderr.
        #[arg(long, short)]
        verbose: bool,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// List functions.
    Ls {
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Print a function's logs.
    Logs {
        /// Function name.
        name: String,
        /// Keep printing new lines.
        #[arg(long, short)]
        follow: bool,
        /// How many recent lines.
        #[arg(long, default_value_t = 100)]
        tail: usize,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Delete a function and its instances.
    Rm {
        /// Function name.
        name: String,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Inspect or maintain the page store of a data directory (no server needed).
    Store {
        #[command(subcommand)]
        action: StoreAction,
        /// Data directory.
        #[arg(long, env = "THAW_DATA_DIR", default_value = ".thaw", global = true)]
        data_dir: PathBuf,
    },
    /// Capture a running process into a self-contained snapshot directory.
    Snapshot {
        /// The process (with its threads and its child processes, captured
        /// as a tree; they keep running).
        #[arg(long)]
        pid: i32,
        /// The directory to create (its own page store and manifest).
        #[arg(long)]
        out: PathBuf,
    },
    /// Restore a snapshot directory as a running copy (stdio are this
    /// command's); exits with the copy's status (128 + signal if killed).
    Restore {
        /// A directory written by `thaw snapshot`; with --remote-snapshot,
        /// the folder (made if missing) whose page store caches what is
        /// fetched and which holds the whole snapshot once the copy has
        /// run (`thaw restore DIR` restores it locally then).
        dir: PathBuf,
        /// How private memory is provided: mmap (image file) or uffd
        /// (default mmap; a remote snapshot is always restored with uffd).
        #[arg(long)]
        mode: Option<pool::restore::Mode>,
        /// Restore the snapshot of this name in the shared store lazily:
        /// the working set first, then what the copy touches, fetched by
        /// ranged reads (docs/cluster.md, "Lazy restore"). A fetch that
        /// fails before the copy resumes exits with 75.
        #[arg(long)]
        remote_snapshot: Option<String>,
        #[command(flatten)]
        remote: RemoteArgs,
    },
    /// Internal: the init of a sandbox (started by the server).
    #[command(hide = true)]
    SandboxInit,
}

#[derive(Debug, Subcommand)]
enum StoreAction {
    /// Objects, stored and logical bytes, dedup ratio.
    Stats,
    /// Rehash every object; exits 1 if any is bad.
    Verify,
    /// Free the pages no snapshot references; with --remote, delete from
    /// the shared store the objects its catalog does not reference that are
    /// older than the grace (docs/cluster.md, "Gc of the bucket").
    Gc {
        /// Collect the shared store's garbage instead of the local store's.
        #[arg(long)]
        remote: bool,
        /// With --remote: print what would be deleted, delete nothing.
        #[arg(long, requires = "remote")]
        dry_run: bool,
        /// With --remote: keep garbage younger than this, seconds
        /// (default 3600).
        #[arg(long, env = "THAW_STORE_GC_GRACE_SECS", requires = "remote")]
        grace_secs: Option<u64>,
        /// With --remote: delete even while a writer's heartbeat is fresh
        /// (its uploads in flight may need what is deleted).
        #[arg(long, requires = "remote")]
        force: bool,
        #[command(flatten)]
        shared: RemoteArgs,
    },
    /// Upload a snapshot to the shared store: the pages the bucket lacks,
    /// then its manifest (docs/cluster.md).
    Push {
        /// The snapshot id (with --snapshot-dir: its name in the bucket).
        id: String,
        /// A folder written by `thaw snapshot` instead of the data directory.
        #[arg(long)]
        snapshot_dir: Option<PathBuf>,
        #[command(flatten)]
        remote: RemoteArgs,
    },
    /// Download a snapshot from the shared store into the local store, every
    /// page verified.
    Pull {
        /// The snapshot's name in the bucket.
        id: String,
        /// Write a `thaw snapshot` folder (for `thaw restore`) instead of
        /// into the data directory.
        #[arg(long)]
        snapshot_dir: Option<PathBuf>,
        #[command(flatten)]
        remote: RemoteArgs,
    },
    /// What the shared store holds; with an id, whether that snapshot is
    /// complete there (exits 1 if not).
    RemoteStatus {
        /// A snapshot's name in the bucket.
        id: Option<String>,
        #[command(flatten)]
        remote: RemoteArgs,
    },
}

/// The shared store (endpoint and credentials from the AWS_* variables).
#[derive(Debug, clap::Args)]
struct RemoteArgs {
    /// `s3://BUCKET/PREFIX`.
    #[arg(long, env = "THAW_STORE_URL")]
    store_url: Option<String>,
    /// File with the store key (THAW_STORE_KEY, 64 hex digits, takes
    /// precedence).
    #[arg(long, env = "THAW_STORE_KEY_FILE")]
    store_key_file: Option<PathBuf>,
}

impl RemoteArgs {
    fn settings(&self) -> Result<Option<server::remote::RemoteSettings>> {
        server::remote::settings(self.store_url.as_deref(), self.store_key_file.as_deref())
    }
}

fn main() {
    // The sandbox init must run before any thread exists.
    if std::env::args().nth(1).as_deref() == Some("sandbox-init") {
        pool::sandbox::init::init_main();
    }
    let mut cli = Cli::parse();
    // `thaw serve` settings are resolved first: they choose the log format.
    let mut format = LogFormat::Text;
    if let Command::Serve { config, settings } = &mut cli.command {
        if let Some(path) = config {
            match server::config::Settings::from_file(path) {
                Ok(file) => *settings = std::mem::take(settings).over(file),
                Err(e) => {
                    eprintln!("thaw: {e:#}");
                    std::process::exit(1);
                }
            }
        }
        format = settings.log_format.unwrap_or_default();
    }
    let filter = tracing_subscriber::EnvFilter::try_from_env("THAW_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,tower_http=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let code = match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("thaw: {e:#}");
            1
        }
    };
    std::process::exit(code);
}

async fn run(cli: Cli) -> Result<i32> {
    use server::client::Client;
    let client = |s: &ServerArgs| Client::new(&s.server, s.token.clone());
    match cli.command {
        Command::Serve { settings, .. } => {
            server::serve::serve(settings.resolve()?).await?;
            Ok(0)
        }
        Command::Deploy { path, server } => {
            let v = client(&server).deploy(&path).await?;
            println!(
                "deployed {} version {} ({})",
                v["name"].as_str().unwrap_or("?"),
                v["version"],
                v["state"].as_str().unwrap_or("?")
            );
            Ok(0)
        }
        Command::Invoke {
            name,
            data,
            verbose,
            server,
        } => {
            let body = match data.as_deref() {
                Some(d) if d.starts_with('@') => {
                    std::fs::read(&d[1..]).with_context(|| format!("reading {}", &d[1..]))?
                }
                Some(d) => d.as_bytes().to_vec(),
                None => b"{}".to_vec(),
            };
            let status = client(&server).invoke(&name, body, verbose).await?;
            Ok(if (200..300).contains(&status) { 0 } else { 1 })
        }
        Command::Ls { server } => {
            let v = client(&server).list().await?;
            println!(
                "{:<24} {:<8} {:>7} {:<10} {:>5} {:>5}  ERROR",
                "NAME", "RUNTIME", "VERSION", "STATE", "IDLE", "BUSY"
            );
            for f in v["functions"].as_array().into_iter().flatten() {
                println!(
                    "{:<24} {:<8} {:>7} {:<10} {:>5} {:>5}  {}",
                    f["name"].as_str().unwrap_or("?"),
                    f["spec"]["runtime"].as_str().unwrap_or("?"),
                    f["version"],
                    f["state"].as_str().unwrap_or("?"),
                    f["instances"]["idle"],
                    f["instances"]["busy"],
                    f["error"].as_str().unwrap_or("")
                );
            }
            Ok(0)
        }
        Command::Logs {
            name,
            follow,
            tail,
            server,
        } => {
            client(&server).logs(&name, tail, follow).await?;
            Ok(0)
        }
        Command::Rm { name, server } => {
            client(&server).remove(&name).await?;
            println!("deleted {name}");
            Ok(0)
        }
        Command::Store { action, data_dir } => {
            use server::remote;
            let local = || server::store_view::open(&data_dir);
            let (value, ok) = match action {
                StoreAction::Stats => (server::store_view::stats(&local()?)?, true),
                StoreAction::Verify => server::store_view::verify(&local()?)?,
                StoreAction::Gc { remote: false, .. } => (server::store_view::gc(&local()?)?, true),
                StoreAction::Gc {
                    remote: true,
                    dry_run,
                    grace_secs,
                    force,
                    shared,
                } => {
                    let grace = grace_secs
                        .map(std::time::Duration::from_secs)
                        .unwrap_or(server::cluster::gc::DEFAULT_GRACE);
                    let store = remote::cli_connect(shared.settings()?)?;
                    (
                        server::cluster::gc::cli_gc(&store, grace, dry_run, force).await?,
                        true,
                    )
                }
                StoreAction::Push {
                    id,
                    snapshot_dir,
                    remote: r,
                } => (
                    remote::cli_push(r.settings()?, &data_dir, snapshot_dir.as_deref(), &id)
                        .await?,
                    true,
                ),
                StoreAction::Pull {
                    id,
                    snapshot_dir,
                    remote: r,
                } => (
                    remote::cli_pull(r.settings()?, &data_dir, snapshot_dir.as_deref(), &id)
                        .await?,
                    true,
                ),
                StoreAction::RemoteStatus { id, remote: r } => {
                    remote::cli_status(r.settings()?, id.as_deref()).await?
                }
            };
            println!("{}", serde_json::to_string_pretty(&value)?);
            Ok(if ok { 0 } else { 1 })
        }
        Command::Snapshot { pid, out } => {
            let info = snapshotter::snapshot::snapshot_to_dir(pid, &out)
                .with_context(|| format!("snapshot of pid {pid}"))?;
            eprintln!(
                "snapshot of pid {pid} in {}: {} areas, {} stored pages ({} new), {} zero pages, {} µs",
                out.display(),
                info.areas,
                info.stored_pages,
                info.new_pages,
                info.zero_pages,
                info.timings.total_us
            );
            Ok(0)
        }
        Command::Restore {
            dir,
            mode,
            remote_snapshot: None,
            ..
        } => {
            let mode = mode.unwrap_or(pool::restore::Mode::Mmap);
            let mut child = pool::restore::restore_process(&dir, mode)
                .with_context(|| format!("restore of {}", dir.display()))?;
            Ok(child.wait()?)
        }
        Command::Restore {
            dir,
            mode,
            remote_snapshot: Some(name),
            remote,
        } => {
            if mode.is_some_and(|m| m != pool::restore::Mode::Uffd) {
                anyhow::bail!("a remote snapshot is restored in uffd mode only");
            }
            lazy_restore(&dir, &name, remote.settings()?).await
        }
        Command::SandboxInit => unreachable!("handled before parsing"),
    }
}

/// Exit code of `thaw restore --remote-snapshot` when fetching pages failed
/// before the copy resumed (the copy never ran): EX_TEMPFAIL.
const FETCH_FAILED_BEFORE_RESUME: i32 = 75;

/// `thaw restore DIR --remote-snapshot NAME`: a lazy restore of snapshot
/// NAME from the shared store, DIR's page store as the cache; then the rest
/// of the snapshot into DIR. Prints a JSON report on stderr (`thaw: lazy
/// restore {...}`) once the copy ended; exits with the copy's status.
async fn lazy_restore(
    dir: &std::path::Path,
    name: &str,
    settings: Option<server::remote::RemoteSettings>,
) -> Result<i32> {
    use pool::restore::{self, RestoreError, RestoreOptions};
    use std::sync::Arc;
    let settings = settings.context(
        "no shared store: set --store-url or THAW_STORE_URL (./dev.sh s3 prints the exports)",
    )?;
    let remote = server::remote::connect(&settings)?;
    let store_dir = dir.join("store");
    std::fs::create_dir_all(&store_dir)
        .with_context(|| format!("creating {}", store_dir.display()))?;
    let store = Arc::new(
        snapshotter::store::PageStore::open(&store_dir)
            .with_context(|| format!("opening the page store {}", store_dir.display()))?,
    );
    let local_id = snapshotter::snapshot::DIR_SNAPSHOT_ID;
    let started = std::time::Instant::now();
    let lazy =
        match remote_store::open_lazy(remote.clone(), name, local_id, Some(store.clone())).await {
            Ok(lazy) => lazy,
            Err(e @ remote_store::LazyError::Pull(remote_store::PullError::NotInBucket { .. })) => {
                return Err(e.into())
            }
            Err(e) => {
                eprintln!(
                    "thaw: lazy restore of {name}: reading the snapshot from {} failed before \
                 the copy resumed (it never ran): {:#}",
                    remote.url(),
                    anyhow::Error::from(e)
                );
                return Ok(FETCH_FAILED_BEFORE_RESUME);
            }
        };
    let open_ms = started.elapsed().as_secs_f64() * 1e3;
    let snapshot = lazy.snapshot;
    let options = RestoreOptions {
        mode: restore::Mode::Uffd,
        fds: restore::stdio_fds(&snapshot),
        cgroups: Vec::new(),
        prefetch: lazy.working_set.clone(),
        prefetch_in_background: false,
        uffd_keeper: None,
        credentials: restore::Credentials::Snapshot,
    };
    let source: Arc<dyn restore::page_source::PageSource> = lazy.source.clone();
    let mut pages = None;
    let restored = restore::prepare_lazily(&snapshot, Some(store.clone()), source, dir, &options)
        .and_then(|prepared| {
            pages = prepared.lazy().cloned();
            restore::restore_prepared(&snapshot, prepared, &options)
        });
    let mut child = match restored {
        Ok(child) => child,
        Err(e @ RestoreError::Fetch(_)) => {
            eprintln!(
                "thaw: lazy restore of {name}: fetching pages failed before the copy resumed \
                 (it never ran): {:#}",
                anyhow::Error::from(e)
            );
            return Ok(FETCH_FAILED_BEFORE_RESUME);
        }
        Err(e) => return Err(e).with_context(|| format!("lazy restore of {name}")),
    };
    let resumed_ms = started.elapsed().as_secs_f64() * 1e3;
    let at_resume = lazy.source.report();
    eprintln!("thaw: lazy restore of {name} resumed after {resumed_ms:.1} ms");
    let (child, code) = tokio::task::spawn_blocking(move || {
        let code = child.wait();
        (child, code)
    })
    .await?;
    // The rest of the snapshot, once the copy is done with the pages it
    // needs (fetched ones are in the local store already).
    let local = server::remote::local_snapshot(store.clone(), dir, local_id);
    let completed = lazy.source.complete(&local).await;
    let report = lazy.source.report();
    // No working set in the bucket: what this copy needed becomes DIR's,
    // for a later push (as the server records one from a first copy).
    let mut working_set_recorded = 0;
    if let (Ok(pull), Some(pages)) = (&completed, &pages) {
        if !pull.working_set && code.is_ok() {
            let filled = pages.filled_pages(&snapshot.state.areas);
            let path = restore::working_set::path(dir, local_id);
            restore::working_set::save(&path, &filled)
                .with_context(|| format!("saving the working set {}", path.display()))?;
            working_set_recorded = filled.len();
        }
    }
    let stats = child.server_stats.clone().unwrap_or_default();
    let value = serde_json::json!({
        "snapshot": name,
        "open_ms": open_ms,
        "resumed_ms": resumed_ms,
        "working_set_pages": report.working_set_pages,
        "working_set_stored_pages": report.working_set_stored_pages,
        "working_pack_pages": report.working_pack_pages,
        "at_resume": {
            "pages_fetched": at_resume.pages_fetched,
            "ranges": at_resume.ranges,
            "bytes_fetched": at_resume.bytes_fetched,
            "fetches": at_resume.fetches,
        },
        "pages_fetched": report.pages_fetched,
        "ranges": report.ranges,
        "bytes_fetched": report.bytes_fetched,
        "bytes_metadata": report.bytes_metadata,
        "fetches": report.fetches,
        "faults": stats.faults,
        "completed": completed.as_ref().is_ok(),
        "completion_error": completed.as_ref().err().map(|e| format!("{e:#}")),
        "completion_pages_fetched": completed.as_ref().ok().map(|r| r.pages_fetched),
        "working_set_recorded": working_set_recorded,
    });
    eprintln!("thaw: lazy restore {value}");
    match code {
        Ok(code) => Ok(code),
        // The page server failed (a fetch after the resume): it killed the
        // copy, which never read a page it did not have.
        Err(e) => {
            eprintln!(
                "thaw: lazy restore of {name}: the copy was killed: {:#}",
                anyhow::Error::from(e)
            );
            Ok(128 + 9)
        }
    }
}
