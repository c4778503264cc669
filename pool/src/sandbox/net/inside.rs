//! The sandbox init's part of networking: joining the namespace the server
//! made, and binding the generated `resolv.conf`.

use std::fs;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use nix::mount::{mount, MsFlags};
use nix::sched::{setns, CloneFlags};

use crate::sandbox::SandboxSpec;

/// Joins the network namespace the server made (outbound), or returns
/// `CLONE_NEWNET` for the caller's `unshare` (a new namespace with only
/// loopback).
pub(in crate::sandbox) fn namespace_flags(spec: &SandboxSpec) -> Result<CloneFlags, String> {
    let Some(fd) = spec.netns_fd else {
        return Ok(CloneFlags::CLONE_NEWNET);
    };
    // SAFETY: the launcher placed the namespace descriptor at this number
    // and nothing else in this process uses it; we own and close it.
    let ns = unsafe { OwnedFd::from_raw_fd(fd) };
    setns(&ns, CloneFlags::CLONE_NEWNET).map_err(|e| format!("join network namespace: {e}"))?;
    Ok(CloneFlags::empty())
}

/// Lexically resolves `target` (a symlink's content, found at `link` inside
/// `root`) to a path under `root`; `None` if it leaves it.
fn resolve_inside(root: &Path, link: &Path, target: &Path) -> Option<PathBuf> {
    let start = if target.is_absolute() {
        PathBuf::new()
    } else {
        link.strip_prefix(root).ok()?.parent()?.to_path_buf()
    };
    let mut parts: Vec<std::ffi::OsString> = start
        .components()
        .filter_map(|c| match c {
            Component::Normal(p) => Some(p.to_os_string()),
            _ => None,
        })
        .collect();
    for c in target.components() {
        match c {
            Component::Normal(p) => parts.push(p.to_os_string()),
            Component::ParentDir => {
                parts.pop()?;
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    let mut out = root.to_path_buf();
    out.extend(parts);
    Some(out)
}

/// Binds `spec.resolv_conf` (a host file) read-only over the sandbox's
/// `/etc/resolv.conf`, under `root` before the pivot. A symlinked
/// `/etc/resolv.conf` (systemd-resolved's stub) is followed to where it
/// points inside the sandbox, and the file is created there if that part of
/// the tree is the sandbox's own (not a host bind).
pub(in crate::sandbox) fn bind_resolv_conf(root: &Path, spec: &SandboxSpec) -> Result<(), String> {
    let Some(src) = &spec.resolv_conf else {
        return Ok(());
    };
    let mut dst = root.join("etc/resolv.conf");
    for _ in 0..8 {
        match fs::symlink_metadata(&dst) {
            Ok(m) if m.file_type().is_symlink() => {
                let target =
                    fs::read_link(&dst).map_err(|e| format!("readlink {}: {e}", dst.display()))?;
                dst = resolve_inside(root, &dst, &target).ok_or_else(|| {
                    format!(
                        "/etc/resolv.conf points outside the root: {}",
                        target.display()
                    )
                })?;
            }
            Ok(_) => break,
            Err(_) => {
                if let Some(dir) = dst.parent() {
                    fs::create_dir_all(dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
                }
                fs::write(&dst, b"").map_err(|e| format!("create {}: {e}", dst.display()))?;
                break;
            }
        }
    }
    mount(
        Some(src.as_path()),
        &dst,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|e| format!("bind {} on {}: {e}", src.display(), dst.display()))?;
    mount(
        None::<&str>,
        &dst,
        None::<&str>,
        MsFlags::MS_BIND
            | MsFlags::MS_REMOUNT
            | MsFlags::MS_RDONLY
            | MsFlags::MS_NOSUID
            | MsFlags::MS_NODEV,
        None::<&str>,
    )
    .map_err(|e| format!("remount {} read-only: {e}", dst.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symlinks_resolve_inside_the_root() {
        let root = Path::new("/run/sb");
        let link = Path::new("/run/sb/etc/resolv.conf");
        assert_eq!(
            resolve_inside(
                root,
                link,
                Path::new("/run/systemd/resolve/stub-resolv.conf")
            ),
            Some(PathBuf::from(
                "/run/sb/run/systemd/resolve/stub-resolv.conf"
            ))
        );
        assert_eq!(
            resolve_inside(root, link, Path::new("../run/resolvconf/resolv.conf")),
            Some(PathBuf::from("/run/sb/run/resolvconf/resolv.conf"))
        );
        assert_eq!(resolve_inside(root, link, Path::new("../../../x")), None);
    }
}
