//! The sandbox's root filesystem, built by pid 1 in its new mount namespace.

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::unistd::{chdir, pivot_root};

use super::SandboxSpec;

/// Device nodes a sandbox gets (bound from the host's).
const DEVICES: &[&str] = &["null", "zero", "full", "random", "urandom"];

fn err(what: &str, path: &Path, e: impl std::fmt::Display) -> String {
    format!("{what} {}: {e}", path.display())
}

fn none() -> Option<&'static str> {
    None
}

fn bind_ro(src: &Path, dst: &Path) -> Result<(), String> {
    mount(Some(src), dst, none(), MsFlags::MS_BIND, none()).map_err(|e| err("bind", src, e))?;
    mount(
        none(),
        dst,
        none(),
        MsFlags::MS_BIND
            | MsFlags::MS_REMOUNT
            | MsFlags::MS_RDONLY
            | MsFlags::MS_NOSUID
            | MsFlags::MS_NODEV,
        none(),
    )
    .map_err(|e| err("remount read-only", dst, e))
}

fn mkdir(path: &Path, mode: u32) -> Result<(), String> {
    fs::create_dir_all(path).map_err(|e| err("mkdir", path, e))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(|e| err("chmod", path, e))
}

fn tmpfs(dst: &Path, flags: MsFlags, options: &str) -> Result<(), String> {
    mount(Some("tmpfs"), dst, Some("tmpfs"), flags, Some(options))
        .map_err(|e| err("mount tmpfs on", dst, e))
}

fn inside(root: &Path, host_path: &Path) -> PathBuf {
    root.join(host_path.strip_prefix("/").unwrap_or(host_path))
}

/// Builds the root filesystem at `spec.root_dir` and pivots into it.
pub(super) fn build_root(spec: &SandboxSpec) -> Result<(), String> {
    let slash = Path::new("/");
    // Nothing we mount may propagate back to the host.
    mount(
        none(),
        slash,
        none(),
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        none(),
    )
    .map_err(|e| err("make private", slash, e))?;
    let root = spec.root_dir.as_path();
    tmpfs(
        root,
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        "size=1m,mode=0755",
    )?;

    bind_host_paths(root, &spec.binds)?;
    write_users(root, spec.uid, spec.gid)?;

    let task = root.join("var/task");
    mkdir(&task, 0o755)?;
    bind_ro(&spec.code_dir, &task)?;
    if let Some(runtime) = &spec.runtime_dir {
        let dst = root.join("var/runtime");
        mkdir(&dst, 0o755)?;
        bind_ro(runtime, &dst)?;
    }
    let tmp = root.join("tmp");
    mkdir(&tmp, 0o1777)?;
    tmpfs(
        &tmp,
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        &format!("size={}m,mode=1777", spec.tmp_mb.max(1)),
    )?;
    build_dev(&root.join("dev"))?;
    super::net::inside::bind_resolv_conf(root, spec)?;
    let proc_dir = root.join("proc");
    mkdir(&proc_dir, 0o555)?;
    mount(
        Some("proc"),
        &proc_dir,
        Some("proc"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        none(),
    )
    .map_err(|e| err("mount proc on", &proc_dir, e))?;

    for hidden in &spec.mask {
        let dst = inside(root, hidden);
        if dst.is_dir() {
            tmpfs(
                &dst,
                MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
                "size=4k,mode=0000",
            )?;
        }
    }

    // The skeleton itself becomes read-only.
    mount(
        none(),
        root,
        none(),
        MsFlags::MS_BIND
            | MsFlags::MS_REMOUNT
            | MsFlags::MS_RDONLY
            | MsFlags::MS_NOSUID
            | MsFlags::MS_NODEV,
        none(),
    )
    .map_err(|e| err("remount read-only", root, e))?;

    // pivot_root(".", ".") stacks the old root under the new one; detaching
    // it leaves only the new root.
    chdir(root).map_err(|e| err("chdir", root, e))?;
    pivot_root(".", ".").map_err(|e| err("pivot_root into", root, e))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(|e| err("detach old root", root, e))?;
    chdir("/").map_err(|e| err("chdir", slash, e))?;
    Ok(())
}

/// pid 1 of a recycled sandbox ([`super::recycle`]): replaces `/tmp` with
/// a fresh tmpfs, as [`build_root`] made it (what a copy wrote there goes
/// with the old one).
pub(super) fn fresh_tmp(spec: &SandboxSpec) -> Result<(), String> {
    let tmp = Path::new("/tmp");
    umount2(tmp, MntFlags::MNT_DETACH).map_err(|e| err("unmount", tmp, e))?;
    tmpfs(
        tmp,
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        &format!("size={}m,mode=1777", spec.tmp_mb.max(1)),
    )
}

/// Binds the allow-list `paths` (see [`super::binds`]) read-only at the
/// same places under `root`.
fn bind_host_paths(root: &Path, paths: &[PathBuf]) -> Result<(), String> {
    let mut bound: Vec<&Path> = Vec::new();
    for path in paths {
        if bound.iter().any(|b| path.starts_with(b)) {
            continue;
        }
        let meta = match fs::symlink_metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(err("stat", path, e)),
        };
        let dst = inside(root, path);
        if let Some(parent) = dst.parent() {
            mkdir(parent, 0o755)?;
        }
        if meta.file_type().is_symlink() {
            let Ok(resolved) = fs::canonicalize(path) else {
                continue; // dangling on the host: nothing to see
            };
            if paths.iter().any(|p| p != path && resolved.starts_with(p)) {
                let target = fs::read_link(path).map_err(|e| err("readlink", path, e))?;
                symlink(&target, &dst).map_err(|e| err("symlink", &dst, e))?;
            } else {
                bind_one(&resolved, &dst)?;
            }
        } else {
            bind_one(path, &dst)?;
        }
        bound.push(path);
    }
    Ok(())
}

/// Binds the file or directory `src` read-only at `dst` (made here).
fn bind_one(src: &Path, dst: &Path) -> Result<(), String> {
    if src.is_dir() {
        mkdir(dst, 0o755)?;
    } else {
        fs::write(dst, b"").map_err(|e| err("create", dst, e))?;
    }
    bind_ro(src, dst)
}

/// The sandbox's own `/etc/passwd` and `/etc/group`: `root` and the
/// function's user only (the host's list of accounts stays out).
fn write_users(root: &Path, uid: u32, gid: u32) -> Result<(), String> {
    let etc = root.join("etc");
    mkdir(&etc, 0o755)?;
    let (user, group) = if uid == super::DEFAULT_UID {
        ("nobody", "nogroup")
    } else {
        ("function", "function")
    };
    let passwd = format!(
        "root:x:0:0:root:/root:/usr/sbin/nologin\n{user}:x:{uid}:{gid}:{user}:/tmp:/usr/sbin/nologin\n"
    );
    let groups = format!("root:x:0:\n{group}:x:{gid}:\n");
    for (name, text) in [("passwd", passwd), ("group", groups)] {
        let file = etc.join(name);
        fs::write(&file, text).map_err(|e| err("write", &file, e))?;
        fs::set_permissions(&file, fs::Permissions::from_mode(0o644))
            .map_err(|e| err("chmod", &file, e))?;
    }
    Ok(())
}

fn build_dev(dev: &Path) -> Result<(), String> {
    mkdir(dev, 0o755)?;
    tmpfs(
        dev,
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        "size=64k,mode=0755",
    )?;
    for name in DEVICES {
        let dst = dev.join(name);
        fs::write(&dst, b"").map_err(|e| err("create", &dst, e))?;
        let src = Path::new("/dev").join(name);
        mount(Some(&src), &dst, none(), MsFlags::MS_BIND, none())
            .map_err(|e| err("bind", &src, e))?;
    }
    for (name, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        let dst = dev.join(name);
        symlink(target, &dst).map_err(|e| err("symlink", &dst, e))?;
    }
    Ok(())
}

/// Brings up the loopback interface of a new network namespace.
pub(super) fn loopback_up() -> std::io::Result<()> {
    // SAFETY: plain socket(2) call; the result is checked and owned below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh, valid socket that nothing else owns.
    let sock = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let raw = std::os::fd::AsRawFd::as_raw_fd(&sock);
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS reads the flags of the named interface into req,
    // which lives for the call.
    if unsafe { libc::ioctl(raw, libc::SIOCGIFFLAGS, &mut req) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the union member ifru_flags is the one SIOCGIFFLAGS filled.
    unsafe { req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
    // SAFETY: SIOCSIFFLAGS reads req, which lives for the call.
    if unsafe { libc::ioctl(raw, libc::SIOCSIFFLAGS, &req) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
