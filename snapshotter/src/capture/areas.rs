//! Turning `/proc/pid/maps` entries into [`MemoryArea`]s, refusing the ones
//! a copy cannot have.
//!
//! | maps entry                                   | kind                      |
//! |----------------------------------------------|---------------------------|
//! | private file mapping                         | `FileUnchanged` (or `FilePrivate` once the page scan finds written pages) |
//! | private mapping of a deleted file or memfd   | `FileCopied`              |
//! | private `/dev/zero`, unnamed, `[anon:…]`     | `Anonymous`               |
//! | `[heap]`, `[stack]`                          | `Heap`, `Stack`           |
//! | `[vdso]`, `[vvar]`, `[vvar_vclock]`, `[vsyscall]` | same name            |
//! | read-only shared mapping of a regular file   | `FileUnchanged`           |
//! | writable shared file mapping                 | refused                   |
//! | shared mapping of a memfd the process holds open | `FileUnchanged` (the copy maps its new memfd) |
//! | shared anonymous (`/dev/zero (deleted)`) no other process maps | `Anonymous`, `shared` ([`super::shared`]) |
//! | System V shared memory nothing outside the process (or tree) attaches | `SysvShm` ([`super::sysv`]) |
//! | shared anonymous mapped by others, named shmem, other memfd, SysV attached by others, `/dev/shm` | refused |
//! | other devices, unknown pseudo-names          | refused                   |
//! | a file on a filesystem only the process's sandbox has (its root tmpfs, `/tmp`) | refused: a copy's sandbox has its own |

use std::collections::HashMap;

use super::maps::{MapsEntry, Pseudo};
use super::mm::identity;
use super::refuse::Refusal;
use super::CaptureError;
use crate::state::{AreaKind, FileIdentity, MemoryArea, Protection};

/// What `stat` of `/proc/pid/map_files/<range>` says about a mapped file.
#[derive(Debug, Clone, Copy)]
struct MappedFile {
    identity: FileIdentity,
    mode: u32,
    links: u64,
}

fn mapped_file(pid: i32, entry: &MapsEntry) -> Result<MappedFile, CaptureError> {
    let link = format!("/proc/{pid}/map_files/{:x}-{:x}", entry.start, entry.end);
    let st = nix::sys::stat::stat(link.as_str()).map_err(|errno| CaptureError::Proc {
        path: link.clone(),
        source: errno.into(),
    })?;
    Ok(MappedFile {
        identity: identity(&link)?,
        mode: st.st_mode & libc::S_IFMT,
        links: st.st_nlink,
    })
}

fn display_name(entry: &MapsEntry) -> String {
    match (entry.path.is_empty(), entry.deleted) {
        (true, _) => "anonymous".to_string(),
        (false, true) => format!("{} (deleted)", entry.path),
        (false, false) => entry.path.clone(),
    }
}

/// Classifies every entry; the first one that cannot be restored refuses
/// the capture.
pub fn classify(pid: i32, entries: &[MapsEntry]) -> Result<Vec<MemoryArea>, CaptureError> {
    let mut files: HashMap<(u64, u64), MappedFile> = HashMap::new();
    let mut areas = Vec::with_capacity(entries.len());
    let private = super::refuse::PrivateFilesystems::read(pid)?;
    for entry in entries {
        let refuse = |reason| Err(CaptureError::refused(pid, reason));
        let shared_memory = || {
            refuse(Refusal::SharedMemory {
                start: entry.start,
                end: entry.end,
                name: display_name(entry),
            })
        };
        let pseudo = entry.pseudo();
        let mut file = None;
        let kind = match pseudo {
            Pseudo::Vdso => AreaKind::Vdso,
            Pseudo::Vvar => AreaKind::Vvar,
            Pseudo::VvarVclock => AreaKind::VvarVclock,
            Pseudo::Vsyscall => AreaKind::Vsyscall,
            _ if entry.shared && pseudo != Pseudo::File => return shared_memory(),
            Pseudo::Heap => AreaKind::Heap,
            Pseudo::Stack => AreaKind::Stack,
            Pseudo::Anonymous => AreaKind::Anonymous,
            Pseudo::Other => {
                return refuse(Refusal::UnknownMapping {
                    start: entry.start,
                    end: entry.end,
                    name: display_name(entry),
                })
            }
            Pseudo::File => {
                let mapped = match files.get(&(entry.dev(), entry.inode)) {
                    Some(mapped) => *mapped,
                    None => {
                        let mapped = mapped_file(pid, entry)?;
                        files.insert((entry.dev(), entry.inode), mapped);
                        mapped
                    }
                };
                let gone = entry.deleted || mapped.links == 0;
                if !gone && private.contains(mapped.identity.dev) {
                    // A copy's sandbox has its own such filesystem.
                    return refuse(Refusal::SandboxOnlyFile {
                        start: entry.start,
                        end: entry.end,
                        path: entry.path.clone(),
                    });
                }
                let is_zero_device = mapped.mode == libc::S_IFCHR && entry.path == "/dev/zero";
                if super::shared::is_shared_anonymous(entry) {
                    // Kept only if no other process maps it
                    // (`shared::check_unshared`).
                    AreaKind::Anonymous
                } else if entry.shared && entry.path.starts_with("/SYSV") {
                    // Kept only if nothing outside the process (or tree)
                    // attaches it (`sysv::describe`).
                    AreaKind::SysvShm(super::sysv::placeholder(&entry.path, entry.inode))
                } else if entry.shared && entry.path.starts_with("/memfd:") && entry.deleted {
                    // Kept only if the process holds the memfd open
                    // (`link_memfd_areas`): the copy maps its new memfd.
                    file = Some(mapped.identity);
                    AreaKind::FileUnchanged
                } else if entry.shared {
                    if gone || mapped.mode != libc::S_IFREG || entry.path.starts_with("/dev/shm/") {
                        return shared_memory();
                    }
                    if entry.write {
                        return refuse(Refusal::SharedWritableFile {
                            start: entry.start,
                            end: entry.end,
                            path: entry.path.clone(),
                        });
                    }
                    file = Some(mapped.identity);
                    AreaKind::FileUnchanged
                } else if is_zero_device {
                    AreaKind::Anonymous
                } else if mapped.mode != libc::S_IFREG {
                    return refuse(Refusal::UnknownMapping {
                        start: entry.start,
                        end: entry.end,
                        name: display_name(entry),
                    });
                } else {
                    file = Some(mapped.identity);
                    if gone {
                        AreaKind::FileCopied
                    } else {
                        // Becomes FilePrivate if the page scan finds written pages.
                        AreaKind::FileUnchanged
                    }
                }
            }
        };
        areas.push(MemoryArea {
            start: entry.start,
            end: entry.end,
            prot: Protection {
                read: entry.read,
                write: entry.write,
                exec: entry.exec,
            },
            shared: entry.shared,
            offset: entry.offset,
            path: (!entry.path.is_empty()).then(|| entry.path.clone()),
            deleted: entry.deleted,
            maps_dev: entry.dev(),
            inode: entry.inode,
            file,
            kind,
            pages: Vec::new(),
        });
    }
    Ok(areas)
}

/// A shared mapping of a memfd is kept only when one of the process's
/// descriptors is that memfd (its content is captured there, and the copy
/// maps the new one); otherwise the capture is refused as shared memory.
pub fn link_memfd_areas(
    pid: i32,
    fds: &[crate::state::FdState],
    areas: &[MemoryArea],
) -> Result<(), CaptureError> {
    for area in areas {
        let is_memfd = area.shared
            && area.deleted
            && area
                .path
                .as_deref()
                .is_some_and(|p| p.starts_with("/memfd:"));
        if !is_memfd {
            continue;
        }
        let held = fds.iter().any(
            |f| matches!(f.kind, crate::state::FdKind::Memfd { inode, .. } if inode == area.inode),
        );
        if !held {
            return Err(CaptureError::refused(
                pid,
                Refusal::SharedMemory {
                    start: area.start,
                    end: area.end,
                    name: format!(
                        "{} (deleted), a memfd the process no longer holds open",
                        area.path.as_deref().unwrap_or_default()
                    ),
                },
            ));
        }
    }
    Ok(())
}
