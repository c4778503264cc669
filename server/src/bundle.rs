//! Function folders: a `thaw.toml` with the settings and the code beside it.
//! `thaw deploy` and `thaw serve --deploy` read them the same way; the code
//! travels as a tar.gz (`archive`), so binary files work.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::spec::FunctionSpec;

/// Most bytes of code a folder may hold.
pub const MAX_BUNDLE: u64 = 256 << 20;

/// A function folder, ready to deploy.
#[derive(Debug)]
pub struct Bundle {
    /// Settings from `thaw.toml`.
    pub spec: FunctionSpec,
    /// Text files sent as `files` (none: everything goes in the archive).
    pub files: BTreeMap<String, String>,
    /// Gzipped tar of every other file of the folder.
    pub archive: Option<Vec<u8>>,
}

/// Reads a folder (or a `thaw.toml` path).
pub fn read_bundle(path: &Path) -> Result<Bundle> {
    let dir = if path.is_dir() {
        path.to_path_buf()
    } else {
        path.parent()
            .context("the path has no folder")?
            .to_path_buf()
    };
    let toml_path = dir.join("thaw.toml");
    let text = std::fs::read_to_string(&toml_path)
        .with_context(|| format!("reading {}", toml_path.display()))?;
    let spec = parse_spec(&text, &toml_path)?;
    let archive = pack(&dir)?;
    Ok(Bundle {
        spec,
        files: BTreeMap::new(),
        archive: Some(archive),
    })
}

/// Parses the text of a `thaw.toml` (`path` only names it in errors) into a
/// validated spec. The pure entry point the fuzz targets drive.
pub fn parse_spec(text: &str, path: &Path) -> Result<FunctionSpec> {
    let value: toml::Value =
        toml::from_str(text).with_context(|| format!("parsing {}", path.display()))?;
    let json = serde_json::to_value(&value)?;
    let fields = json
        .as_object()
        .cloned()
        .context("thaw.toml must be a table")?;
    FunctionSpec::from_fields(fields).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

fn pack(dir: &Path) -> Result<Vec<u8>> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    tar.follow_symlinks(false);
    let mut total = 0u64;
    add_dir(&mut tar, dir, Path::new(""), &mut total)?;
    Ok(tar.into_inner()?.finish()?)
}

fn add_dir(
    tar: &mut tar::Builder<flate2::write::GzEncoder<Vec<u8>>>,
    root: &Path,
    rel: &Path,
    total: &mut u64,
) -> Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(root.join(rel))?.collect::<std::io::Result<_>>()?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let name = entry.file_name();
        let name_str = name.to_string_lossy();
        if rel.as_os_str().is_empty() && name_str == "thaw.toml" {
            continue;
        }
        if name_str == "__pycache__" || name_str == ".git" {
            continue;
        }
        let rel_path = rel.join(&name);
        let ty = entry.file_type()?;
        if ty.is_dir() {
            add_dir(tar, root, &rel_path, total)?;
        } else if ty.is_file() {
            *total += entry.metadata()?.len();
            if *total > MAX_BUNDLE {
                bail!(
                    "{} holds more than {} MiB of code",
                    root.display(),
                    MAX_BUNDLE >> 20
                );
            }
            tar.append_path_with_name(entry.path(), &rel_path)?;
        }
    }
    Ok(())
}
