//! Data at rest: the data directory is the server's alone.
//!
//! Snapshots and the page store hold function memory, records hold `env`
//! secrets, the hash seed makes hashes predictable. So:
//!
//! ```text
//! <data>/                      0700
//!   functions/ snapshots/      directories 0700, files 0600
//!   store/ hashseed
//!   functions/<n>/v<N>/code/   0755 / 0644 (0755 if executable): the code,
//!   runtime/                   and the runtime, which the function's user
//!                              reads only through the sandbox's binds
//!                              (/var/task, /var/runtime); on the host they
//!                              sit in the 0700 data directory
//!   run/                       sandbox mount points
//! ```
//!
//! New files get these modes when they are written (the registry's and the
//! store's writers); [`secure_data_dir`] fixes a tree written by an older
//! thaw, at every start. It walks only the entries thaw writes
//! ([`PRIVATE_ENTRIES`]), never other files a mistaken `--data-dir` might
//! hold. The token file is the operator's: a token file
//! others may read is narrowed to 0600, with a warning.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::{Context, Result};

/// Mode of private directories.
pub const DIR_MODE: u32 = 0o700;
/// Mode of private files.
pub const FILE_MODE: u32 = 0o600;

/// The entries of a data directory that are private, walked by
/// [`secure_data_dir`].
pub const PRIVATE_ENTRIES: [&str; 4] = ["functions", "snapshots", "store", "hashseed"];

/// How many entries [`secure_data_dir`] changed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Fixed {
    /// Directories narrowed to 0700.
    pub dirs: usize,
    /// Files narrowed to 0600.
    pub files: usize,
}

/// Whether `rel` (a path relative to the data directory) is a tree the
/// function's user reads through a bind: a version's code.
fn is_shared_tree(rel: &Path) -> bool {
    let parts: Vec<_> = rel.components().map(|c| c.as_os_str()).collect();
    match parts.as_slice() {
        [functions, _name, version, code, ..] => {
            *functions == "functions"
                && version.to_string_lossy().starts_with('v')
                && *code == "code"
        }
        _ => false,
    }
}

fn set_mode(path: &Path, mode: u32) -> Result<bool> {
    let meta = fs::symlink_metadata(path).with_context(|| format!("stat {}", path.display()))?;
    if meta.permissions().mode() & 0o7777 == mode {
        return Ok(false);
    }
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {:o} {}", mode, path.display()))?;
    Ok(true)
}

/// Makes `data_dir` 0700 and its [`PRIVATE_ENTRIES`], but the code trees,
/// 0700 (directories) or 0600 (files). Symbolic links are not followed.
pub fn secure_data_dir(data_dir: &Path) -> Result<Fixed> {
    let mut fixed = Fixed::default();
    if set_mode(data_dir, DIR_MODE)? {
        fixed.dirs += 1;
    }
    for name in PRIVATE_ENTRIES {
        let path = data_dir.join(name);
        match fs::symlink_metadata(&path) {
            Ok(meta) => visit(data_dir, Path::new(name), meta.file_type(), &mut fixed)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("stat {}", path.display())),
        }
    }
    Ok(fixed)
}

fn walk(root: &Path, rel: &Path, fixed: &mut Fixed) -> Result<()> {
    let dir = root.join(rel);
    for entry in fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))? {
        let entry = entry.with_context(|| format!("listing {}", dir.display()))?;
        let ty = entry
            .file_type()
            .with_context(|| format!("stat {}", entry.path().display()))?;
        visit(root, &rel.join(entry.file_name()), ty, fixed)?;
    }
    Ok(())
}

fn visit(root: &Path, rel: &Path, ty: fs::FileType, fixed: &mut Fixed) -> Result<()> {
    if is_shared_tree(rel) {
        return Ok(());
    }
    let path = root.join(rel);
    if ty.is_dir() {
        if set_mode(&path, DIR_MODE)? {
            fixed.dirs += 1;
        }
        walk(root, rel, fixed)?;
    } else if ty.is_file() && set_mode(&path, FILE_MODE)? {
        fixed.files += 1;
    }
    Ok(())
}

/// Narrows a token file others may read to 0600. Returns whether it did.
pub fn narrow_token_file(path: &Path) -> Result<bool> {
    let meta = fs::metadata(path).with_context(|| format!("stat {}", path.display()))?;
    if meta.permissions().mode() & 0o077 == 0 {
        return Ok(false);
    }
    let mode = meta.permissions().mode() & 0o700;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {:o} {}", mode, path.display()))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn mode(p: &Path) -> u32 {
        fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn narrows_everything_but_code_and_runtime() {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        let code = data.join("functions/f/v1/code/pkg");
        fs::create_dir_all(&code).unwrap();
        fs::create_dir_all(data.join("runtime/python")).unwrap();
        fs::create_dir_all(data.join("store/packs")).unwrap();
        for (p, m) in [
            ("functions/f/function.json", 0o644),
            ("functions/f/v1/code/main.py", 0o644),
            ("functions/f/v1/code/pkg/run.sh", 0o755),
            ("runtime/python/bootstrap.py", 0o644),
            ("store/packs/pack-1.pack", 0o644),
            ("hashseed", 0o644),
        ] {
            fs::write(data.join(p), b"x").unwrap();
            fs::set_permissions(data.join(p), fs::Permissions::from_mode(m)).unwrap();
        }
        for d in [
            "",
            "functions",
            "functions/f",
            "functions/f/v1",
            "store",
            "store/packs",
        ] {
            fs::set_permissions(data.join(d), fs::Permissions::from_mode(0o755)).unwrap();
        }
        // A link to a file outside is not followed.
        let outside = tmp.path().join("outside");
        fs::write(&outside, b"x").unwrap();
        fs::set_permissions(&outside, fs::Permissions::from_mode(0o644)).unwrap();
        symlink(&outside, data.join("link")).unwrap();
        symlink(&outside, data.join("functions/f/link")).unwrap();
        // Files thaw did not write are left alone.
        fs::write(data.join("notes.txt"), b"x").unwrap();
        fs::set_permissions(data.join("notes.txt"), fs::Permissions::from_mode(0o644)).unwrap();

        let fixed = secure_data_dir(&data).unwrap();
        assert_eq!(fixed, Fixed { dirs: 6, files: 3 });
        for d in [
            "",
            "functions",
            "functions/f",
            "functions/f/v1",
            "store/packs",
        ] {
            assert_eq!(mode(&data.join(d)), 0o700, "{d}");
        }
        for f in [
            "functions/f/function.json",
            "store/packs/pack-1.pack",
            "hashseed",
        ] {
            assert_eq!(mode(&data.join(f)), 0o600, "{f}");
        }
        assert_eq!(mode(&data.join("functions/f/v1/code/main.py")), 0o644);
        assert_eq!(mode(&data.join("functions/f/v1/code/pkg/run.sh")), 0o755);
        assert_eq!(mode(&data.join("runtime/python/bootstrap.py")), 0o644);
        assert_eq!(mode(&outside), 0o644);
        assert_eq!(mode(&data.join("notes.txt")), 0o644);
        // A second pass has nothing to do.
        assert_eq!(secure_data_dir(&data).unwrap(), Fixed::default());
    }

    #[test]
    fn token_files_others_read_are_narrowed() {
        let tmp = tempfile::tempdir().unwrap();
        let t = tmp.path().join("tokens");
        fs::write(&t, b"admin:0123456789abcdef0123\n").unwrap();
        fs::set_permissions(&t, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(narrow_token_file(&t).unwrap());
        assert_eq!(mode(&t), 0o600);
        assert!(!narrow_token_file(&t).unwrap());
    }
}
