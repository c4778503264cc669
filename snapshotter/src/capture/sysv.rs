//! System V shared memory (`shmget` / `shmat`, `/SYSV<key> (deleted)` in
//! `/proc/PID/maps`, the segment's id as the inode) attached only by the
//! captured process or tree: kept as [`AreaKind::SysvShm`] areas, the
//! segment's pages that exist stored like anonymous memory's. Restore:
//! `pool::restore::sysv` (each copy makes its own segment in its own IPC
//! namespace, with the same id, and attaches it where the original did).
//!
//! ```text
//! classify   "/SYSV…" shared  -> SysvShm (id from the inode, key from the
//!            name; the rest filled by describe)
//! describe   in a thread that joined the process's IPC namespace (setns):
//!            /proc/sysvipc/shm -> key, size, mode (SHM_DEST: removed),
//!            owner, nattch. nattch counts the mappings of the segment in
//!            every process; more than the captured process or tree's
//!            own (its /proc/N/maps) refuses: another process attaches it
//!            and a copy could not share it with that process
//! whole      the areas of one attachment (one or several after an
//!            mprotect) cover the segment from offset 0 to its end;
//!            a partly unmapped attachment is refused (thaw re-attaches
//!            whole segments)
//! ranges     in the same kind of thread: shmat(id, SHM_RDONLY) here,
//!            mincore over the area's part of the segment: only the pages
//!            that exist are read from the process (reading a hole through
//!            its mapping would allocate it), shmdt
//! ```
//!
//! Segments no process of the tree attaches (an id kept in a variable and
//! attached later) are not in the snapshot: the copy's IPC namespace does
//! not have them. POSIX shared memory (`/dev/shm`) stays refused.

use std::collections::HashMap;
use std::os::fd::AsRawFd;

use super::pagemap::Range;
use super::refuse::Refusal;
use super::CaptureError;
use crate::state::{sysv_attachments as attachments, AreaKind, MemoryArea, SysvSegment, PAGE_SIZE};

/// `SHM_RDONLY`.
const SHM_RDONLY: i32 = 0o10000;

/// Whether `area` is a System V shared memory attachment.
pub fn is_sysv(area: &MemoryArea) -> bool {
    matches!(area.kind, AreaKind::SysvShm(_))
}

/// The placeholder segment of a `/SYSV<key>` maps entry with inode
/// `inode` (its id); [`describe`] fills in the rest.
pub fn placeholder(path: &str, inode: u64) -> SysvSegment {
    let key = path
        .strip_prefix("/SYSV")
        .and_then(|hex| u32::from_str_radix(hex, 16).ok())
        .unwrap_or(0) as i32;
    SysvSegment {
        id: inode as i32,
        key,
        size: 0,
        mode: 0,
        uid: 0,
        gid: 0,
    }
}

/// One line of `/proc/sysvipc/shm`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct SysvLine {
    segment: SysvSegment,
    nattch: u64,
}

/// Parses `/proc/sysvipc/shm`: `key shmid perms size cpid lpid nattch uid
/// gid ...` (key and ids in decimal, perms in octal).
fn parse_sysvipc(text: &str) -> HashMap<i32, SysvLine> {
    let mut out = HashMap::new();
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 9 {
            continue;
        }
        let parsed = (|| {
            Some(SysvLine {
                segment: SysvSegment {
                    key: f[0].parse::<i64>().ok()? as i32,
                    id: f[1].parse().ok()?,
                    mode: u32::from_str_radix(f[2], 8).ok()?,
                    size: f[3].parse().ok()?,
                    uid: f[7].parse().ok()?,
                    gid: f[8].parse().ok()?,
                },
                nattch: f[6].parse().ok()?,
            })
        })();
        if let Some(l) = parsed {
            out.insert(l.segment.id, l);
        }
    }
    out
}

/// Runs `f` on a thread that joined the IPC namespace of `pid` (System V
/// ids and `/proc/sysvipc` are per namespace; a sandboxed process has its
/// own). The namespace is the caller's thread's own when they are the
/// same; the thread ends with `f`.
fn in_ipc_namespace<T: Send>(
    pid: i32,
    f: impl FnOnce() -> Result<T, CaptureError> + Send,
) -> Result<T, CaptureError> {
    let path = format!("/proc/{pid}/ns/ipc");
    let ns = std::fs::File::open(&path).map_err(|source| CaptureError::Proc {
        path: path.clone(),
        source,
    })?;
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                // SAFETY: setns on a namespace descriptor we own; it changes
                // only this thread's IPC namespace (a thread of its own).
                if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWIPC) } != 0 {
                    return Err(CaptureError::Proc {
                        path: path.clone(),
                        source: std::io::Error::last_os_error(),
                    });
                }
                f()
            })
            .join()
            .expect("the IPC namespace thread does not panic")
    })
}

/// How many areas of the processes `pids` map the segment `id` (their
/// `/proc/N/maps` lines `/SYSV…` with that inode).
fn mappings_in(pids: &[i32], id: i32) -> u64 {
    let mut n = 0;
    for pid in pids {
        let Ok(maps) = std::fs::read_to_string(format!("/proc/{pid}/maps")) else {
            continue;
        };
        for line in maps.lines().filter(|l| l.contains(" /SYSV")) {
            if line.split_whitespace().nth(4) == Some(&id.to_string()) {
                n += 1;
            }
        }
    }
    n
}

/// Fills in every System V area of `pid` from its IPC namespace and
/// refuses what a copy could not restore (see the module doc); `tree`:
/// the host pids of the captured tree (empty: `pid` alone).
pub fn describe(pid: i32, tree: &[i32], areas: &mut [MemoryArea]) -> Result<(), CaptureError> {
    if !areas.iter().any(is_sysv) {
        return Ok(());
    }
    let text = in_ipc_namespace(pid, || {
        std::fs::read_to_string("/proc/sysvipc/shm").map_err(|source| CaptureError::Proc {
            path: "/proc/sysvipc/shm".into(),
            source,
        })
    })?;
    let lines = parse_sysvipc(&text);
    let own: Vec<i32> = if tree.is_empty() {
        vec![pid]
    } else {
        tree.to_vec()
    };
    let refuse = |area: &MemoryArea, name: String| {
        Err(CaptureError::refused(
            pid,
            Refusal::SharedMemory {
                start: area.start,
                end: area.end,
                name,
            },
        ))
    };
    for area in areas.iter_mut() {
        let AreaKind::SysvShm(placeholder) = area.kind else {
            continue;
        };
        let id = placeholder.id;
        let Some(line) = lines.get(&id) else {
            return refuse(
                area,
                format!("System V shared memory segment {id}, not in /proc/sysvipc/shm"),
            );
        };
        let ours = mappings_in(&own, id);
        if line.nattch > ours {
            return refuse(
                area,
                format!(
                    "System V shared memory segment {id} (key {:#x}) attached {} more time(s) outside the captured process{}",
                    line.segment.key as u32,
                    line.nattch - ours,
                    if tree.len() > 1 { " tree" } else { "" }
                ),
            );
        }
        area.kind = AreaKind::SysvShm(line.segment);
    }
    check_whole(pid, areas)
}

/// Refuses an attachment that does not cover its whole segment (see the
/// module doc): consecutive areas of one segment, each starting where the
/// previous one ended in memory and in the segment, must start at offset 0
/// and end at the segment's end.
fn check_whole(pid: i32, areas: &[MemoryArea]) -> Result<(), CaptureError> {
    for group in attachments(areas) {
        let first = &areas[group[0]];
        let last = &areas[*group.last().expect("a group has an area")];
        let AreaKind::SysvShm(segment) = first.kind else {
            continue;
        };
        let covered = last.offset + last.len() - first.offset;
        if first.offset != 0 || covered != segment.mapped_len() {
            return Err(CaptureError::refused(
                pid,
                Refusal::SharedMemory {
                    start: first.start,
                    end: last.end,
                    name: format!(
                        "System V shared memory segment {} attached in part (bytes {:#x}-{:#x} of {:#x}); thaw re-attaches whole segments",
                        segment.id,
                        first.offset,
                        first.offset + covered,
                        segment.mapped_len()
                    ),
                },
            ));
        }
    }
    Ok(())
}

/// The address ranges of `area` (a System V attachment of `pid`) whose
/// pages exist in the segment (see the module doc).
pub fn ranges(pid: i32, area: &MemoryArea) -> Result<Vec<Range>, CaptureError> {
    let AreaKind::SysvShm(segment) = area.kind else {
        return Ok(Vec::new());
    };
    let pages = (area.len() / PAGE_SIZE) as usize;
    let resident = in_ipc_namespace(pid, || {
        let failed = |call: &str| CaptureError::Proc {
            path: format!("{call} of System V segment {}", segment.id),
            source: std::io::Error::last_os_error(),
        };
        // SAFETY: a new read-only attachment at an address the kernel
        // picks; nothing here reads through it, and it is detached below.
        let at = unsafe { libc::shmat(segment.id, std::ptr::null(), SHM_RDONLY) };
        if at as isize == -1 {
            return Err(failed("shmat"));
        }
        let mut vec = vec![0u8; pages];
        // SAFETY: mincore over a part of the attachment just made (the
        // area lies inside the segment: `check_whole`), into a buffer of
        // one byte per page.
        let r = unsafe {
            libc::mincore(
                at.cast::<u8>().add(area.offset as usize).cast(),
                area.len() as usize,
                vec.as_mut_ptr(),
            )
        };
        let err = (r != 0).then(|| failed("mincore"));
        // SAFETY: detaches the attachment made above.
        unsafe { libc::shmdt(at) };
        match err {
            Some(e) => Err(e),
            None => Ok(vec),
        }
    })?;
    let mut out: Vec<Range> = Vec::new();
    for (i, byte) in resident.iter().enumerate() {
        if byte & 1 == 0 {
            continue;
        }
        let start = area.start + i as u64 * PAGE_SIZE;
        match out.last_mut() {
            Some(last) if last.end == start => last.end = start + PAGE_SIZE,
            _ => out.push(Range {
                start,
                end: start + PAGE_SIZE,
            }),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sysvipc_lines_are_parsed() {
        let text = "       key      shmid perms                  size  cpid  lpid nattch   uid   gid  cuid  cgid      atime      dtime      ctime                   rss                  swap\n\
             1234     32768   600                 10000   100   100      2  1000  1001     0     0 1 2 3 4096 0\n\
             0     32769  1600                  8192   100   100      1     0     0     0     0 1 2 3 0 0\n";
        let lines = parse_sysvipc(text);
        let a = lines[&32768];
        assert_eq!(
            (a.segment.key, a.segment.size, a.segment.mode, a.nattch),
            (1234, 10000, 0o600, 2)
        );
        assert_eq!((a.segment.uid, a.segment.gid), (1000, 1001));
        assert_eq!(a.segment.mapped_len(), 3 * PAGE_SIZE);
        let b = lines[&32769];
        assert!(b.segment.removed());
    }

    #[test]
    fn placeholder_reads_the_key_from_the_name() {
        assert_eq!(placeholder("/SYSV000004d2", 7).key, 1234);
        assert_eq!(placeholder("/SYSV00000000", 7).id, 7);
    }
}
