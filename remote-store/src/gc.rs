//! Garbage collection of the bucket: delete the objects no live snapshot,
//! function or version references, once they are older than a grace period.
//!
//! The caller says what is live ([`Live`]: the catalog's functions, their
//! versions' code and snapshots). Then:
//!
//! ```text
//! 1. list every folder (names, sizes, last-modified)
//! 2. roots = the live snapshots' objects + every snapshot object younger
//!    than the grace (an upload that has not reached the catalog yet);
//!    read each root: the pages it references (one unreadable root stops
//!    the gc: its pages might be anywhere)
//! 3. a pack is garbage when none of its pages (its packidx) is referenced
//!    (a pack without a packidx, left by a killed upload, references
//!    nothing); snapshots/, workingsets/, functions/, code/ objects are
//!    garbage when their name is not a live one, wspacks/ (working-set
//!    packs) when no root names them
//! 4. garbage older than the grace is deleted: a pack's packidx before the
//!    pack (a crash between leaves an uncommitted pack, collected next
//!    time); garbage younger than the grace is kept and counted
//! ```
//!
//! A pack is deleted only when *none* of its pages is referenced: a pack
//! with one live page stays whole (objects are never rewritten).
//!
//! # Why an upload in flight loses nothing
//!
//! An upload writes packs and their indexes, then the working set, then the
//! snapshot object; the writer puts the version in the catalog after that.
//! Everything it writes is younger than the grace while it runs (uploads
//! take seconds to minutes, the grace defaults to an hour), so none of it
//! is deleted, and once its snapshot object is written that object is a
//! root (young) until the catalog names it. The one hazard is an upload
//! that found a page in an *older* pack (its index read at its start) that
//! nothing else references, and names that pack in its snapshot object
//! after a gc listed the snapshots: within one process this cannot happen,
//! because uploads hold [`RemoteStore`]'s upload lock shared and the gc
//! holds it exclusively, and after deleting packs the gc forgets the
//! bucket index so the next upload reads it afresh. Between processes it
//! can: run the bucket's gc only on the writer (the server does), or by hand
//! when no other process uploads (`thaw store gc --remote` refuses while a
//! writer's heartbeat is fresh).

use std::collections::{HashMap, HashSet};
use std::time::{Duration, SystemTime};

use futures_util::{stream, StreamExt, TryStreamExt};
use snapshotter::store::PageHash;

use crate::bucket::{Listed, ObjectError, RemoteStore};
use crate::key::Kind;
use crate::manifest::RemoteSnapshot;

/// Objects read or deleted at once.
const IN_FLIGHT: usize = 16;

/// What is live, by content address (before keyed naming).
#[derive(Clone, Debug, Default)]
pub struct Live {
    /// Snapshot ids (their snapshot objects and working sets).
    pub snapshots: Vec<String>,
    /// Addresses in `functions/`: function names, `#catalog`, `#writer`.
    pub functions: Vec<String>,
    /// Addresses in `code/` (`name/vN/uid`).
    pub code: Vec<String>,
}

/// How a gc runs.
#[derive(Clone, Copy, Debug)]
pub struct GcOptions {
    /// Garbage younger than this is kept.
    pub grace: Duration,
    /// Report what would be deleted, delete nothing.
    pub dry_run: bool,
}

/// One object deleted (or, in a dry run, to delete).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Collected {
    /// Its kind.
    pub kind: Kind,
    /// Its name.
    pub name: String,
    /// Bytes.
    pub bytes: u64,
}

/// What a gc did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Objects deleted (or to delete, in a dry run).
    pub deleted: Vec<Collected>,
    /// Their bytes.
    pub bytes_freed: u64,
    /// Unreferenced objects kept because they are younger than the grace.
    pub young_kept: u64,
    /// Snapshot objects read as roots.
    pub roots: u64,
    /// Distinct pages those roots reference.
    pub live_pages: u64,
    /// Objects listed, every kind.
    pub objects: u64,
    /// Whether this was a dry run.
    pub dry_run: bool,
}

impl GcReport {
    /// Objects deleted of `kind`.
    pub fn deleted_of(&self, kind: Kind) -> usize {
        self.deleted.iter().filter(|c| c.kind == kind).count()
    }
}

/// Why a gc stopped (before deleting anything, unless `Delete`).
#[derive(Debug, thiserror::Error)]
pub enum GcError {
    /// Listing or reading failed.
    #[error("reading the bucket for gc: {0}")]
    Read(#[source] ObjectError),
    /// A root snapshot object cannot be read: its pages are unknown.
    #[error("gc stopped, nothing deleted: snapshot object {object} cannot be read, so the pages it references are unknown: {what}")]
    Root {
        /// The object.
        object: String,
        /// Why.
        what: String,
    },
    /// A delete failed (the ones before it are done).
    #[error("deleting garbage from the bucket ({done} objects deleted before): {source}")]
    Delete {
        /// Objects deleted before the failure.
        done: usize,
        /// Why.
        #[source]
        source: ObjectError,
    },
}

fn older_than(listed: &Listed, cutoff: SystemTime) -> bool {
    listed.last_modified < cutoff
}

impl RemoteStore {
    /// Deletes the objects nothing in `live` references that are older than
    /// `options.grace` (see the module doc).
    pub async fn gc(&self, live: &Live, options: GcOptions) -> Result<GcReport, GcError> {
        // No upload of this process runs meanwhile.
        let _exclusive = self.uploads.write().await;
        let cutoff = SystemTime::now()
            .checked_sub(options.grace)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let mut listed: HashMap<Kind, Vec<Listed>> = HashMap::new();
        for kind in Kind::ALL {
            listed.insert(kind, self.list(kind).await.map_err(GcError::Read)?);
        }
        let mut report = GcReport {
            objects: listed.values().map(|l| l.len() as u64).sum(),
            dry_run: options.dry_run,
            ..GcReport::default()
        };

        let live_names = |kind: Kind, addresses: &[String]| -> HashSet<String> {
            addresses
                .iter()
                .map(|a| self.name(kind, a.as_bytes()))
                .collect()
        };
        let live_snapshots = live_names(Kind::Snapshot, &live.snapshots);
        let live_sets = live_names(Kind::WorkingSet, &live.snapshots);
        let live_functions = live_names(Kind::Function, &live.functions);
        let live_code = live_names(Kind::Code, &live.code);

        // Roots: live snapshot objects and young ones.
        let roots: Vec<String> = listed[&Kind::Snapshot]
            .iter()
            .filter(|l| live_snapshots.contains(&l.name) || !older_than(l, cutoff))
            .map(|l| l.name.clone())
            .collect();
        report.roots = roots.len() as u64;
        let objects: Vec<RemoteSnapshot> = stream::iter(roots)
            .map(|name| self.read_root(name))
            .buffer_unordered(IN_FLIGHT)
            .try_collect()
            .await?;
        let mut pages: HashSet<PageHash> = HashSet::new();
        let mut named_packs: HashSet<String> = HashSet::new();
        let mut named_working_packs: HashSet<String> = HashSet::new();
        for object in &objects {
            pages.extend(object.pages.iter().map(|p| PageHash(p.hash)));
            named_packs.extend(object.packs.iter().cloned());
            named_working_packs.extend(object.working_packs.iter().map(|w| w.name.clone()));
        }
        report.live_pages = pages.len() as u64;

        // Packs: garbage when none of their pages is referenced.
        let indexes: HashMap<&str, &Listed> = listed[&Kind::PackIndex]
            .iter()
            .map(|l| (l.name.as_str(), l))
            .collect();
        let packs: HashMap<&str, &Listed> = listed[&Kind::Pack]
            .iter()
            .map(|l| (l.name.as_str(), l))
            .collect();
        let mut pack_names: Vec<&str> = packs.keys().chain(indexes.keys()).copied().collect();
        pack_names.sort_unstable();
        pack_names.dedup();
        // Only packs not named by a root need their index read.
        let candidates: Vec<(String, bool)> = pack_names
            .into_iter()
            .filter(|n| !named_packs.contains(*n))
            .map(|n| (n.to_string(), indexes.contains_key(n)))
            .collect();
        let read: Vec<(String, Option<Vec<PageHash>>)> = stream::iter(candidates)
            .map(|(name, committed)| self.read_candidate(name, committed))
            .buffer_unordered(IN_FLIGHT)
            .try_collect()
            .await?;
        let mut garbage: Vec<Collected> = Vec::new();
        for (name, hashes) in read {
            let name = name.as_str();
            if hashes
                .as_ref()
                .is_some_and(|h| h.iter().any(|p| pages.contains(p)))
            {
                continue;
            }
            let pair = [
                (Kind::PackIndex, indexes.get(name)),
                (Kind::Pack, packs.get(name)),
            ];
            // Both parts old enough, or neither goes.
            if pair
                .iter()
                .any(|(_, l)| l.is_some_and(|l| !older_than(l, cutoff)))
            {
                report.young_kept += pair.iter().filter(|(_, l)| l.is_some()).count() as u64;
                continue;
            }
            // The index first: a crash after it leaves an uncommitted pack.
            for (kind, l) in pair {
                if let Some(l) = l {
                    garbage.push(Collected {
                        kind,
                        name: l.name.clone(),
                        bytes: l.size,
                    });
                }
            }
        }

        // Named objects: garbage when not live.
        for (kind, live) in [
            (Kind::Snapshot, &live_snapshots),
            (Kind::WorkingSet, &live_sets),
            (Kind::Function, &live_functions),
            (Kind::Code, &live_code),
            (Kind::WorkingPack, &named_working_packs),
        ] {
            for l in &listed[&kind] {
                if live.contains(&l.name) {
                    continue;
                }
                if !older_than(l, cutoff) {
                    report.young_kept += 1;
                    continue;
                }
                garbage.push(Collected {
                    kind,
                    name: l.name.clone(),
                    bytes: l.size,
                });
            }
        }
        report.bytes_freed = garbage.iter().map(|c| c.bytes).sum();

        if !options.dry_run && !garbage.is_empty() {
            let packs_deleted = garbage.iter().any(|c| c.kind == Kind::PackIndex);
            let result = self.delete_all(&garbage).await;
            if packs_deleted {
                // The next upload reads the bucket's packs afresh.
                *self.index.lock().await = Default::default();
            }
            result?;
        }
        report.deleted = garbage;
        Ok(report)
    }

    async fn read_root(&self, name: String) -> Result<RemoteSnapshot, GcError> {
        let name = name.as_str();
        let root_error = |what: String| GcError::Root {
            object: self.describe(Kind::Snapshot, name),
            what,
        };
        let bytes = match self.get_sealed(Kind::Snapshot, name).await {
            Ok(Some(bytes)) => bytes,
            // Deleted meanwhile (by hand): it references nothing now.
            Ok(None) => {
                return Ok(RemoteSnapshot {
                    format: crate::manifest::REMOTE_SNAPSHOT_FORMAT,
                    manifest_id: String::new(),
                    manifest: Vec::new(),
                    packs: Vec::new(),
                    pages: Vec::new(),
                    working_packs: Vec::new(),
                })
            }
            Err(ObjectError::Open { source, .. }) => return Err(root_error(source.to_string())),
            Err(e) => return Err(GcError::Read(e)),
        };
        RemoteSnapshot::decode(&bytes).map_err(root_error)
    }

    /// The page list of a pack that is a gc candidate (`None`: uncommitted).
    async fn read_candidate(
        &self,
        name: String,
        committed: bool,
    ) -> Result<(String, Option<Vec<PageHash>>), GcError> {
        if !committed {
            return Ok((name, None));
        }
        match self.read_pack_index(&name).await {
            Ok(hashes) => Ok((name, Some(hashes))),
            // Deleted meanwhile: an uncommitted pack now.
            Err(ObjectError::Missing { .. }) => Ok((name, None)),
            Err(e) => Err(GcError::Read(e)),
        }
    }

    async fn delete_logged(&self, kind: Kind, name: String, bytes: u64) -> Result<(), ObjectError> {
        self.delete(kind, &name).await?;
        tracing::debug!(kind = kind.folder(), name = %name, bytes, "deleted from the bucket");
        Ok(())
    }

    /// Deletes `garbage` in its order per pack (index before pack), the
    /// rest concurrently.
    async fn delete_all(&self, garbage: &[Collected]) -> Result<(), GcError> {
        let (first, then): (Vec<&Collected>, Vec<&Collected>) =
            garbage.iter().partition(|c| c.kind != Kind::Pack);
        let mut done = 0;
        for batch in [first, then] {
            let jobs: Vec<(Kind, String, u64)> = batch
                .into_iter()
                .map(|c| (c.kind, c.name.clone(), c.bytes))
                .collect();
            let results: Vec<Result<(), ObjectError>> = stream::iter(jobs)
                .map(|(kind, name, bytes)| self.delete_logged(kind, name, bytes))
                .buffer_unordered(IN_FLIGHT)
                .collect()
                .await;
            for r in results {
                match r {
                    Ok(()) => done += 1,
                    Err(source) => return Err(GcError::Delete { done, source }),
                }
            }
        }
        Ok(())
    }
}
