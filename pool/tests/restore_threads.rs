//! Multi-threaded processes (issue 14, acceptance 1): 32 threads blocked in
//! untimed and timed futex waits, condition variables (plain and timed),
//! `nanosleep`, `poll`, `read` on a pipe, or spinning, captured with
//! `snapshot_to_dir` (what `thaw snapshot --pid` runs) and restored in both
//! memory modes (what `thaw restore` runs). Every thread of the copy checks
//! its thread id, TLS, name and signal mask (restore_support/threads.c).

mod restore_support;

use pool::restore::Mode;
use restore_support::{can_restore, compile, restore_with_pipes, start};
use snapshotter::snapshot::{open_snapshot_dir, snapshot_to_dir};

/// Thread ids of `pid` as `/proc/PID/task` lists them, sorted.
fn tasks(pid: i32) -> Vec<i32> {
    let mut tids: Vec<i32> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_str().unwrap().parse().unwrap())
        .collect();
    tids.sort();
    tids
}

/// NSpid (innermost) of thread `tid` of `pid`.
fn ns_tid(pid: i32, tid: i32) -> i32 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("NSpid:")).unwrap();
    line.split_whitespace().last().unwrap().parse().unwrap()
}

#[test]
fn thirty_two_threads_keep_their_ids_tls_and_masks() {
    if !can_restore("thirty_two_threads_keep_their_ids_tls_and_masks", true) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let program = compile(
        tmp.path(),
        "threads",
        include_str!("restore_support/threads.c"),
    );
    let mut original = start(&program, &[]);
    let ready = original.line();
    assert!(ready.starts_with("ready "), "{ready:?}");
    let pid = original.child.id() as i32;
    let before = tasks(pid);
    assert_eq!(before.len(), 33);
    let snap = tmp.path().join("snap");
    let info = snapshot_to_dir(pid, &snap).unwrap();
    println!(
        "snapshot: {} areas, {} stored pages",
        info.areas, info.stored_pages
    );
    let (snapshot, _) = open_snapshot_dir(&snap).unwrap();
    let saved: Vec<i32> = snapshot.state.threads.iter().map(|t| t.tid).collect();
    assert_eq!(saved, before, "every thread saved, main first");
    // The original was not disturbed: it still passes its own checks.
    {
        use std::io::Write;
        original.stdin.write_all(b"g").unwrap();
    }
    assert_eq!(original.line(), "ok 32", "the original after the capture");

    // Thread stacks (and their guards) are found, so that mmap mode maps
    // them anonymous (a thread that exits frees its stack with every signal
    // blocked, where the guard's trap would kill it).
    let stacks = pool::restore::thread::thread_stack_areas(&snapshot.state);
    assert!(stacks.len() >= 32, "{} thread stack areas", stacks.len());
    // The area thread 9 frees after the restore is plain anonymous memory,
    // mapped from the image in mmap mode (not taken for a thread stack):
    // its zeros come from the guard's handler running in thread 9.
    let freed = u64::from_str_radix(ready.split_whitespace().nth(2).unwrap(), 16).unwrap();
    let (index, area) = snapshot
        .state
        .areas
        .iter()
        .enumerate()
        .find(|(_, a)| (a.start..a.end).contains(&freed))
        .unwrap();
    assert_eq!(area.kind, snapshotter::state::AreaKind::Anonymous);
    assert!(!stacks.contains(&index), "the freed area is not a stack");
    // uffd mode writes the live threads' stacks (with their guards) before
    // the resume instead of serving them: every one of the 32 is found, and
    // nothing that is not a thread stack.
    let live = pool::restore::thread::live_stacks(&snapshot.state, &snapshot.areas);
    assert!(live.len() >= 32, "{} live stack areas", live.len());
    assert!(!live.contains(&index), "the freed area is not a live stack");
    assert!(
        live.iter().all(|i| stacks.contains(i)),
        "live stacks are thread stack areas"
    );
    // ... and fills the futex words of the threads captured waiting
    // (untimed and timed futex waits, condition variables) before the
    // resume.
    let words = pool::restore::thread::restart_pages(&snapshot.state);
    assert!(!words.is_empty(), "futex words of the waiting threads");
    assert!(words.windows(2).all(|w| w[0] < w[1]), "sorted, once each");
    for mode in [Mode::Mmap, Mode::Uffd] {
        let mut copy = restore_with_pipes(&snap, mode);
        let host = copy.child.pid();
        let copy_tids: Vec<i32> = tasks(host).into_iter().map(|t| ns_tid(host, t)).collect();
        let mut want = before.clone();
        want.sort();
        let mut got = copy_tids.clone();
        got.sort();
        assert_eq!(got, want, "{mode:?}: the copy's threads have the saved ids");
        copy.send(b"g");
        let out = copy.rest();
        let status = copy.child.wait().unwrap();
        println!("{mode:?}: status {status}, {:?}", copy.child.timings);
        assert_eq!(out, "ok 32\n", "{mode:?}");
        assert_eq!(status, 0, "{mode:?}");
    }
}

/// A thread whose own setup fails (its table runs in the thread itself,
/// untraced, since the threads are made in one run of the main thread)
/// fails the restore with the call and the thread named, in both modes,
/// and leaves no process of the copy behind. The threads are made from two
/// threads at once (the main thread the first half, the first thread it
/// makes the second): a failing thread in either half, the second maker
/// itself, and a `clone3` of the second half that fails (a tid the kernel
/// refuses) are each named.
#[test]
fn a_thread_whose_setup_fails_fails_the_restore_naming_it() {
    if !can_restore(
        "a_thread_whose_setup_fails_fails_the_restore_naming_it",
        true,
    ) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    // A name of its own: no process of that name may be left.
    let program = compile(
        tmp.path(),
        "threads-fail",
        include_str!("restore_support/threads.c"),
    );
    let mut original = start(&program, &[]);
    assert!(original.line().starts_with("ready "));
    let snap = tmp.path().join("snap");
    snapshot_to_dir(original.child.id() as i32, &snap).unwrap();
    drop(original);
    let (snapshot, store) = open_snapshot_dir(&snap).unwrap();
    let count = snapshot.state.threads.len();
    assert_eq!(count, 33, "the program's threads and its main thread");
    // Two groups (of 31 and 1): in the first, threads 1..=16 are made by
    // the main thread, 17..=31 by thread 1; thread 32 alone in the second.
    for bad in [7, 1, 31, 32] {
        let mut snapshot = snapshot.clone();
        // set_robust_list refuses any length but its struct's: EINVAL.
        let t = &mut snapshot.state.threads[bad];
        assert_ne!(t.robust_list, 0, "glibc registers a robust list per thread");
        t.robust_list_len = 1;
        let tid = t.tid;
        expect_failure(
            &snapshot,
            &store,
            &[
                "set_robust_list",
                &format!("(thread {tid})"),
                "Invalid argument",
            ],
        );
    }
    // A tid above any pid_max: the second maker's clone3 of that thread
    // fails with EINVAL.
    let mut refused = snapshot.clone();
    refused.state.threads[30].tid = i32::MAX;
    expect_failure(
        &refused,
        &store,
        &[&format!("clone3 (thread {})", i32::MAX), "Invalid argument"],
    );
}

/// Restores `snapshot` in both modes, expecting an error whose message
/// holds every one of `parts`, and no process of the copy left.
fn expect_failure(
    snapshot: &snapshotter::snapshot::Snapshot,
    store: &snapshotter::store::PageStore,
    parts: &[&str],
) {
    use std::os::fd::AsFd;
    let (in_read, _in_write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
    let (_out_read, out_write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
    let stderr = std::io::stderr();
    let mut fds = vec![(0, in_read.as_fd()), (1, out_write.as_fd())];
    if snapshot.state.fds.iter().any(|f| f.fd == 2) {
        fds.push((2, stderr.as_fd()));
    }
    for mode in [Mode::Mmap, Mode::Uffd] {
        let err = pool::restore::restore(
            snapshot,
            store,
            &pool::restore::RestoreOptions {
                mode,
                fds: fds.clone(),
                cgroups: Vec::new(),
                prefetch: Vec::new(),
                prefetch_in_background: false,
                uffd_keeper: None,
                credentials: pool::restore::Credentials::Snapshot,
            },
        )
        .expect_err("a thread's setup fails");
        let message = err.to_string();
        assert!(
            parts.iter().all(|p| message.contains(p)),
            "{mode:?}: {message} (expected {parts:?})"
        );
        assert_eq!(
            processes_named("threads-fail"),
            Vec::<i32>::new(),
            "{mode:?}: no process of the copy is left"
        );
    }
}

/// Pids of the processes whose name (`comm`) is `name`.
fn processes_named(name: &str) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap() {
        let Ok(pid) = e.unwrap().file_name().to_str().unwrap_or("").parse::<i32>() else {
            continue;
        };
        if std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim_end() == name)
        {
            out.push(pid);
        }
    }
    out
}
