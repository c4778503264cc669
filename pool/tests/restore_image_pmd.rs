//! PMD-aligned images (`THAW_IMAGE_PMD=1`, `pool::restore::placement`): a
//! python3 copy restored in mmap mode from an image whose large areas lie
//! at offsets congruent to their addresses modulo 2 MiB has its 8 MiB
//! buffer mapped by PMDs (`FilePmdMapped` in its smaps) once it reads it,
//! answers as the original does, and still does after writing into a
//! PMD-mapped block (the kernel splits it, then copies the page).
//! Skips (with the reason) where the kernel cannot map file folios by PMD:
//! no transparent huge pages, or an image on a filesystem without large
//! folios.

mod restore_support;

use std::io::Write;
use std::path::Path;

use pool::restore::Mode;
use restore_support::{can_restore_python, restore_with_pipes, start};
use snapshotter::snapshot::snapshot_to_dir;

/// Holds 8 MiB of random bytes in a mapping of its own; for each line `n`
/// adds one to byte `n` (unless 0; byte 4 MiB + 1 lies inside a whole
/// 2 MiB block) and answers the buffer's SHA-256.
const BUFFER_PY: &str = r#"
import hashlib, os, sys
buf = bytearray(os.urandom(8 << 20))
sys.stdout.write("ready\n")
sys.stdout.flush()
for line in sys.stdin:
    n = int(line)
    if n:
        buf[n] = (buf[n] + 1) % 256
    sys.stdout.write(hashlib.sha256(buf).hexdigest() + "\n")
    sys.stdout.flush()
"#;

/// Why file folios cannot be mapped by PMD here, if they cannot: the
/// kernel's transparent huge pages (2 MiB PMDs, not turned off) and a
/// filesystem with large folios under `dir` (ext4 since Linux 6.16, xfs).
fn pmd_unavailable(dir: &Path) -> Option<String> {
    let thp = Path::new("/sys/kernel/mm/transparent_hugepage");
    let size = std::fs::read_to_string(thp.join("hpage_pmd_size")).unwrap_or_default();
    if size.trim() != "2097152" {
        return Some("no transparent huge pages of 2 MiB (hpage_pmd_size)".into());
    }
    let enabled = std::fs::read_to_string(thp.join("enabled")).unwrap_or_default();
    if enabled.contains("[never]") {
        return Some("transparent huge pages are off (enabled = never)".into());
    }
    let fs = nix::sys::statfs::statfs(dir).ok()?;
    let kind = fs.filesystem_type();
    let release = nix::sys::utsname::uname().ok()?;
    let release = release.release().to_string_lossy().into_owned();
    let mut numbers = release.split(|c: char| !c.is_ascii_digit());
    let version: (u32, u32) = (
        numbers.next().and_then(|n| n.parse().ok()).unwrap_or(0),
        numbers.next().and_then(|n| n.parse().ok()).unwrap_or(0),
    );
    if kind == nix::sys::statfs::EXT4_SUPER_MAGIC && version >= (6, 16) {
        return None;
    }
    if kind == nix::sys::statfs::XFS_SUPER_MAGIC {
        return None;
    }
    Some(format!(
        "{} is on a filesystem ({kind:?}, Linux {release}) without large folios",
        dir.display()
    ))
}

/// The sum of a process's `FilePmdMapped` in kB.
fn file_pmd_mapped_kb(pid: i32) -> u64 {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap();
    smaps
        .lines()
        .filter_map(|l| l.strip_prefix("FilePmdMapped:"))
        .map(|v| {
            v.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .unwrap()
        })
        .sum()
}

#[test]
fn aligned_image_is_mapped_by_pmds() {
    if !can_restore_python("aligned_image_is_mapped_by_pmds") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    if let Some(reason) = pmd_unavailable(tmp.path()) {
        skip!("aligned_image_is_mapped_by_pmds: {reason}");
    }
    let mut original = start(Path::new("/usr/bin/python3"), &["-c", BUFFER_PY]);
    assert_eq!(original.line(), "ready");
    original.stdin.write_all(b"0\n").unwrap();
    let read = original.line();
    let snap = tmp.path().join("snap");
    snapshot_to_dir(original.child.id() as i32, &snap).unwrap();
    original.stdin.write_all(b"4194305\n").unwrap();
    let written = original.line();
    drop(original);

    for aligned in [true, false] {
        if aligned {
            std::env::set_var("THAW_IMAGE_PMD", "1");
        } else {
            std::env::remove_var("THAW_IMAGE_PMD");
        }
        let mut copy = restore_with_pipes(&snap, Mode::Mmap);
        std::env::remove_var("THAW_IMAGE_PMD");
        let pid = copy.child.pid();
        copy.send(b"0\n");
        assert_eq!(
            copy.line(),
            read,
            "aligned {aligned}: the copy's first answer"
        );
        let after_read = file_pmd_mapped_kb(pid);
        copy.send(b"4194305\n");
        assert_eq!(copy.line(), written, "aligned {aligned}: after a write");
        let after_write = file_pmd_mapped_kb(pid);
        println!(
            "aligned {aligned}: FilePmdMapped {after_read} kB after reading, \
             {after_write} kB after a write"
        );
        if aligned {
            // The 8 MiB buffer holds at least three whole 2 MiB blocks.
            assert!(
                after_read >= 3 * 2048,
                "the aligned image's buffer is not mapped by PMDs: {after_read} kB"
            );
            assert!(
                after_write < after_read,
                "a write into a PMD-mapped block did not split it: {after_read} -> {after_write} kB"
            );
        }
        drop(copy.stdin);
        assert_eq!(copy.child.wait().unwrap(), 0);
    }
}
