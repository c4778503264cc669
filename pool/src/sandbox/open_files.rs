//! The files a restored copy gets, opened inside its sandbox as the
//! function would open them (issue 12, finding 1).
//!
//! A stub sandbox's pid 2 (the stub, still root) opens each [`OpenFile`]
//! before it waits for the restorer: in the sandbox's mount namespace and
//! root (so `/` is the sandbox's root, `/var/task` its code, and host paths
//! outside the runtime's allow-list do not exist), with the function's
//! filesystem credentials:
//!
//! ```text
//! setgroups([])                    the function has no supplementary groups
//! setfsgid(gid), setfsuid(uid)     permission checks as the function; moving
//!                                  fsuid from 0 clears CAP_DAC_OVERRIDE,
//!                                  CAP_DAC_READ_SEARCH, CAP_FOWNER, ... from
//!                                  the effective set (capabilities(7))
//! capset(effective = 0)            and every other capability too
//! open(path, flags) -> dup3 to fd  at the number the plan gave it
//! setfsuid(0), setfsgid(0),        back to root for the restorer (the
//! capset(effective = permitted)    permitted set was never touched)
//! ```
//!
//! The restorer then takes each descriptor back with `pidfd_getfd` and
//! checks it is the file the snapshot saw (`restore::fds`). A failure is a
//! setup error naming the path, its descriptor and the kernel's reason.

use std::ffi::CString;

use serde::{Deserialize, Serialize};

/// How the stub's report of a file it could not open begins, so the
/// launcher tells it apart from other setup failures
/// ([`super::LaunchError::OpenFile`]).
pub const FAILED: &str = "open for the copy: ";

/// One file the stub opens at a given descriptor number.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenFile {
    /// The descriptor number it must have in the stub.
    pub fd: i32,
    /// The copy's path (inside the sandbox).
    pub path: String,
    /// `open` flags: access mode (or `O_PATH`), status flags, `O_DIRECTORY`;
    /// never `O_CREAT`.
    pub flags: i32,
}

/// `_LINUX_CAPABILITY_VERSION_3`: two 32-bit words per set.
const CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// `struct __user_cap_header_struct`.
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

/// `struct __user_cap_data_struct`, one of two.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const _: () = assert!(std::mem::size_of::<CapHeader>() == 8);
const _: () = assert!(std::mem::size_of::<CapData>() == 12);

fn capget() -> Result<[CapData; 2], String> {
    let mut header = CapHeader {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: capget writes two CapData (version 3) into `data` and may
    // update `header`; both live for the call.
    let r = unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) };
    if r < 0 {
        return Err(format!("capget: {}", std::io::Error::last_os_error()));
    }
    Ok(data)
}

fn capset(data: &[CapData; 2]) -> Result<(), String> {
    let mut header = CapHeader {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    // SAFETY: capset reads the header and two CapData, which live for the
    // call.
    let r = unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) };
    if r < 0 {
        return Err(format!("capset: {}", std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Sets the filesystem uid and checks it took (`setfsuid` reports no
/// error; a second call with an invalid id returns the current one).
fn set_fsuid(uid: u32) -> Result<(), String> {
    // SAFETY: setfsuid only changes this process's credentials.
    unsafe { libc::setfsuid(uid) };
    // SAFETY: as above; -1 is never set, the call returns the current id.
    let now = unsafe { libc::setfsuid(u32::MAX) } as u32;
    if now != uid {
        return Err(format!("setfsuid({uid}) left fsuid {now}"));
    }
    Ok(())
}

/// [`set_fsuid`] for the filesystem gid.
fn set_fsgid(gid: u32) -> Result<(), String> {
    // SAFETY: setfsgid only changes this process's credentials.
    unsafe { libc::setfsgid(gid) };
    // SAFETY: as above.
    let now = unsafe { libc::setfsgid(u32::MAX) } as u32;
    if now != gid {
        return Err(format!("setfsgid({gid}) left fsgid {now}"));
    }
    Ok(())
}

/// Opens `files` at their numbers as uid `uid` / gid `gid` with no groups
/// and no capabilities (see the module documentation), then gives the
/// calling process back its root filesystem ids and its effective
/// capabilities. Single-threaded callers only (the stub).
pub fn open_as_function(files: &[OpenFile], uid: u32, gid: u32) -> Result<(), String> {
    if files.is_empty() {
        return Ok(());
    }
    let saved = capget()?;
    nix::unistd::setgroups(&[]).map_err(|e| format!("setgroups: {e}"))?;
    set_fsgid(gid)?;
    set_fsuid(uid)?;
    let mut none = saved;
    for set in &mut none {
        set.effective = 0;
    }
    let opened = capset(&none).and_then(|()| files.iter().try_for_each(open_at_number));
    // Back to root whatever happened: the restorer needs the stub
    // privileged (and a failed stub reports and exits anyway).
    let back = set_fsuid(0)
        .and_then(|()| set_fsgid(0))
        .and_then(|()| capset(&saved));
    opened?;
    back
}

/// Opens one file and moves it to its number.
fn open_at_number(file: &OpenFile) -> Result<(), String> {
    let failed = |what: &str, e: std::io::Error| {
        format!(
            "{FAILED}{what} {} (fd {}) inside the sandbox as the function: {e}",
            file.path, file.fd
        )
    };
    let path = CString::new(file.path.as_str())
        .map_err(|_| format!("{FAILED}the path of fd {} has a NUL byte", file.fd))?;
    let flags = (file.flags & !(libc::O_CREAT | libc::O_TRUNC | libc::O_CLOEXEC)) | libc::O_NOCTTY;
    // SAFETY: open with a NUL-terminated path; no O_CREAT, so no mode.
    let fd = unsafe { libc::open(path.as_ptr(), flags) };
    if fd < 0 {
        return Err(failed("open", std::io::Error::last_os_error()));
    }
    if fd != file.fd {
        // SAFETY: dup3 onto the planned number (nothing of the stub's own is
        // there: the plan's numbers are apart from 0-4 and the sandbox's
        // reserved descriptors), then the temporary is closed.
        let r = unsafe { libc::dup3(fd, file.fd, 0) };
        let err = std::io::Error::last_os_error();
        // SAFETY: `fd` is the descriptor opened above, ours to close.
        unsafe { libc::close(fd) };
        if r < 0 {
            return Err(failed("place", err));
        }
    }
    Ok(())
}
