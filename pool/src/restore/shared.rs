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
//!
//! In a process tree ([`make_for_tree`]) an object several processes map
//! is one memfd for all of them: made in the root's stub once every
//! process exists (so no fork copies its number), and taken by each other
//! process that maps it with `pidfd_getfd` injected into that process's
//! stub (the stubs are still privileged then):
//!
//! ```text
//! root stub:   memfd_create + ftruncate               per object of the tree
//! each child:  pidfd_open(root's pid in the copy's namespace)
//!              pidfd_getfd(pidfd, root's memfd)       per object it maps
//!              close(pidfd)
//! then each process's restore maps its areas from its own number, writes
//! its areas' stored pages (the same content wherever several map it) and
//! closes its numbers; the root, prepared last, closes its own.
//! ```

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

/// The shmem objects of `areas`: `((device, inode), size)`, the size the
/// largest offset + length of the object's areas.
fn objects<'a>(areas: impl Iterator<Item = &'a MemoryArea>) -> Vec<((u64, u64), u64)> {
    let mut sizes: Vec<((u64, u64), u64)> = Vec::new();
    for area in areas.filter(|a| is_shared_anonymous(a)) {
        let key = (area.maps_dev, area.inode);
        let end = area.offset + area.len();
        match sizes.iter_mut().find(|(k, _)| *k == key) {
            Some((_, size)) => *size = (*size).max(end),
            None => sizes.push((key, end)),
        }
    }
    sizes
}

/// Makes one memfd per shmem object of `sizes` in `remote`'s stub; returns
/// each object's number there.
fn create_memfds(
    remote: &mut Remote,
    scratch: u64,
    sizes: &[((u64, u64), u64)],
) -> Result<HashMap<(u64, u64), i32>, RestoreError> {
    let mut by_object = HashMap::new();
    if sizes.is_empty() {
        return Ok(by_object);
    }
    let name = scratch + SCRATCH_LEN - 64;
    remote.write(name, NAME)?;
    for &(key, size) in sizes {
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
        by_object.insert(key, fd as i32);
    }
    Ok(by_object)
}

/// The memfds of one process: its number of each object, by area index.
fn for_areas(areas: &[MemoryArea], by_object: &HashMap<(u64, u64), i32>) -> SharedMemfds {
    let mut memfds = SharedMemfds {
        by_area: HashMap::new(),
        fds: by_object.values().copied().collect(),
    };
    for (index, area) in areas.iter().enumerate() {
        if is_shared_anonymous(area) {
            if let Some(&fd) = by_object.get(&(area.maps_dev, area.inode)) {
                memfds.by_area.insert(index, fd);
            }
        }
    }
    memfds
}

/// Makes one memfd per shmem object of `areas` in the copy (see the module
/// doc); `scratch` is the mapped scratch area.
pub fn make(
    remote: &mut Remote,
    scratch: u64,
    areas: &[MemoryArea],
) -> Result<SharedMemfds, RestoreError> {
    let by_object = create_memfds(remote, scratch, &objects(areas.iter()))?;
    Ok(for_areas(areas, &by_object))
}

/// The pid `host_pid` has in its innermost pid namespace (the last of
/// `NSpid` in its status).
fn namespace_pid(host_pid: i32) -> Result<i32, RestoreError> {
    let path = format!("/proc/{host_pid}/status");
    let text = std::fs::read_to_string(&path).map_err(|source| RestoreError::Io {
        what: format!("read {path}"),
        source,
    })?;
    text.lines()
        .find_map(|l| l.strip_prefix("NSpid:"))
        .and_then(|ids| ids.split_whitespace().last())
        .and_then(|id| id.parse().ok())
        .ok_or_else(|| RestoreError::Unsupported(format!("{path} has no NSpid")))
}

/// A process tree's shared memory (see the module doc): one memfd per
/// shmem object any process of the tree maps, made in `root`'s stub and
/// taken by every child in `children` (in `areas` order after the root's)
/// that maps it. Returns each process's memfds, the root's first, for
/// [`super::Driving::shared_memfds`]. Every stub must exist, with its
/// descriptors arranged (nothing is made in a stub that forks after this).
pub fn make_for_tree(
    root: &mut Remote,
    children: &mut [Remote],
    scratch: u64,
    areas: &[&[MemoryArea]],
) -> Result<Vec<SharedMemfds>, RestoreError> {
    let sizes = objects(areas.iter().flat_map(|a| a.iter()));
    let root_fds = create_memfds(root, scratch, &sizes)?;
    let mut out = vec![for_areas(areas[0], &root_fds)];
    if sizes.is_empty() {
        out.extend(children.iter().map(|_| SharedMemfds::default()));
        return Ok(out);
    }
    let root_pid = namespace_pid(root.pid())?;
    for (child, areas) in children.iter_mut().zip(&areas[1..]) {
        let wanted: Vec<(u64, u64)> = objects(areas.iter()).into_iter().map(|(k, _)| k).collect();
        let mut by_object = HashMap::new();
        if !wanted.is_empty() {
            let pidfd = child.sys(
                "pidfd_open (the root, for its shared memory)",
                libc::SYS_pidfd_open,
                [root_pid as u64, 0, 0, 0, 0, 0],
            )?;
            for key in wanted {
                let fd = child.sys(
                    "pidfd_getfd (shared memory)",
                    libc::SYS_pidfd_getfd,
                    [pidfd, root_fds[&key] as u64, 0, 0, 0, 0],
                )?;
                by_object.insert(key, fd as i32);
            }
            child.sys("close (pidfd)", libc::SYS_close, [pidfd, 0, 0, 0, 0, 0])?;
        }
        out.push(for_areas(areas, &by_object));
    }
    Ok(out)
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
