//! Restores from several threads at once, each copy answering its own
//! requests, in both modes.

mod restore_support;

use pool::restore::Mode;
use restore_support::{can_restore, compile, restore_with_pipes, start};
use snapshotter::snapshot::snapshot_to_dir;

/// Echoes every byte it reads, upper-cased, from a 2 MiB table.
const UPPER: &str = r#"
#include <stdlib.h>
#include <unistd.h>
int main(void) {
    unsigned char *table = malloc(2 << 20);
    for (int i = 0; i < (2 << 20); i++) table[i] = (unsigned char)(i % 256);
    for (int c = 'a'; c <= 'z'; c++) table[(1 << 20) + c] = (unsigned char)(c - 32);
    write(1, "ready\n", 6);
    unsigned char c;
    while (read(0, &c, 1) == 1) {
        unsigned char out = table[(1 << 20) + c];
        write(1, &out, 1);
    }
    return 0;
}
"#;

#[test]
fn four_threads_restore_at_once() {
    if !can_restore("four_threads_restore_at_once", true) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let program = compile(tmp.path(), "upper", UPPER);
    let mut original = start(&program, &[]);
    assert_eq!(original.line(), "ready");
    let snap = tmp.path().join("snap");
    snapshot_to_dir(original.child.id() as i32, &snap).unwrap();
    drop(original);

    std::thread::scope(|scope| {
        for t in 0..4u8 {
            let snap = &snap;
            scope.spawn(move || {
                for i in 0..10u8 {
                    let mode = if (t + i) % 2 == 0 {
                        Mode::Mmap
                    } else {
                        Mode::Uffd
                    };
                    let mut copy = restore_with_pipes(snap, mode);
                    let c = b'a' + (t * 5 + i) % 26;
                    copy.send(&[c, b'q']);
                    drop(copy.stdin);
                    let mut out = String::new();
                    std::io::Read::read_to_string(&mut copy.stdout, &mut out).unwrap();
                    assert_eq!(
                        out.as_bytes(),
                        &[c - 32, b'Q'],
                        "thread {t} copy {i} ({mode:?})"
                    );
                    assert_eq!(copy.child.wait().unwrap(), 0);
                }
            });
        }
    });
}
