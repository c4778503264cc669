//! Anonymous shared memory (`mmap(MAP_SHARED | MAP_ANONYMOUS)`, shown in
//! `/proc/PID/maps` as `/dev/zero (deleted)` with a shmem inode) that only
//! the captured process maps: kept as an [`AreaKind::Anonymous`] area with
//! `shared` set, its content stored like private memory. Restore:
//! `pool::restore::shared` (each copy gets its own, shared by the copy's
//! own processes, never with the original or other copies).
//!
//! ```text
//! classify      shared + "/dev/zero (deleted)"  -> Anonymous, shared
//! check_unshared every /proc/N/maps of the host: any process outside the
//!               captured tree that maps the same shmem inode refuses the
//!               capture (a copy could not share it with that process);
//!               processes of the tree may share one (each records its
//!               areas; the restore makes one memfd per object for all)
//! ranges        the shmem object opened through /proc/PID/map_files,
//!               SEEK_DATA / SEEK_HOLE: only the pages that exist are read
//!               (reading a hole would allocate it in the original)
//! ```
//!
//! System V shared memory (`/SYSV…`), POSIX shared memory (`/dev/shm`),
//! named shmem (`[anon_shmem:…]`) and other memfds stay refused
//! ([`Refusal::SharedMemory`]).

use std::os::fd::AsRawFd;

use super::maps::MapsEntry;
use super::pagemap::Range;
use super::refuse::Refusal;
use super::CaptureError;
use crate::state::{AreaKind, MemoryArea, PAGE_SIZE};

/// Whether `entry` is anonymous shared memory (see the module doc).
pub fn is_shared_anonymous(entry: &MapsEntry) -> bool {
    entry.shared && entry.deleted && entry.inode != 0 && entry.path == "/dev/zero"
}

/// Whether `area` is anonymous shared memory kept by [`is_shared_anonymous`].
pub fn is_shared_anonymous_area(area: &MemoryArea) -> bool {
    area.shared && area.kind == AreaKind::Anonymous
}

/// Refuses the capture of `pid` when a process other than `pid` and the
/// processes of its tree (`tree`, host pids) maps one of its anonymous
/// shared areas (same device and inode in its maps).
pub fn check_unshared(pid: i32, tree: &[i32], areas: &[MemoryArea]) -> Result<(), CaptureError> {
    let ours: Vec<&MemoryArea> = areas
        .iter()
        .filter(|a| is_shared_anonymous_area(a))
        .collect();
    if ours.is_empty() {
        return Ok(());
    }
    let dir = std::fs::read_dir("/proc").map_err(|source| CaptureError::Proc {
        path: "/proc".into(),
        source,
    })?;
    for entry in dir.flatten() {
        let Some(other) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        if other == pid || tree.contains(&other) {
            continue;
        }
        // Processes come and go: one that cannot be read maps nothing now.
        let Ok(maps) = std::fs::read_to_string(format!("/proc/{other}/maps")) else {
            continue;
        };
        for line in maps.lines().filter(|l| l.ends_with("/dev/zero (deleted)")) {
            let mut fields = line.split_whitespace();
            let (Some(_), Some(_), Some(_), Some(dev), Some(inode)) = (
                fields.next(),
                fields.next(),
                fields.next(),
                fields.next(),
                fields.next(),
            ) else {
                continue;
            };
            let Some(inode) = inode.parse::<u64>().ok() else {
                continue;
            };
            let dev = dev.split_once(':').and_then(|(major, minor)| {
                Some(
                    (u64::from_str_radix(major, 16).ok()? << 32)
                        | u64::from_str_radix(minor, 16).ok()?,
                )
            });
            if let Some(area) = ours
                .iter()
                .find(|a| a.inode == inode && Some(a.maps_dev) == dev)
            {
                return Err(CaptureError::refused(
                    pid,
                    Refusal::SharedMemory {
                        start: area.start,
                        end: area.end,
                        name: format!(
                            "anonymous shared memory also mapped by pid {other}, outside the captured process{}",
                            if tree.len() > 1 { " tree" } else { "" }
                        ),
                    },
                ));
            }
        }
    }
    Ok(())
}

/// The address ranges of `area` (anonymous shared memory of `pid`) whose
/// pages exist in the shmem object.
pub fn ranges(pid: i32, area: &MemoryArea) -> Result<Vec<Range>, CaptureError> {
    let path = format!("/proc/{pid}/map_files/{:x}-{:x}", area.start, area.end);
    let file = std::fs::File::open(&path).map_err(|source| CaptureError::Proc {
        path: path.clone(),
        source,
    })?;
    let fd = file.as_raw_fd();
    let start = area.offset;
    let end = area.offset + (area.end - area.start);
    let seek = |from: u64, whence: i32| -> Result<Option<u64>, CaptureError> {
        // SAFETY: lseek on a descriptor we own; no memory is passed.
        let at = unsafe { libc::lseek(fd, from as libc::off_t, whence) };
        if at < 0 {
            let errno = nix::errno::Errno::last();
            // ENXIO: no data (or hole) at or after `from`.
            if errno == nix::errno::Errno::ENXIO {
                return Ok(None);
            }
            return Err(CaptureError::Proc {
                path: path.clone(),
                source: errno.into(),
            });
        }
        Ok(Some(at as u64))
    };
    let mut out = Vec::new();
    let mut at = start;
    while at < end {
        let Some(data) = seek(at, libc::SEEK_DATA)? else {
            break;
        };
        if data >= end {
            break;
        }
        let hole = seek(data, libc::SEEK_HOLE)?.unwrap_or(end).min(end);
        let first = data / PAGE_SIZE * PAGE_SIZE;
        let last = hole.div_ceil(PAGE_SIZE) * PAGE_SIZE;
        out.push(Range {
            start: area.start + (first - start),
            end: area.start + (last.min(end) - start),
        });
        at = last.max(at + PAGE_SIZE);
    }
    Ok(out)
}
