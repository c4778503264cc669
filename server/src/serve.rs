//! `thaw serve`: prepares the data directory, cleans up after a crashed
//! earlier run, and runs the HTTP server until SIGINT/SIGTERM.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use pool::cgroup::CgroupRoot;
use pool::sandbox::{SandboxConfig, DEFAULT_UID};
use pool::{Pool, PoolConfig};
use std::future::IntoFuture;

use tokio::net::TcpListener;

use crate::api::{app, AppState};
use crate::logstore::{LogLimits, LogStore};
use crate::registry::{write_atomic, Registry};
use crate::service::{Service, ServiceConfig};

/// Settings of `thaw serve`.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Data directory.
    pub data_dir: PathBuf,
    /// Python interpreter.
    pub python: PathBuf,
    /// Request body limit, bytes.
    pub max_body: usize,
    /// Memory budget, bytes (None: 75% of the machine).
    pub memory_budget: Option<u64>,
    /// Accepted API tokens.
    pub tokens: crate::auth::Tokens,
    /// The file they came from, if any (narrowed to 0600 at start).
    pub token_file: Option<PathBuf>,
    /// Honour `x-thaw-cold`.
    pub allow_forced_cold: bool,
    /// Default memory mode of restored copies.
    pub memory_mode: crate::config::MemoryMode,
    /// Folders with a `thaw.toml` to deploy at start.
    pub deploy: Vec<PathBuf>,
    /// On SIGTERM, how long in-flight invocations may take to finish.
    pub stop_timeout: Duration,
    /// How much function output is kept.
    pub logs: LogLimits,
    /// Pre-made stub sandboxes kept for cold starts.
    pub spares: pool::manager::SpareConfig,
    /// Most browser sessions kept at once per role.
    pub sessions_per_role: usize,
    /// Addresses of outbound sandboxes (gateway first).
    pub network_range: pool::sandbox::net::Ipv4Range,
    /// Resolvers the DNS forwarder relays to (None: the host's
    /// /etc/resolv.conf).
    pub dns_upstream: Option<Vec<SocketAddr>>,
    /// Folder of the dependency layer cache (None: <data_dir>/layers).
    pub layer_cache: Option<PathBuf>,
    /// pip's index (None: the host's pip configuration, else PyPI).
    pub package_index: Option<String>,
    /// npm's registry (None: the host's npm configuration, else npmjs).
    pub npm_registry: Option<String>,
    /// More `host:port` the installers may reach.
    pub index_hosts: Vec<String>,
    /// The shared store versions are uploaded to (None: local only).
    pub remote: Option<crate::remote::RemoteSettings>,
    /// This node's part among the nodes sharing the store.
    pub cluster: crate::cluster::ClusterOptions,
}

fn total_memory() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(8 << 30, |kb| kb * 1024)
}

/// A short tag that names this data directory's cgroups.
pub fn install_tag(data_dir: &Path) -> String {
    let hash = fnv_hex(data_dir.as_os_str().as_encoded_bytes());
    hash[..8].to_string()
}

fn fnv_hex(bytes: &[u8]) -> String {
    // FNV-1a is plenty to tell data directories apart in a cgroup name.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    format!("{h:016x}")
}

/// Reads the installation's hash seed, creating it once.
fn hash_seed(data_dir: &Path) -> Result<u32> {
    let path = data_dir.join("hashseed");
    if let Ok(text) = std::fs::read_to_string(&path) {
        if let Ok(seed) = text.trim().parse() {
            return Ok(seed);
        }
    }
    // PYTHONHASHSEED accepts 0..=4294967295; 0 disables randomisation.
    let seed = rand::random::<u32>().max(1);
    write_atomic(&path, seed.to_string().as_bytes())?;
    Ok(seed)
}

fn is_loopback(addr: &SocketAddr) -> bool {
    addr.ip().is_loopback()
}

/// Runs the server until a stop signal.
pub async fn serve(opts: ServeOptions) -> Result<()> {
    if !is_loopback(&opts.listen) && opts.tokens.is_empty() {
        bail!(
            "refusing to listen on {} without an API token: set --token-file or THAW_TOKEN \
             (only loopback addresses may run without one)",
            opts.listen
        );
    }
    if !nix::unistd::geteuid().is_root() {
        bail!("thaw serve must run as root: sandboxes need namespaces, mounts and cgroups");
    }
    raise_open_files_limit();
    crate::registry::create_private_dir(&opts.data_dir)
        .with_context(|| format!("creating data directory {}", opts.data_dir.display()))?;
    let data_dir = opts
        .data_dir
        .canonicalize()
        .with_context(|| format!("resolving {}", opts.data_dir.display()))?;
    // Snapshots hold function memory and records hold secrets: the data
    // directory is the server's alone (see `private`).
    let fixed = crate::private::secure_data_dir(&data_dir)
        .with_context(|| format!("making {} private", data_dir.display()))?;
    if fixed != crate::private::Fixed::default() {
        tracing::warn!(
            dirs = fixed.dirs,
            files = fixed.files,
            data_dir = %data_dir.display(),
            "narrowed permissions in the data directory (0700 directories, 0600 files)"
        );
    }
    if let Some(path) = &opts.token_file {
        match crate::private::narrow_token_file(path) {
            Ok(true) => tracing::warn!(
                path = %path.display(),
                "the token file was readable by others; narrowed to 0600"
            ),
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %format!("{e:#}"), "checking the token file"),
        }
    }
    for dir in [
        crate::snapshots::snapshots_dir(&data_dir),
        crate::store_view::store_dir(&data_dir),
    ] {
        crate::registry::create_private_dir(&dir)
            .with_context(|| format!("creating {}", dir.display()))?;
    }

    let hash_seed = hash_seed(&data_dir)?;
    // The runtimes embedded in the binary (runtimes/*), written where
    // sandboxes bind them.
    let runtimes = crate::runtime::Runtimes::install(&data_dir, opts.python.clone(), hash_seed)
        .context("installing the runtimes")?;
    if let Err(e) = runtimes.refresh_stale().await {
        // Versions of that runtime fail to boot until a deploy prepares it.
        tracing::error!(error = %e, "preparing a runtime again for this thaw failed");
    }

    let cgroups = CgroupRoot::detect(&install_tag(&data_dir)).context("setting up cgroups")?;
    let stale = cgroups.remove_stale().context("removing stale sandboxes")?;
    let run_dir = data_dir.join("run");
    if run_dir.exists() {
        // Mount points of sandboxes of an earlier run (their mounts lived in
        // namespaces that died with them).
        for entry in std::fs::read_dir(&run_dir)?.flatten() {
            let _ = std::fs::remove_dir(entry.path());
        }
    }
    std::fs::create_dir_all(&run_dir)?;
    if stale > 0 {
        tracing::warn!(
            sandboxes = stale,
            "removed sandboxes left by an earlier run"
        );
    }

    let (network, _dns) = start_network(&opts, &data_dir)?;

    let init_exe = std::env::current_exe().context("finding the thaw binary")?;
    let store = Arc::new(crate::store_view::open(&data_dir)?);
    let restorer = pool::restore::sandboxed::SnapshotRestorer::new(
        crate::snapshots::snapshots_dir(&data_dir),
        store.clone(),
    )
    .context("setting up the restorer")?;
    // Failed restores reach the service, which rebuilds the snapshot.
    let (failures, failures_rx) = tokio::sync::mpsc::unbounded_channel();
    let budget = opts.memory_budget.unwrap_or(total_memory() / 4 * 3);
    let pool = Pool::new(PoolConfig {
        sandbox: SandboxConfig {
            init_exe,
            init_args: vec!["sandbox-init".into()],
            run_dir,
            mask: vec![data_dir.clone()],
            uid: DEFAULT_UID,
            gid: DEFAULT_UID,
            cgroups: cgroups.clone(),
            network: Some(network),
        },
        memory_budget: budget,
        init_timeout: Duration::from_secs(120),
        restorer: Some(Arc::new(restorer)),
        on_restore_failure: Some(crate::rebuild::hook(failures)),
        spares: opts.spares,
    });
    let registry = Registry::open(&data_dir)?;
    let remote = opts
        .remote
        .as_ref()
        .map(crate::remote::connect)
        .transpose()?;
    // Only the writer captures and uploads; readers follow it
    // (docs/cluster.md).
    let uploader = match &remote {
        Some(remote) if opts.cluster.writer => {
            tracing::info!(store = %remote.url(), "versions are uploaded to the shared store");
            Some(crate::remote::Uploader::new(
                remote.clone(),
                store.clone(),
                &data_dir,
                registry.clone(),
            ))
        }
        _ => None,
    };
    let cluster = remote.as_ref().map(|remote| {
        crate::cluster::Cluster::new(
            opts.cluster.clone(),
            remote.clone(),
            store.clone(),
            &data_dir,
        )
    });
    // Dependency layers, built in sandboxes like the pool's.
    let deps = crate::build::Builder::new(
        crate::build::BuildSettings {
            layer_cache: opts
                .layer_cache
                .clone()
                .unwrap_or_else(|| data_dir.join("layers")),
            package_index: opts.package_index.clone(),
            npm_registry: opts.npm_registry.clone(),
            index_hosts: opts.index_hosts.clone(),
            python: opts.python.clone(),
        },
        pool.config().sandbox.clone(),
    );
    let service = Service::new(
        ServiceConfig {
            data_dir: data_dir.clone(),
            runtimes: Arc::new(runtimes),
            deps: Arc::new(deps),
            max_body: opts.max_body,
            allow_forced_cold: opts.allow_forced_cold,
            memory_mode: opts.memory_mode.as_str().into(),
            uploader,
            cluster: cluster.clone(),
        },
        pool.clone(),
        registry,
        LogStore::new(opts.logs),
        store.clone(),
    );
    if cluster.as_ref().is_some_and(|c| !c.is_writer()) {
        // A reader does not capture: a restore that failed here boots, and
        // the writer's snapshot stays the version's (docs/cluster.md).
        crate::cluster::drain_restore_failures(failures_rx);
    } else {
        service.run_rebuilds(failures_rx);
    }
    let n = service.recover().context("loading functions")?;
    tracing::info!(functions = n, data_dir = %data_dir.display(), "loaded");
    // Finishes uploads a stop or a crash interrupted: each sends only what
    // the bucket lacks, so versions already there cost a listing.
    crate::remote::upload_all(&service);

    let mut deployed = Vec::new();
    for dir in &opts.deploy {
        let bundle = crate::bundle::read_bundle(dir)?;
        let name = bundle.spec.name.clone();
        let svc = service.clone();
        tokio::task::spawn_blocking(move || {
            svc.deploy(bundle.spec, &bundle.files, bundle.archive.as_deref())
        })
        .await?
        .map_err(|e| anyhow::anyhow!("deploying {}: {}", dir.display(), e.message))?;
        tracing::info!(function = %name, "example deployed");
        deployed.push(name);
    }

    let listener = TcpListener::bind(opts.listen)
        .await
        .with_context(|| format!("listening on {}", opts.listen))?;
    let addr = listener.local_addr()?;
    // Tools (and tests) read this line to find the port.
    println!("thaw listening on http://{addr}");
    if let Some(cluster) = &cluster {
        cluster.start(service.clone(), format!("http://{addr}"));
    }
    for name in &deployed {
        println!("  try: curl -X POST http://{addr}/functions/{name}/invoke -d '{{}}'");
    }
    let state = AppState {
        service: service.clone(),
        tokens: Arc::new(opts.tokens.clone()),
        sessions: Arc::new(crate::ui::session::Sessions::new(opts.sessions_per_role)),
    };
    // Every request gets an `x-request-id` (a client's own is kept), echoed
    // in the answer and recorded in the request's log span. The layer added
    // last runs first.
    use tower_http::request_id::{
        MakeRequestUuid, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
    };
    let trace = tower_http::trace::TraceLayer::new_for_http().make_span_with(
        |req: &axum::http::Request<axum::body::Body>| {
            let id = req
                .extensions()
                .get::<RequestId>()
                .and_then(|id| id.header_value().to_str().ok())
                .unwrap_or("-")
                .to_string();
            tracing::info_span!("request", request_id = %id, method = %req.method(), path = %req.uri().path())
        },
    );
    let router = app(state)
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(trace)
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid));
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    // The client's address keys the sign-in rate limit.
    let server = axum::serve(
        listener,
        router.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async move {
        let _ = stop_rx.changed().await;
    });
    let mut server = std::pin::pin!(server.into_future());
    tokio::select! {
        result = &mut server => result?,
        () = stop_signal() => {
            // Stop accepting; let in-flight invocations finish, up to a deadline.
            let _ = stop_tx.send(true);
            match tokio::time::timeout(opts.stop_timeout, &mut server).await {
                Ok(result) => result?,
                Err(_) => tracing::warn!(
                    timeout_s = opts.stop_timeout.as_secs(),
                    "in-flight requests did not finish before the stop deadline"
                ),
            }
        }
    }
    tracing::info!("stopping instances");
    pool.shutdown().await;
    let removed = tokio::task::spawn_blocking(move || cgroups.remove()).await;
    match removed {
        Ok(Ok(())) => tracing::info!("removed this installation's cgroups"),
        Ok(Err(e)) => tracing::warn!(error = %e, "removing this installation's cgroups"),
        Err(e) => tracing::warn!(error = %e, "removing this installation's cgroups"),
    }
    Ok(())
}

/// Raises the soft limit of open files to the hard one: each instance holds
/// a few descriptors in the server (its pidfd, protocol socket, log pipes,
/// userfaultfd), so a thousand idle copies need more than the usual 1,024.
/// Sandboxes set their own limit (`nofile` of the function).
fn raise_open_files_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => {
            if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                tracing::warn!(error = %e, soft, hard, "raising the open files limit");
            }
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "reading the open files limit"),
    }
}

/// Outbound sandboxes' networking: removes links a dead server left, and
/// starts the DNS forwarder on the gateway (without it outbound sandboxes
/// still work, by address only: the failure is logged).
fn start_network(
    opts: &ServeOptions,
    data_dir: &Path,
) -> Result<(
    Arc<pool::sandbox::net::HostNetwork>,
    Option<crate::dns::Forwarder>,
)> {
    use pool::sandbox::net::{HostNetwork, NetSettings};
    let network = HostNetwork::new(NetSettings {
        range: opts.network_range,
        resolv_conf: data_dir.join("net/resolv.conf"),
        owner_tag: install_tag(data_dir),
    })
    .context("setting up sandbox networking")?;
    network.check_range()?;
    match network.remove_stale() {
        Ok(0) => {}
        Ok(n) => tracing::warn!(
            links = n,
            "removed sandbox network links left by an earlier run"
        ),
        Err(e) => tracing::warn!(error = %e, "could not look for stale sandbox network links"),
    }
    let upstreams = match &opts.dns_upstream {
        Some(list) => list.clone(),
        None => crate::dns::resolvers_from(
            &std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
        ),
    };
    let addr = SocketAddr::new(network.gateway().into(), 53);
    let dns = match crate::dns::start(addr, upstreams) {
        Ok(f) => Some(f),
        Err(e) => {
            tracing::warn!(error = %format!("{e:#}"), %addr, "outbound sandboxes get no DNS forwarder");
            None
        }
    };
    Ok((network, dns))
}

async fn stop_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::info!("stop signal received");
}
