//! Issue 19, acceptance 1 for sockets through the CLI: a C program
//! (tests/c/sockets.c) holding TCP connections (IPv4 and IPv6) and a Unix
//! stream connection to servers of this test, TCP listeners, a UDP socket,
//! Unix listeners (a path and an abstract name) and a netlink route socket
//! is captured with `thaw snapshot --pid` and restored with `thaw restore`
//! in both memory modes. The copy checks its options and addresses read
//! back the same, that each connection is cut (poll, read, send say so)
//! and that it reconnects, that netlink answers a dump; then this test
//! connects to each of its listeners and sends it a datagram.
//! Needs root (ptrace, pid namespaces) and a C compiler.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::os::unix::net::{UnixListener, UnixStream};
use std::process::{Command, Stdio};

use common::c_programs::{
    compile, prerequisites, run_copy, snapshot_of, start_to_first_line, thaw,
};

const SOCKETS: &str = include_str!("c/sockets.c");
const TREE: &str = include_str!("c/sockets_tree.c");

/// Echoes every connection of `accept` back to it, each in a thread.
fn echo<S: Read + Write + Send + 'static>(
    accept: impl Fn() -> std::io::Result<S> + Send + 'static,
) {
    std::thread::spawn(move || {
        while let Ok(mut stream) = accept() {
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = stream.read(&mut buf) {
                    if n == 0 || stream.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
}

/// Connects a `SOCK_SEQPACKET` socket to the abstract Unix name `name` and
/// sends "x".
fn seqpacket_to_abstract(name: &str) {
    // SAFETY: socket returns a new descriptor or -1.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0) };
    assert!(fd >= 0);
    // SAFETY: a fresh descriptor nobody else owns.
    let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    // SAFETY: an all-zero sockaddr_un is valid.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as u16;
    for (i, b) in name.bytes().enumerate() {
        addr.sun_path[i + 1] = b as libc::c_char;
    }
    let len = std::mem::size_of::<libc::sa_family_t>() + 1 + name.len();
    // SAFETY: connect reads `len` bytes of a live sockaddr_un.
    let rc = unsafe {
        libc::connect(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            (&addr as *const libc::sockaddr_un).cast(),
            len as libc::socklen_t,
        )
    };
    assert_eq!(
        rc,
        0,
        "connect to @{name}: {}",
        std::io::Error::last_os_error()
    );
    nix::unistd::write(&fd, b"x").unwrap();
}

#[test]
fn sockets_are_recreated_or_cut_by_thaw_restore_in_both_modes() {
    if !prerequisites() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let program = compile(tmp.path(), "sockets", SOCKETS);

    let tcp4 = TcpListener::bind("127.0.0.1:0").unwrap();
    let tcp4_port = tcp4.local_addr().unwrap().port();
    echo(move || tcp4.accept().map(|(s, _)| s));
    let tcp6 = TcpListener::bind("[::1]:0").unwrap();
    let tcp6_port = tcp6.local_addr().unwrap().port();
    echo(move || tcp6.accept().map(|(s, _)| s));
    let unix_server = tmp.path().join("echo.sock");
    let unix = UnixListener::bind(&unix_server).unwrap();
    echo(move || unix.accept().map(|(s, _)| s));
    let unix_path = tmp.path().join("listen.sock");

    let started = start_to_first_line(
        Command::new(&program)
            .arg(tcp4_port.to_string())
            .arg(tcp6_port.to_string())
            .arg(&unix_server)
            .arg(&unix_path),
    );
    let (mut original, ready) = (started.child, started.line);
    let fields: Vec<String> = ready.split_whitespace().map(str::to_string).collect();
    assert_eq!(
        fields.first().map(String::as_str),
        Some("ready"),
        "{ready:?}"
    );
    let listen4: u16 = fields[2].parse().unwrap();
    let listen6: u16 = fields[3].parse().unwrap();
    let udp_port: u16 = fields[4].parse().unwrap();
    let abstract_name = fields[5].clone();
    // A connection waiting in the listener's queue at the capture: the
    // copies' listeners are new and do not have it (the log says so).
    let waiting = TcpStream::connect(("127.0.0.1", listen4)).unwrap();

    let snap = tmp.path().join("sockets.snap");
    snapshot_of(&mut original, &snap);
    // The copies take the same ports and names in this network namespace.
    original.kill().unwrap();
    original.wait().unwrap();
    drop(waiting);

    for mode in ["mmap", "uffd"] {
        // thaw leaves a Unix socket's file behind, like the kernel.
        let _ = std::fs::remove_file(&unix_path);
        let mut copy = thaw()
            .args(["restore", "--mode", mode])
            .arg(&snap)
            .env("THAW_LOG", "info")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        copy.stdin.as_mut().unwrap().write_all(b"g").unwrap();
        let mut out = BufReader::new(copy.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        if line != "serving\n" {
            let mut rest = String::new();
            out.read_to_string(&mut rest).unwrap();
            let mut err = String::new();
            copy.stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            let _ = copy.wait();
            panic!("{mode}: {line}{rest}\nstderr: {err}");
        }
        TcpStream::connect(("127.0.0.1", listen4))
            .unwrap()
            .write_all(b"x")
            .unwrap();
        TcpStream::connect(("::1", listen6))
            .unwrap()
            .write_all(b"x")
            .unwrap();
        UnixStream::connect(&unix_path)
            .unwrap()
            .write_all(b"x")
            .unwrap();
        seqpacket_to_abstract(&abstract_name);
        UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .send_to(b"udp", ("127.0.0.1", udp_port))
            .unwrap();
        let mut rest = String::new();
        out.read_to_string(&mut rest).unwrap();
        let mut err = String::new();
        copy.stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        let status = copy.wait().unwrap();
        assert_eq!(rest, "ok\n", "{mode}: stderr {err}");
        assert_eq!(status.code(), Some(0), "{mode}");
        // The restore log names each cut connection.
        assert!(
            err.contains(
                "1 connections waiting to be accepted at the snapshot are not in the copy"
            ),
            "{mode}: {err}"
        );
        for cut in [
            format!("(tcp 127.0.0.1:{tcp4_port} ESTABLISHED) was cut"),
            format!("(tcp6 [::1]:{tcp6_port} ESTABLISHED) was cut"),
            format!("(unix stream {} CONNECTED) was cut", unix_server.display()),
        ] {
            assert!(err.contains(&cut), "{mode}: no {cut:?} in {err}");
        }
    }
}

/// A process tree (`thaw snapshot --pid` of a parent with a child): its TCP
/// connection and the Unix connection parent and child share are cut in
/// both processes of the copy, in both modes.
#[test]
fn a_process_trees_connections_are_cut_in_every_process() {
    if !prerequisites() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let program = compile(tmp.path(), "sockets_tree", TREE);
    let tcp4 = TcpListener::bind("127.0.0.1:0").unwrap();
    let tcp4_port = tcp4.local_addr().unwrap().port();
    echo(move || tcp4.accept().map(|(s, _)| s));
    let unix_server = tmp.path().join("echo.sock");
    let unix = UnixListener::bind(&unix_server).unwrap();
    echo(move || unix.accept().map(|(s, _)| s));

    let snap = tmp.path().join("tree.snap");
    let ready = common::c_programs::capture_at_first_line(
        Command::new(&program)
            .arg(tcp4_port.to_string())
            .arg(&unix_server),
        &snap,
    );
    assert!(ready.starts_with("ready "), "{ready:?}");
    for mode in ["mmap", "uffd"] {
        let copy = run_copy(&snap, mode);
        let err = copy.log;
        assert_eq!(copy.printed, "ok\n", "{mode}: stderr {err}");
        assert_eq!(copy.code, 0, "{mode}");
        let cut = format!("(unix stream {} CONNECTED) was cut", unix_server.display());
        assert_eq!(
            err.matches(&cut).count(),
            2,
            "{mode}: parent and child: {err}"
        );
    }
}
