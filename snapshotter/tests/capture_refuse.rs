//! Processes a copy cannot reproduce are refused with a message that names
//! the reason, and keep running.

mod capture_support;

use capture_support::{can_capture, have_python, python};
use snapshotter::capture::{
    capture, CaptureError, CaptureOptions, ConnectionPolicy, Refusal, VecSink,
};
use snapshotter::state::{FdKind, SocketAddress, SocketRole};

fn refused(pid: i32) -> (Refusal, String) {
    refused_with(pid, &CaptureOptions::default())
}

fn refused_with(pid: i32, options: &CaptureOptions) -> (Refusal, String) {
    let mut sink = VecSink::default();
    match capture(pid, options, &mut sink) {
        Err(err @ CaptureError::Refused { .. }) => {
            let message = err.to_string();
            let CaptureError::Refused { reason, .. } = err else {
                unreachable!()
            };
            assert_eq!(sink.bytes(), 0, "no page stored for a refused capture");
            (reason, message)
        }
        Err(other) => panic!("expected a refusal, got {other}"),
        Ok(_) => panic!("expected a refusal, got a snapshot"),
    }
}

/// Threads are no longer a refusal: every thread is captured (main first,
/// each with its own tid and registers) and the original keeps running.
#[test]
fn multi_threaded_process_is_captured_whole() {
    if !can_capture("multi_threaded_process_is_captured_whole") || !have_python("threads") {
        return;
    }
    let (mut worker, digest) = python("thread", &[]);
    let pid = worker.pid();
    let mut tasks: Vec<i32> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_str().unwrap().parse().unwrap())
        .collect();
    tasks.sort();
    let mut sink = VecSink::default();
    let state = capture(pid, &CaptureOptions::default(), &mut sink).unwrap();
    state.validate().unwrap();
    let tids: Vec<i32> = state.threads.iter().map(|t| t.tid).collect();
    assert_eq!(
        tids, tasks,
        "main thread first, then the other in tid order"
    );
    assert_eq!(state.threads[0].tid, pid);
    let other = &state.threads[1];
    assert_ne!(
        other.registers.fs_base, state.threads[0].registers.fs_base,
        "own TLS"
    );
    assert_ne!(
        other.tid_address, 0,
        "glibc sets clear_child_tid per thread"
    );
    assert_ne!(other.robust_list, state.threads[0].robust_list);
    assert_eq!(worker.ask("t"), format!("echo:t {digest}"));
}

/// A signal pending for one thread only (blocked there, sent with
/// `pthread_kill`) used to be refused (it would have been lost); it is now
/// captured in that thread's state with its siginfo (issue 19), and stays
/// pending in the original.
#[test]
fn signal_pending_for_one_thread_is_captured_in_that_thread() {
    if !can_capture("signal_pending_for_one_thread_is_captured_in_that_thread")
        || !have_python("threads")
    {
        return;
    }
    let (mut worker, digest) = python("thread_signal", &[]);
    let pid = worker.pid();
    let mut sink = VecSink::default();
    let state = capture(pid, &CaptureOptions::default(), &mut sink).unwrap();
    assert!(state.pending.is_empty(), "{:?}", state.pending);
    assert!(state.threads[0].pending.is_empty());
    let other = &state.threads[1];
    assert_eq!(other.pending.len(), 1, "{:?}", other.pending);
    let signal = &other.pending[0];
    assert_eq!(signal.signal, libc::SIGUSR1);
    // pthread_kill is tgkill: SI_TKILL, which Linux 6.18 reports as SI_USER.
    assert!([0, libc::SI_TKILL].contains(&signal.code), "{signal:?}");
    let sender = i32::from_ne_bytes(signal.info[16..20].try_into().unwrap());
    assert_eq!(sender, pid, "si_pid: the process signalled its own thread");
    let status = std::fs::read_to_string(format!("/proc/{pid}/task/{}/status", other.tid)).unwrap();
    assert!(
        status.contains(&format!("SigPnd:\t{:016x}", 1u64 << (libc::SIGUSR1 - 1))),
        "still pending in the original: {status}"
    );
    assert_eq!(worker.ask("s"), format!("echo:s {digest}"));
}

#[test]
fn process_with_a_child_is_refused() {
    if !can_capture("process_with_a_child_is_refused") || !have_python("children") {
        return;
    }
    let (mut worker, digest) = python("child", &[]);
    let (reason, message) = refused(worker.pid());
    let Refusal::Children { pids } = reason else {
        panic!("wrong reason: {message}")
    };
    assert_eq!(pids.len(), 1);
    assert!(message.contains("child processes"), "{message}");
    assert_eq!(worker.ask("c"), format!("echo:c {digest}"));
}

/// With `on_snapshot_connections = "refuse"` (`ConnectionPolicy::Refuse`)
/// a TCP connection is refused as before issue 19.
#[test]
fn process_with_a_tcp_connection_is_refused() {
    if !can_capture("process_with_a_tcp_connection_is_refused") || !have_python("tcp") {
        return;
    }
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port().to_string();
    let (mut worker, digest) = python("tcp", &[&port]);
    let (_peer, _) = listener.accept().unwrap();
    let options = CaptureOptions {
        connections: ConnectionPolicy::Refuse,
        ..CaptureOptions::default()
    };
    let (reason, message) = refused_with(worker.pid(), &options);
    let Refusal::TcpSocket { remote, state, .. } = reason else {
        panic!("wrong reason: {message}")
    };
    assert_eq!(remote, listener.local_addr().unwrap());
    assert_eq!(state, "ESTABLISHED");
    assert!(message.contains("is a TCP socket"), "{message}");
    assert!(message.contains("(ESTABLISHED)"), "{message}");
    assert_eq!(worker.ask("n"), format!("echo:n {digest}"));
}

/// By default a TCP connection is captured as one every copy gets cut,
/// naming its peer and state; the original keeps it.
#[test]
fn a_tcp_connection_is_captured_to_be_cut() {
    if !can_capture("a_tcp_connection_is_captured_to_be_cut") || !have_python("tcp") {
        return;
    }
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port().to_string();
    let (mut worker, digest) = python("tcp", &[&port]);
    let (_peer, _) = listener.accept().unwrap();
    let mut sink = VecSink::default();
    let state = capture(worker.pid(), &CaptureOptions::default(), &mut sink).unwrap();
    let sockets: Vec<_> = state
        .fds
        .iter()
        .filter_map(|f| match &f.kind {
            FdKind::Socket(s) => Some(s),
            _ => None,
        })
        .collect();
    assert_eq!(sockets.len(), 1, "{:?}", state.fds);
    let SocketRole::Cut { peer, state: tcp } = &sockets[0].role else {
        panic!("{:?}", sockets[0]);
    };
    assert_eq!(
        peer,
        &Some(SocketAddress::Inet(listener.local_addr().unwrap()))
    );
    assert_eq!(tcp, "ESTABLISHED");
    assert_eq!(sockets[0].family, libc::AF_INET);
    assert_eq!(worker.ask("n"), format!("echo:n {digest}"));
}

/// A socket of a family thaw does not re-create (a packet socket) is
/// refused, naming its descriptor and family.
#[test]
fn a_packet_socket_is_refused_naming_it() {
    if !can_capture("a_packet_socket_is_refused_naming_it") || !have_python("packet") {
        return;
    }
    let (mut worker, digest) = python("packet", &[]);
    let (reason, message) = refused(worker.pid());
    let Refusal::Descriptor { fd, what, .. } = reason else {
        panic!("wrong reason: {message}")
    };
    assert!(fd > 4, "{message}");
    assert!(
        what.starts_with("a AF_PACKET socket (raw, socket:["),
        "{message}"
    );
    assert!(
        message.contains("thaw re-creates TCP, UDP, Unix and netlink route sockets only"),
        "{message}"
    );
    assert_eq!(worker.ask("p"), format!("echo:p {digest}"));
}
