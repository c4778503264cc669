//! Capture and restore under seccomp (issue 12, finding 3): capture accepts
//! exactly thaw's function policy and refuses any other filter; a copy gets
//! the policy back, byte for byte, in both memory modes (in mmap mode with
//! the anonymous-memory guard's filter below it).

mod restore_support;

use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};

use pool::restore::Mode;
use pool::sandbox::seccomp;
use restore_support::{can_restore, restore_with_pipes};
use snapshotter::capture::CaptureOptions;
use snapshotter::snapshot::{snapshot_to_dir, snapshot_to_dir_with};

/// An allow-everything filter: not thaw's.
const ALLOW_ALL: [libc::sock_filter; 1] = [libc::sock_filter {
    code: 0x06,
    jt: 0,
    jf: 0,
    k: 0x7fff_0000,
}];

/// `cat`, its stdin and stdout pipes, under `filter` (installed after
/// `no_new_privs`, as the sandbox does), with no other descriptors.
fn cat_under(filter: Option<&'static [libc::sock_filter]>) -> Child {
    let _ = seccomp::program();
    let mut cmd = Command::new("/bin/cat");
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped());
    // SAFETY: between fork and exec only close_range, prctl and seccomp run
    // (the programs are built before the fork).
    unsafe {
        cmd.pre_exec(move || {
            libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
            let Some(program) = filter else {
                return Ok(());
            };
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            let fprog = libc::sock_fprog {
                len: program.len() as u16,
                filter: program.as_ptr() as *mut libc::sock_filter,
            };
            if libc::syscall(libc::SYS_seccomp, 1u32, 0u32, &fprog) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn().unwrap()
}

fn accepting_policy() -> CaptureOptions {
    CaptureOptions {
        seccomp_filters: vec![seccomp::program_bytes()],
        ..CaptureOptions::default()
    }
}

/// The filter programs of `pid`, oldest first.
fn filters_of(pid: i32) -> Vec<Vec<u8>> {
    let p = nix::unistd::Pid::from_raw(pid);
    nix::sys::ptrace::seize(p, nix::sys::ptrace::Options::empty()).unwrap();
    nix::sys::ptrace::interrupt(p).unwrap();
    nix::sys::wait::waitpid(p, None).unwrap();
    let filters = snapshotter::capture::seccomp::filters(pid).unwrap();
    nix::sys::ptrace::detach(p, None).unwrap();
    filters
}

#[test]
fn only_thaws_policy_is_captured_and_every_copy_gets_it_back() {
    if !can_restore("only_thaws_policy_is_captured", false) {
        return;
    }
    let mut original = cat_under(Some(seccomp::program()));
    let pid = original.id() as i32;
    let tmp = tempfile::tempdir().unwrap();

    // Default options accept no filter.
    let refused = snapshot_to_dir(pid, &tmp.path().join("default")).unwrap_err();
    assert!(refused.to_string().contains("seccomp"), "{refused}");
    // The policy is accepted.
    let dir = tmp.path().join("snap");
    snapshot_to_dir_with(pid, &dir, &accepting_policy()).unwrap();

    for mode in [Mode::Mmap, Mode::Uffd] {
        let mut copy = restore_with_pipes(&dir, mode);
        let filters = filters_of(copy.child.pid());
        assert_eq!(
            filters.last(),
            Some(&seccomp::program_bytes()),
            "{mode:?}: the newest filter is the policy"
        );
        let expected = if mode == Mode::Mmap && pool::restore::anon::enabled() {
            2
        } else {
            1
        };
        assert_eq!(filters.len(), expected, "{mode:?}");
        copy.send(b"still cat\n");
        assert_eq!(copy.line(), "still cat", "{mode:?}");
        drop(copy.stdin);
        assert_eq!(copy.child.wait().unwrap(), 0, "{mode:?}");
    }
    original.kill().unwrap();
    original.wait().unwrap();

    // Any other filter is refused, even with the policy accepted.
    let mut other = cat_under(Some(&ALLOW_ALL));
    let refused = snapshot_to_dir_with(
        other.id() as i32,
        &tmp.path().join("other"),
        &accepting_policy(),
    )
    .unwrap_err();
    assert!(
        refused.to_string().contains("not thaw's function policy"),
        "{refused}"
    );
    other.kill().unwrap();
    other.wait().unwrap();

    // Control: without a filter the copy runs without one.
    let mut plain = cat_under(None);
    let dir = tmp.path().join("plain");
    snapshot_to_dir(plain.id() as i32, &dir).unwrap();
    let mut copy = restore_with_pipes(&dir, Mode::Uffd);
    let status = std::fs::read_to_string(format!("/proc/{}/status", copy.child.pid())).unwrap();
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("Seccomp:") && l.ends_with('0')),
        "{status}"
    );
    drop(copy.stdin);
    copy.child.wait().unwrap();
    plain.kill().unwrap();
    plain.wait().unwrap();
}

/// Cost of the policy, measured (not asserted): installing it, a system
/// call under it, and restore to the first answer of a Python process with
/// and without it, interleaved in one run. `cargo test -p pool --test
/// restore_seccomp -- --ignored --nocapture`.
#[test]
#[ignore = "a measurement, run by hand"]
fn measure_policy_cost() {
    if !can_restore("measure_policy_cost", false) {
        return;
    }
    use std::time::{Duration, Instant};
    let median = |mut v: Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    // Attach: fork, install, exit; against fork, exit.
    let _ = seccomp::program();
    let mut attach = Vec::new();
    for _ in 0..200 {
        let mut pipe = [0i32; 2];
        // SAFETY: pipe fills the two-element array.
        assert_eq!(unsafe { libc::pipe(pipe.as_mut_ptr()) }, 0);
        // SAFETY: the child only calls prctl, seccomp, clock_gettime
        // (vDSO), write and _exit.
        match unsafe { libc::fork() } {
            // SAFETY: as above (the child's calls).
            0 => unsafe {
                let t0 = Instant::now();
                libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
                let ok = seccomp::install().is_ok();
                let ns = t0.elapsed().as_nanos() as u64 * ok as u64;
                libc::write(pipe[1], (&ns as *const u64).cast(), 8);
                libc::_exit(0);
            },
            // SAFETY: reads 8 bytes into `ns`, reaps our child, closes the
            // pipe we own.
            pid => unsafe {
                let mut ns = 0u64;
                libc::read(pipe[0], (&mut ns as *mut u64).cast(), 8);
                libc::waitpid(pid, std::ptr::null_mut(), 0);
                libc::close(pipe[0]);
                libc::close(pipe[1]);
                attach.push(Duration::from_nanos(ns));
            },
        }
    }
    println!(
        "policy: attach (no_new_privs + seccomp) p50 {:?}",
        median(attach)
    );

    let script = "import sys\nfor l in sys.stdin:\n    sys.stdout.write(l); sys.stdout.flush()\n";
    let tmp = tempfile::tempdir().unwrap();
    let mut dirs = Vec::new();
    for (label, filter) in [("without", None), ("with", Some(seccomp::program()))] {
        let _ = seccomp::program();
        let mut cmd = Command::new("/usr/bin/python3");
        cmd.args(["-c", script])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        // SAFETY: as in `cat_under`.
        unsafe {
            cmd.pre_exec(move || {
                libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
                if filter.is_some() {
                    libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
                    seccomp::install()?;
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().unwrap();
        use std::io::{BufRead, Write};
        let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
        child.stdin.as_mut().unwrap().write_all(b"warm\n").unwrap();
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        let dir = tmp.path().join(label);
        snapshot_to_dir_with(child.id() as i32, &dir, &accepting_policy()).unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
        dirs.push((label, dir));
    }
    for mode in [Mode::Mmap, Mode::Uffd] {
        let mut times: Vec<Vec<Duration>> = vec![Vec::new(), Vec::new()];
        for _ in 0..40 {
            for (i, (_, dir)) in dirs.iter().enumerate() {
                let t0 = Instant::now();
                let mut copy = restore_with_pipes(dir, mode);
                copy.send(b"x\n");
                assert_eq!(copy.line(), "x");
                times[i].push(t0.elapsed());
                drop(copy.stdin);
                copy.child.wait().unwrap();
            }
        }
        let without = median(times[0].clone());
        let with = median(times[1].clone());
        println!(
            "policy: restore to first answer, {mode:?}: p50 without {without:?}, with {with:?} (x{:.3})",
            with.as_secs_f64() / without.as_secs_f64()
        );
    }
}
