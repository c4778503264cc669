//! inotify instances of the copy (the restore side of
//! `snapshotter::capture::inotify`, state `FdKind::Inotify`): the instance
//! is made by the restorer with the other kernel objects
//! (`inotify_init1`, [`super::kobj::create`]); its watches are added by
//! the copy itself in the state batch (step 3), so every path is resolved
//! in the copy's own mount namespace (inside its sandbox), never the
//! host's:
//!
//! ```text
//! per watch, in wd order:
//!   while the next wd the kernel hands out is below the saved one:
//!     inotify_add_watch(fd, "/proc/self", IN_ATTRIB) ; inotify_rm_watch
//!     read(fd, 16 bytes)                       its IN_IGNORED event
//!   inotify_add_watch(fd, path, mask)          -> the saved wd
//! ```
//!
//! (An event of a watch added just before, arriving between the removal
//! and the read, would be read in place of the `IN_IGNORED`: a window of
//! microseconds while the copy is made.)
//!
//! The kernel hands out wds in increasing order from 1 and never reuses
//! one soon, so adding and removing a placeholder watch skips a number: the
//! copy's watches get the program's wds. A watched path that is gone
//! fails the restore (naming the call).

use snapshotter::state::InotifyWatch;

use super::batch::Batch;
use super::RestoreError;

/// The placeholder watched to skip a wd: the copy's own `/proc/PID`
/// directory, which no program watches.
const PLACEHOLDER: &[u8] = b"/proc/self\0";
/// Size of an inotify event without a name (`struct inotify_event`).
const IGNORED_EVENT: usize = 16;

/// Adds the calls that give inotify descriptor `fd` of the copy its
/// `watches` (in wd order) to `batch`.
pub fn add_watches(
    batch: &mut Batch,
    fd: i32,
    watches: &[InotifyWatch],
) -> Result<(), RestoreError> {
    let mut next = 1;
    let mut placeholder = None;
    for w in watches {
        if w.wd < next {
            return Err(RestoreError::Unsupported(format!(
                "inotify fd {fd}: watch descriptors out of order ({})",
                w.wd
            )));
        }
        while next < w.wd {
            let at = match placeholder {
                Some(at) => at,
                None => *placeholder.insert(batch.data(PLACEHOLDER)?),
            };
            batch.call(
                format!("inotify_add_watch(fd {fd}, placeholder for wd {next})"),
                libc::SYS_inotify_add_watch,
                [fd as u64, at, libc::IN_ATTRIB as u64, 0, 0, 0],
            );
            batch.call(
                format!("inotify_rm_watch(fd {fd}, wd {next})"),
                libc::SYS_inotify_rm_watch,
                [fd as u64, next as u64, 0, 0, 0, 0],
            );
            // The removal queued one IN_IGNORED event (16 bytes, no name):
            // read it, so the program does not see it.
            let event = batch.data(&[0u8; IGNORED_EVENT])?;
            batch.call(
                format!("read(fd {fd}, IN_IGNORED of wd {next})"),
                libc::SYS_read,
                [fd as u64, event, IGNORED_EVENT as u64, 0, 0, 0],
            );
            next += 1;
        }
        let mut path = w.path.clone().into_bytes();
        path.push(0);
        let at = batch.data(&path)?;
        batch.call(
            format!("inotify_add_watch(fd {fd}, {}, wd {})", w.path, w.wd),
            libc::SYS_inotify_add_watch,
            [fd as u64, at, w.mask as u64, 0, 0, 0],
        );
        next = w.wd + 1;
    }
    Ok(())
}
