//! Threads benchmark (issue 14): capture and restore of a 16-thread
//! program against a single-threaded one with the same memory (32 MiB
//! touched by the main thread; the 15 other threads wait on a condition
//! variable). Rounds of the two programs are interleaved; prints the
//! medians and the ratio 16 threads / 1 thread (goal: within 1.5x each),
//! for capture (`snapshot_to_dir`), and for restore and restore to the
//! first answer in mmap and uffd mode, with the median of every restore
//! phase for 1 and 16 threads (issue 16: the restore phases with threads)
//! and of the time outside the phases (loading the snapshot, and the
//! restorer's wait for a CPU once the copy's threads run again), and in
//! uffd mode what the page server did for each copy (faults, pages copied:
//! the first answers of both programs touch the same pages).
//!
//! Both programs have the same memory; the 16-thread one differs only by
//! its threads (each with its stack, TLS and rseq area, waiting on the
//! same condition variable). The machine this runs on is usually shared:
//! compare two builds by running them alternately in one window (docs/
//! restore.md, "Threads"), never against figures taken at another time.
//!
//! Within a round the order of the two programs alternates (1 then 16,
//! then 16 then 1 in the next round): a restore pays for what the one
//! before it left (the other copy's exit, the restorer's caches), and
//! neither arm always follows the other. Besides the ratio of the two
//! medians, the bench prints the median of the per-round ratios (each
//! 16-thread restore over the 1-thread restore of its own round, run
//! back to back: drift of the machine's load between rounds cancels), and
//! ends with a summary of every ratio against the goal and the load
//! average before and after (the machine is usually shared: a run on a
//! loaded machine says so).
//!
//! `cargo bench -p pool --bench threads` (needs root and a C compiler);
//! `THREADS_BENCH_N` rounds instead of 25, `THREADS_BENCH_ROUNDS=1` prints
//! every round's phases.

#[path = "../tests/restore_support/mod.rs"]
mod restore_support;

use std::io::Write;
use std::time::{Duration, Instant};

use pool::restore::Mode;
use restore_support::{compile, restore_with_pipes, start, Started};
use snapshotter::snapshot::snapshot_to_dir;

const PROGRAM: &str = r#"
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cond = PTHREAD_COND_INITIALIZER;
static int go;
static void *idle(void *arg) {
    (void)arg;
    pthread_mutex_lock(&lock);
    while (!go) pthread_cond_wait(&cond, &lock);
    pthread_mutex_unlock(&lock);
    return NULL;
}
int main(int argc, char **argv) {
    int threads = atoi(argv[1]);
    size_t bytes = (size_t)atoi(argv[2]) << 20;
    unsigned char *mem = malloc(bytes);
    for (size_t i = 0; i < bytes; i++) mem[i] = (unsigned char)(i * 31 + 7);
    pthread_t t;
    for (int i = 1; i < threads; i++) pthread_create(&t, NULL, idle, NULL);
    printf("ready\n");
    fflush(stdout);
    char line[64];
    while (fgets(line, sizeof line, stdin)) {
        unsigned long sum = 0;
        for (size_t i = 0; i < bytes; i += 4096) sum += mem[i];
        printf("%lu\n", sum);
        fflush(stdout);
    }
    return 0;
}
"#;

/// Rounds per arm; `THREADS_BENCH_N` sets another number (more rounds
/// steady the medians on a busy machine).
const ROUNDS: usize = 25;

fn rounds() -> usize {
    std::env::var("THREADS_BENCH_N")
        .ok()
        .and_then(|n| n.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(ROUNDS)
}
const MIB: &str = "32";

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// The 90th percentile (nearest rank).
fn p90(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[(v.len() * 9).div_ceil(10).saturating_sub(1)]
}

/// The order of the two programs in round `round`: alternating, so that
/// neither always runs right after the other.
fn order(round: usize) -> [usize; 2] {
    if round % 2 == 0 {
        [0, 1]
    } else {
        [1, 0]
    }
}

/// The median of the per-round ratios `b[i] / a[i]` (the same round's two
/// programs, run back to back).
fn paired_ratio(a: &[Duration], b: &[Duration]) -> f64 {
    let mut r: Vec<f64> = a
        .iter()
        .zip(b)
        .map(|(a, b)| b.as_secs_f64() / a.as_secs_f64().max(1e-9))
        .collect();
    r.sort_by(|x, y| x.total_cmp(y));
    r[r.len() / 2]
}

/// `/proc/loadavg`'s first three fields.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// One line of the summary: a ratio and whether it meets the goal.
fn verdict(ratio: f64) -> &'static str {
    if ratio <= GOAL {
        "met"
    } else {
        "NOT met"
    }
}

/// Issue 14's goal for every 16 threads / 1 thread ratio.
const GOAL: f64 = 1.5;

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn ask(p: &mut Started) -> String {
    p.stdin.write_all(b"x\n").unwrap();
    p.line()
}

fn main() {
    if !nix::unistd::geteuid().is_root()
        || std::process::Command::new("cc")
            .arg("--version")
            .output()
            .is_err()
    {
        skip!("threads bench: needs root and a C compiler");
    }
    let rounds = rounds();
    let tmp = tempfile::tempdir().unwrap();
    let program = compile(tmp.path(), "threads", PROGRAM);
    let kinds = [("1 thread", "1"), ("16 threads", "16")];
    let mut originals: Vec<Started> = kinds
        .iter()
        .map(|(_, n)| {
            let mut p = start(&program, &[n, MIB]);
            assert_eq!(p.line(), "ready");
            p
        })
        .collect();
    let expected: Vec<String> = originals.iter_mut().map(ask).collect();
    assert_eq!(expected[0], expected[1], "same memory, same answer");

    // Capture, interleaved.
    let mut capture = [Vec::new(), Vec::new()];
    let load_before = loadavg();
    for round in 0..rounds {
        for k in order(round) {
            let p = &originals[k];
            let dir = tmp.path().join(format!("cap-{k}-{round}"));
            let started = Instant::now();
            snapshot_to_dir(p.child.id() as i32, &dir).unwrap();
            capture[k].push(started.elapsed());
            std::fs::remove_dir_all(&dir).unwrap();
        }
    }
    let snaps: Vec<_> = originals
        .iter()
        .enumerate()
        .map(|(k, p)| {
            let dir = tmp.path().join(format!("snap-{k}"));
            snapshot_to_dir(p.child.id() as i32, &dir).unwrap();
            dir
        })
        .collect();
    drop(originals);
    println!("== capture of {MIB} MiB (median and p90 of {rounds}, ms)");
    let c: Vec<Duration> = capture.iter().cloned().map(median).collect();
    for (k, (name, _)) in kinds.iter().enumerate() {
        println!(
            "  {name:10} {:8.3} {:8.3}",
            ms(c[k]),
            ms(p90(capture[k].clone()))
        );
    }
    let capture_ratio = c[1].as_secs_f64() / c[0].as_secs_f64();
    let capture_paired = paired_ratio(&capture[0], &capture[1]);
    println!("  ratio 16/1 {capture_ratio:.2}, per round {capture_paired:.2} (goal <= {GOAL})");
    let mut summary = vec![("capture".to_string(), capture_ratio, capture_paired)];

    // Loading a snapshot (part of every restore here, outside the phases):
    // the 16-thread one has 15 more threads' states and 30 more areas.
    let mut load = [Vec::new(), Vec::new()];
    for round in 0..rounds {
        for k in order(round) {
            let snap = &snaps[k];
            let started = Instant::now();
            drop(snapshotter::snapshot::open_snapshot_dir(snap).unwrap());
            load[k].push(started.elapsed());
        }
    }
    let l: Vec<Duration> = load.into_iter().map(median).collect();
    println!(
        "== loading the snapshot (median of {rounds}, ms): 1 thread {:.3}, 16 threads {:.3}",
        ms(l[0]),
        ms(l[1])
    );

    for mode in [Mode::Mmap, Mode::Uffd] {
        // The first restore of each builds its image; not counted.
        for snap in &snaps {
            drop(restore_with_pipes(snap, mode));
        }
        let mut restore = [Vec::new(), Vec::new()];
        let mut answer = [Vec::new(), Vec::new()];
        let mut phases: [Vec<pool::restore::RestoreTimings>; 2] = [Vec::new(), Vec::new()];
        // uffd mode: what each copy's page server did (faults, pages
        // copied, zero pages), to tell the first answers apart.
        let mut served: [Vec<(u64, u64, u64)>; 2] = [Vec::new(), Vec::new()];
        for round in 0..rounds {
            for k in order(round) {
                let snap = &snaps[k];
                let started = Instant::now();
                let mut copy = restore_with_pipes(snap, mode);
                let restored = started.elapsed();
                copy.send(b"x\n");
                assert_eq!(copy.line(), expected[k]);
                answer[k].push(started.elapsed());
                restore[k].push(restored);
                phases[k].push(copy.child.timings);
                drop(copy.stdin);
                assert_eq!(copy.child.wait().unwrap(), 0);
                if let Some(r) = &copy.child.server_stats {
                    served[k].push((r.faults, r.copied, r.zero));
                }
            }
        }
        if std::env::var_os("THREADS_BENCH_ROUNDS").is_some() {
            for (k, (name, _)) in kinds.iter().enumerate() {
                for t in &phases[k] {
                    println!(
                        "  round {name}: stub {:.3} mappings {:.3} state {:.3} (threads {:.3}) resume {:.3}",
                        ms(t.stub),
                        ms(t.mappings),
                        ms(t.state),
                        ms(t.threads),
                        ms(t.resume)
                    );
                }
            }
        }
        let r: Vec<Duration> = restore.iter().cloned().map(median).collect();
        let a: Vec<Duration> = answer.iter().cloned().map(median).collect();
        // Outside the phases: loading the snapshot, and what the restorer
        // waits for once the copy's threads run again (on 2 CPUs they
        // compete with it; in uffd mode with the page server too).
        let outside: Vec<Duration> = (0..2)
            .map(|k| {
                median(
                    restore[k]
                        .iter()
                        .zip(&phases[k])
                        .map(|(r, t)| r.saturating_sub(t.total()))
                        .collect(),
                )
            })
            .collect();
        println!("== {mode:?} restore (median of {rounds}, ms): restore, its p90, first answer, outside the phases");
        for (k, (name, _)) in kinds.iter().enumerate() {
            println!(
                "  {name:10} {:8.3} {:8.3} {:8.3} {:8.3}",
                ms(r[k]),
                ms(p90(restore[k].clone())),
                ms(a[k]),
                ms(outside[k])
            );
        }
        for (k, (name, _)) in kinds.iter().enumerate() {
            let pick = |f: fn(&pool::restore::RestoreTimings) -> Duration| {
                median(phases[k].iter().map(f).collect())
            };
            // The stub phase makes no thread: its tail (p90) is the
            // rounds that waited for a CPU, the same in both programs
            // unless one leaves the machine busier for the next restore.
            println!(
                "  {name:10} phases: plan {:.3} stub {:.3} (p90 {:.3}) mappings {:.3} (batch {:.3}) state {:.3} (threads {:.3}) resume {:.3}; {} round trips, {} batched",
                ms(pick(|t| t.plan)),
                ms(pick(|t| t.stub)),
                ms(p90(phases[k].iter().map(|t| t.stub).collect())),
                ms(pick(|t| t.mappings)),
                ms(pick(|t| t.batch)),
                ms(pick(|t| t.state)),
                ms(pick(|t| t.threads)),
                ms(pick(|t| t.resume)),
                phases[k][0].injected,
                phases[k][0].batched,
            );
        }
        for (k, (name, _)) in kinds.iter().enumerate() {
            if served[k].is_empty() {
                continue;
            }
            let mid = |f: fn(&(u64, u64, u64)) -> u64| {
                let mut v: Vec<u64> = served[k].iter().map(f).collect();
                v.sort_unstable();
                v[v.len() / 2]
            };
            println!(
                "  {name:10} page server: {} faults, {} pages copied, {} zero pages (medians)",
                mid(|s| s.0),
                mid(|s| s.1),
                mid(|s| s.2)
            );
        }
        // The phases' total leaves out loading the snapshot and whatever
        // the restorer waits for after the copy resumed (on a busy machine
        // the copy's threads, running again, compete with it).
        let totals: Vec<Vec<Duration>> = phases
            .iter()
            .map(|t| t.iter().map(|t| t.total()).collect())
            .collect();
        let p: Vec<Duration> = totals.iter().cloned().map(median).collect();
        let ratio = |m: &[Duration]| m[1].as_secs_f64() / m[0].as_secs_f64();
        let lines = [
            ("restore", ratio(&r), paired_ratio(&restore[0], &restore[1])),
            (
                "first answer",
                ratio(&a),
                paired_ratio(&answer[0], &answer[1]),
            ),
            (
                "phases' total",
                ratio(&p),
                paired_ratio(&totals[0], &totals[1]),
            ),
        ];
        println!(
            "  ratio 16/1 restore {:.2}, first answer {:.2}, phases' total {:.2} ({:.3} / {:.3} ms) (goal <= {GOAL})",
            lines[0].1,
            lines[1].1,
            lines[2].1,
            ms(p[1]),
            ms(p[0]),
        );
        println!(
            "  per-round ratios 16/1 (median): restore {:.2}, first answer {:.2}, phases' total {:.2}",
            lines[0].2, lines[1].2, lines[2].2,
        );
        for (what, of_medians, per_round) in lines {
            summary.push((format!("{mode:?} {what}"), of_medians, per_round));
        }
    }

    println!(
        "== summary: 16 threads / 1 thread, {rounds} rounds, goal <= {GOAL} (load average before {load_before}, after {})",
        loadavg()
    );
    println!(
        "  {:24} {:>16} {:>16}",
        "", "ratio of medians", "per-round median"
    );
    for (what, of_medians, per_round) in &summary {
        println!(
            "  {what:24} {of_medians:>9.2} {:>6} {per_round:>9.2} {:>6}",
            verdict(*of_medians),
            verdict(*per_round)
        );
    }
}
