//! Equivalence of random process layouts: a C program
//! (restore_support/layout.c) builds, from a seed, areas of random sizes with
//! dense, sparse, zero and untouched pages, private file maps, `mprotect`,
//! `mremap` and `MADV_DONTNEED`, and for about a third of the seeds 1-8
//! threads (glibc's stacks or their own, TLS values, a filled buffer on
//! their stack; blocked in untimed or timed futex waits, a condition
//! variable or `nanosleep`, or spinning), and reports every area's length,
//! protections and checksum, and every thread. Each layout is captured with
//! `snapshot_to_dir` (what `thaw snapshot --pid` runs) and restored in both
//! memory modes; the copy's report must equal the original's, and memory
//! must still behave as the kernel's would (`MADV_DONTNEED` gives zeros in
//! anonymous memory; the file again in a private file map is a known
//! deviation, see docs/restore.md), and every thread must answer in the
//! copy with its thread id, TLS values and stack buffer unchanged.
//!
//! `THAW_LAYOUT_SEEDS` (default 200) sets how many seeds run,
//! `THAW_LAYOUT_FIRST_SEED` (default 1) the first; seeds run
//! [`SEEDS_PER_PROCESS`] to a process. A failing batch is retried seed by
//! seed so the message names the seed that fails.

mod restore_support;

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use pool::restore::{restore, Mode, RestoreOptions};
use restore_support::{can_restore, compile, start};
use snapshotter::snapshot::{open_snapshot_dir, snapshot_to_dir};

/// Seeds laid out together in one process (one capture, two restores).
const SEEDS_PER_PROCESS: u64 = 10;

/// Reads lines until `last` (excluded); fails on EOF.
fn lines_until(reader: &mut BufReader<File>, last: &str) -> Result<Vec<String>, String> {
    lines_until_any(reader, &[last]).map(|(lines, _)| lines)
}

/// How long a process may stay silent before the test gives up on it (a
/// hung copy fails the test instead of hanging it).
const SILENCE: std::time::Duration = std::time::Duration::from_secs(120);

/// Reads lines until one of `last` (returned apart); fails on EOF or after
/// [`SILENCE`] without output.
fn lines_until_any(
    reader: &mut BufReader<File>,
    last: &[&str],
) -> Result<(Vec<String>, String), String> {
    let mut lines = Vec::new();
    loop {
        if reader.buffer().is_empty() {
            let fd = reader.get_ref().as_fd();
            let mut poll = [nix::poll::PollFd::new(fd, nix::poll::PollFlags::POLLIN)];
            let timeout = nix::poll::PollTimeout::try_from(SILENCE).unwrap();
            match nix::poll::poll(&mut poll, timeout) {
                Ok(0) => {
                    return Err(format!(
                        "no output for {SILENCE:?} before {last:?}; got {lines:?}"
                    ))
                }
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(format!("poll: {e}")),
            }
        }
        let mut line = String::new();
        let n = reader.read_line(&mut line).map_err(|e| e.to_string())?;
        if n == 0 {
            return Err(format!("end of output before {last:?}; got {lines:?}"));
        }
        let line = line.trim_end_matches('\n').to_string();
        if last.contains(&line.as_str()) {
            return Ok((lines, line));
        }
        lines.push(line);
    }
}

/// Restores `snap` in `mode` with pipes on 0 and 1, asks for the report
/// and the post-restore checks, and compares.
fn check_copy(snap: &Path, mode: Mode, expected: &[String]) -> Result<(), String> {
    let (snapshot, store) = open_snapshot_dir(snap).map_err(|e| e.to_string())?;
    let (in_read, in_write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
    let (out_read, out_write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
    let stderr = std::io::stderr();
    let mut fds = vec![(0, in_read.as_fd()), (1, out_write.as_fd())];
    if snapshot.state.fds.iter().any(|f| f.fd == 2) {
        fds.push((2, stderr.as_fd()));
    }
    let mut child = restore(
        &snapshot,
        &store,
        &RestoreOptions {
            mode,
            fds,
            cgroups: Vec::new(),
            prefetch: Vec::new(),
            prefetch_in_background: false,
            uffd_keeper: None,
            credentials: pool::restore::Credentials::Snapshot,
        },
    )
    .map_err(|e| format!("{mode:?} restore: {e}"))?;
    drop(in_read);
    drop(out_write);
    let mut stdin = File::from(in_write);
    let mut stdout = BufReader::new(File::from(out_read));
    stdin.write_all(b"r").unwrap();
    let report = lines_until(&mut stdout, "end").map_err(|e| format!("{mode:?}: {e}"))?;
    if report != expected {
        let diff: Vec<String> = expected
            .iter()
            .zip(report.iter())
            .filter(|(a, b)| a != b)
            .map(|(a, b)| format!("original {a:?}, copy {b:?}"))
            .take(5)
            .collect();
        return Err(format!(
            "{mode:?}: the copy's report differs ({} lines vs {}): {diff:?}",
            expected.len(),
            report.len()
        ));
    }
    // Known deviation (docs/restore.md): the written pages of a private
    // file map come back mapped from the image (both modes), and
    // MADV_DONTNEED there does not give the file's content back; only
    // anonymous areas are checked ('p' checks file areas too).
    stdin.write_all(b"a").unwrap();
    let (post, verdict) = lines_until_any(&mut stdout, &["post ok", "post failed"])
        .map_err(|e| format!("{mode:?}: {e}"))?;
    if verdict != "post ok" || !post.is_empty() {
        return Err(format!("{mode:?}: {post:?}"));
    }
    let threads = expected.iter().filter(|l| is_thread_line(l)).count();
    let all_ok = format!("threads ok {threads}");
    stdin.write_all(b"t").unwrap();
    let (failed, verdict) = lines_until_any(&mut stdout, &[&all_ok, "threads failed"])
        .map_err(|e| format!("{mode:?}: {e}"))?;
    if verdict != all_ok || !failed.is_empty() {
        return Err(format!("{mode:?}: the copy's threads: {failed:?}"));
    }
    stdin.write_all(b"q").unwrap();
    let status = child.wait().map_err(|e| e.to_string())?;
    if status != 0 {
        return Err(format!("{mode:?}: the copy exited with {status}"));
    }
    Ok(())
}

/// Whether a report line is a thread's (`SEED thread N ...`), not an area's.
fn is_thread_line(line: &str) -> bool {
    line.split(' ').nth(1) == Some("thread")
}

/// What a layout held: areas and threads.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Counts {
    areas: usize,
    threads: usize,
}

/// Lays out `args` (seeds, or "sparse") in one process, captures it and
/// checks a copy in each mode.
fn check_layout(program: &Path, dir: &Path, args: &[String]) -> Result<Counts, String> {
    let files = dir.join("files");
    let _ = std::fs::remove_dir_all(&files);
    std::fs::create_dir_all(&files).unwrap();
    let mut argv = vec![files.to_str().unwrap().to_string()];
    argv.extend(args.iter().cloned());
    let argv: Vec<&str> = argv.iter().map(|s| s.as_str()).collect();
    let mut original = start(program, &argv);
    let expected = lines_until(&mut original.stdout, "ready")?;
    if let Some(bad) = expected.iter().find(|l| l.starts_with("error")) {
        return Err(format!("the layout program failed: {bad}"));
    }
    if expected.last().map(|s| s.as_str()) != Some("maps agree") {
        return Err(format!(
            "the original's maps disagree with its own record: {expected:?}"
        ));
    }
    let snap = dir.join("snap");
    let _ = std::fs::remove_dir_all(&snap);
    snapshot_to_dir(original.child.id() as i32, &snap).map_err(|e| format!("capture: {e:#}"))?;
    drop(original);
    for mode in [Mode::Mmap, Mode::Uffd] {
        check_copy(&snap, mode, &expected)?;
    }
    let threads = expected.iter().filter(|l| is_thread_line(l)).count();
    Ok(Counts {
        areas: expected.len() - 1 - threads,
        threads,
    })
}

fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
        Err(_) => default,
    }
}

/// Whether the test can run (root, `cc`); without them it is skipped with
/// the reason printed, or fails under `THAW_TEST_STRICT`.
fn prerequisites(test: &str) -> bool {
    let ok = can_restore(test, true);
    if !ok && std::env::var_os("THAW_TEST_STRICT").is_some() {
        panic!("{test}: prerequisites missing (see above) and THAW_TEST_STRICT is set");
    }
    ok
}

fn layout_program(dir: &Path) -> PathBuf {
    compile(dir, "layout", include_str!("restore_support/layout.c"))
}

/// The capture bug of issue 14: a 64 MiB heap and a 16 MiB anonymous area
/// with every fourth page untouched failed with `page sink: area N page X
/// arrived after page Y`; it captures and both copies equal the original.
#[test]
fn sparse_heap_and_area_restore_equal() {
    if !prerequisites("sparse_heap_and_area_restore_equal") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let program = layout_program(tmp.path());
    let counts = check_layout(&program, tmp.path(), &["sparse".to_string()]).unwrap();
    assert_eq!(
        counts,
        Counts {
            areas: 2,
            threads: 0
        }
    );
}

/// Random layouts, [`SEEDS_PER_PROCESS`] seeds to a process, each restored
/// in both modes.
#[test]
fn random_layouts_restore_equal() {
    if !prerequisites("random_layouts_restore_equal") {
        return;
    }
    let seeds = env_u64("THAW_LAYOUT_SEEDS", 200);
    let first = env_u64("THAW_LAYOUT_FIRST_SEED", 1);
    let tmp = tempfile::tempdir().unwrap();
    let program = layout_program(tmp.path());
    let mut failures = Vec::new();
    let mut total = Counts::default();
    let mut batch_start = first;
    while batch_start < first + seeds {
        let batch_end = (batch_start + SEEDS_PER_PROCESS).min(first + seeds);
        let batch: Vec<String> = (batch_start..batch_end).map(|s| s.to_string()).collect();
        match check_layout(&program, tmp.path(), &batch) {
            Ok(n) => {
                total.areas += n.areas;
                total.threads += n.threads;
            }
            Err(_) => {
                // Find the seeds that fail on their own.
                for seed in &batch {
                    if let Err(e) = check_layout(&program, tmp.path(), std::slice::from_ref(seed)) {
                        println!("seed {seed}: {e}");
                        failures.push(format!("seed {seed}: {e}"));
                    }
                }
                if failures.is_empty() {
                    failures.push(format!(
                        "seeds {batch_start}..{batch_end} fail together, none alone"
                    ));
                }
            }
        }
        batch_start = batch_end;
    }
    println!(
        "{seeds} seeds from {first}: {} areas and {} threads, each restored in mmap and uffd mode",
        total.areas, total.threads
    );
    // About a third of the seeds have threads: a run of 30 seeds or more
    // without any means the generator lost them.
    if seeds >= 30 {
        assert!(total.threads > 0, "no seed started a thread");
    }
    assert!(
        failures.is_empty(),
        "{} failing: {:?}",
        failures.len(),
        &failures[..failures.len().min(10)]
    );
}
