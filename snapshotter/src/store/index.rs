//! The index: which pack and slot holds each object, as an append-only log of
//! checksummed records.
//!
//! ```text
//! <store>/index
//! header, 16 bytes:
//!   0    8       magic "THAWIDX\0"
//!   8    4       format version, u32 LE (INDEX_VERSION)
//!   12   4       reserved, 0
//! then records, back to back:
//!   0    4       record magic "IREC"
//!   4    4       pack id, u32 LE
//!   8    4       object count n, u32 LE
//!   12   4       reserved, 0
//!   16   32 * n  hashes: hash i is the object in slot i of the pack
//!   16+32n  32   blake3 of bytes [0, 16 + 32n) of this record
//! ```
//!
//! One record lists all objects of one pack; a pack appears in one record
//! only. A writer appends a record (then fsyncs) only after the pack it names
//! is durable under its final name, so every indexed object is on disk.
//!
//! A crash while appending leaves a *torn tail*: bytes after the last good
//! record that do not form a whole record with a valid checksum. Readers stop
//! at the last good record; the next writer, holding the store lock,
//! truncates the torn tail before appending. A tail that cannot be a torn
//! append (more bytes than the record it starts announces, and not all zeros)
//! is reported as corruption and no writer will truncate it.
//!
//! Garbage collection replaces the whole file atomically (temporary file,
//! fsync, rename, fsync of the directory); readers notice the new inode and
//! reload.

use super::hash::PageHash;

/// Magic bytes of the index header.
pub const INDEX_MAGIC: [u8; 8] = *b"THAWIDX\0";
/// Index format version.
pub const INDEX_VERSION: u32 = 1;
/// Length of the index header.
pub const INDEX_HEADER_LEN: u64 = 16;
/// Magic bytes of one record.
pub const RECORD_MAGIC: [u8; 4] = *b"IREC";
const RECORD_FIXED: usize = 16;
const RECORD_SUM: usize = 32;

/// One record: the objects of one pack in slot order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexRecord {
    /// The pack.
    pub pack: u32,
    /// Hash of the object in each slot.
    pub hashes: Vec<PageHash>,
}

/// What follows the last good record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tail {
    /// Nothing: the log ends with a good record.
    Clean,
    /// An interrupted append (safe to truncate under the lock).
    Torn {
        /// Offset of the first bad byte.
        offset: u64,
        /// Bytes from there to the end.
        len: u64,
    },
    /// Bytes that no crash of a writer can produce.
    Corrupt {
        /// Offset of the first bad byte.
        offset: u64,
        /// Bytes from there to the end.
        len: u64,
    },
}

/// The result of parsing part of the log.
#[derive(Debug)]
pub struct ParsedLog {
    /// Good records, in order.
    pub records: Vec<IndexRecord>,
    /// File offset just after the last good record.
    pub good_end: u64,
    /// What follows.
    pub tail: Tail,
}

/// Error in the index header.
#[derive(Debug, thiserror::Error)]
#[error("index {path} is corrupt: {what}")]
pub struct IndexHeaderError {
    /// The index file.
    pub path: std::path::PathBuf,
    /// What is wrong.
    pub what: String,
}

/// The 16 header bytes.
pub fn encode_header() -> [u8; INDEX_HEADER_LEN as usize] {
    let mut h = [0u8; INDEX_HEADER_LEN as usize];
    h[..8].copy_from_slice(&INDEX_MAGIC);
    h[8..12].copy_from_slice(&INDEX_VERSION.to_le_bytes());
    h
}

/// Checks the header at the start of `bytes`; `Err(what)` if wrong.
pub fn check_header(bytes: &[u8]) -> Result<(), String> {
    if bytes.len() < INDEX_HEADER_LEN as usize {
        return Err(format!("{} bytes, shorter than its header", bytes.len()));
    }
    if bytes[..8] != INDEX_MAGIC {
        return Err("bad magic".into());
    }
    let version = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
    if version != INDEX_VERSION {
        return Err(format!("unsupported version {version}"));
    }
    Ok(())
}

/// Encodes one record.
pub fn encode_record(pack: u32, hashes: &[PageHash]) -> Vec<u8> {
    let mut out = Vec::with_capacity(RECORD_FIXED + 32 * hashes.len() + RECORD_SUM);
    out.extend_from_slice(&RECORD_MAGIC);
    out.extend_from_slice(&pack.to_le_bytes());
    out.extend_from_slice(&(hashes.len() as u32).to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    for h in hashes {
        out.extend_from_slice(h.as_bytes());
    }
    let sum = blake3::hash(&out);
    out.extend_from_slice(sum.as_bytes());
    out
}

/// Parses records from `bytes`, which start at file offset `start` (at or
/// after the header).
pub fn parse_records(bytes: &[u8], start: u64) -> ParsedLog {
    let mut records = Vec::new();
    let mut pos = 0usize;
    let tail = loop {
        let rest = &bytes[pos..];
        if rest.is_empty() {
            break Tail::Clean;
        }
        let offset = start + pos as u64;
        let len = rest.len() as u64;
        if rest.len() < RECORD_FIXED {
            break Tail::Torn { offset, len };
        }
        let count = u32::from_le_bytes(rest[8..12].try_into().expect("4 bytes")) as usize;
        let need = RECORD_FIXED + 32 * count + RECORD_SUM;
        let magic_ok = rest[..4] == RECORD_MAGIC;
        let whole = magic_ok && rest.len() >= need;
        if whole
            && blake3::hash(&rest[..need - RECORD_SUM]).as_bytes()[..]
                == rest[need - RECORD_SUM..need]
        {
            let pack = u32::from_le_bytes(rest[4..8].try_into().expect("4 bytes"));
            let hashes = rest[RECORD_FIXED..need - RECORD_SUM]
                .chunks_exact(32)
                .map(|c| PageHash(c.try_into().expect("32 bytes")))
                .collect();
            records.push(IndexRecord { pack, hashes });
            pos += need;
            continue;
        }
        // A crash mid-append leaves part of one record, or a record whose
        // blocks were allocated but never written (zeros).
        let torn = (magic_ok && rest.len() <= need) || rest.iter().all(|&b| b == 0);
        break if torn {
            Tail::Torn { offset, len }
        } else {
            Tail::Corrupt { offset, len }
        };
    };
    ParsedLog {
        records,
        good_end: start + pos as u64,
        tail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hashes(n: u8) -> Vec<PageHash> {
        (0..n).map(|i| PageHash::of(&[i])).collect()
    }

    #[test]
    fn records_round_trip_and_torn_tail() {
        let mut log = Vec::new();
        log.extend_from_slice(&encode_record(1, &hashes(3)));
        log.extend_from_slice(&encode_record(2, &hashes(1)));
        let full = log.len();
        let p = parse_records(&log, 16);
        assert_eq!(p.records.len(), 2);
        assert_eq!(p.records[0].hashes, hashes(3));
        assert_eq!(p.tail, Tail::Clean);
        assert_eq!(p.good_end, 16 + full as u64);

        let third = encode_record(3, &hashes(5));
        for cut in [1, 15, 16, 100, third.len() - 1] {
            let mut torn = log.clone();
            torn.extend_from_slice(&third[..cut]);
            let p = parse_records(&torn, 16);
            assert_eq!(p.records.len(), 2, "cut {cut}");
            assert!(matches!(p.tail, Tail::Torn { .. }), "cut {cut}");
            assert_eq!(p.good_end, 16 + full as u64);
        }
        // A whole final record whose bytes never reached the disk.
        let mut zeros = log.clone();
        zeros.extend(std::iter::repeat_n(0u8, third.len()));
        assert!(matches!(parse_records(&zeros, 16).tail, Tail::Torn { .. }));

        // A flipped bit in the first record hides what follows: corruption.
        let mut bad = log.clone();
        bad[20] ^= 1;
        let p = parse_records(&bad, 16);
        assert!(p.records.is_empty());
        assert!(matches!(p.tail, Tail::Corrupt { offset: 16, .. }));
    }
}
