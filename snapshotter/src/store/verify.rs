//! Whole-store verification: rehash every object, check every root.

use std::fmt;
use std::path::PathBuf;

use rayon::prelude::*;

use super::hash::PageHash;
use super::index::Tail;
use super::pack::{pack_file_name, parse_pack_file_name, slot_offset};
use super::{OpenError, PackEntry, PageStore};

/// What is wrong with one object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BadObjectKind {
    /// The stored bytes hash to something else.
    Mismatch {
        /// Their hash.
        actual: PageHash,
    },
    /// The pack cannot be read (missing, bad header, too short).
    PackUnavailable(String),
}

/// A corrupt or unreadable object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadObject {
    /// The object.
    pub hash: PageHash,
    /// Its pack id.
    pub pack: u32,
    /// Its pack file.
    pub path: PathBuf,
    /// Its byte offset in the pack.
    pub offset: u64,
    /// What is wrong.
    pub kind: BadObjectKind,
}

impl fmt::Display for BadObject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "object {} in {} at offset {}: ",
            self.hash,
            self.path.display(),
            self.offset
        )?;
        match &self.kind {
            BadObjectKind::Mismatch { actual } => write!(f, "corrupt, content hashes to {actual}"),
            BadObjectKind::PackUnavailable(why) => write!(f, "unreadable, {why}"),
        }
    }
}

/// The findings of [`PageStore::verify`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// Objects rehashed.
    pub objects_checked: u64,
    /// Packs in the index.
    pub packs: usize,
    /// Roots read.
    pub roots_checked: usize,
    /// Corrupt or unreadable objects.
    pub bad_objects: Vec<BadObject>,
    /// Roots that cannot be read, with the reason.
    pub bad_roots: Vec<(String, String)>,
    /// Objects roots reference that the index lacks: (snapshot, hash).
    pub missing_objects: Vec<(String, PageHash)>,
    /// Index bytes no crash can explain: (offset, length).
    pub corrupt_index_tail: Option<(u64, u64)>,
    /// A torn index tail left by a crash (harmless; the next writer
    /// truncates it): (offset, length).
    pub torn_index_tail: Option<(u64, u64)>,
    /// Pack files the index does not list (left by a crash; harmless, the
    /// next writer removes them).
    pub orphan_packs: Vec<PathBuf>,
}

impl VerifyReport {
    /// True if nothing is wrong (torn tails and orphans are not wrong).
    pub fn is_ok(&self) -> bool {
        self.bad_objects.is_empty()
            && self.bad_roots.is_empty()
            && self.missing_objects.is_empty()
            && self.corrupt_index_tail.is_none()
    }
}

impl fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} objects in {} packs, {} roots checked",
            self.objects_checked, self.packs, self.roots_checked
        )?;
        const SHOWN: usize = 5;
        if !self.bad_objects.is_empty() {
            write!(f, "; {} bad object(s):", self.bad_objects.len())?;
            for b in self.bad_objects.iter().take(SHOWN) {
                write!(f, " [{b}]")?;
            }
        }
        for (id, why) in self.bad_roots.iter().take(SHOWN) {
            write!(f, "; root {id} unreadable: {why}")?;
        }
        if !self.missing_objects.is_empty() {
            write!(
                f,
                "; {} referenced object(s) missing:",
                self.missing_objects.len()
            )?;
            for (id, h) in self.missing_objects.iter().take(SHOWN) {
                write!(f, " [snapshot {id} needs {h}]")?;
            }
        }
        if let Some((off, len)) = self.corrupt_index_tail {
            write!(f, "; index corrupt at offset {off} ({len} bytes)")?;
        }
        Ok(())
    }
}

/// Error verifying the store.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The store could not be loaded.
    #[error(transparent)]
    Open(#[from] OpenError),
    /// Listing files failed.
    #[error("cannot list {path}: {source}")]
    Io {
        /// What failed.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// Something is wrong; the report says what.
    #[error("store verification failed: {0}")]
    Corrupt(Box<VerifyReport>),
}

impl PageStore {
    /// Rehashes every object (on all cores) and checks that every root is
    /// readable and references only stored objects. Returns the report if
    /// all is well, [`VerifyError::Corrupt`] with the report otherwise.
    pub fn verify(&self) -> Result<VerifyReport, VerifyError> {
        self.refresh()?;
        let mut report = VerifyReport::default();
        let (entries, packs, tail) = {
            let state = self.read_state();
            let entries: Vec<(PageHash, u32, u32, PackEntry)> = state
                .objects
                .iter()
                .map(|(h, loc)| (*h, loc.pack, loc.slot, state.packs[&loc.pack].clone()))
                .collect();
            let packs: Vec<u32> = state.packs.keys().copied().collect();
            (entries, packs, state.tail)
        };
        report.packs = packs.len();
        report.objects_checked = entries.len() as u64;
        match tail {
            Tail::Clean => {}
            Tail::Torn { offset, len } => report.torn_index_tail = Some((offset, len)),
            Tail::Corrupt { offset, len } => report.corrupt_index_tail = Some((offset, len)),
        }
        let packs_dir = self.dir().join("packs");
        let mut bad: Vec<BadObject> = entries
            .par_iter()
            .with_min_len(256)
            .filter_map(|(hash, pack, slot, entry)| {
                let kind = match entry {
                    PackEntry::Mapped(p) => match p.object(*slot) {
                        Some(bytes) => {
                            let actual = PageHash::of(bytes);
                            if actual == *hash {
                                return None;
                            }
                            BadObjectKind::Mismatch { actual }
                        }
                        None => {
                            BadObjectKind::PackUnavailable(format!("slot {slot} beyond its end"))
                        }
                    },
                    PackEntry::Broken(why) => BadObjectKind::PackUnavailable(why.to_string()),
                };
                Some(BadObject {
                    hash: *hash,
                    pack: *pack,
                    path: packs_dir.join(pack_file_name(*pack)),
                    offset: slot_offset(*slot),
                    kind,
                })
            })
            .collect();
        bad.sort_by_key(|b| (b.pack, b.offset));
        report.bad_objects = bad;

        match self.snapshot_ids() {
            Ok(ids) => {
                for id in ids {
                    report.roots_checked += 1;
                    match self.load_root(&id) {
                        Ok(root) => {
                            let state = self.read_state();
                            let mut missing: Vec<PageHash> = root
                                .areas
                                .iter()
                                .flat_map(|a| a.hashes())
                                .filter(|h| !state.objects.contains_key(h))
                                .copied()
                                .collect();
                            missing.sort();
                            missing.dedup();
                            report
                                .missing_objects
                                .extend(missing.into_iter().map(|h| (id.clone(), h)));
                        }
                        Err(e) => report.bad_roots.push((id, e.to_string())),
                    }
                }
            }
            Err(e) => report.bad_roots.push(("*".into(), e.to_string())),
        }

        let listing = std::fs::read_dir(&packs_dir).map_err(|source| VerifyError::Io {
            path: packs_dir.clone(),
            source,
        })?;
        for entry in listing.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let orphan = match parse_pack_file_name(&name) {
                Some(id) => !packs.contains(&id),
                None => name.ends_with(".tmp"),
            };
            if orphan {
                report.orphan_packs.push(entry.path());
            }
        }

        if report.is_ok() {
            Ok(report)
        } else {
            Err(VerifyError::Corrupt(Box::new(report)))
        }
    }
}
