//! Deploy archives: the tar.gz of a function's code that `POST /functions`
//! carries (`archive`), unpacked by the registry into the version's code
//! folder.
//!
//! Mode byte 0: the rest is the tar.gz as sent. Any other: the rest is a tar
//! that the target gzips first, so mutations reach the tar reader.
//!
//! Besides no panic, hang or unbounded allocation: whatever is accepted
//! stays inside the destination, and only files and directories appear.
#![no_main]

use std::io::Write;
use std::path::Path;

use libfuzzer_sys::fuzz_target;

/// Every entry under `dir`: only files and directories, no links.
fn check_tree(dir: &Path) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let ty = entry.file_type().unwrap();
        assert!(
            ty.is_dir() || ty.is_file(),
            "{} is neither a file nor a directory",
            entry.path().display()
        );
        if ty.is_dir() {
            check_tree(&entry.path());
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let (mode, rest) = thaw_fuzz::mode(data);
    let gzipped;
    let archive = if mode == 0 {
        rest
    } else {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(rest).unwrap();
        gzipped = gz.finish().unwrap();
        &gzipped
    };
    let outer = tempfile::tempdir().expect("tempdir");
    let code = outer.path().join("code");
    std::fs::create_dir(&code).unwrap();
    let _ = server::registry::unpack(archive, &code);
    // Accepted or refused half-way, nothing lands outside `code`.
    let names: Vec<_> = std::fs::read_dir(outer.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["code"], "an entry escaped the code folder");
    check_tree(&code);
});
