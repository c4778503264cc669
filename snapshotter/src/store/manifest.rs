//! The versioned container every snapshot manifest (and every gc root) is
//! stored in.
//!
//! ```text
//! offset  size  field
//! 0       8     magic "THAWSNAP"
//! 8       4     format version, u32 little endian (MANIFEST_VERSION)
//! 12      4     reserved, 0
//! 16      8     payload length in bytes, u64 little endian
//! 24      32    blake3 hash of the payload
//! 56      len   payload: the value, bincode 1 (fixed-int little endian)
//! ```
//!
//! Nothing follows the payload. The file is written atomically (temporary
//! file, fsync, rename, fsync of the directory), so a reader sees a whole old
//! manifest or a whole new one. Loading checks, in order: the magic, the
//! version, the payload length against a limit (default
//! [`DEFAULT_MANIFEST_LIMIT`], so a corrupt length never allocates gigabytes),
//! that the file holds exactly header + payload, the checksum, and only then
//! decodes. bincode is not self-describing: any change to a stored type must
//! bump [`MANIFEST_VERSION`].

use std::borrow::Cow;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::atomic::write_atomic;

/// Magic bytes at the start of a manifest.
pub const MANIFEST_MAGIC: [u8; 8] = *b"THAWSNAP";
/// Format version written, and the only one read.
pub const MANIFEST_VERSION: u32 = 1;
/// Size of the fixed header before the payload.
pub const MANIFEST_HEADER_LEN: usize = 56;
/// Largest payload [`read_manifest`] accepts.
pub const DEFAULT_MANIFEST_LIMIT: u64 = 256 << 20;

/// Error writing a manifest.
#[derive(Debug, thiserror::Error)]
pub enum WriteManifestError {
    /// The value could not be encoded.
    #[error("cannot encode manifest {path}: {source}")]
    Encode {
        /// Target file.
        path: PathBuf,
        /// Encoder error.
        source: bincode::Error,
    },
    /// Writing or syncing failed.
    #[error("cannot write manifest {path}: {source}")]
    Io {
        /// Target file.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
}

/// Error reading a manifest; every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum ReadManifestError {
    /// Opening or reading failed.
    #[error("cannot read manifest {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The file does not start with `THAWSNAP`.
    #[error("manifest {path}: bad magic {found:02x?}, not a thaw manifest")]
    BadMagic {
        /// The file.
        path: PathBuf,
        /// The first 8 bytes found.
        found: [u8; 8],
    },
    /// Written by an incompatible version.
    #[error(
        "manifest {path}: unsupported format version {found} (this build reads {MANIFEST_VERSION})"
    )]
    UnsupportedVersion {
        /// The file.
        path: PathBuf,
        /// The version in the header.
        found: u32,
    },
    /// The payload is larger than the limit.
    #[error("manifest {path}: payload of {len} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Length in the header.
        len: u64,
        /// The limit.
        limit: u64,
    },
    /// The file is shorter than its header says.
    #[error("manifest {path}: truncated, expected {expected} bytes, found {found}")]
    Truncated {
        /// The file.
        path: PathBuf,
        /// Header + payload length.
        expected: u64,
        /// Actual length.
        found: u64,
    },
    /// Bytes follow the payload.
    #[error("manifest {path}: {extra} unexpected bytes after the payload")]
    TrailingBytes {
        /// The file.
        path: PathBuf,
        /// How many.
        extra: u64,
    },
    /// The payload does not match its checksum.
    #[error("manifest {path}: checksum mismatch (payload corrupt)")]
    ChecksumMismatch {
        /// The file.
        path: PathBuf,
    },
    /// The checksum matched but the payload does not decode as the type.
    #[error("manifest {path}: cannot decode payload: {source}")]
    Decode {
        /// The file.
        path: PathBuf,
        /// Decoder error.
        source: bincode::Error,
    },
}

/// Encodes `value` into the container format in memory.
pub fn encode_manifest<T: Serialize>(value: &T) -> Result<Vec<u8>, bincode::Error> {
    let payload = bincode::serialize(value)?;
    let mut out = Vec::with_capacity(MANIFEST_HEADER_LEN + payload.len());
    out.extend_from_slice(&MANIFEST_MAGIC);
    out.extend_from_slice(&MANIFEST_VERSION.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(blake3::hash(&payload).as_bytes());
    out.extend_from_slice(&payload);
    Ok(out)
}

/// Writes `value` to `path` atomically and durably.
pub fn write_manifest<T: Serialize>(path: &Path, value: &T) -> Result<(), WriteManifestError> {
    let bytes = encode_manifest(value).map_err(|source| WriteManifestError::Encode {
        path: path.to_path_buf(),
        source,
    })?;
    write_atomic(path, &[&bytes]).map_err(|source| WriteManifestError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Reads a manifest with the default size limit.
pub fn read_manifest<T: DeserializeOwned>(path: &Path) -> Result<T, ReadManifestError> {
    read_manifest_with_limit(path, DEFAULT_MANIFEST_LIMIT)
}

/// Reads a manifest whose payload may be at most `limit` bytes.
pub fn read_manifest_with_limit<T: DeserializeOwned>(
    path: &Path,
    limit: u64,
) -> Result<T, ReadManifestError> {
    read_checked_manifest(path, limit)?.decode()
}

/// A manifest whose container passed every check (magic, version, length,
/// checksum): its payload can be decoded as one type, or as several in turn
/// (a format field first, then the whole value), without reading or hashing
/// it again.
#[derive(Debug)]
pub struct CheckedManifest<'a> {
    payload: Cow<'a, [u8]>,
    path: PathBuf,
}

impl CheckedManifest<'_> {
    /// Decodes the payload as a `T` (bincode limited to the payload's own
    /// length: a length prefix inside it can never make the decoder
    /// reserve more than the file holds).
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, ReadManifestError> {
        decode_bincode(&self.payload).map_err(|source| ReadManifestError::Decode {
            path: self.path.clone(),
            source,
        })
    }
}

/// Reads the manifest at `path` (a payload of at most `limit` bytes) and
/// checks its container, in the order the module doc gives, reading the
/// file once.
pub fn read_checked_manifest(
    path: &Path,
    limit: u64,
) -> Result<CheckedManifest<'static>, ReadManifestError> {
    let p = || path.to_path_buf();
    let io = |source| ReadManifestError::Io { path: p(), source };
    let mut file = std::fs::File::open(path).map_err(io)?;
    let file_len = file.metadata().map_err(io)?.len();
    let mut header = [0u8; MANIFEST_HEADER_LEN];
    let got = read_up_to(&mut file, &mut header).map_err(io)?;
    let len = check_header(&header[..got], file_len, path, limit)?;
    let mut payload = vec![0u8; len as usize];
    let got = read_up_to(&mut file, &mut payload).map_err(io)?;
    if got < payload.len() {
        return Err(ReadManifestError::Truncated {
            path: p(),
            expected: MANIFEST_HEADER_LEN as u64 + len,
            found: MANIFEST_HEADER_LEN as u64 + got as u64,
        });
    }
    check_checksum(&header, &payload, path)?;
    Ok(CheckedManifest {
        payload: Cow::Owned(payload),
        path: p(),
    })
}

/// Decodes a whole manifest held in memory (`path` only names it in
/// errors), with the same checks in the same order as [`read_manifest_with_limit`].
/// The pure entry point the fuzz targets drive.
pub fn decode_manifest<T: DeserializeOwned>(
    bytes: &[u8],
    path: &Path,
    limit: u64,
) -> Result<T, ReadManifestError> {
    check_manifest(bytes, path, limit)?.decode()
}

/// Checks the container of a whole manifest held in memory (`path` only
/// names it in errors), as [`read_checked_manifest`] does.
pub fn check_manifest<'a>(
    bytes: &'a [u8],
    path: &Path,
    limit: u64,
) -> Result<CheckedManifest<'a>, ReadManifestError> {
    let head = &bytes[..bytes.len().min(MANIFEST_HEADER_LEN)];
    check_header(head, bytes.len() as u64, path, limit)?;
    let payload = &bytes[MANIFEST_HEADER_LEN..];
    check_checksum(head, payload, path)?;
    Ok(CheckedManifest {
        payload: Cow::Borrowed(payload),
        path: path.to_path_buf(),
    })
}

/// Checks the first (up to [`MANIFEST_HEADER_LEN`]) bytes of a manifest of
/// `file_len` bytes: magic, version, payload length against `limit` and
/// against the file's length. Returns the payload length.
fn check_header(
    header: &[u8],
    file_len: u64,
    path: &Path,
    limit: u64,
) -> Result<u64, ReadManifestError> {
    let p = || path.to_path_buf();
    if header.len() >= 8 && header[..8] != MANIFEST_MAGIC {
        let mut found = [0u8; 8];
        found.copy_from_slice(&header[..8]);
        return Err(ReadManifestError::BadMagic { path: p(), found });
    }
    if header.len() < MANIFEST_HEADER_LEN {
        return Err(ReadManifestError::Truncated {
            path: p(),
            expected: MANIFEST_HEADER_LEN as u64,
            found: header.len() as u64,
        });
    }
    let version = u32::from_le_bytes(header[8..12].try_into().expect("4 bytes"));
    if version != MANIFEST_VERSION {
        return Err(ReadManifestError::UnsupportedVersion {
            path: p(),
            found: version,
        });
    }
    let len = u64::from_le_bytes(header[16..24].try_into().expect("8 bytes"));
    if len > limit {
        return Err(ReadManifestError::TooLarge {
            path: p(),
            len,
            limit,
        });
    }
    // `len` is at most `limit`, which no caller sets near u64::MAX; saturate
    // anyway so that a huge limit cannot wrap the sum.
    let expected = (MANIFEST_HEADER_LEN as u64).saturating_add(len);
    if file_len < expected {
        return Err(ReadManifestError::Truncated {
            path: p(),
            expected,
            found: file_len,
        });
    }
    if file_len > expected {
        return Err(ReadManifestError::TrailingBytes {
            path: p(),
            extra: file_len - expected,
        });
    }
    Ok(len)
}

/// Checks the payload against the header's checksum.
fn check_checksum(header: &[u8], payload: &[u8], path: &Path) -> Result<(), ReadManifestError> {
    if blake3::hash(payload).as_bytes() != &header[24..56] {
        return Err(ReadManifestError::ChecksumMismatch {
            path: path.to_path_buf(),
        });
    }
    Ok(())
}

/// bincode with the options `bincode::serialize` wrote with (fixed-size
/// little-endian integers, trailing bytes allowed as `bincode::deserialize`
/// allowed them), plus a limit of the payload's length.
fn decode_bincode<T: DeserializeOwned>(payload: &[u8]) -> Result<T, bincode::Error> {
    use bincode::Options;
    bincode::DefaultOptions::new()
        .with_fixint_encoding()
        .allow_trailing_bytes()
        .with_limit(payload.len() as u64)
        .deserialize(payload)
}

fn read_up_to(file: &mut std::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match file.read(&mut buf[done..]) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A length prefix inside the payload larger than the payload is a
    /// decode error, never an allocation of that size.
    #[test]
    fn lengths_inside_the_payload_are_bounded_by_it() {
        let mut payload = (1u64 << 40).to_le_bytes().to_vec();
        payload.extend_from_slice(b"short");
        let mut bytes = encode_manifest(&()).unwrap();
        bytes.truncate(MANIFEST_HEADER_LEN);
        bytes[16..24].copy_from_slice(&(payload.len() as u64).to_le_bytes());
        bytes[24..56].copy_from_slice(blake3::hash(&payload).as_bytes());
        bytes.extend_from_slice(&payload);
        let err = decode_manifest::<String>(&bytes, Path::new("m"), 1 << 20).unwrap_err();
        assert!(matches!(err, ReadManifestError::Decode { .. }), "{err}");
        let err = decode_manifest::<Vec<u64>>(&bytes, Path::new("m"), 1 << 20).unwrap_err();
        assert!(matches!(err, ReadManifestError::Decode { .. }), "{err}");
    }

    #[test]
    fn round_trip_and_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m");
        let value = (42u64, String::from("state"), vec![1u8, 2, 3]);
        write_manifest(&path, &value).unwrap();
        let back: (u64, String, Vec<u8>) = read_manifest(&path).unwrap();
        assert_eq!(back, value);

        let good = std::fs::read(&path).unwrap();

        let mut bad = good.clone();
        bad[0] = b'X';
        std::fs::write(&path, &bad).unwrap();
        let e = read_manifest::<(u64, String, Vec<u8>)>(&path).unwrap_err();
        assert!(matches!(e, ReadManifestError::BadMagic { .. }), "{e}");

        let mut bad = good.clone();
        bad[8] = 9;
        std::fs::write(&path, &bad).unwrap();
        let e = read_manifest::<(u64, String, Vec<u8>)>(&path).unwrap_err();
        assert!(
            e.to_string().contains("unsupported format version 9"),
            "{e}"
        );

        let mut bad = good.clone();
        *bad.last_mut().unwrap() ^= 1;
        std::fs::write(&path, &bad).unwrap();
        let e = read_manifest::<(u64, String, Vec<u8>)>(&path).unwrap_err();
        assert!(e.to_string().contains("checksum mismatch"), "{e}");

        std::fs::write(&path, &good[..good.len() - 1]).unwrap();
        let e = read_manifest::<(u64, String, Vec<u8>)>(&path).unwrap_err();
        assert!(e.to_string().contains("truncated"), "{e}");

        std::fs::write(&path, &good).unwrap();
        let e = read_manifest_with_limit::<(u64, String, Vec<u8>)>(&path, 4).unwrap_err();
        assert!(e.to_string().contains("exceeds the limit"), "{e}");
    }
}
