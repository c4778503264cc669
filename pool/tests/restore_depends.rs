//! What a copy depends on (issue 18): a mapped file is matched by content,
//! the CPU's features are checked, and a copy's clocks never go backwards.
//!
//! One C program for all of it: it maps a private page of a data file (as
//! a library is mapped), reads `CLOCK_MONOTONIC` and `CLOCK_BOOTTIME`,
//! waits for a byte, then reads them again and says whether they went
//! forward, with the first byte of the mapped page.

mod restore_support;

use std::fs::File;
use std::path::Path;

use pool::restore::{Credentials, Mode, RestoreError};
use restore_support::{can_restore, compile, start, Copy};
use snapshotter::capture::depends::cpu_features;
use snapshotter::snapshot::{manifest_path, open_snapshot_dir, snapshot_to_dir, DIR_SNAPSHOT_ID};

const CLOCKS: &str = r#"
#include <fcntl.h>
#include <stdio.h>
#include <time.h>
#include <unistd.h>
#include <sys/mman.h>
static long long ns(clockid_t c) {
    struct timespec t;
    clock_gettime(c, &t);
    return t.tv_sec * 1000000000LL + t.tv_nsec;
}
int main(int argc, char **argv) {
    int fd = open(argv[1], O_RDONLY);
    char *file = mmap(NULL, 4096, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (file == MAP_FAILED) return 2;
    long long m0 = ns(CLOCK_MONOTONIC), b0 = ns(CLOCK_BOOTTIME);
    char line[160];
    int n = snprintf(line, sizeof line, "ready %d %lld %lld\n", (int)getpid(), m0, b0);
    write(1, line, n);
    char c;
    if (read(0, &c, 1) != 1) return 3;
    long long m1 = ns(CLOCK_MONOTONIC), b1 = ns(CLOCK_BOOTTIME);
    n = snprintf(line, sizeof line, "%s %lld %lld %c\n",
                 m1 >= m0 && b1 >= b0 ? "forward" : "backwards", m1, b1, file[0]);
    write(1, line, n);
    return 0;
}
"#;

/// Restores the snapshot directory `dir` with pipes on fds 0 and 1, or
/// says why not.
fn try_restore(dir: &Path, mode: Mode) -> Result<Copy, RestoreError> {
    restore_support::try_restore_as(dir, mode, vec![], vec![], false, Credentials::Snapshot)
}

/// Captures the program (under `wrap`, a command that execs it, if any)
/// mapping `data` into `dir`; returns its first clock readings.
fn capture(tmp: &Path, data: &Path, wrap: &[&str], dir: &Path) -> (i64, i64) {
    let program = compile(tmp, "clocks", CLOCKS);
    let program = program.to_str().unwrap();
    let data = data.to_str().unwrap();
    let mut args: Vec<&str> = wrap.to_vec();
    args.extend([program, data]);
    let mut original = start(Path::new(args[0]), &args[1..]);
    let ready = original.line();
    let words: Vec<&str> = ready.split(' ').collect();
    assert_eq!(words[0], "ready", "{ready}");
    let pid: i32 = words[1].parse().unwrap();
    snapshot_to_dir(pid, dir).unwrap();
    (words[2].parse().unwrap(), words[3].parse().unwrap())
}

/// Runs a copy: asks it to read its clocks again; returns its answer.
fn run(dir: &Path, mode: Mode) -> String {
    let mut copy = try_restore(dir, mode).unwrap();
    copy.send(b"x");
    let line = copy.line();
    assert_eq!(copy.child.wait().unwrap(), 0, "{line}");
    line
}

const MODES: [Mode; 2] = [Mode::Mmap, Mode::Uffd];

#[test]
fn a_mapped_file_is_matched_by_content_not_inode() {
    if !can_restore("a_mapped_file_is_matched_by_content_not_inode", true) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("libdata.so");
    std::fs::write(&data, vec![b'A'; 8192]).unwrap();
    let snap = tmp.path().join("snap");
    capture(tmp.path(), &data, &[], &snap);
    let (snapshot, _) = open_snapshot_dir(&snap).unwrap();
    let depends = snapshot
        .depends
        .as_ref()
        .expect("format 4 records dependencies");
    let recorded = depends
        .file(data.to_str().unwrap())
        .expect("the mapped file");
    assert_eq!(recorded.size, 8192);
    assert!(depends.file(&snapshot.state.mm.exe_path).is_some());

    // Changed in place keeping the size: refused, naming the file.
    std::fs::write(&data, vec![b'C'; 8192]).unwrap();
    for mode in MODES {
        let err = try_restore(&snap, mode).err().expect("refused");
        assert!(matches!(err, RestoreError::Incompatible { .. }), "{err}");
        let message = err.to_string();
        assert!(
            message.contains(data.to_str().unwrap()) && message.contains("other content"),
            "{message}"
        );
    }
    // The snapshot's bytes again, in place (its times changed): restores.
    std::fs::write(&data, vec![b'A'; 8192]).unwrap();
    let line = run(&snap, Mode::Mmap);
    assert!(line.ends_with(" A"), "{line}");

    // The same bytes in another file (another inode), renamed into place:
    // restores, and the copy reads the file's page.
    let other = tmp.path().join("libdata.so.new");
    std::fs::write(&other, vec![b'A'; 8192]).unwrap();
    std::fs::rename(&other, &data).unwrap();
    for mode in MODES {
        let line = run(&snap, mode);
        assert!(
            line.starts_with("forward ") && line.ends_with(" A"),
            "{mode:?}: {line}"
        );
    }

    // Other bytes of the same size in another file at the same path: this
    // node's library is not the snapshot's.
    std::fs::write(&other, vec![b'B'; 8192]).unwrap();
    std::fs::rename(&other, &data).unwrap();
    for mode in MODES {
        let err = try_restore(&snap, mode).err().expect("refused");
        assert!(matches!(err, RestoreError::Incompatible { .. }), "{err}");
        let message = err.to_string();
        assert!(
            message.starts_with("snapshot incompatible with this node: ")
                && message.contains(data.to_str().unwrap())
                && message.contains("other content"),
            "{message}"
        );
        println!("{mode:?} refused: {message}");
    }
}

#[test]
fn a_cpu_feature_this_cpu_lacks_is_refused_by_name() {
    if !can_restore("a_cpu_feature_this_cpu_lacks_is_refused_by_name", true) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::write(&data, vec![b'A'; 4096]).unwrap();
    let snap = tmp.path().join("snap");
    capture(tmp.path(), &data, &[], &snap);
    let (mut snapshot, _) = open_snapshot_dir(&snap).unwrap();
    let here = cpu_features();
    assert_eq!(snapshot.depends.as_ref().unwrap().cpu, here);
    // A feature this CPU lacks: a real one if there is one, else one no
    // CPU has (the check is by name).
    let lacking = [
        "avx512f",
        "avx512bw",
        "avx512vnni",
        "sha",
        "gfni",
        "no-such-feature",
    ]
    .into_iter()
    .find(|f| !here.features.iter().any(|h| h == f))
    .unwrap();
    snapshot
        .depends
        .as_mut()
        .unwrap()
        .cpu
        .features
        .push(lacking.to_string());
    snapshotter::store::write_manifest(&manifest_path(&snap, DIR_SNAPSHOT_ID), &snapshot).unwrap();
    for mode in MODES {
        let err = try_restore(&snap, mode).err().expect("refused");
        assert!(matches!(err, RestoreError::Incompatible { .. }), "{err}");
        assert_eq!(
            err.to_string(),
            format!("snapshot incompatible with this node: this CPU lacks {lacking}")
        );
    }

    // A newer thaw's format: this node cannot restore it either.
    let (_, store) = open_snapshot_dir(&snap).unwrap();
    snapshot.format = 5;
    snapshotter::store::write_manifest(&manifest_path(&snap, DIR_SNAPSHOT_ID), &snapshot).unwrap();
    let restorer =
        pool::restore::sandboxed::SnapshotRestorer::new(snap.clone(), std::sync::Arc::new(store))
            .unwrap();
    let err = restorer.prepare(DIR_SNAPSHOT_ID).expect_err("refused");
    assert!(matches!(err, RestoreError::Incompatible { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("format 5, a newer thaw's (this build reads 3 and 4)"),
        "{err}"
    );
}

#[test]
fn a_copy_of_a_process_whose_clock_was_ahead_never_sees_it_go_back() {
    let test = "a_copy_of_a_process_whose_clock_was_ahead_never_sees_it_go_back";
    if !can_restore(test, true) {
        return;
    }
    if !Path::new("/proc/self/timens_offsets").exists() {
        skip!("{test}: this kernel has no time namespaces");
    }
    if std::process::Command::new("unshare")
        .arg("--version")
        .output()
        .is_err()
    {
        skip!("{test}: needs unshare (util-linux)");
    }
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::write(&data, vec![b'A'; 4096]).unwrap();
    let snap = tmp.path().join("snap");
    // Captured in a time namespace 10 days ahead of this host.
    let ahead = "864000";
    let (m0, b0) = capture(
        tmp.path(),
        &data,
        &[
            "/usr/bin/unshare",
            "-T",
            "--monotonic",
            ahead,
            "--boottime",
            ahead,
        ],
        &snap,
    );
    let host = snapshotter::capture::depends::clocks_now().unwrap();
    assert!(
        m0 > host.monotonic_ns && b0 > host.boottime_ns,
        "the captured clocks ({m0}, {b0}) are ahead of this host's ({host:?})"
    );
    let (snapshot, _) = open_snapshot_dir(&snap).unwrap();
    let clocks = snapshot.depends.unwrap().clocks;
    assert!(
        clocks.monotonic_ns >= m0 && clocks.boottime_ns >= b0,
        "{clocks:?}"
    );
    for mode in MODES {
        let line = run(&snap, mode);
        let words: Vec<&str> = line.split(' ').collect();
        assert_eq!(words[0], "forward", "{mode:?}: {line}");
        let m1: i64 = words[1].parse().unwrap();
        assert!(m1 >= m0, "{mode:?}: {m1} < {m0}");
        println!("{mode:?}: captured at {m0}, copy reads {m1} ({line})");
    }
}

/// What recording and checking the dependencies of a numpy + pandas
/// process costs: hashing its mapped files the first time (cold: nothing
/// cached), again (cached by file version), and the restore-side host
/// check. A measurement, not a test.
#[test]
#[ignore = "a measurement: cargo test -p pool --test restore_depends -- --ignored --nocapture"]
fn measure_depends_cost() {
    if !can_restore("measure_depends_cost", false) {
        return;
    }
    let Some(numpy) = restore_support::numpy_path("measure_depends_cost") else {
        return;
    };
    let script = "import sys\nsys.path.insert(0, sys.argv[1])\nimport numpy, pandas\nprint('ready', flush=True)\nsys.stdin.read()\n";
    let mut python = start(Path::new("/usr/bin/python3"), &["-c", script, &numpy]);
    assert_eq!(python.line(), "ready");
    let pid = python.child.id() as i32;
    let tmp = tempfile::tempdir().unwrap();
    let snap = tmp.path().join("snap");
    let info = snapshot_to_dir(pid, &snap).unwrap();
    let (snapshot, _) = open_snapshot_dir(&snap).unwrap();
    let depends = snapshot.depends.as_ref().unwrap();
    let bytes: u64 = depends.files.iter().map(|f| f.size).sum();
    let states = [&snapshot.state];
    let mut warm = Vec::new();
    for _ in 0..5 {
        let t = std::time::Instant::now();
        snapshotter::capture::depends::record(&states, pid, None).unwrap();
        warm.push(t.elapsed());
    }
    warm.sort();
    let t = std::time::Instant::now();
    let fresh = tempfile::tempdir().unwrap();
    for f in &depends.files {
        let file = File::open(&f.path).unwrap();
        // A copy of the bytes: no cache entry matches a new file.
        let copy = fresh.path().join("f");
        std::fs::copy(&f.path, &copy).unwrap();
        drop(file);
        let file = File::open(&copy).unwrap();
        snapshotter::capture::depends::content_hash(&file, &f.path, None).unwrap();
    }
    let cold = t.elapsed();
    println!(
        "numpy+pandas: {} files, {:.1} MiB; capture total {} ms; record cached median {:?}; \
         hashing every file cold (incl. copying it) {:?}",
        depends.files.len(),
        bytes as f64 / (1 << 20) as f64,
        info.timings.total_us / 1000,
        warm[2],
        cold
    );
}
