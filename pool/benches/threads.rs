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
    for round in 0..rounds {
        for (k, p) in originals.iter().enumerate() {
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
    println!("== capture of {MIB} MiB (median of {rounds}, ms)");
    let c: Vec<Duration> = capture.into_iter().map(median).collect();
    for (k, (name, _)) in kinds.iter().enumerate() {
        println!("  {name:10} {:8.3}", ms(c[k]));
    }
    println!(
        "  ratio 16/1 {:.2} (goal <= 1.5)",
        c[1].as_secs_f64() / c[0].as_secs_f64()
    );

    // Loading a snapshot (part of every restore here, outside the phases):
    // the 16-thread one has 15 more threads' states and 30 more areas.
    let mut load = [Vec::new(), Vec::new()];
    for _ in 0..rounds {
        for (k, snap) in snaps.iter().enumerate() {
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
        for _ in 0..rounds {
            for (k, snap) in snaps.iter().enumerate() {
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
        let a: Vec<Duration> = answer.into_iter().map(median).collect();
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
        println!("== {mode:?} restore (median of {rounds}, ms): restore, first answer, outside the phases");
        for (k, (name, _)) in kinds.iter().enumerate() {
            println!(
                "  {name:10} {:8.3} {:8.3} {:8.3}",
                ms(r[k]),
                ms(a[k]),
                ms(outside[k])
            );
        }
        for (k, (name, _)) in kinds.iter().enumerate() {
            let pick = |f: fn(&pool::restore::RestoreTimings) -> Duration| {
                median(phases[k].iter().map(f).collect())
            };
            println!(
                "  {name:10} phases: plan {:.3} stub {:.3} mappings {:.3} (batch {:.3}) state {:.3} (threads {:.3}) resume {:.3}; {} round trips, {} batched",
                ms(pick(|t| t.plan)),
                ms(pick(|t| t.stub)),
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
        let p: Vec<Duration> = phases
            .iter()
            .map(|t| median(t.iter().map(|t| t.total()).collect()))
            .collect();
        println!(
            "  ratio 16/1 restore {:.2}, first answer {:.2}, phases' total {:.2} ({:.3} / {:.3} ms) (goal <= 1.5)",
            r[1].as_secs_f64() / r[0].as_secs_f64(),
            a[1].as_secs_f64() / a[0].as_secs_f64(),
            p[1].as_secs_f64() / p[0].as_secs_f64(),
            ms(p[1]),
            ms(p[0]),
        );
    }
}
