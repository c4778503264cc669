//! Anonymous shared memory of the copy (the restore side of
//! `snapshotter::capture::shared`: `Anonymous` areas with `shared` set).
//! Each shmem object of the snapshot (the areas with one inode) becomes a
//! memfd made inside the copy, so the copy's processes share it as the
//! original's did (a child it forks inherits the mapping) and no other
//! copy, nor the original, sees it:
//!
//! ```text
//! before the mapping batch (injected one by one):
//!   memfd_create("thaw-shared", MFD_CLOEXEC)  per object   -> fd
//!   ftruncate(fd, its size: the largest offset + length of its areas)
//! in the mapping batch ([`super::memory::map_areas`]):
//!   mmap(start, len, prot, MAP_SHARED | MAP_FIXED, fd, offset)  per area
//! then, from the restorer: the memfd opened through /proc/PID/fd/N and
//!   every stored page written at its offset (a read-only area too)
//! close(fd)                                              per object
//! ```
//!
//! The same in both memory modes: shared areas are never registered with
//! userfaultfd nor mapped from the image. The pages are written, not
//! mapped from the page cache: each copy holds its own.

use std::collections::HashMap;
use std::os::unix::fs::FileExt;

use snapshotter::state::{AreaKind, MemoryArea, PAGE_SIZE};
use snapshotter::store::{AreaPages, ImageLayout, PageSlot};

use super::batch::SCRATCH_LEN;
use super::remote::Remote;
use super::RestoreError;

/// The memfd name, written into the last bytes of the scratch area (the
/// thread records' region, unused until threads are made).
const NAME: &[u8] = b"thaw-shared\0";

/// Whether `area` is anonymous shared memory.
pub fn is_shared_anonymous(area: &MemoryArea) -> bool {
    area.shared && area.kind == AreaKind::Anonymous
}

/// The memfds made in the copy for its shared areas.
#[derive(Debug, Default)]
pub struct SharedMemfds {
    /// The copy's fd of each shared area, by area index.
    pub by_area: HashMap<usize, i32>,
    /// Every memfd (one per shmem object).
    fds: Vec<i32>,
}

/// Makes one memfd per shmem object of `areas` in the copy (see the module
/// doc); `scratch` is the mapped scratch area.
pub fn make(
    remote: &mut Remote,
    scratch: u64,
    areas: &[MemoryArea],
) -> Result<SharedMemfds, RestoreError> {
    let mut sizes: Vec<((u64, u64), u64)> = Vec::new();
    for area in areas.iter().filter(|a| is_shared_anonymous(a)) {
        let key = (area.maps_dev, area.inode);
        let end = area.offset + area.len();
        match sizes.iter_mut().find(|(k, _)| *k == key) {
            Some((_, size)) => *size = (*size).max(end),
            None => sizes.push((key, end)),
        }
    }
    let mut memfds = SharedMemfds::default();
    if sizes.is_empty() {
        return Ok(memfds);
    }
    let name = scratch + SCRATCH_LEN - 64;
    remote.write(name, NAME)?;
    let mut by_object = HashMap::new();
    for (key, size) in sizes {
        let fd = remote.sys(
            "memfd_create (shared memory)",
            libc::SYS_memfd_create,
            [name, libc::MFD_CLOEXEC as u64, 0, 0, 0, 0],
        )?;
        remote.sys(
            "ftruncate (shared memory)",
            libc::SYS_ftruncate,
            [fd, size, 0, 0, 0, 0],
        )?;
        memfds.fds.push(fd as i32);
        by_object.insert(key, fd as i32);
    }
    for (index, area) in areas.iter().enumerate() {
        if is_shared_anonymous(area) {
            memfds
                .by_area
                .insert(index, by_object[&(area.maps_dev, area.inode)]);
        }
    }
    Ok(memfds)
}

/// Writes the stored pages of every shared area into its memfd (opened
/// through `/proc/PID/fd`), then closes the memfds in the copy (its
/// mappings keep them).
pub fn fill_and_close(
    remote: &mut Remote,
    memfds: &SharedMemfds,
    areas: &[MemoryArea],
    pages: &[AreaPages],
    image: &std::fs::File,
    layout: &ImageLayout,
) -> Result<(), RestoreError> {
    let pid = remote.pid();
    let io = |what: String| move |source| RestoreError::Io { what, source };
    let mut buf = vec![0u8; PAGE_SIZE as usize];
    for (&index, &fd) in &memfds.by_area {
        let area = &areas[index];
        let path = format!("/proc/{pid}/fd/{fd}");
        let memfd = std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(io(format!("open {path}")))?;
        let base = layout.areas[index].offset;
        for (i, slot) in pages[index].iter().enumerate() {
            if !matches!(slot, PageSlot::Hash(_)) {
                continue;
            }
            let i = i as u64;
            image
                .read_exact_at(&mut buf, base + i * PAGE_SIZE)
                .map_err(io("read the image".into()))?;
            memfd
                .write_all_at(&buf, area.offset + i * PAGE_SIZE)
                .map_err(io(format!("write shared memory {path}")))?;
        }
    }
    for &fd in &memfds.fds {
        remote.sys(
            "close (shared memory)",
            libc::SYS_close,
            [fd as u64, 0, 0, 0, 0, 0],
        )?;
    }
    Ok(())
}
