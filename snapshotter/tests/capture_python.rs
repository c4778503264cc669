//! Capturing a real, warmed `python3` that waits in `read(3, …)`.

mod capture_support;

use capture_support::{can_capture, have_python, python};
use snapshotter::capture::{capture, capture_timed, memory, CaptureOptions, VecSink};
use snapshotter::state::{AreaKind, FdKind, PageRunKind, PipeEnd, Restart, PAGE_SIZE};

#[test]
fn python_keeps_running_and_answers_after_capture() {
    if !can_capture("python_keeps_running_and_answers_after_capture")
        || !have_python("python capture")
    {
        return;
    }
    let (mut worker, digest) = python("plain", &[]);
    let mut sink = VecSink::default();
    let state = capture(worker.pid(), &CaptureOptions::default(), &mut sink).unwrap();

    // Compared while the process still waits in the same read: its memory
    // is what it was at capture time.
    // Every stored page equals what the process holds, every zero page is zero.
    let pid = worker.pid();
    let mut page = vec![0u8; PAGE_SIZE as usize];
    for (area, index, data) in sink.pages() {
        let area = &state.areas[area];
        let addr = area.start + index * PAGE_SIZE;
        memory::read_mem_file(pid, addr, &mut page).unwrap();
        if !capture_support::same_page(&state, addr, &page, data) {
            let diffs: Vec<usize> = (0..page.len()).filter(|&i| page[i] != data[i]).collect();
            panic!("page at {addr:#x} of {area:?} differs at {} offsets, first {:?}: now {:x?} captured {:x?}", diffs.len(), &diffs[..diffs.len().min(8)], &page[diffs[0]..diffs[0] + 16], &data[diffs[0]..diffs[0] + 16]);
        }
        assert!(!memory::is_zero(data), "stored a zero page at {addr:#x}");
    }
    for area in state.areas.iter().filter(|a| a.prot.read) {
        for run in area.pages.iter().filter(|r| r.kind == PageRunKind::Zero) {
            let mut buf = vec![0u8; (run.count * PAGE_SIZE) as usize];
            memory::read_remote(pid, area.start + run.first * PAGE_SIZE, &mut buf).unwrap();
            assert!(memory::is_zero(&buf));
        }
    }
    assert_eq!(worker.ask("one"), format!("echo:one {digest}"));

    // A second capture of the same process works too.
    let mut again = VecSink::default();
    let state2 = capture(worker.pid(), &CaptureOptions::default(), &mut again).unwrap();
    assert_eq!(worker.ask("two"), format!("echo:two {digest}"));
    assert_eq!(state.areas.len(), state2.areas.len());

    // Blocked in read(3, …): the kernel's restart rule is pending.
    assert_eq!(
        state.main_thread().registers.orig_rax,
        libc::SYS_read as u64
    );
    assert_eq!(state.main_thread().registers.rdi, 3);
    assert_eq!(
        state.main_thread().registers.restart_pending(),
        Restart::Same
    );
    assert!(
        state.main_thread().xsave.len() >= 576,
        "xsave has legacy area and header"
    );

    // Thread and process state.
    assert_eq!(state.pid, worker.pid());
    assert!(
        state.mm.exe_path.contains("python3"),
        "{}",
        state.mm.exe_path
    );
    assert!(state.mm.start_brk <= state.mm.brk);
    assert!(state.mm.arg_start < state.mm.arg_end);
    assert_eq!(state.mm.auxv.last(), Some(&(libc::AT_NULL, 0)));
    let rseq = state.main_thread().rseq.expect("glibc registers rseq");
    assert_ne!(rseq.address, 0);
    assert_eq!(rseq.signature, 0x5305_3053, "glibc x86_64 RSEQ_SIG");
    let sigint = state
        .signals
        .handlers
        .iter()
        .find(|h| h.signal == libc::SIGINT as u32);
    let sigint = sigint.expect("python handles SIGINT");
    assert!(sigint.handler > 1 && sigint.restorer != 0, "{sigint:?}");
    let sigpipe = state
        .signals
        .handlers
        .iter()
        .find(|h| h.signal == libc::SIGPIPE as u32);
    assert_eq!(sigpipe.map(|h| h.handler), Some(libc::SIG_IGN as u64));
    assert_eq!(state.process.rlimits.len(), 16);
    assert_ne!(
        state.main_thread().tid_address,
        0,
        "glibc sets clear_child_tid"
    );
    assert_ne!(
        state.main_thread().robust_list,
        0,
        "glibc registers a robust list"
    );
    assert!(!state.process.cwd.is_empty());

    // The protocol fds.
    let fd = |n| state.fds.iter().find(|f| f.fd == n).map(|f| f.kind.clone());
    assert!(
        matches!(
            fd(3),
            Some(FdKind::ProtocolPipe {
                end: PipeEnd::Read,
                ..
            })
        ),
        "{:?}",
        fd(3)
    );
    assert!(
        matches!(
            fd(4),
            Some(FdKind::ProtocolPipe {
                end: PipeEnd::Write,
                ..
            })
        ),
        "{:?}",
        fd(4)
    );
    assert!(matches!(fd(0), Some(FdKind::Device { .. })), "{:?}", fd(0));

    // Special areas are recorded, never stored.
    for kind in [
        AreaKind::Vdso,
        AreaKind::Vvar,
        AreaKind::Stack,
        AreaKind::Heap,
    ] {
        assert!(
            state.areas.iter().any(|a| a.kind == kind),
            "no {kind:?} area"
        );
    }
    // File-backed code is recorded by identity, not copied.
    let code = state
        .areas
        .iter()
        .find(|a| a.prot.exec && a.path.as_deref().is_some_and(|p| p.contains("libc.so")))
        .expect("libc code area");
    assert_eq!(code.kind, AreaKind::FileUnchanged);
    assert!(code.file.is_some() && code.pages.is_empty());
    for (area, _, _) in sink.pages() {
        assert!(
            state.areas[area].kind.has_private_pages(),
            "stored page of {:?}",
            state.areas[area]
        );
    }
    // The 8 MiB blob is stored, the 4 MiB of written zeros are not.
    assert!(sink.bytes() >= 8 << 20, "stored {} bytes", sink.bytes());
    assert!(
        state.zero_pages() >= 1000,
        "zero pages {}",
        state.zero_pages()
    );
    assert_eq!(state.stored_pages() * PAGE_SIZE, sink.bytes());

    assert_eq!(worker.ask("three"), format!("echo:three {digest}"));
}

#[test]
fn state_round_trips_through_bincode() {
    if !can_capture("state_round_trips_through_bincode") || !have_python("state round trip") {
        return;
    }
    let (mut worker, digest) = python("plain", &[]);
    let mut sink = VecSink::default();
    let (state, timings) =
        capture_timed(worker.pid(), &CaptureOptions::default(), &mut sink).unwrap();
    let bytes = bincode::serialize(&state).unwrap();
    let back: snapshotter::state::ProcessState = bincode::deserialize(&bytes).unwrap();
    assert_eq!(back, state);
    assert_eq!(timings.bytes_stored, sink.bytes());
    println!("capture timings: {timings:?}");
    assert_eq!(worker.ask("x"), format!("echo:x {digest}"));
}

#[test]
fn pagemap_entry_reads_give_the_same_capture() {
    if !can_capture("pagemap_entry_reads_give_the_same_capture") || !have_python("pagemap modes") {
        return;
    }
    let (mut worker, digest) = python("plain", &[]);
    let mut scan_sink = VecSink::default();
    let (scan, timings) =
        capture_timed(worker.pid(), &CaptureOptions::default(), &mut scan_sink).unwrap();
    let options = CaptureOptions {
        pagemap_scan: false,
        batch_bytes: 1 << 20,
        ..Default::default()
    };
    let mut read_sink = VecSink::default();
    let read = capture(worker.pid(), &options, &mut read_sink).unwrap();
    println!("PAGEMAP_SCAN used: {}", timings.used_pagemap_scan);
    // Entry reads also see pages that map the shared zero page (and record
    // them as zero); the stored content is the same.
    let stored = |sink: &VecSink| {
        let mut pages: Vec<(usize, u64, Vec<u8>)> =
            sink.pages().map(|(a, i, d)| (a, i, d.to_vec())).collect();
        pages.sort();
        pages
    };
    assert_eq!(scan.areas.len(), read.areas.len());
    let (by_scan, by_read) = (stored(&scan_sink), stored(&read_sink));
    assert_eq!(by_scan.len(), by_read.len());
    for ((area, index, a), (area2, index2, b)) in by_scan.iter().zip(&by_read) {
        assert_eq!((area, index), (area2, index2));
        let addr = scan.areas[*area].start + index * PAGE_SIZE;
        assert!(
            capture_support::same_page(&scan, addr, a, b),
            "page at {addr:#x} differs between pagemap modes"
        );
    }
    assert_eq!(worker.ask("y"), format!("echo:y {digest}"));
}

#[test]
fn python_with_numpy_and_pandas() {
    if !can_capture("python_with_numpy_and_pandas") || !have_python("numpy capture") {
        return;
    }
    let Some(numpy) = capture_support::numpy_path("python_with_numpy_and_pandas") else {
        return;
    };
    let (mut worker, digest) = python("numpy", &[&numpy]);
    let mut sink = VecSink::default();
    let (state, timings) =
        capture_timed(worker.pid(), &CaptureOptions::default(), &mut sink).unwrap();
    let unchanged = state
        .areas
        .iter()
        .filter(|a| a.kind == AreaKind::FileUnchanged)
        .count();
    let private = state
        .areas
        .iter()
        .filter(|a| a.kind == AreaKind::FilePrivate)
        .count();
    println!(
        "numpy+pandas: {} areas ({unchanged} file unchanged, {private} file with written pages), \
         {} pages stored, {} zero, {:?} total",
        state.areas.len(),
        state.stored_pages(),
        state.zero_pages(),
        timings.total()
    );
    assert!(state
        .areas
        .iter()
        .any(|a| a.path.as_deref().is_some_and(|p| p.contains("numpy"))));
    let mut page = vec![0u8; PAGE_SIZE as usize];
    for (area, index, data) in sink.pages() {
        let area = &state.areas[area];
        let addr = area.start + index * PAGE_SIZE;
        memory::read_mem_file(worker.pid(), addr, &mut page).unwrap();
        assert!(
            capture_support::same_page(&state, addr, &page, data),
            "page at {addr:#x} differs"
        );
    }
    assert_eq!(worker.ask("np"), format!("echo:np {digest}"));
}
