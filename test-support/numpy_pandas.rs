//! numpy and pandas for tests that run the host's `python3` directly (no
//! deploy, so no layer): the pins of `examples/numpy-pandas/requirements.txt`
//! installed once per machine from the package index pip is configured for,
//! wheels only, into a shared folder that the tests put on `sys.path`
//! (`PYTHONPATH`). The distribution's `python3-numpy`/`python3-pandas` are
//! not needed (issue 17).
//!
//! Included by each test crate's common module (`#[path]`), so the crates
//! share one copy of this logic and one folder:
//!
//! ```text
//! /var/tmp/thaw-test-pydeps/                (or $THAW_TEST_PYDEPS)
//!   .lock                                   flock held while installing
//!   <cache tag>-<pins>/                     finished, never changed again
//!   .tmp-<cache tag>-<pins>-<pid>/          being installed, renamed when whole
//! ```
//!
//! A failed install comes back as `Err` with the end of pip's output; the
//! caller skips the test with it, or fails under `THAW_TEST_STRICT`.

#![allow(dead_code)]

use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

/// The interpreter the tests run.
pub const PYTHON: &str = "/usr/bin/python3";

/// The shared folder when `THAW_TEST_PYDEPS` does not name another.
pub const DEFAULT_ROOT: &str = "/var/tmp/thaw-test-pydeps";

/// The example's requirements: the same pins the deployed function gets.
pub const REQUIREMENTS: &str = include_str!("../examples/numpy-pandas/requirements.txt");

/// How much of pip's output a failure keeps.
const OUTPUT_TAIL: usize = 4096;

/// The folder to put on `PYTHONPATH` for `import numpy, pandas`; installs it
/// on first use (once per machine). `Err` says why it could not.
pub fn path() -> Result<PathBuf, String> {
    static ONCE: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    ONCE.get_or_init(install).clone()
}

/// `PYTHONPATH` with the numpy/pandas folder first, then `rest` (may be
/// empty).
pub fn pythonpath(rest: &[&std::path::Path]) -> Result<std::ffi::OsString, String> {
    let first = path()?;
    let all = std::iter::once(first.as_path()).chain(rest.iter().copied());
    std::env::join_paths(all).map_err(|e| format!("PYTHONPATH: {e}"))
}

/// The requirement lines (comments and blanks dropped).
pub fn pins() -> Vec<&'static str> {
    REQUIREMENTS
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect()
}

fn install() -> Result<PathBuf, String> {
    if !std::path::Path::new(PYTHON).exists() {
        return Err(format!("{PYTHON} is missing"));
    }
    let root =
        PathBuf::from(std::env::var_os("THAW_TEST_PYDEPS").unwrap_or_else(|| DEFAULT_ROOT.into()));
    let tag = Command::new(PYTHON)
        .args(["-c", "import sys; print(sys.implementation.cache_tag)"])
        .output()
        .map_err(|e| format!("cannot run {PYTHON}: {e}"))?;
    let tag = String::from_utf8_lossy(&tag.stdout).trim().to_owned();
    let name: String = std::iter::once(tag.as_str())
        .chain(pins())
        .collect::<Vec<_>>()
        .join("-")
        .replace("==", "-")
        .chars()
        .map(|c| match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '.' | '-' | '_' => c,
            _ => '_',
        })
        .collect();
    let done = root.join(&name);
    if done.is_dir() {
        return Ok(done);
    }
    std::fs::create_dir_all(&root).map_err(|e| format!("cannot create {}: {e}", root.display()))?;
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o644)
        .open(root.join(".lock"))
        .map_err(|e| format!("cannot open {}/.lock: {e}", root.display()))?;
    // Concurrent tests (and test binaries) wait here while one installs.
    let _lock = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| format!("cannot lock {}/.lock: {e}", root.display()))?;
    if done.is_dir() {
        return Ok(done);
    }
    // Under the lock every temporary folder is a dead install's: sweep them.
    for entry in std::fs::read_dir(&root).into_iter().flatten().flatten() {
        if entry.file_name().to_string_lossy().starts_with(".tmp-") {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
    let tmp = root.join(format!(".tmp-{name}-{}", std::process::id()));
    eprintln!(
        "installing {} into {} (once per machine)",
        pins().join(" "),
        done.display()
    );
    let out = Command::new(PYTHON)
        .args(["-m", "pip", "install", "--disable-pip-version-check"])
        .args(["--no-warn-script-location", "--only-binary=:all:"])
        .arg("--target")
        .arg(&tmp)
        .args(pins())
        .output()
        .map_err(|e| format!("cannot run {PYTHON} -m pip: {e}"))?;
    if !out.status.success() {
        let _ = std::fs::remove_dir_all(&tmp);
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        let mut cut = text.len().saturating_sub(OUTPUT_TAIL);
        while !text.is_char_boundary(cut) {
            cut += 1;
        }
        return Err(format!(
            "pip install {} failed ({}): {}",
            pins().join(" "),
            out.status,
            text[cut..].trim()
        ));
    }
    std::fs::rename(&tmp, &done)
        .map_err(|e| format!("cannot rename {} to {}: {e}", tmp.display(), done.display()))?;
    Ok(done)
}
