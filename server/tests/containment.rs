//! The containment attack suite (issue 12, findings 1, 3, 5, 6, 7): each
//! attack is tried on a booted instance (`x-thaw-cold: boot`) and on
//! restored copies in both memory modes (`x-thaw-cold: restore` on a server
//! in mmap mode, and on a function whose `memory_mode` is `uffd`), after
//! its probe was shown to work from a control (the host, or a function
//! without the limit), so that a broken probe cannot pass.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{function, Server};
use serde_json::{json, Value};

/// The seccomp probes (also run by pool's `seccomp_policy` test).
const PROBES: &str = include_str!("../../pool/tests/attack/probes.py");

/// Host paths that must not be visible in a sandbox.
const PRIVATE: &[&str] = &["/work", "/home", "/opt", "/root", "/srv"];

const LOOK: &str = r#"
import os

def handler(event, context):
    users = open("/etc/passwd").read().splitlines()
    return {
        "visible": {p: os.path.exists(p) for p in event["paths"]},
        "etc_shadow": os.path.exists("/etc/shadow"),
        "users": [u.split(":")[0] for u in users],
        "python_ok": os.path.exists("/usr/bin/python3"),
    }
"#;

const SPIN: &str = r#"
import json, os, time

def handler(event, context):
    # CPU time, not wall time: on a busy machine a wall-clock spin may never
    # get more than its quota, and so never be throttled.
    end = time.process_time() + event.get("seconds", 0.5)
    n = 0
    while time.process_time() < end:
        n += 1
    cgroups = {}
    for line in open("/proc/self/cgroup"):
        _, ctrls, path = line.strip().split(":", 2)
        for c in ctrls.split(","):
            cgroups[c] = path
    if "mark" in event:
        # Tell the test where this instance's cgroup is while it still
        # exists (a forced cold start is torn down right after its answer).
        print(json.dumps({"mark": event["mark"], "cgroups": cgroups}), flush=True)
        time.sleep(event.get("linger", 3))
    return {"cgroups": cgroups, "spins": n}
"#;

const FORKS: &str = r#"
import os, time

def userfaultfds():
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if "userfaultfd" in os.readlink("/proc/self/fd/" + fd):
                n += 1
        except OSError:
            pass
    return n

def handler(event, context):
    held = event.get("hold", 0)
    r, w = os.pipe()
    kids = []
    for _ in range(held):
        pid = os.fork()
        if pid == 0:
            os.close(w)
            os.read(r, 1)
            os._exit(0)
        kids.append(pid)
    os.close(r)
    time.sleep(event.get("seconds", 0))
    os.close(w)
    for pid in kids:
        os.waitpid(pid, 0)
    for _ in range(event.get("fork_exit", 0)):
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
    time.sleep(event.get("after", 0))
    cgroups = {}
    for line in open("/proc/self/cgroup"):
        _, ctrls, path = line.strip().split(":", 2)
        for c in ctrls.split(","):
            cgroups[c] = path
    return {"userfaultfds": userfaultfds(), "cgroups": cgroups}
"#;

/// Skips (false) with a reason unless root with python3; under
/// `THAW_TEST_STRICT` a missing prerequisite fails.
fn prerequisites(tools: &[&str]) -> bool {
    let mut missing = Vec::new();
    if !nix::unistd::geteuid().is_root() {
        missing.push("root (namespaces, cgroups)".to_string());
    }
    for t in tools {
        if !Path::new(t).exists() {
            missing.push(t.to_string());
        }
    }
    if missing.is_empty() {
        return true;
    }
    let why = format!("needs {}", missing.join(", "));
    if std::env::var_os("THAW_TEST_STRICT").is_some() {
        panic!("prerequisite missing under THAW_TEST_STRICT: {why}");
    }
    eprintln!("skipped: {why}");
    false
}

/// The three ways a function runs: booted, restored in mmap mode, restored
/// in uffd mode. Deploys `name` and `name-uffd` and returns `(label,
/// function, x-thaw-cold, expected x-thaw-start)`.
async fn deploy_both(server: &Server, name: &str, code: &str, extra: Value) -> Vec<Start> {
    let mut uffd_extra = extra.clone();
    uffd_extra["memory_mode"] = json!("uffd");
    let uffd = format!("{name}-uffd");
    for (n, e) in [(name, extra), (uffd.as_str(), uffd_extra)] {
        let v = server.deploy_ready(function(n, code, e)).await;
        assert_eq!(v["state"], "ready", "{n}: {v}");
        assert!(!v["snapshot"].is_null(), "{n} has no snapshot: {v}");
    }
    vec![
        Start {
            label: "booted",
            name: name.to_string(),
            cold: "boot",
        },
        Start {
            label: "restored (mmap)",
            name: name.to_string(),
            cold: "restore",
        },
        Start {
            label: "restored (uffd)",
            name: uffd,
            cold: "restore",
        },
    ]
}

struct Start {
    label: &'static str,
    name: String,
    cold: &'static str,
}

impl Start {
    async fn invoke(&self, server: &Server, event: Value) -> Value {
        let a = server
            .invoke_raw(
                &self.name,
                serde_json::to_vec(&event).unwrap(),
                &[("x-thaw-cold", self.cold)],
            )
            .await;
        assert_eq!(a.status, 200, "{}: {}", self.label, a.text());
        assert_eq!(a.header("x-thaw-start"), self.cold, "{}", self.label);
        a.json()
    }
}

fn status_field<'a>(status: &'a str, key: &str) -> &'a str {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .map(str::trim)
        .unwrap_or("")
}

/// Finding 3: namespaces, io_uring, bpf, keyctl, ptrace, userfaultfd.
#[tokio::test]
async fn syscall_probes_work_on_the_host_and_fail_in_every_function() {
    if !prerequisites(&["/usr/bin/python3", "/usr/bin/unshare"]) {
        return;
    }
    // Control: the host (root, no filter) can do every probe.
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("probes.py");
    std::fs::write(&script, PROBES).unwrap();
    let out = std::process::Command::new("/usr/bin/python3")
        .arg(&script)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let control: Value = serde_json::from_slice(&out.stdout).unwrap();
    for (name, result) in control["probes"].as_object().unwrap() {
        assert_eq!(
            result, "ok",
            "control: {name} must work on the host: {control}"
        );
    }

    let server = Server::start(&["--allow-forced-cold"]);
    let starts = deploy_both(&server, "probes", PROBES, json!({"pids": 64})).await;
    for start in &starts {
        let v = start.invoke(&server, json!({})).await;
        for (name, result) in v["probes"].as_object().unwrap() {
            assert!(
                result.as_str().unwrap().starts_with("error"),
                "{}: probe {name} worked from the function: {}",
                start.label,
                v["probes"]
            );
        }
        let legit = &v["legit"];
        assert_eq!(legit["thread"], true, "{}: {legit}", start.label);
        assert_eq!(legit["subprocess"], true, "{}: {legit}", start.label);
        assert!(
            legit["clone3"]
                .as_str()
                .unwrap()
                .contains("not implemented"),
            "{}: clone3 must be ENOSYS: {legit}",
            start.label
        );
        let status = v["status"].as_str().unwrap();
        assert_eq!(status_field(status, "Seccomp:"), "2", "{}", start.label);
        assert_eq!(status_field(status, "NoNewPrivs:"), "1", "{}", start.label);
        assert_eq!(
            status_field(status, "Uid:").split_whitespace().next(),
            Some("65534")
        );
    }
}

/// Finding 6: only the runtime's allow-list of the host is visible.
#[tokio::test]
async fn private_host_paths_are_visible_on_the_host_and_not_in_any_function() {
    if !prerequisites(&["/usr/bin/python3"]) {
        return;
    }
    // Control: every probed path exists on the host (else the probe proves
    // nothing); /etc/shadow too.
    let present: Vec<&str> = PRIVATE
        .iter()
        .copied()
        .filter(|p| Path::new(p).exists())
        .collect();
    assert!(
        present.len() >= 3,
        "too few private paths on this host: {present:?}"
    );
    assert!(Path::new("/etc/shadow").exists());
    let server = Server::start(&["--allow-forced-cold"]);
    let starts = deploy_both(&server, "look", LOOK, json!({})).await;
    for start in &starts {
        let v = start.invoke(&server, json!({"paths": present})).await;
        for p in &present {
            assert_eq!(
                v["visible"][p], false,
                "{}: {p} is visible in the sandbox: {v}",
                start.label
            );
        }
        assert_eq!(v["etc_shadow"], false, "{}: {v}", start.label);
        assert_eq!(
            v["users"],
            json!(["root", "nobody"]),
            "{}: {v}",
            start.label
        );
        assert_eq!(v["python_ok"], true, "{}", start.label);
    }
}

/// Where the `controller` hierarchy is mounted on this host (v1), or the
/// v2 mount for `None`.
fn cgroup_mount(controller: &str) -> Option<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    for line in text.lines() {
        let (left, right) = line.split_once(" - ")?;
        let mut right = right.split(' ');
        let fstype = right.next()?;
        let superopts = right.nth(1).unwrap_or("");
        let mountpoint = left.split(' ').nth(4)?;
        if fstype == "cgroup" && superopts.split(',').any(|o| o == controller) {
            return Some(PathBuf::from(mountpoint));
        }
        if fstype == "cgroup2" && controller.is_empty() {
            return Some(PathBuf::from(mountpoint));
        }
    }
    None
}

/// The host directory of the function's cgroup in the cpu hierarchy, and
/// its quota and throttling counters.
fn cpu_cgroup(v: &Value) -> (Option<i64>, u64, u64) {
    let (dir, v1) = match cgroup_mount("cpu") {
        Some(m) => (
            m.join(
                v["cgroups"]["cpu"]
                    .as_str()
                    .unwrap()
                    .trim_start_matches('/'),
            ),
            true,
        ),
        None => {
            let m = cgroup_mount("").expect("a cgroup hierarchy");
            (
                m.join(
                    v["cgroups"][""]
                        .as_str()
                        .unwrap_or("/")
                        .trim_start_matches('/'),
                ),
                false,
            )
        }
    };
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap_or_default();
    let quota = if v1 {
        read("cpu.cfs_quota_us")
            .trim()
            .parse::<i64>()
            .ok()
            .filter(|q| *q > 0)
    } else {
        read("cpu.max")
            .split_whitespace()
            .next()
            .and_then(|q| q.parse().ok())
    };
    let stat = pool::cgroup::parse_cpu_stat(&read("cpu.stat"));
    (quota, stat.nr_periods, stat.nr_throttled)
}

/// Finding 7: `cpu` sets the CFS quota, and a spinning function is
/// throttled; without it (the control) the same spin is not.
#[tokio::test]
async fn a_cpu_cap_throttles_every_function_and_its_absence_does_not() {
    if !prerequisites(&["/usr/bin/python3"]) {
        return;
    }
    let server = Server::start(&["--allow-forced-cold"]);
    // Control: no cap, no quota, never throttled.
    let v = server.deploy_ready(function("free", SPIN, json!({}))).await;
    assert_eq!(v["state"], "ready", "{v}");
    let a = server
        .invoke_raw(
            "free",
            serde_json::to_vec(&json!({"seconds": 0.4})).unwrap(),
            &[("x-thaw-cold", "boot")],
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.text());
    let (quota, _, throttled) = cpu_cgroup(&a.json());
    assert_eq!(quota, None, "uncapped by default");
    assert_eq!(throttled, 0, "an uncapped function is never throttled");

    let starts = deploy_both(&server, "capped", SPIN, json!({"cpu": 0.2})).await;
    let record = server.get("/functions/capped").await.json();
    assert!(
        record.to_string().contains("\"cpu\":0.2"),
        "the record shows the cap: {record}"
    );
    for start in &starts {
        // The instance prints its cgroups and lingers: they are read while
        // it lives (a forced cold start's sandbox goes right after the answer).
        let mark = format!("cap-{}-{}", start.name, start.cold);
        let event = json!({"seconds": 0.5, "mark": mark, "linger": 3});
        let (answer, seen) = tokio::join!(start.invoke(&server, event), async {
            let t0 = std::time::Instant::now();
            loop {
                let logs = server
                    .get(&format!("/functions/{}/logs?tail=200", start.name))
                    .await
                    .json();
                let found = logs["lines"].as_array().and_then(|lines| {
                    lines.iter().find_map(|l| {
                        let v: Value = serde_json::from_str(l["line"].as_str()?).ok()?;
                        (v["mark"] == mark.as_str()).then_some(v)
                    })
                });
                if let Some(v) = found {
                    return cpu_cgroup(&v);
                }
                assert!(
                    t0.elapsed() < Duration::from_secs(60),
                    "{}: the instance never printed its cgroups",
                    start.label
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        assert!(
            answer["spins"].as_u64().is_some(),
            "{}: {answer}",
            start.label
        );
        let (quota, periods, throttled) = seen;
        assert_eq!(
            quota,
            Some(20_000),
            "{}: 0.2 cores of a 100 ms period",
            start.label
        );
        assert!(periods > 0, "{}", start.label);
        assert!(
            throttled > 0,
            "{}: a spin over its quota is throttled",
            start.label
        );
    }
}

/// Server-side uffd resources: page-server threads and userfaultfds.
fn server_uffd_use(pid: i32) -> (usize, usize) {
    let threads = std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|rd| {
            rd.flatten()
                .filter(|t| {
                    std::fs::read_to_string(t.path().join("comm"))
                        .map(|c| c.trim() == "thaw-uffd")
                        .unwrap_or(false)
                })
                .count()
        })
        .unwrap_or(0);
    (threads, userfaultfds_of(pid))
}

fn userfaultfds_of(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|rd| {
            rd.flatten()
                .filter(|e| {
                    std::fs::read_link(e.path())
                        .map(|l| l.to_string_lossy().contains("userfaultfd"))
                        .unwrap_or(false)
                })
                .count()
        })
        .unwrap_or(0)
}

/// Finding 5: no function process holds a userfaultfd (pid 1 of the
/// sandbox does), and a fork-and-exit loop in a uffd copy leaves no page
/// server thread or descriptor behind; the control shows that live
/// children do each get one (so the count sees them).
#[tokio::test]
async fn uffd_copies_hold_no_userfaultfd_and_forks_release_their_servers() {
    if !prerequisites(&["/usr/bin/python3"]) {
        return;
    }
    let server = Server::start(&["--allow-forced-cold"]);
    let v = server
        .deploy_ready(function(
            "forks",
            FORKS,
            json!({"memory_mode": "uffd", "pids": 64}),
        ))
        .await;
    assert_eq!(v["state"], "ready", "{v}");
    let spid = server.pid();
    let (threads0, fds0) = server_uffd_use(spid);

    // Control: 20 live children, each with its page server, for 3 s.
    let done = std::sync::atomic::AtomicBool::new(false);
    let (peak, released, holders) = {
        // While the copy runs: the server's page servers, and which
        // sandbox processes hold a userfaultfd (NSpid in the sandbox).
        let sampling = async {
            let mut peak = (0, 0);
            let mut released = false;
            let mut holders = std::collections::BTreeSet::new();
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                let (t, f) = server_uffd_use(spid);
                peak = (peak.0.max(t), peak.1.max(f));
                // Back to the copy's own server while the copy still runs
                // (after the held children and the 200 forks).
                if peak.0 >= threads0 + 20 && t <= threads0 + 1 && f <= fds0 + 1 {
                    released = true;
                }
                // Once the copy runs its handler (its children are up): the
                // stub held the userfaultfd for a moment during the restore,
                // under ptrace, before any of the function's code ran.
                let running = peak.0 >= threads0 + 20;
                for p in server.sandbox_pids().into_iter().filter(|_| running) {
                    if userfaultfds_of(p) > 0 {
                        let status = std::fs::read_to_string(format!("/proc/{p}/status"))
                            .unwrap_or_default();
                        let ns = status_field(&status, "NSpid:")
                            .split_whitespace()
                            .last()
                            .unwrap_or("")
                            .to_string();
                        holders.insert(ns);
                    }
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            (peak, released, holders)
        };
        let invoking = async {
            let a = server
                .invoke_raw(
                    "forks",
                    serde_json::to_vec(
                        &json!({"hold": 20, "seconds": 2, "fork_exit": 200, "after": 5}),
                    )
                    .unwrap(),
                    &[("x-thaw-cold", "restore")],
                )
                .await;
            done.store(true, std::sync::atomic::Ordering::SeqCst);
            a
        };
        let ((peak, released, holders), answer) = tokio::join!(sampling, invoking);
        assert_eq!(answer.status, 200, "{}", answer.text());
        assert_eq!(answer.header("x-thaw-start"), "restore");
        let v = answer.json();
        assert_eq!(
            v["userfaultfds"], 0,
            "the function holds a userfaultfd: {v}"
        );
        (peak, released, holders)
    };
    // The sandbox's pid 1 holds the copy's userfaultfd (the control: the
    // scan finds one), and no other process of the sandbox does.
    assert_eq!(
        holders.into_iter().collect::<Vec<_>>(),
        vec!["1".to_string()],
        "sandbox processes holding a userfaultfd, by pid in the sandbox"
    );
    assert!(
        peak.0 >= threads0 + 20 && peak.1 >= fds0 + 20,
        "control: 20 live children should have 20 page servers (peak {peak:?}, before {threads0}/{fds0})"
    );
    // After the children exited and 200 forks that exited at once, only
    // the copy's own server is left, while the copy still runs.
    assert!(
        released,
        "page servers of exited children were not released while the copy ran (peak {peak:?}, before {threads0}/{fds0})"
    );
}

/// Finding 1: a function holding descriptors of its code directory, a code
/// file, and an `O_PATH` descriptor of a root-only file it may only name;
/// it reports what it can do through each.
const HELD: &str = r#"
import os

DIR = os.open("/var/task", os.O_RDONLY | os.O_DIRECTORY)
DATA = os.open("/var/task/data.txt", os.O_RDONLY)
NAME = os.open("/var/task/secret.txt", os.O_PATH)
READABLE = os.open("/var/task/data.txt", os.O_PATH)

def attempt(f):
    try:
        return f()
    except OSError as e:
        return "error %d" % e.errno

def reopen(fd):
    with open("/proc/self/fd/%d" % fd, "rb") as f:
        return f.read().decode()

def handler(event, context):
    os.lseek(DATA, 0, 0)
    return {
        "dir": sorted(os.listdir(DIR)),
        "data": os.read(DATA, 200).decode(),
        "read_o_path": attempt(lambda: os.read(NAME, 1).decode()),
        "reopen_secret": attempt(lambda: reopen(NAME)),
        "reopen_readable": attempt(lambda: reopen(READABLE)),
    }
"#;

/// A function holding the sandbox's `/` when it is captured.
const ROOT_FD: &str = r#"
import os

ROOT = os.open("/", os.O_RDONLY | os.O_DIRECTORY)

def handler(event, context):
    return {"root": sorted(os.listdir(ROOT))}
"#;

/// A function mapping a file of its sandbox's `/tmp` (the descriptor
/// closed, so only the mapping names it).
const TMP_MAP: &str = r#"
import ctypes, os

libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
with open("/tmp/data", "wb") as f:
    f.write(b"x" * 4096)
fd = os.open("/tmp/data", os.O_RDONLY)
ADDR = libc.mmap(None, 4096, 1, 2, fd, 0)
os.close(fd)

def handler(event, context):
    return {"byte": ctypes.string_at(ADDR, 1).decode()}
"#;

fn held_spec(name: &str, extra: Value) -> Value {
    let mut spec = function(name, HELD, extra);
    spec["files"]["data.txt"] = json!("data");
    spec["files"]["other.txt"] = json!("other");
    spec["files"]["secret.txt"] = json!("root only");
    spec
}

/// The host's names in `/`.
fn host_root_names() -> Vec<String> {
    std::fs::read_dir("/")
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

/// Finding 1 (a): a descriptor of the sandbox's `/` cannot be given back
/// exactly (every sandbox has its own root), so its capture is refused
/// with a reason naming it, never widened to the host's; a booted instance
/// lists only its sandbox's root through it. Control: the host lists
/// `/work` and `/root` in its `/`.
#[tokio::test]
async fn a_root_directory_descriptor_never_lists_the_host_in_any_function() {
    if !prerequisites(&["/usr/bin/python3"]) {
        return;
    }
    let host = host_root_names();
    let private: Vec<&str> = ["work", "root", "home", "opt", "srv"]
        .into_iter()
        .filter(|n| host.iter().any(|h| h == n))
        .collect();
    assert!(private.len() >= 2, "control: the host's / has {host:?}");

    let server = Server::start(&["--allow-forced-cold"]);
    for (name, extra) in [
        ("rootfd", json!({})),
        ("rootfd-uffd", json!({"memory_mode": "uffd"})),
    ] {
        let v = server.deploy_ready(function(name, ROOT_FD, extra)).await;
        assert_eq!(v["state"], "ready", "{v}");
        assert!(v["snapshot"].is_null(), "{name}: captured anyway: {v}");
        let err = v["error"].as_str().unwrap_or("");
        assert!(
            err.contains("snapshot failed")
                && err.contains(" is /;")
                && err.contains("only inside"),
            "{name}: the refusal names the descriptor and why: {err}"
        );
        let a = server
            .invoke_raw(name, b"{}".to_vec(), &[("x-thaw-cold", "boot")])
            .await;
        assert_eq!(a.status, 200, "{}", a.text());
        let root: Vec<String> = serde_json::from_value(a.json()["root"].clone()).unwrap();
        assert!(root.iter().any(|n| n == "var"), "the probe lists: {root:?}");
        for p in &private {
            assert!(
                !root.iter().any(|n| n == p),
                "{name}: /{p} through the fd: {root:?}"
            );
        }
        // No copy can be made of it.
        let a = server
            .invoke_raw(name, b"{}".to_vec(), &[("x-thaw-cold", "restore")])
            .await;
        assert_ne!(a.status, 200, "{name}: restored: {}", a.text());
        assert!(!a.text().contains("\"work\""), "{}", a.text());
    }
    // The same holds for a file mapped from the sandbox's /tmp.
    let v = server
        .deploy_ready(function("tmpmap", TMP_MAP, json!({})))
        .await;
    assert!(v["snapshot"].is_null(), "captured anyway: {v}");
    let err = v["error"].as_str().unwrap_or("");
    assert!(
        err.contains("maps /tmp/data") && err.contains("only inside"),
        "the refusal names the mapping: {err}"
    );
    let a = server.invoke("tmpmap", json!({})).await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.json()["byte"], "x");
}

/// Finding 1 (b): an `O_PATH` descriptor of a root-only (0600) file bound
/// into the sandbox stays `O_PATH` in every function and cannot be
/// reopened for reading through `/proc/self/fd`. Controls: the host reads
/// the file; the same reopen of a readable file works in every function.
#[tokio::test]
async fn an_o_path_descriptor_of_a_root_only_file_is_unreadable_in_every_function() {
    use std::os::unix::fs::PermissionsExt;
    if !prerequisites(&["/usr/bin/python3"]) {
        return;
    }
    let server = Server::start(&["--allow-forced-cold"]);
    let starts = deploy_both_specs(&server, "opath", held_spec, json!({})).await;
    // The functions captured their O_PATH descriptors; now the file becomes
    // root's alone (a code file thaw binds read-only into the sandbox).
    for name in ["opath", "opath-uffd"] {
        let secret = server
            .data
            .join(format!("functions/{name}/v1/code/secret.txt"));
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(
            std::fs::read_to_string(&secret).unwrap(),
            "root only",
            "control"
        );
    }
    for start in &starts {
        let v = start.invoke(&server, json!({})).await;
        assert_eq!(
            v["reopen_readable"], "data",
            "{}: the probe: {v}",
            start.label
        );
        assert_eq!(v["read_o_path"], "error 9", "{}: {v}", start.label);
        assert_eq!(v["reopen_secret"], "error 13", "{}: {v}", start.label);
        assert_eq!(v["data"], "data", "{}: {v}", start.label);
    }
}

/// [`deploy_both`] with a spec maker.
async fn deploy_both_specs(
    server: &Server,
    name: &str,
    spec: impl Fn(&str, Value) -> Value,
    extra: Value,
) -> Vec<Start> {
    let mut uffd_extra = extra.clone();
    uffd_extra["memory_mode"] = json!("uffd");
    let uffd = format!("{name}-uffd");
    for (n, e) in [(name, extra), (uffd.as_str(), uffd_extra)] {
        let v = server.deploy_ready(spec(n, e)).await;
        assert_eq!(v["state"], "ready", "{n}: {v}");
        assert!(!v["snapshot"].is_null(), "{n} has no snapshot: {v}");
    }
    vec![
        Start {
            label: "booted",
            name: name.to_string(),
            cold: "boot",
        },
        Start {
            label: "restored (mmap)",
            name: name.to_string(),
            cold: "restore",
        },
        Start {
            label: "restored (uffd)",
            name: uffd,
            cold: "restore",
        },
    ]
}

/// The identity `stat` gives `path` on the host.
fn identity_of(path: &Path) -> snapshotter::state::FileIdentity {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).unwrap();
    snapshotter::state::FileIdentity {
        dev: m.dev(),
        inode: m.ino(),
        size: m.size(),
        mtime_sec: m.mtime(),
        mtime_nsec: m.mtime_nsec(),
    }
}

/// Rewrites the manifest of `name`'s snapshot (the server is stopped).
fn forge(server: &Server, id: &str, change: &dyn Fn(&mut snapshotter::snapshot::Snapshot)) {
    let dir = server.data.join("snapshots");
    let mut snapshot = snapshotter::snapshot::load_snapshot(&dir, id).unwrap();
    change(&mut snapshot);
    snapshotter::store::write_manifest(&snapshotter::snapshot::manifest_path(&dir, id), &snapshot)
        .unwrap();
}

/// Points saved descriptor `fd` at `path` with the identity `id`.
fn repoint_fd(
    snapshot: &mut snapshotter::snapshot::Snapshot,
    path: &str,
    new_path: &str,
    id: snapshotter::state::FileIdentity,
) {
    use snapshotter::state::FdKind;
    let mut found = false;
    for f in &mut snapshot.state.fds {
        match &mut f.kind {
            FdKind::File {
                path: p, identity, ..
            }
            | FdKind::Directory {
                path: p, identity, ..
            } if p == path => {
                *p = new_path.to_string();
                *identity = id;
                found = true;
            }
            _ => {}
        }
    }
    assert!(found, "no saved descriptor of {path}");
}

/// Finding 1 (c): a forged manifest that opens or maps a host file the
/// sandbox cannot see (a file in the data directory, masked in every
/// sandbox; the host's `/` for a directory) fails to restore with a clear
/// error in both modes, where the restorer opening by path as root on the
/// host would have handed it over (the forged identities are the host
/// files' own). Control: the same forgery naming a file the function can
/// see restores, and the copy reads that file through the descriptor.
#[tokio::test]
async fn forged_manifests_naming_host_files_fail_to_restore() {
    if !prerequisites(&["/usr/bin/python3"]) {
        return;
    }
    let mut server = Server::start(&["--allow-forced-cold"]);
    let kinds = ["control", "file", "dir", "map"];
    let mut ids = Vec::new();
    for kind in kinds {
        for (suffix, extra) in [("", json!({})), ("-uffd", json!({"memory_mode": "uffd"}))] {
            let name = format!("forged-{kind}{suffix}");
            let v = server.deploy_ready(held_spec(&name, extra)).await;
            assert_eq!(v["state"], "ready", "{v}");
            let id = v["snapshot"]["id"]
                .as_str()
                .expect("a snapshot")
                .to_string();
            ids.push((kind, name, id));
        }
    }
    let host_secret = server.data.join("host-secret.txt");
    std::fs::write(&host_secret, "host secret").unwrap();
    assert_eq!(
        std::fs::read_to_string(&host_secret).unwrap(),
        "host secret"
    );
    let secret_path = host_secret.to_str().unwrap().to_string();
    assert!(server.stop().success());
    for (kind, name, id) in &ids {
        let code = server.data.join(format!("functions/{name}/v1/code"));
        match *kind {
            "control" => forge(&server, id, &|s| {
                repoint_fd(
                    s,
                    "/var/task/data.txt",
                    "/var/task/other.txt",
                    identity_of(&code.join("other.txt")),
                )
            }),
            "file" => forge(&server, id, &|s| {
                repoint_fd(
                    s,
                    "/var/task/data.txt",
                    &secret_path,
                    identity_of(&host_secret),
                )
            }),
            "dir" => forge(&server, id, &|s| {
                repoint_fd(s, "/var/task", "/", identity_of(Path::new("/")))
            }),
            "map" => forge(&server, id, &|s| {
                let area = s
                    .state
                    .areas
                    .iter_mut()
                    .find(|a| {
                        a.kind == snapshotter::state::AreaKind::FileUnchanged
                            && a.path.as_deref().is_some_and(|p| p.starts_with("/usr/"))
                    })
                    .expect("a library mapped unchanged");
                area.path = Some(secret_path.clone());
                area.file = Some(identity_of(&host_secret));
            }),
            _ => unreachable!(),
        }
    }
    server.spawn();
    for (kind, name, _) in &ids {
        let a = server
            .invoke_raw(name, b"{}".to_vec(), &[("x-thaw-cold", "restore")])
            .await;
        if *kind == "control" {
            assert_eq!(a.status, 200, "{name}: {}", a.text());
            assert_eq!(a.header("x-thaw-start"), "restore");
            assert_eq!(
                a.json()["data"],
                "other",
                "{name}: the forgery took: {}",
                a.text()
            );
            continue;
        }
        let text = a.text();
        assert_ne!(a.status, 200, "{name}: restored: {text}");
        assert!(
            !text.contains("host secret") && !text.contains("\"work\""),
            "{name}: {text}"
        );
        let (path, why) = match *kind {
            "dir" => ("/ changed since the snapshot", "inode"),
            _ => (
                secret_path.as_str(),
                "inside the sandbox as the function: No such file or directory",
            ),
        };
        assert!(text.contains(path) && text.contains(why), "{name}: {text}");
    }
}
