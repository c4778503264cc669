//! Restored copies through the API: a thousand in a row leak nothing; a
//! copy killed among twenty does not disturb the others; clocks, CPU
//! numbers, pids and `/proc/self/exe` are right in a copy (the pitfalls of
//! DESIGN.md). Run in every memory mode the server offers.

mod common;

use std::time::{Duration, Instant};

use common::{footprint, function, Server};
use serde_json::{json, Value};

/// Counts the calls (the warm-up advances the counter into the snapshot)
/// and reports what a copy must get right.
const PROBE: &str = r#"
import ctypes, os, time
LIBC = ctypes.CDLL(None, use_errno=True)
CALLS = 0

def cpus():
    seen = []
    allowed = sorted(os.sched_getaffinity(0))
    for cpu in allowed:
        os.sched_setaffinity(0, {cpu})
        seen.append([cpu, LIBC.sched_getcpu()])
    os.sched_setaffinity(0, set(allowed))
    return seen

def handler(event, context):
    global CALLS
    CALLS += 1
    if event.get("die"):
        os.kill(os.getpid(), 9)
    if event.get("sleep"):
        time.sleep(event["sleep"])
    out = {"calls": CALLS}
    if event.get("probe"):
        out.update({
            "realtime": time.time(),
            "monotonic": time.monotonic(),
            "boottime": time.clock_gettime(time.CLOCK_BOOTTIME),
            "cpus": cpus(),
            "pid": os.getpid(),
            "ppid": os.getppid(),
            "stat_pid": int(open("/proc/self/stat").read().split()[0]),
            "exe": os.readlink("/proc/self/exe"),
            "uid": os.getuid(),
        })
    return out
"#;

/// The memory modes this server binary offers (`uffd` once `thaw serve`
/// has `--memory-mode`).
fn modes() -> Vec<&'static str> {
    let help = std::process::Command::new(env!("CARGO_BIN_EXE_thaw"))
        .args(["serve", "--help"])
        .output()
        .expect("thaw serve --help");
    if String::from_utf8_lossy(&help.stdout).contains("--memory-mode") {
        vec!["mmap", "uffd"]
    } else {
        eprintln!("note: thaw serve has no --memory-mode yet: mmap only");
        vec!["mmap"]
    }
}

fn server_for(mode: &str) -> Server {
    let mut args = vec!["--allow-forced-cold"];
    if mode != "mmap" || modes().len() > 1 {
        args.extend(["--memory-mode", mode]);
    }
    Server::start(&args)
}

async fn deploy(server: &Server, extra: Value) {
    let mut settings = json!({"warmup": [{}, {}, {}], "keep_alive_s": 600});
    for (k, v) in extra.as_object().unwrap() {
        settings[k] = v.clone();
    }
    let rec = server
        .deploy_ready(function("probe", PROBE, settings))
        .await;
    assert!(!rec["snapshot"].is_null(), "a snapshot was taken: {rec}");
}

async fn restore(server: &Server, event: Value) -> common::Answer {
    server
        .invoke_raw(
            "probe",
            serde_json::to_vec(&event).unwrap(),
            &[("x-thaw-cold", "restore")],
        )
        .await
}

#[tokio::test]
async fn a_thousand_restores_in_a_row_leak_nothing() {
    require_root!();
    for mode in modes() {
        let server = server_for(mode);
        deploy(&server, json!({})).await;
        // Let the first restores build caches (image, thread pools).
        for _ in 0..20 {
            assert_eq!(restore(&server, json!({})).await.status, 200);
        }
        // Spares (pre-made stub sandboxes) refill and discarded copies are
        // torn down in the background: compare footprints once the pool
        // says both are done.
        server.settle("probe", 2).await;
        let before = footprint(&server);
        for i in 0..1000 {
            let a = restore(&server, json!({})).await;
            assert_eq!(a.status, 200, "{mode}: restore {i}: {}", a.text());
            assert_eq!(a.header("x-thaw-start"), "restore");
            assert_eq!(
                a.json()["calls"],
                4,
                "{mode}: restore {i} from the snapshot"
            );
        }
        // Discarded copies are torn down in the background: wait for the
        // pool to say they are gone, then compare.
        server.settle("probe", 2).await;
        let after = footprint(&server);
        eprintln!("{mode}: before {before:?}, after 1000 restores {after:?}");
        assert_eq!(after.cgroups, before.cgroups, "{mode}: cgroups");
        assert_eq!(after.sandbox_pids, before.sandbox_pids, "{mode}: processes");
        assert_eq!(after.mounts, before.mounts, "{mode}: mounts");
        assert_eq!(after.run_entries, before.run_entries, "{mode}: run dir");
        // Thread stacks of the runtime's pools come and go; a leak of one
        // descriptor or mapping per restore would show as a thousand.
        assert!(
            after.fds <= before.fds + 16,
            "{mode}: fds {before:?} → {after:?}"
        );
        assert!(
            after.maps <= before.maps + 64,
            "{mode}: mappings {before:?} → {after:?}"
        );
    }
}

/// Host pids of restored copies: the function's pid 2 whose memory maps
/// the snapshot's image (or, in uffd mode, any pid 2 but the original's).
fn copies(server: &Server, original: i32) -> Vec<i32> {
    server
        .sandbox_pids()
        .into_iter()
        .filter(|&pid| pid != original)
        .filter(|pid| {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            status
                .lines()
                .any(|l| l.starts_with("NSpid:") && l.ends_with("\t2"))
                && String::from_utf8_lossy(&cmd).contains("bootstrap.py")
        })
        .collect()
}

fn ns_pid2_of(server: &Server) -> Vec<i32> {
    copies(server, 0)
}

#[tokio::test]
async fn a_copy_killed_among_twenty_does_not_disturb_the_others() {
    require_root!();
    for mode in modes() {
        let server = std::sync::Arc::new(server_for(mode));
        deploy(&server, json!({"concurrency": 20})).await;
        let originals = ns_pid2_of(&server);
        assert_eq!(originals.len(), 1, "{mode}: the warmed original only");
        let tasks: Vec<_> = (0..20)
            .map(|_| {
                let s = server.clone();
                tokio::spawn(async move { restore(&s, json!({"sleep": 3})).await })
            })
            .collect();
        // Wait for the twenty copies, then kill one.
        let t0 = Instant::now();
        let running = loop {
            let c = copies(&server, originals[0]);
            if c.len() >= 20 || t0.elapsed() > Duration::from_secs(60) {
                break c;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert_eq!(running.len(), 20, "{mode}: twenty copies at once");
        let victim = running[7];
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(victim),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        let mut ok = 0;
        let mut crashed = 0;
        for t in tasks {
            let a = t.await.unwrap();
            match a.status {
                200 => {
                    ok += 1;
                    assert_eq!(a.header("x-thaw-start"), "restore");
                    assert_eq!(a.json()["calls"], 4, "{mode}: each copy counts alone");
                }
                502 => {
                    crashed += 1;
                    assert_eq!(a.json()["error"], "function_crashed", "{}", a.text());
                }
                s => panic!("{mode}: unexpected {s}: {}", a.text()),
            }
        }
        assert_eq!(
            (ok, crashed),
            (19, 1),
            "{mode}: only the killed copy failed"
        );
        // The original is untouched and still warm.
        let a = server.invoke("probe", json!({})).await;
        assert_eq!(a.header("x-thaw-start"), "warm");
        assert_eq!(a.json()["calls"], 4, "{mode}: the original counts on");
    }
}

fn clock(id: nix::time::ClockId) -> f64 {
    let t = nix::time::clock_gettime(id).unwrap();
    t.tv_sec() as f64 + t.tv_nsec() as f64 / 1e9
}

#[tokio::test]
async fn clocks_cpus_pids_and_exe_are_right_in_a_copy() {
    require_root!();
    use nix::time::ClockId;
    for mode in modes() {
        let server = server_for(mode);
        deploy(&server, json!({})).await;
        let original = server.invoke("probe", json!({"probe": true})).await.json();
        assert_eq!(original["calls"], 4);

        let (r0, m0, b0) = (
            clock(ClockId::CLOCK_REALTIME),
            clock(ClockId::CLOCK_MONOTONIC),
            clock(ClockId::CLOCK_BOOTTIME),
        );
        let a = restore(&server, json!({"probe": true})).await;
        let (r1, m1, b1) = (
            clock(ClockId::CLOCK_REALTIME),
            clock(ClockId::CLOCK_MONOTONIC),
            clock(ClockId::CLOCK_BOOTTIME),
        );
        assert_eq!(a.status, 200, "{}", a.text());
        assert_eq!(a.header("x-thaw-start"), "restore");
        let copy = a.json();
        assert_eq!(copy["calls"], 4, "{mode}: {copy}");
        // The vDSO's clocks read the host's time now, not the snapshot's:
        // each lies between our readings before and after the request.
        for (name, lo, hi) in [
            ("realtime", r0, r1),
            ("monotonic", m0, m1),
            ("boottime", b0, b1),
        ] {
            let t = copy[name].as_f64().unwrap();
            assert!(
                lo - 0.001 <= t && t <= hi + 0.001,
                "{mode}: {name} {t} outside [{lo}, {hi}]"
            );
        }
        // rseq re-registered: sched_getcpu follows the CPU the copy runs on.
        for pair in copy["cpus"].as_array().unwrap() {
            assert_eq!(
                pair[0], pair[1],
                "{mode}: pinned to CPU {}, sched_getcpu said {}",
                pair[0], pair[1]
            );
        }
        assert!(!copy["cpus"].as_array().unwrap().is_empty());
        for field in ["pid", "ppid", "stat_pid", "exe", "uid"] {
            assert_eq!(copy[field], original[field], "{mode}: {field}");
        }
        assert_eq!(
            copy["pid"], copy["stat_pid"],
            "{mode}: /proc/self is the copy"
        );
        assert!(copy["exe"].as_str().unwrap().contains("python3"), "{copy}");
        assert_ne!(copy["uid"], 0, "{mode}: the copy runs unprivileged");
    }
}

#[tokio::test]
async fn a_copy_that_kills_itself_crashes_for_real() {
    require_root!();
    // The copy is pid 2 under a tiny init: SIGKILL sent from inside kills
    // it (a pid 1 would ignore it).
    for mode in modes() {
        let server = server_for(mode);
        deploy(&server, json!({})).await;
        let a = restore(&server, json!({"die": true})).await;
        assert_eq!(a.status, 502, "{mode}: {}", a.text());
        assert_eq!(
            a.json()["error"],
            "function_crashed",
            "{mode}: {}",
            a.text()
        );
        let a = restore(&server, json!({})).await;
        assert_eq!(a.status, 200, "{mode}: the next copy is fine: {}", a.text());
        assert_eq!(a.json()["calls"], 4);
    }
}
