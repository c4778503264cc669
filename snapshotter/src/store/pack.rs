//! Pack files: immutable files of raw 4 KiB page objects.
//!
//! ```text
//! packs/pack-<id>.pack          (id: decimal u32)
//! offset          size   field
//! 0               8      magic "THAWPACK"
//! 8               4      format version, u32 LE (PACK_VERSION)
//! 12              4      pack id, u32 LE (same as in the file name)
//! 16              8      object count, u64 LE
//! 24              4072   zeros: the header fills one page
//! 4096 * (1 + i)  4096   object i (slot i): the raw page, key = blake3(page)
//! ```
//!
//! Objects are page-aligned so a page server can hand a slice of the mapped
//! pack straight to `UFFDIO_COPY`. A pack carries no hashes: the index says
//! which hash lives in which slot, and every read rehashes the page.
//!
//! A pack is written once, by one writer, under the name
//! `packs/.pack-<id>.pack.tmp`; it is fsynced, renamed to its final name and
//! only then listed in the index. It is never modified afterwards (gc writes
//! new packs and deletes old ones), which is what makes it safe to `mmap`
//! them for reading while writers and gc run: an unlinked pack stays readable
//! through existing mappings.

use std::fs::File;
use std::io::IoSlice;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use super::atomic::sync_dir;
use super::failpoint;
use super::hash::PAGE_SIZE;

/// Magic bytes at the start of a pack.
pub const PACK_MAGIC: [u8; 8] = *b"THAWPACK";
/// Pack format version.
pub const PACK_VERSION: u32 = 1;
/// Length of the pack header (one page).
pub const PACK_HEADER_LEN: u64 = PAGE_SIZE as u64;
/// Most iovecs passed to one `pwritev` (the kernel's `IOV_MAX`).
const IOV_MAX: usize = 1024;

/// File name of pack `id`.
pub fn pack_file_name(id: u32) -> String {
    format!("pack-{id}.pack")
}

/// Parses a pack file name back into its id.
pub fn parse_pack_file_name(name: &str) -> Option<u32> {
    name.strip_prefix("pack-")?
        .strip_suffix(".pack")?
        .parse()
        .ok()
}

/// Byte offset of object `slot` in a pack.
pub fn slot_offset(slot: u32) -> u64 {
    PACK_HEADER_LEN + slot as u64 * PAGE_SIZE as u64
}

/// Checks the header at the start of `bytes`, a pack that should be pack
/// `id` and is `len` bytes long: magic, version, id, and that `len` is exactly
/// what the object count needs. Returns the object count; `Err(what)` names
/// the first check that failed. The pure entry point the fuzz targets drive.
pub fn check_pack_header(bytes: &[u8], id: u32, len: u64) -> Result<u64, String> {
    if bytes.len() < 24 || len < PACK_HEADER_LEN {
        return Err(format!("{len} bytes, shorter than its header"));
    }
    if bytes[..8] != PACK_MAGIC {
        return Err("bad magic".into());
    }
    let version = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
    if version != PACK_VERSION {
        return Err(format!("unsupported version {version}"));
    }
    let found_id = u32::from_le_bytes(bytes[12..16].try_into().expect("4 bytes"));
    if found_id != id {
        return Err(format!("header says pack {found_id}"));
    }
    let count = u64::from_le_bytes(bytes[16..24].try_into().expect("8 bytes"));
    // A corrupt count must not wrap the product into a length that matches
    // (a pack of 2^52 + 1 objects "needs" 8 KiB in wrapping arithmetic).
    let expected = count
        .checked_mul(PAGE_SIZE as u64)
        .and_then(|b| b.checked_add(PACK_HEADER_LEN));
    match expected {
        Some(expected) if expected == len => Ok(count),
        Some(expected) => Err(format!("{len} bytes, but {count} objects need {expected}")),
        None => Err(format!(
            "{len} bytes, but {count} objects need more than 2^64"
        )),
    }
}

/// Error opening a pack for reading.
#[derive(Debug, thiserror::Error)]
pub enum OpenPackError {
    /// The file could not be opened or mapped.
    #[error("cannot open pack {path}: {source}")]
    Io {
        /// The pack.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The header is wrong.
    #[error("pack {path} is corrupt: {what}")]
    BadHeader {
        /// The pack.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
}

/// A pack mapped read-only.
#[derive(Debug)]
pub struct Pack {
    id: u32,
    path: PathBuf,
    map: Mmap,
    count: u64,
}

impl Pack {
    /// Opens and maps pack `id` in `dir` and checks its header.
    pub fn open(dir: &Path, id: u32) -> Result<Pack, OpenPackError> {
        let path = dir.join(pack_file_name(id));
        let file = File::open(&path).map_err(|source| OpenPackError::Io {
            path: path.clone(),
            source,
        })?;
        let len = file
            .metadata()
            .map_err(|source| OpenPackError::Io {
                path: path.clone(),
                source,
            })?
            .len();
        let bad = |what: String| OpenPackError::BadHeader {
            path: path.clone(),
            what,
        };
        if len < PACK_HEADER_LEN {
            return Err(bad(format!("{len} bytes, shorter than its header")));
        }
        // SAFETY: packs are immutable once renamed to their final name (see the
        // module doc); nothing in thaw writes to a mapped pack, and the mapping
        // is read-only, so the slice we hand out cannot change under us except
        // by outside tampering, which every read detects by rehashing.
        let map = unsafe { Mmap::map(&file) }.map_err(|source| OpenPackError::Io {
            path: path.clone(),
            source,
        })?;
        let count = check_pack_header(&map, id, len).map_err(bad)?;
        Ok(Pack {
            id,
            path,
            map,
            count,
        })
    }

    /// The pack id.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The pack file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Number of objects.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The raw, unverified bytes of object `slot`, if the pack has it.
    pub fn object(&self, slot: u32) -> Option<&[u8]> {
        if slot as u64 >= self.count {
            return None;
        }
        let off = slot_offset(slot) as usize;
        Some(&self.map[off..off + PAGE_SIZE])
    }
}

/// Error writing a pack.
#[derive(Debug, thiserror::Error)]
#[error("cannot write pack {path}: {source}")]
pub struct WritePackError {
    /// The pack being written.
    pub path: PathBuf,
    /// Underlying error.
    pub source: std::io::Error,
}

/// A pack being written under its temporary name.
///
/// Small appends are gathered in a buffer and written in pieces of
/// [`WRITE_BUFFER`] bytes (capture hands over many short runs of pages; one
/// syscall per run cost more than hashing); large appends go straight from
/// the caller's memory with `pwritev`. After each write, writeback of the
/// range is started (`sync_file_range`), so that the fsync at commit finds
/// most of the pack already on its way to the disk.
///
/// Dropping it without [`PackWriter::finish`] removes the temporary file.
#[derive(Debug)]
pub struct PackWriter {
    id: u32,
    dir: PathBuf,
    tmp: PathBuf,
    file: File,
    /// Objects appended, buffered ones included.
    count: u32,
    /// Buffered pages, the first of which is slot `buffered_from`.
    buf: Vec<u8>,
    buffered_from: u32,
    finished: bool,
}

/// Bytes gathered before a write.
pub const WRITE_BUFFER: usize = 4 << 20;
/// Appends of at least this many pages skip the buffer.
const DIRECT_PAGES: usize = 256;

impl PackWriter {
    /// Starts pack `id` in `dir`.
    pub fn create(dir: &Path, id: u32) -> Result<PackWriter, WritePackError> {
        let tmp = dir.join(format!(".{}.tmp", pack_file_name(id)));
        let err = |source| WritePackError {
            path: tmp.clone(),
            source,
        };
        let file = super::atomic::private_file()
            .read(true)
            .open(&tmp)
            .map_err(err)?;
        Ok(PackWriter {
            id,
            dir: dir.to_path_buf(),
            tmp,
            file,
            count: 0,
            buf: Vec::new(),
            buffered_from: 0,
            finished: false,
        })
    }

    /// The pack id.
    pub fn id(&self) -> u32 {
        self.id
    }

    fn err(&self, source: std::io::Error) -> WritePackError {
        WritePackError {
            path: self.tmp.clone(),
            source,
        }
    }

    /// Appends pages (each exactly [`PAGE_SIZE`] bytes); returns the slot of
    /// the first one. The `io_uring` alternative to these writes measured no
    /// faster (see docs/store.md).
    pub fn append(&mut self, pages: &[&[u8]]) -> Result<u32, WritePackError> {
        let first = self.count;
        if pages.len() >= DIRECT_PAGES {
            self.flush()?;
            let start = slot_offset(first);
            for (i, batch) in pages.chunks(IOV_MAX).enumerate() {
                let mut iov: Vec<IoSlice<'_>> = batch
                    .iter()
                    .map(|p| {
                        debug_assert_eq!(p.len(), PAGE_SIZE);
                        IoSlice::new(p)
                    })
                    .collect();
                let at = start + (i * IOV_MAX * PAGE_SIZE) as u64;
                write_vectored_at(&self.file, &mut iov, at).map_err(|e| self.err(e))?;
            }
            self.count += pages.len() as u32;
            self.buffered_from = self.count;
            self.start_writeback(start, slot_offset(self.count));
        } else {
            if self.buf.capacity() == 0 {
                self.buf.reserve_exact(WRITE_BUFFER);
            }
            for page in pages {
                debug_assert_eq!(page.len(), PAGE_SIZE);
                self.buf.extend_from_slice(page);
                self.count += 1;
                if self.buf.len() >= WRITE_BUFFER {
                    self.flush()?;
                }
            }
        }
        failpoint::hit("pack-partial");
        Ok(first)
    }

    /// Writes the buffered pages.
    fn flush(&mut self) -> Result<(), WritePackError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let start = slot_offset(self.buffered_from);
        self.file
            .write_all_at(&self.buf, start)
            .map_err(|e| self.err(e))?;
        self.buf.clear();
        self.buffered_from = self.count;
        self.start_writeback(start, slot_offset(self.count));
        Ok(())
    }

    /// Starts writeback of `[start, end)` without waiting for it.
    fn start_writeback(&self, start: u64, end: u64) {
        // SAFETY: plain syscall on our open descriptor; no memory is passed.
        let rc = unsafe {
            libc::sync_file_range(
                self.file.as_raw_fd(),
                start as i64,
                (end - start) as i64,
                libc::SYNC_FILE_RANGE_WRITE,
            )
        };
        if rc != 0 {
            // Only a hint: the fsync at commit is what makes the pack durable.
            tracing::debug!(err = %std::io::Error::last_os_error(), "sync_file_range failed");
        }
    }

    /// Writes what is buffered and the header, fsyncs, and renames the pack
    /// to its final name (fsyncing the directory). Returns the final path.
    pub fn finish(mut self) -> Result<PathBuf, WritePackError> {
        self.flush()?;
        let err = |path: &Path, source| WritePackError {
            path: path.to_path_buf(),
            source,
        };
        let mut header = vec![0u8; PACK_HEADER_LEN as usize];
        header[..8].copy_from_slice(&PACK_MAGIC);
        header[8..12].copy_from_slice(&PACK_VERSION.to_le_bytes());
        header[12..16].copy_from_slice(&self.id.to_le_bytes());
        header[16..24].copy_from_slice(&(self.count as u64).to_le_bytes());
        self.file
            .write_all_at(&header, 0)
            .map_err(|e| err(&self.tmp, e))?;
        self.file.sync_all().map_err(|e| err(&self.tmp, e))?;
        failpoint::hit("pack-synced");
        let dest = self.dir.join(pack_file_name(self.id));
        std::fs::rename(&self.tmp, &dest).map_err(|e| err(&dest, e))?;
        self.finished = true;
        failpoint::hit("pack-renamed");
        sync_dir(&self.dir).map_err(|e| err(&self.dir, e))?;
        Ok(dest)
    }
}

/// `pwritev` until everything is written.
pub(crate) fn write_vectored_at(
    file: &File,
    mut iov: &mut [IoSlice<'_>],
    mut offset: u64,
) -> std::io::Result<()> {
    while !iov.is_empty() {
        let n = nix::sys::uio::pwritev(file, iov, offset as i64)?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        offset += n as u64;
        IoSlice::advance_slices(&mut iov, n);
    }
    Ok(())
}

impl Drop for PackWriter {
    fn drop(&mut self) {
        if !self.finished {
            if let Err(err) = std::fs::remove_file(&self.tmp) {
                tracing::warn!(?err, path = %self.tmp.display(), "cannot remove abandoned pack");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(id: u32, count: u64) -> Vec<u8> {
        let mut h = vec![0u8; 24];
        h[..8].copy_from_slice(&PACK_MAGIC);
        h[8..12].copy_from_slice(&PACK_VERSION.to_le_bytes());
        h[12..16].copy_from_slice(&id.to_le_bytes());
        h[16..24].copy_from_slice(&count.to_le_bytes());
        h
    }

    #[test]
    fn header_checks() {
        assert_eq!(check_pack_header(&header(3, 2), 3, 3 * 4096), Ok(2));
        assert_eq!(
            check_pack_header(&header(3, 2), 4, 3 * 4096).unwrap_err(),
            "header says pack 3"
        );
        assert!(check_pack_header(&header(3, 2), 3, 4096)
            .unwrap_err()
            .contains("2 objects need 12288"));
        assert!(check_pack_header(&header(3, 2)[..23], 3, 3 * 4096).is_err());
    }

    /// Seen while writing the store_pack fuzz target: a count whose byte
    /// size wraps around 2^64 matched a small file in release builds (and
    /// overflowed, a panic, in debug builds).
    #[test]
    fn a_count_that_wraps_is_refused() {
        let count = (1u64 << 52) + 1;
        let err = check_pack_header(&header(0, count), 0, 2 * 4096).unwrap_err();
        assert!(err.contains("more than 2^64"), "{err}");
        let err = check_pack_header(&header(0, u64::MAX), 0, 4096).unwrap_err();
        assert!(err.contains("more than 2^64"), "{err}");
    }
}
