//! Restore benchmark. Warmed python3 processes (json + hashlib with a
//! dict of 20,000 entries; numpy + pandas with a 100,000-row frame; numpy
//! with a 32 MiB array) are
//! restored again and again, in mmap mode, in uffd mode, and in uffd mode
//! prefetching the working set one request touched, against starting
//! the same program cold and against asking the warm original. Prints the
//! median of every restore phase, the time to the first answer, and the
//! ratios.
//!
//! `cargo bench -p pool --bench restore` (needs root and /usr/bin/python3;
//! the numpy workload is skipped without numpy and pandas);
//! `THAW_BENCH_VARIANTS=mmap` runs only the named variants,
//! `THAW_BENCH_WORKLOADS=json,numpy,array` only the named workloads (a
//! third one, numpy holding a 32 MiB read-only array, shows what
//! PMD-aligned images give where they apply).

#[path = "../tests/restore_support/mod.rs"]
mod restore_support;

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use pool::restore::{Mode, RestoreTimings};
use restore_support::{restore_full, restore_with_pipes, start, HASH_TABLE_PY};
use snapshotter::snapshot::snapshot_to_dir;

const NUMPY: &str = r#"
import os
for v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[v] = "1"
import sys, json
sys.path.insert(0, sys.argv[1])  # numpy and pandas (numpy_path)
import numpy as np, pandas as pd
rng = np.random.default_rng(7)
df = pd.DataFrame({"k": rng.integers(0, 50, 100000), "v": rng.random(100000)})
sys.stdout.write("ready\n")
sys.stdout.flush()
for line in sys.stdin:
    n = int(line)
    sys.stdout.write(json.dumps({"n": n, "g": round(float(df[df.k == n].v.sum()), 6)}) + "\n")
    sys.stdout.flush()
"#;

/// A function holding 32 MiB of read-only data (model weights, a lookup
/// table): a numpy array of its own mapping that each request reads whole
/// and never writes, the case PMD-aligned images are for.
const NUMPY_ARRAY: &str = r#"
import os
for v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[v] = "1"
import sys, json
sys.path.insert(0, sys.argv[1])  # numpy (numpy_path)
import numpy as np
w = np.random.default_rng(7).random(4 << 20)
sys.stdout.write("ready\n")
sys.stdout.flush()
for line in sys.stdin:
    n = int(line)
    sys.stdout.write(json.dumps({"n": n, "s": round(float(w.sum()) + n, 3)}) + "\n")
    sys.stdout.flush()
"#;

const ROUNDS: usize = 30;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// `args` follow the script (its `sys.argv[1:]`).
fn workload(name: &str, script: &str, args: &[&str], cold_rounds: usize) {
    let argv: Vec<&str> = ["-c", script]
        .into_iter()
        .chain(args.iter().copied())
        .collect();
    let python = Path::new("/usr/bin/python3");
    println!("== {name}");
    // Cold start: spawn to first answer.
    let mut cold = Vec::new();
    let mut expected = String::new();
    for _ in 0..cold_rounds {
        let started = Instant::now();
        let mut p = start(python, &argv);
        assert_eq!(p.line(), "ready");
        p.stdin.write_all(b"7\n").unwrap();
        expected = p.line();
        cold.push(started.elapsed());
    }

    let tmp = tempfile::tempdir().unwrap();
    let snap = tmp.path().join("snap");
    let mut original = start(python, &argv);
    assert_eq!(original.line(), "ready");
    // Warm: the same request to the running original.
    let mut warm = Vec::new();
    for _ in 0..ROUNDS {
        let started = Instant::now();
        original.stdin.write_all(b"7\n").unwrap();
        assert_eq!(original.line(), expected);
        warm.push(started.elapsed());
    }
    let info = snapshot_to_dir(original.child.id() as i32, &snap).unwrap();
    drop(original);
    println!(
        "snapshot: {} areas, {} stored pages, capture {:.2} ms",
        info.areas,
        info.stored_pages,
        info.timings.total_us as f64 / 1000.0
    );

    // The first restore builds the image; not counted.
    drop(restore_with_pipes(&snap, Mode::Mmap));
    let wanted = variants();
    // The working set of one request, recorded by a uffd copy.
    let working_set = if !wanted.iter().any(|v| v.starts_with("uffd")) {
        Vec::new()
    } else {
        let mut copy = restore_with_pipes(&snap, Mode::Uffd);
        copy.send(b"7\n");
        assert_eq!(copy.line(), expected);
        drop(copy.stdin);
        assert_eq!(copy.child.wait().unwrap(), 0);
        copy.child.server_stats.clone().unwrap().touched
    };
    if !working_set.is_empty() {
        populate_plan_ab(&snap, &working_set);
    }
    let mut answers = Vec::new();
    for (name, mode, prefetch, background) in [
        ("mmap", Mode::Mmap, Vec::new(), false),
        ("uffd", Mode::Uffd, Vec::new(), false),
        ("uffd+prefetch", Mode::Uffd, working_set.clone(), false),
        (
            "uffd+background prefetch",
            Mode::Uffd,
            working_set.clone(),
            true,
        ),
    ] {
        if !wanted.iter().any(|v| v == name) {
            continue;
        }
        let mut phases: Vec<RestoreTimings> = Vec::new();
        let mut first_answer = Vec::new();
        let mut served = None;
        for _ in 0..ROUNDS {
            let started = Instant::now();
            let mut copy = restore_full(&snap, mode, Vec::new(), prefetch.clone(), background);
            copy.send(b"7\n");
            let answer = copy.line();
            first_answer.push(started.elapsed());
            assert_eq!(answer, expected);
            phases.push(copy.child.timings);
            drop(copy.stdin);
            assert_eq!(copy.child.wait().unwrap(), 0);
            if let Some(s) = copy.child.server_stats.take() {
                served = Some(s);
            }
        }
        let pick = |f: fn(&RestoreTimings) -> Duration| median(phases.iter().map(f).collect());
        println!("{name} restore phases (median of {ROUNDS}, ms):");
        println!("  plan      {:8.3}", ms(pick(|t| t.plan)));
        println!("  stub      {:8.3}", ms(pick(|t| t.stub)));
        println!("  mappings  {:8.3}", ms(pick(|t| t.mappings)));
        println!("    batch   {:8.3}", ms(pick(|t| t.batch)));
        println!("  state     {:8.3}", ms(pick(|t| t.state)));
        println!("  resume    {:8.3}", ms(pick(|t| t.resume)));
        println!("  total     {:8.3}", ms(pick(|t| t.total())));
        println!(
            "  ptrace round trips {}, batched syscalls {}",
            phases[0].injected, phases[0].batched
        );
        if let Some(s) = served {
            println!(
                "  page server (one copy): {} faults, {} pages copied ({} prefetched), {} zero pages",
                s.faults, s.copied, s.prefetched, s.zero
            );
        }
        answers.push((name, median(first_answer)));
    }
    if wanted.iter().any(|v| v == "mmap") {
        guard_ab(&snap, &expected);
        env_ab(
            &snap,
            &expected,
            &[],
            "mmap private file areas",
            ["THAW_FILE_PRIVATE_MAP", "overlay"],
            ["run by run", "overlaid"],
        );
        env_ab(
            &snap,
            &expected,
            &[],
            "mmap adjacent mappings",
            ["THAW_MMAP_MERGE", "0"],
            ["merged", "one call each"],
        );
        let recorded = mmap_working_set(&snap, &expected);
        env_ab(
            &snap,
            &expected,
            &recorded,
            "mmap populating the working set",
            ["THAW_POPULATE_VECTOR", "0"],
            ["by vectors", "one madvise per range"],
        );
        env_ab(
            &snap,
            &expected,
            &recorded,
            "mmap populating the pages read",
            ["THAW_POPULATE_AROUND", "0"],
            ["a page per fault-around block", "every page"],
        );
        // The aligned image built before the rounds (the first restore
        // asking for it would build it).
        std::env::set_var("THAW_IMAGE_PMD", "1");
        drop(restore_with_pipes(&snap, Mode::Mmap));
        std::env::remove_var("THAW_IMAGE_PMD");
        pmd_report(&snap, &expected, &recorded);
        env_ab(
            &snap,
            &expected,
            &recorded,
            "mmap image placement",
            ["THAW_IMAGE_PMD", "1"],
            ["packed", "2 MiB-aligned"],
        );
    }
    let cold = median(cold);
    let warm = median(warm);
    println!(
        "warm answer {:.3} ms, cold start to first answer {:.3} ms",
        ms(warm),
        ms(cold)
    );
    for (name, restored) in answers {
        println!(
            "restore to first answer ({name}): {:.3} ms = cold / {:.1} = warm x {:.1}",
            ms(restored),
            cold.as_secs_f64() / restored.as_secs_f64(),
            restored.as_secs_f64() / warm.as_secs_f64()
        );
    }
}

/// The restorer's share of a uffd copy's populate plan for a working set
/// of `pages`: as before 2026-12-06 (the pages outside the areas the page
/// server fills searched for at every restore, then the kept plan looked
/// up with them) against now (the kept plan looked up with the working set
/// as given). Rounds interleaved.
fn populate_plan_ab(snap: &Path, pages: &[u64]) {
    use pool::restore::plans::{PopulateScope, SnapshotPlans};
    use pool::restore::working_set::{outside_lazy_areas, reads_wanted};
    let snapshot = snapshotter::snapshot::open_snapshot_dir(snap).unwrap().0;
    let areas = &snapshot.state.areas;
    let reads = reads_wanted();
    let (before_plans, now_plans) = (SnapshotPlans::default(), SnapshotPlans::default());
    let (mut before, mut now) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS * 20 {
        let started = Instant::now();
        let outside = outside_lazy_areas(pages, areas);
        std::hint::black_box(before_plans.populate_ranges(
            &outside,
            areas,
            reads,
            PopulateScope::All,
            false,
        ));
        before.push(started.elapsed());
        let started = Instant::now();
        std::hint::black_box(now_plans.populate_ranges(
            pages,
            areas,
            reads,
            PopulateScope::OutsideLazyAreas,
            false,
        ));
        now.push(started.elapsed());
    }
    let (b, n) = (median(before), median(now));
    println!(
        "uffd populate plan (restorer side, working set of {} pages, {} areas, median of {}): \
         before {:.2} µs, now {:.2} µs, before / now {:.1}",
        pages.len(),
        areas.len(),
        ROUNDS * 20,
        b.as_secs_f64() * 1e6,
        n.as_secs_f64() * 1e6,
        b.as_secs_f64() / n.as_secs_f64()
    );
}

/// mmap mode with and without the anonymous-memory guard
/// (`pool::restore::anon`), rounds interleaved: restore and first-answer
/// medians, and their ratios.
fn guard_ab(snap: &Path, expected: &str) {
    let mut with = (Vec::new(), Vec::new(), Vec::new());
    let mut without = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..2 * ROUNDS {
        let on = round % 2 == 0;
        pool::restore::anon::set_enabled(on);
        let started = Instant::now();
        let mut copy = restore_with_pipes(snap, Mode::Mmap);
        copy.send(b"7\n");
        assert_eq!(copy.line(), expected);
        let answered = started.elapsed();
        let side = if on { &mut with } else { &mut without };
        side.0.push(copy.child.timings.total());
        side.1.push(answered);
        // The phases the guard adds to: mapping batch and state.
        side.2
            .push(copy.child.timings.batch + copy.child.timings.state);
        drop(copy.stdin);
        assert_eq!(copy.child.wait().unwrap(), 0);
    }
    pool::restore::anon::set_enabled(true);
    // The restorer's share: planning the guard (filter, handler copy).
    let (snapshot, store) = snapshotter::snapshot::open_snapshot_dir(snap).unwrap();
    let image = store.image(&snapshot.id).unwrap();
    let mut plans = Vec::new();
    let mut filter_len = 0;
    for _ in 0..ROUNDS {
        let started = Instant::now();
        let g = pool::restore::anon::Guard::plan(
            &snapshot.state,
            &image.file,
            &[],
            &Default::default(),
        )
        .unwrap();
        plans.push(started.elapsed());
        filter_len = g.filter_len();
    }
    // The same with the filter kept per snapshot, as the server's restorer
    // does (`restore::plans`): every plan after the first reuses it.
    let memo = pool::restore::anon::FilterMemo::default();
    let mut memo_plans = Vec::new();
    for _ in 0..ROUNDS {
        let started = Instant::now();
        pool::restore::anon::Guard::plan_with(
            &snapshot.state,
            &image.file,
            &[],
            &Default::default(),
            Some(&memo),
        )
        .unwrap();
        memo_plans.push(started.elapsed());
    }
    println!(
        "  guard plan (restorer side) {:.3} ms; filter {filter_len} instructions; \
         {:.3} ms with the filter kept per snapshot",
        ms(median(plans)),
        ms(median(memo_plans))
    );
    let (r_on, a_on, p_on) = (median(with.0), median(with.1), median(with.2));
    let (r_off, a_off, p_off) = (median(without.0), median(without.1), median(without.2));
    println!(
        "  guard A/B: mapping batch + state {:.3} ms with / {:.3} ms without (+{:.3} ms)",
        ms(p_on),
        ms(p_off),
        ms(p_on) - ms(p_off)
    );
    println!(
        "mmap anonymous-memory guard A/B (interleaved, median of {ROUNDS} each): \
         restore {:.3} ms with / {:.3} ms without = x{:.2}; \
         first answer {:.3} / {:.3} ms = x{:.2}",
        ms(r_on),
        ms(r_off),
        r_on.as_secs_f64() / r_off.as_secs_f64(),
        ms(a_on),
        ms(a_off),
        a_on.as_secs_f64() / a_off.as_secs_f64()
    );
}

/// mmap mode with the server's default against `var=value` (in the
/// environment, as the server reads it), rounds interleaved: the mapping
/// batch, the batched calls, the stub's CPU time up to the resume (what
/// the sandbox's cgroup is charged for the restore: from the stub's start
/// through the mapping batch), the restore and the first answer. `what`
/// names the comparison, `default` and `other` the two arms.
/// `prefetch`: the working set populated before the resume (empty: none).
fn env_ab(
    snap: &Path,
    expected: &str,
    prefetch: &[u64],
    what: &str,
    [var, value]: [&str; 2],
    arms: [&str; 2],
) {
    #[derive(Default)]
    struct Arm {
        batch: Vec<Duration>,
        restore: Vec<Duration>,
        answer: Vec<Duration>,
        stub_cpu: Vec<Duration>,
        calls: u32,
    }
    let mut sides = [Arm::default(), Arm::default()];
    for round in 0..2 * ROUNDS {
        let default = round % 2 == 0;
        if default {
            std::env::remove_var(var);
        } else {
            std::env::set_var(var, value);
        }
        let started = Instant::now();
        let mut copy = restore_full(snap, Mode::Mmap, Vec::new(), prefetch.to_vec(), false);
        let stub_cpu = thread_cpu(copy.child.pid());
        copy.send(b"7\n");
        assert_eq!(copy.line(), expected);
        let answered = started.elapsed();
        let side = &mut sides[usize::from(!default)];
        side.batch.push(copy.child.timings.batch);
        side.restore.push(copy.child.timings.total());
        side.answer.push(answered);
        side.stub_cpu.push(stub_cpu);
        side.calls = copy.child.timings.batched;
        drop(copy.stdin);
        assert_eq!(copy.child.wait().unwrap(), 0);
    }
    std::env::remove_var(var);
    let m = |v: &Vec<Duration>| ms(median(v.clone()));
    let p90 = |v: &Vec<Duration>| {
        let mut v = v.clone();
        v.sort();
        ms(v[v.len() * 9 / 10])
    };
    let [a, b] = &sides;
    println!(
        "{what} A/B (interleaved, median of {ROUNDS} each, {} / {}): \
         mapping batch {:.3} / {:.3} ms ({} / {} batched calls); \
         stub CPU to the resume {:.3} / {:.3} ms; \
         restore {:.3} / {:.3} ms; first answer {:.3} / {:.3} ms \
         (p90: stub CPU {:.3} / {:.3}, restore {:.3} / {:.3}, first answer {:.3} / {:.3} ms)",
        arms[0],
        arms[1],
        m(&a.batch),
        m(&b.batch),
        a.calls,
        b.calls,
        m(&a.stub_cpu),
        m(&b.stub_cpu),
        m(&a.restore),
        m(&b.restore),
        m(&a.answer),
        m(&b.answer),
        p90(&a.stub_cpu),
        p90(&b.stub_cpu),
        p90(&a.restore),
        p90(&b.restore),
        p90(&a.answer),
        p90(&b.answer)
    );
}

/// How much of an mmap copy (the working set `prefetch` populated) its
/// smaps shows mapped by PMDs, before and after its first request, with
/// the packed and the 2 MiB-aligned image (`THAW_IMAGE_PMD=1`).
fn pmd_report(snap: &Path, expected: &str, prefetch: &[u64]) {
    let kb = |pid: i32, field: &str| -> u64 {
        let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap();
        smaps
            .lines()
            .filter_map(|l| l.strip_prefix(field))
            .filter_map(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .sum()
    };
    for aligned in [false, true] {
        if aligned {
            std::env::set_var("THAW_IMAGE_PMD", "1");
        }
        let mut copy = restore_full(snap, Mode::Mmap, Vec::new(), prefetch.to_vec(), false);
        std::env::remove_var("THAW_IMAGE_PMD");
        let pid = copy.child.pid();
        let before = (kb(pid, "FilePmdMapped:"), kb(pid, "Rss:"));
        copy.send(b"7\n");
        assert_eq!(copy.line(), expected);
        let after = (kb(pid, "FilePmdMapped:"), kb(pid, "Rss:"));
        println!(
            "  {}: FilePmdMapped {} kB of Rss {} kB at the resume, {} of {} kB after the first answer",
            if aligned { "2 MiB-aligned image" } else { "packed image" },
            before.0,
            before.1,
            after.0,
            after.1
        );
        drop(copy.stdin);
        assert_eq!(copy.child.wait().unwrap(), 0);
    }
}

/// The working set an mmap copy records as the server's does: its resident
/// pages after its first request, those that were not resident before it
/// tagged `INVOKED`, those it holds its own copy of `WRITTEN`.
fn mmap_working_set(snap: &Path, expected: &str) -> Vec<u64> {
    let (snapshot, _) = snapshotter::snapshot::open_snapshot_dir(snap).unwrap();
    let areas = &snapshot.state.areas;
    let mut copy = restore_with_pipes(snap, Mode::Mmap);
    let pid = copy.child.pid();
    let before = pool::restore::working_set::resident_pages(pid, areas).unwrap();
    copy.send(b"7\n");
    assert_eq!(copy.line(), expected);
    let after = pool::restore::working_set::resident_pages(pid, areas).unwrap();
    drop(copy.stdin);
    assert_eq!(copy.child.wait().unwrap(), 0);
    let pages = pool::restore::working_set::tag_invoked(after, &before);
    let ranges = pool::restore::working_set::populate_ranges(&pages, areas, false);
    println!(
        "  recorded working set: {} pages, {} populate ranges",
        pages.len(),
        ranges.len()
    );
    pages
}

/// CPU time of process `pid`'s main thread so far (the first field of
/// `/proc/PID/schedstat`, nanoseconds on a CPU).
fn thread_cpu(pid: i32) -> Duration {
    let text = std::fs::read_to_string(format!("/proc/{pid}/schedstat")).unwrap();
    let ns: u64 = text.split_whitespace().next().unwrap().parse().unwrap();
    Duration::from_nanos(ns)
}

/// The variants to run: `THAW_BENCH_VARIANTS` (comma-separated names:
/// mmap, uffd, uffd+prefetch, uffd+background prefetch), all by default.
fn variants() -> Vec<String> {
    match std::env::var("THAW_BENCH_VARIANTS") {
        Ok(list) => list.split(',').map(|v| v.trim().to_string()).collect(),
        Err(_) => ["mmap", "uffd", "uffd+prefetch", "uffd+background prefetch"]
            .map(String::from)
            .to_vec(),
    }
}

/// Whether to run the workload `name` names (json, numpy, array):
/// `THAW_BENCH_WORKLOADS` (comma-separated), all by default.
fn workload_wanted(name: &str) -> bool {
    std::env::var("THAW_BENCH_WORKLOADS")
        .map_or(true, |list| list.split(',').any(|w| w.trim() == name))
}

fn main() {
    if !nix::unistd::geteuid().is_root() || !Path::new("/usr/bin/python3").exists() {
        skip!("restore bench: needs root and /usr/bin/python3");
    }
    if workload_wanted("json") {
        workload("python3 json + hashlib", HASH_TABLE_PY, &[], 20);
    }
    if !workload_wanted("numpy") && !workload_wanted("array") {
        return;
    }
    if let Some(numpy) = restore_support::numpy_path("restore bench's numpy workload") {
        if workload_wanted("numpy") {
            workload("python3 numpy + pandas", NUMPY, &[&numpy], 8);
        }
        if workload_wanted("array") {
            workload(
                "python3 numpy, 32 MiB read-only array",
                NUMPY_ARRAY,
                &[&numpy],
                8,
            );
        }
    }
}
