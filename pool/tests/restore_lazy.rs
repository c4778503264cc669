//! What a copy does with its memory after the restore: madvise, mremap,
//! munmap (restore_support/lazy.c), in both modes. A range freed with
//! MADV_DONTNEED reads zeros and a grown area has zeros in its new part
//! (uffd: the page server; mmap: the anonymous-memory guard, see
//! pool::restore::anon).

mod restore_support;

use pool::restore::Mode;
use restore_support::{can_restore, compile, restore_with_pipes, start};
use snapshotter::snapshot::snapshot_to_dir;

#[test]
fn memory_operations_after_restore() {
    if !can_restore("memory_operations_after_restore", true) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let program = compile(tmp.path(), "lazy", include_str!("restore_support/lazy.c"));
    let mut original = start(&program, &[]);
    assert_eq!(original.line(), "ready");
    let snap = tmp.path().join("snap");
    snapshot_to_dir(original.child.id() as i32, &snap).unwrap();
    drop(original);
    for (mode, word) in [(Mode::Uffd, b"uffd"), (Mode::Mmap, b"mmap")] {
        let mut copy = restore_with_pipes(&snap, mode);
        copy.send(word);
        let out = copy.rest();
        let status = copy.child.wait().unwrap();
        if let Some(r) = &copy.child.server_stats {
            println!(
                "{mode:?}: {} faults, {} copied, {} zero",
                r.faults, r.copied, r.zero
            );
        }
        assert_eq!((status, out.as_str()), (0, "ok\n"), "{mode:?}");
    }
}
