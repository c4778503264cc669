//! Memory areas of a captured process and which of their pages were stored.
//!
//! Every area of `/proc/pid/maps` becomes one [`MemoryArea`]. Its pages fall
//! into three groups, recorded as sorted, non-overlapping [`PageRun`]s
//! (page indices relative to the area's start):
//!
//! ```text
//! area:   |  file / untouched  | Stored ... | Zero | untouched | Stored |
//!         ^start                                                    end^
//! ```
//!
//! * `Stored`: private content that went to the page sink;
//! * `Zero`: private pages that exist but hold only zero bytes (not stored);
//! * pages in no run: for a file-backed area the file's page at
//!   `offset + index * PAGE_SIZE`, for anonymous memory never touched (zero).

use serde::{Deserialize, Serialize};

use super::PAGE_SIZE;

/// Access rights of an area.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Protection {
    /// `PROT_READ`.
    pub read: bool,
    /// `PROT_WRITE`.
    pub write: bool,
    /// `PROT_EXEC`.
    pub exec: bool,
}

impl Protection {
    /// The `PROT_*` bits for `mmap`/`mprotect`.
    pub fn to_prot(self) -> i32 {
        let mut prot = libc::PROT_NONE;
        if self.read {
            prot |= libc::PROT_READ;
        }
        if self.write {
            prot |= libc::PROT_WRITE;
        }
        if self.exec {
            prot |= libc::PROT_EXEC;
        }
        prot
    }
}

/// Which file a mapping or descriptor refers to, precisely enough to notice
/// that it changed since the capture.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileIdentity {
    /// `st_dev`.
    pub dev: u64,
    /// `st_ino`.
    pub inode: u64,
    /// `st_size`.
    pub size: u64,
    /// `st_mtime` seconds.
    pub mtime_sec: i64,
    /// `st_mtime` nanoseconds.
    pub mtime_nsec: i64,
}

/// What an area is and how the restorer recreates it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AreaKind {
    /// A file mapping whose every present page is still the file's: map the
    /// file again (same path, identity and offset); nothing was stored.
    FileUnchanged,
    /// A private file mapping some of whose pages were written (copy on
    /// write): map the file, then put the stored pages over it.
    FilePrivate,
    /// A private mapping of a file that no longer exists under its path
    /// (`(deleted)`, memfd): every page was read and is in the runs.
    FileCopied,
    /// Private anonymous memory (including `[anon:name]` areas and private
    /// mappings of `/dev/zero`).
    Anonymous,
    /// The `brk` heap, `[heap]`.
    Heap,
    /// The main thread's stack, `[stack]` (grows down).
    Stack,
    /// `[vdso]`: not stored, the restorer moves its own there.
    Vdso,
    /// `[vvar]`: not stored, moves with the vdso.
    Vvar,
    /// `[vvar_vclock]`: not stored, moves with the vdso.
    VvarVclock,
    /// `[vsyscall]`: fixed by the kernel, nothing to do.
    Vsyscall,
    /// An attachment of a System V shared memory segment (`/SYSV<key>` in
    /// the maps; the area's `inode` is the segment's id, its `offset` the
    /// offset in the segment). The segment's pages that exist are stored
    /// like anonymous memory's; the restorer makes the segment in the
    /// copy's own IPC namespace with the same id, key, size and mode, fills
    /// it and attaches it at the saved address (`pool::restore::sysv`).
    /// Added after state version 4 as the last variant: older snapshots
    /// read unchanged.
    SysvShm(SysvSegment),
}

/// The attachments of System V segments in `areas`: each a run of
/// consecutive area indices of one segment, every area starting where the
/// previous one ended in memory and in the segment (an attachment split
/// by `mprotect`). The capture refuses one that does not cover its whole
/// segment; the restorer attaches each run with one `shmat`.
pub fn sysv_attachments(areas: &[MemoryArea]) -> Vec<Vec<usize>> {
    let mut groups: Vec<Vec<usize>> = Vec::new();
    for (index, area) in areas.iter().enumerate() {
        let AreaKind::SysvShm(segment) = area.kind else {
            continue;
        };
        let joins = groups.last().is_some_and(|g| {
            let last = *g.last().expect("a group has an area");
            let prev = &areas[last];
            matches!(prev.kind, AreaKind::SysvShm(s) if s.id == segment.id)
                && index == last + 1
                && prev.end == area.start
                && prev.offset + prev.len() == area.offset
        });
        match joins {
            true => groups.last_mut().expect("joins a group").push(index),
            false => groups.push(vec![index]),
        }
    }
    groups
}

/// A System V shared memory segment, as `/proc/sysvipc/shm` of the
/// process's IPC namespace describes it at the capture.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SysvSegment {
    /// Its id (`shmid`) in the process's IPC namespace.
    pub id: i32,
    /// Its key (`IPC_PRIVATE`, 0, for a private or removed segment).
    pub key: i32,
    /// Its size in bytes, as `shmget` was given it.
    pub size: u64,
    /// Permission bits, with `SHM_DEST` (0o1000) when it was removed
    /// (`IPC_RMID`) and lives on until its last detach.
    pub mode: u32,
    /// Owner uid.
    pub uid: u32,
    /// Owner gid.
    pub gid: u32,
}

impl SysvSegment {
    /// `SHM_DEST`: removed, destroyed once nothing attaches it.
    pub const DEST: u32 = 0o1000;

    /// Whether the segment was removed (`IPC_RMID`) before the capture.
    pub fn removed(&self) -> bool {
        self.mode & Self::DEST != 0
    }

    /// Its length in memory: the size rounded up to whole pages.
    pub fn mapped_len(&self) -> u64 {
        self.size.div_ceil(PAGE_SIZE) * PAGE_SIZE
    }
}

impl AreaKind {
    /// Whether the area's private pages are scanned and stored.
    pub fn has_private_pages(&self) -> bool {
        matches!(
            self,
            AreaKind::FilePrivate
                | AreaKind::FileCopied
                | AreaKind::Anonymous
                | AreaKind::Heap
                | AreaKind::Stack
                | AreaKind::SysvShm(_)
        )
    }
}

/// One area of the memory map.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryArea {
    /// First address.
    pub start: u64,
    /// One past the last address.
    pub end: u64,
    /// Access rights.
    pub prot: Protection,
    /// `MAP_SHARED` (true) or `MAP_PRIVATE` (false).
    pub shared: bool,
    /// Offset into the file in bytes (0 for anonymous memory).
    pub offset: u64,
    /// The path column of `/proc/pid/maps` without a ` (deleted)` suffix;
    /// `None` for unnamed anonymous memory.
    pub path: Option<String>,
    /// Whether the file was deleted (or is a memfd).
    pub deleted: bool,
    /// Device of the mapped file as `/proc/pid/maps` prints it (`major:minor`
    /// folded into `major << 32 | minor`).
    pub maps_dev: u64,
    /// Inode of the mapped file (0 for anonymous memory).
    pub inode: u64,
    /// Identity of the mapped file, when there is one.
    pub file: Option<FileIdentity>,
    /// What the area is.
    pub kind: AreaKind,
    /// Stored and zero page runs, sorted by `first`.
    pub pages: Vec<PageRun>,
}

impl MemoryArea {
    /// Length in bytes.
    pub fn len(&self) -> u64 {
        self.end - self.start
    }

    /// Whether the area is empty (never for a real mapping).
    pub fn is_empty(&self) -> bool {
        self.end == self.start
    }

    /// Number of pages.
    pub fn page_count(&self) -> u64 {
        self.len() / PAGE_SIZE
    }

    /// Number of pages in runs of `kind`.
    pub fn count_pages(&self, kind: PageRunKind) -> u64 {
        self.pages
            .iter()
            .filter(|r| r.kind == kind)
            .map(|r| r.count)
            .sum()
    }
}

/// What a run of pages holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PageRunKind {
    /// Content handed to the page sink.
    Stored,
    /// Entirely zero; not stored.
    Zero,
}

/// A run of consecutive pages of one kind inside an area.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageRun {
    /// Index of the first page, relative to the area's start.
    pub first: u64,
    /// Number of pages.
    pub count: u64,
    /// What they hold.
    pub kind: PageRunKind,
}

/// Appends `count` pages of `kind` starting at `first` to `runs`, merging
/// with the last run when it continues it.
pub(crate) fn push_run(runs: &mut Vec<PageRun>, first: u64, count: u64, kind: PageRunKind) {
    if count == 0 {
        return;
    }
    if let Some(last) = runs.last_mut() {
        if last.kind == kind && last.first + last.count == first {
            last.count += count;
            return;
        }
    }
    runs.push(PageRun { first, count, kind });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sysv_area(start: u64, pages: u64, offset: u64, id: i32) -> MemoryArea {
        MemoryArea {
            start,
            end: start + pages * PAGE_SIZE,
            prot: Protection {
                read: true,
                write: true,
                exec: false,
            },
            shared: true,
            offset,
            path: Some("/SYSV00000000".into()),
            deleted: true,
            maps_dev: 1,
            inode: id as u64,
            file: None,
            kind: AreaKind::SysvShm(SysvSegment {
                id,
                key: 0,
                size: 3 * PAGE_SIZE,
                mode: 0o600,
                uid: 0,
                gid: 0,
            }),
            pages: Vec::new(),
        }
    }

    #[test]
    fn sysv_attachments_join_the_areas_of_one_shmat() {
        let p = PAGE_SIZE;
        let areas = [
            // One attachment split by an mprotect.
            sysv_area(0x10000, 1, 0, 7),
            sysv_area(0x10000 + p, 1, p, 7),
            sysv_area(0x10000 + 2 * p, 1, 2 * p, 7),
            // The same segment attached again right after: offsets restart.
            sysv_area(0x10000 + 3 * p, 3, 0, 7),
            // Another segment.
            sysv_area(0x20000, 3, 0, 8),
        ];
        assert_eq!(
            sysv_attachments(&areas),
            vec![vec![0, 1, 2], vec![3], vec![4]]
        );
        let AreaKind::SysvShm(s) = areas[0].kind else {
            unreachable!()
        };
        assert_eq!(s.mapped_len(), 3 * p);
        assert!(!s.removed());
    }

    #[test]
    fn runs_merge_when_contiguous_and_same_kind() {
        let mut runs = Vec::new();
        push_run(&mut runs, 0, 2, PageRunKind::Stored);
        push_run(&mut runs, 2, 3, PageRunKind::Stored);
        push_run(&mut runs, 5, 1, PageRunKind::Zero);
        push_run(&mut runs, 7, 1, PageRunKind::Zero);
        push_run(&mut runs, 8, 0, PageRunKind::Stored);
        assert_eq!(
            runs,
            vec![
                PageRun {
                    first: 0,
                    count: 5,
                    kind: PageRunKind::Stored
                },
                PageRun {
                    first: 5,
                    count: 1,
                    kind: PageRunKind::Zero
                },
                PageRun {
                    first: 7,
                    count: 1,
                    kind: PageRunKind::Zero
                },
            ]
        );
    }
}
