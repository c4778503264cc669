//! Per-area page lists: what each page of a memory area holds, run-length
//! compressed.
//!
//! An area of `n` pages is a sequence of runs, stored as written:
//!
//! ```text
//! Zero(k)          k pages of zeros (never stored in the store)
//! File(k)          k pages unchanged from the area's backing file
//! Hashes([h, ..])  one stored page per hash, in address order
//! ```
//!
//! Adjacent runs of the same kind are merged as pages are pushed, so a list
//! never holds `Zero(2), Zero(3)` or two neighbouring `Hashes` runs.

use serde::{Deserialize, Serialize};

use super::hash::PageHash;

/// Where one captured page went when it was put in the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PageRef {
    /// The page was all zeros; nothing was stored.
    Zero,
    /// The page is stored under this hash.
    Hash(PageHash),
}

/// One page of an area as listed by [`AreaPages::iter`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageSlot {
    /// All zeros.
    Zero,
    /// Unchanged from the backing file.
    File,
    /// Stored under this hash.
    Hash(PageHash),
}

/// A run of pages of one kind.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PageRun {
    /// This many zero pages.
    Zero(u64),
    /// This many pages unchanged from the backing file.
    File(u64),
    /// Stored pages, one hash each.
    Hashes(#[serde(with = "hash_list")] Vec<PageHash>),
}

/// Serialises a hash list as one byte string (32 bytes per hash): a single
/// copy in bincode instead of 32 calls per hash, which made loading a large
/// root several times slower.
mod hash_list {
    use serde::de::{Error, SeqAccess, Visitor};
    use serde::{Deserializer, Serializer};

    use crate::store::hash::PageHash;

    pub fn serialize<S: Serializer>(hashes: &[PageHash], s: S) -> Result<S::Ok, S::Error> {
        let mut flat = Vec::with_capacity(hashes.len() * 32);
        for h in hashes {
            flat.extend_from_slice(h.as_bytes());
        }
        s.serialize_bytes(&flat)
    }

    struct HashesVisitor;

    impl<'de> Visitor<'de> for HashesVisitor {
        type Value = Vec<PageHash>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a byte string of 32-byte hashes")
        }

        fn visit_bytes<E: Error>(self, v: &[u8]) -> Result<Self::Value, E> {
            if v.len() % 32 != 0 {
                return Err(E::invalid_length(v.len(), &self));
            }
            Ok(v.chunks_exact(32)
                .map(|c| PageHash(c.try_into().expect("32 bytes")))
                .collect())
        }

        fn visit_byte_buf<E: Error>(self, v: Vec<u8>) -> Result<Self::Value, E> {
            self.visit_bytes(&v)
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut flat = Vec::new();
            while let Some(b) = seq.next_element::<u8>()? {
                flat.push(b);
            }
            self.visit_bytes(&flat)
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<PageHash>, D::Error> {
        d.deserialize_byte_buf(HashesVisitor)
    }
}

impl PageRun {
    /// Number of pages in the run.
    pub fn len(&self) -> u64 {
        match self {
            PageRun::Zero(n) | PageRun::File(n) => *n,
            PageRun::Hashes(h) => h.len() as u64,
        }
    }

    /// True if the run holds no pages.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Page counts of an area or a snapshot by kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PageCounts {
    /// Zero pages.
    pub zero: u64,
    /// File-backed, unchanged pages.
    pub file: u64,
    /// Pages stored by hash (counting repeats).
    pub hashed: u64,
}

impl PageCounts {
    /// All pages.
    pub fn total(&self) -> u64 {
        self.zero + self.file + self.hashed
    }

    /// Adds another count.
    pub fn add(&mut self, other: PageCounts) {
        self.zero += other.zero;
        self.file += other.file;
        self.hashed += other.hashed;
    }
}

/// The pages of one memory area, in address order, run-length compressed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AreaPages {
    runs: Vec<PageRun>,
}

impl AreaPages {
    /// An empty list.
    pub fn new() -> AreaPages {
        AreaPages::default()
    }

    /// Builds a list from the result of a store put.
    pub fn from_refs<'a>(refs: impl IntoIterator<Item = &'a PageRef>) -> AreaPages {
        let mut area = AreaPages::new();
        area.extend_refs(refs);
        area
    }

    /// The runs.
    pub fn runs(&self) -> &[PageRun] {
        &self.runs
    }

    /// Appends `n` zero pages.
    pub fn push_zero(&mut self, n: u64) {
        if n == 0 {
            return;
        }
        match self.runs.last_mut() {
            Some(PageRun::Zero(k)) => *k += n,
            _ => self.runs.push(PageRun::Zero(n)),
        }
    }

    /// Appends `n` pages unchanged from the backing file.
    pub fn push_file(&mut self, n: u64) {
        if n == 0 {
            return;
        }
        match self.runs.last_mut() {
            Some(PageRun::File(k)) => *k += n,
            _ => self.runs.push(PageRun::File(n)),
        }
    }

    /// Appends one stored page.
    pub fn push_hash(&mut self, hash: PageHash) {
        match self.runs.last_mut() {
            Some(PageRun::Hashes(v)) => v.push(hash),
            _ => self.runs.push(PageRun::Hashes(vec![hash])),
        }
    }

    /// Appends one page as returned by a put.
    pub fn push_ref(&mut self, page: &PageRef) {
        match page {
            PageRef::Zero => self.push_zero(1),
            PageRef::Hash(h) => self.push_hash(*h),
        }
    }

    /// Appends pages as returned by a put.
    pub fn extend_refs<'a>(&mut self, refs: impl IntoIterator<Item = &'a PageRef>) {
        for r in refs {
            self.push_ref(r);
        }
    }

    /// Number of pages in the area.
    pub fn page_count(&self) -> u64 {
        self.runs.iter().map(PageRun::len).sum()
    }

    /// Number of pages in the area, or `None` if the runs of a corrupt list
    /// add up to more than `u64::MAX`.
    pub fn checked_page_count(&self) -> Option<u64> {
        self.runs
            .iter()
            .try_fold(0u64, |sum, run| sum.checked_add(run.len()))
    }

    /// Counts by kind.
    pub fn counts(&self) -> PageCounts {
        let mut c = PageCounts::default();
        for run in &self.runs {
            match run {
                PageRun::Zero(n) => c.zero += n,
                PageRun::File(n) => c.file += n,
                PageRun::Hashes(h) => c.hashed += h.len() as u64,
            }
        }
        c
    }

    /// Every stored hash, in order, repeats included.
    pub fn hashes(&self) -> impl Iterator<Item = &PageHash> + '_ {
        self.runs.iter().flat_map(|run| match run {
            PageRun::Hashes(h) => h.as_slice(),
            _ => &[],
        })
    }

    /// Every page, in order.
    pub fn iter(&self) -> impl Iterator<Item = PageSlot> + '_ {
        self.runs.iter().flat_map(|run| {
            let (n, hashes): (u64, &[PageHash]) = match run {
                PageRun::Zero(n) | PageRun::File(n) => (*n, &[]),
                PageRun::Hashes(h) => (0, h.as_slice()),
            };
            let fill = match run {
                PageRun::File(_) => PageSlot::File,
                _ => PageSlot::Zero,
            };
            std::iter::repeat_n(fill, n as usize).chain(hashes.iter().map(|h| PageSlot::Hash(*h)))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_merge_and_iterate() {
        let h1 = PageHash::of(b"1");
        let h2 = PageHash::of(b"2");
        let mut a = AreaPages::new();
        a.push_zero(2);
        a.push_ref(&PageRef::Zero);
        a.push_hash(h1);
        a.push_ref(&PageRef::Hash(h2));
        a.push_file(4);
        a.push_file(1);
        a.push_hash(h1);
        assert_eq!(
            a.runs(),
            &[
                PageRun::Zero(3),
                PageRun::Hashes(vec![h1, h2]),
                PageRun::File(5),
                PageRun::Hashes(vec![h1])
            ]
        );
        assert_eq!(a.page_count(), 11);
        assert_eq!(
            a.counts(),
            PageCounts {
                zero: 3,
                file: 5,
                hashed: 3
            }
        );
        let slots: Vec<_> = a.iter().collect();
        assert_eq!(slots.len(), 11);
        assert_eq!(slots[2], PageSlot::Zero);
        assert_eq!(slots[3], PageSlot::Hash(h1));
        assert_eq!(slots[5], PageSlot::File);
        assert_eq!(slots[10], PageSlot::Hash(h1));
        assert_eq!(a.hashes().count(), 3);
        let bytes = bincode::serialize(&a).unwrap();
        assert_eq!(bincode::deserialize::<AreaPages>(&bytes).unwrap(), a);
    }
}
