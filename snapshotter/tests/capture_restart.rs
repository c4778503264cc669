//! The captured process resumes its blocked `read` transparently: no
//! `EINTR` reaches it, with or without injected syscalls.

mod capture_support;

use capture_support::{can_capture, compile_c, wait_blocked_in_read, Worker};
use snapshotter::capture::{capture, CaptureOptions, Injector, Seized, VecSink};

const READER: &str = r#"
#include <errno.h>
#include <stdio.h>
#include <unistd.h>
int main(void) {
    char buf[64];
    write(4, "ready\n", 6);
    for (;;) {
        ssize_t n = read(3, buf, sizeof buf);
        if (n < 0) {
            char msg[64];
            int len = snprintf(msg, sizeof msg, "error %d\n", errno);
            write(4, msg, len);
            continue;
        }
        if (n == 0)
            return 0;
        write(4, "ok\n", 3);
    }
}
"#;

#[test]
fn seize_and_detach_leave_read_blocked() {
    if !can_capture("seize_and_detach_leave_read_blocked") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let Some(bin) = compile_c(dir.path(), "reader", READER) else {
        return;
    };
    let (mut worker, ready) = Worker::spawn(&bin, &[]);
    assert_eq!(ready, "ready");
    wait_blocked_in_read(worker.pid());
    let seized = Seized::stop(worker.pid()).unwrap();
    seized.detach().unwrap();
    assert_eq!(worker.ask("a"), "ok");
}

#[test]
fn injected_syscalls_leave_read_blocked() {
    if !can_capture("injected_syscalls_leave_read_blocked") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let Some(bin) = compile_c(dir.path(), "reader", READER) else {
        return;
    };
    let (mut worker, _) = Worker::spawn(&bin, &[]);
    wait_blocked_in_read(worker.pid());
    let mut seized = Seized::stop(worker.pid()).unwrap();
    let injector = Injector::find(&seized).unwrap();
    let pid = injector
        .syscall(&mut seized, libc::SYS_getpid, [0; 6])
        .unwrap();
    assert_eq!(pid, worker.pid() as i64);
    let pid = injector
        .syscall(&mut seized, libc::SYS_getpid, [0; 6])
        .unwrap();
    assert_eq!(pid, worker.pid() as i64);
    seized.detach().unwrap();
    assert_eq!(worker.ask("b"), "ok");
}

/// The `[vdso]` of `pid`: (start, end).
fn vdso_of(pid: i32) -> (u64, u64) {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let line = maps.lines().find(|l| l.ends_with("[vdso]")).unwrap();
    let (start, end) = line
        .split_whitespace()
        .next()
        .unwrap()
        .split_once('-')
        .unwrap();
    (
        u64::from_str_radix(start, 16).unwrap(),
        u64::from_str_radix(end, 16).unwrap(),
    )
}

#[test]
fn injector_found_again_at_the_known_vdso_offset() {
    if !can_capture("injector_found_again_at_the_known_vdso_offset") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let Some(bin) = compile_c(dir.path(), "reader", READER) else {
        return;
    };
    // Two processes (their vDSOs at different addresses under ASLR): the
    // second is found from the offset the first search found, checked.
    let mut offsets = Vec::new();
    for round in 0..2 {
        let (mut worker, _) = Worker::spawn(&bin, &[]);
        wait_blocked_in_read(worker.pid());
        let mut seized = Seized::stop(worker.pid()).unwrap();
        let (start, end) = vdso_of(worker.pid());
        let injector = Injector::find_in_vdso(&seized, start, end).unwrap();
        let at = injector.syscall_address();
        assert!(
            at >= start && at + 2 <= end,
            "round {round}: {at:#x} outside the vDSO"
        );
        offsets.push(at - start);
        let pid = injector
            .syscall(&mut seized, libc::SYS_getpid, [0; 6])
            .unwrap();
        assert_eq!(pid, worker.pid() as i64, "round {round}");
        // The full search finds the same instruction.
        assert_eq!(Injector::find(&seized).unwrap().syscall_address(), at);
        seized.detach().unwrap();
        assert_eq!(worker.ask("d"), "ok", "round {round}");
    }
    assert_eq!(offsets[0], offsets[1]);
}

#[test]
fn capture_leaves_read_blocked() {
    if !can_capture("capture_leaves_read_blocked") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let Some(bin) = compile_c(dir.path(), "reader", READER) else {
        return;
    };
    let (mut worker, _) = Worker::spawn(&bin, &[]);
    wait_blocked_in_read(worker.pid());
    for round in 0..3 {
        let mut sink = VecSink::default();
        capture(worker.pid(), &CaptureOptions::default(), &mut sink).unwrap();
        assert_eq!(worker.ask("c"), "ok", "round {round}");
    }
}

#[test]
fn a_stopped_process_can_be_captured_and_stays_stopped() {
    if !can_capture("a_stopped_process_can_be_captured_and_stays_stopped") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let Some(bin) = compile_c(dir.path(), "reader", READER) else {
        return;
    };
    let (mut worker, _) = Worker::spawn(&bin, &[]);
    wait_blocked_in_read(worker.pid());
    let pid = nix::unistd::Pid::from_raw(worker.pid());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
    assert_eq!(settled_state(worker.pid()), "T");
    let mut sink = VecSink::default();
    let state = capture(worker.pid(), &CaptureOptions::default(), &mut sink).unwrap();
    assert_eq!(
        state.main_thread().registers.orig_rax,
        libc::SYS_read as u64
    );
    // Detached, it is back in its group stop, not in its read.
    assert_eq!(settled_state(worker.pid()), "T");
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT).unwrap();
    assert_eq!(worker.ask("d"), "ok");
}

/// The process state letter once it is either stopped (`T`) or sleeping
/// (`S`), skipping transient states.
fn settled_state(pid: i32) -> String {
    loop {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let state = stat
            .rsplit(')')
            .next()
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap();
        if state == "T" || state == "S" {
            return state.to_string();
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

/// A sink that refuses everything.
struct FailingSink;

impl snapshotter::capture::PageSink for FailingSink {
    fn pages(
        &mut self,
        _area: usize,
        _first_page: u64,
        _data: &[u8],
    ) -> Result<(), snapshotter::capture::SinkError> {
        Err(snapshotter::capture::SinkError("disk full".into()))
    }
}

#[test]
fn a_failing_sink_fails_the_capture_and_the_process_continues() {
    if !can_capture("a_failing_sink_fails_the_capture_and_the_process_continues") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let Some(bin) = compile_c(dir.path(), "reader", READER) else {
        return;
    };
    let (mut worker, _) = Worker::spawn(&bin, &[]);
    wait_blocked_in_read(worker.pid());
    let err = capture(worker.pid(), &CaptureOptions::default(), &mut FailingSink).unwrap_err();
    assert_eq!(err.to_string(), "page sink failed: disk full");
    assert_eq!(worker.ask("e"), "ok");
}
