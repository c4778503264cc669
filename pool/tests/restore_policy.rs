//! Issue 12, finding 4: the restorer imposes the sandbox's credentials
//! whatever the snapshot says. A 32-thread program captured as `nobody`
//! gets a forged manifest claiming uid 0, every capability and no
//! `no_new_privs`. Control first: restored trusting the manifest
//! (`Credentials::Snapshot`, what `thaw restore` of an operator's snapshot
//! does) the copy is root, so the forgery works. Then with the sandbox
//! policy (`Credentials::Function`, every sandboxed copy) every thread of
//! the copy is the function's uid and gid, with no capabilities and
//! `no_new_privs`, in both memory modes, and still runs correctly.

mod restore_support;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use pool::restore::{Credentials, Mode};
use restore_support::{can_restore, compile, restore_as};
use snapshotter::snapshot::{manifest_path, open_snapshot_dir, snapshot_to_dir, DIR_SNAPSHOT_ID};
use snapshotter::store::write_manifest;

const NOBODY: u32 = 65534;

/// `key: value` lines of every thread's status in the copy.
fn thread_status(pid: i32, key: &str) -> Vec<String> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let path = entry.unwrap().path().join("status");
        let text = std::fs::read_to_string(path).unwrap();
        let line = text
            .lines()
            .find(|l| l.starts_with(&format!("{key}:")))
            .unwrap()
            .to_string();
        out.push(
            line[key.len() + 1..]
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" "),
        );
    }
    out
}

#[test]
fn a_forged_manifest_never_gives_a_privileged_copy() {
    if !can_restore("a_forged_manifest_never_gives_a_privileged_copy", true) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let program = compile(
        tmp.path(),
        "threads",
        include_str!("restore_support/threads.c"),
    );
    let mut command = Command::new(&program);
    command
        .uid(NOBODY)
        .gid(NOBODY)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    // SAFETY: only close_range runs between fork and exec.
    unsafe {
        command.pre_exec(|| {
            libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
            Ok(())
        });
    }
    let mut child = command.spawn().unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut ready = String::new();
    std::io::BufRead::read_line(&mut out, &mut ready).unwrap();
    assert!(ready.starts_with("ready "), "{ready}");
    let snap = tmp.path().join("snap");
    snapshot_to_dir(child.id() as i32, &snap).unwrap();
    child.kill().unwrap();
    child.wait().unwrap();

    // The forgery.
    let (mut snapshot, _) = open_snapshot_dir(&snap).unwrap();
    assert_eq!(snapshot.state.process.uids, [NOBODY; 4]);
    snapshot.state.process.uids = [0; 4];
    snapshot.state.process.gids = [0; 4];
    snapshot.state.process.groups = vec![0];
    snapshot.state.process.capabilities = [u64::MAX >> 23; 5];
    snapshot.state.process.no_new_privs = false;
    write_manifest(&manifest_path(&snap, DIR_SNAPSHOT_ID), &snapshot).unwrap();

    // Control: trusting the manifest gives root.
    let mut control = restore_as(
        &snap,
        Mode::Mmap,
        Vec::new(),
        Vec::new(),
        false,
        Credentials::Snapshot,
    );
    let uids = thread_status(control.child.pid(), "Uid");
    assert_eq!(uids.len(), 33);
    assert!(uids.iter().all(|u| u == "0 0 0 0"), "control: {uids:?}");
    control.send(b"g");
    assert_eq!(control.rest(), "ok 32\n");
    assert_eq!(control.child.wait().unwrap(), 0);

    let policy = Credentials::Function {
        uid: NOBODY,
        gid: NOBODY,
    };
    for mode in [Mode::Mmap, Mode::Uffd] {
        let mut copy = restore_as(&snap, mode, Vec::new(), Vec::new(), false, policy.clone());
        let pid = copy.child.pid();
        let ids = format!("{NOBODY} {NOBODY} {NOBODY} {NOBODY}");
        for (key, want) in [
            ("Uid", ids.as_str()),
            ("Gid", ids.as_str()),
            ("Groups", ""),
            ("CapInh", "0000000000000000"),
            ("CapPrm", "0000000000000000"),
            ("CapEff", "0000000000000000"),
            ("CapBnd", "0000000000000000"),
            ("CapAmb", "0000000000000000"),
            ("NoNewPrivs", "1"),
        ] {
            let got = thread_status(pid, key);
            assert_eq!(got.len(), 33, "{mode:?} {key}");
            assert!(got.iter().all(|v| v == want), "{mode:?} {key}: {got:?}");
        }
        copy.send(b"g");
        assert_eq!(copy.rest(), "ok 32\n", "{mode:?}");
        assert_eq!(copy.child.wait().unwrap(), 0, "{mode:?}");
    }
}
