//! Anonymous-memory semantics in a copy, both modes (issue 5, acceptance
//! 5): restore_support/anon.c fills anonymous areas and a piece of brk heap
//! before the snapshot; the copy releases memory with MADV_DONTNEED (zeros),
//! grows areas with mremap (zeros in the new part, in place and moving),
//! releases read-only memory (zeros, still read-only), uses MADV_FREE and
//! MREMAP_DONTUNMAP, moves brk down into the saved heap and up again
//! (zeros), grows its stack, forks (the child's DONTNEED is its own), execs
//! a program that releases memory, and allocates and frees 384 MB. In mmap
//! mode that memory is the snapshot's image (see pool::restore::anon).

mod restore_support;

use pool::restore::Mode;
use restore_support::{can_restore, compile, restore_with_pipes, start};
use snapshotter::snapshot::snapshot_to_dir;

#[test]
fn released_and_grown_memory_reads_zeros_in_both_modes() {
    if !can_restore("released_and_grown_memory_reads_zeros_in_both_modes", true) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let program = compile(tmp.path(), "anon", include_str!("restore_support/anon.c"));
    let mut original = start(&program, &[]);
    assert_eq!(original.line(), "ready");
    let snap = tmp.path().join("snap");
    snapshot_to_dir(original.child.id() as i32, &snap).unwrap();
    drop(original);
    for (mode, word) in [(Mode::Mmap, b"mmap"), (Mode::Uffd, b"uffd")] {
        let mut copy = restore_with_pipes(&snap, mode);
        copy.send(word);
        let out = copy.rest();
        let status = copy.child.wait().unwrap();
        assert_eq!((status, out.as_str()), (0, "ok\n"), "{mode:?}");
    }
}
