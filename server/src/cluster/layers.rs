//! Dependency layers on the shared store (docs/cluster.md, "Functions with
//! a dependency file").
//!
//! A version whose code has a dependency file links a layer of the
//! writer's layer cache into its code folder (docs/dependencies.md). The
//! layer travels apart from the code, once for every version that uses it:
//!
//! ```text
//! writer                                     bucket                         reader
//!   archive <cache>/<key> to a    --->  code/<keyed hash of           <--- catalog.layers[key] = {blake3, bytes}
//!   temporary file, blake3 on the         "#layer/<key>/<blake3>">         GET it unless installed, frame by frame
//!   way; HEAD, PUT only when absent       (streamed: sealed in 1 MiB        to a temporary file, blake3 on the way;
//!   (in 6 MiB parts)                       frames, remote-store stream.rs)  check it, unpack from the file to a
//!   catalog.layers[key] = {blake3, bytes}                                   temporary folder, sync, rename:
//!   code tar without the layer's links                                      <cache>/<key>-<blake3:16>, then link
//!                                                                           it into v<N>/code/<into>
//! ```
//!
//! Neither side holds the archive in memory: a transfer holds a few parts
//! of it at most (remote-store's `stream::PART`, `PARTS_IN_FLIGHT`).
//!
//! The object's address holds the archive's hash, so it is named by its
//! content: a layer built again (other bytes) is another object, and one
//! already in the bucket is never sent again. The `#` keeps the address
//! apart from every version's code (`<function>/v<N>/<uid>`: function names
//! have no `#`). A reader never runs pip or npm.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use remote_store::{Kind, RemoteStore};
use serde::{Deserialize, Serialize};

use crate::build::layer::{self, LayerRef};
use crate::registry::VersionRecord;

/// What the catalog says of a layer the writer uploaded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerObject {
    /// blake3 of the archive, in hex (also in the object's address).
    pub blake3: String,
    /// Size of the archive.
    pub bytes: u64,
}

/// The address (before keyed hashing) of a layer's archive, an object of
/// [`Kind::Code`].
pub fn address(key: &str, blake3_hex: &str) -> String {
    format!("#layer/{key}/{blake3_hex}")
}

/// The objects of [`Kind::Code`] a version's record references: its code
/// and, with a layer the catalog describes (`layers`), the layer's archive.
/// For the bucket's garbage collection: what is not named here for any
/// version of any catalogued function is unreferenced.
pub fn code_objects(
    name: &str,
    v: &VersionRecord,
    layers: &std::collections::BTreeMap<String, LayerObject>,
) -> Vec<String> {
    let mut out = vec![crate::remote::code_address(name, v.version, v.uid)];
    if let Some(obj) = v.layer.as_ref().and_then(|l| layers.get(&l.key)) {
        out.push(address(
            &v.layer.as_ref().expect("checked").key,
            &obj.blake3,
        ));
    }
    out
}

/// Uploads the layer `reference` of the writer's cache `cache` unless the
/// bucket has it (a HEAD first). Local failures (the layer folder gone)
/// are errors of their own kind, apart from the store's.
pub async fn upload(
    remote: &RemoteStore,
    cache: &Path,
    reference: &LayerRef,
) -> Result<LayerObject, UploadError> {
    reference.validate().map_err(UploadError::Local)?;
    let (dir, c) = (layer::path(cache, &reference.key), cache.to_path_buf());
    let archive = tokio::task::spawn_blocking(move || layer::archive_to_file(&dir, &c))
        .await
        .expect("archiving does not panic")
        .map_err(UploadError::Local)?;
    let addr = address(&reference.key, &archive.blake3);
    let present = remote
        .has_blob(Kind::Code, addr.as_bytes())
        .await
        .map_err(UploadError::Store)?;
    if !present {
        let sent = remote
            .put_blob_file(Kind::Code, addr.as_bytes(), archive.file.path())
            .await
            .map_err(UploadError::Store)?;
        tracing::info!(layer = %&reference.key[..16], bytes = archive.bytes, sent, "dependency layer uploaded to the shared store");
    }
    Ok(LayerObject {
        blake3: archive.blake3,
        bytes: archive.bytes,
    })
}

/// Errors of [`upload`].
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    /// The layer could not be read or archived here.
    #[error("archiving the dependency layer: {0}")]
    Local(#[source] layer::LayerError),
    /// The store failed.
    #[error("uploading the dependency layer: {0}")]
    Store(#[source] remote_store::ObjectError),
}

/// Errors of [`install`].
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// The store failed.
    #[error("reading the dependency layer {key}: {source}")]
    Store {
        /// The layer's key.
        key: String,
        /// The error.
        #[source]
        source: remote_store::ObjectError,
    },
    /// The catalog names a layer the bucket does not hold (yet).
    #[error("the dependency layer {0} is not in the bucket")]
    Missing(String),
    /// The archive is damaged or could not be installed.
    #[error("installing the dependency layer: {0}")]
    Local(#[source] layer::LayerError),
}

/// Makes the layer `reference` (its archive `obj`) present in this node's
/// layer cache `cache`: reused when installed already, else fetched,
/// checked and installed. The archive is downloaded to a temporary file of
/// the cache (hashed on the way, never whole in memory), checked against
/// `obj`, then unpacked from it ([`layer::install_checked`]). Returns its
/// folder.
pub async fn install(
    remote: &RemoteStore,
    cache: &Path,
    reference: &LayerRef,
    obj: &LayerObject,
) -> Result<PathBuf, InstallError> {
    reference.validate().map_err(InstallError::Local)?;
    if let Some(dir) = layer::installed(cache, reference, &obj.blake3) {
        layer::touch(&dir).map_err(InstallError::Local)?;
        return Ok(dir);
    }
    let addr = address(&reference.key, &obj.blake3);
    let tmp = layer::temp_file(cache).map_err(InstallError::Local)?;
    let local = |what, source| {
        InstallError::Local(layer::LayerError::Io {
            what,
            path: tmp.path().to_path_buf(),
            source,
        })
    };
    let mut out =
        tokio::fs::File::from_std(tmp.as_file().try_clone().map_err(|e| local("open", e))?);
    let got = remote
        .get_blob_to(Kind::Code, addr.as_bytes(), &mut out)
        .await
        .map_err(|source| InstallError::Store {
            key: reference.key.clone(),
            source,
        })?
        .ok_or_else(|| InstallError::Missing(reference.key.clone()))?;
    drop(out);
    layer::check_hash(reference, &obj.blake3, &got.blake3.to_hex()).map_err(InstallError::Local)?;
    let (c, r, h) = (cache.to_path_buf(), reference.clone(), obj.blake3.clone());
    let dir = tokio::task::spawn_blocking(move || {
        let input = std::fs::File::open(tmp.path()).map_err(|e| layer::LayerError::Io {
            what: "open",
            path: tmp.path().to_path_buf(),
            source: e,
        })?;
        layer::install_checked(
            &c,
            &r,
            &h,
            std::io::BufReader::with_capacity(1 << 20, input),
        )
    })
    .await
    .expect("installing does not panic")
    .map_err(InstallError::Local)?;
    tracing::info!(layer = %&reference.key[..16], bytes = got.bytes, dir = %dir.display(), "dependency layer installed from the shared store");
    Ok(dir)
}

/// A version's code folder as a tar archive, without the files of its
/// layer (`layer`: they travel as the layer's own object): under the
/// layer's `into`, regular files with more than one link are the layer's
/// hard links and are left out (a layer copied because the cache is on
/// another filesystem is archived whole: a reader's link replaces those
/// files). Symbolic links stay links.
pub fn code_tar(code_dir: &Path, layer: Option<&LayerRef>) -> Result<Vec<u8>> {
    let skip_under = layer.map(|l| code_dir.join(&l.into));
    let mut tar = tar::Builder::new(Vec::new());
    tar.follow_symlinks(false);
    tar.append_dir(".", code_dir)
        .with_context(|| format!("archiving {}", code_dir.display()))?;
    append(&mut tar, code_dir, Path::new("."), skip_under.as_deref())
        .with_context(|| format!("archiving {}", code_dir.display()))?;
    Ok(tar.into_inner()?)
}

fn append(
    tar: &mut tar::Builder<Vec<u8>>,
    dir: &Path,
    rel: &Path,
    skip_under: Option<&Path>,
) -> std::io::Result<()> {
    let mut entries: Vec<std::fs::DirEntry> =
        std::fs::read_dir(dir)?.collect::<std::io::Result<_>>()?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let path = e.path();
        let name = rel.join(e.file_name());
        let meta = std::fs::symlink_metadata(&path)?;
        if meta.is_file() && meta.nlink() > 1 && skip_under.is_some_and(|s| path.starts_with(s)) {
            continue;
        }
        tar.append_path_with_name(&path, &name)?;
        if meta.is_dir() {
            append(tar, &path, &name, skip_under)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_code_tar_leaves_the_layers_links_out() {
        let dir = tempfile::tempdir().unwrap();
        let layer_dir = dir.path().join("layer");
        std::fs::create_dir_all(layer_dir.join("pkg")).unwrap();
        std::fs::write(layer_dir.join("pkg/__init__.py"), "big = 1\n").unwrap();
        let code = dir.path().join("code");
        std::fs::create_dir_all(code.join(".thaw/python/pkg")).unwrap();
        std::fs::write(code.join("main.py"), "import pkg\n").unwrap();
        // The function's own file under `into`, not a link: kept.
        std::fs::write(code.join(".thaw/python/own.py"), "mine\n").unwrap();
        layer::link_into(&layer_dir, &code.join(".thaw/python")).unwrap();
        let r = LayerRef {
            key: "cd".repeat(32),
            into: ".thaw/python".into(),
        };
        let names = |tar: &[u8]| -> Vec<String> {
            tar::Archive::new(tar)
                .entries()
                .unwrap()
                .map(|e| e.unwrap().path().unwrap().display().to_string())
                .collect()
        };
        let slim = names(&code_tar(&code, Some(&r)).unwrap());
        assert!(slim.iter().any(|n| n.ends_with("main.py")), "{slim:?}");
        assert!(
            slim.iter().any(|n| n.ends_with(".thaw/python/own.py")),
            "{slim:?}"
        );
        assert!(!slim.iter().any(|n| n.ends_with("__init__.py")), "{slim:?}");
        let whole = names(&code_tar(&code, None).unwrap());
        assert!(
            whole.iter().any(|n| n.ends_with("pkg/__init__.py")),
            "{whole:?}"
        );

        // On the reader: the slim code plus the layer give the same files.
        let reader = tempfile::tempdir().unwrap();
        let registry = crate::registry::Registry::open(reader.path()).unwrap();
        let tar = code_tar(&code, Some(&r)).unwrap();
        crate::cluster::follow::install_code(&registry, "f", 1, &tar, Some((&layer_dir, &r.into)))
            .unwrap();
        let dst = registry.code_dir("f", 1);
        assert_eq!(
            std::fs::read_to_string(dst.join(".thaw/python/pkg/__init__.py")).unwrap(),
            "big = 1\n"
        );
        assert_eq!(
            std::fs::read_to_string(dst.join(".thaw/python/own.py")).unwrap(),
            "mine\n"
        );
        let a = std::fs::metadata(layer_dir.join("pkg/__init__.py")).unwrap();
        let b = std::fs::metadata(dst.join(".thaw/python/pkg/__init__.py")).unwrap();
        assert_eq!((a.dev(), a.ino()), (b.dev(), b.ino()), "a hard link");
    }

    #[test]
    fn a_versions_code_objects_name_its_layer_once_the_catalog_has_it() {
        let spec: crate::spec::FunctionSpec = serde_json::from_value(serde_json::json!({
            "name": "f", "runtime": "python3", "handler": "main.handler"
        }))
        .unwrap();
        let mut v = VersionRecord {
            version: 2,
            uid: 0xab,
            spec,
            state: crate::registry::VersionState::Ready,
            error: None,
            snapshot: None,
            created_ms: 0,
            restore_failure: None,
            rebuilds: 0,
            layer: None,
        };
        let mut layers = std::collections::BTreeMap::new();
        assert_eq!(
            code_objects("f", &v, &layers),
            vec!["f/v2/00000000000000ab".to_string()]
        );
        let key = "ef".repeat(32);
        v.layer = Some(LayerRef {
            key: key.clone(),
            into: ".thaw/python".into(),
        });
        assert_eq!(code_objects("f", &v, &layers).len(), 1, "not uploaded yet");
        layers.insert(
            key.clone(),
            LayerObject {
                blake3: "12".repeat(32),
                bytes: 9,
            },
        );
        assert_eq!(
            code_objects("f", &v, &layers),
            vec![
                "f/v2/00000000000000ab".to_string(),
                format!("#layer/{key}/{}", "12".repeat(32)),
            ]
        );
    }
}
