//! Embeds every runtime folder under `runtimes/` into the thaw binary, so
//! that the binary is all a host needs. Writes `$OUT_DIR/runtimes.rs`: a
//! table of (folder, [(relative path, contents)]) that `server::runtime`
//! reads; which folders are offered is decided there (`REGISTERED`).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

fn files(root: &Path, rel: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(root.join(rel))
        .unwrap_or_else(|e| panic!("listing {}: {e}", root.join(rel).display()))
        .map(|e| e.expect("directory entry"))
        .collect();
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let name = entry.file_name();
        let name = name.to_str().expect("runtime file names are UTF-8");
        if name.starts_with('.') || name == "__pycache__" || name.ends_with(".class") {
            continue;
        }
        let path = rel.join(name);
        let ty = entry.file_type().expect("file type");
        if ty.is_dir() {
            files(root, &path, out);
        } else if ty.is_file() {
            out.push(path);
        }
    }
}

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let runtimes = manifest
        .join("../runtimes")
        .canonicalize()
        .expect("runtimes/ exists");
    println!("cargo:rerun-if-changed={}", runtimes.display());
    let mut folders: Vec<_> = std::fs::read_dir(&runtimes)
        .expect("list runtimes/")
        .map(|e| e.expect("entry"))
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.file_name().into_string().expect("UTF-8 folder name"))
        .collect();
    folders.sort();
    let mut code = String::from(
        "/// A runtime folder's files: (path relative to the folder, contents).\n\
         pub type Files = &'static [(&'static str, &'static [u8])];\n\
         /// Every folder of runtimes/ and its files.\n\
         pub const EMBEDDED: &[(&str, Files)] = &[\n",
    );
    for folder in folders {
        let root = runtimes.join(&folder);
        let mut list = Vec::new();
        files(&root, Path::new(""), &mut list);
        writeln!(code, "    ({folder:?}, &[").unwrap();
        for rel in list {
            let abs = root.join(&rel);
            println!("cargo:rerun-if-changed={}", abs.display());
            writeln!(
                code,
                "        ({:?}, include_bytes!({:?})),",
                rel.to_str().expect("UTF-8 path"),
                abs.to_str().expect("UTF-8 path")
            )
            .unwrap();
        }
        code.push_str("    ]),\n");
    }
    code.push_str("];\n");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets it")).join("runtimes.rs");
    std::fs::write(out, code).expect("write runtimes.rs");
}
