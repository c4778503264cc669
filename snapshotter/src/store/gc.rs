//! Garbage collection: free the objects no snapshot root references.
//!
//! Under the store lock (so no snapshot commits meanwhile):
//!
//! 1. mark: read every root (any unreadable root aborts gc: its pages might
//!    be needed) and collect the hashes they reference;
//! 2. for each pack holding an unreferenced object, copy its live objects,
//!    verified, into one new pack (written, fsynced, renamed like any pack);
//!    a corrupt live object aborts gc, naming it (it is reported, never
//!    copied under its key);
//! 3. write a complete new index (kept packs + the new pack) to a temporary
//!    file, fsync, rename it over `index`, fsync the directory: this is the
//!    switch; before it the old index and packs are intact, after it the new
//!    ones are complete;
//! 4. delete the old packs, images no root needs, and temporary files of
//!    dead processes.
//!
//! Restores running meanwhile are unaffected: they read images or packs they
//! have open or mapped, and an unlinked file stays readable through those.
//! Other readers reload when they see the index's new inode.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use rayon::prelude::*;

use super::atomic::{sync_dir, write_atomic_with};
use super::failpoint;
use super::hash::{HashSetOfPages, PageHash, PAGE_SIZE};
use super::index::{encode_header, encode_record};
use super::pack::{PackWriter, WritePackError, PACK_HEADER_LEN};
use super::roots::RootError;
use super::{PageStore, ReadError};

/// What a gc did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Roots marked from.
    pub roots: usize,
    /// Objects still referenced.
    pub live_objects: u64,
    /// Objects freed.
    pub objects_freed: u64,
    /// Bytes of pack files freed (objects, plus headers of removed packs).
    pub bytes_freed: u64,
    /// Packs rewritten (and deleted).
    pub packs_rewritten: Vec<u32>,
    /// Live objects copied into the new pack.
    pub objects_moved: u64,
    /// The new pack, if any.
    pub new_pack: Option<u32>,
    /// Cached images deleted.
    pub images_removed: usize,
}

/// Error collecting garbage.
#[derive(Debug, thiserror::Error)]
pub enum GcError {
    /// Could not lock or reload the store.
    #[error(transparent)]
    Writer(#[from] super::WriterError),
    /// A root could not be read: gc stops rather than free its pages.
    #[error("gc aborted, a root is unreadable: {0}")]
    Root(#[from] RootError),
    /// A live object is unreadable or corrupt: gc stops rather than lose it
    /// or copy bad bytes.
    #[error("gc aborted: {0}")]
    Read(#[from] ReadError),
    /// Writing the new pack failed.
    #[error(transparent)]
    Pack(#[from] WritePackError),
    /// Writing the new index or deleting files failed.
    #[error("gc: cannot update {path}: {source}")]
    Io {
        /// What failed.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
}

/// What gc will do with the packs.
#[derive(Debug, Default)]
struct Plan {
    /// Packs without garbage, with their objects by slot (kept as they are).
    keep: Vec<(u32, Vec<PageHash>)>,
    /// Packs holding garbage (rewritten).
    rewrite: Vec<u32>,
    /// Live objects of the rewritten packs (copied into a new pack).
    moved: Vec<PageHash>,
}

impl PageStore {
    /// Frees every object no snapshot root references (see the module doc).
    pub fn gc(&self) -> Result<GcReport, GcError> {
        // The writer takes the lock, reloads the index, truncates a torn tail
        // and removes orphan packs; we then use its lock for the whole gc.
        let writer = self.writer()?;
        let mut report = GcReport::default();

        let mut live = HashSetOfPages::default();
        let ids = self.snapshot_ids()?;
        let mut keep_images = BTreeSet::new();
        for id in &ids {
            let root = self.load_root(id)?;
            live.extend(root.areas.iter().flat_map(|a| a.hashes().copied()));
            keep_images.insert(PageStore::image_name(id, &root.content_key()));
            keep_images.insert(PageStore::pmd_image_name(id, &root.content_key()));
        }
        report.roots = ids.len();

        // Which packs hold garbage.
        let Plan {
            keep,
            rewrite,
            moved,
        } = self.plan(&live, &mut report);

        if !rewrite.is_empty() {
            // Copy the live objects of rewritten packs, verified.
            let next_id = self
                .read_state()
                .packs
                .keys()
                .next_back()
                .map_or(1, |id| id + 1);
            let mut new_record = None;
            if !moved.is_empty() {
                let pages: Vec<super::Page> = moved
                    .par_iter()
                    .map(|h| self.get(h))
                    .collect::<Result<_, _>>()?;
                let mut pack = PackWriter::create(&self.dir().join("packs"), next_id)?;
                for chunk in pages.chunks(1024) {
                    let slices: Vec<&[u8]> = chunk.iter().map(|p| &p[..]).collect();
                    pack.append(&slices)?;
                }
                pack.finish()?;
                failpoint::hit("gc-pack-written");
                new_record = Some(encode_record(next_id, &moved));
                report.new_pack = Some(next_id);
                report.objects_moved = moved.len() as u64;
            }

            // The switch.
            let mut parts: Vec<Vec<u8>> = vec![encode_header().to_vec()];
            parts.extend(keep.iter().map(|(id, hashes)| encode_record(*id, hashes)));
            parts.extend(new_record);
            let slices: Vec<&[u8]> = parts.iter().map(|p| p.as_slice()).collect();
            let index_path = self.dir().join("index");
            write_atomic_with(
                &index_path,
                &slices,
                ["gc-index-written", "gc-index-synced", "gc-index-switched"],
            )
            .map_err(|source| GcError::Io {
                path: index_path.clone(),
                source,
            })?;
            self.refresh().map_err(super::WriterError::from)?;

            // Old packs: delete them (mapped readers keep their pages).
            let packs_dir = self.dir().join("packs");
            for id in &rewrite {
                let path = self.pack_path(*id);
                let len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
                match std::fs::remove_file(&path) {
                    Ok(()) => report.bytes_freed += len,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(source) => return Err(GcError::Io { path, source }),
                }
                failpoint::hit("gc-pack-deleted");
            }
            if report.new_pack.is_some() {
                report.bytes_freed = report
                    .bytes_freed
                    .saturating_sub(PACK_HEADER_LEN + report.objects_moved * PAGE_SIZE as u64);
            }
            sync_dir(&packs_dir).map_err(|source| GcError::Io {
                path: packs_dir.clone(),
                source,
            })?;
            report.packs_rewritten = rewrite;
        }

        report.images_removed = self.remove_stale_files(&keep_images)?;
        drop(writer);
        tracing::info!(?report, "gc done");
        Ok(report)
    }

    /// Sorts packs into those kept as they are and those to rewrite, with
    /// the live objects of the latter.
    fn plan(&self, live: &HashSetOfPages, report: &mut GcReport) -> Plan {
        let state = self.read_state();
        let mut by_pack: BTreeMap<u32, Vec<(u32, PageHash)>> =
            state.packs.keys().map(|&id| (id, Vec::new())).collect();
        for (hash, loc) in &state.objects {
            by_pack.entry(loc.pack).or_default().push((loc.slot, *hash));
        }
        let mut plan = Plan::default();
        for (id, mut objects) in by_pack {
            objects.sort_unstable_by_key(|(slot, _)| *slot);
            let live_here: Vec<PageHash> = objects
                .iter()
                .map(|(_, h)| *h)
                .filter(|h| live.contains(h))
                .collect();
            report.live_objects += live_here.len() as u64;
            if live_here.len() == objects.len() {
                plan.keep
                    .push((id, objects.into_iter().map(|(_, h)| h).collect()));
            } else {
                report.objects_freed += (objects.len() - live_here.len()) as u64;
                plan.rewrite.push(id);
                plan.moved.extend(live_here);
            }
        }
        plan
    }

    /// Removes images no root needs and temporary files of dead processes.
    fn remove_stale_files(&self, keep_images: &BTreeSet<String>) -> Result<usize, GcError> {
        let mut removed_images = 0;
        for sub in ["images", "roots"] {
            let dir = self.dir().join(sub);
            let io = |path: PathBuf| move |source| GcError::Io { path, source };
            let mut changed = false;
            for entry in std::fs::read_dir(&dir).map_err(io(dir.clone()))? {
                let entry = entry.map_err(io(dir.clone()))?;
                let name = entry.file_name().to_string_lossy().into_owned();
                let stale = if name.starts_with('.') && name.ends_with(".tmp") {
                    // Roots are written under the lock we hold: any temporary
                    // root is stale. Images are built without it.
                    sub == "roots" || tmp_owner_dead(&name)
                } else if sub == "images" && name.ends_with(".img") {
                    let stale = !keep_images.contains(&name);
                    removed_images += stale as usize;
                    stale
                } else {
                    false
                };
                if stale {
                    match std::fs::remove_file(entry.path()) {
                        Ok(()) => changed = true,
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                        Err(source) => {
                            return Err(GcError::Io {
                                path: entry.path(),
                                source,
                            })
                        }
                    }
                }
            }
            if changed {
                sync_dir(&dir).map_err(io(dir.clone()))?;
            }
        }
        Ok(removed_images)
    }
}

/// A temporary image `.<name>.<pid>.tmp` belongs to a process that is gone.
fn tmp_owner_dead(name: &str) -> bool {
    let stem = name.trim_end_matches(".tmp");
    let Some(pid) = stem.rsplit('.').next().and_then(|p| p.parse::<i32>().ok()) else {
        return true;
    };
    if pid <= 0 {
        return true;
    }
    matches!(
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None),
        Err(nix::errno::Errno::ESRCH)
    )
}
