//! Restore of a real python3 process blocked reading a pipe: the copy
//! answers with the state the original built before the snapshot.

mod restore_support;

use std::path::Path;

use pool::restore::Mode;
use restore_support::{can_restore, can_restore_python, restore_full, restore_with_pipes, start};
use snapshotter::snapshot::snapshot_to_dir;

const SCRIPT: &str = r#"
import sys, os, time, json, hashlib, random
table = {i: hashlib.sha256(str(i).encode()).hexdigest() for i in range(20000)}
blob = bytes(range(256)) * 4096
pid = os.getpid()
t0 = time.monotonic()
sys.stdout.write("ready %d\n" % pid)
sys.stdout.flush()
for line in sys.stdin:
    n = int(line)
    answer = {
        "n": n,
        "hash": table[n],
        "blob": hashlib.sha256(blob).hexdigest()[:16],
        "same_pid": os.getpid() == pid,
        "clock_ok": time.monotonic() >= t0,
        "cwd": os.getcwd(),
        "big": len(bytearray(50 * 1024 * 1024)),
    }
    sys.stdout.write(json.dumps(answer, sort_keys=True) + "\n")
    sys.stdout.flush()
"#;

#[test]
fn python_copy_answers_from_its_warm_state() {
    if !can_restore_python("python_copy_answers_from_its_warm_state") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let mut original = start(Path::new("/usr/bin/python3"), &["-c", SCRIPT]);
    let ready = original.line();
    assert!(ready.starts_with("ready "), "{ready:?}");
    let expected = {
        use std::io::Write;
        original.stdin.write_all(b"42\n").unwrap();
        original.line()
    };
    let snap = tmp.path().join("snap");
    let info = snapshot_to_dir(original.child.id() as i32, &snap).unwrap();
    println!(
        "python snapshot: {} areas, {} stored pages, {} zero pages",
        info.areas, info.stored_pages, info.zero_pages
    );
    drop(original);

    // Round 2 (uffd) records the working set;
    let mut touched = Vec::new();
    // The last two prefetch it, before the resume and in the background.
    for (round, mode) in [Mode::Mmap, Mode::Mmap, Mode::Uffd, Mode::Uffd, Mode::Uffd]
        .into_iter()
        .enumerate()
    {
        let prefetch = if round >= 3 {
            touched.clone()
        } else {
            Vec::new()
        };
        let mut copy = restore_full(&snap, mode, Vec::new(), prefetch, round == 4);
        println!("restore {round} ({mode:?}): {:?}", copy.child.timings);
        copy.send(b"42\n");
        assert_eq!(copy.line(), expected);
        copy.send(b"7\n");
        let seven = copy.line();
        assert!(seven.contains("\"n\": 7"), "{seven}");
        drop(copy.stdin);
        assert_eq!(copy.child.wait().unwrap(), 0);
        if let Some(report) = &copy.child.server_stats {
            println!(
                "page server: {} faults, {} copied ({} prefetched), {} zero, {} touched",
                report.faults,
                report.copied,
                report.prefetched,
                report.zero,
                report.touched.len()
            );
            if round == 3 {
                assert!(report.prefetched > 0, "{report:?}");
                assert!(
                    report.faults < touched.len() as u64,
                    "prefetch saved no fault"
                );
            }
            touched = report.touched.clone();
        }
    }
}

const NUMPY: &str = r#"
import os
for v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[v] = "1"
import sys, json
sys.path.insert(0, sys.argv[1])  # numpy and pandas (numpy_path)
import numpy as np, pandas as pd
rng = np.random.default_rng(7)
df = pd.DataFrame({"k": rng.integers(0, 50, 100000), "v": rng.random(100000)})
m = rng.random((200, 200))
sys.stdout.write("ready\n")
sys.stdout.flush()
for line in sys.stdin:
    n = int(line)
    g = df[df.k == n].v.sum()
    inv = np.linalg.inv(m + np.eye(200) * n)
    sys.stdout.write(json.dumps({"n": n, "g": round(float(g), 6), "tr": round(float(np.trace(inv)), 6)}) + "\n")
    sys.stdout.flush()
"#;

#[test]
fn numpy_pandas_copy_computes_like_the_original() {
    if !can_restore("numpy_pandas_copy_computes_like_the_original", false) {
        return;
    }
    let Some(numpy) = restore_support::numpy_path("numpy_pandas_copy_computes_like_the_original")
    else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let mut original = start(Path::new("/usr/bin/python3"), &["-c", NUMPY, &numpy]);
    assert_eq!(original.line(), "ready");
    let expected = {
        use std::io::Write;
        original.stdin.write_all(b"3\n").unwrap();
        original.line()
    };
    let snap = tmp.path().join("snap");
    let info = snapshot_to_dir(original.child.id() as i32, &snap).unwrap();
    println!(
        "numpy+pandas snapshot: {} areas, {} stored pages",
        info.areas, info.stored_pages
    );
    drop(original);
    for mode in [Mode::Mmap, Mode::Uffd] {
        let mut copy = restore_with_pipes(&snap, mode);
        println!("restore ({mode:?}): {:?}", copy.child.timings);
        copy.send(b"3\n");
        assert_eq!(copy.line(), expected, "{mode:?}");
        drop(copy.stdin);
        assert_eq!(copy.child.wait().unwrap(), 0);
        if let Some(r) = &copy.child.server_stats {
            println!(
                "page server: {} faults, {} copied, {} zero",
                r.faults, r.copied, r.zero
            );
        }
    }
}
