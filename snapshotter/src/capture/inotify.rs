//! inotify instances ([`FdKind::Inotify`]): `/proc/PID/fdinfo/N` lists one
//! line per watch,
//!
//! ```text
//! inotify wd:3 ino:1a2b sdev:800001 mask:8000fce ignored_mask:0 fhandle-bytes:8 fhandle-type:1 f_handle:2b1a000000000000
//! ```
//!
//! (`sdev` is the kernel's `dev_t`: major << 20 | minor). The watched file
//! is found from its handle: `open_by_handle_at` on a directory of its
//! mount, opened through `/proc/PID/root` and the mount point of
//! `/proc/PID/mountinfo`, checked against `ino`, and named with `readlink`
//! of the opened descriptor. Events queued and not read yet would be lost:
//! refused (`FIONREAD` on a duplicate of the descriptor). Restore:
//! `pool::restore::inotify`.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use super::kobj::Grabber;
use super::procfs;
use super::CaptureError;
use crate::state::{FdKind, InotifyWatch};

/// One parsed watch line.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Line {
    wd: i32,
    ino: u64,
    /// (major, minor).
    dev: (u32, u32),
    mask: u32,
    handle_type: i32,
    handle: Vec<u8>,
}

fn parse_line(line: &str) -> Option<Line> {
    let rest = line.strip_prefix("inotify ")?;
    let mut fields = std::collections::HashMap::new();
    for part in rest.split_whitespace() {
        let (k, v) = part.split_once(':')?;
        fields.insert(k, v);
    }
    let hex = |k: &str| u64::from_str_radix(fields.get(k)?, 16).ok();
    let sdev = hex("sdev")?;
    let bytes: usize = fields
        .get("fhandle-bytes")
        .and_then(|v| usize::from_str_radix(v, 16).ok())?;
    let text = fields.get("f_handle")?;
    let handle: Vec<u8> = (0..text.len() / 2)
        .map(|i| u8::from_str_radix(&text[i * 2..i * 2 + 2], 16).ok())
        .collect::<Option<_>>()?;
    if handle.len() != bytes {
        return None;
    }
    Some(Line {
        wd: fields.get("wd")?.parse().ok()?,
        ino: hex("ino")?,
        dev: ((sdev >> 20) as u32, (sdev & 0xfffff) as u32),
        mask: hex("mask")? as u32,
        handle_type: i32::from_str_radix(fields.get("fhandle-type")?, 16).ok()?,
        handle,
    })
}

/// The mount point (in the process's view) of a mount of device `dev`,
/// one that mounts the filesystem's root first.
fn mount_point(mountinfo: &str, dev: (u32, u32)) -> Option<String> {
    let mounts: Vec<(&str, &str)> = mountinfo
        .lines()
        .filter_map(|line| {
            let mut f = line.split_whitespace();
            let (_, _, majmin, root, point) =
                (f.next()?, f.next()?, f.next()?, f.next()?, f.next()?);
            let (major, minor) = majmin.split_once(':')?;
            (major.parse() == Ok(dev.0) && minor.parse() == Ok(dev.1)).then_some((root, point))
        })
        .collect();
    mounts
        .iter()
        .find(|(root, _)| *root == "/")
        .or(mounts.first())
        .map(|(_, point)| point.to_string())
}

/// The path of the watched file of `line`, as process `pid` names it.
fn resolve(pid: i32, fd: i32, mountinfo: &str, line: &Line) -> Result<String, CaptureError> {
    let bad = |what: String| CaptureError::Parse {
        path: format!("/proc/{pid}/fdinfo/{fd}"),
        what,
    };
    let point = mount_point(mountinfo, line.dev).ok_or_else(|| {
        bad(format!(
            "watch {}: no mount of device {}:{}",
            line.wd, line.dev.0, line.dev.1
        ))
    })?;
    let dir = std::fs::File::open(format!("/proc/{pid}/root{point}")).map_err(|source| {
        CaptureError::Proc {
            path: format!("/proc/{pid}/root{point}"),
            source,
        }
    })?;
    // struct file_handle { u32 handle_bytes; i32 handle_type; u8 f_handle[]; }
    let mut raw = Vec::with_capacity(8 + line.handle.len());
    raw.extend_from_slice(&(line.handle.len() as u32).to_ne_bytes());
    raw.extend_from_slice(&line.handle_type.to_ne_bytes());
    raw.extend_from_slice(&line.handle);
    // Kept in u32 words: the kernel's struct is 4-byte aligned.
    raw.resize(raw.len().next_multiple_of(4), 0);
    let mut words: Vec<u32> = raw
        .chunks_exact(4)
        .map(|c| u32::from_ne_bytes(c.try_into().expect("4 bytes")))
        .collect();
    // SAFETY: open_by_handle_at reads a file_handle of the declared size
    // from `words` and returns a new descriptor or -1.
    let opened = unsafe {
        libc::syscall(
            libc::SYS_open_by_handle_at,
            dir.as_raw_fd(),
            words.as_mut_ptr(),
            libc::O_PATH,
        )
    };
    if opened < 0 {
        return Err(CaptureError::Sys {
            pid,
            call: "open_by_handle_at (inotify watch)",
            errno: nix::errno::Errno::last(),
        });
    }
    // SAFETY: a fresh descriptor nobody else owns.
    let file = unsafe { OwnedFd::from_raw_fd(opened as i32) };
    let st = nix::sys::stat::fstat(&file).map_err(|errno| CaptureError::Sys {
        pid,
        call: "fstat (inotify watch)",
        errno,
    })?;
    if st.st_ino != line.ino {
        return Err(bad(format!(
            "watch {}: its handle opened inode {}, not {}",
            line.wd, st.st_ino, line.ino
        )));
    }
    let path =
        std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd())).map_err(|source| {
            CaptureError::Proc {
                path: format!("/proc/self/fd/{}", file.as_raw_fd()),
                source,
            }
        })?;
    let path = path.to_string_lossy().into_owned();
    if !path.starts_with('/') || path.ends_with(" (deleted)") {
        return Err(bad(format!(
            "watch {}: {path:?} has no path a copy could watch",
            line.wd
        )));
    }
    Ok(path)
}

/// The watches of inotify descriptor `fd` of `pid` (`text`: its fdinfo),
/// or why it cannot be copied.
pub fn capture(
    pid: i32,
    fd: i32,
    text: &str,
    grabber: &mut Grabber,
) -> Result<Result<FdKind, &'static str>, CaptureError> {
    let dup = grabber.grab(fd)?;
    let mut queued: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int we own.
    if unsafe { libc::ioctl(dup.as_raw_fd(), libc::FIONREAD, &mut queued) } != 0 {
        return Err(CaptureError::Sys {
            pid,
            call: "FIONREAD (inotify)",
            errno: nix::errno::Errno::last(),
        });
    }
    if queued > 0 {
        return Ok(Err(
            "an inotify instance with events not read yet; they would be lost",
        ));
    }
    let mountinfo = procfs::read_text(pid, "mountinfo")?;
    let mut watches = Vec::new();
    for raw in text.lines().filter(|l| l.starts_with("inotify ")) {
        let line = parse_line(raw).ok_or_else(|| CaptureError::Parse {
            path: format!("/proc/{pid}/fdinfo/{fd}"),
            what: format!("inotify line {raw:?}"),
        })?;
        watches.push(InotifyWatch {
            wd: line.wd,
            path: resolve(pid, fd, &mountinfo, &line)?,
            mask: line.mask,
        });
    }
    watches.sort_by_key(|w| w.wd);
    Ok(Ok(FdKind::Inotify { watches }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_watch_line() {
        let line = "inotify wd:3 ino:1a2b sdev:800001 mask:8000fce ignored_mask:0 fhandle-bytes:8 fhandle-type:1 f_handle:2b1a000000000000";
        let l = parse_line(line).unwrap();
        assert_eq!(l.wd, 3);
        assert_eq!(l.ino, 0x1a2b);
        assert_eq!(l.dev, (8, 1));
        assert_eq!(l.mask, 0x8000fce);
        assert_eq!(l.handle_type, 1);
        assert_eq!(l.handle, vec![0x2b, 0x1a, 0, 0, 0, 0, 0, 0]);
        assert!(parse_line("inotify wd:3 ino:zz").is_none());
    }

    #[test]
    fn finds_the_mount_point_of_a_device() {
        let info = "22 1 0:21 / / rw - tmpfs tmpfs rw\n23 22 8:1 / /usr ro - ext4 /dev/sda1 rw\n";
        assert_eq!(mount_point(info, (8, 1)).as_deref(), Some("/usr"));
        assert_eq!(mount_point(info, (9, 9)), None);
    }
}
