//! A snapshot's recorded working set: the pages its first invocation after
//! a restore touched, in first-touch order, kept next to the snapshot so
//! that later copies (and later server runs) prefetch them in `uffd` mode
//! ([`super::RestoreOptions::prefetch`]).
//!
//! ```text
//! <snapshots_dir>/<id>.workingset
//!   0   8  magic "THAWWSET"
//!   8   4  format version (u32 LE, 1)
//!  12   4  reserved (0)
//!  16   8  page count n (u64 LE, at most MAX_PAGES)
//!  24  8n  saved page addresses (u64 LE), first-touch order
//!  ..  32  blake3 of every byte before it
//! ```
//!
//! Written atomically (temporary file, fsync, rename, fsync of the
//! directory). A file that fails any check is reported as corrupt and never
//! used: prefetching the wrong pages would only cost time, but a list that
//! is not what was recorded is not trusted either.

use std::io::Write;
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 8] = b"THAWWSET";
const VERSION: u32 = 1;
const HEADER: usize = 24;
const HASH: usize = 32;
/// Most pages a working set may list (4 GiB of memory).
pub const MAX_PAGES: u64 = 1 << 20;

/// Why a working set could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum WorkingSetError {
    /// Reading or writing the file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not a working set this version wrote intact.
    #[error("{path}: corrupt working set ({why})")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What check failed.
        why: String,
    },
}

/// The working-set file of snapshot `id`.
pub fn path(snapshots_dir: &Path, id: &str) -> PathBuf {
    snapshots_dir.join(format!("{id}.workingset"))
}

/// Encodes `pages` (see the module doc).
pub fn encode(pages: &[u64]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + pages.len() * 8 + HASH);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&(pages.len() as u64).to_le_bytes());
    for p in pages {
        out.extend_from_slice(&p.to_le_bytes());
    }
    let hash = blake3::hash(&out);
    out.extend_from_slice(hash.as_bytes());
    out
}

/// Decodes a working set, checking magic, version, length and checksum.
pub fn decode(bytes: &[u8], path: &Path) -> Result<Vec<u64>, WorkingSetError> {
    let corrupt = |why: &str| WorkingSetError::Corrupt {
        path: path.to_path_buf(),
        why: why.to_string(),
    };
    if bytes.len() < HEADER + HASH {
        return Err(corrupt("too short"));
    }
    if &bytes[..8] != MAGIC {
        return Err(corrupt("bad magic"));
    }
    let version = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
    if version != VERSION {
        return Err(corrupt(&format!("unknown version {version}")));
    }
    let count = u64::from_le_bytes(bytes[16..24].try_into().expect("8 bytes"));
    if count > MAX_PAGES {
        return Err(corrupt(&format!("{count} pages is more than {MAX_PAGES}")));
    }
    let body = HEADER + count as usize * 8;
    if bytes.len() != body + HASH {
        return Err(corrupt("length does not match the page count"));
    }
    if blake3::hash(&bytes[..body]).as_bytes() != &bytes[body..] {
        return Err(corrupt("checksum mismatch"));
    }
    Ok(bytes[HEADER..body]
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
        .collect())
}

/// Reads the working set at `path`: `Ok(None)` when there is none.
pub fn load(path: &Path) -> Result<Option<Vec<u64>>, WorkingSetError> {
    match std::fs::read(path) {
        Ok(bytes) => decode(&bytes, path).map(Some),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(WorkingSetError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Writes `pages` to `path` atomically and durably.
pub fn save(path: &Path, pages: &[u64]) -> Result<(), WorkingSetError> {
    let io = |source| WorkingSetError::Io {
        path: path.to_path_buf(),
        source,
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    // Private to the server, like everything in the data directory.
    let mut file = std::os::unix::fs::OpenOptionsExt::mode(
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true),
        0o600,
    )
    .open(&tmp)
    .map_err(io)?;
    file.write_all(&encode(pages)).map_err(io)?;
    file.sync_all().map_err(io)?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(io)?;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_every_corruption_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = path(dir.path(), "f-v1-00");
        assert!(load(&p).unwrap().is_none());
        let pages = vec![0x7f00_0000_1000, 0x5555_0000, 0x7f00_0000_0000];
        save(&p, &pages).unwrap();
        assert_eq!(load(&p).unwrap().unwrap(), pages);

        let good = std::fs::read(&p).unwrap();
        for (at, what) in [(0, "bad magic"), (30, "checksum"), (8, "version")] {
            let mut bad = good.clone();
            bad[at] ^= 0xff;
            std::fs::write(&p, &bad).unwrap();
            let err = load(&p).unwrap_err().to_string();
            assert!(err.contains(what), "{err}");
        }
        std::fs::write(&p, &good[..good.len() - 1]).unwrap();
        assert!(load(&p).unwrap_err().to_string().contains("length"));
        std::fs::write(&p, b"x").unwrap();
        assert!(load(&p).unwrap_err().to_string().contains("too short"));
    }
}
