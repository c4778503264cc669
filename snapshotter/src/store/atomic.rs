//! Durable, all-or-nothing file replacement: write a temporary file beside the
//! target, fsync it, rename it over the target, fsync the directory.
//!
//! A crash at any point leaves either the old file or the new one at the
//! target path, never a mix; at worst a stale `.<name>.tmp` file remains, which
//! later writes overwrite and gc removes.
//!
//! The store holds function memory: everything it writes is a [`PRIVATE_FILE`]
//! in a [`PRIVATE_DIR`] (see [`create_private_dir`]).

use std::fs::{DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::failpoint;

/// Mode of every file the store creates: the server's alone.
pub(crate) const PRIVATE_FILE: u32 = 0o600;

/// Mode of every directory the store creates.
pub(crate) const PRIVATE_DIR: u32 = 0o700;

/// Creates `dir` and its missing parents with [`PRIVATE_DIR`].
pub(crate) fn create_private_dir(dir: &Path) -> io::Result<()> {
    DirBuilder::new()
        .recursive(true)
        .mode(PRIVATE_DIR)
        .create(dir)
}

/// Options that create (or truncate) a [`PRIVATE_FILE`] for writing.
pub(crate) fn private_file() -> OpenOptions {
    let mut o = OpenOptions::new();
    o.write(true).create(true).truncate(true).mode(PRIVATE_FILE);
    o
}

/// Path of the temporary file used to replace `target`.
pub(crate) fn tmp_path(target: &Path) -> PathBuf {
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    target.with_file_name(format!(".{name}.tmp"))
}

/// Failure points of roots and manifests written with [`write_atomic`].
pub(crate) const ATOMIC_POINTS: [&str; 3] =
    ["atomic-tmp-written", "atomic-tmp-synced", "atomic-renamed"];

/// Replaces `target` with `parts` (concatenated) atomically and durably.
pub(crate) fn write_atomic(target: &Path, parts: &[&[u8]]) -> io::Result<()> {
    write_atomic_with(target, parts, ATOMIC_POINTS)
}

/// [`write_atomic`] with its own failure points: after the write, after the
/// fsync, after the rename.
pub(crate) fn write_atomic_with(
    target: &Path,
    parts: &[&[u8]],
    points: [&'static str; 3],
) -> io::Result<()> {
    let tmp = tmp_path(target);
    let mut file = private_file().open(&tmp)?;
    for part in parts {
        file.write_all(part)?;
    }
    failpoint::hit(points[0]);
    file.sync_all()?;
    drop(file);
    failpoint::hit(points[1]);
    std::fs::rename(&tmp, target)?;
    failpoint::hit(points[2]);
    sync_parent(target)
}

/// Fsyncs the directory holding `path`, making a rename or unlink durable.
pub(crate) fn sync_parent(path: &Path) -> io::Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    sync_dir(dir)
}

/// Fsyncs a directory.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn what_the_store_writes_is_private() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a/b");
        create_private_dir(&dir).unwrap();
        assert_eq!(mode(&tmp.path().join("a")), PRIVATE_DIR);
        assert_eq!(mode(&dir), PRIVATE_DIR);
        let f = dir.join("root");
        write_atomic(&f, &[b"x"]).unwrap();
        assert_eq!(mode(&f), PRIVATE_FILE);
        // A whole store: its directories and files.
        let store = crate::store::PageStore::open(tmp.path().join("store")).unwrap();
        for sub in ["packs", "roots", "images"] {
            assert_eq!(mode(&store.dir().join(sub)), PRIVATE_DIR, "{sub}");
        }
        for file in ["index", "LOCK"] {
            assert_eq!(mode(&store.dir().join(file)), PRIVATE_FILE, "{file}");
        }
    }
}
