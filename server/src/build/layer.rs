//! The layer cache: installed dependencies, one folder per key.
//!
//! ```text
//! <layer_cache>/<key>/            a finished layer (never changed again)
//! <layer_cache>/.tmp-<key>-<rand>/ a layer being unpacked (swept when stale)
//! <layer_cache>/.tmp-<key>-<rand>.in/ the files its installer reads
//! <layer_cache>/.tmp-archive-<rand>.tar a layer's archive on its way to
//!                                  or from the shared store
//! ```
//!
//! The key is the blake3 of the runtime, the installer's full command line
//! (interpreter, index URL), the dependency file and its lockfile
//! ([`key`]). A layer is unpacked into a temporary folder, synced to disk,
//! then renamed into place: a reader sees a whole layer or none. A version
//! gets a layer as hard links in its code folder ([`link_into`]), so every
//! function with the same dependencies maps the same files (one page cache,
//! one set of pages in snapshots). A layer no version links to (every file
//! has one link) and untouched for a grace period is removed
//! ([`remove_unused`]).
//!
//! Nodes sharing a store (docs/cluster.md) carry layers as archives: the
//! writer makes one with [`archive_to_file`] (the same bytes for the same
//! folder, so its blake3 names it; written to a temporary file, hashed on
//! the way), a reader installs it with [`install_checked`] from the file
//! it downloaded (hash checked first, then unpacked, synced and renamed
//! like a build's output) into `<layer_cache>/<key>-<first 16 hex digits of the hash>/`.

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Errors of unpacking, publishing or linking a layer.
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    /// A file operation failed.
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
    /// The installer's archive is not a tar stream thaw accepts.
    #[error("the installer's output is not a valid archive: {0}")]
    Archive(#[source] std::io::Error),
    /// A layer's archive does not hash to what its reference says.
    #[error("the archive of layer {key} hashes to {actual}, not {expected}: damaged or not this layer's")]
    Hash {
        /// The layer's key.
        key: String,
        /// The blake3 named by the reference.
        expected: String,
        /// The blake3 of the bytes received.
        actual: String,
    },
    /// A layer reference that cannot be used.
    #[error("layer reference {0}")]
    Reference(String),
}

/// The layer a version's code folder links to, as its record names it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LayerRef {
    /// The layer's key ([`key`]): its folder in the writer's cache.
    pub key: String,
    /// Where in the code folder it is linked (the runtime's `into`, e.g.
    /// `.thaw/python`).
    pub into: String,
}

impl LayerRef {
    /// Checks that the key is a layer key (64 hex digits) and `into` a
    /// relative path that stays inside the code folder.
    pub fn validate(&self) -> Result<(), LayerError> {
        if self.key.len() != 64 || !self.key.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(LayerError::Reference(format!(
                "{:?}: the key is not 64 hex digits",
                self.key
            )));
        }
        let into = Path::new(&self.into);
        let inside = !self.into.is_empty()
            && into
                .components()
                .all(|c| matches!(c, std::path::Component::Normal(_)));
        if !inside {
            return Err(LayerError::Reference(format!(
                "{:?}: `into` is not a relative path inside the code folder",
                self.into
            )));
        }
        Ok(())
    }
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> LayerError + 'a {
    move |source| LayerError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// One input of a layer's key: a file's name and its bytes (`None`: absent).
pub type KeyInput<'a> = (&'a str, Option<&'a [u8]>);

/// The key of a layer: blake3 over a format tag, the runtime, the installer
/// command line and each input file (name, presence, length, bytes), in
/// hex.
pub fn key(runtime: &str, command: &[String], files: &[KeyInput<'_>]) -> String {
    let mut h = blake3::Hasher::new();
    h.update(b"thaw-layer-v1\0");
    h.update(runtime.as_bytes());
    h.update(b"\0");
    for a in command {
        h.update(&(a.len() as u64).to_le_bytes());
        h.update(a.as_bytes());
    }
    h.update(b"\0");
    for (name, bytes) in files {
        h.update(name.as_bytes());
        h.update(b"\0");
        match bytes {
            Some(b) => {
                h.update(&[1]);
                h.update(&(b.len() as u64).to_le_bytes());
                h.update(b);
            }
            None => {
                h.update(&[0]);
            }
        }
    }
    h.finalize().to_hex().to_string()
}

/// The cache's folder of layer `key`.
pub fn path(cache: &Path, key: &str) -> PathBuf {
    cache.join(key)
}

/// Removes temporary folders (and archive files) left by an interrupted
/// build or transfer: those not
/// touched for `older_than` (the cache may be shared with servers that are
/// building right now).
pub fn sweep(cache: &Path, older_than: std::time::Duration) {
    let Ok(entries) = fs::read_dir(cache) else {
        return;
    };
    for e in entries.flatten() {
        if !e.file_name().to_string_lossy().starts_with(".tmp-") {
            continue;
        }
        let stale = e
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > older_than);
        if stale {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                let _ = fs::remove_dir_all(e.path());
            } else {
                let _ = fs::remove_file(e.path());
            }
        }
    }
}

/// Marks `layer` as used now (its folder's modification time), before a
/// version links it: [`remove_unused`] leaves layers touched within its
/// grace period alone.
pub fn touch(layer: &Path) -> Result<(), LayerError> {
    let dir = fs::File::open(layer).map_err(io("open", layer))?;
    dir.set_modified(std::time::SystemTime::now())
        .map_err(io("touch", layer))
}

/// Whether some regular file under `dir` has more than one link: a
/// version's code folder holds it (layers are hard-linked into them).
fn linked(dir: &Path) -> std::io::Result<bool> {
    use std::os::unix::fs::MetadataExt;
    for e in fs::read_dir(dir)? {
        let e = e?;
        let ty = e.file_type()?;
        if ty.is_dir() {
            if linked(&e.path())? {
                return Ok(true);
            }
        } else if ty.is_file() && e.metadata()?.nlink() > 1 {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Whether `path` was last modified more than `grace` ago.
fn older_than(path: &Path, grace: std::time::Duration) -> bool {
    path.metadata()
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .is_some_and(|age| age > grace)
}

/// Removes the layers of `cache` that no version links to (no file of
/// theirs has a second link; `st_nlink` counts the code folders of every
/// server sharing the cache) and that were not touched ([`touch`]) within
/// `grace`. A layer is renamed to a `.tmp-` name first, so a reader sees it
/// whole or not at all (and [`sweep`] finishes a removal cut short).
/// Returns the keys removed; a layer that cannot be read is kept.
pub fn remove_unused(cache: &Path, grace: std::time::Duration) -> Vec<String> {
    let mut removed = Vec::new();
    let Ok(entries) = fs::read_dir(cache) else {
        return removed;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || !e.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let layer = e.path();
        if !older_than(&layer, grace) || !matches!(linked(&layer), Ok(false)) {
            continue;
        }
        // A deploy touches a layer before it links it: look again just
        // before the rename.
        if !older_than(&layer, grace) {
            continue;
        }
        let gone = cache.join(format!(".tmp-gc-{name}-{:08x}", rand::random::<u32>()));
        if fs::rename(&layer, &gone).is_ok() {
            let _ = fs::remove_dir_all(&gone);
            removed.push(name);
        }
    }
    removed
}

/// A temporary folder for layer `key` in `cache`.
pub fn temp_dir(cache: &Path, key: &str) -> Result<PathBuf, LayerError> {
    fs::create_dir_all(cache).map_err(io("create", cache))?;
    let dir = cache.join(format!(".tmp-{key}-{:08x}", rand::random::<u32>()));
    fs::create_dir(&dir).map_err(io("create", &dir))?;
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).map_err(io("chmod", &dir))?;
    Ok(dir)
}

/// Unpacks the tar stream `input` into `dst`: regular files, folders,
/// symbolic links and hard links only (nothing else of an archive made in
/// the sandbox is trusted), paths kept inside `dst` (the tar crate's
/// `unpack_in`), no owners or special bits; files end up `0644` or `0755`,
/// folders `0755`.
pub fn unpack(input: impl Read, dst: &Path) -> Result<u64, LayerError> {
    use tar::EntryType;
    let mut archive = tar::Archive::new(input);
    archive.set_preserve_permissions(false);
    archive.set_preserve_ownerships(false);
    archive.set_unpack_xattrs(false);
    archive.set_overwrite(true);
    let mut files = 0;
    for entry in archive.entries().map_err(LayerError::Archive)? {
        let mut entry = entry.map_err(LayerError::Archive)?;
        let kind = entry.header().entry_type();
        if !matches!(
            kind,
            EntryType::Regular
                | EntryType::Continuous
                | EntryType::Directory
                | EntryType::Symlink
                | EntryType::Link
        ) {
            continue;
        }
        let mode = entry.header().mode().unwrap_or(0o644);
        let unpacked = entry.unpack_in(dst).map_err(LayerError::Archive)?;
        if !unpacked {
            continue;
        }
        if kind.is_file() || kind == EntryType::Continuous {
            files += 1;
            let path = dst.join(entry.path().map_err(LayerError::Archive)?);
            let m = if mode & 0o111 != 0 { 0o755 } else { 0o644 };
            fs::set_permissions(&path, fs::Permissions::from_mode(m))
                .map_err(io("chmod", &path))?;
        }
    }
    normalise_dirs(dst)?;
    Ok(files)
}

fn normalise_dirs(dir: &Path) -> Result<(), LayerError> {
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).map_err(io("chmod", dir))?;
    for e in fs::read_dir(dir).map_err(io("read", dir))? {
        let e = e.map_err(io("read", dir))?;
        if e.file_type().map_err(io("stat", &e.path()))?.is_dir() {
            normalise_dirs(&e.path())?;
        }
    }
    Ok(())
}

/// Makes the unpacked `tmp` the layer `dst`: syncs its filesystem, renames
/// it, syncs the cache folder. When another build published `dst` first,
/// `tmp` is removed and that layer is used.
pub fn publish(tmp: &Path, dst: &Path) -> Result<(), LayerError> {
    let dir = fs::File::open(tmp).map_err(io("open", tmp))?;
    nix::unistd::syncfs(&dir).map_err(|e| LayerError::Io {
        what: "sync",
        path: tmp.to_path_buf(),
        source: e.into(),
    })?;
    drop(dir);
    if let Err(e) = fs::rename(tmp, dst) {
        if dst.is_dir() {
            let _ = fs::remove_dir_all(tmp);
            return Ok(());
        }
        return Err(LayerError::Io {
            what: "rename",
            path: dst.to_path_buf(),
            source: e,
        });
    }
    let parent = dst.parent().expect("a layer is in the cache");
    fs::File::open(parent)
        .and_then(|d| d.sync_all())
        .map_err(io("sync", parent))
}

/// Places `layer` at `dst` (inside a version's code folder) as hard links
/// (a copy when the cache is on another filesystem). Folders are made;
/// files already at `dst` (the function's own) are replaced by the
/// layer's. Symbolic links are made again, never followed.
pub fn link_into(layer: &Path, dst: &Path) -> Result<(), LayerError> {
    if dst.symlink_metadata().is_ok_and(|m| !m.is_dir()) {
        fs::remove_file(dst).map_err(io("remove", dst))?;
    }
    fs::create_dir_all(dst).map_err(io("create", dst))?;
    fs::set_permissions(dst, fs::Permissions::from_mode(0o755)).map_err(io("chmod", dst))?;
    for e in fs::read_dir(layer).map_err(io("read", layer))? {
        let e = e.map_err(io("read", layer))?;
        let src = e.path();
        let to = dst.join(e.file_name());
        let ty = e.file_type().map_err(io("stat", &src))?;
        if ty.is_dir() {
            if to.symlink_metadata().is_ok_and(|m| !m.is_dir()) {
                fs::remove_file(&to).map_err(io("remove", &to))?;
            }
            link_into(&src, &to)?;
            continue;
        }
        if let Ok(m) = to.symlink_metadata() {
            if m.is_dir() {
                fs::remove_dir_all(&to).map_err(io("remove", &to))?;
            } else {
                fs::remove_file(&to).map_err(io("remove", &to))?;
            }
        }
        if ty.is_symlink() {
            let target = fs::read_link(&src).map_err(io("read link", &src))?;
            std::os::unix::fs::symlink(&target, &to).map_err(io("link", &to))?;
        } else if ty.is_file() {
            if let Err(e) = fs::hard_link(&src, &to) {
                if e.raw_os_error() != Some(libc::EXDEV) {
                    return Err(LayerError::Io {
                        what: "link",
                        path: to,
                        source: e,
                    });
                }
                fs::copy(&src, &to).map_err(io("copy", &to))?;
            }
        }
    }
    Ok(())
}

/// The layer's folder as a tar archive that depends only on what the
/// folder holds: entries in name order, owner 0, modification time 0, files
/// `0644` or `0755`, folders `0755`, symbolic links as links. A file with
/// several links inside the layer is stored once per name.
pub fn archive(layer: &Path) -> Result<Vec<u8>, LayerError> {
    write_archive(layer, Vec::new())
}

/// [`archive`] written to `out` as it is made (nothing held in memory).
pub fn write_archive<W: Write>(layer: &Path, out: W) -> Result<W, LayerError> {
    let mut tar = tar::Builder::new(out);
    append_tree(&mut tar, layer, Path::new(""))?;
    tar.into_inner().map_err(LayerError::Archive)
}

/// A layer's archive in a temporary file of the layer cache (removed when
/// dropped), with its blake3 and size.
#[derive(Debug)]
pub struct ArchiveFile {
    /// The file.
    pub file: tempfile::NamedTempFile,
    /// blake3 of its bytes, in hex.
    pub blake3: String,
    /// Its size.
    pub bytes: u64,
}

/// Writes the archive of `layer` ([`archive`]) to a temporary file in
/// `cache` (a `.tmp-` name, so [`sweep`] removes one a crash left),
/// hashing it as it goes.
pub fn archive_to_file(layer: &Path, cache: &Path) -> Result<ArchiveFile, LayerError> {
    let file = temp_file(cache)?;
    let hashing = Hashing {
        inner: file.as_file(),
        hasher: blake3::Hasher::new(),
        bytes: 0,
    };
    let out = write_archive(layer, std::io::BufWriter::with_capacity(1 << 20, hashing))?;
    let hashing = out
        .into_inner()
        .map_err(|e| LayerError::Archive(e.into_error()))?;
    Ok(ArchiveFile {
        blake3: hashing.hasher.finalize().to_hex().to_string(),
        bytes: hashing.bytes,
        file,
    })
}

/// A temporary file in `cache` for a layer's archive, removed when dropped.
pub fn temp_file(cache: &Path) -> Result<tempfile::NamedTempFile, LayerError> {
    fs::create_dir_all(cache).map_err(io("create", cache))?;
    tempfile::Builder::new()
        .prefix(".tmp-archive-")
        .suffix(".tar")
        .tempfile_in(cache)
        .map_err(io("create a temporary file in", cache))
}

/// A writer that hashes (blake3) and counts what passes through it.
struct Hashing<W> {
    inner: W,
    hasher: blake3::Hasher,
    bytes: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h
}

fn append_tree<W: Write>(
    tar: &mut tar::Builder<W>,
    dir: &Path,
    rel: &Path,
) -> Result<(), LayerError> {
    let mut entries: Vec<fs::DirEntry> = fs::read_dir(dir)
        .map_err(io("read", dir))?
        .collect::<Result<_, _>>()
        .map_err(io("read", dir))?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let path = e.path();
        let name = rel.join(e.file_name());
        let meta = fs::symlink_metadata(&path).map_err(io("stat", &path))?;
        let ty = meta.file_type();
        if ty.is_dir() {
            let mut h = header(tar::EntryType::Directory, 0o755, 0);
            tar.append_data(&mut h, &name, std::io::empty())
                .map_err(io("archive", &path))?;
            append_tree(tar, &path, &name)?;
        } else if ty.is_symlink() {
            let target = fs::read_link(&path).map_err(io("read link", &path))?;
            let mut h = header(tar::EntryType::Symlink, 0o777, 0);
            tar.append_link(&mut h, &name, &target)
                .map_err(io("archive", &path))?;
        } else if ty.is_file() {
            let mode = if meta.permissions().mode() & 0o111 != 0 {
                0o755
            } else {
                0o644
            };
            let mut h = header(tar::EntryType::Regular, mode, meta.len());
            let f = fs::File::open(&path).map_err(io("open", &path))?;
            tar.append_data(&mut h, &name, f)
                .map_err(io("archive", &path))?;
        }
    }
    Ok(())
}

/// The folder name of a layer installed from its archive on a node that
/// did not build it: the key and the start of the archive's hash.
pub fn fetched_name(key: &str, blake3_hex: &str) -> String {
    format!("{key}-{}", &blake3_hex[..blake3_hex.len().min(16)])
}

/// Installs layer `reference` from its archive `tar` into `cache`, unless
/// it is there: the archive must hash (blake3) to `blake3_hex`; it is
/// unpacked into a temporary folder, synced and renamed into place
/// ([`unpack`], [`publish`]). Returns the layer's folder, touched ([`touch`])
/// so that [`remove_unused`] leaves it until a version links it.
pub fn install_archive(
    cache: &Path,
    reference: &LayerRef,
    blake3_hex: &str,
    tar: &[u8],
) -> Result<PathBuf, LayerError> {
    reference.validate()?;
    check_hash(reference, blake3_hex, &blake3::hash(tar).to_hex())?;
    install_checked(cache, reference, blake3_hex, tar)
}

/// Fails unless `actual` (the blake3 of the bytes received, in hex) is
/// `expected`.
pub fn check_hash(reference: &LayerRef, expected: &str, actual: &str) -> Result<(), LayerError> {
    if actual != expected {
        return Err(LayerError::Hash {
            key: reference.key.clone(),
            expected: expected.to_string(),
            actual: actual.to_string(),
        });
    }
    Ok(())
}

/// [`install_archive`] from `tar`, a stream whose hash the caller checked
/// already ([`check_hash`]: a download hashes what it writes).
pub fn install_checked(
    cache: &Path,
    reference: &LayerRef,
    blake3_hex: &str,
    tar: impl Read,
) -> Result<PathBuf, LayerError> {
    reference.validate()?;
    let dst = cache.join(fetched_name(&reference.key, blake3_hex));
    if !dst.is_dir() {
        let tmp = temp_dir(cache, &reference.key)?;
        let done = unpack(tar, &tmp).and_then(|_| publish(&tmp, &dst));
        if let Err(e) = done {
            let _ = fs::remove_dir_all(&tmp);
            return Err(e);
        }
    }
    touch(&dst)?;
    Ok(dst)
}

/// The installed layer of `reference` in `cache` whose archive hashes to
/// `blake3_hex`, if it is there.
pub fn installed(cache: &Path, reference: &LayerRef, blake3_hex: &str) -> Option<PathBuf> {
    let dst = cache.join(fetched_name(&reference.key, blake3_hex));
    dst.is_dir().then_some(dst)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sets `path`'s modification time `ago` in the past.
    fn age(path: &Path, ago: std::time::Duration) {
        let f = fs::File::open(path).unwrap();
        f.set_modified(std::time::SystemTime::now() - ago).unwrap();
    }

    #[test]
    fn unused_layers_past_the_grace_period_are_removed() {
        let hour = std::time::Duration::from_secs(3600);
        let cache = tempfile::tempdir().unwrap();
        let code = tempfile::tempdir().unwrap();
        let layer = |key: &str| {
            let dir = cache.path().join(key);
            fs::create_dir_all(dir.join("pkg")).unwrap();
            fs::write(dir.join("pkg/__init__.py"), key).unwrap();
            age(&dir, 2 * hour);
            dir
        };
        let (used, unused, fresh) = (layer("used"), layer("unused"), layer("fresh"));
        link_into(&used, &code.path().join("v1")).unwrap();
        age(&used, 2 * hour);
        touch(&fresh).unwrap();
        fs::create_dir(cache.path().join(".tmp-other")).unwrap();

        assert_eq!(
            remove_unused(cache.path(), hour),
            vec!["unused".to_string()]
        );
        assert!(!unused.exists());
        assert!(used.join("pkg/__init__.py").is_file());
        assert!(fresh.is_dir());
        assert!(cache.path().join(".tmp-other").is_dir());
        // Once the last version linking it is gone, so is the layer.
        fs::remove_dir_all(code.path().join("v1")).unwrap();
        assert_eq!(remove_unused(cache.path(), hour), vec!["used".to_string()]);
        assert_eq!(remove_unused(cache.path(), hour), Vec::<String>::new());
    }

    #[test]
    fn the_key_follows_every_input() {
        let cmd = vec!["pip".to_string(), "--index-url".into(), "https://a/".into()];
        let base = key("python3", &cmd, &[("requirements.txt", Some(b"six\n"))]);
        assert_eq!(base.len(), 64);
        assert_eq!(
            base,
            key("python3", &cmd, &[("requirements.txt", Some(b"six\n"))])
        );
        assert_ne!(
            base,
            key("python3", &cmd, &[("requirements.txt", Some(b"six==1\n"))])
        );
        assert_ne!(
            base,
            key("node20", &cmd, &[("requirements.txt", Some(b"six\n"))])
        );
        let other = vec!["pip".to_string(), "--index-url".into(), "https://b/".into()];
        assert_ne!(
            base,
            key("python3", &other, &[("requirements.txt", Some(b"six\n"))])
        );
        assert_ne!(
            key(
                "node20",
                &cmd,
                &[("package.json", Some(b"{}")), ("package-lock.json", None)]
            ),
            key(
                "node20",
                &cmd,
                &[
                    ("package.json", Some(b"{}")),
                    ("package-lock.json", Some(b""))
                ]
            )
        );
    }

    #[test]
    fn unpack_keeps_paths_inside_and_links_are_hard_links() {
        let dir = tempfile::tempdir().unwrap();
        let mut tar = tar::Builder::new(Vec::new());
        let mut add = |path: &str, body: &[u8], mode: u32| {
            let mut h = tar::Header::new_gnu();
            h.set_size(body.len() as u64);
            h.set_mode(mode);
            h.set_entry_type(tar::EntryType::Regular);
            h.set_cksum();
            tar.append_data(&mut h, path, body).unwrap();
        };
        add("pkg/__init__.py", b"x = 1\n", 0o4666);
        add("bin/tool", b"#!/bin/sh\n", 0o700);
        // An entry escaping the folder: `append_data` refuses such a name,
        // so it is written into the header by hand.
        let mut h = tar::Header::new_old();
        h.as_old_mut().name[..9].copy_from_slice(b"../escape");
        h.set_size(1);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_cksum();
        tar.append(&h, &b"!"[..]).unwrap();
        let bytes = tar.into_inner().unwrap();
        let layer = dir.path().join("layer");
        fs::create_dir(&layer).unwrap();
        let r = unpack(&bytes[..], &layer);
        assert!(!dir.path().join("escape").exists());
        assert!(r.is_err() || !layer.join("../escape").exists());
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode(&layer.join("pkg/__init__.py")), 0o644);
        assert_eq!(mode(&layer.join("bin/tool")), 0o755);

        let code = dir.path().join("code");
        fs::create_dir_all(code.join("node_modules/pkg")).unwrap();
        fs::write(code.join("node_modules/pkg/__init__.py"), "mine").unwrap();
        link_into(&layer, &code.join("node_modules")).unwrap();
        use std::os::unix::fs::MetadataExt;
        let a = fs::metadata(layer.join("pkg/__init__.py")).unwrap();
        let b = fs::metadata(code.join("node_modules/pkg/__init__.py")).unwrap();
        assert_eq!((a.dev(), a.ino()), (b.dev(), b.ino()));
    }

    fn sample_layer(dir: &Path) {
        fs::create_dir_all(dir.join("pkg/sub")).unwrap();
        fs::write(dir.join("pkg/__init__.py"), "x = 1\n").unwrap();
        fs::write(dir.join("pkg/sub/lib.so"), b"\x7fELF....").unwrap();
        fs::set_permissions(
            dir.join("pkg/sub/lib.so"),
            fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        std::os::unix::fs::symlink("sub/lib.so", dir.join("pkg/lib.so")).unwrap();
    }

    #[test]
    fn a_layer_travels_as_an_archive_named_by_its_hash() {
        let writer = tempfile::tempdir().unwrap();
        let layer = writer.path().join("layer");
        sample_layer(&layer);
        let tar = archive(&layer).unwrap();
        // Another folder with the same content, made later: the same bytes.
        let again = writer.path().join("again");
        sample_layer(&again);
        age(
            &again.join("pkg/__init__.py"),
            std::time::Duration::from_secs(99),
        );
        assert_eq!(archive(&again).unwrap(), tar);
        let hash = blake3::hash(&tar).to_hex().to_string();
        // Written to a file of the cache, hashed on the way: the same.
        let cache = tempfile::tempdir().unwrap();
        let file = archive_to_file(&layer, cache.path()).unwrap();
        assert_eq!(
            (file.blake3.as_str(), file.bytes),
            (hash.as_str(), tar.len() as u64)
        );
        assert_eq!(fs::read(file.file.path()).unwrap(), tar);
        assert!(file
            .file
            .path()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with(".tmp-"));
        drop(file);
        assert_eq!(fs::read_dir(cache.path()).unwrap().count(), 0);

        let r = LayerRef {
            key: "ab".repeat(32),
            into: ".thaw/python".into(),
        };
        assert!(installed(cache.path(), &r, &hash).is_none());
        let dst = install_archive(cache.path(), &r, &hash, &tar).unwrap();
        assert_eq!(dst, cache.path().join(format!("{}-{}", r.key, &hash[..16])));
        assert_eq!(installed(cache.path(), &r, &hash), Some(dst.clone()));
        assert_eq!(
            fs::read_to_string(dst.join("pkg/__init__.py")).unwrap(),
            "x = 1\n"
        );
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode(&dst.join("pkg/sub/lib.so")), 0o755);
        assert_eq!(
            fs::read_link(dst.join("pkg/lib.so")).unwrap(),
            Path::new("sub/lib.so")
        );
        // Installed from the archive, the layer archives to the same bytes.
        assert_eq!(archive(&dst).unwrap(), tar);
        let names: Vec<String> = fs::read_dir(cache.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 1, "no temporary folder left: {names:?}");

        // One byte changed: refused, nothing installed.
        let mut bad = tar.clone();
        let at = bad.len() / 3;
        bad[at] ^= 1;
        let other = tempfile::tempdir().unwrap();
        let err = install_archive(other.path(), &r, &hash, &bad).unwrap_err();
        assert!(matches!(err, LayerError::Hash { .. }), "{err}");
        assert!(err.to_string().contains(&r.key), "{err}");
        assert_eq!(fs::read_dir(other.path()).unwrap().count(), 0);

        for (key, into) in [
            ("ab".repeat(32), "../x"),
            ("ab".repeat(32), "/abs"),
            ("zz".into(), "x"),
        ] {
            let bad = LayerRef {
                key,
                into: into.into(),
            };
            assert!(matches!(
                install_archive(other.path(), &bad, &hash, &tar),
                Err(LayerError::Reference(_))
            ));
        }
    }
}
