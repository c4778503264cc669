//! The functions' seccomp policy (issue 12, finding 3) on real processes:
//! every probe of `attack/probes.py` works from the control (root, no
//! filter) and fails under the policy, even as root, so the filter and not
//! the uid is what stops it; the runtimes thaw ships keep working under it.

use std::os::unix::process::CommandExt;
use std::process::Command;

use pool::sandbox::seccomp;

const PROBES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/attack/probes.py");

/// Skips (returns false) with a reason; with `THAW_TEST_STRICT` set a
/// missing prerequisite fails the test instead.
fn prerequisite(ok: bool, why: &str) -> bool {
    if !ok {
        if std::env::var_os("THAW_TEST_STRICT").is_some() {
            panic!("prerequisite missing under THAW_TEST_STRICT: {why}");
        }
        eprintln!("skipped: {why}");
    }
    ok
}

fn root_and(tool: &str) -> bool {
    prerequisite(
        nix::unistd::geteuid().is_root(),
        "needs root (probes of bpf, keyctl, namespaces)",
    ) && prerequisite(
        std::path::Path::new(tool).exists(),
        &format!("{tool} is missing"),
    )
}

/// Runs `cmd` under the policy: `no_new_privs`, then the filter, then exec
/// (the order of the sandbox's init).
fn under_policy(cmd: &mut Command) -> &mut Command {
    let _ = seccomp::program(); // built before the fork
                                // SAFETY: the closure runs between fork and exec and only makes the
                                // prctl and seccomp system calls (the program is already built).
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            seccomp::install()
        })
    }
}

fn probe(policy: bool) -> serde_json::Value {
    let mut cmd = Command::new("/usr/bin/python3");
    cmd.arg(PROBES);
    if policy {
        under_policy(&mut cmd);
    }
    let out = cmd.output().expect("run the probes");
    assert!(
        out.status.success(),
        "probes failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("probe output is JSON")
}

#[test]
fn every_probe_works_from_the_control_and_fails_under_the_policy() {
    if !root_and("/usr/bin/python3") || !root_and("/usr/bin/unshare") {
        return;
    }
    let control = probe(false);
    let probes = control["probes"].as_object().unwrap();
    assert!(probes.len() >= 8);
    for (name, result) in probes {
        assert_eq!(result, "ok", "control: probe {name} must work: {control}");
    }
    let confined = probe(true);
    for (name, result) in confined["probes"].as_object().unwrap() {
        let text = result.as_str().unwrap();
        assert!(
            text.starts_with("error"),
            "probe {name} worked under the policy: {confined}"
        );
    }
    // Denied calls say EPERM ("Operation not permitted"), clone3 ENOSYS.
    assert!(
        confined["probes"]["bpf"]
            .as_str()
            .unwrap()
            .contains("not permitted"),
        "{confined}"
    );
    let legit = &confined["legit"];
    assert_eq!(legit["thread"], true, "{confined}");
    assert_eq!(legit["subprocess"], true, "{confined}");
    assert!(
        legit["clone3"]
            .as_str()
            .unwrap()
            .contains("not implemented"),
        "{confined}"
    );
}

#[test]
fn the_kernel_reports_thaws_program_back_byte_for_byte() {
    if !root_and("/bin/sleep") {
        return;
    }
    let mut child = under_policy(Command::new("/bin/sleep").arg("30"))
        .spawn()
        .unwrap();
    let pid = child.id() as i32;
    // PTRACE_SECCOMP_GET_FILTER needs the tracee stopped.
    let npid = nix::unistd::Pid::from_raw(pid);
    nix::sys::ptrace::seize(npid, nix::sys::ptrace::Options::empty()).unwrap();
    nix::sys::ptrace::interrupt(npid).unwrap();
    nix::sys::wait::waitpid(npid, None).unwrap();
    let mut buf = vec![0u8; 8 * 4096];
    // SAFETY: PTRACE_SECCOMP_GET_FILTER(index 0) writes at most the
    // program's length in instructions into `buf`, which is large enough.
    let n = unsafe {
        libc::ptrace(
            0x420c as libc::c_uint, // PTRACE_SECCOMP_GET_FILTER
            pid,
            0usize,
            buf.as_mut_ptr(),
        )
    };
    assert!(n > 0, "{}", std::io::Error::last_os_error());
    buf.truncate(n as usize * 8);
    assert_eq!(buf, seccomp::program_bytes());
    child.kill().unwrap();
    child.wait().unwrap();
}

fn runs_as_nobody_under_policy(argv: &[&str]) -> std::process::Output {
    let mut cmd = Command::new(argv[0]);
    cmd.args(&argv[1..])
        .uid(65534)
        .gid(65534)
        .env("HOME", "/tmp");
    under_policy(&mut cmd).output().expect("start")
}

#[test]
fn node_runs_under_the_policy() {
    if !root_and("/usr/bin/node") {
        return;
    }
    let out = runs_as_nobody_under_policy(&[
        "/usr/bin/node",
        "-e",
        "const w = new Promise(r => setTimeout(r, 10)); w.then(() => console.log(JSON.stringify({ok: 1 + 1})))",
    ]);
    assert!(
        out.status.success(),
        "node: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), r#"{"ok":2}"#);
}

#[test]
fn java_runs_under_the_policy() {
    let java = "/usr/lib/jvm/java-17-openjdk-amd64/bin/java";
    if !root_and(java) {
        return;
    }
    let out = runs_as_nobody_under_policy(&[java, "-XX:-UsePerfData", "-version"]);
    assert!(
        out.status.success(),
        "java: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("17."));
}

#[test]
fn python_runs_under_the_policy() {
    if !root_and("/usr/bin/python3") {
        return;
    }
    let out = runs_as_nobody_under_policy(&[
        "/usr/bin/python3",
        "-c",
        "import json, threading, subprocess, ssl, hashlib; print(json.dumps([1]))",
    ]);
    assert!(
        out.status.success(),
        "python: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
