//! Sandboxes with real namespaces, mounts and cgroups. Needs root.

mod restore_support;

use std::path::PathBuf;

use pool::cgroup::{CgroupLimits, CgroupRoot};
use pool::sandbox::{LaunchSpec, Network, Sandbox, SandboxConfig, SandboxExit};
use tokio::io::AsyncReadExt;

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

macro_rules! require_root {
    () => {
        if !is_root() {
            skip!("sandboxes need root (namespaces, mounts, cgroups)");
        }
    };
}

struct Env {
    _dir: tempfile::TempDir,
    config: SandboxConfig,
    code: PathBuf,
}

fn env(tag: &str) -> Env {
    let dir = tempfile::Builder::new()
        .prefix("thaw-sbx")
        .tempdir_in("/var/tmp")
        .unwrap();
    let code = dir.path().join("code");
    std::fs::create_dir_all(&code).unwrap();
    std::fs::write(code.join("hello.txt"), "hi\n").unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(data.join("secret")).unwrap();
    std::fs::write(data.join("secret/token"), "s3cret").unwrap();
    let cgroups = CgroupRoot::detect(&format!("test-{tag}")).unwrap();
    // Whatever an earlier, failed run of this test left behind.
    cgroups.remove_stale().unwrap();
    let config = SandboxConfig {
        init_exe: PathBuf::from(env!("CARGO_BIN_EXE_thaw-sandbox-init")),
        init_args: vec![],
        run_dir: data.join("run"),
        mask: vec![data.clone()],
        uid: 65534,
        gid: 65534,
        cgroups,
        network: None,
    };
    Env {
        _dir: dir,
        config,
        code,
    }
}

fn spec(env: &Env, script: &str) -> LaunchSpec {
    LaunchSpec {
        code_dir: env.code.clone(),
        runtime_dir: None,
        binds: pool::sandbox::binds::PYTHON3.paths(),
        argv: vec!["/bin/sh".into(), "-c".into(), script.into()],
        env: vec![("PATH".into(), "/usr/bin:/bin".into())],
        cwd: "/var/task".into(),
        limits: CgroupLimits {
            memory_bytes: 64 << 20,
            pids: 32,
            cpu_weight: 100,
            cpu_millicores: None,
        },
        tmp_mb: 8,
        network: Network::None,
        network_allow: Vec::new(),
        no_aslr: false,
        stub: false,
    }
}

async fn run(env: &Env, script: &str) -> (SandboxExit, String, String) {
    let mut sb = Sandbox::launch(&env.config, &spec(env, script))
        .await
        .unwrap();
    let mut out = sb.stdout.take().unwrap();
    let mut err = sb.stderr.take().unwrap();
    let (mut o, mut e) = (String::new(), String::new());
    let (r1, r2) = tokio::join!(out.read_to_string(&mut o), err.read_to_string(&mut e));
    r1.unwrap();
    r2.unwrap();
    let exit = sb.wait().await;
    sb.destroy().await.unwrap();
    (exit, o, e)
}

#[tokio::test]
async fn function_runs_unprivileged_as_pid_2_with_its_code() {
    require_root!();
    let env = env("basic");
    let (exit, out, err) = run(
        &env,
        "id -u; echo $$; cat /var/task/hello.txt; hostname; ls /proc | grep -E '^[0-9]+$' | wc -l",
    )
    .await;
    assert_eq!(exit, SandboxExit::Exited(0), "stderr: {err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "65534");
    assert_eq!(lines[1], "2", "the function is pid 2 under a tiny init");
    assert_eq!(lines[2], "hi");
    assert_eq!(lines[3], "thaw");
}

#[tokio::test]
async fn filesystem_is_read_only_except_tmp_and_data_dir_is_masked() {
    require_root!();
    let env = env("fs");
    let data = env.config.mask[0].display().to_string();
    let script = format!(
        "touch /usr/x 2>/dev/null && echo usr-writable; touch /var/task/x 2>/dev/null && echo task-writable; \
         echo ok > /tmp/x && cat /tmp/x; ls -A {data} 2>&1 | wc -l; cat {data}/secret/token 2>/dev/null || echo masked"
    );
    let (exit, out, err) = run(&env, &script).await;
    assert_eq!(exit, SandboxExit::Exited(0), "stderr: {err}");
    assert!(!out.contains("writable"), "{out}");
    assert!(out.contains("ok"), "{out}");
    assert!(out.contains("masked"), "{out}");
}

#[tokio::test]
async fn exit_status_and_signals_are_reported() {
    require_root!();
    let env = env("exit");
    let (exit, _, _) = run(&env, "exit 7").await;
    assert_eq!(exit, SandboxExit::Exited(7));
    let (exit, _, _) = run(&env, "kill -9 $$").await;
    assert_eq!(exit, SandboxExit::Signaled(9));
}

#[tokio::test]
async fn setup_failure_is_reported() {
    require_root!();
    let env = env("fail");
    let mut s = spec(&env, "true");
    s.argv[0] = "/nonexistent/binary".into();
    let err = Sandbox::launch(&env.config, &s).await.unwrap_err();
    assert!(err.to_string().contains("/nonexistent/binary"), "{err}");
    assert!(env.config.cgroups.children().is_empty());
}

#[tokio::test]
async fn a_stub_sandbox_holds_a_waiting_privileged_pid_2() {
    require_root!();
    let env = env("stub");
    let mut s = spec(&env, "unused");
    s.stub = true;
    // Files the restorer will need inside, placed at chosen numbers.
    let a = std::fs::File::open(env.code.join("hello.txt")).unwrap();
    let b = std::fs::File::open("/usr/bin/env").unwrap();
    use std::os::fd::AsFd;
    let sb = Sandbox::launch_with_fds(&env.config, &s, &[(a.as_fd(), 7), (b.as_fd(), 12)])
        .await
        .unwrap();
    let pid = sb.function_pid().expect("the stub is pid 2 of the sandbox");
    // It waits in pause() (syscall 34); wait for that (bounded).
    let mut syscall = String::new();
    for _ in 0..500 {
        syscall = std::fs::read_to_string(format!("/proc/{pid}/syscall")).unwrap();
        if syscall.starts_with("34 ") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    assert!(
        syscall.starts_with("34 "),
        "the stub waits in pause: {syscall}"
    );
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert!(
        uid_line.split_whitespace().skip(1).all(|u| u == "0"),
        "still privileged: {uid_line}"
    );
    // fds 0-4 are there for the copy; nothing else leaked in.
    let mut fds: Vec<i32> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().parse().unwrap())
        .collect();
    fds.sort();
    assert_eq!(fds, vec![0, 1, 2, 3, 4, 7, 12]);
    let link = |fd: i32| std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).unwrap();
    assert!(link(7).ends_with("hello.txt"), "{:?}", link(7));
    assert_eq!(link(12), std::path::PathBuf::from("/usr/bin/env"));
    // Same namespaces as the rest of the sandbox, not the host's.
    let ns = |p: i32| std::fs::read_link(format!("/proc/{p}/ns/mnt")).unwrap();
    assert_ne!(ns(pid), ns(std::process::id() as i32));
    sb.destroy().await.unwrap();
    assert!(env.config.cgroups.children().is_empty());
}

#[tokio::test]
async fn reserved_descriptor_numbers_are_refused() {
    require_root!();
    let env = env("reserved");
    let f = std::fs::File::open("/dev/null").unwrap();
    use std::os::fd::AsFd;
    let err = Sandbox::launch_with_fds(&env.config, &spec(&env, "true"), &[(f.as_fd(), 3)])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("reserved"), "{err}");
}
