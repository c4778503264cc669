//! The reader's side: follows the writer's catalog and applies it.
//!
//! Every second `#writer` is read (one small GET). When its generation is
//! not the one applied, `#catalog` is read and applied:
//!
//! - a function absent from the catalog is deleted here (instances stopped,
//!   record, code and snapshots dropped);
//! - a function whose versions here are not the catalog's (a number with
//!   another deployment uid: deleted and deployed again on the writer) is
//!   dropped and taken again;
//! - a new version gets its code from the bucket (`code/`, the tar the
//!   writer published before the catalog) and its record;
//! - a changed record (state, error, snapshot, rebuild) replaces the local
//!   one; a version's snapshot that is not local is restored lazily from
//!   the store, then completed locally ([`Cluster::snapshot_for_restore`]).
//!
//! A version whose code is not in the bucket yet stops the pass for its
//! function; the generation counts as applied only once everything was, so
//! the next second tries again. While the store does not answer nothing
//! changes here: local snapshots restore, the rest boots.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use remote_store::Kind;

use super::catalog::{self, Catalog};
use super::layers::LayerObject;
use super::{Cluster, ForRestore};
use crate::registry::{FunctionRecord, VersionRecord};
use crate::service::Service;

/// How often `#writer` is read.
pub const POLL_EVERY: Duration = Duration::from_secs(1);
/// Longest one read may take before the store counts as down.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Starts following the writer.
pub fn spawn(cluster: Arc<Cluster>, service: Service) {
    tracing::info!(store = %cluster.remote.url(), "this node follows the store's writer");
    forget_missing_snapshots(&cluster, &service);
    tokio::spawn(async move {
        let mut applied: Option<u64> = None;
        let mut tick = tokio::time::interval(POLL_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            // The pass runs as a task of its own, to its end: one cut short
            // (its future dropped) would leave a blocking install of a
            // version's code running while the next pass installs the same
            // version again over it (see `install_code`).
            let pass = {
                let (cluster, service) = (cluster.clone(), service.clone());
                tokio::spawn(async move {
                    let result = poll(&cluster, &service, &mut applied).await;
                    (result, applied)
                })
            };
            let slow = || {
                cluster
                    .health
                    .failed(&format!("no answer within {} s", READ_TIMEOUT.as_secs()))
            };
            match run_to_end(pass, READ_TIMEOUT, slow).await {
                Ok((result, now_applied)) => {
                    applied = now_applied;
                    if let Err(e) = result {
                        cluster.health.failed(&format!("{e:#}"));
                    }
                }
                Err(e) => cluster
                    .health
                    .failed(&format!("the follower's pass ended badly: {e}")),
            }
            if cluster.health.is_up() {
                fetch_missing(&cluster, &service);
            }
            cluster.export();
        }
    });
}

/// Waits for `job` until it ends, however long it takes; calls `slow` once
/// when that is longer than `patience` (the store counts as down meanwhile).
/// Never drops the job half way.
pub(crate) async fn run_to_end<T>(
    job: tokio::task::JoinHandle<T>,
    patience: Duration,
    slow: impl FnOnce(),
) -> Result<T, tokio::task::JoinError> {
    let mut job = job;
    match tokio::time::timeout(patience, &mut job).await {
        Ok(done) => done,
        Err(_) => {
            slow();
            job.await
        }
    }
}

async fn poll(cluster: &Arc<Cluster>, service: &Service, applied: &mut Option<u64>) -> Result<()> {
    let writer = catalog::read_writer(&cluster.remote)
        .await
        .context("reading the writer object")?;
    cluster.health.ok();
    let Some(writer) = writer else {
        // No writer ever published: nothing to follow yet.
        return Ok(());
    };
    let generation = writer.generation;
    *cluster.writer.lock().unwrap() = Some(writer);
    if *applied == Some(generation) {
        return Ok(());
    }
    let Some(catalog) = catalog::read_catalog(&cluster.remote)
        .await
        .context("reading the catalog")?
    else {
        return Ok(());
    };
    if catalog.format != catalog::FORMAT {
        if *applied != Some(generation) {
            tracing::error!(
                format = catalog.format,
                "the writer's catalog has a format this thaw does not read; not following it"
            );
            *applied = Some(generation);
        }
        return Ok(());
    }
    if catalog.generation < generation {
        // An older catalog than the writer object announced (a store that
        // is not read-after-write consistent): read again next time.
        return Ok(());
    }
    if apply(cluster, service, &catalog).await? {
        *applied = Some(generation);
        tracing::debug!(generation, "catalog applied");
    }
    Ok(())
}

/// Applies `catalog`; `Ok(true)` once everything in it is here.
pub(crate) async fn apply(
    cluster: &Arc<Cluster>,
    service: &Service,
    catalog: &Catalog,
) -> Result<bool> {
    for name in service.names() {
        if !catalog.functions.contains_key(&name) {
            drop_function(service, &name, "deleted on the writer").await;
        }
    }
    let mut complete = true;
    for (name, record) in &catalog.functions {
        if !crate::spec::valid_name(name) || record.name != *name || record.versions.is_empty() {
            tracing::warn!(function = %name, "the catalog holds an unusable record; ignored");
            continue;
        }
        let local: Vec<(u64, u64)> = service
            .functions
            .read()
            .unwrap()
            .get(name)
            .map(|list| {
                list.iter()
                    .map(|v| (v.record.version, v.record.uid))
                    .collect()
            })
            .unwrap_or_default();
        if local
            .iter()
            .any(|(n, uid)| record.version(*n).map(|v| v.uid) != Some(*uid))
        {
            drop_function(service, name, "deployed again on the writer").await;
        }
        complete &= apply_function(cluster, service, record, &catalog.layers).await?;
    }
    Ok(complete)
}

async fn drop_function(service: &Service, name: &str, why: &str) {
    match service.delete(name).await {
        Ok(()) => tracing::info!(function = %name, why, "function dropped"),
        Err(e) => tracing::warn!(function = %name, error = %e.message, "dropping the function"),
    }
}

/// Takes the versions of `record` this node lacks (code first) and the
/// records of all; `Ok(false)` when a version's code is not in the bucket
/// yet.
async fn apply_function(
    cluster: &Arc<Cluster>,
    service: &Service,
    record: &FunctionRecord,
    layers: &BTreeMap<String, LayerObject>,
) -> Result<bool> {
    let name = &record.name;
    // Held by this pass and by each blocking install it starts, until both
    // end (see `install_code_serially`).
    let serial = Arc::new(service.registry.name_lock(name).lock_owned().await);
    let have: BTreeSet<u64> = service
        .functions
        .read()
        .unwrap()
        .get(name)
        .map(|list| list.iter().map(|v| v.record.version).collect())
        .unwrap_or_default();
    let mut installed = have.clone();
    let mut complete = true;
    for v in record
        .versions
        .iter()
        .filter(|v| !have.contains(&v.version))
    {
        let address = crate::remote::code_address(name, v.version, v.uid);
        let Some(tar) = cluster
            .remote
            .get_blob(Kind::Code, address.as_bytes())
            .await
            .with_context(|| format!("reading the code of {name} v{}", v.version))?
        else {
            complete = false;
            break;
        };
        // The runtime's own files (a shim compiled once per data directory,
        // such as Node.js's reseed addon) as a deploy would make them: a
        // restored copy opens them. Without them the version is still
        // taken: its restores fail and boot, as they would have.
        if let Err(e) = service
            .config
            .runtimes
            .prepare_runtime(&v.spec.runtime)
            .await
        {
            tracing::warn!(function = %name, version = v.version, runtime = %v.spec.runtime, error = %e, "preparing the version's runtime failed; its restores will boot");
        }
        // Its dependency layer, into this node's layer cache
        // (cluster::layers): the code is linked to it.
        let layer = match &v.layer {
            None => None,
            Some(l) => {
                let Some(obj) = layers.get(&l.key) else {
                    // Not uploaded yet: the next pass looks again.
                    complete = false;
                    break;
                };
                let cache = service.config.deps.layer_cache();
                match super::layers::install(&cluster.remote, cache, l, obj).await {
                    Ok(dir) => Some((dir, l.into.clone())),
                    Err(e @ super::layers::InstallError::Store { .. }) => {
                        return Err(e).with_context(|| format!("{name} v{}", v.version))
                    }
                    Err(e) => {
                        tracing::warn!(function = %name, version = v.version, error = %e, "the version's dependency layer cannot be installed; trying again");
                        complete = false;
                        break;
                    }
                }
            }
        };
        let with_layer = layer.is_some();
        install_code_serially(
            serial.clone(),
            service.registry.clone(),
            name.clone(),
            v.version,
            tar,
            layer,
        )
        .await?;
        if with_layer {
            // The shared objects of its dependencies, hashed now rather
            // than by the first restore's checks (the cache is by inode and
            // times: after the linking, which changes them).
            let code = service.registry.code_dir(name, v.version);
            let _ = tokio::task::spawn_blocking(move || {
                let started = std::time::Instant::now();
                let bytes = pool::restore::depends::warm_hashes(shared_objects(&code), None);
                tracing::debug!(code = %code.display(), bytes, took_ms = started.elapsed().as_millis() as u64, "the code's shared objects hashed ahead");
            })
            .await;
        }
        installed.insert(v.version);
    }
    let wanted: Vec<&VersionRecord> = record
        .versions
        .iter()
        .filter(|v| installed.contains(&v.version))
        .collect();
    if wanted.is_empty() {
        return Ok(complete);
    }
    let mut changed = Vec::new();
    let mut replaced_snapshots = Vec::new();
    let mut retire = Vec::new();
    {
        let mut map = service.functions.write().unwrap();
        let old = map.remove(name).unwrap_or_default();
        let mut list = Vec::with_capacity(wanted.len());
        for v in wanted {
            let same = old.iter().find(|o| {
                o.record.version == v.version
                    && serde_json::to_value(&o.record).ok() == serde_json::to_value(v).ok()
            });
            match same {
                Some(o) => list.push(o.clone()),
                None => {
                    let old_snapshot = old
                        .iter()
                        .find(|o| o.record.version == v.version)
                        .and_then(|o| o.record.snapshot.as_ref())
                        .map(|s| s.id.clone());
                    if old_snapshot.is_some()
                        && old_snapshot.as_deref() != v.snapshot.as_ref().map(|s| s.id.as_str())
                    {
                        // Rebuilt on the writer: the old one is of no use.
                        replaced_snapshots.extend(old_snapshot);
                    }
                    let mut new = service.version_of(name, v.clone());
                    if let Some(s) = &v.snapshot {
                        if !cluster.is_local(&s.id) {
                            // Restored lazily if it is already, else boots
                            // until fetch_missing has it.
                            new.start.snapshot = cluster.lazy_source(&s.id);
                        }
                    }
                    changed.push(new.key.clone());
                    list.push(new);
                }
            }
        }
        for v in list.iter().filter(|v| changed.contains(&v.key)) {
            service.keep(v);
        }
        // As on the writer: once a version is ready, idle copies of older
        // ones are not needed.
        if let Some(ready) = list
            .iter()
            .rev()
            .find(|v| v.record.state == crate::registry::VersionState::Ready)
        {
            if changed.contains(&ready.key) {
                retire.extend(
                    list.iter()
                        .filter(|o| o.key.version < ready.key.version)
                        .map(|o| o.key.clone()),
                );
            }
        }
        service.save_or_log(name, &list);
        map.insert(name.clone(), list);
    }
    for key in retire {
        service.pool.retire(&key).await;
    }
    let dir = crate::snapshots::snapshots_dir(&service.config.data_dir);
    for id in replaced_snapshots {
        crate::snapshots::remove(&service.store, &dir, &id);
    }
    if !changed.is_empty() {
        tracing::info!(function = %name, versions = ?changed.iter().map(|k| k.version).collect::<Vec<_>>(), "records taken from the writer");
    }
    Ok(complete)
}

/// The shared objects (`*.so`, `*.so.N`) under `dir`, symbolic links not
/// followed.
fn shared_objects(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(ty) = e.file_type() else { continue };
            let name = e.file_name();
            let name = name.to_string_lossy();
            if ty.is_dir() {
                todo.push(e.path());
            } else if ty.is_file() && (name.ends_with(".so") || name.contains(".so.")) {
                out.push(e.path());
            }
        }
    }
    out
}

/// [`install_code`] on a blocking thread that holds `serial` (the
/// function's name lock) until the install ends, even when the caller
/// stops waiting for it: no other pass can install the same version over
/// a half-made one, nor over one it made and a sandbox uses already (a
/// version's folder is replaced whole, `remove_dir_all` first).
async fn install_code_serially(
    serial: Arc<tokio::sync::OwnedMutexGuard<()>>,
    registry: crate::registry::Registry,
    name: String,
    version: u64,
    tar: Vec<u8>,
    layer: Option<(std::path::PathBuf, String)>,
) -> Result<()> {
    tokio::task::spawn_blocking(move || {
        let _serial = serial;
        let layer = layer.as_ref().map(|(d, i)| (d.as_path(), i.as_str()));
        install_code(&registry, &name, version, &tar, layer)
    })
    .await?
}

/// Writes a version's code from the writer's tar: unpacked beside the
/// function's folders, its dependency layer (`layer`: the installed
/// layer's folder and where in the code it goes) linked in as on the
/// writer, then renamed into place (`v<N>/code`).
pub(crate) fn install_code(
    registry: &crate::registry::Registry,
    name: &str,
    version: u64,
    tar: &[u8],
    layer: Option<(&Path, &str)>,
) -> Result<()> {
    let code = registry.code_dir(name, version);
    let vdir = code.parent().expect("v<N>");
    let fdir = vdir.parent().expect("function folder");
    crate::registry::create_private_dir(fdir)?;
    let staging = fdir.join(format!(".fetch-v{version}-{:x}", rand::random::<u32>()));
    let result = (|| -> Result<()> {
        let dst = staging.join("code");
        crate::registry::create_private_dir(&dst)?;
        // `unpack` keeps every entry inside `dst` (no `..`, no absolute
        // paths); links stay links, as the writer has them.
        tar::Archive::new(tar)
            .unpack(&dst)
            .with_context(|| format!("unpacking the code of {name} v{version}"))?;
        std::fs::set_permissions(&dst, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
        if let Some((dir, into)) = layer {
            crate::build::layer::link_into(dir, &dst.join(into))
                .with_context(|| format!("linking the dependency layer into {name} v{version}"))?;
        }
        let _ = std::fs::remove_dir_all(vdir);
        std::fs::rename(&staging, vdir)
            .with_context(|| format!("renaming into {}", vdir.display()))?;
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&staging);
    }
    result
}

/// At start: versions whose snapshot a stop cut short boot until it is
/// fetched again (never a restore of a snapshot that is not all here).
fn forget_missing_snapshots(cluster: &Arc<Cluster>, service: &Service) {
    let mut map = service.functions.write().unwrap();
    for v in map.values_mut().flatten() {
        if let Some(s) = &v.start.snapshot {
            if !cluster.is_local(&s.id) {
                v.start.snapshot = None;
                service.keep(v);
            }
        }
    }
}

/// Asks for the snapshot of every version that has one that is not local
/// yet; when one is, cold starts of its version restore it.
fn fetch_missing(cluster: &Arc<Cluster>, service: &Service) {
    let (missing, wanted): (
        Vec<(pool::FunctionKey, String)>,
        std::collections::HashSet<String>,
    ) = {
        let map = service.functions.read().unwrap();
        let versions = map.values().flatten();
        let wanted = versions
            .clone()
            .filter_map(|v| Some(v.record.snapshot.as_ref()?.id.clone()))
            .collect();
        let missing = versions
            .filter(|v| v.start.snapshot.is_none())
            .filter_map(|v| Some((v.key.clone(), v.record.snapshot.as_ref()?.id.clone())))
            // Evicted (cluster/cache.rs): fetched when a cold start asks.
            .filter(|(_, id)| !cluster.cache.is_evicted(id))
            .collect();
        (missing, wanted)
    };
    cluster.keep_lazy(&wanted);
    for (key, id) in missing {
        let svc = service.clone();
        let snapshot = id.clone();
        let ready = move |how| restorable(&svc, &key, &snapshot, how);
        if cluster.snapshot_for_restore(&id, ready.clone()) == ForRestore::Local {
            ready(ForRestore::Local);
        }
    }
}

/// Lets cold starts of `key` restore `snapshot` as `how` says (lazily in
/// uffd mode, locally in the configured mode, or not: boot), if it is
/// still the version's.
pub(crate) fn restorable(
    service: &Service,
    key: &pool::FunctionKey,
    snapshot: &str,
    how: ForRestore,
) {
    let mut map = service.functions.write().unwrap();
    let Some(v) = map
        .get_mut(&key.name)
        .and_then(|list| list.iter_mut().find(|v| v.key == *key))
    else {
        return;
    };
    if v.record.snapshot.as_ref().map(|s| s.id.as_str()) != Some(snapshot) {
        return;
    }
    v.start.snapshot = match how {
        ForRestore::Local => {
            service
                .version_of(&key.name, v.record.clone())
                .start
                .snapshot
        }
        ForRestore::Lazy => Some(super::fetch::lazy_source(snapshot)),
        ForRestore::Fetching => None,
    };
    service.keep(v);
    tracing::info!(function = %key.name, version = key.version, snapshot, how = ?how, "cold starts restore");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_from_the_writer_lands_in_place_with_its_links() {
        let writer = tempfile::tempdir().unwrap();
        let code = writer.path().join("code");
        std::fs::create_dir_all(code.join("pkg")).unwrap();
        std::fs::write(code.join("main.py"), "def handler(e, c):\n    return 1\n").unwrap();
        std::fs::write(code.join("pkg/data.txt"), "x").unwrap();
        std::os::unix::fs::symlink("/opt/layer/site-packages", code.join("deps")).unwrap();
        let tar = crate::remote::code_tar(&code, None).unwrap();

        let reader = tempfile::tempdir().unwrap();
        let registry = crate::registry::Registry::open(reader.path()).unwrap();
        // A leftover of an earlier try is replaced.
        let dst = registry.code_dir("f", 3);
        std::fs::create_dir_all(&dst).unwrap();
        std::fs::write(dst.join("stale.py"), "").unwrap();
        install_code(&registry, "f", 3, &tar, None).unwrap();
        assert_eq!(
            std::fs::read_to_string(dst.join("main.py")).unwrap(),
            "def handler(e, c):\n    return 1\n"
        );
        assert_eq!(
            std::fs::read_to_string(dst.join("pkg/data.txt")).unwrap(),
            "x"
        );
        assert_eq!(
            std::fs::read_link(dst.join("deps")).unwrap(),
            Path::new("/opt/layer/site-packages")
        );
        assert!(!dst.join("stale.py").exists());
        let leftovers: Vec<_> = std::fs::read_dir(dst.parent().unwrap().parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(leftovers, vec!["v3".to_string()], "no staging folder left");
    }

    #[tokio::test]
    async fn a_slow_pass_runs_to_its_end_and_is_reported_once() {
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let d = done.clone();
        let job = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            d.store(true, std::sync::atomic::Ordering::SeqCst);
            7
        });
        let mut slow = 0;
        let got = run_to_end(job, Duration::from_millis(20), || slow += 1)
            .await
            .unwrap();
        assert_eq!(got, 7);
        assert_eq!(slow, 1, "reported slow once");
        assert!(
            done.load(std::sync::atomic::Ordering::SeqCst),
            "not cut short"
        );

        let quick = tokio::spawn(async { 1 });
        let mut slow = 0;
        assert_eq!(
            run_to_end(quick, Duration::from_secs(5), || slow += 1)
                .await
                .unwrap(),
            1
        );
        assert_eq!(slow, 0);
    }

    /// The race seen on a fresh reader (a pandas `.so` missing in a
    /// sandbox): a pass cut short while its blocking install of a version's
    /// code ran released the function's lock, and the next pass installed
    /// the same version again, removing the folder the first made. The lock
    /// now stays held until the install ends, whoever stopped waiting.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_name_lock_outlives_a_code_install_whose_caller_gave_up() {
        let writer = tempfile::tempdir().unwrap();
        let code = writer.path().join("code");
        for d in 0..40 {
            let dir = code.join(format!("pkg{d}"));
            std::fs::create_dir_all(&dir).unwrap();
            for f in 0..100 {
                std::fs::write(dir.join(format!("m{f}.so")), vec![d as u8; 2048]).unwrap();
            }
        }
        let tar = crate::remote::code_tar(&code, None).unwrap();
        let reader = tempfile::tempdir().unwrap();
        let registry = crate::registry::Registry::open(reader.path()).unwrap();
        let lock = registry.name_lock("f");
        let guard = Arc::new(lock.clone().lock_owned().await);
        let install = tokio::spawn(install_code_serially(
            guard,
            registry.clone(),
            "f".into(),
            1,
            tar,
            None,
        ));
        // Give up on it once it is under way (its staging folder exists).
        let fdir = reader.path().join("functions").join("f");
        let staging = || {
            std::fs::read_dir(&fdir).ok().is_some_and(|d| {
                d.flatten()
                    .any(|e| e.file_name().to_string_lossy().starts_with(".fetch-"))
            })
        };
        while !staging() && !install.is_finished() {
            tokio::task::yield_now().await;
        }
        install.abort();
        let _ = install.await;
        // Whoever takes the lock next finds the version whole, and nothing
        // half made beside it.
        let _next = lock.lock().await;
        assert!(!staging(), "the install still ran when the lock was taken");
        let dst = registry.code_dir("f", 1);
        let files = walk(&dst);
        assert_eq!(files, 4000, "every file of the version is in place");
    }

    fn walk(dir: &Path) -> usize {
        std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .map(|e| {
                if e.file_type().unwrap().is_dir() {
                    walk(&e.path())
                } else {
                    1
                }
            })
            .sum()
    }

    #[test]
    fn a_tar_that_is_not_one_fails_and_leaves_nothing() {
        let reader = tempfile::tempdir().unwrap();
        let registry = crate::registry::Registry::open(reader.path()).unwrap();
        let err = install_code(
            &registry,
            "f",
            1,
            b"not a tar at all, but long enough to read a header from? no",
            None,
        )
        .unwrap_err();
        assert!(
            format!("{err:#}").contains("unpacking the code of f v1"),
            "{err:#}"
        );
        let fdir = registry.code_dir("f", 1);
        let fdir = fdir.parent().unwrap().parent().unwrap();
        assert_eq!(std::fs::read_dir(fdir).unwrap().count(), 0);
    }
}
