//! `PR_SET_MM` fields, auxv and the executable.
//!
//! `/proc/pid/stat` fields (1-based, counted after the `(comm)` field which
//! may itself contain spaces and parentheses):
//!
//! ```text
//! 26 start_code  27 end_code  28 start_stack
//! 45 start_data  46 end_data  47 start_brk
//! 48 arg_start   49 arg_end   50 env_start  51 env_end
//! ```
//!
//! The current `brk` is in no proc file; it is read by running `brk(0)` in
//! the process. `/proc/pid/auxv` is a sequence of native-endian
//! `(u64 type, u64 value)` pairs ending with `AT_NULL`.

use super::inject::Injector;
use super::procfs;
use super::ptrace::Seized;
use super::CaptureError;
use crate::state::{FileIdentity, MmState};

/// Fields of `/proc/pid/stat`, 1-based, as numbers; index 0 unused, 1 and 2
/// (pid and comm) set to 0.
fn stat_fields(pid: i32) -> Result<Vec<u64>, CaptureError> {
    let text = procfs::read_text(pid, "stat")?;
    let bad = |what: &str| CaptureError::Parse {
        path: format!("/proc/{pid}/stat"),
        what: what.to_string(),
    };
    let close = text.rfind(')').ok_or_else(|| bad("no ')' after comm"))?;
    let mut fields = vec![0u64; 3];
    for word in text[close + 1..].split_whitespace() {
        // Field 3 is the state letter; everything after is numeric.
        fields.push(word.parse::<i64>().map(|n| n as u64).unwrap_or(0));
    }
    if fields.len() < 52 {
        return Err(bad("fewer than 51 fields"));
    }
    Ok(fields)
}

/// Parses auxv bytes into pairs.
pub fn parse_auxv(bytes: &[u8]) -> Vec<(u64, u64)> {
    bytes
        .chunks_exact(16)
        .map(|pair| {
            let key = u64::from_ne_bytes(pair[..8].try_into().unwrap());
            let value = u64::from_ne_bytes(pair[8..].try_into().unwrap());
            (key, value)
        })
        .collect()
}

/// Identity of the file behind a `/proc` link (followed, so it works for
/// deleted files and other mount namespaces).
pub fn identity(path: &str) -> Result<FileIdentity, CaptureError> {
    let st = nix::sys::stat::stat(path).map_err(|errno| CaptureError::Proc {
        path: path.to_string(),
        source: errno.into(),
    })?;
    Ok(FileIdentity {
        dev: st.st_dev,
        inode: st.st_ino,
        size: st.st_size as u64,
        mtime_sec: st.st_mtime,
        mtime_nsec: st.st_mtime_nsec,
    })
}

/// Reads the mm fields of the held process.
pub fn capture(seized: &mut Seized, injector: &Injector) -> Result<MmState, CaptureError> {
    let pid = seized.pid();
    let f = stat_fields(pid)?;
    let brk = injector.syscall(seized, libc::SYS_brk, [0; 6])?;
    if brk < 0 {
        return Err(CaptureError::Injected {
            pid,
            call: "brk(0)".into(),
            errno: -brk as i32,
        });
    }
    let mut auxv = parse_auxv(&procfs::read_bytes(pid, "auxv")?);
    // Keep everything up to and including AT_NULL.
    if let Some(end) = auxv.iter().position(|&(key, _)| key == libc::AT_NULL) {
        auxv.truncate(end + 1);
    }
    Ok(MmState {
        start_code: f[26],
        end_code: f[27],
        start_stack: f[28],
        start_data: f[45],
        end_data: f[46],
        start_brk: f[47],
        brk: brk as u64,
        arg_start: f[48],
        arg_end: f[49],
        env_start: f[50],
        env_end: f[51],
        auxv,
        exe_path: procfs::read_link(pid, "exe")?,
        exe: identity(&format!("/proc/{pid}/exe"))?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_stat_and_auxv() {
        let pid = std::process::id() as i32;
        let f = stat_fields(pid).unwrap();
        assert!(f[26] < f[27], "start_code < end_code");
        assert!(f[48] < f[49], "arg_start < arg_end");
        let auxv = parse_auxv(&procfs::read_bytes(pid, "auxv").unwrap());
        // SAFETY: getauxval only reads the process's own auxiliary vector.
        let pagesz = unsafe { libc::getauxval(libc::AT_PAGESZ) };
        assert!(auxv.contains(&(libc::AT_PAGESZ, pagesz)));
    }
}
