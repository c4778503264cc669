//! Reading what a copy depends on (see [`crate::state::depends`]): the
//! content of the files it maps, this CPU's features, this kernel's vDSO,
//! the captured process's clocks. The restorer reads the same facts of its
//! own host with the same functions and compares.
//!
//! File contents are hashed with blake3, cached by what `fstat` says of
//! the file (device, inode, size, modification and change times: a write
//! changes the change time, which no one can set back), in memory for the
//! life of the process and on disk in a cache file of the store
//! ([`HASH_CACHE_FILE`]) so a recapture or a restore after a restart hashes
//! nothing it hashed before. The cache file is lines of
//!
//! ```text
//! dev inode size mtime_sec mtime_nsec ctime_sec ctime_nsec blake3-hex
//! ```
//!
//! appended one `write` each; a line that does not parse is ignored.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use crate::state::{AreaKind, FileIdentity, MemoryArea};
use crate::state::{Clocks, CpuFeatures, Dependencies, FileContent, ProcessState, VdsoImage};

/// The name of the content-hash cache file in a store directory.
pub const HASH_CACHE_FILE: &str = "file-hashes";

/// Why a dependency could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DependsError {
    /// A file could not be opened or read.
    #[error("{what} {path}: {source}")]
    File {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The vDSO could not be found or read.
    #[error("vDSO: {0}")]
    Vdso(String),
    /// A clock or a time namespace's offsets could not be read.
    #[error("clocks: {0}")]
    Clocks(String),
}

/// What identifies one version of a file's content on this host.
type CacheKey = (u64, u64, u64, i64, i64, i64, i64);

fn key_of(meta: &std::fs::Metadata) -> CacheKey {
    (
        meta.dev(),
        meta.ino(),
        meta.size(),
        meta.mtime(),
        meta.mtime_nsec(),
        meta.ctime(),
        meta.ctime_nsec(),
    )
}

/// The process's cache: hashes by key, and the cache files already loaded.
struct Cache {
    hashes: HashMap<CacheKey, [u8; 32]>,
    loaded: HashSet<PathBuf>,
}

fn cache() -> &'static Mutex<Cache> {
    static CACHE: OnceLock<Mutex<Cache>> = OnceLock::new();
    CACHE.get_or_init(|| {
        Mutex::new(Cache {
            hashes: HashMap::new(),
            loaded: HashSet::new(),
        })
    })
}

fn parse_line(line: &str) -> Option<(CacheKey, [u8; 32])> {
    let w: Vec<&str> = line.split_whitespace().collect();
    if w.len() != 8 {
        return None;
    }
    let key = (
        w[0].parse().ok()?,
        w[1].parse().ok()?,
        w[2].parse().ok()?,
        w[3].parse().ok()?,
        w[4].parse().ok()?,
        w[5].parse().ok()?,
        w[6].parse().ok()?,
    );
    Some((key, *blake3::Hash::from_hex(w[7]).ok()?.as_bytes()))
}

/// Loads `dir`'s cache file into the process's cache, once.
fn load_cache_file(cache: &mut Cache, dir: &Path) {
    // Looked up before a path is made: this runs for every file of every
    // copy the restorer checks.
    if cache.loaded.contains(dir) || !cache.loaded.insert(dir.to_path_buf()) {
        return;
    }
    if let Ok(text) = std::fs::read_to_string(dir.join(HASH_CACHE_FILE)) {
        cache.hashes.extend(text.lines().filter_map(parse_line));
    }
}

/// The cache directory [`content_hash`] uses when its caller names none
/// (the restorer sets its store's).
static DEFAULT_CACHE_DIR: OnceLock<PathBuf> = OnceLock::new();

/// Sets the directory whose cache file [`content_hash`] uses when its
/// caller names none; the first call wins.
pub fn set_default_cache_dir(dir: &Path) {
    let _ = DEFAULT_CACHE_DIR.set(dir.to_path_buf());
}

/// blake3 of the content of `file` (`path` names it in errors), from the
/// cache when this version of the file was hashed before. `cache_dir`: a
/// store directory whose cache file is read and appended to (else the
/// default one, if set).
pub fn content_hash(
    file: &File,
    path: &str,
    cache_dir: Option<&Path>,
) -> Result<(u64, [u8; 32]), DependsError> {
    let meta = file.metadata().map_err(|source| DependsError::File {
        what: "stat",
        path: path.to_string(),
        source,
    })?;
    content_hash_with(file, &meta, path, cache_dir)
}

/// [`content_hash`] of a file whose `fstat` the caller has just made
/// (`meta`): the restorer checks each file a copy maps with one `fstat`,
/// not two (the cache's key is read from `meta`).
pub fn content_hash_with(
    file: &File,
    meta: &std::fs::Metadata,
    path: &str,
    cache_dir: Option<&Path>,
) -> Result<(u64, [u8; 32]), DependsError> {
    let cache_dir = cache_dir.or(DEFAULT_CACHE_DIR.get().map(|p| p.as_path()));
    let err = |what| {
        move |source| DependsError::File {
            what,
            path: path.to_string(),
            source,
        }
    };
    let key = key_of(meta);
    {
        let mut c = cache().lock().unwrap();
        if let Some(dir) = cache_dir {
            load_cache_file(&mut c, dir);
        }
        if let Some(h) = c.hashes.get(&key) {
            return Ok((meta.size(), *h));
        }
    }
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut offset = 0u64;
    loop {
        let n = file.read_at(&mut buf, offset).map_err(err("read"))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        offset += n as u64;
    }
    let hash = *hasher.finalize().as_bytes();
    // Only a file that did not change while it was read is cached.
    let after = file.metadata().map_err(err("stat"))?;
    if key_of(&after) == key && offset == meta.size() {
        cache().lock().unwrap().hashes.insert(key, hash);
        if let Some(dir) = cache_dir {
            let line = format!(
                "{} {} {} {} {} {} {} {}\n",
                key.0,
                key.1,
                key.2,
                key.3,
                key.4,
                key.5,
                key.6,
                blake3::Hash::from(hash).to_hex()
            );
            // Best effort: a cache that cannot be written is only slower.
            // Private like the rest of the data directory.
            use std::os::unix::fs::OpenOptionsExt;
            let _ = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(dir.join(HASH_CACHE_FILE))
                .and_then(|mut f| f.write_all(line.as_bytes()));
        }
    }
    Ok((offset, hash))
}

/// Whether the restorer maps `area` again from its file by path, privately
/// (what [`Dependencies::files`] records; a shared mapping's file may change
/// under its users by design).
pub fn mapped_by_path(area: &MemoryArea) -> bool {
    !area.shared
        && area.path.is_some()
        && area.file.is_some()
        && matches!(area.kind, AreaKind::FileUnchanged | AreaKind::FilePrivate)
}

/// The host pids of `root`'s descendants by the pid their own namespace
/// gives them (the last `NSpid` of `/proc/PID/status`), which is how a
/// snapshot names them.
fn descendants_by_ns_pid(root: i32) -> HashMap<i32, i32> {
    let mut found = HashMap::new();
    let mut queue = vec![root];
    while let Some(pid) = queue.pop() {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            continue;
        };
        for task in tasks.flatten() {
            let children =
                std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
            for child in children
                .split_whitespace()
                .filter_map(|c| c.parse::<i32>().ok())
            {
                let status =
                    std::fs::read_to_string(format!("/proc/{child}/status")).unwrap_or_default();
                let ns_pid = status
                    .lines()
                    .find_map(|l| l.strip_prefix("NSpid:"))
                    .and_then(|l| l.split_whitespace().last())
                    .and_then(|p| p.parse::<i32>().ok());
                if let Some(ns_pid) = ns_pid {
                    found.insert(ns_pid, child);
                }
                queue.push(child);
            }
        }
    }
    found
}

/// The content of every file the processes of `states` (all alive, the
/// first one host pid `root`, the others its descendants) map privately by
/// path, and of their executables, each path once. Read through
/// `/proc/PID/map_files` and `/proc/PID/exe`, so the files are the ones
/// the processes see whatever their mount namespace. A process that
/// cannot be found gets no content recorded (its files are then checked by
/// identity).
pub fn file_contents(
    states: &[&ProcessState],
    root: i32,
    cache_dir: Option<&Path>,
) -> Result<Vec<FileContent>, DependsError> {
    let mut seen = HashSet::new();
    let mut files = Vec::new();
    let others = if states.len() > 1 {
        descendants_by_ns_pid(root)
    } else {
        HashMap::new()
    };
    for (index, state) in states.iter().enumerate() {
        let pid = if index == 0 {
            root
        } else if let Some(&pid) = others.get(&state.pid) {
            pid
        } else {
            tracing::warn!(
                pid = state.pid,
                "process of the tree not found: its files are not recorded by content"
            );
            continue;
        };
        let mut wanted: Vec<(String, String, Option<&FileIdentity>)> =
            vec![(state.mm.exe_path.clone(), format!("/proc/{pid}/exe"), None)];
        for area in state.areas.iter().filter(|a| mapped_by_path(a)) {
            let path = area.path.clone().expect("mapped_by_path");
            wanted.push((
                path,
                format!("/proc/{pid}/map_files/{:x}-{:x}", area.start, area.end),
                area.file.as_ref(),
            ));
        }
        for (path, link, identity) in wanted {
            if !seen.insert(path.clone()) {
                continue;
            }
            let file = match File::open(&link) {
                Ok(file) => file,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    unmapped_since_capture(pid, &path, identity).ok_or_else(|| {
                        DependsError::File {
                            what: "open",
                            path: format!("{path} ({link})"),
                            source: e,
                        }
                    })?
                }
                Err(source) => {
                    return Err(DependsError::File {
                        what: "open",
                        path: format!("{path} ({link})"),
                        source,
                    })
                }
            };
            let (size, blake3) = content_hash(&file, &path, cache_dir)?;
            files.push(FileContent { path, size, blake3 });
        }
    }
    Ok(files)
}

/// The file an area mapped at the capture, when the running process has
/// unmapped it since (the capture detached before the files are read: the
/// dynamic loader, for one, maps `/etc/ld.so.cache` only while it loads a
/// library). Opened by its path in the process's root and taken only if it
/// is still the very file the capture saw (device, inode, size and
/// modification time); `None` otherwise.
fn unmapped_since_capture(pid: i32, path: &str, identity: Option<&FileIdentity>) -> Option<File> {
    let identity = identity?;
    let file = File::open(format!("/proc/{pid}/root{path}")).ok()?;
    let meta = file.metadata().ok()?;
    let same = meta.dev() == identity.dev
        && meta.ino() == identity.inode
        && meta.size() == identity.size
        && meta.mtime() == identity.mtime_sec
        && meta.mtime_nsec() == identity.mtime_nsec;
    if !same {
        return None;
    }
    tracing::debug!(
        pid,
        path,
        "a file mapped at the capture was unmapped since: read by its path"
    );
    Some(file)
}

/// `cpuid` leaf `leaf`, subleaf `sub`: (eax, ebx, ecx, edx).
fn cpuid(leaf: u32, sub: u32) -> (u32, u32, u32, u32) {
    #[allow(unused_unsafe)]
    // SAFETY: cpuid exists on every x86_64 CPU and only reads.
    let r = unsafe { std::arch::x86_64::__cpuid_count(leaf, sub) };
    (r.eax, r.ebx, r.ecx, r.edx)
}

/// `XCR0`, or 0 when the OS has not enabled xsave.
fn xcr0() -> u64 {
    let (_, _, ecx, _) = cpuid(1, 0);
    if ecx & (1 << 27) == 0 {
        return 0;
    }
    let (lo, hi): (u32, u32);
    // SAFETY: xgetbv with ecx = 0 reads XCR0; CPUID.1:ECX.OSXSAVE (checked
    // above) says the instruction is enabled. No memory is touched.
    unsafe {
        std::arch::asm!("xgetbv", in("ecx") 0u32, out("eax") lo, out("edx") hi,
            options(nomem, nostack, preserves_flags));
    }
    (hi as u64) << 32 | lo as u64
}

/// Lists the features among `$name`s this CPU (and kernel) supports.
macro_rules! detected {
    ($($name:tt),* $(,)?) => {{
        let mut found: Vec<String> = Vec::new();
        $(if std::is_x86_feature_detected!($name) { found.push($name.to_string()); })*
        found
    }};
}

/// This CPU's features (see [`CpuFeatures`]). Read once per process.
pub fn cpu_features() -> CpuFeatures {
    static CPU: OnceLock<CpuFeatures> = OnceLock::new();
    CPU.get_or_init(|| {
        let mut features = detected!(
            "sse3",
            "ssse3",
            "sse4.1",
            "sse4.2",
            "popcnt",
            "avx",
            "avx2",
            "fma",
            "f16c",
            "bmi1",
            "bmi2",
            "lzcnt",
            "movbe",
            "aes",
            "pclmulqdq",
            "sha",
            "adx",
            "rdrand",
            "rdseed",
            "xsave",
            "xsaveopt",
            "xsavec",
            "xsaves",
            "gfni",
            "vaes",
            "vpclmulqdq",
            "avx512f",
            "avx512cd",
            "avx512dq",
            "avx512bw",
            "avx512vl",
            "avx512ifma",
            "avx512vbmi",
            "avx512vbmi2",
            "avx512vnni",
            "avx512bitalg",
            "avx512vpopcntdq",
            "avx512bf16",
        );
        features.sort();
        let (_, xsave_size, _, _) = cpuid(0xd, 0);
        CpuFeatures {
            xcr0: xcr0(),
            xsave_size,
            features,
        }
    })
    .clone()
}

/// This kernel's vDSO (see [`VdsoImage`]), read from this process's own
/// (every 64-bit process maps the same image). Read once per process.
pub fn vdso_image() -> Result<VdsoImage, DependsError> {
    static VDSO: OnceLock<Result<VdsoImage, String>> = OnceLock::new();
    VDSO.get_or_init(|| {
        let maps = std::fs::read_to_string("/proc/self/maps").map_err(|e| e.to_string())?;
        let line = maps
            .lines()
            .find(|l| l.ends_with("[vdso]"))
            .ok_or("no [vdso] in /proc/self/maps")?;
        let range = line.split_whitespace().next().unwrap_or_default();
        let (start, end) = range.split_once('-').ok_or("bad maps line")?;
        let start = u64::from_str_radix(start, 16).map_err(|e| e.to_string())?;
        let end = u64::from_str_radix(end, 16).map_err(|e| e.to_string())?;
        // SAFETY: [start, end) is this process's [vdso] mapping, readable
        // and never unmapped or changed while the process lives.
        let bytes =
            unsafe { std::slice::from_raw_parts(start as *const u8, (end - start) as usize) };
        Ok(VdsoImage {
            size: end - start,
            blake3: *blake3::hash(bytes).as_bytes(),
        })
    })
    .clone()
    .map_err(DependsError::Vdso)
}

/// `/proc/PID/timens_offsets` (`self` for `pid` 0): the monotonic and
/// boottime offsets of the time namespace the process's children get
/// (its own unless it unshared one). Zero without time namespaces.
pub fn timens_offsets(pid: i32) -> Result<Clocks, DependsError> {
    let path = if pid == 0 {
        "/proc/self/timens_offsets".to_string()
    } else {
        format!("/proc/{pid}/timens_offsets")
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Clocks::default()),
        Err(e) => return Err(DependsError::Clocks(format!("{path}: {e}"))),
    };
    let mut offsets = Clocks::default();
    for line in text.lines() {
        let w: Vec<&str> = line.split_whitespace().collect();
        let [name, secs, nanos] = w[..] else {
            continue;
        };
        let (Ok(secs), Ok(nanos)) = (secs.parse::<i64>(), nanos.parse::<i64>()) else {
            return Err(DependsError::Clocks(format!("{path}: bad line {line:?}")));
        };
        let ns = secs * 1_000_000_000 + nanos;
        match name {
            "monotonic" | "1" => offsets.monotonic_ns = ns,
            "boottime" | "7" => offsets.boottime_ns = ns,
            _ => {}
        }
    }
    Ok(offsets)
}

fn clock_ns(id: nix::time::ClockId) -> Result<i64, DependsError> {
    let t = nix::time::clock_gettime(id).map_err(|e| DependsError::Clocks(e.to_string()))?;
    Ok(t.tv_sec() * 1_000_000_000 + t.tv_nsec())
}

/// This process's `CLOCK_MONOTONIC` and `CLOCK_BOOTTIME`.
pub fn clocks_now() -> Result<Clocks, DependsError> {
    Ok(Clocks {
        monotonic_ns: clock_ns(nix::time::ClockId::CLOCK_MONOTONIC)?,
        boottime_ns: clock_ns(nix::time::ClockId::CLOCK_BOOTTIME)?,
    })
}

/// The host's clocks (those of the initial time namespace, against which
/// every time namespace's offsets count): this process's, less its time
/// namespace's offsets.
pub fn host_clocks() -> Result<Clocks, DependsError> {
    let now = clocks_now()?;
    let mine = timens_offsets(0)?;
    Ok(Clocks {
        monotonic_ns: now.monotonic_ns - mine.monotonic_ns,
        boottime_ns: now.boottime_ns - mine.boottime_ns,
    })
}

/// The clocks as process `pid` sees them now: this process's, less this
/// process's time namespace offsets, plus `pid`'s.
pub fn clocks_of(pid: i32) -> Result<Clocks, DependsError> {
    let now = clocks_now()?;
    let mine = timens_offsets(0)?;
    let theirs = timens_offsets(pid)?;
    Ok(Clocks {
        monotonic_ns: now.monotonic_ns - mine.monotonic_ns + theirs.monotonic_ns,
        boottime_ns: now.boottime_ns - mine.boottime_ns + theirs.boottime_ns,
    })
}

/// Everything the copies of a snapshot of `states` (its processes, the
/// root first, host pid `root`, all alive) depend on.
pub fn record(
    states: &[&ProcessState],
    root: i32,
    cache_dir: Option<&Path>,
) -> Result<Dependencies, DependsError> {
    Ok(Dependencies {
        files: file_contents(states, root, cache_dir)?,
        cpu: cpu_features(),
        vdso: vdso_image()?,
        clocks: clocks_of(root)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_cached_and_follow_changes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"hello").unwrap();
        let f = File::open(&path).unwrap();
        let (size, h) = content_hash(&f, "f", Some(dir.path())).unwrap();
        assert_eq!(size, 5);
        assert_eq!(h, *blake3::hash(b"hello").as_bytes());
        let cached = std::fs::read_to_string(dir.path().join(HASH_CACHE_FILE)).unwrap();
        assert!(parse_line(cached.lines().next().unwrap()).is_some());
        std::fs::write(&path, b"jello").unwrap();
        let (_, h2) = content_hash(&f, "f", Some(dir.path())).unwrap();
        assert_eq!(h2, *blake3::hash(b"jello").as_bytes());
    }

    #[test]
    fn a_file_unmapped_since_the_capture_is_read_by_path_only_if_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lib.so");
        std::fs::write(&path, b"library").unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        let identity = FileIdentity {
            dev: meta.dev(),
            inode: meta.ino(),
            size: meta.size(),
            mtime_sec: meta.mtime(),
            mtime_nsec: meta.mtime_nsec(),
        };
        let me = std::process::id() as i32;
        let name = path.to_str().unwrap();
        let file = unmapped_since_capture(me, name, Some(&identity)).expect("the same file");
        let (_, hash) = content_hash(&file, name, None).unwrap();
        assert_eq!(hash, *blake3::hash(b"library").as_bytes());
        // No identity recorded: nothing to check it against.
        assert!(unmapped_since_capture(me, name, None).is_none());
        // Replaced by another file at the same path: refused.
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, b"another library").unwrap();
        assert!(unmapped_since_capture(me, name, Some(&identity)).is_none());
        // Gone: refused.
        std::fs::remove_file(&path).unwrap();
        assert!(unmapped_since_capture(me, name, Some(&identity)).is_none());
    }

    #[test]
    fn host_facts_read() {
        let cpu = cpu_features();
        assert!(cpu.features.iter().any(|f| f == "sse3"), "{cpu:?}");
        assert!(
            cpu.xcr0 & 0b11 == 0b11,
            "x87 and SSE state enabled: {cpu:?}"
        );
        assert!(vdso_image().unwrap().size >= 4096);
        let a = clocks_of(std::process::id() as i32).unwrap();
        let b = clocks_now().unwrap();
        assert!(a.monotonic_ns <= b.monotonic_ns && a.monotonic_ns > 0);
    }
}
