//! Page hashes: the blake3 key of every stored page, and hashing of many pages
//! at once on all cores.

use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::str::FromStr;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// Size of one page, the unit of storage.
pub const PAGE_SIZE: usize = 4096;

/// The blake3 hash of one 4 KiB page; the key of a stored object.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PageHash(pub [u8; 32]);

impl PageHash {
    /// Hashes one page (any length works, but the store only hashes pages).
    pub fn of(page: &[u8]) -> PageHash {
        PageHash(*blake3::hash(page).as_bytes())
    }

    /// The raw 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The full lowercase hex form (64 characters).
    pub fn to_hex(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for PageHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for PageHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PageHash({self})")
    }
}

/// Error parsing a [`PageHash`] from hex.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid page hash {0:?}: expected 64 hex digits")]
pub struct ParseHashError(pub String);

impl FromStr for PageHash {
    type Err = ParseHashError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ParseHashError(s.to_string());
        if s.len() != 64 || !s.is_ascii() {
            return Err(bad());
        }
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
        }
        Ok(PageHash(out))
    }
}

/// True if every byte of `page` is zero.
pub fn is_zero_page(page: &[u8]) -> bool {
    // OR-reduce in 64-byte blocks: vectorises well and still stops early on
    // the first non-zero block, which is where most data pages stop.
    let mut blocks = page.chunks_exact(64);
    for block in &mut blocks {
        if block.iter().fold(0u8, |acc, &b| acc | b) != 0 {
            return false;
        }
    }
    blocks.remainder().iter().all(|&b| b == 0)
}

/// Classifies and hashes the pages of `data` (a multiple of [`PAGE_SIZE`]) on
/// all cores: `None` for a zero page, `Some(hash)` otherwise.
pub fn hash_pages_parallel(data: &[u8]) -> Vec<Option<PageHash>> {
    debug_assert_eq!(data.len() % PAGE_SIZE, 0);
    if data.len() < 16 * PAGE_SIZE {
        // Not worth waking other threads for.
        return hash_pages_serial(data);
    }
    data.par_chunks_exact(PAGE_SIZE)
        .with_min_len(16)
        .map(hash_or_zero)
        .collect()
}

/// Same as [`hash_pages_parallel`] on the calling thread only (used by the
/// benchmark to show the gain of hashing on all cores).
pub fn hash_pages_serial(data: &[u8]) -> Vec<Option<PageHash>> {
    debug_assert_eq!(data.len() % PAGE_SIZE, 0);
    data.chunks_exact(PAGE_SIZE).map(hash_or_zero).collect()
}

fn hash_or_zero(page: &[u8]) -> Option<PageHash> {
    if is_zero_page(page) {
        None
    } else {
        Some(PageHash::of(page))
    }
}

/// A `HashMap` hasher for keys that are already uniformly random (blake3
/// hashes): it keeps the first 8 bytes written instead of hashing again.
#[derive(Debug, Default, Clone, Copy)]
pub struct HashKeyHasher(u64);

impl Hasher for HashKeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // `[u8; 32]` hashes as its length then its bytes; fold everything so
        // the result is right whatever the call pattern, but cheaply.
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 = self.0.rotate_left(5) ^ u64::from_le_bytes(word);
        }
    }

    fn write_usize(&mut self, n: usize) {
        self.0 = self.0.rotate_left(5) ^ n as u64;
    }
}

/// [`BuildHasher`] for [`HashKeyHasher`].
#[derive(Debug, Default, Clone, Copy)]
pub struct BuildHashKeyHasher;

impl BuildHasher for BuildHashKeyHasher {
    type Hasher = HashKeyHasher;

    fn build_hasher(&self) -> HashKeyHasher {
        HashKeyHasher(0)
    }
}

/// A map keyed by page hash with the cheap hasher.
pub type HashMapByPage<V> = std::collections::HashMap<PageHash, V, BuildHashKeyHasher>;

/// A set of page hashes with the cheap hasher.
pub type HashSetOfPages = std::collections::HashSet<PageHash, BuildHashKeyHasher>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip() {
        let h = PageHash::of(b"hello");
        let s = h.to_string();
        assert_eq!(s.len(), 64);
        assert_eq!(s.parse::<PageHash>().unwrap(), h);
        assert!("xyz".parse::<PageHash>().is_err());
    }

    #[test]
    fn zero_detection() {
        let mut page = vec![0u8; PAGE_SIZE];
        assert!(is_zero_page(&page));
        page[PAGE_SIZE - 1] = 1;
        assert!(!is_zero_page(&page));
    }

    #[test]
    fn parallel_matches_serial() {
        let mut data = vec![0u8; PAGE_SIZE * 100];
        for (i, b) in data.iter_mut().enumerate() {
            if (i / PAGE_SIZE) % 3 != 0 {
                *b = (i * 7 % 251) as u8;
            }
        }
        let a = hash_pages_parallel(&data);
        assert_eq!(a, hash_pages_serial(&data));
        assert!(a[0].is_none());
        assert!(a[1].is_some());
    }
}
