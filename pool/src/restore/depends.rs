//! Whether this node can run a snapshot's copies (issue 18, "What a copy
//! depends on"), checked before the copy is made, against what the
//! capture recorded (`snapshotter::state::depends`, format 4 snapshots):
//!
//! ```text
//! check_host     at prepare, once per restore, cheap (this host's facts are
//!                read once per process): the CPU has every feature and
//!                xsave component the capture's had; the kernel's vDSO is
//!                the same image
//! attach         at prepare: each mapped file and the executable the plan
//!                opens by path gets its recorded content
//! check_content  when the file is opened (inside the sandbox, as the
//!                function) and checked (`fds::Wanted::check`): same size,
//!                same blake3 (cached by device, inode, size and times, so
//!                the same file is hashed once), whatever its device and
//!                inode
//! ```
//!
//! Any difference is [`RestoreError::Incompatible`], naming what differs;
//! the pool boots the function instead and says why. A snapshot of a newer
//! format is refused when loaded, by its number. Format 3 snapshots carry
//! no dependencies and are checked as before (device, inode, size, time).
//!
//! The clocks are the other half: [`time_offsets`] gives the offsets of the
//! copy's time namespace (`crate::sandbox::timens`).

use std::fs::File;

use snapshotter::capture::depends::{content_hash_with, cpu_features, host_clocks, vdso_image};
use snapshotter::snapshot::Snapshot;
use snapshotter::state::{Clocks, FileContent};

use super::fds::{Expect, FdPlan};
use super::RestoreError;

/// Checks this host's CPU and vDSO against the snapshot's.
pub fn check_host(snapshot: &Snapshot) -> Result<(), RestoreError> {
    let Some(depends) = &snapshot.depends else {
        return Ok(());
    };
    if let Some(what) = depends.cpu.missing_on(&cpu_features()) {
        return Err(RestoreError::Incompatible { what });
    }
    let vdso = vdso_image().map_err(|e| RestoreError::Incompatible {
        what: e.to_string(),
    })?;
    if let Some(what) = depends.vdso.differs_from(&vdso) {
        return Err(RestoreError::Incompatible { what });
    }
    Ok(())
}

/// Gives every file of `plan` whose content the copy uses (private
/// mappings, the executable) its recorded content, so it is matched by it.
pub fn attach(plan: &mut FdPlan, snapshot: &Snapshot) {
    let Some(depends) = &snapshot.depends else {
        return;
    };
    for wanted in &mut plan.wanted {
        if matches!(
            wanted.expect,
            Expect::File {
                unchanged: true,
                ..
            }
        ) {
            wanted.content = depends.file(&wanted.path).cloned();
        }
    }
}

fn hex(hash: &[u8; 32]) -> String {
    blake3::Hash::from(*hash).to_hex()[..16].to_string()
}

/// Checks that `file` has the recorded content (size, then blake3):
/// anything else is [`RestoreError::Incompatible`] naming the file, whether
/// it changed in place or another file is at its path (device and inode
/// cannot tell them apart: a new file often gets a freed inode's number).
/// `meta`: the file's `fstat`, which its caller just made (its size is
/// compared, and it keys the hash cache: one `fstat` per file, not two).
pub fn check_content(
    file: &File,
    meta: &std::fs::Metadata,
    content: &FileContent,
) -> Result<(), RestoreError> {
    use std::os::unix::fs::MetadataExt;
    let path = &content.path;
    let size = meta.size();
    if size != content.size {
        return Err(RestoreError::Incompatible {
            what: format!("{path}: {size} bytes here, {} at the capture", content.size),
        });
    }
    let (_, hash) = content_hash_with(file, meta, path, None).map_err(|e| RestoreError::Io {
        what: format!("hash {path}"),
        source: std::io::Error::other(e.to_string()),
    })?;
    if hash != content.blake3 {
        return Err(RestoreError::Incompatible {
            what: format!(
                "{path}: other content than at the capture (blake3 {}… here, {}… then)",
                hex(&hash),
                hex(&content.blake3)
            ),
        });
    }
    Ok(())
}

/// Hashes each of `paths` that is a regular file here into the content
/// hash cache [`check_content`] reads (by device, inode, size and times), so
/// that the first copy of a snapshot mapping them does not read them on its
/// restore's path: for a node that fetched a function's code or snapshot
/// and has not restored it yet (docs/cluster.md). Best effort: a file that
/// cannot be read is skipped. `cache_dir`: the store directory whose cache
/// file is appended to (`None`: the restorer's). Blocking; returns the
/// bytes hashed or found hashed.
pub fn warm_hashes(
    paths: impl IntoIterator<Item = std::path::PathBuf>,
    cache_dir: Option<&std::path::Path>,
) -> u64 {
    let mut bytes = 0;
    for path in paths {
        let Ok(file) = File::open(&path) else {
            continue;
        };
        let Ok(meta) = file.metadata() else {
            continue;
        };
        if !meta.is_file() {
            continue;
        }
        if let Ok((size, _)) = content_hash_with(&file, &meta, &path.to_string_lossy(), cache_dir) {
            bytes += size;
        }
    }
    bytes
}

/// The offsets the copy's time namespace needs so that its
/// `CLOCK_MONOTONIC` and `CLOCK_BOOTTIME` never read less than at the
/// capture: how far this host's clocks are behind the snapshot's (0 when
/// they are not, and for a snapshot without recorded clocks). A time
/// namespace's offsets count from the host's clocks, not from its
/// parent's: a restorer that runs in a time namespace itself compares
/// against the host's (`host_clocks`). They only move forward, so offsets
/// computed ahead (a spare sandbox) stay enough.
pub fn time_offsets(snapshot: &Snapshot) -> Result<Clocks, RestoreError> {
    let Some(depends) = &snapshot.depends else {
        return Ok(Clocks::default());
    };
    let now = host_clocks().map_err(|e| RestoreError::Io {
        what: "read this host's clocks".into(),
        source: std::io::Error::other(e.to_string()),
    })?;
    Ok(depends.clocks.offsets_from(&now))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmed_files_are_in_the_hash_cache_and_the_rest_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let lib = dir.path().join("libx.so");
        std::fs::write(&lib, vec![7u8; 100_000]).unwrap();
        let cache = dir.path().join("store");
        std::fs::create_dir(&cache).unwrap();
        let bytes = warm_hashes(
            [lib.clone(), dir.path().join("absent.so"), cache.clone()],
            Some(&cache),
        );
        assert_eq!(
            bytes, 100_000,
            "the file only, not the folder nor the absent one"
        );
        let text =
            std::fs::read_to_string(cache.join(snapshotter::capture::depends::HASH_CACHE_FILE))
                .unwrap();
        let want = blake3::hash(&vec![7u8; 100_000]).to_hex().to_string();
        assert!(text.lines().any(|l| l.ends_with(&want)), "{text}");
    }
}
