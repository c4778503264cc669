//! System V shared memory of the copy (the restore side of
//! `snapshotter::capture::sysv`: [`AreaKind::SysvShm`] areas). Every copy
//! runs in an IPC namespace of its own (a sandbox's; `thaw restore`'s init
//! is cloned with `CLONE_NEWIPC`), where each segment is made again with
//! its saved id, so the ids the program keeps stay right, and no other copy
//! nor the original ever sees it:
//!
//! ```text
//! per segment, from a thread of the restorer that joined the copy's IPC
//! namespace (setns on /proc/STUB/ns/ipc):
//!   shmctl(id, IPC_STAT)        there already: made by this restorer for
//!                               another process of the tree (its creator
//!                               pid is ours), which filled it: skip to
//!                               attach; made by anyone else: an error
//!   /proc/sys/kernel/shm_next_id = id   (the namespace's next id, once)
//!   shmget(key, size, IPC_CREAT | IPC_EXCL | mode)  -> must be id
//!   shmat here, every stored page copied in from the image, shmdt
//!   shmctl(IPC_SET)             owner uid, gid and permission bits
//! per attachment (a run of areas, see state::sysv_attachments), injected
//! into the stub after the mapping batch:
//!   shmat(id, start, SHM_REMAP [| SHM_RDONLY if no area was writable]
//!         [| SHM_EXEC if one was executable])     -> must be start
//!   mprotect(area)              each area whose protection differs
//! then, per segment removed before the capture (SHM_DEST):
//!   shmctl(id, IPC_RMID)        in the stub, after its attachments
//! ```
//!
//! The same in both memory modes: the segment's pages are written into it,
//! never registered with userfaultfd nor mapped from the image. A segment
//! locked with `SHM_LOCK` comes back unlocked; its creator is the copy's
//! restorer (root), its owner the saved one.

use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;

use snapshotter::state::{sysv_attachments, AreaKind, MemoryArea, SysvSegment, PAGE_SIZE};
use snapshotter::store::{AreaPages, ImageLayout, PageSlot};

use super::remote::Remote;
use super::RestoreError;

/// `SHM_RDONLY`.
const SHM_RDONLY: u64 = 0o10000;
/// `SHM_REMAP`: replace what is mapped there.
const SHM_REMAP: u64 = 0o40000;
/// `SHM_EXEC`.
const SHM_EXEC: u64 = 0o100000;

fn io(what: String) -> impl FnOnce(std::io::Error) -> RestoreError {
    move |source| RestoreError::Io { what, source }
}

/// Runs `f` on a thread of the restorer that joined the IPC namespace of
/// `pid` (the stub); the thread ends with `f`.
fn in_ipc_namespace<T: Send>(
    pid: i32,
    f: impl FnOnce() -> Result<T, RestoreError> + Send,
) -> Result<T, RestoreError> {
    let path = format!("/proc/{pid}/ns/ipc");
    let ns = std::fs::File::open(&path).map_err(io(format!("open {path}")))?;
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                // SAFETY: setns on a namespace descriptor we own; it changes
                // only this thread's IPC namespace (a thread of its own).
                if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWIPC) } != 0 {
                    return Err(io(format!("setns {path}"))(std::io::Error::last_os_error()));
                }
                f()
            })
            .join()
            .expect("the IPC namespace thread does not panic")
    })
}

/// Makes `segment` in the current thread's IPC namespace unless it is
/// there already, and fills it with the stored pages of the areas of
/// `areas` that attach it (see the module doc).
fn make_here(
    segment: &SysvSegment,
    areas: &[MemoryArea],
    pages: &[AreaPages],
    image: &std::fs::File,
    layout: &ImageLayout,
) -> Result<(), RestoreError> {
    let id = segment.id;
    let failed = |call: &str| io(format!("{call} of System V segment {id}"));
    // SAFETY: IPC_STAT into a zeroed shmid_ds of ours.
    let mut ds: libc::shmid_ds = unsafe { std::mem::zeroed() };
    // SAFETY: shmctl with a pointer to `ds`, valid for the call.
    if unsafe { libc::shmctl(id, libc::IPC_STAT, &mut ds) } == 0 {
        // Made by this restorer for another process of the tree: attach
        // it. Anything else in a namespace that should be the copy's
        // alone is an error, never a segment to share.
        if ds.shm_cpid as u32 == std::process::id() {
            return Ok(());
        }
        return Err(RestoreError::Unsupported(format!(
            "System V segment {id} exists already in the copy's IPC namespace (made by pid {}); the copy's namespace must be its own",
            ds.shm_cpid
        )));
    }
    std::fs::write("/proc/sys/kernel/shm_next_id", id.to_string())
        .map_err(io("write /proc/sys/kernel/shm_next_id".into()))?;
    let flags = libc::IPC_CREAT | libc::IPC_EXCL | (segment.mode & 0o777) as i32;
    // SAFETY: shmget takes numbers only.
    let made = unsafe { libc::shmget(segment.key, segment.size as usize, flags) };
    if made < 0 {
        return Err(failed("shmget")(std::io::Error::last_os_error()));
    }
    if made != id {
        return Err(RestoreError::Unsupported(format!(
            "System V segment {id} was made again as {made}: the copy's IPC namespace did not give the saved id"
        )));
    }
    // SAFETY: a new writable attachment at an address the kernel picks,
    // written below through `at` within the segment's mapped length only,
    // and detached before this returns.
    let at = unsafe { libc::shmat(id, std::ptr::null(), 0) };
    if at as isize == -1 {
        return Err(failed("shmat")(std::io::Error::last_os_error()));
    }
    let len = segment.mapped_len() as usize;
    // SAFETY: the attachment is `len` bytes long, readable and writable,
    // and nothing else refers to it until shmdt below.
    let memory = unsafe { std::slice::from_raw_parts_mut(at.cast::<u8>(), len) };
    let mut filled = Ok(());
    'areas: for (index, area) in areas.iter().enumerate() {
        if !matches!(area.kind, AreaKind::SysvShm(s) if s.id == id) {
            continue;
        }
        let base = layout.areas[index].offset;
        for (i, slot) in pages[index].iter().enumerate() {
            if !matches!(slot, PageSlot::Hash(_)) {
                continue;
            }
            let i = i as u64;
            let offset = (area.offset + i * PAGE_SIZE) as usize;
            let Some(page) = memory.get_mut(offset..offset + PAGE_SIZE as usize) else {
                continue;
            };
            if let Err(e) = image.read_exact_at(page, base + i * PAGE_SIZE) {
                filled = Err(io("read the image".into())(e));
                break 'areas;
            }
        }
    }
    // SAFETY: detaches the attachment made above; `memory` is not used
    // after this.
    unsafe { libc::shmdt(at) };
    filled?;
    // SAFETY: shmid_ds is plain data; IPC_SET reads only the owner and
    // the permission bits.
    let mut ds: libc::shmid_ds = unsafe { std::mem::zeroed() };
    ds.shm_perm.uid = segment.uid;
    ds.shm_perm.gid = segment.gid;
    ds.shm_perm.mode = (segment.mode & 0o777) as u16;
    // SAFETY: shmctl with a pointer to `ds`, valid for the call.
    if unsafe { libc::shmctl(id, libc::IPC_SET, &mut ds) } != 0 {
        return Err(failed("shmctl(IPC_SET)")(std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Restores the System V attachments of the process `remote` is (see the
/// module doc): after the mapping batch, which leaves their ranges free.
pub fn restore(
    remote: &mut Remote,
    areas: &[MemoryArea],
    pages: &[AreaPages],
    image: &std::fs::File,
    layout: &ImageLayout,
) -> Result<(), RestoreError> {
    let groups = sysv_attachments(areas);
    if groups.is_empty() {
        return Ok(());
    }
    let mut segments: Vec<SysvSegment> = Vec::new();
    for group in &groups {
        if let AreaKind::SysvShm(s) = areas[group[0]].kind {
            if !segments.iter().any(|m| m.id == s.id) {
                segments.push(s);
            }
        }
    }
    in_ipc_namespace(remote.pid(), || {
        for segment in &segments {
            make_here(segment, areas, pages, image, layout)?;
        }
        Ok(())
    })?;
    for group in &groups {
        let AreaKind::SysvShm(segment) = areas[group[0]].kind else {
            continue;
        };
        let members = || group.iter().map(|&i| &areas[i]);
        let writable = members().any(|a| a.prot.write);
        let exec = members().any(|a| a.prot.exec);
        let mut flags = SHM_REMAP;
        let mut prot = libc::PROT_READ;
        if !writable {
            flags |= SHM_RDONLY;
        } else {
            prot |= libc::PROT_WRITE;
        }
        if exec {
            flags |= SHM_EXEC;
            prot |= libc::PROT_EXEC;
        }
        let start = areas[group[0]].start;
        let what = format!("shmat (System V segment {} at {start:#x})", segment.id);
        let at = remote.sys(
            &what,
            libc::SYS_shmat,
            [segment.id as u64, start, flags, 0, 0, 0],
        )?;
        if at != start {
            return Err(RestoreError::Unsupported(format!(
                "{what} attached it at {at:#x}"
            )));
        }
        for area in members().filter(|a| a.prot.to_prot() != prot) {
            remote.sys(
                &format!(
                    "mprotect (System V segment {} at {:#x})",
                    segment.id, area.start
                ),
                libc::SYS_mprotect,
                [area.start, area.len(), area.prot.to_prot() as u64, 0, 0, 0],
            )?;
        }
    }
    for segment in segments.iter().filter(|s| s.removed()) {
        remote.sys(
            &format!("shmctl(IPC_RMID) (System V segment {})", segment.id),
            libc::SYS_shmctl,
            [segment.id as u64, libc::IPC_RMID as u64, 0, 0, 0, 0],
        )?;
    }
    Ok(())
}
